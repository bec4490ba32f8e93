"""Providers against hostile or broken upstreams, commands and Python functions.

Each test plays one misbehaviour for real (a fake upstream on loopback, a
child process, an embedder's function) and checks that the run ends with a
clear error, within a deadline and a byte bound, without holding the event
loop, leaving processes behind or repeating a secret.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import unittest

from equabot_gw.agents.types import TextDelta
from equabot_gw.errors import UpstreamError, UpstreamTimeout, http_status
from equabot_gw.config import ProviderConfig
from equabot_gw.providers import (
    MAX_DETAIL_CHARS, MAX_EVENT_CHARS, MAX_EVENT_DATA_LINES, EventStreamDecoder, Provider, create_provider,
)
from equabot_gw.providers.python import FunctionProvider
from tests.test_providers import (
    API_KEY, FakeUpstream, HTTPProviderCase, anthropic_stream, call, collect, openai_chunk, replay, script, sse,
    streaming_pids, wait_gone,
)


def reflect_credentials(field: str) -> object:
    """A handler whose response head repeats the request's credentials in a malformed ``field``."""
    async def handler(request, reader, writer):
        secret = request.headers.get("authorization") or request.headers["x-api-key"]
        writer.write(f"HTTP/1.1 200 OK\r\n{field}: {secret}\r\n\r\n".encode())
        await reader.read()
    return handler


async def _junk_content_length(request, reader, writer) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: " + b"9x" * 20_000 + b"\r\n\r\n")
    await reader.read()


class ProtocolErrorDetailTests(HTTPProviderCase):
    async def test_malformed_heads_never_repeat_a_secret(self) -> None:
        # An upstream (or a proxy before it) that reflects request headers into
        # a malformed response head: the parser's reason quotes the value.
        for api, path in (("openai-completions", "/v1"), ("anthropic-messages", "")):
            with self.subTest(api):
                self.api, self.base_path = api, path
                error = await self.fails(reflect_credentials("content-length"), UpstreamError)
                self.assertTrue(error.detail.startswith("invalid HTTP response: invalid Content-Length "),
                                error.detail)
                self.assertIn("***", error.detail)

    async def test_malformed_head_detail_is_clipped(self) -> None:
        error = await self.fails(_junk_content_length, UpstreamError)
        self.assertTrue(error.detail.startswith("invalid HTTP response: invalid Content-Length '9x9x"))
        self.assertLessEqual(len(error.detail), len("invalid HTTP response: ") + MAX_DETAIL_CHARS + 1)


class FinishReasonTests(HTTPProviderCase):
    """An upstream's finish reason is kept as a word (transcripts and the control protocol
    carry it as it is); anything else, megabytes of it say, reads as "stop"."""

    REASONS = (("length", "length"), ("pause_turn", "pause_turn"), ("x" * 64, "x" * 64),
               ("x" * 65, "stop"), ("x" * 1_000_000, "stop"), ("two words", "stop"),
               ("line\nbreak", "stop"), ("\u00e9", "stop"))

    async def test_openai_finish_reasons(self) -> None:
        for reason, kept in self.REASONS:
            with self.subTest(reason=reason[:20]):
                stream = sse(openai_chunk("Hi"), openai_chunk(None, reason), b"[DONE]")
                async with FakeUpstream(replay(stream)) as up:
                    reply = await collect(self.provider(up), call())
                self.assertEqual((reply.text, reply.finish), ("Hi", kept))

    async def test_anthropic_stop_reasons(self) -> None:
        self.api, self.base_path = "anthropic-messages", ""
        for reason, kept in self.REASONS + (("end_turn", "stop"), ("max_tokens", "length")):
            with self.subTest(reason=reason[:20]):
                async with FakeUpstream(replay(anthropic_stream(reason, "Hi"))) as up:
                    reply = await collect(self.provider(up), call())
                self.assertEqual((reply.text, reply.finish), ("Hi", kept))


