"""The params of every control method: one schema per method, checked before the method runs.

Owns what a request may carry. A schema names each property of ``params``
with its JSON type and range; a property it does not name is refused, as the
original Gateway refuses it, with the original's wording::

    invalid sessions.list params: at root: unexpected property 'bogusParam'
    invalid agent.wait params: at /timeoutMs: must be integer
    invalid agent params: at root: must have required property 'message'

Numbers are finite (the frame decoder refuses NaN and Infinity, and every
number here has a range); strings and arrays have a length bound. Nested
objects (``client``, ``auth``, ``device``) are checked one level deep for the
fields this gateway reads; their other fields are the client's business and
are ignored, so newer clients keep working. Nothing here recurses on input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ApiError

__all__ = ["Prop", "SCHEMAS", "check", "invalid", "shown"]

# Longest string any property may hold (a chat message included): the frame
# itself is bounded by gateway.ws.maxPayloadBytes, this only names the rule.
MAX_STRING_CHARS: Final = 25 * 1024 * 1024
# Longest identifier-like string (ids, keys, names, labels).
MAX_NAME_CHARS: Final = 512
# Most items an array property may hold.
MAX_ITEMS: Final = 256
# Longest wait a client may ask for: one day, in milliseconds.
MAX_TIMEOUT_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class Prop:
    """One property: JSON type, whether required, and its range.

    ``kind`` is "string", "integer", "number", "boolean", "object", "array" or
    "any"; ``lo``/``hi`` bound numbers, ``max_len`` strings and arrays (items
    of an array are strings when ``items`` is "string"); ``nullable`` admits
    null as "not given"; ``fields`` checks an object's known members one level deep.
    """

    kind: str
    required: bool = False
    lo: float | None = None
    hi: float | None = None
    min_len: int = 0
    max_len: int = MAX_NAME_CHARS
    items: str | None = None
    nullable: bool = False
    fields: Mapping[str, Prop] | None = None


def _s(required: bool = False, *, min_len: int = 0, max_len: int = MAX_NAME_CHARS,
       nullable: bool = False) -> Prop:
    return Prop("string", required, min_len=min_len, max_len=max_len, nullable=nullable)


def _i(lo: int = 0, hi: int = 2**53 - 1, required: bool = False, nullable: bool = False) -> Prop:
    return Prop("integer", required, lo=lo, hi=hi, nullable=nullable)


def _b(nullable: bool = False) -> Prop:
    return Prop("boolean", nullable=nullable)


def _strings(required: bool = False, max_len: int = MAX_ITEMS) -> Prop:
    return Prop("array", required, max_len=max_len, items="string")


_ANY: Final = Prop("any")
_OBJECT: Final = Prop("object")
_MESSAGE: Final = _s(True, max_len=MAX_STRING_CHARS)
_KEY: Final = _s(True, min_len=1)
_TIMEOUT_MS: Final = _i(0, MAX_TIMEOUT_MS)

_CLIENT: Final = Prop("object", fields={
    "id": _s(), "displayName": _s(), "version": _s(), "platform": _s(), "deviceFamily": _s(),
    "modelIdentifier": _s(), "mode": _s(), "instanceId": _s()})
_AUTH: Final = Prop("object", fields={"token": _s(max_len=4096), "password": _s(max_len=4096)})
_DEVICE: Final = Prop("object", fields={
    "id": _s(), "publicKey": _s(max_len=4096), "signature": _s(max_len=4096),
    "signedAt": _i(), "nonce": _s()})

# Every method's params. A method absent here takes none ({} or no params).
SCHEMAS: Final[Mapping[str, Mapping[str, Prop]]] = {
    "connect": {
        "minProtocol": _i(0, 1000, True), "maxProtocol": _i(0, 1000, True), "client": _CLIENT,
        "caps": _strings(), "commands": _strings(), "permissions": _OBJECT, "pathEnv": _s(max_len=65536),
        "role": _s(), "scopes": _strings(), "device": _DEVICE, "auth": _AUTH, "locale": _s(),
        "userAgent": _s(max_len=4096)},
    "health": {"probe": _b()},
    "status": {},
    "system-presence": {},
    "logs.tail": {"cursor": _i(), "limit": _i(1, 5000), "maxBytes": _i(1, 1_000_000)},
    "models.list": {},
    "agents.list": {},
    "agent.identity.get": {"agentId": _s(), "sessionKey": _s()},
    "agent": {
        "message": _MESSAGE, "agentId": _s(), "to": _s(), "replyTo": _s(), "sessionId": _s(),
        "sessionKey": _s(), "thinking": _s(), "deliver": _b(), "attachments": Prop("array"),
        "channel": _s(), "replyChannel": _s(), "accountId": _s(), "replyAccountId": _s(),
        "threadId": _s(), "groupId": _s(), "groupChannel": _s(), "groupSpace": _s(),
        "timeout": _i(), "lane": _s(),
        "extraSystemPrompt": _s(max_len=MAX_STRING_CHARS), "idempotencyKey": _s(min_len=1),
        "label": _s(), "spawnedBy": _s()},
    "agent.wait": {"runId": _s(True, min_len=1), "timeoutMs": _TIMEOUT_MS},
    "agent.subscribe": {"runId": _s(True, min_len=1), "afterSeq": _i()},
    "chat.send": {
        "sessionKey": _KEY, "message": _MESSAGE, "thinking": _s(), "deliver": _b(),
        "attachments": Prop("array"), "timeoutMs": _TIMEOUT_MS, "idempotencyKey": _s(min_len=1)},
    "chat.history": {"sessionKey": _KEY, "limit": _i(1, 1000)},
    # sessionKey may be left out when runId names the run (ours: a CLI that
    # interrupts a queued stateless run does not know its key yet).
    "chat.abort": {"sessionKey": _s(min_len=1), "runId": _s()},
    "sessions.list": {
        "limit": _i(1, 100_000), "activeMinutes": _i(1, 10**9), "includeGlobal": _b(),
        "includeUnknown": _b(), "includeDerivedTitles": _b(), "includeLastMessage": _b(),
        "label": _s(), "spawnedBy": _s(), "agentId": _s(), "search": _s()},
    "sessions.preview": {"keys": _strings(True, max_len=64), "limit": _i(1, 100),
                         "maxChars": _i(1, 100_000)},
    "sessions.patch": {
        "key": _KEY, **{name: _s(nullable=True) for name in (
            "label", "thinkingLevel", "verboseLevel", "reasoningLevel", "responseUsage",
            "elevatedLevel", "execHost", "execSecurity", "execAsk", "execNode", "model",
            "spawnedBy", "sendPolicy", "groupActivation")}},
    "sessions.reset": {"key": _KEY, "agentId": _s()},
    "sessions.delete": {"key": _KEY, "deleteTranscript": _b(), "agentId": _s()},
    "usage.status": {},
    "usage.cost": {"days": _i(1, 3660)},
    "config.get": {},
    "channels.status": {"probe": _b(), "timeoutMs": _TIMEOUT_MS},
    "cron.status": {},
    "cron.list": {"includeDisabled": _b()},
    "node.list": {},
    "device.pair.list": {},
}

_TYPE_NAMES: Final = {"string": "string", "integer": "integer", "number": "number",
                      "boolean": "boolean", "object": "object", "array": "array"}


def invalid(method: str, where: str, problem: str) -> ApiError:
    """The error for one params problem, worded as the original Gateway words it."""
    return ApiError(400, f"invalid {method} params: at {where}: {problem}", code="invalid_params")


def check(method: str, params: Any) -> dict[str, Any]:
    """``params`` (None means {}) checked against ``method``'s schema; raises ``ApiError`` 400.

    Returns the params with null-valued optional properties removed, so a
    method reads ``params.get(name)`` and sees None for both.
    """
    schema = SCHEMAS.get(method, {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise invalid(method, "root", "must be object")
    for name in params:
        if name not in schema:
            raise invalid(method, "root", f"unexpected property '{shown(name)}'")
    for name, prop in schema.items():
        if prop.required and params.get(name) is None:
            raise invalid(method, "root", f"must have required property '{name}'")
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None and (schema[name].nullable or not schema[name].required):
            continue
        problem = _problem(schema[name], value)
        if problem is not None:
            raise invalid(method, f"/{name}{problem[0]}", problem[1])
        out[name] = int(value) if schema[name].kind == "integer" else value
    return out


def _problem(prop: Prop, value: Any) -> tuple[str, str] | None:
    """(sub-path, what is wrong) for ``value`` against ``prop``, or None if it fits."""
    kind = prop.kind
    if kind == "any":
        return None
    if not _is(kind, value):
        return "", f"must be {_TYPE_NAMES[kind]}"
    if kind in ("integer", "number"):
        if prop.lo is not None and value < prop.lo:
            return "", f"must be >= {_number(prop.lo)}"
        if prop.hi is not None and value > prop.hi:
            return "", f"must be <= {_number(prop.hi)}"
    elif kind == "string":
        if len(value) < prop.min_len:
            return "", f"must NOT have fewer than {prop.min_len} characters"
        if len(value) > prop.max_len:
            return "", f"must NOT have more than {prop.max_len} characters"
    elif kind == "array":
        if len(value) > prop.max_len:
            return "", f"must NOT have more than {prop.max_len} items"
        if prop.items is not None:
            for i, item in enumerate(value):
                if not _is(prop.items, item) or len(item) > MAX_NAME_CHARS:
                    return f"/{i}", f"must be {prop.items} of at most {MAX_NAME_CHARS} characters"
    elif kind == "object" and prop.fields:
        for name, field in prop.fields.items():
            member = value.get(name)
            if member is not None:
                problem = _problem(field, member)   # fields are scalars: one level, no recursion
                if problem is not None:
                    return f"/{name}{problem[0]}", problem[1]
    return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or \
            isinstance(value, float) and value.is_integer()
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    return True


def shown(name: str) -> str:
    """A name (property, method) as an error message shows it: at most 64 characters."""
    return name if len(name) <= 64 else name[:64] + "…"
