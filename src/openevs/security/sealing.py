"""Secrets the controller must hand out again, sealed with a deployment key before
they reach the database: users' NBD export names and the replication link exports.

The controller cannot keep these hashed: `os-initialize_connection` returns an
attachment's export name again, and after an agent restart the controller
re-grants every export and re-sends every link export. So each value is
encrypted (AES-256-GCM) with the deployment's *sealing key*, a file that is
not in the database: a copy of the database alone opens no disk.

The key file (default `<data_dir>/pki/secrets.key`, `OPENEVS_SECRETS_KEY_FILE`)
holds one or more keys, one a line, as base64 of 32 random bytes ('#' starts a
comment). The first key seals; every key opens, which is what a rotation
needs (docs/security.md, "The sealing key"). Every controller process of a
deployment (serve, or api and worker on several hosts) reads the same file.

A sealed value reads `s1.<kid>.<base64url(nonce | ciphertext | tag)>`, where
`kid` is the first 8 hex digits of the key's SHA-256 (which key sealed it,
without saying anything of the key). The value's purpose (`export`, `link`)
is the associated data, so a sealed link export cannot be passed off as an
export name.

Rules this module keeps:
- the key file is created with mode 0600 from its first byte and replaced
  atomically (pki.write_secret_file);
- the file is re-read when it changes (inode, size, mtime), so a rotation
  needs no restart; a file that does not parse never replaces working keys;
- a value that does not open (wrong key, altered, not sealed) raises
  `SealError` naming only the key id, never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openevs.security import SecurityError
from openevs.security.pki import write_secret_file

log = logging.getLogger(__name__)

PREFIX = "s1"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE = "secrets.key"
PURPOSES = ("export", "link")


class SealError(SecurityError):
    """A sealed value or a key file cannot be used; the message says which key, never a secret."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def parse_keys(text: str) -> list[bytes]:
    """The keys of a key file, in order; SealError if a line is not a key."""
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise SealError(f"line {number} of the key file is not a base64 {KEY_BYTES}-byte key")
        keys.append(key)
    if not keys:
        raise SealError("the key file holds no key")
    return keys


def format_keys(keys: list[bytes]) -> str:
    lines = ["# openevs sealing keys: the first seals, every one opens (docs/security.md)"]
    lines += [f"{base64.b64encode(k).decode()}  # kid {key_id(k)}" for k in keys]
    return "\n".join(lines) + "\n"


def write_keys(path: Path, keys: list[bytes]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret_file(path, format_keys(keys).encode())


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Sealer:
    """Seals and opens the controller's secrets with the keys of one key file (or of memory)."""

    def __init__(self, keys: list[bytes], path: Path | None = None) -> None:
        if not keys:
            raise SealError("no sealing key")
        self.path = path
        self._keys = list(keys)
        self._stamp = _stamp(path) if path is not None else (0, 0, 0)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SealError(f"cannot read the sealing key file {path}: {exc}") from exc
        try:
            return cls(parse_keys(text), path)
        except SealError as exc:
            raise SealError(f"{path}: {exc.message}") from exc

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[Sealer, bool]:
        """The sealer of the key file, creating the file with one new key if there is none."""
        if path.exists():
            return cls.from_file(path), False
        write_keys(path, [new_key()])
        return cls.from_file(path), True

    @classmethod
    def ephemeral(cls) -> Sealer:
        """A sealer with a key held in memory only (tests, and nothing that restarts)."""
        return cls([new_key()])

    @property
    def keys(self) -> list[bytes]:
        self._reload()
        return list(self._keys)

    @property
    def kids(self) -> list[str]:
        return [key_id(k) for k in self.keys]

    @property
    def current_kid(self) -> str:
        return self.kids[0]

    def _reload(self) -> None:
        if self.path is None:
            return
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                fresh = Sealer.from_file(self.path)
            except SealError as exc:
                log.error("sealing keys: keeping the previous ones: %s", exc.message)
                return
            self._keys = fresh._keys
            log.info("sealing keys re-read from %s: %s", self.path, ", ".join(key_id(k) for k in self._keys))

    def seal(self, plain: str, purpose: str) -> str:
        key = self.keys[0]
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plain.encode(), purpose.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{PREFIX}.{key_id(key)}.{body}"

    def open(self, sealed: str, purpose: str) -> str:
        prefix, kid, body = _split(sealed)
        if prefix != PREFIX:
            raise SealError("the value is not sealed")
        for key in self.keys:
            if key_id(key) != kid:
                continue
            try:
                raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
                plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], purpose.encode())
                return plain.decode()
            except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError) as exc:
                raise SealError(f"a value sealed with key {kid} does not open (altered?)") from exc
        raise SealError(f"a value is sealed with key {kid[:8]}, which the sealing key file does not hold")

    def reseal(self, sealed: str, purpose: str) -> str:
        """The value sealed with the first key (unchanged if it already is)."""
        if kid_of(sealed) == self.current_kid:
            return sealed
        return self.seal(self.open(sealed, purpose), purpose)


def _split(sealed: str) -> tuple[str, str, str]:
    parts = sealed.split(".", 2)
    if len(parts) != 3:
        return ("", "", "")
    return parts[0], parts[1], parts[2]


def kid_of(sealed: str) -> str:
    """Which key sealed a value ("" if it is not sealed)."""
    prefix, kid, _ = _split(sealed)
    return kid if prefix == PREFIX else ""


def is_sealed(value: str) -> bool:
    return bool(kid_of(value))
