"""The ``agent`` and ``sessions`` subcommands: one run from the terminal, and the session store.

``agent --local`` runs the runtime in this process (``agents.runtime.run``,
like every other door) and prints the reply as it streams; without
``--local`` the same run goes to a running gateway over the WebSocket control
protocol: the one recorded in the state dir's lock, or an explicit ``--url``
— never a guess such as the configured port, since a secret is sent — and
only the secret of the gateway's auth mode is presented. ``sessions`` reads
and edits the store under the state dir, through its gateway while one runs.
Returns exit codes; printing is the only side effect besides the run itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import config as config_mod, statelock
from .agents import runtime as agent_runtime
from .agents.events import Delta, Ended, Failed
from .agents.lines import chat_messages
from .agents.sessions import (SessionStore, agent_of, scoped_key, user_key,
                              validate_key)
from .agents.types import AgentRequest, AgentResult
from .cli import env_secret, load_config, printable, say_error
from .errors import ApiError, ConnectionClosed, GatewayError, ProtocolError, RunError

# Ctrl-C on a remote run: how long the CLI tries to have the gateway abort it.
ABORT_TIMEOUT = 3.0
# How long the answer to ``connect`` may take once the WebSocket is open: as long as
# the gateway itself gives a client for that phase. A server that accepts the
# WebSocket but is no gateway (an echo, a wrong path of another server) never answers.
CONNECT_TIMEOUT = 10.0
# What the original's command line prints for a run that replied nothing.
NO_REPLY = "No reply from agent."


def _result_json(result: AgentResult, session_created_at: float | None, started: float) -> str:
    """A local run's result as ``agent --json`` prints it: the gateway's ``agent`` final payload,
    indented by two spaces as the original's CLI prints it."""
    from .gateway.frames import agent_final, ms, session_id
    return json.dumps(agent_final(
        result.run_id, "ok", result.text, model_ref=result.model,
        session_id=session_id(result.session_key, session_created_at),
        duration_ms=ms(time.time() - started), prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens, stop_reason=result.finish_reason),
        indent=2, ensure_ascii=False)


# -- which gateway, and what to tell it --------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    """A gateway the CLI may talk to, the auth mode it uses and the one secret to present."""

    url: str
    mode: str
    secret: str | None = field(repr=False)


def gateway_target(args: argparse.Namespace, config: config_mod.Config, state_dir: Path,
                   running: statelock.Holder | None) -> Target:
    """The gateway to send ``args``'s request (and a secret) to; ``GatewayError`` if there is none.

    A secret goes only to an explicit ``--url`` or to the gateway recorded
    in the state dir's lock, never to whatever happens to listen on the
    configured port: that may be another program.
    """
    if args.url:
        url = args.url
        mode = config.gateway.auth.mode
    elif running is not None:
        url = running.url
        mode = running.auth_mode or config.gateway.auth.mode
    else:
        raise GatewayError(f"no gateway is running for state dir {state_dir}; "
                           f"start one, pass --url, or use --local")
    return Target(url, mode, args.token or env_secret(config, state_dir, mode))


async def open_client(target: Target, hint: str = "or use --local") -> Any:
    """A ``ControlClient`` connected and authenticated (``connect``) to ``target``.

    ``hint`` ends the message for a gateway that cannot be reached: what else
    the command can do (``agent``: ``--local``).

    Presents only the secret of ``target.mode`` (``auth.token`` or
    ``auth.password``). Raises ``GatewayError`` with one line for a gateway
    that cannot be reached or refuses, with the wait when it answers 429,
    and for a server that does not answer ``connect`` within ``CONNECT_TIMEOUT``.
    """
    from .gateway.client import ControlClient, connect_params
    from .net.wsclient import connect
    url = target.url
    ws_url = "ws" + url[4:] if url.startswith("http") else url
    try:
        ws = await connect(ws_url)
    except ValueError as exc:
        raise GatewayError(f"bad gateway URL {url!r}: {exc}") from None
    except (OSError, ConnectionClosed, ProtocolError) as exc:
        raise GatewayError(f"cannot reach the gateway at {url} ({exc or type(exc).__name__}); "
                           f"start it with 'python -m equabot_gw' {hint}") from None
    client = ControlClient(ws)
    # The original command line's connect (client id "cli"): the original Gateway takes no other.
    params = connect_params(target.secret, target.mode)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            client.hello = await request(client, "connect", params)
    except TimeoutError:
        client.ws.abort()
        raise GatewayError(f"the server at {url} did not answer connect within {CONNECT_TIMEOUT:g} s; "
                           f"is it an equabot gateway?") from None
    except GatewayError as exc:
        await client.close()
        other = "token" if target.mode == "password" else "password"
        # The gateway's words carry a hint for the original's command line (its
        # config keys); say what happened in this command line's terms instead.
        if f"unauthorized: gateway {other} missing" in str(exc):    # its mode is not this config's
            raise GatewayError(f"UNAUTHORIZED: the gateway at {url} asks for its {other}: use a config "
                               f"whose gateway.auth.mode is \"{other}\" (the {other} in gateway.auth.{other} "
                               f"or EQUABOT_GATEWAY_{other.upper()})") from None
        mode = target.mode if target.mode != "none" else "token"
        if f"unauthorized: gateway {mode}" in str(exc):
            told = f"refused the {mode} it was sent" if target.secret is not None else f"needs its {mode}"
            raise GatewayError(f"UNAUTHORIZED: the gateway at {url} {told}; pass it with --token or "
                               f"EQUABOT_GATEWAY_{mode.upper()}") from None
        raise
    except BaseException:
        await client.close()
        raise
    return client


