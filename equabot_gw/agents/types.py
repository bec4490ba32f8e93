"""The values that cross the agent runtime's boundaries: requests, results, provider I/O.

Owns plain frozen data only, no behaviour beyond validation and small
conveniences. This is the one content model of the gateway: every wire format
(chat completions, the control protocol, each provider API) converts to and
from these values in exactly one module of its own, never door to door.

- A ``Message``'s ``content`` is a ``str`` (text only: the common, cheap case)
  or a tuple of parts (``TextPart``, ``ImagePart``, ``AudioPart``). An
  assistant message may carry ``ToolCall``s and ``reasoning``; a ``tool``
  message answers one call by ``tool_call_id``.
- Endpoint layers build an ``AgentRequest`` and read an ``AgentResult``.
- Providers receive a ``ProviderCall`` and yield ``ProviderEvent``s:
  ``TextDelta``, ``ReasoningDelta``, ``ToolCallDelta``, ``Logprobs``,
  ``RefusalDelta``, ``Annotations``, one ``Usage``, one ``Finish``; choices
  past the first (``n`` > 1) come wrapped in ``ChoiceEvent``.

Nothing here knows about HTTP, WebSocket or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Union

if TYPE_CHECKING:
    from equabot_gw.errors import RunError

Role = Literal["system", "user", "assistant", "tool"]
ROLES: Final = ("system", "user", "assistant", "tool")


# -- content parts -------------------------------------------------------------

@dataclass(slots=True)
class TextPart:
    """A piece of text inside a message of parts."""

    text: str


@dataclass(slots=True)
class ImagePart:
    """An image by ``url``: an http(s) URL or a ``data:image/<type>;base64,`` URL, kept
    byte-identical; ``detail`` is OpenAI's hint ("auto", "low", "high") or None."""

    url: str
    detail: str | None = None

    def inline(self) -> tuple[str, str] | None:
        """A data URL's media type (lower case) and its data as sent; None for any other URL.

        The scheme (RFC 3986 §3.1) and the media type (RFC 2045 §5.1) are
        case-insensitive: ``DATA:IMAGE/PNG;BASE64,…`` is inline too.
        """
        if self.url[:5].lower() != "data:":
            return None
        head, _, data = self.url.partition(",")
        return head[5:].split(";")[0].lower(), data


@dataclass(slots=True)
class AudioPart:
    """Audio input: base64 ``data`` in ``format`` ("wav" or "mp3"), kept byte-identical."""

    data: str
    format: str


Part = Union[TextPart, ImagePart, AudioPart]
# A message's content: plain text, or parts in order.
Content = Union[str, tuple[Part, ...]]


def content_text(content: Content) -> str:
    """The text of ``content``: itself if a str, else its text parts joined."""
    if type(content) is str:
        return content
    return "".join([part.text for part in content if type(part) is TextPart])  # type: ignore[union-attr]


def content_chars(content: Content) -> int:
    """Characters ``content`` holds (texts, URLs, audio data): its weight for size bounds."""
    if type(content) is str:
        return len(content)
    total = 0
    for part in content:                                    # type: ignore[union-attr]
        kind = type(part)
        total += len(part.text) if kind is TextPart else len(part.url) if kind is ImagePart \
            else len(part.data)                             # type: ignore[union-attr]
    return total


# -- tools -----------------------------------------------------------------------

@dataclass(slots=True)
class ToolCall:
    """One call of a tool by the model: ``arguments`` is the JSON text the model produced,
    kept as it came (it may even be invalid JSON: the client judges it)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call: ``parameters`` is its JSON Schema (passed through,
    never walked), ``strict`` OpenAI's structured-outputs flag (None: not given)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


# -- messages --------------------------------------------------------------------

# Message and TurnRecord are made per request (two messages, one record) and
# per replayed history message, so they are plain slotted dataclasses, not
# frozen ones: a frozen dataclass sets each field through object.__setattr__,
# about 1,000 instructions a field (measured with callgrind: a 7-field frozen
# Message costs 12.2k instructions to make, this one 3.3k, less than the
# 2-field frozen one it replaces). Treat them as read-only all the same: the
# session store shares them between runs. So are the other values made per
# run, per part or per word (the parts, tool calls, provider events, requests
# and results): read-only by convention, none of them hashable. Two stay
# frozen: GenerationOptions (one instance, NO_OPTIONS, is shared by every run
# that asks for none) and ToolSpec.
@dataclass(slots=True)
class Message:
    """One conversation message (read-only by convention, see above).

    ``content`` is a str for text (the cheap, common case) or a tuple of parts;
    "" is allowed for an assistant turn that only calls tools. ``tool_calls``
    (assistant only) are the calls the model made; ``tool_call_id`` (tool only)
    names the call a tool result answers (None only in transcripts written
    before tool calls were kept: providers then pass the result as user text);
    ``name`` is the tool's name on a tool result when known. ``reasoning`` is
    an assistant's reasoning text, kept apart from its answer, and
    ``reasoning_signature`` the upstream's opaque proof of it (Anthropic's
    thinking signature), "" when none.
    """

    role: str
    content: Content
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str = ""
    reasoning_signature: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown message role {self.role!r}")

    def text(self) -> str:
        """The message's text: ``content`` if a str, else its text parts joined ("" if none)."""
        content = self.content
        return content if type(content) is str else content_text(content)


