"""Crash: SIGKILL a gateway in the middle of streams, restart it on the same state dir.

A turn is reported done (finish_reason, then ``[DONE]``) only after its lines
are on disk, so after a SIGKILL every turn a client saw complete
must be in its transcript; turns cut off by the kill may be missing, but never
half there. A torn last line (a crash inside a write) is tolerated only as the
very last bytes of a file, and the next append cuts it off. The echo provider
makes the check exact: its reply to turn N is ``Echo (turn N): <message>``, N
counting the transcript's earlier assistant turns.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import time
import unittest
from typing import Any

from equabot_gw.agents.sessions import scoped_key
from tests.support import TOKEN, GatewayProcess, base_config
from tests.test_faults import chat, raise_nofile_limit, sessions_list, transcript_path

CLIENTS = 50
STATELESS_CLIENTS = 10  # alongside: stateless turns share one journal
KILL_AFTER = 0.8        # seconds of streaming before the SIGKILL: several turns per client
TORN = b'{"type":"user","runId":"run_torn","at":1.0,"content":"cut off by the cr'


def crash_config() -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"defaults": {"maxConcurrent": 64},
                      "list": [{"id": "main", "default": True, "model": "slow/echo"}]}
    data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": 10}}}
    return data


def restarted(first: GatewayProcess) -> GatewayProcess:
    """A new gateway process on ``first``'s state dir (its own temp dir for config and logs)."""
    second = GatewayProcess(crash_config())
    second.state_dir = first.state_dir
    return second


