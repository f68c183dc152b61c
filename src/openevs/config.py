"""Settings, read once: defaults, then `openevs.toml`, then `OPENEVS_<KEY>` variables.

Every component receives a `Settings` object; nothing else reads the
environment. Keys are documented in DESIGN.md section 1 and in README.md.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

DEFAULT_AZS = ("az1.dc1", "az2.dc2", "az3.dc3")
DEFAULT_VOLUME_TYPES = ("SATA", "SAS", "SSD", "GPSSD", "ESSD")


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


def _parse_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{what} must look like HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./openevs-data")
    database_url: str = ""
    listen: str = "127.0.0.1:8776"
    public_url: str = ""
    admin_password: str = ""
    azs: tuple[str, ...] = DEFAULT_AZS
    region: str = "region-1"
    volume_types: tuple[str, ...] = DEFAULT_VOLUME_TYPES
    token_ttl_s: int = 24 * 3600
    quota_volumes: int = 1000
    quota_gigabytes: int = 1_000_000
    reconcile_interval_s: float = 0.5
    agent_timeout_s: float = 300.0  # transitional work waiting on an unreachable agent fails after this
    health_interval_s: float = 2.0
    # Replication consistency groups allowed per AZ (primary and secondary side).
    group_limit_per_az: int = 128
    # Standalone agents: "az1.dc1=http://host:port,az2.dc2=http://..."; AZs not
    # listed here get an embedded agent (a child process of `openevs serve`).
    agent_urls: dict[str, str] = field(default_factory=dict)
    agent_host: str = "127.0.0.1"
    embedded_agents: bool = True
    max_body_bytes: int = 1 << 20
    # NBD port of the embedded agent of the i-th AZ is nbd_port_base + i; 0 = ephemeral.
    nbd_port_base: int = 10809
    nbd_host: str = "127.0.0.1"

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'openevs.db').resolve()}"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return _parse_hostport(self.listen, "OPENEVS_LISTEN")

    @property
    def endpoint(self) -> str:
        """Base URL clients use; the catalog and clouds.yaml are built from it."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host, port = self.listen_host_port
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    def pool_dir(self, az: str) -> Path:
        return self.data_dir / "pools" / az

    def agent_dir(self) -> Path:
        return self.data_dir / "agents"


def _coerce(name: str, raw: object, current: object) -> object:
    if isinstance(current, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    if isinstance(current, int):
        try:
            return int(str(raw))
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if isinstance(current, float):
        try:
            return float(str(raw))
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if isinstance(current, Path):
        return Path(str(raw))
    if isinstance(current, tuple):
        items = raw if isinstance(raw, list) else str(raw).split(",")
        values = tuple(str(i).strip() for i in items if str(i).strip())
        if not values:
            raise ConfigError(f"{name} must list at least one value")
        return values
    if isinstance(current, dict):
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        result: dict[str, str] = {}
        for part in str(raw).split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(f"{name} entries must look like AZ=URL, got {part!r}")
            result[key.strip()] = value.strip()
        return result
    return str(raw)


def load_settings(env: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from defaults, `openevs.toml` (or OPENEVS_CONFIG), env, overrides."""
    env = dict(os.environ if env is None else env)
    settings = Settings()
    values: dict[str, object] = {}
    config_path = Path(env.get("OPENEVS_CONFIG", "openevs.toml"))
    if config_path.is_file():
        with config_path.open("rb") as fh:
            values.update(tomllib.load(fh))
    for f in fields(Settings):
        key = f"OPENEVS_{f.name.upper()}"
        if key in env:
            values[f.name] = env[key]
    values.update(overrides)
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    coerced = {
        name: _coerce(f"OPENEVS_{name.upper()}", raw, getattr(settings, name))
        for name, raw in values.items()
    }
    settings = replace(settings, **coerced)  # type: ignore[arg-type]
    settings.listen_host_port  # noqa: B018 - validate early
    return settings
