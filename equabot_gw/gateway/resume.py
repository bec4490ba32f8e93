"""Idempotency and resumable streams at the HTTP doors: headers, ids, claims, resumed streams.

Owns the wire side of the runtime's idempotency keys (``agents.idempotency``)
for every HTTP door: the ``Idempotency-Key`` header (alias
``x-equabot-idempotency-key``) and the digest of a request, the
``x-equabot-idempotent-replay`` answer header, completion ids (the run id in
OpenAI's form, so that any id leads back to its run), ``Last-Event-ID``,
the disconnect policy (``Claims.claim``: a request without a key aborts its
run when its client leaves; with one, the run goes on, and is aborted
``resumeGraceSeconds`` after its last client left only when
``abortUnclaimedRuns`` is set), and ``GET /v1/chat/completions/{id}/events``.
The chat-completions shapes stay in ``chat_stream``; another door
(``/v1/responses``) uses the same pieces with its own writer.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, NamedTuple

from ..agents import idempotency
from ..agents import runtime as agent_runtime
from ..agents.runtime import Run, RunRecord, Runtime
from ..errors import ApiError
from ..net import sse
from ..net.routes import HTTPRequest, StreamingResponse, query_fields
from . import chat_stream

__all__ = ["KEY_HEADERS", "REPLAY_HEADER", "idempotency_key", "body_digest", "completion_id", "run_id_of",
           "last_event_seq", "last_event_position", "Position", "Claims", "no_claim", "past_the_end_refused"]

# The IETF httpapi draft's header first, then ours under each gateway header prefix
# (the first one sent wins).
KEY_HEADERS: Final = ("idempotency-key", "x-equabot-idempotency-key", "x-openclaw-idempotency-key",
                      "x-clawdbot-idempotency-key")
REPLAY_HEADER: Final = "x-equabot-idempotent-replay"
# Patterns are compiled by ``re`` on first use (and cached there), not at start-up.
# A key is 1-255 visible ASCII characters (what Stripe and the draft's examples use).
_KEY_RE: Final = r"[\x21-\x7e]{1,255}"
# Headers that change what a request asks besides its body: digested with it.
_ROUTING_HEADERS: Final = ("agent-id", "session-key", "model", "history")
# A body larger than this is digested in a worker thread, off the event loop.
_THREAD_DIGEST_BYTES: Final = 1 << 20
_SEQ_RE: Final = r"[0-9]{1,15}"
_COMPLETION_PREFIX: Final = "chatcmpl-"


def idempotency_key(headers: Any) -> str | None:
    """The request's idempotency key, or None; 400 ``invalid_idempotency_key`` for a bad one,
    or for a header sent twice (one key per request: which one a client meant is unknown)."""
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value is not None:
            if not re.fullmatch(_KEY_RE, value) or len(headers.get_all(name)) > 1:
                raise ApiError(400, f"Invalid {name} header: expected one value of 1-255 visible ASCII "
                                    f"characters.", code="invalid_idempotency_key", param=name)
            return value
    return None


async def body_digest(body: dict[str, Any], headers: Any, size: int = 0) -> str:
    """The digest a keyed request is compared by: its JSON body (canonical: key order
    and spacing do not count) and the gateway headers that route it."""
    from .openai import gateway_header        # openai imports this module
    routing = {name: gateway_header(headers, name) for name in _ROUTING_HEADERS}
    value = {"body": body, "headers": {k: v for k, v in routing.items() if v is not None}}
    if size > _THREAD_DIGEST_BYTES:
        return await asyncio.to_thread(idempotency.digest_of, value)
    return idempotency.digest_of(value)


def completion_id(run_id: str) -> str:
    """``chatcmpl-<node>-<hex>`` of ``run_<node>_<hex>`` (``chatcmpl-<hex>`` of ``run_<hex>``)."""
    node, sep, tail = run_id[4:].rpartition("_")
    return f"{_COMPLETION_PREFIX}{node}-{tail}" if sep else f"{_COMPLETION_PREFIX}{tail}"


def run_id_of(public_id: str) -> str | None:
    """The run id of a completion id; None if ``public_id`` is not one."""
    if not public_id.startswith(_COMPLETION_PREFIX):
        return None
    node, sep, tail = public_id[len(_COMPLETION_PREFIX):].rpartition("-")
    return f"run_{node}_{tail}" if sep else f"run_{tail}"


class Position(NamedTuple):
    """Where a client stopped in a chat stream: the seq of its last event, and whether that
    seq counts output units (``u<seq>``, the ids of a mixed reply) or answer characters."""

    seq: int
    units: bool = False


def last_event_position(headers: Any, public_id: str, query: str | None = None) -> Position | None:
    """The position of ``Last-Event-ID: <public_id>:<seq>`` (or ``:u<seq>``), else of the query's
    ``after=<seq>`` when ``query`` is given; None without either. 400 if malformed."""
    value = headers.get("last-event-id")
    if value is None:
        after = query_fields(query).get("after") if query is not None else None
        if after is None:
            return None
        units = after.startswith("u")
        if not re.fullmatch(_SEQ_RE, after[units:]):
            raise ApiError(400, "Invalid 'after': expected a seq (digits, or u and digits).",
                           code="invalid_value", param="after")
        return Position(int(after[units:]), units)
    stream, _, seq = value.strip().rpartition(":")
    units = seq.startswith("u")
    if stream != public_id or not re.fullmatch(_SEQ_RE, seq[units:]):
        raise ApiError(400, f"Invalid Last-Event-ID {value[:120]!r}: expected '{public_id}:<seq>', an id "
                            f"of this request's stream (resend the same request with the same "
                            f"Idempotency-Key).", code="invalid_last_event_id", param="Last-Event-ID")
    return Position(int(seq[units:]), units)


def last_event_seq(headers: Any, public_id: str) -> int | None:
    """The seq of ``Last-Event-ID: <public_id>:<seq>``, or None without the header;
    400 ``invalid_last_event_id`` if it is malformed or names another stream."""
    value = headers.get("last-event-id")
    if value is None:
        return None
    stream, _, seq = value.strip().rpartition(":")
    if stream != public_id or not re.fullmatch(_SEQ_RE, seq):
        raise ApiError(400, f"Invalid Last-Event-ID {value[:120]!r}: expected '{public_id}:<seq>', an id "
                            f"of this request's stream (resend the same request with the same "
                            f"Idempotency-Key).", code="invalid_last_event_id", param="Last-Event-ID")
    return int(seq)


class Claims:
    """The clients of keyed runs, and the streams that resume them, for one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        http = runtime.config.gateway.http
        self.grace = http.resume_grace
        self.abort_unclaimed = http.abort_unclaimed_runs

    def claim(self, run: Run | RunRecord, keep: bool) -> Callable[[], None]:
        """A client takes ``run``'s answer; call the result exactly once when it is done or gone.

        Without a key (``keep`` false) the run is aborted if it is still going
        then (the client left); with one it goes on (see the module's policy).
        """
        if not keep:
            return functools.partial(_abort_if_running, run)
        keys = self.runtime.keys
        keys.hold(run.id)
        return functools.partial(self._leave, run)

    def _leave(self, run: Run | RunRecord) -> None:
        abort = functools.partial(run.abort, "unclaimed") if self.abort_unclaimed and not run.done else None
        self.runtime.keys.release(run.id, abort, self.grace)

    def resumed(self, run: Run | RunRecord, public_id: str, model_name: str, include_usage: bool,
                legacy: bool, after: Position | None, leave: Callable[[], None],
                extra: list[tuple[str, str]]) -> StreamingResponse:
        """The stream of ``run`` after ``after`` (None: all of it, role chunk first).

        A run still in flight is read from its log, exactly, whatever its output.
        A finished run's record rebuilds its reply: a text reply whole or after
        any position; a mixed one (reasoning, tool calls, log probabilities,
        several choices) only whole, since the record keeps neither the order
        its output came in nor, past a size or a restart, all of it: after any
        other position 409 ``resume_unavailable`` (the request resent without
        ``Last-Event-ID`` replays what was recorded). A position past the
        ``[DONE]`` of a finished text reply was never sent: 400
        ``invalid_last_event_id``, as an id of another stream is.
        """
        seq = after.seq if after is not None else 0
        if type(run) is Run:
            mixed = run.events.mixed
            batches = idempotency.output_after(run.subscribe(), seq)
        else:
            result = run.result
            mixed = run.mixed or (result is not None and bool(result.reasoning or result.tool_calls
                                                              or result.logprobs or result.extra_choices))
            if seq and (mixed or after.units):        # type: ignore[union-attr]
                leave()
                raise ApiError(409, "This reply (with reasoning, tool calls, log probabilities or several "
                                    "choices) finished before its stream was resumed, and can only be "
                                    "replayed whole: resend the request without Last-Event-ID.",
                               code="resume_unavailable", param="Last-Event-ID")
            last = _last_seq(run)
            if seq > last:
                leave()
                raise ApiError(400, f"Invalid Last-Event-ID: this stream ended at seq {last} (its [DONE]); "
                                    f"seq {seq} was never sent.", code="invalid_last_event_id",
                               param="Last-Event-ID")
            batches = idempotency.events_after(run.subscribe(), seq) if seq else \
                idempotency.output_after(run.subscribe(), 0)
        chunks = chat_stream.ChunkWriter(public_id, model_name, include_usage, legacy, run.created_at,
                                         None if after is None else seq, mixed)
        return StreamingResponse(200, list(sse.HEADERS) + extra,
                                 chat_stream.resumed_body(batches, chunks, after is None),
                                 idle_bytes=sse.KEEPALIVE, idle_interval=sse.KEEPALIVE_INTERVAL, on_close=leave)

    async def events(self, request: HTTPRequest) -> StreamingResponse:
        """``GET /v1/chat/completions/{id}/events``: 404 unless ``id`` is a streamed keyed run's."""
        rest = request.params.get("rest", "")
        public_id, _, tail = rest.partition("/")
        run_id = run_id_of(public_id)
        entry = self.runtime.keys.of_run(run_id) if run_id is not None and tail == "events" else None
        meta = entry.meta if entry is not None else None
        run = await agent_runtime.keyed_run(self.runtime, run_id) if meta is not None and run_id else None
        if run is None or meta is None:
            raise ApiError(404, f"No resumable stream {public_id[:120]!r}: streams of requests with an "
                                f"Idempotency-Key can be resumed while their key is kept.",
                           code="not_found")
        after = last_event_position(request.headers, public_id, request.query or "")
        return self.resumed(run, public_id, str(meta.get("model", "")), bool(meta.get("usage")),
                            bool(meta.get("legacy")), after, self.claim(run, keep=True), [])


