"""The batched measurement of every pair: one call per agent, costing what changed.

Each pass asks every agent for the states that changed since the version it
last read (`GET /replication?since=V`, agent/mirror/changes.py) and keeps
the latest state of every volume in memory. It then looks only at the pair
rows that may need a write: pairs whose production disk's state changed,
and pairs whose row changed lately (one that just became available needs
its state recorded). `_record` writes a row only when a measured value
differs. So an idle system costs a few empty calls and two indexed queries
per pass, however many pairs exist.

Safety nets: an agent whose boot id changed, that was unreachable, or that
answered in full is read in full; and every FULL_EVERY_S everything is read
again. An unreachable agent's pairs get fault "2" in one UPDATE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, update

from openevs.contract import AgentRequestFailed, AgentUnavailable, ReplicationState, ReplicationStates
from openevs.db.models import ReplicationPair, Volume, utcnow
from openevs.domain import replication as rep
from openevs.domain.replication import PairStatus, Role
from openevs.reconciler.replications import record
from openevs.runtime import Runtime

log = logging.getLogger(__name__)

FULL_EVERY_S = 60.0
RECENT_MARGIN = timedelta(seconds=5)  # clocks of API processes and passes that overlap
IN_CHUNK = 500


@dataclass
class _Cursor:
    boot_id: str = ""
    version: int | None = None  # None: read everything next time


class Measurements:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.states: dict[str, ReplicationState] = {}  # volume -> its agent's last report
        self._az_of: dict[str, str] = {}
        self._copying: set[str] = set()
        self._cursors: dict[str, _Cursor] = {}
        self._last_full = float("-inf")
        self._recent_since: datetime | None = None  # None: look at every available pair
        self._full_pass = True
        self._looked_since: datetime | None = None  # what this pass's "lately" meant

    def changed_since(self) -> datetime | None:
        """Rows whose updated_at is before this need no look after this pass (None: all do)."""
        return None if self._full_pass else self._looked_since

    def observe(self) -> bool:
        """Measure; True while some primary copies (the loop then polls fast)."""
        started = utcnow()
        self._full_pass = time.monotonic() - self._last_full >= FULL_EVERY_S
        if self._full_pass:
            self._last_full = time.monotonic()
            for cursor in self._cursors.values():
                cursor.version = None
        changed: set[str] = set()
        down: list[str] = []
        for az in self.runtime.settings.azs:
            got = self._read(az)
            if got is None:
                down.append(az)
            elif got is not False:
                changed |= self._take(az, got)
        pairs = self._rows(changed)
        self._looked_since = self._recent_since
        self._recent_since = started - RECENT_MARGIN
        for pair in pairs:
            state = self.states.get(pair.production_volume_id)
            if state is None or self._az_of.get(pair.production_volume_id) in down:
                continue  # not known there yet (being configured), or its agent is down
            try:
                record(self.runtime, pair, state)
            except Exception:
                log.exception("pair %s: observe failed", pair.id)
        for az in down:
            self._unreachable(az)
        return bool(self._copying)

    def _read(self, az: str) -> ReplicationStates | Literal[False] | None:
        """What changed on `az`'s agent (None: unreachable; False: it failed the call)."""
        cursor = self._cursors.setdefault(az, _Cursor())
        agent = self.runtime.agent(az)
        try:
            got = agent.replication_changes(cursor.version)
            if cursor.version is not None and (got.boot_id != cursor.boot_id or not got.changed_only):
                got = agent.replication_changes(None)  # restarted meanwhile: everything
        except AgentUnavailable:
            cursor.version = None
            return None
        except AgentRequestFailed as exc:
            log.warning("agent of %s: cannot read replication states: %s", az, exc)
            cursor.version = None
            return False
        cursor.version, cursor.boot_id = got.version, got.boot_id
        return got

    def _take(self, az: str, got: ReplicationStates) -> set[str]:
        ids = {s.volume_id for s in got.volumes}
        if not got.changed_only:  # a full answer: what it no longer reports is gone
            for vid in [v for v, a in self._az_of.items() if a == az and v not in ids]:
                self._forget(vid)
        for state in got.volumes:
            vid = state.volume_id
            self.states[vid] = state
            self._az_of[vid] = az
            if state.role is Role.PRIMARY and state.replication_status is rep.ReplicationStatus.COPYING:
                self._copying.add(vid)
            else:
                self._copying.discard(vid)
        return ids

    def _forget(self, vid: str) -> None:
        self.states.pop(vid, None)
        self._az_of.pop(vid, None)
        self._copying.discard(vid)

    def _rows(self, changed: set[str]) -> list[ReplicationPair]:
        """Available pairs whose production state changed, or whose row changed lately."""
        available = ReplicationPair.status == PairStatus.AVAILABLE
        found: dict[str, ReplicationPair] = {}
        with self.runtime.db.session() as session:
            if self._recent_since is None:
                recent: Iterable[ReplicationPair] = session.scalars(select(ReplicationPair).where(available))
            else:
                recent = session.scalars(
                    select(ReplicationPair).where(available, ReplicationPair.updated_at >= self._recent_since)
                )
            found.update((p.id, p) for p in recent)
            if self._recent_since is not None:
                ids = sorted(changed)
                for i in range(0, len(ids), IN_CHUNK):
                    chunk = ids[i : i + IN_CHUNK]
                    production = ReplicationPair.production_volume_id.in_(chunk)
                    rows = session.scalars(select(ReplicationPair).where(available, production))
                    found.update((p.id, p) for p in rows)
        return list(found.values())

    def _unreachable(self, az: str) -> None:
        """Fault "2" on the available pairs whose production disk is on `az` (one UPDATE)."""
        fault = ReplicationPair.fault_level
        with self.runtime.db.session() as session:
            session.execute(
                update(ReplicationPair)
                .where(
                    ReplicationPair.status == PairStatus.AVAILABLE,
                    or_(fault.is_(None), fault != rep.FAULT_PRODUCTION),
                    ReplicationPair.production_volume_id.in_(
                        select(Volume.id).where(Volume.availability_zone == az)
                    ),
                )
                .values(fault_level=rep.FAULT_PRODUCTION, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
