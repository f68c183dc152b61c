"""`openevs group ...`: replication consistency groups
(EVS `os-vendor-replication-consistency-groups`).

A group makes several replication pairs one unit of failure: they pause,
sync, switch over and fail over together, so the DR disks always form one
crash-consistent point in time. Each command is one API call; `--wait`
polls the group until the documented end state of that operation (table
WAIT_GOALS below), with a progress bar from the group's `progress` while
`replication_status` is `copying`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from openevs.cli.client_arbitration import arbitration_words
from openevs.cli.client_common import (
    DEFAULT_TIMEOUT_S,
    TimeoutOption,
    Waiter,
    WaitOption,
    api_command,
    connect,
    fetch_or_none,
    replication_cell,
    replication_percent,
    replication_state,
    say,
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
from openevs.cli.session import ApiSession, ClientError

app = typer.Typer(
    help="Replication consistency groups: replication pairs that fail over together.\n\n"
    "Every member pair must be available, in no other group, and have the group's "
    "priority station (the AZ of the production disks). Typical life: create, "
    "pause / sync, switchover (planned, while active) or failover (the primary AZ is lost), "
    "then reprotect to mirror back; members are added or removed only while paused; "
    "a group is deleted once it has no members.",
    no_args_is_help=True,
)

PATH = "/os-vendor-replication-consistency-groups"
SHAPE = Shape(
    what="consistency group",
    columns=(
        Column("ID", "id", ids=True),
        Column("Name", "name"),
        Column("Status", "status", wrap=False),
        Column("Replication", "replication_status", render=replication_cell, wrap=False),
        Column("Progress %", "progress", long=True),
        Column("Priority station", "priority_station", long=True),
        Column("Fault level", "fault_level", long=True),
        Column("Pairs", "replication_ids", ids=True, long=True),
    ),
    # The keys of the API's group, in its order (tests/e2e/test_cli_groups.py keeps them in step).
    fields=(
        "id", "name", "description", "status", "priority_station", "replication_model",
        "replication_status", "progress", "replication_ids", "created_at", "updated_at",
        "failure_detail", "fault_level", "arbitration",
        # openevs extensions (docs/monitoring.md)
        "dirty_bytes", "resync_rate_bytes_per_s", "resync_eta_s",
    ),
)
FAILED_STATUSES = {"error", "error_deleting", "error_reversing", "error_failovering"}

GroupId = Annotated[str, typer.Argument(help="The consistency group's ID.")]
Columns = Annotated[list[str] | None, SHAPE.column_option()]
Fields = Annotated[list[str] | None, SHAPE.field_option()]


def get_group(api: ApiSession, group_id: str) -> dict[str, Any]:
    return dict(api.volume("GET", f"{PATH}/{group_id}")["replication_consistency_group"])


def group_problem(group: dict[str, Any]) -> str | None:
    """Why a group cannot reach its goal by itself, or None."""
    if group.get("status") in FAILED_STATUSES or group.get("replication_status") == "error":
        detail = group.get("failure_detail")
        return (f"status {group.get('status')}, replication_status {group.get('replication_status')}"
                + (f", failure_detail {detail}" if detail else ""))
    return None


group_status = replication_state
group_percent = replication_percent


Goal = Callable[[dict[str, Any] | None], bool]


def _is(status: str, *replication: str) -> Goal:
    def done(group: dict[str, Any] | None) -> bool:
        return (group is not None and group.get("status") == status
                and (not replication or group.get("replication_status") in replication))

    return done


# The documented end state of each operation (DESIGN.md section 3).
WAIT_GOALS: dict[str, Goal] = {
    "create": _is("available"),
    "update": _is("available"),
    "pause": _is("available", "active-stopped", "inactive"),
    "sync": _is("available", "active"),
    "switchover": _is("available"),
    "failover": _is("failovered"),
    "reprotect": _is("available", "active"),
    "delete": lambda group: group is None,
}


def _follow(api: ApiSession, group_id: str, operation: str, timeout_s: float) -> dict[str, Any] | None:
    def failed(group: dict[str, Any]) -> str | None:
        if operation == "reprotect" and group.get("status") == "failovered" and group.get("failure_detail"):
            detail = group["failure_detail"]
            return f"reprotect failed, the group is failovered again (failure_detail {detail})"
        if operation == "delete" and group.get("status") != "error_deleting":
            return None
        return group_problem(group)

    waiter = Waiter(
        what=f"{operation} group {group_id}",
        fetch=fetch_or_none(lambda: get_group(api, group_id)),
        done=WAIT_GOALS[operation], failed=failed, status=group_status, percent=group_percent,
    )
    group = wait(waiter, timeout_s)
    if group is None:
        say(f"group {group_id} deleted")
    else:
        say(f"group {group_id} is {group.get('status')}, {group.get('replication_status') or '-'}")
    return group


def _action(api: ApiSession, group_id: str, body: dict[str, Any]) -> None:
    api.volume("POST", f"{PATH}/{group_id}/action", json=body)


# The action body's key of each operation that takes no arguments.
ACTIONS = {
    "pause": "os-stop-replication-consistency-group",
    "sync": "os-sync-replication-consistency-group",
    "switchover": "os-reverse-replication-consistency-group",
    "failover": "os-failover-replication-consistency-group",
    "force-failover": "openevs-force-failover-replication-consistency-group",  # an openevs extension
    "reprotect": "os-reprotect-replication-consistency-group",
}


def _run_action(group_id: str, operation: str, wait_: bool, timeout_s: float,
                fmt: OutputFormat, fields: list[str] | None, action: str = "") -> None:
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        _action(api, group_id, {ACTIONS[action or operation]: None})
        if wait_:
            group = _follow(api, group_id, operation, timeout_s) or {}
        else:
            say(f"{operation} of group {group_id} accepted")
            group = get_group(api, group_id)
    print_object(group, view)
    if fmt is OutputFormat.table and (words := arbitration_words(group)):
        say(words)


@app.command("create")
@api_command
def create(
    pairs: Annotated[list[str], typer.Option(
        "--pair", help="A member replication pair (repeat for each); it must be available and in no group.",
    )],
    priority_station: Annotated[str, typer.Option(
        "--priority-station", help="The AZ of the members' production disks, e.g. az1.dc1.",
    )],
    name: Annotated[str | None, typer.Option(help="Display name (up to 255 bytes).")] = None,
    description: Annotated[str | None, typer.Option(help="Free text (up to 255 bytes).")] = None,
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Group replication pairs (hypermetro); with --wait, until the group is available."""
    view = object_view(SHAPE, fmt, fields)
    spec: dict[str, Any] = {
        "replication_ids": pairs, "priority_station": priority_station, "replication_model": "hypermetro",
    }
    if name is not None:
        spec["name"] = name
    if description is not None:
        spec["description"] = description
    with connect() as api:
        group = dict(api.volume("POST", PATH, json={"replication_consistency_group": spec})
                     ["replication_consistency_group"])
        if wait_:
            group = _follow(api, group["id"], "create", timeout) or group
    print_object(group, view)


