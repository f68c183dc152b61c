"""The indexes of the list routes (migration 0004_ctlscale and the models share them).

A list route filters on project_id, optionally on one documented filter, and
orders by (sort key, id) (services/listing.py). The index (project_id, key,
id) of each sort key lets the database walk one page in order and stop after
`limit` rows, instead of sorting every row of the project; a filter gets
(project_id, filter, created_at, id), the default order after it.
"""

from __future__ import annotations

from sqlalchemy import Index

# table -> (its sort keys, its filter columns)
LISTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "volumes": (
        ("created_at", "updated_at", "name", "size_gb", "status", "id"),
        ("status", "availability_zone"),
    ),
    "replication_pairs": (
        ("created_at", "updated_at", "name", "status", "id"),
        ("status", "priority_station"),
    ),
    "replication_groups": (
        ("created_at", "updated_at", "name", "status", "id"),
        ("status", "priority_station"),
    ),
}


def _indexes() -> list[tuple[str, str, tuple[str, ...]]]:
    found: list[tuple[str, str, tuple[str, ...]]] = []
    for table, (sort_keys, filters) in LISTED.items():
        for key in sort_keys:
            columns: tuple[str, ...] = ("project_id", "id") if key == "id" else ("project_id", key, "id")
            found.append((table, f"ix_{table}_list_{key}", columns))
        for column in filters:
            found.append((table, f"ix_{table}_filter_{column}", ("project_id", column, "created_at", "id")))
    return found


# (table, index name, columns)
LIST_INDEXES: list[tuple[str, str, tuple[str, ...]]] = _indexes()


def list_indexes(table: str) -> tuple[Index, ...]:
    """The list indexes of one table, for its model's __table_args__."""
    return tuple(Index(name, *columns) for t, name, columns in LIST_INDEXES if t == table)
