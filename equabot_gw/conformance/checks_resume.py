"""The idempotency and resume battery: ``Idempotency-Key`` and resumable SSE streams.

A server claims idempotency when a repeat of a request with an
``Idempotency-Key`` is answered with an ``x-<brand>-idempotent-replay``
header; it claims resumable streams when every
event of a keyed stream has an ``id: <completion id>:<seq>``. Against a
server that claims neither, each check is skipped with a note (the kit
cannot count provider calls from the wire, so a replay is recognised by its
header and ids). Each check raises ``Failed`` with a one-line reason and its
evidence, like the HTTP battery.
"""

from __future__ import annotations

import json
from typing import Any, Final

from .checks import Check, Exchange, Failed, Passed, Probe, Skipped, registry, show
from .checks_http import READY, _chunks, _events, _expect_error, _expect_ok

CHECKS: list[Check] = []
check = registry(CHECKS)

KEY_HEADER: Final = "Idempotency-Key"


def _replay_header(p: Probe) -> str:
    return p.target.header("idempotent-replay")


def _content(chunks: list[tuple[Any, dict[str, Any]]]) -> str:
    return "".join((c["choices"][0].get("delta", {}).get("content") or "") for _, c in chunks if c.get("choices"))


async def _keyed(p: Probe, name: str, fields: dict[str, Any], *headers: tuple[str, str]) -> Exchange:
    return await p.chat(fields, message=p.unique(f"{name}-message"),
                        headers=[(KEY_HEADER, p.unique(name)), *headers])


async def _claims_idempotency(p: Probe) -> tuple[Exchange, Exchange]:
    async def both() -> tuple[Exchange, Exchange]:
        return await _keyed(p, "idem", {}), await _keyed(p, "idem", {})
    first, again = await p.shared("idempotency", both)
    _expect_ok(first, "a request with an Idempotency-Key")
    _expect_ok(again, "the same request again")
    if again.header(_replay_header(p)) is None:
        raise Skipped(f"the server does not claim idempotency (a repeated key is not answered with "
                      f"{_replay_header(p)})")
    return first, again


@check("idempotency.replay", "Idempotency-Key (IETF httpapi draft): the same request with the same key "
       "is answered with the first answer (same id, content, usage), marked as a replay", requires=READY)
async def idempotency_replay(p: Probe) -> Passed:
    first, again = await _claims_idempotency(p)
    a, b = first.json(), again.json()
    if again.header(_replay_header(p)) != "true":
        raise Failed(f"the repeat has {_replay_header(p)}: {again.header(_replay_header(p))}, not true",
                     **again.summary())
    for field in ("id", "created", "choices", "usage"):
        if a.get(field) != b.get(field):
            raise Failed(f"the replay's {field} differs from the first answer's",
                         first=show(json.dumps(a.get(field))), replay=show(json.dumps(b.get(field))))
    return Passed("the repeat is the first answer, marked as a replay", id=a.get("id"))


@check("idempotency.key-reused", "Idempotency-Key: the key with another request body → 422 "
       "idempotency_key_reused (an OpenAI error object)", requires=("idempotency.replay",))
async def idempotency_key_reused(p: Probe) -> Passed:
    ex = await p.chat({}, message=p.unique("idem-other-body"), headers=[(KEY_HEADER, p.unique("idem"))])
    _expect_error(ex, (422,), "another body under a used key")
    code = ex.json()["error"].get("code")
    if code != "idempotency_key_reused":
        raise Failed(f"422 with code {code!r}, not 'idempotency_key_reused'", body=show(ex.body))
    return Passed("422 idempotency_key_reused", status=422)


async def _keyed_stream(p: Probe) -> tuple[Exchange, list[tuple[Any, dict[str, Any]]], list[tuple[str, int]]]:
    ex = await p.shared("resume-stream", lambda: _keyed(p, "resume", {"stream": True}))
    _expect_ok(ex, "a keyed streaming request")
    events = _events(ex)[0]
    ids = [dict(e.fields).get("id") for e in events]
    if not any(ids):
        raise Skipped("the server does not claim resumable streams (its events have no id: lines)")
    chunks = _chunks(ex)
    completion = chunks[0][1].get("id") if chunks else None
    parsed = []
    for event_id in ids:
        stream, _, seq = (event_id or "").rpartition(":")
        if stream != completion or not seq.isdigit():
            raise Failed(f"event id {event_id!r} is not '<completion id>:<seq>' of {completion!r}",
                         ids=show(repr(ids[:8])))
        parsed.append((event_id, int(seq)))
    return ex, chunks, parsed


@check("resume.event-ids", "resumable streams: every event of a keyed stream has an id "
       "'<completion id>:<seq>', seq growing (WHATWG HTML §9.2.6 id field)", requires=READY)
async def resume_event_ids(p: Probe) -> Passed:
    _, _, ids = await _keyed_stream(p)
    seqs = [seq for _, seq in ids]
    if seqs != sorted(seqs) or len(set(seqs)) < 2:
        raise Failed("event seqs do not grow", seqs=show(repr(seqs[:16])))
    return Passed(f"{len(ids)} events with growing ids", first=ids[0][0], last=ids[-1][0])


def _cut_point(ids: list[tuple[str, int]]) -> int:
    return len(ids) // 2


async def _resumed(p: Probe, ex: Exchange, what: str) -> Passed:
    _expect_ok(ex, what)
    _, chunks, ids = await _keyed_stream(p)
    cut = _cut_point(ids)
    before = _content(chunks[:cut])
    after_chunks = _chunks(ex)
    whole = _content(chunks)
    if before + _content(after_chunks) != whole:
        raise Failed(f"{what}: the text before the cut and after it is not the whole reply",
                     before=show(before), after=show(_content(after_chunks)), whole=show(whole))
    events = _events(ex)[0]
    seqs = [int((dict(e.fields).get("id") or ":-1").rpartition(":")[2] or -1) for e in events]
    if any(seq <= ids[cut - 1][1] for seq in seqs):
        raise Failed(f"{what}: an event at or before the resume point was sent again", seqs=show(repr(seqs[:8])))
    return Passed(f"{what}: the rest of the reply, from seq {ids[cut - 1][1]}", events=len(events))


@check("resume.last-event-id", "resumable streams: the same POST (same Idempotency-Key) with "
       "Last-Event-ID gets exactly the events after that one", requires=("resume.event-ids",))
async def resume_last_event_id(p: Probe) -> Passed:
    _, _, ids = await _keyed_stream(p)
    last = ids[_cut_point(ids) - 1][0]
    ex = await _keyed(p, "resume", {"stream": True}, ("Last-Event-ID", last))
    return await _resumed(p, ex, "POST with Last-Event-ID")


@check("resume.events-endpoint", "resumable streams: GET /v1/chat/completions/{id}/events with "
       "Last-Event-ID gets the events after that one", requires=("resume.event-ids",))
async def resume_events_endpoint(p: Probe) -> Passed:
    _, chunks, ids = await _keyed_stream(p)
    completion = chunks[0][1]["id"]
    last = ids[_cut_point(ids) - 1][0]
    ex = await p.http("GET", f"/v1/chat/completions/{completion}/events", headers=[("Last-Event-ID", last)])
    return await _resumed(p, ex, "GET …/events")
