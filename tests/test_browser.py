"""The chat page in a real browser: headless chromium driven over the DevTools protocol.

A real gateway (port 0, temporary state dir) with two echo agents — ``main``
paced at 60 ms a word so that streaming is visible, ``slow`` at 250 ms so
that Stop lands mid-reply — and one chromium for the module. Each test gets
a fresh tab (fresh sessionStorage) and fails on any console error.
Screenshots of each step land in tests/artifacts/ for a person to look at.
Without /usr/bin/chromium the module is skipped with one line saying how to
get it.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import sys
import threading
import time
import unittest
from typing import Any

from equabot_gw.gateway.static import ChatPage
from equabot_gw.net import routes, server, wshandshake
from equabot_gw.net.wsstream import WebSocket
from tests.cdp import CHROMIUM, SKIP_REASON, CDP, Chromium, Page
from tests.support import ROOT, TOKEN, GatewayProcess, base_config

ARTIFACTS = ROOT / "tests" / "artifacts"
PAGE_BUDGET_BYTES = 60 * 1024
BROWSER: Chromium | None = None


def setUpModule() -> None:
    global BROWSER
    if not os.path.exists(CHROMIUM):
        print(SKIP_REASON, file=sys.stderr)
        raise unittest.SkipTest(SKIP_REASON)
    BROWSER = Chromium().start()


def tearDownModule() -> None:
    if BROWSER is not None:
        BROWSER.stop()


def gateway_data() -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"list": [{"id": "main", "default": True, "model": "paced/echo"},
                               {"id": "slow", "name": "Slow echo", "model": "slow/echo"}]}
    data["models"] = {"providers": {"paced": {"api": "echo", "delayMs": 60},
                                    "slow": {"api": "echo", "delayMs": 250}}}
    return data


# Page-side helpers (evaluated in the tab; test code, so CSP does not apply).
LAST_REPLY = "[...document.querySelectorAll('#log .msg.assistant')].pop()"
RECORD_STATES = """(() => {
  window.__states = [];
  new MutationObserver(() => {
    const reply = %s;
    const text = reply ? reply.querySelector('.body').textContent : '';
    if (text && text !== window.__states[window.__states.length - 1]) window.__states.push(text);
  }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
})()""" % LAST_REPLY


class BrowserTestCase(unittest.IsolatedAsyncioTestCase):
    """A fresh tab per test on the class's gateway; console errors fail the test."""

    gw: GatewayProcess
    allowed_errors: tuple[str, ...] = ()

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.gw = GatewayProcess(gateway_data()).start()

    @classmethod
    def tearDownClass(cls) -> None:
        code = cls.gw.stop()
        cls.gw.tmp.cleanup()
        super().tearDownClass()
        assert code == 0, f"the gateway exited with {code}"

    async def asyncSetUp(self) -> None:
        assert BROWSER is not None
        self.cdp = await CDP.open(BROWSER.ws_url)
        self.pages: list[Page] = []

    async def asyncTearDown(self) -> None:
        for page in self.pages:
            await page.close()
        await self.cdp.close()

    async def new_page(self, **metrics: Any) -> Page:
        page = await self.cdp.new_page(**metrics)
        self.pages.append(page)
        return page

    def assertNoConsoleErrors(self, page: Page) -> None:
        errors = [e for e in page.errors() if not any(a in e["text"] for a in self.allowed_errors)]
        self.assertEqual(errors, [], "console errors on the page")

    async def shot(self, page: Page, name: str) -> None:
        await page.screenshot(ARTIFACTS / f"{name}.png")

    async def open_connected(self, url: str | None = None, **metrics: Any) -> Page:
        """A tab on the page, token entered by keyboard, connected."""
        page = await self.new_page(**metrics)
        await page.goto((url or self.gw.url) + "/")
        await page.click("#token")
        await page.insert_text(TOKEN)
        await page.press("Enter")
        await page.wait_for("document.getElementById('state').dataset.state === 'connected'")
        await page.wait_for("document.querySelectorAll('#agent option').length > 0")
        return page

    async def send(self, page: Page, text: str) -> None:
        await page.click("#msg")
        await page.insert_text(text)
        await page.press("Enter")

    async def wait_reply(self, page: Page, state: str = "final", timeout: float = 20.0) -> dict[str, Any]:
        return await page.wait_for(f"""(() => {{ const r = {LAST_REPLY};
            return r && r.dataset.state === {json.dumps(state)} ?
              {{text: r.querySelector('.body').textContent, note: (r.querySelector('.note') || {{}}).textContent || '',
               usage: (r.querySelector('.usage') || {{}}).textContent || '',
               busy: r.querySelector('.body').getAttribute('aria-busy')}} : null; }})()""", timeout)


class ChatFlowTest(BrowserTestCase):
    """The acceptance flow: token, streamed reply, Stop, reload with history, wrong token."""

    async def test_acceptance_flow(self) -> None:
        page = await self.new_page()
        await page.goto(self.gw.url + "/")
        self.assertEqual(await page.evaluate("document.getElementById('state').dataset.state"), "offline")
        await self.shot(page, "01-page")

        # The token, typed and submitted by keyboard; kept in sessionStorage only.
        await page.click("#token")
        await page.insert_text(TOKEN)
        await page.press("Enter")
        await page.wait_for("document.getElementById('state').dataset.state === 'connected'")
        await page.wait_for("document.querySelectorAll('#agent option').length === 2")
        self.assertNotIn(TOKEN, await page.evaluate("location.href"))
        self.assertEqual(await page.evaluate("sessionStorage.getItem('equabot.token')"), TOKEN)
        self.assertEqual(await page.evaluate("localStorage.length"), 0)
        self.assertEqual(await page.evaluate("[...document.querySelectorAll('#agent option')].map(o => o.textContent)"),
                         ["main", "Slow echo"])
        await self.shot(page, "02-connected")

        # A message; the reply streams in word by word, each state the whole text so far.
        words = "one two three four five six seven eight nine ten"
        await page.evaluate(RECORD_STATES)
        await self.send(page, words)
        await page.wait_for("window.__states.length >= 3")
        await self.shot(page, "03-streaming")
        reply = await self.wait_reply(page)
        await self.shot(page, "04-reply")
        final = f"Echo (turn 1): {words}"
        self.assertEqual(reply["text"], final)
        self.assertEqual(reply["busy"], "false")
        # The final event carries no usage: the page reads it from the history, a round trip later.
        usage = await page.wait_for(f"(() => {{ const u = {LAST_REPLY}.querySelector('.usage');"
                                    f" return u ? u.textContent : null; }})()")
        self.assertRegex(usage, r"^\d+ in · \d+ out · \d+ tokens$")
        states = await page.evaluate("window.__states")
        intermediate = [s for s in states if s not in (final, "…")]
        self.assertGreaterEqual(len(intermediate), 3, states)
        for before, after in zip(intermediate, intermediate[1:] + [final]):
            self.assertTrue(after.startswith(before) and len(after) > len(before),
                            f"streamed states must grow by appending: {before!r} -> {after!r}")
        self.assertEqual(await page.evaluate("document.getElementById('log').getAttribute('aria-live')"), "polite")
        self.assertEqual(await page.evaluate("document.querySelector('#log .msg.user .body').textContent"), words)
        first_key = await page.evaluate("sessionStorage.getItem('equabot.session')")
        self.assertRegex(first_key, r"^agent:main:web-")

        # Stop mid-reply on the slow agent.
        await page.evaluate("(() => { const s = document.getElementById('agent');"
                            " s.value = 'slow'; s.dispatchEvent(new Event('change')); })()")
        slow_key = await page.evaluate("sessionStorage.getItem('equabot.session')")
        self.assertRegex(slow_key, r"^agent:slow:web-")
        long_text = " ".join(f"w{i}" for i in range(40))
        await self.send(page, long_text)
        await page.wait_for(f"(() => {{ const r = {LAST_REPLY}; return r && r.dataset.state === 'streaming'"
                            " && r.querySelector('.body').textContent.split(' ').length >= 6; })()")
        self.assertFalse(await page.evaluate("document.getElementById('stop').disabled"))
        await page.click("#stop")
        stopped = await self.wait_reply(page, "aborted", timeout=10)
        await self.shot(page, "05-stopped")
        self.assertEqual(stopped["note"], "Stopped")
        self.assertTrue(f"Echo (turn 1): {long_text}".startswith(stopped["text"]), stopped["text"])
        self.assertLess(len(stopped["text"]), len(f"Echo (turn 1): {long_text}"))
        await page.wait_for("document.getElementById('stop').disabled && !document.getElementById('send').disabled")
        self.assertEqual(await page.evaluate("document.activeElement.id"), "msg")

        # Reload: the token is still in this tab's sessionStorage, so it reconnects;
        # both sessions are listed and each shows its history.
        await page.reload()
        await page.wait_for("document.getElementById('state').dataset.state === 'connected'")
        for key in (first_key, slow_key):
            await page.wait_for(f"!!document.querySelector('#sessions button[data-key={json.dumps(key)}]')")
        await page.click(f"#sessions button[data-key={json.dumps(first_key)}]")
        await page.wait_for(f"""(() => {{ const m = [...document.querySelectorAll('#log .msg')];
            return m.length === 2 && m[0].textContent.includes({json.dumps(words)})
              && m[1].querySelector('.body').textContent === {json.dumps(final)}; }})()""")
        self.assertEqual(await page.evaluate("document.querySelector('#sessions [aria-current=true]').dataset.key"),
                         first_key)
        await self.shot(page, "06-reloaded-history")
        await page.click(f"#sessions button[data-key={json.dumps(slow_key)}]")
        await page.wait_for(f"(() => {{ const r = {LAST_REPLY}; return r && r.dataset.state === 'aborted'"
                            " && r.querySelector('.note').textContent === 'Stopped'; })()")
        # Read back, the stopped reply reads as it did live: its turn counted no tokens,
        # and "0 in · 0 out · 0 tokens" would say nothing.
        self.assertIsNone(await page.evaluate(f"{LAST_REPLY}.querySelector('.usage')"))
        self.assertNoConsoleErrors(page)

        # A wrong token, in a fresh tab: a clear error, and no retry behind the user's back
        # (browser-origin auth failures count against the limiter).
        other = await self.new_page()
        await other.goto(self.gw.url + "/")
        await other.click("#token")
        await other.insert_text("wrong-token")
        await other.press("Enter")
        error = await other.wait_for("(() => { const e = document.getElementById('auth-error');"
                                     " return !e.hidden && e.textContent; })()")
        self.assertIn("refused the token", error)
        self.assertEqual(await other.evaluate("document.getElementById('state').dataset.state"), "error")
        self.assertEqual(await other.evaluate("document.activeElement.id"), "token")
        await self.shot(other, "07-wrong-token")
        await other.evaluate("new Promise(r => setTimeout(r, 1200))")
        self.assertEqual(other.websockets_opened, 1)
        self.assertNoConsoleErrors(other)


class SafetyAndLayoutTest(BrowserTestCase):
    async def test_model_output_cannot_inject_markup(self) -> None:
        page = await self.open_connected()
        attack = ('<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>'
                  ' [click](javascript:window.__pwned=3) <b>bold?</b>')
        await self.send(page, attack)
        reply = await self.wait_reply(page)
        await self.shot(page, "09-markup-as-text")
        self.assertEqual(reply["text"], "Echo (turn 1): " + attack)
        self.assertEqual(await page.evaluate("document.querySelectorAll('#log img, #log script, #log b').length"), 0)
        self.assertEqual(await page.evaluate("document.querySelectorAll('#log a').length"), 0)
        self.assertIsNone(await page.evaluate("window.__pwned"))
        self.assertNoConsoleErrors(page)

    async def test_hostile_lines_render_in_linear_time(self) -> None:
        # A heading followed by thousands of spaces held the page for minutes (a pattern
        # cubic in the line), a list item with U+2028 after them for seconds (quadratic).
        page = await self.open_connected()
        heading = "# a" + " " * 8000 + "b ##"
        item = "- item" + " " * 60000 + "c\u2028d"
        await page.evaluate(f"document.getElementById('msg').value = {json.dumps(chr(10).join(('x', heading, item)))}")
        await page.click("#msg")
        await page.press("Enter")
        await self.wait_reply(page)
        for who in ("user", "assistant"):
            with self.subTest(who):
                view = f"[...document.querySelectorAll('#log .msg.{who}')].pop()"
                self.assertEqual(await page.evaluate(f"{view}.querySelector('.md-h1').textContent"),
                                 "a" + " " * 8000 + "b")
                self.assertEqual(await page.evaluate(f"{view}.querySelector('li').textContent"), item[2:])
        self.assertNoConsoleErrors(page)

    async def test_a_socket_that_offers_subprotocols_opens(self) -> None:
        # A browser fails the handshake when the answer names none of the subprotocols it offered.
        page = await self.new_page()
        await page.goto(self.gw.url + "/")
        chosen = await page.evaluate("""new Promise(done => {
          const ws = new WebSocket(location.origin.replace(/^http/, 'ws') + '/', ['equabot.v1', 'chat']);
          ws.onopen = () => { done(ws.protocol); ws.close(); };
          ws.onerror = () => done('error');
        })""", timeout=10)
        self.assertEqual(chosen, "equabot.v1")
        self.assertNoConsoleErrors(page)

    async def test_markdown_renders_as_dom_nodes(self) -> None:
        page = await self.open_connected()
        await page.click("#msg")
        lines = ["Some **bold**, *em* and `code`.", "- item one", "- item two",
                 "[a link](https://example.com/docs) and [bad](javascript:alert(1)) and [rel](/x)",
                 "```python", "print('<b>hi</b>')", "```"]
        for i, line in enumerate(lines):
            await page.insert_text(line)
            if i < len(lines) - 1:
                await page.press("Enter", shift=True)     # Shift+Enter: a new line, nothing sent
        self.assertEqual(await page.evaluate("document.getElementById('msg').value"), "\n".join(lines))
        self.assertEqual(await page.evaluate("document.querySelectorAll('#log .msg').length"), 0)
        await page.press("Enter")
        await self.wait_reply(page)
        body = f"{LAST_REPLY}.querySelector('.body')"
        self.assertEqual(await page.evaluate(f"{body}.querySelector('strong').textContent"), "bold")
        self.assertEqual(await page.evaluate(f"{body}.querySelector('em').textContent"), "em")
        self.assertEqual(await page.evaluate(f"{body}.querySelector('p code').textContent"), "code")
        self.assertEqual(await page.evaluate(f"[...{body}.querySelectorAll('ul li')].map(l => l.textContent)"),
                         ["item one", "item two"])
        links = await page.evaluate(f"[...{body}.querySelectorAll('a')].map(a => [a.textContent, a.href, a.rel])")
        self.assertEqual(links, [["a link", "https://example.com/docs", "noopener noreferrer"]])
        self.assertEqual(await page.evaluate(f"{body}.querySelector('pre code').textContent"), "print('<b>hi</b>')")
        self.assertEqual(await page.evaluate(f"{body}.querySelectorAll('b').length"), 0)
        await self.shot(page, "10-markdown")
        self.assertNoConsoleErrors(page)

    async def test_keyboard_reachable_and_labelled(self) -> None:
        page = await self.open_connected()
        tree = await page.call("Accessibility.getFullAXTree")
        named = {(n.get("role", {}).get("value"), n.get("name", {}).get("value")) for n in tree["nodes"]}
        for role_name in (("textbox", "Gateway token"), ("button", "Connect"), ("combobox", "Agent"),
                          ("button", "New chat"), ("textbox", "Message"), ("button", "Send"),
                          ("button", "Stop"), ("log", "Conversation")):
            self.assertIn(role_name, named)
        # Tab from the token field walks forward to the composer and Send, in page order.
        await page.click("#token")
        order = []
        for _ in range(30):
            await page.press("Tab")
            order.append(await page.evaluate("document.activeElement.id || document.activeElement.className"))
            if order[-1] == "send":
                break
        expected = ["connect", "agent", "new", "log", "msg", "send"]
        self.assertEqual([i for i in order if i in expected], expected, order)
        # Enter in the composer sends.
        await self.send(page, "by keyboard")
        reply = await self.wait_reply(page)
        self.assertEqual(reply["text"], "Echo (turn 1): by keyboard")
        self.assertNoConsoleErrors(page)

    async def test_page_weight_and_phone_width(self) -> None:
        page = await self.new_page(width=390, height=844, mobile=True)
        await page.goto(self.gw.url + "/")
        await page.wait_for("document.querySelector('link[rel=stylesheet]').sheet !== null")
        total = sum(page.loaded_bytes.values())
        self.assertTrue({"/", "/static/chat.css", "/static/chat.js"} <= {
            "/" + u.split("/", 3)[3] for u in page.loaded_bytes}, page.loaded_bytes)
        self.assertLess(total, PAGE_BUDGET_BYTES, page.loaded_bytes)
        await page.click("#token")
        await page.insert_text(TOKEN)
        await page.press("Enter")
        await page.wait_for("document.getElementById('state').dataset.state === 'connected'")
        await self.send(page, "small screen")
        await self.wait_reply(page)
        self.assertLessEqual(await page.evaluate("document.documentElement.scrollWidth"), 390)
        self.assertLessEqual(await page.evaluate("document.documentElement.scrollHeight"), 844)
        for element in ("msg", "send", "stop", "token"):
            right = await page.evaluate(f"document.getElementById('{element}').getBoundingClientRect().right")
            self.assertLessEqual(right, 390, element)
        await self.shot(page, "08-phone")
        # Dark by prefers-color-scheme.
        light = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        await page.call("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        dark = await page.wait_for(f"(() => {{ const c = getComputedStyle(document.body).backgroundColor;"
                                   f" return c !== {json.dumps(light)} && c; }})()")
        self.assertRegex(dark, r"^rgb\((\d{1,2}), (\d{1,2}), (\d{1,2})\)$")   # a dark colour
        await self.shot(page, "08-phone-dark")
        self.assertNoConsoleErrors(page)


class ReconnectTest(BrowserTestCase):
    """The gateway restarts: the page shows it and reconnects by itself."""

    # While the gateway is down, chromium itself logs each refused WebSocket
    # connection at error level; nothing else may appear.
    allowed_errors = ("WebSocket connection to",)

    async def test_reconnects_after_restart(self) -> None:
        page = await self.open_connected()
        port = self.gw.port
        self.assertEqual(self.gw.stop(), 0)
        self.gw.tmp.cleanup()
        await page.wait_for("['reconnecting', 'connecting'].includes(document.getElementById('state').dataset.state)")
        await self.shot(page, "11-reconnecting")
        restarted = GatewayProcess(gateway_data(), extra_args=("--port", str(port)))
        type(self).gw = restarted
        restarted.start()
        await page.wait_for("document.getElementById('state').dataset.state === 'connected'", timeout=40)
        await self.shot(page, "12-reconnected")
        await self.send(page, "after restart")
        reply = await self.wait_reply(page)
        self.assertEqual(reply["text"], "Echo (turn 1): after restart")
        for entry in page.errors():
            self.assertRegex(entry["text"], re.escape("WebSocket connection to") + ".*failed")
        self.assertNoConsoleErrors(page)


# An 8x8 PNG, as an image part would carry it.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEUlEQVR4nGPQz4/DihiGlgQAknA/AQHfICkAAAAASUVORK5CYII="
RICH_KEY = "agent:main:rich"
RICH_HISTORY = [
    {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"}], "timestamp": 1},
    {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                      {"type": "toolCall", "id": "call_1", "name": "get_weather",
                                       "arguments": {"city": "Paris", "note": "<b>x</b>"}}],
     "stopReason": "toolUse", "timestamp": 2},
    {"role": "toolResult", "toolCallId": "call_1", "toolName": "get_weather",
     "content": [{"type": "text", "text": "18 °C, <i>cloudy</i>"}], "isError": False, "timestamp": 3},
    {"role": "assistant", "content": [{"type": "text", "text": "Here is a map:"},
                                      {"type": "image", "data": PNG, "mimeType": "image/png"},
                                      {"type": "weird", "html": "<img src=x onerror=\"window.__pwned=1\">"}],
     "usage": {"input": 12, "output": 5, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 17},
     "stopReason": "stop", "timestamp": 4},
]


class OriginalGateway:
    """A scripted stand-in for the original Gateway: its frames, exactly as captured on the wire.

    Serves the chat page like equabot_gw does and answers the control
    protocol with the original's shapes: ``connect.challenge`` first,
    ``runId`` = the client's ``idempotencyKey``, cumulative ``chat`` deltas,
    a ``final`` without usage (the history carries it). Records what the
    page sends.
    """

    def __init__(self) -> None:
        self.router = routes.Router()
        page = ChatPage(self.upgrade)
        for path in ("/", "/chat"):
            self.router.add(path, ("GET",), page.root)
        self.router.add("/static/{name}", ("GET",), page.asset)
        self.router.add("/favicon.ico", ("GET",), page.favicon)
        self.server = server.HTTPServer(self.router)
        self.requests: list[tuple[float, dict[str, Any]]] = []
        self.challenged_at = 0.0
        self.history: dict[str, list[dict[str, Any]]] = {RICH_KEY: RICH_HISTORY}
        self.runs: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> str:
        await self.server.start("127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.port}"

    async def stop(self) -> None:
        for task in self.runs.values():
            task.cancel()
        await self.server.shutdown(2)

    async def upgrade(self, request: routes.HTTPRequest) -> routes.Upgrade:
        headers = wshandshake.server_handshake(request.method, request.version, request.headers)
        return routes.Upgrade(headers, lambda: WebSocket(client=False), self.serve)

    async def serve(self, ws: Any) -> None:
        seq = 0

        def event(name: str, payload: dict[str, Any]) -> None:
            nonlocal seq
            seq += 1
            ws.send(json.dumps({"type": "event", "event": name, "payload": payload, "seq": seq}))

        ws.send(json.dumps({"type": "event", "event": "connect.challenge",
                            "payload": {"nonce": "4d1d20d8-dbb1-4c83", "ts": int(time.time() * 1000)}}))
        self.challenged_at = time.monotonic()
        async for message in ws:
            frame = json.loads(message)
            self.requests.append((time.monotonic(), frame))
            answer = self.answer(frame["method"], frame["params"], event)
            ws.send(json.dumps({"type": "res", "id": frame["id"], **answer}))

    def answer(self, method: str, params: dict[str, Any], event: Any) -> dict[str, Any]:
        ok = lambda payload: {"ok": True, "payload": payload}     # noqa: E731
        if method == "connect":
            token = params.get("auth", {}).get("token")
            if token != TOKEN:     # the original's words; it closes 1008 right after
                why = "gateway token missing" if token is None else "gateway token mismatch"
                return {"ok": False, "error": {"code": "INVALID_REQUEST", "message": f"unauthorized: {why}"}}
            return ok({"type": "hello-ok", "protocol": 3, "server": {"version": "dev", "connId": "c1"},
                       "features": {"methods": ["chat.send"], "events": ["chat"]},
                       "snapshot": {"presence": [], "health": {}, "stateVersion": {"presence": 1}},
                       "policy": {"maxPayload": 26214400, "maxBufferedBytes": 52428800,
                                  "tickIntervalMs": 30000}})
        if method == "agents.list":
            return ok({"defaultId": "main", "mainKey": "main", "scope": "per-sender", "agents": [{"id": "main"}]})
        if method == "sessions.list":
            return ok({"ts": 1, "path": "(multiple)", "count": len(self.history), "defaults": {},
                       "sessions": [{"key": key, "kind": "direct", "updatedAt": 1} for key in self.history]})
        if method == "chat.history":
            messages = self.history.get(params["sessionKey"], [])
            return ok({"sessionKey": params["sessionKey"], "sessionId": "s1",
                       "messages": messages[-params.get("limit", 200):]})
        if method == "chat.send":
            run_id = params["idempotencyKey"]
            self.runs[run_id] = asyncio.ensure_future(self.run(run_id, params, event))
            return ok({"runId": run_id, "status": "started"})
        if method == "chat.abort":
            task = self.runs.get(params.get("runId", ""))
            if task is not None:
                task.cancel()
            return ok({"ok": True, "aborted": task is not None, "runIds": [params.get("runId")]})
        return {"ok": False, "error": {"code": "INVALID_REQUEST", "message": f"unknown method: {method}"}}

    async def run(self, run_id: str, params: dict[str, Any], event: Any) -> None:
        key, text = params["sessionKey"], f"You said: {params['message']}"
        base = {"runId": run_id, "sessionKey": key}
        words = text.split(" ")
        delay = 0.5 if "slowly" in text else 0.08
        seq = 0
        try:
            for i in range(1, len(words) + 1):
                await asyncio.sleep(delay)
                seq += 1
                event("chat", {**base, "seq": seq, "state": "delta", "message": {
                    "role": "assistant", "content": [{"type": "text", "text": " ".join(words[:i])}],
                    "timestamp": 1}})
        except asyncio.CancelledError:
            event("chat", {**base, "seq": seq + 1, "state": "aborted"})
            raise
        self.history.setdefault(key, []).extend([
            {"role": "user", "content": [{"type": "text", "text": params["message"]}], "timestamp": 1},
            {"role": "assistant", "content": [{"type": "text", "text": text}], "timestamp": 2,
             "usage": {"input": 3, "output": len(words), "totalTokens": 3 + len(words)}}])
        event("chat", {**base, "seq": seq + 1, "state": "final", "message": {
            "role": "assistant", "content": [{"type": "text", "text": text}], "timestamp": 2}})


class OriginalShapesTest(BrowserTestCase):
    """The page against the original Gateway's frames: challenge, cumulative deltas, rich parts."""

    @classmethod
    def setUpClass(cls) -> None:
        unittest.IsolatedAsyncioTestCase.setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        unittest.IsolatedAsyncioTestCase.tearDownClass()

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.original = OriginalGateway()
        self.url = await self.original.start()

    async def asyncTearDown(self) -> None:
        await super().asyncTearDown()
        await self.original.stop()

    def sent(self, method: str) -> list[dict[str, Any]]:
        return [frame["params"] for _, frame in self.original.requests if frame["method"] == method]

    async def test_speaks_the_original_protocol(self) -> None:
        page = await self.open_connected(self.url)
        # connect answers the challenge at once, with the webchat client's fields.
        at, first = self.original.requests[0]
        self.assertEqual(first["method"], "connect")
        self.assertLess(at - self.original.challenged_at, 0.5)
        self.assertEqual(first["params"], {
            "minProtocol": 3, "maxProtocol": 3,
            "client": {"id": "webchat", "version": "0.1.0", "platform": "web", "mode": "webchat"},
            "auth": {"token": TOKEN}, "role": "operator", "scopes": ["operator.admin"]})

        # Cumulative deltas render by replacement; the usage comes from the history.
        await page.evaluate(RECORD_STATES)
        await self.send(page, "one two three four five six")
        reply = await self.wait_reply(page)
        final = "You said: one two three four five six"
        self.assertEqual(reply["text"], final)
        states = [s for s in await page.evaluate("window.__states") if s not in (final, "…")]
        self.assertGreaterEqual(len(states), 3, states)
        for before, after in zip(states, states[1:] + [final]):
            self.assertTrue(after.startswith(before) and len(after) > len(before), (before, after))
        await page.wait_for(f"{LAST_REPLY}.querySelector('.usage') !== null")
        self.assertEqual(await page.evaluate(f"{LAST_REPLY}.querySelector('.usage').textContent"),
                         "3 in · 8 out · 11 tokens")
        send = self.sent("chat.send")[0]
        self.assertEqual(set(send), {"sessionKey", "message", "idempotencyKey"})
        self.assertRegex(send["sessionKey"], r"^agent:main:web-")

        # Stop: chat.abort names the session and the run (= the idempotency key).
        await self.send(page, "say this slowly please, word by word, all of it")
        await page.wait_for(f"(() => {{ const r = {LAST_REPLY}; return r.dataset.state === 'streaming'"
                            " && r.querySelector('.body').textContent.startsWith('You said'); })()")
        await page.click("#msg")
        await page.press("Escape")
        stopped = await self.wait_reply(page, "aborted")
        self.assertEqual(stopped["note"], "Stopped")
        self.assertEqual(self.sent("chat.abort"), [{"sessionKey": send["sessionKey"],
                                                    "runId": self.sent("chat.send")[1]["idempotencyKey"]}])
        self.assertNoConsoleErrors(page)

    async def test_connect_without_a_token(self) -> None:
        """An empty field on Connect tries without credentials (auth mode "none"), and says what is missing."""
        page = await self.new_page()
        await page.goto(self.url + "/")
        await page.click("#connect")
        error = await page.wait_for("(() => { const e = document.getElementById('auth-error');"
                                    " return !e.hidden && e.textContent; })()")
        self.assertEqual(error, "This gateway needs its token: enter it and connect.")
        self.assertEqual(self.sent("connect")[0]["auth"], {})
        self.assertNoConsoleErrors(page)

    async def test_tool_calls_images_and_unknown_parts(self) -> None:
        page = await self.open_connected(self.url)
        await page.click(f"#sessions button[data-key={json.dumps(RICH_KEY)}]")
        await page.wait_for("document.querySelectorAll('#log .msg').length === 4")
        await self.shot(page, "13-rich-history")
        parts = await page.evaluate("""[...document.querySelectorAll('#log details.part')].map(d =>
            [d.className, d.querySelector('summary').textContent, d.querySelector('pre').textContent])""")
        self.assertEqual([p[:2] for p in parts], [["part tool-call", "Tool call: get_weather"],
                                                 ["part tool-result", "Tool result: get_weather"],
                                                 ["part unknown", "Part: weird"]])
        self.assertEqual(json.loads(parts[0][2]), {"city": "Paris", "note": "<b>x</b>"})
        self.assertEqual(parts[1][2], "18 °C, <i>cloudy</i>")
        self.assertIn('<img src=x onerror=\\"window.__pwned=1\\">', parts[2][2])
        await page.wait_for("[...document.querySelectorAll('#log img')].every(i => i.complete)")
        images = await page.evaluate("[...document.querySelectorAll('#log img')].map(i => [i.src, i.naturalWidth])")
        self.assertEqual(images, [[f"data:image/png;base64,{PNG}", 8]])
        self.assertEqual(await page.evaluate("document.querySelectorAll('#log b, #log i').length"), 0)
        self.assertEqual(await page.evaluate(f"{LAST_REPLY}.querySelector('.usage').textContent"),
                         "12 in · 5 out · 17 tokens")
        self.assertIsNone(await page.evaluate("window.__pwned"))
        self.assertNoConsoleErrors(page)


if __name__ == "__main__":
    unittest.main()


CROSS_ORIGIN_PAGE = b"<!doctype html><title>another origin</title><p>a page on another port</p>"


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(CROSS_ORIGIN_PAGE)))
        self.end_headers()
        self.wfile.write(CROSS_ORIGIN_PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CrossOriginErrorsTest(BrowserTestCase):
    """A page on an allowed origin reads the errors the server answers before any route.

    The page is served on one port, the gateway listens on another with that
    origin in ``gateway.http.cors.allowOrigins`` and small limits. Without CORS
    headers on these answers the browser would show the page only a failed
    fetch ("TypeError: Failed to fetch"), never the status or the error body.
    """

    # Chromium reports every 4xx a page fetches as a console error.
    allowed_errors = ("the server responded with a status of",)

    @classmethod
    def setUpClass(cls) -> None:
        unittest.IsolatedAsyncioTestCase.setUpClass()
        cls.page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
        threading.Thread(target=cls.page_server.serve_forever, daemon=True).start()
        cls.page_url = f"http://127.0.0.1:{cls.page_server.server_address[1]}"
        data = base_config(http={"maxBodyBytes": 4096, "maxHeaderBytes": 8192,
                                 "cors": {"allowOrigins": [cls.page_url]}})
        cls.gw = GatewayProcess(data).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.page_server.shutdown()
        cls.page_server.server_close()
        super().tearDownClass()

    async def fetch(self, page: Page, path: str, init: str) -> Any:
        """What the page's ``fetch`` of the gateway gives: status, a header and the JSON body,
        or the error it was rejected with."""
        return await page.evaluate(f"""fetch({json.dumps(self.gw.url + path)}, {init}).then(
            async r => ({{status: r.status, requestId: r.headers.get('x-request-id'), body: await r.json()}}),
            e => ({{failed: String(e)}}))""")

    async def test_413_431_and_404_reach_the_page(self) -> None:
        page = await self.new_page()
        await page.goto(self.page_url + "/")
        auth = f"'Authorization': 'Bearer {TOKEN}', 'Content-Type': 'application/json'"
        # A body over maxBodyBytes: refused on its Content-Length, before any route.
        got = await self.fetch(page, "/v1/chat/completions",
                               f"{{method: 'POST', headers: {{{auth}}}, body: 'x'.repeat(20000)}}")
        self.assertEqual((got.get("status"), got.get("body", {}).get("error", {}).get("code")),
                         (413, "request_too_large"), got)
        self.assertTrue(got["requestId"])       # an exposed header is readable too
        # A head over maxHeaderBytes (a header field the page added).
        got = await self.fetch(page, "/v1/models",
                               f"{{headers: {{{auth}, 'X-Big': 'b'.repeat(10000)}}}}")
        self.assertEqual((got.get("status"), got.get("body", {}).get("error", {}).get("code")),
                         (431, "header_fields_too_large"), got)
        # No route: the router's 404 (to a simple request: a preflight of a path
        # that does not exist cannot succeed).
        got = await self.fetch(page, "/v1/nothing", "{}")
        self.assertEqual((got.get("status"), got.get("body", {}).get("error", {}).get("code")),
                         (404, "not_found"), got)
        # The same page still gets its answers from a route.
        got = await self.fetch(page, "/v1/models", f"{{headers: {{{auth}}}}}")
        self.assertEqual(got.get("status"), 200, got)
        self.assertNoConsoleErrors(page)
