"""Answers the server makes from an error carry the fields its ``error_fields`` hook adds.

The network layer knows nothing of CORS: the gateway gives its server one hook
from a request's header fields (as far as they could be read) to extra
response fields, and every answer made from an error — the parser's
400/413/414/431/501, timeouts' 408, the router's 404/405, a body guard's
refusal, a handler's ``ApiError`` or failure — goes through it. Three levels:
``heads.salvage_fields`` on byte vectors; an ``HTTPServer`` on port 0 with a
recording hook; a real gateway with ``gateway.http.cors.allowOrigins``, whose
pre-route errors carry the same CORS fields as its routed answers.
"""

from __future__ import annotations

import asyncio
import socket
import time
import unittest
from typing import Any

from equabot_gw.errors import ApiError
from equabot_gw.net import heads, server as server_mod
from equabot_gw.net.http11 import Headers, RequestParser
from equabot_gw.net.routes import HTTPRequest, Response, Router
from tests.support import LiveGateway, base_config, error_of, split_responses

ORIGIN = "https://app.example"


# -- heads.salvage_fields ------------------------------------------------------------

# (name, bytes that arrived of a head, the fields that can be read from them)
SALVAGE_VECTORS = (
    ("a complete head", b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n",
     [("host", "x"), ("origin", "https://app.example")]),
    ("a complete head without its empty line", b"GET / HTTP/1.1\r\nOrigin: https://app.example",
     []),
    ("bytes after the head are not fields", b"GET / HTTP/1.1\r\nA: 1\r\n\r\nOrigin: https://app.example\r\n",
     [("a", "1")]),
    ("a line cut short is not read", b"GET / HTTP/1.1\r\nA: 1\r\nOrigin: https://app.example",
     [("a", "1")]),
    ("a line cut between CR and LF is not read", b"GET / HTTP/1.1\r\nOrigin: https://app.example\r",
     []),
    ("names lower-cased, values trimmed", b"GET / HTTP/1.1\r\nORIGIN: \t https://app.example \r\n",
     [("origin", "https://app.example")]),
    ("lines that are not field lines are skipped",
     b"GET / HTTP/1.1\r\nno colon\r\n folded\r\nBad Name: v\r\nX: a\nOrigin: https://evil\r\nY: 2\r\n",
     [("y", "2")]),
    ("a request line alone", b"GET /" + b"a" * 100, []),
    ("nothing", b"", []),
    ("a refused head keeps its fields", b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n"
                                        b"Origin: https://app.example\r\n\r\n",
     [("content-length", "1"), ("content-length", "2"), ("origin", "https://app.example")]),
)


class SalvageFieldsTest(unittest.TestCase):
    def test_vectors(self) -> None:
        for name, data, fields in SALVAGE_VECTORS:
            with self.subTest(name):
                self.assertEqual(list(heads.salvage_fields(data)), fields)

    def test_at_most_max_headers_fields(self) -> None:
        data = b"GET / HTTP/1.1\r\n" + b"".join(b"F%d: v\r\n" % i for i in range(50))
        self.assertEqual([n for n, _ in heads.salvage_fields(data, 3)], ["f0", "f1", "f2"])

    def test_the_parser_keeps_the_head_it_refused_or_is_reading(self) -> None:
        cases = (
            ("refused complete", b"POST / HTTP/1.1\r\nHost: x\r\nOrigin: o\r\nContent-Length: 99\r\n\r\n", True),
            ("over the head limit", b"GET / HTTP/1.1\r\nOrigin: o\r\nX: " + b"a" * 300, True),
            ("still arriving", b"GET / HTTP/1.1\r\nOrigin: o\r\nX: a", False),
        )
        for name, data, fails in cases:
            with self.subTest(name):
                parser = RequestParser(max_head_bytes=256, max_body_bytes=10)
                parser.receive_data(data)
                if fails:
                    with self.assertRaises(Exception):
                        parser.next_event()
                else:
                    parser.next_event()
                self.assertEqual(heads.salvage_fields(parser.head_so_far).get("origin"), "o")

    def test_nothing_between_messages_or_in_a_body(self) -> None:
        parser = RequestParser()
        self.assertEqual(parser.head_so_far, b"")
        parser.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
        parser.next_event()
        self.assertEqual(parser.head_so_far, b"")


