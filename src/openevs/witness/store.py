"""The witness's durable records: one small file per arbitration unit.

`<state>/records/<key>.json` holds `{"key", "epoch", "holder"}`. A record is
replaced atomically (temporary file, fsync, rename, fsync the directory)
before the grant that changed it is answered, so after a crash the witness
knows every epoch it ever granted. Renewing a lease writes nothing: leases
live in memory (see arbiter.py for why that is safe across a restart).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from openevs.domain.errors import OpenEvsError
from openevs.witness.arbiter import Record

_SUFFIX = ".json"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class StoreError(OpenEvsError):
    """The state directory cannot be read or written."""


def _file_name(key: str) -> str:
    kind, _, ident = key.partition(":")
    return f"{kind}-{_SAFE.sub('_', ident)}{_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "records"
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create {self.root}: {exc.strerror or exc}") from exc

    def load(self) -> list[Record]:
        records = []
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            if path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)  # a crash in the middle of a save
                continue
            try:
                body = json.loads(path.read_text())
                records.append(Record(str(body["key"]), int(body["epoch"]), str(body["holder"])))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"cannot read witness record {path}: {exc}") from exc
        return records

    def save(self, record: Record) -> None:
        name = _file_name(record.key)
        path, tmp = self.root / name, self.root / f".tmp-{name}"
        data = json.dumps({"key": record.key, "epoch": record.epoch, "holder": record.holder}).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            _fsync_dir(self.root)
        except OSError as exc:
            raise StoreError(f"cannot save witness record {path}: {exc.strerror or exc}") from exc

    def remove(self, key: str) -> None:
        path = self.root / _file_name(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot remove {path}: {exc.strerror or exc}") from exc
        _fsync_dir(self.root)
