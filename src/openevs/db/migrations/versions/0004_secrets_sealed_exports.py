"""seal export names and link exports with the deployment key; table deployment_keys

Converts every row: attachments.export_name, replication_pairs.link_export
and the link exports in the plans of replication_groups.pending. The key is
the one the caller passes (`db.session.upgrade(url, sealer)`), else the key
file of the settings (created if there is none); a database with nothing to
convert needs no key.

Revision ID: 0004_secrets
Revises: 0004_drills
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_secrets"
down_revision = "0004_drills"
branch_labels = None
depends_on = None


_GROUPS = sa.table("replication_groups", sa.column("id", sa.String), sa.column("pending", sa.JSON))


def _sealer() -> Any:
    from openevs.security.sealing import Sealer

    config = op.get_context().config
    given = None if config is None else config.attributes.get("sealer")
    if given is not None:
        return given
    from openevs.config import load_settings

    sealer, _ = Sealer.load_or_create(load_settings().sealing_key_path())
    return sealer


def _rows(conn: sa.Connection) -> tuple[list[Any], list[Any], list[Any]]:
    atts = conn.execute(
        sa.text("SELECT id, export_name FROM attachments WHERE export_name IS NOT NULL")
    ).all()
    pairs = conn.execute(sa.text("SELECT id, link_export FROM replication_pairs")).all()
    groups = conn.execute(sa.text("SELECT id, pending FROM replication_groups")).all()
    return list(atts), list(pairs), list(groups)


def _convert(change: Any) -> None:
    """Apply `change(value, purpose)` to every secret of every row."""
    conn = op.get_bind()
    atts, pairs, groups = _rows(conn)
    for row_id, value in atts:
        conn.execute(
            sa.text("UPDATE attachments SET export_name = :v WHERE id = :id"),
            {"v": change(value, "export"), "id": row_id},
        )
    for row_id, value in pairs:
        conn.execute(
            sa.text("UPDATE replication_pairs SET link_export = :v WHERE id = :id"),
            {"v": change(value, "link"), "id": row_id},
        )
    for row_id, raw in groups:
        pending = json.loads(raw) if isinstance(raw, str) else raw
        flips = (pending or {}).get("pairs")
        if not isinstance(flips, dict):
            continue
        for flip in flips.values():
            if isinstance(flip, dict) and isinstance(flip.get("link_export"), str):
                flip["link_export"] = change(flip["link_export"], "link")
        conn.execute(sa.update(_GROUPS).where(_GROUPS.c.id == row_id).values(pending=pending))


def _has_secrets() -> bool:
    atts, pairs, groups = _rows(op.get_bind())
    return bool(atts or pairs or any("link_export" in str(raw) for _, raw in groups))


def upgrade() -> None:
    op.create_table(
        "deployment_keys",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("kid", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    if not _has_secrets():
        return
    from openevs.security.sealing import is_sealed

    sealer = _sealer()
    _convert(lambda value, purpose: value if is_sealed(value) else sealer.seal(value, purpose))
    op.get_bind().execute(
        sa.text("INSERT INTO deployment_keys (name, kid) VALUES ('sealing', :kid)"),
        {"kid": sealer.current_kid},
    )


def downgrade() -> None:
    if _has_secrets():
        from openevs.security.sealing import is_sealed

        sealer = _sealer()
        _convert(lambda value, purpose: sealer.open(value, purpose) if is_sealed(value) else value)
    op.drop_table("deployment_keys")
