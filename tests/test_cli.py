"""The command line end to end: ``python -m equabot_gw …`` in subprocesses.

``agent`` against a running gateway (``GatewayProcess``; URL and secret from
flags, or from a config file and ``EQUABOT_GATEWAY_TOKEN``) and ``--local``
in-process; ``config check`` with good and bad files; ``sessions
list|show|reset`` on a state dir filled by ``--local`` runs. Every CLI
process gets a private HOME and no ``EQUABOT_*`` variables, so nothing of
the machine's own configuration leaks in. Errors the user can fix are one
line on stderr: exit 2 for configuration, 1 for a run or a gateway.
"""

from __future__ import annotations

import base64
import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Any

from equabot_gw import __version__
from tests.support import (ROOT, TOKEN, GatewayProcess, LiveGateway, base_config, signals_as_from_a_terminal,
                           write_config)

TIMEOUT = 20.0
SLOW_DELAY_MS = 80


def gateway_config() -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "slow", "model": "slow/echo"},
                               {"id": "broken", "model": "failing/x"}, {"id": "silent", "model": "mute/x"}]}
    data["models"] = {"providers": {
        "slow": {"api": "echo", "delayMs": SLOW_DELAY_MS},
        "failing": {"api": "command",
                    "command": [sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(2)"]},
        "mute": {"api": "command", "command": [sys.executable, "-c", "pass"]},
    }}
    return data


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI process: a private HOME and no EQUABOT_* variables but ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EQUABOT_")}
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CLITestCase(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.home = self.dir / "home"
        self.home.mkdir()
        self.state = self.dir / "state"

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.home, **extra)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "equabot_gw", *args], cwd=ROOT, env=env or self.env(),
                              capture_output=True, text=True, timeout=TIMEOUT)

    def config_file(self, data: dict[str, Any], name: str = "config.json5") -> str:
        directory = self.dir / name.replace(".", "_")
        directory.mkdir()
        return str(write_config(directory, data))

    def assertOneLineError(self, done: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
        """Exit ``code`` and exactly one line on stderr, holding every one of ``parts``."""
        self.assertEqual(done.returncode, code, done.stderr)
        lines = done.stderr.splitlines()
        self.assertEqual(len(lines), 1, done.stderr)
        self.assertTrue(lines[0].startswith("equabot: "), lines[0])
        for part in parts:
            self.assertIn(part, lines[0])
        return lines[0]

    def assertReply(self, done: subprocess.CompletedProcess[str], text: str) -> None:
        self.assertEqual((done.returncode, done.stdout), (0, text + "\n"), done.stderr)

    def stream_timing(self, *args: str) -> tuple[bytes, float, bytes, float]:
        """(first stdout bytes, when, the rest, when it ended) of a CLI run, in seconds from start."""
        proc = subprocess.Popen([sys.executable, "-m", "equabot_gw", *args], cwd=ROOT, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            started = time.monotonic()
            first = proc.stdout.read1(65536)
            first_at = time.monotonic() - started
            rest = proc.stdout.read()
            ended_at = time.monotonic() - started
            self.assertEqual(proc.wait(TIMEOUT), 0)
        finally:
            proc.stdout.close()
        return first, first_at, rest, ended_at


class HelpTest(CLITestCase):
    def test_help_lists_the_subcommands(self) -> None:
        done = self.cli("--help")
        self.assertEqual(done.returncode, 0)
        listed = re.search(r"\{([a-z,]+)\}", done.stdout)
        self.assertIsNotNone(listed, done.stdout)
        self.assertEqual(listed.group(1).split(",")[:4], ["gateway", "agent", "config", "sessions"])
        for name in ("gateway", "agent", "config", "sessions"):
            self.assertRegex(done.stdout, rf"\n    {name} +\S")       # each with its help line

    def test_agent_help_names_its_flags(self) -> None:
        done = self.cli("agent", "--help")
        self.assertEqual(done.returncode, 0)
        for flag in ("--message", "--agent", "--session-key", "--timeout", "--json", "--local", "--url", "--token"):
            self.assertIn(flag, done.stdout)

    def test_version(self) -> None:
        done = self.cli("--version")
        self.assertEqual((done.returncode, done.stdout.strip()), (0, f"equabot_gw {__version__}"))

    def test_an_older_python_is_named_at_once(self) -> None:
        # As the package is imported under ``python -m`` (argv[0] is "-m" then) and by a host
        # program: the interpreter's version is faked, the check reads it first.
        fake = "import sys; sys.version_info = (3, 10, 13, 'final', 0); "
        as_command = subprocess.run(
            [sys.executable, "-c", fake + "sys.argv[0] = '-m'; sys.orig_argv = ['python', '-m', 'equabot_gw']; "
                                          "import equabot_gw"],
            cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=TIMEOUT)
        self.assertOneLineError(as_command, 2, "needs Python 3.11 or newer", "this is Python 3.10.13")
        # Another package run with -m that imports this one: an ImportError for it to handle.
        other = subprocess.run(
            [sys.executable, "-c", fake + "sys.argv[0] = '-m'; sys.orig_argv = ['python', '-m', 'hostapp']; "
                                          "import equabot_gw"],
            cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(other.stderr.splitlines()[-1],
                         "ImportError: equabot_gw needs Python 3.11 or newer; this is Python 3.10.13")
        embedded = subprocess.run([sys.executable, "-c", fake + "import equabot_gw"],
                                  cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=TIMEOUT)
        self.assertNotEqual(embedded.returncode, 0)
        self.assertEqual(embedded.stderr.splitlines()[-1],
                         "ImportError: equabot_gw needs Python 3.11 or newer; this is Python 3.10.13")

    def test_older_interpreters_compile_the_check_and_say_it_in_one_line(self) -> None:
        # Python 2.7 and 3.6 cannot compile f-strings or annotations: the package's first
        # file must compile on them all, or the check never runs (a SyntaxError traceback).
        found = {}
        for path in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python"))) + \
                [shutil.which(f"python{v}") or "" for v in ("2", "2.7", "3.6", "3.7", "3.8", "3.9", "3.10")]:
            if not path:
                continue
            probe = subprocess.run([path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                   capture_output=True, text=True, timeout=TIMEOUT)
            if probe.returncode == 0 and tuple(map(int, probe.stdout.split("."))) < (3, 11):
                found.setdefault(probe.stdout.strip(), path)
        if not found:
            self.skipTest("no Python older than 3.11 on this machine")
        for version, path in found.items():
            with self.subTest(version):
                done = subprocess.run([path, "-m", "equabot_gw", "--version"], cwd=ROOT, env=self.env(),
                                      capture_output=True, text=True, timeout=TIMEOUT)
                self.assertOneLineError(done, 2, "needs Python 3.11 or newer", f"this is Python {version}")

    def test_missing_message_is_a_usage_error(self) -> None:
        done = self.cli("agent", "--local")
        self.assertEqual(done.returncode, 2)
        self.assertIn("--message", done.stderr)

    def test_a_mistyped_flag_is_named_beside_the_one_it_left_out(self) -> None:
        # "--mesage hi" left --message out; the typo is what the user needs to see.
        for argv, stray in ((["agent", "--mesage", "hi"], "--mesage hi"), (["agent", "hi"], "hi"),
                            (["agent", "--agent", "main", "--mesage", "x"], "--mesage x")):
            with self.subTest(argv):
                done = self.cli(*argv)
                self.assertOneLineError(done, 2, f"unrecognized arguments: {stray};",
                                        "the following arguments are required: --message/-m")
        done = self.cli("agent", "--agent", "main")         # nothing stray: the plain message
        self.assertOneLineError(done, 2, "the following arguments are required: --message/-m")
        self.assertNotIn("unrecognized", done.stderr)


class RemoteAgentTest(LiveGateway, CLITestCase):
    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return gateway_config()

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("agent", "--url", self.gw.url, "--token", TOKEN, "--state-dir", str(self.state), *args)

    # The gateway is shared by the class's tests: each that counts turns names its own session.
    def test_prints_the_echo_reply(self) -> None:
        self.assertReply(self.agent("--message", "hi", "--session-key", "cli-hi"), "Echo (turn 1): hi")

    def test_secret_from_config_and_environment_goes_to_an_explicit_url(self) -> None:
        config = self.config_file({"gateway": {"port": self.gw.port}})
        done = self.cli("agent", "--config", config, "--url", self.gw.url, "--state-dir", str(self.state),
                        "--message", "from env", "--session-key", "cli-env", env=self.env(EQUABOT_GATEWAY_TOKEN=TOKEN))
        self.assertReply(done, "Echo (turn 1): from env")
        # EQUABOT_CONFIG_PATH finds the same file.
        done = self.cli("agent", "--url", self.gw.url, "--state-dir", str(self.state), "-m", "via path",
                        "--session-key", "cli-path", env=self.env(EQUABOT_GATEWAY_TOKEN=TOKEN, EQUABOT_CONFIG_PATH=config))
        self.assertReply(done, "Echo (turn 1): via path")

    def test_token_from_config_file(self) -> None:
        config = self.config_file({"gateway": {"auth": {"token": TOKEN}}})
        self.assertReply(self.cli("agent", "--config", config, "--url", self.gw.url, "--state-dir",
                                  str(self.state), "-m", "x", "--session-key", "cli-token"), "Echo (turn 1): x")

    def test_json_prints_one_result_object(self) -> None:
        done = self.agent("--message", "as json", "--session-key", "cli-json", "--json")
        self.assertEqual(done.returncode, 0, done.stderr)
        result = json.loads(done.stdout)
        # Indented by two spaces, as the original's CLI prints it.
        self.assertEqual(done.stdout, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        # The original's `agent --json`: the gateway's final agent payload.
        self.assertEqual((result["status"], result["summary"]), ("ok", "completed"))
        self.assertEqual(result["result"]["payloads"], [{"text": "Echo (turn 1): as json", "mediaUrl": None}])
        meta = result["result"]["meta"]
        self.assertEqual(meta["agentMeta"]["usage"],
                         {"input": 2, "output": 5, "cacheRead": 0, "cacheWrite": 0, "total": 7})
        self.assertEqual((meta["agentMeta"]["provider"], meta["aborted"]), ("echo", False))
        self.assertRegex(meta["agentMeta"]["sessionId"], r"^[0-9a-f-]{36}$")

    def test_json_object_is_the_same_locally_and_remotely(self) -> None:
        remote = json.loads(self.agent("--message", "same", "--session-key", "cli-same", "--json").stdout)
        local = json.loads(self.cli("agent", "--local", "--state-dir", str(self.state), "-m", "same",
                                    "--session-key", "cli-same", "--json").stdout)
        self.assertEqual(sorted(remote), sorted(local))
        self.assertEqual(sorted(remote["result"]["meta"]), sorted(local["result"]["meta"]))
        self.assertEqual(remote["result"]["payloads"], local["result"]["payloads"])

    def test_session_key_continues_across_calls(self) -> None:
        replies = [self.agent("-m", "again", "--session-key", "cli-turns").stdout for _ in range(3)]
        self.assertEqual(replies, [f"Echo (turn {n}): again\n" for n in (1, 2, 3)])
        other = self.agent("-m", "again", "--session-key", "cli-turns", "--agent", "slow")
        self.assertReply(other, "Echo (turn 1): again")          # another agent, another session

    def test_prints_its_own_run_only_while_others_run(self) -> None:
        # Every control client gets every run's events; two CLIs at once must not mix replies.
        argv = [sys.executable, "-m", "equabot_gw", "agent", "--url", self.gw.url, "--token", TOKEN,
                "--state-dir", str(self.state), "--agent", "slow", "-m"]
        procs = [subprocess.Popen(argv + [words, "--session-key", key], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=self.env())
                 for words, key in (("one two three four", "cli-a"), ("five six seven eight", "cli-b"))]
        outputs = [proc.communicate(timeout=TIMEOUT) for proc in procs]
        self.assertEqual([(proc.returncode, out) for proc, (out, _) in zip(procs, outputs)],
                         [(0, "Echo (turn 1): one two three four\n"), (0, "Echo (turn 1): five six seven eight\n")],
                         [err for _, err in outputs])

    def test_without_session_key_it_continues_the_agents_main_session(self) -> None:
        # As the original's `agent`: agent:<id>:main, which other tests here may have used too.
        replies = [self.agent("-m", "x").stdout for _ in range(2)]
        replies.append(self.agent("-m", "x", "--session-key", "agent:main:main").stdout)
        first = int(re.fullmatch(r"Echo \(turn (\d+)\): x\n", replies[0])[1])
        self.assertEqual(replies, [f"Echo (turn {n}): x\n" for n in (first, first + 1, first + 2)])

    def test_reply_is_streamed(self) -> None:
        first, first_at, rest, ended_at = self.stream_timing(
            "agent", "--url", self.gw.url, "--token", TOKEN, "--state-dir", str(self.state),
            "--agent", "slow", "-m", "a b c d", "--session-key", "cli-streamed")
        self.assertTrue(first.startswith(b"Echo"), first)
        self.assertNotIn(b"d", first)
        self.assertEqual(first + rest, b"Echo (turn 1): a b c d\n")
        self.assertGreater(ended_at - first_at, 3 * SLOW_DELAY_MS / 1000)   # 6 more deltas came later

    def test_an_empty_reply_is_said_as_the_original_says_it(self) -> None:
        remote = self.agent("-m", "x", "--agent", "silent", "--session-key", "cli-silent")
        with tempfile.TemporaryDirectory() as own:      # the gateway holds self.state
            local = self.cli("agent", "--local", "--config", str(self.gw.config_path), "--state-dir", own,
                             "-m", "x", "--agent", "silent")
        for done in (remote, local):
            self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "No reply from agent.\n", ""))
        payloads = json.loads(self.agent("-m", "x", "--agent", "silent", "--json").stdout)["result"]["payloads"]
        self.assertEqual(payloads, [])

    def test_timeout_is_the_runs_time_limit(self) -> None:
        # 40 words at 80 ms each take over 3 s: a 1 s limit ends the run, as the original's --timeout.
        started = time.monotonic()
        done = self.agent("-m", " ".join(["w"] * 40), "--agent", "slow", "--timeout", "1",
                          "--session-key", "cli-timeout")
        self.assertOneLineError(done, 1, "run failed", "no reply within 1 s")
        self.assertLess(time.monotonic() - started, 3 * 40 * SLOW_DELAY_MS / 1000)
        self.assertReply(self.agent("-m", "quick", "--agent", "slow", "--timeout", "0",
                                    "--session-key", "cli-timeout-0"), "Echo (turn 1): quick")

    def test_unknown_agent(self) -> None:
        done = self.agent("-m", "x", "--agent", "ghost")
        self.assertOneLineError(done, 1, "'ghost'", "does not exist")
        self.assertEqual(done.stdout, "")

    def test_wrong_token(self) -> None:
        done = self.cli("agent", "--url", self.gw.url, "--token", "wrong", "--state-dir", str(self.state), "-m", "x")
        line = self.assertOneLineError(done, 1, "UNAUTHORIZED")
        # In the command line's terms, not the protocol's (connect.params.auth.token).
        self.assertEqual(line, f"equabot: UNAUTHORIZED: the gateway at {self.gw.url} refused the token it was "
                               f"sent; pass it with --token or EQUABOT_GATEWAY_TOKEN")
        done = self.cli("agent", "--url", self.gw.url, "--state-dir", str(self.state), "-m", "x")
        self.assertIn("needs its token; pass it with --token or EQUABOT_GATEWAY_TOKEN",
                      self.assertOneLineError(done, 1, "UNAUTHORIZED"))
        self.assertNotIn("wrong", done.stderr)

    def test_failed_run(self) -> None:
        done = self.agent("-m", "x", "--agent", "broken")
        self.assertOneLineError(done, 1, "run failed", "exit status 2: bad")

    def test_url_and_generated_token_come_from_the_state_dir(self) -> None:
        data = gateway_config()
        del data["gateway"]["auth"]["token"]                 # the gateway generates one
        with GatewayProcess(data) as gw:
            token_file = gw.state_dir / "gateway-token"
            self.assertNotIn(token_file.read_text().strip(), gw.stderr())
            # No --url, --token or config: the running gateway's lock file and token file say it all.
            done = self.cli("agent", "--state-dir", str(gw.state_dir), "-m", "no flags")
            self.assertReply(done, "Echo (turn 1): no flags")
            config = self.config_file({"gateway": {"port": gw.port}})
            done = self.cli("agent", "--config", config, "--state-dir", str(self.state), "-m", "x")
            # Another state dir: no gateway of its own, so nothing is sent to the configured port.
            self.assertOneLineError(done, 1, f"no gateway is running for state dir {self.state}")

    def test_local_run_on_the_state_dir_of_a_running_gateway(self) -> None:
        with GatewayProcess(gateway_config()) as gw:
            state = str(gw.state_dir)

            def remote(message: str) -> subprocess.CompletedProcess[str]:
                return self.cli("agent", "--state-dir", state, "--token", TOKEN, "-m", message,
                                "--session-key", "shared")

            self.assertReply(remote("one"), "Echo (turn 1): one")
            local = self.cli("agent", "--local", "--state-dir", state, "-m", "two", "--session-key", "shared")
            if local.returncode:                                  # refusing is fine: one line, exit 2
                self.assertOneLineError(local, 2, "in use")
            # Either way the gateway must not answer from a stale history: no turn number twice.
            self.assertReply(remote("three"), f"Echo (turn {2 if local.returncode else 3}): three")

    def test_no_gateway_running(self) -> None:
        port = free_port()
        done = self.cli("agent", "--url", f"http://127.0.0.1:{port}", "--state-dir", str(self.state), "-m", "x")
        self.assertOneLineError(done, 1, f"http://127.0.0.1:{port}", "--local")
        config = self.config_file({"gateway": {"port": port}})
        done = self.cli("agent", "--config", config, "--state-dir", str(self.state), "-m", "x")
        self.assertOneLineError(done, 1, f"no gateway is running for state dir {self.state}; "
                                         f"start one, pass --url, or use --local")


class ForeignServer:
    """Not a gateway: a program on a port that accepts WebSocket upgrades and records every byte.

    It answers an upgrade with 101, reads the client's first frame (the
    ``connect`` request, unmasked into ``frames``) and closes.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.frames: list[dict[str, Any]] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self.connections += 1
                try:
                    self._one(conn)
                except (OSError, ValueError):
                    pass

    def _read(self, conn: socket.socket, buf: bytearray, n: int) -> bytes:
        while len(buf) < n:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("eof")
            self.received += chunk
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _one(self, conn: socket.socket) -> None:
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            self._read(conn, buf, len(buf) + 1)
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        buf[:] = rest
        key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head).group(1)
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        first, second = self._read(conn, buf, 2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._read(conn, buf, 2), "big")
        elif length == 127:
            length = int.from_bytes(self._read(conn, buf, 8), "big")
        mask = self._read(conn, buf, 4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read(conn, buf, length)))
        self.frames.append(json.loads(payload))

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


class SecretGoesOnlyToItsGatewayTest(CLITestCase):
    """``agent`` sends a secret only to the state dir's recorded gateway or to ``--url``, one secret only."""

    PASSWORD = "pw-never-sent-7788"

    def setUp(self) -> None:
        super().setUp()
        self.foreign = ForeignServer()
        self.addCleanup(self.foreign.close)

    def secrets_config(self, mode: str) -> str:
        return self.config_file({"gateway": {"port": self.foreign.port, "auth": {
            "mode": mode, "token": TOKEN, "password": self.PASSWORD}}}, name=f"{mode}.json5")

    def test_nothing_reaches_a_foreign_server_on_the_configured_port(self) -> None:
        self.state.mkdir()
        (self.state / "gateway-token").write_text(TOKEN + "\n")
        for mode in ("token", "password"):
            with self.subTest(mode):
                done = self.cli("agent", "--config", self.secrets_config(mode), "--state-dir", str(self.state),
                                "-m", "hello", env=self.env(EQUABOT_GATEWAY_TOKEN=TOKEN))
                self.assertOneLineError(done, 1, f"no gateway is running for state dir {self.state}; "
                                                 f"start one, pass --url, or use --local")
        self.assertEqual((self.foreign.connections, bytes(self.foreign.received)), (0, b""))

    def test_a_stale_record_of_a_stopped_gateway_is_not_followed(self) -> None:
        # A gateway that ran on the foreign server's port and is gone: its record stays, its lock does not.
        self.state.mkdir()
        (self.state / "gateway.lock").write_text(json.dumps(
            {"pid": 1, "url": f"http://127.0.0.1:{self.foreign.port}", "config": None, "authMode": "token"}))
        done = self.cli("agent", "--state-dir", str(self.state), "-m", "hello",
                        env=self.env(EQUABOT_GATEWAY_TOKEN=TOKEN))
        self.assertOneLineError(done, 1, "no gateway is running for state dir")
        self.assertEqual(self.foreign.connections, 0)

    def test_an_explicit_url_gets_only_the_secret_of_the_configured_mode(self) -> None:
        for mode, sent, kept in (("token", TOKEN, self.PASSWORD), ("password", self.PASSWORD, TOKEN)):
            with self.subTest(mode):
                before = len(self.foreign.frames)
                self.cli("agent", "--config", self.secrets_config(mode), "--state-dir", str(self.state),
                         "--url", f"http://127.0.0.1:{self.foreign.port}", "-m", "hello")
                [connect] = self.foreign.frames[before:]
                self.assertEqual(connect["method"], "connect")
                self.assertEqual(connect["params"]["auth"], {mode: sent})
                self.assertNotIn(kept.encode(), bytes(self.foreign.received))


class ConnectDeadlineTest(unittest.IsolatedAsyncioTestCase):
    """A server that opens the WebSocket but never answers ``connect`` (an echo, another
    server's path) is named in one line after the deadline; the CLI does not wait forever."""

    async def test_a_server_that_never_answers_connect_is_left_after_the_deadline(self) -> None:
        import asyncio
        from unittest import mock
        from equabot_gw import agent_cli
        from equabot_gw.errors import GatewayError
        from tests.support import running_gateway
        async with running_gateway(base_config(ws={"echoPath": "/echo"})) as gateway:
            url = f"http://127.0.0.1:{gateway.server.port}/echo"     # echoes connect, answers nothing
            with mock.patch.object(agent_cli, "CONNECT_TIMEOUT", 0.3, create=True):
                started = time.monotonic()
                with self.assertRaises(GatewayError) as caught:
                    await asyncio.wait_for(agent_cli.open_client(agent_cli.Target(url, "token", TOKEN)), 5)
            self.assertLess(time.monotonic() - started, 3)
            self.assertEqual(str(caught.exception), f"the server at {url} did not answer connect "
                                                     f"within 0.3 s; is it an equabot gateway?")
            client = await agent_cli.open_client(agent_cli.Target(gateway.url, "token", TOKEN))
            self.assertEqual(client.hello["type"], "hello-ok")      # a gateway answers in time
            await client.close()


class LogLinesTest(unittest.IsolatedAsyncioTestCase):
    async def test_what_a_client_sends_cannot_forge_a_log_line_or_reach_the_terminal(self) -> None:
        # The gateway logs an unknown method's name and a refused property: newlines and
        # escape sequences in them are escaped, one record stays one line on stderr.
        from equabot_gw.errors import GatewayError
        from equabot_gw.gateway.client import ControlClient
        forged = "2026-01-01 00:00:00,000 ERROR equabot_gw.auth: FORGED"
        with GatewayProcess() as gw:
            client = await ControlClient.open(gw.url, TOKEN)
            for method, params in ((f"nope\n{forged}\x1b[2J", {}), ("sessions.list", {f"p\r\n{forged}": 1})):
                with self.assertRaises(GatewayError):
                    await client.request(method, params)
            await client.close()
            self.assertEqual(gw.stop(), 0)
            log = gw.stderr_path.read_text()
        self.assertFalse([line for line in log.splitlines() if line.startswith(forged)], log)
        self.assertNotIn("\x1b", log)
        self.assertNotIn("\r", log)
        self.assertIn(f"unknown method: nope\\n{forged}\\x1b[2J", log)
        self.assertIn(f"unexpected property 'p\\r\\n{forged}'", log)


class AuthModeHintTest(CLITestCase):
    def test_a_gateway_asking_for_a_password_is_named_when_a_token_was_sent(self) -> None:
        with GatewayProcess(base_config(auth={"mode": "password", "password": "pw-7788"})) as gw:
            done = self.cli("agent", "--url", gw.url, "--token", "pw-7788", "--state-dir", str(self.state), "-m", "x")
            line = self.assertOneLineError(done, 1, "UNAUTHORIZED")
            self.assertIn(f'the gateway at {gw.url} asks for its password: use a config whose '
                          f'gateway.auth.mode is "password"', line)
            self.assertNotIn("gateway.remote", line)     # the hint meant for the original's command line
            config = self.config_file({"gateway": {"auth": {"mode": "password"}}})
            self.assertReply(self.cli("agent", "--config", config, "--url", gw.url, "--state-dir", str(self.state),
                                      "-m", "x", env=self.env(EQUABOT_GATEWAY_PASSWORD="pw-7788")),
                             "Echo (turn 1): x")


class LockedOutTest(CLITestCase):
    def test_the_cli_says_how_long_to_wait(self) -> None:
        data = base_config(auth={"token": TOKEN, "rateLimit": {
            "maxAttempts": 2, "lockoutSeconds": 90, "exemptLoopback": False}})
        with GatewayProcess(data) as gw:
            def agent(token: str) -> subprocess.CompletedProcess[str]:
                return self.cli("agent", "--url", gw.url, "--token", token, "--state-dir", str(self.state),
                                "-m", "x")
            for _ in range(2):
                self.assertOneLineError(agent("wrong"), 1, "UNAUTHORIZED")
            line = self.assertOneLineError(agent(TOKEN), 1, "RATE_LIMITED")
            wait = re.search(r"\(try again in (\d+) s\)$", line)
            self.assertIsNotNone(wait, line)
            self.assertTrue(80 <= int(wait.group(1)) <= 90, line)


def slow_gateway(grace: float) -> dict[str, Any]:
    """A gateway whose default agent takes 0.2 s per word, with ``grace`` seconds to shut down."""
    data = base_config(shutdownGraceSeconds=grace)
    data["agents"] = {"defaults": {"model": "slow/echo"}}
    data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": 200}}}
    return data


class Stream:
    """A streamed completion in progress: its socket and every byte received so far."""

    def __init__(self, sock: socket.socket, received: bytes) -> None:
        self.sock = sock
        self.received = received

    def read_to_end(self) -> bytes:
        while chunk := self.sock.recv(65536):
            self.received += chunk
        self.sock.close()
        return self.received


def open_stream(gw: GatewayProcess, words: int = 100, user: str | None = None) -> Stream:
    """Start a streamed completion; returns once its first content chunk arrived."""
    body: dict[str, Any] = {"model": "equabot", "stream": True,
                            "messages": [{"role": "user", "content": " ".join(["w"] * words)}]}
    if user:
        body["user"] = user
    raw = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=TIMEOUT)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(raw)).encode()
                 + b"\r\n\r\n" + raw)
    received = b""
    while b'"content"' not in received:
        received += sock.recv(65536)
    return Stream(sock, received)


