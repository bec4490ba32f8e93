"""JSON from untrusted sources: decoded within a depth bound, without recursion on its depth.

Every JSON text that enters from outside — HTTP bodies, WebSocket frames,
upstream replies, state files — is decoded here, never with a bare
``json.loads``. What this adds to the standard decoder:

- **Depth.** Nesting deeper than ``max_depth`` (default ``MAX_DEPTH``) is
  refused, so no consumer (ours, ``json.dumps``, a provider's encoder) can
  hit ``RecursionError`` on a value that came from outside.
- **Strict RFC 8259 values.** ``NaN``/``Infinity`` literals and numbers that
  overflow to infinity are refused; so are strings holding a lone UTF-16
  surrogate (``"\\ud800"``), which RFC 7493 §2.1 forbids and which would
  fail later wherever text is encoded as UTF-8.
- **A bounded share of the event loop.** ``loads_async`` decodes a text with
  many values in slices, giving the loop back between them, so a 20 MiB body
  of a million small objects does not stall every other client.

Every refusal is a ``json.JSONDecodeError`` (a ``ValueError``) with the
position, like the standard decoder's own errors; callers map it to their
wire (400 ``invalid_json``, WebSocket close 1007).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Generator
from typing import Any, Final

__all__ = ["MAX_DEPTH", "loads", "loads_async"]

# Deepest nesting accepted. Far above any real request (a chat completion with
# tool schemas nests ~20 levels) and far below the interpreter's recursion
# limit (1000), so even a recursive consumer of a decoded value is safe.
MAX_DEPTH: Final = 128
# Texts with at most this many values are decoded in one call (C speed: about
# 10 ms for the worst kind of value); larger ones are decoded in slices.
MAX_VALUES_AT_ONCE: Final = 50_000
# Texts longer than this are decoded in slices whatever their values (about
# 5 ms of C decoding; 20 MiB of long strings at once take over 80 ms).
MAX_CHARS_AT_ONCE: Final = 1 << 20
# Longest a slice of a sliced decode may hold the event loop (seconds).
SLICE_SECONDS: Final = 0.005
# Values decoded between two looks at the clock in a sliced decode.
_CHECK_EVERY: Final = 16


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# One decoder, built once: NaN/Infinity refused, overflowing numbers refused.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_decode: Final = _DECODER.decode

_scan: Final = _DECODER.scan_once
_JSON_WHITESPACE: Final = " \t\n\r"       # RFC 8259 §2: ws


def _decode_whole(text: str) -> Any:
    """``_decode(text)``: the C scanner called directly for a text that starts with its
    value (the usual one); one with whitespace first, or none, is left to ``_decode``."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _decode(text)        # leading whitespace, or the error at its position
    if end != len(text):
        rest = text[end:].lstrip(_JSON_WHITESPACE)
        if rest:
            raise json.JSONDecodeError("Extra data", text, len(text) - len(rest))
    return value


# An escaped surrogate ("\\uD800"-"\\uDFFF") somewhere in the text: only then can
# a decoded string hold a lone one (raw surrogates are not valid UTF-8). Both are
# compiled by ``re`` on first use (and cached there): most texts never need them.
_ESCAPED_SURROGATE: Final = r"\\u[dD][89a-fA-F]"
_LONE_SURROGATE: Final = "[\ud800-\udfff]"


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one JSON text in one call, refusing what the module docstring lists.

    ``data`` as bytes is decoded like ``json.loads`` does (UTF-8, -16 or -32
    by RFC 8259's detection). Raises ``json.JSONDecodeError`` (position
    included) for invalid JSON, nesting deeper than ``max_depth``,
    NaN/Infinity, numbers overflowing to infinity, and lone surrogates.
    Holds the event loop for the whole decode: use ``loads_async`` for
    inputs that may be large on a serving path.
    """
    text = _text(data)
    try:
        value = _decode_whole(text)
    except RecursionError:
        raise _too_deep(text, 0, max_depth) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:           # from the number and constant hooks
        raise json.JSONDecodeError(str(exc), text, 0) from None
    # Cheap guards first (an upstream event is decoded per word): nesting
    # deeper than max_depth takes more than 2 * max_depth characters, and an
    # escaped surrogate starts with a backslash-u.
    if len(text) > 2 * max_depth and text.count("[") + text.count("{") > max_depth:
        _check_depth(value, text, max_depth)
    if "\\u" in text and re.search(_ESCAPED_SURROGATE, text) is not None:
        _check_surrogates(value, text)
    return value


async def loads_async(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``loads``, but a text with many values is decoded in slices of the event loop.

    A text that can hold at most ``MAX_VALUES_AT_ONCE`` values (counted
    cheaply from its commas and brackets) is decoded at once; a larger one by
    an iterative decoder that returns to the loop at least every
    ``SLICE_SECONDS``. Same result and errors as ``loads``.
    """
    text = _text(data)
    if len(text) <= MAX_CHARS_AT_ONCE and \
            text.count(",") + text.count("[") + text.count("{") <= MAX_VALUES_AT_ONCE:
        return loads(text, max_depth=max_depth)
    steps = _iterdecode(text, max_depth)
    deadline = time.perf_counter() + SLICE_SECONDS
    while True:
        try:
            next(steps)
        except StopIteration as done:
            value = done.value
            break
        except json.JSONDecodeError:
            raise
        except ValueError as exc:       # a number out of range
            raise json.JSONDecodeError(str(exc), text, 0) from None
        if time.perf_counter() >= deadline:
            await asyncio.sleep(0)
            deadline = time.perf_counter() + SLICE_SECONDS
    if re.search(_ESCAPED_SURROGATE, text) is not None:
        _check_surrogates(value, text)
    return value


