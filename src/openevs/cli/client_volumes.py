"""`openevs volume ...`: disks (Cinder v2 as EVS documents it)."""

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
    print_structured,
)
from openevs.cli.session import ApiSession, ClientError

app = typer.Typer(
    help="Disks: create, list, show, update, extend, delete, and connect over NBD.\n\n"
    "A disk lives in one availability zone's storage pool; attach it to a server "
    "(`openevs server attach`) and `openevs volume connect` prints its NBD address.",
    no_args_is_help=True,
)

def attachment_lines(attachments: Any) -> Any:
    """A disk's attachments in a Field/Value table: "SERVER on DEVICE", one a line."""
    if not isinstance(attachments, list):
        return attachments
    return [f"{a.get('server_id')} on {a.get('device') or '-'}" for a in attachments]


SHAPE = Shape(
    what="disk",
    columns=(
        Column("ID", "id", ids=True),
        Column("Name", "name"),
        Column("Status", "status", wrap=False),
        Column("Size", "size"),  # GB, as Cinder's `size`
        Column("AZ", "availability_zone"),
        Column("Type", "volume_type", long=True),
        Column("Multiattach", "multiattach", long=True),
        Column("Attached to", "attachments", ids=True, long=True,
               render=lambda v: [a.get("server_id") for a in v.get("attachments", [])]),
    ),
    # The keys of the API's volume, in its order (tests/e2e/test_cli.py keeps them in step).
    fields=(
        "id", "links", "name", "status", "attachments", "availability_zone", "bootable", "encrypted",
        "created_at", "updated_at", "description", "volume_type", "replication_status",
        "consistencygroup_id", "source_volid", "snapshot_id", "metadata", "volume_image_metadata",
        "size", "user_id", "os-vol-tenant-attr:tenant_id", "os-vol-host-attr:host", "shareable",
        "multiattach", "storage_cluster_id",
    ),
    cells={"attachments": attachment_lines},
)
Columns = Annotated[list[str] | None, SHAPE.column_option()]
Fields = Annotated[list[str] | None, SHAPE.field_option()]

FAILED = {"error", "error_deleting", "error_extending"}


def get_volume(api: ApiSession, volume_id: str) -> dict[str, Any]:
    return dict(api.volume("GET", f"/volumes/{volume_id}")["volume"])


def _waiter(api: ApiSession, volume_id: str, what: str, done: Any) -> Waiter:
    return Waiter(
        what=f"{what} volume {volume_id}",
        fetch=fetch_or_none(lambda: get_volume(api, volume_id)),
        done=done,
        failed=lambda v: f"the volume went {v['status']}" if v.get("status") in FAILED else None,
        status=lambda v: f"{v.get('status')}, {v.get('size')} GB",
    )


