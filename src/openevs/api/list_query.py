"""The query string of the list routes, read once into a model per route family.

Every list route takes paging (`limit`, `marker`, `sort_key`, `sort_dir`,
`changes-since`, and `offset` where the family documents it) plus its
family's filters. A route declares `query: Annotated[VolumeListQuery,
Query()]`; FastAPI reads the model's fields as query parameters (same
names in the OpenAPI document, `changes-since` with its hyphen) and
answers 400 for a value over its length limit, as for any bad parameter.
`page()` then applies the paging rules of services/listing.py.

Values stay strings here: a bad `limit` or `sort_dir` is refused by
`parse_page` with its own documented error code, not by pydantic.
Unknown parameters are ignored, as OpenStack clients expect.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from openevs.services.listing import Page, parse_page

Text = Annotated[str | None, Field(max_length=255)]
LongText = Annotated[str | None, Field(max_length=1024)]  # replication pairs and groups
Since = Annotated[str | None, Field(alias="changes-since", max_length=64)]


class ListQuery(BaseModel):
    """Paging without offset (the servers family); subclasses add filters."""

    FILTERS: ClassVar[tuple[str, ...]] = ()

    limit: Text = None
    marker: Text = None
    sort_key: Text = None
    sort_dir: Text = None
    changes_since: Since = None

    @property
    def paging_offset(self) -> str | None:
        """The `offset` of families that document it; this family has none."""
        return None

    @property
    def paging_sort_key(self) -> str | None:
        return self.sort_key

    def page(self, sort_keys: tuple[str, ...]) -> Page:
        return parse_page(
            self.limit, self.marker, self.paging_offset, self.paging_sort_key, self.sort_dir,
            self.changes_since, sort_keys,
        )

    def filters(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in self.FILTERS}


class LongListQuery(ListQuery):
    """Paging with offset, values up to 1024 characters (pairs and groups)."""

    limit: LongText = None
    marker: LongText = None
    offset: LongText = None
    sort_key: LongText = None
    sort_dir: LongText = None

    @property
    def paging_offset(self) -> str | None:
        return self.offset


def listed(body: dict[str, Any]) -> JSONResponse:
    """A list route's answer, sent as it is. Its views hold JSON types only (strings,
    numbers, lists, dicts), so FastAPI's jsonable_encoder walk over every value of
    the page, half the cost of a 1,000-row page, is skipped; the bytes are the same."""
    return JSONResponse(body)
