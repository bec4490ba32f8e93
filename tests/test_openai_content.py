"""POST /v1/chat/completions beyond plain text, against an in-process gateway and the echo provider.

Echo's ``/call NAME {json}`` makes tool calls deterministic, so every shape
OpenAI documents is checked exactly: non-streamed ``message.tool_calls`` with
``content: null``, streamed ``delta.tool_calls`` fragments (id, type and name
on a call's first fragment only), ``finish_reason: "tool_calls"``, the
legacy ``functions`` / ``function_call`` shapes, two rounds of the loop,
several choices, logprobs, ``reasoning_content``, images stored byte for byte,
and ``x-equabot-history: client``. Every body and chunk is validated against
OpenAI's published schemas.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import unittest
from typing import Any

from equabot_gw.conformance.jsonschema import Validator
from tests.support import TOKEN, base_config, running_gateway

SCHEMAS = Validator.openai()
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ARGS = '{"city": "Paris", "unit": "celsius"}'
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
       "hQGAhKmMIQAAAABJRU5ErkJggg==")


def post(port: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}", **(headers or {})})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def sse_chunks(data: bytes) -> list[dict[str, Any]]:
    text = data.decode()
    blocks = [b.partition("\n")[2] if b.startswith("id: ") else b for b in text.split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]", blocks[-1]
    return [json.loads(b[6:]) for b in blocks[:-1]]


class ContentCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self._gateway = running_gateway(base_config())
        self.gw = await self._gateway.__aenter__()

    async def asyncTearDown(self) -> None:
        await self._gateway.__aexit__(None, None, None)

    async def ok(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        status, data = await asyncio.to_thread(post, self.gw.server.port, body, headers)
        self.assertEqual(status, 200, data)
        obj = json.loads(data)
        self.assertEqual(SCHEMAS.errors(obj, "CreateChatCompletionResponse"), [])
        return obj

    async def stream(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        status, data = await asyncio.to_thread(post, self.gw.server.port, {**body, "stream": True}, headers)
        self.assertEqual(status, 200, data)
        chunks = sse_chunks(data)
        for chunk in chunks:
            self.assertEqual(SCHEMAS.errors(chunk, "CreateChatCompletionStreamResponse"), [], chunk)
        return chunks

    async def error(self, body: dict[str, Any], status: int = 400) -> dict[str, Any]:
        got, data = await asyncio.to_thread(post, self.gw.server.port, body)
        self.assertEqual(got, status, data)
        self.assertEqual(SCHEMAS.errors(json.loads(data), "ErrorResponse"), [])
        return json.loads(data)["error"]


def ask(text: str, **fields: Any) -> dict[str, Any]:
    return {"model": "equabot", "messages": [{"role": "user", "content": text}], **fields}


class ToolCallTest(ContentCase):
    async def test_a_call_comes_back_in_openais_shape(self) -> None:
        obj = await self.ok(ask(f"/call get_weather {ARGS}", tools=[WEATHER, CLOCK]))
        choice = obj["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        message = choice["message"]
        self.assertIsNone(message["content"])
        [call] = message["tool_calls"]
        self.assertRegex(call["id"], r"^call_run_[0-9a-z_]+_0$")
        self.assertEqual({**call, "id": "x"}, {"id": "x", "type": "function",
                                               "function": {"name": "get_weather", "arguments": ARGS}})

    async def test_streamed_fragments_join_to_the_call(self) -> None:
        chunks = await self.stream(ask(f"/call get_weather {ARGS}", tools=[WEATHER]))
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": None})
        fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                     if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
        self.assertGreater(len(fragments), 2)         # the arguments came in pieces
        first, rest = fragments[0], fragments[1:]
        self.assertEqual((first["index"], first["type"], first["function"]["name"]), (0, "function", "get_weather"))
        self.assertTrue(first["id"].startswith("call_"))
        for fragment in rest:
            self.assertEqual(set(fragment), {"index", "function"})
            self.assertEqual(set(fragment["function"]), {"arguments"})
        self.assertEqual("".join(f["function"]["arguments"] for f in fragments), ARGS)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")
        self.assertTrue(all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1]))

    async def test_two_rounds_of_the_loop(self) -> None:
        first = await self.ok(ask(f"/call get_weather {ARGS}", tools=[WEATHER]))
        call = first["choices"][0]["message"]["tool_calls"][0]
        body = {"model": "equabot", "tools": [WEATHER], "messages": [
            {"role": "user", "content": f"/call get_weather {ARGS}"},
            first["choices"][0]["message"],
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 24 C"}]}
        second = await self.ok(body)
        self.assertEqual(second["choices"][0]["message"]["content"],
                         "Echo (turn 1): tool get_weather returned: sunny, 24 C")
        self.assertEqual(second["choices"][0]["finish_reason"], "stop")
        streamed = await self.stream(body)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])
        self.assertEqual(text, "Echo (turn 1): tool get_weather returned: sunny, 24 C")

    async def test_parallel_calls_and_turning_them_off(self) -> None:
        text = f"/call get_weather {ARGS}\n/call get_time {{}}"
        calls = (await self.ok(ask(text, tools=[WEATHER, CLOCK])))["choices"][0]["message"]["tool_calls"]
        self.assertEqual([(c["function"]["name"], c["function"]["arguments"]) for c in calls],
                         [("get_weather", ARGS), ("get_time", "{}")])
        self.assertEqual(len({c["id"] for c in calls}), 2)
        one = (await self.ok(ask(text, tools=[WEATHER, CLOCK], parallel_tool_calls=False)))
        self.assertEqual(len(one["choices"][0]["message"]["tool_calls"]), 1)
        # tool_choice "none", or a tool that is not offered: a plain echo.
        for fields in ({"tool_choice": "none"}, {"tools": [CLOCK]}):
            obj = await self.ok(ask(f"/call get_weather {ARGS}", **{"tools": [WEATHER, CLOCK], **fields}))
            self.assertEqual(obj["choices"][0]["finish_reason"], "stop")
            self.assertNotIn("tool_calls", obj["choices"][0]["message"])

    async def test_a_forced_tool_choice_always_gets_its_call(self) -> None:
        def calls(obj: dict) -> list[tuple[str, str]]:
            self.assertEqual(obj["choices"][0]["finish_reason"], "tool_calls")
            return [(c["function"]["name"], c["function"]["arguments"])
                    for c in obj["choices"][0]["message"]["tool_calls"]]
        named = {"type": "function", "function": {"name": "get_time"}}
        tools = [WEATHER, CLOCK]
        # Naming a tool: exactly one call of it, with its /call line's arguments if the text has one.
        for text, expected in (("hi", [("get_time", "{}")]),
                               (f"/call get_weather {ARGS}", [("get_time", "{}")]),
                               (f"/call get_weather {ARGS}\n/call get_time {ARGS}", [("get_time", ARGS)])):
            with self.subTest(text=text):
                self.assertEqual(calls(await self.ok(ask(text, tools=tools, tool_choice=named))), expected)
        # "required": the text's calls, else the first tool offered; after a tool's result too.
        self.assertEqual(calls(await self.ok(ask("hi", tools=tools, tool_choice="required"))),
                         [("get_weather", "{}")])
        self.assertEqual(calls(await self.ok(ask(f"/call get_time {ARGS}", tools=tools, tool_choice="required"))),
                         [("get_time", ARGS)])
        after_result = {"model": "equabot", "tools": tools, "tool_choice": "required", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "get_weather", "arguments": ARGS}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "rain"}]}
        self.assertEqual(calls(await self.ok(after_result)), [("get_weather", "{}")])
        # Streamed alike.
        chunks = await self.stream(ask("hi", tools=tools, tool_choice=named))
        deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                  if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
        self.assertEqual(deltas[0]["function"]["name"], "get_time")
        self.assertEqual("".join(d["function"].get("arguments", "") for d in deltas), "{}")
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")

    async def test_legacy_functions_are_answered_in_the_legacy_shape(self) -> None:
        functions = [WEATHER["function"]]
        obj = await self.ok(ask(f"/call get_weather {ARGS}", functions=functions, function_call="auto"))
        choice = obj["choices"][0]
        self.assertEqual(choice["finish_reason"], "function_call")
        self.assertEqual(choice["message"]["function_call"], {"name": "get_weather", "arguments": ARGS})
        self.assertNotIn("tool_calls", choice["message"])
        chunks = await self.stream(ask(f"/call get_weather {ARGS}", functions=functions))
        calls = [c["choices"][0]["delta"]["function_call"] for c in chunks
                 if c["choices"] and "function_call" in c["choices"][0]["delta"]]
        self.assertEqual(calls[0]["name"], "get_weather")
        self.assertEqual("".join(c["arguments"] for c in calls), ARGS)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "function_call")
        # Round two: the result as role "function".
        body = {"model": "equabot", "functions": functions, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": ARGS}},
            {"role": "function", "name": "get_weather", "content": "rain"}]}
        reply = await self.ok(body)
        self.assertEqual(reply["choices"][0]["message"]["content"], "Echo (turn 1): tool get_weather returned: rain")

    async def test_tool_fields_are_checked(self) -> None:
        cases = (
            (ask("x", tools=[WEATHER] * 129), "tools", "array_above_max_length"),
            (ask("x", tools=[{"type": "custom", "custom": {"name": "c"}}]), "tools[0].type", "unsupported_parameter"),
            (ask("x", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
             "tool_choice", "invalid_value"),
            (ask("x", tools=[WEATHER], functions=[CLOCK["function"]]), "functions", "invalid_value"),
            ({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
             "messages", "unsupported_parameter"),
            ({"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f"}}]}, {"role": "tool", "tool_call_id": "c",
                                                                              "content": "r"}]},
             "messages[0].tool_calls[0].function.arguments", "invalid_type"),
        )
        for body, param, code in cases:
            with self.subTest(param=param):
                error = await self.error(body)
                self.assertEqual((error["param"], error["code"]), (param, code))


class MessageContentTest(ContentCase):
    async def test_content_is_required_where_openai_requires_it(self) -> None:
        # user, system, developer and tool messages carry content; an array of parts has one at least.
        result = {"role": "tool", "tool_call_id": "c", "content": "r"}
        call = {"role": "assistant", "content": None,
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
        cases = (
            ([{"role": "user"}], "messages[0].content", "missing_required_parameter"),
            ([{"role": "user", "content": None}], "messages[0].content", "missing_required_parameter"),
            ([{"role": "system"}, {"role": "user", "content": "x"}], "messages[0].content",
             "missing_required_parameter"),
            ([{"role": "developer", "content": None}, {"role": "user", "content": "x"}], "messages[0].content",
             "missing_required_parameter"),
            ([{"role": "user", "content": "x"}, call, {"role": "tool", "tool_call_id": "c"}], "messages[2].content",
             "missing_required_parameter"),
            ([{"role": "user", "content": []}], "messages[0].content", "empty_array"),
            ([{"role": "user", "content": "x"}, {**call, "content": []}, result], "messages[1].content",
             "empty_array"),
        )
        for messages, param, code in cases:
            with self.subTest(messages=messages):
                error = await self.error({"model": "equabot", "messages": messages})
                self.assertEqual((error["param"], error["code"], error["type"]),
                                 (param, code, "invalid_request_error"))
        # An assistant's content may be null (calls) or absent; empty text is text.
        reply = await self.ok({"model": "equabot", "messages": [{"role": "user", "content": "x"}, call, result]})
        self.assertEqual(reply["choices"][0]["finish_reason"], "stop")
        reply = await self.ok({"model": "equabot", "messages": [{"role": "user", "content": ""}]})
        self.assertEqual(reply["object"], "chat.completion")


class ChoicesLogprobsReasoningTest(ContentCase):
    async def test_n_choices(self) -> None:
        obj = await self.ok(ask("a b", n=3))
        self.assertEqual([(c["index"], c["message"]["content"]) for c in obj["choices"]],
                         [(i, "Echo (turn 1): a b") for i in range(3)])
        chunks = await self.stream(ask("a b", n=2))
        by_index: dict[int, str] = {}
        for chunk in chunks:
            for choice in chunk["choices"]:
                by_index[choice["index"]] = by_index.get(choice["index"], "") + (choice["delta"].get("content") or "")
        self.assertEqual(by_index, {0: "Echo (turn 1): a b", 1: "Echo (turn 1): a b"})
        finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks
                    if c["choices"][0]["finish_reason"]]
        self.assertEqual(sorted(finishes), [(0, "stop"), (1, "stop")])

    async def test_every_choice_is_the_same_reply_reasoning_included(self) -> None:
        obj = await self.ok(ask("why", n=2, reasoning_effort="low"))
        self.assertEqual([(c["index"], c["message"]["content"], c["message"].get("reasoning_content"))
                          for c in obj["choices"]],
                         [(i, "Echo (turn 1): why", "Thinking (low) about: why") for i in range(2)])
        reasoning: dict[int, str] = {}
        for chunk in await self.stream(ask("why", n=2, reasoning_effort="low")):
            for choice in chunk["choices"]:
                reasoning[choice["index"]] = (reasoning.get(choice["index"], "")
                                              + (choice["delta"].get("reasoning_content") or ""))
        self.assertEqual(reasoning, {0: "Thinking (low) about: why", 1: "Thinking (low) about: why"})

    async def test_logprobs_come_back_with_their_tokens(self) -> None:
        obj = await self.ok(ask("a b", logprobs=True, top_logprobs=2))
        logprobs = obj["choices"][0]["logprobs"]
        self.assertEqual("".join(t["token"] for t in logprobs["content"]), obj["choices"][0]["message"]["content"])
        self.assertEqual(logprobs["content"][0]["top_logprobs"][0]["logprob"], 0.0)
        chunks = await self.stream(ask("a b", logprobs=True))
        with_text = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        self.assertTrue(with_text)
        for choice in with_text:       # each delta carries the logprobs of its own tokens
            self.assertEqual(choice["delta"]["content"], "".join(t["token"] for t in choice["logprobs"]["content"]))

    async def test_reasoning_is_kept_apart_from_the_answer(self) -> None:
        obj = await self.ok(ask("why", reasoning_effort="low"))
        message = obj["choices"][0]["message"]
        self.assertEqual((message["content"], message["reasoning_content"]),
                         ("Echo (turn 1): why", "Thinking (low) about: why"))
        chunks = await self.stream(ask("why", reasoning_effort="low"))
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": None})
        self.assertEqual(chunks[1]["choices"][0]["delta"], {"reasoning_content": "Thinking (low) about: why"})
        self.assertEqual("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]),
                         "Echo (turn 1): why")


class PartsAndHistoryTest(ContentCase):
    async def test_an_image_is_recorded_byte_for_byte(self) -> None:
        body = {"model": "equabot", "user": "pic", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}]}]}
        obj = await self.ok(body)
        self.assertEqual(obj["choices"][0]["message"]["content"], "Echo (turn 1): look")
        lines = await self.gw.runtime.store.read_transcript("main", "agent:main:openai-user:pic")
        self.assertEqual(lines[1]["content"], [{"type": "text", "text": "look"},
                                               {"type": "image", "url": PNG, "detail": "low"}])

    async def test_a_user_sessions_tool_loop_is_recorded_and_replayed(self) -> None:
        first = await self.ok(ask(f"/call get_weather {ARGS}", tools=[WEATHER], user="loop"))
        message = first["choices"][0]["message"]
        call_id = message["tool_calls"][0]["id"]
        history = [{"role": "user", "content": f"/call get_weather {ARGS}"}, message,
                   {"role": "tool", "tool_call_id": call_id, "content": "sunny"}]
        second = await self.ok({"model": "equabot", "user": "loop", "tools": [WEATHER], "messages": history})
        self.assertEqual(second["choices"][0]["message"]["content"], "Echo (turn 2): tool get_weather returned: sunny")
        lines = await self.gw.runtime.store.read_transcript("main", "agent:main:openai-user:loop")
        self.assertEqual([line["type"] for line in lines], ["session", "user", "assistant", "tool", "assistant"])
        self.assertEqual(lines[2]["toolCalls"], [{"id": call_id, "name": "get_weather", "arguments": ARGS}])
        self.assertEqual((lines[3]["toolCallId"], lines[3]["name"], lines[3]["content"]),
                         (call_id, "get_weather", "sunny"))

    async def test_client_history_header(self) -> None:
        await self.ok(ask("one", user="edit"))
        edited = {"model": "equabot", "user": "edit", "messages": [
            {"role": "user", "content": "uno dos tres"}, {"role": "assistant", "content": "edited"},
            {"role": "user", "content": "two"}]}
        # A stored session replays its transcript ("one" + reply: 5 words + "two")...
        session = await self.ok(edited)
        self.assertEqual(session["usage"]["prompt_tokens"], 1 + 4 + 1)
        # ...unless the client owns the history: its messages are the context (3 + 1 + 1).
        for header in ("x-equabot-history", "x-openclaw-history", "x-clawdbot-history"):
            with self.subTest(header=header):
                obj = await self.ok(edited, {header: "client"})
                self.assertEqual(obj["usage"]["prompt_tokens"], 3 + 1 + 1)
        lines = await self.gw.runtime.store.read_transcript("main", "agent:main:openai-user:edit")
        self.assertEqual(sum(line["type"] == "assistant" for line in lines), 5)     # every turn recorded
        status, data = await asyncio.to_thread(post, self.gw.server.port, edited, {"x-equabot-history": "mine"})
        self.assertEqual((status, json.loads(data)["error"]["param"]), (400, "x-equabot-history"))

    async def test_client_history_by_config(self) -> None:
        data = base_config(http={"endpoints": {"chatCompletions": {"enabled": True, "history": "client"}}})
        async with running_gateway(data) as gw:
            self.gw = gw
            await self.ok(ask("one", user="cfg"))
            obj = await self.ok({"model": "equabot", "user": "cfg", "messages": [
                {"role": "user", "content": "a b c"}, {"role": "assistant", "content": "d"},
                {"role": "user", "content": "e"}]})
            self.assertEqual(obj["usage"]["prompt_tokens"], 5)
            self.assertEqual(obj["choices"][0]["message"]["content"], "Echo (turn 2): e")
            # The header still chooses per request.
            obj = await self.ok({"model": "equabot", "user": "cfg", "messages": [
                {"role": "user", "content": "a b c"}, {"role": "assistant", "content": "d"},
                {"role": "user", "content": "e"}]}, {"x-equabot-history": "session"})
            self.assertEqual(obj["usage"]["prompt_tokens"], 1 + 4 + 1 + 4 + 1)


if __name__ == "__main__":
    unittest.main()
