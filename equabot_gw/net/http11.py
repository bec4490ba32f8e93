"""Sans-I/O HTTP/1.1 codec (RFC 9110, RFC 9112) for both roles.

Owns: parsing request and response heads, message framing (Content-Length,
chunked, close-delimited), body readers with limits, and serialising heads and
chunks. It never awaits, reads the clock or reads config: limits come in as
constructor arguments, bytes come in through ``receive_data`` and leave as the
return values of the ``encode_*`` functions. Errors are the ``HTTPProtocolError``
family of ``errors.py``; the caller maps them to statuses with ``http_status``.

Events from ``next_event()``: a ``Request``/``Response`` head, ``bytes`` of
body, ``END_OF_MESSAGE``, ``NEED_DATA`` or ``EOF`` (clean close between messages).
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import (
    BodyTooLarge, HeadTooLarge, HTTPProtocolError, RequestLineTooLong,
    UnknownMethod, UnsupportedTransferCoding, UnsupportedVersion,
)
from . import grammar

# Limits. Precedents: Apache LimitRequestLine 8190 and LimitRequestFields 100;
# the 64 KiB head and 20 MiB body are the gateway's documented defaults
# (gateway.http.maxHeaderBytes / maxBodyBytes).
DEFAULT_MAX_REQUEST_LINE_BYTES: Final = 8190
DEFAULT_MAX_HEAD_BYTES: Final = 64 * 1024
DEFAULT_MAX_HEADERS: Final = 100
DEFAULT_MAX_BODY_BYTES: Final = 20 * 1024 * 1024
# A chunk-size line with extensions; llhttp and h11 use similar bounds.
MAX_CHUNK_LINE_BYTES: Final = 4096
# RFC 9112 §2.2: "SHOULD ignore at least one empty line (CRLF) received prior
# to the request-line"; we ignore up to this many, then call it garbage.
MAX_LEADING_EMPTY_LINES: Final = 4


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
END_OF_MESSAGE: Final = _Sentinel("END_OF_MESSAGE")
EOF: Final = _Sentinel("EOF")


class Headers:
    """Header fields in arrival order: names lower-case ``str``, values ``str``.

    Values are decoded as ISO-8859-1 (RFC 9110 §5.5: obs-text is opaque), so
    ``value.encode("latin-1")`` gives back the bytes on the wire.
    """

    __slots__ = ("_items", "_first", "_unique")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)
        # reversed(): later assignments win in dict(), so the first value does.
        self._first: dict[str, str] = dict(reversed(self._items))
        self._unique = len(self._first) == len(self._items)

    def add(self, name: str, value: str) -> None:
        """Append a field; ``name`` must already be lower-case."""
        self._items.append((name, value))
        if name in self._first:
            self._unique = False
        else:
            self._first[name] = value

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (lower-case), or ``default``."""
        return self._first.get(name, default)

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
                raise HTTPProtocolError(_describe_bad_field(line))
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
    return Headers(items)


def _describe_bad_field(line: bytes) -> str:
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


def _parse_content_length(values: list[str], max_body_bytes: int | None) -> int:
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


def _transfer_codings(values: list[str]) -> list[str]:
    codings: list[str] = []
    for value in values:
        members = grammar.split_list(value)
        if not members:
            raise HTTPProtocolError("empty Transfer-Encoding")
        codings.extend(m.lower() for m in members)
    return codings


def _check_chunked_final(codings: list[str], role: str) -> None:
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


def _connection_tokens(headers: Headers) -> set[str]:
    tokens: set[str] = set()
    for value in headers.get_all("connection"):
        tokens.update(t.lower() for t in grammar.split_list(value))
    return tokens


def _split_target(target: str) -> tuple[str, str]:
    path, _, rest = target.partition("?")
    if "#" in path:
        return path.partition("#")[0], ""
    return path, rest.partition("#")[0]


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
    m = _check_request_line(head[:line_end])
    method = m.group(1).decode("ascii")
    raw_target = m.group(2)
    version = "1.0" if m.group(4) == b"0" else "1.1"
    headers = _parse_fields(head, line_end, max_headers)
    target = raw_target.decode("ascii")
    path, query = _split_target(target) if target[0] == "/" else (target, "")
    return _frame_request(method, target, path, query, version, headers, max_body_bytes)


