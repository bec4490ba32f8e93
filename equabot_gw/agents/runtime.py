"""The agent runtime: the one code path every run takes, from any door.

``run(runtime, request)`` admits an ``AgentRequest`` (agent, model, options,
session key, capacity: problems raise ``ApiError`` before anything starts) and
returns a ``Run`` handle at once. The run then waits for its session's lane
(one run at a time per session) and for a slot of its agent
(``maxConcurrent``), streams the provider, records the turn durably, and emits
``Started``, its output (``Delta``s; reasoning, tool-call fragments, log
probabilities and further choices as the provider yields them), then ``Ended``
or ``Failed`` to its event log. Tool-call fragments are joined by index into
whole ``ToolCall``s for the result and the transcript.
The HTTP endpoint, the WebSocket ``agent`` method and the CLI all call ``run``
(a door that only waits for the result may call ``run_here``: the same run,
in the caller's task); this module knows nothing about HTTP, WebSocket or terminals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..config import Config
from ..errors import (
    SHUTDOWN_ABORT, ApiError, ReplyTooLarge, RunAborted, RunError, RunFailed, RunTimedOut, StorageError,
    UpstreamError,
)
from . import idempotency, sessions
from .agent import DEFAULT_AGENT_ID, Agent, agents_from
from .records import RunRecord
from .events import Ended, Failed, EventLog, Started, Subscription
from .output import ReplyOutput, check_request, finish_reason, named_results, output_weight
from .transcripts import Stored
from ..providers import Provider, count_words, create_provider
from .types import (
    INPUT_KINDS, NO_OPTIONS, AgentRequest, AgentResult, Finish, GenerationOptions, Message, ProviderCall,
    SessionHistory, TextDelta, ToolCall, TurnRecord, Usage,
)

log = logging.getLogger("equabot_gw.runtime")

# A provider whose stream never suspends (data always buffered, or a local
# generator) would hold the loop for the whole reply: the run gives the loop
# back when this many seconds passed since it last did, looking at the clock
# at each checkpoint of its event log (every 32 deltas; a clock read per word
# would cost the streaming hot path more), or every _YIELD_CHECK_EVENTS other events.
YIELD_INTERVAL: Final = 0.005
_YIELD_CHECK_EVENTS: Final = 32
# A run asked to stop (abort, timeout) settles within this many seconds even
# if its provider ignores the cancellation: its waiters and its request are
# answered; its task (and slot) end whenever the provider lets go. A run in
# its caller's task (``run_here``) holds that caller until then.
ABORT_GRACE: Final = 0.5
# How long a reset or delete waits for the session's aborted runs to let go of it.
FORGET_WAIT: Final = 10.0
# Finished runs remembered for agent.wait and idempotent retries.
MAX_FINISHED_RUNS: Final = 10_000
# Their replies are kept in memory while each is small and all of them fit
# the budget (bytes as sys.getsizeof counts them); any other is read back from
# its transcript or journal when asked for.
MAX_KEPT_REPLY_BYTES: Final = 64 * 1024
FINISHED_REPLIES_BUDGET_BYTES: Final = 16 * 1024 * 1024


class Run:
    """A handle on one run: its id, its events, its outcome, and a way to stop it.

    ``status`` moves queued → running → recording → ok | error | aborted.
    """

    def __init__(self, run_id: str, agent: Agent, session_key: str, stateless: bool,
                 request: AgentRequest, provider: Provider, model_ref: str, model_name: str,
                 watched: bool = True) -> None:
        self.id = run_id
        self.agent = agent
        self.session_key = session_key
        self.stateless = stateless
        self.request = request
        self.provider = provider
        self.model = model_ref
        self._model_name = model_name
        self.status = "queued"
        self.events = EventLog()
        self.watched = watched      # its door follows the reply as it is made (see ``run``)
        self.created_at = time.time()
        self.started_at: float | None = None        # it started generating (time.time())
        self.first_output_at: float | None = None   # it yielded its first text
        # The outcome: set once, by _settle; waiters are woken there directly.
        self.done = False
        self._result: AgentResult | None = None
        self._error: RunError | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stored: Stored | None = None     # where record_turn put the turn
        self._entered = False       # the task has begun: cancelling it runs its handlers
        self._abort_reason: str | None = None
        # A keyed run's journal line being written: awaited before the provider is asked.
        self._key: idempotency.Entry | None = None     # its idempotency key, if it has one
        # Run by its caller's task (``run_here``): the abort reason when that task is
        # cancelled from outside, which is then passed on once the run has settled.
        self._left: str | None = None
        self._cancels_sent = 0      # by abort(), not yet taken back (see _absorb_cancel)
        self._ended: asyncio.Future[None] | None = None    # see ended()

    def __repr__(self) -> str:
        return f"<Run {self.id} agent={self.agent.id} status={self.status}>"

    @property
    def agent_id(self) -> str:
        return self.agent.id

    def subscribe(self) -> Subscription:
        """Events from the run's first one on (see ``events.Subscription``)."""
        return self.events.subscribe()

    async def wait(self) -> AgentResult:
        """The result once the run ended; raises the ``RunError`` it failed with.

        Cancelling the caller does not stop the run (use ``abort``).
        """
        if not self.done:
            # A future of its own per waiter: cancelling it leaves the run alone.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _settle(self, result: AgentResult | None, error: RunError | None) -> None:
        # Waiters resume on the next loop pass, not one later through a future's callback.
        self.done = True
        self._result, self._error = result, error
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def abort(self, why: str = "aborted") -> bool:
        """Stop the run if it is queued or streaming; False if it is past that."""
        if self.status not in ("queued", "running") or self._task is None:
            return False
        if self._abort_reason is None:
            self._abort_reason = why
            # A task cancelled before its first step never runs its body, so
            # it could not settle the run: that one sees the reason on entry.
            # Asked from within the run's own task (by its provider), the reason
            # alone stops it: the run records what it has once the provider returns.
            if self._entered and self._task is not asyncio.current_task():
                self._cancels_sent += 1
                self._task.cancel()
                asyncio.get_running_loop().call_later(ABORT_GRACE, self._give_up)
        return True

    def ended(self) -> asyncio.Future[None] | None:
        """What to wait on until the run's work has ended, which may be after it settled
        (``ABORT_GRACE``): its task, or a future for a run in its caller's task; None once it has."""
        if self._task is None:
            return None
        if self._left is None:
            return self._task
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        return self._ended

    def _give_up(self) -> None:
        if not self.done:
            log.warning("run %s: still running %g s after it was asked to stop (%s); settled now",
                        self.id, ABORT_GRACE, self._abort_reason)
            _finish_failed(self, _abort_error(self), self.events.text())


