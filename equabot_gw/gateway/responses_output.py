"""Responses on the wire ← the content model: Response objects, output items, usage, SSE events.

Owns the shapes ``POST /v1/responses`` answers with. ``Shape`` holds what
one Response object keeps while it runs (id, model, the request fields it
repeats) and builds the object; ``result_output`` / ``partial_output`` turn
a run's outcome into output items (``reasoning``, ``message`` with an
``output_text`` part and its ``url_citation`` annotations, and a ``refusal``
part when the model refused, ``function_call``). ``EventWriter`` turns a run's
events into OpenAI's typed stream — ``event:`` and ``data:`` lines, a
``sequence_number`` from 0 — in OpenAI's order: ``response.created``,
``response.in_progress``, then per item ``output_item.added``
(``content_part.added``), its deltas (``output_text.delta``,
``output_text.annotation.added``, ``refusal.delta``), its ``.done`` events,
then ``response.completed`` / ``response.incomplete`` / ``response.failed``.
A refusal after text closes the text part and opens a second one.
Every event has an SSE ``id`` ``<response id>:<sequence_number>``, and
``sequence_number`` is a position in the response, not a count of events:
each event but a delta moves it by one, each delta by the characters it
carries (its number is that of its last character). So it grows strictly,
it equals the event's index when every delta is one character, and it does
not depend on how the output was cut into deltas: a stream resumed after
number N — live, joined by a slow client, or rebuilt from the stored
Response after a restart (``stored_events``) — goes on exactly after N
(``EventWriter(after=N)``; a delta cut by N starts mid-delta).
Items are opened in the order their output arrives; a text or reasoning item
is done when another item begins, function calls at the end. Pieces of the
stream are at most ``PIECE_BYTES``, each delta at most ``DELTA_CHARS``
characters, and deltas that piled up while the client was not reading are
joined (as the chat-completions writer does). ``responses.py`` owns the
endpoint; ``responses_input.py`` the request side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Final

from .. import compact_json
from ..agents.events import REFUSING, Ended, Failed, Refusing
from ..agents.types import (
    AgentResult, Annotations, Citation, Logprobs, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, Usage,
)
from ..errors import RunAborted, RunError, RunTimedOut, http_status
from .chat_stream import error_code

__all__ = ["Shape", "EventWriter", "result_output", "partial_output", "usage_object", "status_of",
           "error_object", "failed_status", "shape_of", "stored_events", "items_status", "PIECE_BYTES", "DELTA_CHARS"]

PIECE_BYTES: Final = 64 * 1024
DELTA_CHARS: Final = 4096
# A batch of more events than this means the client fell behind: its deltas are joined.
_SMALL_BATCH: Final = 16
_escape: Final = json.encoder.encode_basestring_ascii
_dumps: Final = compact_json.dumps


# -- objects ---------------------------------------------------------------------------------

class Shape:
    """The parts of one Response object that stay while it runs: id, model, the request's echo.

    ``echo`` holds the request fields a Response repeats, in OpenAI's order,
    as ``responses_input.echo_fields`` gives them.
    """

    __slots__ = ("id", "suffix", "created_at", "model", "echo", "logprobs")

    def __init__(self, response_id: str, model: str, echo: dict[str, Any], *, logprobs: bool = False,
                 created_at: int | None = None) -> None:
        self.id = response_id
        self.suffix = response_id.removeprefix("resp_")
        self.created_at = int(time.time()) if created_at is None else created_at
        self.model = model
        self.echo = echo
        self.logprobs = logprobs

    def item_id(self, prefix: str, n: int) -> str:
        """The id of output item ``n``: ``<prefix>_<response suffix>_<n>`` (stable for the stored object)."""
        return f"{prefix}_{self.suffix}_{n:x}"

    def object(self, status: str, output: list[dict[str, Any]], *, usage: Usage | None = None,
               error: dict[str, Any] | None = None, incomplete: str | None = None) -> dict[str, Any]:
        """The Response object in ``status`` with ``output``; ``output_text`` as the SDKs compute it.

        ``usage`` is left out until it is known (OpenAI's schema types it as an
        object, not null, and does not require it).
        """
        echo = self.echo
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "completed_at": int(time.time()) if status == "completed" else None,
            "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": echo["instructions"], "max_output_tokens": echo["max_output_tokens"],
            "model": self.model, "output": output, "output_text": output_text(output),
            **echo["rest"], **({"usage": usage_object(usage)} if usage is not None else {}),
            **echo["tail"],
        }


def output_text(output: list[dict[str, Any]]) -> str:
    """The texts of every ``output_text`` part of the message items, joined (the SDKs' property)."""
    return "".join([part["text"] for item in output if item["type"] == "message"
                    for part in item["content"] if part["type"] == "output_text"])


def usage_object(usage: Usage) -> dict[str, Any]:
    """OpenAI's ResponseUsage; details the provider did not report are 0."""
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens or 0, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def status_of(finish_reason: str) -> tuple[str, str | None]:
    """(status, incomplete reason) of a run that ended with ``finish_reason``."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def failed_status(exc: RunError) -> str:
    """"cancelled" for a run stopped by a client or the cancel endpoint; "failed" otherwise."""
    return "cancelled" if isinstance(exc, RunAborted) and not isinstance(exc, RunTimedOut) else "failed"


# OpenAI's ResponseErrorCode: the only codes a Response's ``error`` may carry.
RESPONSE_ERROR_CODES: Final = frozenset({
    "server_error", "rate_limit_exceeded", "invalid_prompt", "data_residency_mismatch", "bio_policy",
    "vector_store_timeout", "invalid_image", "invalid_image_format", "invalid_base64_image",
    "invalid_image_url", "image_too_large", "image_too_small", "image_parse_error",
    "image_content_policy_violation", "invalid_image_mode", "image_file_too_large",
    "unsupported_image_media_type", "empty_image_file", "failed_to_download_image", "image_file_not_found"})


def error_object(exc: RunError) -> dict[str, Any] | None:
    """The Response's ``error`` ({code, message}, codes of OpenAI's ResponseErrorCode); None when cancelled.

    An upstream's own code (400 and 429 answers) is kept when it is one of those;
    others ("context_length_exceeded") become the status's code.
    """
    if failed_status(exc) == "cancelled":
        return None
    status = http_status(exc)
    code = error_code(exc)
    if code not in RESPONSE_ERROR_CODES:
        code = "rate_limit_exceeded" if status == 429 else "invalid_prompt" if status == 400 else "server_error"
    return {"code": code, "message": str(exc)}


def _logprob(entry: Any) -> dict[str, Any]:
    """An upstream logprobs entry as OpenAI's LogProb (bytes filled in when the upstream sent none)."""
    token = entry.get("token") if type(entry) is dict else None
    token = token if type(token) is str else ""
    logprob = entry.get("logprob") if type(entry) is dict else None
    top = entry.get("top_logprobs") if type(entry) is dict else None
    return {"token": token, "logprob": logprob if type(logprob) in (int, float) else 0.0,
            "bytes": entry["bytes"] if type(entry.get("bytes")) is list else list(token.encode("utf-8", "replace")),
            "top_logprobs": [_top_logprob(t) for t in top if type(t) is dict] if type(top) is list else []}