def _text(data: bytes | bytearray | str) -> str:
    if isinstance(data, str):
        return data
    # A text whose first two bytes are ASCII other than NUL (``{"``) has no BOM and
    # is UTF-8 by RFC 8259's detection: ``json.detect_encoding`` is asked for the rest.
    start = data[:2]
    encoding = "utf-8" if start.isascii() and b"\0" not in start else json.detect_encoding(data)
    try:
        # Strict decoding: UTF-8 bytes of a surrogate (ED A0 80) are not UTF-8 (RFC 3629 §3).
        return bytes(data).decode(encoding)
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"invalid {exc.encoding} text", "", exc.start) from None


def _too_deep(text: str, pos: int, max_depth: int) -> json.JSONDecodeError:
    return json.JSONDecodeError(f"nested deeper than {max_depth} levels", text, pos)


def _check_depth(value: Any, text: str, max_depth: int) -> None:
    # Breadth first, one level at a time: a list of the containers at each
    # depth, no recursion and no per-node generator.
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise _too_deep(text, 0, max_depth)
        below = []
        for container in level:
            for item in (container.values() if type(container) is dict else container):
                kind = type(item)
                if kind is dict or kind is list:
                    below.append(item)
        level = below


def _check_surrogates(value: Any, text: str) -> None:
    pending = [value]
    lone = re.compile(_LONE_SURROGATE).search       # looked up once, not per string
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str:
            if not item.isascii() and lone(item) is not None:
                raise json.JSONDecodeError("lone UTF-16 surrogate in a string", text,
                                           re.search(_ESCAPED_SURROGATE, text).start())  # type: ignore[union-attr]
        elif kind is dict:
            pending.extend(item)            # keys are strings too
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)


# -- the iterative decoder (RFC 8259 §2-§7), for sliced decoding ---------------------

_scanstring: Final = json.decoder.scanstring
# This decoder's patterns are compiled by ``re`` on first use (and cached there):
# only large texts come this way.
_WHITESPACE: Final = r"[ \t\n\r]*"
_NUMBER: Final = r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?"
_LITERALS: Final = (("true", True), ("false", False), ("null", None))


def _iterdecode(s: str, max_depth: int) -> Generator[None, None, Any]:
    """Decode ``s``; yields (nothing) every ``_CHECK_EVERY`` steps so the caller can pause.

    Open containers are tracked on an explicit stack. Strings, numbers, every
    container that closes within ``_WINDOW_CHARS`` and runs of members that
    fit in one window are read by the standard library's C scanner, so the
    Python loop runs per large container, not per value. A window found too
    small costs at most one window of wasted parsing, and no new attempt of
    the same kind starts within half a window of it: the waste stays below
    twice the text's length, and the whole decode linear.
    """
    skip = re.compile(_WHITESPACE).match
    number = re.compile(_NUMBER).match          # both looked up once per decode, not per value
    end = len(s)
    stack: list[Any] = []           # open containers, innermost last
    keys: list[Any] = []            # per open container: its pending key (dicts) or None
    next_container_try = 0          # no C attempt on a container before this position
    next_members_try = 0            # no C attempt on a run of members before this position
    i = skip(s, 0).end()
    count = 0
    while True:
        count += 1
        if count % _CHECK_EVERY == 0:
            yield
        # -- one value starts at i --
        c = s[i:i + 1]
        if c == "{" or c == "[":
            small = _small_container(s, i) if i >= next_container_try else None
            if small is not None and _fits(s, i, small, max_depth - len(stack)):
                value, i = small
            else:
                if i >= next_container_try:
                    next_container_try = i + _WINDOW_CHARS // 2
                if len(stack) >= max_depth:
                    raise _too_deep(s, i, max_depth)
                i = skip(s, i + 1).end()
                closer = "}" if c == "{" else "]"
                if s[i:i + 1] != closer:
                    stack.append({} if c == "{" else [])
                    keys.append(None)
                    if c == "{":
                        keys[-1], i = _key(s, i, skip)
                    continue
                value = {} if c == "{" else []
                i += 1
        elif c == '"':
            value, i = _scanstring(s, i + 1, True)
        else:
            value, i = _scalar(s, i, number)
        # -- a complete value: hand it to its container, closing finished ones --
        while True:
            if not stack:
                i = skip(s, i).end()
                if i != end:
                    raise json.JSONDecodeError("Extra data", s, i)
                return value
            parent = stack[-1]
            if type(parent) is list:
                parent.append(value)
            else:
                parent[keys[-1]] = value
            i = skip(s, i).end()
            c = s[i:i + 1]
            if c == ",":
                i = skip(s, i + 1).end()
                if i >= next_members_try:
                    # Many members ahead: take as many as one window holds in one C call.
                    after = _members(s, i, parent, max_depth - len(stack))
                    if after is None:
                        next_members_try = i + _WINDOW_CHARS // 2
                    else:
                        i = after
                if type(parent) is dict:
                    keys[-1], i = _key(s, i, skip)
                break
            if c == ("]" if type(parent) is list else "}"):
                value = stack.pop()
                keys.pop()
                i += 1
                continue
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)


