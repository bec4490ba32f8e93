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
3. the last index rewrite (waited for), then the same batches again (after);
4. a full ``gc.collect()`` timed before and after, and what the collector tracks.

With ``--callgrind`` the same before/after is also counted in instructions,
which do not drift: one gateway runs under ``valgrind --tool=callgrind
--instr-atstart=no``, so warm-up and the fill run uninstrumented (~5x
slower than native, not ~50x); around each measured batch (a small and a
large one per side, so that their difference removes the switching) this
process turns instrumentation on with ``callgrind_control`` and dumps the
count when the batch is done. Instructions per stateless request =
(large − small) / (its request difference), before and after; each batch
starts after a ``gc.collect()``, so no full collection (whose cost grows
with what stays alive, see ``gc_figures``) falls into one batch and not the
other. ~5 min.
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
    from equabot_gw.net import connection as connection_mod
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
        conn = connection_mod.Connection(gateway.server)
        transport = instructions._MemoryTransport(answered)
        transport.protocol = conn
        conn.connection_made(transport)
        state["sent"] += 1
        conn.data_received(make(state["sent"]))
    await finished


async def index_settled(gateway, timeout: float = 60.0) -> None:
    """Wait until no session index is dirty, due to be rewritten or being written.

    The store paces index rewrites by their cost, so the last one after a
    fill can come seconds later (many more under valgrind, where it is
    slower): measured inside an "after" batch, that one-off rewrite of
    10,000 entries would pass for a per-request cost.
    """
    store = gateway.runtime.store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agents = store._agents.values()
        if not any(a.dirty or a.flush_handle is not None for a in agents) and not store.pending_commits:
            # A job queued now runs after a rewrite already handed to the writer thread.
            await store._committer.job("waiting for the index rewrite", lambda committer: None)
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"the session index was still being rewritten after {timeout:g} s")


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
            await index_settled(gateway)                   # the last index rewrite
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


SMALL, LARGE = 400, 1400      # the two batches per side under callgrind


async def _inner(sessions: int, signals: str) -> None:
    """Under callgrind: warm up, then per side a small and a large batch, each announced.

    Before each batch it prints ``ready``, waits for ``<signals>.go``, runs the
    batch, prints ``done`` and waits for ``<signals>.next`` (sleeping, so the
    wait costs nearly nothing while instrumentation is on).
    """
    sys.path.insert(0, str(ROOT))
    from equabot_gw import config
    from equabot_gw.gateway.app import Gateway

    def wait_for(name: str) -> None:
        while not os.path.exists(name):
            time.sleep(0.002)
        os.unlink(name)

    with tempfile.TemporaryDirectory() as state:
        gateway = Gateway(config.from_data(instructions._config(None), env={}), Path(state),
                          host="127.0.0.1", port=0, env={})
        await gateway.start()
        try:
            await drive(gateway, 3000)
            for side in ("before", "after"):
                if side == "after":
                    await drive(gateway, sessions, _keyed)
                    await index_settled(gateway)          # the last index rewrite
                for count in (SMALL, LARGE):
                    # Each batch starts from an empty young generation and no
                    # pending full collection, so where a collection happens
                    # to fall does not decide the difference.
                    gc.collect()
                    print("ready", flush=True)
                    wait_for(signals + ".go")
                    await drive(gateway, count)
                    print("done", flush=True)
                    wait_for(signals + ".next")
        finally:
            await gateway.stop()


def counted(sessions: int, keep: str | None = None) -> dict:
    """Instructions per stateless request before and after ``sessions`` keyed sessions.

    ``keep``: a directory to copy callgrind's four dumps to (before-small,
    before-large, after-small, after-large), for ``callgrind_annotate``.
    """
    with tempfile.TemporaryDirectory() as scratch:
        signals, out = os.path.join(scratch, "signal"), os.path.join(scratch, "cg.out")
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={out}", os.path.realpath(sys.executable),
                   __file__, "--inner", str(sessions), signals]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, cwd=ROOT)
        pid = str(child.pid)

        def control(*args: str) -> None:
            subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)

        for line in child.stdout:                          # type: ignore[union-attr]
            if line.startswith("ready"):
                control("-z")
                control("-i", "on")
                Path(signals + ".go").touch()
            elif line.startswith("done"):
                control("-d")
                control("-i", "off")
                Path(signals + ".next").touch()
        if child.wait():
            raise SystemExit(f"the gateway under callgrind exited with {child.returncode}")
        dumps = sorted((p for p in Path(scratch).glob("cg.out.*")), key=lambda p: int(p.suffix[1:]))
        totals = []
        for dump in dumps:
            line = next(l for l in dump.read_text().splitlines() if l.startswith("totals:"))
            totals.append(int(line.split()[1]))
            if keep:
                os.makedirs(keep, exist_ok=True)
                os.replace(dump, os.path.join(keep, f"callgrind.{len(totals)}"))
    if len(totals) != 4:
        raise SystemExit(f"expected 4 callgrind dumps, got {len(totals)}")
    per = [(totals[1] - totals[0]) / (LARGE - SMALL), (totals[3] - totals[2]) / (LARGE - SMALL)]
    whole = [totals[1] / LARGE, totals[3] / LARGE]
    return {"instructions_before": round(per[0]), "instructions_after": round(per[1]),
            "instructions_ratio": round(per[0] / per[1], 3),
            "large_batch_per_request": [round(x) for x in whole],
            "large_batch_ratio": round(whole[0] / whole[1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2_000, help="stateless requests per batch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true", help="also count instructions (slow)")
    parser.add_argument("--only-callgrind", action="store_true", help="count instructions only")
    parser.add_argument("--keep", metavar="DIR", help="keep callgrind's dumps there")
    parser.add_argument("--inner", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        asyncio.run(_inner(int(args.inner[0]), args.inner[1]))
        return
    result = {} if args.only_callgrind else asyncio.run(flat(args.sessions, args.batch, args.repeats))
    if args.callgrind or args.only_callgrind:
        result.update(counted(args.sessions, args.keep))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
