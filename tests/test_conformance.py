"""The conformance kit: every check passes against a live gateway, and each one can fail.

``FakeGateway`` is a small asyncio server written here that speaks the spec
correctly (HTTP, SSE, the WebSocket control protocol, an echo agent with a
turn counter) except for the one fault its ``breaks`` name; ``BROKEN`` maps
each fault to the check that must fail and its exact reason. Runs in ~3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import re
import socket
import time
import unittest
from typing import Any

from equabot_gw import conformance
from equabot_gw.conformance import checks
from equabot_gw.conformance.checks import Status, Target
from equabot_gw.conformance.checks_http import sse_events
from equabot_gw.net import websocket, wshandshake
from tests.conformance_fake_responses import BROKEN as BROKEN_RESPONSES
from tests.conformance_fake_responses import FakeResponses
from tests.support import ROOT, TOKEN, GatewayProcess, base_config

CHAT = "/v1/chat/completions"
MAX_BODY_BYTES = 20 * 1024 * 1024
AGENTS = ("main", "beta")
CREATED = 1_700_000_000
USAGE = {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}


def _http(status: int, content_type: str, body: bytes, extra: list[tuple[str, str]] = ()) -> bytes:
    fields = [("Content-Type", content_type), ("Content-Length", str(len(body))),
              ("Connection", "close"), *extra]
    head = f"HTTP/1.1 {status} Status\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    return head.encode() + body


def _error(status: int, message: str, extra: list[tuple[str, str]] = (), param: str | None = None,
           code: str | None = None) -> bytes:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return _http(status, "application/json", json.dumps(body).encode(), extra)


class _FakeWebSocket:
    """The server side of one WebSocket connection, over the package's sans-I/O codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn = websocket.Connection(client=False)
        self.reader, self.writer = reader, writer
        self.seq = 0

    async def recv(self) -> dict[str, Any] | None:
        while True:
            event = self.conn.next_event()
            self.writer.write(self.conn.data_to_send())
            if event is websocket.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
            elif event is websocket.EOF or isinstance(event, websocket.CloseReceived):
                return None
            elif isinstance(event, websocket.Message):
                return json.loads(event.data)

    def send(self, frame: dict[str, Any]) -> None:
        self.writer.write(self.conn.send_text(json.dumps(frame)))

    def event(self, payload: dict[str, Any]) -> None:
        self.seq += 1
        self.send({"type": "event", "event": "agent", "payload": payload, "seq": self.seq})

    def close(self, code: int) -> None:
        self.writer.write(self.conn.send_close(code, "bye"))


