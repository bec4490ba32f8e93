"""The chat page: files shipped in ``equabot_gw/static``, served with strict headers.

Owns ``GET /`` and ``GET /chat`` content negotiation — the page to a browser
(``Accept: text/html``), the WebSocket control protocol to an upgrade, the
protocol's own 426 answer to anyone else — and ``/static/<name>`` and
``/favicon.ico``. Files are read once, at construction; a request picks one
by exact name from a fixed table, never by joining request text into a path.
The files hold no secret, so serving them needs no auth: the page
authenticates in the WebSocket ``connect`` like every other client. Knows
nothing of the control protocol beyond the handler it delegates to.
"""

from __future__ import annotations

import hashlib
import pkgutil
import re
from typing import Final, NamedTuple

from ..errors import ApiError
from ..net import routes as http

# name -> content type (RFC 9110 §8.3; charset for text, RFC 6838 §4.2.1)
ASSETS: Final = {
    "chat.css": "text/css; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",       # RFC 9239 §6
    "favicon.svg": "image/svg+xml",
}
PAGE: Final = "index.html"
PAGE_TYPE: Final = "text/html; charset=utf-8"

# The page loads only its own script and style sheet, images (its own, and
# those a reply carries), and opens one WebSocket to the host it came from.
_CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; "
               "img-src 'self' data: https: http:; connect-src {connect}; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Both patterns are compiled by ``re`` on first use (and cached there), not at start-up.
# A Host value that may be written into the policy as a host-source (CSP3
# §2.3.1: host-char is ALPHA / DIGIT / "-"); anything else (IPv6 literals,
# junk) falls back to any WebSocket, which 'self' alone would not allow in
# browsers that predate CSP3's ws-for-'self' rule.
_HOST_SOURCE: Final = r"(?:[a-z0-9-]{1,63}\.){0,126}[a-z0-9-]{1,63}(?::[0-9]{1,5})?"
# RFC 9110 §8.8.3: entity-tag = [ weak ] opaque-tag; etagc excludes DQUOTE.
_ENTITY_TAG: Final = r'(?:W/)?("[^"]*")'


class StaticFile(NamedTuple):
    """One file's bytes, content type and strong validator."""

    body: bytes
    content_type: str
    etag: str

    @classmethod
    def load(cls, name: str, content_type: str) -> StaticFile:
        # pkgutil, not importlib.resources (which imports tempfile, shutil and
        # compression modules at start-up); both read through the package's loader.
        body = pkgutil.get_data("equabot_gw", f"static/{name}")
        if body is None:
            raise FileNotFoundError(f"equabot_gw/static/{name}")
        return cls(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def content_security_policy(host: str | None) -> str:
    """The page's policy; ``connect-src`` names the request's own host when ``host`` is a plain name."""
    name = (host or "").strip().lower()
    if re.fullmatch(_HOST_SOURCE, name):
        return _CSP.format(connect=f"'self' ws://{name} wss://{name}")
    return _CSP.format(connect="'self' ws: wss:")


def accepts_html(accept: str | None) -> bool:
    """Whether an ``Accept`` field lists ``text/html`` with a non-zero weight (RFC 9110 §12.5.1).

    ``*/*`` alone does not count: clients that send it (curl, SDKs) keep the
    protocol's JSON answer; browsers name ``text/html`` explicitly.
    """
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() != "text/html":
            continue
        weight = next((p.partition("=")[2] for p in params if p.lower().startswith("q=")), "1")
        try:
            return float(weight) > 0
        except ValueError:
            return False
    return False


def none_match(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: true when ``If-None-Match`` is ``*`` or lists ``etag`` (weak comparison)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return etag in re.findall(_ENTITY_TAG, if_none_match)


class ChatPage:
    """Handlers for the page's routes; ``upgrade`` answers ``/`` for everything but the page."""

    def __init__(self, upgrade: http.Handler) -> None:
        self.upgrade = upgrade
        self.page = StaticFile.load(PAGE, PAGE_TYPE)
        self.assets = {name: StaticFile.load(name, ctype) for name, ctype in ASSETS.items()}

    async def root(self, request: http.HTTPRequest) -> http.AnyResponse:
        """``GET /`` and ``/chat``: the page for a browser, else what the control protocol answers."""
        if request.headers.get("upgrade") is None and accepts_html(request.headers.get("accept")):
            return self._serve(request, self.page, (("vary", "accept"),))
        return await self.upgrade(request)

    async def asset(self, request: http.HTTPRequest) -> http.Response:
        """``GET /static/<name>``: one of the known files, else 404."""
        name = request.params.get("name", "")
        file = self.assets.get(name)
        if file is None:
            raise ApiError(404, f"no static file {name[:100]!r}", code="not_found")
        return self._serve(request, file)

    async def favicon(self, request: http.HTTPRequest) -> http.Response:
        """``GET /favicon.ico``: the SVG icon (browsers ask for this path on their own)."""
        return self._serve(request, self.assets["favicon.svg"])

    def _serve(self, request: http.HTTPRequest, file: StaticFile,
               extra: tuple[tuple[str, str], ...] = ()) -> http.Response:
        # RFC 9110 §15.4.5: a 304 carries the validators and cache fields a
        # 200 would; the server sends its Content-Length but not the body.
        headers = [("etag", file.etag), ("cache-control", "no-cache"), *extra]
        if none_match(request.headers.get("if-none-match"), file.etag):
            return http.Response(304, headers, file.body)
        headers += [("content-type", file.content_type),
                    ("content-security-policy", content_security_policy(request.headers.get("host"))),
                    ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer")]
        return http.Response(200, headers, file.body)
