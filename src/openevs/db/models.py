"""SQLAlchemy 2 models: the durable state of the controller.

A row in a transitional status (creating, deleting, ...) is work the
reconciler owes; status changes go through `db.cas.compare_and_set`.
Times are naive UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from openevs.db.list_indexes import list_indexes


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    domain_id: Mapped[str] = mapped_column(String(64), default="default")
    description: Mapped[str] = mapped_column(String(255), default="")
    quota_volumes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_gigabytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    domain_id: Mapped[str] = mapped_column(String(64), default="default")
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RoleAssignment(Base):
    __tablename__ = "role_assignments"
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(32))


class Token(Base):
    __tablename__ = "tokens"
    # sha256 of the token: a stolen database does not yield usable tokens.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(32))
    issued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Volume(Base):
    __tablename__ = "volumes"
    __table_args__ = list_indexes("volumes")
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    size_gb: Mapped[int] = mapped_column(Integer)
    # The size the agent must reach; differs from size_gb only while extending.
    target_size_gb: Mapped[int] = mapped_column(Integer)
    volume_type: Mapped[str] = mapped_column(String(64))
    availability_zone: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    multiattach: Mapped[bool] = mapped_column(Boolean, default=False)
    bootable: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    fault: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # The data source of a disk made from a snapshot or cloned from a disk (snapshots).
    snapshot_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    source_volid: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Server(Base):
    __tablename__ = "servers"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(255))
    availability_zone: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    image_ref: Mapped[str] = mapped_column(String(255), default="")
    flavor_ref: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    server_id: Mapped[str] = mapped_column(ForeignKey("servers.id"), index=True)
    device: Mapped[str] = mapped_column(String(64))
    # The NBD export name granted to this attachment (an unguessable secret), sealed
    # with the deployment key (security/sealing.py, purpose "export"); null until
    # os-initialize_connection, cleared on terminate/detach.
    export_name: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    export_read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Agent(Base):
    """What the controller last learnt of an AZ's storage agent."""

    __tablename__ = "agents"
    availability_zone: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(255), default="")
    nbd_host: Mapped[str] = mapped_column(String(255), default="")
    nbd_port: Mapped[int] = mapped_column(Integer, default=0)
    # The witness this AZ's agent serves for other AZs' pairs, on nbd_host (0: none).
    witness_port: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the NBD port's TLS policy: off, optional, required
    nbd_tls: Mapped[str] = mapped_column(String(16), default="off", server_default="off")
    healthy: Mapped[bool] = mapped_column(Boolean, default=False)
    checked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    capacity_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class DeploymentKey(Base):
    """Which key the deployment's secrets are sealed with (its id only, never the key):
    a controller whose key file lacks it refuses to start (services/sealing.py)."""

    __tablename__ = "deployment_keys"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    kid: Mapped[str] = mapped_column(String(16))


class ReplicationGroup(Base):
    """A replication consistency group: pairs that split, sync and fail over as one."""

    __tablename__ = "replication_groups"
    __table_args__ = list_indexes("replication_groups")
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    replication_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    replication_model: Mapped[str] = mapped_column(String(32), default="hypermetro")
    priority_station: Mapped[str] = mapped_column(String(64))
    fault_level: Mapped[str] = mapped_column(String(8), default="0")
    failure_detail: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # Pending work of a transitional status (e.g. members to add/remove), as JSON.
    pending: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    fault: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # The group's arbitration epoch (witness unit group:<id>); bumped by failover and switchover.
    epoch: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ReplicationPair(Base):
    """An EVS replication pair: a production disk and its DR disk in another AZ."""

    __tablename__ = "replication_pairs"
    # "Rows changed lately": the measurement and the group aggregate (reconciler/).
    __table_args__ = (
        Index("ix_replication_pairs_updated_at", "updated_at"),
        *list_indexes("replication_pairs"),  # the list routes' sort keys and filters
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    replication_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    replication_model: Mapped[str] = mapped_column(String(32), default="hypermetro")
    progress: Mapped[str | None] = mapped_column(String(8), nullable=True)
    fault_level: Mapped[str] = mapped_column(String(8), default="0")
    failure_detail: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # volume_ids exactly as the create request gave them, comma-joined.
    volume_ids: Mapped[str] = mapped_column(String(80))
    priority_station: Mapped[str] = mapped_column(String(64), index=True)
    # The disk in priority_station (writable, primary role) and its peer.
    production_volume_id: Mapped[str] = mapped_column(String(36), index=True)
    dr_volume_id: Mapped[str] = mapped_column(String(36), index=True)
    group_id: Mapped[str | None] = mapped_column(
        ForeignKey("replication_groups.id"), nullable=True, index=True
    )
    # Generation of the roles; bumped by failover and switchover (the fence).
    epoch: Mapped[int] = mapped_column(Integer, default=1)
    # NBD export on the DR agent through which the primary writes (per epoch secret),
    # sealed with the deployment key (security/sealing.py, purpose "link").
    link_export: Mapped[str] = mapped_column(String(128))
    volume_size_gb: Mapped[int] = mapped_column(Integer)
    volume_type: Mapped[str] = mapped_column(String(64))
    multiattach: Mapped[bool] = mapped_column(Boolean, default=False)
    synced_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the production disk's agent last reported of its arbitration
    # (contract.ArbitrationState as JSON; null: static priority or not measured).
    arbitration: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    verify: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # domain/verify.py
    resync_rate_limit_bytes_per_s: Mapped[int] = mapped_column(BigInteger, default=0)  # 0: none of its own
    # What the production agent last measured (reconciler/replications.py), for the pair view.
    dirty_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    resync_rate_bytes_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    resync_eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    fault: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ReplicationClaim(Base):
    """One row per disk in a pair: the primary key makes a disk's claim exclusive,
    so two concurrent creates naming one disk cannot both win."""

    __tablename__ = "replication_claims"
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), primary_key=True)
    pair_id: Mapped[str] = mapped_column(
        ForeignKey("replication_pairs.id", ondelete="CASCADE"), index=True
    )


class Snapshot(Base):
    """An EVS snapshot of a disk; the agent of the disk's AZ holds its data."""

    __tablename__ = "snapshots"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    availability_zone: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    size_gb: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), index=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    progress: Mapped[str] = mapped_column(String(8), default="0%")
    fault: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    drill_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)  # taken by a drill
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Drill(Base):
    """A DR drill of a consistency group: its snapshots (`Snapshot.drill_id`) and the
    disks made from them (`Volume.snapshot_id`); at most one per group."""

    __tablename__ = "drills"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    group_id: Mapped[str] = mapped_column(String(36), unique=True)
    user_id: Mapped[str] = mapped_column(String(64), default="")
    availability_zone: Mapped[str] = mapped_column(String(64))  # the DR AZ
    status: Mapped[str] = mapped_column(String(32), index=True)
    create_disks: Mapped[bool] = mapped_column(Boolean, default=False)
    fault: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    taken_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