def _top_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    token = entry.get("token") if type(entry.get("token")) is str else ""
    logprob = entry.get("logprob")
    return {"token": token, "logprob": logprob if type(logprob) in (int, float) else 0.0,
            "bytes": entry["bytes"] if type(entry.get("bytes")) is list else list(token.encode("utf-8", "replace"))}


def citation_object(citation: Citation) -> dict[str, Any]:
    """A citation as the Responses API's ``url_citation`` annotation (its fields flat)."""
    return {"type": "url_citation", "url": citation.url, "start_index": citation.start_index,
            "end_index": citation.end_index, "title": citation.title}


def _text_part(text: str, logprobs: list[Any], citations: list[Citation] | tuple[Citation, ...]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [citation_object(c) for c in citations],
            "logprobs": logprobs}


def _message(item_id: str, text: str | None, logprobs: list[Any], status: str, refusal: str | None = None,
             citations: list[Citation] | tuple[Citation, ...] = ()) -> dict[str, Any]:
    """A message item: an ``output_text`` part unless ``text`` is None, then a ``refusal`` part
    unless ``refusal`` is None."""
    content = [] if text is None else [_text_part(text, logprobs, citations)]
    if refusal is not None:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _reasoning(item_id: str, text: str, signature: str, status: str) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": [],
                            "content": [{"type": "reasoning_text", "text": text}], "status": status}
    if signature:
        item["encrypted_content"] = signature       # the upstream's proof, to replay the reasoning
    return item


