"""The chat-completions stream in bounded pieces: word by word while the client keeps up, joined when not.

``ChunkWriter.pieces`` turns a batch of run events into SSE pieces of at most
``PIECE_BYTES`` (64 KiB). The first piece of a batch carries one chunk per
delta; deltas beyond it came faster than they could be sent and are joined
into chunks of at most 4,096 characters. End to end, a 2 MiB request of
one-letter words streams a body a few times its text, never 120 times, in
HTTP chunks of at most 64 KiB. A stream whose run is slow to its first
output starts after one keep-alive interval, and is kept alive until it comes.
"""

from __future__ import annotations

import asyncio
import json
import random
import unittest
from typing import Any
from unittest import mock

from equabot_gw.agents.events import Delta, Ended, Failed
from equabot_gw.agents.types import AgentResult, Usage
from equabot_gw.errors import UpstreamError
from equabot_gw.gateway import openai
from equabot_gw.net import sse
from equabot_gw.gateway.chat_stream import PIECE_BYTES, ChunkWriter as _ChunkWriter
from tests.support import error_of, post_closing, post_head, running_gateway
from tests.test_faults import sse_events, stream_outcome

CHUNK_TEXT = 4096


def end(text: str = "") -> Ended:
    return Ended(AgentResult("run", "main", "k", text, Usage(1, 2), "stop", "echo/echo", 1))


def parse(pieces: list[bytes]) -> list[Any]:
    """The data of every event in ``pieces`` (JSON objects), each piece made of whole events."""
    events = []
    for piece in pieces:
        text = piece.decode()
        assert text.endswith("\n\n"), text[-40:]
        for block in text[:-2].split("\n\n"):
            assert block.startswith("id: chatcmpl-1:"), block[:40]
            block = block.partition("\n")[2]
            assert block.startswith("data: "), block[:40]
            events.append(json.loads(block[6:]))
    return events


def contents(events: list[Any]) -> list[str]:
    return [e["choices"][0]["delta"]["content"] for e in events
            if "choices" in e and e["choices"] and "content" in e["choices"][0]["delta"]
            and "role" not in e["choices"][0]["delta"]]


