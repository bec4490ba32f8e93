"""Idempotency keys and resumable streams under hostile conditions.

A repeat of a keyed request after a restart answers exactly what the first
answer said (usage details and ``created`` included); a lookup of a key's
run on disk that never ends is answered 503 within its bound, the request
that started it too; the key journals of past days do not outlive their
retention while the gateway runs; finding a keyed run's outcome decodes the
lines that name it, not the whole day's journal; a request with two keys
is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import tempfile
import time
import tracemalloc
import unittest
from typing import Any
from unittest import mock

from equabot_gw import config as config_mod
from equabot_gw.agents import idempotency, transcripts
from equabot_gw.agents.types import TextDelta, Usage
from equabot_gw.gateway import resume
from equabot_gw.gateway.app import Gateway
from tests.resume_client import SSEStream
from tests.support import TOKEN, base_config, error_of

SESSION = "hostile"
REPLY = "cached words here"


async def cached_model(call: Any) -> Any:
    """A model whose upstream reports cached prompt tokens and reasoning tokens, as OpenAI's does."""
    for word in REPLY.split(" "):
        yield TextDelta(word if word == "cached" else " " + word)
    yield Usage(11, 3, cached_tokens=7, reasoning_tokens=2)


def config(**gateway: Any) -> dict[str, Any]:
    data = base_config(**gateway)
    data["agents"] = {"defaults": {"model": "cached/x"}}
    return data


def request(stream: bool = False, message: str = "hi") -> dict[str, Any]:
    body: dict[str, Any] = {"model": "equabot", "messages": [{"role": "user", "content": message}],
                            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


class HostileCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.state = pathlib.Path(self.tmp.name)
        self.gateways: list[Gateway] = []

    async def asyncTearDown(self) -> None:
        for gateway in self.gateways:
            with contextlib.suppress(Exception):
                await gateway.stop()
        self.tmp.cleanup()

    async def start(self, data: dict[str, Any] | None = None) -> Gateway:
        gateway = Gateway(config_mod.from_data(data or config(), env={}, python_providers=("cached",)), self.state, port=0, env={},
                          providers={"cached": cached_model})
        await gateway.start()
        self.gateways.append(gateway)
        return gateway

    async def restart(self, gateway: Gateway) -> Gateway:
        await gateway.stop()
        self.gateways.remove(gateway)
        return await self.start()

    async def post(self, gateway: Gateway, body: dict[str, Any], **headers: str) -> SSEStream:
        return await SSEStream.open(gateway.server.port, body, {k.replace("_", "-"): v for k, v in headers.items()})


class ReplayAfterRestartTest(HostileCase):
    async def test_a_replay_after_a_restart_keeps_the_usage_details(self) -> None:
        gateway = await self.start()
        first = await self.post(gateway, request(), Idempotency_Key="k-usage", x_equabot_session_key=SESSION)
        self.assertEqual(first.json()["usage"]["prompt_tokens_details"], {"cached_tokens": 7})
        streamed = await (await self.post(gateway, request(stream=True), Idempotency_Key="k-usage-s")).read_all()
        gateway = await self.restart(gateway)
        again = await self.post(gateway, request(), Idempotency_Key="k-usage", x_equabot_session_key=SESSION)
        self.assertEqual(again.headers.get(resume.REPLAY_HEADER), "true")
        self.assertEqual(again.body, first.body)            # the same bytes: usage details included
        replayed = await (await self.post(gateway, request(stream=True), Idempotency_Key="k-usage-s")).read_all()
        self.assertEqual(replayed[-2], streamed[-2])        # the usage chunk, id and all
        self.assertEqual(replayed[-2][1]["usage"]["completion_tokens_details"], {"reasoning_tokens": 2})

    async def test_a_replay_after_a_restart_has_the_first_answers_created_even_across_a_second(self) -> None:
        gateway = await self.start()
        # The key is remembered a moment after its run was admitted: here that moment is in
        # the next second (as it is, now and then, for real).
        clock = gateway.runtime.keys.clock
        gateway.runtime.keys.clock = lambda: clock() + 1.0
        first = await self.post(gateway, request(), Idempotency_Key="k-created", x_equabot_session_key=SESSION)
        gateway = await self.restart(gateway)
        again = await self.post(gateway, request(), Idempotency_Key="k-created", x_equabot_session_key=SESSION)
        self.assertEqual(again.headers.get(resume.REPLAY_HEADER), "true")
        self.assertEqual(again.json()["created"], first.json()["created"])
        self.assertEqual(again.body, first.body)


class LookupDeadlineTest(HostileCase):
    async def test_a_lookup_that_never_ends_is_503_for_every_waiter_within_its_bound(self) -> None:
        gateway = await self.start()
        await self.post(gateway, request(), Idempotency_Key="k-hang", x_equabot_session_key=SESSION)
        gateway = await self.restart(gateway)
        async def hangs(*args: Any) -> Any:
            await asyncio.Event().wait()        # a disk that never answers

        keys = gateway.runtime.keys
        with mock.patch.object(idempotency, "LOOKUP_TIMEOUT", 0.2), mock.patch.object(keys, "outcome_line", hangs):
            started = time.monotonic()
            answers = await asyncio.wait_for(asyncio.gather(
                *(self.post(gateway, request(), Idempotency_Key="k-hang", x_equabot_session_key=SESSION)
                  for _ in range(3))), 5)
            self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual([(a.status, error_of(a.body)["code"]) for a in answers], [(503, "unavailable")] * 3)
        # The disk answers again: so does the key.
        again = await self.post(gateway, request(), Idempotency_Key="k-hang", x_equabot_session_key=SESSION)
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, "true"), again.body)


