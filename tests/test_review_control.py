"""The control protocol's answers that must stay the same when asked again, and its reply bounds."""

from __future__ import annotations

import asyncio
import json
from typing import Any

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
