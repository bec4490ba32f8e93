"""Per-run event fan-out: one append-only log per run, read by any number of subscribers.

A run appends its events in order: ``Started``, then its output, then exactly
one ``Ended`` or ``Failed``. The output of a text reply is ``Delta``s alone; a
reply with reasoning, tool calls, log probabilities or several choices also
holds the provider's ``ReasoningDelta``, ``ToolCallDelta``, ``Logprobs``,
``Annotations`` and ``ChoiceEvent`` values, in the order they came, and its
log is ``mixed`` (so readers of text-only logs keep their fast paths). A
refusal is text: ``Refusing`` marks where it begins, its deltas follow, so
every reader of the reply's text (transcript, WebSocket, resume) has it. Each subscriber keeps a cursor into the shared log, so
nothing is copied per subscriber, a late subscriber still sees the run from its
first event, and a reader that fell behind receives everything it missed as
one batch (which lets writers coalesce many small deltas into one write).

The log's memory is bounded by its text, not by its number of words: every
``COMPACT_EVENTS`` events, runs of consecutive deltas that no cursor falls
between are joined into one delta (in a mixed log, runs of reasoning deltas,
of fragments of one tool call, and of log probabilities are joined too). A reader that keeps up still gets each
delta as it came; one that fell behind (or subscribes late) gets fewer,
longer ones with the same text.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any, Final, Union

from ..errors import RunError
from .types import AgentResult, Annotations, ChoiceEvent, Logprobs, ReasoningDelta, TextDelta, ToolCallDelta


# The lifecycle events are made once per run, so, like ``types.Message``, they
# are plain slotted dataclasses (a frozen one sets each field through
# object.__setattr__): read-only by convention, shared by every reader.
@dataclass(slots=True)
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


@dataclass(slots=True)
class Ended:
    """Lifecycle "end": the reply is complete and durable."""

    result: AgentResult


@dataclass(slots=True)
class Failed:
    """Lifecycle "error": ``error.reason`` is "aborted", "timeout", "upstream", "storage" or "error"."""

    error: RunError
    partial: str = ""

    @property
    def reason(self) -> str:
        return self.error.reason


@dataclass(slots=True)
class Refusing:
    """In a mixed log: the deltas of this choice's text from here on are the model's
    refusal (``types.RefusalDelta``); a further choice's marker comes in a ``ChoiceEvent``.
    It carries no text, so it moves no position in the reply."""


REFUSING: Final = Refusing()

# A mixed log's other output: the provider's own values, stored as they came.
Output = Union[ReasoningDelta, ToolCallDelta, Logprobs, Annotations, Refusing, ChoiceEvent]
RunEvent = Union[Started, Delta, ReasoningDelta, ToolCallDelta, Logprobs, Annotations, Refusing, ChoiceEvent,
                 Ended, Failed]

# Events appended between two compactions of a log: a compaction costs one
# pass over them, so it adds a constant per event; what it leaves is at most
# (subscribers + 2) events per round.
COMPACT_EVENTS: Final = 1024
# Events appended between two checkpoints (see EventLog.append).
CHECKPOINT_EVENTS: Final = 32
# References to subscriptions a log keeps before it drops those of readers gone
# (then twice as many as are left): the list stays within twice its live readers.
PRUNE_SUBSCRIPTIONS: Final = 64


class EventLog:
    """The ordered events of one run. Only the run appends; anyone may subscribe."""

    __slots__ = ("events", "closed", "text_bytes", "mixed", "_waiters", "_subscriptions", "_compacted",
                 "_compact_at", "_counted", "_due", "_prune_at")

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self.closed = False
        self.text_bytes = 0                 # UTF-8 bytes of the deltas, as of the last checkpoint
        self.mixed = False                  # holds output other than Delta (set by the writer first)
        self._waiters: list[asyncio.Future[None]] = []
        # Weak references: a reader that was dropped is no cursor to respect
        # (a WeakSet costs several times more to make, once per stream).
        self._subscriptions: list[weakref.ref[Subscription]] = []
        self._prune_at = PRUNE_SUBSCRIPTIONS    # drop the references of readers gone at this length
        self._compacted = 0                 # events before this index were compacted
        self._compact_at = COMPACT_EVENTS   # compact when the log grows to this length
        self._counted = 0                   # events before this index are in text_bytes
        self._due = CHECKPOINT_EVENTS       # the next checkpoint, at this length

    def append(self, event: RunEvent) -> bool:
        """Add ``Started`` or output (``finish`` adds the terminal event); ignored once
        the log is closed (nothing follows the terminal event). The writer sets
        ``mixed`` before it appends the first output that is not a ``Delta``.

        Returns True every ``CHECKPOINT_EVENTS`` events, after a ``checkpoint``:
        the writer's moment to check ``text_bytes`` and give the loop a turn
        (doing either per event would cost the streaming hot path dearly).
        Once the log is closed (its run was settled while its writer went on),
        it returns True for every event, so the writer looks at once.
        """
        if self.closed:
            return True
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
        new = _join_mixed(events[self._counted:]) if self.mixed else _join(events[self._counted:])
        # isascii() is O(1) in CPython: only other text pays an encode.
        self.text_bytes += len(new) if new.isascii() else len(new.encode("utf-8", "surrogatepass"))
        if len(events) >= self._compact_at:
            self._compact()
        self._counted = len(events)
        self._due = len(events) + CHECKPOINT_EVENTS
        return self.text_bytes

    @property
    def watched(self) -> bool:
        """Whether anyone subscribed to the log so far (a reader may have gone since;
        readers gone are forgotten now and then, and then no longer count)."""
        return bool(self._subscriptions)

    def text(self) -> str:
        """The deltas so far, joined: the reply (or the partial reply)."""
        return _join_mixed(self.events) if self.mixed else _join(self.events)

    def finish(self, event: Ended | Failed) -> None:
        """Add the terminal event and close the log."""
        self.events.append(event)
        self.closed = True
        if self._waiters:
            self._wake()

    def subscribe(self) -> Subscription:
        """A reader positioned at the first event."""
        subscription = Subscription(self)
        subscriptions = self._subscriptions
        if len(subscriptions) >= self._prune_at:
            # Readers that came and went while the run was quiet (too few events for a
            # compaction) would each leave a reference behind for as long as it runs.
            subscriptions = self._subscriptions = [ref for ref in subscriptions if ref() is not None]
            self._prune_at = max(PRUNE_SUBSCRIPTIONS, 2 * len(subscriptions))
        subscriptions.append(weakref.ref(subscription))
        return subscription

    def _compact(self) -> None:
        # Join the deltas appended since the last compaction into runs that
        # stop at every cursor inside them, then move those cursors along.
        events, start, end = self.events, self._compacted, len(self.events)
        readers = [r for r in map(_alive, self._subscriptions) if r is not None]
        if len(readers) < len(self._subscriptions):
            self._subscriptions = [weakref.ref(r) for r in readers]
        cuts = {r._cursor for r in readers if start < r._cursor < end}
        moved: dict[int, int] = {}
        out = _joined_mixed(events, start, end, cuts, moved) if self.mixed else \
            _joined(events, start, end, cuts, moved)
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

    def _give_up(self, waiter: asyncio.Future[None]) -> None:
        """Forget a waiter whose reader stopped waiting (cancelled, or its idle timeout), and
        resolve it: a run quiet for long keeps no future per reader that came and went."""
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass            # woken already: the list it was in is gone
        if not waiter.done():
            waiter.set_result(None)


def _joined(events: list[RunEvent], start: int, end: int, cuts: set[int],
            moved: dict[int, int]) -> list[RunEvent]:
    """``events[start:end]`` of a text-only log with runs of deltas joined; a run
    stops at each index in ``cuts`` (``moved`` maps it to its new index)."""
    out: list[RunEvent] = []
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
    return out


def _joined_mixed(events: list[RunEvent], start: int, end: int, cuts: set[int],
                  moved: dict[int, int]) -> list[RunEvent]:
    """``_joined`` for a mixed log: runs of events of one ``_join_key`` are joined."""
    out: list[RunEvent] = []
    run: list[Any] = []
    run_key: object = None
    for index in range(start, end):
        event = events[index]
        key = _join_key(event)
        if index in cuts or key != run_key or key is None:
            _flush_mixed(run, out)
            run_key = key
        if index in cuts:
            moved[index] = start + len(out)
        if key is None:
            out.append(event)
        else:
            run.append(event)
    _flush_mixed(run, out)
    return out


def _join_key(event: Any) -> object:
    """What a run of joinable events shares (their type, and their call or choice); None: not joinable."""
    kind = type(event)
    if kind is Delta or kind is ReasoningDelta or kind is Logprobs:
        return kind
    if kind is ToolCallDelta:
        return (kind, event.index)
    if kind is ChoiceEvent:
        inner = _join_key(event.event)
        return None if inner is None else (kind, event.index, inner)
    return None


def _flush_mixed(run: list[Any], out: list[RunEvent]) -> None:
    if run:
        out.append(run[0] if len(run) == 1 else _merged(run))
        run.clear()


def _merged(run: list[Any]) -> Any:
    """One event worth a run of events of one ``_join_key``."""
    first = run[0]
    kind = type(first)
    if kind is Delta:
        return Delta("".join([e.text for e in run]))
    if kind is ReasoningDelta:
        signature = next((e.signature for e in reversed(run) if e.signature), "")
        return ReasoningDelta("".join([e.text for e in run]), signature)
    if kind is ToolCallDelta:
        # A call's first fragment names it; the run keeps the first id/name given.
        return ToolCallDelta(first.index, next((e.id for e in run if e.id is not None), None),
                             next((e.name for e in run if e.name is not None), None),
                             "".join([e.arguments for e in run]))
    if kind is Logprobs:
        return Logprobs(tuple(entry for e in run for entry in e.content), sum(e.size for e in run))
    return ChoiceEvent(first.index, _merged([e.event for e in run]))


def _join(events: list[RunEvent]) -> str:
    """The texts of the deltas in a slice of a log, joined.

    A log is ``Started``, ``Delta``*, then one terminal event: only the
    first and the last event of a slice can be other than a delta, so no
    other needs a type check (measured: a check per delta costs the hot path).
    """
    first = 1 if events and type(events[0]) is not Delta else 0
    last = len(events) - 1 if len(events) > first and type(events[-1]) is not Delta else len(events)
    return "".join([delta.text for delta in events[first:last]])


def _join_mixed(events: list[RunEvent]) -> str:
    """``_join`` for a mixed log: the texts of its deltas alone."""
    return "".join([event.text for event in events if type(event) is Delta])  # type: ignore[union-attr]


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
                    idle_timeout, log._give_up, waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                log._give_up(waiter)
                raise
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
            waiter = log._wait()
            try:
                await waiter
            except asyncio.CancelledError:
                log._give_up(waiter)
                raise
        event = log.events[self._cursor]
        self._cursor += 1
        return event

