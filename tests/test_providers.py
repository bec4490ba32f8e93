"""Providers: echo's exact replies, OpenAI and Anthropic against fake upstreams and
documented streams (tests/data/providers, DECISIONS 32), and the command provider."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
import textwrap
import time
import unittest
from collections.abc import Awaitable, Callable
from pathlib import Path

from equabot_gw.providers import (
    EventStreamDecoder, Provider, ServerSentEvent, create_provider,
)
from equabot_gw.providers.anthropic import AnthropicProvider
from equabot_gw.providers.command import CommandProvider
from equabot_gw.providers.echo import EchoProvider
from equabot_gw.providers.openai import OpenAIProvider
from equabot_gw.agents.types import (
    OPTION_NAMES, Finish, GenerationOptions, Message, ProviderCall, TextDelta, Usage,
)
from equabot_gw.config import ProviderConfig
from equabot_gw.errors import (
    ApiError, ConfigError, UpstreamError, UpstreamRejected, UpstreamTimeout, http_status,
)

DATA = Path(__file__).parent / "data" / "providers"
API_KEY = "sk-test-0123456789abcdef"


def call(text: str = "hello", *, turn: int = 1, system: str = "", history: tuple[Message, ...] = (),
         model: str = "test-model", **options) -> ProviderCall:
    return ProviderCall(model=model, system=system, messages=(*history, Message("user", text)),
                        turn=turn, options=GenerationOptions(**options))


class Reply:
    """What a stream yielded, checked against the contract: deltas*, Usage?, Finish."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.deltas = [e.text for e in events if isinstance(e, TextDelta)]
        self.text = "".join(self.deltas)
        usages = [e for e in events if isinstance(e, Usage)]
        self.usage = usages[0] if usages else None
        finishes = [e for e in events if isinstance(e, Finish)]
        assert len(usages) <= 1 and len(finishes) == 1 and events[-1] is finishes[0], events
        assert all(isinstance(e, TextDelta) for e in events[:len(self.deltas)]), events
        self.finish = finishes[0].reason


async def collect(provider: Provider, c: ProviderCall) -> Reply:
    return Reply([event async for event in provider.stream(c)])


# -- echo ---------------------------------------------------------------------------

# (name, user text, turn, expected deltas)
ECHO_REPLIES = (
    ("one word", "hello", 1, ["Echo", " (turn", " 1):", " hello"]),
    ("two words", "hello world", 3, ["Echo", " (turn", " 3):", " hello", " world"]),
    ("inner and trailing spaces", "  a \t b  ", 2, ["Echo", " (turn", " 2):", "   a", " \t b  "]),
    ("empty text", "", 7, ["Echo", " (turn", " 7): "]),
    ("whitespace only", " \n ", 1, ["Echo", " (turn", " 1):  \n "]),
    ("newlines", "line one\nline two\n", 1,
     ["Echo", " (turn", " 1):", " line", " one", "\nline", " two\n"]),
    ("non-ASCII", "café €5", 12, ["Echo", " (turn", " 12):", " café", " €5"]),
)


