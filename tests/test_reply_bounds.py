"""An upstream reply is bounded in bytes, and the run timeout holds whatever the provider does.

* An upstream that streams valid deltas forever fails the run early with 502
  naming ``maxReplyBytes`` (a stream that began: an error event, then
  ``[DONE]``), and leaves only a short error line in the journal.
* With the byte limit lifted, the agent's ``timeoutSeconds`` still ends such
  a run within a second of its deadline (504).
* A provider whose stream never suspends (a local generator yielding
  forever) can still be timed out and aborted, and the event loop keeps
  serving others meanwhile: a 10 ms ticker on the same loop never lags
  past 250 ms (a sanity bound with room; without the bound it lags for the
  whole run).
"""

from __future__ import annotations

import asyncio
import json
import time
import unittest
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

from equabot_gw import config as config_mod
from equabot_gw.agents import lifecycle
from equabot_gw.agents import runtime as runtime_mod
from equabot_gw.agents.events import REFUSING, EventLog
from equabot_gw.agents.output import MAX_CITATIONS, ReplyOutput
from equabot_gw.agents.types import (
    AgentRequest, AgentResult, Annotations, ChoiceEvent, Citation, ProviderCall, ProviderEvent, RefusalDelta,
    TextDelta, Usage,
)
from equabot_gw.errors import ReplyTooLarge, RunAborted, RunTimedOut
from equabot_gw.providers import echo
from tests.support import base_config, error_of, running_gateway
from tests.test_faults import SSE_HEAD, FakeUpstream, chat, chunk, openai_chunk, sse_events, stream_outcome

WORD = "x" * 4095 + " "                    # 4 KiB of text per event
# The longest the loop may wait past a 10 ms tick while a huge reply streams.
# Typical: 15-40 ms. A shared machine once stalled a tick 270 ms with nothing
# of the run's to blame; a run that held the loop for its reply would stall
# it for seconds, so half a second still tells them apart.
LAG_BOUND = 0.5


async def forever(reader, writer, body) -> None:
    """Valid deltas, as fast as the gateway reads them, never a finish."""
    writer.write(SSE_HEAD)
    burst = chunk(openai_chunk(WORD)) * 16
    while True:
        writer.write(burst)
        await writer.drain()


def upstream_config(up: FakeUpstream, **provider: Any) -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"list": [{"id": "main", "default": True, "model": "up/m"},
                               {"id": "late", "model": "up/m", "timeoutSeconds": 0.3}]}
    data["models"] = {"providers": {"up": {"api": "openai-completions", "baseUrl": up.base_url,
                                           "timeoutSeconds": 30, **provider}}}
    return data