def sse_events(raw: bytes) -> list[str]:
    """The ``data:`` payloads of a chunked SSE response body, in order."""
    body = raw.partition(b"\r\n\r\n")[2]
    text, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        text += rest[:size]
        rest = rest[size + 2:]
    return [line[6:] for line in text.decode().split("\n") if line.startswith("data: ")]


class ShutdownTest(CLITestCase):
    """SIGINT / SIGTERM with requests in flight, as a user's Ctrl-C delivers them."""

    def wait_exit(self, gw: GatewayProcess, within: float) -> int:
        assert gw.proc is not None
        return gw.proc.wait(within)

    def assertEndsWithErrorAndDone(self, raw: bytes) -> None:
        events = sse_events(raw)
        self.assertEqual(events[-1], "[DONE]", raw[-300:])
        error = json.loads(events[-2])["error"]
        self.assertIn("shutdown", error["message"] + str(error.get("code")), error)
        self.assertTrue(raw.endswith(b"0\r\n\r\n"), raw[-100:])       # the chunked body is complete

    def test_signal_waits_the_grace_period_then_ends_each_stream_with_its_error_and_done(self) -> None:
        # SIGHUP too: a closed terminal or a dropped ssh session is a stop like any other.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with self.subTest(sig.name), GatewayProcess(slow_gateway(1.0)) as gw:
                stream = open_stream(gw, user="shutdown-user")
                started = time.monotonic()
                gw.proc.send_signal(sig)
                raw = stream.read_to_end()
                self.assertGreater(time.monotonic() - started, 0.8)      # the grace period was given
                self.assertEqual(self.wait_exit(gw, TIMEOUT), 0)
                self.assertEndsWithErrorAndDone(raw)
                self.assertIn("shutting down: waiting up to 1 s for 1 request (Ctrl-C again to stop now)",
                              gw.stderr().splitlines())
                self.assertNotIn("Traceback", gw.stderr())
                shown = self.cli("sessions", "show", "openai-user:shutdown-user", "--state-dir",
                                 str(gw.state_dir))
                self.assertIn("assistant (aborted): Echo", shown.stdout, shown.stderr)

    def test_a_second_signal_stops_at_once(self) -> None:
        with GatewayProcess(slow_gateway(60.0)) as gw:
            stream = open_stream(gw)
            gw.proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            started = time.monotonic()
            gw.proc.send_signal(signal.SIGINT)
            raw = stream.read_to_end()
            self.assertEqual(self.wait_exit(gw, TIMEOUT), 0)
            self.assertLess(time.monotonic() - started, 5.0)      # not the 60 s grace (a sanity bound)
            self.assertEndsWithErrorAndDone(raw)
            self.assertIn("shutting down now: aborting what is in flight", gw.stderr())

    def test_an_idle_gateway_stops_at_once(self) -> None:
        with GatewayProcess(slow_gateway(60.0)) as gw:
            started = time.monotonic()
            gw.proc.send_signal(signal.SIGINT)
            self.assertEqual(self.wait_exit(gw, TIMEOUT), 0)
            self.assertLess(time.monotonic() - started, 5.0)
            self.assertIn("shutting down", gw.stderr().splitlines())

    def test_websocket_clients_get_the_shutdown_event_before_the_close(self) -> None:
        import asyncio
        from equabot_gw.gateway.client import ControlClient
        from equabot_gw.errors import ConnectionClosed

        async def scenario(gw: GatewayProcess) -> tuple[list[str], int | None]:
            client = await ControlClient.open(gw.url, TOKEN)
            gw.proc.send_signal(signal.SIGTERM)
            seen = []
            try:
                while True:
                    frame = await asyncio.wait_for(client.next_frame(), TIMEOUT)
                    seen.append(frame.get("event"))
            except ConnectionClosed:
                pass
            finally:
                await client.close()        # the gateway closed it: this releases our socket
            return seen, client.ws.close_code

        with GatewayProcess(slow_gateway(1.0)) as gw:
            seen, code = asyncio.run(scenario(gw))
            self.assertIn("shutdown", seen)
            self.assertEqual(code, 1001)
            self.assertEqual(self.wait_exit(gw, TIMEOUT), 0)