class Runtime:
    """Agents, providers, sessions and the runs in flight. Start it, then call ``run``.

    ``observers``: callables ``(run)`` told, on the loop, once a run has
    settled and left ``active``: its ``status``, result or error are final,
    and ``started_at`` / ``first_output_at`` say when it started generating
    and yielded its first text (None if it never did). They must not block;
    what they raise is logged.
    """

    def __init__(self, config: Config, state_dir: Path,
                 store: sessions.SessionStore | None = None) -> None:
        self.config = config
        self.store = store or sessions.SessionStore(
            state_dir, stateless_retention_days=config.sessions.stateless_retention_days)
        self.agents = agents_from(config)
        self.default_agent = next((a for a in self.agents.values() if a.is_default), None) \
            or self.agents.get(DEFAULT_AGENT_ID) or next(iter(self.agents.values()))
        self.providers: dict[str, Provider] = {}
        self.active: dict[str, Run] = {}
        self._finished: OrderedDict[str, RunRecord] = OrderedDict()
        self._finished_bytes = 0        # replies held by the records in _finished
        self.keys = idempotency.Keys(self.store, config.gateway.idempotency.retention_seconds)
        self._ids = itertools.count(1)
        node = config.gateway.node_id      # run_<node>_<random><n>: the owning node is in the id
        self._id_prefix = (f"{node}_" if node else "") + os.urandom(6).hex()
        self.closing = False
        self.observers: list[Callable[[Run], None]] = []

    async def start(self) -> None:
        """Open the session store and create the providers.

        Raises ``StorageError`` naming what failed and where (for the operator).
        """
        try:
            await self.store.open()
            await self.keys.load(list(self.agents))
        except StorageError as exc:
            # Start-up: no client is told, so the operator may see the path.
            raise exc.for_operator("the session store could not be opened") from exc.__cause__
        names = {name for name, _ in self.config.models.providers} | {"echo"}
        for name in sorted(names):
            self.providers[name] = create_provider(name, self.config.provider(name))

    async def stop(self, grace: float) -> None:
        """Let runs finish for ``grace`` seconds, abort the rest (recorded as aborted), close."""
        self.closing = True
        runs = list(self.active.values())
        ending = [e for e in (r.ended() for r in runs) if e is not None]
        if ending:
            await asyncio.wait(ending, timeout=grace)
        for r in list(self.active.values()):
            r.abort(SHUTDOWN_ABORT)
        pending = [e for e in (r.ended() for r in self.active.values()) if e is not None]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        self.keys.close()
        for agent in self.agents.values():
            agent.stop_watchdog()
        for provider in self.providers.values():
            await provider.aclose()
        await self.store.close()

    # ---- lookups used by the doors ----
    def agent(self, agent_id: str | None) -> Agent:
        """The agent ``agent_id`` (normalised), the default for None; 404 if unknown."""
        if agent_id is None:
            return self.default_agent
        agent = self.agents.get(agent_id.strip().lower())
        if agent is None:
            raise ApiError(404, f"agent {agent_id!r} does not exist "
                                f"(known: {', '.join(sorted(self.agents))})",
                           code="model_not_found", param="model")
        return agent

    async def forget_session(self, agent_id: str, key: str, *, delete: bool = False) -> bool:
        """Reset or delete a keyed session; whether there was one.

        A reset archives the transcript and leaves the key a blank session
        (``SessionStore.reset``), listed and continued by the next turn; a
        delete removes it. Its runs, queued or running, are aborted first
        ("session reset" / "session deleted"), and the session's lane is
        awaited, so their turns are recorded in the transcript being archived
        or deleted and no turn begun before lands in the session after it.
        503 if a run still holds the lane after ``FORGET_WAIT`` seconds (a
        provider slow to let go).
        """
        scoped = sessions.scoped_key(agent_id, key)
        if sessions.agent_of(scoped) is not None:
            scoped = sessions.with_agent(scoped, agent_id)
        for run in list(self.active.values()):
            if not run.stateless and run.session_key == scoped and run.agent.id == agent_id:
                run.abort("session deleted" if delete else "session reset")
        try:
            async with asyncio.timeout(FORGET_WAIT):
                async with self.store.lane(scoped):
                    if delete:
                        return await self.store.delete(agent_id, key)
                    return await self.store.reset(agent_id, key)
        except TimeoutError:
            raise ApiError(503, "a run of this session is still ending; retry", code="unavailable") from None

    def find_run(self, run_id: str) -> Run | RunRecord | None:
        """A run in flight or among the recently finished ones."""
        return self.active.get(run_id) or self._finished.get(run_id)

    def resolve_model(self, ref: str) -> tuple[Provider, str, str]:
        """(provider, model name, "provider/model") for a model reference; 400 if unknown."""
        provider_name, _, model_name = ref.partition("/")
        provider = self.providers.get(provider_name)
        if provider is None:
            raise ApiError(400, f"unknown provider {provider_name!r} in model {ref!r} "
                                f"(configured: {', '.join(sorted(self.providers))})",
                           code="model_not_found", param="model")
        model_name = model_name or provider_name
        provider.check_model(model_name)
        return provider, model_name, f"{provider_name}/{model_name}"

    def _new_run_id(self) -> str:
        return f"run_{self._id_prefix}{next(self._ids):x}"

    def _remember(self, run: Run) -> None:
        self.active.pop(run.id, None)
        record = self._record_of(run)
        self._finished[run.id] = record
        self._finished_bytes += record.kept_bytes
        while len(self._finished) > MAX_FINISHED_RUNS:
            self._finished_bytes -= self._finished.popitem(last=False)[1].kept_bytes
        if run._key is not None:
            self.keys.settled(run.id)
        _notify(self.observers, run)

    def _remember_record(self, record: RunRecord) -> None:
        """Keep a record rebuilt from disk among the finished runs."""
        self._finished[record.id] = record
        while len(self._finished) > MAX_FINISHED_RUNS:
            self._finished_bytes -= self._finished.popitem(last=False)[1].kept_bytes

    def _record_of(self, run: Run) -> RunRecord:
        """The run's record: its reply held if small and within the budget, else where it is."""
        last = run.events.events[-1] if run.events.events else None
        result = run._result
        reply = result.text if result is not None else last.partial if type(last) is Failed else ""
        partial = "" if result is not None else reply
        size = sys.getsizeof(reply) if reply else 0
        if result is not None and run.events.mixed:
            size += output_weight(result)
        if not size or (size <= MAX_KEPT_REPLY_BYTES
                        and self._finished_bytes + size <= FINISHED_REPLIES_BUDGET_BYTES):
            return RunRecord(run.id, run.agent.id, run.session_key, run.status, result, run._error,
                             partial, kept_bytes=size, created_at=run.created_at, mixed=run.events.mixed)
        # Read back from the transcript when asked; an error turn's partial text is
        # not recorded there, so it is given up.
        reply_at = run._stored if result is not None or run.status == "aborted" else None
        return RunRecord(run.id, run.agent.id, run.session_key, run.status,
                         dataclasses.replace(result, text="", tool_calls=(), reasoning="", logprobs=None,
                                             extra_choices=(), reasoning_signature="")
                         if result is not None else None,
                         run._error, "", reply_at, self.store, created_at=run.created_at, mixed=run.events.mixed)


