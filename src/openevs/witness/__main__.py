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
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="The witness's certificate (`openevs admin pki issue --witness`).",
                     envvar="OPENEVS_WITNESS_TLS_CERT"),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="Its private key (mode 0600).", envvar="OPENEVS_WITNESS_TLS_KEY")
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(help="The deployment's CA bundle (ca.pem).", envvar="OPENEVS_WITNESS_TLS_CA"),
    ] = None,
) -> None:
    """Run a standalone quorum witness: the third site that decides which side of a
    partitioned pair or group goes on writing. It stores no volume data; SIGTERM or
    SIGINT stops it cleanly. With --tls-cert/--tls-key/--tls-ca it answers only agents
    and the controller of the deployment (mutual TLS); without them it listens on
    loopback only."""
    from openevs.agent.runner import check_listen_security, parse_hostport
    from openevs.security import SecurityError
    from openevs.security.pki import TlsFiles
    from openevs.security.tls import server_context
    from openevs.witness.runner import run_witness

    try:
        host, port = parse_hostport(listen, "--listen")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--listen'") from exc
    given = (tls_cert, tls_key, tls_ca)
    if any(given) and not all(given):
        raise typer.BadParameter("--tls-cert, --tls-key and --tls-ca go together", param_hint="'--tls-cert'")
    tls = TlsFiles(ca=tls_ca, cert=tls_cert, key=tls_key) if tls_ca and tls_cert and tls_key else None
    try:
        check_listen_security(listen, tls)
        if tls is not None:
            server_context(tls)
    except SecurityError as exc:
        typer.echo(f"{PROG}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    run_witness(host, port, state, lease_s, tls)


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(witness)
    app(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main(sys.argv[1:])