# -- the server's hook ---------------------------------------------------------------

class _Target:
    """An ``HTTPServer`` on port 0 whose hook echoes a request's ``Origin`` as ``x-seen-origin``."""

    def __init__(self, hook: Any = None) -> None:
        self.calls: list[Headers] = []
        router = Router()
        router.add("/ok", ("GET",), self.ok)
        router.add("/upload", ("POST",), self.ok, body_guard=self.guard)
        router.add("/refuse", ("GET",), self.refuse)
        router.add("/crash", ("GET",), self.crash)
        self.server = server_mod.HTTPServer(router, limits=server_mod.Limits(
            max_head_bytes=1024, max_body_bytes=100, header_timeout=0.3, body_timeout=0.3),
            error_fields=hook or self.hook)

    def hook(self, headers: Headers) -> list[tuple[str, str]]:
        self.calls.append(headers)
        origin = headers.get("origin")
        return [] if origin is None else [("x-seen-origin", origin)]

    async def ok(self, request: HTTPRequest) -> Response:
        return Response(200, [("content-type", "text/plain")], b"ok")

    def guard(self, request: HTTPRequest) -> None:
        if "authorization" not in request.headers:
            raise ApiError(401, "no credentials", code="missing_api_key")

    async def refuse(self, request: HTTPRequest) -> Response:
        raise ApiError(409, "refused by the handler", code="conflict")

    async def crash(self, request: HTTPRequest) -> Response:
        raise RuntimeError("a bug")

    async def __aenter__(self) -> _Target:
        await self.server.start("127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.shutdown(0.5)


async def _answer(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` and read the first response (head and Content-Length body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        got = b""
        async with asyncio.timeout(timeout):
            while True:
                head, sep, rest = got.partition(b"\r\n\r\n")
                if sep:
                    [(status, fields, body)] = split_responses(head + sep + rest)[:1] or [(0, {}, b"")]
                    if status and len(body) == int(fields.get("content-length", 0)):
                        return status, fields, body
                piece = await reader.read(65536)
                if not piece:
                    raise AssertionError(f"closed before a whole response: {got[:300]!r}")
                got += piece
    finally:
        writer.close()


def _head(first: str, *fields: str, end: bool = True) -> bytes:
    """A request head; with ``end`` False its last line is cut short (no CRLF)."""
    return ("\r\n".join((first, "Host: x", *fields)) + ("\r\n\r\n" if end else "")).encode()


O = f"Origin: {ORIGIN}"
# (name, request bytes, status the server answers, the Origin its hook saw)
HOOK_VECTORS = (
    ("body over the limit by Content-Length", _head("POST /upload HTTP/1.1", O, "Content-Length: 1000"), 413, ORIGIN),
    ("chunked body over the limit", _head("POST /upload HTTP/1.1", O, "Authorization: x",
                                          "Transfer-Encoding: chunked") + b"c8\r\n" + b"a" * 200 + b"\r\n", 413, ORIGIN),
    ("bad chunk framing", _head("POST /upload HTTP/1.1", O, "Authorization: x", "Transfer-Encoding: chunked")
     + b"zz\r\n", 400, ORIGIN),
    ("head over the limit, complete", _head("GET /ok HTTP/1.1", "X-Big: " + "b" * 2000, O), 431, ORIGIN),
    ("head over the limit, still arriving", _head("GET /ok HTTP/1.1", O, "X-Big: " + "b" * 2000, end=False),
     431, ORIGIN),
    ("a field cut at the limit is not read", _head("GET /ok HTTP/1.1", O + "x" * 2000, end=False), 431, None),
    ("conflicting Content-Length", _head("POST /upload HTTP/1.1", O, "Content-Length: 1", "Content-Length: 2"),
     400, ORIGIN),
    ("unknown transfer coding", _head("POST /upload HTTP/1.1", O, "Transfer-Encoding: zip, chunked"), 501, ORIGIN),
    ("request line too long, head complete", _head("GET /" + "a" * 9000 + " HTTP/1.1", O), 414, ORIGIN),
    ("request line too long: no field read", b"GET /" + b"a" * 9000, 414, None),
    ("no route", _head("GET /nothing HTTP/1.1", O), 404, ORIGIN),
    ("method not allowed", _head("DELETE /ok HTTP/1.1", O), 405, ORIGIN),
    ("refused by the body guard", _head("POST /upload HTTP/1.1", O, "Content-Length: 50"), 401, ORIGIN),
    ("refused by the handler", _head("GET /refuse HTTP/1.1", O), 409, ORIGIN),
    ("the handler failed", _head("GET /crash HTTP/1.1", O), 500, ORIGIN),
    ("head not received in time", _head("GET /ok HTTP/1.1", O, "X-Wait: 1", end=False), 408, ORIGIN),
    ("body not received in time", _head("POST /upload HTTP/1.1", O, "Authorization: x", "Content-Length: 50")
     + b"{", 408, ORIGIN),
)


class ErrorFieldsHookTest(unittest.IsolatedAsyncioTestCase):
    async def test_every_error_answer_goes_through_the_hook(self) -> None:
        async with _Target() as target:
            with self.assertLogs("equabot_gw.http", "ERROR"):      # "handler failed", logged
                for name, data, status, origin in HOOK_VECTORS:
                    with self.subTest(name):
                        target.calls.clear()
                        got, fields, body = await _answer(target.server.port, data)
                        self.assertEqual(got, status, body)
                        error_of(body)
                        self.assertEqual(len(target.calls), 1)
                        self.assertEqual(target.calls[0].get("origin"), origin)
                        self.assertEqual(fields.get("x-seen-origin"), origin)

    async def test_answers_of_handlers_never_go_through_it(self) -> None:
        async with _Target() as target:
            status, fields, _ = await _answer(target.server.port, _head("GET /ok HTTP/1.1", O))
            self.assertEqual(status, 200)
            status, fields, _ = await _answer(
                target.server.port, _head("POST /upload HTTP/1.1", O, "Authorization: x", "Content-Length: 2") + b"{}")
            self.assertEqual(status, 200)
            self.assertNotIn("x-seen-origin", fields)
            self.assertEqual(target.calls, [])

    async def test_a_failing_hook_costs_the_client_nothing_but_its_fields(self) -> None:
        def hook(headers: Headers) -> list[tuple[str, str]]:
            raise ValueError("the hook's bug")

        async with _Target(hook) as target:
            with self.assertLogs("equabot_gw.http", "ERROR"):
                status, fields, body = await _answer(
                    target.server.port, _head("POST /upload HTTP/1.1", O, "Content-Length: 1000"))
            self.assertEqual((status, error_of(body)["code"]), (413, "request_too_large"))
            self.assertEqual(fields.get("connection"), "close")

    async def test_without_a_hook_nothing_is_added(self) -> None:
        router = Router()
        server = server_mod.HTTPServer(router, limits=server_mod.Limits(max_body_bytes=100))
        await server.start("127.0.0.1", 0)
        try:
            status, fields, _ = await _answer(server.port, _head("POST /x HTTP/1.1", O, "Content-Length: 1000"))
        finally:
            await server.shutdown(0.5)
        self.assertEqual(status, 413)
        self.assertEqual(set(fields), {"date", "server", "x-request-id", "content-type", "content-length",
                                       "connection"})


# -- the gateway: CORS on the answers made before any route --------------------------

CORS_FIELDS = ("access-control-allow-origin", "vary", "access-control-expose-headers")


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``; everything the gateway answers until it closes, or until ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not piece:
                break
            got += piece
            if b"\r\n\r\n" in got and got.endswith(b"}"):
                break
        return got


def _fields(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    pairs = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    return int(lines[0].split()[1]), pairs, body


class GatewayPreRouteCorsTest(LiveGateway, unittest.TestCase):
    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return base_config(http={"maxBodyBytes": 4096, "maxHeaderBytes": 2048, "headerTimeoutSeconds": 0.3,
                                 "cors": {"allowOrigins": [ORIGIN]}})

    def requests(self, origin: str) -> tuple[tuple[str, bytes, int, str], ...]:
        o = f"Origin: {origin}"
        chat = "POST /v1/chat/completions HTTP/1.1"
        return (
            ("body over maxBodyBytes", _head(chat, o, "Authorization: Bearer x", "Content-Type: application/json",
                                             "Content-Length: 100000"), 413, "request_too_large"),
            ("chunked body over maxBodyBytes", _head(chat, o, "Authorization: Bearer x",
                                                     "Transfer-Encoding: chunked")
             + b"2000\r\n" + b"a" * 0x2000 + b"\r\n", 413, "request_too_large"),
            ("head over maxHeaderBytes", _head("GET /v1/models HTTP/1.1", "X-Big: " + "b" * 4000, o),
             431, "header_fields_too_large"),
            ("bad framing", _head(chat, o, "Content-Length: 1", "Transfer-Encoding: chunked"), 400, "bad_request"),
            ("head not received in time", _head("GET /v1/models HTTP/1.1", o, "X-Wait: 1", end=False),
             408, "request_timeout"),
            ("no route", _head("GET /v1/nothing HTTP/1.1", o), 404, "not_found"),
            ("no credentials for a body", _head(chat, o, "Content-Type: application/json", "Content-Length: 100"),
             401, "missing_api_key"),
        )

    def test_an_allowed_page_gets_cors_fields_on_every_error(self) -> None:
        for name, data, status, code in self.requests(ORIGIN):
            with self.subTest(name):
                got, fields, body = _fields(_exchange(self.gw.port, data))
                self.assertEqual((got, error_of(body)["code"]), (status, code))
                for field in CORS_FIELDS:      # each once: no answer carries them twice
                    self.assertEqual(len([v for n, v in fields if n == field]), 1, (field, fields))
                self.assertIn(("access-control-allow-origin", ORIGIN), fields)
                self.assertIn(("vary", "origin"), fields)
                self.assertNotIn("access-control-allow-credentials", dict(fields))

    def test_other_origins_and_requests_without_one_get_none(self) -> None:
        for origin in ("https://evil.example", "https://app.example.evil", "null"):
            for name, data, status, _ in self.requests(origin):
                with self.subTest(origin=origin, name=name):
                    got, fields, _ = _fields(_exchange(self.gw.port, data))
                    self.assertEqual(got, status)
                    self.assertFalse({n for n, _ in fields} & set(CORS_FIELDS), fields)
        got, fields, _ = _fields(_exchange(self.gw.port, _head(
            "POST /v1/chat/completions HTTP/1.1", "Content-Length: 100000")))
        self.assertEqual(got, 413)
        self.assertFalse({n for n, _ in fields} & set(CORS_FIELDS), fields)


class GatewayWithoutCorsTest(LiveGateway, unittest.TestCase):
    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return base_config(http={"maxBodyBytes": 4096})

    def test_no_cors_fields_unless_configured(self) -> None:
        got, fields, _ = _fields(_exchange(self.gw.port, _head(
            "POST /v1/chat/completions HTTP/1.1", O, "Content-Length: 100000")))
        self.assertEqual(got, 413)
        self.assertFalse({n for n, _ in fields} & set(CORS_FIELDS), fields)


if __name__ == "__main__":
    unittest.main()
