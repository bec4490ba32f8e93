"""Fixed-seed fuzzing of the HTTP/1.1 codec (net.http11): request heads, chunked bodies, responses.

Inputs are valid messages mutated the ways bytes get damaged or forged —
bit flips, byte edits, splices of two seeds, truncations, repeated field
lines, inserted CR / LF / NUL / SP / HTAB, edited Content-Length values and
chunk sizes, inserted framing fields, reversed ranges — plus random bytes.
Three targets of 100,000 inputs each: ``RequestParser`` on request heads
(with their bodies), the chunked body reader (a ``RequestParser`` started
inside a chunked body), and ``ResponseParser``. Each input is parsed whole
and cut into one to four random pieces (then EOF). Properties:

- the only exceptions out of ``next_event`` are the ``HTTPProtocolError``
  family, each mapping to a 4xx/5xx that ``errors.http_status`` knows;
- errors are sticky (both roles): the next call raises the same one;
- whole and in pieces give the same events (heads, body bytes, ends) and
  the same verdict (an error or not);
- the same error (class, message, status) either way: a client never gets
  a different answer for the same bytes because of how TCP cut them;
- accepted bodies respect ``max_body_bytes``.

``EQUABOT_FUZZ_INPUTS`` overrides the number of inputs per target (default 100,000).
"""

from __future__ import annotations

import os
import random
import re
import unittest
from collections.abc import Callable

from equabot_gw.errors import HTTPProtocolError, http_status
from equabot_gw.net import http11

SEED = 9112
INPUTS = int(os.environ.get("EQUABOT_FUZZ_INPUTS", "100000"))
# Small limits, so that short inputs reach 413, 414 and 431.
LIMITS = dict(max_request_line_bytes=100, max_head_bytes=320, max_headers=10, max_body_bytes=128)
STATUSES = {400, 413, 414, 431, 501, 505}

REQUEST_SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /v1/models?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nX-Empty:\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
    b"Content-Length: 13\r\n\r\n{\"model\":\"x\"}",
    b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;a=b;c=\"q\"\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3, 3\r\n\r\nabc",
    b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
    b"GET /d HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x80abcd",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\nX-City: D\xfcsseldorf\r\n\r\n",
    b"\r\nDELETE /s/1 HTTP/1.1\r\nHost: [::1]:80\r\nAuthorization: Bearer t0k\r\n\r\n",
    # Near the limits (LIMITS): edits push these over 414 / 431.
    b"GET /" + b"a" * 85 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-Field-%02d: %s\r\n" % (i, b"v" * 20) for i in range(8))
    + b"\r\n",
]

CHUNKED_HEAD = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_SEEDS = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\n0;last\r\n\r\n",
    b"3;a=b\r\nabc\r\n3 ; c = \"d\\\"e\"\r\nfgh\r\n0\r\nX: 1\r\nY: 2\r\n\r\n",
    b"0005\r\nhello\r\n000\r\n\r\n",
    b"40\r\n" + bytes(range(32, 96)) + b"\r\n0\r\n\r\n",
    b"1\r\n\r\r\n1\r\n\n\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\n",
    b"1\r\nx\r\n0\r\n" + b"".join(b"T%02d: v\r\n" % i for i in range(9)) + b"\r\n",
]

RESPONSE_SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;a=b\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw bytes",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 5\r\n\r\nslow!",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"e\r\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Field-%02d: %s\r\n" % (i, b"v" * 20) for i in range(8))
    + b"Content-Length: 0\r\n\r\n",
]

FIELDS = (b"Content-Length: 3\r\n", b"Content-Length: 99999\r\n", b"Transfer-Encoding: chunked\r\n",
          b"Transfer-Encoding: gzip, chunked\r\n", b"Host: z\r\n", b"Connection: close\r\n",
          b"Expect: 100-continue\r\n", b"Upgrade: websocket\r\nConnection: upgrade\r\n", b"X: \x80\xff\r\n")
INSERTS = (b"\r", b"\n", b"\x00", b" ", b"\t", b"\r\n", b"\r\n\r\n", b":", b";", b",", b"\"", b"\x7f",
           b"\x0b", b"\x0c", b"\xc3\xa9")
LENGTHS = (b"0", b"1", b"2", b"5", b"13", b"127", b"128", b"129", b"-1", b"+3", b"0x10", b" 3", b"3 ",
           b"1e3", b"99999999999999999999", b"3, 4", b"", b"\xd9\xa5")
