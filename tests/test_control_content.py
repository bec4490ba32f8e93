"""The control protocol beyond text: ``chat`` and ``agent`` events and ``chat.history`` with tool calls,
reasoning and images, in the original's content-part shapes (pi-ai's: ``text``, ``thinking``,
``toolCall`` with its arguments as an object, ``image`` with data and mimeType, and
``toolResult`` messages).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import unittest
from collections.abc import AsyncIterator
from typing import Any

from equabot_gw.agents.types import (
    Finish, ProviderCall, ProviderEvent, ReasoningDelta, TextDelta, ToolCallDelta, Usage,
)
from equabot_gw.gateway.client import ControlClient
from equabot_gw.providers import Provider
from tests.support import TOKEN, base_config, running_gateway

PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
       "hQGAhKmMIQAAAABJRU5ErkJggg==")
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


class Thinker(Provider):
    """Reasons, says a sentence, then calls a tool (as a model may, unasked)."""

    api = "scripted"
    supported_options = frozenset()

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        for event in (ReasoningDelta("The user wants "), ReasoningDelta("the weather."), TextDelta("Checking"),
                      TextDelta(" now."), ToolCallDelta(0, "call_w", "get_weather", '{"city":'),
                      ToolCallDelta(0, None, None, ' "Oslo"}'), Usage(5, 7), Finish("tool_calls")):
            yield event


def post(port: int, body: Any) -> dict[str, Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    data = c.getresponse().read()
    c.close()
    return json.loads(data)


class ControlContentTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        data = base_config()
        data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "thinker", "model": "scripted/x"}]}
        data["models"] = {"providers": {"scripted": {"api": "echo"}}}     # replaced once started
        self._gateway = running_gateway(data)
        self.gw = await self._gateway.__aenter__()
        self.gw.runtime.providers["scripted"] = Thinker("scripted", None)
        self.client = await ControlClient.open(self.gw.url, TOKEN)

    async def asyncTearDown(self) -> None:
        await self.client.close()
        await self._gateway.__aexit__(None, None, None)

    async def run_agent(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        req_id = self.client.send("agent", {"message": "weather?", "agentId": "thinker", "sessionKey": "ws-tools"})
        events: list[dict[str, Any]] = []
        while True:
            frame = await asyncio.wait_for(self.client.next_frame(), 5)
            if frame.get("type") == "event" and frame["event"] in ("agent", "chat"):
                events.append(frame)
            if frame.get("type") == "res" and frame.get("id") == req_id and frame["payload"].get("status") != "accepted":
                return events, frame["payload"]

    async def test_agent_and_chat_events_carry_thinking_text_and_tool_calls(self) -> None:
        events, final = await self.run_agent()
        agent = [(e["payload"]["stream"], e["payload"]["data"]) for e in events if e["event"] == "agent"]
        tools = [data for stream, data in agent if stream == "tool"]
        self.assertEqual(tools, [{"phase": "call", "id": "call_w", "name": "get_weather", "arguments": {"city": "Oslo"}}])
        streams = [stream for stream, _ in agent]
        self.assertLess(streams.index("tool"), len(streams) - 1)
        self.assertEqual(agent[-1], ("lifecycle", agent[-1][1]))
        self.assertEqual(agent[-1][1]["phase"], "end")
        chat = [e["payload"] for e in events if e["event"] == "chat"]
        self.assertEqual(chat[-1]["state"], "final")
        self.assertEqual(chat[-1]["message"]["content"], [
            {"type": "thinking", "thinking": "The user wants the weather."},
            {"type": "text", "text": "Checking now."},
            {"type": "toolCall", "id": "call_w", "name": "get_weather", "arguments": {"city": "Oslo"}}])
        deltas = [c for c in chat if c["state"] == "delta"]
        self.assertTrue(deltas)
        self.assertEqual(deltas[-1]["message"]["content"][0], {"type": "thinking", "thinking": "The user wants the weather."})
        self.assertEqual(final["status"], "ok")
        self.assertEqual(final["result"]["meta"]["stopReason"], "tool_calls")

    async def test_chat_history_in_the_originals_parts(self) -> None:
        port = self.gw.server.port
        user_turn = {"role": "user", "content": [{"type": "text", "text": "/call get_weather {\"city\": \"Rome\"}"},
                                                 {"type": "image_url", "image_url": {"url": PNG}}]}
        first = await asyncio.to_thread(post, port, {"model": "equabot", "user": "hist", "tools": [WEATHER],
                                                      "messages": [user_turn]})
        message = first["choices"][0]["message"]
        call_id = message["tool_calls"][0]["id"]
        await asyncio.to_thread(post, port, {"model": "equabot", "user": "hist", "tools": [WEATHER], "messages": [
            user_turn, message, {"role": "tool", "tool_call_id": call_id, "content": "warm"}]})
        key = "agent:main:openai-user:hist"
        history = await self.client.request("chat.history", {"sessionKey": key})
        messages = history["messages"]
        self.assertEqual([m["role"] for m in messages], ["user", "assistant", "toolResult", "assistant"])
        self.assertEqual(messages[0]["content"], [
            {"type": "text", "text": "/call get_weather {\"city\": \"Rome\"}"},
            {"type": "image", "data": PNG.split(",", 1)[1], "mimeType": "image/png"}])
        self.assertEqual(messages[1]["content"], [{"type": "toolCall", "id": call_id, "name": "get_weather",
                                                   "arguments": {"city": "Rome"}}])
        self.assertEqual(messages[1]["stopReason"], "toolUse")
        result = messages[2]
        self.assertEqual({k: result[k] for k in ("toolCallId", "toolName", "content", "isError")},
                         {"toolCallId": call_id, "toolName": "get_weather",
                          "content": [{"type": "text", "text": "warm"}], "isError": False})
        self.assertIsInstance(result["timestamp"], int)
        self.assertEqual(messages[3]["content"], [{"type": "text",
                                                   "text": "Echo (turn 2): tool get_weather returned: warm"}])
        # A limit never cuts between a call and its result.
        cut = await self.client.request("chat.history", {"sessionKey": key, "limit": 2})
        self.assertEqual([m["role"] for m in cut["messages"]], ["assistant", "toolResult", "assistant"])


if __name__ == "__main__":
    unittest.main()
