"""The ``agent`` and ``sessions`` subcommands: one run from the terminal, and the session store.

``agent --local`` runs the runtime in this process (``agents.runtime.run``,
like every other door) and prints the reply as it streams; without
``--local`` the same run goes to a running gateway over the WebSocket control
protocol. ``sessions`` reads and edits the store under the state dir.
Returns exit codes; printing is the only side effect besides the run itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import statelock
from .agents import runtime as agent_runtime
from .agents.events import Delta, Ended, Failed
from .agents.sessions import SessionStore, chat_messages, scoped_key, validate_key
from .agents.types import AgentRequest, AgentResult
from .cli import env_secret, load_config
from .errors import RunError


def _result_json(result: AgentResult) -> str:
    return json.dumps({"runId": result.run_id, "status": "ok", "agentId": result.agent_id,
                       "sessionKey": result.session_key, "text": result.text,
                       "usage": result.usage.as_dict(), "finishReason": result.finish_reason,
                       "model": result.model})


async def run_agent_command(args: argparse.Namespace) -> int:
    """``equabot agent``: print the reply (streamed) or one JSON object; 1 if the run failed."""
    config, state_dir = load_config(args)
    if not args.local:
        from .gateway.client import run_remote_agent
        running = statelock.holder(state_dir)
        url = args.url or (running.url if running else f"http://127.0.0.1:{config.gateway.port}")
        token = args.token or env_secret(config, state_dir)
        return await run_remote_agent(url, token, args.message, args.agent, args.session_key,
                                      as_json=args.json)
    # In-process means owning the state dir: refuse (one line) if a gateway has it.
    lock = statelock.acquire(state_dir)
    runtime = agent_runtime.Runtime(config, state_dir)
    try:
        await runtime.start()
    except BaseException:
        lock.release()
        raise
    try:
        run = agent_runtime.run(runtime, AgentRequest(
            message=args.message, agent_id=args.agent, session_key=args.session_key, origin="cli"))
        async for event in run.subscribe():
            if isinstance(event, Delta) and not args.json:
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, Ended):
                print(_result_json(event.result) if args.json else "", flush=True)
            elif isinstance(event, Failed):
                if not args.json:
                    print(flush=True)
                print(f"equabot: run failed: {event.error}", file=sys.stderr)
                return 1
        return 0
    finally:
        await runtime.stop(0)
        lock.release()


async def run_sessions_command(args: argparse.Namespace) -> int:
    """``equabot sessions list|show|reset``: through the running gateway if there is one."""
    config, state_dir = load_config(args)
    running = statelock.holder(state_dir)
    if running is not None or args.url:
        # The gateway owns the files while it runs: ask it rather than edit behind its back.
        url = args.url or running.url      # type: ignore[union-attr]
        return await _remote_sessions(args, url, args.token or env_secret(config, state_dir))
    runtime = agent_runtime.Runtime(config, state_dir)
    agent = runtime.agent(args.agent)
    store = SessionStore(state_dir)
    await store.open()
    try:
        if args.sessions_command == "list":
            return _print_sessions(store, agent.id, args.json)
        key = scoped_key(agent.id, validate_key(args.key))
        if args.sessions_command == "show":
            return _print_messages(chat_messages(await store.read_transcript(agent.id, key)), key,
                                   args.json)
        if await store.reset(agent.id, key):
            print(f"reset {key}")
            return 0
        print(f"equabot: no session {key!r}", file=sys.stderr)
        return 1
    finally:
        await store.close()


async def _remote_sessions(args: argparse.Namespace, url: str, secret: str | None) -> int:
    from .gateway.client import ControlClient
    client = await ControlClient.open(url, secret)
    try:
        params = {"agentId": args.agent} if args.agent else {}
        if args.sessions_command == "list":
            listed = (await client.request("sessions.list", params))["sessions"]
            return _print_infos([(s["key"], s["agentId"], s["createdAt"] / 1000, s["updatedAt"] / 1000,
                                  s["turns"], s["lastRunId"]) for s in listed], args.json)
        if args.sessions_command == "show":
            history = await client.request("chat.history", {**params, "sessionKey": args.key})
            return _print_messages(history["messages"], history["sessionKey"], args.json)
        reset = await client.request("sessions.reset", {**params, "key": args.key})
        if reset["reset"]:
            print(f"reset {reset['key']}")
            return 0
        print(f"equabot: no session {reset['key']!r}", file=sys.stderr)
        return 1
    finally:
        await client.close()


def _print_sessions(store: SessionStore, agent_id: str, as_json: bool) -> int:
    return _print_infos([(i.key, i.agent_id, i.created_at, i.updated_at, i.turns, i.last_run_id)
                         for i in store.list_sessions(agent_id)], as_json)


def _print_infos(rows: list[tuple[str, str, float, float, int, str | None]], as_json: bool) -> int:
    if as_json:
        print(json.dumps([{"key": k, "agentId": a, "createdAt": c, "updatedAt": u, "turns": t,
                           "lastRunId": r} for k, a, c, u, t, r in rows]))
        return 0
    if not rows:
        print("no sessions")
    for key, _, _, updated, turns, _ in rows:
        print(f"{key}\tturns={turns}\tupdated={updated:.0f}")
    return 0


def _print_messages(messages: list[dict[str, Any]], key: str, as_json: bool) -> int:
    """``sessions show``: the same lines whether the gateway answered or the files did."""
    if not messages:
        print(f"equabot: no session {key!r}", file=sys.stderr)
        return 1
    for m in messages:
        if as_json:
            print(json.dumps(m, ensure_ascii=False))
        else:
            print(f"{m['role']}{' (aborted)' if m.get('aborted') else ''}: {m['content']}")
    return 0


__all__ = ["run_agent_command", "run_sessions_command", "RunError"]
