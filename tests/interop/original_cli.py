"""``make interop-original``: the original Gateway's own CLI against a live equabot_gw.

Installs node 22 (npm package ``node-linux-<arch>``, which ships the binary)
and the original CLI (npm ``clawdbot@2026.1.24-3``) from the npm registry into
a cache under ``.venv-test/original-cli/`` (once), starts equabot_gw on a free
port with a temporary state dir, points the CLI at it with a temporary HOME
whose config says ``gateway.mode: "remote"``, and runs the everyday commands,
in order (later ones see what earlier ones did: a conversation continued, a
session reset then deleted). Each must exit 0 and print what it prints
against the original, and none may print (on stdout or stderr) what the
original does not. Not part of ``make test``: it downloads ~1 GiB once and
needs the system's ``npm``; ``EQUABOT_INTEROP_CACHE=DIR`` uses the node and
CLI already installed in another checkout's cache instead.

One substitution: the CLI's WhatsApp library depends on ``libsignal`` from a
git URL, which the npm registry cannot serve; a stub package stands in for
it (npm ``overrides``), so the WhatsApp channel, unused here, cannot work.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(os.environ.get("EQUABOT_INTEROP_CACHE") or ROOT / ".venv-test" / "original-cli")
CLI_VERSION = "2026.1.24-3"
NODE_MAJOR = "22"
TOKEN = "interop-original-token"
TIMEOUT = 300          # seconds per command: the first `status` took 125 s here (its own checks)

# The stub for libsignal: the modules and names the WhatsApp library imports.
STUB_FILES = {
    "package.json": '{"name": "libsignal", "version": "0.0.0-stub", "main": "index.js"}\n',
    "index.js": "module.exports = {};\n",
    "src/curve.js": "".join(f"exports.{n} = unavailable;\n" for n in (
        "generateKeyPair", "calculateSignature", "verifySignature", "calculateAgreement")),
    "src/crypto.js": "".join(f"exports.{n} = unavailable;\n" for n in (
        "calculateMAC", "decrypt", "encrypt", "deriveSecrets", "hash", "verifyMAC")),
}
UNAVAILABLE = ("'use strict';\nfunction unavailable() { throw new Error("
               "'libsignal stub: WhatsApp is not available in this interop install'); }\n")

_TODAY = time.strftime("%Y-%m-%d", time.gmtime())
_YESTERDAY = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))

# (arguments, a text its stdout must contain, a text neither stdout nor stderr may contain), run in order
COMMANDS: tuple[tuple[tuple[str, ...], str, str | None], ...] = (
    (("agent", "--agent", "main", "-m", "hi"), "Echo (turn 1): hi", None),
    # Without a sessionKey the gateway continues the main session, as the original does.
    (("gateway", "call", "agent", "--params", '{"message": "via call", "idempotencyKey": "interop-call-1"}',
      "--expect-final", "--json"), '"text": "Echo (turn 2): via call"', None),
    (("status", "--json"), '"reachable": true', None),
    (("gateway", "probe", "--json"), '"ok": true', None),
    (("gateway", "health"), "OK", None),
    (("logs",), "Log file:", None),
    # --limit shows the newest lines; only a cut by --max-bytes is a truncation.
    (("logs", "--limit", "5", "--plain"), "Log file:", "Log tail truncated"),
    # One row per day with usage (only today here), and no cost counts as missing.
    (("gateway", "usage-cost", "--days", "2", "--json"), f'"date": "{_TODAY}"', f'"date": "{_YESTERDAY}"'),
    (("gateway", "usage-cost"), f"Latest day: {_TODAY}", "Missing entries"),
    (("gateway", "call", "sessions.list"), '"key": "agent:main:main"', None),
    # A reset leaves the session there, empty, for the next turn; a delete then deletes it.
    (("gateway", "call", "sessions.reset", "--params", '{"key": "agent:main:main"}', "--json"), '"ok": true', None),
    (("gateway", "call", "chat.history", "--params", '{"sessionKey": "agent:main:main"}', "--json"),
     '"messages": []', None),
    (("gateway", "call", "sessions.delete", "--params", '{"key": "agent:main:main"}', "--json"),
     '"deleted": true', None),
)


def run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def install() -> tuple[pathlib.Path, pathlib.Path]:
    """node 22 and the CLI in the cache (installed once); their paths."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("interop-original: npm is needed to fetch node 22 and the CLI from the "
                         "npm registry (apt-get install npm)")
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if arch is None or sys.platform != "linux":
        raise SystemExit(f"interop-original: no node-{sys.platform}-{platform.machine()} package to use")
    node = CACHE / "node" / "node_modules" / f"node-linux-{arch}" / "bin" / "node"
    if not node.exists():
        run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE / "node"),
             f"node-linux-{arch}@{NODE_MAJOR}"])
    npm_cli = pathlib.Path(os.path.realpath(npm)).parent / "npm-cli.js"
    cli_dir = CACHE / "cli"
    entry = cli_dir / "node_modules" / "clawdbot" / "dist" / "entry.js"
    if not entry.exists():
        stub = cli_dir / "stub-libsignal"
        for name, text in STUB_FILES.items():
            (stub / name).parent.mkdir(parents=True, exist_ok=True)
            (stub / name).write_text((UNAVAILABLE if name.startswith("src/") else "") + text)
        (cli_dir / "package.json").write_text(json.dumps({
            "name": "interop-original", "private": True, "dependencies": {"clawdbot": CLI_VERSION},
            "overrides": {"libsignal": "file:./stub-libsignal"}}, indent=2))
        env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        # --ignore-scripts: no postinstall downloads (prebuilt binaries from outside the registry).
        run([str(node), str(npm_cli), "install", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=cli_dir, env=env)
    return node, entry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    node, entry = install()
    print(f"node {subprocess.run([str(node), '--version'], capture_output=True, text=True).stdout.strip()}, "
          f"clawdbot {CLI_VERSION}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(tmp)
        port = free_port()
        (base / "gateway.json").write_text(json.dumps({"gateway": {"port": port, "auth": {"token": TOKEN}}}))
        home = base / "home"
        (home / ".clawdbot").mkdir(parents=True)
        (home / ".clawdbot" / "clawdbot.json").write_text(json.dumps({"gateway": {
            "mode": "remote", "remote": {"url": f"ws://127.0.0.1:{port}", "token": TOKEN}}}))
        gateway = subprocess.Popen(
            [sys.executable, "-m", "equabot_gw", "--config", str(base / "gateway.json"),
             "--state-dir", str(base / "state")], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=open(base / "gateway.log", "w"), text=True)
        try:
            assert gateway.stdout is not None
            print(gateway.stdout.readline().strip(), flush=True)
            failures = 0
            env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAWDBOT_", "OPENCLAW_"))}
            env.update(HOME=str(home), NO_COLOR="1")
            for args, expected, forbidden in COMMANDS:
                started = time.monotonic()
                done = subprocess.run([str(node), str(entry), *args], env=env, capture_output=True,
                                      text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
                ok = done.returncode == 0 and expected in done.stdout \
                    and not (forbidden and forbidden in done.stdout + done.stderr)
                failures += not ok
                print(f"\n$ clawdbot {' '.join(args)}\n# exit {done.returncode} in "
                      f"{time.monotonic() - started:.1f} s: {'PASS' if ok else 'FAIL'} "
                      f"(expects {expected!r}" + (f", never {forbidden!r}" if forbidden else "")
                      + f")\n{done.stdout[:2500]}"
                      + (f"--- stderr\n{done.stderr[:1500]}" if done.stderr.strip() else ""), flush=True)
            print(f"\n{len(COMMANDS) - failures} passed, {failures} failed")
            return 1 if failures else 0
        finally:
            gateway.terminate()
            gateway.wait(15)


if __name__ == "__main__":
    sys.exit(main())
