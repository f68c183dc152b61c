"""Settings, read once: defaults, then `openevs.toml`, then `OPENEVS_<KEY>` variables.

Every component receives a `Settings` object; nothing else reads the
environment. `Settings(...)` takes only its arguments (tests build one
directly); `load_settings()` layers explicit overrides over `OPENEVS_<KEY>`
variables over the toml file (`OPENEVS_CONFIG`, default `./openevs.toml`,
the same keys in lower case) over the defaults, and turns every invalid
value into one `ConfigError` that names the variable or key. Keys are
documented in DESIGN.md section 1 and in README.md.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from openevs.domain.addresses import is_loopback
from openevs.security.pki import TlsFiles, files_for

DEFAULT_AZS = ("az1.dc1", "az2.dc2", "az3.dc3")
DEFAULT_VOLUME_TYPES = ("SATA", "SAS", "SSD", "GPSSD", "ESSD")
ENV_PREFIX = "OPENEVS_"


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


def _parse_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{what} must look like HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _check_hostport(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ValueError("must look like HOST:PORT")


# Lists and maps come as "a,b,c" and "az1=url,az2=url" in the environment
# (NoDecode: not as JSON) and as arrays and tables in the toml file.
NameList = Annotated[tuple[str, ...], NoDecode]
UrlMap = Annotated[dict[str, str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    data_dir: Path = Path("./openevs-data")
    database_url: str = ""
    listen: str = "127.0.0.1:8776"
    public_url: str = ""
    admin_password: str = ""
    azs: NameList = DEFAULT_AZS
    region: str = "region-1"
    volume_types: NameList = DEFAULT_VOLUME_TYPES
    token_ttl_s: int = 24 * 3600
    quota_volumes: int = 1000
    quota_gigabytes: int = 1_000_000
    quota_snapshots: int = 10  # per project (snapshots)
    reconcile_interval_s: float = 0.5
    agent_timeout_s: float = 300.0  # transitional work waiting on an unreachable agent fails after this
    health_interval_s: float = 2.0
    # Replication consistency groups allowed per AZ (primary and secondary side).
    group_limit_per_az: int = 128
    agent_max_volumes: int = 25_000  # disks one AZ's agent holds (services/agent_limits.py)
    agent_max_pairs: int = 12_000  # replication pairs one AZ's agent is in
    # Standalone agents: "az1.dc1=http://host:port,az2.dc2=http://..."; AZs not
    # listed here get an embedded agent (a child process of `openevs serve`).
    agent_urls: UrlMap = {}
    agent_host: str = "127.0.0.1"
    embedded_agents: bool = True
    max_body_bytes: int = 1 << 20
    # NBD port of the embedded agent of the i-th AZ is nbd_port_base + i; 0 = ephemeral.
    nbd_port_base: int = 10809
    nbd_host: str = "127.0.0.1"
    # HTTPS for the public API: certificate and key (PEM), both or neither; tls_ca is the
    # CA bundle clients verify with (default: the deployment CA if it issued tls_cert).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # Arbitration (DESIGN 3, docs/decisions.md "Arbitration"): a standalone witness
    # HOST:PORT (overrides the embedded ones), or the AZ whose agent is every pair's
    # witness; neither: the one configured AZ that holds neither disk of the pair.
    witness: str = ""
    witness_az: str = ""
    # Embedded witnesses: the i-th AZ's agent serves one on witness_port_base + i
    # (ephemeral when 0 or when nbd_port_base is 0); embedded_witnesses=false: none.
    witness_port_base: int = 8790
    embedded_witnesses: bool = True
    witness_lease_s: float = Field(default=6.0, ge=1)
    # A write its peer lacks waits this long for the witness's grant, then fails (EIO).
    suspend_io_timeout_s: float = Field(default=60.0, ge=0)
    # Automatic failover of a group whose primary is gone (opt-in: EVS failover is an
    # operator's decision), once the conditions held for auto_failover_after_s.
    auto_failover: bool = False
    auto_failover_after_s: float = Field(default=30.0, ge=0)
    # Mutual TLS of the control connections (docs/security.md). agent_tls_*: a standalone
    # agent's own certificate, key and CA bundle (`openevs agent`); control_tls_*: the
    # controller's certificate toward agents and witnesses (default: controller.pem,
    # controller.key and ca.pem of <data_dir>/pki when they exist).
    agent_tls_cert: Path | None = None
    agent_tls_key: Path | None = None
    agent_tls_ca: Path | None = None
    control_tls_cert: Path | None = None
    control_tls_key: Path | None = None
    control_tls_ca: Path | None = None
    # The key file that seals export names and link exports in the database (security/sealing.py;
    # default <data_dir>/pki/secrets.key); every controller process of a deployment reads the same.
    secrets_key_file: Path | None = None
    # Monitoring (docs/monitoring.md): the controller's /metrics listener (HOST:PORT, port 0:
    # any free one; "" turns it off), and the volumes whose NBD traffic the agents count on
    # their own (ids, comma-separated, or "all"; default none: one series per operation).
    metrics_listen: str = "127.0.0.1:9776"
    # HTTPS for that listener (both or neither); unset, a listener off loopback reuses
    # tls_cert/tls_key when they are set, and a loopback one stays plain HTTP.
    metrics_tls_cert: Path | None = None
    metrics_tls_key: Path | None = None
    # With HTTPS on, scrapers must also present a certificate signed by this CA bundle
    # (Prometheus: tls_config cert_file/key_file); unset, any client may read the metrics.
    metrics_tls_client_ca: Path | None = None
    metrics_volumes: str = ""
    # Resync bandwidth of each embedded agent, all its pairs together (bytes/s, 0: no limit);
    # a pair's own limit is set through the API (docs/monitoring.md, "Resync rate").
    resync_rate_bytes_per_s: int = 0
    # Log lines of every server-side process: "text" or "json" (logs.py).
    log_format: str = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The arguments only: load_settings() reads the file and the environment.
        return (init_settings,)

    @field_validator("azs", "volume_types", mode="before")
    @classmethod
    def _name_list(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            raw = raw.split(",")
        if isinstance(raw, list | tuple):
            values = tuple(str(item).strip() for item in raw if str(item).strip())
            if not values:
                raise ValueError("must list at least one value")
            return values
        return raw

    @field_validator("agent_urls", mode="before")
    @classmethod
    def _url_map(cls, raw: Any) -> Any:
        if not isinstance(raw, str):
            return raw
        result: dict[str, str] = {}
        for part in raw.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"each entry must look like AZ=URL; {part!r} does not")
            result[key.strip()] = value.strip()
        return result

    @field_validator(
        "tls_cert", "tls_key", "tls_ca", "agent_tls_cert", "agent_tls_key", "agent_tls_ca",
        "control_tls_cert", "control_tls_key", "control_tls_ca", "secrets_key_file",
        "metrics_tls_cert", "metrics_tls_key", "metrics_tls_client_ca",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _optional_path(cls, raw: Any) -> Any:
        return None if isinstance(raw, str) and not raw.strip() else raw

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("OPENEVS_TLS_CERT and OPENEVS_TLS_KEY go together: set both or neither")
        if (self.metrics_tls_cert is None) != (self.metrics_tls_key is None):
            raise ValueError(
                "OPENEVS_METRICS_TLS_CERT and OPENEVS_METRICS_TLS_KEY go together: set both or neither"
            )
        if self.metrics_tls_client_ca is not None and self.metrics_tls_files() is None:
            raise ValueError(
                "OPENEVS_METRICS_TLS_CLIENT_CA needs HTTPS on the /metrics listener: set"
                " OPENEVS_METRICS_TLS_CERT and OPENEVS_METRICS_TLS_KEY too"
            )
        for prefix in ("agent_tls", "control_tls"):
            trio = [getattr(self, f"{prefix}_{part}") for part in ("cert", "key", "ca")]
            if any(v is None for v in trio) and any(v is not None for v in trio):
                name = f"{ENV_PREFIX}{prefix.upper()}"
                raise ValueError(f"{name}_CERT, {name}_KEY and {name}_CA go together: set all three or none")
        return self

    @field_validator("witness")
    @classmethod
    def _witness(cls, value: str) -> str:
        value = value.strip()
        if value:
            _check_hostport(value)
        return value

    @model_validator(mode="after")
    def _witness_az_known(self) -> Settings:
        if self.witness_az and self.witness_az not in self.azs:
            raise ValueError(f"OPENEVS_WITNESS_AZ {self.witness_az!r} is not one of OPENEVS_AZS")
        return self

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError('must be "text" or "json"')
        return value

    @field_validator("listen")
    @classmethod
    def _hostport(cls, value: str) -> str:
        _check_hostport(value)
        return value

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
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://{host}:{port}"

    @property
    def witness_host_port(self) -> tuple[str, int] | None:
        """The standalone witness (OPENEVS_WITNESS), if one is set."""
        return _parse_hostport(self.witness, "OPENEVS_WITNESS") if self.witness else None

    def embedded_witness_port(self, index: int) -> int:
        """The witness port of the i-th AZ's embedded agent (0: ephemeral)."""
        if not self.witness_port_base or not self.nbd_port_base:
            return 0
        return self.witness_port_base + index

    def witness_dir(self, az: str) -> Path:
        return self.data_dir / "witness" / az

    def pool_dir(self, az: str) -> Path:
        return self.data_dir / "pools" / az

    def agent_dir(self) -> Path:
        return self.data_dir / "agents"

    def agent_tls_files(self) -> TlsFiles | None:
        """A standalone agent's own TLS files, or None (loopback or unix socket only)."""
        if self.agent_tls_cert is None or self.agent_tls_key is None or self.agent_tls_ca is None:
            return None
        return TlsFiles(ca=self.agent_tls_ca, cert=self.agent_tls_cert, key=self.agent_tls_key)

    def control_tls_files(self) -> TlsFiles | None:
        """The controller's client certificate for agents and witnesses, or None if it has none."""
        if self.control_tls_cert is not None and self.control_tls_key is not None and self.control_tls_ca:
            return TlsFiles(ca=self.control_tls_ca, cert=self.control_tls_cert, key=self.control_tls_key)
        default = files_for(self.pki_dir(), "controller")
        if default.cert.is_file() and default.key.is_file() and default.ca.is_file():
            return default
        return None

    def pki_dir(self) -> Path:
        """Where `openevs admin pki` keeps the deployment CA and certificates by default."""
        return self.data_dir / "pki"

    def metrics_tls_files(self) -> tuple[Path, Path] | None:
        """The certificate and key of the /metrics listener (None: plain HTTP): its own, else
        the public API's when the listener is not on loopback."""
        if self.metrics_tls_cert is not None and self.metrics_tls_key is not None:
            return self.metrics_tls_cert, self.metrics_tls_key
        if not self.metrics_listen or self.tls_cert is None or self.tls_key is None:
            return None
        host = _parse_hostport(self.metrics_listen, "OPENEVS_METRICS_LISTEN")[0]
        return None if is_loopback(host) else (self.tls_cert, self.tls_key)

    def sealing_key_path(self) -> Path:
        """The sealing key file (OPENEVS_SECRETS_KEY_FILE, default <data_dir>/pki/secrets.key)."""
        return self.secrets_key_file or self.pki_dir() / "secrets.key"


