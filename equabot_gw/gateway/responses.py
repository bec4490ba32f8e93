"""OpenAI-compatible ``POST /v1/responses`` and its stored responses, on the agent runtime.

The second door of the one run path: every response is one ``runtime.run``,
routed as chat completions route (``model`` prefixes, the ``x-equabot-*``
headers and their aliases, ``user``), answered as a Response object or as
the typed event stream. The shapes are ``responses_input`` (request) and
``responses_output`` (objects, events); the shared pieces of the
chat-completions door (auth, body decoding, header families, error
responses) are reused from ``openai.py``.

Sessions: ``previous_response_id`` continues the session its response
belongs to. A response that may be continued (``store``, the default) is
recorded under a session of its own (``agent:<id>:openai-responses:<id>``)
unless ``user`` or the session header names one, so that a continuation has
every earlier turn, after a restart too. Continuing from a response that is
no longer its session's newest turn (a fork), one whose session a run of
this door is still using, or with input that holds assistant items starts a
new session from the conversation up to that response (read from its
transcript). ``store: false`` without a session runs stateless. The map
from response ids to sessions and the stored objects are
``agents.response_store``'s; a session of its own goes with the last stored
response in it, deleted or expired. Retrieval, deletion, cancellation and
the input items of a response are the other routes here.

Idempotency and resumable streams are the chat-completions door's (see
``resume.py``): with an ``Idempotency-Key`` a request runs at most once
(``runtime.run_once``, keyed per agent, digested with its routing headers),
and a repeat joins or replays it under the first response's id and
``created_at``, which the key's journal line keeps (``meta``: the durable map
from a key's run to its response). A repeat never stores the response again:
only the first request's flight does. Streams are resumed after a
``sequence_number`` (see ``responses_output``): the same POST with the same
key and ``Last-Event-ID: <response id>:<n>``, or
``GET /v1/responses/{id}?stream=true&starting_after=<n>`` — from the run's
events while its response is in flight, from the stored Response once it is
stored (after a restart too).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from .. import compact_json
from ..agents import runtime as agent_runtime
from ..agents import idempotency, sessions, transcripts
from ..agents.events import Failed, Started, Subscription
from ..agents.response_store import ResponseStore
from ..agents.runtime import Run, RunRecord, Runtime
from ..agents.types import AgentRequest, Message, SessionHistory
from ..errors import ApiError, RunAborted, RunError, StorageError
from ..net import sse
from ..net.routes import HTTPRequest, Response, StreamingResponse, query_fields
from . import responses_input, resume
from .chat_stream import first_output
from .openai import _agent_from_model, _parse_body, _release, _run_error_response, gateway_header
from .responses_input import ResponseRequest, echo_fields, item_resources
from .responses_output import (EventWriter, Shape, error_object, failed_status, items_status, partial_output,
                               result_output, shape_of, status_of, stored_events)

__all__ = ["Responses", "own_session_key", "CANCEL_WAIT_SECONDS"]

log = logging.getLogger("equabot_gw.responses")

# How long a cancel waits for the run to settle and its response to be stored.
CANCEL_WAIT_SECONDS: Final = 10.0
# input_items: OpenAI's page size bounds and default.
MAX_PAGE_ITEMS: Final = 100
DEFAULT_PAGE_ITEMS: Final = 20
_FREED_PER_STEP: Final = 50_000
_SEQ_RE: Final = re.compile(r"[0-9]{1,15}")
# The runtime's option names, as a Responses request sends them.
_FIELD_OF_OPTION: Final = {"max_tokens": "max_output_tokens", "response_format": "text.format",
                           "reasoning_effort": "reasoning.effort", "logprobs": "include", "messages": "input"}


def own_session_key(agent_id: str, response_id: str) -> str:
    """The session a stored response that starts a conversation is recorded under."""
    return f"agent:{agent_id}:openai-responses:{response_id}"


@dataclass(slots=True)
class _InFlight:
    """A response whose run has not settled (or whose record is being written)."""

    run: Run
    shape: Shape
    store: bool
    input: Any                          # the request's checked ``input``, for its input items
    busy_key: str | None                # the session this door's run holds, counted in ``_busy``
    leave: Callable[[], None]           # the client's claim (``resume.Claims``): call once when it is gone
    revealed: bool = False              # the client has seen the id (a stream began; always for a keyed one)
    done: asyncio.Future[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Responses:
    """The Responses endpoints of one gateway. ``start()`` opens its store, ``stop()`` closes it."""

    def __init__(self, runtime: Runtime, authorize: Callable[[HTTPRequest], None], state_dir: os.PathLike[str] | str,
                 *, max_messages: int = 10_000) -> None:
        self.runtime = runtime
        self.authorize = authorize
        self.max_messages = max_messages
        self.store = ResponseStore(state_dir,
                                   retention_days=runtime.config.gateway.http.endpoints.responses.retention_days,
                                   on_expired=self._expired)
        node = runtime.config.gateway.node_id      # resp_<node>_<random><n>, as run ids
        self._id_prefix = (f"{node}_" if node else "") + os.urandom(6).hex()
        self._ids = 0
        self._inflight: dict[str, _InFlight] = {}
        self._busy: dict[str, int] = {}            # session key -> this door's runs on it
        self._settling: set[asyncio.Task[None]] = set()
        self._sweeps: set[asyncio.Task[None]] = set()     # own sessions of expired responses being deleted
        self.claims = resume.Claims(runtime)

    async def start(self) -> None:
        """Open the response store (its map is loaded from disk)."""
        await self.store.open()

    async def stop(self) -> None:
        """Let the responses of abandoned clients be recorded, then close the store."""
        if self._settling:
            await asyncio.wait(self._settling, timeout=CANCEL_WAIT_SECONDS)
        for task in list(self._sweeps):     # what is left stays, as any session does
            task.cancel()
        await self.store.close()

    def _new_id(self) -> str:
        self._ids += 1
        return f"resp_{self._id_prefix}{self._ids:x}"

    # ---- POST /v1/responses ----
    async def create(self, request: HTTPRequest) -> Response | StreamingResponse:
        """One agent run, answered as a Response object or as its typed event stream.

        With an ``Idempotency-Key`` the request runs at most once: a repeat
        joins or replays the first one (see the module's docstring), and a
        stream re-sent with ``Last-Event-ID`` goes on after that event.
        """
        self.authorize(request)
        body = await _parse_body(request)
        key = resume.idempotency_key(request.headers)
        digest = await resume.body_digest(body, request.headers, len(request.body)) if key is not None else ""
        try:
            wanted = await responses_input.read_request(body, self.max_messages)
        except ApiError:
            items = body.get("input")
            if type(items) is list and len(items) > _FREED_PER_STEP:
                await _release(items)       # a refused list of a million items, freed a slice per step
            raise
        headers = request.headers
        if key is None and wanted.stream and headers.get("last-event-id") is not None:
            raise ApiError(400, "Last-Event-ID resumes a stream of a request with an Idempotency-Key: "
                                "send the same request with the same key.",
                           code="invalid_last_event_id", param="Last-Event-ID")
        response_id = self._new_id()
        agent_id = gateway_header(headers, "agent-id") or _agent_from_model(wanted.model)
        session_key, context, agent_id = await self._session(headers, wanted, agent_id, response_id)
        new = wanted.input
        plain = len(new) == 1 and new[0].role == "user" and type(new[0].content) is str
        agent_request = AgentRequest(
            message=new[0].content if plain else "", agent_id=agent_id,      # type: ignore[arg-type]
            session_key=session_key, context=context, system=wanted.system, model=gateway_header(headers, "model"),
            options=wanted.options, origin="responses", input=() if plain else new, idempotency_key=key)
        created_at = int(time.time())
        try:
            if key is None:
                run: Run | RunRecord = agent_runtime.run(self.runtime, agent_request, watched=wanted.stream)
                replayed = False
            else:
                run, replayed = await agent_runtime.run_once(self.runtime, agent_request, digest,
                                                             {"id": response_id, "created": created_at},
                                                             watched=wanted.stream, resuming=wanted.stream
                                                             and headers.get("last-event-id") is not None)
        except ApiError as exc:
            raise _renamed(exc) from None
        echo = echo_fields(body)
        if replayed:
            return await self._repeat(run, wanted, echo, headers)
        assert type(run) is Run
        shape = Shape(response_id, wanted.model, echo, logprobs=bool(wanted.options.logprobs), created_at=created_at)
        flight = _InFlight(run, shape, wanted.store, body["input"], None if run.stateless else run.session_key,
                           self.claims.claim(run, keep=key is not None), revealed=key is not None)
        self._inflight[response_id] = flight
        if flight.busy_key is not None:
            self._busy[flight.busy_key] = self._busy.get(flight.busy_key, 0) + 1
        if wanted.stream:       # new: a Last-Event-ID was refused above (nothing to resume)
            return await self._stream(flight)
        return await self._complete(flight)

    async def _session(self, headers: Any, wanted: ResponseRequest, agent_id: str | None, response_id: str
                       ) -> tuple[str | None, tuple[Message, ...], str | None]:
        """(session key or None for stateless, context, agent id) of a request."""
        header_key = gateway_header(headers, "session-key")
        if wanted.previous_response_id is not None:
            return await self._continuation(wanted, agent_id, header_key, response_id)
        if header_key is not None:
            return header_key, wanted.context, agent_id
        if wanted.user:
            return sessions.user_key(self.runtime.agent(agent_id).id, wanted.user), wanted.context, agent_id
        if wanted.store:
            return own_session_key(self.runtime.agent(agent_id).id, response_id), wanted.context, agent_id
        return None, wanted.context, agent_id

    async def _continuation(self, wanted: ResponseRequest, agent_id: str | None, header_key: str | None,
                            response_id: str) -> tuple[str | None, tuple[Message, ...], str | None]:
        previous = wanted.previous_response_id
        assert previous is not None
        if previous in self._inflight:
            raise ApiError(400, f"Previous response {previous[:100]!r} is still in progress.",
                           code="previous_response_in_progress", param="previous_response_id")
        entry = self.store.find(previous)
        if entry is None:
            raise _previous_not_found(previous)
        if agent_id is not None and self.runtime.agent(agent_id).id != entry.agent_id:
            raise ApiError(400, f"previous response {previous!r} belongs to agent {entry.agent_id!r}, but agent "
                                f"{agent_id!r} was requested", code="agent_mismatch", param="model")
        if header_key is not None and sessions.scoped_key(entry.agent_id, header_key) != entry.session_key:
            raise ApiError(400, f"previous response {previous!r} belongs to session {entry.session_key!r}, not to "
                                f"{header_key[:200]!r}", code="session_mismatch", param="x-equabot-session-key")
        info = self.runtime.store.session_info(entry.agent_id, entry.session_key)
        if info is not None and info.last_run_id == entry.run_id and wanted.store and not wanted.context \
                and not self._busy.get(entry.session_key):
            return entry.session_key, (), entry.agent_id        # its newest turn: go on in place
        history = await self._history_until(entry.agent_id, entry.session_key, entry.run_id, previous)
        key = own_session_key(entry.agent_id, response_id) if wanted.store else None
        return key, history + wanted.context, entry.agent_id

    async def _history_until(self, agent_id: str, key: str, run_id: str, response_id: str) -> tuple[Message, ...]:
        """The conversation of session ``key`` up to and including run ``run_id``'s turn (of ``response_id``)."""
        lines = await self.runtime.store.read_transcript(agent_id, key)
        end = next((i for i, line in enumerate(lines) if line.get("runId") == run_id
                    and line.get("type") in ("assistant", "aborted", "error")), None)
        if end is None:
            raise ApiError(400, f"The conversation of previous response {response_id!r} is no longer stored "
                                f"(its session was reset or deleted).", code="previous_response_not_found",
                           param="previous_response_id")
        return transcripts.fold(SessionHistory(), lines[:end + 1]).messages

    # ---- answers ----
    async def _complete(self, flight: _InFlight) -> Response:
        try:
            result = await flight.run.wait()
        except asyncio.CancelledError:
            flight.leave()          # without a key: aborts the run; with one, it goes on
            self._settle_later(flight)
            raise
        except RunError as exc:
            flight.leave()
            if not _cancelled(exc):
                self._forget(flight, None)
                return _run_error_response(exc)
            final = self._failed_object(flight, exc)
        else:
            status, incomplete = status_of(result.finish_reason)
            final = flight.shape.object(status, result_output(flight.shape, result), usage=result.usage,
                                        incomplete=incomplete)
            flight.leave()
        flight.revealed = True
        try:
            await self._finish(flight, final)
        except StorageError as exc:
            return _run_error_response(exc)
        if len(final["output_text"]) < compact_json.LARGE_CHARS:
            return _json(200, final)
        return Response(200, [("content-type", "application/json")],
                        (await compact_json.dumps_async(final)).encode())

    async def _stream(self, flight: _InFlight) -> Response | StreamingResponse:
        subscription = flight.run.subscribe()
        try:
            # Hold the head until the run produced something, so a run that fails
            # first gets a real status (429, 502, 504), as chat completions do (for
            # one keep-alive interval at most: then response.created goes out).
            first = await first_output(subscription, sse.KEEPALIVE_INTERVAL)
        except asyncio.CancelledError:
            flight.leave()
            self._settle_later(flight)
            raise
        if first and type(first[-1]) is Failed and all(type(e) is Started for e in first[:-1]) \
                and not _cancelled(first[-1].error):
            flight.leave()
            self._forget(flight, None)
            return _run_error_response(first[-1].error)
        writer = EventWriter(flight.shape, flight.run.id)
        return StreamingResponse(200, list(sse.HEADERS), self._sse_body(flight, subscription, first, writer),
                                 idle_bytes=sse.KEEPALIVE, idle_interval=sse.KEEPALIVE_INTERVAL,
                                 on_close=functools.partial(self._stream_closed, flight))

    async def _sse_body(self, flight: _InFlight, subscription: Subscription, first: list[Any],
                        writer: EventWriter) -> AsyncIterator[bytes]:
        flight.revealed = True
        yield writer.opening()
        batch: list[Any] | None = first
        while batch is not None:
            for piece in writer.pieces(batch):
                yield piece
            if writer.terminal is not None:
                break
            batch = await subscription.next_batch()
        for piece in await writer.closing():
            yield piece
        final = writer.final()
        try:
            await self._finish(flight, final)
        except StorageError as exc:     # not stored: the stream says so rather than pretending
            final = flight.shape.object("failed", final["output"],
                                        error={"code": "server_error", "message": str(exc)})
        yield await writer.ending(final)

    def _stream_closed(self, flight: _InFlight) -> None:
        """A stream's end, however it came (written, cut, or never started)."""
        flight.leave()          # without a key a client that left aborts the run (see resume.Claims)
        self._settle_later(flight)      # a no-op once the stream stored its response itself

    def _failed_object(self, flight: _InFlight, exc: RunError) -> dict[str, Any]:
        return _failed(flight.shape, flight.run, exc)

    async def _finish(self, flight: _InFlight, final: dict[str, Any]) -> None:
        """Store ``final`` (when asked to) durably, then forget the flight; raises ``StorageError``."""
        stored: dict[str, Any] | None = final
        try:
            if flight.store:
                run = flight.run
                await self.store.put(flight.shape.id, run.agent_id, run.session_key, run.id, final,
                                     item_resources(flight.input, flight.shape.suffix))
        except StorageError:
            stored = None
            log.warning("response %s: could not be stored", flight.shape.id)
            raise
        finally:
            self._forget(flight, stored)

    def _forget(self, flight: _InFlight, final: dict[str, Any] | None) -> None:
        if self._inflight.pop(flight.shape.id, None) is None:
            return
        if flight.busy_key is not None:
            left = self._busy[flight.busy_key] - 1
            if left:
                self._busy[flight.busy_key] = left
            else:
                del self._busy[flight.busy_key]
        if not flight.done.done():
            flight.done.set_result(final)

    def _settle_later(self, flight: _InFlight) -> None:
        """Once the run settles, record what a client that left was shown the id of."""
        if flight.shape.id not in self._inflight:
            return
        task = asyncio.get_running_loop().create_task(self._settle(flight))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, flight: _InFlight) -> None:
        try:
            result = await flight.run.wait()
        except RunError as exc:
            final = self._failed_object(flight, exc)
        else:
            status, incomplete = status_of(result.finish_reason)
            final = flight.shape.object(status, result_output(flight.shape, result), usage=result.usage,
                                        incomplete=incomplete)
        if not flight.revealed:
            self._forget(flight, None)      # nobody learnt its id: nothing to keep
            return
        try:
            await self._finish(flight, final)
        except StorageError:
            pass                            # logged; the turn itself is in the transcript

    # ---- repeats of a keyed request, and resumed streams ----
    async def _repeat(self, run: Run | RunRecord, wanted: ResponseRequest, echo: dict[str, Any],
                      headers: Any) -> Response | StreamingResponse:
        """A request whose key started ``run`` before: joined while it runs, replayed once it
        ended, under the first response's id; nothing is stored again."""
        entry = self.runtime.keys.of_run(run.id)
        meta = entry.meta if entry is not None and entry.meta is not None else {}
        response_id, created_at = meta.get("id"), meta.get("created")
        if type(response_id) is not str or type(created_at) is not int:
            # The key was first used on another door with this very digest: not a Responses request.
            raise ApiError(422, "This Idempotency-Key was used with another endpoint.",
                           code="idempotency_key_reused", param="idempotency_key")
        shape = Shape(response_id, wanted.model, echo, logprobs=bool(wanted.options.logprobs), created_at=created_at)
        extra = [(resume.REPLAY_HEADER, "true")]
        leave = self.claims.claim(run, keep=True)
        flight = self._inflight.get(response_id)
        if flight is not None and flight.run is not run:
            flight = None
        if not wanted.stream:
            try:
                return await self._replayed_object(run, shape, flight, extra)
            finally:
                leave()
        try:
            after = resume.last_event_seq(headers, response_id)
        except ApiError:
            leave()
            raise
        return await self._events(run, shape, flight, after, leave, extra, "Last-Event-ID")

    async def _replayed_object(self, run: Run | RunRecord, shape: Shape, flight: _InFlight | None,
                               extra: list[tuple[str, str]]) -> Response:
        """The Response of a repeated non-streaming request: the first request's (as stored), or
        made from the run's outcome (a response not stored); a run's error as the first got it."""
        error: RunError | None = None
        result = None
        try:
            result = await run.wait()
        except RunError as exc:
            error = exc
        final = await self._recorded(shape.id, flight)
        if final is None:
            if error is not None and not _cancelled(error):
                return _run_error_response(error, extra)
            if error is not None:
                final = _failed(shape, run, error)
            else:
                assert result is not None
                status, incomplete = status_of(result.finish_reason)
                final = shape.object(status, result_output(shape, result), usage=result.usage, incomplete=incomplete)
        return _json(200, final, extra) if len(final["output_text"]) < compact_json.LARGE_CHARS else \
            Response(200, [("content-type", "application/json")] + extra,
                     (await compact_json.dumps_async(final)).encode())

    async def _recorded(self, response_id: str, flight: _InFlight | None) -> dict[str, Any] | None:
        """The Response the first request of ``response_id`` ended with (its flight's, or the
        stored one), once its run settled; None if it was not kept."""
        if flight is not None:
            try:
                final = await asyncio.wait_for(asyncio.shield(flight.done), CANCEL_WAIT_SECONDS)
            except TimeoutError:
                final = None
            if final is not None:
                return final
        try:
            stored = await self.store.read(response_id)
        except StorageError:
            return None
        return stored[0] if stored is not None else None

    async def _events(self, run: Run | RunRecord | None, shape: Shape, flight: _InFlight | None, after: int | None,
                      leave: Callable[[], None], extra: list[tuple[str, str]], param: str) -> StreamingResponse:
        """A response's events after ``after`` (None: all): from the run's events while its first
        request is in flight (or its response is not stored), else from the stored Response.

        A finished response's events are all at hand: an ``after`` past its last one was
        never sent, and is refused (400, naming ``param``, where the position came from).
        """
        stored = None
        if flight is None:
            try:
                stored = await self.store.read(shape.id)
            except StorageError:
                leave()
                raise
        if stored is not None:
            shape = shape_of(stored[0])
            batches: AsyncIterator[list[Any]] = _once(stored_events(stored[0]))
        elif run is not None:
            batches = idempotency.events_after(run.subscribe(), 0)
        else:
            leave()
            raise _not_found(shape.id)
        writer = EventWriter(shape, run.id if run is not None else "", after)
        body = self._events_body(writer, batches, stored[0] if stored is not None else None, flight)
        if after is not None and (stored is not None or run.done):     # type: ignore[union-attr]
            body = await resume.past_the_end_refused(body, lambda: writer.seq, after, leave, param)
        return StreamingResponse(200, list(sse.HEADERS) + extra, body,
                                 idle_bytes=sse.KEEPALIVE, idle_interval=sse.KEEPALIVE_INTERVAL, on_close=leave)

    async def _events_body(self, writer: EventWriter, batches: AsyncIterator[list[Any]],
                           stored: dict[str, Any] | None, flight: _InFlight | None) -> AsyncIterator[bytes]:
        try:
            opening = writer.opening()
            if opening:
                yield opening
            async for batch in batches:
                for piece in writer.pieces(batch):
                    yield piece
                if writer.terminal is not None:
                    break
            for piece in await writer.closing(items_status(stored) if stored is not None else None):
                yield piece
            final = stored or await self._recorded(writer.shape.id, flight) or writer.final()
            ending = await writer.ending(final)
            if ending:
                yield ending
        finally:
            await batches.aclose()          # type: ignore[attr-defined]

    async def _resume_get(self, response_id: str, query: dict[str, str]) -> StreamingResponse:
        """``GET /v1/responses/{id}?stream=true[&starting_after=<n>]``: the events of an
        in-flight response from its run, or of a stored one rebuilt from it."""
        after_text = query.get("starting_after")
        after = None
        if after_text is not None:
            if not _SEQ_RE.fullmatch(after_text):
                raise ApiError(400, "Invalid 'starting_after': expected a sequence_number (digits).",
                               code="invalid_value", param="starting_after")
            after = int(after_text)
        flight = self._inflight.get(response_id)
        if flight is None:
            shape = Shape(response_id, "", {})
            return await self._events(None, shape, None, after, resume.no_claim, [], "starting_after")
        run = flight.run
        # A reader of a keyed run holds it as its client would; one of another run only reads.
        leave = self.claims.claim(run, keep=True) if self.runtime.keys.of_run(run.id) is not None else resume.no_claim
        return await self._events(run, flight.shape, flight, after, leave, [], "starting_after")

    # ---- GET, DELETE /v1/responses/{id}, its cancel and input_items ----
    async def get(self, request: HTTPRequest) -> Response | StreamingResponse:
        """``GET /v1/responses/{id}`` (with ``?stream=true[&starting_after=<n>]``: its events)
        and ``GET /v1/responses/{id}/input_items``."""
        self.authorize(request)
        response_id, action = _split(request.params.get("rest", ""), ("", "input_items"), "GET")
        query = query_fields(request.query)
        if action == "input_items":
            return await self._input_items(response_id, query)
        stream = query.get("stream")
        if stream not in (None, "false", "true"):
            raise ApiError(400, f"Invalid 'stream': {stream[:20]!r} is not one of 'true', 'false'.",
                           code="invalid_value", param="stream")
        if stream == "true":
            return await self._resume_get(response_id, query)
        flight = self._inflight.get(response_id)
        if flight is not None:
            return _json(200, flight.shape.object("in_progress", []))
        stored = await self.store.read(response_id)
        if stored is None:
            raise _not_found(response_id)
        return _json(200, stored[0])

    async def post(self, request: HTTPRequest) -> Response:
        """``POST /v1/responses/{id}/cancel``: stop an in-flight run; its Response, as stored."""
        self.authorize(request)
        response_id, _ = _split(request.params.get("rest", ""), ("cancel",), "POST")
        flight = self._inflight.get(response_id)
        if flight is None:
            stored = await self.store.read(response_id)
            if stored is None:
                raise _not_found(response_id)
            return _json(200, stored[0])        # finished already: cancelling again changes nothing
        flight.run.abort("cancelled")
        try:
            final = await asyncio.wait_for(asyncio.shield(flight.done), CANCEL_WAIT_SECONDS)
        except TimeoutError:
            final = None
        return _json(200, final or flight.shape.object("cancelled", []))

    async def delete(self, request: HTTPRequest) -> Response:
        """``DELETE /v1/responses/{id}``: forget a stored response (and its own session once unused)."""
        self.authorize(request)
        response_id, _ = _split(request.params.get("rest", ""), ("",), "DELETE")
        if response_id in self._inflight:
            raise ApiError(400, f"Response {response_id!r} is in progress: cancel it first.",
                           code="response_in_progress", param="response_id")
        entry = await self.store.delete(response_id)
        if entry is None:
            raise _not_found(response_id)
        if self._unused_own_session(entry.agent_id, entry.session_key):
            await self.runtime.store.delete(entry.agent_id, entry.session_key)
        return _json(200, {"id": response_id, "object": "response", "deleted": True})

    def _unused_own_session(self, agent_id: str, key: str) -> bool:
        """Whether ``key`` is a session this door made for a conversation, which no stored
        response and no run of this door uses (nothing can reach its transcript any more)."""
        return key.startswith(own_session_key(agent_id, "")) and not self.store.responses_in(key) \
            and not self._busy.get(key)

    def _expired(self, sessions: list[tuple[str, str]]) -> None:
        """The store's ``on_expired``: delete the own sessions its expired responses left unused."""
        if sessions:
            task = asyncio.get_running_loop().create_task(self._sweep(sessions))
            self._sweeps.add(task)
            task.add_done_callback(self._sweeps.discard)

    async def _sweep(self, sessions: list[tuple[str, str]]) -> None:
        for agent_id, key in sessions:
            if not self._unused_own_session(agent_id, key):
                continue
            try:
                await self.runtime.store.delete(agent_id, key)
            except StorageError as exc:
                log.warning("the sessions of expired responses: not all deleted (%s)", exc)
                return          # they stay as any session does; a later expiry tries no more of them

    async def _input_items(self, response_id: str, query: dict[str, str]) -> Response:
        flight = self._inflight.get(response_id)
        if flight is not None:
            items = item_resources(flight.input, flight.shape.suffix)
        else:
            stored = await self.store.read(response_id)
            if stored is None:
                raise _not_found(response_id)
            items = stored[1]
        limit = _page_limit(query.get("limit"))
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid value for 'order': {order[:20]!r} is not one of 'asc', 'desc'.",
                           code="invalid_value", param="order")
        if order == "desc":
            items = items[::-1]
        after = query.get("after")
        if after is not None:
            index = next((i for i, item in enumerate(items) if type(item) is dict and item.get("id") == after), None)
            if index is None:
                raise ApiError(400, f"Invalid 'after': no input item {after[:100]!r} in this response.",
                               code="invalid_value", param="after")
            items = items[index + 1:]
        page = items[:limit]
        return _json(200, {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                           "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


# -- helpers -------------------------------------------------------------------------------

async def _once(batch: list[Any]) -> AsyncIterator[list[Any]]:
    yield batch


def _failed(shape: Shape, run: Run | RunRecord, exc: RunError) -> dict[str, Any]:
    """The Response of a run that failed: its partial text as an incomplete message."""
    if type(run) is Run:
        last = run.events.events[-1] if run.events.events else None
        partial = last.partial if type(last) is Failed else ""
    else:
        partial = run.partial
    output = partial_output(shape, partial, "", "", (), None, "incomplete") if partial else []
    return shape.object(failed_status(exc), output, error=error_object(exc))


def _cancelled(exc: RunError) -> bool:
    """Whether a run was stopped by the cancel endpoint (its creator is answered with the object)."""
    return isinstance(exc, RunAborted) and exc.why == "cancelled"


def _renamed(exc: ApiError) -> ApiError:
    """A runtime refusal naming an option as the Responses field the client sent."""
    field_name = _FIELD_OF_OPTION.get(exc.param or "")
    if field_name is None or exc.code != "unsupported_parameter":
        return exc
    return ApiError(exc.status, exc.message.replace(repr(exc.param), repr(field_name)), type=exc.type,
                    code=exc.code, param=field_name)


def _split(rest: str, actions: tuple[str, ...], method: str) -> tuple[str, str]:
    """(response id, action) of the path tail after /v1/responses/; 404 or 405 for other paths."""
    response_id, _, action = rest.partition("/")
    known = {"": ("DELETE", "GET", "HEAD"), "cancel": ("POST",), "input_items": ("GET", "HEAD")}
    if not response_id or action not in known or "/" in action:
        raise ApiError(404, f"no route for {method} /v1/responses/{rest[:200]}", code="not_found")
    if action not in actions:
        raise ApiError(405, f"method {method} is not allowed on /v1/responses/{{id}}{'/' + action if action else ''}",
                       code="method_not_allowed", headers=(("allow", ", ".join(known[action])),))
    return response_id, action


def _page_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE_ITEMS
    # ASCII digits only: str.isdigit() takes "²" and "٣", which int() refuses or reads.
    if not _SEQ_RE.fullmatch(value) or not 1 <= int(value) <= MAX_PAGE_ITEMS:
        raise ApiError(400, f"Invalid 'limit': expected an integer between 1 and {MAX_PAGE_ITEMS}.",
                       code="invalid_value", param="limit")
    return int(value)


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"Response with id {response_id[:200]!r} not found.", code="not_found",
                    param="response_id")


def _previous_not_found(response_id: str) -> ApiError:
    return ApiError(400, f"Previous response with id {response_id[:200]!r} not found.",
                    code="previous_response_not_found", param="previous_response_id")


def _json(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, [("content-type", "application/json")] + (headers or []),
                    compact_json.dumps(data).encode())
