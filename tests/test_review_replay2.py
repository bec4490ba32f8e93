"""Repeats of keyed runs, continued: a Responses stream resumed past its end, and a failed
run's large partial reply answered the same by a repeat before a restart as after one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import tempfile
import unittest
from typing import Any

from equabot_gw import config as config_mod
from equabot_gw.agents import runtime as agent_runtime
from equabot_gw.agents.types import Finish, TextDelta, ToolCallDelta, Usage
from equabot_gw.errors import ReplyTooLarge, UpstreamRejected, http_status
from equabot_gw.gateway.app import Gateway
from tests.resume_client import SSEStream, content_of
from tests.support import base_config, post_closing

# Over what the runtime holds of a finished run's reply: it is read back from the transcript.
LARGE = "x" * (agent_runtime.MAX_KEPT_REPLY_BYTES + 1000)


async def words(call: Any) -> Any:
    """A model that answers a few words."""
    for word in ("a", " short", " reply"):
        yield TextDelta(word)


class Failing:
    """A model that streams a partial reply (large by default), then fails with ``error``
    (429 by default); ``calls`` counts its runs."""

    def __init__(self, partial: str = LARGE, error: Exception | None = None) -> None:
        self.calls = 0
        self.partial = partial
        self.error = error or UpstreamRejected("failing", 429, "slow down", "7", code="rate_limit_exceeded",
                                               param="messages")

    def provider(self) -> Any:
        async def model(call: Any) -> Any:
            self.calls += 1
            yield TextDelta(self.partial)
            raise self.error
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


async def large(call: Any) -> Any:
    """A model whose reply is over what the runtime holds of a finished run's."""
    yield TextDelta(LARGE)


class ChatLastEventIdPastTheEndOfALargeReplyTest(GatewayCase):
    """A finished stream whose reply is read back from its transcript (not held): an id past
    its [DONE] is refused as one of a reply held in memory is."""

    provider_name = "large"

    def provider(self) -> Any:
        return large

    async def test_an_id_past_the_end_is_refused_and_the_end_is_not(self) -> None:
        body = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        await self.start()
        _, first = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-large"})
        self.assertEqual((content_of(first), first[-1][1]), (LARGE, "[DONE]"))
        stream, seq = first[-1][0].rsplit(":", 1)           # type: ignore[union-attr]
        for past in (int(seq) + 1, 10 ** 9):
            with self.subTest(seq=past):
                refused, _ = await self.sse("/v1/chat/completions", body,
                                            {"Idempotency-Key": "k-large", "Last-Event-ID": f"{stream}:{past}"})
                self.assertEqual(refused.status, 400)
                self.assertEqual(refused.json()["error"]["code"], "invalid_last_event_id")
        opened, rest = await self.sse("/v1/chat/completions", body,
                                      {"Idempotency-Key": "k-large", "Last-Event-ID": first[-2][0]})
        self.assertEqual((opened.status, rest), (200, [first[-1]]))


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

    async def test_after_a_restart_the_record_does_not_hold_the_large_partial_and_still_replays_it(self) -> None:
        body = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        await self.start()
        await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-big"})
        gateway = await self.restart()
        for _ in range(2):      # read back from disk, then from the record it left
            _, again = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-big"})
            self.assertEqual(content_of(again), LARGE)
        [record] = [r for r in gateway.runtime._finished.values() if r.status == "error"]
        self.assertEqual((record.partial, record.kept_bytes), ("", 0))     # where it is, not itself
        self.assertIsNotNone(record.reply_at)
        self.assertEqual(self.model.calls, 1)

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

    async def test_json_repeats_of_a_failed_run_are_marked_as_replays_and_agree(self) -> None:
        chat = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}]}
        responses = {"model": "equabot", "input": "hi", "store": False}

        async def ask(path: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, str], Any]:
            assert self.gateway is not None
            status, fields, payload, _ = await post_closing(self.gateway.server.port, path, json.dumps(body).encode(),
                                                            headers=f"Idempotency-Key: {key}\r\n")
            return status, fields, json.loads(payload)

        await self.start()
        firsts = {path: await ask(path, body, path) for path, body in
                  (("/v1/chat/completions", chat), ("/v1/responses", responses))}
        befores = {path: await ask(path, body, path) for path, body in
                   (("/v1/chat/completions", chat), ("/v1/responses", responses))}
        await self.restart()
        afters = {path: await ask(path, body, path) for path, body in
                  (("/v1/chat/completions", chat), ("/v1/responses", responses))}
        self.assertEqual(self.model.calls, 2)          # one run per key
        for path, (status, fields, first) in firsts.items():
            with self.subTest(path=path):
                self.assertEqual(status, 429)
                self.assertNotIn("x-equabot-idempotent-replay", fields)
                for status, fields, again in (befores[path], afters[path]):
                    self.assertEqual((status, fields.get("x-equabot-idempotent-replay")), (429, "true"))
                    self.assertEqual(fields.get("retry-after"), "7")
                    self.assertEqual(again, first)
        status, _, refused = await ask("/v1/chat/completions", {**chat, "temperature": 0.5}, "/v1/chat/completions")
        self.assertEqual((status, refused["error"]["code"]), (422, "idempotency_key_reused"))

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



