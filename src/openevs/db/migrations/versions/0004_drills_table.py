"""drills table; snapshots.drill_id

Revision ID: 0004_drills
Revises: 0003_scale
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_drills"
down_revision = "0003_scale"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drills",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("availability_zone", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("create_disks", sa.Boolean(), nullable=False),
        sa.Column("fault", sa.String(length=1024), nullable=True),
        sa.Column("taken_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id"),
    )
    with op.batch_alter_table("drills", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_drills_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_drills_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_drills_status"), ["status"], unique=False)
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drill_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_snapshots_drill_id"), ["drill_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snapshots_drill_id"))
        batch_op.drop_column("drill_id")
    op.drop_table("drills")
