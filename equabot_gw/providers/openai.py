"""The OpenAI Chat Completions provider (api "openai-completions"), streaming.

POSTs ``{baseUrl}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``, reads the ``text/event-stream`` of
``chat.completion.chunk`` objects until ``data: [DONE]``, and maps each
choice's delta back: ``content`` to ``TextDelta``, ``reasoning_content`` (or
``reasoning``, as vLLM, OpenRouter and Ollama name it) to ``ReasoningDelta``,
``tool_calls`` fragments to ``ToolCallDelta`` (by their ``index``; fragments
without one, as Gemini's compatible endpoint sends parallel calls, by their
``id``), ``logprobs.content`` to
``Logprobs``, ``refusal`` to ``RefusalDelta`` (from a choice's first piece
of refusal on, its ``content`` is refusal too), ``annotations`` (OpenAI's
``url_citation`` entries; malformed or oversized ones dropped) to
``Annotations``; choices past the first come wrapped in ``ChoiceEvent``. Then
the final usage chunk's counts (with ``cached_tokens`` and
``reasoning_tokens`` when given), then the ``finish_reason``. Everything a
request asks for passes through as the API names it: messages with parts
(``image_url`` byte-identical, ``input_audio``), assistant ``tool_calls``,
``tool`` results, ``tools``, ``tool_choice``, ``response_format``, logprobs,
penalties, ``logit_bias``, ``reasoning_effort``, ``n``, and the extra sampling
fields ``top_k``, ``min_p``, ``repetition_penalty`` (vLLM, llama.cpp, Ollama).
Works with any server that speaks this API. A stream that ends before
``[DONE]`` is a failure, even when text already arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar, Final

from ..errors import UpstreamError
from ..agents.types import (
    NO_OPTIONS, OPTION_NAMES, Annotations, AudioPart, ChoiceEvent, Citation, Finish, ImagePart, Logprobs, Message,
    ProviderCall, ProviderEvent, ReasoningDelta, RefusalDelta, TextDelta, TextPart, ToolCallDelta, Usage,
)
from . import LARGE_EVENT_CHARS, HTTPProvider, as_user_text, finish_word

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
# "data: [DONE]" ends the stream (OpenAI API reference, "Streaming").
DONE: Final = "[DONE]"
# Options sent under the API's own name when set (max_tokens, stop, tools,
# tool_choice and logit_bias are shaped by ``payload``: max_tokens goes under
# the field the client sent it in, max_tokens or max_completion_tokens).
_PLAIN_OPTIONS: Final = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
                         "logprobs", "top_logprobs", "response_format", "reasoning_effort", "n",
                         "parallel_tool_calls", "top_k", "min_p", "repetition_penalty")
# A url_citation is untrusted: one whose URL or title is longer is dropped, and
# a chunk's annotations are read up to this many entries (the reply keeps at
# most ``output.MAX_CITATIONS`` in all).
MAX_CITATION_URL_CHARS: Final = 8192
MAX_CITATION_TITLE_CHARS: Final = 1024
MAX_CITATIONS_PER_CHUNK: Final = 256


def message_payload(message: Message) -> dict[str, Any]:
    """One message as the Chat Completions API takes it."""
    role, content = message.role, message.content
    if role == "tool":
        if message.tool_call_id is None:       # a result recorded without its call's id
            return {"role": "user", "content": as_user_text(message)}
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": _content(content)}
    if role == "assistant" and message.tool_calls:
        return {"role": "assistant", "content": _content(content) or None,
                "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                               for c in message.tool_calls]}
    return {"role": role, "content": content if type(content) is str else _content(content)}


def _content(content: str | tuple[Any, ...]) -> str | list[dict[str, Any]]:
    if type(content) is str:
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = type(part)
        if kind is TextPart:
            parts.append({"type": "text", "text": part.text})
        elif kind is ImagePart:
            image = {"url": part.url}
            if part.detail is not None:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
        elif kind is AudioPart:
            parts.append({"type": "input_audio", "input_audio": {"data": part.data, "format": part.format}})
    return parts


class OpenAIProvider(HTTPProvider):
    """Streams from an OpenAI-compatible ``/chat/completions`` endpoint; honours every option."""

    api: ClassVar[str] = "openai-completions"
    supported_options: ClassVar[frozenset[str]] = frozenset(OPTION_NAMES)
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
            content = message.content
            if type(content) is str and message.role != "tool" and not message.tool_calls:
                messages.append({"role": message.role, "content": content})
            else:
                messages.append(message_payload(message))
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
            # Under the client's own name: OpenAI's reasoning models refuse
            # "max_tokens", many other servers know nothing else.
            body[options.max_tokens_field] = options.max_tokens
        if options.stop:
            body["stop"] = list(options.stop)
        if options is NO_OPTIONS:
            return body
        for name in options.requested():
            if name in _PLAIN_OPTIONS:
                body[name] = getattr(options, name)
        if options.logit_bias:
            body["logit_bias"] = dict(options.logit_bias)
        if options.tools:
            body["tools"] = [{"type": "function", "function": _function(spec)} for spec in options.tools]
        choice = options.tool_choice
        if choice is not None:
            body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}} \
                if type(choice) is dict else choice
        return body

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        """Yield each choice's output as it comes, then ``Usage`` if sent, then ``Finish``.

        ``finish_reason`` passes through ("stop", "length", "content_filter",
        "tool_calls", ...); "stop" if the upstream never gave one. Raises
        ``UpstreamRejected`` (non-2xx), ``UpstreamTimeout`` or ``UpstreamError``
        (connection failures, garbage, an error object, the end of the body before
        ``[DONE]`` and before choice 0's ``finish_reason``).
        """
        response = await self.open_stream(self.payload(call), call)
        usage: Usage | None = None
        reasons: dict[int, str] = {}
        orders: dict[int, _CallOrder] = {}      # choice index -> where its tool calls stand
        refusing: set[int] = set()              # choices that began to refuse: their text is refusal
        ended = False
        try:
            async with aclosing(self.events(response)) as events:
                async for event in events:
                    if event.data == DONE:
                        ended = True
                        break
                    chunk = self.json_data(event) if len(event.data) <= LARGE_EVENT_CHARS \
                        else await self.json_data_async(event)
                    text = _plain_text(chunk)
                    if text is not None and not refusing:   # the usual chunk: a piece of choice 0's text
                        if text:
                            yield TextDelta(text)
                    else:
                        for output in self._read_choices(chunk, reasons, len(event.data), orders, refusing):
                            yield output
                    usage = self._read_usage(chunk) or usage
                else:
                    # The body ended without [DONE]. After choice 0's finish_reason the
                    # reply is whole (the official SDKs read such a stream as complete;
                    # at most a usage chunk is missing); before it, it was cut short.
                    if 0 not in reasons:
                        raise UpstreamError(self.name, "event stream ended before [DONE]")
        finally:
            await self.release(response, ended=ended)
        for index, reason in sorted(reasons.items()):
            if index:
                yield ChoiceEvent(index, Finish(reason))
        if usage is not None:
            yield usage
        yield Finish(reasons.get(0) or "stop")

    def _read_choices(self, chunk: dict[str, Any], reasons: dict[int, str], size: int,
                      orders: dict[int, _CallOrder], refusing: set[int]) -> list[ProviderEvent]:
        """The output events of one chunk, in order; finish reasons noted in ``reasons``,
        each choice's tool-call order kept in ``orders``, choices that refuse in ``refusing``."""
        if "error" in chunk:
            # Upstreams report failures after the 200 head as a chunk {"error": {...}}.
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(self.name, self.detail(str(message or "error in event stream")))
        choices = chunk.get("choices")
        if not choices:
            return []          # the usage chunk: "choices" is [] (or null on some servers)
        if not isinstance(choices, list):
            raise UpstreamError(self.name, "malformed chunk: choices is not a list of objects")
        out: list[ProviderEvent] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise UpstreamError(self.name, "malformed chunk: choices is not a list of objects")
            index = choice.get("index", 0)
            if type(index) is not int or index < 0:
                raise UpstreamError(self.name, "malformed chunk: a choice index is not a count")
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise UpstreamError(self.name, "malformed chunk: delta is not an object")
            text = delta.get("content")
            # The usual chunk holds text alone: one check and it is done.
            if len(delta) > 1 or text is None or choice.get("logprobs"):
                events = self._read_delta(delta, choice.get("logprobs"), size, orders, index, refusing)
            elif type(text) is str:
                events = [RefusalDelta(text) if index in refusing else TextDelta(text)] if text else []
            else:
                raise UpstreamError(self.name, "malformed chunk: delta.content is not a string")
            out.extend(events if index == 0 else [ChoiceEvent(index, e) for e in events])  # type: ignore[arg-type]
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                reasons[index] = finish_word(finish)
        return out

    def _read_delta(self, delta: dict[str, Any], logprobs: Any, size: int,
                    orders: dict[int, _CallOrder], choice: int, refusing: set[int]) -> list[Any]:
        events: list[Any] = []
        reasoning = delta.get("reasoning_content")
        if reasoning is None:
            reasoning = delta.get("reasoning")
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise UpstreamError(self.name, "malformed chunk: delta reasoning is not a string")
            if reasoning:
                events.append(ReasoningDelta(reasoning))
        text = delta.get("content")
        if text is not None:
            if not isinstance(text, str):
                raise UpstreamError(self.name, "malformed chunk: delta.content is not a string")
            if text:
                events.append(RefusalDelta(text) if choice in refusing else TextDelta(text))
        refusal = delta.get("refusal")
        if refusal is not None:
            if not isinstance(refusal, str):
                raise UpstreamError(self.name, "malformed chunk: delta.refusal is not a string")
            if refusal:     # OpenAI opens a refusal with "" beside the role: not yet one
                refusing.add(choice)
                events.append(RefusalDelta(refusal))
        annotations = delta.get("annotations")
        if annotations:
            citations = _citations(annotations)
            if citations:
                events.append(Annotations(citations))
        calls = delta.get("tool_calls")
        if calls is not None:
            order = orders.get(choice)
            if order is None:
                order = orders[choice] = _CallOrder()
            events.extend(self._tool_call_deltas(calls, order))
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list) and logprobs["content"]:
            events.append(Logprobs(tuple(logprobs["content"]), size))
        return events

    def _tool_call_deltas(self, calls: Any, order: _CallOrder) -> list[ToolCallDelta]:
        if not isinstance(calls, list):
            raise UpstreamError(self.name, "malformed chunk: delta.tool_calls is not a list")
        out = []
        for call in calls:
            if not isinstance(call, dict):
                raise UpstreamError(self.name, "malformed chunk: a tool call fragment is not well-formed")
            fn = call.get("function")
            fn = fn if isinstance(fn, dict) else {}
            index, call_id, name, arguments = call.get("index"), call.get("id"), fn.get("name"), \
                fn.get("arguments", "")
            if not (index is None or type(index) is int and index >= 0) \
                    or not (call_id is None or isinstance(call_id, str)) \
                    or not (name is None or isinstance(name, str)) or not isinstance(arguments, str | None):
                raise UpstreamError(self.name, "malformed chunk: a tool call fragment is not well-formed")
            call_id = call_id or None
            out.append(ToolCallDelta(order.index_of(index, call_id), call_id, name or None, arguments or ""))
        return out

    def _read_usage(self, chunk: dict[str, Any]) -> Usage | None:
        """The chunk's counts; None when it has none, or leaves either count null or out.

        "All other chunks will also include a usage field, but with a null value."
        Several compatible servers send a usage block whose counts are null (or
        missing): not reported, so the run's usage is counted as for a provider
        that reports none, never failed for it. A count of another type is garbage.
        """
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if prompt is None or completion is None:
            if not (prompt is None or _is_count(prompt)) or not (completion is None or _is_count(completion)):
                raise UpstreamError(self.name, "malformed chunk: usage counts are not integers")
            return None
        if not (_is_count(prompt) and _is_count(completion)):
            raise UpstreamError(self.name, "malformed chunk: usage counts are not integers")
        return Usage(prompt, completion, _detail(usage, "prompt_tokens_details", "cached_tokens"),
                     _detail(usage, "completion_tokens_details", "reasoning_tokens"))


