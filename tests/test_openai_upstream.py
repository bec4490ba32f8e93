"""What clients of both OpenAI doors see of an OpenAI-compatible upstream, end to end.

An in-process gateway whose default agent uses the ``openai-completions``
provider against a fake upstream that answers as api.openai.com and Gemini's
compatible endpoint do: OpenAI's reasoning models refuse ``max_tokens``, a
refusal carries an error ``code`` and ``param``, Gemini streams parallel tool
calls without ``tool_calls[].index``, a model refuses in ``delta.refusal``
(structured outputs), a search model cites pages in ``delta.annotations``.
The user message names the answer.
"""

from __future__ import annotations

import asyncio
import json
import unittest
from typing import Any

from equabot_gw.agents.events import Delta, Failed
from equabot_gw.agents.types import GenerationOptions
from equabot_gw.config import ProviderConfig
from equabot_gw.conformance.jsonschema import Validator
from equabot_gw.errors import ApiError, UpstreamError, UpstreamRejected
from equabot_gw.gateway import chat_content, chat_stream, responses_input, responses_output
from equabot_gw.gateway.chat_stream import ChunkWriter
from equabot_gw.providers import create_provider
from tests.support import TOKEN, error_of, running_gateway, split_responses
from tests.test_faults import SSE_HEAD, FakeUpstream, chunk, sse_events
from tests.test_responses import parse_events, responses_config
from tests.test_stream_writer import parse


def error_answer(status: int, message: str, param: str | None, code: Any) -> bytes:
    payload = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                    "param": param, "code": code}}).encode()
    return (f"HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
            f"content-length: {len(payload)}\r\n\r\n").encode() + payload


# The user message's first word -> what the upstream answers (as api.openai.com words it).
REFUSALS = {
    "ctx": (400, "This model's maximum context length is 128000 tokens. However, your messages resulted "
                 "in 200000 tokens.", "messages", "context_length_exceeded"),
    "cf": (400, "Your request was rejected as a result of our safety system.", "prompt",
           "content_policy_violation"),
    "rl": (429, "Rate limit reached for gpt-4o-mini", None, "rate_limit_exceeded"),
    "odd": (400, "Odd fields", "x" * 300, "has spaces\r\nand lines"),
    "number": (400, "A numeric code", None, 400),
    "denied": (401, "Incorrect API key provided", None, "invalid_api_key"),
}