SIZES = (b"0", b"1", b"5", b"A", b"7f", b"80", b"81", b"fffffffffffffff", b"1" * 20, b"-1", b"0x5",
         b"5 ", b" 5", b"5;", b"5;a=", b"5;a=\"", b"g", b"")
CHUNK_SIZE = re.compile(rb"(?:^|\r\n)([0-9A-Fa-f]+)(?=[;\r ])")
CONTENT_LENGTH = re.compile(rb"(?i)(content-length:[ \t]*)([^\r\n]*)")


def mutate(rng: random.Random, pool: list[bytes]) -> bytes:
    data = bytearray(rng.choice(pool))
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(11)
        n = len(data)
        if kind == 0 and n:                                  # bit flip
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif kind == 1 and n:                                # byte replace
            data[rng.randrange(n)] = rng.randrange(256)
        elif kind == 2:                                      # splice with another seed
            other = rng.choice(pool)
            data = data[:rng.randint(0, n)] + other[rng.randint(0, len(other)):]
        elif kind == 3 and n:                                # truncate
            del data[rng.randint(0, n - 1):]
        elif kind == 4 and n:                                # repeat a line (a field, a chunk)
            start = data.rfind(b"\n", 0, rng.randrange(n)) + 1
            end = data.find(b"\n", start)
            if end > 0:
                data[end + 1:end + 1] = data[start:end + 1] * rng.randint(1, 3)
        elif kind == 5:                                      # insert a separator or control byte
            i = rng.randint(0, n)
            data[i:i] = rng.choice(INSERTS)
        elif kind == 6:                                      # insert a framing field after a line end
            ends = [m.end() for m in re.finditer(rb"\r\n", data)] or [0]
            i = rng.choice(ends)
            data[i:i] = rng.choice(FIELDS)
        elif kind == 7:                                      # edit a Content-Length value
            found = list(CONTENT_LENGTH.finditer(data))
            if found:
                m = rng.choice(found)
                data[m.start(2):m.end(2)] = rng.choice(LENGTHS)
        elif kind == 8:                                      # edit a chunk size
            found = list(CHUNK_SIZE.finditer(data))
            if found:
                m = rng.choice(found)
                data[m.start(1):m.end(1)] = rng.choice(SIZES)
        elif kind == 9 and n:                                # delete a range
            i = rng.randrange(n)
            del data[i:i + rng.randint(1, 8)]
        elif kind == 10 and n:                               # reverse a range
            i, j = sorted(rng.sample(range(n + 1), 2)) if n > 1 else (0, n)
            data[i:j] = data[i:j][::-1]
    return bytes(data)


def cuts_for(rng: random.Random, data: bytes) -> list[int]:
    """One to four random places to cut ``data``."""
    if len(data) < 2:
        return []
    return sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))


def describe(event: object) -> object:
    if isinstance(event, http11.Request):
        return ("request", event.method, event.target, event.path, event.query, event.version,
                tuple(event.headers), event.keep_alive, event.content_length, event.chunked,
                event.expect_continue, event.upgrade)
    if isinstance(event, http11.Response):
        return ("response", event.version, event.status, event.reason, tuple(event.headers))
    return event


def feed(parser: http11.RequestParser | http11.ResponseParser, data: bytes, cuts: list[int],
         on_event: Callable[[object], bool], *, sticky: bool) -> tuple[list[object], tuple | None]:
    """Feed ``data`` cut at ``cuts``, then EOF; (events with body bytes merged, error or None).

    ``on_event`` sees each event and returns False to stop (an upgrade: the
    rest is not HTTP). With ``sticky``, an error must be raised again by the
    next call.
    """
    events: list[object] = []
    budget = 4 * len(data) + 16          # no parser may produce events without consuming bytes
    bounds = [0, *cuts, len(data)]
    pieces = [data[start:end] for start, end in zip(bounds, bounds[1:]) if start < end]
    pieces.append(b"")                   # EOF
    next_event, need_data, eof = parser.next_event, http11.NEED_DATA, http11.EOF
    try:
        for piece in pieces:
            parser.receive_data(piece)
            while (event := next_event()) is not need_data and event is not eof:
                budget -= 1
                assert budget > 0, "events without end"
                if type(event) is bytes:
                    if events and type(events[-1]) is bytes:
                        events[-1] += event
                    else:
                        events.append(event)
                else:
                    events.append(describe(event))
                if not on_event(event):
                    return events, None
    except HTTPProtocolError as exc:
        error = (type(exc), str(exc), http_status(exc))
        if sticky:
            try:
                parser.next_event()
            except HTTPProtocolError as again:
                assert again is exc, "the error was not sticky"
            else:
                raise AssertionError("the error was not sticky")
        return events, error
    return events, None


