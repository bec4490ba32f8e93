"""A start imports what serving HTTP needs, and the rest when first asked for.

A real ``python -m equabot_gw`` (the CLI's own start, in a subprocess) serves
``GET /health`` and a chat completion; a thread of that process then lists
which of the watched modules it has imported, sends a WebSocket upgrade, and
lists them again. The control-protocol half is imported by the upgrade and
not before; the Responses door, the conformance kit, the HTTP client and the
WebSocket client are not imported at all (off, not asked for, no HTTP
provider, no connection to open); the JSON5 reader
only when there is a config file to read. The thread never imports a module
of the package itself.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import unittest

from tests.support import ROOT, TOKEN, base_config, write_config

CONTROL_HALF = ("equabot_gw.gateway.control", "equabot_gw.gateway.methods", "equabot_gw.gateway.runs",
                "equabot_gw.gateway.frames", "equabot_gw.gateway.params", "equabot_gw.net.wsstream",
                "equabot_gw.net.websocket")
NEVER_HERE = ("equabot_gw.gateway.responses", "equabot_gw.agents.response_store",
              "equabot_gw.conformance", "equabot_gw.net.client", "equabot_gw.net.wsclient")
JSON5 = "equabot_gw.json5"

# Runs in the gateway's process: a thread that waits for the lock file's URL,
# talks to the gateway over sockets, prints what sys.modules holds, and stops
# the gateway with SIGTERM; the main thread runs the CLI.
CHILD = r"""
import json, os, signal, socket, sys, threading, time

state_dir, watched, token = sys.argv[1], sys.argv[2].split(","), sys.argv[3]

def loaded():
    return sorted(name for name in watched if name in sys.modules)

def port():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(state_dir, "gateway.lock")) as f:
                url = json.loads(f.read() or "{}").get("url")
        except (OSError, ValueError):
            url = None
        if url:
            return int(url.rsplit(":", 1)[1])
        time.sleep(0.02)
    os._exit(3)

def exchange(number, request, *, head_only=False):
    with socket.create_connection(("127.0.0.1", number), timeout=10) as s:
        s.sendall(request)
        data = b""
        while not (head_only and b"\r\n\r\n" in data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b" ", 2)[1].decode()

def probe():
    number = port()
    report = {"health": exchange(number, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")}
    if token:
        body = b'{"model":"equabot","messages":[{"role":"user","content":"hi"}]}'
        report["completion"] = exchange(number, (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    report["after_http"] = loaded()
    report["upgrade"] = exchange(number, (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"), head_only=True)
    report["after_upgrade"] = loaded()
    print("MODULES " + json.dumps(report), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
sys.argv = ["equabot_gw", *sys.argv[4:]]
from equabot_gw import cli
cli.main()
"""


def start_and_probe(config: dict | None) -> dict:
    """Run the CLI (with ``config`` as its file, or none) and return the probe's report."""
    with tempfile.TemporaryDirectory() as tmp:
        home, state = pathlib.Path(tmp), pathlib.Path(tmp) / "state"
        args = ["--port", "0", "--state-dir", str(state), "--log-level", "warning"]
        if config is not None:
            args += ["--config", str(write_config(home, config))]
        env = {k: v for k, v in os.environ.items()
               if k not in ("EQUABOT_CONFIG_PATH", "EQUABOT_GATEWAY_TOKEN", "EQUABOT_STATE_DIR")}
        env["HOME"] = str(home)             # no ~/.equabot/equabot.json: the built-in defaults
        watched = ",".join((*CONTROL_HALF, *NEVER_HERE, JSON5))
        done = subprocess.run([sys.executable, "-c", CHILD, str(state), watched,
                               TOKEN if config is not None else "", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MODULES ")]
    if len(lines) != 1:
        raise AssertionError(f"no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[0][len("MODULES "):])


class StartImportsTest(unittest.TestCase):
    def test_the_control_protocol_half_is_imported_by_the_first_upgrade(self) -> None:
        report = start_and_probe(base_config())
        self.assertEqual((report["health"], report["completion"], report["upgrade"]), ("200", "200", "101"))
        self.assertEqual(report["after_http"], [JSON5])         # the config file was read
        self.assertEqual(report["after_upgrade"], sorted((*CONTROL_HALF, JSON5)))

    def test_a_start_without_a_config_file_does_not_import_the_json5_reader(self) -> None:
        report = start_and_probe(None)
        self.assertEqual((report["health"], report["upgrade"]), ("200", "101"))
        self.assertEqual(report["after_http"], [])
        self.assertEqual(report["after_upgrade"], sorted(CONTROL_HALF))


if __name__ == "__main__":
    unittest.main()