async def request(client: Any, method: str, params: dict[str, Any]) -> Any:
    """One request on ``client``; its payload, or ``GatewayError`` naming the error (and the wait)."""
    req_id = f"cli-{method}"
    client.ws.send(json.dumps({"type": "req", "id": req_id, "method": method, "params": params}))
    while True:
        frame = await _next_frame(client)
        if frame.get("type") == "res" and frame.get("id") == req_id:
            return payload_of(frame)


async def _next_frame(client: Any) -> dict[str, Any]:
    try:
        return await client.next_frame()
    except ConnectionClosed as exc:
        raise GatewayError(f"the gateway closed the connection ({exc})") from None


def payload_of(frame: dict[str, Any]) -> Any:
    """A ``res`` frame's payload, or ``GatewayError`` with its code, message and any wait."""
    if frame.get("ok"):
        return frame.get("payload")
    error = frame.get("error") if isinstance(frame.get("error"), dict) else {}
    message = f"{error.get('code', 'ERROR')}: {error.get('message', 'request failed')}"
    wait = error.get("retryAfterMs")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0:
        message += f" (try again in {_seconds(wait / 1000)})"
    raise GatewayError(message)


def _seconds(value: float) -> str:
    whole = max(1, int(value + 0.999))
    return f"{whole} s" if whole < 120 else f"{whole // 60} min {whole % 60} s"


# -- agent -------------------------------------------------------------------------------

async def run_agent_command(args: argparse.Namespace) -> int:
    """``equabot agent``: print the reply (streamed) or one JSON object; 1 if the run failed."""
    config, state_dir, config_path = load_config(args, follow_state_dir=True)
    if args.local:
        return await _run_local(args, config, state_dir, config_path)
    target = gateway_target(args, config, state_dir, statelock.holder(state_dir))
    client = await open_client(target)
    try:
        return await _run_remote(client, args)
    finally:
        await client.close()


async def _run_remote(client: Any, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"message": args.message}
    if args.agent:
        params["agentId"] = args.agent
    if args.session_key:
        params["sessionKey"] = args.session_key
    if args.timeout:
        params["timeout"] = args.timeout
    # A fresh key per command, as the original command line sends: the original Gateway
    # requires one, and it names the run (its runId).
    import uuid
    params["idempotencyKey"] = str(uuid.uuid4())
    run = _RemoteRun()
    client.ws.send(json.dumps({"type": "req", "id": run.req_id, "method": "agent", "params": params}))
    try:
        while True:
            frame = await _next_frame(client)
            run.note(frame)
            if frame.get("type") == "event" and frame.get("event") == "agent":
                event = frame.get("payload") or {}
                # Every client gets every run's events: only this run's reply is printed
                # (its ack, with the run id, comes before its first event).
                if event.get("stream") == "assistant" and not args.json and event.get("runId") == run.run_id:
                    sys.stdout.write((event.get("data") or {}).get("delta", ""))
                    sys.stdout.flush()
                    run.printed = True
            elif frame.get("type") == "res" and frame.get("id") == run.req_id:
                if not frame.get("ok") and isinstance(frame.get("payload"), dict):
                    # A run that failed: its final answer carries the error beside the payload.
                    if run.printed:
                        print(flush=True)
                    error = frame.get("error") if isinstance(frame.get("error"), dict) else {}
                    say_error(f"run failed: {error.get('message', 'error')}")
                    return 1
                payload = payload_of(frame)
                if payload.get("status") == "accepted":
                    continue
                print(json.dumps(payload, indent=2, ensure_ascii=False) if args.json
                      else "" if run.printed else NO_REPLY, flush=True)
                if payload.get("status") != "ok":
                    say_error(f"run {payload.get('status')}: {payload.get('summary', '')}")
                    return 1
                return 0
    except asyncio.CancelledError:         # a stop signal (Ctrl-C, SIGTERM, SIGHUP) cancelled us
        await _abort_remote(client, run, args)
        raise