def received_events(raw: bytes) -> list[Any]:
    """The SSE events in the complete chunks of a response cut off at any byte."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while True:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep or not size_line or int(size_line, 16) == 0 or len(after) < int(size_line, 16) + 2:
            break
        size = int(size_line, 16)
        body, rest = body + after[:size], after[size + 2:]
    events = []
    for block in body.decode("utf-8", "replace").split("\n\n")[:-1]:
        data = (block.partition("\n")[2] if block.startswith("id: ") else block).removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def stream_turn(port: int, key: str | None, message: str, *, on_first_word: asyncio.Event | None = None
                      ) -> tuple[str, bool]:
    """One streamed turn on session ``key`` (None: stateless).

    Returns the reply text received and whether the turn was seen complete
    (a finish_reason, then [DONE]).
    """
    body = json.dumps({"model": "equabot", "stream": True,
                       "messages": [{"role": "user", "content": message}]}).encode()
    raw = b""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "", False
    try:
        writer.write((
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            + (f"x-equabot-session-key: {key}\r\n" if key else "") + "\r\n").encode() + body)
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            raw += chunk
            if on_first_word is not None and b'"content":"Echo"' in raw:
                on_first_word.set()
    except (ConnectionError, asyncio.TimeoutError):
        pass                                        # the gateway died under us
    finally:
        writer.close()
    if not raw.startswith(b"HTTP/1.1 200 "):
        return "", False
    events = received_events(raw)
    chunks = [e for e in events if isinstance(e, dict) and e.get("choices")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    finished = any(c["choices"][0]["finish_reason"] == "stop" for c in chunks)
    return text, finished and events[-1:] == ["[DONE]"]


def message_of(client: str | int, turn: int) -> str:
    return f"client {client} turn {turn} one two three four five six"


def file_lines(path: pathlib.Path) -> tuple[list[dict[str, Any]], bytes]:
    """Every complete line of ``path``, each parsed (a bad one fails), and the torn tail (b"" if none)."""
    data = path.read_bytes()
    *whole, tail = data.split(b"\n")
    return [json.loads(line) for line in whole], tail


class CrashTest(unittest.TestCase):
    def setUp(self) -> None:
        raise_nofile_limit(4 * (CLIENTS + STATELESS_CLIENTS))
        self.gw = GatewayProcess(crash_config(), extra_args=("--log-level", "warning")).start()
        self.addCleanup(self.gw.tmp.cleanup)
        self.addCleanup(self.gw.stop)

    def path(self, key: str) -> pathlib.Path:
        return transcript_path(self.gw.state_dir, "main", key)

    def assertTurns(self, lines: list[dict[str, Any]], key: str) -> list[str]:
        """The transcript is a header, then whole turns (user, assistant) in order; their replies."""
        self.assertEqual(lines[0], {**lines[0], "type": "session", "key": scoped_key("main", key)})
        turns = lines[1:]
        self.assertEqual([line["type"] for line in turns], ["user", "assistant"] * (len(turns) // 2), key)
        self.assertEqual(len(turns) % 2, 0, key)
        for user, assistant in zip(turns[::2], turns[1::2]):
            self.assertEqual(user["runId"], assistant["runId"])
        replies = [line["content"] for line in turns[1::2]]
        for n, reply in enumerate(replies, 1):
            self.assertTrue(reply.startswith(f"Echo (turn {n}): "), (key, reply))
        return replies

    def journal_lines(self) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Every complete line of the main agent's journals, and their torn tails."""
        lines, tails = [], []
        for path in sorted((self.gw.state_dir / "agents" / "main" / "journal").glob("*.jsonl")):
            whole, tail = file_lines(path)
            lines += whole
            tails += [tail] if tail else []
        return lines, tails

    def test_sigkill_during_50_concurrent_sessions(self) -> None:
        keys = [f"crash-{i}" for i in range(CLIENTS)]
        seen = asyncio.run(self._stream_until_killed(keys, STATELESS_CLIENTS))
        self.assertEqual(self.gw.proc.wait(5), -signal.SIGKILL)
        done = sum(len(turns) for key, turns in seen.items() if isinstance(key, str))
        self.assertGreaterEqual(done, CLIENTS, "too few turns completed before the kill to test anything")

        # Stateless turns seen complete are in the journal, each after its user line.
        journal, _ = self.journal_lines()
        asked = {line["runId"]: line["content"] for line in journal if line["type"] == "user"}
        answered = {line["content"]: asked.get(line["runId"]) for line in journal if line["type"] == "assistant"}
        for j in range(STATELESS_CLIENTS):
            for text in seen[j]:
                self.assertEqual(f"Echo (turn 1): {answered.get(text)}", text)

        replies: dict[str, list[str]] = {}
        for key in keys:
            lines, _ = file_lines(self.path(key))      # every line before a torn tail parses
            replies[key] = self.assertTurns(lines, key)
            # Every turn the client saw complete is there, in order; at most one more (recorded,
            # then killed before the client heard of it).
            self.assertEqual(replies[key][:len(seen[key])], seen[key], key)
            self.assertLessEqual(len(replies[key]) - len(seen[key]), 1, key)
        # A crash inside a write leaves a torn last line; make one, to see the next append repair it.
        with open(self.path(keys[0]), "ab") as f:
            f.write(TORN)

        with restarted(self.gw) as gw2:
            listed = {s["key"]: s["turns"] for s in asyncio.run(sessions_list(gw2))}
            further = asyncio.run(self._one_more_turn(gw2.port, keys))
            self.assertEqual(asyncio.run(stream_turn(gw2.port, None, "stateless after")),
                             ("Echo (turn 1): stateless after", True))
        # The index rebuilt at start-up agrees with the transcripts.
        self.assertEqual(listed, {scoped_key("main", key): len(replies[key]) for key in keys})
        journal, tails = self.journal_lines()
        self.assertEqual(tails, [])
        self.assertEqual(journal[-1]["content"], "Echo (turn 1): stateless after")
        for key in keys:
            n = len(replies[key]) + 1
            self.assertEqual(further[key], (f"Echo (turn {n}): after the crash", True), key)
            lines, tail = file_lines(self.path(key))
            self.assertEqual(tail, b"", key)                     # the torn line was cut off
            self.assertEqual(self.assertTurns(lines, key), replies[key] + [further[key][0]], key)

    async def _stream_until_killed(self, keys: list[str], stateless: int) -> dict[str | int, list[str]]:
        """Clients stream turn after turn until the SIGKILL; the replies each saw complete.

        One client per key, and ``stateless`` more without a key, named 0, 1, ...
        """
        seen: dict[str | int, list[str]] = {key: [] for key in keys} | {j: [] for j in range(stateless)}
        killed = asyncio.Event()

        async def client(name: str | int, key: str | None) -> None:
            turn = 1
            while not killed.is_set():
                message = message_of(name, turn)
                text, complete = await stream_turn(self.gw.port, key, message)
                if not complete:
                    return
                self.assertEqual(text, f"Echo (turn {turn if key else 1}): {message}")
                seen[name].append(text)
                turn += 1

        clients = [asyncio.create_task(client(key, key)) for key in keys]
        clients += [asyncio.create_task(client(j, None)) for j in range(stateless)]
        await asyncio.sleep(KILL_AFTER)
        self.gw.proc.send_signal(signal.SIGKILL)
        killed.set()
        await asyncio.wait_for(asyncio.gather(*clients), 15)
        return seen

    async def _one_more_turn(self, port: int, keys: list[str]) -> dict[str, tuple[str, bool]]:
        results = await asyncio.gather(*(stream_turn(port, key, "after the crash") for key in keys))
        return dict(zip(keys, results))

    def test_a_torn_first_write_starts_the_session_afresh(self) -> None:
        # The first write of a session is its header, user and reply lines at once. SIGKILL can
        # cut a write of more than a page short (the kernel checks for a fatal signal between
        # pages), and a power cut can tear any write, so the header itself may be torn. No
        # turn of that session was reported done: after the repair it must start afresh,
        # header first, created now.
        key = "torn-first"
        self.gw.stop(signal.SIGKILL)
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'{"type":"session","key":"agent:main:torn-first","agentId":"main","createdAt":17')
        with restarted(self.gw) as gw2:
            status, _, data = asyncio.run(chat(gw2.port, "hello", key=key))
            self.assertEqual((status, json.loads(data)["choices"][0]["message"]["content"]),
                             (200, "Echo (turn 1): hello"))
            [info] = asyncio.run(sessions_list(gw2))
        lines, tail = file_lines(path)
        self.assertEqual(tail, b"")
        self.assertEqual(self.assertTurns(lines, key), ["Echo (turn 1): hello"])
        self.assertGreater(info["createdAt"], (time.time() - 60) * 1000)     # not 1970

    def test_sigkill_in_the_middle_of_a_single_stream(self) -> None:
        # Turns reported done before the kill survive it.
        key = "single"
        for n in (1, 2):
            status, _, data = asyncio.run(chat(self.gw.port, f"turn {n}", key=key))
            self.assertEqual((status, json.loads(data)["choices"][0]["message"]["content"]),
                             (200, f"Echo (turn {n}): turn {n}"))
        asyncio.run(self._kill_mid_stream(key))
        self.assertEqual(self.gw.proc.wait(5), -signal.SIGKILL)
        lines, tail = file_lines(self.path(key))
        self.assertEqual(tail, b"")
        self.assertEqual(self.assertTurns(lines, key), ["Echo (turn 1): turn 1", "Echo (turn 2): turn 2"])
        with restarted(self.gw) as gw2:
            status, _, data = asyncio.run(chat(gw2.port, "turn 3", key=key))
        self.assertEqual((status, json.loads(data)["choices"][0]["message"]["content"]),
                         (200, "Echo (turn 3): turn 3"))
        lines, _ = file_lines(self.path(key))
        self.assertEqual(len(self.assertTurns(lines, key)), 3)

    async def _kill_mid_stream(self, key: str) -> None:
        first_word = asyncio.Event()
        stream = asyncio.create_task(stream_turn(self.gw.port, key, " ".join(["long"] * 200),
                                                 on_first_word=first_word))
        await asyncio.wait_for(first_word.wait(), 5)
        started = time.monotonic()
        self.gw.proc.send_signal(signal.SIGKILL)
        text, complete = await stream
        self.assertFalse(complete)
        self.assertTrue(text.startswith("Echo"))
        self.assertLess(time.monotonic() - started, 2.0)


if __name__ == "__main__":
    unittest.main()
