"""Rules of the house that code can check: stdlib-only imports and the direction of imports."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "equabot_gw"


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


class LayoutTest(unittest.TestCase):
    def test_runtime_imports_only_the_standard_library(self) -> None:
        allowed = set(sys.stdlib_module_names) | {"equabot_gw", "__future__"}
        for path in PACKAGE.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    with self.subTest(path=str(path.relative_to(ROOT)), module=name):
                        self.assertIn(name.split(".")[0], allowed)

    def test_package_imports_with_site_packages_disabled(self) -> None:
        # Standard library alone: -E -s -S from the repository root.
        modules = ["equabot_gw.cli", "equabot_gw.gateway.app", "equabot_gw.agent_cli",
                   "equabot_gw.conformance"]
        code = "import " + ", ".join(modules)
        result = subprocess.run([sys.executable, "-E", "-s", "-S", "-c", code], cwd=ROOT,
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_import_direction(self) -> None:
        rules = {
            "net": ("equabot_gw.config", "equabot_gw.gateway", "equabot_gw.agents", "equabot_gw.providers",
                    "equabot_gw.auth"),
            "agents": ("equabot_gw.net", "equabot_gw.gateway"),
            "providers": ("equabot_gw.gateway",),
        }
        for folder, banned in rules.items():
            for path in (PACKAGE / folder).rglob("*.py"):
                for line, module in imported_modules(path):
                    with self.subTest(path=str(path.relative_to(ROOT)), line=line):
                        self.assertFalse(module.startswith(banned), module)

    def test_modules_stay_small(self) -> None:
        # STYLE 7: modules up to ~700 lines.
        for path in PACKAGE.rglob("*.py"):
            with self.subTest(path=str(path.relative_to(ROOT))):
                self.assertLessEqual(len(path.read_text(encoding="utf-8").splitlines()), 760)

    def test_only_cli_calls_sys_exit(self) -> None:
        for path in PACKAGE.rglob("*.py"):
            if path.name == "cli.py":
                continue
            with self.subTest(path=str(path.relative_to(ROOT))):
                self.assertNotIn("sys.exit(", path.read_text(encoding="utf-8"))

    def test_peer_input_is_never_checked_with_assert_in_parsers(self) -> None:
        # STYLE 12: -O strips asserts.
        for name in ("net/http11.py", "net/websocket.py", "json5.py", "net/client.py"):
            tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
            with self.subTest(module=name):
                self.assertFalse([n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)])


if __name__ == "__main__":
    unittest.main()