def _call(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call.id, "name": call.name,
            "arguments": call.arguments}


def result_output(shape: Shape, result: AgentResult) -> list[dict[str, Any]]:
    """The output items of a finished run: reasoning, the message, then each function call."""
    return partial_output(shape, result.answer(), result.reasoning, result.reasoning_signature, result.tool_calls,
                          result.logprobs if shape.logprobs else None, "completed", result.refusal, result.citations)


def partial_output(shape: Shape, text: str, reasoning: str, signature: str, calls: tuple[ToolCall, ...],
                   logprobs: tuple[Any, ...] | None, status: str, refusal: str = "",
                   citations: tuple[Citation, ...] = ()) -> list[dict[str, Any]]:
    """Output items of a run's text (without its ``refusal``), reasoning and calls; a message for
    text or a refusal, or when there is nothing else (a refusal alone: no ``output_text`` part)."""
    items: list[dict[str, Any]] = []
    if reasoning:
        items.append(_reasoning(shape.item_id("rs", 0), reasoning, signature, status))
    if text or refusal or not calls:
        items.append(_message(shape.item_id("msg", len(items)), text if text or not refusal else None,
                              [_logprob(e) for e in logprobs or ()], status, refusal or None, citations))
    items.extend(_call(shape.item_id("fc", len(items) + n), call, status) for n, call in enumerate(calls))
    return items


# -- the stream -------------------------------------------------------------------------------

class _Item:
    """An output item being streamed: its kind, index, id, the text (or arguments) so far."""

    __slots__ = ("kind", "index", "id", "chunks", "call_id", "name", "logprobs", "signature", "prefix",
                 "has_text", "text_done", "refusal", "refusal_prefix", "citations")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind            # "message", "reasoning" or "function_call"
        self.index = index
        self.id = item_id
        self.chunks: list[str] = []
        self.call_id = ""
        self.name = ""
        self.logprobs: list[Any] = []
        self.signature = ""
        self.prefix = ""            # the JSON of a delta event up to its delta
        # A message's parts: output_text (unless it opened with a refusal), done
        # early when a refusal follows it; the refusal's pieces (None: no refusal).
        self.has_text = True
        self.text_done = False
        self.refusal: list[str] | None = None
        self.refusal_prefix = ""
        self.citations: list[Citation] = []

    def refusal_index(self) -> int:
        """The refusal part's ``content_index``: after the text part, if there is one."""
        return 1 if self.has_text else 0


_DELTA_TYPES: Final = {"message": "response.output_text.delta", "reasoning": "response.reasoning_text.delta",
                       "function_call": "response.function_call_arguments.delta"}


