"""The witness of a pair or group, and the automatic failover rule (domain/arbitration.py)."""

from __future__ import annotations

import pytest

from openevs.domain.arbitration import (
    AutoFailoverReading,
    WitnessChoice,
    arbiter_key,
    arbitration_view,
    auto_failover_due,
    choose_witness,
    witness_az,
)

AZS = ("az1", "az2", "az3")
AGENTS = {"az1": ("10.0.0.1", 8790), "az2": ("10.0.0.2", 8791), "az3": ("10.0.0.3", 8792)}


def test_the_key_of_a_group_member_is_its_group() -> None:
    assert arbiter_key("p1", "g1") == "group:g1"
    assert arbiter_key("p1", None) == "pair:p1"


@pytest.mark.parametrize(
    ("azs", "primary", "dr", "preferred", "expected"),
    [
        (AZS, "az1", "az2", "", "az3"),
        (AZS, "az2", "az3", "", "az1"),
        (AZS, "az1", "az3", "", "az2"),
        (("az1", "az2"), "az1", "az2", "", None),  # two AZs: static priority
        (("az1", "az2", "az3", "az4"), "az1", "az2", "", "az3"),  # the first that holds no disk
        (("az1", "az2", "az3", "az4"), "az1", "az2", "az4", "az4"),
        (AZS, "az1", "az2", "az1", "az3"),  # the preferred AZ holds a disk: not a witness
        (AZS, "az1", "az2", "az9", "az3"),  # not configured: ignored
    ],
)
def test_witness_az(
    azs: tuple[str, ...], primary: str, dr: str, preferred: str, expected: str | None
) -> None:
    assert witness_az(azs, primary, dr, preferred) == expected


def test_a_standalone_witness_overrides_the_embedded_ones() -> None:
    got = choose_witness(AZS, "az1", "az2", standalone=("w.example", 9000), agent_witnesses=AGENTS)
    assert got == WitnessChoice("w.example", 9000, "witness")


def test_the_third_az_agent_is_the_witness() -> None:
    assert choose_witness(AZS, "az1", "az2", agent_witnesses=AGENTS) == WitnessChoice("10.0.0.3", 8792, "az3")
    assert choose_witness(AZS, "az1", "az3", preferred_az="az2", agent_witnesses=AGENTS) == WitnessChoice(
        "10.0.0.2", 8791, "az2"
    )


def test_no_witness_with_two_azs_or_an_unknown_address() -> None:
    assert choose_witness(("az1", "az2"), "az1", "az2", agent_witnesses=AGENTS) is None
    assert choose_witness(AZS, "az1", "az2", agent_witnesses={"az3": ("h", 0)}) is None
    assert choose_witness(AZS, "az1", "az2", agent_witnesses={}) is None


GONE = AutoFailoverReading(primary_reachable=False, dr_link_down=True, witness_reachable=True)


@pytest.mark.parametrize(
    "reading",
    [
        AutoFailoverReading(primary_reachable=True, dr_link_down=True, witness_reachable=True),
        AutoFailoverReading(primary_reachable=False, dr_link_down=False, witness_reachable=True),
        AutoFailoverReading(primary_reachable=False, dr_link_down=True, witness_reachable=False),
    ],
)
def test_auto_failover_needs_every_condition(reading: AutoFailoverReading) -> None:
    assert auto_failover_due(reading, since_s=0.0, now_s=100.0, after_s=5.0) == (False, None)


def test_auto_failover_after_the_delay() -> None:
    assert auto_failover_due(GONE, None, now_s=10.0, after_s=5.0) == (False, 10.0)
    assert auto_failover_due(GONE, 10.0, now_s=14.0, after_s=5.0) == (False, 10.0)
    assert auto_failover_due(GONE, 10.0, now_s=15.0, after_s=5.0) == (True, 10.0)
    assert auto_failover_due(GONE, None, now_s=3.0, after_s=0.0) == (True, 3.0)


def reading(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"witness": "az3 (h:1)", "witness_reachable": True, "lease": False,
                               "outdated": False, "suspended": False}  # fmt: skip
    return {**base, **fields}


def test_the_view_of_a_static_priority_unit_is_null() -> None:
    assert arbitration_view([]) is None
    assert arbitration_view([None, None]) is None


def test_a_group_is_as_suspended_as_any_member_and_reachable_if_all_are() -> None:
    view = arbitration_view([reading(), reading(suspended=True, witness_reachable=False), None])
    assert view == {"witness": "az3 (h:1)", "witness_reachable": False, "suspended": True, "lease": False,
                    "outdated": False}  # fmt: skip
    assert arbitration_view([reading(lease=True)]) == reading(lease=True)


def test_a_loopback_witness_is_not_offered_to_agents_on_other_hosts() -> None:
    local = {"az3": ("127.0.0.1", 8792)}
    assert choose_witness(AZS, "az1", "az2", agent_witnesses=local, remote_sides=True) is None
    assert choose_witness(AZS, "az1", "az2", agent_witnesses=local) == WitnessChoice("127.0.0.1", 8792, "az3")
    assert choose_witness(AZS, "az1", "az2", standalone=("localhost", 1), remote_sides=True) is None
    assert choose_witness(AZS, "az1", "az2", standalone=("10.9.9.9", 1), remote_sides=True) is not None