def run(runtime: Runtime, request: AgentRequest, digest: str | None = None,
        meta: dict[str, Any] | None = None, *, watched: bool = True) -> Run | RunRecord:
    """Start one agent run: the single entry point for HTTP, WebSocket and CLI.

    Admission happens now and raises ``ApiError``: 404 unknown agent, 400 bad
    session key / model / unsupported option, 429 agent at capacity, 503 when
    the gateway is shutting down. The returned ``Run`` is queued; subscribe to
    its events right away to see them all, and ``await run.wait()`` for the
    result. A request with an ``idempotency_key`` the agent used before
    returns that key's run instead (joined while in flight, its ``RunRecord``
    once finished), unless it failed before any output; 422
    ``idempotency_key_reused`` if ``digest`` (of the client's request, made
    by the door; else of ``request``) differs. Doors call ``run_once``,
    which also finds keys of runs from before a restart; ``meta`` (a small
    object of the door's) is kept with a new key. ``watched`` False says
    the caller only waits for the result: unless someone subscribes before
    the run starts, its provider may then give the reply in fewer, longer
    deltas (``ProviderCall.watched``).
    """
    handle, new = _admit(runtime, request, digest, meta, watched)
    if new:
        handle._task = asyncio.get_running_loop().create_task(_execute(runtime, handle))  # type: ignore[union-attr]
    return handle


