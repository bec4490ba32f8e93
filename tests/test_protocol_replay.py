"""Replay of the original Gateway's captured client frames against equabot_gw, comparing shapes.

``tests/data/protocol/`` holds what the original Gateway (npm clawdbot
2026.1.24-3) and its CLI exchanged. Every client frame recorded there is sent
to an in-process equabot_gw, connection by connection and in the order the
commands ran (one gateway for all, so that state carries over as it did:
the repeated idempotency key, the session reset and deleted after use). Each
response and event we send must have the original's shape: the same key
paths with the same JSON types, recursively; values may differ. Lists are
compared element by element against the union of the original's elements (a
key every original element has is required; one some have is optional).

Where the shapes differ on purpose, the allow-lists below say why, one entry
per key path. One test per capture file; ``ValuesTest`` adds the values a
user of the original's CLI sees that ours must equal (the session an
``agent`` call without a key runs on, ``deleted`` after a reset, ``logs``
not truncated by ``--limit``, the days ``usage-cost`` lists).
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import re
import unittest
from typing import Any

from equabot_gw.net.wsclient import connect
from tests.support import TOKEN, base_config, running_gateway

DATA = pathlib.Path(__file__).resolve().parent / "data" / "protocol"
CLI_DIR = DATA / "original-cli"
TIMEOUT = 5.0

# Key paths the original has and we do not send, each with the reason.
MISSING_OK: dict[str, str] = {
    "hello-ok.auth": "a device token from the original's device pairing; this gateway pairs no "
                     "devices (the original hands out its gateway token there), and a client "
                     "without one reconnects with its gateway token",
    "hello-ok.snapshot.configPath": "the gateway learns its config file's path only when the CLI "
                                    "passes it; on built-in defaults there is none",
    "agent.result.meta.systemPromptReport": "the original's embedded agent reports its workspace "
                                            "files, skills and tools; equabot_gw has none of them",
    "sessions.reset.entry.origin": "channel routing: this gateway has no channels",
    "sessions.reset.entry.lastChannel": "channel routing: this gateway has no channels",
    "sessions.reset.entry.skillsSnapshot": "skills: this gateway has none",
    "config.get.parsed": "the config is each gateway's own schema; compared as an object only",
    "config.get.config": "the config is each gateway's own schema; compared as an object only",
}
# Key paths we send that the original does not, each with the reason its clients tolerate them.
EXTRA_OK: dict[str, str] = {
    "sessions.list.sessions[].agentId": "read by equabot's own CLI (sessions list); the original's "
                                        "clients ignore unknown keys in this payload",
    "sessions.list.sessions[].createdAt": "read by equabot's own CLI (sessions list)",
    "sessions.list.sessions[].turns": "read by equabot's own CLI (sessions list) and its tests",
    "sessions.list.sessions[].lastRunId": "read by equabot's own CLI (sessions list)",
    "sessions.reset.reset": "whether there was a session before the reset; the original's clients "
                            "ignore unknown keys in this payload",
    "status.connections": "connection counts for operators; the original's status command ignores it",
    "agent.result.meta.stopReason": "why the reply ended (newer originals carry it too); equabot's "
                                    "CLI prints it as finishReason",
    "agents.list.agents[].name": "the original's agent summaries carry an optional name",
}
# Subtrees compared only by their top type (their content is each gateway's own).
OPAQUE: frozenset[str] = frozenset({"config.get.parsed", "config.get.config"})


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def shape_problems(ours: Any, theirs: list[Any], path: str) -> list[str]:
    """What in ``ours`` does not have the shape of the original values ``theirs`` (all of one place)."""
    types = {json_type(t) for t in theirs}
    kind = json_type(ours)
    if kind not in types:
        return [f"{path}: {kind}, the original sends {'/'.join(sorted(types))}"]
    if path in OPAQUE:
        return []
    if kind == "object":
        objects = [t for t in theirs if isinstance(t, dict)]
        union = {key for t in objects for key in t}
        required = set.intersection(*(set(t) for t in objects)) if objects else set()
        problems = [f"{path}.{key}: missing" for key in sorted(required - set(ours))
                    if f"{path}.{key}" not in MISSING_OK]
        problems += [f"{path}.{key}: not in the original" for key in sorted(set(ours) - union)
                     if f"{path}.{key}" not in EXTRA_OK]
        for key in sorted(set(ours) & union):
            problems += shape_problems(ours[key], [t[key] for t in objects if key in t], f"{path}.{key}")
        return problems
    if kind == "array":
        elements = [e for t in theirs if isinstance(t, list) for e in t]
        if not elements:
            return []               # nothing to compare our elements with
        problems: list[str] = []
        for element in ours:
            problems += shape_problems(element, elements, f"{path}[]")
        return sorted(set(problems))
    return []


def load_capture(path: pathlib.Path) -> tuple[dict[str, Any], dict[int, list[dict[str, Any]]]]:
    """(the command line, {conn: [frames: {dir, frame}]}) of one CLI capture."""
    lines = path.read_text().splitlines()
    command = json.loads(lines[0])
    conns: dict[int, list[dict[str, Any]]] = {}
    for line in lines[1:]:
        record = json.loads(line)
        if record.get("kind") == "frame" and record.get("opcode") == "text":
            conns.setdefault(record["conn"], []).append(
                {"dir": record["dir"], "frame": json.loads(record["text"])})
    return command, conns


def load_anchor() -> list[dict[str, Any]]:
    frames = []
    for line in (DATA / "original-gateway-frames.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["dir"] in ("in", "out"):
            frames.append({"dir": "s2c" if record["dir"] == "in" else "c2s",
                           "frame": json.loads(record["text"])})
    return frames


def event_kind(frame: dict[str, Any]) -> str:
    """Events are compared with the original's events of the same kind."""
    payload = frame.get("payload") if isinstance(frame.get("payload"), dict) else {}
    if frame["event"] == "agent":
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        return f"agent:{payload.get('stream')}:{data.get('phase', '')}"
    if frame["event"] == "chat":
        return f"chat:{payload.get('state')}"
    return frame["event"]


