"""Migration 0004_secrets on a database of the revision before: every export name,
link export and planned link export in clear is sealed with the key given, opens
to the same value, and the downgrade gives the clear values back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select

from openevs.contract_plans import FailoverPlan, PairFlip, dump_plan, load_plan
from openevs.db.models import (
    Attachment,
    DeploymentKey,
    Project,
    ReplicationGroup,
    ReplicationPair,
    Server,
    Volume,
)
from openevs.db.session import Database, alembic_config, upgrade
from openevs.security.sealing import Sealer, is_sealed
from tests.conftest import _drop_pg_database, _pg_database

EXPORT, LINK, PLANNED = (
    "att-clear-export-name-0123456789ab",
    "link-clear-0123456789",
    "link-planned-0123456789",
)


@pytest.fixture
def old_db(db_kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty database at 0004_drills, the revision before the one under test."""
    if db_kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        name = f"openevs_mig_{uuid.uuid4().hex[:10]}"
        url = _pg_database(name)
    command.upgrade(alembic_config(url), "0004_drills")
    yield url
    if db_kind != "sqlite":
        _drop_pg_database(name)


def _fill(db: Database) -> None:
    with db.session() as s:
        s.add(Project(id="p", name="p"))
        s.flush()
        for vid, az in (("v1", "az1.dc1"), ("v2", "az2.dc2")):
            s.add(Volume(id=vid, project_id="p", size_gb=1, target_size_gb=1, volume_type="SSD",
                         availability_zone=az, status="in-use"))  # fmt: skip
        s.add(Server(id="s", project_id="p", name="s", availability_zone="az1.dc1", status="SHUTOFF"))
        s.flush()
        s.add(Attachment(id="a", project_id="p", volume_id="v1", server_id="s", device="/dev/vdb",
                         export_name=EXPORT))  # fmt: skip
        plan = FailoverPlan(
            pairs={"r": PairFlip(epoch=2, link_export=PLANNED, new_primary="v2", old_primary="v1")}
        )
        s.add(ReplicationGroup(id="g", project_id="p", status="failovering", priority_station="az1.dc1",
                               pending=dump_plan(plan)))  # fmt: skip
        s.flush()
        s.add(ReplicationPair(id="r", project_id="p", status="available", volume_ids="v1,v2",
                              priority_station="az1.dc1", production_volume_id="v1", dr_volume_id="v2",
                              link_export=LINK, volume_size_gb=1, volume_type="SSD",
                              group_id="g"))  # fmt: skip


def _values(db: Database) -> tuple[str, str, str]:
    with db.session() as s:
        export = s.scalars(select(Attachment.export_name)).one()
        link = s.scalars(select(ReplicationPair.link_export)).one()
        group = s.get(ReplicationGroup, "g")
        assert group is not None
        plan = load_plan(group.pending)
        assert isinstance(plan, FailoverPlan) and export is not None
        return export, link, plan.pairs["r"].link_export


def test_the_migration_seals_every_secret_and_the_downgrade_opens_them(old_db: str) -> None:
    db = Database(old_db)
    try:
        _fill(db)
        sealer = Sealer.ephemeral()
        upgrade(old_db, sealer)
        export, link, planned = _values(db)
        assert all(is_sealed(v) for v in (export, link, planned))
        assert sealer.open(export, "export") == EXPORT
        assert sealer.open(link, "link") == LINK and sealer.open(planned, "link") == PLANNED
        with db.session() as s:
            row = s.get(DeploymentKey, "sealing")
            assert row is not None and row.kid == sealer.current_kid
        cfg = alembic_config(old_db)
        cfg.attributes["sealer"] = sealer
        command.downgrade(cfg, "0004_drills")
        assert _values(db) == (EXPORT, LINK, PLANNED)
    finally:
        db.dispose()
