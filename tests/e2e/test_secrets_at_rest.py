"""A copy of the controller's database opens no disk: after a real run of `openevs
serve` (users' exports granted and used, a replication pair mirroring over its link),
none of the export names or link secrets the run created is in the database file
or the serve logs, yet serve hands the same export name out again after a restart
(it opens the sealed row with the key file) and the disk is served under it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from openevs.agent.nbd.client import NbdClient
from openevs.db.models import Attachment, ReplicationPair
from openevs.security.sealing import Sealer, is_sealed
from tests.e2e.conftest import ServeProcess, Session
from tests.e2e.test_metrics import create_pair
from tests.e2e.test_replication import MIB, block, nbd_address, write_blocks
from tests.support.api import make_disk, wait_json

pytestmark = pytest.mark.e2e

PROD_AZ, DR_AZ = "az1.dc1", "az2.dc2"


def _copy_db(data_dir: Path, into: Path) -> list[Path]:
    """The database file and its WAL, as someone who copies them gets them."""
    into.mkdir()
    copies = []
    for src in data_dir.glob("openevs.db*"):
        shutil.copy2(src, into / src.name)
        copies.append(into / src.name)
    return copies


@pytest.mark.long
def test_a_copied_database_holds_no_export_name_or_link_secret(
    serve_factory: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    serve = serve_factory().start()
    session = serve.login()
    prod, dr = make_disk(session, PROD_AZ), make_disk(session, DR_AZ)
    prod_addr = nbd_address(session, prod, PROD_AZ)
    dr_addr = nbd_address(session, dr, DR_AZ)
    asyncio.run(write_blocks(prod_addr, range(4)))
    pair = create_pair(session, prod, dr)
    wait_json(session, f"/v2/{{p}}/os-vendor-replications/{pair}", "replication",
              lambda p: p["replication_status"] == "active", 90, "the pair to be active")  # fmt: skip
    sealer = Sealer.from_file(serve.data_dir / "pki" / "secrets.key")
    engine = create_engine(f"sqlite:///{serve.data_dir / 'openevs.db'}")
    with engine.connect() as conn:
        sealed = [v for v in conn.scalars(select(Attachment.export_name)) if v]
        links = list(conn.scalars(select(ReplicationPair.link_export)))
    engine.dispose()
    assert len(sealed) == 2 and len(links) == 1 and all(is_sealed(v) for v in sealed + links)
    secrets = {prod_addr[2], dr_addr[2], sealer.open(links[0], "link")}
    assert {sealer.open(v, "export") for v in sealed} == {prod_addr[2], dr_addr[2]}
    serve.stop()

    copies = _copy_db(serve.data_dir, tmp_path / "stolen")
    assert copies
    logs = [p for run in range(1, 3) for p in serve.log_paths(run) if p.exists()]
    for path in copies + logs:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret[:8]}... found in {path.name}"

    serve.start()  # the restarted agents get their grants back from the sealed rows
    session = serve.login()
    addr = connection_of(session, prod)
    assert addr[2] == prod_addr[2]
    assert asyncio.run(read_first(addr)) == block(0)


def connection_of(session: Session, volume_id: str) -> tuple[str, int, str, bool]:
    """What os-initialize_connection hands out again for an attached disk."""
    r = session.post(f"/v2/{{p}}/volumes/{volume_id}/action", {"os-initialize_connection": {"connector": {}}})
    assert r.status_code == 200, r.text
    data = r.json()["connection_info"]["data"]
    return data["host"], data["port"], data["export_name"], data["read_only"]


async def read_first(addr: tuple[str, int, str, bool]) -> bytes:
    client = await NbdClient.connect(addr[0], addr[1], addr[2])
    try:
        return await client.read(0, MIB)
    finally:
        await client.close()
