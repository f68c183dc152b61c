"""What an NBD export is to the server, and the file-backed implementation.

`Export` is the interface the server talks to. Reads and extent queries are
synchronous (page-cache speed, no task per request); writes are coroutines
because a mirror wraps them and forwards to a peer before returning.

`FileExport` keeps ONE file descriptor shared by every connection to the
file, so a FLUSH on any connection persists the writes of all of them (this
is what makes CAN_MULTI_CONN safe). Writes are acknowledged once `pwrite`
returned (data in the page cache); FUA and FLUSH reach stable storage with
`fdatasync`, run in a thread so the event loop is not blocked.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
from typing import Protocol, runtime_checkable

from .constants import STATE_HOLE, STATE_ZERO

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_ZERO_CHUNK_BYTES = 1024 * 1024
_MAX_EXTENTS = 1024


@runtime_checkable
class Export(Protocol):
    """The backend of one export.

    Optional extras the server uses when present (FileExport has all three):
    - `eager_writes = True`: the write-like coroutines are started outside
      any Task and, if they suspend, stepped on by the callbacks of the
      futures they await (eager.py EagerRun: no Task per write at all). Only
      for code that never needs a current task: no `asyncio.timeout()` or
      `current_task()` anywhere on the write path;
    - `readinto(offset, buf: memoryview) -> None` fills `buf` (zeroes past the
      end), so large reads land in pooled buffers instead of new bytes;
    - `fileno() -> int`: large reads are sent straight from that descriptor
      with sendfile(2). Offer it only if reading that descriptor gives what
      `pread` would, and keep it open until every connection to the export
      has been dropped.
    """

    @property
    def size_bytes(self) -> int: ...

    @property
    def read_only(self) -> bool: ...

    def pread(self, offset: int, length: int) -> bytes: ...

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        """Write and return once readable by every connection (persisted if `fua`).

        `data` may be a pooled buffer that is reused once this returns: copy
        what must outlive the call."""
        ...

    async def write_zeroes(
        self, offset: int, length: int, fua: bool, may_trim: bool, fast_only: bool = False
    ) -> None:
        """Zero a range. With `fast_only`, raise OSError(EOPNOTSUPP) instead of
        falling back to writing zeroes (NBD_CMD_FLAG_FAST_ZERO)."""
        ...

    async def trim(self, offset: int, length: int) -> None: ...

    async def flush(self) -> None: ...

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        """(length, flags) from `offset`, flags in NBD base:allocation terms."""
        ...


def _load_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.fallocate64
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


_fallocate = _load_fallocate()


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); raises OSError (EOPNOTSUPP when unavailable)."""
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    if _fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class FileExport:
    """An export backed by a regular (usually sparse) file."""

    eager_writes = True  # a write to the page cache never suspends; flush uses to_thread

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self._read_only = read_only
        self._fd = os.open(self.path, os.O_RDONLY if read_only else os.O_RDWR)
        self._can_punch = True
        self._can_zero_range = True
        self._flush_lock = asyncio.Lock()
        self._flush_calls = 0  # flush() calls so far
        self._flushed_calls = 0  # calls covered by an fdatasync that began after them

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        return self._fd

    @property
    def size_bytes(self) -> int:
        return os.fstat(self._fd).st_size

    @property
    def read_only(self) -> bool:
        return self._read_only

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # short file (shrunk under us) or a short read
            data += self._pread_rest(offset + len(data), length - len(data))
        return data

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill all of `buf` from `offset` (zeroes past the end of the file)."""
        while buf:
            n = os.preadv(self._fd, [buf], offset)
            if n == 0:
                buf[:] = bytes(len(buf))
                return
            buf = buf[n:]
            offset += n

    def _pread_rest(self, offset: int, length: int) -> bytes:
        parts = []
        while length:
            chunk = os.pread(self._fd, length, offset)
            if not chunk:
                parts.append(bytes(length))
                break
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(parts)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        # Inline even when large: a worker thread costs more in GIL hand-offs than the
        # copy into the page cache it would overlap (measured: ~2x server CPU per MiB).
        self._pwrite_all(offset, data)
        if fua:
            await self.flush()

    def _pwrite_all(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n

    async def write_zeroes(
        self, offset: int, length: int, fua: bool, may_trim: bool, fast_only: bool = False
    ) -> None:
        if not self._zero_fast(offset, length, may_trim):
            if fast_only:
                raise OSError(errno.EOPNOTSUPP, "no fast way to zero this range")
            zeros = bytes(min(length, _ZERO_CHUNK_BYTES))
            end = offset + length
            while offset < end:
                n = min(len(zeros), end - offset)
                self._pwrite_all(offset, memoryview(zeros)[:n])
                offset += n
        if fua:
            await self.flush()

    def _zero_fast(self, offset: int, length: int, may_trim: bool) -> bool:
        """Zero with fallocate if the filesystem can; False if it cannot."""
        attempts = []
        if may_trim and self._can_punch:
            attempts.append(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
        if self._can_zero_range:
            attempts.append(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
        for mode in attempts:
            try:
                fallocate(self._fd, mode, offset, length)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                if mode & FALLOC_FL_PUNCH_HOLE:
                    self._can_punch = False
                else:
                    self._can_zero_range = False
        return False

    async def trim(self, offset: int, length: int) -> None:
        if not self._can_punch:
            return  # trim is advisory
        try:
            fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            self._can_punch = False

    async def flush(self) -> None:
        """fdatasync, shared (group commit): the calls that come while one runs are all
        covered by the next one, which begins after every one of them was made."""
        self._flush_calls += 1
        call = self._flush_calls
        async with self._flush_lock:
            if self._flushed_calls >= call:
                return  # an fdatasync that began after this call covered it
            covered = self._flush_calls
            await asyncio.to_thread(os.fdatasync, self._fd)
            self._flushed_calls = max(self._flushed_calls, covered)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        end = offset + length
        result: list[tuple[int, int]] = []
        pos = offset
        while pos < end and len(result) < _MAX_EXTENTS:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                    raise
                data = end
            if data > pos:
                hole_end = min(data, end)
                result.append((hole_end - pos, STATE_HOLE | STATE_ZERO))
                pos = hole_end
                continue
            hole = os.lseek(self._fd, pos, os.SEEK_HOLE)
            data_end = min(hole, end)
            result.append((data_end - pos, 0))
            pos = data_end
        return result


class MemoryExport:
    """A sparse in-memory export (tests, tools): chunks exist only where written.

    Implements the required part of `Export` (no `readinto`/`fileno`); its
    coroutines never suspend, so it allows eager writes.
    """

    eager_writes = True

    def __init__(self, size_bytes: int, read_only: bool = False, chunk_bytes: int = 65536) -> None:
        self._size = size_bytes
        self._read_only = read_only
        self._chunk = chunk_bytes
        self._chunks: dict[int, bytearray] = {}
        self.flushes = 0

    @property
    def size_bytes(self) -> int:
        return self._size

    def resize(self, size_bytes: int) -> None:
        for index in [i for i in self._chunks if i * self._chunk >= size_bytes]:
            del self._chunks[index]
        self._size = size_bytes

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _spans(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """(chunk index, start within chunk, count) covering the range."""
        spans = []
        while length > 0:
            index, start = divmod(offset, self._chunk)
            count = min(length, self._chunk - start)
            spans.append((index, start, count))
            offset += count
            length -= count
        return spans

    def pread(self, offset: int, length: int) -> bytes:
        out = bytearray()
        for index, start, count in self._spans(offset, length):
            chunk = self._chunks.get(index)
            out += chunk[start : start + count] if chunk is not None else bytes(count)
        return bytes(out)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        if self._read_only:
            raise OSError(errno.EROFS, "read-only export")
        view = memoryview(data)
        for index, start, count in self._spans(offset, len(view)):
            chunk = self._chunks.setdefault(index, bytearray(self._chunk))
            chunk[start : start + count] = view[:count]
            view = view[count:]

    async def write_zeroes(
        self, offset: int, length: int, fua: bool, may_trim: bool, fast_only: bool = False
    ) -> None:
        for index, start, count in self._spans(offset, length):
            chunk = self._chunks.get(index)
            if chunk is None:
                continue
            if count == self._chunk:
                del self._chunks[index]
            else:
                chunk[start : start + count] = bytes(count)

    async def trim(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length, False, True)

    async def flush(self) -> None:
        self.flushes += 1

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [
            (count, 0 if index in self._chunks else STATE_HOLE | STATE_ZERO)
            for index, _start, count in self._spans(offset, length)
        ]
