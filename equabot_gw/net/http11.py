"""Sans-I/O HTTP/1.1 codec (RFC 9110, RFC 9112) for both roles.

Owns: buffering received bytes, finding and checking heads as they arrive
(the head grammar itself is ``heads.py``), message framing (Content-Length,
chunked, close-delimited), body readers with limits, and serialising heads and
chunks. It never awaits, reads the clock or reads config: limits come in as
constructor arguments, bytes come in through ``receive_data`` and leave as the
return values of the ``encode_*`` functions. Errors are the ``HTTPProtocolError``
family of ``errors.py``; the caller maps them to statuses with ``http_status``.

Events from ``next_event()``: a ``Request``/``Response`` head, ``bytes`` of
body, ``END_OF_MESSAGE``, ``NEED_DATA`` or ``EOF`` (clean close between messages).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Final

from ..errors import BodyTooLarge, HeadTooLarge, HTTPProtocolError, RequestLineTooLong
from . import grammar, heads
from .heads import Headers, Request, Response, parse_chunk_size, parse_request_head, parse_response_head

__all__ = [
    "NEED_DATA", "END_OF_MESSAGE", "EOF", "Headers", "Request", "Response", "RequestParser",
    "ResponseParser", "parse_request_head", "parse_response_head", "parse_chunk_size",
    "encode_response_head", "encode_request_head", "encode_chunk", "LAST_CHUNK", "REASONS",
    "DEFAULT_MAX_REQUEST_LINE_BYTES", "DEFAULT_MAX_HEAD_BYTES", "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_BODY_BYTES",
]

# Limits. Precedents: Apache LimitRequestLine 8190 and LimitRequestFields 100;
# the 64 KiB head and 20 MiB body are the gateway's documented defaults
# (gateway.http.maxHeaderBytes / maxBodyBytes).
DEFAULT_MAX_REQUEST_LINE_BYTES: Final = 8190
DEFAULT_MAX_HEAD_BYTES: Final = 64 * 1024
DEFAULT_MAX_HEADERS: Final = heads.DEFAULT_MAX_HEADERS
DEFAULT_MAX_BODY_BYTES: Final = heads.DEFAULT_MAX_BODY_BYTES
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
        self._line_scan = 0         # how far that line's bytes are checked (each byte once)
        self._start_spaces = 0      # spaces in an unfinished start line, counted up to _counted
        self._counted = 0
        self._trailer_budget = max_head_bytes   # field bytes the trailers may use (what the head left)
        self._eof = False
        self._body: Generator[object, None, None] | None = None
        self._remaining = 0         # Content-Length bytes still to read
        self._in_body = False
        self._empty_lines = 0       # empty lines skipped before the current head

    # ---- buffer ----
    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its sending side."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos == len(self._buf):
            # Everything was parsed: no head is half-read, so its positions restart too.
            self._buf.clear()
            self._pos = self._scan = self._checked = self._line_scan = self._counted = 0
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
            self._line_scan = max(0, self._line_scan - self._pos)
            self._counted = max(0, self._counted - self._pos)
            self._pos = 0

    # ---- heads ----
    def _next_head(self, max_start_line: int | None) -> bytes | None:
        buf = self._buf
        start = self._pos
        while buf.startswith(b"\r\n", start) and self._empty_lines < MAX_LEADING_EMPTY_LINES:
            start += 2
            self._empty_lines += 1
        self._pos = start
        end = buf.find(b"\r\n\r\n", max(start, self._scan))
        if end < 0:
            self._check_incomplete_head(start, max_start_line)
            self._scan = max(start, len(buf) - 3)
            return None
        if max_start_line is not None:
            line_end = buf.find(b"\r\n", start, end + 2)
            if line_end - start > max_start_line:
                raise self._over_limit(start, max_start_line, RequestLineTooLong(max_start_line))
        if end - start > self.max_head_bytes:
            raise self._over_limit(start, self.max_head_bytes,
                                   HeadTooLarge("header section bytes", self.max_head_bytes))
        self._pos = end + 4
        self._scan = self._checked = self._line_scan = self._counted = self._pos
        self._empty_lines = self._start_spaces = 0
        head = bytes(buf[start:end])
        self._compact()
        return head

    def _check_incomplete_head(self, start: int, max_start_line: int | None) -> None:
        # Runs on every arrival of bytes, so it must cost what arrived, not what
        # is buffered: each byte of a head is scanned a bounded number of times
        # however the head is split (a 64 KiB line sent a byte at a time would
        # otherwise cost a quadratic rescan).
        buf = self._buf
        pos = max(start, self._checked)         # the first line not yet checked whole
        scan = max(pos, self._line_scan)        # bytes of that line before here hold no LF
        if max_start_line is not None and pos == start:
            # The request line is still arriving; its bytes before scan hold no CRLF.
            nl = buf.find(b"\r\n", scan, start + max_start_line + 2)
            first = (nl if nl >= 0 else len(buf) - buf.endswith(b"\r")) - start
            if first > max_start_line:
                raise self._over_limit(start, max_start_line, RequestLineTooLong(max_start_line))
        # A head of exactly the limit may be followed by the start of its CRLF CRLF.
        ending = 3 if buf.endswith(b"\r\n\r") else 2 if buf.endswith(b"\r\n") else int(buf.endswith(b"\r"))
        if len(buf) - start - ending > self.max_head_bytes:
            raise self._over_limit(start, self.max_head_bytes,
                                   HeadTooLarge("header section bytes", self.max_head_bytes))
        # Check each line once, as soon as it is complete: a head that can never
        # become valid fails now instead of holding the connection until a timeout.
        while (nl := buf.find(b"\n", scan)) >= 0:
            self._check_line(bytes(buf[pos:nl]), pos == start)
            pos = scan = nl + 1
        self._checked = pos
        if pos == start:
            # The request line so far. Its verdict can change only when a space
            # arrives or once the third word (the version) has begun, so only
            # then is it checked whole; otherwise, as for a status line, only
            # its new bytes are.
            spaces = self._start_spaces + buf.count(b" ", max(pos, self._counted))
            if max_start_line is not None and (spaces != self._start_spaces or spaces >= 2):
                self._check_prefix(bytes(buf[pos:]), True, ended=False)
            elif buf.find(b"\r", scan, len(buf) - 1) >= 0:
                raise HTTPProtocolError("bare CR in message head")
            self._start_spaces, self._counted = spaces, len(buf)
        else:
            self._check_partial_field(pos, scan)
        self._line_scan = max(pos, len(buf) - 1)    # a last CR may yet be a CRLF

    def _check_partial_field(self, pos: int, scan: int) -> None:
        """``_check_prefix`` for the field line at ``pos``, on its bytes from ``scan`` on only."""
        buf = self._buf
        if scan == pos and buf[pos:pos + 1] in (b" ", b"\t"):
            raise HTTPProtocolError(heads.describe_bad_field(bytes(buf[pos:pos + 1])))
        if buf.find(b"\r", scan, len(buf) - 1) >= 0:
            raise HTTPProtocolError("bare CR in message head")

    # Every check names the problem that the earliest byte proves, so that a
    # head gets the same verdict however it is cut into pieces: the checks of
    # an unfinished line only return verdicts that no later byte can change.
    def _check_prefix(self, data: bytes, first: bool, *, ended: bool) -> None:
        """Checks ``data``, a line's content so far (``ended``: up to its CRLF or LF)."""
        if not first and data[:1] in (b" ", b"\t"):
            raise HTTPProtocolError(heads.describe_bad_field(data))
        cr = data.find(b"\r")
        bare_cr = cr >= 0 and (ended or cr < len(data) - 1)
        if first:
            self._check_partial_start_line(data[:cr] if cr >= 0 else data)
        if bare_cr:
            raise HTTPProtocolError("bare CR in message head")

    def _check_line(self, line: bytes, first: bool) -> None:
        """Checks one line of a head, ``line`` being its bytes before the LF."""
        crlf = line.endswith(b"\r")
        content = line[:-1] if crlf else line
        self._check_prefix(content, first, ended=True)
        if not crlf:
            raise HTTPProtocolError("bare LF in message head")
        self._check_partial_line(content, first)

    def _check_partial_start_line(self, tail: bytes) -> None:
        pass

    def _over_limit(self, start: int, limit: int, error: HTTPProtocolError) -> HTTPProtocolError:
        """``error`` for a size limit passed, unless the bytes within the limit are already wrong."""
        return self._line_error(bytes(self._buf[start:start + limit]), complete=False) or error

    def _line_error(self, head: bytes, complete: bool = True) -> HTTPProtocolError | None:
        """The error the line-by-line checks find first in ``head``, or None.

        A complete head is validated in bulk, which is fast but names problems
        in its own order; when that fails, this names the error the incremental
        checks would have named, so the verdict does not depend on how the
        bytes arrived (one piece or many). With ``complete`` False, ``head`` is
        a prefix: its last, unfinished line gets the partial checks only.
        """
        pos = 0
        try:
            while (nl := head.find(b"\n", pos)) >= 0:
                self._check_line(head[pos:nl], pos == 0)
                pos = nl + 1
            if complete:                    # the last line: its CRLF begins the head's end
                self._check_line(head[pos:] + b"\r", pos == 0)
            else:
                self._check_prefix(head[pos:], pos == 0, ended=False)
        except HTTPProtocolError as exc:
            return exc
        return None

    def _check_partial_line(self, line: bytes, first: bool) -> None:
        if not first and grammar.FIELD_LINE.fullmatch(line) is None:
            raise HTTPProtocolError(heads.describe_bad_field(line))

    # ---- bodies ----
    def _start_body(self, content_length: int | None, chunked: bool, head_bytes: int = 0) -> None:
        if chunked:
            # RFC 9110 §6.5: trailer fields are fields too; they share the
            # head's byte budget, so a message's fields never exceed max_head_bytes.
            self._trailer_budget = self.max_head_bytes - head_bytes
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

    def _read_line(self, limit: int, what: str | None = None) -> Generator[object, None, bytes]:
        """One CRLF-terminated line of at most ``limit`` bytes, without its CRLF.

        Over the limit: 400, or with ``what`` (a field section) 431 naming it.
        The search resumes where it stopped, so a line costs its length once
        however its bytes are split.
        """
        scanned = 0             # bytes after _pos known to start no CRLF (offset: _pos is stable here)
        while True:
            pos = self._pos
            end = self._buf.find(b"\r\n", pos + scanned, pos + limit + 2)
            if end >= 0:
                line = bytes(self._buf[pos:end])
                self._pos = end + 2
                if b"\n" in line or b"\r" in line:
                    raise HTTPProtocolError("bare CR or LF in chunked framing")
                return line
            if len(self._buf) - pos > limit + 1:
                if what is not None:
                    raise HeadTooLarge(what, self.max_head_bytes)
                raise HTTPProtocolError(f"chunk framing line longer than {limit} bytes")
            scanned = max(0, len(self._buf) - pos - 1)
            yield NEED_DATA

    def _buffered_chunk_size(self) -> int:
        """The size of the next chunk if its line, data and CRLF are all buffered, else 0.

        Consumes nothing. Anything unusual (a last chunk, a line still
        arriving, a bad line) is 0: the step-by-step reader handles it.
        """
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE_BYTES + 2)
        if end < 0:
            return 0
        line = bytes(buf[pos:end])
        if b"\n" in line or b"\r" in line:
            return 0
        try:
            size = parse_chunk_size(line)
        except HTTPProtocolError:
            return 0
        data_end = end + 2 + size
        if size == 0 or len(buf) < data_end + 2 or buf[data_end:data_end + 2] != b"\r\n":
            return 0
        return size

    def _chunked_body(self) -> Generator[object, None, None]:
        total = 0
        while True:
            size = parse_chunk_size((yield from self._read_line(MAX_CHUNK_LINE_BYTES)))
            if size == 0:
                break
            total += size
            if self.max_body_bytes is not None and total > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            if len(self._buf) - self._pos >= size + 2 and \
                    self._buf[self._pos + size:self._pos + size + 2] == b"\r\n":
                # Whole chunks already received go out as one piece: a streaming
                # upstream sends a small chunk per event, many in one read
                # (measured: the proxy path's chunk decoding fell from ~17 steps to 1).
                pieces = []
                while size:
                    pieces.append(self._take(size))
                    self._pos += 2
                    size = self._buffered_chunk_size()
                    if size:
                        self._pos = self._buf.index(b"\r\n", self._pos) + 2
                        total += size
                        if self.max_body_bytes is not None and total > self.max_body_bytes:
                            raise BodyTooLarge(self.max_body_bytes)
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                self._compact()
                continue
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
        # Trailer lines spend the head's budget (431 past it, as for the head).
        count = 0
        budget = self._trailer_budget
        while (line := (yield from self._read_line(max(budget - 2, 0), _FIELDS))) != b"":
            budget -= len(line) + 2
            count += 1
            if count > self.max_headers:
                raise HeadTooLarge("trailer field count", self.max_headers)
            if grammar.FIELD_LINE.fullmatch(line) is None:
                raise HTTPProtocolError(heads.describe_bad_field(line))


