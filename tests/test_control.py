"""The WebSocket control protocol against an in-process gateway, with the package's own client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import re
import logging
import os
import pathlib
import socket
import struct
import time
import unittest
import weakref
from typing import Any

from equabot_gw.agents.types import TurnRecord, Usage
from equabot_gw.errors import ConnectionClosed, GatewayError
from equabot_gw.gateway import control, methods, runs
from equabot_gw.gateway.client import ControlClient
from equabot_gw.gateway.coalesce import TextSoFar
from equabot_gw.gateway.params import SCHEMAS
from equabot_gw.logbuffer import LogBuffer
from equabot_gw.net.wsclient import connect
from tests.support import TOKEN, base_config, running_gateway, wait_for

CONNECT = {"minProtocol": 3, "maxProtocol": 3, "auth": {"token": TOKEN}}
# A scaled-down connect deadline: long enough for loopback, short for a test.
DEADLINE = 0.3


def limited_config(max_attempts: int) -> dict[str, Any]:
    """A config whose auth limiter counts loopback clients (the tests run there)."""
    rate: dict[str, Any] = {"maxAttempts": max_attempts, "exemptLoopback": False}
    return slow_config(auth={"token": TOKEN, "rateLimit": rate})


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 §5.2), for what the package's client will not send."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n) \
        if n < 65536 else bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_close_code(reader: asyncio.StreamReader, timeout: float = 3.0) -> int | None:
    """Read server frames until its Close frame arrives; that frame's status code."""
    data = b""
    async with asyncio.timeout(timeout):
        while (code := server_close_code(data)) is None:
            chunk = await reader.read(65536)
            if not chunk:
                return server_close_code(data)
            data += chunk
    return code


def server_close_code(data: bytes) -> int | None:
    """The status code of the first Close frame in unmasked server ``data``."""
    i = 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = struct.unpack("!H", data[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", data[i:i + 8])[0], i + 8
        if opcode == 0x8:
            return struct.unpack("!H", data[i:i + 2])[0] if n >= 2 else 1005
        i += n
    return None


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
        """A connected client past hello-ok and the health event that follows it."""
        c = await ControlClient.open(self.gw.url, token)
        health = await asyncio.wait_for(c.next_frame(), 2)
        self.assertEqual((health["type"], health["event"]), ("event", "health"))
        return c

    async def raw(self, **options: Any) -> Any:
        """A connected socket past the gateway's first frame, the challenge."""
        ws = await connect("ws" + self.gw.url[4:], **options)
        challenge = json.loads(await asyncio.wait_for(ws.recv(), 2))
        self.assertEqual((challenge["type"], challenge["event"]), ("event", "connect.challenge"))
        self.assertEqual(set(challenge["payload"]), {"nonce", "ts"})
        return ws

    async def frames_until_final(self, client: ControlClient, req_id: str) -> list[dict[str, Any]]:
        frames = []
        while True:
            frame = await asyncio.wait_for(client.next_frame(), 5)
            frames.append(frame)
            if frame.get("type") == "res" and frame.get("id") == req_id \
                    and frame["payload"].get("status") not in ("accepted", "started"):
                return frames

    async def run_agent(self, client: ControlClient, params: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.frames_until_final(client, client.send("agent", params))

    def assertClosedWith(self, ws: Any, code: int) -> None:
        self.assertEqual(ws.close_code, code)


def reply_of(final: dict[str, Any]) -> str:
    return "".join(p["text"] for p in final["payload"]["result"]["payloads"])


def family(frames: list[dict[str, Any]], name: str, run_id: str) -> list[dict[str, Any]]:
    return [f["payload"] for f in frames if f.get("type") == "event" and f["event"] == name
            and f["payload"]["runId"] == run_id]


class HandshakeTest(ControlTestCase):
    async def test_hello_ok(self) -> None:
        c = await self.client()
        hello = c.hello
        self.assertEqual((hello["type"], hello["protocol"]), ("hello-ok", 3))
        self.assertEqual(hello["server"]["version"], "0.1.0")
        self.assertEqual(hello["server"]["host"], socket.gethostname())
        self.assertTrue(hello["server"]["connId"])
        self.assertEqual(set(hello["features"]["methods"]), set(self.gw.control.methods))
        for method in ("agent", "agent.wait", "chat.send", "chat.history", "sessions.list", "logs.tail"):
            self.assertIn(method, hello["features"]["methods"])
        self.assertEqual(set(hello["features"]["events"]),
                         {"connect.challenge", "agent", "chat", "tick", "health", "shutdown"})
        snapshot = hello["snapshot"]
        self.assertEqual([p["mode"] for p in snapshot["presence"]], ["gateway", "cli"])
        import platform
        self.assertEqual(snapshot["presence"][0]["modelIdentifier"], methods.node_arch(platform.machine()))
        self.assertEqual(snapshot["health"]["defaultAgentId"], "main")
        self.assertEqual(set(snapshot["stateVersion"]), {"presence", "health"})
        self.assertEqual(snapshot["sessionDefaults"]["mainSessionKey"], "agent:main:main")
        self.assertEqual(hello["policy"]["maxPayload"], 25 * 1024 * 1024)
        self.assertEqual(hello["policy"]["tickIntervalMs"], 30000)
        await c.close()

    def test_the_gateway_names_its_architecture_as_the_original_does(self) -> None:
        # Node's os.arch(): the original's presence entry says "x64" where Python says "x86_64".
        for machine, arch in (("x86_64", "x64"), ("AMD64", "x64"), ("aarch64", "arm64"), ("arm64", "arm64"),
                              ("i686", "ia32"), ("armv7l", "arm"), ("ppc64le", "ppc64"), ("s390x", "s390x"),
                              ("riscv64", "riscv64")):
            with self.subTest(machine):
                self.assertEqual(methods.node_arch(machine), arch)

    async def test_a_health_event_follows_hello(self) -> None:
        ws = await self.raw()
        ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": CONNECT}))
        self.assertTrue(json.loads(await ws.recv())["ok"])
        event = json.loads(await asyncio.wait_for(ws.recv(), 2))
        self.assertEqual((event["event"], event["seq"]), ("health", 1))
        self.assertEqual(event["payload"]["agents"][0]["agentId"], "main")
        self.assertEqual(set(event["stateVersion"]), {"presence", "health"})
        await ws.close()

    async def test_every_client_the_original_has_is_accepted(self) -> None:
        clients = (("cli", "cli"), ("cli", "probe"), ("webchat", "webchat"), ("webchat-ui", "webchat"),
                   ("clawdbot-control-ui", "ui"), ("control-ui", "ui"), ("gateway-client", "backend"),
                   ("clawdbot-macos", "ui"), ("clawdbot-ios", "node"), ("clawdbot-android", "node"),
                   ("node-host", "node"), ("some-future-client", "future-mode"))
        for client_id, mode in clients:
            with self.subTest(client_id):
                ws = await self.raw()
                ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": {
                    **CONNECT, "client": {"id": client_id, "displayName": "x", "version": "1", "platform":
                                          "linux", "deviceFamily": "Linux", "modelIdentifier": "x64",
                                          "mode": mode, "instanceId": "i-1", "futureField": True},
                    "caps": ["tools"], "commands": ["canvas.present"], "permissions": {"camera": True},
                    "pathEnv": "/usr/bin", "role": "operator", "scopes": ["operator.admin"],
                    "device": {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"},
                    "locale": "en-US", "userAgent": "test/1"}}))
                self.assertTrue(json.loads(await ws.recv())["ok"])
                await ws.close()

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
        # As the original answers: INVALID_REQUEST with the version it speaks, then 1002.
        self.assertEqual((frame["id"], frame["ok"], frame["error"]["code"], frame["error"]["details"]),
                         ("c", False, "INVALID_REQUEST", {"expectedProtocol": 3}))
        self.assertTrue(frame["error"]["message"].startswith("protocol mismatch"), frame)
        self.assertIn("does not include version 3", frame["error"]["message"])
        await ws.wait_closed()
        self.assertClosedWith(ws, 1002)
        self.assertEqual(ws.close_reason, "protocol mismatch")

    async def test_unknown_connect_property_is_refused(self) -> None:
        ws = await self.raw()
        ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": {**CONNECT, "x": 1}}))
        frame = json.loads(await ws.recv())
        self.assertEqual(frame["error"]["message"], "invalid connect params: at root: unexpected property 'x'")
        await ws.wait_closed()
        self.assertClosedWith(ws, 1008)

    async def test_bad_auth_is_refused_and_closed(self) -> None:
        # The original's code; a command line (this client says mode "cli") gets the hint
        # in its config's terms, as the original's CLI shows it to its user.
        hint = "(set gateway.remote.token to match gateway.auth.token)"
        with self.assertRaisesRegex(GatewayError, "INVALID_REQUEST: unauthorized: gateway token mismatch "
                                    + re.escape(hint)):
            await self.client("wrong")
        with self.assertRaisesRegex(GatewayError, "INVALID_REQUEST: unauthorized: gateway token missing "
                                    + re.escape(hint)):
            await self.client(None)
        # Any other client: in the protocol's terms; the close carries the same words.
        ws = await self.raw()
        ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": {
            **CONNECT, "auth": {"token": "wrong"}, "client": {"id": "x", "mode": "backend"}}}))
        frame = json.loads(await ws.recv())
        expected = "unauthorized: gateway token mismatch (send the gateway token as connect.params.auth.token)"
        self.assertEqual(frame["error"], {"code": "INVALID_REQUEST", "message": expected})
        await ws.wait_closed()
        self.assertClosedWith(ws, 1008)
        self.assertEqual(ws.close_reason, expected)

    async def test_wrong_authorization_header_on_upgrade_is_401(self) -> None:
        with self.assertRaises(Exception) as caught:
            await connect("ws" + self.gw.url[4:], headers=[("Authorization", "Bearer nope")])
        self.assertIn("401", str(caught.exception))

    async def test_right_authorization_header_skips_connect_auth(self) -> None:
        ws = await self.raw(headers=[("Authorization", f"Bearer {TOKEN}")])
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


