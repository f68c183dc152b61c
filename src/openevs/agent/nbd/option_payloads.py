"""The payloads of the client's NBD options that carry an export name: INFO/GO and
LIST/SET_META_CONTEXT (doc/proto.md "Option types"). Pure parsing, for
handshake.py; a malformed payload gives None, never an exception."""

from __future__ import annotations

import struct

from . import constants as c


def parse_info_request(data: bytes) -> tuple[str, tuple[int, ...]] | None:
    """(name, info types) of an INFO/GO request, or None if malformed."""
    if len(data) < 6:
        return None
    (name_len,) = c.U32.unpack_from(data, 0)
    if name_len > len(data) - 6 or name_len > c.MAX_STRING:
        return None
    (count,) = c.U16.unpack_from(data, 4 + name_len)
    if len(data) != 6 + name_len + 2 * count:
        return None
    try:
        name = data[4 : 4 + name_len].decode()
    except UnicodeDecodeError:
        return None
    infos = struct.unpack_from(f">{count}H", data, 6 + name_len)
    return name, tuple(infos)


def parse_meta_request(data: bytes) -> tuple[str, list[str]] | None:
    """(export name, queries) of a LIST/SET_META_CONTEXT request, or None."""
    try:
        name, pos = read_string(data, 0)
        if len(data) - pos < 4:
            return None
        (count,) = c.U32.unpack_from(data, pos)
        pos += 4
        queries: list[str] = []
        for _ in range(count):
            query, pos = read_string(data, pos)
            queries.append(query)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return (name, queries) if pos == len(data) else None


def read_string(data: bytes, pos: int) -> tuple[str, int]:
    if len(data) - pos < 4:
        raise ValueError("truncated")
    (length,) = c.U32.unpack_from(data, pos)
    pos += 4
    if length > len(data) - pos or length > c.MAX_STRING:
        raise ValueError("string overruns the option")
    return data[pos : pos + length].decode(), pos + length
