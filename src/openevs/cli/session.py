"""The client's one I/O boundary: credentials, a Keystone token, HTTP calls.

Credentials come from a clouds.yaml (the one `openevs serve` writes) or from
the usual OS_* environment variables; nothing is cached on disk. Every
failure a user can cause or fix (no credentials, nothing listening, an API
fault body) becomes a `ClientError` whose message says what happened and
where; the commands turn it into exit code 1.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

DEFAULT_CLOUD = "openevs"
REQUEST_TIMEOUT_S = 30.0


class ClientError(Exception):
    """A failure to show the user as one clear message (exit code 1)."""

    def __init__(self, message: str, status: int | None = None, error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code


class NotFoundError(ClientError):
    """The API answered 404 (used by `--wait` on delete: the resource is gone)."""


@dataclass(frozen=True)
class Credentials:
    auth_url: str
    username: str
    password: str
    project_name: str | None = None
    project_id: str | None = None
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    region_name: str | None = None
    source: str = ""
    cacert: str | None = None  # CA bundle to verify an https auth_url with (default: the system's)
    verify: bool = True  # False: accept any server certificate (clouds.yaml `verify: false`)


# -- finding credentials -------------------------------------------------------


def clouds_yaml_candidates(env: dict[str, str] | None = None, cwd: Path | None = None) -> list[Path]:
    """Where a clouds.yaml is looked for, in order."""
    env = dict(os.environ) if env is None else env
    cwd = cwd or Path.cwd()
    paths: list[Path] = []
    if env.get("OS_CLIENT_CONFIG_FILE"):
        paths.append(Path(env["OS_CLIENT_CONFIG_FILE"]).expanduser())
    paths.append(cwd / "clouds.yaml")
    paths.append(Path.home() / ".config" / "openstack" / "clouds.yaml")
    paths.append(Path("/etc/openstack/clouds.yaml"))
    if env.get("OPENEVS_DATA_DIR"):
        paths.append(Path(env["OPENEVS_DATA_DIR"]).expanduser() / "clouds.yaml")
    paths.append(cwd / "openevs-data" / "clouds.yaml")
    return paths


def _from_cloud(path: Path, name: str, cloud: Any) -> Credentials:
    if not isinstance(cloud, dict) or not isinstance(cloud.get("auth"), dict):
        raise ClientError(f"cloud {name!r} in {path} has no 'auth' section")
    auth = cloud["auth"]
    missing = [k for k in ("auth_url", "username", "password") if not auth.get(k)]
    if missing:
        raise ClientError(f"cloud {name!r} in {path} lacks auth.{', auth.'.join(missing)}")
    return Credentials(
        auth_url=str(auth["auth_url"]),
        username=str(auth["username"]),
        password=str(auth["password"]),
        project_name=auth.get("project_name"),
        project_id=auth.get("project_id"),
        user_domain_name=str(auth.get("user_domain_name") or auth.get("domain_name") or "Default"),
        project_domain_name=str(auth.get("project_domain_name") or auth.get("domain_name") or "Default"),
        region_name=cloud.get("region_name"),
        source=f"cloud {name!r} in {path}",
        cacert=str(cloud["cacert"]) if cloud.get("cacert") else None,
        verify=cloud.get("verify", True) is not False,
    )


def _from_env(env: dict[str, str]) -> Credentials | None:
    if not env.get("OS_AUTH_URL"):
        return None
    missing = [k for k in ("OS_USERNAME", "OS_PASSWORD") if not env.get(k)]
    if missing:
        raise ClientError(f"OS_AUTH_URL is set but {' and '.join(missing)} is not")
    return Credentials(
        auth_url=env["OS_AUTH_URL"],
        username=env["OS_USERNAME"],
        password=env["OS_PASSWORD"],
        project_name=env.get("OS_PROJECT_NAME") or env.get("OS_TENANT_NAME"),
        project_id=env.get("OS_PROJECT_ID") or env.get("OS_TENANT_ID"),
        user_domain_name=env.get("OS_USER_DOMAIN_NAME") or "Default",
        project_domain_name=env.get("OS_PROJECT_DOMAIN_NAME") or "Default",
        region_name=env.get("OS_REGION_NAME"),
        source="OS_* environment variables",
        cacert=env.get("OS_CACERT") or None,
    )


def find_credentials(env: dict[str, str] | None = None, cwd: Path | None = None) -> Credentials:
    """OS_CLOUD / OS_CLIENT_CONFIG_FILE first, then OS_AUTH_URL & co, then known clouds.yaml places."""
    env = dict(os.environ) if env is None else env
    explicit = bool(env.get("OS_CLOUD") or env.get("OS_CLIENT_CONFIG_FILE"))
    if not explicit:
        from_env = _from_env(env)
        if from_env is not None:
            return from_env
    name = env.get("OS_CLOUD") or DEFAULT_CLOUD
    looked = clouds_yaml_candidates(env, cwd)
    for path in looked:
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ClientError(f"cannot read {path}: {exc}") from exc
        clouds = data.get("clouds") if isinstance(data, dict) else None
        if isinstance(clouds, dict) and name in clouds:
            return _from_cloud(path, name, clouds[name])
    if explicit:
        from_env = _from_env(env)
        if from_env is not None:
            return from_env
    where = "\n".join(f"  {p}" for p in looked)
    raise ClientError(
        f"no credentials found: no cloud {name!r} in any clouds.yaml looked at:\n{where}\n"
        "and OS_AUTH_URL is not set.\n"
        "`openevs serve` writes <data_dir>/clouds.yaml; point at it with\n"
        "  export OS_CLIENT_CONFIG_FILE=openevs-data/clouds.yaml OS_CLOUD=openevs\n"
        "or set OS_AUTH_URL, OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME."
    )


# -- talking to the API ---------------------------------------------------------


def fault_message(response: httpx.Response) -> tuple[str, str | None]:
    """The message and error_code of an OpenStack fault body (or the raw text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and len(body) == 1:
        (inner,) = body.values()
        if isinstance(inner, dict) and "message" in inner:
            code = inner.get("error_code")
            return str(inner["message"]), str(code) if code else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # Keystone style
        return str(body["error"].get("message", response.text)), None
    text = response.text.strip()[:500]
    return text or response.reason_phrase, None


def _endpoint(catalog: list[dict[str, Any]], kind: str, region: str | None) -> str | None:
    for service in catalog:
        if service.get("type") != kind:
            continue
        endpoints = [e for e in service.get("endpoints", []) if e.get("interface") == "public"]
        for ep in endpoints:
            if region is None or region in (ep.get("region"), ep.get("region_id")):
                return str(ep["url"]).rstrip("/")
        if endpoints:
            return str(endpoints[0]["url"]).rstrip("/")
    return None


def tls_verification(creds: Credentials) -> ssl.SSLContext | bool:
    """How the client checks an https server: against creds.cacert, the system's CAs, or not at all."""
    if not creds.verify:
        return False
    if creds.cacert is None:
        return True
    try:
        return ssl.create_default_context(cafile=Path(creds.cacert).expanduser())
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot use the CA bundle {creds.cacert} ({creds.source}): {exc}") from exc


class ApiSession:
    """A scoped token plus the volumev2, compute and evs endpoints of its catalog."""

    def __init__(self, creds: Credentials, client: httpx.Client | None = None) -> None:
        self.creds = creds
        self.client = client or httpx.Client(timeout=REQUEST_TIMEOUT_S, verify=tls_verification(creds))
        self.token = ""
        self.project_id = ""
        self.endpoints: dict[str, str] = {}

    @property
    def identity_url(self) -> str:
        url = self.creds.auth_url.rstrip("/")
        return url if url.endswith("/v3") else url + "/v3"

    def login(self) -> None:
        c = self.creds
        project: dict[str, Any]
        if c.project_id:
            project = {"id": c.project_id}
        else:
            project = {"name": c.project_name or c.username, "domain": {"name": c.project_domain_name}}
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": c.username,
                            "domain": {"name": c.user_domain_name},
                            "password": c.password,
                        }
                    },
                },
                "scope": {"project": project},
            }
        }
        url = f"{self.identity_url}/auth/tokens"
        response = self._send("POST", url, json=body)
        if response.status_code != 201:
            message, code = fault_message(response)
            raise ClientError(
                f"login as {c.username!r} ({c.source}) failed: {message}",
                response.status_code, code,
            )
        token = response.json()["token"]
        self.token = response.headers.get("X-Subject-Token", "")
        self.project_id = str(token["project"]["id"])
        catalog = token.get("catalog") or []
        for kind in ("volumev2", "compute", "evs"):  # evs: the v3 endpoint (snapshot rollback)
            found = _endpoint(catalog, kind, c.region_name)
            if found:
                self.endpoints[kind] = found

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            return self.client.request(method, url, **kw)
        except httpx.ConnectError as exc:
            raise ClientError(
                f"cannot connect to {url}: {exc or 'connection refused'}; is `openevs serve` running?"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ClientError(f"{method} {url} timed out after {REQUEST_TIMEOUT_S:.0f}s") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"{method} {url} failed: {exc}") from exc

    def url(self, service: str, path: str) -> str:
        if not self.token:
            self.login()
        base = self.endpoints.get(service)
        if base is None:
            raise ClientError(f"the service catalog has no public {service} endpoint")
        return base + path

    def request(self, method: str, service: str, path: str, json: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        """One API call; returns the decoded JSON body (None when empty). Faults raise ClientError."""
        url = self.url(service, path)
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        response = self._send(method, url, json=json, params=clean or None,
                              headers={"X-Auth-Token": self.token})
        if response.status_code >= 400:
            message, code = fault_message(response)
            kind = NotFoundError if response.status_code == 404 else ClientError
            raise kind(message, response.status_code, code)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def volume(self, method: str, path: str, **kw: Any) -> Any:
        return self.request(method, "volumev2", path, **kw)

    def compute(self, method: str, path: str, **kw: Any) -> Any:
        return self.request(method, "compute", path, **kw)

    def close(self) -> None:
        self.client.close()


def open_session() -> ApiSession:
    """A logged-in session from the environment's credentials."""
    session = ApiSession(find_credentials())
    try:
        session.login()
    except BaseException:
        session.close()
        raise
    return session
