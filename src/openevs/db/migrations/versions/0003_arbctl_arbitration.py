"""arbitration: the witness port of each agent, the epoch of each group, what the
primary reported of its arbitration

Revision ID: 0003_arbctl
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003_arbctl'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('witness_port', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('replication_groups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('epoch', sa.Integer(), nullable=False, server_default='1'))
    with op.batch_alter_table('replication_pairs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('arbitration', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('replication_pairs', schema=None) as batch_op:
        batch_op.drop_column('arbitration')
    with op.batch_alter_table('replication_groups', schema=None) as batch_op:
        batch_op.drop_column('epoch')
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_column('witness_port')