def _last_seq(record: RunRecord) -> int:
    """The seq of ``[DONE]`` in the text stream of a finished run (its text + 3), whether the
    record holds its reply or only where it is (read back when streamed)."""
    if record.reply_at is not None:
        return record.reply_chars + 3
    return len(record.result.text if record.result is not None else record.partial) + 3


def no_claim() -> None:
    """The claim of a reader that holds nothing (a settled run, an unkept stream): nothing to give up."""


def _abort_if_running(run: Run | RunRecord) -> None:
    if not run.done:
        run.abort("client disconnected")


async def past_the_end_refused(body: AsyncIterator[bytes], end: Callable[[], int], after: int,
                               leave: Callable[[], None], param: str) -> AsyncIterator[bytes]:
    """``body``, a finished stream's events after position ``after``, once its first piece is
    known to exist (or ``after`` is its last event's position, ``end()`` once ``body`` is
    over); else 400 before any status went out: a position past the end was never sent.
    ``param`` names where the position came from (``Last-Event-ID`` or ``starting_after``)."""
    try:
        first = await anext(body, None)
    except BaseException:
        leave()
        raise
    if first is None and after >= end():
        leave()
        code = "invalid_last_event_id" if param == "Last-Event-ID" else "invalid_value"
        raise ApiError(400, f"Invalid {param}: this stream ended at seq {end() - 1} (its last "
                            f"event); seq {after} was never sent.", code=code, param=param)
    return _then(first, body)


async def _then(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``first`` (None: nothing, ``rest`` is over), then the rest of ``rest``."""
    if first is None:
        return
    try:
        yield first
        async for piece in rest:
            yield piece
    finally:
        await rest.aclose()         # type: ignore[attr-defined]
