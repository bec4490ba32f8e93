"""Admission of runs: the bound on the input held by waiting runs, and a run's own timeout.

An agent's runs that wait (for a slot, or for their session's lane) hold
their requests; together they may hold at most ``MAX_WAITING_INPUT_CHARS``
(scaled down here), past which a request is refused as a full queue is
(429, ``Retry-After``), at every door. The count is given back on every way
out of the wait. The control protocol's ``agent`` ``timeout`` (seconds) and
``chat.send`` ``timeoutMs`` set the run's own time limit, as the original's.
"""

from __future__ import annotations

import asyncio
import json
import time
import unittest
import urllib.parse
from typing import Any
from unittest import mock

from equabot_gw.agents import agent as agent_mod
from equabot_gw.agents import types as types_mod
from equabot_gw.agents.runtime import run, run_here
from equabot_gw.agents.types import AgentRequest, Message, TextPart, ToolCall
from equabot_gw.errors import ApiError, RunTimedOut
from equabot_gw.gateway import runs as runs_mod
from equabot_gw.gateway.client import ControlClient
from tests.support import TOKEN, base_config, running_gateway
from tests.test_runtime import RuntimeCase

# The scaled-down bound: three 300-character requests fit, a fourth does not.
BOUND = 1000


class WaitingInputBoundTest(RuntimeCase):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        patcher = mock.patch.object(agent_mod, "MAX_WAITING_INPUT_CHARS", BOUND)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.tiny = self.runtime.agents["tiny"]          # one slot

    async def busy(self) -> Any:
        """A long run holding tiny's one slot."""
        handle = await self.started(" ".join(["w"] * 200), agent_id="tiny")
        self.assertEqual(handle.status, "running")
        return handle

    async def finish(self, *handles: Any) -> None:
        for handle in handles:
            handle.abort()
        await asyncio.gather(*(h.wait() for h in handles), return_exceptions=True)

    async def test_waiting_runs_past_the_bound_are_refused_like_a_full_queue(self) -> None:
        busy = await self.busy()
        queued = [await self.started("q" * 300, agent_id="tiny") for _ in range(3)]
        self.assertEqual([h.status for h in queued], ["queued"] * 3)
        self.assertEqual(self.tiny.waiting_chars, 900)
        exc = self.assertApiError(429, "rate_limit_exceeded", None, "'tiny'", "at capacity", "input",
                                  message="q" * 300, agent_id="tiny")
        self.assertEqual(dict(exc.headers), {"retry-after": agent_mod.RETRY_AFTER_SECONDS})
        self.assertEqual(self.tiny.waiting_chars, 900)          # the refused one holds nothing
        small = self.start("q" * 100, agent_id="tiny")          # one that fits is admitted
        self.assertEqual(self.tiny.waiting_chars, 1000)
        await self.finish(busy, *queued, small)
        self.assertEqual((self.tiny.waiting, self.tiny.waiting_chars), (0, 0))

    async def test_context_input_and_system_prompt_are_weighed(self) -> None:
        busy = await self.busy()
        request = AgentRequest(
            message="m" * 10, agent_id="tiny", system="s" * 20,
            context=(Message("user", "c" * 30),
                     Message("assistant", "", tool_calls=(ToolCall("id", "f", "a" * 40),), reasoning="r" * 50)),
            input=(Message("user", (TextPart("t" * 60),)),))
        items = 3 + 1 + 1           # messages, a content part, a tool call: each weighs its objects too
        self.assertEqual(request.input_chars(), 210 + items * types_mod.ITEM_WEIGHT_CHARS)
        with mock.patch.object(agent_mod, "MAX_WAITING_INPUT_CHARS", 10 * BOUND):
            handle = run(self.runtime, request)
        self.assertEqual(self.tiny.waiting_chars, request.input_chars())
        await self.finish(busy, handle)

    async def test_many_small_messages_weigh_what_they_hold(self) -> None:
        # 100 one-character messages: a few hundred characters of text, but each message
        # is objects (and parsed JSON) of some hundred bytes, held while the run waits.
        busy = await self.busy()
        context = tuple(Message("user" if n % 2 == 0 else "assistant", "c") for n in range(100))
        with self.assertRaises(ApiError) as caught:
            run(self.runtime, AgentRequest(message="m", agent_id="tiny", context=context))
        self.assertEqual((caught.exception.status, caught.exception.code), (429, "rate_limit_exceeded"))
        self.assertEqual(self.tiny.waiting_chars, 0)
        await self.finish(busy)

    async def test_a_run_that_gets_a_slot_at_once_is_not_weighed(self) -> None:
        handle = self.start("x" * (3 * BOUND), agent_id="tiny")     # the slot is free: no wait
        self.assertEqual(self.tiny.waiting_chars, 0)
        self.assertEqual((await asyncio.wait_for(handle.wait(), 10)).text, "Echo (turn 1): " + "x" * (3 * BOUND))

    async def test_a_run_that_gets_its_slot_gives_its_input_back(self) -> None:
        busy = await self.busy()
        queued = await self.started("q" * 300, agent_id="tiny")
        self.assertEqual(self.tiny.waiting_chars, 300)
        busy.abort()
        await self.first_delta(queued)              # it has its slot: it waits no more
        self.assertEqual(self.tiny.waiting_chars, 0)
        await asyncio.wait_for(queued.wait(), 10)
        await asyncio.wait_for(busy.wait(), 10) if not busy.done else None
        self.assertEqual(self.tiny.waiting_chars, 0)

    async def test_an_aborted_waiting_run_gives_its_input_back(self) -> None:
        busy = await self.busy()
        queued = await self.started("q" * 300, agent_id="tiny")
        unstarted = self.start("u" * 200, agent_id="tiny")      # aborted before its task's first step
        self.assertEqual(self.tiny.waiting_chars, 500)
        self.assertTrue(queued.abort("changed my mind"))
        self.assertTrue(unstarted.abort("changed my mind"))
        await self.assertAborted(queued)
        await self.assertAborted(unstarted)
        self.assertEqual(self.tiny.waiting_chars, 0)
        await self.finish(busy)

    async def test_a_waiting_run_whose_caller_leaves_gives_its_input_back(self) -> None:
        busy = await self.busy()
        caller = asyncio.ensure_future(run_here(self.runtime, AgentRequest(message="q" * 300, agent_id="tiny"),
                                                "client disconnected"))
        deadline = time.monotonic() + 5
        while self.tiny.waiting_chars != 300:
            self.assertLess(time.monotonic(), deadline)
            await asyncio.sleep(0.001)
        caller.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await caller
        self.assertEqual((self.tiny.waiting, self.tiny.waiting_chars), (0, 0))
        await self.finish(busy)

    async def test_a_run_waiting_for_its_session_lane_is_weighed(self) -> None:
        # Slots are free (20), but the session's lane is taken by a slow run.
        lane = self.runtime.agents["slow"]
        first = await self.started(" ".join(["w"] * 200), agent_id="slow", session_key="one")
        second = await self.started("q" * 300, agent_id="slow", session_key="one")
        self.assertEqual(second.status, "queued")
        self.assertEqual(lane.waiting_chars, 300)
        other = self.start("o" * 300, agent_id="slow", session_key="two")     # its own lane: no wait
        self.assertEqual(lane.waiting_chars, 300)
        first.abort()
        await asyncio.wait_for(second.wait(), 10)
        await asyncio.wait_for(other.wait(), 10)
        self.assertEqual(lane.waiting_chars, 0)
        self.assertEqual(self.runtime.lanes, {})

    async def test_a_run_aborted_while_waiting_for_its_lane_gives_its_input_back(self) -> None:
        lane = self.runtime.agents["slow"]
        first = await self.started(" ".join(["w"] * 200), agent_id="slow", session_key="one")
        second = await self.started("q" * 300, agent_id="slow", session_key="one")
        self.assertEqual((lane.waiting_chars, self.runtime.lanes), (300, {"agent:slow:one": 2}))
        self.assertTrue(second.abort("changed my mind"))
        await self.assertAborted(second)
        self.assertEqual((lane.waiting_chars, self.runtime.lanes), (0, {"agent:slow:one": 1}))
        await self.finish(first)
        self.assertEqual(self.runtime.lanes, {})

    async def test_a_run_waiting_for_a_reset_of_its_session_is_weighed(self) -> None:
        lane = self.runtime.agents["slow"]
        self.assertEqual((await self.start("x", agent_id="slow", session_key="one").wait()).turn, 1)
        store = self.runtime.store
        reset, go_on = store.reset, asyncio.Event()

        async def slow_reset(agent_id: str, key: str) -> bool:
            await go_on.wait()                       # a slow disk: the reset holds the lane
            return await reset(agent_id, key)

        with mock.patch.object(store, "reset", slow_reset):
            forgetting = asyncio.ensure_future(self.runtime.forget_session("slow", "one"))
            await asyncio.sleep(0)
            behind = await self.started("q" * 300, agent_id="slow", session_key="one")
            self.assertEqual((behind.status, lane.waiting_chars), ("queued", 300))
            go_on.set()
            self.assertTrue(await asyncio.wait_for(forgetting, 10))
        self.assertEqual((await asyncio.wait_for(behind.wait(), 10)).turn, 1)     # after the reset
        self.assertEqual((lane.waiting_chars, self.runtime.lanes), (0, {}))

    async def test_a_burst_on_one_session_is_weighed_before_any_run_starts(self) -> None:
        lane = self.runtime.agents["slow"]
        handles = [self.start("q" * 300, agent_id="slow", session_key="burst") for _ in range(3)]
        # No loop turn between them: the first alone will hold the lane, the others wait.
        self.assertEqual(lane.waiting_chars, 600)
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 10)
        self.assertEqual((lane.waiting_chars, self.runtime.lanes), (0, {}))


