"""The embedding API's run without a server: ``run_agent``, and the config glue of Python providers.

``run_agent(message, ...)`` returns an ``AgentRun``: ``await`` it for the
``AgentResult``, or ``async for`` over it for the run's events as they come
(``Started``, ``TextDelta`` / ``ReasoningDelta`` / ``ToolCallDelta``, then
``Ended`` or ``Failed``). The run takes the one path every run takes,
``agents.runtime.run``, on a runtime of its own (started for the run, on the
state dir given or a temporary one, and stopped after it) or on the runtime
of a running ``Gateway`` (``gateway=``).

Python providers (``providers/python.py`` holds their contract) are known to
a gateway from the moment its config is checked: ``load_config`` lets
``agents.defaults.model: "mine"`` name one, as a configured provider can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config as config_mod, statelock
from .agents import runtime as agent_runtime
from .agents.events import RunEvent
from .agents.types import AgentRequest, AgentResult
from .config import Config, ConfigError
from .providers.python import ProviderSource, check_sources, make_provider, registered_providers

if TYPE_CHECKING:
    from .gateway.app import Gateway

__all__ = ["run_agent", "AgentRun", "load_config", "provider_sources", "install_providers"]

def provider_sources(providers: Mapping[str, Any] | None) -> dict[str, ProviderSource]:
    """The registry's providers overlaid with ``providers`` (which win), each checked."""
    return {**registered_providers(), **check_sources(providers or {})}


def load_config(config: Mapping[str, Any] | str | os.PathLike[str] | None, env: Mapping[str, str],
                python_providers: Mapping[str, object]) -> tuple[Config, Path | None]:
    """The checked ``Config`` of a dict, a JSON5 file's path or None (the defaults), and that path.

    Model references may name the ``python_providers``; one of them that is
    also configured under ``models.providers`` is a ``ConfigError``.
    """
    names = tuple(python_providers)
    if config is None or isinstance(config, Mapping):
        return config_mod.from_data(dict(config or {}), env, python_providers=names), None
    path = Path(os.fspath(config)).expanduser()
    try:
        text = config_mod.read_text(path)       # bounded: a config path to /dev/zero ends
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    return config_mod.from_data(config_mod.parse_text(text, path), env, python_providers=names), path


def install_providers(runtime: agent_runtime.Runtime, sources: Mapping[str, ProviderSource]) -> None:
    """Add the Python providers to a started runtime (factories are called now)."""
    for name in sources:
        if runtime.config.provider(name) is not None:
            raise ConfigError(f"models.providers.{name}", "is also given as a Python provider; "
                                                          "rename one of them")
    made = {name: make_provider(name, source) for name, source in sources.items()}
    runtime.providers.update(made)


class AgentRun(Coroutine[Any, Any, AgentResult]):
    """One agent run of ``run_agent``: awaitable for its result, async-iterable for its events.

    ``await run`` returns the ``AgentResult`` once the reply is complete and
    recorded; it raises ``RunError`` when the run fails (``reason``:
    "upstream", "timeout", "aborted", "storage", "error") and ``GatewayError``
    (with the message an HTTP client would get) when it is refused before it
    starts: an unknown agent or model, a bad session key, an agent at
    capacity, a state dir in use. Cancelling the ``await`` aborts the run.

    ``async for event in run`` yields ``Started``, then the reply as
    ``TextDelta`` (and ``ReasoningDelta`` / ``ToolCallDelta`` if the model
    makes them), then ``Ended`` (its ``result``) or ``Failed`` (its ``error``
    and the ``partial`` text); a failed run ends the loop, it does not raise.
    Each loop starts from the first event, so a run can be iterated and then
    awaited, or iterated again. Leaving a loop early does not stop the run:
    ``abort()`` does. The run starts at the first ``await`` or loop, on the
    running event loop; one that is never awaited nor iterated never runs.

    It is also a coroutine (``collections.abc.Coroutine``), so what takes one
    takes a run: ``asyncio.run(run_agent(...))`` from code without a loop,
    ``asyncio.create_task`` and ``TaskGroup.create_task``. Cancelling such a
    task aborts the run, as cancelling an ``await`` does.
    """

    __slots__ = ("_body", "_task", "_run", "_admitted", "_driver")

    def __init__(self, body: Callable[[AgentRun], Coroutine[Any, Any, AgentResult]]) -> None:
        self._body = body
        self._task: asyncio.Task[AgentResult] | None = None
        self._run: agent_runtime.Run | agent_runtime.RunRecord | None = None
        self._admitted: asyncio.Event | None = None
        self._driver: Generator[Any, None, AgentResult] | None = None

    def _start(self) -> asyncio.Task[AgentResult]:
        if self._task is None:
            self._admitted = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._body(self))
            self._task.add_done_callback(self._ended)
        return self._task

    def _ended(self, task: asyncio.Task[AgentResult]) -> None:
        # A loop waiting for admission wakes also when the run never got that far.
        assert self._admitted is not None
        self._admitted.set()
        # A failure shows in the events (and is raised to whoever awaits):
        # a run only iterated must not be reported as "never retrieved".
        if not task.cancelled():
            task.exception()

    def __await__(self) -> Generator[Any, None, AgentResult]:
        return self._start().__await__()

    # The coroutine protocol: a task (asyncio.run's, create_task's) drives one
    # await of the run through these, as it drives a coroutine.
    def send(self, value: None) -> Any:
        """Drive the run as a coroutine: ``asyncio.run`` and ``create_task`` call this."""
        if self._driver is None:
            self._driver = self.__await__()
        return self._driver.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Raise ``typ`` where the coroutine waits (before it started: at once, and the run never starts)."""
        if isinstance(typ, BaseException):
            exc = typ
        else:
            exc = val if isinstance(val, BaseException) else typ() if val is None else typ(val)
        if tb is not None:
            exc = exc.with_traceback(tb)
        if self._driver is None:
            raise exc
        return self._driver.throw(exc)

    def close(self) -> None:
        """Stop driving the run as a coroutine (the run itself goes on; ``abort()`` stops it)."""
        if self._driver is not None:
            self._driver.close()

    def __aiter__(self) -> AsyncIterator[RunEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[RunEvent]:
        task = self._start()
        assert self._admitted is not None
        await self._admitted.wait()
        if self._run is None:
            await task                  # refused, or failed to start: raises why
        assert self._run is not None
        async for event in self._run.subscribe():
            yield event
        # The run's own runtime stops before the loop ends: its state dir is free again.
        await asyncio.wait([task])

    @property
    def run_id(self) -> str | None:
        """The run's id once it was admitted (after the ``Started`` event at the latest), else None."""
        return self._run.id if self._run is not None else None

    def abort(self) -> bool:
        """Stop the run if it is queued or generating (it ends with ``Failed``, reason "aborted")."""
        return self._run.abort("aborted") if self._run is not None else False

    def _admit(self, handle: agent_runtime.Run | agent_runtime.RunRecord) -> None:
        self._run = handle
        assert self._admitted is not None
        self._admitted.set()


