"""The documentation, run: every command block of README.md and docs/*.md marked runnable.

The first fenced ``sh`` block after a line ``<!-- runnable -->`` (a title
line may stand between) is one a user would paste; ``<!-- runnable: expect
"text" expect "more" -->`` also names what its output must contain. The runnable blocks of one file run in
order in one bash session, as a user pastes them one after another into one
terminal (``set -e -o pipefail``: a failing command fails its block), in a
temporary directory that stands in for the user's machine:

- ``HOME`` and the docs' ``/tmp/equabot`` paths point into it, and the docs'
  port 18789 becomes a free port — in the commands and in the copy of
  ``config.example.json5`` put there, so other gateways on this machine do
  not matter;
- ``python`` is this interpreter and the package comes from this checkout;
  no network is needed.

Whatever the blocks leave running in the background is stopped at the end.
So the docs cannot drift from the code: a renamed flag, a changed message or
a start-up race fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
DOCS_PORT = "18789"
DOCS_TMP = "/tmp/equabot"
TIMEOUT = 120.0
MARK = "@@walkthrough-block"

_BLOCK = re.compile(r"^<!-- runnable(?::(?P<spec>[^\n]*?))? -->\n(?:(?!```)[^\n]*\n)*?"
                    r"```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$", re.M | re.S)
_EXPECT = re.compile(r'expect "((?:[^"\\]|\\.)*)"')
_MARKER = re.compile(r"^<!-- runnable\b", re.M)


@dataclass(frozen=True)
class Block:
    """One runnable block: where it is, its commands and what its output must contain."""

    document: Path
    line: int
    lang: str
    commands: str
    expects: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def runnable_blocks(document: Path) -> list[Block]:
    """The runnable blocks of ``document``, in order."""
    text = document.read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        expects = tuple(e.replace('\\"', '"') for e in _EXPECT.findall(match.group("spec") or ""))
        blocks.append(Block(document, text.count("\n", 0, match.start()) + 1, match.group("lang"),
                            match.group("body"), expects))
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WalkthroughTest(unittest.TestCase):
    def test_every_marker_is_on_a_shell_block(self) -> None:
        for document in DOCUMENTS:
            text = document.read_text(encoding="utf-8")
            blocks = runnable_blocks(document)
            with self.subTest(document.name):
                self.assertEqual(len(_MARKER.findall(text)), len(blocks),
                                 "a runnable marker must come before a ``` fence")
                for block in blocks:
                    self.assertEqual(block.lang, "sh", str(block))

    def test_the_readme_walks_through_start_requests_cli_and_stop(self) -> None:
        commands = "\n".join(b.commands for b in runnable_blocks(ROOT / "README.md"))
        for step in ("python -m equabot_gw --config", "/v1/chat/completions", "equabot_gw agent",
                     "equabot_gw sessions", "kill $GATEWAY"):
            self.assertIn(step, commands)

    def test_the_documents_as_written(self) -> None:
        for document in DOCUMENTS:
            blocks = runnable_blocks(document)
            if blocks:
                with self.subTest(document.name):
                    self.walk(blocks)

    def walk(self, blocks: list[Block]) -> None:
        if any("curl " in b.commands for b in blocks) and shutil.which("curl") is None:
            if os.environ.get("EQUABOT_INTEROP"):
                self.fail("curl is not installed (make test requires it)")
            self.skipTest("curl is not installed")
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            port = str(free_port())
            (home / "home").mkdir()
            (home / "bin").mkdir()
            (home / "bin" / "python").symlink_to(sys.executable)
            example = (ROOT / "config.example.json5").read_text(encoding="utf-8")
            (home / "config.example.json5").write_text(example.replace(DOCS_PORT, port), encoding="utf-8")
            script = ["set -e -o pipefail"]
            for index, block in enumerate(blocks):
                commands = block.commands.replace(DOCS_PORT, port).replace(DOCS_TMP, str(home / "equabot"))
                script += [f"printf '\\n{MARK} {index}\\n'", commands]
            script.append(f"printf '\\n{MARK} end\\n'")
            env = {k: v for k, v in os.environ.items() if not k.startswith("EQUABOT_")}
            env.update(HOME=str(home / "home"), PATH=f"{home / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                       PYTHONPATH=str(ROOT))
            # Output goes to files: a gateway left in the background keeps its copy of
            # stderr open, and a pipe would then never reach EOF.
            out_path, err_path = home / "stdout", home / "stderr"
            with open(out_path, "w") as out, open(err_path, "w") as err:
                proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=home, env=env,
                                        stdout=out, stderr=err, start_new_session=True)
                try:
                    proc.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
                finally:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)     # whatever the blocks left running
                    except ProcessLookupError:
                        pass
                    proc.wait()
            stdout, stderr = out_path.read_text(), err_path.read_text()
            outputs = re.split(rf"\n{MARK} (\d+|end)\n", "\n" + stdout)
            ran = dict(zip(outputs[1::2], outputs[2::2]))
            for index, block in enumerate(blocks):
                finished = str(index + 1) if index + 1 < len(blocks) else "end"
                if finished not in ran:         # set -e stopped the script in this block
                    self.fail(f"the block at {block} failed (exit {proc.returncode}):\n{block.commands}\n"
                              f"--- its output:\n{ran.get(str(index), '')[-3000:]}\n"
                              f"--- stderr:\n{stderr[-3000:]}")
                for expected in block.expects:
                    if expected not in ran[str(index)]:
                        self.fail(f"the output of the block at {block} lacks {expected!r}:\n"
                                  f"{ran[str(index)][-3000:]}")
            self.assertEqual(proc.returncode, 0, stderr[-3000:])

if __name__ == "__main__":
    unittest.main()
