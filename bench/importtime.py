"""``python bench/importtime.py``: what the gateway imports before it serves, and what each costs.

Starts ``python -X importtime -m equabot_gw`` with ``bench/gateway.json5``
``--runs`` times (after one start that fills the bytecode caches), waits for
its first 200 on ``GET /health``, stops it, and reads the interpreter's
import report. Per module it keeps the fastest of the runs (the least
disturbed by other work on a shared machine) and prints the total of every
module's own time, the gateway's own modules and the largest entries, so two
commits can be compared by their import sets and costs.

``--instructions`` counts, under callgrind, the instructions from the
interpreter's start to the moment the server listens (the process exits
there), for equabot_gw and for uvicorn+Starlette (h11), each run by
``--python`` (a venv with the peers, e.g. ``bench/.venv/bin/python``): the
drift-free figure for the start-up part of S5 on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


# Bytecode is cached (and rewritten when stale) as in S5: PYTHONDONTWRITEBYTECODE
# in the caller's environment would leave every edited module compiled at each start.
_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "BENCH_UPSTREAM_PORT": "9"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_start(python: str) -> tuple[dict[str, tuple[int, int]], float]:
    """{module: (self µs, cumulative µs)} of one start, and its spawn → first 200 in ms."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as state:
        began = time.perf_counter()
        child = subprocess.Popen(
            [python, "-X", "importtime", "-m", "equabot_gw", "--config", str(BENCH / "gateway.json5"),
             "--port", str(port), "--state-dir", state, "--log-level", "warning"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=_ENV)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.001)
        first_200 = (time.perf_counter() - began) * 1000
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=10)
    modules = {}
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            own, cumulative, name = line[len("import time:"):].split("|")
            modules[name.strip()] = (int(own), int(cumulative))
    return modules, first_200


_GW_START = """
import os, sys
sys.argv = ["equabot_gw", "--config", "bench/gateway.json5", "--port", "0", "--state-dir", sys.argv[1],
            "--log-level", "warning"]
from equabot_gw import cli
cli._announce = lambda *args, **kwargs: os._exit(0)      # listening: stop counting here
cli.main()
"""

_UVICORN_START = """
import os, sys
import uvicorn.server
async def listening(self):
    os._exit(0)                                          # listening: stop counting here
uvicorn.server.Server.main_loop = listening
sys.argv = ["uvicorn", "starlette_app:app", "--app-dir", "servers", "--host", "127.0.0.1", "--port", "0",
            "--loop", "asyncio", "--http", "h11", "--log-level", "warning", "--no-access-log"]
from uvicorn.main import main
main()
"""


def start_instructions(python: str, code: str, cwd: Path) -> int:
    """Instructions from the interpreter's start until the server listens (callgrind)."""
    env = {**_ENV, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory() as state:
        subprocess.run([python, "-c", code, state], cwd=cwd, env=env, check=True)   # bytecode caches
        done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                               python, "-c", code, state], cwd=cwd, capture_output=True, text=True,
                              env=env)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].strip())
    raise SystemExit(f"valgrind gave no count:\n{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--instructions", action="store_true",
                        help="count start-up instructions of equabot_gw and uvicorn+Starlette instead")
    args = parser.parse_args()
    if args.instructions:
        gw = start_instructions(args.python, _GW_START, ROOT)
        peer = start_instructions(args.python, _UVICORN_START, BENCH)
        print(f"instructions to listening: equabot_gw {gw:,}, uvicorn+starlette (h11) {peer:,}, "
              f"ratio {gw / peer:.3f}")
        return
    one_start(args.python)                                   # fills the bytecode caches
    runs = [one_start(args.python) for _ in range(args.runs)]
    best: dict[str, tuple[int, int]] = {}
    for modules, _ in runs:
        for name, (own, cumulative) in modules.items():
            old = best.get(name)
            best[name] = (min(own, old[0]), min(cumulative, old[1])) if old else (own, cumulative)
    starts = sorted(ms for _, ms in runs)
    ours = {n: v for n, v in best.items() if n.startswith("equabot_gw")}
    print(f"modules imported: {len(best)} ({len(ours)} of equabot_gw); spawn -> first 200 "
          f"median {starts[len(starts) // 2]:.1f} ms, fastest {starts[0]:.1f} ms ({args.runs} starts)")
    print(f"sum of own import times (fastest per module): all {sum(v[0] for v in best.values()) / 1000:.1f} ms, "
          f"equabot_gw {sum(v[0] for v in ours.values()) / 1000:.1f} ms")
    print(f"{'own ms':>8} {'cumul ms':>9}  module")
    for name, (own, cumulative) in sorted(best.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{own / 1000:8.2f} {cumulative / 1000:9.2f}  {name}")
    print("equabot_gw modules: " + " ".join(sorted(ours)))


if __name__ == "__main__":
    main()
