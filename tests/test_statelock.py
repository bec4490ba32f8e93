"""One gateway per state dir, and CLI commands that find it."""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from unittest import mock

from equabot_gw import statelock
from equabot_gw.errors import GatewayError
from tests.support import ROOT, TOKEN, GatewayProcess, running_gateway


class StateLockTest(unittest.TestCase):
    def test_second_lock_is_refused_until_released(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            self.assertIsNone(statelock.holder(state))
            lock = statelock.acquire(state)
            lock.announce("http://127.0.0.1:1234")
            self.assertEqual(statelock.holder(state), statelock.Holder(lock_pid(), "http://127.0.0.1:1234"))
            with self.assertRaises(statelock.StateDirInUse) as caught:
                statelock.acquire(state)
            self.assertIn("in use by a running gateway", str(caught.exception))
            self.assertIn("http://127.0.0.1:1234", str(caught.exception))
            lock.release()
            self.assertIsNone(statelock.holder(state))
            statelock.acquire(state).release()

    def test_removing_the_lock_file_does_not_free_the_state_dir(self) -> None:
        # A "stale lock" clean-up must not let a second gateway write the same transcripts.
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            lock = statelock.acquire(state)
            lock.announce("http://127.0.0.1:1234")
            (state / statelock.LOCK_FILE).unlink()
            with self.assertRaises(statelock.StateDirInUse) as caught:
                statelock.acquire(state)
            self.assertIn("in use by a running gateway (another process)", str(caught.exception))
            self.assertFalse((state / statelock.LOCK_FILE).exists())    # the refused one left nothing behind
            lock.release()
            again = statelock.acquire(state)
            again.announce("http://127.0.0.1:5678")
            self.assertEqual(statelock.holder(state), statelock.Holder(lock_pid(), "http://127.0.0.1:5678"))
            again.release()

    def test_a_lock_held_on_the_file_alone_is_still_seen(self) -> None:
        # A gateway of an earlier version locks only the file.
        import fcntl
        import os
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            fd = os.open(state / statelock.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                with self.assertRaises(statelock.StateDirInUse):
                    statelock.acquire(state)
            finally:
                os.close(fd)
            statelock.acquire(state).release()


    def test_a_fifo_or_directory_in_place_of_the_lock_file_is_refused_without_hanging(self) -> None:
        # Opening a FIFO for reading waits for a writer: a CLI command must not hang on one.
        import os
        import threading
        for kind in ("fifo", "directory"):
            with self.subTest(kind), tempfile.TemporaryDirectory() as tmp:
                state = pathlib.Path(tmp)
                path = state / statelock.LOCK_FILE
                os.mkfifo(path) if kind == "fifo" else path.mkdir()
                found: list[object] = []

                def read() -> None:
                    found.extend([statelock.last_record(state), statelock.holder(state)])
                reader = threading.Thread(target=read, daemon=True)
                reader.start()
                reader.join(5)
                if reader.is_alive():       # unblock the reader: open the FIFO's other end
                    os.close(os.open(path, os.O_RDWR))
                    self.fail(f"reading a {kind} as the lock file hung")
                self.assertEqual(found, [None, None])
                with self.assertRaises(statelock.LockFileError) as caught:
                    statelock.acquire(state)
                self.assertIn(f"lock file {path} is not a regular file", str(caught.exception))
                self.assertIsInstance(caught.exception, GatewayError)
                # Refused, it holds nothing: the directory is free for the next try.
                os.remove(path) if kind == "fifo" else path.rmdir()
                statelock.acquire(state).release()


    def test_a_symlink_in_place_of_the_lock_file_is_not_followed(self) -> None:
        # Following it, a gateway would truncate and overwrite whatever file it names.
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp) / "state"
            state.mkdir()
            victim = pathlib.Path(tmp) / "notes.txt"
            victim.write_text("precious\n")
            (state / statelock.LOCK_FILE).symlink_to(victim)
            with self.assertRaises(statelock.LockFileError) as caught:
                statelock.acquire(state).announce("http://127.0.0.1:1234")
            self.assertIn("is not a regular file (a symlink)", str(caught.exception))
            self.assertEqual(victim.read_text(), "precious\n")
            self.assertIsNone(statelock.holder(state))
            (state / statelock.LOCK_FILE).unlink()
            statelock.acquire(state).release()

    def test_a_forked_child_does_not_keep_the_state_dir_locked(self) -> None:
        # An embedding program that forks a worker: the lock is the parent's, not the worker's.
        import os
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            lock = statelock.acquire(state)
            lock.announce("http://127.0.0.1:1234")
            go, wait = os.pipe()
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:        # the child: outlive the parent's lock, then exit without cleanup
                try:
                    os.close(wait)
                    os.write(ready_w, b"r")     # running Python code: past any fork hooks
                    os.read(go, 1)
                finally:
                    os._exit(0)
            os.close(go)
            os.close(ready_w)
            try:
                self.assertEqual(os.read(ready_r, 1), b"r")
                os.close(ready_r)
                # The parent's lock holds while the child lives...
                self.assertEqual(statelock.holder(state), statelock.Holder(lock_pid(), "http://127.0.0.1:1234"))
                lock.release()
                # ...and ends with the parent's release, though the child still runs.
                self.assertIsNone(statelock.holder(state))
                statelock.acquire(state).release()
            finally:
                os.close(wait)
                os.waitpid(pid, 0)

    def test_a_child_that_exits_does_not_free_the_parents_lock(self) -> None:
        import os
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            lock = statelock.acquire(state)
            lock.announce("http://127.0.0.1:1234")
            pid = os.fork()
            if pid == 0:        # the child releases what it inherited, then exits
                try:
                    lock.release()
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            with self.assertRaises(statelock.StateDirInUse):
                statelock.acquire(state)
            self.assertEqual(statelock.holder(state), statelock.Holder(lock_pid(), "http://127.0.0.1:1234"))
            lock.release()


    def test_a_new_holder_does_not_pass_for_the_last_gateway_before_it_announces(self) -> None:
        # A gateway that is still starting (a big session index takes seconds) holds the lock
        # with the last gateway's record in the file: its URL (a random port then) may be
        # another program's now, and the CLI would send it the token.
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            config = pathlib.Path(tmp) / "equabot.json5"
            config.write_text("{}")
            old = statelock.acquire(state)
            old.announce("http://127.0.0.1:41873", config_path=config, auth_mode="token")
            old.release()
            starting = statelock.acquire(state)
            try:
                self.assertIsNone(statelock.holder(state))
                with self.assertRaises(statelock.StateDirInUse) as caught:
                    statelock.acquire(state)
                self.assertNotIn("41873", str(caught.exception))
                # What the last gateway ran with is still there for commands to follow.
                self.assertEqual(statelock.last_record(state).config_path, str(config.resolve()))
                starting.announce("http://127.0.0.1:5678", config_path=config, auth_mode="token")
                self.assertEqual(statelock.holder(state),
                                 statelock.Holder(lock_pid(), "http://127.0.0.1:5678", str(config.resolve()), "token"))
            finally:
                starting.release()


    def test_a_command_looking_for_the_gateway_does_not_make_a_starting_one_refuse(self) -> None:
        # holder() probes the lock by taking it shared for an instant; a gateway starting in
        # that instant must not take the probe for a running gateway.
        import time
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            prober = subprocess.Popen(
                [sys.executable, "-c", "import pathlib, sys\nfrom equabot_gw import statelock\n"
                 "state = pathlib.Path(sys.argv[1])\nprint('probing', flush=True)\n"
                 "while True: statelock.holder(state)\n", str(state)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True)
            try:
                self.assertEqual(prober.stdout.readline(), "probing\n")
                refused = 0
                deadline = time.monotonic() + 1.5
                tries = 0
                while time.monotonic() < deadline:
                    tries += 1
                    try:
                        statelock.acquire(state).release()
                    except statelock.StateDirInUse:
                        refused += 1
                self.assertEqual(refused, 0, f"{refused} of {tries} refused")
            finally:
                prober.kill()
                prober.wait()
                prober.stdout.close()


    def test_a_holder_that_is_no_gateway_is_not_called_one(self) -> None:
        # agent --local, or a sessions reset from the files: the refusal names its pid, not a gateway.
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            lock = statelock.acquire(state)
            lock.announce("")
            try:
                with self.assertRaises(statelock.StateDirInUse) as caught:
                    statelock.acquire(state)
                self.assertEqual(str(caught.exception), f"state dir {state} is in use by another process "
                                 f"(pid {lock_pid()}); stop it or pass another --state-dir")
            finally:
                lock.release()


def lock_pid() -> int:
    import os
    return os.getpid()


class RunningGatewayTest(unittest.TestCase):
    def test_second_gateway_on_the_same_state_dir_refuses_to_start(self) -> None:
        with GatewayProcess() as gw:
            result = subprocess.run(
                [sys.executable, "-m", "equabot_gw", "--config", str(gw.config_path), "--port", "0",
                 "--state-dir", str(gw.state_dir)], cwd=ROOT, env=gw.env, capture_output=True, text=True,
                timeout=20)
            self.assertEqual(result.returncode, 2)
            lines = result.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertIn(f"in use by a running gateway (pid {gw.proc.pid} at {gw.url})", lines[0])

    def test_a_fifo_as_lock_file_is_one_line_and_exit_code_2(self) -> None:
        import os
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp) / "state"
            state.mkdir()
            os.mkfifo(state / statelock.LOCK_FILE)
            env = {**os.environ, "EQUABOT_GATEWAY_TOKEN": TOKEN}
            env.pop("EQUABOT_CONFIG_PATH", None)
            listed = subprocess.run([sys.executable, "-m", "equabot_gw", "sessions", "list", "--state-dir", str(state)],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
            self.assertEqual((listed.returncode, listed.stdout), (0, "no sessions\n"), listed.stderr)
            result = subprocess.run([sys.executable, "-m", "equabot_gw", "--port", "0", "--state-dir", str(state)],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(result.stdout, "")
            self.assertEqual(result.stderr.strip().splitlines()[-1],
                             f"equabot: lock file {state / statelock.LOCK_FILE} is not a regular file (a FIFO); "
                             "remove it or pass another --state-dir")

    def test_sessions_reset_does_not_edit_files_under_a_holder_without_a_url(self) -> None:
        # agent --local (or a gateway still loading its store) holds the state dir and
        # announces no URL: a reset from the files would write behind its back.
        with GatewayProcess() as gw:
            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([sys.executable, "-m", "equabot_gw", *args, "--config", str(gw.config_path),
                                       "--state-dir", str(gw.state_dir)], cwd=ROOT, env=gw.env,
                                      capture_output=True, text=True, timeout=20)
            self.assertEqual(cli("agent", "--message", "hi", "--session-key", "k").returncode, 0)
            self.assertEqual(gw.stop(), 0)
            before = sorted(p.name for p in gw.state_dir.rglob("*"))
            lock = statelock.acquire(gw.state_dir)
            lock.announce("")
            try:
                reset = cli("sessions", "reset", "k")
                self.assertEqual(reset.returncode, 2, reset.stdout + reset.stderr)
                lines = reset.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, reset.stderr)
                self.assertIn(f"state dir {gw.state_dir} is in use", lines[0])
                self.assertEqual(sorted(p.name for p in gw.state_dir.rglob("*")), before)
            finally:
                lock.release()
            self.assertEqual(cli("sessions", "reset", "k").stdout.strip(), "reset agent:main:k")
            self.assertIsNone(statelock.holder(gw.state_dir))      # the reset let go of the lock

    def test_cli_goes_through_the_running_gateway(self) -> None:
        with GatewayProcess() as gw:
            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([sys.executable, "-m", "equabot_gw", *args, "--config", str(gw.config_path),
                                       "--state-dir", str(gw.state_dir)], cwd=ROOT, env=gw.env,
                                      capture_output=True, text=True, timeout=20)
            # No --url: the CLI finds the gateway (on its random port) through the lock file.
            out = cli("agent", "--message", "found you", "--session-key", "k", "--json")
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(json.loads(out.stdout)["result"]["payloads"][0]["text"], "Echo (turn 1): found you")
            listed = cli("sessions", "list", "--json")
            self.assertEqual([s["key"] for s in json.loads(listed.stdout)], ["agent:main:k"])
            shown = cli("sessions", "show", "k")
            self.assertEqual(shown.stdout.splitlines(), ["user: found you", "assistant: Echo (turn 1): found you"])
            self.assertEqual(cli("sessions", "reset", "k").stdout.strip(), "reset agent:main:k")
            # Reset, the session stays listed, empty, as the gateway's sessions.reset leaves it.
            self.assertEqual(cli("sessions", "list").stdout.split("\t")[:2], ["agent:main:k", "turns=0"])
            self.assertNotIn(TOKEN, listed.stdout + listed.stderr)


if __name__ == "__main__":
    unittest.main()


class StartInALoopTest(unittest.IsolatedAsyncioTestCase):
    """A gateway started in an embedding program's event loop, around its state-dir lock."""

    async def test_a_record_that_cannot_be_written_costs_the_cli_not_the_clients(self) -> None:
        # A full disk when the listening gateway writes its record: it serves on,
        # and says that CLI commands will not find it.
        full = OSError(28, "No space left on device")
        with mock.patch.object(statelock.StateLock, "announce", side_effect=full), \
                self.assertLogs("equabot_gw", "WARNING") as logs:
            async with running_gateway() as gw:
                self.assertTrue(gw.ready)
                url = f"http://127.0.0.1:{gw.server.port}/health"
                status = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).status)
                self.assertEqual(status, 200)
        self.assertTrue(any("could not record this gateway" in line and "No space left" in line
                            for line in logs.output), logs.output)

    async def test_a_refused_start_waits_for_the_lock_without_holding_its_loop(self) -> None:
        # The grace a start gives a lock held for an instant is spent in the loop's own
        # sleep: an embedding program's other tasks run on while a start is refused.
        with tempfile.TemporaryDirectory() as tmp:
            held = statelock.acquire(pathlib.Path(tmp))
            self.addCleanup(held.release)
            gaps: list[float] = []
            stop = asyncio.Event()

            async def ticker() -> None:
                last = time.monotonic()
                while not stop.is_set():
                    await asyncio.sleep(0.005)
                    gaps.append(time.monotonic() - last)
                    last = time.monotonic()

            ticking = asyncio.ensure_future(ticker())
            started = time.monotonic()
            with self.assertRaises(statelock.StateDirInUse):
                async with running_gateway(state_dir=pathlib.Path(tmp)):
                    pass
            waited = time.monotonic() - started
            stop.set()
            await ticking
        self.assertGreaterEqual(waited, statelock.PROBE_GRACE)     # it did wait out the grace
        self.assertTrue(gaps, "the loop never ran while the start waited")
        self.assertLess(max(gaps), 0.2)                            # in the loop's own time
