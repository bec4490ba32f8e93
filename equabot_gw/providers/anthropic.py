"""The Anthropic Messages provider (api "anthropic-messages"), streaming.

POSTs ``{baseUrl}/v1/messages`` with ``stream: true`` and reads the documented
event flow: ``message_start`` (input tokens), per content block
``content_block_start``, ``content_block_delta`` * and ``content_block_stop``,
then ``message_delta`` (stop reason, cumulative output tokens) and
``message_stop``; ``ping`` events may come anywhere and ``error`` events end
the stream with a failure. Text deltas become ``TextDelta``; other block
kinds (thinking, tool input) are skipped. Seeds are not supported by the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar, Final

from ..errors import UpstreamError, UpstreamRejected
from ..agents.types import Finish, Message, ProviderCall, ProviderEvent, TextDelta, Usage
from . import HTTPProvider, as_user_text

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
API_VERSION: Final = "2023-06-01"

# stop_reason → the OpenAI finish_reason the gateway reports; others pass through.
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


def to_anthropic_messages(messages: tuple[Message, ...]) -> tuple[list[dict[str, str]], list[str]]:
    """The ``messages`` list (roles alternate; same-role neighbours merged with a blank
    line; tool results as user text) and any system-role texts found among them."""
    runs: list[tuple[str, list[str]]] = []       # (role, texts): joined once, never grown
    system: list[str] = []
    for message in messages:
        if message.role == "system":
            system.append(message.content)
            continue
        role, text = ("user", as_user_text(message)) if message.role == "tool" \
            else (message.role, message.content)
        if runs and runs[-1][0] == role:
            runs[-1][1].append(text)
        else:
            runs.append((role, [text]))
    return [{"role": role, "content": "\n\n".join(texts)} for role, texts in runs], system


class AnthropicProvider(HTTPProvider):
    """Streams from Anthropic's Messages API; honours max_tokens, temperature, top_p, stop."""

    api: ClassVar[str] = "anthropic-messages"
    supported_options: ClassVar[frozenset[str]] = frozenset({"max_tokens", "temperature", "top_p", "stop"})
    accepts: ClassVar[frozenset[str]] = frozenset()
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
        if options.stop:
            body["stop_sequences"] = list(options.stop)
        return body

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        """Yield ``TextDelta`` per text delta, then ``Usage(input, output)``, then ``Finish``.

        Raises ``UpstreamRejected`` for a non-2xx answer or an ``error`` event
        of a known type (with that type's documented status, e.g. 529 for
        ``overloaded_error``), ``UpstreamTimeout``, or ``UpstreamError``
        (garbage, an unknown error, a stream that ends before ``message_stop``).
        """
        response = await self.open_stream(self.payload(call), call)
        state = _MessageState()
        try:
            async with aclosing(self.events(response)) as events:
                async for event in events:
                    data = self.json_data(event)
                    text = self._apply(data.get("type", event.type), data, state)
                    if text:
                        yield TextDelta(text)
                    if state.stopped:
                        break
                else:
                    raise UpstreamError(self.name, "event stream ended before message_stop")
        finally:
            await self.release(response, ended=state.stopped)
        if state.input_tokens is not None or state.output_tokens is not None:
            yield Usage(state.input_tokens or 0, state.output_tokens or 0)
        reason = state.stop_reason or "end_turn"
        yield Finish(FINISH_REASONS.get(reason, reason))

    def _apply(self, kind: object, data: dict[str, Any], state: _MessageState) -> str:
        """Fold one event into ``state``; the text it adds to the reply."""
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                return _string(delta.get("text"))
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                return _string(block.get("text"))       # "" in every documented example
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
        # ping, content_block_stop and anything new: "we may add new event
        # types, and your code should handle unknown event types gracefully."
        return ""

    def _stream_error(self, error: object) -> UpstreamError:
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        detail = self.detail(message if isinstance(message, str) else "error event")
        status = ERROR_STATUS.get(kind) if isinstance(kind, str) else None
        if status is None:
            return UpstreamError(self.name, detail)
        return UpstreamRejected(self.name, status, detail)


class _MessageState:
    """What the events of one message said so far."""

    __slots__ = ("input_tokens", "output_tokens", "stop_reason", "stopped")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.stop_reason: str | None = None
        self.stopped = False

    def add_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        if _is_count(usage.get("input_tokens")):
            self.input_tokens = usage["input_tokens"]
        if _is_count(usage.get("output_tokens")):
            self.output_tokens = usage["output_tokens"]


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
