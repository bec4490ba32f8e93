"""Every error equabot_gw raises on purpose, and the maps from errors to the wire.

The tree, grouped by what the caller does next::

    GatewayError
    ├── ConfigError                 stop start-up; the CLI prints one line, exit 2
    │   └── JSON5Error              a document that is not JSON5 (line, column)
    ├── ProtocolError               the peer broke a wire protocol: answer once, close
    │   ├── HTTPProtocolError       400 unless a subclass says otherwise
    │   │   ├── RequestLineTooLong      414
    │   │   ├── HeadTooLarge            431
    │   │   ├── BodyTooLarge            413
    │   │   ├── UnsupportedTransferCoding 501
    │   │   ├── UnknownMethod           501
    │   │   └── UnsupportedVersion      505
    │   └── WebSocketProtocolError  close 1002
    │       ├── InvalidUTF8             1007
    │       └── MessageTooBig           1009
    │           └── TooManyFragments    1009
    ├── ApiError                    a well-formed request refused: status + OpenAI error fields
    ├── RunError                    an agent run that did not finish
    │   ├── RunAborted              client gone, chat.abort, shutdown
    │   │   └── RunTimedOut         the agent's timeoutSeconds passed (504)
    │   ├── RunFailed               a bug inside the run: it settles as failed (500)
    │   ├── StorageError            stored data could not be made durable, or read (503)
    │   └── UpstreamError           the provider failed (502 unless a subclass says)
    │       ├── UpstreamRejected    the upstream said no (its status mapped by http_status)
    │       ├── ReplyTooLarge       the reply passed the provider's maxReplyBytes
    │       └── UpstreamTimeout     504
    ├── ConnectionClosed            the peer is gone; nothing more can be sent
    └── ClientError                 an outgoing HTTP request failed (net/client.py)
        ├── ClientConnectError      TCP or TLS could not be set up
        └── ClientTimeout           no progress in a phase (connect, write, read)

Exceptions hold fields and build their message from them. Foreign exceptions
are mapped where they enter (``raise … from exc``); anything else escaping a
boundary is a bug and becomes a 500 / close 1011 that reveals nothing.
Only two functions turn errors into wire codes: :func:`http_status` and
:func:`ws_close_code`.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "GatewayError", "ConfigError", "JSON5Error", "ProtocolError",
    "HTTPProtocolError", "RequestLineTooLong", "HeadTooLarge", "BodyTooLarge",
    "UnsupportedTransferCoding", "UnknownMethod", "UnsupportedVersion",
    "WebSocketProtocolError", "InvalidUTF8", "MessageTooBig", "TooManyFragments",
    "ApiError", "RunError", "RunAborted", "RunTimedOut", "RunFailed", "StorageError", "UpstreamError",
    "UpstreamRejected", "ReplyTooLarge", "UpstreamTimeout", "ConnectionClosed",
    "ClientError", "ClientConnectError", "ClientTimeout",
    "http_status", "ws_close_code", "error_type_for_status", "SHUTDOWN_ABORT", "INTERRUPTED",
    "run_error_fields", "run_error_of",
]


class GatewayError(Exception):
    """Base of every error equabot_gw raises on purpose."""


# -- configuration -----------------------------------------------------------

class ConfigError(GatewayError):
    """Configuration that cannot be used; ``path`` is the dotted key ("" = whole file)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class JSON5Error(ConfigError):
    """Text that is not a JSON5 document, at 1-based ``line``:``column``."""

    def __init__(self, reason: str, line: int, column: int, pos: int) -> None:
        self.line = line
        self.column = column
        self.pos = pos
        super().__init__("", f"JSON5: {reason} at {line}:{column}")
        self.reason = reason


# -- wire protocols -----------------------------------------------------------

class ProtocolError(GatewayError):
    """The peer sent bytes that break the protocol; the connection cannot go on."""


class HTTPProtocolError(ProtocolError):
    """A request (or response, in the client role) that is not valid HTTP/1.1."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class RequestLineTooLong(HTTPProtocolError):
    """The request line passed ``limit`` bytes (RFC 9112 §3: 414)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request line longer than {limit} bytes")


