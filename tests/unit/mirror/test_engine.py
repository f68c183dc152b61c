"""The replication decisions of agent/mirror/engine.py, for every state."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from openevs.agent.mirror.engine import (
    HOT_EXTENT_REGIONS,
    MAX_CHUNK_REGIONS,
    NEVER_WRITTEN,
    REGION_BYTES,
    GroupState,
    MirrorState,
    WriteAction,
    busy_extents,
    cool_candidates,
    cooled,
    decide_flush,
    decide_write,
    dirty_bytes,
    group_ready,
    hot_ahead,
    hot_extents_of,
    merge_ranges,
    regions_of,
    regions_of_ranges,
    releasable,
    status,
    take_chunk,
    unchanged,
    wants_link,
)
from openevs.agent.mirror.regions import BitMap, span
from openevs.domain.replication import ReplicationStatus, Role

R = REGION_BYTES


def synced(**changes: object) -> MirrorState:
    state = MirrorState(role=Role.PRIMARY, mirroring=True, link_up=True)
    for key, value in changes.items():
        setattr(state, key, BitMap(value) if isinstance(value, set) else value)
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
    cursor: int | None = 0
    chunks: list[list[int]] = []
    while cursor is not None:
        chunk, cursor = take_chunk(state, cursor, last_region=last_region, max_regions=max_regions)
        if chunk:
            chunks.append(list(chunk))
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
    state = synced(dirty={2, 3})
    assert take_chunk(state, 0, last_region=10) == (range(2, 4), 4)
    assert take_chunk(state, 4, last_region=10) == (range(0), None)
    assert take_chunk(synced(), 0, last_region=10) == (range(0), None)


def test_take_chunk_walks_a_fully_dirty_32_tib_disk_without_materializing_it() -> None:
    everything = 32 * 2**40 // R
    state = synced(dirty=span(0, everything), copying=span(64, 128))
    assert take_chunk(state, 0, last_region=everything - 1) == (range(0, 64), 64)
    assert take_chunk(state, 64, last_region=everything - 1) == (range(128, 192), 192)
    assert take_chunk(state, everything - 10, last_region=everything - 1) == (
        range(everything - 10, everything), everything,
    )  # fmt: skip


def test_merge_ranges_and_dirty_bytes() -> None:
    assert merge_ranges({0, 1, 3}) == [(0, 2 * R), (3 * R, R)]
    assert merge_ranges({0, 1, 3}, size_bytes=3 * R + 100) == [(0, 2 * R), (3 * R, 100)]
    assert merge_ranges({5}, size_bytes=R) == []
    assert dirty_bytes(BitMap({0, 1, 3}), 3 * R + 100) == 2 * R + 100
    assert dirty_bytes(BitMap({0, 1, 2}), 3 * R + 100) == 3 * R
    assert dirty_bytes(BitMap({0, 9}), 3 * R) == R
    assert dirty_bytes(span(0, 2**29), 32 * 2**40) == 32 * 2**40
    assert set(regions_of_ranges([(0, 1), (R * 4, R + 1)])) == {0, 4, 5}


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


def test_regroup_splits_unless_every_primary_is_ready() -> None:
    group = GroupState("g", members={"a", "b"})
    assert group.regroup({"a": True, "b": True}) is False  # rejoined
    assert group.regroup({"a": True, "b": False}) is True  # one not ready: split
    assert group.regroup({"a": True}) is False  # b is no primary now: it does not count
    assert group.regroup({}) is False  # no primary: stays as it was
    group.forward_failed()
    assert group.regroup({}) is True


@pytest.mark.parametrize(
    ("state", "has_peer", "link", "ready"),
    [
        (synced(), True, True, True),
        (synced(), False, False, True),  # no peer to connect to (ready: its link is up)
        (synced(link_up=False), True, True, False),  # wants a link, has none yet
        (synced(mirroring=False), True, False, False),
        (synced(fenced=True), True, False, False),
        (synced(group_split=True), True, True, True),  # the group decides that part
        (MirrorState(role=Role.SECONDARY, mirroring=True, link_up=True), True, False, False),
        (MirrorState(role=Role.STANDALONE, mirroring=True, link_up=True), True, False, False),
    ],
)
def test_wants_link_and_group_ready(state: MirrorState, has_peer: bool, link: bool, ready: bool) -> None:
    assert wants_link(state, has_peer=has_peer) is link
    assert group_ready(state) is ready


def test_busy_extents() -> None:
    E = HOT_EXTENT_REGIONS
    assert busy_extents({}) == set()
    assert busy_extents({0: 1, E - 1: 2, 3 * E: 1}) == {0, 3}


def _last(extent: int) -> Callable[[], int]:
    def last() -> int:
        return extent

    return last


def _never_asked() -> int:
    raise AssertionError("the size was asked for in the usual case")


def test_hot_ahead_only_for_a_sequential_writer() -> None:
    # A write in extent 5 that did not come from a written extent 4: nothing ahead.
    assert hot_ahead({}, set(), range(5, 6), _never_asked) == []
    assert hot_ahead({4: NEVER_WRITTEN}, set(), range(5, 6), _never_asked) == []
    # From a written extent 4 into 5: the next batch, up to the volume's end.
    assert hot_ahead({4: 7}, set(), range(5, 6), _last(1000), ahead=4, batch=8) == list(range(6, 14))
    assert hot_ahead({4: 7}, set(), range(5, 6), _last(9), ahead=4, batch=8) == [6, 7, 8, 9]
    # What is hot or being made hot is skipped.
    assert hot_ahead({4: 7, 7: 1}, {8}, range(5, 6), _last(12), ahead=8, batch=8) == [6, 9, 10, 11, 12]


def test_hot_ahead_is_decided_without_the_size_when_the_window_is_hot() -> None:
    assert hot_ahead({4: 7, 9: NEVER_WRITTEN}, set(), range(5, 6), _never_asked, ahead=4) == []
    assert hot_ahead({4: 7}, {9}, range(5, 6), _never_asked, ahead=4) == []


def test_hot_ahead_at_the_end_of_the_volume() -> None:
    assert hot_ahead({4: 7}, set(), range(5, 6), _last(5), ahead=4) == []  # nothing past the end
    assert hot_ahead({4: 7, 7: 1}, set(), range(5, 6), _last(7), ahead=4) == []  # the end is hot


def test_cooling_clears_only_extents_idle_since_the_flushed_round() -> None:
    hot = {1: 3, 2: 5, 3: 9, 4: NEVER_WRITTEN}
    # Round ended at write 5: extents 1, 2 and 4 were idle since; 2 has a write in flight.
    candidates = cool_candidates(hot, 5, busy={2})
    assert candidates == [1, 4]
    hot[1] = 11  # written while the peer flushed: it stays hot
    del hot[4]  # released meanwhile (link loss): not cooled twice
    assert cooled(hot, candidates, 5) == []
    assert cooled({1: 3, 4: NEVER_WRITTEN}, candidates, 5) == [1, 4]


def test_unchanged_and_releasable() -> None:
    before = {1: 3, 2: 5, 3: 7}
    assert unchanged({1: 3, 2: 6}, before) == [1]  # 2 written since, 3 gone
    assert releasable({1: 3, 2: 5}, [1, 2, 3], busy={2}) == [1]
