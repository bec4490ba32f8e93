"""The agent runtime: the one code path every run takes, from any door.

``run(runtime, request)`` admits an ``AgentRequest`` (agent, model, options,
session key, capacity: problems raise ``ApiError`` before anything starts) and
returns a ``Run`` handle at once; the run then lives its life in a task of its
own (``lifecycle.execute``: lane, slot, provider, durable turn, events).
The HTTP endpoint, the WebSocket ``agent`` method and the CLI all call ``run``
(a door that only waits for the result may call ``run_here``: the same run,
in the caller's task). ``Runtime`` holds the agents, the providers, the
session store, the runs in flight and the finished ones remembered for
``agent.wait`` and idempotent retries. This module knows nothing about HTTP,
WebSocket or terminals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..config import Config
from ..errors import SHUTDOWN_ABORT, ApiError, ReplyTooLarge, StorageError
from . import idempotency, sessions
from .agent import DEFAULT_AGENT_ID, Agent, agents_from
from .lifecycle import Run, execute
from .records import RunRecord
from .events import Failed
from .output import check_request, output_weight
from .session_keys import agent_of, scoped_key, stateless_key, validate_key, with_agent
from ..providers import Provider, create_provider
from .types import INPUT_KINDS, NO_OPTIONS, AgentRequest, GenerationOptions

log = logging.getLogger("equabot_gw.runtime")

# How long a reset or delete waits for the session's aborted runs to let go of it.
FORGET_WAIT: Final = 10.0
# Finished runs remembered for agent.wait and idempotent retries.
MAX_FINISHED_RUNS: Final = 10_000
# Their replies are kept in memory while each is small and all of them fit
# the budget (bytes as sys.getsizeof counts them); any other is read back from
# its transcript or journal when asked for.
MAX_KEPT_REPLY_BYTES: Final = 64 * 1024
FINISHED_REPLIES_BUDGET_BYTES: Final = 16 * 1024 * 1024


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
        # Session key -> its runs admitted and not yet out of its lane (holding or waiting
        # for it): a run admitted while its key is here will wait for the lane. Counted
        # from admission on, so a burst admitted within one loop turn is seen too.
        self.lanes: dict[str, int] = {}
        self._finished: OrderedDict[str, RunRecord] = OrderedDict()
        self._finished_bytes = 0        # replies held by the records in _finished
        self.keys = idempotency.Keys(self.store, config.gateway.idempotency.retention_seconds,
                                     in_progress=self.active)
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
        scoped = scoped_key(agent_id, key)
        if agent_of(scoped) is not None:
            scoped = with_agent(scoped, agent_id)
        for run in list(self.active.values()):
            if not run.stateless and run.session_key == scoped and run.agent.id == agent_id:
                run.abort("session deleted" if delete else "session reset")
        # Counted with the session's runs: one admitted meanwhile waits for the lane too.
        self.lanes[scoped] = self.lanes.get(scoped, 0) + 1
        try:
            async with asyncio.timeout(FORGET_WAIT):
                async with self.store.lane(scoped):
                    if delete:
                        return await self.store.delete(agent_id, key)
                    return await self.store.reset(agent_id, key)
        except TimeoutError:
            raise ApiError(503, "a run of this session is still ending; retry", code="unavailable") from None
        finally:
            left = self.lanes[scoped] - 1
            if left:
                self.lanes[scoped] = left
            else:
                del self.lanes[scoped]

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
        """The run settled (``lifecycle.execute`` ends here): from ``active`` to the finished."""
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
        """Keep a record rebuilt from disk among the finished runs, its reply held on the terms
        of a finished run's (``_record_of``): else it is looked up on disk again when asked for."""
        result = record.result
        reply = result.text if result is not None else record.partial
        size = sys.getsizeof(reply) if reply else 0
        if result is not None and record.mixed:
            size += output_weight(result)
        if size and record.found is not None and (
                size > MAX_KEPT_REPLY_BYTES or self._finished_bytes + size > FINISHED_REPLIES_BUDGET_BYTES):
            record = RunRecord(record.id, record.agent_id, record.session_key, record.status,
                               dataclasses.replace(result, text="", tool_calls=(), reasoning="",
                                                   reasoning_signature="") if result is not None else None,
                               record.error, "", record.found, self.store, created_at=record.created_at,
                               mixed=record.mixed, reply_chars=len(reply))
            size = 0
        record.kept_bytes = size
        self._finished[record.id] = record
        self._finished_bytes += size
        while len(self._finished) > MAX_FINISHED_RUNS:
            self._finished_bytes -= self._finished.popitem(last=False)[1].kept_bytes

    def _record_of(self, run: Run) -> RunRecord:
        """The run's record: its reply held if small and within the budget, else where it is."""
        last = run.events.events[-1] if run.events.events else None
        result = run._result
        reply = result.text if result is not None else _partial_of(run, last)
        partial = "" if result is not None else reply
        size = sys.getsizeof(reply) if reply else 0
        if result is not None and run.events.mixed:
            size += output_weight(result)
        if not size or (size <= MAX_KEPT_REPLY_BYTES
                        and self._finished_bytes + size <= FINISHED_REPLIES_BUDGET_BYTES):
            return RunRecord(run.id, run.agent.id, run.session_key, run.status, result, run._error,
                             partial, kept_bytes=size, created_at=run.created_at, mixed=run.events.mixed)
        # Read back from the transcript when asked (a failed turn's line keeps its partial text).
        return RunRecord(run.id, run.agent.id, run.session_key, run.status,
                         dataclasses.replace(result, text="", tool_calls=(), reasoning="", logprobs=None,
                                             extra_choices=(), reasoning_signature="")
                         if result is not None else None,
                         run._error, "", run._stored, self.store, created_at=run.created_at, mixed=run.events.mixed,
                         reply_chars=len(reply))


