"""One gateway per state dir: an advisory lock that also says where that gateway listens.

Owns ``<state-dir>/gateway.lock``. A gateway holds an exclusive ``flock`` on
it for its whole life and writes its pid and URL into it, so a second gateway
on the same state dir refuses to start (two writers would interleave
transcripts and fight over indexes), and CLI commands that touch sessions can
find the running gateway and go through it instead of editing files behind
its back. The kernel drops the lock when the process dies, SIGKILL included.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import ConfigError

LOCK_FILE: Final = "gateway.lock"


@dataclass(frozen=True, slots=True)
class Holder:
    """The gateway that holds a state dir: its pid and URL."""

    pid: int
    url: str


class StateLock:
    """The exclusive lock on a state dir; ``release()`` (or process exit) frees it."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def announce(self, url: str) -> None:
        """Record this process's pid and ``url`` for CLI commands to find."""
        assert self._fd is not None
        data = json.dumps({"pid": os.getpid(), "url": url}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)      # closing the descriptor drops the flock
            self._fd = None


def acquire(state_dir: Path) -> StateLock:
    """Lock ``state_dir`` for this gateway; ``ConfigError`` if another gateway holds it."""
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        who = f"pid {holder.pid} at {holder.url}" if holder else "another process"
        raise ConfigError("", f"state dir {state_dir} is in use by a running gateway ({who}); "
                              f"stop it or pass another --state-dir") from None
    return StateLock(fd, path)


def holder(state_dir: Path) -> Holder | None:
    """The gateway running on ``state_dir``, or None when none holds the lock."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> Holder | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return Holder(int(data["pid"]), str(data["url"]))
    except (ValueError, TypeError, KeyError, OSError):
        return None