class PythonProviderTests(unittest.IsolatedAsyncioTestCase):
    async def test_base_exceptions_of_the_function_fail_the_run(self) -> None:
        # SystemExit raised in a provider (or a library it calls) must not stop the
        # gateway's event loop: it fails the run like any other exception.
        for name, exc in (("SystemExit", SystemExit(3)), ("a BaseException of its own", _Odd("odd"))):
            with self.subTest(name):
                async def provider(c):
                    yield TextDelta("bye")
                    raise exc

                with self.assertLogs("equabot_gw.providers", logging.ERROR), \
                        self.assertRaises(UpstreamError) as cm:
                    await collect(FunctionProvider("mine", provider), call())
                self.assertEqual(cm.exception.detail, f"{type(exc).__name__}: {exc}")

    async def test_cancellation_still_reaches_the_function(self) -> None:
        cleaned = asyncio.Event()
        started = asyncio.Event()

        async def provider(c):
            try:
                yield TextDelta("a")
                started.set()
                await asyncio.sleep(30)
                yield TextDelta("never")
            finally:
                cleaned.set()

        async def consume():
            async for _ in FunctionProvider("mine", provider).stream(call()):
                pass

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        self.assertTrue(cleaned.is_set())


async def _endless_interim_responses(request, reader, writer) -> None:
    while True:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)


async def _trickled_head(request, reader, writer) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nx-padding: " + b"a" * 60_000:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.02)


class EventStreamBoundsTests(unittest.TestCase):
    def test_a_long_line_in_small_pieces_takes_linear_time(self) -> None:
        # An upstream that sends a line just under the event bound in 100-byte
        # packets: each piece must not copy the whole line received so far.
        line = b"data: " + b"a" * (MAX_EVENT_CHARS - 100)
        decoder = EventStreamDecoder()
        started = time.perf_counter()
        for start in range(0, len(line), 100):
            decoder.feed(line[start:start + 100])
        self.assertLess(time.perf_counter() - started, 1.0)     # quadratic: about 3 s
        self.assertEqual(decoder.pending_chars, len(line))
        event, = decoder.feed(b"\n\n")
        self.assertEqual(len(event.data), MAX_EVENT_CHARS - 100)
        self.assertEqual(decoder.pending_chars, 0)


class EventStreamEventBoundTests(HTTPProviderCase):
    async def test_an_event_of_many_short_data_lines_is_refused(self) -> None:
        # Each "data:xy" line is 8 bytes on the wire and 3 characters of the
        # event, but a string object of its own (about 60 bytes): the event
        # bound in characters alone let 4 Mi characters hold some 80 MB.
        for api, path in (("openai-completions", "/v1"), ("anthropic-messages", "")):
            with self.subTest(api):
                self.api, self.base_path = api, path
                raw = b"data:xy\n" * (MAX_EVENT_DATA_LINES + 1)
                error = await self.fails(replay(raw, end=False), UpstreamError)
                self.assertEqual(error.detail, f"event stream event over {MAX_EVENT_DATA_LINES} data lines")

    async def test_an_event_of_many_data_lines_within_the_bound_passes(self) -> None:
        lines = b"".join(b"data: " + piece + b"\n" for piece in
                         (b'{"choices": [{"index": 0,', b'"delta": {"content": "hi"}}]}'))
        reply = await collect_from(self, replay(lines + b"\n" + b"data: [DONE]\n\n"))
        self.assertEqual(reply.text, "hi")


async def collect_from(case: HTTPProviderCase, handler: object):
    async with FakeUpstream(handler) as up:
        return await collect(case.provider(up), call())


class LoopWatch:
    """The longest the event loop went without running a ready callback, while in use."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._last = time.perf_counter()

    async def __aenter__(self) -> LoopWatch:
        self._last = time.perf_counter()
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._note()        # the stretch since the last tick counts too
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def _note(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0)
            self._note()


# The longest hold of the loop these tests allow: far above the decoder's own
# slices (5 ms), below what the unsliced work took here (about 250 ms).
MAX_LOOP_HOLD = 0.1


class LoopShareTests(HTTPProviderCase):
    """An upstream's large events are decoded without holding the loop, for either API."""

    async def hold(self, raw: bytes) -> float:
        async with FakeUpstream(replay(raw)) as up:
            provider = self.provider(up)
            async with LoopWatch() as watch:
                reply = await collect(provider, call())
        self.assertEqual(reply.text, "ok")
        return watch.longest

    async def test_large_events_are_decoded_in_slices(self) -> None:
        # About 3.5 MiB of JSON each, a million tiny objects: no text, so no reply bound.
        objects = b",".join([b"{}"] * 1_200_000)
        openai = sse(b'{"choices": [], "x": [' + objects + b"]}", openai_chunk("ok"), b"[DONE]")
        start = b'{"type": "message_start", "message": {"usage": {"input_tokens": 1}}}'
        anthropic = sse(b'{"type": "ping", "x": [' + objects + b"]}", start,
                        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
                        {"type": "message_stop"})
        for api, path, raw in (("openai-completions", "/v1", openai), ("anthropic-messages", "", anthropic)):
            with self.subTest(api):
                self.api, self.base_path = api, path
                self.assertLess(await self.hold(raw), MAX_LOOP_HOLD)


