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
    pki: Annotated[
        Path | None,
        typer.Option(
            help="Directory with ca.pem and this agent's agent-<AZ>.pem/.key (`openevs admin pki`):"
            " NBD and the replication link then use TLS.",
            envvar="OPENEVS_AGENT_PKI",
        ),
    ] = None,
    nbd_tls: Annotated[
        str | None,
        typer.Option(
            help="NBD TLS policy: off, optional or required (default with --pki: required,"
            " optional when --nbd is a loopback address; without --pki: off)."
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="This agent's certificate (`openevs admin pki issue --agent AZ`).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (mode 0600).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="The deployment's CA bundle (ca.pem).")] = None,
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
    controller on its control API (and Prometheus on its /metrics), over mutual TLS with the files given by
    --tls-cert/--tls-key/--tls-ca (or OPENEVS_AGENT_TLS_CERT/_KEY/_CA);
    without them it listens on loopback or a unix socket only. SIGTERM or
    SIGINT stops it cleanly.
    """
    # Imported here: every server-side `openevs` command loads this module,
    # and only this one needs the agent's NBD and control-API code.
    from openevs.agent.nbd.handshake import TlsPolicy
    from openevs.agent.nbd_tls import agent_tls
    from openevs.agent.runner import WitnessOptions, check_listen_security, parse_hostport, run_agent
    from openevs.config import ConfigError, load_settings
    from openevs.security import SecurityError

    try:
        nbd_host, nbd_port = parse_hostport(nbd, "--nbd")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--nbd'") from exc
    if log_format not in ("text", "json"):
        raise typer.BadParameter('must be "text" or "json"', param_hint="'--log-format'")
    witness: WitnessOptions | None = None
    if witness_listen:
        try:
            host, port = parse_hostport(witness_listen, "--witness-listen")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--witness-listen'") from exc
        state = witness_state or pool.parent / f"witness-{az}"
        witness = WitnessOptions(host, port, state, witness_lease_s)
    try:
        policy = TlsPolicy(nbd_tls) if nbd_tls is not None else None
    except ValueError:
        raise typer.BadParameter("must be off, optional or required", param_hint="'--nbd-tls'") from None
    given: dict[str, object] = {"agent_tls_cert": tls_cert, "agent_tls_key": tls_key, "agent_tls_ca": tls_ca}
    try:
        files = load_settings(None, **{k: v for k, v in given.items() if v is not None}).agent_tls_files()
        tls = agent_tls(az, pki, nbd_host, policy, files=files)
        check_listen_security(listen, tls.files if tls is not None else None)
    except (ConfigError, SecurityError, ValueError) as exc:
        typer.echo(f"{PROG}: {exc}", err=True)
        raise typer.Exit(2) from None
    run_agent(
        az, pool, listen, nbd_host, nbd_port,
        witness=witness, tls=tls, metrics_volumes=metrics_volumes, resync_rate_bytes_per_s=resync_rate,
        log_format=log_format,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(agent)
    app(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main(sys.argv[1:])
