"""The link protocol's frames (agent/mirror/wire.py), byte by byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openevs.agent.mirror import wire
from openevs.agent.mirror.wire import FrameReader, Kind, LinkReply, LinkRequest, WireError
from openevs.agent.nbd import constants as nbd


def test_a_write_request_round_trips_even_fed_one_byte_at_a_time() -> None:
    payload = bytes(range(256)) * 3
    data = wire.encode_request(Kind.WRITE, 7, handle=3, offset=4096, length=len(payload), fua=True) + payload
    reader = FrameReader(requests=True)
    frames = []
    for i in range(len(data)):
        reader.receive_data(data[i : i + 1])
        if (frame := reader.next_frame()) is not None:
            frames.append(frame)
    assert frames == [LinkRequest(Kind.WRITE, wire.FLAG_FUA, 7, 3, 4096, len(payload), payload)]
    assert frames[0].fua and reader.buffered_bytes == 0


@pytest.mark.parametrize("cuts", [[300_000], [65_536], [1, 100_000, 13], [4096, 28, 70_000, 5]])
def test_the_socket_fills_the_reader_and_large_payloads_land_in_their_own_buffer(cuts: list[int]) -> None:
    sizes = [4096, 3 * wire.DIRECT_BYTES + 5, 0, wire.DIRECT_BYTES - 1, 1 << 20, 17]
    stream = b"".join(
        wire.encode_request(Kind.WRITE, i, 1, i, n) + bytes([i]) * n for i, n in enumerate(sizes)
    )
    allocated: list[int] = []

    def allocate(length: int) -> memoryview:
        allocated.append(length)
        return memoryview(bytearray(length + 100))[:length]

    reader = FrameReader(requests=True, allocate=allocate)
    frames: list[LinkRequest] = []
    position, turn = 0, 0
    while position < len(stream):  # what a BufferedProtocol's transport does, in varied cuts
        target = reader.get_buffer()
        n = min(len(target), cuts[turn % len(cuts)], len(stream) - position)
        target[:n] = stream[position : position + n]
        del target
        reader.buffer_updated(n)
        position, turn = position + n, turn + 1
        while (frame := reader.next_frame()) is not None:
            assert isinstance(frame, LinkRequest)
            frames.append(frame)
    assert [bytes(f.payload) for f in frames] == [bytes([i]) * n for i, n in enumerate(sizes)]
    assert allocated == [n for n in sizes if n >= wire.DIRECT_BYTES]
    assert reader.buffered_bytes == 0


def test_requests_without_payload_carry_only_their_length() -> None:
    data = wire.encode_request(Kind.WRITE_ZEROES, 1, 2, 0, 1 << 30) + wire.encode_request(Kind.FLUSH, 2, 2)
    reader = FrameReader(requests=True)
    reader.receive_data(data)
    first, second = reader.next_frame(), reader.next_frame()
    assert first == LinkRequest(Kind.WRITE_ZEROES, 0, 1, 2, 0, 1 << 30)
    assert second == LinkRequest(Kind.FLUSH, 0, 2, 2, 0, 0)
    assert reader.next_frame() is None


def test_an_open_answer_round_trips() -> None:
    opened = wire.Opened(handle=9, size_bytes=10 << 30, read_only=False)
    reader = FrameReader(requests=False)
    reader.receive_data(wire.encode_reply(0, 5, wire.encode_opened(opened)))
    reply = reader.next_frame()
    assert isinstance(reply, LinkReply) and reply.cookie == 5 and reply.error == 0
    assert wire.decode_opened(reply.payload) == opened


@pytest.mark.parametrize(
    "data",
    [
        b"\0" * wire.REQUEST.size,  # bad magic
        wire.REQUEST.pack(wire.REQUEST_MAGIC, 99, 0, 1, 0, 0, 0),  # unknown kind
        wire.encode_request(Kind.WRITE, 1, 1, 0, wire.MAX_PAYLOAD_BYTES + 1),  # payload over the limit
        wire.encode_request(Kind.OPEN, 1, 0, 0, wire.MAX_NAME_BYTES + 1),  # name over the limit
    ],
)
def test_a_violation_leaves_the_reader_in_its_error_state(data: bytes) -> None:
    reader = FrameReader(requests=True)
    reader.receive_data(data)
    with pytest.raises(WireError):
        reader.next_frame()
    with pytest.raises(WireError):  # stays broken: nothing more is parsed
        reader.receive_data(wire.encode_request(Kind.FLUSH, 2, 1))


def test_a_reply_with_a_payload_no_reply_has_is_refused() -> None:
    reader = FrameReader(requests=False)
    reader.receive_data(wire.REPLY.pack(wire.REPLY_MAGIC, 0, 1, 1 << 20))
    with pytest.raises(WireError):
        reader.next_frame()


def test_the_upgrade_names_the_option_and_the_session() -> None:
    greeting = nbd.GREETING.pack(nbd.NBDMAGIC, nbd.IHAVEOPT, nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES)
    data = wire.upgrade_request(greeting, "abc")
    (flags,) = nbd.CLIENT_FLAGS.unpack_from(data)
    magic, option, length = nbd.OPTION_HEADER.unpack_from(data, 4)
    assert flags == nbd.FLAG_C_FIXED_NEWSTYLE
    assert (magic, option, length) == (nbd.IHAVEOPT, nbd.OPT_OPENEVS_LINK, 3)
    assert data.endswith(b"abc")
    wire.check_upgrade_reply(nbd.OPTION_REPLY_HEADER.pack(nbd.OPTION_REPLY_MAGIC, nbd.OPT_OPENEVS_LINK,
                                                          nbd.Reply.ACK, 0))  # fmt: skip
    with pytest.raises(WireError, match="refused"):
        wire.check_upgrade_reply(nbd.OPTION_REPLY_HEADER.pack(nbd.OPTION_REPLY_MAGIC, nbd.OPT_OPENEVS_LINK,
                                                              nbd.Reply.ERR_UNSUP, 0))  # fmt: skip
    with pytest.raises(WireError, match="not a fixed-newstyle"):
        wire.upgrade_request(b"\0" * wire.GREETING_BYTES, "abc")


@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_anything_but_a_wire_error(data: bytes) -> None:
    for requests in (True, False):
        reader = FrameReader(requests=requests)
        try:
            reader.receive_data(data)
            while reader.next_frame() is not None:
                pass
        except WireError:
            pass