class ReplyTooLargeReplayTest(GatewayCase):
    """A run that failed because its reply passed its bound: the reply is not kept, in memory
    as on disk, so a repeat answers the error alone before a restart as after one."""

    provider_name = "failing"

    def provider(self) -> Any:
        return self.model.provider()

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.model = Failing("some words", ReplyTooLarge("failing", 10))

    async def test_chat_stream_repeats_before_and_after_a_restart_agree(self) -> None:
        body = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        await self.start()
        _, first = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-over"})
        self.assertEqual(content_of(first), "some words")        # streamed as it came
        _, before = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-over"})
        await self.restart()
        _, after = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-over"})
        self.assertEqual(self.model.calls, 1)
        self.assertEqual((content_of(before), before[-2][1]), (content_of(after), after[-2][1]))
        self.assertIn("maxReplyBytes", after[-2][1]["error"]["message"])



async def calling(call: Any) -> Any:
    """A model that says a word, calls a tool, and reports cached and reasoning tokens."""
    yield TextDelta("let me look")
    yield ToolCallDelta(0, "call_1", "lookup", '{"q": 1}')
    yield Usage(12, 7, cached_tokens=4, reasoning_tokens=3)
    yield Finish("tool_calls")


class OkReplayAfterRestartTest(GatewayCase):
    """An ok run's repeat, in memory and after a restart: the same reply, tool calls, usage
    (with its details) and finish reason, each marked as a replay; another body is refused."""

    provider_name = "calling"

    def provider(self) -> Any:
        return calling

    BODY = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}

    async def ask(self, body: dict[str, Any], path: str = "/v1/chat/completions") -> tuple[int, dict[str, str], Any]:
        assert self.gateway is not None
        status, fields, payload, _ = await post_closing(self.gateway.server.port, path, json.dumps(body).encode(),
                                                        headers="Idempotency-Key: k-ok\r\n")
        return status, fields, json.loads(payload)

    async def test_json_repeats_before_and_after_a_restart_agree(self) -> None:
        await self.start()
        status, fields, first = await self.ask(self.BODY)
        self.assertEqual(status, 200)
        self.assertNotIn("x-equabot-idempotent-replay", fields)
        choice = first["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertEqual(choice["message"]["tool_calls"][0]["function"]["name"], "lookup")
        self.assertEqual(first["usage"]["prompt_tokens_details"], {"cached_tokens": 4})
        self.assertEqual(first["usage"]["completion_tokens_details"], {"reasoning_tokens": 3})
        repeats = [await self.ask(self.BODY)]
        await self.restart()
        repeats.append(await self.ask(self.BODY))
        for status, fields, again in repeats:
            self.assertEqual((status, fields.get("x-equabot-idempotent-replay")), (200, "true"))
            self.assertEqual(again, first)
        status, _, refused = await self.ask({**self.BODY, "temperature": 0.5})
        self.assertEqual((status, refused["error"]["code"]), (422, "idempotency_key_reused"))

    async def test_stream_repeats_before_and_after_a_restart_agree(self) -> None:
        body = {**self.BODY, "stream": True, "stream_options": {"include_usage": True}}
        await self.start()
        opened, first = await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-ok"})
        self.assertNotIn("x-equabot-idempotent-replay", opened.headers)
        repeats = [await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-ok"})]
        await self.restart()
        repeats.append(await self.sse("/v1/chat/completions", body, {"Idempotency-Key": "k-ok"}))
        self.assertEqual(first[-2][1]["usage"]["completion_tokens_details"], {"reasoning_tokens": 3})
        for opened, again in repeats:
            self.assertEqual(opened.headers.get("x-equabot-idempotent-replay"), "true")
            self.assertEqual(content_of(again), content_of(first))
            self.assertEqual(again[-2][1]["usage"], first[-2][1]["usage"])
            finish = [c["finish_reason"] for _, data in again if data != "[DONE]" for c in data["choices"]
                      if c.get("finish_reason")]
            self.assertEqual(finish, ["tool_calls"])
            calls = [c["delta"]["tool_calls"] for _, data in again if data != "[DONE]" for c in data["choices"]
                     if c["delta"].get("tool_calls")]
            self.assertEqual(calls[0][0]["function"]["name"], "lookup")

    async def test_responses_repeats_before_and_after_a_restart_agree(self) -> None:
        body = {"model": "equabot", "input": "hi", "store": False,
                "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]}
        await self.start()
        status, fields, first = await self.ask(body, "/v1/responses")
        self.assertEqual(status, 200)
        self.assertEqual(first["usage"]["output_tokens_details"], {"reasoning_tokens": 3})
        repeats = [await self.ask(body, "/v1/responses")]
        await self.restart()
        repeats.append(await self.ask(body, "/v1/responses"))
        for status, fields, again in repeats:
            self.assertEqual((status, fields.get("x-equabot-idempotent-replay")), (200, "true"))
            self.assertEqual(again, first)
        status, _, refused = await self.ask({**body, "temperature": 0.5}, "/v1/responses")
        self.assertEqual((status, refused["error"]["code"]), (422, "idempotency_key_reused"))


if __name__ == "__main__":
    unittest.main()
