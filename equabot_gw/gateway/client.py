"""A client of the control protocol, for ``equabot agent`` and ``sessions`` against a running gateway.

Owns the client side of ``connect`` / ``agent``: it opens a WebSocket with the
package's own client (``net.wsstream.connect``), skips the gateway's events
(``connect.challenge`` first) while it waits for responses, authenticates in
``connect``, starts one run and prints its assistant text as it arrives. It
speaks the original Gateway's protocol, so it works against either.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

from .. import __version__, safejson
from ..agents.sessions import agent_of
from ..errors import ConnectionClosed, GatewayError
from ..net.wsstream import WebSocket, connect
from .control import PROTOCOL_VERSION


class ControlClient:
    """Request/response over one control connection; events are handed to ``on_event``."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.hello: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, secret: str | None, *, client_id: str = "cli") -> ControlClient:
        """Connect to ``url`` (http(s):// or ws(s)://) and complete the ``connect`` handshake.

        ``secret`` is offered as both token and password: the gateway reads
        the one its ``gateway.auth.mode`` names. Raises ``GatewayError`` if
        ``connect`` is refused.
        """
        ws_url = "ws" + url[4:] if url.startswith("http") else url
        client = cls(await connect(ws_url))
        params: dict[str, Any] = {
            "minProtocol": PROTOCOL_VERSION, "maxProtocol": PROTOCOL_VERSION,
            "client": {"id": client_id, "displayName": "equabot", "version": __version__,
                       "platform": sys.platform, "mode": "cli"},
            "role": "operator", "scopes": ["operator.admin"]}
        if secret is not None:
            params["auth"] = {"token": secret, "password": secret}
        client.hello = await client.request("connect", params)
        return client

    def send(self, method: str, params: dict[str, Any]) -> str:
        """Send one request; its id."""
        req_id = str(next(self._ids))
        self.ws.send(json.dumps({"type": "req", "id": req_id, "method": method, "params": params}))
        return req_id

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send one request and return its payload (the first response with its id)."""
        req_id = self.send(method, params)
        while True:
            frame = await self.next_frame()
            if frame.get("type") == "res" and frame.get("id") == req_id:
                return _payload(frame)

    async def next_frame(self) -> dict[str, Any]:
        message = await self.ws.recv()
        try:
            frame = await safejson.loads_async(message)
        except ValueError as exc:
            raise GatewayError(f"the gateway sent a frame that is not JSON ({exc})") from None
        if not isinstance(frame, dict):
            raise GatewayError("the gateway sent a frame that is not an object")
        return frame

    async def close(self) -> None:
        await self.ws.close()


def _payload(frame: dict[str, Any]) -> Any:
    if frame.get("ok"):
        return frame.get("payload")
    error = frame.get("error") or {}
    raise GatewayError(f"{error.get('code', 'ERROR')}: {error.get('message', 'request failed')}")


def result_json(final: dict[str, Any], session_key: str | None) -> dict[str, Any]:
    """The CLI's ``--json`` object (as ``agent --local`` prints it) from an ``agent`` final payload."""
    result = final.get("result") or {}
    meta = result.get("meta") or {}
    agent_meta = meta.get("agentMeta") or {}
    usage = agent_meta.get("usage") or {}
    prompt, completion = usage.get("input", 0), usage.get("output", 0)
    provider, model = agent_meta.get("provider", ""), agent_meta.get("model", "")
    return {"runId": final.get("runId"), "status": final.get("status"),
            "agentId": agent_of(session_key) if session_key else None, "sessionKey": session_key,
            "text": "".join(p.get("text") or "" for p in result.get("payloads") or ()),
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
            "finishReason": meta.get("stopReason"), "model": f"{provider}/{model}"}


async def run_remote_agent(url: str, secret: str | None, message: str, agent_id: str | None,
                           session_key: str | None, *, as_json: bool) -> int:
    """Run one ``agent`` request on the gateway at ``url``; print its text or a JSON result."""
    try:
        client = await ControlClient.open(url, secret)
    except (OSError, ConnectionClosed) as exc:
        raise GatewayError(f"cannot reach the gateway at {url} ({exc}); start it with "
                           f"'python -m equabot_gw' or use --local") from None
    try:
        params: dict[str, Any] = {"message": message}
        if agent_id:
            params["agentId"] = agent_id
        if session_key:
            params["sessionKey"] = session_key
        req_id = client.send("agent", params)
        run_id: str | None = None
        seen_key: str | None = None
        while True:
            frame = await client.next_frame()
            payload = frame.get("payload") if isinstance(frame.get("payload"), dict) else {}
            if frame.get("type") == "event" and frame.get("event") == "agent" \
                    and payload.get("runId") == run_id:
                seen_key = payload.get("sessionKey") or seen_key
                if payload.get("stream") == "assistant" and not as_json:
                    sys.stdout.write((payload.get("data") or {}).get("delta", ""))
                    sys.stdout.flush()
            elif frame.get("type") == "res" and frame.get("id") == req_id:
                if run_id is None and not frame.get("ok"):
                    _payload(frame)             # refused before it started: one line, raised
                if frame.get("ok") and payload.get("status") == "accepted":
                    run_id = payload.get("runId")
                    continue
                return _finish(frame, payload, seen_key, as_json)
    finally:
        await client.close()


def _finish(frame: dict[str, Any], payload: dict[str, Any], session_key: str | None, as_json: bool) -> int:
    if not frame.get("ok"):
        if not as_json:
            print(flush=True)
        error = frame.get("error") or {}
        print(f"equabot: run failed: {error.get('message', 'error')}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result_json(payload, session_key)))
    else:
        print(flush=True)
    if payload.get("status") != "ok":
        print(f"equabot: run {payload.get('status')}: {payload.get('summary', '')}", file=sys.stderr)
        return 1
    return 0
