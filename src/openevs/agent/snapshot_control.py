"""The snapshot routes of the agent's control API (see control.py for the error rules)."""

from __future__ import annotations

from fastapi import FastAPI, Response

from openevs.agent.node import StorageNode
from openevs.contract_snapshots import (
    CopyRequest,
    GroupSnapshotRequest,
    JobProgress,
    SnapshotDeletion,
    SnapshotExportGrant,
    SnapshotInfo,
    SnapshotList,
)


def add_snapshot_routes(app: FastAPI, agent: StorageNode) -> None:
    store = agent.snapshots

    @app.get("/volumes/{volume_id}/snapshots")
    async def list_snapshots(volume_id: str) -> SnapshotList:
        await store.drain(volume_id)  # preserved_bytes counts what the overlay has pending
        return SnapshotList(snapshots=store.list(volume_id))

    @app.put("/volumes/{volume_id}/snapshots/{snapshot_id}")
    async def create_snapshot(volume_id: str, snapshot_id: str) -> SnapshotInfo:
        return await store.take(volume_id, snapshot_id)

    @app.post("/snapshot-groups")
    async def create_group_snapshot(body: GroupSnapshotRequest) -> SnapshotList:
        return SnapshotList(snapshots=await store.take_together(body))

    @app.get("/volumes/{volume_id}/snapshots/{snapshot_id}")
    async def get_snapshot(volume_id: str, snapshot_id: str) -> SnapshotInfo:
        await store.drain(volume_id)
        return store.info(volume_id, snapshot_id)

    @app.delete("/volumes/{volume_id}/snapshots/{snapshot_id}")
    async def delete_snapshot(volume_id: str, snapshot_id: str) -> SnapshotDeletion:
        return await store.delete(volume_id, snapshot_id)

    @app.post("/volumes/{volume_id}/snapshots/{snapshot_id}/rollback")
    async def rollback_snapshot(volume_id: str, snapshot_id: str) -> JobProgress:
        return await agent.rollback_snapshot(volume_id, snapshot_id)

    @app.put("/volumes/{volume_id}/copy")
    async def copy_volume(volume_id: str, body: CopyRequest) -> JobProgress:
        return await store.copy(volume_id, body)

    @app.put("/snapshot-exports/{name}")
    async def grant_snapshot_export(name: str, body: SnapshotExportGrant) -> SnapshotExportGrant:
        await store.grant_export(name, body.volume_id, body.snapshot_id)
        return body

    @app.delete("/snapshot-exports/{name}", status_code=204)
    async def revoke_snapshot_export(name: str) -> Response:
        await store.revoke_export(name)
        return Response(status_code=204)
