"""The Gateway object: config, runtime, auth, routes and server, started and stopped in order.

Owns the life of one gateway process: which routes exist (health, the OpenAI
endpoints when enabled, the WebSocket control protocol, the optional echo
path), CORS, and shutdown in a fixed order — readiness off, WebSocket clients
told (1001), no new connections, requests in flight finish within the grace
period, then open runs are aborted and recorded. It holds no protocol logic
of its own: ``openai.py`` and ``control.py`` translate, the runtime runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from .. import __version__, statelock
from ..agents.runtime import Runtime
from ..auth import Authenticator, Secret, resolve_secret
from ..config import Config
from ..errors import ApiError
from ..net import routes as http
from ..net import server
from . import control, openai

log = logging.getLogger("equabot_gw")

BIND_ALIASES: Final = {"loopback": "127.0.0.1", "lan": "0.0.0.0"}


def bind_host(bind: str) -> str:
    """The address to listen on for ``--bind`` / ``gateway.bind`` (DECISIONS 4)."""
    return BIND_ALIASES.get(bind, bind)


class Gateway:
    """One gateway: ``await start()``, then ``await stop()`` (``url`` tells where it listens)."""

    def __init__(self, config: Config, state_dir: Path, *, host: str | None = None,
                 port: int | None = None, env: Mapping[str, str] | None = None,
                 access_log: server.AccessLog | None = None) -> None:
        self.config = config
        self.state_dir = state_dir
        self.host = host or bind_host(config.gateway.bind)
        self.port = config.gateway.port if port is None else port
        self.env = os.environ if env is None else env
        self.started_at = time.time()
        self.ready = False
        self.runtime = Runtime(config, state_dir)
        self.secret: Secret = resolve_secret(config.gateway.auth, self.env, state_dir, self.host)
        self.auth = Authenticator(self.secret, config.gateway.auth.rate_limit,
                                  config.gateway.trusted_proxies)
        self.router = http.Router()
        limits = config.gateway.http
        self.server = server.HTTPServer(self.router, limits=server.Limits(
            max_head_bytes=limits.max_header_bytes, max_body_bytes=limits.max_body_bytes,
            header_timeout=limits.header_timeout, keep_alive_timeout=limits.keep_alive_timeout),
            access_log=access_log)
        self.control = control.ControlProtocol(self)
        self.openai = openai.ChatCompletions(self.runtime, self.authorize, self.started_at,
                                             max_messages=config.gateway.http.max_messages)
        self._stop_requested = asyncio.Event()
        self._shutdown: asyncio.Future[None] | None = None
        self._lock: statelock.StateLock | None = None
        self._add_routes()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server.port}"

    # ---- routes ----
    def _add_routes(self) -> None:
        add = self.router.add
        for path in ("/health", "/healthz"):
            add(path, ("GET",), self.health)
        add("/readyz", ("GET",), self.readyz)
        add("/", ("GET",), self.control.handle_upgrade)
        if self.config.gateway.ws.echo_path:
            add(self.config.gateway.ws.echo_path, ("GET",), self.control.handle_echo_upgrade)
        if self.config.gateway.http.endpoints.chat_completions.enabled:
            routes = (("/v1/chat/completions", ("POST",), self.openai.create),
                      ("/v1/models", ("GET",), self.openai.list_models),
                      ("/v1/models/{model}", ("GET",), self.openai.get_model))
            for path, methods, handler in routes:
                add(path, methods, self._cors(handler))
                if self.config.gateway.http.cors.allow_origins:
                    add(path, ("OPTIONS",), self._preflight(methods))

    def authorize(self, request: http.HTTPRequest) -> None:
        """Check a request's bearer credentials (401 / 429 as ``ApiError``), or its Host without auth (403)."""
        self.auth.check_host(request.headers.get("host"))
        client = self.auth.client_address(request.client, request.headers.get_all("x-forwarded-for"))
        self.auth.check_bearer(request.headers.get("authorization"), client)

    async def health(self, request: http.HTTPRequest) -> http.Response:
        """``GET /health``: liveness, without secrets or config (DECISIONS 6)."""
        return _json(200, self.health_snapshot())

    async def readyz(self, request: http.HTTPRequest) -> http.Response:
        ready = self.ready and not self.server.closing
        return _json(200 if ready else 503, {"status": "ready" if ready else "unavailable"})

    def health_snapshot(self) -> dict[str, object]:
        """The small status both ``/health`` and the WebSocket ``health`` method return."""
        return {"status": "ok" if not self.server.closing else "shutting_down",
                "version": __version__,
                "uptimeSeconds": round(time.time() - self.started_at, 3),
                "activeRuns": len(self.runtime.active)}

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
                response.headers.extend((("access-control-allow-origin", origin), ("vary", "origin"),
                                         ("access-control-expose-headers", "x-request-id")))
            return response
        return with_cors

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

        Raises ``ConfigError`` when another gateway holds the state dir.
        """
        self._lock = statelock.acquire(self.state_dir)
        try:
            await self.runtime.start()
            await self.server.start(self.host, self.port)
        except BaseException:
            self._lock.release()
            raise
        self._lock.announce(self.url)
        self.control.start()
        self.ready = True

    async def stop(self) -> None:
        """Shut down in order; open runs past the grace period are aborted and recorded.

        Safe to call more than once: every caller waits for the same shutdown.
        """
        self._stop_requested.set()
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._stop_in_order())
        await asyncio.shield(self._shutdown)

    async def _stop_in_order(self) -> None:
        self.ready = False
        deadline = time.monotonic() + self.config.gateway.shutdown_grace
        await self.control.shutdown()
        await self.server.shutdown(self.config.gateway.shutdown_grace)
        # Runs started over WebSocket outlive their connection: they get what
        # is left of the grace period too, then are aborted and recorded.
        await self.runtime.stop(max(0.0, deadline - time.monotonic()))
        if self._lock is not None:
            self._lock.release()

    async def wait_stop_requested(self) -> None:
        """Return once ``stop()`` was called (e.g. by a signal handler)."""
        await self._stop_requested.wait()


def _json(status: int, data: object) -> http.Response:
    return http.Response(status, [("content-type", "application/json")],
                         json.dumps(data, separators=(",", ":")).encode())