def _check_request_line(line: bytes) -> re.Match[bytes]:
    m = grammar.REQUEST_LINE.fullmatch(line)
    if m is None:
        raise _bad_request_line(line)
    if m.group(3) != b"1":
        # RFC 9110 §15.6.6: 505 for a major version the server does not support.
        raise UnsupportedVersion(f"HTTP/{m.group(3).decode()}")
    method = m.group(1).decode("ascii")
    if method not in grammar.KNOWN_METHODS:
        raise UnknownMethod(method)
    _check_target(method, m.group(2))
    return m


def _check_framing_fields(fields: list[tuple[str, str]], max_body_bytes: int | None) -> None:
    cl = [v for n, v in fields if n == "content-length"]
    te = [v for n, v in fields if n == "transfer-encoding"]
    if cl:
        _parse_content_length(cl, max_body_bytes)
    if cl and te:
        raise HTTPProtocolError("both Content-Length and Transfer-Encoding")
    if sum(n == "host" for n, _ in fields) > 1:
        raise HTTPProtocolError("more than one Host header")


def _bad_request_line(line: bytes) -> HTTPProtocolError:
    """The error for a request line the grammar refused, decided by its shape."""
    parts = line.split(b" ")
    if len(parts) == 2 and parts[0] == b"GET" and parts[1]:
        # "GET /path" with no version is an HTTP/0.9 simple-request.
        return UnsupportedVersion("0.9")
    if len(parts) == 3 and all(parts):
        return _version_error(parts[2], complete=True) or HTTPProtocolError("malformed request line")
    return HTTPProtocolError("malformed request line")


def _version_error(version: bytes, *, complete: bool) -> HTTPProtocolError | None:
    """What is wrong with the third word of a request line, once that is certain.

    With ``complete`` False the word may still grow, so only verdicts that no
    further byte can change are returned: the same request gets the same
    status whether it arrives whole or one byte at a time.
    """
    name, slash, rest = version.partition(b"/")
    if not slash:
        if not complete and (_VERSION_PREFIX.fullmatch(version) or grammar.TOKEN.fullmatch(version)):
            return None
        return HTTPProtocolError("malformed request line")
    if name != b"HTTP":
        if grammar.TOKEN.fullmatch(name) is None or name.upper() == b"HTTP":
            return HTTPProtocolError("malformed request line")
        # RFC 9110 §15.6.6: 505 for a protocol or major version not supported
        # (RTSP/1.0, ICE/1.0 and friends).
        return UnsupportedVersion(name.decode("latin-1")[:32])
    major = rest[:1]
    if major.isdigit() and major != b"1":
        return UnsupportedVersion(f"HTTP/{major.decode()}")
    if not complete and _VERSION_PREFIX.fullmatch(version):
        return None
    return HTTPProtocolError("malformed request line")


