"""Providers against hostile or broken upstreams, commands and Python functions.

Each test plays one misbehaviour for real (a fake upstream on loopback, a
child process, an embedder's function) and checks that the run ends with a
clear error, within a deadline and a byte bound, without holding the event
loop, leaving processes behind or repeating a secret.
"""

from __future__ import annotations

import asyncio
import logging
import unittest

from equabot_gw.agents.types import TextDelta
from equabot_gw.errors import UpstreamError
from equabot_gw.providers.python import FunctionProvider
from tests.test_providers import call, collect


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


class _Odd(BaseException):
    """A BaseException that is neither Exception nor one of asyncio's."""


if __name__ == "__main__":
    unittest.main()
