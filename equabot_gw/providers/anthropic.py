"""The Anthropic Messages provider (api "anthropic-messages"), streaming.

POSTs ``{baseUrl}/v1/messages`` with ``stream: true`` and reads the documented
event flow: ``message_start`` (input tokens), per content block
``content_block_start``, ``content_block_delta`` * and ``content_block_stop``,
then ``message_delta`` (stop reason, cumulative output tokens) and
``message_stop``; ``ping`` events may come anywhere and ``error`` events end
the stream with a failure of the documented status of their type (e.g.
``overloaded_error`` 529, ``rate_limit_error`` 429).

The content model maps onto Messages as follows:

- ``text`` blocks ↔ ``TextDelta``; ``thinking`` blocks ↔ ``ReasoningDelta``
  (their ``signature_delta`` kept as the reasoning's signature, and replayed
  with it: a thinking block without one is not sent back, the API refuses it);
- ``tool_use`` blocks ↔ ``ToolCallDelta`` (index: the call's place among the
  reply's calls; ``input_json_delta`` pieces are the arguments, "{}" for a
  call that streamed none); tools ↔ ``tools`` with ``input_schema``;
  ``tool_choice`` auto/required/none/a named tool ↔ ``auto``/``any``/``none``/
  ``tool``, and ``parallel_tool_calls: false`` ↔ ``disable_parallel_tool_use``;
- tool results ↔ ``tool_result`` blocks in a user message (several results,
  and a user text after them, share that message);
- images ↔ ``image`` blocks: a ``data:`` URL as a ``base64`` source (its
  media type and data as sent), an http(s) URL as a ``url`` source;
- ``reasoning_effort`` ↔ extended thinking with a token budget: "minimal"
  1024, "low" 2048, "medium" 8192, "high" 16384 ("none" turns it off). The
  budget counts within ``max_tokens``: the client's is kept when larger
  than the budget, else the budget is cut to leave room (a ``max_tokens``
  too small for the 1024 minimum is refused); without one, the configured
  ``maxTokens`` is added to the budget.

Messages has no equivalent for ``logprobs``, ``top_logprobs``, ``n``,
``logit_bias``, the penalties, ``seed``, ``response_format``, ``min_p`` or
``repetition_penalty``, nor for audio input: those are refused by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar, Final

from .. import safejson
from ..errors import UpstreamError, UpstreamRejected
from ..agents.types import (
    Finish, GenerationOptions, ImagePart, Message, ProviderCall, ProviderEvent, ReasoningDelta, TextDelta,
    TextPart, ToolCallDelta, Usage,
)
from . import LARGE_EVENT_CHARS, HTTPProvider, as_user_text, finish_word

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
API_VERSION: Final = "2023-06-01"

# stop_reason → the OpenAI finish_reason the gateway reports; other words pass through
# (``finish_word``).
FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The error types of Anthropic's "Errors" page and the HTTP status each goes
# with; an error event mid-stream carries only the type.
ERROR_STATUS: Final = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

# reasoning_effort → the thinking budget (tokens); 1024 is the API's minimum.
THINKING_BUDGETS: Final = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
MIN_THINKING_BUDGET: Final = 1024


def _blocks(message: Message) -> list[dict[str, Any]]:
    """The content blocks of a user or assistant message."""
    content = message.content
    blocks: list[dict[str, Any]] = []
    if message.role == "assistant" and message.reasoning and message.reasoning_signature:
        blocks.append({"type": "thinking", "thinking": message.reasoning,
                       "signature": message.reasoning_signature})
    if type(content) is str:
        if content:
            blocks.append({"type": "text", "text": content})
    else:
        for part in content:
            kind = type(part)
            if kind is TextPart:
                if part.text:       # the API refuses an empty text block
                    blocks.append({"type": "text", "text": part.text})
            elif kind is ImagePart:
                blocks.append({"type": "image", "source": image_source(part)})
            else:       # audio has no Messages equivalent (refused for requests; history keeps a mark)
                blocks.append({"type": "text", "text": "[audio]"})
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)})
    return blocks


def image_source(part: ImagePart) -> dict[str, str]:
    """An image ``source``: base64 from a data URL (its data as sent; the API knows media
    types in lower case only), else a URL source."""
    inline = part.inline()
    if inline is None:
        return {"type": "url", "url": part.url}
    return {"type": "base64", "media_type": inline[0], "data": inline[1]}


def _input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the ``input`` object (Messages takes an object, not its text)."""
    try:
        value = safejson.loads(arguments) if arguments else {}
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {}


