"""The output half of an HTTP connection: response heads and bodies, plain or streamed, in bounded writes.

``ConnectionOutput`` is the base class of ``connection.Connection`` (as
asyncio's ``FlowControlMixin`` is of its stream protocols) and owns what goes
to the client: the head of a response (``Date``, ``Server``, ``X-Request-Id``
and its framing), a body written in pieces of at most ``MAX_WRITE_PIECE_BYTES``,
each only while the client's unsent bytes are under ``WRITE_HIGH_WATER_BYTES``
(``pause_writing``/``resume_writing``), a stream's output corked per task step,
streamed responses (chunked, or close-delimited to HTTP/1.0) with their idle
filler, and the close after the last response, bounded by ``Limits.send_timeout``.
It holds no state of its own (``Connection.__init__`` makes what it reads) and
knows nothing of parsing, routing, handlers or the deadlines of request phases.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from . import http11
from .routes import Response, StreamingResponse

if TYPE_CHECKING:
    from .connection import Connection, Limits
    from .server import HTTPServer

__all__ = ["ConnectionOutput", "MAX_CORKED_BYTES", "MAX_WRITE_PIECE_BYTES", "SERVER_NAME",
           "WRITE_HIGH_WATER_BYTES"]

log = logging.getLogger("equabot_gw.http")

# Write buffer marks: above the high mark the connection waits for the client
# to read before it writes more or reads the next request (asyncio's default
# high-water mark is 64 KiB; the low mark is a quarter of the high one).
WRITE_HIGH_WATER_BYTES: Final = 256 * 1024
# The largest single write: a bigger body or stream piece is written in pieces
# of this size, waiting for the client between them, so no response of any
# size is copied whole into the transport's buffer.
MAX_WRITE_PIECE_BYTES: Final = 64 * 1024
# Stream output held back to be sent with the rest of its task step (one
# send instead of several); past this many bytes it goes out at once.
MAX_CORKED_BYTES: Final = 64 * 1024

SERVER_NAME: Final = "equabot-gw"


class ConnectionOutput(asyncio.Protocol):
    """Writes to one client with flow control: the base class of ``connection.Connection``.

    A client that reads nothing for ``Limits.send_timeout`` is dropped with the
    connection's ``abort()`` and made gone with its ``_lost()``.
    """

    # Made by Connection.__init__; the private ones are kept here.
    server: HTTPServer
    limits: Limits
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    id: int
    _gone: bool
    _closed: bool
    _write_paused: bool
    _drain_waiter: asyncio.Future | None
    _close_timer: asyncio.TimerHandle | None
    _corked: list[bytes]
    _corked_bytes: int

    # ---- asyncio.Protocol: write flow control ----
    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # ---- writing ----
    async def _drain(self) -> None:
        """Wait while the client's unsent output is above the high-water mark.

        ``send_timeout`` bounds each stretch in which the client takes nothing:
        the wait goes on while its unsent bytes shrink (a slow reader is
        served), and a client that reads nothing for that long is dropped.
        Raises ``CancelledError`` once the client is gone.
        """
        timeout = self.limits.send_timeout
        while self._write_paused and not self._gone:
            unsent = self._unsent_bytes()
            self._drain_waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self._drain_waiter, timeout)
            except asyncio.TimeoutError:
                if self._unsent_bytes() < unsent:
                    continue                # it reads, slowly: wait on
                # A client that reads nothing for this long would hold the
                # connection (and its buffered output) forever: it is gone.
                log.info("conn=%d: client read nothing for %ss; dropped", self.id, timeout)
                self.abort()
                self._lost()
            finally:
                self._drain_waiter = None
        if self._gone:
            raise asyncio.CancelledError("client disconnected")

    def _unsent_bytes(self) -> int:
        try:
            return self.transport.get_write_buffer_size() if self.transport is not None else 0
        except NotImplementedError:
            return 0        # a transport without flow control (a test double) holds nothing

    async def _write_pieces(self, data: bytes) -> None:
        """Write ``data`` in pieces of at most ``MAX_WRITE_PIECE_BYTES``, each when the client keeps up."""
        view = memoryview(data)
        for start in range(0, len(view), MAX_WRITE_PIECE_BYTES):
            if self._write_paused or self._gone:
                await self._drain()
            self._write(view[start:start + MAX_WRITE_PIECE_BYTES])

    def _close(self) -> None:
        """Close after the unsent output; a client that reads none of it for ``send_timeout`` is cut off."""
        assert self.transport is not None
        self.transport.close()
        if not self._closed and self.limits.send_timeout is not None and self._close_timer is None:
            self._close_timer = self.loop.call_later(self.limits.send_timeout, self._close_timed_out,
                                                     self._unsent_bytes())

    def _close_timed_out(self, unsent: int) -> None:
        self._close_timer = None
        now = self._unsent_bytes()
        if now and now < unsent and self.limits.send_timeout is not None:     # it reads, slowly
            self._close_timer = self.loop.call_later(self.limits.send_timeout, self._close_timed_out, now)
        elif not self._closed:
            self.abort()

    def _write(self, data: bytes | memoryview) -> None:
        if self._corked:
            self._uncork()
        if not self._gone and self.transport is not None:
            self.transport.write(data)

    def _write_corked(self, data: bytes) -> None:
        # A stream's head, pieces and last chunk often come in one task step
        # (the head with the first words, the final chunk with [DONE] and the
        # terminator). Each transport.write to an idle socket is one send();
        # holding the step's output until the loop gets control back sends it
        # as one segment. Measured on the proxy stream (S4): 5 sends per
        # response became 2.
        if not self._corked:
            self.loop.call_soon(self._uncork)
        self._corked.append(data)
        self._corked_bytes += len(data)
        if self._corked_bytes >= MAX_CORKED_BYTES:
            self._uncork()      # a body that never yields control still meets backpressure

    def _uncork(self) -> None:
        if self._corked:
            data = b"".join(self._corked)
            self._corked.clear()
            self._corked_bytes = 0
            if not self._gone and self.transport is not None:
                self.transport.write(data)

    # ---- responses ----
    def _base_headers(self, rid: str) -> list[tuple[str, str]]:
        return [("date", self.server.date_header()), ("server", SERVER_NAME),
                ("x-request-id", rid)]

    def _encode_response(self, response: Response, version: str, head_only: bool,
                         close: bool, request_id: str) -> tuple[bytes, bytes]:
        """The head of ``response`` and the body to send after it."""
        headers = self._base_headers(request_id)
        headers.extend(response.headers)
        body = response.body
        status = response.status
        # RFC 9110 §8.6: no Content-Length in 1xx and 204 responses.
        if status >= 200 and status != 204:
            headers.append(("content-length", str(len(body))))
        if close:
            headers.append(("connection", "close"))
        elif version == "1.0":
            headers.append(("connection", "keep-alive"))
        head = http11.encode_response_head(status, headers)
        if head_only or status == 304 or status == 204:
            body = b""
        return head, body

    async def _write_stream(self, response: StreamingResponse, version: str,
                            head_only: bool, request_id: str) -> int:
        headers = self._base_headers(request_id)
        headers.extend(response.headers)
        chunked = version == "1.1"
        # To an HTTP/1.0 client the stream is close-delimited.
        headers.append(("transfer-encoding", "chunked") if chunked else ("connection", "close"))
        self._write_corked(http11.encode_response_head(response.status, headers))
        size = 0
        body = response.body
        idle = _IdleFiller(self, response, chunked) if response.idle_bytes else None
        self.server.open_streams += 1
        try:
            if head_only:
                return 0
            async for piece in body:
                if self._gone:
                    break
                if piece:
                    n = len(piece)
                    size += n
                    if n <= MAX_WRITE_PIECE_BYTES:
                        self._write_corked(http11.encode_chunk(piece) if chunked else piece)
                    else:
                        # A huge piece is one chunk, put on the wire in bounded
                        # writes with the client keeping up between them: never
                        # copied whole, never a buffer the client cannot drain.
                        if chunked:
                            self._write_corked(b"%x\r\n" % n)
                        self._uncork()
                        await self._write_pieces(piece)
                        if chunked:
                            self._write_corked(b"\r\n")
                    if idle is not None:
                        idle.touch()
                    if self._write_paused:
                        await self._drain()
            if chunked and not self._gone:
                self._write_corked(http11.LAST_CHUNK)
        finally:
            self.server.open_streams -= 1
            self._uncork()      # the response is complete on the wire before anything else happens
            if idle is not None:
                idle.stop()
            await self._close_stream(response)
        return size

    async def _close_stream(self, response: StreamingResponse) -> None:
        """Close ``response``'s body, then tell its ``on_close`` (once, whatever happened)."""
        try:
            aclose = getattr(response.body, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if response.on_close is not None:
                try:
                    response.on_close()
                except Exception:       # the door's bug must not take the connection's task with it
                    log.exception("conn=%d: a stream's on_close failed", self.id)


class _IdleFiller:
    """Sends a stream's ``idle_bytes`` whenever it was quiet for ``idle_interval``."""

    def __init__(self, conn: Connection, response: StreamingResponse, chunked: bool) -> None:
        self.conn = conn
        data = response.idle_bytes or b""
        self.data = http11.encode_chunk(data) if chunked else data
        self.interval = response.idle_interval
        self.last = conn.loop.time()
        self.handle = conn.loop.call_later(self.interval, self._fire)

    def touch(self) -> None:
        self.last = self.conn.loop.time()

    def _fire(self) -> None:
        now = self.conn.loop.time()
        if now - self.last >= self.interval:
            self.conn._write(self.data)
            self.last = now
        self.handle = self.conn.loop.call_at(self.last + self.interval, self._fire)

    def stop(self) -> None:
        self.handle.cancel()
