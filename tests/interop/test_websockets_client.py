"""Our WebSocket stack against the ``websockets`` library (PyPI), in both roles.

As a client, ``websockets`` talks to the echo server of
tests/test_websocket_autobahn.py (``start_echo_server``; our own stack); as a
server, it answers our ``wsclient.connect()``. Covered: the handshake (its
client offers permessage-deflate, which we must decline), text and binary
echo, a message over max_message_bytes closing with 1009, pings, and close
codes and reasons in both directions.

The Makefile installs ``websockets`` into .venv-test and sets
EQUABOT_INTEROP=1: then a missing package is a failure. Elsewhere the tests skip.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import unittest

from equabot_gw.errors import ConnectionClosed
from equabot_gw.net.wsclient import connect
from equabot_gw.net.wsstream import WebSocket
from tests.test_websocket_autobahn import ECHO_PATH, start_echo_server, start_server

try:
    import websockets
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import serve as ws_serve
    from websockets.exceptions import ConnectionClosed as WsClosed
except ImportError:          # not installed, or older than 13 (no websockets.asyncio)
    websockets = None

REQUIRED = os.environ.get("EQUABOT_INTEROP") == "1"
TIMEOUT = 5.0                # seconds; each step takes milliseconds on loopback


def client_options() -> dict:
    # websockets >= 15 reads proxy settings from the environment: never for loopback.
    params = inspect.signature(ws_connect.__init__).parameters
    return {"proxy": None} if "proxy" in params else {}


@unittest.skipIf(websockets is None and not REQUIRED,
                 "the websockets package is not installed (make test installs it)")
class WebsocketsClientAgainstOurServer(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        if websockets is None:
            raise AssertionError("EQUABOT_INTEROP=1 but websockets (>= 13) cannot be imported")

    async def asyncSetUp(self) -> None:
        self.host, self.port, close = await start_echo_server(max_message_bytes=4096)
        self.addAsyncCleanup(close)
        self.url = f"ws://{self.host}:{self.port}{ECHO_PATH}"

    async def test_handshake_and_echo(self) -> None:
        async with ws_connect(self.url, **client_options()) as ws:
            # The client offered permessage-deflate; no extension was agreed.
            self.assertIsNone(ws.response.headers.get("Sec-WebSocket-Extensions"))
            await ws.send("κόσμε")
            self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), "κόσμε")
            await ws.send(bytes(range(256)) * 16)
            self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), bytes(range(256)) * 16)
            await ws.send(["frag", "mented"])          # one message in fragments
            self.assertEqual(await asyncio.wait_for(ws.recv(), TIMEOUT), "fragmented")

    async def test_message_over_the_limit_closes_with_1009(self) -> None:
        async with ws_connect(self.url, **client_options()) as ws:
            await ws.send(b"x" * 4097)
            with self.assertRaises(WsClosed) as caught:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            self.assertEqual(caught.exception.rcvd.code, 1009)
            self.assertEqual(caught.exception.rcvd.reason,
                             "message of 4097 bytes or more over the limit of 4096")

    async def test_ping(self) -> None:
        async with ws_connect(self.url, **client_options()) as ws:
            pong = await ws.ping(b"are you there")
            latency = await asyncio.wait_for(pong, TIMEOUT)
            self.assertGreaterEqual(latency, 0.0)

    async def test_client_closes_with_code_and_reason(self) -> None:
        ws = await ws_connect(self.url, **client_options())
        await ws.close(4001, "client bye")
        self.assertEqual(ws.close_code, 4001)        # our server echoes the code
        self.assertEqual((ws.protocol.close_sent.code, ws.protocol.close_sent.reason), (4001, "client bye"))
        self.assertEqual((ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason), (4001, ""))

    async def test_server_closes_with_code_and_reason(self) -> None:
        async def close_at_once(ours: WebSocket) -> None:
            self.assertEqual(await ours.recv(), "close please")
            await ours.close(4002, "server bye")
            self.assertEqual(ours.close_code, 4002)     # the websockets client echoed it

        _host, port, close = await start_server(close_at_once)
        self.addAsyncCleanup(close)
        async with ws_connect(f"ws://127.0.0.1:{port}/", **client_options()) as ws:
            await ws.send("close please")
            with self.assertRaises(WsClosed) as caught:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            self.assertEqual((caught.exception.rcvd.code, caught.exception.rcvd.reason), (4002, "server bye"))
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)


@unittest.skipIf(websockets is None and not REQUIRED,
                 "the websockets package is not installed (make test installs it)")
class OurClientAgainstWebsocketsServer(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        if websockets is None:
            raise AssertionError("EQUABOT_INTEROP=1 but websockets (>= 13) cannot be imported")

    async def serve(self, handler) -> str:
        server = await ws_serve(handler, "127.0.0.1", 0, max_size=4096)
        self.addAsyncCleanup(server.wait_closed)
        self.addCleanup(server.close)
        return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/path?x=1"

    async def test_echo_ping_and_close_with_code_and_reason(self) -> None:
        seen: dict = {}

        async def echo(theirs) -> None:
            seen["path"] = theirs.request.path
            try:
                async for message in theirs:
                    await theirs.send(message)
            except WsClosed:                    # 4003 is not a normal closure
                pass
            seen["close"] = (theirs.close_code, theirs.close_reason)

        url = await self.serve(echo)
        ws = await connect(url, headers=[("X-Test", "1")])
        ws.send("hello")
        ws.send(b"\x00\x01")
        self.assertEqual([await ws.recv(), await ws.recv()], ["hello", b"\x00\x01"])
        self.assertGreaterEqual(await asyncio.wait_for(ws.ping(b"p"), TIMEOUT), 0.0)
        await asyncio.wait_for(ws.close(4003, "client bye"), TIMEOUT)
        self.assertEqual(ws.close_code, 4003)          # websockets echoed our code
        await asyncio.sleep(0.05)
        self.assertEqual(seen, {"path": "/path?x=1", "close": (4003, "client bye")})

    async def test_server_closes_with_code_and_reason(self) -> None:
        async def close_at_once(theirs) -> None:
            await theirs.close(4004, "server bye")

        ws = await connect(await self.serve(close_at_once))
        with self.assertRaises(ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        self.assertEqual((caught.exception.code, caught.exception.reason), (4004, "server bye"))
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)

    async def test_our_limit_fails_with_1009(self) -> None:
        seen: dict = {}

        async def send_big(theirs) -> None:
            await theirs.send("y" * 2000)
            await theirs.wait_closed()
            seen["close"] = theirs.close_code

        ws = await connect(await self.serve(send_big), max_message_bytes=1000)
        with self.assertRaises(ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        self.assertEqual(caught.exception.code, 1009)
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        await asyncio.sleep(0.05)
        self.assertEqual(seen, {"close": 1009})

    async def test_their_limit_closes_us_with_1009(self) -> None:
        async def echo(theirs) -> None:
            try:
                async for message in theirs:
                    await theirs.send(message)
            except WsClosed:                    # they fail the connection with 1009
                pass

        ws = await connect(await self.serve(echo))
        ws.send(b"z" * 5000)                            # over the server's max_size=4096
        with self.assertRaises(ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        self.assertEqual(caught.exception.code, 1009)


if __name__ == "__main__":
    unittest.main()
