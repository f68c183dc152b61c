"""Who arbitrates a replication pair or group, and when it may fail over by itself.

Pure rules (DESIGN 3, docs/decisions.md "Arbitration"): no settings object,
database or socket; the reconciler and the services pass in what they read.

Rules this module keeps:

- the witness of a unit is, in this order: the standalone witness
  (OPENEVS_WITNESS), else the agent of OPENEVS_WITNESS_AZ, else the first
  configured AZ that holds neither disk of the unit; an AZ that holds one of
  the disks is never its witness (it would fall with that side);
- with no such AZ (two AZs configured) there is no witness: HyperMetro's
  *static priority* mode, the primary always goes on alone;
- a witness at a loopback address is offered only to agents on the
  controller's host (embedded ones, or a loopback agent URL): an agent
  elsewhere could never reach it, and would suspend at the first link cut
  for want of a witness that was never there;
- a unit is a pair outside any group (`pair:<id>`) or a whole consistency
  group (`group:<id>`, one grant for every member), at the unit's epoch;
- automatic failover needs every condition at once (primary unreachable from
  the controller, the DR side's link down, the witness willing) for the
  whole delay; any break restarts the count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from openevs.domain.addresses import is_loopback


@dataclass(frozen=True, slots=True)
class WitnessChoice:
    host: str
    port: int
    name: str  # for messages: the AZ whose agent serves it, or "witness"


STANDALONE_NAME = "witness"


def arbiter_key(pair_id: str, group_id: str | None) -> str:
    """The witness's unit of a pair: its group when it has one, else the pair."""
    return f"group:{group_id}" if group_id else f"pair:{pair_id}"


def witness_az(azs: Sequence[str], primary_az: str, dr_az: str, preferred_az: str = "") -> str | None:
    """The AZ whose agent arbitrates a pair in primary_az/dr_az (None: static priority)."""
    sides = {primary_az, dr_az}
    if preferred_az and preferred_az in azs and preferred_az not in sides:
        return preferred_az
    return next((az for az in azs if az not in sides), None)


def choose_witness(
    azs: Sequence[str],
    primary_az: str,
    dr_az: str,
    *,
    standalone: tuple[str, int] | None = None,
    preferred_az: str = "",
    agent_witnesses: Mapping[str, tuple[str, int]] | None = None,
    remote_sides: bool = False,
) -> WitnessChoice | None:
    """The witness of a pair or group (None: static priority, or the witness AZ's
    agent has not told its witness address yet). `remote_sides`: an agent of the
    pair runs on another host than the controller."""
    if standalone is not None:
        choice: WitnessChoice | None = WitnessChoice(standalone[0], standalone[1], STANDALONE_NAME)
    else:
        az = witness_az(azs, primary_az, dr_az, preferred_az)
        where = (agent_witnesses or {}).get(az) if az is not None else None
        choice = WitnessChoice(where[0], where[1], str(az)) if where is not None and where[1] else None
    if choice is not None and remote_sides and is_loopback(choice.host):
        return None
    return choice


@dataclass(frozen=True, slots=True)
class AutoFailoverReading:
    """What the controller sees of a group at one instant."""

    primary_reachable: bool  # the primary AZ's agent answers the controller
    dr_link_down: bool  # the DR agent reports no link from the primary, for every member
    witness_reachable: bool


def auto_failover_due(
    reading: AutoFailoverReading, since_s: float | None, now_s: float, after_s: float
) -> tuple[bool, float | None]:
    """(fail over now?, since when the conditions hold) given when they began (None: not)."""
    holds = not reading.primary_reachable and reading.dr_link_down and reading.witness_reachable
    if not holds:
        return False, None
    started = now_s if since_s is None else since_s
    return now_s - started >= after_s, started


VIEW_KEYS = ("witness", "witness_reachable", "suspended", "lease", "outdated")


def arbitration_view(readings: Sequence[Mapping[str, object] | None]) -> dict[str, object] | None:
    """The `arbitration` extension object of a pair (one reading) or a group (its
    members'): None under static priority or before the primary reported; a group
    is suspended, leased or outdated if any member is, reachable if all are."""
    known = [r for r in readings if r]
    if not known:
        return None
    return {
        "witness": str(known[0].get("witness", "")),
        "witness_reachable": all(bool(r.get("witness_reachable")) for r in known),
        "suspended": any(bool(r.get("suspended")) for r in known),
        "lease": any(bool(r.get("lease")) for r in known),
        "outdated": any(bool(r.get("outdated")) for r in known),
    }
