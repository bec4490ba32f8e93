"""Lanes: one holder at a time per key (a session's), in arrival order.

``Lane(lanes, key)`` is an async context manager over a table the caller
owns (the session store keeps one per open store): entering waits for the
key's lane, leaving hands it to the next waiter, and a key nobody holds or
waits for leaves nothing behind in the table. Knows nothing of sessions,
runs or files.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["Lane"]


class Lane:
    """``async with Lane(lanes, key):`` one holder per key at a time, FIFO (asyncio.Lock
    wakes waiters in order). ``lanes`` maps a key to ``[how many hold or wait, its lock]``."""

    __slots__ = ("_lanes", "_key", "_entry")

    def __init__(self, lanes: dict[str, list[Any]], key: str) -> None:
        self._lanes, self._key = lanes, key

    async def __aenter__(self) -> None:
        entry = self._lanes.get(self._key)
        if entry is None:
            entry = self._lanes[self._key] = [0, asyncio.Lock()]
        self._entry = entry
        entry[0] += 1
        try:
            await entry[1].acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._entry[1].release()
        self._leave()

    def _leave(self) -> None:
        self._entry[0] -= 1
        if self._entry[0] == 0:     # nobody holds or waits: forget the key (stateless keys are many)
            del self._lanes[self._key]