def parse_request(data: bytes, cuts: list[int], *,
                  in_chunked_body: bool = False) -> tuple[list[object], tuple | None]:
    """Events and error for ``data``.

    With ``in_chunked_body`` the parser starts inside a chunked body, as after
    a head with ``Transfer-Encoding: chunked``, and stops at the end of that
    message: the inputs then exercise the body reader alone (the request
    target covers heads; parsing the same head 200,000 times would double
    this target's time for nothing).
    """
    parser = http11.RequestParser(**LIMITS)
    if in_chunked_body:
        parser._start_body(None, True)
    body = 0

    def on_event(event: object) -> bool:
        nonlocal body
        if isinstance(event, bytes):
            body += len(event)
            assert body <= LIMITS["max_body_bytes"], "a body over max_body_bytes was accepted"
        elif event is http11.END_OF_MESSAGE:
            body = 0
            return not in_chunked_body
        elif isinstance(event, http11.Request):
            assert event.method and event.target and event.version in ("1.0", "1.1"), event
            if event.upgrade:
                # The message ends, then the bytes belong to another protocol.
                return False
        return True

    return feed(parser, data, cuts, on_event, sticky=True)


def parse_response(data: bytes, cuts: list[int], method: str) -> tuple[list[object], tuple | None]:
    parser = http11.ResponseParser(max_head_bytes=LIMITS["max_head_bytes"], max_headers=LIMITS["max_headers"],
                                   max_body_bytes=LIMITS["max_body_bytes"])
    parser.expect(method)

    def on_event(event: object) -> bool:
        if event is http11.END_OF_MESSAGE:
            parser.expect(method)
        elif isinstance(event, http11.Response):
            assert 100 <= event.status <= 999, event
        return True

    return feed(parser, data, cuts, on_event, sticky=True)


