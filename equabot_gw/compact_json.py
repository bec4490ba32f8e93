"""Compact JSON text for the hot paths (transcript lines, completions, upstream requests).

``dumps(obj)`` returns exactly ``json.dumps(obj, ensure_ascii=False,
separators=(",", ":"))``. It skips the circular-reference check, so it is
for the gateway's own trees of dicts, lists and scalars only (a cycle would
raise RecursionError instead of ValueError).
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["dumps"]

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
