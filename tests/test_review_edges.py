"""Unusual input at the gateway's edges: model names, client addresses, upstream usage blocks."""

from __future__ import annotations

import asyncio
import json
import unittest
from typing import Any

from equabot_gw.gateway.openai import MODEL_PREFIXES
from tests.support import TOKEN, error_of, post_closing, running_gateway


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


if __name__ == "__main__":
    unittest.main()
