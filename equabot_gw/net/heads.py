"""HTTP/1.1 message heads: header fields, request and response heads, framing rules.

Owns turning one complete head (bytes up to, not including, the empty line)
into a ``Request`` or ``Response`` with its framing decided (RFC 9112 §6.3),
and the checks the incremental reader applies to lines of a head still
arriving. Pure functions over bytes: no buffering (``http11.py`` does that),
no I/O, no clock, no config. Errors are the ``HTTPProtocolError`` family.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import (
    BodyTooLarge, HeadTooLarge, HTTPProtocolError, UnknownMethod, UnsupportedTransferCoding,
    UnsupportedVersion,
)
from . import grammar

# Precedents: Apache LimitRequestFields 100; 20 MiB is gateway.http.maxBodyBytes.
DEFAULT_MAX_HEADERS: Final = 100
DEFAULT_MAX_BODY_BYTES: Final = 20 * 1024 * 1024


class Headers:
    """Header fields in arrival order: names lower-case ``str``, values ``str``.

    Values are decoded as ISO-8859-1 (RFC 9110 §5.5: obs-text is opaque), so
    ``value.encode("latin-1")`` gives back the bytes on the wire.

    ``get(name, default=None)``: the first value of ``name`` (lower-case), or
    ``default``. It is the map of first values' own ``dict.get``, bound per
    instance: the gateway reads several fields of every request, and a Python
    method around it would cost a frame each time.
    """

    __slots__ = ("_items", "_first", "_unique", "get")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)
        # reversed(): later assignments win in dict(), so the first value does.
        self._first: dict[str, str] = dict(reversed(self._items))
        self._unique = len(self._first) == len(self._items)
        self.get = self._first.get

    @classmethod
    def _of(cls, items: list[tuple[str, str]]) -> Headers:
        """``Headers(items)`` taking ``items`` as its own list (the parser's: no copy)."""
        headers = cls.__new__(cls)
        headers._items = items
        headers._first = dict(reversed(items))
        headers._unique = len(headers._first) == len(items)
        headers.get = headers._first.get
        return headers

    def add(self, name: str, value: str) -> None:
        """Append a field; ``name`` must already be lower-case."""
        self._items.append((name, value))
        if name in self._first:
            self._unique = False
        else:
            self._first[name] = value

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order (RFC 9110 §5.3: combine with ", ")."""
        if name not in self._first:
            return []
        if self._unique:
            return [self._first[name]]
        return [v for n, v in self._items if n == name]

    def __contains__(self, name: object) -> bool:
        return name in self._first

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({len(self._items)} fields: {', '.join(self._first)})"


@dataclass(slots=True)
class Request:
    """A parsed request head. ``path`` and ``query`` split the target at "?" (the
    fragment, if a client sent one, is dropped); ``version`` is "1.1" or "1.0".
    """

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: Headers
    keep_alive: bool
    content_length: int | None      # None with chunked framing
    chunked: bool
    expect_continue: bool
    upgrade: str | None             # lower-case Upgrade protocols when asked, or "connect"


@dataclass(slots=True)
class Response:
    """A parsed response head (client role)."""

    version: str
    status: int
    reason: str
    headers: Headers


# -- head parsing ---------------------------------------------------------------

def _parse_fields(head: bytes, start: int, max_headers: int) -> Headers:
    """Fields of ``head[start:]``, which is empty or begins with CRLF."""
    if grammar.FIELD_SECTION.fullmatch(head, start) is None:
        for line in head[start + 2:].split(b"\r\n"):
            if grammar.FIELD_LINE.fullmatch(line) is None:
                raise HTTPProtocolError(describe_bad_field(line))
        raise HTTPProtocolError("malformed header section")
    if start == len(head):
        return Headers()
    lines = head[start + 2:].decode("latin-1").split("\r\n")
    if len(lines) > max_headers:
        raise HeadTooLarge("header field count", max_headers)
    items = []
    for line in lines:
        name, _, value = line.partition(":")
        items.append((name.lower(), value.strip(" \t")))
    return Headers._of(items)


def salvage_fields(data: bytes, max_headers: int = DEFAULT_MAX_HEADERS) -> Headers:
    """The fields that can still be read from a request head that was refused or cut short.

    ``data`` is what arrived of the head, from its request line on, possibly
    past a limit or without its end. Only lines ended by CRLF before the empty
    line are read (a line cut short may be the beginning of a longer value, so
    its prefix is never taken for the value); a line that is not a valid field
    line is skipped, and so is the request line; at most ``max_headers`` fields.
    For the answer to such a request, never for routing it.
    """
    end = data.find(b"\r\n\r\n")
    lines = (data[:end + 2] if end >= 0 else data).split(b"\r\n", max_headers + 1)
    headers = Headers()
    for line in lines[1:-1][:max_headers]:
        if grammar.FIELD_LINE.fullmatch(line) is not None:
            name, _, value = line.decode("latin-1").partition(":")
            headers.add(name.lower(), value.strip(" \t"))
    return headers


def describe_bad_field(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 §5.2: a server "MUST either reject the message by sending
        # a 400 (Bad Request) ... or replace each received obs-fold".
        return "obsolete line folding (obs-fold) in header section"
    if b"\r" in line or b"\n" in line:
        return "bare CR or LF in header section"
    name, colon, _ = line.partition(b":")
    if not colon:
        return "header line without a colon"
    if name.rstrip(b" \t") != name:
        # RFC 9112 §5.1: "MUST respond with 400 ... whitespace between a
        # header field name and colon".
        return "whitespace between header name and colon"
    if not grammar.TOKEN.fullmatch(name):
        return "invalid character in header name"
    return "invalid character in header value"


def _check_line_ends(head: bytes) -> int:
    """Where the start line ends; raises on any CR or LF that is not a CRLF pair."""
    # RFC 9112 §2.2: a bare CR must be rejected or replaced; a bare LF MAY be
    # taken as a terminator, but accepting it is how smuggling starts (the
    # proxy in front may disagree), so the strict reading wins here. Counting
    # is C-speed: every CRLF accounts for one CR and one LF.
    pairs = head.count(b"\r\n")
    if head.count(b"\r") != pairs or head.count(b"\n") != pairs:
        raise HTTPProtocolError("bare CR or LF in message head")
    end = head.find(b"\r\n")
    return len(head) if end < 0 else end


def parse_content_length(values: list[str], max_body_bytes: int | None) -> int:
    # RFC 9110 §8.6: a list of identical values MAY be taken as one; differing
    # values are unrecoverable framing errors.
    if len(values) == 1 and values[0].isascii() and values[0].isdigit() and len(values[0]) < 16:
        length = int(values[0])      # the common case: one plain number
        if max_body_bytes is not None and length > max_body_bytes:
            raise BodyTooLarge(max_body_bytes, length)
        return length
    seen: set[str] = set()
    for value in values:
        for member in value.split(","):
            member = member.strip(" \t")
            if not grammar.CONTENT_LENGTH.fullmatch(member.encode("latin-1")):
                raise HTTPProtocolError(f"invalid Content-Length {member!r}")
            seen.add(member.lstrip("0") or "0")
    if len(seen) != 1:
        raise HTTPProtocolError("conflicting Content-Length values")
    text = seen.pop()
    if max_body_bytes is not None and (len(text) > 20 or int(text) > max_body_bytes):
        raise BodyTooLarge(max_body_bytes, int(text) if len(text) <= 20 else None)
    if len(text) > 20:
        raise HTTPProtocolError("Content-Length out of range")
    return int(text)


def transfer_codings(values: list[str]) -> list[str]:
    codings: list[str] = []
    for value in values:
        members = grammar.split_list(value)
        if not members:
            raise HTTPProtocolError("empty Transfer-Encoding")
        codings.extend(m.lower() for m in members)
    return codings


def check_chunked_final(codings: list[str], role: str) -> None:
    # RFC 9112 §6.1: "A sender MUST NOT apply the chunked transfer coding more
    # than once to a message body".
    if codings.count("chunked") > 1:
        raise HTTPProtocolError("chunked applied more than once")
    for coding in codings:
        if not grammar.TOKEN.fullmatch(coding.encode("latin-1")):
            raise HTTPProtocolError(f"invalid transfer coding {coding!r}")
    if codings[-1] != "chunked" and role == "server":
        # RFC 9112 §6.3 (4): "If a Transfer-Encoding header field is present in
        # a request and the chunked transfer coding is not the final encoding,
        # ... the server MUST respond with the 400 (Bad Request) status code".
        raise HTTPProtocolError("chunked is not the final transfer coding")
    for coding in codings:
        if coding != "chunked":
            # RFC 9112 §6.1: "A server that receives a request message with a
            # transfer coding it does not understand SHOULD respond with 501".
            raise UnsupportedTransferCoding(coding)


_NO_TOKENS: Final[frozenset[str]] = frozenset()
# Host values found valid, so a client's usual Host is matched against the
# grammar once, not per request; only valid values, at most 64 KiB of them.
MAX_VALID_HOSTS: Final = 256
MAX_VALID_HOST_CHARS: Final = 256
_VALID_HOSTS: set[str] = set()


def connection_tokens(headers: Headers) -> set[str]:
    tokens: set[str] = set()
    for value in headers.get_all("connection"):
        tokens.update(t.lower() for t in grammar.split_list(value))
    return tokens


def _split_target(target: str) -> tuple[str, str]:
    path, _, rest = target.partition("?")
    if "#" in path:
        return path.partition("#")[0], ""
    return path, rest.partition("#")[0]


def _path_of_absolute(target: str) -> str:
    """The origin-form part of an absolute-form target: from the first "/", "?" or "#" after the authority."""
    rest = target.partition("://")[2]
    ends = [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0]
    tail = rest[min(ends):] if ends else ""
    return tail if tail.startswith("/") else "/" + tail


def _check_target(method: str, target: bytes) -> None:
    # RFC 9112 §3.2: origin-form for most requests, absolute-form for any,
    # authority-form only with CONNECT. Asterisk-form is "only used for a
    # server-wide OPTIONS request" by senders; SSDP's M-SEARCH uses it too,
    # and accepting it cannot change framing, so any method may carry it.
    if method == "CONNECT":
        ok = grammar.AUTHORITY_FORM.fullmatch(target) is not None
    elif target == b"*":
        ok = True
    else:
        ok = (grammar.ORIGIN_FORM.fullmatch(target) is not None
              or grammar.ABSOLUTE_FORM.fullmatch(target) is not None)
    if not ok:
        raise HTTPProtocolError(f"invalid request-target for {method}")


def parse_request_head(head: bytes, *, max_headers: int = DEFAULT_MAX_HEADERS,
                       max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES) -> Request:
    """Parse a complete request head (request line and fields, without the final CRLF CRLF).

    Raises ``HTTPProtocolError`` (400), ``HeadTooLarge`` (431), ``BodyTooLarge``
    (413, from Content-Length alone), ``UnsupportedTransferCoding`` (501) or
    ``UnsupportedVersion`` (505).
    """
    line_end = _check_line_ends(head)
    m = check_request_line(head[:line_end])
    method = m.group(1).decode("ascii")
    raw_target = m.group(2)
    version = "1.0" if m.group(4) == b"0" else "1.1"
    headers = _parse_fields(head, line_end, max_headers)
    target = raw_target.decode("ascii")
    if target[0] == "/":
        path, query = _split_target(target)
    elif "://" in target:
        # RFC 9112 §3.2.2: "A server MUST accept the absolute-form in requests";
        # it is routed by its path (and query), like the origin-form.
        path, query = _split_target(_path_of_absolute(target))
    else:
        path, query = target, ""
    return _frame_request(method, target, path, query, version, headers, max_body_bytes)


def check_request_line(line: bytes) -> re.Match[bytes]:
    m = grammar.REQUEST_LINE.fullmatch(line)
    if m is None:
        raise bad_request_line(line)
    if m.group(3) != b"1":
        # RFC 9110 §15.6.6: 505 for a major version the server does not support.
        raise UnsupportedVersion(f"HTTP/{m.group(3).decode()}")
    method = m.group(1).decode("ascii")
    if method not in grammar.KNOWN_METHODS:
        raise UnknownMethod(method)
    _check_target(method, m.group(2))
    return m


def check_framing_fields(fields: list[tuple[str, str]], max_body_bytes: int | None) -> None:
    cl = [v for n, v in fields if n == "content-length"]
    te = [v for n, v in fields if n == "transfer-encoding"]
    if cl:
        parse_content_length(cl, max_body_bytes)
    if cl and te:
        raise HTTPProtocolError("both Content-Length and Transfer-Encoding")
    if sum(n == "host" for n, _ in fields) > 1:
        raise HTTPProtocolError("more than one Host header")


def bad_request_line(line: bytes) -> HTTPProtocolError:
    """The error for a request line the grammar refused, decided by its shape."""
    return start_line_error(line, complete=True) or HTTPProtocolError("malformed request line")


def start_line_error(line: bytes, *, complete: bool) -> HTTPProtocolError | None:
    """What is wrong with a request line, or its beginning (``complete`` False), if it is certain.

    The rules run in the order their evidence arrives (method, empty target,
    version, extra words), so a verdict reached on a beginning holds for every
    longer line: a head gets the same error whole or one byte at a time.
    """
    parts = line.split(b" ")
    if len(parts) > 1 and grammar.TOKEN.fullmatch(parts[0]) is None:
        return HTTPProtocolError("malformed request line")
    if len(parts) > 2 and not parts[1]:
        return HTTPProtocolError("malformed request line")
    if len(parts) > 2 and (error := version_error(parts[2], complete=complete or len(parts) > 3)):
        return error
    if len(parts) > 3:
        return HTTPProtocolError("malformed request line")
    if not complete:
        return None
    if len(parts) == 2 and parts[0] == b"GET" and parts[1]:
        # "GET /path" with no version is an HTTP/0.9 simple-request.
        return UnsupportedVersion("0.9")
    return HTTPProtocolError("malformed request line")


def version_error(version: bytes, *, complete: bool) -> HTTPProtocolError | None:
    """What is wrong with the third word of a request line, once that is certain.

    With ``complete`` False the word may still grow, so only verdicts that no
    further byte can change are returned: the same request gets the same
    status whether it arrives whole or one byte at a time.
    """
    name, slash, rest = version.partition(b"/")
    if len(name) > MAX_PROTOCOL_NAME_BYTES:
        # No protocol is named at such length ("HTTP", "RTSP"): the line is
        # garbage, and an unfinished one is judged without waiting for more
        # (judging it whole at every new byte would cost quadratic time).
        return HTTPProtocolError("malformed request line")
    if not slash:
        if not complete and (VERSION_PREFIX.fullmatch(version) or grammar.TOKEN.fullmatch(version)):
            return None
        return HTTPProtocolError("malformed request line")
    if name != b"HTTP":
        if PROTOCOL_NAME.fullmatch(name) is None or name.upper() == b"HTTP":
            return HTTPProtocolError("malformed request line")
        if not rest and not complete:
            return None
        if not rest[:1].isdigit():
            # "GET /a b/ HTTP/1.1": a space in the target, not a protocol named "b".
            return HTTPProtocolError("malformed request line")
        # RFC 9110 §15.6.6: 505 for a protocol or major version not supported
        # (RTSP/1.0, ICE/1.0 and friends).
        return UnsupportedVersion(name.decode("latin-1")[:32])
    major = rest[:1]
    if major.isdigit() and major != b"1":
        return UnsupportedVersion(f"HTTP/{major.decode()}")
    if not complete and VERSION_PREFIX.fullmatch(version):
        return None
    return HTTPProtocolError("malformed request line")


def _frame_request(method: str, target: str, path: str, query: str, version: str,
                   headers: Headers, max_body_bytes: int | None) -> Request:
    first = headers._first
    if headers._unique:     # no name repeats (the usual head): a field's values are its first
        host = first.get("host")
        hosts = [] if host is None else [host]
        te = [first["transfer-encoding"]] if "transfer-encoding" in first else []
        cl = [first["content-length"]] if "content-length" in first else []
    else:
        hosts = headers.get_all("host")
        te = headers.get_all("transfer-encoding")
        cl = headers.get_all("content-length")
    # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code
    # to any HTTP/1.1 request message that lacks a Host header field and to any
    # request message that contains more than one Host header field line or a
    # Host header field with an invalid field value."
    if len(hosts) > 1 or (version == "1.1" and not hosts):
        raise HTTPProtocolError("missing Host header" if not hosts else "more than one Host header")
    host = hosts[0] if hosts else ""
    if host and host not in _VALID_HOSTS:
        if not (host.isascii() and grammar.HOST.fullmatch(host.encode("ascii"))):
            raise HTTPProtocolError("invalid Host header")
        if len(_VALID_HOSTS) < MAX_VALID_HOSTS and len(host) <= MAX_VALID_HOST_CHARS:
            _VALID_HOSTS.add(host)
    tokens = connection_tokens(headers) if "connection" in first else _NO_TOKENS
    keep_alive = "close" not in tokens and (version == "1.1" or "keep-alive" in tokens)
    upgrade = None
    if method == "CONNECT":
        upgrade = "connect"
    elif "upgrade" in tokens and "upgrade" in first:
        upgrade = ", ".join(headers.get_all("upgrade")).lower()
    chunked = False
    content_length: int | None = 0
    if upgrade == "connect":
        # RFC 9110 §9.3.6: CONNECT content has no defined semantics; the tunnel
        # begins. Its framing fields are still judged as the incremental reader
        # judges them, so the verdict does not depend on how the head arrived.
        check_framing_fields([(n, v) for n, v in headers if n in ("content-length", "transfer-encoding")],
                             max_body_bytes)
    elif te:
        if version == "1.0":
            # RFC 9112 §6.1: HTTP/1.0 + Transfer-Encoding "MUST treat the message
            # as if the framing is faulty".
            raise HTTPProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            # RFC 9112 §6.3 (3): such a message "might indicate an attempt to
            # perform request smuggling"; the server MAY reject it. We do.
            raise HTTPProtocolError("both Content-Length and Transfer-Encoding")
        check_chunked_final(transfer_codings(te), "server")
        chunked, content_length = True, None
    elif cl:
        content_length = parse_content_length(cl, max_body_bytes)
    expect = first.get("expect")
    expect_continue = (version == "1.1" and expect is not None
                       and expect.strip(" \t").lower() == "100-continue")
    return Request(method, target, path, query, version, headers, keep_alive,
                   content_length, chunked, expect_continue, upgrade)


def parse_response_head(head: bytes, *, max_headers: int = DEFAULT_MAX_HEADERS) -> Response:
    """Parse a complete response head (status line and fields, without the final CRLF CRLF).

    Raises ``HTTPProtocolError`` or ``UnsupportedVersion``.
    """
    line_end = _check_line_ends(head)
    m = grammar.STATUS_LINE.fullmatch(head[:line_end])
    if m is None:
        raise HTTPProtocolError("malformed status line")
    if m.group(1) != b"1":
        raise UnsupportedVersion(f"{m.group(1).decode()}.{m.group(2).decode()}")
    version = "1.0" if m.group(2) == b"0" else "1.1"
    reason = (m.group(4) or b"").decode("latin-1")
    status = int(m.group(3))
    if status < 100:
        # RFC 9110 §15: "Values outside the range 100..599 are invalid"; 6xx-9xx
        # are read as errors by the caller, 0xx cannot be framed.
        raise HTTPProtocolError(f"invalid status code {status:03d}")
    return Response(version, status, reason, _parse_fields(head, line_end, max_headers))


def parse_chunk_size(line: bytes) -> int:
    """The size from a chunk-size line (without CRLF); extensions are checked and dropped."""
    if 0 < len(line) <= 15 and _HEX_DIGITS.issuperset(line):
        return int(line, 16)    # the common line: digits alone, no regex needed
    m = grammar.CHUNK_LINE.fullmatch(line)
    if m is None:
        raise HTTPProtocolError("invalid chunk size line")
    digits = m.group(1).lstrip(b"0") or b"0"
    if len(digits) > 15:    # 2**60 bytes: no body we accept comes near; avoids bignums
        raise HTTPProtocolError("chunk size out of range")
    return int(digits, 16)


_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")
# The longest protocol name in a request line judged on its merits.
MAX_PROTOCOL_NAME_BYTES: Final = 32
# What a protocol name in a request line looks like (RTSP, ICE, HTTPS): upper-case.
PROTOCOL_NAME: Final = re.compile(rb"[A-Z][A-Z0-9.+-]*")
# A prefix of "HTTP/1.d": what the third word of an unfinished request line may be.
VERSION_PREFIX: Final = re.compile(rb"(?:H(?:T(?:T(?:P(?:/(?:1(?:\.[0-9]?)?)?)?)?)?)?)?")


_DAY_NAMES: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imf_fixdate(seconds: float) -> str:
    """Epoch ``seconds`` as an IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``.

    RFC 9110 §5.6.7: "IMF-fixdate = day-name "," SP date1 SP time-of-day SP GMT";
    written out rather than through ``email.utils``, which a server need not import.
    """
    t = time.gmtime(seconds)
    return (f"{_DAY_NAMES[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")
