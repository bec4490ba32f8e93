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

``--only s6`` profiles scenario 6 instead: one gateway, S1's stateless load
profiled before and after N keyed sessions (cProfile switched on for each
window, py-spy attached to the gateway for each window), with the state the
store keeps (index, history cache, lanes, open files, finished runs), index
flushes and the collector's figures at the end of each window, and the
functions whose time per request grew the most. Writes ``results/profile-s6.txt``.
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
import subprocess
import sys
import time
from pathlib import Path

import harness as run

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


class StoreWatch:
    """Counts and times the session store's index flushes (snapshot on the loop, write in the thread)."""

    def __init__(self) -> None:
        from equabot_gw.agents import sessions, transcripts
        self.flushes = 0
        self.snapshot_ms = 0.0          # _flush_index on the loop: the dict copy and the hand-off
        self.writes = 0
        self.write_ms = 0.0             # write_index in the committer thread: JSON, write, fsync
        self.write_cpu_ms = 0.0         # of which CPU (the JSON encoding holds the GIL)
        self.entries_written = 0
        flush, write = sessions.SessionStore._flush_index, transcripts.write_index

        def timed_flush(store, agent, wait=False):
            began = time.perf_counter()
            try:
                return flush(store, agent, wait)
            finally:
                self.flushes += 1
                self.snapshot_ms += (time.perf_counter() - began) * 1000

        def timed_write(sessions_dir, snapshot, committer):
            began, cpu = time.perf_counter(), time.thread_time()
            try:
                return write(sessions_dir, snapshot, committer)
            finally:
                self.writes += 1
                self.entries_written += len(snapshot)
                self.write_ms += (time.perf_counter() - began) * 1000
                self.write_cpu_ms += (time.thread_time() - cpu) * 1000

        sessions.SessionStore._flush_index = timed_flush
        transcripts.write_index = timed_write

    def figures(self) -> dict:
        return {"index_flushes": self.flushes, "flush_on_loop_ms": round(self.snapshot_ms, 1),
                "index_writes": self.writes, "index_write_ms": round(self.write_ms, 1),
                "index_write_cpu_ms": round(self.write_cpu_ms, 1),
                "index_entries_written": self.entries_written}

    def reset(self) -> None:
        self.flushes = self.writes = self.entries_written = 0
        self.snapshot_ms = self.write_ms = self.write_cpu_ms = 0.0


def state_census() -> dict:
    """What the gateway keeps per session and per run, found among the live objects."""
    found: dict = {}
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name == "SessionStore":
            found["store"] = {
                "agents": {a: {"index": len(agent.index), "creating": len(agent.creating),
                               "forgetting": len(agent.forgetting), "dirty": agent.dirty}
                           for a, agent in obj._agents.items()},
                "history_cache": len(obj._cache), "lanes": len(obj._lanes),
                "open_append_fds": len(obj._committer._fds) if obj._committer else None}
        elif name == "Runtime" and hasattr(obj, "_finished"):
            found["runtime"] = {"active": len(obj.active), "finished_records": len(obj._finished),
                                "idempotency_keys": len(obj.keys)}
    return found


