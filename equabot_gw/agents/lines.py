"""The JSONL line format of transcripts and journals: writing a turn's lines, reading them back.

Owns what one line holds (the format is drawn below), encoding a turn's
lines as UTF-8 JSONL (a large turn in slices of the event loop), decoding
lines from untrusted bytes (``safejson``'s depth bound; damaged lines skipped
and counted, never raised), and ``fold``, which replays lines as the
session's history. Pure functions of values and bytes, but for
``read_file_lines``, which reads one file. ``transcripts`` re-exports every
public name here; this module imports nothing from equabot_gw.net or
equabot_gw.gateway, and never writes a file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from typing import Any, Final, Iterable

from equabot_gw import safejson
from equabot_gw.agents.committer import read_regular
from equabot_gw.compact_json import LARGE_CHARS, dumps, dumps_into
from equabot_gw.errors import ReplyTooLarge, RunAborted, RunError, run_error_fields
from equabot_gw.agents.types import (
    AudioPart, ImagePart, Message, Part, SessionHistory, TextPart, ToolCall, TurnRecord, content_text,
    message_chars,
)

__all__ = [
    "chat_messages", "dumps", "encode", "encode_plain_turn", "encode_turn", "is_large", "parse_lines",
    "parse_lines_async", "read_file_lines", "warn_skipped",
    "number", "header_line", "turn_lines", "fold", "message_line", "message_of", "content_line",
    "content_of", "reply_of",
]

log = logging.getLogger("equabot_gw.sessions")    # one logger for the whole session store

# -- transcript lines ---------------------------------------------------------
#
# One turn's lines, written in one append (every line has "runId" and "at"):
#   {"type":"context","messages":[message...]}   a session's first turn only: the history it started from
#   {"type":"user","content"}                    user input
#   {"type":"tool","toolCallId","name","content"}  a tool result given as input
#   then the outcome, one of
#   {"type":"assistant","content","model","finishReason","usage"[,"toolCalls"][,"reasoning"][,"reasoningSignature"]}
#   {"type":"aborted","content","reason"[,"model"][,"reasoning"][,"message","error"]}
#                                                the partial reply of an aborted run
#   {"type":"error","message"[,"content"][,"error"]}   a failed run, its partial reply if any
#                                                (none for a reply over its bound)
# "error" is the run's error as ``errors.run_error_fields`` describes it ({"class",
# "fields"}): a retry of its idempotency key after a restart answers it as the first
# answer did (older lines have "message" or "reason" alone). An aborted line has it
# (and "message") only for an abort of its own kind, a timeout.
# "content" is a string (text), or a list of parts: {"type":"text","text"},
# {"type":"image","url"[,"detail"]}, {"type":"audio","data","format"}; image
# and data URLs and audio are stored byte-identical, never re-encoded.
# "toolCalls" is [{"id","name","arguments"}] (arguments: the model's JSON text).
# A context message is {"role","content"} plus "toolCalls", "toolCallId",
# "name", "reasoning" when set. Transcripts of text alone (all older ones)
# are the same format with string contents and no tool lines.

# dumps(obj) -> str: exactly json.dumps(obj, ensure_ascii=False, separators=(",", ":")).
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def content_line(content: str | tuple[Part, ...]) -> str | list[dict[str, Any]]:
    """A message content as stored: a str as it is, parts as a list of objects."""
    if type(content) is str:
        return content
    out: list[dict[str, Any]] = []
    for part in content:
        kind = type(part)
        if kind is TextPart:
            out.append({"type": "text", "text": part.text})          # type: ignore[union-attr]
        elif kind is ImagePart:
            image = {"type": "image", "url": part.url}              # type: ignore[union-attr]
            if part.detail is not None:                             # type: ignore[union-attr]
                image["detail"] = part.detail                       # type: ignore[union-attr]
            out.append(image)
        else:
            out.append({"type": "audio", "data": part.data, "format": part.format})  # type: ignore[union-attr]
    return out


def content_of(value: object) -> str | tuple[Part, ...] | None:
    """A stored content read back; None if it is neither a string nor a list.

    Parts that are not well-formed (a hand-edited line) are left out.
    """
    if type(value) is str:
        return value
    if type(value) is not list:
        return None
    parts: list[Part] = []
    for item in value:
        if type(item) is not dict:
            continue
        kind = item.get("type")
        if kind == "text" and type(item.get("text")) is str:
            parts.append(TextPart(item["text"]))
        elif kind == "image" and type(item.get("url")) is str:
            detail = item.get("detail")
            parts.append(ImagePart(item["url"], detail if type(detail) is str else None))
        elif kind == "audio" and type(item.get("data")) is str and type(item.get("format")) is str:
            parts.append(AudioPart(item["data"], item["format"]))
    return tuple(parts)


def _calls_line(calls: tuple[ToolCall, ...]) -> list[dict[str, str]]:
    return [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls]


def _calls_of(value: object) -> tuple[ToolCall, ...]:
    if type(value) is not list:
        return ()
    return tuple(ToolCall(d["id"], d["name"], d["arguments"]) for d in value
                 if type(d) is dict and type(d.get("id")) is str and type(d.get("name")) is str
                 and type(d.get("arguments")) is str)


def message_line(message: Message) -> dict[str, Any]:
    """A message as a context line stores it (``{"role", "content"}`` for plain text)."""
    line: dict[str, Any] = {"role": message.role, "content": content_line(message.content)}
    if message.tool_calls:
        line["toolCalls"] = _calls_line(message.tool_calls)
    if message.tool_call_id is not None:
        line["toolCallId"] = message.tool_call_id
    if message.name is not None:
        line["name"] = message.name
    if message.reasoning:
        line["reasoning"] = message.reasoning
    if message.reasoning_signature:
        line["reasoningSignature"] = message.reasoning_signature
    return line


def message_of(line: dict[str, Any], role: object = None) -> Message | None:
    """The message a stored object holds (``role`` overrides its "role"); None if unusable."""
    content = content_of(line.get("content"))
    if content is None:
        return None
    role = line.get("role") if role is None else role
    if role not in ("system", "user", "assistant", "tool"):
        return None
    get = line.get
    if "toolCalls" not in line and "toolCallId" not in line and "name" not in line \
            and "reasoning" not in line:
        return Message(role, content)             # type: ignore[arg-type]
    call_id, name = get("toolCallId"), get("name")
    reasoning, signature = get("reasoning"), get("reasoningSignature")
    return Message(role, content, _calls_of(get("toolCalls")) if role == "assistant" else (),  # type: ignore[arg-type]
                   call_id if type(call_id) is str else None, name if type(name) is str else None,
                   reasoning if type(reasoning) is str else "", signature if type(signature) is str else "")


def header_line(key: str, agent_id: str, created_at: float) -> dict[str, Any]:
    """Line 1 of a transcript; ``created_at`` is the first turn's ``at`` (epoch seconds)."""
    return {"type": "session", "key": key, "agentId": agent_id, "createdAt": created_at}