class EchoTests(unittest.IsolatedAsyncioTestCase):
    def setUp(self) -> None:
        self.echo = create_provider("echo", None)

    async def test_replies_word_by_word(self) -> None:
        for name, text, turn, deltas in ECHO_REPLIES:
            with self.subTest(name):
                reply = await collect(self.echo, call(text, turn=turn))
                self.assertEqual(reply.text, f"Echo (turn {turn}): {text}")
                self.assertEqual(reply.deltas, deltas)
                self.assertEqual(reply.finish, "stop")

    async def test_usage_counts_words(self) -> None:
        c = call("three little words", system="be brief",
                 history=(Message("user", "hi there"), Message("assistant", "Echo (turn 1): hi there")))
        reply = await collect(self.echo, c)
        self.assertEqual(reply.usage, Usage(2 + 2 + 5 + 3, 6))

    async def test_max_tokens_truncates_with_length(self) -> None:
        reply = await collect(self.echo, call("a b c d", max_tokens=5))
        self.assertEqual(reply.deltas, ["Echo", " (turn", " 1):", " a", " b"])
        self.assertEqual((reply.finish, reply.usage.completion_tokens), ("length", 5))
        exact = await collect(self.echo, call("a b", max_tokens=5))
        self.assertEqual((exact.text, exact.finish), ("Echo (turn 1): a b", "stop"))

    async def test_stop_cuts_before_the_earliest_stop_string(self) -> None:
        reply = await collect(self.echo, call("one two three", stop=("three", "two")))
        self.assertEqual((reply.text, reply.finish), ("Echo (turn 1): one ", "stop"))
        self.assertEqual(reply.usage.completion_tokens, 4)
        none = await collect(self.echo, call("one", stop=("zzz",)))
        self.assertEqual(none.text, "Echo (turn 1): one")

    async def test_sampling_options_change_nothing(self) -> None:
        plain = await collect(self.echo, call("same"))
        tuned = await collect(self.echo, call("same", temperature=1.5, top_p=0.1, seed=7, presence_penalty=1.0,
                                              frequency_penalty=-1.0, logit_bias=(("42", 5),), top_k=3,
                                              min_p=0.2, repetition_penalty=1.1))
        self.assertEqual(plain.events, tuned.events)
        # An echo is not JSON: structured output is the one option it refuses.
        self.assertEqual(EchoProvider.supported_options, frozenset(OPTION_NAMES) - {"response_format"})

    async def test_without_delay_the_stream_never_suspends(self) -> None:
        # Each __anext__ finishes on its first step: no event-loop round trip per delta.
        stream = self.echo.stream(call("a b c"))
        events = []
        while True:
            step = stream.__anext__()
            try:
                step.send(None)
            except StopIteration as done:
                events.append(done.value)
            except StopAsyncIteration:
                break
            else:
                self.fail("the echo stream suspended")
        self.assertEqual(len(events), 3 + 3 + 2)

    async def test_delay_sleeps_before_each_delta(self) -> None:
        echo = create_provider("slow", ProviderConfig(api="echo", delay_ms=20))
        started = time.monotonic()
        reply = await collect(echo, call("x y"))
        self.assertEqual(len(reply.deltas), 5)
        self.assertGreaterEqual(time.monotonic() - started, 5 * 0.02 * 0.9)

    async def test_cancellation_stops_a_slow_echo(self) -> None:
        echo = create_provider("slow", ProviderConfig(api="echo", delay_ms=10_000))
        task = asyncio.create_task(collect(echo, call()))
        await asyncio.sleep(0.02)
        started = time.monotonic()
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        self.assertLess(time.monotonic() - started, 0.1)

    async def test_models(self) -> None:
        self.echo.check_model("echo")
        self.echo.check_model("anything-at-all")         # no list: any name
        listed = create_provider("e2", ProviderConfig(api="echo", models=("echo", "echo-2")))
        listed.check_model("echo-2")
        with self.assertRaises(ApiError) as cm:
            listed.check_model("gpt-9")
        error = cm.exception
        self.assertEqual((error.status, error.code, error.param), (400, "model_not_found", "model"))
        self.assertEqual(error.message, "model 'gpt-9' is not offered by provider 'e2'")


class RegistryTests(unittest.TestCase):
    def test_create_by_api(self) -> None:
        configs = (
            ("echo", ProviderConfig(api="echo"), EchoProvider),
            ("oa", ProviderConfig(api="openai-completions", base_url="http://127.0.0.1:1/v1"), OpenAIProvider),
            ("an", ProviderConfig(api="anthropic-messages"), AnthropicProvider),
            ("cmd", ProviderConfig(api="command", command=("true",)), CommandProvider),
        )
        for name, config, cls in configs:
            with self.subTest(name):
                provider = create_provider(name, config)
                self.assertIsInstance(provider, cls)
                self.assertEqual(provider.api, config.api)
                self.assertLessEqual(provider.supported_options, frozenset(OPTION_NAMES))
        self.assertIsInstance(create_provider("echo", None), EchoProvider)

    def test_supported_options(self) -> None:
        self.assertEqual(OpenAIProvider.supported_options, frozenset(OPTION_NAMES))
        self.assertEqual(AnthropicProvider.supported_options,
                         frozenset({"max_tokens", "temperature", "top_p", "stop", "top_k", "tools", "tool_choice",
                                    "parallel_tool_calls", "reasoning_effort"}))
        self.assertEqual(CommandProvider.supported_options, frozenset())

    def test_configuration_errors(self) -> None:
        cases = (
            ("unconfigured", None, "models.providers.nope"),
            ("command without argv", ProviderConfig(api="command"), "models.providers.nope.command"),
            ("openai without config", None, "models.providers.nope"),
            ("bad base URL", ProviderConfig(api="openai-completions", base_url="ftp://x"),
             "models.providers.nope.baseUrl"),
            ("header with CR LF", ProviderConfig(api="openai-completions",
                                                 headers=(("x-key", "secret-value\r\nx: y"),)),
             "models.providers.nope.headers.x-key"),
        )
        for name, config, path in cases:
            with self.subTest(name), self.assertRaises(ConfigError) as cm:
                create_provider("nope", config)
            self.assertEqual(cm.exception.path, path)
            self.assertNotIn("secret-value", str(cm.exception))


