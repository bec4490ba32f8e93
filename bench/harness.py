"""The benchmark's machinery, shared by every scenario: servers, load, quiet-machine checks, tables.

``run.py`` (the orchestrator), ``proxies.py`` (S4), ``store_growth.py`` (S6)
and ``profile_gw.py`` use it. A server under test is pinned to
``SERVER_CORE``; wrk and ``loadgen.py`` run on ``LOAD_CORE``. See
bench/README.md for what each figure means.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
LITELLM = "litellm"
BENCH_TOKEN = "bench-token-0123456789abcdef"          # bench/gateway.json5's token
LITELLM_TOKEN = "sk-bench-token-0123456789abcdef"      # bench/litellm.yaml's master key


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
    s4_rates: tuple[float, ...] = (20.0, 50.0, 200.0, 500.0)
    s4_peer_max_rate: float = 200.0     # LiteLLM is not driven past this (one worker saturates)
    s4_stream_conns: int = 16           # "16 streams": closed loop, TTFB and total
    s4_throughput_conns: int = 64       # "64 connections": closed loop, throughput
    s4_start_reps: int = 3              # cold starts of each proxy (0: use the S4 servers' own start)
    s5_reps: int = 20
    s6_sessions: int = 10_000
    s6_rounds: int = 2
    s6_seconds: float = 8.0
    s6_warmup: float = 2.0
    s6_fill_conns: int = 64


FULL = Settings()
QUICK = Settings(rounds=1, s1_seconds=3, s1_warmup=1, s2_seconds=3, s2_warmup=0.5, s3_rounds=1,
                 s3_idle_hold=2, s4_seconds=2,
                 s4_rates=(20.0, 200.0, 500.0), s4_start_reps=0, s5_reps=4, s6_sessions=2_000,
                 s6_rounds=1, s6_seconds=3, s6_warmup=1)


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
    if name == LITELLM:
        return [str(BENCH / ".venv" / "bin" / "litellm"), "--config", "litellm.yaml", "--host",
                "127.0.0.1", "--port", str(port), "--num_workers", "1"], BENCH
    raise ValueError(name)


def health_path(name: str) -> str:
    """The unauthenticated liveness path of a server (LiteLLM's /health calls the models)."""
    return "/health/liveliness" if name == LITELLM else "/health"


def start_timeout(name: str) -> float:
    return 180.0 if name == LITELLM else 20.0


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
        self.start_ms: float | None = None  # spawn → first 200 of start()

    def spawn(self) -> None:
        argv, cwd = _argv(self.name, self.port, self.state_dir)
        env = dict(os.environ, BENCH_UPSTREAM_PORT=str(self.upstream_port), PYTHONUNBUFFERED="1",
                   BENCH_UPSTREAM_BASE=f"http://127.0.0.1:{self.upstream_port}/v1",
                   LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
        log = open(RESULTS / "logs" / f"{re.sub(r'[^a-z0-9]+', '-', self.name.lower())}.log", "ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(["taskset", "-c", self.core] + self.wrapper + argv, cwd=cwd, env=env,
                                     stdout=log, stderr=log, preexec_fn=_raise_nofile)
        log.close()

    def start(self) -> "Server":
        self.spawn()
        deadline = time.monotonic() + start_timeout(self.name)
        while http_get(self.port, health_path(self.name), 0.5) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start (see results/logs/)")
            time.sleep(0.02)
        self.start_ms = round((time.perf_counter() - self.started_at) * 1000, 1)
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

    def tree_rss_mb(self) -> float:
        """VmRSS of the process and all its descendants, in MB (a server may fork workers)."""
        total, pending = 0, [self.proc.pid]
        while pending:
            pid = pending.pop()
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
        return round(total / 1e6, 1)

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
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - wall0
    server_cpu = server.cpu_seconds() - server0
    if "WRKJSON " not in done.stdout:
        problem = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]
        say(f"!! wrk failed: {problem}")
        return {"requests": 0, "errors": 1, "error_kinds": {f"wrk failed: {problem}": 1}}
    data = json.loads(done.stdout.split("WRKJSON ", 1)[1].splitlines()[0])
    seconds_run = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"requests": data["requests"], "requests_per_s": round(data["requests"] / seconds_run, 1),
            "requests_per_cpu_s": round(data["requests"] / server_cpu, 1) if server_cpu else None,
            "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000,
            "errors": errors, "server_cpu": round(server_cpu / wall, 3),
            "server_rss_mb": server.memory_mb()["VmRSS"],
            "loadgen_cpu": round((_children_cpu() - cpu0) / wall, 3)}


def loadgen(command: str, port: int, body: str, **options) -> dict:
    """One ``loadgen.py`` measurement; a load generator that fails is a result with no samples."""
    cmd = ["taskset", "-c", LOAD_CORE, PY, str(BENCH / "loadgen.py"), command, "--port", str(port),
           "--body-file", _body_file(body)]
    for key, value in options.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        problem = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]
        say(f"!! loadgen {command} failed: {problem}")
        return {"requests": 0, "errors": 1, "error_kinds": {f"load generator failed: {problem}": 1}}


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


def _samples(m: dict, text: str) -> str:
    """``text``, or "no samples" when the measurement got no successful request."""
    return text if m.get("requests", 1) else "no samples"


def _cold_start(name: str) -> dict:
    """Spawn → first 200 on the health path (polled every ~1 ms, every 10 ms after 2 s); RSS 0.5 s later."""
    server = Server(name)
    server.spawn()
    status, path, limit = 0, health_path(name), start_timeout(name)
    while status != 200 and server.proc.poll() is None and \
            time.perf_counter() - server.started_at < limit:
        status = http_get(server.port, path)
        if status != 200:
            time.sleep(0.001 if time.perf_counter() - server.started_at < 2 else 0.01)
    first = (time.perf_counter() - server.started_at) * 1000
    try:
        time.sleep(0.5)
        rss = server.tree_rss_mb() if status == 200 else None
    finally:
        server.stop()
    return {"first_200_ms": round(first, 1), "idle_rss_mb": rss, "errors": int(status != 200)}
