"""The chat page over HTTP, without a browser: negotiation on /, types, ETag/304, CSP, 404s, HEAD.

Also checks the shipped files themselves: the page's total weight, no inline
script or style (the CSP forbids them), and no HTML-parsing sink in the script.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import unittest
from importlib import resources
from typing import Any

from equabot_gw.gateway import static
from equabot_gw.net.wsclient import connect
from tests.support import TOKEN, GatewayProcess, LiveGateway, base_config, error_of

STATIC = resources.files("equabot_gw") / "static"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
PAGE_BUDGET_BYTES = 60 * 1024


def file_bytes(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def csp_directives(policy: str) -> dict[str, list[str]]:
    directives = {}
    for item in policy.split(";"):
        name, *values = item.split()
        directives[name] = values
    return directives


class Client:
    """One-request-per-connection HTTP client on the gateway's port."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()


class ServedFilesTest(LiveGateway, unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.http = Client(cls.gw.port)

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return self.http.request("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def assertServes(self, path: str, name: str, content_type: str, accept: str = "*/*") -> dict[str, str]:
        status, headers, body = self.get(path, accept=accept)
        self.assertEqual(status, 200, body[:200])
        self.assertEqual(headers["content-type"], content_type)
        self.assertEqual(body, file_bytes(name))
        self.assertEqual(headers["content-length"], str(len(body)))
        self.assertRegex(headers["etag"], r'^"[0-9a-f]{32}"$')
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(headers["cache-control"], "no-cache")
        self.assertEqual(headers["referrer-policy"], "no-referrer")
        return headers

    def test_page_on_root_and_chat_for_browsers(self) -> None:
        for path in ("/", "/chat"):
            for accept in ("text/html", BROWSER_ACCEPT, "application/json, text/html;q=0.5"):
                with self.subTest(path=path, accept=accept):
                    headers = self.assertServes(path, "index.html", "text/html; charset=utf-8", accept)
                    self.assertEqual(headers["vary"], "accept")

    def test_assets_with_their_types(self) -> None:
        for path, name, ctype in (("/static/chat.js", "chat.js", "text/javascript; charset=utf-8"),
                                  ("/static/chat.css", "chat.css", "text/css; charset=utf-8"),
                                  ("/static/favicon.svg", "favicon.svg", "image/svg+xml"),
                                  ("/favicon.ico", "favicon.svg", "image/svg+xml")):
            with self.subTest(path):
                self.assertServes(path, name, ctype)

    def test_root_without_html_keeps_the_426_json(self) -> None:
        for accept in (None, "*/*", "application/json", "text/html;q=0", "text/plain, */*;q=0.1"):
            with self.subTest(accept=accept):
                status, headers, body = self.http.request("GET", "/", {"accept": accept} if accept else {})
                self.assertEqual(status, 426)
                self.assertEqual(headers["content-type"], "application/json")
                self.assertEqual(headers["upgrade"], "websocket")
                self.assertEqual(error_of(body)["code"], "upgrade_required")

    def test_strict_content_security_policy(self) -> None:
        for path in ("/", "/static/chat.js"):
            _, headers, _ = self.get(path, accept="text/html")
            csp = csp_directives(headers["content-security-policy"])
            host = f"127.0.0.1:{self.gw.port}"
            self.assertEqual(csp, {
                "default-src": ["'none'"], "script-src": ["'self'"], "style-src": ["'self'"],
                "img-src": ["'self'", "data:", "https:", "http:"],
                "connect-src": ["'self'", f"ws://{host}", f"wss://{host}"],
                "base-uri": ["'none'"], "form-action": ["'none'"], "frame-ancestors": ["'none'"]})

    def test_csp_host_cannot_inject_and_falls_back(self) -> None:
        for host in ("evil.example; script-src *", "[::1]:8080", "a b", "", None, "x" * 300):
            with self.subTest(host=host):
                csp = csp_directives(static.content_security_policy(host))
                self.assertEqual(csp["connect-src"], ["'self'", "ws:", "wss:"])
                self.assertEqual(csp["script-src"], ["'self'"])
        self.assertEqual(csp_directives(static.content_security_policy("Gateway.LAN:18789"))["connect-src"],
                         ["'self'", "ws://gateway.lan:18789", "wss://gateway.lan:18789"])

    def test_etag_and_if_none_match(self) -> None:
        for path, accept in (("/", "text/html"), ("/static/chat.css", "*/*")):
            _, headers, body = self.get(path, accept=accept)
            etag = headers["etag"]
            for condition in (etag, f"W/{etag}", f'"other", {etag}', "*"):
                with self.subTest(path=path, condition=condition):
                    status, got, again = self.get(path, accept=accept, if_none_match=condition)
                    self.assertEqual((status, again), (304, b""))
                    self.assertEqual(got["etag"], etag)
                    self.assertEqual(got["cache-control"], "no-cache")
                    # RFC 9110 §8.6: a 304's Content-Length is the 200's, or absent.
                    self.assertEqual(got.get("content-length", str(len(body))), str(len(body)))
            status, _, again = self.get(path, accept=accept, if_none_match='"not-it"')
            self.assertEqual((status, again), (200, body))

    def test_etag_is_a_hash_of_the_content(self) -> None:
        _, first, _ = self.get("/static/chat.js")
        _, second, _ = self.get("/static/chat.css")
        self.assertNotEqual(first["etag"], second["etag"])
        self.assertEqual(first["etag"], static.StaticFile.load("chat.js", "x").etag)

    def test_unknown_static_files_are_404_json(self) -> None:
        for path in ("/static/nope.js", "/static/index.html", "/static/../static/chat.js",
                     "/static/%2e%2e/gateway/app.py", "/static/chat.js/x", "/static/CHAT.JS",
                     "/static/"):
            with self.subTest(path):
                status, headers, body = self.get(path)
                self.assertEqual(status, 404)
                self.assertEqual(headers["content-type"], "application/json")
                self.assertEqual(error_of(body)["code"], "not_found")

    def test_head(self) -> None:
        for path, accept in (("/", "text/html"), ("/chat", "text/html"), ("/static/chat.js", "*/*"),
                             ("/favicon.ico", "*/*")):
            with self.subTest(path):
                _, full, body = self.get(path, accept=accept)
                status, headers, nothing = self.http.request("HEAD", path, {"accept": accept})
                self.assertEqual((status, nothing), (200, b""))
                self.assertEqual(headers["content-length"], str(len(body)))
                self.assertEqual(headers["etag"], full["etag"])

    def test_other_methods_are_405(self) -> None:
        status, headers, body = self.http.request("POST", "/", {"accept": "text/html"})
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertEqual(error_of(body)["code"], "method_not_allowed")

    def test_upgrade_from_the_page_still_works(self) -> None:
        """A browser's upgrade carries Origin (same host) and may carry Accept: still the control protocol."""
        async def hello(path: str) -> dict[str, Any]:
            origin = f"http://127.0.0.1:{self.gw.port}"
            ws = await connect(f"ws://127.0.0.1:{self.gw.port}{path}",
                               headers=(("origin", origin), ("accept", "text/html")))
            ws.send(json.dumps({"type": "req", "id": "1", "method": "connect", "params": {
                "minProtocol": 3, "maxProtocol": 3, "auth": {"token": TOKEN}, "role": "operator",
                "client": {"id": "webchat", "version": "0.1.0", "platform": "web", "mode": "webchat"},
                "scopes": ["operator.admin"]}}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            while frame.get("type") != "res":
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.close()
            return frame
        for path in ("/", "/chat"):
            with self.subTest(path):
                frame = asyncio.run(hello(path))
                self.assertTrue(frame["ok"], frame)
                self.assertEqual(frame["payload"]["type"], "hello-ok")


class WithoutOpenAIEndpointTest(unittest.TestCase):
    def test_page_served_when_chat_completions_is_off(self) -> None:
        data = base_config()
        data["gateway"]["http"]["endpoints"]["chatCompletions"]["enabled"] = False
        with GatewayProcess(data) as gw:
            status, headers, body = Client(gw.port).request("GET", "/", {"accept": "text/html"})
            self.assertEqual((status, body), (200, file_bytes("index.html")))
            status, _, _ = Client(gw.port).request("POST", "/v1/chat/completions", {})
            self.assertEqual(status, 404)


class ShippedFilesTest(unittest.TestCase):
    def test_page_weight_under_budget(self) -> None:
        total = sum(len(file_bytes(name)) for name in (static.PAGE, *static.ASSETS))
        self.assertLess(total, PAGE_BUDGET_BYTES)

    def test_page_references_only_served_files(self) -> None:
        html = file_bytes("index.html").decode()
        refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
        self.assertTrue(refs)
        for ref in refs:
            with self.subTest(ref):
                self.assertTrue(ref == "/favicon.ico" or ref.removeprefix("/static/") in static.ASSETS, ref)

    def test_no_inline_script_or_style(self) -> None:
        html = file_bytes("index.html").decode()
        self.assertEqual(re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html), [])
        self.assertNotRegex(html, r"<style|\sstyle=|\son[a-z]+=|javascript:")

    def test_script_has_no_html_sinks_and_no_logging(self) -> None:
        js = file_bytes("chat.js").decode()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function", "setAttribute(\"on", "console.", "localStorage", "location.search",
                     "location.hash"):
            with self.subTest(sink):
                self.assertFalse(sink in js, f"{sink} in chat.js")

    def test_accepts_html(self) -> None:
        for accept, expected in (("text/html", True), (BROWSER_ACCEPT, True), ("TEXT/HTML; q=1", True),
                                 ("text/html;q=0", False), ("text/html;q=0.0", False), ("*/*", False),
                                 ("text/*", False), ("", False), (None, False), ("text/html;q=x", False),
                                 ("application/xhtml+xml", False)):
            with self.subTest(accept=accept):
                self.assertIs(static.accepts_html(accept), expected)


if __name__ == "__main__":
    unittest.main()