class LoopWatch:
    """A 10 ms ticker on the running loop; ``worst`` is the longest it waited past its tick."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _tick(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - started - 0.01)


def journal_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("agents/*/journal/*.jsonl"))


class UpstreamReplyLimitTest(unittest.IsolatedAsyncioTestCase):
    async def test_an_endless_upstream_fails_early_at_the_default_limit(self) -> None:
        self.assertEqual(config_mod.DEFAULT_MAX_REPLY_BYTES, 4 * 1024 * 1024)
        async with FakeUpstream(forever) as up, running_gateway(upstream_config(up)) as gw:
            started = time.monotonic()
            status, _, body = await chat(gw.server.port, "never ends", timeout=20)
            self.assertLess(time.monotonic() - started, 10)
            self.assertEqual(status, 502, body[:300])
            error = error_of(body)
            self.assertEqual(error["message"], "provider 'up': reply longer than the limit of 4194304 bytes "
                                               "(models.providers.up.maxReplyBytes)")
            self.assertLess(journal_bytes(Path(gw.state_dir)), 4096, "only the error line is recorded")
            [line] = [json.loads(raw) for p in Path(gw.state_dir).glob("agents/main/journal/*.jsonl")
                      for raw in p.read_bytes().splitlines() if b'"error"' in raw]
            self.assertIn("maxReplyBytes", line["message"])
            self.assertEqual(gw.runtime.active, {})

    async def test_a_configured_limit_on_a_stream_ends_it_with_an_error_event(self) -> None:
        async with FakeUpstream(forever) as up, running_gateway(upstream_config(up, maxReplyBytes=65536)) as gw:
            status, _, body = await chat(gw.server.port, "never ends", stream=True)
            self.assertEqual(status, 200)
            text, finish, error = stream_outcome(sse_events(body))
            self.assertLessEqual(len(text), 65536)
            self.assertGreater(len(text), 60000)
            self.assertIsNone(finish)
            self.assertEqual((error["type"], error["code"]), ("server_error", "upstream"))
            self.assertIn("limit of 65536 bytes", error["message"])

    async def test_non_ascii_text_counts_in_utf8_bytes(self) -> None:
        async def snowmen(reader, writer, body) -> None:
            writer.write(SSE_HEAD + chunk(openai_chunk("\u2603" * 400)) * 3
                         + chunk(openai_chunk(finish="stop")) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await reader.read()
        async with FakeUpstream(snowmen) as up, running_gateway(upstream_config(up, maxReplyBytes=3000)) as gw:
            status, _, body = await chat(gw.server.port, "snow")       # 1,200 characters, 3,600 bytes
            self.assertEqual(status, 502, body[:300])
            self.assertIn("limit of 3000 bytes", error_of(body)["message"])

    def test_the_limit_is_checked_in_config(self) -> None:
        provider = {"api": "echo", "maxReplyBytes": 0}
        with self.assertRaises(config_mod.ConfigError) as caught:
            config_mod.from_data({"models": {"providers": {"e": provider}}}, env={})
        self.assertEqual(caught.exception.path, "models.providers.e.maxReplyBytes")


class TimeoutWhateverTheProviderDoesTest(unittest.IsolatedAsyncioTestCase):
    async def test_an_endless_upstream_is_timed_out_on_time(self) -> None:
        async with FakeUpstream(forever) as up, running_gateway(upstream_config(up, maxReplyBytes=1 << 40)) as gw:
            async with LoopWatch() as watch:
                started = time.monotonic()
                status, _, body = await chat(gw.server.port, "never ends", model="equabot:late")
                elapsed = time.monotonic() - started
            self.assertEqual(status, 504, body[:300])
            self.assertEqual(error_of(body)["code"], "run_timeout")
            self.assertLess(elapsed, 0.3 + 1.0)
            # Not a bound on the loop here: the limit lifted, the aborted partial
            # (tens of MB) is recorded in one step; maxReplyBytes is what bounds that.
            print(f"  endless upstream: partial of {journal_bytes(Path(gw.state_dir)) / 2**20:.0f} MiB, "
                  f"loop lag {watch.worst * 1000:.0f} ms")

    async def test_a_provider_that_never_suspends_is_timed_out_and_aborted(self) -> None:
        async def endless(self: Any, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            while True:
                yield TextDelta("a ")

        data = base_config()
        # "patient" has no timeout: the abort below never races one (a stalled VM made it).
        data["agents"] = {"list": [{"id": "main", "default": True, "timeoutSeconds": 0.2}, {"id": "patient"}]}
        with mock.patch.object(echo.EchoProvider, "stream", endless):
            async with running_gateway(data) as gw, LoopWatch() as watch:
                gw.runtime.providers["echo"].max_reply_bytes = 1 << 40
                started = time.monotonic()
                timed = runtime_mod.run(gw.runtime, AgentRequest(message="go"))
                with self.assertRaises(RunTimedOut):
                    await asyncio.wait_for(timed.wait(), 5)
                self.assertLess(time.monotonic() - started, 0.2 + 1.0)
                aborted = runtime_mod.run(gw.runtime, AgentRequest(message="go", agent_id="patient"))
                await asyncio.sleep(0.05)
                self.assertTrue(aborted.abort("chat.abort"))
                with self.assertRaises(RunAborted):
                    await asyncio.wait_for(aborted.wait(), 1)
            self.assertLess(watch.worst, LAG_BOUND)

    async def test_a_provider_that_ignores_cancellation_is_settled_after_the_grace(self) -> None:
        let_go = asyncio.Event()

        async def stubborn(self: Any, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
            yield TextDelta("first ")
            while not let_go.is_set():
                try:
                    await asyncio.sleep(0.02)
                except asyncio.CancelledError:
                    continue                    # a provider bug: it swallows the cancellation
            yield TextDelta("late")

        data = base_config()
        data["agents"] = {"list": [{"id": "main", "default": True, "timeoutSeconds": 0.2}]}
        with mock.patch.object(echo.EchoProvider, "stream", stubborn):
            async with running_gateway(data) as gw:
                started = time.monotonic()
                handle = runtime_mod.run(gw.runtime, AgentRequest(message="go", session_key="stubborn"))
                with self.assertLogs("equabot_gw.runtime", "WARNING"), self.assertRaises(RunTimedOut):
                    await asyncio.wait_for(handle.wait(), 5)
                self.assertLess(time.monotonic() - started, 0.2 + lifecycle.ABORT_GRACE + 0.5)
                events = [e async for e in handle.subscribe()]
                self.assertEqual(events[-1].partial, "first ")
                let_go.set()        # the provider finishes at last: recorded as aborted, as told
                await asyncio.wait_for(self._gone(gw.runtime, handle.id), 5)
                lines = await gw.runtime.store.read_transcript("main", "stubborn")
                self.assertEqual([(l["type"], l.get("content")) for l in lines[1:]],
                                 [("user", "go"), ("aborted", "first ")])
                self.assertEqual(handle.status, "aborted")

    async def _gone(self, runtime: Any, run_id: str) -> None:
        while run_id in runtime.active:
            await asyncio.sleep(0.01)

    async def test_an_echo_of_a_million_words_leaves_the_loop_free(self) -> None:
        message = "a " * 1_000_000
        async with running_gateway() as gw, LoopWatch() as watch:
            handle = runtime_mod.run(gw.runtime, AgentRequest(message=message))
            result = await asyncio.wait_for(handle.wait(), 30)
        self.assertEqual(result.text, "Echo (turn 1): " + message)
        self.assertEqual(result.usage.completion_tokens, 1_000_003)
        self.assertEqual(result.usage.prompt_tokens, 1_000_000)
        self.assertLess(watch.worst, LAG_BOUND)

    async def test_a_reply_past_the_limit_of_a_local_provider_fails_too(self) -> None:
        async with running_gateway() as gw:
            handle = runtime_mod.run(gw.runtime, AgentRequest(message="ab " * 1_500_000))   # 4.5 MB
            with self.assertRaises(ReplyTooLarge):
                await asyncio.wait_for(handle.wait(), 30)


if __name__ == "__main__":
    unittest.main()


class RefusalAndCitationBoundsTest(unittest.TestCase):
    """An upstream's refusal counts against the reply's budget as text; its citations are capped."""

    def test_a_refusal_is_the_replys_text_after_a_marker(self) -> None:
        log = EventLog()
        output = ReplyOutput("r", "up", 100)
        room = output.add(log, RefusalDelta("No"), 100)
        room = output.add(log, RefusalDelta(", sorry."), room)
        self.assertEqual((room, log.text(), log.events[0], log.mixed), (90, "No, sorry.", REFUSING, True))
        result = output.completed(AgentResult("r", "main", "k", "Hm. " + log.text(), Usage(1, 1), "stop", "m", 1))
        self.assertEqual((result.refusal, result.answer()), ("No, sorry.", "Hm. "))
        with self.assertRaises(ReplyTooLarge):
            output.add(log, RefusalDelta("x" * 91), room)

    def test_citations_past_the_cap_are_dropped(self) -> None:
        log = EventLog()
        output = ReplyOutput("r", "up", 100)
        many = tuple(Citation(f"https://x.example/{i}", "", 0, 1) for i in range(MAX_CITATIONS + 5))
        output.add(log, Annotations(many), 100)
        output.add(log, ChoiceEvent(1, Annotations(many[:1])), 100)
        result = output.completed(AgentResult("r", "main", "k", "", Usage(1, 1), "stop", "m", 1))
        self.assertEqual(result.citations, many[:MAX_CITATIONS])
        self.assertEqual(result.extra_choices, ())      # its one citation was past the cap
        self.assertEqual([len(e.citations) for e in log.events], [MAX_CITATIONS])
