"""How much one storage agent (one AZ) may hold: disks and replication pairs.

Checked when a disk or a pair is created, before anything is written, so a
create past the limit is refused whole (413, naming the limit and its
setting) and what runs is untouched. The limits (settings
`agent_max_volumes`, `agent_max_pairs`) keep an agent below what its
descriptors and memory allow; see docs/decisions.md.
"""

from __future__ import annotations

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, aliased

from openevs.config import Settings
from openevs.db.models import Agent, ReplicationPair, Volume
from openevs.domain import codes
from openevs.domain.errors import QuotaExceeded


def lock_azs(session: Session, azs: set[str]) -> None:
    """Serialize limit checks of these AZs until this transaction ends.

    Counting and then inserting is check-then-act: without a lock, concurrent
    creates all see the same count and all pass. A no-op UPDATE of each AZ's
    agent row, in sorted order (no deadlock between two creates), takes the
    row lock on PostgreSQL and the writer lock on SQLite.
    """
    for az in sorted(azs):
        session.execute(
            update(Agent)
            .where(Agent.availability_zone == az)
            .values(healthy=Agent.healthy)
            .execution_options(synchronize_session=False)
        )


def check_agent_volumes(session: Session, settings: Settings, az: str) -> None:
    """Refuse a new disk in `az` when its agent holds `agent_max_volumes` already."""
    limit = settings.agent_max_volumes
    lock_azs(session, {az})
    count = int(session.scalar(select(func.count(Volume.id)).where(Volume.availability_zone == az)) or 0)
    if count >= limit:
        raise QuotaExceeded(
            f"the storage agent of AZ {az} holds {count} disks, its limit"
            f" (agent_max_volumes = {limit}): choose another AZ or raise OPENEVS_AGENT_MAX_VOLUMES",
            code=codes.QUOTA_INSUFFICIENT,
        )


def check_agent_pairs(session: Session, settings: Settings, azs: set[str]) -> None:
    """Refuse a new pair when the agent of one of its AZs is in `agent_max_pairs` pairs."""
    limit = settings.agent_max_pairs
    lock_azs(session, azs)
    production, dr = aliased(Volume), aliased(Volume)
    for az in sorted(azs):
        count = int(
            session.scalar(
                select(func.count(ReplicationPair.id))
                .join(production, production.id == ReplicationPair.production_volume_id)
                .join(dr, dr.id == ReplicationPair.dr_volume_id)
                .where(or_(production.availability_zone == az, dr.availability_zone == az))
            )
            or 0
        )
        if count >= limit:
            raise QuotaExceeded(
                f"the storage agent of AZ {az} is in {count} replication pairs, its limit"
                f" (agent_max_pairs = {limit}): raise OPENEVS_AGENT_MAX_PAIRS to add more",
                code=codes.QUOTA_INSUFFICIENT,
            )