class ResponseHeadDeadlineTests(HTTPProviderCase):
    async def test_a_response_head_that_never_completes_times_out(self) -> None:
        # Each piece comes well within the silence timeout; the head as a
        # whole must still arrive within it.
        for name, handler in (("endless 100 Continue", _endless_interim_responses),
                              ("a head trickled a byte at a time", _trickled_head)):
            with self.subTest(name):
                started = time.monotonic()
                async with asyncio.timeout(3):          # before the fix: until the run's deadline
                    error = await self.fails(handler, UpstreamTimeout, timeout=0.2)
                self.assertLess(time.monotonic() - started, 1.0)
                self.assertEqual((error.timeout, error.phase, http_status(error)), (0.2, "read", 504))


# A command whose leader prints its own pid and a helper's, then exits; the
# helper keeps running (30 s), holding stdout open or not.
_LEAVES_A_HELPER = """
    import os, subprocess, sys
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]{stdout})
    print(os.getpid(), helper.pid, flush=True)
"""


class CommandHelperTests(unittest.IsolatedAsyncioTestCase):
    """A leader that exits leaves its helpers in its process group: they end with the stream."""

    def provider(self, source: str, **settings) -> Provider:
        return create_provider("cmd", ProviderConfig(api="command", command=script(source), **settings))

    async def assertAllGone(self, pids: list[int]) -> None:
        self.assertEqual(len(pids), 2, pids)
        for pid in pids:
            self.assertTrue(await wait_gone(pid, within=1.0), f"process {pid} left running")

    async def test_a_helper_holding_stdout_after_the_leader_exited(self) -> None:
        # stdout never reaches EOF: the silence times out, and the helper must not outlive the run.
        provider = self.provider(_LEAVES_A_HELPER.format(stdout=""), timeout=0.2)
        pids: list[int] = []
        with self.assertRaises(UpstreamTimeout):
            async for event in provider.stream(call()):
                pids.extend(map(int, event.text.split()))
        await self.assertAllGone(pids)

    async def test_a_helper_left_by_a_leader_that_exited_is_ended_on_abort(self) -> None:
        provider = self.provider(_LEAVES_A_HELPER.format(stdout=""))
        task, pids = await streaming_pids(provider)
        await asyncio.sleep(0.1)        # the leader is gone by now
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        await self.assertAllGone(pids)

    async def test_a_finished_reply_waits_for_the_program_not_for_its_helpers(self) -> None:
        # The helper holds stderr (and stdin) but not stdout: the reply is done
        # when the program exits, and the helper ends with it.
        provider = self.provider(_LEAVES_A_HELPER.format(stdout=", stdout=subprocess.DEVNULL"), timeout=5.0)
        started = time.monotonic()
        reply = await collect(provider, call())
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(reply.finish, "stop")
        await self.assertAllGone(list(map(int, reply.text.split())))

    async def test_a_helper_out_of_the_group_holding_the_pipes_does_not_hold_the_stream(self) -> None:
        # setsid() takes the helper out of reach of the group's signals; it keeps
        # every pipe open. The program ignores SIGTERM, so it is still running when
        # its SIGKILL is sent. Cancelling must still end the stream within the grace.
        provider = self.provider("""
            import os, signal, subprocess, sys, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                      start_new_session=True)
            print(os.getpid(), helper.pid, flush=True)
            time.sleep(30)
        """)
        task, pids = await streaming_pids(provider)
        self.addCleanup(_kill, pids[1])
        started = time.monotonic()
        task.cancel()
        async with asyncio.timeout(3):          # before the fix: until the helper exits (30 s)
            with self.assertRaises(asyncio.CancelledError):
                await task
        self.assertLess(time.monotonic() - started, 1.5)
        self.assertTrue(await wait_gone(pids[0], within=1.0))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Odd(BaseException):
    """A BaseException that is neither Exception nor one of asyncio's."""


if __name__ == "__main__":
    unittest.main()
