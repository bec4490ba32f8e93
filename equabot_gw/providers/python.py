"""Python providers: an embedding program's own function as the model (the public Provider contract).

The contract, version ``PROVIDER_API_VERSION``:

- A **provider function** is an async generator function taking one
  ``ProviderCall`` (``model``, ``system``, ``messages`` — the history, then
  the new turn last —, ``turn``, ``options``, ``run_id``). It yields
  ``TextDelta`` (pieces of the reply, in order), ``ReasoningDelta``,
  ``ToolCallDelta`` (a call's ``id`` and ``name`` on its first fragment),
  then at most one ``Usage`` and one ``Finish``; with no ``Usage`` the
  gateway counts words, with no ``Finish`` the reply finished with "stop".
  Anything else yielded fails the run.
- A **factory** is any other callable: it is called as ``factory(name)`` at
  each start of a gateway (and of each ``run_agent`` that uses it) and
  returns the provider function, e.g. a bound method of an object holding
  that start's state.
- Whatever the function raises (``SystemExit`` too; not ``KeyboardInterrupt``)
  fails the run as an upstream error (HTTP 502, the control protocol's
  ``error`` lifecycle event, ``RunError`` with ``reason`` "upstream"); the
  message names the provider, the exception's type and its first line. The
  traceback is logged on ``equabot_gw.providers``.
- The run's deadline (``agents.defaults.timeoutSeconds``), an abort and a
  client that goes away cancel the function where it awaits; ``finally``
  blocks run then. It runs on the gateway's event loop: blocking work goes
  to a thread (``asyncio.to_thread``), or every request waits for it.
- The function gets every option the request set (``call.options``) and
  every kind of input (images, audio, tool calls): it honours what it can.

Where they come from: ``Gateway(..., providers={name: source})`` or
``run_agent(..., providers=...)`` (scoped to that gateway or run: nothing of
them outlives it), or the process-wide ``register_provider(name, source)``,
read when a gateway is made. Either way ``name`` is a provider like a
configured one: model ``"<name>/<model>"`` (or ``"<name>"``) reaches it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, Union

from ..agents.types import (
    INPUT_KINDS, OPTION_NAMES, Finish, ProviderCall, ProviderEvent, ReasoningDelta, TextDelta,
    ToolCallDelta, Usage,
)
from ..errors import RunError, UpstreamError
from . import _APIS, MAX_DETAIL_CHARS, Provider

__all__ = ["PROVIDER_API_VERSION", "ProviderFunction", "ProviderSource", "FunctionProvider",
           "register_provider", "unregister_provider", "registered_providers", "check_sources",
           "make_provider"]

log = logging.getLogger("equabot_gw.providers")

# The version of the contract above. It changes only when a provider written
# for it would stop working: new optional fields in ProviderCall do not count.
PROVIDER_API_VERSION: Final = 1

ProviderFunction = Callable[[ProviderCall], AsyncIterator[ProviderEvent]]
# A provider function, or a factory called with the provider's name that returns one.
ProviderSource = Union[ProviderFunction, Callable[[str], ProviderFunction]]

# Provider names stand before the "/" of a model reference and in log lines and metrics labels
# (compiled by ``re`` on first use, not at start-up).
_NAME: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_EVENTS: Final = (TextDelta, ReasoningDelta, ToolCallDelta, Usage, Finish)
# What the function may raise through the adapter unchanged: our own run errors,
# the stream being closed or cancelled, and Ctrl-C. Anything else fails the run.
_PASSED_ON: Final = (RunError, GeneratorExit, asyncio.CancelledError, KeyboardInterrupt)
_EVENT_NAMES: Final = ", ".join(kind.__name__ for kind in _EVENTS)

# The process-wide registry of register_provider: name -> source.
_REGISTERED: dict[str, ProviderSource] = {}


def register_provider(name: str, source: ProviderSource) -> None:
    """Make provider ``name`` (model ``"<name>/<model>"``) available to every gateway made afterwards.

    ``source`` is a provider function or a factory (see this module's
    contract). Registering a name again replaces it; ``unregister_provider``
    removes it. A gateway reads the registry when it is made (and
    ``run_agent`` when it is called), so a change reaches only those made
    later. This is process-wide state: code that must leave none behind (a
    test suite) passes ``providers=`` to ``Gateway`` or ``run_agent`` instead.
    Raises ``ValueError`` for a name that is not 1-64 of ``[A-Za-z0-9._-]``
    or is a built-in api ("echo", ...), ``TypeError`` for a ``source`` that
    cannot be one.
    """
    check_sources({name: source})
    _REGISTERED[name] = source


def unregister_provider(name: str) -> bool:
    """Remove ``name`` from the registry; False if it was not registered."""
    return _REGISTERED.pop(name, None) is not None


def registered_providers() -> dict[str, ProviderSource]:
    """A copy of the registry."""
    return dict(_REGISTERED)


def check_sources(sources: Mapping[str, Any]) -> dict[str, ProviderSource]:
    """``sources`` as a dict, each name and source checked (``ValueError`` / ``TypeError`` naming it)."""
    checked: dict[str, ProviderSource] = {}
    for name, source in sources.items():
        if not isinstance(name, str) or not re.fullmatch(_NAME, name):
            raise ValueError(f"provider name {name!r}: 1-64 characters of letters, digits, '.', '_', '-'")
        if name in _APIS:
            raise ValueError(f"provider name {name!r} is a built-in provider api; choose another")
        if not callable(source) or inspect.isclass(source):
            raise TypeError(f"provider {name!r}: expected an async generator function or a factory "
                            f"returning one, got {type(source).__name__}")
        if inspect.iscoroutinefunction(source):
            raise TypeError(f"provider {name!r}: {_qualname(source)} is a coroutine function; a provider "
                            f"is an async generator function (it yields its events)")
        checked[name] = source
    return checked


def make_provider(name: str, source: ProviderSource) -> FunctionProvider:
    """The ``Provider`` for ``source``: a factory is called now, with ``name``."""
    if inspect.isasyncgenfunction(source):
        return FunctionProvider(name, source)       # type: ignore[arg-type]
    function = source(name)                         # type: ignore[call-arg]
    if not callable(function) or inspect.iscoroutinefunction(function):
        if inspect.isasyncgen(function) or inspect.iscoroutine(function):
            function.aclose() if inspect.isasyncgen(function) else function.close()
        raise TypeError(f"provider {name!r}: the factory {_qualname(source)} returned "
                        f"{type(function).__name__}, not an async generator function")
    return FunctionProvider(name, function)


class FunctionProvider(Provider):
    """A provider function behind the ``Provider`` interface, its failures made upstream errors."""

    api = "python"
    supported_options = frozenset(OPTION_NAMES)
    accepts = INPUT_KINDS

    def __init__(self, name: str, function: ProviderFunction) -> None:
        super().__init__(name, None)
        self.function = function

    def __repr__(self) -> str:
        return f"<FunctionProvider {self.name!r} {_qualname(self.function)}>"

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        events: Any = None
        try:
            events = self.function(call)
            if not hasattr(events, "__anext__"):
                if inspect.iscoroutine(events):
                    events.close()          # never awaited: no "was never awaited" warning
                raise UpstreamError(self.name, f"{_qualname(self.function)} returned "
                                               f"{type(events).__name__}, not an async iterator")
            async for event in events:
                # The common case in one test; anything else is looked at closely.
                if type(event) is not TextDelta or type(event.text) is not str:
                    problem = _problem(event)
                    if problem:
                        raise UpstreamError(self.name, problem)
                yield event
        except _PASSED_ON:
            raise
        except BaseException as exc:        # the embedder's bug: a clear failure, never a hang
            # SystemExit too: raised in the function (or a library it calls), it
            # would otherwise leave the task and stop the event loop.
            log.error("provider %r (%s) failed", self.name, _qualname(self.function), exc_info=exc)
            raise UpstreamError(self.name, _describe(exc)) from exc
        finally:
            # Closed here, not when collected: its own finally blocks run now.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()


def _problem(event: object) -> str | None:
    """What is wrong with a yielded value as a provider event, or None (the runtime relies on these types)."""
    kind = type(event)
    if kind not in _EVENTS:
        return f"yielded a {kind.__name__}; a provider yields {_EVENT_NAMES}"
    fields: dict[str, tuple[type, ...]] = _FIELDS[kind]     # type: ignore[index]
    for field, types in fields.items():
        value = getattr(event, field)
        if type(value) not in types or (type(value) is int and value < 0):
            return (f"yielded a {kind.__name__} whose {field} is {type(value).__name__}"
                    f"{' ' + str(value) if type(value) is int else ''}")
    return None


_STR, _INT, _NAME_OR_NONE = (str,), (int,), (str, type(None))
_FIELDS: Final = {
    TextDelta: {"text": _STR}, ReasoningDelta: {"text": _STR, "signature": _STR},
    ToolCallDelta: {"index": _INT, "id": _NAME_OR_NONE, "name": _NAME_OR_NONE, "arguments": _STR},
    Usage: {"prompt_tokens": _INT, "completion_tokens": _INT, "cached_tokens": (int, type(None)),
            "reasoning_tokens": (int, type(None))},
    Finish: {"reason": _STR},
}


def _describe(exc: BaseException) -> str:
    """``Type: first line of the message``, clipped."""
    text = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return detail if len(detail) <= MAX_DETAIL_CHARS else detail[:MAX_DETAIL_CHARS] + "…"


def _qualname(function: Any) -> str:
    return getattr(function, "__qualname__", None) or type(function).__name__