def _partial_of(run: Run, last: Any) -> str:
    """The partial reply a failed run's record keeps: what its turn's line keeps (a reply
    over its bound is what the run failed for, and is not kept), so that a repeat of its
    key answers the same before a restart as after one."""
    if type(last) is not Failed or isinstance(run._error, ReplyTooLarge):
        return ""
    return last.partial


def _notify(observers: list[Callable[[Run], None]], run: Run) -> None:
    for observer in observers:
        try:
            observer(run)
        except Exception:       # an observer's bug is logged, never the run's failure
            log.exception("run %s: observer %r failed", run.id, observer)


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
        handle._task = asyncio.get_running_loop().create_task(execute(runtime, handle))  # type: ignore[union-attr]
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
    cancellation keeps the caller until it lets go, or, if it goes on
    yielding, until the run's next checkpoint (every 32 events) reads no more.
    """
    if request.idempotency_key:
        raise ValueError("a request with an idempotency key runs in a task of its own")
    handle, _ = _admit(runtime, request, None, None, False)
    assert type(handle) is Run
    task = asyncio.current_task()
    assert task is not None
    handle._task, handle._left = task, left
    cancels = handle._cancelling = task.cancelling()
    await execute(runtime, handle)
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
    held = 0
    if agent.active + agent.waiting >= agent.max_concurrent or not stateless and key in runtime.lanes:
        # No slot is free for it, or its session's lane is taken: it is to wait, holding
        # its input meanwhile. Only then is the input weighed (the common run is not).
        held = request.input_chars()
        agent.hold(held)
    handle = Run(runtime._new_run_id(), agent, key, stateless, request, provider,
                 model_ref, model_name, watched)
    if held:
        handle._held = held
    if stored is not None:
        try:
            # The key's time is the run's: after a restart the replay's ``created`` is read from it.
            handle._key = runtime.keys.add(agent.id, stored, digest or "", handle.id, key, stateless, meta,
                                           handle.created_at)
        except BaseException:
            agent.waiting_chars -= held
            raise
    runtime.active[handle.id] = handle
    agent.waiting += 1
    if not stateless:
        runtime.lanes[key] = runtime.lanes.get(key, 0) + 1
    return handle, True


async def run_once(runtime: Runtime, request: AgentRequest, digest: str,
                   meta: dict[str, Any] | None = None, *, watched: bool = True, resuming: bool = False
                   ) -> tuple[Run | RunRecord, bool]:
    """``run`` for a door: the run, and whether it is an earlier run of the request's key
    (replayed or joined) rather than a new one.

    A key whose run is no longer in memory (a restart, or a finished run
    forgotten) is looked up on disk first: its recorded outcome is the
    record replayed (a run the gateway never recorded replays as aborted
    with ``INTERRUPTED``). Concurrent requests with the key share one
    lookup. Raises as ``run`` does, and 503 if the lookup takes over
    ``idempotency.LOOKUP_TIMEOUT`` seconds. ``resuming`` (the client asks
    for the rest of an earlier stream) only joins or replays: 400
    ``invalid_last_event_id`` when the key has no run to go on with, and
    nothing starts.
    """
    if request.idempotency_key and not runtime.closing:
        agent, _, _ = route(runtime, request)
        stored = idempotency.stored_key(request.idempotency_key)
        await runtime.keys.load_earlier(agent.id, stored, digest, runtime.find_run, runtime._remember_record)
        if resuming and runtime.keys.earlier(agent.id, stored, digest, runtime.find_run) is None:
            raise ApiError(400, "Last-Event-ID resumes the stream of an earlier request with this "
                                "Idempotency-Key, and there is none to resume: send the request without "
                                "Last-Event-ID to run it.", code="invalid_last_event_id", param="Last-Event-ID")
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
        return agent, stateless_key(agent.id, request.origin), True
    key = validate_key(request.session_key)
    owner = agent_of(key)
    if owner is not None:
        agent = runtime.agent(owner)
        if request.agent_id is not None and runtime.agent(request.agent_id).id != agent.id:
            raise ApiError(400, f"session key {key!r} belongs to agent {agent.id!r}, "
                                f"but agent {request.agent_id!r} was requested",
                           code="agent_mismatch", param="x-equabot-session-key")
        # Agent ids are normalised (lower case): so is the agent part of a key.
        return agent, with_agent(key, agent.id), False
    agent = runtime.agent(request.agent_id)
    return agent, scoped_key(agent.id, key), False


__all__ = ["Agent", "Run", "RunRecord", "Runtime", "run", "run_here", "run_once", "GenerationOptions"]
