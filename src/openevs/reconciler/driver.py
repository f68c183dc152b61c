"""The reconciler's one step driver, shared by every resource kind (volume,
replication pair, consistency group).

A resource in a transitional status is work the reconciler owes. `Kind.run`
loads the rows of one kind in a transitional status, runs the step its
status (and, for a group, its plan's kind) names, and maps whatever the step
raises to the kind's failure trigger, in this one place:

- `AgentUnavailable`: the step is retried on the next pass; the transition
  fails (failure_detail FD_LINK) only once `agent_timeout_s` has passed
  since the row last changed;
- `StepFailed(message, detail)`: fails with that documented failure_detail;
- `AgentRequestFailed`: fails with the pool's failure_detail when the
  agent's storage pool failed, FD_INTERNAL otherwise; one whose reason is
  `resource_shortage` (the agent ran out of descriptors or memory) is
  retried like an unreachable agent;
- anything else is a bug: logged with the resource's id, retried next pass.

Every move is a compare-and-set from the status the pass read
(`Kind.advance`). Losing it means a request or another reconciler moved the
row first: the pass logs it and leaves the row to them. That is the only way
a lost race ends in the reconciler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar, cast

from sqlalchemy import select

from openevs.contract import AgentRequestFailed, AgentUnavailable, ErrorReason
from openevs.db.cas import compare_and_set
from openevs.db.models import utcnow
from openevs.domain import replication as rep
from openevs.domain.errors import OpenEvsError
from openevs.domain.states import StateMachine
from openevs.runtime import Runtime
from openevs.services.agent_errors import failure_detail

log = logging.getLogger(__name__)

FAULT_MAX = 1024  # the fault column's width


class Row(Protocol):
    """A resource row the driver can move (every model with a status is one)."""

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...

    @property
    def updated_at(self) -> datetime | None: ...


# Unbounded: mypy does not see an ORM model's Mapped columns as a Row in a
# type argument (it does in a call), so the driver reads rows through `_row`.
R = TypeVar("R")


def _row(row: object) -> Row:
    return cast(Row, row)


class StepFailed(OpenEvsError):
    """A step failed for good; `failure_detail` is the documented code to record."""

    def __init__(self, message: str, failure_detail: str) -> None:
        super().__init__(message, code=failure_detail)
        self.failure_detail = failure_detail


def _no_values(row: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Step(Generic[R]):
    """The work a row in one transitional status is owed, and how it fails."""

    run: Callable[[Runtime, R], None]
    fail: StrEnum  # the trigger that ends the transition in error
    fail_values: Callable[[R], dict[str, Any]] = _no_values  # more columns to set when it fails


def timed_out(runtime: Runtime, row: Row) -> bool:
    """The row has waited on an agent longer than `agent_timeout_s`."""
    since = row.updated_at or row.created_at
    return utcnow() - since > timedelta(seconds=runtime.settings.agent_timeout_s)


@dataclass(frozen=True)
class Kind(Generic[R]):
    """One resource kind the driver advances."""

    machine: StateMachine[Any, Any]
    model: type[R]
    step_for: Callable[[R], Step[R]]
    statuses: frozenset[str]  # the transitional statuses it has steps for
    records_failure_detail: bool = True
    batch: int = 200

    def advance(self, runtime: Runtime, row: R, trigger: StrEnum, **values: Any) -> bool:
        """Move `row` by `trigger` with a compare-and-set from the status it was read in."""
        r = _row(row)
        new = self.machine.next(r.status, trigger)
        with runtime.db.session() as session:
            won = compare_and_set(session, self.model, r.id, r.status, new, **values)
        if won:
            log.info("%s %s: %s -> %s", self.machine.entity, r.id, r.status, new)
        else:
            log.info("%s %s: moved on meanwhile; %s left to whoever moved it", self.machine.entity,
                     r.id, trigger)  # fmt: skip
        return won

    def fail(self, runtime: Runtime, row: R, step: Step[R], detail: str, message: str) -> bool:
        values = {"fault": message[:FAULT_MAX], **step.fail_values(row)}
        if self.records_failure_detail:
            values["failure_detail"] = detail
        return self.advance(runtime, row, step.fail, **values)

    def pending(self, runtime: Runtime) -> list[R]:
        model: Any = self.model
        with runtime.db.session() as session:
            rows = session.scalars(
                select(model)
                .where(model.status.in_(sorted(self.statuses)))
                .order_by(model.created_at)
                .limit(self.batch)
            )
            return list(rows)

    def run_step(self, runtime: Runtime, row: R) -> None:
        step = self.step_for(row)
        try:
            step.run(runtime, row)
        except AgentUnavailable as exc:
            if timed_out(runtime, _row(row)):
                self.fail(runtime, row, step, rep.FD_LINK, f"agent unreachable: {exc}")
            else:
                log.debug("%s %s: agent unreachable, retrying: %s", self.machine.entity, _row(row).id, exc)
        except StepFailed as exc:
            self.fail(runtime, row, step, exc.failure_detail, str(exc))
        except AgentRequestFailed as exc:
            if exc.reason is ErrorReason.RESOURCE_SHORTAGE and not timed_out(runtime, _row(row)):
                log.warning("%s %s: retrying: %s", self.machine.entity, _row(row).id, exc)
                return  # the agent recovers when the resource is back
            self.fail(runtime, row, step, failure_detail(exc), str(exc))

    def run(self, runtime: Runtime) -> int:
        """Advance every row of this kind in a transitional status once; how many were seen."""
        rows = self.pending(runtime)
        for row in rows:
            try:
                self.run_step(runtime, row)
            except Exception:
                log.exception("%s %s: reconcile step failed", self.machine.entity, _row(row).id)
        return len(rows)