class JournalRetentionTest(HostileCase):
    async def test_key_journals_past_their_retention_are_deleted_while_the_gateway_runs(self) -> None:
        gateway = await self.start()
        keys_dir = self.state / "agents" / "main" / transcripts.KEYS_DIR
        today = int(time.time() // 86400)
        # A gateway up for ten days: the journals of the days since it started are still there.
        old = keys_dir / transcripts.journal_name(today - 10)
        keys_dir.mkdir(parents=True, exist_ok=True)
        old.write_text(json.dumps({"type": "key", "key": "k-old", "digest": "d", "runId": "run_old",
                                   "sessionKey": "s", "stateless": True, "at": (today - 10) * 86400.0}) + "\n")
        await self.post(gateway, request(), Idempotency_Key="k-today")
        self.assertTrue(old.exists())
        clock = gateway.runtime.keys.clock
        gateway.runtime.keys.clock = lambda: clock() + 86400      # the next day's first keyed run
        await self.post(gateway, request(), Idempotency_Key="k-tomorrow")
        deadline = time.monotonic() + 5
        while old.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.assertFalse(old.exists())
        self.assertTrue((keys_dir / transcripts.journal_name(today)).exists())   # within its retention


class LookupMemoryTest(HostileCase):
    async def test_finding_a_keyed_runs_outcome_does_not_load_the_whole_days_journal(self) -> None:
        gateway = await self.start()
        first = await self.post(gateway, request(), Idempotency_Key="k-busy")          # stateless
        keyed = await self.post(gateway, request(), Idempotency_Key="k-busy-s", x_equabot_session_key=SESSION)
        await gateway.stop()
        self.gateways.remove(gateway)
        # A busy day: thousands of other turns after it in the day's journal, and in the session's.
        day = int(time.time() // 86400)
        journal = self.state / "agents" / "main" / transcripts.JOURNAL_DIR / transcripts.journal_name(day)
        transcript = next((self.state / "agents" / "main").glob(f"sessions/*{SESSION}*.jsonl"))
        filler = "".join(json.dumps({"type": "assistant", "runId": f"run_other{n}", "content": "x" * 300,
                                     "at": time.time()}) + "\n" for n in range(20_000)).encode()
        for path in (journal, transcript):
            with open(path, "ab") as f:
                f.write(filler)
        gateway = await self.start()
        for key, session, answer in (("k-busy", None, first), ("k-busy-s", SESSION, keyed)):
            with self.subTest(key=key):
                headers = {"x_equabot_session_key": session} if session else {}
                tracemalloc.start()
                try:
                    again = await self.post(gateway, request(), Idempotency_Key=key, **headers)
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, "true"))
                self.assertEqual(again.body, answer.body)
                self.assertLess(peak, len(filler) // 4)         # the journal is ~7 MB: not read whole


class KeyHeaderTest(HostileCase):
    async def test_two_idempotency_keys_in_one_request_are_refused_and_nothing_runs(self) -> None:
        gateway = await self.start()
        port = gateway.server.port
        for first, second in (("k-a", "k-b"), ("k-a", "k-a")):
            with self.subTest(first=first, second=second):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                data = json.dumps(request()).encode()
                writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                              f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                              f"Idempotency-Key: {first}\r\nIdempotency-Key: {second}\r\n"
                              f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
                raw = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                head, _, body = raw.partition(b"\r\n\r\n")
                self.assertEqual(head.split()[1], b"400", raw)
                self.assertEqual(error_of(body)["code"], "invalid_idempotency_key")
        self.assertEqual(len(gateway.runtime.keys), 0)


if __name__ == "__main__":
    unittest.main()
