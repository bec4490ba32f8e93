"""The control protocol's read and housekeeping methods, in the original Gateway's payload shapes.

Owns ``health``, ``status``, ``system-presence``, ``logs.tail``,
``models.list``, ``agents.list``, ``agent.identity.get``, ``sessions.*``,
``chat.history``, ``usage.*``, ``config.get`` and the methods of features this
gateway does not have (channels, cron, nodes, devices), which answer empty and
well-formed. Payloads have the original's keys and JSON types; the values are
ours. Where we keep no such value the field says so plainly (``0`` tokens in
listings, ``"disabled"`` heartbeats) and ``docs/protocol.md`` lists it. A few
fields of our own stay beside the original's where our own CLI reads them
(``turns``, ``createdAt``, ``lastRunId``, ``agentId`` in session lists), and
``reset`` in ``sessions.reset`` says whether there was a session. Reads go through the session store's API,
never to files; secrets never leave (``config.get`` masks them, raw text included).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Final

from .. import __version__, config as config_mod
from ..agents import sessions
from ..errors import ApiError
from ..agents import lines as transcript_lines
from .frames import MAIN_KEY, assistant_parts, content_parts, dumps, ms, session_id, usage_shape

if TYPE_CHECKING:
    from ..agents.transcripts import SessionInfo
    from .app import Gateway
    from .control import ControlConnection

__all__ = ["METHODS", "health_payload", "presence", "CONTEXT_TOKENS"]

# The context window reported for every model: this gateway does not know
# providers' windows (the original's default, so its clients compute sanely).
CONTEXT_TOKENS: Final = 200_000
# Sessions shown in health's and status's "recent" lists.
RECENT_SESSIONS: Final = 5
STATUS_RECENT_SESSIONS: Final = 10
# usage.cost reads at most this many keyed transcripts (the most recently updated).
MAX_USAGE_TRANSCRIPTS: Final = 2000
# chat.history sends at most this many bytes of messages (as JSON), the oldest dropped
# first, as the original does: a long session's history stays well under a client's
# message limit (25 MiB) and the connection's unread-output bound, which would cut it off.
MAX_HISTORY_BYTES: Final = 6 * 1024 * 1024
_HEARTBEAT_OFF: Final = {"enabled": False, "every": "disabled", "everyMs": None}

Params = dict[str, Any]


# ---- health, status, presence ----

def _recent(gateway: Gateway, agent_id: str | None, count: int) -> list[SessionInfo]:
    return gateway.runtime.store.list_sessions(agent_id)[:count]


def _sessions_summary(gateway: Gateway, agent_id: str) -> dict[str, Any]:
    now = time.time()
    infos = gateway.runtime.store.list_sessions(agent_id)
    return {"path": gateway.runtime.store.index_path(agent_id), "count": len(infos),
            "recent": [{"key": i.key, "updatedAt": ms(i.updated_at), "age": ms(now - i.updated_at)}
                       for i in infos[:RECENT_SESSIONS]]}


def health_payload(gateway: Gateway) -> dict[str, Any]:
    """The ``health`` method's payload, also the hello snapshot's and the ``health`` event's."""
    started = time.perf_counter()
    runtime = gateway.runtime
    default = runtime.default_agent.id
    agents = [{"agentId": a.id, "isDefault": a is runtime.default_agent,
               "heartbeat": {**_HEARTBEAT_OFF, "prompt": "", "target": "none", "ackMaxChars": 0},
               "sessions": _sessions_summary(gateway, a.id)} for a in runtime.agents.values()]
    return {"ok": not gateway.server.closing, "ts": ms(time.time()),
            "durationMs": int((time.perf_counter() - started) * 1000),
            "channels": {}, "channelOrder": [], "channelLabels": {}, "heartbeatSeconds": 0,
            "defaultAgentId": default, "agents": agents,
            "sessions": _sessions_summary(gateway, default)}


def _session_row(gateway: Gateway, info: SessionInfo, now: float) -> dict[str, Any]:
    agent = gateway.runtime.agents.get(info.agent_id)
    provider, _, model = (agent.model if agent else "/").partition("/")
    sid = session_id(info.key, info.created_at)
    return {"agentId": info.agent_id, "key": info.key, "kind": "direct", "sessionId": sid,
            "updatedAt": ms(info.updated_at), "age": ms(now - info.updated_at),
            "abortedLastRun": False, "inputTokens": 0, "outputTokens": 0, "totalTokens": 0,
            "remainingTokens": CONTEXT_TOKENS, "percentUsed": 0, "model": model,
            "contextTokens": CONTEXT_TOKENS, "flags": [f"id:{sid}"]}