async def run_here(runtime: Runtime, request: AgentRequest, left: str = "cancelled") -> Run:
    """``run`` in the caller's task, for a door that only waits for the result: the run,
    settled (``done``), at its end. Admission raises as ``run`` does; ``request``
    must have no idempotency key (a keyed run is shared, with a task of its own).

    The run is unwatched (see ``run``) and as visible as any other: in
    ``active``, found by id, stopped by ``abort``. Cancelling the caller aborts
    it with the reason ``left``, recorded like any abort; the ``CancelledError``
    reaches the caller once the run has settled. A turn being recorded then is
    recorded, and the run ends as it says. A provider that ignores the
    cancellation keeps the caller until it lets go.
    """
    if request.idempotency_key:
        raise ValueError("a request with an idempotency key runs in a task of its own")
    handle, _ = _admit(runtime, request, None, None, False)
    assert type(handle) is Run
    task = asyncio.current_task()
    assert task is not None
    handle._task, handle._left = task, left
    cancels = task.cancelling()
    await _execute(runtime, handle)
    # An abort whose cancellation the provider swallowed is the run's result
    # (499, 504), not the caller's: only one from outside is passed on.
    for _ in range(handle._cancels_sent):
        task.uncancel()
    if task.cancelling() > cancels:
        raise asyncio.CancelledError(left)      # the caller was cancelled meanwhile
    return handle