class OwnTimeoutTest(RuntimeCase):
    async def test_a_run_with_a_timeout_of_its_own_is_aborted_at_it(self) -> None:
        begun = time.monotonic()
        handle = run(self.runtime, AgentRequest(message=" ".join(["w"] * 200), agent_id="slow", timeout=0.1))
        with self.assertRaises(RunTimedOut) as caught:
            await asyncio.wait_for(handle.wait(), 10)
        self.assertLess(time.monotonic() - begun, 3)            # not the agent's 600 s
        self.assertEqual((caught.exception.timeout, str(caught.exception)),
                         (0.1, "run aborted: no reply within 0.1 s"))

    async def test_a_short_own_timeout_is_not_held_behind_the_agents_longer_one(self) -> None:
        # "patient" times its runs out after 0.3 s; a later run asks for 0.05 s.
        long = self.start(" ".join(["w"] * 200), agent_id="patient")
        await self.first_delta(long)
        begun = time.monotonic()
        short = run(self.runtime, AgentRequest(message=" ".join(["w"] * 200), agent_id="patient", timeout=0.05))
        with self.assertRaises(RunTimedOut):
            await asyncio.wait_for(short.wait(), 10)
        self.assertFalse(long.done)                             # it ended first, on its own timer
        self.assertLess(time.monotonic() - begun, 0.3)
        with self.assertRaises(RunTimedOut) as caught:
            await asyncio.wait_for(long.wait(), 10)
        self.assertEqual(caught.exception.timeout, 0.3)
        self.assertEqual(self.runtime.agents["patient"]._own_timers, {})

    async def test_a_run_that_ends_in_time_leaves_no_timer(self) -> None:
        result = await run(self.runtime, AgentRequest(message="hi", agent_id="slow", timeout=60)).wait()
        self.assertEqual(result.text, "Echo (turn 1): hi")
        self.assertEqual(self.runtime.agents["slow"]._own_timers, {})


