"""Pagination, sorting and `changes-since` shared by every list route.

`limit` 1-1000 (default 1000), `marker` (an unknown marker is 404),
`offset`, `sort_key`, `sort_dir` (default `created_at desc`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from openevs.domain import codes
from openevs.domain.errors import InvalidInput, NotFound

MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page:
    limit: int = MAX_LIMIT
    marker: str | None = None
    offset: int = 0
    sort_key: str = "created_at"
    sort_dir: str = "desc"
    changes_since: datetime | None = None


def parse_page(
    limit: str | None,
    marker: str | None,
    offset: str | None,
    sort_key: str | None,
    sort_dir: str | None,
    changes_since: str | None,
    sort_keys: tuple[str, ...],
) -> Page:
    try:
        lim = MAX_LIMIT if limit in (None, "") else int(str(limit))
    except ValueError:
        raise InvalidInput(
            "limit must be an integer from 1 to 1000", code=codes.FILTER_LIMIT_INVALID
        ) from None
    if not 1 <= lim <= MAX_LIMIT:
        raise InvalidInput("limit must be an integer from 1 to 1000", code=codes.FILTER_LIMIT_INVALID)
    try:
        off = 0 if offset in (None, "") else int(str(offset))
    except ValueError:
        raise InvalidInput("offset must be a non-negative integer", code=codes.MALFORMED_REQUEST) from None
    if off < 0 or off > 10**9:
        raise InvalidInput("offset must be a non-negative integer", code=codes.MALFORMED_REQUEST)
    key, direction = sort_key or "created_at", (sort_dir or "desc").lower()
    if ":" in key:  # Cinder's "sort=key:dir" style, accepted in sort_key too
        key, _, direction = key.partition(":")
    if key not in sort_keys:
        raise InvalidInput(f"sort_key must be one of {', '.join(sort_keys)}", code=codes.SORT_KEY_INVALID)
    if direction not in ("asc", "desc"):
        raise InvalidInput("sort_dir must be asc or desc", code=codes.SORT_DIR_INVALID)
    since = None
    if changes_since:
        try:
            since = datetime.fromisoformat(changes_since.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(
                "changes-since must be an ISO 8601 time such as 2017-09-28T05:08:32",
                code=codes.MALFORMED_REQUEST,
            ) from None
        if since.tzinfo is not None:
            since = since.astimezone(UTC).replace(tzinfo=None)
    return Page(lim, marker or None, off, key, direction, since)


def paginate(session: Session, model: Any, stmt: Select[Any], page: Page) -> list[Any]:
    """Apply changes-since, marker (keyset), sorting, offset and limit to `stmt`."""
    column = getattr(model, page.sort_key)
    if page.changes_since is not None:
        stmt = stmt.where(or_(model.updated_at >= page.changes_since, model.created_at >= page.changes_since))
    if page.marker:
        anchor = session.scalar(stmt.where(model.id == page.marker))
        if anchor is None:
            raise NotFound(f"marker {page.marker[:64]!r} not found", code=codes.FILTER_MARKER_INVALID)
        value = getattr(anchor, page.sort_key)
        after = column > value if page.sort_dir == "asc" else column < value
        tie = model.id > anchor.id if page.sort_dir == "asc" else model.id < anchor.id
        stmt = stmt.where(or_(after, and_(column == value, tie)))
    if page.sort_dir == "asc":
        stmt = stmt.order_by(column.asc(), model.id.asc())
    else:
        stmt = stmt.order_by(column.desc(), model.id.desc())
    stmt = stmt.offset(page.offset).limit(page.limit)
    return list(session.scalars(stmt))


__all__ = ["Page", "parse_page", "paginate", "select"]
