"""``make -C bench instructions``: instructions per request, counted by callgrind.

Wall-clock figures on this VM drift by ±15% between runs, which hides any
change under that. The number of instructions the interpreter executes per
request does not drift (repeat runs agree within ~0.5%), so a hot-path
change can be judged by it, before and after. It counts user-space
instructions only: system calls (send, recv, fdatasync) and the kernel's
share of them are not in it, so it complements the timed scenarios and does
not replace them.

Two workloads, each run in process by this file (``--inner``) under
``valgrind --tool=callgrind`` twice, with a small and a large request count;
the difference divided by the difference of the counts removes start-up:

* ``s1``: 64 connections with in-memory transports feed the gateway's own
  HTTP server the non-streaming echo completion of scenario 1 (parser,
  validation, agent run, fsynced journal append, response), no sockets.
* ``s2``: as ``s1`` with a streamed request instead: a 256-word message
  whose echo streams as SSE (one event per word while the client keeps up,
  joined as the server joins deltas that piled up; the in-memory client
  takes every write at once).
* ``s4``: 8 socket connections stream the proxy completion of scenario 4
  (agent ``proxy`` → the raw upstream, which runs outside valgrind); the
  in-process client's own cost is included and constant.
* ``peers``: scenario 1 as ``make bench`` serves it, over sockets, with the
  server itself under valgrind and its client outside: equabot_gw (bench
  config, fsynced journal), uvicorn+Starlette (h11) and aiohttp (canned
  bytes), started as ``run.py`` starts them. The S1 ratios without the
  VM's drift: the server's own instructions per request (the kernel's share
  of its system calls aside, as above).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
COUNTS = {"s1": (1000, 3000), "s2": (100, 400), "s4": (300, 1100), "peers": (500, 2500)}
PEER_CONNECTIONS = 16
TOKEN = "t"
S1_BODY = (b'{"model":"equabot","messages":[{"role":"user","content":'
           b'"alpha bravo charlie delta echo foxtrot golf hotel india"}]}')
STREAM_WORDS = 256
S2_BODY = (b'{"model":"equabot","stream":true,"messages":[{"role":"user","content":"'
           + " ".join(f"w{i}" for i in range(STREAM_WORDS)).encode() + b'"}]}')
S4_BODY = (b'{"model":"equabot:proxy","stream":true,'
           b'"messages":[{"role":"user","content":"hello world"}]}')


def _request(body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def _config(upstream_port: int | None) -> dict:
    data: dict = {"gateway": {"auth": {"token": TOKEN},
                              "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
                  "agents": {"defaults": {"maxConcurrent": 4096, "maxQueued": 16384},
                             "list": [{"id": "main", "default": True}]}}
    if upstream_port is not None:
        data["agents"]["list"].append({"id": "proxy", "model": "upstream/m"})
        data["models"] = {"providers": {"upstream": {
            "api": "openai-completions", "apiKey": "k",
            "baseUrl": f"http://127.0.0.1:{upstream_port}/v1"}}}
    return data


class _MemoryTransport(asyncio.Transport):
    """A client that sends its next request as soon as a response was written whole
    (``ends``: whether a write is a response's last)."""

    def __init__(self, on_answer, ends) -> None:
        super().__init__()
        self.on_answer = on_answer
        self.ends = ends
        self.protocol: asyncio.Protocol | None = None

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def write(self, data) -> None:
        if self.ends(data):
            self.on_answer(self)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False


async def _in_memory(gateway, count: int, body: bytes, ends) -> None:
    """``count`` requests of ``body`` over 64 in-memory connections, each sent when its
    connection's previous response ended."""
    from equabot_gw.net import connection as connection_mod
    loop = asyncio.get_running_loop()
    request = _request(body)
    state = {"sent": 0, "done": 0}
    finished = loop.create_future()

    def answered(transport: _MemoryTransport) -> None:
        state["done"] += 1
        if state["done"] >= count and not finished.done():
            finished.set_result(None)
        elif state["sent"] < count:
            state["sent"] += 1
            loop.call_soon(transport.protocol.data_received, request)

    for _ in range(64):
        conn = connection_mod.Connection(gateway.server)
        transport = _MemoryTransport(answered, ends)
        transport.protocol = conn
        conn.connection_made(transport)
        if state["sent"] < count:
            state["sent"] += 1
            conn.data_received(request)
    await finished


async def _s1(gateway, count: int) -> None:
    await _in_memory(gateway, count, S1_BODY, lambda data: True)    # one write per response


async def _s2(gateway, count: int) -> None:
    # A chunked body ends with its last chunk, "0" CRLF CRLF; no data chunk ends so.
    await _in_memory(gateway, count, S2_BODY, lambda data: bytes(data).endswith(b"0\r\n\r\n"))


async def _s4(gateway, count: int) -> None:
    request = _request(S4_BODY)

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
        for _ in range(n):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer: {head[:60]!r}")
            await reader.readuntil(b"\r\n0\r\n\r\n")
        writer.close()

    await asyncio.gather(*(client(count // 8) for _ in range(8)))


async def _inner(workload: str, count: int, upstream_port: int | None) -> None:
    sys.path.insert(0, str(ROOT))
    from equabot_gw import cli, config
    from equabot_gw.gateway.app import Gateway
    with tempfile.TemporaryDirectory() as state:
        gateway = Gateway(config.from_data(_config(upstream_port), env={}), Path(state),
                          host="127.0.0.1", port=0, env={})
        await gateway.start()
        gc.set_threshold(cli.GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])   # as the command line runs it
        try:
            await {"s1": _s1, "s2": _s2, "s4": _s4}[workload](gateway, count)
        finally:
            await gateway.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _collected(workload: str, count: int, upstream_port: int | None) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, __file__, "--inner", workload, str(count)]
    if upstream_port is not None:
        command.append(str(upstream_port))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].strip())
    raise SystemExit(f"valgrind gave no count for {workload}:\n{done.stderr[-2000:]}")


