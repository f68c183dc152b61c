"""Server use cases (the consumers of disks): create, show, start/stop,
delete, attach and detach volumes.

Attaching moves the volume to in-use with a compare-and-set, so two servers
racing for one non-multiattach disk cannot both win; detaching the last
attachment moves it back to available only if no attachment remains. The
export of a removed attachment is revoked on its agent after the commit.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from openevs.db.cas import compare_and_set
from openevs.db.models import Attachment, Server, Volume
from openevs.domain.errors import Conflict, InvalidInput, InvalidState, NotFound, ServiceUnavailable
from openevs.domain.states import (
    SERVER_MACHINE,
    VOLUME_MACHINE,
    ServerStatus,
    ServerTrigger,
    VolumeStatus,
    VolumeTrigger,
)
from openevs.domain.volumes import check_text
from openevs.runtime import Runtime
from openevs.security import redacted
from openevs.services.connections import revoke_attachment_export
from openevs.services.listing import Page, paginate
from openevs.services.unit_of_work import UnitOfWork, transition
from openevs.services.volumes import get_volume

log = logging.getLogger(__name__)

SERVER_SORT_KEYS = ("created_at", "updated_at", "name", "status", "id")
MAX_ATTACHMENTS = 24


@dataclass(frozen=True)
class ServerDetail:
    server: Server
    attachments: list[Attachment]


def get_server(session: Session, project_id: str, server_id: str) -> Server:
    server = session.get(Server, server_id)
    if server is None or server.project_id != project_id:
        raise NotFound(f"server {server_id[:64]} could not be found")
    return server


def create_server(
    runtime: Runtime,
    project_id: str,
    user_id: str,
    name: str,
    availability_zone: str | None,
    image_ref: str = "",
    flavor_ref: str = "",
) -> Server:
    if not name or not name.strip():
        raise InvalidInput("server name must not be empty")
    check_text(name, "server name")
    azs = runtime.settings.azs
    az = availability_zone or azs[0]
    if az not in azs:
        raise InvalidInput(f"availability zone {az[:64]!r} does not exist; choose one of {', '.join(azs)}")
    with UnitOfWork(runtime) as uow:
        server = Server(
            id=str(uuid.uuid4()),
            project_id=project_id,
            user_id=user_id,
            name=name,
            availability_zone=az,
            status=ServerStatus.ACTIVE,
            image_ref=image_ref[:255],
            flavor_ref=flavor_ref[:255],
        )
        uow.session.add(server)
        uow.session.flush()
    return server


def show_server(runtime: Runtime, project_id: str, server_id: str) -> ServerDetail:
    with UnitOfWork(runtime) as uow:
        server = get_server(uow.session, project_id, server_id)
        return ServerDetail(server, attachments_of_server(uow.session, server.id))


def list_servers(
    session: Session, project_id: str, page: Page, name: str | None, status: str | None
) -> list[Server]:
    stmt = select(Server).where(Server.project_id == project_id)
    if name:
        stmt = stmt.where(Server.name == name)
    if status:
        stmt = stmt.where(Server.status == status.upper())
    return paginate(session, Server, stmt, page)


def server_action(runtime: Runtime, project_id: str, server_id: str, trigger: ServerTrigger) -> None:
    with UnitOfWork(runtime) as uow:
        server = get_server(uow.session, project_id, server_id)
        transition(uow.session, SERVER_MACHINE, server, trigger)


def list_attachments(runtime: Runtime, project_id: str, server_id: str) -> list[Attachment]:
    with UnitOfWork(runtime) as uow:
        server = get_server(uow.session, project_id, server_id)
        return attachments_of_server(uow.session, server.id)


def show_attachment(runtime: Runtime, project_id: str, server_id: str, volume_id: str) -> Attachment:
    for att in list_attachments(runtime, project_id, server_id):
        if att.volume_id == volume_id:
            return att
    raise NotFound(f"volume {volume_id[:64]} is not attached to server {server_id[:64]}")


def attachments_of_server(session: Session, server_id: str) -> list[Attachment]:
    return list(
        session.scalars(
            select(Attachment).where(Attachment.server_id == server_id).order_by(Attachment.created_at)
        )
    )


def _next_device(used: set[str]) -> str:
    for letter in "bcdefghijklmnopqrstuvwxyz":
        device = f"/dev/vd{letter}"
        if device not in used:
            return device
    raise InvalidState("the server has no free device name left")


def attach_volume(
    runtime: Runtime, project_id: str, server_id: str, volume_id: str, device: str | None
) -> Attachment:
    with UnitOfWork(runtime) as uow:
        return _attach(uow.session, project_id, server_id, volume_id, device)


def _attach(
    session: Session, project_id: str, server_id: str, volume_id: str, device: str | None
) -> Attachment:
    server = get_server(session, project_id, server_id)
    volume = get_volume(session, project_id, volume_id)
    if volume.availability_zone != server.availability_zone:
        raise InvalidInput(
            f"volume is in {volume.availability_zone} and server in {server.availability_zone}; "
            "a disk can only be attached to a server of its own AZ"
        )
    current = attachments_of_server(session, server.id)
    if any(a.volume_id == volume.id for a in current):
        raise Conflict(f"volume {volume.id} is already attached to server {server.id}")
    if len(current) >= MAX_ATTACHMENTS:
        raise InvalidState(f"a server can have at most {MAX_ATTACHMENTS} attached disks")
    used = {a.device for a in current}
    if device is not None and (not device.startswith("/dev/") or len(device) > 64 or device in used):
        raise InvalidInput("device must be a free name like /dev/vdb")
    if volume.status == VolumeStatus.IN_USE and not volume.multiattach:
        raise Conflict(f"volume {volume.id} is already attached and is not multiattach")
    if volume.status not in (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE):
        raise InvalidState(f"volume must be available to attach, not {volume.status}")
    att = Attachment(
        id=str(uuid.uuid4()),
        project_id=project_id,
        volume_id=volume.id,
        server_id=server.id,
        device=device or _next_device(used),
    )
    session.add(att)
    session.flush()
    transition(session, VOLUME_MACHINE, volume, VolumeTrigger.ATTACH)
    return att


def detach_volume(runtime: Runtime, project_id: str, server_id: str, volume_id: str) -> None:
    with UnitOfWork(runtime) as uow:
        session = uow.session
        server = get_server(session, project_id, server_id)
        att = session.scalar(
            select(Attachment).where(Attachment.server_id == server.id, Attachment.volume_id == volume_id)
        )
        if att is None:
            raise NotFound(f"volume {volume_id[:64]} is not attached to server {server.id}")
        _lock_volumes(session, [volume_id])
        if not _delete_row(session, Attachment, att.id):
            raise NotFound(f"volume {volume_id[:64]} is not attached to server {server.id}")
        _release_if_free(session, volume_id)
        _revoke_after_commit(uow, server.availability_zone, [att])


def delete_server(runtime: Runtime, project_id: str, server_id: str) -> None:
    """Delete the server, detaching its volumes and revoking their exports."""
    with UnitOfWork(runtime) as uow:
        session = uow.session
        server = get_server(session, project_id, server_id)
        atts = attachments_of_server(session, server.id)
        _lock_volumes(session, [att.volume_id for att in atts])
        for att in atts:
            _delete_row(session, Attachment, att.id)
        for att in atts:
            _release_if_free(session, att.volume_id)
        if not _delete_row(session, Server, server.id):
            raise NotFound(f"server {server_id[:64]} could not be found")
        _revoke_after_commit(uow, server.availability_zone, atts)


def _revoke_after_commit(uow: UnitOfWork, az: str, atts: list[Attachment]) -> None:
    names = [att.export_name for att in atts if att.export_name]
    runtime = uow.runtime

    def revoke() -> None:
        for name in names:
            try:
                revoke_attachment_export(runtime, az, name)
            except ServiceUnavailable as exc:
                # The attachment is gone from the database; an agent that is down now
                # drops the grant when the reconciler syncs exports after its restart.
                log.warning("export %s of %s not revoked yet: %s", redacted(name), az, exc)
                runtime.kick()

    if names:
        uow.after_commit(revoke)


def _lock_volumes(session: Session, volume_ids: list[str]) -> None:
    """Serialize detaches of the same volumes before checking "no attachment left".

    Without it two PostgreSQL transactions removing the last two attachments
    of a multiattach disk each still see the other's attachment, neither
    releases the disk, and it stays in-use with no attachment. SQLite, which
    ignores FOR UPDATE, serializes writers anyway. Sorted ids: no deadlock.
    """
    for volume_id in sorted(set(volume_ids)):
        session.execute(select(Volume.id).where(Volume.id == volume_id).with_for_update())


def _delete_row(session: Session, model: type[Attachment] | type[Server], row_id: str) -> bool:
    """Delete one row by id; False when a concurrent request deleted it first."""
    result = session.execute(
        delete(model).where(model.id == row_id).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _release_if_free(session: Session, volume_id: str) -> None:
    """in-use -> available once no attachment is left (DETACH_LAST)."""
    new = VOLUME_MACHINE.next(VolumeStatus.IN_USE, VolumeTrigger.DETACH_LAST)
    no_attachment_left = ~exists().where(Attachment.volume_id == volume_id)
    compare_and_set(session, Volume, volume_id, VolumeStatus.IN_USE, new, where=[no_attachment_left])
