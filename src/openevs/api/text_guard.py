"""Refuse text that no database column can hold, before any route reads it.

PostgreSQL text cannot contain NUL, and neither database driver can encode
a lone UTF-16 surrogate (JSON `"\\ud800"`); letting either through turns a
client's mistake into a 500. This runs as an app-wide dependency, so it sees
the path parameters, the query and the JSON body FastAPI already parsed.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from openevs.domain import codes
from openevs.domain.errors import InvalidInput


def _bad_text(value: str) -> bool:
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _refuse(where: str) -> InvalidInput:
    return InvalidInput(
        f"{where} contains a NUL character or an unpaired surrogate; send valid Unicode text",
        code=codes.MALFORMED_REQUEST,
    )


def _check_json(data: Any) -> None:
    stack = [data]  # iterative: bodies may nest deeply
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _bad_text(item):
                raise _refuse("a string in the request body")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


async def refuse_unstorable_text(request: Request) -> None:
    for value in request.path_params.values():
        if isinstance(value, str) and _bad_text(value):
            raise _refuse("the URL path")
    for name, value in request.query_params.multi_items():
        if _bad_text(name) or _bad_text(value):
            raise _refuse(f"query parameter {name[:64]!r}")
    if request.method in ("POST", "PUT", "PATCH") and await request.body():
        try:
            data = await request.json()  # cached: FastAPI parsed it already
        except (ValueError, RecursionError):
            return  # not JSON: the route's own parsing refuses it
        _check_json(data)
