"""The benchmark's Python load client: streams, idle connections, paced requests.

Run by ``run.py`` on the load core, one command per measurement; prints one
JSON object (``idle`` first prints a ``READY`` line while it holds its
connections). It reads responses without parsing events one by one: it counts
``data:`` with ``bytes.count`` on whatever each read returned and spots the
end of a chunked body by its last bytes, so its cost is per read, not per
event (its own CPU use is reported as ``loadgen_cpu`` to show it has room).
It uses uvloop when installed: the client must not be the bottleneck.

Commands:
  stream  closed loop on C keep-alive connections for D seconds (S2)
  paced   C connections sending R requests/s in all (0: closed loop) (S4)
  idle    open N connections, one request each, then hold them idle (S3)
  slow    N concurrent streams at once, each on its own connection (S3)
  sessions  N requests on C connections, each with a fresh session key (S6)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

TOKEN = "bench-token-0123456789abcdef"
_END_CHUNKED = b"\r\n0\r\n\r\n"


def request_bytes(port: int, body: bytes, extra: str = "", token: str = TOKEN) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


class ResponseError(Exception):
    pass


class Client(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` sends a request and reads its whole response."""

    window: tuple[float, float] = (0.0, float("inf"))   # events counted in this time span
    events_in_window = 0
    events_total = 0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self._done is not None and not self._done.done():
            self._done.set_exception(ResponseError("connection closed by server"))

    async def exchange(self, request: bytes) -> dict:
        """Send ``request``; returns status, events, ttfb, first_event, total (seconds)."""
        if self.lost.done():
            raise ResponseError("connection closed by server")
        self._done = asyncio.get_running_loop().create_future()
        self._head = b""
        self._in_head = True
        self._status = 0
        self._remaining = -1            # content-length left, -1 for chunked
        self._tail = b""
        self._events = 0
        self._first_byte = self._first_event = 0.0
        self._sent = time.perf_counter()
        self.transport.write(request)
        await self._done
        end = time.perf_counter()
        return {"status": self._status, "events": self._events,
                "ttfb": self._first_byte - self._sent,
                "first_event": (self._first_event or end) - self._sent, "total": end - self._sent}

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self._first_byte:
            self._first_byte = now
        if self._in_head:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end].lower(), self._head[end + 4:]
            self._in_head = False
            self._status = int(head[9:12])
            if b"transfer-encoding: chunked" not in head:
                at = head.find(b"content-length:")
                self._remaining = int(head[at + 15:head.find(b"\r\n", at)]) if at >= 0 else 0
        # "data:" never fits in the 4 bytes carried over, so nothing is counted twice.
        scan = self._tail + data
        events = scan.count(b"data:")
        if events:
            if not self._first_event:
                self._first_event = now
            self._events += events
            Client.events_total += events
            low, high = Client.window
            if low <= now <= high:
                Client.events_in_window += events
        if self._remaining >= 0:
            self._remaining -= len(data)
            finished = self._remaining <= 0
        else:
            finished = scan.endswith(_END_CHUNKED)
        self._tail = scan[-7:]
        if finished and self._done is not None and not self._done.done():
            self._done.set_result(None)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _connect(port: int) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(Client, "127.0.0.1", port)
    return client


def _check(result: dict, expect_events: int | None) -> str | None:
    if result["status"] != 200:
        return f"status {result['status']}"
    # A stream may join words that were produced in one step into one event (the
    # gateway does): so expect_events bounds the count, it does not fix it.
    if expect_events is not None and not 3 <= result["events"] <= expect_events:
        return f"{result['events']} events (expected 3 to {expect_events})"
    return None


async def closed_or_paced(args: argparse.Namespace) -> dict:
    """S2 and S4: C connections, closed loop or a fixed total rate, warm-up then measure."""
    body = open(args.body_file, "rb").read()
    request = request_bytes(args.port, body, token=args.token)
    clients = [await _connect(args.port) for _ in range(args.conns)]
    start = time.perf_counter()
    measure_from = start + args.warmup
    measure_to = measure_from + args.duration
    Client.window = (measure_from, measure_to)
    results: list[dict] = []
    errors: dict[str, int] = {}
    period = args.conns / args.rate if args.rate else 0.0

    async def worker(i: int, client: Client) -> None:
        next_at = start + period * i / args.conns
        while True:
            if period:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at = max(next_at + period, time.perf_counter())
            began = time.perf_counter()
            if began >= measure_to:
                return
            try:
                result = await client.exchange(request)
            except ResponseError as exc:
                errors[str(exc)] = errors.get(str(exc), 0) + 1
                return
            problem = _check(result, args.expect_events)
            if began >= measure_from:
                if problem:
                    errors[problem] = errors.get(problem, 0) + 1
                else:
                    results.append(result)

    async def sample_cpu() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        return _cpu(), time.perf_counter()

    cpu_task = asyncio.ensure_future(sample_cpu())
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    cpu0, wall0 = await cpu_task
    wall = time.perf_counter() - wall0
    cpu = _cpu() - cpu0
    for c in clients:
        c.transport.close()
    totals = [r["total"] for r in results]
    ttfb = [r["ttfb"] for r in results]
    first = [r["first_event"] for r in results]
    return {
        "requests": len(results), "requests_per_s": round(len(results) / args.duration, 1),
        "events": Client.events_in_window,
        "events_per_s": round(Client.events_in_window / args.duration, 1),
        "events_total": Client.events_total,
        "latency_p50_ms": _ms(_percentile(totals, 50)), "latency_p99_ms": _ms(_percentile(totals, 99)),
        "ttfb_p50_ms": _ms(_percentile(ttfb, 50)), "ttfb_p99_ms": _ms(_percentile(ttfb, 99)),
        "first_event_p50_ms": _ms(_percentile(first, 50)),
        "first_event_p99_ms": _ms(_percentile(first, 99)),
        "errors": sum(errors.values()), "error_kinds": errors,
        "loadgen_cpu": round(cpu / wall, 3) if wall > 0 else None,
    }


