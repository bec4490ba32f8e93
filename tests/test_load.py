"""Load: slow clients, 1,000 concurrent streams, 1,000 clients that leave mid-stream (or while queued).

Time is scaled: the header timeout is 1 s instead of 10, slow
clients send a byte every 50-100 ms instead of every second, and the bounds
asserted here are sanity bounds with room; ``make bench`` measures the tight
figures. Clients are raw asyncio sockets. The slow-client swarm runs in a
process of its own (``swarm_main``) so that its 7,500 writes a second do not
share an event loop or a GIL with the requests whose latency is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import time
import unittest
from collections import Counter
from typing import Any

from equabot_gw.agents import transcripts
from equabot_gw.gateway.client import ControlClient
from tests.support import (ROOT, TOKEN, GatewayProcess, base_config, post_closing, post_head, running_gateway,
                           split_responses)
from tests.test_faults import (
    FakeUpstream, eventually, raise_nofile_limit, send_stream, sessions_list, sse_events, stream_outcome, transcript,
)

HEADER_TIMEOUT = 1.0
SLOW_CLIENTS = 500
SILENT_CLIENTS = 50                    # connect and send nothing: closed at the same timeout, without a 408
SLOW_GAP = (0.05, 0.1)                 # seconds between two bytes of a slow client
ADDED_LATENCY_BOUND = 0.25             # slow clients add under 250 ms
STREAMS = 1000
LEAVERS = 1000


def run(coro: Any) -> Any:
    # Not IsolatedAsyncioTestCase: its event loop runs in debug mode, which
    # records a traceback for every future and task; 1,000 streams would crawl.
    return asyncio.run(coro)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    [(status, _, body)] = split_responses(raw)
    return status, body


async def health_latencies(port: int, until: float) -> list[float]:
    """Seconds taken by sequential GET /health on fresh connections, until ``until`` (monotonic)."""
    out = []
    while time.monotonic() < until:
        started = time.perf_counter()
        status, _ = await http_get(port, "/health")
        out.append(time.perf_counter() - started)
        if status != 200:
            raise AssertionError(f"/health answered {status}")
    return out


async def http_connections(client: ControlClient) -> int:
    """The gateway's open HTTP connections (WS `status`: connections.http), this control one included."""
    return (await client.request("status", {}))["connections"]["http"]


# -- the slow-client swarm (a child process) ---------------------------------------------

SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 1000