def to_anthropic_messages(messages: tuple[Message, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``messages`` list and any system-role texts found among them.

    Roles alternate: same-role neighbours are merged (plain texts with a
    blank line between, blocks side by side), an empty assistant message is
    left out; tool results become
    ``tool_result`` blocks of a user message (one recorded without its call's
    id as user text).
    """
    runs: list[tuple[str, list[Any]]] = []      # (role, texts or blocks): joined once, never grown
    system: list[str] = []
    for message in messages:
        role = message.role
        if role == "system":
            system.append(message.text())
            continue
        if role == "tool":
            if message.tool_call_id is None:
                item: Any = as_user_text(message)
            else:
                content = message.content
                item = {"type": "tool_result", "tool_use_id": message.tool_call_id,
                        "content": content if type(content) is str else _blocks(Message("user", content))}
            role = "user"
        elif type(message.content) is str and not message.tool_calls and not message.reasoning_signature:
            item = message.content
        else:
            item = _blocks(message)
        if role == "assistant" and not item:
            # An empty reply says nothing and the API refuses an empty message; a
            # session's history holds none either (its neighbours are merged).
            continue
        if runs and runs[-1][0] == role:
            runs[-1][1].append(item)
        else:
            runs.append((role, [item]))
    return [{"role": role, "content": _joined(items)} for role, items in runs], system


def _joined(items: list[Any]) -> str | list[dict[str, Any]]:
    if all(type(item) is str for item in items):
        return "\n\n".join(items)
    blocks: list[dict[str, Any]] = []
    for item in items:
        if type(item) is str:
            if item:
                blocks.append({"type": "text", "text": item})
        elif type(item) is dict:
            blocks.append(item)
        else:
            blocks.extend(item)
    # "tool_result blocks must come first" in a user message's content.
    results = [b for b in blocks if b.get("type") == "tool_result"]
    return results + [b for b in blocks if b.get("type") != "tool_result"] if results else blocks


class AnthropicProvider(HTTPProvider):
    """Streams from Anthropic's Messages API (see the module docstring for the mapping)."""

    api: ClassVar[str] = "anthropic-messages"
    supported_options: ClassVar[frozenset[str]] = frozenset({
        "max_tokens", "temperature", "top_p", "stop", "top_k", "tools", "tool_choice",
        "parallel_tool_calls", "reasoning_effort"})
    accepts: ClassVar[frozenset[str]] = frozenset({"image", "tool_calls"})
    default_base_url: ClassVar[str] = DEFAULT_BASE_URL
    path: ClassVar[str] = "v1/messages"

    def auth_headers(self) -> list[tuple[str, str]]:
        """``x-api-key`` when configured, ``anthropic-version`` and the media types."""
        headers = [("content-type", "application/json"), ("accept", "text/event-stream"),
                   ("anthropic-version", API_VERSION)]
        if self.config.api_key:
            headers.append(("x-api-key", self.config.api_key))
        return headers

    def payload(self, call: ProviderCall) -> dict[str, Any]:
        """The request body; ``max_tokens`` is required by the API, so the config supplies a default."""
        messages, extra_system = to_anthropic_messages(call.messages)
        system = "\n\n".join(s for s in (call.system, *extra_system) if s)
        options = call.options
        body: dict[str, Any] = {
            "model": call.model,
            "max_tokens": options.max_tokens if options.max_tokens is not None else self.config.max_tokens,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.top_p is not None:
            body["top_p"] = options.top_p
        if options.top_k is not None:
            body["top_k"] = options.top_k
        if options.stop:
            body["stop_sequences"] = list(options.stop)
        if options.tools:
            body["tools"] = [{"name": spec.name, **({"description": spec.description} if spec.description else {}),
                              "input_schema": spec.parameters or {"type": "object", "properties": {}}}
                             for spec in options.tools]
            choice = _tool_choice(options)
            if choice is not None:
                body["tool_choice"] = choice
        effort = options.reasoning_effort
        if effort is not None and effort != "none":
            self._think(body, options, effort)
        return body

    def _think(self, body: dict[str, Any], options: GenerationOptions, effort: str) -> None:
        budget = THINKING_BUDGETS.get(effort)
        if budget is None:
            raise UpstreamRejected(self.name, 400, f"reasoning_effort {effort[:32]!r} has no thinking budget "
                                                   f"(known: {', '.join(THINKING_BUDGETS)}, none)")
        if options.max_tokens is None:
            body["max_tokens"] = budget + self.config.max_tokens
        elif options.max_tokens <= budget:
            budget = options.max_tokens - 1
            if budget < MIN_THINKING_BUDGET:
                raise UpstreamRejected(self.name, 400, f"max_tokens {options.max_tokens} leaves no room for "
                                                       f"thinking (at least {MIN_THINKING_BUDGET} tokens)")
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        """Yield text, thinking and tool-use deltas, then ``Usage(input, output)``, then ``Finish``.

        Raises ``UpstreamRejected`` for a non-2xx answer or an ``error`` event
        of a known type (with that type's documented status, e.g. 529 for
        ``overloaded_error``), ``UpstreamTimeout``, or ``UpstreamError``
        (garbage, an unknown error, a stream that ends before ``message_stop`` and
        before the ``stop_reason`` of ``message_delta``).
        """
        response = await self.open_stream(self.payload(call), call)
        state = _MessageState()
        try:
            async with aclosing(self.events(response)) as events:
                async for event in events:
                    data = self.json_data(event) if len(event.data) <= LARGE_EVENT_CHARS \
                        else await self.json_data_async(event)
                    output = self._apply(data.get("type", event.type), data, state)
                    if output is not None:
                        yield output
                    if state.stopped:
                        break
                else:
                    # Ended without message_stop: whole after message_delta's stop_reason
                    # (it comes with the final usage), cut short before it.
                    if state.stop_reason is None:
                        raise UpstreamError(self.name, "event stream ended before message_stop")
        finally:
            await self.release(response, ended=state.stopped)
        if state.input_tokens is not None and state.output_tokens is not None:
            # Messages counts cached input apart; OpenAI's prompt_tokens include it.
            cached = state.cache_read
            yield Usage(state.input_tokens + (cached or 0) + (state.cache_write or 0),
                        state.output_tokens, cached)
        # A count never given (null, or left out, by a compatible server) is not reported:
        # no Usage, so the run is counted as for a provider that reports none, not as 0.
        reason = state.stop_reason or "end_turn"
        yield Finish(FINISH_REASONS.get(reason) or finish_word(reason))

    def _apply(self, kind: object, data: dict[str, Any], state: _MessageState) -> ProviderEvent | None:
        """Fold one event into ``state``; the output event it makes, if any."""
        if kind == "content_block_delta":
            return self._delta(data, state)
        if kind == "content_block_start":
            return self._start(data, state)
        if kind == "content_block_stop":
            block = state.blocks.pop(_index(data), None)
            if block is not None and block[0] == "tool_use" and not block[2]:
                return ToolCallDelta(block[1], None, None, "{}")     # a call that streamed no input
        elif kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            state.add_usage(usage)
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                state.stop_reason = delta["stop_reason"]
            # "The token counts shown in the usage field of the message_delta
            # event are cumulative."
            state.add_usage(data.get("usage"))
        elif kind == "message_stop":
            state.stopped = True
        elif kind == "error":
            raise self._stream_error(data.get("error"))
        # ping and anything new: "we may add new event types, and your code
        # should handle unknown event types gracefully."
        return None

    def _start(self, data: dict[str, Any], state: _MessageState) -> ProviderEvent | None:
        block = data.get("content_block")
        kind = block.get("type") if isinstance(block, dict) else None
        index = _index(data)
        if kind == "text":
            text = _string(block.get("text"))       # "" in every documented example
            return TextDelta(text) if text else None
        if kind == "thinking":
            text = _string(block.get("thinking"))
            return ReasoningDelta(text) if text else None
        if kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise UpstreamError(self.name, "malformed tool_use block: no id or name")
            number = state.calls
            state.calls += 1
            state.blocks[index] = ["tool_use", number, False]
            return ToolCallDelta(number, call_id, name, "")
        return None

    def _delta(self, data: dict[str, Any], state: _MessageState) -> ProviderEvent | None:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return None
        kind = delta.get("type")
        if kind == "text_delta":
            text = _string(delta.get("text"))
            return TextDelta(text) if text else None
        if kind == "thinking_delta":
            text = _string(delta.get("thinking"))
            return ReasoningDelta(text) if text else None
        if kind == "signature_delta":
            signature = _string(delta.get("signature"))
            return ReasoningDelta("", signature) if signature else None
        if kind == "input_json_delta":
            block = state.blocks.get(_index(data))
            piece = _string(delta.get("partial_json"))
            if block is None or block[0] != "tool_use" or not piece:
                return None
            block[2] = True
            return ToolCallDelta(block[1], None, None, piece)
        return None

    def _stream_error(self, error: object) -> UpstreamError:
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        detail = self.detail(message if isinstance(message, str) else "error event")
        status = ERROR_STATUS.get(kind) if isinstance(kind, str) else None
        if status is None:
            return UpstreamError(self.name, detail)
        return UpstreamRejected(self.name, status, detail)


def _tool_choice(options: GenerationOptions) -> dict[str, Any] | None:
    choice = options.tool_choice
    no_parallel = options.parallel_tool_calls is False
    if type(choice) is dict:
        out: dict[str, Any] = {"type": "tool", "name": choice["name"]}     # type: ignore[index]
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif no_parallel:
        out = {"type": "auto"}
    else:
        return None
    if no_parallel:
        out["disable_parallel_tool_use"] = True
    return out


class _MessageState:
    """What the events of one message said so far."""

    __slots__ = ("input_tokens", "output_tokens", "cache_read", "cache_write", "stop_reason", "stopped",
                 "blocks", "calls")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read: int | None = None
        self.cache_write: int | None = None
        self.stop_reason: str | None = None
        self.stopped = False
        self.blocks: dict[Any, list[Any]] = {}    # open tool_use blocks: index -> [kind, call number, had input]
        self.calls = 0

    def add_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        if _is_count(usage.get("input_tokens")):
            self.input_tokens = usage["input_tokens"]
        if _is_count(usage.get("output_tokens")):
            self.output_tokens = usage["output_tokens"]
        if _is_count(usage.get("cache_read_input_tokens")):
            self.cache_read = usage["cache_read_input_tokens"]
        if _is_count(usage.get("cache_creation_input_tokens")):
            self.cache_write = usage["cache_creation_input_tokens"]


def _index(data: dict[str, Any]) -> int | None:
    index = data.get("index")
    return index if type(index) is int else None


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
