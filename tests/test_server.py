"""End to end: a real gateway process on port 0, driven with http.client, curl and raw sockets."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from collections.abc import AsyncIterator, Callable
from typing import Any

from equabot_gw.net import connection as connection_mod, output, server as server_mod
from equabot_gw.net.routes import HTTPRequest, Response, Router, StreamingResponse

from tests.net_transports import FlowTransport
from tests.support import (
    ROOT, TOKEN, GatewayProcess, LiveGateway, base_config, error_of, raw_exchange, split_responses,
)

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
CHAT = json.dumps({"model": "equabot", "messages": [{"role": "user", "content": "hi"}]}).encode()


class ServerEndToEndTest(LiveGateway, unittest.TestCase):
    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return base_config(http={"maxBodyBytes": 4096, "maxHeaderBytes": 2048,
                                 "headerTimeoutSeconds": 0.5})

    def conn(self) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=5)
        self.addCleanup(c.close)
        return c

    def test_health_without_auth_or_secrets(self) -> None:
        c = self.conn()
        c.request("GET", "/health")
        r = c.getresponse()
        body = r.read()
        self.assertEqual(r.status, 200)
        self.assertEqual(json.loads(body)["status"], "ok")
        self.assertNotIn(TOKEN.encode(), body)
        self.assertTrue(r.getheader("x-request-id"))
        self.assertTrue(r.getheader("date"))

    def test_keep_alive_reuses_the_connection(self) -> None:
        c = self.conn()
        ports = set()
        for _ in range(3):
            c.request("POST", "/v1/chat/completions", body=CHAT, headers=AUTH)
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            r.read()
            ports.add(c.sock.getsockname()[1])
        self.assertEqual(len(ports), 1)

    def test_pipelined_requests_are_answered_in_order(self) -> None:
        reqs = b"".join(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % p for p in (b"health", b"nope", b"healthz"))
        reqs += b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        responses = split_responses(raw_exchange(self.gw.port, reqs))
        self.assertEqual([s for s, _, _ in responses], [200, 404, 200, 200])
        self.assertEqual(responses[-1][1].get("connection"), "close")

    def test_chunked_upload(self) -> None:
        body = CHAT
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
               + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               + chunked + b"0\r\n\r\n")
        [(status, _, data)] = split_responses(raw_exchange(self.gw.port, raw))
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(data)["choices"][0]["message"]["content"], "Echo (turn 1): hi")

    def test_413_for_a_body_over_the_limit(self) -> None:
        c = self.conn()
        c.request("POST", "/v1/chat/completions", body=b"x" * 5000, headers=AUTH)
        r = c.getresponse()
        self.assertEqual(r.status, 413)
        self.assertEqual(error_of(r.read())["code"], "request_too_large")
        self.assertEqual(r.getheader("connection"), "close")

    def test_413_for_a_chunked_body_over_the_limit(self) -> None:
        raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"1000\r\n" + b"x" * 4096 + b"\r\n" + b"10\r\n" + b"y" * 16 + b"\r\n0\r\n\r\n")
        [(status, headers, body)] = split_responses(raw_exchange(self.gw.port, raw))
        self.assertEqual(status, 413)
        self.assertEqual(headers["connection"], "close")
        self.assertIn("over the limit of 4096 bytes", error_of(body)["message"])

    def test_431_for_a_head_over_the_limit(self) -> None:
        raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n"
        [(status, headers, body)] = split_responses(raw_exchange(self.gw.port, raw))
        self.assertEqual(status, 431)
        self.assertEqual(error_of(body)["code"], "header_fields_too_large")

    def test_404_and_405_are_json_errors(self) -> None:
        c = self.conn()
        c.request("GET", "/nowhere")
        r = c.getresponse()
        self.assertEqual(r.status, 404)
        self.assertEqual(error_of(r.read())["type"], "invalid_request_error")
        c.request("GET", "/v1/chat/completions", headers=AUTH)
        r = c.getresponse()
        self.assertEqual(r.status, 405)
        self.assertEqual(r.getheader("allow"), "POST")
        self.assertEqual(error_of(r.read())["code"], "method_not_allowed")
        c.request("DELETE", "/health")
        r = c.getresponse()
        self.assertEqual((r.status, r.getheader("allow")), (405, "GET, HEAD"))
        r.read()

    def test_error_response_survives_a_client_that_keeps_sending(self) -> None:
        """RFC 9112 §9.6: half-close and drain, so the 413 is not lost to a TCP reset."""
        for _ in range(5):
            with socket.create_connection((self.gw.host, self.gw.port), timeout=5) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
                time.sleep(0.05)                       # the 413 is on its way; the client does not know
                try:
                    s.sendall(b"x" * 60000)            # ... and keeps sending the body
                except (BrokenPipeError, ConnectionResetError):
                    pass
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:60])
            self.assertEqual(error_of(data.partition(b"\r\n\r\n")[2])["code"], "request_too_large")

    def test_head_has_headers_and_no_body(self) -> None:
        raw = b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        data = raw_exchange(self.gw.port, raw)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"content-length: ", head)
        self.assertEqual(body, b"")

    def test_http10_client_gets_close(self) -> None:
        data = raw_exchange(self.gw.port, b"GET /health HTTP/1.0\r\n\r\n")
        [(status, headers, body)] = split_responses(data)
        self.assertEqual((status, headers["connection"]), (200, "close"))
        self.assertEqual(json.loads(body)["status"], "ok")

    def test_expect_100_continue(self) -> None:
        with socket.create_connection((self.gw.host, self.gw.port), timeout=5) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                      + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(CHAT))
            self.assertEqual(s.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(CHAT)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"))

    def test_ambiguous_framing_is_400_and_closes(self) -> None:
        raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        responses = split_responses(raw_exchange(self.gw.port, raw))
        self.assertEqual(len(responses), 1)            # the smuggled request is never served
        status, headers, body = responses[0]
        self.assertEqual((status, headers["connection"]), (400, "close"))
        self.assertIn("both Content-Length and Transfer-Encoding", error_of(body)["message"])

    def test_slow_header_is_cut_off_without_holding_others_up(self) -> None:
        slow = socket.create_connection((self.gw.host, self.gw.port), timeout=5)
        self.addCleanup(slow.close)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        c = self.conn()
        c.request("GET", "/health")
        self.assertEqual(c.getresponse().status, 200)
        self.assertLess(time.monotonic() - started, 0.25)
        data = b""
        while chunk := slow.recv(4096):
            data += chunk
        elapsed = time.monotonic() - started
        slow.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 408"), data[:40])
        self.assertGreater(elapsed, 0.3)
        self.assertLess(elapsed, 3.0)

    @unittest.skipUnless(shutil.which("curl"), "curl is not installed")
    def test_curl_keep_alive_and_errors(self) -> None:
        url = self.gw.url
        out = subprocess.run(
            ["curl", "-sS", "-w", "%{http_code} %{num_connects}\n",
             "-o", "/dev/null", f"{url}/health", "-o", "/dev/null", f"{url}/health",
             "-o", "/dev/null", f"{url}/nowhere"],
            capture_output=True, text=True, timeout=10).stdout.split("\n")
        self.assertEqual(out[:3], ["200 1", "200 0", "404 0"])    # one connection, reused

    @unittest.skipUnless(shutil.which("curl"), "curl is not installed")
    def test_curl_chunked_upload(self) -> None:
        out = subprocess.run(
            ["curl", "-sS", "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json",
             "-H", "Transfer-Encoding: chunked", "--data-binary", "@-", f"{self.gw.url}/v1/chat/completions"],
            input=CHAT.decode(), capture_output=True, text=True, timeout=10)
        self.assertEqual(json.loads(out.stdout)["choices"][0]["message"]["content"], "Echo (turn 1): hi")


class LifecycleTest(unittest.TestCase):
    def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(self) -> None:
        data = base_config()
        data["models"] = {"providers": {"echo": {"api": "echo", "delayMs": 100}}}
        gw = GatewayProcess(data).start()
        try:
            result: dict[str, object] = {}

            def request() -> None:
                c = http.client.HTTPConnection(gw.host, gw.port, timeout=10)
                c.request("POST", "/v1/chat/completions", body=CHAT, headers=AUTH)
                r = c.getresponse()
                result["status"], result["body"] = r.status, r.read()
                c.close()

            t = threading.Thread(target=request)
            t.start()
            time.sleep(0.15)           # the run is streaming (5 deltas × 100 ms)
            gw.proc.send_signal(signal.SIGTERM)
            t.join(10)
            self.assertEqual(result.get("status"), 200)
            self.assertIn(b"Echo (turn 1): hi", result["body"])
            self.assertEqual(gw.proc.wait(10), 0)
        finally:
            gw.stop()
            gw.tmp.cleanup()

    def test_sigint_exits_0(self) -> None:
        gw = GatewayProcess().start()
        try:
            self.assertEqual(gw.stop(signal.SIGINT), 0)
        finally:
            gw.tmp.cleanup()

    def test_embedded_defaults_serve_health_with_no_config_file(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith("EQUABOT_")}
            env["HOME"] = tmp              # no ~/.equabot/equabot.json either
            proc = subprocess.Popen([sys.executable, "-m", "equabot_gw", "--port", "0"],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            try:
                line = proc.stdout.readline()
                self.assertIn("listening on http://127.0.0.1:", line)
                port = int(line.split("http://127.0.0.1:")[1].split()[0])
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                self.assertEqual(c.getresponse().status, 200)
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("POST", "/v1/chat/completions", body=CHAT)
                self.assertEqual(c.getresponse().status, 404)      # endpoint off by default
                c.close()
                self.assertTrue((pathlib.Path(tmp) / ".equabot" / "gateway-token").exists())
            finally:
                proc.send_signal(signal.SIGTERM)
                self.assertEqual(proc.wait(10), 0)
                proc.stdout.close()


class SendTimeoutTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_client_that_stops_reading_a_stream_is_dropped(self) -> None:
        from tests.support import running_gateway
        async with running_gateway() as gw:
            gw.server.limits.send_timeout = 0.3
            # ~3 MB of reply (deltas that pile up are joined, so about as much SSE): more than
            # a small receive buffer and the server's send buffer hold.
            words = " ".join(["word"] * 600_000)
            body = json.dumps({"model": "x", "stream": True, "messages": [{"role": "user", "content": words}]})
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((gw.host, gw.server.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.transport.set_write_buffer_limits(high=1 << 24)
            writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
            writer.transport.pause_reading()             # and never read a byte
            started = time.monotonic()
            while gw.server.connection_count and time.monotonic() - started < 5:
                await asyncio.sleep(0.05)
            self.assertEqual(gw.server.connection_count, 0)
            self.assertLess(time.monotonic() - started, 3.0)
            writer.close()


class _RecordingTransport(asyncio.Transport):
    """Collects what the server writes; each ``write`` would be one send() on an idle socket."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

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


