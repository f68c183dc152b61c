"""NBD export grants for attachments (os-initialize_connection / terminate)
and the AZ availability the controller last observed.

An export name is an unguessable per-attachment secret: whoever holds it can
reach the disk, so it is only handed to the attachment's owner and revoked
when the attachment goes. The database holds it sealed with the deployment
key (security/sealing.py): the controller opens it to hand it out again and
to re-grant it after an agent restart.

When the agent's NBD port requires TLS (it reports its policy in its
health), the connection info has the TLS form: `uri` is `nbds://...`,
`tls` is true and `ca_certificate` holds the PEM bundle that issued the
agent's certificate (what the client verifies the server with: libnbd's
`tls-certificates=DIR` and qemu's `tls-creds-x509 dir=DIR` want it as
`DIR/ca-cert.pem`). A port with TLS optional keeps the plain form and says
`tls_available`.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from openevs.db.models import Agent, Attachment, ReplicationClaim, ReplicationPair, Volume
from openevs.domain.errors import InvalidInput, InvalidState, ServiceUnavailable
from openevs.runtime import Runtime
from openevs.services.agent_errors import call_agent
from openevs.services.replications import pair_of_volume
from openevs.services.unit_of_work import UnitOfWork
from openevs.services.volumes import get_volume

REGRANT_CONCURRENCY = 8  # grants in flight at once while re-granting a group's exports
IN_CHUNK = 500  # ids in one IN (...)


def agent_availability(runtime: Runtime) -> dict[str, bool]:
    with UnitOfWork(runtime) as uow:
        rows = uow.session.scalars(select(Agent))
        return {row.availability_zone: row.healthy for row in rows}


def _pick_attachment(atts: list[Attachment], connector: dict[str, Any]) -> Attachment:
    wanted = connector.get("server_id") or connector.get("instance_uuid") or connector.get("instance")
    if wanted:
        for att in atts:
            if att.server_id == wanted:
                return att
        raise InvalidState(f"the volume is not attached to server {str(wanted)[:64]}")
    if len(atts) == 1:
        return atts[0]
    raise InvalidInput("the volume has several attachments; put server_id in the connector")


def export_is_read_only(session: Session, volume_id: str) -> bool:
    """A DR disk (secondary role) of a replication pair is exported read-only."""
    pair = pair_of_volume(session, volume_id)
    return pair is not None and pair.dr_volume_id == volume_id


def initialize_connection(
    runtime: Runtime, project_id: str, volume_id: str, connector: dict[str, Any]
) -> dict[str, Any]:
    with UnitOfWork(runtime) as uow:
        session = uow.session
        volume = get_volume(session, project_id, volume_id)
        atts = list(session.scalars(select(Attachment).where(Attachment.volume_id == volume.id)))
        if not atts:
            raise InvalidState("the volume is not attached; attach it to a server first")
        att = _pick_attachment(atts, connector)
        # Every read first, the writes last: the row is written (and SQLite's write
        # lock taken) only at the commit, not held across the reads.
        read_only, az = export_is_read_only(session, volume.id), volume.availability_zone
        agent_row = session.get(Agent, az)
        if agent_row is None or not agent_row.nbd_port:
            raise ServiceUnavailable(f"the storage agent of {az} has not reported its NBD address yet")
        if att.export_name is None:
            export_name = "att-" + secrets.token_urlsafe(24)
            att.export_name = runtime.sealer.seal(export_name, EXPORT)
        else:
            export_name = open_export(runtime, att.export_name)
        if att.export_read_only != read_only:
            att.export_read_only = read_only
        # The name is committed before the agent knows it: a grant the agent holds
        # always has its row, and an agent restart re-grants it from the row.
        uow.after_commit(lambda: _grant(runtime, az, export_name, volume_id, read_only))
    host, port, tls_policy = agent_row.nbd_host, agent_row.nbd_port, agent_row.nbd_tls
    data: dict[str, Any] = {
        "host": host,
        "port": port,
        "export_name": export_name,
        "uri": f"nbd://{host}:{port}/{export_name}",
        "read_only": read_only,
        "volume_id": volume_id,
        "attachment_id": att.id,
    }
    if tls_policy == "required":
        data |= {"uri": f"nbds://{host}:{port}/{export_name}", "tls": True}
        ca = _ca_bundle(runtime)
        if ca is not None:
            data["ca_certificate"] = ca
    elif tls_policy == "optional":
        data["tls_available"] = True
    return {"driver_volume_type": "nbd", "data": data}


def _ca_bundle(runtime: Runtime) -> str | None:
    """The deployment CA bundle users verify agents with, if this controller has it."""
    settings = runtime.settings
    for path in (settings.pki_dir() / "ca.pem", settings.tls_ca):
        if path is not None and path.is_file():
            try:
                return path.read_text()
            except (OSError, UnicodeDecodeError):
                continue
    return None


def _grant(runtime: Runtime, az: str, export_name: str, volume_id: str, read_only: bool) -> None:
    call_agent(runtime, az, lambda a: a.grant_export(export_name, volume_id, read_only))


def terminate_connection(
    runtime: Runtime, project_id: str, volume_id: str, connector: dict[str, Any]
) -> None:
    with UnitOfWork(runtime) as uow:
        volume = get_volume(uow.session, project_id, volume_id)
        atts = list(uow.session.scalars(select(Attachment).where(Attachment.volume_id == volume.id)))
        if not atts:
            return
        att = _pick_attachment(atts, connector)
        sealed, az = att.export_name, volume.availability_zone
        if sealed is None:
            return
    revoke_attachment_export(runtime, az, sealed)
    with UnitOfWork(runtime) as uow:
        row = uow.session.get(Attachment, att.id)
        if row is not None and row.export_name == sealed:
            row.export_name = None


EXPORT = "export"  # the sealing purpose of export names


def open_export(runtime: Runtime, sealed: str) -> str:
    return runtime.sealer.open(sealed, EXPORT)


def revoke_attachment_export(runtime: Runtime, az: str, sealed: str | None) -> None:
    """Revoke the grant of an attachment's export, given as its row holds it (sealed)."""
    if sealed:
        export_name = open_export(runtime, sealed)
        call_agent(runtime, az, lambda a: a.revoke_export(export_name))


