"""The conformance kit's core: checks, outcomes, the probing client and the runner.

Owns what every check shares: the ``Check`` registry entry, the outcome of a
check (``Result``: pass / fail / skip, a one-line reason, evidence), the
``Probe`` that talks to the server under test in raw bytes (asyncio streams,
one fresh connection per request; we de-chunk ourselves so framing faults are
seen, not smoothed over), and ``run_battery``, which runs checks one at a
time, each under its own timeout. The checks live in ``checks_http.py`` and
``checks_ws.py``. It must not import the gateway, the runtime or config: the
kit knows the server only through the wire.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import re
import select
import socket
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from .. import __version__, safejson
from ..errors import GatewayError, HTTPProtocolError
from ..net.heads import Headers, parse_chunk_size, parse_response_head
from .jsonschema import Validator

USER_AGENT: Final = f"equabot-conformance/{__version__}"
DEFAULT_HEADER_PREFIX: Final = "x-equabot-"
DEFAULT_TIMEOUT: Final = 30.0           # per check; a real model may take seconds per turn
# After a complete response we wait this long for the close (or stray bytes).
AFTER_RESPONSE_GRACE: Final = 0.25
# The most of one response we keep; a chat reply is far smaller.
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
# How many bytes of offending input a piece of evidence shows.
EVIDENCE_BYTES: Final = 160

_SCHEMAS: Validator | None = None


def schemas() -> Validator:
    """OpenAI's published chat schemas (loaded once)."""
    global _SCHEMAS
    if _SCHEMAS is None:
        _SCHEMAS = Validator.openai()
    return _SCHEMAS


# -- outcomes -------------------------------------------------------------------------

