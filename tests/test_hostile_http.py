"""Hostile HTTP against a real gateway: malformed requests and request-smuggling shapes.

Every case goes to a gateway subprocess over its own socket, followed by a
well-formed request that a confused server would answer (the smuggled one).
Each must get exactly one answer: the exact status and message of the error
(``errors.http_status`` decides: 400 / 413 / 414 / 431 / 501 / 505), an
OpenAI-style JSON error body, ``connection: close``, and then the server
closing the connection — the smuggled request is never answered. Meanwhile a
well-behaved client on one keep-alive connection is served between cases.

The shapes come from public request-smuggling research (PortSwigger's CL.TE,
TE.CL and TE.TE obfuscations, "HTTP Desync Attacks"; the HTTP Garden and
"Funky chunks" chunk-size and terminator tricks) and from llhttp's own test
suite (every strict request case that llhttp expects to fail,
tests/data/llhttp, DECISIONS 28).
"""

from __future__ import annotations

import base64
import json
import pathlib
import socket
import time
import unittest
from typing import Any

from tests.support import TOKEN, LiveGateway, base_config, error_of, split_responses

DATA = pathlib.Path(__file__).parent / "data"
MAX_BODY = 4096                       # gateway.http.maxBodyBytes for these tests
SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLED_CLOSE = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
READ_TIMEOUT = 5.0

H = b"Host: x\r\n"
POST = b"POST /v1/chat/completions HTTP/1.1\r\n" + H
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
# With credentials: a body is waited for (and 100 sent) only for a client the route admits.
EXPECT_CHUNKED = (POST + b"Authorization: Bearer " + TOKEN.encode()
                  + b"\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")


def post(*fields: bytes, body: bytes = b"", start: bytes = POST) -> bytes:
    """A POST head with ``fields`` (each without CRLF), then ``body``."""
    return start + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def get(*fields: bytes, line: bytes = b"GET /health HTTP/1.1") -> bytes:
    """A request head: ``line`` and ``fields`` (each without CRLF)."""
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def chunked(body: bytes) -> bytes:
    return CHUNKED + body


# Error messages, spelled once.
BOTH = "both Content-Length and Transfer-Encoding"
NOT_FINAL = "chunked is not the final transfer coding"
TWICE = "chunked applied more than once"
CONFLICT = "conflicting Content-Length values"
FOLD = "obsolete line folding (obs-fold) in header section"
BARE_LF = "bare LF in message head"
BARE_CR = "bare CR in message head"
SPACE_COLON = "whitespace between header name and colon"
BAD_NAME = "invalid character in header name"
BAD_VALUE = "invalid character in header value"
NO_COLON = "header line without a colon"
LINE = "malformed request line"
SIZE = "invalid chunk size line"
NO_CRLF = "chunk data not followed by CRLF"
CHUNK_BARE = "bare CR or LF in chunked framing"
OVER_BODY = f"request body over the limit of {MAX_BODY} bytes"
TE10 = "Transfer-Encoding in an HTTP/1.0 request"


def invalid_cl(text: str) -> str:
    return f"invalid Content-Length {text!r}"


def body_over(size: int) -> str:
    return f"request body ({size} bytes) over the limit of {MAX_BODY} bytes"


def coding(name: str) -> str:
    return f"transfer coding {name!r} is not implemented"


def method(name: str) -> str:
    return f"method {name!r} is not implemented"


def version(name: str) -> str:
    return f"HTTP version {name!r} is not supported"


