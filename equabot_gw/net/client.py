"""A small async HTTP/1.1 client for upstream providers: pooled keep-alive, TLS, streamed bodies.

Owns the sockets and the clock around the sans-I/O codec of ``http11.py`` in
the client role: one ``asyncio.Protocol`` per connection, an idle pool per
origin (scheme, host, port), one timeout per phase (connect, write, read-idle;
the read timeout also bounds the whole response head), each raising
``ClientTimeout(phase, timeout)``. A response body is an async
iterator of ``bytes``; a response closed before its end closes its socket at
once and never returns it to the pool. Raises ``ClientConnectError``,
``ClientTimeout``, ``HTTPProtocolError`` (malformed response) and
``ConnectionClosed`` (the upstream dropped mid-response); callers map them at
their own boundary. Must not import config, gateway or agents.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import urllib.parse
from collections.abc import Iterable
from typing import Final, NamedTuple

from ..errors import ClientConnectError, ClientTimeout, ConnectionClosed, GatewayError, HTTPProtocolError
from . import http11

# Defaults; providers pass their configured timeout for every phase.
# Precedents: Go's http.DefaultTransport dials for 30 s and allows 10 s of TLS
# handshake; httpcore drops idle pooled connections after 5 s, before most
# servers' own keep-alive timeouts (nginx 75 s, Node 5 s) close them under us.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0       # TCP connect + TLS handshake
DEFAULT_WRITE_TIMEOUT: Final = 30.0         # each wait for the socket to take request bytes
DEFAULT_READ_TIMEOUT: Final = 120.0         # each silence before the head or between body bytes
DEFAULT_KEEP_ALIVE_TIMEOUT: Final = 5.0     # idle seconds a pooled connection is kept
DEFAULT_MAX_IDLE_PER_ORIGIN: Final = 8      # pooled idle connections per origin
# Unparsed bytes held before the socket stops being read (asyncio streams use 64 KiB).
READ_HIGH_WATER_BYTES: Final = 256 * 1024
# A response closed early is kept for reuse only if its rest is already buffered
# and no larger than this; otherwise the socket is closed.
MAX_DISCARD_ON_CLOSE_BYTES: Final = 64 * 1024
USER_AGENT: Final = "equabot-gw"

# RFC 9110 §9.2.2: "Of the request methods defined by this specification,
# the PUT, DELETE, and safe request methods are idempotent."
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class Origin(NamedTuple):
    """Where a connection goes: the pool key (RFC 6454 §4 origin of the URL)."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """The ``Host`` field value: RFC 9110 §7.2 ``uri-host [ ":" port ]``, port only if not default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if _DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """The origin and origin-form request target of an ``http``/``https`` URL.

    Raises ``ValueError`` for another scheme, a missing host, a bad port or
    userinfo (credentials do not belong in URLs; the message never repeats the URL).
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported URL scheme {scheme!r}")
    if "@" in parts.netloc:
        raise ValueError("userinfo in the URL is not supported")
    if not parts.hostname:
        raise ValueError("URL without a host")
    port = parts.port or _DEFAULT_PORTS[scheme]        # .port raises ValueError if invalid
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(scheme, parts.hostname, port), target


class _Connection(asyncio.Protocol):
    """One upstream connection: received bytes go straight into a ``ResponseParser``."""

    def __init__(self, origin: Origin, parser: http11.ResponseParser) -> None:
        self.origin = origin
        self.parser = parser
        self.transport: asyncio.Transport | None = None
        # Per exchange.
        self.busy = False
        self.reusable = True
        self.received = 0               # bytes received since the request was sent
        self.idle_since = 0.0
        # Connection lifetime.
        self._eof = False               # the peer closed its side, or the connection is gone
        self._closed_here = False       # close() or abort() was called
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False

    def __repr__(self) -> str:
        state = "lost" if self._lost else "eof" if self._eof else "busy" if self.busy else "idle"
        return f"<_Connection {self.origin.scheme}://{self.origin.authority} {state}>"

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes on an idle connection answer no request (a stray or late
            # response): the connection cannot be trusted with the next one.
            self.abort()
            return
        self.received += len(data)
        self.parser.receive_data(data)
        if self.parser.buffered_bytes > READ_HIGH_WATER_BYTES and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake_reader()

    def eof_received(self) -> None:
        self._eof = True
        self._wake_reader()
        # Returning None lets the transport close itself.

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        self._lost_exc = exc
        self._wake_reader()
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- used by the client ----
    @property
    def usable(self) -> bool:
        """True while the connection can carry another request."""
        return not self._eof and self.transport is not None and not self.transport.is_closing()

    def start_exchange(self, method: str) -> None:
        self.busy = True
        self.received = 0
        self.parser.expect(method)

    async def send(self, data: bytes, timeout: float | None) -> None:
        """Write ``data``; wait (at most ``timeout`` s) until the transport takes more."""
        if self._lost or self.transport is None:
            raise ConnectionClosed(reason="upstream closed the connection")
        self.transport.write(data)
        while self._writing_paused and not self._lost:
            self._write_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._write_waiter
            except TimeoutError:
                raise ClientTimeout("write", timeout or 0.0) from None
        if self._lost:
            raise ConnectionClosed(reason="upstream closed the connection while the request was sent")

    async def next_event(self, timeout: float | None) -> object:
        """The next parser event; waits at most ``timeout`` s for each piece of data.

        Raises ``ClientTimeout("read")``, ``HTTPProtocolError`` or
        ``ConnectionClosed`` (reset, or EOF where the message needs more bytes).
        """
        while True:
            event = self.parser.next_event()
            if event is not http11.NEED_DATA:
                return event
            if self._eof:
                return self._event_at_eof()
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()     # type: ignore[union-attr]
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._read_waiter
            except TimeoutError:
                raise ClientTimeout("read", timeout or 0.0) from None

    def _event_at_eof(self) -> object:
        # The parser has taken every byte received and asked for more. A reset
        # never ends a message cleanly, not even a close-delimited one; a clean
        # EOF ends a close-delimited body (RFC 9112 §6.3 (8)) and nothing else.
        if self._closed_here:
            raise ConnectionClosed(reason="connection closed by the client")
        if self._lost_exc is not None:
            raise ConnectionClosed(reason="upstream connection reset") from self._lost_exc
        self.parser.receive_data(b"")
        try:
            event = self.parser.next_event()
        except HTTPProtocolError as exc:
            raise ConnectionClosed(reason="upstream closed the connection mid-response") from exc
        if event is not http11.END_OF_MESSAGE:
            raise ConnectionClosed(reason="upstream closed the connection before responding")
        return event

    def discard_buffered_rest(self) -> bool:
        """Skip the rest of the message if it is already here; True if the message ended."""
        discarded = 0
        try:
            while discarded <= MAX_DISCARD_ON_CLOSE_BYTES:
                event = self.parser.next_event()
                if event is http11.END_OF_MESSAGE:
                    return True
                if not isinstance(event, bytes):
                    return False
                discarded += len(event)
        except HTTPProtocolError:
            return False
        return False

    def close(self) -> None:
        """Close gracefully (flush, TLS close_notify); used for idle connections."""
        self._eof = self._closed_here = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the socket now, unread data and all (the peer sees EOF or a reset)."""
        self._eof = self._closed_here = True
        if self.transport is not None:
            self.transport.abort()