def _frame_request(method: str, target: str, path: str, query: str, version: str,
                   headers: Headers, max_body_bytes: int | None) -> Request:
    hosts = headers.get_all("host")
    host = hosts[0] if hosts else ""
    # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code
    # to any HTTP/1.1 request message that lacks a Host header field and to any
    # request message that contains more than one Host header field line or a
    # Host header field with an invalid field value."
    if len(hosts) > 1 or (version == "1.1" and not hosts):
        raise HTTPProtocolError("missing Host header" if not hosts else "more than one Host header")
    if host and not (host.isascii() and grammar.HOST.fullmatch(host.encode("ascii"))):
        raise HTTPProtocolError("invalid Host header")
    tokens = _connection_tokens(headers) if "connection" in headers else _NO_TOKENS
    keep_alive = "close" not in tokens and (version == "1.1" or "keep-alive" in tokens)
    upgrade = None
    if method == "CONNECT":
        upgrade = "connect"
    elif "upgrade" in tokens and "upgrade" in headers:
        upgrade = ", ".join(headers.get_all("upgrade")).lower()
    te = headers.get_all("transfer-encoding")
    cl = headers.get_all("content-length")
    chunked = False
    content_length: int | None = 0
    if upgrade == "connect":
        pass  # RFC 9110 §9.3.6: CONNECT content has no defined semantics; the tunnel begins.
    elif te:
        if version == "1.0":
            # RFC 9112 §6.1: HTTP/1.0 + Transfer-Encoding "MUST treat the message
            # as if the framing is faulty".
            raise HTTPProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            # RFC 9112 §6.3 (3): such a message "might indicate an attempt to
            # perform request smuggling"; the server MAY reject it. We do.
            raise HTTPProtocolError("both Content-Length and Transfer-Encoding")
        _check_chunked_final(_transfer_codings(te), "server")
        chunked, content_length = True, None
    elif cl:
        content_length = _parse_content_length(cl, max_body_bytes)
    expect = headers.get("expect")
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
    return Response(version, int(m.group(3)), reason, _parse_fields(head, line_end, max_headers))


def parse_chunk_size(line: bytes) -> int:
    """The size from a chunk-size line (without CRLF); extensions are checked and dropped."""
    m = grammar.CHUNK_LINE.fullmatch(line)
    if m is None:
        raise HTTPProtocolError("invalid chunk size line")
    digits = m.group(1).lstrip(b"0") or b"0"
    if len(digits) > 15:    # 2**60 bytes: no body we accept comes near; avoids bignums
        raise HTTPProtocolError("chunk size out of range")
    return int(digits, 16)


# -- the incremental reader -------------------------------------------------------

