"""The control protocol with the ``websockets`` library (PyPI) as the client.

A real gateway process on port 0 speaks to ``websockets.asyncio.client``:
the opening handshake (its permessage-deflate offer declined), ``connect``
and its ``hello-ok``, an ``agent`` run whose streamed ``agent`` events
reassemble into the echo reply, ``chat.abort`` mid-run, a message over
``gateway.ws.maxPayloadBytes`` closing with 1009, the close handshake both
ways (the client's code and reason; the gateway's 1001 after a ``shutdown``
event on SIGTERM), the library's keepalive pings, and Origin and
Authorization checks on the upgrade.

The Makefile installs ``websockets`` into .venv-test and sets
EQUABOT_INTEROP=1: then a missing package is a failure. Elsewhere the tests skip.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import signal
import sys
import unittest
from pathlib import Path
from typing import Any

from equabot_gw.agents import transcripts
from tests.support import TOKEN, GatewayProcess, base_config, error_of

try:
    import websockets
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed as WsClosed, InvalidStatus
except ImportError:          # not installed, or older than 13 (no websockets.asyncio)
    websockets = None

REQUIRED = os.environ.get("EQUABOT_INTEROP") == "1"
SKIP_REASON = "the websockets package is not installed (make test installs it)"
TIMEOUT = 5.0                # seconds; each step takes milliseconds on loopback
MAX_PAYLOAD = 4096
ALLOWED_ORIGIN = "https://app.example"
METHODS = ("agent", "agent.identity.get", "agent.subscribe", "agent.wait", "agents.list", "channels.status", "chat.abort",
           "chat.history", "chat.send", "config.get", "cron.list", "cron.status", "device.pair.list",
           "health", "logs.tail", "models.list", "node.list", "sessions.delete", "sessions.list",
           "sessions.patch", "sessions.preview", "sessions.reset", "status", "system-presence",
           "usage.cost", "usage.status")


def gateway_config(**ws: Any) -> dict[str, Any]:
    data = base_config(auth={"rateLimit": {"maxAttempts": 1000}},
                       ws={"maxPayloadBytes": MAX_PAYLOAD, "allowedOrigins": [ALLOWED_ORIGIN], **ws})
    data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "slow", "model": "slow/echo"}]}
    data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": 40}}}
    return data


def client_options() -> dict[str, Any]:
    # websockets >= 15 reads proxy settings from the environment: never for loopback.
    params = inspect.signature(ws_connect.__init__).parameters
    return {"proxy": None} if "proxy" in params else {}


def connect_params(token: str | None = TOKEN, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "minProtocol": 3, "maxProtocol": 3,
        "client": {"id": "websockets-interop", "version": getattr(websockets, "__version__", "?"),
                   "platform": sys.platform, "mode": "test"}}
    if token is not None:
        params["auth"] = {"token": token}
    params.update(overrides)
    return params


@unittest.skipIf(websockets is None and not REQUIRED, SKIP_REASON)
class ControlTestCase(unittest.IsolatedAsyncioTestCase):
    gw: GatewayProcess
    config: dict[str, Any] = gateway_config()

    @classmethod
    def setUpClass(cls) -> None:
        if websockets is None:
            raise AssertionError("EQUABOT_INTEROP=1 but websockets (>= 13) cannot be imported")
        cls.gw = GatewayProcess(cls.config).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.gw.stop()
        cls.gw.tmp.cleanup()

    def setUp(self) -> None:
        self.ids = (f"r{n}" for n in itertools.count(1))

    @property
    def ws_url(self) -> str:
        return "ws" + self.gw.url[len("http"):] + "/"

    async def open(self, **options: Any) -> Any:
        """A socket past the gateway's first frame, the connect.challenge event."""
        ws = await asyncio.wait_for(ws_connect(self.ws_url, **client_options(), **options), TIMEOUT)
        self.addAsyncCleanup(ws.close)
        challenge = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        self.assertEqual((challenge["event"], sorted(challenge["payload"])), ("connect.challenge", ["nonce", "ts"]))
        return ws

    async def send(self, ws: Any, method: str, params: dict[str, Any] | None = None) -> str:
        req_id = next(self.ids)
        await ws.send(json.dumps({"type": "req", "id": req_id, "method": method, "params": params or {}}))
        return req_id

    async def frame(self, ws: Any) -> dict[str, Any]:
        """The next frame that is not a tick or a health event."""
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if frame.get("event") not in ("tick", "health"):
                return frame

    async def response(self, ws: Any, req_id: str) -> dict[str, Any]:
        while True:
            frame = await self.frame(ws)
            if frame["type"] == "res" and frame["id"] == req_id:
                return frame

    async def call(self, ws: Any, method: str, params: dict[str, Any] | None = None) -> Any:
        res = await self.response(ws, await self.send(ws, method, params))
        self.assertTrue(res["ok"], res)
        return res["payload"]

    async def connected(self, **options: Any) -> tuple[Any, dict[str, Any]]:
        ws = await self.open(**options)
        return ws, await self.call(ws, "connect", connect_params())

    async def until_final(self, ws: Any, req_id: str) -> list[dict[str, Any]]:
        """Frames up to the final response of an ``agent`` request (after its ``accepted`` ack)."""
        frames = []
        while True:
            frame = await self.frame(ws)
            frames.append(frame)
            if frame["type"] == "res" and frame["id"] == req_id and frame["payload"]["status"] != "accepted":
                return frames

    async def assertClosedBy(self, ws: Any, code: int, reason: str | None = None) -> None:
        """The gateway closes ``ws`` with ``code`` (and ``reason``); frames before it are skipped."""
        with self.assertRaises(WsClosed) as caught:
            while True:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        self.assertIsNotNone(caught.exception.rcvd, "no Close frame from the gateway")
        self.assertEqual(caught.exception.rcvd.code, code)
        if reason is not None:
            self.assertEqual(caught.exception.rcvd.reason, reason)


