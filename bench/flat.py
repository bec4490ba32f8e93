"""``make -C bench flat``: CPU per stateless request before and after N keyed sessions, in process.

Scenario 6 asks whether stateless throughput stays flat as the session store
grows. Timed throughput on this shared 2-core VM moves by ±15-30% between
two measurements a minute apart, more than the effect looked for, so this
measures the same thing without sockets or a load generator: one gateway in
this process, fed S1's stateless completion through its own HTTP server by
64 in-memory connections (as ``instructions.py`` does), and the process's
CPU time (``time.process_time``: the loop and the committer thread) per
request, in repeated batches:

1. warm-up, then ``--repeats`` batches of stateless requests (before);
2. N requests with a fresh ``x-equabot-session-key`` each (one turn per
   session), in tenths, with the CPU per new session of each tenth;
3. one second for the last index flush, then the same batches again (after);
4. a full ``gc.collect()`` timed before and after, and what the collector tracks.

With ``--callgrind`` each batch of step 1 and 3 is also counted in
instructions (valgrind, twice per side: small and large batch), which does
not drift at all; it is slow (minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import instructions

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CONNS = 64


def _keyed(i: int) -> bytes:
    body = instructions.S1_BODY
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + instructions.TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nx-equabot-session-key: flat-%d\r\n"
            b"Content-Length: %d\r\n\r\n" % (i, len(body))) + body


async def drive(gateway, count: int, make=None) -> None:
    """``count`` requests over CONNS in-memory connections, each sent when the last was answered."""
    from equabot_gw.net import server as server_mod
    loop = asyncio.get_running_loop()
    stateless = instructions._request(instructions.S1_BODY)
    make = make or (lambda i: stateless)
    state = {"sent": 0, "done": 0}
    finished = loop.create_future()

    def answered(transport) -> None:
        state["done"] += 1
        if state["done"] >= count and not finished.done():
            finished.set_result(None)
        elif state["sent"] < count:
            state["sent"] += 1
            loop.call_soon(transport.protocol.data_received, make(state["sent"]))

    for _ in range(min(CONNS, count)):
        conn = server_mod._Connection(gateway.server)
        transport = instructions._MemoryTransport(answered)
        transport.protocol = conn
        conn.connection_made(transport)
        state["sent"] += 1
        conn.data_received(make(state["sent"]))
    await finished


async def cpu_per_request(gateway, count: int, make=None) -> float:
    """CPU µs per request over one batch (the process: loop and committer thread)."""
    cpu = time.process_time()
    await drive(gateway, count, make)
    return (time.process_time() - cpu) * 1e6 / count


def gc_figures() -> dict:
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        gc.collect()
        timings.append((time.perf_counter() - began) * 1000)
    return {"full_collect_ms": round(min(timings), 2), "tracked_objects": len(gc.get_objects()),
            "gc_get_count": gc.get_count()}


async def flat(sessions: int, batch: int, repeats: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from equabot_gw import config
    from equabot_gw.gateway.app import Gateway
    with tempfile.TemporaryDirectory() as state:
        gateway = Gateway(config.from_data(instructions._config(None), env={}), Path(state),
                          host="127.0.0.1", port=0, env={})
        await gateway.start()
        try:
            await drive(gateway, 3 * batch)               # warm-up
            before = [await cpu_per_request(gateway, batch) for _ in range(repeats)]
            gc_before = gc_figures()
            tenth = max(1, sessions // 10)
            fill = []
            for start in range(0, sessions, tenth):
                n = min(tenth, sessions - start)
                fill.append(await cpu_per_request(gateway, n, lambda i, s=start: _keyed(s + i)))
            await asyncio.sleep(1.0)                       # the last index flush
            sessions_kept = len(gateway.runtime.store.list_sessions())
            after = [await cpu_per_request(gateway, batch) for _ in range(repeats)]
            gc_after = gc_figures()
        finally:
            await gateway.stop()
    med_b, med_a = statistics.median(before), statistics.median(after)
    return {"sessions": sessions_kept, "batch": batch,
            "before_us": [round(x, 1) for x in before], "after_us": [round(x, 1) for x in after],
            "before_median_us": round(med_b, 1), "after_median_us": round(med_a, 1),
            "throughput_ratio": round(med_b / med_a, 3),
            "fill_us_per_session_by_tenth": [round(x, 1) for x in fill],
            "gc_before": gc_before, "gc_after": gc_after}


def _count(sessions: int, batch: int) -> int:
    """Instructions of a whole run: fill ``sessions``, then ``batch`` stateless requests."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
               __file__, "--inner", str(sessions), str(batch)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0"}, cwd=ROOT)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].strip())
    raise SystemExit(f"valgrind gave no count:\n{done.stderr[-2000:]}")


async def _inner(sessions: int, batch: int) -> None:
    sys.path.insert(0, str(ROOT))
    from equabot_gw import config
    from equabot_gw.gateway.app import Gateway
    with tempfile.TemporaryDirectory() as state:
        gateway = Gateway(config.from_data(instructions._config(None), env={}), Path(state),
                          host="127.0.0.1", port=0, env={})
        await gateway.start()
        try:
            await drive(gateway, 500)
            if sessions:
                await drive(gateway, sessions, _keyed)
                await asyncio.sleep(1.0)
            await drive(gateway, batch)
        finally:
            await gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2_000, help="stateless requests per batch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true", help="also count instructions (slow)")
    parser.add_argument("--inner", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        asyncio.run(_inner(*args.inner))
        return
    result = asyncio.run(flat(args.sessions, args.batch, args.repeats))
    if args.callgrind:
        small, large = 1000, 3000
        for side, n in (("before", 0), ("after", args.sessions)):
            result[f"instructions_{side}"] = round((_count(n, large) - _count(n, small)) / (large - small))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
