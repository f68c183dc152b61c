"""Compare-and-set: the only way a status is saved.

`UPDATE ... WHERE id = :id AND status = :expected` must touch exactly one
row; otherwise someone else moved the resource first and the caller lost.
This works the same on SQLite (where FOR UPDATE does nothing) and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, delete, update
from sqlalchemy.orm import Session

from openevs.db.models import utcnow


def compare_and_set(
    session: Session,
    model: Any,
    ident: str,
    expected: str,
    new: str,
    *,
    unchanged: dict[str, Any] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """Move row `ident` from status `expected` to `new` (plus `values`); True if we won.

    `unchanged` names other columns the caller's decision rested on: the
    status alone can come back to `expected` (ABA) while they moved.
    `where` adds conditions of other rows (e.g. "no attachment left").
    """
    conditions = [getattr(model, column) == value for column, value in (unchanged or {}).items()]
    conditions += list(where)
    stmt = (
        update(model)
        .where(model.id == ident, model.status == expected, *conditions)
        .values(status=new, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(stmt)
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def set_if(session: Session, model: Any, ident: str, expected: dict[str, Any], **values: Any) -> bool:
    """The same guard for columns other than the status: set `values` on row
    `ident` only if its `expected` columns still hold; True if we won."""
    conditions = [getattr(model, column) == value for column, value in expected.items()]
    stmt = (
        update(model)
        .where(model.id == ident, *conditions)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(stmt)
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def delete_in_status(session: Session, model: Any, ident: str, expected: str) -> bool:
    """Delete row `ident` only while its status is `expected`; True if this call removed it.

    Two workers can run the same delete step on the same row: only the one whose
    DELETE removed it did the transition (and says so in the log)."""
    stmt = delete(model).where(model.id == ident, model.status == expected)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]