class _Reader:
    """The byte buffer and incremental readers shared by both parser roles."""

    def __init__(self, max_head_bytes: int, max_headers: int,
                 max_body_bytes: int | None) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self._buf = bytearray()
        self._pos = 0               # start of unread bytes in _buf
        self._scan = 0              # where the head-end search resumes
        self._checked = 0           # first line of an incomplete head not yet checked
        self._eof = False
        self._body: Generator[object, None, None] | None = None
        self._remaining = 0         # Content-Length bytes still to read
        self._in_body = False

    # ---- buffer ----
    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its sending side."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._scan -= self._pos
            self._checked -= self._pos
            self._pos = 0
        self._buf += data

    @property
    def trailing_data(self) -> bytes:
        """Bytes received but not parsed (after an upgrade, they belong to the new protocol)."""
        return bytes(self._buf[self._pos:])

    @property
    def buffered_bytes(self) -> int:
        """How many received bytes wait to be parsed."""
        return len(self._buf) - self._pos

    @property
    def in_message(self) -> bool:
        """True once a message head has begun arriving and until its end."""
        return self._in_body or len(self._buf) > self._pos

    def _take(self, n: int) -> bytes:
        start = self._pos
        self._pos = start + n
        return bytes(self._buf[start:self._pos])

    def _compact(self) -> None:
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._scan = max(0, self._scan - self._pos)
            self._checked = max(0, self._checked - self._pos)
            self._pos = 0

    # ---- heads ----
    def _next_head(self, max_start_line: int | None) -> bytes | None:
        buf = self._buf
        start = self._pos
        skipped = 0
        while buf.startswith(b"\r\n", start) and skipped < MAX_LEADING_EMPTY_LINES:
            start += 2
            skipped += 1
        self._pos = start
        end = buf.find(b"\r\n\r\n", max(start, self._scan))
        if end < 0:
            self._check_incomplete_head(start, max_start_line)
            self._scan = max(start, len(buf) - 3)
            return None
        if end - start > self.max_head_bytes:
            raise HeadTooLarge("header section bytes", self.max_head_bytes)
        if max_start_line is not None:
            line_end = buf.find(b"\r\n", start, end + 2)
            if line_end - start > max_start_line:
                raise RequestLineTooLong(max_start_line)
        self._pos = end + 4
        self._scan = self._checked = self._pos
        head = bytes(buf[start:end])
        self._compact()
        return head

    def _check_incomplete_head(self, start: int, max_start_line: int | None) -> None:
        buf = self._buf
        if max_start_line is not None and buf.find(b"\r\n", start) < 0 \
                and len(buf) - start > max_start_line:
            raise RequestLineTooLong(max_start_line)
        if len(buf) - start > self.max_head_bytes:
            raise HeadTooLarge("header section bytes", self.max_head_bytes)
        # Check each line once, as soon as it is complete: a head that can never
        # become valid fails now instead of holding the connection until a timeout.
        pos = max(start, self._checked)
        while (nl := buf.find(b"\n", pos)) >= 0:
            if nl == pos or buf[nl - 1] != 0x0D:
                raise HTTPProtocolError("bare LF in message head")
            line = bytes(buf[pos:nl - 1])
            if b"\r" in line:
                raise HTTPProtocolError("bare CR in message head")
            self._check_partial_line(line, pos == start)
            pos = nl + 1
        self._checked = pos
        tail = bytes(buf[pos:])
        cr = tail.find(b"\r")
        if 0 <= cr < len(tail) - 1:
            raise HTTPProtocolError("bare CR in message head")
        if pos != start and tail[:1] in (b" ", b"\t"):
            raise HTTPProtocolError(_describe_bad_field(tail))
        if pos == start:
            self._check_partial_start_line(tail.rstrip(b"\r"))

    def _check_partial_start_line(self, tail: bytes) -> None:
        pass

    def _check_partial_line(self, line: bytes, first: bool) -> None:
        if not first and grammar.FIELD_LINE.fullmatch(line) is None:
            raise HTTPProtocolError(_describe_bad_field(line))

    # ---- bodies ----
    def _start_body(self, content_length: int | None, chunked: bool) -> None:
        if chunked:
            self._body = self._chunked_body()
            self._in_body = True
        elif content_length:
            self._remaining = content_length
            self._in_body = True
        else:
            self._in_body = False

    def _read_body(self) -> object:
        if self._body is not None:
            try:
                event = next(self._body)
            except StopIteration:
                self._body = None
                self._in_body = False
                return END_OF_MESSAGE
            if event is NEED_DATA and self._eof:
                raise HTTPProtocolError("connection closed inside a chunked body")
            return event
        if self._remaining == 0:
            self._in_body = False
            return END_OF_MESSAGE
        available = len(self._buf) - self._pos
        if not available:
            if self._eof:
                raise HTTPProtocolError("connection closed before the end of the body")
            return NEED_DATA
        n = min(available, self._remaining)
        self._remaining -= n
        data = self._take(n)
        self._compact()
        return data

    def _read_line(self, limit: int) -> Generator[object, None, bytes]:
        while True:
            end = self._buf.find(b"\r\n", self._pos, self._pos + limit + 2)
            if end >= 0:
                line = bytes(self._buf[self._pos:end])
                self._pos = end + 2
                if b"\n" in line or b"\r" in line:
                    raise HTTPProtocolError("bare CR or LF in chunked framing")
                return line
            if len(self._buf) - self._pos > limit + 1:
                raise HTTPProtocolError(f"chunk framing line longer than {limit} bytes")
            yield NEED_DATA

    def _chunked_body(self) -> Generator[object, None, None]:
        total = 0
        while True:
            size = parse_chunk_size((yield from self._read_line(MAX_CHUNK_LINE_BYTES)))
            if size == 0:
                break
            total += size
            if self.max_body_bytes is not None and total > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            while size:
                while self._pos == len(self._buf):
                    yield NEED_DATA
                n = min(size, len(self._buf) - self._pos)
                size -= n
                yield self._take(n)
                self._compact()
            while len(self._buf) - self._pos < 2:
                yield NEED_DATA
            if self._take(2) != b"\r\n":
                raise HTTPProtocolError("chunk data not followed by CRLF")
        # RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ); a recipient
        # may discard fields it does not understand. Checked, then dropped.
        count = 0
        while (line := (yield from self._read_line(self.max_head_bytes))) != b"":
            count += 1
            if count > self.max_headers:
                raise HeadTooLarge("trailer field count", self.max_headers)
            if grammar.FIELD_LINE.fullmatch(line) is None:
                raise HTTPProtocolError(_describe_bad_field(line))