class ClientResponse:
    """A response head and its streamed body.

    Iterate (``async for chunk in response``) for the body's ``bytes`` as they
    arrive, or ``await read()``. Always ``aclose()`` (or use ``async with``):
    the connection returns to the pool only when the whole body was read (or
    its rest is already buffered); otherwise the socket is closed at once.
    A read that raises or is cancelled also closes the socket.
    """

    __slots__ = ("status", "reason", "version", "headers", "_client", "_conn", "_done", "_closed",
                 "_ended")

    def __init__(self, client: HTTPClient, conn: _Connection, head: http11.Response) -> None:
        self.status = head.status
        self.reason = head.reason
        self.version = head.version
        self.headers = head.headers
        self._client = client
        self._conn = conn
        self._done = False
        self._closed = False
        self._ended = False     # the parser reached the end; the last bytes are not handed out yet

    def __repr__(self) -> str:
        state = "closed" if self._closed else "complete" if self._done else "streaming"
        return f"<ClientResponse {self.status} {state}>"

    def __aiter__(self) -> ClientResponse:
        return self

    async def __anext__(self) -> bytes:
        if self._done or self._closed:
            raise StopAsyncIteration
        if self._ended:
            self._end()
        try:
            event = await self._conn.next_event(self._client.read_timeout)
        except BaseException:
            self._close(complete=False)
            raise
        if event is http11.END_OF_MESSAGE:
            self._end()
        return self._with_buffered(event)   # type: ignore[arg-type]

    def _with_buffered(self, data: bytes) -> bytes:
        # Everything already received goes out with this piece: one resume of
        # the consumer per read from the socket, not one per HTTP chunk (an
        # event stream puts each event in its own chunk).
        parser = self._conn.parser
        parts = [data]
        while True:
            try:
                event = parser.next_event()
            except HTTPProtocolError:
                break           # sticky: the next __anext__ raises it
            if event is http11.NEED_DATA:
                break
            if event is http11.END_OF_MESSAGE:
                self._ended = True
                break
            parts.append(event)     # type: ignore[arg-type]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _end(self) -> None:
        self._done = True
        self._close(complete=True)
        raise StopAsyncIteration

    async def read(self, max_bytes: int | None = None) -> bytes:
        """The body, or only its first ``max_bytes`` bytes (the rest is not read; see ``aclose``)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self:
            parts.append(chunk)
            size += len(chunk)
            if max_bytes is not None and size >= max_bytes:
                break
        await self.aclose()
        return b"".join(parts)[:max_bytes]

    async def aclose(self, *, drain_timeout: float = 0.0) -> None:
        """Release the connection: back to the pool if the message ended, else closed at once.

        A caller that knows the payload is complete (an event stream's own
        end marker came) but not the framing (the last chunk may be a packet
        behind) passes ``drain_timeout`` > 0: the rest is then read in the
        background for up to that many seconds and the connection pooled if
        it ends in time. Never for a response abandoned mid-payload: that
        one must stop the upstream now.
        """
        if self._closed:
            return
        self._done = self._done or self._ended or self._conn.discard_buffered_rest()
        if self._done or drain_timeout <= 0:
            self._close(complete=self._done)
        else:
            self._closed = True
            self._client._drain_later(self._conn, drain_timeout)

    def _close(self, *, complete: bool) -> None:
        if not self._closed:
            self._closed = True
            self._client._release(self._conn, reusable=complete)

    async def __aenter__(self) -> ClientResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class HTTPClient:
    """HTTP/1.1 requests with keep-alive connection pooling per origin.

    Timeouts are in seconds (``None`` disables one): ``connect_timeout`` covers
    TCP and the TLS handshake, ``write_timeout`` each wait for the socket to
    take request bytes, ``read_timeout`` each wait for response bytes (before
    the head and between body bytes) and the whole response head, interim
    1xx responses included; a pooled connection idle for
    ``keep_alive_timeout`` seconds is closed instead of reused.
    ``ssl_context`` defaults to ``ssl.create_default_context()`` (certificates
    and host name verified, SNI sent).
    """

    def __init__(self, *, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                 write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
                 read_timeout: float | None = DEFAULT_READ_TIMEOUT,
                 keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT,
                 max_idle_per_origin: int = DEFAULT_MAX_IDLE_PER_ORIGIN,
                 ssl_context: ssl.SSLContext | None = None,
                 max_head_bytes: int = http11.DEFAULT_MAX_HEAD_BYTES) -> None:
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.read_timeout = read_timeout
        self.keep_alive_timeout = keep_alive_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.max_head_bytes = max_head_bytes
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._active: set[_Connection] = set()
        self._draining: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return f"<HTTPClient idle={self.idle_connections} active={len(self._active)}{closed}>"

    @property
    def idle_connections(self) -> int:
        """Pooled connections waiting for a request."""
        return sum(map(len, self._idle.values()))

    async def request(self, method: str, url: str, *, headers: Iterable[tuple[str, str]] = (),
                      body: bytes = b"", idempotent: bool | None = None) -> ClientResponse:
        """Send a request and return once the final response head has arrived.

        ``headers`` are (name, value) pairs; ``Host``, ``Content-Length`` and a
        default ``User-Agent`` are added. 1xx interim responses are skipped.
        A pooled connection that the server closed before answering is
        replaced once, but only for an idempotent request (``idempotent``
        defaults to what the method says). Raises ``ValueError`` (bad URL or
        header), ``ClientConnectError``, ``ClientTimeout``, ``HTTPProtocolError``
        or ``ConnectionClosed``.
        """
        if self._closed:
            raise RuntimeError("HTTPClient is closed")
        origin, target = split_url(url)
        head, reusable = _encode_head(method, target, origin, headers, body)
        data = head + body
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, method, data, reusable)
            except ConnectionClosed:
                # RFC 9112 §9.3.1 / RFC 9110 §9.2.2: a connection may close at
                # any time; a client may retry automatically only a request it
                # knows to be idempotent. Nothing came back, so it retries once.
                if not idempotent or conn.received:
                    raise
        conn = await self._connect(origin)
        return await self._exchange(conn, method, data, reusable)

    async def aclose(self) -> None:
        """Close every connection, pooled or in use; later requests raise ``RuntimeError``."""
        self._closed = True
        for task in list(self._draining):
            task.cancel()
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in list(self._active):
            conn.abort()
        self._active.clear()

    # ---- connections ----
    def _take_idle(self, origin: Origin) -> _Connection | None:
        conns = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while conns:
            conn = conns.pop()          # most recently used first: the likeliest to be alive
            if conn.usable and now - conn.idle_since < self.keep_alive_timeout:
                self._active.add(conn)
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(origin, http11.ResponseParser(max_head_bytes=self.max_head_bytes))
        tls = self._tls_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls else None)
        except TimeoutError:
            raise ClientTimeout("connect", self.connect_timeout or 0.0) from None
        except OSError as exc:
            raise ClientConnectError(origin.host, origin.port, _describe_os_error(exc)) from exc
        self._active.add(conn)
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _exchange(self, conn: _Connection, method: str, data: bytes,
                        reusable: bool) -> ClientResponse:
        conn.start_exchange(method)
        conn.reusable = reusable
        try:
            await conn.send(data, self.write_timeout)
            return await self._final_head(conn)
        except BaseException:
            self._release(conn, reusable=False)
            raise

    async def _final_head(self, conn: _Connection) -> ClientResponse:
        # The whole head, 1xx responses included, within one read timeout: a
        # server that trickles it, or sends interim responses forever, would
        # otherwise keep every single wait short and never be done.
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    event = await conn.next_event(self.read_timeout)
                    if isinstance(event, http11.Response):
                        if event.status >= 200:
                            return ClientResponse(self, conn, event)
                        if event.status == 101:
                            raise HTTPProtocolError("101 Switching Protocols without an Upgrade request")
                        # RFC 9110 §15.2: "A client MUST be able to parse one or more
                        # 1xx responses received prior to a final response, even if
                        # the client does not expect one."
                    elif event is not http11.END_OF_MESSAGE:
                        raise HTTPProtocolError("response data before a response head")
        except TimeoutError:
            raise ClientTimeout("read", self.read_timeout or 0.0) from None

    def _drain_later(self, conn: _Connection, timeout: float) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(conn, timeout))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, conn: _Connection, timeout: float) -> None:
        complete = False
        try:
            async with asyncio.timeout(timeout):
                discarded = 0
                while discarded <= MAX_DISCARD_ON_CLOSE_BYTES:
                    event = await conn.next_event(None)
                    if event is http11.END_OF_MESSAGE:
                        complete = True
                        break
                    discarded += len(event)        # type: ignore[arg-type]
        except (TimeoutError, GatewayError, OSError):
            pass        # not worth keeping: closed below
        finally:
            self._release(conn, reusable=complete)

    def _release(self, conn: _Connection, *, reusable: bool) -> None:
        self._active.discard(conn)
        conn.busy = False
        pool = self._idle.setdefault(conn.origin, [])
        if (reusable and conn.reusable and conn.parser.keep_alive and conn.usable
                and not conn.parser.buffered_bytes and not self._closed
                and len(pool) < self.max_idle_per_origin):
            conn.idle_since = asyncio.get_running_loop().time()
            pool.append(conn)
        else:
            conn.abort()


def _encode_head(method: str, target: str, origin: Origin, headers: Iterable[tuple[str, str]],
                 body: bytes) -> tuple[bytes, bool]:
    """The request head, and whether the connection may be kept (no ``Connection: close``)."""
    fields = [("host", origin.authority)]
    names = set()
    reusable = True
    for name, value in headers:
        lower = name.lower()
        if lower in ("host", "content-length", "transfer-encoding"):
            continue        # framing and routing belong to the client
        if lower == "connection" and "close" in value.lower():
            reusable = False
        names.add(lower)
        fields.append((name, value))
    if "user-agent" not in names:
        fields.append(("user-agent", USER_AGENT))
    # RFC 9110 §8.6: "A user agent SHOULD send Content-Length in a request when
    # the method defines a meaning for enclosed content".
    if body or method in ("POST", "PUT", "PATCH"):
        fields.append(("content-length", str(len(body))))
    return http11.encode_request_head(method, target, fields), reusable


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc.strerror}"
    # asyncio's message repeats the address; the errno's own text says it better.
    return os.strerror(exc.errno) if exc.errno else str(exc) or exc.__class__.__name__
