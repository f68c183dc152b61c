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
    witness_listen: Annotated[
        str,
        typer.Option(help="Also serve a quorum witness for other AZs' pairs at HOST:PORT (port 0: any)."),
    ] = "",
    witness_state: Annotated[
        Path | None, typer.Option(help="The witness's durable records (default: <pool>/../witness-<az>).")
    ] = None,
    witness_lease_s: Annotated[
        float, typer.Option(help="How long a witness grant lets a primary write alone.", min=1)
    ] = 6.0,
) -> None:
    """Run one standalone storage agent (a storage node of one AZ).

    It serves the volume files under --pool over NBD and answers the
    controller on its control API; SIGTERM or SIGINT stops it cleanly.
    """
    # Imported here: every server-side `openevs` command loads this module,
    # and only this one needs the agent's NBD and control-API code.
    from openevs.agent.runner import WitnessOptions, parse_hostport, run_agent

    try:
        nbd_host, nbd_port = parse_hostport(nbd, "--nbd")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--nbd'") from exc
    witness: WitnessOptions | None = None
    if witness_listen:
        try:
            host, port = parse_hostport(witness_listen, "--witness-listen")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--witness-listen'") from exc
        state = witness_state or pool.parent / f"witness-{az}"
        witness = WitnessOptions(host, port, state, witness_lease_s)
    run_agent(az, pool, listen, nbd_host, nbd_port, witness)


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(agent)
    app(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main(sys.argv[1:])
