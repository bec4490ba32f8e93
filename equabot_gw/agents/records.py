"""What is remembered of a finished run: ``RunRecord``, and records rebuilt from disk.

Owns the small read-only value a finished run leaves behind (its outcome,
its reply held or where it was recorded), the subscription over it (its
terminal event alone), and ``record_from_line``, which rebuilds one from a
recorded outcome line (a keyed run from before a restart). The runtime makes
records and keeps them; this module starts no run. Imports nothing from
equabot_gw.net or equabot_gw.gateway.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Final

from ..errors import INTERRUPTED, RunAborted, RunError, StorageError, run_error_of
from . import sessions
from .events import Ended, Failed, RunEvent
from .lines import number, reply_of
from .transcripts import Stored
from .types import AgentResult, Message, Usage

if TYPE_CHECKING:
    from .idempotency import Entry

log = logging.getLogger("equabot_gw.runtime")

__all__ = ["Found", "RunRecord", "record_from_line", "INTERRUPTED"]

# What a reply no longer stored reads back as.
_NO_REPLY: Final = Message("assistant", "")


class Found:
    """Where to look for the outcome of a run rebuilt from disk (``SessionStore.find_outcome``):
    its reply, when it is not held, is looked up again there when asked for."""

    __slots__ = ("agent_id", "run_id", "session_key", "at")

    def __init__(self, agent_id: str, run_id: str, session_key: str | None, at: float) -> None:
        self.agent_id = agent_id
        self.run_id = run_id
        self.session_key = session_key      # None: a stateless run (the agent's journals)
        self.at = at


class RunRecord:
    """What is remembered of a finished run: enough for ``agent.wait`` and idempotent retries.

    A finished ``Run`` keeps its whole event log and task; remembering
    thousands of those would keep millions of objects for the garbage
    collector to scan. It has ``Run``'s reading interface. Its reply (the
    result's text, or the partial text of a failed run) is held only while
    it fits the runtime's budget; otherwise ``reply_at`` says where it was
    recorded and ``wait``/``subscribe`` read it back (an empty text once the
    session was reset or deleted, or the journal pruned); ``found``, of a
    record rebuilt from disk, says where to look for it then. One is made per
    run: a plain slotted class (a frozen dataclass costs twice as much to
    make); treat it as read-only.
    """

    __slots__ = ("id", "agent_id", "session_key", "status", "result", "error", "partial",
                 "reply_at", "store", "kept_bytes", "created_at", "mixed", "found", "reply_chars")

    done: Final = True

    def __init__(self, id: str, agent_id: str, session_key: str, status: str,
                 result: AgentResult | None, error: RunError | None, partial: str = "",
                 reply_at: Stored | Found | None = None, store: sessions.SessionStore | None = None,
                 kept_bytes: int = 0, created_at: float = 0.0, mixed: bool = False,
                 found: Found | None = None, reply_chars: int = 0) -> None:
        self.id = id
        self.agent_id = agent_id
        self.session_key = session_key
        self.status = status
        self.result = result
        self.error = error
        self.partial = partial
        self.reply_at = reply_at
        self.store = store
        self.kept_bytes = kept_bytes      # bytes of reply held here (counted in the budget)
        self.created_at = created_at      # when the run was admitted (epoch s)
        # Its reply had output besides choice 0's text (reasoning, tool calls, logprobs,
        # further choices), whether or not this record still holds all of it.
        self.mixed = mixed
        self.found = found
        # The characters of its reply's text (of its partial, when it failed) while ``reply_at``
        # says where it is: where its text stream ended, known without reading it back.
        self.reply_chars = reply_chars

    def __repr__(self) -> str:
        return f"<RunRecord {self.id} agent={self.agent_id} status={self.status}>"

    def subscribe(self) -> _RecordSubscription:
        """A subscription that yields the run's terminal event only."""
        return _RecordSubscription(self)

    async def wait(self) -> AgentResult:
        """The result (its reply read back if it is not held); raises the run's error.

        A reply read back has its text, reasoning and tool calls; its log
        probabilities and extra choices (never recorded) are gone.
        """
        if self.result is None:
            raise self.error or RunAborted("cancelled")
        if self.reply_at is None:
            return self.result
        outcome = await self._read_back()
        return dataclasses.replace(self.result, text=outcome.text(), tool_calls=outcome.tool_calls,
                                   reasoning=outcome.reasoning,
                                   reasoning_signature=outcome.reasoning_signature)

    async def terminal_event(self) -> Ended | Failed:
        """The run's last event, as its subscribers saw it."""
        if self.result is not None:
            return Ended(await self.wait())
        partial = self.partial if self.reply_at is None else (await self._read_back()).text()
        return Failed(self.error or RunAborted("cancelled"), partial)

    def abort(self, why: str = "aborted") -> bool:
        return False

    async def _read_back(self) -> Message:
        where = self.reply_at
        try:
            if self.store is None or where is None:
                outcome = None
            elif type(where) is Found:
                line = await self.store.find_outcome(where.agent_id, where.run_id, where.session_key, where.at)
                outcome = reply_of(line) if line is not None else None
            else:
                outcome = await self.store.read_outcome(where, self.id)     # type: ignore[arg-type]
        except StorageError:
            outcome = None
        if outcome is None:
            log.warning("run %s: its reply is no longer stored", self.id)
        return outcome or _NO_REPLY