def _admit(runtime: Runtime, request: AgentRequest, digest: str | None,
           meta: dict[str, Any] | None, watched: bool) -> tuple[Run | RunRecord, bool]:
    """A new run, admitted and registered but not started, and True; or the earlier run of
    its idempotency key, and False."""
    if runtime.closing:        # soon back, or another node: worth a retry
        raise ApiError(503, "the gateway is shutting down", code="unavailable", headers=(("retry-after", "1"),))
    agent, key, stateless = route(runtime, request)
    stored = None
    if request.idempotency_key:
        stored = idempotency.stored_key(request.idempotency_key)
        digest = digest or idempotency.request_digest(request)
        earlier = runtime.keys.earlier(agent.id, stored, digest, runtime.find_run)
        if earlier is not None:
            return earlier, False
    provider, model_name, model_ref = runtime.resolve_model(request.model or agent.model)
    # Neither the shared "no options" nor a provider that takes every input needs a look.
    if request.options is not NO_OPTIONS or provider.accepts is not INPUT_KINDS:
        check_request(request, provider, model_ref)
    agent.admit()
    handle = Run(runtime._new_run_id(), agent, key, stateless, request, provider,
                 model_ref, model_name, watched)
    if stored is not None:
        handle._key = runtime.keys.add(agent.id, stored, digest or "", handle.id, key, stateless, meta)
    runtime.active[handle.id] = handle
    agent.waiting += 1
    return handle, True


async def run_once(runtime: Runtime, request: AgentRequest, digest: str,
                   meta: dict[str, Any] | None = None, *, watched: bool = True
                   ) -> tuple[Run | RunRecord, bool]:
    """``run`` for a door: the run, and whether it is an earlier run of the request's key
    (replayed or joined) rather than a new one.

    A key whose run is no longer in memory (a restart, or a finished run
    forgotten) is looked up on disk first: its recorded outcome is the
    record replayed (a run the gateway never recorded replays as aborted
    with ``INTERRUPTED``). Concurrent requests with the key share one
    lookup. Raises as ``run`` does, and 503 if the lookup takes over
    ``idempotency.LOOKUP_TIMEOUT`` seconds.
    """
    if request.idempotency_key and not runtime.closing:
        agent, _, _ = route(runtime, request)
        await runtime.keys.load_earlier(agent.id, idempotency.stored_key(request.idempotency_key), digest,
                                        runtime.find_run, runtime._remember_record)
    handle = run(runtime, request, digest, meta, watched=watched)
    return handle, not (type(handle) is Run and handle.request is request)


async def keyed_run(runtime: Runtime, run_id: str) -> Run | RunRecord | None:
    """The run ``run_id`` if it was started under a key that is still kept (read back from
    disk after a restart), else None."""
    entry = runtime.keys.of_run(run_id)
    if entry is None:
        return None
    await runtime.keys.load_earlier(entry.agent_id, entry.key, entry.digest, runtime.find_run,
                                    runtime._remember_record)
    return runtime.find_run(run_id)


