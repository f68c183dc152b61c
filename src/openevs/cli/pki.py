"""`openevs admin pki`: the deployment CA and the certificates of its components.

Thin commands over security/pki.py; every refusal there (no CA yet, a bad
AZ name, a file that exists) is one line on stderr and exit code 1. The
directory defaults to `<data_dir>/pki`; docs/security.md has the procedures.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from cryptography.x509.oid import NameOID
from rich.console import Console
from rich.table import Table

from openevs.cli.server_side import settings_or_exit
from openevs.security import PkiError, SecurityError
from openevs.security import pki as ca
from openevs.security.identity import CertRole, Identity, check_az

app = typer.Typer(
    help=(
        "The deployment CA and the TLS certificates of controller, agents, witness and API.\n\n"
        "`pki init` once, then `pki issue` one certificate per component; copy ca.pem and the "
        "component's .pem and .key to its host. Files live in <data_dir>/pki unless --dir says "
        "otherwise; keys are written with mode 0600. See docs/security.md."
    ),
    no_args_is_help=True,
)
out = Console(soft_wrap=True)  # paths and messages stay on one line
err = Console(stderr=True, soft_wrap=True)

DirOption = Annotated[
    Path | None, typer.Option("--dir", help="PKI directory (default: <data_dir>/pki)", show_default=False)
]
ForceOption = Annotated[bool, typer.Option("--force", help="replace files that exist")]


def _dir(given: Path | None) -> Path:
    return given if given is not None else settings_or_exit().pki_dir()


def _fail(exc: SecurityError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc.message}", highlight=False)
    return typer.Exit(1)


def _until(cert_not_after: dt.datetime) -> str:
    days = (cert_not_after - dt.datetime.now(dt.UTC)).days
    return f"{cert_not_after:%Y-%m-%d} ({'EXPIRED' if days < 0 else f'{days} days left'})"


@app.command("init")
def init(
    directory: DirOption = None,
    days: Annotated[int, typer.Option(help="validity of the CA certificate")] = ca.CA_DAYS,
    force: Annotated[
        bool,
        typer.Option("--force", help="replace an existing CA (every certificate it issued stops working)"),
    ] = False,
) -> None:
    """Create the deployment CA: ca.key (keep it on this host only) and ca.pem (copy it everywhere)."""
    pki_dir = _dir(directory)
    try:
        cert = ca.init_ca(pki_dir, days=days, force=force)
    except SecurityError as exc:
        raise _fail(exc) from exc
    out.print(f"created CA {cert.subject.rfc4514_string()}, valid until {_until(cert.not_valid_after_utc)}")
    out.print(f"  {pki_dir / ca.CA_CERT}  (the bundle every component trusts)")
    out.print(f"  {pki_dir / ca.CA_KEY}  (mode 0600; issues certificates; never copy it to a node)")


@app.command("issue")
def issue(
    agent: Annotated[
        str | None, typer.Option("--agent", metavar="AZ", help="an agent of this AZ (serves and connects)")
    ] = None,
    controller: Annotated[
        bool, typer.Option("--controller", help="the controller (connects to agents)")
    ] = False,
    witness: Annotated[bool, typer.Option("--witness", help="the witness (serves agents)")] = False,
    api: Annotated[bool, typer.Option("--api", help="the public HTTPS endpoint (serves users)")] = False,
    dns: Annotated[
        list[str] | None,
        typer.Option("--dns", metavar="NAME", help="a DNS name the server answers to; repeatable"),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option("--ip", metavar="ADDR", help="an IP address the server answers on; repeatable"),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="file name stem (default: controller, agent-<AZ>, witness or api)")
    ] = None,
    days: Annotated[int, typer.Option(help="validity (capped at the CA's)")] = ca.LEAF_DAYS,
    directory: DirOption = None,
    force: ForceOption = False,
) -> None:
    """Issue the certificate and key of one component from the CA.

    Exactly one of --agent AZ, --controller, --witness, --api. Agents, the
    witness and the API serve connections, so they need at least one --dns or
    --ip that clients use to reach them.
    """
    chosen = [flag for flag, on in (("--agent", agent is not None), ("--controller", controller),
                                     ("--witness", witness), ("--api", api)) if on]  # fmt: skip
    if len(chosen) != 1:
        err.print(
            "[red]error:[/red] name exactly one component: --agent AZ, --controller, --witness or --api"
            + (f" (got {' '.join(chosen)})" if chosen else "")
        )
        raise typer.Exit(2)
    settings = settings_or_exit()
    pki_dir = directory if directory is not None else settings.pki_dir()
    try:
        if agent is not None:
            check_az(agent)
            if agent not in settings.azs:
                raise PkiError(
                    f"unknown AZ {agent!r}; the configured AZs (OPENEVS_AZS): {', '.join(settings.azs)}"
                )
            identity = Identity(CertRole.AGENT, agent)
        else:
            role = CertRole.CONTROLLER if controller else CertRole.WITNESS if witness else CertRole.API
            identity = Identity(role)
        issued = ca.issue(
            pki_dir, identity, dns_names=dns or (), ip_addresses=ip or (), days=days, name=name, force=force
        )
    except SecurityError as exc:
        raise _fail(exc) from exc
    cert = issued.certificate
    out.print(
        f"issued {identity} (serial {cert.serial_number:x}), valid until {_until(cert.not_valid_after_utc)}",
        highlight=False,
    )
    out.print(
        f"  certificate {issued.files.cert}\n  key         {issued.files.key}  (mode 0600)", highlight=False
    )
    out.print(f"  CA bundle   {issued.files.ca}", highlight=False)


@app.command("show")
def show(directory: DirOption = None) -> None:
    """List the CAs of the bundle and every certificate in the directory, with expiry dates."""
    pki_dir = _dir(directory)
    try:
        infos = ca.list_certificates(pki_dir)
    except SecurityError as exc:
        raise _fail(exc) from exc
    table = Table("file", "holder", "valid until", "issued by", "alt names", "serial")
    for info in infos:
        cert = info.certificate
        if info.is_ca:
            common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            holder = str(common[0].value) if common else cert.subject.rfc4514_string()
            issuer = "self (issuing)" if info is infos[0] else "self (old)"
        else:
            holder = str(info.identity) if info.identity else cert.subject.rfc4514_string()
            issuer = info.issuer
        table.add_row(
            info.path.name, holder, _until(cert.not_valid_after_utc), issuer, ", ".join(info.alt_names),
            f"{cert.serial_number:x}",
        )  # fmt: skip
    Console().print(table)  # sized when run: COLUMNS, or the terminal's width


@app.command("rotate-ca")
def rotate_ca(
    directory: DirOption = None,
    days: Annotated[int, typer.Option(help="validity of the new CA certificate")] = ca.CA_DAYS,
) -> None:
    """Start a CA rotation: a new CA issues from now on; ca.pem trusts the new and the old ones.

    Then distribute ca.pem, reissue every certificate, restart one component at
    a time, and finish with `pki drop-old-ca` (docs/security.md).
    """
    pki_dir = _dir(directory)
    try:
        cert = ca.rotate_ca(pki_dir, days=days)
    except SecurityError as exc:
        raise _fail(exc) from exc
    out.print(
        f"new issuing CA {cert.subject.rfc4514_string()}; {pki_dir / ca.CA_CERT} now trusts old and new"
    )


@app.command("drop-old-ca")
def drop_old_ca(
    directory: DirOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="drop even while certificates here were issued by an old CA")
    ] = False,
) -> None:
    """Finish a CA rotation: ca.pem keeps only the issuing CA (distribute it again afterwards)."""
    pki_dir = _dir(directory)
    try:
        dropped = ca.drop_old_cas(pki_dir, force=force)
    except SecurityError as exc:
        raise _fail(exc) from exc
    if not dropped:
        out.print("the bundle holds only the issuing CA; nothing to drop")
    for cert in dropped:
        out.print(f"dropped {cert.subject.rfc4514_string()}")