class FakeGateway:
    """A correct server for the spec, but for the faults named in ``breaks``."""

    def __init__(self, breaks: tuple[str, ...] = (), token: str | None = TOKEN, brand: str = "equabot") -> None:
        self.breaks = frozenset(breaks)
        self.token = token
        self.brand = brand          # headers x-<brand>-*, models <brand>:<agent>
        self.turns: collections.Counter[tuple[str, str]] = collections.Counter()
        self.responses = FakeResponses(self.broken)
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.keys: dict[str, bytes] = {}            # Idempotency-Key -> the body first sent with it
        self.url = ""

    def broken(self, name: str) -> bool:
        return name in self.breaks

    async def __aenter__(self) -> FakeGateway:
        self.stopping = asyncio.Event()
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        self.stopping.set()
        for writer in list(self.writers):
            writer.close()          # open connections read EOF and end
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ")
            headers = {n.strip().lower(): v.strip() for n, _, v in (h.partition(":") for h in head[1:] if h)}
            if headers.get("upgrade", "").lower() == "websocket":
                await self._websocket(reader, writer, headers)
                return
            length = int(headers.get("content-length", "0"))
            if length > MAX_BODY_BYTES:
                if not self.broken("no-413"):
                    writer.write(_error(413, "request body too large"))
                    await writer.drain()
                    return
                while length:       # read it all, as a server without a limit would
                    length -= len(await reader.readexactly(min(length, 65536)))
            body = await reader.readexactly(length)
            response, hang = self._route(method, path, headers, body)
            writer.write(response)
            await writer.drain()
            if hang:
                await self.stopping.wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)
            self.writers.discard(writer)

    # -- HTTP -------------------------------------------------------------------------

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[bytes, bool]:
        if path.startswith("/v1/responses") and not self.broken("endpoint-disabled") \
                and not self.broken("responses-absent"):
            refusal = self._authorize(headers.get("authorization"))
            if refusal is not None:
                return refusal, False
            status, content_type, data = self.responses.route(method, path, body)
            return _http(status, content_type, data), False
        if method == "GET" and path == f"{CHAT}/chatcmpl-fake/events" and not self.broken("no-events-endpoint"):
            text = self.keys.get("stream")
            if text is not None:
                return self._stream(json.loads(text), json.loads(text)["_text"], headers, keyed=True), False
        if path != CHAT or self.broken("endpoint-disabled"):
            if self.broken("unknown-path-plain"):
                return _http(404, "text/plain", b"not found"), False
            return _error(404, f"no route for {method} {path}"), False
        if method != "POST":
            if self.broken("405-text-body"):
                return _http(405, "text/html", b"<h1>405</h1>", [("Allow", "POST")]), False
            return _error(405, "method not allowed", [] if self.broken("405-no-allow") else [("Allow", "POST")]), False
        refusal = self._authorize(headers.get("authorization"))
        if refusal is not None:
            return refusal, False
        try:
            request = json.loads(body)
        except ValueError:
            if self.broken("bad-json-500"):
                return _error(500, "internal error"), False
            if self.broken("bad-json-detail"):
                return _http(400, "application/json", b'{"detail": "bad JSON"}'), False
            return _error(400, "We could not parse the JSON body of your request."), False
        if not request.get("messages"):
            status = 422 if self.broken("missing-messages-422") else 400
            return _error(status, "Missing required parameter: 'messages'.", param="messages"), False
        agent = self._agent(request.get("model", ""), headers)
        if agent is None:
            return _error(404, "unknown agent"), False
        key = headers.get("idempotency-key")
        replay = key is not None and key in self.keys
        if replay and self.keys[key] != body and not self.broken("key-reused-accepted"):
            return _error(422, "key reused with another body", code="idempotency_key_reused"), False
        if key is not None and not replay:
            self.keys[key] = body
        turn = self._turn(agent, request, headers)
        call = _asked_call(request)
        if call is not None:
            return (self._call_stream(request, *call) if request.get("stream") else self._call(request, *call)), False
        last = request["messages"][-1]
        said = last["content"]
        if last["role"] == "tool" and not self.broken("result-ignored"):
            said = f"tool {request['messages'][-2]['tool_calls'][0]['function']['name']} returned: {said}"
        elif last["role"] == "tool":
            said = request["messages"][0]["content"]
        text = f"Echo (turn {turn}): {said}"
        if request.get("stream"):
            if key is not None:
                self.keys["stream"] = json.dumps({**request, "_text": text}).encode()
            return self._stream(request, text, headers, key is not None), self.broken("stream-hangs")
        return self._completion(request, text, replay), False

    def _authorize(self, value: str | None) -> bytes | None:
        if self.token is None:
            return None
        scheme, _, credentials = (value or "").partition(" ")
        scheme_ok = scheme == "Bearer" if self.broken("scheme-case-sensitive") else scheme.lower() == "bearer"
        if scheme_ok and credentials == self.token and not self.broken("right-token-refused"):
            return None
        if value is None and self.broken("missing-token-accepted"):
            return None
        if value is not None and credentials != self.token and self.broken("wrong-token-accepted"):
            return None
        extra = [] if self.broken("no-www-authenticate") else [("WWW-Authenticate", "Bearer")]
        return _error(401, "invalid token", extra)

    def _agent(self, model: str, headers: dict[str, str]) -> str | None:
        chosen = "main"
        for prefix in (f"{self.brand}:", "agent:", f"{self.brand}/"):
            if model.startswith(prefix) and not self.broken("model-prefix-ignored"):
                chosen = model[len(prefix):]
        header = headers.get(f"x-{self.brand}-agent-id")
        if header is not None and not self.broken("agent-header-ignored"):
            chosen = header
        return chosen if chosen in AGENTS else None

    def _turn(self, agent: str, request: dict[str, Any], headers: dict[str, str]) -> int:
        key = None if self.broken("session-key-ignored") else headers.get(f"x-{self.brand}-session-key")
        if key is None and request.get("user") and not self.broken("user-ignored"):
            key = "user:" + request["user"]
        if key is None and self.broken("stateful-by-default"):
            key = "everyone"
        if key is None:
            return 1
        self.turns[(agent, key)] += 1
        return self.turns[(agent, key)]

    def _completion(self, request: dict[str, Any], text: str, replay: bool = False) -> bytes:
        usage = {**USAGE, "total_tokens": 6} if replay and self.broken("replay-other-usage") else USAGE
        obj = {"id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED,
               "model": request["model"], "usage": usage,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None, "finish_reason": "stop"}]}
        if self.broken("shape-missing-created"):
            del obj["created"]
        return _http(200, "text/plain" if self.broken("shape-text-plain") else "application/json",
                     json.dumps(obj).encode(), [(f"x-{self.brand}-idempotent-replay", "true")] if replay else [])

    def _call(self, request: dict[str, Any], name: str, arguments: str) -> bytes:
        message = {"role": "assistant", "content": "" if self.broken("call-content-empty") else None,
                   "refusal": None,
                   "tool_calls": [{"id": "call_fake_0", "type": "function",
                                   "function": {"name": name, "arguments": arguments}}]}
        obj = {"id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED, "model": request["model"],
               "usage": USAGE, "choices": [{"index": 0, "message": message, "logprobs": None,
                                            "finish_reason": "stop" if self.broken("call-finish-stop") else "tool_calls"}]}
        return _http(200, "application/json", json.dumps(obj).encode())

    def _call_stream(self, request: dict[str, Any], name: str, arguments: str) -> bytes:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
                    "model": request["model"],
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        first = {"index": 0, "id": "call_fake_0", "type": "function", "function": {"name": name, "arguments": ""}}
        pieces = [arguments[i:i + 8] for i in range(0, len(arguments), 8)]
        later = [{**first, "function": {"name": name, "arguments": piece}} if self.broken("call-id-repeated")
                 else {"index": 0, "function": {"arguments": piece}} for piece in pieces]
        chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [first]})]
        chunks += [chunk({"tool_calls": [fragment]}) for fragment in later]
        chunks.append(chunk({}, "stop" if self.broken("stream-call-finish-stop") else "tool_calls"))
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return _http(200, "text/event-stream", body.encode())

    def _chunks(self, request: dict[str, Any], text: str) -> list[dict[str, Any]]:
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        tail = {"usage": None} if usage or self.broken("usage-always") else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
                    "model": request["model"], **tail,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        chunks = [] if self.broken("no-role-chunk") else [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": word}) for word in re.findall(r"\S+\s*", text)]
        chunks.append(chunk({}, None if self.broken("no-finish-reason") else "stop"))
        if self.broken("finish-reason-early"):
            chunks[-2]["choices"][0]["finish_reason"], chunks[-1]["choices"][0]["finish_reason"] = "stop", None
        if usage and not self.broken("missing-usage"):
            chunks.append({**chunk({}), "choices": [], "usage": USAGE})
        if self.broken("chunk-ids-differ"):
            chunks[-1]["id"] = "chatcmpl-other"
        if self.broken("chunk-bad-object"):
            chunks[0]["object"] = "chat.completion"
        return chunks

    def _stream(self, request: dict[str, Any], text: str, headers: dict[str, str] | None = None,
                keyed: bool = False) -> bytes:
        events = [f"data: {json.dumps(c)}\n\n" for c in self._chunks(request, text)]
        if self.broken("not-data-lines"):
            events = ["event: chunk\n" + e for e in events]
        if not self.broken("missing-done"):
            events.append("data: [DONE]\n" if self.broken("done-without-blank-line") else "data: [DONE]\n\n")
        if keyed:       # ids <completion id>:<seq>, seq = characters of text so far; resumable
            events = self._with_ids(events, (headers or {}).get("last-event-id"))
        if self.broken("bytes-after-done"):
            events.append(": late comment\n\n")
        if self.broken("stream-hangs"):
            events = events[:1]
        chunks = [e.encode() for e in events]
        body = b"".join(b"%x\r\n%b\r\n" % (len(c) + self.broken("bad-chunked"), c) for c in chunks)
        if not self.broken("stream-hangs"):
            body += b"0\r\n\r\n" + (b"HTTP/1.1 200 OK\r\n\r\n" if self.broken("bytes-after-response") else b"")
        content_type = "application/json" if self.broken("stream-content-type-json") else "text/event-stream"
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n"
                "Connection: close\r\n\r\n")
        return head.encode() + body

    def _with_ids(self, events: list[str], last: str | None) -> list[str]:
        out, seq = [], 0
        for event in events:
            chunk = json.loads(event[6:]) if event != "data: [DONE]\n\n" else {"choices": [{"delta": {}}]}
            seq += len((chunk["choices"][0]["delta"].get("content") or "") if chunk.get("choices") else "") or \
                (0 if chunk.get("choices") and "role" in chunk["choices"][0]["delta"] else 1)
            out.append((0 if self.broken("event-ids-not-growing") else seq, f"id: chatcmpl-fake:"
                        f"{0 if self.broken('event-ids-not-growing') else seq}\n" + event))
        after = int(last.rpartition(":")[2]) if last is not None and not self.broken("resume-from-start") else -1
        return [event for seq, event in out if seq > after]

    # -- the WebSocket control protocol ------------------------------------------------

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         headers: dict[str, str]) -> None:
        accept = "d3Jvbmc=" if self.broken("ws-bad-accept") else wshandshake.accept_key(headers["sec-websocket-key"])
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: %b\r\n\r\n" % accept.encode())
        ws = _FakeWebSocket(reader, writer)
        frame = await ws.recv()
        if frame is None or not await self._ws_connect(ws, frame):
            return
        while (frame := await ws.recv()) is not None:
            if frame["method"] == "agent":
                self._ws_agent(ws, frame)
            else:
                ws.send({"type": "res", "id": frame["id"], "ok": True, "payload": {}})

    async def _ws_connect(self, ws: _FakeWebSocket, frame: dict[str, Any]) -> bool:
        refuse = {"type": "res", "id": frame["id"], "ok": False,
                  "error": {"code": "INVALID_REQUEST", "message": "no"}}
        if frame["method"] != "connect":
            if self.broken("ws-no-connect-gate"):
                ws.send({"type": "res", "id": frame["id"], "ok": True, "payload": {"status": "ok"}})
                return True
            ws.send(refuse)
            ws.close(1008)
            return False
        token = (frame["params"].get("auth") or {}).get("token")
        if self.token is not None and token != self.token and not self.broken("ws-wrong-token-accepted"):
            ws.send(refuse)
            ws.close(1000 if self.broken("ws-auth-close-1000") else 1008)
            return False
        hello = {"type": "hello-ok", "protocol": 3, "server": {"version": "fake", "connId": "c1"},
                 "features": {"methods": ["agent", "health"], "events": ["agent", "tick"]},
                 "snapshot": {"status": "ok"}, "policy": {"maxPayload": 1 << 20, "tickIntervalMs": 30000}}
        if self.broken("ws-hello-missing-policy"):
            del hello["policy"]
        ws.send({"type": "res", "id": frame["id"], "ok": True, "payload": hello})
        return True

    def _ws_agent(self, ws: _FakeWebSocket, frame: dict[str, Any]) -> None:
        text = f"Echo (turn 1): {frame['params']['message']}"
        if not self.broken("ws-no-ack"):
            ws.send({"type": "res", "id": frame["id"], "ok": True, "payload": {"runId": "r1", "status": "accepted"}})
        base = {"runId": "r1"}
        ws.event({**base, "seq": 1, "stream": "lifecycle", "data": {"phase": "start"}})
        so_far = ""
        for seq, word in enumerate(re.findall(r"\S+\s*", text), 2):
            so_far += word
            ws.event({**base, "seq": seq, "stream": "assistant", "data": {"delta": word, "text": so_far}})
        if not self.broken("ws-no-lifecycle-end"):
            ws.event({**base, "seq": 99, "stream": "lifecycle", "data": {"phase": "end"}})
        final_text = text + "!" if self.broken("ws-final-text-wrong") else text
        ws.send({"type": "res", "id": frame["id"], "ok": True,
                 "payload": {"runId": "r1", "status": "ok", "text": final_text, "usage": USAGE}})


