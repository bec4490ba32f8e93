"""``make bench``: equabot_gw and its peers, side by side, on one machine, in one run.

Starts each server under test pinned to one core (``SERVER_CORE``) and drives
it from the other (``LOAD_CORE``): wrk for scenario 1, ``loadgen.py`` for the
rest. Rounds are interleaved over the servers (the order rotates each round)
and the tables show medians of the rounds. Writes ``results/<mode>.json`` and
``results/<mode>.md`` and prints the tables. Usage::

    python bench/run.py [--quick] [--only s1,s2,...]

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import harness
from harness import (AIOHTTP, BENCH, FULL, GW, LOAD_CORE, PY, QUICK, RAW, RESULTS, ROOT,
                     SERVER_CORE, STARLETTE, STARLETTE_FAST, Server, Settings, _body_file,
                     _cold_start, fmt, guarded, loadgen, median_of, ratio, rotated, say,
                     table, workloads, wrk)
from proxies import VIA_GW, VIA_LITELLM, _s4_section, s4
from store_growth import _s6_section, s6

# -- preflight: every peer answers with the gateway's bytes -------------------------

_VOLATILE = re.compile(rb'"id":"chatcmpl-[0-9a-f]+"|"created":\d+|^id: [^\n]*', re.M)


def _fetch_body(port: int, kind: str) -> bytes:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/chat/completions", workloads.BODIES[kind],
                 {"Authorization": "Bearer bench-token-0123456789abcdef",
                  "Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return _VOLATILE.sub(b"<volatile>", _joined_text(body) if kind == "stream" else body)


def _joined_text(stream: bytes) -> bytes:
    """An SSE body with its text deltas joined into one event: where one server
    sends a word per event and another joins words produced together, the
    bytes differ and the answer does not."""
    events, text = [], []
    for event in stream.split(b"\n\n"):
        data = event.partition(b"data: ")[2]
        if b'"delta":{"content":' in data:
            text.append(json.loads(data)["choices"][0]["delta"]["content"])
        else:
            events.append(event)
    return b"\n\n".join(events) + b"\n\ntext: " + "".join(text).encode()


def preflight(servers: dict[str, Server]) -> dict[str, bool]:
    """True per server whose JSON and SSE bodies equal the gateway's (ids and times aside)."""
    reference = {k: _fetch_body(servers[GW].port, k) for k in ("complete", "stream")}
    same = {}
    for name, server in servers.items():
        same[name] = all(_fetch_body(server.port, k) == reference[k] for k in reference)
        if not same[name]:
            say(f"!! {name} does not answer with the gateway's bytes")
    return same


# -- scenarios ----------------------------------------------------------------------

def s1_s2(settings: Settings, only: set[str]) -> dict:
    """S1 (wrk, JSON completion) and S2 (streamed 256 words), servers kept up across rounds."""
    names = [GW, STARLETTE, STARLETTE_FAST, AIOHTTP, RAW]
    servers = {n: Server(n).start() for n in names}
    out: dict = {}
    try:
        out["byte_identical"] = preflight(servers)
        if "s1" in only:
            rounds: dict[str, list[dict]] = {n: [] for n in names}
            for r in range(settings.rounds):
                for name in rotated(names, r):
                    wrk(servers[name], settings.s1_warmup, settings.s1_conns)
                    rounds[name].append(guarded(
                        lambda: wrk(servers[name], settings.s1_seconds, settings.s1_conns),
                        list(servers.values())))
                    say(f"S1 round {r + 1} {name}: {rounds[name][-1]}")
            out["s1"] = {n: {"median": median_of(v), "rounds": v} for n, v in rounds.items()}
        if "s2" in only:
            expect = workloads.sse_events(workloads.STREAM_WORDS)
            rounds = {n: [] for n in names}
            for r in range(settings.rounds):
                for name in rotated(names, r):
                    result = guarded(lambda: _s2_once(servers[name], settings, expect),
                                     list(servers.values()))
                    rounds[name].append(result)
                    say(f"S2 round {r + 1} {name}: {result}")
            out["s2"] = {n: {"median": median_of(v), "rounds": v} for n, v in rounds.items()}
    finally:
        for server in servers.values():
            server.stop()
    return out


