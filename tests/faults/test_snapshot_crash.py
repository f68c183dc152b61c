"""SIGKILL the agent, then the controller, while a snapshot is taken, a disk is
copied from it, a rollback runs and a snapshot is deleted.

After the restart every resource reaches a terminal status and every byte
is what the API says: the disk made from the snapshot and the rolled-back
disk hold the snapshot's bytes (checksums over NBD), a deleted snapshot is
gone from the agent too.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Session
from tests.faults.harness import AZ_A, FaultStack, record, trials
from tests.support.api import make_disk, wait_json

pytestmark = [
    pytest.mark.faults,
    pytest.mark.e2e,
    pytest.mark.skipif(not shutil.which("nbdcopy"), reason="needs nbdcopy"),
    pytest.mark.timeout(900),
]

MiB = 1 << 20
SNAPSHOTS = "/v2/{p}/snapshots"
TERMINAL = {"available", "error", "error_deleting", "error_rollbacking", "in-use"}


def attach(s: Session, vid: str) -> tuple[str, str]:
    """Attach to a stopped server of the disk's AZ: (server id, NBD URI)."""
    r = s.post("/v2.1/{p}/servers", {"server": {"name": f"h-{vid[:8]}", "availability_zone": AZ_A}})
    assert r.status_code == 202, r.text
    sid = r.json()["server"]["id"]
    assert s.post(f"/v2.1/{{p}}/servers/{sid}/action", {"os-stop": None}).status_code == 202
    r = s.post(f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments", {"volumeAttachment": {"volumeId": vid}})
    assert r.status_code == 200, r.text
    r = s.post(f"/v2/{{p}}/volumes/{vid}/action", {"os-initialize_connection": {"connector": {}}})
    assert r.status_code == 200, r.text
    d = r.json()["connection_info"]["data"]
    return sid, f"nbd://{d['host']}:{d['port']}/{d['export_name']}"


def detach(s: Session, sid: str, vid: str) -> None:
    assert s.delete(f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments/{vid}").status_code == 202
    wait_json(s, f"/v2/{{p}}/volumes/{vid}", "volume", lambda v: v["status"] == "available")


def nbdcopy(src: str, dst: str) -> None:
    done = subprocess.run(["nbdcopy", src, dst], capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


def write_pattern(s: Session, vid: str, seed: int, tmp: Path) -> str:
    """Write 64 MiB of a seeded pattern over the disk (detached after); the disk's checksum."""
    rng = random.Random(seed)
    image = tmp / f"img-{seed}.raw"
    with image.open("wb") as fh:
        fh.truncate(1 << 30)
        for start in range(0, 256 * MiB, 4 * MiB):
            fh.seek(start)
            fh.write(rng.randbytes(MiB))
    sid, uri = attach(s, vid)
    nbdcopy(str(image), uri)
    detach(s, sid, vid)
    return sha(image)


def sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(16 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def read_sum(s: Session, vid: str, tmp: Path) -> str:
    sid, uri = attach(s, vid)
    out = tmp / f"read-{vid}.raw"
    out.unlink(missing_ok=True)
    nbdcopy(uri, str(out))
    detach(s, sid, vid)
    return sha(out)


def settle(s: Session, path: str, key: str) -> dict[str, Any]:
    return wait_json(s, path, key, lambda x: x["status"] in TERMINAL, timeout_s=180)


def run_scenario(stack: FaultStack, crash: Callable[[], None], tmp: Path) -> int:
    s = stack.session
    vid = make_disk(s, AZ_A)
    sum_a = write_pattern(s, vid, 1, tmp)

    # A snapshot being taken.
    r = s.post(SNAPSHOTS, {"snapshot": {"volume_id": vid, "name": "crash"}})
    assert r.status_code == 202, r.text
    snap = r.json()["snapshot"]["id"]
    crash()
    s = stack.session
    assert settle(s, f"{SNAPSHOTS}/{snap}", "snapshot")["status"] == "available"

    # A disk being copied from it.
    r = s.post("/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": AZ_A, "snapshot_id": snap}})
    assert r.status_code == 202, r.text
    copy = r.json()["volume"]["id"]
    crash()
    s = stack.session
    assert settle(s, f"/v2/{{p}}/volumes/{copy}", "volume")["status"] == "available"
    assert read_sum(s, copy, tmp) == sum_a

    # A rollback.
    assert write_pattern(s, vid, 2, tmp) != sum_a
    r = s.post(f"/v3/{{p}}/os-vendor-snapshots/{snap}/rollback", {"rollback": {"volume_id": vid}})
    assert r.status_code == 202, r.text
    crash()
    s = stack.session
    assert settle(s, f"/v2/{{p}}/volumes/{vid}", "volume")["status"] == "available"
    assert settle(s, f"{SNAPSHOTS}/{snap}", "snapshot")["status"] == "available"
    assert read_sum(s, vid, tmp) == sum_a

    # A snapshot delete.
    assert s.delete(f"{SNAPSHOTS}/{snap}").status_code == 202
    crash()
    s = stack.session
    wait_for_gone = time.monotonic() + 180
    while s.get(f"{SNAPSHOTS}/{snap}").status_code != 404:
        assert time.monotonic() < wait_for_gone, s.get(f"{SNAPSHOTS}/{snap}").text
        time.sleep(0.2)
    with stack.agents[AZ_A].client() as agent:
        assert agent.list_snapshots(vid) == []
    return 4


def test_agent_killed_mid_snapshot_copy_rollback_and_delete(fault_stack: FaultStack, tmp_path: Path) -> None:
    rng = random.Random(11)
    agent = fault_stack.agents[AZ_A]

    def crash() -> None:
        time.sleep(rng.uniform(0, 0.05))
        agent.kill()
        agent.start()

    crashes = sum(run_scenario(fault_stack, crash, tmp_path) for _ in range(trials(1)))
    record("snapshot_agent_crash", crashes=crashes)


@pytest.mark.long
def test_controller_killed_mid_snapshot_copy_rollback_and_delete(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    rng = random.Random(12)

    def crash() -> None:
        time.sleep(rng.uniform(0, 0.1))
        fault_stack.serve.kill()
        fault_stack.serve.start()
        fault_stack._session = None  # noqa: SLF001 - the old client is bound to the dead process

    crashes = sum(run_scenario(fault_stack, crash, tmp_path) for _ in range(trials(1)))
    record("snapshot_controller_crash", crashes=crashes)
