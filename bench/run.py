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
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PY = str(BENCH / ".venv" / "bin" / "python")
SERVER_CORE = "0"
LOAD_CORE = "1"
sys.path.insert(0, str(BENCH / "servers"))
import workloads  # noqa: E402

GW = "equabot_gw"
STARLETTE = "uvicorn+starlette"
STARLETTE_FAST = "uvicorn+starlette (uvloop, httptools)"
AIOHTTP = "aiohttp"
RAW = "raw asyncio"


@dataclass(frozen=True)
class Settings:
    rounds: int = 3
    s1_seconds: float = 8.0
    s1_warmup: float = 2.0
    s1_conns: int = 64
    s2_seconds: float = 8.0
    s2_warmup: float = 1.0
    s2_conns: int = 16
    s3_rounds: int = 2
    s3_idle_conns: int = 10_000
    s3_idle_hold: float = 3.0
    s3_slow_streams: int = 2_000
    s4_seconds: float = 8.0
    s4_conns: int = 32
    s4_rates: tuple[float, ...] = (100.0, 500.0)
    s5_reps: int = 20


FULL = Settings()
QUICK = Settings(rounds=1, s1_seconds=3, s1_warmup=1, s2_seconds=3, s2_warmup=0.5, s3_rounds=1,
                 s3_idle_hold=2, s4_seconds=2, s5_reps=4)


# -- servers -------------------------------------------------------------------------

def _argv(name: str, port: int, state_dir: str) -> tuple[list[str], Path]:
    servers = str(BENCH / "servers")
    if name == GW:
        return ([PY, "-m", "equabot_gw", "--config", "bench/gateway.json5", "--port", str(port),
                 "--state-dir", state_dir, "--log-level", "warning"], ROOT)
    if name in (STARLETTE, STARLETTE_FAST):
        fast = name == STARLETTE_FAST
        return ([PY, "-m", "uvicorn", "starlette_app:app", "--app-dir", servers,
                 "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop" if fast else "asyncio",
                 "--http", "httptools" if fast else "h11", "--log-level", "warning",
                 "--no-access-log", "--backlog", "2048", "--timeout-keep-alive", "60"], BENCH)
    if name == AIOHTTP:
        return [PY, f"{servers}/aiohttp_app.py", "--port", str(port)], BENCH
    if name == RAW:
        return [PY, f"{servers}/raw_asyncio.py", "--port", str(port)], BENCH
    if name == "upstream":
        return [PY, f"{servers}/raw_asyncio.py", "--port", str(port), "--upstream"], BENCH
    raise ValueError(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def http_get(port: int, path: str, timeout: float = 2.0) -> int:
    """Status of ``GET path`` (0 when the connection is refused or fails)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
            return int(head[9:12]) if head.startswith(b"HTTP/1.") else 0
    except OSError:
        return 0


class Server:
    """One server process under test, pinned to ``core``, with a fresh state dir."""

    def __init__(self, name: str, core: str = SERVER_CORE, upstream_port: int = 9) -> None:
        self.name = name
        self.core = core
        self.port = free_port()
        self.state_dir = tempfile.mkdtemp(prefix="equabot-bench-")
        self.upstream_port = upstream_port
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.wrapper: list[str] = []        # e.g. a profiler that starts the server

    def spawn(self) -> None:
        argv, cwd = _argv(self.name, self.port, self.state_dir)
        env = dict(os.environ, BENCH_UPSTREAM_PORT=str(self.upstream_port), PYTHONUNBUFFERED="1")
        log = open(RESULTS / "logs" / f"{re.sub(r'[^a-z0-9]+', '-', self.name.lower())}.log", "ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(["taskset", "-c", self.core] + self.wrapper + argv, cwd=cwd, env=env,
                                     stdout=log, stderr=log, preexec_fn=_raise_nofile)
        log.close()

    def start(self) -> "Server":
        self.spawn()
        deadline = time.monotonic() + 20
        while http_get(self.port, "/health", 0.5) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start (see results/logs/)")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["rm", "-rf", self.state_dir], check=False)

    def memory_mb(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak RSS since start) of the process, in MB (10^6 bytes)."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) * 1024 / 1e6, 1)
        return fields

    def cpu_seconds(self) -> float:
        """User + system CPU time of all the process's threads."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        parts = stat.rpartition(")")[2].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


# -- other processes on the machine -----------------------------------------------
#
# Other work on the same two cores (another session's test suite, say) takes CPU
# from the server or the load generator and ruins a round. Each measurement
# first waits for the machine to be quiet, then checks how much CPU went to
# processes outside the benchmark ("foreign" CPU: all cores' user + system
# time from /proc/stat minus our own processes' time); a round with more than
# FOREIGN_LIMIT cores of it is measured again (at most RETRIES times; the best
# attempt is kept and its foreign_cpu is reported).

FOREIGN_LIMIT = 0.10            # cores
QUIET_MAX_WAIT = 8.0            # seconds to wait for a quiet machine before measuring anyway
RETRIES = 2
# Past this many seconds of the run, measure at once and keep the first attempt
# (the figures stay flagged by their foreign_cpu): the run must end.
PATIENCE_BUDGET = 15 * 60.0
_RUN_STARTED = time.monotonic()


def _patient() -> bool:
    return time.monotonic() - _RUN_STARTED < PATIENCE_BUDGET
_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds all cores spent in user and system mode since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]
    return sum(int(x) for x in fields) / _TICK


