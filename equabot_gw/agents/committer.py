"""The group-commit writer: the one thread that writes session files, and its disk primitives.

``Committer`` takes every append queued on the loop, writes each file's
appends with one write and one fdatasync, runs jobs (reads, renames, index
writes: functions of ``transcripts`` bound with ``functools.partial``, given
the committer last) in queue order between them, and resolves the batch on
the loop. What the files hold is ``transcripts``' and ``lines``'; this module
knows paths and bytes only. Imports nothing from equabot_gw.net or
equabot_gw.gateway.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import logging
import os
import queue
import stat
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Final

from equabot_gw import errors

__all__ = ["MAX_OPEN_FILES", "CLOEXEC", "Committer", "CommitStats", "storage_error", "write_all", "fsync_dir",
           "make_dirs", "read_regular"]

log = logging.getLogger("equabot_gw.sessions")    # one logger for the whole session store

_write = os.write      # module-level so that a test can inject a disk fault here alone
# fdatasync flushes the data and the metadata needed to read it back (the file
# size), skipping only timestamps: all an append needs. macOS has no fdatasync.
_fdatasync = getattr(os, "fdatasync", os.fsync)
CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)     # 0 where the platform has none
_APPEND_FLAGS: Final = os.O_RDWR | os.O_APPEND | os.O_CREAT | CLOEXEC


def read_regular(path: str, max_bytes: int | None = None, *, tail: bool = False) -> bytes:
    """The bytes of the regular file at ``path`` (a symlink to one is followed).

    Anything else is refused before a byte is read: a FIFO would block the
    reader forever (it is opened without blocking), a device such as
    /dev/zero never ends. Raises OSError: FileNotFoundError, EINVAL "not a
    regular file", or EFBIG when the file is over ``max_bytes`` — unless
    ``tail``, which returns its last ``max_bytes`` instead, from the first
    line that starts within them (a line cut by them is left out).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        size = info.st_size
        if max_bytes is None or size <= max_bytes:
            with open(fd, "rb", closefd=False) as f:
                return f.read() if max_bytes is None else f.read(max_bytes)
        if not tail:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", path)
        # One byte more, before the cut: a newline there says the first line is whole.
        data = os.pread(fd, max_bytes + 1, size - max_bytes - 1)
        cut = data.find(b"\n")
        return data[cut + 1:] if cut >= 0 else b""     # from the first line that starts within them
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[_write(fd, view):]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> None:
    """mkdir -p with mode 0o700, each new entry made durable in its parent."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        make_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fsync_dir(parent)


def _repair(fd: int, path: str) -> int:
    """Cut a torn last line (a crash mid-write) so that appends start clean; the new size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep, end = 0, size
    while end > 0:
        start = max(0, end - 65536)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        end = start
    os.ftruncate(fd, keep)
    log.warning("repaired %s: dropped a torn last line of %d bytes", os.path.basename(path), size - keep)
    return keep


# The errors an operator meets when the state dir's layout is damaged, in plain words.
_PLAIN: Final = {
    errno.ENOTDIR: "a file is where a directory belongs",
    errno.EISDIR: "a directory is where a file belongs",
}
# A job whose step (its ``what``) begins so reads; any other writes.
_READ_STEPS: Final = ("reading", "loading")


def storage_error(phase: str, exc: OSError, *, reading: bool = False) -> errors.StorageError:
    """A ``StorageError`` "<phase> failed: <ERRNO> (<what it means>)" caused by ``exc``.

    Names the step and the errno, never a path or file contents: it may reach
    a client (the path is kept as ``path``, for the operator). A directory that
    could not be made because a file has its name is ENOTDIR, as it is for any
    later step, not EEXIST.
    """
    code = exc.errno or 0
    if code == errno.EEXIST and exc.filename is not None and not os.path.isdir(exc.filename):
        code = errno.ENOTDIR
    name = errno.errorcode.get(code, type(exc).__name__)
    text = _PLAIN.get(code) or (exc.strerror if code == exc.errno else None) or os.strerror(code)
    path = exc.filename if isinstance(exc.filename, str) else None
    err = errors.StorageError(f"{phase} failed: {name} ({text or 'no detail'})", reading=reading, path=path)
    err.__cause__ = exc
    return err


# -- the committer -----------------------------------------------------------

MAX_OPEN_FILES: Final = 256     # append fds kept open: a hot journal is never reopened per turn