@app.command("list")
@api_command
def list_(
    name: Annotated[str | None, typer.Option(help="Only groups with this name.")] = None,
    status: Annotated[str | None, typer.Option(help="Only groups in this status, e.g. available.")] = None,
    priority_station: Annotated[str | None, typer.Option(
        "--priority-station", help="Only groups whose production disks are in this AZ.")] = None,
    volume_id: Annotated[str | None, typer.Option(
        "--volume-id", help="Only the group holding this disk (production or DR).")] = None,
    long: LongOption = False,
    columns: Columns = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List the project's consistency groups; Replication shows the progress while copying."""
    view = list_view(SHAPE, fmt, columns, long)
    params = {"name": name, "status": status, "priority_station": priority_station, "volume_id": volume_id}
    with connect() as api:
        page = api.volume("GET", PATH, params=params)
    print_list(list(page.get("replication_consistency_groups", [])), view)


@app.command("show")
@api_command
def show(group_id: GroupId, fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """Show one group: members, replication status, progress, fault level, failure detail."""
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        group = get_group(api, group_id)
    print_object(group, view)
    if fmt is OutputFormat.table and (words := arbitration_words(group)):
        say(words)


@app.command("update")
@api_command
def update(
    group_id: GroupId,
    name: Annotated[str | None, typer.Option(help="New display name.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    add: Annotated[list[str] | None, typer.Option(
        "--add", help="A pair to add (repeatable). Only while the group is paused; sync afterwards.",
    )] = None,
    remove: Annotated[list[str] | None, typer.Option(
        "--remove", help="A member pair to remove (repeatable). Only while the group is paused.",
    )] = None,
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Rename a group, or add/remove members.

    The name and description change at any time; members change only while the
    group is paused (`openevs group pause`: replication_status active-stopped or
    inactive). Added pairs join paused: run `openevs group sync` afterwards.
    With --wait, until the group is available again.
    """
    spec: dict[str, Any] = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
    if add:
        spec["add_replication_ids"] = add
    if remove:
        spec["remove_replication_ids"] = remove
    if not spec:
        raise ClientError("nothing to update: give --name, --description, --add or --remove")
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        group = dict(api.volume("PUT", f"{PATH}/{group_id}", json={"replication_consistency_group": spec})
                     ["replication_consistency_group"])
        if wait_:
            group = _follow(api, group_id, "update", timeout) or group
    print_object(group, view)


@app.command("delete")
@api_command
def delete(group_id: GroupId, wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S) -> None:
    """Delete a group that has no members (the pairs and disks are kept).

    Remove the members first (`openevs group pause`, then `update --remove`);
    the group must be available or error. With --wait, until it is gone.
    """
    with connect() as api:
        api.volume("DELETE", f"{PATH}/{group_id}")
        if wait_:
            _follow(api, group_id, "delete", timeout)
        else:
            say(f"deletion of group {group_id} requested")


@app.command("pause")
@api_command
def pause(group_id: GroupId, wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
          fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """Stop mirroring of every member at one instant (group must be available).

    The group shows active-stopped, then inactive as soon as a production disk is
    written. With --wait, until the pause shows in replication_status.
    """
    _run_action(group_id, "pause", wait_, timeout, fmt, fields)


@app.command("sync")
@api_command
def sync(group_id: GroupId, wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
         fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """Resume mirroring: copy every region that differs (group must be available).

    With --wait, a progress bar while copying, until replication_status is active.
    After a failover use `reprotect`, not sync.
    """
    _run_action(group_id, "sync", wait_, timeout, fmt, fields)


@app.command("switchover")
@api_command
def switchover(group_id: GroupId, wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
               fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """Planned switchover (os-reverse): the DR disks become production with no write lost.

    Only when the group is available and active (every member in sync; sync first
    otherwise). The priority station moves to the DR AZ; mirroring continues the
    other way. With --wait, until the group is available again.
    """
    _run_action(group_id, "switchover", wait_, timeout, fmt, fields)


@app.command("failover")
@api_command
def failover(group_id: GroupId, wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
             fmt: FormatOption = OutputFormat.table, fields: Fields = None,
             force: Annotated[bool, typer.Option(
                 "--force", help="Override the witness: promote although the old primary holds a live "
                 "lease or the witness cannot be reached (acknowledged writes of the old primary may be "
                 "lost; an openevs extension)")] = False) -> None:
    """Fail over: the DR disks become writable production disks, also when the primary AZ is down.

    The old production disks are fenced (they refuse writes); mirroring stops
    (active-stopped). Afterwards run `reprotect` to mirror back. With --wait,
    until the group is failovered. With a witness (three AZs), the witness must
    grant the group to the DR side first: refused while the old primary holds
    a live lease (409) or when the witness cannot be reached (400).
    """
    _run_action(group_id, "failover", wait_, timeout, fmt, fields, "force-failover" if force else "")


@app.command("reprotect")
@api_command
def reprotect(group_id: GroupId, wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
              fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """After a failover only: mirror the new production disks back to the old ones.

    Only the regions that differ are copied. With --wait, a progress bar while
    copying, until the group is available and active.
    """
    _run_action(group_id, "reprotect", wait_, timeout, fmt, fields)


@app.command("extend")
@api_command
def extend(
    group_id: GroupId,
    pairs: Annotated[list[str], typer.Option("--pair", help="A member pair to grow (repeatable).")],
    sizes: Annotated[list[int], typer.Option(
        "--size", help="The new, larger size in GB of the --pair before it (one --size per --pair).", min=1,
    )],
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Grow both disks of member pairs, e.g. `extend G --pair P1 --size 20 --pair P2 --size 40`.

    The group must be available and its replication not in error. The command
    returns when both disks of every pair have grown.
    """
    if len(pairs) != len(sizes):
        raise ClientError(f"give one --size per --pair; got {len(pairs)} --pair and {len(sizes)} --size")
    view = object_view(SHAPE, fmt, fields)
    body = {"os-extend-replication-volumes": {
        "replications": [{"id": pid, "new_size": size} for pid, size in zip(pairs, sizes, strict=True)],
    }}
    with connect() as api:
        _action(api, group_id, body)
        say(f"pairs of group {group_id} extended: "
            + ", ".join(f"{pid} to {size} GB" for pid, size in zip(pairs, sizes, strict=True)))
        group = get_group(api, group_id)
    print_object(group, view)