def serve(out: str, gateway_args: list[str]) -> None:
    """Run the gateway CLI in this process; SIGUSR1/SIGUSR2 start/stop cProfile.

    Each SIGUSR2 writes one window: ``out.<n>`` (pstats) and ``out.<n>.gc.json``
    (collector pauses and figures, tracked objects by type, the store's state,
    index flushes in that window), n = 1, 2, ...
    """
    sys.path.insert(0, str(run.ROOT))
    from equabot_gw.cli import main as gateway_main
    profiler = cProfile.Profile()
    gc_timer = GCTimer()
    watch = StoreWatch()
    window = 0

    def start(*_: object) -> None:
        nonlocal profiler
        profiler = cProfile.Profile()
        gc_timer.stats = {g: {"collections": 0, "total_ms": 0.0, "max_ms": 0.0} for g in (0, 1, 2)}
        watch.reset()
        gc_timer.enabled = True
        profiler.enable()

    def stop(*_: object) -> None:
        nonlocal window
        profiler.disable()
        gc_timer.enabled = False
        window += 1
        profiler.dump_stats(f"{out}.{window}")
        # What the collector must walk at each full collection, right after the load.
        census = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        Path(f"{out}.{window}.gc.json").write_text(json.dumps({
            "pauses": gc_timer.stats, "tracked_objects": sum(census.values()),
            "tracked_by_generation": [len(gc.get_objects(g)) for g in (0, 1, 2)],
            "gc_get_count": gc.get_count(), "gc_get_stats": gc.get_stats(),
            "gc_threshold": gc.get_threshold(), "top_types": dict(census.most_common(15)),
            "state": state_census(), **watch.figures()}))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    try:
        gateway_main(gateway_args)
    except SystemExit:
        pass
    finally:
        profiler.disable()


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
        _wait_for(Path(out + ".1.gc.json"))
    finally:
        server.stop()
    return figures, json.loads(Path(out + ".1.gc.json").read_text()), cprofile_tables(out + ".1")


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    """Until the gateway process has written ``path`` (a window's figures)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


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


# -- scenario 6: before and after N keyed sessions ----------------------------------------

def _per_request(path: str, requests: int) -> dict[str, tuple[float, float, int]]:
    """Per function (file:line(name)): self and cumulative µs per request, and calls."""
    stats = pstats.Stats(path).stats        # type: ignore[attr-defined]
    out = {}
    for (file, line, name), (_, calls, self_s, cum_s, _) in stats.items():
        where = f"{os.path.basename(file)}:{line}({name})"
        out[where] = (self_s * 1e6 / requests, cum_s * 1e6 / requests, calls)
    return out


def _pyspy_self(path: str) -> tuple[collections.Counter, int]:
    own: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            own[stack.split(";")[-1]] += int(count)
            samples += int(count)
    return own, samples


def profile_s6(sessions: int) -> Path:
    """Scenario 6 under the microscope: the same gateway before and after ``sessions`` sessions."""
    out = run.RESULTS / "tmp" / "profile-s6.prof"
    for stale in out.parent.glob("profile-s6*"):
        stale.unlink()
    server = run.Server(run.GW)
    server.wrapper = [run.PY, str(run.BENCH / "profile_gw.py"), "serve", "--out", str(out), "--"]
    server.start()
    windows: dict[str, dict] = {}
    try:
        run.wrk(server, WARMUP, 64)
        for n, name in enumerate(("before", "fill", "after"), 1):
            entry: dict = {}
            if name == "fill":
                # The fill itself, under cProfile: creating sessions, flushing the index.
                server.proc.send_signal(signal.SIGUSR1)
                entry["fill"] = run.loadgen("sessions", server.port, "complete", count=sessions, conns=64)
                time.sleep(1.5)                 # the last index flush is done
                server.proc.send_signal(signal.SIGUSR2)
                _wait_for(Path(f"{out}.{n}.gc.json"))
                time.sleep(0.2)
                entry["gc"] = json.loads(Path(f"{out}.{n}.gc.json").read_text())
                entry["profile"] = _per_request(f"{out}.{n}", max(1, entry["fill"].get("sessions") or 1))
                windows[name] = entry
                continue
            entry["plain"] = run.wrk(server, SECONDS, 64)
            spy_out = run.RESULTS / "tmp" / f"profile-s6-{name}.pyspy"
            spy = subprocess.Popen([str(run.BENCH / ".venv" / "bin" / "py-spy"), "record", "--pid",
                                    str(server.proc.pid), "--duration", f"{SECONDS + 1:g}", "--rate", "250",
                                    "--nonblocking", "--format", "raw", "--output", str(spy_out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            entry["pyspy"] = run.wrk(server, SECONDS, 64)
            spy.wait(60)
            entry["pyspy_file"] = str(spy_out)
            server.proc.send_signal(signal.SIGUSR1)
            entry["cprofile"] = run.wrk(server, SECONDS, 64)
            server.proc.send_signal(signal.SIGUSR2)
            _wait_for(Path(f"{out}.{n}.gc.json"))
            time.sleep(0.2)
            entry["gc"] = json.loads(Path(f"{out}.{n}.gc.json").read_text())
            entry["profile"] = _per_request(f"{out}.{n}", entry["cprofile"]["requests"])
            windows[name] = entry
            run.say(f"S6 profile {name}: plain {entry['plain'].get('requests_per_s')} req/s")
    finally:
        server.stop()
    path = run.RESULTS / "profile-s6.txt"
    path.write_text(_s6_report(windows, sessions))
    return path


def _s6_report(w: dict[str, dict], sessions: int) -> str:
    before, after = w["before"], w["after"]
    lines = [f"# equabot_gw profile — S6: stateless S1 load (wrk -t1 -c64, {SECONDS:g} s) on one "
             f"gateway before and after {sessions:,} keyed sessions\n"]
    for label in ("plain", "pyspy", "cprofile"):
        b, a = before[label].get("requests_per_s"), after[label].get("requests_per_s")
        lines.append(f"{label:>9}: before {b:,.0f} req/s, after {a:,.0f} req/s: {a / b:.3f}×"
                     if b and a else f"{label:>9}: before {b}, after {a}")
    fill = w["fill"]["fill"]
    lines.append(f"\nfill (under cProfile): {fill.get('sessions')} sessions in {fill.get('seconds')} s "
                 f"({fill.get('sessions_per_s')}/s; first tenth {fill.get('first_tenth_per_s')}/s, "
                 f"last tenth {fill.get('last_tenth_per_s')}/s), errors {fill.get('errors')}\n")
    lines.append("## The collector and what stays alive (at the end of each cProfile window)\n")
    for name in ("before", "fill", "after"):
        g = w[name]["gc"]
        per = {gen: f"{v['collections']} in {v['total_ms']:.0f} ms (max {v['max_ms']:.1f})"
               for gen, v in g["pauses"].items()}
        done = w[name]["cprofile"]["requests"] if "cprofile" in w[name] else w[name]["fill"].get("sessions")
        lines.append(f"{name}: requests {done:,}; collections gen0/1/2: "
                     f"{per['0']}; {per['1']}; {per['2']}")
        lines.append(f"  tracked objects {g['tracked_objects']:,} (by generation "
                     f"{g['tracked_by_generation']}), gc.get_count() {g['gc_get_count']}, "
                     f"threshold {g['gc_threshold']}")
        lines.append(f"  state: {json.dumps(g['state'])}")
        lines.append(f"  index flushes in the window: {g['index_flushes']} "
                     f"({g['flush_on_loop_ms']} ms on the loop), writes {g['index_writes']} "
                     f"({g['index_write_ms']} ms in the thread, {g['index_write_cpu_ms']} ms of it CPU, "
                     f"{g['index_entries_written']:,} entries)")
        lines.append(f"  top types: {json.dumps(g['top_types'])}\n")
    rb, ra = before["profile"], after["profile"]
    total_b = sum(v[0] for v in rb.values())
    total_a = sum(v[0] for v in ra.values())
    lines.append(f"## cProfile: self time per request, after − before (all functions: {total_b:.1f} → "
                 f"{total_a:.1f} µs per request)\n")
    lines.append("   before µs   after µs   Δ µs  calls/req before → after  function")
    keys = set(rb) | set(ra)
    delta = sorted(keys, key=lambda k: ra.get(k, (0, 0, 0))[0] - rb.get(k, (0, 0, 0))[0], reverse=True)
    nb, na = before["cprofile"]["requests"], after["cprofile"]["requests"]
    for k in delta[:TOP]:
        b, a = rb.get(k, (0.0, 0.0, 0)), ra.get(k, (0.0, 0.0, 0))
        lines.append(f"  {b[0]:9.2f}  {a[0]:9.2f}  {a[0] - b[0]:+6.2f}  {b[2] / nb:8.2f} → {a[2] / na:8.2f}  {k}")
    lines.append("\n## cProfile: cumulative time per request, largest increases\n")
    lines.append("   before µs   after µs   Δ µs  function")
    delta = sorted(keys, key=lambda k: ra.get(k, (0, 0, 0))[1] - rb.get(k, (0, 0, 0))[1], reverse=True)
    for k in delta[:TOP]:
        b, a = rb.get(k, (0.0, 0.0, 0)), ra.get(k, (0.0, 0.0, 0))
        lines.append(f"  {b[1]:9.2f}  {a[1]:9.2f}  {a[1] - b[1]:+6.2f}  {k}")
    rf = w["fill"]["profile"]
    lines.append(f"\n## cProfile during the fill: self time per new session, top {TOP} "
                 f"(all functions: {sum(v[0] for v in rf.values()):.1f} µs per session)\n")
    lines.append("   self µs    cum µs  calls/session  function")
    nf = max(1, w["fill"]["fill"].get("sessions") or 1)
    for k in sorted(rf, key=lambda k: rf[k][0], reverse=True)[:TOP]:
        lines.append(f"  {rf[k][0]:8.2f}  {rf[k][1]:8.2f}  {rf[k][2] / nf:13.2f}  {k}")
    sb, nsb = _pyspy_self(before["pyspy_file"])
    sa, nsa = _pyspy_self(after["pyspy_file"])
    rb_spy, ra_spy = before["pyspy"].get("requests") or 1, after["pyspy"].get("requests") or 1
    lines.append(f"\n## py-spy (250 Hz, attached during the load): self samples per 1,000 requests, "
                 f"after − before ({nsb} → {nsa} samples; {rb_spy:,} → {ra_spy:,} requests)\n")
    lines.append("  before  after      Δ  function")
    frames = set(sb) | set(sa)
    per_b = {f: 1000 * sb[f] / rb_spy for f in frames}
    per_a = {f: 1000 * sa[f] / ra_spy for f in frames}
    for f in sorted(frames, key=lambda f: per_a[f] - per_b[f], reverse=True)[:TOP]:
        lines.append(f"  {per_b[f]:6.2f} {per_a[f]:6.2f} {per_a[f] - per_b[f]:+6.2f}  {f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="all", choices=("all", "serve"))
    parser.add_argument("--out")
    parser.add_argument("--only", default="s1,s2", help="s1,s2 or s6")
    parser.add_argument("--sessions", type=int, default=10_000, help="s6: keyed sessions")
    own = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    args = parser.parse_args(own)
    if args.command == "serve":
        # After "--" comes the gateway's own command: python -m equabot_gw ARGS.
        serve(args.out, sys.argv[sys.argv.index("equabot_gw") + 1:])
        return
    (run.RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    (run.RESULTS / "tmp").mkdir(parents=True, exist_ok=True)
    if args.only == "s6":
        run.say(f"wrote {profile_s6(args.sessions)}")
        return
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
