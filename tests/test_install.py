"""The package installs and runs outside the checkout: a wheel, ``pip install .``, ``pipx install .``.

Each install goes into a fresh virtual environment under a temporary directory,
and the installed ``equabot-gw`` command is run from a directory outside the
checkout with a clean environment (no ``PYTHONPATH``, ``HOME`` in the temp
dir): ``--help``, then a real gateway on port 0 that must answer
``GET /health`` and exit 0 on SIGTERM. The installed package is also
embedded: a program run with ``python -I`` and no home directory starts
``equabot_gw.Gateway`` on an explicit state dir, three times over, and talks
to it; serves a chat completion and a WebSocket ``agent`` run from its own
Python provider; and streams a ``run_agent`` run with no server. The wheel is built once, from the
checkout, by pip with its index switched off (``PIP_NO_INDEX``): the build
backend is in the tree and needs nothing, so building and installing work
offline, from the checkout, from the sdist and as an editable install. Only
the pipx test fetches pipx itself (and skips when it cannot).

Virtual environments are made without pip (fast) and pip is pointed at them
with ``--python``; the one exception is pipx, which is installed into a
throwaway venv of its own and makes its venvs as its users get them.
"""

from __future__ import annotations

import ast
import email.parser
import json
import os
import pathlib
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import unittest
import urllib.request
import zipfile

from tests.test_embedding import PUBLIC_NAMES

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "equabot_gw"
# Generous: a cold pip resolving and downloading the build backend on a busy machine.
PIP_TIMEOUT = 300
START_TIMEOUT = 30.0


def source_version() -> str:
    """``__version__`` as written in the checkout's ``equabot_gw/__init__.py``."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("equabot_gw/__init__.py has no __version__")


def clean_env(home: pathlib.Path, **extra: str) -> dict[str, str]:
    """The environment without anything that could point back at the checkout or its config."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "EQUABOT_", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    env.update(HOME=str(home), PYTHONNOUSERSITE="1", **extra)
    return env


def copy_checkout(dest: pathlib.Path) -> pathlib.Path:
    """The files a clone would have (no venvs, build output, caches, git metadata)."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "venv", "build", "dist", "*.egg-info",
                                    "__pycache__", "*.pyc", "results", ".coverage")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=False)
    return dest


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=kwargs.pop("timeout", PIP_TIMEOUT),
                            **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                             f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
    return result


def _older_python() -> str | None:
    """An interpreter older than 3.11 (3.7 to 3.10, newest first), or None."""
    pyenv = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv")) / "versions"
    for minor in (10, 9, 8, 7):
        candidates = [str(p / "bin" / "python") for p in sorted(pyenv.glob(f"3.{minor}.*"), reverse=True)]
        candidates.append(shutil.which(f"python3.{minor}") or "")
        for found in candidates:
            # A pyenv shim for a version not selected exists and fails: only one that runs counts.
            if found and subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0:
                return found
    return None


class Sandbox:
    """A temp dir with a fake HOME, a work dir outside the checkout, and a pip to install with."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="equabot-install-")
        self.dir = pathlib.Path(self.tmp.name)
        self.home = self.dir / "home"
        self.outside = self.dir / "elsewhere"
        self.home.mkdir()
        self.outside.mkdir()
        self.env = clean_env(self.home)
        # Builds and installs never reach a package index: nothing is needed from one.
        self.offline_env = dict(self.env, PIP_NO_INDEX="1")
        self.pip = self._pip()

    def _pip(self) -> list[str]:
        """This interpreter's pip when it can install into another venv, else a venv's own."""
        probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
        found = re.match(r"pip (\d+)\.(\d+)", probe.stdout)
        if probe.returncode == 0 and found and (int(found[1]), int(found[2])) >= (22, 3):
            return [sys.executable, "-m", "pip"]
        tools = self.dir / "pip-venv"
        run([sys.executable, "-m", "venv", str(tools)])
        return [str(tools / "bin" / "python"), "-m", "pip"]

    def venv(self, name: str) -> pathlib.Path:
        """A fresh virtual environment without pip; returns its directory."""
        path = self.dir / name
        run([sys.executable, "-m", "venv", "--without-pip", str(path)], env=self.env)
        return path

    def pip_install(self, venv: pathlib.Path, *args: str, cwd: pathlib.Path | None = None,
                    online: bool = False) -> None:
        run(self.pip + ["--python", str(venv / "bin" / "python"), "install",
                        "--disable-pip-version-check", "--no-input", *args],
            cwd=cwd or self.outside, env=self.env if online else self.offline_env)

    def cleanup(self) -> None:
        self.tmp.cleanup()


