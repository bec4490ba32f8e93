"""Reading state back at start-up and at day rollover: bounded memory, and no crash when a
file is damaged or cut short from outside meanwhile.

The idempotency key journal is read a window at a time (memory is the table of live
keys and one window's lines, not a day's journal); the stored-responses logs are read
with windowed reads, not mapped (a log truncated while it is read ends the load; a
mapping would take the process down with SIGBUS), and give the entries the whole-file
scan gives, whatever the window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import unittest
from typing import Any
from unittest import mock

from equabot_gw.agents import filewindows, response_store, transcripts
from equabot_gw.agents.idempotency import Keys
from equabot_gw.agents.response_store import StoredResponse
from equabot_gw.agents.sessions import SessionStore

DEADLINE = 120.0
T0 = 1_790_000_000.0
REPO = pathlib.Path(__file__).resolve().parent.parent


def key_line(n: int, **extra: Any) -> dict[str, Any]:
    line = {"type": "key", "key": f"key-{n:08d}", "digest": "d" * 64, "runId": f"run_{n:024x}",
            "sessionKey": f"agent:main:s{n}", "stateless": n % 3 == 0, "at": T0 - 10 - n % 50}
    line.update(extra)
    return line


class KeyJournalCase(unittest.IsolatedAsyncioTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.state = pathlib.Path(tmp.name)
        day = transcripts.journal_name(int(T0 // 86400))
        self.journal = self.state / "agents" / "main" / transcripts.KEYS_DIR / day
        self.journal.parent.mkdir(parents=True)

    async def load(self, **options: Any) -> Keys:
        store = SessionStore(self.state, clock=lambda: T0)
        await asyncio.wait_for(store.open(), DEADLINE)
        self.addAsyncCleanup(store.close)
        keys = Keys(store, clock=lambda: T0, **options)
        await asyncio.wait_for(keys.load(["main"]), DEADLINE)
        return keys


class KeyJournalMemory(KeyJournalCase):
    async def test_loading_a_big_key_journal_takes_a_window_not_the_file(self) -> None:
        with open(self.journal, "w") as f:
            for n in range(60_000):
                f.write(json.dumps(key_line(n, meta={"model": "m" * 100}), separators=(",", ":")) + "\n")
        size = self.journal.stat().st_size
        store = SessionStore(self.state, clock=lambda: T0)
        await asyncio.wait_for(store.open(), DEADLINE)
        self.addAsyncCleanup(store.close)
        keys = Keys(store, clock=lambda: T0, max_keys=1000)
        tracemalloc.start()
        try:
            await asyncio.wait_for(keys.load(["main"]), DEADLINE)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(len(keys), 1000)
        self.assertIsNotNone(keys.get("main", "key-00059999"))       # the newest are kept
        self.assertIsNone(keys.get("main", "key-00000000"))
        # The journal is ~20 MB, its lines parsed several times that: a window is not.
        self.assertLess(peak, size // 4, f"peak {peak} bytes for a journal of {size}")


class KeyJournalWindows(KeyJournalCase):
    async def test_windows_of_any_size_give_the_table_one_read_gives(self) -> None:
        rng = random.Random(11)
        raw = []
        for n in range(400):
            pick = rng.random()
            if pick < 0.6:
                line = key_line(rng.randrange(120), meta={"model": "x" * rng.randrange(0, 300)})
            elif pick < 0.8:
                k = rng.randrange(120)
                line = {"type": "free", "key": f"key-{k:08d}", "runId": f"run_{k:024x}", "at": T0}
            elif pick < 0.9:
                line = {"type": "note", "text": "n" * rng.randrange(0, 5000)}     # not ours: passed over
            else:
                raw.append(b"not json " + b"z" * rng.randrange(0, 3000) + b"\n")
                continue
            raw.append(json.dumps(line).encode() + b"\n")
        self.journal.write_bytes(b"".join(raw) + json.dumps(key_line(500)).encode()[:40])    # a torn tail

        def table(keys: Keys) -> list[tuple[Any, ...]]:
            return [(e.agent_id, e.key, e.digest, e.run_id, e.session_key, e.stateless, e.at, e.meta)
                    for e in keys._table.values()]

        with mock.patch.object(filewindows, "KEY_WINDOW_BYTES", 1 << 30), \
                self.assertLogs("equabot_gw.sessions", "WARNING"):
            whole = table(await self.load())
        self.assertTrue(whole)
        for window in (1024, 1500, 4096, 65536):
            with self.subTest(window=window), mock.patch.object(filewindows, "KEY_WINDOW_BYTES", window), \
                    self.assertLogs("equabot_gw.sessions", "WARNING") as logs:
                self.assertEqual(table(await self.load()), whole)
            # Junk lines (those over the window too) are counted once, in one warning.
            self.assertEqual(len([m for m in logs.output if "skipped" in m]), 1, logs.output)

    async def test_a_journal_cut_short_while_it_is_read_ends_its_reading(self) -> None:
        with open(self.journal, "w") as f:
            for n in range(3000):
                f.write(json.dumps(key_line(n)) + "\n")
        real_pread = os.pread
        calls = []

        def cutting(fd: int, n: int, offset: int) -> bytes:
            calls.append(offset)
            if len(calls) == 2:
                os.truncate(self.journal, 5000)      # someone else's truncate, between two reads
            return real_pread(fd, n, offset)

        with mock.patch.object(filewindows, "KEY_WINDOW_BYTES", 4096), \
                mock.patch.object(transcripts.os, "pread", cutting):
            keys = await self.load()
        self.assertGreaterEqual(len(calls), 2)
        self.assertIsNotNone(keys.get("main", "key-00000000"))
        self.assertIsNone(keys.get("main", "key-00002999"))


# The loader as it was, a mapping scanned by ``_LINE_HEAD``: what the windowed one must give.
def mapped_entries(path: str) -> dict[str, StoredResponse]:
    import mmap
    entries: dict[str, StoredResponse] = {}
    with open(path, "rb") as f:
        if not os.fstat(f.fileno()).st_size:
            return entries
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for match in response_store._LINE_HEAD.finditer(data):
                end = data.find(b"\n", match.end())
                if end < 0:
                    break
                response_id = match.group(1).decode()
                if match.group(2) is None:
                    entries.pop(response_id, None)
                    continue
                entries[response_id] = StoredResponse(
                    response_id, match.group(2).decode(), match.group(3).decode(), match.group(4).decode(),
                    path, match.start(), end + 1 - match.start())
    return entries


def response_line(rng: random.Random, n: int) -> bytes:
    head = {"id": f"resp_{rng.randrange(60)}", "agentId": "main", "sessionKey": f"agent:main:s{n % 7}",
            "runId": f"run_{n}", "at": T0}
    return json.dumps({**head, "response": {"output_text": "r" * rng.choice((0, 10, 200, 3000, 9000))},
                       "input": []}, separators=(",", ":")).encode() + b"\n"


class ResponseLogWindows(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.path = os.path.join(tmp.name, "2026-01-01.jsonl")

    def test_windows_smaller_than_lines_give_the_entries_of_the_whole_file(self) -> None:
        for seed in range(6):
            rng = random.Random(seed)
            parts = []
            for n in range(150):
                pick = rng.random()
                if pick < 0.6:
                    parts.append(response_line(rng, n))
                elif pick < 0.75:
                    marker = b'{"id":"resp_%d","deleted":true}' % rng.randrange(60)
                    parts.append(marker + b" " * rng.randrange(0, 2000) + b"\n")
                elif pick < 0.85:
                    parts.append(b"junk " + b"j" * rng.randrange(0, 5000) + b"\n")
                elif pick < 0.9:
                    parts.append(b"\n")
                else:       # a head that is no line's head: in the middle of another line
                    parts.append(b"x" + response_line(rng, n))
            tail = (b"", response_line(rng, 999)[:rng.randrange(1, 600)], response_line(rng, 998)[:-1])
            with open(self.path, "wb") as f:
                f.write(b"".join(parts) + rng.choice(tail))
            expected = mapped_entries(self.path)
            self.assertTrue(expected)
            for window in (1, 64, 700, 1000, 4096, 1 << 20):
                with self.subTest(seed=seed, window=window), \
                        mock.patch.object(response_store, "_LOAD_WINDOW_BYTES", window):
                    entries: dict[str, StoredResponse] = {}
                    response_store._load_file(self.path, entries)
                    self.assertEqual(entries, expected)
                    self.assertEqual(list(entries), list(expected))

    def test_a_long_line_is_not_held_whole(self) -> None:
        with open(self.path, "wb") as f:
            f.write(response_line(random.Random(1), 1))
            f.write(b'{"id":"resp_big","agentId":"main","sessionKey":"agent:main:big","runId":"run_big",'
                    b'"at":1,"response":{"output_text":"' + b"b" * 20_000_000 + b'"},"input":[]}\n')
            f.write(response_line(random.Random(2), 2))
        tracemalloc.start()
        try:
            entries: dict[str, StoredResponse] = {}
            response_store._load_file(self.path, entries)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(entries, mapped_entries(self.path))
        self.assertIn("resp_big", entries)
        self.assertLess(peak, 8_000_000)

    def test_a_log_cut_short_while_it_is_loaded_ends_the_load(self) -> None:
        # In a child process: a mapping read past the new end kills it with SIGBUS.
        rng = random.Random(3)
        with open(self.path, "wb") as f:
            f.write(b"".join(response_line(rng, n) for n in range(3000)))
        expected = mapped_entries(self.path)
        with open(self.path, "rb") as f:
            data = f.read()
        starts = [0] + [m.end() for m in re.finditer(rb"\n", data)]
        spans = {(a, b - a) for a, b in zip(starts, starts[1:])}
        script = textwrap.dedent("""
            import json, os, sys
            from unittest import mock
            from equabot_gw.agents import response_store

            path = sys.argv[1]
            real = response_store._LINE_HEAD

            class Cutting:
                # Someone else truncates the log once its scan has begun.
                cut = False
                def __getattr__(self, name):
                    if not Cutting.cut:
                        Cutting.cut = True
                        os.truncate(path, 5000)
                    return getattr(real, name)

            entries = {}
            with mock.patch.object(response_store, "_LOAD_WINDOW_BYTES", 4096, create=True), \\
                    mock.patch.object(response_store, "_LINE_HEAD", Cutting()):
                response_store._load_file(path, entries)
            print(json.dumps({k: [e.offset, e.length] for k, e in entries.items()}))
        """)
        done = subprocess.run([sys.executable, "-c", script, self.path], cwd=REPO, capture_output=True,
                              timeout=DEADLINE)
        self.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace")[-2000:])
        loaded = json.loads(done.stdout)
        self.assertLess(len(loaded), len(expected))
        self.assertTrue(loaded)
        for offset, length in loaded.values():       # whole lines of the log as it was read
            self.assertIn((offset, length), spans)
            self.assertLess(offset, 5000)


if __name__ == "__main__":
    unittest.main()


# The transcript scan as it was, the whole file parsed and folded: what the windowed one must give.
def scanned_whole(agent_id: str, path: str) -> transcripts.SessionInfo | None:
    lines = transcripts.read_file_lines(path)
    if not lines:
        return None
    header = lines[0] if lines[0].get("type") == "session" else {}
    key = header.get("key")
    if not isinstance(key, str):
        key = transcripts.unescape_stem(os.path.basename(path)[:-len(".jsonl")])
    if key is None:
        return None
    ended = [line for line in lines if line.get("type") in ("assistant", "aborted", "error")]
    times = [t for t in (transcripts.number(line.get("at")) for line in ended) if t is not None]
    created = transcripts.number(header.get("createdAt"))
    created = created if created is not None else min(times, default=0.0)
    runs = [line["runId"] for line in ended if isinstance(line.get("runId"), str)]
    return transcripts.SessionInfo(key, agent_id, created, max(times, default=created),
                                   transcripts.fold(transcripts.SessionHistory(), lines).assistant_turns,
                                   runs[-1] if runs else None)


def transcript_lines(rng: random.Random, header: bool) -> list[bytes]:
    out = [json.dumps(transcripts.header_line("agent:main:chat", "main", T0 - 5000)).encode() + b"\n"] \
        if header else []
    for n in range(rng.randrange(1, 80)):
        run = f"run_{rng.randrange(12)}"
        pick = rng.random()
        if pick < 0.1:
            out.append(b"junk\n")
            continue
        kind = rng.choice(("user", "user", "tool", "assistant", "assistant", "aborted", "error", "context"))
        line: dict[str, Any] = {"type": kind, "runId": run, "at": T0 - rng.randrange(5000) if rng.random() < 0.9
                                else "then", "content": "c" * rng.choice((0, 5, 100, 2000))}
        if kind == "context":
            line["messages"] = [{"role": "user", "content": "m" * rng.randrange(300)}]
        out.append(json.dumps(line).encode() + b"\n")
    return out


class TranscriptScanWindows(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.path = os.path.join(tmp.name, "agent%3Amain%3Achat.jsonl")
        logging.disable(logging.WARNING)        # the junk lines' warnings: not what is tested here
        self.addCleanup(logging.disable, logging.NOTSET)

    def test_windows_smaller_than_lines_give_the_entry_of_the_whole_file(self) -> None:
        owns = lambda agent_id, key: key.startswith(f"agent:{agent_id}:")    # noqa: E731
        for seed in range(40):
            rng = random.Random(seed)
            lines = transcript_lines(rng, header=seed % 4 != 0)
            torn = rng.choice((b"", b'{"type":"assistant","runId":"run_1","at":1'))
            with open(self.path, "wb") as f:
                f.write(b"".join(lines) + torn)
            expected = scanned_whole("main", self.path)
            for window in (1, 50, 700, 4096, 1 << 20):
                with self.subTest(seed=seed, window=window), \
                        mock.patch.object(transcripts, "_TRANSCRIPT_WINDOW_BYTES", window):
                    self.assertEqual(transcripts._scan("main", self.path, owns), expected)


class TranscriptScanMemory(unittest.IsolatedAsyncioTestCase):
    async def test_a_long_transcript_is_not_held_whole_at_start_up(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            sessions = state / "agents" / "main" / transcripts.SESSIONS_DIR
            sessions.mkdir(parents=True)
            path = sessions / transcripts.transcript_name("agent:main:long")
            with open(path, "w") as f:      # a long session, and no index (lost): it is scanned
                f.write(json.dumps(transcripts.header_line("agent:main:long", "main", T0 - 9000)) + "\n")
                for n in range(6000):
                    for kind in ("user", "assistant"):
                        f.write(json.dumps({"type": kind, "runId": f"run_{n}", "at": T0 - 9000 + n,
                                            "content": "w" * 2000}) + "\n")
            size = path.stat().st_size
            store = SessionStore(state, clock=lambda: T0)
            tracemalloc.start()
            try:
                await asyncio.wait_for(store.open(), DEADLINE)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            (info,) = store.list_sessions("main")
            await store.close()
            self.assertEqual((info.key, info.turns, info.last_run_id, info.created_at, info.updated_at),
                             ("agent:main:long", 6000, "run_5999", T0 - 9000, T0 - 9000 + 5999))
            # ~25 MB of transcript: its bytes alone are more than this.
            self.assertLess(peak, size // 4, f"peak {peak} bytes for a transcript of {size}")
