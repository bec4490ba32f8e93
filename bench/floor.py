"""``make -C bench floor``: the standard library's own cost of one durable completion.

Scenario 1's second target asks for 60% of the raw asyncio ceiling. This
prints what the calls into the standard library that any implementation of
the spec must make per completion cost on this machine, measured alone (no
gateway code around them), and compares their sum with the CPU budget that
target leaves per request. Reading it: if the floor alone exceeds the budget,
the gap lies outside the gateway's own code.

Each figure is the median of several timed batches of CPU time (user +
system, all threads) per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

BODY = (b'{"model":"equabot","messages":[{"role":"user","content":'
        b'"alpha bravo charlie delta echo foxtrot golf hotel india"}]}')
REPLY = "Echo (turn 1): alpha bravo charlie delta echo foxtrot golf hotel india"
COMPLETION = {
    "id": "chatcmpl-0123456789ab1", "object": "chat.completion", "created": 1764000000,
    "model": "equabot", "system_fingerprint": "equabot-gw-0.1.0",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY, "refusal": None,
                                          "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 13, "total_tokens": 22}}
HEAD = {"sessionKey": "agent:main:openai:3f2a1b4c-1111-4222-8333-444455556666",
        "runId": "run_0123456789ab1f", "at": 1764000000.123}
LINES = [{"type": "user", **HEAD, "content": REPLY[15:]},
         {"type": "assistant", **HEAD, "content": REPLY, "model": "echo/echo",
          "finishReason": "stop", "usage": COMPLETION["usage"]}]


def cpu_us(operation: Callable[[], object], count: int, batches: int = 7) -> float:
    """Median CPU microseconds per call of ``operation``."""
    figures = []
    for _ in range(batches):
        started = time.process_time()
        for _ in range(count):
            operation()
        figures.append((time.process_time() - started) / count * 1e6)
    return statistics.median(figures)


def task_round_trip_us(count: int) -> float:
    """A task per run that waits once on a future resolved from a callback: the least a run awaits."""
    async def run_body(future: asyncio.Future[None]) -> None:
        await future

    async def main() -> float:
        loop = asyncio.get_running_loop()
        figures = []
        for _ in range(7):
            started = time.process_time()
            for _ in range(count // 64):
                futures = [loop.create_future() for _ in range(64)]
                tasks = [loop.create_task(run_body(f)) for f in futures]
                await asyncio.sleep(0)
                for future in futures:
                    loop.call_soon(future.set_result, None)
                await asyncio.gather(*tasks)
            figures.append((time.process_time() - started) / (count // 64 * 64) * 1e6)
        return statistics.median(figures)

    return asyncio.run(main())


def fsync_us(count: int) -> float:
    """CPU of one append + fdatasync of a journal-sized record (kernel time included)."""
    data = (json.dumps(LINES[0]) + "\n" + json.dumps(LINES[1]) + "\n").encode() * 20
    with tempfile.TemporaryDirectory(prefix="equabot-floor-") as directory:
        fd = os.open(os.path.join(directory, "journal.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            return cpu_us(lambda: (os.write(fd, data), os.fdatasync(fd)), count // 20, batches=5)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw-rps", type=float,
                        help="the raw asyncio server's S1 req/s (default: from results/latest.json)")
    parser.add_argument("--batch", type=float, default=20.0,
                        help="appends per group commit (one fdatasync per batch)")
    args = parser.parse_args()
    if args.raw_rps is None:
        latest = json.loads((Path(__file__).resolve().parent / "results" / "latest.json").read_text())
        args.raw_rps = latest["scenarios"]["s1"]["raw asyncio"]["median"]["requests_per_s"]
    count = 20000
    compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    rows = [
        ("parse the request body (json.loads)", cpu_us(lambda: json.loads(BODY), count)),
        ("encode the completion object (json)", cpu_us(lambda: compact(COMPLETION), count)),
        ("encode the two journal lines (json)", cpu_us(lambda: [compact(line) for line in LINES], count)),
        ("one task + one awaited future per run (asyncio)", task_round_trip_us(count)),
        (f"fdatasync of the journal, 1/{args.batch:g} per request (group commit)",
         fsync_us(count) / args.batch),
    ]
    raw_us = 1e6 / args.raw_rps
    budget = 1e6 / (0.6 * args.raw_rps)
    print(f"raw asyncio: {args.raw_rps:,.0f} req/s = {raw_us:.1f} us of CPU per request "
          f"(its socket I/O and HTTP framing)")
    print(f"60% of that throughput leaves {budget:.1f} us per request, "
          f"{budget - raw_us:.1f} us beyond what the raw server spends\n")
    for name, figure in rows:
        print(f"  {figure:6.1f} us  {name}")
    floor = sum(figure for _, figure in rows)
    print(f"  {floor:6.1f} us  standard library floor, without any gateway code")
    print(f"\nfloor + raw server's own work = {floor + raw_us:.1f} us "
          f"vs budget {budget:.1f} us: "
          f"{'over' if floor + raw_us > budget else 'within'} budget")


if __name__ == "__main__":
    main()
