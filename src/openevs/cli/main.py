"""The `openevs` command: server side (serve, api, worker, agent, db, admin)
and client side (volume, server, ... in cli/client_*.py)."""

from __future__ import annotations

import typer

from openevs.cli import admin, server_side

app = typer.Typer(
    help="openevs: an Elastic Volume Service with cross-AZ replication.\n\n"
    "Run `openevs serve` to start everything on one machine; the other commands "
    "are for split deployments, administration and daily use.",
    no_args_is_help=True,
    add_completion=False,
)
server_side.register(app)
app.add_typer(admin.app, name="admin")

try:  # client commands land in their own modules
    from openevs.cli import client

    client.register(app)
except ImportError:  # pragma: no cover - during development only
    pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
