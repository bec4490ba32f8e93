"""Chat completions over SSE: a run's events as ``chat.completion.chunk`` bytes, in bounded pieces.

Owns the streamed shapes of ``POST /v1/chat/completions``. A text reply
takes the fast path: the JSON around a delta never changes within a
completion, so each delta costs one string escape. A mixed reply (reasoning,
tool calls, log probabilities, several choices) takes ``ChunkWriter.mixed``:
``delta.reasoning_content``, ``delta.tool_calls[{index, id, type, function}]``
fragments (id, type and name on a call's first fragment only; the legacy
``delta.function_call`` for a request that used ``functions``),
``choices[].logprobs`` with the delta they came with, ``delta.refusal`` for
the text after a ``Refusing`` marker (a refusal opens with ``"refusal": ""``
beside the role, as OpenAI streams it), ``delta.annotations`` with the delta
before them, and each further choice with its own index. ``openai.py`` owns the endpoint; the shapes of content
are ``chat_content``'s.

Every event has an SSE ``id`` ``<completion id>:<seq>``: seq is the number of
characters of answer text written up to and including the event (0 for the
role chunk), then the length of the text + 1 for the finish chunk (or the
error event), + 2 for the usage chunk, + 3 for ``[DONE]``. A mixed reply
counts output units instead (``idempotency.output_units``: reasoning, tool
calls, log probabilities and further choices count too), so each of its
events has an id of its own, written ``u<seq>`` once the reply is mixed (its
text before that counted the same either way). It does not depend on how the reply was cut
into chunks, so a stream resumed after seq N (live, or rebuilt from the
transcript after a restart) goes on exactly where the client stopped
(``resumed_body``).
"""

from __future__ import annotations

import asyncio
import json
import operator
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

from .. import __version__, compact_json
from ..agents.events import Delta, Ended, Failed, Refusing, Started, Subscription
from ..agents.runtime import Run
from ..agents.types import (
    AgentResult, Annotations, ChoiceEvent, Finish, Logprobs, ReasoningDelta, TextDelta, ToolCallDelta,
)
from ..errors import RunError, RunTimedOut, UpstreamRejected, http_status
from ..net import sse
from ..net.routes import error_body
from ..agents.idempotency import output_units, rebuilt_units
from .chat_content import annotation_object, finish_of, logprobs_object

__all__ = ["ChunkWriter", "first_output", "has_output", "sse_body", "resumed_body", "error_code", "error_param", "PIECE_BYTES", "SYSTEM_FINGERPRINT"]

SYSTEM_FINGERPRINT: Final = f"equabot-gw-{__version__}"
# A str as a JSON string literal: the C function json.dumps ends up calling,
# called directly (json.dumps(str) adds two Python frames per delta).
_escape_json_string: Final = json.encoder.encode_basestring_ascii
_dumps: Final = compact_json.dumps


def error_code(exc: RunError) -> str:
    """The OpenAI error ``code`` of a failed run: the upstream's own when its status is passed
    on (400, 429) and it sent one, else the run's reason, with a timeout told apart."""
    if type(exc) is UpstreamRejected and exc.code is not None and _passed_on(exc):
        return exc.code
    return "run_timeout" if isinstance(exc, RunTimedOut) else exc.reason


def error_param(exc: RunError) -> str | None:
    """The OpenAI error ``param`` of a failed run: the upstream's own when its status is passed
    on (400, 429), else None."""
    return exc.param if type(exc) is UpstreamRejected and _passed_on(exc) else None


def _passed_on(exc: UpstreamRejected) -> bool:
    # Only an answer about the client's request (400, 429) keeps the upstream's
    # fields; a 401 or 5xx is the gateway's problem (502), and "invalid_api_key"
    # would wrongly tell the client its own key is bad.
    return http_status(exc) == exc.upstream_status