def _scalar(s: str, i: int, number: Callable[[str, int], re.Match[str] | None]) -> tuple[Any, int]:
    """A number (``number``: the match of ``_NUMBER``) or a literal at ``i``, and the position after it."""
    match = number(s, i)
    if match is not None:
        integer, fraction, exponent = match.groups()
        value = _finite_float(match.group()) if fraction or exponent else int(integer)
        return value, match.end()
    for word, literal in _LITERALS:
        if s.startswith(word, i):
            return literal, i + len(word)
    for word in ("NaN", "Infinity", "-Infinity"):
        if s.startswith(word, i):
            raise json.JSONDecodeError(f"{word} is not a JSON value", s, i)
    raise json.JSONDecodeError("Expecting value", s, i)


# A container that closes within this many chars is decoded by one C call.
_WINDOW_CHARS: Final = 4096
_scan_once: Final = _DECODER.scan_once


def _small_container(s: str, i: int) -> tuple[Any, int] | None:
    """(value, end) of the container at ``i`` if it ends within one window, else None."""
    window = s[i:i + _WINDOW_CHARS]
    try:
        value, used = _scan_once(window, 0)
    except (ValueError, StopIteration, RecursionError):
        return None     # cut by the window, or an error the iterative path will report exactly
    return value, i + used


# The last comma in a window that follows the end of a container, else of any
# value (a quote, a digit, the last letter of true/false/null): the likeliest
# separators of members. Any comma would be sound (see _members); these save
# attempts that would fail.
_LAST_CLOSER_SEPARATOR: Final = r'(?s).*[\]}][ \t\n\r]*,'
_LAST_SEPARATOR: Final = r'(?s).*[\]}"0-9el][ \t\n\r]*,'


def _members(s: str, i: int, parent: list[Any] | dict[str, Any], room: int) -> int | None:
    """Add the members that start at ``i`` and end at a comma within one window to ``parent``.

    Returns the position after the last comma taken, or None when no cut of
    the window holds whole members. Sound because the window's text up to a
    comma, wrapped in brackets, decodes only if that comma separates members
    of ``parent``: a comma inside a string or a nested container leaves the
    wrapped text unterminated, and the decoder refuses it. Two cuts are
    tried: after the last nested container (members that are containers),
    and before the first closing bracket (scalars up to ``parent``'s end).
    """
    window = s[i:i + _WINDOW_CHARS]
    cuts = []
    after_container = re.match(_LAST_CLOSER_SEPARATOR, window)
    if after_container is not None:
        cuts.append(after_container.end() - 1)
    first_closer = min(p for p in (window.find("]"), window.find("}"), len(window)) if p >= 0)
    before_closer = re.compile(_LAST_SEPARATOR).match(window, 0, first_closer)
    if before_closer is not None and before_closer.end() - 1 not in cuts:
        cuts.append(before_closer.end() - 1)
    opener, closer = ("[", "]") if type(parent) is list else ("{", "}")
    for cut in cuts:
        wrapped = opener + window[:cut] + closer
        try:
            values, used = _scan_once(wrapped, 0)
        except (ValueError, StopIteration, RecursionError):
            continue
        if used != len(wrapped) or not _fits(wrapped, 0, (values, used), room + 1):
            continue
        if type(parent) is list:
            parent.extend(values)
        else:
            parent.update(values)
        return re.compile(_WHITESPACE).match(s, i + cut + 1).end()
    return None


def _fits(s: str, i: int, small: tuple[Any, int], room: int) -> bool:
    """Whether a decoded small container nests at most ``room`` levels."""
    value, end = small
    if s.count("[", i, end) + s.count("{", i, end) <= room:
        return True
    try:
        _check_depth(value, s, room)
    except json.JSONDecodeError:
        return False        # the iterative path raises with the position
    return True


def _key(s: str, i: int, skip: Any) -> tuple[str, int]:
    """A member's name and the position of its value (after the ':')."""
    if s[i:i + 1] != '"':
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, i)
    key, i = _scanstring(s, i + 1, True)
    i = skip(s, i).end()
    if s[i:i + 1] != ":":
        raise json.JSONDecodeError("Expecting ':' delimiter", s, i)
    return key, skip(s, i + 1).end()
