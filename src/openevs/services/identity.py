"""Identity use cases: projects, users, role assignments, tokens.

Passwords are argon2 hashes; tokens are random strings of which only the
sha256 is stored, so a copy of the database yields no usable token.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openevs.db.models import Project, RoleAssignment, Token, User, utcnow
from openevs.domain.errors import Conflict, InvalidInput, NotFound, Unauthorized

DEFAULT_DOMAIN_ID = "default"
DEFAULT_DOMAIN_NAME = "Default"
ROLES = ("admin", "member")

_hasher = PasswordHasher()


@dataclass(frozen=True)
class TokenInfo:
    token_hash: str
    user_id: str
    user_name: str
    project_id: str
    project_name: str
    role: str
    issued_at: datetime
    expires_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(name: str, what: str) -> None:
    if not name or len(name.encode()) > 255 or name != name.strip():
        raise InvalidInput(f"{what} name must be 1-255 bytes without surrounding spaces")


def create_project(session: Session, name: str, description: str = "") -> Project:
    _check_name(name, "project")
    project = Project(id=uuid.uuid4().hex, name=name, description=description)
    session.add(project)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a project named {name!r} already exists") from exc
    return project


def create_user(
    session: Session, name: str, password: str, project_name: str, role: str = "member"
) -> User:
    _check_name(name, "user")
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if len(password) < 8:
        raise InvalidInput("password must have at least 8 characters")
    project = session.scalar(select(Project).where(Project.name == project_name))
    if project is None:
        raise NotFound(f"no project named {project_name!r}; create it first")
    user = User(id=uuid.uuid4().hex, name=name, password_hash=_hasher.hash(password))
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a user named {name!r} already exists") from exc
    session.add(RoleAssignment(user_id=user.id, project_id=project.id, role=role))
    session.flush()
    return user


def assign_role(session: Session, user_name: str, project_name: str, role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    user = session.scalar(select(User).where(User.name == user_name))
    project = session.scalar(select(Project).where(Project.name == project_name))
    if user is None or project is None:
        raise NotFound("no such user or project")
    existing = session.get(RoleAssignment, (user.id, project.id))
    if existing:
        existing.role = role
    else:
        session.add(RoleAssignment(user_id=user.id, project_id=project.id, role=role))
    session.flush()


def bootstrap(session: Session, admin_password: str) -> str | None:
    """Create the admin project and user on first start.

    Returns the password when this call created the admin (generated when
    `admin_password` is empty), None when the admin already existed.
    """
    if session.scalar(select(User).where(User.name == "admin")) is not None:
        return None
    password = admin_password or secrets.token_urlsafe(18)
    if session.scalar(select(Project).where(Project.name == "admin")) is None:
        create_project(session, "admin", "bootstrap project")
    create_user(session, "admin", password, "admin", role="admin")
    return password


def _find_user(session: Session, spec: dict[str, object]) -> User | None:
    if spec.get("id"):
        return session.get(User, str(spec["id"]))
    name = spec.get("name")
    if not isinstance(name, str):
        raise InvalidInput("auth.identity.password.user needs an id or a name")
    domain = spec.get("domain") or {}
    if not isinstance(domain, dict):
        raise InvalidInput("user.domain must be an object with an id or a name")
    domain_id = domain.get("id")
    domain_name = domain.get("name")
    if domain_id not in (None, DEFAULT_DOMAIN_ID) or domain_name not in (None, DEFAULT_DOMAIN_NAME):
        return None
    return session.scalar(select(User).where(User.name == name))


def _find_project(session: Session, spec: dict[str, object]) -> Project | None:
    if spec.get("id"):
        return session.get(Project, str(spec["id"]))
    name = spec.get("name")
    if not isinstance(name, str):
        raise InvalidInput("scope.project needs an id, or a name with a domain")
    domain = spec.get("domain")
    if not isinstance(domain, dict) or not (domain.get("id") or domain.get("name")):
        raise InvalidInput("scope.project by name needs domain.id or domain.name")
    if domain.get("id") not in (None, DEFAULT_DOMAIN_ID) or domain.get("name") not in (
        None,
        DEFAULT_DOMAIN_NAME,
    ):
        return None
    return session.scalar(select(Project).where(Project.name == name))


def authenticate(
    session: Session,
    user_spec: dict[str, object],
    password: str,
    project_spec: dict[str, object] | None,
    ttl_s: int,
) -> tuple[str, TokenInfo]:
    """Check a password and issue a project-scoped token: (token, info)."""
    user = _find_user(session, user_spec)
    valid = False
    if user is not None:
        try:
            valid = _hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            valid = False
    if user is None or not valid:
        raise Unauthorized("the request you have made requires authentication: wrong user or password")
    if project_spec is None:
        assignment = session.scalar(
            select(RoleAssignment).where(RoleAssignment.user_id == user.id).limit(1)
        )
        if assignment is None:
            raise Unauthorized("user has no project; ask for a role on a project")
        project = session.get(Project, assignment.project_id)
    else:
        project = _find_project(session, project_spec)
    assignment = (
        session.get(RoleAssignment, (user.id, project.id)) if project is not None else None
    )
    if project is None or assignment is None:
        raise Unauthorized("user has no role on the requested project")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    row = Token(
        token_hash=hash_token(token),
        user_id=user.id,
        project_id=project.id,
        role=assignment.role,
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    session.add(row)
    session.flush()
    return token, _info(row, user, project)


def _info(row: Token, user: User, project: Project) -> TokenInfo:
    return TokenInfo(
        token_hash=row.token_hash,
        user_id=user.id,
        user_name=user.name,
        project_id=project.id,
        project_name=project.name,
        role=row.role,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
    )


def validate_token(session: Session, token: str) -> TokenInfo:
    """The token's facts, or Unauthorized when unknown, expired or revoked."""
    if not token or len(token) > 512:
        raise Unauthorized("a valid X-Auth-Token header is required")
    row = session.get(Token, hash_token(token))
    if row is None or row.revoked or row.expires_at <= utcnow():
        raise Unauthorized("the token is invalid, expired or revoked; get a new one")
    user = session.get(User, row.user_id)
    project = session.get(Project, row.project_id)
    if user is None or project is None:
        raise Unauthorized("the token's user or project no longer exists")
    return _info(row, user, project)


def revoke_token(session: Session, token: str) -> None:
    result = session.execute(
        update(Token).where(Token.token_hash == hash_token(token)).values(revoked=True)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFound("no such token")


def purge_expired_tokens(session: Session) -> int:
    from sqlalchemy import delete

    result = session.execute(delete(Token).where(Token.expires_at <= utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