def _asked_call(request: dict[str, Any]) -> tuple[str, str] | None:
    """(name, arguments) of echo's ``/call NAME {json}`` when the request offers that tool."""
    last = request["messages"][-1]
    offered = {t["function"]["name"] for t in request.get("tools") or []}
    match = re.fullmatch(r"/call (\S+) (\{.*\})", last["content"]) if last["role"] == "user" else None
    return (match.group(1), match.group(2)) if match and match.group(1) in offered else None


# (fault, the check that must fail, its exact reason)
BROKEN: tuple[tuple[str, str, str], ...] = (
    ("endpoint-disabled", "endpoint.enabled",
     "POST /v1/chat/completions answered 404: the endpoint is disabled or absent"),
    ("missing-token-accepted", "auth.missing-token", "a request without Authorization answered 200, not 401"),
    ("no-www-authenticate", "auth.missing-token",
     "401 without WWW-Authenticate (RFC 9110 §15.5.2: the server MUST send it)"),
    ("wrong-token-accepted", "auth.wrong-token", "a request with a wrong token answered 200, not 401"),
    ("right-token-refused", "auth.right-token", "a request with the token answered 401, not 200"),
    ("scheme-case-sensitive", "auth.scheme-case",
     "Authorization: bearer <token> (lower-case scheme) answered 401, not 200"),
    ("shape-missing-created", "chat.shape",
     "the completion does not match OpenAI's CreateChatCompletionResponse: /created: required property is missing"),
    ("shape-text-plain", "chat.shape", "Content-Type is 'text/plain', not application/json"),
    ("stream-content-type-json", "stream.content-type", "Content-Type is 'application/json', not text/event-stream"),
    ("not-data-lines", "stream.data-lines", "event 0 has a 'event' line, not only data: (and id:) lines"),
    ("replay-other-usage", "idempotency.replay", "the replay's usage differs from the first answer's"),
    ("key-reused-accepted", "idempotency.key-reused", "another body under a used key answered 200, not 422"),
    ("event-ids-not-growing", "resume.event-ids", "event seqs do not grow"),
    ("resume-from-start", "resume.last-event-id",
     "POST with Last-Event-ID: the text before the cut and after it is not the whole reply"),
    ("no-events-endpoint", "resume.events-endpoint", "GET …/events answered 404, not 200"),
    ("bad-chunked", "stream.data-lines",
     "bad chunked framing: chunk data not followed by CRLF (RFC 9112 §7.1)"),
    ("chunk-bad-object", "stream.chunks",
     "chunk 0 does not match OpenAI's CreateChatCompletionStreamResponse: "
     "/object: 'chat.completion' is not one of ['chat.completion.chunk']"),
    ("chunk-ids-differ", "stream.chunks", "chunk 5 has another id than chunk 0"),
    ("no-role-chunk", "stream.role-first", "the first chunk's delta has role None, not 'assistant'"),
    ("no-finish-reason", "stream.finish-reason", "no chunk has a finish_reason"),
    ("finish-reason-early", "stream.finish-reason",
     "finish_reason is set on chunk 4, but chunk(s) with choices follow"),
    ("missing-done", "stream.done-last", "the stream does not end with data: [DONE]"),
    ("done-without-blank-line", "stream.done-last",
     "data: [DONE] is not followed by a blank line, so clients drop it (WHATWG HTML §9.2.6)"),
    ("bytes-after-done", "stream.after-done", "16 bytes follow data: [DONE] in the body"),
    ("bytes-after-response", "stream.after-done", "19 bytes follow the end of the response on the connection"),
    ("missing-usage", "stream.include-usage", "no usage chunk (choices [], usage set) right before data: [DONE]"),
    ("usage-always", "stream.include-usage", "without stream_options.include_usage a chunk has a usage field"),
    ("model-prefix-ignored", "agent.model-prefix",
     "a model naming an unknown agent answered 200: the agent id is not read"),
    ("agent-header-ignored", "agent.header",
     "x-equabot-agent-id naming an unknown agent answered 200: the agent id is not read"),
    ("stateful-by-default", "session.stateless",
     "two requests without user or session key answered turns 3 and 4: the second saw the first"),
    ("user-ignored", "session.user",
     "two requests with the same user answered turns 1 and 1: the session did not carry over"),
    ("session-key-ignored", "session.key-header",
     "two requests with the same session key answered turns 1 and 1: the session did not carry over"),
    ("bad-json-500", "errors.bad-json", "a body that is not JSON answered 500, not 400"),
    ("bad-json-detail", "errors.bad-json",
     "the 400 body is not an OpenAI error object: /error: required property is missing"),
    ("missing-messages-422", "errors.missing-messages", "a request without messages answered 422, not 400"),
    ("405-no-allow", "errors.wrong-method", "405 without an Allow header"),
    ("405-text-body", "errors.wrong-method",
     "the 405 body is not an OpenAI error object: Content-Type is 'text/html', not application/json"),
    ("unknown-path-plain", "errors.unknown-path",
     "the 404 body is not an OpenAI error object: Content-Type is 'text/plain', not application/json"),
    ("no-413", "errors.oversized-body", "a 22020096-byte body answered 400, not 413"),
    ("call-finish-stop", "tools.call", "finish_reason is 'stop', not 'tool_calls'"),
    ("call-content-empty", "tools.call", "message.content is '', not null for a reply of tool calls only"),
    ("call-id-repeated", "tools.stream", "a later fragment repeats the call's id, type or name"),
    ("stream-call-finish-stop", "tools.stream", "the stream's finish_reason is 'stop', not 'tool_calls'"),
    ("result-ignored", "tools.result",
     "the answer does not echo the tool result ('tool conformance_probe returned: 42 and counting')"),
    *BROKEN_RESPONSES,
    ("ws-bad-accept", "ws.handshake", "the WebSocket handshake failed: wrong Sec-WebSocket-Accept"),
    ("ws-no-connect-gate", "ws.connect-first",
     "a request before connect was not refused with ok:false and error {code, message}"),
    ("ws-hello-missing-policy", "ws.connect", "hello-ok has no valid policy.maxPayload"),
    ("ws-wrong-token-accepted", "ws.auth",
     "connect with a wrong token was not refused with ok:false and error {code, message}"),
    ("ws-auth-close-1000", "ws.auth", "after connect with a wrong token the connection closed with 1000, not 1008"),
    ("ws-no-ack", "ws.agent-ack", 'the first response to agent is not {runId, status: "accepted"}'),
    ("ws-no-lifecycle-end", "ws.agent-events", "the last agent event is not lifecycle {phase: end}"),
    ("ws-final-text-wrong", "ws.agent-final", "the final text is not the assistant deltas joined"),
)


