"""One gateway per state dir: an advisory lock that also says where that gateway listens.

Owns ``<state-dir>/gateway.lock``. A gateway holds an exclusive ``flock`` on
the state directory itself (Linux locks a directory's descriptor as any
other), so removing the lock file, as a "stale lock" clean-up might, frees
nothing; and on the lock file too, as earlier versions did, so that a
gateway of either kind sees the other. It writes a small record into the file — its pid, its URL,
the config file it was started with and its auth mode (never a secret) — so
a second gateway on the same state dir refuses to start (two writers would
interleave transcripts and fight over indexes), and CLI commands can find the
running gateway and go through it instead of editing files behind its back.
The kernel drops the lock when the process dies, SIGKILL included; the
record stays in the file, so commands run later still know which config the
state dir's gateway last ran with. Taking the lock clears the old record's URL
(its config stays): until the new holder announces its own, nobody is sent to
where the last gateway listened.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import stat
import time
import weakref
from pathlib import Path
from typing import Final, NamedTuple

from . import safejson
from .errors import GatewayError

LOCK_FILE: Final = "gateway.lock"
# The record is a few hundred bytes; anything longer is not ours.
MAX_RECORD_BYTES: Final = 8192
# holder() probes the lock by taking it shared for an instant: acquire() tries
# again for this long (seconds) before it takes a lock it meets for a holder's.
PROBE_GRACE: Final = 0.5


class StateDirInUse(GatewayError):
    """Another gateway (or ``agent --local``) holds the state dir."""

    def __init__(self, state_dir: Path, holder: Holder | None, hint: str = "") -> None:
        self.state_dir = state_dir
        self.holder = holder
        if holder is not None and not holder.url:       # agent --local, a reset, a gateway still starting
            who = f"another process (pid {holder.pid})"
        else:
            who = f"a running gateway ({f'pid {holder.pid} at {holder.url}' if holder else 'another process'})"
        super().__init__(f"state dir {state_dir} is in use by {who}; "
                         + (f"{hint}, " if hint else "") + "stop it or pass another --state-dir")


class LockFileError(GatewayError):
    """Something other than a regular file is where the lock file belongs."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        super().__init__(f"lock file {path} is not a regular file ({what}); "
                         "remove it or pass another --state-dir")


class Holder(NamedTuple):
    """What a gateway recorded about itself: pid, URL, config file (None: defaults) and auth mode.

    ``url`` is "" and ``auth_mode`` None when the holder recorded nothing
    (an ``agent --local`` run holds the lock without a URL).
    """

    pid: int
    url: str
    config_path: str | None = None
    auth_mode: str | None = None


class StateLock:
    """The exclusive lock on a state dir; ``release()`` (or process exit) frees it."""

    def __init__(self, fd: int, path: Path, dir_fd: int | None = None) -> None:
        self._fd: int | None = fd
        self._dir_fd = dir_fd
        self.path = path
        _held.add(self)

    def announce(self, url: str, *, config_path: Path | None = None,
                 auth_mode: str | None = None) -> None:
        """Record this process's pid, ``url``, config file and auth mode for CLI commands to find."""
        assert self._fd is not None
        _write(self._fd, url, None if config_path is None else str(Path(config_path).resolve()), auth_mode)

    def release(self) -> None:
        for fd in (self._fd, self._dir_fd):
            if fd is not None:
                os.close(fd)        # closing the descriptor drops its flock
        self._fd = self._dir_fd = None
        _held.discard(self)


# The locks this process holds. A forked child inherits their descriptors, and
# a flock lasts while any descriptor of it is open: a worker forked by an
# embedding program would keep the state dir locked after the gateway itself
# stopped or died. The child closes its copies at once (the parent's lock
# stays whole: it lives on in the parent's descriptors).
_held: weakref.WeakSet[StateLock] = weakref.WeakSet()


def _drop_inherited() -> None:
    for lock in list(_held):
        for fd in (lock._fd, lock._dir_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        lock._fd = lock._dir_fd = None
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited)


