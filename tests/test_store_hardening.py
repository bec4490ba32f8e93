"""The session store against damaged or surprising state: files of the wrong kind, transcripts
under another session's name, empty leftovers, and errors that say what failed.

Each case builds the state on disk, opens a ``SessionStore`` (or a committer)
on it in-process, and checks what start-up and the next turn do: nothing that
was recorded is lost or hidden, and start-up never hangs or reads without bound.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
import unittest
import unittest.mock

from equabot_gw import config as config_mod
from equabot_gw.agents import committer, transcripts
from equabot_gw.agents.idempotency import Keys
from equabot_gw.agents.response_store import ResponseStore
from equabot_gw.agents.runtime import Runtime
from equabot_gw.errors import StorageError
from tests.support import base_config
from tests.test_sessions import StoreCase, ok_turn

# Start-up must not wait on a FIFO: it is over in this many seconds or the test fails.
OPEN_TIMEOUT = 10.0


class FifoWatchdog:
    """``with FifoWatchdog(path):`` a reader blocked on the FIFO at ``path`` for ``OPEN_TIMEOUT``
    seconds is let go (a writer opens and closes it: the reader sees its end) and ``fired``
    says so, so that a regression fails the test instead of hanging the suite."""

    def __init__(self, path: os.PathLike[str]) -> None:
        self.path, self.fired = os.fspath(path), False
        self._timer = threading.Timer(OPEN_TIMEOUT, self._release)

    def _release(self) -> None:
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            self.fired = True
        except OSError:
            pass        # no reader waits on it

    def __enter__(self) -> FifoWatchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class CommitterFlags(unittest.TestCase):
    def test_files_are_opened_close_on_exec(self) -> None:
        # A child process (a provider's helper) must not inherit transcript fds.
        self.assertEqual(committer.CLOEXEC, os.O_CLOEXEC)
        self.assertTrue(committer._APPEND_FLAGS & os.O_CLOEXEC)



class MisnamedTranscripts(StoreCase):
    """A transcript whose header names another session: moved aside, never appended to."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        for n in (1, 2):
            await self.store.record_turn("main", "alice", ok_turn(n))
        await self.store.close()
        shutil.copy(self.transcript("agent:main:alice"), self.transcript("agent:main:eve"))
        self.alice = self.transcript("agent:main:alice").read_bytes()

    def asides(self) -> list[str]:
        return sorted(p.name for p in self.sessions_dir().iterdir() if ".aside-" in p.name)

    async def check_eve_starts_afresh_and_stays(self) -> None:
        with self.assertLogs("equabot_gw.sessions", "WARNING") as logs:
            store = await self.open_store()
        [warning] = logs.output
        self.assertIn("transcript 'agent%3Amain%3Aeve.jsonl' holds session 'agent:main:alice', "
                      "not 'agent:main:eve': moved aside to 'agent%3Amain%3Aeve.jsonl.aside-", warning)
        [aside] = self.asides()
        self.assertEqual((self.sessions_dir() / aside).read_bytes(), self.alice)    # kept, whole
        self.assertFalse((await store.history("main", "eve")).exists)
        await store.record_turn("main", "eve", ok_turn(3))
        await store.close()
        # Eve's answered turn is hers, in a file of her own, after the next load too.
        store = await self.open_store()
        lines = await store.read_transcript("main", "eve")
        self.assertEqual([(l["type"], l.get("key") or l.get("content")) for l in lines],
                         [("session", "agent:main:eve"), ("user", "question 3"), ("assistant", "answer 3")])
        self.assertEqual((await store.history("main", "alice")).assistant_turns, 2)
        self.assertEqual(self.transcript("agent:main:alice").read_bytes(), self.alice)
        self.assertEqual(len(self.asides()), 1)       # moved once, not again at every start

    async def test_with_the_index_kept(self) -> None:
        await self.check_eve_starts_afresh_and_stays()

    async def test_with_the_index_removed(self) -> None:
        (self.sessions_dir() / transcripts.INDEX_NAME).unlink()
        await self.check_eve_starts_afresh_and_stays()


