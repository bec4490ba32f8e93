"""The conformance kit against servers that are not equabot_gw: fair verdicts, clear reasons.

Each test starts a tiny asyncio server shaped like a peer the kit meets in the
wild (a plain-HTTP port behind an https:// URL, a proxy that knows only one
model name, ...) and asserts the verdict and reason of the checks it touches.
"""

from __future__ import annotations

import asyncio
import json
import unittest
from collections.abc import Callable
from typing import Any

from equabot_gw import conformance
from equabot_gw.conformance.checks import Status, Target
from tests.support import TOKEN
from tests.test_conformance import FakeGateway

Handler = Callable[[str, str, dict[str, str], bytes], bytes]


def http(status: int, body: Any, content_type: str = "application/json",
         extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields = [("Content-Type", content_type), ("Content-Length", str(len(data))),
              ("Connection", "close"), *extra]
    head = f"HTTP/1.1 {status} Status\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    return head.encode() + data


def error(status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    return http(status, {"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": None}}, extra=extra)


class RawServer:
    """One request per connection, answered by ``handler(method, path, headers, body)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.read(1)
            if not first.isalpha():     # not HTTP (a TLS ClientHello): answer 400 as servers do
                writer.write(http(400, b"Bad Request", "text/plain"))
                return
            head = first + await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((method, path, headers, body))
            writer.write(self.handler(method, path, headers, body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


async def run(url: str, only: tuple[str, ...], **flags: Any) -> dict[str, tuple[Status, str]]:
    results, _ = await conformance.run(Target.from_flags(url, **flags), only=only)
    return {r.name: (r.status, r.reason) for r in results}


class TLSTest(unittest.IsolatedAsyncioTestCase):
    async def test_https_to_a_plain_http_port_names_the_tls_failure(self) -> None:
        async with RawServer(lambda *a: http(200, {})) as server:
            got = await run(f"https://127.0.0.1:{server.port}", ("endpoint.enabled",), timeout=5)
        status, reason = got["endpoint.enabled"]
        self.assertIs(status, Status.FAIL)
        self.assertIn("TLS handshake failed", reason)
        self.assertIn("WRONG_VERSION_NUMBER", reason)
        self.assertNotIn("Operation not permitted", reason)


def one_model_proxy(token: str, model: str) -> Handler:
    """A proxy that routes by model name: it knows ``model`` only (400 for any other)."""
    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if method != "POST":
            return error(405, "method not allowed", (("Allow", "POST"),))
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or given != token:
            return error(401, "invalid token", (("WWW-Authenticate", "Bearer"),))
        asked = json.loads(body).get("model")
        if asked != model:
            return error(400, f"Invalid model name passed in model={asked}")
        return http(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": asked,
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                       "finish_reason": "stop", "logprobs": None}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    return handle


class AgentFlagTest(unittest.IsolatedAsyncioTestCase):
    async def test_the_auth_checks_send_the_agents_model(self) -> None:
        async with RawServer(one_model_proxy("sk-1", "equabot:proxy")) as server:
            got = await run(f"http://127.0.0.1:{server.port}", ("auth.right-token", "auth.scheme-case"),
                            token="sk-1", agent="proxy", timeout=5)
        self.assertEqual(got["auth.right-token"], (Status.PASS, "the token is accepted (200)"))
        self.assertEqual(got["auth.scheme-case"][0], Status.PASS)


class SlowAgentGateway(FakeGateway):
    """A gateway whose WebSocket agent runs never answer (a slow model)."""

    def _ws_agent(self, ws: Any, frame: dict[str, Any]) -> None:
        pass


class WebSocketTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_slow_agent_does_not_fail_ws_connect(self) -> None:
        async with SlowAgentGateway() as fake:
            got = await run(fake.url, ("ws.connect", "ws.agent-ack"), token=TOKEN, ws=True, timeout=0.5)
        self.assertEqual(got["ws.connect"], (Status.PASS, "hello-ok, protocol 3"))
        self.assertEqual(got["ws.agent-ack"][0], Status.FAIL)
        self.assertIn("timed out", got["ws.agent-ack"][1])


class PathPrefixTest(unittest.IsolatedAsyncioTestCase):
    async def test_the_evidence_names_the_path_that_was_requested(self) -> None:
        async with RawServer(lambda *a: error(404, "not found")) as server:
            target = Target.from_flags(f"http://127.0.0.1:{server.port}/api/openai/", timeout=5)
            results, _ = await conformance.run(target, only=("endpoint.enabled",))
        self.assertEqual(server.requests[0][1], "/api/openai/v1/chat/completions")
        self.assertEqual(results[0].evidence["request"], "POST /api/openai/v1/chat/completions")


if __name__ == "__main__":
    unittest.main()
