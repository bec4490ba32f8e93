"""Per-run event fan-out: one append-only log per run, read by any number of subscribers.

A run appends its events in order: ``Started``, ``Delta``*, then exactly one
``Ended`` or ``Failed``. Each subscriber keeps a cursor into the shared log, so
nothing is copied per subscriber, a late subscriber still sees the run from its
first event, and a reader that fell behind receives everything it missed as
one batch (which lets writers coalesce many small deltas into one write).

The log's memory is bounded by its text, not by its number of words: every
``COMPACT_EVENTS`` events, runs of consecutive deltas that no cursor falls
between are joined into one delta. A reader that keeps up still gets each
delta as it came; one that fell behind (or subscribes late) gets fewer,
longer ones with the same text.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Final, Union

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

# Events appended between two compactions of a log: a compaction costs one
# pass over them, so it adds a constant per event; what it leaves is at most
# (subscribers + 2) events per round.
COMPACT_EVENTS: Final = 1024
# Events appended between two checkpoints (see EventLog.append).
CHECKPOINT_EVENTS: Final = 32


class EventLog:
    """The ordered events of one run. Only the run appends; anyone may subscribe."""

    __slots__ = ("events", "closed", "text_bytes", "_waiters", "_subscriptions", "_compacted",
                 "_compact_at", "_counted", "_due")

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self.closed = False
        self.text_bytes = 0                 # UTF-8 bytes of the deltas, as of the last checkpoint
        self._waiters: list[asyncio.Future[None]] = []
        # Weak references: a reader that was dropped is no cursor to respect
        # (a WeakSet costs several times more to make, once per stream).
        self._subscriptions: list[weakref.ref[Subscription]] = []
        self._compacted = 0                 # events before this index were compacted
        self._compact_at = COMPACT_EVENTS   # compact when the log grows to this length
        self._counted = 0                   # events before this index are in text_bytes
        self._due = CHECKPOINT_EVENTS       # the next checkpoint, at this length

    def append(self, event: RunEvent) -> bool:
        """Add a ``Started`` or ``Delta`` event (``finish`` adds the terminal one);
        ignored once the log is closed (nothing follows the terminal event).

        Returns True every ``CHECKPOINT_EVENTS`` events, after a ``checkpoint``:
        the writer's moment to check ``text_bytes`` and give the loop a turn
        (doing either per event would cost the streaming hot path dearly).
        """
        if self.closed:
            return False
        events = self.events
        events.append(event)
        if self._waiters:
            self._wake()
        if len(events) < self._due:
            return False
        self.checkpoint()
        return True

    def checkpoint(self) -> int:
        """Bring ``text_bytes`` up to date (and compact the log when due); returns it."""
        events = self.events
        new = _join(events[self._counted:])
        # isascii() is O(1) in CPython: only other text pays an encode.
        self.text_bytes += len(new) if new.isascii() else len(new.encode("utf-8", "surrogatepass"))
        if len(events) >= self._compact_at:
            self._compact()
        self._counted = len(events)
        self._due = len(events) + CHECKPOINT_EVENTS
        return self.text_bytes

    def text(self) -> str:
        """The deltas so far, joined: the reply (or the partial reply)."""
        return _join(self.events)

    def finish(self, event: Ended | Failed) -> None:
        """Add the terminal event and close the log."""
        self.events.append(event)
        self.closed = True
        if self._waiters:
            self._wake()

    def subscribe(self) -> Subscription:
        """A reader positioned at the first event."""
        subscription = Subscription(self)
        self._subscriptions.append(weakref.ref(subscription))
        return subscription

    def _compact(self) -> None:
        # Join the deltas appended since the last compaction into runs that
        # stop at every cursor inside them, then move those cursors along.
        events, start, end = self.events, self._compacted, len(self.events)
        readers = [r for r in map(_alive, self._subscriptions) if r is not None]
        if len(readers) < len(self._subscriptions):
            self._subscriptions = [weakref.ref(r) for r in readers]
        cuts = {r._cursor for r in readers if start < r._cursor < end}
        out: list[RunEvent] = []
        moved: dict[int, int] = {}
        run: list[Delta] = []
        for index in range(start, end):
            if index in cuts:
                _flush(run, out)
                moved[index] = start + len(out)
            event = events[index]
            if type(event) is Delta:
                run.append(event)
            else:
                _flush(run, out)
                out.append(event)
        _flush(run, out)
        events[start:] = out
        for reader in readers:
            cursor = reader._cursor
            if cursor >= end:
                reader._cursor = len(events) + cursor - end
            elif cursor > start:
                reader._cursor = moved[cursor]
        self._compacted = len(events)
        self._compact_at = len(events) + COMPACT_EVENTS

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wait(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter


def _join(events: list[RunEvent]) -> str:
    """The texts of the deltas in a slice of a log, joined.

    A log is ``Started``, ``Delta``*, then one terminal event: only the
    first and the last event of a slice can be other than a delta, so no
    other needs a type check (measured: a check per delta costs the hot path).
    """
    first = 1 if events and type(events[0]) is not Delta else 0
    last = len(events) - 1 if len(events) > first and type(events[-1]) is not Delta else len(events)
    return "".join([delta.text for delta in events[first:last]])


def _alive(ref: weakref.ref[Subscription]) -> Subscription | None:
    return ref()


def _flush(run: list[Delta], out: list[RunEvent]) -> None:
    """Move a run of deltas to ``out`` as one delta (the same object if it is one)."""
    if run:
        out.append(run[0] if len(run) == 1 else Delta("".join([delta.text for delta in run])))
        run.clear()


class Subscription:
    """A cursor over an ``EventLog``. Iterate it for single events, or call ``next_batch``."""

    __slots__ = ("_log", "_cursor", "__weakref__")

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