def acquire(state_dir: Path, wait: float = PROBE_GRACE) -> StateLock:
    """Lock ``state_dir`` for this process; ``StateDirInUse`` if another one holds it.

    A lock held for an instant (a command's ``holder()`` probe) is waited out:
    the refusal comes when it is still held ``wait`` seconds later (a blocking
    wait: in an event loop, pass 0 and retry with ``asyncio.sleep``, as
    ``acquire_async`` does).

    The lock is on the directory and on its lock file; it outlives the file's
    removal. A file system that cannot lock a directory leaves the file's lock alone.
    """
    path = state_dir / LOCK_FILE
    deadline = time.monotonic() + wait
    dir_fd = _lock_dir(state_dir, fcntl.LOCK_EX, deadline)
    try:
        fd = _open(path, os.O_RDWR | os.O_CREAT)
        if fd is None:
            raise LockFileError(path, _kind(path))
    except BaseException:
        if dir_fd is not None:
            os.close(dir_fd)
        raise
    try:
        _flock(fd, fcntl.LOCK_EX, deadline)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        if dir_fd is not None:
            os.close(dir_fd)
        raise StateDirInUse(state_dir, holder) from None
    # Until it announces itself, the file names the last gateway: its URL is nobody's
    # now (or another program's). Keep only the config it ran with, for commands to follow.
    try:
        last = _read(fd)
        _write(fd, "", last.config_path if last else None, None)
    except BaseException:
        os.close(fd)
        if dir_fd is not None:
            os.close(dir_fd)
        raise
    return StateLock(fd, path, dir_fd)


def _write(fd: int, url: str, config: str | None, auth_mode: str | None) -> None:
    """This process's record into the lock file ``fd``: written over the old one (padded with
    spaces to its length), then cut to length, so a process killed in between leaves a whole
    record, never an empty file."""
    data = json.dumps({"pid": os.getpid(), "url": url, "config": config, "authMode": auth_mode}).encode()
    os.pwrite(fd, data.ljust(min(os.fstat(fd).st_size, MAX_RECORD_BYTES)), 0)
    os.ftruncate(fd, len(data))


async def acquire_async(state_dir: Path) -> StateLock:
    """``acquire`` for a coroutine: the ``PROBE_GRACE`` wait is spent in ``asyncio.sleep``
    between attempts, so a refused start never holds its event loop."""
    deadline = time.monotonic() + PROBE_GRACE
    while True:
        try:
            return acquire(state_dir, wait=0)
        except StateDirInUse:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.01)


def _flock(fd: int, how: int, deadline: float | None) -> None:
    """``flock(fd, how)`` without blocking, tried again until ``deadline`` (monotonic; None: once);
    ``BlockingIOError`` when it is still held then."""
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if deadline is None or time.monotonic() >= deadline:
                raise
        time.sleep(0.002)


def _lock_dir(state_dir: Path, how: int, deadline: float | None = None) -> int | None:
    """A descriptor of ``state_dir`` holding ``flock(how)``; None where directories cannot be
    locked. ``StateDirInUse`` (with the lock file's record, if any) when another process holds
    it (still, at ``deadline``)."""
    try:
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None         # then the lock file's open says what is wrong
    try:
        _flock(fd, how, deadline)
    except BlockingIOError:
        os.close(fd)
        raise StateDirInUse(state_dir, last_record(state_dir)) from None
    except OSError:         # a file system without flock on directories
        os.close(fd)
        return None
    return fd


def holder(state_dir: Path) -> Holder | None:
    """The gateway running on ``state_dir`` (its record), or None when none holds the lock.

    A lock held by a process that recorded no URL (``agent --local``) is not
    a gateway to talk to: None too.
    """
    try:
        dir_fd = _lock_dir(state_dir, fcntl.LOCK_SH)
    except StateDirInUse as exc:        # held, whether or not its lock file is still there
        return exc.holder if exc.holder is not None and exc.holder.url else None
    if dir_fd is not None:
        os.close(dir_fd)
    try:
        fd = _open(state_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    if fd is None:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            found = _read(fd)
            return found if found is not None and found.url else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def last_record(state_dir: Path) -> Holder | None:
    """What the state dir's gateway recorded last, running or not (None if nothing readable)."""
    try:
        fd = _open(state_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    if fd is None:
        return None
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _open(path: Path, flags: int) -> int | None:
    """``path`` opened with ``flags``; None when it is not a regular file.

    Opened without waiting: a FIFO in the lock file's place would otherwise
    block the open until some writer comes, and a command with it. A symlink
    is not followed: the gateway would truncate and overwrite the file it names.
    """
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC, 0o600)
    except IsADirectoryError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:        # O_NOFOLLOW's answer for a symlink
            return None
        raise
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _kind(path: Path) -> str:
    """What ``path`` is, in a word, for an error message."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "unknown")
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a symlink" if stat.S_ISLNK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")


def _read(fd: int) -> Holder | None:
    """The record in the lock file; None when it is empty, foreign or damaged."""
    try:
        data = safejson.loads(os.pread(fd, MAX_RECORD_BYTES, 0) or b"null", max_depth=2)
    except (ValueError, OSError):
        return None
    if not isinstance(data, dict):
        return None
    pid, url, config, mode = (data.get(k) for k in ("pid", "url", "config", "authMode"))
    if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(url, str):
        return None
    return Holder(pid, url, config if isinstance(config, str) else None,
                  mode if mode in ("token", "password", "none") else None)
