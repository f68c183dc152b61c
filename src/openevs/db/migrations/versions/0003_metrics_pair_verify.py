"""replication pairs: the online verify run (JSON), the resync rate limit, the measured rate and ETA

Revision ID: 0003_metrics
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_metrics"
down_revision = "0003_snapshots"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replication_pairs") as batch:
        batch.add_column(sa.Column("verify", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("resync_rate_limit_bytes_per_s", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("dirty_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("resync_rate_bytes_per_s", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("resync_eta_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replication_pairs") as batch:
        for column in ("resync_eta_s", "resync_rate_bytes_per_s", "dirty_bytes", "resync_rate_limit_bytes_per_s"):
            batch.drop_column(column)
        batch.drop_column("verify")
