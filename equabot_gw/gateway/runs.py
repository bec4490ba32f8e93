"""Agent runs over the control protocol: ``agent``, ``agent.wait``, ``chat.send``, ``chat.abort``.

Owns the run ids clients see and the events a run emits, in the original
Gateway's shapes. A run's public id is the client's ``idempotencyKey`` (else
the runtime's id). Every run started here is relayed by one task to every
connected client as two event families, with deltas coalesced
(``coalesce.TextSoFar``: at most one per ~150 ms, each with the text so far):

- ``agent``: ``{runId, stream, data, sessionKey, seq, ts}`` — lifecycle
  ``start``/``end``/``error``, ``assistant`` ``{text, delta}``, and ``tool``
  ``{phase: "call", id, name, arguments}`` for each tool call the reply ends in;
- ``chat``: ``{runId, sessionKey, seq, state, message?}`` — ``delta``/``final``
  with ``message.content`` parts (``frames.assistant_parts``: the reasoning
  as a ``thinking`` part, the text so far, the final ``toolCall`` parts),
  ``error``, ``aborted``.

The ``agent`` method answers an ack ``{runId, status:"accepted", acceptedAt}``
and later the final ``{runId, status, summary, result:{payloads, meta}}``.
Runs are started with ``agents.runtime.run`` like every other door; what is
remembered of them here is small and bounded (``MAX_REMEMBERED_RUNS``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from ..agents import idempotency
from ..agents import runtime as agent_runtime
from ..agents import sessions
from ..agents.events import Delta, Ended, Failed, Started
from ..agents.records import RunRecord
from ..agents.types import AgentRequest, AgentResult, ReasoningDelta
from ..errors import ApiError, RunAborted, RunError
from .coalesce import TextSoFar
from .frames import (DEFERRED, agent_final, arguments_object, assistant_parts, error_shape, main_session_key,
                     ms, session_id)

if TYPE_CHECKING:
    from .control import ControlConnection, ControlProtocol

__all__ = ["Runs", "METHODS", "MAX_REMEMBERED_RUNS", "MAX_REQUESTERS_PER_RUN", "MAX_RUN_TIMEOUT_SECONDS",
           "DEFAULT_WAIT_MS"]

# Runs remembered by public id, for agent.wait, chat.abort and repeated requests.
MAX_REMEMBERED_RUNS: Final = 10_000
# agent.wait without timeoutMs waits this long (the original's default).
DEFAULT_WAIT_MS: Final = 30_000
# Clients waiting for run ids that no run has yet, over all connections.
MAX_UNKNOWN_WAITERS: Final = 1024
# An error message kept for agent.wait is cut to this many characters.
MAX_ERROR_CHARS: Final = 500
# The longest run time a client may ask for (``agent``'s ``timeout``, ``chat.send``'s
# ``timeoutMs``): a longer one is cut to it, as the original cuts it to its longest timer
# (about 24.8 days). 0 asks for the agent's own, as no value does.
MAX_RUN_TIMEOUT_SECONDS: Final = 2_147_000
# ``agent`` requests awaiting one run's final at once, over all connections (a repeated
# idempotencyKey joins its run); past it a request is refused (RATE_LIMITED). Each holds
# its connection and request id until the final is sent or its connection closes.
MAX_REQUESTERS_PER_RUN: Final = 64


class PublicRun:
    """What the control protocol keeps of one run: ids, times, outcome; never its text."""

    __slots__ = ("id", "internal_id", "agent_id", "session_key", "model", "run", "accepted_at",
                 "started_at", "ended_at", "status", "error", "failure", "requesters", "settled")

    def __init__(self, public_id: str, run: Any) -> None:
        self.id = public_id
        self.internal_id: str = run.id
        self.agent_id: str = run.agent_id
        self.session_key: str = run.session_key
        # "provider/model": a live run's; a record's from its result (none for one that failed).
        result = getattr(run, "result", None)
        self.model: str = getattr(run, "model", None) or (result.model if result is not None else "")
        self.run: Any = run                     # the live handle while the run goes on
        self.accepted_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.status = "running"                 # then "ok", "error" or "aborted"
        self.error: str | None = None
        # A failed run's error frame ({code, message}): what its final answered, and what a
        # repeat of its idempotencyKey answers again (AGENT_TIMEOUT stays AGENT_TIMEOUT).
        self.failure: dict[str, Any] | None = None
        # agent requests awaiting the final (at most MAX_REQUESTERS_PER_RUN; a connection's
        # leave with it: Runs.forget)
        self.requesters: list[tuple[ControlConnection, Any]] = []
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Runs:
    """The runs started over the control protocol, by public id, and their relays."""

    def __init__(self, protocol: ControlProtocol) -> None:
        self.protocol = protocol
        self._by_id: OrderedDict[str, PublicRun] = OrderedDict()
        self._public: dict[str, str] = {}       # runtime run id -> public id, for the runs in _by_id
        self._unknown_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def find(self, public_id: str) -> PublicRun | None:
        return self._by_id.get(public_id)

    def of_run(self, run_id: str) -> PublicRun | None:
        """The run started here whose runtime id is ``run_id``, if it is remembered."""
        public_id = self._public.get(run_id)
        return self._by_id.get(public_id) if public_id is not None else None

    async def start(self, params: dict[str, Any], origin: str, session_key: str | None
                    ) -> tuple[PublicRun, bool]:
        """Start (or find, for a repeated ``idempotencyKey``) a run; (its entry, whether it is new).

        A key is the runtime's idempotency key (per agent, kept across restarts):
        the same params join or replay its run; other params are refused (422).
        """
        key = params.get("idempotencyKey")
        if self.protocol.stopping:
            # As the runtime refuses a run then: soon back, or another node, so worth a retry.
            raise ApiError(503, "the gateway is shutting down", code="unavailable",
                           headers=(("retry-after", "1"),))
        if params.get("attachments"):
            raise ApiError(400, "attachments are not supported by this gateway", param="attachments")
        if params.get("deliver"):
            raise ApiError(400, "deliver: this gateway has no channels to deliver a reply to",
                           param="deliver")
        runtime = self.protocol.gateway.runtime
        request = AgentRequest(
            message=params["message"], agent_id=params.get("agentId"), session_key=session_key,
            system=params.get("extraSystemPrompt") or "", origin=origin, idempotency_key=key,
            timeout=_run_timeout(params))
        if key is None:
            run, replayed = agent_runtime.run(runtime, request), False
        else:
            # The key is the run's public id: one in flight names one run, of one agent.
            known = self._by_id.get(key)
            if known is not None and not known.settled.done() \
                    and agent_runtime.route(runtime, request)[0].id != known.agent_id:
                raise ApiError(409, f"idempotencyKey {key[:80]!r} names a run of agent {known.agent_id!r} "
                                    f"still in flight; use another key", code="conflict", param="idempotencyKey")
            asked = {name: value for name, value in params.items() if name != "idempotencyKey"}
            run, replayed = await agent_runtime.run_once(
                runtime, request, idempotency.digest_of({"params": asked, "origin": origin, "key": session_key}))
            known = self._by_id.get(key)
            if replayed and known is not None and known.internal_id == run.id:
                return known, False
        entry = PublicRun(key or run.id, run)
        self._remember(entry)
        if replayed and run.done:          # a run from before a restart: its outcome, no relay
            # As a live run's end tells them apart (_ended): a timeout is an error, not an abort.
            entry.status = "ok" if run.status == "ok" else \
                "aborted" if type(run.error) is RunAborted else "error"
            entry.error = str(run.error)[:MAX_ERROR_CHARS] if run.error is not None else None
            if entry.status == "error":
                entry.failure = error_shape(run.error) if run.error is not None else \
                    {"code": "UNAVAILABLE", "message": "error"}
            entry.started_at = entry.ended_at = run.created_at
            entry.run = None
            entry.settled.set_result(None)
            return entry, False
        task = asyncio.ensure_future(self._relay(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return entry, True

    def _remember(self, entry: PublicRun) -> None:
        replaced = self._by_id.pop(entry.id, None)      # a key used again: the newest run, newest place
        if replaced is not None and self._public.get(replaced.internal_id) == replaced.id:
            del self._public[replaced.internal_id]
        self._by_id[entry.id] = entry
        self._public[entry.internal_id] = entry.id
        while len(self._by_id) > MAX_REMEMBERED_RUNS:
            old = self._by_id.popitem(last=False)[1]
            if self._public.get(old.internal_id) == old.id:
                del self._public[old.internal_id]
        for waiter in self._unknown_waiters.pop(entry.id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def appears(self, public_id: str, timeout: float) -> PublicRun | None:
        """The run ``public_id`` once some client starts it, or None after ``timeout`` seconds."""
        if len(self._unknown_waiters) >= MAX_UNKNOWN_WAITERS and public_id not in self._unknown_waiters:
            raise ApiError(429, "too many agent.wait requests for unknown runs", code="rate_limited")
        waiter = asyncio.get_running_loop().create_future()
        self._unknown_waiters.setdefault(public_id, []).append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._unknown_waiters.get(public_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._unknown_waiters[public_id]
        return self._by_id.get(public_id)

    def await_final(self, entry: PublicRun, conn: ControlConnection, req_id: Any) -> None:
        """Send ``entry``'s final to ``conn`` as the answer to request ``req_id`` when the run ends.

        Raises ``ApiError`` 429 (``RATE_LIMITED``) when ``MAX_REQUESTERS_PER_RUN``
        requests already await it; ``forget`` drops a connection's when it closes.
        """
        if len(entry.requesters) >= MAX_REQUESTERS_PER_RUN:
            raise ApiError(429, f"at most {MAX_REQUESTERS_PER_RUN} agent requests waiting for one run "
                                f"({entry.id[:80]!r}); wait for it with agent.wait", code="rate_limited")
        entry.requesters.append((conn, req_id))
        conn.awaiting.add(entry)

    def forget(self, conn: ControlConnection) -> None:
        """``conn`` has closed: no final is sent to it, and no run holds it any longer."""
        for entry in conn.awaiting:
            entry.requesters = [(c, r) for c, r in entry.requesters if c is not conn]
        conn.awaiting.clear()

    def unsettled(self) -> list[asyncio.Future[None]]:
        """What to wait on until every run started here has settled (its finals sent)."""
        return [entry.settled for entry in self._by_id.values() if not entry.settled.done()]

    def cancel(self) -> None:
        """Stop relaying (at shutdown; the runs themselves belong to the runtime)."""
        for task in list(self._tasks):
            task.cancel()

    # ---- the relay ----
    async def _relay(self, entry: PublicRun) -> None:
        """Both event families of one run, deltas coalesced; then the final responses."""
        broadcast = self.protocol.broadcast
        loop = asyncio.get_running_loop()
        text = TextSoFar()
        reasoning: list[str] = []           # the reasoning so far (a reply that reasons)
        seq = 0
        base = {"runId": entry.id}
        session = {"sessionKey": entry.session_key}

        def agent_event(stream: str, data: dict[str, Any]) -> int:
            nonlocal seq
            seq += 1
            broadcast("agent", {**base, "stream": stream, "data": data, **session,
                                "seq": seq, "ts": ms(time.time())})
            return seq

        def flush() -> None:
            delta = text.take(loop.time())
            at = agent_event("assistant", {"text": text.text, "delta": delta})
            broadcast("chat", {**base, **session, "seq": at, "state": "delta",
                               "message": _assistant_message(text.text, time.time(), "".join(reasoning))})

        subscription = entry.run.subscribe()
        try:
            while (batch := await subscription.next_batch(text.wait(loop.time()))) is not None:
                for event in batch:
                    kind = type(event)
                    if kind is Delta:
                        text.add(event.text)
                    elif kind is Started:
                        entry.started_at = time.time()
                        agent_event("lifecycle", {"phase": "start", "startedAt": ms(entry.started_at)})
                    elif kind is Ended or kind is Failed:
                        if text.pending:
                            flush()
                        self._ended(entry, event, agent_event, broadcast)
                    elif kind is ReasoningDelta:
                        reasoning.append(event.text)     # rides along with the next text event
                if text.pending and text.wait(loop.time()) == 0:
                    flush()
                    await asyncio.sleep(0)      # one event per loop turn: neighbours get their share
        finally:
            if not entry.settled.done():        # cancelled at shutdown: the run is not ours to end
                entry.settled.set_result(None)
            entry.run = None

    def _ended(self, entry: PublicRun, event: Ended | Failed, agent_event: Any, broadcast: Any) -> None:
        entry.ended_at = now = time.time()
        if entry.started_at is None:
            entry.started_at = now
        base = {"runId": entry.id, "sessionKey": entry.session_key}
        if isinstance(event, Ended):
            entry.status = "ok"
            result = event.result
            for call in result.tool_calls:
                agent_event("tool", {"phase": "call", "id": call.id, "name": call.name,
                                     "arguments": arguments_object(call.arguments)})
            at = agent_event("lifecycle", {"phase": "end", "endedAt": ms(now)})
            broadcast("chat", {**base, "seq": at, "state": "final",
                               "message": _assistant_message(result.text, now, result.reasoning, result.tool_calls)})
        else:
            aborted = type(event.error) is RunAborted      # not a timeout (a subclass)
            entry.status = "aborted" if aborted else "error"
            entry.error = str(event.error)[:MAX_ERROR_CHARS]
            at = agent_event("lifecycle", {"phase": "error", "endedAt": ms(now), "error": entry.error})
            if aborted:
                chat: dict[str, Any] = {**base, "seq": at, "state": "aborted"}
                if event.partial:
                    chat["message"] = _assistant_message(event.partial, now)
            else:
                chat = {**base, "seq": at, "state": "error", "errorMessage": entry.error}
            broadcast("chat", chat)
        result = event.result if isinstance(event, Ended) else None
        entry.failure = _failure(event)
        for conn, req_id in entry.requesters:
            conn.send_final(req_id, self.final_payload(entry, result, event.partial if type(event) is Failed else ""),
                            entry.failure)
            conn.awaiting.discard(entry)
        entry.requesters.clear()
        entry.settled.set_result(None)

    def final_payload(self, entry: PublicRun, result: AgentResult | None, partial: str = "") -> dict[str, Any]:
        """The ``agent`` method's final payload, in the original's shape (``partial``: an
        aborted run's text)."""
        if entry.status == "error":
            return {"runId": entry.id, "status": "error", "summary": entry.error or "error"}
        text = result.text if result is not None else partial
        usage = result.usage if result is not None else None
        info = self.protocol.gateway.runtime.store.session_info(entry.agent_id, entry.session_key)
        return agent_final(
            entry.id, entry.status, text, model_ref=result.model if result is not None else entry.model,
            session_id=session_id(entry.session_key, info.created_at if info else None),
            duration_ms=ms((entry.ended_at or time.time()) - (entry.started_at or entry.accepted_at)),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            stop_reason=result.finish_reason if result is not None else None)


def _run_timeout(params: dict[str, Any]) -> float | None:
    """The run's own time limit in seconds: ``agent``'s ``timeout`` (seconds) or ``chat.send``'s
    ``timeoutMs``, at most ``MAX_RUN_TIMEOUT_SECONDS``; None (the agent's) when absent or 0."""
    seconds = params.get("timeout")
    if not seconds:
        millis = params.get("timeoutMs")
        seconds = millis / 1000 if millis else None
    return min(seconds, MAX_RUN_TIMEOUT_SECONDS) if seconds else None


def _failure(event: Ended | Failed) -> dict[str, Any] | None:
    """The error of a failed final response (aborted runs answer ok, with meta.aborted)."""
    if isinstance(event, Failed) and not (type(event.error) is RunAborted):
        return error_shape(event.error)
    return None


def _assistant_message(text: str, at: float, reasoning: str = "", calls: tuple[Any, ...] = ()) -> dict[str, Any]:
    content = [{"type": "text", "text": text}] if not reasoning and not calls else \
        assistant_parts(text, reasoning, calls)
    return {"role": "assistant", "content": content, "timestamp": ms(at)}


# ---- the methods ----

def _chat_key(conn: ControlConnection, params: dict[str, Any]) -> tuple[str, str]:
    """(agent id, scoped key) of a chat method's ``sessionKey``."""
    runtime = conn.gateway.runtime
    key = sessions.validate_key(params["sessionKey"], param="sessionKey")
    owner = sessions.agent_of(key)
    agent = runtime.agent(owner or params.get("agentId"))
    return agent.id, key if owner else sessions.scoped_key(agent.id, key)


async def m_agent(conn: ControlConnection, params: dict[str, Any], req_id: Any) -> object:
    runs = conn.protocol.runs
    # As the original: without a sessionKey the turn continues the agent's main session
    # (agentId's, else the default agent's), so it shows in chat.history and sessions.list.
    key = params.get("sessionKey") or main_session_key(conn.gateway.runtime.agent(params.get("agentId")).id)
    entry, fresh = await runs.start(params, "ws", key)
    if entry.status == "running" or fresh:
        runs.await_final(entry, conn, req_id)       # refused past the bound, before any ack
        conn.respond(req_id, {"runId": entry.id, "status": "accepted", "acceptedAt": ms(entry.accepted_at)})
        return DEFERRED
    # A finished run asked again: its final answer at once, as the original's dedupe does.
    record = conn.gateway.runtime.find_run(entry.internal_id)
    result: AgentResult | None = None
    partial = ""
    if record is not None and entry.status == "ok":
        try:
            result = await record.wait()
        except RunError:
            result = None
    elif record is not None and entry.status == "aborted":
        partial = await _partial_of(record)     # the same payload as the first final's
    payload = runs.final_payload(entry, result, partial)
    conn.send_final(req_id, payload, (entry.failure or {"code": "UNAVAILABLE", "message": entry.error or "error"})
                    if entry.status == "error" else None)
    return DEFERRED


async def _partial_of(run: Any) -> str:
    """The text an aborted run had, from its terminal event (a record may read it back)."""
    if type(run) is RunRecord:
        end = await run.terminal_event()
    else:
        end = run.events.events[-1] if run.events.events else None
    return end.partial if type(end) is Failed else ""


async def m_agent_wait(conn: ControlConnection, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
    run_id = params["runId"]
    timeout = params.get("timeoutMs", DEFAULT_WAIT_MS) / 1000
    runs = conn.protocol.runs
    entry = runs.find(run_id)
    deadline = asyncio.get_running_loop().time() + timeout
    if entry is None:
        foreign = conn.gateway.runtime.find_run(run_id)     # a run started over HTTP, by its id
        if foreign is not None:
            return await _wait_foreign(run_id, foreign, timeout)
        entry = await runs.appears(run_id, timeout)
        if entry is None:
            return {"runId": run_id, "status": "timeout"}
    if not entry.settled.done():
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(asyncio.shield(entry.settled), remaining)
        except TimeoutError:
            return {"runId": run_id, "status": "timeout"}
    payload: dict[str, Any] = {"runId": run_id, "status": "ok" if entry.status == "ok" else "error"}
    if entry.started_at is not None:
        payload["startedAt"] = ms(entry.started_at)
    if entry.ended_at is not None:
        payload["endedAt"] = ms(entry.ended_at)
    if entry.status != "ok":
        payload["error"] = entry.error or entry.status
    return payload


async def _wait_foreign(run_id: str, run: Any, timeout: float) -> dict[str, Any]:
    try:
        # A finished run answers at once, whatever the timeout (even 0).
        await (run.wait() if run.done else asyncio.wait_for(run.wait(), timeout))
    except TimeoutError:
        return {"runId": run_id, "status": "timeout"}
    except RunError as exc:
        return {"runId": run_id, "status": "error", "error": str(exc)[:MAX_ERROR_CHARS]}
    return {"runId": run_id, "status": "ok"}


async def m_chat_send(conn: ControlConnection, params: dict[str, Any], req_id: Any) -> object:
    """Start a run on the session: ``{runId, status: "started"}``. A repeated
    ``idempotencyKey`` starts nothing, as the original's dedupe answers it: its run
    still going is ``in_flight``; one that ended is ``ok`` (or ``aborted``), and one
    that failed answers ``ok: false`` with ``{runId, status: "error", summary}``."""
    _, key = _chat_key(conn, params)
    entry, fresh = await conn.protocol.runs.start({**params, "agentId": None}, "chat", key)
    if fresh:
        return {"runId": entry.id, "status": "started"}
    if entry.status == "running":
        return {"runId": entry.id, "status": "in_flight"}
    if entry.status == "error":
        conn.send_final(req_id, {"runId": entry.id, "status": "error", "summary": entry.error or "error"},
                        entry.failure or {"code": "UNAVAILABLE", "message": entry.error or "error"})
        return DEFERRED
    return {"runId": entry.id, "status": entry.status}


async def m_chat_abort(conn: ControlConnection, params: dict[str, Any], req_id: Any) -> dict[str, Any]:
    """Abort the session's runs, or the one ``runId`` names (then ``sessionKey`` may be left out)."""
    wanted = params.get("runId")
    if params.get("sessionKey") is None and wanted is None:
        raise ApiError(400, "invalid chat.abort params: at root: must have required property 'sessionKey'")
    key = _chat_key(conn, params)[1] if params.get("sessionKey") is not None else None
    aborted = []
    for run in list(conn.gateway.runtime.active.values()):
        # A run's public id is its idempotency key, else the runtime's id.
        public = run.request.idempotency_key or run.id
        if key is not None and run.session_key != key or wanted is not None and wanted not in (public, run.id):
            continue
        if run.abort("chat.abort"):
            aborted.append(public)
    return {"ok": True, "aborted": bool(aborted), "runIds": aborted}


async def m_agent_subscribe(conn: ControlConnection, params: dict[str, Any], req_id: Any) -> object:
    """``agent.subscribe {runId, afterSeq?}``: the run's ``agent`` events to this connection
    alone, from answer character ``afterSeq`` on (0: from the start), live or replayed.

    Answers ``{runId, status:"subscribed"}`` at once, then sends ``agent``
    events whose ``seq`` is the SSE stream's: the characters of answer text
    so far (``assistant`` ``{text, delta}``, one per batch of deltas), then
    the text's length + 1 for the lifecycle ``end``/``error``; then the final
    response ``{runId, status}``. The run may have started at any door, and
    before a restart if it had a key that is still kept.
    """
    run_id, after = params["runId"], params.get("afterSeq", 0)
    run = await _find_any(conn, run_id)
    if run is None:
        raise ApiError(404, f"unknown run {run_id[:120]!r}", code="not_found")
    conn.respond(req_id, {"runId": run_id, "status": "subscribed"})
    # Its agent events come from here alone: a run started over WebSocket is also
    # broadcast to every client (under its public id, whichever id was named here),
    # with a seq of another kind, and its relay's last events may come after this
    # subscription's end: the broadcast is held back until the relay has settled.
    runs = conn.protocol.runs
    relayed = runs.find(run_id) or runs.of_run(run.id)
    public_id = relayed.id if relayed is not None else run_id
    _follow(conn, public_id, +1)
    try:
        status = await _send_subscribed(conn, run, run_id, after)
    finally:
        # A closed client is not held by the run until it ends: nothing is sent to it anyway.
        if relayed is not None and not relayed.settled.done() and not conn.closed:
            relayed.settled.add_done_callback(lambda _: _follow(conn, public_id, -1))
        else:
            _follow(conn, public_id, -1)
    conn.send_final(req_id, {"runId": run_id, "status": status}, None)
    return DEFERRED


def _follow(conn: ControlConnection, public_id: str, step: int) -> None:
    """Count a subscription of ``conn`` to run ``public_id`` in (+1) or out (-1)."""
    count = conn.subscriptions.get(public_id, 0) + step
    if count > 0:
        conn.subscriptions[public_id] = count
    else:
        conn.subscriptions.pop(public_id, None)


async def _send_subscribed(conn: ControlConnection, run: Any, run_id: str, after: int) -> str:
    """``agent.subscribe``'s events; the run's final status."""
    base = {"runId": run_id, "sessionKey": run.session_key}
    text = ""
    seq = after
    status = "ok"
    async for batch in idempotency.events_after(run.subscribe(), after):
        delta = "".join([event.text for event in batch if type(event) is Delta])
        if type(batch[0]) is Started:
            conn.event("agent", {**base, "stream": "lifecycle", "data": {"phase": "start"}, "seq": after,
                                 "ts": ms(time.time())})
        if delta:
            text += delta
            seq += len(delta)
            conn.event("agent", {**base, "stream": "assistant", "data": {"text": text, "delta": delta},
                                 "seq": seq, "ts": ms(time.time())})
        end = batch[-1]
        if type(end) is Ended or type(end) is Failed:
            full = len(end.result.text) if type(end) is Ended else len(end.partial)
            data = {"phase": "end"} if type(end) is Ended else {"phase": "error", "error": str(end.error)[:MAX_ERROR_CHARS]}
            status = "ok" if type(end) is Ended else "aborted" if isinstance(end.error, RunAborted) else "error"
            conn.event("agent", {**base, "stream": "lifecycle", "data": data, "seq": max(full, after) + 1,
                                 "ts": ms(time.time())})
    return status


async def _find_any(conn: ControlConnection, run_id: str) -> Any:
    """A run by its public id (an idempotency key of a kept key, or a runtime run id)."""
    runtime = conn.gateway.runtime
    entry = conn.protocol.runs.find(run_id)
    run = runtime.find_run(entry.internal_id if entry is not None else run_id)
    if run is not None:
        return run
    stored = idempotency.stored_key(run_id)
    for agent_id in runtime.agents:             # a key from before a restart
        kept = runtime.keys.get(agent_id, stored)
        if kept is not None:
            return await agent_runtime.keyed_run(runtime, kept.run_id)
    return await agent_runtime.keyed_run(runtime, run_id)


METHODS: Final = {"agent": m_agent, "agent.wait": m_agent_wait, "chat.send": m_chat_send,
                  "chat.abort": m_chat_abort, "agent.subscribe": m_agent_subscribe}
