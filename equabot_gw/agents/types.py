"""The values that cross the agent runtime's boundaries: requests, results, provider I/O.

Owns plain frozen data only, no behaviour beyond validation and small
conveniences. Endpoint layers build an ``AgentRequest`` and read an
``AgentResult``; providers receive a ``ProviderCall`` and yield ``TextDelta``,
``Usage`` and ``Finish``. Nothing here knows about HTTP, WebSocket or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: Final = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class Message:
    """One conversation message with plain-text content."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown message role {self.role!r}")


# Sampling options a request may ask for; providers declare which they honour.
OPTION_NAMES: Final = ("max_tokens", "temperature", "top_p", "stop", "seed")


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """Sampling options; ``None`` / empty means "not asked for"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def requested(self) -> tuple[str, ...]:
        """Names (from ``OPTION_NAMES``) of the options that are set."""
        return tuple(name for name in OPTION_NAMES
                     if getattr(self, name) not in (None, ()))


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """What a provider is asked for in one run.

    ``messages`` is the history followed by the new user turn (last);
    ``system`` joins every system instruction ("" for none); ``turn`` is
    1 + the number of assistant turns already in the session's transcript.
    """

    model: str
    system: str
    messages: tuple[Message, ...]
    turn: int
    options: GenerationOptions = GenerationOptions()
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply, in order."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass(frozen=True, slots=True)
class Finish:
    """Why the reply ended: "stop" (natural or a stop sequence) or "length" (max tokens)."""

    reason: str


ProviderEvent = TextDelta | Usage | Finish


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One run, as any door (HTTP, WebSocket, CLI) asks for it.

    ``session_key`` None means stateless: a fresh key under ``origin``.
    ``context`` is earlier conversation sent by the client: it is the history
    only while the session has no turns of its own.
    ``model`` overrides the agent's "provider/model" for this run.
    """

    message: str
    agent_id: str | None = None
    session_key: str | None = None
    context: tuple[Message, ...] = ()
    system: str = ""
    model: str | None = None
    options: GenerationOptions = GenerationOptions()
    origin: str = "agent"
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class AgentResult:
    """A finished run: the whole reply and what it cost."""

    run_id: str
    agent_id: str
    session_key: str
    text: str
    usage: Usage
    finish_reason: str
    model: str
    turn: int


@dataclass(frozen=True, slots=True)
class SessionHistory:
    """What a session's transcript says so far: messages in order, and completed assistant turns."""

    messages: tuple[Message, ...] = ()
    assistant_turns: int = 0
    exists: bool = False


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """Everything one run adds to its session's transcript, written in one append.

    ``status`` is "ok", "aborted" or "error"; ``reply`` is the whole text for
    "ok" and the partial text for "aborted". ``context`` is stored only on a
    session's first turn (the client-sent history it started from).
    """

    run_id: str
    user: str
    reply: str
    status: str
    at: float
    model: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    error: str | None = None
    context: tuple[Message, ...] = field(default=())
