"""The package's PEP 517 build backend, in the standard library alone (PEP 517, 660).

Not part of the gateway: pip imports it to build the package, and the wheel
leaves it out (the sdist carries it, to be rebuilt from). pyproject.toml names
it as ``_build`` with ``backend-path = ["equabot_gw"]`` and ``requires = []``
(a module of its own: importing the package would refuse an old Python with
an ``ImportError``, which pip shows as its own traceback), so ``pip install .``, ``pip wheel .`` and ``python -m build`` need nothing
from a package index: they work offline, in a virtual environment that holds
pip alone. It builds what this project is and nothing more: one pure-Python
package (``[tool.equabot-build] package``, every file in it but caches), the
``[project]`` table's metadata (core metadata 2.4, PEP 639 license fields),
its console scripts, an sdist (the package, the license files, this backend,
``[tool.equabot-build.sdist] include``), and an editable wheel (a ``.pth``).
Archives are reproducible: sorted, with one timestamp (``SOURCE_DATE_EPOCH``,
else 2016-01-01) and normalised permissions.

On a Python older than 3.11 (which the package does not run on) every hook
refuses with one line, which pip shows as the build's output, not a
traceback. The module must therefore import on Python 3.7 and later.
"""

from __future__ import annotations

import ast
import base64
import glob
import gzip
import hashlib
import io
import os
import sys
import tarfile
import time
import zipfile
from pathlib import Path, PurePosixPath

if sys.version_info >= (3, 11):
    import tomllib

ROOT = Path(__file__).resolve().parent.parent
BACKEND = PurePosixPath(Path(__file__).resolve().relative_to(ROOT).as_posix())     # equabot_gw/_build.py
DEFAULT_EPOCH = 1451606400                  # 2016-01-01, where SOURCE_DATE_EPOCH is not set
SKIPPED = ("__pycache__", ".pyc", ".pyo")


class _Project:
    """pyproject.toml, read once: names, version and the files that ship."""

    def __init__(self) -> None:
        data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        self.meta = data["project"]
        self.options = data.get("tool", {}).get("equabot-build", {})
        self.package = self.options.get("package", self.meta["name"])
        self.name = self.meta["name"].replace("-", "_")
        self.version = self.meta.get("version") or _source_version(ROOT / self.package / "__init__.py")
        self.dist_info = f"{self.name}-{self.version}.dist-info"
        self.epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))

    def package_files(self) -> list[PurePosixPath]:
        """The files the wheel installs: the package's, this backend aside."""
        return [path for path in _files_under(ROOT / self.package) if path != BACKEND]

    def license_files(self) -> list[PurePosixPath]:
        found = {PurePosixPath(Path(p).relative_to(ROOT).as_posix())
                 for pattern in self.meta.get("license-files", ())
                 for p in glob.glob(str(ROOT / pattern), recursive=True) if Path(p).is_file()}
        return sorted(found)

    def metadata(self) -> bytes:
        m = self.meta
        lines = ["Metadata-Version: 2.4", f"Name: {m['name']}", f"Version: {self.version}"]
        if "description" in m:
            lines.append(f"Summary: {m['description']}")
        if m.get("keywords"):
            lines.append(f"Keywords: {','.join(m['keywords'])}")
        authors = [a["name"] for a in m.get("authors", ()) if "name" in a]
        if authors:
            lines.append(f"Author: {', '.join(authors)}")
        if "requires-python" in m:
            lines.append(f"Requires-Python: {m['requires-python']}")
        if isinstance(m.get("license"), str):
            lines.append(f"License-Expression: {m['license']}")
        lines += [f"License-File: {path}" for path in self.license_files()]
        lines += [f"Classifier: {c}" for c in m.get("classifiers", ())]
        lines += [f"Requires-Dist: {d}" for d in m.get("dependencies", ())]
        for label, url in m.get("urls", {}).items():
            lines.append(f"Project-URL: {label}, {url}")
        readme = m.get("readme")
        if isinstance(readme, str):
            kind = "text/markdown" if readme.endswith(".md") else "text/plain"
            lines.append(f"Description-Content-Type: {kind}")
            return ("\n".join(lines) + "\n\n" + (ROOT / readme).read_text(encoding="utf-8")).encode()
        return ("\n".join(lines) + "\n").encode()

    def dist_info_files(self) -> dict[str, bytes]:
        files = {
            "METADATA": self.metadata(),
            "WHEEL": b"Wheel-Version: 1.0\nGenerator: equabot_build\nRoot-Is-Purelib: true\n"
                     b"Tag: py3-none-any\n",
        }
        scripts = self.meta.get("scripts", {})
        if scripts:
            body = "".join(f"{name} = {target}\n" for name, target in scripts.items())
            files["entry_points.txt"] = f"[console_scripts]\n{body}".encode()
        for path in self.license_files():
            files[f"licenses/{path}"] = (ROOT / path).read_bytes()
        return files


