"""A client of the control protocol, for the CLI's commands against a running gateway.

Owns the client side of ``connect`` and of request/response: it opens a
WebSocket with the package's own client (``net.wsclient.connect``), skips the
gateway's events (``connect.challenge`` first) while it waits for responses,
and authenticates in ``connect``. Its ``connect`` params have the original
command line's shape (``connect_params``: client id ``cli``, mode ``cli``, an
``instanceId``), which the original Gateway's schema requires (its client ids
and modes are closed lists), so it works against either gateway.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

from .. import __version__, safejson
from ..errors import ConnectionClosed, GatewayError
from ..net.wsclient import connect
from ..net.wsstream import WebSocket
from .control import PROTOCOL_VERSION


class ControlClient:
    """Request/response over one control connection; events are handed to ``on_event``."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.hello: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, secret: str | None, *, client_id: str = "cli",
                   mode: str = "token") -> ControlClient:
        """Connect to ``url`` (http(s):// or ws(s)://) and complete the ``connect`` handshake.

        ``secret`` is presented as ``auth.<mode>`` only (``mode`` "token" or
        "password", the gateway's ``gateway.auth.mode``): a secret is never
        offered under a name it is not. Raises ``GatewayError`` if
        ``connect`` is refused.
        """
        ws_url = "ws" + url[4:] if url.startswith("http") else url
        client = cls(await connect(ws_url))
        client.hello = await client.request("connect", connect_params(secret, mode, client_id=client_id))
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


def connect_params(secret: str | None, mode: str = "token", *, client_id: str = "cli") -> dict[str, Any]:
    """``connect`` params as the original command line sends them: keys, order and types.

    ``client`` is ``{id, version, platform, mode: "cli", instanceId}`` (a
    fresh UUID per connection); the original Gateway refuses a client id or
    mode it does not know, and a gateway answers a ``cli`` client's refused
    credential with a hint in its config's terms. ``secret`` goes under
    ``auth.<mode>`` ("token" or "password"; anything else: "token"), and
    there is no ``auth`` without one.
    """
    import uuid      # only a client that connects needs it
    params: dict[str, Any] = {
        "minProtocol": PROTOCOL_VERSION, "maxProtocol": PROTOCOL_VERSION,
        "client": {"id": client_id, "version": __version__, "platform": sys.platform, "mode": "cli",
                   "instanceId": str(uuid.uuid4())},
        "caps": []}
    if secret is not None:
        params["auth"] = {mode if mode in ("token", "password") else "token": secret}
    params["role"] = "operator"
    params["scopes"] = ["operator.admin"]
    return params


def _payload(frame: dict[str, Any]) -> Any:
    if frame.get("ok"):
        return frame.get("payload")
    error = frame.get("error") or {}
    raise GatewayError(f"{error.get('code', 'ERROR')}: {error.get('message', 'request failed')}")