class EventWriter:
    """SSE bytes of one response's typed events, in bounded pieces; ``sequence_number`` from 0.

    ``opening()`` gives ``response.created`` and ``response.in_progress``;
    ``pieces(batch)`` the events of a batch of run events up to its terminal
    one (then ``terminal`` is set); ``closing()`` the items' ``.done``
    events; ``final()`` the Response object; ``ending(final)`` its
    ``response.completed`` (``.incomplete``, ``.failed``) event.

    ``after``: the stream resumes after that ``sequence_number`` (see the
    module's docstring); the events up to it are counted but not written.
    """

    def __init__(self, shape: Shape, run_id: str, after: int | None = None) -> None:
        self.shape = shape
        self.run_id = run_id
        self.seq = 0
        self._skip = -1 if after is None else after
        self._id = f"id: {shape.id}:"
        self.items: list[_Item] = []
        self.terminal: Ended | Failed | None = None
        self._open: _Item | None = None             # the text or reasoning item receiving deltas
        self._calls: dict[int, _Item] = {}          # function calls by the run's call index
        self._refusing = False                      # the reply's text is now its refusal

    # -- whole events --

    def _event(self, kind: str, fields: dict[str, Any]) -> str:
        seq = self.seq
        self.seq += 1
        if seq <= self._skip:
            return ""           # a resumed client had it
        data = _dumps({"type": kind, **fields, "sequence_number": seq})
        return f"{self._id}{seq}\nevent: {kind}\ndata: {data}\n\n"

    async def _event_async(self, kind: str, fields: dict[str, Any], chars: int) -> bytes:
        if chars < compact_json.LARGE_CHARS or self.seq <= self._skip:
            return self._event(kind, fields).encode()
        # A reply of megabytes is escaped in slices of the event loop.
        seq = self.seq
        self.seq += 1
        data = await compact_json.dumps_async({"type": kind, **fields, "sequence_number": seq})
        return f"{self._id}{seq}\nevent: {kind}\ndata: {data}\n\n".encode()

    def opening(self) -> bytes:
        """``response.created`` and ``response.in_progress``, each with the object in progress."""
        response = self.shape.object("in_progress", [])
        return (self._event("response.created", {"response": response})
                + self._event("response.in_progress", {"response": response})).encode()

    # -- the run's output --

    def pieces(self, batch: list[Any]) -> Iterator[bytes]:
        """The events of ``batch`` up to its terminal event (kept in ``terminal``), in pieces."""
        out: list[str] = []
        size = 0
        for event in _coalesced(batch) if len(batch) > _SMALL_BATCH else batch:
            kind = type(event)
            if kind is Ended or kind is Failed:
                self.terminal = event
                break
            for text in self._output(event, kind):
                if not text:
                    continue
                if size + len(text) > PIECE_BYTES and out:
                    yield "".join(out).encode()
                    out, size = [], 0
                out.append(text)
                size += len(text)
        if out:
            yield "".join(out).encode()

    def _output(self, event: Any, kind: type) -> Iterator[str]:
        if kind is TextDelta or kind is ReasoningDelta:
            wanted = "message" if kind is TextDelta else "reasoning"
            item = self._open
            if item is None or item.kind != wanted:
                yield from self._close_open()
                item = self._open = self._add(wanted)
                yield from self._added(item)
            if kind is ReasoningDelta and event.signature:
                item.signature = event.signature
            if item.refusal is not None:
                yield from self._deltas(item, event.text, item.refusal, item.refusal_prefix, ',"sequence_number":')
            else:
                yield from self._deltas(item, event.text)
        elif kind is Refusing:
            yield from self._refuse()
        elif kind is Annotations:
            yield from self._annotate(event.citations)
        elif kind is ToolCallDelta:
            item = self._calls.get(event.index)
            if item is None:
                yield from self._close_open()
                item = self._calls[event.index] = self._add("function_call")
                # The runtime names a call the upstream gave no id after the run and its index.
                item.call_id = event.id or f"call_{self.run_id}_{event.index}"
                item.name = event.name or ""
                yield from self._added(item)
            yield from self._deltas(item, event.arguments)
        elif kind is Logprobs and self._open is not None and self._open.kind == "message" and self.shape.logprobs:
            self._open.logprobs.extend(_logprob(entry) for entry in event.content)
        # Started, and anything a Responses stream has no place for (other choices), say nothing.

    def _refuse(self) -> Iterator[str]:
        """The reply's text is a refusal from here on: in the open message, after its text
        part (done now), or in a new message that holds the refusal alone."""
        self._refusing = True
        item = self._open
        if item is not None and item.kind == "message":
            if item.refusal is None:
                yield from self._text_done(item, "".join(item.chunks))
                self._start_refusal(item)
                yield from self._part_added(item, item.refusal_index())
            return
        yield from self._close_open()
        self._open = self._add("message")
        yield from self._added(self._open)

    def _start_refusal(self, item: _Item) -> None:
        item.refusal = []
        item.refusal_prefix = (f'event: response.refusal.delta\ndata: {{"type":"response.refusal.delta",'
                               f'"item_id":"{item.id}","output_index":{item.index},'
                               f'"content_index":{item.refusal_index()},"delta":')

    def _annotate(self, citations: tuple[Citation, ...]) -> Iterator[str]:
        """``output_text.annotation.added`` for each citation of the open message's text
        (opened for them if need be); a refusal has no text part to cite in."""
        item = self._open
        if item is None or item.kind != "message":
            if self._refusing:
                return
            yield from self._close_open()
            item = self._open = self._add("message")
            yield from self._added(item)
        if item.refusal is not None or not item.has_text:
            return
        for citation in citations:
            yield self._event("response.output_text.annotation.added", {
                "item_id": item.id, "output_index": item.index, "content_index": 0,
                "annotation_index": len(item.citations), "annotation": citation_object(citation)})
            item.citations.append(citation)

    def _add(self, kind: str) -> _Item:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = _Item(kind, len(self.items), self.shape.item_id(prefix, len(self.items)))
        if kind == "message" and self._refusing:
            item.has_text = False
            self._start_refusal(item)
        self.items.append(item)
        delta_type = _DELTA_TYPES[kind]
        content = '"content_index":0,' if kind != "function_call" else ""
        item.prefix = (f'event: {delta_type}\ndata: {{"type":"{delta_type}","item_id":"{item.id}",'
                       f'"output_index":{item.index},{content}"delta":')
        return item

    def _added(self, item: _Item) -> Iterator[str]:
        yield self._event("response.output_item.added", {"output_index": item.index,
                                                         "item": self._item(item, "in_progress", "")})
        if item.kind != "function_call":
            yield from self._part_added(item, 0)

    def _part_added(self, item: _Item, index: int) -> Iterator[str]:
        part = self._part(item, "") if index == 0 and item.has_text else {"type": "refusal", "refusal": ""}
        yield self._event("response.content_part.added", {"item_id": item.id, "output_index": item.index,
                                                          "content_index": index, "part": part})

    def _deltas(self, item: _Item, text: str, chunks: list[str] | None = None, prefix: str = "",
                tail: str = "") -> Iterator[str]:
        """Delta events of ``text`` (an item's text, or with ``chunks``, ``prefix`` and ``tail``
        given, another part of it: a refusal)."""
        if not text:
            return
        (item.chunks if chunks is None else chunks).append(text)
        if chunks is None:
            prefix = item.prefix
            tail = ',"logprobs":[],"sequence_number":' if item.kind == "message" else ',"sequence_number":'
        skip, ident = self._skip, self._id
        for start in range(0, len(text), DELTA_CHARS):
            piece = text[start:start + DELTA_CHARS]
            first = self.seq                    # the number of the piece's first character
            self.seq = end = first + len(piece)
            end -= 1                            # the delta's number: its last character's
            if end <= skip:
                continue
            if first <= skip:                   # cut by a resume's position: the rest of it
                piece = piece[skip + 1 - first:]
            yield f"{ident}{end}\n{prefix}{_escape(piece)}{tail}{end}}}\n\n"

    def _close_open(self) -> Iterator[str]:
        item, self._open = self._open, None
        if item is not None:
            yield from self._done(item, "completed", "".join(item.chunks))

    def _done(self, item: _Item, status: str, text: str) -> Iterator[str]:
        for kind, fields in self._done_events(item, status, text):
            yield self._event(kind, fields)

    def _done_events(self, item: _Item, status: str, text: str) -> list[tuple[str, dict[str, Any]]]:
        """The ``.done`` events of ``item`` (its parts', then its own), as (type, fields)."""
        where = {"item_id": item.id, "output_index": item.index}
        events = []
        if item.kind == "function_call":
            events.append(("response.function_call_arguments.done", {**where, "name": item.name, "arguments": text}))
        elif item.kind == "reasoning":
            events.append(("response.reasoning_text.done", {**where, "content_index": 0, "text": text}))
            events.append(("response.content_part.done", {**where, "content_index": 0,
                                                          "part": self._part(item, text)}))
        else:
            if item.has_text and not item.text_done:
                events.extend(self._text_done_events(item, text))
            if item.refusal is not None:
                refusal, index = "".join(item.refusal), item.refusal_index()
                events.append(("response.refusal.done", {**where, "content_index": index, "refusal": refusal}))
                events.append(("response.content_part.done", {**where, "content_index": index,
                                                              "part": {"type": "refusal", "refusal": refusal}}))
        events.append(("response.output_item.done", {"output_index": item.index,
                                                     "item": self._item(item, status, text)}))
        return events

    def _text_done_events(self, item: _Item, text: str) -> list[tuple[str, dict[str, Any]]]:
        item.text_done = True
        where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
        return [("response.output_text.done", {**where, "text": text, "logprobs": item.logprobs}),
                ("response.content_part.done", {**where, "part": self._part(item, text)})]

    def _text_done(self, item: _Item, text: str) -> Iterator[str]:
        for kind, fields in self._text_done_events(item, text):
            yield self._event(kind, fields)

    def _part(self, item: _Item, text: str) -> dict[str, Any]:
        if item.kind == "message":
            return _text_part(text, item.logprobs if text else [], item.citations)
        return {"type": "reasoning_text", "text": text}

    def _item(self, item: _Item, status: str, text: str) -> dict[str, Any]:
        if item.kind == "function_call":
            return _call(item.id, ToolCall(item.call_id, item.name, text), status)
        if item.kind == "reasoning":
            out = _reasoning(item.id, text, item.signature if status != "in_progress" else "", status)
            if status == "in_progress":
                out["content"] = []
            return out
        out = _message(item.id, text if item.has_text else None, item.logprobs if text else [], status,
                       "".join(item.refusal) if item.refusal is not None else None, item.citations)
        if status == "in_progress":
            out["content"] = []
        return out

    # -- the end --

    def _final_calls(self) -> None:
        """Calls as the run settled them (ids, names and whole arguments), once it ended well."""
        if type(self.terminal) is Ended:
            for index, call in zip(sorted(self._calls), self.terminal.result.tool_calls):
                item = self._calls[index]
                item.call_id, item.name, item.chunks = call.id, call.name, [call.arguments]

    async def closing(self, status: str | None = None) -> list[bytes]:
        """The ``.done`` events of every item still open, in output order, each as its own piece;
        the items' ``status`` is the terminal event's unless given (a stream rebuilt from a stored
        Response has no terminal event)."""
        self._final_calls()
        if status is None:
            status = "completed" if type(self.terminal) is Ended else "incomplete"
        open_items = sorted([*(([self._open]) if self._open else []), *self._calls.values()], key=lambda i: i.index)
        self._open, self._calls = None, {}
        pieces = []
        for item in open_items:
            text = "".join(item.chunks)
            item.chunks = [text]
            chars = len(text) + sum(map(len, item.refusal or ()))
            if chars < compact_json.LARGE_CHARS:
                piece = "".join(self._done(item, status, text)).encode()
                if piece:
                    pieces.append(piece)
                continue
            # A large item's done events are escaped in slices of the loop, one piece each.
            for kind, fields in self._done_events(item, status, text):
                pieces.append(await self._event_async(kind, fields, chars))
        return [piece for piece in pieces if piece]

    def final(self) -> dict[str, Any]:
        """The Response object the stream ends with (after ``closing``): the items as streamed."""
        terminal = self.terminal
        ok = type(terminal) is Ended
        output = [self._item(item, "completed" if ok else "incomplete", "".join(item.chunks)) for item in self.items]
        if ok:
            status, incomplete = status_of(terminal.result.finish_reason)      # type: ignore[union-attr]
            return self.shape.object(status, output, usage=terminal.result.usage,  # type: ignore[union-attr]
                                     incomplete=incomplete)
        error = terminal.error if terminal is not None else RunAborted("cancelled")   # type: ignore[union-attr]
        return self.shape.object(failed_status(error), output, error=error_object(error))

    async def ending(self, final: dict[str, Any]) -> bytes:
        """``response.completed``, ``.incomplete`` or ``.failed`` with ``final``."""
        status = final["status"]
        kind = "response.completed" if status == "completed" else \
            "response.incomplete" if status == "incomplete" else "response.failed"
        chars = sum(len(chunk) for item in self.items for chunk in (*item.chunks, *(item.refusal or ())))
        return await self._event_async(kind, {"response": final}, chars)


