"""The Responses battery: ``POST /v1/responses``, its typed event stream and its stored responses.

The Responses door is optional (a server that answers 404 for it skips
these checks; it does not fail them). Every object and event is validated
against OpenAI's published Responses schemas (``openai-responses-schemas.json``
beside this module). The checks that need a deterministic model (turn
numbers, a tool call) run against the echo model and skip otherwise. Each
check raises ``Failed`` with a one-line reason and its evidence, like the
HTTP battery.
"""

from __future__ import annotations

import json
from typing import Any, Final

from .. import safejson
from .checks import Check, Exchange, Failed, Passed, Probe, Skipped, echo_turn, is_echo, registry, show
from .checks_http import READY, sse_events
from .jsonschema import Validator

CHECKS: list[Check] = []
check = registry(CHECKS)

PATH: Final = "/v1/responses"
ENABLED: Final = (*READY, "responses.enabled")
TOOL_NAME: Final = "conformance_probe"
TOOL: Final = {"type": "function", "name": TOOL_NAME, "description": "A tool the conformance kit offers; never run.",
               "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}
TOOL_RESULT: Final = "42 and counting"

_SCHEMAS: Validator | None = None


def responses_schemas() -> Validator:
    """OpenAI's published Responses schemas (loaded once)."""
    global _SCHEMAS
    if _SCHEMAS is None:
        _SCHEMAS = Validator.openai_responses()
    return _SCHEMAS


async def _post(p: Probe, fields: dict[str, Any], text: str) -> Exchange:
    body = {"model": p.target.model, "input": text, **fields}
    return await p.http("POST", PATH, body=json.dumps(body).encode(), headers=[("Content-Type", "application/json")])


def _object(ex: Exchange, what: str) -> dict[str, Any]:
    """The Response object of a 200 answer, validated; ``Failed`` otherwise."""
    if ex.status != 200:
        raise Failed(f"{what} answered {ex.status}, not 200", **ex.summary())
    obj = ex.json()
    problems = responses_schemas().errors(obj, "Response")
    if problems:
        raise Failed(f"the object does not match OpenAI's Response schema: {problems[0]}",
                     problems=problems[:5], body=show(ex.body))
    return obj


def output_text(obj: dict[str, Any]) -> str:
    """The texts of the output's ``output_text`` parts, joined (the SDKs' ``output_text``)."""
    return "".join(part.get("text", "") for item in obj.get("output") or () if item.get("type") == "message"
                   for part in item.get("content") or () if part.get("type") == "output_text")


async def _first(p: Probe) -> Exchange:
    return await p.shared("responses-first", lambda: _post(p, {}, p.unique("responses")))


async def _stream(p: Probe) -> Exchange:
    return await p.shared("responses-stream", lambda: _post(p, {"stream": True}, p.unique("responses-stream")))


async def _echo_only(p: Probe) -> None:
    if not await is_echo(p):
        raise Skipped("checked with the echo model's turn numbers and /call; this agent is not echo")


@check("responses.enabled", 'OpenAI Responses API: POST /v1/responses answers a Response (served once '
       'gateway.http.endpoints.responses.enabled is true; a server without it skips this battery)', requires=READY)
async def responses_enabled(p: Probe) -> Passed:
    ex = await _first(p)
    if ex.status == 404:
        raise Skipped(f"POST {PATH} answered 404: the server does not serve the Responses API")
    if ex.status != 200:
        raise Failed(f"POST {PATH} answered {ex.status}, not 200", **ex.summary())
    return Passed(f"POST {PATH} answered 200")


@check("responses.shape", 'OpenAI Response object: every field and type (id, object "response", created_at, '
       'status "completed", model as sent, output message items with output_text parts, usage)', requires=ENABLED)
async def responses_shape(p: Probe) -> Passed:
    ex = await _first(p)
    obj = _object(ex, f"POST {PATH}")
    if obj["object"] != "response" or obj.get("status") != "completed":
        raise Failed(f"object {obj['object']!r}, status {obj.get('status')!r}: not a completed response",
                     body=show(ex.body))
    if obj["model"] != p.target.model:
        raise Failed(f"model is {obj['model']!r}, not the string sent ({p.target.model!r})")
    if not output_text(obj):
        raise Failed("the output holds no output_text", body=show(ex.body))
    return Passed("a completed Response that matches OpenAI's schema", id=obj["id"])


@check("responses.stream", 'OpenAI Responses streaming: typed events ("event:" line = data type), '
       "sequence_number from 0, growing with every event, each a ResponseStreamEvent, response.created and "
       "response.in_progress first, output_text deltas joining to output_text.done, response.completed last",
       requires=ENABLED)
async def responses_stream(p: Probe) -> Passed:
    ex = await _stream(p)
    if ex.status != 200:
        raise Failed(f"a streaming request answered {ex.status}, not 200", **ex.summary())
    if ex.media_type != "text/event-stream":
        raise Failed(f"Content-Type is {ex.header('content-type')!r}, not text/event-stream")
    events, _ = sse_events(ex.body)
    kinds: list[str] = []
    deltas: list[str] = []
    done_text = None
    last = -1
    for n, event in enumerate(e for e in events if not e.comment_only):
        names = [value for name, value in event.fields if name == "event"]
        try:
            data = safejson.loads(event.data or "")
        except ValueError:
            raise Failed(f"event {n} is not JSON", event=show(event.raw)) from None
        if not isinstance(data, dict) or names != [data.get("type")]:
            raise Failed(f"event {n}'s event: line does not name its data's type", event=show(event.raw))
        # OpenAI numbers the events 0, 1, 2…; a server may number them by a position that
        # only grows (ours counts the characters of deltas too, so that a resumed stream
        # lines up): what a client may rely on is 0 first and every number above the last.
        number = data.get("sequence_number")
        if type(number) is not int or (number != 0 if n == 0 else number <= last):
            raise Failed(f"event {n} has sequence_number {number!r}, not "
                         + ("0" if n == 0 else f"above the previous one ({last})"), event=show(event.raw))
        last = number
        problems = responses_schemas().errors(data, "ResponseStreamEvent")
        if problems:
            raise Failed(f"event {n} does not match OpenAI's ResponseStreamEvent: {problems[0]}",
                         event=show(event.raw))
        kinds.append(data["type"])
        if data["type"] == "response.output_text.delta":
            deltas.append(data["delta"])
        elif data["type"] == "response.output_text.done":
            done_text = data["text"]
    if kinds[:2] != ["response.created", "response.in_progress"] or not kinds or kinds[-1] != "response.completed":
        raise Failed("the stream does not begin with response.created, response.in_progress and end with "
                     "response.completed", kinds=kinds[:3] + ["..."] + kinds[-2:])
    if not deltas or "".join(deltas) != done_text:
        raise Failed("the output_text deltas do not join to output_text.done's text",
                     joined=show("".join(deltas)), done=show(str(done_text)))
    return Passed(f"{len(kinds)} typed events in order", events=len(kinds))


def _stream_events(body: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """(id, data) of each event of a Responses stream; an event that is not a JSON object is skipped
    (``responses.stream`` reports it)."""
    out = []
    for event in sse_events(body)[0]:
        if event.comment_only:
            continue
        try:
            data = safejson.loads(event.data or "")
        except ValueError:
            continue
        if isinstance(data, dict):
            out.append((dict(event.fields).get("id"), data))
    return out


def _text(events: list[tuple[str | None, dict[str, Any]]]) -> str:
    return "".join(d.get("delta", "") for _, d in events if d.get("type") == "response.output_text.delta")


@check("resume.responses", "resumable Responses streams: every event has an id '<response id>:<sequence_number>'; "
       "GET /v1/responses/{id}?stream=true&starting_after=<n> (OpenAI's resume form) gets exactly the events "
       "after n, the text joining to the whole reply", requires=ENABLED)
async def resume_responses(p: Probe) -> Passed:
    ex = await _stream(p)
    if ex.status != 200:
        raise Failed(f"a streaming request answered {ex.status}, not 200", **ex.summary())
    events = _stream_events(ex.body)
    if not events or not any(event_id for event_id, _ in events):
        raise Skipped("the server does not claim resumable Responses streams (its events have no id: lines)")
    response_id = events[0][1].get("response", {}).get("id")
    for event_id, data in events:
        if event_id != f"{response_id}:{data.get('sequence_number')}":
            raise Failed(f"event id {event_id!r} is not '<response id>:<sequence_number>' of {response_id!r}",
                         event=show(json.dumps(data)))
    cut = len(events) // 2
    after = events[cut - 1][1]["sequence_number"]
    again = await p.http("GET", f"{PATH}/{response_id}?stream=true&starting_after={after}")
    if again.status != 200:
        raise Failed(f"GET ?stream=true&starting_after={after} answered {again.status}, not 200", **again.summary())
    rest = _stream_events(again.body)
    numbers = [d.get("sequence_number") for _, d in rest]
    if any(type(n) is not int or n <= after for n in numbers):
        raise Failed(f"an event at or before starting_after={after} was sent again", numbers=show(repr(numbers[:8])))
    if not rest or rest[-1][1].get("type") != "response.completed":
        raise Failed("the resumed stream does not end with response.completed", events=len(rest))
    if _text(events[:cut]) + _text(rest) != _text(events):
        raise Failed("the text before starting_after and after it is not the whole reply",
                     before=show(_text(events[:cut])), after=show(_text(rest)), whole=show(_text(events)))
    return Passed(f"the rest of the stream after sequence_number {after}", events=len(rest))


@check("responses.previous", "OpenAI previous_response_id: the next response continues the conversation "
       "(with the echo model: turn 1, then turn 2)", requires=ENABLED)
async def responses_previous(p: Probe) -> Passed:
    await _echo_only(p)
    first_text, second_text = p.unique("previous-1"), p.unique("previous-2")
    first = _object(await _post(p, {}, first_text), "a first response")
    second = _object(await _post(p, {"previous_response_id": first["id"]}, second_text),
                     "a response with previous_response_id")
    turns = (echo_turn(output_text(first), first_text), echo_turn(output_text(second), second_text))
    if turns != (1, 2):
        raise Failed(f"the two responses answered turns {turns[0]} and {turns[1]}, not 1 and 2: "
                     "previous_response_id did not carry the conversation on")
    if second.get("previous_response_id") != first["id"]:
        raise Failed("the second response does not repeat its previous_response_id",
                     previous_response_id=second.get("previous_response_id"))
    return Passed("turn 2 followed turn 1 through previous_response_id")


@check("responses.retrieve", "OpenAI GET /v1/responses/{id} returns a stored response (store defaults to "
       "true); DELETE /v1/responses/{id} answers {id, object, deleted: true}, and then GET answers 404",
       requires=ENABLED)
async def responses_retrieve(p: Probe) -> Passed:
    obj = _object(await _post(p, {}, p.unique("retrieve")), "a stored response")
    got = await p.http("GET", f"{PATH}/{obj['id']}")
    stored = _object(got, f"GET {PATH}/{{id}}")
    if stored != obj:
        raise Failed("the retrieved response differs from the one created", body=show(got.body))
    deleted = await p.http("DELETE", f"{PATH}/{obj['id']}")
    if deleted.status != 200 or deleted.json() != {"id": obj["id"], "object": "response", "deleted": True}:
        raise Failed("DELETE did not answer 200 {id, object: \"response\", deleted: true}", **deleted.summary())
    again = await p.http("GET", f"{PATH}/{obj['id']}")
    if again.status != 404:
        raise Failed(f"GET after DELETE answered {again.status}, not 404", **again.summary())
    return Passed("retrieved as created; gone after DELETE")


@check("responses.tools", 'OpenAI function calling in Responses: a function_call output item {call_id, name, '
       'arguments}; a function_call_output item answers it (with the echo model\'s /call)', requires=ENABLED)
async def responses_tools(p: Probe) -> Passed:
    await _echo_only(p)
    arguments = json.dumps({"word": p.unique("tool")})
    first = _object(await _post(p, {"tools": [TOOL], "store": False}, f"/call {TOOL_NAME} {arguments}"),
                    "a request offering a tool")
    calls = [item for item in first["output"] if item.get("type") == "function_call"]
    if len(calls) != 1 or calls[0].get("name") != TOOL_NAME or calls[0].get("arguments") != arguments:
        raise Failed("the output does not hold one function_call of the tool with the exact arguments",
                     output=show(json.dumps(first["output"])))
    call = calls[0]
    items = [{"role": "user", "content": f"/call {TOOL_NAME} {arguments}"},
             {"type": "function_call", "call_id": call["call_id"], "name": TOOL_NAME, "arguments": arguments},
             {"type": "function_call_output", "call_id": call["call_id"], "output": TOOL_RESULT}]
    body = {"model": p.target.model, "input": items, "tools": [TOOL], "store": False}
    second = _object(await p.http("POST", PATH, body=json.dumps(body).encode(),
                                  headers=[("Content-Type", "application/json")]), "a request with a tool result")
    expected = f"tool {TOOL_NAME} returned: {TOOL_RESULT}"
    if not output_text(second).endswith(expected):
        raise Failed(f"the answer does not echo the tool result ({expected!r})", reply=show(output_text(second)))
    return Passed("the call carried the exact arguments; its output reached the model", call_id=call["call_id"])


@check("responses.errors", "OpenAI Responses errors: a field OpenAI does not know is refused with 400 and an "
       "error object naming it as param", requires=ENABLED)
async def responses_errors(p: Probe) -> Passed:
    ex = await _post(p, {"conformance_unknown_field": 1}, "x")
    if ex.status != 400:
        raise Failed(f"an unknown field answered {ex.status}, not 400", **ex.summary())
    error = ex.json().get("error") if isinstance(ex.json(), dict) else None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        raise Failed("the 400 body is not an OpenAI error object", **ex.summary())
    if error["param"] != "conformance_unknown_field":
        raise Failed(f"the error's param is {error['param']!r}, not the unknown field", **ex.summary())
    return Passed("400 naming the unknown field", message=show(str(error["message"])))
