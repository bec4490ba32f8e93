"""Every run settles: a failure injected at each step of a run ends it as failed, and nothing hangs.

For each step (admission, lane, slot, history load, building the provider
call, provider start, provider mid-stream, recording) a patched function
raises. The run must settle as failed, its waiters and subscribers wake,
``POST /v1/chat/completions`` answers (a JSON error, or on a stream that
began an error event and ``[DONE]``), nothing is left in ``runtime.active``
or in an agent's counters, and asyncio never logs "Task exception was never
retrieved". Also here: a session key naming its agent in upper case
(``agent:MAIN:x``) runs on agent ``main`` over HTTP and WebSocket, and an
abort that lands before the run's task took its first step still settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import unittest
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

from equabot_gw.agents import lifecycle
from equabot_gw.agents import runtime as runtime_mod
from equabot_gw.agents import sessions
from equabot_gw.agents.events import Delta, Failed
from equabot_gw.agents.types import AgentRequest, ProviderCall, ProviderEvent, TextDelta
from equabot_gw.errors import RunAborted, RunError
from equabot_gw.gateway.client import ControlClient
from equabot_gw.providers import echo
from tests.support import TOKEN, base_config, error_of, running_gateway, split_responses
from tests.test_faults import sse_events, stream_outcome


class Injected(RuntimeError):
    """The failure a test plants."""


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Injected("planted")


async def aboom(*args: Any, **kwargs: Any) -> Any:
    raise Injected("planted")


class _FailingLane:
    async def __aenter__(self) -> None:
        raise Injected("planted")

    async def __aexit__(self, *exc: object) -> None:
        return None


async def _fails_at_start(self: Any, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
    raise Injected("planted")
    yield TextDelta("never")                 # an async generator, like every provider


async def _fails_mid_stream(self: Any, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
    yield TextDelta("first")
    yield TextDelta(" words")
    await asyncio.sleep(0)
    raise Injected("planted")


# (step, patch target, replacement, HTTP status before output, stream output before the failure)
STEPS: tuple[tuple[str, Any, str, Any, int, bool], ...] = (
    ("admission", runtime_mod.Agent, "admit", boom, 500, False),
    ("lane", sessions.SessionStore, "lane", lambda self, key: _FailingLane(), 500, False),
    ("slot", runtime_mod.Agent, "acquire", aboom, 500, False),
    ("history load", sessions.SessionStore, "history", aboom, 500, False),
    ("building the provider call", lifecycle, "ProviderCall", boom, 500, False),
    ("provider start", echo.EchoProvider, "stream", _fails_at_start, 502, False),
    ("provider mid-stream", echo.EchoProvider, "stream", _fails_mid_stream, 502, True),
    ("recording", sessions.SessionStore, "record_turn", aboom, 500, True),
)


async def post(port: int, body: dict[str, Any], headers: dict[str, str] | None = None,
               timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n"
            f"{extra}\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + data)
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    [(status, response_headers, payload)] = split_responses(raw)
    return status, response_headers, payload


def chat(message: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "equabot", "stream": stream, "messages": [{"role": "user", "content": message}]}


class EveryRunSettlesTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.gw = await self.enterAsyncContext(running_gateway())
        self.port = self.gw.server.port
        self.runtime = self.gw.runtime

    def assertNothingLeft(self) -> None:
        self.assertEqual(self.runtime.active, {})
        for agent in self.runtime.agents.values():
            self.assertEqual((agent.active, agent.waiting), (0, 0), agent.id)

    async def all_events(self, handle: Any) -> list[Any]:
        return [event async for event in handle.subscribe()]

    @contextlib.contextmanager
    def no_unretrieved_task_errors(self):
        with self.assertNoLogs("asyncio", "ERROR"):
            yield
            gc.collect()        # asyncio reports an unretrieved exception when the task is collected

    async def test_a_failure_at_each_step_settles_the_run_and_answers_the_request(self) -> None:
        for step, target, name, replacement, status, output_first in STEPS:
            for stream in (False, True):
                with self.subTest(step, stream=stream), self.no_unretrieved_task_errors(), \
                        self.assertLogs("equabot_gw", "ERROR"), \
                        mock.patch.object(target, name, replacement):
                    # A keyed session, so that the lane and the history are used too.
                    code, headers, body = await post(
                        self.port, chat(f"{step} {stream}", stream),
                        {"x-equabot-session-key": f"settle-{step.replace(' ', '-')}-{stream}"})
                    if stream and output_first:
                        self.assertEqual(code, 200, body)
                        text, finish, error = stream_outcome(sse_events(body))
                        self.assertTrue(text, "the words before the failure were streamed")
                        self.assertIsNone(finish)
                        self.assertEqual(error["type"], "server_error")
                    else:
                        self.assertEqual(code, status, body)
                        self.assertEqual(headers["content-type"], "application/json")
                        error = error_of(body)
                        self.assertNotIn("planted", error["message"])   # internals are not revealed
                    await asyncio.sleep(0)
                    self.assertNothingLeft()

    async def test_waiters_and_subscribers_wake_when_a_step_fails(self) -> None:
        for step, target, name, replacement, _, _ in STEPS:
            if step == "admission":
                continue                     # run() itself raises: there is no run to wait for
            with self.subTest(step), self.no_unretrieved_task_errors(), \
                    self.assertLogs("equabot_gw", "ERROR"), mock.patch.object(target, name, replacement):
                handle = runtime_mod.run(self.runtime, AgentRequest(message="hi", session_key="w-" + step.replace(" ", "-")))
                waiters = [asyncio.ensure_future(handle.wait()) for _ in range(3)]
                events = await asyncio.wait_for(self.all_events(handle), 5)
                done, pending = await asyncio.wait(waiters, timeout=5)
                self.assertEqual(pending, set())
                for waiter in done:
                    self.assertIsInstance(waiter.exception(), RunError)
                self.assertIsInstance(events[-1], Failed)
                self.assertEqual(handle.status, "error")
                self.assertNothingLeft()
                # The finished run answers the same way afterwards.
                with self.assertRaises(RunError):
                    await self.runtime.find_run(handle.id).wait()

    async def test_admission_failure_leaves_nothing_registered(self) -> None:
        with mock.patch.object(runtime_mod.Agent, "admit", boom), self.assertRaises(Injected):
            runtime_mod.run(self.runtime, AgentRequest(message="hi"))
        self.assertNothingLeft()

    async def test_an_abort_before_the_task_starts_settles_the_run(self) -> None:
        handle = runtime_mod.run(self.runtime, AgentRequest(message="hi", session_key="early"))
        self.assertTrue(handle.abort("chat.abort"))       # same loop turn: the task has not run yet
        with self.assertRaises(RunAborted):
            await asyncio.wait_for(handle.wait(), 5)
        self.assertEqual(handle.status, "aborted")
        self.assertNothingLeft()


class UpperCaseAgentInKeyTest(unittest.IsolatedAsyncioTestCase):
    """A key ``agent:MAIN:x`` belongs to agent ``main``: agent ids are compared without case."""

    async def test_http_and_websocket_runs_complete_on_the_normalised_session(self) -> None:
        async with running_gateway() as gw:
            code, _, body = await post(gw.server.port, chat("first"), {"x-equabot-session-key": "agent:MAIN:x"})
            self.assertEqual(code, 200, body)
            self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "Echo (turn 1): first")
            client = await ControlClient.open(gw.url, TOKEN)
            try:
                final = await asyncio.wait_for(self._agent(client, "agent:Main:x", "second"), 5)
                self.assertEqual(final["status"], "ok")
                self.assertEqual(final["result"]["payloads"][0]["text"], "Echo (turn 2): second")
                history = await client.request("chat.history", {"sessionKey": "agent:MAIN:x"})
                self.assertEqual([part["text"] for m in history["messages"] for part in m["content"]],
                                 ["first", "Echo (turn 1): first", "second", "Echo (turn 2): second"])
            finally:
                await client.close()
            self.assertEqual([i.key for i in gw.runtime.store.list_sessions("main")], ["agent:main:x"])

    async def _agent(self, client: ControlClient, key: str, message: str) -> dict[str, Any]:
        client.ws.send(json.dumps({"type": "req", "id": "a1", "method": "agent",
                                   "params": {"message": message, "sessionKey": key}}))
        while True:
            frame = await client.next_frame()
            if frame.get("type") == "res" and frame.get("id") == "a1" and frame["payload"]["status"] != "accepted":
                return frame["payload"]

    async def test_the_key_of_another_agent_is_still_refused(self) -> None:
        async with running_gateway() as gw:
            code, _, body = await post(gw.server.port, chat("x"), {"x-equabot-session-key": "agent:OTHER:x"})
            self.assertEqual(code, 404, body)
            self.assertEqual(error_of(body)["code"], "model_not_found")


if __name__ == "__main__":
    unittest.main()