class _RecordSubscription:
    """``Subscription``'s interface over a finished run: its terminal event, then the end."""

    __slots__ = ("_record", "_read")

    def __init__(self, record: RunRecord) -> None:
        self._record = record
        self._read = False

    async def next_batch(self, idle_timeout: float | None = None) -> list[RunEvent] | None:
        if self._read:
            return None
        self._read = True
        return [await self._record.terminal_event()]

    def __aiter__(self) -> _RecordSubscription:
        return self

    async def __anext__(self) -> RunEvent:
        if self._read:
            raise StopAsyncIteration
        self._read = True
        return await self._record.terminal_event()


def record_from_line(entry: Entry, line: dict[str, Any] | None) -> RunRecord:
    """The record of keyed run ``entry`` from its recorded outcome line ("assistant",
    "aborted" or "error"; None: never recorded, replayed as aborted with ``INTERRUPTED``,
    which ``errors.http_status`` answers 503: the gateway's failure, not the client's).

    A failed run's error is the one its line describes (``errors.run_error_of``): every
    door answers it as it answered the run. A line of an older version, which holds
    its message or reason alone, gives a ``RunError`` of that message (500) or a
    ``RunAborted`` of that reason.

    A reply read back has its text, tool calls and reasoning; its turn number is 0.
    The record holds its reply; ``found`` says where it was found, for a runtime
    that would rather not hold it.
    """
    kind = line.get("type") if line is not None else None
    base = (entry.run_id, entry.agent_id, entry.session_key)
    found = Found(entry.agent_id, entry.run_id, None if entry.stateless else entry.session_key, entry.at)
    if line is not None and kind == "assistant":
        reply = reply_of(line) or _NO_REPLY
        raw, finish, model = line.get("usage"), line.get("finishReason"), line.get("model")
        usage = _usage_of(raw)
        result = AgentResult(*base, reply.text(), usage, finish if type(finish) is str else "stop",
                             model if type(model) is str else "", 0, reply.tool_calls,
                             reply.reasoning, reasoning_signature=reply.reasoning_signature)
        return RunRecord(*base, "ok", result, None, created_at=entry.at,
                         mixed=bool(reply.tool_calls or reply.reasoning), found=found)
    if line is not None and kind == "aborted":
        content, why = line.get("content"), line.get("reason")
        aborted = _error_of(line)
        if not isinstance(aborted, RunAborted):
            aborted = RunAborted(why if type(why) is str else "aborted")
        return RunRecord(*base, "aborted", None, aborted,
                         content if type(content) is str else "", created_at=entry.at, found=found)
    if line is not None:
        message, content = line.get("message"), line.get("content")
        error = _error_of(line) or RunError(message if type(message) is str else "error")
        return RunRecord(*base, "error", None, error, content if type(content) is str else "",
                         created_at=entry.at, found=found)
    return RunRecord(*base, "aborted", None, RunAborted(INTERRUPTED), created_at=entry.at)


def _error_of(line: dict[str, Any]) -> RunError | None:
    """The run error an outcome line describes (its "error" and "message"), None if it does
    not (a line of an older version: its "message" or "reason" is all there is)."""
    message = line.get("message")
    return run_error_of(line.get("error"), message) if type(message) is str else None


def _usage_of(raw: Any) -> Usage:
    """The ``Usage`` a recorded ``usage`` object (``Usage.as_dict``) says, its details
    (cached prompt tokens, reasoning tokens) included when it has them."""
    usage = raw if isinstance(raw, dict) else {}
    prompt, completion = (_count(usage.get(k)) or 0 for k in ("prompt_tokens", "completion_tokens"))
    details = [usage.get(k) for k in ("prompt_tokens_details", "completion_tokens_details")]
    cached, reasoning = (_count(d.get(k)) if isinstance(d, dict) else None
                         for d, k in zip(details, ("cached_tokens", "reasoning_tokens")))
    return Usage(prompt, completion, cached, reasoning)


def _count(value: Any) -> int | None:
    n = number(value)
    return int(n) if n is not None and 0 <= n < 2**53 else None
