"""The HTTP battery: auth, the OpenAI endpoint's shapes, SSE framing, routing, sessions, errors.

Each check is one coroutine taking the ``Probe``, returning ``Passed`` or
raising ``Failed``/``Skipped`` with a one-line reason and its evidence. The
``ref`` of each names the line it tests: ``spec`` is the Gateway's documented
OpenAI Chat Completions page, ``OpenAI`` a field of OpenAI's
published schema, ``RFC`` a section, ``error shape`` / ``limits`` a documented
rule of the Gateway. Expensive exchanges (the plain completion, the two
streams) are made once and shared.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from .. import safejson
from .checks import (
    Check, Exchange, Failed, Passed, Probe, Skipped, echo_turn, is_echo, registry, schemas, show,
)

CHECKS: list[Check] = []
check = registry(CHECKS)

CHAT: Final = "/v1/chat/completions"
# gateway.http.maxBodyBytes defaults to 20 MiB; one MiB more must be refused.
OVERSIZED_BODY_BYTES: Final = 21 * 1024 * 1024
READY: Final = ("endpoint.enabled", "auth.right-token")
DONE: Final = "[DONE]"
EVIDENCE_TAIL: Final = 48          # bytes of a stream's end shown as evidence


# -- server-sent events -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event block of an event stream (WHATWG HTML §9.2.6), as sent."""

    raw: bytes
    lines: tuple[str, ...]

    @property
    def comment_only(self) -> bool:
        return all(line.startswith(":") for line in self.lines)

    @property
    def fields(self) -> list[tuple[str, str]]:
        out = []
        for line in self.lines:
            if line.startswith(":"):
                continue
            name, colon, value = line.partition(":")
            out.append((name, value[1:] if value.startswith(" ") else value) if colon else (line, ""))
        return out

    @property
    def data(self) -> str | None:
        values = [value for name, value in self.fields if name == "data"]
        return "\n".join(values) if values else None


_LINE_BREAK: Final = re.compile(rb"\r\n|\r|\n")


def sse_events(body: bytes) -> tuple[list[SSEEvent], bytes]:
    """The complete events of ``body`` and the bytes after the last one (an unfinished event).

    §9.2.6: lines end with CRLF, LF or CR; a blank line dispatches the event;
    an event not ended by a blank line when the stream ends is discarded.
    """
    events: list[SSEEvent] = []
    pos = 0
    start = 0
    lines: list[str] = []
    for m in _LINE_BREAK.finditer(body):
        line = body[pos:m.start()]
        pos = m.end()
        if line:
            lines.append(line.decode("utf-8", "replace"))
            continue
        if lines:
            events.append(SSEEvent(body[start:pos], tuple(lines)))
        lines = []
        start = pos
    return events, body[start:]


# -- shared exchanges --------------------------------------------------------------------

async def _first(p: Probe) -> Exchange:
    # The plain model, not --agent's: an unknown agent's 404 must not read as "disabled".
    return await p.shared("first", lambda: p.chat({"model": p.target.brand}, message=p.unique("first")))


async def _first_for_agent(p: Probe) -> Exchange:
    """The first request as the battery sends the rest: with --agent's model, if one was given.

    A server that routes by model (a proxy that knows only ``equabot:<agent>``)
    refuses the plain model with a 400 that says nothing about the token.
    """
    if not p.target.agent:
        return await _first(p)
    return await p.shared("first-agent", lambda: p.chat(message=p.unique("first-agent")))


async def _plain(p: Probe) -> Exchange:
    return await p.shared("plain", lambda: p.chat(message=p.unique("plain")))


async def _stream(p: Probe) -> Exchange:
    return await p.shared("stream", lambda: p.chat({"stream": True}, message=p.unique("stream")))


async def _stream_with_usage(p: Probe) -> Exchange:
    return await p.shared("stream-usage", lambda: p.chat(
        {"stream": True, "stream_options": {"include_usage": True}}, message=p.unique("usage")))


