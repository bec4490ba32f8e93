"""The WebSocket battery (``--ws``): handshake, ``connect``/``hello-ok``, auth, an ``agent`` run.

The control protocol (the original Gateway's shapes): JSON text frames
``{"type":"req","id","method","params"}`` answered by ``{"type":"res","id",
"ok","payload"|"error"}``; server events ``{"type":"event","event","payload",
"seq"}``; a server may open with a ``connect.challenge`` event, which is
skipped like every event while a response is awaited. ``connect`` must come
first (client id ``cli``, one the original accepts); an ``agent`` request is
answered by an ack ``{runId, status:"accepted"}``, the run's ``agent`` events,
then a final ``res`` with the same id, in the original's shape or the older
``{text, usage}``. Uses the package's own client (``net/wsclient``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Final

from .. import __version__, safejson
from ..errors import ConnectionClosed, GatewayError
from ..net.wsclient import connect
from ..net.wsstream import WebSocket
from .checks import Check, Failed, Passed, Probe, Skipped, registry, show, why

CHECKS: list[Check] = []
check = registry(CHECKS, ws=True)

PROTOCOL: Final = 3
CLOSE_POLICY: Final = 1008
CONNECT_ID: Final = "conformance-connect"
AGENT_ID: Final = "conformance-agent"
# How long our close waits for the server's Close and TCP close (websockets: 10 s).
CLOSE_TIMEOUT: Final = 2.0


# -- frames --------------------------------------------------------------------------------

async def _open(p: Probe) -> WebSocket:
    try:
        return await connect(p.target.ws_url(), open_timeout=p.target.timeout, ping_interval=None,
                             close_timeout=min(p.target.timeout, CLOSE_TIMEOUT))
    except (GatewayError, ValueError) as exc:
        raise Failed(f"the WebSocket handshake failed: {exc}", url=p.target.ws_url()) from None
    except OSError as exc:
        raise Failed(f"cannot connect to {p.target.ws_url()}: {why(exc)}") from None


async def _frame(ws: WebSocket) -> dict[str, Any]:
    try:
        message = await ws.recv()
    except ConnectionClosed as exc:
        raise Failed(f"the server closed the connection ({exc})", close_code=ws.close_code) from None
    if isinstance(message, bytes):
        raise Failed("a binary frame: the protocol uses JSON text frames", frame=show(message))
    try:
        frame = await safejson.loads_async(message)
    except ValueError:
        frame = None
    if not isinstance(frame, dict):
        raise Failed("a text frame that is not a JSON object", frame=show(message))
    return frame


async def _response(ws: WebSocket, req_id: str) -> dict[str, Any]:
    """The next ``res`` frame for ``req_id`` (events in between are skipped)."""
    while True:
        frame = await _frame(ws)
        if frame.get("type") == "res" and frame.get("id") == req_id:
            return frame


def _connect_request(token: str | None) -> str:
    params: dict[str, Any] = {
        "minProtocol": PROTOCOL, "maxProtocol": PROTOCOL,
        # "cli": a client id the original Gateway accepts (it refuses ids it does not know).
        "client": {"id": "cli", "displayName": "equabot-conformance", "version": __version__,
                   "platform": sys.platform, "mode": "cli"}}
    if token is not None:
        params["auth"] = {"token": token, "password": token}
    return json.dumps({"type": "req", "id": CONNECT_ID, "method": "connect", "params": params})


def _expect_refusal(frame: dict[str, Any], what: str) -> None:
    error = frame.get("error")
    if frame.get("ok") is not False or not isinstance(error, dict) \
            or not isinstance(error.get("code"), str) or not isinstance(error.get("message"), str):
        raise Failed(f"{what} was not refused with ok:false and error {{code, message}}",
                     frame=show(json.dumps(frame)))


async def _closed_with_policy(ws: WebSocket, what: str) -> int | None:
    """Wait for the server to close; ``Failed`` unless it closes with 1008."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        pass
    await ws.wait_closed()
    if ws.close_code != CLOSE_POLICY:
        raise Failed(f"after {what} the connection closed with {ws.close_code}, not 1008",
                     close_code=ws.close_code, close_reason=ws.close_reason)
    return ws.close_code


# -- one connection, one agent run, shared by the connect and agent checks ---------------------

@dataclass(slots=True)
class AgentRun:
    """What one connection saw: the hello, then an ``agent`` request's frames."""

    hello: dict[str, Any]
    message: str = ""
    ack: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> Any:
        for frame in (self.ack, self.final):
            if frame and isinstance(frame.get("payload"), dict) and frame["payload"].get("runId"):
                return frame["payload"]["runId"]
        return None

    def agent_events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == "event" and f.get("event") == "agent"
                and isinstance(f.get("payload"), dict) and f["payload"].get("runId") == self.run_id]


