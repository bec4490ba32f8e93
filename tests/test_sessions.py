"""equabot_gw.agents.sessions and .transcripts: keys, file names, transcripts, group commit, faults, crashes.

Store tests run against a temporary state dir with an injected clock. The
throughput test prints what one event loop reaches with 64 concurrent
callers on stateless keys; the crash test SIGKILLs a writer mid-flight and
checks that every acknowledged turn is on disk.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

from equabot_gw import compact_json
from equabot_gw.agents import committer as committer_mod, sessions, transcripts
from equabot_gw.agents.sessions import (
    SessionInfo, SessionStore, agent_of, scoped_key, stateless_key, user_key, validate_key,
)
from equabot_gw.agents.types import Message, SessionHistory, TurnRecord, Usage
from equabot_gw.errors import ApiError, StorageError

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0
T0 = 20_000 * DAY + 3600.0          # 2024-10-04 01:00 UTC
RULE = "session keys are 1-200 characters of A-Z a-z 0-9 : . _ @ -"


# -- key helpers -------------------------------------------------------------

VALID_KEYS = (
    ("plain", "main"),
    ("every allowed character", "Az09:._@-"),
    ("scoped", "agent:main:chat-1"),
    ("200 characters", "k" * 200),
    ("dots only", ".."),
)

INVALID_KEYS = (
    ("empty", "", f"{RULE}; got an empty key"),
    ("201 characters", "k" * 201, f"{RULE}; got 201 characters"),
    ("space", "a b", f"{RULE}; got ' ' at position 1"),
    ("path traversal", "../../etc", f"{RULE}; got '/' at position 2"),
    ("NUL", "a\x00", f"{RULE}; got '\\x00' at position 1"),
    ("newline", "a\nb", f"{RULE}; got '\\n' at position 1"),
    ("non-ASCII", "café", f"{RULE}; got 'é' at position 3"),
    ("not a string", 42, f"{RULE}; got int"),
)

AGENT_OF = (
    ("scoped", "agent:main:x", "main"),
    ("rest with colons", "agent:ops:a:b", "ops"),
    ("no rest", "agent:main:", None),
    ("no agent", "agent::x", None),
    ("no second colon", "agent:main", None),
    ("other prefix", "agents:main:x", None),
    ("plain", "main", None),
)

SCOPED = (
    ("plain key is scoped", "main", "chat", "agent:main:chat"),
    ("scoped key stays", "main", "agent:ops:chat", "agent:ops:chat"),
    ("half-scoped key is scoped", "main", "agent:x", "agent:main:agent:x"),
)

# (name, key, expected file stem)
FILE_NAMES = (
    ("scoped key", "agent:main:chat-1", "agent%3Amain%3Achat-1"),
    ("path traversal", "../../etc", "%2E.%2F..%2Fetc"),
    ("dot", ".", "%2E"),
    ("dot dot", "..", "%2E."),
    ("at sign", "a@b", "a%40b"),
    ("non-ASCII", "é", "%C3%A9"),
    ("reset look-alike", "agent:main:x.reset-12", "agent%3Amain%3Ax%2Ereset-12"),
    ("index look-alike", "index.json", "index.json"),
)


class KeyHelpers(unittest.TestCase):
    def test_valid_keys(self) -> None:
        for name, key in VALID_KEYS:
            with self.subTest(name):
                self.assertEqual(validate_key(key), key)

    def test_invalid_keys(self) -> None:
        for name, key, message in INVALID_KEYS:
            with self.subTest(name):
                with self.assertRaises(ApiError) as caught:
                    validate_key(key)  # type: ignore[arg-type]
                self.assertEqual((caught.exception.status, caught.exception.code,
                                  caught.exception.param, caught.exception.message),
                                 (400, "invalid_session_key", "session_key", message))

    def test_param_is_named_by_the_caller(self) -> None:
        with self.assertRaises(ApiError) as caught:
            validate_key("", param="x-equabot-session-key")
        self.assertEqual(caught.exception.param, "x-equabot-session-key")

    def test_agent_of(self) -> None:
        for name, key, expected in AGENT_OF:
            with self.subTest(name):
                self.assertEqual(agent_of(key), expected)

    def test_scoped_key(self) -> None:
        for name, agent_id, key, expected in SCOPED:
            with self.subTest(name):
                self.assertEqual(scoped_key(agent_id, key), expected)

    def test_scoped_key_too_long_once_scoped(self) -> None:
        key = "k" * 195
        self.assertEqual(validate_key(key), key)
        with self.assertRaises(ApiError) as caught:
            scoped_key("main", key)
        self.assertEqual(caught.exception.message, f"{RULE}; got 206 characters")

    def test_user_key(self) -> None:
        self.assertEqual(user_key("main", "alice@example.com"),
                         "agent:main:openai-user:alice@example.com")
        hashed = user_key("main", "Alice Smith/ü")
        self.assertRegex(hashed, r"\Aagent:main:openai-user:u-[0-9a-f]{40}\Z")
        self.assertEqual(hashed, user_key("main", "Alice Smith/ü"))       # stable
        self.assertNotEqual(hashed, user_key("main", "Alice Smith/u"))
        self.assertRegex(user_key("main", "x" * 300), r"\Aagent:main:openai-user:u-[0-9a-f]{40}\Z")
        with self.assertRaises(ApiError) as caught:
            user_key("main", "")
        self.assertEqual((caught.exception.status, caught.exception.param), (400, "user"))

    def test_stateless_key(self) -> None:
        keys = {stateless_key("main", "openai") for _ in range(1000)}
        self.assertEqual(len(keys), 1000)
        for key in keys:       # several batches of uuids (session_keys._uuid4)
            prefix, _, tail = key.rpartition(":")
            self.assertEqual((prefix, agent_of(key)), ("agent:main:openai", "main"))
            parsed = uuid.UUID(tail)
            self.assertEqual((str(parsed), parsed.version, parsed.variant),
                             (tail, 4, uuid.RFC_4122))

    def test_stateless_keys_from_threads_are_distinct(self) -> None:
        taken: list[list[str]] = [[], [], [], []]
        threads = [threading.Thread(target=lambda out=out: out.extend(
            stateless_key("main", "openai") for _ in range(2000))) for out in taken]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len({key for out in taken for key in out}), 8000)

    def test_file_names(self) -> None:
        for name, key, stem in FILE_NAMES:
            with self.subTest(name):
                self.assertEqual(transcripts.transcript_stem(key), stem)
                self.assertRegex(stem, r"\A[A-Za-z0-9_%-][A-Za-z0-9._%-]*\Z")

    def test_long_keys_are_hashed(self) -> None:
        key = "agent:main:" + "@" * 100          # 300 characters once escaped
        stem = transcripts.transcript_stem(key)
        self.assertRegex(stem, r"\Ah-[0-9a-f]{64}\Z")
        self.assertNotEqual(stem, transcripts.transcript_stem(key + "@"))
        self.assertEqual(transcripts.transcript_stem("k" * 200), "k" * 200)

    def test_file_names_are_distinct_and_reversible(self) -> None:
        keys = ["agent:main:" + k for k in ("a", "A", "a.b", "a:b", "a%3Ab", "a@b", "a-b", "a_b")]
        stems = [transcripts.transcript_stem(k) for k in keys]
        self.assertEqual(len(set(stems)), len(keys))
        self.assertEqual([transcripts.unescape_stem(s) for s in stems], keys)


    def test_journal_days_end_where_calendar_says(self) -> None:
        import calendar
        for year, month, day in ((1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (2026, 2, 31), (9999, 12, 31)):
            with self.subTest(date=(year, month, day)):
                self.assertEqual(transcripts.journal_day_end(f"{year:04d}-{month:02d}-{day:02d}.jsonl"),
                                 calendar.timegm((year, month, day, 0, 0, 0)) + 86400.0)
        self.assertEqual(transcripts.journal_day_end("2026-13-01.jsonl"), float("inf"))


class Lines(unittest.TestCase):
    def test_parse_skips_garbage_and_a_torn_last_line(self) -> None:
        data = b'{"a":1}\nnot json\n[1]\n\n{"b":"\xc3\xa9"}\n{"torn'
        self.assertEqual(transcripts.parse_lines(data), ([{"a": 1}, {"b": "é"}], 3, 2))
        self.assertEqual(transcripts.parse_lines(b'{"a":1}\n'), ([{"a": 1}], 0, 0))
        self.assertEqual(transcripts.parse_lines(b""), ([], 0, 0))

    def test_encoder_matches_json_dumps(self) -> None:
        for obj in ({"type": "user", "content": "é \u2028 \"q\" \n\x00", "at": 1.5, "n": None},
                    {"usage": {"prompt_tokens": 1}, "list": [1, 2.25, True, False, [], {}]},
                    {"big": 2 ** 70, "tiny": 1e-300, "exp": 1e16, "neg": -0.0, "nan": float("nan")},
                    ["top", "level", 1], "just a string", 7, None):
            expected = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
            self.assertEqual(compact_json.dumps(obj), expected)
            self.assertEqual(transcripts.dumps(obj), expected)      # the transcripts' encoder

    def test_lone_surrogates_round_trip(self) -> None:
        data = transcripts.encode([{"content": "a\ud800b"}])
        self.assertEqual(transcripts.parse_lines(data), ([{"content": "a\ud800b"}], 0, 0))

    def test_a_plain_turn_is_written_as_its_lines_are_encoded(self) -> None:
        import random
        rng = random.Random(11)
        alphabet = "ab \"\\/\n\t\x00\x1f\x7f é☃😀\u2028</script>"

        def text(most: int) -> str:
            chars = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, most)))
            return chars + "\ud800" if rng.random() < 0.02 else chars    # a lone surrogate, now and then

        written = 0
        for _ in range(2000):
            usage = rng.choice([None, Usage(rng.randrange(10**6), rng.randrange(10**6)),
                                Usage(rng.randrange(10**6), rng.randrange(10**6)),
                                Usage(1, 2, rng.choice([None, 0, 3]), rng.choice([None, 0, 4]))])
            turn = TurnRecord(
                run_id=text(12), user=text(30), reply=text(30),
                status=rng.choice(["ok", "ok", "ok", "aborted", "error"]),
                at=rng.choice([rng.uniform(0, 2e9), 1e16, 0.1, 5.0, 3]), model=text(8), usage=usage,
                finish_reason=rng.choice(["stop", "length", None]), error=rng.choice([None, "boom"]),
                context=rng.choice([(), (), (), (Message("user", "earlier"),)]),
                reasoning=rng.choice(["", "", "", "thought"]))
            key = rng.choice([None, "agent:main:openai:" + text(10)])
            plain = transcripts.encode_plain_turn(turn, key)
            if plain is None:
                continue
            written += 1
            self.assertEqual(plain, transcripts.encode(transcripts.turn_lines(turn, key, True)), (turn, key))
        self.assertGreater(written, 100)        # the shortcut was taken, and checked, often
        long = TurnRecord(run_id="r", user="x" * compact_json.LARGE_CHARS, reply="", status="ok", at=1.0,
                          usage=Usage(1, 1), finish_reason="stop")
        self.assertIsNone(transcripts.encode_plain_turn(long, None))   # a large turn is encoded in slices


# -- store fixtures ----------------------------------------------------------------

class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ok_turn(n: int, *, at: float = T0, context: tuple[Message, ...] = (), user: str = "") -> TurnRecord:
    return TurnRecord(run_id=f"run-{n}", user=user or f"question {n}", reply=f"answer {n}",
                      status="ok", at=at + n, model="echo", usage=Usage(3, 2),
                      finish_reason="stop", context=context)


class StoreCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.state = Path(self._tmp.name)
        self.clock = FakeClock(T0)
        self.stores: list[SessionStore] = []
        self.store = await self.open_store()

    async def asyncTearDown(self) -> None:
        for store in self.stores:
            await store.close()
        self._tmp.cleanup()

    async def open_store(self, **kwargs: Any) -> SessionStore:
        store = SessionStore(self.state, clock=self.clock, **kwargs)
        await store.open()
        self.stores.append(store)
        return store

    async def reopen(self, **kwargs: Any) -> SessionStore:
        await self.store.close()
        self.store = await self.open_store(**kwargs)
        return self.store

    def sessions_dir(self, agent: str = "main") -> Path:
        return self.state / "agents" / agent / "sessions"

    def transcript(self, key: str, agent: str = "main") -> Path:
        return self.sessions_dir(agent) / (transcripts.transcript_stem(key) + ".jsonl")

    def assertWholeLines(self, path: Path) -> list[dict[str, Any]]:
        """Every line of ``path`` is a JSON object and the file ends with a newline."""
        data = path.read_bytes()
        self.assertTrue(data.endswith(b"\n"), path.name)
        return [json.loads(line) for line in data.decode("utf-8").splitlines()]

    def assertStorageError(self, caught: Any, detail: str) -> None:
        self.assertIsInstance(caught.exception, StorageError)
        self.assertEqual(str(caught.exception), f"transcript could not be written: {detail}")


# -- store behaviour ----------------------------------------------------------------

class Transcripts(StoreCase):
    async def test_lines_and_history_of_every_outcome(self) -> None:
        context = (Message("system", "be brief"), Message("user", "hi"), Message("assistant", "hello"))
        turns = (
            ok_turn(1, context=context),
            TurnRecord("run-2", "q2", "part", "aborted", T0 + 2, error="client gone"),
            TurnRecord("run-3", "q3", "", "aborted", T0 + 3),
            TurnRecord("run-4", "q4", "", "error", T0 + 4, error="upstream 502",
                       context=context),      # not the first turn: context not stored again
            ok_turn(5),
        )
        for turn in turns:
            await self.store.record_turn("main", "chat", turn)
        key = "agent:main:chat"
        head = lambda n, kind: {"type": kind, "runId": f"run-{n}", "at": T0 + n}  # noqa: E731
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        expected = [
            {"type": "session", "key": key, "agentId": "main", "createdAt": T0 + 1},
            {**head(1, "context"), "messages": [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"}]},
            {**head(1, "user"), "content": "question 1"},
            {**head(1, "assistant"), "content": "answer 1", "model": "echo",
             "finishReason": "stop", "usage": usage},
            {**head(2, "user"), "content": "q2"},
            {**head(2, "aborted"), "content": "part", "reason": "client gone"},
            {**head(3, "user"), "content": "q3"},
            {**head(3, "aborted"), "content": "", "reason": "aborted"},
            {**head(4, "user"), "content": "q4"},
            {**head(4, "error"), "message": "upstream 502"},
            {**head(5, "user"), "content": "question 5"},
            {**head(5, "assistant"), "content": "answer 5", "model": "echo",
             "finishReason": "stop", "usage": usage},
        ]
        self.assertEqual(self.assertWholeLines(self.transcript(key)), expected)
        self.assertEqual(await self.store.read_transcript("main", "chat"), expected)
        history = SessionHistory(context + (
            Message("user", "question 1"), Message("assistant", "answer 1"),
            Message("user", "q2"), Message("assistant", "part"), Message("user", "q3"),
            Message("user", "question 5"), Message("assistant", "answer 5")), 2, True)
        self.assertEqual(await self.store.history("main", "chat"), history)
        store = await self.reopen()                # the same, read back from the file
        self.assertEqual(await store.history("main", key), history)
        self.assertEqual(store.list_sessions(), [SessionInfo(key, "main", T0 + 1, T0 + 5, 2, "run-5")])

    async def test_one_session_is_serialised_by_its_lane(self) -> None:
        async def turn(n: int) -> None:
            async with self.store.lane("agent:main:chat"):
                await self.store.record_turn("main", "chat", ok_turn(n))

        await asyncio.gather(*(turn(n) for n in range(20)))
        lines = self.assertWholeLines(self.transcript("agent:main:chat"))
        self.assertEqual([line["runId"] for line in lines[1:]], [f"run-{n // 2}" for n in range(40)])
        history = await self.store.history("main", "chat")
        self.assertEqual((len(history.messages), history.assistant_turns), (40, 20))
        self.assertEqual(history.messages[-1], Message("assistant", "answer 19"))
        self.assertEqual(self.store.list_sessions()[0].turns, 20)
        self.assertEqual(self.store._lanes, {})

    async def test_sessions_share_group_commits(self) -> None:
        before = self.store.commit_batches
        await asyncio.gather(*(self.store.record_turn("main", f"s{n}", ok_turn(n)) for n in range(50)))
        batches = self.store.commit_batches - before
        self.assertLessEqual(batches, 10, f"50 turns took {batches} commits")
        self.assertEqual(len(self.store.list_sessions("main")), 50)
        self.assertEqual(self.store.pending_commits, 0)

    async def test_the_index_adds_nothing_for_the_collector_to_walk(self) -> None:
        # A store of many sessions must not slow every full collection down:
        # what the index keeps per session is untracked once collected, both
        # as recorded and as loaded from index.json.
        await asyncio.gather(*(self.store.record_turn("main", f"g{n}", ok_turn(n)) for n in range(20)))
        for store in (self.store, await self.reopen()):
            index = store._agents["main"].index
            self.assertEqual(len(index), 20)
            gc.collect()
            self.assertEqual([k for k, entry in index.items() if gc.is_tracked(entry)], [])
            self.assertEqual(store.session_info("main", "agent:main:g3"),
                             SessionInfo("agent:main:g3", "main", T0 + 3, T0 + 3, 1, "run-3"))

    async def test_lane_is_fifo_and_leaves_nothing_behind(self) -> None:
        order: list[int] = []
        lane = self.store.lane

        async def hold(n: int) -> None:
            async with lane("k"):
                order.append(n)
                await asyncio.sleep(0)

        async with lane("k"):
            tasks = [asyncio.create_task(hold(n)) for n in range(5)]
            await asyncio.sleep(0)
            tasks[2].cancel()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.assertEqual(order, [0, 1, 3, 4])
        self.assertEqual(self.store._lanes, {})

    async def test_torn_last_line_is_ignored_then_repaired(self) -> None:
        key = "agent:main:torn"
        path = self.transcript(key)
        path.parent.mkdir(parents=True)
        path.write_bytes(
            b'{"type":"session","key":"agent:main:torn","agentId":"main","createdAt":1.0}\n'
            b'{"type":"user","runId":"r1","at":1.0,"content":"hi"}\n'
            b'garbage that is not JSON\n'
            b'{"type":"assistant","runId":"r1","at":1.0,"content":"hello"}\n'
            b'{"type":"user","runId":"r2","at":2.0,"content":"torn turn"}\n'
            b'{"type":"assistant","runId":"r2","at":2.0,"con')
        with self.assertLogs("equabot_gw.sessions", "WARNING") as logs:
            store = await self.reopen()
            # The torn turn r2 was never recorded: neither its time nor its run count.
            self.assertEqual(store.list_sessions(), [SessionInfo(key, "main", 1.0, 1.0, 1, "r1")])
            self.assertEqual(await store.history("main", key), SessionHistory(
                (Message("user", "hi"), Message("assistant", "hello")), 1, True))
            await store.record_turn("main", key, ok_turn(3))
        self.assertEqual([r.getMessage() for r in logs.records], [
            "agent%3Amain%3Atorn.jsonl: skipped 1 line not holding a JSON object, the first at line 3",
            "repaired agent%3Amain%3Atorn.jsonl: dropped a torn last line of 46 bytes"])
        lines = [line for line in (json.loads(raw) if raw.startswith("{") else None
                                   for raw in path.read_text().splitlines()) if line]
        self.assertTrue(path.read_bytes().endswith(b"}\n"))
        self.assertEqual([line.get("runId") for line in lines], [None, "r1", "r1", "r2", "run-3", "run-3"])
        store = await self.reopen()
        with self.assertNoLogs("equabot_gw.sessions", "WARNING"):  # the garbage line stays: told once
            self.assertEqual((await store.history("main", key)).messages[2:],
                             (Message("user", "question 3"), Message("assistant", "answer 3")))

    async def test_reopen_keeps_everything_and_rebuilds_a_lost_index(self) -> None:
        for n, key in enumerate(("a", "b", "c", "a")):
            await self.store.record_turn("main", key, ok_turn(n))
        await self.store.record_turn("ops", "x", ok_turn(9))
        listed = self.store.list_sessions()
        histories = [await self.store.history("main", key) for key in "abc"]
        self.assertEqual([i.key for i in listed],
                         ["agent:ops:x", "agent:main:a", "agent:main:c", "agent:main:b"])
        store = await self.reopen()
        index = json.loads((self.sessions_dir() / "index.json").read_text())
        self.assertEqual(index["agent:main:a"], {"file": "agent%3Amain%3Aa.jsonl", "createdAt": T0,
                                                 "updatedAt": T0 + 3, "turns": 2, "lastRunId": "run-3"})
        self.assertEqual(store.list_sessions(), listed)
        self.assertEqual([await store.history("main", key) for key in "abc"], histories)
        for agent in ("main", "ops"):
            (self.sessions_dir(agent) / "index.json").unlink()
        store = await self.reopen()
        self.assertEqual(store.list_sessions(), listed)
        self.assertEqual(store.list_sessions("ops"), listed[:1])
        self.assertEqual([await store.history("main", key) for key in "abc"], histories)

    async def test_index_writes_are_coalesced(self) -> None:
        writes: list[int] = []
        real = transcripts.write_index

        def counting(sessions_dir: str, snapshot: dict[str, Any], committer: Any) -> float:
            writes.append(len(snapshot))
            return real(sessions_dir, snapshot, committer)

        with mock.patch.object(transcripts, "write_index", counting), \
                mock.patch.object(sessions, "INDEX_FLUSH_INTERVAL", 0.1):
            started = time.monotonic()
            for n in range(30):
                await self.store.record_turn("main", f"k{n}", ok_turn(n))
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            await self.store.close()
        # One write at once, then at most one per interval, and one at close().
        self.assertTrue(2 <= len(writes) <= elapsed / 0.1 + 2, (writes, elapsed))
        self.assertEqual(writes[-1], 30)

    async def test_a_slow_index_write_spaces_out_the_next(self) -> None:
        # Rewrites cost time per session: the next waits INDEX_FLUSH_COST_FACTOR times the last.
        writes: list[float] = []
        sizes: list[int] = []
        real = transcripts.write_index

        def slow(sessions_dir: str, snapshot: dict[str, Any], committer: Any) -> float:
            writes.append(time.monotonic())
            sizes.append(len(snapshot))
            real(sessions_dir, snapshot, committer)
            return 0.05                         # as if it had taken 50 ms: wait ≥ 1 s

        with mock.patch.object(transcripts, "write_index", slow), \
                mock.patch.object(sessions, "INDEX_FLUSH_INTERVAL", 0.01):
            started = time.monotonic()
            for n in range(40):
                await self.store.record_turn("main", f"k{n}", ok_turn(n))
                await asyncio.sleep(0.02)
            elapsed = time.monotonic() - started
            during = list(writes)
            await self.store.close()
        # With a 0.01 s interval there would be dozens; each rewrite waits 1 s after the last.
        self.assertLessEqual(len(during), elapsed // 1.0 + 1, (during, elapsed))
        gaps = [b - a for a, b in zip(during, during[1:])]
        self.assertTrue(all(gap >= 0.95 for gap in gaps), gaps)
        # The close writes the last changes, unless the last timed write (on a slow
        # machine, after the last turn) already held them all.
        self.assertLessEqual(len(writes), len(during) + 1)
        self.assertEqual(sizes[-1], 40)

    async def test_history_is_read_once_and_cached_lru(self) -> None:
        for n, key in enumerate("abc"):
            await self.store.record_turn("main", key, ok_turn(n))
        store = await self.reopen(max_cached_sessions=2)
        reads: list[str] = []
        real = transcripts.read_bytes

        def counting(path: str, committer: Any) -> Any:
            reads.append(Path(path).name)
            return real(path, committer)

        with mock.patch.object(transcripts, "read_bytes", counting):
            first = await store.history("main", "a")
            self.assertEqual(await store.history("main", "a"), first)
            await store.record_turn("main", "a", ok_turn(7))            # updates the cached copy
            self.assertEqual((await store.history("main", "a")).assistant_turns, 2)
            self.assertEqual(len(reads), 1)
            await store.history("main", "b")
            await store.history("main", "c")                           # evicts "a"
            await store.history("main", "a")
            self.assertEqual(len(reads), 4)
            await store.record_turn("main", "new", ok_turn(8))         # a new session is cached
            self.assertEqual((await store.history("main", "new")).assistant_turns, 1)
            self.assertEqual(len(reads), 4)

    async def test_the_history_cache_is_bounded_in_bytes(self) -> None:
        store = await self.reopen(max_cached_bytes=256 * 1024, max_cached_history_bytes=64 * 1024)
        reads: list[str] = []
        real = transcripts.read_bytes

        def counting(path: str, committer: Any) -> Any:
            reads.append(Path(path).name)
            return real(path, committer)

        big = "w " * 20_000                               # 40 KB a turn
        with mock.patch.object(transcripts, "read_bytes", counting):
            for n in range(20):
                await store.record_turn("main", f"s{n}", ok_turn(n, user=big))
                self.assertLessEqual(store.cached_bytes, 256 * 1024)
            self.assertGreater(store.cached_bytes, 128 * 1024)
            # A session past the per-session bound leaves the cache and is read from disk.
            await store.record_turn("main", "s19", ok_turn(30, user=big))
            history = await store.history("main", "s19")
            self.assertEqual(history.assistant_turns, 2)
            self.assertEqual(history.messages[2], Message("user", big))
            await store.history("main", "s19")
            self.assertEqual(reads.count(transcripts.transcript_name("agent:main:s19")), 2)
            self.assertLessEqual(store.cached_bytes, 256 * 1024)
            # A session forgotten gives its bytes back.
            cached = store.cached_bytes
            self.assertTrue(await store.delete("main", "s18"))
            self.assertLess(store.cached_bytes, cached)

    async def test_unknown_sessions_and_keys_of_other_agents(self) -> None:
        self.assertEqual(await self.store.history("main", "nope"), SessionHistory())
        self.assertEqual(await self.store.read_transcript("main", "nope"), [])
        with self.assertRaises(ApiError) as caught:
            await self.store.history("main", "agent:ops:x")
        self.assertEqual((caught.exception.status, caught.exception.message),
                         (400, "session key 'agent:ops:x' belongs to agent 'ops', not 'main'"))
        for agent_id in ("..", ".hidden", "a/b", ""):
            with self.subTest(agent_id), self.assertRaises(ApiError):
                await self.store.record_turn(agent_id, "k", ok_turn(1))
        await self.store.record_turn("main", "..", ok_turn(1))           # a hostile but valid key
        self.assertEqual(sorted(p.name for p in self.sessions_dir().iterdir()),
                         ["agent%3Amain%3A...jsonl"])

    async def test_file_modes(self) -> None:
        await self.store.record_turn("main", "k", ok_turn(1))
        await self.store.record_turn("main", stateless_key("main", "t"), ok_turn(2), stateless=True)
        for path in (self.state / "agents", self.state / "agents" / "main", self.sessions_dir(),
                     self.transcript("agent:main:k")):
            self.assertEqual(path.stat().st_mode & 0o077, 0, path)

    async def test_reset_leaves_a_blank_session_that_the_next_turn_continues(self) -> None:
        key = "agent:main:chat"
        await self.store.record_turn("main", "chat", ok_turn(1))
        await self.store.record_turn("main", "chat", ok_turn(2))
        self.clock.now = T0 + 100.5
        self.assertTrue(await self.store.reset("main", "chat"))
        archived = self.sessions_dir() / f"agent%3Amain%3Achat.reset-{int((T0 + 100.5) * 1000)}.jsonl"
        self.assertEqual(len(self.assertWholeLines(archived)), 5)
        header = {"type": "session", "key": key, "agentId": "main", "createdAt": T0 + 100.5}
        self.assertEqual(self.assertWholeLines(self.transcript(key)), [header])
        blank = [transcripts.SessionInfo(key, "main", T0 + 100.5, T0 + 100.5, 0, None)]
        self.assertEqual((self.store.list_sessions(), await self.store.history("main", key),
                          await self.store.read_transcript("main", key)), (blank, SessionHistory(), [header]))
        # The transcript alone carries the blank session over a restart, the index written or not.
        await self.store.close()
        (self.sessions_dir() / "index.json").unlink()
        self.store = store = await self.open_store()
        self.assertEqual((store.list_sessions(), await store.history("main", key)), (blank, SessionHistory()))
        # Its first turn continues it, with the context it starts from, as a new session's would.
        context = (Message("user", "earlier"), Message("assistant", "before the reset"))
        await store.record_turn("main", "chat", ok_turn(3, context=context))
        self.assertEqual([line["type"] for line in self.assertWholeLines(self.transcript(key))],
                         ["session", "context", "user", "assistant"])
        self.assertEqual([(i.key, i.created_at, i.turns, i.last_run_id) for i in store.list_sessions()],
                         [(key, T0 + 100.5, 1, "run-3")])
        self.assertEqual([m.text() for m in (await store.history("main", key)).messages],
                         ["earlier", "before the reset", "question 3", "answer 3"])
        store = await self.reopen()
        self.assertEqual([(i.key, i.created_at, i.turns) for i in store.list_sessions()], [(key, T0 + 100.5, 1)])
        self.assertTrue(await store.delete("main", key))
        self.assertFalse(self.transcript(key).exists())
        self.assertFalse(await store.delete("main", key))
        self.assertEqual(await store.read_transcript("main", key), [])
        store = await self.reopen()
        self.assertEqual(store.list_sessions(), [])
        self.assertTrue(archived.exists())

    async def test_reset_of_an_unknown_key_gives_it_a_blank_session(self) -> None:
        # As the original does: the key is listed (no turns) and deletable.
        self.assertFalse(await self.store.reset("main", "never"))
        self.assertEqual([(i.key, i.created_at, i.turns) for i in self.store.list_sessions()],
                         [("agent:main:never", T0, 0)])
        self.assertTrue(await self.store.reset("main", "never"))        # a blank session is one
        self.assertEqual(len(list(self.sessions_dir().glob("*.reset-*.jsonl"))), 1)
        self.assertTrue(await self.store.delete("main", "never"))
        self.assertEqual(self.store.list_sessions(), [])

    async def test_reset_while_a_turn_is_queued(self) -> None:
        await self.store.record_turn("main", "chat", ok_turn(1))
        queued = asyncio.create_task(self.store.record_turn("main", "chat", ok_turn(2)))
        await asyncio.sleep(0)                      # the append is queued, not yet resolved
        self.assertEqual(self.store.pending_commits, 1)
        self.assertTrue(await self.store.reset("main", "chat"))
        await queued
        # The turn went into the archive; the index shows the blank session only.
        self.assertEqual([(i.turns, i.created_at, i.last_run_id) for i in self.store.list_sessions()],
                         [(0, T0, None)])
        archived, = self.sessions_dir().glob("*.reset-*.jsonl")
        self.assertEqual([line["runId"] for line in self.assertWholeLines(archived)[1:]],
                         ["run-1", "run-1", "run-2", "run-2"])
        await self.store.record_turn("main", "chat", ok_turn(3))
        self.assertEqual([(i.turns, i.created_at) for i in self.store.list_sessions()], [(1, T0)])
        self.assertEqual([line.get("runId") for line in self.assertWholeLines(self.transcript("agent:main:chat"))],
                         [None, "run-3", "run-3"])

    async def test_a_turn_queued_before_a_reset_and_one_after(self) -> None:
        await self.store.record_turn("main", "chat", ok_turn(1))
        before = asyncio.create_task(self.store.record_turn("main", "chat", ok_turn(2)))
        await asyncio.sleep(0)
        resetting = asyncio.create_task(self.store.reset("main", "chat"))
        await asyncio.sleep(0)
        after = asyncio.create_task(self.store.record_turn("main", "chat", ok_turn(3)))
        await asyncio.gather(before, resetting, after)
        self.assertEqual([(i.turns, i.last_run_id) for i in self.store.list_sessions()], [(1, "run-3")])
        self.assertEqual([m.text() for m in (await self.store.history("main", "chat")).messages],
                         ["question 3", "answer 3"])

    async def test_a_reset_that_cannot_write_the_new_transcript_changes_nothing(self) -> None:
        await self.store.record_turn("main", "chat", ok_turn(1))
        before = self.store.list_sessions()
        with mock.patch.object(committer_mod, "_write", side_effect=OSError(errno.ENOSPC, "No space left")):
            with self.assertRaises(StorageError):
                await self.store.reset("main", "chat")
        self.assertEqual(self.store.list_sessions(), before)
        self.assertEqual(list(self.sessions_dir().glob("*.reset-*.jsonl")), [])
        self.assertEqual([m.text() for m in (await self.store.history("main", "chat")).messages],
                         ["question 1", "answer 1"])
        await self.store.record_turn("main", "chat", ok_turn(2))
        self.assertEqual([(i.turns, i.last_run_id) for i in self.store.list_sessions()], [(2, "run-2")])

    async def test_closed_store(self) -> None:
        await self.store.close()
        await self.store.close()
        with self.assertRaises(StorageError) as caught:
            await self.store.record_turn("main", "k", ok_turn(1))
        self.assertStorageError(caught, "the session store is not open")


class Stateless(StoreCase):
    def journal(self, day: float, agent: str = "main") -> Path:
        name = time.strftime("%Y-%m-%d", time.gmtime(day)) + ".jsonl"
        return self.state / "agents" / agent / "journal" / name

    async def test_one_journal_per_agent_per_day(self) -> None:
        agents = ("main", "main", "ops")
        keys = [stateless_key(agent, "openai") for agent in agents]
        for n, (agent, key) in enumerate(zip(agents, keys)):
            await self.store.record_turn(agent, key, ok_turn(n), stateless=True)
        main = self.assertWholeLines(self.journal(T0))
        self.assertEqual([(line["type"], line["sessionKey"]) for line in main],
                         [("user", keys[0]), ("assistant", keys[0]), ("user", keys[1]),
                          ("assistant", keys[1])])
        self.assertEqual(len(self.assertWholeLines(self.journal(T0, "ops"))), 2)
        self.assertEqual(self.store.list_sessions(), [])
        self.assertEqual(await self.store.history("main", keys[0]), SessionHistory())
        self.assertEqual(await self.store.read_transcript("main", keys[0]), [])
        self.assertFalse(self.sessions_dir().exists())

    async def test_old_journals_are_pruned_at_open_and_at_rollover(self) -> None:
        journals = {age: self.journal(T0 - age * DAY) for age in (30, 8, 7, 0)}
        journals[0].parent.mkdir(parents=True)
        for path in journals.values():
            path.write_text('{"type":"user"}\n')
        other = journals[0].parent / "notes.txt"
        other.write_text("kept")
        await self.reopen()
        self.assertEqual({age for age, path in journals.items() if path.exists()}, {7, 0})
        self.clock.now = T0 + 10 * DAY
        key = stateless_key("main", "t")
        await self.store.record_turn("main", key, ok_turn(0, at=self.clock.now), stateless=True)
        self.assertEqual([p.name for p in sorted(journals[0].parent.iterdir())],
                         [self.journal(self.clock.now).name, "notes.txt"])


class Throughput(unittest.TestCase):
    """Not a timed gate: prints what one event loop reaches (the gateway's benchmark gates)."""

    def test_64_concurrent_callers_on_stateless_keys(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            # A plain loop: IsolatedAsyncioTestCase runs in debug mode, ten times slower.
            turns, elapsed, batches = asyncio.run(self._run(Path(tmp)), debug=False)
            lines = sum(len(p.read_bytes().splitlines()) for p in Path(tmp).rglob("*.jsonl"))
        print(f"\n  record_turn, 64 callers on stateless keys: {turns / elapsed:,.0f} turns/s, "
              f"{batches / elapsed:,.0f} group commits/s, {turns / batches:.1f} turns per fsync",
              file=sys.stderr)
        self.assertEqual(lines, 2 * turns)
        self.assertLess(batches, turns / 4)

    async def _run(self, state: Path) -> tuple[int, float, int]:
        workers, per_worker = 64, 400
        reply = "x" * 200
        store = SessionStore(state)
        await store.open()

        async def caller(w: int) -> None:
            for n in range(per_worker):
                key = stateless_key("main", "bench")
                await store.record_turn("main", key, TurnRecord(
                    f"run-{w}-{n}", "hello", reply, "ok", time.time(), model="echo",
                    usage=Usage(1, 50), finish_reason="stop"), stateless=True)

        started = time.perf_counter()
        await asyncio.gather(*(caller(w) for w in range(workers)))
        elapsed = time.perf_counter() - started
        batches = store.commit_batches
        await store.close()
        return workers * per_worker, elapsed, batches


class WriterThreadScheduling(unittest.IsolatedAsyncioTestCase):
    """The writer thread does not preempt the loop on waking (Linux), and works where it may not ask."""

    async def append_through(self, committer: committer_mod.Committer) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "a.jsonl")
            committer.start()
            try:
                offsets = await asyncio.wait_for(asyncio.gather(
                    committer.append("turn", path, b"one\n"), committer.append("turn", path, b"two\n")), 5)
            finally:
                await committer.stop()
            self.assertEqual(offsets, [0, 4])
            return Path(path).read_bytes()

    @unittest.skipUnless(sys.platform.startswith("linux"), "scheduling policies of threads are Linux's")
    async def test_the_writer_thread_runs_as_a_batch_thread_and_the_loop_keeps_its_policy(self) -> None:
        committer = committer_mod.Committer(asyncio.get_running_loop())
        policies: list[int] = []
        committer.job("looking", lambda _: policies.append(os.sched_getscheduler(threading.get_native_id())))
        self.assertEqual(await self.append_through(committer), b"one\ntwo\n")
        self.assertEqual(policies, [os.SCHED_BATCH])
        self.assertEqual(os.sched_getscheduler(0), os.SCHED_OTHER)

    async def test_a_refused_policy_leaves_the_writer_working(self) -> None:
        refused = mock.patch.object(committer_mod.os, "sched_setscheduler", create=True,
                                    side_effect=PermissionError(errno.EPERM, "Operation not permitted"))
        with refused as call:
            committer = committer_mod.Committer(asyncio.get_running_loop())
            self.assertEqual(await self.append_through(committer), b"one\ntwo\n")
        if sys.platform.startswith("linux"):
            call.assert_called_once()


# -- faults ----------------------------------------------------------------------

class OutcomeAfterCancel(unittest.IsolatedAsyncioTestCase):
    async def test_a_committer_that_is_not_running_is_a_storage_error_not_a_wait(self) -> None:
        # The outcome of an append whose waiter was cancelled is waited for; a
        # committer that never took the append cannot give one.
        committer = committer_mod.Committer(asyncio.get_running_loop())
        self.assertFalse(committer.running)
        with self.assertRaises(StorageError):
            await asyncio.wait_for(committer.outcome([]), 1)
        committer.start()
        self.assertTrue(committer.running)
        self.assertEqual(await asyncio.wait_for(committer.outcome([17]), 1), 17)
        await committer.stop()
        self.assertFalse(committer.running)


class DiskFaults(StoreCase):
    async def test_a_transcript_removed_or_replaced_while_open_gets_the_next_turn_at_its_path(self) -> None:
        key = "agent:main:moved"
        await self.store.record_turn("main", "moved", ok_turn(1))
        path = self.transcript(key)
        path.unlink()                                  # removed: its fd is still open in the store
        with self.assertLogs("equabot_gw.sessions", "WARNING"):
            await self.store.record_turn("main", "moved", ok_turn(2))
        self.assertEqual([line["runId"] for line in self.assertWholeLines(path)], ["run-2", "run-2"])
        backup = path.with_suffix(".bak")
        backup.write_bytes(path.read_bytes())
        os.replace(backup, path)                       # replaced, as a restored backup is
        with self.assertLogs("equabot_gw.sessions", "WARNING"):
            await self.store.record_turn("main", "moved", ok_turn(3))
        self.assertEqual([line["runId"] for line in self.assertWholeLines(path)], ["run-2"] * 2 + ["run-3"] * 2)
        store = await self.reopen()                    # what the path holds is the session
        self.assertEqual([m.content for m in (await store.history("main", key)).messages],
                         ["question 2", "answer 2", "question 3", "answer 3"])

    @unittest.skipIf(os.geteuid() == 0, "root ignores directory permissions (see the ENOSPC test)")
    async def test_read_only_directory(self) -> None:
        await self.store.record_turn("main", "a", ok_turn(1))
        before = self.transcript("agent:main:a").read_bytes()
        self.sessions_dir().chmod(0o500)
        try:
            with self.assertRaises(StorageError) as caught, self.assertLogs("equabot_gw.sessions"):
                await self.store.record_turn("main", "b", ok_turn(2))
            self.assertStorageError(caught, "open of a session transcript failed: EACCES (Permission denied)")
        finally:
            self.sessions_dir().chmod(0o700)
        self.assertEqual(self.transcript("agent:main:a").read_bytes(), before)
        await self.store.record_turn("main", "b", ok_turn(3))
        self.assertEqual(len(self.store.list_sessions()), 2)

    async def test_write_and_fsync_failures_leave_earlier_turns_intact(self) -> None:
        real_write = committer_mod._write

        def failing_write(fd: int, data: Any) -> int:
            if b"FAIL-ME" in bytes(data):         # half the bytes land, then the disk is full
                real_write(fd, bytes(data)[:len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        await self.store.record_turn("main", "a", ok_turn(1))
        path = self.transcript("agent:main:a")
        before = path.read_bytes()
        with mock.patch.object(committer_mod, "_write", failing_write), \
                self.assertLogs("equabot_gw.sessions", "WARNING"):
            results = await asyncio.gather(
                self.store.record_turn("main", "a", ok_turn(2, user="FAIL-ME")),
                self.store.record_turn("main", "b", ok_turn(3)), return_exceptions=True)
        self.assertIsInstance(results[0], StorageError)
        self.assertEqual(str(results[0]), "transcript could not be written: write of a session "
                                          "transcript failed: ENOSPC (No space left on device)")
        self.assertEqual(results[1], transcripts.Stored(str(self.transcript("agent:main:b")), 0,
                                                        results[1].length))   # other files keep working
        self.assertEqual(path.read_bytes(), before)
        eio = OSError(errno.EIO, "Input/output error")
        with mock.patch.object(committer_mod, "_fdatasync", side_effect=eio), \
                self.assertLogs("equabot_gw.sessions", "WARNING"):
            with self.assertRaises(StorageError) as caught:
                await self.store.record_turn("main", "a", ok_turn(4))
        self.assertStorageError(caught, "fsync of a session transcript failed: EIO (Input/output error)")
        self.assertEqual(path.read_bytes(), before)
        await self.store.record_turn("main", "a", ok_turn(5))
        self.assertEqual([line["runId"] for line in self.assertWholeLines(path)[1:]],
                         ["run-1", "run-1", "run-5", "run-5"])
        self.assertEqual((await self.store.history("main", "a")).assistant_turns, 2)
        turns = {i.key: i.turns for i in self.store.list_sessions("main")}
        self.assertEqual((turns, self.store.pending_commits), ({"agent:main:a": 2, "agent:main:b": 1}, 0))


CHILD = r"""
import asyncio, sys, time
from pathlib import Path
from equabot_gw.agents.sessions import SessionStore, stateless_key
from equabot_gw.agents.types import TurnRecord, Usage

async def writer(store, name):
    for n in range(1_000_000):
        stateless = name == "s"
        key = stateless_key("main", "crash") if stateless else "k" + name
        run_id = f"{name}-{n}"
        async with store.lane(key):
            await store.record_turn("main", key, TurnRecord(
                run_id, "q" * (n % 97), "r" * (4000 + n % 3001), "ok", time.time(),
                usage=Usage(1, 1)), stateless=stateless)
        print(run_id, flush=True)

async def main():
    store = SessionStore(Path(sys.argv[1]))
    await store.open()
    await asyncio.gather(*(writer(store, name) for name in "abcds"))

asyncio.run(main())
"""


class CrashSafety(unittest.TestCase):
    def test_sigkill_loses_no_acknowledged_turn(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            child = subprocess.Popen([sys.executable, "-c", CHILD, tmp], stdout=subprocess.PIPE,
                                     env=env, cwd=ROOT)
            acked = []
            assert child.stdout is not None
            for line in child.stdout:
                acked.append(line.decode().strip())
                if len(acked) >= 600:
                    break
            child.send_signal(signal.SIGKILL)
            acked += [line.decode().strip() for line in child.stdout if line.endswith(b"\n")]
            child.wait()
            child.stdout.close()
            self.assertGreaterEqual(len(acked), 600, "the child died before it was killed")
            found = set()
            for path in (state / "agents" / "main").rglob("*.jsonl"):
                data = path.read_bytes()
                whole = data[:data.rfind(b"\n") + 1]         # a torn line only at the very end
                found.update(line["runId"] for line in map(json.loads, whole.splitlines())
                             if line.get("type") == "assistant")
            self.assertEqual(set(acked) - found, set())
            asyncio.run(self._reopen_and_check(state, set(acked)))

    async def _reopen_and_check(self, state: Path, acked: set[str]) -> None:
        store = SessionStore(state)
        await store.open()
        try:
            infos = {i.key: i for i in store.list_sessions("main")}
            self.assertEqual(sorted(infos), [f"agent:main:k{c}" for c in "abcd"])
            for key, info in infos.items():
                history = await store.history("main", key)
                self.assertEqual(info.turns, history.assistant_turns)   # the stale index was rescanned
                done = {a for a in acked if a.startswith(key[-1] + "-")}
                self.assertGreaterEqual(info.turns, len(done))
                await store.record_turn("main", key, ok_turn(1))      # repairs a torn tail
                self.assertTrue(all(isinstance(line, dict) for line in
                                    await store.read_transcript("main", key)))
        finally:
            await store.close()
        for path in (state / "agents" / "main" / "sessions").glob("agent*.jsonl"):
            data = path.read_bytes()
            self.assertTrue(data.endswith(b"\n"))
            for line in data.splitlines():
                json.loads(line)


if __name__ == "__main__":
    unittest.main()