def _source_version(init: Path) -> str:
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{init} sets no __version__")


def _files_under(top: Path) -> list[PurePosixPath]:
    return sorted(PurePosixPath(p.relative_to(ROOT).as_posix()) for p in top.rglob("*")
                  if p.is_file() and not any(part.endswith(SKIPPED) for part in p.parts))


class _Wheel:
    """A wheel being written: each file recorded, RECORD last."""

    def __init__(self, project: _Project, path: Path) -> None:
        self.project = project
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)
        self.record: list[str] = []
        self.stamp = time.gmtime(max(project.epoch, 315532800))[:6]     # zip cannot go before 1980

    def add(self, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, self.stamp)
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zip.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self.record.append(f"{name},sha256={digest},{len(data)}")

    def finish(self) -> None:
        for name, data in self.project.dist_info_files().items():
            self.add(f"{self.project.dist_info}/{name}", data)
        record = f"{self.project.dist_info}/RECORD"
        self.record.append(f"{record},,")
        info = zipfile.ZipInfo(record, self.stamp)
        info.external_attr = 0o644 << 16
        self.zip.writestr(info, "".join(line + "\n" for line in self.record))
        self.zip.close()


def _wheel_name(project: _Project) -> str:
    return f"{project.name}-{project.version}-py3-none-any.whl"


def _supported_python() -> None:
    """Refuse a Python the package cannot run on: ``SystemExit`` with one line, which
    pip prints as the hook's output and then stops (the package's own refusal,
    an ``ImportError``, would reach the user as a traceback)."""
    if sys.version_info < (3, 11):
        found = ".".join(map(str, sys.version_info[:3]))
        raise SystemExit(f"equabot_gw needs Python 3.11 or newer; this is Python {found}")


# ---- the PEP 517 / PEP 660 hooks ----
def get_requires_for_build_wheel(config_settings: dict | None = None) -> list[str]:
    _supported_python()
    return []


get_requires_for_build_sdist = get_requires_for_build_editable = get_requires_for_build_wheel


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: dict | None = None) -> str:
    _supported_python()
    project = _Project()
    target = Path(metadata_directory) / project.dist_info
    for name, data in project.dist_info_files().items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    return project.dist_info


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory: str, config_settings: dict | None = None,
                metadata_directory: str | None = None) -> str:
    _supported_python()
    project = _Project()
    wheel = _Wheel(project, Path(wheel_directory) / _wheel_name(project))
    for path in project.package_files():
        wheel.add(str(path), (ROOT / path).read_bytes())
    wheel.finish()
    return _wheel_name(project)


def build_editable(wheel_directory: str, config_settings: dict | None = None,
                   metadata_directory: str | None = None) -> str:
    """A wheel whose ``.pth`` puts this source tree on ``sys.path``: edits take effect at once."""
    _supported_python()
    project = _Project()
    wheel = _Wheel(project, Path(wheel_directory) / _wheel_name(project))
    wheel.add(f"{project.name}.pth", f"{ROOT}\n".encode())
    wheel.finish()
    return _wheel_name(project)


def build_sdist(sdist_directory: str, config_settings: dict | None = None) -> str:
    _supported_python()
    project = _Project()
    base = f"{project.name}-{project.version}"
    included = project.options.get("sdist", {}).get("include", ())
    paths = {PurePosixPath("pyproject.toml"), BACKEND, *project.package_files(), *project.license_files()}
    if isinstance(project.meta.get("readme"), str):
        paths.add(PurePosixPath(project.meta["readme"]))
    for entry in included:
        source = ROOT / entry
        paths.update(_files_under(source) if source.is_dir() else [PurePosixPath(entry)])
    name = f"{base}.tar.gz"
    with open(Path(sdist_directory) / name, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=project.epoch) as packed, \
            tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(paths):
            _add_to_tar(tar, f"{base}/{path}", (ROOT / path).read_bytes(), project.epoch)
        _add_to_tar(tar, f"{base}/PKG-INFO", project.metadata(), project.epoch)
    return name


def _add_to_tar(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), epoch, 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