class AgentInterruptTest(CLITestCase):
    """Ctrl-C on ``agent``: the gateway aborts the run and records it; the CLI exits 130."""

    def interrupt(self, gw: GatewayProcess, *args: str, sig: int = signal.SIGINT) -> tuple[int, str]:
        # As from a terminal: a suite started in the background or under nohup would
        # pass on an ignored SIGINT or SIGHUP, and the child never see the signal.
        proc = subprocess.Popen([sys.executable, "-m", "equabot_gw", "agent", "--state-dir", str(gw.state_dir),
                                 "--token", TOKEN, "-m", " ".join(["w"] * 100), *args],
                                cwd=ROOT, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=signals_as_from_a_terminal)
        try:
            first = proc.stdout.read1(65536)
            self.assertTrue(first.startswith(b"Echo"), first)
            proc.send_signal(sig)
            code = proc.wait(TIMEOUT)
            return code, proc.stderr.read().decode()
        finally:
            proc.stdout.close()
            proc.stderr.close()

    def test_the_run_is_aborted_and_recorded(self) -> None:
        with GatewayProcess(slow_gateway(10.0)) as gw:
            code, stderr = self.interrupt(gw, "--session-key", "interrupted")
            self.assertEqual(code, 130, stderr)
            self.assertRegex(stderr, r"^equabot: interrupted; run [0-9a-f-]{36} aborted\n$")
            deadline = time.monotonic() + TIMEOUT
            while True:
                shown = self.cli("sessions", "show", "interrupted", "--state-dir", str(gw.state_dir))
                if "(aborted)" in shown.stdout or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertIn("assistant (aborted): Echo", shown.stdout, shown.stderr)
            status = self.cli("agent", "--state-dir", str(gw.state_dir), "--token", TOKEN, "-m", "next",
                              "--session-key", "interrupted")
            self.assertEqual(status.returncode, 0, status.stderr)   # the session is free again at once

    def test_sigterm_and_sighup_abort_the_run_as_ctrl_c_does(self) -> None:
        # ``timeout 2 … agent``, a service manager, a closed terminal: the run must not go on.
        for sig, code in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
            with self.subTest(sig.name), GatewayProcess(slow_gateway(10.0)) as gw:
                exit_code, stderr = self.interrupt(gw, "--session-key", "stopped", sig=sig)
                self.assertEqual(exit_code, code, stderr)
                self.assertRegex(stderr, r"^equabot: interrupted; run [0-9a-f-]{36} aborted\n$")
                status = self.cli("agent", "--state-dir", str(gw.state_dir), "--token", TOKEN, "-m", "next",
                                  "--session-key", "stopped")
                self.assertEqual(status.returncode, 0, status.stderr)   # the run no longer holds the session
                shown = self.cli("sessions", "show", "stopped", "--state-dir", str(gw.state_dir))
                self.assertIn("assistant (aborted): Echo", shown.stdout, shown.stderr)

    def test_a_run_on_the_main_session_is_aborted_too(self) -> None:
        # No --session-key: the CLI learns the session (the agent's main one) from the run's events.
        with GatewayProcess(slow_gateway(10.0)) as gw:
            code, stderr = self.interrupt(gw)
            self.assertEqual(code, 130, stderr)
            self.assertIn("aborted", stderr)
            self.assertNotIn("Traceback", stderr)