def route(runtime: Runtime, request: AgentRequest) -> tuple[Agent, str, bool]:
    """The agent, session key and statelessness of a request (README: session keys);
    ``ApiError`` for an unknown agent, a bad key or a key of another agent."""
    if request.session_key is None:
        agent = runtime.agent(request.agent_id)
        return agent, sessions.stateless_key(agent.id, request.origin), True
    key = sessions.validate_key(request.session_key)
    owner = sessions.agent_of(key)
    if owner is not None:
        agent = runtime.agent(owner)
        if request.agent_id is not None and runtime.agent(request.agent_id).id != agent.id:
            raise ApiError(400, f"session key {key!r} belongs to agent {agent.id!r}, "
                                f"but agent {request.agent_id!r} was requested",
                           code="agent_mismatch", param="x-equabot-session-key")
        # Agent ids are normalised (lower case): so is the agent part of a key.
        return agent, sessions.with_agent(key, agent.id), False
    agent = runtime.agent(request.agent_id)
    return agent, sessions.scoped_key(agent.id, key), False


async def _execute(runtime: Runtime, handle: Run) -> None:
    """The life of a run: queue (lane, then slot), generate, release the slot, record.

    Every run settles: whatever is raised in any step ends the run as failed,
    wakes its waiters and closes its event log; the task itself never fails.
    """
    agent = handle.agent
    queued = True
    journalled = False      # its key's line is written: a restart finds the key
    try:
        handle._entered = True
        if handle._abort_reason is not None:
            raise asyncio.CancelledError     # aborted before the task's first step
        async with (runtime.store.lane(handle.session_key) if not handle.stateless else _NO_LANE):
            await agent.acquire()
            agent.waiting -= 1
            queued = False
            try:
                if handle._key is not None:
                    # The key is durable before anything is produced, and only for a run
                    # that left its queue (``Keys.journal``).
                    await runtime.keys.journal(handle._key)
                    journalled = True
                history = _EMPTY_HISTORY if handle.stateless else \
                    await runtime.store.history(agent.id, handle.session_key)
                call = _provider_call(handle, history)
                handle.status = "running"
                handle.events.append(Started(handle.id, agent.id, handle.session_key,
                                             handle.model, call.turn))
                handle.started_at = time.time()
                text, usage, finish, failure, output = await _generate(handle, call)
            finally:
                agent.release()     # the provider is done: free the slot before the disk wait
            await _record(runtime, handle, call, history, text, usage, finish, failure, output)
    except asyncio.CancelledError:
        # Aborted while queued or while loading history: nothing was produced.
        _absorb_cancel(handle)
        _finish_failed(handle, _abort_error(handle), "")
    except Exception as exc:
        _finish_failed(handle, _run_failure(handle, exc, "run"), "")
    finally:
        if queued:
            agent.waiting -= 1
        if journalled and handle._stored is None:
            # Its turn was never recorded (a storage error, say): nothing of it is in
            # the session, so a retry runs it again, after a restart too. Only a run
            # the gateway stopped in the middle of leaves its key line alone (INTERRUPTED).
            runtime.keys.free(handle._key)      # type: ignore[arg-type]
        runtime._remember(handle)
        handle._task = None     # the finished task is not needed, nor is the cycle through it
        if handle._ended is not None and not handle._ended.done():
            handle._ended.set_result(None)


# The calls, reasoning and signature of a text reply.
_NO_OUTPUT: Final[tuple[tuple[ToolCall, ...], str, str]] = ((), "", "")


# The lane of a stateless run: its key is fresh, so nothing can contend for it.
_NO_LANE: Final = contextlib.nullcontext()
_EMPTY_HISTORY: Final = SessionHistory()


def _provider_call(handle: Run, history: SessionHistory) -> ProviderCall:
    """The provider call: history (transcript, else the client's context) plus the new turn."""
    request = handle.request
    context = history.messages if history.exists and not request.client_history else request.context
    ours, theirs = handle.agent.system_prompt, request.system
    system = f"{ours}\n\n{theirs}" if ours and theirs else ours or theirs or ""
    new = named_results(context, request.input) if request.input else (Message("user", request.message),)
    return ProviderCall(handle._model_name, system, context + new,
                        history.assistant_turns + 1, request.options, handle.id,
                        handle.watched or handle.events.watched)


