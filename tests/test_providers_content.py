"""Providers beyond text: tool calls, reasoning, logprobs, choices, images, replayed from each API's documentation.

The fixtures in tests/data/providers are written from the examples each API
publishes (README there); they are replayed byte for byte (and in slices)
through a fake upstream, and each provider must turn them into the content
model's events exactly. Requests are checked field by field against the
APIs' documented shapes: what the model asks for passes through, what an API
has no equivalent for is refused by name before a run starts.
"""

from __future__ import annotations

import unittest
from typing import Any

from equabot_gw.agents.types import (
    AgentRequest, Annotations, AudioPart, ChoiceEvent, Citation, Finish, GenerationOptions, ImagePart, Logprobs,
    Message, ProviderCall, ReasoningDelta, RefusalDelta, TextDelta, TextPart, ToolCall, ToolCallDelta, ToolSpec,
    Usage,
)
from equabot_gw.agents.output import check_request
from equabot_gw.errors import ApiError, UpstreamRejected, http_status
from equabot_gw.gateway.frames import content_parts
from equabot_gw.providers.anthropic import AnthropicProvider, THINKING_BUDGETS, image_source, to_anthropic_messages
from equabot_gw.providers.command import CommandProvider
from equabot_gw.providers.openai import MAX_CITATION_TITLE_CHARS, MAX_CITATION_URL_CHARS
from tests.test_providers import DATA, FakeUpstream, HTTPProviderCase, replay, sse