def turn_lines(turn: TurnRecord, session_key: str | None, with_context: bool) -> list[dict[str, Any]]:
    """The lines one turn adds; journal lines (``session_key`` set) carry "sessionKey".

    Line order: context (only if ``with_context`` and ``turn.context``), user,
    then the outcome ("assistant", "aborted" or "error"). ``turn.error`` of
    a failed turn is best the run's ``RunError`` itself (its line then keeps
    what a replay answers it by); a str is stored as its message ("error")
    or reason ("aborted"). Raises ValueError for any other ``turn.status``.
    """
    head: dict[str, Any] = {"type": ""}        # {**head, "type": t} keeps "type" first
    if session_key is not None:
        head["sessionKey"] = session_key
    head["runId"], head["at"] = turn.run_id, turn.at
    lines = [{**head, "type": "user", "content": turn.user}] if not turn.input else \
        [_input_line(head, m) for m in turn.input]
    if with_context and turn.context:
        lines.insert(0, {**head, "type": "context",
                         "messages": [{"role": m.role, "content": m.content} if type(m.content) is str
                                      and m.tool_call_id is None and not m.tool_calls and not m.reasoning
                                      else message_line(m) for m in turn.context]})
    if turn.status == "ok":
        usage = turn.usage.as_dict() if turn.usage is not None else None
        line = {**head, "type": "assistant", "content": turn.reply, "model": turn.model,
                "finishReason": turn.finish_reason, "usage": usage}
        if turn.tool_calls:
            line["toolCalls"] = _calls_line(turn.tool_calls)
        if turn.reasoning:
            line["reasoning"] = turn.reasoning
            if turn.reasoning_signature:
                line["reasoningSignature"] = turn.reasoning_signature
        lines.append(line)
    elif turn.status == "aborted":
        failure = turn.error
        why = failure.why if isinstance(failure, RunAborted) else failure
        line = {**head, "type": "aborted", "content": turn.reply, "reason": why or "aborted"}
        if turn.model:          # which model the partial reply came from (chat.history shows it)
            line["model"] = turn.model
        if turn.reasoning:
            line["reasoning"] = turn.reasoning
        if isinstance(failure, RunAborted) and type(failure) is not RunAborted:
            # A timeout, say: its own status and words, which "reason" alone does not tell.
            line["message"], line["error"] = str(failure), run_error_fields(failure)
        lines.append(line)
    elif turn.status == "error":
        failure = turn.error
        line = {**head, "type": "error", "message": str(failure) if isinstance(failure, RunError) else failure}
        if turn.reply and not isinstance(failure, ReplyTooLarge):
            # The partial reply its client saw: a retry replays it. One over the reply
            # bound is not kept: it is what the run failed for.
            line["content"] = turn.reply
        if isinstance(failure, RunError):
            line["error"] = run_error_fields(failure)
        lines.append(line)
    else:
        raise ValueError(f"turn status must be 'ok', 'aborted' or 'error', not {turn.status!r}")
    return lines