class _RemoteRun:
    """What the CLI has learnt of its run on the gateway: enough to abort it."""

    req_id = "cli-agent"

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.session_key: str | None = None
        self.printed = False

    def note(self, frame: dict[str, Any]) -> None:
        payload = frame.get("payload") if isinstance(frame.get("payload"), dict) else {}
        if frame.get("type") == "res" and frame.get("id") == self.req_id:
            self.run_id = self.run_id or payload.get("runId")
        elif frame.get("event") == "agent" and payload.get("runId") == self.run_id:
            self.session_key = self.session_key or payload.get("sessionKey")


async def _abort_remote(client: Any, run: _RemoteRun, args: argparse.Namespace) -> None:
    """Ask the gateway to abort ``run`` (``chat.abort``), so it is recorded as aborted.

    ``chat.abort`` names the run's session: without ``--session-key`` the
    gateway picks it (the agent's main session) and says which in the run's
    first event, so that is awaited too. Everything is bounded by
    ``ABORT_TIMEOUT``; a second Ctrl-C stops at once.
    """
    if run.printed:
        _tell("", sys.stdout)
    try:
        async with asyncio.timeout(ABORT_TIMEOUT):
            while run.run_id is None or (run.session_key is None and not args.session_key):
                run.note(await _next_frame(client))
            params: dict[str, Any] = {"runId": run.run_id,
                                      "sessionKey": run.session_key or args.session_key}
            if run.session_key is None and args.agent:
                params["agentId"] = args.agent
            answer = await request(client, "chat.abort", params)
    except (TimeoutError, GatewayError) as exc:
        _tell(printable(f"equabot: interrupted; could not abort the run on the gateway ({exc or 'no answer'})"),
              sys.stderr)
        return
    if answer.get("aborted"):
        _tell(printable(f"equabot: interrupted; run {run.run_id} aborted"), sys.stderr)
    else:
        _tell(printable(f"equabot: interrupted; run {run.run_id} had already ended"), sys.stderr)


def _tell(line: str, file: Any) -> None:
    """Print ``line`` to ``file``; a terminal that is gone (the SIGHUP of a closed
    window or a dropped ssh session) must not keep the run from being aborted."""
    try:
        print(line, file=file, flush=True)
    except (OSError, ValueError):
        pass


async def _run_local(args: argparse.Namespace, config: config_mod.Config, state_dir: Path,
                     config_path: Path | None) -> int:
    # In-process means owning the state dir: refuse (one line) if a gateway has it.
    try:
        lock = statelock.acquire(state_dir)
    except statelock.StateDirInUse as exc:
        if exc.holder is None or not exc.holder.url:
            raise
        raise statelock.StateDirInUse(state_dir, exc.holder, hint="drop --local to ask it") from None
    # Record that no gateway listens here now (an older record would name a stale URL).
    lock.announce("", config_path=config_path)
    runtime = agent_runtime.Runtime(config, state_dir)
    try:
        await runtime.start()
    except BaseException:
        lock.release()
        raise
    try:
        from .gateway.frames import main_session_key
        started = time.time()
        run = agent_runtime.run(runtime, AgentRequest(
            message=args.message, agent_id=args.agent, origin="cli", timeout=args.timeout or None,
            # As over the gateway: the agent's main session unless another is named.
            session_key=args.session_key or main_session_key(runtime.agent(args.agent).id)))
        async for event in run.subscribe():
            if isinstance(event, Delta) and not args.json:
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, Ended):
                info = runtime.store.session_info(event.result.agent_id, event.result.session_key)
                print(_result_json(event.result, info.created_at if info else None, started)
                      if args.json else "" if event.result.text else NO_REPLY, flush=True)
            elif isinstance(event, Failed):
                if not args.json:
                    print(flush=True)
                say_error(f"run failed: {event.error}")
                return 1
        return 0
    finally:
        await runtime.stop(0)
        lock.release()


