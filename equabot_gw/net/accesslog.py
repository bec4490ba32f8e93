"""The access log: one line per answered request, written in batches.

Owns the line format (connection id, method, escaped path, status, bytes,
duration, request id) and the batching; never a header value or a body.
Knows nothing of connections: ``net.connection`` calls ``record``. Lines are text
(``conn=1 "GET /health" 200 51 0.3ms rid=req_…``) or, for log shippers, one
JSON object each (``json_lines=True``).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\\"]")


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class AccessLog:
    """One line per request to a text stream, written in batches.

    Lines gathered during one event-loop iteration are written together at its
    end: a write per line would cost a system call per request. Paths are
    escaped; header values and bodies are never logged.
    """

    def __init__(self, stream=None, *, json_lines: bool = False) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self.json_lines = json_lines

    def record(self, conn_id: int, method: str, path: str, status: int, size: int,
               duration: float, request_id: str) -> None:
        """Queue the line of one answered request."""
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        text = (f'conn={conn_id} "{method} {_escape(path)}" {status} {size} '
                f"{duration * 1000:.1f}ms rid={request_id}")
        if self.json_lines:
            # Every log line's keys (the text line as its message), then the fields;
            # json.dumps escapes every control character and, ASCII only, anything else.
            self._lines.append(json.dumps({
                "time": _utc_now(), "level": "info", "logger": "equabot_gw.access", "message": text,
                "event": "request", "conn": conn_id, "method": method, "path": path, "status": status,
                "bytes": size, "duration_ms": round(duration * 1000, 3), "request_id": request_id}) + "\n")
            return
        self._lines.append(text + "\n")

    def flush(self) -> None:
        """Write the queued lines now."""
        if self._lines:
            stream = self._stream or sys.stderr
            try:
                stream.write("".join(self._lines))
                stream.flush()
            except (OSError, ValueError):
                pass        # a closed or full stderr must not take the server down
            self._lines.clear()


def _utc_now() -> str:
    """Now as RFC 3339 UTC with milliseconds, e.g. ``2025-01-31T12:00:00.123Z``."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
