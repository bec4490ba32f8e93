"""The control protocol's answers that must stay the same when asked again, and its reply bounds."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from equabot_gw.gateway import methods
from equabot_gw.gateway.client import ControlClient
from tests.test_control import ControlTestCase, slow_config


def timing_out_config() -> dict[str, Any]:
    """``slow_config`` plus an agent whose runs pass their deadline mid-reply."""
    data = slow_config()
    data["agents"]["list"].append({"id": "quick", "model": "slow/echo", "timeoutSeconds": 0.2})
    return data


class RepeatedFailureTest(ControlTestCase):
    config = timing_out_config()

    async def response(self, client: ControlClient, req_id: str, *, final: bool) -> dict[str, Any]:
        """The first response to ``req_id`` (``final``: skipping its ack)."""
        while True:
            frame = await asyncio.wait_for(client.next_frame(), 10)
            if frame.get("type") == "res" and frame.get("id") == req_id \
                    and not (final and frame["payload"].get("status") == "accepted"):
                return frame

    async def test_a_repeated_key_of_a_timed_out_run_answers_the_same_error(self) -> None:
        c = await self.client()
        # 40 words at 40 ms each: well past the agent's 0.2 s deadline.
        params = {"message": " ".join(["w"] * 40), "agentId": "quick", "idempotencyKey": "late"}
        first = await self.response(c, c.send("agent", params), final=True)
        self.assertFalse(first["ok"])
        self.assertEqual(first["error"]["code"], "AGENT_TIMEOUT")
        again = await self.response(c, c.send("agent", params), final=False)
        self.assertEqual((again["ok"], again["payload"], again["error"]),
                         (first["ok"], first["payload"], first["error"]))
        await c.close()

    async def test_a_repeated_chat_send_of_a_failed_run_answers_its_error(self) -> None:
        c = await self.client()
        params = {"sessionKey": "agent:quick:late", "message": " ".join(["w"] * 40), "idempotencyKey": "late-chat"}
        self.assertEqual(await c.request("chat.send", params), {"runId": "late-chat", "status": "started"})
        waited = await c.request("agent.wait", {"runId": "late-chat", "timeoutMs": 10_000})
        self.assertEqual(waited["status"], "error")
        again = await self.response(c, c.send("chat.send", params), final=False)
        self.assertEqual((again["ok"], again["payload"], again["error"]["code"]),
                         (False, {"runId": "late-chat", "status": "error", "summary": waited["error"]},
                          "AGENT_TIMEOUT"))
        await c.close()


class HistoryBoundTest(ControlTestCase):
    async def test_chat_history_sends_at_most_MAX_HISTORY_BYTES_of_the_newest_messages(self) -> None:
        budget = getattr(methods, "MAX_HISTORY_BYTES", 6 * 1024 * 1024)    # the original's
        c = await self.client()
        big = budget // 4     # a turn (message and echo) is half the budget
        for n in range(4):
            final = await c.request("agent", {"message": f"turn{n} " + "x" * big, "sessionKey": "long",
                                              "idempotencyKey": f"long-{n}"})
            while final.get("status") == "accepted":
                frame = await asyncio.wait_for(c.next_frame(), 10)
                if frame.get("type") == "res":
                    final = frame["payload"]
            self.assertEqual(final["status"], "ok")
        history = await c.request("chat.history", {"sessionKey": "long"})
        messages = history["messages"]
        self.assertLessEqual(len(json.dumps(messages, separators=(",", ":")).encode()),
                             budget)
        self.assertTrue(0 < len(messages) < 8)          # the oldest were dropped
        self.assertTrue(messages[-1]["content"][0]["text"].startswith("Echo (turn 4): turn3 "))
        small = await c.request("chat.history", {"sessionKey": "long", "limit": 1})
        self.assertEqual(small["messages"], messages[-1:])
        await c.close()

    async def test_sessions_preview_shares_one_byte_budget_over_all_its_keys(self) -> None:
        budget = getattr(methods, "MAX_HISTORY_BYTES", 6 * 1024 * 1024)
        c = await self.client()
        for n in range(4):
            await c.request("chat.send", {"sessionKey": "wide", "message": f"turn{n} " + "y" * 200_000,
                                          "idempotencyKey": f"wide-{n}"})
            self.assertEqual((await c.request("agent.wait", {"runId": f"wide-{n}", "timeoutMs": 10_000}))
                             ["status"], "ok")
        # Each key asks for 8 items of 100,000 characters; 64 of them would be 51 MB.
        preview = await c.request("sessions.preview", {"keys": ["wide"] * 64, "limit": 100,
                                                       "maxChars": 100_000})
        previews = preview["previews"]
        self.assertEqual(len(previews), 64)
        self.assertEqual({p["status"] for p in previews}, {"ok"})
        sent = sum(len(json.dumps(p["items"], separators=(",", ":")).encode()) for p in previews)
        self.assertLessEqual(sent, budget)
        first = previews[0]["items"]
        self.assertEqual([item["role"] for item in first], ["user", "assistant"] * 4)
        self.assertEqual([len(item["text"]) for item in first], [100_000] * 8)
        self.assertEqual(previews[-1]["items"], [])     # the budget was spent before the last key
        await c.close()


class RepeatedChatSendTest(ControlTestCase):
    async def test_a_repeated_chat_send_says_in_flight_then_ok_and_starts_nothing(self) -> None:
        c = await self.client()
        params = {"sessionKey": "agent:slow:again", "message": " ".join(["w"] * 50), "idempotencyKey": "again-1"}
        self.assertEqual(await c.request("chat.send", params), {"runId": "again-1", "status": "started"})
        self.assertEqual(await c.request("chat.send", params), {"runId": "again-1", "status": "in_flight"})
        done = await c.request("agent.wait", {"runId": "again-1", "timeoutMs": 10_000})
        self.assertEqual(done["status"], "ok")
        self.assertEqual(await c.request("chat.send", params), {"runId": "again-1", "status": "ok"})
        history = await c.request("chat.history", {"sessionKey": "agent:slow:again"})
        self.assertEqual([m["role"] for m in history["messages"]], ["user", "assistant"])   # one run
        await c.close()
