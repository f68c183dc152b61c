"""The controller's secrets at rest: which deployment key seals them, and resealing
every row with the newest key (a rotation, docs/security.md "The sealing key").

The database records the id of the key its secrets are sealed with
(`deployment_keys`, never the key). A controller process checks at start that
its key file holds that key, so an api or worker host started with another
host's key file missing (or a fresh one of its own) refuses to start instead
of sealing what the others cannot open.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openevs.contract_plans import FailoverPlan, SwitchoverPlan, dump_plan, load_plan
from openevs.db.models import Attachment, DeploymentKey, ReplicationGroup, ReplicationPair
from openevs.db.session import Database
from openevs.security.sealing import Sealer, SealError, kid_of

SEALING = "sealing"


def recorded_kid(session: Session) -> str | None:
    row = session.get(DeploymentKey, SEALING)
    return None if row is None else row.kid


def check_key(db: Database, sealer: Sealer) -> str:
    """Record this key file's first key if the database names none yet; SealError
    if the key the database names is not in the file. Returns the recorded id."""
    with db.session() as session:
        kid = recorded_kid(session)
    if kid is None:
        try:
            with db.session() as session:
                session.add(DeploymentKey(name=SEALING, kid=sealer.current_kid))
            kid = sealer.current_kid
        except IntegrityError:  # another controller recorded its key first
            with db.session() as session:
                kid = recorded_kid(session) or ""
    if kid not in sealer.kids:
        where = sealer.path or "memory"
        raise SealError(
            f"the database's secrets are sealed with key {kid}, which {where} does not hold "
            f"(it holds {', '.join(sealer.kids)}): copy the key file of the deployment to this host"
        )
    return kid


def reseal_all(db: Database, sealer: Sealer) -> int:
    """Seal every secret with the key file's first key and record it; returns how many
    values changed. Values sealed meanwhile by a host with the older file are caught by
    a second run (`drop_old_keys` does one)."""
    changed = 0
    with db.session() as session:
        for att in session.scalars(select(Attachment).where(Attachment.export_name.is_not(None))):
            assert att.export_name is not None
            new = sealer.reseal(att.export_name, "export")
            changed += new != att.export_name
            att.export_name = new
        for pair in session.scalars(select(ReplicationPair)):
            new = sealer.reseal(pair.link_export, "link")
            changed += new != pair.link_export
            pair.link_export = new
        for group in session.scalars(select(ReplicationGroup)):
            changed += _reseal_plan(group, sealer)
        row = session.get(DeploymentKey, SEALING)
        if row is None:
            session.add(DeploymentKey(name=SEALING, kid=sealer.current_kid))
        else:
            row.kid = sealer.current_kid
    return changed


def _reseal_plan(group: ReplicationGroup, sealer: Sealer) -> int:
    plan = load_plan(group.pending)
    if not isinstance(plan, FailoverPlan | SwitchoverPlan):
        return 0
    flips = {
        pid: f.replace(link_export=sealer.reseal(f.link_export, "link")) for pid, f in plan.pairs.items()
    }
    changed = sum(flips[pid].link_export != f.link_export for pid, f in plan.pairs.items())
    if changed:
        group.pending = dump_plan(plan.replace(pairs=flips))
    return changed


def kids_in_use(db: Database) -> set[str]:
    """The ids of the keys that sealed at least one value."""
    with db.session() as session:
        values = [v for v in session.scalars(select(Attachment.export_name)) if v]
        values += list(session.scalars(select(ReplicationPair.link_export)))
        for group in session.scalars(select(ReplicationGroup)):
            plan = load_plan(group.pending)
            if isinstance(plan, FailoverPlan | SwitchoverPlan):
                values += [f.link_export for f in plan.pairs.values()]
    return {kid_of(v) for v in values}
