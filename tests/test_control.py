"""The WebSocket control protocol against an in-process gateway, with the package's own client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import unittest
from typing import Any

from equabot_gw.errors import ConnectionClosed, GatewayError
from equabot_gw.gateway.client import ControlClient
from equabot_gw.net.wsstream import connect
from tests.support import TOKEN, base_config, running_gateway


def slow_config(**gateway: Any) -> dict[str, Any]:
    data = base_config(**gateway)
    data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "slow", "model": "slow/echo"}]}
    data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": 40}}}
    return data


class ControlTestCase(unittest.IsolatedAsyncioTestCase):
    config: dict[str, Any] | None = None

    async def asyncSetUp(self) -> None:
        self._gateway_cm = running_gateway(self.config or slow_config())
        self.gw = await self._gateway_cm.__aenter__()

    async def asyncTearDown(self) -> None:
        await self._gateway_cm.__aexit__(None, None, None)

    async def client(self, token: str | None = TOKEN) -> ControlClient:
        return await ControlClient.open(self.gw.url, token)

    async def raw(self) -> Any:
        return await connect("ws" + self.gw.url[4:])

    async def frames_until_final(self, client: ControlClient, req_id: str) -> list[dict[str, Any]]:
        frames = []
        while True:
            frame = await asyncio.wait_for(client.next_frame(), 5)
            frames.append(frame)
            if frame.get("type") == "res" and frame.get("id") == req_id \
                    and frame["payload"].get("status") not in ("accepted", "started"):
                return frames

    def assertClosedWith(self, ws: Any, code: int) -> None:
        self.assertEqual(ws.close_code, code)


class HandshakeTest(ControlTestCase):
    async def test_hello_ok(self) -> None:
        c = await self.client()
        hello = c.hello
        self.assertEqual((hello["type"], hello["protocol"]), ("hello-ok", 3))
        self.assertEqual(hello["server"]["version"], "0.1.0")
        self.assertTrue(hello["server"]["connId"])
        self.assertIn("agent", hello["features"]["methods"])
        self.assertEqual(set(hello["features"]["events"]), {"agent", "chat", "tick", "shutdown"})
        self.assertEqual(hello["snapshot"]["health"]["status"], "ok")
        self.assertEqual(hello["policy"]["maxPayload"], 25 * 1024 * 1024)
        self.assertEqual(hello["policy"]["tickIntervalMs"], 30000)
        await c.close()

    async def test_request_before_connect_is_refused_and_closed_1008(self) -> None:
        ws = await self.raw()
        ws.send(json.dumps({"type": "req", "id": "1", "method": "health", "params": {}}))
        frame = json.loads(await ws.recv())
        self.assertEqual((frame["id"], frame["ok"], frame["error"]["code"]), ("1", False, "INVALID_REQUEST"))
        with self.assertRaises(ConnectionClosed):
            await ws.recv()
        await ws.wait_closed()
        self.assertClosedWith(ws, 1008)

    async def test_not_json_first_is_closed_1008(self) -> None:
        ws = await self.raw()
        ws.send("hello?")
        frame = json.loads(await ws.recv())
        self.assertFalse(frame["ok"])
        await ws.wait_closed()
        self.assertClosedWith(ws, 1008)

    async def test_bad_protocol_range(self) -> None:
        ws = await self.raw()
        ws.send(json.dumps({"type": "req", "id": "c", "method": "connect",
                            "params": {"minProtocol": 4, "maxProtocol": 5, "auth": {"token": TOKEN}}}))
        frame = json.loads(await ws.recv())
        self.assertIn("does not include version 3", frame["error"]["message"])
        await ws.wait_closed()
        self.assertClosedWith(ws, 1008)

    async def test_bad_auth_is_refused_and_closed(self) -> None:
        with self.assertRaisesRegex(GatewayError, "UNAUTHORIZED"):
            await self.client("wrong")
        with self.assertRaisesRegex(GatewayError, "UNAUTHORIZED"):
            await self.client(None)

    async def test_wrong_authorization_header_on_upgrade_is_401(self) -> None:
        with self.assertRaises(Exception) as caught:
            await connect("ws" + self.gw.url[4:], headers=[("Authorization", "Bearer nope")])
        self.assertIn("401", str(caught.exception))

    async def test_right_authorization_header_skips_connect_auth(self) -> None:
        ws = await connect("ws" + self.gw.url[4:], headers=[("Authorization", f"Bearer {TOKEN}")])
        ws.send(json.dumps({"type": "req", "id": "c", "method": "connect",
                            "params": {"minProtocol": 3, "maxProtocol": 3}}))
        self.assertTrue(json.loads(await ws.recv())["ok"])
        await ws.close()

    async def test_upgrade_checks(self) -> None:
        reader, writer = await asyncio.open_connection(self.gw.host, self.gw.server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 8\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 426"))
        self.assertIn(b"sec-websocket-version: 13", head.lower())
        writer.close()
        reader, writer = await asyncio.open_connection(self.gw.host, self.gw.server.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Origin: https://evil.example\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 403"))
        writer.close()

    async def test_plain_get_on_root_is_426(self) -> None:
        reader, writer = await asyncio.open_connection(self.gw.host, self.gw.server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        self.assertTrue(data.startswith(b"HTTP/1.1 426"))
        writer.close()


class MethodsTest(ControlTestCase):
    async def test_agent_run_streams_events_that_reassemble_the_reply(self) -> None:
        c = await self.client()
        c.ws.send(json.dumps({"type": "req", "id": "r1", "method": "agent",
                              "params": {"message": "hello there", "sessionKey": "k1"}}))
        frames = await self.frames_until_final(c, "r1")
        ack, *rest, final = frames
        self.assertEqual(ack["payload"]["status"], "accepted")
        run_id = ack["payload"]["runId"]
        events = [f for f in rest if f["type"] == "event" and f["event"] == "agent"]
        seqs = [f["seq"] for f in frames if f["type"] == "event"]
        self.assertEqual(seqs, sorted(seqs))
        self.assertTrue(all(e["payload"]["runId"] == run_id for e in events))
        phases = [e["payload"]["data"].get("phase") for e in events if e["payload"]["stream"] == "lifecycle"]
        self.assertEqual(phases, ["start", "end"])
        deltas = [e["payload"]["data"] for e in events if e["payload"]["stream"] == "assistant"]
        self.assertEqual("".join(d["delta"] for d in deltas), "Echo (turn 1): hello there")
        self.assertEqual(deltas[-1]["text"], "Echo (turn 1): hello there")
        self.assertEqual(final["payload"]["status"], "ok")
        self.assertEqual(final["payload"]["text"], "Echo (turn 1): hello there")
        self.assertEqual(final["payload"]["usage"]["total_tokens"], 7)
        await c.close()

    async def test_idempotency_key_returns_the_first_run(self) -> None:
        c = await self.client()
        params = {"message": "once", "sessionKey": "idem", "idempotencyKey": "abc"}
        c.ws.send(json.dumps({"type": "req", "id": "a", "method": "agent", "params": params}))
        first = await self.frames_until_final(c, "a")
        c.ws.send(json.dumps({"type": "req", "id": "b", "method": "agent", "params": params}))
        second = await self.frames_until_final(c, "b")
        self.assertEqual(first[0]["payload"]["runId"], second[0]["payload"]["runId"])
        history = await c.request("chat.history", {"sessionKey": "idem"})
        self.assertEqual([m["role"] for m in history["messages"]], ["user", "assistant"])
        await c.close()

    async def test_agent_wait(self) -> None:
        c = await self.client()
        c.ws.send(json.dumps({"type": "req", "id": "a", "method": "agent",
                              "params": {"message": "w", "agentId": "slow"}}))
        ack = json.loads(await c.ws.recv())
        waited = await c.request("agent.wait", {"runId": ack["payload"]["runId"]})
        self.assertEqual((waited["status"], waited["text"]), ("ok", "Echo (turn 1): w"))
        quick = await c.request("agent.wait", {"runId": ack["payload"]["runId"], "timeoutMs": 0})
        self.assertEqual(quick["status"], "ok")
        with self.assertRaisesRegex(GatewayError, "NOT_FOUND"):
            await c.request("agent.wait", {"runId": "run_nope"})
        await c.close()

    async def test_chat_abort_mid_run(self) -> None:
        c = await self.client()
        c.ws.send(json.dumps({"type": "req", "id": "s", "method": "chat.send",
                              "params": {"sessionKey": "agent:slow:chat", "message": " ".join(["w"] * 50)}}))
        started = json.loads(await c.ws.recv())
        self.assertEqual(started["payload"]["status"], "started")
        while True:     # wait for the first delta, then abort
            frame = json.loads(await c.ws.recv())
            if frame.get("event") == "chat" and frame["payload"]["state"] == "delta":
                break
        result = await c.request("chat.abort", {"sessionKey": "agent:slow:chat"})
        self.assertTrue(result["aborted"])
        while True:
            frame = json.loads(await asyncio.wait_for(c.ws.recv(), 2))
            if frame.get("event") == "chat" and frame["payload"]["state"] != "delta":
                break
        self.assertEqual(frame["payload"]["state"], "aborted")
        history = await c.request("chat.history", {"sessionKey": "agent:slow:chat"})
        self.assertTrue(history["messages"][-1].get("aborted"))
        await c.close()

    async def test_sessions_and_agents_and_config(self) -> None:
        c = await self.client()
        await c.request("chat.history", {"sessionKey": "none-yet"})
        c.ws.send(json.dumps({"type": "req", "id": "a", "method": "agent",
                              "params": {"message": "x", "sessionKey": "listed"}}))
        await self.frames_until_final(c, "a")
        keys = [s["key"] for s in (await c.request("sessions.list", {}))["sessions"]]
        self.assertIn("agent:main:listed", keys)
        self.assertTrue((await c.request("sessions.reset", {"key": "listed"}))["reset"])
        self.assertFalse((await c.request("sessions.delete", {"key": "listed"}))["deleted"])
        agents = await c.request("agents.list", {})
        self.assertEqual(agents["defaultId"], "main")
        self.assertEqual({a["id"] for a in agents["agents"]}, {"main", "slow"})
        config = await c.request("config.get", {})
        self.assertNotIn(TOKEN, json.dumps(config))
        self.assertEqual(config["config"]["gateway"]["auth"]["token"], "***")
        status = await c.request("status", {})
        self.assertEqual(status["defaultAgentId"], "main")
        await c.close()

    async def test_errors_keep_the_connection(self) -> None:
        c = await self.client()
        for method, params, code in (("nope", {}, "NOT_FOUND"), ("agent", {}, "INVALID_REQUEST"),
                                     ("agent", {"message": "x", "agentId": "ghost"}, "NOT_FOUND"),
                                     ("connect", {}, "CONFLICT"),
                                     ("agent", {"message": "x", "sessionKey": "bad key"}, "INVALID_REQUEST")):
            with self.subTest(method=method, params=params):
                with self.assertRaisesRegex(GatewayError, code):
                    await c.request(method, params)
        self.assertEqual((await c.request("health", {}))["status"], "ok")
        await c.close()

    async def test_message_over_max_payload_closes_1009(self) -> None:
        c = await self.client()
        c.ws.send(json.dumps({"type": "req", "id": "big", "method": "health",
                              "params": {"pad": "x" * (25 * 1024 * 1024)}}))
        with self.assertRaises(ConnectionClosed):
            while True:
                await c.ws.recv()
        await c.ws.wait_closed()
        self.assertEqual(c.ws.close_code, 1009)

    async def test_binary_frames_close_1003(self) -> None:
        c = await self.client()
        c.ws.send(b"\x00\x01")
        await c.ws.wait_closed()
        self.assertEqual(c.ws.close_code, 1003)

    async def test_close_handshake(self) -> None:
        c = await self.client()
        await c.ws.close(1000, "bye")
        self.assertEqual(c.ws.close_code, 1000)
        await asyncio.sleep(0.05)
        self.assertEqual(len(self.gw.control.connections), 0)


class GatewayEventsTest(ControlTestCase):
    config = slow_config(ws={"tickIntervalMs": 100})

    async def test_ticks_and_shutdown(self) -> None:
        c = await self.client()
        frame = json.loads(await asyncio.wait_for(c.ws.recv(), 1))
        self.assertEqual(frame["event"], "tick")
        stopping = asyncio.ensure_future(self.gw.stop())
        events = []
        try:
            while True:
                events.append(json.loads(await asyncio.wait_for(c.ws.recv(), 2))["event"])
        except ConnectionClosed as exc:
            self.assertEqual(exc.code, 1001)
        await stopping
        self.assertEqual(events[-1], "shutdown")


class SameSessionTest(ControlTestCase):
    async def test_http_and_ws_runs_on_one_session_are_serialised(self) -> None:
        """A chat completion over HTTP and an agent run over WS, same port, same session."""
        c = await self.client()
        body = json.dumps({"model": "equabot:slow", "messages": [{"role": "user", "content": "from http"}]})
        reader, writer = await asyncio.open_connection(self.gw.host, self.gw.server.port)
        writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"x-equabot-session-key: shared\r\nContent-Type: application/json\r\n"
                      f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        await asyncio.sleep(0.02)
        c.ws.send(json.dumps({"type": "req", "id": "w", "method": "agent",
                              "params": {"message": "from ws", "sessionKey": "agent:slow:shared"}}))
        frames = await self.frames_until_final(c, "w")
        http_reply = json.loads((await reader.read()).partition(b"\r\n\r\n")[2])
        writer.close()
        self.assertEqual(http_reply["choices"][0]["message"]["content"], "Echo (turn 1): from http")
        self.assertEqual(frames[-1]["payload"]["text"], "Echo (turn 2): from ws")
        history = await c.request("chat.history", {"sessionKey": "agent:slow:shared"})
        self.assertEqual([m["content"] for m in history["messages"]],
                         ["from http", "Echo (turn 1): from http", "from ws", "Echo (turn 2): from ws"])
        await c.close()


class EchoPathTest(ControlTestCase):
    config = base_config(ws={"echoPath": "/echo"})

    async def test_echo_path(self) -> None:
        ws = await connect("ws" + self.gw.url[4:] + "/echo")
        ws.send("text")
        ws.send(b"\x00bin")
        self.assertEqual(await ws.recv(), "text")
        self.assertEqual(await ws.recv(), b"\x00bin")
        await ws.close()
        self.assertEqual(ws.close_code, 1000)


if __name__ == "__main__":
    unittest.main()