class HandshakeTest(ControlTestCase):
    async def test_it_is_the_package_from_pypi(self) -> None:
        here = Path(__file__).resolve().parent
        # Installed (into site-packages, e.g. of .venv-test), not a module of this tree.
        self.assertIn("site-packages", Path(websockets.__file__).resolve().parts)
        self.assertIn(f"websockets=={websockets.__version__}", (here / "requirements.txt").read_text().split())

    async def test_opening_handshake(self) -> None:
        ws = await self.open()
        self.assertEqual(ws.response.status_code, 101)
        self.assertEqual(ws.response.headers["Upgrade"].lower(), "websocket")
        # The library offered permessage-deflate; the gateway implements no extension.
        self.assertIn("permessage-deflate", ws.request.headers["Sec-WebSocket-Extensions"])
        self.assertIsNone(ws.response.headers.get("Sec-WebSocket-Extensions"))
        self.assertIsNone(ws.subprotocol)

    async def test_connect_answers_hello_ok(self) -> None:
        ws = await self.open()
        req_id = await self.send(ws, "connect", connect_params())
        res = await self.frame(ws)
        self.assertEqual((res["type"], res["id"], res["ok"]), ("res", req_id, True))
        hello = res["payload"]
        self.assertEqual((hello["type"], hello["protocol"]), ("hello-ok", 3))
        self.assertTrue(hello["server"]["version"])
        self.assertTrue(hello["server"]["connId"])
        self.assertEqual(sorted(hello["features"]["methods"]), sorted(METHODS))
        self.assertEqual(set(hello["features"]["events"]),
                         {"connect.challenge", "agent", "chat", "tick", "health", "shutdown"})
        self.assertTrue(hello["snapshot"]["health"]["ok"])
        health = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        self.assertEqual((health["event"], health["payload"]["defaultAgentId"]), ("health", "main"))
        self.assertEqual(hello["policy"]["maxPayload"], MAX_PAYLOAD)
        self.assertEqual(hello["policy"]["tickIntervalMs"], 30000)
        self.assertNotIn(TOKEN, json.dumps(hello))

    async def test_connect_accepts_a_range_containing_3(self) -> None:
        ws = await self.open()
        hello = await self.call(ws, "connect", connect_params(minProtocol=1, maxProtocol=9))
        self.assertEqual(hello["protocol"], 3)

    async def test_each_connection_gets_its_own_id(self) -> None:
        (_, one), (_, two) = await self.connected(), await self.connected()
        self.assertNotEqual(one["server"]["connId"], two["server"]["connId"])

    async def test_bad_token_is_refused_then_closed_1008(self) -> None:
        ws = await self.open()
        req_id = await self.send(ws, "connect", connect_params("wrong"))
        res = await self.frame(ws)
        self.assertEqual((res["id"], res["ok"], res["error"]["code"]), (req_id, False, "INVALID_REQUEST"))
        await self.assertClosedBy(ws, 1008)

    async def test_request_before_connect_is_refused_then_closed_1008(self) -> None:
        ws = await self.open()
        await self.send(ws, "health")
        self.assertFalse((await self.frame(ws))["ok"])
        await self.assertClosedBy(ws, 1008)

    async def test_disallowed_origin_is_refused_with_403(self) -> None:
        with self.assertRaises(InvalidStatus) as caught:
            await self.open(origin="https://evil.example")
        self.assertEqual(caught.exception.response.status_code, 403)
        self.assertEqual(error_of(caught.exception.response.body)["code"], "origin_not_allowed")
        ws, hello = await self.connected(origin=ALLOWED_ORIGIN)
        self.assertEqual(hello["type"], "hello-ok")

    async def test_wrong_authorization_header_is_401_before_the_upgrade(self) -> None:
        with self.assertRaises(InvalidStatus) as caught:
            await self.open(additional_headers={"Authorization": "Bearer nope"})
        self.assertEqual(caught.exception.response.status_code, 401)
        # The right header authenticates the upgrade; connect then needs no auth of its own.
        ws = await self.open(additional_headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual((await self.call(ws, "connect", connect_params(None)))["type"], "hello-ok")


class AgentRunTest(ControlTestCase):
    async def test_agent_events_reassemble_the_echo_reply(self) -> None:
        ws, _ = await self.connected()
        req_id = await self.send(ws, "agent", {"message": "hello there", "sessionKey": "interop-1"})
        ack, *frames = await self.until_final(ws, req_id)
        final = frames.pop()
        self.assertEqual((ack["type"], ack["id"], ack["ok"], ack["payload"]["status"]),
                         ("res", req_id, True, "accepted"))
        run_id = ack["payload"]["runId"]
        self.assertTrue(all(f["type"] == "event" for f in frames))   # nothing else in between
        self.assertTrue(all(f["payload"]["runId"] == run_id for f in frames))
        events = [f for f in frames if f["event"] == "agent"]
        chat = [f["payload"] for f in frames if f["event"] == "chat"]
        self.assertEqual(chat[-1]["state"], "final")
        self.assertEqual(chat[-1]["message"]["content"], [{"type": "text", "text": "Echo (turn 1): hello there"}])
        self.assertEqual([e["payload"]["seq"] for e in events], list(range(1, len(events) + 1)))
        conn_seqs = [f["seq"] for f in frames]
        self.assertEqual(conn_seqs, sorted(set(conn_seqs)))
        lifecycle = [e["payload"]["data"]["phase"] for e in events if e["payload"]["stream"] == "lifecycle"]
        self.assertEqual(lifecycle, ["start", "end"])
        self.assertEqual(events[0]["payload"]["stream"], "lifecycle")
        self.assertEqual(events[-1]["payload"]["stream"], "lifecycle")
        assistant = [e["payload"]["data"] for e in events if e["payload"]["stream"] == "assistant"]
        text = "Echo (turn 1): hello there"
        self.assertEqual("".join(d["delta"] for d in assistant), text)
        self.assertGreaterEqual(len(assistant), 1)             # coalesced: not one per word
        running = ""
        for data in assistant:                                 # "text" is the reply so far
            running += data["delta"]
            self.assertEqual(data["text"], running)
        self.assertEqual((final["payload"]["status"], final["payload"]["summary"]), ("ok", "completed"))
        self.assertEqual(final["payload"]["runId"], run_id)
        result = final["payload"]["result"]
        self.assertEqual(result["payloads"], [{"text": text, "mediaUrl": None}])
        self.assertEqual(result["meta"]["agentMeta"]["usage"],
                         {"input": 2, "output": 5, "cacheRead": 0, "cacheWrite": 0, "total": 7})

    async def test_session_turns_count_up(self) -> None:
        ws, _ = await self.connected()
        texts = []
        for _ in range(2):
            req_id = await self.send(ws, "agent", {"message": "again", "sessionKey": "interop-turns",
                                                   "agentId": "slow"})
            final = (await self.until_final(ws, req_id))[-1]["payload"]
            texts.append(final["result"]["payloads"][0]["text"])
        self.assertEqual(texts, ["Echo (turn 1): again", "Echo (turn 2): again"])
        history = await self.call(ws, "chat.history", {"sessionKey": "agent:slow:interop-turns"})
        self.assertEqual([m["role"] for m in history["messages"]], ["user", "assistant"] * 2)

    async def test_chat_abort_mid_run(self) -> None:
        ws, _ = await self.connected()
        req_id = await self.send(ws, "agent", {"message": " ".join(["w"] * 50), "agentId": "slow",
                                               "sessionKey": "interop-abort"})
        frame = await self.frame(ws)
        run_id = frame["payload"]["runId"]
        while not (frame.get("event") == "agent" and frame["payload"]["stream"] == "assistant"):
            frame = await self.frame(ws)                       # the run is streaming
        key = frame["payload"]["sessionKey"]
        self.assertEqual(key, "agent:slow:interop-abort")
        abort_id = await self.send(ws, "chat.abort", {"sessionKey": key})
        frames = await self.until_final(ws, req_id)
        abort_res = next(f for f in frames if f["type"] == "res" and f["id"] == abort_id)
        self.assertEqual(abort_res["payload"], {"ok": True, "aborted": True, "runIds": [run_id]})
        lifecycle = [f["payload"]["data"] for f in frames
                     if f.get("event") == "agent" and f["payload"]["stream"] == "lifecycle"]
        self.assertEqual(lifecycle[-1]["phase"], "error")
        chat = [f["payload"] for f in frames if f.get("event") == "chat"]
        self.assertEqual(chat[-1]["state"], "aborted")
        final = frames[-1]["payload"]
        self.assertEqual((final["status"], final["result"]["meta"]["aborted"]), ("aborted", True))
        partial = final["result"]["payloads"][0]["text"]
        self.assertTrue(partial.startswith("Echo"))
        self.assertLess(len(partial.split()), 50)
        history = await self.call(ws, "chat.history", {"sessionKey": key})
        self.assertEqual(history["messages"][-1]["stopReason"], "aborted")
        self.assertEqual(history["messages"][-1]["content"], [{"type": "text", "text": partial}])

    async def test_chat_events_reach_every_client(self) -> None:
        (sender, _), (watcher, _) = await self.connected(), await self.connected()
        await self.send(sender, "chat.send", {"sessionKey": "interop-broadcast", "message": "to all"})
        states = []
        while not states or states[-1]["state"] == "delta":
            frame = await self.frame(watcher)
            if frame.get("event") == "chat":
                states.append(frame["payload"])
        self.assertEqual(states[-1]["state"], "final")
        self.assertEqual(states[-1]["message"]["content"][0]["text"], "Echo (turn 1): to all")

    async def test_errors_keep_the_connection_open(self) -> None:
        ws, _ = await self.connected()
        for method, params, code in (("nope", {}, "INVALID_REQUEST"),
                                     ("agent", {"message": "x", "agentId": "ghost"}, "NOT_FOUND"),
                                     ("agent", {"message": "x", "sessionKey": "bad key"}, "INVALID_REQUEST")):
            with self.subTest(method=method, params=params):
                res = await self.response(ws, await self.send(ws, method, params))
                self.assertEqual((res["ok"], res["error"]["code"]), (False, code))
        self.assertTrue((await self.call(ws, "health"))["ok"])


class FramingTest(ControlTestCase):
    async def test_a_message_at_max_payload_is_fine(self) -> None:
        ws, _ = await self.connected()
        head = json.dumps({"type": "req", "id": "edge", "method": "health", "params": {"pad": ""}})
        message = head[:-3] + "x" * (MAX_PAYLOAD - len(head)) + '"}}'
        self.assertEqual(len(message.encode()), MAX_PAYLOAD)
        await ws.send(message)
        res = await self.response(ws, "edge")       # read whole: its params are checked
        self.assertEqual(res["error"]["message"], "invalid health params: at root: unexpected property 'pad'")

    async def test_message_over_max_payload_closes_1009(self) -> None:
        ws, _ = await self.connected()
        await ws.send(json.dumps({"type": "req", "id": "big", "method": "health",
                                  "params": {"pad": "x" * MAX_PAYLOAD}}))
        await self.assertClosedBy(ws, 1009)

    async def test_fragmented_request_is_one_message(self) -> None:
        ws, _ = await self.connected()
        frame = json.dumps({"type": "req", "id": "frag", "method": "health", "params": {}})
        await ws.send([frame[:10], frame[10:20], frame[20:]])
        self.assertTrue((await self.response(ws, "frag"))["ok"])

    async def test_binary_frames_close_1003(self) -> None:
        ws, _ = await self.connected()
        await ws.send(b"\x00\x01")
        await self.assertClosedBy(ws, 1003)

    async def test_keepalive_pings_are_answered(self) -> None:
        ws, _ = await self.connected(ping_interval=0.05, ping_timeout=1.0)
        await asyncio.sleep(0.3)                               # about five keepalive pings
        self.assertGreater(ws.latency, 0)                      # set from the gateway's pongs
        self.assertEqual(ws.state, websockets.protocol.State.OPEN)
        latency = await asyncio.wait_for(await ws.ping(b"explicit"), TIMEOUT)
        self.assertGreaterEqual(latency, 0.0)
        self.assertTrue((await self.call(ws, "health"))["ok"])

    async def test_client_closes_with_code_and_reason(self) -> None:
        ws, _ = await self.connected()
        observer, _ = await self.connected()
        before = (await self.call(observer, "status"))["connections"]["control"]
        await asyncio.wait_for(ws.close(4000, "client bye"), TIMEOUT)
        self.assertEqual((ws.protocol.close_sent.code, ws.protocol.close_sent.reason), (4000, "client bye"))
        self.assertEqual(ws.protocol.close_rcvd.code, 4000)   # the gateway echoes the code
        self.assertEqual(ws.close_code, 4000)
        for _ in range(50):
            if (await self.call(observer, "status"))["connections"]["control"] == before - 1:
                break
            await asyncio.sleep(0.01)
        self.assertEqual((await self.call(observer, "status"))["connections"]["control"], before - 1)


@unittest.skipIf(websockets is None and not REQUIRED, SKIP_REASON)
class ShutdownTest(ControlTestCase):
    config = gateway_config(tickIntervalMs=100)
    config["gateway"]["shutdownGraceSeconds"] = 0.3     # a 200-word slow run outlasts it

    @classmethod
    def setUpClass(cls) -> None:
        if websockets is None:
            raise AssertionError("EQUABOT_INTEROP=1 but websockets (>= 13) cannot be imported")

    @classmethod
    def tearDownClass(cls) -> None:
        pass

    async def asyncSetUp(self) -> None:
        self.gw = await asyncio.to_thread(GatewayProcess(self.config).start)
        self.addCleanup(self.gw.tmp.cleanup)
        self.addCleanup(self.gw.stop)

    async def test_ticks_arrive(self) -> None:
        ws, _ = await self.connected()
        frame = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
        self.assertEqual((frame["type"], frame["event"]), ("event", "health"))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
        self.assertEqual((frame["type"], frame["event"]), ("event", "tick"))
        self.assertIsInstance(frame["payload"]["ts"], int)

    async def test_sigterm_sends_shutdown_then_closes_1001(self) -> None:
        ws, _ = await self.connected()
        self.gw.proc.send_signal(signal.SIGTERM)
        events = []
        with self.assertRaises(WsClosed) as caught:
            while True:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
        self.assertEqual((caught.exception.rcvd.code, caught.exception.rcvd.reason), (1001, "gateway stopping"))
        self.assertEqual(ws.protocol.close_sent.code, 1001)   # the library completed the handshake
        self.assertEqual(events[-1]["event"], "shutdown")
        self.assertEqual(events[-1]["payload"]["reason"], "gateway stopping")
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, sorted(seqs))
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        self.assertEqual(await asyncio.to_thread(self.gw.proc.wait, 10), 0)

    async def test_sigterm_mid_run_closes_1001_and_records_the_run_aborted(self) -> None:
        ws, _ = await self.connected()
        await self.send(ws, "agent", {"message": " ".join(["w"] * 200), "agentId": "slow",
                                      "sessionKey": "interop-shutdown"})
        frame = await self.frame(ws)
        while frame.get("event") != "agent" or frame["payload"]["stream"] != "assistant":
            frame = await self.frame(ws)                       # the run is streaming
        self.gw.proc.send_signal(signal.SIGTERM)
        frames = []
        with self.assertRaises(WsClosed) as caught:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
        self.assertEqual(caught.exception.rcvd.code, 1001)
        self.assertIn("shutdown", [f.get("event") for f in frames])
        self.assertEqual(await asyncio.to_thread(self.gw.proc.wait, 10), 0)
        stem = transcripts.transcript_stem("agent:slow:interop-shutdown")
        path = self.gw.state_dir / "agents" / "slow" / "sessions" / f"{stem}.jsonl"
        last = json.loads(path.read_text().splitlines()[-1])
        self.assertEqual((last["type"], last["reason"]), ("aborted", "shutdown"))
        self.assertTrue(last["content"].startswith("Echo"), last)

    async def test_a_run_started_over_ws_may_finish_within_the_grace_period(self) -> None:
        ws, _ = await self.connected()
        await self.send(ws, "agent", {"message": "short", "agentId": "slow", "sessionKey": "interop-grace"})
        frame = await self.frame(ws)
        while frame.get("event") != "agent" or frame["payload"]["stream"] != "assistant":
            frame = await self.frame(ws)
        self.gw.proc.send_signal(signal.SIGTERM)         # 4 deltas x 40 ms left: within 0.3 s
        self.assertEqual(await asyncio.to_thread(self.gw.proc.wait, 10), 0)
        stem = transcripts.transcript_stem("agent:slow:interop-grace")
        path = self.gw.state_dir / "agents" / "slow" / "sessions" / f"{stem}.jsonl"
        last = json.loads(path.read_text().splitlines()[-1])
        self.assertEqual((last["type"], last["content"]), ("assistant", "Echo (turn 1): short"))

if __name__ == "__main__":
    unittest.main()