def stream_of(*deltas: dict[str, Any]) -> bytes:
    data = b"".join(chunk(b"data: " + json.dumps({
        "id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if not delta else None}]}).encode()
        + b"\n\n") for delta in (*deltas, {}))
    return SSE_HEAD + data + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


GEMINI_CALLS = stream_of(
    {"role": "assistant", "tool_calls": [{"id": "function-call-1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "assistant", "tool_calls": [{"id": "function-call-2", "type": "function", "function": {
        "name": "get_time", "arguments": '{"tz":"UTC"}'}}]})

# A server that gives its calls no id (some local OpenAI-compatible servers do not).
ANONYMOUS_CALL = stream_of(
    {"role": "assistant", "content": None,
     "tool_calls": [{"index": 0, "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris"}'}}]})


REFUSAL = "I'm sorry, I can't help with that."
REFUSING = stream_of({"role": "assistant", "content": None, "refusal": ""},
                     *({"refusal": word} for word in ("I'm", " sorry,", " I", " can't", " help", " with", " that.")))
CITED_TEXT = "See example.com."
CITATION = {"url": "https://example.com/?utm_source=openai", "title": "Example", "start_index": 4, "end_index": 15}
CITING = stream_of({"role": "assistant", "content": ""}, {"content": "See "}, {"content": "example.com."},
                   {"annotations": [{"type": "url_citation", "url_citation": CITATION},
                                    {"type": "url_citation", "url_citation": {"url": 7}}]})
CHAT_SCHEMAS = Validator.openai()
RESPONSES_SCHEMAS = Validator.openai_responses()


def user_text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else " ".join(part.get("text", "") for part in content)


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
    word = user_text(body).split(" ")[0]
    if body["model"].startswith(("o1", "o3", "o4", "gpt-5")) and "max_tokens" in body:
        writer.write(error_answer(400, "Unsupported parameter: 'max_tokens' is not supported with this "
                                       "model. Use 'max_completion_tokens' instead.", "max_tokens",
                                  "unsupported_parameter"))
    elif word in REFUSALS:
        writer.write(error_answer(*REFUSALS[word]))
    elif word == "gem":
        writer.write(GEMINI_CALLS)
    elif word == "anon":
        writer.write(ANONYMOUS_CALL)
    elif word == "refuse":
        writer.write(REFUSING)
    elif word == "cite":
        writer.write(CITING)
    else:
        writer.write(stream_of({"role": "assistant", "content": "ok"}))
    await writer.drain()


def gateway_data(up: FakeUpstream) -> dict[str, Any]:
    data = responses_config()
    data["agents"] = {"defaults": {"model": "up/gpt-4o-mini"}}
    data["models"] = {"providers": {"up": {"api": "openai-completions", "baseUrl": up.base_url, "apiKey": "sk-x"}}}
    return data


TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
         for name in ("get_weather", "get_time")]


class UpstreamCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.up = await FakeUpstream(upstream).__aenter__()
        self.addAsyncCleanup(self.up.__aexit__, None, None, None)
        cm = running_gateway(gateway_data(self.up))
        self.gw = await cm.__aenter__()
        self.addAsyncCleanup(cm.__aexit__, None, None, None)

    async def post(self, path: str, body: dict[str, Any], model: str | None = None
                   ) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` as JSON on a fresh connection (``model``: the x-equabot-model header)."""
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n"
                + (f"x-equabot-model: {model}\r\n" if model else "") + "\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.gw.server.port)
        try:
            writer.write(head.encode() + data)
            raw = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        [(status, headers, payload)] = split_responses(raw)
        return status, headers, payload

    async def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET ``path`` on a fresh connection."""
        head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Connection: close\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.gw.server.port)
        try:
            writer.write(head.encode())
            raw = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        [(status, headers, payload)] = split_responses(raw)
        return status, headers, payload

    async def chat(self, text: str, model: str | None = None, **fields: Any) -> tuple[int, dict[str, str], bytes]:
        return await self.post("/v1/chat/completions", {"model": "equabot", **fields,
                                                         "messages": [{"role": "user", "content": text}]}, model)

    async def respond(self, text: str, model: str | None = None, **fields: Any) -> tuple[int, dict[str, str], bytes]:
        return await self.post("/v1/responses", {"model": "equabot", "input": text, **fields}, model)


class TokenLimitTest(UpstreamCase):
    async def test_the_upstream_gets_the_limit_under_the_clients_name(self) -> None:
        for field in ("max_tokens", "max_completion_tokens"):
            with self.subTest(field):
                status, _, body = await self.chat("hi", **{field: 100})
                self.assertEqual(status, 200, body)
                sent = self.up.bodies[-1]
                self.assertEqual(sent[field], 100)
                self.assertEqual({"max_tokens", "max_completion_tokens"} & set(sent), {field})

    async def test_a_reasoning_model_takes_max_completion_tokens(self) -> None:
        status, _, body = await self.chat("hi", "up/o3-mini", max_completion_tokens=100)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "ok")

    async def test_max_output_tokens_goes_as_max_completion_tokens(self) -> None:
        status, _, body = await self.respond("hi", "up/o3-mini", max_output_tokens=100)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["status"], "completed")
        sent = self.up.bodies[-1]
        self.assertEqual(sent["max_completion_tokens"], 100)
        self.assertNotIn("max_tokens", sent)

    async def test_both_names_at_once_are_refused_as_openai_does(self) -> None:
        status, _, body = await self.chat("hi", max_tokens=50, max_completion_tokens=100)
        self.assertEqual(status, 400, body)
        error = error_of(body)
        self.assertEqual(error, {"message": "Setting 'max_tokens' and 'max_completion_tokens' at the same "
                                            "time is not supported.", "type": "invalid_request_error",
                                 "param": "max_tokens", "code": "invalid_parameter_combination"})
        self.assertEqual(self.up.requests, 0)
        # A null one is not sent.
        status, _, body = await self.chat("hi", max_tokens=None, max_completion_tokens=100)
        self.assertEqual(status, 200, body)


class IndexlessCallsTest(UpstreamCase):
    async def test_parallel_calls_without_an_index_stay_apart(self) -> None:
        expected = [("function-call-1", "get_weather", '{"city":"Paris"}'),
                    ("function-call-2", "get_time", '{"tz":"UTC"}')]
        status, _, body = await self.chat("gem weather and time", tools=TOOLS)
        self.assertEqual(status, 200, body)
        choice = json.loads(body)["choices"][0]
        self.assertEqual([(c["id"], c["function"]["name"], c["function"]["arguments"])
                          for c in choice["message"]["tool_calls"]], expected)
        self.assertEqual(choice["finish_reason"], "tool_calls")
        status, _, body = await self.chat("gem weather and time", tools=TOOLS, stream=True)
        calls: dict[int, list[str]] = {}
        for event in sse_events(body)[:-1]:
            for delta in event["choices"][0]["delta"].get("tool_calls", ()):
                call = calls.setdefault(delta["index"], ["", "", ""])
                call[0] += delta.get("id", "")
                call[1] += delta.get("function", {}).get("name", "")
                call[2] += delta.get("function", {}).get("arguments", "")
        self.assertEqual([tuple(calls[i]) for i in sorted(calls)], expected)

    async def test_a_call_without_an_id_gets_one_streamed_too(self) -> None:
        # The gateway names the call; a streamed client needs that name on the call's
        # first fragment (with its type), as the one it sends back with the result,
        # and the session's transcript must know the call by the same id.
        status, _, body = await self.chat("anon weather", tools=TOOLS)
        self.assertEqual(status, 200, body)
        [call] = json.loads(body)["choices"][0]["message"]["tool_calls"]
        self.assertRegex(call["id"], r"^call_\S+_0$")
        status, _, body = await self.chat("anon weather", tools=TOOLS, stream=True, user="anon-1")
        self.assertEqual(status, 200, body)
        fragments = [f for c in chat_chunks(body) for f in c["choices"][0]["delta"].get("tool_calls", ())]
        self.assertEqual((fragments[0]["type"], fragments[0]["function"]["name"]), ("function", "get_weather"))
        call_id = fragments[0]["id"]
        self.assertRegex(call_id, r"^call_\S+_0$")
        self.assertEqual([f for f in fragments[1:] if "id" in f], [])
        arguments = "".join(f["function"]["arguments"] for f in fragments)
        self.assertEqual(arguments, '{"city":"Paris"}')
        status, _, body = await self.post("/v1/chat/completions", {"model": "equabot", "user": "anon-1", "tools": TOOLS, "messages": [
            {"role": "user", "content": "anon weather"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "sunny"}]})
        self.assertEqual(status, 200, body)
        sent = self.up.bodies[-1]["messages"]
        self.assertEqual([m["tool_calls"][0]["id"] for m in sent if m.get("tool_calls")], [call_id])
        self.assertEqual(sent[-1], {"role": "tool", "tool_call_id": call_id, "content": "sunny"})


# (user message, status, code, param) as clients of both doors get them: the upstream's
# code and param where its status is passed on, checked; the gateway's own elsewhere.
ERROR_FIELDS = (
    ("ctx", 400, "context_length_exceeded", "messages"),
    ("cf", 400, "content_policy_violation", "prompt"),
    ("rl", 429, "rate_limit_exceeded", None),
    ("odd", 400, "upstream", None),           # a param past 128 characters, a code with spaces
    ("number", 400, "upstream", None),        # not a string
    ("denied", 502, "upstream", None),        # the gateway's key, not the client's
)


class UpstreamErrorTest(UpstreamCase):
    async def test_the_upstreams_error_code_reaches_the_client(self) -> None:
        for word, status, code, param in ERROR_FIELDS:
            upstream_status, message = REFUSALS[word][:2]
            expected = f"provider 'up': upstream answered {upstream_status}: {message}"
            for door in ("chat", "chat stream", "responses", "responses stream"):
                with self.subTest(word, door=door):
                    send = self.chat if door.startswith("chat") else self.respond
                    got, headers, body = await send(f"{word} please", stream=door.endswith("stream"))
                    self.assertEqual(got, status, body)
                    error = error_of(body)
                    self.assertEqual((error["code"], error["param"], error["message"]), (code, param, expected))
                    self.assertEqual(headers.get("retry-after"), "7" if status == 429 else None)

    def test_the_fields_of_a_run_error(self) -> None:
        for word, _, code, param in ERROR_FIELDS:
            with self.subTest(word):
                upstream_status, message, sent_param, sent_code = REFUSALS[word]
                fields = error_fields_of(sent_code, sent_param)
                exc = UpstreamRejected("up", upstream_status, message, code=fields[0], param=fields[1])
                self.assertEqual((chat_stream.error_code(exc), chat_stream.error_param(exc)), (code, param))
        self.assertEqual(chat_stream.error_code(UpstreamError("up", "garbage")), "upstream")
        self.assertIsNone(chat_stream.error_param(UpstreamError("up", "garbage")))

    def test_a_streamed_error_event_carries_the_code_and_param(self) -> None:
        exc = UpstreamRejected("up", 400, "too long", code="context_length_exceeded", param="messages")
        [piece] = ChunkWriter("chatcmpl-1", "equabot", False).pieces([Delta("part"), Failed(exc, "part")])
        error = parse([piece])[-1]["error"]
        self.assertEqual((error["code"], error["param"], error["type"]),
                         ("context_length_exceeded", "messages", "invalid_request_error"))

    def test_a_failed_response_keeps_a_code_of_its_own_kind(self) -> None:
        for code, expected in (("invalid_image_url", "invalid_image_url"), ("context_length_exceeded", "invalid_prompt"),
                               (None, "invalid_prompt")):
            with self.subTest(code):
                exc = UpstreamRejected("up", 400, "no", code=code)
                self.assertEqual(responses_output.error_object(exc)["code"], expected)
        self.assertEqual(responses_output.error_object(UpstreamRejected("up", 403, "no", code="invalid_image_url")),
                         {"code": "server_error", "message": "provider 'up': upstream answered 403: no"})


def error_fields_of(code: Any, param: Any) -> tuple[str | None, str | None]:
    """What the provider keeps of an upstream error body's code and param."""
    provider = create_provider("up", ProviderConfig(api="openai-completions", api_key="sk-secret-key"))
    return provider.error_fields({"error": {"message": "x", "code": code, "param": param}})


class ErrorFieldsTest(unittest.TestCase):
    def test_only_short_safe_words_are_kept(self) -> None:
        for value, kept in (("context_length_exceeded", True), ("messages[2].content[0].image_url", True),
                            ("x" * 128, True), ("x" * 129, False), ("", False), ("a b", False),
                            ("a\r\nb", False), ('a"b', False), ("é", False), (400, False), (None, False),
                            (["a"], False), ("sk-secret-key", False)):
            with self.subTest(value):
                self.assertEqual(error_fields_of(value, value), (value, value) if kept else (None, None))
        provider = create_provider("up", ProviderConfig(api="openai-completions"))
        for document in (None, {}, {"error": "a string"}, {"error": ["a"]}):
            self.assertEqual(provider.error_fields(document), (None, None))


class OptionsTest(unittest.TestCase):
    def test_the_doors_keep_the_name_of_the_limit(self) -> None:
        self.assertEqual(chat_content.options_from({"max_tokens": 5}).max_tokens_field, "max_tokens")
        self.assertEqual(chat_content.options_from({"max_completion_tokens": 5}).max_tokens_field,
                         "max_completion_tokens")
        self.assertEqual(responses_input.options_from({"max_output_tokens": 16}).max_tokens_field,
                         "max_completion_tokens")
        with self.assertRaises(ApiError) as cm:
            chat_content.options_from({"max_tokens": 5, "max_completion_tokens": 5})
        self.assertEqual((cm.exception.status, cm.exception.code, cm.exception.param),
                         (400, "invalid_parameter_combination", "max_tokens"))

    def test_only_the_two_names_are_taken(self) -> None:
        with self.assertRaises(ValueError):
            GenerationOptions(max_tokens=5, max_tokens_field="max_output_tokens")


if __name__ == "__main__":
    unittest.main()


def chat_chunks(body: bytes) -> list[dict[str, Any]]:
    """The chunks of a streamed completion, each checked against OpenAI's schema."""
    chunks = sse_events(body)[:-1]
    for chunk_ in chunks:
        assert CHAT_SCHEMAS.errors(chunk_, "CreateChatCompletionStreamResponse") == [], chunk_
    return chunks


def response_events(body: bytes) -> list[dict[str, Any]]:
    """The events of a streamed response, each checked against OpenAI's schema."""
    events = [data for _, data in parse_events(body)]
    for event in events:
        assert RESPONSES_SCHEMAS.errors(event, "ResponseStreamEvent") == [], event
    return events


def whole_events(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(type, sequence_number) of each event but the deltas (a stored Response replays its text whole)."""
    return [(e["type"], e["sequence_number"]) for e in events if not e["type"].endswith(".delta")]


class RefusalTest(UpstreamCase):
    """A model's refusal reaches clients of both doors as OpenAI gives it, apart from any content."""

    async def test_a_completion_carries_the_refusal_apart(self) -> None:
        status, _, body = await self.chat("refuse this")
        self.assertEqual(status, 200, body)
        obj = json.loads(body)
        self.assertEqual(CHAT_SCHEMAS.errors(obj, "CreateChatCompletionResponse"), [])
        self.assertEqual(obj["choices"][0]["message"], {"role": "assistant", "content": None, "refusal": REFUSAL,
                                                        "annotations": []})

    async def test_a_streamed_completion_carries_it_in_delta_refusal(self) -> None:
        status, _, body = await self.chat("refuse this", stream=True)
        self.assertEqual(status, 200, body)
        chunks = chat_chunks(body)
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        self.assertEqual(deltas[0], {"role": "assistant", "content": None, "refusal": ""})
        self.assertEqual("".join(d.get("refusal") or "" for d in deltas), REFUSAL)
        self.assertFalse(any(d.get("content") for d in deltas))
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")

    async def test_a_response_has_a_refusal_part(self) -> None:
        status, _, body = await self.respond("refuse this")
        self.assertEqual(status, 200, body)
        obj = json.loads(body)
        self.assertEqual(RESPONSES_SCHEMAS.errors(obj, "Response"), [])
        [item] = obj["output"]
        self.assertEqual(item["content"], [{"type": "refusal", "refusal": REFUSAL}])
        self.assertEqual(obj["output_text"], "")

    async def test_a_streamed_response_sends_the_refusal_events(self) -> None:
        status, _, body = await self.respond("refuse this", stream=True)
        self.assertEqual(status, 200, body)
        events = response_events(body)
        kinds = [e["type"] for e in events]
        self.assertEqual([k for i, k in enumerate(kinds) if not (i and k == kinds[i - 1])], [
            "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
            "response.refusal.delta", "response.refusal.done", "response.content_part.done",
            "response.output_item.done", "response.completed"])
        self.assertEqual(events[3]["part"], {"type": "refusal", "refusal": ""})
        self.assertEqual("".join(e["delta"] for e in events if e["type"] == "response.refusal.delta"), REFUSAL)
        self.assertEqual(events[-1]["response"]["output"][0]["content"], [{"type": "refusal", "refusal": REFUSAL}])
        # Replayed from the stored Response, the stream is the same.
        _, _, again = await self.get(f"/v1/responses/{events[-1]['response']['id']}?stream=true")
        self.assertEqual(whole_events(response_events(again)), whole_events(events))

    async def test_the_session_keeps_the_refusal_as_what_the_assistant_said(self) -> None:
        # The transcript (the history, the next turn's context) holds it as the reply's text.
        for text in ("refuse this", "why?"):
            status, _, body = await self.post("/v1/chat/completions", {
                "model": "equabot", "user": "u1", "messages": [{"role": "user", "content": text}]})
            self.assertEqual(status, 200, body)
        self.assertEqual(self.up.bodies[-1]["messages"], [
            {"role": "user", "content": "refuse this"}, {"role": "assistant", "content": REFUSAL},
            {"role": "user", "content": "why?"}])
        # A client that sends the conversation back with the refusal field is understood alike.
        status, _, body = await self.post("/v1/chat/completions", {"model": "equabot", "messages": [
            {"role": "user", "content": "refuse this"},
            {"role": "assistant", "content": None, "refusal": REFUSAL},
            {"role": "user", "content": "why?"}]})
        self.assertEqual(status, 200, body)
        self.assertEqual(self.up.bodies[-1]["messages"][1], {"role": "assistant", "content": REFUSAL})


class CitationTest(UpstreamCase):
    """A search model's url_citation annotations reach both doors, checked; malformed ones are dropped."""

    async def test_a_completion_carries_the_annotations(self) -> None:
        status, _, body = await self.chat("cite it")
        obj = json.loads(body)
        self.assertEqual(CHAT_SCHEMAS.errors(obj, "CreateChatCompletionResponse"), [])
        self.assertEqual(obj["choices"][0]["message"], {
            "role": "assistant", "content": CITED_TEXT, "refusal": None,
            "annotations": [{"type": "url_citation", "url_citation": CITATION}]})
        status, _, body = await self.chat("cite it", stream=True)
        deltas = [c["choices"][0]["delta"] for c in chat_chunks(body) if c["choices"]]
        self.assertEqual("".join(d.get("content") or "" for d in deltas), CITED_TEXT)
        self.assertEqual([a for d in deltas for a in d.get("annotations", ())],
                         [{"type": "url_citation", "url_citation": CITATION}])

    async def test_a_response_carries_them_in_openais_responses_shape(self) -> None:
        annotation = {"type": "url_citation", "url": CITATION["url"], "start_index": 4, "end_index": 15,
                      "title": "Example"}
        status, _, body = await self.respond("cite it")
        obj = json.loads(body)
        self.assertEqual(RESPONSES_SCHEMAS.errors(obj, "Response"), [])
        self.assertEqual(obj["output"][0]["content"], [{"type": "output_text", "text": CITED_TEXT,
                                                        "annotations": [annotation], "logprobs": []}])
        status, _, body = await self.respond("cite it", stream=True)
        events = response_events(body)
        added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
        self.assertEqual([(e["annotation_index"], e["annotation"]) for e in added], [(0, annotation)])
        self.assertEqual(events[-1]["response"]["output"][0]["content"][0]["annotations"], [annotation])
        _, _, again = await self.get(f"/v1/responses/{events[-1]['response']['id']}?stream=true")
        self.assertEqual(whole_events(response_events(again)), whole_events(events))
