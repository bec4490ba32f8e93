"""The Gateway object: config, runtime, auth, routes and server, started and stopped in order.

Owns the life of one gateway process: which routes exist (health, the OpenAI
endpoints when enabled, the WebSocket control protocol and the chat page on
``/``, the optional echo path), CORS, and shutdown in a fixed order — readiness off, WebSocket clients
told (``shutdown`` event, close 1001), no new connections, requests in flight
finish within the grace period (``hurry()`` ends it early), then open runs are
aborted and recorded so every open stream ends with its error event and
``[DONE]``, a short moment to flush, and only then are connections closed.
It holds no protocol logic of its own: ``openai.py`` and ``control.py``
translate, the runtime runs, ``observe.py`` counts.

``Gateway`` is also the public embedding API (``equabot_gw.Gateway``):
``from_config``, ``start``/``stop`` or ``async with``, ``url``, and
``providers=`` (Python providers, ``providers/python.py``). It installs
nothing process-wide (no signal handler, no logging set-up; its ``logs.tail``
buffer hangs on the package logger while it runs), and it is restartable:
each ``start()`` after a ``stop()`` builds its runtime, server and protocol
state afresh, as a new process would, on the same state dir.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .. import __version__, embed, statelock
from ..logbuffer import LogBuffer
from ..agents.runtime import Runtime
from ..auth import Authenticator, Secret, resolve_secret
from ..config import Config, ConfigError, bind_host
from ..config_checks import integer, string
from ..errors import SHUTDOWN_ABORT, ApiError, GatewayError
from ..net import routes as http
from ..net import server
from ..providers.python import ProviderSource
from . import observe, openai, static

if TYPE_CHECKING:
    from .control import ControlProtocol
    from .responses import Responses

log = logging.getLogger("equabot_gw")

# Shutdown: after the grace period, how long aborted runs may take to be
# recorded, and how long their streams then get to reach the clients.
RUN_SETTLE_TIMEOUT: Final = 5.0
STREAM_FLUSH_TIMEOUT: Final = 2.0

# Answer headers a cross-origin page may read besides the safelisted ones: a
# client's retry logic needs Retry-After (429, 503) as much as the request id.
_EXPOSED_HEADERS: Final = "x-request-id, x-equabot-idempotent-replay, retry-after"


def _cors_headers(origin: str) -> tuple[tuple[str, str], ...]:
    return (("access-control-allow-origin", origin), ("vary", "origin"),
            ("access-control-expose-headers", _EXPOSED_HEADERS))


class BindError(GatewayError):
    """The gateway cannot listen on ``host``:``port``; the message says why and what to do.

    ``exc``: the OSError of resolving or binding, or the UnicodeError of a
    name no resolver takes (an empty or over-long label).
    """

    def __init__(self, host: str, port: int, exc: OSError | UnicodeError) -> None:
        if isinstance(exc, OSError) and exc.errno is None and "could not bind on any address" in str(exc):
            # Python 3.13+ skips addresses the machine lacks and says so without an errno.
            exc = OSError(errno.EADDRNOTAVAIL, str(exc))
        self.host, self.port = host, port
        self.errno = exc.errno if isinstance(exc, OSError) else None
        if isinstance(exc, UnicodeError):
            reason = (f"cannot listen on {host!r}: no such host or address here (not a valid host "
                      f"name); use --bind loopback, lan, or an address of this machine")
        elif isinstance(exc, socket.gaierror):
            reason = (f"cannot listen on {host!r}: no such host or address here "
                      f"({exc.strerror}); use --bind loopback, lan, or an address of this machine")
        elif exc.errno == errno.EADDRINUSE:
            reason = (f"port {port} on {host} is already in use (another gateway or program listens "
                      f"there): stop it, or pick another port with --port N (0 picks a free one)")
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = (f"cannot listen on {host}: it is not an address of this machine; "
                      f"use --bind loopback, lan, or one of this machine's addresses")
        elif exc.errno == errno.EACCES:
            reason = (f"not allowed to listen on port {port} on {host} (ports below 1024 need "
                      f"privileges): pick another port with --port N")
        else:
            reason = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        super().__init__(reason)


class Gateway:
    """One gateway: ``await start()``, then ``await stop()`` (``url`` tells where it listens).

    Embedding programs make one with ``Gateway.from_config``; the constructor
    takes a checked ``Config`` and is internal.
    """

    def __init__(self, config: Config, state_dir: Path, *, host: str | None = None,
                 port: int | None = None, env: Mapping[str, str] | None = None,
                 access_log: server.AccessLog | None = None,
                 config_path: Path | None = None,
                 providers: Mapping[str, ProviderSource] | None = None) -> None:
        self.config = config
        # Python providers: those registered now, overlaid with this gateway's own.
        self.provider_sources = embed.provider_sources(providers)
        self.config_path = config_path      # shown by config.get, recorded in the state dir's lock
        self.state_dir = state_dir
        self.host = host or bind_host(config.gateway.bind)
        self.port = config.gateway.port if port is None else port
        self.env = os.environ if env is None else env
        self.secret: Secret = resolve_secret(config.gateway.auth, self.env, state_dir, self.host)
        self.access_log = access_log
        self._running = False
        self._used = False          # started before: the next start() builds its parts afresh
        self._assemble()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike[str], *,
                    state_dir: str | os.PathLike[str], host: str | None = None,
                    port: int | None = None, env: Mapping[str, str] | None = None,
                    providers: Mapping[str, ProviderSource] | None = None) -> Gateway:
        """A gateway from a config document (a dict as a JSON5 file would hold) or a file's path.

        ``state_dir`` (sessions, the generated token, the lock) is created with
        mode 0700 if missing; nothing else on disk is touched, the home
        directory included. ``host`` (an address, or "loopback" / "lan") and
        ``port`` (0 picks a free one) override ``gateway.bind`` and
        ``gateway.port``, checked as those keys are (``ConfigError``).
        ``env`` stands for the environment (``${VAR}`` in
        the config, ``EQUABOT_GATEWAY_TOKEN``); default: ``os.environ``.
        ``providers`` maps provider names to Python providers (an async
        generator function, or a factory called with the name at each
        ``start()`` that returns one): model ``"<name>/<model>"`` or
        ``"<name>"`` reaches them, in the config (``agents.defaults.model``)
        as in requests. They belong to this gateway and overlay those of
        ``register_provider``. Raises ``ConfigError`` for a config or state
        dir that cannot be used (a provider name also configured under
        ``models.providers`` included), ``ValueError`` / ``TypeError`` for a
        provider name or value that cannot be one.
        """
        env = os.environ if env is None else env
        sources = embed.provider_sources(providers)
        checked, path = embed.load_config(config, env, sources)
        # The overrides are checked as the keys they stand for (a port of True is not 1).
        try:
            port = None if port is None else integer(0, 65535)(port)
        except ValueError as exc:
            raise ConfigError("port", str(exc)) from None
        try:
            host = None if host is None else string(empty=False)(host)
        except ValueError as exc:
            raise ConfigError("host", str(exc)) from None
        state = Path(state_dir)
        try:
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("", f"cannot create state dir {state}: {exc.strerror}") from None
        return cls(checked, state, host=None if host is None else bind_host(host), port=port,
                   env=env, config_path=path, providers=sources)

    def _assemble(self) -> None:
        """Everything that lives from one start() to its stop(), built new."""
        config = self.config
        self.started_at = time.time()
        self.ready = False
        self.runtime = Runtime(config, self.state_dir)
        self.auth = Authenticator(self.secret, config.gateway.auth.rate_limit,
                                  config.gateway.trusted_proxies)
        self.observer = observe.Observer(self)
        self.runtime.observers.append(self.observer.run)
        self.router = http.Router()
        limits = config.gateway.http
        self.server = server.HTTPServer(self.router, limits=server.Limits(
            max_head_bytes=limits.max_header_bytes, max_body_bytes=limits.max_body_bytes,
            header_timeout=limits.header_timeout, keep_alive_timeout=limits.keep_alive_timeout),
            access_log=self.access_log, observer=self.observer.request,
            error_fields=self._cors_error_fields if limits.cors.allow_origins else None)
        # The gateway's own recent log lines, for the control protocol's logs.tail. The
        # per-run lines stay out: one per request would push every other line out of
        # the ring under load (and cost a JSON encoding per run).
        self.log_buffer = LogBuffer()
        self.log_buffer.addFilter(_not_a_run_line)
        self._control: ControlProtocol | None = None      # made by the first upgrade (see control)
        self.openai = openai.ChatCompletions(self.runtime, self.authorize, self.started_at,
                                             max_messages=config.gateway.http.max_messages)
        # POST /v1/responses and its stored responses: a store of its own, opened (and its
        # modules imported) only when enabled.
        self.responses: Responses | None = None
        if config.gateway.http.endpoints.responses.enabled:
            from .responses import Responses
            self.responses = Responses(self.runtime, self.authorize, self.state_dir,
                                       max_messages=config.gateway.http.max_messages)
        self._stop_requested = asyncio.Event()
        self._hurry = asyncio.Event()
        self._shutdown: asyncio.Future[None] | None = None
        self._lock: statelock.StateLock | None = None
        self._add_routes()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the gateway (loopback for the wildcard addresses).

        Raises ``RuntimeError`` before ``start()``.
        """
        return _http_url({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host), self._port())

    @property
    def listen_url(self) -> str:
        """The address actually listened on, e.g. ``http://0.0.0.0:18789`` for ``--bind lan``."""
        return _http_url(self.host, self._port())

    def _port(self) -> int:
        if not self._running:
            raise RuntimeError("the gateway is not running: await start() first")
        return self.server.port

    @property
    def all_interfaces(self) -> bool:
        """True when listening on every interface (``0.0.0.0`` or ``::``)."""
        return self.host in ("0.0.0.0", "::")

    @property
    def control(self) -> ControlProtocol:
        """The WebSocket control protocol, made on first use: the first request for it
        (an upgrade, or the 426 for a plain GET, on ``/`` or ``/chat``; the echo path).

        Its half of the package (``control``, ``methods``, ``runs``, ``frames``,
        ``params``, ``net/wsstream``, ``net/websocket``) is imported then, not at
        start: a gateway that only serves HTTP never loads it.
        """
        if self._control is None:
            from .control import ControlProtocol
            self._control = ControlProtocol(self)
            if self._running and self._shutdown is None:
                self._control.start()          # its tick; stop() ends it
        return self._control

    # ---- routes ----
    def _add_routes(self) -> None:
        add = self.router.add
        for path in ("/health", "/healthz"):
            add(path, ("GET",), self.health)
        add("/readyz", ("GET",), self.readyz)
        add("/metrics", ("GET",), self.observer.handle)
        # "/" and "/chat": the chat page to a browser, the control protocol otherwise.
        page = static.ChatPage(self._control_upgrade)
        for path in ("/", "/chat"):
            add(path, ("GET",), page.root)
        add("/static/{name}", ("GET",), page.asset)
        add("/favicon.ico", ("GET",), page.favicon)
        if self.config.gateway.ws.echo_path:
            add(self.config.gateway.ws.echo_path, ("GET",), self._echo_upgrade)
        routes = (("/v1/chat/completions", ("POST",), self.openai.create),
                  ("/v1/chat/completions/{rest}", ("GET",), self.openai.events),
                  ("/v1/models", ("GET",), self.openai.list_models),
                  ("/v1/models/{model}", ("GET",), self.openai.get_model))
        enabled = self.config.gateway.http.endpoints.chat_completions.enabled
        guard = self._body_guard
        for path, methods, handler in routes:
            # Off by default: then say how to turn it on rather than "no route".
            add(path, methods, self._cors(handler) if enabled else _endpoint_disabled,
                body_guard=guard if enabled and "POST" in methods else None)
            if enabled and self.config.gateway.http.cors.allow_origins:
                add(path, ("OPTIONS",), self._preflight(methods))
        door = self.responses
        for path, method, name in (("/v1/responses", "POST", "create"), ("/v1/responses/{rest}", "GET", "get"),
                                   ("/v1/responses/{rest}", "POST", "post"),
                                   ("/v1/responses/{rest}", "DELETE", "delete")):
            add(path, (method,), self._cors(getattr(door, name)) if door else _responses_disabled,
                body_guard=guard if door and method == "POST" else None)
        if door and self.config.gateway.http.cors.allow_origins:
            add("/v1/responses", ("OPTIONS",), self._preflight(("POST",)))
            add("/v1/responses/{rest}", ("OPTIONS",), self._preflight(("GET", "POST", "DELETE")))

    async def _control_upgrade(self, request: http.HTTPRequest) -> http.Upgrade:
        return await self.control.handle_upgrade(request)

    async def _echo_upgrade(self, request: http.HTTPRequest) -> http.Upgrade:
        return await self.control.handle_echo_upgrade(request)

    def _body_guard(self, request: http.HTTPRequest) -> None:
        # A body still to come is held only for a client with credentials: one
        # without them is refused on its head (with CORS headers for a page,
        # added as to every error answer the server makes: _cors_error_fields).
        self.authorize(request)

    def authorize(self, request: http.HTTPRequest) -> None:
        """Check a request's bearer credentials (401 / 429 as ``ApiError``), or its Host without auth (403)."""
        self.auth.check_host(request.headers.get("host"))
        client = self.auth.client_address(request.client, request.headers.get_all("x-forwarded-for"))
        self.auth.check_bearer(request.headers.get("authorization"), client)

    async def health(self, request: http.HTTPRequest) -> http.Response:
        """``GET /health``: liveness and the status facts, without secrets or config."""
        return _json(200, self.health_snapshot())

    async def readyz(self, request: http.HTTPRequest) -> http.Response:
        """``GET /readyz``: 200 once started, 503 before and while shutting down; the same facts."""
        ready = self.ready and not self.server.closing
        return _json(200 if ready else 503, {"status": "ready" if ready else "unavailable",
                                             **self.facts()})

    def health_snapshot(self) -> dict[str, object]:
        """What ``/health`` returns: ``status`` ("ok" / "shutting_down") and ``facts()``."""
        return {"status": "ok" if not self.server.closing else "shutting_down", **self.facts()}

    def facts(self) -> dict[str, Any]:
        """The status facts ``/health``, ``/readyz`` and the WebSocket ``status`` method share.

        ``version``; ``uptimeSeconds`` since ``start()``; ``sessions``: keyed
        sessions stored (``status``'s ``sessions.count``); ``activeRuns``: runs
        in flight from any door, ``queuedRuns`` of them waiting for a slot;
        ``connections``: ``control`` (WebSocket clients) and ``http`` (every
        open connection), as ``status`` reports them. No secret, no config.
        """
        runtime = self.runtime
        return {"version": __version__,
                "uptimeSeconds": round(time.time() - self.started_at, 3),
                "sessions": runtime.store.session_count(),
                "activeRuns": len(runtime.active),
                "queuedRuns": sum(agent.waiting for agent in runtime.agents.values()),
                "connections": self.connection_counts()}

    def connection_counts(self) -> dict[str, int]:
        """Open connections: ``control`` (WebSocket control clients), ``http`` (all of them)."""
        control = len(self._control.connections) if self._control is not None else 0
        return {"control": control, "http": self.server.connection_count}

    # ---- CORS (only when gateway.http.cors.allowOrigins is set) ----
    def _allowed_origin(self, origin: str | None) -> str | None:
        allowed = self.config.gateway.http.cors.allow_origins
        if origin is None or not allowed:
            return None
        return origin if "*" in allowed or origin in allowed else None

    def _cors(self, handler: http.Handler) -> http.Handler:
        if not self.config.gateway.http.cors.allow_origins:
            return handler

        async def with_cors(request: http.HTTPRequest) -> http.AnyResponse:
            try:
                response = await handler(request)
            except ApiError as exc:
                response = http.error_response(exc)
            origin = self._allowed_origin(request.headers.get("origin"))
            if origin is not None and not isinstance(response, http.Upgrade):
                response.headers.extend(_cors_headers(origin))
            return response
        return with_cors

    def _cors_error_fields(self, headers: http.Headers) -> tuple[tuple[str, str], ...]:
        # Every answer the server makes from an error rather than a handler's
        # response (413, 431, 400 and 408 before any route, 404/405, the body
        # guard's 401) reaches an allowed page as readably as a routed one would:
        # without these fields the browser shows the page a network failure.
        origin = self._allowed_origin(headers.get("origin"))
        return () if origin is None else _cors_headers(origin)

    def _preflight(self, methods: tuple[str, ...]) -> http.Handler:
        async def preflight(request: http.HTTPRequest) -> http.Response:
            origin = self._allowed_origin(request.headers.get("origin"))
            if origin is None:
                raise ApiError(403, "origin not allowed by gateway.http.cors.allowOrigins",
                               code="cors_origin_denied")
            asked = request.headers.get("access-control-request-headers", "")
            allow_headers = ", ".join(h.strip() for h in asked.split(",") if h.strip().replace("-", "").isalnum())
            return http.Response(204, [
                ("access-control-allow-origin", origin), ("vary", "origin"),
                ("access-control-allow-methods", ", ".join(methods + ("OPTIONS",))),
                ("access-control-allow-headers", allow_headers or "authorization, content-type"),
                ("access-control-max-age", "600")])
        return preflight

    # ---- lifecycle ----
    async def start(self) -> None:
        """Lock the state dir, open the runtime, bind the port, start the ticker; then ready.

        Raises ``statelock.StateDirInUse`` when another gateway holds the state
        dir, ``BindError`` when the address cannot be listened on,
        ``RuntimeError`` when it runs already. After ``stop()`` it may be
        started again: its parts are built afresh (runs, connections and
        counters of the last run are gone; sessions stay on disk).
        """
        if self._running or (self._shutdown is not None and not self._shutdown.done()):
            raise RuntimeError("the gateway is running already")
        if self._used or self._shutdown is not None:
            self._assemble()
        self._used = True
        self._lock = await statelock.acquire_async(self.state_dir)
        try:
            await self.runtime.start()
            try:
                embed.install_providers(self.runtime, self.provider_sources)
            except BaseException:
                await self.runtime.stop(0)
                raise
            try:
                if self.responses is not None:
                    await self.responses.start()
                await self.server.start(self.host, self.port)
            except BaseException as exc:
                if self.responses is not None:
                    await self.responses.stop()
                await self.runtime.stop(0)
                if isinstance(exc, (OSError, UnicodeError)):
                    raise BindError(self.host, self.port, exc) from None
                raise
        except BaseException:
            self._lock.release()
            raise
        self._running = True
        self.started_at = time.time()
        try:
            self._lock.announce(self.url, config_path=self.config_path, auth_mode=self.secret.mode)
        except OSError as exc:
            # The record only tells CLI commands where the gateway listens: a full
            # disk here costs them that, not the clients a gateway already serves.
            log.warning("could not record this gateway in %s (%s): CLI commands will not find it "
                        "(pass them --url)", self._lock.path, exc.strerror or exc)
        log.addHandler(self.log_buffer)     # the package's logger only, never the root
        if self._control is not None:
            self._control.start()
        self.ready = True

    async def stop(self) -> None:
        """Shut down in order; open runs past the grace period are aborted and recorded.

        Safe to call more than once (and before ``start()``): every caller
        waits for the same shutdown.
        """
        self._stop_requested.set()
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._stop_in_order())
        await asyncio.shield(self._shutdown)

    def request_stop(self) -> None:
        """Ask for a shutdown: ``wait_stop_requested()`` returns (e.g. from a signal handler)."""
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stop_requested.is_set()

    def hurry(self) -> None:
        """End the grace period now (a second Ctrl-C): abort what runs, flush, close."""
        self._hurry.set()

    @property
    def requests_in_flight(self) -> int:
        """Runs queued or running, from any door: what a shutdown waits for."""
        return len(self.runtime.active)

    async def _stop_in_order(self) -> None:
        self.ready = False
        grace = self.config.gateway.shutdown_grace
        # Control clients are told at once; they are closed once the runs they started
        # have settled (finished in the grace period, or aborted below), so that each
        # requester gets its run's final answer.
        closing_control = None
        if self._control is not None:
            self._control.announce_shutdown()
            closing_control = asyncio.ensure_future(self._control.shutdown(grace + RUN_SETTLE_TIMEOUT))
        # The server stops accepting at once and waits for the requests in
        # flight; it is given the grace period plus the flush moment, but is
        # normally done long before: the aborts below end its streams.
        serving = asyncio.ensure_future(self.server.shutdown(grace + STREAM_FLUSH_TIMEOUT))
        await self._wait_for_quiet(serving, grace)
        # Past the grace period: abort every run, so each open stream ends
        # with its error event and [DONE] (and WS runs are recorded), rather
        # than being cut when its connection closes.
        runs = [run for run in self.runtime.active.values() if run.abort(SHUTDOWN_ABORT)]
        if runs:
            log.info("shutdown: aborting %d run(s) still in flight", len(runs))
            ending = [e for e in (r.ended() for r in runs) if e is not None]
            if ending:
                await asyncio.wait(ending, timeout=RUN_SETTLE_TIMEOUT)
        if closing_control is not None:
            await closing_control          # bounded: its runs have settled or it gave up on them
        # A short, bounded moment for the aborted streams to reach their clients.
        await asyncio.wait([serving], timeout=STREAM_FLUSH_TIMEOUT)
        if not serving.done():
            serving.cancel()
            await self.server.shutdown(0)      # cancel what is left and close every connection
        if self.responses is not None:
            await self.responses.stop()        # the responses of clients that left are recorded first
        await self.runtime.stop(0)
        log.removeHandler(self.log_buffer)
        if self._lock is not None:
            self._lock.release()
        self._running = False

    async def _wait_for_quiet(self, serving: asyncio.Future[None], grace: float) -> None:
        """Until no request or run is in flight, the grace period ends, or ``hurry()``."""
        deadline = time.monotonic() + grace
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while not (serving.done() and not self.runtime.active):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or hurry.done():
                    return
                runs = [e for e in (r.ended() for r in self.runtime.active.values()) if e is not None]
                await asyncio.wait([serving, hurry, *runs], timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
            await asyncio.wait([hurry])     # gone before stop() returns: no task outlives it

    async def wait_stop_requested(self) -> None:
        """Return once ``stop()`` was called (e.g. by a signal handler)."""
        await self._stop_requested.wait()


def _not_a_run_line(record: logging.LogRecord) -> bool:
    return record.name != observe.run_log.name


async def _endpoint_disabled(request: http.HTTPRequest) -> http.Response:
    raise ApiError(404, "the OpenAI endpoint is disabled: set "
                        "gateway.http.endpoints.chatCompletions.enabled: true", code="not_found")


async def _responses_disabled(request: http.HTTPRequest) -> http.Response:
    raise ApiError(404, "the Responses endpoint is disabled: set "
                        "gateway.http.endpoints.responses.enabled: true", code="not_found")


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _json(status: int, data: object) -> http.Response:
    return http.Response(status, [("content-type", "application/json")],
                         json.dumps(data, separators=(",", ":")).encode())