# -- event streams ------------------------------------------------------------------

# WHATWG HTML §9.2.6 examples: (name, stream, expected (type, data, id) events).
SSE_VECTORS = (
    ("multi-line data", "data: YHOO\ndata: +2\ndata: 10\n\n", [("message", "YHOO\n+2\n10", "")]),
    ("comments, ids, spaces",
     ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
     [("message", "first event", "1"), ("message", "second event", ""),
      ("message", " third event", "")]),
    ("empty data, unfinished last event", "data\n\ndata\ndata\n\ndata:",
     [("message", "", ""), ("message", "\n", "")]),
    ("space after colon is optional", "data:test\n\ndata: test\n\n",
     [("message", "test", ""), ("message", "test", "")]),
    ("named events, BOM, CRLF", "\ufeffevent: ping\r\ndata: {}\r\n\r\n: c\r\nevent: x\r\n\r\n",
     [("ping", "{}", "")]),
    ("CR line ends", "data: a\rdata: b\r\rdata: c\r\r", [("message", "a\nb", ""), ("message", "c", "")]),
    ("field without colon, unknown field", "data\nretry: 10\nfoo: bar\n\n", [("message", "", "")]),
    ("names that only start like data", "datum: x\ndata:: y\ndata:\ndata-x: z\n\n",
     [("message", ": y\n", "")]),
)


class EventStreamDecoderTests(unittest.TestCase):
    def decode(self, raw: bytes, step: int | None) -> list[tuple[str, str, str]]:
        decoder = EventStreamDecoder()
        pieces = [raw] if step is None else [raw[i:i + step] for i in range(0, len(raw), step)]
        return [(e.type, e.data, e.id) for piece in pieces for e in decoder.feed(piece)]

    def test_spec_vectors_whole_and_byte_by_byte(self) -> None:
        for name, text, expected in SSE_VECTORS:
            raw = text.encode()
            for step in (None, 1, 2, 3):
                with self.subTest(name, step=step):
                    self.assertEqual(self.decode(raw, step), expected)
            with self.subTest(name, trailing="unfinished event"):
                self.assertEqual(self.decode(raw + b"data: never dispatched", None), expected)

    def test_utf8_split_across_reads(self) -> None:
        raw = "data: café €\n\n".encode()
        self.assertEqual(self.decode(raw, 1), [("message", "café €", "")])

    def test_pending_chars(self) -> None:
        decoder = EventStreamDecoder()
        decoder.feed(b"data: 12345\ndata: 6")
        self.assertEqual(decoder.pending_chars, len("12345\n") + len("data: 6"))
        self.assertEqual(decoder.feed(b"\n\n"), [ServerSentEvent("message", "12345\n6")])
        self.assertEqual(decoder.pending_chars, 0)


# -- fake upstreams -----------------------------------------------------------------

