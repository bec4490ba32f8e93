"""Runs that must settle, and let go, whatever their provider or their callers do.

A provider (or another step) raising a ``BaseException`` of its own, not an
``Exception``, still settles its run as failed; a provider that swallows the
cancellation of an abort or a timeout and goes on yielding no longer keeps
its slot and its place among the active runs for as long as it yields; and a
caller that gives up waiting on a run, again and again, or a reader that
subscribes and goes, again and again, leaves nothing behind. Runs of
idempotency keys read back from disk after a restart are remembered within
the finished runs' byte budget, as every finished run is.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tempfile
import time
import unittest
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

from equabot_gw import config as config_mod
from equabot_gw.agents import idempotency, sessions
from equabot_gw.agents.events import Delta, EventLog, Failed, Started
from equabot_gw.agents.lifecycle import ABORT_GRACE
from equabot_gw.agents.records import RunRecord
from equabot_gw.agents.runtime import Run, Runtime, run, run_here, run_once
from equabot_gw.agents.types import AgentRequest, ProviderCall, ProviderEvent, TextDelta, Usage
from equabot_gw.errors import RunAborted, RunFailed, RunTimedOut, UpstreamError
from tests.test_runtime import Recording, RuntimeCase


class Escaped(BaseException):
    """A BaseException that is not an Exception, as some libraries define."""


async def until(predicate, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not so after {timeout} s")
        await asyncio.sleep(0.01)


class LetGoCase(RuntimeCase):
    def provide(self, stream, provider: str = "quick") -> None:
        """The agents of ``provider`` stream with ``stream(call)`` instead."""
        recording = Recording(self.runtime.providers[provider])
        recording.stream = stream            # type: ignore[method-assign]
        self.runtime.providers[provider] = recording

    def assertNothingLeft(self) -> None:
        self.assertEqual(self.runtime.active, {})
        for agent in self.runtime.agents.values():
            self.assertEqual((agent.active, agent.waiting), (0, 0), agent.id)


class BaseExceptionSettlesTest(LetGoCase):
    async def test_a_provider_raising_a_base_exception_fails_the_run_with_its_partial_text(self) -> None:
        raised: BaseException = Escaped("not an Exception")

        async def escaping(call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            yield TextDelta("part")
            await asyncio.sleep(0)
            raise raised

        self.provide(escaping)
        # SystemExit too (a library that calls sys.exit): out of the task, it would stop the loop.
        for door, raised in (("run", Escaped("not an Exception")), ("run_here", Escaped("not an Exception")),
                             ("run", SystemExit(3)), ("run_here", SystemExit(3))):
            with self.subTest(door, raised=raised), self.assertLogs("equabot_gw", "ERROR"):
                key = f"base-{door}-{type(raised).__name__}"
                request = AgentRequest(message="x", agent_id="lane", session_key=key)
                if door == "run":
                    handle = run(self.runtime, request)
                    events = asyncio.ensure_future(self.events(handle))
                    with self.assertRaises(UpstreamError):
                        await asyncio.wait_for(handle.wait(), 5)
                    self.assertIsInstance((await asyncio.wait_for(events, 5))[-1], Failed)
                else:
                    handle = await asyncio.wait_for(run_here(self.runtime, request), 5)
                    with self.assertRaises(UpstreamError):
                        await handle.wait()
                self.assertEqual(handle.status, "error")
                await until(lambda: not self.runtime.active)
                self.assertNothingLeft()
                self.assertEqual(self.runtime.find_run(handle.id).status, "error")
                lines = await self.transcript("lane", f"agent:lane:{key}")
                self.assertEqual(lines[-1]["type"], "error")

    async def test_a_base_exception_in_another_step_fails_the_run(self) -> None:
        async def history(*args: object, **kwargs: object) -> None:
            raise Escaped("not an Exception")

        with mock.patch.object(sessions.SessionStore, "history", history), \
                self.assertLogs("equabot_gw", "ERROR"), self.assertNoLogs("asyncio", "ERROR"):
            handle = self.start("x", session_key="base-history")
            with self.assertRaises(RunFailed):
                await asyncio.wait_for(handle.wait(), 5)
            self.assertEqual(self.runtime.find_run(handle.id).status, "error")
            await until(lambda: not self.runtime.active)
            gc.collect()        # asyncio reports an exception it was never asked for when the task goes
        self.assertNothingLeft()


class StubbornProviderTest(LetGoCase):
    """A provider that swallows the cancellation and goes on yielding, for ever."""

    async def stubborn_run(self, pause: float, why: str) -> Run:
        yields = 0
        ending = False          # the check's end: it stops then, whatever happened

        async def stubborn(call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            nonlocal yields
            while not ending:
                try:
                    await asyncio.sleep(pause)
                except asyncio.CancelledError:
                    pass                    # a provider bug: it carries on
                yields += 1
                yield TextDelta("word ")

        original = self.runtime.providers["slow"]
        self.provide(stubborn, "slow")
        handle = self.start("x", agent_id="tiny")       # one slot
        self.runtime.providers["slow"] = original       # for the runs after it
        try:
            await asyncio.wait_for(self.first_delta(handle), 10)
            if why != "timeout":
                self.assertTrue(handle.abort(why))
            with self.assertRaises(RunTimedOut if why == "timeout" else RunAborted):
                await asyncio.wait_for(handle.wait(), 10)
            # It lets go of its slot and leaves the active runs (its provider is closed).
            await until(lambda: handle.id not in self.runtime.active)
            self.assertNothingLeft()
            seen = yields
            await asyncio.sleep(pause * 3 + 0.05)
            self.assertEqual(yields, seen, "nobody reads the provider any more")
        finally:
            ending = True
            await until(lambda: handle.id not in self.runtime.active)
        return handle

    async def test_an_aborted_run_lets_go_of_a_provider_that_yields_on(self) -> None:
        for pause in (0.001, ABORT_GRACE / 5):       # many checkpoints before the grace, or none
            # Slow, it is settled when its grace is over, then let go at its next yield.
            settled_late = self.assertLogs("equabot_gw.runtime", "WARNING") if pause > 0.01 \
                else contextlib.nullcontext()
            with self.subTest(pause=pause), settled_late:
                handle = await self.stubborn_run(pause, "chat.abort")
                self.assertEqual(self.runtime.find_run(handle.id).status, "aborted")
                # The next run gets the agent's one slot.
                nxt = self.start("next", agent_id="tiny")
                result = await asyncio.wait_for(nxt.wait(), 10)
                self.assertIn("next", result.text)

    async def test_a_cancelled_caller_is_let_go_by_a_provider_that_yields_on(self) -> None:
        yields = 0
        ending = False

        async def stubborn(call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            nonlocal yields
            while not ending:
                try:
                    await asyncio.sleep(0.005)
                except asyncio.CancelledError:
                    pass                    # a provider bug: it carries on
                yields += 1
                yield TextDelta("word ")

        self.provide(stubborn, "slow")
        self.runtime.agents["tiny"].timeout = 60.0      # the timeout is not what ends it
        caller = asyncio.ensure_future(run_here(self.runtime, AgentRequest(message="x", agent_id="tiny")))
        try:
            await until(lambda: yields > 0)
            [handle] = self.runtime.active.values()
            caller.cancel()                 # its client went away
            done, _ = await asyncio.wait([caller], timeout=10)
            self.assertEqual(done, {caller}, "the caller is answered")
            self.assertTrue(caller.cancelled())
            await until(lambda: not self.runtime.active)
            self.assertNothingLeft()
            record = self.runtime.find_run(handle.id)
            self.assertEqual((record.status, record.error.why), ("aborted", "cancelled"))
            seen = yields
            await asyncio.sleep(0.05)
            self.assertEqual(yields, seen, "nobody reads the provider any more")
        finally:
            ending = True
            await asyncio.wait([caller], timeout=10)

    async def test_a_timed_out_run_lets_go_of_a_provider_that_yields_on(self) -> None:
        self.runtime.agents["tiny"].timeout = 0.2
        handle = await self.stubborn_run(0.02, "timeout")
        self.assertEqual(self.runtime.find_run(handle.id).status, "aborted")


class WaitersTest(LetGoCase):
    async def test_callers_that_give_up_waiting_leave_no_waiter_behind(self) -> None:
        release = asyncio.Event()

        async def held(call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            yield TextDelta("part")
            await release.wait()
            yield Usage(1, 1)

        self.provide(held)
        handle = self.start("x", agent_id="lane")
        await self.first_delta(handle)
        for _ in range(200):
            with self.assertRaises(TimeoutError):
                await asyncio.wait_for(handle.wait(), 0.0001)
        self.assertEqual(len(handle._waiters), 0)
        # Many that give up at once (a shared deadline) as well.
        gave_up = await asyncio.gather(*(asyncio.wait_for(handle.wait(), 0.05) for _ in range(2000)),
                                       return_exceptions=True)
        self.assertTrue(all(isinstance(g, TimeoutError) for g in gave_up))
        self.assertEqual(len(handle._waiters), 0)
        staying = asyncio.ensure_future(handle.wait())
        await asyncio.sleep(0)
        release.set()
        result = await asyncio.wait_for(staying, 5)      # a waiter that stays is still woken
        self.assertEqual(result.text, "part")


class ReadersThatComeAndGoTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_quiet_run_keeps_no_reference_per_reader_gone(self) -> None:
        log = EventLog()
        log.append(Started("run_1", "main", "k", "echo/echo", 1))
        staying = [log.subscribe() for _ in range(5)]
        for _ in range(20_000):
            log.subscribe()                     # a client that subscribed, and left
        self.assertLess(len(log._subscriptions), 100)
        self.assertTrue(log.watched)
        # The readers that stayed still read every event, from their own place.
        log.append(Delta("one"))
        self.assertEqual([type(e) for e in await staying[0].next_batch()], [Started, Delta])
        log.append(Delta(" two"))
        log.finish(Failed(RunAborted("chat.abort"), "one two"))
        for reader in staying:
            events = [event async for event in reader]
            self.assertEqual(events[-1].partial, "one two")
            self.assertEqual("".join(e.text for e in events if type(e) is Delta),
                             " two" if reader is staying[0] else "one two")


class RecordsFromDiskTest(unittest.IsolatedAsyncioTestCase):
    async def test_replies_read_back_after_a_restart_are_held_within_the_budget(self) -> None:
        big = ("x" * 65535 + " ") * 16          # 1 MiB of text: past what one record may hold
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        config = config_mod.from_data({}, env={})
        requests = [AgentRequest(message=big if n else "small", idempotency_key=f"key-{n}",
                                 session_key=f"s-{n}" if n % 2 else None) for n in range(6)]
        first = Runtime(config, Path(tmp.name))
        await first.start()
        replies = [(await asyncio.wait_for(run(first, r).wait(), 30)).text for r in requests]
        await first.stop(0)

        runtime = Runtime(config, Path(tmp.name))
        await runtime.start()
        self.addAsyncCleanup(runtime.stop, 0)
        for request, reply in zip(requests, replies):
            record, earlier = await run_once(runtime, request, idempotency.request_digest(request))
            self.assertTrue(earlier)
            self.assertIsInstance(record, RunRecord)
            small = len(reply) < 1000
            # A small reply is held; a large one is not, and is read back whole when asked for.
            self.assertEqual((record.result.text == reply, record.kept_bytes > 0), (small, small))
            self.assertEqual((await record.wait()).text, reply)
            self.assertEqual((await record.subscribe().next_batch())[0].result.text, reply)
        self.assertLess(runtime._finished_bytes, 64 * 1024)
        self.assertEqual(runtime._finished_bytes, sum(r.kept_bytes for r in runtime._finished.values()))


if __name__ == "__main__":
    unittest.main()