async def _agent_run(p: Probe) -> AgentRun:
    async def run() -> AgentRun:
        ws = await _open(p)
        try:
            ws.send(_connect_request(p.target.token))
            result = AgentRun(await _response(ws, CONNECT_ID), message=p.unique("ws-agent"))
            if result.hello.get("ok") is not True:
                return result
            params = {"message": result.message, "idempotencyKey": p.unique("ws-run")}
            if p.target.agent:
                params["agentId"] = p.target.agent
            ws.send(json.dumps({"type": "req", "id": AGENT_ID, "method": "agent", "params": params}))
            while result.final is None:
                frame = await _frame(ws)
                result.frames.append(frame)
                if frame.get("type") != "res" or frame.get("id") != AGENT_ID:
                    continue
                payload = frame.get("payload") if isinstance(frame.get("payload"), dict) else {}
                if result.ack is None and payload.get("status") == "accepted":
                    result.ack = frame
                else:
                    result.final = frame
            return result
        finally:
            await ws.close()
    return await p.shared("ws-agent", run)


# -- the checks -----------------------------------------------------------------------------

@check("ws.handshake", "RFC 6455 §4.2.2 and the control protocol: GET / with Upgrade: websocket → 101 with the "
       "right Sec-WebSocket-Accept, on the HTTP port")
async def ws_handshake(p: Probe) -> Passed:
    ws = await _open(p)
    await ws.close()
    return Passed("101 Switching Protocols with the right Sec-WebSocket-Accept", url=p.target.ws_url())


@check("ws.connect-first", 'control protocol: anything before connect → an error response and close 1008',
       requires=("ws.handshake",))
async def ws_connect_first(p: Probe) -> Passed:
    ws = await _open(p)
    try:
        ws.send(json.dumps({"type": "req", "id": "conformance-early", "method": "health", "params": {}}))
        _expect_refusal(await _response(ws, "conformance-early"), "a request before connect")
        code = await _closed_with_policy(ws, "a request before connect")
    finally:
        await ws.close()
    return Passed("a request before connect is refused, then the connection closes 1008", close_code=code)


def _missing(payload: Any, paths: tuple[tuple[str, type | tuple[type, ...]], ...]) -> str | None:
    for path, kind in paths:
        node = payload
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, kind) or isinstance(node, bool) and kind is int:
            return path
    return None


HELLO_FIELDS: Final = (
    ("server.version", str), ("server.connId", str), ("features.methods", list),
    ("features.events", list), ("snapshot", dict), ("policy.maxPayload", int),
    ("policy.tickIntervalMs", int),
)


@check("ws.connect", 'control protocol: connect {minProtocol, maxProtocol, client, auth} with a range holding '
       'version 3 → hello-ok with the negotiated protocol, server version and connection id, the '
       'lists of methods and events, a health snapshot and the limits (maxPayload, tickIntervalMs)',
       requires=("ws.handshake",))
async def ws_connect(p: Probe) -> Passed:
    # Its own connection: a slow or failing agent run is the agent checks' verdict, not this one's.
    ws = await _open(p)
    try:
        ws.send(_connect_request(p.target.token))
        hello = await _response(ws, CONNECT_ID)
    finally:
        await ws.close()
    payload = hello.get("payload")
    if hello.get("ok") is not True or not isinstance(payload, dict) or payload.get("type") != "hello-ok":
        raise Failed("connect was not answered with ok:true and a hello-ok payload",
                     frame=show(json.dumps(hello)))
    if payload.get("protocol") != PROTOCOL:
        raise Failed(f"hello-ok protocol is {payload.get('protocol')!r}, not {PROTOCOL}")
    missing = _missing(payload, HELLO_FIELDS)
    if missing:
        raise Failed(f"hello-ok has no valid {missing}", frame=show(json.dumps(hello)))
    if "agent" not in payload["features"]["methods"]:
        raise Failed("hello-ok features.methods does not list agent",
                     methods=payload["features"]["methods"])
    return Passed(f"hello-ok, protocol {PROTOCOL}", server=payload["server"])


@check("ws.auth", 'control protocol: bad auth → an error response and close 1008, with the same auth rules as HTTP',
       requires=("ws.handshake",))
async def ws_auth(p: Probe) -> Passed:
    if not p.target.token:
        raise Skipped("no --token given")
    ws = await _open(p)
    try:
        ws.send(_connect_request(p.unique("wrong-token")))
        _expect_refusal(await _response(ws, CONNECT_ID), "connect with a wrong token")
        code = await _closed_with_policy(ws, "connect with a wrong token")
    finally:
        await ws.close()
    return Passed("a wrong token is refused, then the connection closes 1008", close_code=code)


@check("ws.agent-ack", 'control protocol: agent answers first {runId, status: "accepted"}',
       requires=("ws.connect",))
async def ws_agent_ack(p: Probe) -> Passed:
    run = await _agent_run(p)
    if run.ack is None:
        first = run.final or {}
        raise Failed("the first response to agent is not {runId, status: \"accepted\"}",
                     frame=show(json.dumps(first)))
    if run.ack.get("ok") is not True or not isinstance(run.ack["payload"].get("runId"), str):
        raise Failed("the ack has no ok:true and runId", frame=show(json.dumps(run.ack)))
    index = run.frames.index(run.ack)
    early = [f for f in run.agent_events() if run.frames.index(f) < index]
    if early:
        raise Failed("agent events arrive before the ack", frame=show(json.dumps(early[0])))
    return Passed("the ack {runId, status: accepted} comes first", run_id=run.ack["payload"]["runId"])