def _error_problems(ex: Exchange) -> list[str]:
    """Why ``ex`` is not an OpenAI error response (``{"error": {message, type, param, code}}``)."""
    if ex.media_type != "application/json":
        return [f"Content-Type is {ex.header('content-type')!r}, not application/json"]
    try:
        data = safejson.loads(ex.body)
    except (ValueError, UnicodeDecodeError):
        return ["the body is not JSON"]
    return schemas().errors(data, "ErrorResponse")


def _expect_error(ex: Exchange, statuses: tuple[int, ...], what: str) -> None:
    if ex.status not in statuses:
        wanted = " or ".join(map(str, statuses))
        raise Failed(f"{what} answered {ex.status}, not {wanted}", **ex.summary())
    problems = _error_problems(ex)
    if problems:
        raise Failed(f"the {ex.status} body is not an OpenAI error object: {problems[0]}",
                     **ex.summary())


def _expect_ok(ex: Exchange, what: str) -> None:
    if ex.status != 200:
        raise Failed(f"{what} answered {ex.status}, not 200", **ex.summary())


# -- the endpoint and auth ---------------------------------------------------------------

@check("endpoint.enabled",
       'spec "Enabling the endpoint": POST /v1/chat/completions is served once '
       "gateway.http.endpoints.chatCompletions.enabled is true (off by default)")
async def endpoint_enabled(p: Probe) -> Passed:
    ex = await _first(p)
    if ex.status == 404:
        raise Failed("POST /v1/chat/completions answered 404: the endpoint is disabled or absent",
                     **ex.summary())
    if ex.status in (405, 501):
        raise Failed(f"POST /v1/chat/completions answered {ex.status}: POST is not served there",
                     **ex.summary())
    return Passed(f"POST /v1/chat/completions is served (answered {ex.status})", status=ex.status)


def _expect_unauthorized(ex: Exchange, what: str) -> Passed:
    _expect_error(ex, (401,), what)
    if ex.header("www-authenticate") is None:
        raise Failed("401 without WWW-Authenticate (RFC 9110 §15.5.2: the server MUST send it)",
                     **ex.summary())
    return Passed(f"{what}: 401 with an OpenAI error and WWW-Authenticate", status=401,
                  www_authenticate=ex.header("www-authenticate"))


@check("auth.missing-token",
       'spec "Authentication": "Send a bearer token: Authorization: Bearer <token>"; '
       "RFC 9110 §15.5.2 (401 + WWW-Authenticate)", requires=("endpoint.enabled",))
async def auth_missing_token(p: Probe) -> Passed:
    if not p.target.token:
        raise Skipped("no --token given: the server is probed without credentials")
    ex = await p.chat({"model": p.target.brand}, auth=None)
    return _expect_unauthorized(ex, "a request without Authorization")


@check("auth.wrong-token", 'spec "Authentication": only the gateway token is accepted; '
       "RFC 9110 §15.5.2", requires=("endpoint.enabled",))
async def auth_wrong_token(p: Probe) -> Passed:
    if not p.target.token:
        raise Skipped("no --token given: the server is probed without credentials")
    ex = await p.chat({"model": p.target.brand}, auth=f"Bearer {p.unique('wrong-token')}")
    return _expect_unauthorized(ex, "a request with a wrong token")


@check("auth.right-token", 'spec "Authentication": Authorization: Bearer <gateway.auth.token> '
       "is accepted", requires=("endpoint.enabled",))
async def auth_right_token(p: Probe) -> Passed:
    ex = await _first_for_agent(p)
    if ex.status == 401 and not p.target.token:
        raise Failed("the server wants credentials: pass --token", **ex.summary())
    _expect_ok(ex, "a request with the token" if p.target.token else "a request")
    return Passed("the token is accepted (200)" if p.target.token else "no token needed (200)",
                  status=200)


@check("auth.scheme-case", 'RFC 9110 §11.1: "a case-insensitive token to identify the '
       'authentication scheme" (bearer = Bearer)', requires=READY)