def _coalesced(batch: list[Any]) -> Iterator[Any]:
    """``batch`` with runs of text deltas, of reasoning deltas, and of one call's fragments joined."""
    run: list[Any] = []
    for event in batch:
        if run and not _joins(run[-1], event):
            yield _joined(run)
            run = []
        if type(event) in (TextDelta, ReasoningDelta, ToolCallDelta):
            run.append(event)
        else:
            yield event
    if run:
        yield _joined(run)


def _joins(last: Any, event: Any) -> bool:
    kind = type(last)
    if type(event) is not kind:
        return False
    return kind is not ToolCallDelta or (event.index == last.index and event.id is None and event.name is None)


def _joined(run: list[Any]) -> Any:
    first = run[0]
    if len(run) == 1:
        return first
    kind = type(first)
    if kind is TextDelta:
        return TextDelta("".join([e.text for e in run]))
    if kind is ReasoningDelta:
        signature = next((e.signature for e in reversed(run) if e.signature), "")
        return ReasoningDelta("".join([e.text for e in run]), signature)
    return ToolCallDelta(first.index, first.id, first.name, "".join([e.arguments for e in run]))



# -- a stored Response as a stream ----------------------------------------------------------

_OBJECT_FIELDS: Final = frozenset({"id", "object", "created_at", "status", "background", "completed_at", "error",
                                   "incomplete_details", "instructions", "max_output_tokens", "model", "output",
                                   "output_text", "usage"})


