"""Unusual input at the gateway's edges: model names, client addresses, upstream usage blocks."""

from __future__ import annotations

import asyncio
import json
import unittest
from typing import Any

from equabot_gw.gateway.openai import MODEL_PREFIXES
from equabot_gw.agents.types import Usage
from tests.support import TOKEN, error_of, post_closing, running_gateway
from tests.test_faults import SSE_HEAD, FakeUpstream, chunk
from tests.test_providers import (HTTPProviderCase, anthropic_event, call, collect, openai_chunk, replay,
                                  sse)
from tests.test_providers import FakeUpstream as ProviderUpstream


def agents_config() -> dict[str, Any]:
    data: dict[str, Any] = {"gateway": {"auth": {"token": TOKEN},
                                        "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
                            "agents": {"list": [{"id": "main", "default": True}, {"id": "beta"}]}}
    return data


async def get_closing(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class ModelPrefixTest(unittest.IsolatedAsyncioTestCase):
    """A model prefix names an agent: with no name after it, it names none."""

    async def test_a_bare_prefix_is_no_model(self) -> None:
        async with running_gateway(agents_config()) as gw:
            for prefix in MODEL_PREFIXES:
                with self.subTest(prefix):
                    status, body = await get_closing(gw.server.port, f"/v1/models/{prefix}")
                    self.assertEqual((status, error_of(body)["code"]), (404, "model_not_found"), body)
                    # The agent after it is found, so the 404 is the empty name's.
                    status, body = await get_closing(gw.server.port, f"/v1/models/{prefix}beta")
                    self.assertEqual((status, json.loads(body)["id"]), (200, "equabot:beta"), body)

    async def test_a_completion_naming_a_bare_prefix_is_refused(self) -> None:
        async with running_gateway(agents_config()) as gw:
            for model in (*MODEL_PREFIXES, "agent: "):
                with self.subTest(model):
                    payload = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                    status, _, body, _ = await post_closing(gw.server.port, "/v1/chat/completions", payload.encode())
                    error = error_of(body)
                    self.assertEqual((status, error["code"], error["param"]), (404, "model_not_found", "model"))
            # The plain names still mean the default agent.
            for model in ("equabot", "agent", "gpt-4o"):
                payload = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                status, _, body, _ = await post_closing(gw.server.port, "/v1/chat/completions", payload.encode())
                self.assertEqual((status, json.loads(body)["model"]), (200, model))


# Usage blocks as OpenAI-compatible servers send them when they count nothing (or part).
NULL_USAGES = (
    {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
    {"prompt_tokens": 3, "completion_tokens": None, "total_tokens": None},
    {"prompt_tokens": None, "completion_tokens": 2, "total_tokens": 2},
    {"total_tokens": 5},
)


class NullUsageProviderTest(HTTPProviderCase):
    """A count the upstream leaves null is not reported: no ``Usage`` (the gateway then counts words)."""

    async def test_openai_null_counts_are_not_reported(self) -> None:
        for usage in NULL_USAGES:
            with self.subTest(usage):
                stream = sse(openai_chunk("a", "stop"), {"id": "c", "choices": [], "usage": usage}, b"[DONE]")
                async with ProviderUpstream(replay(stream)) as up:
                    reply = await collect(self.provider(up), call())
                self.assertEqual((reply.text, reply.usage, reply.finish), ("a", None, "stop"))

    async def test_openai_whole_counts_still_count(self) -> None:
        stream = sse(openai_chunk("a", "stop"), {"id": "c", "choices": [], "usage": {
            "prompt_tokens": 3, "completion_tokens": 2, "completion_tokens_details": None}}, b"[DONE]")
        async with ProviderUpstream(replay(stream)) as up:
            reply = await collect(self.provider(up), call())
        self.assertEqual(reply.usage, Usage(3, 2))


class NullUsageAnthropicTest(HTTPProviderCase):
    api = "anthropic-messages"
    base_path = ""

    async def test_a_count_never_reported_is_not_reported_as_zero(self) -> None:
        for start, delta in (({"input_tokens": 4, "output_tokens": None}, {"output_tokens": None}),
                             ({"input_tokens": None, "output_tokens": None}, {"output_tokens": 9}),
                             ({"input_tokens": None}, None)):
            with self.subTest(start=start, delta=delta):
                stream = b"".join((
                    anthropic_event("message_start", message={"usage": start}),
                    anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
                    anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "ab"}),
                    anthropic_event("content_block_stop", index=0),
                    anthropic_event("message_delta", delta={"stop_reason": "end_turn"}, usage=delta),
                    anthropic_event("message_stop")))
                async with ProviderUpstream(replay(stream)) as up:
                    reply = await collect(self.provider(up), call())
                self.assertEqual((reply.text, reply.usage, reply.finish), ("ab", None, "stop"))


async def null_usage_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              body: dict[str, Any]) -> None:
    events = [{"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"content": "three little words"}, "finish_reason": "stop"}]},
              {"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
               "usage": {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}}]
    writer.write(SSE_HEAD + b"".join(chunk(b"data: " + json.dumps(e).encode() + b"\n\n") for e in events)
                 + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


class NullUsageEndToEndTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_completion_of_an_upstream_with_null_counts_counts_words(self) -> None:
        async with FakeUpstream(null_usage_upstream) as up:
            data = agents_config()
            data["agents"] = {"defaults": {"model": "up/m"}}
            data["models"] = {"providers": {"up": {"api": "openai-completions", "baseUrl": up.base_url,
                                                   "apiKey": "sk-x"}}}
            async with running_gateway(data) as gw:
                payload = json.dumps({"model": "equabot", "messages": [{"role": "user", "content": "say it"}]})
                status, _, body, _ = await post_closing(gw.server.port, "/v1/chat/completions", payload.encode())
        self.assertEqual(status, 200, body)
        completion = json.loads(body)
        self.assertEqual(completion["choices"][0]["message"]["content"], "three little words")
        # The words of the reply, as for any provider that reports no counts.
        self.assertEqual(completion["usage"]["completion_tokens"], 3)
        self.assertGreater(completion["usage"]["prompt_tokens"], 0)


if __name__ == "__main__":
    unittest.main()
