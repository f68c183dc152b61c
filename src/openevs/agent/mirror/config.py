"""A volume's replication config (contract.ReplicationConfig), persisted in `<pool>/<volume_id>.repl.json`.

Replaced atomically (temporary file, fsync, rename, fsync the directory), so
after a crash the file holds the old config or the new one, never a mix.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from openevs.agent.pool import PoolIOError, fsync_dir, write_atomic
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


def save_config(root: Path, volume_id: str, config: ReplicationConfig, *, sync_dir: bool = True) -> None:
    """`sync_dir=False`: durable only once the caller fsyncs `root` (sync_configs)."""
    write_atomic(config_path(root, volume_id), config.model_dump_json(indent=1).encode(), sync_dir=sync_dir)


def sync_configs(root: Path) -> None:
    """Make the renames of `save_config(..., sync_dir=False)` durable: one directory fsync."""
    try:
        fsync_dir(Path(root))
    except OSError as exc:
        raise PoolIOError(f"cannot sync {root}: {exc.strerror or exc}") from exc


def remove_config(root: Path, volume_id: str) -> None:
    path = config_path(root, volume_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PoolIOError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    fsync_dir(path.parent)