WEATHER = ToolSpec("get_weather", "Get the weather", {"type": "object", "properties": {"location": {"type": "string"}}})
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def joined_calls(events: list[Any]) -> list[tuple[str | None, str | None, str]]:
    """(id, name, arguments) per call index, fragments joined as the runtime joins them."""
    calls: dict[int, list[Any]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            call = calls.setdefault(e.index, [None, None, ""])
            call[0] = call[0] or e.id
            call[1] = call[1] or e.name
            call[2] += e.arguments
    return [tuple(calls[i]) for i in sorted(calls)]  # type: ignore[misc]


def loop_call(**options: Any) -> ProviderCall:
    """Round two of a tool loop: the user's question, the model's call, the tool's result."""
    history = (Message("user", (TextPart("What's the weather here?"), ImagePart(PNG, "high"))),
               Message("assistant", "Let me check.", (ToolCall("call_1", "get_weather", '{"location": "Paris"}'),)),
               Message("tool", "18 C, sunny", tool_call_id="call_1", name="get_weather"))
    return ProviderCall("m", "Be brief.", history, 2, GenerationOptions(**options))


def fragment(index: int | None = None, call_id: str | None = None, name: str | None = None,
             arguments: str | None = None) -> dict[str, Any]:
    """One entry of a chunk's ``delta.tool_calls``, with only the fields given."""
    fn = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    out: dict[str, Any] = {"type": "function", "function": fn}
    if index is not None:
        out["index"] = index
    if call_id is not None:
        out["id"] = call_id
    return out


# (name, delta.tool_calls of each chunk, calls joined by index)
CALL_FRAGMENTS = (
    ("by index, as OpenAI sends them", [[fragment(0, "a", "f", "")], [fragment(0, arguments='{"x"')],
                                        [fragment(1, "b", "g", "{}")], [fragment(0, arguments=":1}")]],
     [("a", "f", '{"x":1}'), ("b", "g", "{}")]),
    ("by index, the id repeated", [[fragment(0, "a", "f", "{")], [fragment(0, "a", arguments="}")]],
     [("a", "f", "{}")]),
    ("no index: a new id is a new call", [[fragment(None, "a", "f", "{}")], [fragment(None, "b", "g", "[]")]],
     [("a", "f", "{}"), ("b", "g", "[]")]),
    ("no index: two calls in one chunk", [[fragment(None, "a", "f", "{}"), fragment(None, "b", "g", "[]")]],
     [("a", "f", "{}"), ("b", "g", "[]")]),
    ("no index: no id continues the call", [[fragment(None, "a", "f", '{"x"')], [fragment(arguments=":1}")]],
     [("a", "f", '{"x":1}')]),
    ("no index: the same id continues the call", [[fragment(None, "a", "f", "{")], [fragment(None, "a", arguments="}")]],
     [("a", "f", "{}")]),
    ("no index and no id at all: one call", [[fragment(name="f", arguments="{")], [fragment(arguments="}")]],
     [(None, "f", "{}")]),
)


class ReplayCase(HTTPProviderCase):
    async def replayed(self, fixture: str, call: ProviderCall | None = None, step: int | None = None) -> list[Any]:
        raw = (DATA / fixture).read_bytes()
        async with FakeUpstream(replay(raw, step=step)) as up:
            provider = self.provider(up)
            events = [e async for e in provider.stream(call or loop_call())]
        self.requests = up.requests
        return events


class OpenAIContentTest(ReplayCase):
    async def test_a_documented_tool_call_stream(self) -> None:
        for step in (None, 5):
            with self.subTest(step=step):
                events = await self.replayed("openai-chat-stream-tool-calls.sse", step=step)
                self.assertEqual(joined_calls(events), [("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather",
                                                         '{"location":"Paris, France"}')])
                self.assertEqual(events[0], ToolCallDelta(0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", ""))
                self.assertEqual(events[-1], Finish("tool_calls"))
                self.assertFalse(any(isinstance(e, TextDelta) for e in events))

    async def test_parallel_calls_keep_their_indexes(self) -> None:
        events = await self.replayed("openai-chat-stream-parallel-tool-calls.sse")
        self.assertEqual(joined_calls(events), [
            ("call_12345xyz", "get_weather", '{"location":"Paris, France"}'),
            ("call_67890abc", "get_weather", '{"location":"Bogotá, Colombia"}')])

    async def test_calls_without_an_index_are_told_apart_by_their_id(self) -> None:
        # Gemini's compatible endpoint: each parallel call whole, with its own id, no index.
        for step in (None, 7):
            with self.subTest(step=step):
                events = await self.replayed("gemini-openai-stream-parallel-tool-calls.sse", step=step)
                self.assertEqual(joined_calls(events), [("function-call-1", "get_weather", '{"city":"Paris"}'),
                                                        ("function-call-2", "get_time", '{"tz":"UTC"}')])

    async def test_tool_call_fragments_by_index_or_by_id(self) -> None:
        for name, fragments, expected in CALL_FRAGMENTS:
            with self.subTest(name):
                raw = sse(*({"choices": [{"index": 0, "delta": {"tool_calls": group}, "finish_reason": None}]}
                            for group in fragments), b"[DONE]")
                async with FakeUpstream(replay(raw)) as up:
                    events = [e async for e in self.provider(up).stream(loop_call())]
                self.assertEqual(joined_calls(events), expected)

    async def test_reasoning_content_and_usage_details(self) -> None:
        events = await self.replayed("openai-chat-stream-reasoning.sse")
        self.assertEqual("".join(e.text for e in events if isinstance(e, ReasoningDelta)),
                         "9.11 and 9.8: compare the tenths, 1 < 8.")
        self.assertEqual("".join(e.text for e in events if isinstance(e, TextDelta)), "9.8 is greater.")
        first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
        self.assertTrue(all(not isinstance(e, ReasoningDelta) for e in events[first_text:]))
        self.assertEqual(events[-2], Usage(15, 42, cached_tokens=0, reasoning_tokens=34))

    async def test_logprobs_pass_back_untouched(self) -> None:
        events = await self.replayed("openai-chat-stream-logprobs.sse")
        logprobs = [e for e in events if isinstance(e, Logprobs)]
        self.assertEqual([lp["token"] for e in logprobs for lp in e.content], ["Hello", "!"])
        self.assertEqual(logprobs[0].content[0]["top_logprobs"][1], {"token": "Hi", "logprob": -1.3190403,
                                                                     "bytes": [72, 105]})
        self.assertTrue(all(e.size > 0 for e in logprobs))
        # Each comes right after the text it belongs to.
        self.assertEqual([type(e).__name__ for e in events[:4]], ["TextDelta", "Logprobs", "TextDelta", "Logprobs"])

    async def test_a_refusal_is_told_apart_from_text(self) -> None:
        for step in (None, 5):
            with self.subTest(step=step):
                events = await self.replayed("openai-chat-stream-refusal.sse", step=step)
                self.assertFalse([e for e in events if isinstance(e, TextDelta)])
                self.assertEqual("".join(e.text for e in events if isinstance(e, RefusalDelta)),
                                 "I'm sorry, but I can't assist with that request.")
                self.assertEqual(events[-2:], [Usage(81, 11), Finish("stop")])

    async def test_text_after_a_refusal_began_is_refusal(self) -> None:
        def chunk(delta: dict[str, Any], index: int = 0) -> dict[str, Any]:
            return {"choices": [{"index": index, "delta": delta, "finish_reason": None}]}
        stream = sse(chunk({"content": "Well."}), chunk({"refusal": "No"}), chunk({"content": ", sorry."}),
                     chunk({"content": "Sure"}, 1), chunk({"refusal": "Nope", "content": "Hm."}, 1), b"[DONE]")
        async with FakeUpstream(replay(stream)) as up:
            events = [e async for e in self.provider(up).stream(loop_call())]
        self.assertEqual(events, [TextDelta("Well."), RefusalDelta("No"), RefusalDelta(", sorry."),
                                  ChoiceEvent(1, TextDelta("Sure")), ChoiceEvent(1, TextDelta("Hm.")),
                                  ChoiceEvent(1, RefusalDelta("Nope")), Finish("stop")])

    async def test_url_citations_pass_back_checked(self) -> None:
        events = await self.replayed("openai-chat-stream-annotations.sse")
        self.assertEqual("".join(e.text for e in events if isinstance(e, TextDelta)),
                         "The Equabot docs are at equabot.example.")
        self.assertEqual([e for e in events if isinstance(e, Annotations)], [Annotations((Citation(
            "https://equabot.example/docs?utm_source=openai", "Equabot documentation", 24, 39),))])

    async def test_malformed_or_oversized_citations_are_dropped(self) -> None:
        good = {"url": "https://a.example/", "title": "A", "start_index": 0, "end_index": 2}
        entries = [
            {"type": "url_citation", "url_citation": good},
            {"type": "file_citation", "url_citation": good},
            {"type": "url_citation"},
            {"type": "url_citation", "url_citation": {**good, "url": 3}},
            {"type": "url_citation", "url_citation": {**good, "url": ""}},
            {"type": "url_citation", "url_citation": {**good, "title": None}},
            {"type": "url_citation", "url_citation": {**good, "start_index": True}},
            {"type": "url_citation", "url_citation": {**good, "start_index": 3}},
            {"type": "url_citation", "url_citation": {**good, "end_index": -1}},
            {"type": "url_citation", "url_citation": {**good, "url": "https://b/" + "x" * MAX_CITATION_URL_CHARS}},
            {"type": "url_citation", "url_citation": {**good, "title": "t" * (MAX_CITATION_TITLE_CHARS + 1)}},
            "not an object",
            {"type": "url_citation", "url_citation": {**good, "title": ""}},
        ]
        chunks = [{"choices": [{"index": 0, "delta": {"content": "ok", "annotations": value}}]}
                  for value in (entries, "not a list", {"type": "url_citation"}, [])]
        async with FakeUpstream(replay(sse(*chunks, b"[DONE]"))) as up:
            events = [e async for e in self.provider(up).stream(loop_call())]
        citation = Citation("https://a.example/", "A", 0, 2)
        self.assertEqual([e for e in events if isinstance(e, Annotations)],
                         [Annotations((citation, Citation("https://a.example/", "", 0, 2)))])
        self.assertEqual("".join(e.text for e in events if isinstance(e, TextDelta)), "ok" * 4)

    async def test_further_choices_are_wrapped(self) -> None:
        events = await self.replayed("openai-chat-stream-n2.sse")
        self.assertEqual(events, [TextDelta("Yes"), ChoiceEvent(1, TextDelta("No")),
                                  ChoiceEvent(1, Finish("stop")), Finish("stop")])

    async def test_the_request_carries_everything(self) -> None:
        options = dict(tools=(WEATHER,), tool_choice={"type": "function", "name": "get_weather"},
                       parallel_tool_calls=False, response_format={"type": "json_object"}, logprobs=True,
                       top_logprobs=2, logit_bias=(("50256", -100),), presence_penalty=0.5, frequency_penalty=-0.5,
                       reasoning_effort="low", n=2, top_k=40, min_p=0.05, repetition_penalty=1.1, seed=3)
        call = loop_call(**options)
        call = ProviderCall(call.model, call.system, call.messages + (
            Message("user", (AudioPart("UklGRg==", "wav"), TextPart("and this?"))),), 2, call.options)
        await self.replayed("openai-chat-stream-answer.sse", call)
        body = self.requests[0].json
        self.assertEqual(body["messages"], [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What's the weather here?"},
                                         {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}}]},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                                         {"type": "text", "text": "and this?"}]},
        ])
        self.assertEqual(body["tools"], [{"type": "function", "function": {
            "name": "get_weather", "description": "Get the weather", "parameters": WEATHER.parameters}}])
        self.assertEqual(body["tool_choice"], {"type": "function", "function": {"name": "get_weather"}})
        for name, value in (("parallel_tool_calls", False), ("response_format", {"type": "json_object"}),
                            ("logprobs", True), ("top_logprobs", 2), ("logit_bias", {"50256": -100}),
                            ("presence_penalty", 0.5), ("frequency_penalty", -0.5), ("reasoning_effort", "low"),
                            ("n", 2), ("top_k", 40), ("min_p", 0.05), ("repetition_penalty", 1.1), ("seed", 3)):
            self.assertEqual(body[name], value, name)