def _input_line(head: dict[str, Any], message: Message) -> dict[str, Any]:
    """The line of one input message: "user" (text or parts), or "tool" (a result)."""
    if message.role == "tool":
        return {**head, "type": "tool", "toolCallId": message.tool_call_id, "name": message.name,
                "content": content_line(message.content)}
    if message.role != "user":
        raise ValueError(f"a turn's input holds user and tool messages, not {message.role!r}")
    return {**head, "type": "user", "content": content_line(message.content)}


def encode(lines: list[dict[str, Any]]) -> bytes:
    """``lines`` as UTF-8 JSONL, ending with a newline; all-ASCII JSON if a string
    holds a lone surrogate, so that ``parse_lines`` gives back exactly ``lines``."""
    try:
        return ("\n".join(map(dumps, lines)) + "\n").encode("utf-8")
    except UnicodeEncodeError:     # a lone surrogate (legal in JSON input): keep it as \udXXX
        return ("\n".join(map(_dumps_ascii, lines)) + "\n").encode("ascii")


def encode_plain_turn(turn: TurnRecord, session_key: str | None) -> bytes | None:
    """``encode(turn_lines(turn, session_key, True))`` for the most common turn, written
    around its escaped strings; None for any other turn (the caller encodes its lines).

    The common turn: "ok", one user message of text, no context, tool calls or
    reasoning, plain usage counts, and fewer than ``LARGE_CHARS`` characters.
    What it writes is byte for byte what ``encode`` writes (a test holds them
    equal over random turns): a stateless run's two journal lines cost two
    string escapes each instead of two dicts and their encoding.
    """
    usage = turn.usage
    if (turn.status != "ok" or turn.input or turn.context or turn.tool_calls or turn.reasoning
            or usage is None or usage.cached_tokens is not None or usage.reasoning_tokens is not None
            or type(turn.at) is not float or type(turn.finish_reason) is not str
            or len(turn.user) + len(turn.reply) >= LARGE_CHARS):
        return None
    head = (f'","sessionKey":{_escape(session_key)},"runId":' if session_key is not None else '","runId":') \
        + f'{_escape(turn.run_id)},"at":{turn.at!r},"content":'
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    text = (f'{{"type":"user{head}{_escape(turn.user)}}}\n'
            f'{{"type":"assistant{head}{_escape(turn.reply)},"model":{_escape(turn.model)},'
            f'"finishReason":{_escape(turn.finish_reason)},"usage":{{"prompt_tokens":{prompt},'
            f'"completion_tokens":{completion},"total_tokens":{prompt + completion}}}}}\n')
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:      # a lone surrogate: ``encode`` writes those lines as ASCII
        return None


_escape: Final = json.encoder.encode_basestring
_ENCODE_SLICE_SECONDS: Final = 0.005


def is_large(turn: TurnRecord) -> bool:
    """Whether ``turn`` holds so much text that its lines are encoded with ``encode_turn``."""
    chars = len(turn.user) + len(turn.reply) + len(str(turn.error or "")) + len(turn.reasoning)
    for message in turn.context:
        content = message.content
        chars += len(content) if type(content) is str and not message.tool_calls else message_chars(message)
    for message in turn.input:
        chars += message_chars(message)
    for call in turn.tool_calls:
        chars += len(call.arguments)
    return chars >= LARGE_CHARS


