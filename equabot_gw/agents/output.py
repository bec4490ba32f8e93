"""What a run produces besides text, and what its input may hold: the runtime's content helpers.

``ReplyOutput`` gathers a reply's reasoning, tool-call fragments (joined by
index into whole ``ToolCall``s), log probabilities, refusal, citations and
further choices as the provider yields them, appending each to the run's
event log and counting it against the reply's byte budget. A refusal goes
into the log as text after a ``Refusing`` marker: it is the reply's text for
the transcript, the history and every door, and the result says how much of
that text it is. ``check_request`` refuses, by
name, an option the provider cannot honour or input of a kind it does not
take; ``named_results`` names
tool results after the calls they answer. Imports nothing from
equabot_gw.net or equabot_gw.gateway.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Final

from ..errors import ApiError, ReplyTooLarge, UpstreamError
from .events import REFUSING, EventLog
from .types import (
    INPUT_KINDS, NO_OPTIONS, AgentRequest, AgentResult, Annotations, AudioPart, Choice, ChoiceEvent, Citation,
    Finish, ImagePart, Logprobs, Message, ReasoningDelta, RefusalDelta, TextDelta, ToolCall, ToolCallDelta,
)

if TYPE_CHECKING:
    from ..providers import Provider

__all__ = ["ReplyOutput", "check_request", "named_results", "finish_reason", "output_weight",
           "MAX_TOOL_CALLS", "MAX_CHOICES", "MAX_CITATIONS", "LOGPROBS_BYTES_PER_REPLY_BYTE"]

# Distinct tool calls one reply may make (OpenAI accepts at most 128 tools).
MAX_TOOL_CALLS: Final = 128
# A run's log probabilities may weigh this many times the provider's
# maxReplyBytes (as the JSON they came in): with top_logprobs 20 each token
# brings some 1-2 KiB of them.
LOGPROBS_BYTES_PER_REPLY_BYTE: Final = 4
# Choices one run may have (OpenAI caps n at 128).
MAX_CHOICES: Final = 128
# Citations one reply keeps, over all its choices; later ones are dropped (a
# search model cites a few dozen pages; each is bounded by its provider).
MAX_CITATIONS: Final = 256


def check_request(request: AgentRequest, provider: Provider, model_ref: str) -> None:
    """Refuse (400 ``unsupported_parameter``) what ``provider`` cannot honour: an option
    (param: its name), or input of a kind it does not accept (param "messages")."""
    if request.options is not NO_OPTIONS:
        for option in request.options.requested():
            if option not in provider.supported_options:
                raise ApiError(400, f"parameter {option!r} is not supported by the "
                                    f"{provider.api} provider of model {model_ref!r}",
                               code="unsupported_parameter", param=option)
    if provider.accepts is not INPUT_KINDS:
        _check_input(request, provider.accepts, provider.api, model_ref)


def _check_input(request: AgentRequest, accepts: frozenset[str], api: str, model_ref: str) -> None:
    refused = INPUT_KINDS - accepts
    for message in (*request.context, *request.input):
        if type(message.content) is str and not message.tool_calls and message.role != "tool":
            continue
        for kind in sorted(_kinds_of(message) & refused):
            what = {"image": "image input", "audio": "audio input",
                    "tool_calls": "tool calls and tool results in messages"}[kind]
            raise ApiError(400, f"{what} is not supported by the {api} provider of "
                                f"model {model_ref!r}", code="unsupported_parameter", param="messages")


def _kinds_of(message: Message) -> set[str]:
    kinds = set()
    if message.tool_calls or message.role == "tool":
        kinds.add("tool_calls")
    if type(message.content) is not str:
        for part in message.content:
            if type(part) is ImagePart:
                kinds.add("image")
            elif type(part) is AudioPart:
                kinds.add("audio")
    return kinds


def named_results(context: tuple[Message, ...], new: tuple[Message, ...]) -> tuple[Message, ...]:
    """``new`` with each tool result that lacks its tool's name named after the call it answers."""
    if all(m.role != "tool" or m.name is not None for m in new):
        return new
    names: dict[str, str] = {}
    for message in reversed(context):
        if message.role == "assistant" and message.tool_calls:
            names = {call.id: call.name for call in message.tool_calls}
            break
    return tuple(dataclasses.replace(m, name=names[m.tool_call_id])
                 if m.role == "tool" and m.name is None and m.tool_call_id in names else m for m in new)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class ReplyOutput:
    """A run's output besides choice 0's text: reasoning, tool calls (joined by index),
    log probabilities and further choices, gathered as the provider yields them.

    ``add`` puts each event in the run's log (marking it mixed) and counts
    its text in the reply's byte budget; ``bytes`` is what it counted. A
    further choice's own output is an ``ReplyOutput`` of the same run (``root``).
    """

    __slots__ = ("run_id", "provider", "limit", "root", "bytes", "logprobs_bytes", "reasoning",
                 "signature", "calls", "logprobs", "choices", "text", "finish", "refusal", "citations",
                 "citation_count")

    def __init__(self, run_id: str, provider: str, limit: int, root: ReplyOutput | None = None) -> None:
        self.run_id = run_id
        self.provider = provider
        self.limit = limit
        self.root = root or self
        self.bytes = 0                      # UTF-8 bytes counted: reasoning, arguments, other choices
        self.logprobs_bytes = 0             # the root's: all choices' logprobs
        self.reasoning: list[str] = []
        self.signature = ""
        self.calls: dict[int, list[Any]] = {}     # index -> [id, name, argument pieces]
        self.logprobs: list[Any] | None = None
        self.choices: dict[int, ReplyOutput] = {}     # choice index >= 1 -> its output (root only)
        self.text: list[str] = []                 # a further choice's text
        self.finish = "stop"                      # a further choice's finish reason
        self.refusal = 0                          # characters of text that are a refusal (the text's end)
        self.citations: list[Citation] = []
        self.citation_count = 0                   # the root's: citations kept over all choices

    def add(self, log: EventLog,
            event: ReasoningDelta | ToolCallDelta | Logprobs | RefusalDelta | Annotations | ChoiceEvent,
            room: int) -> int:
        """Gather ``event`` and append it to ``log``; the budget ``room`` (chars) left after it.

        A refusal is appended as text (``Delta``s after a ``Refusing`` marker);
        citations past ``MAX_CITATIONS`` are dropped. Raises ``ReplyTooLarge``
        past the budget, ``UpstreamError`` for a reply of more than
        ``MAX_TOOL_CALLS`` calls or ``MAX_CHOICES`` choices, or log
        probabilities past their bound.
        """
        inner = event.event if type(event) is ChoiceEvent else event
        if type(inner) is RefusalDelta:
            return self._refuse(log, event, inner.text, room)     # type: ignore[union-attr]
        if type(inner) is Annotations:
            self._cite(log, event, inner.citations)               # type: ignore[union-attr]
            return room
        logged = self._as_logged(event)
        size = self._gather(event)
        self.bytes += size
        room -= size
        if room < 0 or self.bytes > self.limit:
            raise ReplyTooLarge(self.provider, self.limit)
        if logged is not None:
            log.mixed = True
            log.append(logged)
        return room

    def _owner(self, event: Any) -> ReplyOutput:
        """The output of ``event``'s choice (a further choice's is made on its first event)."""
        if type(event) is not ChoiceEvent:
            return self
        choice = self.choices.get(event.index)
        if choice is None:
            if len(self.choices) >= MAX_CHOICES - 1:
                raise UpstreamError(self.provider, f"more than {MAX_CHOICES} choices in one reply")
            choice = self.choices[event.index] = ReplyOutput(self.run_id, self.provider, self.limit, self)
        return choice

    def _refuse(self, log: EventLog, event: Any, text: str, room: int) -> int:
        # Choice 0's text is counted by the runtime from the log (its bytes at the
        # end); a further choice's here, as its other text is.
        if not text:
            return room
        choice = self._owner(event)
        wrap = type(event) is ChoiceEvent
        log.mixed = True
        if not choice.refusal:
            log.append(ChoiceEvent(event.index, REFUSING) if wrap else REFUSING)   # type: ignore[arg-type]
        choice.refusal += len(text)
        delta = TextDelta(text)
        log.append(ChoiceEvent(event.index, delta) if wrap else delta)
        if choice is self:
            room -= len(text)
        else:
            size = choice._gather(delta)
            self.bytes += size
            room -= size
        if room < 0 or self.bytes > self.limit:
            raise ReplyTooLarge(self.provider, self.limit)
        return room

    def _cite(self, log: EventLog, event: Any, citations: tuple[Citation, ...]) -> None:
        root = self.root
        kept = citations[:max(0, MAX_CITATIONS - root.citation_count)]
        if not kept:
            return
        root.citation_count += len(kept)
        self._owner(event).citations.extend(kept)
        if len(kept) < len(citations):
            event = ChoiceEvent(event.index, Annotations(kept)) if type(event) is ChoiceEvent else Annotations(kept)
        log.mixed = True
        log.append(event)

    def _as_logged(self, event: Any) -> Any:
        """``event`` as the log keeps it (read before ``_gather`` takes it): a tool call's
        id and name only where they are news, no fragment that carries nothing. Each
        logged event moves a stream's position (``idempotency.output_units``), so an
        upstream that repeats a call's id and name on every fragment, or sends empty
        ones, does not make positions that joining its fragments would change."""
        inner = event.event if type(event) is ChoiceEvent else event
        if type(inner) is ReasoningDelta and not inner.text and not inner.signature:
            return None
        if type(inner) is Finish and type(event) is ChoiceEvent:
            # A further choice's end as its result will say it (``finish_reason``): its
            # stream must not say "stop" where the completion says "tool_calls".
            owner = self.choices.get(event.index)
            if owner is not None and owner.calls and inner.reason == "stop":
                return ChoiceEvent(event.index, Finish("tool_calls"))
            return event
        if type(inner) is not ToolCallDelta:
            return event
        owner = self.choices.get(event.index) if type(event) is ChoiceEvent else self
        call = owner.calls.get(inner.index) if owner is not None else None
        if call is None:
            # A call's first fragment carries the id the result will have: the upstream's,
            # or the one the gateway gives a call that came without (``_call_id``).
            logged = inner if inner.id is not None else \
                ToolCallDelta(inner.index, self._call_id(inner.index), inner.name, inner.arguments)
        else:
            # The first id and name stay the call's: later ones are not news.
            name = inner.name if inner.name is not None and call[1] is None else None
            logged = inner if (None, name) == (inner.id, inner.name) else \
                ToolCallDelta(inner.index, None, name, inner.arguments)
        if logged.id is None and logged.name is None and not logged.arguments:
            return None
        if logged is inner:
            return event
        return ChoiceEvent(event.index, logged) if type(event) is ChoiceEvent else logged

    def _gather(self, event: Any) -> int:
        """Take one event; the UTF-8 bytes of text it adds."""
        kind = type(event)
        if kind is ReasoningDelta:
            if event.signature:
                self.signature = event.signature
            self.reasoning.append(event.text)
            return _utf8_len(event.text) + len(event.signature)     # each signature is kept in the log
        if kind is ToolCallDelta:
            call = self.calls.get(event.index)
            if call is None:
                if len(self.calls) >= MAX_TOOL_CALLS:
                    raise UpstreamError(self.provider, f"more than {MAX_TOOL_CALLS} tool calls in one reply")
                call = self.calls[event.index] = [event.id or self._call_id(event.index), event.name, []]
            else:
                call[1] = call[1] or event.name
            call[2].append(event.arguments)
            return _utf8_len(event.arguments) + len(event.name or "") + len(event.id or "")
        if kind is Logprobs:
            root = self.root
            root.logprobs_bytes += event.size
            bound = self.limit * LOGPROBS_BYTES_PER_REPLY_BYTE
            if root.logprobs_bytes > bound:
                raise UpstreamError(self.provider, f"log probabilities over {bound} bytes in one reply")
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(event.content)
            return 0
        if kind is TextDelta and self.root is not self:
            self.text.append(event.text)
            return _utf8_len(event.text)
        if kind is Finish and self.root is not self:
            self.finish = event.reason
            return 0
        if kind is ChoiceEvent and self.root is self:
            return self._owner(event)._gather(event.event)
        raise UpstreamError(self.provider, f"unexpected provider event {kind.__name__}")

    def outcome(self, ok: bool) -> tuple[tuple[ToolCall, ...], str, str]:
        """(tool calls, reasoning, its signature) to record; no calls unless the run is ``ok``
        (a partial call cannot be replayed)."""
        return self.tool_calls() if ok else (), "".join(self.reasoning), self.signature

    def completed(self, result: AgentResult) -> AgentResult:
        """``result`` (choice 0's text, usage, finish) with everything gathered here."""
        calls, reasoning, signature = self.outcome(True)
        text = result.text
        return dataclasses.replace(result, tool_calls=calls, reasoning=reasoning, reasoning_signature=signature,
                                   logprobs=tuple(self.logprobs) if self.logprobs is not None else None,
                                   extra_choices=self.extra_choices(),
                                   refusal=text[max(0, len(text) - self.refusal):] if self.refusal else "",
                                   citations=tuple(self.citations))

    def _call_id(self, index: int) -> str:
        """The id of call ``index`` when the upstream gave its first fragment none."""
        return f"call_{self.run_id}_{index}"

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The complete calls, by index; a call the upstream gave no id has ``call_<run>_<index>``."""
        return tuple(ToolCall(call[0], call[1] or "", "".join(call[2])) for index, call in sorted(self.calls.items()))

    def extra_choices(self) -> tuple[Choice, ...]:
        """Choices 1..n-1, by index."""
        out = []
        for index, choice in sorted(self.choices.items()):
            calls = choice.tool_calls()
            text = "".join(choice.text)
            out.append(Choice(index, text, finish_reason(choice.finish, calls), calls,
                              "".join(choice.reasoning),
                              tuple(choice.logprobs) if choice.logprobs is not None else None,
                              text[max(0, len(text) - choice.refusal):] if choice.refusal else "",
                              tuple(choice.citations)))
        return tuple(out)


def finish_reason(finish: str, calls: tuple[ToolCall, ...]) -> str:
    """A reply that ends in tool calls says "tool_calls" (some upstreams say "stop")."""
    return "tool_calls" if calls and finish == "stop" else finish


def output_weight(result: AgentResult) -> int:
    """Bytes (about) a result holds besides its text: what a ``RunRecord`` budget counts."""
    weight = len(result.reasoning) + sum(len(c.arguments) + 64 for c in result.tool_calls)
    weight += len(result.refusal) + sum(len(c.url) + len(c.title) + 64 for c in result.citations)
    if result.logprobs is not None:
        weight += 256 * len(result.logprobs)      # an entry with a few alternatives
    for choice in result.extra_choices:
        weight += len(choice.text) + len(choice.reasoning) + 256 * len(choice.logprobs or ())
        weight += len(choice.refusal) + sum(len(c.url) + len(c.title) + 64 for c in choice.citations)
        weight += sum(len(c.arguments) + 64 for c in choice.tool_calls)
    return weight