class SessionsThroughTheGatewayTest(CLITestCase):
    """``sessions`` on the state dir of a running gateway asks that gateway (it owns the files)."""

    def test_list_show_reset(self) -> None:
        with GatewayProcess(gateway_config()) as gw:
            state = str(gw.state_dir)
            env = self.env(EQUABOT_GATEWAY_TOKEN=TOKEN)
            for message in ("one", "two"):
                done = self.cli("agent", "--state-dir", state, "-m", message, "--session-key", "via-gw", env=env)
                self.assertEqual(done.returncode, 0, done.stderr)
            listed = self.cli("sessions", "list", "--state-dir", state, env=env)
            self.assertEqual([line.split("\t")[:2] for line in listed.stdout.splitlines()],
                             [["agent:main:via-gw", "turns=2"]])
            shown = self.cli("sessions", "show", "via-gw", "--state-dir", state, env=env)
            self.assertEqual(shown.stdout.splitlines()[-2:], ["user: two", "assistant: Echo (turn 2): two"])
            done = self.cli("sessions", "reset", "via-gw", "--state-dir", state, env=env)
            self.assertEqual((done.returncode, done.stdout), (0, "reset agent:main:via-gw\n"), done.stderr)
            listed = self.cli("sessions", "list", "--state-dir", state, env=env)
            self.assertEqual([line.split("\t")[:2] for line in listed.stdout.splitlines()],
                             [["agent:main:via-gw", "turns=0"]])
            # The gateway itself started the session over: its next turn is 1.
            again = self.cli("agent", "--state-dir", state, "-m", "anew", "--session-key", "via-gw", env=env)
            self.assertReply(again, "Echo (turn 1): anew")
            self.assertOneLineError(self.cli("sessions", "show", "nope", "--state-dir", state, env=env),
                                    1, "no session 'agent:main:nope', nor for user 'nope' (agent:main:openai-user:nope)")
            # With a wrong secret the gateway refuses, in one line.
            self.assertOneLineError(self.cli("sessions", "list", "--state-dir", state, "--token", "nope"),
                                    1, "UNAUTHORIZED")


