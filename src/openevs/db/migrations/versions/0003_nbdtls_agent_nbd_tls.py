"""agents: the TLS policy of each agent's NBD port

Revision ID: 0003_nbdtls
Revises: 0002
Create Date: 2026-12-03 12:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_nbdtls"
down_revision = "0003_arbctl"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("nbd_tls", sa.String(length=16), nullable=False, server_default="off"))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("nbd_tls")