def all_captures() -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, frames of each connection in order) for every capture, in the order the commands ran."""
    captures = []
    for path in CLI_DIR.glob("*.jsonl"):
        _, conns = load_capture(path)
        captures.append((min(conns) if conns else 0, path.stem, [conns[c] for c in sorted(conns)]))
    captures.sort()
    return [(name, conns) for _, name, conns in captures]


def response_kind(frame: dict[str, Any]) -> str:
    """Responses are compared with the original's of the same method and kind (ack, final, error)."""
    payload = frame.get("payload") if isinstance(frame.get("payload"), dict) else {}
    return "error" if frame.get("ok") is False else "ack" if payload.get("status") == "accepted" else "ok"


def original_frames() -> tuple[dict[str, list[dict[str, Any]]], dict[tuple[str, str], list[dict[str, Any]]]]:
    """Every event the original sent, by kind, and every response, by (method, kind): the
    references our frames are compared with (a list's elements against all the original's)."""
    events: dict[str, list[dict[str, Any]]] = {}
    responses: dict[tuple[str, str], list[dict[str, Any]]] = {}
    connections = [load_anchor()] + [conn for _, conns in all_captures() for conn in conns]
    for conn in connections:
        methods = {r["frame"]["id"]: r["frame"]["method"] for r in conn if r["dir"] == "c2s"}
        for record in conn:
            frame = record["frame"]
            if record["dir"] != "s2c":
                continue
            if frame.get("type") == "event":
                events.setdefault(event_kind(frame), []).append(frame)
            elif frame.get("type") == "res" and frame.get("id") in methods:
                responses.setdefault((methods[frame["id"]], response_kind(frame)), []).append(frame)
    return events, responses


def replay_config() -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"list": [{"id": "main", "default": True}]}
    return data