def _check_event_order(events: list[dict[str, Any]]) -> str:
    """The assistant text the events add up to; ``Failed`` at the first event out of place."""
    text = ""
    last_seq = 0
    for i, frame in enumerate(events):
        payload = frame["payload"]
        seq, stream, data = payload.get("seq"), payload.get("stream"), payload.get("data")
        if not isinstance(seq, int) or seq <= last_seq or not isinstance(data, dict):
            raise Failed(f"agent event {i} lacks an increasing seq or a data object",
                         frame=show(json.dumps(frame)))
        last_seq = seq
        phase = data.get("phase")
        first, last = i == 0, i == len(events) - 1
        if first and (stream, phase) != ("lifecycle", "start"):
            raise Failed("the first agent event is not lifecycle {phase: start}", frame=show(json.dumps(frame)))
        if last and (stream, phase) != ("lifecycle", "end"):
            raise Failed("the last agent event is not lifecycle {phase: end}", frame=show(json.dumps(frame)))
        if stream == "assistant":
            if not isinstance(data.get("delta"), str) or data.get("text") != text + data["delta"]:
                raise Failed(f"assistant event {i} is not {{delta, text: the text so far}}",
                             frame=show(json.dumps(frame)))
            text = data["text"]
        elif not (first or last) or stream != "lifecycle":
            raise Failed(f"agent event {i} is neither an assistant delta nor the run's start or end",
                         frame=show(json.dumps(frame)))
    return text


@check("ws.agent-events", 'control protocol: the run streams as agent events {runId, seq, stream: lifecycle|'
       'assistant, data}: lifecycle start, assistant {delta, text}, lifecycle end; event frames\' seq '
       "increases per connection", requires=("ws.connect",))
async def ws_agent_events(p: Probe) -> Passed:
    run = await _agent_run(p)
    events = run.agent_events()
    if not events:
        raise Failed("no agent events for the run", run_id=run.run_id, frames=len(run.frames))
    seqs = [f.get("seq") for f in run.frames if f.get("type") == "event"]
    if not all(isinstance(s, int) for s in seqs) or seqs != sorted(set(seqs)):
        raise Failed("event frames' seq does not increase per connection", seqs=seqs[:20])
    text = _check_event_order(events)
    if not text:
        raise Failed("no assistant delta between the run's start and end", events=len(events))
    deltas = len(events) - 2
    return Passed(f"{len(events)} agent events: start, {deltas} delta{'s' if deltas != 1 else ''}, end",
                  text=show(text))


def _final_text(payload: dict[str, Any]) -> Any:
    """The reply of a final payload: the original's result.payloads[].text, or an older {text}."""
    result = payload.get("result")
    if isinstance(result, dict) and isinstance(result.get("payloads"), list):
        texts = [p.get("text") for p in result["payloads"] if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    return payload.get("text")


def _final_usage(payload: dict[str, Any]) -> Any:
    result = payload.get("result")
    if isinstance(result, dict) and isinstance(result.get("meta"), dict):
        agent_meta = result["meta"].get("agentMeta")
        return agent_meta.get("usage") if isinstance(agent_meta, dict) else None
    return payload.get("usage")


@check("ws.agent-final", 'control protocol: then, with the same id, the final result: the original '
       'Gateway\'s {runId, status: "ok", summary, result: {payloads: [{text}], meta: {agentMeta: '
       '{usage}}}} (or an older {runId, status, text, usage})', requires=("ws.connect",))
async def ws_agent_final(p: Probe) -> Passed:
    run = await _agent_run(p)
    final = run.final or {}
    payload = final.get("payload") if isinstance(final.get("payload"), dict) else {}
    if final.get("ok") is not True or payload.get("status") != "ok":
        raise Failed("the final response is not ok:true with status \"ok\"", frame=show(json.dumps(final)))
    if run.ack is not None and payload.get("runId") != run.ack["payload"].get("runId"):
        raise Failed("the final response names another runId than the ack", frame=show(json.dumps(final)))
    deltas = "".join(f["payload"]["data"].get("delta", "") for f in run.agent_events()
                     if f["payload"].get("stream") == "assistant" and isinstance(f["payload"].get("data"), dict))
    text = _final_text(payload)
    if not isinstance(text, str) or text != deltas:
        raise Failed("the final text is not the assistant deltas joined", text=show(str(text)),
                     deltas=show(deltas))
    usage = _final_usage(payload)
    if not isinstance(usage, dict):
        raise Failed("the final response has no usage object", frame=show(json.dumps(final)))
    return Passed("the final response: status ok, the text of the deltas, usage",
                  text=show(text), usage=usage)
