"""The `openevs` command: server side (serve, api, worker, agent, db, admin)
and client side (volume, server, replication, ... in cli/client_*.py).

A client command loads only the client modules: the server side pulls in
SQLAlchemy, Alembic and uvicorn, which would cost every `openevs volume ...`
a second of start-up.
"""

from __future__ import annotations

import sys

import typer

HELP = (
    "openevs: an Elastic Volume Service with cross-AZ replication.\n\n"
    "Run `openevs serve` to start everything on one machine; the other commands "
    "are for split deployments, administration and daily use."
)


def build_app(server_side_too: bool = True) -> typer.Typer:
    from openevs.cli import client

    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)
    if server_side_too:
        from openevs.cli import admin, server_side

        server_side.register(app)
        app.add_typer(admin.app, name="admin")
    client.register(app)
    return app


def main() -> None:
    from openevs.cli.client import FAMILIES

    argv = sys.argv[1:]
    client_only = bool(argv) and argv[0] in {name for name, _ in FAMILIES}
    build_app(server_side_too=not client_only)()


if __name__ == "__main__":
    main()
