"""`openevs group drill GROUP [--create-disks] [--cleanup]`: a DR drill, an openevs
extension (docs/decisions.md "DR drills").

A drill snapshots every DR disk of the group at one instant while
replication goes on; with --create-disks it also makes a disk of each in the
DR AZ, ready to attach to a drill server. --cleanup removes the disks, the
snapshots and the drill. With --wait the command follows it to `available`
(or, for --cleanup, until it is gone).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from openevs.cli import client_groups
from openevs.cli.client_common import (
    DEFAULT_TIMEOUT_S,
    TimeoutOption,
    Waiter,
    WaitOption,
    api_command,
    connect,
    fetch_or_none,
    say,
    wait,
)
from openevs.cli.client_format import Column, FormatOption, OutputFormat, Shape, object_view, print_object
from openevs.cli.session import ApiSession


def member_lines(members: list[dict[str, Any]]) -> list[str]:
    """Per DR disk: its snapshot and the drill disk made from it, with their statuses."""
    lines = []
    for m in members:
        disk = f" -> disk {m['volume_id']} ({m['volume_status']})" if m.get("volume_id") else ""
        lines.append(f"{m['dr_volume_id']}: snapshot {m['snapshot_id']} ({m['snapshot_status']}){disk}")
    return lines


SHAPE = Shape(
    what="drill",
    columns=(
        Column("ID", "id", ids=True),
        Column("Status", "status", wrap=False),
        Column("Group", "replication_consistency_group_id", ids=True),
    ),
    fields=(
        "id",
        "replication_consistency_group_id",
        "status",
        "availability_zone",
        "create_disks",
        "taken_at",
        "created_at",
        "updated_at",
        "fault",
        "members",
    ),
    cells={"members": lambda members: member_lines(members) if isinstance(members, list) else members},
)
FAILED = {"error", "error_deleting"}


def drill_path(group_id: str) -> str:
    return f"{client_groups.PATH}/{group_id}/drill"


def get_drill(api: ApiSession, group_id: str) -> dict[str, Any]:
    return dict(api.volume("GET", drill_path(group_id))["drill"])


def _members_line(drill: dict[str, Any]) -> str:
    members = drill.get("members") or []
    disks = [m["volume_id"] for m in members if m.get("volume_id")]
    return f"{len(members)} DR disk snapshot(s)" + (f", drill disks {', '.join(disks)}" if disks else "")


def _follow(api: ApiSession, group_id: str, cleanup: bool, timeout_s: float) -> dict[str, Any] | None:
    def failed(drill: dict[str, Any]) -> str | None:
        if drill.get("status") in FAILED:
            return f"drill {drill['status']}: {drill.get('fault') or 'no detail'}"
        return None

    waiter = Waiter(
        what=f"{'cleanup of the ' if cleanup else ''}drill of group {group_id}",
        fetch=fetch_or_none(lambda: get_drill(api, group_id)),
        done=(lambda d: d is None) if cleanup else (lambda d: d is not None and d["status"] == "available"),
        failed=failed, status=lambda d: str(d.get("status")),
    )  # fmt: skip
    return wait(waiter, timeout_s)


@client_groups.app.command("drill")
@api_command
def drill(
    group_id: Annotated[str, typer.Argument(help="The consistency group's ID.")],
    create_disks: Annotated[bool, typer.Option("--create-disks", help="Also make a disk of each "
                                               "snapshot in the DR AZ.")] = False,
    cleanup: Annotated[bool, typer.Option("--cleanup", help="Remove the drill's disks and "
                                          "snapshots.")] = False,
    wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    fmt: FormatOption = OutputFormat.table,
) -> None:  # fmt: skip
    """Snapshot every DR disk of the group at one instant, while replication goes on (an openevs extension).

    Production notices at most a pause of a few milliseconds; the snapshots
    are one crash-consistent point of the whole group.
    """
    view = object_view(SHAPE, fmt, None)
    with connect() as api:
        if cleanup:
            api.volume("DELETE", drill_path(group_id))
            if not wait_:
                say(f"cleanup of the drill of group {group_id} accepted")
                return
            _follow(api, group_id, True, timeout)
            say(f"drill of group {group_id} cleaned up")
            return
        body = {"drill": {"create_disks": create_disks}}
        shown = dict(api.volume("POST", drill_path(group_id), json=body)["drill"])
        if wait_:
            shown = _follow(api, group_id, False, timeout) or shown
            say(f"drill of group {group_id} is {shown.get('status')}: {_members_line(shown)}")
        else:
            say(f"drill of group {group_id} started")
    print_object(shown, view)