def _own_cpu(servers: list["Server"]) -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return (me.ru_utime + me.ru_stime + _children_cpu()
            + sum(s.cpu_seconds() for s in servers if s.proc and s.proc.poll() is None))


def wait_quiet(servers: list["Server"]) -> float:
    """Wait until other processes use under FOREIGN_LIMIT cores; returns the seconds waited."""
    began = time.monotonic()
    while _patient() and time.monotonic() - began < QUIET_MAX_WAIT:
        busy0, own0 = _machine_busy(), _own_cpu(servers)
        time.sleep(0.5)
        if (_machine_busy() - busy0 - (_own_cpu(servers) - own0)) / 0.5 < FOREIGN_LIMIT:
            break
    return round(time.monotonic() - began, 1)


def guarded(measure, servers: list["Server"]) -> dict:
    """``measure()`` on a quiet machine, again if other processes took CPU meanwhile."""
    best: dict | None = None
    for attempt in range(1 + RETRIES):
        waited = wait_quiet(servers)
        busy0, own0, wall0 = _machine_busy(), _own_cpu(servers), time.perf_counter()
        result = measure()
        foreign = (_machine_busy() - busy0 - (_own_cpu(servers) - own0)) / \
            (time.perf_counter() - wall0)
        result.update(foreign_cpu=round(max(0.0, foreign), 3), attempts=attempt + 1,
                      quiet_wait_s=waited)
        if best is None or result["foreign_cpu"] < best["foreign_cpu"]:
            best = result
        if foreign < FOREIGN_LIMIT or not _patient():
            break
        say(f"   other processes used {foreign:.2f} cores during the measurement: again")
    return best


# -- load generators --------------------------------------------------------------

def _body_file(kind: str) -> str:
    path = RESULTS / "tmp" / f"{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(workloads.BODIES[kind])
    return str(path)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(server: Server, seconds: float, conns: int) -> dict:
    """Scenario 1 load: wrk, one thread on the load core, POSTing the completion body."""
    env = dict(os.environ, BENCH_BODY_FILE=_body_file("complete"))
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency",
           "-s", str(BENCH / "post.lua"), f"http://127.0.0.1:{server.port}/v1/chat/completions"]
    cpu0, server0, wall0 = _children_cpu(), server.cpu_seconds(), time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - wall0
    server_cpu = server.cpu_seconds() - server0
    data = json.loads(out.split("WRKJSON ", 1)[1].splitlines()[0])
    seconds_run = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"requests_per_s": round(data["requests"] / seconds_run, 1),
            "requests_per_cpu_s": round(data["requests"] / server_cpu, 1) if server_cpu else None,
            "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000,
            "errors": errors, "server_cpu": round(server_cpu / wall, 3),
            "server_rss_mb": server.memory_mb()["VmRSS"],
            "loadgen_cpu": round((_children_cpu() - cpu0) / wall, 3)}