@app.command("create")
@api_command
def create(
    size: Annotated[int, typer.Option("--size", help="Capacity in GB.", min=1)],
    az: Annotated[str, typer.Option("--az", help="Availability zone, e.g. az1.dc1.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    volume_type: Annotated[str | None, typer.Option("--type", help="SATA, SAS, SSD, GPSSD or ESSD.")] = None,
    multiattach: Annotated[bool, typer.Option("--multiattach", help="Shareable by servers.")] = False,
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Create a disk; with --wait, until it is available.

    `-f value -c id` prints just the new disk's ID.
    """
    view = object_view(SHAPE, fmt, fields)
    spec: dict[str, Any] = {"size": size, "availability_zone": az, "multiattach": multiattach}
    for key, value in (("name", name), ("description", description), ("volume_type", volume_type)):
        if value is not None:
            spec[key] = value
    with connect() as api:
        volume = dict(api.volume("POST", "/volumes", json={"volume": spec})["volume"])
        if wait_:
            final = wait(_waiter(api, volume["id"], "creating", lambda v: v is not None
                                 and v.get("status") not in ("creating",)), timeout)
            volume = final or volume
            say(f"volume {volume['id']} is {volume.get('status')}")
    print_object(volume, view)


@app.command("list")
@api_command
def list_(
    name: Annotated[str | None, typer.Option(help="Only disks with this name.")] = None,
    status: Annotated[str | None, typer.Option(help="Only disks in this status, e.g. available.")] = None,
    az: Annotated[str | None, typer.Option("--az", help="Only disks in this availability zone.")] = None,
    long: LongOption = False,
    columns: Columns = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List the project's disks (every page); Size is in GB."""
    view = list_view(SHAPE, fmt, columns, long)
    params: dict[str, Any] = {"name": name, "status": status, "availability_zone": az}
    with connect() as api:
        items = volume_pages(api, "/volumes/detail", "volumes", params)
    print_list(items, view)


@app.command("show")
@api_command
def show(
    volume_id: Annotated[str, typer.Argument(help="The disk's ID.")],
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Show one disk."""
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        volume = get_volume(api, volume_id)
    print_object(volume, view)


@app.command("update")
@api_command
def update(
    volume_id: Annotated[str, typer.Argument(help="The disk's ID.")],
    name: Annotated[str | None, typer.Option(help="New display name.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Change a disk's name or description."""
    view = object_view(SHAPE, fmt, fields)
    spec = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
    if not spec:
        raise ClientError("nothing to update: give --name and/or --description")
    with connect() as api:
        volume = api.volume("PUT", f"/volumes/{volume_id}", json={"volume": spec})["volume"]
    print_object(volume, view)


@app.command("extend")
@api_command
def extend(
    volume_id: Annotated[str, typer.Argument(help="The disk's ID.")],
    size: Annotated[int, typer.Option("--size", help="The new, larger capacity in GB.", min=1)],
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Grow a disk (os-extend); with --wait, until it has the new size."""
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        api.volume("POST", f"/volumes/{volume_id}/action", json={"os-extend": {"new_size": size}})
        if wait_:
            def grown(v: dict[str, Any] | None) -> bool:
                return v is not None and v.get("status") != "extending" and v.get("size") == size

            volume = wait(_waiter(api, volume_id, "extending", grown), timeout) or {}
            say(f"volume {volume_id} is {volume.get('status')}, {volume.get('size')} GB")
        else:
            volume = get_volume(api, volume_id)
    print_object(volume, view)


@app.command("delete")
@api_command
def delete(
    volume_id: Annotated[str, typer.Argument(help="The disk's ID.")],
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:
    """Delete a disk and its data; with --wait, until it is gone."""
    with connect() as api:
        api.volume("DELETE", f"/volumes/{volume_id}")
        if wait_:
            wait(_waiter(api, volume_id, "deleting", lambda v: v is None), timeout)
            say(f"volume {volume_id} deleted")
        else:
            say(f"deletion of volume {volume_id} requested")


@app.command("connect")
@api_command
def connect_(
    volume_id: Annotated[str, typer.Argument(help="The disk's ID (attached to a server).")],
    server: Annotated[str | None, typer.Option(
        "--server", help="The server whose attachment to use (needed when several servers share the disk).",
    )] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Print the NBD URI of an attached disk (os-initialize_connection).

    Any NBD client reaches the disk there, e.g. `nbdinfo "$(openevs volume connect ID)"`.
    With -f json or yaml: the whole connection_info; any other format prints the URI.
    """
    connector: dict[str, Any] = {"server_id": server} if server else {}
    with connect() as api:
        body = api.volume("POST", f"/volumes/{volume_id}/action",
                          json={"os-initialize_connection": {"connector": connector}})
    info = body["connection_info"]
    if fmt in (OutputFormat.json, OutputFormat.yaml):
        print_structured(info, fmt)
        return
    data = info.get("data", {})
    print(data.get("uri"))
    if data.get("read_only"):
        say("(read-only export)")
