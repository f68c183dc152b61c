"""Snapshots of several disks of one agent at one instant (a DR drill of a consistency group).

Every write reaches a disk file through its `CowFileExport` in the agent's
event loop, and a write's data is pwritten in the same synchronous step in
which its copy-before-write ends (snapshot_exports.py). So the instant of a
snapshot is the step that makes it its disk's newest; making every member's
snapshot the newest in *one* step makes them one instant across the disks:
a write acknowledged before it is in every snapshot, a write started after
it in none. For a DR disk the writes are the ones its primary forwards,
each acknowledged to the user only after the DR agent wrote it, so a write
that depends on an earlier one (issued after that one's acknowledgement)
never lands in a snapshot without it. Forwarded writes are held for that one
step only: nothing is awaited inside it.

Rules this module keeps:

- every member's files and `chain.json` are written (under its chain's
  `mutate` lock, held by all members at once) before the switch; a failure
  before the switch discards what was prepared and no member has the
  snapshot;
- a crash between two members' `chain.json` leaves some members with the
  snapshot and some without (the ones with it now date from the restart):
  asked again, those are deleted and every member's is taken anew; when
  every member has it, it was taken in one step (or every chain was loaded
  by the same start, before any write) and the answer is success;
- one group take at a time on an agent.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from openevs.agent.pool import InvalidVolumeRequest, validate_volume_id
from openevs.agent.snapshots import Snapshot, VolumeChain
from openevs.contract_snapshots import GroupSnapshotMember

Member = tuple[VolumeChain, str]  # a disk's chain, the snapshot id it gets


class GroupTakes:
    def __init__(self) -> None:
        self._one_at_a_time = asyncio.Lock()

    async def take(self, members: list[Member]) -> list[Snapshot]:
        """Each member's snapshot, all taken at one instant; existing ones are success."""
        async with self._one_at_a_time:
            held = [chain.find(snapshot_id) for chain, snapshot_id in members]
            if all(held):
                return [s for s in held if s is not None]
            for (chain, snapshot_id), snap in zip(members, held, strict=True):
                if snap is not None:  # left by a crash between two members' chain.json
                    await chain.delete(snapshot_id)
            return await self._take_all(members)

    @staticmethod
    async def _take_all(members: list[Member]) -> list[Snapshot]:
        # Flush the disks first, while no write pays a copy: the fdatasync after the
        # switch then has little left to write, and first writes do not queue behind it.
        await asyncio.gather(*(chain.drain() for chain, _ in members))
        await asyncio.gather(*(chain.settle() for chain, _ in members))
        prepared: list[tuple[VolumeChain, Snapshot]] = []
        chains = sorted({c for c, _ in members}, key=lambda c: str(c.volume_path))
        async with AsyncExitStack() as locks:
            for chain in chains:
                await locks.enter_async_context(chain.mutate)
                await chain.wait_unfrozen()  # no delete merges a newest away meanwhile
            held: list[VolumeChain] = []
            try:
                for chain, snapshot_id in members:
                    prepared.append((chain, await chain.prepare(snapshot_id)))
                # Every member's overlay emptied, with writes held on all of them for
                # what came since the first drain.
                await asyncio.gather(*(chain.drain() for chain in chains))
                for chain in chains:
                    held.append(chain)
                    chain.hold()
                await asyncio.gather(*(chain.drain() for chain in chains))
            except BaseException:
                for chain in held:
                    chain.release()
                for chain, snap in prepared:
                    await chain.discard_prepared(snap)
                raise
            # The instant: one synchronous step, no await until every member switched.
            for chain, snap in prepared:
                chain.snaps.append(snap)
            for chain in chains:
                chain.release()
        await asyncio.gather(*(chain.settle() for chain, _ in prepared))
        return [snap for _, snap in prepared]


def check_members(members: list[GroupSnapshotMember]) -> None:
    """Distinct disks with valid ids (one snapshot per disk per instant)."""
    volumes = [validate_volume_id(m.volume_id) for m in members]
    for m in members:
        validate_volume_id(m.snapshot_id)
    if len(set(volumes)) != len(volumes):
        raise InvalidVolumeRequest("a disk is named twice: one snapshot per disk")
    if not members:
        raise InvalidVolumeRequest("no disk named")
