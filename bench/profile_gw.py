"""``make -C bench profile``: where equabot_gw spends its time in scenarios 1 and 2.

For each scenario, two runs against a fresh gateway pinned to the server core:

* **cProfile** (deterministic; it slows many small calls more than few big
  ones): the gateway runs inside this file's ``serve`` command, profiling is
  switched on after the warm-up (SIGUSR1) and off after the measured load
  (SIGUSR2); garbage-collector pauses are timed with ``gc.callbacks``.
* **py-spy** (sampling at 250 Hz, little overhead): ``py-spy record`` starts
  the gateway; its collapsed stacks are summed per function.

Writes ``results/profile-s1.txt`` and ``results/profile-s2.txt``: the load
figures under each profiler, GC pauses, then the top functions by self time
and by cumulative time from both profilers.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import io
import json
import os
import pstats
import signal
import sys
import time
from pathlib import Path

import run

TOP = 40
SECONDS = 10.0
WARMUP = 2.0


# -- inside the gateway process --------------------------------------------------------

class GCTimer:
    """Counts collections and their pauses per generation while enabled."""

    def __init__(self) -> None:
        self.enabled = False
        self.started = 0.0
        self.stats = {g: {"collections": 0, "total_ms": 0.0, "max_ms": 0.0} for g in (0, 1, 2)}
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if not self.enabled:
            return
        if phase == "start":
            self.started = time.perf_counter()
            return
        if not self.started:
            return          # profiling was switched on during this collection
        pause = (time.perf_counter() - self.started) * 1000
        entry = self.stats[info["generation"]]
        entry["collections"] += 1
        entry["total_ms"] = round(entry["total_ms"] + pause, 3)
        entry["max_ms"] = round(max(entry["max_ms"], pause), 3)
        self.started = 0.0


def serve(out: str, gateway_args: list[str]) -> None:
    """Run the gateway CLI in this process; SIGUSR1/SIGUSR2 start/stop cProfile."""
    sys.path.insert(0, str(run.ROOT))
    from equabot_gw.cli import main as gateway_main
    profiler = cProfile.Profile()
    gc_timer = GCTimer()

    def start(*_: object) -> None:
        gc_timer.enabled = True
        profiler.enable()

    def stop(*_: object) -> None:
        profiler.disable()
        gc_timer.enabled = False
        # What the collector must walk at each full collection, right after the load.
        census = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        gc_timer.census = {"tracked_objects": sum(census.values()),
                           "top_types": dict(census.most_common(15))}

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    try:
        gateway_main(gateway_args)
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)
        Path(out + ".gc.json").write_text(json.dumps({"pauses": gc_timer.stats,
                                                      **getattr(gc_timer, "census", {})}))


# -- reading the profiles ------------------------------------------------------------

def cprofile_tables(path: str) -> str:
    parts = []
    for key, title in (("tottime", "self time"), ("cumulative", "cumulative time")):
        buffer = io.StringIO()
        stats = pstats.Stats(path, stream=buffer)
        stats.strip_dirs().sort_stats(key).print_stats(TOP)
        text = buffer.getvalue()
        body = text[text.find("   ncalls"):]
        parts.append(f"## cProfile: top {TOP} by {title}\n\n{body.rstrip()}\n")
    return "\n".join(parts)


def pyspy_tables(path: str) -> str:
    """Per-function self and cumulative shares of the samples in a py-spy raw file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    parts = []
    for counter, title in ((own, "self"), (total, "cumulative (frame anywhere on the stack)")):
        rows = [f"{100 * n / samples:6.2f}%  {n:7d}  {frame}"
                for frame, n in counter.most_common(TOP)]
        parts.append(f"## py-spy: top {TOP} by {title} — {samples} active samples\n\n"
                     + "      %  samples  function (file:line)\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


# -- driving one scenario -------------------------------------------------------------

def load(scenario: str, server: run.Server, seconds: float) -> dict:
    if scenario == "s1":
        return run.wrk(server, seconds, 64)
    return run.loadgen("stream", server.port, "stream", conns=16, duration=seconds, warmup=0,
                       expect_events=run.workloads.sse_events(run.workloads.STREAM_WORDS))


def with_cprofile(scenario: str) -> tuple[dict, dict, str]:
    out = str(run.RESULTS / "tmp" / f"profile-{scenario}.prof")
    server = run.Server(run.GW)
    server.wrapper = [run.PY, str(run.BENCH / "profile_gw.py"), "serve", "--out", out, "--"]
    server.start()
    try:
        load(scenario, server, WARMUP)
        server.proc.send_signal(signal.SIGUSR1)
        figures = load(scenario, server, SECONDS)
        server.proc.send_signal(signal.SIGUSR2)
    finally:
        server.stop()
    return figures, json.loads(Path(out + ".gc.json").read_text()), cprofile_tables(out)


def with_pyspy(scenario: str) -> tuple[dict, str]:
    out = str(run.RESULTS / "tmp" / f"profile-{scenario}.pyspy")
    server = run.Server(run.GW)
    server.wrapper = [str(run.BENCH / ".venv" / "bin" / "py-spy"), "record", "-r", "250", "-F",
                      "-f", "raw", "-o", out, "--"]
    server.start()
    gateway = None
    try:
        load(scenario, server, WARMUP)
        figures = load(scenario, server, SECONDS)
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
        gateway = int(children.split()[0])
    finally:
        if gateway is not None:
            os.kill(gateway, signal.SIGTERM)
            server.proc.wait(30)
        server.stop()
    return figures, pyspy_tables(out)


def plain(scenario: str) -> dict:
    server = run.Server(run.GW).start()
    try:
        load(scenario, server, WARMUP)
        return load(scenario, server, SECONDS)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="all", choices=("all", "serve"))
    parser.add_argument("--out")
    parser.add_argument("--only", default="s1,s2")
    own = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    args = parser.parse_args(own)
    if args.command == "serve":
        # After "--" comes the gateway's own command: python -m equabot_gw ARGS.
        serve(args.out, sys.argv[sys.argv.index("equabot_gw") + 1:])
        return
    (run.RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    (run.RESULTS / "tmp").mkdir(parents=True, exist_ok=True)
    titles = {"s1": "S1, non-streaming echo completion, wrk -t1 -c64",
              "s2": "S2, streamed 256-word echo, 16 connections"}
    for scenario in args.only.split(","):
        base = plain(scenario)
        figures, gc_stats, cprof = with_cprofile(scenario)
        spy_figures, spy = with_pyspy(scenario)
        for key in ("server_cpu", "requests_per_cpu_s", "server_rss_mb"):
            spy_figures.pop(key, None)          # measured on py-spy's process, not the gateway
        head = (f"# equabot_gw profile — {titles[scenario]}, {SECONDS:g} s after {WARMUP:g} s "
                f"warm-up\n\nwithout profiler: {json.dumps(base)}\nunder cProfile:   "
                f"{json.dumps(figures)}\nunder py-spy:     {json.dumps(spy_figures)}\n\n"
                f"GC during the cProfile run (pauses in ms per generation; objects the "
                f"collector tracks when the load ends):\n{json.dumps(gc_stats)}\n")
        path = run.RESULTS / f"profile-{scenario}.txt"
        path.write_text(head + "\n" + spy + "\n" + cprof)
        run.say(f"wrote {path}")


if __name__ == "__main__":
    main()
