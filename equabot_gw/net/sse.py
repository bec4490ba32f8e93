"""Server-Sent Events framing (WHATWG HTML §9.2), and nothing else.

Owns the bytes of an event stream: ``data:`` lines, comments, the headers an
event-stream response carries. It knows nothing of sockets or chunked
encoding: the server's streaming response writes what these functions return
as soon as it exists (the events of one task step in one send; an event of
any size in bounded writes, as the client reads).
"""

from __future__ import annotations

from typing import Final

# Response headers of every event stream. "X-Accel-Buffering: no" asks nginx
# (the most common reverse proxy) not to buffer the stream; it is harmless elsewhere.
HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
)

# A comment line: ignored by clients, keeps proxies and idle timers from
# closing a quiet stream (WHATWG §9.2.6 recommends one every 15 seconds or so).
# A line, not a block: no blank line follows it, so it dispatches nothing.
# (The openai Python SDK dispatches every blank line once an event had an
# ``id``, and fails on the empty data of a comment followed by one.) The next
# event's lines follow it; a reader ignores the comment among them.
KEEPALIVE: Final = b": keep-alive\n"
KEEPALIVE_INTERVAL: Final = 15.0

# The OpenAI stream terminator.
DONE: Final = b"data: [DONE]\n\n"


def data_event(data: str) -> bytes:
    """One event whose data is ``data``; each line of it becomes a ``data:`` line.

    JSON produced by ``json.dumps`` has no raw newlines, so the common case is a
    single line; a CR, LF or CRLF inside ``data`` starts a new ``data:`` line, as
    the event-stream grammar requires.
    """
    if "\n" not in data and "\r" not in data:
        return b"data: " + data.encode("utf-8") + b"\n\n"
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode("utf-8") + b"\n"


def comment(text: str) -> bytes:
    """A comment line (``: text``); newlines in ``text`` are replaced by spaces."""
    return b": " + text.replace("\r", " ").replace("\n", " ").encode("utf-8") + b"\n\n"