def measure(workload: str) -> float:
    """Instructions per request of ``workload`` ("s1", "s2" or "s4")."""
    upstream = None
    port = None
    if workload == "s4":
        port = _free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(BENCH / "servers" / "raw_asyncio.py"), "--upstream", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    try:
        small, large = COUNTS[workload]
        return (_collected(workload, large, port) - _collected(workload, small, port)) / (large - small)
    finally:
        if upstream is not None:
            upstream.kill()
            upstream.wait()


def _served(name: str, count: int) -> int:
    """Instructions a server (``harness`` name) executes from start to exit when it
    answers ``count`` S1 requests in between, over ``PEER_CONNECTIONS`` keep-alive
    connections from this process."""
    import harness
    import workloads
    server = harness.Server(name)
    server.wrapper = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    argv, cwd = harness._argv(name, server.port, server.state_dir)
    env = dict(os.environ, PYTHONHASHSEED="0", BENCH_UPSTREAM_PORT="9")
    proc = subprocess.Popen(server.wrapper + argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while harness.http_get(server.port, "/health", 1.0) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start under valgrind")
            time.sleep(0.2)
        body = workloads.COMPLETE
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Authorization: Bearer bench-token-0123456789abcdef\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body

        async def client(n: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for _ in range(n):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"{name}: unexpected answer {head[:60]!r}")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
            writer.close()

        async def load() -> None:
            await asyncio.gather(*(client(count // PEER_CONNECTIONS) for _ in range(PEER_CONNECTIONS)))

        asyncio.run(load())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", server.state_dir], check=False)
    for line in err.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].strip())
    raise SystemExit(f"valgrind gave no count for {name}:\n{err[-2000:]}")


def peers() -> dict[str, float]:
    """S1 instructions per request of equabot_gw and its timed peers, each server alone."""
    import harness
    small, large = COUNTS["peers"]
    figures = {}
    for name in (harness.GW, harness.STARLETTE, harness.AIOHTTP):
        figures[name] = (_served(name, large) - _served(name, small)) / (large - small)
        print(f"  {name}: {figures[name]:,.0f}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="s1,s2,s4", help="comma-separated workloads: s1, s2, s4, peers")
    parser.add_argument("--inner", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        workload, count, *port = args.inner
        asyncio.run(_inner(workload, int(count), int(port[0]) if port else None))
        return
    for workload in args.only.split(","):
        started = time.monotonic()
        if workload == "peers":
            figures = peers()
            gw = figures.pop("equabot_gw")
            print("peers (S1 over sockets, server instructions per request): equabot_gw "
                  f"{gw:,.0f}; " + "; ".join(f"{name} {n:,.0f} ({n / gw:.2f}× equabot_gw's)"
                                            for name, n in figures.items())
                  + f" ({time.monotonic() - started:.0f} s)", flush=True)
            continue
        figure = measure(workload)
        print(f"{workload}: {figure:,.0f} instructions per request "
              f"({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