def doors_config() -> dict[str, Any]:
    data = base_config(http={"endpoints": {"chatCompletions": {"enabled": True}, "responses": {"enabled": True}}})
    data["agents"] = {"list": [{"id": "main", "default": True, "model": "slow/echo", "maxConcurrent": 1},
                               {"id": "quick", "model": "slow/echo", "timeoutSeconds": 0.2}]}
    data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": 40}}}
    return data


class DoorTestCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self._gateway_cm = running_gateway(doors_config())
        self.gw = await self._gateway_cm.__aenter__()
        self.runtime = self.gw.runtime

    async def asyncTearDown(self) -> None:
        for handle in list(self.runtime.active.values()):
            handle.abort()
        await self._gateway_cm.__aexit__(None, None, None)

    async def client(self) -> ControlClient:
        c = await ControlClient.open(self.gw.url, TOKEN)
        health = await asyncio.wait_for(c.next_frame(), 2)
        self.assertEqual(health.get("event"), "health")
        return c

    async def response_to(self, client: ControlClient, req_id: str, *, final: bool = True) -> dict[str, Any]:
        """The response frame to ``req_id`` (past an ``accepted`` ack when ``final``)."""
        while True:
            frame = await asyncio.wait_for(client.next_frame(), 10)
            if frame.get("type") == "res" and frame.get("id") == req_id:
                if final and frame.get("ok") and frame["payload"].get("status") == "accepted":
                    continue
                return frame

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        address = urllib.parse.urlsplit(self.gw.url)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        data = json.dumps(body).encode()
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + data)
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, json.loads(payload)