# -- sessions ----------------------------------------------------------------------------

async def run_sessions_command(args: argparse.Namespace) -> int:
    """``equabot sessions list|show|reset``: through the running gateway if there is one.

    ``list`` without ``--agent`` lists every agent's sessions. ``show`` and
    ``reset`` take a session key, scoped to the agent like any key, or the
    raw ``user`` string an OpenAI client sent (spaces and all): its session
    is found under the key the endpoint derived from it.
    """
    config, state_dir, _ = load_config(args, follow_state_dir=True, create=False)
    running = statelock.holder(state_dir)
    if running is not None or args.url:
        # The gateway owns the files while it runs: ask it rather than edit behind its back.
        return await _remote_sessions(args, gateway_target(args, config, state_dir, running))
    runtime = agent_runtime.Runtime(config, state_dir)
    agent = runtime.agent(args.agent)
    store = SessionStore(state_dir)
    if not store.on_disk:
        # Nothing was ever stored here (a gateway never ran with this state dir, or
        # it is mistyped): read as an empty store, and nothing is created.
        if args.sessions_command == "list":
            return _print_infos([], args.json)
        session_key_for(agent.id, args.key, set())      # a malformed key is refused all the same
        print(f"equabot: {_missing(agent.id, args.key)}", file=sys.stderr)
        return 1
    lock = None
    if args.sessions_command == "reset":
        # A reset writes: hold the state dir as a gateway would, so none starts meanwhile
        # and none that is starting (or an agent --local run) is written behind.
        try:
            lock = statelock.acquire(state_dir)
        except statelock.StateDirInUse as exc:
            if exc.holder is None or not exc.holder.url:
                raise
            # It announced itself since: ask it after all.
            return await _remote_sessions(args, gateway_target(args, config, state_dir, exc.holder))
    try:
        return await _local_sessions(args, agent, store)
    finally:
        if lock is not None:
            lock.release()


async def _local_sessions(args: argparse.Namespace, agent: Any, store: SessionStore) -> int:
    await store.open()
    try:
        if args.sessions_command == "list":
            infos = store.list_sessions(agent.id if args.agent else None)
            return _print_infos([(i.key, i.agent_id, i.created_at, i.updated_at, i.turns, i.last_run_id)
                                 for i in infos], args.json)
        known = {i.key for i in store.list_sessions(agent.id)}
        key = session_key_for(agent.id, args.key, known)
        if args.sessions_command == "show":
            return _print_messages(chat_messages(await store.read_transcript(agent.id, key)),
                                   _missing(agent.id, args.key), args.json, key in known)
        if key not in known:      # a reset would give an unknown key a blank session
            print(f"equabot: {_missing(agent.id, args.key)}", file=sys.stderr)
            return 1
        await store.reset(agent.id, key)
        print(f"reset {key}")
        return 0
    finally:
        await store.close()


def session_key_for(agent_id: str, given: str, known: set[str]) -> str:
    """The session key ``given`` names for ``agent_id``: a key, or an OpenAI ``user`` string.

    Of the key ``given`` spells (scoped to the agent) and the key the
    endpoint derives from ``given`` as a ``user``, the first that is among
    ``known`` sessions; else the first of them (so "no session" names it).
    Raises ``ApiError`` for a string that can be neither.
    """
    candidates = _candidates(agent_id, given)
    return next((key for key in candidates if key in known), candidates[0])


def _candidates(agent_id: str, given: str) -> list[str]:
    """The key ``given`` spells, then the key of ``given`` as a ``user`` (each if it can be one)."""
    candidates = []
    try:
        candidates.append(scoped_key(agent_id, validate_key(given)))
    except ApiError:
        if agent_of(given) is not None:     # "agent:<id>:..." is meant as a key: say what is wrong
            raise
    if agent_of(given) is None:
        candidates.append(user_key(agent_id, given))
    return candidates


def _missing(agent_id: str, given: str) -> str:
    """What "no session" says of ``given``: every session it could have named."""
    keys = _candidates(agent_id, given)
    user = keys[-1] if agent_of(given) is None else None
    return "no session " + ", nor ".join(
        f"for user {given!r} ({key})" if key == user else repr(key) for key in keys)


