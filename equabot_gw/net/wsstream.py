"""The asyncio shell around ``net.websocket``: ``WebSocket``, an ``asyncio.Protocol`` for either role.

Owns the transport, every timer of an open connection (keepalive ping, ping
timeout, close timeout: ``loop.call_later``, cancelled at the end) and flow
control; the protocol rules live in ``net.websocket``, the client's opening
handshake in ``net.wsclient``, which a serving gateway never imports. Never
imports config, gateway or agents. Sending never blocks: a peer that leaves more than
``max_write_buffer_bytes`` unread is cut off (1006), so one slow reader cannot
stall the others. At most ``MAX_BYTES_PER_TURN`` received bytes are parsed per
event-loop turn, so a flood of tiny frames cannot hold the loop.

Memory per connection, bounded by the limits: received bytes not yet parsed
(one read, at most 256 KiB: reading pauses while they wait); the message
being assembled (``max_message_bytes``, in one growing buffer); unread
messages (reading pauses once they hold ``max_queued_messages`` messages or
``max_queued_bytes`` of memory, so at most that plus one message); unsent
output (``max_write_buffer_bytes`` plus the message that passed it). A text
message is held as a Python ``str``: up to 4 bytes per character.
Logs carry the connection id, never a payload.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
from collections import deque
from typing import Any, Final

from ..errors import ConnectionClosed, WebSocketProtocolError, ws_close_code
from . import websocket
from .websocket import EOF, NEED_DATA, CloseReceived, Message, Pong, State

__all__ = [
    "WebSocket", "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MAX_WRITE_BUFFER_BYTES",
    "DEFAULT_MAX_QUEUED_MESSAGES", "DEFAULT_MAX_QUEUED_BYTES", "DEFAULT_MAX_FRAGMENTS",
    "MAX_BYTES_PER_TURN", "DEFAULT_PING_INTERVAL", "DEFAULT_PING_TIMEOUT", "DEFAULT_CLOSE_TIMEOUT",
]

logger = logging.getLogger(__name__)

# The gateway's gateway.ws.maxPayloadBytes default, 25 MiB.
DEFAULT_MAX_MESSAGE_BYTES: Final = websocket.DEFAULT_MAX_MESSAGE_BYTES
# Two maximal messages. websockets' write_limit (32 KiB) pauses the sender
# instead; we never block a sender, so the bound must sit above one whole message.
DEFAULT_MAX_WRITE_BUFFER_BYTES: Final = 2 * DEFAULT_MAX_MESSAGE_BYTES
# websockets' max_queue: stop reading while 16 messages wait for recv().
DEFAULT_MAX_QUEUED_MESSAGES: Final = 16
# ... or while the unread messages hold this much memory: a queue is for many
# small messages (a slow reader of big ones gets one at a time), and 16 whole
# 25 MiB messages (up to 4x that as text) is too much to hold for any peer.
DEFAULT_MAX_QUEUED_BYTES: Final = 1024 * 1024
DEFAULT_MAX_FRAGMENTS: Final = websocket.DEFAULT_MAX_FRAGMENTS
# Received bytes parsed per event-loop turn: 32 KiB of the smallest frames is
# ~5,000 frames, about 10 ms of CPU; more waits for the next turn.
MAX_BYTES_PER_TURN: Final = 32 * 1024
# websockets' defaults: ping_interval=20, ping_timeout=20, close_timeout=10.
DEFAULT_PING_INTERVAL: Final = 20.0
DEFAULT_PING_TIMEOUT: Final = 20.0
DEFAULT_CLOSE_TIMEOUT: Final = 10.0

# RFC 6455 §7.4.1: 1000 normal closure, 1001 going away; 1005: a Close without status.
_OK_CLOSE_CODES: Final = frozenset({1000, 1001, 1005})

_ids = itertools.count(1)


class WebSocket(asyncio.Protocol):
    """One WebSocket connection over an asyncio transport, client or server role.

    Server use: after writing the 101 answer, ``transport.set_protocol(ws)``,
    ``ws.connection_made(transport)``, then ``ws.data_received(leftover)`` for
    bytes read past the request head. Client use: ``await wsclient.connect(url)``.

    Limits (``None`` disables each): ``max_message_bytes`` per assembled message
    and ``max_fragments`` frames per message (more → close 1009);
    ``max_write_buffer_bytes`` unsent bytes before the peer is cut off;
    ``max_queued_messages`` unread messages, or ``max_queued_bytes`` of memory
    they hold, before reading pauses (never ``None``); the four may be changed
    at any time, e.g. tighter before a peer has authenticated, and apply from
    the next frame or message; ``ping_interval`` seconds without receiving anything before a Ping;
    ``ping_timeout`` seconds for its Pong (else close 1011); ``close_timeout``
    seconds from the first Close frame to the TCP close (then abort).
    ``async for message in ws`` ends quietly after a 1000/1001 close and
    raises ``ConnectionClosed`` after any other.

    A protocol error from the peer fails the connection (RFC 6455 §7.1.7):
    messages parsed before the bad frame are still delivered, the Close with
    ``errors.ws_close_code(exc)`` follows one loop turn later, input is then
    ignored, and the server half-closes TCP at once; the connection ends when
    the peer closes too, or after ``close_timeout``.
    """

    def __init__(self, *, client: bool,
                 max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
                 max_write_buffer_bytes: int | None = DEFAULT_MAX_WRITE_BUFFER_BYTES,
                 max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES,
                 max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
                 max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
                 ping_interval: float | None = DEFAULT_PING_INTERVAL,
                 ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
                 close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        if max_queued_messages < 1:
            raise ValueError("max_queued_messages must be at least 1")
        # for the connection's lifetime
        self.id = next(_ids)
        self.client = client
        self.max_write_buffer_bytes = max_write_buffer_bytes
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self._conn = websocket.Connection(client=client, max_message_bytes=max_message_bytes,
                                          max_fragments=max_fragments)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._lost: asyncio.Future[None] | None = None
        # received messages the application has not read yet, and their memory
        self._messages: deque[str | bytes] = deque()
        self._queued_bytes = 0
        self._recv_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False        # the queue is full
        # received bytes beyond one turn's parsing, fed on in later turns
        self._backlog = bytearray()
        self._feed_handle: asyncio.Handle | None = None
        # pings in flight: payload -> (future for ping(), or None for keepalive; time sent)
        self._pings: dict[bytes, tuple[asyncio.Future[float] | None, float]] = {}
        self._last_received = 0.0
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._pong_handle: asyncio.TimerHandle | None = None
        # closing
        self._pending_failure: WebSocketProtocolError | None = None
        self._failed = False
        self._shut = False                  # our side of TCP is closed (write_eof or close)
        self._close_handle: asyncio.TimerHandle | None = None
        self._code: int | None = None
        self._reason = ""

    def __repr__(self) -> str:
        role = "client" if self.client else "server"
        return f"<WebSocket #{self.id} {role} {self.state.name} close_code={self._code}>"

    # -- properties ------------------------------------------------------------

    @property
    def state(self) -> State:
        """The protocol state: OPEN, CLOSING (a Close went out), CLOSED (the stream ended)."""
        return self._conn.state

    @property
    def open(self) -> bool:
        """True while messages may be sent."""
        return (self._conn.state is State.OPEN and self._pending_failure is None
                and self._code is None and self._transport is not None)

    @property
    def max_message_bytes(self) -> int | None:
        """The largest message accepted (close 1009 past it); settable, applies from the next frame."""
        return self._conn.max_message_bytes

    @max_message_bytes.setter
    def max_message_bytes(self, value: int | None) -> None:
        self._conn.max_message_bytes = value

    @property
    def max_fragments(self) -> int | None:
        """The most frames one message may come in (close 1009 past it); settable."""
        return self._conn.max_fragments

    @max_fragments.setter
    def max_fragments(self, value: int | None) -> None:
        self._conn.max_fragments = value

    @property
    def queued_bytes(self) -> int:
        """Memory held by received messages not yet read (``sys.getsizeof`` of each)."""
        return self._queued_bytes

    @property
    def close_code(self) -> int | None:
        """How the connection ended, once known; None before.

        The peer's Close code (1005 if it had none), else the code we sent when
        we failed the connection (1002, 1007, 1009, 1011), else 1006 (no Close
        frame: RFC 6455 §7.1.5), also when a non-reading peer was cut off.
        """
        return self._code

    @property
    def close_reason(self) -> str:
        """The reason that goes with ``close_code`` ("" if none)."""
        return self._reason

    @property
    def remote_address(self) -> Any:
        """The peer's socket address, as the transport reports it."""
        return self._transport.get_extra_info("peername") if self._transport else None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport       # type: ignore[assignment]
        self._lost = self._loop.create_future()
        self._last_received = self._loop.time()
        # The HTTP layer may have paused reading while it answered the upgrade.
        transport.resume_reading()        # type: ignore[attr-defined]
        self._arm_keepalive(self.ping_interval)
        logger.debug("ws#%d %s connected", self.id, "client" if self.client else "server")

    def data_received(self, data: bytes) -> None:
        if self._failed or self._pending_failure is not None:
            return                        # failing: input is ignored (RFC 6455 §7.1.7)
        self._last_received = self._loop.time()
        if self._backlog or len(data) > MAX_BYTES_PER_TURN:
            self._backlog += data
            self._transport.pause_reading()
            if self._feed_handle is None:
                self._feed_handle = self._loop.call_soon(self._feed)
            return
        self._conn.receive_data(data)
        self._process()

    def _feed(self) -> None:
        """Parse the next ``MAX_BYTES_PER_TURN`` of the backlog; the rest waits a turn."""
        self._feed_handle = None
        if self._failed or self._pending_failure is not None or self._lost.done():
            self._backlog.clear()
            return
        if self._reading_paused:
            return                        # the queue is full: recv() feeds on
        chunk = bytes(self._backlog[:MAX_BYTES_PER_TURN])
        del self._backlog[:MAX_BYTES_PER_TURN]
        self._conn.receive_data(chunk)
        self._process()
        self._after_feed()

    def _after_feed(self) -> None:
        if self._backlog:
            if self._feed_handle is None:
                self._feed_handle = self._loop.call_soon(self._feed)
        elif not self._reading_paused and not self._transport.is_closing():
            self._transport.resume_reading()

    def eof_received(self) -> None:
        if self._backlog and not self._failed and self._pending_failure is None:
            self._conn.receive_data(bytes(self._backlog))     # the end comes after them
        self._backlog.clear()
        self._conn.receive_data(b"")
        if not self._failed and self._pending_failure is None:
            self._process()
        # Returning None lets the transport close itself: nothing more can come.

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.receive_data(b"")
        self._parse_rest()
        self._record(1006, "")
        for handle in (self._keepalive_handle, self._pong_handle, self._close_handle, self._feed_handle):
            if handle is not None:
                handle.cancel()
        self._keepalive_handle = self._pong_handle = self._close_handle = self._feed_handle = None
        self._backlog.clear()
        self._wake_reader()
        closed = ConnectionClosed(self._code, self._reason)
        for future, _ in self._pings.values():
            if future is not None and not future.done():
                future.set_exception(closed)
                future.cancel()           # done already: only stops "never retrieved" noise
        self._pings.clear()
        if not self._lost.done():
            self._lost.set_result(None)
        logger.debug("ws#%d closed: %d", self.id, self._code)

    # -- receiving ---------------------------------------------------------------

    def _parse_rest(self) -> None:
        """At the end of the stream, parse what came before it now, however many
        messages wait unread (they are in memory already: at most two reads).

        So the codec's parser runs to its end and lets go of everything: a parser
        left waiting refers back to its codec, a cycle, and a connection dropped
        in the middle of a message kept that message (up to ``max_message_bytes``)
        until a full run of the cyclic garbage collector.
        """
        if self._failed or self._pending_failure is not None:
            return                        # failing: input is ignored
        while True:
            try:
                event = self._conn.next_event()
            except WebSocketProtocolError:
                return                    # the peer is gone: nobody to tell
            if event is NEED_DATA or event is EOF:
                return
            self._handle(event)

    def _process(self) -> None:
        conn = self._conn
        while not self._reading_paused:
            try:
                event = conn.next_event()
            except WebSocketProtocolError as exc:
                # Messages parsed before the bad frame are already queued: the
                # application gets one loop turn to answer them before the
                # Close goes out (Autobahn 3.2 and 4.1.3 expect that echo).
                self._pending_failure = exc
                self._loop.call_soon(self._fail, exc)
                break
            if event is NEED_DATA or event is EOF:
                break
            self._handle(event)
        self._write(conn.data_to_send())
        if conn.close_sent is not None and conn.close_rcvd is not None:
            self._closing_handshake_done()

    def _handle(self, event: object) -> None:
        if isinstance(event, Message):
            if self._queue_full() and self._conn.close_sent is not None:
                return        # we are closing: read on for the peer's Close, keep memory bounded
            self._messages.append(event.data)
            self._queued_bytes += sys.getsizeof(event.data)
            self._wake_reader()
            if self._queue_full() and self._conn.close_sent is None:
                self._reading_paused = True
                self._transport.pause_reading()
        elif isinstance(event, Pong):
            self._acknowledge_pings(event.payload)
        elif isinstance(event, CloseReceived):
            self._record(event.code, event.reason)
            self._wake_reader()
            self._start_close_timer()
        # Ping: the codec has queued the Pong (RFC 6455 §5.5.2).

    def _queue_full(self) -> bool:
        return (len(self._messages) >= self.max_queued_messages
                or self._queued_bytes >= self.max_queued_bytes)

    def _wake_reader(self) -> None:
        if self._recv_waiter is not None and not self._recv_waiter.done():
            self._recv_waiter.set_result(None)

    async def recv(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Messages received before the close are delivered first. Raises
        ``ConnectionClosed(close_code, close_reason)`` once none is left and
        none can come; ``RuntimeError`` if another coroutine is already waiting.
        """
        while not self._messages:
            if self._code is not None or self._lost is None:
                raise ConnectionClosed(self._code or 1006, self._reason)
            if self._recv_waiter is not None:
                raise RuntimeError("another coroutine is already waiting in recv()")
            self._recv_waiter = self._loop.create_future()
            try:
                await self._recv_waiter
            finally:
                self._recv_waiter = None
        message = self._messages.popleft()
        self._queued_bytes -= sys.getsizeof(message)
        if (self._reading_paused and len(self._messages) <= self.max_queued_messages // 4
                and self._queued_bytes <= self.max_queued_bytes // 4):
            self._resume_reading()
            self._process()
            self._after_feed()
        return message

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if not self._backlog and not self._transport.is_closing():
            self._transport.resume_reading()

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        """Iteration ends quietly after a normal close (1000, 1001, or a Close
        without status); any other end raises ``ConnectionClosed``."""
        try:
            return await self.recv()
        except ConnectionClosed as exc:
            if exc.code in _OK_CLOSE_CODES:
                raise StopAsyncIteration from None
            raise

    # -- sending -------------------------------------------------------------------

    def send(self, message: str | bytes) -> None:
        """Send one message without waiting: ``str`` as text, bytes-like as binary.

        Raises ``ConnectionClosed`` once the connection is closing or closed,
        including when this write pushed the unsent bytes over
        ``max_write_buffer_bytes`` (the peer is then cut off), and ``TypeError``
        for anything else.
        """
        if self._code is not None:
            raise ConnectionClosed(self._code, self._reason)
        if isinstance(message, str):
            data = self._conn.send_text(message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            data = self._conn.send_binary(bytes(message))
        else:
            raise TypeError(f"send() takes str or bytes, not {type(message).__name__}")
        if not self._write(data):
            raise ConnectionClosed(self._code or 1006, self._reason)

    def ping(self, payload: bytes | None = None) -> asyncio.Future[float]:
        """Send a Ping now; the returned future gives the round trip in seconds
        when its Pong (or a later one: RFC 6455 §5.5.3) arrives.

        ``payload`` defaults to 4 random bytes. Raises ``ValueError`` for a
        payload already in flight or over 125 bytes, ``ConnectionClosed`` when
        closing. The future fails with ``ConnectionClosed`` if the connection ends first.
        """
        if payload is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        elif payload in self._pings:
            raise ValueError("a ping with this payload is already waiting for its pong")
        if self._code is not None:
            raise ConnectionClosed(self._code, self._reason)
        future = self._loop.create_future()
        if not self._send_ping(bytes(payload), future):
            raise ConnectionClosed(self._code or 1006, self._reason)
        return future

    def _send_ping(self, payload: bytes, future: asyncio.Future[float] | None) -> bool:
        data = self._conn.send_ping(payload)
        self._pings[payload] = (future, self._loop.time())
        return self._write(data)

    def _acknowledge_pings(self, payload: bytes) -> None:
        # RFC 6455 §5.5.3: "an endpoint MAY elect to send a Pong frame for only
        # the most recently processed Ping frame": a Pong answers every earlier Ping.
        if payload not in self._pings:
            return                                  # unsolicited: a heartbeat
        now, keepalive = self._loop.time(), False
        for sent in list(self._pings):
            future, sent_at = self._pings.pop(sent)
            if future is None:
                keepalive = True
            elif not future.done():
                future.set_result(now - sent_at)
            if sent == payload:
                break
        if keepalive:
            if self._pong_handle is not None:
                self._pong_handle.cancel()
                self._pong_handle = None
            self._arm_keepalive(self.ping_interval)

    def _write(self, data: bytes) -> bool:
        transport = self._transport
        if not data:
            return True
        if transport is None or transport.is_closing() or self._shut:
            return False
        transport.write(data)
        limit = self.max_write_buffer_bytes
        if limit is not None and transport.get_write_buffer_size() > limit:
            # The peer is not reading. Waiting would stall the caller (and
            # with it every other connection it serves): cut this one off.
            logger.warning("ws#%d peer not reading: over %d unsent bytes, aborting", self.id, limit)
            self._record(1006, "write buffer over the limit")
            transport.abort()
            return False
        return True

    # -- keepalive -------------------------------------------------------------

    def _arm_keepalive(self, delay: float | None) -> None:
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if delay is not None and self._lost is not None and not self._lost.done():
            self._keepalive_handle = self._loop.call_later(delay, self._keepalive)

    def _keepalive(self) -> None:
        self._keepalive_handle = None
        if not self.open:
            return
        idle = self._loop.time() - self._last_received
        if self._reading_paused or idle < self.ping_interval:
            # Not idle (or our reader is behind, so a Pong could not be read).
            self._arm_keepalive(self.ping_interval - idle if idle < self.ping_interval else self.ping_interval)
            return
        for stale in [p for p, (future, _) in self._pings.items() if future is None]:
            del self._pings[stale]                  # unanswered keepalives (ping_timeout=None)
        payload = os.urandom(4)
        while payload in self._pings:
            payload = os.urandom(4)
        if not self._send_ping(payload, None):
            return
        if self.ping_timeout is None:
            self._arm_keepalive(self.ping_interval)
        else:
            self._pong_handle = self._loop.call_later(self.ping_timeout, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self._pong_handle = None
        logger.info("ws#%d no pong within %g s", self.id, self.ping_timeout)
        # ws_close_code() maps any error not ours to 1011, as websockets closes
        # on a keepalive timeout.
        self._fail(TimeoutError("keepalive ping timeout"), "keepalive ping timeout")

    # -- closing ----------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake and wait until the TCP connection is closed.

        Sends Close(``code``, ``reason``) if none was sent, waits for the
        peer's Close and then for the TCP close (the server closes first: RFC
        6455 §7.1.1), all within ``close_timeout`` seconds, then aborts.
        Messages already received stay readable; messages arriving after our
        Close beyond ``max_queued_messages`` are dropped. Raises ``ValueError``
        for a code that may not be sent or a reason over 123 UTF-8 bytes.
        """
        if self._lost is None:
            raise RuntimeError("close() before the connection was made")
        if self._pending_failure is not None:
            self._fail(self._pending_failure)
        elif self._conn.state is State.OPEN and self._code is None:
            self._write(self._conn.send_close(code, reason))
            self._start_close_timer()
            if self._reading_paused:        # the peer's Close may sit behind unread messages
                self._resume_reading()
                self._process()
                self._after_feed()
        await self.wait_closed()

    def abort(self) -> None:
        """Drop the TCP connection now, whatever the closing handshake has reached
        (e.g. a peer that does not answer our Close when the server must stop)."""
        if self._transport is not None and self._lost is not None and not self._lost.done():
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed (cancelling the wait does not close it)."""
        if self._lost is None:
            raise RuntimeError("wait_closed() before the connection was made")
        await asyncio.shield(self._lost)

    def _record(self, code: int, reason: str) -> None:
        if self._code is None:
            self._code, self._reason = code, reason

    def _start_close_timer(self) -> None:
        # One deadline for the whole closing phase: Close frames, then TCP close.
        if (self._close_handle is None and self.close_timeout is not None
                and self._lost is not None and not self._lost.done()):
            self._close_handle = self._loop.call_later(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_handle = None
        logger.debug("ws#%d closing took over %g s: aborting", self.id, self.close_timeout)
        self._transport.abort()

    def _closing_handshake_done(self) -> None:
        self._start_close_timer()
        # RFC 6455 §7.1.1: "the underlying TCP connection, in most normal cases,
        # SHOULD be closed first by the server, so that it holds the TIME_WAIT
        # state and not the client". The client waits for it.
        if not self.client:
            self._shut_transport()

    def _shut_transport(self) -> None:
        if self._shut:
            return
        self._shut = True
        transport = self._transport
        if transport.can_write_eof():
            # Half-close: the peer reads our Close, then EOF; we keep reading
            # until its EOF so unread bytes never turn our close into a reset.
            transport.write_eof()
        else:
            transport.close()

    def _fail(self, exc: BaseException, reason: str | None = None) -> None:
        """_Fail the WebSocket Connection_ (RFC 6455 §7.1.7) because of ``exc``."""
        if self._failed or self._lost is None or self._lost.done():
            return
        self._failed = True
        self._pending_failure = None
        data = self._conn.fail(exc, reason)
        if data:
            self._record(*self._conn.close_sent)
        else:
            self._record(ws_close_code(exc), reason or "")
        self._write(data)
        self._backlog.clear()
        self._resume_reading()              # input is ignored now, but EOF must be seen
        logger.info("ws#%d failed (%s): close %d", self.id, type(exc).__name__, self._code)
        self._wake_reader()
        self._start_close_timer()
        if not self.client:
            self._shut_transport()
