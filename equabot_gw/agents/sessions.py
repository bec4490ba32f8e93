"""The session store the agent runtime calls: ``SessionStore``.

Owns each agent's in-memory index and the LRU history cache, the per-key
lanes of an open store, and the async API that ties them to the disk:
opening and closing, recording turns, resets and deletes, a run's history.
What the doors read back is its base class's (``session_reads``), the key
grammar ``session_keys``'s (its functions are importable from here too, as
the doors name them), the lane ``lanes``'s. Everything on disk (file
names, line format, index file, the committer thread) belongs to
``transcripts``: this module only queues its jobs and reads or writes no
file itself. One process owns a state dir. Imports nothing from
equabot_gw.net or equabot_gw.gateway.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pathlib
import sys
import time
from collections import OrderedDict
from typing import Any, AsyncContextManager, AsyncIterator, Callable, Final

from equabot_gw import errors
from equabot_gw.agents import filewindows, transcripts
from equabot_gw.agents.lanes import Lane
from equabot_gw.agents.session_reads import SessionReads
from equabot_gw.agents.session_keys import (
    agent_of, check_agent_id, is_key_of, scoped_key, stateless_key, user_key, validate_key, with_agent,
)
from equabot_gw.agents.transcripts import Committer, IndexEntry, SessionInfo
from equabot_gw.agents.types import Message, SessionHistory, TurnRecord, message_chars

__all__ = [
    "SessionInfo", "SessionStore",
    "DEFAULT_STATELESS_RETENTION_DAYS", "DEFAULT_MAX_CACHED_SESSIONS",
    "DEFAULT_MAX_CACHED_BYTES", "DEFAULT_MAX_CACHED_HISTORY_BYTES",
    # the key grammar (session_keys), as the doors import it
    "validate_key", "agent_of", "scoped_key", "user_key", "stateless_key",
]


async def _encoded(lines: list[dict[str, Any]], turn: TurnRecord, uninterrupted: bool) -> bytes:
    """``transcripts.encode_turn``; ``uninterrupted``: encoded again if the caller is
    cancelled meanwhile (the cancellation stays counted on its task)."""
    while True:
        try:
            return await transcripts.encode_turn(lines, turn)
        except asyncio.CancelledError:
            if not uninterrupted:
                raise


def _history_bytes(messages: tuple[Message, ...]) -> int:
    """What caching ``messages`` costs: their texts as stored (parts, tool calls and
    reasoning by their characters), and each message object."""
    return sum([sys.getsizeof(m.content) if type(m.content) is str and not m.tool_calls and not m.reasoning
                else _MESSAGE_OVERHEAD_BYTES + message_chars(m) for m in messages]) \
        + _MESSAGE_OVERHEAD_BYTES * len(messages)


DEFAULT_STATELESS_RETENTION_DAYS: Final = 7.0    # sessions.statelessRetentionDays
DEFAULT_MAX_CACHED_SESSIONS: Final = 1024
# Bytes of history the cache holds in all, and the most one session may take
# (a larger one is read from its transcript at each turn instead).
DEFAULT_MAX_CACHED_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_CACHED_HISTORY_BYTES: Final = 8 * 1024 * 1024
# What one cached message costs besides its text (Message object, tuple slot).
_MESSAGE_OVERHEAD_BYTES: Final = 72
INDEX_FLUSH_INTERVAL: Final = 0.5   # seconds: an index is rewritten at most this often per agent
# An index rewrite costs time in proportion to the agent's sessions (and holds
# the interpreter's lock while it encodes): the next one waits at least this
# many times as long as the last took, so rewrites stay a small share of the
# process's time however many sessions there are (measured: 18 µs a session,
# a third of a core at 10,000 sessions with a fixed 0.5 s interval).
INDEX_FLUSH_COST_FACTOR: Final = 20
INDEX_RETRY_INTERVAL: Final = 5.0   # seconds before retrying an index write that failed


class _Agent:
    """One agent's in-memory state: its index and where its files live."""

    def __init__(self, agents_dir: str, agent_id: str) -> None:
        self.agent_id = agent_id
        self.sessions_dir = os.path.join(agents_dir, agent_id, transcripts.SESSIONS_DIR)
        self.journal_dir = os.path.join(agents_dir, agent_id, transcripts.JOURNAL_DIR)
        self.index: dict[str, IndexEntry] = {}   # untracked tuples: see IndexEntry
        self.creating: set[str] = set()      # keys whose first turn (with the header) is queued
        # key with turns in flight -> [those turns, resets and deletes queued since]: a turn
        # that sees the second grow went to the archived or deleted transcript.
        self.queued: dict[str, list[int]] = {}
        self.dirty = False
        self.flush_handle: asyncio.TimerHandle | None = None
        self.next_flush = 0.0                # loop time before which the index is not rewritten
        self.journal_day, self.journal_path = -1, ""

    def path(self, key: str) -> str:
        return os.path.join(self.sessions_dir, transcripts.transcript_name(key))


