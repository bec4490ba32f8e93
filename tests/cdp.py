"""A small Chrome DevTools Protocol driver for the browser tests: headless chromium, one tab per page.

``Chromium`` runs Debian's ``/usr/bin/chromium`` headless with a throw-away
profile and reads its DevTools port from ``DevToolsActivePort``; ``CDP`` speaks
the protocol over the package's own WebSocket client (the standard library is
all it needs); ``Page`` is one tab: navigate, evaluate, wait for a DOM state,
type, press keys, click, take screenshots, and collect every console message
and exception so a test can assert that none was an error.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

from equabot_gw.net.wsclient import connect

CHROMIUM = "/usr/bin/chromium"
SKIP_REASON = ("chat page browser tests skipped: no /usr/bin/chromium "
               "(install it with: apt-get install chromium)")
# Screenshots are a few hundred KiB of base64; the whole AX tree can be larger.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KEYS = {  # key -> (code, windowsVirtualKeyCode, text)
    "Enter": ("Enter", 13, "\r"), "Tab": ("Tab", 9, ""), "Escape": ("Escape", 27, ""),
}


class CDPError(Exception):
    """A command the browser answered with an error, or a page-side exception."""


class Chromium:
    """A headless chromium process with its own profile directory; ``ws_url`` once started."""

    def __init__(self, *, width: int = 1024, height: int = 768) -> None:
        self.size = (width, height)
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile = ""
        self.ws_url = ""

    def start(self, timeout: float = 60.0) -> Chromium:
        self.profile = tempfile.mkdtemp(prefix="equabot-chromium-")
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--no-default-browser-check",
                "--mute-audio", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                f"--window-size={self.size[0]},{self.size[1]}", "about:blank"]
        # Its own process group, so that stop() ends the renderers it forks too.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        port_file = pathlib.Path(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            lines = port_file.read_text().split("\n") if port_file.exists() else []
            if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].strip():
                self.ws_url = f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"chromium did not start within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        if self.profile:
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = ""


class CDP:
    """One DevTools connection to the browser endpoint; pages are flattened target sessions."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, url: str) -> CDP:
        return cls(await connect(url, max_message_bytes=MAX_MESSAGE_BYTES, ping_interval=None))

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                data = json.loads(message)
                if "id" in data:
                    future = self._waiting.pop(data["id"], None)
                    if future is not None and not future.done():
                        if "error" in data:
                            future.set_exception(CDPError(json.dumps(data["error"])))
                        else:
                            future.set_result(data.get("result", {}))
                elif data.get("sessionId") in self._pages:
                    self._pages[data["sessionId"]].on_event(data["method"], data.get("params", {}))
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(CDPError("DevTools connection closed"))

    async def call(self, method: str, params: dict[str, Any] | None = None, *,
                   session: str | None = None, timeout: float = 30.0) -> Any:
        """Send one command and return its result; raises ``CDPError`` or ``TimeoutError``."""
        msg_id = next(self._ids)
        frame: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            frame["sessionId"] = session
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        self.ws.send(json.dumps(frame))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(msg_id, None)

    async def new_page(self, *, width: int | None = None, height: int | None = None,
                       mobile: bool = False) -> Page:
        """A fresh tab (fresh sessionStorage) with Runtime, Log, Page and Network events on."""
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True})
        page = Page(self, target["targetId"], attached["sessionId"])
        self._pages[page.session] = page
        for domain in ("Runtime", "Log", "Page", "Network"):
            await page.call(f"{domain}.enable")
        if width is not None:
            await page.call("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height or 800, "deviceScaleFactor": 1, "mobile": mobile})
        return page

    async def close(self) -> None:
        await self.ws.close()
        await self.ws.wait_closed()
        await asyncio.gather(self._reader, return_exceptions=True)


class Page:
    """One tab. ``console`` holds every console message, exception and log entry seen, as dicts."""

    def __init__(self, cdp: CDP, target: str, session: str) -> None:
        self.cdp = cdp
        self.target = target
        self.session = session
        self.console: list[dict[str, str]] = []
        self.websockets_opened = 0
        self.loaded_bytes: dict[str, int] = {}    # requestId -> encoded bytes (headers included)
        self._urls: dict[str, str] = {}
        self._load = asyncio.Event()

    # -- events --
    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            level = "error" if params.get("type") in ("error", "assert") else params.get("type", "log")
            self.console.append({"level": level, "source": "console", "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.console.append({"level": "error", "source": "exception", "text": text})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append({"level": entry.get("level", ""), "source": entry.get("source", ""),
                                 "text": entry.get("text", "")})
        elif method == "Page.loadEventFired":
            self._load.set()
        elif method == "Network.webSocketCreated":
            self.websockets_opened += 1
        elif method == "Network.requestWillBeSent":
            self._urls[params["requestId"]] = params.get("request", {}).get("url", "")
        elif method == "Network.loadingFinished":
            if self._urls.get(params["requestId"], "").startswith("http"):
                self.loaded_bytes[self._urls[params["requestId"]]] = int(params.get("encodedDataLength", 0))

    def errors(self) -> list[dict[str, str]]:
        return [entry for entry in self.console if entry["level"] == "error"]

    # -- commands --
    async def call(self, method: str, params: dict[str, Any] | None = None, *,
                   timeout: float = 30.0) -> Any:
        return await self.cdp.call(method, params, session=self.session, timeout=timeout)

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        self._load.clear()
        await self.call("Page.navigate", {"url": url})
        await asyncio.wait_for(self._load.wait(), timeout)

    async def reload(self, timeout: float = 30.0) -> None:
        self._load.clear()
        await self.call("Page.reload", {"ignoreCache": False})
        await asyncio.wait_for(self._load.wait(), timeout)

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited); page exceptions raise."""
        result = await self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0, interval: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy and return its value; ``AssertionError`` at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout} s: {expression}")
            await asyncio.sleep(interval)

    async def insert_text(self, text: str) -> None:
        """Type ``text`` into the focused element (as an IME commit: one input event)."""
        await self.call("Input.insertText", {"text": text})

    async def press(self, key: str, *, shift: bool = False) -> None:
        """A real key press (down, up) of ``Enter``, ``Tab`` or ``Escape``, optionally with Shift."""
        code, vk, text = KEYS[key]
        down: dict[str, Any] = {"type": "keyDown" if text else "rawKeyDown", "key": key, "code": code,
                                "windowsVirtualKeyCode": vk, "modifiers": 8 if shift else 0}
        if text:
            down |= {"text": text, "unmodifiedText": text}
        await self.call("Input.dispatchKeyEvent", down)
        await self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                                   "windowsVirtualKeyCode": vk,
                                                   "modifiers": 8 if shift else 0})

    async def click(self, selector: str) -> None:
        """A real mouse click at the centre of the first element matching ``selector``."""
        box = await self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return r.width && r.height ? {x: r.x + r.width / 2, y: r.y + r.height / 2} : null; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                        "button": "left", "clickCount": 1})

    async def screenshot(self, path: pathlib.Path) -> None:
        data = await self.call("Page.captureScreenshot", {"format": "png"}, timeout=60)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    async def close(self) -> None:
        self.cdp._pages.pop(self.session, None)
        try:
            await self.cdp.call("Target.closeTarget", {"targetId": self.target}, timeout=10)
        except (CDPError, TimeoutError):
            pass
