"""Token usage summed from transcripts and journals: what ``usage.cost`` reads.

The sums must be those of decoding every line (the answer ``usage.cost`` has
always given), taken while streaming (memory far below a busy day's journal),
ignoring a torn last line, reused for past days' journals, and read outside
the committer, so that appends do not wait behind a long scan.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
import tracemalloc
import unittest
from pathlib import Path
from typing import Any
from unittest import mock

from equabot_gw.agents import session_reads, transcripts, usage_scan
from equabot_gw.agents.sessions import SessionStore
from equabot_gw.agents.types import TurnRecord, Usage

DAY = 86400
TODAY = 20_000                      # the store's clock: noon of this UTC day
NOW = TODAY * DAY + DAY / 2


def reference(path: str) -> dict[int, tuple[int, int]]:
    """The sums as usage.cost made them before it streamed: every line decoded."""
    days: dict[int, list[int]] = {}
    with open(path, "rb") as f:
        lines = transcripts.parse_lines(f.read())[0]
    for line in lines:
        at, usage = line.get("at"), line.get("usage")
        if line.get("type") != "assistant" or not isinstance(at, (int, float)) or not isinstance(usage, dict):
            continue
        bucket = days.setdefault(int(at // DAY), [0, 0])
        for n, name in enumerate(("prompt_tokens", "completion_tokens")):
            value = usage.get(name)
            bucket[n] += value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
    return {day: (p, c) for day, (p, c) in days.items()}


def turn(n: int, at: float, prompt: int = 3, completion: int = 5, reply: str = "a reply") -> TurnRecord:
    return TurnRecord(f"r-{n}", f"question {n}", reply, "ok", at, model="echo", usage=Usage(prompt, completion),
                      finish_reason="stop")


# Lines a scan must judge as decoding them would: (name, raw line).
LINES = (
    ("plain", b'{"type":"assistant","runId":"a","at":1728000000.5,"content":"x",'
              b'"usage":{"prompt_tokens":2,"completion_tokens":7}}'),
    ("int at", b'{"type":"assistant","at":1728086400,"usage":{"prompt_tokens":1,"completion_tokens":1}}'),
    ("escaped type", b'{"type":"\\u0061ssistant","at":1728000000,"usage":{"prompt_tokens":4,"completion_tokens":4}}'),
    ("escaped key", b'{"type":"assistant","at":1728000000,"\\u0075sage":{"prompt_tokens":8,"completion_tokens":1}}'),
    ("spaced", b'{ "type" : "assistant" , "at" : 1728000000 , "usage" : { "prompt_tokens" : 16 } }'),
    ("lone surrogate", b'{"type":"assistant","at":1728000000,"content":"\\udc80",'
                       b'"usage":{"prompt_tokens":32,"completion_tokens":2}}'),
    ("user says assistant", b'{"type":"user","at":1728000000,"content":"assistant usage","usage":{"prompt_tokens":99}}'),
    ("no usage", b'{"type":"assistant","at":1728000000,"content":"usage"}'),
    ("usage null", b'{"type":"assistant","at":1728000000,"usage":null}'),
    ("bad counts", b'{"type":"assistant","at":1728000000,"usage":{"prompt_tokens":true,"completion_tokens":-3}}'),
    ("float count", b'{"type":"assistant","at":1728000000,"usage":{"prompt_tokens":2.0,"completion_tokens":64}}'),
    ("string at", b'{"type":"assistant","at":"1728000000","usage":{"prompt_tokens":128}}'),
    ("not an object", b'["assistant",{"usage":{"prompt_tokens":256}}]'),
    ("not JSON", b'{"type":"assistant","at":1728000000,"usage":{"prompt_tokens":512}'),
    ("too deep", b'{"type":"assistant","at":1728000000,"usage":{"prompt_tokens":1024},"x":'
                 + b"[" * 300 + b"]" * 300 + b"}"),
    ("duplicate type", b'{"type":"user","at":1728000000,"usage":{"prompt_tokens":2048},"type":"assistant"}'),
    ("long", b'{"type":"assistant","at":1728000000,"content":"' + b"w" * 5000
             + b'","usage":{"prompt_tokens":4096,"completion_tokens":3}}'),
    ("blank", b""),
)


class ScanTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.path = os.path.join(self.tmp.name, "day.jsonl")

    def write(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)

    def test_each_line_counts_as_decoding_it_would(self) -> None:
        for name, raw in LINES:
            with self.subTest(name):
                self.write(raw + b"\n")
                self.assertEqual(usage_scan.scan_usage(self.path).days, reference(self.path))

    def test_every_line_together_at_any_read_size(self) -> None:
        data = b"".join(raw + b"\n" for _, raw in LINES) * 3
        self.write(data)
        expected = reference(self.path)
        self.assertEqual(expected, {20000: (3 * (2 + 4 + 8 + 16 + 32 + 2048 + 4096), 3 * (7 + 4 + 1 + 2 + 64 + 3)),
                                    20001: (3, 3)})
        for size in (1, 2, 7, 64, 1000, 4999, 5003, 1 << 20):
            with self.subTest(size=size), mock.patch.object(usage_scan, "_USAGE_CHUNK_BYTES", size):
                self.assertEqual(usage_scan.scan_usage(self.path).days, expected)

    def test_a_torn_last_line_is_no_line(self) -> None:
        whole = b'{"type":"assistant","at":1728000000,"usage":{"prompt_tokens":2,"completion_tokens":3}}'
        for size in (1, 16, 1 << 20):
            with self.subTest(size=size), mock.patch.object(usage_scan, "_USAGE_CHUNK_BYTES", size):
                self.write(whole + b"\n" + whole)          # complete JSON, but its newline never came
                self.assertEqual(usage_scan.scan_usage(self.path).days, {20000: (2, 3)})
                self.write(whole + b"\n" + whole[:30])
                self.assertEqual(usage_scan.scan_usage(self.path).days, {20000: (2, 3)})

    def test_no_file_and_special_files(self) -> None:
        self.assertIsNone(usage_scan.scan_usage(self.path))
        self.assertIsNone(usage_scan.file_signature(self.path))
        os.mkfifo(self.path)
        with self.assertRaises(OSError):
            usage_scan.scan_usage(self.path)

    def test_only_lines_that_may_hold_usage_are_decoded(self) -> None:
        lines = [turn(n, NOW) for n in range(50)]
        self.write(b"".join(transcripts.encode(transcripts.turn_lines(t, "agent:main:s", True)) for t in lines))
        with mock.patch.object(usage_scan, "parse_lines", wraps=usage_scan.parse_lines) as parse:
            self.assertEqual(usage_scan.scan_usage(self.path).days, {TODAY: (150, 250)})
        self.assertEqual(parse.call_count, 50)          # the assistant lines, not the user lines


class StoreUsageTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.store = SessionStore(Path(self.tmp.name), clock=lambda: NOW, stateless_retention_days=3660)
        await self.store.open()
        self.addAsyncCleanup(self.store.close)

    def journal(self, day: int) -> str:
        return os.path.join(self.tmp.name, "agents", "main", "journal", transcripts.journal_name(day))

    async def stateless(self, n: int, at: float, **kwargs: Any) -> None:
        await self.store.record_turn("main", f"agent:main:s-{n}", turn(n, at, **kwargs), stateless=True)

    def settle(self, path: str, day: int) -> None:
        os.utime(path, (day * DAY + DAY - 1, day * DAY + DAY - 1))     # last written on its own day

    async def test_a_large_journal_is_summed_in_little_memory(self) -> None:
        path = self.journal(TODAY)

        def write() -> None:
            os.makedirs(os.path.dirname(path))
            with open(path, "wb") as f:                  # 25,000 turns: 50,000 lines
                for n in range(25_000):
                    t = turn(n, NOW + n / 1000, prompt=n % 7, completion=n % 11, reply=f"reply {n} " + "x" * 300)
                    f.write(transcripts.encode_plain_turn(t, f"agent:main:s-{n}"))

        await asyncio.to_thread(write)
        size = os.path.getsize(path)
        expected = await asyncio.to_thread(reference, path)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            sums = await self.store.journal_usage("main", TODAY)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(sums, expected)
        self.assertGreater(size, 15_000_000)
        self.assertLess(peak, size / 5, f"peak {peak} bytes for a {size}-byte journal")

    async def test_a_torn_last_line_of_a_journal_is_ignored(self) -> None:
        await self.stateless(1, NOW)
        with open(self.journal(TODAY), "ab") as f:
            f.write(transcripts.encode_plain_turn(turn(2, NOW), "agent:main:s-2")[:-1])    # no final newline
        self.assertEqual(await self.store.journal_usage("main", TODAY), {TODAY: (3, 5)})

    async def test_past_days_are_scanned_once_today_every_time(self) -> None:
        for day in (TODAY - 2, TODAY - 1, TODAY):
            await self.stateless(day, day * DAY + 60, prompt=day - TODAY + 10)
        for day in (TODAY - 2, TODAY - 1):
            self.settle(self.journal(day), day)
        scanned: list[str] = []

        def counted(path: str) -> usage_scan.UsageScan | None:
            scanned.append(os.path.basename(path))
            return scan(path)

        scan = usage_scan.scan_usage
        with mock.patch.object(usage_scan, "scan_usage", counted):
            first = [await self.store.journal_usage("main", d) for d in range(TODAY - 2, TODAY + 1)]
            second = [await self.store.journal_usage("main", d) for d in range(TODAY - 2, TODAY + 1)]
            self.assertEqual(first, [{TODAY - 2: (8, 5)}, {TODAY - 1: (9, 5)}, {TODAY: (10, 5)}])
            self.assertEqual(second, first)
            names = [transcripts.journal_name(d) for d in (TODAY - 2, TODAY - 1, TODAY)]
            self.assertEqual(scanned, names + names[2:])
            # A past journal that changed after all (a restored copy, a late append) is read again.
            await self.stateless(99, (TODAY - 1) * DAY + 120)
            self.settle(self.journal(TODAY - 1), TODAY - 1)
            scanned.clear()
            self.assertEqual(await self.store.journal_usage("main", TODAY - 1), {TODAY - 1: (12, 10)})
            self.assertEqual(await self.store.journal_usage("main", TODAY - 2), {TODAY - 2: (8, 5)})
            self.assertEqual(scanned, names[1:2])
            # One pruned is gone, sums and all.
            os.unlink(self.journal(TODAY - 2))
            self.assertEqual(await self.store.journal_usage("main", TODAY - 2), {})

    async def test_a_journal_still_being_written_is_not_kept(self) -> None:
        await self.stateless(1, (TODAY - 1) * DAY + 60)         # a past day's file, touched just now
        with mock.patch.object(usage_scan, "scan_usage", wraps=usage_scan.scan_usage) as scan:
            for _ in range(2):
                self.assertEqual(await self.store.journal_usage("main", TODAY - 1), {TODAY - 1: (3, 5)})
        self.assertEqual(scan.call_count, 2)

    async def test_the_kept_sums_are_bounded(self) -> None:
        for day in range(TODAY - 5, TODAY):
            await self.stateless(day, day * DAY + 60)
            self.settle(self.journal(day), day)
        with mock.patch.object(session_reads, "MAX_USAGE_CACHE_FILES", 2):
            for day in range(TODAY - 5, TODAY):
                await self.store.journal_usage("main", day)
        memo = self.store._usage_memo
        self.assertEqual(list(memo.scans), [self.journal(TODAY - 2), self.journal(TODAY - 1)])

    async def test_transcripts_are_summed_and_kept_while_unchanged(self) -> None:
        await self.store.record_turn("main", "keyed", turn(1, NOW - DAY))
        await self.store.record_turn("main", "keyed", turn(2, NOW))
        path = os.path.join(self.tmp.name, "agents", "main", "sessions", transcripts.transcript_name("agent:main:keyed"))
        os.utime(path, (NOW - 60, NOW - 60))
        with mock.patch.object(usage_scan, "scan_usage", wraps=usage_scan.scan_usage) as scan:
            for _ in range(2):
                self.assertEqual(await self.store.transcript_usage("main", "keyed"),
                                 {TODAY - 1: (3, 5), TODAY: (3, 5)})
            self.assertEqual(scan.call_count, 1)
            self.assertEqual(await self.store.transcript_usage("main", "never"), {})

    async def test_appends_do_not_wait_for_a_scan(self) -> None:
        await self.stateless(1, NOW)
        entered, release = threading.Event(), threading.Event()
        scan = usage_scan.scan_usage

        def slow(path: str) -> usage_scan.UsageScan | None:
            entered.set()
            release.wait(10)
            return scan(path)

        with mock.patch.object(usage_scan, "scan_usage", slow):
            reading = asyncio.ensure_future(self.store.journal_usage("main", TODAY))
            try:
                self.assertTrue(await asyncio.to_thread(entered.wait, 5))
                started = time.monotonic()
                await asyncio.wait_for(self.stateless(2, NOW), 5)           # a durable append, meanwhile
                await asyncio.wait_for(self.store.record_turn("main", "keyed", turn(3, NOW)), 5)
                self.assertLess(time.monotonic() - started, 5)
                self.assertFalse(reading.done())
            finally:
                release.set()
            self.assertIn(await reading, ({TODAY: (3, 5)}, {TODAY: (6, 10)}))

    async def test_a_closed_store_refuses(self) -> None:
        await self.store.close()
        with self.assertRaises(Exception) as caught:
            await self.store.journal_usage("main", TODAY)
        self.assertEqual(type(caught.exception).__name__, "StorageError")


if __name__ == "__main__":
    unittest.main()
