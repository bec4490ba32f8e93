"""The JSONL line format of transcripts and journals: encoding, decoding, folding into history.

A turn becomes lines here (``turn_lines``, ``encode``; large ones encoded in
slices of the loop); files read back become lines (``parse_lines`` and its
loop-friendly twin, skipping what is not a JSON object with one warning per
file) and lines become a ``SessionHistory`` (``fold``). Every reader takes a
stored line field by field: a hand-edited line may hold anything. Part of
the session store: file names, the index and the writer thread are in
``transcripts``, which re-exports these names.
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
from equabot_gw.compact_json import LARGE_CHARS, dumps, dumps_into
from equabot_gw.agents.types import Message, SessionHistory, TurnRecord

__all__ = [
    "dumps", "header_line", "turn_lines", "encode", "is_large", "encode_turn",
    "parse_lines", "parse_lines_async", "read_file_lines", "number", "fold",
]

log = logging.getLogger("equabot_gw.sessions")    # one logger for the whole session store

# dumps(obj) -> str: exactly json.dumps(obj, ensure_ascii=False, separators=(",", ":")).
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def header_line(key: str, agent_id: str, created_at: float) -> dict[str, Any]:
    """Line 1 of a transcript; ``created_at`` is the first turn's ``at`` (epoch seconds)."""
    return {"type": "session", "key": key, "agentId": agent_id, "createdAt": created_at}


def turn_lines(turn: TurnRecord, session_key: str | None, with_context: bool) -> list[dict[str, Any]]:
    """The lines one turn adds; journal lines (``session_key`` set) carry "sessionKey".

    Line order: context (only if ``with_context`` and ``turn.context``), user,
    then the outcome ("assistant", "aborted" or "error"). Raises ValueError
    for any other ``turn.status``.
    """
    head: dict[str, Any] = {"type": ""}        # {**head, "type": t} keeps "type" first
    if session_key is not None:
        head["sessionKey"] = session_key
    head["runId"], head["at"] = turn.run_id, turn.at
    lines = [{**head, "type": "user", "content": turn.user}]
    if with_context and turn.context:
        lines.insert(0, {**head, "type": "context",
                         "messages": [{"role": m.role, "content": m.content} for m in turn.context]})
    if turn.status == "ok":
        usage = turn.usage.as_dict() if turn.usage is not None else None
        lines.append({**head, "type": "assistant", "content": turn.reply, "model": turn.model,
                      "finishReason": turn.finish_reason, "usage": usage})
    elif turn.status == "aborted":
        lines.append({**head, "type": "aborted", "content": turn.reply, "reason": turn.error or "aborted"})
    elif turn.status == "error":
        lines.append({**head, "type": "error", "message": turn.error})
    else:
        raise ValueError(f"turn status must be 'ok', 'aborted' or 'error', not {turn.status!r}")
    return lines


def encode(lines: list[dict[str, Any]]) -> bytes:
    """``lines`` as UTF-8 JSONL, ending with a newline; all-ASCII JSON if a string
    holds a lone surrogate, so that ``parse_lines`` gives back exactly ``lines``."""
    try:
        return ("\n".join(map(dumps, lines)) + "\n").encode("utf-8")
    except UnicodeEncodeError:     # a lone surrogate (legal in JSON input): keep it as \udXXX
        return ("\n".join(map(_dumps_ascii, lines)) + "\n").encode("ascii")


_ENCODE_SLICE_SECONDS: Final = 0.005


def is_large(turn: TurnRecord) -> bool:
    """Whether ``turn`` holds so much text that its lines are encoded with ``encode_turn``."""
    chars = len(turn.user) + len(turn.reply) + len(turn.error or "")
    for message in turn.context:
        chars += len(message.content)
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
        _warn_skipped(name, skipped, first)
    return lines


# Files already warned about: a damaged line is reported once, not at every read.
_warned: set[str] = set()
_MAX_WARNED: Final = 1024


def read_file_lines(path: str) -> list[dict[str, Any]]:
    """``parse_lines`` of the file at ``path``; one warning (per file and process) naming
    the file and its first bad line if any was skipped. Raises OSError (FileNotFoundError too)."""
    with open(path, "rb") as f:
        lines, skipped, first = parse_lines(f.read())
    if skipped:
        _warn_skipped(path, skipped, first)
    return lines


def _warn_skipped(path: str, skipped: int, first: int) -> None:
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


def _message(role: object, content: object) -> Message | None:
    try:
        return Message(role, content) if isinstance(content, str) else None  # type: ignore[arg-type]
    except ValueError:
        return None


def fold(base: SessionHistory, lines: Iterable[dict[str, Any]]) -> SessionHistory:
    """``base`` plus what ``lines`` add: context in order, then each finished turn.

    A user line counts only with the outcome line of the same run right after
    it (a turn torn by a crash was never acknowledged). An error turn adds
    nothing (the client retries it); an aborted one its partial reply, if any.
    """
    messages, turns = list(base.messages), base.assistant_turns
    user: tuple[object, object] | None = None
    for line in lines:
        kind = line.get("type")
        if kind == "user":
            user = (line.get("runId"), line.get("content"))
            continue
        if kind == "context" and isinstance(line.get("messages"), list):
            messages.extend(m for m in (_message(d.get("role"), d.get("content"))
                                        for d in line["messages"] if isinstance(d, dict)) if m)
        elif kind in ("assistant", "aborted") and user and user[0] == line.get("runId"):
            messages.extend(m for m in (_message("user", user[1]),
                                        _message("assistant", line.get("content") or None)) if m)
            turns += kind == "assistant"
        user = None
    return SessionHistory(tuple(messages), turns, True)
