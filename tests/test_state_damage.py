"""Hand-damaged session state: start-up never fails, and every reader takes stored lines field by field.

A state dir edited by hand (or by a broken tool) may hold anything: an index
with ``"turns": Infinity`` or wrong types, transcript lines with ``"at":
null``, numbers of 400 digits, contents that are not strings. The store
opens (rebuilding the index where it must, one warning per damaged file,
naming it and its first bad line), and ``chat.history``, the history sent
to providers, and ``sessions.list`` give each bad field its neutral value.
One case runs the real gateway process on such a state dir.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import unittest
from pathlib import Path
from typing import Any

from equabot_gw.agents import transcripts
from equabot_gw.agents.lines import chat_messages
from equabot_gw.agents.sessions import SessionStore
from equabot_gw.agents.types import Message
from equabot_gw.gateway.client import ControlClient
from tests.support import TOKEN, GatewayProcess, base_config

KEY = "agent:main:hand"
HEADER = {"type": "session", "key": KEY, "agentId": "main", "createdAt": 10.0}


def turn(run: str, at: Any, content: Any = "q", reply: Any = "a") -> list[dict[str, Any]]:
    return [{"type": "user", "runId": run, "at": at, "content": content},
            {"type": "assistant", "runId": run, "at": at, "content": reply, "model": "echo/echo",
             "finishReason": "stop", "usage": None}]


def write_state(state: Path, lines: list[Any], index: Any = None, raw_index: str | None = None) -> Path:
    """A transcript of ``lines`` (dicts are encoded, str/bytes written as they are) and an index."""
    sessions = state / "agents" / "main" / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    path = sessions / transcripts.transcript_name(KEY)
    data = b"".join((line if isinstance(line, bytes) else
                     (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    if raw_index is not None:
        (sessions / transcripts.INDEX_NAME).write_text(raw_index)
    elif index is not None:
        (sessions / transcripts.INDEX_NAME).write_text(json.dumps(index))
    return path


def index_entry(**fields: Any) -> dict[str, Any]:
    entry = {"file": transcripts.transcript_name(KEY), "createdAt": 10.0, "updatedAt": 12.0,
             "turns": 2, "lastRunId": "r2"}
    entry.update(fields)
    return {KEY: entry}


GOOD_LINES = [HEADER, *turn("r1", 11.0, "one", "first"), *turn("r2", 12.0, "two", "second")]

# An index whose entry is unusable, for each reason: the store must rebuild it from the transcript.
BAD_INDEXES: tuple[tuple[str, str], ...] = (
    ("turns: Infinity", json.dumps(index_entry()).replace('"turns": 2', '"turns": Infinity')),
    ("turns: NaN", json.dumps(index_entry()).replace('"turns": 2', '"turns": NaN')),
    ("turns of 400 digits as a float", json.dumps(index_entry()).replace('"turns": 2', '"turns": 1e400')),
    ("createdAt of 400 digits", json.dumps(index_entry(createdAt=10 ** 400))),
    ("turns: -1", json.dumps(index_entry(turns=-1))),
    ("turns: 1.5", json.dumps(index_entry(turns=1.5))),
    ("turns: true", json.dumps(index_entry(turns=True))),
    ("updatedAt: null", json.dumps(index_entry(updatedAt=None))),
    ("createdAt: a string", json.dumps(index_entry(createdAt="yesterday"))),
    ("lastRunId: an object", json.dumps(index_entry(lastRunId={"a": 1}))),
    ("entry not an object", json.dumps({KEY: [1, 2]})),
    ("index not an object", "[1, 2, 3]"),
    ("index not JSON", "{\"agent:main:hand\": "),
    ("index nested 100,000 deep", "[" * 100_000 + "]" * 100_000),
    ("index of invalid UTF-8", "\udcff"),
)


class DamagedIndexTest(unittest.IsolatedAsyncioTestCase):
    async def test_each_damaged_index_is_rebuilt_from_the_transcripts(self) -> None:
        for name, raw in BAD_INDEXES:
            with self.subTest(name), tempfile.TemporaryDirectory() as tmp:
                state = Path(tmp)
                path = write_state(state, GOOD_LINES)
                (path.parent / transcripts.INDEX_NAME).write_bytes(raw.encode("utf-8", "surrogateescape"))
                store = SessionStore(state)
                with self.assertLogs("equabot_gw.sessions", "WARNING"):
                    await store.open()
                try:
                    [info] = store.list_sessions()
                    self.assertEqual((info.key, info.created_at, info.updated_at, info.turns, info.last_run_id),
                                     (KEY, 10.0, 12.0, 2, "r2"))
                finally:
                    await store.close()
                rewritten = json.loads((path.parent / transcripts.INDEX_NAME).read_text())
                self.assertEqual(rewritten[KEY]["turns"], 2, "the index file is rewritten")


# Damaged transcript lines, and what the readers make of them.
DAMAGED_LINES: list[Any] = [
    HEADER,
    *turn("r1", None, "at is null", "reply one"),                  # "at": null
    *turn("r2", "noon", "at is a string", "reply two"),
    *turn("r3", 10 ** 400, "at of 400 digits", "reply three"),
    *turn("r4", True, "at is true", "reply four"),
    *turn("r5", 13.0, 5, "content of the user line is a number"),    # the turn drops its user text
    *turn("r6", 14.0, "assistant content is null", None),
    {"type": "user", "runId": ["not", "a", "string"], "at": 15.0, "content": "runId is a list"},
    {"type": "assistant", "runId": ["not", "a", "string"], "at": 15.0, "content": "reply seven"},
    {"type": "context", "messages": "not a list"},
    {"type": "context", "messages": [1, {"role": 7, "content": "x"}, {"role": "user", "content": None}]},
    '{"type":"user","runId":"r8","at":16.0,"content":' + "[" * 100_000 + "]" * 100_000 + "}",
    b'{"type":"user","runId":"r9","at":17.0,"content":"invalid \xff UTF-8"}',
    '{"type":"user","runId":"r10","at":NaN,"content":"NaN"}',
    '[1, 2]',
    *turn("r11", 18.0, "last", "fine"),
]


class DamagedTranscriptTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.state = Path(tmp.name)
        self.path = write_state(self.state, DAMAGED_LINES)

    async def open_store(self) -> SessionStore:
        store = SessionStore(self.state)
        with self.assertLogs("equabot_gw.sessions", "WARNING"):
            await store.open()
        self.addAsyncCleanup(store.close)
        return store

    async def test_start_up_warns_once_naming_the_file_and_the_first_bad_line(self) -> None:
        with self.assertLogs("equabot_gw.sessions", "WARNING") as logs:
            store = SessionStore(self.state)
            await store.open()
            self.addAsyncCleanup(store.close)
            await store.history("main", KEY)
            await store.read_transcript("main", KEY)
        first_bad = next(i for i, line in enumerate(DAMAGED_LINES, 1) if isinstance(line, (str, bytes)))
        skipped = [r.getMessage() for r in logs.records if "skipped" in r.getMessage()]
        self.assertEqual(skipped, [f"{self.path.name}: skipped 4 lines not holding a JSON object, "
                                   f"the first at line {first_bad}"])

    async def test_sessions_list_takes_what_is_usable(self) -> None:
        store = await self.open_store()
        [info] = store.list_sessions()
        self.assertEqual((info.key, info.created_at, info.updated_at, info.last_run_id), (KEY, 10.0, 18.0, "r11"))
        self.assertEqual(info.turns, 8)          # every user line followed by its run's reply: r1-r7, r11

    async def test_chat_history_gives_each_bad_field_its_neutral_value(self) -> None:
        store = await self.open_store()
        messages = chat_messages(await store.read_transcript("main", KEY))
        by_content = {m["content"]: m for m in messages}
        self.assertEqual(by_content["at is null"]["ts"], 0)
        self.assertEqual(by_content["at is a string"]["ts"], 0)
        self.assertEqual(by_content["at of 400 digits"]["ts"], 0)
        self.assertEqual(by_content["at is true"]["ts"], 0)
        self.assertEqual(by_content["reply seven"]["runId"], None)
        self.assertEqual(by_content["last"]["ts"], 18000)
        self.assertIn("", by_content)            # content 5 and content null became ""
        for message in messages:
            self.assertEqual(set(message) - {"aborted"}, {"role", "content", "runId", "ts"})
            self.assertIsInstance(message["content"], str)
            self.assertIsInstance(message["ts"], int)

    async def test_the_history_sent_to_providers_keeps_every_whole_turn(self) -> None:
        store = await self.open_store()
        history = await store.history("main", KEY)
        self.assertEqual(history.messages[:2], (Message("user", "at is null"), Message("assistant", "reply one")))
        self.assertIn(Message("assistant", "content of the user line is a number"), history.messages)
        self.assertNotIn(Message("user", "assistant content is null"), history.messages[-2:])
        self.assertEqual(history.messages[-2:], (Message("user", "last"), Message("assistant", "fine")))
        self.assertTrue(all(isinstance(m.content, str) for m in history.messages))


class DamagedStateGatewayTest(unittest.TestCase):
    """The real gateway process starts on a damaged state dir and serves the session."""

    def test_the_gateway_starts_and_serves_chat_history(self) -> None:
        gw = GatewayProcess(base_config())
        write_state(gw.state_dir, DAMAGED_LINES,
                    raw_index=json.dumps(index_entry()).replace('"turns": 2', '"turns": Infinity'))
        with gw:
            history = asyncio.run(self.history(gw.url))
            self.assertIn("at is null", [part.get("text") for m in history["messages"] for part in m["content"]])
            self.assertNotIn("Traceback", gw.stderr())

    async def history(self, url: str) -> dict[str, Any]:
        client = await ControlClient.open(url, TOKEN)
        try:
            return await client.request("chat.history", {"sessionKey": KEY})
        finally:
            await client.close()


if __name__ == "__main__":
    unittest.main()
