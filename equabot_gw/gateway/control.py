"""The Gateway's WebSocket control protocol (version 3): JSON frames over RFC 6455.

Owns the upgrade check (version, key, Origin, an Authorization header if one
is sent), the ``connect`` handshake, method dispatch and event delivery.
Frames: ``{"type":"req","id","method","params"}`` →
``{"type":"res","id","ok":true,"payload"}`` or ``{"type":"res","id","ok":false,
"error":{"code","message"}}``; server events ``{"type":"event","event",
"payload","seq"}`` with ``seq`` increasing per connection. ``agent`` and
``chat.send`` start runs with ``agents.runtime.run`` — the same code path as
HTTP and the CLI. Nothing here touches providers or transcript files.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .. import __version__, config as config_mod, safejson
from ..agents import runtime as agent_runtime
from ..agents import sessions
from ..agents.events import Delta, Ended, Failed, Started
from ..agents.runtime import Run
from ..agents.types import AgentRequest
from ..errors import ApiError, ConnectionClosed, RunError, http_status
from ..net import routes as http
from ..net import wshandshake
from ..net.wsstream import DEFAULT_MAX_QUEUED_MESSAGES, WebSocket
from . import params as params_mod
from .coalesce import TextSoFar

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger("equabot_gw.control")

PROTOCOL_VERSION: Final = 3
# The whole pre-connect phase (upgrade to hello-ok) must end within this long,
# whatever the client sends; websockets' open_timeout is 10 s too.
CONNECT_TIMEOUT: Final = 10.0
# Largest first frame read before connect completes: a real connect is ~2 KiB;
# the original Gateway's whole payload limit is 512 KiB.
MAX_CONNECT_FRAME_CHARS: Final = 256 * 1024
# Messages the WebSocket shell may queue unread before connect completes
# (then reading pauses); after it, the shell's default.
PRE_CONNECT_QUEUED_MESSAGES: Final = 1
# Close codes (RFC 6455 §7.4.1) used by the protocol.
CLOSE_POLICY: Final = 1008
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
# How long shutdown waits for clients to complete the close handshake.
SHUTDOWN_CLOSE_TIMEOUT: Final = 2.0
EVENTS: Final = ("agent", "chat", "tick", "shutdown")
_ERROR_CODES: Final = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN",
                       404: "NOT_FOUND", 409: "CONFLICT", 429: "RATE_LIMITED",
                       503: "UNAVAILABLE", 504: "TIMEOUT"}


class ProtocolFailure(Exception):
    """A frame that ends the connection with ``code`` after an error response."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def _error_shape(exc: BaseException) -> dict[str, Any]:
    status = http_status(exc)
    code = _ERROR_CODES.get(status, "INTERNAL" if status >= 500 else "INVALID_REQUEST")
    if isinstance(exc, RunError):
        code = {"aborted": "ABORTED", "timeout": "TIMEOUT"}.get(exc.reason, "AGENT_ERROR")
    message = exc.message if isinstance(exc, ApiError) else (
        str(exc) if isinstance(exc, RunError) else "internal error")
    shape: dict[str, Any] = {"code": code, "message": message}
    retry_after = dict(exc.headers).get("retry-after") if isinstance(exc, ApiError) else None
    if retry_after:
        shape["retryAfterMs"] = int(float(retry_after) * 1000)
    return shape


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _close_reason(text: str) -> str:
    """``text`` cut to the 123 UTF-8 bytes a Close frame's reason may hold (RFC 6455 §5.5)."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


def _string(params: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise ApiError(400, f"params.{name} must be a {'non-empty ' if required else ''}string",
                       param=name)
    return value


class ControlProtocol:
    """Every control connection of one gateway, the tick timer and the shutdown notice."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config.gateway.ws
        self.connections: set[ControlConnection] = set()
        self.connect_timeout = CONNECT_TIMEOUT
        self._ids = itertools.count(1)
        self._tick: asyncio.TimerHandle | None = None
        # Every method takes (params, request id) and returns the response
        # payload, or _DEFERRED when it answers later itself (agent, chat.send).
        self.methods: dict[str, Callable[[ControlConnection, dict[str, Any], Any], Awaitable[Any]]] = {
            "health": ControlConnection.m_health, "status": ControlConnection.m_status,
            "agent": ControlConnection.m_agent, "agent.wait": ControlConnection.m_agent_wait,
            "chat.send": ControlConnection.m_chat_send, "chat.history": ControlConnection.m_chat_history,
            "chat.abort": ControlConnection.m_chat_abort,
            "sessions.list": ControlConnection.m_sessions_list,
            "sessions.reset": ControlConnection.m_sessions_reset,
            "sessions.delete": ControlConnection.m_sessions_delete,
            "agents.list": ControlConnection.m_agents_list, "config.get": ControlConnection.m_config_get,
        }

    # ---- the upgrade ----
    def _check_upgrade(self, request: http.HTTPRequest) -> list[tuple[str, str]]:
        headers = wshandshake.server_handshake(request.method, request.version, request.headers)
        self.gateway.auth.check_host(request.headers.get("host"))
        origin = request.headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, request.headers.get("host", "")):
            raise ApiError(403, f"origin {origin!r} is not allowed (gateway.ws.allowedOrigins)",
                           code="origin_not_allowed")
        if request.headers.get("authorization") is not None:
            # DECISIONS 9: only an upgrade carrying a wrong Authorization gets 401 here.
            self.gateway.authorize(request)
        return headers

    def _origin_allowed(self, origin: str, host: str) -> bool:
        allowed = self.config.allowed_origins
        if allowed:
            return "*" in allowed or origin in allowed
        # No list: same host as the request, or a page served from loopback.
        try:
            parts = urlsplit(origin)
            netloc, hostname = parts.netloc.lower(), parts.hostname or ""
        except ValueError:          # "http://[": not a URL, so not an allowed origin
            return False
        return netloc == host.lower() or hostname in ("localhost", "127.0.0.1", "::1")

    async def handle_upgrade(self, request: http.HTTPRequest) -> http.Upgrade:
        """``GET /`` with ``Upgrade: websocket``: a control connection."""
        if request.headers.get("upgrade") is None:
            raise ApiError(426, "this path serves the WebSocket control protocol: send "
                                "Upgrade: websocket", code="upgrade_required",
                           headers=(("upgrade", "websocket"), ("connection", "upgrade")))
        headers = self._check_upgrade(request)
        client = self.gateway.auth.client_address(request.client,
                                                  request.headers.get_all("x-forwarded-for"))
        preauthorized = request.headers.get("authorization") is not None
        return http.Upgrade(headers, self._new_control_socket,
                            lambda ws: ControlConnection(self, ws, client, preauthorized).serve())

    async def handle_echo_upgrade(self, request: http.HTTPRequest) -> http.Upgrade:
        """``gateway.ws.echoPath``: a plain echo, for testing the WebSocket stack (DECISIONS 29)."""
        headers = self._check_upgrade(request)
        return http.Upgrade(headers, self._new_socket, self._echo)

    def _new_socket(self) -> WebSocket:
        return WebSocket(client=False, max_message_bytes=self.config.max_payload_bytes)

    def _new_control_socket(self) -> WebSocket:
        # Before connect the shell queues at most one unread message; serve()
        # raises the bound once the client is authenticated.
        return WebSocket(client=False, max_message_bytes=self.config.max_payload_bytes,
                         max_queued_messages=PRE_CONNECT_QUEUED_MESSAGES)

    async def _echo(self, ws: Any) -> None:
        try:
            async for message in ws:
                ws.send(message)
            await ws.close()
        except ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()

    # ---- gateway-wide events ----
    def start(self) -> None:
        """Start the tick timer (``tick`` every ``tickIntervalMs`` to connected clients)."""
        self._tick = asyncio.get_running_loop().call_later(
            self.config.tick_interval_ms / 1000, self._send_ticks)

    def _send_ticks(self) -> None:
        payload = {"ts": int(time.time() * 1000)}
        for conn in list(self.connections):
            conn.event("tick", payload)
        self.start()

    def broadcast(self, event: str, payload: dict[str, Any]) -> None:
        for conn in list(self.connections):
            conn.event(event, payload)

    async def shutdown(self) -> None:
        """Tell every client, close with 1001, and wait briefly for the handshakes."""
        if self._tick is not None:
            self._tick.cancel()
        conns = list(self.connections)
        for conn in conns:
            conn.event("shutdown", {"reason": "gateway stopping", "restartExpectedMs": None})
        closing = [asyncio.ensure_future(c.ws.close(CLOSE_GOING_AWAY, "gateway stopping")) for c in conns]
        if closing:
            await asyncio.wait(closing, timeout=SHUTDOWN_CLOSE_TIMEOUT)