def target(url: str, **flags: Any) -> Target:
    return Target.from_flags(url, **{"token": TOKEN, "timeout": 5.0, "ws": True, **flags})


def namespace(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    conformance.add_arguments(parser)
    return parser.parse_args(list(argv))


def outcomes(results: list[checks.Result]) -> dict[str, tuple[str, str]]:
    return {r.name: (r.status.value, r.reason) for r in results}


class AgainstFakeServerTest(unittest.IsolatedAsyncioTestCase):
    async def test_the_unbroken_fake_passes_every_check(self) -> None:
        async with FakeGateway() as fake:
            results, summary = await conformance.run(target(fake.url))
        self.assertEqual({r.name: r.status for r in results if r.status is not Status.PASS}, {})
        self.assertEqual((summary.passed, summary.failed, summary.skipped), (len(conformance.BATTERY), 0, 0))

    async def test_each_check_can_fail(self) -> None:
        for fault, name, reason in BROKEN:
            with self.subTest(fault=fault, check=name):
                async with FakeGateway((fault,)) as fake:
                    results, _ = await conformance.run(target(fake.url), only=[name])
                self.assertEqual(outcomes(results)[name], ("fail", reason))

    def test_the_table_covers_every_check(self) -> None:
        self.assertEqual({name for _, name, _ in BROKEN}, {c.name for c in conformance.BATTERY})

    def test_the_docs_list_every_check(self) -> None:
        docs = (ROOT / "docs" / "conformance.md").read_text(encoding="utf-8")
        for check in conformance.BATTERY:
            with self.subTest(check.name):
                self.assertIn(f"| `{check.name}` |", docs)

    async def test_a_failed_requirement_skips_what_depends_on_it(self) -> None:
        async with FakeGateway(("endpoint-disabled",)) as fake:
            results, summary = await conformance.run(target(fake.url, ws=False))
        got = outcomes(results)
        self.assertEqual(got["stream.done-last"], ("skip", "needs endpoint.enabled, auth.right-token to pass first"))
        self.assertEqual(got["errors.wrong-method"], ("skip", "needs endpoint.enabled to pass first"))
        self.assertEqual(got["ws.connect"], ("skip", "WebSocket checks run with --ws"))
        self.assertEqual(summary.names_failed, ["endpoint.enabled"])

    async def test_a_server_without_responses_skips_that_battery(self) -> None:
        async with FakeGateway(("responses-absent",)) as fake:
            results, summary = await conformance.run(target(fake.url, ws=False))
        got = outcomes(results)
        self.assertEqual(got["responses.enabled"],
                         ("skip", "POST /v1/responses answered 404: the server does not serve the Responses API"))
        self.assertEqual({got[c.name] for c in conformance.BATTERY if c.name.startswith("responses.")} - {
            got["responses.enabled"]}, {("skip", "needs responses.enabled to pass first")})
        self.assertEqual(summary.failed, 0)

    async def test_without_a_token_the_auth_checks_skip(self) -> None:
        async with FakeGateway(token=None) as fake:
            results, summary = await conformance.run(target(fake.url, token=None))
        skipped = {n: reason for n, (status, reason) in outcomes(results).items() if status == "skip"}
        self.assertEqual(skipped, {
            "auth.missing-token": "no --token given: the server is probed without credentials",
            "auth.wrong-token": "no --token given: the server is probed without credentials",
            "auth.scheme-case": "no --token given", "ws.auth": "no --token given"})
        self.assertEqual(summary.failed, 0)

    async def test_each_check_times_out_on_its_own(self) -> None:
        async with FakeGateway(("stream-hangs",)) as fake:
            started = time.monotonic()
            results, summary = await conformance.run(target(fake.url, timeout=0.3, ws=False))
            elapsed = time.monotonic() - started
        got = outcomes(results)
        self.assertEqual(got["stream.content-type"], ("fail", "timed out after 0.3 s"))
        self.assertEqual(got["stream.done-last"],
                         ("fail", "timed out after 0.3 s (while running the shared exchange 'stream')"))
        self.assertEqual(got["chat.shape"][0], "pass")
        self.assertEqual(got["errors.oversized-body"][0], "pass")
        self.assertEqual(summary.failed, 9)     # the streaming checks (a keyed stream too), and nothing else
        self.assertLess(elapsed, 5.0)           # one timeout, not one per streaming check

    async def test_an_unreachable_server_fails_the_first_check(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        results, summary = await conformance.run(target(f"http://127.0.0.1:{port}", ws=False))
        self.assertEqual(outcomes(results)["endpoint.enabled"],
                         ("fail", f"cannot connect to 127.0.0.1:{port}: Connection refused"))
        self.assertEqual(summary.passed, 0)

    async def test_header_prefix_changes_headers_and_model_prefix(self) -> None:
        t = target("http://127.0.0.1:1", header_prefix="x-openclaw", agent="beta")
        self.assertEqual((t.header("session-key"), t.model, t.brand),
                         ("x-openclaw-session-key", "openclaw:beta", "openclaw"))
        async with FakeGateway(brand="openclaw") as fake:
            right, _ = await conformance.run(target(fake.url, header_prefix="x-openclaw-", ws=False))
            wrong, _ = await conformance.run(target(fake.url, ws=False))
        self.assertEqual([r.name for r in right if r.status is Status.FAIL], [])
        # Probed with x-equabot-*, the x-openclaw-* headers and openclaw: models go unread.
        self.assertEqual([r.name for r in wrong if r.status is Status.FAIL],
                         ["agent.model-prefix", "agent.header", "session.key-header"])


class RunConformanceTest(unittest.TestCase):
    def run_against(self, fake_breaks: tuple[str, ...], *argv: str) -> tuple[int, str]:
        async def main() -> tuple[int, str]:
            async with FakeGateway(fake_breaks) as fake:
                out = io.StringIO()
                code = await asyncio.to_thread(conformance.run_conformance,
                                               namespace("--base-url", fake.url, "--token", TOKEN, *argv), out=out)
                return code, out.getvalue()
        return asyncio.run(main())

    def test_text_report_and_exit_code_zero(self) -> None:
        code, text = self.run_against((), "--timeout", "5")
        self.assertEqual(code, 0)
        self.assertIn("PASS  stream.done-last         exactly one data: [DONE], the last event\n"
                      '      tests: spec "Streaming (SSE)": "Stream ends with data: [DONE]"\n', text)
        self.assertIn("SKIP  ws.connect               WebSocket checks run with --ws\n", text)
        self.assertRegex(text, r"\n47 checks: 40 passed, 0 failed, 7 skipped in \d+\.\d\d s\n$")

    def test_json_report_and_exit_code_one(self) -> None:
        code, text = self.run_against(("missing-done",), "--json", "--ws")
        self.assertEqual(code, 1)
        report = json.loads(text)
        self.assertEqual(report["summary"]["failed"], 1)
        self.assertFalse(report["summary"]["ok"])
        [failed] = [c for c in report["checks"] if c["status"] == "fail"]
        self.assertEqual((failed["name"], failed["reason"]),
                         ("stream.done-last", "the stream does not end with data: [DONE]"))
        self.assertEqual(set(failed), {"name", "ref", "status", "reason", "evidence", "seconds"})
        self.assertTrue(failed["evidence"]["tail"].startswith("b'"))
        self.assertEqual(report["target"]["headerPrefix"], "x-equabot-")

    def test_bad_flags_exit_two(self) -> None:
        for argv, message in ((("--base-url", "ftp://x"), "--base-url must be an http:// or https:// URL, got 'ftp://x'"),
                              (("--base-url", "http://x", "--timeout", "0"),
                               "--timeout must be a positive number of seconds, got 0.0"),
                              (("--base-url", "http://x", "--header-prefix", "x_bad"),
                               "--header-prefix must be letters, digits and '-', got 'x_bad'")):
            with self.subTest(argv=argv):
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    code = conformance.run_conformance(namespace(*argv), out=io.StringIO())
                self.assertEqual((code, err.getvalue()), (2, f"equabot: conformance: {message}\n"))

    def test_flags(self) -> None:
        args = namespace("--base-url", "http://h:1")
        self.assertEqual((args.token, args.agent, args.ws, args.json, args.header_prefix, args.timeout),
                         (None, None, False, False, "x-equabot-", 30.0))


# (name, stream body, expected data of each complete event, the unfinished rest)
SSE_CASES: tuple[tuple[str, bytes, list[str | None], bytes], ...] = (
    ("LF", b"data: a\n\ndata: b\n\n", ["a", "b"], b""),
    ("CRLF and CR", b"data: a\r\n\r\ndata: b\r\r", ["a", "b"], b""),
    ("multi-line data", b"data: a\ndata: b\n\n", ["a\nb"], b""),
    ("no space after colon", b"data:a\n\n", ["a"], b""),
    ("comment only", b": keep-alive\n\ndata: a\n\n", [None, "a"], b""),
    ("unfinished event", b"data: a\n\ndata: [DONE]\n", ["a"], b"data: [DONE]\n"),
    ("blank lines between", b"\n\ndata: a\n\n\n", ["a"], b""),
)


class SSEReaderTest(unittest.TestCase):
    def test_events(self) -> None:
        for name, body, data, rest in SSE_CASES:
            with self.subTest(name):
                events, tail = sse_events(body)
                self.assertEqual(([e.data for e in events], tail), (data, rest))


def live_config() -> dict[str, Any]:
    data = base_config()
    data["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
    data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "beta"}]}
    return data


