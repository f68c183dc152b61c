"""snapshots table; volumes.snapshot_id and volumes.source_volid

Revision ID: 0003_snapshots
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_snapshots"
down_revision = "0003_nbdtls"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("volume_id", sa.String(length=36), nullable=False),
        sa.Column("availability_zone", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("size_gb", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("progress", sa.String(length=8), nullable=False),
        sa.Column("fault", sa.String(length=1024), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["volume_id"], ["volumes.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_snapshots_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_snapshots_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_snapshots_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_snapshots_volume_id"), ["volume_id"], unique=False)
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("snapshot_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("source_volid", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_volumes_snapshot_id"), ["snapshot_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_volumes_source_volid"), ["source_volid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_volumes_source_volid"))
        batch_op.drop_index(batch_op.f("ix_volumes_snapshot_id"))
        batch_op.drop_column("source_volid")
        batch_op.drop_column("snapshot_id")
    op.drop_table("snapshots")