def run_agent(message: str, *, config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
              state_dir: str | os.PathLike[str] | None = None,
              providers: Mapping[str, ProviderSource] | None = None,
              agent: str | None = None, session: str | None = None, model: str | None = None,
              system: str = "", env: Mapping[str, str] | None = None,
              gateway: Gateway | None = None) -> AgentRun:
    """One agent run in this process, with no server: ``await`` it or ``async for`` over it (``AgentRun``).

    ``message`` is the user's turn. ``agent`` picks the agent (default: the
    config's default agent); ``session`` is a session key (the run continues
    that session's conversation and is recorded in it; None: a stateless
    run); ``model`` ("provider/model") overrides the agent's model;
    ``system`` adds to its system prompt.

    Without ``gateway``, the run gets a runtime of its own, made from
    ``config`` (a dict shaped like the JSON5 file, a file's path, or None
    for the defaults: the echo model), ``env`` (for ``${VAR}``; default
    ``os.environ``) and ``providers`` (Python providers, as for ``Gateway``,
    overlaying those of ``register_provider``). It opens ``state_dir``
    (created 0700; None: a temporary directory, removed after the run), which
    no gateway may be holding, and closes it when the run is over. With
    ``gateway`` (a started ``Gateway``), the run is one of that gateway's,
    beside its HTTP and WebSocket runs, on its sessions and providers; the
    other arguments about the runtime must then be left out.
    The arguments are checked at once: this call raises ``ConfigError`` for
    a config that cannot be used, ``ValueError`` / ``TypeError`` for a
    provider name or value that cannot be one (the registry is read now).
    """
    request = AgentRequest(message=message, agent_id=agent, session_key=session, model=model,
                           system=system, origin="embed")
    if gateway is not None:
        if config is not None or state_dir is not None or providers is not None or env is not None:
            raise ValueError("run_agent: with gateway=, config, state_dir, providers and env are the gateway's")

        async def on_gateway(run: AgentRun) -> AgentResult:
            if not gateway._running:
                raise RuntimeError("the gateway is not running: await start() first")
            return await _execute(run, gateway.runtime, request)
        return AgentRun(on_gateway)

    sources = provider_sources(providers)
    checked, _ = load_config(config, os.environ if env is None else env, sources)

    async def on_own_runtime(run: AgentRun) -> AgentResult:
        with contextlib.ExitStack() as cleanup:
            if state_dir is None:
                import tempfile     # here: a gateway's start does not need it (nor shutil)
                state = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="equabot-run-")))
            else:
                state = Path(state_dir)
                try:
                    state.mkdir(mode=0o700, parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError("", f"cannot create state dir {state}: {exc.strerror}") from None
            cleanup.callback((await statelock.acquire_async(state)).release)
            runtime = agent_runtime.Runtime(checked, state)
            await runtime.start()
            try:
                install_providers(runtime, sources)
                return await _execute(run, runtime, request)
            finally:
                await runtime.stop(0)
        raise AssertionError("unreachable")     # for type checkers: the with block returns or raises

    return AgentRun(on_own_runtime)


async def _execute(run: AgentRun, runtime: agent_runtime.Runtime, request: AgentRequest) -> AgentResult:
    """Admit the request on the one path every run takes, and wait for its result."""
    handle = agent_runtime.run(runtime, request)     # refused: raises (a waiting loop wakes: _ended)
    run._admit(handle)
    try:
        return await handle.wait()
    except asyncio.CancelledError:
        handle.abort("cancelled")       # the caller gave up: so does the run
        raise