def shape_of(response: dict[str, Any]) -> Shape:
    """The ``Shape`` a stored Response object was made with (its id, model, echo and ``created_at``)."""
    tail_names = [name for name in ("user", "metadata") if name in response]
    rest = {name: value for name, value in response.items() if name not in _OBJECT_FIELDS and name not in tail_names}
    echo = {"instructions": response.get("instructions"), "max_output_tokens": response.get("max_output_tokens"),
            "rest": rest, "tail": {name: response[name] for name in tail_names}}
    logprobs = any(part.get("logprobs") for item in response.get("output") or () if item.get("type") == "message"
                   for part in item.get("content") or ())
    return Shape(response["id"], response["model"], echo, logprobs=logprobs, created_at=response["created_at"])


def stored_events(response: dict[str, Any]) -> list[Any]:
    """Run events that make ``EventWriter`` stream the output items of a stored Response
    (one delta per item: positions do not depend on how the deltas were cut)."""
    events: list[Any] = []
    calls = 0
    for item in response.get("output") or ():
        kind = item.get("type")
        if kind == "reasoning":
            text = "".join(part.get("text", "") for part in item.get("content") or ())
            events.append(ReasoningDelta(text, item.get("encrypted_content") or ""))
        elif kind == "message":
            content = item.get("content") or ()
            parts = [part for part in content if part.get("type") == "output_text"]
            refusal = "".join(part.get("refusal", "") for part in content if part.get("type") == "refusal")
            if parts or not refusal:
                events.append(TextDelta("".join(part["text"] for part in parts)))
            citations = tuple(Citation(a["url"], a["title"], a["start_index"], a["end_index"])
                              for part in parts for a in part.get("annotations") or ()
                              if a.get("type") == "url_citation")
            if citations:
                events.append(Annotations(citations))
            entries = tuple(entry for part in parts for entry in part.get("logprobs") or ())
            if entries:
                events.append(Logprobs(entries))
            if refusal:
                events.extend((REFUSING, TextDelta(refusal)))
        elif kind == "function_call":
            events.append(ToolCallDelta(calls, item["call_id"], item["name"], item["arguments"]))
            calls += 1
    return events


def items_status(response: dict[str, Any]) -> str:
    """The status the ``.done`` events of a stored Response's items had when it was streamed."""
    return "completed" if response.get("status") in ("completed", "incomplete") else "incomplete"