async def _remote_sessions(args: argparse.Namespace, target: Target) -> int:
    # No --local here: with no gateway on the state dir, sessions reads its files.
    hint = "or leave out --url to read the state dir's files" if args.url else "and try again"
    client = await open_client(target, hint)
    try:
        params = {"agentId": args.agent} if args.agent else {}
        if args.sessions_command == "list":
            listed = _rows(await request(client, "sessions.list", params))
            return _print_infos([_info_of(row) for row in listed], args.json)
        agent_id = args.agent or (await request(client, "agents.list", {}))["defaultId"]
        known = {row.get("key") for row in _rows(await request(client, "sessions.list", {"agentId": agent_id}))}
        key = session_key_for(agent_id, args.key, known)
        if args.sessions_command == "show":
            history = await request(client, "chat.history", {"sessionKey": key})
            messages = history.get("messages") if isinstance(history, dict) else None
            return _print_messages([m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else [],
                                   _missing(agent_id, args.key), args.json, key in known)
        if key not in known:     # a reset would make it a blank session
            print(f"equabot: {_missing(agent_id, args.key)}", file=sys.stderr)
            return 1
        reset = await request(client, "sessions.reset", {"key": key})
        print(f"reset {reset['key']}")
        return 0
    finally:
        await client.close()


def _rows(listed: Any) -> list[dict[str, Any]]:
    """The session rows of a ``sessions.list`` payload (rows that are not objects skipped)."""
    rows = listed.get("sessions") if isinstance(listed, dict) else None
    return [row for row in rows if isinstance(row, dict) and isinstance(row.get("key"), str)] \
        if isinstance(rows, list) else []


def _info_of(row: dict[str, Any]) -> tuple[str, str | None, float | None, float | None, int | None, str | None]:
    """A ``sessions.list`` row as ``_print_infos`` takes it: what the gateway sent, None for
    the rest (the original Gateway's rows carry no ``agentId``, ``createdAt``, ``turns``
    or ``lastRunId``; the agent is then the key's)."""
    key = row["key"]
    agent = row.get("agentId")
    return (key, agent if isinstance(agent, str) else agent_of(key), _ms_to_seconds(row.get("createdAt")),
            _ms_to_seconds(row.get("updatedAt")), _number(row.get("turns")),
            row.get("lastRunId") if isinstance(row.get("lastRunId"), str) else None)


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ms_to_seconds(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 253402300800000
    return value / 1000 if ok else None


def _iso(seconds: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC, to the second: ``2026-01-31T12:00:00Z`` (None: None)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_infos(rows: list[tuple[str, str | None, float | None, float | None, int | None, str | None]],
                 as_json: bool) -> int:
    """Session rows; a value the source did not give is null in JSON and left out of a text line."""
    if as_json:
        print(json.dumps([{"key": k, "agentId": a, "createdAt": _iso(c), "updatedAt": _iso(u),
                           "turns": t, "lastRunId": r} for k, a, c, u, t, r in rows]))
        return 0
    if not rows:
        print("no sessions")
    for key, _, _, updated, turns, _ in rows:
        shown = [key] + ([f"turns={turns}"] if turns is not None else []) + \
            ([f"updated={_iso(updated)}"] if updated is not None else [])
        print("\t".join(shown))
    return 0


def _text_of(content: Any) -> str:
    """A message's text: a string as it is, or the text parts of a parts list joined."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


def _print_messages(messages: list[dict[str, Any]], missing: str, as_json: bool, listed: bool) -> int:
    """``sessions show``: the same lines whether the gateway answered or the files did
    (``missing``: what to say when there is no such session; ``listed``: there is one,
    maybe empty, as a reset leaves it)."""
    if not messages and not listed:
        print(f"equabot: {missing}", file=sys.stderr)
        return 1
    if not messages and not as_json:
        print("(no messages)")
    for m in messages:
        if as_json:
            print(json.dumps(m, ensure_ascii=False))
        else:
            aborted = m.get("aborted") or m.get("stopReason") == "aborted"
            print(f"{m.get('role', '?')}{' (aborted)' if aborted else ''}: {_text_of(m.get('content'))}")
    return 0


__all__ = ["run_agent_command", "run_sessions_command", "RunError"]
