"""A volume's replication config, persisted in `<pool>/<volume_id>.repl.json`.

Replaced atomically (temporary file, fsync, rename, fsync the directory), so
after a crash the file holds the old config or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openevs.agent.mirror.engine import Role
from openevs.agent.pool import InvalidVolumeRequest, PoolIOError, fsync_dir

REPL_SUFFIX = ".repl.json"
BITMAP_SUFFIX = ".bitmap"


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    export: str


@dataclass(frozen=True)
class ReplicationConfig:
    role: Role
    epoch: int
    pair_id: str = ""
    group_id: str | None = None
    peer: Peer | None = None  # primary: the DR volume's link export on the peer agent
    link_export: str | None = None  # secondary: the export the primary writes through
    mirroring: bool = True

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise InvalidVolumeRequest(f"epoch must be >= 0, got {self.epoch}")
        if self.role is Role.PRIMARY and self.mirroring and self.peer is None:
            raise InvalidVolumeRequest("a mirroring primary needs a peer {host, port, export}")
        if self.role is Role.SECONDARY and not self.link_export:
            raise InvalidVolumeRequest("a secondary needs a link_export")

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["role"] = str(self.role)
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ReplicationConfig:
        peer = body.get("peer")
        return cls(
            role=Role(body["role"]),
            epoch=int(body["epoch"]),
            pair_id=str(body.get("pair_id") or ""),
            group_id=body.get("group_id") or None,
            peer=Peer(str(peer["host"]), int(peer["port"]), str(peer["export"])) if peer else None,
            link_export=body.get("link_export") or None,
            mirroring=bool(body.get("mirroring", True)),
        )


def config_path(root: Path, volume_id: str) -> Path:
    return Path(root) / f"{volume_id}{REPL_SUFFIX}"


def load_configs(root: Path) -> dict[str, ReplicationConfig]:
    configs = {}
    for path in sorted(Path(root).glob(f"*{REPL_SUFFIX}")):
        volume_id = path.name[: -len(REPL_SUFFIX)]
        try:
            configs[volume_id] = ReplicationConfig.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PoolIOError(f"cannot read {path}: {exc}") from exc
    return configs


def save_config(root: Path, volume_id: str, config: ReplicationConfig) -> None:
    path = config_path(root, volume_id)
    tmp = Path(root) / f".tmp-{volume_id}{REPL_SUFFIX}"
    data = json.dumps(config.to_json(), indent=1, sort_keys=True).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise PoolIOError(f"cannot save {path}: {exc.strerror or exc}") from exc


def remove_config(root: Path, volume_id: str) -> None:
    path = config_path(root, volume_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PoolIOError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    fsync_dir(path.parent)
