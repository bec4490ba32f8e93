"""A real ``python -m equabot_gw`` stopped at awkward moments.

- A stop signal (SIGTERM, SIGINT) while the start rebuilds a big session
  index ends the start as a stop ends a gateway: one line, exit 0, and the
  store opens whole the next time.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Any

from tests.support import ROOT, base_config, write_config

TIMEOUT = 20.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EQUABOT_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _fill_store(state: pathlib.Path, sessions: int) -> None:
    """``sessions`` keyed transcripts of one turn each, and no index: the start rebuilds it."""
    directory = state / "agents" / "main" / "sessions"
    directory.mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    for i in range(sessions):
        key = f"agent:main:big{i}"
        at = 1796360000.0 + i
        lines = ({"type": "session", "key": key, "agentId": "main", "createdAt": at},
                 {"type": "user", "runId": f"run_x{i}", "at": at, "content": "hi"},
                 {"type": "assistant", "runId": f"run_x{i}", "at": at, "content": "Echo (turn 1): hi",
                  "model": "echo/echo"})
        (directory / f"{key.replace(':', '%3A')}.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines))


class GatewayCase(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = pathlib.Path(tmp.name)
        self.state = self.dir / "state"
        self.config = write_config(self.dir, base_config())

    def spawn(self, **popen: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "equabot_gw", "--config", str(self.config), "--port", "0",
                                 "--state-dir", str(self.state)], cwd=ROOT, env=_env(),
                                stdout=subprocess.PIPE, **popen)
        self.addCleanup(self.reap, proc)
        return proc

    @staticmethod
    def reap(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def port_of(self, proc: subprocess.Popen[bytes]) -> int:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        self.assertIn("listening on http://127.0.0.1:", line)
        return int(line.split("127.0.0.1:", 1)[1].split()[0])


class StopDuringStartTest(GatewayCase):
    SESSIONS = 8000

    def test_a_stop_signal_during_start_ends_it_cleanly(self) -> None:
        _fill_store(self.state, self.SESSIONS)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(sig.name):
                (self.state / "gateway.lock").unlink(missing_ok=True)      # the last one's, released
                proc = self.spawn(stderr=subprocess.PIPE)
                # The lock is taken first, then the store opens: the index is being rebuilt now.
                deadline = time.monotonic() + TIMEOUT
                while not (self.state / "gateway.lock").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                proc.send_signal(sig)
                out, err = proc.communicate(timeout=TIMEOUT)
                self.assertEqual(out, b"")                       # it never said it listens
                self.assertEqual(err.decode(), "shutting down\n")
                self.assertEqual(proc.returncode, 0)
        # The next start opens the store whole: every session is there.
        proc = self.spawn(stderr=subprocess.DEVNULL)
        port = self.port_of(proc)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        self.assertEqual(json.loads(answer.partition(b"\r\n\r\n")[2])["sessions"], self.SESSIONS)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(TIMEOUT), 0)


if __name__ == "__main__":
    unittest.main()
