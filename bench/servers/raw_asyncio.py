"""Peer and ceiling: a bare ``asyncio.Protocol`` answering canned bytes.

Every answer is computed once at start-up (ids and ``created`` fixed), keyed
on the exact request body of each scenario (``workloads.py``): a request costs
one head scan, one dict lookup and one ``write``. Nothing a real server does
(header parsing, routing, JSON, auth) is done, so no Python server on the
same interpreter and event loop can be faster: it is the ceiling. Slow
streams (``equabot:slow``) are dripped with ``call_later``, 50 ms per word.
``--upstream`` turns it into the fast OpenAI-compatible upstream of scenario
4: every ``POST /v1/chat/completions`` gets one canned SSE stream with usage.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import re

import echo
import workloads

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_ID = "chatcmpl-000000000000001"


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"date: {email.utils.formatdate(usegmt=True)}",
             "server: raw-asyncio"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json(status: str, body: bytes) -> bytes:
    return _head(status, [("content-type", "application/json"),
                          ("content-length", str(len(body)))]) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse_events(parsed: echo.Echo) -> list[bytes]:
    chunks = echo.Chunks(parsed, _ID)
    return [chunks.role()] + [chunks.delta(w) for w in parsed.deltas()] + list(chunks.end())


_SSE_HEAD = _head("200 OK", list(echo.SSE_HEADERS) + [("transfer-encoding", "chunked")])


def canned_answers(upstream: bool) -> tuple[dict[tuple[bytes, bytes], object], object]:
    """(answers keyed on (path, body), the answer to any other completion request).

    An answer is ``bytes`` (written at once) or a list of (delay seconds, bytes).
    """
    path = b"/v1/chat/completions"
    answers: dict[tuple[bytes, bytes], object] = {
        (b"/health", b""): _json("200 OK", b'{"status":"ok"}')}
    if upstream:
        reply = echo.Echo("bench-model", True, True,
                          workloads.message_of(workloads.UPSTREAM_WORDS + 3), 12)
        events = _sse_events(reply)
        return answers, _SSE_HEAD + b"".join(_chunk(e) for e in events) + b"0\r\n\r\n"
    for body in (workloads.COMPLETE, workloads.STREAM, workloads.SLOW):
        parsed = echo.parse(body)
        if not parsed.stream:
            answers[(path, body)] = _json("200 OK", echo.completion(parsed, _ID))
            continue
        events = [_chunk(e) for e in _sse_events(parsed)]
        if parsed.delay:
            # Head and role at once, then each word after the delay, then the end.
            words = len(parsed.deltas())
            steps = [(0.0, _SSE_HEAD + events[0])]
            steps += [(parsed.delay, e) for e in events[1:1 + words]]
            steps += [(0.0, b"".join(events[1 + words:]) + b"0\r\n\r\n")]
            answers[(path, body)] = steps
        else:
            answers[(path, body)] = _SSE_HEAD + b"".join(events) + b"0\r\n\r\n"
    not_found = _json("404 Not Found", echo.error_json(404, "no canned answer",
                                                       "invalid_request_error"))
    return answers, not_found


class CannedProtocol(asyncio.Protocol):
    """One connection: requests in order, each answered from the table."""

    answers: dict[tuple[bytes, bytes], object] = {}
    default: object = b""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.dripping: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.dripping is not None:
            self.dripping.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.dripping is None:
            self._answer_all()

    def _answer_all(self) -> None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            path = self.buffer[:end].split(b" ", 2)[1]
            answer = self.answers.get((path, self.buffer[end + 4:total]), self.default)
            self.buffer = self.buffer[total:]
            if isinstance(answer, bytes):
                self.transport.write(answer)
            else:
                self._drip(answer, 0)       # type: ignore[arg-type]
                return

    def _drip(self, steps: list[tuple[float, bytes]], i: int) -> None:
        self.dripping = None
        while i < len(steps):
            delay, data = steps[i]
            if delay:
                self.dripping = asyncio.get_running_loop().call_later(
                    delay, self._send_step, steps, i)
                return
            self.transport.write(data)
            i += 1
        self._answer_all()

    def _send_step(self, steps: list[tuple[float, bytes]], i: int) -> None:
        if not self.transport.is_closing():
            self.transport.write(steps[i][1])
            self._drip(steps, i + 1)


async def serve(port: int, upstream: bool) -> None:
    CannedProtocol.answers, CannedProtocol.default = canned_answers(upstream)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(CannedProtocol, "127.0.0.1", port, backlog=2048,
                                      reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="store_true")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
