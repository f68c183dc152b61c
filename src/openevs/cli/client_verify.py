"""`openevs replication verify|resync-rate` and `openevs group verify`: the openevs
extensions for operators (docs/monitoring.md).

`verify` asks the API to compare a pair's DR disk with its production disk
region by region while writes go on; with --wait it follows the check (a
bar driven by the verify's progress) and ends with what it found: bytes
checked, mismatched (marked dirty: the sync repairs them) and skipped
(written during the check). A group verify checks every member.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from openevs.cli import client_groups, client_replication
from openevs.cli.client_common import (
    DEFAULT_TIMEOUT_S,
    TimeoutOption,
    Waiter,
    WaitOption,
    api_command,
    connect,
    say,
    wait,
)
from openevs.cli.client_format import FormatOption, OutputFormat, object_view, print_object
from openevs.cli.session import ApiSession, ClientError

verify_summary = client_replication.verify_summary

PAIRS = client_replication.PATH
GROUPS = client_groups.PATH


def _verifies(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p.get("verify") or {"status": "running", "progress": "0"} for p in pairs]


def _follow(api: ApiSession, what: str, pair_ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    """Until every pair's verify has ended; the pairs as they are then."""
    latest: list[dict[str, Any]] = []

    def fetch() -> dict[str, Any]:
        latest[:] = [client_replication.get_pair(api, pid) for pid in pair_ids]
        runs = _verifies(latest)
        return {"runs": runs, "percent": sum(int(r["progress"]) for r in runs) / len(runs)}

    def failed(state: dict[str, Any]) -> str | None:
        errors = [r.get("error") for r in state["runs"] if r["status"] == "failed"]
        return f"verify failed: {errors[0]}" if errors else None

    waiter = Waiter(
        what=what, fetch=fetch, failed=failed, status=lambda s: "verifying",
        done=lambda s: s is not None and all(r["status"] != "running" for r in s["runs"]),
        percent=lambda s: float(s["percent"]),
    )  # fmt: skip
    wait(waiter, timeout_s)
    return latest


PairId = Annotated[str, typer.Argument(help="The replication pair's ID.")]


@client_replication.app.command("verify")
@api_command
def verify_pair(
    pair_id: PairId, wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    fmt: FormatOption = OutputFormat.table,
) -> None:  # fmt: skip
    """Compare the DR disk with the production disk while writes go on (an openevs extension).

    Both agents hash their disk region by region (the data never moves);
    regions that differ are marked dirty, so the next sync repairs them.
    """
    view = object_view(client_replication.SHAPE, fmt, None)
    with connect() as api:
        pair = dict(api.volume("POST", f"{PAIRS}/{pair_id}/verify")["replication"])
        if wait_:
            pair = _follow(api, f"verify of replication {pair_id}", [pair_id], timeout)[0]
            say(f"replication {pair_id}: verify {verify_summary(pair.get('verify'))}")
        else:
            say(f"verify of replication {pair_id} started")
    print_object(pair, view)


@client_replication.app.command("resync-rate")
@api_command
def resync_rate(
    pair_id: PairId,
    bytes_per_s: Annotated[int, typer.Argument(min=0, help="At most this many bytes/s (0: no own limit).")],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Limit how fast this pair's resync copies (an openevs extension; the agent's own limit applies too)."""
    view = object_view(client_replication.SHAPE, fmt, None)
    with connect() as api:
        body = {"resync_rate_bytes_per_s": bytes_per_s}
        pair = dict(api.volume("PUT", f"{PAIRS}/{pair_id}/resync-rate", json=body)["replication"])
    print_object(pair, view)


@client_groups.app.command("verify")
@api_command
def verify_group(
    group_id: Annotated[str, typer.Argument(help="The consistency group's ID.")],
    wait_: WaitOption = False, timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:  # fmt: skip
    """Verify every pair of the group (see `openevs replication verify`)."""
    with connect() as api:
        group = api.volume("POST", f"{GROUPS}/{group_id}/verify")["replication_consistency_group"]
        pair_ids = list(group.get("replication_ids") or [])
        if not pair_ids:
            raise ClientError(f"group {group_id} has no pairs")
        if not wait_:
            say(f"verify of the {len(pair_ids)} pairs of group {group_id} started")
            return
        for pair in _follow(api, f"verify of group {group_id}", pair_ids, timeout):
            say(f"replication {pair['id']}: verify {verify_summary(pair.get('verify'))}")