class AllowedOriginsTest(ControlTestCase):
    config = slow_config(ws={"allowedOrigins": ["https://App.Example.com/", "http://tools.example:8080",
                                                "https://secure.example:443", "not an origin"]})

    async def test_entries_are_compared_as_origins_as_browsers_send_them(self) -> None:
        # A browser sends scheme://host[:port], lower case, no default port, no path: an
        # entry copied from the address bar (a slash, capitals, the default port) admits it.
        for origin, allowed in (("https://app.example.com", True), ("https://App.Example.com/", True),
                                ("http://tools.example:8080", True), ("http://TOOLS.example:8080", True),
                                ("https://secure.example", True), ("https://app.example.com:8443", False),
                                ("http://app.example.com", False), ("http://tools.example", False),
                                ("https://evil.example", False), ("null", False)):
            with self.subTest(origin):
                if allowed:
                    ws = await self.raw(headers=[("Origin", origin)])
                    await ws.close()
                else:
                    with self.assertRaisesRegex(Exception, "server answered 403 instead of 101"):
                        await connect("ws" + self.gw.url[4:], headers=[("Origin", origin)])

    async def test_the_gateways_own_page_is_admitted_beside_the_list(self) -> None:
        # The chat page the gateway serves connects from the gateway's own origin: a list
        # naming other apps must not lock it out. Other loopback pages need the list.
        port = self.gw.server.port
        ws = await self.raw(headers=[("Origin", f"http://127.0.0.1:{port}")])
        await ws.close()
        with self.assertRaisesRegex(Exception, "server answered 403 instead of 101"):
            await connect("ws" + self.gw.url[4:], headers=[("Origin", "http://localhost:1")])


