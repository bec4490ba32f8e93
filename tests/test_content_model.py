"""The content model end to end inside the runtime: values, event log, transcript, history.

A scripted provider yields reasoning, text, interleaved tool-call fragments,
log probabilities and further choices; the run's result and event log must
hold them whole and in order, the transcript must record them durably (the
committed fixtures in tests/data/transcripts are read back to exact
messages, old text-only ones included), and a session's later turns must
send the earlier tool calls and results to the provider in order.
Bounds: tool-call arguments count against maxReplyBytes, the number of calls
and choices is capped, log probabilities are bounded.
"""

from __future__ import annotations

import asyncio
import tempfile
import unittest
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from equabot_gw import config as config_mod
from equabot_gw.agents import transcripts
from equabot_gw.agents.events import COMPACT_EVENTS, Delta, Ended, EventLog, Failed, Started
from equabot_gw.agents.output import MAX_TOOL_CALLS
from equabot_gw.agents.runtime import Runtime, run
from equabot_gw.agents.types import (
    NO_OPTIONS, AgentRequest, AudioPart, ChoiceEvent, Finish, GenerationOptions, ImagePart, Logprobs,
    Message, ProviderCall, ProviderEvent, ReasoningDelta, SessionHistory, TextDelta, TextPart, ToolCall,
    ToolCallDelta, ToolSpec, Usage,
)
from equabot_gw.errors import ApiError, ReplyTooLarge, UpstreamError
from equabot_gw.providers import Provider