def loadgen(command: str, port: int, body: str, **options) -> dict:
    cmd = ["taskset", "-c", LOAD_CORE, PY, str(BENCH / "loadgen.py"), command, "--port", str(port),
           "--body-file", _body_file(body)]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- statistics and tables --------------------------------------------------------

def median_of(rounds: list[dict]) -> dict:
    """Per metric: the median over rounds (errors: the total)."""
    out: dict = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if isinstance(r.get(key), (int, float))]
        if key.startswith("errors") or key == "error_kinds":
            if key == "errors":
                out[key] = sum(values)
            continue
        if values and len(values) == len(rounds):
            out[key] = round(statistics.median(values), 3)
    return out


def ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "–"
    return f"{value / base:.2f}×"


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rotated(names: list[str], round_no: int) -> list[str]:
    k = round_no % len(names)
    return names[k:] + names[:k]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- preflight: every peer answers with the gateway's bytes -------------------------

_VOLATILE = re.compile(rb'"id":"chatcmpl-[0-9a-f]+"|"created":\d+')


def _fetch_body(port: int, kind: str) -> bytes:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/chat/completions", workloads.BODIES[kind],
                 {"Authorization": "Bearer bench-token-0123456789abcdef",
                  "Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return _VOLATILE.sub(b"<volatile>", body)


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


def s4(settings: Settings) -> dict:
    """S4: gateway (agent "proxy") in front of the raw upstream vs the upstream alone."""
    upstream = Server("upstream", core=LOAD_CORE).start()
    gateway = Server(GW, upstream_port=upstream.port).start()
    direct_events = workloads.sse_events(workloads.UPSTREAM_WORDS) + 1     # + the usage chunk
    targets = {"via equabot_gw": (gateway.port, workloads.sse_events(workloads.UPSTREAM_WORDS)),
               "upstream direct": (upstream.port, direct_events)}
    runs: dict[str, dict[str, list[dict]]] = {t: {m: [] for m, _ in _s4_modes(settings)}
                                              for t in targets}
    try:
        for target, (port, expect) in targets.items():      # warm the upstream pool
            loadgen("paced", port, "proxy", conns=settings.s4_conns, duration=1, warmup=0.5,
                    expect_events=expect)
        for r in range(settings.rounds):
            for target in rotated(list(targets), r):
                port, expect = targets[target]
                for mode, rate in _s4_modes(settings):
                    result = guarded(lambda: loadgen(
                        "paced", port, "proxy", conns=settings.s4_conns,
                        duration=settings.s4_seconds if rate else settings.s4_seconds / 2,
                        warmup=0.5, rate=rate, expect_events=expect), [gateway, upstream])
                    runs[target][mode].append(result)
                    say(f"S4 round {r + 1} {target} {mode}: {result}")
    finally:
        gateway.stop()
        upstream.stop()
    out: dict = {t: {m: {"median": median_of(v), "rounds": v} for m, v in modes.items()}
                 for t, modes in runs.items()}
    for mode, _ in _s4_modes(settings):
        via = out["via equabot_gw"][mode]["median"]
        direct = out["upstream direct"][mode]["median"]
        out.setdefault("added", {})[mode] = {
            k: round(via[k] - direct[k], 3) for k in ("latency_p50_ms", "latency_p99_ms",
                                                        "ttfb_p50_ms", "ttfb_p99_ms")}
    return out


def _s4_modes(settings: Settings) -> list[tuple[str, float]]:
    return [(f"paced {rate:g}/s", rate) for rate in settings.s4_rates] + [("closed", 0.0)]


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


def _cold_start(name: str) -> dict:
    server = Server(name)
    server.spawn()
    status = 0
    while status != 200 and server.proc.poll() is None and \
            time.perf_counter() - server.started_at < 10:
        status = http_get(server.port, "/health")
        if status != 200:
            time.sleep(0.001)
    first = (time.perf_counter() - server.started_at) * 1000
    try:
        time.sleep(0.5)
        rss = server.memory_mb()["VmRSS"] if status == 200 else None
    finally:
        server.stop()
    return {"first_200_ms": round(first, 1), "idle_rss_mb": rss, "errors": int(status != 200)}


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


def _s4_section(data: dict, settings: Settings) -> str:
    modes = [m for m, _ in _s4_modes(settings)]
    rows = []
    for target in ("via equabot_gw", "upstream direct"):
        for mode in modes:
            m = data[target][mode]["median"]
            rows.append([target, mode, fmt(m.get("requests_per_s"), 0),
                         fmt(m.get("latency_p50_ms"), 2), fmt(m.get("latency_p99_ms"), 2),
                         fmt(m.get("ttfb_p50_ms"), 2), fmt(m.get("errors"), 0),
                         fmt(m.get("foreign_cpu"), 2)])
    for mode in modes:
        a = data["added"][mode]
        rows.append(["**added by the gateway**", mode, "", fmt(a["latency_p50_ms"], 2),
                     fmt(a["latency_p99_ms"], 2), fmt(a["ttfb_p50_ms"], 2), "", ""])
    note = (f"{settings.s4_conns} client connections, each streaming a 12-word completion to "
            f"[DONE] (latency = request sent → end of the response). *paced N/s*: N requests/s "
            f"in all, spread over the clients (the gateway is not saturated); *closed*: each "
            f"client sends its next request at once, so latency is mostly queueing behind the "
            f"other 31. The upstream is the raw asyncio server (`--upstream`) on the load core; "
            f"the gateway keeps its upstream connections alive (pool).")
    return ("### S4 — proxy overhead (openai-completions agent → local upstream)\n\n" + note
            + "\n\n" + table(["target", "load", "req/s", "p50 ms", "p99 ms", "TTFB p50 ms",
                                "errors", "other CPU"], rows) + "\n")


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with the figure it is judged on."""
    out = []
    sc = results["scenarios"]

    def add(name: str, value, limit, met: bool | None) -> None:
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    if "s1" in sc:
        gw = sc["s1"][GW]["median"]["requests_per_s"]
        add("S1 req/s ≥ uvicorn+starlette", gw, sc["s1"][STARLETTE]["median"]["requests_per_s"],
            gw >= sc["s1"][STARLETTE]["median"]["requests_per_s"])
        raw = sc["s1"][RAW]["median"]["requests_per_s"]
        add("S1 req/s ≥ 60% of raw asyncio", round(gw / raw, 3), 0.6, gw / raw >= 0.6)
    if "s2" in sc:
        v = sc["s2"][GW]["median"]["events_per_s"]
        add("S2 SSE events/s ≥ 100,000", v, 100_000, v >= 100_000)
    if "s3" in sc:
        m = sc["s3"]["idle"][GW]["median"]
        add("S3 10k idle: peak RSS < 150 MB", m["peak_rss_mb"], 150, m["peak_rss_mb"] < 150)
        errors = m["errors"] + sc["s3"]["slow"][GW]["median"]["errors"]
        add("S3 zero errors (idle + slow)", errors, 0, errors == 0)
    if "s4" in sc:
        mode = f"paced {max(Settings(**results['settings']).s4_rates):g}/s"
        a = sc["s4"]["added"][mode]
        add(f"S4 added p50 < 1 ms ({mode})", a["latency_p50_ms"], 1.0, a["latency_p50_ms"] < 1.0)
        add(f"S4 added p99 < 5 ms ({mode})", a["latency_p99_ms"], 5.0, a["latency_p99_ms"] < 5.0)
    if "s5" in sc:
        m = sc["s5"][GW]["median"]
        add("S5 first 200 < 200 ms (median)", m["first_200_ms"], 200, m["first_200_ms"] < 200)
        add("S5 idle RSS < 30 MB", m["idle_rss_mb"], 30, m["idle_rss_mb"] < 30)
    return out


def report(results: dict) -> str:
    s, sc = Settings(**results["settings"]), results["scenarios"]
    m = results["machine"]
    parts = [f"## equabot_gw benchmark — {results['mode']} run, {results['date']}\n",
             f"{m['cpu']}, {m['cores']} cores; server on core {SERVER_CORE}, load on core "
             f"{LOAD_CORE}; Python {m['python']}; {m['kernel']}; equabot_gw {m['equabot_gw']} "
             f"({m['commit']}). Medians of {s.rounds} interleaved rounds "
             f"({s.s3_rounds} for S3). `÷ gw` is the peer's figure divided by equabot_gw's.\n"]
    same = sc.get("byte_identical")
    if same:
        parts.append("Preflight — same JSON and SSE bytes as equabot_gw (ids, `created` aside): "
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
            f"finish, [DONE]: 259 per stream). TTFB = request sent → first response byte.",
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
    if "s5" in sc:
        parts.append(_section(
            "S5 — cold start", f"{s.s5_reps} starts per server (interleaved, after one unmeasured "
            "start that fills bytecode caches): spawn → first 200 on GET /health; RSS 0.5 s later.",
            sc["s5"], S5_COLUMNS, ("first_200_ms", "idle_rss_mb")))
    rows = [[t["target"], fmt(t["value"], 3 if isinstance(t["value"], float) and t["value"] < 10
                               else 1), fmt(t["limit"]), "met" if t["met"] else "**MISSED**"]
            for t in results["targets"]]
    parts.append("### Targets (issue 7)\n\n" + table(["target", "equabot_gw", "limit", ""], rows) + "\n")
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
    parser.add_argument("--only", default="s1,s2,s3,s4,s5", help="comma-separated scenarios")
    parser.add_argument("--out", help="results/OUT.{json,md} (default: latest, or quick)")
    args = parser.parse_args()
    # Stop cleanly (servers and load generators stopped by the finally blocks)
    # on SIGTERM, and on SIGINT even when started in the background.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupted)
    settings = QUICK if args.quick else FULL
    if args.quick:
        global QUIET_MAX_WAIT, RETRIES, PATIENCE_BUDGET
        QUIET_MAX_WAIT, RETRIES, PATIENCE_BUDGET = 3.0, 1, 60.0
    only = set(args.only.split(","))
    mode = args.out or ("quick" if args.quick else "latest")
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = {"mode": "quick" if args.quick else "full",
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "settings": asdict(settings), "scenarios": {}}
    sc = results["scenarios"]
    if only & {"s1", "s2"}:
        both = s1_s2(settings, only)
        sc["byte_identical"] = both.pop("byte_identical")
        sc.update(both)
    if "s3" in only:
        sc["s3"] = s3(settings)
    if "s4" in only:
        sc["s4"] = s4(settings)
    if "s5" in only:
        sc["s5"] = s5(settings)
    results["targets"] = targets(results)
    results["seconds"] = round(time.monotonic() - started)
    (RESULTS / f"{mode}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = report(results)
    (RESULTS / f"{mode}.md").write_text(text)
    print(text)
    say(f"done in {results['seconds']} s: results/{mode}.json, results/{mode}.md")


if __name__ == "__main__":
    main()