# A prefix of "HTTP/1.d": what the third word of an unfinished request line may be.
_VERSION_PREFIX: Final = re.compile(rb"(?:H(?:T(?:T(?:P(?:/(?:1(?:\.[0-9]?)?)?)?)?)?)?)?")


class RequestParser(_Reader):
    """Server role: turns received bytes into request events, one message at a time.

    ``next_event()`` returns a ``Request``, ``bytes`` of body, ``END_OF_MESSAGE``,
    ``NEED_DATA`` or ``EOF`` and raises the ``HTTPProtocolError`` family. After
    ``END_OF_MESSAGE`` the next call starts parsing the next (pipelined) request,
    so a caller that upgrades the connection takes ``trailing_data`` instead.
    Errors are sticky: after one, the connection must be closed.
    """

    def __init__(self, *, max_request_line_bytes: int = DEFAULT_MAX_REQUEST_LINE_BYTES,
                 max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
                 max_headers: int = DEFAULT_MAX_HEADERS,
                 max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES) -> None:
        super().__init__(max_head_bytes, max_headers, max_body_bytes)
        self.max_request_line_bytes = max_request_line_bytes
        self._error: HTTPProtocolError | None = None
        self._partial_framing: list[tuple[str, str]] = []

    def _check_partial_start_line(self, tail: bytes) -> None:
        parts = tail.split(b" ")
        if len(parts) > 1 and grammar.TOKEN.fullmatch(parts[0]) is None:
            raise HTTPProtocolError("malformed request line")
        if len(parts) > 3 or (len(parts) == 3 and not parts[1]):
            raise HTTPProtocolError("malformed request line")
        if len(parts) == 3 and (error := _version_error(parts[2], complete=False)) is not None:
            raise error

    def _check_partial_line(self, line: bytes, first: bool) -> None:
        if first:
            self._partial_framing = []
            _check_request_line(line)
            return
        super()._check_partial_line(line, first)
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding", b"host"):
            # The framing fields decide where the next message starts: judge
            # them as they arrive, with the same rules as the complete head.
            self._partial_framing.append((name.decode(), value.strip(b" \t").decode("latin-1")))
            _check_framing_fields(self._partial_framing, self.max_body_bytes)

    def next_event(self) -> object:
        """The next event; see the class docstring."""
        if self._error is not None:
            raise self._error
        try:
            if self._in_body:
                return self._read_body()
            return self._read_head()
        except HTTPProtocolError as exc:
            self._error = exc
            raise

    def _read_head(self) -> object:
        head = self._next_head(self.max_request_line_bytes)
        if head is None:
            if self._eof:
                if len(self._buf) > self._pos:
                    raise HTTPProtocolError("connection closed inside a request head")
                return EOF
            return NEED_DATA
        request = parse_request_head(head, max_headers=self.max_headers,
                                     max_body_bytes=self.max_body_bytes)
        self._start_body(request.content_length, request.chunked)
        if not self._in_body:
            self._in_body = True          # END_OF_MESSAGE comes next
            self._remaining = 0
        return request