# (name, raw bytes, status, exact error message). Raw bytes that end in LF
# are followed by SMUGGLED on the same connection; the rest are unfinished
# heads that the server must judge before they end.
HOSTILE = (
    # -- CL.TE and TE.CL: both framings present (RFC 9112 §6.3 (3)) ------------------
    ("CL.TE", post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nG"), 400, BOTH),
    ("TE.CL", post(b"Transfer-Encoding: chunked", b"Content-Length: 3",
                   body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"), 400, BOTH),
    ("CL.TE smuggling a whole request", post(b"Content-Length: 39", b"Transfer-Encoding: chunked",
                                             body=b"0\r\n\r\n" + SMUGGLED), 400, BOTH),
    ("CL 0 with TE", post(b"Content-Length: 0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
     400, BOTH),
    ("TE with CL 0", post(b"Transfer-Encoding: chunked", b"Content-Length: 0"), 400, BOTH),
    ("lower-case names CL.TE", post(b"content-length: 5", b"transfer-encoding: chunked"), 400, BOTH),
    ("upper-case names TE.CL", post(b"TRANSFER-ENCODING: chunked", b"CONTENT-LENGTH: 5"), 400, BOTH),
    ("TE xchunked with CL", post(b"Transfer-Encoding: xchunked", b"Content-Length: 5"), 400, BOTH),
    ("TE with leading spaces and CL", post(b"Transfer-Encoding:   chunked", b"Content-Length: 5"),
     400, BOTH),
    ("TE with tab and CL", post(b"Transfer-Encoding:\tchunked", b"Content-Length: 5"), 400, BOTH),
    ("TE with trailing tab and CL", post(b"Transfer-Encoding: chunked\t", b"Content-Length: 5"),
     400, BOTH),
    ("TE empty with CL", post(b"Transfer-Encoding:", b"Content-Length: 5"), 400, BOTH),
    ("TE identity with CL", post(b"Content-Length: 5", b"Transfer-Encoding: identity"), 400, BOTH),
    ("CL empty with TE", post(b"Transfer-Encoding: chunked", b"Content-Length:"), 400, invalid_cl("")),
    ("Connection names TE, with CL", post(b"Connection: Transfer-Encoding", b"Transfer-Encoding: chunked",
                                          b"Content-Length: 5"), 400, BOTH),
    ("Connection names CL, with TE", post(b"Connection: Content-Length", b"Content-Length: 5",
                                          b"Transfer-Encoding: chunked"), 400, BOTH),
    ("Upgrade request with CL and TE", get(H.rstrip(), b"Connection: Upgrade", b"Upgrade: websocket",
                                           b"Content-Length: 5", b"Transfer-Encoding: chunked",
                                           line=b"GET / HTTP/1.1"), 400, BOTH),
    ("Expect 100-continue with CL and TE", post(b"Expect: 100-continue", b"Content-Length: 5",
                                                b"Transfer-Encoding: chunked"), 400, BOTH),
    # -- TE.TE: Transfer-Encoding obfuscations ----------------------------------------
    ("TE xchunked", post(b"Transfer-Encoding: xchunked"), 400, NOT_FINAL),
    ("TE chunkedx", post(b"Transfer-Encoding: chunkedx"), 400, NOT_FINAL),
    ("TE chunk", post(b"Transfer-Encoding: chunk"), 400, NOT_FINAL),
    ("TE x-chunked", post(b"Transfer-Encoding: x-chunked"), 400, NOT_FINAL),
    ("TE identity", post(b"Transfer-Encoding: identity"), 400, NOT_FINAL),
    ("TE cow", post(b"Transfer-Encoding: cow"), 400, NOT_FINAL),
    ("TE chunked then identity", post(b"Transfer-Encoding: chunked, identity"), 400, NOT_FINAL),
    ("TE chunked then gzip", post(b"Transfer-Encoding: chunked, gzip"), 400, NOT_FINAL),
    ("TE two lines, chunked first", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: cow"),
     400, NOT_FINAL),
    ("TE two lines, second differs in case", post(b"Transfer-Encoding: chunked",
                                                  b"transfer-encoding: x"), 400, NOT_FINAL),
    ("TE chunked twice on one line", post(b"Transfer-Encoding: chunked, chunked"), 400, TWICE),
    ("TE chunked on two lines", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
     400, TWICE),
    ("TE Chunked and chunked", post(b"Transfer-Encoding: Chunked", b"Transfer-Encoding: chunked"),
     400, TWICE),
    ("TE identity then chunked", post(b"Transfer-Encoding: identity, chunked"), 501, coding("identity")),
    ("TE gzip then chunked", post(b"Transfer-Encoding: gzip, chunked"), 501, coding("gzip")),
    ("TE deflate then chunked", post(b"Transfer-Encoding: deflate, chunked"), 501, coding("deflate")),
    ("TE cow on a first line", post(b"Transfer-Encoding: cow", b"Transfer-Encoding: chunked"),
     501, coding("cow")),
    ("TE quoted chunked", post(b'Transfer-Encoding: "chunked"'), 400,
     "invalid transfer coding '\"chunked\"'"),
    ("TE chunked with a parameter", post(b"Transfer-Encoding: chunked;q=1"), 400,
     "invalid transfer coding 'chunked;q=1'"),
    ("TE chunked with obs-text", post(b"Transfer-Encoding: chunked\x85"), 400,
     "invalid transfer coding 'chunked\\x85'"),
    ("TE with vertical tab", post(b"Transfer-Encoding: chunked\x0b"), 400, BAD_VALUE),
    ("TE with form feed", post(b"Transfer-Encoding: \x0cchunked"), 400, BAD_VALUE),
    ("TE with NUL", post(b"Transfer-Encoding: chunked\x00"), 400, BAD_VALUE),
    ("TE with ESC", post(b"Transfer-Encoding: \x1bchunked"), 400, BAD_VALUE),
    ("TE empty", post(b"Transfer-Encoding:"), 400, "empty Transfer-Encoding"),
    ("TE only commas", post(b"Transfer-Encoding: , ,"), 400, "empty Transfer-Encoding"),
    ("TE space before colon", post(b"Transfer-Encoding : chunked"), 400, SPACE_COLON),
    ("TE tab before colon", post(b"Transfer-Encoding\t: chunked"), 400, SPACE_COLON),
    ("TE folded onto the next line", post(b"Transfer-Encoding:", b" chunked"), 400, FOLD),
    ("TE line starting with a space", post(b" Transfer-Encoding: chunked"), 400, FOLD),
    ("TE line starting with a tab", post(b"X-A: b", b"\tTransfer-Encoding: chunked"), 400, FOLD),
    ("TE name with underscore folded", post(b"X: y", b" Transfer_Encoding: chunked"), 400, FOLD),
    ("TE name with a dotless i", post(b"Transfer-Encod\xc4\xb1ng: chunked"), 400, BAD_NAME),
    ("TE name with NUL", post(b"Transfer-Encoding\x00: chunked"), 400, BAD_NAME),
    ("TE hidden behind a bare LF", post(b"X: y\nTransfer-Encoding: chunked"), 400, BARE_LF),
    ("TE hidden behind a bare CR", post(b"X: y\rTransfer-Encoding: chunked"), 400, BARE_CR),
    ("TE in HTTP/1.0", post(b"Transfer-Encoding: chunked", start=b"POST /v1/chat/completions HTTP/1.0\r\n"),
     400, TE10),
    ("TE in HTTP/1.0 with CL", post(b"Transfer-Encoding: chunked", b"Content-Length: 3",
                                    start=b"POST /v1/chat/completions HTTP/1.0\r\n"), 400, BOTH),
    ("TE in HTTP/1.0 keep-alive", post(b"Connection: keep-alive", b"Transfer-Encoding: chunked",
                                       start=b"POST /v1/chat/completions HTTP/1.0\r\n"), 400, TE10),
    # -- Content-Length oddities (RFC 9110 §8.6: 1*DIGIT) -------------------------------
    ("CL plus sign", post(b"Content-Length: +5"), 400, invalid_cl("+5")),
    ("CL minus sign", post(b"Content-Length: -5"), 400, invalid_cl("-5")),
    ("CL negative zero", post(b"Content-Length: -0"), 400, invalid_cl("-0")),
    ("CL hex", post(b"Content-Length: 0x5"), 400, invalid_cl("0x5")),
    ("CL decimal point", post(b"Content-Length: 5.0"), 400, invalid_cl("5.0")),
    ("CL exponent", post(b"Content-Length: 5e0"), 400, invalid_cl("5e0")),
    ("CL inner space", post(b"Content-Length: 4 2"), 400, invalid_cl("4 2")),
    ("CL inner tab", post(b"Content-Length: 4\t2"), 400, invalid_cl("4\t2")),
    ("CL letters", post(b"Content-Length: abc"), 400, invalid_cl("abc")),
    ("CL quoted", post(b'Content-Length: "5"'), 400, invalid_cl('"5"')),
    ("CL with a parameter", post(b"Content-Length: 5;x"), 400, invalid_cl("5;x")),
    ("CL empty", post(b"Content-Length:"), 400, invalid_cl("")),
    ("CL trailing comma", post(b"Content-Length: 5,"), 400, invalid_cl("")),
    ("CL superscript two", post(b"Content-Length: \xb2"), 400, invalid_cl("\xb2")),
    ("CL Arabic-Indic five", post(b"Content-Length: \xd9\xa5"), 400, invalid_cl("\xd9\xa5")),
    ("CL full-width five", post(b"Content-Length: \xef\xbc\x95"), 400, invalid_cl("\xef\xbc\x95")),
    ("CL two differing lines", post(b"Content-Length: 5", b"Content-Length: 6"), 400, CONFLICT),
    ("CL differing list", post(b"Content-Length: 5, 6"), 400, CONFLICT),
    ("CL list then a differing line", post(b"Content-Length: 5, 5", b"Content-Length: 6"), 400, CONFLICT),
    ("CL with NUL", post(b"Content-Length: 5\x00"), 400, BAD_VALUE),
    ("CL with a bare CR", post(b"Content-Length: 5\r6"), 400, BARE_CR),
    ("CL space before colon", post(b"Content-Length : 5", body=b"hello"), 400, SPACE_COLON),
    ("CL folded", post(b"Content-Length:", b" 5", body=b"hello"), 400, invalid_cl("")),
    ("CL over the body limit", post(b"Content-Length: 5000", body=b"x" * 5000), 413, body_over(5000)),
    ("CL over the limit on GET", get(H.rstrip(), b"Content-Length: 4097"), 413, body_over(4097)),
    ("CL over the limit with leading zeros", post(b"Content-Length: 0000004097"), 413, body_over(4097)),
    ("CL of 20 digits", post(b"Content-Length: 99999999999999999999"), 413,
     body_over(99999999999999999999)),
    ("CL of 40 digits", post(b"Content-Length: " + b"9" * 40), 413, OVER_BODY),
    ("CL over the limit with Expect", post(b"Expect: 100-continue", b"Content-Length: 10000"), 413,
     body_over(10000)),
    # -- head syntax: folding, bare CR / LF, control characters, names ------------------
    ("obs-fold with a space", get(H.rstrip(), b"X-A: 1", b" 2"), 400, FOLD),
    ("obs-fold with a tab", get(H.rstrip(), b"X-A: 1", b"\t2"), 400, FOLD),
    ("space before the first field", get(b" Host: x"), 400, FOLD),
    ("tab before the first field", get(b"\tHost: x"), 400, FOLD),
    ("Connection folded", get(H.rstrip(), b"Connection:", b" close"), 400, FOLD),
    ("Host folded", get(b"Host:", b" x"), 400, FOLD),
    ("bare LF after the request line", b"GET /health HTTP/1.1\nHost: x\r\n\r\n", 400, BARE_LF),
    ("bare LF between fields", b"GET /health HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400, BARE_LF),
    ("bare LF line ends only", b"GET /health HTTP/1.1\nHost: x\n\n", 400, BARE_LF),
    ("bare CR as a line end", b"GET /health HTTP/1.1\rHost: x\r\n\r\n", 400, BARE_CR),
    ("bare CR in a value", get(H.rstrip(), b"X: a\rb"), 400, BARE_CR),
    ("CR CR LF", b"GET /health HTTP/1.1\r\r\nHost: x\r\n\r\n", 400, BARE_CR),
    ("LF CR between fields", b"GET /health HTTP/1.1\r\nHost: x\n\rX: y\r\n\r\n", 400, BARE_LF),
    ("bare CR before the empty line", b"GET /health HTTP/1.1\r\nHost: x\r\n\rX\r\n\r\n", 400, BARE_CR),
    ("NUL in a value", get(H.rstrip(), b"X: a\x00b"), 400, BAD_VALUE),
    ("DEL in a value", get(H.rstrip(), b"X: a\x7fb"), 400, BAD_VALUE),
    ("form feed in a value", get(H.rstrip(), b"X: a\x0cb"), 400, BAD_VALUE),
    ("vertical tab in a value", get(H.rstrip(), b"X: \x0b"), 400, BAD_VALUE),
    ("ESC in a value", get(H.rstrip(), b"X: \x1b[31m"), 400, BAD_VALUE),
    ("backspace in a value", get(H.rstrip(), b"X: a\x08"), 400, BAD_VALUE),
    ("NUL in a name", get(H.rstrip(), b"X\x00Y: z"), 400, BAD_NAME),
    ("space inside a name", get(H.rstrip(), b"X Y: z"), 400, BAD_NAME),
    ("empty name", get(H.rstrip(), b": z"), 400, BAD_NAME),
    ("UTF-8 in a name", get(H.rstrip(), b"X-\xc3\xa9: z"), 400, BAD_NAME),
    ("at sign in a name", get(H.rstrip(), b"Fo@: z"), 400, BAD_NAME),
    ("slash in a name", get(H.rstrip(), b"X/Y: z"), 400, BAD_NAME),
    ("parenthesis in a name", get(H.rstrip(), b"X(Y): z"), 400, BAD_NAME),
    ("quote in a name", get(H.rstrip(), b'X"Y: z'), 400, BAD_NAME),
    ("bracket in a name", get(H.rstrip(), b"X[1]: z"), 400, BAD_NAME),
    ("control byte in a name", get(H.rstrip(), b"Foo\x01\ttest: Bar"), 400, BAD_NAME),
    ("space before colon", get(H.rstrip(), b"X-A : b"), 400, SPACE_COLON),
    ("field without a colon", get(H.rstrip(), b"NoColon"), 400, NO_COLON),
    ("CRLF injected into a name", get(H.rstrip(), b"X", b": y"), 400, NO_COLON),
    # -- the request line ---------------------------------------------------------------
    ("double space after the method", get(H.rstrip(), line=b"GET  /health HTTP/1.1"), 400, LINE),
    ("double space before the version", get(H.rstrip(), line=b"GET /health  HTTP/1.1"), 400, LINE),
    ("tab separators", get(H.rstrip(), line=b"GET\t/health\tHTTP/1.1"), 400, LINE),
    ("tab after the version", get(H.rstrip(), line=b"GET /health HTTP/1.1\t"), 400, LINE),
    ("space after the version", get(H.rstrip(), line=b"GET /health HTTP/1.1 "), 400, LINE),
    ("space before the method", get(H.rstrip(), line=b" GET /health HTTP/1.1"), 400, LINE),
    ("extra word", get(H.rstrip(), line=b"GET /health HTTP/1.1 extra"), 400, LINE),
    ("method only", get(H.rstrip(), line=b"GET"), 400, LINE),
    ("POST without a version", get(H.rstrip(), line=b"POST /v1/chat/completions"), 400, LINE),
    ("HTTP/0.9 simple request", b"GET /health\r\n\r\n", 505, version("0.9")),
    ("GET with a version and no target", get(H.rstrip(), line=b"GET HTTP/1.1"), 505, version("0.9")),
    ("HTTP/0.9 spelled out", get(H.rstrip(), line=b"GET /health HTTP/0.9"), 505, version("HTTP/0")),
    ("HTTP/2.0", get(H.rstrip(), line=b"GET /health HTTP/2.0"), 505, version("HTTP/2")),
    ("HTTP/3.0", get(H.rstrip(), line=b"GET /health HTTP/3.0"), 505, version("HTTP/3")),
    ("HTTP/9.9", get(H.rstrip(), line=b"GET /health HTTP/9.9"), 505, version("HTTP/9")),
    ("HTTP/2 connection preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, version("HTTP/2")),
    ("HTTPS as the protocol", get(H.rstrip(), line=b"GET /health HTTPS/1.1"), 505, version("HTTPS")),
    ("RTSP", get(H.rstrip(), line=b"OPTIONS /health RTSP/1.0"), 505, version("RTSP")),
    ("HTTP/1.10", get(H.rstrip(), line=b"GET /health HTTP/1.10"), 400, LINE),
    ("HTTP/1", get(H.rstrip(), line=b"GET /health HTTP/1"), 400, LINE),
    ("HTTP/1.1.1", get(H.rstrip(), line=b"GET /health HTTP/1.1.1"), 400, LINE),
    ("lower-case version", get(H.rstrip(), line=b"GET /health http/1.1"), 400, LINE),
    ("mixed-case version", get(H.rstrip(), line=b"GET /health Http/1.1"), 400, LINE),
    ("version with a letter", get(H.rstrip(), line=b"GET /health HTTP/1.x"), 400, LINE),
    ("lower-case method", get(H.rstrip(), line=b"get /health HTTP/1.1"), 501, method("get")),
    ("mixed-case method", get(H.rstrip(), line=b"Get /health HTTP/1.1"), 501, method("Get")),
    ("unknown method", get(H.rstrip(), line=b"FOO /health HTTP/1.1"), 501, method("FOO")),
    ("method with an underscore", get(H.rstrip(), line=b"GET_X /health HTTP/1.1"), 501, method("GET_X")),
    ("method that is almost MKCOL", get(H.rstrip(), line=b"MKCOLA / HTTP/1.1"), 501, method("MKCOLA")),
    ("method with a parenthesis", get(H.rstrip(), line=b"G(T /health HTTP/1.1"), 400, LINE),
    ("method in UTF-8", get(H.rstrip(), line=b"G\xc3\x89T /health HTTP/1.1"), 400, LINE),
    ("NUL in the method", get(H.rstrip(), line=b"G\x00T /health HTTP/1.1"), 400, LINE),
    ("UTF-8 in the target", get(H.rstrip(), line=b"GET /\xce\xb4 HTTP/1.1"), 400, LINE),
    ("Latin-1 in the target", get(H.rstrip(), line=b"GET /caf\xe9 HTTP/1.1"), 400, LINE),
    ("space in the target", get(H.rstrip(), line=b"GET /a b HTTP/1.1"), 400, LINE),
    ("NUL in the target", get(H.rstrip(), line=b"GET /health\x00 HTTP/1.1"), 400, LINE),
    ("DEL in the target", get(H.rstrip(), line=b"GET /\x7f HTTP/1.1"), 400, LINE),
    ("relative target", get(H.rstrip(), line=b"GET health HTTP/1.1"), 400, "invalid request-target for GET"),
    ("authority target on GET", get(H.rstrip(), line=b"GET x:80 HTTP/1.1"), 400,
     "invalid request-target for GET"),
    ("scheme without slashes", get(H.rstrip(), line=b"GET http:x/health HTTP/1.1"), 400,
     "invalid request-target for GET"),
    ("CONNECT in origin form", get(H.rstrip(), line=b"CONNECT /health HTTP/1.1"), 400,
     "invalid request-target for CONNECT"),
    ("CONNECT without a port", get(H.rstrip(), line=b"CONNECT x HTTP/1.1"), 400,
     "invalid request-target for CONNECT"),
    ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, LINE),
    ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 400, LINE),
    ("five empty lines first", b"\r\n" * 5 + get(H.rstrip()), 400, LINE),
    ("request line over 8190 bytes", get(H.rstrip(), line=b"GET /" + b"a" * 8200 + b" HTTP/1.1"), 414,
     "request line longer than 8190 bytes"),
    ("request line over 8190 bytes, unfinished", b"GET /" + b"a" * 9000, 414,
     "request line longer than 8190 bytes"),
    ("HTTP/5.6, unfinished", b"GET / HTTP/5.6", 505, version("HTTP/5")),
    # -- limits of the head ---------------------------------------------------------------
    ("head over 64 KiB", get(H.rstrip(), b"X: " + b"a" * 70000), 431,
     "header section bytes over the limit of 65536"),
    ("head over 64 KiB, unfinished", b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000, 431,
     "header section bytes over the limit of 65536"),
    ("many fields over 64 KiB", get(H.rstrip(), *(b"X-%05d: %s" % (i, b"v" * 700) for i in range(99))), 431,
     "header section bytes over the limit of 65536"),
    ("101 fields", get(H.rstrip(), *(b"X%d: v" % i for i in range(100))), 431,
     "header field count over the limit of 100"),
    ("1000 fields", get(H.rstrip(), *(b"X%d: v" % i for i in range(999))), 431,
     "header field count over the limit of 100"),
    # -- Host (RFC 9112 §3.2) ---------------------------------------------------------------
    ("Host missing", get(), 400, "missing Host header"),
    ("Host missing with absolute form", get(line=b"GET http://x/health HTTP/1.1"), 400,
     "missing Host header"),
    ("Host twice", get(b"Host: a", b"Host: b"), 400, "more than one Host header"),
    ("Host twice, same value", get(b"Host: a", b"Host: a"), 400, "more than one Host header"),
    ("Host twice in different case", get(b"host: a", b"HOST: a"), 400, "more than one Host header"),
    ("Host empty then again", get(b"Host:", b"Host: a"), 400, "more than one Host header"),
    ("Host with a space", get(b"Host: a b"), 400, "invalid Host header"),
    ("Host with a tab", get(b"Host: a\tb"), 400, "invalid Host header"),
    ("Host with a path", get(b"Host: a/b"), 400, "invalid Host header"),
    ("Host with user info", get(b"Host: u@a"), 400, "invalid Host header"),
    ("Host with a bad port", get(b"Host: a:b"), 400, "invalid Host header"),
    ("Host with two ports", get(b"Host: a:1:2"), 400, "invalid Host header"),
    ("Host with an open bracket", get(b"Host: [::1"), 400, "invalid Host header"),
    ("Host in UTF-8", get(b"Host: \xc3\xa9.example"), 400, "invalid Host header"),
    ("Host with a backslash", get(b"Host: a\\b"), 400, "invalid Host header"),
    ("Host with NUL", get(b"Host: a\x00"), 400, BAD_VALUE),
    ("Host with a space before the colon", get(b"Host : a"), 400, SPACE_COLON),
    # -- Connection and keep-alive games: an error always closes ------------------------
    ("error with Connection: keep-alive", get(H.rstrip(), b"Connection: keep-alive", b"X: \x00"),
     400, BAD_VALUE),
    ("error on HTTP/1.0 keep-alive", get(b"Connection: keep-alive", b"X: \x00",
                                         line=b"GET /health HTTP/1.0"), 400, BAD_VALUE),
    ("Connection with a bare CR", get(H.rstrip(), b"Connection: keep\ralive"), 400, BARE_CR),
    ("Connection with a space before the colon", get(H.rstrip(), b"Connection : close"), 400, SPACE_COLON),
    # -- Upgrade oddities ---------------------------------------------------------------------
    ("Upgrade h2c with a bad Host", get(b"Host: a b", b"Connection: Upgrade, HTTP2-Settings",
                                        b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__"),
     400, "invalid Host header"),
    ("Upgrade folded", get(H.rstrip(), b"Connection: Upgrade", b"Upgrade:", b" websocket",
                           line=b"GET / HTTP/1.1"), 400, FOLD),
    ("Upgrade with a TE obfuscation", get(H.rstrip(), b"Connection: Upgrade", b"Upgrade: websocket",
                                          b"Transfer-Encoding: xchunked", line=b"GET / HTTP/1.1"),
     400, NOT_FINAL),
    ("Upgrade with a body over the limit", get(H.rstrip(), b"Connection: Upgrade", b"Upgrade: websocket",
                                               b"Content-Length: 100000", line=b"GET / HTTP/1.1"),
     413, body_over(100000)),
    # -- chunk sizes and extensions (RFC 9112 §7.1) --------------------------------------
    ("chunk size not hex", chunked(b"g\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size with 0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size with plus", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size with a leading space", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size with a trailing space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size with a trailing tab", chunked(b"5\t\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size with NUL", chunked(b"5\x00\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size in full-width digits", chunked(b"\xef\xbc\x95\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size with an underscore", chunked(b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk size decimal point", chunked(b"5.0\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk extension without a name", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk extension with an open quote", chunked(b'5;a="b\r\nhello\r\n0\r\n\r\n'), 400, SIZE),
    ("chunk extension with a bad name", chunked(b"5;a@b\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk extension without a value", chunked(b"5;a=\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk extension with NUL", chunked(b"5;a=\x00\r\nhello\r\n0\r\n\r\n"), 400, SIZE),
    ("chunk extension with a bare CR", chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"), 400, CHUNK_BARE),
    ("chunk size line ending in LF", chunked(b"5\nhello\r\n0\r\n\r\n"), 400, CHUNK_BARE),
    ("chunk size line with CR CR LF", chunked(b"5\r\r\nhello\r\n0\r\n\r\n"), 400, CHUNK_BARE),
    ("chunk size over 15 hex digits", chunked(b"ffffffffffffffffffff\r\nx\r\n"), 400,
     "chunk size out of range"),
    ("chunk size of 2^64", chunked(b"10000000000000000\r\nx\r\n"), 400, "chunk size out of range"),
    ("chunk size of 15 hex digits", chunked(b"fffffffffffffff\r\nx\r\n"), 413, OVER_BODY),
    ("chunk size over the body limit", chunked(b"1001\r\nx\r\n"), 413, OVER_BODY),
    ("chunks adding up past the limit", chunked(b"800\r\n" + b"a" * 2048 + b"\r\n801\r\nx\r\n"), 413, OVER_BODY),
    ("chunk extension over 4096 bytes", chunked(b"5;a=" + b"b" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), 400,
     "chunk framing line longer than 4096 bytes"),
    ("chunk size with 5000 leading zeros", chunked(b"0" * 5000 + b"5\r\nhello\r\n0\r\n\r\n"), 400,
     "chunk framing line longer than 4096 bytes"),
    # -- chunk data and terminators ------------------------------------------------------
    ("chunk data longer than its size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400, NO_CRLF),
    ("chunk data without CRLF", chunked(b"5\r\nhelloX0\r\n\r\n"), 400, NO_CRLF),
    ("chunk data followed by LF only", chunked(b"5\r\nhello\n0\r\n\r\n"), 400, NO_CRLF),
    ("chunk data followed by CR only", chunked(b"5\r\nhello\r0\r\n\r\n"), 400, NO_CRLF),
    ("chunk data followed by LF CR", chunked(b"5\r\nhello\n\r0\r\n\r\n"), 400, NO_CRLF),
    ("short chunk swallows the terminator", chunked(b"5\r\nhi\r\n0\r\n\r\n"), 400, SIZE),
    ("zero chunk then a smuggled request line", chunked(b"0\r\n" + SMUGGLED), 400, NO_COLON),
    ("chunk data with a smuggled request", chunked(b"2\r\nhi\r\n" + SMUGGLED), 400, SIZE),
    ("two last chunks", chunked(b"0\r\n0\r\n\r\n"), 400, NO_COLON),
    # -- trailers (RFC 9112 §7.1.2) -----------------------------------------------------------
    ("trailer without a colon", chunked(b"0\r\nBad Trailer\r\n\r\n"), 400, NO_COLON),
    ("trailer folded", chunked(b"0\r\nX: a\r\n b\r\n\r\n"), 400, FOLD),
    ("trailer with NUL", chunked(b"0\r\nX: a\x00\r\n\r\n"), 400, BAD_VALUE),
    ("trailer with a space before the colon", chunked(b"0\r\nX : a\r\n\r\n"), 400, SPACE_COLON),
    ("trailer with a bad name", chunked(b"0\r\nX@: a\r\n\r\n"), 400, BAD_NAME),
    ("trailer with a bare LF", chunked(b"0\r\nX: a\nY: b\r\n\r\n"), 400, CHUNK_BARE),
    ("101 trailer fields", chunked(b"0\r\n" + b"".join(b"T%d: v\r\n" % i for i in range(101)) + b"\r\n"),
     431, "trailer field count over the limit of 100"),
    # Trailer fields share the head's 64 KiB budget (431, as a head over it).
    ("trailer line over 64 KiB", chunked(b"0\r\nX: " + b"a" * 70000 + b"\r\n\r\n"), 431,
     "header and trailer section bytes over the limit of 65536"),
    ("trailer lines over 64 KiB together", chunked(b"0\r\n" + b"".join(
        b"X%d: " % i + b"a" * 20000 + b"\r\n" for i in range(4)) + b"\r\n"), 431,
     "header and trailer section bytes over the limit of 65536"),
    # -- Expect: 100-continue, then a broken body: 100 first, then the error -------------
    ("Expect then a bad chunk size", EXPECT_CHUNKED + b"zz\r\n", 400, SIZE),
    ("Expect then chunk data without CRLF", EXPECT_CHUNKED + b"1\r\nxy\r\n", 400, NO_CRLF),
    ("Expect then chunks past the limit", EXPECT_CHUNKED + b"2000\r\n", 413, OVER_BODY),
    ("Expect folded", post(b"Expect:", b" 100-continue", b"Content-Length: 1", body=b"x"), 400, FOLD),
)

# Requests that are odd but valid: answered with the exact status, and the
# connection stays open (the next request on it is served).
ODD_BUT_VALID = (
    ("percent-encoded CRLF in the target", get(H.rstrip(), line=b"GET /%0d%0aSet-Cookie:x HTTP/1.1"), 404),
    ("percent-encoded NUL in the target", get(H.rstrip(), line=b"GET /health%00 HTTP/1.1"), 404),
    ("overlong UTF-8 dots", get(H.rstrip(), line=b"GET /%c0%ae%c0%ae/health HTTP/1.1"), 404),
    ("dot segments are not collapsed", get(H.rstrip(), line=b"GET /v1/../health HTTP/1.1"), 404),
    ("a bare percent sign", get(H.rstrip(), line=b"GET /% HTTP/1.1"), 404),
    ("double slash", get(H.rstrip(), line=b"GET //health HTTP/1.1"), 404),
    ("query on /health", get(H.rstrip(), line=b"GET /health?x=1&y HTTP/1.1"), 200),
    ("fragment on /health", get(H.rstrip(), line=b"GET /health#frag HTTP/1.1"), 200),
    ("asterisk form on GET", get(H.rstrip(), line=b"GET * HTTP/1.1"), 404),
    ("OPTIONS asterisk", get(H.rstrip(), line=b"OPTIONS * HTTP/1.1"), 404),
    ("HTTP/1.9 is HTTP/1.1", get(H.rstrip(), line=b"GET /health HTTP/1.9"), 200),
    ("four leading empty lines", b"\r\n" * 4 + get(H.rstrip()), 200),
    ("empty Host", get(b"Host:"), 200),
    ("Host with a port", get(b"Host: 127.0.0.1:80"), 200),
    ("Host in brackets", get(b"Host: [::1]:80"), 200),
    ("HTTP/1.0 without Host", get(b"Connection: keep-alive", line=b"GET /health HTTP/1.0"), 200),
    ("unknown expectation is ignored", get(H.rstrip(), b"Expect: 200-ok"), 200),
    ("Expect 100-continue without a body", get(H.rstrip(), b"Expect: 100-continue"), 200),
    ("Upgrade h2c is ignored", get(H.rstrip(), b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                                   b"HTTP2-Settings: AAMAAABkAAQAAP__"), 200),
    ("Upgrade websocket on /health is ignored", get(H.rstrip(), b"Connection: Upgrade",
                                                    b"Upgrade: websocket"), 200),
    ("obs-text in a value", get(H.rstrip(), b"X-City: D\xfcsseldorf"), 200),
    ("Transfer_Encoding is just a field", get(H.rstrip(), b"Transfer_Encoding: chunked"), 200),
    ("tchar field name", get(H.rstrip(), b"X!#$%&'*+-.^_`|~9: v"), 200),
    ("100 fields", get(H.rstrip(), *(b"X%d: v" % i for i in range(99))), 200),
    ("request line of 8190 bytes", get(H.rstrip(), line=b"GET /" + b"a" * 8176 + b" HTTP/1.1"), 404),
    ("Content-Length list of equal values", post(b"Content-Length: 2, 2", b"Content-Length: 02",
                                                  body=b"{}"), 401),
    ("chunked with extensions and trailers", chunked(b"2;a=b;c=\"d\"\r\n{}\r\n0\r\nContent-Length: 9\r\n\r\n"),
     401),
    ("chunk size with leading zeros", chunked(b"0002\r\n{}\r\n000\r\n\r\n"), 401),
    ("Transfer-Encoding in capitals", post(b"Transfer-Encoding: CHUNKED", body=b"2\r\n{}\r\n0\r\n\r\n"), 401),
    ("list with an empty member", post(b"Transfer-Encoding: ,chunked", body=b"2\r\n{}\r\n0\r\n\r\n"), 401),
    ("body on an unknown path is skipped by closing", post(b"Content-Length: 2", body=b"{}",
                                                          start=b"POST /nowhere HTTP/1.1\r\n" + H), 404),
)
# The one above that must close: its body is left unread.
CLOSES_AFTER = {"body on an unknown path is skipped by closing"}

PROTOCOL_CODES = {400: "bad_request", 413: "request_too_large", 414: "uri_too_long",
                  431: "header_fields_too_large", 501: "not_implemented",
                  505: "http_version_not_supported"}

# llhttp's strict request cases whose verdict is "error" (tests/data/llhttp),
# with the statuses this gateway answers on the wire, in order. A case's
# last status comes with connection: close. Where a complete request comes
# first, it is answered (404: llhttp's paths are not routes here); where the
# path is unknown and a body follows, the gateway answers 404 and closes
# without reading the broken body; after Connection: close or an HTTP/1.0
# request, the bytes that llhttp calls an error are never read.
LLHTTP_ERRORS = {
    "test/request/connection.md:81": (404,),
    "test/request/connection.md:208": (400,),
    "test/request/connection.md:292": (405,),
    "test/request/connection.md:342": (405,),
    "test/request/connection.md:611": (400,),
    "test/request/content-length.md:75": (413,),
    "test/request/content-length.md:100": (400,),
    "test/request/content-length.md:129": (400,),
    "test/request/content-length.md:159": (400,),
    "test/request/content-length.md:344": (400,),
    "test/request/content-length.md:370": (400,),
    "test/request/content-length.md:396": (400,),
    "test/request/content-length.md:421": (400,),
    "test/request/content-length.md:493": (400,),
    "test/request/invalid.md:4": (505,),
    "test/request/invalid.md:25": (505,),
    "test/request/invalid.md:45": (505,),
    "test/request/invalid.md:66": (501,),
    "test/request/invalid.md:87": (400,),
    "test/request/invalid.md:113": (400,),
    "test/request/invalid.md:147": (400,),
    "test/request/invalid.md:216": (400,),
    "test/request/invalid.md:254": (400,),
    "test/request/invalid.md:287": (400,),
    "test/request/invalid.md:310": (400,),
    "test/request/invalid.md:333": (400,),
    "test/request/invalid.md:356": (501,),
    "test/request/invalid.md:372": (400,),
    "test/request/invalid.md:396": (400,),
    "test/request/invalid.md:425": (400,),
    "test/request/invalid.md:454": (400,),
    "test/request/invalid.md:490": (505,),
    "test/request/invalid.md:509": (400,),
    "test/request/invalid.md:531": (400,),
    "test/request/invalid.md:650": (400,),
    "test/request/lenient-header-value-relaxed.md:38": (400,),
    "test/request/lenient-headers.md:82": (400,),
    "test/request/sample.md:394": (400,),
    "test/request/sample.md:432": (400,),
    "test/request/transfer-encoding.md:291": (404,),
    "test/request/transfer-encoding.md:328": (404,),
    "test/request/transfer-encoding.md:424": (400,),
    "test/request/transfer-encoding.md:464": (400,),
    "test/request/transfer-encoding.md:495": (400,),
    "test/request/transfer-encoding.md:574": (400,),
    "test/request/transfer-encoding.md:613": (400,),
    "test/request/transfer-encoding.md:644": (400,),
    "test/request/transfer-encoding.md:840": (400,),
    "test/request/transfer-encoding.md:877": (400,),
    "test/request/transfer-encoding.md:911": (400,),
    "test/request/transfer-encoding.md:976": (400,),
    "test/request/transfer-encoding.md:1097": (400,),
    "test/request/transfer-encoding.md:1184": (400,),
    "test/request/uri.md:148": (400,),
    "test/request/uri.md:245": (400,),
}


def exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh connection; read until the server closes.

    Returns the bytes read and whether the server closed (False: the read
    timed out with the connection still open).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass            # the server judged and closed before everything was sent
        chunks: list[bytes] = []
        deadline = time.monotonic() + READ_TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return b"".join(chunks), False
            except ConnectionResetError:
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
        return b"".join(chunks), False


class KeepAliveClient:
    """A well-behaved client: GET /health again and again on one connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.local = self.sock.getsockname()
        self.buffer = b""

    def health(self) -> int:
        self.sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                      if line.lower().startswith("content-length:"))
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        assert not any(line.lower() == "connection: close" for line in lines), lines
        return int(lines[0].split()[1])

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise AssertionError("the server closed the well-behaved client's connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


class HostileHTTPTest(LiveGateway, unittest.TestCase):
    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return base_config(http={"maxBodyBytes": MAX_BODY, "headerTimeoutSeconds": 2})

    def setUp(self) -> None:
        self.bystander = KeepAliveClient(self.gw.port)
        self.addCleanup(self.bystander.close)

    def assertBystanderServed(self) -> None:
        self.assertEqual(self.bystander.health(), 200)
        self.assertEqual(self.bystander.sock.getsockname(), self.bystander.local)

    def assertRefused(self, raw: bytes, statuses: tuple[int, ...], message: str | None, *,
                      smuggle: bool) -> None:
        """``raw`` (plus SMUGGLED if ``smuggle``) gets exactly ``statuses``, then the server closes."""
        data, closed = exchange(self.gw.port, raw + SMUGGLED if smuggle else raw)
        self.assertTrue(closed, f"the server kept the connection open; read {data[:300]!r}")
        responses = [r for r in split_responses(data) if r[0] != 100]
        interim = [r for r in split_responses(data) if r[0] == 100]
        self.assertLessEqual(len(interim), 1)
        self.assertEqual(tuple(s for s, _, _ in responses), statuses, data[:600])
        status, headers, body = responses[-1]
        self.assertEqual(headers.get("connection"), "close")
        self.assertEqual(headers.get("content-type"), "application/json")
        self.assertEqual(int(headers["content-length"]), len(body))
        error = error_of(body)
        if message is not None:
            self.assertEqual(error["message"], message)
            self.assertEqual(error["code"], PROTOCOL_CODES[status])
            self.assertEqual(error["type"], "invalid_request_error")
        # Nothing follows the error: no smuggled answer, no stray bytes.
        self.assertTrue(data.endswith(body))

    def test_table_size(self) -> None:
        self.assertGreaterEqual(len(HOSTILE), 150)
        self.assertEqual(len({name for name, *_ in HOSTILE}), len(HOSTILE))

    def test_hostile_requests(self) -> None:
        for name, raw, status, message in HOSTILE:
            with self.subTest(name):
                self.assertRefused(raw, (status,), message, smuggle=raw.endswith(b"\n"))
                self.assertBystanderServed()

    def test_llhttp_error_cases(self) -> None:
        cases = json.loads((DATA / "llhttp" / "llhttp-cases.json").read_text())["cases"]
        errors = {c["id"]: c for c in cases
                  if c["type"] == "request" and c["strict"] and c["expect"] == "error"}
        self.assertEqual(set(errors), set(LLHTTP_ERRORS))
        for case_id, statuses in LLHTTP_ERRORS.items():
            case = errors[case_id]
            with self.subTest(case_id, name=case["name"]):
                raw = base64.b64decode(case["raw_b64"])
                # A smuggled request is added only after a complete head: appended
                # to an unfinished one it would become part of it.
                self.assertRefused(raw, statuses, None, smuggle=raw.endswith(b"\r\n\r\n"))
                self.assertBystanderServed()

    def test_odd_but_valid_requests_keep_the_connection(self) -> None:
        for name, raw, status in ODD_BUT_VALID:
            with self.subTest(name):
                closes = name in CLOSES_AFTER
                data, closed = exchange(self.gw.port, raw + b"GET /health HTTP/1.1\r\nHost: x\r\n"
                                        b"Connection: close\r\n\r\n")
                self.assertTrue(closed)
                responses = split_responses(data)
                self.assertEqual([s for s, _, _ in responses], [status] if closes else [status, 200],
                                 data[:400])
                if status >= 400:
                    error_of(responses[0][2])
                self.assertEqual(responses[0][1].get("connection") == "close", closes)
                self.assertNotIn("set-cookie", responses[0][1])
                self.assertBystanderServed()

    def test_absolute_form_is_routed_by_its_path(self) -> None:
        # Regression: absolute-form targets are routed by the whole URI: GET http://x/health is a 404.
        # RFC 9112 §3.2.2: "A server MUST accept the absolute-form in requests".
        data, _ = exchange(self.gw.port, get(H.rstrip(), b"Connection: close",
                                             line=b"GET http://x/health HTTP/1.1"))
        [(status, _, _)] = split_responses(data)
        self.assertEqual(status, 200)

    def test_connect_content_is_never_read_as_a_request(self) -> None:
        # Regression: bytes after an unanswered CONNECT's head are parsed as the next request (smuggling).
        # They are tunnel data, or a body that a front end framed by Content-Length.
        framings = ((b"Content-Length: %d" % len(SMUGGLED_CLOSE),),
                    (b"Content-Length: 5", b"Transfer-Encoding: chunked"), ())
        for fields in framings:
            with self.subTest(fields=fields):
                # The smuggled request asks to close, so that a failure shows at once.
                raw = get(H.rstrip(), *fields, line=b"CONNECT x:443 HTTP/1.1") + SMUGGLED_CLOSE
                data, _ = exchange(self.gw.port, raw)
                statuses = [s for s, _, _ in split_responses(data)]
                self.assertEqual(len(statuses), 1, data)
                self.assertNotIn(200, statuses)


if __name__ == "__main__":
    unittest.main()