def _s2_once(server: Server, settings: Settings, expect: int) -> dict:
    cpu0, wall0 = server.cpu_seconds(), time.perf_counter()
    result = loadgen("stream", server.port, "stream", conns=settings.s2_conns,
                     duration=settings.s2_seconds, warmup=settings.s2_warmup, expect_events=expect)
    cpu = server.cpu_seconds() - cpu0
    result["server_cpu"] = round(cpu / (time.perf_counter() - wall0), 3)
    result["events_per_cpu_s"] = round(result.pop("events_total") / cpu, 1) if cpu else None
    result["server_rss_mb"] = server.memory_mb()["VmRSS"]
    return result


def s3(settings: Settings) -> dict:
    """S3: 10k idle keep-alive connections, then 2k slow streams, each on a fresh server."""
    names = [GW, STARLETTE, AIOHTTP, RAW]
    idle: dict[str, list[dict]] = {n: [] for n in names}
    slow: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(settings.s3_rounds):
        for name in rotated(names, r):
            idle[name].append(guarded(lambda: _s3_idle(name, settings), []))
            say(f"S3 idle round {r + 1} {name}: {idle[name][-1]}")
            slow[name].append(guarded(lambda: _s3_slow(name, settings), []))
            say(f"S3 slow round {r + 1} {name}: {slow[name][-1]}")
    return {"idle": {n: {"median": median_of(v), "rounds": v} for n, v in idle.items()},
            "slow": {n: {"median": median_of(v), "rounds": v} for n, v in slow.items()}}


