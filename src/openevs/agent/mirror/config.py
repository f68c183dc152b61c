"""A volume's replication config (contract.ReplicationConfig), persisted in `<pool>/<volume_id>.repl.json`.

Replaced atomically (temporary file, fsync, rename, fsync the directory), so
after a crash the file holds the old config or the new one, never a mix; a
replication batch saves its configs the same way as one group commit
(`save_configs`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from openevs.agent.pool import PoolIOError, fsync_dir, write_atomic, write_atomic_many
from openevs.contract import ReplicationConfig

REPL_SUFFIX = ".repl.json"
BITMAP_SUFFIX = ".bitmap"


def config_path(root: Path, volume_id: str) -> Path:
    return Path(root) / f"{volume_id}{REPL_SUFFIX}"


def load_configs(root: Path) -> dict[str, ReplicationConfig]:
    configs = {}
    for path in sorted(Path(root).glob(f"*{REPL_SUFFIX}")):
        volume_id = path.name[: -len(REPL_SUFFIX)]
        try:
            configs[volume_id] = ReplicationConfig.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise PoolIOError(f"cannot read {path}: {exc}") from exc
    return configs


def save_config(root: Path, volume_id: str, config: ReplicationConfig) -> None:
    write_atomic(config_path(root, volume_id), config.model_dump_json(indent=1).encode())


def save_configs(root: Path, configs: list[tuple[str, ReplicationConfig]]) -> None:
    """`save_config` of many volumes as one group commit (pool.write_atomic_many): durable
    when it returns; a volume given twice gets its last config."""
    write_atomic_many([(config_path(root, v), c.model_dump_json(indent=1).encode()) for v, c in configs])


def remove_config(root: Path, volume_id: str) -> None:
    path = config_path(root, volume_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PoolIOError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    fsync_dir(path.parent)