async def m_health(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    return health_payload(conn.gateway)


async def m_status(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    gateway = conn.gateway
    runtime = gateway.runtime
    now = time.time()
    store = runtime.store
    by_agent = [{"agentId": a.id, "path": store.index_path(a.id), "count": len(store.list_sessions(a.id)),
                 "recent": [_session_row(gateway, i, now) for i in _recent(gateway, a.id, STATUS_RECENT_SESSIONS)]}
                for a in runtime.agents.values()]
    _, _, default_model = runtime.default_agent.model.partition("/")
    return {
        "heartbeat": {"defaultAgentId": runtime.default_agent.id,
                      "agents": [{"agentId": a.id, **_HEARTBEAT_OFF} for a in runtime.agents.values()]},
        "channelSummary": [], "queuedSystemEvents": [],
        "sessions": {"paths": [row["path"] for row in by_agent],
                     "count": store.session_count(),      # /health's "sessions"
                     "defaults": {"model": default_model, "contextTokens": CONTEXT_TOKENS},
                     "recent": [_session_row(gateway, i, now)
                                for i in _recent(gateway, None, STATUS_RECENT_SESSIONS)],
                     "byAgent": by_agent},
        # Ours: connection counts, as /health shows them (the original's clients ignore the key).
        "connections": gateway.connection_counts()}


# The original reports its host's architecture as Node's ``os.arch()`` names it.
_NODE_ARCH: Final = {"x86_64": "x64", "amd64": "x64", "i386": "ia32", "i686": "ia32", "x86": "ia32",
                     "aarch64": "arm64", "arm64": "arm64", "armv6l": "arm", "armv7l": "arm", "armv8l": "arm",
                     "ppc64le": "ppc64", "loongarch64": "loong64", "mips": "mips", "mipsel": "mipsel"}


def node_arch(machine: str) -> str:
    """``platform.machine()`` as Node's ``os.arch()`` spells it ("x86_64" is "x64");
    a name Node does not rename is kept, lower-case."""
    return _NODE_ARCH.get(machine.lower(), machine.lower())


def presence(conn_protocol: Any) -> list[dict[str, Any]]:
    """This gateway, then every connected control client, as the original lists them."""
    import platform      # here, not at import: serving HTTP never needs it
    gateway = conn_protocol.gateway
    host = socket.gethostname()
    now = ms(time.time())
    mode_text = f"Gateway: {host} ({gateway.host}) · app {__version__} · mode gateway · reason self"
    entries: list[dict[str, Any]] = [{
        "host": host, "ip": gateway.host, "version": __version__,
        "platform": f"{platform.system().lower()} {platform.release()}",
        "deviceFamily": platform.system(), "modelIdentifier": node_arch(platform.machine()),
        "mode": "gateway", "reason": "self", "text": mode_text, "ts": now}]
    for conn in sorted(conn_protocol.connections, key=lambda c: c.connected_at):
        entries.append(conn.presence())
    return entries


async def m_system_presence(conn: ControlConnection, params: Params, req_id: Any) -> list[dict[str, Any]]:
    return presence(conn.protocol)


async def m_logs_tail(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    tail = conn.gateway.log_buffer.tail(params.get("cursor"), params.get("limit", 500),
                                        params.get("maxBytes", 250_000))
    return {"file": "(memory: the gateway's own log lines)", "cursor": tail.cursor, "size": tail.size,
            "lines": tail.lines, "truncated": tail.truncated, "reset": tail.reset}


# ---- agents and models ----

async def m_models_list(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    runtime = conn.gateway.runtime
    seen: dict[tuple[str, str], None] = {}
    for agent in runtime.agents.values():
        provider, _, model = agent.model.partition("/")
        seen[(provider, model or provider)] = None
    for name, provider_config in runtime.config.models.providers:
        for model in provider_config.models or ():
            seen[(name, model)] = None
    return {"models": [{"id": model, "name": model, "provider": provider,
                        "contextWindow": CONTEXT_TOKENS, "reasoning": False}
                       for provider, model in seen]}


async def m_agents_list(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    runtime = conn.gateway.runtime
    return {"defaultId": runtime.default_agent.id, "mainKey": MAIN_KEY, "scope": "per-sender",
            "agents": [{"id": a.id, "name": a.name} for a in runtime.agents.values()]}


async def m_agent_identity(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    runtime = conn.gateway.runtime
    owner = sessions.agent_of(params["sessionKey"]) if params.get("sessionKey") else None
    agent = runtime.agent(owner or params.get("agentId"))
    return {"agentId": agent.id, "name": agent.name}


# ---- sessions ----

def _scoped(conn: ControlConnection, key: str, agent_id: str | None, param: str) -> tuple[str, str]:
    """(agent id, scoped key) of a key that may name its agent (``agent:<id>:...``)."""
    runtime = conn.gateway.runtime
    key = sessions.validate_key(key, param=param)
    owner = sessions.agent_of(key)
    agent = runtime.agent(owner or agent_id)
    return agent.id, key if owner else sessions.scoped_key(agent.id, key)


def _list_row(conn: ControlConnection, info: SessionInfo) -> dict[str, Any]:
    agent = conn.gateway.runtime.agents.get(info.agent_id)
    provider, _, model = (agent.model if agent else "/").partition("/")
    return {"key": info.key, "kind": "direct", "updatedAt": ms(info.updated_at),
            "sessionId": session_id(info.key, info.created_at), "abortedLastRun": False,
            "inputTokens": 0, "outputTokens": 0, "totalTokens": 0, "modelProvider": provider,
            "model": model or provider, "contextTokens": CONTEXT_TOKENS,
            # Ours, read by equabot's own CLI:
            "agentId": info.agent_id, "createdAt": ms(info.created_at), "turns": info.turns,
            "lastRunId": info.last_run_id}


async def m_sessions_list(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    runtime = conn.gateway.runtime
    agent_id = runtime.agent(params["agentId"]).id if params.get("agentId") else None
    infos = runtime.store.list_sessions(agent_id)
    now = time.time()
    if params.get("activeMinutes"):
        infos = [i for i in infos if now - i.updated_at <= params["activeMinutes"] * 60]
    if params.get("search"):
        infos = [i for i in infos if params["search"].lower() in i.key.lower()]
    if params.get("label") or params.get("spawnedBy"):
        infos = []                      # this gateway keeps no labels or spawn links
    infos = infos[:params.get("limit", len(infos))]
    agents = {a for a in ([agent_id] if agent_id else runtime.agents)}
    provider, _, model = runtime.default_agent.model.partition("/")
    return {"ts": ms(now),
            "path": runtime.store.index_path(next(iter(agents))) if len(agents) == 1 else "(multiple)",
            "count": len(infos),
            "defaults": {"modelProvider": provider, "model": model or provider,
                         "contextTokens": CONTEXT_TOKENS},
            "sessions": [_list_row(conn, i) for i in infos]}


def _entry(conn: ControlConnection, agent_id: str, key: str) -> dict[str, Any]:
    info = conn.gateway.runtime.store.session_info(agent_id, key)
    _, _, model = conn.gateway.runtime.agent(agent_id).model.partition("/")
    return {"sessionId": session_id(key, info.created_at if info else None),
            "updatedAt": ms(info.updated_at if info else time.time()), "systemSent": False,
            "abortedLastRun": False, "model": model, "contextTokens": CONTEXT_TOKENS,
            "inputTokens": 0, "outputTokens": 0, "totalTokens": 0}


async def m_sessions_preview(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    limit, max_chars = params.get("limit", 12), params.get("maxChars", 240)
    # All previews share chat.history's byte budget: 64 keys (one key 64 times too) of
    # 100 items of 100,000 characters would otherwise build a 640-million-character answer.
    left = MAX_HISTORY_BYTES
    previews = []
    for raw_key in params["keys"]:
        try:
            agent_id, key = _scoped(conn, raw_key, None, "keys")
        except ApiError:
            previews.append({"key": raw_key, "status": "missing", "items": []})
            continue
        if conn.gateway.runtime.store.session_info(agent_id, key) is None:
            previews.append({"key": raw_key, "status": "missing", "items": []})
            continue
        lines = await conn.gateway.runtime.store.read_transcript(agent_id, key)
        items = [{"role": m["role"], "text": _text_of(m)[:max_chars]}
                 for m in history_messages(conn, lines)[-limit:]]
        kept = _newest_within(items, left, newest=False)
        left -= len(dumps(kept).encode())
        previews.append({"key": raw_key, "status": "ok" if items else "empty", "items": kept})
    return {"ts": ms(time.time()), "previews": previews}


async def m_sessions_patch(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    agent_id, key = _scoped(conn, params["key"], None, "key")
    settings = sorted(name for name in params if name != "key")
    if settings:
        raise ApiError(400, f"sessions.patch: this gateway keeps no per-session settings "
                            f"({', '.join(settings)} cannot be set)", param=settings[0])
    return {"ok": True, "path": conn.gateway.runtime.store.index_path(agent_id), "key": key,
            "entry": _entry(conn, agent_id, key)}


async def m_sessions_reset(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    agent_id, key = _scoped(conn, params["key"], params.get("agentId"), "key")
    reset = await conn.gateway.runtime.forget_session(agent_id, key)
    # The key is now a blank session, as the original leaves it: its entry's
    # sessionId is the one the next turn records. "reset" is ours: was there a session?
    return {"ok": True, "key": key, "entry": _entry(conn, agent_id, key), "reset": reset}


async def m_sessions_delete(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    agent_id, key = _scoped(conn, params["key"], params.get("agentId"), "key")
    deleted = await conn.gateway.runtime.forget_session(agent_id, key, delete=True)
    return {"ok": True, "key": key, "deleted": deleted, "archived": []}


# ---- chat history ----

def _text_of(message: dict[str, Any]) -> str:
    return "".join(part.get("text", "") for part in message["content"])


def _number(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# Finish reasons as the original's messages name them (pi-ai's stopReason).
_STOP_REASONS: Final = {"tool_calls": "toolUse"}


def history_messages(conn: ControlConnection, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A transcript's conversation as the original's chat messages (content parts, timestamp).

    User messages carry text and image parts; a tool result is a
    ``{role: "toolResult", toolCallId, toolName, content, isError: false}``
    message; an assistant message's parts are its ``thinking``, its text and
    its ``toolCall``s. Lines of other types and fields of the wrong type are
    skipped or zeroed: a hand-edited transcript never fails the read.
    """
    providers = conn.gateway.runtime.providers
    out: list[dict[str, Any]] = []
    for line in lines:
        kind = line.get("type")
        content = line.get("content")
        if kind not in ("user", "assistant", "aborted", "tool"):
            continue
        parts = content if isinstance(content, str) else transcript_lines.content_of(content)
        if parts is None:
            continue
        at = line.get("at")
        timestamp = ms(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else 0
        if kind == "tool":
            call_id, name = line.get("toolCallId"), line.get("name")
            out.append({"role": "toolResult", "toolCallId": call_id if isinstance(call_id, str) else "",
                        "toolName": name if isinstance(name, str) else "", "content": content_parts(parts),
                        "isError": False, "timestamp": timestamp})
            continue
        message: dict[str, Any] = {
            "role": "user" if kind == "user" else "assistant",
            "content": [{"type": "text", "text": content}] if isinstance(content, str) else content_parts(parts),
            "timestamp": timestamp}
        if kind != "user" and isinstance(content, str) and ("toolCalls" in line or "reasoning" in line):
            reply = transcript_lines.reply_of(line)
            if reply is not None:
                message["content"] = assistant_parts(content, reply.reasoning, reply.tool_calls)
        if kind != "user":
            model_ref = line.get("model") if isinstance(line.get("model"), str) else ""
            provider, _, model = model_ref.partition("/")
            usage = line.get("usage") if isinstance(line.get("usage"), dict) else {}
            prompt, completion = _number(usage.get("prompt_tokens")), _number(usage.get("completion_tokens"))
            api = providers[provider].api if provider in providers else provider
            finish = line.get("finishReason")
            message.update({
                "api": api, "provider": provider, "model": model or provider,
                "usage": {**usage_shape(prompt, completion), "totalTokens": prompt + completion,
                          "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": 0}},
                "stopReason": "aborted" if kind == "aborted" else _STOP_REASONS.get(finish, finish)
                if isinstance(finish, str) else "stop"})
            del message["usage"]["total"]
        out.append(message)
    return out


async def m_chat_history(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    agent_id, key = _scoped(conn, params["sessionKey"], None, "sessionKey")
    store = conn.gateway.runtime.store
    info = store.session_info(agent_id, key)
    lines = await store.read_transcript(agent_id, key)
    messages = history_messages(conn, lines)
    start = max(0, len(messages) - params.get("limit", 200))
    while 0 < start < len(messages) and messages[start]["role"] == "toolResult":
        start -= 1          # a call and its results stay together: never cut between them
    messages = _newest_within(messages[start:], MAX_HISTORY_BYTES)
    return {"sessionKey": params["sessionKey"], "sessionId": session_id(key, info.created_at if info else None),
            "messages": messages, "thinkingLevel": "off"}


def _newest_within(messages: list[dict[str, Any]], budget: int, *, newest: bool = True
                   ) -> list[dict[str, Any]]:
    """The newest of ``messages`` whose JSON array takes at most ``budget`` bytes (and the
    newest one whatever its size, if ``newest``); tool results whose call did not fit are
    left out with them.

    Only the messages kept (and the first one that did not fit) are measured.
    """
    size, start = 1, len(messages)      # "[" and "]", less the comma the first one does not need
    while start > 0:
        size += len(dumps(messages[start - 1]).encode()) + 1
        if size > budget and (start < len(messages) or not newest):
            break
        start -= 1
    while start < len(messages) - 1 and messages[start]["role"] == "toolResult":
        start += 1          # results without their call: the call was too old to fit
    return messages[start:]


# ---- usage ----

async def m_usage_status(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    # Provider quota windows (the original reads its providers' accounts): none known here.
    return {"updatedAt": ms(time.time()), "providers": []}


async def m_usage_cost(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    days = params.get("days", 30)
    now = time.time()
    today = int(now // 86400)
    first_day = today - days + 1
    # Only the days that had usage, oldest first, as the original lists them
    # (its CLI prints the last row as "Latest day").
    daily: dict[int, list[int]] = {}

    def add(sums: dict[int, tuple[int, int]]) -> None:
        for day, (prompt, completion) in sums.items():
            if first_day <= day <= today:
                bucket = daily.setdefault(day, [0, 0])
                bucket[0] += prompt
                bucket[1] += completion

    # Each file is streamed and summed by the store (never held whole), outside
    # the thread that appends; past days' journals are summed once and kept.
    store = conn.gateway.runtime.store
    keyed = [i for i in store.list_sessions() if i.updated_at >= first_day * 86400][:MAX_USAGE_TRANSCRIPTS]
    for info in keyed:
        add(await store.transcript_usage(info.agent_id, info.key))
    for agent_id in conn.gateway.runtime.agents:
        for day in range(first_day, today + 1):
            add(await store.journal_usage(agent_id, day))
    rows = [_cost_row(time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), *daily[day]) for day in sorted(daily)]
    totals = _cost_row("", sum(r["input"] for r in rows), sum(r["output"] for r in rows))
    del totals["date"]
    return {"updatedAt": ms(now), "days": days, "daily": rows, "totals": totals}


def _cost_row(date: str, prompt: int, completion: int) -> dict[str, Any]:
    # No prices are configured here: every reply's cost is a known 0 (chat.history
    # shows usage.cost.total 0), and the original counts only unknown costs as missing.
    return {"date": date, "input": prompt, "output": completion, "cacheRead": 0, "cacheWrite": 0,
            "totalTokens": prompt + completion, "totalCost": 0, "missingCostEntries": 0}


# ---- config ----

async def m_config_get(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    gateway = conn.gateway
    # Secrets are always masked, the "raw" text too: it is the masked config, not the file.
    masked = config_mod.to_data(gateway.config, mask=True)
    raw = json.dumps(masked, indent=2, ensure_ascii=False)
    path = getattr(gateway, "config_path", None)
    return {"path": str(path) if path else "", "exists": bool(path) and os.path.exists(path),
            "raw": raw, "parsed": masked, "valid": True, "config": masked,
            "hash": hashlib.sha256(raw.encode()).hexdigest(), "issues": [], "warnings": [],
            "legacyIssues": []}


# ---- features this gateway does not have: empty and well-formed ----

async def m_channels_status(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    return {"ts": ms(time.time()), "channelOrder": [], "channelLabels": {}, "channelDetailLabels": {},
            "channelSystemImages": {}, "channelMeta": [], "channels": {}, "channelAccounts": {},
            "channelDefaultAccountId": {}}


async def m_cron_status(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    return {"enabled": False, "storePath": "", "jobs": 0, "nextWakeAtMs": None}


async def m_cron_list(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    return {"jobs": []}


async def m_node_list(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    return {"ts": ms(time.time()), "nodes": []}


async def m_device_pair_list(conn: ControlConnection, params: Params, req_id: Any) -> dict[str, Any]:
    return {"pending": [], "paired": []}


METHODS: Final = {
    "health": m_health, "status": m_status, "system-presence": m_system_presence,
    "logs.tail": m_logs_tail, "models.list": m_models_list, "agents.list": m_agents_list,
    "agent.identity.get": m_agent_identity, "sessions.list": m_sessions_list,
    "sessions.preview": m_sessions_preview, "sessions.patch": m_sessions_patch,
    "sessions.reset": m_sessions_reset, "sessions.delete": m_sessions_delete,
    "chat.history": m_chat_history, "usage.status": m_usage_status, "usage.cost": m_usage_cost,
    "config.get": m_config_get, "channels.status": m_channels_status, "cron.status": m_cron_status,
    "cron.list": m_cron_list, "node.list": m_node_list, "device.pair.list": m_device_pair_list,
}
