"""Token usage of transcripts and journals per UTC day, read outside the committer.

Owns the scan behind ``usage.cost``: a JSONL file of ``lines``' format streamed
in bounded reads, only the lines that may hold usage decoded. Safe in any
thread beside the committer's appends: the files are append-only, a scan
reads no further than the size it found, and a line counts only once its
newline is there (a torn or half-written last line is no line yet); a failed
append cut back meanwhile only shortens the read. Keeps no state; imports
nothing from equabot_gw.net or equabot_gw.gateway.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from typing import Any, Final, NamedTuple

from equabot_gw.agents.committer import CLOEXEC
from equabot_gw.agents.lines import parse_lines

__all__ = ["DayUsage", "Signature", "UsageScan", "file_signature", "scan_usage"]

# {UTC day (days since the epoch): (prompt tokens, completion tokens)}
DayUsage = dict[int, tuple[int, int]]
# (st_dev, st_ino, st_size, st_mtime_ns): the file as it was when scanned.
Signature = tuple[int, int, int, int]
# A file is read this many bytes at a time: with its longest line (joined
# whole), the memory a scan takes, however long the file.
_USAGE_CHUNK_BYTES: Final = 1 << 20
# Where a line holding usage must show itself: its type "assistant" and its key
# "usage" are written plainly, unless spelled with \u escapes (the only JSON
# escape that yields a letter), so a line with neither marker cannot count.
_ASSISTANT: Final = b"assistant"
_ESCAPE: Final = b"\\u"
_USAGE: Final = b"usage"


class UsageScan(NamedTuple):
    """The token usage of one file's "assistant" lines, per UTC day of their "at", and the
    ``signature`` of the file that was read."""

    signature: Signature
    days: DayUsage


def file_signature(path: str) -> Signature | None:
    """(device, inode, size, mtime in ns) of the file at ``path``; None if there is none.

    An append-only file with the same signature holds the same lines. Raises OSError.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def scan_usage(path: str) -> UsageScan | None:
    """Sum the usage of the "assistant" lines of JSONL file ``path`` per UTC day; None if
    there is no file.

    A line counts as ``usage.cost`` has always counted it: a JSON object with
    "type" "assistant", a number "at" and an object "usage", whose
    "prompt_tokens" and "completion_tokens" add when they are non-negative
    integers (else 0). The file is streamed in ``_USAGE_CHUNK_BYTES`` reads, up to
    the size it had when opened; only the lines that may hold usage are decoded.
    Safe outside the committer thread (see the module's contract). Raises OSError (EINVAL for
    a FIFO, a device or any other special file).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        days: dict[int, list[int]] = {}
        _sum_file(fd, info.st_size, days)
    finally:
        os.close(fd)
    return UsageScan((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns),
                     {day: (p, c) for day, (p, c) in days.items()})


def _sum_file(fd: int, size: int, days: dict[int, list[int]]) -> None:
    pieces: list[bytes] = []        # the start of a line longer than what was read so far
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(_USAGE_CHUNK_BYTES, size - pos), pos)
        if not chunk:
            break                   # cut back meanwhile (a failed append undone)
        pos += len(chunk)
        last = chunk.rfind(b"\n")
        if last < 0:
            pieces.append(chunk)
            continue
        start = 0
        if pieces:
            start = chunk.find(b"\n") + 1
            pieces.append(chunk[:start])
            line = b"".join(pieces)
            _sum_lines(line, 0, len(line), days)
        _sum_lines(chunk, start, last + 1, days)
        pieces = [chunk[last + 1:]] if last + 1 < len(chunk) else []
    # What is left in pieces has no newline: a torn or unfinished last line.


def _sum_lines(data: bytes, start: int, stop: int, days: dict[int, list[int]]) -> None:
    """Add the usage of the whole lines in ``data[start:stop]`` (it ends with a newline)."""
    pos = start
    named, escaped = data.find(_ASSISTANT, pos, stop), data.find(_ESCAPE, pos, stop)
    while named >= 0 or escaped >= 0:
        hit = named if escaped < 0 or 0 <= named < escaped else escaped
        begin = max(data.rfind(b"\n", start, hit) + 1, start)
        end = data.find(b"\n", hit, stop)
        line = data[begin:end + 1]
        if _USAGE in line or _ESCAPE in line:
            for obj in parse_lines(line)[0]:
                _add_usage(obj, days)
        pos = end + 1
        # Each marker is searched for again only once passed: never the same bytes twice.
        if 0 <= named < pos:
            named = data.find(_ASSISTANT, pos, stop)
        if 0 <= escaped < pos:
            escaped = data.find(_ESCAPE, pos, stop)


def _add_usage(line: dict[str, Any], days: dict[int, list[int]]) -> None:
    at, usage = line.get("at"), line.get("usage")
    if line.get("type") != "assistant" or not isinstance(at, (int, float)) or not isinstance(usage, dict) \
            or not math.isfinite(at):
        return
    bucket = days.setdefault(int(at // 86400), [0, 0])
    bucket[0] += _tokens(usage.get("prompt_tokens"))
    bucket[1] += _tokens(usage.get("completion_tokens"))


def _tokens(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
