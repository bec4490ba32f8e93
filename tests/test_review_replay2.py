"""Repeats of keyed runs, continued: a Responses stream resumed past its end, and a failed
run's large partial reply answered the same by a repeat before a restart as after one."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import tempfile
import unittest
from typing import Any

from equabot_gw import config as config_mod
from equabot_gw.agents import runtime as agent_runtime
from equabot_gw.agents.types import TextDelta
from equabot_gw.errors import UpstreamRejected, http_status
from equabot_gw.gateway.app import Gateway
from tests.resume_client import SSEStream, content_of
from tests.support import base_config

# Over what the runtime holds of a finished run's reply: it is read back from the transcript.
LARGE = "x" * (agent_runtime.MAX_KEPT_REPLY_BYTES + 1000)


async def words(call: Any) -> Any:
    """A model that answers a few words."""
    for word in ("a", " short", " reply"):
        yield TextDelta(word)


class Failing:
    """A model that streams a large partial reply, then fails; ``calls`` counts its runs."""

    def __init__(self) -> None:
        self.calls = 0

    def provider(self) -> Any:
        async def model(call: Any) -> Any:
            self.calls += 1
            yield TextDelta(LARGE)
            raise UpstreamRejected("failing", 429, "slow down", "7", code="rate_limit_exceeded", param="messages")
        return model


class GatewayCase(unittest.IsolatedAsyncioTestCase):
    provider_name = "words"

    def provider(self) -> Any:
        return words

    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.state = pathlib.Path(self.tmp.name)
        self.gateway: Gateway | None = None

    async def asyncTearDown(self) -> None:
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                await self.gateway.stop()
        self.tmp.cleanup()

    async def start(self) -> Gateway:
        data = base_config()
        data["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
        data["agents"] = {"defaults": {"model": f"{self.provider_name}/x"}}
        self.gateway = Gateway(config_mod.from_data(data, env={}, python_providers=(self.provider_name,)),
                               self.state, port=0, env={}, providers={self.provider_name: self.provider()})
        await self.gateway.start()
        return self.gateway

    async def restart(self) -> Gateway:
        assert self.gateway is not None
        await self.gateway.stop()
        self.gateway = None
        return await self.start()

    async def sse(self, path: str, body: dict[str, Any], headers: dict[str, str]
                  ) -> tuple[SSEStream, list[tuple[str | None, Any]]]:
        assert self.gateway is not None
        opened = await SSEStream.open(self.gateway.server.port, body, headers, path=path)
        if opened.status != 200:
            return opened, []
        return opened, await asyncio.wait_for(opened.read_all(), 30)


class ResponsesLastEventIdPastTheEndTest(GatewayCase):
    BODY = {"model": "equabot", "input": "hi", "stream": True}

    async def test_an_id_past_the_end_of_a_finished_response_is_refused_and_the_end_is_not(self) -> None:
        await self.start()
        _, first = await self.sse("/v1/responses", self.BODY, {"Idempotency-Key": "k-end"})
        self.assertEqual(first[-1][1]["type"], "response.completed")
        last_id = first[-1][0]
        stream, seq = last_id.rsplit(":", 1)            # type: ignore[union-attr]
        for past in (int(seq) + 1, 10 ** 9):
            with self.subTest(seq=past):
                refused, _ = await self.sse("/v1/responses", self.BODY,
                                            {"Idempotency-Key": "k-end", "Last-Event-ID": f"{stream}:{past}"})
                self.assertEqual(refused.status, 400)
                error = refused.json()["error"]
                self.assertEqual((error["code"], error["param"]), ("invalid_last_event_id", "Last-Event-ID"))
                self.assertIn(f"seq {past}", error["message"])
        # The last events themselves: what is after them, nothing after the last.
        opened, rest = await self.sse("/v1/responses", self.BODY,
                                      {"Idempotency-Key": "k-end", "Last-Event-ID": first[-2][0]})
        self.assertEqual((opened.status, rest), (200, [first[-1]]))
        self.assertEqual(opened.headers.get("x-equabot-idempotent-replay"), "true")
        opened, rest = await self.sse("/v1/responses", self.BODY,
                                      {"Idempotency-Key": "k-end", "Last-Event-ID": last_id})
        self.assertEqual((opened.status, rest), (200, []))

    async def test_a_starting_after_past_the_end_of_a_stored_response_is_refused(self) -> None:
        await self.start()
        _, first = await self.sse("/v1/responses", self.BODY, {})
        response_id, seq = first[-1][0].rsplit(":", 1)      # type: ignore[union-attr]
        path = f"/v1/responses/{response_id}?stream=true&starting_after="
        assert self.gateway is not None
        refused = await SSEStream.open(self.gateway.server.port, None, {}, method="GET", path=path + str(int(seq) + 1))
        self.assertEqual(refused.status, 400)
        self.assertEqual(refused.json()["error"]["param"], "starting_after")
        opened = await SSEStream.open(self.gateway.server.port, None, {}, method="GET", path=path + seq)
        self.assertEqual((opened.status, await asyncio.wait_for(opened.read_all(), 10)), (200, []))


class LargePartialReplayTest(GatewayCase):
    """A failed run whose partial reply is too large to hold in memory: a repeat of its key
    before a restart answers what one after a restart does (its partial, its error)."""

    provider_name = "failing"

    def provider(self) -> Any:
        return self.model.provider()

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.model = Failing()

    async def test_chat_stream_repeats_before_and_after_a_restart_agree(self) -> None:
        body = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        await self.start()
        _, first = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-big"})
        self.assertEqual(content_of(first), LARGE)
        _, before = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-big"})
        await self.restart()
        opened, after = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-big"})
        self.assertEqual(self.model.calls, 1)
        self.assertEqual(opened.headers.get("x-equabot-idempotent-replay"), "true")
        self.assertEqual(content_of(after), LARGE)
        self.assertEqual(content_of(before), content_of(after))
        self.assertEqual(before[-2][1], after[-2][1])       # the same error
        self.assertIn("error", before[-2][1])

    async def test_responses_stream_repeats_before_and_after_a_restart_agree(self) -> None:
        body = {"model": "equabot", "input": "hi", "stream": True, "store": False}

        def text(events: list[tuple[str | None, Any]]) -> str:
            return "".join(data.get("delta", "") for _, data in events
                           if data.get("type") == "response.output_text.delta")

        await self.start()
        _, first = await self.sse("/v1/responses", body, {"Idempotency-Key": "k-big"})
        self.assertEqual(text(first), LARGE)
        _, before = await self.sse("/v1/responses", body, {"Idempotency-Key": "k-big"})
        await self.restart()
        _, after = await self.sse("/v1/responses", body, {"Idempotency-Key": "k-big"})
        self.assertEqual(self.model.calls, 1)
        self.assertEqual(text(after), LARGE)
        self.assertEqual(text(before), text(after))
        self.assertEqual(before[-1][1]["response"]["error"], after[-1][1]["response"]["error"])

    async def test_the_record_that_every_door_replays_holds_the_partial(self) -> None:
        # The WebSocket agent method's repeat answers the record's terminal event too.
        body = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        gateway = await self.start()
        await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-big"})
        runtime = gateway.runtime
        records = [record for record in runtime._finished.values()]
        self.assertEqual(len(records), 1)
        self.assertEqual(records[0].kept_bytes, 0)            # not held: read back
        end = await records[0].terminal_event()
        self.assertEqual(end.partial, LARGE)                   # type: ignore[union-attr]
        self.assertEqual(http_status(end.error), 429)          # type: ignore[union-attr]


if __name__ == "__main__":
    unittest.main()
