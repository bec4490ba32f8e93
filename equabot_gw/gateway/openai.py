"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models`` on the agent runtime.

Owns the translation between OpenAI's wire shapes and the runtime: request
validation (every field of OpenAI's reference; neutral values accepted, values
the provider cannot honour refused by name, unknown fields refused as OpenAI
does), agent and session routing (spec: model prefix, ``x-equabot-*`` headers,
``user``; ``x-equabot-history: client``), the response objects and error
bodies. The shapes of content (messages with parts, tools, tool calls,
reasoning, logprobs) are converted in ``chat_content``, the SSE chunks
written by ``chat_stream``. Every completion is one ``runtime.run`` — the
same code path as ``equabot agent``. It never talks to providers or
transcripts itself.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from typing import Any, Final

from .. import compact_json, safejson
from ..agents import runtime as agent_runtime
from ..agents import sessions
from ..agents.events import Failed, Started
from ..agents.runtime import Run, RunRecord, Runtime
from ..agents.types import AgentRequest, AgentResult, Usage
from ..errors import SHUTDOWN_ABORT, ApiError, RunAborted, RunError, http_status
from . import chat_content, chat_stream, resume
from .chat_content import FINISH_REASONS
from .chat_stream import SYSTEM_FINGERPRINT
from ..net import sse
from ..net.routes import HTTPRequest, Response, StreamingResponse, error_body

# Our headers, and the same headers as the original Gateway's clients send them
# (older: x-clawdbot-*, newer: x-openclaw-*); the first family present wins.
HEADER_PREFIXES: Final = ("x-equabot-", "x-openclaw-", "x-clawdbot-")
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
# Decoded messages freed per step of the event loop (a million at once take ~100 ms).
_FREED_PER_STEP: Final = 50_000
JSON_TYPES: Final = ("application/json",)


# -- field checks: each raises ApiError naming the field, or returns the value -------

_bad: Final = chat_content.bad
_unsupported: Final = chat_content.unsupported
_type_name: Final = chat_content.type_name