class InstalledCommandChecks(unittest.TestCase):
    """What every installed copy must do; subclasses say where the command is."""

    box: Sandbox

    def assert_command_works(self, command: pathlib.Path) -> None:
        self.assertTrue(command.is_file(), f"{command} was not installed")
        self.assertFalse(command.resolve().is_relative_to(ROOT), "the command lives in the checkout")
        helped = run([str(command), "--help"], cwd=self.box.outside, env=self.box.env, timeout=60)
        self.assertIn("gateway", helped.stdout)
        self.assertIn("conformance", helped.stdout)
        self.assert_gateway_serves(command)

    def assert_gateway_serves(self, command: pathlib.Path) -> None:
        """``equabot-gw --port 0 --state-dir D``: start-up line, GET /health 200, SIGTERM → exit 0."""
        state = pathlib.Path(tempfile.mkdtemp(prefix="state-", dir=self.box.dir))
        stderr_path = state.parent / f"{state.name}.stderr"
        with open(stderr_path, "w") as stderr:
            proc = subprocess.Popen([str(command), "--port", "0", "--state-dir", str(state)],
                                    cwd=self.box.outside, env=self.box.env, stdout=subprocess.PIPE,
                                    stderr=stderr, text=True)
        try:
            line = self._first_line(proc)
            found = re.search(r"listening on (http://[0-9.]+:(\d+))", line)
            self.assertIsNotNone(found, f"no URL in the start-up line {line!r}: "
                                        f"{stderr_path.read_text()[-2000:]}")
            self.assertNotEqual(found[2], "0")
            with urllib.request.urlopen(found[1] + "/health", timeout=10) as response:
                self.assertEqual(response.status, 200)
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(30), 0, stderr_path.read_text()[-2000:])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self.assertTrue((state / "gateway-token").is_file(), "the state dir given was not used")

    @staticmethod
    def _first_line(proc: subprocess.Popen[str]) -> str:
        """The first stdout line, or '' after START_TIMEOUT (never blocks forever)."""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                return ""
        return proc.stdout.readline()


class BackendPathTest(unittest.TestCase):
    def test_no_module_of_the_package_shadows_the_standard_library(self) -> None:
        # pyproject's backend-path puts the package directory first on sys.path while
        # pip builds: a module there named as a standard one would be imported instead.
        names = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
        self.assertEqual(sorted(names & set(sys.stdlib_module_names)), [])