@dataclass(slots=True, eq=False)    # compared by identity: ``_STOP in batch`` runs per commit
class _Op:
    """One unit of committer work: an append (``path`` + ``data``) or a job (``fn``)."""

    what: str
    future: asyncio.Future[Any] | None
    path: str = ""
    data: bytes = b""
    fn: Callable[[Committer], Any] | None = None
    on_ok: Callable[[Any], None] | None = None       # run on the loop, in commit order
    on_error: Callable[[BaseException], None] | None = None


_STOP: Final = _Op("stop", None)


class CommitStats:
    """Group commits so far: counts per bound of batch size (appends) and of seconds
    (writes and fdatasyncs), the last one above every bound, and the sums. The
    committer thread writes; anyone may read (a commit's count may show before its sum)."""

    SIZE_BOUNDS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    SECONDS_BOUNDS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
    __slots__ = ("sizes", "size_sum", "seconds", "seconds_sum")

    def __init__(self) -> None:
        self.sizes, self.size_sum = [0] * (len(self.SIZE_BOUNDS) + 1), 0
        self.seconds, self.seconds_sum = [0] * (len(self.SECONDS_BOUNDS) + 1), 0.0

    def add(self, size: int, seconds: float) -> None:
        self.sizes[bisect.bisect_left(self.SIZE_BOUNDS, size)] += 1
        self.size_sum += size
        self.seconds[bisect.bisect_left(self.SECONDS_BOUNDS, seconds)] += 1
        self.seconds_sum += seconds


