"""Peer: the echo chat completion as an aiohttp web application.

Run: ``python bench/servers/aiohttp_app.py --port N``. Streams one SSE event
per ``write`` (the way an aiohttp user writes it); writes no transcript.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

import echo

_ids = echo.Ids()
_JSON = {"content-type": "application/json"}


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', headers=_JSON)


async def completions(request: web.Request) -> web.StreamResponse:
    if not echo.authorized(request.headers.get("authorization")):
        return web.Response(status=401, body=echo.error_json(401, "invalid token",
                                                             "invalid_request_error"),
                             headers={**_JSON, "www-authenticate": "Bearer"})
    try:
        parsed = echo.parse(await request.read())
    except ValueError as exc:
        return web.Response(status=400, body=echo.error_json(400, str(exc),
                                                             "invalid_request_error"), headers=_JSON)
    completion_id = _ids.next()
    if not parsed.stream:
        return web.Response(body=echo.completion(parsed, completion_id), headers=_JSON)
    response = web.StreamResponse(headers=dict(echo.SSE_HEADERS))
    await response.prepare(request)
    chunks = echo.Chunks(parsed, completion_id)
    delay = parsed.delay
    await response.write(chunks.role())
    for word in parsed.deltas():
        if delay:
            await asyncio.sleep(delay)
        await response.write(chunks.delta(word))
    for event in chunks.end():
        await response.write(event)
    await response.write_eof()
    return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", completions)
    # backlog 2048 like uvicorn and equabot_gw (aiohttp's default is 128);
    # keep-alive 75 s is aiohttp's default.
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=2048, access_log=None,
                print=None, handle_signals=True)


if __name__ == "__main__":
    main()
