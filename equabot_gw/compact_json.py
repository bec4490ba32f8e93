"""Compact JSON text for the hot paths (transcript lines, completions, upstream requests).

``dumps(obj)`` returns exactly ``json.dumps(obj, ensure_ascii=False,
separators=(",", ":"))``. It skips the circular-reference check, so it is
for the gateway's own trees of dicts, lists and scalars only (a cycle would
raise RecursionError instead of ValueError). ``dumps_async`` returns the same
text for trees too large to encode in one step of the event loop (a 20 MiB
message, ten thousand of them): it encodes them in slices.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Final

__all__ = ["dumps", "dumps_async", "dumps_into", "LARGE_CHARS"]

_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

if json.encoder.c_make_encoder is not None:
    # JSONEncoder.encode builds a new C encoder on every call; building it once
    # takes a third off a completion object and half off a transcript line.
    _c_encode = json.encoder.c_make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring,
        None, ":", ",", False, False, True)

    def dumps(obj: Any) -> str:
        """``obj`` as compact JSON text, non-ASCII characters kept as they are."""
        return "".join(_c_encode(obj, 0))
else:       # an interpreter without the C accelerator
    def dumps(obj: Any) -> str:
        """``obj`` as compact JSON text, non-ASCII characters kept as they are."""
        return _ENCODER.encode(obj)


# Trees whose strings hold fewer characters than this are encoded in one call
# (escaping costs about 7 ns a character: 256 Ki characters are about 2 ms).
LARGE_CHARS: Final = 256 * 1024
# dumps_async: the longest string escaped in one call, and the longest it
# holds the loop between two returns to it (seconds).
_STRING_SLICE_CHARS: Final = 64 * 1024
_SLICE_SECONDS: Final = 0.005
_escape: Final = json.encoder.encode_basestring


async def dumps_async(obj: Any) -> str:
    """``dumps(obj)``, returning to the event loop at least every few milliseconds.

    For the gateway's own trees (dicts, lists, scalars) that may be large;
    callers that know the tree is small (fewer than ``LARGE_CHARS`` characters
    of strings) call ``dumps``. Containers are walked recursively: the trees
    are ours and a few levels deep, never untrusted depth.
    """
    out: list[str] = []
    await dumps_into(obj, out)
    return "".join(out)


async def dumps_into(obj: Any, out: list[str]) -> None:
    """``dumps_async``, but the text is appended to ``out`` in pieces (not joined)."""
    await _walk(obj, out, [time.perf_counter() + _SLICE_SECONDS])


async def _walk(obj: Any, out: list[str], deadline: list[float]) -> None:
    kind = type(obj)
    if kind is dict:
        out.append("{")
        for i, (key, value) in enumerate(obj.items()):
            out.append(("," if i else "") + _escape(key) + ":")
            await _walk(value, out, deadline)
        out.append("}")
    elif kind is list or kind is tuple:
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            await _walk(value, out, deadline)
        out.append("]")
    elif kind is str and len(obj) > _STRING_SLICE_CHARS:
        # Escaping is per character: slices escape to the same text as the whole.
        out.append('"')
        for start in range(0, len(obj), _STRING_SLICE_CHARS):
            out.append(_escape(obj[start:start + _STRING_SLICE_CHARS])[1:-1])
            await _pause(deadline)
        out.append('"')
        return
    else:
        out.append(dumps(obj))
    await _pause(deadline)


async def _pause(deadline: list[float]) -> None:
    if time.perf_counter() >= deadline[0]:
        await asyncio.sleep(0)
        deadline[0] = time.perf_counter() + _SLICE_SECONDS
