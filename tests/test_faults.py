"""Upstream and disk faults, end to end: a clear error for the client, a transcript line that says why.

Upstream faults drive an in-process gateway whose agents use the
``openai-completions`` provider against ``FakeUpstream``, an asyncio server
written here that misbehaves on cue: connection refused, reset, garbage,
silence past ``timeoutSeconds`` (0.3 s), 400/401/403/429/500 answers. Each
fault runs before the first word (the client gets the mapped status) and,
where it can, after output began (a 200 stream that ends with an error event,
then ``[DONE]``); every run leaves ``user`` + ``error`` in its transcript.

Disk faults run a gateway subprocess, because we run as root and root ignores
file modes. Two faults that really fail ``write``/``open`` for root:

* ``RLIMIT_FSIZE`` lowered on the running gateway (``resource.prlimit``; only
  the soft limit, which any process may raise again): an append past it fails
  with EFBIG, even on the transcript fd the committer keeps open;
* a file where an agent's ``sessions`` directory should be: ENOTDIR.

The helpers at the top (``FakeUpstream``, ``chat``, ``sse_events``,
``stream_outcome``, ``transcript``, ``sessions_list``, ``eventually``,
``raise_nofile_limit``) are shared by test_load.py and test_crash.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import pathlib
import resource
import socket
import struct
import time
import unittest
from collections.abc import Awaitable, Callable
from typing import Any

from equabot_gw.agents import transcripts
from equabot_gw.agents.sessions import scoped_key
from equabot_gw.errors import error_type_for_status
from equabot_gw.gateway.client import ControlClient
from tests.support import (
    TOKEN, GatewayProcess, LiveGateway, base_config, error_of, running_gateway, split_responses,
)

API_KEY = "sk-fault-test-0123456789"
UPSTREAM_TIMEOUT = 0.3


# -- shared helpers ----------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


class FakeUpstream:
    """An OpenAI-compatible upstream on 127.0.0.1:0; ``handler(reader, writer, body)`` answers each request.

    ``open`` counts the connections open right now (the gateway's provider
    sockets), ``accepted`` every connection ever made.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.open = 0
        self.accepted = 0
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []      # every request body, in order
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.open += 1
        self.accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = json.loads(await reader.readexactly(length))
                self.requests += 1
                self.bodies.append(body)
                await self.handler(reader, writer, body)
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self.open -= 1
            self._tasks.discard(task)
            writer.transport.abort()


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def openai_chunk(text: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    return b"data: " + json.dumps({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
                                   "model": "gpt-test", "choices": [{"index": 0, "delta": delta,
                                                                     "finish_reason": finish}]}).encode() + b"\n\n"


async def send_stream(writer: asyncio.StreamWriter, words: list[str], *, gap: float = 0.0,
                      done: bool = True, reader: asyncio.StreamReader | None = None) -> None:
    """An event stream of ``words`` (one chunk each, ``gap`` seconds apart), then finish and [DONE].

    With ``reader``, the gaps watch for the client leaving, so that ``FakeUpstream.open``
    drops as soon as the gateway closes its end, not at the next word.
    """
    writer.write(SSE_HEAD)
    for word in words:
        writer.write(chunk(openai_chunk(word)))
        await writer.drain()
        if gap and reader is None:
            await asyncio.sleep(gap)
        elif gap:
            try:
                if not await asyncio.wait_for(reader.read(1), gap):
                    return                  # EOF: the client is gone
            except asyncio.TimeoutError:
                pass
    if done:
        writer.write(chunk(openai_chunk(finish="stop")) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()


def reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), not a FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def chat(port: int, message: str, *, stream: bool = False, model: str = "equabot",
               key: str | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """POST /v1/chat/completions on a fresh connection (``Connection: close``); status, headers, body."""
    body = json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": message}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            + (f"x-equabot-session-key: {key}\r\n" if key else "") + "\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + body)
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    [(status, headers, payload)] = split_responses(raw)
    return status, headers, payload


def sse_events(payload: bytes) -> list[Any]:
    """The data of each event of an OpenAI stream: parsed JSON objects, and "[DONE]" as is.

    Comment lines (keep-alives) are ignored wherever they are; a block of
    comments alone fails: the openai SDK dispatches every blank line once an
    event had an id, and cannot parse the empty event that makes.
    """
    text = payload.decode()
    if not text.endswith("\n\n"):
        raise AssertionError(f"stream does not end with a blank line: {text[-80:]!r}")
    events = []
    for block in text[:-2].split("\n\n"):
        block = "\n".join(line for line in block.split("\n") if not line.startswith(":"))
        if not block:
            raise AssertionError("a block of comments alone: an event without data to the openai SDK")
        if block.startswith("id: "):     # the event's id (resumable streams) comes first
            block = block.partition("\n")[2]
        if not block.startswith("data: "):
            raise AssertionError(f"not a data event: {block[:80]!r}")
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def stream_outcome(events: list[Any]) -> tuple[str, str | None, dict[str, Any] | None]:
    """(text, finish_reason, error) of a complete stream: role chunk first, one [DONE] last."""
    if not events or events[-1] != "[DONE]" or events.count("[DONE]") != 1:
        raise AssertionError(f"stream does not end with one [DONE]: {events[-3:]!r}")
    if events[0]["choices"][0]["delta"] != {"role": "assistant", "content": ""}:
        raise AssertionError(f"first chunk is not the role chunk: {events[0]!r}")
    text, finish, error = "", None, None
    for event in events[1:-1]:
        if "error" in event:
            if event is not events[-2]:
                raise AssertionError("an error event that is not the last before [DONE]")
            error = event["error"]
            continue
        choice = event["choices"][0]
        text += choice["delta"].get("content", "")
        if choice["finish_reason"] is not None:
            finish = choice["finish_reason"]
    return text, finish, error


def transcript_path(state_dir: pathlib.Path, agent: str, key: str) -> pathlib.Path:
    stem = transcripts.transcript_stem(scoped_key(agent, key))
    return state_dir / "agents" / agent / "sessions" / f"{stem}.jsonl"


def transcript(state_dir: pathlib.Path, agent: str, key: str) -> list[dict[str, Any]]:
    """Every line of a session's transcript, each parsed; fails on a torn or foreign line."""
    data = transcript_path(state_dir, agent, key).read_bytes()
    if not data.endswith(b"\n"):
        raise AssertionError(f"torn last line: {data[-80:]!r}")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


async def sessions_list(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The WS ``sessions.list`` answer of a gateway process: what its index says."""
    client = await ControlClient.open(gw.url, TOKEN)
    try:
        return (await client.request("sessions.list", {}))["sessions"]
    finally:
        await client.close()


async def eventually(probe: Callable[[], Awaitable[Any]], predicate: Callable[[Any], bool],
                     timeout: float) -> Any:
    """Poll ``await probe()`` until ``predicate(value)`` or ``timeout`` seconds; the last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if predicate(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


def raise_nofile_limit(needed: int = 0) -> None:
    """Raise this process's fd limit to its hard limit; skip the test if that is below ``needed``.

    A gateway subprocess started afterwards inherits the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise unittest.SkipTest(f"needs {needed} file descriptors, the hard limit is {hard}")


# -- upstream faults -----------------------------------------------------------------

PARTIAL = ["Half", " a", " reply"]


async def ok(reader, writer, body) -> None:
    await send_stream(writer, ["All", " good"])


async def reset_before(reader, writer, body) -> None:
    reset(writer)


async def reset_after(reader, writer, body) -> None:
    await send_stream(writer, PARTIAL, done=False)
    await asyncio.sleep(0.02)
    reset(writer)


async def garbage_before(reader, writer, body) -> None:
    writer.write(SSE_HEAD + chunk(b"data: {oops\n\n"))
    await reader.read()


async def garbage_after(reader, writer, body) -> None:
    await send_stream(writer, PARTIAL, done=False)
    writer.write(chunk(b"data: {oops\n\n"))
    await reader.read()


async def not_http(reader, writer, body) -> None:
    writer.write(b"SURPRISE\r\n\r\n")
    await reader.read()


async def stall_before(reader, writer, body) -> None:
    await reader.read()                 # never answers; returns when the gateway gives up


async def stall_after(reader, writer, body) -> None:
    await send_stream(writer, PARTIAL, done=False)
    await reader.read()


def answer(status: int, message: str, *headers: str) -> Handler:
    payload = json.dumps({"error": {"message": message, "type": "x", "code": None}}).encode()

    async def handler(reader, writer, body) -> None:
        extra = "".join(f"{h}\r\n" for h in headers)
        writer.write(f"HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(payload)}\r\n{extra}\r\n".encode() + payload)
        await writer.drain()
    return handler


# (name, handler, gateway status, detail in the message, Retry-After, output before the fault)
# Upstream statuses as clients get them: 400→400, 401/403→502, 429→429 + Retry-After, 5xx/garbage→502, timeout→504.
UPSTREAM_FAULTS = (
    ("refused", None, 502, "cannot connect: Connection refused", None, False),
    ("reset before output", reset_before, 502, "connection closed before the response was complete", None, False),
    ("reset mid-stream", reset_after, 502, "connection closed before the response was complete", None, True),
    ("garbage SSE before output", garbage_before, 502, "event stream data is not JSON", None, False),
    ("garbage SSE mid-stream", garbage_after, 502, "event stream data is not JSON", None, True),
    ("not HTTP", not_http, 502, "invalid HTTP response: malformed status line", None, False),
    ("stalled before output", stall_before, 504, f"no read progress within {UPSTREAM_TIMEOUT:g} s", None, False),
    ("stalled mid-stream", stall_after, 504, f"no read progress within {UPSTREAM_TIMEOUT:g} s", None, True),
    ("429", answer(429, "Rate limit reached for gpt-test", "Retry-After: 7"), 429,
     "upstream answered 429: Rate limit reached for gpt-test", "7", False),
    ("429 until a date", answer(429, "Slow down", "Retry-After: Wed, 21 Oct 2026 07:28:00 GMT"), 429,
     "upstream answered 429: Slow down", "Wed, 21 Oct 2026 07:28:00 GMT", False),
    ("429 with a bad Retry-After", answer(429, "Slow down", "Retry-After: soon"), 429,
     "upstream answered 429: Slow down", None, False),          # not passed on: neither seconds nor a date
    ("500", answer(500, "The server had an error while processing your request"), 502,
     "upstream answered 500: The server had an error while processing your request", None, False),
    ("503", answer(503, "overloaded"), 502, "upstream answered 503: overloaded", None, False),
    ("401", answer(401, "Incorrect API key provided"), 502,
     "upstream answered 401: Incorrect API key provided", None, False),
    ("401 naming the key", answer(401, f"Incorrect API key provided: {API_KEY}."), 502,
     "upstream answered 401: Incorrect API key provided: ***.", None, False),
    ("403", answer(403, "Country not supported"), 502, "upstream answered 403: Country not supported", None, False),
    ("400", answer(400, "Invalid 'messages': too long"), 400,
     "upstream answered 400: Invalid 'messages': too long", None, False),
)
HANDLERS = {name: handler for name, handler, *_ in UPSTREAM_FAULTS if handler is not None}


async def dispatch(reader, writer, body) -> None:
    """The fault is named by the user message: "<fault name>|<anything>"."""
    name = body["messages"][-1]["content"].split("|")[0]
    await HANDLERS.get(name, ok)(reader, writer, body)


def upstream_config(up: FakeUpstream, refused_port: int) -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"list": [{"id": "main", "default": True, "model": "up/gpt-test"},
                               {"id": "down", "model": "down/gpt-test"},
                               # The run's own timeout, with an upstream timeout far above it.
                               {"id": "late", "model": "patient/gpt-test", "timeoutSeconds": UPSTREAM_TIMEOUT},
                               {"id": "patient", "model": "patient/gpt-test"}]}
    provider = {"api": "openai-completions", "apiKey": API_KEY, "timeoutSeconds": UPSTREAM_TIMEOUT}
    data["models"] = {"providers": {
        "up": {**provider, "baseUrl": up.base_url},
        "down": {**provider, "baseUrl": f"http://127.0.0.1:{refused_port}/v1"},
        "patient": {**provider, "baseUrl": up.base_url, "timeoutSeconds": 30}}}
    return data


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class UpstreamFaultTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.up = await FakeUpstream(dispatch).__aenter__()
        self.addAsyncCleanup(self.up.__aexit__, None, None, None)
        cm = running_gateway(upstream_config(self.up, closed_port()))
        self.gw = await cm.__aenter__()
        self.addAsyncCleanup(cm.__aexit__, None, None, None)
        self.port = self.gw.server.port

    async def test_each_fault_gives_a_clear_error_and_a_transcript_entry(self) -> None:
        for name, _, status, detail, retry_after, after_output in UPSTREAM_FAULTS:
            agent, provider = ("down", "down") if name == "refused" else ("main", "up")
            message = f"{name}|please"
            for stream in (False, True):
                with self.subTest(name, stream=stream):
                    key = f"fault-{name.replace(' ', '-')}-{'stream' if stream else 'json'}"
                    started = time.monotonic()
                    got, headers, body = await chat(self.port, message, stream=stream,
                                                    model=f"equabot:{agent}", key=key)
                    self.assertLess(time.monotonic() - started, 3.0)
                    self.assertNotIn(API_KEY.encode(), body)
                    expected = f"provider '{provider}': {detail}"
                    if stream and after_output:
                        # The stream began: 200, the partial text, a final error event, then [DONE].
                        self.assertEqual(got, 200, body)
                        text, finish, error = stream_outcome(sse_events(body))
                        self.assertEqual((text, finish), ("".join(PARTIAL), None))
                        self.assertIsNotNone(error, "no error event")
                        self.assertEqual(set(error), {"message", "type", "param", "code"})
                        self.assertEqual((error["message"], error["type"]), (expected, "server_error"))
                        self.assertEqual(error["code"], "timeout" if status == 504 else "upstream")
                    else:
                        # Nothing was sent yet: a real status and an OpenAI error body.
                        self.assertEqual(got, status, body)
                        self.assertEqual(headers["content-type"], "application/json")
                        self.assertEqual(error_of(body)["message"], expected)
                        self.assertEqual(error_of(body)["type"], error_type_for_status(status))
                        self.assertEqual(headers.get("retry-after"), retry_after)
                    lines = transcript(self.gw.state_dir, agent, key)
                    self.assertEqual([line["type"] for line in lines], ["session", "user", "error"])
                    self.assertEqual(lines[1]["content"], message)
                    self.assertEqual(lines[2]["message"], expected)
                    self.assertEqual(lines[1]["runId"], lines[2]["runId"])
        # The gateway and its provider are fine afterwards, and no upstream socket is left
        # but the pooled idle ones.
        got, _, body = await chat(self.port, "ok|after all that", key="fault-after")
        self.assertEqual(got, 200, body)
        self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "All good")
        self.assertEqual(self.gw.runtime.active, {})
        self.assertEqual(await self.upstream_sockets_left(), 0)

    async def upstream_sockets_left(self) -> int:
        """Connections the fake upstream still has open beyond the providers' idle pools."""
        providers = self.gw.runtime.providers

        async def extra() -> int:
            return self.up.open - sum(providers[name]._client.idle_connections for name in ("up", "patient"))
        return await eventually(extra, lambda n: n == 0, 2.0)

    async def test_the_run_timeout_aborts_a_stalled_upstream(self) -> None:
        # agents.list[].timeoutSeconds (0.3 s) passes first: 504 before output, an error event after;
        # the transcript says "aborted" for "timeout", with the words that came.
        for name, partial in (("stalled before output", ""), ("stalled mid-stream", "".join(PARTIAL))):
            for stream in (False, True):
                with self.subTest(name, stream=stream):
                    key = f"late-{name.replace(' ', '-')}-{stream}"
                    started = time.monotonic()
                    got, headers, body = await chat(self.port, f"{name}|x", stream=stream,
                                                    model="equabot:late", key=key)
                    self.assertLess(time.monotonic() - started, 2.0)
                    message = f"run aborted: no reply within {UPSTREAM_TIMEOUT:g} s"
                    if stream and partial:
                        self.assertEqual(got, 200)
                        text, finish, error = stream_outcome(sse_events(body))
                        self.assertEqual((text, finish, error["message"]), (partial, None, message))
                    else:
                        self.assertEqual(got, 504, body)
                        self.assertEqual(error_of(body)["message"], message)
                    lines = transcript(self.gw.state_dir, "late", key)
                    self.assertEqual([line["type"] for line in lines], ["session", "user", "aborted"])
                    self.assertEqual((lines[2]["reason"], lines[2]["content"]), ("timeout", partial))
        self.assertEqual(await self.upstream_sockets_left(), 0)

    async def test_client_leaving_while_the_upstream_stalls_closes_the_upstream_connection(self) -> None:
        key = "leave-while-stalled"
        requests = self.up.requests
        body = json.dumps({"model": "equabot:patient", "stream": True,
                           "messages": [{"role": "user", "content": "stalled before output|x"}]}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     f"x-equabot-session-key: {key}\r\n\r\n".encode() + body)

        async def upstream_requests() -> int:
            return self.up.requests
        self.assertEqual(await eventually(upstream_requests, lambda n: n > requests, 2.0), requests + 1)
        writer.close()
        left_at = time.monotonic()
        self.assertEqual(await self.upstream_sockets_left(), 0)
        self.assertLess(time.monotonic() - left_at, 1.0)     # sanity bound; the provider tests hold 250 ms
        lines = transcript(self.gw.state_dir, "patient", key)
        self.assertEqual([(line["type"], line.get("reason")) for line in lines],
                         [("session", None), ("user", None), ("aborted", "client disconnected")])

    async def test_a_failed_turn_does_not_count_and_the_session_goes_on(self) -> None:
        key = "fault-then-ok"
        for message in ("ok|one", "500|two", "stalled mid-stream|three", "ok|four"):
            await chat(self.port, message, key=key, stream=True)
        lines = transcript(self.gw.state_dir, "main", key)
        self.assertEqual([line["type"] for line in lines],
                         ["session", "user", "assistant", "user", "error", "user", "error", "user", "assistant"])
        # The history sent upstream holds the finished turns only; failed ones are not counted.
        self.assertEqual(self.up.bodies[-1]["messages"], [
            {"role": "user", "content": "ok|one"}, {"role": "assistant", "content": "All good"},
            {"role": "user", "content": "ok|four"}])
        [info] = [i for i in self.gw.runtime.store.list_sessions("main") if i.key == f"agent:main:{key}"]
        self.assertEqual(info.turns, 2)


# -- disk faults -----------------------------------------------------------------------

def limit_file_size(gw: GatewayProcess, limit: int) -> None:
    """Set the gateway process's RLIMIT_FSIZE (bytes): a write past it fails with EFBIG, root or not.

    Only the soft limit: the hard one stays unlimited, so that the limit can be
    raised again (raising a hard limit needs CAP_SYS_RESOURCE, which containers drop).
    Python ignores SIGXFSZ, so the gateway sees the error instead of dying.
    """
    assert gw.proc is not None
    _, hard = resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))


def echo_config() -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "fresh"}]}
    return data


