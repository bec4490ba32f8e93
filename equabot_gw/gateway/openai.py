"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models`` on the agent runtime.

Owns the translation between OpenAI's wire shapes and the runtime: request
validation (every field of OpenAI's reference; neutral values accepted, values
the provider cannot honour refused by name, unknown fields refused as OpenAI
does), agent and session routing (spec: model prefix, ``x-equabot-*`` headers,
``user``), and the response objects, SSE chunks and error bodies. Every
completion is one ``runtime.run`` — the same code path as ``equabot agent``.
It never talks to providers or transcripts itself.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import operator
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from .. import __version__, compact_json, safejson
from ..agents import runtime as agent_runtime
from ..agents import sessions
from ..agents.events import Delta, Ended, Failed, Started, Subscription
from ..agents.runtime import Run, Runtime
from ..agents.types import AgentRequest, AgentResult, GenerationOptions, Message
from ..errors import ApiError, RunError, RunTimedOut, http_status
from ..net import sse
from ..net.routes import HTTPRequest, Response, StreamingResponse, error_body

# Our headers, and the same headers as the original Gateway's clients send them
# (older: x-clawdbot-*, newer: x-openclaw-*); the first family present wins.
HEADER_PREFIXES: Final = ("x-equabot-", "x-openclaw-", "x-clawdbot-")
SYSTEM_FINGERPRINT: Final = f"equabot-gw-{__version__}"
# `model` prefixes that name an agent, ours and the original's clients'.
MODEL_PREFIXES: Final = ("equabot:", "equabot/", "openclaw:", "clawdbot:", "agent:")
# The plain name of the default agent (the README's model), listed first by /v1/models.
DEFAULT_MODEL: Final = "equabot"
# Names of the default agent for /v1/models/{id}: the plain names, and the prefixes with no id.
DEFAULT_MODEL_NAMES: Final = frozenset({DEFAULT_MODEL, "openclaw", "clawdbot", "agent", *MODEL_PREFIXES})
MAX_STOP_SEQUENCES: Final = 4       # OpenAI's documented limit
DEFAULT_MAX_MESSAGES: Final = 10_000   # gateway.http.maxMessages
# The model string is echoed in every chunk of a stream: a long one would
# multiply the output (real model names are a few dozen characters).
MAX_MODEL_CHARS: Final = 256
# Messages and content parts read per step of the event loop (about 2 ms of
# checks), and decoded messages freed per step (a million at once take ~100 ms).
_ITEMS_PER_STEP: Final = 1000
_FREED_PER_STEP: Final = 50_000
JSON_TYPES: Final = ("application/json",)


# -- field checks: each raises ApiError naming the field, or returns the value -------