class Request:
    """A request as the fake upstream received it."""

    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, _ = lines[0].split(" ")
        self.headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self.json = json.loads(body) if body else None


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeUpstream:
    """An HTTP/1.1 server on 127.0.0.1:0 whose handler answers each request by hand."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.connections = 0
        self.closed = asyncio.Event()
        self.closed_at = 0.0
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._tasks.add(asyncio.current_task())
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = Request(head, await reader.readexactly(length))
                self.requests.append(request)
                await self.handler(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.closed_at = time.monotonic()
            self.closed.set()
            writer.transport.abort()


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def replay(raw: bytes, *, step: int | None = None, end: bool = True) -> Handler:
    """A handler that streams ``raw`` as an event stream, in slices of ``step`` bytes."""
    async def handler(request, reader, writer):
        writer.write(SSE_HEAD)
        pieces = [raw] if step is None else [raw[i:i + step] for i in range(0, len(raw), step)]
        for piece in pieces:
            writer.write(chunk(piece))
            await writer.drain()
        if end:
            writer.write(b"0\r\n\r\n")
        else:
            await reader.read()         # hold the stream open until the client leaves
    return handler


def answer(status: int, body: bytes, *headers: str) -> Handler:
    async def handler(request, reader, writer):
        extra = "".join(f"{h}\r\n" for h in headers)
        writer.write(f"HTTP/1.1 {status} Status\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body)
    return handler


def stall_after(raw: bytes) -> Handler:
    async def handler(request, reader, writer):
        writer.write(SSE_HEAD + chunk(raw))
        await reader.read()
    return handler


def reset_after(raw: bytes) -> Handler:
    async def handler(request, reader, writer):
        writer.write(SSE_HEAD + chunk(raw))
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
        writer.transport.abort()
    return handler


def sse(*objects: object) -> bytes:
    return b"".join(b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n"
                    for o in objects)


def line_ends(raw: bytes, end: bytes) -> bytes:
    return raw.replace(b"\n", end)


# (fixture, api, expected text, usage, finish)
REPLAYS = (
    ("openai-chat-stream.sse", "openai-completions", "Hello! How can I assist you today?", None, "stop"),
    ("openai-chat-stream-include-usage.sse", "openai-completions",
     "Hello! How can I assist you today?", Usage(19, 10, cached_tokens=0, reasoning_tokens=0), "stop"),
    ("anthropic-messages-stream.sse", "anthropic-messages", "Hello!", Usage(25, 15), "stop"),
    # A refusal is no text (its own events: tests/test_providers_content.py).
    ("openai-chat-stream-refusal.sse", "openai-completions", "", Usage(81, 11), "stop"),
    ("openai-chat-stream-annotations.sse", "openai-completions", "The Equabot docs are at equabot.example.",
     None, "stop"),
)


class HTTPProviderCase(unittest.IsolatedAsyncioTestCase):
    api = "openai-completions"
    base_path = "/v1"

    def provider(self, up: FakeUpstream, **settings) -> Provider:
        config = {"api": self.api, "base_url": f"http://127.0.0.1:{up.port}{self.base_path}",
                  "api_key": API_KEY, "timeout": 1.0, **settings}
        provider = create_provider("up", ProviderConfig(**config))
        self.addAsyncCleanup(provider.aclose)
        return provider

    async def fails(self, handler: Handler, error: type[UpstreamError], c: ProviderCall | None = None,
                    **settings) -> UpstreamError:
        async with FakeUpstream(handler) as up:
            with self.assertRaises(error) as cm:
                await collect(self.provider(up, **settings), c or call())
        self.assertNotIn(API_KEY, str(cm.exception))
        return cm.exception


class ReplayTests(HTTPProviderCase):
    async def test_documented_streams(self) -> None:
        for fixture, api, text, usage, finish in REPLAYS:
            raw = (DATA / fixture).read_bytes()
            variants = (("LF", raw, None), ("CRLF", line_ends(raw, b"\r\n"), None),
                        ("CR", line_ends(raw, b"\r"), None), ("slices of 7", raw, 7))
            for name, data, step in variants:
                with self.subTest(fixture, variant=name):
                    self.api = api
                    self.base_path = "/v1" if api == "openai-completions" else ""
                    async with FakeUpstream(replay(data, step=step)) as up:
                        reply = await collect(self.provider(up), call())
                    self.assertEqual((reply.text, reply.usage, reply.finish), (text, usage, finish))

    async def test_anthropic_error_event_mid_stream(self) -> None:
        self.api, self.base_path = "anthropic-messages", ""
        raw = (DATA / "anthropic-messages-stream-error.sse").read_bytes()
        deltas = []
        async with FakeUpstream(replay(raw)) as up:
            with self.assertRaises(UpstreamRejected) as cm:
                async for event in self.provider(up).stream(call()):
                    deltas.append(event)
        self.assertEqual(deltas, [TextDelta("Hello")])
        self.assertEqual((cm.exception.upstream_status, str(cm.exception)),
                         (529, "provider 'up': upstream answered 529: Overloaded"))
        self.assertEqual(http_status(cm.exception), 502)


# -- openai ------------------------------------------------------------------------

def openai_chunk(content: str | None = None, finish: str | None = None, **extra) -> dict:
    delta = {} if content is None else {"content": content}
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


OPENAI_STREAM = sse(openai_chunk("Hi"), openai_chunk(" there", "length"),
                    {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                         "total_tokens": 5}}, b"[DONE]")

# (name, status, body, headers, expected upstream_status, gateway status, message, retry_after)
OPENAI_REJECTIONS = (
    ("400 with the upstream message", 400,
     b'{"error": {"message": "Invalid value for \'temperature\'", "type": "invalid_request_error"}}',
     ("content-type: application/json",), 400, "Invalid value for 'temperature'", None),
    ("401 is the gateway's credentials", 401,
     b'{"error": {"message": "Incorrect API key provided: ' + API_KEY.encode() + b'"}}',
     (), 502, "Incorrect API key provided: ***", None),
    ("403", 403, b'{"error": {"message": "Project does not have access"}}', (), 502,
     "Project does not have access", None),
    ("429 keeps Retry-After", 429, b'{"error": {"message": "Rate limit reached"}}',
     ("retry-after: 7",), 429, "Rate limit reached", "7"),
    ("500 HTML page", 500, b"<html><body>oops</body></html>", ("content-type: text/html",), 502,
     "500 Status", None),
    ("503 plain text", 503, b"upstream overloaded\n", ("content-type: text/plain",), 502,
     "upstream overloaded", None),
    ("garbage Retry-After is dropped", 429, b"{}", ("retry-after: in a while",), 429, "429 Status", None),
)


class OpenAITests(HTTPProviderCase):
    async def test_request(self) -> None:
        c = call("what now?", system="You are terse.", model="gpt-4o-mini",
                 history=(Message("assistant", "earlier"), Message("tool", '{"temp": 21}')),
                 max_tokens=50, temperature=0.5, top_p=0.9, stop=("END",), seed=42)
        async with FakeUpstream(replay(OPENAI_STREAM)) as up:
            await collect(self.provider(up, headers=(("x-org", "org-1"),)), c)
        request = up.requests[0]
        self.assertEqual((request.method, request.target), ("POST", "/v1/chat/completions"))
        self.assertEqual(request.headers["authorization"], f"Bearer {API_KEY}")
        self.assertEqual(request.headers["accept"], "text/event-stream")
        self.assertEqual(request.headers["content-type"], "application/json")
        self.assertEqual(request.headers["x-org"], "org-1")
        self.assertEqual(request.json, {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "assistant", "content": "earlier"},
                {"role": "user", "content": '[tool result] {"temp": 21}'},
                {"role": "user", "content": "what now?"},
            ],
            "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "stop": ["END"], "seed": 42,
        })

    async def test_the_token_limit_goes_under_the_name_the_client_used(self) -> None:
        # OpenAI's reasoning models refuse max_tokens ("Use 'max_completion_tokens'
        # instead"); many compatible servers know only max_tokens.
        for field in ("max_tokens", "max_completion_tokens"):
            with self.subTest(field):
                async with FakeUpstream(replay(OPENAI_STREAM)) as up:
                    await collect(self.provider(up), call(max_tokens=50, max_tokens_field=field))
                sent = up.requests[0].json
                self.assertEqual(sent[field], 50)
                self.assertEqual({"max_tokens", "max_completion_tokens"} & set(sent), {field})

    async def test_unset_options_and_key_are_not_sent(self) -> None:
        async with FakeUpstream(replay(OPENAI_STREAM)) as up:
            await collect(self.provider(up, api_key=None, base_url=f"http://127.0.0.1:{up.port}/v1/"),
                          call())
        request = up.requests[0]
        self.assertEqual(request.target, "/v1/chat/completions")
        self.assertNotIn("authorization", request.headers)
        self.assertEqual(set(request.json), {"model", "messages", "stream", "stream_options"})

    async def test_streaming_usage_and_finish(self) -> None:
        async with FakeUpstream(replay(OPENAI_STREAM)) as up:
            provider = self.provider(up)
            reply = await collect(provider, call())
            await asyncio.sleep(0.05)    # the last chunk may be read in the background
            again = await collect(provider, call())
        self.assertEqual((reply.deltas, reply.usage, reply.finish), (["Hi", " there"], Usage(3, 2), "length"))
        self.assertEqual(again.events, reply.events)
        self.assertEqual(up.connections, 1)      # the pooled connection was reused

    async def test_missing_usage_yields_none(self) -> None:
        async with FakeUpstream(replay(sse(openai_chunk("a", "stop"), b"[DONE]"))) as up:
            reply = await collect(self.provider(up), call())
        self.assertEqual((reply.text, reply.usage, reply.finish), ("a", None, "stop"))

    async def test_upstream_rejections(self) -> None:
        for name, status, body, headers, gateway, message, retry_after in OPENAI_REJECTIONS:
            with self.subTest(name):
                error = await self.fails(answer(status, body, *headers), UpstreamRejected)
                self.assertEqual(error.upstream_status, status)
                self.assertEqual(http_status(error), gateway)
                self.assertEqual(str(error), f"provider 'up': upstream answered {status}: {message}")
                self.assertEqual(error.retry_after, retry_after)

    async def test_garbage(self) -> None:
        cases = (
            ("not JSON", replay(b"data: {oops\n\n"), "event stream data is not JSON"),
            ("not an object", replay(b"data: [1]\n\n"), "event stream data is not a JSON object"),
            ("error chunk", replay(sse({"error": {"message": "The server had an error"}})),
             "The server had an error"),
            ("bad choices", replay(sse({"choices": "x"})), "malformed chunk: choices is not a list of objects"),
            ("bad usage", replay(sse({"choices": [], "usage": {"prompt_tokens": "3"}})),
             "malformed chunk: usage counts are not integers"),
            ("no [DONE], no finish", replay(sse(openai_chunk("a"))), "event stream ended before [DONE]"),
            ("not HTTP", _raw(b"SURPRISE\r\n\r\n"),
             "invalid HTTP response: malformed status line"),
            ("JSON instead of a stream", answer(200, b"{}", "content-type: application/json"),
             "expected an event stream, got 'application/json'"),
        )
        for name, handler, detail in cases:
            with self.subTest(name):
                error = await self.fails(handler, UpstreamError)
                self.assertNotIsInstance(error, (UpstreamRejected, UpstreamTimeout))
                self.assertEqual(error.detail, detail)
                self.assertEqual(http_status(error), 502)

    async def test_a_stream_that_ends_after_its_finish_reason_without_done_is_whole(self) -> None:
        # As the official SDKs read it: the reply is complete; a usage chunk may still come.
        for name, stream, usage in (
                ("finish", sse(openai_chunk("a"), openai_chunk(" b", "length")), None),
                ("finish, usage", sse(openai_chunk("a", "stop"), {"id": "c", "choices": [], "usage": {
                    "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}), Usage(3, 1))):
            with self.subTest(name):
                async with FakeUpstream(replay(stream)) as up:
                    reply = await collect(self.provider(up), call())
                self.assertEqual((reply.text, reply.finish, reply.usage),
                                 ("a b" if name == "finish" else "a", "length" if name == "finish" else "stop", usage))

    async def test_reset_mid_stream(self) -> None:
        error = await self.fails(reset_after(sse(openai_chunk("partial"))), UpstreamError)
        self.assertEqual(error.detail, "connection closed before the response was complete")

    async def test_connect_refused(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        provider = create_provider("up", ProviderConfig(
            api="openai-completions", base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY))
        with self.assertRaises(UpstreamError) as cm:
            await collect(provider, call())
        self.assertEqual(cm.exception.detail, "cannot connect: Connection refused")

    async def test_stalled_upstream_times_out(self) -> None:
        for name, handler in (("before the head", _silent), ("mid-stream", stall_after(sse(openai_chunk("a"))))):
            with self.subTest(name):
                started = time.monotonic()
                error = await self.fails(handler, UpstreamTimeout, timeout=0.2)
                self.assertLess(time.monotonic() - started, 1.0)
                self.assertEqual((error.timeout, error.phase, http_status(error)), (0.2, "read", 504))

    async def test_abort_mid_stream_closes_the_upstream_connection(self) -> None:
        for how in ("aclose", "cancel"):
            with self.subTest(how):
                async with FakeUpstream(replay(sse(openai_chunk("first")), end=False)) as up:
                    stream = self.provider(up).stream(call())
                    if how == "aclose":
                        self.assertEqual(await stream.__anext__(), TextDelta("first"))
                        started = time.monotonic()
                        await stream.aclose()
                    else:
                        got = asyncio.Event()

                        async def consume():
                            async for _ in stream:
                                got.set()
                        task = asyncio.create_task(consume())
                        await got.wait()
                        started = time.monotonic()
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
                    await asyncio.wait_for(up.closed.wait(), 1.0)
                    # The target is 100 ms; `make test` keeps room for a loaded machine.
                    self.assertLess(up.closed_at - started, 0.25)


def _raw(data: bytes) -> Handler:
    async def handler(request, reader, writer):
        writer.write(data)
        await reader.read()
    return handler


async def _silent(request, reader, writer) -> None:
    await reader.read()


# -- anthropic -----------------------------------------------------------------------

def anthropic_event(kind: str, **fields) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def anthropic_stream(stop_reason: str, *texts: str) -> bytes:
    return b"".join((
        anthropic_event("message_start", message={"usage": {"input_tokens": 4, "output_tokens": 1}}),
        anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        *(anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": t})
          for t in texts),
        anthropic_event("content_block_delta", index=0,
                        delta={"type": "input_json_delta", "partial_json": "{}"}),
        anthropic_event("content_block_stop", index=0),
        anthropic_event("something_new", detail="ignored"),
        anthropic_event("message_delta", delta={"stop_reason": stop_reason}, usage={"output_tokens": 9}),
        anthropic_event("message_stop"),
    ))


class AnthropicTests(HTTPProviderCase):
    api = "anthropic-messages"
    base_path = ""

    async def test_request(self) -> None:
        c = call("and now?", system="Be kind.", model="claude-x",
                 history=(Message("user", "one"), Message("user", "two"),
                          Message("assistant", "ok"), Message("tool", "42")),
                 temperature=0.2, top_p=0.8, stop=("\n\nHuman:",))
        async with FakeUpstream(replay(anthropic_stream("end_turn", "x"))) as up:
            await collect(self.provider(up, max_tokens=321), c)
        request = up.requests[0]
        self.assertEqual((request.method, request.target), ("POST", "/v1/messages"))
        self.assertEqual(request.headers["x-api-key"], API_KEY)
        self.assertEqual(request.headers["anthropic-version"], "2023-06-01")
        self.assertEqual(request.headers["content-type"], "application/json")
        self.assertEqual(request.json, {
            "model": "claude-x", "max_tokens": 321, "system": "Be kind.", "stream": True,
            "messages": [
                {"role": "user", "content": "one\n\ntwo"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "[tool result] 42\n\nand now?"},
            ],
            "temperature": 0.2, "top_p": 0.8, "stop_sequences": ["\n\nHuman:"],
        })

    async def test_max_tokens_option_wins_over_config(self) -> None:
        async with FakeUpstream(replay(anthropic_stream("end_turn", "x"))) as up:
            await collect(self.provider(up), call(max_tokens=5))
        self.assertEqual(up.requests[0].json["max_tokens"], 5)
        self.assertNotIn("system", up.requests[0].json)

    async def test_stop_reasons(self) -> None:
        for stop_reason, finish in (("end_turn", "stop"), ("stop_sequence", "stop"),
                                    ("max_tokens", "length"), ("tool_use", "tool_calls"),
                                    ("pause_turn", "pause_turn")):
            with self.subTest(stop_reason):
                async with FakeUpstream(replay(anthropic_stream(stop_reason, "a", "b"))) as up:
                    reply = await collect(self.provider(up), call())
                self.assertEqual((reply.text, reply.usage, reply.finish), ("ab", Usage(4, 9), finish))

    async def test_http_error(self) -> None:
        body = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
        error = await self.fails(answer(529, body, "content-type: application/json"), UpstreamRejected)
        self.assertEqual((error.upstream_status, http_status(error)), (529, 502))
        self.assertEqual(str(error), "provider 'up': upstream answered 529: Overloaded")

    async def test_unknown_error_event_and_truncation(self) -> None:
        start = anthropic_event("message_start", message={"usage": {"input_tokens": 1}})
        error = await self.fails(
            replay(start + anthropic_event("error", error={"type": "brand_new", "message": "hmm"})),
            UpstreamError)
        self.assertNotIsInstance(error, UpstreamRejected)
        self.assertEqual(error.detail, "hmm")
        error = await self.fails(replay(start), UpstreamError)
        self.assertEqual(error.detail, "event stream ended before message_stop")

    async def test_a_stream_that_ends_after_its_stop_reason_without_message_stop_is_whole(self) -> None:
        whole = anthropic_stream("max_tokens", "Hi", " there")
        cut = whole[:whole.index(b"event: message_stop")]
        async with FakeUpstream(replay(cut)) as up:
            reply = await collect(self.provider(up), call())
        self.assertEqual((reply.text, reply.finish, reply.usage), ("Hi there", "length", Usage(4, 9)))


# -- command ------------------------------------------------------------------------

async def streaming_pids(provider: Provider) -> tuple[asyncio.Task[None], list[int]]:
    """Stream ``provider`` (a program that prints a line of process ids) in a task until
    that line came whole: the task, and the ids. The output streams as it is read, so a
    line may come in pieces, split anywhere (inside a number too)."""
    pids: list[int] = []
    text: list[str] = []

    async def consume() -> None:
        async for event in provider.stream(call()):
            if type(event) is not TextDelta:
                continue            # the Usage and Finish at the end
            text.append(event.text)
            if not pids and "\n" in "".join(text):
                pids.extend(map(int, "".join(text).split("\n")[0].split()))

    task = asyncio.create_task(consume())
    while not pids and not task.done():
        await asyncio.sleep(0.01)
    return task, pids


def script(source: str) -> tuple[str, ...]:
    return (sys.executable, "-c", textwrap.dedent(source))


def gone(pid: int) -> bool:
    """True once ``pid`` is reaped (a zombie still answers kill 0) or is a zombie of another parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    except (OSError, IndexError):
        return True


