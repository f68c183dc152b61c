"""The witness's rules (witness/arbiter.py), decision by decision."""

from __future__ import annotations

import pytest

from openevs.witness.arbiter import Arbiter, Record, Refusal, holder_expiry

A, B = "az1.dc1", "az2.dc2"
KEY = "group:g1"


def test_first_grant_creates_the_record() -> None:
    arbiter = Arbiter(lease_s=6)
    decision = arbiter.acquire(KEY, 1, A, now=100)
    assert decision.granted and decision.changed and decision.lease_s == 6
    assert arbiter.records[KEY] == Record(KEY, 1, A)
    assert arbiter.lease_left_s(KEY, 103) == 3


def test_renewing_changes_no_record() -> None:
    arbiter = Arbiter(lease_s=6)
    arbiter.acquire(KEY, 1, A, now=0)
    renewed = arbiter.acquire(KEY, 1, A, now=5)
    assert renewed.granted and not renewed.changed
    assert arbiter.lease_left_s(KEY, 10) == 1


@pytest.mark.parametrize(
    ("held", "asked", "side", "now", "refusal"),
    [
        ((2, A), 1, A, 0, Refusal.STALE_EPOCH),  # an older epoch never comes back
        ((2, A), 1, B, 100, Refusal.STALE_EPOCH),
        ((2, A), 2, B, 100, Refusal.HELD_BY_PEER),  # one side per epoch
        ((2, A), 3, B, 1, Refusal.LEASE_LIVE),  # the holder's lease still runs
    ],
)
def test_refusals(held: tuple[int, str], asked: int, side: str, now: float, refusal: Refusal) -> None:
    arbiter = Arbiter(lease_s=6)
    arbiter.acquire(KEY, held[0], held[1], now=0)
    decision = arbiter.acquire(KEY, asked, side, now=now)
    assert not decision.granted and decision.refusal is refusal
    assert arbiter.records[KEY] == Record(KEY, *held)  # a refusal changes nothing


def test_a_higher_epoch_goes_to_the_other_side_once_the_lease_ran_out() -> None:
    arbiter = Arbiter(lease_s=6)
    arbiter.acquire(KEY, 1, A, now=0)
    assert arbiter.acquire(KEY, 2, B, now=5.9).refusal is Refusal.LEASE_LIVE
    decision = arbiter.acquire(KEY, 2, B, now=6.0)
    assert decision.granted and arbiter.records[KEY] == Record(KEY, 2, B)
    # The old holder is refused from now on, even at its own epoch.
    assert arbiter.acquire(KEY, 1, A, now=7).refusal is Refusal.STALE_EPOCH


def test_a_released_lease_does_not_delay_a_failover() -> None:
    arbiter = Arbiter(lease_s=6)
    arbiter.acquire(KEY, 1, A, now=0)
    assert not arbiter.release(KEY, 1, B)  # only the holder can release
    assert not arbiter.release(KEY, 0, A)
    assert arbiter.release(KEY, 1, A)
    assert arbiter.acquire(KEY, 2, B, now=1).granted


def test_force_overrides_a_live_lease_but_never_an_epoch() -> None:
    arbiter = Arbiter(lease_s=6)
    arbiter.acquire(KEY, 1, A, now=0)
    assert arbiter.acquire(KEY, 2, B, now=1, force=True).granted
    assert arbiter.acquire(KEY, 1, A, now=2, force=True).refusal is Refusal.STALE_EPOCH


def test_the_same_side_may_move_to_a_higher_epoch_at_once() -> None:
    arbiter = Arbiter(lease_s=6)
    arbiter.acquire(KEY, 1, A, now=0)
    assert arbiter.acquire(KEY, 2, A, now=1).granted


def test_a_primary_in_sync_holds_no_lease_so_failover_needs_no_wait() -> None:
    arbiter = Arbiter(lease_s=6)
    assert arbiter.acquire(KEY, 2, B, now=0).granted


def test_after_a_restart_every_record_counts_as_leased() -> None:
    arbiter = Arbiter.restarted([Record(KEY, 3, A)], now=50, lease_s=6)
    assert arbiter.acquire(KEY, 4, B, now=55).refusal is Refusal.LEASE_LIVE
    assert arbiter.acquire(KEY, 4, B, now=56).granted


def test_decide_alone_changes_nothing() -> None:
    arbiter = Arbiter(lease_s=6)
    decision = arbiter.decide(KEY, 1, A, now=0)
    assert decision.granted and KEY not in arbiter.records
    arbiter.apply(decision, now=1)
    assert arbiter.records[KEY] == Record(KEY, 1, A) and arbiter.lease_left_s(KEY, 1) == 6


def test_units_are_independent() -> None:
    arbiter = Arbiter(lease_s=6)
    arbiter.acquire("pair:p1", 1, A, now=0)
    assert arbiter.acquire("pair:p2", 1, B, now=0).granted


def test_seen_and_forget() -> None:
    arbiter = Arbiter(lease_s=6)
    assert arbiter.seen_ago_s(A, 10) is None
    arbiter.seen(A, 4)
    assert arbiter.seen_ago_s(A, 10) == 6
    arbiter.acquire(KEY, 1, A, now=0)
    assert arbiter.forget(KEY) and not arbiter.forget(KEY)


def test_the_holder_believes_its_lease_ended_first() -> None:
    # Sent at 10 on the holder's clock, received (and leased) at 10.2 by the witness.
    assert holder_expiry(10.0, 6.0) < 10.2 + 6.0
    assert holder_expiry(10.0, 6.0) == pytest.approx(15.4)
