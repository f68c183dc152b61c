"""Authentication and project scoping for every protected route.

A token is valid for exactly one project. A URL that names another project
is refused with 400 EVS.0001 whether or not that project exists, so nothing
of project B leaks to a token of project A.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from openevs.domain import codes
from openevs.domain.errors import InvalidInput, Unauthorized
from openevs.runtime import Runtime
from openevs.services import identity
from openevs.services.identity import TokenInfo


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def current_token(
    runtime: RuntimeDep,
    x_auth_token: Annotated[str | None, Header()] = None,
) -> TokenInfo:
    if not x_auth_token:
        raise Unauthorized("authentication required: send a token in X-Auth-Token", code=codes.AUTH_REQUIRED)
    with runtime.db.session() as session:
        try:
            return identity.validate_token(session, x_auth_token)
        except Unauthorized as exc:
            raise Unauthorized(exc.message, code=codes.AUTH_REQUIRED) from exc


TokenDep = Annotated[TokenInfo, Depends(current_token)]


def project_scope(project_id: str, token: TokenDep) -> TokenInfo:
    """The token, after checking that the URL's project is the token's project."""
    if project_id != token.project_id:
        raise InvalidInput(
            f"invalid tenant id: the URL names project {project_id[:64]!r}, "
            "but the token is scoped to another project",
            code=codes.INVALID_TENANT,
        )
    return token


ScopedDep = Annotated[TokenInfo, Depends(project_scope)]
