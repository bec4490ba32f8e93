"""In-memory transports for driving ``net.server`` connections without sockets.

``FlowTransport`` behaves like asyncio's socket transport where flow control
is concerned: it counts unsent bytes, calls ``pause_writing()`` above its
high-water mark and ``resume_writing()`` at or below the low one, and a
``close()`` waits until the test has "read" everything. The test plays the
client by calling ``read(n)``; a client that never calls it never reads.
"""

from __future__ import annotations

import asyncio
from typing import Any


class FlowTransport(asyncio.Transport):
    """A transport whose peer reads only when the test says so."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, high: int = 64 * 1024) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: asyncio.Protocol | None = None
        self.high = high
        self.low = high // 4
        self.unsent = bytearray()       # written by the server, not yet read by the "client"
        self.received = bytearray()     # what the "client" has read
        self.writes: list[int] = []     # the size of each write, in order
        self.max_unsent = 0
        self.paused = False
        self.reading = True
        self.closing = False
        self.aborted = False
        self.lost = False

    def connect(self, protocol: asyncio.Protocol) -> FlowTransport:
        self.protocol = protocol
        protocol.connection_made(self)
        return self

    # -- what the server calls --
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.high = high
            self.low = high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return len(self.unsent)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.lost:
            return
        self.writes.append(len(data))
        self.unsent += data
        self.max_unsent = max(self.max_unsent, len(self.unsent))
        if not self.paused and len(self.unsent) > self.high:
            self.paused = True
            assert self.protocol is not None
            self.protocol.pause_writing()

    def is_closing(self) -> bool:
        return self.closing or self.lost

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if not self.unsent:
                self._lose()

    def abort(self) -> None:
        self.aborted = True
        self.unsent.clear()
        self._lose()

    # -- what the test calls --
    def read(self, n: int | None = None) -> bytes:
        """The "client" reads up to ``n`` bytes (all if None) of what the server wrote."""
        n = len(self.unsent) if n is None else min(n, len(self.unsent))
        data = bytes(self.unsent[:n])
        del self.unsent[:n]
        self.received += data
        if self.paused and len(self.unsent) <= self.low:
            self.paused = False
            assert self.protocol is not None
            self.protocol.resume_writing()
        if self.closing and not self.unsent:
            self._lose()
        return data

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.connection_lost, None)