# What a trailer section over the field budget is called in its 431.
_FIELDS: Final = "header and trailer section bytes"


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
        self._refused_head: bytes | None = None     # a complete head parse_request_head refused

    def _check_partial_start_line(self, tail: bytes) -> None:
        if (error := heads.start_line_error(tail, complete=False)) is not None:
            raise error

    def _check_partial_line(self, line: bytes, first: bool) -> None:
        if first:
            self._partial_framing = []
            heads.check_request_line(line)
            return
        super()._check_partial_line(line, first)
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding", b"host"):
            # The framing fields decide where the next message starts: judge
            # them as they arrive, with the same rules as the complete head.
            self._partial_framing.append((name.decode(), value.strip(b" \t").decode("latin-1")))
            heads.check_framing_fields(self._partial_framing, self.max_body_bytes)

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

    @property
    def head_so_far(self) -> bytes:
        """What arrived of the request head being read, or of the one an error was found in.

        The whole head when it was refused complete; otherwise the bytes received
        since it began, as many as are buffered (also past a size limit), or
        ``b""`` between messages and in a body. The bytes are unchecked: read
        them with ``heads.salvage_fields`` to answer the request, never to route it.
        """
        if self._refused_head is not None:
            return self._refused_head
        if self._in_body:
            return b""
        return bytes(self._buf[self._pos:])

    def _read_head(self) -> object:
        if self._pos == len(self._buf):     # nothing buffered: the common case between requests
            return EOF if self._eof else NEED_DATA
        head = self._next_head(self.max_request_line_bytes)
        if head is None:
            if self._eof:
                if len(self._buf) > self._pos:
                    raise HTTPProtocolError("connection closed inside a request head")
                return EOF
            return NEED_DATA
        try:
            request = parse_request_head(head, max_headers=self.max_headers,
                                         max_body_bytes=self.max_body_bytes)
        except HTTPProtocolError as exc:
            self._refused_head = head
            raise self._line_error(head) or exc from None
        self._start_body(request.content_length, request.chunked, len(head))
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
        self._error: HTTPProtocolError | None = None
        self.keep_alive = True

    def expect(self, method: str) -> None:
        """Say which request method the next response answers."""
        self._method = method

    def next_event(self) -> object:
        """The next event: ``Response``, ``bytes``, ``END_OF_MESSAGE``, ``NEED_DATA`` or ``EOF``.

        Errors are sticky: after one, the connection must be closed.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except HTTPProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> object:
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
        try:
            response = parse_response_head(head, max_headers=self.max_headers)
        except HTTPProtocolError as exc:
            raise self._line_error(head) or exc from None
        self._frame(response, len(head))
        return response

    def _frame(self, response: Response, head_bytes: int) -> None:
        status = response.status
        headers = response.headers
        tokens = heads.connection_tokens(headers)
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
            codings = heads.transfer_codings(te)
            if codings[-1] != "chunked":
                # RFC 9112 §6.3 (4): a response whose final coding is not
                # chunked is delimited by the close of the connection.
                self._close_delimited, self.keep_alive = True, False
                return
            heads.check_chunked_final(codings, "client")
            self._start_body(None, True, head_bytes)
        elif headers.get_all("content-length"):
            self._start_body(heads.parse_content_length(headers.get_all("content-length"),
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
_STATUS_LINES: Final[dict[int, str]] = {
    status: f"HTTP/1.1 {status} {reason}\r\n" for status, reason in REASONS.items()
}
_CHECKED_NAMES: set[str] = set()


def _check_name(name: str) -> None:
    # Names are the caller's constants: each distinct name is checked once.
    if name not in _CHECKED_NAMES:
        if not grammar.TOKEN.fullmatch(name.encode("latin-1")):
            raise ValueError(f"unsafe header field name {name!r}")
        if len(_CHECKED_NAMES) < 1024:
            _CHECKED_NAMES.add(name)


def _check_head(head: str, lines: int) -> None:
    # Values may carry client-derived text: a CR or LF in one would end the
    # head early (response splitting). Counting is C-speed: the head was built
    # with a CRLF ending each of its ``lines`` lines, so it is well-formed when
    # it holds no other CR and no other LF.
    if head.count("\r") != lines or head.count("\n") != lines or "\0" in head:
        raise ValueError("unsafe header field value (CR, LF or NUL)")


def encode_response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialise a status line and header fields, ending with the empty line.

    Raises ``ValueError`` for a field name that is not a token or a value with
    CR, LF or NUL: header values may carry client-derived text.
    """
    line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
    fields = []
    for name, value in headers:
        if name not in _CHECKED_NAMES:      # the usual names were checked before: no call
            _check_name(name)
        fields.append(f"{name}: {value}\r\n")
    head = line + "".join(fields) + "\r\n"
    _check_head(head, len(fields) + 2)
    return head.encode("latin-1")


def encode_request_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialise a request line and header fields, ending with the empty line."""
    if not grammar.TOKEN.fullmatch(method.encode("ascii")) or not grammar.ORIGIN_FORM.fullmatch(
            target.encode("latin-1")):
        raise ValueError(f"unsafe request line {method!r} {target!r}")
    fields = []
    for name, value in headers:
        _check_name(name)
        fields.append(f"{name}: {value}\r\n")
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(fields) + "\r\n"
    _check_head(head, len(fields) + 2)
    return head.encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); empty data gives nothing (not the last chunk)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