def _bad(param: str, message: str, code: str = "invalid_type") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def _unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param!r} {why} is not supported by this gateway",
                    code="unsupported_parameter", param=param)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_KIND_CHECKS: Final[dict[str, Callable[[Any], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _is_number,
}


@functools.cache
def _kind_checks(kinds: str) -> tuple[Callable[[Any], bool], ...]:
    return tuple(_KIND_CHECKS[k] for k in kinds.split("|"))


def _expect(name: str, value: Any, kinds: str) -> None:
    if value is None:
        return
    for check in _kind_checks(kinds):
        if check(value):
            return
    raise _bad(name, f"Invalid type for {name!r}: expected {kinds.replace('|', ' or ')}, "
                     f"but got {_type_name(value)}.")


def _number_in(name: str, value: Any, lo: float, hi: float) -> None:
    _expect(name, value, "number")
    if value is not None and not lo <= value <= hi:
        raise _bad(name, f"Invalid {name!r}: {value!r} is not between {lo:g} and {hi:g}.",
                   code="invalid_value")


def _neutral_if(name: str, value: Any, kinds: str, neutral: Callable[[Any], bool],
                why: str) -> None:
    _expect(name, value, kinds)
    if value is not None and not neutral(value):
        raise _unsupported(name, why)


# Every field of OpenAI's CreateChatCompletionRequest, and what we do with it.
# (name, check(value)); fields absent from this table are refused as OpenAI does.
def _fields_table() -> dict[str, Callable[[Any], None]]:
    n = _neutral_if
    return {
        "model": lambda v: _expect("model", v, "string"),
        "messages": lambda v: _expect("messages", v, "array"),
        "stream": lambda v: _expect("stream", v, "boolean"),
        "stream_options": lambda v: _expect("stream_options", v, "object"),
        "user": lambda v: _expect("user", v, "string"),
        "temperature": lambda v: _number_in("temperature", v, 0, 2),
        "top_p": lambda v: _number_in("top_p", v, 0, 1),
        "max_tokens": lambda v: _positive_int("max_tokens", v),
        "max_completion_tokens": lambda v: _positive_int("max_completion_tokens", v),
        "seed": lambda v: _expect("seed", v, "integer"),
        "stop": _check_stop,
        "n": lambda v: n("n", v, "integer", lambda x: x == 1, "other than 1"),
        "tools": lambda v: n("tools", v, "array", lambda x: not x, "(tool calling)"),
        "functions": lambda v: n("functions", v, "array", lambda x: not x, "(function calling)"),
        "tool_choice": lambda v: n("tool_choice", v, "string|object",
                                   lambda x: x in ("none", "auto"), "(forcing a tool call)"),
        "function_call": lambda v: n("function_call", v, "string|object",
                                     lambda x: x in ("none", "auto"), "(forcing a function call)"),
        "parallel_tool_calls": lambda v: _expect("parallel_tool_calls", v, "boolean"),
        "response_format": lambda v: n("response_format", v, "object",
                                       lambda x: x.get("type") == "text", "other than {\"type\": \"text\"}"),
        "logprobs": lambda v: n("logprobs", v, "boolean", lambda x: x is False, "true"),
        "top_logprobs": lambda v: n("top_logprobs", v, "integer", lambda x: x == 0, "above 0"),
        "logit_bias": lambda v: n("logit_bias", v, "object", lambda x: not x, "(token biases)"),
        "frequency_penalty": lambda v: n("frequency_penalty", v, "number", lambda x: x == 0, "other than 0"),
        "presence_penalty": lambda v: n("presence_penalty", v, "number", lambda x: x == 0, "other than 0"),
        "modalities": lambda v: n("modalities", v, "array", lambda x: x == ["text"] or not x,
                                  "other than [\"text\"]"),
        "audio": lambda v: n("audio", v, "object", lambda x: False, "(audio output)"),
        "reasoning_effort": lambda v: n("reasoning_effort", v, "string", lambda x: False, "(reasoning control)"),
        "verbosity": lambda v: n("verbosity", v, "string", lambda x: False, "(verbosity control)"),
        "web_search_options": lambda v: n("web_search_options", v, "object", lambda x: False, "(web search)"),
        "moderation": lambda v: n("moderation", v, "object|string", lambda x: False, "(moderation)"),
        # Metadata and hints that do not change the reply: accepted with their types checked.
        "metadata": lambda v: _expect("metadata", v, "object"),
        "store": lambda v: _expect("store", v, "boolean"),
        "service_tier": lambda v: _expect("service_tier", v, "string"),
        "safety_identifier": lambda v: _expect("safety_identifier", v, "string"),
        "prompt_cache_key": lambda v: _expect("prompt_cache_key", v, "string"),
        "prompt_cache_retention": lambda v: _expect("prompt_cache_retention", v, "string"),
        "prompt_cache_options": lambda v: _expect("prompt_cache_options", v, "object"),
        "prediction": lambda v: _expect("prediction", v, "object"),
    }


def _positive_int(name: str, value: Any) -> None:
    _expect(name, value, "integer")
    if value is not None and value < 1:
        raise _bad(name, f"Invalid {name!r}: integer below minimum value 1.", code="invalid_value")


def _check_stop(value: Any) -> None:
    _expect("stop", value, "string|array")
    if isinstance(value, list):
        if len(value) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in value):
            raise _bad("stop", f"Invalid 'stop': expected a string or an array of at most "
                               f"{MAX_STOP_SEQUENCES} strings.", code="invalid_value")


FIELDS: Final = _fields_table()


# -- messages -------------------------------------------------------------------------

def _text_of(content: Any, where: str, first: int = 0, stop: int | None = None) -> str:
    """Text of a message content: a string, or an array of ``text`` parts (those from
    ``first`` to ``stop`` when given)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _bad(where, f"Invalid type for {where!r}: expected a string or an array of "
                          f"content parts, but got {_type_name(content)}.")
    texts = []
    for i in range(first, len(content) if stop is None else min(stop, len(content))):
        part = content[i]
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}[{i}]", f"Invalid content part {where}[{i}]: expected an object "
                                        f"with a 'type'.")
        if part["type"] != "text":
            raise _unsupported(f"{where}[{i}].type", f"= {part['type'][:100]!r} (only text parts)")
        if not isinstance(part.get("text"), str):
            raise _bad(f"{where}[{i}].text", f"Invalid type for '{where}[{i}].text': expected a string.")
        texts.append(part["text"])
    return "".join(texts)


async def _conversation(messages: list[Any], max_messages: int = DEFAULT_MAX_MESSAGES
                        ) -> tuple[str, tuple[Message, ...], str]:
    """(extra system instructions, earlier context, the newest user message) of a request.

    More than ``max_messages`` messages is 400 ``too_many_messages``; long
    lists are read about ``_ITEMS_PER_STEP`` messages or parts at a time, the
    loop served between.
    """
    if not messages:
        raise _bad("messages", "Invalid 'messages': empty array. Expected an array with "
                               "minimum length 1.", code="invalid_value")
    if len(messages) > max_messages:
        raise _bad("messages", f"Invalid 'messages': {len(messages)} messages, more than this "
                               f"gateway's limit of {max_messages} (gateway.http.maxMessages).",
                   code="too_many_messages")
    system: list[str] = []
    context: list[Message] = []
    start = _read_messages(messages, 0, system, context)
    while start < len(messages):
        await asyncio.sleep(0)
        if _is_long_content(messages[start]):
            await _read_long_message(messages, start, system, context)
            start += 1
        start = _read_messages(messages, start, system, context)
    if not context or context[-1].role != "user":
        if not any(m.role == "user" for m in context):
            raise _bad("messages", "Missing user message in messages: at least one message "
                                   "with role 'user' is required.", code="missing_user_message")
        raise _unsupported("messages", "ending after the newest user message "
                                       "(assistant or tool messages after it)")
    return "\n\n".join(system), tuple(context[:-1]), context[-1].content


def _read_messages(messages: list[Any], start: int, system: list[str], context: list[Message]) -> int:
    """Check messages from ``start`` on and add their texts to ``system``/``context``.

    Stops after about ``_ITEMS_PER_STEP`` messages and content parts, or at a
    message of more parts than that (``_read_long_message`` reads it); returns
    the index of the first message not read.
    """
    work = 0
    for i in range(start, len(messages)):
        if work >= _ITEMS_PER_STEP or _is_long_content(messages[i]):
            return i
        message = messages[i]
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}]", f"Invalid type for 'messages[{i}]': expected an object, "
                                         f"but got {_type_name(message)}.")
        content = message.get("content")
        if type(content) is str:
            work += 1
            _add_message(message, i, content, system, context)
        else:
            work += 1 + (len(content) if type(content) is list else 0)
            _add_message(message, i, _text_of(content, f"messages[{i}].content"), system, context)
    return len(messages)


def _is_long_content(message: Any) -> bool:
    content = message.get("content") if type(message) is dict else None
    return type(content) is list and len(content) > _ITEMS_PER_STEP


async def _read_long_message(messages: list[Any], i: int, system: list[str], context: list[Message]) -> None:
    """A message of many content parts, read ``_ITEMS_PER_STEP`` parts per loop step."""
    content = messages[i]["content"]
    texts = []
    for first in range(0, len(content), _ITEMS_PER_STEP):
        if first:
            await asyncio.sleep(0)
        texts.append(_text_of(content, f"messages[{i}].content", first, first + _ITEMS_PER_STEP))
    _add_message(messages[i], i, "".join(texts), system, context)


def _add_message(message: dict[str, Any], i: int, text: str, system: list[str], context: list[Message]) -> None:
    role = message.get("role")
    if type(role) is not str or role not in _ROLES:
        shown = repr(role[:100]) if type(role) is str else _type_name(role)
        raise _bad(f"messages[{i}].role", f"Invalid value for 'messages[{i}].role': {shown} is not "
                                          f"one of 'system', 'developer', 'user', 'assistant', 'tool'.",
                   code="invalid_value")
    if role == "system" or role == "developer":
        if text:
            system.append(text)
    else:
        context.append(Message("tool" if role == "function" else role, text))


_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


# -- the endpoint -------------------------------------------------------------------------

class ChatCompletions:
    """The OpenAI endpoints of one gateway. ``runtime`` runs; ``authorize`` checks callers."""

    def __init__(self, runtime: Runtime, authorize: Callable[[HTTPRequest], None],
                 started_at: float | None = None, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.runtime = runtime
        self.authorize = authorize
        self.max_messages = max_messages
        self.started_at = int(started_at or time.time())
        node = runtime.config.gateway.node_id      # chatcmpl-<node>-<random><n>
        self._id_prefix = (f"{node}-" if node else "") + os.urandom(6).hex()
        self._ids = 0

    # ---- /v1/models ----
    async def list_models(self, request: HTTPRequest) -> Response:
        """``GET /v1/models``: ``equabot`` (the default agent), then each agent as ``equabot:<id>``."""
        self.authorize(request)
        data = [self._model_object(DEFAULT_MODEL)]
        data.extend(self._model_object(f"equabot:{agent_id}") for agent_id in sorted(self.runtime.agents))
        return _json_response(200, {"object": "list", "data": data})

    async def get_model(self, request: HTTPRequest) -> Response:
        """``GET /v1/models/{id}``: an agent by any of its model names; ``equabot`` (or a
        prefix with no id, such as ``agent:``) is the default agent, under the name asked for."""
        self.authorize(request)
        name = request.params.get("model", "")
        if name in DEFAULT_MODEL_NAMES:
            return _json_response(200, self._model_object(name))
        agent_id = _agent_from_model(name)
        if agent_id is None or agent_id not in self.runtime.agents:
            raise ApiError(404, f"The model {name[:200]!r} does not exist", code="model_not_found",
                           param="model")
        return _json_response(200, self._model_object(f"equabot:{agent_id}"))

    def _model_object(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.started_at, "owned_by": "equabot"}

    # ---- /v1/chat/completions ----
    async def create(self, request: HTTPRequest) -> Response | StreamingResponse:
        """``POST /v1/chat/completions``: one agent run, answered as JSON or as SSE."""
        self.authorize(request)
        body = await _parse_body(request)
        try:
            agent_request, stream, include_usage, model_name = await self._agent_request(request, body)
        finally:
            messages = body.get("messages")
            if type(messages) is list and len(messages) > _FREED_PER_STEP:
                await _release(messages)
        try:
            run = agent_runtime.run(self.runtime, agent_request)
        except ApiError as exc:
            raise _rename_option_param(exc, body) from None
        completion_id = self._completion_id()
        if stream:
            return await self._stream(run, completion_id, model_name, include_usage)
        return await self._complete(run, completion_id, model_name)

    def _completion_id(self) -> str:
        self._ids += 1
        return f"chatcmpl-{self._id_prefix}{self._ids:x}"

    async def _agent_request(self, request: HTTPRequest, body: dict[str, Any]
                             ) -> tuple[AgentRequest, bool, bool, str]:
        for name, value in body.items():
            check = FIELDS.get(name)
            if check is None:
                raise ApiError(400, f"Unrecognized request argument supplied: {name}",
                               code="unknown_parameter", param=name)
            check(value)
        for name in ("model", "messages"):
            if body.get(name) is None:
                raise _bad(name, f"Missing required parameter: {name!r}.", code="missing_required_parameter")
        stream = bool(body.get("stream"))
        stream_options = body.get("stream_options")
        if stream_options is not None and not stream:
            raise _bad("stream_options", "The 'stream_options' parameter is only allowed when "
                                         "'stream' is enabled.", code="invalid_value")
        include_usage = bool(stream_options and stream_options.get("include_usage"))
        system, context, message = await _conversation(body["messages"], self.max_messages)
        model_name: str = body["model"]
        if len(model_name) > MAX_MODEL_CHARS:
            raise _bad("model", f"Invalid 'model': {len(model_name)} characters, more than the "
                                f"limit of {MAX_MODEL_CHARS}.", code="invalid_value")
        headers = request.headers
        agent_id = gateway_header(headers, "agent-id") or _agent_from_model(model_name)
        session_key = gateway_header(headers, "session-key")
        user = body.get("user")
        if session_key is None and user:
            agent = self.runtime.agent(agent_id)
            session_key = sessions.user_key(agent.id, user)
        agent_request = AgentRequest(
            message=message, agent_id=agent_id, session_key=session_key, context=context,
            system=system, model=gateway_header(headers, "model"),
            options=_options(body), origin="openai")
        return agent_request, stream, include_usage, model_name

    async def _complete(self, run: Run, completion_id: str, model_name: str) -> Response:
        try:
            result = await run.wait()
        except asyncio.CancelledError:
            run.abort("client disconnected")
            raise
        except RunError as exc:
            return _run_error_response(exc)
        completion = _completion_object(completion_id, model_name, result)
        if len(result.text) < compact_json.LARGE_CHARS:
            return _json_response(200, completion)
        # A reply of megabytes is escaped in slices of the event loop.
        return Response(200, [("content-type", "application/json")],
                        (await compact_json.dumps_async(completion)).encode())

    async def _stream(self, run: Run, completion_id: str, model_name: str,
                      include_usage: bool) -> Response | StreamingResponse:
        subscription = run.subscribe()
        try:
            # Hold the response head until the run produced something, so a run
            # that fails before its first word gets a real status (429, 502, 504).
            first = await _first_output(subscription)
        except asyncio.CancelledError:
            run.abort("client disconnected")
            raise
        if first and isinstance(first[-1], Failed) and not any(isinstance(e, Delta) for e in first):
            return _run_error_response(first[-1].error)
        chunks = _ChunkWriter(completion_id, model_name, include_usage)
        return StreamingResponse(200, list(sse.HEADERS),
                                 _sse_body(run, subscription, first, chunks),
                                 idle_bytes=sse.KEEPALIVE, idle_interval=sse.KEEPALIVE_INTERVAL)


async def _first_output(subscription: Subscription) -> list[Any]:
    """Events up to and including the first delta or terminal event."""
    events: list[Any] = []
    while True:
        batch = await subscription.next_batch()
        if batch is None:
            return events
        events.extend(batch)
        if any(isinstance(e, (Delta, Ended, Failed)) for e in batch):
            return events


async def _sse_body(run: Run, subscription: Subscription, first: list[Any],
                    chunks: _ChunkWriter) -> AsyncIterator[bytes]:
    # Pieces are yielded one by one, so that the server can wait for a slow
    # client between them (and the events of a batch are turned into bytes
    # only as the client takes them).
    try:
        for piece in chunks.pieces(first, role=True):
            yield piece
        while not chunks.finished:
            batch = await subscription.next_batch()
            if batch is None:
                break
            # The usual batch of a client that keeps up: a few deltas, one piece.
            piece = chunks.piece(batch) if len(batch) <= _SMALL_BATCH_DELTAS else None
            if piece is not None:
                yield piece
                continue
            for piece in chunks.pieces(batch):
                yield piece
        yield sse.DONE
    finally:
        if not run.done:
            run.abort("client disconnected")


# One piece of an SSE body is at most this many bytes; the text of one chunk at
# most _CHUNK_TEXT_CHARS characters (escaped as ASCII, 12 bytes each at worst:
# a chunk stays under 50 KiB with its ~200 bytes of JSON around the text).
PIECE_BYTES: Final = 64 * 1024
_CHUNK_TEXT_CHARS: Final = 4096
_text: Final = operator.attrgetter("text")
# After the stream's first batch, a batch of more deltas than this means the
# client did not keep up: its deltas are joined from the start.
_SMALL_BATCH_DELTAS: Final = 16


class _ChunkWriter:
    """SSE bytes of ``chat.completion.chunk`` objects for one completion, in bounded pieces.

    The JSON around a delta's text never changes within a completion, so it
    is built once and each delta costs one string escape and a concatenation
    (this is what carries the streaming benchmark past 100k events/s).

    ``pieces`` turns a batch of run events into pieces of at most
    ``PIECE_BYTES``. A client that keeps up gets one chunk per delta: each
    batch then holds a few deltas (the first batch of a stream any number,
    up to one piece). Deltas that piled up while the client was not reading
    came faster than they could be sent: they are joined into chunks of up
    to ``_CHUNK_TEXT_CHARS`` characters (a million one-letter words stream
    as ~2 MiB of chunks, not 200 MiB).
    """

    def __init__(self, completion_id: str, model_name: str, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.finished = False
        self._first_batch = True
        self.head = _dumps({"id": completion_id, "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": model_name,
                            "system_fingerprint": SYSTEM_FINGERPRINT})[:-1]
        tail = ',"usage":null}' if include_usage else "}"
        self._delta_prefix = (f'data: {self.head},"choices":[{{"index":0,"delta":{{"content":')
        self._delta_suffix = f'}},"logprobs":null,"finish_reason":null}}]{tail}\n\n'
        # Bytes a delta chunk adds besides its escaped (ASCII) text: exact, the
        # model name may be non-ASCII.
        self._delta_frame_bytes = len((self._delta_prefix + self._delta_suffix).encode())
        self._tail = tail
        self._role_bytes_value = self.role()
        self._role = self._role_bytes_value.decode()
        self._role_bytes = len(self._role_bytes_value)

    def _choice(self, delta: str, finish: str | None) -> bytes:
        finish_json = "null" if finish is None else json.dumps(finish)
        return (f'data: {self.head},"choices":[{{"index":0,"delta":{delta},"logprobs":null,'
                f'"finish_reason":{finish_json}}}]{self._tail}\n\n').encode()

    def role(self) -> bytes:
        return self._choice('{"role":"assistant","content":""}', None)

    def piece(self, events: list[Any], role: bool = False) -> bytes | None:
        """All of ``events`` (after the role chunk if ``role``) as one piece of one chunk
        per delta, if it fits ``PIECE_BYTES``; None if not (``pieces`` then cuts them).

        The usual batch, and the fast path: one list comprehension, no
        accounting per delta (a batch that could not fit is not even built).
        """
        # A batch is [Started] Delta* [Ended | Failed]: the log's order.
        first = 1 if events and type(events[0]) is Started else 0
        end = events[-1] if events and (type(events[-1]) is Ended or type(events[-1]) is Failed) else None
        deltas = events[first:len(events) - 1 if end is not None else len(events)]
        frame = self._delta_frame_bytes
        # Escaping makes at most 12 bytes of a character: a batch surely past a
        # piece (and then possibly huge) is left to ``pieces``.
        if sum(map(len, map(_text, deltas))) * 12 + len(deltas) * frame > 4 * PIECE_BYTES:
            return None
        prefix, suffix, escape = self._delta_prefix, self._delta_suffix, _escape_json_string
        body = "".join([prefix + escape(delta.text) + suffix for delta in deltas])
        tail = b"" if end is None else \
            self._end(end.result) if type(end) is Ended else self._error(end)
        data = (self._role_bytes_value if role else b"") + body.encode() + tail
        if len(data) > PIECE_BYTES:
            return None
        if end is not None:
            self.finished = True
        return data

    def pieces(self, events: list[Any], role: bool = False) -> Iterator[bytes]:
        """The SSE bytes of ``events`` (after the role chunk if ``role``), in pieces of
        at most ``PIECE_BYTES``; sets ``finished`` at the terminal event."""
        # One chunk per delta while the client keeps up, and in the first piece of a stream.
        one_each = self._first_batch or len(events) <= _SMALL_BATCH_DELTAS
        self._first_batch = False
        if one_each:
            data = self.piece(events, role)
            if data is not None:
                yield data
                return
        prefix, suffix, escape = self._delta_prefix, self._delta_suffix, _escape_json_string
        frame = self._delta_frame_bytes
        out: list[str] = [self._role] if role else []
        size = self._role_bytes if role else 0
        joining: list[str] = []          # then: deltas waiting to be joined into one chunk
        joined = 0                       # their characters
        for event in events:
            if type(event) is Delta:
                text = event.text
                if one_each:
                    if len(text) <= _CHUNK_TEXT_CHARS:
                        chunk = escape(text)
                        if size + frame + len(chunk) <= PIECE_BYTES:
                            out.append(prefix + chunk + suffix)
                            size += frame + len(chunk)
                            continue
                    # More than a piece in this batch: its deltas came faster than
                    # they can be sent, so from here on they are joined.
                    one_each = False
                joining.append(text)
                joined += len(text)
                if joined < _CHUNK_TEXT_CHARS:
                    continue
                text = "".join(joining)
                cut = len(text) - len(text) % _CHUNK_TEXT_CHARS
                joining = [text[cut:]] if cut < len(text) else []
                joined = len(text) - cut
                for start in range(0, cut, _CHUNK_TEXT_CHARS):
                    chunk = escape(text[start:start + _CHUNK_TEXT_CHARS])
                    if size + frame + len(chunk) > PIECE_BYTES:
                        yield "".join(out).encode()
                        out, size = [], 0
                    out.append(prefix + chunk + suffix)
                    size += frame + len(chunk)
            elif type(event) is Ended or type(event) is Failed:
                self.finished = True
                tail = self._end(event.result) if type(event) is Ended else self._error(event)
                break
        else:
            tail = b""
        if joining:
            chunk = escape("".join(joining))
            if size + frame + len(chunk) > PIECE_BYTES:
                yield "".join(out).encode()
                out, size = [], 0
            out.append(prefix + chunk + suffix)
            size += frame + len(chunk)
        if size + len(tail) > PIECE_BYTES:
            yield "".join(out).encode()
            out = []
        if out or tail:
            yield "".join(out).encode() + tail

    def _end(self, result: AgentResult) -> bytes:
        data = self._choice("{}", result.finish_reason)
        if self.include_usage:
            data += (f'data: {self.head},"choices":[],"usage":{_dumps(result.usage.as_dict())}}}'
                     f"\n\n").encode()
        return data

    def _error(self, event: Failed) -> bytes:
        # An error after the stream began: a final event with an error object (then [DONE]).
        return sse.data_event(error_body(http_status(event.error), str(event.error),
                                         code=_error_code(event.error)).decode())


# -- helpers ---------------------------------------------------------------------------

def gateway_header(headers: Any, name: str) -> str | None:
    """The gateway header ``name`` (e.g. "agent-id") under any of its prefixes.

    ``x-equabot-<name>`` wins, then ``x-openclaw-<name>``, then
    ``x-clawdbot-<name>``: a request that sends two that disagree gets ours.
    """
    for prefix in HEADER_PREFIXES:
        value = headers.get(prefix + name)
        if value is not None:
            return value
    return None


def _agent_from_model(model: str) -> str | None:
    for prefix in MODEL_PREFIXES:
        if model.startswith(prefix) and len(model) > len(prefix):
            return model[len(prefix):]
    return None


async def _release(items: list[Any]) -> None:
    """Empty a long decoded list a slice at a time, the loop served between slices."""
    while items:
        del items[-_FREED_PER_STEP:]
        await asyncio.sleep(0)


# The body fields that become GenerationOptions; most requests send none of them.
_OPTION_FIELDS: Final = frozenset({"stop", "max_completion_tokens", "max_tokens", "temperature",
                                   "top_p", "seed"})
_NO_OPTIONS: Final = GenerationOptions()


def _options(body: dict[str, Any]) -> GenerationOptions:
    if _OPTION_FIELDS.isdisjoint(body):
        return _NO_OPTIONS
    stop = body.get("stop")
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    return GenerationOptions(
        max_tokens=max_tokens, temperature=body.get("temperature"), top_p=body.get("top_p"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()), seed=body.get("seed"))


def _rename_option_param(exc: ApiError, body: dict[str, Any]) -> ApiError:
    """Name the field the client sent when the runtime refuses an option."""
    if exc.code == "unsupported_parameter" and exc.param == "max_tokens" \
            and body.get("max_completion_tokens") is not None:
        return ApiError(exc.status, exc.message.replace("'max_tokens'", "'max_completion_tokens'"),
                        type=exc.type, code=exc.code, param="max_completion_tokens")
    return exc


async def _parse_body(request: HTTPRequest) -> dict[str, Any]:
    """The JSON object of a request body: 415 for another media type, 400 ``invalid_json``
    for anything but a JSON object (too deep, NaN, lone surrogates included)."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media = content_type.partition(";")[0].strip().lower()
        if media not in JSON_TYPES and not media.endswith("+json"):
            raise ApiError(415, f"Unsupported content type {media!r}: send application/json.",
                           code="unsupported_media_type")
    data = request.body
    try:
        # Decoded in slices of the event loop: a 20 MiB body of a million small
        # values must not stall every other client. A body this short cannot
        # hold more values than safejson decodes at once anyway.
        body = safejson.loads(data) if len(data) <= safejson.MAX_VALUES_AT_ONCE \
            else await safejson.loads_async(data)
    except ValueError as exc:
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This "
                            "likely means you aren't using your HTTP library correctly. The "
                            f"OpenAI API expects a JSON payload.) Detail: {exc}",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"Invalid request body: expected a JSON object, got {_type_name(body)}.",
                       code="invalid_json")
    return body


# A str as a JSON string literal: the C function json.dumps ends up calling,
# called directly (json.dumps(str) adds two Python frames per delta).
_escape_json_string: Final = json.encoder.encode_basestring_ascii


_dumps: Final = compact_json.dumps


def _json_response(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, [("content-type", "application/json")] + (headers or []),
                    _dumps(data).encode())


def _error_code(exc: RunError) -> str:
    """The OpenAI error ``code`` of a failed run: its reason, with a timeout told apart."""
    return "run_timeout" if isinstance(exc, RunTimedOut) else exc.reason


def _run_error_response(exc: RunError) -> Response:
    status = http_status(exc)
    headers: list[tuple[str, str]] = []
    retry_after = getattr(exc, "retry_after", None)
    if status == 429 and retry_after:
        headers.append(("retry-after", str(retry_after)))
    return Response(status, [("content-type", "application/json")] + headers,
                    error_body(status, str(exc), code=_error_code(exc)))


def _completion_object(completion_id: str, model_name: str, result: AgentResult) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()),
        "model": model_name, "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text,
                                              "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": result.usage.as_dict(),
    }
