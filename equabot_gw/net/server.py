"""The asyncio HTTP/1.1 server: the listening socket, its connections, shutdown.

``HTTPServer`` binds, makes one ``connection.Connection`` per accepted
socket (which parses, orders, times and answers that client's requests;
see ``connection.py``), hands out request ids and the ``Date`` value they
share, and shuts down in order: stop accepting, let requests in flight
finish within a grace period, close what is left. Handlers are plain
coroutines registered in a ``Router`` (``routes.py``); they return a
``Response``, a ``StreamingResponse`` or an ``Upgrade``. This module must
not import config, gateway or agents: what it needs (limits, routes,
names) is passed in.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from . import heads
from .accesslog import AccessLog
from .connection import Connection, Limits
from .routes import ErrorFields, Router

__all__ = ["HTTPServer", "Limits", "AccessLog", "AcceptErrorLog", "Observer", "ErrorFields",
           "check_bindable"]

log = logging.getLogger("equabot_gw.server")

# The kernel's queue of connections not yet accepted (listen(2); Linux caps it at
# net.core.somaxconn): room for a burst of clients.
LISTEN_BACKLOG: Final = 2048
# Connections asyncio accepts per readiness event of the listening socket. CPython
# 3.11-3.13 take create_server's backlog as this batch too, and when accept() fails
# for want of descriptors (EMFILE) they report it and schedule a retry once per
# attempt of the batch, not once per event: with 2048, one event made 2,048
# tracebacks and 2,048 timers, which made more events. The server is created with
# this number and its sockets then listen with LISTEN_BACKLOG again. Not smaller:
# with 16, a burst of 2,000 clients arriving while 2,000 streams ran waited up to
# half a second for their turn to be accepted (p99 of the bench's slow streams
# 0.45 s above their p50; with 128, 0.05-0.09 s). 128 is aiohttp's batch too.
ACCEPT_BATCH: Final = 128
# At most one line per this many seconds says that connections cannot be accepted.
ACCEPT_ERROR_LOG_INTERVAL: Final = 1.0
# What asyncio's accept loop reports when accept() lacks a resource (selector_events).
_ACCEPT_FAILED: Final = "socket.accept() out of system resource"

# Told of every answered request, after the access log: (method, route template
# or None when no route took it, status, body bytes sent, seconds).
Observer = Callable[[str, "str | None", int, int, float], None]


# -- the server -------------------------------------------------------------------

def check_bindable(host: str) -> None:
    """Raise what ``HTTPServer.start`` would (OSError, or UnicodeError for a name no
    resolver takes) unless this machine can listen on ``host``.

    Each of its addresses is bound to port 0 and closed at once, as this
    Python's asyncio binds them for a server: a family the machine lacks is
    skipped, and from 3.13 on so is an address it lacks, as long as one binds.
    Whether a given port will be free then is not for this to say.
    """
    bound = 0
    for family, kind, proto, _, address in socket.getaddrinfo(
            host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue
        with sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and sys.version_info >= (3, 13):
                    continue
                raise
            bound += 1
    if not bound:
        raise _nothing_bound(host)


def _nothing_bound(host: str) -> OSError:
    return OSError(errno.EADDRNOTAVAIL, f"no address of {host!r} could be bound")


class HTTPServer:
    """Serves a ``Router`` on one listening socket.

    ``start()`` binds (port 0 picks a free port; ``port`` then tells which);
    ``shutdown(grace)`` stops accepting, lets requests in flight finish for up
    to ``grace`` seconds, then cancels what is left and closes every connection.
    ``observer``, if given, is called once per answered request, like the access
    log, with the route template (never the raw path; None for a request no
    route took: 404, 405, unparseable), the status (499: the client left
    first), the body bytes sent and the seconds taken; it must not block.
    ``error_fields``, if given, adds header fields to every answer the server
    makes from an error (see ``routes.ErrorFields``); responses that handlers
    return are theirs alone and never pass through it.
    """

    def __init__(self, router: Router, *, limits: Limits | None = None,
                 access_log: AccessLog | None = None, observer: Observer | None = None,
                 error_fields: ErrorFields | None = None) -> None:
        self.router = router
        self.limits = limits or Limits()
        self.access_log = access_log
        self.observer = observer
        self.error_fields = error_fields
        self.open_streams = 0           # streamed responses being written now
        self.upgraded = 0               # connections handed to another protocol (WebSocket)
        self._server: asyncio.base_events.Server | None = None
        self.connections: set[Connection] = set()     # open ones; each adds and drops itself
        self.connection_ids = itertools.count(1)      # each takes its id here
        self._rid_prefix = os.urandom(4).hex()
        self._rids = itertools.count(1)
        self._date_second = 0
        self._date = b""
        self.closing = False

    @property
    def port(self) -> int:
        """The port actually bound."""
        assert self._server is not None and self._server.sockets
        return self._server.sockets[0].getsockname()[1]

    @property
    def connection_count(self) -> int:
        """Open client connections."""
        return len(self.connections)

    async def start(self, host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> None:
        """Bind and start accepting connections; OSError (EADDRNOTAVAIL) if no address of
        ``host`` could be bound (asyncio before 3.13 then serves on no socket at all).

        ``backlog`` is the kernel's queue of connections not yet accepted; asyncio
        accepts at most ``ACCEPT_BATCH`` of them per loop iteration."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, backlog=min(backlog, ACCEPT_BATCH), reuse_address=True)
        if not self._server.sockets:
            self._server.close()
            self._server = None
            raise _nothing_bound(host)
        for sock in self._server.sockets:
            _listen(sock, backlog)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, finish or close every connection within ``grace`` seconds."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.finish()
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self.access_log:
            self.access_log.flush()

    def next_request_id(self) -> str:
        return f"req_{self._rid_prefix}{next(self._rids):x}"

    def date_header(self) -> str:
        """The ``Date`` value (RFC 9110 §6.6.1), formatted at most once per second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = heads.imf_fixdate(now)
        return self._date


def _listen(sock: Any, backlog: int) -> None:
    """``listen(backlog)`` on a socket asyncio serves (its ``TransportSocket`` has no
    ``listen``): a duplicate descriptor names the same socket. Without one to spare
    the socket keeps the backlog it was created with."""
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:
            dup.listen(backlog)
    except OSError as exc:
        log.debug("listen(%d) on %r failed: %s", backlog, sock, exc)


class AcceptErrorLog:
    """An event loop exception handler: accept() failing for want of a resource
    (EMFILE: the open files limit; ENFILE, ENOBUFS, ENOMEM) is said in one line a
    second at most, without a traceback, and the retry asyncio scheduled for a
    listening socket closed since is not reported; anything else goes to
    ``previous`` (None: the loop's default handler).

    asyncio itself stops reading the listening socket for a second after such a
    failure, so connections wait in the kernel's queue meanwhile; the line says so.
    ``failures`` counts the failed accepts seen.
    """

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None,
                 *, interval: float = ACCEPT_ERROR_LOG_INTERVAL) -> None:
        self.previous = previous
        self.interval = interval
        self.failures = 0
        self._next_line = float("-inf")
        self._unsaid = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == _ACCEPT_FAILED and isinstance(exc, OSError):
            self._accept_failed(loop, exc)
        elif isinstance(exc, (ValueError, OSError)) and _is_accept_retry(loop, context):
            # A retry timer of a listening socket that was closed since (shutdown):
            # "Invalid file descriptor: -1" says nothing anyone can act on.
            pass
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _accept_failed(self, loop: asyncio.AbstractEventLoop, exc: OSError) -> None:
        self.failures += 1
        now = loop.time()
        if now < self._next_line:
            self._unsaid += 1
            return
        self._next_line = now + self.interval
        more = f" ({self._unsaid} more times since the last line)" if self._unsaid else ""
        self._unsaid = 0
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        log.warning("cannot accept connections: %s (%s)%s; new ones wait in the kernel's queue, "
                    "tried again every second", exc.strerror or exc, name, more)


def _is_accept_retry(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> bool:
    # The handle's callback is not public API; asyncio 3.11-3.13 keep it in _callback.
    callback = getattr(context.get("handle"), "_callback", None)
    return getattr(callback, "__name__", "") == "_start_serving" and getattr(callback, "__self__", None) is loop
