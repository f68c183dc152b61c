"""Buffers of the NBD I/O layers: a pool of large buffers and the send queue.

Large read and write payloads (≥ 64 KiB) live in pooled bytearrays, so the
hot path neither allocates nor page-faults megabytes per request. A pooled
buffer goes back to the pool only once nothing uses it any more: for a write
payload when the export's write returned, for read data once the send queue
has pushed its last byte into the socket. The client sends its requests
through a `SendQueue` too (payloads queued by reference, never copied).
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tls_stream import TlsStream

Buffer = bytes | bytearray | memoryview

POOL_MIN_BYTES = 64 * 1024
_IOV_MAX = 512


class BufferPool:
    """Free lists of bytearrays by power-of-two size class; bounded in bytes kept."""

    def __init__(self, max_kept_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_kept_bytes = max_kept_bytes
        self._kept_bytes = 0
        self._free: dict[int, list[bytearray]] = {}

    @staticmethod
    def _size_class(length: int) -> int:
        return max(POOL_MIN_BYTES, 1 << (length - 1).bit_length())

    def get(self, length: int) -> memoryview:
        """A writable view of exactly `length` bytes (contents undefined)."""
        size = self._size_class(length)
        free = self._free.get(size)
        if free:
            buf = free.pop()
            self._kept_bytes -= size
        else:
            buf = bytearray(size)
        return memoryview(buf)[:length]

    def put(self, view: memoryview) -> None:
        """Return a view from `get()`; the caller must hold no other view of it."""
        buf = view.obj
        try:
            view.release()
        except BufferError:
            return
        if not isinstance(buf, bytearray):
            return
        try:  # a resize fails while any view (a slice, say) still exports the buffer
            buf.append(0)
            buf.pop()
        except BufferError:
            return  # still in use somewhere: let the GC have it
        size = len(buf)
        if size != self._size_class(size) or self._kept_bytes + size > self.max_kept_bytes:
            return
        self._free.setdefault(size, []).append(buf)
        self._kept_bytes += size


@dataclass(slots=True)
class FileRegion:
    """`count` bytes of file `fd` from `offset`, to be sent with sendfile(2)."""

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


class SendQueue:
    """Whole messages waiting for the socket; sent with one sendmsg per flush."""

    def __init__(self, pool: BufferPool) -> None:
        self._pool = pool
        self._items: deque[Buffer | FileRegion] = deque()
        self._release: deque[tuple[int, memoryview]] = deque()
        self._queued_total = 0
        self._sent_total = 0

    def __len__(self) -> int:
        return self._queued_total - self._sent_total

    def __bool__(self) -> bool:
        return bool(self._items)

    def append(self, data: Buffer) -> None:
        if data:
            self._items.append(data)
            self._queued_total += len(data)

    def append_region(self, region: FileRegion) -> None:
        if region.count:
            self._items.append(region)
            self._queued_total += region.count

    def extend(self, buffers: Sequence[Buffer | FileRegion]) -> None:
        for data in buffers:
            if data:
                self._items.append(data)
                self._queued_total += len(data)

    def release_after(self, view: memoryview) -> None:
        """Give `view` (from the pool) back once everything queued so far is sent."""
        self._release.append((self._queued_total, view))

    def flush(self, sock: socket.socket | TlsStream, gather_bytes: int = 0) -> None:
        """Send as much as the socket takes now; raises OSError on a broken connection.

        `gather_bytes` (0: no limit) stops gathering buffers for one send once
        that many bytes are in hand (a `TlsStream` takes only so much per call).
        Never queue a `FileRegion` for a `TlsStream`: sendfile would bypass
        the encryption."""
        items = self._items
        while items:
            head = items[0]
            try:
                if type(head) is FileRegion:
                    sent = os.sendfile(sock.fileno(), head.fd, head.offset, head.count)
                    if sent == 0:  # the file shrank under us: the reply promised zeroes
                        items[0] = bytes(head.count)
                        continue
                else:
                    bufs: list[Buffer] = []
                    gathered = 0
                    for item in islice(items, _IOV_MAX):
                        if type(item) is FileRegion:
                            break
                        bufs.append(item)  # type: ignore[arg-type]
                        if gather_bytes:
                            gathered += len(item)
                            if gathered >= gather_bytes:
                                break
                    more = socket.MSG_MORE if len(bufs) < len(items) else 0
                    sent = sock.sendmsg(bufs, (), more) if len(bufs) > 1 or more else sock.send(bufs[0])
            except (BlockingIOError, InterruptedError):
                break
            self._sent_total += sent
            while sent:
                head = items[0]
                if sent < len(head):
                    if isinstance(head, FileRegion):
                        head.offset += sent
                        head.count -= sent
                    else:
                        items[0] = memoryview(head)[sent:]
                    break
                items.popleft()
                sent -= len(head)
        release = self._release
        while release and release[0][0] <= self._sent_total:
            self._pool.put(release.popleft()[1])

    def unshare(self, data: Buffer) -> None:
        """Copy what is still queued of `data` (its owner wants the memory back)."""
        if isinstance(data, bytes):
            return
        base = data.obj if isinstance(data, memoryview) else data
        items = self._items
        for i, item in enumerate(items):
            if isinstance(item, memoryview) and item.obj is base or item is base:
                items[i] = bytes(item)

    def clear(self) -> None:
        self._items.clear()
        self._release.clear()
        self._sent_total = self._queued_total