class Status(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


Evidence = dict[str, Any]


class Outcome(Exception):
    """How a check ended, raised or returned by the check: a reason and its evidence."""

    status: Status = Status.PASS

    def __init__(self, reason: str, **evidence: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence: Evidence = {k.replace("_", "-"): v for k, v in evidence.items()}


class Passed(Outcome):
    status = Status.PASS


class Failed(Outcome):
    status = Status.FAIL


class Skipped(Outcome):
    status = Status.SKIP


@dataclass(frozen=True, slots=True)
class Result:
    """One check's outcome as reported."""

    name: str
    ref: str
    status: Status
    reason: str
    evidence: Evidence
    seconds: float


CheckFunction = Callable[["Probe"], Awaitable[Passed]]


@dataclass(frozen=True, slots=True)
class Check:
    """A named check: what it tests (``ref``: a spec line or OpenAI field) and how.

    ``requires`` names checks that must pass first (else this one is skipped);
    ``ws`` checks run only with ``--ws``.
    """

    name: str
    ref: str
    run: CheckFunction
    requires: tuple[str, ...] = ()
    ws: bool = False


def registry(into: list[Check], *, ws: bool = False) -> Callable[..., Callable[[CheckFunction], CheckFunction]]:
    """A decorator factory that appends checks to ``into`` in definition order."""
    def check(name: str, ref: str, requires: tuple[str, ...] = ()) -> Callable[[CheckFunction], CheckFunction]:
        def add(run: CheckFunction) -> CheckFunction:
            into.append(Check(name, ref, run, requires, ws))
            return run
        return add
    return check


def show(data: bytes | str, limit: int = EVIDENCE_BYTES) -> str:
    """Offending bytes (or text) for a report: their repr, cut to ``limit`` bytes (characters)."""
    if len(data) <= limit:
        return repr(data)
    unit = "characters" if isinstance(data, str) else "bytes"
    return f"{data[:limit]!r}… (+{len(data) - limit} {unit})"


def why(exc: OSError) -> str:
    """An OS error in words: "Connection refused", not asyncio's "Connect call failed (…)".

    A TLS failure is named as one, with OpenSSL's reason ("WRONG_VERSION_NUMBER":
    an https:// URL to a plain-HTTP port; "CERTIFICATE_VERIFY_FAILED"): its
    errno is OpenSSL's error code, which ``os.strerror`` would misread as an
    OS error ("Operation not permitted").
    """
    if isinstance(exc, ssl_module.SSLError):
        reason = exc.reason or (exc.args[1] if len(exc.args) > 1 else str(exc))
        if isinstance(exc, ssl_module.SSLCertVerificationError) and exc.verify_message:
            reason = f"{reason}: {exc.verify_message}"
        hint = " (is the port plain HTTP? use http://)" if exc.reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS handshake failed: {reason}{hint}"
    return os.strerror(exc.errno) if exc.errno else str(exc)


# -- the target -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to probe: from the command line's flags."""

    base_url: str
    secure: bool
    host: str
    port: int
    authority: str
    path_prefix: str
    token: str | None
    agent: str | None
    header_prefix: str
    timeout: float
    ws: bool

    @classmethod
    def from_flags(cls, base_url: str, *, token: str | None = None, agent: str | None = None,
                   header_prefix: str | None = None, timeout: float | None = None,
                   ws: bool = False) -> Target:
        """Check and normalise the flags; raises ``ValueError`` naming the bad one."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--base-url must be an http:// or https:// URL, got {base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"--base-url must not have a query or fragment, got {base_url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"--base-url has a bad port: {base_url!r}") from None
        prefix = (header_prefix or DEFAULT_HEADER_PREFIX).lower()
        if not re.fullmatch(r"[a-z0-9-]+", prefix):
            raise ValueError(f"--header-prefix must be letters, digits and '-', got {header_prefix!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"--timeout must be a positive number of seconds, got {timeout!r}")
        return cls(base_url=base_url.rstrip("/"), secure=parts.scheme == "https",
                   host=parts.hostname, port=port, authority=parts.netloc,
                   path_prefix=parts.path.rstrip("/"), token=token or None, agent=agent or None,
                   header_prefix=prefix if prefix.endswith("-") else prefix + "-",
                   timeout=timeout or DEFAULT_TIMEOUT, ws=ws)

    @property
    def brand(self) -> str:
        """The model prefix that goes with the header prefix: ``x-equabot-`` → ``equabot``."""
        return self.header_prefix.removeprefix("x-").strip("-") or "equabot"

    @property
    def model(self) -> str:
        """The ``model`` every plain request sends (spec: ``equabot`` or ``equabot:<agentId>``)."""
        return f"{self.brand}:{self.agent}" if self.agent else self.brand

    def header(self, name: str) -> str:
        """A gateway header name under the prefix: ``agent-id`` → ``x-equabot-agent-id``."""
        return self.header_prefix + name

    def ws_url(self) -> str:
        return f"{'wss' if self.secure else 'ws'}://{self.authority}{self.path_prefix or '/'}"


# -- raw HTTP exchanges ------------------------------------------------------------------

@dataclass(slots=True)
class Exchange:
    """One request and its response as read off the wire.

    ``body`` is de-chunked; ``after`` holds bytes that arrived after the end of
    the message (a server must send none: we asked for ``Connection: close``).
    """

    request_line: str
    status: int
    reason: str
    headers: Headers
    head: bytes
    body: bytes
    chunked: bool
    after: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def media_type(self) -> str:
        return (self.header("content-type") or "").partition(";")[0].strip().lower()

    def summary(self) -> Evidence:
        """The evidence most failures want: status, content type and the start of the body."""
        return {"request": self.request_line, "status": self.status,
                "content-type": self.header("content-type"), "body": show(self.body)}

    def json(self) -> Any:
        """The body as JSON; ``Failed`` when it is not."""
        try:
            return safejson.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Failed(f"the {self.status} body is not JSON ({exc})", **self.summary()) from None


def _dechunk(buf: bytearray, start: int, eof: bool) -> tuple[bytes, int] | None:
    """(body, end offset) of a chunked body at ``buf[start:]``, None if incomplete."""
    body = bytearray()
    pos = start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return _incomplete(eof, "inside a chunk-size line", buf[pos:])
        line = bytes(buf[pos:line_end])
        try:
            size = parse_chunk_size(line)
        except HTTPProtocolError as exc:
            raise Failed(f"bad chunked framing: {exc} (RFC 9112 §7.1)", chunk_line=show(line),
                         at_byte=line_end - start) from None
        pos = line_end + 2
        if size == 0:
            return _trailers(buf, pos, eof, body)
        if len(buf) < pos + size + 2:
            return _incomplete(eof, f"inside a {size}-byte chunk", buf[pos:])
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise Failed("bad chunked framing: chunk data not followed by CRLF (RFC 9112 §7.1)",
                         chunk=show(bytes(buf[pos:pos + size + 2])))
        body += buf[pos:pos + size]
        pos += size + 2


def _trailers(buf: bytearray, pos: int, eof: bool, body: bytearray) -> tuple[bytes, int] | None:
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return _incomplete(eof, "inside the trailer section", buf[pos:])
        if line_end == pos:
            return bytes(body), line_end + 2
        pos = line_end + 2


def _incomplete(eof: bool, where: str, tail: bytes | bytearray) -> None:
    if eof:
        raise Failed(f"the connection closed {where} of a chunked body", last_bytes=show(bytes(tail)))
    return None


def _parse_head(buf: bytearray, eof: bool, request_line: str) -> tuple[Any, bytes, int] | None:
    """(response head, its bytes, where the body starts), skipping 1xx; None if more is needed."""
    start = 0
    while True:
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if eof:
                raise Failed("the connection closed before a complete response head",
                             request=request_line, received=show(bytes(buf[start:])))
            return None
        head = bytes(buf[start:end])
        try:
            response = parse_response_head(head)
        except GatewayError as exc:
            raise Failed(f"malformed response head: {exc}", request=request_line, head=show(head)) from None
        if response.status >= 200 or response.status == 101:
            return response, head, end + 4
        start = end + 4                     # 1xx interim response: the final one follows


def _parse_response(buf: bytearray, eof: bool, method: str, request_line: str) -> tuple[Exchange, int] | None:
    """The response at the start of ``buf`` and where it ends, or None if more is needed.

    Framing per RFC 9112 §6.3: no body for HEAD, 101, 204, 304; chunked if the
    last transfer coding is chunked; else Content-Length; else until close.
    """
    parsed = _parse_head(buf, eof, request_line)
    if parsed is None:
        return None
    response, head, start = parsed
    exchange = Exchange(request_line, response.status, response.reason, response.headers, head, b"", False)
    if method == "HEAD" or response.status in (101, 204, 304):
        return exchange, start
    codings = [t.strip().lower() for v in response.headers.get_all("transfer-encoding") for t in v.split(",")]
    if codings and codings[-1] == "chunked":
        exchange.chunked = True
        body = _dechunk(buf, start, eof)
    elif not codings and response.headers.get("content-length") is not None:
        body = _sized(buf, start, eof, response.headers.get("content-length"), exchange)
    else:
        body = (bytes(buf[start:]), len(buf)) if eof else None
    if body is None:
        return None
    exchange.body = body[0]
    return exchange, body[1]


def _sized(buf: bytearray, start: int, eof: bool, length: str, exchange: Exchange) -> tuple[bytes, int] | None:
    if not length.strip().isdigit():
        raise Failed("bad Content-Length", request=exchange.request_line, content_length=length)
    n = int(length)
    if len(buf) - start < n:
        if eof:
            raise Failed(f"the connection closed after {len(buf) - start} of {n} body bytes",
                         request=exchange.request_line, status=exchange.status)
        return None
    return bytes(buf[start:start + n]), start + n


async def read_response(reader: asyncio.StreamReader, method: str, request_line: str) -> Exchange:
    """Read one response, then any bytes that follow it until close (or a short grace)."""
    buf = bytearray()
    eof = False
    while True:
        parsed = _parse_response(buf, eof, method, request_line)
        if parsed is not None:
            break
        data = await reader.read(65536)
        eof = not data
        buf += data
        if len(buf) > MAX_RESPONSE_BYTES:
            raise Failed(f"the response passed {MAX_RESPONSE_BYTES} bytes", request=request_line)
    exchange, end = parsed
    after = bytearray(buf[end:])
    if not eof:
        try:
            async with asyncio.timeout(AFTER_RESPONSE_GRACE):
                while data := await reader.read(65536):
                    after += data
                    if len(after) > EVIDENCE_BYTES * 4:
                        break
        except (TimeoutError, ConnectionError):
            pass
    exchange.after = bytes(after)
    return exchange


# -- the probe --------------------------------------------------------------------------

_DEFAULT: Final = object()


class Probe:
    """Talks to the server under test; shares expensive exchanges between checks.

    Every request goes on a fresh connection with ``Connection: close``, so the
    bytes after a response are visible. ``run_id`` makes session keys and user
    names unique to one run of the battery.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.run_id = os.urandom(4).hex()
        self.passed: set[str] = set()
        self._shared: dict[str, Any] = {}

    def unique(self, what: str) -> str:
        return f"conformance-{what}-{self.run_id}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        t = self.target
        context = ssl_module.create_default_context() if t.secure else None
        try:
            return await asyncio.open_connection(t.host, t.port, ssl=context)
        except OSError as exc:
            raise Failed(f"cannot connect to {t.host}:{t.port}: {why(exc)}") from None

    def request_head(self, method: str, path: str, headers: Iterable[tuple[str, str]],
                     auth: Any, content_length: int | None) -> bytes:
        t = self.target
        fields = [("Host", t.authority), ("User-Agent", USER_AGENT), ("Accept", "*/*")]
        if auth is _DEFAULT:
            auth = f"Bearer {t.token}" if t.token else None
        if auth is not None:
            fields.append(("Authorization", auth))
        fields += list(headers)
        if content_length is not None:
            fields.append(("Content-Length", str(content_length)))
        fields.append(("Connection", "close"))
        lines = [f"{method} {t.path_prefix}{path} HTTP/1.1"] + [f"{n}: {v}" for n, v in fields]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def http(self, method: str, path: str, *, headers: Iterable[tuple[str, str]] = (),
                   body: bytes | None = None, auth: Any = _DEFAULT) -> Exchange:
        """One request on a fresh connection; ``auth`` None sends no Authorization, a str sends it."""
        head = self.request_head(method, path, headers, auth, None if body is None else len(body))
        reader, writer = await self.open()
        try:
            writer.write(head + (body or b""))
            await writer.drain()
            return await read_response(reader, method, f"{method} {self.target.path_prefix}{path}")
        except ConnectionError as exc:
            raise Failed(f"the connection failed during {method} {self.target.path_prefix}{path}: "
                         f"{exc}") from None
        finally:
            writer.close()

    async def send_large(self, method: str, path: str, size: int,
                         headers: Iterable[tuple[str, str]] = ()) -> tuple[Exchange, int]:
        """Send a ``size``-byte body until the server answers; the answer and the bytes sent.

        Runs a blocking socket in a thread: a server that refuses a body early
        answers and closes, and our next write meets a reset. asyncio's
        transports then close without reading the answer already received;
        a plain socket still returns it from ``recv``.
        """
        head = self.request_head(method, path, headers, _DEFAULT, size)
        return await asyncio.to_thread(self._send_large, head, size, f"{method} {self.target.path_prefix}{path} ({size} bytes)")

    def _send_large(self, head: bytes, size: int, request_line: str) -> tuple[Exchange, int]:
        t = self.target
        try:
            sock = socket.create_connection((t.host, t.port), timeout=t.timeout)
        except OSError as exc:
            raise Failed(f"cannot connect to {t.host}:{t.port}: {why(exc)}") from None
        if t.secure:
            try:
                sock = ssl_module.create_default_context().wrap_socket(sock, server_hostname=t.host)
            except OSError as exc:
                sock.close()
                raise Failed(f"cannot connect to {t.host}:{t.port}: {why(exc)}") from None
        with sock:
            sent = 0
            block = b" " * 65536
            try:
                sock.sendall(head)
                # Stop as soon as the answer starts: the server need not read the rest.
                while sent < size and not select.select([sock], [], [], 0)[0]:
                    sock.sendall(block[:size - sent])
                    sent += min(len(block), size - sent)
            except OSError:
                pass                    # it stopped reading: its answer is what counts
            buf = bytearray()
            try:
                while data := sock.recv(65536):
                    buf += data
                    if _parse_response(buf, False, "POST", request_line) is not None:
                        break
            except TimeoutError:
                raise Failed(f"no answer within {t.timeout:g} s", request=request_line,
                             sent_bytes=sent, received=show(bytes(buf))) from None
            except OSError:
                pass                    # a reset after the answer: parse what arrived
        return _parse_response(buf, True, "POST", request_line)[0], sent

    async def chat(self, fields: dict[str, Any] | None = None, *, message: str = "hi",
                   headers: Iterable[tuple[str, str]] = (), auth: Any = _DEFAULT) -> Exchange:
        """``POST /v1/chat/completions`` with ``model``, one user ``message`` and ``fields``."""
        body = {"model": self.target.model, "messages": [{"role": "user", "content": message}],
                **(fields or {})}
        return await self.http("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                               headers=[("Content-Type", "application/json"), *headers], auth=auth)

    async def reply(self, message: str, fields: dict[str, Any] | None = None,
                    headers: Iterable[tuple[str, str]] = ()) -> str:
        """The assistant's text for one non-streaming turn; ``Failed`` unless a 200 with one."""
        ex = await self.chat(fields, message=message, headers=headers)
        if ex.status != 200:
            raise Failed(f"a completion answered {ex.status}, not 200", **ex.summary())
        try:
            content = ex.json()["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise Failed("a completion has no choices[0].message.content", **ex.summary()) from None
        if not isinstance(content, str):
            raise Failed("choices[0].message.content is not a string", **ex.summary())
        return content

    async def shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        """``factory()``'s result, computed once per run; a failure is shared too."""
        if key not in self._shared:
            try:
                self._shared[key] = await factory()
            except Failed as exc:
                self._shared[key] = exc
            except (TimeoutError, asyncio.CancelledError):
                self._shared[key] = Failed(f"timed out after {self.target.timeout:g} s "
                                           f"(while running the shared exchange {key!r})")
                raise
        value = self._shared[key]
        if isinstance(value, Failed):
            raise Failed(value.reason, **value.evidence)
        return value


# -- echo or model ----------------------------------------------------------------------

ECHO_REPLY: Final = re.compile(r"Echo \(turn (\d+)\): (.*)", re.S)


def echo_turn(reply: str, message: str) -> int | None:
    """The turn number of an echo reply to ``message`` (``Echo (turn N): message``), else None."""
    m = ECHO_REPLY.fullmatch(reply)
    return int(m.group(1)) if m and m.group(2) == message else None


async def is_echo(probe: Probe) -> bool:
    """Whether the agent answers like the built-in echo model (its turn counter is then used)."""
    async def detect() -> bool:
        message = probe.unique("echo-probe")
        return echo_turn(await probe.reply(message), message) is not None
    return await probe.shared("echo", detect)


# -- the runner --------------------------------------------------------------------------

async def run_check(probe: Probe, check: Check) -> Result:
    """Run one check under its own timeout; every way it can end becomes a ``Result``."""
    started = time.monotonic()
    missing = [name for name in check.requires if name not in probe.passed]
    try:
        if check.ws and not probe.target.ws:
            raise Skipped("WebSocket checks run with --ws")
        if missing:
            raise Skipped(f"needs {', '.join(missing)} to pass first")
        async with asyncio.timeout(probe.target.timeout):
            outcome: Outcome = await check.run(probe)
    except Outcome as exc:
        outcome = exc
    except TimeoutError:
        outcome = Failed(f"timed out after {probe.target.timeout:g} s")
    except (OSError, GatewayError) as exc:
        outcome = Failed(f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        # An answer shaped in a way no check foresaw fails that check; it must
        # not end the battery and hide every later result.
        outcome = Failed(f"the answer could not be read: {type(exc).__name__}: {exc}")
    if outcome.status is Status.PASS:
        probe.passed.add(check.name)
    return Result(check.name, check.ref, outcome.status, outcome.reason, outcome.evidence,
                  round(time.monotonic() - started, 3))


async def run_battery(probe: Probe, checks: Iterable[Check],
                      only: Iterable[str] | None = None) -> list[Result]:
    """Run ``checks`` in order (those in ``only`` and what they require, if given)."""
    checks = list(checks)
    wanted = _with_requirements(checks, set(only)) if only is not None else None
    results = []
    for check in checks:
        if wanted is None or check.name in wanted:
            results.append(await run_check(probe, check))
    return results


def _with_requirements(checks: list[Check], names: set[str]) -> set[str]:
    by_name = {c.name: c for c in checks}
    unknown = names - set(by_name)
    if unknown:
        raise ValueError(f"unknown checks: {', '.join(sorted(unknown))}")
    todo, out = list(names), set()
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(by_name[name].requires)
    return out


@dataclass(slots=True)
class Summary:
    """Counts of a finished battery."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    names_failed: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, results: list[Result], seconds: float) -> Summary:
        s = cls(seconds=round(seconds, 3))
        for r in results:
            if r.status is Status.PASS:
                s.passed += 1
            elif r.status is Status.FAIL:
                s.failed += 1
                s.names_failed.append(r.name)
            else:
                s.skipped += 1
        return s