DATA = Path(__file__).parent / "data" / "transcripts"
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = ToolSpec("get_weather", "The weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})


class Scripted(Provider):
    """Yields the events of ``script`` (a list per call, consumed in order) and keeps each call."""

    api = "scripted"
    supported_options = frozenset({"tools", "tool_choice", "logprobs", "n", "reasoning_effort"})

    def __init__(self, name: str = "scripted", max_reply_bytes: int | None = None) -> None:
        super().__init__(name, None)
        if max_reply_bytes is not None:
            self.max_reply_bytes = max_reply_bytes
        self.script: list[list[ProviderEvent]] = []
        self.calls: list[ProviderCall] = []

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        self.calls.append(call)
        for event in self.script.pop(0):
            yield event


def tool_round() -> list[ProviderEvent]:
    """Reasoning, a sentence, then two calls whose fragments interleave (as OpenAI may send them)."""
    return [
        ReasoningDelta("Two cities, "), ReasoningDelta("two calls.", signature="sig-1"),
        TextDelta("Let me look."),
        ToolCallDelta(0, "call_a", "get_weather", ""), ToolCallDelta(1, "call_b", "get_weather", '{"ci'),
        ToolCallDelta(0, None, None, '{"city": '), ToolCallDelta(1, None, None, 'ty": "Oslo"}'),
        ToolCallDelta(0, None, None, '"Paris"}'),
        Logprobs(({"token": "Let", "logprob": -0.1, "bytes": [76, 101, 116], "top_logprobs": []},), 80),
        Usage(50, 20, cached_tokens=10, reasoning_tokens=5), Finish("stop"),
    ]


class ContentRuntimeCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.state = Path(tmp.name)
        await self.open()

    async def open(self) -> None:
        self.runtime = Runtime(config_mod.from_data({}, env={}), self.state)
        await self.runtime.start()
        self.provider = Scripted()
        self.runtime.providers["scripted"] = self.provider

    async def asyncTearDown(self) -> None:
        await self.runtime.stop(0)

    def request(self, message: str = "", **fields: Any) -> AgentRequest:
        return AgentRequest(message=message, model="scripted/m", **fields)


class ToolRoundTest(ContentRuntimeCase):
    async def test_fragments_join_into_calls_in_result_log_and_transcript(self) -> None:
        self.provider.script.append(tool_round())
        handle = run(self.runtime, self.request("weather?", session_key="s1",
                                                options=GenerationOptions(tools=(WEATHER,))))
        events = [e async for e in handle.subscribe()]
        result = await handle.wait()
        self.assertEqual(result.tool_calls, (ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
                                             ToolCall("call_b", "get_weather", '{"city": "Oslo"}')))
        # The upstream said "stop" with calls: the result says what the reply is.
        self.assertEqual((result.text, result.finish_reason), ("Let me look.", "tool_calls"))
        self.assertEqual((result.reasoning, result.reasoning_signature), ("Two cities, two calls.", "sig-1"))
        self.assertEqual(result.logprobs, ({"token": "Let", "logprob": -0.1, "bytes": [76, 101, 116],
                                            "top_logprobs": []},))
        self.assertEqual(result.usage.as_dict(), {
            "prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70,
            "prompt_tokens_details": {"cached_tokens": 10}, "completion_tokens_details": {"reasoning_tokens": 5}})
        # The log holds every output event as the provider yielded it, in order.
        self.assertIsInstance(events[0], Started)
        self.assertIsInstance(events[-1], Ended)
        self.assertEqual(events[1:-1], tool_round()[:-2])
        self.assertTrue(handle.events.mixed)
        self.assertEqual(handle.events.text(), "Let me look.")
        lines = await self.runtime.store.read_transcript("main", "s1")
        self.assertEqual([line["type"] for line in lines], ["session", "user", "assistant"])
        self.assertEqual(lines[2]["toolCalls"], [
            {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"id": "call_b", "name": "get_weather", "arguments": '{"city": "Oslo"}'}])
        self.assertEqual((lines[2]["reasoning"], lines[2]["reasoningSignature"], lines[2]["finishReason"]),
                         ("Two cities, two calls.", "sig-1", "tool_calls"))

    async def round_two(self) -> ProviderCall:
        """Round 2 of the loop: the tool results as input; the provider's view of it."""
        self.provider.script.append([TextDelta("Sunny and snowy."), Finish("stop")])
        results = (Message("tool", "sunny", tool_call_id="call_a"),
                   Message("tool", (TextPart("snow"),), tool_call_id="call_b"))
        handle = run(self.runtime, self.request(session_key="s1", input=results,
                                                options=GenerationOptions(tools=(WEATHER,))))
        result = await handle.wait()
        self.assertEqual((result.text, result.tool_calls, result.finish_reason), ("Sunny and snowy.", (), "stop"))
        return self.provider.calls[-1]

    def assertLoopHistory(self, call: ProviderCall) -> None:
        self.assertEqual(call.messages, (
            Message("user", "weather?"),
            Message("assistant", "Let me look.", (ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
                                                  ToolCall("call_b", "get_weather", '{"city": "Oslo"}')),
                    reasoning="Two cities, two calls.", reasoning_signature="sig-1"),
            # Names are filled in from the calls the results answer.
            Message("tool", "sunny", tool_call_id="call_a", name="get_weather"),
            Message("tool", (TextPart("snow"),), tool_call_id="call_b", name="get_weather"),
        ))
        self.assertEqual(call.turn, 2)

    async def test_later_turns_send_calls_and_results_in_order(self) -> None:
        self.provider.script.append(tool_round())
        await run(self.runtime, self.request("weather?", session_key="s1",
                                             options=GenerationOptions(tools=(WEATHER,)))).wait()
        self.assertLoopHistory(await self.round_two())
        # A third turn sees all of it, the answer last.
        self.provider.script.append([TextDelta("ok"), Finish("stop")])
        await run(self.runtime, self.request("thanks", session_key="s1")).wait()
        third = self.provider.calls[-1].messages
        self.assertEqual(third[-2:], (Message("assistant", "Sunny and snowy."), Message("user", "thanks")))
        self.assertEqual(len(third), 6)

    async def test_the_loop_survives_a_restart_between_rounds(self) -> None:
        self.provider.script.append(tool_round())
        await run(self.runtime, self.request("weather?", session_key="s1",
                                             options=GenerationOptions(tools=(WEATHER,)))).wait()
        await self.runtime.stop(0)
        await self.open()           # a new runtime on the same state dir: history from the transcript
        self.assertLoopHistory(await self.round_two())

    async def test_client_history_is_the_context_and_the_transcript_only_records(self) -> None:
        self.provider.script.append([TextDelta("one"), Finish("stop")])
        await run(self.runtime, self.request("first", session_key="s2")).wait()
        edited = (Message("user", "first, edited"), Message("assistant", "one, edited"))
        self.provider.script.append([TextDelta("two"), Finish("stop")])
        await run(self.runtime, self.request("second", session_key="s2", context=edited,
                                             client_history=True)).wait()
        call = self.provider.calls[-1]
        self.assertEqual(call.messages, (*edited, Message("user", "second")))
        self.assertEqual(call.turn, 2)      # turns are still counted from the transcript
        history = await self.runtime.store.history("main", "agent:main:s2")
        self.assertEqual([m.text() for m in history.messages], ["first", "one", "second", "two"])

    async def test_an_aborted_round_records_no_partial_call(self) -> None:
        gate = asyncio.Event()

        class Stalling(Scripted):
            async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
                yield ToolCallDelta(0, "call_x", "get_weather", '{"ci')
                await gate.wait()
                yield Finish("tool_calls")

        self.runtime.providers["scripted"] = Stalling()
        handle = run(self.runtime, self.request("weather?", session_key="s3",
                                                options=GenerationOptions(tools=(WEATHER,))))
        async for event in handle.subscribe():
            if isinstance(event, ToolCallDelta):
                break
        handle.abort("test")
        with self.assertRaises(Exception):
            await handle.wait()
        lines = await self.runtime.store.read_transcript("main", "s3")
        self.assertEqual([line["type"] for line in lines], ["session", "user", "aborted"])
        self.assertNotIn("toolCalls", lines[2])


class ChoicesTest(ContentRuntimeCase):
    async def test_further_choices_are_gathered_apart_from_choice_zero(self) -> None:
        self.provider.script.append([
            TextDelta("A"), ChoiceEvent(1, TextDelta("B")), ChoiceEvent(1, ReasoningDelta("why B")),
            ChoiceEvent(2, ToolCallDelta(0, "call_c", "f", "{}")), TextDelta("a"),
            ChoiceEvent(1, Finish("length")), ChoiceEvent(2, Finish("stop")),
            ChoiceEvent(1, Logprobs(({"token": "B"},), 20)), Usage(3, 6), Finish("stop")])
        handle = run(self.runtime, self.request("x", options=GenerationOptions(n=3)))
        result = await handle.wait()
        self.assertEqual(result.text, "Aa")
        self.assertEqual([(c.index, c.text, c.finish_reason, c.reasoning, c.tool_calls, c.logprobs)
                          for c in result.extra_choices],
                         [(1, "B", "length", "why B", (), ({"token": "B"},)),
                          (2, "", "tool_calls", "", (ToolCall("call_c", "f", "{}"),), None)])
        self.assertEqual(result.tool_calls, ())


class BoundsTest(ContentRuntimeCase):
    async def failure(self, events: list[ProviderEvent], limit: int = 1000) -> BaseException:
        provider = Scripted(max_reply_bytes=limit)
        provider.script.append(events)
        self.runtime.providers["scripted"] = provider
        handle = run(self.runtime, self.request("x", options=GenerationOptions(tools=(WEATHER,))))
        with self.assertRaises(UpstreamError) as caught:
            await handle.wait()
        return caught.exception

    async def test_arguments_count_against_max_reply_bytes(self) -> None:
        exc = await self.failure([TextDelta("x" * 600), ToolCallDelta(0, "c", "f", "y" * 500), Finish("stop")])
        self.assertIsInstance(exc, ReplyTooLarge)
        exc = await self.failure([ReasoningDelta("é" * 501), Finish("stop")])    # 1002 bytes
        self.assertIsInstance(exc, ReplyTooLarge)
        exc = await self.failure([ReasoningDelta("", signature="s" * 600), ReasoningDelta("", signature="t" * 600),
                                  Finish("stop")])
        self.assertIsInstance(exc, ReplyTooLarge)
        exc = await self.failure([ToolCallDelta(0, "c", "f", "y" * 600)] + [TextDelta("z")] * 500
                                 + [Finish("stop")])
        self.assertIsInstance(exc, ReplyTooLarge)

    async def test_tool_calls_and_logprobs_are_capped(self) -> None:
        exc = await self.failure([ToolCallDelta(i, f"c{i}", "f", "") for i in range(MAX_TOOL_CALLS + 1)]
                                 + [Finish("stop")], limit=10**6)
        self.assertIn(f"more than {MAX_TOOL_CALLS} tool calls", str(exc))
        exc = await self.failure([Logprobs(({},), 3000), Logprobs(({},), 3000)], limit=1000)
        self.assertIn("log probabilities over 4000 bytes", str(exc))


class InputRefusalTest(ContentRuntimeCase):
    async def test_a_provider_refuses_input_it_cannot_take_by_name(self) -> None:
        class TextOnly(Scripted):
            accepts = frozenset()

        self.runtime.providers["scripted"] = TextOnly()
        cases = (
            ("image", (Message("user", (TextPart("see"), ImagePart(IMAGE))),), (), "image input"),
            ("audio", (Message("user", (AudioPart("AAAA", "wav"),)),), (), "audio input"),
            ("tool result", (Message("tool", "r", tool_call_id="c"),), (), "tool calls and tool results"),
            ("call in context", (Message("user", "go"),),
             (Message("assistant", "", (ToolCall("c", "f", "{}"),)),), "tool calls and tool results"),
        )
        for name, new, context, words in cases:
            with self.subTest(name), self.assertRaises(ApiError) as caught:
                run(self.runtime, self.request(input=new, context=context))
            exc = caught.exception
            self.assertEqual((exc.status, exc.code, exc.param), (400, "unsupported_parameter", "messages"))
            self.assertIn(words, exc.message)
        self.assertEqual(self.runtime.active, {})


class EventLogTest(unittest.TestCase):
    def test_a_mixed_log_compacts_each_kind_and_keeps_order(self) -> None:
        log = EventLog()
        log.mixed = True
        log.append(Started("r", "a", "k", "m", 1))
        for i in range(COMPACT_EVENTS - 1):        # the last append compacts the log
            kind = (i // 100) % 4
            log.append(TextDelta("t") if kind == 0 else ReasoningDelta("r") if kind == 1 else
                       ToolCallDelta(i // 400, "id" if i % 400 == 200 else None, None, "a") if kind == 2
                       else ChoiceEvent(1, TextDelta("c")))
        self.assertLess(len(log.events), 20)
        texts = "".join(e.text for e in log.events if type(e) is Delta)
        self.assertEqual(texts, "t" * sum(1 for i in range(COMPACT_EVENTS - 1) if (i // 100) % 4 == 0))
        self.assertEqual(log.text(), texts)
        calls = [e for e in log.events if type(e) is ToolCallDelta]
        self.assertEqual([(c.index, c.id, len(c.arguments)) for c in calls], [(0, "id", 100), (1, "id", 100),
                                                                                (2, "id", 23)])
        kinds = [type(e).__name__ for e in log.events[1:]]
        self.assertEqual(kinds[:4], ["TextDelta", "ReasoningDelta", "ToolCallDelta", "ChoiceEvent"])

    def test_a_text_only_log_stays_unmixed(self) -> None:
        log = EventLog()
        log.append(Started("r", "a", "k", "m", 1))
        for _ in range(10):
            log.append(TextDelta("w "))
        self.assertFalse(log.mixed)
        self.assertEqual(log.text(), "w " * 10)


class TranscriptFormatTest(unittest.TestCase):
    def read(self, name: str) -> SessionHistory:
        lines = transcripts.read_file_lines(str(DATA / name))
        return transcripts.fold(SessionHistory(), lines)

    def test_the_current_format_replays_exactly(self) -> None:
        history = self.read("content-model.jsonl")
        calls = (ToolCall("call_a1", "get_weather", '{"city": "Paris"}'),
                 ToolCall("call_b2", "get_weather", '{"city": "Oslo"}'))
        self.assertEqual(history.messages, (
            Message("user", "You help with the weather."), Message("assistant", "Ask away."),
            Message("user", (TextPart("What is the weather in Paris and in Oslo? Here is the sky:"),
                             ImagePart(IMAGE, "low"))),
            Message("assistant", "", calls, reasoning="Two cities: two calls."),
            Message("tool", "sunny, 24 C", tool_call_id="call_a1", name="get_weather"),
            Message("tool", (TextPart("snow, -3 C"),), tool_call_id="call_b2", name="get_weather"),
            Message("assistant", "Paris is sunny, Oslo is snowing."),
            # the error turn adds nothing; the aborted one its input and partial reply
            Message("user", (TextPart("Listen:"),
                             AudioPart("UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=", "wav"))),
            Message("assistant", "Here"),
        ))
        self.assertEqual(history.assistant_turns, 2)

    def test_old_text_only_transcripts_still_read(self) -> None:
        history = self.read("text-only.jsonl")
        self.assertEqual(history.messages, (
            Message("user", "earlier question"), Message("assistant", "earlier answer"),
            Message("tool", "a result without an id"),
            Message("user", "hello"), Message("assistant", "Echo (turn 1): hello"),
            Message("user", "again"),
            Message("user", "once more"), Message("assistant", "Echo (turn 2): once more"),
        ))
        self.assertEqual(history.assistant_turns, 2)

    def test_lines_round_trip_and_a_torn_turn_counts_for_nothing(self) -> None:
        lines = transcripts.read_file_lines(str(DATA / "content-model.jsonl"))
        data = transcripts.encode(lines)
        self.assertEqual(data, (DATA / "content-model.jsonl").read_bytes())
        torn = transcripts.parse_lines(data[:data.index(b'{"type":"assistant","runId":"run_2"')])[0]
        history = transcripts.fold(SessionHistory(), torn)
        self.assertEqual(history.messages[-1].tool_calls[1].id, "call_b2")   # round 2 never happened
        self.assertEqual(history.assistant_turns, 1)

    def test_hand_edited_lines_never_fail_the_read(self) -> None:
        lines = [
            {"type": "user", "runId": "r", "content": [{"type": "image"}, 7, {"type": "text", "text": "ok"}]},
            {"type": "tool", "runId": "r", "toolCallId": 5, "content": {"x": 1}},
            {"type": "assistant", "runId": "r", "content": "fine", "toolCalls": [{"id": 1}, "x"],
             "reasoning": ["no"]},
        ]
        history = transcripts.fold(SessionHistory(), lines)
        self.assertEqual(history.messages, (Message("user", (TextPart("ok"),)), Message("assistant", "fine")))


class ValuesTest(unittest.TestCase):
    def test_plain_text_stays_a_str_and_parts_give_their_text(self) -> None:
        self.assertEqual(Message("user", "hi").text(), "hi")
        self.assertEqual(Message("user", (TextPart("a"), ImagePart("https://x/y.png"), TextPart("b"))).text(), "ab")
        self.assertEqual(AgentRequest(message="hi").turn_input(), (Message("user", "hi"),))
        self.assertIs(AgentRequest().options, NO_OPTIONS)
        self.assertEqual(GenerationOptions().requested(), ())
        self.assertEqual(GenerationOptions(tools=(WEATHER,), n=2, logit_bias=(("50256", -100),)).requested(),
                         ("logit_bias", "n", "tools"))
        self.assertEqual(GenerationOptions(tool_choice={"type": "function", "name": "f"}).forced_tool(), "f")
        self.assertEqual(Usage(1, 2).as_dict(), {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})


if __name__ == "__main__":
    unittest.main()
