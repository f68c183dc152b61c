"""The witness protocol, sans-IO: framing, messages and the connection's states.

A connection carries frames: a 4-byte big-endian length, then that many
bytes of one JSON message (a pydantic model below). The client speaks
first with `Hello` (its side, the protocol version); every later request
carries an `id` that its reply repeats, so requests may be pipelined.

Rules this module keeps (the NBD core's, `agent/nbd/protocol.py`):

- it imports no asyncio, socket, file or clock: bytes in through
  `receive_data()`, messages out of `next_event()` (or `NEED_DATA`), bytes
  out of `send()`;
- buffers have limits: a frame over `MAX_FRAME_BYTES`, or more buffered
  input than one frame and a header, is a protocol error;
- a peer that breaks the rules (bad frame, unknown or malformed message, a
  request before `Hello`, a second `Hello`) puts the connection into its
  terminal ERROR state: that call raises `RemoteProtocolError` and so does
  every later call; misuse of this API raises `LocalProtocolError`;
- the state moves only through `TRANSITIONS`.
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from openevs.domain.errors import OpenEvsError

VERSION: Final = 1
MAX_FRAME_BYTES: Final = 1 << 20
MAX_UNITS: Final = 10_000  # per request: one agent's whole set of units fits
_LENGTH = struct.Struct(">I")
KEY_MAX = 160


class WitnessProtocolError(OpenEvsError):
    pass


class LocalProtocolError(WitnessProtocolError):
    """We broke the protocol (a bug here, or a misuse of this API)."""


class RemoteProtocolError(WitnessProtocolError):
    """The peer broke the protocol."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Key = Annotated[str, Field(min_length=1, max_length=KEY_MAX, pattern=r"^(pair|group):[A-Za-z0-9_-]+$")]
Side = Annotated[str, Field(min_length=1, max_length=128)]


class Unit(_Message):
    key: Key
    epoch: int = Field(ge=0)


# -- client -> witness ----------------------------------------------------------------


class Hello(_Message):
    op: Literal["hello"] = "hello"
    side: Side
    version: int = VERSION


class Acquire(_Message):
    """Grant or renew the leases of these units to the sender's side."""

    op: Literal["acquire"] = "acquire"
    id: int
    units: list[Unit] = Field(max_length=MAX_UNITS)
    force: bool = False  # an operator's explicit override of a live lease


class Release(_Message):
    op: Literal["release"] = "release"
    id: int
    units: list[Unit] = Field(max_length=MAX_UNITS)


class Status(_Message):
    op: Literal["status"] = "status"
    id: int
    keys: list[Key] = Field(max_length=MAX_UNITS)
    sides: list[Side] = Field(default_factory=list, max_length=64)


class Ping(_Message):
    op: Literal["ping"] = "ping"
    id: int


# -- witness -> client -----------------------------------------------------------------


class Welcome(_Message):
    op: Literal["welcome"] = "welcome"
    version: int = VERSION
    lease_s: float


class Grant(_Message):
    key: str
    granted: bool
    epoch: int | None = None  # the unit's record after the decision
    holder: str | None = None
    lease_s: float = 0.0
    refusal: str | None = None
    lease_left_s: float = 0.0


class Acquired(_Message):
    op: Literal["acquired"] = "acquired"
    id: int
    grants: list[Grant]


class Released(_Message):
    op: Literal["released"] = "released"
    id: int


class RecordView(_Message):
    key: str
    epoch: int
    holder: str
    lease_left_s: float


class SideView(_Message):
    side: str
    seen_ago_s: float | None


class StatusReply(_Message):
    op: Literal["status_reply"] = "status_reply"
    id: int
    records: list[RecordView]
    sides: list[SideView]


class Pong(_Message):
    op: Literal["pong"] = "pong"
    id: int


class Failure(_Message):
    """The witness could not do it (e.g. its state directory failed)."""

    op: Literal["failure"] = "failure"
    id: int
    message: str


ClientMessage = Annotated[Hello | Acquire | Release | Status | Ping, Field(discriminator="op")]
ServerMessage = Annotated[
    Welcome | Acquired | Released | StatusReply | Pong | Failure, Field(discriminator="op")
]
Message = ClientMessage | ServerMessage
Request = Acquire | Release | Status | Ping
Reply = Acquired | Released | StatusReply | Pong | Failure

_CLIENT: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
_SERVER: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class Role(enum.Enum):
    CLIENT = "client"  # an agent or the controller
    SERVER = "server"  # the witness


