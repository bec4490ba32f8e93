"""RFC 6455 WebSocket, sans-I/O: frames, messages and the closing handshake.

Owns the frame parser and serialiser, message assembly with incremental UTF-8
validation, close-code rules, the ping/pong/close state machine (``State`` and
one transition table); the opening handshake is ``net.wshandshake``. Bytes come in
through ``Connection.receive_data`` and leave from ``send_*``, ``fail`` and
``data_to_send`` (automatic Pong and Close replies). Never awaits, sleeps or
reads the clock (that is ``net.wsstream``); never imports config, gateway or
agents. Raises the ``WebSocketProtocolError`` family and ``ConnectionClosed``;
no extension is negotiated, so RSV bits must be 0.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Generator
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final

from ..errors import (
    ConnectionClosed, InvalidUTF8, MessageTooBig, TooManyFragments, WebSocketProtocolError,
    ws_close_code,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MAX_FRAGMENTS", "State", "Opcode", "Message", "Ping", "Pong", "CloseReceived",
    "NEED_DATA", "EOF", "Connection", "is_valid_close_code",
]

# The gateway's gateway.ws.maxPayloadBytes default (25 MiB, as the
# original Gateway); counted over the assembled message, not per frame.
DEFAULT_MAX_MESSAGE_BYTES: Final = 25 * 1024 * 1024
# Frames per message. RFC 6455 §5.4 sets no limit, and each frame costs a
# header's parsing however small its payload, so a message in 2-byte fragments
# would cost ~4x its size on the wire in work. 65,536 is what Autobahn's
# smallest-fragment cases (9.3.1, 9.4.1: 4 MiB in 64-byte frames) send; a
# 25 MiB message needs fragments of 400 bytes or more. Past it: close 1009.
DEFAULT_MAX_FRAGMENTS: Final = 65536

# RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD: Final = 125

# Below this size the big-int XOR unmasks faster; above it four strided
# bytes.translate() calls do. Measured on CPython 3.11 (one core of the CI box):
# 125 B: int 0.6 us, translate 1.4 us, per-byte loop 7.7 us; 64 KiB: int 196 us,
# translate 105 us, loop 4.3 ms; 25 MiB: int 92 ms, translate 48 ms.
_MASK_TRANSLATE_FROM: Final = 4096
_XOR_TABLES: Final = tuple(bytes(b ^ k for b in range(256)) for k in range(256))


def _apply_mask(data: bytes | bytearray, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3), both directions."""
    n = len(data)
    if n < _MASK_TRANSLATE_FROM:
        key = (mask * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    out = bytearray(data)
    for i in range(4):
        out[i::4] = data[i::4].translate(_XOR_TABLES[mask[i]])
    return bytes(out)


class Opcode(IntEnum):
    """RFC 6455 §5.2 opcodes; 3-7 and 11-15 are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_DATA_OPCODES: Final = frozenset({0x0, 0x1, 0x2})
_CONTROL_OPCODES: Final = frozenset({0x8, 0x9, 0xA})


def is_valid_close_code(code: int) -> bool:
    """True for a status code that may appear in a Close frame.

    RFC 6455 §7.4.1 defines 1000-1003 and 1007-1011 (1004 is reserved; 1005,
    1006 and 1015 "MUST NOT be set as a status code in a Close control frame");
    1012-1014 are registered in the IANA registry (§11.7); 1016-2999 are
    reserved for future RFCs; 3000-4999 are for libraries and applications.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# -- events ---------------------------------------------------------------------

class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")   # no complete event in the bytes received so far
EOF: Final = _Sentinel("EOF")               # the stream ended; no event will ever follow


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message: ``str`` for text (valid UTF-8), ``bytes`` for binary."""

    data: str | bytes


def _check_control_payload(payload: bytes) -> None:
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError(f"control frame payload of {len(payload)} bytes over {MAX_CONTROL_PAYLOAD}")


@dataclass(frozen=True, slots=True)
class Ping:
    """A Ping frame's application data (at most 125 bytes)."""

    payload: bytes

    def __post_init__(self) -> None:
        _check_control_payload(self.payload)


@dataclass(frozen=True, slots=True)
class Pong:
    """A Pong frame's application data (at most 125 bytes)."""

    payload: bytes

    def __post_init__(self) -> None:
        _check_control_payload(self.payload)


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's Close frame: ``code`` 1005 when it carried no status (RFC 6455 §7.1.5)."""

    code: int
    reason: str

    def __post_init__(self) -> None:
        if not (is_valid_close_code(self.code) or self.code == 1005):
            raise ValueError(f"invalid close code {self.code}")


# -- the state machine --------------------------------------------------------

class State(Enum):
    """Where the connection stands (RFC 6455 §4 and §7)."""

    CONNECTING = "CONNECTING"   # opening handshake not finished: nothing may be sent
    OPEN = "OPEN"               # data flows both ways
    CLOSING = "CLOSING"         # a Close was sent (maybe received too): no more frames go out
    CLOSED = "CLOSED"           # the byte stream ended (EOF)


class _Step(Enum):
    OPENED = "opened"
    SEND = "send"
    SEND_CLOSE = "send close"
    RECV_CLOSE = "receive close"
    FAIL = "fail"
    EOF = "eof"


# The whole state machine. A step missing for a state is illegal: sending then
# raises ConnectionClosed naming step, role and state.
_TRANSITIONS: Final[dict[tuple[State, _Step], State]] = {
    (State.CONNECTING, _Step.OPENED): State.OPEN,
    (State.CONNECTING, _Step.EOF): State.CLOSED,
    (State.OPEN, _Step.SEND): State.OPEN,
    (State.OPEN, _Step.SEND_CLOSE): State.CLOSING,
    # Receiving a Close in OPEN sends the reply at once, so "received but not
    # answered" is never a resting state.
    (State.OPEN, _Step.RECV_CLOSE): State.CLOSING,
    (State.OPEN, _Step.FAIL): State.CLOSING,
    (State.OPEN, _Step.EOF): State.CLOSED,
    (State.CLOSING, _Step.RECV_CLOSE): State.CLOSING,
    (State.CLOSING, _Step.FAIL): State.CLOSING,
    (State.CLOSING, _Step.EOF): State.CLOSED,
    # Frames buffered before the EOF are still parsed.
    (State.CLOSED, _Step.RECV_CLOSE): State.CLOSED,
    (State.CLOSED, _Step.FAIL): State.CLOSED,
}


# -- incremental reading -----------------------------------------------------

class _Reader:
    """Bytes received and not yet parsed; generators wait on it by yielding None."""

    __slots__ = ("buffer", "eof")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False

    def wait_for(self, n: int) -> Generator[None, None, None]:
        """Until ``n`` bytes are buffered (``EOFError`` if they never will be)."""
        while len(self.buffer) < n:
            if self.eof:
                raise EOFError
            yield None

    def read_exact(self, n: int) -> Generator[None, None, bytearray]:
        if len(self.buffer) < n:
            yield from self.wait_for(n)
        data = self.buffer[:n]
        del self.buffer[:n]        # amortised O(1): bytearray keeps an offset for front deletes
        return data


# -- the connection ----------------------------------------------------------------

_Event = Message | Ping | Pong | CloseReceived


class Connection:
    """One side of a WebSocket connection after (or during) the opening handshake.

    ``client`` picks the role: a client masks every frame it sends and rejects
    masked frames; a server requires masked frames and sends unmasked ones.
    ``max_message_bytes`` bounds an assembled message, ``max_fragments`` the
    frames it may come in (``None``: no bound; both may be changed between
    frames). ``state`` starts ``OPEN`` unless the caller runs the handshake
    through ``opened()``.

    Memory: received bytes not yet parsed, plus the message being assembled in
    one growing buffer (at most ``max_message_bytes`` and what the buffer
    over-allocates, ~1/8), plus, while it is turned into the ``Message``, that
    message itself. Work is linear in the bytes received: each byte is copied
    a bounded number of times and checked as UTF-8 once, however it is framed.
    """

    def __init__(self, *, client: bool, max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
                 max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
                 state: State = State.OPEN) -> None:
        # for the connection's lifetime
        self.client = client
        self.max_message_bytes = max_message_bytes
        self.max_fragments = max_fragments
        self.state = state
        self._reader = _Reader()
        self._parser = self._parse()
        self._outbox: list[bytes] = []
        # the closing handshake
        self.close_sent: tuple[int, str] | None = None      # (code, reason); 1005 = empty payload
        self.close_rcvd: CloseReceived | None = None
        self._failure: WebSocketProtocolError | None = None
        self._eof_seen = False
        # the message being assembled
        self._msg_opcode = 0          # TEXT or BINARY while a message is open, else 0
        self._msg_size = 0            # payload bytes announced by its frames so far
        self._msg_frames = 0
        self._msg_data: bytes | bytearray | None = None   # its first piece, then one growing buffer
        self._msg_checked = 0         # bytes of a text message known to be valid UTF-8

    def __repr__(self) -> str:
        role = "client" if self.client else "server"
        return f"<Connection {role} {self.state.name}>"

    # -- state --------------------------------------------------------------

    def _step(self, step: _Step) -> None:
        new = _TRANSITIONS.get((self.state, step))
        if new is None:
            exc = self._closed_error()
            role = "client" if self.client else "server"
            exc.add_note(f"cannot {step.value} in state {self.state.name} ({role})")
            raise exc
        self.state = new

    def _closed_error(self) -> ConnectionClosed:
        if self.close_rcvd is not None:
            return ConnectionClosed(self.close_rcvd.code, self.close_rcvd.reason)
        if self.close_sent is not None:
            return ConnectionClosed(*self.close_sent)
        return ConnectionClosed(1006, "")

    def opened(self) -> None:
        """Mark the opening handshake done: ``CONNECTING`` → ``OPEN``."""
        self._step(_Step.OPENED)

    # -- receiving ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the stream ended (EOF).

        Raises ``RuntimeError`` for data after EOF (a caller bug).
        """
        if self._reader.eof:
            if data:
                raise RuntimeError("receive_data() after EOF")
            return
        if data:
            self._reader.buffer += data
        else:
            self._reader.eof = True
            self._step(_Step.EOF)

    def next_event(self) -> _Event | _Sentinel:
        """The next event parsed from received bytes, ``NEED_DATA``, or ``EOF``.

        Events: ``Message``, ``Ping`` (a Pong reply is queued in ``data_to_send``
        while the connection is OPEN), ``Pong`` and ``CloseReceived`` (the reply
        Close is queued if none was sent; later bytes are ignored). Raises
        ``WebSocketProtocolError``, ``InvalidUTF8`` or ``MessageTooBig``; once
        raised, the same error is raised on every later call (sticky). Events
        that precede the offending frame are returned first. The caller then
        sends ``fail(exc)``. After ``EOF`` or an error the parser has ended:
        it holds nothing more, the unfinished message included.
        """
        if self._failure is not None:
            raise self._failure.with_traceback(None)
        if self._eof_seen:
            return EOF
        try:
            event = next(self._parser)
            if event is not None:
                return event
            self._check_text()                  # before waiting: a bad sequence fails at once
            return NEED_DATA
        except EOFError:
            self._eof_seen = True
            exc = None
        except WebSocketProtocolError as error:
            exc = error
        if not isinstance(exc, InvalidUTF8):
            # Text received before the offending bytes (or the end) is judged
            # first, as if each piece had been checked when it arrived.
            try:
                self._check_text()
            except InvalidUTF8 as earlier:
                exc = earlier
        # Nothing more will be parsed: an unfinished message can never complete, and
        # bytes after a bad frame are ignored.
        self._reader.buffer.clear()
        self._msg_data = None
        self._msg_opcode = self._msg_size = self._msg_frames = self._msg_checked = 0
        if exc is None:
            return EOF
        self._failure = exc
        raise exc

    def data_to_send(self) -> bytes:
        """Bytes the protocol itself must send (Pong and Close replies), emptied by the call."""
        data = b"".join(self._outbox)
        self._outbox.clear()
        return data

    def _parse(self) -> Generator[_Event | None, None, None]:
        # RFC 6455 §5.2: a frame is a header, an optional masking key, the payload.
        read = self._reader
        while True:
            while (header := self._take_header()) is None:
                if read.eof:
                    raise EOFError
                yield None
            fin, opcode, length, mask = header
            if opcode in _CONTROL_OPCODES:
                self._check_text()              # the text before it comes first
                payload = yield from read.read_exact(length)
                event = self._control_frame(opcode, _apply_mask(payload, mask) if mask else bytes(payload))
                yield event
                if isinstance(event, CloseReceived):
                    yield from _discard(read)
                continue
            if opcode != Opcode.CONTINUATION:
                self._msg_opcode = opcode
            if len(read.buffer) >= length:      # the common case: the payload is here
                if length:
                    chunk = read.buffer[:length]
                    del read.buffer[:length]
                    self._add_data(_apply_mask(chunk, mask) if mask else chunk)
            else:
                yield from self._read_data(length, mask)
            if fin:
                yield self._end_message()

    def _take_header(self) -> tuple[int, int, int, bytes] | None:
        """The next frame header, taken from the buffer once whole; None until then.

        Its checks run on what has arrived (the first two bytes, then the
        length) in the same order however the bytes are split, so a bad
        header fails as early as it can, with the same error; until the
        header is whole they change nothing and may run again.
        """
        buf = self._reader.buffer
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, opcode, length, masked = b0 & 0x80, b0 & 0x0F, b1 & 0x7F, b1 & 0x80
        self._check_header(b0, opcode, fin, length, masked)
        end = 2
        if length >= 126:
            end = 4 if length == 126 else 10
            if len(buf) < end:
                return None
            length = int.from_bytes(buf[2:end], "big")
            # RFC 6455 §5.2: "the most significant bit MUST be 0".
            if length >> 63:
                raise WebSocketProtocolError("payload length with the most significant bit set")
        # RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode
        # the length" binds senders; a longer encoding is unambiguous, and
        # Autobahn and the mainstream parsers accept it, so do we.
        data = opcode < 8
        if data:
            self._check_frame(length)
        mask = b""
        if masked:
            if len(buf) < end + 4:
                return None
            mask = bytes(buf[end:end + 4])
            end += 4
        del buf[:end]
        if data:
            self._msg_size += length
            self._msg_frames += 1
        return fin, opcode, length, mask

    def _read_data(self, length: int, mask: bytes) -> Generator[None, None, None]:
        # A payload still arriving is taken as it comes, so bad UTF-8 fails before the frame ends.
        read = self._reader
        offset = 0
        while offset < length:
            if not read.buffer:
                yield from read.wait_for(1)
            n = min(len(read.buffer), length - offset)
            chunk: bytes | bytearray = read.buffer[:n]
            del read.buffer[:n]
            if mask:
                rot = offset & 3
                chunk = _apply_mask(chunk, mask[rot:] + mask[:rot] if rot else mask)
            offset += n
            self._add_data(chunk)

    def _check_header(self, b0: int, opcode: int, fin: int, length: int, masked: int) -> None:
        # RFC 6455 §5.2: "If a nonzero value is received and none of the
        # negotiated extensions defines the meaning of such a nonzero value,
        # the receiving endpoint MUST _Fail the WebSocket Connection_."
        if b0 & 0x70:
            raise WebSocketProtocolError("reserved bits set without an extension")
        # RFC 6455 §5.2: "If an unknown opcode is received, the receiving
        # endpoint MUST _Fail the WebSocket Connection_."
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
            raise WebSocketProtocolError(f"reserved opcode {opcode}")
        if opcode in _CONTROL_OPCODES:
            # RFC 6455 §5.5: "Control frames themselves MUST NOT be fragmented."
            if not fin:
                raise WebSocketProtocolError("fragmented control frame")
            # RFC 6455 §5.5: "All control frames MUST have a payload length of
            # 125 bytes or less".
            if length > MAX_CONTROL_PAYLOAD:
                raise WebSocketProtocolError("control frame payload over 125 bytes")
        if self.client and masked:
            # RFC 6455 §5.1: "A client MUST close a connection if it detects a masked frame."
            raise WebSocketProtocolError("masked frame from server")
        if not self.client and not masked:
            # RFC 6455 §5.1: "The server MUST close the connection upon
            # receiving a frame that is not masked."
            raise WebSocketProtocolError("unmasked frame from client")
        # RFC 6455 §5.4: the fragments of one message are a start frame and
        # continuation frames; only control frames may come in between.
        if opcode == Opcode.CONTINUATION and not self._msg_opcode:
            raise WebSocketProtocolError("continuation frame without a message to continue")
        if opcode in (Opcode.TEXT, Opcode.BINARY) and self._msg_opcode:
            raise WebSocketProtocolError("new data frame inside a fragmented message")

    def _check_frame(self, length: int) -> None:
        # Checked when the header announces the length, before any payload is buffered.
        limit = self.max_message_bytes
        if limit is not None and self._msg_size + length > limit:
            raise MessageTooBig(limit, self._msg_size + length)
        if self.max_fragments is not None and self._msg_frames >= self.max_fragments:
            raise TooManyFragments(self.max_fragments)

    def _add_data(self, chunk: bytes | bytearray) -> None:
        # Pieces are joined as they arrive, into one buffer that grows with
        # them: a message of many tiny fragments holds its bytes, not an object
        # per fragment. Most messages are one piece, never copied here.
        data = self._msg_data
        if data is None:
            self._msg_data = chunk
        elif type(data) is bytearray:
            data += chunk
        else:
            data = self._msg_data = bytearray(data)
            data += chunk

    def _check_text(self) -> None:
        """Check the UTF-8 of a text message received so far, where not yet done.

        RFC 6455 §8.1: "When an endpoint is to interpret a byte stream as UTF-8
        but finds that the byte stream is not, in fact, a valid UTF-8 stream,
        that endpoint MUST _Fail the WebSocket Connection_." Text is checked
        before the parser waits for bytes, returns an event or raises another
        error: what a client sees is as if every piece were checked when it
        arrived (a bad sequence fails at once; nothing after it is acted on),
        but a message in a thousand fragments is checked once per read, not
        once per fragment.
        """
        data = self._msg_data
        if self._msg_opcode == Opcode.TEXT and data is not None and self._msg_checked < len(data):
            self._check_utf8(final=False)

    def _check_utf8(self, final: bool) -> None:
        """Check the text message's bytes not yet checked; a sequence cut at the end waits for its rest."""
        data = self._msg_data
        start = self._msg_checked
        if data is None or (start == len(data) and not final):
            return
        try:
            with memoryview(data) as view:
                # The decoded text is dropped: this only validates. What a cut
                # sequence left unconsumed (at most 3 bytes) is checked again
                # with its rest; nothing else is ever scanned twice.
                consumed = codecs.utf_8_decode(view[start:], "strict", final)[1]
        except UnicodeDecodeError as exc:
            raise InvalidUTF8("text message") from exc
        self._msg_checked = start + consumed
        # CPython's decoder holds ED A0..BF (a UTF-16 surrogate) until its
        # third byte arrives; no valid sequence starts so, so fail now.
        pending = data[start + consumed:start + consumed + 2]
        if len(pending) == 2 and pending[0] == 0xED and pending[1] >= 0xA0:
            raise InvalidUTF8("text message")

    def _end_message(self) -> Message:
        opcode, data = self._msg_opcode, self._msg_data
        if opcode == Opcode.TEXT and data is not None and 0 < self._msg_checked < len(data):
            self._check_utf8(final=True)    # the unchecked rest, then the whole text is decoded
        self._msg_opcode = self._msg_size = self._msg_frames = self._msg_checked = 0
        self._msg_data = None
        if data is None:
            return Message("" if opcode == Opcode.TEXT else b"")
        if opcode == Opcode.BINARY:
            return Message(data if type(data) is bytes else bytes(data))
        try:
            # Checked whole when nothing was checked yet (one piece): one
            # decoding checks and converts.
            return Message(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidUTF8("text message") from exc

    def _control_frame(self, opcode: int, payload: bytes) -> _Event:
        if opcode == Opcode.PING:
            # RFC 6455 §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST
            # send a Pong frame in response, unless it already received a Close
            # frame." A Close of our own already went out: nothing more may follow it.
            if self.state is State.OPEN:
                self._outbox.append(self._frame(Opcode.PONG, payload))
            return Ping(payload)
        if opcode == Opcode.PONG:
            return Pong(payload)
        event = _parse_close(payload)
        self.close_rcvd = event
        self._step(_Step.RECV_CLOSE)
        # RFC 6455 §5.5.1: "If an endpoint receives a Close frame and did not
        # previously send a Close frame, the endpoint MUST send a Close frame in
        # response. (When sending a Close frame in response, the endpoint
        # typically echos the status code it received.)"
        if self.close_sent is None:
            self.close_sent = (event.code, "")
            self._outbox.append(self._close_frame(event.code, ""))
        return event

    # -- sending ---------------------------------------------------------------------

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
        if not self.client:
            return head + payload
        # RFC 6455 §5.3: "The masking key needs to be unpredictable; thus, the
        # masking key MUST be derived from a strong source of entropy".
        mask = os.urandom(4)
        return bytes((head[0], head[1] | 0x80)) + head[2:] + mask + _apply_mask(payload, mask)

    def send_text(self, text: str) -> bytes:
        """One text frame carrying ``text``. Raises ``ConnectionClosed`` unless OPEN."""
        self._step(_Step.SEND)
        return self._frame(Opcode.TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> bytes:
        """One binary frame carrying ``data``. Raises ``ConnectionClosed`` unless OPEN."""
        self._step(_Step.SEND)
        return self._frame(Opcode.BINARY, bytes(data))

    def send_ping(self, payload: bytes = b"") -> bytes:
        """A Ping frame. Raises ``ValueError`` over 125 bytes, ``ConnectionClosed`` unless OPEN."""
        _check_control_payload(payload)
        self._step(_Step.SEND)
        return self._frame(Opcode.PING, bytes(payload))

    def send_pong(self, payload: bytes = b"") -> bytes:
        """An unsolicited Pong frame (RFC 6455 §5.5.3: a heartbeat). Same errors as ``send_ping``."""
        _check_control_payload(payload)
        self._step(_Step.SEND)
        return self._frame(Opcode.PONG, bytes(payload))

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake: a Close frame with ``code`` and ``reason``.

        ``code`` 1005 sends an empty payload (no status). Raises ``ValueError``
        for a code that may not be sent or a reason over 123 UTF-8 bytes, and
        ``ConnectionClosed`` unless OPEN.
        """
        frame = self._close_frame(code, reason)
        self._step(_Step.SEND_CLOSE)
        self.close_sent = (code, reason)
        return frame

    def _close_frame(self, code: int, reason: str) -> bytes:
        if code == 1005:
            if reason:
                raise ValueError("a reason needs a status code")
            return self._frame(Opcode.CLOSE, b"")
        if not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
        payload = code.to_bytes(2, "big") + reason.encode("utf-8")
        _check_control_payload(payload)
        return self._frame(Opcode.CLOSE, payload)

    def fail(self, exc: BaseException, reason: str | None = None) -> bytes:
        """_Fail the WebSocket Connection_ (RFC 6455 §7.1.7) because of ``exc``.

        Returns the Close frame with ``errors.ws_close_code(exc)`` and ``reason``
        (default: the protocol error's own reason, nothing for other errors,
        cut to 123 bytes), or ``b""`` when a Close was already sent. Afterwards
        received bytes are ignored.
        """
        self._step(_Step.FAIL)
        self._parser = _discard(self._reader)
        if self.close_sent is not None or self.state is State.CLOSED:
            return b""
        code = ws_close_code(exc)
        if reason is None:
            reason = exc.reason if isinstance(exc, WebSocketProtocolError) else ""
        reason = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore")
        self.close_sent = (code, reason)
        # RFC 6455 §7.1.7: "the endpoint SHOULD send a Close frame with an
        # appropriate status code (Section 7.4) before proceeding to _Close the
        # WebSocket Connection_."
        return self._close_frame(code, reason)


def _discard(reader: _Reader) -> Generator[None, None, None]:
    # RFC 6455 §5.5.1: after the peer's Close "the endpoint MUST NOT send
    # any more data frames"; whatever it still sends is ignored. A function of
    # the reader alone: a connection's parser must not refer back to it (below).
    while True:
        reader.buffer.clear()
        if reader.eof:
            raise EOFError
        yield None


def _parse_close(payload: bytes) -> CloseReceived:
    # RFC 6455 §5.5.1: "If there is a body, the first two bytes of the body
    # MUST be a 2-byte unsigned integer ... Following the 2-byte integer, the
    # body MAY contain UTF-8-encoded data".
    if not payload:
        return CloseReceived(1005, "")
    if len(payload) == 1:
        raise WebSocketProtocolError("close frame payload of 1 byte")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise WebSocketProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUTF8("close reason") from exc
    return CloseReceived(code, reason)
