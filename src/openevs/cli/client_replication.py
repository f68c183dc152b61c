"""`openevs replication ...`: replication pairs (EVS `os-vendor-replications`).

A pair mirrors a production disk to a DR disk in another AZ. `create --wait`
follows the initial synchronisation: a bar driven by the pair's `progress`
(a string percentage) while `replication_status` is `copying`, finished when
it is `active`.
"""

from __future__ import annotations

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
    help="Replication pairs: a production disk mirrored in real time to a DR disk in another AZ.\n\n"
    "Create one from two disks of the same type and size in different AZs; "
    "--priority-station names the AZ of the production disk.",
    no_args_is_help=True,
)

PATH = "/os-vendor-replications"


def volume_id_list(volume_ids: Any) -> Any:
    """The API's comma-joined `volume_ids` ("prod,dr") as a list, one id per table line."""
    return volume_ids.split(",") if isinstance(volume_ids, str) and volume_ids else volume_ids


SHAPE = Shape(
    what="replication pair",
    columns=(
        Column("ID", "id", ids=True),
        Column("Name", "name"),
        Column("Status", "status", wrap=False),
        Column("Replication", "replication_status", render=replication_cell, wrap=False),
        Column("Progress %", "progress", long=True),
        Column("Volumes", "volume_ids", ids=True, long=True,
               render=lambda p: volume_id_list(p.get("volume_ids"))),
        Column("Priority station", "priority_station", long=True),
        Column("Fault level", "fault_level", long=True),
        Column("Group", "replication_consistency_group_id", ids=True, long=True),
    ),
    # The keys of the API's pair, in its order (tests/e2e/test_cli.py keeps them in step).
    fields=(
        "id", "name", "description", "status", "replication_consistency_group_id", "volume_ids",
        "priority_station", "created_at", "updated_at", "replication_model", "replication_status",
        "progress", "failure_detail", "record_metadata", "fault_level", "arbitration",
        # openevs extensions (docs/monitoring.md)
        "verify", "dirty_bytes", "resync_rate_bytes_per_s", "resync_eta_s", "resync_rate_limit_bytes_per_s",
    ),
    cells={"volume_ids": volume_id_list, "verify": lambda v: verify_summary(v)},
)

def verify_summary(verify: dict[str, Any] | None) -> str:
    """One line of a pair's `verify` extra (also its cell in `replication show`)."""
    if not verify:
        return "never verified"
    text = (f"{verify['status']} {verify['progress']}%: {verify['checked_bytes']} bytes checked, "
            f"{verify['mismatched_bytes']} mismatched, {verify['skipped_bytes']} skipped")  # fmt: skip
    if verify.get("mismatched_ranges"):
        text += " at " + ", ".join(f"{o}+{n}" for o, n in verify["mismatched_ranges"][:8])
    if verify.get("error"):
        text += f" ({verify['error']})"
    return text


PairId = Annotated[str, typer.Argument(help="The replication pair's ID.")]
Columns = Annotated[list[str] | None, SHAPE.column_option()]
Fields = Annotated[list[str] | None, SHAPE.field_option()]


def get_pair(api: ApiSession, pair_id: str) -> dict[str, Any]:
    return dict(api.volume("GET", f"{PATH}/{pair_id}")["replication"])


def pair_problem(pair: dict[str, Any]) -> str | None:
    """Why a pair cannot reach its goal by itself, or None."""
    if pair.get("status") in ("error", "error_deleting") or pair.get("replication_status") == "error":
        detail = pair.get("failure_detail")
        return (f"status {pair.get('status')}, replication_status {pair.get('replication_status')}"
                + (f", failure_detail {detail}" if detail else ""))
    return None


pair_status = replication_state
pair_percent = replication_percent


def in_sync(pair: dict[str, Any] | None) -> bool:
    if pair is None:
        return False
    return pair.get("status") == "available" and pair.get("replication_status") == "active"


@app.command("create")
@api_command
def create(
    volumes: Annotated[list[str], typer.Option(
        "--volume", help="A disk of the pair; give it twice: the production disk, then the DR disk.",
    )],
    priority_station: Annotated[str, typer.Option(
        "--priority-station", help="The AZ of the production disk (the side that takes writes).",
    )],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    wait_: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    fmt: FormatOption = OutputFormat.table,
    fields: Fields = None,
) -> None:
    """Pair two disks (hypermetro); with --wait, follow the initial copy until active."""
    view = object_view(SHAPE, fmt, fields)
    if len(volumes) != 2:
        raise ClientError(f"give --volume exactly twice (production, then DR); got {len(volumes)}")
    spec: dict[str, Any] = {
        "volume_ids": volumes, "priority_station": priority_station, "replication_model": "hypermetro",
    }
    if name is not None:
        spec["name"] = name
    if description is not None:
        spec["description"] = description
    with connect() as api:
        pair = dict(api.volume("POST", PATH, json={"replication": spec})["replication"])
        if wait_:
            waiter = Waiter(
                what=f"replication {pair['id']}",
                fetch=lambda: get_pair(api, pair["id"]),
                done=in_sync, failed=pair_problem, status=pair_status, percent=pair_percent,
            )
            pair = wait(waiter, timeout) or pair
            say(f"replication {pair['id']} is {pair.get('status')}, {pair.get('replication_status')}")
    print_object(pair, view)


@app.command("list")
@api_command
def list_(
    status: Annotated[str | None, typer.Option(help="Only pairs in this status, e.g. available.")] = None,
    volume_id: Annotated[str | None, typer.Option("--volume-id", help="Only the pair of this disk.")] = None,
    name: Annotated[str | None, typer.Option(help="Only pairs with this name.")] = None,
    group: Annotated[str | None, typer.Option(help="Only members of this consistency group.")] = None,
    long: LongOption = False,
    columns: Columns = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List the project's replication pairs; Replication shows the progress while copying."""
    view = list_view(SHAPE, fmt, columns, long)
    params = {"status": status, "volume_id": volume_id, "name": name,
              "replication_consistency_group_id": group}
    with connect() as api:
        page = api.volume("GET", PATH, params=params)
    print_list(list(page.get("replications", [])), view)


@app.command("show")
@api_command
def show(pair_id: PairId, fmt: FormatOption = OutputFormat.table, fields: Fields = None) -> None:
    """Show one replication pair, with its progress, fault level and failure detail."""
    view = object_view(SHAPE, fmt, fields)
    with connect() as api:
        pair = get_pair(api, pair_id)
    print_object(pair, view)
    if fmt is OutputFormat.table and (words := arbitration_words(pair)):
        say(words)


@app.command("delete")
@api_command
def delete(pair_id: PairId, wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S) -> None:
    """Dissolve a pair (both disks are kept); with --wait, until it is gone."""
    with connect() as api:
        api.volume("DELETE", f"{PATH}/{pair_id}")
        if wait_:
            waiter = Waiter(
                what=f"deleting replication {pair_id}",
                fetch=fetch_or_none(lambda: get_pair(api, pair_id)),
                done=lambda p: p is None,
                failed=lambda p: pair_problem(p) if p.get("status") == "error_deleting" else None,
                status=pair_status,
            )
            wait(waiter, timeout)
            say(f"replication {pair_id} deleted")
        else:
            say(f"deletion of replication {pair_id} requested")
