"""Idempotency and resume on the WebSocket doors: ``agent``/``chat.send`` keys and ``agent.subscribe``.

The ``idempotencyKey`` of the control protocol is the runtime's key: another
message under a used key is refused (422), a repeat after a restart gets the
first run's final answer without running again, and ``agent.subscribe
{runId, afterSeq}`` resumes a run's events from a text position — live, and
rebuilt from the transcript after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import unittest
from typing import Any

from equabot_gw.errors import GatewayError
from equabot_gw.gateway.client import ControlClient
from tests.support import TOKEN
from tests.test_resilience import MESSAGE, ResilienceCase


class WebSocketTest(ResilienceCase):
    async def connect(self, gateway: Any) -> ControlClient:
        client = await ControlClient.open(gateway.url, TOKEN)
        self.addAsyncCleanup(client.close)
        return client

    async def final(self, client: ControlClient, req_id: str) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(client.next_frame(), 10)
            if frame.get("type") == "res" and frame.get("id") == req_id and frame["payload"].get("status") != "accepted":
                return frame

    async def subscribe(self, client: ControlClient, run_id: str, after: int) -> tuple[str, list[int], dict[str, Any]]:
        """The text an ``agent.subscribe`` sends, its event seqs, and its final payload."""
        req_id = client.send("agent.subscribe", {"runId": run_id, "afterSeq": after})
        text, seqs = "", []
        while True:
            frame = await asyncio.wait_for(client.next_frame(), 10)
            if frame.get("type") == "event" and frame["event"] == "agent" and "delta" in frame["payload"]["data"]:
                self.assertEqual(frame["payload"]["runId"], run_id)
                text += frame["payload"]["data"]["delta"]
                seqs.append(frame["payload"]["seq"])
            elif frame.get("type") == "res" and frame.get("id") == req_id and frame["payload"]["status"] != "subscribed":
                return text, seqs, frame["payload"]

    async def test_another_message_under_a_used_key_is_refused(self) -> None:
        client = await self.connect(await self.start())
        first = await self.final(client, client.send("agent", {"message": "one", "idempotencyKey": "ws-k"}))
        self.assertTrue(first["ok"])
        with self.assertRaisesRegex(GatewayError, "INVALID_REQUEST: Keys for idempotent requests"):
            await client.request("agent", {"message": "two", "idempotencyKey": "ws-k"})
        self.assertEqual(self.counting.calls, 1)

    async def test_a_repeat_after_a_restart_gets_the_first_final_without_running_again(self) -> None:
        gateway = await self.start()
        client = await self.connect(gateway)
        params = {"message": MESSAGE, "sessionKey": "ws-s", "idempotencyKey": "ws-restart"}
        first = await self.final(client, client.send("agent", params))
        await client.close()
        await self.stop(gateway)
        client = await self.connect(await self.start())
        again = await self.final(client, client.send("agent", params))
        self.assertEqual(again["payload"]["result"]["payloads"][0]["text"], "Echo (turn 1): " + MESSAGE)
        self.assertEqual((again["payload"]["runId"], again["payload"]["status"]), (first["payload"]["runId"], "ok"))
        self.assertEqual(self.counting.calls, 1)

    async def test_subscribe_resumes_a_run_from_a_text_position_live_and_after_a_restart(self) -> None:
        gateway = await self.start()
        # A keyed HTTP stream, cut: its run goes on; a control client picks it up by its key.
        events = await self.cut(gateway, "http-then-ws", 3)
        client = await self.connect(gateway)
        whole = "Echo (turn 1): " + MESSAGE
        text, seqs, final = await self.subscribe(client, "http-then-ws", 20)      # while it runs
        self.assertEqual((text, final["status"]), (whole[20:], "ok"))
        self.assertEqual(seqs[-1], len(whole))
        self.assertEqual(seqs, sorted(seqs))
        await client.close()
        await self.stop(gateway)
        client = await self.connect(await self.start())
        run_id = "run_" + events[0][1]["id"][len("chatcmpl-"):]
        text, _, final = await self.subscribe(client, run_id, 7)                  # rebuilt from the transcript
        self.assertEqual((text, final["status"]), (whole[7:], "ok"))
        self.assertEqual(self.counting.calls, 1)
        with self.assertRaisesRegex(GatewayError, "unknown run"):
            await client.request("agent.subscribe", {"runId": "no-such-run"})

    async def test_a_subscriber_to_a_run_started_over_websocket_gets_each_delta_once(self) -> None:
        # Such a run is broadcast to every client; the subscriber's copy comes from its subscription alone.
        gateway = await self.start()
        starter, follower = await self.connect(gateway), await self.connect(gateway)
        await starter.request("agent", {"message": MESSAGE, "idempotencyKey": "ws-sub"})    # the ack
        req_id = follower.send("agent.subscribe", {"runId": "ws-sub", "afterSeq": 0})
        subscribed, text, seqs = False, "", []
        while True:
            frame = await asyncio.wait_for(follower.next_frame(), 10)
            if frame.get("type") == "res" and frame.get("id") == req_id:
                if frame["payload"]["status"] == "subscribed":
                    subscribed = True
                    continue
                break
            if subscribed and frame.get("type") == "event" and frame["event"] == "agent" \
                    and "delta" in frame["payload"]["data"]:
                text += frame["payload"]["data"]["delta"]
                seqs.append(frame["payload"]["seq"])
        self.assertEqual(text, "Echo (turn 1): " + MESSAGE)
        self.assertEqual((seqs, seqs[-1]), (sorted(set(seqs)), len(text)))     # one seq of one kind
        # Nothing of the run's broadcast comes after the subscription's end either (its relay's
        # last events are held back until it settled); then nothing is held back any more.
        entry = gateway.control.runs.find("ws-sub")
        await asyncio.wait_for(asyncio.shield(entry.settled), 5)
        await asyncio.sleep(0.2)
        late = []
        with contextlib.suppress(TimeoutError):
            while True:
                late.append(await asyncio.wait_for(follower.next_frame(), 0.2))
        self.assertEqual([f for f in late if f.get("event") == "agent" and f["payload"].get("stream") == "assistant"], [])
        self.assertEqual([conn.subscriptions for conn in gateway.control.connections], [{}, {}])

    async def test_a_subscriber_naming_the_runtime_run_id_gets_each_delta_once(self) -> None:
        gateway = await self.start()
        starter, follower = await self.connect(gateway), await self.connect(gateway)
        await starter.request("agent", {"message": MESSAGE, "idempotencyKey": "ws-sub-2"})
        internal = gateway.control.runs.find("ws-sub-2").internal_id
        text, seqs, final = await self.subscribe(follower, internal, 0)
        # The broadcast carries the public id; its deltas would have been added to the text.
        self.assertEqual((text, final["status"]), ("Echo (turn 1): " + MESSAGE, "ok"))


if __name__ == "__main__":
    unittest.main()


class ShutdownCloseTest(unittest.IsolatedAsyncioTestCase):
    """A stop with nothing in flight does not wait on WebSocket peers that never answer
    the close: each gets its 1001, a short moment to answer, then its connection is
    dropped (the shell's 10 s close timeout is for a peer still in use)."""

    async def upgrade(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        import base64
        import os
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        return reader, writer

    @staticmethod
    def frame(payload: bytes) -> bytes:
        """A masked text frame (zero mask: the payload as it is)."""
        import struct
        size = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        return bytes([0x81]) + size + b"\0\0\0\0" + payload

    async def test_silent_peers_are_dropped_after_a_short_wait(self) -> None:
        import json
        import time
        from unittest import mock
        from equabot_gw.gateway import control
        from tests.support import running_gateway
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(mock.patch.object(control, "SHUTDOWN_CLOSE_TIMEOUT", 0.3))
            gateway = await stack.enter_async_context(running_gateway())
            port = gateway.server.port
            idle = await self.upgrade(port)                  # never sends connect
            connected = await self.upgrade(port)
            connected[1].write(self.frame(json.dumps({
                "type": "req", "id": "1", "method": "connect",
                "params": {"minProtocol": 3, "maxProtocol": 3, "auth": {"token": TOKEN},
                           "client": {"id": "cli", "version": "1", "platform": "test", "mode": "cli"}}}).encode()))
            while b"hello-ok" not in await asyncio.wait_for(connected[0].read(65536), 5):
                pass
            failing = await self.upgrade(port)               # its close (1009) is under way already
            failing[1].write(bytes([0x81, 0xFF]) + (1 << 20).to_bytes(8, "big") + b"\0\0\0\0")
            await asyncio.sleep(0.2)
            # Read as it comes: a dropped connection's reset would discard what was not read.
            reading = [asyncio.ensure_future(self.read_to_end(reader)) for reader, _ in (idle, connected, failing)]
            started = time.monotonic()
            await asyncio.wait_for(gateway.stop(), 8)
            took = time.monotonic() - started
            for received in await asyncio.wait_for(asyncio.gather(*reading), 5):   # each one is gone
                self.assertIn(b"\x88", received)                                  # after a Close frame
            for _, writer in (idle, connected, failing):
                writer.close()
            self.assertLess(took, 2.5)       # 0.3 s to answer, then dropped: not the 10 s close timeout

    @staticmethod
    async def read_to_end(reader: asyncio.StreamReader) -> bytes:
        received = b""
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionError:
            pass
        return received