class DiskFaultTest(LiveGateway, unittest.TestCase):
    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return echo_config()

    def post(self, message: str, key: str | None, *, stream: bool = False,
             model: str = "equabot") -> tuple[int, bytes]:
        """A completion on session ``key`` (None: stateless, into the agent's journal)."""
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=10)
        c.request("POST", "/v1/chat/completions", headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
            **({"x-equabot-session-key": key} if key else {})},
            body=json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": message}]}))
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def reply(self, message: str, key: str | None, **kw: Any) -> str:
        status, data = self.post(message, key, **kw)
        self.assertEqual(status, 200, data)
        return json.loads(data)["choices"][0]["message"]["content"]

    def test_append_past_the_file_size_limit_is_503_and_earlier_turns_stay(self) -> None:
        key = "disk-efbig"
        self.assertEqual(self.reply("first turn", key), "Echo (turn 1): first turn")
        path = transcript_path(self.gw.state_dir, "main", key)
        before = path.read_bytes()
        big = "x" * 40_000          # user + assistant lines: 80 KB, over the 64 KiB limit
        limit_file_size(self.gw, 64 * 1024)
        try:
            status, data = self.post(big, key)
            self.assertEqual(status, 503, data[:200])
            error = error_of(data)
            self.assertEqual(error["message"], "transcript could not be written: write of a session "
                                               "transcript failed: EFBIG (File too large)")
            self.assertEqual((error["type"], error["code"]), ("server_error", "storage"))
            self.assertNotIn(str(self.gw.state_dir).encode(), data)
            # Streaming: the words went out, but the turn is never reported done.
            status, data = self.post(big, key, stream=True)
            self.assertEqual(status, 200)
            text, finish, error = stream_outcome(sse_events(data))
            self.assertEqual((text, finish), (f"Echo (turn 2): {big}", None))
            self.assertIn("EFBIG (File too large)", error["message"])
            self.assertEqual(path.read_bytes(), before)      # rolled back: nothing half-written
            # The gateway keeps serving: another session, and this one with a small turn.
            self.assertEqual(self.reply("elsewhere", "disk-other"), "Echo (turn 1): elsewhere")
            self.assertEqual(self.reply("small", key), "Echo (turn 2): small")
            # The stateless journal, shared by every stateless run, is rolled back the same way.
            self.assertEqual(self.reply("stateless one", None), "Echo (turn 1): stateless one")
            journal = max((self.gw.state_dir / "agents" / "main" / "journal").glob("*.jsonl"))  # today's
            journal_before = journal.read_bytes()
            self.assertEqual(self.post(big, None)[0], 503)
            self.assertEqual(journal.read_bytes(), journal_before)
            self.assertEqual(self.reply("stateless two", None), "Echo (turn 1): stateless two")
            journal_lines = [json.loads(line) for line in journal.read_bytes().splitlines()]
            self.assertEqual([(l["type"], l["content"]) for l in journal_lines[-2:]],
                             [("user", "stateless two"), ("assistant", "Echo (turn 1): stateless two")])
        finally:
            limit_file_size(self.gw, resource.RLIM_INFINITY)
        # Fault removed: the same session takes the big turn, as turn 3.
        self.assertEqual(self.reply(big, key), f"Echo (turn 3): {big}")
        lines = transcript(self.gw.state_dir, "main", key)
        self.assertEqual([(l["type"], l.get("content", "")[:12]) for l in lines[1:]],
                         [("user", "first turn"), ("assistant", "Echo (turn 1"), ("user", "small"),
                          ("assistant", "Echo (turn 2"), ("user", "x" * 12), ("assistant", "Echo (turn 3")])
        self.assertEqual(path.read_bytes()[:len(before)], before)

    def test_a_file_where_the_sessions_directory_belongs_is_503(self) -> None:
        agent_dir = self.gw.state_dir / "agents" / "fresh"
        agent_dir.mkdir(parents=True, exist_ok=True)
        blocker = agent_dir / "sessions"
        blocker.write_text("not a directory")
        try:
            status, data = self.post("hello", "disk-enotdir", model="equabot:fresh")
            self.assertEqual(status, 503, data)
            self.assertEqual(error_of(data)["message"], "transcript could not be written: open of a session "
                                                        "transcript failed: ENOTDIR (a file is where a "
                                                        "directory belongs)")
            self.assertNotIn(str(self.gw.state_dir).encode(), data)
            self.assertEqual(self.reply("meanwhile", "disk-enotdir-other"), "Echo (turn 1): meanwhile")
        finally:
            blocker.unlink()
        self.assertEqual(self.reply("hello again", "disk-enotdir", model="equabot:fresh"),
                         "Echo (turn 1): hello again")
        lines = transcript(self.gw.state_dir, "fresh", "disk-enotdir")
        self.assertEqual([line["type"] for line in lines], ["session", "user", "assistant"])


