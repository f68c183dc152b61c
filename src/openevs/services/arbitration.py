"""The controller's side of arbitration: which witness a unit has, and the witness's
grant a failover needs before it may promote the DR side (DESIGN 3).

A failover asks twice: when the request is accepted (`check_failover`, outside
any database transaction, so an unreachable witness answers the operator at
once) and in the reconciler's step right before the DR disks are promoted
(`secure_failover`), after the old primaries that answer were demoted (which
gives their lease back: told and acknowledged). The same epoch and side again
is a renewal at the witness, so asking twice is idempotent.

Rules this module keeps:

- a live lease of the old primary refuses the failover (409, naming the lease
  and when it runs out) unless the old primary's agent answers the controller
  (it is fenced first, which releases the lease) or the operator forces it;
- an unreachable witness refuses it (400, naming the witness) unless forced;
  a forced failover that could not reach the witness promotes the DR side
  without an arbiter (static priority) for that epoch, and says so in the log;
- a refusal because the witness holds a higher epoch is never overridden.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select

from openevs.contract import AgentUnavailable, WitnessAddress
from openevs.db.models import Agent
from openevs.domain.addresses import is_loopback
from openevs.domain.arbitration import choose_witness
from openevs.domain.errors import Conflict, InvalidState
from openevs.runtime import Runtime
from openevs.security.pki import TlsFiles
from openevs.witness.arbiter import Refusal
from openevs.witness.client import WitnessClient, WitnessFailed, WitnessUnreachable, units
from openevs.witness.protocol import Grant, RemoteProtocolError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 3.0
FORCE_ACTION = "openevs-force-failover-replication-consistency-group"


class WitnessNotGranted(AgentUnavailable):
    """A step waits for the witness the way it waits for an agent: it is retried,
    and the transition fails (FD_LINK) once it waited `agent_timeout_s`."""


def _remote(agent_url: str) -> bool:
    """The agent at this URL runs on another host ("" or unix:: an embedded, local one)."""
    host = "" if agent_url.startswith("unix:") else urlsplit(agent_url).hostname or ""
    return bool(host) and not is_loopback(host)


def witness_of(runtime: Runtime, primary_az: str, dr_az: str) -> WitnessAddress | None:
    """The witness of a pair or group with disks in these AZs (domain/arbitration.py)."""
    settings = runtime.settings
    with runtime.db.session() as session:
        agents = {
            row.availability_zone: (row.nbd_host, row.witness_port)
            for row in session.scalars(select(Agent))
            if row.witness_port
        }
    remote = any(_remote(settings.agent_urls.get(az, "")) for az in (primary_az, dr_az))
    choice = choose_witness(
        settings.azs, primary_az, dr_az, standalone=settings.witness_host_port,
        preferred_az=settings.witness_az, agent_witnesses=agents, remote_sides=remote,
    )  # fmt: skip
    if choice is None:
        return None
    return WitnessAddress(host=choice.host, port=choice.port, name=choice.name)


def client_of(witness: WitnessAddress, side: str, tls: TlsFiles | None) -> WitnessClient:
    """The controller's client of a witness, speaking for `side`; with the controller's
    certificate (`Settings.control_tls_files()`) mutual TLS, as the witness demands then."""
    return WitnessClient(witness.host, witness.port, side, timeout_s=REQUEST_TIMEOUT_S, tls=tls)


def _acquire(
    witness: WitnessAddress, key: str, epoch: int, side: str, force: bool, tls: TlsFiles | None
) -> Grant:
    client = client_of(witness, side, tls)
    [grant] = client.acquire(units([(key, epoch)]), force=force)
    return grant


def _lease_words(grant: Grant) -> str:
    until = datetime.now(UTC) + timedelta(seconds=grant.lease_left_s)
    return (
        f"{grant.holder} holds the witness's lease on it at epoch {grant.epoch}; the lease runs out in"
        f" {grant.lease_left_s:.1f} s ({until:%H:%M:%S} UTC) unless its holder renews it"
    )


def check_failover(
    witness: WitnessAddress, key: str, epoch: int, side: str, *, force: bool, primary_answers: bool,
    tls: TlsFiles | None = None,
) -> None:  # fmt: skip
    """At request time: may the DR side (`side`) take unit `key` at `epoch`? Raises
    Conflict (a live lease, or the witness is past this epoch) or InvalidState (the
    witness cannot be reached); returns when the failover may be accepted."""
    try:
        grant = _acquire(witness, key, epoch, side, force, tls)
    except (WitnessUnreachable, WitnessFailed, RemoteProtocolError) as exc:
        if force:
            log.warning("forced failover of %s: witness %s not reached (%s)", key, witness.label, exc)
            return
        raise InvalidState(
            f"failover refused: the witness {witness.label} of {key} cannot be reached ({exc}); without"
            f" its grant the DR side may not be promoted. Bring the witness back, or override with"
            f' {{"{FORCE_ACTION}": null}} (openevs group failover --force)'
        ) from exc
    if grant.granted:
        return
    if grant.refusal == Refusal.LEASE_LIVE:
        if primary_answers:
            return  # the reconciler fences the old primary first, which gives the lease back
        raise Conflict(
            f"failover refused: {key} is not granted to {side}: {_lease_words(grant)}; the old primary"
            " may still be acknowledging writes. Retry once the lease ran out, or override with"
            f' {{"{FORCE_ACTION}": null}} (openevs group failover --force)'
        )
    raise Conflict(
        f"failover refused: the witness {witness.label} holds {key} at epoch {grant.epoch} for"
        f" {grant.holder} ({grant.refusal}); the request's epoch {epoch} is not above it. Retry"
    )


def secure_failover(
    witness: WitnessAddress, key: str, epoch: int, side: str, *, force: bool, tls: TlsFiles | None = None
) -> bool:
    """In the failover step, before promoting: the witness's grant to `side`. True:
    granted (promote with the arbiter); False: forced without a reachable witness
    (promote without one). Raises WitnessNotGranted to wait, Conflict for good."""
    try:
        grant = _acquire(witness, key, epoch, side, force, tls)
    except (WitnessUnreachable, WitnessFailed, RemoteProtocolError) as exc:
        if force:
            log.warning(
                "forced failover of %s: witness %s unreachable (%s); the DR side is promoted under"
                " static priority for epoch %d", key, witness.label, exc, epoch,
            )  # fmt: skip
            return False
        raise WitnessNotGranted(f"witness {witness.label} unreachable: {exc}") from exc
    if grant.granted:
        return True
    if grant.refusal == Refusal.LEASE_LIVE:
        raise WitnessNotGranted(f"failover of {key} waits: {_lease_words(grant)}")
    raise Conflict(
        f"the witness {witness.label} holds {key} at epoch {grant.epoch} for {grant.holder}"
        f" ({grant.refusal}); a failover at epoch {epoch} cannot be granted"
    )
