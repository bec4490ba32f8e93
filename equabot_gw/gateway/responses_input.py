"""Responses requests on the wire → the content model: fields, input items, tools, options.

The one place where a ``POST /v1/responses`` body meets ``agents.types``:
every field of OpenAI's ``CreateResponse`` is checked (neutral values
accepted, what no provider here can honour refused by name, unknown fields
refused as OpenAI words it); ``input`` (a string, or items: messages with
``input_text`` / ``input_image`` parts, ``function_call``,
``function_call_output`` and ``reasoning`` items) becomes the system text,
the context and the new turn as ``Message``s; ``tools``, ``tool_choice``,
``text.format``, ``reasoning`` and the sampling fields become
``GenerationOptions``; and ``echo_fields`` gives back what a Response object
repeats of its request. Input items become ``ItemResource`` objects for
``input_items`` in ``item_resources``. Nothing here walks a value deeper than
the request's own structure (JSON Schemas are passed through); counts are
bounded by ``max_items`` and the constants below. ``responses.py`` owns the
endpoint; chat-completions shapes never pass through here.
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Final

from ..agents.types import (
    NO_OPTIONS, GenerationOptions, ImagePart, Message, Part, TextPart, ToolCall, ToolSpec,
)
from ..errors import ApiError
from .chat_content import (
    MAX_NAME_CHARS, MAX_TOOLS, bad, check_metadata, expect_name, expect_object, expect_string, is_number,
    type_name, unsupported,
)

__all__ = ["ResponseRequest", "FIELDS", "read_request", "echo_fields", "item_resources", "MAX_MODEL_CHARS"]

MAX_MODEL_CHARS: Final = 256          # the model string is echoed in every Response object
MAX_CALL_ID_CHARS: Final = 256        # a call id is echoed back in every turn that answers it
MIN_MAX_OUTPUT_TOKENS: Final = 16     # OpenAI's minimum of max_output_tokens
MAX_TOP_LOGPROBS: Final = 20
# Input items and content parts read per step of the event loop (about 2 ms of checks).
ITEMS_PER_STEP: Final = 1000
# reasoning.effort values of OpenAI's ReasoningEffort.
REASONING_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
IMAGE_DETAILS: Final = ("auto", "low", "high")
INCLUDE_VALUES: Final = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url",
    "code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs"})
SERVICE_TIERS: Final = ("auto", "default", "flex", "scale", "priority", "fast", "ultrafast")
_DATA_IMAGE_RE: Final = re.compile(r"data:image/[A-Za-z0-9.+-]{1,40};base64,", re.I)
# Item types of OpenAI's built-in and hosted tools: refused by name (only function tools run here).
_TOOL_ITEM_TYPES: Final = frozenset({
    "file_search_call", "computer_call", "computer_call_output", "web_search_call", "image_generation_call",
    "code_interpreter_call", "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output",
    "apply_patch_call", "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request",
    "mcp_approval_response", "mcp_call", "custom_tool_call", "custom_tool_call_output", "tool_search_call",
    "tool_search_output", "additional_tools", "program", "program_output", "compaction", "compaction_trigger"})
_BUILT_IN_TOOLS: Final = frozenset({
    "file_search", "computer", "computer_use", "computer_use_preview", "web_search", "web_search_2025_08_26",
    "web_search_preview", "web_search_preview_2025_03_11", "mcp", "code_interpreter", "image_generation",
    "local_shell", "shell", "custom", "namespace", "tool_search", "apply_patch", "programmatic_tool_calling"})
_FUNCTION_TOOL_KEYS: Final = frozenset({"type", "name", "description", "parameters", "strict", "defer_loading",
                                        "output_schema", "allowed_callers"})


# -- small checks ------------------------------------------------------------------------

def _expect(name: str, value: Any, kind: str) -> Any:
    """``value`` if it is null or of ``kind`` ("string", "boolean", "object", "array", "integer")."""
    ok = value is None or {"string": str, "boolean": bool, "object": dict, "array": list}.get(kind) is type(value) \
        or (kind == "integer" and type(value) is int)
    if not ok:
        raise bad(name, f"Invalid type for {name!r}: expected {'an' if kind[0] in 'aeio' else 'a'} {kind}, "
                        f"but got {type_name(value)} instead.")
    return value


def _number(name: str, lo: float, hi: float | None = None, integer: bool = False) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value is None:
            return
        if (integer and type(value) is not int) or not is_number(value):
            raise bad(name, f"Invalid type for {name!r}: expected {'an integer' if integer else 'a number'}, "
                            f"but got {type_name(value)} instead.")
        if value < lo or (hi is not None and value > hi):
            limit = f"a value >= {lo:g}" if hi is None else f"a value between {lo:g} and {hi:g}"
            raise bad(name, f"Invalid {name!r}: expected {limit}, but got {value!r} instead.",
                      code="invalid_value")
    return check


def _one_of(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value is not None and value not in options:
        shown = repr(value[:40]) if type(value) is str else type_name(value)
        raise bad(name, f"Invalid value for {name!r}: {shown} is not one of "
                        f"{', '.join(repr(o) for o in options)}.", code="invalid_value")


def _neutral(name: str, value: Any, neutral: tuple[Any, ...], why: str) -> None:
    """Accept ``value`` if it is null or neutral, else refuse it by name as unsupported."""
    if value is not None and value not in neutral:
        raise unsupported(name, why)


def _unknown(name: str) -> ApiError:
    return ApiError(400, f"Unknown parameter: {name!r}.", code="unknown_parameter", param=name)


def _keys(value: dict[str, Any], where: str, known: frozenset[str] | tuple[str, ...]) -> None:
    for key in value:
        if key not in known:
            raise _unknown(f"{where}.{key[:60]}")


# The chat door's checkers, in the Responses API's wording.
_string: Final = functools.partial(expect_string, tail=" instead")
_object: Final = functools.partial(expect_object, tail=" instead")
_name: Final = functools.partial(expect_name, tail=" instead",
                                 pattern=f"'^[a-zA-Z0-9_-]+$' (at most {MAX_NAME_CHARS} characters)")


# -- the fields of CreateResponse ---------------------------------------------------------

def _check_text(value: Any) -> None:
    if _expect("text", value, "object") is None:
        return
    _keys(value, "text", ("format", "verbosity"))
    _neutral("text.verbosity", _expect("text.verbosity", value.get("verbosity"), "string"), ("medium",),
             "other than 'medium' (verbosity control)")
    fmt = value.get("format")
    if fmt is None:
        return
    kind = _object(fmt, "text.format").get("type")
    _one_of("text.format.type", kind, ("text", "json_object", "json_schema"))
    if kind is None:
        raise bad("text.format.type", "Missing required parameter: 'text.format.type'.",
                  code="missing_required_parameter")
    if kind != "json_schema":
        _keys(fmt, "text.format", ("type",))
        return
    _keys(fmt, "text.format", ("type", "name", "schema", "strict", "description"))
    _name(fmt.get("name"), "text.format.name")
    _object(fmt.get("schema"), "text.format.schema")
    _expect("text.format.strict", fmt.get("strict"), "boolean")
    _expect("text.format.description", fmt.get("description"), "string")


def _check_reasoning(value: Any) -> None:
    if _expect("reasoning", value, "object") is None:
        return
    _keys(value, "reasoning", ("effort", "summary", "generate_summary", "mode", "context"))
    _one_of("reasoning.effort", value.get("effort"), REASONING_EFFORTS)
    # A summary "auto" leaves it to the model whether to summarise: no summary honours it.
    for name in ("summary", "generate_summary"):
        _one_of(f"reasoning.{name}", value.get(name), ("auto", "concise", "detailed"))
        _neutral(f"reasoning.{name}", value.get(name), ("auto",), "other than 'auto' (reasoning summaries)")
    _neutral("reasoning.mode", _expect("reasoning.mode", value.get("mode"), "string"), ("standard",),
             "other than 'standard'")
    _neutral("reasoning.context", _expect("reasoning.context", value.get("context"), "string"), ("auto",),
             "other than 'auto'")


def _check_include(value: Any) -> None:
    if _expect("include", value, "array") is None:
        return
    for i, item in enumerate(value):
        if type(item) is not str or item not in INCLUDE_VALUES:     # an array is not hashable
            shown = repr(item[:60]) if type(item) is str else type_name(item)
            raise bad(f"include[{i}]", f"Invalid value for 'include[{i}]': {shown} is not a supported value.",
                      code="invalid_value")


def _check_stream_options(value: Any) -> None:
    if _expect("stream_options", value, "object") is None:
        return
    _keys(value, "stream_options", ("include_obfuscation",))
    # Obfuscation pads events against length side channels; events without it mean the same.
    _expect("stream_options.include_obfuscation", value.get("include_obfuscation"), "boolean")


def _function_tool(tool: dict[str, Any], where: str) -> ToolSpec:
    _keys(tool, where, _FUNCTION_TOOL_KEYS)
    description, parameters, strict = tool.get("description"), tool.get("parameters"), tool.get("strict")
    _expect(f"{where}.description", description, "string")
    _expect(f"{where}.parameters", parameters, "object")
    _expect(f"{where}.strict", strict, "boolean")
    _neutral(f"{where}.defer_loading", _expect(f"{where}.defer_loading", tool.get("defer_loading"), "boolean"),
             (False,), "(deferred tool loading)")
    _neutral(f"{where}.output_schema", tool.get("output_schema"), (), "(tool output schemas)")
    _neutral(f"{where}.allowed_callers", tool.get("allowed_callers"), (), "(programmatic tool calling)")
    return ToolSpec(_name(tool.get("name"), f"{where}.name"), description, parameters, strict)


def _tools(value: Any) -> tuple[ToolSpec, ...]:
    if _expect("tools", value, "array") is None:
        return ()
    if len(value) > MAX_TOOLS:
        raise bad("tools", f"Invalid 'tools': array too long. Expected an array with maximum length {MAX_TOOLS}, "
                           f"but got an array with length {len(value)} instead.", code="array_above_max_length")
    specs = []
    for i, tool in enumerate(value):
        kind = _object(tool, f"tools[{i}]").get("type")
        if kind == "function":
            specs.append(_function_tool(tool, f"tools[{i}]"))
        elif type(kind) is str and kind in _BUILT_IN_TOOLS:
            raise unsupported(f"tools[{i}].type", f"= {kind!r} (built-in tools; only function tools run here)")
        else:
            shown = repr(kind[:40]) if type(kind) is str else type_name(kind)
            raise bad(f"tools[{i}].type", f"Invalid value for 'tools[{i}].type': {shown} is not a tool type.",
                      code="invalid_value")
    return tuple(specs)


def _check_tool_choice(value: Any) -> None:
    if value is None or value in ("none", "auto", "required"):
        return
    if type(value) is str:
        raise bad("tool_choice", f"Invalid value for 'tool_choice': {value[:40]!r} is not one of 'none', 'auto', "
                                 f"'required' or a named function.", code="invalid_value")
    kind = _object(value, "tool_choice").get("type")
    if kind != "function":
        raise unsupported("tool_choice.type", f"= {str(kind)[:40]!r} (only function tools run here)")
    _keys(value, "tool_choice", ("type", "name"))
    _name(value.get("name"), "tool_choice.name")


def _fields_table() -> dict[str, Callable[[Any], None]]:
    def typed(name: str, kind: str) -> Callable[[Any], None]:
        return lambda v: _expect(name, v, kind)

    def neutral(name: str, kind: str, values: tuple[Any, ...], why: str) -> Callable[[Any], None]:
        return lambda v: _neutral(name, _expect(name, v, kind), values, why)

    return {
        "model": typed("model", "string"),
        "input": lambda v: None if type(v) is str else _expect("input", v, "array"),
        "instructions": typed("instructions", "string"),
        "previous_response_id": typed("previous_response_id", "string"),
        "store": typed("store", "boolean"),
        "stream": typed("stream", "boolean"),
        "stream_options": _check_stream_options,
        "metadata": functools.partial(check_metadata, tail=" instead"),
        "user": typed("user", "string"),
        "temperature": _number("temperature", 0, 2),
        "top_p": _number("top_p", 0, 1),
        "top_logprobs": _number("top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True),
        "max_output_tokens": _number("max_output_tokens", MIN_MAX_OUTPUT_TOKENS, integer=True),
        "max_tool_calls": _number("max_tool_calls", 0, integer=True),   # bounds built-in tools: none run here
        "parallel_tool_calls": typed("parallel_tool_calls", "boolean"),
        "tools": _tools,
        "tool_choice": _check_tool_choice,
        "text": _check_text,
        "reasoning": _check_reasoning,
        "include": _check_include,
        "truncation": lambda v: (_one_of("truncation", v, ("auto", "disabled")),
                                 _neutral("truncation", v, ("disabled",), "= 'auto' (dropping input to fit)")),
        "background": neutral("background", "boolean", (False,), "(background mode)"),
        "prompt": neutral("prompt", "object", (), "(stored prompt templates)"),
        "conversation": lambda v: _neutral("conversation", v, (), "(the Conversations API)"),
        "context_management": neutral("context_management", "array", (), "(context compaction)"),
        "moderation": neutral("moderation", "object", (), "(moderation)"),
        # Hints that do not change the reply: accepted with their types checked.
        "service_tier": lambda v: (_expect("service_tier", v, "string"), _one_of("service_tier", v, SERVICE_TIERS)),
        "safety_identifier": typed("safety_identifier", "string"),
        "prompt_cache_key": typed("prompt_cache_key", "string"),
        "prompt_cache_retention": lambda v: _one_of("prompt_cache_retention", v, ("in_memory", "24h")),
        "prompt_cache_options": typed("prompt_cache_options", "object"),
    }


# Every field of OpenAI's CreateResponse and its check; a field absent here is refused.
FIELDS: Final = _fields_table()


# -- input items ----------------------------------------------------------------------------

def _image(part: dict[str, Any], where: str) -> ImagePart:
    if part.get("file_id") is not None:
        raise unsupported(f"{where}.file_id", "(uploaded files)")
    url = _string(part.get("image_url"), f"{where}.image_url")
    if not (url.startswith(("https://", "http://")) or _DATA_IMAGE_RE.match(url)):
        raise bad(f"{where}.image_url", f"Invalid '{where}.image_url': expected an http(s) URL or a base64 data "
                                        f"URL of an image (data:image/<type>;base64,...).", code="invalid_value")
    detail = part.get("detail")
    if detail == "original":
        raise unsupported(f"{where}.detail", "= 'original'")
    _one_of(f"{where}.detail", detail, IMAGE_DETAILS)
    return ImagePart(url, detail)


def _part(part: Any, where: str, role: str) -> Part:
    kind = part.get("type") if type(part) is dict else None
    if kind == "input_text" or (role == "assistant" and kind == "output_text"):
        return TextPart(_string(part.get("text"), f"{where}.text"))
    if kind == "refusal" and role == "assistant":
        return TextPart(_string(part.get("refusal"), f"{where}.refusal"))
    if kind == "input_image" and role != "assistant":
        return _image(part, where)
    if kind == "input_file":
        raise unsupported(f"{where}.type", "= 'input_file' (file inputs)")
    if type(part) is not dict or type(kind) is not str:
        raise bad(where, f"Invalid content part {where}: expected an object with a 'type'.")
    allowed = ("input_text", "output_text", "refusal") if role == "assistant" else ("input_text", "input_image")
    raise bad(f"{where}.type", f"Invalid value for '{where}.type': {kind[:40]!r} is not a content part of a "
                               f"{role} message (expected one of {', '.join(repr(k) for k in allowed)}).",
              code="invalid_value")


def _content(parts: list[Part]) -> str | tuple[Part, ...]:
    """Parts as a content: text alone is joined into a str (the cheap, common form)."""
    if all(type(p) is TextPart for p in parts):
        return "".join([p.text for p in parts])         # type: ignore[union-attr]
    return tuple(parts)


class _Reader:
    """Reads input items into system text and a conversation, ``ITEMS_PER_STEP`` of work per step."""

    __slots__ = ("system", "conversation", "texts", "calls", "reasoning", "signature", "work")

    def __init__(self) -> None:
        self.system: list[str] = []
        self.conversation: list[Message] = []
        # The assistant message being gathered: its text, its calls, the reasoning before it.
        self.texts: list[str] = []
        self.calls: list[ToolCall] = []
        self.reasoning = ""
        self.signature = ""
        self.work = 0

    async def parts(self, content: Any, where: str, role: str) -> list[Part]:
        if type(content) is str:
            return [TextPart(content)] if content else []
        if type(content) is not list:
            raise bad(where, f"Invalid type for {where!r}: expected a string or an array of content parts, "
                             f"but got {type_name(content)} instead.")
        parts: list[Part] = []
        for first in range(0, len(content), ITEMS_PER_STEP):
            await self.step(min(ITEMS_PER_STEP, len(content) - first))
            parts.extend(_part(content[i], f"{where}[{i}]", role)
                         for i in range(first, min(first + ITEMS_PER_STEP, len(content))))
        return parts

    async def step(self, work: int) -> None:
        self.work += work
        if self.work >= ITEMS_PER_STEP:
            self.work = 0
            await asyncio.sleep(0)

    async def item(self, item: Any, where: str) -> None:
        await self.step(1)
        if type(item) is not dict:
            raise bad(where, f"Invalid type for {where!r}: expected an object, but got {type_name(item)} instead.")
        kind = item.get("type", "message")
        if kind == "message":
            await self.message(item, where)
        elif kind == "function_call":       # joins the assistant message being gathered
            self.calls.append(ToolCall(_call_id(item.get("call_id"), f"{where}.call_id"),
                                       _string(item.get("name"), f"{where}.name", empty=False),
                                       _string(item.get("arguments"), f"{where}.arguments")))
        elif kind == "function_call_output":
            self.flush()
            output = item.get("output")
            content = _content(await self.parts(output, f"{where}.output", "tool")) if type(output) is list \
                else _string(output, f"{where}.output")
            self.conversation.append(Message("tool", content,
                                             tool_call_id=_call_id(item.get("call_id"), f"{where}.call_id")))
        elif kind == "reasoning":
            self.flush()
            self.reasoning, self.signature = _reasoning_of(item, where)
        elif kind == "item_reference":
            raise unsupported(f"{where}.type", "= 'item_reference' (references to stored items)")
        elif type(kind) is str and kind in _TOOL_ITEM_TYPES:
            raise unsupported(f"{where}.type", f"= {kind!r} (built-in tool items; only function tools run here)")
        else:
            shown = repr(kind[:40]) if type(kind) is str else type_name(kind)
            raise bad(f"{where}.type", f"Invalid value for '{where}.type': {shown} is not an input item type.",
                      code="invalid_value")

    async def message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            shown = repr(role[:40]) if type(role) is str else type_name(role)
            raise bad(f"{where}.role", f"Invalid value for '{where}.role': {shown} is not one of 'user', "
                                       f"'assistant', 'system', 'developer'.", code="invalid_value")
        if "content" not in item:
            raise bad(f"{where}.content", f"Missing required parameter: '{where}.content'.",
                      code="missing_required_parameter")
        parts = await self.parts(item["content"], f"{where}.content", role)
        if role == "assistant":
            if self.calls:
                self.flush()
            self.texts.extend(p.text for p in parts)        # type: ignore[union-attr]
            return
        self.flush()
        if role == "user":
            self.conversation.append(Message("user", _content(parts)))
            return
        if any(type(p) is not TextPart for p in parts):
            raise bad(f"{where}.content", f"Invalid '{where}.content': a {role} message holds text only.",
                      code="invalid_value")
        text = "".join([p.text for p in parts])             # type: ignore[union-attr]
        if text:
            self.system.append(text)

    def flush(self) -> None:
        """End the assistant message being gathered (if any) into the conversation."""
        if self.texts or self.calls:
            self.conversation.append(Message("assistant", "".join(self.texts), tuple(self.calls),
                                             reasoning=self.reasoning, reasoning_signature=self.signature))
        self.texts, self.calls, self.reasoning, self.signature = [], [], "", ""


def _call_id(value: Any, where: str) -> str:
    call_id = _string(value, where, empty=False)
    if len(call_id) > MAX_CALL_ID_CHARS:
        raise bad(where, f"Invalid {where!r}: longer than {MAX_CALL_ID_CHARS} characters.", code="invalid_value")
    return call_id


def _reasoning_of(item: dict[str, Any], where: str) -> tuple[str, str]:
    """(text, signature) of a reasoning item: its reasoning text, else its summary; its encrypted content."""
    texts: list[str] = []
    for key in ("content", "summary"):
        entries = item.get(key)
        if entries is None:
            continue
        if type(entries) is not list:
            raise bad(f"{where}.{key}", f"Invalid type for '{where}.{key}': expected an array, but got "
                                        f"{type_name(entries)} instead.")
        texts = [e["text"] for e in entries if type(e) is dict and type(e.get("text")) is str]
        if texts:
            break
    signature = item.get("encrypted_content")
    return "\n\n".join(texts), signature if type(signature) is str else ""


# -- the request ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """What a checked ``POST /v1/responses`` body asks for, in the content model's terms.

    ``system`` is ``instructions`` then the input's system and developer
    messages; ``context`` the input's earlier conversation (up to its last
    assistant item), ``input`` the new turn (user messages and tool results).
    """

    model: str
    system: str
    context: tuple[Message, ...]
    input: tuple[Message, ...]
    options: GenerationOptions
    stream: bool
    store: bool
    previous_response_id: str | None
    user: str | None


def check_fields(body: dict[str, Any]) -> None:
    """Check every field of ``body`` (``ApiError`` naming the first bad one)."""
    for name, value in body.items():
        check = FIELDS.get(name)
        if check is None:
            raise _unknown(name)
        check(value)
    for name in ("model", "input"):
        if body.get(name) is None:
            raise bad(name, f"Missing required parameter: {name!r}.", code="missing_required_parameter")
    if len(body["model"]) > MAX_MODEL_CHARS:
        raise bad("model", f"Invalid 'model': {len(body['model'])} characters, more than the limit of "
                           f"{MAX_MODEL_CHARS}.", code="invalid_value")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise bad("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                  code="invalid_value")


async def read_request(body: dict[str, Any], max_items: int) -> ResponseRequest:
    """The ``ResponseRequest`` of a decoded body, every field checked.

    Raises ``ApiError`` 400 naming the field: unknown fields, wrong types or
    values, what cannot be honoured here (``unsupported_parameter``), more
    than ``max_items`` input items (``too_many_messages``), or an input that
    ends with an assistant item (a prefill). Long inputs are read a slice per
    loop step.
    """
    check_fields(body)
    system, context, new = await _conversation(body["input"], max_items)
    instructions = body.get("instructions")
    return ResponseRequest(
        model=body["model"], system="\n\n".join([t for t in (instructions, system) if t]),
        context=context, input=new, options=options_from(body), stream=bool(body.get("stream")),
        store=body.get("store") is not False, previous_response_id=body.get("previous_response_id"),
        user=body.get("user"))


async def _conversation(value: str | list[Any], max_items: int
                        ) -> tuple[str, tuple[Message, ...], tuple[Message, ...]]:
    if type(value) is str:
        return "", (), (Message("user", value),)
    if not value:
        raise bad("input", "Invalid 'input': empty array. Expected an array with minimum length 1.",
                  code="invalid_value")
    if len(value) > max_items:
        raise bad("input", f"Invalid 'input': {len(value)} items, more than this gateway's limit of "
                           f"{max_items} (gateway.http.maxMessages).", code="too_many_messages")
    reader = _Reader()
    for i, item in enumerate(value):
        await reader.item(item, f"input[{i}]")
    reader.flush()
    conversation = reader.conversation
    cut = len(conversation)
    while cut and conversation[cut - 1].role != "assistant":
        cut -= 1
    if cut == len(conversation):
        if not conversation:
            raise bad("input", "Invalid 'input': it holds no user message, tool output or assistant item.",
                      code="invalid_value")
        raise unsupported("input", "ending with an assistant item (a prefill)")
    return "\n\n".join(reader.system), tuple(conversation[:cut]), tuple(conversation[cut:])


# The body fields that become GenerationOptions; most requests send none of them.
_OPTION_FIELDS: Final = frozenset({
    "max_output_tokens", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "text",
    "reasoning", "include", "top_logprobs"})


def options_from(body: dict[str, Any]) -> GenerationOptions:
    """The ``GenerationOptions`` of a checked body; neutral values are not asked for.

    ``max_output_tokens`` is the limit an OpenAI-compatible upstream gets as
    ``max_completion_tokens``.
    """
    if _OPTION_FIELDS.isdisjoint(body):
        return NO_OPTIONS
    get = body.get
    tools, tool_choice, parallel = _tool_options(body)
    logprobs = "message.output_text.logprobs" in (get("include") or ())
    text_format = (get("text") or {}).get("format")
    return GenerationOptions(
        max_tokens=get("max_output_tokens"), temperature=get("temperature"), top_p=get("top_p"),
        logprobs=logprobs or None, top_logprobs=(get("top_logprobs") or None) if logprobs else None,
        response_format=_response_format(text_format), reasoning_effort=(get("reasoning") or {}).get("effort"),
        tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel,
        # The Chat Completions field that means the same as max_output_tokens
        # (reasoning tokens included), and the one OpenAI's reasoning models take.
        max_tokens_field="max_completion_tokens")


def _response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as the content model's response format (None for plain text)."""
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt["name"], "schema": fmt["schema"]}
    for key in ("description", "strict"):
        if fmt.get(key) is not None:
            schema[key] = fmt[key]
    return {"type": "json_schema", "json_schema": schema}


