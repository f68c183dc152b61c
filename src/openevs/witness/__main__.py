"""`python -m openevs.witness`: a standalone quorum witness.

`openevs witness` is the same command: cli/server_side.py registers `witness`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

PROG = "python -m openevs.witness"


def witness(
    listen: Annotated[
        str, typer.Option(help="Address the agents and the controller reach it at: HOST:PORT.")
    ] = "127.0.0.1:8790",
    state: Annotated[
        Path, typer.Option(help="Directory for its durable records (one small file per pair or group).")
    ] = Path("./openevs-witness"),
    lease_s: Annotated[
        float, typer.Option(help="How long a grant lets a primary write alone before it must renew.", min=1)
    ] = 6.0,
) -> None:
    """Run a standalone quorum witness: the third site that decides which side of a
    partitioned pair or group goes on writing. It stores no volume data; SIGTERM or
    SIGINT stops it cleanly."""
    from openevs.agent.runner import parse_hostport
    from openevs.witness.runner import run_witness

    try:
        host, port = parse_hostport(listen, "--listen")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--listen'") from exc
    run_witness(host, port, state, lease_s)


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(witness)
    app(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main(sys.argv[1:])