class HeadTooLarge(HTTPProtocolError):
    """The header section passed a size or count limit (RFC 6585 §5: 431)."""

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        super().__init__(f"{what} over the limit of {limit}")


class BodyTooLarge(HTTPProtocolError):
    """The content passed ``limit`` bytes (RFC 9110 §15.5.14: 413)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        self.limit = limit
        self.size = size
        seen = f" ({size} bytes)" if size is not None else ""
        super().__init__(f"request body{seen} over the limit of {limit} bytes")


class UnsupportedTransferCoding(HTTPProtocolError):
    """A transfer coding other than chunked (RFC 9112 §6.1: 501)."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        super().__init__(f"transfer coding {coding!r} is not implemented")


class UnknownMethod(HTTPProtocolError):
    """A method the server does not recognise (RFC 9110 §9.1: 501)."""

    def __init__(self, method: str) -> None:
        self.method = method
        super().__init__(f"method {method!r} is not implemented")


class UnsupportedVersion(HTTPProtocolError):
    """An HTTP major version other than 1 (RFC 9110 §15.6.6: 505)."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"HTTP version {version!r} is not supported")


class WebSocketProtocolError(ProtocolError):
    """A frame or sequence of frames that breaks RFC 6455 (close 1002)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InvalidUTF8(WebSocketProtocolError):
    """A text message or close reason that is not UTF-8 (RFC 6455 §8.1: 1007)."""

    def __init__(self, where: str = "text message") -> None:
        super().__init__(f"invalid UTF-8 in {where}")


class MessageTooBig(WebSocketProtocolError):
    """A message over ``limit`` bytes (RFC 6455 §7.4.1: 1009)."""

    def __init__(self, limit: int, size: int) -> None:
        self.limit = limit
        self.size = size
        super().__init__(f"message of {size} bytes or more over the limit of {limit}")


class TooManyFragments(MessageTooBig):
    """A message in more than ``limit`` frames (1009: too big to process, RFC 6455 §7.4.1)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = None
        WebSocketProtocolError.__init__(self, f"message in more than {limit} fragments")


# -- requests the gateway refuses -----------------------------------------

_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    415: "invalid_request_error",
    426: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    501: "invalid_request_error",
    505: "invalid_request_error",
}


def error_type_for_status(status: int) -> str:
    """The OpenAI error ``type`` that goes with an HTTP status."""
    return _TYPE_FOR_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class ApiError(GatewayError):
    """A well-formed request the gateway refuses, with the fields of an OpenAI error body.

    ``headers`` are extra response headers (``Allow``, ``Retry-After``,
    ``WWW-Authenticate``) as (name, value) pairs.
    """

    def __init__(self, status: int, message: str, *, type: str | None = None,
                 code: str | None = None, param: str | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.message = message
        self.type = type or error_type_for_status(status)
        self.code = code
        self.param = param
        self.headers = headers
        super().__init__(message)


# -- runs ------------------------------------------------------------------

class RunError(GatewayError):
    """An agent run that did not finish; ``reason`` is a short machine word."""

    reason = "error"


# The reason of the runs the gateway aborts when it stops: answered 503, which clients
# retry (every other abort is 499: its client left, or another one stopped the run).
SHUTDOWN_ABORT = "shutdown"
# What a keyed run the gateway never recorded (it stopped, a crash say, in the middle of
# the run) replays as: it is not run again, since its provider may have answered (and
# billed) already. The gateway's failure, not the client's: 503 like a shutdown's abort.
INTERRUPTED = "interrupted: the gateway stopped before the run was recorded"


class RunAborted(RunError):
    """The run was stopped before it finished: ``why`` says by whom."""

    reason = "aborted"

    def __init__(self, why: str = "aborted") -> None:
        self.why = why
        super().__init__(f"run aborted: {why}")


class RunTimedOut(RunAborted):
    """The run passed its agent's ``timeout`` seconds and was aborted (504)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__("timeout")
        self.args = (f"run aborted: no reply within {timeout:g} s",)