class AnthropicContentTest(ReplayCase):
    api = "anthropic-messages"
    base_path = ""

    async def test_the_documented_tool_use_stream(self) -> None:
        for step in (None, 11):
            with self.subTest(step=step):
                events = await self.replayed("anthropic-messages-stream-tool-use.sse", step=step)
                self.assertEqual("".join(e.text for e in events if isinstance(e, TextDelta)),
                                 "Okay, let's check the weather for San Francisco, CA:")
                self.assertEqual(joined_calls(events), [("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather",
                                                         '{"location": "San Francisco, CA", "unit": "fahrenheit"}')])
                self.assertEqual(events[-2:], [Usage(472, 89), Finish("tool_calls")])

    async def test_the_documented_thinking_stream(self) -> None:
        events = await self.replayed("anthropic-messages-stream-thinking.sse")
        reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
        self.assertEqual("".join(e.text for e in reasoning),
                         "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3")
        self.assertEqual(reasoning[-1].signature, "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...")
        self.assertEqual([e for e in events if isinstance(e, TextDelta)], [TextDelta("27 * 453 = 12,231")])
        self.assertEqual(events[-1], Finish("stop"))

    async def test_a_call_that_streams_no_input_gets_an_empty_object(self) -> None:
        raw = (DATA / "anthropic-messages-stream-tool-use.sse").read_text()
        cut = raw.index('event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":'
                        '{"type":"input_json_delta","partial_json":"{')
        end = raw.index("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}")
        async with FakeUpstream(replay((raw[:cut] + raw[end:]).encode())) as up:
            events = [e async for e in self.provider(up).stream(loop_call())]
        self.assertEqual(joined_calls(events), [("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", "{}")])

    async def test_the_request_maps_tools_images_results_and_thinking(self) -> None:
        history = loop_call().messages + (Message("user", "thanks"),)
        signed = Message("assistant", "Sure.", reasoning="hmm", reasoning_signature="sig")
        call = ProviderCall("claude", "Be brief.", (Message("user", (ImagePart("https://x.test/a.png"),)), signed)
                            + history, 3, GenerationOptions(tools=(WEATHER,), tool_choice="required",
                                                            parallel_tool_calls=False, reasoning_effort="medium",
                                                            top_k=5))
        await self.replayed("anthropic-messages-stream.sse", call)
        body = self.requests[0].json
        self.assertEqual(body["messages"], [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                              {"type": "text", "text": "Sure."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What's the weather here?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG.split(",")[1]}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                              {"type": "tool_use", "id": "call_1", "name": "get_weather",
                                               "input": {"location": "Paris"}}]},
            # A tool result and the user's next words share one user message, the result first.
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, sunny"},
                                         {"type": "text", "text": "thanks"}]},
        ])
        self.assertEqual(body["tools"], [{"name": "get_weather", "description": "Get the weather",
                                          "input_schema": WEATHER.parameters}])
        self.assertEqual(body["tool_choice"], {"type": "any", "disable_parallel_tool_use": True})
        self.assertEqual(body["thinking"], {"type": "enabled", "budget_tokens": THINKING_BUDGETS["medium"]})
        self.assertEqual(body["max_tokens"], THINKING_BUDGETS["medium"] + 4096)
        self.assertEqual(body["top_k"], 5)

    def test_a_data_url_is_a_base64_source_whatever_its_case(self) -> None:
        # RFC 3986 §3.1: schemes are case-insensitive; RFC 2045 §5.1: so are media types.
        data = PNG.split(",")[1]
        for url in (PNG, "DATA:IMAGE/PNG;BASE64," + data, "Data:Image/Png;base64," + data):
            with self.subTest(url[:22]):
                self.assertEqual(image_source(ImagePart(url)),
                                 {"type": "base64", "media_type": "image/png", "data": data})
                # The control protocol's chat history reads it the same way.
                self.assertEqual(content_parts((ImagePart(url),)),
                                 [{"type": "image", "data": data, "mimeType": "image/png"}])
        https = "https://example.com/a.png"
        self.assertEqual(image_source(ImagePart(https)), {"type": "url", "url": https})
        self.assertEqual(content_parts((ImagePart(https),)), [{"type": "image", "url": https}])

    def test_an_empty_assistant_message_is_left_out_as_the_session_history_leaves_it(self) -> None:
        # Messages refuses a message of empty content ("all messages must have non-empty
        # content except for the optional final assistant message"); an empty reply a
        # client sends back says nothing, and a session's history holds none.
        for empty in (Message("assistant", ""), Message("assistant", (TextPart(""),))):
            with self.subTest(empty.content):
                messages, _ = to_anthropic_messages((Message("user", "hi"), empty, Message("user", "again")))
                self.assertEqual(messages, [{"role": "user", "content": "hi\n\nagain"}])
        signed = Message("assistant", "", reasoning="hmm", reasoning_signature="sig")
        messages, _ = to_anthropic_messages((Message("user", "hi"), signed, Message("user", "again")))
        self.assertEqual([m["role"] for m in messages], ["user", "assistant", "user"])

    async def test_tool_choice_mapping(self) -> None:
        for choice, parallel, expected in (
                (None, None, None), ("none", None, {"type": "none"}),
                ({"type": "function", "name": "get_weather"}, None, {"type": "tool", "name": "get_weather"}),
                (None, False, {"type": "auto", "disable_parallel_tool_use": True})):
            with self.subTest(choice=choice, parallel=parallel):
                await self.replayed("anthropic-messages-stream.sse", loop_call(
                    tools=(WEATHER,), tool_choice=choice, parallel_tool_calls=parallel))
                self.assertEqual(self.requests[0].json.get("tool_choice"), expected)

    async def test_thinking_budget_within_max_tokens(self) -> None:
        await self.replayed("anthropic-messages-stream.sse", loop_call(reasoning_effort="high", max_tokens=20000))
        self.assertEqual((self.requests[0].json["thinking"]["budget_tokens"], self.requests[0].json["max_tokens"]),
                         (THINKING_BUDGETS["high"], 20000))
        await self.replayed("anthropic-messages-stream.sse", loop_call(reasoning_effort="high", max_tokens=5000))
        self.assertEqual(self.requests[0].json["thinking"]["budget_tokens"], 4999)
        with self.assertRaises(UpstreamRejected) as caught:
            await self.replayed("anthropic-messages-stream.sse", loop_call(reasoning_effort="low", max_tokens=500))
        self.assertEqual(http_status(caught.exception), 400)

    async def test_mid_stream_errors_say_what_they_are(self) -> None:
        raw = (DATA / "anthropic-messages-stream.sse").read_text()
        cut = raw.index("event: content_block_stop")
        for kind, status, gateway in (("rate_limit_error", 429, 429), ("overloaded_error", 529, 502),
                                      ("invalid_request_error", 400, 400), ("api_error", 500, 502)):
            with self.subTest(kind=kind):
                error = ('event: error\ndata: {"type": "error", "error": {"type": "%s", "message": "it said so"}}\n\n'
                         % kind)
                async with FakeUpstream(replay((raw[:cut] + error).encode())) as up:
                    with self.assertRaises(UpstreamRejected) as caught:
                        [e async for e in self.provider(up).stream(loop_call())]
                self.assertEqual((caught.exception.upstream_status, http_status(caught.exception)), (status, gateway))
                self.assertIn("it said so", str(caught.exception))


