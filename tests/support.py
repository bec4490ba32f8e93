"""Shared test helpers: a gateway in a subprocess or in-process, raw sockets, HTTP parsing.

End-to-end tests run a real gateway on port 0 with a temporary state dir;
shell tests use an in-process ``Gateway`` on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from equabot_gw import config as config_mod
from equabot_gw.gateway.app import Gateway

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"


class _NoSlowCallbackReports(logging.Filter):
    """Drop asyncio's "Executing <Task …> took 0.132 seconds" reports.

    ``unittest.IsolatedAsyncioTestCase`` runs every test's loop in debug mode
    (useful: never-awaited coroutines and thread misuse are reported), and in
    debug mode asyncio logs each callback that holds the loop over 100 ms.
    On a machine shared by parallel builds that is noise, not a finding; a
    test about the loop being held measures that itself, with its own bound.
    Every other asyncio log line still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Executing %s took %.3f seconds"


logging.getLogger("asyncio").addFilter(_NoSlowCallbackReports())


def write_config(directory: pathlib.Path, data: dict[str, Any]) -> pathlib.Path:
    path = directory / "config.json5"
    path.write_text(json.dumps(data))
    return path


def base_config(**gateway: Any) -> dict[str, Any]:
    """A config with the OpenAI endpoint on and a fixed token; ``gateway`` keys merge in."""
    data: dict[str, Any] = {"gateway": {"auth": {"token": TOKEN},
                                        "http": {"endpoints": {"chatCompletions": {"enabled": True}}}}}
    for key, value in gateway.items():
        if isinstance(value, dict) and isinstance(data["gateway"].get(key), dict):
            data["gateway"][key].update(value)
        else:
            data["gateway"][key] = value
    return data


def signals_as_from_a_terminal() -> None:
    """In a child about to run a gateway or a command: SIGINT and SIGHUP delivered as from a
    terminal. A suite started in the background (``make test &``) has SIGINT ignored, one
    under ``nohup`` SIGHUP, and a child inherits that (the gateway keeps an inherited
    ignored SIGHUP ignored, as a program under nohup should)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class GatewayProcess:
    """``python -m equabot_gw`` on port 0 in a subprocess; ``url`` once started."""

    def __init__(self, data: dict[str, Any] | None = None, *, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = pathlib.Path(self.tmp.name)
        self.state_dir = self.dir / "state"
        self.config_path = write_config(self.dir, data if data is not None else base_config())
        self.extra_args = extra_args
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.pop("EQUABOT_GATEWAY_TOKEN", None)
        self.env.pop("EQUABOT_CONFIG_PATH", None)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stderr_path = self.dir / "stderr.log"

    def start(self, timeout: float = 10.0) -> GatewayProcess:
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "equabot_gw", "--config", str(self.config_path), "--port", "0",
             "--state-dir", str(self.state_dir), *self.extra_args],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            preexec_fn=signals_as_from_a_terminal)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"gateway did not start: {line!r}\n{self.stderr()}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        return self

    @property
    def host(self) -> str:
        return self.url.split("//")[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()
        return code

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.tmp.cleanup()


class LiveGateway:
    """Mixin for a test class that shares one real gateway process, ``cls.gw``.

    Started from ``gateway_data()`` before the class's tests; stopped with
    SIGTERM after them, and the exit code must be 0 (a clean shutdown is
    part of every such test class).
    """

    gw: GatewayProcess

    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return base_config()

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()        # type: ignore[misc]
        cls.gw = GatewayProcess(cls.gateway_data()).start()

    @classmethod
    def tearDownClass(cls) -> None:
        code = cls.gw.stop()
        cls.gw.tmp.cleanup()
        super().tearDownClass()     # type: ignore[misc]
        assert code == 0, f"the gateway exited with {code}"


@contextlib.asynccontextmanager
async def running_gateway(data: dict[str, Any] | None = None, state_dir: pathlib.Path | None = None):
    """An in-process gateway on port 0 for the current event loop."""
    with tempfile.TemporaryDirectory() as tmp:
        config = config_mod.from_data(data if data is not None else base_config(), env={})
        gateway = Gateway(config, state_dir or pathlib.Path(tmp), port=0, env={})
        await gateway.start()
        try:
            yield gateway
        finally:
            await gateway.stop()


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0, host: str = "127.0.0.1",
                 wait_close: bool = True) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes (or ``timeout``)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not wait_close:
                break
        return b"".join(chunks)


def post_head(path: str, body: bytes, *, headers: str = "", host: str = "127.0.0.1") -> bytes:
    """A JSON ``POST`` of ``body`` to ``path`` with the test token; ``headers``: more
    field lines, each ending in CRLF (``Connection: close``, a session key, ...)."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body


async def post_closing(port: int, path: str, body: bytes, *, headers: str = "", timeout: float = 10.0
                       ) -> tuple[int, dict[str, str], bytes, bytes]:
    """``post_head`` on a fresh connection with ``Connection: close``, read to its end:
    status, headers, de-chunked body, and the raw bytes (for the framing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(post_head(path, body, headers="Connection: close\r\n" + headers))
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    [(status, fields, payload)] = split_responses(raw)
    return status, fields, payload, raw


def split_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length or chunked responses (test-side parsing)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200:
            raw = rest
            out.append((status, headers, b""))
            continue
        if "content-length" in headers:
            n = int(headers["content-length"])
            out.append((status, headers, rest[:n]))
            raw = rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    rest = rest[2:]
                    break
                body += rest[:size]
                rest = rest[size + 2:]
            out.append((status, headers, body))
            raw = rest
        else:
            out.append((status, headers, rest))
            raw = b""
    return out


def error_of(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-style error body, checked for shape."""
    data = json.loads(body)
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


async def wait_for(predicate, timeout: float = 2.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
