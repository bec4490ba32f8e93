"""Reading back what the session store recorded, for the doors.

``SessionReads`` is the read-only side of ``SessionStore``, which derives
from it: the reply of a run where ``record_turn`` put it, a keyed session's
transcript, an agent's stateless journal of a day, the outcome of a run
found in either (or in a transcript archived by a reset), and the index's
sessions as ``SessionInfo``, and the token usage of transcripts and journals
per day. It keeps no state of its own but the usage sums of files that no
longer change: it reads the open store's (each agent's index and where its
files live, the committer that reads them in order with the appends). Usage
is read outside the committer, in a worker thread, so that appends never
wait behind a long scan (``usage_scan.scan_usage`` says why that is safe).
None of it is on a run's path: a run's history is ``SessionStore.history``, beside the
cache it fills. Imports nothing from equabot_gw.net or equabot_gw.gateway.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Final

from equabot_gw.agents import transcripts, usage_scan
from equabot_gw.agents.session_keys import check_agent_id
from equabot_gw.agents.transcripts import SessionInfo, session_info
from equabot_gw.agents.types import Message

if TYPE_CHECKING:
    from equabot_gw.agents.committer import Committer
    from equabot_gw.agents.sessions import _Agent

__all__ = ["SessionReads", "MAX_USAGE_CACHE_FILES"]

# Usage sums kept (a few hundred bytes each, least recently used dropped first):
# 2000 keyed transcripts and a year of journals of a dozen agents.
MAX_USAGE_CACHE_FILES: Final = 8192
# A file changed less than this long ago may change again within its mtime's
# granularity without a new signature: it is scanned at every call, not kept.
_USAGE_SETTLED_NS: Final = 2_000_000_000


class _UsageMemo:
    """The usage sums of settled files by path, and the lock that lets one scan run at a
    time (so concurrent callers take no more memory than one, and find its sums)."""

    __slots__ = ("loop", "lock", "scans")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 scans: OrderedDict[str, usage_scan.UsageScan]) -> None:
        self.loop, self.lock, self.scans = loop, asyncio.Lock(), scans


def _usage_job(path: str, known: usage_scan.UsageScan | None) -> usage_scan.UsageScan | None:
    """In a worker thread: ``known`` if the file is still the one it was made from, else a scan."""
    if known is not None and usage_scan.file_signature(path) == known.signature:
        return known
    return usage_scan.scan_usage(path)


class SessionReads:
    """What the doors read back from a ``SessionStore`` (its base class); see there for its
    contract on keys and agent ids."""

    # The open store's state and checks, all SessionStore's.
    _agents_dir: str
    _agents: dict[str, _Agent]
    _clock: Callable[[], float]
    _usage_memo: _UsageMemo | None = None      # made at the first usage read, in its loop

    if TYPE_CHECKING:
        def _require_open(self) -> Committer: ...

        def _session_key(self, agent_id: str, key: str) -> str: ...

        async def _read(self, path: str) -> list[dict[str, Any]]: ...

    async def read_outcome(self, where: transcripts.Stored, run_id: str) -> Message | None:
        """The reply of run ``run_id`` as recorded at ``where``, as an assistant message
        (text, tool calls, reasoning; of a failed run, the partial text its "error" line
        keeps); None once its transcript was reset or deleted, or its journal pruned.
        Raises ``StorageError`` if the store is closed.
        """
        committer = self._require_open()
        return await committer.job(  # type: ignore[no-any-return]
            "reading a reply back", functools.partial(transcripts.read_outcome, where, run_id))

    async def read_transcript(self, agent_id: str, key: str) -> list[dict[str, Any]]:
        """Every parsed line of a keyed session's transcript, header first; [] if none.

        A torn last line and lines that are not JSON objects are left out.
        Raises ``StorageError`` if the read fails.
        """
        self._require_open()
        key = self._session_key(agent_id, key)
        agent = self._agents.get(agent_id)
        if agent is None or key not in agent.index:
            return []
        return await self._read(agent.path(key))

    async def find_outcome(self, agent_id: str, run_id: str, session_key: str | None, at: float
                           ) -> dict[str, Any] | None:
        """The last outcome line ("assistant", "aborted" or "error") of run ``run_id``, made at
        ``at`` (epoch s): in the agent's stateless journals of ``at``'s UTC day and the next
        (``session_key`` None), else in the session's transcript or, that one reset since, in
        the transcript the reset archived; None if none holds one. Only the lines naming the
        run are decoded (``transcripts.find_outcome``). Raises ``StorageError``.
        """
        committer = self._require_open()
        check_agent_id(agent_id)
        if session_key is None:
            day = int(at // 86400)      # ``at`` as a key journal on disk holds it: any finite number
            paths = [os.path.join(self._agents_dir, agent_id, transcripts.JOURNAL_DIR, transcripts.journal_name(d))
                     for d in (day, day + 1) if d in transcripts.JOURNAL_DAYS]
            return await committer.job(  # type: ignore[no-any-return]
                "looking a run up in the journal", functools.partial(transcripts.find_outcome, paths, run_id))
        key = self._session_key(agent_id, session_key)
        agent = self._agents.get(agent_id)
        if agent is None:
            return None
        path = agent.path(key)
        found = None
        if key in agent.index:
            found = await committer.job(
                "looking a run up in a transcript", functools.partial(transcripts.find_outcome, [path], run_id))
        if found is None:
            found = await committer.job(
                "looking a run up in an archived transcript",
                functools.partial(transcripts.find_archived_outcome, path, int(at * 1000), run_id))
        return found  # type: ignore[no-any-return]

    def list_sessions(self, agent_id: str | None = None) -> list[SessionInfo]:
        """Keyed sessions (of one agent, or of all), most recently updated first."""
        agents = self._agents.values() if agent_id is None else \
            [a for a in (self._agents.get(agent_id),) if a is not None]
        infos = [session_info(agent.agent_id, key, entry)
                 for agent in agents for key, entry in agent.index.items()]
        infos.sort(key=lambda i: (i.updated_at, i.key), reverse=True)
        return infos

    def session_info(self, agent_id: str, key: str) -> SessionInfo | None:
        """The index entry of one keyed session (``key`` already scoped), or None."""
        agent = self._agents.get(agent_id)
        entry = agent.index.get(key) if agent is not None else None
        return session_info(agent_id, key, entry) if entry is not None else None

    def index_path(self, agent_id: str) -> str:
        """Where agent ``agent_id``'s session index lives (shown to operators, never opened here)."""
        return os.path.join(self._agents_dir, agent_id, transcripts.SESSIONS_DIR, transcripts.INDEX_NAME)

    async def read_journal(self, agent_id: str, day: int) -> list[dict[str, Any]]:
        """Every parsed line of agent ``agent_id``'s stateless journal of UTC ``day``; [] if none.

        ``day`` counts days since the epoch. Raises ``StorageError`` if the read fails.
        """
        committer = self._require_open()
        check_agent_id(agent_id)
        path = os.path.join(self._agents_dir, agent_id, transcripts.JOURNAL_DIR,
                            transcripts.journal_name(day))
        return await committer.job(  # type: ignore[no-any-return]
            "reading a journal", functools.partial(transcripts.read_lines, path))

    async def transcript_usage(self, agent_id: str, key: str) -> usage_scan.DayUsage:
        """Token usage of a keyed session's transcript: {UTC day: (prompt, completion)} summed
        over its "assistant" lines (``usage_scan.scan_usage``); {} if there is none.

        Streamed in a worker thread, not the committer: appends do not wait for it.
        Sums of a file unchanged since (same signature) are reused. Raises
        ``StorageError`` if the read fails or the store is closed.
        """
        self._require_open()
        key = self._session_key(agent_id, key)
        agent = self._agents.get(agent_id)
        if agent is None or key not in agent.index:
            return {}
        return await self._usage(agent.path(key), keep=True)

    async def journal_usage(self, agent_id: str, day: int) -> usage_scan.DayUsage:
        """Token usage of agent ``agent_id``'s stateless journal of UTC ``day`` (days since the
        epoch), as ``transcript_usage`` gives it; {} if there is none.

        A past day's sums are kept and reused while its file is unchanged (it
        is written on its own day only, pruned later); the current day's
        journal is scanned at every call. Raises ``StorageError``.
        """
        self._require_open()
        check_agent_id(agent_id)
        path = os.path.join(self._agents_dir, agent_id, transcripts.JOURNAL_DIR, transcripts.journal_name(day))
        return await self._usage(path, keep=day < int(self._clock() // 86400))

    async def _usage(self, path: str, keep: bool) -> usage_scan.DayUsage:
        memo = self._usage_memo
        loop = asyncio.get_running_loop()
        if memo is None or memo.loop is not loop:       # a lock serves one loop: a reopened store's is new
            memo = self._usage_memo = _UsageMemo(loop, memo.scans if memo is not None else OrderedDict())
        async with memo.lock:
            known = memo.scans.get(path) if keep else None
            try:
                scan = await asyncio.to_thread(_usage_job, path, known)
            except OSError as exc:
                transcripts.log.warning("session store: reading usage failed: %s", exc)
                raise transcripts.storage_error("reading usage", exc, reading=True) from exc
            if scan is None:
                memo.scans.pop(path, None)
                return {}
            if keep and scan.signature[3] <= time.time_ns() - _USAGE_SETTLED_NS:
                memo.scans[path] = scan
                memo.scans.move_to_end(path)
                while len(memo.scans) > MAX_USAGE_CACHE_FILES:
                    memo.scans.popitem(last=False)
            else:
                memo.scans.pop(path, None)
            return scan.days