class SessionStore(SessionReads):
    """Transcripts, the session index, journals and lanes of one state dir.

    Call ``open()`` in the event loop that uses the store and ``close()`` at
    the end; a closed store may be opened again (in any loop), as if new. Methods taking ``agent_id, key`` accept a key as ``scoped_key``
    does and raise ``ApiError`` 400 for a bad key, agent id, or a key of
    another agent. Disk work runs in one committer thread, never on the loop.
    The read-back methods (``read_outcome``, ``read_transcript``, ``list_sessions``
    and the like) are ``SessionReads``'s.
    """

    def __init__(self, state_dir: pathlib.Path, *,
                 stateless_retention_days: float = DEFAULT_STATELESS_RETENTION_DAYS,
                 clock: Callable[[], float] = time.time,
                 max_cached_sessions: int = DEFAULT_MAX_CACHED_SESSIONS,
                 max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES,
                 max_cached_history_bytes: int = DEFAULT_MAX_CACHED_HISTORY_BYTES) -> None:
        # configuration
        self._agents_dir = os.path.join(os.fspath(state_dir), "agents")
        self._retention = stateless_retention_days * 86400.0
        self._clock = clock
        self._max_cached = max_cached_sessions
        self._max_cached_bytes = max_cached_bytes
        self._max_cached_history_bytes = min(max_cached_history_bytes, max_cached_bytes)
        self._forget_open_store()

    def _forget_open_store(self) -> None:
        # the open store: set afresh when a closed store is opened again
        self._committer: Committer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._closing: asyncio.Future[None] | None = None    # done once close() has finished
        self._agents: dict[str, _Agent] = {}
        # scoped key -> (history, its bytes), least recently used first
        self._cache: OrderedDict[str, tuple[SessionHistory, int]] = OrderedDict()
        self._cached_bytes = 0
        self._lanes: dict[str, list[Any]] = {}
        self._journal_day = -1               # the newest UTC day seen: a later one prunes

    @property
    def on_disk(self) -> bool:
        """Whether the store's directory exists (``open`` creates it): a state dir
        nothing was ever stored in has none."""
        return os.path.isdir(self._agents_dir)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._committer else "new"
        return (f"<SessionStore {self._agents_dir} {state} agents={len(self._agents)} "
                f"cached={len(self._cache)} pending={self.pending_commits}>")

    @property
    def pending_commits(self) -> int:
        """Appends queued or being written that have not been acknowledged yet."""
        return self._committer.pending if self._committer else 0

    @property
    def commit_stats(self) -> transcripts.CommitStats:
        """Sizes and times of the group commits since ``open()`` (read-only, for metrics)."""
        return self._committer.stats if self._committer else transcripts.CommitStats()

    def session_count(self) -> int:
        """Keyed sessions of every agent (what ``list_sessions()`` lists, without sorting)."""
        return sum(len(agent.index) for agent in self._agents.values())

    @property
    def commit_batches(self) -> int:
        """Group commits done so far (each one write + one fsync per touched file)."""
        return self._committer.batches if self._committer else 0

    # -- lifetime --

    async def open(self) -> None:
        """Create ``<state>/agents`` (0o700), start the committer, load every agent's index
        (rebuilt from transcript headers where it falls short) and prune old journals.

        Raises ``StorageError`` if the state dir cannot be read; RuntimeError
        if the store is open already.
        """
        if self._committer is not None and not self._closed:
            raise RuntimeError("the SessionStore is open already")
        if self._closed:
            self._forget_open_store()
        try:
            os.makedirs(self._agents_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise transcripts.storage_error("creating the state directory", exc) from exc
        self._loop = asyncio.get_running_loop()
        self._committer = committer = Committer(self._loop)
        committer.start()
        try:
            loaded = await committer.job("loading the session index",
                                         functools.partial(transcripts.load, self._agents_dir, is_key_of))
            self._journal_day = int(self._clock() // 86400)
            await committer.job("pruning old journals", self._prune_job())
        except BaseException:
            self._closed = True
            await committer.stop()
            raise
        for agent_id, (index, changed) in loaded.items():
            self._agent(agent_id).index = index
            if changed:
                self._mark_dirty(self._agents[agent_id])

    async def close(self) -> None:
        """Wait for queued appends, write dirty indexes, stop the committer, close fds.

        Idempotent: a call while another is closing returns when that one has.
        An index that cannot be written is logged (the next open rebuilds it
        from the transcripts).
        """
        committer = self._committer
        if committer is None or self._closed:
            self._closed = True
            if self._closing is not None:
                await asyncio.shield(self._closing)
            return
        self._closed = True
        self._closing = closing = asyncio.get_running_loop().create_future()
        try:
            await committer.job("closing", lambda _: None)    # every earlier append is resolved
            for agent in self._agents.values():
                if agent.flush_handle is not None:
                    agent.flush_handle.cancel()
            flushes = [self._flush_index(agent, wait=True) for agent in self._agents.values() if agent.dirty]
            await asyncio.gather(*flushes, return_exceptions=True)
            await committer.stop()
        finally:
            closing.set_result(None)

    # -- lanes --

    def lane(self, key: str) -> AsyncContextManager[None]:
        """``async with store.lane(key):`` one holder at a time per (scoped) key, FIFO.

        Nothing stays behind once no task holds or waits for the key.
        """
        return Lane(self._lanes, key)

    # -- turns --

    async def record_turn(self, agent_id: str, key: str, turn: TurnRecord, *,
                          stateless: bool = False, uninterrupted: bool = False) -> transcripts.Stored:
        """Append ``turn`` durably: returns where its lines are, only once they are fsynced.

        Keyed: to the session's transcript (header and ``turn.context`` first
        when the session is new); then the index and history cache follow.
        Stateless: to the agent's journal of ``turn.at``'s UTC day.
        Raises ``StorageError`` (closed store, or any OSError: the transcript
        keeps every earlier turn and none of this one), ``ApiError`` 400 for a
        bad key, ValueError for an unknown ``turn.status``. ``uninterrupted``:
        a cancellation of the caller meanwhile is not raised here but left
        counted on its task (``Task.cancelling``); the turn is encoded and
        written all the same, and the outcome returned or raised as usual.
        """
        committer = self._require_open()
        key = self._session_key(agent_id, key)
        agent = self._agent(agent_id)
        if stateless:
            data = transcripts.encode_plain_turn(turn, key)
            if data is None:
                lines = transcripts.turn_lines(turn, key, True)
                if transcripts.is_large(turn):
                    data = await _encoded(lines, turn, uninterrupted)
                    committer = self._require_open()    # it may have closed meanwhile
                else:
                    data = transcripts.encode(lines)
            path = self._journal_path(agent, turn.at)
            told: list[Any] = []
            try:
                offset = await committer.append("the stateless journal", path, data,
                                                on_ok=told.append, on_error=told.append)
            except asyncio.CancelledError:
                if not uninterrupted:
                    raise
                offset = await committer.outcome(told)
            return transcripts.Stored(path, offset, len(data))
        while True:
            is_new, blank = self._newness(agent, key)
            # The first turn after a reset stores its starting context, as a new session's does.
            lines = transcripts.turn_lines(turn, None, is_new or blank)
            if is_new:
                lines.insert(0, transcripts.header_line(key, agent_id, turn.at))
            if not transcripts.is_large(turn):
                data = transcripts.encode(lines)
                break
            data = await _encoded(lines, turn, uninterrupted)
            # A large turn is encoded over several loop steps: if a reset or
            # another turn changed whether the session is new meanwhile, redo it.
            if (is_new, blank) == self._newness(agent, key):
                committer = self._require_open()    # it may have closed meanwhile
                break
        if is_new:
            agent.creating.add(key)
        path = agent.path(key)
        told = []
        slot = agent.queued.get(key) or agent.queued.setdefault(key, [0, 0])
        slot[0] += 1
        forgets_before = slot[1]

        def superseded() -> bool:
            # This turn is resolved: was a reset or delete queued after it (and took its lines)?
            slot[0] -= 1
            if slot[0] == 0:
                del agent.queued[key]
            return slot[1] != forgets_before

        def recorded(offset: int) -> None:
            told.append(offset)
            self._turn_recorded(agent, key, turn, lines, is_new, superseded())

        def failed(exc: BaseException) -> None:
            told.append(exc)
            superseded()
            if is_new:
                agent.creating.discard(key)

        written = committer.append("a session transcript", path, data, on_ok=recorded, on_error=failed)
        try:
            offset = await written
        except asyncio.CancelledError:
            if not uninterrupted:
                raise
            offset = await committer.outcome(told)
        return transcripts.Stored(path, offset, len(data))

    @staticmethod
    def _newness(agent: _Agent, key: str) -> tuple[bool, bool]:
        """(whether a turn queued now starts the transcript, whether it is the first since a reset)."""
        entry = agent.index.get(key)
        if entry is None:
            return key not in agent.creating, False
        return False, entry[3] is None

    def _turn_recorded(self, agent: _Agent, key: str, turn: TurnRecord,
                       lines: list[dict[str, Any]], is_new: bool, superseded: bool) -> None:
        # On the loop, in commit order, even if the caller was cancelled meanwhile.
        agent.creating.discard(key)
        if superseded:
            return                # written to the transcript that a reset or delete took away
        old = agent.index.get(key)
        ok = int(turn.status == "ok")
        agent.index[key] = (turn.at, turn.at, ok, turn.run_id) if old is None \
            else (old[0], max(old[1], turn.at), old[2] + ok, turn.run_id)
        self._mark_dirty(agent)
        cached = self._cache.get(key)
        if cached is not None or is_new:      # a new session's whole history is these lines
            base, size = cached or (SessionHistory(), 0)
            history = transcripts.fold(base, lines)
            self._cache_put(key, history, size + _history_bytes(history.messages[len(base.messages):]))

    def _journal_path(self, agent: _Agent, at: float) -> str:
        day = int(at // 86400)
        if day != agent.journal_day:
            agent.journal_day = day
            agent.journal_path = os.path.join(agent.journal_dir, transcripts.journal_name(day))
            if day > self._journal_day:       # the date rolled over: prune, in queue order
                self._journal_day = day
                self._committer.post("pruning old journals", self._prune_job())  # type: ignore[union-attr]
        return agent.journal_path

    def _prune_job(self) -> Callable[[Committer], None]:
        cutoff = self._clock() - self._retention
        return functools.partial(transcripts.prune_journals, self._agents_dir, cutoff)

    # -- a run's history, and the cache of histories --

    async def history(self, agent_id: str, key: str) -> SessionHistory:
        """The session's messages and assistant turns, from its transcript.

        Served from an LRU cache; the transcript is read once on a miss.
        ``SessionHistory()`` (``exists=False``) for a session never recorded,
        stateless ones included. Raises ``StorageError`` if the read fails.
        """
        self._require_open()
        key = self._session_key(agent_id, key)
        agent = self._agents.get(agent_id)
        info = agent.index.get(key) if agent else None
        if agent is None or info is None:
            return SessionHistory()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached[0]
        history = transcripts.fold(SessionHistory(), await self._read(agent.path(key)))
        # Cache only if no turn, reset or delete was resolved since the read was
        # queued: entries are replaced on every change, so identity is a version.
        if agent.index.get(key) is info:
            self._cache_put(key, history, _history_bytes(history.messages))
        return history

    async def _read(self, path: str) -> list[dict[str, Any]]:
        # The bytes are read in the committer thread, in order with the appends;
        # they are decoded here, in slices of the loop.
        data = await self._require_open().job(
            "reading a transcript", functools.partial(transcripts.read_bytes, path))
        return await transcripts.parse_lines_async(data, path)

    def _cache_put(self, key: str, history: SessionHistory, size: int) -> None:
        self._cache_drop(key)
        if size > self._max_cached_history_bytes:
            return              # too large to keep: read from its transcript at each turn
        self._cache[key] = (history, size)
        self._cached_bytes += size
        while len(self._cache) > self._max_cached or self._cached_bytes > self._max_cached_bytes:
            self._cached_bytes -= self._cache.popitem(last=False)[1][1]

    def _cache_drop(self, key: str) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cached_bytes -= entry[1]

    @property
    def cached_bytes(self) -> int:
        """Bytes of history the cache holds now (at most ``max_cached_bytes``)."""
        return self._cached_bytes

    # -- resetting and deleting --

    async def reset(self, agent_id: str, key: str) -> bool:
        """Archive the transcript as ``<file>.reset-<unix-ms>.jsonl`` and start the key afresh.

        The key stays a session, blank: a new transcript of only its header, listed at once
        with no turns and a new creation time (a new ``sessionId``), which the next turn
        continues (storing its starting context, as a new session's first turn does); an
        unknown key gets one too. Returns whether there was a session. Turns queued before
        land in the archive. Raises ``StorageError`` if the archive or the new transcript
        cannot be written (the session then stays as it was).
        """
        committer = self._require_open()
        key = self._session_key(agent_id, key)
        agent = self._agent(agent_id)
        now = self._clock()
        old = agent.index.get(key)
        existed = old is not None or key in agent.creating
        blank: IndexEntry = (now, now, 0, None)
        # Replaced at once: a turn queued after this call continues the blank transcript.
        self._supersede(agent, key)
        agent.index[key] = blank
        self._cache_put(key, SessionHistory(), 0)
        self._mark_dirty(agent)

        def failed(_: BaseException) -> None:
            if agent.index.get(key) is blank:     # the old transcript is still there: so is the session
                if old is None:
                    del agent.index[key]
                else:
                    agent.index[key] = old
                self._cache_drop(key)
                self._mark_dirty(agent)

        header = transcripts.encode([transcripts.header_line(key, agent_id, now)])
        await committer.job("archiving a transcript", functools.partial(
            transcripts.restart, agent.path(key), int(now * 1000), header), on_error=failed)
        return existed

    async def delete(self, agent_id: str, key: str) -> bool:
        """Remove the transcript and its index entry; False if there is no such session.

        Raises ``StorageError`` if the unlink fails (the session then stays).
        """
        committer = self._require_open()
        key = self._session_key(agent_id, key)
        agent = self._agents.get(agent_id)
        info = agent.index.pop(key, None) if agent else None
        if agent is None or info is None:
            return False
        # Forgotten at once: a turn queued after this call starts a new file with a header.
        self._supersede(agent, key)
        self._cache_drop(key)
        self._mark_dirty(agent)

        def failed(_: BaseException) -> None:
            if key not in agent.index and key not in agent.creating:
                agent.index[key] = info           # the file is still there: so is the session
                self._mark_dirty(agent)

        await committer.job("deleting a transcript", functools.partial(transcripts.delete, agent.path(key)),
                            on_error=failed)
        return True

    @staticmethod
    def _supersede(agent: _Agent, key: str) -> None:
        """The turns of ``key`` queued so far go to the transcript being archived or deleted."""
        slot = agent.queued.get(key)
        if slot is not None:
            slot[1] += 1

    # -- helpers --

    def _require_open(self) -> Committer:
        if self._committer is None or self._closed:
            raise errors.StorageError("the session store is not open")
        return self._committer

    def _session_key(self, agent_id: str, key: str) -> str:
        if agent_id not in self._agents:      # known agents were checked when first seen
            check_agent_id(agent_id)
        validate_key(key)
        owner = agent_of(key)
        if owner is None:       # scoped to ``agent_id``, as ``scoped_key`` does
            key = validate_key(f"agent:{agent_id}:{key}")
            owner = agent_of(key)
        if owner != agent_id and owner is not None and owner.lower() == agent_id.lower():
            key, owner = with_agent(key, agent_id), agent_id
        if owner != agent_id:
            raise errors.ApiError(400, f"session key {key!r} belongs to agent {owner!r}, not {agent_id!r}",
                                  code="invalid_session_key", param="session_key")
        return key

    def _agent(self, agent_id: str) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = _Agent(self._agents_dir, agent_id)
        return agent

    def _mark_dirty(self, agent: _Agent) -> None:
        agent.dirty = True
        if agent.flush_handle is None and not self._closed and self._loop is not None:
            delay = max(0.0, agent.next_flush - self._loop.time())
            agent.flush_handle = self._loop.call_later(delay, self._flush_index, agent)

    def _flush_index(self, agent: _Agent, wait: bool = False) -> asyncio.Future[Any] | None:
        agent.flush_handle, agent.dirty = None, False
        agent.next_flush = self._loop.time() + INDEX_FLUSH_INTERVAL  # type: ignore[union-attr]
        # Entries are tuples, so a shallow copy is a consistent snapshot for the thread.
        job = functools.partial(transcripts.write_index, agent.sessions_dir, dict(agent.index))
        send = self._committer.job if wait else self._committer.post  # type: ignore[union-attr]
        return send("writing the session index", job, on_ok=lambda took: self._index_written(agent, took),
                    on_error=lambda _: self._index_failed(agent))

    def _index_written(self, agent: _Agent, took: float) -> None:
        # Keep rewrites a bounded share of the time (INDEX_FLUSH_COST_FACTOR).
        if self._loop is not None:
            agent.next_flush = max(agent.next_flush,
                                   self._loop.time() + took * INDEX_FLUSH_COST_FACTOR)

    def _index_failed(self, agent: _Agent) -> None:
        agent.next_flush = self._loop.time() + INDEX_RETRY_INTERVAL  # type: ignore[union-attr]
        self._mark_dirty(agent)

    # -- the idempotency key journal (its lines belong to ``agents.idempotency``) --

    async def append_key_line(self, agent_id: str, line: dict[str, Any], at: float) -> None:
        """Append ``line`` to agent ``agent_id``'s key journal of ``at``'s UTC day; returns
        once it is fsynced. Raises ``StorageError``."""
        committer = self._require_open()
        check_agent_id(agent_id)
        path = os.path.join(self._agents_dir, agent_id, transcripts.KEYS_DIR,
                            transcripts.journal_name(int(at // 86400)))
        await committer.append("the idempotency journal", path, transcripts.encode([line]))

    def prune_key_lines(self, agent_id: str, before: float) -> None:
        """Delete agent ``agent_id``'s key journals of the UTC days that ended by ``before``
        (epoch s), after every write queued before (not awaited: a failure is logged)."""
        committer = self._require_open()
        check_agent_id(agent_id)
        directory = os.path.join(self._agents_dir, agent_id, transcripts.KEYS_DIR)
        committer.post("pruning old idempotency journals",
                       functools.partial(transcripts.prune_key_journals, directory, before))

    async def read_key_lines(self, agent_id: str, since: float) -> AsyncIterator[list[dict[str, Any]]]:
        """The lines of agent ``agent_id``'s key journals of the UTC days that ended
        after ``since`` (epoch s), oldest first, in batches of a bounded size (a
        journal is read a window at a time, never whole); older journals are deleted.
        Raises ``StorageError``."""
        committer = self._require_open()
        check_agent_id(agent_id)
        directory = os.path.join(self._agents_dir, agent_id, transcripts.KEYS_DIR)
        journals = await committer.job("reading the idempotency journal",
                                       functools.partial(transcripts.key_journals, directory, since))
        for path, offset in journals:
            read, skipped, first = 0, 0, 0
            at: int | None = offset
            while at is not None:
                window = await self._require_open().job(
                    "reading the idempotency journal", functools.partial(filewindows.read_key_window, path, at))
                if window.skipped and not skipped:
                    first = read + window.first
                read, skipped, at = read + window.count, skipped + window.skipped, window.next
                if window.lines:
                    yield window.lines
            if skipped:
                transcripts.log.warning("%s: skipped %d %s not holding a JSON object, the first at line %d",
                                        os.path.basename(path), skipped, "line" if skipped == 1 else "lines",
                                        first)
