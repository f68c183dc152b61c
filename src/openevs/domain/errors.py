"""The error tree. Domain errors carry no HTTP codes; `api/errors.py` translates.

`code` is the documented EVS code (``EVS.1020``) or replication
``failure_detail`` value (``37100041``) where the reference defines one.
Wire protocol errors hang from the same root but live with their protocol
(`agent/nbd/errors.py`).
"""

from __future__ import annotations


class OpenEvsError(Exception):
    """Root of every error openevs raises on purpose."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class DomainError(OpenEvsError):
    """A request that the rules refuse."""


class InvalidInput(DomainError):
    """The request is malformed or names impossible values."""


class NotFound(DomainError):
    """The resource does not exist (or belongs to another project)."""


class InvalidState(DomainError):
    """The resource exists but its status does not allow the action."""


class Conflict(DomainError):
    """Something the request claims is already claimed by another resource."""


class ChangedConcurrently(Conflict):
    """The resource moved on while the request was deciding (a lost compare-and-set)."""


class QuotaExceeded(DomainError):
    """A per-project quota would be exceeded."""


class Unauthorized(DomainError):
    """No valid credentials or token."""


class Forbidden(DomainError):
    """Valid credentials without the right to do this."""


class ServiceUnavailable(OpenEvsError):
    """A component the request needs (an AZ's agent) cannot be reached now."""