_KIND_CHECKS: Final[dict[str, Callable[[Any], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": chat_content.is_number,     # finite, and an integer of any size without overflow
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


# The kinds a value's type alone decides ("integer" and "number" need a look at the value).
_KIND_TYPES: Final[dict[str, type]] = {"string": str, "boolean": bool, "object": dict, "array": list}


def _typed(name: str, kinds: str) -> Callable[[Any], None]:
    """The check ``_expect(name, value, kinds)`` for kinds of ``_KIND_TYPES``, in one call
    (one ``isinstance``) for a valid value; an invalid one gets ``_expect``'s error."""
    types = tuple(_KIND_TYPES[kind] for kind in kinds.split("|"))

    def check(value: Any) -> None:
        if value is not None and not isinstance(value, types):
            _expect(name, value, kinds)
    return check


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
        "model": _typed("model", "string"),
        "messages": _typed("messages", "array"),
        "stream": _typed("stream", "boolean"),
        "stream_options": _check_stream_options,
        "user": _typed("user", "string"),
        "temperature": lambda v: _number_in("temperature", v, 0, 2),
        "top_p": lambda v: _number_in("top_p", v, 0, 1),
        "max_tokens": lambda v: _positive_int("max_tokens", v),
        "max_completion_tokens": lambda v: _positive_int("max_completion_tokens", v),
        "seed": lambda v: _int64("seed", v),
        "stop": _check_stop,
        # Tools, structured output, logprobs, penalties, reasoning, n and the
        # extra sampling fields: checked (and converted) in chat_content.
        **chat_content.FIELD_CHECKS,
        "parallel_tool_calls": _typed("parallel_tool_calls", "boolean"),
        "modalities": lambda v: n("modalities", v, "array", lambda x: x == ["text"] or not x,
                                  "other than [\"text\"]"),
        "audio": lambda v: n("audio", v, "object", lambda x: False, "(audio output)"),
        "verbosity": lambda v: n("verbosity", v, "string", lambda x: x == "medium", "other than \"medium\""),
        "web_search_options": lambda v: n("web_search_options", v, "object", lambda x: False, "(web search)"),
        "moderation": lambda v: n("moderation", v, "object|string", lambda x: False, "(moderation)"),
        # Metadata and hints that do not change the reply: accepted with their types checked
        # (metadata as OpenAI bounds it, as the Responses door does).
        "metadata": chat_content.check_metadata,
        "store": _typed("store", "boolean"),
        "service_tier": _typed("service_tier", "string"),
        "safety_identifier": _typed("safety_identifier", "string"),
        "prompt_cache_key": _typed("prompt_cache_key", "string"),
        "prompt_cache_retention": _typed("prompt_cache_retention", "string"),
        "prompt_cache_options": _typed("prompt_cache_options", "object"),
        "prediction": _typed("prediction", "object"),
    }


def _int64(name: str, value: Any) -> None:
    """An integer that fits OpenAI's 64 bits (an upstream refuses a larger one)."""
    _expect(name, value, "integer")
    if value is not None and not -2**63 <= value < 2**63:
        raise _bad(name, f"Invalid {name!r}: integer outside the range of 64-bit integers.",
                   code="invalid_value")


def _positive_int(name: str, value: Any) -> None:
    _expect(name, value, "integer")
    if value is not None and value < 1:
        raise _bad(name, f"Invalid {name!r}: integer below minimum value 1.", code="invalid_value")


# Obfuscation pads events against length side channels; events without it mean the same.
_STREAM_OPTIONS: Final = ("include_usage", "include_obfuscation")


def _check_stream_options(value: Any) -> None:
    _expect("stream_options", value, "object")
    for key, option in (value or {}).items():
        name = f"stream_options.{key[:60]}"
        if key not in _STREAM_OPTIONS:
            raise ApiError(400, f"Unrecognized request argument supplied: {name}",
                           code="unknown_parameter", param=name)
        _expect(name, option, "boolean")


def _check_stop(value: Any) -> None:
    _expect("stop", value, "string|array")
    if isinstance(value, list):
        if len(value) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in value):
            raise _bad("stop", f"Invalid 'stop': expected a string or an array of at most "
                               f"{MAX_STOP_SEQUENCES} strings.", code="invalid_value")


FIELDS: Final = _fields_table()


# -- the endpoint -------------------------------------------------------------------------

class ChatCompletions:
    """The OpenAI endpoints of one gateway. ``runtime`` runs; ``authorize`` checks callers."""

    def __init__(self, runtime: Runtime, authorize: Callable[[HTTPRequest], None],
                 started_at: float | None = None, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.runtime = runtime
        self.authorize = authorize
        self.max_messages = max_messages
        # gateway.http.endpoints.chatCompletions.history: "client" makes every request's
        # messages its context (x-equabot-history chooses per request).
        self.client_history = runtime.config.gateway.http.endpoints.chat_completions.history == "client"
        self.started_at = int(started_at or time.time())
        # Completion ids are the run ids in OpenAI's form: chatcmpl-<node>-<random><n>.
        self.claims = resume.Claims(runtime)

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
        # Normalised as a completion's model is, so every name a completion takes is found here.
        agent = None if agent_id is None else self.runtime.agents.get(agent_id.strip().lower())
        if agent is None:
            raise ApiError(404, f"The model {name[:200]!r} does not exist", code="model_not_found",
                           param="model")
        return _json_response(200, self._model_object(f"equabot:{agent.id}"))

    def _model_object(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.started_at, "owned_by": "equabot"}

    # ---- /v1/chat/completions ----
    async def create(self, request: HTTPRequest) -> Response | StreamingResponse:
        """``POST /v1/chat/completions``: one agent run, answered as JSON or as SSE.

        With an ``Idempotency-Key`` the request runs at most once (see
        ``resume.py``): a repeat joins or replays it, and a stream re-sent with
        ``Last-Event-ID`` goes on after that event.
        """
        self.authorize(request)
        body = await _parse_body(request)
        key = resume.idempotency_key(request.headers)
        # Digested before the messages may be released below.
        digest = await resume.body_digest(body, request.headers, len(request.body)) if key is not None else ""
        try:
            agent_request, stream, include_usage, model_name = await self._agent_request(request, body, key)
        finally:
            messages = body.get("messages")
            if type(messages) is list and len(messages) > _FREED_PER_STEP:
                await _release(messages)
        legacy = bool(agent_request.options.tools) and chat_content.is_legacy(body)
        if key is None and stream and request.headers.get("last-event-id") is not None:
            raise ApiError(400, "Last-Event-ID resumes a stream of a request with an Idempotency-Key: "
                                "send the same request with the same key.",
                           code="invalid_last_event_id", param="Last-Event-ID")
        if key is None and not stream:
            # Only the result is wanted: the run goes on in this task (none of its own).
            try:
                done = await agent_runtime.run_here(self.runtime, agent_request, "client disconnected")
            except ApiError as exc:
                raise _rename_option_param(exc, body) from None
            return await self._complete(done, resume.completion_id(done.id), model_name, legacy, resume.no_claim, [])
        try:
            if key is None:
                run, replayed = agent_runtime.run(self.runtime, agent_request, watched=True), False
            else:
                run, replayed = await agent_runtime.run_once(
                    self.runtime, agent_request, digest,
                    {"model": model_name, "usage": include_usage, "legacy": legacy} if stream else None,
                    watched=stream, resuming=stream and request.headers.get("last-event-id") is not None)
        except ApiError as exc:
            raise _rename_option_param(exc, body) from None
        completion_id = resume.completion_id(run.id)
        claim = self.claims.claim(run, keep=key is not None)
        extra = [(resume.REPLAY_HEADER, "true")] if replayed else []
        if stream:
            try:
                after = resume.last_event_position(request.headers, completion_id)
            except ApiError:
                claim()
                raise
            if after is not None or type(run) is not Run:
                return self.claims.resumed(run, completion_id, model_name, include_usage, legacy,
                                           after, claim, extra)
            return await self._stream(run, completion_id, model_name, include_usage, legacy, claim, extra)
        return await self._complete(run, completion_id, model_name, legacy, claim, extra)

    async def events(self, request: HTTPRequest) -> StreamingResponse:
        """``GET /v1/chat/completions/{id}/events``: a keyed stream's events after
        ``Last-Event-ID`` (or ``?after=<seq>``; from the start without either)."""
        self.authorize(request)
        return await self.claims.events(request)

    async def _agent_request(self, request: HTTPRequest, body: dict[str, Any], key: str | None = None
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
        system, context, new = await chat_content.read_conversation(body["messages"], self.max_messages)
        model_name: str = body["model"]
        if len(model_name) > MAX_MODEL_CHARS:
            raise _bad("model", f"Invalid 'model': {len(model_name)} characters, more than the "
                                f"limit of {MAX_MODEL_CHARS}.", code="invalid_value")
        ours = gateway_headers(request.headers)
        agent_id = ours.get("agent-id") or _agent_from_model(model_name)
        session_key = ours.get("session-key")
        user = body.get("user")
        if session_key is None and user:
            agent = self.runtime.agent(agent_id)
            session_key = sessions.user_key(agent.id, user)
        # The usual new turn, one user message of text, travels as ``message`` (the
        # runtime's cheapest path); anything else (parts, tool results) as ``input``.
        plain = len(new) == 1 and new[0].role == "user" and type(new[0].content) is str
        agent_request = AgentRequest(
            message=new[0].content if plain else "", agent_id=agent_id,  # type: ignore[arg-type]
            session_key=session_key, context=context, system=system, model=ours.get("model"),
            options=chat_content.options_from(body), origin="openai", input=() if plain else new,
            client_history=self._client_history(ours.get("history")), idempotency_key=key)
        return agent_request, stream, include_usage, model_name

    def _client_history(self, value: str | None) -> bool:
        """Whether the client owns the history: x-equabot-history (``value``: client|session), else the config."""
        if value is None:
            return self.client_history
        if value.strip().lower() not in ("client", "session"):
            raise _bad("x-equabot-history", f"Invalid x-equabot-history {value[:40]!r}: expected "
                                             f"'client' or 'session'.", code="invalid_value")
        return value.strip().lower() == "client"

    async def _complete(self, run: Run | RunRecord, completion_id: str, model_name: str, legacy: bool,
                        leave: Callable[[], None], extra: list[tuple[str, str]]) -> Response:
        try:
            result = await run.wait()
        except RunError as exc:
            return _run_error_response(exc, extra)
        finally:
            leave()         # the client left (cancelled) or has its answer
        small = len(result.text) + len(result.reasoning) < compact_json.LARGE_CHARS
        if small and _text_only(result):
            return Response(200, [("content-type", "application/json")] + extra,
                            _text_completion_body(completion_id, model_name, result, run.created_at))
        completion = _completion_object(completion_id, model_name, result, legacy, run.created_at)
        if small and not result.extra_choices:
            return _json_response(200, completion, extra)
        # A reply of megabytes is escaped in slices of the event loop.
        return Response(200, [("content-type", "application/json")] + extra,
                        (await compact_json.dumps_async(completion)).encode())

    async def _stream(self, run: Run, completion_id: str, model_name: str, include_usage: bool,
                      legacy: bool, leave: Callable[[], None], extra: list[tuple[str, str]]
                      ) -> Response | StreamingResponse:
        subscription = run.subscribe()
        try:
            # Hold the response head until the run produced something, so a run
            # that fails before its first output gets a real status (429, 502, 504),
            # for one keep-alive interval at most: then the stream starts, kept alive.
            first = await chat_stream.first_output(subscription, sse.KEEPALIVE_INTERVAL)
        except asyncio.CancelledError:
            leave()
            raise
        if first and type(first[-1]) is Failed and all(type(e) is Started for e in first[:-1]):
            leave()
            return _run_error_response(first[-1].error, extra)
        chunks = chat_stream.ChunkWriter(completion_id, model_name, include_usage, legacy, run.created_at)
        return StreamingResponse(200, list(sse.HEADERS) + extra,
                                 chat_stream.sse_body(run, subscription, first, chunks),
                                 idle_bytes=sse.KEEPALIVE, idle_interval=sse.KEEPALIVE_INTERVAL, on_close=leave)


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


def gateway_headers(headers: Any) -> dict[str, str]:
    """Every gateway header of a request, by name without its prefix, as ``gateway_header``
    would give each (the preferred prefix wins, then the first value); one look at each field."""
    found: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for name, value in headers:
        if name[:2] != "x-":        # most requests carry none: one slice per field
            continue
        for rank, prefix in enumerate(HEADER_PREFIXES):
            if name.startswith(prefix):
                short = name[len(prefix):]
                if ranks.get(short, len(HEADER_PREFIXES)) > rank:
                    found[short], ranks[short] = value, rank
                break
    return found


def _agent_from_model(model: str) -> str | None:
    if ":" not in model and "/" not in model:      # every prefix ends so: a plain name (the usual one)
        return None
    for prefix in MODEL_PREFIXES:
        if model.startswith(prefix) and len(model) > len(prefix):
            return model[len(prefix):]
    return None


async def _release(items: list[Any]) -> None:
    """Empty a long decoded list a slice at a time, the loop served between slices."""
    while items:
        del items[-_FREED_PER_STEP:]
        await asyncio.sleep(0)


# Options the runtime names that a request may have sent under another field.
_SENT_AS: Final = {"max_tokens": "max_completion_tokens", "tools": "functions",
                   "tool_choice": "function_call", "parallel_tool_calls": "functions"}


def _rename_option_param(exc: ApiError, body: dict[str, Any]) -> ApiError:
    """Name the field the client sent when the runtime refuses an option."""
    sent_as = _SENT_AS.get(exc.param or "")
    if exc.code == "unsupported_parameter" and sent_as is not None and body.get(sent_as) is not None \
            and (exc.param == "max_tokens" or not body.get("tools")):
        return ApiError(exc.status, exc.message.replace(f"{exc.param!r}", f"{sent_as!r}"),
                        type=exc.type, code=exc.code, param=sent_as)
    return exc


async def _parse_body(request: HTTPRequest) -> dict[str, Any]:
    """The JSON object of a request body: 415 for another media type or any content
    coding (gzip, br, ...), 400 ``invalid_json`` for anything but a JSON object (too
    deep, NaN, lone surrogates included)."""
    headers = request.headers
    content_type = headers.get("content-type")
    if content_type is not None:
        media = content_type.partition(";")[0].strip().lower()
        if media not in JSON_TYPES and not media.endswith("+json"):
            raise ApiError(415, f"Unsupported content type {media!r}: send application/json.",
                           code="unsupported_media_type")
    if "content-encoding" in headers:
        _check_identity_coding(headers.get_all("content-encoding"))
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


def _check_identity_coding(values: list[str]) -> None:
    # A compressed body read as JSON would be a confusing 400, and one that only
    # claims a coding would be taken as is: refuse both, naming what is taken
    # (RFC 9110 §15.5.16: 415, with Accept-Encoding).
    for coding in ",".join(values).split(","):
        coding = coding.strip().lower()
        if coding and coding != "identity":
            raise ApiError(415, f"Unsupported content encoding {coding[:40]!r}: send the body "
                                f"uncompressed.", code="unsupported_content_encoding",
                           param="content-encoding", headers=(("accept-encoding", "identity"),))


_dumps: Final = compact_json.dumps


def _json_response(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, [("content-type", "application/json")] + (headers or []),
                    _dumps(data).encode())


def _run_error_response(exc: RunError, extra: list[tuple[str, str]] | None = None) -> Response:
    status = http_status(exc)
    headers: list[tuple[str, str]] = list(extra or ())
    retry_after = getattr(exc, "retry_after", None)
    if status == 429 and retry_after:
        headers.append(("retry-after", str(retry_after)))
    elif type(exc) is RunAborted and exc.why == SHUTDOWN_ABORT:    # soon back, or another node
        headers.append(("retry-after", "1"))
    return Response(status, [("content-type", "application/json")] + headers,
                    error_body(status, str(exc), code=chat_stream.error_code(exc),
                               param=chat_stream.error_param(exc)))


def _text_only(result: AgentResult) -> bool:
    """Whether a result is one choice of text alone (no calls, reasoning, log probabilities,
    refusal or citations)."""
    return not (result.tool_calls or result.reasoning or result.logprobs is not None or result.extra_choices
                or result.refusal or result.citations)


# The JSON of a text reply's completion, around its strings: the same bytes
# compact_json gives ``_completion_object`` (a test holds them equal), with
# a third of its cost (the three strings are escaped by C, nothing is walked).
_escape: Final = json.encoder.encode_basestring


def _text_completion_body(completion_id: str, model_name: str, result: AgentResult, created: float) -> bytes:
    finish = result.finish_reason if result.finish_reason in FINISH_REASONS else "stop"
    return (f'{{"id":{_escape(completion_id)},"object":"chat.completion","created":{int(created)},'
            f'"model":{_escape(model_name)},"system_fingerprint":{_FINGERPRINT_JSON},'
            f'"choices":[{{"index":0,"message":{{"role":"assistant","content":{_escape(result.text)},'
            f'"refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"{finish}"}}],'
            f'"usage":{_usage_json(result.usage)}}}').encode()


_FINGERPRINT_JSON: Final = _escape(SYSTEM_FINGERPRINT)


def _usage_json(usage: Usage) -> str:
    """``_dumps(usage.as_dict())``; plain counts (no details) written around their numbers."""
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if type(prompt) is int and type(completion) is int and usage.cached_tokens is None \
            and usage.reasoning_tokens is None:
        return (f'{{"prompt_tokens":{prompt},"completion_tokens":{completion},'
                f'"total_tokens":{prompt + completion}}}')
    return _dumps(usage.as_dict())


def _completion_object(completion_id: str, model_name: str, result: AgentResult,
                       legacy: bool, created: float) -> dict[str, Any]:
    if not _text_only(result):
        choices = chat_content.choice_object(result, legacy)
    else:       # a text reply: built here, in one step
        finish = result.finish_reason
        choices = [{"index": 0, "message": {"role": "assistant", "content": result.text,
                                            "refusal": None, "annotations": []},
                    "logprobs": None, "finish_reason": finish if finish in FINISH_REASONS else "stop"}]
    return {
        "id": completion_id, "object": "chat.completion", "created": int(created),
        "model": model_name, "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices, "usage": result.usage.as_dict(),
    }