def message_chars(message: Message) -> int:
    """Characters ``message`` holds (content, tool-call arguments, reasoning): its weight."""
    chars = len(message.content) if type(message.content) is str else content_chars(message.content)
    for call in message.tool_calls:
        chars += len(call.arguments) + len(call.name) + len(call.id)
    return chars + len(message.reasoning)


# -- options ---------------------------------------------------------------------

# Kinds of input besides text: a provider's ``accepts`` names those it takes
# (this very set when it takes them all, which spares the runtime a scan).
INPUT_KINDS: Final = frozenset({"image", "audio", "tool_calls"})

# Options a request may ask for; providers declare which they honour
# (``Provider.supported_options``). The single list of names.
# ``max_tokens`` is one option whichever field carried it: a provider that
# honours it honours both names (``GenerationOptions.max_tokens_field`` keeps
# the field, for the upstreams that know only one of them).
OPTION_NAMES: Final = (
    "max_tokens", "temperature", "top_p", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "reasoning_effort", "n", "tools", "tool_choice", "parallel_tool_calls",
    "top_k", "min_p", "repetition_penalty",
)


# The names OpenAI's Chat Completions API gives the reply's token limit, older first.
MAX_TOKENS_FIELDS: Final = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """What the request asks of generation; ``None`` / empty means "not asked for".

    Doors store neutral values (``n`` 1, ``logprobs`` false, penalties 0,
    ``response_format`` text, an empty ``tools``) as not asked for, so that
    every provider accepts them. ``logit_bias`` is (token id, bias) pairs;
    ``response_format`` the OpenAI object (``json_object`` or ``json_schema``,
    passed through); ``tool_choice`` is "auto", "none", "required", or
    ``{"type": "function", "name": NAME}`` to force one tool.
    ``max_tokens_field`` is the request field ``max_tokens`` came in as:
    "max_tokens" (the older name, the only one many compatible servers know)
    or "max_completion_tokens" (the one OpenAI's reasoning models take, and
    what the Responses API's ``max_output_tokens`` becomes); an OpenAI-compatible
    upstream gets the limit under that name. It is not an option of its own.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: tuple[tuple[str, float], ...] = ()
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    n: int | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    # Left out of repr: request digests of idempotency keys are made from it,
    # and keys stored before this field existed must still match.
    max_tokens_field: str = field(default="max_tokens", repr=False)

    def __post_init__(self) -> None:
        if self.max_tokens_field not in MAX_TOKENS_FIELDS:
            raise ValueError(f"max_tokens_field must be one of {MAX_TOKENS_FIELDS}, "
                             f"not {self.max_tokens_field!r}")

    def requested(self) -> tuple[str, ...]:
        """Names (from ``OPTION_NAMES``) of the options that are set."""
        return tuple(name for name in OPTION_NAMES
                     if getattr(self, name) not in (None, ()))

    def forced_tool(self) -> str | None:
        """The tool name ``tool_choice`` forces, or None."""
        choice = self.tool_choice
        return choice.get("name") if type(choice) is dict else None     # type: ignore[union-attr]


# The options of a request that asks for none: one shared instance, so that
# the runtime can skip the option checks by identity.
NO_OPTIONS: Final = GenerationOptions()


@dataclass(slots=True)
class ProviderCall:
    """What a provider is asked for in one run.

    ``messages`` is the history followed by the new turn's input (last);
    ``system`` joins every system instruction ("" for none); ``turn`` is
    1 + the number of assistant turns already in the session's transcript.
    ``watched`` is False when nobody follows the reply as it is produced (a
    caller that waits for the whole result): a provider may then yield its
    text in fewer, longer deltas, as a late reader of the run would get them
    (a run that fails past its size limit then keeps less partial text).
    """

    model: str
    system: str
    messages: tuple[Message, ...]
    turn: int
    options: GenerationOptions = NO_OPTIONS
    run_id: str = ""
    watched: bool = True


# -- provider events -------------------------------------------------------------

@dataclass(slots=True)
class TextDelta:
    """A piece of the reply, in order."""

    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning, in order, kept apart from the reply.

    ``signature`` is set (text then "") when the upstream signs its reasoning
    (Anthropic's ``signature_delta``): the last one given is kept with it.
    """

    text: str
    signature: str = ""


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of tool call ``index`` (0-based among this reply's calls).

    ``id`` and ``name`` are set on a call's first fragment (None after);
    ``arguments`` is the next piece of its JSON text ("" allowed).
    """

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(slots=True)
class Logprobs:
    """The upstream's token log probabilities for the reply so far (OpenAI's
    ``choices[].logprobs.content`` entries), passed back untouched.

    ``size`` is what they weigh (characters of the JSON they came in, an
    upper bound): the runtime bounds a run's logprobs by it.
    """

    content: tuple[Any, ...]
    size: int = 0


@dataclass(slots=True)
class RefusalDelta:
    """A piece of the model's refusal to answer (OpenAI's ``refusal``), in order.

    A refusal is the end of its choice's text: once a choice refuses, the
    rest of its text is the refusal. The runtime keeps it as the reply's text
    (what the transcript, the history and the next turn see) and says which
    part of that text it is (``AgentResult.refusal``), for the doors that
    show a refusal apart from an answer.
    """

    text: str


@dataclass(slots=True)
class Citation:
    """A web page the reply cites (OpenAI's ``url_citation``): characters
    ``start_index`` to ``end_index`` of the reply's text cite ``url``."""

    url: str
    title: str
    start_index: int
    end_index: int


@dataclass(slots=True)
class Annotations:
    """Citations of the reply's text, as the upstream gave them (checked by the provider:
    well-formed entries only, each bounded in size)."""

    citations: tuple[Citation, ...]


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them.

    ``cached_tokens`` (of the prompt) and ``reasoning_tokens`` (of the
    completion) are None when the upstream did not say.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """OpenAI's ``usage`` object; the ``*_tokens_details`` only when known."""
        usage: dict[str, Any] = {"prompt_tokens": self.prompt_tokens,
                                 "completion_tokens": self.completion_tokens,
                                 "total_tokens": self.prompt_tokens + self.completion_tokens}
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


@dataclass(slots=True)
class Finish:
    """Why the reply ended: "stop" (natural or a stop sequence), "length" (max tokens),
    "tool_calls" (it ends in calls), "content_filter", or what the upstream said."""

    reason: str


@dataclass(slots=True)
class ChoiceEvent:
    """An event of choice ``index`` >= 1 (``n`` > 1): a ``TextDelta``,
    ``ReasoningDelta``, ``ToolCallDelta``, ``Logprobs``, ``RefusalDelta``,
    ``Annotations`` or ``Finish`` of that choice. Choice 0's events come bare,
    so the one-choice path never pays for this."""

    index: int
    event: TextDelta | ReasoningDelta | ToolCallDelta | Logprobs | RefusalDelta | Annotations | Finish


ProviderEvent = Union[TextDelta, ReasoningDelta, ToolCallDelta, Logprobs, RefusalDelta, Annotations, Usage, Finish,
                      ChoiceEvent]


# -- requests and results ------------------------------------------------------------

# What a message, content part or tool call of a request weighs besides its characters
# (``AgentRequest.input_chars``): its objects, and the JSON its door parsed it from, which
# the door holds as long as the run (measured: about 340 bytes for a one-character message).
ITEM_WEIGHT_CHARS: Final = 512


@dataclass(slots=True)
class AgentRequest:
    """One run, as any door (HTTP, WebSocket, CLI) asks for it.

    The new turn is ``input``: the messages the client sent after the last
    assistant message (one user message, or tool results, then maybe a user
    message); when ``input`` is empty it is one user message of text
    ``message`` (the WebSocket and CLI doors, and plain-text requests).
    ``session_key`` None means stateless: a fresh key under ``origin``.
    ``context`` is earlier conversation sent by the client: it is the history
    only while the session has no turns of its own, or always when
    ``client_history`` is set (the client owns the history, edits and
    resends it; the transcript then only records).
    ``model`` overrides the agent's "provider/model" for this run.
    ``timeout`` is the run's own time limit in seconds, in place of its
    agent's (None: the agent's).
    """

    message: str = ""
    agent_id: str | None = None
    session_key: str | None = None
    context: tuple[Message, ...] = ()
    system: str = ""
    model: str | None = None
    options: GenerationOptions = NO_OPTIONS
    origin: str = "agent"
    idempotency_key: str | None = None
    input: tuple[Message, ...] = ()
    client_history: bool = False
    timeout: float | None = None

    def turn_input(self) -> tuple[Message, ...]:
        """The new turn's messages: ``input``, else one user message of ``message``."""
        return self.input or (Message("user", self.message),)

    def input_chars(self) -> int:
        """Characters of input the request holds: its message and system prompt, and the
        texts, URLs, audio data, reasoning and tool-call arguments of its ``context`` and
        ``input`` messages, each message and content part weighing ``ITEM_WEIGHT_CHARS``
        more. The weight of a run that waits (``Agent.hold``), not a byte count."""
        total = len(self.message) + len(self.system)
        for messages in (self.context, self.input):
            total += ITEM_WEIGHT_CHARS * len(messages)
            for message in messages:
                content = message.content
                if type(content) is not str:
                    total += ITEM_WEIGHT_CHARS * len(content)
                total += content_chars(content) + len(message.reasoning)
                for call in message.tool_calls:
                    total += ITEM_WEIGHT_CHARS + len(call.arguments)
        return total


@dataclass(slots=True)
class Choice:
    """A choice past the first of an ``n`` > 1 run (index >= 1), as complete as choice 0."""

    index: int
    text: str
    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    logprobs: tuple[Any, ...] | None = None
    refusal: str = ""
    citations: tuple[Citation, ...] = ()

    def answer(self) -> str:
        """``text`` without its refusal (see ``AgentResult``)."""
        return self.text[:len(self.text) - len(self.refusal)] if self.refusal else self.text


@dataclass(slots=True)
class AgentResult:
    """A finished run: the whole reply and what it cost.

    ``text`` is the answer ("" for a turn that only calls tools);
    ``tool_calls`` the calls it ends in (``finish_reason`` "tool_calls");
    ``reasoning`` the reasoning text, apart from the answer (with its
    ``reasoning_signature``, "" if none); ``logprobs`` the upstream's token
    log probabilities (None if it sent none); ``extra_choices`` choices 1..n-1.
    ``refusal`` is the end of ``text`` that is the model's refusal to answer
    ("" if it did not refuse; ``text`` holds it too, as the transcript
    does): an OpenAI door answers ``text`` without it as the content and it
    as the refusal. ``citations`` are the pages the text cites.
    """

    run_id: str
    agent_id: str
    session_key: str
    text: str
    usage: Usage
    finish_reason: str
    model: str
    turn: int
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    logprobs: tuple[Any, ...] | None = None
    extra_choices: tuple[Choice, ...] = ()
    reasoning_signature: str = ""
    refusal: str = ""
    citations: tuple[Citation, ...] = ()

    def answer(self) -> str:
        """``text`` without its refusal: the answer's content."""
        return self.text[:len(self.text) - len(self.refusal)] if self.refusal else self.text


@dataclass(slots=True)
class SessionHistory:
    """What a session's transcript says so far: messages in order, and completed assistant turns."""

    messages: tuple[Message, ...] = ()
    assistant_turns: int = 0
    exists: bool = False


@dataclass(slots=True)
class TurnRecord:
    """Everything one run adds to its session's transcript, written in one append (read-only
    by convention: a plain slotted dataclass for the reason given at ``Message``).

    ``status`` is "ok", "aborted" or "error"; ``reply`` is the whole text for
    "ok" and the partial text for "aborted". The turn's input is ``input``
    when set (user messages with parts, tool results), else one user message
    of text ``user``. ``tool_calls``, ``reasoning`` and its signature go with
    the reply ("ok" only for tool calls: a partial call cannot be replayed).
    ``context`` is stored only on a session's first turn (the client-sent
    history it started from).
    """

    run_id: str
    user: str
    reply: str
    status: str
    at: float
    model: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    error: str | RunError | None = None     # the run's error: its line keeps what a replay answers
    context: tuple[Message, ...] = field(default=())
    input: tuple[Message, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    reasoning_signature: str = ""
