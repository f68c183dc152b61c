"""list routes: an index per sort key and per filter of volumes, pairs and groups

Every list route filters on project_id and orders by (sort key, id): an index
(project_id, key, id) lets the database read one page in order and stop, at
any number of rows. A filter the routes document gets (project_id, filter,
created_at, id), the default order after the filter (docs/decisions.md
"Controller at scale").

Revision ID: 0004_ctlscale
Revises: 0004_secrets
"""

from alembic import op

revision = "0004_ctlscale"
down_revision = "0004_secrets"
branch_labels = None
depends_on = None

# (table, index, columns), as db/list_indexes.py had them at this revision.
LIST_INDEXES = [
    ("volumes", "ix_volumes_list_created_at", ["project_id", "created_at", "id"]),
    ("volumes", "ix_volumes_list_updated_at", ["project_id", "updated_at", "id"]),
    ("volumes", "ix_volumes_list_name", ["project_id", "name", "id"]),
    ("volumes", "ix_volumes_list_size_gb", ["project_id", "size_gb", "id"]),
    ("volumes", "ix_volumes_list_status", ["project_id", "status", "id"]),
    ("volumes", "ix_volumes_list_id", ["project_id", "id"]),
    ("volumes", "ix_volumes_filter_status", ["project_id", "status", "created_at", "id"]),
    (
        "volumes",
        "ix_volumes_filter_availability_zone",
        ["project_id", "availability_zone", "created_at", "id"],
    ),
    ("replication_pairs", "ix_replication_pairs_list_created_at", ["project_id", "created_at", "id"]),
    ("replication_pairs", "ix_replication_pairs_list_updated_at", ["project_id", "updated_at", "id"]),
    ("replication_pairs", "ix_replication_pairs_list_name", ["project_id", "name", "id"]),
    ("replication_pairs", "ix_replication_pairs_list_status", ["project_id", "status", "id"]),
    ("replication_pairs", "ix_replication_pairs_list_id", ["project_id", "id"]),
    ("replication_pairs", "ix_replication_pairs_filter_status", ["project_id", "status", "created_at", "id"]),
    (
        "replication_pairs",
        "ix_replication_pairs_filter_priority_station",
        ["project_id", "priority_station", "created_at", "id"],
    ),
    ("replication_groups", "ix_replication_groups_list_created_at", ["project_id", "created_at", "id"]),
    ("replication_groups", "ix_replication_groups_list_updated_at", ["project_id", "updated_at", "id"]),
    ("replication_groups", "ix_replication_groups_list_name", ["project_id", "name", "id"]),
    ("replication_groups", "ix_replication_groups_list_status", ["project_id", "status", "id"]),
    ("replication_groups", "ix_replication_groups_list_id", ["project_id", "id"]),
    (
        "replication_groups",
        "ix_replication_groups_filter_status",
        ["project_id", "status", "created_at", "id"],
    ),
    (
        "replication_groups",
        "ix_replication_groups_filter_priority_station",
        ["project_id", "priority_station", "created_at", "id"],
    ),
]


def upgrade() -> None:
    for table, name, columns in LIST_INDEXES:
        op.create_index(name, table, list(columns), unique=False)


def downgrade() -> None:
    for table, name, _ in reversed(LIST_INDEXES):
        op.drop_index(name, table_name=table)