class WaitingInputAtTheDoorsTest(DoorTestCase):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        patcher = mock.patch.object(agent_mod, "MAX_WAITING_INPUT_CHARS", BOUND)
        patcher.start()
        self.addCleanup(patcher.stop)
        main = self.runtime.agents["main"]
        self.busy = run(self.runtime, AgentRequest(message=" ".join(["w"] * 500)))
        self.queued = run(self.runtime, AgentRequest(message="q" * 900))
        self.assertEqual(main.waiting_chars, 900)

    async def test_chat_completions_and_responses_answer_429_with_retry_after(self) -> None:
        for path, body in (("/v1/chat/completions", {"model": "equabot",
                                                     "messages": [{"role": "user", "content": "x" * 200}]}),
                           ("/v1/responses", {"model": "equabot", "input": "x" * 200})):
            with self.subTest(path=path):
                status, headers, payload = await self.post(path, body)
                self.assertEqual(status, 429, payload)
                self.assertEqual(headers.get("retry-after"), agent_mod.RETRY_AFTER_SECONDS)
                self.assertEqual(payload["error"]["code"], "rate_limit_exceeded")
                self.assertIn("at capacity", payload["error"]["message"])
        self.assertEqual(self.runtime.agents["main"].waiting_chars, 900)

    async def test_agent_and_chat_send_answer_the_queue_full_error(self) -> None:
        c = await self.client()
        try:
            sent = {"agent": c.send("agent", {"message": "x" * 200, "idempotencyKey": "k1"}),
                    "chat.send": c.send("chat.send", {"sessionKey": "s", "message": "x" * 200,
                                                      "idempotencyKey": "k2"})}
            for method, req_id in sent.items():
                with self.subTest(method=method):
                    frame = await self.response_to(c, req_id)
                    self.assertFalse(frame["ok"], frame)
                    self.assertEqual(frame["error"]["retryAfterMs"], 1000)
                    self.assertIn("at capacity", frame["error"]["message"])
        finally:
            await c.close()
        self.assertEqual(self.runtime.agents["main"].waiting_chars, 900)