class RunsTest(ControlTestCase):
    async def test_an_agent_run_emits_both_event_families_and_the_original_final(self) -> None:
        c = await self.client()
        ack, *rest = await self.run_agent(c, {"message": "hello there", "sessionKey": "k1",
                                              "idempotencyKey": "idem-1"})
        final = rest[-1]
        self.assertEqual(set(ack["payload"]), {"runId", "status", "acceptedAt"})
        self.assertEqual((ack["payload"]["runId"], ack["payload"]["status"]), ("idem-1", "accepted"))
        agent = family(rest, "agent", "idem-1")
        self.assertEqual([a["seq"] for a in agent], list(range(1, len(agent) + 1)))
        self.assertEqual((agent[0]["stream"], agent[0]["data"]["phase"]), ("lifecycle", "start"))
        self.assertEqual((agent[-1]["stream"], agent[-1]["data"]["phase"]), ("lifecycle", "end"))
        self.assertTrue(all(a["sessionKey"] == "agent:main:k1" and isinstance(a["ts"], int) for a in agent))
        assistant = [a["data"] for a in agent if a["stream"] == "assistant"]
        self.assertEqual("".join(d["delta"] for d in assistant), "Echo (turn 1): hello there")
        self.assertEqual(assistant[-1]["text"], "Echo (turn 1): hello there")
        chat = family(rest, "chat", "idem-1")
        self.assertEqual([m["state"] for m in chat][-1], "final")
        self.assertTrue(all(m["state"] == "delta" for m in chat[:-1]))
        for m in chat:
            self.assertEqual(set(m), {"runId", "sessionKey", "seq", "state", "message"})
            self.assertEqual(set(m["message"]), {"role", "content", "timestamp"})
        self.assertEqual(chat[-1]["message"]["content"], [{"type": "text", "text": "Echo (turn 1): hello there"}])
        payload = final["payload"]
        self.assertEqual((payload["runId"], payload["status"], payload["summary"]), ("idem-1", "ok", "completed"))
        self.assertEqual(payload["result"]["payloads"], [{"text": "Echo (turn 1): hello there", "mediaUrl": None}])
        meta = payload["result"]["meta"]
        self.assertEqual(meta["aborted"], False)
        self.assertEqual((meta["agentMeta"]["provider"], meta["agentMeta"]["model"]), ("echo", "echo"))
        self.assertEqual(meta["agentMeta"]["usage"],
                         {"input": 2, "output": 5, "cacheRead": 0, "cacheWrite": 0, "total": 7})
        history = await c.request("chat.history", {"sessionKey": "k1"})
        self.assertEqual(history["sessionId"], meta["agentMeta"]["sessionId"])
        await c.close()

    async def test_agent_without_a_session_key_continues_the_agents_main_session(self) -> None:
        # As the original: agent:<agentId, else the default agent>:main, the hello's mainSessionKey.
        c = await self.client()
        first = await self.run_agent(c, {"message": "one"})
        second = await self.run_agent(c, {"message": "two", "sessionKey": ""})
        runs = [frames[-1]["payload"] for frames in (first, second)]
        self.assertEqual([p["result"]["payloads"][0]["text"] for p in runs],
                         ["Echo (turn 1): one", "Echo (turn 2): two"])
        events = family(first + second, "agent", runs[0]["runId"]) + family(second, "chat", runs[1]["runId"])
        self.assertEqual({e["sessionKey"] for e in events}, {"agent:main:main"})
        history = await c.request("chat.history", {"sessionKey": "agent:main:main"})
        self.assertEqual([m["content"][0]["text"] for m in history["messages"]],
                         ["one", "Echo (turn 1): one", "two", "Echo (turn 2): two"])
        self.assertEqual({p["result"]["meta"]["agentMeta"]["sessionId"] for p in runs}, {history["sessionId"]})
        listed = {row["key"]: row for row in (await c.request("sessions.list", {}))["sessions"]}
        self.assertEqual((listed["agent:main:main"]["turns"], listed["agent:main:main"]["sessionId"]),
                         (2, history["sessionId"]))
        other = await self.run_agent(c, {"message": "elsewhere", "agentId": "slow"})
        self.assertEqual({e["sessionKey"] for e in family(other, "agent", other[-1]["payload"]["runId"])},
                         {"agent:slow:main"})
        self.assertEqual(other[-1]["payload"]["result"]["payloads"][0]["text"], "Echo (turn 1): elsewhere")
        await c.close()

    async def test_every_client_sees_the_events_and_only_the_requester_the_final(self) -> None:
        a, b = await self.client(), await self.client()
        frames = await self.run_agent(a, {"message": "to all", "idempotencyKey": "shared-run"})
        seen = []
        while len(seen) < 2 or seen[-1].get("payload", {}).get("state") != "final":
            frame = await asyncio.wait_for(b.next_frame(), 2)
            if frame.get("event") == "chat":
                seen.append(frame)
        self.assertEqual(seen[-1]["payload"]["runId"], "shared-run")
        self.assertEqual(reply_of(frames[-1]), seen[-1]["payload"]["message"]["content"][0]["text"])
        await a.close()
        await b.close()

    async def test_a_repeated_idempotency_key_answers_the_first_runs_final_at_once(self) -> None:
        c = await self.client()
        params = {"message": "once", "sessionKey": "idem", "idempotencyKey": "abc"}
        first = await self.run_agent(c, params)
        second = await self.run_agent(c, params)
        self.assertEqual(len(second), 1)                    # no ack, no events: the final alone
        self.assertEqual(second[0]["payload"]["runId"], "abc")
        self.assertEqual(reply_of(second[0]), reply_of(first[-1]))
        history = await c.request("chat.history", {"sessionKey": "idem"})
        self.assertEqual([m["role"] for m in history["messages"]], ["user", "assistant"])
        await c.close()

    async def test_agent_wait(self) -> None:
        c = await self.client()
        req = c.send("agent", {"message": "w", "agentId": "slow", "idempotencyKey": "wait-me"})
        while True:
            frame = await c.next_frame()
            if frame.get("id") == req:
                break
        waited = await c.request("agent.wait", {"runId": "wait-me", "timeoutMs": 5000})
        self.assertEqual(set(waited), {"runId", "status", "startedAt", "endedAt"})
        self.assertEqual(waited["status"], "ok")
        self.assertLessEqual(waited["startedAt"], waited["endedAt"])
        quick = await c.request("agent.wait", {"runId": "wait-me", "timeoutMs": 0})
        self.assertEqual(quick["status"], "ok")
        started = time.monotonic()
        unknown = await c.request("agent.wait", {"runId": "no-such-run", "timeoutMs": 200})
        self.assertEqual(unknown, {"runId": "no-such-run", "status": "timeout"})
        self.assertGreaterEqual(time.monotonic() - started, 0.15)
        await c.close()

    async def test_agent_wait_does_not_block_the_connection(self) -> None:
        c = await self.client()
        waiting = c.send("agent.wait", {"runId": "later", "timeoutMs": 3000})
        self.assertEqual((await c.request("health", {}))["defaultAgentId"], "main")
        await c.request("chat.send", {"sessionKey": "later-s", "message": "x", "idempotencyKey": "later"})
        while True:     # the run that appeared meanwhile is the one waited for
            frame = await asyncio.wait_for(c.next_frame(), 3)
            if frame.get("id") == waiting:
                break
        self.assertEqual(frame["payload"]["status"], "ok")
        await c.close()

    async def test_chat_send_runs_under_the_idempotency_key_and_abort_finds_it(self) -> None:
        c = await self.client()
        started = await c.request("chat.send", {"sessionKey": "agent:slow:chat",
                                                "message": " ".join(["w"] * 50), "idempotencyKey": "chat-1"})
        self.assertEqual(started, {"runId": "chat-1", "status": "started"})
        while True:     # wait for the first delta, then abort
            frame = await asyncio.wait_for(c.next_frame(), 2)
            if frame.get("event") == "chat" and frame["payload"]["state"] == "delta":
                break
        result = await c.request("chat.abort", {"sessionKey": "agent:slow:chat", "runId": "chat-1"})
        self.assertEqual(result, {"ok": True, "aborted": True, "runIds": ["chat-1"]})
        while True:
            frame = await asyncio.wait_for(c.next_frame(), 2)
            if frame.get("event") == "chat" and frame["payload"]["state"] != "delta":
                break
        self.assertEqual((frame["payload"]["runId"], frame["payload"]["state"]), ("chat-1", "aborted"))
        history = await c.request("chat.history", {"sessionKey": "agent:slow:chat"})
        aborted = history["messages"][-1]
        self.assertEqual((aborted["stopReason"], aborted["api"], aborted["provider"], aborted["model"]),
                         ("aborted", "echo", "slow", "echo"))
        nothing = await c.request("chat.abort", {"sessionKey": "agent:slow:chat"})
        self.assertEqual(nothing, {"ok": True, "aborted": False, "runIds": []})
        await c.close()

    async def test_one_idempotency_key_names_one_run_in_flight(self) -> None:
        c = await self.client()
        first = c.send("agent", {"message": "a b c d e f", "agentId": "slow", "idempotencyKey": "one-id"})
        with self.assertRaisesRegex(GatewayError, "CONFLICT: idempotencyKey 'one-id' names a run of agent 'slow'"):
            await c.request("agent", {"message": "a b c d e f", "agentId": "main", "idempotencyKey": "one-id"})
        frames = await self.frames_until_final(c, first)
        self.assertEqual((frames[-1]["payload"]["status"], reply_of(frames[-1])), ("ok", "Echo (turn 1): a b c d e f"))
        again = await self.run_agent(c, {"message": "a b c d e f", "agentId": "main", "idempotencyKey": "one-id"})
        self.assertEqual(again[-1]["payload"]["status"], "ok")          # settled: the key is free for main
        runs = self.gw.control.runs                  # the key names main's run alone now
        self.assertEqual(list(runs._public.values()).count("one-id"), 1)
        self.assertIs(runs.of_run(runs.find("one-id").internal_id), runs.find("one-id"))
        await c.close()

    async def test_an_aborted_run_answers_its_partial_text_and_model_and_the_same_when_asked_again(self) -> None:
        runner, control = await self.client(), await self.client()
        params = {"message": " ".join(["w"] * 50), "agentId": "slow", "sessionKey": "abort-me",
                  "idempotencyKey": "abort-1"}
        req = runner.send("agent", params)
        while (await asyncio.wait_for(runner.next_frame(), 5)).get("event") != "chat":
            pass                                                  # it has text
        await control.request("chat.abort", {"sessionKey": "agent:slow:abort-me", "runId": "abort-1"})
        first = (await self.frames_until_final(runner, req))[-1]["payload"]
        self.assertEqual((first["status"], first["result"]["meta"]["aborted"]), ("aborted", True))
        partial = reply_of({"payload": first})
        self.assertTrue(partial and ("Echo (turn 1): " + params["message"]).startswith(partial), first)
        agent_meta = first["result"]["meta"]["agentMeta"]
        self.assertEqual((agent_meta["provider"], agent_meta["model"]), ("slow", "echo"))
        again = (await self.frames_until_final(runner, runner.send("agent", params)))[-1]["payload"]
        self.assertEqual((again["status"], again["result"]["payloads"], again["result"]["meta"]["agentMeta"]),
                         (first["status"], first["result"]["payloads"], agent_meta))
        await runner.close()
        await control.close()

    async def test_a_failed_run_answers_ok_false_with_payload_and_error(self) -> None:
        await self._gateway_cm.__aexit__(None, None, None)
        data = slow_config()
        data["agents"]["list"].append({"id": "hasty", "model": "slow/echo", "timeoutSeconds": 0.05})
        self._gateway_cm = running_gateway(data)
        self.gw = await self._gateway_cm.__aenter__()
        c = await self.client()
        ack, *rest = await self.run_agent(c, {"message": " ".join(["w"] * 20), "agentId": "hasty",
                                              "idempotencyKey": "too-slow"})
        final = rest[-1]
        self.assertEqual(ack["payload"]["status"], "accepted")
        self.assertEqual((final["ok"], final["error"]["code"]), (False, "AGENT_TIMEOUT"))
        self.assertEqual(set(final["payload"]), {"runId", "status", "summary"})
        self.assertEqual(final["payload"]["status"], "error")
        lifecycle = [a["data"] for a in family(rest, "agent", "too-slow") if a["stream"] == "lifecycle"]
        self.assertEqual([d["phase"] for d in lifecycle], ["start", "error"])
        self.assertEqual(family(rest, "chat", "too-slow")[-1]["state"], "error")
        waited = await c.request("agent.wait", {"runId": "too-slow"})
        self.assertEqual(waited["status"], "error")
        self.assertIn("no reply within", waited["error"])
        await c.close()

    async def test_attachments_and_deliver_are_refused_plainly(self) -> None:
        c = await self.client()
        with self.assertRaisesRegex(GatewayError, "attachments are not supported"):
            await c.request("agent", {"message": "x", "attachments": [{"type": "image"}]})
        with self.assertRaisesRegex(GatewayError, "no channels"):
            await c.request("agent", {"message": "x", "deliver": True})
        await c.close()