async def wait_gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


class CommandTests(unittest.IsolatedAsyncioTestCase):
    def provider(self, source: str, **settings) -> Provider:
        return create_provider("cmd", ProviderConfig(api="command", command=script(source), **settings))

    async def test_streams_stdout_with_prompt_and_environment(self) -> None:
        provider = self.provider("""
            import os, sys, time
            prompt = sys.stdin.read()
            for word in ("model=" + os.environ["EQUABOT_MODEL"], " turn=" + os.environ["EQUABOT_TURN"],
                         " prompt=" + prompt):
                sys.stdout.write(word); sys.stdout.flush(); time.sleep(0.02)
        """)
        reply = await collect(provider, call("tell me", turn=4, model="local-1",
                                             history=(Message("user", "older"),)))
        self.assertEqual(reply.text, "model=local-1 turn=4 prompt=tell me")
        self.assertGreater(len(reply.deltas), 1)
        self.assertEqual((reply.usage, reply.finish), (Usage(2, 4), "stop"))

    async def test_utf8_split_across_reads(self) -> None:
        provider = self.provider(r"""
            import sys, time
            for piece in (b"caf\xc3", b"\xa9 \xe2\x82", b"\xac!"):
                sys.stdout.buffer.write(piece); sys.stdout.flush(); time.sleep(0.03)
        """)
        reply = await collect(provider, call())
        self.assertEqual(reply.text, "café €!")
        self.assertTrue(all("\ufffd" not in d for d in reply.deltas), reply.deltas)

    async def test_nonzero_exit_reports_the_stderr_tail(self) -> None:
        provider = self.provider("""
            import sys
            sys.stdin.read()
            sys.stderr.write("x" * 5000 + "\\nTHE END\\n")
            sys.exit(3)
        """)
        with self.assertRaises(UpstreamError) as cm:
            await collect(provider, call())
        detail = cm.exception.detail
        self.assertTrue(detail.startswith("exit status 3: xxx"), detail[:40])
        self.assertTrue(detail.endswith("x THE END"), detail[-20:])
        self.assertLessEqual(len(detail), len("exit status 3: ") + 2048)

    async def test_missing_program(self) -> None:
        provider = create_provider("cmd", ProviderConfig(api="command", command=("/nonexistent/prog",)))
        with self.assertRaises(UpstreamError) as cm:
            await collect(provider, call())
        self.assertEqual(cm.exception.detail, "cannot start the command: No such file or directory")

    async def test_silence_times_out_and_kills(self) -> None:
        provider = self.provider("""
            import os, sys, time
            print(os.getpid(), flush=True)
            time.sleep(30)
        """, timeout=0.2)
        deltas = []
        with self.assertRaises(UpstreamTimeout) as cm:
            async for event in provider.stream(call()):
                deltas.append(event)
        self.assertEqual(cm.exception.phase, "read")
        self.assertTrue(await wait_gone(int(deltas[0].text)))

    async def test_cancellation_kills_and_reaps(self) -> None:
        for name, source, slowest in (
                ("exits on SIGTERM", "", 0.4),
                ("ignores SIGTERM", "signal.signal(signal.SIGTERM, signal.SIG_IGN)", 1.5)):
            with self.subTest(name):
                provider = self.provider(f"""
                    import os, signal, subprocess, sys, time
                    {source}
                    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
                    print(os.getpid(), child.pid, flush=True)
                    time.sleep(30)
                """)
                task, pids = await streaming_pids(provider)
                started = time.monotonic()
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                self.assertLess(time.monotonic() - started, slowest)
                for pid in pids:        # the child, and the helper it started
                    self.assertTrue(await wait_gone(pid), pid)


if __name__ == "__main__":
    unittest.main()
