"""What one link connection sends: frames gathered per loop turn, fed to the transport in pieces.

Python 3.11's socket transport keeps what the kernel did not take in one
bytearray and deletes from its front after every send: with megabytes queued
(16 sync chunks of 4 MiB on two connections) each send moved the whole rest
of the queue in memory, and a copy into that bytearray came first. So the
transport is given one piece at a time (at most PIECE_BYTES), and the next
only once it has sent the last one (`pause_writing`/`resume_writing` with a
high-water mark of 1 byte); payloads wait here by reference, never copied.

Small frames queued in the same loop turn (replies to a burst of requests,
forwards of a burst of user writes) leave in one send. Measured on a loaded
2-core machine: sending each forward at once (before its local write) or
the replies at the end of the callback that read their requests costs
~1.5x the CPU per write and fewer IOPS: fewer, larger sends win.
"""

from __future__ import annotations

import asyncio
from collections import deque

Buffer = bytes | bytearray | memoryview

PIECE_BYTES = 256 << 10  # what the transport is given at once
GATHER_BYTES = 64 << 10  # frames smaller than this are joined into one send


class Outbox:
    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._items: deque[Buffer] = deque()
        self._paused = False
        self._scheduled = False
        self.closed = False
        # Told to pause as soon as anything waits in the transport, to resume once it is empty
        # (1, not 0: the TLS transport pauses at `size >= high`, the plain one at `size > high`).
        transport.set_write_buffer_limits(high=1, low=0)

    def add(self, *parts: Buffer, now: bool = False) -> None:
        """Queue parts of frames (by reference: leave them unchanged until answered).

        They leave at the end of this loop turn, with whatever else is queued
        meanwhile; with `now`, at once (a user's FLUSH: nothing to gather it with)."""
        self._items.extend(parts)
        if self._paused:
            return
        if now:
            self._push()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._push)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._push()

    def clear(self) -> None:
        self.closed = True
        self._items.clear()

    def _push(self) -> None:
        self._scheduled = False
        items, transport = self._items, self._transport
        while items and not self._paused and not self.closed:
            head = items[0]
            if len(head) >= GATHER_BYTES:
                if len(head) > PIECE_BYTES:
                    view = memoryview(head)
                    items[0] = view[PIECE_BYTES:]
                    piece: Buffer = view[:PIECE_BYTES]
                else:
                    piece = items.popleft()
            else:
                small = [items.popleft()]
                gathered = len(head)
                while items and gathered < PIECE_BYTES and len(items[0]) < GATHER_BYTES:
                    gathered += len(items[0])
                    small.append(items.popleft())
                piece = b"".join(small) if len(small) > 1 else small[0]
            transport.write(piece)  # may call pause_writing (pause()) at once
