"""What every client command shares: error exits, the session, `--wait`.

A resource family (volumes, servers, replication pairs, consistency groups)
tells how to recognise "done" and "failed" in a fetched object; this module
polls with a deadline behind a progress bar. Results are printed by
`client_format`; human status lines and progress go to stderr, where they
cannot spoil `-f json` (or any other format) on stdout.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from openevs.cli.client_format import err
from openevs.cli.session import ApiSession, ClientError, NotFoundError, open_session

DEFAULT_TIMEOUT_S = 600.0
POLL_INTERVAL_S = 0.5

P = ParamSpec("P")
R = TypeVar("R")


WaitOption = Annotated[
    bool, typer.Option("--wait", help="Poll until the work is finished and print the final status.")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="With --wait: give up (exit 1) after this many seconds.", min=0)
]


# -- errors and the session -----------------------------------------------------


def api_command(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a ClientError into its message on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            fail(exc)

    return wrapper


def fail(exc: ClientError) -> NoReturn:
    detail = []
    if exc.error_code:
        detail.append(f"error_code {exc.error_code}")
    if exc.status:
        detail.append(f"HTTP {exc.status}")
    suffix = f" ({', '.join(detail)})" if detail else ""
    err.print(f"[red]error:[/red] {exc.message}{suffix}", soft_wrap=True, highlight=False, markup=True)
    raise typer.Exit(1)


@contextmanager
def connect() -> Iterator[ApiSession]:
    """A logged-in API session, closed afterwards."""
    api = open_session()
    try:
        yield api
    finally:
        api.close()


# -- messages -------------------------------------------------------------------


def volume_pages(api: ApiSession, path: str, key: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item of a Cinder list route (`path`, answering `key` and `<key>_links`), page by page."""
    params = dict(params)
    items: list[dict[str, Any]] = []
    while True:
        page = api.volume("GET", path, params=params)
        batch = list(page.get(key, []))
        items.extend(batch)
        if not batch or not page.get(f"{key}_links"):
            return items
        params["marker"] = batch[-1]["id"]


def say(message: str) -> None:
    """A human status line, on stderr so that stdout carries only results."""
    err.print(message, soft_wrap=True, highlight=False)


# -- waiting --------------------------------------------------------------------


@dataclass
class Waiter:
    """How to watch one resource until its work is finished.

    fetch returns the current object, or None once it is gone (404);
    done / failed look at that; percent gives 0-100 when the API reports
    progress (a bar), None otherwise (a spinner); status names the state.
    """

    what: str
    fetch: Callable[[], dict[str, Any] | None]
    done: Callable[[dict[str, Any] | None], bool]
    failed: Callable[[dict[str, Any]], str | None]
    status: Callable[[dict[str, Any]], str]
    percent: Callable[[dict[str, Any]], float | None] = lambda _obj: None


def fetch_or_none(get: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any] | None]:
    """A fetch for Waiter that maps 404 to None (the resource is gone)."""

    def fetch() -> dict[str, Any] | None:
        try:
            return get()
        except NotFoundError:
            return None

    return fetch


def wait(waiter: Waiter, timeout_s: float, interval_s: float = POLL_INTERVAL_S) -> dict[str, Any] | None:
    """Poll until done (returns the last object; None if gone); ClientError on failure or deadline."""
    deadline = time.monotonic() + timeout_s
    columns = (
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(waiter.what, total=None)
        while True:
            obj = waiter.fetch()
            if obj is not None:
                problem = waiter.failed(obj)
                if problem is not None:
                    raise ClientError(f"{waiter.what} failed: {problem}")
                pct = waiter.percent(obj)
                description = f"{waiter.what}: {waiter.status(obj)}"
                if pct is None:
                    bar.update(task, description=description)
                else:
                    bar.update(task, description=description, total=100.0, completed=pct)
            if waiter.done(obj):
                if obj is None:
                    bar.update(task, description=f"{waiter.what}: gone", total=100.0, completed=100.0)
                else:
                    bar.update(task, total=100.0, completed=100.0)
                return obj
            if time.monotonic() >= deadline:
                last = waiter.status(obj) if obj is not None else "unknown"
                raise ClientError(
                    f"timed out after {timeout_s:.0f}s waiting for {waiter.what} (last status: {last}); "
                    "the work goes on in the service: check again later or raise --timeout"
                )
            time.sleep(interval_s)


def percent_of(value: Any) -> float | None:
    """The API's progress strings ("42", "42.5", "42%") as a number, None if absent."""
    if value is None or value == "":
        return None
    try:
        return max(0.0, min(100.0, float(str(value).rstrip("%"))))
    except ValueError:
        return None


def replication_state(item: dict[str, Any]) -> str:
    """`status / replication_status [N%] [rate, ETA]` of a pair or a group, for progress lines."""
    text = f"{item.get('status')} / {replication_cell(item) or '-'}"
    rate, eta = item.get("resync_rate_bytes_per_s"), item.get("resync_eta_s")
    if item.get("replication_status") == "copying" and rate:
        text += f", {rate / (1 << 20):.1f} MiB/s"
        text += f", ETA {eta:.0f} s" if eta is not None else ", ETA unknown"
    return text


def replication_cell(item: dict[str, Any]) -> str | None:
    """A pair's or group's replication_status, with its progress while copying ("copying 42%")."""
    status = item.get("replication_status")
    if status == "copying" and item.get("progress") is not None:
        return f"{status} {item['progress']}%"
    return None if status is None else str(status)


def replication_percent(item: dict[str, Any]) -> float | None:
    """How far a pair's or group's sync is: 100 when active, its progress while copying."""
    if item.get("replication_status") == "active":
        return 100.0
    if item.get("replication_status") == "copying":
        return percent_of(item.get("progress")) or 0.0
    return None