class _EnvironSource(EnvSettingsSource):
    """`OPENEVS_<KEY>` variables of a given mapping (os.environ or a test's dict).

    The variables are read the way pydantic-settings reads os.environ (names
    matched without regard to case); only where they come from differs.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from defaults, `openevs.toml` (or OPENEVS_CONFIG), env, overrides."""
    environ = os.environ if env is None else env
    config_path = Path(environ.get(f"{ENV_PREFIX}CONFIG", "openevs.toml"))
    try:
        from_file = TomlConfigSettingsSource(Settings, toml_file=config_path)()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path} is not valid TOML: {exc}") from None
    layers: list[tuple[dict[str, Any], str]] = [
        (from_file, f"{{}} in {config_path}"),
        (_EnvironSource(environ)(), ENV_PREFIX + "{}"),
        (dict(overrides), "{}"),
    ]
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer, label in layers:
        for key, value in layer.items():
            values[key] = value
            name = key.upper() if label.startswith(ENV_PREFIX) else key
            origin[key] = label.format(name)
    unknown = sorted(key for key in values if key not in Settings.model_fields)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(origin[key] for key in unknown)}")
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, values)) from None


def _describe(exc: ValidationError, origin: dict[str, str], values: dict[str, Any]) -> str:
    problems = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        if not key:  # a rule across settings names them itself
            problems.append(message)
            continue
        problems.append(f"{origin.get(key, key)}: {message} (got {values.get(key)!r})")
    return "; ".join(problems)
