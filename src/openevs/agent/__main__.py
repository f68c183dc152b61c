"""`python -m openevs.agent`: one storage agent (what `openevs serve` starts per AZ).

`openevs agent` is the same command: cli/server_side.py registers `agent`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

PROG = "python -m openevs.agent"


def agent(
    az: Annotated[str, typer.Option(help="The availability zone this agent serves.")],
    pool: Annotated[Path, typer.Option(help="Directory holding the AZ's volume files.")],
    listen: Annotated[
        str, typer.Option(help="Control API address: HOST:PORT or unix:/path.sock.")
    ] = "127.0.0.1:8780",
    nbd: Annotated[
        str, typer.Option(help="NBD listen address HOST:PORT (port 0: any free port).")
    ] = "127.0.0.1:10809",
    metrics_volumes: Annotated[
        str,
        typer.Option(help='Volumes whose NBD traffic /metrics shows apart: ids, comma-separated, or "all".'),
    ] = "",
    resync_rate: Annotated[
        int, typer.Option(min=0, help="Bytes/s all syncs of this agent copy at most (0: no limit).")
    ] = 0,
    log_format: Annotated[str, typer.Option(help='Log lines: "text" or "json".')] = "text",
) -> None:
    """Run one standalone storage agent (a storage node of one AZ).

    It serves the volume files under --pool over NBD and answers the
    controller on its control API (and Prometheus on its /metrics);
    SIGTERM or SIGINT stops it cleanly.
    """
    # Imported here: every server-side `openevs` command loads this module,
    # and only this one needs the agent's NBD and control-API code.
    from openevs.agent.runner import parse_hostport, run_agent

    try:
        nbd_host, nbd_port = parse_hostport(nbd, "--nbd")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--nbd'") from exc
    if log_format not in ("text", "json"):
        raise typer.BadParameter('must be "text" or "json"', param_hint="'--log-format'")
    run_agent(az, pool, listen, nbd_host, nbd_port, metrics_volumes, resync_rate, log_format)


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(agent)
    app(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main(sys.argv[1:])
