"""The OpenAI Chat Completions provider (api "openai-completions"), streaming.

POSTs ``{baseUrl}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``, reads the ``text/event-stream`` of
``chat.completion.chunk`` objects until ``data: [DONE]``, and yields each
``choices[0].delta.content`` as a ``TextDelta``, then the final usage chunk's
counts as they are, then the ``finish_reason``. Works with any server that
speaks this API (vLLM, llama.cpp, Ollama, OpenRouter, ...). A stream that ends
before ``[DONE]`` is a failure, even when text already arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar, Final

from ..errors import UpstreamError
from ..agents.types import OPTION_NAMES, Finish, ProviderCall, ProviderEvent, TextDelta, Usage
from . import HTTPProvider, as_user_text

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
# "data: [DONE]" ends the stream (OpenAI API reference, "Streaming").
DONE: Final = "[DONE]"


class OpenAIProvider(HTTPProvider):
    """Streams from an OpenAI-compatible ``/chat/completions`` endpoint; honours every option."""

    api: ClassVar[str] = "openai-completions"
    supported_options: ClassVar[frozenset[str]] = frozenset(OPTION_NAMES)
    accepts: ClassVar[frozenset[str]] = frozenset()
    default_base_url: ClassVar[str] = DEFAULT_BASE_URL
    path: ClassVar[str] = "chat/completions"

    def auth_headers(self) -> list[tuple[str, str]]:
        """Bearer credentials when an API key is configured, and the media types."""
        headers = [("content-type", "application/json"), ("accept", "text/event-stream")]
        if self.config.api_key:
            headers.append(("authorization", f"Bearer {self.config.api_key}"))
        return headers

    def payload(self, call: ProviderCall) -> dict[str, Any]:
        """The request body for ``call``: only the options that are set are sent."""
        messages = [{"role": "system", "content": call.system}] if call.system else []
        for message in call.messages:
            if message.role == "tool":
                messages.append({"role": "user", "content": as_user_text(message)})
            else:
                messages.append({"role": message.role, "content": message.content})
        body: dict[str, Any] = {
            "model": call.model,
            "messages": messages,
            "stream": True,
            # "If set, an additional chunk will be streamed before the data: [DONE]
            # message. The usage field on this chunk shows the token usage
            # statistics for the entire request, and the choices field will
            # always be an empty array."
            "stream_options": {"include_usage": True},
        }
        options = call.options
        if options.max_tokens is not None:
            body["max_tokens"] = options.max_tokens
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.top_p is not None:
            body["top_p"] = options.top_p
        if options.stop:
            body["stop"] = list(options.stop)
        if options.seed is not None:
            body["seed"] = options.seed
        return body

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        """Yield ``TextDelta`` per content delta, then ``Usage`` if sent, then ``Finish``.

        ``finish_reason`` passes through ("stop", "length", "content_filter",
        "tool_calls", ...); "stop" if the upstream never gave one. Raises
        ``UpstreamRejected`` (non-2xx), ``UpstreamTimeout`` or ``UpstreamError``
        (connection failures, garbage, an error object, EOF before ``[DONE]``).
        """
        response = await self.open_stream(self.payload(call), call)
        usage: Usage | None = None
        reason: str | None = None
        ended = False
        try:
            async with aclosing(self.events(response)) as events:
                async for event in events:
                    if event.data == DONE:
                        ended = True
                        break
                    chunk = self.json_data(event)
                    text, reason = self._read_choice(chunk, reason)
                    if text:
                        yield TextDelta(text)
                    usage = self._read_usage(chunk) or usage
                else:
                    raise UpstreamError(self.name, "event stream ended before [DONE]")
        finally:
            await self.release(response, ended=ended)
        if usage is not None:
            yield usage
        yield Finish(reason or "stop")

    def _read_choice(self, chunk: dict[str, Any], reason: str | None) -> tuple[str, str | None]:
        """The content text of choice 0 and the finish reason so far."""
        if "error" in chunk:
            # Upstreams report failures after the 200 head as a chunk {"error": {...}}.
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(self.name, self.detail(str(message or "error in event stream")))
        choices = chunk.get("choices")
        if not choices:
            return "", reason          # the usage chunk: "choices" is [] (or null on some servers)
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise UpstreamError(self.name, "malformed chunk: choices is not a list of objects")
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                break
        else:
            return "", reason
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is not None and not isinstance(text, str):
            raise UpstreamError(self.name, "malformed chunk: delta.content is not a string")
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            reason = finish
        return text or "", reason

    def _read_usage(self, chunk: dict[str, Any]) -> Usage | None:
        # "All other chunks will also include a usage field, but with a null value."
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (_is_count(prompt) and _is_count(completion)):
            raise UpstreamError(self.name, "malformed chunk: usage counts are not integers")
        return Usage(prompt, completion)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

