"""Auth and exposure: who may use the gateway, and that its secrets never leak.

Unit tests of ``auth.py`` (secret resolution, the constant-time check, the
failure limiter on an injected clock, ``X-Forwarded-For`` behind trusted
proxies); in-process gateways for the limiter as HTTP and the WebSocket
``connect`` see it; gateway subprocesses for the start-up rules (binding
beyond loopback, mode "none", the generated token); and one full run whose
every output — stdout, stderr, every file under the state dir, every HTTP
response, every WebSocket frame, ``config check`` — is searched for the
token, the password, the provider's API key and a secret header value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http.server
import json
import os
import pathlib
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any
from unittest import mock

from equabot_gw import auth as auth_mod
from equabot_gw import config as config_mod
from equabot_gw.auth import Authenticator, FailureLimiter, Secret, resolve_secret
from equabot_gw.config import AuthConfig, RateLimitConfig
from equabot_gw.errors import ApiError, ConfigError, ConnectionClosed, GatewayError
from equabot_gw.gateway.app import Gateway
from equabot_gw.gateway.client import ControlClient
from equabot_gw.net.wsclient import connect
from tests.support import TOKEN as SUPPORT_TOKEN
from tests.support import ROOT, GatewayProcess, base_config, error_of, raw_exchange, split_responses

TOKEN = "tok-Secret-9f8e7d6c5b4a"
PASSWORD = "pw-Secret-0a1b2c3d4e5f"
API_KEY = "sk-upstream-Secret-11223344556677"
HEADER_SECRET = "hdr-Secret-99887766"
WRONG = "wrong-Presented-55aa55aa"
SECRETS = {"token": TOKEN, "password": PASSWORD, "apiKey": API_KEY, "header": HEADER_SECRET}
LOOPBACK = "127.0.0.1"
UNAUTHORIZED_TOKEN = "invalid gateway token: send Authorization: Bearer <token>"
MISSING_TOKEN = "missing gateway token: send Authorization: Bearer <token>"
LOCKED = "too many failed authentication attempts; retry later"


def gateway_data(*, auth: dict[str, Any] | None = None, **gateway: Any) -> dict[str, Any]:
    """A config with the OpenAI endpoint on; ``auth`` and ``gateway`` keys as given."""
    return {"gateway": {"auth": auth if auth is not None else {"token": TOKEN},
                        "http": {"endpoints": {"chatCompletions": {"enabled": True}}}, **gateway}}


def limited(max_attempts: int = 3, lockout: float = 300.0, exempt_loopback: bool = False,
            **gateway: Any) -> dict[str, Any]:
    """A small limiter; loopback (where the tests run) is not exempt unless asked."""
    return gateway_data(auth={"token": TOKEN, "rateLimit": {
        "maxAttempts": max_attempts, "windowSeconds": 60, "lockoutSeconds": lockout,
        "exemptLoopback": exempt_loopback}}, **gateway)


@contextlib.asynccontextmanager
async def in_process(data: dict[str, Any], env: dict[str, str] | None = None):
    """A gateway on port 0 in this event loop, with ``env`` as its environment."""
    with tempfile.TemporaryDirectory() as tmp:
        config = config_mod.from_data(data, env={})
        gateway = Gateway(config, pathlib.Path(tmp), port=0, env=env or {})
        await gateway.start()
        try:
            yield gateway
        finally:
            await gateway.stop()


async def request(gw: Gateway, path: str = "/v1/models", *, token: str | None = None,
                  headers: tuple[tuple[str, str], ...] = (), method: str = "GET",
                  body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, gw.server.port)
    fields = [("Host", f"{LOOPBACK}:{gw.server.port}"), ("Connection", "close"), *headers]
    if token is not None:
        fields.append(("Authorization", f"Bearer {token}"))
    if body:
        fields += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    writer.write(head.encode("latin-1") + body)
    data = await reader.read()
    writer.close()
    [response] = split_responses(data)
    return response


async def ws_connect(gw: Gateway, secret: str | None, *,
                     headers: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, Any], Any]:
    """Open a control connection and send ``connect``: (the answer frame, the socket)."""
    ws = await connect("ws" + gw.url[4:], headers=headers)
    params: dict[str, Any] = {"minProtocol": 3, "maxProtocol": 3}
    if secret is not None:
        params["auth"] = {"token": secret}
    ws.send(json.dumps({"type": "req", "id": "c1", "method": "connect", "params": params}))
    while True:     # the connect.challenge event (and any other event) comes first
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if frame.get("type") != "event":
            return frame, ws


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- secret resolution ---------------------------------------------------------------

# (name, gateway.auth, environment, bind host, expected value, expected source);
# a value of None means the generated token file.
RESOLVED = (
    ("token from config", {"token": "cfg"}, {}, LOOPBACK, "cfg", "config (gateway.auth.token)"),
    ("token env wins over config", {"token": "cfg"}, {"EQUABOT_GATEWAY_TOKEN": "env"}, LOOPBACK,
     "env", "environment (EQUABOT_GATEWAY_TOKEN)"),
    ("token env without config", {}, {"EQUABOT_GATEWAY_TOKEN": "env"}, LOOPBACK, "env",
     "environment (EQUABOT_GATEWAY_TOKEN)"),
    ("empty token env is unset", {"token": "cfg"}, {"EQUABOT_GATEWAY_TOKEN": ""}, LOOPBACK, "cfg",
     "config (gateway.auth.token)"),
    ("password env ignored in token mode", {"token": "cfg"}, {"EQUABOT_GATEWAY_PASSWORD": "pw"},
     LOOPBACK, "cfg", "config (gateway.auth.token)"),
    ("password from config", {"mode": "password", "password": "cfg"}, {}, LOOPBACK, "cfg",
     "config (gateway.auth.password)"),
    ("password env wins over config", {"mode": "password", "password": "cfg"},
     {"EQUABOT_GATEWAY_PASSWORD": "env"}, LOOPBACK, "env", "environment (EQUABOT_GATEWAY_PASSWORD)"),
    ("token env ignored in password mode", {"mode": "password", "password": "cfg"},
     {"EQUABOT_GATEWAY_TOKEN": "tok"}, LOOPBACK, "cfg", "config (gateway.auth.password)"),
    ("token env beyond loopback", {}, {"EQUABOT_GATEWAY_TOKEN": "env"}, "0.0.0.0", "env",
     "environment (EQUABOT_GATEWAY_TOKEN)"),
    ("config token beyond loopback", {"token": "cfg"}, {}, "0.0.0.0", "cfg", "config (gateway.auth.token)"),
    ("generated on loopback", {}, {}, LOOPBACK, None, "file"),
    ("generated on localhost", {}, {}, "localhost", None, "file"),
    ("generated on ::1", {}, {}, "::1", None, "file"),
    ("empty config token on loopback", {"token": ""}, {}, LOOPBACK, None, "file"),
    ("password env only in token mode", {}, {"EQUABOT_GATEWAY_PASSWORD": "pw"}, LOOPBACK, None, "file"),
    ("none on loopback", {"mode": "none", "token": "ignored"}, {}, LOOPBACK, "", "none"),
)

NONE_REFUSED = ('gateway.auth.mode: "none" is refused when binding beyond loopback ({host}); '
                "set gateway.auth.mode to \"token\" and a token in gateway.auth.token or EQUABOT_GATEWAY_TOKEN")
NO_TOKEN = ("gateway.auth.token: no token is set; binding to {host} needs one: set "
            "gateway.auth.token in the config or EQUABOT_GATEWAY_TOKEN in the environment")
NO_PASSWORD = ("gateway.auth.password: no password is set; password mode needs one: set "
               "gateway.auth.password in the config or EQUABOT_GATEWAY_PASSWORD in the environment")

# (name, gateway.auth, environment, bind host, exact ConfigError text)
REFUSED = (
    ("none on all interfaces", {"mode": "none"}, {}, "0.0.0.0", NONE_REFUSED),
    ("none on a LAN address", {"mode": "none"}, {}, "192.0.2.10", NONE_REFUSED),
    ("none on all IPv6 interfaces", {"mode": "none"}, {}, "::", NONE_REFUSED),
    ("none with a token set", {"mode": "none", "token": "t"}, {"EQUABOT_GATEWAY_TOKEN": "t"}, "0.0.0.0",
     NONE_REFUSED),
    ("no token beyond loopback", {}, {}, "0.0.0.0", NO_TOKEN),
    ("empty config token beyond loopback", {"token": ""}, {}, "0.0.0.0", NO_TOKEN),
    ("empty env token beyond loopback", {}, {"EQUABOT_GATEWAY_TOKEN": ""}, "0.0.0.0", NO_TOKEN),
    ("password env does not count for token mode", {}, {"EQUABOT_GATEWAY_PASSWORD": "p"}, "0.0.0.0",
     NO_TOKEN),
    ("no password on loopback", {"mode": "password"}, {}, LOOPBACK, NO_PASSWORD),
    ("empty password beyond loopback", {"mode": "password", "password": ""}, {}, "0.0.0.0", NO_PASSWORD),
    ("token env does not count for password mode", {"mode": "password"}, {"EQUABOT_GATEWAY_TOKEN": "t"},
     "0.0.0.0", NO_PASSWORD),
)


def auth_config(data: dict[str, Any]) -> AuthConfig:
    """``gateway.auth`` as given, without the exposure check a whole config gets when read."""
    return AuthConfig(mode=data.get("mode", "token"), token=data.get("token"), password=data.get("password"))


class ResolveSecretTest(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.state = pathlib.Path(tmp.name)

    def test_resolution(self) -> None:
        for name, data, env, host, value, source in RESOLVED:
            with self.subTest(name):
                token_file = self.state / auth_mod.TOKEN_FILE
                token_file.unlink(missing_ok=True)
                secret = resolve_secret(auth_config(data), env, self.state, host)
                if value is None:
                    self.assertEqual(secret.value, token_file.read_text().strip())
                    self.assertEqual(secret.source, f"file {token_file} (generated now)")
                else:
                    self.assertEqual((secret.value or "", secret.source), (value, source))
                    self.assertFalse(token_file.exists())

    def test_refusals(self) -> None:
        for name, data, env, host, message in REFUSED:
            with self.subTest(name):
                with self.assertRaises(ConfigError) as caught:
                    resolve_secret(auth_config(data), env, self.state, host)
                self.assertEqual(str(caught.exception), message.format(host=host))
                self.assertFalse((self.state / auth_mod.TOKEN_FILE).exists())

    def test_generated_token_file(self) -> None:
        first = resolve_secret(auth_config({}), {}, self.state, LOOPBACK)
        path = self.state / auth_mod.TOKEN_FILE
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertGreaterEqual(len(first.value or ""), 32)
        self.assertNotIn(first.value or "-", first.source)
        # Never read as a flag after --token on a command line: no leading "-", for any draw.
        self.assertTrue(all(auth_mod.generate_token()[0].isalnum() for _ in range(1000)))
        again = resolve_secret(auth_config({}), {}, self.state, LOOPBACK)
        self.assertEqual(again.value, first.value)            # kept across restarts
        self.assertEqual((first.source, again.source), (f"file {path} (generated now)", f"file {path}"))
        path.write_text(" \n")
        fresh = resolve_secret(auth_config({}), {}, self.state, LOOPBACK)
        self.assertNotIn(fresh.value, ("", first.value))      # an empty file is replaced
        self.assertEqual(path.read_text(), f"{fresh.value}\n")


# -- the failure limiter on an injected clock -------------------------------------

class FailureLimiterTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.limiter = FailureLimiter(RateLimitConfig(max_attempts=3, window_seconds=10.0,
                                                      lockout_seconds=30.0), self.clock)

    def fail_at(self, *offsets: float, client: str = "a") -> None:
        start = self.clock.now
        for offset in offsets:
            self.clock.now = start + offset
            self.limiter.record_failure(client)

    def test_locks_after_max_attempts_within_the_window(self) -> None:
        self.fail_at(0, 1)
        self.assertIsNone(self.limiter.retry_after("a"))
        self.fail_at(1)
        self.assertEqual(self.limiter.retry_after("a"), 30.0)
        self.clock.now += 29.5
        self.assertEqual(self.limiter.retry_after("a"), 0.5)

    def test_window_slides(self) -> None:
        self.fail_at(0, 5, 10.5)           # the first has left the window by 10.5
        self.assertIsNone(self.limiter.retry_after("a"))
        self.fail_at(0.5)                  # 5, 10.5, 11: three within 10 s
        self.assertIsNotNone(self.limiter.retry_after("a"))

    def test_window_edge_counts(self) -> None:
        self.fail_at(0, 10, 10)            # exactly window_seconds apart: still inside
        self.assertIsNotNone(self.limiter.retry_after("a"))

    def test_spread_out_failures_never_lock(self) -> None:
        self.fail_at(*(i * 5.01 for i in range(100)))
        self.assertIsNone(self.limiter.retry_after("a"))

    def test_lockout_expires_and_counting_starts_afresh(self) -> None:
        self.fail_at(0, 0, 0)
        self.clock.now += 30
        self.assertIsNone(self.limiter.retry_after("a"))
        self.fail_at(0, 0)                 # the three before the lockout are forgotten
        self.assertIsNone(self.limiter.retry_after("a"))
        self.fail_at(0)
        self.assertEqual(self.limiter.retry_after("a"), 30.0)

    def test_clients_are_counted_apart(self) -> None:
        self.fail_at(0, 0, 0, client="a")
        self.fail_at(0, 0, client="b")
        self.assertIsNotNone(self.limiter.retry_after("a"))
        self.assertIsNone(self.limiter.retry_after("b"))
        self.assertIsNone(self.limiter.retry_after("c"))

    def test_zero_lockout_never_locks(self) -> None:
        limiter = FailureLimiter(RateLimitConfig(max_attempts=1, window_seconds=10.0,
                                                 lockout_seconds=0.0), self.clock)
        limiter.record_failure("a")
        self.assertIsNone(limiter.retry_after("a"))

    def test_memory_is_bounded_oldest_forgotten_first(self) -> None:
        self.fail_at(0, 0, client="old")
        for i in range(auth_mod.MAX_TRACKED_CLIENTS):
            self.limiter.record_failure(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
        self.fail_at(0, client="old")       # its first two were forgotten
        self.assertIsNone(self.limiter.retry_after("old"))
        self.assertLessEqual(len(self.limiter._failures), auth_mod.MAX_TRACKED_CLIENTS)


# -- the authenticator ---------------------------------------------------------------

# (name, Authorization value, None = accepted, else (status, message, code))
BEARER = (
    ("bearer", f"Bearer {TOKEN}", None),
    ("lower-case scheme", f"bearer {TOKEN}", None),
    ("upper-case scheme", f"BEARER {TOKEN}", None),
    ("spaces around", f"  Bearer   {TOKEN}  ", None),
    ("missing", None, (401, MISSING_TOKEN, "missing_api_key")),
    ("wrong token", f"Bearer {WRONG}", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("token prefix", f"Bearer {TOKEN[:-1]}", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("token with a suffix", f"Bearer {TOKEN}x", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("other case", f"Bearer {TOKEN.upper()}", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("basic scheme", f"Basic {TOKEN}", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("bare token", TOKEN, (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("scheme only", "Bearer", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("empty", "", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("non-ASCII", "Bearer t\xf6k\xe9n", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
    ("NUL", f"Bearer {TOKEN}\x00", (401, UNAUTHORIZED_TOKEN, "invalid_api_key")),
)

# (name, trusted proxies, peer, X-Forwarded-For, client)
CLIENTS = (
    ("no proxies: the peer", (), "198.51.100.1", "203.0.113.7", "198.51.100.1"),
    ("untrusted loopback peer forwarding: not loopback", (), "127.0.0.1", "203.0.113.7",
     "127.0.0.1 (forwarding)"),
    ("untrusted loopback peer, empty XFF", (), "127.0.0.1", " , ", "127.0.0.1"),
    ("untrusted loopback peer, no XFF", (), "::1", None, "::1"),
    ("untrusted peer: XFF ignored", ("10.0.0.0/8",), "198.51.100.1", "203.0.113.7", "198.51.100.1"),
    ("trusted peer, one hop", ("127.0.0.1",), "127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("trusted peer, forged left entries", ("127.0.0.1",), "127.0.0.1", "6.6.6.6, 203.0.113.7",
     "203.0.113.7"),
    ("trusted chain", ("127.0.0.1", "10.0.0.0/8"), "127.0.0.1", "6.6.6.6, 203.0.113.7, 10.1.2.3",
     "203.0.113.7"),
    ("all hops trusted", ("127.0.0.0/8", "10.0.0.0/8"), "127.0.0.1", "10.0.0.1, 10.0.0.2", "10.0.0.1"),
    ("empty XFF", ("127.0.0.1",), "127.0.0.1", "", "127.0.0.1"),
    ("XFF of commas", ("127.0.0.1",), "127.0.0.1", " , ,", "127.0.0.1"),
    ("no XFF", ("127.0.0.1",), "127.0.0.1", None, "127.0.0.1"),
    ("IPv6 proxy", ("::1",), "::1", "2001:db8::7", "2001:db8::7"),
    ("proxy network", ("127.0.0.0/8",), "127.0.0.9", "203.0.113.7", "203.0.113.7"),
    ("not an address is a client name", ("127.0.0.1",), "127.0.0.1", "unknown", "unknown"),
)


class AuthenticatorTest(unittest.TestCase):
    def authenticator(self, mode: str = "token", value: str | None = TOKEN,
                      proxies: tuple[str, ...] = (), max_attempts: int = 1000,
                      exempt_loopback: bool = True) -> Authenticator:
        return Authenticator(Secret(mode, value, "test"),
                             RateLimitConfig(max_attempts=max_attempts, window_seconds=60.0,
                                             lockout_seconds=300.0, exempt_loopback=exempt_loopback),
                             proxies, FakeClock())

    def fail(self, auth: Authenticator, client: str, times: int = 1, **kwargs: Any) -> None:
        for _ in range(times):
            with self.assertRaises(ApiError) as caught:
                auth.check(WRONG, client, **kwargs)
            self.assertEqual(caught.exception.status, 401)

    def assertLocked(self, auth: Authenticator, client: str, **kwargs: Any) -> None:
        with self.assertRaises(ApiError) as caught:
            auth.check(TOKEN, client, **kwargs)
        self.assertEqual(caught.exception.status, 429)

    def test_bearer_credentials(self) -> None:
        auth = self.authenticator()
        for name, header, expected in BEARER:
            with self.subTest(name):
                if expected is None:
                    auth.check_bearer(header, "c")
                    continue
                with self.assertRaises(ApiError) as caught:
                    auth.check_bearer(header, "c")
                exc = caught.exception
                self.assertEqual((exc.status, exc.message, exc.code), expected)
                self.assertEqual(exc.type, "authentication_error")
                self.assertEqual(dict(exc.headers), {"www-authenticate": "Bearer"})

    def test_password_mode_names_the_password(self) -> None:
        auth = self.authenticator("password", PASSWORD)
        auth.check_bearer(f"Bearer {PASSWORD}", "c")
        with self.assertRaises(ApiError) as caught:
            auth.check_bearer(f"Bearer {TOKEN}", "c")
        self.assertEqual(caught.exception.message,
                         "invalid gateway password: send Authorization: Bearer <password>")

    def test_mode_none_accepts_anything(self) -> None:
        auth = self.authenticator("none", None, max_attempts=1)
        for header in (None, "", "Bearer x", "Basic y"):
            auth.check_bearer(header, "c")
        self.assertIsNone(auth.limiter.retry_after("c"))

    def test_compared_in_constant_time_over_bytes(self) -> None:
        auth = self.authenticator()
        with mock.patch.object(auth_mod.hmac, "compare_digest", wraps=hmac.compare_digest) as spy:
            auth.check_bearer(f"Bearer {TOKEN}", "c")
            with self.assertRaises(ApiError):
                auth.check_bearer(f"Bearer {WRONG}", "c")
            with self.assertRaises(ApiError):
                auth.check(WRONG[:3], "c")
        self.assertEqual(spy.call_count, 3)
        for call in spy.call_args_list:
            presented, secret = call.args
            self.assertIs(type(presented), bytes)
            self.assertEqual(secret, TOKEN.encode())

    def test_a_success_resets_the_count(self) -> None:
        auth = self.authenticator(max_attempts=3)
        self.fail(auth, "c", 2)
        auth.check(TOKEN, "c")
        self.fail(auth, "c", 2)                # two more: four in the window, but two since the success
        auth.check(TOKEN, "c")
        self.fail(auth, "c", 3)                # three in a row lock
        self.assertLocked(auth, "c")

    def test_no_credentials_are_not_counted(self) -> None:
        auth = self.authenticator(max_attempts=2)
        for _ in range(50):
            with self.assertRaises(ApiError) as caught:
                auth.check(None, "c")
            self.assertEqual((caught.exception.status, caught.exception.code), (401, "missing_api_key"))
        with self.assertRaises(ApiError) as caught:
            auth.check_bearer("Basic x", "c")  # credentials of the wrong scheme are credentials
        self.assertEqual(caught.exception.status, 401)
        self.fail(auth, "c")
        self.assertLocked(auth, "c")

    def test_loopback_is_exempt_by_default(self) -> None:
        auth = self.authenticator(max_attempts=2)
        for client in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
            with self.subTest(client):
                self.fail(auth, client, 20)
                auth.check(TOKEN, client)
        self.fail(auth, "192.0.2.1", 2)        # other addresses are limited as ever
        self.assertLocked(auth, "192.0.2.1")
        self.fail(auth, "127.0.0.1 (forwarding)", 2)    # clients behind an unlisted local proxy too
        self.assertLocked(auth, "127.0.0.1 (forwarding)")
        strict = self.authenticator(max_attempts=2, exempt_loopback=False)
        self.fail(strict, "127.0.0.1", 2)
        self.assertLocked(strict, "127.0.0.1")

    def test_browser_pages_are_never_exempt_and_counted_apart(self) -> None:
        auth = self.authenticator(max_attempts=2)
        page = "http://evil.example"
        self.fail(auth, "127.0.0.1", 2, browser_origin=page)
        self.assertLocked(auth, "127.0.0.1", browser_origin=page)
        self.assertLocked(auth, "127.0.0.1", browser_origin="HTTP://EVIL.EXAMPLE")   # origins are case-blind
        auth.check(TOKEN, "127.0.0.1")                                  # the machine's own tools: unaffected
        auth.check(TOKEN, "127.0.0.1", browser_origin="http://127.0.0.1:18789")  # another page too
        # Without the Origin value at hand: all pages of that address share one count.
        self.fail(auth, "::1", 2, browser_origin=True)
        self.assertLocked(auth, "::1", browser_origin=True)
        auth.check(TOKEN, "::1")
        # A remote browser page is counted apart from the same address's other clients.
        self.fail(auth, "192.0.2.7", 2, browser_origin=True)
        auth.check(TOKEN, "192.0.2.7")

    def test_a_remote_client_cannot_escape_its_count_by_changing_origin(self) -> None:
        # Any client can send any Origin (and a Host to match it): away from loopback the
        # origin is the client's choice, so pages are counted per address, not per origin.
        auth = self.authenticator(max_attempts=3)
        self.fail(auth, "192.0.2.7", 3, browser_origin="http://a.example:18789")
        for origin in ("http://a.example:18789", "http://b.example:18789", True):
            with self.subTest(origin):
                self.assertLocked(auth, "192.0.2.7", browser_origin=origin)
        auth.check(TOKEN, "192.0.2.7")                  # its non-browser count stays apart
        auth.check(TOKEN, "192.0.2.8", browser_origin="http://a.example:18789")     # so do other addresses

    def test_counts_are_kept_per_credential_kind(self) -> None:
        # One limiter, two gateways' worth of secrets: a token's failures do not lock a password.
        limits = RateLimitConfig(max_attempts=2, window_seconds=60.0, lockout_seconds=300.0)
        clock = FakeClock()
        token = Authenticator(Secret("token", TOKEN, "test"), limits, (), clock)
        password = Authenticator(Secret("password", TOKEN, "test"), limits, (), clock)
        password.limiter = token.limiter
        self.fail(token, "192.0.2.1", 2)
        self.assertLocked(token, "192.0.2.1")
        password.check(TOKEN, "192.0.2.1")

    def test_lockout_refuses_every_attempt_with_retry_after(self) -> None:
        auth = self.authenticator(max_attempts=2)
        for _ in range(2):
            with self.assertRaises(ApiError):
                auth.check(WRONG, "c")
        with mock.patch.object(auth_mod.hmac, "compare_digest") as spy:
            for presented in (TOKEN, WRONG, None):
                with self.assertRaises(ApiError) as caught:
                    auth.check(presented, "c")
                exc = caught.exception
                self.assertEqual((exc.status, exc.message, exc.code, exc.type),
                                 (429, LOCKED, "auth_rate_limited", "rate_limit_error"))
                self.assertEqual(dict(exc.headers), {"retry-after": "300"})
        spy.assert_not_called()          # no secret is compared while locked: no oracle
        auth.check(TOKEN, "other")

    def test_retry_after_rounds_up(self) -> None:
        auth = self.authenticator(max_attempts=1)
        with self.assertRaises(ApiError):
            auth.check(WRONG, "c")
        for elapsed, header in ((0.5, "300"), (1.0, "299"), (299.2, "1"), (299.99, "1")):
            auth.limiter.clock.now = 1000.0 + elapsed
            with self.subTest(elapsed=elapsed), self.assertRaises(ApiError) as caught:
                auth.check(TOKEN, "c")
            self.assertEqual(dict(caught.exception.headers)["retry-after"], header)

    def test_client_address(self) -> None:
        for name, proxies, peer, xff, client in CLIENTS:
            with self.subTest(name):
                self.assertEqual(self.authenticator(proxies=proxies).client_address(peer, xff), client)


# -- the limiter on the wire: HTTP and the WebSocket connect share it -----------

class RateLimitTest(unittest.IsolatedAsyncioTestCase):
    async def fail_http(self, gw: Gateway, times: int, **kwargs: Any) -> None:
        for _ in range(times):
            status, _, body = await request(gw, token=WRONG, **kwargs)
            self.assertEqual(status, 401)
            self.assertEqual(error_of(body)["message"], UNAUTHORIZED_TOKEN)

    def assertLockedOut(self, response: tuple[int, dict[str, str], bytes]) -> None:
        status, headers, body = response
        self.assertEqual(status, 429)
        self.assertTrue(headers["retry-after"].isdigit())
        self.assertTrue(1 <= int(headers["retry-after"]) <= 300, headers["retry-after"])
        error = error_of(body)
        self.assertEqual((error["message"], error["code"], error["type"]),
                         (LOCKED, "auth_rate_limited", "rate_limit_error"))

    async def assertWSRefused(self, gw: Gateway, secret: str | None, code: str, **kwargs: Any) -> None:
        frame, ws = await ws_connect(gw, secret, **kwargs)
        self.assertEqual((frame["id"], frame["ok"], frame["error"]["code"]), ("c1", False, code))
        await asyncio.wait_for(ws.wait_closed(), 5)
        self.assertEqual(ws.close_code, 1008)
        if code == "RATE_LIMITED":
            self.assertEqual(frame["error"]["message"], LOCKED)
            self.assertTrue(0 < frame["error"]["retryAfterMs"] <= 300_000)

    async def test_http_failures_lead_to_429_with_retry_after(self) -> None:
        async with in_process(limited()) as gw:
            self.assertEqual((await request(gw, token=TOKEN))[0], 200)
            await self.fail_http(gw, 3)
            self.assertLockedOut(await request(gw, token=WRONG))
            self.assertLockedOut(await request(gw, token=TOKEN))      # the right one too
            self.assertLockedOut(await request(gw))                   # and none at all
            self.assertLockedOut(await request(gw, "/v1/chat/completions", method="POST", token=TOKEN,
                                               body=b'{"model":"equabot","messages":[]}'))
            status, _, _ = await request(gw, "/health")               # no auth: still served
            self.assertEqual(status, 200)

    async def test_ws_connect_of_a_locked_address_is_closed_1008(self) -> None:
        async with in_process(limited()) as gw:
            await self.fail_http(gw, 3)
            await self.assertWSRefused(gw, TOKEN, "RATE_LIMITED")
            with self.assertRaisesRegex(GatewayError, "RATE_LIMITED"):
                await ControlClient.open(gw.url, TOKEN)

    async def test_ws_failures_count_for_http(self) -> None:
        async with in_process(limited()) as gw:
            for _ in range(3):
                await self.assertWSRefused(gw, WRONG, "INVALID_REQUEST")
            self.assertLockedOut(await request(gw, token=TOKEN))
            await self.assertWSRefused(gw, None, "RATE_LIMITED")

    async def test_wrong_authorization_on_the_upgrade_counts(self) -> None:
        async with in_process(limited()) as gw:
            for _ in range(3):
                with self.assertRaisesRegex(Exception, "401"):
                    await connect("ws" + gw.url[4:], headers=[("Authorization", f"Bearer {WRONG}")])
            self.assertLockedOut(await request(gw, token=TOKEN))
            with self.assertRaisesRegex(Exception, "429"):
                await connect("ws" + gw.url[4:], headers=[("Authorization", f"Bearer {TOKEN}")])

    async def test_spoofed_forwarded_for_does_not_dodge_the_limiter(self) -> None:
        async with in_process(limited()) as gw:       # no trusted proxies
            for i in range(3):
                status, _, _ = await request(gw, token=WRONG, headers=(("X-Forwarded-For", f"203.0.113.{i}"),))
                self.assertEqual(status, 401)
            self.assertLockedOut(await request(gw, token=TOKEN, headers=(("X-Forwarded-For", "198.51.100.9"),)))
            await self.assertWSRefused(gw, TOKEN, "RATE_LIMITED", headers=(("X-Forwarded-For", "198.51.100.9"),))

    async def test_success_is_not_slowed_and_resets_the_count(self) -> None:
        async with in_process(limited()) as gw:
            await self.fail_http(gw, 2)
            for _ in range(20):
                started = time.monotonic()
                self.assertEqual((await request(gw, token=TOKEN))[0], 200)
                self.assertLess(time.monotonic() - started, 1.0)       # a sanity bound, not a benchmark
            await self.fail_http(gw, 2)
            client = await ControlClient.open(gw.url, TOKEN)           # a WS success resets it too
            await client.close()
            await self.fail_http(gw, 2)
            self.assertEqual((await request(gw, token=TOKEN))[0], 200)
            await self.fail_http(gw, 3)
            self.assertLockedOut(await request(gw, token=TOKEN))

    async def test_requests_without_credentials_are_not_counted(self) -> None:
        async with in_process(limited()) as gw:
            for _ in range(10):
                status, _, body = await request(gw)
                self.assertEqual((status, error_of(body)["message"]), (401, MISSING_TOKEN))
                await self.assertWSRefused(gw, None, "INVALID_REQUEST")
            self.assertEqual((await request(gw, token=TOKEN))[0], 200)

    async def test_loopback_clients_are_exempt_by_default(self) -> None:
        async with in_process(limited(exempt_loopback=True)) as gw:
            await self.fail_http(gw, 10)
            for _ in range(5):
                await self.assertWSRefused(gw, WRONG, "INVALID_REQUEST")
            self.assertEqual((await request(gw, token=TOKEN))[0], 200)
            client = await ControlClient.open(gw.url, TOKEN)
            await client.close()
            # A loopback peer forwarding for others (a proxy not in trustedProxies) is not exempt.
            forwarded = (("X-Forwarded-For", "203.0.113.5"),)
            await self.fail_http(gw, 3, headers=forwarded)
            self.assertLockedOut(await request(gw, token=TOKEN, headers=forwarded))
            self.assertEqual((await request(gw, token=TOKEN))[0], 200)

    async def test_browser_pages_are_counted_even_on_loopback(self) -> None:
        async with in_process(limited(exempt_loopback=True)) as gw:
            page = (("Origin", gw.url),)
            for _ in range(3):
                await self.assertWSRefused(gw, WRONG, "INVALID_REQUEST", headers=page)
            await self.assertWSRefused(gw, TOKEN, "RATE_LIMITED", headers=page)
            # The machine's own tools (no Origin) are not locked out by the page.
            self.assertEqual((await request(gw, token=TOKEN))[0], 200)
            client = await ControlClient.open(gw.url, TOKEN)
            await client.close()

    async def test_lockout_expires(self) -> None:
        async with in_process(limited(max_attempts=2, lockout=0.2)) as gw:
            await self.fail_http(gw, 2)
            self.assertLockedOut(await request(gw, token=TOKEN))
            await asyncio.sleep(0.3)
            self.assertEqual((await request(gw, token=TOKEN))[0], 200)
            client = await ControlClient.open(gw.url, TOKEN)
            await client.close()

    async def test_mode_none_has_nothing_to_limit(self) -> None:
        async with in_process(gateway_data(auth={"mode": "none", "rateLimit": {"maxAttempts": 1}})) as gw:
            for token in (None, WRONG, WRONG, TOKEN):
                self.assertEqual((await request(gw, token=token))[0], 200)
            client = await ControlClient.open(gw.url, WRONG)
            self.assertEqual(client.hello["type"], "hello-ok")
            await client.close()


class TrustedProxyTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self._cm = in_process(limited(trustedProxies=["127.0.0.1"]))
        self.gw = await self._cm.__aenter__()

    async def asyncTearDown(self) -> None:
        await self._cm.__aexit__(None, None, None)

    async def status(self, xff: str | None, token: str | None = TOKEN, *,
                     extra: tuple[tuple[str, str], ...] = ()) -> int:
        headers = ((("X-Forwarded-For", xff),) if xff is not None else ()) + extra
        return (await request(self.gw, token=token, headers=headers))[0]

    async def lock(self, client: str) -> None:
        for _ in range(3):
            self.assertEqual(await self.status(client, WRONG), 401)

    async def test_forwarded_for_names_the_client(self) -> None:
        await self.lock("203.0.113.1")
        self.assertEqual(await self.status("203.0.113.1"), 429)
        self.assertEqual(await self.status("203.0.113.2"), 200)           # another client behind the proxy
        self.assertEqual(await self.status(None), 200)                    # the proxy itself
        frame, ws = await ws_connect(self.gw, TOKEN, headers=(("X-Forwarded-For", "203.0.113.1"),))
        self.assertEqual(frame["error"]["code"], "RATE_LIMITED")
        await ws.wait_closed()
        self.assertEqual(ws.close_code, 1008)
        client = await ControlClient.open(self.gw.url, TOKEN)            # not forwarded: the proxy's address
        await client.close()

    async def test_rightmost_untrusted_hop_is_the_client(self) -> None:
        await self.lock("203.0.113.1")
        # Entries left of the last untrusted hop are the client's to forge.
        self.assertEqual(await self.status("198.51.100.1, 203.0.113.1"), 429)
        self.assertEqual(await self.status("203.0.113.1, 127.0.0.1"), 429)
        self.assertEqual(await self.status("203.0.113.1, 198.51.100.1"), 200)

    async def test_forwarded_for_split_over_lines_is_read_whole(self) -> None:
        # Regression: only the first X-Forwarded-For line is read, so a forged line dodges the limiter.
        # Proxies such as HAProxy (option forwardfor) add their own line after the client's.
        await self.lock("203.0.113.1")
        forged = (("X-Forwarded-For", "198.51.100.66"), ("X-Forwarded-For", "203.0.113.1"))
        self.assertEqual(await self.status(None, extra=forged), 429)


class EnvWinsTest(unittest.IsolatedAsyncioTestCase):
    """The environment's secret wins over the config's, for HTTP and the WebSocket alike."""

    async def assertOnlySecret(self, gw: Gateway, good: str, bad: str) -> None:
        self.assertEqual((await request(gw, token=good))[0], 200)
        self.assertEqual((await request(gw, token=bad))[0], 401)
        mode = gw.secret.mode
        client = await ControlClient.open(gw.url, good, mode=mode)
        await client.close()
        with self.assertRaisesRegex(GatewayError, "INVALID_REQUEST: unauthorized: gateway"):
            await ControlClient.open(gw.url, bad, mode=mode)

    async def test_token(self) -> None:
        data = gateway_data(auth={"token": "config-token"})
        async with in_process(data) as gw:
            await self.assertOnlySecret(gw, "config-token", "env-token")
        async with in_process(data, {"EQUABOT_GATEWAY_TOKEN": "env-token"}) as gw:
            await self.assertOnlySecret(gw, "env-token", "config-token")

    async def test_password(self) -> None:
        data = gateway_data(auth={"mode": "password", "password": "config-pw"})
        async with in_process(data) as gw:
            await self.assertOnlySecret(gw, "config-pw", "env-pw")
        async with in_process(data, {"EQUABOT_GATEWAY_PASSWORD": "env-pw",
                                     "EQUABOT_GATEWAY_TOKEN": "env-token"}) as gw:
            await self.assertOnlySecret(gw, "env-pw", "config-pw")
            self.assertEqual((await request(gw, token="env-token"))[0], 401)

    async def test_a_secret_outside_ascii_is_the_same_over_http_as_over_websocket(self) -> None:
        secret = "pässwörd-Ünïcode-✓"
        as_sent = secret.encode().decode("latin-1")     # its UTF-8 bytes, as `request` writes a str
        async with in_process(gateway_data(auth={"mode": "password", "password": secret})) as gw:
            self.assertEqual((await request(gw, token=as_sent))[0], 200)        # curl sends UTF-8: was 401
            client = await ControlClient.open(gw.url, secret, mode="password")
            await client.close()
            # Other bytes match nothing, and bytes that are not UTF-8 are a plain 401.
            for other in ("pässwörd-Ünïcode-?", "p\xe4ssw\xf6rd-\xdcn\xefcode-\xff"):
                status, _, body = await request(gw, token=other)
                self.assertEqual((status, error_of(body)["code"]), (401, "invalid_api_key"))


# -- start-up: binding beyond loopback, mode "none", the generated token ---------

def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("EQUABOT_GATEWAY_TOKEN", "EQUABOT_GATEWAY_PASSWORD", "EQUABOT_CONFIG_PATH")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_cli(args: list[str], data: dict[str, Any] | None, env: dict[str, str],
            tmp: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """``python -m equabot_gw ARGS`` with a config file and a state dir; must exit by itself."""
    argv = [sys.executable, "-m", "equabot_gw", *args, "--state-dir", str(tmp / "state")]
    if data is not None:
        config = tmp / "config.json5"
        config.write_text(json.dumps(data))
        argv += ["--config", str(config)]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


# (name, CLI args, config, extra environment, exact stderr line)
REFUSED_STARTS = (
    ("--bind lan, mode none", ["--port", "0", "--bind", "lan"], gateway_data(auth={"mode": "none"}), {},
     NONE_REFUSED.format(host="0.0.0.0")),
    ("--bind 0.0.0.0, mode none", ["--port", "0", "--bind", "0.0.0.0"], gateway_data(auth={"mode": "none"}),
     {}, NONE_REFUSED.format(host="0.0.0.0")),
    ("gateway.bind lan, mode none", ["--port", "0"], gateway_data(auth={"mode": "none"}, bind="lan"), {},
     NONE_REFUSED.format(host="0.0.0.0")),
    ("--bind lan, no token", ["--port", "0", "--bind", "lan"], None, {}, NO_TOKEN.format(host="0.0.0.0")),
    ("--bind a host, no token", ["--port", "0", "--bind", "0.0.0.0"], gateway_data(auth={}), {},
     NO_TOKEN.format(host="0.0.0.0")),
    ("--bind lan, empty token", ["--port", "0", "--bind", "lan"], gateway_data(auth={"token": ""}),
     {"EQUABOT_GATEWAY_TOKEN": ""}, NO_TOKEN.format(host="0.0.0.0")),
    ("--bind lan, password mode without one", ["--port", "0", "--bind", "lan"],
     gateway_data(auth={"mode": "password"}), {"EQUABOT_GATEWAY_TOKEN": "t"},
     NO_PASSWORD.format(host="0.0.0.0")),
)


class StartupTest(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = pathlib.Path(tmp.name)

    def test_refuses_to_start_beyond_loopback_without_a_secret(self) -> None:
        for name, args, data, env, line in REFUSED_STARTS:
            with self.subTest(name):
                done = run_cli(args, data, clean_env(**env), self.tmp)
                self.assertEqual(done.returncode, 2, done.stderr)
                self.assertEqual(done.stderr, f"equabot: config error: {line}\n")
                self.assertEqual(done.stdout, "")
                self.assertFalse((self.tmp / "state" / auth_mod.TOKEN_FILE).exists())

    def test_lan_with_a_token_from_the_environment_starts(self) -> None:
        gw = GatewayProcess(gateway_data(auth={}), extra_args=("--bind", "lan"))
        gw.env["EQUABOT_GATEWAY_TOKEN"] = TOKEN
        with gw:
            status = status_of(gw.port, "/v1/models", TOKEN)
            self.assertEqual(status, 200)
            stderr = wait_for_stderr(gw, "auth: token from environment (EQUABOT_GATEWAY_TOKEN)")
            self.assertNotIn(TOKEN, stderr)
            gw.stop()                   # every line it would write is written
            self.assertNotIn("characters long", gw.stderr_path.read_text())

    def test_a_short_secret_beyond_loopback_is_warned_about(self) -> None:
        gw = GatewayProcess(gateway_data(auth={}), extra_args=("--bind", "lan"))
        gw.env["EQUABOT_GATEWAY_TOKEN"] = "QxZwV"
        with gw:
            self.assertEqual(status_of(gw.port, "/v1/models", "QxZwV"), 200)
            stderr = wait_for_stderr(gw, "auth: the token is 5 characters long and the gateway listens "
                                         "beyond loopback: use a long random one")
            self.assertNotIn("QxZwV", stderr)       # never the secret itself

    def test_mode_none_on_loopback_warns_once(self) -> None:
        with GatewayProcess(gateway_data(auth={"mode": "none"})) as gw:
            self.assertEqual(status_of(gw.port, "/v1/models", None), 200)
            wait_for_stderr(gw, 'gateway.auth.mode is "none"')
            warnings = [line for line in gw.stderr().splitlines() if " WARNING " in line]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertTrue(warnings[0].endswith(
            f'gateway.auth.mode is "none": anyone who can reach {gw.url} can use it'), warnings[0])

    def test_generated_token_on_loopback(self) -> None:
        gw = GatewayProcess(gateway_data(auth={}))
        with gw:
            path = gw.state_dir / auth_mod.TOKEN_FILE
            token = path.read_text().strip()
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
            self.assertEqual(stat.S_IMODE(gw.state_dir.stat().st_mode), 0o700)
            wait_for_stderr(gw, f"auth: token from file {path} (generated now)")
            self.assertEqual(status_of(gw.port, "/v1/models", token), 200)
            self.assertEqual(status_of(gw.port, "/v1/models", None), 401)
            gw.proc.terminate()
            gw.proc.wait(20)
            stdout = gw.proc.stdout.read()
            stderr = gw.stderr()
            self.assertNotIn(token, stdout + stderr)
            gw.stop()
            gw.start()                                  # a restart keeps the token
            self.assertEqual(path.read_text().strip(), token)
            self.assertEqual(status_of(gw.port, "/v1/models", token), 200)

    def test_refusal_of_mode_none_gives_advice_that_works(self) -> None:
        # Regression: the refusal says "set gateway.auth.token", but with mode "none" a token changes nothing.
        done = run_cli(["--port", "0", "--bind", "lan"], gateway_data(auth={"mode": "none", "token": "t"}),
                       clean_env(EQUABOT_GATEWAY_TOKEN="t"), self.tmp)
        self.assertEqual(done.returncode, 2)
        self.assertIn('gateway.auth.mode to "token"', done.stderr)

    def test_invalid_trusted_proxy_is_a_config_error(self) -> None:
        # Regression: a gateway.trustedProxies entry that is not an address or network crashes with a traceback.
        done = run_cli(["--port", "0"], gateway_data(trustedProxies=["10.0.0.0/8", "proxy.internal"]),
                       clean_env(), self.tmp)
        self.assertEqual(done.returncode, 2, done.stderr[-300:])
        self.assertEqual(len(done.stderr.splitlines()), 1, done.stderr[-300:])
        self.assertTrue(done.stderr.startswith("equabot: config error: gateway.trustedProxies"), done.stderr)
        self.assertIn("proxy.internal", done.stderr)
        done = run_cli(["config", "check"], gateway_data(trustedProxies=["proxy.internal"]), clean_env(),
                       self.tmp)
        self.assertEqual(done.returncode, 2, done.stdout)


def wait_for_stderr(gw: GatewayProcess, text: str, timeout: float = 10.0) -> str:
    """The gateway's stderr once it holds ``text`` (log lines follow the start-up line)."""
    deadline = time.monotonic() + timeout
    while text not in (stderr := gw.stderr()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in stderr:\n{stderr}")
        time.sleep(0.02)
    return stderr


class RecordingGateway(GatewayProcess):
    """A ``GatewayProcess`` that keeps the start-up line it reads from stdout."""

    first_line = ""

    def start(self, timeout: float = 10.0) -> GatewayProcess:
        real_popen = subprocess.Popen

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
            proc = real_popen(*args, **kwargs)
            readline = proc.stdout.readline

            def keep_first_line() -> str:
                self.first_line = readline()
                return self.first_line
            proc.stdout.readline = keep_first_line
            return proc
        with mock.patch.object(subprocess, "Popen", popen):
            return super().start(timeout)


def status_of(port: int, path: str, token: str | None) -> int:
    import http.client
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# -- secrets never appear ----------------------------------------------------------

def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
                    for e in events)


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class FakeUpstream(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream whose failures quote the credentials it was sent."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        creds = f"key {self.headers.get('authorization')} header {self.headers.get('x-upstream-secret')}"
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        model = body["model"]
        if model == "ok":
            self.send(200, "text/event-stream", sse(chunk("hi"), chunk(finish="stop"),
                                                    {"choices": [], "usage": {"prompt_tokens": 1,
                                                                              "completion_tokens": 1}},
                                                    b"[DONE]"))
        elif model == "fail401":
            self.send(401, "application/json", json.dumps(
                {"error": {"message": f"Incorrect API key provided: {creds}", "type": "invalid_request_error",
                           "code": "invalid_api_key"}}).encode())
        elif model == "fail400":
            self.send(400, "application/json", json.dumps(
                {"error": {"message": f"bad request made with {creds}"}}).encode())
        elif model == "fail429":
            self.send(429, "application/json", json.dumps({"error": {"message": f"slow down {creds}"}}).encode(),
                      ("Retry-After", "7"))
        elif model == "fail500":
            self.send(500, "text/plain", f"internal error while serving {creds}".encode())
        else:                                      # fails inside the stream, after a word
            self.send(200, "text/event-stream", sse(chunk("partial"), {"error": {"message": f"revoked: {creds}"}}))

    def send(self, status: int, media: str, body: bytes, *extra: tuple[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class SecretsNeverAppearTest(unittest.TestCase):
    """One gateway run that touches every path a secret could leak through, then a search."""

    channels: dict[str, list[bytes]]

    @classmethod
    def setUpClass(cls) -> None:
        FakeUpstream.seen = []
        cls.upstream = http.server.ThreadingHTTPServer((LOOPBACK, 0), FakeUpstream)
        threading.Thread(target=cls.upstream.serve_forever, daemon=True).start()
        base_url = f"http://{LOOPBACK}:{cls.upstream.server_address[1]}/v1"
        data = gateway_data(auth={"mode": "token", "token": TOKEN, "password": PASSWORD})
        data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "up", "model": "up/ok"},
                                   {"id": "bad", "model": "up/fail401"}]}
        data["models"] = {"providers": {"up": {"api": "openai-completions", "baseUrl": base_url,
                                               "apiKey": API_KEY, "timeoutSeconds": 10,
                                               "headers": {"x-upstream-secret": HEADER_SECRET}}}}
        cls.channels = {"http": [], "ws": [], "stdout": [], "stderr": [], "state": [], "transcripts": [],
                        "config check": []}
        gw = RecordingGateway(data, extra_args=("--log-level", "debug"))
        gw.env.pop("EQUABOT_GATEWAY_PASSWORD", None)
        cls.gw = gw.start()
        try:
            cls.statuses = cls.make_requests(gw)
            asyncio.run(cls.use_websocket(gw))
            cls.run_cli(gw, ["config", "check", "--config", str(gw.config_path)])
            cls.run_cli(gw, ["sessions", "show", "--agent", "up", "leaky", "--config", str(gw.config_path),
                             "--state-dir", str(gw.state_dir)])
        finally:
            gw.proc.terminate()
            cls.exit_code = gw.proc.wait(20)
            cls.channels["stdout"].append((gw.first_line + gw.proc.stdout.read()).encode())
            cls.channels["stderr"].append(gw.stderr_path.read_bytes())
            for path in sorted(gw.state_dir.rglob("*")):
                if path.is_file():
                    kind = "transcripts" if path.suffix == ".jsonl" else "state"
                    cls.channels[kind].append(str(path).encode() + b"\n" + path.read_bytes())
            gw.stop()
            gw.tmp.cleanup()
            cls.upstream.shutdown()
            cls.upstream.server_close()

    @classmethod
    def make_requests(cls, gw: GatewayProcess) -> dict[str, int]:
        import http.client

        def call(name: str, method: str, path: str, body: Any = None, token: str | None = TOKEN,
                 **headers: str) -> None:
            conn = http.client.HTTPConnection(LOOPBACK, gw.port, timeout=30)
            fields = {"Content-Type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
            if token is not None:
                fields["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                         headers=fields)
            response = conn.getresponse()
            raw = response.read()
            head = f"{response.status} {response.reason}\r\n" + "".join(
                f"{n}: {v}\r\n" for n, v in response.getheaders())
            cls.channels["http"].append(head.encode("latin-1") + b"\r\n" + raw)
            statuses[name] = response.status
            conn.close()

        statuses: dict[str, int] = {}
        chat = {"model": "equabot", "messages": [{"role": "user", "content": "hello"}]}
        up = {**chat, "model": "equabot:up"}
        call("health", "GET", "/health")
        call("echo", "POST", "/v1/chat/completions", chat)
        call("wrong token", "POST", "/v1/chat/completions", chat, token=WRONG)
        call("no token", "POST", "/v1/chat/completions", chat, token=None)
        call("upstream ok", "POST", "/v1/chat/completions", up, x_equabot_session_key="leaky")
        for model in ("fail401", "fail400", "fail429", "fail500", "failstream"):
            call(f"upstream {model}", "POST", "/v1/chat/completions", up,
                 x_equabot_model=f"up/{model}", x_equabot_session_key="leaky")
            call(f"upstream {model} streamed", "POST", "/v1/chat/completions", {**up, "stream": True},
                 x_equabot_model=f"up/{model}")
        call("models", "GET", "/v1/models")
        call("model", "GET", "/v1/models/equabot:up")
        return statuses

    @classmethod
    async def use_websocket(cls, gw: GatewayProcess) -> None:
        url = "ws" + gw.url[4:]

        async def session(secret: str, requests: list[tuple[str, dict[str, Any]]]) -> None:
            ws = await connect(url)
            ws.send(json.dumps({"type": "req", "id": "c", "method": "connect",
                                "params": {"minProtocol": 3, "maxProtocol": 3, "auth": {"token": secret}}}))
            for i, (method, params) in enumerate(requests):
                ws.send(json.dumps({"type": "req", "id": f"r{i}", "method": method, "params": params}))
            try:
                while True:
                    message = await asyncio.wait_for(ws.recv(), 10)
                    cls.channels["ws"].append(message.encode() if isinstance(message, str) else message)
                    frame = json.loads(message)
                    if frame.get("id") == f"r{len(requests) - 1}" and frame.get("type") == "res" and \
                            frame.get("payload", {}).get("status") not in ("accepted", "started"):
                        break
            except ConnectionClosed:
                pass
            cls.channels["ws"].append(f"close {ws.close_code} {ws.close_reason}".encode())
            await ws.close()

        await session(TOKEN, [("config.get", {}), ("status", {}), ("agents.list", {}),
                              ("agent", {"message": "hi", "agentId": "bad"}),
                              ("agent", {"message": "hi", "agentId": "up", "sessionKey": "leaky"}),
                              ("chat.history", {"sessionKey": "leaky", "agentId": "up"})])
        await session(WRONG, [("config.get", {})])
        await session(TOKEN[:-1], [("config.get", {})])

    @classmethod
    def run_cli(cls, gw: GatewayProcess, args: list[str]) -> None:
        env = clean_env()
        done = subprocess.run([sys.executable, "-m", "equabot_gw", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)
        cls.channels["config check"].append(f"{args} {done.returncode}\n{done.stdout}\n{done.stderr}".encode())

    def assertNoSecret(self, channel: str) -> None:
        blobs = self.channels[channel]
        self.assertTrue(blobs and any(blobs), f"nothing was captured on {channel}")
        for blob in blobs:
            for name, secret in {**SECRETS, "presented": WRONG, "presented prefix": TOKEN[:-1]}.items():
                with self.subTest(channel, secret=name):
                    where = blob.find(secret.encode())
                    self.assertEqual(where, -1, f"{name} in {channel}: {blob[max(0, where - 200):where + 80]!r}")

    def test_the_run_exercised_the_secrets(self) -> None:
        self.assertEqual(self.exit_code, 0)
        self.assertEqual(self.statuses, {
            "health": 200, "echo": 200, "wrong token": 401, "no token": 401, "upstream ok": 200,
            "upstream fail401": 502, "upstream fail401 streamed": 502,
            "upstream fail400": 400, "upstream fail400 streamed": 400,
            "upstream fail429": 429, "upstream fail429 streamed": 429,
            "upstream fail500": 502, "upstream fail500 streamed": 502,
            "upstream failstream": 502, "upstream failstream streamed": 200,
            "models": 200, "model": 200})
        sent = {(h.get("authorization"), h.get("x-upstream-secret")) for h in FakeUpstream.seen}
        self.assertEqual(sent, {(f"Bearer {API_KEY}", HEADER_SECRET)})
        everything = b"".join(b for blobs in self.channels.values() for b in blobs)
        self.assertIn(b"***", everything)                           # redactions happened
        self.assertIn(b'"content":"hi"', b"".join(self.channels["transcripts"]))
        self.assertIn(b"upstream answered 401", b"".join(self.channels["transcripts"]))
        self.assertIn(b"POST /v1/chat/completions", b"".join(self.channels["stderr"]))

    def test_stdout(self) -> None:
        self.assertNoSecret("stdout")

    def test_stderr_and_access_log(self) -> None:
        self.assertNoSecret("stderr")

    def test_state_files(self) -> None:
        self.assertNoSecret("state")

    def test_transcripts(self) -> None:
        self.assertNoSecret("transcripts")

    def test_http_responses_and_headers(self) -> None:
        self.assertNoSecret("http")

    def test_websocket_frames(self) -> None:
        self.assertNoSecret("ws")

    def test_config_check_and_cli_output(self) -> None:
        self.assertNoSecret("config check")
        text = b"".join(self.channels["config check"]).decode()
        self.assertIn('"token": "***"', text)
        self.assertIn('"password": "***"', text)
        self.assertIn('"apiKey": "***"', text)
        self.assertIn('"x-upstream-secret": "***"', text)


class SecretHygieneTest(unittest.TestCase):
    """Places a secret could slip out of that no run above reaches."""

    def test_reprs_hide_secrets(self) -> None:
        # Regression: the dataclass reprs of Secret, AuthConfig and ProviderConfig print the secrets.
        config = config_mod.from_data({
            "gateway": {"auth": {"token": TOKEN, "password": PASSWORD}},
            "models": {"providers": {"up": {"api": "openai-completions", "baseUrl": "http://127.0.0.1:9/v1",
                                            "apiKey": API_KEY, "headers": {"x": HEADER_SECRET}}}}}, env={})
        secret = resolve_secret(config.gateway.auth, {}, pathlib.Path("/nonexistent"), LOOPBACK)
        for shown in (repr(secret), repr(config.gateway.auth), repr(config), str(config.provider("up"))):
            for name, value in SECRETS.items():
                with self.subTest(shown[:40], secret=name):
                    self.assertNotIn(value, shown)

    def test_upstream_detail_keeps_no_part_of_a_key(self) -> None:
        # Regression: HTTPProvider.detail clips to 1000 characters before redacting: a key across the cut leaks a prefix.
        from equabot_gw.providers import MAX_DETAIL_CHARS, create_provider
        config = config_mod.from_data({"models": {"providers": {"up": {
            "api": "openai-completions", "baseUrl": "http://127.0.0.1:9/v1", "apiKey": API_KEY}}}}, env={})
        provider = create_provider("up", config.provider("up"))
        for cut in range(1, len(API_KEY)):
            text = provider.detail("x" * (MAX_DETAIL_CHARS - cut) + API_KEY + " and more")
            with self.subTest(cut=cut):
                self.assertNotIn(API_KEY[:max(cut, 6)], text)

    def test_config_errors_never_echo_a_secret(self) -> None:
        # Regression: a secret of the wrong type is quoted back in the config error ("got 123456789").
        for path in (("gateway", "auth", "token"), ("gateway", "auth", "password")):
            data: dict[str, Any] = {}
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = 987654321987
            with self.subTest(".".join(path)), self.assertRaises(ConfigError) as caught:
                config_mod.from_data(data, env={})
            self.assertNotIn("987654321987", str(caught.exception))


class RebindingGuardTest(unittest.TestCase):
    """Mode "none": only loopback Host names are served (DNS rebinding defence)."""

    def test_foreign_host_names_are_refused_without_a_secret(self) -> None:
        data = base_config(auth={"mode": "none"})
        with GatewayProcess(data) as gw:
            body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]}).encode()
            for host, status in (("127.0.0.1", 200), (f"localhost:{gw.port}", 200), ("[::1]", 200),
                                 ("evil.example", 403), (f"attacker.example:{gw.port}", 403),
                                 ("127.0.0.1.nip.io", 403)):
                with self.subTest(host=host):
                    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host.encode()
                           + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                           + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    [(got, _, payload)] = split_responses(raw_exchange(gw.port, raw))
                    self.assertEqual(got, status, payload)
                    if status == 403:
                        self.assertEqual(error_of(payload)["code"], "host_not_allowed")
            upgrade = (b"GET / HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            self.assertTrue(raw_exchange(gw.port, upgrade).startswith(b"HTTP/1.1 403"))

    def test_any_host_name_with_a_secret(self) -> None:
        with GatewayProcess() as gw:
            raw = (b"GET /v1/models HTTP/1.1\r\nHost: gateway.example\r\nAuthorization: Bearer "
                   + SUPPORT_TOKEN.encode() + b"\r\nConnection: close\r\n\r\n")
            [(status, _, _)] = split_responses(raw_exchange(gw.port, raw))
            self.assertEqual(status, 200)


if __name__ == "__main__":
    unittest.main()