class DiskFaultRestartTest(unittest.TestCase):
    def test_a_failed_first_turn_leaves_no_session_behind_after_a_restart(self) -> None:
        key = "first-turn-fails"
        first = GatewayProcess(echo_config()).start()
        try:
            limit_file_size(first, 64 * 1024)
            status, _, data = asyncio.run(chat(first.port, "x" * 40_000, key=key))
            self.assertEqual(status, 503, data[:200])
            limit_file_size(first, resource.RLIM_INFINITY)
            self.assertEqual(first.stop(), 0)
            path = transcript_path(first.state_dir, "main", key)
            self.assertEqual(path.read_bytes(), b"")        # created by the failed append, then cut back
            second = GatewayProcess(echo_config())
            second.state_dir = first.state_dir
            with second:
                listed = asyncio.run(sessions_list(second))
                status, _, data = asyncio.run(chat(second.port, "hello", key=key))
            self.assertEqual((status, json.loads(data)["choices"][0]["message"]["content"]),
                             (200, "Echo (turn 1): hello"))
            # The turn never happened: no session to list, and the next turn starts it, header first.
            self.assertEqual(listed, [])
            self.assertEqual([line["type"] for line in transcript(first.state_dir, "main", key)],
                             ["session", "user", "assistant"])
        finally:
            first.stop()
            first.tmp.cleanup()


if __name__ == "__main__":
    unittest.main()
