"""Chat completions' content on the wire ↔ the content model: messages, tools, options, answers.

The one place where OpenAI's chat-completions shapes of content meet
``agents.types``: request messages (text, ``image_url``, ``input_audio`` and
``refusal`` parts, an assistant's ``refusal``, which becomes the end of its
text, assistant ``tool_calls``, ``tool`` results, the legacy
``function_call`` / ``role: "function"``), ``tools`` / ``functions`` and the
other generation fields into ``Message``, ``ToolSpec`` and
``GenerationOptions``; and a result back into ``choices[].message`` (with
``tool_calls`` or the legacy ``function_call``, ``reasoning_content``,
``logprobs``, the ``refusal`` apart from the content, ``annotations``). Every check raises ``ApiError`` naming the field as OpenAI
does. Nothing here walks a value deeper than the request's own structure
(JSON Schemas are passed through, never walked); sizes are bounded by the
body limit, counts by the constants below. ``openai.py`` owns the endpoint.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable, Final

from ..agents.types import (
    NO_OPTIONS, AgentResult, AudioPart, Citation, GenerationOptions, ImagePart, Message, Part, TextPart, ToolCall,
    ToolSpec,
)
from ..errors import ApiError

__all__ = [
    "MAX_TOOLS", "MAX_N", "MAX_TOP_LOGPROBS", "MAX_LOGIT_BIAS", "FINISH_REASONS", "read_conversation",
    "options_from", "choice_object", "message_object", "logprobs_object", "finish_of", "tool_call_object",
    "annotation_object", "FIELD_CHECKS", "is_legacy", "expect_string", "expect_object", "expect_name",
    "check_metadata",
]

MAX_TOOLS: Final = 128                 # OpenAI: "A max of 128 functions are supported."
MAX_N: Final = 128                     # OpenAI's maximum of n
MAX_TOP_LOGPROBS: Final = 20           # OpenAI: "An integer between 0 and 20"
MAX_LOGIT_BIAS: Final = 1024           # token biases one request may set
MAX_CALLS_PER_MESSAGE: Final = 128     # tool calls one assistant message may carry
MAX_NAME_CHARS: Final = 64
MAX_METADATA: Final = 16               # OpenAI: "Set of 16 key-value pairs"
MAX_METADATA_KEY_CHARS: Final = 64
MAX_METADATA_VALUE_CHARS: Final = 512
# OpenAI's reasoning_effort values (none and xhigh on the newest models).
REASONING_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh")
# OpenAI: function names "must be a-z, A-Z, 0-9, or contain underscores and dashes, with a maximum length of 64".
NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# An image is an http(s) URL or a base64 data URL of an image type.
_DATA_IMAGE_RE: Final = re.compile(r"data:image/[A-Za-z0-9.+-]{1,40};base64,", re.I)
IMAGE_DETAILS: Final = ("auto", "low", "high")
AUDIO_FORMATS: Final = ("wav", "mp3")
# The finish reasons OpenAI's schema allows; an upstream's other words are reported as "stop".
_CONTENT_OPTIONAL: Final = frozenset({"assistant", "function"})
FINISH_REASONS: Final = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# Messages and content parts read per step of the event loop (about 2 ms of checks).
ITEMS_PER_STEP: Final = 1000
_ROLE_NAMES: Final = ("system", "developer", "user", "assistant", "tool", "function")
_ROLES: Final = frozenset(_ROLE_NAMES)
_ROLES_SAID: Final = ", ".join(repr(role) for role in _ROLE_NAMES)


# -- errors ---------------------------------------------------------------------------

def bad(param: str, message: str, code: str = "invalid_type") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param!r} {why} is not supported by this gateway",
                    code="unsupported_parameter", param=param)


def type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


# The field checkers of both OpenAI doors. Their messages are OpenAI's, whose
# wording differs a little per API: ``tail`` ends a type error (" instead" in
# the Responses API's), ``pattern`` shows the name rule as each API states it.
_NAME_PATTERN: Final = f"'^[a-zA-Z0-9_-]{{1,{MAX_NAME_CHARS}}}$'"


def expect_string(value: Any, where: str, *, empty: bool = True, tail: str = "") -> str:
    """``value`` if it is a string (a non-empty one unless ``empty``), else 400 naming ``where``."""
    if type(value) is not str or (not empty and not value):
        raise bad(where, f"Invalid type for {where!r}: expected {'a' if empty else 'a non-empty'} string, "
                         f"but got {type_name(value)}{tail}.")
    return value


def expect_object(value: Any, where: str, *, tail: str = "") -> dict[str, Any]:
    """``value`` if it is a JSON object, else 400 naming ``where``."""
    if type(value) is not dict:
        raise bad(where, f"Invalid type for {where!r}: expected an object, but got {type_name(value)}{tail}.")
    return value


def expect_name(value: Any, where: str, *, tail: str = "", pattern: str = _NAME_PATTERN) -> str:
    """``value`` if it is a function name (``NAME_RE``), else 400 naming ``where``."""
    expect_string(value, where, tail=tail)
    if not NAME_RE.fullmatch(value):
        raise bad(where, f"Invalid {where!r}: string does not match pattern. Expected a string that "
                         f"matches the pattern {pattern}.", code="invalid_value")
    return value


def check_metadata(value: Any, *, tail: str = "") -> None:
    """``metadata`` as OpenAI's ``Metadata`` allows it (null, or at most 16 string values of
    at most 512 characters under keys of at most 64), else 400 naming the field."""
    if value is None:
        return
    expect_object(value, "metadata", tail=tail)
    if len(value) > MAX_METADATA:
        raise bad("metadata", f"Invalid 'metadata': too many properties. Expected an object with at most "
                              f"{MAX_METADATA} properties, but got {len(value)} instead.", code="invalid_value")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS or type(item) is not str or len(item) > MAX_METADATA_VALUE_CHARS:
            raise bad(f"metadata.{key[:64]}", f"Invalid 'metadata': keys are strings of at most "
                                              f"{MAX_METADATA_KEY_CHARS} characters, values strings of at most "
                                              f"{MAX_METADATA_VALUE_CHARS}.", code="invalid_value")


# -- tools and generation fields -------------------------------------------------------

def _function_spec(fn: Any, where: str) -> ToolSpec:
    fn = expect_object(fn, where)
    description, parameters, strict = fn.get("description"), fn.get("parameters"), fn.get("strict")
    if description is not None:
        expect_string(description, f"{where}.description")
    if parameters is not None:
        expect_object(parameters, f"{where}.parameters")
    if strict is not None and type(strict) is not bool:
        raise bad(f"{where}.strict", f"Invalid type for '{where}.strict': expected a boolean.")
    return ToolSpec(expect_name(fn.get("name"), f"{where}.name"), description, parameters, strict)


def _tools(value: list[Any]) -> tuple[ToolSpec, ...]:
    if len(value) > MAX_TOOLS:
        raise bad("tools", f"Invalid 'tools': array too long. Expected an array with maximum length "
                           f"{MAX_TOOLS}, but got an array with length {len(value)} instead.",
                  code="array_above_max_length")
    specs = []
    for i, tool in enumerate(value):
        tool = expect_object(tool, f"tools[{i}]")
        if tool.get("type") != "function":
            raise unsupported(f"tools[{i}].type", f"= {str(tool.get('type'))[:40]!r} (only function tools)")
        specs.append(_function_spec(tool.get("function"), f"tools[{i}].function"))
    return tuple(specs)


def _functions(value: list[Any]) -> tuple[ToolSpec, ...]:
    if len(value) > MAX_TOOLS:
        raise bad("functions", f"Invalid 'functions': array too long. Expected an array with maximum "
                               f"length {MAX_TOOLS}.", code="array_above_max_length")
    return tuple(_function_spec(fn, f"functions[{i}]") for i, fn in enumerate(value))


def _check_tool_choice(value: Any) -> None:
    if value is None or value in ("none", "auto", "required"):
        return
    if type(value) is str:
        raise bad("tool_choice", f"Invalid value for 'tool_choice': {value[:40]!r} is not one of 'none', "
                                 f"'auto', 'required' or a named tool.", code="invalid_value")
    value = expect_object(value, "tool_choice")
    if value.get("type") != "function":
        raise unsupported("tool_choice.type", f"= {str(value.get('type'))[:40]!r} (only function tools)")
    expect_name(expect_object(value.get("function"), "tool_choice.function").get("name"), "tool_choice.function.name")


def _check_function_call(value: Any) -> None:
    if value is None or value in ("none", "auto"):
        return
    if type(value) is str:
        raise bad("function_call", f"Invalid value for 'function_call': {value[:40]!r} is not one of "
                                   f"'none', 'auto' or a named function.", code="invalid_value")
    expect_name(expect_object(value, "function_call").get("name"), "function_call.name")


def _check_response_format(value: Any) -> None:
    if value is None:
        return
    kind = expect_object(value, "response_format").get("type")
    if kind in ("text", "json_object"):
        return
    if kind != "json_schema":
        raise bad("response_format.type", f"Invalid value for 'response_format.type': {str(kind)[:40]!r} "
                                          f"is not one of 'text', 'json_object', 'json_schema'.",
                  code="invalid_value")
    schema = expect_object(value.get("json_schema"), "response_format.json_schema")
    expect_name(schema.get("name"), "response_format.json_schema.name")
    if schema.get("schema") is not None:
        expect_object(schema["schema"], "response_format.json_schema.schema")


def _check_logit_bias(value: Any) -> None:
    if value is None:
        return
    expect_object(value, "logit_bias")
    if len(value) > MAX_LOGIT_BIAS:
        raise bad("logit_bias", f"Invalid 'logit_bias': more than {MAX_LOGIT_BIAS} entries.", code="invalid_value")
    for token, bias in value.items():
        # Token ids in ASCII digits: str.isdigit() alone takes "²" and "٣" too.
        if not (token.isascii() and token.isdigit()) or not is_number(bias) or not -100 <= bias <= 100:
            raise bad("logit_bias", f"Invalid 'logit_bias': {token[:40]!r} must map a token id to a "
                                    f"number between -100 and 100.", code="invalid_value")


def is_number(value: Any) -> bool:
    return (type(value) is int or type(value) is float) and value == value and abs(value) != float("inf")


def _number(name: str, lo: float, hi: float, integer: bool = False) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value is None:
            return
        if integer and type(value) is not int or not is_number(value):
            raise bad(name, f"Invalid type for {name!r}: expected {'an integer' if integer else 'a number'}, "
                            f"but got {type_name(value)}.")
        if not lo <= value <= hi:
            raise bad(name, f"Invalid {name!r}: {value!r} is not between {lo:g} and {hi:g}.", code="invalid_value")
    return check


def _check_reasoning_effort(value: Any) -> None:
    if value is not None and value not in REASONING_EFFORTS:
        raise bad("reasoning_effort", f"Invalid value for 'reasoning_effort': expected one of "
                                      f"{', '.join(repr(e) for e in REASONING_EFFORTS)}.", code="invalid_value")


def _check_list(value: Any, name: str, read: Callable[[list[Any]], Any]) -> None:
    if value is None:
        return
    if type(value) is not list:
        raise bad(name, f"Invalid type for {name!r}: expected an array, but got {type_name(value)}.")
    read(value)


def _check_logprobs(value: Any) -> None:
    if value is not None and type(value) is not bool:
        raise bad("logprobs", f"Invalid type for 'logprobs': expected a boolean, but got {type_name(value)}.")


# The checks of the generation fields this module converts: name -> check(value).
FIELD_CHECKS: Final[dict[str, Callable[[Any], None]]] = {
    "n": _number("n", 1, MAX_N, integer=True),
    "tools": lambda v: _check_list(v, "tools", _tools),
    "functions": lambda v: _check_list(v, "functions", _functions),
    "tool_choice": _check_tool_choice,
    "function_call": _check_function_call,
    "response_format": _check_response_format,
    "logprobs": _check_logprobs,
    "top_logprobs": _number("top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True),
    "logit_bias": _check_logit_bias,
    "frequency_penalty": _number("frequency_penalty", -2, 2),
    "presence_penalty": _number("presence_penalty", -2, 2),
    "reasoning_effort": _check_reasoning_effort,
    # Sampling fields of vLLM, llama.cpp and Ollama (the openai SDK's extra_body).
    "top_k": _number("top_k", -1, 1 << 31, integer=True),
    "min_p": _number("min_p", 0, 1),
    "repetition_penalty": _number("repetition_penalty", 0, 10),
}




# The body fields that become GenerationOptions; most requests send none of them.
_OPTION_FIELDS: Final = frozenset({
    "stop", "max_completion_tokens", "max_tokens", "temperature", "top_p", "seed", "n", "tools",
    "functions", "tool_choice", "function_call", "parallel_tool_calls", "response_format", "logprobs",
    "top_logprobs", "logit_bias", "frequency_penalty", "presence_penalty", "reasoning_effort", "top_k",
    "min_p", "repetition_penalty",
})


def is_legacy(body: dict[str, Any]) -> bool:
    """Whether the request uses the legacy ``functions`` (then answers use ``function_call``)."""
    return bool(body.get("functions")) and not body.get("tools")


def options_from(body: dict[str, Any]) -> GenerationOptions:
    """The ``GenerationOptions`` of a checked body; neutral values are not asked for.

    The token limit keeps the name it came under (``max_tokens_field``).
    Raises ``ApiError`` for combinations OpenAI refuses (``tools`` with
    ``functions``, ``tool_choice`` naming no offered tool, ``top_logprobs``
    without ``logprobs``, both ``max_tokens`` and ``max_completion_tokens``).
    """
    if _OPTION_FIELDS.isdisjoint(body):
        return NO_OPTIONS
    get = body.get
    stop = get("stop")
    max_tokens, max_tokens_field = get("max_completion_tokens"), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_tokens_field = get("max_tokens"), "max_tokens"
    elif get("max_tokens") is not None:
        # OpenAI's own answer, word for word: which limit would win is not guessed.
        raise bad("max_tokens", "Setting 'max_tokens' and 'max_completion_tokens' at the same time "
                                "is not supported.", code="invalid_parameter_combination")
    tools, tool_choice, parallel = _tool_options(body)
    logprobs = get("logprobs") or None
    top_logprobs = get("top_logprobs") or None
    if top_logprobs is not None and not logprobs:
        raise bad("top_logprobs", "Invalid value for 'top_logprobs': 'logprobs' must be set to true "
                                  "when 'top_logprobs' is used.", code="invalid_value")
    response_format = get("response_format")
    if response_format is not None and response_format.get("type") == "text":
        response_format = None
    n = get("n")
    return GenerationOptions(
        max_tokens=max_tokens, temperature=get("temperature"), top_p=get("top_p"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()), seed=get("seed"),
        presence_penalty=get("presence_penalty") or None, frequency_penalty=get("frequency_penalty") or None,
        logit_bias=tuple((get("logit_bias") or {}).items()), logprobs=logprobs, top_logprobs=top_logprobs,
        response_format=response_format, reasoning_effort=get("reasoning_effort"),
        n=n if n is not None and n > 1 else None, tools=tools, tool_choice=tool_choice,
        parallel_tool_calls=parallel, top_k=get("top_k"), min_p=get("min_p"),
        repetition_penalty=get("repetition_penalty"), max_tokens_field=max_tokens_field)


def _tool_options(body: dict[str, Any]) -> tuple[tuple[ToolSpec, ...], Any, bool | None]:
    """(tools, tool_choice, parallel_tool_calls) of ``tools`` or of the legacy ``functions``."""
    tools, functions = body.get("tools") or [], body.get("functions") or []
    if tools and functions:
        raise bad("functions", "Invalid request: 'tools' and the deprecated 'functions' cannot both be set.",
                  code="invalid_value")
    legacy = bool(functions)
    specs = _functions(functions) if legacy else _tools(tools)
    choice_field = "function_call" if legacy else "tool_choice"
    choice = body.get(choice_field)
    if type(choice) is dict:
        name = choice["name"] if legacy else choice["function"]["name"]
        if name not in {spec.name for spec in specs}:
            raise bad(choice_field, f"Invalid value for {choice_field!r}: no {'function' if legacy else 'tool'} "
                                    f"named {name!r} is offered.", code="invalid_value")
        choice = {"type": "function", "name": name}
    elif choice == "auto" or (choice == "none" and not specs):
        choice = None                   # the default, or nothing to refuse: neutral
    if not specs:
        if choice is not None:
            raise bad(choice_field, f"Invalid value for {choice_field!r}: {choice_field!r} is only allowed "
                                    f"when {'functions' if legacy else 'tools'!r} are specified.",
                      code="invalid_value")
        return (), None, None
    # Legacy functions are called one at a time; parallel calls (the default) are not asked for.
    parallel = False if legacy or body.get("parallel_tool_calls") is False else None
    return specs, choice, parallel


# -- messages -------------------------------------------------------------------------

def _image(part: dict[str, Any], where: str) -> ImagePart:
    image = expect_object(part.get("image_url"), f"{where}.image_url")
    url = expect_string(image.get("url"), f"{where}.image_url.url")
    if not (url.startswith(("https://", "http://")) or _DATA_IMAGE_RE.match(url)):
        raise bad(f"{where}.image_url.url", f"Invalid '{where}.image_url.url': expected an http(s) URL or a "
                                            f"base64 data URL of an image (data:image/<type>;base64,...).",
                  code="invalid_value")
    detail = image.get("detail")
    if detail is not None and detail not in IMAGE_DETAILS:
        raise bad(f"{where}.image_url.detail", f"Invalid value for '{where}.image_url.detail': expected one of "
                                               f"'auto', 'low', 'high'.", code="invalid_value")
    return ImagePart(url, detail)


def _audio(part: dict[str, Any], where: str) -> AudioPart:
    audio = expect_object(part.get("input_audio"), f"{where}.input_audio")
    data = expect_string(audio.get("data"), f"{where}.input_audio.data")
    if audio.get("format") not in AUDIO_FORMATS:
        raise bad(f"{where}.input_audio.format", f"Invalid value for '{where}.input_audio.format': expected "
                                                 f"'wav' or 'mp3'.", code="invalid_value")
    return AudioPart(data, audio["format"])


# Part types each role may send (OpenAI's request message schemas).
_PART_TYPES: Final = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}


def _part(part: Any, where: str, role: str) -> Part:
    if type(part) is not dict or type(part.get("type")) is not str:
        raise bad(where, f"Invalid content part {where}: expected an object with a 'type'.")
    kind = part["type"]
    if kind == "text":
        return TextPart(expect_string(part.get("text"), f"{where}.text"))
    allowed = _PART_TYPES.get(role, ())
    if kind not in allowed:
        raise bad(f"{where}.type", f"Invalid value for '{where}.type': {kind[:40]!r} is not a content part "
                                   f"of a {role} message (expected one of "
                                   f"{', '.join(repr(k) for k in allowed or ('text',))}).", code="invalid_value")
    if kind == "image_url":
        return _image(part, where)
    if kind == "input_audio":
        return _audio(part, where)
    if kind == "refusal":
        return TextPart(expect_string(part.get("refusal"), f"{where}.refusal"))
    raise unsupported(f"{where}.type", f"= {kind!r} (file inputs)")


def _parts(content: list[Any], where: str, role: str, first: int = 0, stop: int | None = None) -> list[Part]:
    end = len(content) if stop is None else min(stop, len(content))
    return [_part(content[i], f"{where}[{i}]", role) for i in range(first, end)]


def _content(parts: list[Part]) -> str | tuple[Part, ...]:
    """Parts as a content: text alone is joined into a str (the cheap, common form)."""
    if all(type(p) is TextPart for p in parts):
        return "".join([p.text for p in parts])         # type: ignore[union-attr]
    return tuple(parts)


def _tool_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    if type(value) is not list:
        raise bad(where, f"Invalid type for {where!r}: expected an array, but got {type_name(value)}.")
    if len(value) > MAX_CALLS_PER_MESSAGE:
        raise bad(where, f"Invalid {where!r}: more than {MAX_CALLS_PER_MESSAGE} tool calls.", code="invalid_value")
    calls = []
    for i, call in enumerate(value):
        call = expect_object(call, f"{where}[{i}]")
        if call.get("type", "function") != "function":
            raise unsupported(f"{where}[{i}].type", f"= {str(call.get('type'))[:40]!r} (only function tools)")
        fn = expect_object(call.get("function"), f"{where}[{i}].function")
        calls.append(ToolCall(expect_string(call.get("id"), f"{where}[{i}].id", empty=False),
                              expect_string(fn.get("name"), f"{where}[{i}].function.name", empty=False),
                              expect_string(fn.get("arguments"), f"{where}[{i}].function.arguments")))
    return tuple(calls)


class _Reader:
    """Reads request messages into the system text and the conversation, a slice at a time."""

    __slots__ = ("system", "conversation", "legacy_id")

    def __init__(self) -> None:
        self.system: list[str] = []
        self.conversation: list[Message] = []
        self.legacy_id: str | None = None       # the id given to the last legacy function_call

    def read(self, messages: list[Any], start: int) -> int:
        """Read messages from ``start`` on; stop after about ``ITEMS_PER_STEP`` messages and
        parts, or at a message of more parts than that (``read_long`` reads it). The index
        of the first message not read."""
        work = 0
        conversation = self.conversation
        for i in range(start, len(messages)):
            message = messages[i]
            content = message.get("content") if type(message) is dict else None
            if work >= ITEMS_PER_STEP or (type(content) is list and len(content) > ITEMS_PER_STEP):
                return i
            # The common message, {"role": "user", "content": "..."}: no other look.
            if type(content) is str and len(message) == 2 and message.get("role") == "user":
                conversation.append(Message("user", content))
                work += 1
                continue
            work += 1 + (len(content) if type(content) is list else 0)
            self.add(message, i, None)
        return len(messages)

    async def read_long(self, messages: list[Any], i: int) -> None:
        """A message of many content parts, read ``ITEMS_PER_STEP`` parts per loop step."""
        content = messages[i]["content"]
        role = messages[i].get("role")
        parts: list[Part] = []
        for first in range(0, len(content), ITEMS_PER_STEP):
            if first:
                await asyncio.sleep(0)
            parts.extend(_parts(content, f"messages[{i}].content", role if type(role) is str else "",
                                first, first + ITEMS_PER_STEP))
        self.add(messages[i], i, parts)

    def add(self, message: Any, i: int, parts: list[Part] | None) -> None:
        where = f"messages[{i}]"
        if type(message) is not dict:
            raise bad(where, f"Invalid type for {where!r}: expected an object, but got {type_name(message)}.")
        role = message.get("role")
        if type(role) is not str or role not in _ROLES:
            shown = repr(role[:100]) if type(role) is str else type_name(role)
            raise bad(f"{where}.role", f"Invalid value for '{where}.role': {shown} is not one of "
                                       f"{_ROLES_SAID}.", code="invalid_value")
        content = message.get("content")
        if parts is None:
            if content is None:
                # Only an assistant's (calls, a refusal) and a legacy function result may be null.
                if role not in _CONTENT_OPTIONAL:
                    raise bad(f"{where}.content", f"Missing required parameter: '{where}.content'.",
                              code="missing_required_parameter")
                parts = []
            elif type(content) is str:
                parts = [TextPart(content)] if content else []
            elif type(content) is list:
                if not content:
                    raise bad(f"{where}.content", f"Invalid '{where}.content': empty array. Expected an array "
                                                  f"with minimum length 1, but got an empty array instead.",
                              code="empty_array")
                parts = _parts(content, f"{where}.content", role)
            else:
                raise bad(f"{where}.content", f"Invalid type for '{where}.content': expected a string or an "
                                              f"array of content parts, but got {type_name(content)}.")
        if role == "system" or role == "developer":
            if any(type(p) is not TextPart for p in parts):
                raise bad(f"{where}.content", f"Invalid '{where}.content': a {role} message holds text only.",
                          code="invalid_value")
            text = "".join([p.text for p in parts])     # type: ignore[union-attr]
            if text:
                self.system.append(text)
            return
        if role == "assistant":
            self.conversation.append(self._assistant(message, where, parts))
        elif role == "user":
            self.conversation.append(Message("user", _content(parts)))
        else:
            self.conversation.append(self._result(message, where, role, parts))

    def _assistant(self, message: dict[str, Any], where: str, parts: list[Part]) -> Message:
        calls: tuple[ToolCall, ...] = ()
        if message.get("tool_calls") is not None:
            calls = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
        elif message.get("function_call") is not None:
            fn = expect_object(message["function_call"], f"{where}.function_call")
            self.legacy_id = f"call_legacy_{where[9:-1]}"
            calls = (ToolCall(self.legacy_id, expect_string(fn.get("name"), f"{where}.function_call.name", empty=False),
                              expect_string(fn.get("arguments"), f"{where}.function_call.arguments")),)
        reasoning = message.get("reasoning_content", message.get("reasoning"))
        refusal = message.get("refusal")
        if type(refusal) is str and refusal:
            # A refusal resent in a conversation is what the assistant said, as the
            # transcript keeps it: the end of the message's text.
            parts = [*parts, TextPart(refusal)]
        return Message("assistant", _content(parts), calls,
                       reasoning=reasoning if type(reasoning) is str else "")

    def _result(self, message: dict[str, Any], where: str, role: str, parts: list[Part]) -> Message:
        if role == "function":      # legacy: answers the last function_call, by name
            name = expect_string(message.get("name"), f"{where}.name", empty=False)
            return Message("tool", _content(parts), tool_call_id=self.legacy_id or f"call_legacy_{name}",
                           name=name)
        call_id = message.get("tool_call_id")
        if call_id is None:
            raise bad(f"{where}.tool_call_id", f"Missing required parameter: '{where}.tool_call_id'.",
                      code="missing_required_parameter")
        return Message("tool", _content(parts), tool_call_id=expect_string(call_id, f"{where}.tool_call_id"))


async def read_conversation(messages: list[Any], max_messages: int
                            ) -> tuple[str, tuple[Message, ...], tuple[Message, ...]]:
    """(system instructions, context, input) of a request's ``messages``.

    ``input`` is the new turn: the messages after the last assistant message
    (all of them when there is none): user messages and tool results. The
    conversation must end with one of those (a trailing assistant message,
    a prefill, is refused by name). More than ``max_messages`` messages is
    400 ``too_many_messages``; long lists are read a slice per loop step.
    """
    if not messages:
        raise bad("messages", "Invalid 'messages': empty array. Expected an array with "
                              "minimum length 1.", code="invalid_value")
    if len(messages) > max_messages:
        raise bad("messages", f"Invalid 'messages': {len(messages)} messages, more than this "
                              f"gateway's limit of {max_messages} (gateway.http.maxMessages).",
                  code="too_many_messages")
    reader = _Reader()
    start = reader.read(messages, 0)
    while start < len(messages):
        await asyncio.sleep(0)
        content = messages[start].get("content") if type(messages[start]) is dict else None
        if type(content) is list and len(content) > ITEMS_PER_STEP:
            await reader.read_long(messages, start)
            start += 1
        start = reader.read(messages, start)
    conversation = reader.conversation
    cut = len(conversation)
    while cut and conversation[cut - 1].role != "assistant":
        cut -= 1
    if cut == len(conversation):
        if not any(m.role == "user" for m in conversation):
            raise bad("messages", "Missing user message in messages: at least one message "
                                  "with role 'user' is required.", code="missing_user_message")
        raise unsupported("messages", "ending with an assistant message (a prefill)")
    return "\n\n".join(reader.system), tuple(conversation[:cut]), tuple(conversation[cut:])


# -- answers --------------------------------------------------------------------------

def finish_of(reason: str, legacy: bool) -> str:
    """A finish reason as OpenAI's schema allows it ("function_call" for legacy requests)."""
    if reason not in FINISH_REASONS:
        return "stop"
    return "function_call" if legacy and reason == "tool_calls" else reason


