"""The unit of work every use case runs in: one database transaction, what
follows its commit, and the reconciler's wake-up.

    with UnitOfWork(runtime) as uow:
        volume = ...                      # read and write through uow.session
        uow.after_commit(lambda: ...)     # e.g. revoke an export on its agent
        uow.wake_reconciler()             # the rows now hold work it owes

Rules it keeps:

- a clean exit commits, an exception rolls back; nothing is left half-written;
- no transaction spans a network call: agent calls run after the commit,
  in order (an effect that raises reaches the caller; the commit stands);
  a use case that must record what an agent did opens a second unit;
- the reconciler is woken after the commit, so it sees the committed rows;
- a lost compare-and-set ends one way: `transition` raises
  ChangedConcurrently (409) for every kind of resource.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from sqlalchemy.orm import Session

from openevs.config import Settings
from openevs.db.cas import compare_and_set
from openevs.domain.errors import ChangedConcurrently
from openevs.domain.states import StateMachine
from openevs.runtime import Runtime


class UnitOfWork:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings: Settings = runtime.settings
        self._effects: list[Callable[[], object]] = []
        self._wake = False
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("the unit of work is not open; use it in a with block")
        return self._session

    def after_commit(self, effect: Callable[[], object]) -> None:
        """Run `effect` once the transaction is committed (never inside it)."""
        self._effects.append(effect)

    def wake_reconciler(self) -> None:
        """The committed rows hold transitional work: let an in-process reconciler act at once."""
        self._wake = True

    def __enter__(self) -> UnitOfWork:
        self._session = self.runtime.db.sessions()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session = self.session
        try:
            if exc_type is None:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()
            self._session = None
        if exc_type is not None:
            return
        try:
            for effect in self._effects:
                effect()
        finally:
            if self._wake:
                self.runtime.kick()


class StatusRow(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...


def transition(
    session: Session,
    machine: StateMachine[Any, Any],
    row: StatusRow,
    trigger: Any,
    *,
    unchanged: dict[str, Any] | None = None,
    **values: Any,
) -> None:
    """Move `row` by `trigger` (the machine's table decides the next status) with a
    compare-and-set from the status it was read in; ChangedConcurrently if we lost."""
    new = machine.next(row.status, trigger)
    if not compare_and_set(session, type(row), row.id, row.status, new, unchanged=unchanged, **values):
        raise ChangedConcurrently(
            f"the {machine.entity} {row.id} changed concurrently; retry the request"
        )
    session.refresh(row)
