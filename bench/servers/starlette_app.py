"""Peer: the echo chat completion as a Starlette app, served by uvicorn.

Run: ``uvicorn starlette_app:app --app-dir bench/servers``. Streams one SSE
event per ``yield`` (the way a Starlette user writes it); writes no transcript.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import echo

_ids = echo.Ids()
_JSON = "application/json"


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', headers={"content-type": _JSON})


async def completions(request: Request) -> Response:
    if not echo.authorized(request.headers.get("authorization")):
        return Response(echo.error_json(401, "invalid token", "invalid_request_error"), 401,
                        headers={"content-type": _JSON, "www-authenticate": "Bearer"})
    try:
        parsed = echo.parse(await request.body())
    except ValueError as exc:
        return Response(echo.error_json(400, str(exc), "invalid_request_error"), 400,
                        headers={"content-type": _JSON})
    completion_id = _ids.next()
    if not parsed.stream:
        return Response(echo.completion(parsed, completion_id), headers={"content-type": _JSON})
    return StreamingResponse(_events(parsed, completion_id), headers=dict(echo.SSE_HEADERS))


async def _events(parsed: echo.Echo, completion_id: str):
    chunks = echo.Chunks(parsed, completion_id)
    delay = parsed.delay
    yield chunks.role()
    for word in parsed.deltas():
        if delay:
            await asyncio.sleep(delay)
        yield chunks.delta(word)
    for event in chunks.end():
        yield event


app = Starlette(routes=[
    Route("/health", health),
    Route("/v1/chat/completions", completions, methods=["POST"]),
])