class _CallOrder:
    """Which call each tool-call fragment of one choice belongs to.

    OpenAI numbers the fragments of each call by ``index``: those keep it.
    Gemini's OpenAI-compatible endpoint sends each of several calls whole, with
    its own ``id`` and no ``index``. A fragment without an index starts a new
    call when it carries an id other than the current call's, and continues the
    current call when it carries none (or the same one).
    """

    __slots__ = ("current", "ids", "next")

    def __init__(self) -> None:
        self.current = -1                   # the index of the last fragment's call; -1 before any
        self.ids: dict[int, str] = {}       # call index -> its id, once given
        self.next = 0                       # the index a new call without one gets

    def index_of(self, index: int | None, call_id: str | None) -> int:
        """The call index of a fragment that came with ``index`` (None: without one) and ``call_id``."""
        if index is None:
            new = self.current < 0 or call_id is not None and call_id != self.ids.get(self.current)
            index = self.next if new else self.current
        if call_id is not None and index not in self.ids:
            self.ids[index] = call_id
        self.current = index
        if index >= self.next:
            self.next = index + 1
        return index


def _plain_text(chunk: dict[str, Any]) -> str | None:
    """The text of a chunk that holds nothing but a piece of choice 0's text; else None."""
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or "error" in chunk:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("index", 0) != 0 or choice.get("finish_reason") is not None \
            or choice.get("logprobs"):
        return None
    delta = choice.get("delta")
    if type(delta) is not dict or len(delta) != 1:
        return None
    text = delta.get("content")
    return text if type(text) is str else None