async def auth_scheme_case(p: Probe) -> Passed:
    if not p.target.token:
        raise Skipped("no --token given")
    ex = await p.chat(auth=f"bearer {p.target.token}")
    _expect_ok(ex, "Authorization: bearer <token> (lower-case scheme)")
    return Passed("Authorization: bearer <token> is accepted (200)", status=200)


# -- the non-streaming shape ------------------------------------------------------------

@check("chat.shape", "OpenAI CreateChatCompletionResponse: every field and type "
       '(id, object "chat.completion", created, model, choices[].message, finish_reason, usage)',
       requires=READY)
async def chat_shape(p: Probe) -> Passed:
    ex = await _plain(p)
    _expect_ok(ex, f"a completion for model {p.target.model!r}")
    if ex.media_type != "application/json":
        raise Failed(f"Content-Type is {ex.header('content-type')!r}, not application/json",
                     **ex.summary())
    obj = ex.json()
    problems = schemas().errors(obj, "CreateChatCompletionResponse")
    if problems:
        raise Failed(f"the completion does not match OpenAI's CreateChatCompletionResponse: "
                     f"{problems[0]}", problems=problems[:5], body=show(ex.body))
    if not obj["choices"]:
        raise Failed("the completion has no choices", body=show(ex.body))
    return Passed("a chat.completion that matches OpenAI's schema", id=obj["id"],
                  finish_reason=obj["choices"][0]["finish_reason"])


# -- streaming ----------------------------------------------------------------------------

def _events(ex: Exchange) -> tuple[list[Any], bytes]:
    """The stream's events other than comments, and the bytes after the last complete one."""
    events, rest = sse_events(ex.body)
    return [e for e in events if not e.comment_only], rest


def _chunks(ex: Exchange) -> list[tuple[Any, dict[str, Any]]]:
    """(event, decoded chunk) for each JSON event before ``[DONE]``."""
    out = []
    for event in _events(ex)[0]:
        if event.data == DONE:
            break
        try:
            obj = safejson.loads(event.data or "")
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append((event, obj))
    return out


async def _ok_stream(p: Probe, usage: bool = False) -> Exchange:
    ex = await (_stream_with_usage(p) if usage else _stream(p))
    _expect_ok(ex, "a streaming request")
    return ex


@check("stream.content-type", 'spec "Streaming (SSE)": "Content-Type: text/event-stream"',
       requires=READY)
async def stream_content_type(p: Probe) -> Passed:
    ex = await _ok_stream(p)
    if ex.media_type != "text/event-stream":
        raise Failed(f"Content-Type is {ex.header('content-type')!r}, not text/event-stream",
                     **ex.summary())
    return Passed("Content-Type: text/event-stream", content_type=ex.header("content-type"),
                  transfer_encoding=ex.header("transfer-encoding"))


@check("stream.data-lines", 'spec "Streaming (SSE)": "Each event line is data: <json>" '
       "(WHATWG HTML §9.2.6 event blocks)", requires=READY)
async def stream_data_lines(p: Probe) -> Passed:
    ex = await _ok_stream(p)
    events = _events(ex)[0]
    if not events:
        raise Failed("the stream has no events", body=show(ex.body))
    for i, event in enumerate(events):
        # An id: line (a resumable stream's event id, WHATWG §9.2.6) may come with the data.
        other = [name for name, _ in event.fields if name not in ("data", "id")]
        if other:
            raise Failed(f"event {i} has a {other[0]!r} line, not only data: (and id:) lines",
                         event=show(event.raw))
        if event.data == DONE:
            return Passed(f"{i} data: <json> events before data: [DONE]", json_events=i)
        try:
            obj = safejson.loads(event.data or "")
        except ValueError:
            raise Failed(f"event {i}'s data is not JSON", event=show(event.raw)) from None
        if not isinstance(obj, dict):
            raise Failed(f"event {i}'s data is not a JSON object", event=show(event.raw))
    return Passed(f"{len(events)} data: <json> events", json_events=len(events))


@check("stream.chunks", 'OpenAI CreateChatCompletionStreamResponse for every chunk: object '
       '"chat.completion.chunk"; id: "Each chunk has the same ID"; created: "Each chunk has the '
       'same timestamp"', requires=READY)