class ReplayTest(unittest.IsolatedAsyncioTestCase):
    """One gateway for the whole class; each test replays one capture file on it."""

    events, responses = original_frames()

    async def asyncSetUp(self) -> None:
        self._gateway_cm = running_gateway(replay_config())
        self.gw = await self._gateway_cm.__aenter__()
        self.problems: list[str] = []
        # The original had sessions before the captures began: so do we.
        for key in ("agent:main:main", "agent:main:capture"):
            await self.exchange([{"dir": "c2s", "frame": {"type": "req", "id": "seed", "method": "agent",
                                                         "params": {"message": "seed", "sessionKey": key}}}],
                                compare=False)

    async def asyncTearDown(self) -> None:
        await self._gateway_cm.__aexit__(None, None, None)

    # ---- replaying ----
    async def exchange(self, recorded: list[dict[str, Any]], *, compare: bool = True) -> list[dict[str, Any]]:
        """Open a connection, send each recorded client frame, compare what comes back; our frames."""
        ws = await connect("ws" + self.gw.url[4:])
        try:
            ours: list[dict[str, Any]] = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))]
            if ours[0].get("event") != "connect.challenge":
                self.problems.append("the first frame is not connect.challenge")
            sent = [r["frame"] for r in recorded if r["dir"] == "c2s"]
            if not sent or sent[0].get("method") != "connect":
                sent.insert(0, {"type": "req", "id": "connect", "method": "connect",
                                "params": {"minProtocol": 3, "maxProtocol": 3}})
            for request in sent:
                request = json.loads(json.dumps(request))
                if request["method"] == "connect":
                    request["params"]["auth"] = {"token": TOKEN}
                ws.send(json.dumps(request))
                ours += await self.answers(ws, request)
        finally:
            await ws.close()
        if compare:
            self.compare(ours, [r["frame"] for r in recorded if r["dir"] == "s2c"], sent)
        return ours

    async def answers(self, ws: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Our frames up to the request's last response (an agent run's final; a chat run's end)."""
        frames: list[dict[str, Any]] = []
        run_id = None
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            frames.append(frame)
            payload = frame.get("payload") if isinstance(frame.get("payload"), dict) else {}
            if frame.get("type") == "res" and frame.get("id") == request["id"]:
                run_id = payload.get("runId")
                if request["method"] == "connect":
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))  # health
                    return frames
                if payload.get("status") not in ("accepted", "started"):
                    return frames
            if request["method"] == "chat.send" and frame.get("event") == "chat" \
                    and payload.get("runId") == run_id and payload.get("state") != "delta":
                return frames

    # ---- comparing ----
    def compare(self, ours: list[dict[str, Any]], theirs: list[dict[str, Any]],
                sent: list[dict[str, Any]]) -> None:
        methods = {r["id"]: r["method"] for r in sent}
        answered = {f["id"] for f in theirs if f.get("type") == "res"}
        for frame in ours:
            if frame.get("type") == "res":
                method = methods.get(frame["id"], "?")
                same = self.responses.get((method, response_kind(frame)))
                if frame["id"] in answered and not same:
                    self.problems.append(f"res:{method}: a {response_kind(frame)} response, "
                                         f"the original never answered {method} so")
                if same:
                    self.compare_response(frame, same, method)
            elif frame.get("type") == "event":
                reference = self.events.get(event_kind(frame))
                if reference:
                    self.problems += shape_problems(frame, reference, f"event:{event_kind(frame)}")

    def compare_response(self, ours: dict[str, Any], same: list[dict[str, Any]], method: str) -> None:
        name = "hello-ok" if method == "connect" else method
        frame_keys = {k: v for k, v in ours.items() if k != "payload"}
        self.problems += shape_problems(frame_keys, [{k: v for k, v in t.items() if k != "payload"}
                                                     for t in same], f"res:{name}")
        if "payload" in ours and all("payload" in t for t in same):
            self.problems += shape_problems(ours["payload"], [t["payload"] for t in same], name)

    def assertNoProblems(self) -> None:
        self.assertEqual(self.problems, [], "\n".join(self.problems))

    async def replay(self, name: str) -> None:
        for conn in dict(all_captures())[name]:
            await self.exchange(conn)
        self.assertNoProblems()


class AnchorReplayTest(ReplayTest):
    async def test_the_anchor_connection(self) -> None:
        await self.exchange(load_anchor())
        self.assertNoProblems()

    async def test_the_errors_have_the_originals_words(self) -> None:
        frames = load_anchor()
        wanted = {f["frame"]["id"]: f["frame"]["error"] for f in frames
                  if f["dir"] == "s2c" and f["frame"].get("ok") is False}
        ws = await connect("ws" + self.gw.url[4:])
        await ws.recv()
        ws.send(json.dumps({"type": "req", "id": "c", "method": "connect",
                            "params": {"minProtocol": 3, "maxProtocol": 3, "auth": {"token": TOKEN}}}))
        got = {}
        for f in frames:
            if f["dir"] == "c2s" and f["frame"]["id"] in wanted:
                ws.send(json.dumps(f["frame"]))
                while (frame := json.loads(await ws.recv())).get("id") != f["frame"]["id"]:
                    pass
                got[frame["id"]] = frame["error"]
        await ws.close()
        self.assertEqual(got, wanted)