def _s3_idle(name: str, settings: Settings) -> dict:
    server = Server(name).start()
    try:
        time.sleep(0.3)
        baseline = server.memory_mb()["VmRSS"]
        cmd = ["taskset", "-c", LOAD_CORE, PY, str(BENCH / "loadgen.py"), "idle",
               "--port", str(server.port), "--body-file", _body_file("complete"),
               "--conns", str(settings.s3_idle_conns), "--hold", str(settings.s3_idle_hold)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        ready = json.loads(proc.stdout.readline())
        time.sleep(min(1.0, settings.s3_idle_hold / 2))
        holding = server.memory_mb()
        result = json.loads(proc.stdout.read().strip().splitlines()[-1])
        proc.wait()
        peak = server.memory_mb()["VmHWM"]
        alive = server.proc.poll() is None
    finally:
        server.stop()
    return {"baseline_rss_mb": baseline, "rss_holding_mb": holding["VmRSS"], "peak_rss_mb": peak,
            "kb_per_conn": round((holding["VmRSS"] - baseline) * 1e3 / max(1, ready["open"]), 2),
            "open_seconds": result["open_seconds"], "open_after_hold": result["open_after_hold"],
            "errors": result["errors"] + (0 if alive else 1), "error_kinds": result["error_kinds"]}


def _s3_slow(name: str, settings: Settings) -> dict:
    server = Server(name).start()
    try:
        time.sleep(0.3)
        baseline = server.memory_mb()["VmRSS"]
        result = loadgen("slow", server.port, "slow", conns=settings.s3_slow_streams,
                         expect_events=workloads.sse_events(workloads.SLOW_WORDS), opening=512)
        peak = server.memory_mb()["VmHWM"]
    finally:
        server.stop()
    return {"baseline_rss_mb": baseline, "peak_rss_mb": peak, "completed": result["completed"],
            "stream_p50_ms": result["stream_p50_ms"], "stream_p99_ms": result["stream_p99_ms"],
            "stream_max_ms": result["stream_max_ms"], "wall_seconds": result["wall_seconds"],
            "errors": result["errors"], "error_kinds": result["error_kinds"]}


def s5(settings: Settings) -> dict:
    """S5: process start to the first 200 on /health, and RSS 0.5 s after it."""
    names = [GW, STARLETTE, STARLETTE_FAST, AIOHTTP, RAW]
    for name in names:          # fill the bytecode caches: not a measured start
        _cold_start(name)
    reps: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(settings.s5_reps):
        for name in rotated(names, r):
            reps[name].append(guarded(lambda: _cold_start(name), []))
    out = {}
    for name, values in reps.items():
        firsts = sorted(v["first_200_ms"] for v in values)
        out[name] = {"median": {
            "first_200_ms": round(statistics.median(firsts), 1),
            "first_200_p90_ms": firsts[min(len(firsts) - 1, int(0.9 * len(firsts)))],
            "first_200_max_ms": firsts[-1],
            "idle_rss_mb": round(statistics.median(v["idle_rss_mb"] for v in values), 1),
            "errors": sum(v["errors"] for v in values),
            "foreign_cpu": round(statistics.median(v["foreign_cpu"] for v in values), 3)},
            "rounds": values}
        say(f"S5 {name}: {out[name]['median']}")
    return out


# -- the report ---------------------------------------------------------------------

def _rows(data: dict, columns: list[tuple[str, str, int]], ratio_keys: tuple[str, ...]) -> list[list[str]]:
    base = data[GW]["median"]
    rows = []
    for name, entry in data.items():
        m = entry["median"]
        row = [name]
        for key, _, digits in columns:
            row.append(fmt(m.get(key), digits))
            if key in ratio_keys:
                row.append(ratio(m.get(key), base.get(key)))
        rows.append(row)
    return rows


def _headers(columns: list[tuple[str, str, int]], ratio_keys: tuple[str, ...]) -> list[str]:
    out = ["server"]
    for key, title, _ in columns:
        out.append(title)
        if key in ratio_keys:
            out.append("÷ gw")
    return out


def _section(title: str, note: str, data: dict, columns: list[tuple[str, str, int]],
             ratio_keys: tuple[str, ...]) -> str:
    return (f"### {title}\n\n{note}\n\n"
            + table(_headers(columns, ratio_keys), _rows(data, columns, ratio_keys)) + "\n")


S1_COLUMNS = [("requests_per_s", "req/s", 0), ("requests_per_cpu_s", "req per CPU-s", 0), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2),
              ("errors", "errors", 0), ("server_cpu", "server CPU", 2), ("loadgen_cpu", "wrk CPU", 2),
              ("server_rss_mb", "RSS after MB", 1), ("foreign_cpu", "other CPU", 2)]
S2_COLUMNS = [("events_per_s", "SSE events/s", 0), ("events_per_cpu_s", "events per CPU-s", 0),
              ("requests_per_s", "streams/s", 0),
              ("ttfb_p50_ms", "TTFB p50 ms", 2), ("ttfb_p99_ms", "TTFB p99 ms", 2),
              ("first_event_p50_ms", "1st event p50 ms", 2), ("latency_p50_ms", "stream p50 ms", 2),
              ("errors", "errors", 0), ("server_cpu", "server CPU", 2),
              ("loadgen_cpu", "client CPU", 2), ("foreign_cpu", "other CPU", 2)]
S3I_COLUMNS = [("baseline_rss_mb", "RSS before MB", 1), ("rss_holding_mb", "RSS holding MB", 1),
               ("peak_rss_mb", "peak RSS MB", 1), ("kb_per_conn", "KB/conn", 1),
               ("open_seconds", "open s", 1), ("errors", "errors", 0),
               ("foreign_cpu", "other CPU", 2)]
S3S_COLUMNS = [("peak_rss_mb", "peak RSS MB", 1), ("completed", "completed", 0),
               ("stream_p50_ms", "stream p50 ms", 0), ("stream_p99_ms", "stream p99 ms", 0),
               ("stream_max_ms", "stream max ms", 0), ("errors", "errors", 0),
               ("foreign_cpu", "other CPU", 2)]
