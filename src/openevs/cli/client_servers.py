"""`openevs server ...`: the consumers of disks (a Nova v2.1 subset)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from openevs.cli.client_common import (
    Column,
    FormatOption,
    OutputFormat,
    api_command,
    connect,
    field,
    print_list,
    print_object,
    say,
)
from openevs.cli.session import ApiSession

app = typer.Typer(
    help="Servers, the users of disks: create, list, show, start, stop, delete, attach and detach disks.\n\n"
    "A server lives in one availability zone and can use the disks of that zone.",
    no_args_is_help=True,
)

COLUMNS = [
    field("ID", "id"),
    field("Name", "name"),
    field("Status", "status"),
    field("AZ", "OS-EXT-AZ:availability_zone"),
    Column("Volumes", lambda s: ", ".join(
        v.get("id", "") for v in s.get("os-extended-volumes:volumes_attached", []))),
]

ServerId = Annotated[str, typer.Argument(help="The server's ID.")]


def get_server(api: ApiSession, server_id: str) -> dict[str, Any]:
    return dict(api.compute("GET", f"/servers/{server_id}")["server"])


@app.command("create")
@api_command
def create(
    name: Annotated[str, typer.Option("--name", help="The server's name.")],
    az: Annotated[str, typer.Option("--az", help="Availability zone, e.g. az1.dc1.")],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Create a server (it starts ACTIVE)."""
    with connect() as api:
        created = api.compute("POST", "/servers", json={"server": {"name": name, "availability_zone": az}})
        print_object(get_server(api, created["server"]["id"]), fmt)


@app.command("list")
@api_command
def list_(
    name: Annotated[str | None, typer.Option(help="Only servers with this name.")] = None,
    status: Annotated[str | None, typer.Option(help="Only ACTIVE or SHUTOFF servers.")] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List the project's servers."""
    with connect() as api:
        page = api.compute("GET", "/servers/detail", params={"name": name, "status": status})
    print_list(list(page.get("servers", [])), COLUMNS, fmt)


@app.command("show")
@api_command
def show(server_id: ServerId, fmt: FormatOption = OutputFormat.table) -> None:
    """Show one server."""
    with connect() as api:
        print_object(get_server(api, server_id), fmt)


def _action(server_id: str, action: str, fmt: OutputFormat) -> None:
    with connect() as api:
        api.compute("POST", f"/servers/{server_id}/action", json={action: None})
        server = get_server(api, server_id)
    if fmt is OutputFormat.table:
        say(f"server {server_id} is {server.get('status')}")
    print_object(server, fmt)


@app.command("start")
@api_command
def start(server_id: ServerId, fmt: FormatOption = OutputFormat.table) -> None:
    """Start a stopped server (os-start: SHUTOFF -> ACTIVE)."""
    _action(server_id, "os-start", fmt)


@app.command("stop")
@api_command
def stop(server_id: ServerId, fmt: FormatOption = OutputFormat.table) -> None:
    """Stop a server (os-stop: ACTIVE -> SHUTOFF), e.g. before using a DR disk."""
    _action(server_id, "os-stop", fmt)


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
) -> None:
    """Attach a disk to a server (the disk goes in-use)."""
    spec: dict[str, Any] = {"volumeId": volume_id}
    if device:
        spec["device"] = device
    with connect() as api:
        body = api.compute("POST", f"/servers/{server_id}/os-volume_attachments",
                           json={"volumeAttachment": spec})
    print_object(body["volumeAttachment"], fmt)


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
