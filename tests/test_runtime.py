"""equabot_gw.agents.runtime driven directly: ``Runtime`` + ``run`` on temporary state dirs.

What every door relies on: runs on one session are serialised in order,
runs on different sessions overlap up to ``maxConcurrent`` and the rest queue
up to ``maxQueued`` (then 429); an abort while queued leaves no trace while
an abort mid-stream records the partial reply; a timeout is a 504; every run
emits ``Started``, ``Delta``*, then ``Ended`` or ``Failed`` to late
subscribers too; idempotency keys; admission errors with their statuses;
and the history rule, seen from the provider's side through a
recording wrapper around the configured provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from equabot_gw import config as config_mod
from equabot_gw.agents.events import Delta, Ended, Failed, Started
from equabot_gw.agents import committer as committer_mod
from equabot_gw.agents.runtime import Run, Runtime, run, run_here
from equabot_gw.agents.types import (
    AgentRequest, AgentResult, GenerationOptions, Message, ProviderCall, ProviderEvent, TextDelta, Usage,
)
from equabot_gw.errors import ApiError, RunAborted, RunTimedOut, StorageError, UpstreamError, http_status
from equabot_gw.providers import Provider

DELAY_MS = 20                       # slow echo: one pause per delta


def runtime_config(max_queued: int = 1024) -> dict[str, Any]:
    return {
        "agents": {"defaults": {"maxQueued": max_queued}, "list": [
            {"id": "main", "default": True},
            {"id": "beta", "systemPrompt": "You are beta."},
            {"id": "slow", "model": "slow/echo", "maxConcurrent": 20},
            {"id": "lane", "model": "quick/echo", "maxConcurrent": 20},
            {"id": "gate", "model": "slow/echo", "maxConcurrent": 2},
            {"id": "tiny", "model": "slow/echo", "maxConcurrent": 1},
            {"id": "late", "model": "slow/echo", "timeoutSeconds": 0.1},
            {"id": "patient", "model": "slow/echo", "timeoutSeconds": 0.3},
            {"id": "script", "model": "script/x"},
            {"id": "broken", "model": "failing/x"},
        ]},
        "models": {"providers": {
            "slow": {"api": "echo", "delayMs": DELAY_MS},
            "quick": {"api": "echo", "delayMs": 2},
            "script": {"api": "command", "command": [sys.executable, "-c", "import sys; print(sys.stdin.read())"]},
            "failing": {"api": "command",
                        "command": [sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(2)"]},
        }},
    }


class Recording(Provider):
    """Wraps a provider: keeps every ``ProviderCall`` and the peak number of streams at once."""

    def __init__(self, inner: Provider) -> None:
        super().__init__(inner.name, inner.config)
        self.inner = inner
        self.api = inner.api                                        # type: ignore[misc]
        self.supported_options = inner.supported_options            # type: ignore[misc]
        self.accepts = inner.accepts                                # type: ignore[misc]
        self.calls: list[ProviderCall] = []
        self.running = 0
        self.peak = 0

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        self.calls.append(call)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            async for event in self.inner.stream(call):
                yield event
        finally:
            self.running -= 1


class RuntimeCase(unittest.IsolatedAsyncioTestCase):
    max_queued = 1024

    async def asyncSetUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.state = Path(tmp.name)
        self.runtime = Runtime(config_mod.from_data(runtime_config(self.max_queued), env={}), self.state)
        await self.runtime.start()
        self.stopped = False
        self.recorders = {name: Recording(p) for name, p in self.runtime.providers.items()}
        self.runtime.providers.update(self.recorders)

    async def asyncTearDown(self) -> None:
        if not self.stopped:
            await self.runtime.stop(0)

    def start(self, message: str = "hi", **fields: Any) -> Run:
        return run(self.runtime, AgentRequest(message=message, **fields))

    async def started(self, message: str = "hi", **fields: Any) -> Run:
        """A run whose task has had its first turn (it holds a slot or waits for one)."""
        handle = self.start(message, **fields)
        await asyncio.sleep(0)
        return handle

    async def events(self, handle: Run) -> list[Any]:
        return [event async for event in handle.subscribe()]

    async def first_delta(self, handle: Run) -> None:
        async for event in handle.subscribe():
            if isinstance(event, Delta):
                return
        raise AssertionError(f"{handle} ended without a delta")

    async def transcript(self, agent: str, key: str) -> list[dict[str, Any]]:
        return await self.runtime.store.read_transcript(agent, key)

    async def assertAborted(self, handle: Run, exc_type: type = RunAborted) -> RunAborted:
        with self.assertRaises(exc_type) as caught:
            await asyncio.wait_for(handle.wait(), 5)
        self.assertEqual(handle.status, "aborted")
        return caught.exception

    def assertApiError(self, status: int, code: str | None, param: str | None, *words: str,
                       **fields: Any) -> ApiError:
        """``run`` refuses the request at admission: nothing starts, nothing waits."""
        active, waiting = dict(self.runtime.active), {a.id: a.waiting for a in self.runtime.agents.values()}
        with self.assertRaises(ApiError) as caught:
            self.start(**fields)
        exc = caught.exception
        self.assertEqual((exc.status, exc.code, exc.param), (status, code, param), exc.message)
        for word in words:
            self.assertIn(word, exc.message)
        self.assertEqual(self.runtime.active, active)
        self.assertEqual({a.id: a.waiting for a in self.runtime.agents.values()}, waiting)
        return exc


class SessionLaneTest(RuntimeCase):
    async def test_20_concurrent_runs_on_one_session_are_20_turns_in_order(self) -> None:
        handles = [self.start(f"m{n}", agent_id="lane", session_key="lane") for n in range(20)]
        results = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 10)
        self.assertEqual([r.text for r in results], [f"Echo (turn {n + 1}): m{n}" for n in range(20)])
        self.assertEqual([r.turn for r in results], list(range(1, 21)))
        self.assertEqual(self.recorders["quick"].peak, 1)            # never two at once on one session
        lines = await self.transcript("lane", "agent:lane:lane")
        self.assertEqual(lines[0]["type"], "session")
        turns = lines[1:]
        self.assertEqual([line["type"] for line in turns], ["user", "assistant"] * 20)
        self.assertEqual([line["content"] for line in turns[0::2]], [f"m{n}" for n in range(20)])
        self.assertEqual([line["content"] for line in turns[1::2]], [r.text for r in results])
        self.assertEqual([line["runId"] for line in turns[1::2]], [h.id for h in handles])
        [info] = self.runtime.store.list_sessions("lane")
        self.assertEqual((info.key, info.turns, info.last_run_id), ("agent:lane:lane", 20, handles[-1].id))

    async def test_runs_on_different_sessions_overlap(self) -> None:
        begun = time.monotonic()
        one = await self.start("x", agent_id="slow", session_key="solo").wait()
        single = time.monotonic() - begun                            # 4 deltas x 20 ms and a commit
        begun = time.monotonic()
        results = await asyncio.gather(*(self.start("x", agent_id="slow", session_key=f"s{n}").wait()
                                         for n in range(20)))
        together = time.monotonic() - begun
        self.assertEqual({r.text for r in results}, {one.text})
        self.assertEqual(self.recorders["slow"].peak, 20)
        self.assertLess(together, 5 * single)                        # not 20 x single
        self.assertEqual(len(self.runtime.store.list_sessions("slow")), 21)

    async def test_a_slow_session_does_not_hold_up_another(self) -> None:
        long = self.start(" ".join(["w"] * 30), agent_id="slow", session_key="long")
        quick = await asyncio.wait_for(self.start("q", agent_id="slow", session_key="quick").wait(), 2)
        self.assertEqual(quick.text, "Echo (turn 1): q")
        self.assertFalse(long.done)
        long.abort()
        await self.assertAborted(long)


class ConcurrencyTest(RuntimeCase):
    max_queued = 3

    async def sample_gate(self, handles: list[Run]) -> tuple[int, int]:
        """Peak ``Agent.active`` and ``Agent.waiting`` of agent gate until ``handles`` are done."""
        gate = self.runtime.agents["gate"]
        peak_active = peak_waiting = 0
        while not all(h.done for h in handles):
            peak_active = max(peak_active, gate.active)
            peak_waiting = max(peak_waiting, gate.waiting)
            await asyncio.sleep(0.001)
        return peak_active, peak_waiting

    async def test_max_concurrent_is_respected(self) -> None:
        handles = [await self.started("x", agent_id="gate") for _ in range(5)]   # 2 running + 3 queued
        gate = self.runtime.agents["gate"]
        self.assertEqual((gate.active, gate.waiting), (2, 3))
        self.assertEqual([h.status for h in handles], ["running"] * 2 + ["queued"] * 3)
        peak_active, peak_waiting = await self.sample_gate(handles)
        self.assertEqual((peak_active, peak_waiting), (2, 3))
        self.assertEqual(self.recorders["slow"].peak, 2)
        self.assertEqual([(await h.wait()).text for h in handles], ["Echo (turn 1): x"] * 5)
        self.assertEqual((gate.active, gate.waiting), (0, 0))

    async def test_queue_bound_gives_429_with_retry_after(self) -> None:
        handles = [await self.started("x", agent_id="gate") for _ in range(5)]
        exc = self.assertApiError(429, "rate_limit_exceeded", None, "'gate'", "2 running", "3 queued",
                                  message="one too many", agent_id="gate")
        self.assertEqual(dict(exc.headers), {"retry-after": "1"})
        self.assertEqual(http_status(exc), 429)
        # Other agents are not affected, and the gate admits again once a run is done.
        self.assertEqual((await self.start("y", agent_id="tiny").wait()).text, "Echo (turn 1): y")
        await handles[0].wait()
        await asyncio.sleep(0)
        later = self.start("z", agent_id="gate")
        await asyncio.gather(*(h.wait() for h in handles), later.wait())

    async def test_a_burst_of_runs_respects_the_queue_bound(self) -> None:
        handles = []
        try:
            for _ in range(5):                                       # 2 slots + 3 queued: all fit
                handles.append(self.start("x", agent_id="gate"))     # no await in between: one loop turn
            with self.assertRaises(ApiError) as caught:
                handles.append(self.start("x", agent_id="gate"))
            self.assertEqual(caught.exception.status, 429)
        finally:
            await asyncio.gather(*(h.wait() for h in handles), return_exceptions=True)

    async def test_runs_waiting_on_a_session_lane_count_against_the_queue(self) -> None:
        handles = []
        try:
            with self.assertRaises(ApiError) as caught:
                for _ in range(10):                                  # 1 running + 9 waiting > 2 + 3
                    handles.append(await self.started("x", agent_id="gate", session_key="one-lane"))
            self.assertEqual(caught.exception.status, 429)
            self.assertLessEqual(len(handles), 5)
        finally:
            for handle in handles:
                handle.abort()
            await asyncio.gather(*(h.wait() for h in handles), return_exceptions=True)


class AbortTest(RuntimeCase):
    async def test_abort_while_queued_leaves_no_transcript_entry(self) -> None:
        busy = await self.started("busy", agent_id="tiny", session_key="a")
        queued = await self.started("never", agent_id="tiny", session_key="b")
        self.assertEqual(queued.status, "queued")
        self.assertTrue(queued.abort("changed my mind"))
        exc = await self.assertAborted(queued)
        self.assertEqual(exc.why, "changed my mind")
        self.assertEqual([type(e) for e in await self.events(queued)], [Failed])
        self.assertEqual((await busy.wait()).text, "Echo (turn 1): busy")
        self.assertEqual(await self.transcript("tiny", "agent:tiny:b"), [])
        self.assertEqual([c.messages[-1].content for c in self.recorders["slow"].calls], ["busy"])
        self.assertEqual(self.runtime.agents["tiny"].waiting, 0)

    async def test_abort_while_waiting_on_the_session_lane(self) -> None:
        first = await self.started("first", agent_id="slow", session_key="lane")
        second = await self.started("second", agent_id="slow", session_key="lane")
        third = await self.started("third", agent_id="slow", session_key="lane")
        self.assertTrue(second.abort())
        await self.assertAborted(second)
        self.assertEqual([(await h.wait()).text for h in (first, third)],
                         ["Echo (turn 1): first", "Echo (turn 2): third"])
        lines = await self.transcript("slow", "agent:slow:lane")
        self.assertEqual([line["content"] for line in lines[1:]],
                         ["first", "Echo (turn 1): first", "third", "Echo (turn 2): third"])

    async def test_abort_while_streaming_records_the_partial_text(self) -> None:
        handle = self.start(" ".join(["w"] * 30), agent_id="slow", session_key="mid")
        await self.first_delta(handle)
        self.assertTrue(handle.abort("client disconnected"))
        exc = await self.assertAborted(handle)
        self.assertEqual((exc.why, exc.reason, http_status(exc)), ("client disconnected", "aborted", 499))
        self.assertEqual(http_status(RunAborted("shutdown")), 503)
        events = await self.events(handle)
        failed = events[-1]
        self.assertIsInstance(failed, Failed)
        self.assertEqual(failed.partial, "".join(e.text for e in events if isinstance(e, Delta)))
        self.assertTrue(failed.partial.startswith("Echo"))
        self.assertLess(len(failed.partial.split()), 30)
        lines = await self.transcript("slow", "agent:slow:mid")
        self.assertEqual([line["type"] for line in lines], ["session", "user", "aborted"])
        self.assertEqual((lines[-1]["content"], lines[-1]["reason"], lines[-1]["runId"]),
                         (failed.partial, "client disconnected", handle.id))
        self.assertFalse(handle.abort())                             # past that: nothing to stop
        # An aborted turn is no assistant turn: the next one is turn 1 again.
        self.assertEqual((await self.start("next", agent_id="slow", session_key="mid").wait()).turn, 1)

    async def test_each_run_times_out_at_its_own_deadline(self) -> None:
        # One watchdog per agent serves every run: it must re-arm for the runs
        # behind the one it expired, and leave alone a run that finished in time.
        long_text = " ".join(["w"] * 30)             # ~0.6 s of deltas: past the 0.3 s limit
        failed_at: dict[str, float] = {}

        async def timed_out(name: str, handle: Run) -> None:
            await self.assertAborted(handle, RunTimedOut)
            failed_at[name] = time.monotonic()

        began = time.monotonic()
        first = asyncio.ensure_future(timed_out("first", self.start(long_text, agent_id="patient")))
        short = self.start("x", agent_id="patient")  # 4 deltas, ~80 ms
        await asyncio.sleep(0.15)
        second = asyncio.ensure_future(timed_out("second", self.start(long_text, agent_id="patient")))
        self.assertEqual((await short.wait()).text, "Echo (turn 1): x")
        await asyncio.gather(first, second)
        self.assertGreaterEqual(failed_at["first"] - began, 0.3)
        self.assertGreaterEqual(failed_at["second"] - failed_at["first"], 0.1)   # not expired together
        self.assertLess(failed_at["second"] - began, 0.15 + 0.3 + 0.5)
        self.assertEqual(self.runtime.agents["patient"]._deadlines, {})

    async def test_timeout_is_504_and_an_aborted_line(self) -> None:
        handle = self.start(" ".join(["w"] * 30), agent_id="late", session_key="slowpoke")
        began = time.monotonic()
        exc = await self.assertAborted(handle, RunTimedOut)
        self.assertLess(time.monotonic() - began, 1.0)
        self.assertEqual((http_status(exc), exc.timeout), (504, 0.1))
        self.assertEqual(str(exc), "run aborted: no reply within 0.1 s")
        [*_, failed] = await self.events(handle)
        self.assertIsInstance(failed.error, RunTimedOut)
        lines = await self.transcript("late", "agent:late:slowpoke")
        self.assertEqual((lines[-1]["type"], lines[-1]["reason"]), ("aborted", "timeout"))
        self.assertEqual(lines[-1]["content"], failed.partial)
        self.assertTrue(failed.partial.startswith("Echo"))

    async def test_stop_aborts_open_runs_and_records_them(self) -> None:
        handle = self.start(" ".join(["w"] * 30), agent_id="slow", session_key="shutdown")
        behind = await self.started("behind", agent_id="slow", session_key="shutdown")
        await self.first_delta(handle)
        self.stopped = True
        await self.runtime.stop(0)
        self.assertEqual((await self.assertAborted(handle)).why, "shutdown")
        self.assertEqual((await self.assertAborted(behind)).why, "shutdown")
        with self.assertRaises(ApiError) as caught:
            self.start("after")
        # Refused while the gateway stops: worth a retry, soon or at another node.
        self.assertEqual((caught.exception.status, caught.exception.headers), (503, (("retry-after", "1"),)))
        reopened = Runtime(self.runtime.config, self.state)
        await reopened.start()
        try:
            lines = await reopened.store.read_transcript("slow", "agent:slow:shutdown")
            self.assertEqual([line["type"] for line in lines], ["session", "user", "aborted"])
            self.assertEqual(lines[-1]["reason"], "shutdown")
        finally:
            await reopened.stop(0)

    async def test_stop_with_a_grace_period_lets_runs_finish(self) -> None:
        handle = self.start("a b c", agent_id="slow", session_key="graceful")
        await self.first_delta(handle)
        self.stopped = True
        await self.runtime.stop(5.0)
        self.assertEqual((await handle.wait()).text, "Echo (turn 1): a b c")
        self.assertEqual(handle.status, "ok")

    async def test_aborting_a_queued_run_as_the_running_one_releases_the_slot(self) -> None:
        busy = await self.started("busy", agent_id="tiny", session_key="a")
        queued = await self.started("queued", agent_id="tiny", session_key="b")
        await self.first_delta(busy)
        busy.abort()                # in this order, as Runtime.stop() aborts them: the slot is released
        queued.abort()              # while the queued run's cancelled waiter is still in the queue
        try:
            await self.assertAborted(busy)
            with self.assertRaises(RunAborted):
                await asyncio.wait_for(queued.wait(), 0.5)
        finally:
            task = queued._task
            if task is not None and task.done() and not task.cancelled():
                self.assertIsNone(task.exception())     # retrieved here, not logged at collection
            self.assertEqual(self.runtime.agents["tiny"].active, 0)


class RunHereTest(RuntimeCase):
    """``run_here``: the run goes on in its caller's task, and settles as any other run does."""

    def here(self, message: str = "hi", left: str = "client disconnected", **fields: Any) -> asyncio.Task[Run]:
        return asyncio.ensure_future(run_here(self.runtime, AgentRequest(message=message, **fields), left))

    async def the_run(self) -> Run:
        """The one run in flight, once it is there."""
        for _ in range(200):
            if self.runtime.active:
                [handle] = self.runtime.active.values()
                return handle
            await asyncio.sleep(0.005)
        raise AssertionError("no run started")

    async def until(self, handle: Run, status: str) -> None:
        # Looked at every step of the loop: "recording" may last only a few steps (a
        # poll every 2 ms missed it under load, the run then already settled).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while handle.status != status:
            if loop.time() > deadline:
                raise AssertionError(f"{handle} never reached {status!r}")
            await asyncio.sleep(0)

    async def test_the_callers_task_runs_it_and_it_ends_settled(self) -> None:
        tasks = len(asyncio.all_tasks())
        caller = self.here("a b", agent_id="slow", session_key="here")
        handle = await self.the_run()
        self.assertIs(handle._task, caller)
        self.assertEqual(len(asyncio.all_tasks()), tasks + 1)       # the caller's, none of the run's own
        self.assertIs(await caller, handle)
        self.assertTrue(handle.done)
        self.assertEqual((handle.status, (await handle.wait()).text), ("ok", "Echo (turn 1): a b"))
        self.assertEqual([type(e) for e in await self.events(handle)][-1], Ended)
        self.assertEqual(self.runtime.active, {})
        self.assertIs(self.runtime.find_run(handle.id).status, "ok")
        lines = await self.transcript("slow", "agent:slow:here")
        self.assertEqual([line["type"] for line in lines], ["session", "user", "assistant"])

    async def test_cancelling_the_caller_aborts_the_run_and_records_its_partial_text(self) -> None:
        caller = self.here(" ".join(["w"] * 30), agent_id="slow", session_key="left")
        handle = await self.the_run()
        await self.first_delta(handle)
        caller.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await caller
        exc = await self.assertAborted(handle)
        self.assertEqual(exc.why, "client disconnected")
        [*_, failed] = await self.events(handle)
        self.assertTrue(failed.partial.startswith("Echo"))
        lines = await self.transcript("slow", "agent:slow:left")
        self.assertEqual([(line["type"], line.get("reason")) for line in lines],
                         [("session", None), ("user", None), ("aborted", "client disconnected")])
        self.assertEqual(lines[-1]["content"], failed.partial)
        self.assertEqual((self.runtime.active, self.runtime.agents["slow"].active), ({}, 0))

    async def test_cancelling_a_caller_whose_run_is_queued_leaves_no_trace(self) -> None:
        busy = await self.started("busy", agent_id="tiny", session_key="a")
        caller = self.here("never", agent_id="tiny", session_key="b")
        await asyncio.sleep(0.01)
        queued = next(h for h in self.runtime.active.values() if h is not busy)
        self.assertEqual(queued.status, "queued")
        caller.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await caller
        self.assertEqual((await self.assertAborted(queued)).why, "client disconnected")
        self.assertEqual((await busy.wait()).text, "Echo (turn 1): busy")
        self.assertEqual(await self.transcript("tiny", "agent:tiny:b"), [])
        self.assertEqual(self.runtime.agents["tiny"].waiting, 0)

    async def test_an_abort_or_a_timeout_is_the_result_not_a_cancellation(self) -> None:
        caller = self.here(" ".join(["w"] * 30), agent_id="slow")
        handle = await self.the_run()
        await self.first_delta(handle)
        self.assertTrue(handle.abort("chat.abort"))
        self.assertIs(await caller, handle)         # the caller goes on: it was not cancelled
        self.assertEqual((await self.assertAborted(handle)).why, "chat.abort")
        self.assertEqual(caller.cancelling(), 0)
        late = await run_here(self.runtime, AgentRequest(message=" ".join(["w"] * 30), agent_id="late"))
        self.assertEqual(late.status, "aborted")
        with self.assertRaises(RunTimedOut):
            await late.wait()
        self.assertEqual(asyncio.current_task().cancelling(), 0)

    async def test_a_turn_being_written_when_the_caller_is_cancelled_is_written(self) -> None:
        # The fdatasync is held until the caller has been cancelled: the turn is
        # on its way to disk, so the run ends as the disk says, and only then
        # does the caller see its cancellation.
        for fails in (False, True):
            with self.subTest(fails=fails):
                held, release = threading.Event(), threading.Event()

                def fdatasync(fd: int) -> None:
                    held.set()
                    release.wait(5)
                    if fails:
                        raise OSError(errno.EIO, os.strerror(errno.EIO))

                key = f"written-{fails}"
                logged = self.assertLogs("equabot_gw.sessions", "WARNING") if fails else contextlib.nullcontext()
                with mock.patch.object(committer_mod, "_fdatasync", fdatasync), logged:
                    caller = self.here("x y", agent_id="lane", session_key=key)
                    handle = await self.the_run()
                    await self.until(handle, "recording")
                    await asyncio.get_running_loop().run_in_executor(None, held.wait, 5)
                    caller.cancel()
                    await asyncio.sleep(0.01)
                    self.assertFalse(caller.done())
                    release.set()
                    with self.assertRaises(asyncio.CancelledError):
                        await asyncio.wait_for(caller, 5)
                if fails:
                    self.assertEqual(handle.status, "error")
                    with self.assertRaises(StorageError):
                        await handle.wait()
                    self.assertEqual(await self.transcript("lane", f"agent:lane:{key}"), [])
                else:
                    self.assertEqual(handle.status, "ok")
                    self.assertEqual((await handle.wait()).text, "Echo (turn 1): x y")
                    lines = await self.transcript("lane", f"agent:lane:{key}")
                    self.assertEqual([line["type"] for line in lines], ["session", "user", "assistant"])
                self.assertEqual(self.runtime.active, {})

    def provide(self, stream: Any) -> None:
        """Agent "lane"'s provider streams with ``stream(call)`` instead."""
        provider = Recording(self.runtime.providers["quick"])
        provider.stream = stream            # type: ignore[method-assign]
        self.runtime.providers["quick"] = provider

    async def test_an_abort_whose_cancellation_the_provider_swallows_is_still_the_result(self) -> None:
        async def stubborn(call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            yield TextDelta("part ")
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                pass                            # a provider bug: it finishes anyway
            yield TextDelta("rest")
            yield Usage(1, 2)

        self.provide(stubborn)
        for why in ("chat.abort", "timeout"):
            with self.subTest(why=why):
                caller = self.here("x", agent_id="lane")
                handle = await self.the_run()
                await self.first_delta(handle)
                self.assertTrue(handle.abort(why))
                self.assertIs(await asyncio.wait_for(caller, 5), handle)     # answered, not cancelled
                self.assertEqual((handle.status, caller.cancelling()), ("aborted", 0))
                with self.assertRaises(RunTimedOut if why == "timeout" else RunAborted):
                    await handle.wait()

    async def test_a_run_aborted_from_within_its_own_task_is_aborted_and_its_caller_goes_on(self) -> None:
        async def quitter(call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            yield TextDelta("part ")
            self.assertTrue(self.runtime.active[call.run_id].abort("provider gave up"))
            yield TextDelta("rest")
            yield Usage(1, 2)

        self.provide(quitter)
        for start in (lambda: run(self.runtime, AgentRequest(message="x", agent_id="lane")).wait(),
                      lambda: run_here(self.runtime, AgentRequest(message="x", agent_id="lane"))):
            try:
                await asyncio.wait_for(start(), 5)
            except RunAborted:
                pass
            await asyncio.sleep(0)          # no cancellation is left pending for the caller
            [record] = [r for r in self.runtime._finished.values()][-1:]
            self.assertEqual((record.status, record.error.why), ("aborted", "provider gave up"))
        self.assertEqual(asyncio.current_task().cancelling(), 0)

    async def test_a_long_turn_being_prepared_when_the_caller_is_cancelled_is_written(self) -> None:
        # No usage from the provider: the words of a long reply are counted, and its
        # lines encoded, over several loop steps; the caller is cancelled meanwhile.
        reply = "word " * 100_000
        pause = 0.0

        async def wordy(call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            yield TextDelta(reply)
            await asyncio.sleep(pause)

        self.provide(wordy)
        for aborted_first in (False, True):
            with self.subTest(aborted_first=aborted_first):
                key = f"long-{aborted_first}"
                pause = 5.0 if aborted_first else 0.0
                caller = self.here("y", agent_id="lane", session_key=key)
                handle = await self.the_run()
                if aborted_first:       # an abort taken back first must not hide the later cancel
                    await self.first_delta(handle)
                    self.assertTrue(handle.abort("chat.abort"))
                await self.until(handle, "recording")
                caller.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await asyncio.wait_for(caller, 10)
                lines = await self.transcript("lane", f"agent:lane:{key}")
                self.assertEqual([line["type"] for line in lines],
                                 ["session", "user", "aborted" if aborted_first else "assistant"])
                self.assertEqual(handle.status, "aborted" if aborted_first else "ok")
                if not aborted_first:
                    self.assertEqual((await handle.wait()).text, reply)

    async def test_shutdown_waits_for_the_run_not_for_its_callers_task(self) -> None:
        hold = asyncio.Event()

        async def caller() -> Run:
            handle = await run_here(self.runtime, AgentRequest(message="a b", agent_id="slow"))
            await hold.wait()               # the request's task goes on (a keep-alive connection)
            return handle

        task = asyncio.ensure_future(caller())
        self.addCleanup(hold.set)
        handle = await self.the_run()
        ended = handle.ended()
        self.assertIsNotNone(ended)
        self.assertIsNot(ended, task)
        await asyncio.wait_for(ended, 5)
        self.assertEqual((handle.status, task.done(), handle.ended()), ("ok", False, None))
        self.stopped = True
        await asyncio.wait_for(self.runtime.stop(5.0), 2)     # nothing left to wait for
        hold.set()
        self.assertIs(await task, handle)

    async def test_a_request_with_an_idempotency_key_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            await run_here(self.runtime, AgentRequest(message="x", idempotency_key="k"))
        self.assertEqual(self.runtime.active, {})


class EventsTest(RuntimeCase):
    ORDER = re.compile(r"SD*[EF]|F")            # Started, Delta*, Ended | Failed; or Failed while queued

    def shape(self, events: list[Any]) -> str:
        return "".join({Started: "S", Delta: "D", Ended: "E", Failed: "F"}[type(e)] for e in events)

    async def test_every_run_starts_streams_and_ends_once(self) -> None:
        busy = await self.started("b", agent_id="tiny")
        runs = {
            "ok": self.start("a b c"),
            "slow": self.start("a b", agent_id="slow"),
            "upstream failure": self.start("x", agent_id="broken"),
            "timeout": self.start(" ".join(["w"] * 30), agent_id="late"),
            "aborted mid-stream": self.start(" ".join(["w"] * 30), agent_id="slow"),
            "aborted queued": self.start("q", agent_id="tiny"),
            "busy": busy,
        }
        await self.first_delta(runs["aborted mid-stream"])
        runs["aborted mid-stream"].abort()
        runs["aborted queued"].abort()
        for name, handle in runs.items():
            with self.subTest(name):
                events = await asyncio.wait_for(self.events(handle), 5)   # subscribed after run() returned
                shape = self.shape(events)
                self.assertIsNotNone(self.ORDER.fullmatch(shape), shape)
                self.assertTrue(handle.done)
                self.assertEqual(await self.events(handle), events)       # a second reader sees the same
                if shape == "F":
                    self.assertEqual(name, "aborted queued")
        self.assertEqual(self.shape(await self.events(runs["ok"])), "S" + "D" * 6 + "E")
        [*_, failed] = await self.events(runs["upstream failure"])
        self.assertIsInstance(failed.error, UpstreamError)
        self.assertEqual((failed.reason, http_status(failed.error)), ("upstream", 502))
        self.assertIn("exit status 2: bad", str(failed.error))

    async def test_events_carry_the_run(self) -> None:
        handle = self.start("one two", agent_id="beta", session_key="ev")
        result = await handle.wait()
        started, *deltas, ended = await self.events(handle)       # subscribed after the run ended
        self.assertEqual((started.run_id, started.agent_id, started.session_key, started.model, started.turn),
                         (handle.id, "beta", "agent:beta:ev", "echo/echo", 1))
        self.assertEqual("".join(d.text for d in deltas), result.text)
        self.assertEqual(ended.result, result)
        self.assertEqual(result, AgentResult(handle.id, "beta", "agent:beta:ev", "Echo (turn 1): one two",
                                             result.usage, "stop", "echo/echo", 1))
        # beta's system prompt (3 words) and the turn (2): what echo reports as the prompt.
        self.assertEqual((result.usage.prompt_tokens, result.usage.completion_tokens), (5, 5))

    async def test_a_subscriber_from_the_start_sees_deltas_as_they_come(self) -> None:
        handle = self.start("a b c", agent_id="slow")
        seen: list[tuple[str, float]] = []
        async for event in handle.subscribe():
            seen.append(("Delta" if type(event) is Delta else type(event).__name__, time.monotonic()))
        self.assertEqual([name for name, _ in seen], ["Started"] + ["Delta"] * 6 + ["Ended"])
        self.assertGreater(seen[-2][1] - seen[1][1], 4 * DELAY_MS / 1000)   # not one batch at the end

    async def test_a_run_nobody_watches_gets_its_text_whole(self) -> None:
        asked = AgentRequest(message="one two three")
        words = [e.text for e in await self.events(run(self.runtime, asked)) if type(e) is Delta]
        unwatched = run(self.runtime, asked, watched=False)
        result = await unwatched.wait()
        whole = [e.text for e in await self.events(unwatched) if type(e) is Delta]
        self.assertEqual(len(words), 6)
        self.assertEqual(whole, [result.text])
        self.assertEqual("".join(words), result.text)       # both stateless: both turn 1
        self.assertEqual(result.usage.completion_tokens, 6)
        cut = await run(self.runtime, AgentRequest(message="one two three",
                                                   options=GenerationOptions(max_tokens=2)), watched=False).wait()
        self.assertEqual((cut.text, cut.finish_reason, cut.usage.completion_tokens), ("Echo (turn", "length", 2))
        # Subscribed before it started: watched after all.
        early = run(self.runtime, asked, watched=False)
        self.assertEqual(len([e for e in await self.events(early) if type(e) is Delta]), 6)

    async def test_system_prompts_join_and_a_missing_one_is_empty(self) -> None:
        # Echo counts the prompt's words, the system prompt's included: beta's own has 3.
        async def prompt_words(**fields: Any) -> int:
            return (await run(self.runtime, AgentRequest(message="hi", **fields)).wait()).usage.prompt_tokens
        self.assertEqual(await prompt_words(agent_id="beta"), 4)
        self.assertEqual(await prompt_words(agent_id="beta", system="two more"), 6)
        self.assertEqual(await prompt_words(agent_id="beta", system=None), 4)      # as run_agent may pass
        self.assertEqual(await prompt_words(system=None), 1)
        self.assertEqual(await prompt_words(system="two more"), 3)

    async def test_failed_run_writes_an_error_line(self) -> None:
        handle = self.start("x", agent_id="broken", session_key="err")
        with self.assertRaises(UpstreamError):
            await handle.wait()
        self.assertEqual(handle.status, "error")
        lines = await self.transcript("broken", "agent:broken:err")
        self.assertEqual([line["type"] for line in lines], ["session", "user", "error"])
        self.assertIn("exit status 2: bad", lines[-1]["message"])


class IdempotencyTest(RuntimeCase):
    async def test_the_same_key_returns_the_same_run(self) -> None:
        first = self.start("once", agent_id="slow", session_key="idem", idempotency_key="key-1")
        again = self.start("once", agent_id="slow", session_key="idem", idempotency_key="key-1")
        self.assertIs(again, first)                                  # while it runs
        result = await first.wait()
        # Once finished, a retry gets the run's record: same id, same result, nothing run again.
        record = self.start("once", agent_id="slow", session_key="idem", idempotency_key="key-1")
        self.assertEqual((record.id, record.done), (first.id, True))
        self.assertEqual(await record.wait(), result)
        other = self.start("once", agent_id="slow", session_key="idem", idempotency_key="key-2")
        self.assertIsNot(other, first)
        self.assertEqual((await other.wait()).turn, 2)
        lines = await self.transcript("slow", "agent:slow:idem")
        self.assertEqual([line["type"] for line in lines], ["session"] + ["user", "assistant"] * 2)

    async def test_an_idempotent_retry_of_a_run_that_failed_before_output_runs_again(self) -> None:
        first = self.start("x", agent_id="broken", idempotency_key="key-f")
        with self.assertRaises(UpstreamError):
            await first.wait()
        again = self.start("x", agent_id="broken", idempotency_key="key-f")
        self.assertNotEqual(again.id, first.id)
        with self.assertRaises(UpstreamError):
            await again.wait()
        self.assertEqual(self.runtime.keys.get("broken", "key-f").run_id, again.id)


class AdmissionTest(RuntimeCase):
    async def test_unknown_agent_is_404(self) -> None:
        self.assertApiError(404, "model_not_found", "model", "'ghost'", "known: ", "main", agent_id="ghost")
        self.assertApiError(404, "model_not_found", "model", "'ghost'", session_key="agent:ghost:x")

    async def test_agent_ids_are_normalised(self) -> None:
        self.assertEqual((await self.start("x", agent_id=" BETA ").wait()).agent_id, "beta")

    async def test_unknown_provider_is_400(self) -> None:
        self.assertApiError(400, "model_not_found", "model", "'nowhere'", "'nowhere/gpt'", model="nowhere/gpt")

    async def test_model_override(self) -> None:
        result = await self.start("x", model="slow/echo").wait()
        self.assertEqual((result.agent_id, result.model), ("main", "slow/echo"))

    async def test_unsupported_option_is_400_naming_it(self) -> None:
        exc = self.assertApiError(400, "unsupported_parameter", "temperature", "'temperature'", "'script/x'",
                                  agent_id="script", options=GenerationOptions(temperature=0.5))
        self.assertIn("command", exc.message)
        self.assertApiError(400, "unsupported_parameter", "max_tokens", agent_id="script",
                            options=GenerationOptions(max_tokens=5))
        # Echo honours every option.
        result = await self.start("one two three", options=GenerationOptions(max_tokens=2, seed=1)).wait()
        self.assertEqual((result.text, result.finish_reason), ("Echo (turn", "length"))

    async def test_bad_session_key_is_400(self) -> None:
        for key in ("bad key", "", "../../etc", "k" * 201):
            with self.subTest(key=key):
                self.assertApiError(400, "invalid_session_key", "session_key", session_key=key)

    async def test_session_key_of_another_agent_is_400_naming_both(self) -> None:
        exc = self.assertApiError(400, "agent_mismatch", "x-equabot-session-key", "'beta'", "'main'",
                                  agent_id="main", session_key="agent:beta:x")
        self.assertIn("agent:beta:x", exc.message)
        # The same agent under another spelling is no mismatch.
        self.assertEqual((await self.start("x", agent_id="Beta", session_key="agent:beta:x").wait()).agent_id,
                         "beta")

    async def test_keys_are_scoped_to_the_chosen_agent(self) -> None:
        result = await self.start("x", agent_id="beta", session_key="plain").wait()
        self.assertEqual(result.session_key, "agent:beta:plain")
        stateless = await self.start("x").wait()
        self.assertRegex(stateless.session_key, r"^agent:main:agent:[0-9a-f-]{36}$")


class HistoryTest(RuntimeCase):
    """A session's own transcript is its history; the request's context only starts one."""

    CONTEXT = (Message("user", "earlier question"), Message("assistant", "earlier answer"))

    def calls(self) -> list[ProviderCall]:
        return self.recorders["echo"].calls

    async def test_a_new_session_starts_from_the_request_context(self) -> None:
        result = await self.start("now", session_key="fresh", context=self.CONTEXT).wait()
        self.assertEqual(self.calls()[-1].messages, self.CONTEXT + (Message("user", "now"),))
        self.assertEqual(result.text, "Echo (turn 1): now")          # N counts transcript turns only
        self.assertEqual(result.usage.prompt_tokens, 5)
        lines = await self.transcript("main", "agent:main:fresh")
        self.assertEqual(lines[1]["type"], "context")
        self.assertEqual(lines[1]["messages"], [{"role": "user", "content": "earlier question"},
                                                {"role": "assistant", "content": "earlier answer"}])

    async def test_a_session_with_turns_ignores_the_request_context(self) -> None:
        await self.start("first", session_key="kept", context=self.CONTEXT).wait()
        resent = self.CONTEXT + (Message("user", "first"), Message("assistant", "Echo (turn 1): first"),
                                 Message("user", "other"), Message("assistant", "made up"))
        result = await self.start("second", session_key="kept", context=resent).wait()
        self.assertEqual(self.calls()[-1].messages, self.CONTEXT + (
            Message("user", "first"), Message("assistant", "Echo (turn 1): first"), Message("user", "second")))
        self.assertEqual((result.text, result.turn), ("Echo (turn 2): second", 2))
        lines = await self.transcript("main", "agent:main:kept")
        self.assertEqual([line["type"] for line in lines], ["session", "context", "user", "assistant",
                                                            "user", "assistant"])

    async def test_stateless_runs_use_the_context_every_time(self) -> None:
        for _ in range(2):
            result = await self.start("q", context=self.CONTEXT).wait()
            self.assertEqual(result.turn, 1)
            self.assertEqual(self.calls()[-1].messages, self.CONTEXT + (Message("user", "q"),))

    async def test_system_prompts_are_joined(self) -> None:
        await self.start("x", agent_id="beta", system="Be brief.").wait()
        self.assertEqual(self.calls()[-1].system, "You are beta.\n\nBe brief.")
        await self.start("x").wait()
        self.assertEqual(self.calls()[-1].system, "")

    async def test_the_turn_number_reaches_the_provider(self) -> None:
        for n in (1, 2, 3):
            await self.start("t", session_key="count").wait()
            self.assertEqual(self.calls()[-1].turn, n)


if __name__ == "__main__":
    unittest.main()