class MethodsTest(ControlTestCase):
    async def test_sessions_and_agents_and_config(self) -> None:
        c = await self.client()
        await c.request("chat.history", {"sessionKey": "none-yet"})
        await self.run_agent(c, {"message": "x", "sessionKey": "listed"})
        listed = await c.request("sessions.list", {"limit": 1})
        self.assertEqual((listed["count"], listed["sessions"][0]["key"]), (1, "agent:main:listed"))
        self.assertEqual(listed["sessions"][0]["turns"], 1)
        preview = await c.request("sessions.preview", {"keys": ["listed", "nope"]})
        self.assertEqual([p["status"] for p in preview["previews"]], ["ok", "missing"])
        self.assertEqual(preview["previews"][0]["items"][0], {"role": "user", "text": "x"})
        reset = await c.request("sessions.reset", {"key": "listed"})
        self.assertEqual((reset["ok"], reset["key"], reset["reset"]), (True, "agent:main:listed", True))
        deleted = await c.request("sessions.delete", {"key": "listed"})
        self.assertEqual(deleted, {"ok": True, "key": "agent:main:listed", "deleted": True, "archived": []})
        deleted = await c.request("sessions.delete", {"key": "listed"})
        self.assertEqual(deleted["deleted"], False)
        agents = await c.request("agents.list", {})
        self.assertEqual((agents["defaultId"], agents["mainKey"], agents["scope"]), ("main", "main", "per-sender"))
        self.assertEqual({a["id"] for a in agents["agents"]}, {"main", "slow"})
        self.assertEqual(await c.request("agent.identity.get", {"sessionKey": "agent:slow:x"}),
                         {"agentId": "slow", "name": "slow"})
        models = await c.request("models.list", {})
        self.assertEqual({(m["provider"], m["id"]) for m in models["models"]}, {("echo", "echo"), ("slow", "echo")})
        status = await c.request("status", {})
        self.assertEqual(status["heartbeat"]["defaultAgentId"], "main")
        await c.close()

    async def test_reset_or_delete_during_a_run_aborts_it_and_nothing_comes_back(self) -> None:
        runner, control = await self.client(), await self.client()
        key = "agent:slow:busy"
        for method, why in (("sessions.reset", "session reset"), ("sessions.delete", "session deleted")):
            with self.subTest(method=method):
                await self.run_agent(runner, {"message": "first", "sessionKey": key})
                req = runner.send("agent", {"message": " ".join(["w"] * 40), "sessionKey": key})
                while (await asyncio.wait_for(runner.next_frame(), 5)).get("event") != "agent":
                    pass                                        # it started
                answer = await control.request(method, {"key": key})
                self.assertEqual(answer["ok"], True)
                frames = await self.frames_until_final(runner, req)
                self.assertEqual((frames[-1]["payload"]["status"], frames[-1]["payload"]["result"]["meta"]["aborted"]),
                                 ("aborted", True))
                self.assertIn(why, json.dumps(frames))
                # The run's turn went to the transcript before it: the session is empty (reset)
                # or gone (deleted).
                self.assertEqual((await control.request("chat.history", {"sessionKey": key}))["messages"], [])
                listed = {row["key"]: row for row in (await control.request("sessions.list", {}))["sessions"]}
                if method == "sessions.reset":
                    self.assertEqual(listed[key]["turns"], 0)
                else:
                    self.assertNotIn(key, listed)
        await runner.close()
        await control.close()

    async def test_reset_leaves_a_fresh_session_that_the_next_turn_uses(self) -> None:
        # As the original: the key stays listed with a new sessionId, the next turn
        # records that sessionId and starts over, and sessions.delete then deletes it.
        c = await self.client()
        first = (await self.run_agent(c, {"message": "before", "sessionKey": "fresh"}))[-1]["payload"]
        old_id = first["result"]["meta"]["agentMeta"]["sessionId"]
        reset = await c.request("sessions.reset", {"key": "fresh"})
        new_id = reset["entry"]["sessionId"]
        self.assertNotEqual(new_id, old_id)
        listed = {row["key"]: row for row in (await c.request("sessions.list", {}))["sessions"]}
        self.assertEqual((listed["agent:main:fresh"]["sessionId"], listed["agent:main:fresh"]["turns"]), (new_id, 0))
        history = await c.request("chat.history", {"sessionKey": "fresh"})
        self.assertEqual((history["sessionId"], history["messages"]), (new_id, []))
        after = (await self.run_agent(c, {"message": "after", "sessionKey": "fresh"}))[-1]["payload"]
        self.assertEqual(after["result"]["meta"]["agentMeta"]["sessionId"], new_id)
        self.assertEqual(after["result"]["payloads"][0]["text"], "Echo (turn 1): after")
        history = await c.request("chat.history", {"sessionKey": "fresh"})
        self.assertEqual([(m["role"], m["content"][0]["text"]) for m in history["messages"]],
                         [("user", "after"), ("assistant", "Echo (turn 1): after")])
        self.assertEqual(history["sessionId"], new_id)
        self.assertEqual((await c.request("sessions.delete", {"key": "fresh"}))["deleted"], True)
        # A key with no session: reset gives it an empty one, listed and deletable, as the original.
        never = await c.request("sessions.reset", {"key": "never-used"})
        self.assertEqual(never["reset"], False)
        listed = {row["key"]: row for row in (await c.request("sessions.list", {}))["sessions"]}
        self.assertEqual(listed["agent:main:never-used"]["sessionId"], never["entry"]["sessionId"])
        self.assertEqual((await c.request("sessions.delete", {"key": "never-used"}))["deleted"], True)
        await c.close()

    async def test_config_get_never_shows_a_secret(self) -> None:
        c = await self.client()
        config = await c.request("config.get", {})
        self.assertNotIn(TOKEN, json.dumps(config))
        self.assertEqual(config["config"]["gateway"]["auth"]["token"], "***")
        self.assertIn('"token": "***"', config["raw"])
        await c.close()

    async def test_sessions_patch_sets_nothing_it_cannot_keep(self) -> None:
        c = await self.client()
        patched = await c.request("sessions.patch", {"key": "p", "label": None})
        self.assertEqual((patched["ok"], patched["key"]), (True, "agent:main:p"))
        with self.assertRaisesRegex(GatewayError, "keeps no per-session settings"):
            await c.request("sessions.patch", {"key": "p", "label": "mine"})
        await c.close()

    async def test_features_we_do_not_have_answer_empty(self) -> None:
        c = await self.client()
        self.assertEqual((await c.request("channels.status", {"probe": False}))["channels"], {})
        self.assertEqual(await c.request("cron.status", {}),
                         {"enabled": False, "storePath": "", "jobs": 0, "nextWakeAtMs": None})
        self.assertEqual(await c.request("cron.list", {}), {"jobs": []})
        self.assertEqual((await c.request("node.list", {}))["nodes"], [])
        self.assertEqual(await c.request("device.pair.list", {}), {"pending": [], "paired": []})
        self.assertEqual((await c.request("usage.status", {}))["providers"], [])
        await c.close()

    async def test_usage_cost_sums_the_transcripts(self) -> None:
        c = await self.client()
        await self.run_agent(c, {"message": "count me", "sessionKey": "cost"})   # 2 + 5 words
        await self.gw.runtime.store.record_turn(                                  # 1 + 4, a journal
            "main", "agent:main:stateless-test", TurnRecord("r-j", "stateless", "Echo (turn 1): stateless",
                                                            "ok", time.time(), usage=Usage(1, 4)),
            stateless=True)
        cost = await c.request("usage.cost", {"days": 2})
        # As the original: only days that had usage, and a known cost of 0 is not a missing one.
        today = time.strftime("%Y-%m-%d", time.gmtime())
        self.assertEqual([row["date"] for row in cost["daily"]], [today])
        self.assertEqual((cost["totals"]["input"], cost["totals"]["output"]), (3, 9))
        self.assertEqual((cost["totals"]["missingCostEntries"], cost["daily"][0]["missingCostEntries"]), (0, 0))
        await c.close()

    async def test_usage_cost_lists_the_days_with_usage_oldest_first(self) -> None:
        store = self.gw.runtime.store
        now = time.time()
        for n, days_ago in enumerate((40, 3, 0)):
            await store.record_turn("main", f"day-{days_ago}", TurnRecord(
                f"r-{n}", "hi", "Echo (turn 1): hi", "ok", now - days_ago * 86400, usage=Usage(1, 4)))
        c = await self.client()
        cost = await c.request("usage.cost", {})
        days = [time.strftime("%Y-%m-%d", time.gmtime(now - d * 86400)) for d in (3, 0)]
        self.assertEqual([(row["date"], row["totalTokens"]) for row in cost["daily"]], [(d, 5) for d in days])
        self.assertEqual((cost["days"], cost["totals"]["totalTokens"]), (30, 10))
        self.assertEqual((await c.request("usage.cost", {"days": 1}))["daily"][-1]["date"], days[-1])
        await c.close()

    async def test_logs_tail_shows_the_gateways_own_lines(self) -> None:
        logger = logging.getLogger("equabot_gw")
        self.addCleanup(logger.setLevel, logger.level)
        logger.setLevel(logging.INFO)       # as the CLI's default --log-level sets it
        c = await self.client()
        await c.request("health", {})
        tail = await c.request("logs.tail", {"limit": 50})
        self.assertTrue(any("res ✓ health" in json.loads(line)["1"] for line in tail["lines"]))
        later = await c.request("logs.tail", {"cursor": tail["cursor"]})
        self.assertFalse(later["reset"])
        self.assertTrue(all("logs.tail" in json.loads(line)["1"] for line in later["lines"]))
        await c.close()

    async def test_errors_keep_the_connection(self) -> None:
        c = await self.client()
        for method, params, code in (("nope", {}, "INVALID_REQUEST: unknown method: nope"),
                                     ("agent", {}, "INVALID_REQUEST: invalid agent params: at root: "
                                                   "must have required property 'message'"),
                                     ("agent", {"message": "x", "agentId": "ghost"}, "NOT_FOUND"),
                                     ("connect", {}, "INVALID_REQUEST: connect is only valid as the first request"),
                                     ("sessions.list", {"bogusParam": 1}, "INVALID_REQUEST: invalid "
                                      "sessions.list params: at root: unexpected property 'bogusParam'"),
                                     ("agent", {"message": "x", "sessionKey": "bad key"}, "INVALID_REQUEST")):
            with self.subTest(method=method, params=params):
                with self.assertRaisesRegex(GatewayError, code):
                    await c.request(method, params)
        self.assertTrue((await c.request("health", {}))["ok"])
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


