"""Growing both disks of a replication pair (a group's os-extend-replication-volumes).

No transaction spans an agent call. Three steps:

1. claim: in the request's transaction, each disk's `target_size_gb` moves
   to the new size by compare-and-set on its current sizes, and commits. A
   disk whose target is above its size is being grown: another extend of the
   pair is refused at once (409), and the quota already counts the claim;
2. grow: the DR disk first, then the production disk, so a primary never
   forwards a write past its peer's end (the agent calls are idempotent:
   growing to the current size succeeds);
3. record: each disk's `size_gb` and the pair's `volume_size_gb` take the
   new size, again by compare-and-set.

A growth an agent refused releases its claims (the request answers 503); a
claim whose request died is finished by the reconciler (`finish`) once it
is older than `agent_timeout_s`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from openevs.db.cas import set_if
from openevs.db.models import ReplicationPair, Volume
from openevs.domain.errors import ChangedConcurrently, Conflict, OpenEvsError
from openevs.domain.volumes import GIB
from openevs.runtime import Runtime
from openevs.services.agent_errors import call_agent
from openevs.services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Disk:
    volume_id: str
    az: str
    old_gb: int


@dataclass(frozen=True)
class Claim:
    pair_id: str
    new_gb: int
    dr: Disk
    production: Disk

    @property
    def disks(self) -> tuple[Disk, Disk]:
        """DR side first: the order the disks are grown in."""
        return self.dr, self.production


def claim(session: Session, pair: ReplicationPair, production: Volume, dr: Volume, new_gb: int) -> Claim:
    """Claim `new_gb` for both disks of `pair` in the caller's transaction."""
    for vol in (dr, production):
        if vol.target_size_gb != vol.size_gb:
            raise Conflict(
                f"replication pair {pair.id} is being extended to {vol.target_size_gb} GB; "
                "retry when that is done"
            )
        if new_gb <= vol.size_gb:
            # The caller checked the size the pair had when it read it; an extend that
            # finished since must not be followed by a "growth" to less.
            raise ChangedConcurrently(
                f"replication pair {pair.id} was extended to {vol.size_gb} GB meanwhile; "
                "ask for more than that"
            )
    for vol in (dr, production):
        expected = {"size_gb": vol.size_gb, "target_size_gb": vol.target_size_gb}
        if not set_if(session, Volume, vol.id, expected, target_size_gb=new_gb):
            raise ChangedConcurrently(f"replication pair {pair.id} changed concurrently; retry the request")
    return Claim(
        pair.id,
        new_gb,
        dr=Disk(dr.id, dr.availability_zone, dr.size_gb),
        production=Disk(production.id, production.availability_zone, production.size_gb),
    )


def _grow(runtime: Runtime, claim: Claim) -> None:
    for disk in claim.disks:
        _grow_disk(runtime, disk, claim.new_gb * GIB)


def _grow_disk(runtime: Runtime, disk: Disk, size_bytes: int) -> None:
    call_agent(runtime, disk.az, lambda a: a.grow_volume(disk.volume_id, size_bytes))


def _record(runtime: Runtime, claims: list[Claim]) -> None:
    with UnitOfWork(runtime) as uow:
        for c in claims:
            for disk in c.disks:
                expected = {"size_gb": disk.old_gb, "target_size_gb": c.new_gb}
                set_if(uow.session, Volume, disk.volume_id, expected, size_gb=c.new_gb)
            grown = {"volume_size_gb": c.production.old_gb}
            set_if(uow.session, ReplicationPair, c.pair_id, grown, volume_size_gb=c.new_gb)


def _release(runtime: Runtime, claims: list[Claim]) -> None:
    with UnitOfWork(runtime) as uow:
        for c in claims:
            for disk in c.disks:
                expected = {"size_gb": disk.old_gb, "target_size_gb": c.new_gb}
                set_if(uow.session, Volume, disk.volume_id, expected, target_size_gb=disk.old_gb)


def carry_out(runtime: Runtime, claims: list[Claim]) -> None:
    """Grow the claimed disks, then record their sizes; on an agent error, release
    the claims and raise it (ServiceUnavailable)."""
    try:
        for c in claims:
            _grow(runtime, c)
    except OpenEvsError:
        _release(runtime, claims)
        raise
    _record(runtime, claims)


def finish(runtime: Runtime, pair_id: str) -> None:
    """Carry out a pair's claim whose request died (the reconciler calls this)."""
    with UnitOfWork(runtime) as uow:
        pair = uow.session.get(ReplicationPair, pair_id)
        if pair is None:
            return
        prod = uow.session.get(Volume, pair.production_volume_id)
        dr = uow.session.get(Volume, pair.dr_volume_id)
        if prod is None or dr is None:
            return
        new_gb = max(prod.target_size_gb, dr.target_size_gb)
        pending = Claim(
            pair.id,
            new_gb,
            dr=Disk(dr.id, dr.availability_zone, dr.size_gb),
            production=Disk(prod.id, prod.availability_zone, prod.size_gb),
        )
        if pair.volume_size_gb != prod.size_gb:
            log.warning("pair %s: volume_size_gb %s differs from its disk's %s GB", pair.id,
                        pair.volume_size_gb, prod.size_gb)  # fmt: skip
    log.warning("pair %s: finishing an extend to %s GB whose request did not", pair_id, new_gb)
    _grow(runtime, pending)
    _record(runtime, [pending])