def regrant_exports(runtime: Runtime, volume_ids: list[str], *, writable: bool = False) -> None:
    """Re-grant the live exports of these disks with the access their role gives
    now (after a failover or a switchover), or, with `writable`, as ordinary
    disks: a pair being deleted re-grants before its row goes, so a client that
    sees the pair gone never meets a read-only DR export. The attachments are
    read in one query (no query per disk) and the changed ones written in one
    UPDATE at the end of the transaction; each agent's grants sent concurrently
    (a few at a time)."""
    ids = sorted(set(volume_ids))
    grants: list[tuple[str, str, str, bool]] = []
    with runtime.db.session() as session:
        flipped: dict[bool, list[str]] = {True: [], False: []}
        for start in range(0, len(ids), IN_CHUNK):
            rows = session.execute(
                select(Attachment.id, Attachment.volume_id, Attachment.export_name,
                       Attachment.export_read_only, Volume.availability_zone, ReplicationPair.dr_volume_id)
                .join(Volume, Volume.id == Attachment.volume_id)
                .outerjoin(ReplicationClaim, ReplicationClaim.volume_id == Attachment.volume_id)
                .outerjoin(ReplicationPair, ReplicationPair.id == ReplicationClaim.pair_id)
                .where(Attachment.volume_id.in_(ids[start : start + IN_CHUNK]),
                       Attachment.export_name.is_not(None))
            )  # fmt: skip
            for att_id, volume_id, sealed, was_read_only, az, dr_volume_id in rows:
                assert sealed is not None  # the query's condition
                # export_is_read_only's rule: the DR disk of a pair is exported read-only.
                read_only = False if writable else dr_volume_id == volume_id
                if read_only != was_read_only:
                    flipped[read_only].append(att_id)
                grants.append((az, open_export(runtime, sealed), volume_id, read_only))
        # The writes last, right before the commit (a short hold of SQLite's write lock).
        for read_only, att_ids in flipped.items():
            for start in range(0, len(att_ids), IN_CHUNK):
                session.execute(
                    update(Attachment)
                    .where(Attachment.id.in_(att_ids[start : start + IN_CHUNK]))
                    .values(export_read_only=read_only)
                    .execution_options(synchronize_session=False)
                )
    if not grants:
        return
    with ThreadPoolExecutor(max_workers=REGRANT_CONCURRENCY) as pool:
        done = [pool.submit(runtime.agent(az).grant_export, name, vid, ro) for az, name, vid, ro in grants]
    for future in done:
        future.result()  # the first failure, as when they were sent one by one
