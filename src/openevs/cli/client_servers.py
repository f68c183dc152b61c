"""`openevs server ...`: the consumers of disks (a Nova v2.1 subset)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from openevs.cli.client_common import api_command, connect, say
from openevs.cli.client_format import (
    Column,
    FormatOption,
    LongOption,
    ObjectView,
    OutputFormat,
    Shape,
    list_view,
    object_view,
    print_list,
    print_object,
)
from openevs.cli.session import ApiSession

app = typer.Typer(
    help="Servers, the users of disks: create, list, show, start, stop, delete, attach and detach disks.\n\n"
    "A server lives in one availability zone and can use the disks of that zone.",
    no_args_is_help=True,
)


def volume_ids(attached: Any) -> Any:
    """`os-extended-volumes:volumes_attached` as the disks' ids, one a table line."""
    return [v.get("id") for v in attached] if isinstance(attached, list) else attached


SHAPE = Shape(
    what="server",
    columns=(
        Column("ID", "id", ids=True),
        Column("Name", "name"),
        Column("Status", "status", wrap=False),
        Column("AZ", "OS-EXT-AZ:availability_zone"),
        Column("Volumes", "os-extended-volumes:volumes_attached", ids=True, long=True,
               render=lambda s: volume_ids(s.get("os-extended-volumes:volumes_attached", []))),
    ),
    # The keys of the API's server, in its order (tests/e2e/test_cli.py keeps them in step).
    fields=(
        "id", "name", "status", "tenant_id", "user_id", "created", "updated", "OS-EXT-AZ:availability_zone",
        "OS-EXT-STS:vm_state", "OS-EXT-STS:power_state", "OS-EXT-STS:task_state",
        "os-extended-volumes:volumes_attached", "image", "flavor", "addresses", "metadata", "hostId", "links",
    ),
    cells={"os-extended-volumes:volumes_attached": volume_ids},
)
ATTACHMENT = Shape(what="attachment", columns=(), fields=("id", "serverId", "volumeId", "device"))

ServerId = Annotated[str, typer.Argument(help="The server's ID.")]
Columns = Annotated[list[str] | None, SHAPE.column_option()]
Fields = Annotated[list[str] | None, SHAPE.field_option()]
AttachmentFields = Annotated[list[str] | None, ATTACHMENT.field_option()]


def get_server(api: ApiSession, server_id: str) -> dict[str, Any]:
    return dict(api.compute("GET", f"/servers/{server_id}")["server"])


@app.command("create")
@api_command
def create(
    name: Annotated[str, typer.Option("--name", help="The server's name.")],
    az: Annotated[str, typer.Option("--az", help="Availability zone, e.g. az1.dc1.")],
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Create a server (it starts ACTIVE)."""
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        created = api.compute("POST", "/servers", json={"server": {"name": name, "availability_zone": az}})
        server = get_server(api, created["server"]["id"])
    print_object(server, view)


@app.command("list")
@api_command
def list_(
    name: Annotated[str | None, typer.Option(help="Only servers with this name.")] = None,
    status: Annotated[str | None, typer.Option(help="Only ACTIVE or SHUTOFF servers.")] = None,
    long: LongOption = False,
    columns: Columns = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List the project's servers."""
    view = list_view(SHAPE, fmt, columns, long)
    with connect() as api:
        page = api.compute("GET", "/servers/detail", params={"name": name, "status": status})
    print_list(list(page.get("servers", [])), view)


@app.command("show")
@api_command
def show(server_id: ServerId, fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """Show one server."""
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        server = get_server(api, server_id)
    print_object(server, view)


def _action(server_id: str, action: str, view: ObjectView) -> None:
    with connect() as api:
        api.compute("POST", f"/servers/{server_id}/action", json={action: None})
        server = get_server(api, server_id)
    if view.fmt is OutputFormat.table:
        say(f"server {server_id} is {server.get('status')}")
    print_object(server, view)


@app.command("start")
@api_command
def start(server_id: ServerId, fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """Start a stopped server (os-start: SHUTOFF -> ACTIVE)."""
    _action(server_id, "os-start", object_view(SHAPE, fmt, fields))


@app.command("stop")
@api_command
def stop(server_id: ServerId, fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """Stop a server (os-stop: ACTIVE -> SHUTOFF), e.g. before using a DR disk."""
    _action(server_id, "os-stop", object_view(SHAPE, fmt, fields))


@app.command("delete")
@api_command
def delete(server_id: ServerId) -> None:
    """Delete a server; its disks are detached and kept."""
    with connect() as api:
        api.compute("DELETE", f"/servers/{server_id}")
    say(f"server {server_id} deleted")


@app.command("attach")
@api_command
def attach(
    server_id: ServerId,
    volume_id: Annotated[str, typer.Argument(help="The disk's ID (same AZ as the server).")],
    device: Annotated[str | None, typer.Option(help="Device name to record, e.g. /dev/vdb.")] = None,
    fmt: FormatOption = OutputFormat.table,
    fields: AttachmentFields = None,
) -> None:
    """Attach a disk to a server (the disk goes in-use)."""
    view = object_view(ATTACHMENT, fmt, fields)
    spec: dict[str, Any] = {"volumeId": volume_id}
    if device:
        spec["device"] = device
    with connect() as api:
        body = api.compute("POST", f"/servers/{server_id}/os-volume_attachments",
                           json={"volumeAttachment": spec})
    print_object(body["volumeAttachment"], view)


@app.command("detach")
@api_command
def detach(
    server_id: ServerId,
    volume_id: Annotated[str, typer.Argument(help="The attached disk's ID.")],
) -> None:
    """Detach a disk from a server (its NBD export is revoked)."""
    with connect() as api:
        api.compute("DELETE", f"/servers/{server_id}/os-volume_attachments/{volume_id}")
    say(f"volume {volume_id} detached from server {server_id}")
