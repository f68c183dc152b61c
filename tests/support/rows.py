"""Rows made directly (no HTTP), for the tests of services and reconciler steps:
a disk on its agent with its row, and a pair row over two disks."""

from __future__ import annotations

import uuid
from typing import Any

from openevs.db.models import ReplicationClaim, ReplicationPair, Volume
from openevs.domain.volumes import GIB
from openevs.runtime import Runtime
from openevs.services.replications import new_link_export

AZ_A, AZ_B = "az1.dc1", "az2.dc2"


def add_volume(runtime: Runtime, project_id: str, az: str, size_gb: int = 1, **row: Any) -> str:
    """A disk on its agent and its row (available unless `row` says otherwise)."""
    vid = str(uuid.uuid4())
    runtime.agent(az).create_volume(vid, size_gb * GIB)
    with runtime.db.session() as session:
        session.add(Volume(id=vid, project_id=project_id, size_gb=size_gb, target_size_gb=size_gb,
                           volume_type="SSD", availability_zone=az, status="available", **row))  # fmt: skip
    return vid


def add_pair(runtime: Runtime, project_id: str, prod: str, dr: str, size_gb: int = 1, **row: Any) -> str:
    """A pair row over two disks (no agent roles: the tests here need none)."""
    pid = str(uuid.uuid4())
    values: dict[str, Any] = {"status": "available", "fault_level": "0", "epoch": 1}
    with runtime.db.session() as session:
        session.add(ReplicationPair(
            id=pid, project_id=project_id, volume_ids=f"{prod},{dr}", priority_station=AZ_A,
            production_volume_id=prod, dr_volume_id=dr, link_export=new_link_export(runtime.sealer),
            volume_size_gb=size_gb, volume_type="SSD", **{**values, **row},
        ))  # fmt: skip
        session.flush()
        session.add(ReplicationClaim(volume_id=prod, pair_id=pid))
        session.add(ReplicationClaim(volume_id=dr, pair_id=pid))
    return pid
