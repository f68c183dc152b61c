"""The unit of work: commit or roll back, effects after the commit, the wake-up,
and the one way a lost compare-and-set ends."""

from __future__ import annotations

import pytest

from openevs.db.models import Volume
from openevs.domain.errors import ChangedConcurrently, InvalidState
from openevs.domain.states import VOLUME_MACHINE, VolumeTrigger
from openevs.runtime import Runtime
from openevs.services.unit_of_work import UnitOfWork, transition
from tests.support.rows import AZ_A, add_volume


def status_of(runtime: Runtime, vid: str) -> str | None:
    with runtime.db.session() as session:
        vol = session.get(Volume, vid)
        return None if vol is None else vol.status


def test_a_clean_exit_commits_then_runs_effects_then_wakes(runtime: Runtime, project_id: str) -> None:
    vid = add_volume(runtime, project_id, AZ_A)
    seen: list[str | None] = []
    runtime.wake.clear()
    with UnitOfWork(runtime) as uow:
        vol = uow.session.get(Volume, vid)
        assert vol is not None
        transition(uow.session, VOLUME_MACHINE, vol, VolumeTrigger.DELETE)
        # An effect sees the committed rows (it runs after the commit, outside the transaction).
        uow.after_commit(lambda: seen.append(status_of(runtime, vid)))
        uow.wake_reconciler()
        assert seen == [] and not runtime.wake.is_set()
    assert seen == ["deleting"]
    assert runtime.wake.is_set()


def test_an_exception_rolls_back_and_runs_nothing(runtime: Runtime, project_id: str) -> None:
    vid = add_volume(runtime, project_id, AZ_A)
    ran: list[bool] = []
    runtime.wake.clear()
    with pytest.raises(InvalidState), UnitOfWork(runtime) as uow:
        vol = uow.session.get(Volume, vid)
        assert vol is not None
        transition(uow.session, VOLUME_MACHINE, vol, VolumeTrigger.DELETE)
        uow.after_commit(lambda: ran.append(True))
        uow.wake_reconciler()
        transition(uow.session, VOLUME_MACHINE, vol, VolumeTrigger.ATTACH)  # deleting: refused
    assert status_of(runtime, vid) == "available"
    assert ran == [] and not runtime.wake.is_set()


def test_a_failing_effect_reaches_the_caller_and_the_commit_stands(runtime: Runtime, project_id: str) -> None:
    vid = add_volume(runtime, project_id, AZ_A)

    def agent_down() -> None:
        raise RuntimeError("agent down")

    runtime.wake.clear()
    with pytest.raises(RuntimeError), UnitOfWork(runtime) as uow:
        vol = uow.session.get(Volume, vid)
        assert vol is not None
        transition(uow.session, VOLUME_MACHINE, vol, VolumeTrigger.DELETE)
        uow.after_commit(agent_down)
        uow.wake_reconciler()
    assert status_of(runtime, vid) == "deleting"
    assert runtime.wake.is_set()  # the reconciler still owes the work the commit queued


def test_a_lost_compare_and_set_is_changed_concurrently(runtime: Runtime, project_id: str) -> None:
    vid = add_volume(runtime, project_id, AZ_A)
    with UnitOfWork(runtime) as stale:
        vol = stale.session.get(Volume, vid)  # read as available
        assert vol is not None
        with UnitOfWork(runtime) as other:
            moved = other.session.get(Volume, vid)
            assert moved is not None
            transition(other.session, VOLUME_MACHINE, moved, VolumeTrigger.DELETE)
        with pytest.raises(ChangedConcurrently) as info:
            transition(stale.session, VOLUME_MACHINE, vol, VolumeTrigger.DELETE)
    assert "changed concurrently" in info.value.message
    assert status_of(runtime, vid) == "deleting"