async def idle(args: argparse.Namespace) -> dict:
    """S3: N connections, each answers one completion, then all sit idle for ``hold`` s."""
    body = open(args.body_file, "rb").read()
    request = request_bytes(args.port, body, token=args.token)
    gate = asyncio.Semaphore(args.opening)
    errors: dict[str, int] = {}
    clients: list[Client] = []

    async def open_one() -> None:
        async with gate:
            try:
                client = await _connect(args.port)
                result = await asyncio.wait_for(client.exchange(request), 30)
            except (OSError, ResponseError, asyncio.TimeoutError) as exc:
                kind = type(exc).__name__ if not isinstance(exc, ResponseError) else str(exc)
                errors[kind] = errors.get(kind, 0) + 1
                return
            problem = _check(result, None)
            if problem:
                errors[problem] = errors.get(problem, 0) + 1
            clients.append(client)

    began = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(args.conns)))
    opened = time.perf_counter() - began
    print(json.dumps({"ready": True, "open": len(clients)}), flush=True)
    await asyncio.sleep(args.hold)
    closed = sum(1 for c in clients if c.lost.done())
    if closed:
        errors["closed while idle"] = closed
    for c in clients:
        c.transport.close()
    return {"connections": args.conns, "open_after_hold": len(clients) - closed,
            "open_seconds": round(opened, 2), "errors": sum(errors.values()),
            "error_kinds": errors}


async def slow(args: argparse.Namespace) -> dict:
    """S3: N streams started together, each on its own connection; all must complete."""
    body = open(args.body_file, "rb").read()
    request = request_bytes(args.port, body, token=args.token)
    errors: dict[str, int] = {}
    durations: list[float] = []
    gate = asyncio.Semaphore(args.opening)

    async def one() -> None:
        try:
            async with gate:
                client = await _connect(args.port)
            result = await asyncio.wait_for(client.exchange(request), 60)
        except (OSError, ResponseError, asyncio.TimeoutError) as exc:
            kind = type(exc).__name__ if not isinstance(exc, ResponseError) else str(exc)
            errors[kind] = errors.get(kind, 0) + 1
            return
        client.transport.close()
        problem = _check(result, args.expect_events)
        if problem:
            errors[problem] = errors.get(problem, 0) + 1
        else:
            durations.append(result["total"])

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(args.conns)))
    return {"streams": args.conns, "completed": len(durations),
            "wall_seconds": round(time.perf_counter() - began, 2),
            "stream_p50_ms": _ms(_percentile(durations, 50)),
            "stream_p99_ms": _ms(_percentile(durations, 99)),
            "stream_max_ms": _ms(max(durations) if durations else None),
            "errors": sum(errors.values()), "error_kinds": errors}


async def sessions(args: argparse.Namespace) -> dict:
    """S6: ``count`` requests on C keep-alive connections, each with a fresh session key.

    Every request starts a new keyed session (one turn). Reports the rate over
    all of them and over the first and last tenth, to show whether creating a
    session gets slower as the store grows.
    """
    body = open(args.body_file, "rb").read()
    prefix = f"s6-{time.time_ns():x}-"
    clients = [await _connect(args.port) for _ in range(args.conns)]
    issued = 0
    finished: list[float] = []          # completion time of each request, in order
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def worker(client: Client) -> None:
        nonlocal issued
        while issued < args.count:
            issued += 1
            extra = f"x-equabot-session-key: {prefix}{issued}\r\n"
            try:
                result = await asyncio.wait_for(
                    client.exchange(request_bytes(args.port, body, extra, args.token)), 30)
            except (ResponseError, asyncio.TimeoutError) as exc:
                errors[str(exc) or type(exc).__name__] = errors.get(str(exc) or type(exc).__name__, 0) + 1
                return
            problem = _check(result, None)
            if problem:
                errors[problem] = errors.get(problem, 0) + 1
            else:
                latencies.append(result["total"])
            finished.append(time.perf_counter())

    began = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    wall = time.perf_counter() - began
    for c in clients:
        c.transport.close()
    tenth = max(1, len(finished) // 10)

    def rate(times: list[float], since: float) -> float | None:
        return round(len(times) / (times[-1] - since), 1) if times and times[-1] > since else None

    return {"sessions": len(latencies), "seconds": round(wall, 2),
            "sessions_per_s": round(len(latencies) / wall, 1) if wall else None,
            "first_tenth_per_s": rate(finished[:tenth], began),
            "last_tenth_per_s": rate(finished[-tenth:], finished[-tenth - 1]) if len(finished) > tenth else None,
            "latency_p50_ms": _ms(_percentile(latencies, 50)),
            "latency_p99_ms": _ms(_percentile(latencies, 99)),
            "errors": sum(errors.values()), "error_kinds": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("stream", "paced", "idle", "slow", "sessions"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--rate", type=float, default=0.0, help="paced: requests/s in all")
    parser.add_argument("--expect-events", type=int, default=None)
    parser.add_argument("--hold", type=float, default=3.0, help="idle: seconds to hold")
    parser.add_argument("--opening", type=int, default=256, help="connections opened at once")
    parser.add_argument("--count", type=int, default=1000, help="sessions: requests (= new sessions)")
    parser.add_argument("--token", default=TOKEN, help="the bearer token to send")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    command = {"stream": closed_or_paced, "paced": closed_or_paced, "idle": idle,
               "slow": slow, "sessions": sessions}[args.command]
    print(json.dumps(asyncio.run(command(args))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
