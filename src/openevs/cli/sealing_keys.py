"""`openevs admin secrets`: the sealing key of the controller's database (security/sealing.py).

A rotation without downtime (docs/security.md, "The sealing key"):
`new-key` (a second key that opens but does not seal yet) -> copy the file to
every controller host -> `rotate` (the new key seals; every row resealed) ->
copy again -> `drop-old` (rows resealed once more, older keys removed) ->
copy again. Controller processes re-read the file when it changes.
"""

from __future__ import annotations

import typer
from rich.console import Console

from openevs.cli.server_side import prepare, settings_or_exit
from openevs.db.session import Database
from openevs.security.sealing import Sealer, SealError, key_id, new_key, write_keys
from openevs.services.sealing import kids_in_use, recorded_kid, reseal_all

app = typer.Typer(
    help="The key that seals export names and link secrets in the database.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)


def _open() -> tuple[Sealer, Database]:
    db, _, sealer = prepare(settings_or_exit())
    if sealer.path is None:  # pragma: no cover - prepare always reads a file
        raise typer.Exit(2)
    return sealer, db


@app.command("show")
def show() -> None:
    """The keys of the key file, the one the database names, and the keys its values use."""
    sealer, db = _open()
    with db.session() as session:
        recorded = recorded_kid(session)
    used = kids_in_use(db)
    out.print(f"key file: {sealer.path}")
    for i, kid in enumerate(sealer.kids):
        role = "seals and opens" if i == 0 else "opens"
        marks = [m for m, on in (("database's key", kid == recorded), ("in use", kid in used)) if on]
        out.print(f"  {kid}  {role}  {' '.join(marks)}")
    unknown = used - set(sealer.kids) - {""}
    if unknown:
        out.print(f"[red]values sealed with keys this file lacks:[/red] {', '.join(sorted(unknown))}")


@app.command("new-key")
def new_key_command() -> None:
    """Add a key that opens but does not seal yet (step 1 of a rotation)."""
    sealer, _ = _open()
    keys = sealer.keys + [new_key()]
    assert sealer.path is not None
    write_keys(sealer.path, keys)
    out.print(f"added key {key_id(keys[-1])}: copy {sealer.path} to every controller host, then `rotate`")


@app.command("rotate")
def rotate() -> None:
    """Make the newest key the one that seals, and reseal every value with it (step 2)."""
    sealer, db = _open()
    keys = sealer.keys
    if len(keys) < 2:
        err.print("[red]error:[/red] the key file has one key: `openevs admin secrets new-key` first")
        raise typer.Exit(1)
    assert sealer.path is not None
    write_keys(sealer.path, [keys[-1], *keys[:-1]])
    changed = reseal_all(db, Sealer.from_file(sealer.path))
    out.print(
        f"key {key_id(keys[-1])} seals now; {changed} values resealed. Copy the file again, then `drop-old`"
    )


@app.command("drop-old")
def drop_old() -> None:
    """Reseal what is left and keep only the key that seals (step 3)."""
    sealer, db = _open()
    changed = reseal_all(db, sealer)
    left = kids_in_use(db) - {sealer.current_kid, ""}
    if left:
        err.print(f"[red]error:[/red] values still sealed with {', '.join(sorted(left))}; run it again")
        raise typer.Exit(1)
    assert sealer.path is not None
    try:
        write_keys(sealer.path, [sealer.keys[0]])
    except (SealError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    out.print(f"{changed} values resealed; only key {sealer.current_kid} is left. Copy the file again")
