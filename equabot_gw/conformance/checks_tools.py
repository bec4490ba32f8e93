"""The tool-call battery: OpenAI's shapes of a reply that calls a tool, and of the round that answers it.

Run against the echo model, whose ``/call NAME {json}`` makes a tool call
deterministic: the reply must call that tool with exactly that JSON text.
A server whose agent is not the echo model skips these checks (a real model
cannot be told what to call). Each check raises ``Failed`` with a one-line
reason and its evidence, like the HTTP battery.
"""

from __future__ import annotations

import json
from typing import Any, Final

from .checks import Check, Exchange, Failed, Passed, Probe, Skipped, is_echo, registry, schemas, show
from .checks_http import READY, _chunks, _expect_ok

CHECKS: list[Check] = []
check = registry(CHECKS)

TOOL_NAME: Final = "conformance_probe"
TOOL: Final = {"type": "function", "function": {
    "name": TOOL_NAME, "description": "A tool the conformance kit offers; never run.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}, "n": {"type": "integer"}}}}}
TOOL_RESULT: Final = "42 and counting"


def _arguments(p: Probe) -> str:
    # The exact JSON text the call must carry back (spaces and order included).
    return json.dumps({"word": p.unique("tool"), "n": 7})


def _ask(p: Probe) -> str:
    return f"/call {TOOL_NAME} {_arguments(p)}"


async def _echo_only(p: Probe) -> None:
    if not await is_echo(p):
        raise Skipped("tool calls are checked with the echo model's /call; this agent is not echo")


async def _call(p: Probe, stream: bool) -> Exchange:
    key = "tool-call-stream" if stream else "tool-call"
    fields: dict[str, Any] = {"tools": [TOOL], **({"stream": True} if stream else {})}
    return await p.shared(key, lambda: p.chat(fields, message=_ask(p)))


@check("tools.call", 'OpenAI function calling: a reply that calls a tool has choices[].message.tool_calls '
       '[{id, type: "function", function: {name, arguments}}], content null, finish_reason "tool_calls"',
       requires=READY)
async def tools_call(p: Probe) -> Passed:
    await _echo_only(p)
    ex = await _call(p, stream=False)
    _expect_ok(ex, "a request offering a tool")
    obj = ex.json()
    problems = schemas().errors(obj, "CreateChatCompletionResponse")
    if problems:
        raise Failed(f"the completion does not match OpenAI's CreateChatCompletionResponse: {problems[0]}",
                     problems=problems[:5], body=show(ex.body))
    choice = obj["choices"][0]
    message = choice["message"]
    if choice["finish_reason"] != "tool_calls":
        raise Failed(f"finish_reason is {choice['finish_reason']!r}, not 'tool_calls'", body=show(ex.body))
    if message.get("content") is not None:
        raise Failed(f"message.content is {message.get('content')!r}, not null for a reply of tool calls only",
                     body=show(ex.body))
    calls = message.get("tool_calls") or []
    if len(calls) != 1:
        raise Failed(f"message.tool_calls holds {len(calls)} calls, not 1", body=show(ex.body))
    call = calls[0]
    if not call.get("id") or call.get("type") != "function" or call["function"].get("name") != TOOL_NAME:
        raise Failed("the call lacks an id, type 'function' or the tool's name", call=show(json.dumps(call)))
    if call["function"].get("arguments") != _arguments(p):
        raise Failed("the call's arguments are not the JSON text the model was asked to send",
                     arguments=show(str(call["function"].get("arguments"))), expected=show(_arguments(p)))
    return Passed(f"message.tool_calls[0] calls {TOOL_NAME} with the exact arguments; content null; "
                  "finish_reason tool_calls", id=call["id"])


@check("tools.stream", 'OpenAI streaming function calls: delta.tool_calls[{index, id, type, function: {name, '
       'arguments}}] fragments (id, type and name on a call\'s first fragment), arguments joined in order, '
       'finish_reason "tool_calls"', requires=READY)
async def tools_stream(p: Probe) -> Passed:
    await _echo_only(p)
    ex = await _call(p, stream=True)
    _expect_ok(ex, "a streaming request offering a tool")
    fragments: list[dict[str, Any]] = []
    finish = None
    for i, (event, chunk) in enumerate(_chunks(ex)):
        problems = schemas().errors(chunk, "CreateChatCompletionStreamResponse")
        if problems:
            raise Failed(f"chunk {i} does not match OpenAI's CreateChatCompletionStreamResponse: {problems[0]}",
                         event=show(event.raw))
        for choice in chunk.get("choices") or []:
            fragments.extend(choice["delta"].get("tool_calls") or [])
            finish = choice.get("finish_reason") or finish
    if not fragments:
        raise Failed("no chunk has delta.tool_calls", body=show(ex.body))
    first, rest = fragments[0], fragments[1:]
    if first.get("index") != 0 or not first.get("id") or first.get("type") != "function" \
            or (first.get("function") or {}).get("name") != TOOL_NAME:
        raise Failed("the first fragment lacks index 0, an id, type 'function' or the tool's name",
                     fragment=show(json.dumps(first)))
    for fragment in rest:
        if "id" in fragment or "type" in fragment or "name" in (fragment.get("function") or {}):
            raise Failed("a later fragment repeats the call's id, type or name", fragment=show(json.dumps(fragment)))
    joined = "".join((f.get("function") or {}).get("arguments") or "" for f in fragments)
    if joined != _arguments(p):
        raise Failed("the fragments' arguments do not join to the JSON text the model was asked to send",
                     joined=show(joined), expected=show(_arguments(p)))
    if finish != "tool_calls":
        raise Failed(f"the stream's finish_reason is {finish!r}, not 'tool_calls'")
    return Passed(f"{len(fragments)} fragments join to the call; finish_reason tool_calls", fragments=len(fragments))


@check("tools.result", 'OpenAI function calling: the next request sends the assistant message with '
       'tool_calls and a {role: "tool", tool_call_id, content} message; the model answers from the result',
       requires=READY)
async def tools_result(p: Probe) -> Passed:
    await _echo_only(p)
    call_id = "call_conformance_1"
    messages = [{"role": "user", "content": _ask(p)},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": TOOL_NAME, "arguments": _arguments(p)}}]},
                {"role": "tool", "tool_call_id": call_id, "content": TOOL_RESULT}]
    ex = await p.chat({"tools": [TOOL], "messages": messages})
    _expect_ok(ex, "a request with a tool result")
    message = ex.json()["choices"][0]["message"]
    expected = f"tool {TOOL_NAME} returned: {TOOL_RESULT}"
    content = message.get("content")
    if not isinstance(content, str) or not content.endswith(expected):
        raise Failed(f"the answer does not echo the tool result ({expected!r})", reply=show(str(content)))
    return Passed("the tool result reached the model: its answer echoes it", reply=show(content))