class SessionsOfAGatewayTest(CLITestCase):
    """Sessions a gateway made: through it while it runs, from the files once it stopped."""

    USER = "Alice Smith (ops)"          # not a valid key: the endpoint hashes it

    def test_user_strings_every_agent_and_the_recorded_config(self) -> None:
        import http.client
        data = gateway_config()
        data["agents"]["list"].append({"id": "beta"})
        with GatewayProcess(data) as gw:
            state = str(gw.state_dir)
            for agent in ("main", "beta"):
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=TIMEOUT)
                self.addCleanup(conn.close)
                conn.request("POST", "/v1/chat/completions", body=json.dumps({
                    "model": f"equabot:{agent}", "user": self.USER,
                    "messages": [{"role": "user", "content": f"hi {agent}"}]}),
                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
                self.assertEqual(conn.getresponse().status, 200)
            self.cli("agent", "--state-dir", state, "--token", TOKEN, "-m", "x", "--session-key", "plain")

            def sessions(*args: str) -> subprocess.CompletedProcess[str]:
                return self.cli("sessions", *args, "--state-dir", state)      # no --config, no --token

            def check(where: str) -> None:
                with self.subTest(where):
                    shown = sessions("show", self.USER)
                    self.assertEqual(shown.stdout.splitlines(), ["user: hi main", "assistant: Echo (turn 1): hi main"],
                                     shown.stderr)
                    beta = sessions("show", self.USER, "--agent", "beta")
                    self.assertEqual(beta.stdout.splitlines()[0], "user: hi beta", beta.stderr)
                    keys = [line.split("\t")[0] for line in sessions("list").stdout.splitlines()]
                    self.assertEqual(len(keys), 3, keys)
                    self.assertIn("agent:main:plain", keys)
                    self.assertTrue(all(k.startswith(("agent:main:", "agent:beta:")) for k in keys), keys)
                    only_beta = sessions("list", "--agent", "beta").stdout.splitlines()
                    self.assertEqual(len(only_beta), 1, only_beta)
                    self.assertTrue(only_beta[0].startswith("agent:beta:openai-user:u-"), only_beta)
                    self.assertOneLineError(sessions("show", "nobody here"), 1,
                                            "no session for user 'nobody here' (agent:main:openai-user:u-")

            check("through the running gateway")
            gw.stop()
            check("from the files, with the config the gateway ran with")
            done = sessions("reset", self.USER, "--agent", "beta")
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertTrue(done.stdout.startswith("reset agent:beta:openai-user:u-"), done.stdout)


    def test_reading_a_state_dir_that_holds_nothing_creates_nothing(self) -> None:
        absent = self.state / "never-served"     # a mistyped --state-dir, say
        for args, code, out, err in ((("list",), 0, "no sessions", ""),
                                     (("list", "--json"), 0, "[]", ""),
                                     (("show", "alice"), 1, "", "no session 'agent:main:alice'"),
                                     (("reset", "alice"), 1, "", "no session 'agent:main:alice'"),
                                     (("show", "agent:main:bad key"), 1, "", "session keys are")):
            with self.subTest(args=args):
                done = self.cli("sessions", *args, "--state-dir", str(absent))
                self.assertEqual(done.returncode, code, done.stderr)
                self.assertEqual(done.stdout.strip(), out)
                self.assertIn(err, done.stderr)
                self.assertFalse(absent.exists(), "a read created the state dir")


class LocalAgentTest(CLITestCase):
    def local(self, *args: str, config: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = ("--config", config) if config else ()
        return self.cli("agent", "--local", "--state-dir", str(self.state), *extra, *args)

    def test_runs_in_process_with_the_embedded_defaults(self) -> None:
        self.assertReply(self.local("--message", "hi"), "Echo (turn 1): hi")
        # The agent's main session, as over the gateway.
        self.assertTrue((self.state / "agents" / "main" / "sessions" / "agent%3Amain%3Amain.jsonl").exists())
        self.assertReply(self.local("--message", "again"), "Echo (turn 2): again")
        self.assertEqual(self.state.stat().st_mode & 0o777, 0o700)

    def test_needs_no_gateway(self) -> None:
        config = self.config_file({"gateway": {"port": free_port()}})
        self.assertReply(self.local("-m", "offline", config=config), "Echo (turn 1): offline")

    def test_json(self) -> None:
        done = self.local("-m", "x y", "--json", "--session-key", "local-json")
        result = json.loads(done.stdout)
        self.assertEqual(done.stdout, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        self.assertEqual((result["status"], result["result"]["payloads"][0]["text"]),
                         ("ok", "Echo (turn 1): x y"))
        self.assertEqual(result["result"]["meta"]["agentMeta"]["usage"]["total"], 7)

    def test_session_key_continues(self) -> None:
        replies = [self.local("-m", "n", "--session-key", "local-turns").stdout for _ in range(3)]
        self.assertEqual(replies, [f"Echo (turn {n}): n\n" for n in (1, 2, 3)])

    def test_streams_as_it_goes(self) -> None:
        data = {"agents": {"defaults": {"model": "slow/echo"}},
                "models": {"providers": {"slow": {"api": "echo", "delayMs": SLOW_DELAY_MS}}}}
        first, first_at, rest, ended_at = self.stream_timing(
            "agent", "--local", "--state-dir", str(self.state), "--config", self.config_file(data),
            "-m", "a b c d")
        self.assertEqual(first + rest, b"Echo (turn 1): a b c d\n")
        self.assertTrue(first.startswith(b"Echo"), first)
        self.assertGreater(ended_at - first_at, 3 * SLOW_DELAY_MS / 1000)

    def test_unknown_agent(self) -> None:
        done = self.local("-m", "x", "--agent", "ghost")
        self.assertOneLineError(done, 1, "'ghost'", "does not exist")

    def test_bad_session_key(self) -> None:
        self.assertOneLineError(self.local("-m", "x", "--session-key", "bad key"), 2, "session key")

    def test_timeout_is_the_runs_time_limit(self) -> None:
        data = {"agents": {"defaults": {"model": "slow/echo"}},
                "models": {"providers": {"slow": {"api": "echo", "delayMs": SLOW_DELAY_MS}}}}
        done = self.local("-m", " ".join(["w"] * 40), "--timeout", "1", config=self.config_file(data))
        self.assertOneLineError(done, 1, "run failed", "no reply within 1 s")

    def test_failed_run(self) -> None:
        data = {"agents": {"defaults": {"model": "failing/x"}}, "models": {"providers": {"failing": {
            "api": "command", "command": [sys.executable, "-c", "import sys; sys.stderr.write('oops'); sys.exit(4)"]}}}}
        done = self.local("-m", "x", config=self.config_file(data))
        self.assertOneLineError(done, 1, "run failed", "exit status 4: oops")


class ConfigCheckTest(CLITestCase):
    def test_effective_config_with_secrets_masked(self) -> None:
        data = {"gateway": {"port": 1234, "auth": {"token": "${MY_GW_TOKEN}"}},
                "models": {"providers": {"up": {"api": "openai-completions", "baseUrl": "http://127.0.0.1:9/v1",
                                                "apiKey": "sk-very-secret", "headers": {"X-Key": "hdr-secret"}}}}}
        path = self.config_file(data)
        done = self.cli("config", "check", "--config", path, env=self.env(MY_GW_TOKEN="tok-from-env"))
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        first, _, rest = done.stdout.partition("\n")
        self.assertEqual(first, f"# config OK: {path}")
        shown = json.loads(rest)
        self.assertEqual(shown["gateway"]["port"], 1234)
        self.assertEqual(shown["gateway"]["auth"]["token"], "***")
        self.assertEqual(shown["models"]["providers"]["up"]["apiKey"], "***")
        self.assertEqual(shown["models"]["providers"]["up"]["headers"], {"X-Key": "***"})
        self.assertEqual(shown["agents"]["defaults"]["maxConcurrent"], 16)       # defaults filled in
        for secret in ("tok-from-env", "sk-very-secret", "hdr-secret"):
            self.assertNotIn(secret, done.stdout)

    def test_example_config(self) -> None:
        done = self.cli("config", "check", "--config", str(ROOT / "config.example.json5"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("config.example.json5", done.stdout.splitlines()[0])
        self.assertEqual(json.loads(done.stdout.partition("\n")[2])["models"]["providers"]["upstream"]["apiKey"],
                         "***")

    def test_no_file_means_embedded_defaults(self) -> None:
        done = self.cli("config", "check")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.splitlines()[0], "# config OK: built-in defaults (no config file)")
        self.assertFalse(json.loads(done.stdout.partition("\n")[2])["gateway"]["http"]["endpoints"]
                         ["chatCompletions"]["enabled"])

    BAD_CONFIGS = (
        ("unknown key", "{gateway: {prot: 1}}", "gateway.prot: unknown key"),
        ("wrong type", '{gateway: {port: "abc"}}', 'gateway.port: expected integer 0-65535, got "abc"'),
        ("JSON5 syntax", "{\n  gateway: {\n    port: 1,,\n  },\n}\n", ":3:13: expected a member name or '}' after ','"),
        ("JSON5 missing comma", "{\n  gateway: {\n    port: 1\n    bind: 'lan'\n  },\n}\n",
         ":4:5: expected ',' or '}' after the value of \"port\""),
        ("unterminated", '{gateway: {bind: "lan}}', "at 1:"),
        ("missing variable", '{gateway: {auth: {token: "${EQUABOT_TEST_UNSET_VAR}"}}}',
         "gateway.auth.token: environment variable EQUABOT_TEST_UNSET_VAR is not set"),
        ("bad agent id", '{agents: {list: [{id: "Bad Id"}]}}', "agents.list[0].id"),
    )

    def test_bad_config_is_one_line_and_exit_2(self) -> None:
        every_command = (("config", "check"), ("gateway", "--port", "0"), ("agent", "--local", "-m", "x"))
        for index, (name, text, message) in enumerate(self.BAD_CONFIGS):
            path = self.dir / f"{name.replace(' ', '-')}.json5"
            path.write_text(text)
            # config check reads each; the other doors each read two (start-up shares the loader).
            commands = every_command if index % 3 == 0 else every_command[:1]
            for command in commands:
                with self.subTest(name, command=command[0]):
                    done = self.cli(*command, "--config", str(path), "--state-dir", str(self.state))
                    line = self.assertOneLineError(done, 2, "config error", message)
                    self.assertEqual(done.stdout, "")
                    self.assertNotIn("Traceback", line)

    def test_missing_file(self) -> None:
        done = self.cli("config", "check", "--config", str(self.dir / "nope.json5"))
        self.assertOneLineError(done, 2, "does not exist")


class BadFlagsTest(CLITestCase):
    """No flag value reaches the user as a traceback: one line on stderr, exit 2, nothing on stdout."""

    def setUp(self) -> None:
        super().setUp()
        self.a_file = self.dir / "a-file"
        self.a_file.write_text("not a directory")
        self.binary = self.dir / "binary.json5"
        self.binary.write_bytes(b"\xff\xfe{\x00")
        self.deep = self.dir / "deep.json5"
        self.deep.write_text("{a:" * 900 + "1" + "}" * 900)     # within JSON5's limit, past the config's
        self.twice = self.dir / "twice.json5"
        self.twice.write_text('{ gateway: {\n  port: 1,\n  "port": 2 } }')
        self.busy = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(self.busy.close)
        self.configs = {name: self.config_file(data, name=f"{name}.json5") for name, data in (
            ("lan-none", {"gateway": {"bind": "lan", "auth": {"mode": "none"}}}),
            ("bind-unknown", {"gateway": {"bind": "nowhere.invalid", "auth": {"token": TOKEN}}}),
            ("bind-foreign", {"gateway": {"bind": "192.0.2.254", "auth": {"token": TOKEN}}}),
            ("bind-bad-name", {"gateway": {"bind": "a..b", "auth": {"token": TOKEN}}}),
            ("bad-base-url", {"models": {"providers": {"up": {
                "api": "openai-completions", "baseUrl": "localhost:8000/v1"}}}}),
            ("bad-header", {"models": {"providers": {"up": {
                "api": "openai-completions", "baseUrl": "http://127.0.0.1:9/v1",
                "headers": {"X-Bad\nName": "v"}}}}}),
        )}

    # Refusals that are not about the config file, and must not say so.
    NOT_CONFIG = frozenset({"busy port", "unknown host", "address of another machine", "unknown host: check",
                            "address of another machine: check", "a name no resolver takes",
                            "a name no resolver takes: check", "state dir is a file",
                            "state dir cannot be made", "agent state dir", "sessions state dir"})

    def table(self) -> tuple[tuple[str, tuple[str, ...], str], ...]:
        """(name, argv, a part of the one line)."""
        busy = str(self.busy.getsockname()[1])
        missing = str(self.dir / "missing.json5")
        return (
            ("port too big", ("--port", "99999"), "argument --port: expected a port 0-65535"),
            ("negative port", ("--port", "-5"), "expected a port 0-65535 (0 picks a free one), got '-5'"),
            ("port not a number", ("gateway", "--port", "abc"), "got 'abc'"),
            ("empty port", ("--port", ""), "expected a port"),
            ("busy port", ("--port", busy), f"port {busy} on 127.0.0.1 is already in use"),
            ("empty bind", ("--bind", ""), "argument --bind"),
            ("unknown host", ("--port", "0", "--bind", "nowhere.invalid"),
             "cannot listen on 'nowhere.invalid': no such host"),
            ("address of another machine", ("--port", "0", "--bind", "192.0.2.254"),
             "cannot listen on 192.0.2.254: it is not an address of this machine"),
            # config check refuses what start-up would, on this machine.
            ("unknown host: check", ("config", "check", "--config", self.configs["bind-unknown"]),
             "cannot listen on 'nowhere.invalid': no such host"),
            ("address of another machine: check", ("config", "check", "--config", self.configs["bind-foreign"]),
             "cannot listen on 192.0.2.254: it is not an address of this machine"),
            # An empty DNS label: not even asked of the resolver (a UnicodeError, not an OSError).
            ("a name no resolver takes", ("--port", "0", "--bind", "a..b"),
             "cannot listen on 'a..b': no such host or address here (not a valid host name)"),
            ("a name no resolver takes: check", ("config", "check", "--config", self.configs["bind-bad-name"]),
             "cannot listen on 'a..b': no such host or address here (not a valid host name)"),
            ("log level", ("--log-level", "loud"), "invalid choice: 'loud'"),
            ("subcommand typo", ("gatway",),
             "invalid choice: 'gatway' (choose from 'gateway', 'agent', 'config', 'sessions', 'conformance')"),
            ("unknown flag", ("--prot", "1"),
             "unrecognized arguments: --prot 1 (see 'python -m equabot_gw gateway --help')"),
            ("missing config", ("--config", missing), "does not exist"),
            ("config is a directory", ("--config", str(self.dir)), "cannot read config file"),
            ("config not UTF-8", ("config", "check", "--config", str(self.binary)), "cannot read config file"),
            ("config nested deep", ("config", "check", "--config", str(self.deep)),
             "deep.json5:1:193: arrays and objects nested deeper than the limit of 64"),
            ("config nested deep: start", ("--config", str(self.deep)), "nested deeper than the limit"),
            ("config names a key twice", ("config", "check", "--config", str(self.twice)),
             f'{self.twice}:3:3: "port" is given twice in this object; say it once'),
            ("state dir is a file", ("--state-dir", str(self.a_file)), "is not a directory"),
            ("state dir cannot be made", ("--port", "0", "--state-dir", str(self.a_file / "x")),
             "cannot create state dir"),
            ("lan with mode none: start", ("--config", self.configs["lan-none"]), '"none" is refused'),
            ("lan with mode none: check", ("config", "check", "--config", self.configs["lan-none"]),
             '"none" is refused when binding beyond loopback'),
            ("base URL without scheme: start", ("--config", self.configs["bad-base-url"]),
             'models.providers.up.baseUrl: expected an http:// or https:// URL, got "localhost:8000/v1"'),
            ("base URL without scheme: check", ("config", "check", "--config", self.configs["bad-base-url"]),
             "models.providers.up.baseUrl: expected an http:// or https:// URL"),
            ("bad header name: check", ("config", "check", "--config", self.configs["bad-header"]),
             "is not a valid header field name"),
            ("config check flag", ("config", "check", "--json"),
             "unrecognized arguments: --json (see 'python -m equabot_gw config check --help')"),
            ("sessions show flag", ("sessions", "show", "k", "--bogus"),
             "unrecognized arguments: --bogus (see 'python -m equabot_gw sessions show --help')"),
            ("config without a subcommand", ("config",), "required: {check}"),
            ("agent without a message", ("agent",), "required: --message/-m"),
            ("agent URL scheme", ("agent", "-m", "x", "--url", "ftp://x"), "argument --url"),
            ("agent URL syntax", ("agent", "-m", "x", "--url", "http://["), "argument --url"),
            ("agent URL port", ("agent", "-m", "x", "--url", "http://127.0.0.1:99999"), "argument --url"),
            ("agent session key", ("agent", "-m", "x", "--session-key", "bad key"), "argument --session-key"),
            ("agent id", ("agent", "-m", "x", "--agent", "Bad Id"), "argument --agent: expected an agent id"),
            ("agent timeout negative", ("agent", "-m", "x", "--timeout", "-1"),
             "argument --timeout: expected whole seconds, 0 or more (0: the agent's timeoutSeconds), got '-1'"),
            ("agent timeout fraction", ("agent", "-m", "x", "--timeout", "1.5"), "got '1.5'"),
            ("agent timeout huge", ("agent", "-m", "x", "--timeout", "9" * 400), "argument --timeout"),
            ("agent missing config", ("agent", "--local", "-m", "x", "--config", missing), "does not exist"),
            ("agent state dir", ("agent", "--local", "-m", "x", "--state-dir", str(self.a_file)),
             "is not a directory"),
            # An empty path (an unset shell variable) is refused, not taken as "none given".
            ("empty config", ("config", "check", "--config", ""), "argument --config: expected a path, got ''"),
            ("empty config: start", ("--port", "0", "--config", ""), "argument --config: expected a path"),
            ("empty state dir", ("sessions", "list", "--state-dir", ""), "argument --state-dir: expected a path"),
            ("empty state dir: start", ("--port", "0", "--state-dir", ""), "argument --state-dir"),
            ("sessions without a subcommand", ("sessions",), "required: {list,show,reset}"),
            ("sessions typo", ("sessions", "lsit"), "invalid choice: 'lsit'"),
            ("sessions show without key", ("sessions", "show"), "required: key"),
            ("sessions agent id", ("sessions", "list", "--agent", "Bad Id"), "argument --agent"),
            ("sessions URL", ("sessions", "list", "--url", "nope"), "argument --url"),
            ("sessions state dir", ("sessions", "list", "--state-dir", str(self.a_file)), "is not a directory"),
            ("conformance without URL", ("conformance",), "required: --base-url"),
            ("conformance URL", ("conformance", "--base-url", "x"), "--base-url must be an http://"),
            ("conformance timeout", ("conformance", "--base-url", "http://127.0.0.1:9", "--timeout", "-1"),
             "--timeout must be a positive number"),
        )

    def test_every_bad_flag_is_one_line_and_exit_2(self) -> None:
        env = self.env(EQUABOT_GATEWAY_TOKEN=TOKEN)         # binding beyond loopback needs one
        for name, argv, part in self.table():
            with self.subTest(name):
                args = list(argv)
                if "--state-dir" not in args and args not in (["config"], ["sessions"]) \
                        and args[:1] != ["conformance"]:
                    args += ["--state-dir", str(self.dir / "state" / name.replace(" ", "-"))]
                done = self.cli(*args, env=env)
                line = self.assertOneLineError(done, 2, part)
                self.assertNotIn("Traceback", done.stderr)
                self.assertEqual(done.stdout, "")
                if name in self.NOT_CONFIG:
                    self.assertNotIn("config error", line)

    def test_state_dir_in_use_is_not_a_config_error(self) -> None:
        with GatewayProcess() as gw:
            done = self.cli("--port", "0", "--state-dir", str(gw.state_dir))
            line = self.assertOneLineError(done, 2, f"state dir {gw.state_dir} is in use by a running gateway")
            self.assertNotIn("config error", line)
            self.assertTrue(line.endswith("; stop it or pass another --state-dir"), line)
            # agent --local would run beside it: the way to ask the running gateway is named.
            done = self.cli("agent", "--local", "-m", "x", "--state-dir", str(gw.state_dir))
            line = self.assertOneLineError(done, 2, f"state dir {gw.state_dir} is in use by a running gateway")
            self.assertTrue(line.endswith("; drop --local to ask it, stop it or pass another --state-dir"), line)


class BindCheckTest(unittest.IsolatedAsyncioTestCase):
    """config check's verdict on a bind host is the one this Python's asyncio gives at start."""

    async def test_the_check_agrees_with_the_server_on_every_mix_of_addresses(self) -> None:
        import asyncio
        from unittest import mock
        from equabot_gw import cli
        from equabot_gw.gateway.app import BindError
        real = socket.getaddrinfo
        mixes = {"here": ["127.0.0.1"], "elsewhere": ["192.0.2.254"], "both": ["127.0.0.1", "192.0.2.254"],
                 "both, the foreign first": ["192.0.2.254", "127.0.0.1"]}
        for name, addresses in mixes.items():
            def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
                return [entry for address in addresses for entry in real(address, port, *args, **kwargs)]
            with self.subTest(name), mock.patch("socket.getaddrinfo", resolve):
                try:
                    cli._check_bindable("dual.test", 0)
                    checked = True
                except BindError:
                    checked = False
                try:
                    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "dual.test", 0)
                    served = bool(server.sockets)
                    server.close()
                except OSError:
                    served = False
                self.assertEqual(checked, served)


class StartupLineTest(CLITestCase):
    def test_lan_prints_the_listening_address_and_where_to_reach_it(self) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "equabot_gw", "--port", "0", "--bind", "lan",
                                 "--state-dir", str(self.state)], cwd=ROOT,
                                env=self.env(EQUABOT_GATEWAY_TOKEN=TOKEN), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            line = proc.stdout.readline()
            port = re.search(r"listening on http://0\.0\.0\.0:(\d+) ", line)
            self.assertIsNotNone(port, line)
            port = port.group(1)
            self.assertIn(f"(all IPv4 interfaces: http://127.0.0.1:{port} from this machine, ", line)
            self.assertRegex(line, r"(http://[0-9.]+:\d+|this machine's network address) from other machines; "
                                   r"WebSocket on the same port\)$")
            # What the lock file records for local clients is the loopback URL.
            holder = json.loads((self.state / "gateway.lock").read_text())
            self.assertEqual(holder["url"], f"http://127.0.0.1:{port}")
        finally:
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(TIMEOUT), 0)
            proc.stdout.close()


class TokenFileTest(CLITestCase):
    """A gateway-token file that cannot be a token stops the start in one line, promptly."""

    def start_with_token_file(self, make: Any) -> subprocess.CompletedProcess[str]:
        self.state.mkdir(mode=0o700)
        make(self.state / "gateway-token")
        return self.cli("--port", "0", "--state-dir", str(self.state))    # TIMEOUT: a FIFO must not hang it

    def test_a_file_that_is_not_utf8_is_named_with_the_way_out(self) -> None:
        done = self.start_with_token_file(lambda path: path.write_bytes(b"\xff\xfe\n"))
        self.assertOneLineError(done, 2, str(self.state / "gateway-token"), "not UTF-8 text", "delete it",
                                "EQUABOT_GATEWAY_TOKEN")

    def test_a_fifo_or_a_device_is_not_read(self) -> None:
        cases = (("fifo", os.mkfifo, "a FIFO"),
                 ("link to /dev/zero", lambda path: path.symlink_to("/dev/zero"), "a character device"),
                 ("directory", os.mkdir, "a directory"))
        for name, make, kind in cases:
            with self.subTest(name):
                self.setUp()
                done = self.start_with_token_file(make)
                self.assertOneLineError(done, 2, "gateway-token", f"not a regular file ({kind})")

    def test_a_huge_file_is_refused_unread(self) -> None:
        done = self.start_with_token_file(lambda path: path.write_bytes(b"x" * 100_000))
        self.assertOneLineError(done, 2, "gateway-token", "over 4096 bytes")

    def test_a_good_file_with_a_link_to_it_still_works(self) -> None:
        target = self.dir / "token-elsewhere"
        target.write_text(TOKEN + "\n")
        self.state.mkdir(mode=0o700)
        (self.state / "gateway-token").symlink_to(target)
        from equabot_gw.auth import read_token_file
        self.assertEqual(read_token_file(self.state / "gateway-token"), TOKEN)
        self.assertIsNone(read_token_file(self.state / "no-such-file"))


class ConfigCheckMoreTest(CLITestCase):
    def test_an_environment_token_is_shown_as_set_and_where_from(self) -> None:
        done = self.cli("config", "check", env=self.env(EQUABOT_GATEWAY_TOKEN="tok-from-env-123"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn('# gateway.auth.token: "***" (from EQUABOT_GATEWAY_TOKEN)', done.stdout.splitlines())
        shown = json.loads("\n".join(l for l in done.stdout.splitlines() if not l.startswith("#")))
        self.assertEqual(shown["gateway"]["auth"]["token"], "***")
        self.assertNotIn("tok-from-env-123", done.stdout)
        plain = self.cli("config", "check")
        self.assertNotIn("from EQUABOT_GATEWAY_TOKEN", plain.stdout)

    def test_a_closed_pipe_is_not_an_error(self) -> None:
        read_end, write_end = os.pipe()
        os.close(read_end)                          # the reader is gone before anything is written
        try:
            done = subprocess.run([sys.executable, "-m", "equabot_gw", "config", "check"], cwd=ROOT,
                                  env=self.env(), stdout=write_end, stderr=subprocess.PIPE, text=True,
                                  timeout=TIMEOUT)
        finally:
            os.close(write_end)
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        # And through a real pipe into head, as a user types it.
        piped = subprocess.run(f"{sys.executable} -m equabot_gw config check | head -1", shell=True, cwd=ROOT,
                               env=self.env(), capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual((piped.stdout, piped.stderr), ("# config OK: built-in defaults (no config file)\n", ""))


class DisabledEndpointTest(CLITestCase):
    def test_the_disabled_endpoint_says_how_to_enable_it(self) -> None:
        import http.client
        with GatewayProcess({"gateway": {"auth": {"token": TOKEN}}}) as gw:     # the endpoint is off
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                                 ("GET", "/v1/models/equabot")):
                with self.subTest(path):
                    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=TIMEOUT)
                    self.addCleanup(conn.close)
                    conn.request(method, path, body=b"{}" if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
                    response = conn.getresponse()
                    error = json.loads(response.read())["error"]
                    self.assertEqual(response.status, 404)
                    self.assertEqual(error["message"], "the OpenAI endpoint is disabled: set "
                                                       "gateway.http.endpoints.chatCompletions.enabled: true")
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=TIMEOUT)
            self.addCleanup(conn.close)
            conn.request("GET", "/v1/nothing-here")
            response = conn.getresponse()
            self.assertNotIn("disabled", json.loads(response.read())["error"]["message"])


class SessionsCommandTest(CLITestCase):
    """One state dir, filled once by ``agent --local`` runs; each test reads it or adds its own session."""

    @classmethod
    def setUpClass(cls) -> None:
        cls._tmp = tempfile.TemporaryDirectory()
        cls.shared = Path(cls._tmp.name)
        cls.config = str(write_config(cls.shared, {"agents": {"list": [{"id": "main", "default": True},
                                                                        {"id": "ops"}]}}))
        runs = [("-m", f"to {key}", "--session-key", key, "--agent", agent)
                for key, agent, count in (("alpha", "main", 2), ("beta", "main", 1), ("night", "ops", 1))
                for _ in range(count)] + [("-m", "to the main session")]
        for args in runs:
            done = subprocess.run([sys.executable, "-m", "equabot_gw", "agent", "--local", *args,
                                   "--config", cls.config, "--state-dir", str(cls.shared / "state")],
                                  cwd=ROOT, env=clean_env(cls.shared),
                                  capture_output=True, text=True, timeout=TIMEOUT)
            assert done.returncode == 0, done.stderr

    @classmethod
    def tearDownClass(cls) -> None:
        cls._tmp.cleanup()

    def setUp(self) -> None:
        super().setUp()
        self.state = self.shared / "state"

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, "--config", self.config, "--state-dir", str(self.state))

    def test_list(self) -> None:
        done = self.run_cli("sessions", "list")
        self.assertEqual(done.returncode, 0, done.stderr)
        rows = [line.split("\t") for line in done.stdout.splitlines()]
        self.assertEqual(sorted((r[0], r[1]) for r in rows),           # every agent's
                         [("agent:main:alpha", "turns=2"), ("agent:main:beta", "turns=1"),
                          ("agent:main:main", "turns=1"), ("agent:ops:night", "turns=1")])
        for row in rows:
            self.assertRegex(row[2], r"^updated=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        listed = json.loads(self.run_cli("sessions", "list", "--json").stdout)
        self.assertEqual({s["key"]: s["turns"] for s in listed},
                         {"agent:main:alpha": 2, "agent:main:beta": 1, "agent:main:main": 1, "agent:ops:night": 1})
        self.assertTrue(all(s["lastRunId"].startswith("run_") for s in listed))
        for s in listed:
            created = datetime.datetime.strptime(s["createdAt"], "%Y-%m-%dT%H:%M:%SZ")
            self.assertLess(abs(created - datetime.datetime.utcnow()), datetime.timedelta(hours=1))
        main = json.loads(self.run_cli("sessions", "list", "--agent", "main", "--json").stdout)
        self.assertEqual({s["key"] for s in main}, {"agent:main:alpha", "agent:main:beta", "agent:main:main"})
        ops = self.run_cli("sessions", "list", "--agent", "ops").stdout
        self.assertEqual([line.split("\t")[0] for line in ops.splitlines()], ["agent:ops:night"])

    def test_show(self) -> None:
        done = self.run_cli("sessions", "show", "alpha")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.splitlines(), ["user: to alpha", "assistant: Echo (turn 1): to alpha",
                                                    "user: to alpha", "assistant: Echo (turn 2): to alpha"])
        # --json: the chat messages, in the same shape as the WS chat.history method.
        lines = [json.loads(line) for line in self.run_cli("sessions", "show", "agent:main:alpha", "--json")
                 .stdout.splitlines()]
        self.assertEqual([line["role"] for line in lines], ["user", "assistant", "user", "assistant"])
        self.assertEqual(set(lines[0]), {"role", "content", "runId", "ts"})
        night = self.run_cli("sessions", "show", "night", "--agent", "ops").stdout.splitlines()
        self.assertEqual(night[-1], "assistant: Echo (turn 1): to night")

    def test_reset(self) -> None:
        for _ in range(2):
            self.assertEqual(self.run_cli("agent", "--local", "-m", "x", "--session-key", "gamma").returncode, 0)
        done = self.run_cli("sessions", "reset", "gamma")
        self.assertEqual((done.returncode, done.stdout), (0, "reset agent:main:gamma\n"), done.stderr)
        # Listed, empty, as the WebSocket sessions.reset leaves it.
        rows = [line.split("\t")[:2] for line in self.run_cli("sessions", "list").stdout.splitlines()]
        self.assertIn(["agent:main:gamma", "turns=0"], rows)
        shown = self.run_cli("sessions", "show", "gamma")
        self.assertEqual((shown.returncode, shown.stdout), (0, "(no messages)\n"), shown.stderr)
        again = self.run_cli("agent", "--local", "-m", "fresh", "--session-key", "gamma")
        self.assertReply(again, "Echo (turn 1): fresh")              # the session starts over
        archived = list((self.state / "agents" / "main" / "sessions").glob("*gamma*reset*"))
        self.assertEqual(len(archived), 1)                           # archived, not deleted
        self.assertEqual(self.run_cli("sessions", "reset", "gamma").returncode, 0)

    def test_unknown_session_and_agent(self) -> None:
        # A word may be a key or a user's string: the message names both sessions it could be.
        for command in ("show", "reset"):
            self.assertOneLineError(self.run_cli("sessions", command, "nope"), 1, "no session 'agent:main:nope', nor for user 'nope' (agent:main:openai-user:nope)")
        self.assertNotIn("nope", self.run_cli("sessions", "list").stdout)   # a typo makes no empty session
        self.assertOneLineError(self.run_cli("sessions", "list", "--agent", "ghost"), 1, "'ghost'")
        # Not a key: taken as an OpenAI user string, whose key is a hash (never a path).
        self.assertOneLineError(self.run_cli("sessions", "show", "../../etc"), 1,
                                "no session for user '../../etc' (agent:main:openai-user:u-")
        self.assertOneLineError(self.run_cli("sessions", "show", "agent:main:bad key"), 1, "session key")

    def test_empty_session_is_a_bad_argument(self) -> None:
        # Not the endpoint's words for an empty OpenAI user: a flag error, exit 2.
        for command in ("show", "reset"):
            line = self.assertOneLineError(self.run_cli("sessions", command, ""), 2, "argument key:",
                                           f"sessions {command} --help")
            self.assertNotIn("non-empty string", line)

    def test_unreachable_url_suggests_what_sessions_can_do(self) -> None:
        # sessions has no --local: with no --url it reads the state dir's files itself.
        port = free_port()
        done = self.run_cli("sessions", "list", "--url", f"http://127.0.0.1:{port}")
        line = self.assertOneLineError(done, 1, f"cannot reach the gateway at http://127.0.0.1:{port}",
                                       "leave out --url")
        self.assertNotIn("--local", line)

    def test_empty_state_dir(self) -> None:
        done = self.cli("sessions", "list", "--state-dir", str(self.dir / "empty"))
        self.assertEqual((done.returncode, done.stdout), (0, "no sessions\n"), done.stderr)


# Imported only when a feature needs them, never to serve: a start that pulls
# one of these in again has lost cold-start time for nothing.
NOT_FOR_SERVING = ("equabot_gw.conformance", "equabot_gw.net.client", "equabot_gw.gateway.client",
                   "equabot_gw.agent_cli", "equabot_gw.providers.anthropic",
                   "equabot_gw.providers.command", "email.utils", "uuid", "platform", "calendar",
                   "datetime", "secrets", "importlib.resources", "tempfile", "shutil")


class ServingImports(unittest.TestCase):
    def test_a_start_imports_only_what_serving_needs(self) -> None:
        code = ("import sys\n"
                "from equabot_gw import cli\n"
                "args = cli.build_parser(['gateway']).parse_args(['gateway'])\n"
                "import equabot_gw.gateway.app, equabot_gw.net.server\n"
                "print(' '.join(sorted(sys.modules)))\n")
        done = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        loaded = set(done.stdout.split())
        self.assertIn("equabot_gw.gateway.app", loaded)
        self.assertEqual([m for m in NOT_FOR_SERVING if m in loaded], [])

    def test_the_conformance_flags_are_there_when_asked_for(self) -> None:
        from equabot_gw import cli
        args = cli.build_parser(["conformance", "--base-url", "http://127.0.0.1:1"]).parse_args(
            ["conformance", "--base-url", "http://127.0.0.1:1"])
        self.assertEqual((args.command, args.base_url), ("conformance", "http://127.0.0.1:1"))


if __name__ == "__main__":
    unittest.main()