def final_payload(frames: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The last response's payload to the first request of ``method`` among ``frames``
    (recorded ``{dir, frame}`` records or our own frames, which come with the requests sent)."""
    frames = [r.get("frame", r) for r in frames]
    req_id = next(f["id"] for f in frames if f.get("type") == "req" and f.get("method") == method)
    return [f for f in frames if f.get("type") == "res" and f.get("id") == req_id][-1]["payload"]


class ValuesTest(ReplayTest):
    """Where the original's answer holds a value its CLI shows, ours holds the same value."""

    async def replayed(self, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the original's frames, ours) of capture ``name``'s last connection, our requests included."""
        conns = dict(all_captures())[name]
        for conn in conns[:-1]:
            await self.exchange(conn)
        sent = [r["frame"] for r in conns[-1] if r["dir"] == "c2s"]
        return conns[-1], sent + await self.exchange(conns[-1])

    async def test_agent_without_a_session_key_runs_on_the_main_session(self) -> None:
        def session_keys(frames: list[dict[str, Any]]) -> set[str]:
            return {f["payload"]["sessionKey"] for f in (r.get("frame", r) for r in frames)
                    if f.get("event") in ("agent", "chat") and f["payload"].get("runId") == "idem-call-agent-1"}
        theirs, ours = await self.replayed("call_agent_final")
        self.assertEqual(session_keys(theirs), {"agent:main:main"})
        self.assertEqual(session_keys(ours), session_keys(theirs))
        ask = {"type": "req", "id": "h", "method": "chat.history", "params": {"sessionKey": "agent:main:main"}}
        history = [ask] + await self.exchange([{"dir": "c2s", "frame": ask}], compare=False)
        self.assertEqual([m["content"][0]["text"] for m in final_payload(history, "chat.history")["messages"]][-2:],
                         ["via call", "Echo (turn 2): via call"])     # after the seeded turn

    async def test_a_reset_session_is_there_to_delete(self) -> None:
        theirs, ours = await self.replayed("call_sessions_reset")
        self.assertEqual(final_payload(ours, "sessions.reset")["key"], final_payload(theirs, "sessions.reset")["key"])
        theirs, ours = await self.replayed("call_sessions_delete")
        self.assertEqual(final_payload(theirs, "sessions.delete")["deleted"], True)
        self.assertEqual(final_payload(ours, "sessions.delete"), final_payload(theirs, "sessions.delete"))

    async def test_logs_with_a_limit_are_not_truncated(self) -> None:
        for n in range(10):            # more lines than the command's --limit 5
            self.gw.log_buffer.emit(logging.LogRecord("equabot_gw.test", logging.INFO, __file__, 1,
                                                      f"line {n}", None, None))
        theirs, ours = await self.replayed("logs")
        self.assertEqual(final_payload(theirs, "logs.tail")["truncated"], False)
        self.assertEqual(final_payload(ours, "logs.tail")["truncated"], False)
        self.assertLessEqual(len(final_payload(ours, "logs.tail")["lines"]), 5)

    async def test_usage_cost_lists_the_days_with_usage_and_no_missing_cost(self) -> None:
        theirs, ours = await self.replayed("usage_cost")
        theirs, ours = final_payload(theirs, "usage.cost"), final_payload(ours, "usage.cost")
        def seen(payload: dict[str, Any]) -> tuple[int, int, list[int]]:
            return (len(payload["daily"]), payload["totals"]["missingCostEntries"],
                    [row["missingCostEntries"] for row in payload["daily"]])
        self.assertEqual(seen(ours), seen(theirs))      # one day, nothing missing


def _make_test(name: str) -> Any:
    async def test(self: ReplayTest) -> None:
        await self.replay(name)
    test.__doc__ = f"original-cli/{name}.jsonl: every response and event in the original's shape"
    return test


class CliReplayTest(ReplayTest):
    """One test per capture file; the commands' order is kept within each (state carries over)."""


for _name, _conns in all_captures():
    setattr(CliReplayTest, f"test_{re.sub(r'[^a-z0-9_]', '_', _name)}", _make_test(_name))


class CaptureFilesTest(unittest.TestCase):
    def test_every_command_file_has_its_output_and_a_test(self) -> None:
        names = sorted(p.stem for p in CLI_DIR.glob("*.jsonl"))
        self.assertEqual(len(names), 32)
        for name in names:
            self.assertTrue((CLI_DIR / f"{name}.out.txt").exists(), name)
            self.assertTrue(hasattr(CliReplayTest, f"test_{name}"), name)

    def test_the_local_commands_exchange_no_frame(self) -> None:
        # `sessions --json` and `gateway status --json` without --url never open a connection.
        for name in ("sessions_local", "gw_status_json"):
            _, conns = load_capture(CLI_DIR / f"{name}.jsonl")
            self.assertEqual(conns, {}, name)

    def test_the_shape_comparison_catches_what_it_must(self) -> None:
        theirs = [{"a": 1, "b": [{"x": "s", "y": None}], "c": {"d": True}}]
        self.assertEqual(shape_problems({"a": 2, "b": [{"x": "t", "y": None}], "c": {"d": False}}, theirs, "p"), [])
        self.assertEqual(shape_problems({"a": "2", "b": [], "c": {"d": True}}, theirs, "p"),
                         ["p.a: string, the original sends number"])
        self.assertEqual(shape_problems({"a": 1, "b": [{"x": "s"}], "c": {"d": True, "e": 1}}, theirs, "p"),
                         ["p.b[].y: missing", "p.c.e: not in the original"])
        self.assertEqual(shape_problems({"b": [{"x": 1, "y": None}], "c": {"d": True}, "a": 1}, theirs, "p"),
                         ["p.b[].x: number, the original sends string"])


if __name__ == "__main__":
    unittest.main()
