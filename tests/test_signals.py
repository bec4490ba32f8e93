"""A real ``python -m equabot_gw`` stopped at awkward moments, and short of descriptors.

- A stop signal (SIGTERM, SIGINT) while the start rebuilds a big session
  index ends the start as a stop ends a gateway: one line, exit 0, and the
  store opens whole the next time.
- Under a low open-files limit, more clients than descriptors: the accept
  failures are a line a second (not a traceback flood), the process does not
  spin, it serves again once clients leave, and a SIGTERM then is quiet and
  quick. The soft limit is raised to the hard one at start.
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


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@unittest.skipUnless(sys.platform.startswith("linux"), "reads /proc and sets RLIMIT_NOFILE")
class OutOfDescriptorsTest(GatewayCase):
    LIMIT = 64
    CLIENTS = 80            # more than the limit: the last ones wait in the kernel's queue

    def spawn_limited(self, soft: int, hard: int) -> subprocess.Popen[bytes]:
        import resource

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        self.stderr_path = self.dir / "stderr.log"
        self.stderr_file = open(self.stderr_path, "wb")
        self.addCleanup(self.stderr_file.close)
        return self.spawn(stderr=self.stderr_file, preexec_fn=limit)

    def flood(self, port: int) -> list[socket.socket]:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(self.CLIENTS)]
        for client in clients:
            self.addCleanup(client.close)
        return clients

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def health(self, port: int) -> int:
        """The status of GET /health on a new connection, retried (accepting resumes within a second)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    return int(sock.recv(65536).split()[1])
            except (OSError, IndexError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def test_accept_failures_are_quiet_cheap_and_pass(self) -> None:
        proc = self.spawn_limited(self.LIMIT, self.LIMIT)
        port = self.port_of(proc)
        clients = self.flood(port)
        time.sleep(1.0)
        size, cpu = len(self.stderr()), _cpu_seconds(proc.pid)
        time.sleep(2.0)
        grown, spent = len(self.stderr()) - size, _cpu_seconds(proc.pid) - cpu
        self.assertLess(grown, 2000, self.stderr()[-2000:])       # a line a second, not megabytes
        self.assertLess(spent, 0.6)                                # the loop does not spin (2 s measured)
        self.assertIn("cannot accept connections: Too many open files (EMFILE)", self.stderr())
        self.assertNotIn("Traceback", self.stderr())
        for client in clients:
            client.close()
        self.assertEqual(self.health(port), 200)                   # serving again once they left

    def test_a_stop_while_out_of_descriptors_is_quiet_and_quick(self) -> None:
        proc = self.spawn_limited(self.LIMIT, self.LIMIT)
        self.flood(self.port_of(proc))
        time.sleep(1.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(TIMEOUT), 0)
        self.assertLess(time.monotonic() - started, 3.0)
        log = self.stderr()
        self.assertNotIn("Traceback", log)
        self.assertLess(len(log), 5000, log[-2000:])

    def test_the_soft_limit_is_raised_to_the_hard_one(self) -> None:
        proc = self.spawn_limited(self.LIMIT, 4096)
        self.port_of(proc)
        limits = pathlib.Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        self.assertEqual(line.split()[3:5], ["4096", "4096"], line)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(TIMEOUT), 0)
        self.assertNotIn("open files", self.stderr())             # nothing said when it worked


class AcceptErrorLogTest(unittest.TestCase):
    """The loop exception handler: accept failures rate-limited, everything else passed on."""

    def test_one_line_a_second_and_the_rest_passed_on(self) -> None:
        import asyncio
        import errno
        from equabot_gw.net.server import AcceptErrorLog
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        passed: list[dict[str, Any]] = []
        handler = AcceptErrorLog(lambda _, context: passed.append(context), interval=60.0)
        failure = {"message": "socket.accept() out of system resource",
                   "exception": OSError(errno.EMFILE, "Too many open files")}
        with self.assertLogs("equabot_gw.server", "WARNING") as logs:
            for _ in range(2048):
                handler(loop, failure)
        self.assertEqual(len(logs.output), 1)
        self.assertIn("cannot accept connections: Too many open files (EMFILE)", logs.output[0])
        self.assertEqual(handler.failures, 2048)
        other = {"message": "something else", "exception": RuntimeError("x")}
        handler(loop, other)
        self.assertEqual(passed, [other])


if __name__ == "__main__":
    unittest.main()
