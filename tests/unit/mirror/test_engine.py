"""The replication decisions of agent/mirror/engine.py, for every state."""

from __future__ import annotations

import pytest

from openevs.agent.mirror.engine import (
    HOT_EXTENT_REGIONS,
    MAX_CHUNK_REGIONS,
    REGION_BYTES,
    GroupState,
    MirrorState,
    WriteAction,
    decide_flush,
    decide_write,
    dirty_bytes,
    hot_extents_of,
    merge_ranges,
    regions_of,
    regions_of_ranges,
    status,
    take_chunk,
)
from openevs.domain.replication import ReplicationStatus, Role

R = REGION_BYTES


def synced(**changes: object) -> MirrorState:
    state = MirrorState(role=Role.PRIMARY, mirroring=True, link_up=True)
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def test_regions_of() -> None:
    assert regions_of(0, 0) == range(0)
    assert list(regions_of(0, 1)) == [0]
    assert list(regions_of(R - 1, 2)) == [0, 1]
    assert list(regions_of(R, R)) == [1]
    assert list(regions_of(3 * R + 5, 2 * R)) == [3, 4, 5]


def test_hot_extents_of() -> None:
    assert list(hot_extents_of(range(0, 1))) == [0]
    assert list(hot_extents_of(range(HOT_EXTENT_REGIONS - 1, HOT_EXTENT_REGIONS + 1))) == [0, 1]
    assert list(hot_extents_of(range(0))) == []


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (MirrorState(role=Role.STANDALONE), WriteAction.LOCAL),
        (MirrorState(role=Role.SECONDARY), WriteAction.REFUSE),
        (MirrorState(role=Role.SECONDARY, mirroring=True, link_up=True), WriteAction.REFUSE),
        (synced(fenced=True), WriteAction.REFUSE),
        (synced(), WriteAction.FORWARD),
        (synced(mirroring=False), WriteAction.LOCAL_DIRTY),
        (synced(link_up=False), WriteAction.LOCAL_DIRTY),
        (synced(group_split=True), WriteAction.LOCAL_DIRTY),
        (synced(dirty={1}), WriteAction.LOCAL_DIRTY),  # a touched region is dirty
        (synced(dirty={7}), WriteAction.FORWARD),  # dirty elsewhere: still forwarded
        (synced(copying={0}), WriteAction.WAIT),
        (synced(copying={1}, link_up=False), WriteAction.WAIT),  # never overtake a copy
        (synced(copying={9}), WriteAction.FORWARD),
        (synced(writing={1: 2}), WriteAction.FORWARD),  # concurrent writes are fine
    ],
)
def test_decide_write(state: MirrorState, expected: WriteAction) -> None:
    assert decide_write(state, R - 10, 20) is expected  # touches regions 0 and 1


def test_decide_flush() -> None:
    assert decide_flush(synced())
    assert not decide_flush(synced(link_up=False))
    assert not decide_flush(synced(mirroring=False))
    assert not decide_flush(synced(group_split=True))
    assert not decide_flush(MirrorState(role=Role.SECONDARY, mirroring=True, link_up=True))


@pytest.mark.parametrize(
    ("state", "sync_running", "io_error", "expected"),
    [
        (MirrorState(role=Role.STANDALONE), False, False, None),
        (MirrorState(role=Role.SECONDARY, mirroring=True), False, False, None),
        (synced(), False, False, ReplicationStatus.ACTIVE),
        (synced(), True, False, ReplicationStatus.COPYING),  # copied, waiting for the peer's flush
        (synced(dirty={3}), False, False, ReplicationStatus.COPYING),
        (synced(copying={3}), True, False, ReplicationStatus.COPYING),
        (synced(link_up=False), False, False, ReplicationStatus.INACTIVE),
        (synced(link_up=False, dirty={3}), True, False, ReplicationStatus.INACTIVE),
        (synced(group_split=True), False, False, ReplicationStatus.INACTIVE),
        (synced(fenced=True), False, False, ReplicationStatus.INACTIVE),
        (synced(mirroring=False), False, False, ReplicationStatus.ACTIVE_STOPPED),
        (synced(mirroring=False, link_up=False), False, False, ReplicationStatus.ACTIVE_STOPPED),
        (synced(mirroring=False, dirty={1}), False, False, ReplicationStatus.INACTIVE),
        (synced(), False, True, ReplicationStatus.ERROR),
    ],
)
def test_status(
    state: MirrorState, sync_running: bool, io_error: bool, expected: ReplicationStatus | None
) -> None:
    assert status(state, io_error=io_error, sync_running=sync_running) == expected


def _chunks(state: MirrorState, last_region: int = 10**9, max_regions: int = 64) -> list[list[int]]:
    order, index, chunks = sorted(state.dirty), 0, []
    while index < len(order):
        chunk, index = take_chunk(order, index, state, last_region=last_region, max_regions=max_regions)
        if chunk:
            chunks.append(chunk)
    return chunks


def test_take_chunk_merges_consecutive_regions_up_to_the_chunk_limit() -> None:
    assert _chunks(synced(dirty={5, 1, 2, 3, 9, 10})) == [[1, 2, 3], [5], [9, 10]]
    big = set(range(2 * MAX_CHUNK_REGIONS + 1))
    assert [len(c) for c in _chunks(synced(dirty=big), max_regions=MAX_CHUNK_REGIONS)] == [
        MAX_CHUNK_REGIONS, MAX_CHUNK_REGIONS, 1
    ]  # fmt: skip


def test_take_chunk_skips_what_it_must_not_copy_now() -> None:
    state = synced(dirty={1, 2, 3, 4, 6, 7, 30}, copying={6}, writing={3: 1})
    # 3 has a write in flight, 6 is being copied, 30 is past the end.
    assert _chunks(state, last_region=10) == [[1, 2], [4], [7]]
    order = [1, 2, 3]
    state = synced(dirty={2, 3})  # 1 was copied meanwhile (no longer dirty)
    assert take_chunk(order, 0, state, last_region=10) == ([2, 3], 3)
    assert take_chunk([], 0, state, last_region=10) == ([], 0)


def test_merge_ranges_and_dirty_bytes() -> None:
    assert merge_ranges({0, 1, 3}) == [(0, 2 * R), (3 * R, R)]
    assert merge_ranges({0, 1, 3}, size_bytes=3 * R + 100) == [(0, 2 * R), (3 * R, 100)]
    assert merge_ranges({5}, size_bytes=R) == []
    assert dirty_bytes({0, 1, 3}, 3 * R + 100) == 2 * R + 100
    assert regions_of_ranges([(0, 1), (R * 4, R + 1)]) == {0, 4, 5}


def test_group_splits_as_one_and_rejoins_only_when_all_are_ready() -> None:
    group = GroupState("g", members={"a", "b"})
    assert group.split  # nothing is forwarded before every link is up
    assert not group.maybe_join({"a": True, "b": False})
    assert group.split
    assert group.maybe_join({"a": True, "b": True})
    assert not group.split
    assert group.forward_failed() == {"a", "b"}
    assert group.split
    assert not group.maybe_join({"a": False, "b": True})
    # `ready` names the members that forward (primaries): one demoted by a
    # switchover (b, a secondary now) does not keep the others split.
    assert group.maybe_join({"a": True})
    assert not GroupState("empty").maybe_join({})