class RunFailed(RunError):
    """An unexpected exception inside a run: the run fails (500) instead of hanging.

    ``kind`` is the exception's type name; nothing else of it reaches a client.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"internal error in the run ({kind})")


class StorageError(RunError):
    """Stored data could not be written durably, or read (503); earlier turns are intact.

    ``detail`` names the step and the errno, never a path: the message may
    reach an HTTP client. ``reading``: the step read (a transcript, a
    journal) rather than wrote. ``path`` is the file or directory concerned,
    for the operator: in the message only of ``for_operator``'s copy.
    """

    reason = "storage"

    def __init__(self, detail: str, *, reading: bool = False, path: str | None = None,
                 prefix: str | None = None) -> None:
        self.detail = detail
        self.reading = reading
        self.path = path
        prefix = prefix or ("stored data could not be read" if reading else "transcript could not be written")
        super().__init__(f"{prefix}: {detail}")

    def for_operator(self, what: str) -> StorageError:
        """This error as start-up reports it to the operator: ``what`` failed, the step,
        the errno, and the path (never send it to a client)."""
        where = f": {self.path}" if self.path else ""
        copy = StorageError(f"{self.detail}{where}", reading=self.reading, path=self.path, prefix=what)
        copy.__cause__ = self.__cause__
        return copy


class UpstreamError(RunError):
    """The provider failed: a bad answer, a dropped connection, garbage (502)."""

    reason = "upstream"

    def __init__(self, provider: str, detail: str) -> None:
        self.provider = provider
        self.detail = detail
        super().__init__(f"provider {provider!r}: {detail}")


class UpstreamRejected(UpstreamError):
    """The upstream answered ``upstream_status``; ``retry_after`` is seconds or None.

    ``code`` and ``param`` are the upstream's OpenAI error fields (checked by
    the provider: short, of safe characters) or None when it sent none.
    """

    def __init__(self, provider: str, upstream_status: int, detail: str,
                 retry_after: str | None = None, *, code: str | None = None,
                 param: str | None = None) -> None:
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.code = code
        self.param = param
        super().__init__(provider, f"upstream answered {upstream_status}: {detail}")


class ReplyTooLarge(UpstreamError):
    """The reply passed ``limit`` bytes of text (``models.providers.<name>.maxReplyBytes``): 502."""

    def __init__(self, provider: str, limit: int) -> None:
        self.limit = limit
        super().__init__(provider, f"reply longer than the limit of {limit} bytes "
                                   f"(models.providers.{provider}.maxReplyBytes)")


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within ``timeout`` seconds (504)."""

    reason = "timeout"

    def __init__(self, provider: str, timeout: float, phase: str = "read") -> None:
        self.timeout = timeout
        self.phase = phase
        super().__init__(provider, f"no {phase} progress within {timeout:g} s")


class ConnectionClosed(GatewayError):
    """The peer is gone (``code``/``reason`` for WebSocket); nothing more can be sent."""

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")


class ClientError(GatewayError):
    """An outgoing request of the gateway's own HTTP client failed; providers map it to UpstreamError."""


