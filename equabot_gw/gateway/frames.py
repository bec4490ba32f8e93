"""Control-protocol frames: encoding, the error shape, and names shared by the method modules.

Frames (the original Gateway's, protocol 3)::

    {"type":"req","id","method","params"}
    {"type":"res","id","ok":true,"payload"} | {"type":"res","id","ok":false,"error":{"code","message"}}
    {"type":"event","event","payload","seq"[,"stateVersion"]}

``error_shape`` is the one map from our errors to ``{code, message}``;
``dumps`` the one encoder (compact, UTF-8 text, never failing on a lone
surrogate that came from a transcript).
"""

from __future__ import annotations

import json
from typing import Any, Final

from .. import safejson
from ..agents.types import AudioPart, ImagePart, Part, TextPart, ToolCall
from ..errors import ApiError, RunError, RunTimedOut, http_status

__all__ = ["DEFERRED", "MAIN_KEY", "main_session_key", "dumps", "error_shape", "session_id", "ms",
           "usage_shape", "agent_final", "assistant_parts", "content_parts", "arguments_object"]

# A method returns this when it answers later itself (agent, chat.send).
DEFERRED: Final = object()
# Each agent's main session is agent:<id>:<MAIN_KEY> (hello-ok's sessionDefaults):
# where the original runs an ``agent`` request that names no session.
MAIN_KEY: Final = "main"

_ERROR_CODES: Final = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN",
                       404: "NOT_FOUND", 409: "CONFLICT", 429: "RATE_LIMITED",
                       503: "UNAVAILABLE", 504: "AGENT_TIMEOUT"}

_encode: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_ascii: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode

# Session ids are UUIDs derived from the session key and its creation time:
# stable across restarts (both are in the transcript header), new after a reset.
_SESSION_NS: Final = "6f1c2d0e-8f8b-4f7e-9a57-2a4c1f0f3e11"


def dumps(value: Any) -> str:
    """Compact JSON text that can be sent as UTF-8 (a lone surrogate is kept escaped)."""
    text = _encode(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _encode_ascii(value)
    return text


def error_shape(exc: BaseException) -> dict[str, Any]:
    """``{code, message[, retryAfterMs]}`` for an error; anything unexpected reveals nothing."""
    status = http_status(exc)
    code = _ERROR_CODES.get(status, "UNAVAILABLE" if status >= 500 else "INVALID_REQUEST")
    if isinstance(exc, RunError):
        code = "AGENT_TIMEOUT" if isinstance(exc, RunTimedOut) else \
            "ABORTED" if exc.reason == "aborted" else "UNAVAILABLE"
    message = exc.message if isinstance(exc, ApiError) else (
        str(exc) if isinstance(exc, RunError) else "internal error")
    shape: dict[str, Any] = {"code": code, "message": message}
    retry_after = dict(exc.headers).get("retry-after") if isinstance(exc, ApiError) else None
    if retry_after:
        shape["retryAfterMs"] = int(float(retry_after) * 1000)
    return shape


def session_id(key: str, created_at: float | None) -> str:
    """The ``sessionId`` of a session: a UUID of its key and creation time (None: not created yet)."""
    stamp = "new" if created_at is None else repr(float(created_at))
    import uuid      # here, not at import: serving HTTP never needs it
    return str(uuid.uuid5(uuid.UUID(_SESSION_NS), f"{key}\n{stamp}"))


def main_session_key(agent_id: str) -> str:
    """Agent ``agent_id``'s main session key, ``agent:<agent_id>:main``."""
    return f"agent:{agent_id}:{MAIN_KEY}"


def ms(seconds: float) -> int:
    """Epoch seconds as the integer milliseconds the protocol carries."""
    return int(seconds * 1000)


def usage_shape(prompt: int, completion: int) -> dict[str, int]:
    """Token counts as the original's ``agentMeta.usage``."""
    return {"input": prompt, "output": completion, "cacheRead": 0, "cacheWrite": 0,
            "total": prompt + completion}


def agent_final(run_id: str, status: str, text: str, *, model_ref: str, session_id: str,
                duration_ms: int, prompt_tokens: int = 0, completion_tokens: int = 0,
                stop_reason: str | None = None) -> dict[str, Any]:
    """The ``agent`` method's final payload in the original's shape (also what ``agent --json`` prints).

    ``status`` is "ok" or "aborted" (an aborted run answers with its partial
    text and ``meta.aborted``); ``model_ref`` is "provider/model".
    """
    provider, _, model = model_ref.partition("/")
    meta: dict[str, Any] = {
        "durationMs": duration_ms,
        "agentMeta": {"sessionId": session_id, "provider": provider, "model": model or provider,
                      "usage": usage_shape(prompt_tokens, completion_tokens)},
        "aborted": status == "aborted"}
    if stop_reason is not None:
        meta["stopReason"] = stop_reason
    return {"runId": run_id, "status": status,
            "summary": "completed" if status == "ok" else status,
            "result": {"payloads": [{"text": text, "mediaUrl": None}] if text else [], "meta": meta}}


# -- content parts as the original's messages carry them (pi-ai's shapes) ------------

def content_parts(content: str | tuple[Part, ...]) -> list[dict[str, Any]]:
    """A message content as parts: ``{type:"text",text}``; an image as ``{type:"image",
    data, mimeType}`` (a data URL split) or ``{type:"image", url}``; audio, which these
    messages have no part for, as the text "[audio]"."""
    if type(content) is str:
        return [{"type": "text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content:
        if type(part) is TextPart:
            parts.append({"type": "text", "text": part.text})
        elif type(part) is ImagePart:
            inline = part.inline()
            if inline is not None:
                parts.append({"type": "image", "data": inline[1], "mimeType": inline[0]})
            else:
                parts.append({"type": "image", "url": part.url})
        elif type(part) is AudioPart:
            parts.append({"type": "text", "text": "[audio]"})
    return parts


def assistant_parts(text: str, reasoning: str, calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """An assistant message's parts: ``thinking``, then the text (left out when the
    reply is only calls), then a ``toolCall`` part per call (arguments as an object)."""
    parts: list[dict[str, Any]] = [{"type": "thinking", "thinking": reasoning}] if reasoning else []
    if text or not calls:
        parts.append({"type": "text", "text": text})
    parts.extend({"type": "toolCall", "id": c.id, "name": c.name, "arguments": arguments_object(c.arguments)}
                 for c in calls)
    return parts


def arguments_object(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as an object ({} when they are not a JSON object)."""
    try:
        value = safejson.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