S5_COLUMNS = [("first_200_ms", "first 200 ms (median)", 1), ("first_200_p90_ms", "p90 ms", 1),
              ("first_200_max_ms", "max ms", 1), ("idle_rss_mb", "idle RSS MB", 1),
              ("errors", "errors", 0), ("foreign_cpu", "other CPU", 2)]


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with the figure it is judged on."""
    out = []
    sc = results["scenarios"]

    def add(name: str, value, limit, met: bool | None, rounds: list | None = None) -> None:
        out.append({"target": name, "value": value, "limit": limit, "met": met, "rounds": rounds})

    def below(value, limit, inclusive: bool = False) -> bool | None:
        """None (no samples) when the figure is missing."""
        if not isinstance(value, (int, float)):
            return None
        return value <= limit if inclusive else value < limit

    def median(*path: str) -> dict:
        node = sc
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node.get("median", {}) if isinstance(node, dict) else {}

    def share(a, b) -> float | None:
        return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None

    if "s1" in sc:
        gw = median("s1", GW).get("requests_per_s")
        for peer, least in ((STARLETTE, 1.5), (AIOHTTP, 0.5)):
            ratio = share(gw, median("s1", peer).get("requests_per_s"))
            # The same ratio within each round: how much the machine drifted between them.
            per_round = [share(a.get("requests_per_s"), b.get("requests_per_s"))
                         for a, b in zip(sc["s1"].get(GW, {}).get("rounds", []),
                                         sc["s1"].get(peer, {}).get("rounds", []))]
            add(f"S1 req/s ≥ {least:g}× {peer}'s", ratio, least, None if ratio is None else ratio >= least,
                per_round)
        ratio_raw = share(gw, median("s1", RAW).get("requests_per_s"))
        add("S1 req/s ≥ 60% of raw asyncio", ratio_raw, 0.6, None if ratio_raw is None else ratio_raw >= 0.6)
    if "s2" in sc:
        v = median("s2", GW).get("events_per_s")
        add("S2 SSE events/s ≥ 100,000", v, 100_000, None if v is None else v >= 100_000)
    if "s3" in sc:
        m = median("s3", "idle", GW)
        add("S3 10k idle: peak RSS < 150 MB", m.get("peak_rss_mb"), 150, below(m.get("peak_rss_mb"), 150))
        errors = m.get("errors", 0) + median("s3", "slow", GW).get("errors", 0)
        add("S3 zero errors (idle + slow)", errors, 0, errors == 0)
    if "s4" in sc:
        settings = Settings(**results["settings"])
        mode = f"paced {max(settings.s4_rates):g}/s"
        a = sc["s4"]["added"].get(mode, {})
        add(f"S4 added p50 < 1 ms ({mode})", a.get("latency_p50_ms"), 1.0, below(a.get("latency_p50_ms"), 1.0))
        add(f"S4 added p99 < 5 ms ({mode})", a.get("latency_p99_ms"), 5.0, below(a.get("latency_p99_ms"), 5.0))
        wide = f"{settings.s4_throughput_conns} connections"
        gw = sc["s4"][VIA_GW].get(wide, {}).get("median", {}).get("requests_per_s")
        peer = sc["s4"].get(VIA_LITELLM, {}).get(wide, {}).get("median", {}).get("requests_per_s")
        times = round(gw / peer, 2) if gw and peer else None
        add(f"S4 req/s ≥ 10× LiteLLM's ({wide})", times, 10, None if times is None else times >= 10)
        for peer_mode, b in sc["s4"].get("added_litellm", {}).items():
            ours = sc["s4"]["added"].get(peer_mode, {}).get("latency_p50_ms")
            theirs = b.get("latency_p50_ms")
            fraction = round(ours / theirs, 3) if ours is not None and theirs else None
            add(f"S4 added p50 ≤ 0.2× LiteLLM's ({peer_mode})", fraction, 0.2, below(fraction, 0.2, True))
    if "s5" in sc:
        m = median("s5", GW)
        ratio = share(m.get("first_200_ms"), median("s5", STARLETTE).get("first_200_ms"))
        add("S5 first 200 ≤ 0.8× uvicorn+starlette's", ratio, 0.8, below(ratio, 0.8, True))
        add("S5 first 200 < 200 ms (median)", m.get("first_200_ms"), 200, below(m.get("first_200_ms"), 200))
        add("S5 idle RSS < 30 MB", m.get("idle_rss_mb"), 30, below(m.get("idle_rss_mb"), 30))
    if "s6" in sc:
        ratio_after = sc["s6"].get("ratio")
        add(f"S6 stateless req/s after {Settings(**results['settings']).s6_sessions:,} sessions "
            f"≥ 0.95× before", ratio_after, 0.95, None if ratio_after is None else ratio_after >= 0.95)
    return out


def report(results: dict) -> str:
    s, sc = Settings(**results["settings"]), results["scenarios"]
    m = results["machine"]
    parts = [f"## equabot_gw benchmark — {results['mode']} run, {results['date']}\n",
             f"{m['cpu']}, {m['cores']} cores; server on core {SERVER_CORE}, load on core "
             f"{LOAD_CORE}; Python {m['python']}; {m['kernel']}; equabot_gw {m['equabot_gw']} "
             f"({m['commit']}). Medians of {s.rounds} interleaved rounds "
             f"({s.s3_rounds} for S3). `÷ gw` is the peer's figure divided by equabot_gw's.\n"]
    took = results.get("scenario_seconds")
    if took:
        parts.append(f"Run time {results.get('seconds', '?')} s: "
                     + ", ".join(f"{name.upper()} {sec} s" for name, sec in took.items()) + ".\n")
    same = sc.get("byte_identical")
    if same:
        parts.append("Preflight — same JSON and SSE bytes as equabot_gw (ids, `created` aside; text deltas joined, as servers may cut them differently): "
                     + ", ".join(f"{n}: {'yes' if ok else 'NO'}" for n, ok in same.items()) + "\n")
    if "s1" in sc:
        parts.append(_section(
            "S1 — non-streaming echo completion", f"wrk -t1 -c{s.s1_conns}, keep-alive, "
            f"{s.s1_seconds:g} s per round after {s.s1_warmup:g} s warm-up. equabot_gw runs the "
            f"agent and appends each turn to its fsynced journal (group commit); peers do not.",
            sc["s1"], S1_COLUMNS, ("requests_per_s", "requests_per_cpu_s", "p50_ms")))
    if "s2" in sc:
        parts.append(_section(
            "S2 — streamed 256-word echo, no delay", f"{s.s2_conns} keep-alive connections, "
            f"closed loop, {s.s2_seconds:g} s; events = every `data:` event (role, 256 words, "
            f"finish, [DONE]: 259 per stream, fewer where words produced in one step share "
            f"an event, as equabot_gw's do). TTFB = request sent → first response byte.",
            sc["s2"], S2_COLUMNS, ("events_per_s", "events_per_cpu_s")))
    if "s3" in sc:
        parts.append(_section(
            f"S3a — {s.s3_idle_conns:,} idle keep-alive connections",
            "Fresh server; each connection gets one completion, then all sit idle "
            f"{s.s3_idle_hold:g} s. Peak = VmHWM since process start; errors = failed or closed.",
            sc["s3"]["idle"], S3I_COLUMNS, ("peak_rss_mb",)))
        parts.append(_section(
            f"S3b — {s.s3_slow_streams:,} concurrent slow streams (20 words × 50 ms)",
            "Fresh server; all streams started together, one connection each; ideal stream "
            "time 1,000 ms.", sc["s3"]["slow"], S3S_COLUMNS, ("peak_rss_mb",)))
    if "s4" in sc:
        parts.append(_s4_section(sc["s4"], s))
    if "s6" in sc:
        parts.append(_s6_section(sc["s6"], s))
    if "s5" in sc:
        parts.append(_section(
            "S5 — cold start", f"{s.s5_reps} starts per server (interleaved, after one unmeasured "
            "start that fills bytecode caches): spawn → first 200 on GET /health; RSS 0.5 s later.",
            sc["s5"], S5_COLUMNS, ("first_200_ms", "idle_rss_mb")))
    verdict = {True: "met", False: "**MISSED**", None: "no samples"}
    rows = [[t["target"], fmt(t["value"], 3 if isinstance(t["value"], float) and t["value"] < 10
                               else 1), f"{t['limit']:,g}", verdict[t["met"]]]
            for t in results["targets"]]
    parts.append("### Targets\n\n" + table(["target", "equabot_gw", "limit", ""], rows) + "\n")
    drift = [f"{t['target']}: " + ", ".join(fmt(r, 3) for r in t["rounds"])
             for t in results["targets"] if t.get("rounds")]
    if drift:
        parts.append("Each round's ratio (the servers measured within minutes of each other; a spread "
                     "wider than the margin means the machine drifted, and `make -C bench instructions` "
                     "gives the drift-free figure):\n\n" + "\n".join(f"- {line}" for line in drift) + "\n")
    return "\n".join(parts)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name")), platform.processor())
    python = subprocess.run([PY, "-c", "import sys; print(sys.version.split()[0])"],
                            capture_output=True, text=True).stdout.strip()
    versions = subprocess.run([PY, "-c", "import importlib.metadata as m; print(' '.join("
                               "f'{p}=={m.version(p)}' for p in ('uvicorn','starlette','aiohttp',"
                               "'uvloop','httptools')))"], capture_output=True, text=True).stdout.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1:2]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    # Read-only: uncommitted edits to the package mean the figures are of a working tree.
    changed = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), "status",
                              "--porcelain", "--", "equabot_gw"],
                             capture_output=True, text=True).stdout.splitlines()
    if changed:
        commit += f" + {len(changed)} uncommitted file(s) in equabot_gw/"
    sys.path.insert(0, str(ROOT))
    import equabot_gw
    return {"cpu": cpu, "cores": os.cpu_count(), "python": python, "kernel": platform.platform(),
            "peers": versions, "wrk": " ".join(wrk_version), "equabot_gw": equabot_gw.__version__,
            "commit": commit or "unknown"}


def _interrupted(signum: int, frame: object) -> None:
    raise SystemExit(f"interrupted by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description="equabot_gw and its peers, side by side")
    parser.add_argument("--quick", action="store_true", help="one short round of every scenario")
    parser.add_argument("--only", default="s1,s2,s3,s4,s5,s6", help="comma-separated scenarios")
    parser.add_argument("--out", help="results/OUT.{json,md} (default: latest, or quick)")
    args = parser.parse_args()
    # Stop cleanly (servers and load generators stopped by the finally blocks)
    # on SIGTERM, and on SIGINT even when started in the background.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupted)
    settings = QUICK if args.quick else FULL
    if args.quick:
        harness.QUIET_MAX_WAIT, harness.RETRIES, harness.PATIENCE_BUDGET = 3.0, 1, 60.0
    only = set(args.only.split(","))
    mode = args.out or ("quick" if args.quick else "latest")
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = {"mode": "quick" if args.quick else "full",
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "settings": asdict(settings), "scenarios": {}}
    sc = results["scenarios"]
    took = results["scenario_seconds"] = {}
    clock = time.monotonic()

    def timed(name: str) -> None:
        nonlocal clock
        took[name] = round(time.monotonic() - clock)
        clock = time.monotonic()
        say(f"{name} took {took[name]} s")

    if only & {"s1", "s2"}:
        both = s1_s2(settings, only)
        sc["byte_identical"] = both.pop("byte_identical")
        sc.update(both)
        timed("s1+s2")
    if "s3" in only:
        sc["s3"] = s3(settings)
        timed("s3")
    if "s4" in only:
        sc["s4"] = s4(settings)
        timed("s4")
    if "s5" in only:
        sc["s5"] = s5(settings)
        timed("s5")
    if "s6" in only:
        sc["s6"] = s6(settings)
        timed("s6")
    results["targets"] = targets(results)
    results["seconds"] = round(time.monotonic() - started)
    (RESULTS / f"{mode}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = report(results)
    (RESULTS / f"{mode}.md").write_text(text)
    print(text)
    say(f"done in {results['seconds']} s: results/{mode}.json, results/{mode}.md")


if __name__ == "__main__":
    main()