class ControlConnection:
    """One authenticated-or-not control connection: reads requests, writes responses and events."""

    def __init__(self, protocol: ControlProtocol, ws: Any, client: str, preauthorized: bool) -> None:
        self.protocol = protocol
        self.gateway = protocol.gateway
        self.ws = ws
        self.client = client
        self.id = f"conn-{next(protocol._ids)}"
        self.authenticated = preauthorized and self.gateway.auth.required
        self.connected = False
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<ControlConnection {self.id} connected={self.connected}>"

    # ---- frames out ----
    def _send(self, frame: dict[str, Any]) -> None:
        try:
            self.ws.send(json.dumps(frame, ensure_ascii=False))
        except ConnectionClosed:
            pass

    def respond(self, req_id: Any, payload: Any) -> None:
        self._send({"type": "res", "id": req_id, "ok": True, "payload": payload})

    def fail(self, req_id: Any, exc: BaseException) -> None:
        self._send({"type": "res", "id": req_id, "ok": False, "error": _error_shape(exc)})

    def event(self, name: str, payload: dict[str, Any]) -> None:
        if not self.connected:
            return
        self._seq += 1
        self._send({"type": "event", "event": name, "payload": payload, "seq": self._seq})

    # ---- frames in ----
    async def serve(self) -> None:
        """Read frames until the client leaves; ``connect`` must come first.

        The pre-connect phase has one deadline (``connect_timeout``), whatever
        arrives; any failure ends the connection with a close code, never
        leaves it open.
        """
        try:
            try:
                async with asyncio.timeout(self.protocol.connect_timeout):
                    await self._handshake()
            except TimeoutError:
                raise ProtocolFailure(CLOSE_POLICY, "connect did not complete in time") from None
            self.ws.max_queued_messages = DEFAULT_MAX_QUEUED_MESSAGES
            self.protocol.connections.add(self)
            async for message in self.ws:
                await self._dispatch(message)
        except ProtocolFailure as exc:
            await self.ws.close(exc.code, _close_reason(str(exc)))
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: internal error, closing", self.id)
            await self.ws.close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            self.protocol.connections.discard(self)
            for task in list(self._tasks):
                task.cancel()
            await self.ws.wait_closed()

    async def _parse(self, message: str | bytes) -> dict[str, Any]:
        """A request frame (its params not yet checked); ``ApiError`` 400 for anything else."""
        if isinstance(message, bytes):
            raise ProtocolFailure(CLOSE_UNSUPPORTED_DATA, "binary frames are not part of the protocol")
        try:
            frame = await safejson.loads_async(message)
        except ValueError as exc:       # bad JSON, too deep, NaN, a lone surrogate
            raise ApiError(400, f"invalid JSON: {exc}", code="invalid_json") from None
        if not isinstance(frame, dict) or frame.get("type") != "req" \
                or not isinstance(frame.get("method"), str) \
                or not isinstance(frame.get("id"), (str, int)) or isinstance(frame.get("id"), bool):
            raise ApiError(400, 'expected a request frame {"type":"req","id","method","params"}')
        return frame

    async def _handshake(self) -> None:
        message = await self.ws.recv()
        if isinstance(message, str) and len(message) > MAX_CONNECT_FRAME_CHARS:
            self.fail(None, ApiError(400, f"a frame before connect may hold at most "
                                          f"{MAX_CONNECT_FRAME_CHARS} characters"))
            raise ProtocolFailure(CLOSE_TOO_BIG, "connect frame too big")
        try:
            frame = await self._parse(message)
        except ApiError as exc:
            # Unreadable: it may have carried credentials, so it counts as a failed attempt.
            self._count_failed_attempt()
            self.fail(None, exc)
            raise ProtocolFailure(CLOSE_POLICY, "the first frame must be a connect request") from None
        if frame["method"] != "connect":
            self.fail(frame["id"], ApiError(400, "the first request must be connect"))
            raise ProtocolFailure(CLOSE_POLICY, "the first request must be connect")
        try:
            hello = self._connect(frame.get("params"))
        except ApiError as exc:
            self.fail(frame["id"], exc)
            raise ProtocolFailure(CLOSE_POLICY, exc.message) from None
        self.connected = True
        self.respond(frame["id"], hello)

    def _count_failed_attempt(self) -> None:
        """Count an unreadable credential with the auth limiter, as a wrong one counts."""
        auth = self.gateway.auth
        if auth.required and not self.authenticated:
            try:
                auth.check("", self.client)     # present but not a credential: a failed attempt
            except ApiError:
                pass

    def _connect(self, raw_params: Any) -> dict[str, Any]:
        try:
            params = params_mod.check("connect", raw_params)
        except ApiError:
            if isinstance(raw_params, dict) and raw_params.get("auth") is not None:
                self._count_failed_attempt()
            raise
        lo, hi = params["minProtocol"], params["maxProtocol"]
        if not lo <= PROTOCOL_VERSION <= hi:
            raise ApiError(400, f"protocol range [{lo}, {hi}] does not include version "
                                f"{PROTOCOL_VERSION}", code="protocol_mismatch")
        auth = self.gateway.auth
        if auth.required and not self.authenticated:
            presented = (params.get("auth") or {}).get(auth.secret.mode)
            if presented is not None and not _encodable(presented):
                presented = ""      # a lone surrogate cannot match any secret: a failed attempt
            try:
                auth.check(presented, self.client)
            except ApiError as exc:
                if exc.status != 401:
                    raise
                what = "missing" if presented is None else "mismatch"
                raise ApiError(401, f"unauthorized: gateway {auth.secret.mode} {what} (send the "
                                    f"gateway {auth.secret.mode} as connect.params.auth."
                                    f"{auth.secret.mode})", code=exc.code) from None
            self.authenticated = True
        limits = self.protocol.config
        return {
            "type": "hello-ok", "protocol": PROTOCOL_VERSION,
            "server": {"version": __version__, "connId": self.id},
            "features": {"methods": sorted(self.protocol.methods), "events": list(EVENTS)},
            "snapshot": {"health": self.gateway.health_snapshot(),
                         "uptimeMs": int((time.time() - self.gateway.started_at) * 1000)},
            "policy": {"maxPayload": limits.max_payload_bytes,
                       "maxBufferedBytes": self.ws.max_write_buffer_bytes,
                       "tickIntervalMs": limits.tick_interval_ms},
        }

    async def _dispatch(self, message: str | bytes) -> None:
        try:
            frame = await self._parse(message)
        except ApiError as exc:
            self.fail(None, exc)     # the connection stays usable
            return
        method = self.protocol.methods.get(frame["method"])
        try:
            if frame["method"] == "connect":
                raise ApiError(409, "already connected")
            if method is None:
                raise ApiError(400, f"unknown method: {params_mod.shown(frame['method'])}",
                               code="unknown_method")
            params = params_mod.check(frame["method"], frame.get("params"))
            payload = await method(self, params, frame["id"])
        except (ApiError, RunError) as exc:
            self.fail(frame["id"], exc)
            return
        except Exception:
            log.exception("%s: method %s failed", self.id, frame["method"])
            self.fail(frame["id"], RuntimeError())
            return
        if payload is not _DEFERRED:
            self.respond(frame["id"], payload)

    # ---- methods ----
    async def m_health(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        return self.gateway.health_snapshot()

    async def m_status(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        runtime = self.gateway.runtime
        return {**self.gateway.health_snapshot(),
                "connections": {"control": len(self.protocol.connections),
                                "http": self.gateway.server.connection_count},
                "agents": [{"id": a.id, "active": a.active, "queued": a.waiting}
                           for a in runtime.agents.values()],
                "defaultAgentId": runtime.default_agent.id}

    async def m_agents_list(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        runtime = self.gateway.runtime
        return {"defaultId": runtime.default_agent.id,
                "agents": [{"id": a.id, "name": a.name, "model": a.model,
                            "default": a is runtime.default_agent}
                           for a in runtime.agents.values()]}

    async def m_config_get(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        return {"config": config_mod.to_data(self.gateway.config, mask=True)}

    def _start_run(self, params: dict[str, Any], origin: str,
                   session_key: str | None) -> Run:
        message = _string(params, "message", required=True)
        assert message is not None
        return agent_runtime.run(self.gateway.runtime, AgentRequest(
            message=message, agent_id=_string(params, "agentId"), session_key=session_key,
            system=_string(params, "extraSystemPrompt") or "", origin=origin,
            idempotency_key=_string(params, "idempotencyKey")))

    async def m_agent(self, params: dict[str, Any], req_id: Any) -> object:
        run = self._start_run(params, "ws", _string(params, "sessionKey"))
        self.respond(req_id, {"runId": run.id, "status": "accepted"})
        self._spawn(self._relay_agent(run, req_id))
        return _DEFERRED

    async def _relay_agent(self, run: Run, req_id: Any) -> None:
        """The run's ``agent`` events, assistant deltas coalesced, then the final response."""
        loop = asyncio.get_running_loop()
        text = TextSoFar()
        seq = 0
        base = {"runId": run.id, "sessionKey": run.session_key}
        subscription = run.subscribe()

        def emit(stream: str, data: dict[str, Any]) -> None:
            nonlocal seq
            seq += 1
            self.event("agent", {**base, "seq": seq, "ts": int(time.time() * 1000),
                                 "stream": stream, "data": data})

        def flush() -> None:
            delta = text.take(loop.time())
            emit("assistant", {"delta": delta, "text": text.text})

        while (batch := await subscription.next_batch(text.wait(loop.time()))) is not None:
            for event in batch:
                kind = type(event)
                if kind is Delta:
                    text.add(event.text)
                elif kind is Started:
                    emit("lifecycle", {"phase": "start", "model": event.model})
                elif kind is Ended:
                    if text.pending:
                        flush()
                    usage = event.result.usage.as_dict()
                    emit("lifecycle", {"phase": "end", "text": event.result.text, "usage": usage})
                    self.respond(req_id, {"runId": run.id, "status": "ok", "text": event.result.text,
                                          "usage": usage, "sessionKey": run.session_key,
                                          "agentId": run.agent_id, "model": event.result.model,
                                          "finishReason": event.result.finish_reason})
                elif kind is Failed:
                    if text.pending:
                        flush()
                    emit("lifecycle", {"phase": "error", "reason": event.reason,
                                       "message": str(event.error)})
                    self.respond(req_id, {"runId": run.id, "status": "error", "text": event.partial,
                                          "usage": None, "error": _error_shape(event.error),
                                          "sessionKey": run.session_key})
            if text.pending and text.wait(loop.time()) == 0:
                flush()
                await asyncio.sleep(0)      # one event per loop turn: neighbours get their share

    async def m_agent_wait(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        run_id = _string(params, "runId", required=True)
        run = self.gateway.runtime.find_run(run_id or "")
        if run is None:
            raise ApiError(404, f"no run {run_id!r}", code="run_not_found", param="runId")
        timeout_ms = params.get("timeoutMs")
        try:
            # A finished run answers at once, whatever the timeout (even 0).
            result = await (run.wait() if run.done else asyncio.wait_for(
                run.wait(), None if timeout_ms is None else timeout_ms / 1000))
        except asyncio.TimeoutError:
            return {"runId": run.id, "status": "timeout"}
        except RunError as exc:
            return {"runId": run.id, "status": "aborted" if exc.reason == "aborted" else "error",
                    "error": _error_shape(exc)}
        return {"runId": run.id, "status": "ok", "text": result.text,
                "usage": result.usage.as_dict(), "sessionKey": result.session_key}

    def _session_key(self, params: dict[str, Any]) -> tuple[str, str]:
        runtime = self.gateway.runtime
        key = sessions.validate_key(_string(params, "sessionKey") or "main")
        owner = sessions.agent_of(key)
        agent = runtime.agent(owner or _string(params, "agentId"))
        return agent.id, key if owner else sessions.scoped_key(agent.id, key)

    async def m_chat_send(self, params: dict[str, Any], req_id: Any) -> object:
        _, key = self._session_key(params)
        run = self._start_run({**params, "agentId": None}, "chat", key)
        self.respond(req_id, {"runId": run.id, "status": "started", "sessionKey": key})
        self._spawn(_relay_chat(self.protocol, run))
        return _DEFERRED

    async def m_chat_history(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        agent_id, key = self._session_key(params)
        limit = params.get("limit", 200)
        lines = await self.gateway.runtime.store.read_transcript(agent_id, key)
        messages = sessions.chat_messages(lines)
        return {"sessionKey": key, "messages": messages[-limit:]}

    async def m_chat_abort(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        _, key = self._session_key(params)
        run_id = _string(params, "runId")
        aborted = [run.id for run in list(self.gateway.runtime.active.values())
                   if run.session_key == key and (run_id is None or run.id == run_id)
                   and run.abort("chat.abort")]
        return {"ok": True, "aborted": bool(aborted), "runIds": aborted}

    async def m_sessions_list(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        agent_id = _string(params, "agentId")
        if agent_id is not None:
            agent_id = self.gateway.runtime.agent(agent_id).id
        infos = self.gateway.runtime.store.list_sessions(agent_id)
        return {"sessions": [{"key": i.key, "agentId": i.agent_id, "turns": i.turns,
                              "createdAt": int(i.created_at * 1000),
                              "updatedAt": int(i.updated_at * 1000), "lastRunId": i.last_run_id}
                             for i in infos]}

    async def m_sessions_reset(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        agent_id, key = self._session_key({**params, "sessionKey": _string(params, "key", required=True)})
        return {"key": key, "reset": await self.gateway.runtime.store.reset(agent_id, key)}

    async def m_sessions_delete(self, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
        agent_id, key = self._session_key({**params, "sessionKey": _string(params, "key", required=True)})
        return {"key": key, "deleted": await self.gateway.runtime.store.delete(agent_id, key)}

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


_DEFERRED: Final = object()


async def _relay_chat(protocol: ControlProtocol, run: Run) -> None:
    """``chat`` events of a ``chat.send`` run, to every connected client."""
    seq = 0
    base = {"runId": run.id, "sessionKey": run.session_key}
    async for event in run.subscribe():
        if type(event) is Started:
            continue
        seq += 1
        if type(event) is Delta:
            protocol.broadcast("chat", {**base, "seq": seq, "state": "delta",
                                        "message": {"role": "assistant",
                                                    "content": [{"type": "text", "text": event.text}]}})
        elif type(event) is Ended:
            protocol.broadcast("chat", {**base, "seq": seq, "state": "final",
                                        "message": {"role": "assistant", "content": [
                                            {"type": "text", "text": event.result.text}]},
                                        "usage": event.result.usage.as_dict()})
        elif type(event) is Failed:
            state = "aborted" if event.reason == "aborted" else "error"
            protocol.broadcast("chat", {**base, "seq": seq, "state": state,
                                        "errorMessage": str(event.error)})
