"""The Gateway's WebSocket control protocol (version 3), as the original Gateway speaks it.

Owns the upgrade check (version, key, Origin, an Authorization header if one
is sent), the pre-connect phase, method dispatch and event delivery. A
connection opens with a ``connect.challenge`` event; the client's ``connect``
request (protocol range, client, auth) is answered by ``hello-ok`` (features,
snapshot, policy), then a ``health`` event follows. Frames are in
``frames.py``, params schemas in ``params.py``, the methods in ``methods.py``
(reads, sessions, config) and ``runs.py`` (agent runs and their events).
Every frame is decoded with ``safejson``; bad frames get an ``INVALID_REQUEST``
response, and before ``connect`` a close (1008; 1009 for a frame too big;
1003 for binary). The whole pre-connect phase has one deadline, and the
WebSocket shell queues at most one message until it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .. import __version__, safejson
from ..errors import ApiError, ConnectionClosed, RunError
from ..net import routes as http
from ..net import wshandshake
from ..net.wsstream import DEFAULT_MAX_QUEUED_MESSAGES, WebSocket
from . import methods as methods_mod
from . import params as params_mod
from . import runs as runs_mod
from .frames import DEFERRED, MAIN_KEY, dumps, error_shape, main_session_key, ms

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger("equabot_gw.control")

PROTOCOL_VERSION: Final = 3
# The whole pre-connect phase (upgrade to hello-ok) must end within this long,
# whatever the client sends; websockets' open_timeout is 10 s too.
CONNECT_TIMEOUT: Final = 10.0
# Largest frame (bytes) accepted before connect completes: a real connect is ~2 KiB;
# the original Gateway's whole payload limit is 512 KiB.
MAX_CONNECT_FRAME_CHARS: Final = 256 * 1024
# Messages the WebSocket shell may queue unread before connect completes
# (then reading pauses); after it, the shell's default.
PRE_CONNECT_QUEUED_MESSAGES: Final = 1
# Requests that wait long (agent.wait) run beside the connection's reading;
# at most this many at once per connection.
MAX_PENDING_WAITS: Final = 32
_LONG_METHODS: Final = frozenset({"agent.wait", "agent.subscribe"})
# Longest request id: a request waiting (agent.wait for a day, an agent run's final)
# holds its id, so a frame-sized one would pin megabytes per request. The original's
# clients send UUIDs; ours "cli-<method>".
MAX_REQUEST_ID_CHARS: Final = params_mod.MAX_NAME_CHARS
# A frame refused as JSON is read again for its id up to this size (a frame of one
# overflowing number is small; a big one costs the loop a second decode).
MAX_ID_HOLDER_CHARS: Final = 64 * 1024
# A request frame's keys, as the original's schema has them (no others).
_REQUEST_KEYS: Final = frozenset({"type", "id", "method", "params"})
# Close codes (RFC 6455 §7.4.1) used by the protocol.
CLOSE_POLICY: Final = 1008
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_INTERNAL_ERROR: Final = 1011
# How long shutdown waits for clients to complete the close handshake; then their
# connections are dropped (the shell's close_timeout, 10 s, is for a peer still in use).
SHUTDOWN_CLOSE_TIMEOUT: Final = 2.0
# The events this gateway sends (hello-ok features.events).
EVENTS: Final = ("connect.challenge", "agent", "chat", "tick", "health", "shutdown")
DEFAULT_ROLE: Final = "operator"
# The id of the error response to a frame with no usable id of its own (the original's word).
INVALID_FRAME_ID: Final = "invalid"

Method = Callable[["ControlConnection", dict[str, Any], Any], Awaitable[Any]]



def _uuid4() -> str:
    import uuid      # imported by the first WebSocket client: serving HTTP never needs it
    return str(uuid.uuid4())


class BadFrame(ApiError):
    """A frame that is not a request: ``reply_id`` is the id its error response carries.

    That is the frame's own id when it has a usable one (a non-empty string or
    an integer), so the client's request settles, else ``INVALID_FRAME_ID``, as
    the original Gateway answers; never null, which a response's id may not be.
    """

    def __init__(self, message: str, frame: Any = None) -> None:
        super().__init__(400, message)
        req_id = frame.get("id") if isinstance(frame, dict) else None
        usable = _is_request_id(req_id) and req_id != ""
        self.reply_id: str | int = req_id if usable else INVALID_FRAME_ID


def _id_holder(message: str | bytes) -> Any:
    """A refused frame as Python's own decoder reads it, only for the id its error goes to.

    A frame that is JSON by its grammar but refused for a value (a number that
    overflows, a lone surrogate escape; the original's decoder takes both)
    still names its request, which must settle. None for a frame over
    ``MAX_ID_HOLDER_CHARS`` or one that decoder refuses too (a syntax error,
    an integer of over 4,300 digits); its nesting is bounded by that
    decoder's recursion check.
    """
    if len(message) > MAX_ID_HOLDER_CHARS:
        return None
    try:
        import json
        return json.loads(message)
    except (ValueError, RecursionError):
        return None


def _is_request_id(value: Any) -> bool:
    """A string of at most ``MAX_REQUEST_ID_CHARS`` characters or an integer."""
    if isinstance(value, str):
        return len(value) <= MAX_REQUEST_ID_CHARS
    return isinstance(value, int) and not isinstance(value, bool)


class ProtocolFailure(Exception):
    """A frame that ends the connection with ``code`` after an error response."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin_key(value: str) -> str | None:
    """``value`` as a browser serialises an origin (RFC 6454 §6.2): ``scheme://host[:port]``
    in lower case, without a default port or a path; None if it names no origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:              # "http://[", a port out of range
        return None
    scheme, host = parts.scheme.lower(), parts.hostname      # hostname: already lower case
    if not scheme or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + ("" if port is None or port == _DEFAULT_PORTS.get(scheme) else f":{port}")


def _close_reason(text: str) -> str:
    """``text`` cut to the 123 UTF-8 bytes a Close frame's reason may hold (RFC 6455 §5.5)."""
    return text.encode("utf-8", "replace")[:123].decode("utf-8", "ignore")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ControlProtocol:
    """Every control connection of one gateway, the runs they started, the tick and shutdown."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config.gateway.ws
        self.connections: set[ControlConnection] = set()
        # Every connection being served, connected or still before its connect: what shutdown closes.
        self.serving: set[ControlConnection] = set()
        self.closing = False           # shutdown is closing the connections: new ones close at once
        self.connect_timeout = CONNECT_TIMEOUT
        self.runs = runs_mod.Runs(self)
        self.stopping = False          # the gateway is shutting down: no new runs
        self.methods: dict[str, Method] = {**methods_mod.METHODS, **runs_mod.METHODS}
        # stateVersion: bumped when the presence list or the health snapshot changes.
        self.presence_version = 0
        self.health_version = 0
        self._ids = itertools.count(1)
        self._tick: asyncio.TimerHandle | None = None
        # gateway.ws.allowedOrigins as origins compare: an entry written "https://App.example/"
        # admits the "https://app.example" a browser sends.
        self._allowed_origins = frozenset(
            key for key in map(_origin_key, self.config.allowed_origins) if key is not None)

    # ---- the upgrade ----
    def _check_upgrade(self, request: http.HTTPRequest) -> list[tuple[str, str]]:
        headers = wshandshake.server_handshake(request.method, request.version, request.headers)
        self.gateway.auth.check_host(request.headers.get("host"))
        origin = request.headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, request.headers.get("host", "")):
            raise ApiError(403, f"origin {origin!r} is not allowed (gateway.ws.allowedOrigins)",
                           code="origin_not_allowed")
        if request.headers.get("authorization") is not None:
            # Browsers cannot send headers on an upgrade: only an upgrade carrying a wrong Authorization gets 401 here.
            self.gateway.authorize(request)
        return headers

    def _origin_allowed(self, origin: str, host: str) -> bool:
        allowed = self.config.allowed_origins
        if allowed and ("*" in allowed or origin in allowed or _origin_key(origin) in self._allowed_origins):
            return True
        try:
            parts = urlsplit(origin)
            netloc, hostname = parts.netloc.lower(), parts.hostname or ""
        except ValueError:          # "http://[": not a URL, so not an allowed origin
            return False
        # A page of the gateway's own host is its own chat page: a list naming other
        # apps must not lock that out. Without a list, pages served from loopback too.
        return netloc == host.lower() or (not allowed and hostname in ("localhost", "127.0.0.1", "::1"))

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
        origin = request.headers.get("origin")     # a browser page: never exempt from the limiter
        return http.Upgrade(headers, self._new_control_socket,
                            lambda ws: ControlConnection(self, ws, client, preauthorized,
                                                         origin).serve())

    async def handle_echo_upgrade(self, request: http.HTTPRequest) -> http.Upgrade:
        """``gateway.ws.echoPath``: a plain echo, for testing the WebSocket stack (e.g. with the Autobahn suite)."""
        headers = self._check_upgrade(request)
        return http.Upgrade(headers, self._new_socket, self._echo)

    def _new_socket(self) -> WebSocket:
        return WebSocket(client=False, max_message_bytes=self.config.max_payload_bytes)

    def _new_control_socket(self) -> WebSocket:
        # Before connect the shell queues at most one unread message, of at most
        # MAX_CONNECT_FRAME_CHARS bytes (bigger: close 1009 as it arrives, never
        # buffered whole); serve() restores both bounds once the client is in.
        return WebSocket(client=False, max_message_bytes=min(MAX_CONNECT_FRAME_CHARS,
                                                             self.config.max_payload_bytes),
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
        self.broadcast("tick", {"ts": ms(time.time())})
        self.start()

    def broadcast(self, event: str, payload: dict[str, Any]) -> None:
        """Send an event to every connected client; the payload is encoded once.

        A client following a run through ``agent.subscribe`` gets that run's
        ``agent`` text and lifecycle events from its subscription alone, not twice
        (its ``tool`` events, which a subscription does not send, still come).
        """
        if not self.connections:
            return
        text = dumps(payload)
        run_id = payload.get("runId") if event == "agent" and payload.get("stream") != "tool" else None
        for conn in list(self.connections):
            if run_id is None or run_id not in conn.subscriptions:
                conn.event_text(event, text)

    def state_version(self) -> dict[str, int]:
        return {"presence": self.presence_version, "health": self.health_version}

    def announce_shutdown(self) -> None:
        """Tell every client the gateway is stopping; no run may be started here from now on."""
        if self.stopping:
            return
        self.stopping = True
        if self._tick is not None:
            self._tick.cancel()
        self.broadcast("shutdown", {"reason": "gateway stopping", "restartExpectedMs": None})

    async def shutdown(self, runs_timeout: float = 0.0) -> None:
        """Once the runs started here have settled (within ``runs_timeout`` seconds: the
        gateway aborts what is left after its grace period), so that their requesters got
        their final answers, close every client with 1001 and wait briefly for the handshakes."""
        self.announce_shutdown()
        live = self.runs.unsettled()
        if live and runs_timeout > 0:
            await asyncio.wait(live, timeout=runs_timeout)
        self.closing = True
        conns = list(self.serving)      # those still before their connect too: nothing to wait for
        self.runs.cancel()
        closing = [asyncio.ensure_future(c.ws.close(CLOSE_GOING_AWAY, "gateway stopping")) for c in conns]
        if closing:
            await asyncio.wait(closing, timeout=SHUTDOWN_CLOSE_TIMEOUT)
            # A peer that did not answer our Close in time (or one whose close had begun
            # before, under the shell's longer timeout) is not waited for any longer.
            for conn in conns:
                conn.ws.abort()
            await asyncio.wait(closing, timeout=SHUTDOWN_CLOSE_TIMEOUT)


class ControlConnection:
    """One control connection: the pre-connect phase, then requests, responses and events."""

    def __init__(self, protocol: ControlProtocol, ws: Any, client: str, preauthorized: bool,
                 origin: str | None = None) -> None:
        self.protocol = protocol
        self.gateway = protocol.gateway
        self.ws = ws
        self.client = client
        self.origin = origin
        self.id = _uuid4()
        self.number = next(protocol._ids)
        self.authenticated = preauthorized and self.gateway.auth.required
        self.connected = False
        self.connected_at = 0.0
        self.hello: dict[str, Any] = {}         # the client's connect params (client, role, ...)
        self._seq = 0
        self._waits: set[asyncio.Task[None]] = set()
        # Runs this client follows through agent.subscribe, by the id it named: how many times.
        self.subscriptions: dict[str, int] = {}
        # Runs whose final answers one of this client's agent requests (dropped when it closes).
        self.awaiting: set[runs_mod.PublicRun] = set()
        self.closed = False

    def __repr__(self) -> str:
        return f"<ControlConnection #{self.number} {self.id} connected={self.connected}>"

    # ---- frames out ----
    def _send_text(self, text: str) -> None:
        try:
            self.ws.send(text)
        except ConnectionClosed:
            pass

    def respond(self, req_id: Any, payload: Any) -> None:
        self._send_text(dumps({"type": "res", "id": req_id, "ok": True, "payload": payload}))

    def fail(self, req_id: Any, exc: BaseException) -> None:
        self._send_text(dumps({"type": "res", "id": req_id, "ok": False, "error": error_shape(exc)}))

    def send_final(self, req_id: Any, payload: dict[str, Any], error: dict[str, Any] | None) -> None:
        """A run's final response; a failed one carries its payload beside the error, as the original's."""
        frame: dict[str, Any] = {"type": "res", "id": req_id, "ok": error is None, "payload": payload}
        if error is not None:
            frame["error"] = error
        self._send_text(dumps(frame))

    def event(self, name: str, payload: dict[str, Any], *, state_version: bool = False) -> None:
        if self.connected:
            self._seq += 1
            frame: dict[str, Any] = {"type": "event", "event": name, "payload": payload, "seq": self._seq}
            if state_version:
                frame["stateVersion"] = self.protocol.state_version()
            self._send_text(dumps(frame))

    def event_text(self, name: str, payload_json: str) -> None:
        """An event whose payload is already JSON text (one encoding for every client)."""
        if self.connected:
            self._seq += 1
            self._send_text(f'{{"type":"event","event":"{name}","payload":{payload_json},"seq":{self._seq}}}')

    # ---- the connection ----
    async def serve(self) -> None:
        """Challenge, ``connect``, then requests until the client leaves.

        The pre-connect phase has one deadline (``connect_timeout``), whatever
        arrives; any failure ends the connection with a close code, never
        leaves it open.
        """
        self.protocol.serving.add(self)
        try:
            if self.protocol.closing:       # upgraded just as the gateway closes its clients
                raise ProtocolFailure(CLOSE_GOING_AWAY, "gateway stopping")
            self._send_text(dumps({"type": "event", "event": "connect.challenge",
                                   "payload": {"nonce": _uuid4(), "ts": ms(time.time())}}))
            try:
                async with asyncio.timeout(self.protocol.connect_timeout):
                    await self._handshake()
            except TimeoutError:
                raise ProtocolFailure(CLOSE_POLICY, "connect did not complete in time") from None
            self.ws.max_queued_messages = DEFAULT_MAX_QUEUED_MESSAGES
            self.ws.max_message_bytes = self.protocol.config.max_payload_bytes
            self.protocol.connections.add(self)
            self.protocol.presence_version += 1
            self.protocol.health_version += 1
            self.event("health", methods_mod.health_payload(self.gateway), state_version=True)
            async for message in self.ws:
                await self._dispatch(message)
        except ProtocolFailure as exc:
            await self.ws.close(exc.code, _close_reason(str(exc)))
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("conn %s: internal error, closing", self.id)
            await self.ws.close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            self.closed = True
            if self in self.protocol.connections:
                self.protocol.connections.discard(self)
                self.protocol.presence_version += 1
            self.protocol.runs.forget(self)     # no run holds a closed client until it ends
            for task in list(self._waits):
                task.cancel()
            try:
                await self.ws.wait_closed()
            finally:
                # Only now: a close under way (its peer silent) is shutdown's to cut short.
                self.protocol.serving.discard(self)

    async def _parse(self, message: str | bytes) -> dict[str, Any]:
        """A request frame (its params not yet checked); ``BadFrame`` for anything else."""
        if isinstance(message, bytes):
            raise ProtocolFailure(CLOSE_UNSUPPORTED_DATA, "binary frames are not part of the protocol")
        try:
            frame = await safejson.loads_async(message)
        except ValueError as exc:       # bad JSON, too deep, NaN, a lone surrogate
            raise BadFrame(f"invalid JSON: {exc}", _id_holder(message)) from None
        if not isinstance(frame, dict) or frame.get("type") != "req" \
                or not isinstance(frame.get("method"), str) \
                or not isinstance(frame.get("id"), (str, int)) or isinstance(frame.get("id"), bool):
            raise BadFrame('invalid request frame: expected {"type":"req","id","method","params"}', frame)
        if not _is_request_id(frame["id"]):
            raise BadFrame(f"invalid request frame: an id of {len(frame['id'])} characters, "
                           f"over {MAX_REQUEST_ID_CHARS}", frame)
        for name in frame:
            if name not in _REQUEST_KEYS:       # what a waiting request holds stays bounded
                raise BadFrame(f"invalid request frame: unexpected property '{params_mod.shown(name)}'", frame)
        return frame

    async def _handshake(self) -> None:
        message = await self.ws.recv()      # at most MAX_CONNECT_FRAME_CHARS bytes (the shell's limit)
        try:
            frame = await self._parse(message)
        except BadFrame as exc:
            # Unreadable: it may have carried credentials, so it counts as a failed attempt.
            self._count_failed_attempt()
            self.fail(exc.reply_id, exc)
            raise ProtocolFailure(CLOSE_POLICY, "the first frame must be a connect request") from None
        if frame["method"] != "connect":
            self.fail(frame["id"], ApiError(400, "invalid handshake: first request must be connect"))
            raise ProtocolFailure(CLOSE_POLICY, "invalid handshake: first request must be connect")
        try:
            hello = self._connect(frame.get("params"))
        except ApiError as exc:
            if exc.code == "protocol_mismatch":     # as the original answers it, for its clients
                shape = {**error_shape(exc), "details": {"expectedProtocol": PROTOCOL_VERSION}}
                self._send_text(dumps({"type": "res", "id": frame["id"], "ok": False, "error": shape}))
                raise ProtocolFailure(CLOSE_PROTOCOL_ERROR, "protocol mismatch") from None
            self.fail(frame["id"], exc)
            raise ProtocolFailure(CLOSE_POLICY, exc.message) from None
        self.connected = True
        self.connected_at = time.time()
        self.respond(frame["id"], hello)
        client = self.hello.get("client") or {}
        log.info("conn %s: connected (client %s, mode %s)", self.id, client.get("id", "?"),
                 client.get("mode", "?"))

    def _count_failed_attempt(self) -> None:
        """Count an unreadable credential with the auth limiter, as a wrong one counts."""
        auth = self.gateway.auth
        if auth.required and not self.authenticated:
            try:
                # present but not a credential: a failed attempt
                auth.check("", self.client, browser_origin=self.origin or False)
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
            raise ApiError(400, f"protocol mismatch: range [{lo}, {hi}] does not include version "
                                f"{PROTOCOL_VERSION}", code="protocol_mismatch")
        self._authenticate(params.get("auth") or {}, params.get("client") or {})
        self.hello = params
        return self._hello_ok()

    def _authenticate(self, creds: dict[str, Any], client: dict[str, Any]) -> None:
        auth = self.gateway.auth
        if not auth.required or self.authenticated:
            return
        mode = auth.secret.mode
        presented = creds.get(mode)
        if presented is not None and not _encodable(presented):
            presented = ""      # a lone surrogate cannot match any secret: a failed attempt
        try:
            auth.check(presented, self.client, browser_origin=self.origin or False)
        except ApiError as exc:
            if exc.status != 401:
                raise
            what = "missing" if presented is None else "mismatch"
            # INVALID_REQUEST, as the original answers; its command line shows the
            # hint to a user, so that client gets the hint in its config's terms.
            raise ApiError(400, f"unauthorized: gateway {mode} {what} ({_auth_hint(client, mode)})",
                           code=exc.code) from None
        self.authenticated = True

    def _hello_ok(self) -> dict[str, Any]:
        gateway = self.gateway
        protocol = self.protocol
        runtime = gateway.runtime
        default = runtime.default_agent.id
        self.connected_at = time.time()
        return {
            "type": "hello-ok", "protocol": PROTOCOL_VERSION,
            "server": {"version": __version__, "host": socket.gethostname(), "connId": self.id},
            "features": {"methods": list(protocol.methods), "events": list(EVENTS)},
            "snapshot": {
                "presence": [*methods_mod.presence(protocol), self.presence()],
                "health": methods_mod.health_payload(gateway),
                "stateVersion": protocol.state_version(),
                "uptimeMs": ms(time.time() - gateway.started_at),
                "stateDir": str(gateway.state_dir),
                "sessionDefaults": {"defaultAgentId": default, "mainKey": MAIN_KEY,
                                    "mainSessionKey": main_session_key(default),
                                    "scope": "per-sender"}},
            "policy": {"maxPayload": protocol.config.max_payload_bytes,
                       "maxBufferedBytes": self.ws.max_write_buffer_bytes,
                       "tickIntervalMs": protocol.config.tick_interval_ms}}

    def presence(self) -> dict[str, Any]:
        """This client as a ``system-presence`` entry."""
        client = self.hello.get("client") or {}
        host = client.get("displayName") or client.get("id") or "client"
        mode = client.get("mode") or "unknown"
        entry: dict[str, Any] = {"host": host, "version": client.get("version") or "unknown",
                                 "platform": client.get("platform") or "unknown", "mode": mode}
        if isinstance(self.hello.get("device"), dict) and self.hello["device"].get("id"):
            entry["deviceId"] = self.hello["device"]["id"]
        entry["roles"] = [self.hello.get("role") or DEFAULT_ROLE]
        entry["scopes"] = list(self.hello.get("scopes") or [])
        if client.get("instanceId"):
            entry["instanceId"] = client["instanceId"]
        entry.update({"reason": "connect", "ts": ms(self.connected_at),
                      "text": f"Node: {host} · mode {mode}"})
        return entry

    # ---- requests ----
    async def _dispatch(self, message: str | bytes) -> None:
        try:
            frame = await self._parse(message)
        except BadFrame as exc:
            self.fail(exc.reply_id, exc)     # the connection stays usable
            return
        if frame["method"] in _LONG_METHODS:
            if len(self._waits) >= MAX_PENDING_WAITS:
                self.fail(frame["id"], ApiError(429, f"at most {MAX_PENDING_WAITS} waiting requests "
                                                     f"per connection", code="rate_limited"))
                return
            task = asyncio.ensure_future(self._call(frame))
            self._waits.add(task)
            task.add_done_callback(self._waits.discard)
            return
        await self._call(frame)

    async def _call(self, frame: dict[str, Any]) -> None:
        name, req_id = frame["method"], frame["id"]
        started = time.perf_counter()
        try:
            if name == "connect":
                raise ApiError(400, "connect is only valid as the first request")   # as the original words it
            method = self.protocol.methods.get(name)
            if method is None:
                raise ApiError(400, f"unknown method: {params_mod.shown(name)}", code="unknown_method")
            payload = await method(self, params_mod.check(name, frame.get("params")), req_id)
        except (ApiError, RunError) as exc:
            self.fail(req_id, exc)
            log.info("conn %s: res ✗ %s %dms %s", self.id, params_mod.shown(name),
                     (time.perf_counter() - started) * 1000, error_shape(exc)["message"][:200])
            return
        except Exception:
            log.exception("conn %s: method %s failed", self.id, name)
            self.fail(req_id, RuntimeError())
            return
        if payload is not DEFERRED:
            self.respond(req_id, payload)
        log.info("conn %s: res ✓ %s %dms", self.id, name, (time.perf_counter() - started) * 1000)


def _auth_hint(client: dict[str, Any], mode: str) -> str:
    """What a refused ``connect`` tells its client to do: a command line, in its config's
    terms (as the original's CLI expects); any other client, in the protocol's."""
    if str(client.get("mode", "")).strip().lower() == "cli":
        return f"set gateway.remote.{mode} to match gateway.auth.{mode}"
    return f"send the gateway {mode} as connect.params.auth.{mode}"
