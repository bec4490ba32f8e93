"""Finished runs are remembered within a byte budget; a reply not held is read back from disk.

The runtime remembers the last 10,000 finished runs for ``agent.wait`` and
idempotent retries. Replies over ``MAX_KEPT_REPLY_BYTES``, or past
``FINISHED_REPLIES_BUDGET_BYTES`` in all, are not held: ``wait`` and
``subscribe`` read them back from the transcript (keyed sessions) or the
journal (stateless runs), at the offset ``record_turn`` returned.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tempfile
import tracemalloc
import unittest
from pathlib import Path
from typing import Any
from unittest import mock

from equabot_gw import config as config_mod
from equabot_gw.agents import runtime as runtime_mod
from equabot_gw.agents.events import Ended, Failed
from equabot_gw.agents.runtime import Runtime, run
from equabot_gw.agents.types import AgentRequest
from equabot_gw.errors import RunAborted
from equabot_gw.gateway.client import ControlClient
from tests.support import TOKEN, running_gateway

BIG = ("x" * 65535 + " ") * 16                   # 1 MiB of text in 16 words


def runtime_config() -> dict[str, Any]:
    return {"agents": {"list": [{"id": "main", "default": True},
                                {"id": "slow", "model": "slow/echo"}]},
            "models": {"providers": {"slow": {"api": "echo", "delayMs": 20}}}}


class FinishedRunsCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.runtime = Runtime(config_mod.from_data(runtime_config(), env={}), Path(tmp.name))
        await self.runtime.start()
        self.addAsyncCleanup(self.runtime.stop, 0)

    async def finished(self, message: str, **fields: Any) -> Any:
        handle = run(self.runtime, AgentRequest(message=message, **fields))
        try:
            await handle.wait()
        except RunAborted:
            pass
        record = self.runtime.find_run(handle.id)
        self.assertIsInstance(record, runtime_mod.RunRecord)
        return record


class BudgetTest(FinishedRunsCase):
    async def test_large_replies_are_not_held_and_memory_stays_bounded(self) -> None:
        runs = 40                                 # 40 MiB of replies: far past the 16 MiB budget
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            records = [await self.finished(BIG, session_key=f"big-{n}" if n % 2 else None) for n in range(runs)]
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The keyed sessions' histories are cached, within the cache's own bound: not counted here.
        cached = self.runtime.store.cached_bytes
        self.assertLessEqual(cached, 64 * 2**20)
        self.assertLess(after - before - cached, 4 * 2**20,
                        f"{(after - before - cached) / 2**20:.1f} MiB kept for {runs} MiB of replies")
        self.assertEqual(self.runtime._finished_bytes, 0)
        for record in records:
            self.assertEqual((record.result.text, record.kept_bytes), ("", 0))
            self.assertIsNotNone(record.reply_at)
        # Read back, from the journal (stateless) and from a transcript (keyed).
        for record in records[:2]:
            result = await record.wait()
            self.assertEqual(result.text, "Echo (turn 1): " + BIG)
            self.assertEqual(result.usage.completion_tokens, 19)
            [event] = [e async for e in record.subscribe()]
            self.assertIsInstance(event, Ended)
            self.assertEqual(event.result.text, result.text)

    async def test_small_replies_are_held_until_the_budget_is_spent(self) -> None:
        reply = sys.getsizeof("Echo (turn 1): " + "y" * 1000)
        with mock.patch.object(runtime_mod, "FINISHED_REPLIES_BUDGET_BYTES", 3 * reply):
            records = [await self.finished("y" * 1000) for _ in range(5)]
        self.assertEqual([r.kept_bytes for r in records], [reply] * 3 + [0, 0])
        self.assertEqual([r.reply_at is None for r in records], [True] * 3 + [False] * 2)
        self.assertEqual(self.runtime._finished_bytes, 3 * reply)
        for record in records:
            self.assertEqual((await record.wait()).text, "Echo (turn 1): " + "y" * 1000)
        # Forgetting a record gives its bytes back to the budget.
        with mock.patch.object(runtime_mod, "MAX_FINISHED_RUNS", 2):
            await self.finished("z")
        self.assertEqual(self.runtime._finished_bytes, sys.getsizeof("Echo (turn 1): z"))

    async def test_an_aborted_partial_is_read_back_too(self) -> None:
        with mock.patch.object(runtime_mod, "MAX_KEPT_REPLY_BYTES", 0):
            handle = run(self.runtime, AgentRequest(message="one two three four five six", agent_id="slow",
                                                    session_key="partial"))
            async for event in handle.subscribe():
                if getattr(event, "text", "").strip() == "(turn":
                    break
            handle.abort("chat.abort")
            with self.assertRaises(RunAborted):
                await handle.wait()
            record = self.runtime.find_run(handle.id)
        self.assertEqual(record.partial, "")
        [event] = [e async for e in record.subscribe()]
        self.assertIsInstance(event, Failed)
        self.assertTrue(event.partial.startswith("Echo (turn"), event.partial)
        with self.assertRaises(RunAborted):
            await record.wait()

    async def test_a_reply_whose_session_was_reset_reads_back_empty(self) -> None:
        with mock.patch.object(runtime_mod, "MAX_KEPT_REPLY_BYTES", 0):
            record = await self.finished("gone soon", session_key="reset-me")
        self.assertEqual((await record.wait()).text, "Echo (turn 1): gone soon")
        self.assertTrue(await self.runtime.store.reset("main", "reset-me"))
        with self.assertLogs("equabot_gw.runtime", "WARNING"):
            self.assertEqual((await record.wait()).text, "")

    async def test_long_idempotency_keys_are_remembered_by_digest(self) -> None:
        key = "k" * 100_000
        first = run(self.runtime, AgentRequest(message="once", idempotency_key=key))
        self.assertIs(run(self.runtime, AgentRequest(message="once", idempotency_key=key)), first)
        await first.wait()
        self.assertEqual(self.runtime.find_run(first.id).id,
                         run(self.runtime, AgentRequest(message="once", idempotency_key=key)).id)
        self.assertTrue(all(len(k) < 100 for _, k in self.runtime.keys._table))


class AgentWaitTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_repeated_agent_request_gets_the_whole_reply_read_back(self) -> None:
        async with running_gateway() as gw:
            client = await ControlClient.open(gw.url, TOKEN)
            try:
                params = {"message": BIG, "sessionKey": "wait", "idempotencyKey": "wait-1"}
                client.ws.send(json.dumps({"type": "req", "id": "a", "method": "agent", "params": params}))
                run_id = None
                while run_id is None:
                    frame = await client.next_frame()
                    if frame.get("id") == "a":
                        run_id = frame["payload"]["runId"]
                waited = await asyncio.wait_for(client.request("agent.wait", {"runId": run_id}), 10)
                self.assertEqual(waited["status"], "ok")
                # The same request again (same idempotency key): the whole reply, read back.
                client.ws.send(json.dumps({"type": "req", "id": "b", "method": "agent", "params": params}))
                while True:
                    frame = await asyncio.wait_for(client.next_frame(), 10)
                    if frame.get("id") == "b":
                        break
            finally:
                await client.close()
            self.assertEqual(frame["payload"]["result"]["payloads"][0]["text"], "Echo (turn 1): " + BIG)
            entry = gw.runtime.keys.get("main", "wait-1")
            record = gw.runtime.find_run(entry.run_id if entry else run_id)
            self.assertEqual((record.result.text, record.kept_bytes), ("", 0))


if __name__ == "__main__":
    unittest.main()
