"""The life of one run: its handle, ``Run``, and ``execute``, the run itself.

``execute`` takes an admitted ``Run`` through its steps: it waits for its
session's lane (one run at a time per session) and for a slot of its agent
(``maxConcurrent``), streams the provider, records the turn durably, and emits
``Started``, its output (``Delta``s; reasoning, tool-call fragments, log
probabilities and further choices as the provider yields them), then ``Ended``
or ``Failed`` to the run's event log. Tool-call fragments are joined by index
into whole ``ToolCall``s for the result and the transcript. Every run settles,
whatever fails, and an abort lands however fast or stubborn its provider.
Admission, the registry of runs and the entry points the doors call belong to
``runtime``; this module knows nothing about HTTP, WebSocket or terminals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

from ..errors import ReplyTooLarge, RunAborted, RunError, RunFailed, RunTimedOut, UpstreamError
from . import idempotency
from .agent import Agent
from .events import Ended, Failed, EventLog, Started, Subscription
from .output import ReplyOutput, finish_reason, named_results
from .transcripts import Stored
from ..providers import Provider, count_words
from .types import (
    AgentRequest, AgentResult, Finish, Message, ProviderCall, SessionHistory, TextDelta, ToolCall, TurnRecord,
    Usage,
)

if TYPE_CHECKING:
    from .runtime import Runtime

# The runtime's logger: operators see one name for the runtime's modules.
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


class Run:
    """A handle on one run: its id, its events, its outcome, and a way to stop it.

    ``status`` moves queued → running → recording → ok | error | aborted.
    The underscored fields are the run's machinery, shared with ``runtime``:
    it sets ``_task``, ``_left`` and ``_key`` at admission and reads the
    outcome when it remembers the run.
    """

    # Input chars counted in its agent's ``waiting_chars`` while it waits (``Agent.hold``):
    # set by ``runtime`` for a run that is to wait, else this class default (no store per run).
    _held = 0

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
        # A set: callers that give up waiting take theirs out, many at once at times.
        self._waiters: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stored: Stored | None = None     # where record_turn put the turn
        self._entered = False       # the task has begun: cancelling it runs its handlers
        self._abort_reason: str | None = None
        # A keyed run's journal line being written: awaited before the provider is asked.
        self._key: idempotency.Entry | None = None     # its idempotency key, if it has one
        # Run by its caller's task (``run_here``): the abort reason when that task is
        # cancelled from outside, which is then passed on once the run has settled.
        self._left: str | None = None
        self._cancelling = 0        # ``run_here``: its caller's cancellations when the run began
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
            self._waiters.add(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # A caller that stopped waiting (its own timeout, say) leaves no future
                # behind: one that waits again and again on a long run would pile them up.
                self._waiters.discard(waiter)
                raise
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
            # alone stops it: the run reads no more at its next checkpoint (or when
            # the provider returns) and records what it has.
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


async def execute(runtime: Runtime, handle: Run) -> None:
    """The life of a run: queue (lane, then slot), generate, release the slot, record.

    ``handle`` is a run ``runtime`` admitted and registered (``runtime.run``
    starts it in a task of its own, ``runtime.run_here`` in its caller's).
    Every run settles: whatever is raised in any step ends the run as failed,
    wakes its waiters and closes its event log; this never raises (a
    cancellation it did not ask for is passed on only in the caller's task,
    by ``run_here``; ``KeyboardInterrupt`` and ``SystemExit`` once the run has
    settled). At the end the run leaves ``runtime.active``.
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
            if handle._held:
                agent.waiting_chars -= handle._held     # it waits no more: its input is given back
                handle._held = 0
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
    except BaseException as exc:
        # A BaseException of some library's own is a failure like any other: left to
        # the task, it would end the run unsettled, its waiters waiting for ever.
        _finish_failed(handle, _run_failure(handle, exc, "run"), "")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise                   # the process is stopping: settled, the run lets it
    finally:
        if queued:
            agent.waiting -= 1
            if handle._held:
                agent.waiting_chars -= handle._held
                handle._held = 0
        if not handle.stateless:
            # Out of its session's lane (left just now, with no wait since, or never entered).
            lanes = runtime.lanes
            left = lanes[handle.session_key] - 1
            if left:
                lanes[handle.session_key] = left
            else:
                del lanes[handle.session_key]
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
    handle.agent.watch(handle, handle.request.timeout)
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
                if handle._abort_reason is not None:
                    # Asked to stop, and its provider goes on yielding (it swallowed the
                    # cancellation, or it asked itself): read no more, or it would hold
                    # its slot, and stay among the active runs, for as long as it yields.
                    break
                if handle._left is not None and handle._task.cancelling() > handle._cancelling:  # type: ignore[union-attr]
                    # Its caller was cancelled and the provider swallowed it: the same.
                    handle._abort_reason = handle._left
                    break
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
    except KeyboardInterrupt:
        raise                           # Ctrl-C: the process is stopping (``execute`` settles the run)
    except BaseException as exc:       # a provider bug must not take the gateway down: a BaseException
        # of a library's own, or SystemExit (which, out of the task, would stop the event loop)
        log.exception("run %s: provider %s failed", handle.id, handle.provider.name)
        failure = UpstreamError(handle.provider.name, f"internal provider error ({type(exc).__name__})")
    finally:
        handle.agent.unwatch(handle)
    return run_log.text() if failure is not None else text, usage, finish, failure, output


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


def _run_failure(handle: Run, exc: BaseException, step: str) -> RunError:
    """The error a run fails with when ``exc`` escaped ``step``: a ``RunError`` as it is, else ``RunFailed``."""
    if isinstance(exc, RunError):
        return exc
    log.error("run %s: %s failed", handle.id, step, exc_info=exc)
    return RunFailed(type(exc).__name__)


def _abort_error(handle: Run) -> RunAborted:
    why = handle._abort_reason or "cancelled"
    if why == "timeout":
        timeout = handle.request.timeout
        return RunTimedOut(handle.agent.timeout if timeout is None else timeout)
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
        status, error = "aborted", failure
    else:
        status, error = "error", failure
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


__all__ = ["ABORT_GRACE", "Run", "YIELD_INTERVAL", "execute"]