class Committer:
    """The one thread that touches session files: group-commits appends, runs jobs in order.

    It takes everything queued, writes each file's appends with one write and
    one fdatasync, runs jobs (reads, renames, index writes) in queue order
    between them, then resolves the whole batch with one call_soon_threadsafe.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """A committer resolving its futures and callbacks on ``loop``; ``start()`` runs it."""
        self._loop = loop
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="equabot-sessions-committer", daemon=True)
        self._ended = False   # the thread has returned (or died): what is queued now is never taken
        self.pending = 0      # appends not yet resolved (loop side)
        self.batches = 0      # group commits done (committer side; read-only elsewhere)
        self.stats = CommitStats()    # their sizes and times (committer side; read-only elsewhere)
        self._stopped: asyncio.Future[None] | None = None
        self._fds: OrderedDict[str, list[int]] = OrderedDict()   # path -> [fd, size, inode]; LRU

    # -- event loop side --

    def append(self, what: str, path: str, data: bytes, *, on_ok: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> asyncio.Future[Any]:
        """Queue ``data`` to be appended to ``path`` and fdatasynced (loop side).

        Returns a future set to the offset in the file where ``data`` starts
        once it is durable, or to a ``StorageError``
        naming the step and ``what`` (the file is then cut back to its size
        before); any other exception (a MemoryError, a bug) is logged and
        passed on as is, the file cut back too, and the thread goes on.
        ``on_ok(offset)`` / ``on_error(exc)``, if given, run on the
        loop in commit order before the future resolves, even if it was cancelled.
        """
        future = self._loop.create_future()
        self.pending += 1
        self._put(_Op(what, future, path, data, None, on_ok, on_error))
        return future

    def job(self, what: str, fn: Callable[[Committer], Any], **callbacks: Any) -> asyncio.Future[Any]:
        """Queue ``fn(committer)`` to run in the thread after every earlier append (loop side).

        Returns a future for its result; an OSError becomes a ``StorageError``
        naming ``what``, any other exception is logged and passed on as is.
        ``callbacks`` as for ``append``, with the result or the exception.
        """
        future = self._loop.create_future()
        self._put(_Op(what, future, fn=fn, **callbacks))
        return future

    async def outcome(self, told: list[Any]) -> Any:
        """The outcome of an append whose waiter was cancelled (loop side): what its
        ``on_ok`` put in ``told``, or the error its ``on_error`` did, raised.

        Those callbacks run even when the future was cancelled, so a barrier
        queued after the append resolves once they have; cancelling this wait
        changes nothing (the cancellation stays counted on the task for the
        caller to honour). ``StorageError`` if the thread is not running.
        """
        while not told:
            if not self.running:        # stopped before it took the append: nothing will come
                raise errors.StorageError("the session store is not open")
            try:
                await self.job("waiting for an append being written", _nothing)
            except asyncio.CancelledError:
                pass
        if isinstance(told[0], BaseException):
            raise told[0]
        return told[0]

    def post(self, what: str, fn: Callable[[Committer], Any], **callbacks: Any) -> None:
        """A job nobody waits for: a failure is logged and passed to ``on_error``."""
        self._put(_Op(what, None, fn=fn, **callbacks))

    def _put(self, op: _Op) -> None:
        # Once stopping (or if the thread died), nothing queued would ever be taken:
        # the op fails at once, in a later loop step as a written one would resolve.
        if self._stopped is None and not self._ended:
            self._queue.put(op)
            return
        err = errors.StorageError("the session store is not open")
        log.warning("session store: %s refused: the writer thread has stopped", op.what)
        self._loop.call_soon(self._resolve, [(op, err, True)])

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the thread is there to take what is queued (started, not yet stopped)."""
        return self._thread.is_alive() and self._stopped is None

    async def stop(self) -> None:
        """Finish everything queued before, close every fd, and wait for the thread to end.

        Callers at once all wait for the one stop.
        """
        if not self._thread.is_alive():
            return
        if self._stopped is None:
            self._stopped = self._loop.create_future()
            self._queue.put(_STOP)
        # The thread says when it is done: joining it in an executor would leave an
        # idle executor thread behind in a host program's loop.
        await asyncio.shield(self._stopped)     # a cancelled caller leaves it to the others
        self._thread.join()         # it has returned or is returning: no wait to speak of

    def _resolve(self, results: list[tuple[_Op, Any, bool]]) -> None:
        for op, outcome, failed in results:
            if op.fn is None:
                self.pending -= 1
            callback = op.on_error if failed else op.on_ok
            try:
                if callback is not None:
                    callback(outcome)
            except Exception:            # a bookkeeping bug must not strand the other waiters
                log.exception("session store: callback of %s failed", op.what)
            if op.future is not None and not op.future.done():
                if failed:
                    op.future.set_exception(outcome)
                else:
                    op.future.set_result(outcome)

    # -- committer thread side --

    def _run(self) -> None:
        _yield_to_the_loop()
        try:
            self._take()
        finally:
            self._ended = True

    def _take(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while True:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            stop = _STOP in batch
            self._process([op for op in batch if op is not _STOP] if stop else batch)
            if stop:
                for path in list(self._fds):
                    self.drop_fd(path)
                try:
                    self._loop.call_soon_threadsafe(_set_done, self._stopped)
                except RuntimeError:      # the loop is closed: nobody is waiting any more
                    pass
                return

    def _process(self, batch: list[_Op]) -> None:
        results: list[tuple[_Op, Any, bool]] = []
        appends: list[_Op] = []
        for op in batch:
            if op.fn is None:
                appends.append(op)
                continue
            if appends:           # a job is a barrier: what was queued before it is written first
                self._commit(appends, results)
                appends = []
            try:
                results.append((op, op.fn(self), False))
            except OSError as exc:
                log.warning("session store: %s failed: %s", op.what, exc)
                results.append((op, storage_error(op.what, exc, reading=op.what.startswith(_READ_STEPS)), True))
            except Exception as exc:     # a bug: hand it to the waiter, keep the thread alive
                log.exception("session store: %s failed", op.what)
                results.append((op, exc, True))
        if appends:
            self._commit(appends, results)
        try:
            self._loop.call_soon_threadsafe(self._resolve, results)
        except RuntimeError:      # the loop is closed: nobody is waiting any more
            pass

    def _commit(self, appends: list[_Op], results: list[tuple[_Op, Any, bool]]) -> None:
        started = time.perf_counter()
        self.batches += 1
        groups: dict[str, list[_Op]] = {}
        for op in appends:
            groups.setdefault(op.path, []).append(op)
        failed: dict[str, tuple[str, OSError]] = {}
        broken: dict[str, Exception] = {}
        new_files: dict[str, list[str]] = {}
        starts: dict[str, int] = {}
        for path, group in groups.items():
            try:
                data = group[0].data if len(group) == 1 else b"".join(op.data for op in group)
                start = starts[path] = self._append(path, data)
            except _AppendFailed as exc:
                failed[path] = exc.args
                continue
            except Exception as exc:     # MemoryError, or a bug: fail these appends, keep the thread
                log.exception("session store: appending to %s failed", os.path.basename(path))
                broken[path] = exc
                continue
            if start == 0:        # an empty file may be new: its directory is fsynced too
                new_files.setdefault(os.path.dirname(path), []).append(path)
        for directory, paths in new_files.items():   # a new file is durable once its name is
            try:
                fsync_dir(directory)
            except OSError as exc:
                for path in paths:
                    failed[path] = ("fsync of the directory", exc)
                    self._roll_back(path, 0)
        for path, group in groups.items():
            if path in broken:
                results.extend((op, broken[path], True) for op in group)
                continue
            if path not in failed:
                offset = starts[path]
                for op in group:
                    results.append((op, offset, False))
                    offset += len(op.data)
                continue
            phase, exc = failed[path]
            log.warning("session store: %s of %s failed: %s", phase, os.path.basename(path), exc)
            results.extend((op, storage_error(f"{phase} of {op.what}", exc), True) for op in group)
        self.stats.add(len(appends), time.perf_counter() - started)

    def _append(self, path: str, data: bytes) -> int:
        """Write and fdatasync ``data`` at the end of ``path``; the offset it starts at.

        On failure the file is cut back to its size before (no turn half
        recorded) and its fd dropped, so that the next append reopens and repairs.
        """
        try:
            entry = self._fds.get(path)
            if entry is not None and _moved(path, entry[2]):
                # Removed or replaced behind our back (a restored backup, say): what went
                # to the old file would reach no path. The file at the path is taken.
                log.warning("%s was removed or replaced while open; appending to the file now there",
                            os.path.basename(path))
                self.drop_fd(path)
                entry = None
            if entry is None:
                entry = self._open(path)
            else:
                self._fds.move_to_end(path)
        except OSError as exc:
            raise _AppendFailed("open", exc) from exc
        fd, size = entry[0], entry[1]
        phase = "write"
        try:
            write_all(fd, data)
            phase = "fsync"
            _fdatasync(fd)
        except OSError as exc:
            self._roll_back(path, size)
            raise _AppendFailed(phase, exc) from exc
        except Exception:
            self._roll_back(path, size)
            raise
        entry[1] = size + len(data)
        return size

    def _open(self, path: str) -> list[int]:
        try:
            fd = os.open(path, _APPEND_FLAGS, 0o600)
        except FileNotFoundError:
            make_dirs(os.path.dirname(path))
            fd = os.open(path, _APPEND_FLAGS, 0o600)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):      # a FIFO or a device: no turn is durable there
                raise OSError(errno.EINVAL, "not a regular file", path)
            entry = self._fds[path] = [fd, _repair(fd, path), info.st_ino]
        except OSError:
            os.close(fd)
            raise
        if len(self._fds) > MAX_OPEN_FILES:
            self.drop_fd(next(iter(self._fds)))
        return entry

    def _roll_back(self, path: str, size: int) -> None:
        # A failed turn must leave nothing behind: a retry would record it twice.
        entry = self._fds.get(path)
        try:
            if entry is not None:
                os.ftruncate(entry[0], size)
        except OSError:
            pass              # then the repair at the next open cuts a torn tail
        self.drop_fd(path)

    def drop_fd(self, path: str) -> None:
        """Close ``path``'s append fd if it is open (committer thread only)."""
        entry = self._fds.pop(path, None)
        if entry is not None:
            try:
                os.close(entry[0])
            except OSError:
                pass


def _moved(path: str, inode: int) -> bool:
    """Whether ``path`` no longer names the file of that inode (one stat per file per commit)."""
    try:
        return os.stat(path).st_ino != inode
    except FileNotFoundError:
        return True


def _yield_to_the_loop() -> None:
    """Let the calling thread's wake-ups wait for the loop's turn instead of preempting it (Linux).

    On a core shared with the event loop, an append wakes this thread while
    the loop is still working: preempting it costs two context switches and a
    fdatasync for that one append. Under SCHED_BATCH the thread keeps its fair
    share of the CPU but does not preempt on waking, so it runs when the loop
    waits or its time slice ends (a scheduler tick at most), and the appends
    the loop queued meanwhile share the one fdatasync. Where the thread has a
    core of its own nothing changes. Refused (a sandbox, say): left as it is.
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None or not sys.platform.startswith("linux"):   # elsewhere a pid is not a thread id
        return
    try:
        os.sched_setscheduler(threading.get_native_id(), policy, os.sched_param(0))
    except OSError as exc:
        log.debug("session store: the writer thread keeps its scheduling policy: %s", exc)


def _nothing(_: Committer) -> None:
    return None


def _set_done(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class _AppendFailed(Exception):
    """args: the step of the append that failed, and its OSError."""
