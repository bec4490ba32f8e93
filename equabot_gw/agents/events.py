"""Per-run event fan-out: one append-only log per run, read by any number of subscribers.

A run appends its events in order: ``Started``, ``Delta``*, then exactly one
``Ended`` or ``Failed``. Each subscriber keeps a cursor into the shared log, so
nothing is copied per subscriber, a late subscriber still sees the run from its
first event, and a reader that fell behind receives everything it missed as
one batch (which lets writers coalesce many small deltas into one write).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Union

from ..errors import RunError
from .types import AgentResult, TextDelta


@dataclass(frozen=True, slots=True)
class Started:
    """Lifecycle "start": the run left its queue and the provider is being asked."""

    run_id: str
    agent_id: str
    session_key: str
    model: str
    turn: int


# Assistant text, in order; the deltas of a run join to its reply. It is the
# provider's own TextDelta: the log stores the object the provider yielded
# instead of copying each word into another (measured: one allocation less
# per word on the streaming hot path).
Delta = TextDelta


@dataclass(frozen=True, slots=True)
class Ended:
    """Lifecycle "end": the reply is complete and durable."""

    result: AgentResult


@dataclass(frozen=True, slots=True)
class Failed:
    """Lifecycle "error": ``error.reason`` is "aborted", "timeout", "upstream", "storage" or "error"."""

    error: RunError
    partial: str = ""

    @property
    def reason(self) -> str:
        return self.error.reason


RunEvent = Union[Started, Delta, Ended, Failed]


class EventLog:
    """The ordered events of one run. Only the run appends; anyone may subscribe."""

    __slots__ = ("events", "closed", "_waiters")

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self.closed = False
        self._waiters: list[asyncio.Future[None]] = []

    def append(self, event: RunEvent) -> None:
        """Add a ``Started`` or ``Delta`` event (``finish`` adds the terminal one)."""
        self.events.append(event)
        if self._waiters:
            self._wake()

    def finish(self, event: Ended | Failed) -> None:
        """Add the terminal event and close the log."""
        self.events.append(event)
        self.closed = True
        if self._waiters:
            self._wake()

    def subscribe(self) -> Subscription:
        """A reader positioned at the first event."""
        return Subscription(self)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wait(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter


class Subscription:
    """A cursor over an ``EventLog``. Iterate it for single events, or call ``next_batch``."""

    __slots__ = ("_log", "_cursor")

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._cursor = 0

    async def next_batch(self, idle_timeout: float | None = None) -> list[RunEvent] | None:
        """Every event not read yet, waiting for at least one.

        Returns ``[]`` when ``idle_timeout`` seconds pass with nothing new, and
        None once the log is closed and fully read.
        """
        log = self._log
        if self._cursor == len(log.events):
            if log.closed:
                return None
            waiter = log._wait()
            timer = None
            if idle_timeout is not None:
                timer = asyncio.get_running_loop().call_later(
                    idle_timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
            if self._cursor == len(log.events):
                return None if log.closed else []
        batch = log.events[self._cursor:]
        self._cursor = len(log.events)
        return batch

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> RunEvent:
        log = self._log
        while self._cursor == len(log.events):
            if log.closed:
                raise StopAsyncIteration
            await log._wait()
        event = log.events[self._cursor]
        self._cursor += 1
        return event


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
