"""The client side of `openevs`: one sub-command per resource family.

Each family lives in its own module (`client_volumes`, `client_servers`,
`client_replication`, `client_groups`) built on `client_format` (its columns
and fields; `-f`, `-c`, `--long`), `client_common` (error exits, `--wait`)
and `session` (credentials, token, HTTP).
"""

from __future__ import annotations

import typer

from openevs.cli import (
    client_drills,
    client_groups,
    client_replication,
    client_servers,
    client_snapshots,
    client_verify,
    client_volumes,
)  # fmt: skip

EXTENSIONS = (client_verify, client_drills)  # they add their commands to the families above

FAMILIES: list[tuple[str, typer.Typer]] = [
    ("volume", client_volumes.app),
    ("server", client_servers.app),
    ("replication", client_replication.app),
    ("group", client_groups.app),
    ("snapshot", client_snapshots.app),
]

CREDENTIALS_HELP = (
    "Credentials: OS_CLOUD / OS_CLIENT_CONFIG_FILE (a clouds.yaml, e.g. the one "
    "`openevs serve` writes to <data_dir>/clouds.yaml; cloud `openevs` by default), "
    "or OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME; otherwise ./clouds.yaml, "
    "~/.config/openstack/clouds.yaml and ./openevs-data/clouds.yaml are tried."
)


def register(app: typer.Typer) -> None:
    for name, sub in FAMILIES:
        help_text = (sub.info.help or "") + "\n\n" + CREDENTIALS_HELP
        app.add_typer(sub, name=name, help=help_text)
