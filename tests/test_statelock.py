"""One gateway per state dir, and CLI commands that find it."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
import unittest

from equabot_gw import statelock
from tests.support import ROOT, TOKEN, GatewayProcess


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
