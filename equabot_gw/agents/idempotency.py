"""Idempotency keys: at most one run per (agent, key), remembered durably, and resumable replies.

Owns the table of used keys (in memory, bounded by ``MAX_KEYS``, each kept
``retention`` seconds), its journal lines (one ``key`` line per run started
under a key, fsynced before the run asks its provider, in
``<state>/agents/<id>/idempotency/<YYYY-MM-DD>.jsonl``), the digest a request
is compared by, the claims of clients on keyed runs (the disconnect policy),
and ``events_after`` / ``output_after``, which position any run's events
after a number of characters of its reply, or of its output units (resume). The runtime decides with this table what
a request with a key does (``runtime.run_once``); the doors only compute a
digest and speak their wire. Imports nothing from equabot_gw.net or gateway.

Journal lines (one ``key`` line per run started under a key; the newest for a key wins):
  {"type":"key","key","digest","runId","sessionKey","stateless","at"[,"meta"]}
  {"type":"free","key","runId","at"}
``meta`` is a small object the door keeps with the key (e.g. the client's
model name, to rebuild a stream after a restart); the runtime never reads it.
A ``free`` line says that run ``runId`` ended without recording its turn (a
storage error, say) while the gateway ran: its key may run again, also after
a restart. Without one, a key whose run left no turn is a run the gateway
stopped in the middle of (``INTERRUPTED``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Container
from typing import Any, Final

from ..errors import ApiError, ReplyTooLarge, RunAborted
from .events import Delta, Ended, Failed, RunEvent
from .lines import number
from .records import INTERRUPTED, RunRecord, record_from_line
from .sessions import SessionStore
from .types import AgentResult, Choice, ChoiceEvent, Finish, Logprobs, ReasoningDelta, ToolCallDelta

log = logging.getLogger("equabot_gw.runtime")

__all__ = ["Keys", "Entry", "digest_of", "stored_key", "events_after", "output_after", "output_units",
           "result_output", "MAX_KEYS", "MAX_KEY_CHARS",
           "DEFAULT_RETENTION_SECONDS", "MAX_META_BYTES"]

DEFAULT_RETENTION_SECONDS: Final = 86_400.0     # gateway.idempotency.retentionSeconds
# Keys remembered in memory, over all agents (about 300 bytes each): past it the
# oldest are forgotten, and a retry under one of those runs again. Stripe keeps
# keys 24 hours; a gateway taking 1 keyed request a second keeps 86,400.
MAX_KEYS: Final = 100_000
# Keys longer than this are remembered (and journalled) by their SHA-256.
MAX_KEY_CHARS: Final = 256
# The door's meta of one key, as JSON: bigger is refused (a bug of the door, not of the client).
MAX_META_BYTES: Final = 1024
# A record rebuilt from disk is looked up at most this long; then the request fails with 503.
LOOKUP_TIMEOUT: Final = 30.0


def digest_of(value: Any) -> str:
    """The SHA-256 (hex) of ``value`` as canonical JSON: keys sorted, no spaces, UTF-8.

    Two requests are "the same" when their digests are equal: key order and
    whitespace of the client's JSON do not matter, every value does.
    """
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def request_digest(request: Any) -> str:
    """A digest of an ``AgentRequest``, for callers that do not digest their own wire form."""
    return digest_of([request.message, request.agent_id, request.session_key, request.system,
                      request.model, request.origin, repr(request.context), repr(request.input),
                      repr(request.options)])


def stored_key(key: str) -> str:
    """The key as remembered: a long one by its digest, so that a table of them stays small."""
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class Entry:
    """One used key: the run it started, and what that run's request digested to.

    ``loading``: a lookup of the run's outcome on disk is under way (after a
    restart); others asking for the same key wait for it instead of reading twice.
    """

    __slots__ = ("agent_id", "key", "digest", "run_id", "session_key", "stateless", "at", "meta", "loading")

    def __init__(self, agent_id: str, key: str, digest: str, run_id: str, session_key: str,
                 stateless: bool, at: float, meta: dict[str, Any] | None) -> None:
        self.agent_id, self.key, self.digest, self.run_id = agent_id, key, digest, run_id
        self.session_key, self.stateless, self.at, self.meta = session_key, stateless, at, meta
        self.loading: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Entry {self.agent_id}:{self.key} run={self.run_id}>"

    def line(self) -> dict[str, Any]:
        line: dict[str, Any] = {"type": "key", "key": self.key, "digest": self.digest, "runId": self.run_id,
                                "sessionKey": self.session_key, "stateless": self.stateless, "at": self.at}
        if self.meta:
            line["meta"] = self.meta
        return line


def _entry_of(agent_id: str, line: dict[str, Any]) -> Entry | None:
    """The entry a journal line holds; None for a line that is not one (hand-edited, foreign)."""
    get = line.get
    at, meta = number(get("at")), get("meta")
    fields = (get("key"), get("digest"), get("runId"), get("sessionKey"))
    if get("type") != "key" or at is None or not all(type(f) is str and f for f in fields) \
            or type(get("stateless")) is not bool or not (meta is None or type(meta) is dict):
        return None
    return Entry(agent_id, *fields, get("stateless"), at, meta)      # type: ignore[arg-type]


class Keys:
    """The used keys of every agent, and the claims of clients on keyed runs.

    ``store`` keeps the journal; ``retention`` (seconds) is how long a key is
    remembered; ``clock`` gives epoch seconds (tests move it).
    """

    def __init__(self, store: SessionStore, retention: float = DEFAULT_RETENTION_SECONDS, *,
                 max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.time,
                 in_progress: Container[str] = ()) -> None:
        self.store = store
        self.retention = retention
        self.max_keys = max_keys
        self.clock = clock
        # Run ids of runs not settled yet: their keys outlive the size bound (a retry of
        # one must join it, never start it again); at most the agents' slots and queues.
        self.in_progress = in_progress
        self._table: OrderedDict[tuple[str, str], Entry] = OrderedDict()    # oldest first
        self._by_run: dict[str, Entry] = {}
        self._claims: dict[str, int] = {}       # run id -> clients streaming or waiting for it
        self._unclaimed: dict[str, asyncio.TimerHandle] = {}
        self._agent_ids: list[str] = []         # whose journals ``load`` read (and prunes daily)
        self._pruned_day = -1                   # the UTC day (of ``clock``) they were last pruned

    def __len__(self) -> int:
        return len(self._table)

    async def load(self, agent_ids: list[str]) -> None:
        """Read the agents' key journals (dropping expired days); the newest line of a key
        wins, and a ``free`` line forgets the key if it names the run the key has then."""
        since = self.clock() - self.retention
        self._agent_ids, self._pruned_day = list(agent_ids), int(self.clock() // 86400)
        for agent_id in agent_ids:
            # In batches: memory is the table and one batch, not a day's journal.
            async for lines in self.store.read_key_lines(agent_id, since):
                for line in lines:
                    entry = _entry_of(agent_id, line)
                    if entry is not None and entry.at > since:
                        self._put(entry)
                    elif line.get("type") == "free" and type(key := line.get("key")) is str:
                        freed = self._table.get((agent_id, key))
                        if freed is not None and freed.run_id == line.get("runId"):
                            self._drop(freed)

    # -- the table --

    def get(self, agent_id: str, key: str) -> Entry | None:
        """The live entry of ``key`` (as ``stored_key`` gives it) of agent ``agent_id``, or None."""
        entry = self._table.get((agent_id, key))
        if entry is not None and entry.at + self.retention <= self.clock():
            self._drop(entry)
            return None
        return entry

    def of_run(self, run_id: str) -> Entry | None:
        """The entry of the run ``run_id`` started under a key, or None."""
        entry = self._by_run.get(run_id)
        return entry if entry is not None and self.get(entry.agent_id, entry.key) is entry else None

    def add(self, agent_id: str, key: str, digest: str, run_id: str, session_key: str, stateless: bool,
            meta: dict[str, Any] | None, at: float | None = None) -> Entry:
        """Remember ``key`` for a new run, in memory; ``journal`` makes it durable when the run starts.

        ``at`` (epoch s; default now) is when the run was made: a record rebuilt from the
        journal after a restart answers with it as the run's ``created_at``.
        """
        if meta is not None and len(json.dumps(meta)) > MAX_META_BYTES:
            raise ValueError(f"idempotency meta over {MAX_META_BYTES} bytes")
        entry = Entry(agent_id, key, digest, run_id, session_key, stateless,
                      self.clock() if at is None else at, meta)
        self._put(entry)
        return entry

    def journal(self, entry: Entry) -> asyncio.Task[None]:
        """The task writing ``entry``'s journal line: await it when the run leaves its queue,
        before it produces anything (a key the journal lost would let a retry run twice).

        A run aborted while queued never writes it: it produced nothing, so
        after a restart its key may run again, as it may before one. The first
        line of a new day also deletes the journals of the days past the
        retention (as a start does), so a gateway that runs for months keeps
        no more of them than one that restarts daily.
        """
        today = int(self.clock() // 86400)
        if today > self._pruned_day and self._agent_ids:
            self._pruned_day = today
            for agent_id in self._agent_ids:
                self.store.prune_key_lines(agent_id, self.clock() - self.retention)
        task = asyncio.ensure_future(self.store.append_key_line(entry.agent_id, entry.line(), entry.at))
        task.add_done_callback(_retrieve)
        return task

    def forget(self, entry: Entry) -> None:
        """Forget ``entry`` (its run failed before any output: the key may run again)."""
        if self._table.get((entry.agent_id, entry.key)) is entry:
            self._drop(entry)

    def free(self, entry: Entry) -> asyncio.Task[None]:
        """Forget ``entry``, whose run ended without recording its turn (its journal line
        written), now and durably: the task appending its ``free`` line, which a restart
        reads. A retry under the key then runs again, before a restart and after one.

        The line is not awaited by the run (its client is answered at once); if it cannot
        be written (the disk that failed the turn fails it too), a warning says so, and
        after a restart the key replays as ``INTERRUPTED`` instead of running again.
        """
        self.forget(entry)
        line = {"type": "free", "key": entry.key, "runId": entry.run_id, "at": self.clock()}
        # In the day file of its key line: pruned with it, read after it.
        task = asyncio.ensure_future(self.store.append_key_line(entry.agent_id, line, entry.at))
        task.add_done_callback(functools.partial(_freed, entry))
        return task

    def _put(self, entry: Entry) -> None:
        old = self._table.pop((entry.agent_id, entry.key), None)
        if old is not None:
            self._by_run.pop(old.run_id, None)
        self._table[(entry.agent_id, entry.key)] = entry
        self._by_run[entry.run_id] = entry
        expired = self.clock() - self.retention
        spared = 0
        while len(self._table) > spared:
            oldest = next(iter(self._table.values()))
            if len(self._table) <= self.max_keys + spared and oldest.at > expired:
                break
            if oldest.run_id in self.in_progress and oldest.at > expired:
                self._table.move_to_end((oldest.agent_id, oldest.key))    # over the bound while it runs
                spared += 1
                continue
            self._drop(oldest)

    def _drop(self, entry: Entry) -> None:
        self._table.pop((entry.agent_id, entry.key), None)
        if self._by_run.get(entry.run_id) is entry:
            del self._by_run[entry.run_id]

    async def outcome_line(self, entry: Entry) -> dict[str, Any] | None:
        """The recorded outcome line ("assistant", "aborted" or "error") of ``entry``'s run,
        read from its transcript — or, the session reset since, from the transcript then
        archived — or from the stateless journals of its day and the next; None if none
        was recorded (the gateway stopped before it could record the turn)."""
        return await self.store.find_outcome(entry.agent_id, entry.run_id,
                                             None if entry.stateless else entry.session_key, entry.at)

    def earlier(self, agent_id: str, key: str, digest: str, find_run: Callable[[str], Any]) -> Any:
        """The run (``Run`` or ``RunRecord``) ``key`` started, to join or replay; None if
        the key may start a new run (unknown, expired, or its run failed before any
        output). Raises ``ApiError`` 422 ``idempotency_key_reused`` for another
        ``digest``, 409 if the run is not in memory (``load_earlier`` brings it)."""
        entry = self.get(agent_id, key)
        if entry is None:
            return None
        if entry.digest != digest:
            raise ApiError(422, "Keys for idempotent requests can only be used with the same parameters "
                                "they were first used with. Try using a key other than "
                                f"{entry.key[:80]!r} if you meant to execute a different request.",
                           code="idempotency_key_reused", param="idempotency_key")
        handle = find_run(entry.run_id)
        if handle is None:
            raise ApiError(409, "the run of this idempotency key is not in memory; retry the request",
                           code="idempotency_key_in_use")
        if handle.done and not produced(handle):
            self.forget(entry)      # failed before any output: the key may run again
            return None
        return handle

    async def load_earlier(self, agent_id: str, key: str, digest: str, find_run: Callable[[str], Any],
                           remember: Callable[[RunRecord], None]) -> None:
        """Bring the run of ``key`` into memory (``remember`` its record) if it is only on
        disk; concurrent callers share one lookup, each waiting at most ``LOOKUP_TIMEOUT``
        (the one that does the lookup too), then 503 ``unavailable``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOOKUP_TIMEOUT
        while (entry := self.get(agent_id, key)) is not None and entry.digest == digest \
                and find_run(entry.run_id) is None:
            try:
                async with asyncio.timeout_at(deadline):
                    if entry.loading is not None:
                        await asyncio.shield(entry.loading)
                        continue
                    entry.loading = loop.create_future()
                    try:
                        line = await self.outcome_line(entry)
                    finally:
                        entry.loading.set_result(None)
                        entry.loading = None
            except TimeoutError:
                raise ApiError(503, "the outcome of this idempotency key's run is still being "
                                    "looked up; retry later", code="unavailable") from None
            remember(record_from_line(entry, line))

    # -- claims: the disconnect policy of keyed runs --

    def hold(self, run_id: str) -> None:
        """A client streams or waits for run ``run_id``."""
        self._claims[run_id] = self._claims.get(run_id, 0) + 1
        timer = self._unclaimed.pop(run_id, None)
        if timer is not None:
            timer.cancel()

    def release(self, run_id: str, abort: Callable[[], object] | None, grace: float) -> None:
        """A client of run ``run_id`` left. When it was the last and ``abort`` is given, the
        run is aborted (``abort()``) unless a client claims it within ``grace`` seconds."""
        left = self._claims.get(run_id, 1) - 1
        if left > 0:
            self._claims[run_id] = left
            return
        self._claims.pop(run_id, None)
        if abort is not None and run_id not in self._unclaimed:
            self._unclaimed[run_id] = asyncio.get_running_loop().call_later(
                grace, self._give_up, run_id, abort)

    def _give_up(self, run_id: str, abort: Callable[[], object]) -> None:
        self._unclaimed.pop(run_id, None)
        if run_id not in self._claims:
            abort()

    def settled(self, run_id: str) -> None:
        """Run ``run_id`` ended: nothing is left to claim (the table keeps no claim of a finished run)."""
        self._claims.pop(run_id, None)
        timer = self._unclaimed.pop(run_id, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        for timer in self._unclaimed.values():
            timer.cancel()
        self._unclaimed.clear()


def produced(handle: Any) -> bool:
    """Whether a finished run (``Run`` or ``RunRecord``) gave any output: then it never runs again."""
    if type(handle) is not RunRecord:
        return handle._result is not None or bool(handle.events.text())
    # A reply over its bound is not recorded, but there was one.
    return handle.result is not None or bool(handle.partial) or handle.reply_at is not None \
        or (isinstance(handle.error, RunAborted) and handle.error.why == INTERRUPTED) \
        or isinstance(handle.error, ReplyTooLarge)


def _freed(entry: Entry, task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None or task.cancelled():
        log.warning("run %s: its idempotency key could not be freed in the journal (%s); after a restart "
                    "a retry under it is answered as interrupted instead of running again",
                    entry.run_id, exc or "cancelled")


def _retrieve(task: asyncio.Task[None]) -> None:
    # The run awaits this task; one aborted before it did must not leave
    # "exception was never retrieved" behind.
    if not task.cancelled():
        task.exception()


def text_units(event: Any) -> int:
    """How far ``event`` moves a reply's position: the characters of its answer text."""
    return len(event.text) if type(event) is Delta else 0


def output_units(event: Any) -> int:
    """How far ``event`` moves a reply's position counted in output units: characters of
    answer and reasoning text, one for a tool call's first fragment (its id and name) and
    a character per argument character, one per log-probability entry, one per finish."""
    kind = type(event)
    if kind is ChoiceEvent:
        event = event.event
        kind = type(event)
    if kind is Delta or kind is ReasoningDelta:
        return len(event.text)
    if kind is ToolCallDelta:
        return (event.id is not None or event.name is not None) + len(event.arguments)
    if kind is Logprobs:
        return len(event.content)
    return 1 if kind is Finish else 0


def _rest_of(event: Any, skip: int) -> Any:
    """``event`` without its first ``skip`` output units (0 < skip < ``output_units(event)``)."""
    inner = event.event if type(event) is ChoiceEvent else event
    kind = type(inner)
    if kind is Delta:
        rest: Any = Delta(inner.text[skip:])
    elif kind is ReasoningDelta:
        rest = ReasoningDelta(inner.text[skip:], inner.signature)
    elif kind is ToolCallDelta:        # the client has its id and name: the arguments go on
        header = inner.id is not None or inner.name is not None
        rest = ToolCallDelta(inner.index, None, None, inner.arguments[skip - header:])
    else:
        rest = Logprobs(inner.content[skip:], inner.size)
    return ChoiceEvent(event.index, rest) if type(event) is ChoiceEvent else rest


def result_output(result: AgentResult) -> list[Any]:
    """A finished reply's output as events, in the order a provider streams it: per choice
    its reasoning, text, tool calls and log probabilities (and a further choice's finish)."""
    out = _choice_output(result)
    for choice in result.extra_choices:
        out.extend(ChoiceEvent(choice.index, e) for e in (*_choice_output(choice), Finish(choice.finish_reason)))
    return out


def _choice_output(choice: AgentResult | Choice) -> list[Any]:
    events: list[Any] = [ReasoningDelta(choice.reasoning)] if choice.reasoning else []
    if choice.text:
        events.append(Delta(choice.text))
    events.extend(ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(choice.tool_calls))
    if choice.logprobs:
        events.append(Logprobs(tuple(choice.logprobs)))
    return events


def rebuilt_units(result: AgentResult) -> int:
    """The output units of a finished reply (``result_output``'s events)."""
    return sum(map(output_units, result_output(result)))


async def output_after(subscription: Any, after: int) -> AsyncIterator[list[RunEvent]]:
    """The batches of ``subscription`` (of a ``Run`` or a ``RunRecord``) from output unit
    ``after`` on (``output_units``), then its terminal event.

    A live run's log is read in the order its events came (joined runs of one
    kind hold the same units), so the position is exact for any reply:
    reasoning, tool calls, log probabilities and several choices included. A
    finished run's record yields its terminal event alone; its output is then
    rebuilt in ``result_output``'s order, exact for a reply that came in that
    order (the caller refuses a position inside any other, ``Claims.resumed``).
    """
    seen = 0
    logged = False          # the log held more than its terminal event: a live run, not a record
    out: list[RunEvent] = []

    def take(event: Any) -> None:
        """Pass what of ``event`` lies past ``after`` (an event of no units, if it is)."""
        nonlocal seen
        units = output_units(event)
        start, seen = seen, seen + units
        if seen > after:
            out.append(event if start >= after else _rest_of(event, after - start))
        elif units == 0 and start >= after:
            out.append(event)

    while (batch := await subscription.next_batch()) is not None:
        out = []
        for event in batch:
            kind = type(event)
            if kind is Ended or kind is Failed:
                if not logged:
                    rebuilt = result_output(event.result) if kind is Ended \
                        else [Delta(event.partial)] if event.partial else []      # type: ignore[union-attr]
                    for part in rebuilt:
                        take(part)
                out.append(event)
                continue
            logged = True
            take(event)
        if out:
            yield out


async def events_after(subscription: Any, after: int) -> AsyncIterator[list[RunEvent]]:
    """The batches of ``subscription`` (of a ``Run`` or a ``RunRecord``) from character
    ``after`` of the reply on, then its terminal event.

    The position counts characters of the answer text, so it does not depend
    on how the reply was cut into deltas, nor on whether it is read live, from
    a compacted log, or rebuilt from the transcript: a finished run's record
    yields its terminal event alone, and the text (and, for a finished
    reply, its reasoning and tool calls) not seen in the log is made into
    deltas before it. Output other than answer text that comes before the
    position is left out; after it, it passes as it came.
    """
    seen = 0
    logged = False          # the log held more than its terminal event: a live run, not a record
    while (batch := await subscription.next_batch()) is not None:
        out: list[RunEvent] = []
        for event in batch:
            kind = type(event)
            if kind is Delta:
                logged = True
                text = event.text            # type: ignore[union-attr]
                start, seen = seen, seen + len(text)
                if seen > after:
                    out.append(event if start >= after else Delta(text[after - start:]))
            elif kind is Ended or kind is Failed:
                full = event.result.text if kind is Ended else event.partial     # type: ignore[union-attr]
                result = event.result if kind is Ended and not logged else None  # type: ignore[union-attr]
                if result is not None and result.reasoning and after == 0:
                    out.append(ReasoningDelta(result.reasoning))
                if len(full) > seen and len(full) > after:
                    out.append(Delta(full[max(seen, after):]))
                if result is not None:
                    out.extend(ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(result.tool_calls))
                seen = max(seen, len(full))
                out.append(event)
            else:
                logged = True
                if seen >= after:
                    out.append(event)
        if out:
            yield out
