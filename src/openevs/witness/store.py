"""The witness's durable records: an append-only journal with one fsync per batch.

`<state>/records.log` holds one JSON line per change, `{"key", "epoch",
"holder"}`; when a key appears more than once the last line wins. The lines
of one request's grants are appended and fsynced together before any of
them is answered, so after a crash the witness knows every epoch it ever
granted. A torn last line (a crash in the middle of an append: its grants
were never answered) is ignored. When the journal holds many more lines
than live records it is compacted: the live records are written to a new
file, fsynced, renamed over the journal, and the directory fsynced.
Renewing a lease writes nothing: leases live in memory (arbiter.py says why
that is safe across a restart).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from openevs.domain.errors import OpenEvsError
from openevs.witness.arbiter import Record

JOURNAL = "records.log"
COMPACT_MIN_LINES = 4096  # never compact a journal shorter than this


class StoreError(OpenEvsError):
    """The state directory cannot be read or written."""


def _line(record: Record) -> bytes:
    return json.dumps({"key": record.key, "epoch": record.epoch, "holder": record.holder}).encode() + b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self.path = self.root / JOURNAL
        self._live: dict[str, Record] = {}
        self._lines = 0
        self._fd = -1
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create {self.root}: {exc.strerror or exc}") from exc

    def load(self) -> list[Record]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the journal ends with a newline
        for number, line in enumerate(lines, 1):
            try:
                body = json.loads(line)
                record = Record(str(body["key"]), int(body["epoch"]), str(body["holder"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"{self.path} line {number} is not a record: {exc}") from exc
            self._live[record.key] = record
        self._lines = len(lines)
        self._open(truncate_to=len(data) - len(torn))
        return list(self._live.values())

    def _open(self, truncate_to: int) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.ftruncate(self._fd, truncate_to)  # drop a torn last line
            os.lseek(self._fd, 0, os.SEEK_END)
            os.fsync(self._fd)
            _fsync_dir(self.root)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc.strerror or exc}") from exc

    def save(self, records: Iterable[Record]) -> None:
        """Append these records and make them durable (one fsync for all of them)."""
        batch = list(records)
        if not batch:
            return
        if self._fd < 0:
            raise StoreError("the record store is not loaded")
        data = b"".join(_line(r) for r in batch)
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fdatasync(self._fd)
        except OSError as exc:
            # A short write must not leave half a line for the next append to follow.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
                os.lseek(self._fd, end, os.SEEK_SET)
            raise StoreError(f"cannot save witness records to {self.path}: {exc.strerror or exc}") from exc
        for record in batch:
            self._live[record.key] = record
        self._lines += len(batch)
        if self._lines > max(COMPACT_MIN_LINES, 4 * len(self._live)):
            self.compact()

    def forget(self, keys: Iterable[str]) -> None:
        """Drop records of units that are gone, at the next compaction."""
        for key in keys:
            self._live.pop(key, None)
        self.compact()

    def compact(self) -> None:
        tmp = self.root / f".tmp-{JOURNAL}"
        data = b"".join(_line(r) for r in self._live.values())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            _fsync_dir(self.root)
        except OSError as exc:
            raise StoreError(f"cannot compact {self.path}: {exc.strerror or exc}") from exc
        self.close()
        self._lines = len(self._live)
        self._open(truncate_to=len(data))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