def tool_call_object(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def annotation_object(citation: Citation) -> dict[str, Any]:
    """A citation as chat completions' ``annotations`` entry (``url_citation``)."""
    return {"type": "url_citation", "url_citation": {"url": citation.url, "title": citation.title,
                                                     "start_index": citation.start_index,
                                                     "end_index": citation.end_index}}


def message_object(text: str, calls: tuple[ToolCall, ...], reasoning: str, legacy: bool, refusal: str = "",
                   citations: tuple[Citation, ...] = ()) -> dict[str, Any]:
    """``choices[].message``: ``text`` is the answer without its ``refusal`` (a result's
    ``answer()``); content null when the reply is only calls or a refusal (as OpenAI answers)."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not (calls or refusal) else None,
                               "refusal": refusal or None,
                               "annotations": [annotation_object(c) for c in citations]}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        if legacy:      # a legacy request gets its one call in the deprecated shape
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
        else:
            message["tool_calls"] = [tool_call_object(call) for call in calls]
    return message


def logprobs_object(content: tuple[Any, ...] | list[Any] | None) -> dict[str, Any] | None:
    return None if content is None else {"content": list(content), "refusal": None}


def choice_object(result: AgentResult, legacy: bool) -> list[dict[str, Any]]:
    """``choices`` of a non-streamed completion: choice 0, then the extra ones."""
    choices = [{"index": 0, "message": message_object(result.answer(), result.tool_calls, result.reasoning, legacy,
                                                      result.refusal, result.citations),
                "logprobs": logprobs_object(result.logprobs),
                "finish_reason": finish_of(result.finish_reason, legacy)}]
    for extra in result.extra_choices:
        choices.append({"index": extra.index,
                        "message": message_object(extra.answer(), extra.tool_calls, extra.reasoning, legacy,
                                                  extra.refusal, extra.citations),
                        "logprobs": logprobs_object(extra.logprobs),
                        "finish_reason": finish_of(extra.finish_reason, legacy)})
    return choices