class WheelTest(InstalledCommandChecks):
    """``pip install <wheel>`` of the wheel built from the checkout."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.box = Sandbox()
        try:
            wheels = cls.box.dir / "wheels"
            run(cls.box.pip + ["wheel", "--no-deps", "--disable-pip-version-check", "--no-input",
                               "--wheel-dir", str(wheels), str(copy_checkout(cls.box.dir / "src"))],
                cwd=cls.box.outside, env=cls.box.offline_env)
            found = sorted(wheels.glob("*.whl"))
            assert len(found) == 1, found
            cls.wheel = found[0]
            cls.venv = cls.box.venv("wheel-venv")
            cls.box.pip_install(cls.venv, "--no-index", str(cls.wheel))
        except BaseException:
            cls.box.cleanup()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.box.cleanup()

    def test_installed_command_runs_outside_the_checkout(self) -> None:
        self.assert_command_works(self.venv / "bin" / "equabot-gw")

    def test_import_isolated_gives_the_source_version(self) -> None:
        result = run([str(self.venv / "bin" / "python"), "-I", "-c",
                      "import equabot_gw; print(equabot_gw.__version__); print(equabot_gw.__file__)"],
                     cwd=self.box.outside, env=self.box.env, timeout=60)
        version, location = result.stdout.split()
        self.assertEqual(version, source_version())
        self.assertTrue(pathlib.Path(location).is_relative_to(self.venv), location)
        self.assertIn(f"-{version}-", self.wheel.name)

    def test_embedded_under_isolated_mode_without_a_home(self) -> None:
        program = self.box.outside / "embed.py"
        program.write_text(EMBEDDING_PROGRAM, encoding="utf-8")
        no_home = self.box.dir / "no-such-home"          # nothing may be written there
        state = self.box.dir / "embedded-state"
        env = dict(self.box.env, HOME=str(no_home))
        result = run([str(self.venv / "bin" / "python"), "-I", str(program), str(state)],
                     cwd=self.box.outside, env=env, timeout=120)
        seen = json.loads(result.stdout)
        self.assertEqual(seen["replies"], ["Echo (turn 1): hi", "Echo (turn 2): hi", "Echo (turn 3): hi"])
        self.assertEqual(seen["custom"], ["ih", "tekcosbew"])       # its provider, over HTTP and WS
        self.assertEqual(seen["events"], ["Started", "TextDelta", "TextDelta", "Ended"])
        self.assertEqual(seen["all"], PUBLIC_NAMES)
        self.assertEqual(seen["isolated"], 1)
        self.assertTrue(pathlib.Path(seen["file"]).is_relative_to(self.venv), seen["file"])
        self.assertFalse(no_home.exists(), "the embedded gateway wrote into the home directory")
        self.assertTrue(any((state / "agents" / "main" / "sessions").iterdir()))

    def test_wheel_holds_the_package_and_its_data_only(self) -> None:
        with zipfile.ZipFile(self.wheel) as wheel:
            names = wheel.namelist()
            dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
            metadata = email.parser.Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
            entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
        tops = {n.split("/")[0] for n in names}
        self.assertEqual(tops, {"equabot_gw", dist_info})
        for name in names:
            self.assertFalse(name.startswith(("tests/", "bench/")), name)
            self.assertNotIn("__pycache__", name)
        # Every file of the package directory ships, data files included; the build
        # backend that made it does not.
        shipped = {n for n in names if n.startswith("equabot_gw/")}
        expected = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
        expected.remove("equabot_gw/_build.py")
        self.assertEqual(shipped, expected)
        self.assertIn("equabot_gw/conformance/openai-chat-schemas.json", shipped)
        self.assertIn("equabot_gw/py.typed", shipped)          # type checkers read its hints
        # Zero runtime dependencies, the version of the source, the console script.
        self.assertEqual(metadata.get_all("Requires-Dist"), None)
        self.assertEqual(metadata["Version"], source_version())
        self.assertEqual(metadata["Requires-Python"], ">=3.11")
        self.assertEqual(metadata["License-Expression"], "MIT")
        self.assertRegex(entry_points, r"(?m)^equabot-gw\s*=\s*equabot_gw\.cli:main\s*$")


# A program that embeds the installed gateway: three starts of one Gateway on
# one state dir, with its own Python provider, answering a keyed chat
# completion and an `agent` run over WebSocket each time; then run_agent
# streaming events with no server at all. Prints what it saw.
EMBEDDING_PROGRAM = """
import asyncio, json, os, sys, urllib.request
import equabot_gw
from equabot_gw import Ended, Gateway, Started, TextDelta, Usage, run_agent
from equabot_gw.gateway.client import ControlClient

async def reverse(call):
    # The embedding program is the model: the newest message, reversed, in two deltas.
    text = call.messages[-1].text()[::-1]
    yield TextDelta(text[:2])
    yield TextDelta(text[2:])
    yield Usage(1, 1)

