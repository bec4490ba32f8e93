"""A client of the control protocol, for ``equabot agent`` against a running gateway.

Owns the client side of ``connect`` / ``agent``: it opens a WebSocket with the
package's own client (``net.wsstream.connect``), authenticates in ``connect``,
starts one run and prints its ``agent`` events as they arrive.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

from .. import __version__, safejson
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
    async def open(cls, url: str, secret: str | None, *,
                   client_id: str = "equabot-cli") -> ControlClient:
        """Connect to ``url`` (http(s):// or ws(s)://) and complete the ``connect`` handshake.

        ``secret`` is offered as both token and password: the gateway reads
        the one its ``gateway.auth.mode`` names.
        """
        ws_url = "ws" + url[4:] if url.startswith("http") else url
        client = cls(await connect(ws_url))
        params: dict[str, Any] = {
            "minProtocol": PROTOCOL_VERSION, "maxProtocol": PROTOCOL_VERSION,
            "client": {"id": client_id, "version": __version__, "platform": sys.platform,
                       "mode": "cli"}}
        if secret is not None:
            params["auth"] = {"token": secret, "password": secret}
        client.hello = await client.request("connect", params)
        return client

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send one request and return its payload (the first response with its id)."""
        req_id = str(next(self._ids))
        self.ws.send(json.dumps({"type": "req", "id": req_id, "method": method, "params": params}))
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


async def run_remote_agent(url: str, secret: str | None, message: str, agent_id: str | None,
                           session_key: str | None, *, as_json: bool) -> int:
    """Run one ``agent`` request on the gateway at ``url``; print deltas or a JSON result."""
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
        req_id = "agent-1"
        client.ws.send(json.dumps({"type": "req", "id": req_id, "method": "agent", "params": params}))
        while True:
            frame = await client.next_frame()
            if frame.get("type") == "event" and frame.get("event") == "agent" and not as_json:
                data = frame["payload"].get("data", {})
                if frame["payload"].get("stream") == "assistant":
                    sys.stdout.write(data.get("delta", ""))
                    sys.stdout.flush()
            elif frame.get("type") == "res" and frame.get("id") == req_id:
                payload = _payload(frame)
                if payload.get("status") == "accepted":
                    continue
                if as_json:
                    print(json.dumps(payload))
                else:
                    print(flush=True)
                if payload.get("status") != "ok":
                    error = payload.get("error") or {}
                    print(f"equabot: run failed: {error.get('message', 'error')}", file=sys.stderr)
                    return 1
                return 0
    finally:
        await client.close()