class StreamWritesTest(unittest.IsolatedAsyncioTestCase):
    """A stream's output is sent per task step, not per piece, and never held past a bound."""

    def start_stream(self, body: Callable[[], AsyncIterator[bytes]], request: bytes
                     ) -> tuple[connection_mod.Connection, _RecordingTransport]:
        router = Router()

        async def handler(request: HTTPRequest) -> StreamingResponse:
            return StreamingResponse(200, [("content-type", "text/plain")], body())

        router.add("/s", ("GET",), handler)
        conn = connection_mod.Connection(server_mod.HTTPServer(router))
        transport = _RecordingTransport()
        conn.connection_made(transport)
        conn.data_received(request)
        return conn, transport

    async def serve_stream(self, body: Callable[[], AsyncIterator[bytes]]) -> _RecordingTransport:
        conn, transport = self.start_stream(
            body, b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert conn.task is not None
        await asyncio.wait_for(conn.task, 5)
        return transport

    async def test_pieces_of_one_step_go_out_in_one_write(self) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            yield b"second"
            await asyncio.sleep(0.01)        # the client sees the first pieces now
            yield b"third"
            yield b"fourth"

        transport = self.serve_stream(body)
        writes = (await transport).writes
        self.assertEqual(len(writes), 2, writes)
        head, _, first = writes[0].partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(first, b"5\r\nfirst\r\n6\r\nsecond\r\n")
        self.assertEqual(writes[1], b"5\r\nthird\r\n6\r\nfourth\r\n0\r\n\r\n")

    async def test_a_client_leaving_gets_what_its_stream_already_produced(self) -> None:
        # The stream's step and the client's EOF in one loop pass, the step first:
        # the piece written in that step still goes out before the client counts as gone.
        loop = asyncio.get_running_loop()
        upstream: asyncio.Future[None] = loop.create_future()

        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            await upstream
            yield b"last"
            await asyncio.sleep(10)                 # the stream stays open

        conn, transport = self.start_stream(body, b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.02)

        def one_poll() -> None:                     # upstream readable, then the client's FIN
            upstream.set_result(None)
            loop.call_soon(conn.eof_received)

        loop.call_soon(one_poll)
        assert conn.task is not None
        await asyncio.wait_for(conn.task, 5)
        wire = b"".join(transport.writes)
        self.assertTrue(wire.endswith(b"5\r\nfirst\r\n4\r\nlast\r\n"), wire)

    async def test_a_body_that_never_yields_control_is_still_sent_in_bounded_writes(self) -> None:
        piece = b"x" * 1000
        count = 10 * output.MAX_CORKED_BYTES // len(piece)

        async def body() -> AsyncIterator[bytes]:
            for _ in range(count):
                yield piece

        writes = (await self.serve_stream(body)).writes
        self.assertGreaterEqual(len(writes), 10)
        self.assertLess(max(map(len, writes)), output.MAX_CORKED_BYTES + 2 * len(piece))
        wire = b"".join(writes)
        self.assertEqual(wire.count(b"3e8\r\n" + piece + b"\r\n"), count)
        self.assertTrue(wire.endswith(b"0\r\n\r\n"))



def _output_router() -> Router:
    """Routes for the output-bound tests: small, large plain, one huge stream piece, many pieces."""
    router = Router()

    async def health(request: HTTPRequest) -> Response:
        return Response(200, [("content-type", "application/json")], b'{"status":"ok"}')

    async def big(request: HTTPRequest) -> Response:
        return Response(200, [("content-type", "application/octet-stream")],
                        bytes(range(256)) * (int(request.params["size"]) // 256))

    async def huge_piece(request: HTTPRequest) -> StreamingResponse:
        size = int(request.params["size"])

        async def body() -> AsyncIterator[bytes]:
            yield b"<" + bytes(range(256)) * (size // 256) + b">"

        return StreamingResponse(200, [("content-type", "text/plain")], body())

    async def many(request: HTTPRequest) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(int(request.params["count"])):
                yield b"data: %06d %s\n\n" % (i, b"x" * 4000)
                await asyncio.sleep(0)

        return StreamingResponse(200, [("content-type", "text/event-stream")], body())

    router.add("/health", ("GET",), health)
    router.add("/big/{size}", ("GET",), big)
    router.add("/huge/{size}", ("GET",), huge_piece)
    router.add("/many/{count}", ("GET",), many)
    return router


def _dechunk(data: bytes) -> bytes:
    """The content of a complete chunked body (sizes must match; the body must end)."""
    out, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        if size == 0:
            assert data[end:] == b"\r\n\r\n", data[end:end + 20]
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        assert data[end + 2 + size:end + 4 + size] == b"\r\n"
        pos = end + 4 + size


class StreamOnCloseTest(unittest.IsolatedAsyncioTestCase):
    """A stream's on_close runs exactly once however it ends, its body's finally or not."""

    async def serve(self, request: bytes, body: Callable[[], AsyncIterator[bytes]], *,
                    leave_after: float | None = None, leave_in_handler: bool = False
                    ) -> tuple[list[str], bytes]:
        closed: list[str] = []
        router = Router()
        conn = connection_mod.Connection(server_mod.HTTPServer(router))

        async def handler(request: HTTPRequest) -> StreamingResponse:
            if leave_in_handler:
                conn.connection_lost(None)
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    pass        # a handler that answers anyway: its response finds the client gone
            return StreamingResponse(200, [("content-type", "text/plain")], body(),
                                     on_close=lambda: closed.append("closed"))

        router.add("/s", ("GET",), handler)
        transport = _RecordingTransport()
        conn.connection_made(transport)
        conn.data_received(request)
        if leave_after is not None:
            await asyncio.sleep(leave_after)
            conn.connection_lost(None)
        assert conn.task is not None
        await asyncio.wait_for(asyncio.gather(conn.task, return_exceptions=True), 5)
        return closed, b"".join(transport.writes)

    async def test_written_whole(self) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield b"all"

        closed, wire = await self.serve(b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", body)
        self.assertEqual(closed, ["closed"])
        self.assertTrue(wire.endswith(b"3\r\nall\r\n0\r\n\r\n"), wire)

    async def test_cut_by_the_client(self) -> None:
        finished: list[str] = []

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"first"
                await asyncio.sleep(10)
                yield b"never"
            finally:
                finished.append("finally")

        closed, wire = await self.serve(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n", body, leave_after=0.05)
        self.assertEqual((closed, finished), (["closed"], ["finally"]))
        self.assertNotIn(b"never", wire)

    async def test_dropped_unsent_when_the_client_left_before_it_started(self) -> None:
        began: list[str] = []

        async def body() -> AsyncIterator[bytes]:
            began.append("began")       # a finally here could not run: the generator never starts
            yield b"unsent"

        closed, wire = await self.serve(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n", body, leave_in_handler=True)
        self.assertEqual((closed, began), (["closed"], []))
        self.assertEqual(wire, b"")


class OutputBoundsTest(unittest.IsolatedAsyncioTestCase):
    """Every response kind goes out in bounded writes while the client keeps up; a client that
    reads nothing for ``send_timeout`` is dropped, whatever it was sent (plain responses too)."""

    SEND_TIMEOUT = 0.2
    # Unsent output never passes the high-water mark by more than the corked bytes and one piece.
    BOUND = output.WRITE_HIGH_WATER_BYTES + 2 * output.MAX_WRITE_PIECE_BYTES + 4096

    def connect(self) -> tuple[connection_mod.Connection, FlowTransport]:
        server = server_mod.HTTPServer(_output_router(),
                                       limits=server_mod.Limits(send_timeout=self.SEND_TIMEOUT))
        conn = connection_mod.Connection(server)
        return conn, FlowTransport(asyncio.get_running_loop()).connect(conn)

    async def assertDropped(self, conn: connection_mod.Connection, transport: FlowTransport,
                            within: float = 3.0) -> float:
        started = time.monotonic()
        while not transport.aborted and time.monotonic() - started < within:
            await asyncio.sleep(0.02)
        self.assertTrue(transport.aborted, "a client that reads nothing was not dropped")
        self.assertLessEqual(transport.max_unsent, self.BOUND)
        return time.monotonic() - started

    async def test_a_pipelining_client_that_never_reads_is_bounded_and_dropped(self) -> None:
        # Regression: pipelined GET /health with no reading grew the gateway without bound.
        conn, transport = self.connect()
        requests = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
        fed = max_buffered = 0
        started = time.monotonic()
        while not transport.aborted and time.monotonic() - started < 3.0 and fed < 64 << 20:
            if transport.reading:                   # the client sends whenever the server reads
                conn.data_received(requests)
                fed += len(requests)
            max_buffered = max(max_buffered, conn.parser.buffered_bytes)
            await asyncio.sleep(0.005)
        await self.assertDropped(conn, transport)
        self.assertLessEqual(max_buffered, connection_mod.MAX_PIPELINE_BUFFER_BYTES + len(requests))
        self.assertLess(fed, 8 << 20)               # it stopped reading long before this

    async def test_a_plain_response_to_a_client_that_never_reads_times_out(self) -> None:
        # Regression: clients that never read their 16 MiB completions stayed connected 200 s+.
        conn, transport = self.connect()
        conn.data_received(b"GET /big/16777216 HTTP/1.1\r\nHost: x\r\n\r\n")
        elapsed = await self.assertDropped(conn, transport)
        self.assertLess(elapsed, self.SEND_TIMEOUT + 1.0)
        self.assertLessEqual(max(transport.writes), output.MAX_WRITE_PIECE_BYTES)

    async def test_a_slow_reader_of_a_plain_response_is_served_whole(self) -> None:
        # It takes far longer than send_timeout in all, but never reads nothing for that long.
        conn, transport = self.connect()
        size = 2 << 20
        conn.data_received(b"GET /big/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
        started = time.monotonic()
        while not transport.lost and time.monotonic() - started < 10:
            transport.read(16 * 1024)               # well under the low-water mark per read
            await asyncio.sleep(0.01)
        self.assertFalse(transport.aborted)
        self.assertGreater(time.monotonic() - started, self.SEND_TIMEOUT)
        head, _, body = bytes(transport.received).partition(b"\r\n\r\n")
        self.assertIn(b"content-length: %d" % size, head)
        self.assertEqual(body, bytes(range(256)) * (size // 256))
        self.assertLessEqual(transport.max_unsent, self.BOUND)

    async def test_a_huge_stream_piece_to_a_client_that_never_reads_is_bounded(self) -> None:
        # Regression: one 242 MiB piece was one write the client could never drain.
        conn, transport = self.connect()
        conn.data_received(b"GET /huge/16777216 HTTP/1.1\r\nHost: x\r\n\r\n")
        await self.assertDropped(conn, transport)
        self.assertLessEqual(max(transport.writes), 2 * output.MAX_WRITE_PIECE_BYTES)

    async def test_a_huge_stream_piece_reaches_a_slow_reader_whole(self) -> None:
        conn, transport = self.connect()
        size = 1 << 20
        conn.data_received(b"GET /huge/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
        started = time.monotonic()
        while not transport.lost and time.monotonic() - started < 10:
            transport.read(32 * 1024)
            await asyncio.sleep(0.005)
        self.assertFalse(transport.aborted)
        head, _, wire = bytes(transport.received).partition(b"\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", head)
        self.assertEqual(_dechunk(wire), b"<" + bytes(range(256)) * (size // 256) + b">")
        self.assertLessEqual(max(transport.writes), 2 * output.MAX_WRITE_PIECE_BYTES)
        self.assertLessEqual(transport.max_unsent, self.BOUND)

    async def test_a_stream_of_many_pieces_to_a_client_that_never_reads_is_bounded(self) -> None:
        conn, transport = self.connect()
        conn.data_received(b"GET /many/100000 HTTP/1.1\r\nHost: x\r\n\r\n")
        await self.assertDropped(conn, transport)

    async def test_closing_after_the_last_response_waits_send_timeout_at_most(self) -> None:
        # Under the high-water mark nothing waits in the request loop: the close itself does.
        conn, transport = self.connect()
        conn.data_received(b"GET /big/131072 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await asyncio.sleep(0.05)
        self.assertTrue(transport.closing)
        self.assertFalse(transport.lost)            # asyncio's close() waits for the client ...
        elapsed = await self.assertDropped(conn, transport)     # ... for send_timeout, no longer
        self.assertLess(elapsed, self.SEND_TIMEOUT + 1.0)

    async def test_the_next_pipelined_request_waits_for_the_client(self) -> None:
        # Output above the high-water mark: the next request is not handled (nor read) until it drains.
        conn, transport = self.connect()
        conn.data_received(b"GET /big/1048576 HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        self.assertTrue(transport.paused)
        self.assertFalse(b'{"status":"ok"}' in transport.unsent, "answered before the client read")
        while b'{"status":"ok"}' not in transport.received:
            transport.read()
            await asyncio.sleep(0.005)
        self.assertFalse(transport.aborted)


if __name__ == "__main__":
    unittest.main()
