"""RFC 6455 §4, the opening handshake, sans-I/O: the checks and header fields of both roles.

The server side checks an upgrade request and gives the 101 response's
fields; the client side builds its request and checks the server's answer.
Never touches sockets; frames and messages are ``net.websocket``. Raises
``ApiError`` (server role: 400, or 426 for another version) and
``WebSocketProtocolError`` (client role).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from typing import Final, Protocol

from ..errors import ApiError, WebSocketProtocolError
from .grammar import TOKEN, split_list

__all__ = [
    "HeaderFields", "accept_key", "new_client_key", "server_handshake",
    "client_request_headers", "check_server_response", "encode_client_request",
]

# RFC 6455 §1.3: the GUID every server concatenates with the client's key.
WS_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HeaderFields(Protocol):
    """What the handshake helpers read: lower-case names, ``str`` values."""

    def get(self, name: str) -> str | None: ...
    def get_all(self, name: str) -> list[str]: ...


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key (RFC 6455 §4.2.2).

    "concatenate this with the Globally Unique Identifier ... take the SHA-1
    hash of this concatenated value ... base64-encode ... this hash."
    """
    digest = hashlib.sha1((key + WS_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def new_client_key() -> str:
    """A fresh Sec-WebSocket-Key: RFC 6455 §4.1 "a randomly selected 16-byte value ... base64-encoded"."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _has_token(headers: HeaderFields, name: str, token: str) -> bool:
    return any(t.lower() == token for v in headers.get_all(name) for t in split_list(v))


def _is_valid_key(values: list[str]) -> bool:
    if len(values) != 1:
        return False
    try:
        return len(base64.b64decode(values[0].strip(" \t"), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def server_handshake(method: str, version: str, headers: HeaderFields) -> list[tuple[str, str]]:
    """Check an upgrade request (RFC 6455 §4.2.1); return the 101 response's header fields.

    ``version`` is the HTTP version, "1.1" or "HTTP/1.1". Returns Upgrade,
    Connection, Sec-WebSocket-Accept and, when the client offers
    subprotocols, Sec-WebSocket-Protocol naming the first, as (name, value)
    pairs. Raises ``ApiError`` 400 for a method other than GET, HTTP older
    than 1.1, a missing Host, Upgrade without "websocket", Connection without
    "upgrade", a Sec-WebSocket-Key that is not one base64 value of 16 bytes,
    or a subprotocol that is not a token or is offered twice; 426 with
    ``Sec-WebSocket-Version: 13`` for another version (§4.2.2).
    """
    # §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if method != "GET":
        raise ApiError(400, "a WebSocket upgrade must use GET")
    major, _, minor = version.removeprefix("HTTP/").partition(".")
    if not (major.isdigit() and minor.isdigit() and (int(major), int(minor)) >= (1, 1)):
        raise ApiError(400, "a WebSocket upgrade needs HTTP/1.1")
    # §4.2.1 item 2: "A |Host| header field containing the server's authority."
    if not headers.get("host"):
        raise ApiError(400, "missing Host header")
    # §4.2.1 items 3 and 4: Upgrade "containing the value "websocket", treated
    # as an ASCII case-insensitive value"; Connection "that includes the token
    # "Upgrade", treated as an ASCII case-insensitive value".
    if not _has_token(headers, "upgrade", "websocket"):
        raise ApiError(400, "missing Upgrade: websocket")
    if not _has_token(headers, "connection", "upgrade"):
        raise ApiError(400, "missing Connection: Upgrade")
    # §4.2.1 item 5: "a base64-encoded value that, when decoded, is 16 bytes in length."
    keys = headers.get_all("sec-websocket-key")
    if not _is_valid_key(keys):
        raise ApiError(400, "missing or invalid Sec-WebSocket-Key")
    # §4.2.1 item 6: "A |Sec-WebSocket-Version| header field, with a value of 13."
    versions = headers.get_all("sec-websocket-version")
    if not versions:
        raise ApiError(400, "missing Sec-WebSocket-Version")
    if [v.strip(" \t") for v in versions] != ["13"]:
        raise ApiError(426, "unsupported WebSocket version", headers=(("Sec-WebSocket-Version", "13"),))
    # §4.2.2 /version/ 5: Upgrade, Connection, Sec-WebSocket-Accept, and the
    # subprotocol chosen. No extension is ever negotiated.
    fields = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Accept", accept_key(keys[0].strip(" \t")))]
    subprotocol = _first_subprotocol(headers.get_all("sec-websocket-protocol"))
    if subprotocol is not None:
        fields.append(("Sec-WebSocket-Protocol", subprotocol))
    return fields


def _first_subprotocol(values: list[str]) -> str | None:
    """The first subprotocol the client offers, or None when it offers none.

    The protocol spoken is the same whatever the name, so any name offered
    is accepted, and the first is echoed as chosen (§4.2.2 /subprotocol/:
    one of the client's values): a browser that asked for one fails a
    handshake whose answer names none. Each value must be a token (§4.1,
    RFC 7230 §3.2.6), each once; else 400.
    """
    offered = [name for value in values for name in split_list(value)]
    for name in offered:
        if not name.isascii() or TOKEN.fullmatch(name.encode("ascii")) is None:
            raise ApiError(400, "invalid Sec-WebSocket-Protocol: each subprotocol must be a token")
    if len(set(offered)) != len(offered):
        raise ApiError(400, "invalid Sec-WebSocket-Protocol: a subprotocol offered twice")
    return offered[0] if offered else None


def client_request_headers(host: str, key: str) -> list[tuple[str, str]]:
    """The header fields of a client's opening handshake (RFC 6455 §4.1), Host first.

    ``host`` is the authority ("example.com" or "example.com:8080"), ``key`` from
    ``new_client_key()``.
    """
    return [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]


def check_server_response(status: int, headers: HeaderFields, key: str) -> None:
    """Check the server's answer to our handshake (RFC 6455 §4.1, client steps 1-6).

    Raises ``WebSocketProtocolError`` for a status other than 101, a missing
    Upgrade/Connection token, a wrong Sec-WebSocket-Accept, or an extension
    or subprotocol we did not ask for.
    """
    # "If the status code received from the server is not 101, the client
    # handles the response per HTTP procedures": here, refuse it.
    if status != 101:
        raise WebSocketProtocolError(f"server answered {status} instead of 101")
    # "If the response lacks an |Upgrade| header field or the |Upgrade| header
    # field contains a value that is not an ASCII case-insensitive match for
    # the value "websocket", the client MUST _Fail the WebSocket Connection_."
    if not _has_token(headers, "upgrade", "websocket"):
        raise WebSocketProtocolError("response without Upgrade: websocket")
    if not _has_token(headers, "connection", "upgrade"):
        raise WebSocketProtocolError("response without Connection: Upgrade")
    accept = headers.get_all("sec-websocket-accept")
    if [a.strip(" \t") for a in accept] != [accept_key(key)]:
        raise WebSocketProtocolError("wrong Sec-WebSocket-Accept")
    # "If the response includes a |Sec-WebSocket-Extensions| header field and
    # this header field indicates the use of an extension that was not present
    # in the client's handshake ... the client MUST _Fail the WebSocket Connection_."
    if any(split_list(v) for v in headers.get_all("sec-websocket-extensions")):
        raise WebSocketProtocolError("server chose an extension we did not offer")
    if any(split_list(v) for v in headers.get_all("sec-websocket-protocol")):
        raise WebSocketProtocolError("server chose a subprotocol we did not offer")


def encode_client_request(path: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """The request head ``GET path HTTP/1.1`` with ``fields``, ending with the empty line.

    Raises ``ValueError`` for a path or field with CR, LF, NUL, space or
    non-ASCII (request splitting).
    """
    if not path.startswith("/") or not path.isascii() or any(c in path for c in " \r\n\0\t"):
        raise ValueError(f"unsafe request path {path!r}")
    lines = [f"GET {path} HTTP/1.1"]
    for name, value in fields:
        if not name or any(c in name for c in " :\r\n\0\t") or any(c in value for c in "\r\n\0"):
            raise ValueError(f"unsafe header field {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