async def first_output(subscription: Subscription, hold: float | None = None) -> list[Any]:
    """Events up to and including the first output (any event but ``Started``) or the terminal one.

    With ``hold`` (seconds), the events so far (perhaps none) once that long
    passed without either: a door holds its response head while it waits
    here, so that a run failing at once gets a real status, but never longer
    than a keep-alive interval (a queued run, or a model slow to its first
    token, would otherwise leave clients and proxies without a byte).
    """
    events: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = None if hold is None else loop.time() + hold
    while True:
        wait = None if deadline is None else deadline - loop.time()
        if wait is not None and wait <= 0:
            return events
        batch = await subscription.next_batch(wait)
        if batch is None:
            return events
        events.extend(batch)
        if any(type(e) is not Started for e in batch):
            return events


def has_output(events: list[Any]) -> bool:
    """Whether ``first_output`` found the first output (or the end), rather than its hold ending."""
    return any(type(e) is not Started for e in events)


async def sse_body(run: Run, subscription: Subscription, first: list[Any],
                   chunks: ChunkWriter) -> AsyncIterator[bytes]:
    """The stream of a new run (or one joined from its start). The client's claim on
    the run is released by the response's ``on_close``, which runs however it ends."""
    # Pieces are yielded one by one, so that the server can wait for a slow
    # client between them (and the events of a batch are turned into bytes
    # only as the client takes them).
    log = run.events
    if not has_output(first):
        # The head went out before the first output (``first_output``'s hold): the
        # server sends keep-alive comments until it comes, then the role chunk with it.
        first = first + await first_output(subscription)
    for piece in chunks.mixed(first, role=True) if log.mixed else chunks.pieces(first, role=True):
        yield piece
    while not chunks.finished:
        batch = await subscription.next_batch()
        if batch is None:
            break
        # Read after the batch was taken: a log still unmixed now held text alone then.
        if log.mixed:
            for piece in chunks.mixed(batch):
                yield piece
            continue
        # The usual batch of a client that keeps up: a few deltas, one piece.
        piece = chunks.piece(batch) if len(batch) <= _SMALL_BATCH_DELTAS else None
        if piece is not None:
            yield piece
            continue
        for piece in chunks.pieces(batch):
            yield piece
    yield chunks.done()


_TEXT_KINDS: Final = frozenset({Started, Delta, Ended, Failed})


async def resumed_body(batches: AsyncIterator[list[Any]], chunks: ChunkWriter, role: bool
                       ) -> AsyncIterator[bytes]:
    """The stream of a run replayed or resumed: ``batches`` as ``events_after`` positions
    them (``chunks`` made with the same position), after the role chunk if ``role``."""
    try:
        if role:
            yield chunks.role()
        async for batch in batches:
            mixed = chunks.units or any(type(event) not in _TEXT_KINDS for event in batch)
            for piece in chunks.mixed(batch) if mixed else chunks.pieces(batch):
                yield piece
        yield chunks.done()
    finally:
        await batches.aclose()      # type: ignore[attr-defined]


# One piece of an SSE body is at most this many bytes; the text of one chunk at
# most _CHUNK_TEXT_CHARS characters (escaped as ASCII, 12 bytes each at worst:
# a chunk stays under 50 KiB with its ~200 bytes of JSON around the text).
PIECE_BYTES: Final = 64 * 1024
# Digits of the widest seq: a reply is bounded by maxReplyBytes, far below 10**15 characters.
_MAX_SEQ_DIGITS: Final = 15
_CHUNK_TEXT_CHARS: Final = 4096
_text: Final = operator.attrgetter("text")
# After the stream's first batch, a batch of more deltas than this means the
# client did not keep up: its deltas are joined from the start.
_SMALL_BATCH_DELTAS: Final = 16