class PiecesTest(unittest.TestCase):
    def writer(self, model: str = "equabot", usage: bool = False) -> _ChunkWriter:
        return _ChunkWriter("chatcmpl-1", model, usage)

    def assertBounded(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.assertLessEqual(len(piece), PIECE_BYTES)
        for text in contents(parse(pieces)):
            self.assertLessEqual(len(text), CHUNK_TEXT)

    def test_a_batch_that_fits_one_piece_is_one_chunk_per_delta(self) -> None:
        words = [f" w{i}" for i in range(200)]
        writer = self.writer(usage=True)
        pieces = list(writer.pieces([Delta(w) for w in words] + [end("".join(words))], role=True))
        self.assertEqual(len(pieces), 1)
        events = parse(pieces)
        self.assertEqual(events[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(contents(events), words)
        self.assertEqual(events[-2]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(events[-1]["usage"]["total_tokens"], 3)
        self.assertTrue(writer.finished)

    def test_a_million_one_letter_deltas_are_joined_past_the_first_piece(self) -> None:
        writer = self.writer()
        pieces = list(writer.pieces([Delta("a ")] * 1_000_000))
        self.assertBounded(pieces)
        texts = contents(parse(pieces))
        self.assertEqual("".join(texts), "a " * 1_000_000)
        total = sum(map(len, pieces))
        self.assertLess(total, 3 * 2_000_000, f"{total} bytes for 2 MB of text")
        first = contents(parse(pieces[:1]))
        self.assertTrue(all(t == "a " for t in first))                      # word by word at first
        self.assertTrue(all(len(t) == CHUNK_TEXT for t in texts[len(first):-1]))
        self.assertFalse(writer.finished)

    def test_long_deltas_are_split_and_pieces_count_bytes_not_characters(self) -> None:
        for name, model, text in (
                ("one long delta", "equabot", "x" * (1 << 20)),
                ("astral characters", "equabot", "\U0001F600" * 20_000),       # 12 bytes each, escaped
                ("control characters", "equabot", "\x01" * 50_000),
                ("non-ASCII model", "modèle-" + "é" * 200, "é" * 30_000)):
            with self.subTest(name):
                pieces = list(self.writer(model).pieces([Delta(text), end(text)]))
                self.assertBounded(pieces)
                self.assertEqual("".join(contents(parse(pieces))), text)

    def test_a_failure_ends_the_last_piece_with_an_error_event(self) -> None:
        writer = self.writer()
        pieces = list(writer.pieces([Delta("part")] * 40_000 + [Failed(UpstreamError("up", "boom"), "")]))
        self.assertBounded(pieces)
        events = parse(pieces)
        self.assertEqual(events[-1]["error"]["message"], "provider 'up': boom")
        self.assertEqual("".join(contents(events)), "part" * 40_000)
        self.assertTrue(writer.finished)

    def test_random_batches(self) -> None:
        rng = random.Random(4)
        pool = "".join(rng.choice("ab é\n\"\\\U0001F600") for _ in range(20_000))
        for trial in range(40):
            writer = self.writer(usage=rng.random() < 0.5)
            deltas = [Delta(pool[start:start + rng.choice((1, 3, 50, 5000))])
                      for start in (rng.randrange(10_000) for _ in range(rng.randint(0, 1000)))]
            batch = deltas + ([end()] if rng.random() < 0.5 else [])
            with self.subTest(trial=trial):
                pieces = list(writer.pieces(batch, role=rng.random() < 0.5))
                self.assertBounded(pieces)
                self.assertEqual("".join(contents(parse(pieces))), "".join(d.text for d in deltas))


class EndToEndTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_2_mib_request_of_one_letter_words_streams_in_bounded_chunks(self) -> None:
        message = "a " * (1 << 20)
        async with running_gateway() as gw:
            body = json.dumps({"model": "equabot", "stream": True,
                               "messages": [{"role": "user", "content": message}]}).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
            writer.write(post_head("/v1/chat/completions", body, headers="Connection: close\r\n"))
            head = await reader.readuntil(b"\r\n\r\n")
            self.assertIn(b"transfer-encoding: chunked", head)
            sizes, data = [], []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                if size == 0:
                    break
                sizes.append(size)
                data.append(await reader.readexactly(size))
                await reader.readexactly(2)
            writer.close()
        self.assertLessEqual(max(sizes), PIECE_BYTES)
        payload = b"".join(data)
        self.assertLess(len(payload), 20 * 2**20, f"{len(payload) / 2**20:.0f} MiB body for 2 MiB of text")
        events = []
        for block in payload.decode()[:-2].split("\n\n"):
            block = block.partition("\n")[2] if block.startswith("id: ") else block
            events.append(block[6:] if block == "data: [DONE]" else json.loads(block[6:]))
        text, finish, error = stream_outcome(["[DONE]" if e == "[DONE]" else e for e in events])
        self.assertEqual((text, finish, error), ("Echo (turn 1): " + message, "stop", None))
        print(f"  2 MiB of one-letter words: {len(payload) / 2**20:.1f} MiB of SSE in {len(sizes)} chunks")


class ModelNameTest(unittest.IsolatedAsyncioTestCase):
    async def test_the_model_string_echoed_in_every_chunk_is_bounded(self) -> None:
        from tests.support import error_of
        from tests.test_faults import chat
        async with running_gateway() as gw:
            status, _, body = await chat(gw.server.port, "hi", model="m" * (openai.MAX_MODEL_CHARS + 1))
            self.assertEqual(status, 400)
            error = error_of(body)
            self.assertEqual((error["param"], error["code"]), ("model", "invalid_value"))
            self.assertIn("257 characters, more than the limit of 256", error["message"])
            status, _, _ = await chat(gw.server.port, "hi", model="m" * openai.MAX_MODEL_CHARS)
            self.assertEqual(status, 200)


def assertEveryBlockHasData(test: unittest.TestCase, payload: bytes) -> None:
    """No blank line of the stream ends a block without data (a keep-alive comment alone):
    the openai SDK dispatches each such block, once an event had an id, and fails on it."""
    for block in payload.decode().split("\n\n")[:-1]:
        test.assertTrue(any(line.startswith("data: ") for line in block.split("\n")), repr(block[:80]))


class KeepAliveTest(unittest.IsolatedAsyncioTestCase):
    """Keep-alive comments of a stream that pauses between its events: lines that a reader
    ignores among the next event's, never an event of their own."""

    async def test_comments_between_events_dispatch_nothing(self) -> None:
        data = slow_first_word_config()
        data["models"]["providers"]["slow"]["delayMs"] = 150         # three intervals and more between words
        with mock.patch.object(sse, "KEEPALIVE_INTERVAL", INTERVAL):
            async with running_gateway(data) as gw:
                chat = await post_stream(gw.server.port, "/v1/chat/completions",
                                         {"model": "equabot", "messages": [{"role": "user", "content": "a b"}]})
                responses = await post_stream(gw.server.port, "/v1/responses", {"model": "equabot", "input": "a b"})
        for name, (status, _, payload) in (("chat", chat), ("responses", responses)):
            with self.subTest(name):
                self.assertEqual(status, 200)
                first_id = payload.index(b"\nid: ") if payload.startswith(b":") else payload.index(b"id: ")
                self.assertIn(sse.KEEPALIVE, payload[first_id:])      # comments after an event's id
                assertEveryBlockHasData(self, payload)
        self.assertEqual(stream_outcome(sse_events(chat[2])), ("Echo (turn 1): a b", "stop", None))


# A first word after this long: many keep-alive intervals of HeldHeadTest.
FIRST_WORD_MS = 600
INTERVAL = 0.05


def slow_first_word_config() -> dict[str, Any]:
    from tests.test_responses import responses_config
    data = responses_config()
    data["agents"] = {"list": [{"id": "main", "default": True},
                               {"id": "late", "timeoutSeconds": FIRST_WORD_MS / 3000}],
                      "defaults": {"model": "slow/echo"}}
    data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": FIRST_WORD_MS}}}
    return data


async def post_stream(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """A streamed POST on a fresh connection (``Connection: close``): status, headers, de-chunked body."""
    status, headers, payload, _ = await post_closing(port, path, json.dumps({**body, "stream": True}).encode())
    return status, headers, payload


class HeldHeadTest(unittest.IsolatedAsyncioTestCase):
    """The head of a stream waits for the run's first output (so that a run failing at once
    gets a real status) for one keep-alive interval at most; then the stream starts and
    keep-alive comments come until the output does: never a silence longer than that."""

    async def test_a_chat_stream_starts_and_keeps_alive_while_the_first_word_is_awaited(self) -> None:
        with mock.patch.object(sse, "KEEPALIVE_INTERVAL", INTERVAL):
            async with running_gateway(slow_first_word_config()) as gw:
                status, headers, payload = await post_stream(
                    gw.server.port, "/v1/chat/completions",
                    {"model": "equabot", "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual((status, headers["content-type"]), (200, "text/event-stream; charset=utf-8"))
        self.assertTrue(payload.startswith(sse.KEEPALIVE), payload[:80])      # the head went out first
        events = sse_events(payload)
        self.assertEqual(stream_outcome(events), ("Echo (turn 1): hi", "stop", None))
        self.assertEqual(contents(events[1:-2]), ["Echo", " (turn", " 1):", " hi"])   # word by word still

    async def test_a_responses_stream_opens_and_keeps_alive_while_the_first_word_is_awaited(self) -> None:
        with mock.patch.object(sse, "KEEPALIVE_INTERVAL", INTERVAL):
            async with running_gateway(slow_first_word_config()) as gw:
                status, _, payload = await post_stream(gw.server.port, "/v1/responses",
                                                       {"model": "equabot", "input": "hi"})
        self.assertEqual(status, 200)
        lines = [line for line in payload.decode().split("\n") if line.startswith((":", "event: "))]
        opened = lines.index("event: response.in_progress")
        self.assertEqual(lines[:opened + 1], ["event: response.created", "event: response.in_progress"])
        self.assertEqual(lines[opened + 1], ": keep-alive")          # before any output
        self.assertEqual([k for k in lines if not k.startswith(":")][-1], "event: response.completed")
        assertEveryBlockHasData(self, payload)

    async def test_a_run_failing_within_the_interval_gets_its_status_and_after_it_an_error_event(self) -> None:
        body = {"model": "equabot:late", "messages": [{"role": "user", "content": "hi"}]}
        async with running_gateway(slow_first_word_config()) as gw:
            status, _, payload = await post_stream(gw.server.port, "/v1/chat/completions", body)
        self.assertEqual((status, error_of(payload)["code"]), (504, "run_timeout"))
        with mock.patch.object(sse, "KEEPALIVE_INTERVAL", INTERVAL):
            async with running_gateway(slow_first_word_config()) as gw:
                status, _, payload = await post_stream(gw.server.port, "/v1/chat/completions", body)
        self.assertEqual(status, 200)
        text, finish, error = stream_outcome(sse_events(payload))
        self.assertEqual((text, finish, error["code"]), ("", None, "run_timeout"))


if __name__ == "__main__":
    unittest.main()
