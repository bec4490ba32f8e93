"""The gateway's own recent log lines, in memory, for the control protocol's ``logs.tail``.

``LogBuffer`` is a ``logging.Handler`` kept in a ring bounded in lines and in
bytes. The Gateway attaches it to its package logger (``equabot_gw``) — never
to the root logger, so what a host program logs stays its own — and detaches
it on stop. Each line is one JSON object in the shape the original Gateway
writes to its log file (``time``, ``_meta`` with level and subsystem, the
message under ``"1"``), so the original's ``logs`` command prints it.

Positions are byte offsets, as in a log file: every line counts its UTF-8
length plus a newline, ``end`` is the offset after the newest line, and a
reader's ``cursor`` asks for the lines after an offset it saw before.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Final, NamedTuple

__all__ = ["LogBuffer", "Tail", "DEFAULT_MAX_LINES", "DEFAULT_MAX_BYTES", "MAX_LINE_CHARS"]

DEFAULT_MAX_LINES: Final = 2000
DEFAULT_MAX_BYTES: Final = 1024 * 1024
# One log line is cut to this many characters (a traceback included).
MAX_LINE_CHARS: Final = 8192

# tslog's level ids, as the original's log lines carry them.
_LEVEL_IDS: Final = {"DEBUG": 2, "INFO": 3, "WARNING": 4, "ERROR": 5, "CRITICAL": 6}
_LEVEL_NAMES: Final = {"WARNING": "WARN", "CRITICAL": "FATAL"}


class Tail(NamedTuple):
    """What ``LogBuffer.tail`` returns: ``cursor`` to ask with next time, ``size`` = ``cursor``."""

    cursor: int
    size: int
    lines: list[str]
    truncated: bool
    reset: bool


class LogBuffer(logging.Handler):
    """The last ``max_lines`` formatted records, at most ``max_bytes`` in all (oldest dropped first)."""

    def __init__(self, *, max_lines: int = DEFAULT_MAX_LINES, max_bytes: int = DEFAULT_MAX_BYTES,
                 level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._lines: deque[tuple[int, str]] = deque()     # (start offset, line)
        self._bytes = 0
        self._end = 0
        self._guard = threading.Lock()      # records may come from the committer thread

    @property
    def end(self) -> int:
        """The offset after the newest line (bytes ever buffered, newlines included)."""
        return self._end

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._line(record)
        except Exception:                   # a record that cannot be formatted is dropped
            self.handleError(record)
            return
        size = len(line.encode("utf-8", "replace")) + 1
        with self._guard:
            self._lines.append((self._end, line))
            self._end += size
            self._bytes += size
            while self._lines and (len(self._lines) > self.max_lines or self._bytes > self.max_bytes):
                start, _ = self._lines.popleft()
                first = self._lines[0][0] if self._lines else self._end
                self._bytes -= first - start

    def _line(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if len(message) > MAX_LINE_CHARS:
            message = message[:MAX_LINE_CHARS] + "…"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
            f".{int(record.msecs):03d}Z"
        subsystem = json.dumps({"subsystem": record.name})
        return json.dumps({
            "0": subsystem, "1": message,
            "_meta": {"runtime": "python", "name": subsystem, "date": stamp,
                      "logLevelId": _LEVEL_IDS.get(record.levelname, 3),
                      "logLevelName": _LEVEL_NAMES.get(record.levelname, record.levelname)},
            "time": stamp}, ensure_ascii=False)

    def tail(self, cursor: int | None, limit: int, max_bytes: int) -> Tail:
        """The newest lines after ``cursor`` (all kept lines for None): at most ``limit`` lines
        and ``max_bytes`` bytes, oldest first.

        ``truncated`` as the original Gateway sets it for its log file: when the
        ``max_bytes`` window did not reach back to where the reader asked to
        start (offset 0 without a cursor, else ``cursor``), or lines after
        ``cursor`` were dropped from the ring already; never because ``limit``
        left older lines of the window out. ``reset`` when ``cursor`` lies
        beyond ``end`` (it came from another gateway process).
        """
        with self._guard:
            end = self._end
            reset = cursor is not None and cursor > end
            start = 0 if cursor is None or reset else cursor
            lines = [(offset, line) for offset, line in self._lines if offset >= start]
            dropped = bool(self._lines) and self._lines[0][0] > start or not self._lines and end > start
        picked: list[str] = []
        used = 0
        for _, line in reversed(lines):
            size = len(line.encode("utf-8", "replace")) + 1
            if len(picked) >= limit or used + size > max_bytes:
                break
            picked.append(line)
            used += size
        picked.reverse()
        # The window is the last max_bytes of the log: it cut something when the
        # log after ``start`` is longer (the original's "start > 0"), whether or not
        # ``limit`` would have shown those lines anyway.
        truncated = end - start > max_bytes or (dropped and cursor is not None and not reset)
        return Tail(end, end, picked, truncated, reset)
