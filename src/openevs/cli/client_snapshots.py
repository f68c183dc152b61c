"""`openevs snapshot ...`: EVS snapshots of disks (Cinder v2 as EVS documents it)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from openevs.cli.client_common import (
    DEFAULT_TIMEOUT_S,
    TimeoutOption,
    Waiter,
    WaitOption,
    api_command,
    connect,
    fetch_or_none,
    say,
    volume_pages,
    wait,
)
from openevs.cli.client_format import (
    Column,
    FormatOption,
    LongOption,
    OutputFormat,
    Shape,
    list_view,
    object_view,
    print_list,
    print_object,
)
from openevs.cli.session import ApiSession

app = typer.Typer(
    help="Snapshots: create, list, show, delete; a disk made from one is `openevs volume create`'s "
    "job through the API (snapshot_id).",
    no_args_is_help=True,
)

SHAPE = Shape(
    what="snapshot",
    columns=(
        Column("ID", "id", ids=True),
        Column("Name", "name"),
        Column("Status", "status", wrap=False),
        Column("Size", "size"),
        Column("Volume", "volume_id", ids=True, long=True),
        Column("Created", "created_at", long=True),
    ),
    fields=(
        "id", "status", "name", "description", "created_at", "updated_at", "metadata", "volume_id",
        "size", "os-extended-snapshot-attributes:progress", "os-extended-snapshot-attributes:project_id",
    ),
)
Columns = Annotated[list[str] | None, SHAPE.column_option()]
Fields = Annotated[list[str] | None, SHAPE.field_option()]
FAILED = {"error", "error_deleting", "error_rollbacking"}


def get_snapshot(api: ApiSession, snapshot_id: str) -> dict[str, Any]:
    return dict(api.volume("GET", f"/snapshots/{snapshot_id}")["snapshot"])


def _waiter(api: ApiSession, snapshot_id: str, what: str, done: Any) -> Waiter:
    return Waiter(
        what=f"{what} snapshot {snapshot_id}",
        fetch=fetch_or_none(lambda: get_snapshot(api, snapshot_id)),
        done=done,
        failed=lambda s: f"the snapshot went {s['status']}" if s.get("status") in FAILED else None,
        status=lambda s: str(s.get("status")),
    )


@app.command("create")
@api_command
def create(
    volume_id: Annotated[str, typer.Option("--volume", help="The disk to snapshot.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Snapshot an attached (in-use) disk.")] = False,
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Take a crash-consistent snapshot of a disk; with --wait, until it is available."""
    view = object_view(SHAPE, fmt, fields)
    spec: dict[str, Any] = {"volume_id": volume_id, "force": force}
    for key, value in (("name", name), ("description", description)):
        if value is not None:
            spec[key] = value
    with connect() as api:
        snap = dict(api.volume("POST", "/snapshots", json={"snapshot": spec})["snapshot"])
        if wait_:
            snap = wait(_waiter(api, snap["id"], "creating", lambda s: s is not None
                                and s.get("status") != "creating"), timeout) or snap
            say(f"snapshot {snap['id']} is {snap.get('status')}")
    print_object(snap, view)


@app.command("list")
@api_command
def list_(
    volume_id: Annotated[str | None, typer.Option("--volume", help="Only snapshots of this disk.")] = None,
    status: Annotated[str | None, typer.Option(help="Only snapshots in this status.")] = None,
    long: LongOption = False,
    columns: Columns = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List the project's snapshots (every page); Size is in GB."""
    view = list_view(SHAPE, fmt, columns, long)
    params: dict[str, Any] = {"volume_id": volume_id, "status": status, "limit": 1000}
    with connect() as api:
        items = volume_pages(api, "/snapshots/detail", "snapshots", params)
    print_list(items, view)


@app.command("show")
@api_command
def show(
    snapshot_id: Annotated[str, typer.Argument(help="The snapshot's ID.")],
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Show one snapshot."""
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        snap = get_snapshot(api, snapshot_id)
    print_object(snap, view)


@app.command("delete")
@api_command
def delete(
    snapshot_id: Annotated[str, typer.Argument(help="The snapshot's ID.")],
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:
    """Delete a snapshot (its space goes back to the pool); with --wait, until it is gone."""
    with connect() as api:
        api.volume("DELETE", f"/snapshots/{snapshot_id}")
        if wait_:
            wait(_waiter(api, snapshot_id, "deleting", lambda s: s is None), timeout)
            say(f"snapshot {snapshot_id} deleted")
        else:
            say(f"deletion of snapshot {snapshot_id} requested")


@app.command("rollback")
@api_command
def rollback(
    snapshot_id: Annotated[str, typer.Argument(help="The snapshot's ID.")],
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:
    """Write the snapshot's bytes back to its own disk (detached); with --wait, until that ended.

    The EVS v3 route, found through the catalog's `evs` endpoint."""
    with connect() as api:
        volume_id = get_snapshot(api, snapshot_id)["volume_id"]
        body = {"rollback": {"volume_id": volume_id}}
        api.request("POST", "evs", f"/os-vendor-snapshots/{snapshot_id}/rollback", json=body)
        if not wait_:
            say(f"rollback of disk {volume_id} to snapshot {snapshot_id} accepted")
            return
        wait(_waiter(api, snapshot_id, "rolling back to", lambda s: s is not None
                     and s.get("status") == "available"), timeout)  # fmt: skip
        say(f"disk {volume_id} rolled back to snapshot {snapshot_id}")