class FuzzCase(unittest.TestCase):
    def run_target(self, name: str, generate: Callable[[random.Random, int], bytes],
                   parse: Callable[[bytes, list[int], int], tuple], *,
                   same_errors: bool = False, count: int = INPUTS) -> None:
        """Parse ``count`` generated inputs whole and in pieces; check the properties above.

        ``parse(data, cuts, i)`` parses input number ``i``.
        """
        rng = random.Random(f"{SEED}:{name}")
        errors = 0
        for i in range(count):
            data = generate(rng, i)
            cuts = cuts_for(rng, data)
            try:
                whole = parse(data, [], i)
                pieces = parse(data, cuts, i)
            except Exception as exc:            # anything but HTTPProtocolError is a bug
                self.fail(f"{name} input {i} {data!r} cut at {cuts}: {exc!r}")
            if whole[0] != pieces[0] or (whole[1] is None) != (pieces[1] is None):
                self.fail(f"{name} input {i}: whole and in pieces differ for {data!r} cut at {cuts}:\n"
                          f"{whole}\n{pieces}")
            if same_errors and whole[1] != pieces[1]:
                self.fail(f"{name} input {i}: the error differs for {data!r} cut at {cuts}:\n"
                          f"{whole[1]}\n{pieces[1]}")
            if whole[1] is not None:
                errors += 1
                self.assertIn(whole[1][2], STATUSES, whole[1])
                self.assertTrue(whole[1][1])
        self.assertGreater(errors, count // 5, "the mutations do not reach the error paths")
        self.assertLess(errors, count * 19 // 20, "the mutations do not reach the success paths")


def request_input(rng: random.Random, i: int) -> bytes:
    return rng.randbytes(rng.randint(0, 64)) if i % 10 == 0 else mutate(rng, REQUEST_SEEDS)


def chunked_input(rng: random.Random, i: int) -> bytes:
    return rng.randbytes(rng.randint(0, 48)) if i % 10 == 0 else mutate(rng, CHUNKED_SEEDS)


def response_input(rng: random.Random, i: int) -> bytes:
    return rng.randbytes(rng.randint(0, 64)) if i % 10 == 0 else mutate(rng, RESPONSE_SEEDS)


def request_parse(data: bytes, cuts: list[int], i: int) -> tuple:
    return parse_request(data, cuts)


def chunked_parse(data: bytes, cuts: list[int], i: int) -> tuple:
    return parse_request(data, cuts, in_chunked_body=True)


RESPONSE_METHODS = ("GET", "GET", "GET", "HEAD", "CONNECT")


def response_parse(data: bytes, cuts: list[int], i: int) -> tuple:
    return parse_response(data, cuts, RESPONSE_METHODS[i % len(RESPONSE_METHODS)])


class RequestHeadFuzz(FuzzCase):
    def test_request_heads(self) -> None:
        # Same events and the same error (class, message, status) whole or in pieces:
        # e.g. b"GET /ws\tHTTP/1.1\r\nHost: h\r\nCo\rnnection: x\r\n\r\n" was once 400 whole, 505 in pieces.
        self.run_target("request", request_input, request_parse, same_errors=True)

    def test_empty_lines_before_a_request_do_not_depend_on_segmentation(self) -> None:
        # Regression: the limit of 4 empty lines before a request line is counted per read, not per message.
        data = b"\r\n" * 6 + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        self.assertEqual(parse_request(data, []), parse_request(data, list(range(2, len(data), 2))))

    def test_limits_do_not_depend_on_segmentation(self) -> None:
        # Regression: a request line or head of exactly its limit is refused (414 / 431) if a read ends inside its CRLF.
        line = b"GET /" + b"a" * (LIMITS["max_request_line_bytes"] - 14) + b" HTTP/1.1"
        head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * (LIMITS["max_head_bytes"] - 28)
        for data, cut in ((line + b"\r\nHost: h\r\n\r\n", len(line) + 1), (head + b"\r\n\r\n", len(head) + 3)):
            with self.subTest(cut=cut):
                self.assertIsNone(parse_request(data, [])[1])
                self.assertEqual(parse_request(data, [cut]), parse_request(data, []))

    def test_connect_framing_does_not_depend_on_segmentation(self) -> None:
        # Regression: CONNECT's Content-Length / Transfer-Encoding are checked only when the head arrives in pieces.
        data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nContent-Length: 99999\r\n\r\n"
        self.assertEqual(parse_request(data, []), parse_request(data, list(range(1, len(data)))))


class ChunkedBodyFuzz(FuzzCase):
    def test_chunked_bodies(self) -> None:
        self.run_target("chunked", chunked_input, chunked_parse, same_errors=True)

    def test_chunked_seeds_decode(self) -> None:
        for seed in CHUNKED_SEEDS:
            with self.subTest(seed=seed[:30]):
                whole = parse_request(CHUNKED_HEAD + seed, [])
                alone = parse_request(seed, [], in_chunked_body=True)
                self.assertIsNone(alone[1])
                self.assertEqual(alone[0], [b"".join(e for e in alone[0] if isinstance(e, bytes)),
                                            http11.END_OF_MESSAGE])
                self.assertEqual(whole[0][1:3], alone[0])         # as after a real head


class ResponseFuzz(FuzzCase):
    def test_responses(self) -> None:
        # e.g. b"HTTP\r\nX: 1\r\n\r\n" was once "malformed status line" whole, another error in pieces.
        self.run_target("response", response_input, response_parse, same_errors=True)

    def test_status_below_100_is_refused(self) -> None:
        # Regression: status codes 000-099 are accepted and framed as 1xx, so their content is read as a head.
        # RFC 9110 §15: "Values outside the range 100..599 are invalid".
        parser = http11.ResponseParser()
        parser.receive_data(b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nhi")
        with self.assertRaises(HTTPProtocolError):
            parser.next_event()

    def test_response_errors_are_sticky(self) -> None:
        # Regression: after a malformed response head, ResponseParser goes on to parse the next bytes.
        parser = http11.ResponseParser()
        parser.receive_data(b"HTTP/1.1 2000 OK\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        with self.assertRaises(HTTPProtocolError):
            parser.next_event()
        with self.assertRaises(HTTPProtocolError):
            parser.next_event()


if __name__ == "__main__":
    unittest.main()
