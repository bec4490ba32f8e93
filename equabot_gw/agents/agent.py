"""An agent as the runtime runs it: its settings, its concurrency gate and its timeout.

``Agent.admit`` refuses a run (429) when the agent runs ``max_concurrent``
and ``max_queued`` more wait; ``hold`` refuses one that is to wait (429 too)
when the input held by the agent's waiting runs would pass
``MAX_WAITING_INPUT_CHARS``; ``acquire``/``release`` hand out its slots in
arrival order; ``watch``/``unwatch`` keep the deadlines of its generating
runs under one timer, which aborts a run with "timeout" once it has
generated for ``timeout`` seconds (a run with a time limit of its own has
a timer of its own).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ..config import AgentConfig
from ..errors import ApiError

if TYPE_CHECKING:
    from ..config import Config
    from .lifecycle import Run

__all__ = ["Agent", "DEFAULT_AGENT_ID", "agents_from"]

DEFAULT_AGENT_ID: Final = "main"

# asyncio runs a timer up to one clock tick early; a deadline that close counts as reached.
_CLOCK_SLACK: Final = time.get_clock_info("monotonic").resolution
RETRY_AFTER_SECONDS: Final = "1"
# Input (characters: ``AgentRequest.input_chars``) the runs of one agent that wait, for
# a slot or for their session's lane, may hold together. Each holds its request (an HTTP
# body may be 20 MiB, a WebSocket frame 25 MiB) until it starts: without this bound
# ``max_queued`` of them could hold tens of GiB. A character is at least one byte of the
# request, so the messages speak of MiB.
MAX_WAITING_INPUT_CHARS: Final = 256 * 1024 * 1024


@dataclass(slots=True)
class Agent:
    """An agent as configured, with its defaults applied, and its concurrency gate."""

    id: str
    name: str
    model: str
    system_prompt: str
    timeout: float
    max_concurrent: int
    max_queued: int
    is_default: bool = False
    active: int = 0
    waiting: int = 0
    waiting_chars: int = 0      # input held by the runs that wait (``hold``)
    _slot_waiters: deque[asyncio.Future[None]] = field(default_factory=deque, repr=False)
    # Runs generating now -> their deadlines, in start order, hence in deadline
    # order (one timeout per agent). One timer for them all: a call_later per run
    # costs a heap push and a cancelled entry per run (measured: 3% of a
    # non-streaming completion's instructions).
    _deadlines: dict[Run, float] = field(default_factory=dict, repr=False)
    _watchdog: asyncio.TimerHandle | None = field(default=None, repr=False)
    # Runs generating now with a time limit of their own -> their timers.
    _own_timers: dict[Run, asyncio.TimerHandle] = field(default_factory=dict, repr=False)

    def admit(self) -> None:
        """Raise 429 when the agent runs its maximum and its queue is full."""
        # Every admitted run holds a slot or waits for one (in its session's
        # lane or the slot queue), so this counts them all, even a burst
        # admitted within one loop turn before any of them started.
        if self.active + self.waiting >= self.max_concurrent + self.max_queued:
            raise ApiError(429, f"agent {self.id!r} is at capacity ({self.max_concurrent} running, "
                                f"{self.max_queued} queued); retry later",
                           code="rate_limit_exceeded", headers=(("retry-after", RETRY_AFTER_SECONDS),))

    def hold(self, chars: int) -> None:
        """Count ``chars`` of input held by a run that is to wait, or raise 429 (as ``admit``
        does) when that would take the agent's waiting runs past ``MAX_WAITING_INPUT_CHARS``.

        The run gives them back (``waiting_chars -= chars``) once it stops waiting.
        """
        if self.waiting_chars + chars > MAX_WAITING_INPUT_CHARS:
            raise ApiError(429, f"agent {self.id!r} is at capacity (its queued runs hold "
                                f"{_mib(self.waiting_chars)} of input, at most {_mib(MAX_WAITING_INPUT_CHARS)}, "
                                f"and this request has {_mib(chars)}); retry later",
                           code="rate_limit_exceeded", headers=(("retry-after", RETRY_AFTER_SECONDS),))
        self.waiting_chars += chars

    async def acquire(self) -> None:
        if self.active < self.max_concurrent and not self._slot_waiters:
            self.active += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter            # release() hands its slot over: active stays counted
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()      # the slot arrived just as we were cancelled
            elif waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1

    def watch(self, run: Run, timeout: float | None = None) -> None:
        """Abort ``run`` with "timeout" once it has generated for ``timeout`` seconds
        (None: the agent's)."""
        loop = asyncio.get_running_loop()
        if timeout is not None:
            # Off the shared timer, whose deadlines are in start order only while
            # every run has the agent's timeout.
            self._own_timers[run] = loop.call_later(timeout, run.abort, "timeout")
            return
        deadline = loop.time() + self.timeout
        self._deadlines[run] = deadline
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._expire)

    def unwatch(self, run: Run) -> None:
        """``run`` stopped generating: no timeout for it any more."""
        # The timer stays armed: re-arming it per run would cost what it saves.
        self._deadlines.pop(run, None)
        if self._own_timers:
            timer = self._own_timers.pop(run, None)
            if timer is not None:
                timer.cancel()

    def stop_watchdog(self) -> None:
        """Cancel the timeout timer (at shutdown, once no run generates any more)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for timer in self._own_timers.values():
            timer.cancel()
        self._own_timers.clear()

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = None
        now = loop.time()
        deadlines = self._deadlines
        while deadlines:
            run, deadline = next(iter(deadlines.items()))
            if deadline > now + _CLOCK_SLACK:
                self._watchdog = loop.call_at(deadline, self._expire)
                return
            del deadlines[run]
            run.abort("timeout")


def _mib(chars: int) -> str:
    return f"{chars / (1024 * 1024):.1f} MiB"


def agents_from(config: Config) -> dict[str, Agent]:
    """The configured agents by id, the defaults applied; agent "main" alone when none is listed."""
    defaults = config.agents.defaults
    entries: tuple[AgentConfig, ...] = config.agents.list or (AgentConfig(id=DEFAULT_AGENT_ID),)
    agents: dict[str, Agent] = {}
    for entry in entries:
        model = entry.model or defaults.model
        agents[entry.id] = Agent(
            id=entry.id, name=entry.name or entry.id,
            model=model if "/" in model else f"{model}/{model}",
            system_prompt="\n\n".join(p for p in (defaults.system_prompt, entry.system_prompt) if p),
            timeout=entry.timeout or defaults.timeout,
            max_concurrent=entry.max_concurrent or defaults.max_concurrent,
            max_queued=defaults.max_queued, is_default=entry.default)
    return agents
