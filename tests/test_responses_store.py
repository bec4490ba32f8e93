"""The stored responses: a durable id → session map that survives a restart, deletion that erases."""

from __future__ import annotations

import json
import pathlib
import tempfile
import unittest

from equabot_gw import safejson
from equabot_gw.agents.response_store import RESPONSES_DIR, ResponseStore
from equabot_gw.errors import StorageError

DAY = 86400 * 20000.5       # a fixed clock: one UTC day, one log


def response(rid: str, text: str = "hi") -> dict:
    return {"id": rid, "object": "response", "output_text": text, "output": []}


class ResponseStoreTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = pathlib.Path(tmp.name)

    async def opened(self) -> ResponseStore:
        store = ResponseStore(self.dir, clock=lambda: DAY)
        await store.open()
        self.addAsyncCleanup(store.close)
        return store

    def logs(self) -> list[pathlib.Path]:
        return sorted((self.dir / RESPONSES_DIR).iterdir())

    async def test_put_find_read_and_reload(self) -> None:
        store = await self.opened()
        items = [{"id": "msg_1", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]}]
        entry = await store.put("resp_a1", "main", "agent:main:openai-responses:resp_a1", "run_1",
                                response("resp_a1", "é ünïcode"), items)
        await store.put("resp_b2", "main", "agent:main:openai-responses:resp_a1", "run_2", response("resp_b2"), [])
        self.assertEqual(store.find("resp_a1"), entry)
        self.assertEqual(store.responses_in("agent:main:openai-responses:resp_a1"), 2)
        self.assertEqual(await store.read("resp_a1"), (response("resp_a1", "é ünïcode"), items))
        self.assertIsNone(await store.read("resp_none"))
        await store.close()
        again = await self.opened()           # a restart: the map is read back from disk
        self.assertEqual(len(again), 2)
        self.assertEqual(again.find("resp_b2")[1:4], ("main", "agent:main:openai-responses:resp_a1", "run_2"))
        self.assertEqual(await again.read("resp_a1"), (response("resp_a1", "é ünïcode"), items))

    async def test_a_response_as_deep_as_an_accepted_request_reads_back(self) -> None:
        # A Response repeats the request's tools (their JSON Schemas) at the depth the request
        # had them; a request may nest up to the decoder's limit, and its line wraps it once more.
        schema: dict = {"type": "string"}
        while True:
            deeper = {"type": "array", "items": schema}
            obj = {**response("resp_a1"), "tools": [{"type": "function", "name": "f", "parameters": deeper}]}
            try:
                safejson.loads(json.dumps(obj))
            except ValueError:
                break
            schema, accepted = deeper, obj
        store = await self.opened()
        await store.put("resp_a1", "main", "k:one", "run_1", accepted, [])
        self.assertEqual(await store.read("resp_a1"), (accepted, []))

    async def test_delete_erases_the_line_and_stays_deleted(self) -> None:
        store = await self.opened()
        await store.put("resp_a1", "main", "k:one", "run_1", response("resp_a1", "secret words"), [])
        await store.put("resp_b2", "main", "k:one", "run_2", response("resp_b2", "kept"), [])
        size = self.logs()[0].stat().st_size
        entry = await store.delete("resp_a1")
        self.assertEqual(entry.run_id, "run_1")
        self.assertIsNone(await store.delete("resp_a1"))
        self.assertIsNone(store.find("resp_a1"))
        self.assertEqual(store.responses_in("k:one"), 1)
        data = self.logs()[0].read_bytes()
        self.assertNotIn(b"secret words", data)
        self.assertEqual(len(data), size)                   # overwritten in place, line-aligned
        await store.close()
        again = await self.opened()
        self.assertIsNone(again.find("resp_a1"))
        self.assertEqual((await again.read("resp_b2"))[0]["output_text"], "kept")

    async def test_torn_last_line_is_skipped(self) -> None:
        store = await self.opened()
        await store.put("resp_a1", "main", "k:one", "run_1", response("resp_a1"), [])
        await store.close()
        with open(self.logs()[0], "ab") as f:     # a crash in the middle of a write
            f.write(b'{"id":"resp_torn","agentId":"main","sessionKey":"k:one","runId":"run_9","at":1,"resp')
        again = await self.opened()
        self.assertIsNone(again.find("resp_torn"))
        self.assertIsNotNone(again.find("resp_a1"))

    async def test_damaged_line_is_an_error_not_a_crash(self) -> None:
        store = await self.opened()
        entry = await store.put("resp_a1", "main", "k:one", "run_1", response("resp_a1"), [])
        with open(entry.path, "r+b") as f:
            f.seek(entry.offset + entry.length - 10)
            f.write(b"#########")
        with self.assertRaises(StorageError):
            await store.read("resp_a1")

    async def test_refuses_ids_outside_their_alphabet(self) -> None:
        store = await self.opened()
        for rid, key in (('resp_"x', "k:one"), ("resp_a", 'k"one'), ("nope_a", "k:one")):
            with self.subTest(rid=rid, key=key), self.assertRaises(ValueError):
                await store.put(rid, "main", key, "run_1", response(rid), [])
        self.assertEqual(len(store), 0)

    async def test_expired_days_are_deleted(self) -> None:
        now = [DAY]
        store = ResponseStore(self.dir, clock=lambda: now[0], retention_days=2)
        await store.open()
        self.addAsyncCleanup(store.close)
        await store.put("resp_old", "main", "k:one", "run_1", response("resp_old"), [])
        now[0] += 86400 * 2
        await store.put("resp_mid", "main", "k:one", "run_2", response("resp_mid"), [])
        self.assertEqual(len(self.logs()), 2)                 # the first day ended less than 2 days ago
        now[0] += 86400
        await store.put("resp_new", "main", "k:one", "run_3", response("resp_new"), [])
        self.assertEqual(len(self.logs()), 2)                 # the date rolled over: the first day is gone
        self.assertIsNone(store.find("resp_old"))
        self.assertIsNone(await store.read("resp_old"))
        self.assertEqual(store.responses_in("k:one"), 2)
        await store.close()
        now[0] += 86400 * 2
        again = ResponseStore(self.dir, clock=lambda: now[0], retention_days=2)
        await again.open()                                  # at start-up too
        self.addAsyncCleanup(again.close)
        self.assertEqual([again.find(r) is not None for r in ("resp_mid", "resp_new")], [False, True])
        self.assertEqual(len(self.logs()), 1)

    async def test_sessions_whose_stored_responses_all_expired_are_reported(self) -> None:
        now = [DAY]
        freed: list = []
        store = ResponseStore(self.dir, clock=lambda: now[0], retention_days=2, on_expired=freed.extend)
        await store.open()
        self.addAsyncCleanup(store.close)
        await store.put("resp_a", "main", "k:one", "run_1", response("resp_a"), [])
        await store.put("resp_b", "main", "k:two", "run_2", response("resp_b"), [])
        await store.put("resp_c", "main", "k:gone", "run_3", response("resp_c"), [])
        await store.delete("resp_c")                      # its session was its caller's to handle then
        now[0] += 86400 * 2
        await store.put("resp_d", "main", "k:two", "run_4", response("resp_d"), [])
        now[0] += 86400
        await store.put("resp_e", "beta", "k:one", "run_5", response("resp_e"), [])
        self.assertEqual(freed, [("main", "k:one")])      # k:two still holds resp_d; beta's k:one is another
        await store.close()
        freed.clear()
        now[0] += 86400 * 2
        again = ResponseStore(self.dir, clock=lambda: now[0], retention_days=2, on_expired=freed.extend)
        await again.open()                                  # at start-up too
        self.addAsyncCleanup(again.close)
        self.assertEqual(freed, [("main", "k:two")])

    async def test_closed_store_refuses(self) -> None:
        store = await self.opened()
        await store.close()
        with self.assertRaises(StorageError):
            await store.put("resp_a1", "main", "k:one", "run_1", response("resp_a1"), [])


if __name__ == "__main__":
    unittest.main()