class HardeningTest(ControlTestCase):
    """Hostile input before and after connect: every case ends in an answer and a close, in time."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.gw.control.connect_timeout = DEADLINE

    async def first_frame(self, message: str) -> tuple[dict[str, Any], Any]:
        ws = await self.raw()
        ws.send(message)
        frame = json.loads(await asyncio.wait_for(ws.recv(), 2))
        await asyncio.wait_for(ws.wait_closed(), 2)
        return frame, ws

    async def upgraded(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.gw.host, self.gw.server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        return reader, writer

    async def test_a_first_frame_nested_100000_deep_is_answered_and_closed_1008(self) -> None:
        frame, ws = await self.first_frame("[" * 100_000)
        self.assertEqual((frame["ok"], frame["error"]["code"]), (False, "INVALID_REQUEST"))
        self.assertIn("deeper than", frame["error"]["message"])
        self.assertClosedWith(ws, 1008)

    async def test_a_lone_surrogate_token_is_refused_closed_and_counted(self) -> None:
        await self._gateway_cm.__aexit__(None, None, None)
        self._gateway_cm = running_gateway(limited_config(2))
        self.gw = await self._gateway_cm.__aenter__()
        connect_frame = json.dumps({"type": "req", "id": "c", "method": "connect", "params": {
            "minProtocol": 3, "maxProtocol": 3, "auth": {"token": "\ud800"}}})   # stays escaped: \\ud800
        self.assertIn("\\ud800", connect_frame)
        for _ in range(2):
            frame, ws = await self.first_frame(connect_frame)
            self.assertEqual((frame["ok"], frame["error"]["code"]), (False, "INVALID_REQUEST"))
            self.assertClosedWith(ws, 1008)
        # Both attempts counted: the address is now locked out, even with the right token.
        with self.assertRaisesRegex(GatewayError, "RATE_LIMITED"):
            await self.client()

    async def test_a_credential_of_the_wrong_type_is_counted(self) -> None:
        await self._gateway_cm.__aexit__(None, None, None)
        self._gateway_cm = running_gateway(limited_config(1))
        self.gw = await self._gateway_cm.__aenter__()
        frame, ws = await self.first_frame(json.dumps({"type": "req", "id": "c", "method": "connect", "params": {
            "minProtocol": 3, "maxProtocol": 3, "auth": {"token": 12345}}}))
        self.assertEqual(frame["error"]["message"], "invalid connect params: at /auth/token: must be string")
        with self.assertRaisesRegex(GatewayError, "RATE_LIMITED"):
            await self.client()

    async def test_the_wrong_token_close_reason_names_the_connect_field(self) -> None:
        ws = await self.raw()
        ws.send(json.dumps({"type": "req", "id": "c", "method": "connect",
                            "params": {**CONNECT, "auth": {"token": "wrong"}}}))
        frame = json.loads(await ws.recv())
        self.assertEqual(frame["error"]["code"], "INVALID_REQUEST")      # as the original answers
        await ws.wait_closed()
        self.assertClosedWith(ws, 1008)
        self.assertIn("connect.params.auth.token", ws.close_reason)
        self.assertNotIn("Authorization", ws.close_reason)

    async def test_the_connect_deadline_holds_whatever_the_client_sends(self) -> None:
        frames = {
            "nothing": b"",
            "an unfinished fragmented message": client_frame(0x1, b'{"type":"req"', fin=False),
            "pings only": client_frame(0x9, b"p") * 3,
            "half a frame head": client_frame(0x1, b"x" * 300)[:3],
        }
        for name, data in frames.items():
            with self.subTest(name):
                reader, writer = await self.upgraded()
                started = time.monotonic()
                writer.write(data)
                code = await read_close_code(reader)
                elapsed = time.monotonic() - started
                writer.close()
                self.assertEqual(code, 1008)
                self.assertGreaterEqual(elapsed, DEADLINE * 0.8)
                self.assertLess(elapsed, DEADLINE + 1.5)

    async def test_the_deadline_also_covers_a_client_that_keeps_sending(self) -> None:
        reader, writer = await self.upgraded()
        started = time.monotonic()
        writer.write(client_frame(0x1, b"[", fin=False))

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(client_frame(0x0, b"[" * 10, fin=False))
                    await writer.drain()
                    await asyncio.sleep(0.02)
        feeding = asyncio.ensure_future(trickle())
        try:
            code = await read_close_code(reader)
        finally:
            feeding.cancel()
            writer.close()
        self.assertEqual(code, 1008)
        self.assertLess(time.monotonic() - started, DEADLINE + 1.5)

    async def test_a_big_first_frame_is_closed_1009(self) -> None:
        # The shell refuses it as it arrives (1009), before it is buffered whole.
        ws = await self.raw()
        ws.send(json.dumps({"type": "req", "id": "c", "method": "connect",
                            "params": {**CONNECT, "pad": "x" * 300_000}}))
        with self.assertRaises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
        await asyncio.wait_for(ws.wait_closed(), 2)
        self.assertClosedWith(ws, 1009)

    async def test_the_message_limit_is_small_until_connect(self) -> None:
        self.assertEqual(self.gw.control._new_control_socket().max_message_bytes, 256 * 1024)
        c = await self.client()
        [conn] = self.gw.control.connections
        self.assertEqual(conn.ws.max_message_bytes, self.gw.config.gateway.ws.max_payload_bytes)
        await c.close()

    async def test_an_unauthenticated_socket_queues_one_message(self) -> None:
        self.assertEqual(self.gw.control._new_control_socket().max_queued_messages, 1)
        c = await self.client()
        [conn] = self.gw.control.connections
        self.assertEqual(conn.ws.max_queued_messages, 16)
        await c.close()

    async def test_bad_frames_after_connect_get_an_error_and_the_connection_stays(self) -> None:
        c = await self.client()
        for bad in ("[" * 100_000, "{not json", '{"type":"req","id":"n","method":"health","params":{"a":NaN}}',
                    '"just a string"', '{"type":"req","id":"u","method":"health","params":{"t":"\\udc00"}}'):
            with self.subTest(bad[:30]):
                c.ws.send(bad)
                frame = await asyncio.wait_for(c.next_frame(), 2)
                self.assertEqual((frame["type"], frame["ok"], frame["error"]["code"]),
                                 ("res", False, "INVALID_REQUEST"))
        self.assertTrue((await c.request("health", {}))["ok"])
        await c.close()

    async def test_a_bad_frame_is_answered_under_its_own_id_else_invalid_never_null(self) -> None:
        # As the original: the error carries the frame's id, so the client's request settles;
        # a frame without a usable id is answered under "invalid" (a response's id is a
        # non-empty string in the protocol's schema, never null).
        c = await self.client()
        for bad, reply_id in (({"type": "req", "id": "r1"}, "r1"),
                              ({"type": "req", "id": "r2", "method": 7}, "r2"),
                              ({"type": "request", "id": "r3", "method": "health"}, "r3"),
                              ({"type": "req", "id": 4, "params": {}}, 4),
                              ({"type": "req", "id": True, "method": "health"}, "invalid"),
                              ({"type": "req", "id": "", "method": 1}, "invalid"),
                              ({"type": "req", "id": {"a": 1}, "method": "health"}, "invalid"),
                              (["type", "req"], "invalid"),
                              ("{not json", "invalid"),
                              # JSON by its grammar, refused for a value: still its own id
                              ('{"type":"req","id":"r5","method":"health","params":{"x":1e400}}', "r5"),
                              ('{"type":"req","id":"r6","method":"health","params":{"x":"\\ud800"}}', "r6"),
                              ('{"type":"req","id":"r7","method":"health","params":{"x":NaN}}', "r7"),
                              ('{"type":"req","id":"r8","method":"health","params":' + "[" * 200
                               + "]" * 200 + "}", "r8"),
                              ('{"type":"req","id":"r9","params":' + "[" * 30000 + "]" * 30000 + "}",
                               "invalid"),
                              ('{"type":"req","id":"r10","params":{"x":' + "9" * 5000 + "}}", "invalid")):
            with self.subTest(bad=bad[:80] if isinstance(bad, str) else bad):
                c.ws.send(bad if isinstance(bad, str) else json.dumps(bad))
                frame = await asyncio.wait_for(c.next_frame(), 2)
                self.assertEqual((frame["type"], frame["id"], frame["ok"], frame["error"]["code"]),
                                 ("res", reply_id, False, "INVALID_REQUEST"))
        self.assertTrue((await c.request("health", {}))["ok"])
        await c.close()
        ws = await self.raw()           # before connect too: then the close
        ws.send(json.dumps({"type": "req", "id": "first", "params": {}}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 2))
        self.assertEqual((frame["id"], frame["ok"]), ("first", False))
        with self.assertRaises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
        await ws.wait_closed()
        self.assertClosedWith(ws, 1008)

    async def test_a_waiting_request_cannot_pin_a_frame_sized_id_or_extra_keys(self) -> None:
        # agent.wait may wait a day and holds its request: before, a 1 MiB id (up to the
        # 25 MiB frame limit) or a 1 MiB key beside the four a request has (the original's
        # schema allows no others) was held that long, 32 times per connection.
        c = await self.client()
        wait = {"type": "req", "method": "agent.wait", "params": {"runId": "never", "timeoutMs": 86_400_000}}
        for bad, reply_id, message in (
                ({**wait, "id": "w" * (1 << 20)}, "invalid",
                 f"invalid request frame: an id of {1 << 20} characters, over 512"),
                ({**wait, "id": "w2", "pad": "x" * (1 << 20)}, "w2",
                 "invalid request frame: unexpected property 'pad'")):
            with self.subTest(reply_id):
                c.ws.send(json.dumps(bad))
                frame = await asyncio.wait_for(c.next_frame(), 2)
                self.assertEqual((frame["id"], frame["ok"], frame["error"]),
                                 (reply_id, False, {"code": "INVALID_REQUEST", "message": message}))
        [conn] = self.gw.control.connections
        self.assertEqual(len(conn._waits), 0)
        c.ws.send(json.dumps({**wait, "id": "w" * 512, "params": {"runId": "never", "timeoutMs": 1}}))
        frame = await asyncio.wait_for(c.next_frame(), 2)      # 512 characters: an id still
        self.assertEqual((frame["id"], frame["payload"]["status"]), ("w" * 512, "timeout"))
        await c.close()

    async def test_a_malformed_origin_is_403(self) -> None:
        for origin in ("http://[", "http://[::1", "http://host:99999999"):
            with self.subTest(origin):
                reader, writer = await asyncio.open_connection(self.gw.host, self.gw.server.port)
                key = base64.b64encode(os.urandom(16)).decode()
                writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             f"Origin: {origin}\r\nSec-WebSocket-Key: {key}\r\n"
                             f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                writer.close()
                self.assertTrue(head.startswith(b"HTTP/1.1 403"), head)

    async def test_every_number_in_params_is_checked(self) -> None:
        c = await self.client()
        cases = (
            ({"runId": "r", "timeoutMs": -1}, "invalid agent.wait params: at /timeoutMs: must be >= 0"),
            ({"runId": "r", "timeoutMs": "10"}, "invalid agent.wait params: at /timeoutMs: must be integer"),
            ({"runId": "r", "timeoutMs": 1.5}, "invalid agent.wait params: at /timeoutMs: must be integer"),
            ({"runId": "r", "timeoutMs": 1e300}, "invalid agent.wait params: at /timeoutMs: must be <= 86400000"),
            ({"timeoutMs": 5}, "invalid agent.wait params: at root: must have required property 'runId'"),
            ({"runId": "r", "bogus": 1}, "invalid agent.wait params: at root: unexpected property 'bogus'"),
        )
        for params, message in cases:
            with self.subTest(params):
                with self.assertRaises(GatewayError) as caught:
                    await c.request("agent.wait", params)
                self.assertEqual(str(caught.exception), f"INVALID_REQUEST: {message}")
        # NaN cannot even be written in a frame: the frame decoder refuses it.
        c.ws.send('{"type":"req","id":"nan","method":"agent.wait","params":{"runId":"r","timeoutMs":NaN}}')
        frame = await asyncio.wait_for(c.next_frame(), 2)
        self.assertIn("NaN is not a JSON value", frame["error"]["message"])
        await c.close()


class CoalescingTest(ControlTestCase):
    async def test_a_long_reply_is_sent_in_few_events_each_with_the_text_so_far(self) -> None:
        c = await self.client()
        words = " ".join(f"w{i}" for i in range(12_000))           # ~70 KiB, one delta per word
        c.ws.send(json.dumps({"type": "req", "id": "long", "method": "agent",
                              "params": {"message": words, "sessionKey": "long"}}))
        frames = await self.frames_until_final(c, "long")
        reply = reply_of(frames[-1])
        self.assertEqual(len(reply.split()), 12_003)
        assistant = [f["payload"]["data"] for f in frames
                     if f.get("event") == "agent" and f["payload"]["stream"] == "assistant"]
        self.assertLessEqual(len(assistant), 12)          # one per 16 KiB, not one per word
        so_far = ""
        for data in assistant:
            so_far += data["delta"]
            self.assertEqual(data["text"], so_far)
        self.assertEqual(so_far, reply)
        sent = sum(len(json.dumps(f)) for f in frames)
        self.assertLess(sent, 8 * len(reply))
        await c.close()

    async def test_a_long_reply_does_not_hold_the_loop(self) -> None:
        """A neighbour polling /health every 10 ms while a long reply streams (a sanity bound)."""
        async def health() -> float:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(self.gw.host, self.gw.server.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.assertTrue((await reader.read()).startswith(b"HTTP/1.1 200"))
            writer.close()
            return time.monotonic() - started

        c = await self.client()
        c.ws.send(json.dumps({"type": "req", "id": "long", "method": "agent",
                              "params": {"message": "w " * 40_000, "sessionKey": "long2"}}))
        final = asyncio.ensure_future(self.frames_until_final(c, "long"))
        worst = 0.0
        while not final.done():
            worst = max(worst, await health())
            await asyncio.sleep(0.01)
        await final
        self.assertLess(worst, 0.25)
        await c.close()

    def test_text_so_far_coalesces_by_time_and_by_size(self) -> None:
        text = TextSoFar(interval=0.15, chars=100, max_chars_per_second=10_000)
        self.assertIsNone(text.wait(0.0))
        text.add("a")
        self.assertEqual(text.wait(0.0), 0)                 # the first delta goes at once
        self.assertEqual(text.take(0.0), "a")
        text.add("b")
        text.add("c")
        self.assertAlmostEqual(text.wait(0.05), 0.10)       # then one per interval
        self.assertEqual(text.take(0.15), "bc")
        self.assertEqual(text.text, "abc")
        text.add("x" * 100)                                 # enough new text: due before the interval
        self.assertAlmostEqual(text.wait(0.15), 0.0103)     # (103 chars at 10,000 chars/s)
        text.take(0.2)
        text.add("y" * 5000)                                # a long text spaces the events
        self.assertAlmostEqual(text.wait(0.2), 0.5103)


class LogBufferTest(unittest.TestCase):
    def record(self, message: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("equabot_gw.test", level, __file__, 1, message, None, None)

    def test_the_ring_is_bounded_in_lines_and_bytes(self) -> None:
        buffer = LogBuffer(max_lines=3, max_bytes=100_000)
        for i in range(5):
            buffer.emit(self.record(f"line {i}"))
        self.assertEqual([json.loads(line)["1"] for line in buffer.tail(None, 10, 10**6).lines],
                         ["line 2", "line 3", "line 4"])
        small = LogBuffer(max_lines=1000, max_bytes=1000)
        for i in range(50):
            small.emit(self.record("x" * 100))
        kept = small.tail(None, 1000, 10**6).lines
        self.assertLessEqual(sum(len(line.encode()) + 1 for line in kept), 1000)
        self.assertGreater(len(kept), 0)

    def test_a_cursor_returns_only_newer_lines(self) -> None:
        buffer = LogBuffer()
        buffer.emit(self.record("one"))
        first = buffer.tail(None, 10, 10**6)
        self.assertEqual((first.cursor, first.truncated, first.reset), (buffer.end, False, False))
        buffer.emit(self.record("two", logging.WARNING))
        later = buffer.tail(first.cursor, 10, 10**6)
        [line] = later.lines
        self.assertEqual((json.loads(line)["1"], json.loads(line)["_meta"]["logLevelName"]), ("two", "WARN"))
        self.assertTrue(buffer.tail(10**9, 10, 10**6).reset)             # a cursor from elsewhere

    def test_truncated_means_the_byte_window_cut_the_log_not_the_line_limit(self) -> None:
        # As the original's logs.tail: `clawdbot logs --limit 5` must not warn
        # "Log tail truncated (increase --max-bytes)" when all it did was show five lines.
        buffer = LogBuffer()
        for i in range(10):
            buffer.emit(self.record(f"line {i}"))
        line_bytes = buffer.end // 10
        limited = buffer.tail(None, 5, 250_000)
        self.assertEqual([json.loads(line)["1"] for line in limited.lines], [f"line {i}" for i in range(5, 10)])
        self.assertFalse(limited.truncated)
        self.assertFalse(buffer.tail(0, 1, 250_000).truncated)           # from a cursor, limit alone
        window = buffer.tail(None, 100, 3 * line_bytes)                  # the window starts after byte 0
        self.assertEqual((len(window.lines), window.truncated), (3, True))
        self.assertTrue(buffer.tail(0, 100, 3 * line_bytes).truncated)   # and after the cursor
        self.assertFalse(buffer.tail(7 * line_bytes, 100, 3 * line_bytes).truncated)
        self.assertFalse(buffer.tail(None, 100, buffer.end).truncated)   # exactly the whole log fits

    def test_long_messages_are_cut(self) -> None:
        buffer = LogBuffer()
        buffer.emit(self.record("y" * 100_000))
        [line] = buffer.tail(None, 1, 10**6).lines
        self.assertLess(len(line), 9000)


class DocsTest(unittest.TestCase):
    def test_the_protocol_reference_names_every_method_param_and_event(self) -> None:
        text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
        for method, schema in SCHEMAS.items():
            self.assertIn(f"`{method}`", text.replace("**`", "`").replace("`**", "`"), method)
            for name in schema:
                self.assertIn(f"`{name}`", text, f"{method}.{name}")
        for event in control.EVENTS:
            self.assertIn(f"`{event}`", text, event)
        served = set(methods.METHODS) | set(runs.METHODS)
        self.assertEqual(served, set(SCHEMAS) - {"connect"})      # every method has its schema


class GatewayEventsTest(ControlTestCase):
    config = slow_config(ws={"tickIntervalMs": 100})

    async def test_ticks_and_shutdown(self) -> None:
        c = await self.client()
        frame = json.loads(await asyncio.wait_for(c.ws.recv(), 1))
        self.assertEqual((frame["event"], set(frame["payload"])), ("tick", {"ts"}))
        stopping = asyncio.ensure_future(self.gw.stop())
        events = []
        try:
            while True:
                events.append(json.loads(await asyncio.wait_for(c.ws.recv(), 2))["event"])
        except ConnectionClosed as exc:
            self.assertEqual(exc.code, 1001)
        await stopping
        self.assertEqual(events[-1], "shutdown")

    async def test_a_run_that_ends_in_the_grace_period_gets_its_final_before_the_close(self) -> None:
        c, other = await self.client(), await self.client()
        req = c.send("agent", {"message": "a b c d e f", "agentId": "slow"})     # ~40 ms a word
        while (await asyncio.wait_for(c.next_frame(), 5)).get("event") != "agent":
            pass                                                              # it started
        stopping = asyncio.ensure_future(self.gw.stop())
        while (await asyncio.wait_for(other.next_frame(), 5)).get("event") != "shutdown":
            pass
        # Once the gateway announced its shutdown, no run starts here; the one going on ends.
        with self.assertRaisesRegex(GatewayError, "UNAVAILABLE: the gateway is shutting down"):
            await other.request("agent", {"message": "late"})
        frames = []
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(c.ws.recv(), 5)))
        except ConnectionClosed as exc:
            self.assertEqual(exc.code, 1001)
        await stopping
        events = [f.get("event") for f in frames if f["type"] == "event"]
        self.assertIn("shutdown", events)
        final = [f for f in frames if f["type"] == "res" and f["id"] == req]
        self.assertEqual(len(final), 1, frames)
        self.assertEqual((final[0]["payload"]["status"], reply_of(final[0])), ("ok", "Echo (turn 1): a b c d e f"))


class RunRequestersTest(ControlTestCase):
    """What a run holds for the ``agent`` requests awaiting its final: bounded, and
    nothing of a client once it has closed."""

    PARAMS = {"message": " ".join(["w"] * 200), "agentId": "slow", "idempotencyKey": "joined"}   # ~8 s

    async def ack(self, client: ControlClient, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The first response to one ``agent`` request: its ack or its error."""
        req = client.send("agent", params or self.PARAMS)
        while (frame := await asyncio.wait_for(client.next_frame(), 5)).get("id") != req:
            pass
        return frame

    async def server_side(self, client: ControlClient) -> control.ControlConnection:
        conn_id = client.hello["server"]["connId"]
        return next(c for c in self.gw.control.connections if c.id == conn_id)

    async def end_run(self, client: ControlClient) -> None:
        await client.request("chat.abort", {"runId": "joined"})

    async def test_a_closed_clients_agent_requests_are_dropped_when_it_closes(self) -> None:
        keeper = await self.client()
        self.assertTrue((await self.ack(keeper))["ok"])
        entry = self.gw.control.runs.find("joined")
        gone = []
        for _ in range(3):
            c = await self.client()
            for _ in range(2):
                self.assertTrue((await self.ack(c))["ok"])           # the same key joins the run
            gone.append(weakref.ref(await self.server_side(c)))
            await c.close()
        await wait_for(lambda: len(entry.requesters) == 1)          # the keeper's, while the run goes on
        self.assertFalse(entry.settled.done())
        await wait_for(lambda: not any(ref() in self.gw.control.serving for ref in gone))
        gc.collect()
        self.assertEqual([ref() for ref in gone], [None, None, None])  # nothing holds a closed client
        await self.end_run(keeper)
        await keeper.close()

    async def test_a_client_that_closes_while_subscribed_is_not_held_by_the_run(self) -> None:
        keeper = await self.client()
        self.assertTrue((await self.ack(keeper))["ok"])
        c = await self.client()
        self.assertEqual(await c.request("agent.subscribe", {"runId": "joined"}),
                         {"runId": "joined", "status": "subscribed"})
        ref = weakref.ref(await self.server_side(c))
        await c.close()
        await wait_for(lambda: ref() not in self.gw.control.serving)
        await asyncio.sleep(0.05)                       # its subscription's task has ended
        gc.collect()
        self.assertIsNone(ref())
        self.assertFalse(self.gw.control.runs.find("joined").settled.done())
        await self.end_run(keeper)
        await keeper.close()

    async def test_one_run_holds_at_most_MAX_REQUESTERS_PER_RUN_agent_requests(self) -> None:
        limit = getattr(runs, "MAX_REQUESTERS_PER_RUN", 64)
        c, other = await self.client(), await self.client()
        for _ in range(limit):
            self.assertTrue((await self.ack(c))["ok"])
        for client in (c, other):                                   # over all connections
            refused = await self.ack(client)
            self.assertEqual((refused["ok"], refused["error"]),
                             (False, {"code": "RATE_LIMITED", "message":
                                      f"at most {limit} agent requests waiting for one run ('joined'); "
                                      f"wait for it with agent.wait"}))
        entry = self.gw.control.runs.find("joined")
        self.assertEqual(len(entry.requesters), limit)
        # Stopped once it has produced: a run stopped before its first word may run again.
        await wait_for(lambda: entry.run.events.text() != "", timeout=10)
        await self.end_run(other)
        finals = 0
        while finals < limit:                                       # every request held gets its final
            frame = await asyncio.wait_for(c.next_frame(), 5)
            finals += frame.get("type") == "res" and frame["payload"].get("status") == "aborted"
        self.assertEqual(entry.requesters, [])
        self.assertEqual((await self.ack(other))["payload"]["status"], "aborted")   # a settled run answers at once
        await c.close()
        await other.close()


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
        self.assertEqual(reply_of(frames[-1]), "Echo (turn 2): from ws")
        history = await c.request("chat.history", {"sessionKey": "agent:slow:shared"})
        self.assertEqual([m["content"][0]["text"] for m in history["messages"]],
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