class ChunkWriter:
    """SSE bytes of ``chat.completion.chunk`` objects for one completion, in bounded pieces.

    The JSON around a delta's text never changes within a completion, so it
    is built once and each delta costs one string escape and a concatenation
    (this is what carries the streaming benchmark past 100k events/s).

    ``pieces`` turns a batch of run events into pieces of at most
    ``PIECE_BYTES``. A client that keeps up gets one chunk per delta: each
    batch then holds a few deltas (the first batch of a stream any number,
    up to one piece). Deltas that piled up while the client was not reading
    came faster than they could be sent: they are joined into chunks of up
    to ``_CHUNK_TEXT_CHARS`` characters (a million one-letter words stream
    as ~2 MiB of chunks, not 200 MiB).
    """

    def __init__(self, completion_id: str, model_name: str, include_usage: bool, legacy: bool = False,
                 created: float | None = None, after: int | None = None, mixed: bool = False) -> None:
        self.include_usage = include_usage
        self.legacy = legacy                # the request used ``functions``: answer in that shape
        self.finished = False
        # Every event's id is "<completion id>:<seq>" (see the module's docstring);
        # ``sent`` is the seq so far: characters of answer text written.
        self.sent = after or 0
        self._skip = -1 if after is None else after     # a resumed stream: events up to this seq were had
        self._id = f"id: {completion_id}:"
        self._choices_seen = {0}            # choices whose first chunk (with the role) went out
        self._refusing: set[int] = set()    # choices whose text is now their refusal
        self.units = mixed                  # a mixed reply: ids "u<seq>", seqs count output units
        self._first_batch = True
        self.head = _dumps({"id": completion_id, "object": "chat.completion.chunk",
                            "created": int(time.time() if created is None else created), "model": model_name,
                            "system_fingerprint": SYSTEM_FINGERPRINT})[:-1]
        tail = ',"usage":null}' if include_usage else "}"
        self._delta_prefix = (f'\ndata: {self.head},"choices":[{{"index":0,"delta":{{"content":')
        self._delta_suffix = f'}},"logprobs":null,"finish_reason":null}}]{tail}\n\n'
        # Bytes a delta chunk adds besides its escaped (ASCII) text: exact but
        # for the seq (counted at its widest), the model name may be non-ASCII.
        self._delta_frame_bytes = len((self._id + self._delta_prefix + self._delta_suffix).encode()) \
            + _MAX_SEQ_DIGITS
        self._tail = tail
        self._role_bytes_value = self.role()
        self._role = self._role_bytes_value.decode()
        self._role_bytes = len(self._role_bytes_value)

    def _mark(self, seq: int) -> str:
        """A seq as an id carries it: ``u<seq>`` when it counts output units (0 is 0 either way)."""
        return f"u{seq}" if self.units and seq else str(seq)

    def _choice(self, delta: str, finish: str | None, seq: int = 0) -> bytes:
        finish_json = "null" if finish is None else json.dumps(finish)
        return (f'{self._id}{self._mark(seq)}\ndata: {self.head},"choices":[{{"index":0,"delta":{delta},"logprobs":null,'
                f'"finish_reason":{finish_json}}}]{self._tail}\n\n').encode()

    def role(self) -> bytes:
        """The stream's first event (seq 0): the assistant's role."""
        return self._choice('{"role":"assistant","content":""}', None)

    def done(self) -> bytes:
        """The terminator ``data: [DONE]``, with its id (none if a resumed client had it)."""
        seq = self.sent + 3
        return f"{self._id}{self._mark(seq)}\n".encode() + sse.DONE if seq > self._skip else b""

    def piece(self, events: list[Any], role: bool = False) -> bytes | None:
        """All of ``events`` (after the role chunk if ``role``) as one piece of one chunk
        per delta, if it fits ``PIECE_BYTES``; None if not (``pieces`` then cuts them).

        The usual batch, and the fast path: one list comprehension, no
        accounting per delta (a batch that could not fit is not even built).
        """
        # A batch is [Started] Delta* [Ended | Failed]: the log's order.
        first = 1 if events and type(events[0]) is Started else 0
        end = events[-1] if events and (type(events[-1]) is Ended or type(events[-1]) is Failed) else None
        deltas = events[first:len(events) - 1 if end is not None else len(events)]
        frame = self._delta_frame_bytes
        # Escaping makes at most 12 bytes of a character: a batch surely past a
        # piece (and then possibly huge) is left to ``pieces``.
        if sum(map(len, map(_text, deltas))) * 12 + len(deltas) * frame > 4 * PIECE_BYTES:
            return None
        prefix, suffix, escape, ident = self._delta_prefix, self._delta_suffix, _escape_json_string, self._id
        seq = start = self.sent
        out = []
        for delta in deltas:
            text = delta.text
            seq += len(text)
            out.append(f"{ident}{seq}{prefix}{escape(text)}{suffix}")
        self.sent = seq
        tail = b"" if end is None else \
            self._end(end.result) if type(end) is Ended else self._error(end)
        data = (self._role_bytes_value if role else b"") + "".join(out).encode() + tail
        if len(data) > PIECE_BYTES:
            self.sent = start
            return None
        if end is not None:
            self.finished = True
        return data

    def pieces(self, events: list[Any], role: bool = False) -> Iterator[bytes]:
        """The SSE bytes of ``events`` (after the role chunk if ``role``), in pieces of
        at most ``PIECE_BYTES``; sets ``finished`` at the terminal event."""
        # One chunk per delta while the client keeps up, and in the first piece of a stream.
        one_each = self._first_batch or len(events) <= _SMALL_BATCH_DELTAS
        self._first_batch = False
        if one_each:
            data = self.piece(events, role)
            if data is not None:
                yield data
                return
        prefix, suffix, escape, ident = self._delta_prefix, self._delta_suffix, _escape_json_string, self._id
        frame = self._delta_frame_bytes
        out: list[str] = [self._role] if role else []
        size = self._role_bytes if role else 0
        joining: list[str] = []          # then: deltas waiting to be joined into one chunk
        joined = 0                       # their characters
        for event in events:
            if type(event) is Delta:
                text = event.text
                if one_each:
                    if len(text) <= _CHUNK_TEXT_CHARS:
                        chunk = escape(text)
                        if size + frame + len(chunk) <= PIECE_BYTES:
                            self.sent += len(text)
                            out.append(f"{ident}{self.sent}{prefix}{chunk}{suffix}")
                            size += frame + len(chunk)
                            continue
                    # More than a piece in this batch: its deltas came faster than
                    # they can be sent, so from here on they are joined.
                    one_each = False
                joining.append(text)
                joined += len(text)
                if joined < _CHUNK_TEXT_CHARS:
                    continue
                text = "".join(joining)
                cut = len(text) - len(text) % _CHUNK_TEXT_CHARS
                joining = [text[cut:]] if cut < len(text) else []
                joined = len(text) - cut
                for start in range(0, cut, _CHUNK_TEXT_CHARS):
                    part = text[start:start + _CHUNK_TEXT_CHARS]
                    chunk = escape(part)
                    if size + frame + len(chunk) > PIECE_BYTES:
                        yield "".join(out).encode()
                        out, size = [], 0
                    self.sent += len(part)
                    out.append(f"{ident}{self.sent}{prefix}{chunk}{suffix}")
                    size += frame + len(chunk)
            elif type(event) is Ended or type(event) is Failed:
                self.finished = True
                tail = self._end(event.result) if type(event) is Ended else self._error(event)
                break
        else:
            tail = b""
        if joining:
            part = "".join(joining)
            chunk = escape(part)
            if size + frame + len(chunk) > PIECE_BYTES:
                yield "".join(out).encode()
                out, size = [], 0
            self.sent += len(part)
            out.append(f"{ident}{self.sent}{prefix}{chunk}{suffix}")
            size += frame + len(chunk)
        if size + len(tail) > PIECE_BYTES:
            yield "".join(out).encode()
            out = []
        if out or tail:
            yield "".join(out).encode() + tail

    def _end(self, result: AgentResult) -> bytes:
        # Terminal events follow the output: seq = its length + 1, the usage + 2, [DONE] + 3
        # (a text reply's length in characters, a mixed one's in output units).
        # (a mixed reply: at least the units sent, should its log have counted more than its result)
        seq = self.sent = max(self.sent, rebuilt_units(result)) if self.units else len(result.text)
        data = self._choice("{}", finish_of(result.finish_reason, self.legacy), seq + 1) \
            if seq + 1 > self._skip else b""
        if self.include_usage and seq + 2 > self._skip:
            data += (f'{self._id}{self._mark(seq + 2)}\ndata: {self.head},"choices":[],'
                     f'"usage":{_dumps(result.usage.as_dict())}}}\n\n').encode()
        return data

    def _error(self, event: Failed) -> bytes:
        # An error after the stream began: a final event with an error object (then [DONE]).
        seq = self.sent = self.sent if self.units else len(event.partial) or (self.sent if self._skip < 0 else 0)
        if seq + 1 <= self._skip:
            return b""
        return f"{self._id}{self._mark(seq + 1)}\n".encode() + sse.data_event(
            error_body(http_status(event.error), str(event.error), code=error_code(event.error),
                       param=error_param(event.error)).decode())

    # -- the mixed path: reasoning, tool calls, logprobs, several choices --------------

    def mixed(self, events: list[Any], role: bool = False) -> Iterator[bytes]:
        """The SSE bytes of a batch of a mixed log, in pieces of at most ``PIECE_BYTES``
        (one chunk can be larger only when one logprobs entry is); sets ``finished``
        at the terminal event. ``role``: the batch opens the stream (the role chunk's
        content is null when the reply does not open with text, as OpenAI sends it)."""
        self._first_batch = False
        self.units = True
        out: list[bytes] = []
        size = 0
        if role:
            opening = next((e for e in events if type(e) is not Started), None)
            out.append(self._role_bytes_value if type(opening) is Delta
                       else self._choice('{"role":"assistant","content":null,"refusal":""}', None)
                       if type(opening) is Refusing
                       else self._choice('{"role":"assistant","content":null}', None))
            size = len(out[0])
        for chunk in self._mixed_chunks(events):
            if size + len(chunk) > PIECE_BYTES and out:
                yield b"".join(out)
                out, size = [], 0
            out.append(chunk)
            size += len(chunk)
        if out:
            yield b"".join(out)

    def _mixed_chunks(self, events: list[Any]) -> Iterator[bytes]:
        # Each chunk's seq adds the output units it carries (``output_units``), so every
        # event has an id of its own and a stream resumes exactly after any of them.
        # A choice's last delta waits one event: the logprobs that came with it join its chunk.
        waiting: dict[str, Any] | None = None
        waiting_units = 0
        for event in events:
            kind = type(event)
            index = 0
            if kind is ChoiceEvent:
                index, event = event.index, event.event
                kind = type(event)
            if kind is Logprobs:
                entries = list(event.content)
                if waiting is not None and waiting["index"] == index and waiting["logprobs"] is None:
                    waiting["logprobs"] = logprobs_object(entries[:_LOGPROBS_PER_CHUNK])
                    waiting_units += len(entries[:_LOGPROBS_PER_CHUNK])
                    entries = entries[_LOGPROBS_PER_CHUNK:]
                for start in range(0, len(entries), _LOGPROBS_PER_CHUNK):
                    if waiting is not None:
                        yield self._chunk(waiting, waiting_units)
                        waiting = None
                    group = entries[start:start + _LOGPROBS_PER_CHUNK]
                    yield self._chunk(self._delta(index, {}, group), len(group))
                continue
            if kind is Refusing:            # no chunk of its own: it carries no text
                self._refusing.add(index)
                continue
            if kind is Annotations:
                # They move no position (no output units): they ride with the delta before
                # them, or, with none waiting, go in a chunk whose id repeats the last one's.
                for entries in _citation_groups(event.citations):
                    if waiting is not None and waiting["index"] == index and "annotations" not in waiting["delta"]:
                        waiting["delta"]["annotations"] = entries
                        continue
                    if waiting is not None:
                        yield self._chunk(waiting, waiting_units)
                        waiting = None
                    yield self._chunk(self._delta(index, {"annotations": entries}), 0)
                continue
            if waiting is not None:
                yield self._chunk(waiting, waiting_units)
                waiting = None
            if kind is TextDelta or kind is ReasoningDelta:
                key = "reasoning_content" if kind is ReasoningDelta else \
                    "refusal" if index in self._refusing else "content"
                text = event.text
                for start in range(0, len(text), _CHUNK_TEXT_CHARS):
                    if waiting is not None:
                        yield self._chunk(waiting, waiting_units)
                    piece = text[start:start + _CHUNK_TEXT_CHARS]
                    waiting, waiting_units = self._delta(index, {key: piece}), len(piece)
            elif kind is ToolCallDelta:
                sent = self.sent
                for choice, units in self._call_deltas(index, event):
                    yield self._chunk(choice, units)
                self.sent = sent + output_units(event)      # a legacy answer's further calls: not sent
            elif kind is Finish:
                yield self._chunk({"index": index, "delta": {}, "logprobs": None,
                                   "finish_reason": finish_of(event.reason, self.legacy)}, 1)
            elif kind is Ended or kind is Failed:
                self.finished = True
                yield self._end(event.result) if kind is Ended else self._error(event)
                return
        if waiting is not None:
            yield self._chunk(waiting, waiting_units)

    def _delta(self, index: int, delta: dict[str, Any], logprobs: list[Any] | None = None) -> dict[str, Any]:
        """A choice object; a further choice's first one says its role."""
        if index not in self._choices_seen:
            self._choices_seen.add(index)
            delta = {"role": "assistant", **delta}
        return {"index": index, "delta": delta, "logprobs": logprobs_object(logprobs), "finish_reason": None}

    def _call_deltas(self, index: int, event: ToolCallDelta) -> Iterator[tuple[dict[str, Any], int]]:
        """The choice objects of one tool-call fragment (a long one cut into several), each
        with the output units it carries (its first: the id and name as one)."""
        arguments = event.arguments
        header = event.id is not None or event.name is not None
        for start in range(0, max(len(arguments), 1), _CHUNK_TEXT_CHARS):
            piece = arguments[start:start + _CHUNK_TEXT_CHARS]
            first = start == 0
            units = len(piece) + (header if first else 0)
            if self.legacy:
                if event.index != 0:
                    return          # a legacy answer holds one call: the request asked for one
                call: dict[str, Any] = {"arguments": piece}
                if first and event.name is not None:
                    call = {"name": event.name, "arguments": piece}
                yield self._delta(index, {"function_call": call}), units
                continue
            fragment: dict[str, Any] = {"index": event.index}
            if first and event.id is not None:
                fragment["id"] = event.id
                fragment["type"] = "function"
            fragment["function"] = {"name": event.name, "arguments": piece} if first and event.name is not None \
                else {"arguments": piece}
            yield self._delta(index, {"tool_calls": [fragment]}), units

    def _chunk(self, choice: dict[str, Any], units: int) -> bytes:
        self.sent += units
        return f'{self._id}u{self.sent}\ndata: {self.head},"choices":[{_ascii_json(choice)}]{self._tail}\n\n'.encode()


# Logprobs entries per chunk of a mixed stream (a compacted run of them is cut).
_LOGPROBS_PER_CHUNK: Final = 64
# Characters of citations (URLs and titles) per chunk: escaped, one chunk
# stays within a piece (a single citation is bounded by its provider).
_CITATION_CHARS_PER_CHUNK: Final = 8192


def _citation_groups(citations: tuple[Any, ...]) -> Iterator[list[dict[str, Any]]]:
    """``annotations`` entries of ``citations``, in groups of about ``_CITATION_CHARS_PER_CHUNK``."""
    group: list[dict[str, Any]] = []
    chars = 0
    for citation in citations:
        size = len(citation.url) + len(citation.title)
        if group and chars + size > _CITATION_CHARS_PER_CHUNK:
            yield group
            group, chars = [], 0
        group.append(annotation_object(citation))
        chars += size
    if group:
        yield group
_ascii_json: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
