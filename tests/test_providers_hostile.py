"""Providers against hostile or broken upstreams, commands and Python functions.

Each test plays one misbehaviour for real (a fake upstream on loopback, a
child process, an embedder's function) and checks that the run ends with a
clear error, within a deadline and a byte bound, without holding the event
loop, leaving processes behind or repeating a secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unittest

from equabot_gw.agents.types import TextDelta
from equabot_gw.errors import UpstreamError, UpstreamTimeout, http_status
from equabot_gw.providers import MAX_DETAIL_CHARS
from equabot_gw.providers.python import FunctionProvider
from tests.test_providers import API_KEY, HTTPProviderCase, call, collect


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


class _Odd(BaseException):
    """A BaseException that is neither Exception nor one of asyncio's."""


if __name__ == "__main__":
    unittest.main()
