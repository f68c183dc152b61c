"""Volumes of one AZ as sparse files `<root>/<volume_id>.img`.

Rules this module keeps:

- a volume appears under its real name only once it is complete: it is made
  as `<root>/.tmp-<id>`, sized, fsynced, then renamed, and the directory is
  fsynced; leftovers of a crash are removed when the pool is opened;
- every operation costs the same for a 1 GiB and a 1 TiB volume: sizes are
  set with ftruncate (no byte is written) and allocation is read from
  `st_blocks`, extents from SEEK_DATA/SEEK_HOLE;
- a volume id is a plain token (letters, digits, `-`, `_`), so it can never
  name a path outside the pool.

Errors are `PoolError`s carrying a short `reason` that control.py sends to
the controller (`not_found`, `invalid_input`, `conflict`, `no_space`,
`io_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openevs.contract import ErrorReason, VolumeInfo
from openevs.domain.errors import OpenEvsError

SECTOR_BYTES = 512
# Largest size the agent accepts: 64 TiB, far above any EVS volume (32 TiB).
MAX_VOLUME_BYTES = 64 << 40
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_SUFFIX = ".img"
TMP_PREFIX = ".tmp-"


class PoolError(OpenEvsError):
    """A pool operation failed; `reason` is the short code sent to the controller."""

    reason = ErrorReason.IO_ERROR


class VolumeNotFound(PoolError):
    reason = ErrorReason.NOT_FOUND


class InvalidVolumeRequest(PoolError):
    reason = ErrorReason.INVALID_INPUT


class VolumeConflict(PoolError):
    reason = ErrorReason.CONFLICT


class PoolNoSpace(PoolError):
    reason = ErrorReason.NO_SPACE


class PoolIOError(PoolError):
    reason = ErrorReason.IO_ERROR


def _info(volume_id: str, st: os.stat_result) -> VolumeInfo:
    return VolumeInfo(volume_id=volume_id, size_bytes=st.st_size, allocated_bytes=st.st_blocks * SECTOR_BYTES)


def validate_volume_id(volume_id: str) -> str:
    if not isinstance(volume_id, str) or not _ID_RE.fullmatch(volume_id):
        raise InvalidVolumeRequest(
            f"invalid volume id {volume_id!r}: use 1-128 letters, digits, '-' or '_'"
        )
    return volume_id


def validate_size(size_bytes: int) -> int:
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int):
        raise InvalidVolumeRequest(f"size_bytes must be an integer, got {size_bytes!r}")
    if size_bytes <= 0 or size_bytes % SECTOR_BYTES:
        raise InvalidVolumeRequest(
            f"size_bytes must be a positive multiple of {SECTOR_BYTES}, got {size_bytes}"
        )
    if size_bytes > MAX_VOLUME_BYTES:
        raise InvalidVolumeRequest(
            f"size_bytes {size_bytes} exceeds the maximum of {MAX_VOLUME_BYTES}"
        )
    return size_bytes


def _translate(exc: OSError, what: str) -> PoolError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PoolNoSpace(f"{what}: no space left in the pool ({exc.strerror})")
    if exc.errno == errno.EFBIG:
        return InvalidVolumeRequest(f"{what}: size too large for the pool's filesystem")
    return PoolIOError(f"{what}: {exc.strerror or exc}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace `path` by `data` (mode 0600): a temporary file, fsync, rename, fsync the
    directory, so a crash leaves the old file or the new one, never a torn one.

    `sync_dir=False` leaves the directory fsync to the caller (a group commit of
    many files: one directory fsync for all, before any of them is acknowledged)."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        raise PoolIOError(f"cannot save {path}: {exc.strerror or exc}") from exc


SYNC_CONCURRENCY = 32  # fsyncs in flight at once in write_atomic_many (the journal commits them together)


def write_atomic_many(files: list[tuple[Path, bytes]]) -> None:
    """`write_atomic` of many files as one group commit: every temporary file written,
    then fsynced a few at a time in threads (the filesystem's journal commits the
    concurrent fsyncs together instead of one commit per file), then each renamed
    in order, then one fsync per directory. A crash leaves each file old or new,
    never torn, as with `write_atomic`; the caller acknowledges nothing before this
    returns. A path given twice gets its last data."""
    last = {path: data for path, data in files}  # the last data of each path, in first-seen order
    fds: dict[Path, int] = {}
    try:
        try:
            for path, data in last.items():
                tmp = path.with_name(f".tmp-{path.name}")
                fds[path] = fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            with ThreadPoolExecutor(max_workers=SYNC_CONCURRENCY) as pool:
                for _ in pool.map(os.fsync, fds.values()):
                    pass
        finally:
            for fd in fds.values():
                os.close(fd)
        for path in last:
            os.rename(path.with_name(f".tmp-{path.name}"), path)
        for directory in {path.parent for path in last}:
            fsync_dir(directory)
    except OSError as exc:
        for path in fds:
            with contextlib.suppress(OSError):
                path.with_name(f".tmp-{path.name}").unlink()
        raise PoolIOError(f"cannot save {len(last)} files in {next(iter(last)).parent}: "
                          f"{exc.strerror or exc}") from exc  # fmt: skip


def data_extents(
    path_or_fd: str | os.PathLike[str] | int, offset: int, length: int
) -> list[tuple[int, int]]:
    """Allocated (data) ranges of a file within [offset, offset+length), as (offset, length).

    Uses SEEK_DATA/SEEK_HOLE, so the cost depends on the number of extents,
    not on the size. A filesystem without hole support reports everything
    as data, which is always safe for a copy.
    """
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be >= 0")
    if isinstance(path_or_fd, int):
        return _extents_fd(path_or_fd, offset, length)
    fd = os.open(path_or_fd, os.O_RDONLY)
    try:
        return _extents_fd(fd, offset, length)
    finally:
        os.close(fd)


def _extents_fd(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    end = min(offset + length, os.fstat(fd).st_size)
    extents: list[tuple[int, int]] = []
    pos = offset
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after pos
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(offset, end - offset)] if end > offset else []
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        if extents and extents[-1][0] + extents[-1][1] == data:
            start, _ = extents.pop()
            extents.append((start, hole - start))
        else:
            extents.append((data, hole - data))
        pos = hole
    return extents


class FileVolumePool:
    """The volumes of one AZ, each a sparse file in `root`. Methods are blocking."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        removed = False
        for entry in self.root.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                entry.unlink(missing_ok=True)
                removed = True
        if removed:
            fsync_dir(self.root)

    def path(self, volume_id: str) -> Path:
        return self.root / f"{validate_volume_id(volume_id)}{_SUFFIX}"

    def exists(self, volume_id: str) -> bool:
        return self.path(volume_id).is_file()

    def info(self, volume_id: str) -> VolumeInfo:
        try:
            st = os.stat(self.path(volume_id))
        except FileNotFoundError:
            raise VolumeNotFound(f"volume {volume_id} not found") from None
        except OSError as exc:
            raise _translate(exc, f"stat volume {volume_id}") from exc
        return _info(volume_id, st)

    def count(self) -> int:
        """How many volumes the pool holds (names only: no stat per volume)."""
        with os.scandir(self.root) as entries:
            return sum(
                1 for e in entries
                if e.name.endswith(_SUFFIX) and _ID_RE.fullmatch(e.name[: -len(_SUFFIX)])
            )  # fmt: skip

    def list(self) -> list[VolumeInfo]:
        result = []
        for entry in sorted(self.root.glob(f"*{_SUFFIX}")):
            volume_id = entry.name[: -len(_SUFFIX)]
            if not _ID_RE.fullmatch(volume_id):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:  # deleted while listing
                continue
            result.append(_info(volume_id, st))
        return result

    def create(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        """Create a sparse volume; an existing volume of the same size is success."""
        final = self.path(volume_id)
        validate_size(size_bytes)
        if final.exists():
            return self._existing_same_size(volume_id, size_bytes)
        tmp = self.root / f"{TMP_PREFIX}{volume_id}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, size_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            if final.exists():  # a concurrent create won the race
                tmp.unlink(missing_ok=True)
                return self._existing_same_size(volume_id, size_bytes)
            os.rename(tmp, final)
            fsync_dir(self.root)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _translate(exc, f"create volume {volume_id}") from exc
        return self.info(volume_id)

    def _existing_same_size(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        info = self.info(volume_id)
        if info.size_bytes != size_bytes:
            raise VolumeConflict(
                f"volume {volume_id} already exists with size {info.size_bytes}, not {size_bytes}"
            )
        return info

    def grow(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        """Grow to size_bytes; the current size is success; shrinking is refused."""
        path = self.path(volume_id)
        validate_size(size_bytes)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise VolumeNotFound(f"volume {volume_id} not found") from None
        except OSError as exc:
            raise _translate(exc, f"grow volume {volume_id}") from exc
        try:
            current = os.fstat(fd).st_size
            if size_bytes < current:
                raise InvalidVolumeRequest(
                    f"cannot shrink volume {volume_id} from {current} to {size_bytes} bytes"
                )
            if size_bytes > current:
                os.ftruncate(fd, size_bytes)
                os.fsync(fd)
        except OSError as exc:
            raise _translate(exc, f"grow volume {volume_id}") from exc
        finally:
            os.close(fd)
        return self.info(volume_id)

    def delete(self, volume_id: str) -> None:
        """Remove the volume; an absent volume is success."""
        path = self.path(volume_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _translate(exc, f"delete volume {volume_id}") from exc
        fsync_dir(self.root)

    def capacity(self) -> tuple[int, int]:
        """(capacity_bytes, free_bytes) of the filesystem holding the pool."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