class ClientConnectError(ClientError):
    """The connection to ``host``:``port`` could not be opened (TCP or TLS); ``reason`` says why."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(f"cannot connect to {host}:{port}: {reason}")


class ClientTimeout(ClientError):
    """No progress in ``phase`` ("connect", "write" or "read") within ``timeout`` seconds."""

    def __init__(self, phase: str, timeout: float) -> None:
        self.phase = phase
        self.timeout = timeout
        super().__init__(f"no {phase} progress within {timeout:g} s")


# -- a run's error as stored ---------------------------------------------------

# The run errors a stored line may name, by class name (no other class is ever made from
# one), and the fields each adds to its bases': what the doors read to answer it.
_RUN_ERROR_FIELDS: dict[type[RunError], tuple[str, ...]] = {
    RunError: (), RunAborted: ("why",), RunTimedOut: ("timeout",), RunFailed: ("kind",),
    StorageError: ("detail", "reading"), UpstreamError: ("provider", "detail"),
    UpstreamRejected: ("upstream_status", "retry_after", "code", "param"), ReplyTooLarge: ("limit",),
    UpstreamTimeout: ("timeout", "phase")}
_RUN_ERRORS: dict[str, type[RunError]] = {cls.__name__: cls for cls in _RUN_ERROR_FIELDS}
_SCALARS: Final = (str, int, float, bool, type(None))


def _fields_of(cls: type[RunError]) -> list[str]:
    return [name for base in cls.__mro__ for name in _RUN_ERROR_FIELDS.get(base, ())]   # type: ignore[arg-type]


def run_error_fields(exc: RunError) -> dict[str, Any]:
    """What a transcript keeps of a run's error beside its message, so that ``run_error_of``
    makes it again: ``{"class", "fields"}``, its class (the nearest of this module's) and
    the fields the doors answer it by (the provider, the upstream's status, code and
    param, a timeout…), and its ``reason`` when a subclass has its own."""
    cls = next(c for c in type(exc).__mro__ if c in _RUN_ERROR_FIELDS)
    fields = {name: getattr(exc, name, None) for name in _fields_of(cls)}
    if exc.reason != cls.reason:
        fields["reason"] = exc.reason
    return {"class": cls.__name__, "fields": {k: v if type(v) in _SCALARS else str(v) for k, v in fields.items()}}


def run_error_of(stored: object, message: str) -> RunError | None:
    """The run error ``run_error_fields`` described, with ``message`` (the words its client
    was given) as its message: the same class and fields, so that every door answers it as
    it answered the original (status, type, code, param, message). None when ``stored`` is
    not such a description (a line of an older version, or hand-edited): the caller falls
    back to what the line's message alone says.

    The error is made field by field, without its constructor: a message made again
    from the fields would differ from the original once a wording changed.
    """
    cls = _RUN_ERRORS.get(stored.get("class")) if type(stored) is dict else None     # type: ignore[arg-type]
    fields = stored.get("fields") if cls is not None else None                       # type: ignore[union-attr]
    names = _fields_of(cls) if cls is not None else []
    if type(fields) is not dict or not all(name in fields for name in names) \
            or not all(type(value) in _SCALARS for value in fields.values()):
        return None
    exc = cls.__new__(cls)          # type: ignore[union-attr]
    exc.args = (message,)
    for name in names:
        setattr(exc, name, fields[name])
    if type(fields.get("reason")) is str:
        exc.reason = fields["reason"]
    if cls is StorageError or issubclass(cls, StorageError):        # type: ignore[arg-type]
        exc.path = None             # the operator's, never stored
    return exc


# -- the two maps to the wire ------------------------------------------------

_HTTP_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (RequestLineTooLong, 414),
    (HeadTooLarge, 431),
    (BodyTooLarge, 413),
    (UnsupportedTransferCoding, 501),
    (UnknownMethod, 501),
    (UnsupportedVersion, 505),
    (HTTPProtocolError, 400),
    (RunTimedOut, 504),
    (RunAborted, 499),            # nginx's convention: the client left (or another stopped its run)
    (StorageError, 503),
    (UpstreamTimeout, 504),
    (UpstreamError, 502),
)


def http_status(exc: BaseException) -> int:
    """The HTTP status that answers ``exc``; 500 for anything not ours.

    ``UpstreamRejected``: upstream 400 → 400, 429 → 429,
    401/403 and everything else → 502.
    """
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, UpstreamRejected):
        return exc.upstream_status if exc.upstream_status in (400, 429) else 502
    if type(exc) is RunAborted and (exc.why == SHUTDOWN_ABORT or exc.why == INTERRUPTED):
        return 503
    for cls, status in _HTTP_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


_WS_CLOSE: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidUTF8, 1007),
    (MessageTooBig, 1009),
    (WebSocketProtocolError, 1002),
)


def ws_close_code(exc: BaseException) -> int:
    """The WebSocket close code that ends a connection failed by ``exc``; 1011 if not ours."""
    for cls, code in _WS_CLOSE:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, ApiError) and exc.status in (401, 403, 429):
        return 1008    # RFC 6455 §7.4.1: policy violation
    return 1011