async def stream_chunks(p: Probe) -> Passed:
    chunks = _chunks(await _ok_stream(p))
    if not chunks:
        raise Failed("the stream has no JSON chunks")
    first = chunks[0][1]
    for i, (event, chunk) in enumerate(chunks):
        if "error" in chunk:
            raise Failed(f"chunk {i} is an error event", event=show(event.raw))
        problems = schemas().errors(chunk, "CreateChatCompletionStreamResponse")
        if problems:
            raise Failed(f"chunk {i} does not match OpenAI's CreateChatCompletionStreamResponse: "
                         f"{problems[0]}", event=show(event.raw))
        for name in ("id", "created"):
            if chunk[name] != first[name]:
                raise Failed(f"chunk {i} has another {name} than chunk 0", event=show(event.raw),
                             **{f"chunk-0-{name}": first[name]})
    return Passed(f"{len(chunks)} chunks match OpenAI's schema, one id and timestamp", id=first["id"])


@check("stream.role-first", 'OpenAI streaming: the first chunk\'s delta carries role "assistant" '
       "(ChatCompletionStreamResponseDelta.role)", requires=READY)
async def stream_role_first(p: Probe) -> Passed:
    chunks = [(e, c) for e, c in _chunks(await _ok_stream(p)) if c.get("choices")]
    if not chunks:
        raise Failed("the stream has no chunk with choices")
    event, chunk = chunks[0]
    try:
        delta = chunk["choices"][0]["delta"]
        role = delta.get("role")
    except (KeyError, IndexError, TypeError, AttributeError):
        delta = role = None
    if role != "assistant":
        raise Failed(f"the first chunk's delta has role {role!r}, not 'assistant'", delta=delta,
                     event=show(event.raw))
    return Passed("the first chunk's delta has role 'assistant'", event=show(event.raw))


def _finish_reason(chunk: dict[str, Any]) -> Any:
    try:
        return chunk["choices"][0].get("finish_reason")
    except (IndexError, TypeError, AttributeError):
        return None


@check("stream.finish-reason", "OpenAI choices[].finish_reason: null while streaming, set on the "
       "choice's last chunk", requires=READY)
async def stream_finish_reason(p: Probe) -> Passed:
    chunks = [(e, c) for e, c in _chunks(await _ok_stream(p)) if c.get("choices")]
    finished = [i for i, (_, c) in enumerate(chunks) if _finish_reason(c) is not None]
    if not finished:
        last = chunks[-1][0].raw if chunks else b""
        raise Failed("no chunk has a finish_reason", last_chunk=show(last))
    if len(finished) > 1:
        raise Failed(f"{len(finished)} chunks have a finish_reason, not one",
                     chunks=[show(chunks[i][0].raw) for i in finished[:3]])
    if finished[0] != len(chunks) - 1:
        raise Failed(f"finish_reason is set on chunk {finished[0]}, but chunk(s) with choices follow",
                     next_chunk=show(chunks[finished[0] + 1][0].raw))
    return Passed(f"the last chunk has finish_reason {_finish_reason(chunks[-1][1])!r}",
                  event=show(chunks[-1][0].raw))


@check("stream.done-last", 'spec "Streaming (SSE)": "Stream ends with data: [DONE]"', requires=READY)
async def stream_done_last(p: Probe) -> Passed:
    ex = await _ok_stream(p)
    events, rest = _events(ex)
    dones = [i for i, e in enumerate(events) if e.data == DONE]
    if not dones:
        if rest.strip().startswith(b"data: [DONE]") or rest.strip().startswith(b"data:[DONE]"):
            raise Failed("data: [DONE] is not followed by a blank line, so clients drop it "
                         "(WHATWG HTML §9.2.6)", tail=show(ex.body[-EVIDENCE_TAIL:]))
        raise Failed("the stream does not end with data: [DONE]", tail=show(ex.body[-EVIDENCE_TAIL:]))
    if len(dones) > 1:
        raise Failed(f"data: [DONE] appears {len(dones)} times", tail=show(ex.body[-EVIDENCE_TAIL:]))
    if dones[0] != len(events) - 1:
        raise Failed("events follow data: [DONE]", next_event=show(events[dones[0] + 1].raw))
    return Passed("exactly one data: [DONE], the last event", tail=show(ex.body[-EVIDENCE_TAIL:]))