class AgainstLiveGatewayTest(unittest.TestCase):
    """The whole battery against a real equabot_gw: every check must pass."""

    def test_every_check_passes(self) -> None:
        with GatewayProcess(live_config()) as gw:
            for argv in (("--ws", "--agent", "beta", "--json"), ("--ws", "--json")):
                with self.subTest(argv=argv):
                    out = io.StringIO()
                    code = conformance.run_conformance(
                        namespace("--base-url", gw.url, "--token", TOKEN, "--timeout", "10", *argv), out=out)
                    report = json.loads(out.getvalue())
                    failed = {c["name"]: (c["reason"], c["evidence"]) for c in report["checks"]
                              if c["status"] != "pass"}
                    self.assertEqual(failed, {})
                    self.assertEqual((code, report["summary"]["passed"]), (0, len(conformance.BATTERY)))

    def test_a_disabled_endpoint_is_detected(self) -> None:
        data = base_config(http={"endpoints": {"chatCompletions": {"enabled": False}}})
        with GatewayProcess(data) as gw:
            out = io.StringIO()
            code = conformance.run_conformance(
                namespace("--base-url", gw.url, "--token", TOKEN, "--ws", "--json"), out=out)
        checks_by_status = collections.defaultdict(list)
        report = json.loads(out.getvalue())
        for c in report["checks"]:
            checks_by_status[c["status"]].append(c["name"])
        self.assertEqual(code, 1)
        self.assertEqual(report["checks"][0]["reason"],
                         "POST /v1/chat/completions answered 404: the endpoint is disabled or absent")
        self.assertEqual(checks_by_status["fail"], ["endpoint.enabled"])
        # The WebSocket protocol does not depend on the OpenAI endpoint.
        self.assertEqual(checks_by_status["pass"], [c.name for c in conformance.BATTERY if c.ws])


if __name__ == "__main__":
    unittest.main()