def _tool_options(body: dict[str, Any]) -> tuple[tuple[ToolSpec, ...], Any, bool | None]:
    specs = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    if type(choice) is dict:
        if choice["name"] not in {spec.name for spec in specs}:
            raise bad("tool_choice", f"Invalid value for 'tool_choice': no function named {choice['name']!r} "
                                     f"is offered in 'tools'.", code="invalid_value")
        choice = {"type": "function", "name": choice["name"]}
    elif choice == "auto" or (choice == "none" and not specs):
        choice = None                   # the default, or nothing to refuse: neutral
    if not specs:
        if choice is not None:
            raise bad("tool_choice", "Invalid value for 'tool_choice': 'required' needs 'tools'.",
                      code="invalid_value")
        return (), None, None
    return specs, choice, False if body.get("parallel_tool_calls") is False else None


# -- what a Response object repeats of its request -------------------------------------------

# Hints a Response repeats when the request set them.
_ECHOED_HINTS: Final = ("max_tool_calls", "prompt_cache_key", "prompt_cache_retention", "safety_identifier")


def echo_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The request fields a Response object repeats, for ``responses_output.Shape``: a checked body's
    ``instructions``, ``max_output_tokens``, then (``rest``) tools, sampling and the rest in OpenAI's
    order, and (``tail``) ``user`` when set and ``metadata``."""
    get = body.get
    reasoning, text = get("reasoning") or {}, get("text") or {}
    rest: dict[str, Any] = {
        "parallel_tool_calls": get("parallel_tool_calls") is not False,
        "previous_response_id": get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default",
        "store": get("store") is not False,
        "temperature": get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"},
                 **({"verbosity": text["verbosity"]} if text.get("verbosity") is not None else {})},
        "tool_choice": get("tool_choice") if get("tool_choice") is not None else "auto",
        "tools": [_tool_echo(tool) for tool in get("tools") or ()],
        "top_logprobs": get("top_logprobs") or 0,
        "top_p": get("top_p"),
        "truncation": "disabled",
    }
    rest.update((name, get(name)) for name in _ECHOED_HINTS if get(name) is not None)
    tail: dict[str, Any] = {"user": get("user")} if get("user") is not None else {}
    tail["metadata"] = get("metadata") or {}
    return {"instructions": get("instructions"), "max_output_tokens": get("max_output_tokens"),
            "rest": rest, "tail": tail}


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    out = {"type": "function", "name": tool["name"]}
    if tool.get("description") is not None:
        out["description"] = tool["description"]
    out["parameters"], out["strict"] = tool.get("parameters"), tool.get("strict")
    return out


# -- input items as stored resources -------------------------------------------------------

_ID_PREFIXES: Final = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def item_resources(value: str | list[Any], suffix: str) -> list[dict[str, Any]]:
    """The input items of a checked request as OpenAI's ``ItemResource`` objects, in order.

    Each keeps a string ``id`` it came with, else gets ``<prefix>_<suffix>_in<n>``.
    """
    if type(value) is str:
        value = [{"role": "user", "content": value}]
    out = []
    for n, item in enumerate(value):
        kind = item.get("type", "message")
        given = item.get("id")
        item_id = given if type(given) is str and given else f"{_ID_PREFIXES[kind]}_{suffix}_in{n:x}"
        out.append(_resource(item, kind, item_id))
    return out


def _resource(item: dict[str, Any], kind: str, item_id: str) -> dict[str, Any]:
    if kind == "function_call":
        return {"id": item_id, "type": "function_call", "status": "completed", "call_id": item["call_id"],
                "name": item["name"], "arguments": item["arguments"]}
    if kind == "function_call_output":
        return {"id": item_id, "type": "function_call_output", "status": "completed", "call_id": item["call_id"],
                "output": item["output"]}
    if kind == "reasoning":
        text, _ = _reasoning_of(item, "input")
        return {"id": item_id, "type": "reasoning", "summary": [],
                "content": [{"type": "reasoning_text", "text": text}] if text else []}
    role, content = item["role"], item["content"]
    if role == "assistant":
        text = content if type(content) is str else "".join(
            p.get("text") or p.get("refusal") or "" for p in content)
        return {"id": item_id, "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    parts = [{"type": "input_text", "text": content}] if type(content) is str else [
        {"type": "input_text", "text": p["text"]} if p["type"] == "input_text" else
        {"type": "input_image", "image_url": p["image_url"], "detail": p.get("detail") or "auto"}
        for p in content]
    return {"id": item_id, "type": "message", "role": role, "status": "completed", "content": parts}