@check("stream.after-done", 'spec "Streaming (SSE)": the stream ends with data: [DONE] — no bytes '
       "after it, in the body or on the connection (RFC 9112 §7.1 chunked framing)", requires=READY)
async def stream_after_done(p: Probe) -> Passed:
    ex = await _ok_stream(p)
    events, _ = sse_events(ex.body)
    done = next((e for e in events if e.data == DONE), None)
    if done is None:
        raise Skipped("the stream has no data: [DONE] (see stream.done-last)")
    end = ex.body.find(done.raw) + len(done.raw)
    if ex.body[end:]:
        raise Failed(f"{len(ex.body) - end} bytes follow data: [DONE] in the body",
                     after=show(ex.body[end:]))
    if ex.after:
        raise Failed(f"{len(ex.after)} bytes follow the end of the response on the connection",
                     after=show(ex.after))
    framing = "the last chunk" if ex.chunked else "the close"
    return Passed(f"nothing after data: [DONE]; the body ends with {framing}",
                  tail=show(ex.body[-EVIDENCE_TAIL:]))


@check("stream.include-usage", 'OpenAI stream_options.include_usage: "an additional chunk ... before '
       'the data: [DONE] message", choices [], usage set; "All other chunks will also include a usage '
       'field, but with a null value"; without it, no usage field', requires=READY)
async def stream_include_usage(p: Probe) -> Passed:
    plain = [(e, c) for e, c in _chunks(await _ok_stream(p)) if "usage" in c]
    if plain:
        raise Failed("without stream_options.include_usage a chunk has a usage field",
                     event=show(plain[0][0].raw))
    chunks = _chunks(await _ok_stream(p, usage=True))
    if not chunks:
        raise Failed("the stream with include_usage has no JSON chunks")
    last_event, last = chunks[-1]
    if last.get("choices") != [] or not isinstance(last.get("usage"), dict):
        raise Failed("no usage chunk (choices [], usage set) right before data: [DONE]",
                     last_chunk=show(last_event.raw))
    problems = schemas().errors(last["usage"], "CompletionUsage")
    if problems:
        raise Failed(f"usage does not match OpenAI's CompletionUsage: {problems[0]}",
                     last_chunk=show(last_event.raw))
    usage = last["usage"]
    if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
        raise Failed("usage.total_tokens is not prompt_tokens + completion_tokens", usage=usage)
    for i, (event, chunk) in enumerate(chunks[:-1]):
        if "usage" not in chunk or chunk["usage"] is not None:
            raise Failed(f"chunk {i} has no \"usage\": null (OpenAI: the other chunks carry a null usage)",
                         event=show(event.raw))
    return Passed("a final usage chunk before data: [DONE]; usage null elsewhere", usage=usage)


# -- choosing an agent -------------------------------------------------------------------

async def _unknown_agent_refused(p: Probe, fields: dict[str, Any], headers: list[tuple[str, str]],
                                 what: str) -> dict[str, Any]:
    ex = await p.chat(fields, headers=headers)
    if ex.status == 200:
        raise Failed(f"{what} naming an unknown agent answered 200: the agent id is not read",
                     **ex.summary())
    if not 400 <= ex.status < 500:
        raise Failed(f"{what} naming an unknown agent answered {ex.status}, not a 4xx error",
                     **ex.summary())
    _expect_error(ex, (ex.status,), what)
    return {"unknown-agent-status": ex.status}


@check("agent.model-prefix", 'spec "Choosing an agent": model "equabot:<agentId>" and the alias '
       '"agent:<agentId>" pick the agent (an unknown id cannot answer 200)', requires=READY)