async def encode_turn(lines: list[dict[str, Any]], turn: TurnRecord) -> bytes:
    """``encode(lines)`` of ``turn``'s lines; a turn with much text (a 20 MiB message,
    ten thousand context messages, see ``is_large``) is encoded in slices of the event loop."""
    if not is_large(turn):
        return encode(lines)
    parts: list[str] = []
    for line in lines:
        await dumps_into(line, parts)
        parts.append("\n")
    # Encoded piece by piece, the loop served between: 20 MiB copied in one
    # step three times over (join, concatenate, encode) take tens of ms.
    chunks: list[bytes] = []
    deadline = time.perf_counter() + _ENCODE_SLICE_SECONDS
    try:
        for part in parts:
            chunks.append(part.encode("utf-8"))
            if time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + _ENCODE_SLICE_SECONDS
    except UnicodeEncodeError:     # a lone surrogate: as in encode()
        return ("\n".join(map(_dumps_ascii, lines)) + "\n").encode("ascii")
    return b"".join(chunks)


def parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int, int]:
    """The JSON objects of JSONL ``data``, how many lines were skipped, and the first of them.

    Lines that are not JSON objects (nesting past ``safejson.MAX_DEPTH``,
    NaN and invalid UTF-8 included) are skipped and counted; the third value
    is the 1-based number of the first one (0 if none). The text after the
    last newline is a torn write and is dropped without being counted.
    """
    raw_lines = data.split(b"\n")
    raw_lines.pop()           # "" after a final newline, else a torn last line
    lines, skipped, first = [], 0, 0
    for number, raw in enumerate(raw_lines, 1):
        try:
            obj = _decode_line(raw)
        except ValueError:
            obj = None
        if type(obj) is dict:
            lines.append(obj)
        else:
            skipped += 1
            first = first or number
    return lines, skipped, first


def _decode_line(raw: bytes) -> Any:
    try:
        return safejson.loads(raw)
    except json.JSONDecodeError as exc:
        return _with_lone_surrogate(raw, exc)


def _with_lone_surrogate(raw: bytes, exc: json.JSONDecodeError) -> Any:
    # A lone surrogate is the one thing safejson refuses that a line of ours
    # may hold (``encode`` keeps it, escaped); it checks everything else
    # (depth, numbers) before it, so the plain decoder is safe here.
    if not exc.msg.startswith("lone UTF-16 surrogate"):
        raise exc
    return json.loads(raw)


# parse_lines_async: lines longer than this are decoded in slices of the loop,
# and the longest it works between two returns to the loop (seconds).
_LONG_LINE_BYTES: Final = 1 << 20
_PARSE_SLICE_SECONDS: Final = 0.005


async def parse_lines_async(data: bytes, name: str) -> list[dict[str, Any]]:
    """``parse_lines(data)[0]`` on the event loop, returning to it every few ms.

    A session's transcript may hold a 20 MB line (ten thousand context
    messages): decoded in one call that is ~100 ms of the loop, and in the
    committer thread it would hold the GIL as long. Skipped lines are told
    once, as ``read_file_lines`` does, with ``name`` for the file.
    """
    raw_lines = data.split(b"\n")
    raw_lines.pop()
    lines: list[dict[str, Any]] = []
    skipped = first = 0
    clock = time.perf_counter
    deadline = clock() + _PARSE_SLICE_SECONDS
    for number, raw in enumerate(raw_lines, 1):
        try:
            try:
                obj = await safejson.loads_async(raw) if len(raw) > _LONG_LINE_BYTES else safejson.loads(raw)
            except json.JSONDecodeError as exc:
                obj = _with_lone_surrogate(raw, exc)
        except ValueError:
            obj = None
        if type(obj) is dict:
            lines.append(obj)
        else:
            skipped += 1
            first = first or number
        if clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + _PARSE_SLICE_SECONDS
    if skipped:
        warn_skipped(name, skipped, first)
    return lines


# Files already warned about: a damaged line is reported once, not at every read.
_warned: set[str] = set()
_MAX_WARNED: Final = 1024


def read_file_lines(path: str) -> list[dict[str, Any]]:
    """``parse_lines`` of the regular file at ``path``; one warning (per file and process)
    naming the file and its first bad line if any was skipped. Raises OSError
    (FileNotFoundError too; EINVAL for a FIFO, a device or any other special file)."""
    lines, skipped, first = parse_lines(read_regular(path))
    if skipped:
        warn_skipped(path, skipped, first)
    return lines


def warn_skipped(path: str, skipped: int, first: int) -> None:
    """Warn that ``skipped`` lines of ``path`` (the first at line ``first``) were not read:
    once per file in this process, so that a damaged file read again stays quiet."""
    if path in _warned:
        return
    if len(_warned) >= _MAX_WARNED:
        _warned.clear()
    _warned.add(path)
    log.warning("%s: skipped %d %s not holding a JSON object, the first at line %d",
                os.path.basename(path), skipped, "line" if skipped == 1 else "lines", first)


