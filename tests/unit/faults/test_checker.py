"""The partition checker (tests/faults/checker.py) on synthetic histories: it passes
clean ones and finds each kind of violation."""

from __future__ import annotations

from typing import Any

from tests.faults.checker import (
    BLOCK,
    Topology,
    blocks_to_read,
    check,
    lost_writes,
    overlapping,
    samples_of,
    split_instants,
    suspend_durations,
    two_primary_instants,
    writes_of,
)

A, B = "az1.dc1", "az3.dc3"
TOPO = Topology(
    pairs={"p0": ("a0", "b0"), "p1": ("a1", "b1")},
    az_of={"a0": A, "a1": A, "b0": B, "b1": B},
    groups={"g": ("p0", "p1")},
)


class History:
    """Builds probe events the way probe.py logs them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._seq = 0

    def write(self, disk: str, off: int, sent: float, done: float | None, outcome: str = "ack",
              nblocks: int = 1, writer: str | None = None) -> list[str]:  # fmt: skip
        self._seq += 1
        w = writer or f"w-{disk}"
        pair = "p" + disk[1:]
        sums = [f"{w}-{self._seq}-{i}" for i in range(nblocks)]
        self.events.append({"k": "sent", "w": w, "pair": pair, "disk": disk, "seq": self._seq,
                            "off": off, "sums": sums, "t": sent})  # fmt: skip
        if done is not None:
            self.events.append({"k": outcome, "w": w, "seq": self._seq, "t": done})
        return sums

    def state(self, disk: str, t: float, role: str = "primary", epoch: int = 1, **arb: Any) -> None:
        st: dict[str, Any] = {"role": role, "epoch": epoch, "fenced": arb.pop("fenced", False)}
        if arb.pop("arbitrated", True):
            st["arbitration"] = {"witness": "w", "witness_reachable": True, **arb}
        self.events.append(
            {"k": "state", "az": TOPO.az_of[disk], "vol": disk, "t0": t - 0.01, "t": t, "st": st}
        )


def test_a_clean_failover_passes() -> None:
    h = History()
    [x] = h.write("a0", 0, 1.0, 1.1)
    [y] = h.write("a0", BLOCK, 1.2, 1.3)
    h.write("a0", 2 * BLOCK, 2.0, 9.0, "fail")  # suspended, then EIO: fate unknown
    [z] = h.write("b0", BLOCK, 10.0, 10.1)  # the DR side after failover
    h.state("a0", 5.0, lease=False, suspended=True, suspended_for_s=3.0)
    h.state("b0", 5.0, role="primary", epoch=2, lease=True)
    found = {"p0": {0: x, BLOCK: z, 2 * BLOCK: "zeros"}}
    v = check(h.events, TOPO, found, {"p0": B, "p1": B})
    assert v.ok, v
    assert (v.acked, v.failed, v.unknown) == (3, 1, 0)
    assert v.suspend_s == [3.0]
    assert y != z


def test_a_missing_acknowledged_block_is_lost() -> None:
    h = History()
    h.write("a0", 0, 1.0, 1.1, nblocks=2)
    [y] = h.write("b0", 0, 3.0, 3.1)
    v = check(h.events, TOPO, {"p0": {0: y, BLOCK: "zeros"}}, {"p0": B, "p1": B})
    assert [(x.offset, x.seq) for x in v.lost] == [(BLOCK, 1)]
    assert v.lost_writes == 1 and not v.ok


def test_a_refused_or_unknown_write_may_have_landed_after_the_last_ack() -> None:
    h = History()
    [old] = h.write("a0", 0, 1.0, 1.1)
    [refused] = h.write("a0", 0, 2.0, 2.5, "fail")
    [unknown] = h.write("a0", BLOCK, 3.0, None)
    writes = writes_of(h.events)
    assert [w.outcome for w in writes] == ["ack", "fail", "unknown"]
    assert not lost_writes(writes, "p0", {0: refused})
    assert not lost_writes(writes, "p0", {0: old})
    assert lost_writes(writes, "p0", {0: "something else"})
    assert not lost_writes(writes, "p0", {0: old, BLOCK: unknown})  # nothing acked there


def test_an_older_ack_is_lost_when_a_newer_one_is_missing() -> None:
    h = History()
    [old] = h.write("a0", 0, 1.0, 1.1)
    h.write("a0", 0, 2.0, 2.1)
    [lost] = lost_writes(writes_of(h.events), "p0", {0: old})
    assert lost.seq == 2 and lost.found == old


def test_split_brain_acks_overlap() -> None:
    h = History()
    for i in range(10):
        h.write("a0", 0, 1.0 + i, 1.1 + i)  # the old primary goes on alone until 10.1
    for i in range(5):
        h.write("b0", BLOCK, 5.0 + i, 5.1 + i)  # the promoted side from 5.0
    assert overlapping(writes_of(h.events), TOPO.az_of)
    v = check(h.events, TOPO, {}, {"p0": B, "p1": B})
    assert v.overlapping_units == ["p0", "g"] and v.two_primaries == 2


def test_a_tight_handover_does_not_overlap() -> None:
    h = History()
    h.write("a0", 0, 4.9, 5.0)
    h.write("b0", 0, 4.95, 5.1)  # sent before the old side's last ack arrived, acked after
    h.write("b0", 0, 6.0, 6.1)
    assert not overlapping(writes_of(h.events), TOPO.az_of)


def test_group_members_acked_on_both_sides_overlap() -> None:
    h = History()
    h.write("a0", 0, 1.0, 1.1)
    h.write("a0", 0, 6.0, 6.1)  # member 0 still on A
    h.write("b1", 0, 5.0, 5.1)  # member 1 already on B
    h.write("b1", 0, 7.0, 7.1)
    v = check(h.events, TOPO, {}, {"p0": A, "p1": B})
    assert "g" in v.overlapping_units and "p0" not in v.overlapping_units
    assert v.final_split == ["g"]


def test_sampled_instants_with_two_primaries_writing_alone() -> None:
    h = History()
    h.state("a0", 1.00, arbitrated=False)
    h.state("b0", 1.02, epoch=2, arbitrated=False)  # static priority, both promoted
    h.state("a0", 1.05, arbitrated=False)
    instants = two_primary_instants(samples_of(h.events), "p0", ("a0", "b0"))
    assert [t for _, t in instants] == [1.02, 1.05]


def test_a_primary_without_lease_or_a_stale_sample_is_not_a_second_primary() -> None:
    h = History()
    h.state("a0", 1.0, lease=True)
    h.state("b0", 2.0, epoch=2, lease=True)  # a0's sample is stale by then
    h.state("a0", 2.1, lease=False)  # believes its link is up, but holds no lease
    h.state("b0", 2.2, epoch=2, lease=True)
    h.state("a0", 2.3, lease=True, outdated=True)
    h.state("a0", 2.4, lease=True, fenced=True)
    assert not two_primary_instants(samples_of(h.events), "p0", ("a0", "b0"))


def test_group_members_writing_alone_on_different_sides_are_split() -> None:
    h = History()
    h.state("a0", 1.0, lease=True)
    h.state("b1", 1.1, epoch=2, lease=True)
    h.state("a1", 1.2, lease=False)
    assert [t for _, t in split_instants(samples_of(h.events), "g", TOPO)] == [1.1, 1.2]
    h2 = History()
    h2.state("a0", 1.0, lease=True)
    h2.state("a1", 1.1, lease=True)
    h2.state("b1", 1.2, role="secondary")
    assert not split_instants(samples_of(h2.events), "g", TOPO)


def test_suspend_durations_are_one_figure_per_run() -> None:
    h = History()
    for t, s in ((1.0, 0.5), (1.1, 0.6), (1.2, 0.0)):
        h.state("a0", t, suspended=s > 0, suspended_for_s=s)
    h.state("a1", 1.3, suspended=True, suspended_for_s=2.0)
    assert suspend_durations(samples_of(h.events)) == [0.6, 2.0]


def test_blocks_to_read_cover_every_write_of_the_pair() -> None:
    h = History()
    h.write("a0", 0, 1.0, 1.1, nblocks=2)
    h.write("a1", 8 * BLOCK, 1.0, 1.1)
    h.write("b0", 4 * BLOCK, 2.0, None)
    assert blocks_to_read(h.events, "p0") == [0, BLOCK, 4 * BLOCK]
