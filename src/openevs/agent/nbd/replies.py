"""Builders of NBD transmission replies (simple and structured), sans-IO.

Each builder returns the bytes to write; data replies return a list of
buffers so a large read payload is never copied into a header. Builders do
not check the connection state: they are on the hot path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence, Sized
from typing import Final

from . import constants as c

Buffer = bytes | bytearray | memoryview

_SIMPLE: Final = c.SIMPLE_REPLY
_CHUNK: Final = c.STRUCTURED_HEADER
_DATA_CHUNK: Final = struct.Struct(">IHHQIQ")  # chunk header + offset
_HOLE_CHUNK: Final = struct.Struct(">IHHQIQI")  # chunk header + offset + hole size
_ERROR_CHUNK: Final = struct.Struct(">IHHQIIH")  # chunk header + error + message length
_SR_MAGIC: Final = c.STRUCTURED_REPLY_MAGIC
_DONE: Final = c.REPLY_FLAG_DONE
BLOCK_STATUS_CONTEXT_ID: Final = 1


class ReplyBuilder:
    """Reply construction shared by the server connection (mixin)."""

    def __init__(self) -> None:
        self.structured = False

    def reply_ok(self, cookie: int) -> bytes:
        """Success without data (any command but a structured READ)."""
        return _SIMPLE.pack(c.SIMPLE_REPLY_MAGIC, 0, cookie)

    def reply_done(self, cookie: int) -> bytes:
        """Structured success without content (NBD_REPLY_TYPE_NONE)."""
        return _CHUNK.pack(_SR_MAGIC, _DONE, c.CHUNK_NONE, cookie, 0)

    def reply_error(self, cookie: int, error: int, message: str = "") -> bytes:
        """Error reply; structured (with message) once structured replies are on."""
        if not self.structured:
            return _SIMPLE.pack(c.SIMPLE_REPLY_MAGIC, error, cookie)
        text = message.encode()[: c.MAX_STRING]
        head = _ERROR_CHUNK.pack(_SR_MAGIC, _DONE, c.CHUNK_ERROR, cookie, 6 + len(text), error, len(text))
        return head + text

    def reply_read(self, cookie: int, offset: int, data: Buffer) -> list[Buffer]:
        """Successful READ carrying `data` (read at `offset`) in one piece."""
        if not self.structured:
            return [_SIMPLE.pack(c.SIMPLE_REPLY_MAGIC, 0, cookie), data]
        if not data:
            return [self.reply_done(cookie)]
        head = _DATA_CHUNK.pack(_SR_MAGIC, _DONE, c.CHUNK_OFFSET_DATA, cookie, len(data) + 8, offset)
        if len(data) <= 16384:
            return [head + data]
        return [head, data]

    def reply_read_header(self, cookie: int, offset: int, length: int) -> bytes:
        """What precedes `length` (> 0) bytes of READ data sent by the caller itself."""
        if not self.structured:
            return _SIMPLE.pack(c.SIMPLE_REPLY_MAGIC, 0, cookie)
        return _DATA_CHUNK.pack(_SR_MAGIC, _DONE, c.CHUNK_OFFSET_DATA, cookie, length + 8, offset)

    def reply_read_pieces(self, cookie: int, offset: int, pieces: Sequence[Sized | int]) -> list[Sized]:
        """Successful READ from consecutive pieces: hole lengths (ints) and data
        (buffers, or any sized object the caller knows how to send).

        Without structured replies holes are sent as zeroes.
        """
        if not self.structured:
            out: list[Sized] = [_SIMPLE.pack(c.SIMPLE_REPLY_MAGIC, 0, cookie)]
            out.extend(bytes(p) if isinstance(p, int) else p for p in pieces)
            return out
        out = []
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            flags = _DONE if i == last else 0
            if isinstance(piece, int):
                out.append(_HOLE_CHUNK.pack(_SR_MAGIC, flags, c.CHUNK_OFFSET_HOLE, cookie, 12, offset, piece))
                offset += piece
            else:
                out.append(
                    _DATA_CHUNK.pack(_SR_MAGIC, flags, c.CHUNK_OFFSET_DATA, cookie, len(piece) + 8, offset)
                )
                out.append(piece)
                offset += len(piece)
        if not out:
            out.append(self.reply_done(cookie))
        return out

    def reply_block_status(self, cookie: int, extents: Sequence[tuple[int, int]]) -> bytes:
        """BLOCK_STATUS answer for base:allocation; `extents` from `merge_extents`."""
        body = struct.pack(
            f">I{2 * len(extents)}I", BLOCK_STATUS_CONTEXT_ID, *[v for ext in extents for v in ext]
        )
        head = _CHUNK.pack(_SR_MAGIC, _DONE, c.CHUNK_BLOCK_STATUS, cookie, len(body))
        return head + body


def merge_extents(
    extents: Iterable[tuple[int, int]],
    length: int,
    *,
    req_one: bool = False,
    max_extents: int = 1024,
) -> list[tuple[int, int]]:
    """Clamp (length, flags) extents to `length` bytes, merging equal neighbours.

    Always returns at least one extent; with `req_one`, exactly one.
    """
    merged: list[tuple[int, int]] = []
    covered = 0
    for ext_len, ext_flags in extents:
        ext_len = min(ext_len, length - covered)
        if ext_len <= 0:
            break
        if merged and merged[-1][1] == ext_flags:
            merged[-1] = (merged[-1][0] + ext_len, ext_flags)
        elif len(merged) >= max_extents:
            break
        else:
            merged.append((ext_len, ext_flags))
        covered += ext_len
        if covered >= length:
            break
    if not merged:
        merged.append((length, 0))
    return merged[:1] if req_one else merged
