"""pairs: index on updated_at, for the reconciler's "rows changed lately"

Revision ID: 0003_scale
Revises: 0002
"""

from alembic import op

revision = "0003_scale"
down_revision = "0003_metrics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_replication_pairs_updated_at", "replication_pairs", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_replication_pairs_updated_at", table_name="replication_pairs")