class RefusalTest(unittest.TestCase):
    def refusal(self, provider: Any, request: AgentRequest) -> ApiError:
        with self.assertRaises(ApiError) as caught:
            check_request(request, provider, "p/m")
        self.assertEqual((caught.exception.status, caught.exception.code), (400, "unsupported_parameter"))
        return caught.exception

    def test_anthropic_refuses_what_messages_cannot_do_by_name(self) -> None:
        for name, value in (("logprobs", True), ("top_logprobs", 2), ("n", 2), ("logit_bias", (("1", 1),)),
                            ("presence_penalty", 1.0), ("frequency_penalty", 1.0), ("seed", 1),
                            ("response_format", {"type": "json_object"}), ("min_p", 0.1),
                            ("repetition_penalty", 1.1)):
            with self.subTest(name):
                exc = self.refusal(AnthropicProvider, AgentRequest("x", options=GenerationOptions(**{name: value})))
                self.assertEqual(exc.param, name)
        exc = self.refusal(AnthropicProvider, AgentRequest(input=(Message("user", (AudioPart("AA", "wav"),)),)))
        self.assertEqual(exc.param, "messages")
        self.assertIn("audio input", exc.message)

    def test_command_refuses_tools_and_parts(self) -> None:
        exc = self.refusal(CommandProvider, AgentRequest("x", options=GenerationOptions(tools=(WEATHER,))))
        self.assertEqual(exc.param, "tools")
        exc = self.refusal(CommandProvider, AgentRequest(input=(Message("user", (ImagePart(PNG),)),)))
        self.assertIn("image input", exc.message)
        exc = self.refusal(CommandProvider, AgentRequest(input=(Message("tool", "r", tool_call_id="c"),)))
        self.assertIn("tool calls and tool results", exc.message)


if __name__ == "__main__":
    unittest.main()
