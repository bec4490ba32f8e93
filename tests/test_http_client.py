"""net.client against small asyncio servers written here: framing, pooling, aborts, timeouts, TLS."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import unittest
from collections.abc import Awaitable, Callable

from equabot_gw.errors import ClientConnectError, ClientTimeout, ConnectionClosed, HTTPProtocolError
from equabot_gw.net.client import HTTPClient, Origin, split_url

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Upstream:
    """A TCP (or TLS) server on 127.0.0.1:0; counts connections and when each one ended."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.closed_at: list[float] = []
        self.closed = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, path: str = "/", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        self._tasks.add(asyncio.current_task())
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass        # a cancelled handler is the test ending
        finally:
            self.closed_at.append(time.monotonic())
            self.closed.set()
            writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request head and body, or None at EOF between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


async def wait_for_eof(reader: asyncio.StreamReader) -> None:
    """Until the client closes (EOF or reset), discarding what it sends."""
    while await reader.read(65536):
        pass


def response(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (
        len(body), b"".join(h + b"\r\n" for h in extra), body)


def chunked(*chunks: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


async def keep_alive_server(reader, writer, conn) -> None:
    """Answers every request with its target as the body, chunked on odd requests."""
    n = 0
    while (request := await read_request(reader)) is not None:
        n += 1
        target = request[0].split(b" ")[1]
        writer.write(chunked(target, b"!") if n % 2 else response(target))
        await writer.drain()


async def stream_forever(reader, writer, conn) -> None:
    """Streams chunks until the client goes away."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    eof = asyncio.ensure_future(wait_for_eof(reader))
    try:
        while not eof.done():
            writer.write(b"5\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(0.005)
    finally:
        eof.cancel()


async def silent(reader, writer, conn) -> None:
    await wait_for_eof(reader)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on, timeout 0."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
    writer.transport.abort()


# (name, raw response) — each must raise HTTPProtocolError while the connection stays open.
MALFORMED_RESPONSES = (
    ("not HTTP", b"HELLO WORLD\r\n\r\n"),
    ("bad Content-Length", b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n"),
    ("conflicting Content-Length", b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
    ("bad chunk size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
    ("chunk without CRLF", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY"),
    ("bare LF head", b"HTTP/1.1 200 OK\ncontent-length: 0\n\n"),
    ("HTTP/2 status line", b"HTTP/2.0 200 OK\r\n\r\n"),
    ("space before colon", b"HTTP/1.1 200 OK\r\ncontent-length : 0\r\n\r\n"),
    ("unexpected 101", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
)

# (name, raw bytes then EOF) — the upstream dropped mid-response: ConnectionClosed.
TRUNCATED_RESPONSES = (
    ("nothing", b""),
    ("half a head", b"HTTP/1.1 200 OK\r\ncontent-le"),
    ("short Content-Length body", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"),
    ("chunked without last chunk", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"),
)

SPLIT_URLS = (
    ("http://127.0.0.1:9000/v1/chat", Origin("http", "127.0.0.1", 9000), "/v1/chat", "127.0.0.1:9000"),
    ("https://api.example.com", Origin("https", "api.example.com", 443), "/", "api.example.com"),
    ("HTTP://Example.COM:80/a?b=c", Origin("http", "example.com", 80), "/a?b=c", "example.com"),
    ("http://[::1]:8080/x", Origin("http", "::1", 8080), "/x", "[::1]:8080"),
)
BAD_URLS = ("ftp://example.com/", "http:///nohost", "http://user:pw@example.com/",
            "http://example.com:99999/", "example.com/path")


class SplitURLTests(unittest.TestCase):
    def test_urls(self) -> None:
        for url, origin, target, authority in SPLIT_URLS:
            with self.subTest(url):
                self.assertEqual(split_url(url), (origin, target))
                self.assertEqual(origin.authority, authority)

    def test_bad_urls(self) -> None:
        for url in BAD_URLS:
            with self.subTest(url), self.assertRaises(ValueError) as cm:
                split_url(url)
            self.assertNotIn("pw", str(cm.exception))


class ClientTests(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.client = HTTPClient(connect_timeout=1.0, write_timeout=1.0, read_timeout=1.0)

    async def asyncTearDown(self) -> None:
        await self.client.aclose()

    async def get(self, url: str, **kwargs) -> tuple[int, bytes]:
        async with await self.client.request("GET", url, **kwargs) as resp:
            return resp.status, await resp.read()

    # -- framing ------------------------------------------------------------------

    async def test_content_length_body(self) -> None:
        async with Upstream(keep_alive_server) as up:
            await self.get(up.url("/first"))    # odd requests are chunked, even ones not
            self.assertEqual(await self.get(up.url("/second")), (200, b"/second"))

    async def test_chunked_body_streams_as_it_arrives(self) -> None:
        got_first = asyncio.Event()

        async def handler(reader, writer, conn):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await got_first.wait()      # the client saw chunk 1 before chunk 2 exists
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            await wait_for_eof(reader)

        async with Upstream(handler) as up:
            async with await self.client.request("GET", up.url()) as resp:
                chunks = []
                async for chunk in resp:
                    chunks.append(chunk)
                    got_first.set()
            self.assertEqual(b"".join(chunks), b"firstsecond")
            self.assertEqual(chunks[0], b"first")

    async def test_close_delimited_body_is_not_reused(self) -> None:
        async def handler(reader, writer, conn):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ")
            await writer.drain()
            writer.write(b"the end")
            writer.close()

        async with Upstream(handler) as up:
            self.assertEqual(await self.get(up.url()), (200, b"until the end"))
            self.assertEqual(await self.get(up.url()), (200, b"until the end"))
            self.assertEqual(up.connections, 2)
            self.assertEqual(self.client.idle_connections, 0)

    async def test_interim_100_continue_is_skipped(self) -> None:
        async def handler(reader, writer, conn):
            await read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"ok"))
            await wait_for_eof(reader)

        async with Upstream(handler) as up:
            self.assertEqual(await self.get(up.url()), (200, b"ok"))

    async def test_request_head_and_body(self) -> None:
        seen: list[tuple[bytes, bytes]] = []

        async def handler(reader, writer, conn):
            seen.append(await read_request(reader))
            writer.write(response(b""))
            await wait_for_eof(reader)

        async with Upstream(handler) as up:
            resp = await self.client.request(
                "POST", up.url("/v1/chat?x=1"), body=b'{"a":1}',
                headers=[("Content-Type", "application/json"), ("Content-Length", "999")])
            await resp.aclose()
        head, body = seen[0]
        lines = head.decode().split("\r\n")
        self.assertEqual(lines[0], "POST /v1/chat?x=1 HTTP/1.1")
        self.assertIn(f"host: 127.0.0.1:{up.port}", lines)
        self.assertIn("Content-Type: application/json", lines)
        self.assertIn("content-length: 7", lines)       # the caller's framing is replaced
        self.assertNotIn("Content-Length: 999", lines)
        self.assertEqual(body, b'{"a":1}')

    # -- the pool ------------------------------------------------------------------

    async def test_keep_alive_reuses_one_connection(self) -> None:
        async with Upstream(keep_alive_server) as up:
            for i in range(4):
                self.assertEqual(await self.get(up.url(f"/{i}")),
                                 (200, f"/{i}!".encode() if i % 2 == 0 else f"/{i}".encode()))
            self.assertEqual(up.connections, 1)
            self.assertEqual(self.client.idle_connections, 1)

    async def test_idle_connection_closed_by_server_is_replaced(self) -> None:
        async def handler(reader, writer, conn):
            await read_request(reader)
            writer.write(response(b"once"))      # keep-alive by default, then closed anyway
            await writer.drain()

        async with Upstream(handler) as up:
            self.assertEqual(await self.get(up.url()), (200, b"once"))
            await up.closed.wait()
            await asyncio.sleep(0.01)
            self.assertEqual(await self.get(up.url()), (200, b"once"))
            self.assertEqual(up.connections, 2)

    async def test_reused_connection_closed_before_answer(self) -> None:
        # The keep-alive race: the server closes just as the next request arrives.
        async def handler(reader, writer, conn):
            await read_request(reader)
            writer.write(response(b"first"))
            await writer.drain()
            await read_request(reader)           # the next request: closed unanswered

        async with Upstream(handler) as up:
            await self.get(up.url())
            self.assertEqual(await self.get(up.url()), (200, b"first"))   # GET is retried
            self.assertEqual(up.connections, 2)
            with self.assertRaises(ConnectionClosed):                      # POST is not
                await self.client.request("POST", up.url(), body=b"x")
            self.assertEqual(up.connections, 2)
            await self.get(up.url())
            resp = await self.client.request("POST", up.url(), body=b"x", idempotent=True)
            self.assertEqual(await resp.read(), b"first")                  # unless declared safe
            self.assertEqual(up.connections, 4)

    async def test_abort_mid_stream_closes_the_socket(self) -> None:
        async with Upstream(stream_forever) as up:
            resp = await self.client.request("GET", up.url())
            self.assertEqual(await resp.__anext__(), b"hello")
            started = time.monotonic()
            await resp.aclose()
            await asyncio.wait_for(up.closed.wait(), 1.0)
            self.assertLess(up.closed_at[0] - started, 0.5)
            self.assertEqual(self.client.idle_connections, 0)

    async def test_cancelled_reader_closes_the_socket(self) -> None:
        async with Upstream(stream_forever) as up:
            first = asyncio.Event()

            async def consume():
                async with await self.client.request("GET", up.url()) as resp:
                    async for _ in resp:
                        first.set()

            task = asyncio.create_task(consume())
            await first.wait()
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(up.closed.wait(), 1.0)
            self.assertEqual(self.client.idle_connections, 0)

    async def test_drain_after_payload_end_keeps_the_connection(self) -> None:
        async def handler(reader, writer, conn):
            while await read_request(reader) is not None:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\ndone\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)          # the last chunk lags the payload
                writer.write(b"0\r\n\r\n")

        async with Upstream(handler) as up:
            resp = await self.client.request("GET", up.url())
            self.assertEqual(await resp.__anext__(), b"done")
            await resp.aclose(drain_timeout=1.0)
            self.assertEqual(self.client.idle_connections, 0)
            await asyncio.sleep(0.2)
            self.assertEqual(self.client.idle_connections, 1)
            await self.get(up.url())
            self.assertEqual(up.connections, 1)

    async def test_drain_gives_up_after_its_timeout(self) -> None:
        async with Upstream(stream_forever) as up:
            resp = await self.client.request("GET", up.url())
            await resp.__anext__()
            await resp.aclose(drain_timeout=0.1)
            await asyncio.wait_for(up.closed.wait(), 1.0)
            self.assertEqual(self.client.idle_connections, 0)

    async def test_aclose_closes_pooled_connections(self) -> None:
        async with Upstream(keep_alive_server) as up:
            await self.get(up.url())
            await self.client.aclose()
            await asyncio.wait_for(up.closed.wait(), 1.0)
            with self.assertRaises(RuntimeError):
                await self.client.request("GET", up.url())

    # -- failures ------------------------------------------------------------------

    async def test_connect_refused(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with self.assertRaises(ClientConnectError) as cm:
            await self.client.request("GET", f"http://127.0.0.1:{port}/")
        self.assertEqual((cm.exception.host, cm.exception.port), ("127.0.0.1", port))
        self.assertIn("refused", cm.exception.reason.lower())

    async def test_connect_timeout_covers_tls_handshake(self) -> None:
        self.client.connect_timeout = 0.2
        async with Upstream(silent) as up:
            with self.assertRaises(ClientTimeout) as cm:
                await self.client.request("GET", up.url(scheme="https"))
        self.assertEqual((cm.exception.phase, cm.exception.timeout), ("connect", 0.2))
        self.assertEqual(str(cm.exception), "no connect progress within 0.2 s")

    async def test_read_timeout_before_head(self) -> None:
        self.client.read_timeout = 0.2
        async with Upstream(silent) as up:
            started = time.monotonic()
            with self.assertRaises(ClientTimeout) as cm:
                await self.client.request("GET", up.url())
            self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(cm.exception.phase, "read")

    async def test_read_timeout_between_chunks(self) -> None:
        async def handler(reader, writer, conn):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
            await wait_for_eof(reader)

        self.client.read_timeout = 0.2
        async with Upstream(handler) as up:
            resp = await self.client.request("GET", up.url())
            self.assertEqual(await resp.__anext__(), b"hi")
            with self.assertRaises(ClientTimeout) as cm:
                await resp.__anext__()
            self.assertEqual(cm.exception.phase, "read")
            await asyncio.wait_for(up.closed.wait(), 1.0)      # and the socket is gone

    async def test_write_timeout(self) -> None:
        async def handler(reader, writer, conn):
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(5)      # never reads the body

        self.client.write_timeout = 0.2
        async with Upstream(handler) as up:
            with self.assertRaises(ClientTimeout) as cm:
                await self.client.request("POST", up.url(), body=b"x" * (32 * 1024 * 1024))
        self.assertEqual(cm.exception.phase, "write")

    async def test_malformed_responses(self) -> None:
        for name, raw in MALFORMED_RESPONSES:
            async def handler(reader, writer, conn, raw=raw):
                await read_request(reader)
                writer.write(raw)
                await wait_for_eof(reader)

            with self.subTest(name):
                async with Upstream(handler) as up:
                    with self.assertRaises(HTTPProtocolError):
                        async with await self.client.request("GET", up.url()) as resp:
                            await resp.read()
                    await asyncio.wait_for(up.closed.wait(), 1.0)

    async def test_truncated_responses(self) -> None:
        for name, raw in TRUNCATED_RESPONSES:
            async def handler(reader, writer, conn, raw=raw):
                await read_request(reader)
                writer.write(raw)
                writer.close()

            with self.subTest(name):
                async with Upstream(handler) as up:
                    with self.assertRaises(ConnectionClosed):
                        async with await self.client.request("POST", up.url()) as resp:
                            await resp.read()

    async def test_reset_mid_body(self) -> None:
        async def handler(reader, writer, conn):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")     # close-delimited
            await writer.drain()
            await asyncio.sleep(0.05)
            reset(writer)

        async with Upstream(handler) as up:
            resp = await self.client.request("GET", up.url())
            with self.assertRaises(ConnectionClosed):
                await resp.read()


def _make_certificate(directory: str) -> tuple[str, str] | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True, timeout=30)
    return (cert, key) if result.returncode == 0 else None


class TLSTests(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls._dir = tempfile.TemporaryDirectory()
        cls.files = _make_certificate(cls._dir.name)

    @classmethod
    def tearDownClass(cls) -> None:
        cls._dir.cleanup()

    def setUp(self) -> None:
        if self.files is None:
            self.skipTest("no openssl binary to make a self-signed certificate")
        self.server_names: list[str | None] = []
        self.server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_tls.load_cert_chain(*self.files)
        self.server_tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)

    async def test_https_with_sni_and_keep_alive(self) -> None:
        client = HTTPClient(ssl_context=ssl.create_default_context(cafile=self.files[0]),
                            read_timeout=2.0)
        try:
            async with Upstream(keep_alive_server, tls=self.server_tls) as up:
                for path in ("/a", "/b"):
                    async with await client.request("GET", up.url(path, "https", "localhost")) as resp:
                        self.assertEqual(resp.status, 200)
                        self.assertTrue((await resp.read()).startswith(path.encode()))
                self.assertEqual(up.connections, 1)
                self.assertEqual(self.server_names, ["localhost"])
        finally:
            await client.aclose()

    async def test_untrusted_certificate_is_refused(self) -> None:
        # The server side logs the handshake the client broke off: expected here.
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
        client = HTTPClient(read_timeout=2.0)       # the default context: system roots only
        try:
            async with Upstream(keep_alive_server, tls=self.server_tls) as up:
                with self.assertRaises(ClientConnectError) as cm:
                    await client.request("GET", up.url("/", "https"))
            self.assertIn("certificate verification failed", cm.exception.reason)
        finally:
            await client.aclose()


if __name__ == "__main__":
    unittest.main()