def post(url):
    request = urllib.request.Request(
        url + "/v1/chat/completions", method="POST",
        data=json.dumps({"model": "equabot", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Authorization": "Bearer embed-token", "Content-Type": "application/json",
                 "x-equabot-session-key": "embedded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["choices"][0]["message"]["content"]

async def over_ws(url, message):
    client = await ControlClient.open(url, "embed-token")
    try:
        req_id = client.send("agent", {"message": message, "idempotencyKey": message + url})
        while True:
            frame = await asyncio.wait_for(client.next_frame(), 10)
            if frame.get("id") == req_id and frame["payload"].get("status") != "accepted":
                return frame["payload"]["result"]["payloads"][0]["text"]
    finally:
        await client.close()

async def main(state_dir):
    config = {"gateway": {"auth": {"token": "embed-token"},
                          "http": {"endpoints": {"chatCompletions": {"enabled": True}}}}}
    gateway = Gateway.from_config(config, state_dir=state_dir, port=0, env={})
    replies, custom = [], []
    for n in range(3):
        async with gateway:
            replies.append(await asyncio.get_running_loop().run_in_executor(None, post, gateway.url))
    mine = Gateway.from_config({**config, "agents": {"defaults": {"model": "rev"}}},
                               state_dir=os.path.join(state_dir, "mine"), port=0, env={},
                               providers={"rev": reverse})
    async with mine:
        custom.append(await asyncio.get_running_loop().run_in_executor(None, post, mine.url))
        custom.append(await over_ws(mine.url, "websocket"))
    events = [type(event).__name__ async for event in run_agent("abc", providers={"rev": reverse},
                                                                  model="rev")]
    print(json.dumps({"file": equabot_gw.__file__, "all": equabot_gw.__all__, "replies": replies,
                      "custom": custom, "events": events, "isolated": sys.flags.isolated}))

asyncio.run(main(sys.argv[1]))
"""


class SourceInstallTest(InstalledCommandChecks):
    """``pip install .`` and ``pipx install .`` from a copy of the checkout."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.box = Sandbox()
        try:
            cls.src = copy_checkout(cls.box.dir / "src")
        except BaseException:
            cls.box.cleanup()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.box.cleanup()

    def test_pip_install_dot(self) -> None:
        venv = self.box.venv("pip-venv")
        self.box.pip_install(venv, ".", cwd=self.src)
        self.assert_command_works(venv / "bin" / "equabot-gw")

    def test_sdist_rebuilds_and_installs_offline(self) -> None:
        """The sdist carries the build backend: a packager rebuilds the wheel from it alone."""
        out = self.box.dir / "sdist"
        out.mkdir()
        code = ("import sys; sys.path.insert(0, 'equabot_gw'); import _build as b; "     # as backend-path does
                f"print(b.build_sdist({str(out)!r}))")
        name = run([sys.executable, "-I", "-c", code], cwd=self.src, env=self.box.env, timeout=60).stdout.strip()
        with tarfile.open(out / name) as sdist:
            names = set(sdist.getnames())
        base = name.removesuffix(".tar.gz")
        for member in ("PKG-INFO", "pyproject.toml", "equabot_gw/_build.py", "equabot_gw/py.typed",
                       "tests/test_install.py", "config.example.json5"):
            self.assertIn(f"{base}/{member}", names)
        self.assertFalse([n for n in names if "__pycache__" in n or n.endswith(".pyc")])
        venv = self.box.venv("sdist-venv")
        self.box.pip_install(venv, str(out / name))
        self.assert_command_works(venv / "bin" / "equabot-gw")

    def test_editable_install_runs_the_source(self) -> None:
        venv = self.box.venv("editable-venv")
        self.box.pip_install(venv, "-e", ".", cwd=self.src)
        result = run([str(venv / "bin" / "python"), "-c", "import equabot_gw; print(equabot_gw.__file__)"],
                     cwd=self.box.outside, env=self.box.env, timeout=60)
        self.assertEqual(pathlib.Path(result.stdout.strip()), self.src / "equabot_gw" / "__init__.py")
        helped = run([str(venv / "bin" / "equabot-gw"), "--version"], cwd=self.box.outside,
                     env=self.box.env, timeout=60)
        self.assertIn(source_version(), helped.stdout)

    def test_an_older_python_is_refused_in_one_line(self) -> None:
        """``pip install .`` for Python 3.10 (or older) ends in the backend's one line, no traceback."""
        old = _older_python()
        if old is None:
            self.skipTest("no Python older than 3.11 on this machine (python3.10, pyenv)")
        venv = self.box.dir / "old-venv"
        run([old, "-m", "venv", "--without-pip", str(venv)], env=self.box.env)
        result = subprocess.run(self.box.pip + ["--python", str(venv / "bin" / "python"), "install",
                                                "--disable-pip-version-check", "--no-input", "."],
                                capture_output=True, text=True, timeout=PIP_TIMEOUT, cwd=self.src,
                                env=self.box.offline_env)
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertRegex(output, r"equabot_gw needs Python 3\.11 or newer; this is Python 3\.\d+\.\d+")
        self.assertNotIn("Traceback", output)
        self.assertFalse(list(venv.glob("lib/python*/site-packages/equabot_gw*")))

    def test_pipx_install_dot(self) -> None:
        tool = self.box.venv("pipx-tool")
        try:
            self.box.pip_install(tool, "pipx", online=True)
        except AssertionError as exc:
            self.skipTest(f"pipx could not be installed into a throwaway venv: {str(exc)[-500:]}")
        pipx_home, bin_dir = self.box.dir / "pipx-home", self.box.dir / "pipx-bin"
        env = dict(self.box.env, PIPX_HOME=str(pipx_home), PIPX_BIN_DIR=str(bin_dir),
                   PIPX_MAN_DIR=str(self.box.dir / "pipx-man"))
        run([str(tool / "bin" / "pipx"), "install", "."], cwd=self.src, env=env)
        command = bin_dir / "equabot-gw"
        self.assertTrue(command.resolve().is_relative_to(pipx_home), command.resolve())
        self.assert_command_works(command)


if __name__ == "__main__":
    unittest.main()
