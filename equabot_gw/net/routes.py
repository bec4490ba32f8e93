"""What HTTP handlers see and return, the error bodies, and the router.

Owns the handler contract: a handler is ``async (HTTPRequest) -> Response |
StreamingResponse | Upgrade`` and may raise ``ApiError``; ``Router`` maps
method and path to handlers (404 / 405 with ``Allow`` otherwise); every error
body has OpenAI's shape ``{"error": {message, type, param, code}}``;
``query_fields`` reads a query string within a bound of fields. No I/O:
``connection.py`` runs handlers and writes what they return.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Final, NamedTuple, Union
from urllib.parse import parse_qsl, unquote

from ..errors import ApiError, HTTPProtocolError, error_type_for_status, http_status
from .http11 import Headers


# -- what handlers see and return ------------------------------------------------
#
# Plain slotted classes, not dataclasses: made per request, compared by no
# one, and each dataclass would compile its generated methods at start-up.

class HTTPRequest:
    """A request as handlers see it: the parsed head, the whole body, and who sent it.

    ``client`` is the peer's address (host string); ``params`` holds the tail
    of a prefix route.
    """

    __slots__ = ("method", "path", "query", "version", "headers", "body", "client", "conn_id",
                 "request_id", "params")

    def __init__(self, method: str, path: str, query: str, version: str, headers: Headers,
                 body: bytes, client: str, conn_id: int, request_id: str,
                 params: dict[str, str] | None = None) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.client = client
        self.conn_id = conn_id
        self.request_id = request_id
        self.params = {} if params is None else params

    def __repr__(self) -> str:
        return f"<HTTPRequest {self.request_id} {self.method} {self.path}>"


class Response:
    """A complete response; ``Content-Length`` is added by the server.

    A body over 64 KiB is written in 64 KiB writes as the client reads it
    (never copied whole into the transport); the server holds ``body`` until
    it is sent.
    """

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[str, str]] | None = None,
                 body: bytes = b"") -> None:
        self.status = status
        self.headers = [] if headers is None else headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status}, {len(self.body)} bytes>"


class StreamingResponse:
    """A response whose body is written piece by piece as ``body`` yields it.

    Each yielded ``bytes`` is one chunk in HTTP/1.1 (raw bytes on a
    close-delimited HTTP/1.0 stream); what ``body`` yields within one step of
    its task is sent together, as soon as the step ends (the pieces must not
    be mutated afterwards). A piece may have any size: one over 64 KiB is
    written in 64 KiB writes, and ``body`` is not resumed while the client
    leaves more than the high-water mark unread. When nothing was yielded for
    ``idle_interval`` seconds the server sends ``idle_bytes`` (e.g. an SSE
    comment) if given. If the client goes away, ``body`` is closed (``aclose``),
    which runs its ``finally`` blocks.

    ``on_close`` is called exactly once when the response is over, however it
    ends: written whole, cut by the client, or dropped unsent because the
    client left before it could start. A ``finally`` in ``body`` cannot promise
    that (a generator that never started has none to run), so what must happen
    whatever the client does (releasing a claim on a run, say) goes here.
    """

    __slots__ = ("status", "headers", "body", "idle_bytes", "idle_interval", "on_close")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: AsyncIterator[bytes],
                 idle_bytes: bytes | None = None, idle_interval: float = 15.0,
                 on_close: Callable[[], None] | None = None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.idle_bytes = idle_bytes
        self.idle_interval = idle_interval
        self.on_close = on_close

    def __repr__(self) -> str:
        return f"<StreamingResponse {self.status}>"


class Upgrade(NamedTuple):
    """Switch the connection to another protocol (101 Switching Protocols).

    The server sends the 101 head with ``headers``, hands the transport to
    ``protocol_factory()`` (with any bytes already received after the request),
    then awaits ``serve(protocol)``; the connection ends when it returns.
    """

    headers: list[tuple[str, str]]
    protocol_factory: Callable[[], asyncio.Protocol]
    serve: Callable[[asyncio.Protocol], Awaitable[None]]


AnyResponse = Union[Response, StreamingResponse, Upgrade]
Handler = Callable[[HTTPRequest], Awaitable[AnyResponse]]
# Checks a request on its head alone (``body`` empty) before its body is waited
# for; raises ``ApiError``, which is the answer.
BodyGuard = Callable[[HTTPRequest], None]
# Header fields to add to an answer the server makes from an error rather than
# a handler's response: the parser's 400/413/414/431/501/505, a timeout's 408,
# the router's 404/405, a body guard's refusal, an ``ApiError`` a handler
# raised, a handler's failure (500). Called with the request's header fields as
# far as they could be read: all of them once the head parsed; of a head that
# was refused or cut short, its well-formed complete field lines only
# (``heads.salvage_fields``), so none when it never got past its request line.
# Called on error paths only, never for a request that succeeds; it must not
# block, and what it raises is logged and ignored.
ErrorFields = Callable[[Headers], Iterable[tuple[str, str]]]


def error_body(status: int, message: str, *, type: str | None = None,
               code: str | None = None, param: str | None = None) -> bytes:
    """The JSON error body used on every path: ``{"error": {message, type, param, code}}``."""
    return json.dumps({"error": {
        "message": message, "type": type or error_type_for_status(status),
        "param": param, "code": code,
    }}, separators=(",", ":")).encode()


def error_response(exc: BaseException) -> Response:
    """The response for an error raised while handling a request (never reveals internals)."""
    status = http_status(exc)
    headers = [("content-type", "application/json")]
    if isinstance(exc, ApiError):
        headers.extend(exc.headers)
        body = error_body(status, exc.message, type=exc.type, code=exc.code, param=exc.param)
    elif isinstance(exc, HTTPProtocolError):
        body = error_body(status, exc.reason, code=_PROTOCOL_CODES.get(status))
    elif status == 500:
        body = error_body(500, "internal server error", code="internal_error")
    else:
        body = error_body(status, str(exc))
    return Response(status, headers, body)


# Fields a query string may hold: the gateway's routes read one or two.
MAX_QUERY_FIELDS: Final = 32


def query_fields(query: str, max_fields: int = MAX_QUERY_FIELDS) -> dict[str, str]:
    """The fields of a request's query string, percent-decoded (a repeated name: its last value).

    Raises ``ApiError`` 400 for more than ``max_fields`` fields.
    """
    try:
        return dict(parse_qsl(query, keep_blank_values=True, max_num_fields=max_fields))
    except ValueError:
        raise ApiError(400, f"Invalid query string: more than {max_fields} fields.",
                       code="invalid_value") from None


_PROTOCOL_CODES: Final = {
    400: "bad_request", 413: "request_too_large", 414: "uri_too_long",
    431: "header_fields_too_large", 501: "not_implemented", 505: "http_version_not_supported",
}


# -- routing ------------------------------------------------------------------------

class _Route(NamedTuple):
    methods: dict[str, Handler]
    template: str               # the path as registered, e.g. "/v1/models/{model}"
    param: str | None = None


class Router:
    """Maps paths to handlers by method. Exact paths, or a prefix whose tail becomes a param.

    ``HEAD`` is served by the ``GET`` handler (RFC 9110 §9.3.2) unless one is
    registered for it; ``OPTIONS`` and other unregistered methods answer 405
    with ``Allow``, unknown paths 404, always with the JSON error body.
    """

    def __init__(self) -> None:
        self._exact: dict[str, _Route] = {}
        self._prefixes: list[tuple[str, _Route]] = []
        self._guards: dict[tuple[str, str], BodyGuard] = {}

    def add(self, path: str, methods: Iterable[str], handler: Handler, *,
            body_guard: BodyGuard | None = None) -> None:
        """Register ``handler`` for ``methods`` on ``path``.

        A path ending in ``/{name}`` matches any non-empty rest of the path
        there (slashes included, percent-escapes decoded), passed as
        ``request.params[name]``. ``body_guard`` runs on the head before the
        server waits for a body still to come (or sends ``100 Continue``): a
        client it refuses never has its body held (the credentials check).
        """
        methods = tuple(methods)
        if body_guard is not None:
            for method in methods:
                self._guards[path, method] = body_guard
        if path.endswith("}"):
            prefix, _, name = path.rpartition("/{")
            route = next((r for p, r in self._prefixes if p == prefix + "/"), None)
            if route is None:
                route = _Route({}, path, name[:-1])
                self._prefixes.append((prefix + "/", route))
        else:
            route = self._exact.setdefault(path, _Route({}, path))
        for method in methods:
            route.methods[method] = handler

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str], str]:
        """The handler, params and route template (the path as registered, never the
        request's own) for a request; raises ``ApiError`` 404 or 405."""
        route = self._exact.get(path)
        params: dict[str, str] = {}
        if route is None:
            for prefix, candidate in self._prefixes:
                tail = path[len(prefix):]
                if path.startswith(prefix) and tail:
                    route, params = candidate, {candidate.param or "": unquote(tail)}
                    break
        if route is None:
            raise ApiError(404, f"no route for {method} {path}", code="not_found")
        handler = route.methods.get(method)
        if handler is None and method == "HEAD":
            handler = route.methods.get("GET")
        if handler is None:
            allowed = sorted(set(route.methods) | ({"HEAD"} if "GET" in route.methods else set()))
            raise ApiError(405, f"method {method} is not allowed on {path}",
                           code="method_not_allowed", headers=(("allow", ", ".join(allowed)),))
        return handler, params, route.template

    def body_guard(self, method: str, template: str) -> BodyGuard | None:
        """The body guard of the route ``resolve`` gave ``template`` for, if it has one."""
        return self._guards.get((template, method))