async def agent_model_prefix(p: Probe) -> Passed:
    agent = p.target.agent or "main"
    models = (f"{p.target.brand}:{agent}", f"agent:{agent}")
    for model in models:
        _expect_ok(await p.chat({"model": model}), f"model {model!r}")
    unknown = f"{p.target.brand}:{p.unique('no-such-agent')}"
    evidence = await _unknown_agent_refused(p, {"model": unknown}, [], "a model")
    return Passed(f"{' and '.join(models)} answer 200; an unknown agent id is refused",
                  unknown_model=unknown, **evidence)


@check("agent.header", 'spec "Choosing an agent": "x-equabot-agent-id: <agentId> (default: main)"',
       requires=READY)
async def agent_header(p: Probe) -> Passed:
    t = p.target
    agent = t.agent or "main"
    name = t.header("agent-id")
    _expect_ok(await p.chat({"model": t.brand}, headers=[(name, agent)]), f"{name}: {agent}")
    unknown = p.unique("no-such-agent")
    evidence = await _unknown_agent_refused(p, {"model": t.brand}, [(name, unknown)], name)
    return Passed(f"{name}: {agent} answers 200; an unknown agent id is refused",
                  unknown_agent=unknown, **evidence)


# -- sessions ------------------------------------------------------------------------------

_RECALL_FIRST: Final = "Remember this code word: {word}. Reply with just OK."
_RECALL_SECOND: Final = "What is the code word I asked you to remember? Reply with just the word."


async def _turns(p: Probe, message: str, *keyed: tuple[dict[str, Any], list[tuple[str, str]]]) -> list[int]:
    """Echo turn numbers of one message sent with each (fields, headers) in order."""
    turns = []
    for fields, headers in keyed:
        reply = await p.reply(message, fields, headers)
        turn = echo_turn(reply, message)
        if turn is None:
            raise Failed("the agent stopped answering like echo", reply=show(reply))
        turns.append(turn)
    return turns


async def _recalls(p: Probe, word: str, fields: dict[str, Any], headers: list[tuple[str, str]]) -> str:
    await p.reply(_RECALL_FIRST.format(word=word), fields, headers)
    return await p.reply(_RECALL_SECOND, fields, headers)


def _code_word(p: Probe, what: str) -> str:
    return f"ORCHID-{int(p.run_id, 16) % 9000 + 1000}{what}"


@check("session.stateless", 'spec "Session behavior": "By default the endpoint is stateless per '
       'request (a new session key is generated each call)"', requires=READY)
async def session_stateless(p: Probe) -> Passed:
    if await is_echo(p):
        message = p.unique("stateless")
        turns = await _turns(p, message, ({}, []), ({}, []))
        if turns[0] != turns[1]:
            raise Failed(f"two requests without user or session key answered turns {turns[0]} and "
                         f"{turns[1]}: the second saw the first", turns=turns)
        return Passed(f"two plain requests both answered turn {turns[0]} (echo counter)", turns=turns)
    word = _code_word(p, "S")
    second = await _recalls(p, word, {}, [])
    if word.lower() in second.lower():
        raise Failed("a plain request recalled a word from an earlier plain request (recall prompt)",
                     reply=show(second))
    return Passed("a plain request did not recall an earlier one (recall prompt, heuristic)",
                  reply=show(second))


async def _keyed_session(p: Probe, what: str, key_a: tuple[dict[str, Any], list[tuple[str, str]]],
                         key_b: tuple[dict[str, Any], list[tuple[str, str]]]) -> Passed:
    if await is_echo(p):
        message = p.unique(what)
        first, second, other = await _turns(p, message, key_a, key_a, key_b)
        if second != first + 1:
            raise Failed(f"two requests with the same {what} answered turns {first} and {second}: "
                         "the session did not carry over", turns=[first, second])
        if other != 1:
            raise Failed(f"a request with another {what} answered turn {other}: sessions are shared",
                         turns=[first, second, other])
        return Passed(f"the same {what} continues a session (turns {first}, {second}); "
                      f"another starts fresh (turn {other})", turns=[first, second, other])
    word = _code_word(p, what[0].upper())
    second = await _recalls(p, word, *key_a)
    if word.lower() not in second.lower():
        raise Failed(f"the second request with the same {what} did not recall the first "
                     "(recall prompt, heuristic)", reply=show(second))
    return Passed(f"the same {what} recalled an earlier turn (recall prompt, heuristic)",
                  reply=show(second))