class ResponseParser(_Reader):
    """Client role: response events for the requests sent, in order.

    Call ``expect(method)`` before reading each response so that HEAD and
    CONNECT are framed right (RFC 9112 §6.3 (1)-(2)). 1xx responses are
    returned as heads with no body; the final response follows.
    """

    def __init__(self, *, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
                 max_headers: int = DEFAULT_MAX_HEADERS,
                 max_body_bytes: int | None = None) -> None:
        super().__init__(max_head_bytes, max_headers, max_body_bytes)
        self._method = "GET"
        self._close_delimited = False
        self._done_closing = False
        self.keep_alive = True

    def expect(self, method: str) -> None:
        """Say which request method the next response answers."""
        self._method = method

    def next_event(self) -> object:
        """The next event: ``Response``, ``bytes``, ``END_OF_MESSAGE``, ``NEED_DATA`` or ``EOF``."""
        if self._close_delimited:
            return self._read_until_close()
        if self._in_body:
            event = self._read_body()
            if event is END_OF_MESSAGE:
                self._done_closing = not self.keep_alive
            return event
        if self._done_closing:
            if len(self._buf) > self._pos:
                # RFC 9112 §9.6: nothing may follow a response with "close".
                raise HTTPProtocolError("data after a response that closed the connection")
            return EOF if self._eof else NEED_DATA
        head = self._next_head(None)
        if head is None:
            if self._eof:
                if len(self._buf) > self._pos:
                    raise HTTPProtocolError("connection closed inside a response head")
                return EOF
            return NEED_DATA
        response = parse_response_head(head, max_headers=self.max_headers)
        self._frame(response)
        return response

    def _frame(self, response: Response) -> None:
        status = response.status
        headers = response.headers
        tokens = _connection_tokens(headers)
        self.keep_alive = "close" not in tokens and (
            response.version == "1.1" or "keep-alive" in tokens)
        self._in_body = True
        self._remaining = 0
        # RFC 9112 §6.3 (1)-(2): no content for HEAD, 1xx, 204, 304, and a 2xx to CONNECT.
        if (self._method == "HEAD" or status < 200 or status in (204, 304)
                or (self._method == "CONNECT" and status < 300)):
            return
        te = headers.get_all("transfer-encoding")
        if te:
            codings = _transfer_codings(te)
            if codings[-1] != "chunked":
                # RFC 9112 §6.3 (4): a response whose final coding is not
                # chunked is delimited by the close of the connection.
                self._close_delimited, self.keep_alive = True, False
                return
            _check_chunked_final(codings, "client")
            self._start_body(None, True)
        elif headers.get_all("content-length"):
            self._start_body(_parse_content_length(headers.get_all("content-length"),
                                                   self.max_body_bytes), False)
            self._in_body = True
        else:
            self._close_delimited, self.keep_alive = True, False

    def _read_until_close(self) -> object:
        if len(self._buf) > self._pos:
            data = self._take(len(self._buf) - self._pos)
            self._compact()
            return data
        if self._eof:
            self._close_delimited = False
            self._in_body = False
            return END_OF_MESSAGE
        return NEED_DATA


# -- serialising ------------------------------------------------------------------

REASONS: Final[dict[int, str]] = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
    202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 417: "Expectation Failed", 422: "Unprocessable Content",
    426: "Upgrade Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 499: "Client Closed Request",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}
# Status lines are built once: the hot path only looks them up.
_STATUS_LINES: Final[dict[int, bytes]] = {
    status: f"HTTP/1.1 {status} {reason}\r\n".encode("ascii") for status, reason in REASONS.items()
}
_UNSAFE_VALUE = frozenset("\r\n\0")


def _check_field(name: str, value: str) -> None:
    if not _UNSAFE_VALUE.isdisjoint(value) or not grammar.TOKEN.fullmatch(name.encode("latin-1")):
        # A CR or LF here would let a value end the head early (response splitting).
        raise ValueError(f"unsafe header field {name!r}")


def encode_response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialise a status line and header fields, ending with the empty line.

    Raises ``ValueError`` for a field name that is not a token or a value with
    CR, LF or NUL: header values may carry client-derived text.
    """
    line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n".encode()
    parts = [line]
    for name, value in headers:
        _check_field(name, value)
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_request_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialise a request line and header fields, ending with the empty line."""
    if not grammar.TOKEN.fullmatch(method.encode("ascii")) or not grammar.ORIGIN_FORM.fullmatch(
            target.encode("latin-1")):
        raise ValueError(f"unsafe request line {method!r} {target!r}")
    parts = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    for name, value in headers:
        _check_field(name, value)
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); empty data gives nothing (not the last chunk)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