class _Recorder(asyncio.Protocol):
    """A client socket that keeps every byte received and how the connection ended.

    Not a StreamReader: that one raises a reset before handing over the bytes that
    came just ahead of it, and a slow client's last byte crossing the server's close
    gets exactly that (the server's kernel answers a byte to a closed socket with RST).
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result("eof" if exc is None else type(exc).__name__)


async def _slow_client(port: int, rng: random.Random, connected: asyncio.Event,
                       count: list[int], n: int, silent: bool) -> tuple[str, float, int, str]:
    """One byte now, then one every 50-100 ms until the server answers or closes (``silent``: no byte at all).

    Returns the first line received, seconds from the first byte (or from
    before the connect) to the close, bytes sent, and how the connection ended.
    """
    # The server's clock starts at its accept (silent) or at the first byte: never before these.
    first = time.monotonic()
    transport, client = await asyncio.get_running_loop().create_connection(_Recorder, "127.0.0.1", port)
    sent = 0
    if not silent:
        transport.write(SLOW_HEAD[:1])
        first = time.monotonic()
        sent = 1
    count[0] += 1
    if count[0] == n:
        connected.set()
    gaps = [rng.uniform(*SLOW_GAP) for _ in range(len(SLOW_HEAD))]

    async def trickle() -> None:
        nonlocal sent
        for i in range(1, len(SLOW_HEAD)):
            await asyncio.sleep(gaps[i])
            if client.received or transport.is_closing():
                return
            transport.write(SLOW_HEAD[i:i + 1])
            sent += 1

    trickler = asyncio.create_task(trickle()) if not silent else None
    try:
        how = await asyncio.wait_for(asyncio.shield(client.closed), HEADER_TIMEOUT + 5)
    except asyncio.TimeoutError:
        how = "still open"
    elapsed = time.monotonic() - first
    if trickler is not None:
        trickler.cancel()
    transport.abort()
    return client.received.split(b"\r\n", 1)[0].decode("latin-1"), elapsed, sent, how


async def _swarm(port: int, n: int, silent: int, seed: int) -> None:
    rng = random.Random(seed)
    connected = asyncio.Event()
    count = [0]
    tasks = [asyncio.create_task(_slow_client(port, random.Random(rng.random()), connected, count, n + silent,
                                              silent=i >= n))
             for i in range(n + silent)]
    await asyncio.wait_for(connected.wait(), 10)
    print(json.dumps({"connected": n + silent}), flush=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"results": [list(r) if isinstance(r, tuple) else ["", 0.0, 0, repr(r)] for r in results]}),
          flush=True)


def swarm_main() -> None:
    """``python -c 'from tests.test_load import swarm_main; swarm_main()' PORT SLOW SILENT SEED``"""
    raise_nofile_limit()
    port, n, silent, seed = map(int, sys.argv[1:5])
    asyncio.run(_swarm(port, n, silent, seed))


class SlowClientsTest(unittest.TestCase):
    def setUp(self) -> None:
        raise_nofile_limit(2 * (SLOW_CLIENTS + SILENT_CLIENTS))
        self.gw = GatewayProcess(base_config(http={"headerTimeoutSeconds": HEADER_TIMEOUT}),
                                 extra_args=("--log-level", "warning")).start()
        self.addCleanup(self.gw.tmp.cleanup)
        self.addCleanup(self.gw.stop)

    def test_slow_clients_do_not_delay_others_and_are_cut_off_at_the_header_timeout(self) -> None:
        run(self._slow_clients())

    async def _slow_clients(self) -> None:
        port = self.gw.port
        control = await ControlClient.open(self.gw.url, TOKEN)
        try:
            baseline_conns = await http_connections(control)
            before = await health_latencies(port, time.monotonic() + 0.4)
            swarm = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from tests.test_load import swarm_main; swarm_main()",
                str(port), str(SLOW_CLIENTS), str(SILENT_CLIENTS), "6", cwd=ROOT, stdout=subprocess.PIPE)
            try:
                line = await asyncio.wait_for(swarm.stdout.readline(), 15)
                connected_at = time.monotonic()
                self.assertEqual(json.loads(line), {"connected": SLOW_CLIENTS + SILENT_CLIENTS})
                open_during = await http_connections(control)
                # Measured while all 500 trickle, before the first of them times out.
                during = await health_latencies(port, connected_at + HEADER_TIMEOUT * 0.7)
                results = json.loads(await asyncio.wait_for(swarm.stdout.readline(), HEADER_TIMEOUT + 15))["results"]
            finally:
                if swarm.returncode is None:
                    await asyncio.wait_for(swarm.wait(), 10)
            after = await eventually(lambda: http_connections(control), lambda n: n == baseline_conns, 3.0)
        finally:
            await control.close()

        added = statistics.median(during) - statistics.median(before)
        self.report = {"p50_before_ms": 1000 * statistics.median(before),
                       "p50_during_ms": 1000 * statistics.median(during),
                       "max_during_ms": 1000 * max(during), "samples": (len(before), len(during))}
        self.assertGreaterEqual(len(during), 10, self.report)
        self.assertLess(added, ADDED_LATENCY_BOUND, self.report)
        total = SLOW_CLIENTS + SILENT_CLIENTS
        # They were all there (give or take the last few accepts).
        self.assertGreaterEqual(open_during, baseline_conns + total - 5)
        slow, silent = results[:SLOW_CLIENTS], results[SLOW_CLIENTS:]
        self.assertEqual(Counter(status for status, *_ in slow), {"HTTP/1.1 408 Request Timeout": SLOW_CLIENTS})
        self.assertEqual(Counter(status for status, *_ in silent), {"": SILENT_CLIENTS})  # nothing to answer
        # Then closed: EOF, or a reset when a byte crossed the server's close (after the 408 arrived).
        self.assertLessEqual({how for *_, how in results}, {"eof", "ConnectionResetError"})
        elapsed = [e for _, e, _, _ in results]
        self.assertGreater(min(elapsed), HEADER_TIMEOUT - 0.05)
        self.assertLess(max(elapsed), HEADER_TIMEOUT + 1.0)
        self.assertGreater(min(sent for _, _, sent, _ in slow), 5)    # they kept trickling meanwhile
        self.assertEqual(after, baseline_conns)
        print(f"\n  slow clients: p50 GET /health {self.report['p50_before_ms']:.2f} ms before, "
              f"{self.report['p50_during_ms']:.2f} ms during {SLOW_CLIENTS} slow + {SILENT_CLIENTS} silent "
              f"connections (max {self.report['max_during_ms']:.1f} ms)", file=sys.stderr)


# -- 1,000 concurrent streams --------------------------------------------------------

def load_config() -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"defaults": {"maxConcurrent": 1024, "maxQueued": 1024},
                      "list": [{"id": "main", "default": True, "model": "slow/echo"}]}
    data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": 20}}}
    return data


async def stream_chat(port: int, message: str, key: str) -> tuple[int, bytes]:
    body = json.dumps({"model": "equabot", "stream": True,
                       "messages": [{"role": "user", "content": message}]}).encode()
    status, headers, payload, raw = await post_closing(
        port, "/v1/chat/completions", body, headers=f"x-equabot-session-key: {key}\r\n", timeout=60)
    if headers.get("transfer-encoding") != "chunked" or not raw.endswith(b"0\r\n\r\n"):
        raise AssertionError(f"stream {key}: not a complete chunked body: {raw[-40:]!r}")
    return status, payload


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


class ConcurrentStreamsTest(unittest.TestCase):
    def setUp(self) -> None:
        raise_nofile_limit(2 * STREAMS + 512)    # the gateway also keeps up to 256 transcripts open
        self.gw = GatewayProcess(load_config(), extra_args=("--log-level", "warning")).start()
        self.addCleanup(self.gw.tmp.cleanup)
        self.addCleanup(self.gw.stop)

    def test_1000_concurrent_streams_complete_with_complete_transcripts(self) -> None:
        messages = {f"load-{i}": f"stream {i} alpha beta gamma" for i in range(STREAMS)}
        started = time.monotonic()
        results = run(self._streams(messages))
        elapsed = time.monotonic() - started
        self.report = {"seconds": elapsed, "peak_rss_mib": peak_rss_kib(self.gw.proc.pid) / 1024}
        failures = [(key, r) for key, r in zip(messages, results) if isinstance(r, BaseException)]
        self.assertEqual(failures, [])
        for (key, message), (status, payload) in zip(messages.items(), results):
            self.assertEqual(status, 200, (key, payload[:200]))
            self.assertEqual(stream_outcome(sse_events(payload)), (f"Echo (turn 1): {message}", "stop", None))
        # Every stream was done only once its turn was on disk: the transcripts are complete now.
        for key, message in messages.items():
            lines = transcript(self.gw.state_dir, "main", key)
            self.assertEqual([line["type"] for line in lines], ["session", "user", "assistant"], key)
            self.assertEqual((lines[1]["content"], lines[2]["content"], lines[2]["finishReason"]),
                             (message, f"Echo (turn 1): {message}", "stop"))
            self.assertEqual(lines[1]["runId"], lines[2]["runId"])
        sessions_dir = self.gw.state_dir / "agents" / "main" / "sessions"
        self.assertEqual(len(list(sessions_dir.glob("*.jsonl"))), STREAMS)
        listed = run(sessions_list(self.gw))
        self.assertEqual({s["key"]: s["turns"] for s in listed}, {f"agent:main:{key}": 1 for key in messages})
        self.assertLess(self.report["peak_rss_mib"], 512, self.report)      # sanity: no per-stream blowup
        self.assertEqual(self.gw.stop(), 0)
        print(f"\n  {STREAMS:,} concurrent streams: {elapsed:.2f} s, gateway peak RSS "
              f"{self.report['peak_rss_mib']:.0f} MiB", file=sys.stderr)

    async def _streams(self, messages: dict[str, str]) -> list[Any]:
        return await asyncio.gather(*(stream_chat(self.gw.port, message, key) for key, message in messages.items()),
                                    return_exceptions=True)


# -- 1,000 clients that leave mid-stream -----------------------------------------------

LONG_MESSAGE = " ".join(["word"] * 1000)        # at 250 ms a word, a stream that outlives the test


async def endless_upstream(reader, writer, body) -> None:
    await send_stream(writer, ["Up"] + [" word"] * 1000, gap=0.25, reader=reader)


def leaver_config(up: FakeUpstream) -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"defaults": {"maxConcurrent": 1024, "maxQueued": 1024},
                      "list": [{"id": "main", "default": True},
                               {"id": "slow", "model": "slow/echo"},
                               {"id": "up", "model": "up/gpt-test"}]}
    data["models"] = {"providers": {
        "slow": {"api": "echo", "delayMs": 250},
        "up": {"api": "openai-completions", "baseUrl": up.base_url, "apiKey": "sk-load", "timeoutSeconds": 30}}}
    return data


def open_fds() -> tuple[int, int]:
    """(sockets, other fds) of this process, from /proc/self/fd."""
    sockets = other = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue                # the fd of the listdir itself
        if target.startswith("socket:"):
            sockets += 1
        else:
            other += 1
    return sockets, other


async def leave_mid_stream(port: int, agent: str, key: str, streaming: list[int], all_in: asyncio.Event,
                           go: asyncio.Event, n: int, rst: bool) -> bytes:
    """Start a stream, read until its first word, count in (``all_in`` once ``n`` did), await ``go``, vanish.

    Half leave with a reset (SO_LINGER 0), half with a FIN.
    """
    body = json.dumps({"model": f"equabot:{agent}", "stream": True,
                       "messages": [{"role": "user", "content": LONG_MESSAGE}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(post_head("/v1/chat/completions", body, headers=f"x-equabot-session-key: {key}\r\n"))
        received = b""
        while b'"content":"' + (b"Echo" if agent == "slow" else b"Up") not in received:
            chunk = await reader.read(65536)
            if not chunk:
                raise AssertionError(f"{key}: closed before the first word: {received[-200:]!r}")
            received += chunk
        streaming[0] += 1
        if streaming[0] == n:
            all_in.set()
        await go.wait()
        return received
    finally:
        if rst:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack("ii", 1, 0))
        writer.transport.abort() if rst else writer.close()


class LeaveMidStreamTest(unittest.TestCase):
    def setUp(self) -> None:
        raise_nofile_limit(3 * LEAVERS + 512)    # clients, their server ends, half as many upstream pairs

    def test_1000_clients_leaving_mid_stream_leave_nothing_behind(self) -> None:
        run(self._leavers())

    async def _leavers(self) -> None:
        async with FakeUpstream(endless_upstream) as up, running_gateway(leaver_config(up)) as gw:
            port = gw.server.port
            # Warm up the echo path (committer thread, first transcript), then take the baseline.
            warm = await stream_chat(port, "warm up", "warm")
            self.assertEqual(warm[0], 200)
            await asyncio.sleep(0.05)
            tasks_before = len(asyncio.all_tasks())
            sockets_before, files_before = open_fds()
            self.assertEqual(up.open, 0)

            streaming, all_in, go = [0], asyncio.Event(), asyncio.Event()
            agents = ["slow" if i % 2 == 0 else "up" for i in range(LEAVERS)]
            clients = asyncio.gather(*(leave_mid_stream(port, agent, f"dc-{i}", streaming, all_in, go, LEAVERS,
                                                        rst=i % 4 < 2) for i, agent in enumerate(agents)),
                                     return_exceptions=True)
            try:
                await asyncio.wait_for(asyncio.shield(all_in.wait()), 30)
            finally:
                at_peak = (len(gw.runtime.active), up.open)
                go.set()
                results = await asyncio.wait_for(clients, 10)
            self.assertEqual([r for r in results if isinstance(r, BaseException)][:3], [])
            left_at = time.monotonic()

            runtime, store = gw.runtime, gw.runtime.store
            provider = runtime.providers["up"]

            async def leftovers() -> dict[str, int]:
                return {"runs": len(runtime.active), "pending commits": store.pending_commits,
                        "upstream connections": up.open, "pooled": provider._client.idle_connections,
                        "tasks": len(asyncio.all_tasks()) - tasks_before,
                        "sockets": open_fds()[0] - sockets_before,
                        "http connections": gw.server.connection_count}
            left = await eventually(leftovers, lambda d: not any(d.values()), 10.0)
            cleaned_in = time.monotonic() - left_at
            self.assertEqual(at_peak, (LEAVERS, LEAVERS // 2))     # all were streaming at once
            self.assertEqual(left, dict.fromkeys(left, 0))
            self.assertLess(cleaned_in, 5.0)
            # Regular files: at most the committer's cache of append fds (LRU, bounded).
            self.assertLessEqual(open_fds()[1] - files_before, transcripts.MAX_OPEN_FILES)

            for i, agent in enumerate(agents):
                lines = transcript(gw.state_dir, agent, f"dc-{i}")
                self.assertEqual([line["type"] for line in lines], ["session", "user", "aborted"], f"dc-{i}")
                self.assertEqual(lines[1]["runId"], lines[2]["runId"])
                self.assertEqual(lines[2]["reason"], "client disconnected")
                self.assertTrue(lines[2]["content"].startswith("Echo" if agent == "slow" else "Up"),
                                lines[2]["content"][:80])
                self.assertLess(len(lines[2]["content"]), len(LONG_MESSAGE))
            for agent in ("slow", "up"):     # no file holds a torn or foreign line
                for path in (gw.state_dir / "agents" / agent / "sessions").glob("*.jsonl"):
                    self.assertTrue(path.read_bytes().endswith(b"\n"), path.name)
                    for line in path.read_bytes().splitlines():
                        self.assertIsInstance(json.loads(line), dict)
            self.report = {"cleaned_in_s": cleaned_in}


QUEUE_SLOTS = 4
QUEUED = 196


def queue_config() -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"defaults": {"maxConcurrent": QUEUE_SLOTS, "maxQueued": 1024},
                      "list": [{"id": "main", "default": True, "model": "slow/echo"}]}
    data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": 250}}}
    return data


async def start_stream(port: int, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    body = json.dumps({"model": "equabot", "stream": True,
                       "messages": [{"role": "user", "content": LONG_MESSAGE}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post_head("/v1/chat/completions", body, headers=f"x-equabot-session-key: {key}\r\n"))
    return reader, writer


class LeaveWhileQueuedTest(unittest.TestCase):
    """A client gone while its run waits for a slot drops the run at once."""

    def setUp(self) -> None:
        raise_nofile_limit(2 * (QUEUE_SLOTS + QUEUED) + 512)

    # Once Agent.acquire raised ValueError when release() had already dropped its cancelled
    # waiter: queued runs aborted together with running ones never resolved (run.wait() hung).
    def test_runs_queued_behind_busy_slots_are_dropped_when_their_clients_leave(self) -> None:
        run(self._queued_leavers())

    async def _queued_leavers(self) -> None:
        async with running_gateway(queue_config()) as gw:
            port, runtime, agent = gw.server.port, gw.runtime, gw.runtime.agents["main"]

            async def counts() -> tuple[int, int]:
                return agent.active, agent.waiting
            tasks_before = len(asyncio.all_tasks())
            clients = [await start_stream(port, f"busy-{i}") for i in range(QUEUE_SLOTS)]
            await eventually(counts, lambda c: c == (QUEUE_SLOTS, 0), 5.0)
            clients += [await start_stream(port, f"queued-{i}") for i in range(QUEUED)]
            self.assertEqual(await eventually(counts, lambda c: c == (QUEUE_SLOTS, QUEUED), 5.0),
                             (QUEUE_SLOTS, QUEUED))
            for _, writer in clients:           # the busy ones first: their slots free up meanwhile
                writer.close()

            async def leftovers() -> dict[str, int]:
                return {"runs": len(runtime.active), "active": agent.active, "waiting": agent.waiting,
                        "pending commits": runtime.store.pending_commits,
                        "tasks": len(asyncio.all_tasks()) - tasks_before}
            left = await eventually(leftovers, lambda d: not any(d.values()), 5.0)
            self.assertEqual(left, dict.fromkeys(left, 0))
            runs = list(runtime._finished.values())
            self.assertEqual(len(runs), QUEUE_SLOTS + QUEUED)
            # Every run ended with an outcome (an escaped exception leaves none): each was aborted.
            outcomes = Counter(type(r.error).__name__ for r in runs if r.result is None)
            self.assertEqual(outcomes, {"RunAborted": QUEUE_SLOTS + QUEUED})
            self.assertEqual(Counter((r.status, r.done) for r in runs), {("aborted", True): QUEUE_SLOTS + QUEUED})
            for i in range(QUEUE_SLOTS):       # they streamed: their partial replies are recorded
                lines = transcript(gw.state_dir, "main", f"busy-{i}")
                self.assertEqual([line["type"] for line in lines], ["session", "user", "aborted"])
            # Dropped before they produced anything: no transcript at all.
            self.assertEqual(list((gw.state_dir / "agents" / "main" / "sessions").glob("*queued-*")), [])
            # The agent serves again at full width.
            status, payload = await stream_chat(port, "after", "after-the-queue")
            self.assertEqual(stream_outcome(sse_events(payload))[1], "stop")


if __name__ == "__main__":
    unittest.main()
