"""`openevs admin`: projects, users and roles, straight on the database; the PKI (cli/pki.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from openevs.cli import pki, sealing_keys
from openevs.cli.server_side import prepare, settings_or_exit
from openevs.db.models import Project, RoleAssignment, User
from openevs.domain.errors import OpenEvsError
from openevs.services import identity

app = typer.Typer(
    help="Manage projects, users and roles, and the deployment's certificates (run on the controller host).",
    no_args_is_help=True,
)
project_app = typer.Typer(help="Projects.", no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(user_app, name="user")
app.add_typer(pki.app, name="pki")
app.add_typer(sealing_keys.app, name="secrets")
out = Console()
err = Console(stderr=True)


def _db() -> Any:
    db, _, _ = prepare(settings_or_exit())
    return db


@project_app.command("create")
def project_create(
    name: str,
    description: Annotated[str, typer.Option(help="free text")] = "",
    quota_volumes: Annotated[
        int | None, typer.Option(help="max disks (default: OPENEVS_QUOTA_VOLUMES)")
    ] = None,
    quota_gigabytes: Annotated[
        int | None, typer.Option(help="max GB (default: OPENEVS_QUOTA_GIGABYTES)")
    ] = None,
) -> None:
    """Create a project."""
    db = _db()
    try:
        with db.session() as session:
            project = identity.create_project(session, name, description)
            project.quota_volumes = quota_volumes
            project.quota_gigabytes = quota_gigabytes
            out.print(f"created project {project.name} with id {project.id}")
    except OpenEvsError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc


@project_app.command("list")
def project_list() -> None:
    """List projects."""
    db = _db()
    table = Table("id", "name", "quota volumes", "quota GB", "description")
    with db.session() as session:
        for p in session.scalars(select(Project).order_by(Project.name)):
            table.add_row(
                p.id,
                p.name,
                str(p.quota_volumes or "default"),
                str(p.quota_gigabytes or "default"),
                p.description,
            )
    out.print(table)


@user_app.command("create")
def user_create(
    name: str,
    password: Annotated[str, typer.Option(help="at least 8 characters")],
    project: Annotated[str, typer.Option(help="name of the project the user gets a role on")],
    role: Annotated[str, typer.Option(help="admin or member")] = "member",
) -> None:
    """Create a user with a role on a project."""
    db = _db()
    try:
        with db.session() as session:
            user = identity.create_user(session, name, password, project, role)
            out.print(f"created user {user.name} with id {user.id} ({role} of {project})")
    except OpenEvsError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc


@user_app.command("list")
def user_list() -> None:
    """List users with their roles."""
    db = _db()
    table = Table("id", "name", "roles")
    with db.session() as session:
        projects = {p.id: p.name for p in session.scalars(select(Project))}
        for u in session.scalars(select(User).order_by(User.name)):
            roles = session.scalars(select(RoleAssignment).where(RoleAssignment.user_id == u.id))
            table.add_row(u.id, u.name, ", ".join(f"{r.role}@{projects.get(r.project_id)}" for r in roles))
    out.print(table)


@user_app.command("grant")
def user_grant(
    name: str,
    project: Annotated[str, typer.Option(help="project name")],
    role: Annotated[str, typer.Option(help="admin or member")] = "member",
) -> None:
    """Give an existing user a role on a project."""
    db = _db()
    try:
        with db.session() as session:
            identity.assign_role(session, name, project, role)
        out.print(f"{name} is now {role} of {project}")
    except OpenEvsError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