@check("session.user", 'spec "Session behavior": "If the request includes an OpenAI user string, '
       'the Gateway derives a stable session key from it"', requires=READY)
async def session_user(p: Probe) -> Passed:
    return await _keyed_session(p, "user", ({"user": p.unique("user-a")}, []),
                                ({"user": p.unique("user-b")}, []))


@check("session.key-header", 'spec "Choosing an agent": "x-equabot-session-key: <sessionKey> to '
       'fully control session routing"', requires=READY)
async def session_key_header(p: Probe) -> Passed:
    name = p.target.header("session-key")
    return await _keyed_session(p, "session key", ({}, [(name, p.unique("key-a"))]),
                                ({}, [(name, p.unique("key-b"))]))


# -- errors --------------------------------------------------------------------------------

@check("errors.bad-json", "OpenAI errors: a body that is not JSON → 400 "
       "{error: {message, type, param, code}} (OpenAI ErrorResponse)", requires=READY)
async def errors_bad_json(p: Probe) -> Passed:
    ex = await p.http("POST", CHAT, body=b'{"model": "equabot", "messages": [',
                      headers=[("Content-Type", "application/json")])
    _expect_error(ex, (400,), "a body that is not JSON")
    return Passed("400 with an OpenAI error object", status=400, body=show(ex.body))


@check("errors.missing-messages", "OpenAI CreateChatCompletionRequest: messages is required → 400 "
       "with an OpenAI error object", requires=READY)
async def errors_missing_messages(p: Probe) -> Passed:
    ex = await p.http("POST", CHAT, body=json.dumps({"model": p.target.model}).encode(),
                      headers=[("Content-Type", "application/json")])
    _expect_error(ex, (400,), "a request without messages")
    return Passed("400 with an OpenAI error object", status=400, body=show(ex.body))


@check("errors.wrong-method", 'RFC 9110 §15.5.6: 405 "MUST generate an Allow header field"; '
       "error shape: the body is an OpenAI error object", requires=("endpoint.enabled",))
async def errors_wrong_method(p: Probe) -> Passed:
    ex = await p.http("GET", CHAT)
    _expect_error(ex, (405,), "GET /v1/chat/completions")
    allow = ex.header("allow")
    if allow is None:
        raise Failed("405 without an Allow header", **ex.summary())
    if "POST" not in [m.strip().upper() for m in allow.split(",")]:
        raise Failed(f"Allow: {allow} does not list POST", allow=allow)
    return Passed(f"405 with Allow: {allow}", status=405, allow=allow)


@check("errors.unknown-path", "error shape: every error body, 404 included, is "
       "{error: {message, type, param, code}}", requires=("endpoint.enabled",))
async def errors_unknown_path(p: Probe) -> Passed:
    ex = await p.http("GET", "/v1/" + p.unique("no-such-path"))
    _expect_error(ex, (404,), "an unknown path")
    return Passed("404 with an OpenAI error object", status=404, body=show(ex.body))


@check("errors.oversized-body", "RFC 9110 §15.5.14 (413 Content Too Large); limits: "
       "gateway.http.maxBodyBytes is 20 MiB by default — a 21 MiB body is refused", requires=READY)
async def errors_oversized_body(p: Probe) -> Passed:
    ex, sent = await p.send_large("POST", CHAT, OVERSIZED_BODY_BYTES,
                                  [("Content-Type", "application/json")])
    _expect_error(ex, (413,), f"a {OVERSIZED_BODY_BYTES}-byte body")
    when = "before" if sent < OVERSIZED_BODY_BYTES else "after"
    return Passed(f"413 with an OpenAI error object, {when} the whole body was sent",
                  status=413, sent_bytes=sent)
