"""The per-run event log: bounded by its text, whatever the number of words; cursors stay exact.

A run of millions of one-letter words must not keep millions of event
objects: the log joins runs of deltas every ``COMPACT_EVENTS`` appends, never
across a subscriber's cursor. What each subscriber reads joins to the same
text as what was appended, in order, whether it keeps up (then it reads
every delta as it came), falls behind, or subscribes late.
"""

from __future__ import annotations

import asyncio
import random
import sys
import unittest

from equabot_gw.agents.events import COMPACT_EVENTS, Delta, Ended, EventLog, Failed, Started
from equabot_gw.agents.types import AgentResult, Usage
from equabot_gw.errors import RunAborted

STARTED = Started("run", "main", "agent:main:x", "echo/echo", 1)


def ended(text: str) -> Ended:
    return Ended(AgentResult("run", "main", "agent:main:x", text, Usage(1, 1), "stop", "echo/echo", 1))


def read_all(subscription) -> list:
    events = []
    while True:
        log = subscription._log
        if subscription._cursor == len(log.events):
            return events
        events.append(log.events[subscription._cursor])
        subscription._cursor += 1


class CompactionTest(unittest.TestCase):
    def test_a_million_deltas_without_readers_keep_a_few_thousand_events(self) -> None:
        log = EventLog()
        log.append(STARTED)
        for _ in range(1_000_000):
            log.append(Delta("a "))
        self.assertLess(len(log.events), COMPACT_EVENTS + 1_000_000 // (COMPACT_EVENTS - 1) + 2)
        self.assertEqual(log.text(), "a " * 1_000_000)
        self.assertIs(log.events[0], STARTED)

    def test_the_log_holds_about_its_text_in_memory(self) -> None:
        words = 2_000_000                              # 4 MiB of text in one-letter words
        log = EventLog()
        for _ in range(words):
            log.append(Delta("a "))
        held = sys.getsizeof(log.events) + sum(sys.getsizeof(e) + sys.getsizeof(e.text) for e in log.events)
        text_bytes = 2 * words
        self.assertLess(held, 2 * text_bytes, f"{held / 2**20:.1f} MiB for {text_bytes / 2**20:.1f} MiB of text")

    def test_a_reader_that_keeps_up_gets_every_delta_as_it_came(self) -> None:
        log = EventLog()
        reader = log.subscribe()
        seen = []
        for i in range(5 * COMPACT_EVENTS):
            log.append(Delta(f"w{i} "))
            seen.extend(read_all(reader))
        self.assertEqual([e.text for e in seen], [f"w{i} " for i in range(5 * COMPACT_EVENTS)])
        # Already read, so compacted: a late subscriber sees the same text in few events.
        late = read_all(log.subscribe())
        self.assertEqual("".join(e.text for e in late), "".join(e.text for e in seen))
        self.assertLess(len(late), 5 * COMPACT_EVENTS)

    def test_random_readers_read_exactly_what_was_appended(self) -> None:
        rng = random.Random(13)
        for trial in range(20):
            log = EventLog()
            readers = [log.subscribe() for _ in range(rng.randint(0, 4))]
            got: list[list] = [[] for _ in readers]
            appended = [STARTED]
            log.append(STARTED)
            for i in range(rng.randint(0, 6 * COMPACT_EVENTS)):
                delta = Delta(f"{i},")
                appended.append(delta)
                log.append(delta)
                if rng.random() < 0.002:
                    readers.append(log.subscribe())
                    got.append([])
                for n, reader in enumerate(readers):
                    if rng.random() < (0.9 if n == 0 else 0.01):
                        got[n].extend(read_all(reader))
            end = ended("x")
            log.finish(end)
            expected = "".join(e.text for e in appended if type(e) is Delta)
            for n, reader in enumerate(readers):
                got[n].extend(read_all(reader))
                with self.subTest(trial=trial, reader=n):
                    self.assertIs(got[n][0], STARTED)
                    self.assertIs(got[n][-1], end)
                    self.assertEqual("".join(e.text for e in got[n][1:-1]), expected)
                    self.assertTrue(all(type(e) is Delta for e in got[n][1:-1]))

    def test_subscriptions_across_awaits(self) -> None:
        async def scenario() -> tuple[str, str, int]:
            log = EventLog()
            eager, lazy = log.subscribe(), log.subscribe()

            async def keep_up() -> tuple[str, int]:
                texts, batches = [], 0
                while (batch := await eager.next_batch()) is not None:
                    batches += 1
                    texts.extend(e.text for e in batch if type(e) is Delta)
                return "".join(texts), batches

            reader = asyncio.ensure_future(keep_up())
            for i in range(3 * COMPACT_EVENTS):
                log.append(Delta(f"{i} "))
                if i % 7 == 0:
                    await asyncio.sleep(0)
            log.finish(Failed(RunAborted("test"), "partial"))
            lazy_text = "".join([e.text async for e in lazy if type(e) is Delta])
            eager_text, batches = await reader
            return eager_text, lazy_text, batches

        eager_text, lazy_text, batches = asyncio.run(scenario())
        expected = "".join(f"{i} " for i in range(3 * COMPACT_EVENTS))
        self.assertEqual(eager_text, expected)
        self.assertEqual(lazy_text, expected)
        self.assertGreater(batches, 3 * COMPACT_EVENTS // 8)


class QuietRunTest(unittest.IsolatedAsyncioTestCase):
    """A run with nothing new for long keeps no waiter of a reader that stopped waiting."""

    async def test_readers_that_time_out_or_are_cancelled_leave_no_waiter(self) -> None:
        log = EventLog()
        log.append(STARTED)
        readers = [log.subscribe() for _ in range(3)]
        for reader in readers:
            self.assertEqual(await reader.next_batch(), [STARTED])
        for _ in range(50):                     # keep-alive timeouts of an idle stream
            self.assertEqual(await readers[0].next_batch(idle_timeout=0), [])
        for _ in range(50):                     # clients that come, wait and go
            for wait in (readers[1].next_batch(), readers[2].__anext__()):
                task = asyncio.ensure_future(wait)
                await asyncio.sleep(0)
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
        self.assertEqual(log._waiters, [])
        # A reader still waiting is woken by the next event, as before.
        waiting = asyncio.ensure_future(readers[1].next_batch())
        await asyncio.sleep(0)
        self.assertEqual(len(log._waiters), 1)
        log.append(Delta("a"))
        self.assertEqual(await asyncio.wait_for(waiting, 1), [Delta("a")])
        self.assertEqual(log._waiters, [])


if __name__ == "__main__":
    unittest.main()


class LoggedToolCallsTest(unittest.TestCase):
    """A tool call's fragments as the log keeps them: every logged event moves a resumable
    stream's position, so repeats of a call's id and name, and empty fragments, are not logged."""

    def test_repeated_headers_and_empty_fragments(self) -> None:
        from equabot_gw.agents.idempotency import output_units
        from equabot_gw.agents.output import ReplyOutput
        from equabot_gw.agents.types import ChoiceEvent, ToolCallDelta
        log, output, room = EventLog(), ReplyOutput("run_1", "up", 1 << 20), 1 << 20
        sent = [ToolCallDelta(0, "c0", "f", ""), ToolCallDelta(0, "c0", "f", '{"a"'),
                ToolCallDelta(0, None, None, ""), ToolCallDelta(0, "c0", "f", ":1}"),
                ChoiceEvent(1, ToolCallDelta(0, "c1", "g", "{}")), ChoiceEvent(1, ToolCallDelta(0, "c1", "g", ""))]
        for event in sent:
            room = output.add(log, event, room)
        self.assertEqual(log.events, [ToolCallDelta(0, "c0", "f", ""), ToolCallDelta(0, None, None, '{"a"'),
                                      ToolCallDelta(0, None, None, ":1}"), ChoiceEvent(1, ToolCallDelta(0, "c1", "g", "{}"))])
        # What was gathered is unchanged, and the units are those of one header per call.
        [call] = output.tool_calls()
        self.assertEqual((call.id, call.name, call.arguments), ("c0", "f", '{"a":1}'))
        self.assertEqual(sum(map(output_units, log.events)), 1 + len('{"a":1}') + 1 + len("{}"))

    def test_a_further_choice_that_calls_tools_finishes_with_tool_calls_streamed_too(self) -> None:
        # Some upstreams say "stop" after calls; the completion says "tool_calls" for every
        # choice, and a stream (written from the log) must say the same.
        import json
        from equabot_gw.agents.output import ReplyOutput
        from equabot_gw.agents.types import ChoiceEvent, Finish, TextDelta, ToolCallDelta
        from equabot_gw.gateway.chat_stream import ChunkWriter
        log, output, room = EventLog(), ReplyOutput("run_1", "up", 1 << 20), 1 << 20
        for event in (ChoiceEvent(1, ToolCallDelta(0, "c1", "g", "{}")), ChoiceEvent(1, Finish("stop")),
                      ChoiceEvent(2, TextDelta("hi")), ChoiceEvent(2, Finish("stop"))):
            room = output.add(log, event, room)
        self.assertEqual([c.finish_reason for c in output.extra_choices()], ["tool_calls", "stop"])
        self.assertEqual(log.events[1], ChoiceEvent(1, Finish("tool_calls")))
        data = b"".join(ChunkWriter("chatcmpl-1", "m", False).mixed(log.events)).decode()
        finishes = [(c["index"], c["finish_reason"]) for line in data.splitlines() if line.startswith("data: ")
                    for c in json.loads(line[6:])["choices"] if c["finish_reason"]]
        self.assertEqual(finishes, [(1, "tool_calls"), (2, "stop")])
