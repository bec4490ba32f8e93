"""Every buffer of the network layer has a byte bound and every wait a deadline.

Each test attacks one buffer of ``equabot_gw/net`` over real loopback sockets
(a client that never reads, one that pipelines forever, tiny WebSocket
fragments, trailer floods), samples the buffer on the server side while the
attack runs, and checks two things: the buffer stays under its documented
bound (with room), and a neighbour polling ``GET /health`` every 10 ms on its
own connection keeps getting answers fast (a sanity bound: 250 ms). Time is
scaled down: the send timeout is 0.3 s instead of 60 s.

The table in docs/architecture.md ("Limits and memory per connection") names
each buffer, its bound and the test here that proves it.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
import unittest
from unittest import mock
from collections.abc import AsyncIterator, Callable
from typing import Any

from equabot_gw.net import (
    connection as connection_mod, http11, output, server as server_mod, websocket as ws_codec, wsstream,
)
from equabot_gw.net.accesslog import AccessLog
from equabot_gw.net.routes import HTTPRequest, Response, Router, StreamingResponse, Upgrade
from equabot_gw.net.wshandshake import server_handshake
from equabot_gw.net.wsstream import WebSocket

SEND_TIMEOUT = 0.3          # Limits.send_timeout for these servers (60 s by default)
NEIGHBOUR_BOUND = 0.25      # the slowest /health answer a neighbour may see, seconds
MASK = b"\x01\x02\x03\x04"
# Unsent HTTP output: the high-water mark, plus what one step may write past it
# (the corked bytes and one piece), plus a head.
OUTPUT_BOUND = output.WRITE_HIGH_WATER_BYTES + 2 * output.MAX_WRITE_PIECE_BYTES + 8192
# Received bytes ahead of the request loop: the cap plus one read (asyncio reads 256 KiB at most).
READ_AHEAD_BOUND = connection_mod.MAX_PIPELINE_BUFFER_BYTES + 256 * 1024


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    key = (MASK * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + MASK + masked


# -- the server under attack ---------------------------------------------------------

class Target:
    """An ``HTTPServer`` on port 0 with routes for each attack, and the WebSockets it made."""

    def __init__(self, *, ws_options: dict[str, Any] | None = None,
                 ws_app: Callable[[WebSocket], Any] | None = None) -> None:
        self.sockets: list[WebSocket] = []
        self.ws_options = ws_options or {}
        self.ws_app = ws_app or self._echo
        router = Router()
        router.add("/health", ("GET",), self.health)
        router.add("/big/{size}", ("GET",), self.big)
        router.add("/huge/{size}", ("GET",), self.huge)
        router.add("/many/{count}", ("GET",), self.many)
        router.add("/slow", ("GET",), self.slow)
        router.add("/upload", ("POST",), self.upload)
        router.add("/ws", ("GET",), self.upgrade)
        self.server = server_mod.HTTPServer(router, limits=server_mod.Limits(
            send_timeout=SEND_TIMEOUT, body_timeout=0.3, header_timeout=0.3, keep_alive_timeout=0.5))

    async def __aenter__(self) -> Target:
        await self.server.start("127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in self.sockets:
            if ws._transport is not None:
                ws._transport.abort()
        await self.server.shutdown(0.5)

    @property
    def port(self) -> int:
        return self.server.port

    def http_connections(self) -> list[connection_mod.Connection]:
        return [c for c in self.server.connections if not c._upgraded]

    # -- routes --
    async def health(self, request: HTTPRequest) -> Response:
        return Response(200, [("content-type", "application/json")], b'{"status":"ok"}')

    async def big(self, request: HTTPRequest) -> Response:
        return Response(200, [("content-type", "application/octet-stream")],
                        b"b" * int(request.params["size"]))

    async def huge(self, request: HTTPRequest) -> StreamingResponse:
        size = int(request.params["size"])

        async def body() -> AsyncIterator[bytes]:
            yield b"data: " + b"w" * size + b"\n\n"       # one SSE event, one huge piece

        return StreamingResponse(200, [("content-type", "text/event-stream")], body())

    async def many(self, request: HTTPRequest) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(int(request.params["count"])):
                yield b"data: " + b"w" * 1000 + b"\n\n"
                await asyncio.sleep(0)

        return StreamingResponse(200, [("content-type", "text/event-stream")], body())

    async def slow(self, request: HTTPRequest) -> Response:
        await asyncio.sleep(0.5)
        return await self.health(request)

    async def upload(self, request: HTTPRequest) -> Response:
        return Response(200, [], b"%d" % len(request.body))

    async def upgrade(self, request: HTTPRequest) -> Upgrade:
        headers = server_handshake(request.method, request.version, request.headers)

        def factory() -> WebSocket:
            ws = WebSocket(client=False, close_timeout=0.5, **self.ws_options)
            self.sockets.append(ws)
            return ws

        return Upgrade(headers, factory, self.ws_app)

    @staticmethod
    async def _echo(ws: WebSocket) -> None:
        try:
            async for message in ws:
                ws.send(message)
        except Exception:
            pass
        await ws.wait_closed()


class Neighbour:
    """Polls ``GET /health`` every 10 ms on its own connection; ``slowest`` is its worst wait."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.slowest = 0.0
        self.answers = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Neighbour:
        self._task = asyncio.create_task(self._poll())
        await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _poll(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while True:
                # Timed from the start of the 10 ms pause: a loop held while the
                # neighbour waits to send counts too.
                started = time.monotonic()
                await asyncio.sleep(0.01)
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readuntil(b'{"status":"ok"}')
                self.slowest = max(self.slowest, time.monotonic() - started - 0.01)
                self.answers += 1
        finally:
            writer.close()


class Sampler:
    """Records the largest value of ``probe()`` every 2 ms while the attack runs."""

    def __init__(self, probe: Callable[[], int]) -> None:
        self.probe = probe
        self.largest = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        while True:
            self.largest = max(self.largest, self.probe())
            await asyncio.sleep(0.002)


async def silent_client(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that sends ``request`` and never reads (a small receive window, reading paused)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.transport.pause_reading()
    writer.write(request)
    return reader, writer


async def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def largest_unsent(target: Target) -> int:
    return max((c._unsent_bytes() for c in target.http_connections()), default=0)


def largest_read_ahead(target: Target) -> int:
    return max((c.parser.buffered_bytes for c in target.http_connections()), default=0)


class BoundsTestCase(unittest.IsolatedAsyncioTestCase):
    def assertNeighbourFine(self, neighbour: Neighbour) -> None:
        self.assertGreater(neighbour.answers, 0)
        self.assertLess(neighbour.slowest, NEIGHBOUR_BOUND)


# -- HTTP ---------------------------------------------------------------------------------

class HTTPOutputBounds(BoundsTestCase):
    """Output per response kind (plain, streamed) to a client that never reads: bounded, then dropped."""

    async def attack_silently(self, request: bytes) -> tuple[int, float]:
        async with Target() as target, Neighbour(target.port) as neighbour:
            async with Sampler(lambda: largest_unsent(target)) as sampler:
                _, writer = await silent_client(target.port, request)
                # Dropped: only the neighbour's connection is left.
                took = await wait_until(lambda: target.server.connection_count == 1, SEND_TIMEOUT + 3.0)
            writer.close()
            self.assertNeighbourFine(neighbour)
        self.assertLessEqual(sampler.largest, OUTPUT_BOUND)
        return sampler.largest, took

    async def test_plain_16_mib_response_never_read(self) -> None:
        largest, _ = await self.attack_silently(b"GET /big/16777216 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertGreater(largest, 0)

    async def test_one_huge_sse_piece_never_read(self) -> None:
        await self.attack_silently(b"GET /huge/16777216 HTTP/1.1\r\nHost: x\r\n\r\n")

    async def test_many_sse_pieces_never_read(self) -> None:
        await self.attack_silently(b"GET /many/1000000 HTTP/1.1\r\nHost: x\r\n\r\n")

    async def test_pipelined_requests_never_read(self) -> None:
        # The client sends pipelined GET /health for as long as the server reads.
        async with Target() as target, Neighbour(target.port) as neighbour:
            async with Sampler(lambda: largest_unsent(target)) as unsent, \
                    Sampler(lambda: largest_read_ahead(target)) as read_ahead:
                _, writer = await silent_client(target.port, b"")
                burst = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
                started = time.monotonic()
                while target.server.connection_count > 1 and time.monotonic() - started < SEND_TIMEOUT + 5:
                    if writer.transport.get_write_buffer_size() < 1 << 20:
                        writer.write(burst)
                    await asyncio.sleep(0.005)
                self.assertEqual(target.server.connection_count, 1, "the silent client was not dropped")
            writer.close()
            self.assertNeighbourFine(neighbour)
        self.assertLessEqual(unsent.largest, OUTPUT_BOUND)
        self.assertLessEqual(read_ahead.largest, READ_AHEAD_BOUND)

    async def test_huge_sse_piece_reaches_a_slow_reader(self) -> None:
        # A slow reader is served however long the whole takes, as long as it keeps reading.
        size = 4 << 20
        async with Target() as target, Neighbour(target.port) as neighbour:
            async with Sampler(lambda: largest_unsent(target)) as sampler:
                reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                writer.write(b"GET /huge/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
                received = bytearray()
                started = time.monotonic()
                while chunk := await reader.read(16 * 1024):
                    received += chunk
                    await asyncio.sleep(0.003)
                elapsed = time.monotonic() - started
            writer.close()
            self.assertNeighbourFine(neighbour)
        head, _, wire = bytes(received).partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(wire.startswith(b"%x\r\ndata: www" % (size + 8)))
        self.assertTrue(wire.endswith(b"w\n\n\r\n0\r\n\r\n"))
        self.assertEqual(len(wire), len(b"%x\r\n" % (size + 8)) + size + 8 + 2 + 5)
        self.assertGreater(elapsed, SEND_TIMEOUT)       # slower than the timeout, never dropped
        self.assertLessEqual(sampler.largest, OUTPUT_BOUND)


class HTTPInputBounds(BoundsTestCase):
    """Read-ahead, trailers, and the waits for a head, a body and the next request."""

    async def test_read_ahead_while_a_handler_runs(self) -> None:
        async with Target() as target, Neighbour(target.port) as neighbour:
            async with Sampler(lambda: largest_read_ahead(target)) as sampler:
                reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 100_000)     # 3.4 MB
                await reader.readuntil(b'{"status":"ok"}')
                await asyncio.sleep(0.05)
            writer.close()
            self.assertNeighbourFine(neighbour)
        self.assertLessEqual(sampler.largest, READ_AHEAD_BOUND)
        self.assertGreater(sampler.largest, 0)

    async def test_trailer_flood(self) -> None:
        # Was: 100 trailer lines of 60 KB (5.7 MiB) accepted. Now 431 within the head's 64 KiB.
        async with Target() as target, Neighbour(target.port) as neighbour:
            async with Sampler(lambda: largest_read_ahead(target)) as sampler:
                reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"1\r\nx\r\n0\r\n")
                for i in range(100):
                    writer.write(b"X-T%d: " % i + b"a" * 60000 + b"\r\n")
                writer.write(b"\r\n")
                answer = await asyncio.wait_for(reader.read(65536), 5)
            writer.close()
            self.assertNeighbourFine(neighbour)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:40])
        self.assertLessEqual(sampler.largest, READ_AHEAD_BOUND)

    async def test_trailer_line_in_small_pieces(self) -> None:
        # One 60 KB trailer line in 1000 pieces: linear work, then 431 (not 2 s of CPU).
        async with Target() as target, Neighbour(target.port) as neighbour:
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
            writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"1\r\nx\r\n0\r\nX-T: ")
            started = time.process_time()
            for _ in range(1100):
                writer.write(b"a" * 60)
                await writer.drain()
                await asyncio.sleep(0)
            answer = await asyncio.wait_for(reader.read(65536), 5)
            cpu = time.process_time() - started
            writer.close()
            self.assertNeighbourFine(neighbour)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:40])
        self.assertLess(cpu, 2.0)           # client and server together; quadratic was seconds alone

    async def test_every_http_wait_has_a_deadline(self) -> None:
        # Head, body and keep-alive waits: each connection is closed within its (scaled) timeout.
        cases = (
            ("head", b"GET /health HTTP/1.1\r\nHost: x\r\n", b"HTTP/1.1 408 "),
            ("body", b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", b"HTTP/1.1 408 "),
            ("keep-alive", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 "),
        )
        async with Target() as target, Neighbour(target.port) as neighbour:
            for name, request, status in cases:
                with self.subTest(name):
                    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                    writer.write(request)
                    started = time.monotonic()
                    data = await asyncio.wait_for(reader.read(), 5)    # until the server closes
                    self.assertLess(time.monotonic() - started, 3.0)
                    self.assertTrue(data.startswith(status), data[:40])
                    writer.close()
            self.assertNeighbourFine(neighbour)


# -- WebSocket ------------------------------------------------------------------------------

async def ws_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def read_close(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, str]:
    """Skip frames until the server's Close; its code and reason."""
    while True:
        head = await asyncio.wait_for(reader.readexactly(2), timeout)
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(n)
        if head[0] & 0x0F == 0x8:
            return int.from_bytes(payload[:2], "big"), payload[2:].decode()


class LingeringCloseBounds(BoundsTestCase):
    """After an error answer the connection half-closes and drops what the client still
    sends: while it keeps sending (so an upload the server refused does not end in a
    reset that destroys the answer), until a pause of ``LINGER_TIMEOUT``, and for
    ``LINGER_MAX_SECONDS`` in all. Scaled down: 0.3 s and 1.5 s."""

    REFUSED = b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"

    def setUp(self) -> None:
        for name, value in (("LINGER_TIMEOUT", 0.3), ("LINGER_MAX_SECONDS", 1.5)):
            patcher = mock.patch.object(connection_mod, name, value)
            patcher.start()
            self.addCleanup(patcher.stop)

    @staticmethod
    def upload(port: int, seconds: float, read: bool) -> tuple[float, bytes]:
        """Send the refused head, then 16 KiB every 50 ms for ``seconds`` (or until the server
        is gone); with ``read``, then end the upload and read the answer. The seconds the
        sending lasted, and what was read."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(LingeringCloseBounds.REFUSED)
            started = time.monotonic()
            try:
                while time.monotonic() - started < seconds:
                    sock.sendall(b"x" * 16384)
                    time.sleep(0.05)
            except OSError:         # the server closed: the next bytes drew a reset
                return time.monotonic() - started, b""
            lasted = time.monotonic() - started
            data = b""
            if read:
                sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(65536):    # a reset raises here
                    data += chunk
            return lasted, data

    async def test_a_client_still_uploading_gets_its_answer_and_a_clean_close(self) -> None:
        async with Target() as target, Neighbour(target.port) as neighbour:
            lasted, data = await asyncio.to_thread(self.upload, target.port, 1.0, True)
            self.assertNeighbourFine(neighbour)
        self.assertGreaterEqual(lasted, 1.0)        # sent for over three pauses' worth: never cut off
        self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:60])     # refused by its length
        self.assertIn(b"connection: close", data)

    async def test_lingering_ends_at_a_pause_and_at_its_bound(self) -> None:
        async with Target() as target:
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
            writer.write(self.REFUSED)              # and then nothing: a pause
            started = time.monotonic()
            await reader.read()                     # the answer, then the server's FIN
            self.assertEqual(len(target.http_connections()), 1)     # half-closed, lingering
            while target.http_connections() and time.monotonic() - started < 3:
                await asyncio.sleep(0.02)
            self.assertFalse(target.http_connections(), "still lingering after a pause")
            self.assertLess(time.monotonic() - started, 1.0)
            writer.close()
            # A client that never stops sending is closed on at the bound.
            lasted, _ = await asyncio.to_thread(self.upload, target.port, 5.0, False)
        self.assertGreater(lasted, 1.4)
        self.assertLess(lasted, 3.0)

    async def test_the_servers_shutdown_ends_a_linger_at_once(self) -> None:
        async with Target() as target:
            sending = asyncio.ensure_future(asyncio.to_thread(self.upload, target.port, 5.0, False))
            while not any(c._linger for c in target.http_connections()):
                await asyncio.sleep(0.02)
            started = time.monotonic()
            await target.server.shutdown(10.0)
            self.assertLess(time.monotonic() - started, 1.0)
            lasted, _ = await sending
        self.assertLess(lasted, 3.0)


class BodyErrorAnswers(unittest.IsolatedAsyncioTestCase):
    """An error in a request's body (its framing, its wait) is that request's answer:
    logged once with its method, path and request id, and echoing the client's
    ``X-Request-Id``, like any other answer to it."""

    async def test_a_bad_chunk_and_a_body_timeout_are_answered_and_logged_as_the_request(self) -> None:
        stream = io.StringIO()
        target = Target()
        target.server.access_log = AccessLog(stream, json_lines=True)
        async with target:
            for name, rest, status in (("bad chunk", b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
                                       ("body timeout", b"Content-Length: 10\r\n\r\nabc", 408)):
                with self.subTest(name):
                    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nX-Request-Id: client-id-1\r\n" + rest)
                    data = await asyncio.wait_for(reader.read(), 5)     # answered, then closed
                    writer.close()
                    self.assertTrue(data.startswith(b"HTTP/1.1 %d " % status), data[:60])
                    self.assertIn(b"x-request-id: client-id-1\r\n", data)
                    target.server.access_log.flush()
                    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
                    stream.truncate(0)
                    stream.seek(0)
                    self.assertEqual([(r["method"], r["path"], r["status"], r["request_id"]) for r in lines],
                                     [("POST", "/upload", status, "client-id-1")])


class WebSocketBounds(BoundsTestCase):
    async def test_tiny_fragments(self) -> None:
        # Was: 24 MiB in 2-byte fragments took 1060 MiB and 82 s of CPU. Now: joined in one
        # buffer, and the fragment count is capped: 1009 after 65,536 fragments (128 KiB here).
        async with Target() as target, Neighbour(target.port) as neighbour:
            def assembling() -> int:
                return max((len(ws._conn._msg_data or b"") for ws in target.sockets), default=0)

            async with Sampler(assembling) as sampler:
                reader, writer = await ws_client(target.port)
                fragment = ws_frame(0x0, b"ab", fin=False)
                writer.write(ws_frame(0x1, b"ab", fin=False))
                started = time.process_time()
                for _ in range(ws_codec.DEFAULT_MAX_FRAGMENTS // 4096 + 1):
                    writer.write(fragment * 4096)            # 32 KiB of wire per write
                    await writer.drain()
                code, reason = await read_close(reader)
                cpu = time.process_time() - started
            writer.close()
            self.assertNeighbourFine(neighbour)
        self.assertEqual(code, 1009)
        self.assertEqual(reason, f"message in more than {ws_codec.DEFAULT_MAX_FRAGMENTS} fragments")
        self.assertLessEqual(sampler.largest, 2 * ws_codec.DEFAULT_MAX_FRAGMENTS)
        self.assertLess(cpu, 5.0)

    async def test_unread_messages(self) -> None:
        # An application that never reads: the queue stops at max_queued_bytes plus one message.
        never = asyncio.Event()

        async def idle(ws: WebSocket) -> None:
            await never.wait()

        async with Target(ws_app=idle) as target, Neighbour(target.port) as neighbour:
            def queued() -> int:
                return max((ws.queued_bytes for ws in target.sockets), default=0)

            async with Sampler(queued) as sampler:
                reader, writer = await ws_client(target.port)
                message = ws_frame(0x2, b"m" * 150_000)
                for _ in range(80):                          # 12 MB, far past the queue
                    writer.write(message)
                await asyncio.sleep(0.3)
            never.set()
            writer.close()
            self.assertNeighbourFine(neighbour)
        self.assertGreaterEqual(sampler.largest, wsstream.DEFAULT_MAX_QUEUED_BYTES)
        self.assertLess(sampler.largest, wsstream.DEFAULT_MAX_QUEUED_BYTES + 150_000 + 1000)

    async def test_peer_that_never_reads(self) -> None:
        # Sending never blocks; unsent output past max_write_buffer_bytes cuts the peer off (1006).
        limit = 1 << 20

        async def flood(ws: WebSocket) -> None:
            try:
                while True:
                    ws.send(b"o" * 60000)
                    await asyncio.sleep(0)
            except Exception:
                pass
            await ws.wait_closed()

        async with Target(ws_app=flood, ws_options={"max_write_buffer_bytes": limit}) as target, \
                Neighbour(target.port) as neighbour:
            def unsent() -> int:
                return max((ws._transport.get_write_buffer_size() for ws in target.sockets
                            if ws._transport is not None and not ws._transport.is_closing()), default=0)

            async with Sampler(unsent) as sampler:
                _, writer = await silent_client(target.port, b"")
                writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                await wait_until(lambda: bool(target.sockets) and target.sockets[0].close_code is not None, 5)
            writer.close()
            self.assertNeighbourFine(neighbour)
        self.assertEqual(target.sockets[0].close_code, 1006)
        self.assertLess(sampler.largest, limit + 60000 + 100)

    async def test_every_ws_wait_has_a_deadline(self) -> None:
        # A peer that goes quiet gets a ping, and is failed (1011) when no pong comes.
        async with Target(ws_options={"ping_interval": 0.1, "ping_timeout": 0.1}) as target:
            reader, writer = await ws_client(target.port)
            code, reason = await read_close(reader, timeout=3.0)
            writer.close()
        self.assertEqual((code, reason), (1011, "keepalive ping timeout"))


if __name__ == "__main__":
    unittest.main()
