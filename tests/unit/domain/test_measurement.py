"""A pair's row from what its production agent measured, and a group's from its members."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from openevs.contract import ArbitrationState, ReplicationState, SyncProgress
from openevs.domain.measurement import (
    GroupMeasurement,
    GroupResync,
    aggregate_group,
    group_resync,
    measure_pair,
    progress_percent,
)  # fmt: skip
from openevs.domain.replication import (
    FAULT_LINK,
    FAULT_NONE,
    FAULT_PRODUCTION,
    FD_LINK,
    ReplicationStatus,
    Role,
)

RS = ReplicationStatus


def primary(**fields: object) -> ReplicationState:
    base: dict[str, object] = {"volume_id": "v", "role": Role.PRIMARY, "epoch": 1, "mirroring": True,
                               "link_up": True, "replication_status": RS.ACTIVE}  # fmt: skip
    return ReplicationState.model_validate({**base, **fields})


def test_an_unreachable_agent_is_fault_2_and_nothing_else() -> None:
    assert measure_pair(None) == {"fault_level": FAULT_PRODUCTION}


@pytest.mark.parametrize(
    ("fields", "status", "progress", "fault"),
    [
        ({}, "active", "100", FAULT_NONE),
        ({"replication_status": RS.COPYING, "sync": SyncProgress(copied_bytes=1, total_bytes=4)},
         "copying", "25", FAULT_NONE),
        ({"replication_status": RS.COPYING}, "copying", None, FAULT_NONE),  # no progress yet
        ({"replication_status": RS.INACTIVE, "link_up": False}, "inactive", None, FAULT_LINK),
        ({"replication_status": RS.ACTIVE_STOPPED, "mirroring": False, "link_up": False},
         "active-stopped", None, FAULT_NONE),  # paused: the link is not expected up
        ({"io_error": True, "link_up": False}, "active", "100", FAULT_PRODUCTION),  # the disk beats the link
        ({"replication_status": None}, None, None, FAULT_NONE),
    ],
)  # fmt: skip
def test_measure_pair(
    fields: dict[str, object], status: str | None, progress: str | None, fault: str
) -> None:
    values = measure_pair(primary(resynced_bytes_total=512, **fields))
    assert values == {"replication_status": status, "progress": progress, "fault_level": fault,
                      "synced_bytes": 512, "dirty_bytes": 0, "resync_rate_bytes_per_s": 0.0,
                      "resync_eta_s": None}  # fmt: skip


def test_measure_pair_carries_the_resync_figures() -> None:
    values = measure_pair(primary(dirty_bytes=4096, resync_rate_bytes_per_s=1e6, resync_eta_s=12.5))
    figures = (values["dirty_bytes"], values["resync_rate_bytes_per_s"], values["resync_eta_s"])
    assert figures == (4096, 1e6, 12.5)


@pytest.mark.parametrize(
    ("copied", "total", "percent"),
    [(0, 10, "0"), (5, 10, "50"), (9, 10, "90"), (20, 10, "100"), (0, 0, "100")],
)
def test_progress_percent(copied: int, total: int, percent: str) -> None:
    assert progress_percent(copied, total) == percent


@dataclass(frozen=True)
class Member:
    replication_status: str | None
    fault_level: str | None = FAULT_NONE
    progress: str | None = None


def test_a_group_without_members() -> None:
    assert aggregate_group([]) == GroupMeasurement(None, FAULT_NONE, None)


ORDER = ["error", "copying", "inactive", "active-stopped", "active"]


@pytest.mark.parametrize("worse", range(len(ORDER)))
@pytest.mark.parametrize("better", range(len(ORDER)))
def test_the_worst_member_status_wins(worse: int, better: int) -> None:
    members = [Member(ORDER[better]), Member(ORDER[worse])]
    assert aggregate_group(members).replication_status == ORDER[min(worse, better)]


def test_unknown_member_statuses_do_not_count() -> None:
    assert aggregate_group([Member(None), Member("active")]).replication_status == "active"
    assert aggregate_group([Member(None)]).replication_status is None


@pytest.mark.parametrize(
    ("faults", "fault"),
    [
        ([FAULT_NONE, FAULT_NONE], FAULT_NONE),
        ([FAULT_LINK, FAULT_NONE], FAULT_LINK),
        ([FAULT_LINK, FAULT_PRODUCTION], FAULT_PRODUCTION),
        ([None, FAULT_NONE], FAULT_NONE),
    ],
)
def test_fault_precedence(faults: list[str | None], fault: str) -> None:
    assert aggregate_group([Member("active", f) for f in faults]).fault_level == fault


def test_group_progress() -> None:
    copying = [Member("copying", "0", "50"), Member("copying", "0", None), Member("active", "0", "100")]
    assert aggregate_group(copying).progress == "50"  # (50 + 0 + 100) // 3
    assert aggregate_group([Member("active"), Member("active")]).progress == "100"
    assert aggregate_group([Member("inactive", progress="70")]).progress is None


def _arbitration(suspended: bool) -> ArbitrationState:
    return ArbitrationState(witness="az3", witness_reachable=False, lease=False, suspended=suspended)


def test_a_suspended_primary_is_fault_2_with_the_link_failure_detail() -> None:
    state = primary(replication_status=RS.INACTIVE, link_up=False, arbitration=_arbitration(True))
    values = measure_pair(state)
    assert values["fault_level"] == FAULT_PRODUCTION and values["failure_detail"] == FD_LINK
    assert values["replication_status"] == "inactive"


def test_the_failure_detail_clears_when_it_resumes_and_only_then() -> None:
    resumed = primary(replication_status=RS.INACTIVE, link_up=False, arbitration=_arbitration(False))
    assert measure_pair(resumed, was_suspended=True)["failure_detail"] is None
    assert "failure_detail" not in measure_pair(resumed, was_suspended=False)
    assert measure_pair(resumed)["fault_level"] == FAULT_LINK


@dataclass
class _Resync:
    dirty_bytes: int | None
    resync_rate_bytes_per_s: float | None
    resync_eta_s: float | None


def test_a_groups_resync_sums_what_is_left_and_waits_for_the_slowest_member() -> None:
    rollup = group_resync([_Resync(4096, 1000.0, 4.0), _Resync(0, 0.0, None), _Resync(8192, 500.0, 16.0)])
    assert rollup == GroupResync(12288, 1500.0, 16.0)
    assert group_resync([_Resync(None, None, None)]) == GroupResync(0, 0.0, None)
    assert group_resync([]) == GroupResync(0, 0.0, None)