class EmptyTranscripts(StoreCase):
    async def test_an_empty_transcript_is_removed_at_load_without_a_warning(self) -> None:
        await self.store.record_turn("main", "kept", ok_turn(1))
        await self.store.close()
        empty = self.transcript("agent:main:empty")
        empty.write_bytes(b"")        # what a failed first append leaves
        with self.assertNoLogs("equabot_gw.sessions", "WARNING"):
            store = await self.open_store()
        self.assertFalse(empty.exists())
        self.assertEqual([i.key for i in store.list_sessions()], ["agent:main:kept"])
        await store.record_turn("main", "empty", ok_turn(2))
        lines = await store.read_transcript("main", "empty")
        self.assertEqual([l["type"] for l in lines], ["session", "user", "assistant"])


class SpecialFiles(StoreCase):
    """State files that are not regular files: a warning, the fallback, and no hang or endless read."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        await self.store.record_turn("main", "alice", ok_turn(1))
        await self.store.close()

    def replace(self, path: os.PathLike[str], kind: str) -> None:
        os.unlink(path) if os.path.lexists(path) else None
        if kind == "fifo":
            os.mkfifo(path)
        else:
            os.symlink(kind, path)

    async def test_an_index_that_is_not_a_regular_file_is_rebuilt(self) -> None:
        # A FIFO would block the reader forever; a device (/dev/zero) would never end:
        # /dev/null stands for devices here, which is as refused and ends at once if not.
        index = self.sessions_dir() / transcripts.INDEX_NAME
        for kind in ("fifo", "/dev/null"):
            with self.subTest(kind):
                self.replace(index, kind)
                with self.assertLogs("equabot_gw.sessions", "WARNING") as logs, FifoWatchdog(index) as watchdog:
                    store = await self.open_store()
                self.assertFalse(watchdog.fired, "start-up waited on a FIFO")
                self.assertIn("index.json cannot be read (not a regular file); rebuilding it from the "
                              "transcripts", "\n".join(logs.output))
                self.assertEqual([i.key for i in store.list_sessions()], ["agent:main:alice"])
                await store.close()

    async def test_an_index_over_its_size_cap_is_rebuilt(self) -> None:
        index = self.sessions_dir() / transcripts.INDEX_NAME
        index.write_bytes(b" " * 64)
        with unittest.mock.patch.object(transcripts, "MAX_INDEX_BYTES", 16), \
                self.assertLogs("equabot_gw.sessions", "WARNING") as logs:
            store = await self.open_store()
        self.assertIn("index.json cannot be read (larger than 16 bytes)", "\n".join(logs.output))
        self.assertEqual([i.key for i in store.list_sessions()], ["agent:main:alice"])

    async def test_a_key_journal_that_is_not_a_regular_file_is_skipped(self) -> None:
        keys_dir = self.state / "agents" / "main" / transcripts.KEYS_DIR
        keys_dir.mkdir()
        fifo = keys_dir / transcripts.journal_name(int(self.clock() // 86400))
        os.mkfifo(fifo)
        store = await self.open_store()
        with self.assertLogs("equabot_gw.sessions", "WARNING") as logs, FifoWatchdog(fifo) as watchdog:
            await Keys(store, clock=self.clock).load(["main"])
        self.assertFalse(watchdog.fired, "start-up waited on a FIFO")
        self.assertIn("not a regular file", "\n".join(logs.output))

    async def test_a_big_key_journal_is_read_from_its_tail(self) -> None:
        store = self.store = await self.open_store()
        keys = Keys(store, clock=self.clock)
        for n in range(3):
            keys.journal(keys.add("main", f"k{n}", "d", f"run-{n}", "agent:main:s", False, None))
        await asyncio.sleep(0)
        await store.close()
        store = await self.open_store()
        with unittest.mock.patch.object(transcripts, "MAX_KEY_JOURNAL_BYTES", 300):
            keys = Keys(store, clock=self.clock)
            await keys.load(["main"])
        self.assertIsNotNone(keys.get("main", "k2"))      # the newest key is read
        self.assertIsNone(keys.get("main", "k0"))         # the oldest is past the cap

    async def test_a_transcript_that_is_not_a_regular_file_is_refused_at_its_first_append(self) -> None:
        self.replace(self.transcript("agent:main:bob"), "fifo")
        store = await self.open_store()
        with self.assertLogs("equabot_gw.sessions", "WARNING"), self.assertRaises(StorageError) as caught:
            await store.record_turn("main", "bob", ok_turn(1))
        self.assertIn("open of a session transcript failed: EINVAL (not a regular file)", str(caught.exception))

    async def test_a_response_log_that_is_not_a_regular_file_is_skipped(self) -> None:
        directory = self.state / "responses"
        directory.mkdir()
        fifo = directory / transcripts.journal_name(int(self.clock() // 86400))
        os.mkfifo(fifo)
        store = ResponseStore(self.state, clock=self.clock)
        with self.assertLogs("equabot_gw", "WARNING") as logs, FifoWatchdog(fifo) as watchdog:
            await store.open()
        await store.close()
        self.assertFalse(watchdog.fired, "start-up waited on a FIFO")
        self.assertIn("not a regular file", "\n".join(logs.output))



class ErrorWording(StoreCase):
    """Storage errors say what failed (a read or a write, which step, the errno in plain words);
    the path only where the operator reads it (start-up), never in a message for a client."""

    async def test_a_transcript_that_cannot_be_read_is_a_read_error(self) -> None:
        await self.store.record_turn("main", "alice", ok_turn(1))
        await self.reopen()          # nothing cached: the next turn reads the transcript
        denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.transcript("agent:main:alice")))
        with unittest.mock.patch.object(transcripts, "read_regular", side_effect=denied), \
                self.assertLogs("equabot_gw.sessions", "WARNING"), self.assertRaises(StorageError) as caught:
            await self.store.history("main", "alice")
        self.assertEqual(str(caught.exception),
                         "stored data could not be read: reading a transcript failed: EACCES (Permission denied)")
        self.assertEqual(caught.exception.path, str(self.transcript("agent:main:alice")))

    async def test_a_file_where_the_agents_directory_belongs_is_enotdir_with_its_path_at_start_up(self) -> None:
        await self.store.close()
        shutil.rmtree(self.state / "agents")
        (self.state / "agents").write_text("x")
        runtime = Runtime(config_mod.from_data(base_config(), env={}), self.state)
        with self.assertRaises(StorageError) as caught:
            await runtime.start()
        self.assertEqual(str(caught.exception),
                         "the session store could not be opened: creating the state directory failed: "
                         f"ENOTDIR (a file is where a directory belongs): {self.state / 'agents'}")

    async def test_a_file_where_the_responses_directory_belongs_is_enotdir_with_its_path_at_start_up(self) -> None:
        (self.state / "responses").write_text("x")
        store = ResponseStore(self.state, clock=self.clock)
        with self.assertLogs("equabot_gw", "WARNING"), self.assertRaises(StorageError) as caught:
            await store.open()
        self.assertEqual(str(caught.exception),
                         "the stored responses could not be loaded: loading the stored responses failed: "
                         f"ENOTDIR (a file is where a directory belongs): {self.state / 'responses'}")

    def test_the_message_for_a_client_names_no_path(self) -> None:
        exc = committer.storage_error("write of a session transcript",
                                      OSError(errno.EFBIG, os.strerror(errno.EFBIG), "/state/agents/x.jsonl"))
        self.assertEqual(str(exc), "transcript could not be written: write of a session transcript failed: "
                                   "EFBIG (File too large)")
        self.assertEqual(exc.path, "/state/agents/x.jsonl")


if __name__ == "__main__":
    unittest.main()
