"""The partition scenarios' checker: pure functions over a recorded history.

A history is what the probes (probe.py) logged: every write a user sent,
with its outcome (`ack`, `fail`, or none: unknown), and every state an
agent reported, with the instant it was sampled. The checker also gets the
topology (which disk is in which AZ, which pair in which group) and what
the final primary of each pair holds, read back after heal and
reprotect/sync. It does no I/O.

What it verifies (Jepsen's method, applied to one replication group):

- *lost writes*: every block must hold the latest acknowledged write that
  covered it, or a write of unknown or failed fate that may have landed
  after it (a write that was refused may still have reached a disk);
- *two primaries*, from the acknowledgements: the two disks of a pair (or
  the disks of the two sides of a group) accepted writes in the same
  period: a write of side X was sent after a write of side Y was
  acknowledged, *and* the other way round. A write is accepted somewhere
  in [sent, acknowledged], so a clean handover (every write of the old
  side before every write of the new) never counts;
- *two primaries*, from the sampled states: an instant at which both
  disks of a pair reported that they would acknowledge a write their peer
  lacks (primary, not fenced, not outdated, and static priority or a live
  lease). Two primaries cannot mirror to each other, so a primary's belief
  that its link is up does not count;
- *split groups*: an instant at which two members of a group would
  acknowledge writes alone on different sides, and the final primaries of
  a group's members in different AZs;
- *suspend durations*: each run of samples in which a disk reported
  suspended writes, as long as the agent measured it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BLOCK = 4096
STALE_S = 0.5  # a sample older than this says nothing about the instant


@dataclass(frozen=True)
class Write:
    writer: str
    pair: str
    disk: str
    seq: int
    offset: int
    sums: tuple[str, ...]
    sent_s: float
    outcome: str  # "ack" | "fail" | "unknown"
    done_s: float = math.inf  # when the outcome came (unknown: never)

    @property
    def acked(self) -> bool:
        return self.outcome == "ack"

    def block(self, offset: int) -> str | None:
        i, rest = divmod(offset - self.offset, BLOCK)
        return self.sums[i] if rest == 0 and 0 <= i < len(self.sums) else None


@dataclass(frozen=True)
class Sample:
    t: float
    az: str
    vol: str
    role: str
    epoch: int
    fenced: bool = False
    io_error: bool = False
    arbitrated: bool = False
    lease: bool = False
    outdated: bool = False
    suspended: bool = False
    suspended_for_s: float = 0.0

    @property
    def writes_alone(self) -> bool:
        """It would acknowledge a write its peer lacks, now."""
        usable = self.role == "primary" and not self.fenced and not self.io_error and not self.outdated
        return usable and (not self.arbitrated or self.lease)


@dataclass(frozen=True)
class Topology:
    pairs: Mapping[str, tuple[str, str]]  # pair -> its two disks
    az_of: Mapping[str, str]  # disk -> AZ
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group -> its pairs


@dataclass(frozen=True)
class Lost:
    pair: str
    offset: int
    writer: str
    seq: int
    found: str


@dataclass
class Verdict:
    acked: int = 0
    failed: int = 0
    unknown: int = 0
    lost: list[Lost] = field(default_factory=list)
    overlapping_units: list[str] = field(default_factory=list)  # pairs/groups, from the acks
    two_primary_instants: list[tuple[str, float]] = field(default_factory=list)  # (pair, t)
    split_instants: list[tuple[str, float]] = field(default_factory=list)  # (group, t)
    final_split: list[str] = field(default_factory=list)
    suspend_s: list[float] = field(default_factory=list)

    @property
    def lost_writes(self) -> int:
        return len({(x.writer, x.seq) for x in self.lost})

    @property
    def two_primaries(self) -> int:
        """Units that had two primaries, by either evidence."""
        return len(set(self.overlapping_units) | {p for p, _ in self.two_primary_instants})

    @property
    def ok(self) -> bool:
        return not (self.lost or self.two_primaries or self.split_instants or self.final_split)


# -- parsing ------------------------------------------------------------------------


def writes_of(events: Iterable[Mapping[str, Any]]) -> list[Write]:
    sent: dict[tuple[str, int], Mapping[str, Any]] = {}
    outcome: dict[tuple[str, int], tuple[str, float]] = {}
    for e in events:
        key = (str(e.get("w")), int(e.get("seq", 0)))
        if e["k"] == "sent":
            sent[key] = e
        elif e["k"] in ("ack", "fail"):
            outcome[key] = (str(e["k"]), float(e["t"]))
    out = []
    for key, e in sent.items():
        kind, done = outcome.get(key, ("unknown", math.inf))
        out.append(Write(writer=key[0], pair=e["pair"], disk=e["disk"], seq=key[1], offset=int(e["off"]),
                         sums=tuple(e["sums"]), sent_s=float(e["t"]), outcome=kind, done_s=done))  # fmt: skip
    return sorted(out, key=lambda w: w.sent_s)


def samples_of(events: Iterable[Mapping[str, Any]]) -> list[Sample]:
    out = []
    for e in events:
        if e["k"] != "state":
            continue
        st, arb = e["st"], e["st"].get("arbitration")
        out.append(Sample(
            t=float(e["t"]), az=e["az"], vol=e["vol"], role=st["role"], epoch=int(st["epoch"]),
            fenced=bool(st.get("fenced")), io_error=bool(st.get("io_error")), arbitrated=arb is not None,
            lease=bool(arb and arb.get("lease")), outdated=bool(arb and arb.get("outdated")),
            suspended=bool(arb and arb.get("suspended")),
            suspended_for_s=float(arb.get("suspended_for_s", 0.0)) if arb else 0.0,
        ))  # fmt: skip
    return sorted(out, key=lambda s: s.t)


# -- the checks -----------------------------------------------------------------------


def lost_writes(writes: Iterable[Write], pair: str, found: Mapping[int, str]) -> list[Lost]:
    """Blocks of `pair` whose latest acknowledged write is not in `found` (offset -> checksum)."""
    by_block: dict[int, list[Write]] = defaultdict(list)
    for w in writes:
        if w.pair == pair:
            for i in range(len(w.sums)):
                by_block[w.offset + i * BLOCK].append(w)
    lost = []
    for offset, covering in sorted(by_block.items()):
        acked = [w for w in covering if w.acked]
        if not acked:
            continue
        latest = max(acked, key=lambda w: w.done_s)
        allowed = {latest.block(offset)}
        allowed |= {w.block(offset) for w in covering if not w.acked and w.done_s > latest.sent_s}
        got = found.get(offset, "")
        if got not in allowed:
            lost.append(Lost(pair, offset, latest.writer, latest.seq, got))
    return lost


def overlapping(writes: Iterable[Write], az_of: Mapping[str, str]) -> bool:
    """Did two sides accept writes in the same period (each side wrote after the other)?"""
    first_ack: dict[str, float] = {}
    last_sent: dict[str, float] = {}
    for w in writes:
        if not w.acked:
            continue
        side = az_of[w.disk]
        first_ack[side] = min(first_ack.get(side, math.inf), w.done_s)
        last_sent[side] = max(last_sent.get(side, -math.inf), w.sent_s)
    sides = sorted(first_ack)
    return any(
        last_sent[x] > first_ack[y] and last_sent[y] > first_ack[x]
        for i, x in enumerate(sides) for y in sides[i + 1 :]
    )  # fmt: skip


def _instants(samples: list[Sample], vols: set[str]) -> Iterable[tuple[float, dict[str, Sample]]]:
    """At every sample of one of `vols`: the latest fresh sample of each of them."""
    latest: dict[str, Sample] = {}
    for s in samples:
        if s.vol not in vols:
            continue
        latest[s.vol] = s
        yield s.t, {v: x for v, x in latest.items() if s.t - x.t <= STALE_S}


def two_primary_instants(samples: list[Sample], pair: str, disks: tuple[str, str]) -> list[tuple[str, float]]:
    return [
        (pair, t) for t, now in _instants(samples, set(disks))
        if all(d in now and now[d].writes_alone for d in disks)
    ]  # fmt: skip


def split_instants(samples: list[Sample], group: str, topo: Topology) -> list[tuple[str, float]]:
    members = [topo.pairs[p] for p in topo.groups[group]]
    out = []
    for t, now in _instants(samples, {d for disks in members for d in disks}):
        sides = [{now[d].az for d in disks if d in now and now[d].writes_alone} for disks in members]
        alone = [s for s in sides if s]
        if any(s != alone[0] for s in alone):
            out.append((group, t))
    return out


def suspend_durations(samples: list[Sample]) -> list[float]:
    """One figure per run of samples of one disk reporting suspended writes: the longest
    suspension the agent measured in it."""
    runs: list[float] = []
    current: dict[str, float] = {}
    for s in samples:
        if s.suspended:
            current[s.vol] = max(current.get(s.vol, 0.0), s.suspended_for_s)
        elif s.vol in current:
            runs.append(current.pop(s.vol))
    return runs + list(current.values())


def check(
    events: Iterable[Mapping[str, Any]], topo: Topology, found: Mapping[str, Mapping[int, str]],
    final_primary_az: Mapping[str, str],
) -> Verdict:  # fmt: skip
    """The whole verdict: `found` is pair -> (offset -> checksum) read on its final
    primary, `final_primary_az` pair -> the AZ of its final primary."""
    events = list(events)
    writes, samples = writes_of(events), samples_of(events)
    v = Verdict(
        acked=sum(w.acked for w in writes),
        failed=sum(w.outcome == "fail" for w in writes),
        unknown=sum(w.outcome == "unknown" for w in writes),
    )
    for pair, disks in sorted(topo.pairs.items()):
        v.lost += lost_writes(writes, pair, found.get(pair, {}))
        if overlapping((w for w in writes if w.pair == pair), topo.az_of):
            v.overlapping_units.append(pair)
        v.two_primary_instants += two_primary_instants(samples, pair, disks)
    for group, pairs in sorted(topo.groups.items()):
        if overlapping((w for w in writes if w.pair in pairs), topo.az_of):
            v.overlapping_units.append(group)
        v.split_instants += split_instants(samples, group, topo)
        if len({final_primary_az.get(p) for p in pairs}) > 1:
            v.final_split.append(group)
    v.suspend_s = suspend_durations(samples)
    return v


def blocks_to_read(events: Iterable[Mapping[str, Any]], pair: str) -> list[int]:
    """Every block offset of `pair` some write covered (what to read back)."""
    return sorted(
        {w.offset + i * BLOCK for w in writes_of(events) if w.pair == pair for i in range(len(w.sums))}
    )
