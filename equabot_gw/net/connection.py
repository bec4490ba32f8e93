"""One HTTP/1.1 client connection of the server: parsing, ordering, timeouts, answers.

``Connection`` is the ``asyncio.Protocol`` the server makes per accepted
socket, and the one task that answers its requests strictly in order
(pipelining): it feeds the sans-I/O parser of ``http11.py``, routes each
request, runs its handler, has its response written (plain or streamed, by
its base class ``output.ConnectionOutput``, which owns write flow control) or
hands an upgraded connection over, and keeps the deadline of each phase
(``Limits``). ``server.py`` accepts connections, counts them and shuts them down.

A client that disconnects (EOF or reset) while its request is being handled is
gone: its handler task is cancelled at once and nothing more is written.

Every answer made here from an error (the parser's, a timeout's, the router's,
a body guard's, a handler's ``ApiError`` or failure) goes through the server's
``error_fields`` hook, given the request's fields as far as they were read;
answers that handlers return never do, so a request that succeeds costs nothing.

Every buffer has a byte bound and every wait a deadline: received bytes ahead
of the request being handled stop being read past ``MAX_PIPELINE_BUFFER_BYTES``;
output of every kind (plain, streamed, error) goes out in pieces of at most
``MAX_WRITE_PIECE_BYTES``, each written only while the client's unsent bytes
are under ``WRITE_HIGH_WATER_BYTES``, and the next pipelined request waits too;
a client that reads nothing for ``Limits.send_timeout`` is dropped, also after
its last response, when the connection closes (``output.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..errors import ApiError, HTTPProtocolError
from . import heads, http11
from .output import MAX_WRITE_PIECE_BYTES, WRITE_HIGH_WATER_BYTES, ConnectionOutput
from .routes import HTTPRequest, Response, StreamingResponse, Upgrade, error_response

if TYPE_CHECKING:
    from .server import HTTPServer

__all__ = ["Connection", "Limits"]

log = logging.getLogger("equabot_gw.http")

# Defaults of Limits; the gateway passes its configured values (gateway.http.*).
DEFAULT_HEADER_TIMEOUT: Final = 10.0        # nginx client_header_timeout is 60 s; 10 s is the gateway's default
DEFAULT_KEEP_ALIVE_TIMEOUT: Final = 30.0    # between requests on an idle connection
DEFAULT_BODY_TIMEOUT: Final = 30.0          # longest pause between two pieces of a request body
DEFAULT_SEND_TIMEOUT: Final = 60.0          # longest a client may read nothing of its output (nginx send_timeout)
# After an error response the server closes its sending side and reads (and
# drops) what the client still sends before closing (RFC 9112 §9.6): until the
# client's EOF, a pause of LINGER_TIMEOUT, or LINGER_MAX_SECONDS in all, as
# nginx's lingering_timeout (5 s) and lingering_time (30 s) bound it. A client
# uploading a body the server refused is still sending when the answer goes
# out; closing under it would draw a reset that can destroy that answer.
LINGER_TIMEOUT: Final = 2.0
LINGER_MAX_SECONDS: Final = 30.0
# Bytes received ahead of the request being handled (pipelining) before the
# server stops reading from that client.
MAX_PIPELINE_BUFFER_BYTES: Final = 256 * 1024
# Pipelined requests answered back to back without waiting for bytes: past
# this many the connection lets the event loop run others before going on.
MAX_REQUESTS_PER_TURN: Final = 32

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(slots=True)
class Limits:
    """Per-connection limits in bytes and seconds (``None`` disables a timeout)."""

    max_request_line_bytes: int = http11.DEFAULT_MAX_REQUEST_LINE_BYTES
    max_head_bytes: int = http11.DEFAULT_MAX_HEAD_BYTES
    max_headers: int = http11.DEFAULT_MAX_HEADERS
    max_body_bytes: int = http11.DEFAULT_MAX_BODY_BYTES
    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT
    keep_alive_timeout: float | None = DEFAULT_KEEP_ALIVE_TIMEOUT
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT


def _timed_out() -> ApiError:
    # RFC 9110 §15.5.9: 408 when the server "did not receive a complete request
    # message within the time that it was prepared to wait".
    return ApiError(408, "request head or body not received in time", code="request_timeout")


class Connection(ConnectionOutput):
    """One client connection: feeds the parser, runs requests in order, owns timers."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.limits = server.limits
        self.id = next(server.connection_ids)
        self.loop = asyncio.get_running_loop()
        self.parser = http11.RequestParser(
            max_request_line_bytes=self.limits.max_request_line_bytes,
            max_head_bytes=self.limits.max_head_bytes, max_headers=self.limits.max_headers,
            max_body_bytes=self.limits.max_body_bytes)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.task: asyncio.Task | None = None
        # Per-connection state, reset as requests come and go.
        self._data_waiter: asyncio.Future | None = None
        self._drain_waiter: asyncio.Future | None = None
        self._write_paused = False
        self._reading_paused = False
        self._handling = False          # a handler is running: disconnect cancels it
        self._idle = True               # between requests, no byte of the next yet
        self._finishing = False         # close after the current response
        self._gone = False              # EOF or connection lost
        self._closed = False            # connection lost: the transport is done
        self._timed_out = False
        self._upgraded = False
        self._linger = False            # close after an error: half-close, drain input, then close
        self._dropped = 0               # bytes the client sent while the connection lingered
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0            # when _timer fires (loop time)
        self._close_timer: asyncio.TimerHandle | None = None
        self._corked: list[bytes] = []  # stream output held until the writing task steps back
        self._corked_bytes = 0
        self._streak = 0                # requests answered since the loop last ran others

    def __repr__(self) -> str:
        return (f"<Connection {self.id} client={self.client} handling={self._handling} "
                f"gone={self._gone}>")

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else "unix"
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)  # type: ignore[attr-defined]
        self.server.connections.add(self)
        if self.server.closing:
            transport.close()
            return
        self._set_deadline(self.limits.header_timeout)
        self.task = self.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._linger:
            self._dropped += len(data)  # closing after an error: input is drained, not parsed
            return
        self.parser.receive_data(data)
        if self._idle:
            self._idle = False
            self._set_deadline(self.limits.header_timeout)
        if self._data_waiter is None and self.parser.buffered_bytes > MAX_PIPELINE_BUFFER_BYTES:
            # Read ahead of what the request loop waits for (a handler runs, a
            # response waits for the client): bounded; reading resumes when the
            # loop next waits for bytes.
            self._pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        # A client whose connection reaches EOF is gone. What its
        # stream already produced still goes out, as it would have uncorked.
        self._uncork()
        self._lost()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self._lost()
        self.server.connections.discard(self)
        for timer in (self._timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._close_timer = None
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # ---- control from the server ----
    def finish(self) -> None:
        """Close when idle; otherwise after the response in progress."""
        self._finishing = True
        if self._upgraded:
            return      # the upgraded protocol's application closes it
        if self._linger:
            self._wake_reader()     # a lingering close ends now
        if not self._handling and not self.parser.in_message and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping unsent output (``close()`` would wait for a reader that never reads)."""
        if self.transport is not None:
            self.transport.abort()

    # ---- internals ----
    def _lost(self) -> None:
        if self._gone:
            return
        self._gone = True
        self.parser.receive_data(b"")
        if self._handling and self.task is not None:
            self.task.cancel()
        self._wake_reader()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _set_deadline(self, timeout: float | None) -> None:
        # Lazy timer: moving the deadline later only stores it; the armed timer
        # re-arms itself when it fires early. Saves a call_at per request.
        if timeout is None:
            self._deadline = None
            return
        when = self.loop.time() + timeout
        self._deadline = when
        if self._timer is None or self._timer_at > when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        if self._deadline is None or self._gone:
            return
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline
            return
        self._timed_out = True
        self._wake_reader()

    async def _wait_data(self) -> None:
        self._streak = 0
        self._resume_reading()
        self._data_waiter = self.loop.create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None

    # ---- the request loop ----
    async def _serve(self) -> None:
        try:
            while not self._gone:
                request = await self._next_request()
                if request is None:
                    break
                if not await self._respond(request):
                    break
                self._streak += 1
                if self._streak >= MAX_REQUESTS_PER_TURN:
                    # Pipelined requests whose handlers never wait would hold
                    # the loop for as long as the client sends them.
                    self._streak = 0
                    await asyncio.sleep(0)
        except HTTPProtocolError as exc:
            if not self._gone:
                self._send_final_error(exc, self._fields_so_far())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("conn=%d: unexpected error", self.id)
            if not self._gone:
                self._send_final_error(RuntimeError(), None)
        finally:
            self._deadline = None
            if self._linger and not self._gone and not self._upgraded:
                await self._lingering_close()
            self.task = None
            if self.transport is not None and not self._upgraded:
                self._close()

    async def _lingering_close(self) -> None:
        # RFC 9112 §9.6: a server that closes while the client may still be
        # sending should close its sending side first and keep reading, or the
        # client's next bytes draw a TCP reset that can destroy the response
        # before the client reads it.
        assert self.transport is not None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._resume_reading()
        give_up = self.loop.time() + LINGER_MAX_SECONDS
        while not self._gone:
            dropped = self._dropped
            self._data_waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self._data_waiter, min(LINGER_TIMEOUT, give_up - self.loop.time()))
            except asyncio.TimeoutError:
                if self._dropped == dropped or self.loop.time() >= give_up:
                    return              # a pause, or long enough: close
                continue
            except asyncio.CancelledError:
                return
            finally:
                self._data_waiter = None
            return                      # woken: the client's EOF, or the server shuts down

    def _send_final_error(self, exc: BaseException, fields: heads.Headers | None) -> None:
        """Answer ``exc`` and close; ``fields``: the request's header fields, as far as they were read."""
        self._linger = True
        response = self._error_response(exc, fields)
        rid = self.server.next_request_id()
        head, body = self._encode_response(response, "1.1", head_only=False, close=True, request_id=rid)
        self._write(head + body)        # an error body is small: one write, no wait
        self._log("-", "-", None, response.status, len(body), time.perf_counter(), rid)

    async def _next_request(self) -> http11.Request | None:
        """The next request head; None when the client is done or timed out."""
        parser = self.parser
        while True:
            event = parser.next_event()
            if event is http11.NEED_DATA:
                if self._gone:
                    return None
                if self._timed_out:
                    return self._time_out()
                await self._wait_data()
                continue
            if event is http11.EOF:
                return None
            return event  # type: ignore[return-value]

    def _time_out(self) -> None:
        if self.parser.in_message:
            self._send_final_error(_timed_out(), self._fields_so_far())
        return None

    def _fields_so_far(self) -> heads.Headers | None:
        """The fields of the head being read or refused, as far as they can be read (None: no hook)."""
        if self.server.error_fields is None:
            return None
        return heads.salvage_fields(self.parser.head_so_far, self.limits.max_headers)

    def _error_response(self, exc: BaseException, fields: heads.Headers | None) -> Response:
        """``error_response(exc)`` with the fields the server's ``error_fields`` adds for ``fields``."""
        response = error_response(exc)
        hook = self.server.error_fields
        if hook is not None and fields is not None:
            try:
                response.headers.extend(hook(fields))
            except Exception:       # the hook's bug must not cost the client its answer
                log.exception("conn=%d: error_fields failed", self.id)
        return response

    async def _read_body(self, head: http11.Request, route: str | None, rid: str) -> bytes:
        """The whole body; ``ApiError`` from the route's body guard before any wait for it."""
        parser = self.parser
        unguarded = route is not None
        if head.expect_continue and (head.chunked or head.content_length):
            self._guard_body(head, route, rid)
            unguarded = False
            # RFC 9110 §10.1.1: a server that wants the content sends 100 first.
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        pieces: list[bytes] = []
        while True:
            event = parser.next_event()
            if event is http11.END_OF_MESSAGE:
                break
            if event is http11.NEED_DATA:
                if self._gone:
                    raise asyncio.CancelledError("client disconnected")
                if self._timed_out:
                    raise _timed_out()      # answered as the request's, then closed
                if unguarded:
                    # Most bodies arrive with their head and are never waited for;
                    # one still to come is held only for a client the route admits.
                    self._guard_body(head, route, rid)
                    unguarded = False
                # Only a body still to come needs its own deadline.
                self._set_deadline(self.limits.body_timeout)
                await self._wait_data()
                continue
            pieces.append(event)  # type: ignore[arg-type]
        self._deadline = None
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _guard_body(self, head: http11.Request, route: str | None, rid: str) -> None:
        guard = None if route is None else self.server.router.body_guard(head.method, route)
        if guard is not None:
            guard(HTTPRequest(head.method, head.path, head.query, head.version, head.headers,
                              b"", self.client, self.id, rid))

    async def _respond(self, head: http11.Request) -> bool:
        """Route, read the body, run the handler, write its response.

        Returns False when the connection must end after this request.
        """
        started = time.perf_counter()
        rid = head.headers.get("x-request-id")
        if rid is None or _REQUEST_ID.fullmatch(rid) is None:
            rid = self.server.next_request_id()
        # After a CONNECT the client's bytes are tunnel data, not requests: a
        # CONNECT answered without a switch ends the connection.
        close = not head.keep_alive or self._finishing or self.server.closing or head.upgrade == "connect"
        self._handling = True
        route: str | None = None
        try:
            try:
                handler, params, route = self.server.router.resolve(head.method, head.path)
            except ApiError:
                if head.chunked or head.content_length:
                    close = True        # the body stays unread: the connection cannot go on
                    self._linger = True
                else:
                    await self._read_body(head, None, rid)
                raise
            try:
                body = await self._read_body(head, route, rid)
            except Exception:           # refused by the body guard (or it failed): the rest stays unread
                close = True
                self._linger = True
                raise
            request = HTTPRequest(head.method, head.path, head.query, head.version, head.headers,
                                  body, self.client, self.id, rid, params)
            response = await handler(request)
        except ApiError as exc:
            response = self._error_response(exc, head.headers)
        except asyncio.CancelledError:
            self._log(head.method, head.path, route, 499, 0, started, rid)
            raise
        except HTTPProtocolError as exc:
            # In the body (framing, size): answered as the request's, then closed.
            close = True
            self._linger = True
            response = self._error_response(exc, head.headers)
        except Exception:
            log.exception("conn=%d rid=%s: handler failed", self.id, rid)
            response = self._error_response(RuntimeError(), head.headers)
        finally:
            self._handling = False
        if self._gone:
            self._log(head.method, head.path, route, 499, 0, started, rid)
            if isinstance(response, StreamingResponse):
                await self._close_stream(response)      # never started: closed all the same
            return False
        if isinstance(response, Response):
            head_bytes, body = self._encode_response(response, head.version, head.method == "HEAD",
                                                     close, rid)
            size = len(body)
            if size <= MAX_WRITE_PIECE_BYTES:
                self._write(head_bytes + body)      # the common case: one send
            else:
                self._write(head_bytes)
                try:
                    await self._write_pieces(body)
                except asyncio.CancelledError:
                    self._log(head.method, head.path, route, 499, 0, started, rid)     # left mid-body
                    raise
        elif isinstance(response, StreamingResponse):
            self._handling = True
            try:
                size = await self._write_stream(response, head.version, head.method == "HEAD", rid)
            except asyncio.CancelledError:
                self._log(head.method, head.path, route, 499, 0, started, rid)    # left mid-stream
                raise
            finally:
                self._handling = False
            close = close or head.version == "1.0"
        else:
            self._log(head.method, head.path, route, 101, 0, started, rid)
            await self._switch(response, rid)
            return False
        self._log(head.method, head.path, route, response.status, size, started, rid)
        if close or self._gone:
            return False
        if self._write_paused:
            await self._drain()     # the next request waits until the client reads this answer
        self._idle = True
        self._set_deadline(self.limits.keep_alive_timeout)
        return True

    def _log(self, method: str, path: str, route: str | None, status: int, size: int,
             started: float, rid: str) -> None:
        server = self.server
        if server.access_log is None and server.observer is None:
            return
        duration = time.perf_counter() - started
        if server.access_log is not None:
            server.access_log.record(self.id, method, path, status, size, duration, rid)
        if server.observer is not None:
            try:
                server.observer(method, route, status, size, duration)
            except Exception:       # the observer's bug must not cost the client its answer
                log.exception("conn=%d rid=%s: request observer failed", self.id, rid)

    async def _switch(self, upgrade: Upgrade, rid: str) -> None:
        headers = self._base_headers(rid)
        headers.extend(upgrade.headers)
        self._write(http11.encode_response_head(101, headers))
        assert self.transport is not None
        self._upgraded = True
        self._deadline = None
        if self._timer is not None:     # the new protocol keeps its own time: nothing here may
            self._timer.cancel()        # hold this connection (and its server) after the switch
            self._timer = None
        protocol = upgrade.protocol_factory()
        leftover = self.parser.trailing_data
        self.transport.set_protocol(protocol)
        self._resume_reading()
        protocol.connection_made(self.transport)
        if leftover:
            protocol.data_received(leftover)
        self.server.upgraded += 1
        try:
            await upgrade.serve(protocol)
        finally:
            self.server.upgraded -= 1
            # The new protocol receives connection_lost now; forget this one here.
            self.server.connections.discard(self)
            if not self.transport.is_closing():
                self.transport.close()