def number(value: object) -> float | None:
    """``value`` as a finite float if it is a JSON number (not a boolean), else None.

    Every reader of stored lines takes numbers through this: a hand-edited
    line may hold anything in any field.
    """
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:       # an integer of 400 digits
            return None
    return None


def reply_of(line: dict[str, Any]) -> Message | None:
    """The assistant message of an outcome line; None if it holds nothing to replay."""
    content = line.get("content")
    calls = _calls_of(line.get("toolCalls")) if line.get("type") == "assistant" else ()
    if type(content) is not str or not (content or calls):
        return None
    reasoning, signature = line.get("reasoning"), line.get("reasoningSignature")
    return Message("assistant", content, calls, reasoning=reasoning if type(reasoning) is str else "",
                   reasoning_signature=signature if type(signature) is str else "")


def _input_of(line: dict[str, Any]) -> Message | None:
    if line.get("type") == "user":
        content = content_of(line.get("content"))
        return None if content is None else Message("user", content)
    return message_of(line, "tool")


def fold(base: SessionHistory, lines: Iterable[dict[str, Any]]) -> SessionHistory:
    """``base`` plus what ``lines`` add: context in order, then each finished turn.

    A turn's input lines (user, tool) count only with the outcome line of the
    same run right after them (a turn torn by a crash was never acknowledged).
    An error turn adds nothing (the client retries it); an aborted one its
    partial reply, if any. An assistant turn with tool calls and the tool
    results after it stay together, in order. ``exists`` once any line but
    the header was seen: a transcript that ``reset`` left blank is no history.
    """
    messages, turns, exists = list(base.messages), base.assistant_turns, base.exists
    inputs: list[dict[str, Any]] = []
    for line in lines:
        kind = line.get("type")
        if kind != "session":
            exists = True
        if kind == "user" or kind == "tool":
            if inputs and inputs[0].get("runId") != line.get("runId"):
                inputs = []
            inputs.append(line)
            continue
        if kind == "context" and isinstance(line.get("messages"), list):
            messages.extend(m for m in (message_of(d) for d in line["messages"] if isinstance(d, dict)) if m)
        elif kind in ("assistant", "aborted") and inputs and inputs[0].get("runId") == line.get("runId"):
            messages.extend(m for m in map(_input_of, inputs) if m)
            reply = reply_of(line)
            if reply is not None:
                messages.append(reply)
            turns += kind == "assistant"
        inputs = []
    return SessionHistory(tuple(messages), turns, exists)


# -- transcripts as chat messages (the CLI shows them) ------------------------------

def chat_messages(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation of a transcript as chat messages (user / tool / assistant), oldest first.

    Each is ``{"role", "content", "runId", "ts"}`` (ts in ms; content the
    message's text); an aborted reply is an assistant message with
    ``"aborted": true``, a reply that calls tools has ``"toolCalls"``
    (``[{id, name, arguments}]``), a tool result ``"toolCallId"`` and
    ``"name"``. Error turns and bookkeeping lines are left out. Fields are
    taken one by one: a hand-edited line with a wrong type in one
    (``"at": null``) gives that field's neutral value ("", None, 0), never an error.
    """
    out = []
    for line in lines:
        kind = line.get("type")
        if kind in ("user", "assistant", "aborted", "tool"):
            content, run_id = line.get("content"), line.get("runId")
            parts = content_of(content)
            message = {"role": "assistant" if kind == "aborted" else kind,
                       "content": content_text(parts) if parts is not None else "",
                       "runId": run_id if isinstance(run_id, str) else None,
                       "ts": _millis(line.get("at"))}
            if kind == "aborted":
                message["aborted"] = True
            if kind == "assistant" and line.get("toolCalls"):
                reply = message_of(line, "assistant")
                if reply is not None and reply.tool_calls:
                    message["toolCalls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments}
                                            for c in reply.tool_calls]
            if kind == "tool":
                for key in ("toolCallId", "name"):
                    message[key] = line.get(key) if isinstance(line.get(key), str) else None
            out.append(message)
    return out


# Largest timestamp shown (ms): the year 9999, what clients' date types hold.
_MAX_MILLIS: Final = 253_402_300_799_999


def _millis(at: object) -> int:
    seconds = number(at)
    return 0 if seconds is None else int(min(max(seconds * 1000, 0), _MAX_MILLIS))