class State(enum.Enum):
    GREETING = "greeting"  # the client's Hello has not been sent (client) / received (server)
    WELCOMING = "welcoming"  # Hello sent / received; the Welcome is due
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


class Trigger(enum.Enum):
    HELLO = "hello"
    WELCOME = "welcome"
    REQUEST = "request"
    REPLY = "reply"
    CLOSE = "close"


TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    (State.GREETING, Trigger.HELLO): State.WELCOMING,
    (State.WELCOMING, Trigger.WELCOME): State.READY,
    (State.READY, Trigger.REQUEST): State.READY,
    (State.READY, Trigger.REPLY): State.READY,
    **{(s, Trigger.CLOSE): State.CLOSED for s in (State.GREETING, State.WELCOMING, State.READY)},
}

_TRIGGER = {
    Hello: Trigger.HELLO,
    Welcome: Trigger.WELCOME,
    Acquire: Trigger.REQUEST,
    Release: Trigger.REQUEST,
    Status: Trigger.REQUEST,
    Ping: Trigger.REQUEST,
}


def _trigger(message: _Message) -> Trigger:
    return _TRIGGER.get(type(message), Trigger.REPLY)


class Connection:
    """One end of a witness connection."""

    def __init__(self, role: Role, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.role = role
        self.state = State.GREETING
        self.side: str | None = None  # server: the client's side, once it said Hello
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    # -- state --------------------------------------------------------------

    def _move(self, trigger: Trigger) -> None:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise LocalProtocolError(f"cannot {trigger.value} in state {self.state.value}")
        self.state = new

    def _fail(self, message: str) -> RemoteProtocolError:
        self.state = State.ERROR
        self._error = RemoteProtocolError(message)
        self._buffer.clear()
        return self._error

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self.state is State.CLOSED:
            raise LocalProtocolError("the connection is closed")

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes; b"" means the peer closed its side."""
        self._check_open()
        if not data:
            if self._buffer:
                raise self._fail("the peer closed the connection in the middle of a frame")
            self.state = State.CLOSED
            return
        self._buffer += data
        if len(self._buffer) > self.max_frame_bytes + _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self.max_frame_bytes:
                raise self._fail(f"frame of {length} bytes exceeds {self.max_frame_bytes}")

    def next_event(self) -> Message | NeedData:
        """The next complete message from the peer, or NEED_DATA."""
        self._check_open()
        if len(self._buffer) < _LENGTH.size:
            return NEED_DATA
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self.max_frame_bytes:
            raise self._fail(f"frame of {length} bytes exceeds {self.max_frame_bytes}")
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return NEED_DATA
        body = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        adapter = _CLIENT if self.role is Role.SERVER else _SERVER
        try:
            message = adapter.validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {"msg": str(exc)}
            raise self._fail(f"malformed message: {first['msg']}") from None
        trigger = _trigger(message)
        expected = {
            (Role.SERVER, State.GREETING): Trigger.HELLO,
            (Role.CLIENT, State.WELCOMING): Trigger.WELCOME,
        }.get((self.role, self.state))
        if expected is not None and trigger is not expected:
            raise self._fail(f"expected {expected.value}, got {trigger.value}")
        if (self.role, trigger) in ((Role.SERVER, Trigger.WELCOME), (Role.CLIENT, Trigger.HELLO)):
            raise self._fail(f"a {self.role.value} does not receive {trigger.value}")
        if (self.state, trigger) not in TRANSITIONS:
            raise self._fail(f"unexpected {trigger.value} in state {self.state.value}")
        if isinstance(message, Hello):
            if message.version != VERSION:
                raise self._fail(f"protocol version {message.version} is not {VERSION}")
            self.side = message.side
        self._move(trigger)
        return message

    # -- output ---------------------------------------------------------------

    def send(self, message: Message) -> bytes:
        """The bytes of one message to the peer."""
        self._check_open()
        trigger = _trigger(message)
        mine = {Role.CLIENT: (Trigger.HELLO, Trigger.REQUEST), Role.SERVER: (Trigger.WELCOME, Trigger.REPLY)}
        if trigger not in mine[self.role]:
            raise LocalProtocolError(f"a {self.role.value} does not send {trigger.value}")
        self._move(trigger)
        body = message.model_dump_json().encode()
        if len(body) > self.max_frame_bytes:
            raise LocalProtocolError(f"message of {len(body)} bytes exceeds {self.max_frame_bytes}")
        return _LENGTH.pack(len(body)) + body

    def close(self) -> None:
        if self.state not in (State.CLOSED, State.ERROR):
            self._move(Trigger.CLOSE)