class StoppingTest(DoorTestCase):
    async def test_a_run_refused_while_stopping_says_when_to_retry(self) -> None:
        c = await self.client()
        try:
            self.gw.control.stopping = True         # as shutdown sets it, before the runtime closes
            for method, params in (("agent", {"message": "hi", "idempotencyKey": "s1"}),
                                   ("chat.send", {"sessionKey": "s", "message": "hi", "idempotencyKey": "s2"})):
                with self.subTest(method=method):
                    frame = await self.response_to(c, c.send(method, params))
                    self.assertEqual(frame["error"], {"code": "UNAVAILABLE", "message": "the gateway is shutting down",
                                                      "retryAfterMs": 1000})
            self.gw.control.stopping = False
        finally:
            await c.close()


class AgentTimeoutParamTest(DoorTestCase):
    async def test_timeout_seconds_limits_the_run(self) -> None:
        c = await self.client()
        try:
            begun = time.monotonic()
            req = c.send("agent", {"message": " ".join(["w"] * 200), "timeout": 1, "idempotencyKey": "t1"})
            frame = await self.response_to(c, req)
            self.assertLess(time.monotonic() - begun, 8)         # not the agent's 600 s
            self.assertFalse(frame["ok"], frame)
            self.assertEqual(frame["error"]["code"], "AGENT_TIMEOUT")
            self.assertIn("within 1 s", frame["error"]["message"])
        finally:
            await c.close()

    async def test_chat_send_timeout_ms_limits_the_run(self) -> None:
        c = await self.client()
        try:
            req = c.send("chat.send", {"sessionKey": "s", "message": " ".join(["w"] * 200), "timeoutMs": 300,
                                       "idempotencyKey": "t2"})
            self.assertEqual((await self.response_to(c, req))["payload"]["status"], "started")
            handle = next(iter(self.runtime.active.values()))
            with self.assertRaises(RunTimedOut) as caught:
                await asyncio.wait_for(handle.wait(), 8)
            self.assertEqual(caught.exception.timeout, 0.3)
        finally:
            await c.close()

    async def test_zero_asks_for_the_agents_own_timeout(self) -> None:
        c = await self.client()
        try:
            req = c.send("agent", {"message": " ".join(["w"] * 200), "agentId": "quick", "timeout": 0,
                                   "idempotencyKey": "t3"})
            frame = await self.response_to(c, req)
            self.assertEqual(frame["error"]["code"], "AGENT_TIMEOUT")
            self.assertIn("within 0.2 s", frame["error"]["message"])
        finally:
            await c.close()

    async def test_a_huge_timeout_is_taken_and_cut_to_the_longest(self) -> None:
        self.assertEqual(runs_mod._run_timeout({"timeout": 10**12}), runs_mod.MAX_RUN_TIMEOUT_SECONDS)
        self.assertEqual(runs_mod._run_timeout({"timeoutMs": 10**15}), runs_mod.MAX_RUN_TIMEOUT_SECONDS)
        c = await self.client()
        try:
            # "quick" times its runs out at 0.2 s; this one asks for far more, and gets it.
            req = c.send("agent", {"message": " ".join(["w"] * 12), "agentId": "quick", "timeout": 10**12,
                                   "idempotencyKey": "t4"})
            final = await self.response_to(c, req)
            self.assertTrue(final["ok"], final)
            self.assertEqual(final["payload"]["status"], "ok")
        finally:
            await c.close()

    async def test_a_negative_or_fractional_timeout_is_invalid_params(self) -> None:
        c = await self.client()
        try:
            for value, why in ((-1, "at /timeout: must be >= 0"), (1.5, "at /timeout: must be integer"),
                               ("600", "at /timeout: must be integer")):
                with self.subTest(value=value):
                    req = c.send("agent", {"message": "hi", "timeout": value, "idempotencyKey": f"bad{value}"})
                    frame = await self.response_to(c, req)
                    self.assertFalse(frame["ok"])
                    self.assertEqual(frame["error"]["code"], "INVALID_REQUEST")
                    self.assertEqual(frame["error"]["message"], f"invalid agent params: {why}")
            self.assertEqual(self.runtime.active, {})
        finally:
            await c.close()


if __name__ == "__main__":
    unittest.main()
