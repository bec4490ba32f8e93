"""What a repeated idempotent run answers after a restart: a failed run's own error, word
for word and field for field, and its partial reply, without running again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import tempfile
import time
import unittest
from typing import Any

from equabot_gw import config as config_mod
from equabot_gw.agents import idempotency, lines
from equabot_gw.agents.records import record_from_line
from equabot_gw.agents.types import TextDelta, TurnRecord
from equabot_gw.errors import (
    RunAborted, RunError, RunFailed, RunTimedOut, StorageError, UpstreamError, UpstreamRejected, ReplyTooLarge,
    UpstreamTimeout, http_status,
)
from equabot_gw.gateway import chat_stream, frames
from equabot_gw.gateway.app import Gateway
from equabot_gw.gateway.responses_output import error_object
from tests.resume_client import SSEStream, content_of
from tests.support import base_config, post_closing

FAILURES: tuple[RunError, ...] = (
    UpstreamRejected("up", 429, "slow down", "7", code="rate_limit_exceeded", param="messages"),
    UpstreamRejected("up", 400, "too long", code="context_length_exceeded", param="messages"),
    UpstreamRejected("up", 401, "bad key", code="invalid_api_key"),
    UpstreamError("up", "connection reset"), UpstreamTimeout("up", 12.5), ReplyTooLarge("up", 100),
    RunFailed("KeyError"), StorageError("reading history: EIO", reading=True),
    RunTimedOut(30), RunAborted("client disconnected"),
)


def answers(exc: RunError) -> tuple[Any, ...]:
    """Everything a door answers a failed run by: HTTP status, message, OpenAI code and param,
    Retry-After, the Responses error object and the WebSocket error shape."""
    return (http_status(exc), str(exc), chat_stream.error_code(exc), chat_stream.error_param(exc),
            getattr(exc, "retry_after", None), error_object(exc), frames.error_shape(exc))


def stored_outcome(turn: TurnRecord) -> dict[str, Any]:
    """The outcome line of ``turn`` as a restart reads it back from disk."""
    written, skipped, _ = lines.parse_lines(lines.encode(lines.turn_lines(turn, "s", False)))
    assert not skipped
    return written[-1]


def entry() -> idempotency.Entry:
    return idempotency.Entry("main", "k", "d", "run_1", "agent:main:s", True, time.time(), None)


class StoredErrorTest(unittest.TestCase):
    def test_a_failed_runs_line_gives_back_the_same_error_and_its_partial_reply(self) -> None:
        for exc in FAILURES:
            with self.subTest(error=repr(exc)):
                status = "aborted" if isinstance(exc, RunAborted) else "error"
                turn = TurnRecord(run_id="run_1", user="hi", reply="partial ", status=status,
                                  at=time.time(), error=exc)         # type: ignore[arg-type]
                record = record_from_line(entry(), stored_outcome(turn))
                self.assertIs(type(record.error), type(exc))
                self.assertEqual(answers(record.error), answers(exc))        # type: ignore[arg-type]
                # A reply over its bound is what the run failed for: not kept, but there was one.
                self.assertEqual(record.partial, "" if isinstance(exc, ReplyTooLarge) else "partial ")
                self.assertTrue(idempotency.produced(record))      # replayed, never run again

    def test_lines_of_older_versions_read_back_as_before(self) -> None:
        old_error = {"type": "error", "runId": "run_1", "at": 1.0, "message": "provider 'up': broke"}
        old_timeout = {"type": "aborted", "runId": "run_1", "at": 1.0, "content": "", "reason": "timeout"}
        record = record_from_line(entry(), old_error)
        self.assertIs(type(record.error), RunError)
        self.assertEqual(str(record.error), "provider 'up': broke")
        record = record_from_line(entry(), old_timeout)
        self.assertIs(type(record.error), RunAborted)
        self.assertEqual(record.error.why, "timeout")          # type: ignore[union-attr]
        # A hand-edited description is not trusted: the message alone is.
        for bad in ({"class": "SystemExit", "fields": {}}, {"class": "UpstreamRejected", "fields": {"code": "x"}},
                    {"class": "RunFailed", "fields": {"kind": ["x"]}}, "RunFailed"):
            with self.subTest(bad=bad):
                record = record_from_line(entry(), {**old_error, "error": bad})
                self.assertIs(type(record.error), RunError)

    def test_a_message_given_as_text_is_stored_as_it_is(self) -> None:
        turn = TurnRecord(run_id="run_1", user="hi", reply="", status="error", at=1.0, error="boom")
        self.assertEqual(stored_outcome(turn), {"type": "error", "sessionKey": "s", "runId": "run_1", "at": 1.0,
                                                "message": "boom"})


class Counting:
    """A model that streams some words, then fails as its upstream did; ``calls`` counts its runs."""

    def __init__(self) -> None:
        self.calls = 0

    def provider(self) -> Any:
        async def model(call: Any) -> Any:
            self.calls += 1
            yield TextDelta("some words ")
            yield TextDelta("then")
            raise UpstreamRejected("failing", 429, "slow down", "7", code="rate_limit_exceeded", param="messages")
        return model


class ReplayAfterRestartTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.state = pathlib.Path(self.tmp.name)
        self.model = Counting()
        self.gateway: Gateway | None = None

    async def asyncTearDown(self) -> None:
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                await self.gateway.stop()
        self.tmp.cleanup()

    async def start(self) -> Gateway:
        data = base_config()
        data["agents"] = {"defaults": {"model": "failing/x"}}
        self.gateway = Gateway(config_mod.from_data(data, env={}, python_providers=("failing",)), self.state,
                               port=0, env={}, providers={"failing": self.model.provider()})
        await self.gateway.start()
        return self.gateway

    async def restart(self) -> Gateway:
        assert self.gateway is not None
        await self.gateway.stop()
        self.gateway = None
        return await self.start()

    async def stream(self, gateway: Gateway) -> list[tuple[str | None, Any]]:
        body = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        opened = await SSEStream.open(gateway.server.port, body, {"Idempotency-Key": "k-fails"})
        return await asyncio.wait_for(opened.read_all(), 10)

    async def test_a_run_that_failed_after_some_output_is_replayed_not_run_again(self) -> None:
        first = await self.stream(await self.start())
        self.assertEqual(content_of(first), "some words then")
        again = await self.stream(await self.restart())
        self.assertEqual(self.model.calls, 1)           # its upstream was not asked twice
        self.assertEqual(content_of(again), content_of(first))
        self.assertEqual(again[-1][1], "[DONE]")
        self.assertIn("error", again[-2][1])
        self.assertEqual(again[-2][1], first[-2][1])    # the same error: status, type, code, param, message

    async def test_a_json_request_that_failed_is_answered_the_same_after_a_restart(self) -> None:
        body = json.dumps({"model": "equabot", "messages": [{"role": "user", "content": "hi"}]}).encode()

        async def ask(gateway: Gateway) -> tuple[int, str | None, dict[str, Any]]:
            status, fields, payload, _ = await post_closing(gateway.server.port, "/v1/chat/completions", body,
                                                            headers="Idempotency-Key: k-json\r\n")
            return status, fields.get("retry-after"), json.loads(payload)

        first = await ask(await self.start())
        self.assertEqual(first[0], 429)
        self.assertEqual((first[2]["error"]["code"], first[2]["error"]["param"]), ("rate_limit_exceeded", "messages"))
        again = await ask(await self.restart())
        self.assertEqual(self.model.calls, 1)
        self.assertEqual(again, first)


if __name__ == "__main__":
    unittest.main()


async def words(call: Any) -> Any:
    """A model that answers a few words."""
    for word in ("a", " short", " reply"):
        yield TextDelta(word)


class LastEventIdPastTheEndTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        data = base_config()
        data["agents"] = {"defaults": {"model": "words/x"}}
        self.gateway = Gateway(config_mod.from_data(data, env={}, python_providers=("words",)),
                               pathlib.Path(self.tmp.name), port=0, env={}, providers={"words": words})
        await self.gateway.start()

    async def asyncTearDown(self) -> None:
        await self.gateway.stop()
        self.tmp.cleanup()

    async def resume(self, last_event_id: str | None) -> tuple[SSEStream, list[tuple[str | None, Any]]]:
        body = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "stream_options": {"include_usage": True}}
        headers = {"Idempotency-Key": "k-end"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        opened = await SSEStream.open(self.gateway.server.port, body, headers)
        if opened.status != 200:
            return opened, []
        return opened, await asyncio.wait_for(opened.read_all(), 10)

    async def test_an_id_past_the_end_of_a_finished_stream_is_refused_and_the_end_is_not(self) -> None:
        _, first = await self.resume(None)
        done_id = first[-1][0]
        self.assertEqual(first[-1][1], "[DONE]")
        stream, seq = done_id.rsplit(":", 1)            # type: ignore[union-attr]
        for past in (int(seq) + 1, 10 ** 9):
            with self.subTest(seq=past):
                refused, _ = await self.resume(f"{stream}:{past}")
                self.assertEqual(refused.status, 400)
                error = refused.json()["error"]
                self.assertEqual((error["code"], error["param"]), ("invalid_last_event_id", "Last-Event-ID"))
        # The last events themselves: what is after them, nothing after [DONE].
        opened, rest = await self.resume(first[-2][0])
        self.assertEqual((opened.status, rest), (200, [first[-1]]))
        opened, rest = await self.resume(done_id)
        self.assertEqual((opened.status, rest), (200, []))
