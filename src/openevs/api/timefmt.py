"""Timestamp formats of the two API families."""

from __future__ import annotations

from datetime import datetime


def evs_time(value: datetime | None) -> str | None:
    """EVS/Cinder bodies: `2017-09-28T05:08:32.839953` (UTC, no zone)."""
    # isoformat: the same text as strftime("%Y-%m-%dT%H:%M:%S.%f") for a naive time, at
    # a fraction of its cost (twice per row of a 1,000-row list page)
    return value.isoformat(timespec="microseconds") if value else None


def keystone_time(value: datetime) -> str:
    """Keystone tokens: `2017-09-28T05:08:32.839953Z`."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def nova_time(value: datetime | None) -> str | None:
    """Nova bodies: `2017-09-28T05:08:32Z`."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None
