"""What one request does to an export, apart from the connection that carries it:
a READ's reply queued (holes, sendfile, pooled buffers) and a write-like
request run (connection.py calls these; the connection owns flow control)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sized

from . import constants as c
from .buffers import POOL_MIN_BYTES, BufferPool, FileRegion, SendQueue
from .constants import Command, Errno
from .events import Request
from .export import Export
from .owner import wire_errno
from .protocol import ServerConnection
from .replies import merge_extents

log = logging.getLogger(__name__)

_HOLE_SCAN_MIN_BYTES = 256 * 1024


def queue_read(
    proto: ServerConnection, out: SendQueue, pool: BufferPool, export: Export, req: Request,
    fd: int | None, readinto: Callable[[int, memoryview], None] | None,
) -> None:  # fmt: skip
    """Queue the reply of a READ on `out`: holes as zeroes (structured replies), data
    straight from the file (`fd`, sendfile) or read into a pooled buffer (`readinto`)."""
    offset, length = req.offset, req.length
    if length >= _HOLE_SCAN_MIN_BYTES and proto.structured and not req.flags & c.CMD_FLAG_DF:
        extents = merge_extents(export.extents(offset, length), length)
        if len(extents) > 1 or extents[0][1] & c.STATE_ZERO:
            pieces: list[Sized | int] = []
            pos = offset
            for ext_len, flags in extents:
                if flags & c.STATE_ZERO:
                    pieces.append(ext_len)
                elif fd is not None:
                    pieces.append(FileRegion(fd, pos, ext_len))
                else:
                    pieces.append(export.pread(pos, ext_len))
                pos += ext_len
            out.extend(proto.reply_read_pieces(req.cookie, offset, pieces))  # type: ignore[arg-type]
            return
    if length < POOL_MIN_BYTES or (fd is None and readinto is None):
        out.extend(proto.reply_read(req.cookie, offset, export.pread(offset, length)))
    elif fd is not None:
        # Straight from the page cache to the socket; the data is read when sent,
        # which only differs for requests that overlap in flight (undefined in NBD).
        out.append(proto.reply_read_header(req.cookie, offset, length))
        out.append_region(FileRegion(fd, offset, length))
    else:
        assert readinto is not None
        view = pool.get(length)
        try:
            readinto(offset, view)
        except BaseException:
            pool.put(view)
            raise
        out.extend(proto.reply_read(req.cookie, offset, view))
        out.release_after(view)


async def execute(proto: ServerConnection, export: Export, req: Request, label: str) -> bytes:
    """Run a write-like request on `export`; its reply (errors as NBD errors)."""
    kind, cookie = req.kind, req.cookie
    try:
        if kind is Command.WRITE:
            assert req.payload is not None
            await export.write(req.offset, req.payload, req.fua)
        elif kind is Command.FLUSH:
            await export.flush()
        elif kind is Command.TRIM:
            await export.trim(req.offset, req.length)
            if req.fua:
                await export.flush()
        elif kind is Command.WRITE_ZEROES:
            await export.write_zeroes(
                req.offset,
                req.length,
                req.fua,
                may_trim=not req.flags & c.CMD_FLAG_NO_HOLE,
                fast_only=bool(req.flags & c.CMD_FLAG_FAST_ZERO),
            )
        return proto.reply_ok(cookie)
    except OSError as exc:
        return proto.reply_error(cookie, wire_errno(exc.errno), str(exc))
    except Exception:
        log.exception("nbd %s on export %s failed", kind.name, label)
        return proto.reply_error(cookie, Errno.EIO, "internal error")
