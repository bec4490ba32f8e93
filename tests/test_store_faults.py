"""The session store under faults: an unexpected exception in the writer thread, a store
closed while a large write is being encoded, a day file that cannot be deleted, and the like."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import tempfile
import time
import unittest
from typing import Any
from unittest import mock

from equabot_gw import compact_json
from equabot_gw.agents import committer as committer_mod, filewindows, transcripts
from equabot_gw.agents.response_store import ResponseStore
from equabot_gw.agents.sessions import SessionStore
from equabot_gw.agents.types import TurnRecord, Usage
from equabot_gw.errors import StorageError

DAY = 86400.0
T0 = 20_000 * DAY + 3600.0
DEADLINE = 30.0         # seconds: generous on a loaded machine; a hang shows as a timeout


def ok_turn(n: int) -> TurnRecord:
    return TurnRecord(run_id=f"run-{n}", user=f"question {n}", reply=f"answer {n}", status="ok",
                      at=T0 + n, model="echo", usage=Usage(3, 2), finish_reason="stop")


class StoreCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.state = pathlib.Path(tmp.name)
        self.store = SessionStore(self.state, clock=lambda: T0)
        await self.store.open()
        self.addAsyncCleanup(self.close_store)

    async def close_store(self) -> None:
        await asyncio.wait_for(self.store.close(), DEADLINE)     # a hang fails the test, not the suite


class UnexpectedWriteError(StoreCase):
    async def test_an_exception_that_is_no_oserror_fails_the_turn_and_the_writer_goes_on(self) -> None:
        # MemoryError joining a batch, or a bug under os.write: the thread must not die
        # with every queued and later append waiting on it for ever.
        await self.store.record_turn("main", "chat", ok_turn(1))
        with mock.patch.object(committer_mod, "_write", side_effect=MemoryError()), \
                self.assertLogs("equabot_gw.sessions", "ERROR") as logs:
            with self.assertRaises(MemoryError):
                await asyncio.wait_for(self.store.record_turn("main", "chat", ok_turn(2)), DEADLINE)
        self.assertIn("appending to agent%3Amain%3Achat.jsonl failed", "\n".join(logs.output))
        await asyncio.wait_for(self.store.record_turn("main", "chat", ok_turn(3)), DEADLINE)
        history = await asyncio.wait_for(self.store.history("main", "chat"), DEADLINE)
        self.assertEqual([m.text() for m in history.messages], ["question 1", "answer 1", "question 3", "answer 3"])
        reopened = SessionStore(self.state, clock=lambda: T0)
        await self.store.close()
        await reopened.open()
        self.addAsyncCleanup(reopened.close)
        history = await reopened.history("main", "chat")
        self.assertEqual([m.text() for m in history.messages], ["question 1", "answer 1", "question 3", "answer 3"])


class TailRead(unittest.TestCase):
    def test_a_tail_that_starts_at_a_line_keeps_that_whole_line(self) -> None:
        lines = [b'{"n":%d}\n' % n for n in range(5)]
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "2024-10-04.jsonl"
            path.write_bytes(b"".join(lines))
            for keep in range(1, len(lines)):
                whole = b"".join(lines[-keep:])
                # Cut exactly where a line starts: that line is whole, and read.
                self.assertEqual(committer_mod.read_regular(str(path), len(whole), tail=True), whole)
                # Cut one byte into a line: that line is not whole, and left out.
                self.assertEqual(committer_mod.read_regular(str(path), len(whole) + len(lines[0]) - 1, tail=True),
                                 whole)


class StoppedCommitter(unittest.IsolatedAsyncioTestCase):
    async def test_what_is_queued_after_stop_fails_at_once_instead_of_waiting_for_ever(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            committer = committer_mod.Committer(asyncio.get_running_loop())
            committer.start()
            path = str(pathlib.Path(tmp) / "a.jsonl")
            self.assertEqual(await committer.append("a line", path, b"1\n"), 0)
            await asyncio.wait_for(committer.stop(), DEADLINE)
            told: list[Any] = []
            with self.assertLogs("equabot_gw.sessions", "WARNING") as logs:
                for waited in (committer.append("a line", path, b"2\n", on_error=told.append),
                               committer.job("a job", lambda _: None, on_error=told.append)):
                    with self.assertRaises(StorageError) as caught:
                        await asyncio.wait_for(waited, DEADLINE)
                    self.assertEqual(str(caught.exception),
                                     "transcript could not be written: the session store is not open")
            self.assertEqual(len(logs.records), 2)
            self.assertEqual([type(exc) for exc in told], [StorageError, StorageError])
            self.assertEqual(committer.pending, 0)
            self.assertEqual(pathlib.Path(path).read_bytes(), b"1\n")

    async def test_two_stops_at_once_both_return(self) -> None:
        committer = committer_mod.Committer(asyncio.get_running_loop())
        committer.start()
        first, second = asyncio.create_task(committer.stop()), asyncio.create_task(committer.stop())
        await asyncio.wait_for(asyncio.gather(first, second), DEADLINE)
        self.assertFalse(committer.running)


class CloseTwiceAtOnce(StoreCase):
    # A host program may close from two places (its own shutdown and a signal's): the
    # second close must return only once everything queued is written, as the first does.
    async def test_a_second_session_store_close_waits_for_the_first(self) -> None:
        turn = asyncio.create_task(self.store.record_turn("main", "chat", ok_turn(1)))
        await asyncio.sleep(0)          # its append is queued
        committer = self.store._committer
        first = asyncio.create_task(self.store.close())
        await asyncio.sleep(0)
        await asyncio.wait_for(self.store.close(), DEADLINE)
        self.assertTrue(turn.done())
        self.assertFalse(committer.running)
        index = self.state / "agents" / "main" / "sessions" / "index.json"
        self.assertEqual(json.loads(index.read_bytes())["agent:main:chat"]["lastRunId"], "run-1")
        await asyncio.wait_for(first, DEADLINE)

    async def test_a_second_response_store_close_waits_for_the_first(self) -> None:
        store = ResponseStore(self.state, clock=lambda: DAY * 20000.5)
        await store.open()
        put = asyncio.create_task(store.put("resp_a", "main", "agent:main:x", "run_1", {"id": "resp_a"}, []))
        await asyncio.sleep(0)
        first = asyncio.create_task(store.close())
        await asyncio.sleep(0)
        await asyncio.wait_for(store.close(), DEADLINE)
        self.assertTrue(put.done())
        await asyncio.wait_for(first, DEADLINE)


class ResponsesClosedMeanwhile(unittest.IsolatedAsyncioTestCase):
    async def test_a_large_put_whose_store_closes_while_it_is_encoded_fails_instead_of_hanging(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = ResponseStore(tmp, clock=lambda: DAY * 20000.5)
            await store.open()
            text = "x" * (compact_json.LARGE_CHARS * 4)      # encoded in slices of the loop
            response = {"id": "resp_big", "object": "response", "output_text": text, "output": []}
            started = asyncio.Event()
            real = compact_json.dumps_async

            async def encode(obj: Any) -> str:
                started.set()
                await asyncio.sleep(0)
                await closed.wait()
                return await real(obj)
            closed = asyncio.Event()
            with mock.patch("equabot_gw.agents.response_store.dumps_async", encode):
                put = asyncio.create_task(store.put("resp_big", "main", "agent:main:x", "run_1", response, []))
                await asyncio.wait_for(started.wait(), DEADLINE)
                await asyncio.wait_for(store.close(), DEADLINE)
                closed.set()
                with self.assertRaises(StorageError) as caught:
                    await asyncio.wait_for(put, DEADLINE)
            self.assertEqual(str(caught.exception), "transcript could not be written: the response store is not open")
            self.assertIsNone(store.find("resp_big"))


class SlowIndexWrite(StoreCase):
    async def test_a_turn_missing_from_an_index_that_took_long_to_write_is_rescanned_after_a_crash(self) -> None:
        # An index snapshot leaves out a turn still being written; the index is written
        # after it. Encoding a big index takes seconds (about 18 us a session): its file
        # must not look newer than the turn by that much, or a restart after a crash
        # trusts the stale entry (turns, updatedAt, lastRunId) over the transcript.
        await self.store.record_turn("main", "chat", ok_turn(1))
        await self.store.close()
        self.store = store = SessionStore(self.state, clock=lambda: T0)
        await store.open()
        agent = store._agents["main"]
        real_dumps = transcripts.dumps

        def slow_dumps(obj: Any) -> str:            # in the writer thread: a big index
            time.sleep(1.5)
            return real_dumps(obj)

        with mock.patch.object(transcripts, "_INDEX_TRUST_MARGIN_NS", 500_000_000), \
                mock.patch.object(transcripts, "dumps", slow_dumps):
            second = asyncio.create_task(store.record_turn("main", "chat", ok_turn(2)))
            await asyncio.sleep(0)                  # its append is queued, not yet resolved
            await asyncio.wait_for(store._flush_index(agent, wait=True), DEADLINE)
            agent.next_flush = asyncio.get_running_loop().time() + 3600    # no later rewrite
            await asyncio.wait_for(second, DEADLINE)
            crashed = self.state.parent / (self.state.name + "-crashed")
            shutil.copytree(self.state, crashed)    # the disk as a crash now leaves it (mtimes kept)
            self.addCleanup(shutil.rmtree, crashed)
            self.assertEqual(json.loads((crashed / "agents/main/sessions/index.json").read_bytes())
                             ["agent:main:chat"]["lastRunId"], "run-1")    # the index is stale
            restarted = SessionStore(crashed, clock=lambda: T0)
            await restarted.open()
            self.addAsyncCleanup(restarted.close)
        [info] = restarted.list_sessions()
        self.assertEqual((info.turns, info.last_run_id), (2, "run-2"))


class OutcomeOfAnyTime(StoreCase):
    async def test_a_run_time_no_journal_can_have_finds_nothing_instead_of_raising(self) -> None:
        # ``at`` comes from a key journal on disk: a damaged one may hold any finite number.
        await self.store.record_turn("main", "s", ok_turn(1), stateless=True)
        self.assertEqual((await self.store.find_outcome("main", "run-1", None, T0 + 1))["type"], "assistant")
        for at in (1e18, -1e18, 1e300, -1e300, 2932897 * DAY):
            with self.subTest(at=at):
                self.assertIsNone(await self.store.find_outcome("main", "run-1", None, at))
                self.assertIsNone(await self.store.find_outcome("main", "run-1", "chat", at))


class TornTurnAtLoad(StoreCase):
    async def test_lines_of_a_turn_cut_short_by_a_crash_do_not_count_as_its_last_run(self) -> None:
        # A crash mid-write of a turn's lines, repaired to its last whole line, leaves the
        # turn's input without its outcome: never acknowledged, no turn, as a failed append
        # leaves none. The rebuilt entry is the one the store held before that turn.
        await self.store.record_turn("main", "chat", ok_turn(1))
        [before] = self.store.list_sessions()
        await self.store.close()
        path = self.state / "agents" / "main" / "sessions" / (transcripts.transcript_stem("agent:main:chat") + ".jsonl")
        torn = transcripts.turn_lines(ok_turn(2), None, False)[:-1]      # its outcome line lost
        with open(path, "ab") as f:
            f.write(transcripts.encode(torn))
        self.store = SessionStore(self.state, clock=lambda: T0)
        await self.store.open()
        self.assertEqual(self.store.list_sessions(), [before])
        history = await self.store.history("main", "chat")
        self.assertEqual([m.text() for m in history.messages], ["question 1", "answer 1"])


class ResponseLogGone(unittest.IsolatedAsyncioTestCase):
    async def test_a_response_whose_log_is_gone_is_no_longer_stored(self) -> None:
        # Its log removed under the store (expired and pruned while a delete was queued,
        # or by the operator): nothing of it is on disk, so it is not found, and a delete
        # succeeds, rather than failing on it with "damaged" or ENOENT for ever.
        with tempfile.TemporaryDirectory() as tmp:
            store = ResponseStore(tmp, clock=lambda: DAY * 20000.5)
            await store.open()
            self.addAsyncCleanup(store.close)
            kept = await store.put("resp_kept", "main", "agent:main:x", "run_1", {"id": "resp_kept"}, [])
            os.unlink(kept.path)
            self.assertIsNone(await store.read("resp_kept"))
            self.assertIsNone(store.find("resp_kept"))
            self.assertEqual(store.responses_in("agent:main:x"), 0)
            with self.assertLogs("equabot_gw.sessions", "WARNING"):       # the log it was appended to is gone
                gone = await store.put("resp_gone", "main", "agent:main:y", "run_2", {"id": "resp_gone"}, [])
            os.unlink(gone.path)
            self.assertEqual(await store.delete("resp_gone"), gone)
            self.assertIsNone(store.find("resp_gone"))
            self.assertEqual(store.responses_in("agent:main:y"), 0)
            self.assertFalse(os.path.exists(gone.path))      # the erase made no file of its own


class UndeletableOldDay(unittest.IsolatedAsyncioTestCase):
    # A directory under the name of an expired day's file (a restored backup, a stray
    # mkdir) cannot be unlinked: start-up must go on without it, not fail on it.
    async def test_the_session_store_opens_past_an_expired_journal_it_cannot_delete(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            for kind in (transcripts.JOURNAL_DIR, transcripts.KEYS_DIR):
                (state / "agents" / "main" / kind / "2000-01-01.jsonl").mkdir(parents=True)
            old_journal = state / "agents" / "main" / transcripts.JOURNAL_DIR / "2000-01-02.jsonl"
            old_journal.write_bytes(b"{}\n")
            store = SessionStore(state, clock=lambda: T0)
            with self.assertLogs("equabot_gw.sessions", "WARNING") as logs:
                await asyncio.wait_for(store.open(), DEADLINE)
            self.addAsyncCleanup(store.close)
            self.assertIn("2000-01-01.jsonl could not be deleted", "\n".join(logs.output))
            self.assertFalse(old_journal.exists())         # the others of its kind still go
            await store.record_turn("main", "chat", ok_turn(1))
            with self.assertLogs("equabot_gw.sessions", "WARNING"):       # the key journals' own prune
                self.assertEqual([lines async for lines in store.read_key_lines("main", T0 - DAY)], [])

    async def test_the_response_store_opens_past_an_expired_log_it_cannot_delete(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            (pathlib.Path(tmp) / "responses" / "2000-01-01.jsonl").mkdir(parents=True)
            store = ResponseStore(tmp, clock=lambda: DAY * 20000.5)
            with self.assertLogs("equabot_gw.sessions", "WARNING") as logs:
                await asyncio.wait_for(store.open(), DEADLINE)
            self.addAsyncCleanup(store.close)
            self.assertIn("2000-01-01.jsonl could not be deleted", "\n".join(logs.output))
            entry = await store.put("resp_a", "main", "agent:main:x", "run_1", {"id": "resp_a"}, [])
            self.assertEqual(store.find("resp_a"), entry)


if __name__ == "__main__":
    unittest.main()


class OutcomeSearchByWindows(unittest.TestCase):
    """``find_outcome`` reads a file a window at a time: lines and run ids cut by a window's
    edge are found as whole, and a file cut short from outside ends the search, no crash."""

    def write_lines(self, lines: list[dict[str, Any]], tail: bytes = b"") -> str:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        path = os.path.join(tmp.name, "journal.jsonl")
        with open(path, "wb") as f:
            f.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines) + tail)
        return path

    def test_every_runs_last_outcome_is_found_with_windows_smaller_than_lines(self) -> None:
        import random
        rng = random.Random(7)
        lines: list[dict[str, Any]] = []
        for n in range(120):
            run = f"run-{rng.randrange(30)}"
            kind = rng.choice(("user", "assistant", "aborted", "error"))
            # Text that names another run, in quotes, inside content: found, read, and passed over.
            text = "x" * rng.randrange(0, 300) + (f' "run-{rng.randrange(30)}" ' if n % 7 == 0 else "")
            lines.append({"type": kind, "runId": run, "content": text, "n": n})
        path = self.write_lines(lines, tail=b'{"type":"assistant","runId":"run-3","n":-1')    # torn
        expected = {}
        for line in lines:
            if line["type"] != "user":
                expected[line["runId"]] = line
        for window in (9, 10, 17, 64, 4096):
            with self.subTest(window=window), mock.patch.object(filewindows, "WINDOW_BYTES", window):
                for n in range(31):
                    run = f"run-{n}"
                    self.assertEqual(transcripts.find_outcome([path], run, None), expected.get(run), run)

    def test_a_file_cut_short_during_the_search_ends_it(self) -> None:
        lines = [{"type": "assistant", "runId": f"run-{n}", "content": "y" * 200} for n in range(50)]
        path = self.write_lines(lines)
        real_pread = os.pread
        calls = []

        def cutting(fd: int, n: int, offset: int) -> bytes:
            calls.append(offset)
            if len(calls) == 2:
                os.truncate(path, 100)      # someone else's truncate, between two reads
            return real_pread(fd, n, offset)

        with mock.patch.object(filewindows, "WINDOW_BYTES", 512), \
                mock.patch.object(filewindows.os, "pread", cutting):
            self.assertIsNone(transcripts.find_outcome([path], "run-49", None))
        self.assertGreaterEqual(len(calls), 2)