async def _generate(handle: Run, call: ProviderCall
                    ) -> tuple[str, Usage | None, str, RunError | None, ReplyOutput | None]:
    """Stream the provider into the event log; an abort or failure ends it early.

    The reply is bounded by the provider's ``max_reply_bytes`` (``ReplyTooLarge``
    past it: its text, reasoning and tool-call arguments, of every choice,
    together), and the loop is given back every ``YIELD_INTERVAL`` seconds
    however fast the provider yields, so an abort or the timeout always lands.
    Output other than choice 0's text is gathered in a ``ReplyOutput``, made at
    the first such event (None for a text-only reply).
    """
    text = ""
    usage: Usage | None = None
    finish = "stop"
    failure: RunError | None = None
    output: ReplyOutput | None = None
    run_log = handle.events
    append = run_log.append
    provider = handle.provider
    limit = provider.max_reply_bytes
    # Characters never outnumber UTF-8 bytes: counting characters per delta
    # stops a reply at once; its exact bytes are counted at each checkpoint.
    room = limit
    clock = time.perf_counter
    give_back_at = clock() + YIELD_INTERVAL
    others = 0
    first = True                # the first text: its time is noted
    handle.agent.watch(handle)
    try:
        events = provider.stream(call)
        try:
            async for event in events:
                kind = type(event)
                if kind is TextDelta and event.text:    # type: ignore[union-attr]
                    if first:
                        first = False
                        handle.first_output_at = time.time()
                    room -= len(event.text)              # type: ignore[union-attr]
                    if room < 0:
                        raise ReplyTooLarge(provider.name, limit)
                    if not append(event):               # TextDelta is the log's Delta event
                        continue
                    if run_log.text_bytes > limit - (output.bytes if output is not None else 0):
                        raise ReplyTooLarge(provider.name, limit)
                else:
                    if kind is Usage:
                        usage = event                    # type: ignore[assignment]
                    elif kind is Finish:
                        finish = event.reason            # type: ignore[union-attr]
                    elif kind is not TextDelta:
                        if output is None:
                            output = ReplyOutput(handle.id, provider.name, limit)
                        room = output.add(run_log, event, room)     # type: ignore[arg-type]
                    others += 1
                    if others < _YIELD_CHECK_EVENTS:
                        continue
                    others = 0
                if clock() >= give_back_at:
                    await asyncio.sleep(0)
                    give_back_at = clock() + YIELD_INTERVAL
        finally:
            # Now, not whenever the generator is collected: a provider's finally
            # blocks (upstream sockets, child processes) run before the run goes on.
            await events.aclose()
        text = run_log.text()   # the reply: its deltas, joined once (the log holds no copy)
        if (len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))) > \
                limit - (output.bytes if output is not None else 0):
            raise ReplyTooLarge(provider.name, limit)
    except asyncio.CancelledError:
        if handle._abort_reason is None and handle._left is None:
            raise                       # not our abort: let the cancellation through
        _absorb_cancel(handle)          # handled: the run goes on to record what it has
        failure = _abort_error(handle)
    except RunError as exc:
        failure = exc
    except Exception as exc:           # a provider bug must not take the gateway down
        log.exception("run %s: provider %s failed", handle.id, handle.provider.name)
        failure = UpstreamError(handle.provider.name, f"internal provider error ({type(exc).__name__})")
    finally:
        handle.agent.unwatch(handle)
    return run_log.text() if failure is not None else text, usage, finish, failure, output


def _notify(observers: list[Callable[[Run], None]], run: Run) -> None:
    for observer in observers:
        try:
            observer(run)
        except Exception:       # an observer's bug is logged, never the run's failure
            log.exception("run %s: observer %r failed", run.id, observer)


def _absorb_cancel(handle: Run) -> None:
    """A cancellation of the run's task, caught: an ``abort``'s is withdrawn; one from
    outside ``run_here``'s caller becomes the run's abort (``_left``) unless it has one,
    and stays counted on the task, for ``run_here`` to pass on once the run has settled."""
    if handle._cancels_sent:
        handle._cancels_sent -= 1
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
    elif handle._abort_reason is None:
        handle._abort_reason = handle._left


