"""The witness's decisions: which side of a pair or group may go on writing alone.

Sans-IO: no clock, file or socket. The caller passes `now` (its monotonic
clock, in seconds) and persists a record before it answers a grant that
changed one (`Decision.changed`).

An *arbitration unit* is one replication pair (`pair:<id>`) or one
consistency group (`group:<id>`, all members at once). Its durable record is
the highest epoch ever granted and the *side* (the AZ of the agent) that
holds it. A grant also carries a lease: the holder may acknowledge writes
its peer did not get until the lease runs out, and must renew it to go on.

Rules this module keeps:

- an epoch is granted to one side only, and an older epoch is never granted
  again (epochs only grow; a stale holder that comes back is refused);
- a higher epoch goes to the other side only once the holder's lease is not
  live: it ran out, was released, or was never taken (a primary that writes
  through to its peer holds no lease, and its writes fence themselves: they
  fail once the peer is promoted); `force` (an operator's explicit override)
  skips that wait;
- after a restart every record counts as leased for one more lease time,
  because the witness cannot know which leases it granted just before;
- a decision changes nothing by itself (`decide`); it takes effect with
  `apply`, after the caller persisted a changed record, so a failed write
  leaves the witness as it was;
- the holder measures its lease from the moment it *sent* the request, the
  witness from the moment it *received* it, so the holder always believes
  its lease ended first (given a bounded clock-rate drift, covered by the
  holder's safety margin: see `holder_expiry`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

DEFAULT_LEASE_S = 6.0
DRIFT_MARGIN = 0.1  # the holder gives up this fraction of the lease for clock-rate drift


class Refusal(enum.StrEnum):
    STALE_EPOCH = "stale_epoch"  # the unit is at a higher epoch already
    HELD_BY_PEER = "held_by_peer"  # the other side holds this epoch
    LEASE_LIVE = "lease_live"  # the other side's lease has not run out


@dataclass(frozen=True, slots=True)
class Record:
    """What the witness persists per unit (fsynced before a grant that changed it)."""

    key: str
    epoch: int
    holder: str


@dataclass(frozen=True, slots=True)
class Decision:
    key: str
    granted: bool
    record: Record | None  # the record after the decision
    lease_s: float = 0.0  # granted: the lease's length
    refusal: Refusal | None = None
    lease_left_s: float = 0.0  # refused because of a live lease: how long it still runs
    changed: bool = False  # granted and the record changed: persist it before answering


def holder_expiry(sent_at: float, lease_s: float) -> float:
    """Until when (on the holder's clock) a lease asked for at `sent_at` may be used."""
    return sent_at + lease_s * (1.0 - DRIFT_MARGIN)


@dataclass
class Arbiter:
    lease_s: float = DEFAULT_LEASE_S
    records: dict[str, Record] = field(default_factory=dict)
    _lease_until: dict[str, float] = field(default_factory=dict)
    _last_seen: dict[str, float] = field(default_factory=dict)

    @classmethod
    def restarted(cls, records: list[Record], now: float, lease_s: float = DEFAULT_LEASE_S) -> Arbiter:
        """After a restart: every persisted record counts as leased for one lease time."""
        arbiter = cls(lease_s=lease_s, records={r.key: r for r in records})
        arbiter._lease_until = {r.key: now + lease_s for r in records}
        return arbiter

    def seen(self, side: str, now: float) -> None:
        """Any message from `side` shows it is alive (automatic failover reads this)."""
        self._last_seen[side] = now

    def seen_ago_s(self, side: str, now: float) -> float | None:
        """Seconds since `side` was last heard of, or None if never (since the witness started)."""
        last = self._last_seen.get(side)
        return None if last is None else now - last

    def lease_left_s(self, key: str, now: float) -> float:
        return max(0.0, self._lease_until.get(key, 0.0) - now)

    def decide(self, key: str, epoch: int, side: str, now: float, *, force: bool = False) -> Decision:
        """Whether unit `key` may be granted (or renewed) at `epoch` to `side`; changes nothing."""
        record = self.records.get(key)
        if record is not None:
            if epoch < record.epoch:
                return Decision(key, False, record, refusal=Refusal.STALE_EPOCH)
            if epoch == record.epoch and record.holder != side:
                return Decision(key, False, record, refusal=Refusal.HELD_BY_PEER)
            left = self.lease_left_s(key, now)
            if epoch > record.epoch and record.holder != side and left > 0 and not force:
                return Decision(key, False, record, refusal=Refusal.LEASE_LIVE, lease_left_s=left)
        new = Record(key, epoch, side)
        return Decision(key, True, new, lease_s=self.lease_s, changed=new != record)

    def apply(self, decision: Decision, now: float) -> None:
        """Take a grant into effect (after its record, if changed, was persisted)."""
        if decision.granted and decision.record is not None:
            self.records[decision.key] = decision.record
            self._lease_until[decision.key] = now + decision.lease_s

    def acquire(self, key: str, epoch: int, side: str, now: float, *, force: bool = False) -> Decision:
        """`decide` and `apply` in one step (for callers that persist nothing)."""
        decision = self.decide(key, epoch, side, now, force=force)
        self.apply(decision, now)
        return decision

    def release(self, key: str, epoch: int, side: str) -> bool:
        """The holder gives its lease up (demoted, or back in sync); True if it held it."""
        record = self.records.get(key)
        if record is None or record.epoch != epoch or record.holder != side:
            return False
        self._lease_until.pop(key, None)
        return True

    def forget(self, key: str) -> bool:
        """The unit is gone (pair or group deleted); its epochs can never come back."""
        self._lease_until.pop(key, None)
        return self.records.pop(key, None) is not None
