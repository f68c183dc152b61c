"""replication pairs: the online verify run (JSON)

Revision ID: 0003_metrics
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_metrics"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replication_pairs") as batch:
        batch.add_column(sa.Column("verify", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replication_pairs") as batch:
        batch.drop_column("verify")