def _run_failure(handle: Run, exc: Exception, step: str) -> RunError:
    """The error a run fails with when ``exc`` escaped ``step``: a ``RunError`` as it is, else ``RunFailed``."""
    if isinstance(exc, RunError):
        return exc
    log.error("run %s: %s failed", handle.id, step, exc_info=exc)
    return RunFailed(type(exc).__name__)


def _abort_error(handle: Run) -> RunAborted:
    why = handle._abort_reason or "cancelled"
    if why == "timeout":
        return RunTimedOut(handle.agent.timeout)
    return RunAborted(why)


async def _record(runtime: Runtime, handle: Run, call: ProviderCall, history: SessionHistory,
                  text: str, usage: Usage | None, finish: str, failure: RunError | None,
                  output: ReplyOutput | None = None) -> None:
    """Write the turn durably, then end the run with its result or its failure."""
    if not handle.done:             # a run settled past its abort grace stays as it was told
        handle.status = "recording"
    request = handle.request
    if failure is None and handle._abort_reason is not None:
        failure = _abort_error(handle)      # asked to stop, its provider finished anyway
    if failure is None and usage is None:
        usage = await _word_usage(call, text, handle._left is not None)
    if failure is None:
        status, error = "ok", None
    elif isinstance(failure, RunAborted):
        status, error = "aborted", failure.why
    else:
        status, error = "error", str(failure)
    calls, reasoning, signature = _NO_OUTPUT
    if output is not None:
        calls, reasoning, signature = output.outcome(failure is None)
        finish = finish_reason(finish, calls)
    record = TurnRecord(run_id=handle.id, user=request.message, reply=text, status=status,
                        at=time.time(), model=handle.model, usage=usage,
                        finish_reason=finish if failure is None else None, error=error,
                        context=() if history.exists else request.context,
                        input=call.messages[len(call.messages) - len(request.input):] if request.input else (),
                        tool_calls=calls, reasoning=reasoning, reasoning_signature=signature)
    try:
        # No shield needed: from "recording" on, abort() refuses, and the store
        # does its bookkeeping in commit callbacks that outlive a cancelled waiter.
        # A run in its caller's task may still see the caller cancelled: the
        # store then waits for the outcome all the same (``uninterrupted``).
        handle._stored = await runtime.store.record_turn(handle.agent.id, handle.session_key, record,
                                                         stateless=handle.stateless,
                                                         uninterrupted=handle._left is not None)
    except Exception as exc:
        failure = failure or _run_failure(handle, exc, "recording the turn")
    if failure is not None:
        _finish_failed(handle, failure, text)
        return
    assert usage is not None
    result = AgentResult(handle.id, handle.agent.id, handle.session_key, text, usage, finish,
                         handle.model, call.turn)
    if output is not None:
        result = output.completed(result)
    handle.status = "ok"
    handle.events.finish(Ended(result))
    handle._settle(result, None)


def _finish_failed(handle: Run, error: RunError, partial: str) -> None:
    if handle.done:
        return
    handle.status = "aborted" if isinstance(error, RunAborted) else "error"
    handle.events.finish(Failed(error, partial))
    handle._settle(None, error)


async def _word_usage(call: ProviderCall, reply: str, uninterrupted: bool = False) -> Usage:
    """Whitespace-separated words, for providers that report no counts of their own.

    ``uninterrupted``: a cancellation of the caller meanwhile (a run in its caller's
    task, being recorded) starts the count again and stays counted on the task.
    """
    while True:
        try:
            prompt = await count_words(call.system, *(m.text() for m in call.messages))
            return Usage(prompt, await count_words(reply))
        except asyncio.CancelledError:
            if not uninterrupted:
                raise


__all__ = ["Agent", "Run", "RunRecord", "Runtime", "run", "run_here", "run_once", "GenerationOptions"]
