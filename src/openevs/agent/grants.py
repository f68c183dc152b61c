"""The agent's table of NBD export grants, persisted in `<pool>/exports.json`.

A grant names the volume an NBD client may open under an export name, and
whether it may write. The file is replaced atomically (write a temporary
file, fsync, rename, fsync the directory), so after a crash it holds either
the old table or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from openevs.agent.pool import InvalidVolumeRequest, PoolIOError, fsync_dir
from openevs.contract import ExportGrant

EXPORTS_FILE = "exports.json"
# NBD allows up to 4096 bytes; a plain token keeps names safe in URIs and logs.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}")


def validate_export_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidVolumeRequest(
            f"invalid export name {name!r}: use 1-255 letters, digits, '.', ':', '-' or '_'"
        )
    return name


class GrantTable:
    """export name -> ExportGrant, saved to disk on every change."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / EXPORTS_FILE
        self._tmp = Path(root) / f".tmp-{EXPORTS_FILE}"
        self._grants: dict[str, ExportGrant] = self._load()

    def _load(self) -> dict[str, ExportGrant]:
        try:
            raw = json.loads(self.path.read_text())
            return {str(name): ExportGrant.model_validate(g) for name, g in raw.get("exports", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:  # pydantic's ValidationError is a ValueError
            raise PoolIOError(f"cannot read {self.path}: {exc}") from exc

    def _save(self, grants: dict[str, ExportGrant]) -> None:
        body = {
            "exports": {
                name: {"volume_id": g.volume_id, "read_only": g.read_only}
                for name, g in sorted(grants.items())
            }
        }
        data = json.dumps(body, indent=1).encode()
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(self._tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise PoolIOError(f"cannot save {self.path}: {exc.strerror or exc}") from exc
        self._grants = grants

    def get(self, name: str) -> ExportGrant | None:
        return self._grants.get(name)

    def items(self) -> list[tuple[str, ExportGrant]]:
        return sorted(self._grants.items())

    def names_for(self, volume_id: str) -> list[str]:
        return sorted(n for n, g in self._grants.items() if g.volume_id == volume_id)

    def grant(self, name: str, grant: ExportGrant) -> bool:
        """Set the grant; return True when it changed (an old grant was replaced)."""
        previous = self._grants.get(name)
        if previous == grant:
            return False
        self._save({**self._grants, name: grant})
        return previous is not None

    def revoke(self, names: list[str]) -> None:
        present = [n for n in names if n in self._grants]
        if present:
            self._save({n: g for n, g in self._grants.items() if n not in present})
