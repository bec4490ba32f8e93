"""Our command line against the original Gateway: a fake one that answers with its captured frames.

The fake speaks WebSocket on loopback, sends the original's captured
``connect.challenge``, refuses a ``connect`` whose client id or mode the
original's schema does not take (with the original's words), and answers
each request with the payload the original sent for that method
(``tests/data/protocol/``). The remote ``sessions`` commands must print
what the original's rows carry, not a traceback over keys only ours send.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import unittest
import uuid
from typing import Any

from equabot_gw.gateway.client import connect_params
from equabot_gw.net import wshandshake
from equabot_gw.net.wsstream import WebSocket
from tests.support import ROOT
from tests.test_protocol_replay import CLI_DIR, load_anchor, load_capture, shape_problems

TOKEN = "original-token"


def captured_connects() -> list[dict[str, Any]]:
    """Every ``connect`` request the original's clients sent (the anchor's and each command's)."""
    conns = [load_anchor()] + [conn for path in sorted(CLI_DIR.glob("*.jsonl"))
                               for conn in load_capture(path)[1].values()]
    return [r["frame"] for conn in conns for r in conn
            if r["dir"] == "c2s" and r["frame"].get("method") == "connect"]


def captured_payloads() -> dict[str, Any]:
    """The original's ok payload for each method its clients called (the first one captured)."""
    payloads: dict[str, Any] = {}
    conns = [load_anchor()] + [conn for path in sorted(CLI_DIR.glob("*.jsonl"))
                               for conn in load_capture(path)[1].values()]
    for conn in conns:
        methods = {r["frame"]["id"]: r["frame"]["method"] for r in conn if r["dir"] == "c2s"}
        for record in conn:
            frame = record["frame"]
            if record["dir"] == "s2c" and frame.get("type") == "res" and frame.get("ok") \
                    and frame.get("id") in methods:
                payloads.setdefault(methods[frame["id"]], frame["payload"])
    return payloads


CONNECTS = captured_connects()
PAYLOADS = captured_payloads()
CHALLENGE = next(r["frame"] for r in load_anchor() if r["frame"].get("event") == "connect.challenge")
# What the original's clients were seen to send as client.id and client.mode (its schema's enums hold these).
CLIENT_IDS = {c["params"]["client"]["id"] for c in CONNECTS}
CLIENT_MODES = {c["params"]["client"]["mode"] for c in CONNECTS}


class FakeOriginal:
    """A WebSocket server on loopback answering as the original Gateway did, from its captures."""

    def __init__(self) -> None:
        self.connects: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)
        key = {name.strip().lower(): value.strip() for name, value in fields.items()}["sec-websocket-key"]
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {wshandshake.accept_key(key)}\r\n\r\n").encode())
        ws = WebSocket(client=False)
        writer.transport.set_protocol(ws)
        ws.connection_made(writer.transport)
        try:
            ws.send(json.dumps(CHALLENGE))
            async with asyncio.timeout(10):
                async for message in ws:
                    if not self._answer(ws, json.loads(message)):
                        await ws.close(1008, "connect refused")
                        break
        except Exception:       # the client went away: nothing to answer
            pass

    def _answer(self, ws: WebSocket, frame: dict[str, Any]) -> bool:
        if frame["method"] == "connect":
            self.connects.append(frame)
            client = frame["params"].get("client") or {}
            if client.get("id") not in CLIENT_IDS or client.get("mode") not in CLIENT_MODES:
                # The original's words for a client id outside its enum (seen live).
                ws.send(json.dumps({"type": "res", "id": frame["id"], "ok": False, "error": {
                    "code": "INVALID_REQUEST", "message": "invalid connect params: at /client/id: must be "
                    "equal to constant; at /client/id: must match a schema in anyOf"}}))
                return False
            ws.send(json.dumps({"type": "res", "id": frame["id"], "ok": True, "payload": PAYLOADS["connect"]}))
            return True
        self.requests.append(frame)
        ws.send(json.dumps({"type": "res", "id": frame["id"], "ok": True, "payload": PAYLOADS[frame["method"]]}))
        return True


class ConnectShapeTest(unittest.TestCase):
    def test_connect_params_have_the_original_clis_shape(self) -> None:
        ours = connect_params("a-token", "token")
        anchor = next(c["params"] for c in CONNECTS if "device" not in c["params"])
        self.assertEqual(list(ours), list(anchor))                          # same keys, same order
        self.assertEqual(shape_problems(ours, [c["params"] for c in CONNECTS], "connect"), [])
        self.assertEqual(list(ours["client"]), list(anchor["client"]))
        self.assertEqual((ours["client"]["id"], ours["client"]["mode"]), ("cli", "cli"))
        self.assertEqual(str(uuid.UUID(ours["client"]["instanceId"])), ours["client"]["instanceId"])
        self.assertNotEqual(ours["client"]["instanceId"], connect_params(None)["client"]["instanceId"])
        self.assertEqual(ours["auth"], {"token": "a-token"})
        self.assertNotIn("auth", connect_params(None))
        self.assertEqual(connect_params("pw", "password")["auth"], {"password": "pw"})


class AgainstTheOriginalTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.fake = FakeOriginal()
        self.url = await self.fake.start()
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)

    async def asyncTearDown(self) -> None:
        await self.fake.stop()

    async def cli(self, *args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EQUABOT_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "equabot_gw", *args, "--url", self.url, "--token", TOKEN,
            "--state-dir", self._tmp.name, cwd=ROOT, env={**env, "HOME": self._tmp.name},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(), err.decode()

    def assertOriginalConnect(self) -> None:
        self.assertTrue(self.fake.connects)
        for frame in self.fake.connects:
            self.assertEqual(shape_problems(frame["params"], [c["params"] for c in CONNECTS], "connect"), [])
            self.assertEqual(frame["params"]["auth"], {"token": TOKEN})

    async def test_sessions_list_prints_the_originals_rows(self) -> None:
        code, out, err = await self.cli("sessions", "list")
        self.assertEqual((code, err), (0, ""))
        self.assertOriginalConnect()
        rows = PAYLOADS["sessions.list"]["sessions"]
        self.assertEqual(out.splitlines(), [f"{r['key']}\tupdated=" + _iso(r["updatedAt"]) for r in rows])

    async def test_sessions_list_json_says_null_for_what_the_original_does_not_carry(self) -> None:
        code, out, err = await self.cli("sessions", "list", "--json")
        self.assertEqual((code, err), (0, ""))
        listed = json.loads(out)
        rows = PAYLOADS["sessions.list"]["sessions"]
        self.assertEqual([(s["key"], s["agentId"], s["createdAt"], s["turns"], s["lastRunId"]) for s in listed],
                         [(r["key"], "main", None, None, None) for r in rows])
        self.assertEqual([s["updatedAt"] for s in listed], [_iso(r["updatedAt"]) for r in rows])

    async def test_sessions_show_prints_the_originals_history(self) -> None:
        code, out, err = await self.cli("sessions", "show", "main")
        self.assertEqual((code, err), (0, ""))
        self.assertOriginalConnect()
        history = PAYLOADS["chat.history"]["messages"]
        self.assertEqual(out.splitlines(), [f"{m['role']}: " + "".join(p["text"] for p in m["content"])
                                            for m in history])
        self.assertEqual(out.splitlines()[1], "assistant: Hello from mock.")
        self.assertEqual([r["method"] for r in self.fake.requests], ["agents.list", "sessions.list", "chat.history"])


def _iso(epoch_ms: int) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    unittest.main()
