"""The WebSocket client: ``connect(url)`` opens a connection and hands it to a ``WebSocket``.

Owns the client's side of the opening handshake (RFC 6455 §4.1): the URL,
TCP and TLS, the request, the server's response head (read by
``_OpeningHandshake``, at most ``MAX_RESPONSE_HEAD_BYTES``), all within
``open_timeout``; then the transport goes to a ``wsstream.WebSocket(client=True)``
with the bytes that came behind the head. The checks and header fields are
``wshandshake``'s, the head parser ``http11``'s. Imported by what opens
connections (the CLI, the conformance kit), never by a serving gateway.
Never imports config, gateway or agents.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from ..errors import ConnectionClosed, HeadTooLarge
from . import http11, wshandshake
from .wsstream import WebSocket

__all__ = ["connect", "DEFAULT_OPEN_TIMEOUT", "MAX_RESPONSE_HEAD_BYTES"]

# websockets' default open_timeout: TCP connect, TLS and the opening handshake.
DEFAULT_OPEN_TIMEOUT: Final = 10.0
# Like gateway.http.maxHeaderBytes (64 KiB), this bounds the 101 response head too.
MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024


class _OpeningHandshake(asyncio.Protocol):
    """Reads the server's response head; then the transport goes to a WebSocket."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head: asyncio.Future[tuple[bytes, bytes]] = loop.create_future()
        self.extra: list[bytes] = []
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport       # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            self.extra.append(data)       # frames right behind the head
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self._transport.pause_reading()
            self.head.set_result((bytes(self._buffer[:end]), bytes(self._buffer[end + 4:])))
        elif len(self._buffer) > MAX_RESPONSE_HEAD_BYTES:
            self.head.set_exception(HeadTooLarge("response head", MAX_RESPONSE_HEAD_BYTES))

    def eof_received(self) -> None:
        self._gone()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionClosed(1006, "closed during the opening handshake"))


def _split_url(url: str) -> tuple[bool, str, int, str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    # RFC 6455 §3: "Fragment identifiers ... MUST NOT be used on these URIs."
    if parts.fragment or "#" in url:
        raise ValueError("a WebSocket URL has no fragment")
    secure = parts.scheme == "wss"
    default = 443 if secure else 80
    port = parts.port or default
    host = parts.hostname
    authority = f"[{host}]" if ":" in host else host
    if port != default:
        authority += f":{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return secure, host, port, authority, path


async def connect(url: str, *, headers: Iterable[tuple[str, str]] = (),
                  open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
                  ssl_context: ssl_module.SSLContext | None = None,
                  **options: Any) -> WebSocket:
    """Open a WebSocket client connection to a ``ws://`` or ``wss://`` ``url``.

    ``headers`` are extra request fields (e.g. Authorization); ``open_timeout``
    bounds TCP connect, TLS and the opening handshake, in seconds;
    ``ssl_context`` defaults to ``ssl.create_default_context()`` for wss;
    ``options`` are ``WebSocket``'s limits. Raises ``WebSocketProtocolError``
    for a refused or invalid handshake (RFC 6455 §4.1), ``HTTPProtocolError``
    for a malformed response head, ``ConnectionClosed`` if the server closes
    during the handshake, ``TimeoutError`` and ``OSError`` as asyncio does, and
    ``ValueError`` for a bad URL or header field.
    """
    secure, host, port, authority, path = _split_url(url)
    key = wshandshake.new_client_key()
    request = wshandshake.encode_client_request(
        path, [*wshandshake.client_request_headers(authority, key), *headers])
    ws = WebSocket(client=True, **options)
    loop = asyncio.get_running_loop()
    tls = (ssl_context or ssl_module.create_default_context()) if secure else None
    async with asyncio.timeout(open_timeout):
        transport, opening = await loop.create_connection(
            lambda: _OpeningHandshake(loop), host, port, ssl=tls,
            server_hostname=host if secure else None)
        try:
            transport.write(request)
            head, rest = await opening.head
            response = http11.parse_response_head(head)
            wshandshake.check_server_response(response.status, response.headers, key)
        except BaseException:
            opening.head.cancel()          # done or not: nobody reads it any more
            transport.abort()
            raise
    transport.set_protocol(ws)
    ws.connection_made(transport)
    rest += b"".join(opening.extra)
    if rest:
        ws.data_received(rest)
    return ws
