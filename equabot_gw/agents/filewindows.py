"""Session files read a window at a time: never mapped, never read whole.

A window is a bounded ``os.pread``: the memory a read takes is a window (and
a line it reads whole), however long the file, and a file cut short from
outside meanwhile ends the reading where a mapping would take the process
down with SIGBUS. Jobs of the committer thread and its start-up readers use
these; what the lines mean is ``lines``'.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Final, NamedTuple

from equabot_gw.agents.committer import CLOEXEC, Committer
from equabot_gw.agents.lines import parse_lines

__all__ = ["OUTCOME_TYPES", "WINDOW_BYTES", "KEY_WINDOW_BYTES", "KeyWindow", "find_outcome", "line_end",
           "read_key_window"]

# The outcome lines of a run: the one its turn ends with.
OUTCOME_TYPES: Final = ("assistant", "aborted", "error")
# A file is read this many bytes at a time: each read and search a short hold of
# the GIL (the loop's thread is not kept waiting by a long journal), and the memory
# a search takes besides the line it reads whole.
WINDOW_BYTES: Final = 256 * 1024
# A key journal is read this many bytes at a time: start-up holds the table of keys and
# one window's lines, not a day's journal. A key line is a few KB at most.
KEY_WINDOW_BYTES: Final = 256 * 1024


def line_end(fd: int, pos: int, size: int, window: int = WINDOW_BYTES) -> int | None:
    """The offset of the first newline at or after ``pos`` of the ``size`` bytes of ``fd``,
    read ``window`` bytes at a time; None if the file ends (or was cut short) first."""
    while pos < size:
        data = os.pread(fd, min(window, size - pos), pos)
        if not data:
            return None
        cut = data.find(b"\n")
        if cut >= 0:
            return pos + cut
        pos += len(data)
    return None


def find_outcome(paths: list[str], run_id: str, _: Committer) -> dict[str, Any] | None:
    """Job: the last outcome line ("assistant", "aborted" or "error") of run ``run_id`` in
    the JSONL files ``paths`` (missing ones skipped), the later files' lines after the
    earlier's; None if none holds one.

    Only the lines that name the run are read whole and decoded: the memory a
    search takes is a window and its longest such line (a busy day's journal
    holds every stateless turn of it). Raises OSError (EINVAL for a FIFO, a
    device or any other special file).
    """
    found = None
    needle = f'"{run_id}"'.encode("utf-8", "surrogatepass")
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            found = _last_outcome(fd, info.st_size, needle, run_id) or found
        finally:
            os.close(fd)
    return found


def _last_outcome(fd: int, size: int, needle: bytes, run_id: str) -> dict[str, Any] | None:
    found = None
    pos = 0
    span = max(WINDOW_BYTES, 2 * len(needle))
    while pos < size:
        window = os.pread(fd, min(span, size - pos), pos)
        if len(window) < len(needle):
            break               # the file ends here (or was cut short meanwhile)
        hit = window.find(needle)
        if hit < 0:
            # The next window starts early enough to find a needle cut by this one's end.
            pos += len(window) - len(needle) + 1
            del window          # before the next is read: one window in memory at a time
            continue
        start = _line_start(fd, window, pos, hit)
        end = line_end(fd, pos + hit + len(needle), size, span)
        if end is None:
            break               # a torn last line: never acknowledged
        line = parse_lines(os.pread(fd, end + 1 - start, start))[0]
        if line and line[0].get("runId") == run_id and line[0].get("type") in OUTCOME_TYPES:
            found = line[0]
        pos = end + 1
    return found


def _line_start(fd: int, window: bytes, pos: int, hit: int) -> int:
    """The offset of the line holding ``window[hit]`` (``window`` read at ``pos``)."""
    cut = window.rfind(b"\n", 0, hit)
    while cut < 0 and pos > 0:       # the line began before the window: look further back
        back = max(0, pos - WINDOW_BYTES)
        window, pos = os.pread(fd, pos - back, back), back
        cut = window.rfind(b"\n")
    return pos + cut + 1             # cut is -1 at the start of the file


class KeyWindow(NamedTuple):
    """What ``read_key_window`` read: the JSON objects of the whole lines of one window, the
    offset the next window starts at (None: the journal ends here), the lines it read, and
    how many of them were skipped (not JSON objects, or longer than a window), the first
    of those as a 1-based number within the window (0 if none)."""

    lines: list[dict[str, Any]]
    next: int | None
    count: int
    skipped: int
    first: int


def read_key_window(path: str, offset: int, _: Committer) -> KeyWindow:
    """Job: the whole lines of the key journal ``path`` in ``KEY_WINDOW_BYTES`` from
    ``offset`` (a line's start). A line longer than a window is no key line the gateway
    wrote: it is skipped (read to its end a window at a time, never held whole). A file
    gone, cut short, or replaced by one that is not regular meanwhile ends the reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
    except FileNotFoundError:
        return KeyWindow([], None, 0, 0, 0)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return KeyWindow([], None, 0, 0, 0)
        want = min(KEY_WINDOW_BYTES, info.st_size - offset)
        window = os.pread(fd, want, offset) if want > 0 else b""
        whole = window.rfind(b"\n") + 1
        if whole:
            lines, skipped, first = parse_lines(window[:whole])
            more = len(window) == want and offset + whole < info.st_size
            return KeyWindow(lines, offset + whole if more else None, window.count(b"\n", 0, whole),
                             skipped, first)
        if len(window) < KEY_WINDOW_BYTES:
            return KeyWindow([], None, 0, 0, 0)      # a torn last line (or nothing): never acknowledged
        end = line_end(fd, offset + len(window), info.st_size)
        return KeyWindow([], None if end is None else end + 1, 1, 1, 1)
    finally:
        os.close(fd)
