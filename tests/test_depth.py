"""No recursion on untrusted depth: JSON nested 100,000 deep at every input of the runtime's side.

Each input gets the same hostile text — ``[`` (or ``{"a":``) 100,000 times —
and must answer with its ordinary error, never a RecursionError, a 500 or a
traceback: the chat-completions body (400 ``invalid_request_error``), an
upstream's event-stream data and JSON error body (502 / the upstream's
status), a transcript line and the session index (skipped or rebuilt at
start-up), and the config file (one config error line, from the loader and
from the real CLI).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import tempfile
import unittest
from typing import Any

from equabot_gw import config as config_mod
from equabot_gw.errors import ConfigError
from tests.support import ROOT, base_config, error_of, running_gateway
from tests.test_faults import SSE_HEAD, FakeUpstream, chat, chunk

DEPTH = 100_000
DEEP_ARRAY = "[" * DEPTH + "]" * DEPTH
DEEP_OBJECT = '{"a":' * DEPTH + "1" + "}" * DEPTH


def upstream_gateway(up: FakeUpstream) -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"list": [{"id": "main", "default": True, "model": "up/m"}]}
    data["models"] = {"providers": {"up": {"api": "openai-completions", "baseUrl": up.base_url,
                                           "timeoutSeconds": 5}}}
    return data


async def deep_event(reader, writer, body) -> None:
    writer.write(SSE_HEAD + chunk(b"data: " + DEEP_OBJECT.encode() + b"\n\n"))
    await reader.read()


async def deep_error_body(reader, writer, body) -> None:
    payload = ('{"error":' + DEEP_OBJECT + "}").encode()
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%b" % (len(payload), payload))
    await writer.drain()


class DeepRequestBodyTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_body_nested_100000_deep_is_400_invalid_request_error(self) -> None:
        async with running_gateway() as gw:
            for name, text in (("array", DEEP_ARRAY), ("object", DEEP_OBJECT),
                               ("inside messages", '{"model":"m","messages":[{"role":"user","content":'
                                + DEEP_ARRAY + "}]}")):
                with self.subTest(name):
                    status, body = await raw_post(gw.server.port, text.encode())
                    self.assertEqual(status, 400, body[:200])
                    error = error_of(body)
                    self.assertEqual((error["type"], error["code"]), ("invalid_request_error", "invalid_json"))
                    self.assertIn("nested deeper than 128 levels", error["message"])


class DeepUpstreamTest(unittest.IsolatedAsyncioTestCase):
    async def test_an_event_nested_100000_deep_is_a_clean_502(self) -> None:
        async with FakeUpstream(deep_event) as up, running_gateway(upstream_gateway(up)) as gw:
            for stream in (False, True):
                with self.subTest(stream=stream):
                    status, _, body = await chat(gw.server.port, "deep", stream=stream)
                    self.assertEqual(status, 502, body[:200])
                    self.assertIn("event stream data is not JSON", error_of(body)["message"])

    async def test_an_error_body_nested_100000_deep_keeps_the_upstream_status(self) -> None:
        async with FakeUpstream(deep_error_body) as up, running_gateway(upstream_gateway(up)) as gw:
            status, _, body = await chat(gw.server.port, "deep")
            self.assertEqual(status, 400, body[:200])
            self.assertEqual(error_of(body)["message"], "provider 'up': upstream answered 400: 400 Bad Request")


class DeepConformanceReplyTest(unittest.TestCase):
    """The shipped checker reads a gateway under test: a reply nested 100,000 deep is a failed check."""

    def test_a_deep_body_is_a_failed_check_not_a_crash(self) -> None:
        from equabot_gw.conformance import checks, checks_http
        from equabot_gw.net.heads import Headers
        ex = checks.Exchange("POST /v1/chat/completions HTTP/1.1", 400, "Bad Request",
                             Headers([("content-type", "application/json")]), b"", DEEP_OBJECT.encode(), False)
        with self.assertRaises(checks.Failed) as caught:
            ex.json()
        self.assertIn("nested deeper than 128 levels", str(caught.exception))
        self.assertEqual(checks_http._error_problems(ex), ["the body is not JSON"])


class DeepStateFilesTest(unittest.TestCase):
    """A transcript line and the session index nested 100,000 deep: the gateway process starts."""

    def test_start_up_skips_the_line_and_rebuilds_the_index(self) -> None:
        from tests.support import GatewayProcess
        from tests.test_state_damage import GOOD_LINES, KEY, write_state
        gw = GatewayProcess(base_config())
        path = write_state(gw.state_dir, [*GOOD_LINES[:3], DEEP_OBJECT, *GOOD_LINES[3:]], raw_index=DEEP_ARRAY)
        with gw:
            status, _, body = asyncio.run(chat(gw.port, "three", key=KEY))
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "Echo (turn 3): three")
            log = gw.stderr()
        self.assertIn(f"{path.name}: skipped 1 line not holding a JSON object, the first at line 4", log)
        self.assertIn("index.json is not usable JSON (nested deeper than 128 levels", log)
        self.assertNotIn("Traceback", log)


async def raw_post(port: int, data: bytes) -> tuple[int, bytes]:
    from tests.support import TOKEN, split_responses
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + data)
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    [(status, _, body)] = split_responses(raw)
    return status, body


if __name__ == "__main__":
    unittest.main()
