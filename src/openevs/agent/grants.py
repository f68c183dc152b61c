"""The agent's table of NBD export grants, persisted in `<pool>/exports.json`.

A grant names the volume an NBD client may open under an export name, and
whether it may write. The file is replaced atomically (write a temporary
file, fsync, rename, fsync the directory), so after a crash it holds either
the old table or the new one, never a mix.

An export name is the secret that opens a disk, so the file (mode 0600)
holds only its SHA-256 (`sha256:<hex>`): a copy of the pool's bookkeeping
opens nothing. Names are long random tokens, so a plain hash is enough (no
salt, no stretching: there is nothing to guess). The names themselves live
in memory only, learned from grants and from the clients that open them
(every live connection's name is known, so it can be dropped); a grant
whose name this process never saw is listed and revoked by its digest.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from openevs.agent.pool import InvalidVolumeRequest, PoolIOError, write_atomic
from openevs.contract import ExportGrant

EXPORTS_FILE = "exports.json"
DIGEST_PREFIX = "sha256:"
# NBD allows up to 4096 bytes; a plain token keeps names safe in URIs and logs.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}")


def validate_export_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidVolumeRequest(
            f"invalid export name {name!r}: use 1-255 letters, digits, '.', ':', '-' or '_'"
        )
    return name


def export_digest(name: str) -> str:
    """What the grant file keeps of an export name."""
    return DIGEST_PREFIX + hashlib.sha256(name.encode()).hexdigest()


class GrantTable:
    """export name -> ExportGrant, saved (by digest) to disk on every change."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / EXPORTS_FILE
        self._names: dict[str, str] = {}  # digest -> name, in memory only
        self._grants: dict[str, ExportGrant] = self._load()  # digest -> grant

    def _load(self) -> dict[str, ExportGrant]:
        try:
            raw = json.loads(self.path.read_text())
            grants = {}
            for key, g in raw.get("exports", {}).items():
                grant = ExportGrant.model_validate(g)
                if str(key).startswith(DIGEST_PREFIX):
                    grants[str(key)] = grant
                else:  # a table written before names were hashed: hashed on the next save
                    grants[export_digest(str(key))] = grant
                    self._names[export_digest(str(key))] = str(key)
            return grants
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
        write_atomic(self.path, json.dumps(body, indent=1).encode())
        self._grants = grants

    def _key(self, name: str) -> str:
        """The digest of a name, or the name itself when it is a digest this table holds."""
        return name if name.startswith(DIGEST_PREFIX) and name in self._grants else export_digest(name)

    def _shown(self, key: str) -> str:
        return self._names.get(key, key)

    def get(self, name: str) -> ExportGrant | None:
        """The grant an NBD client opens with `name` (a name, never a digest)."""
        key = export_digest(name)
        grant = self._grants.get(key)
        if grant is not None:
            self._names[key] = name
        return grant

    def items(self) -> list[tuple[str, ExportGrant]]:
        """(name, or digest if this process never saw the name, grant) of every grant."""
        return sorted((self._shown(k), g) for k, g in self._grants.items())

    def names_for(self, volume_id: str) -> list[str]:
        return sorted(self._shown(k) for k, g in self._grants.items() if g.volume_id == volume_id)

    def grant(self, name: str, grant: ExportGrant) -> bool:
        """Set the grant; return True when it changed (an old grant was replaced)."""
        key = export_digest(name)
        self._names[key] = name
        previous = self._grants.get(key)
        if previous == grant:
            return False
        self._save({**self._grants, key: grant})
        return previous is not None

    def revoke(self, names: list[str]) -> None:
        present = {self._key(n) for n in names} & set(self._grants)
        if present:
            self._save({k: g for k, g in self._grants.items() if k not in present})
        for key in present:
            self._names.pop(key, None)