def _citations(annotations: Any) -> tuple[Citation, ...]:
    """The well-formed ``url_citation`` entries of an upstream's ``annotations``, bounded;
    anything else (another type, a missing or mistyped field, an oversized URL or
    title, indices out of order) is dropped rather than failing the run."""
    if type(annotations) is not list:
        return ()
    out = []
    for entry in annotations[:MAX_CITATIONS_PER_CHUNK]:
        body = entry.get("url_citation") if type(entry) is dict and entry.get("type") == "url_citation" else None
        if type(body) is not dict:
            continue
        url, title, start, end = body.get("url"), body.get("title"), body.get("start_index"), body.get("end_index")
        if type(url) is str and 0 < len(url) <= MAX_CITATION_URL_CHARS and type(title) is str \
                and len(title) <= MAX_CITATION_TITLE_CHARS and type(start) is int and type(end) is int \
                and 0 <= start <= end:
            out.append(Citation(url, title, start, end))
    return tuple(out)


def _function(spec: Any) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": spec.name}
    if spec.description is not None:
        fn["description"] = spec.description
    if spec.parameters is not None:
        fn["parameters"] = spec.parameters
    if spec.strict is not None:
        fn["strict"] = spec.strict
    return fn


def _detail(usage: dict[str, Any], group: str, name: str) -> int | None:
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if _is_count(value) else None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
