"""The web-facing surface under hostile or unusual use: the failure limiter, /metrics, the page."""

from __future__ import annotations

import asyncio
import json
import unittest

from equabot_gw import auth as auth_mod
from equabot_gw import metrics
from equabot_gw.auth import Authenticator, FailureLimiter, Secret
from equabot_gw.config import RateLimitConfig
from equabot_gw.errors import ApiError
from equabot_gw.gateway import observe
from tests.support import TOKEN, base_config, running_gateway
from tests.test_observe import parse, request


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LockoutMemoryTest(unittest.TestCase):
    """Lockouts are bounded as failure counts are: a flood of addresses cannot grow them."""

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.limiter = FailureLimiter(RateLimitConfig(max_attempts=1, window_seconds=60.0,
                                                      lockout_seconds=300.0), self.clock)

    def test_a_flood_of_locked_addresses_is_bounded_oldest_forgotten_first(self) -> None:
        extra = 50
        clients = [f"2001:db8::{i:x}" for i in range(auth_mod.MAX_TRACKED_CLIENTS + extra)]
        for client in clients:         # each locked out by its first failure, none ended yet
            self.limiter.record_failure(client)
            self.clock.now += 0.001
        self.assertLessEqual(len(self.limiter._locked_until), auth_mod.MAX_TRACKED_CLIENTS)
        self.assertIsNotNone(self.limiter.retry_after(clients[-1]))     # the newest stay locked
        self.assertIsNone(self.limiter.retry_after(clients[0]))         # the oldest are forgotten

    def test_ended_lockouts_are_dropped_without_their_clients_returning(self) -> None:
        for i in range(100):
            self.limiter.record_failure(f"198.51.100.{i}")
        self.clock.now += 301
        self.limiter.record_failure("203.0.113.1")
        self.assertEqual(list(self.limiter._locked_until), ["203.0.113.1"])


# (X-Forwarded-For as a trusted proxy wrote it, the client it names)
PORTED_HOPS = (
    ("203.0.113.7:51000", "203.0.113.7"),
    ("[2001:db8::7]:443", "2001:db8::7"),
    ("[2001:db8::7]", "2001:db8::7"),
    ("6.6.6.6, 203.0.113.7:51000, 10.0.0.2:8080", "203.0.113.7"),   # a trusted hop with a port, skipped
    ("10.0.0.1:1, 10.0.0.2:2", "10.0.0.1"),                          # every hop trusted: the leftmost
    ("2001:db8::7", "2001:db8::7"),                                  # bare addresses stay as they are
    ("::1", "::1"),
    ("unknown", "unknown"),
    ("[2001:db8::7]:x", "[2001:db8::7]:x"),                         # not a port: a name as sent
)


class ForwardedPortsTest(unittest.TestCase):
    """A proxy that writes the client's port too (ip:port) still names one client per address."""

    def authenticator(self) -> Authenticator:
        return Authenticator(Secret("token", "tok-0123456789abcdef", "test"),
                             RateLimitConfig(max_attempts=3, window_seconds=60.0, lockout_seconds=300.0),
                             trusted_proxies=("127.0.0.1", "10.0.0.0/8"))

    def test_the_port_of_a_forwarded_hop_is_not_part_of_the_client(self) -> None:
        auth = self.authenticator()
        for forwarded, client in PORTED_HOPS:
            with self.subTest(forwarded):
                self.assertEqual(auth.client_address("127.0.0.1", forwarded), client)

    def test_new_source_ports_do_not_escape_the_limiter(self) -> None:
        auth = self.authenticator()
        statuses = []
        for port in range(50000, 50004):      # one connection each, as through the proxy
            client = auth.client_address("127.0.0.1", f"203.0.113.7:{port}")
            with self.assertRaises(ApiError) as caught:
                auth.check_bearer("Bearer wrong", client)
            statuses.append(caught.exception.status)
        self.assertEqual(statuses, [401, 401, 401, 429])


class RebindingPagesTest(unittest.TestCase):
    """Pages on this machine from names other than loopback ones (DNS rebinding) share a count per site."""

    def setUp(self) -> None:
        self.auth = Authenticator(Secret("password", "pw-0123456789", "test"),
                                  RateLimitConfig(max_attempts=3, window_seconds=60.0, lockout_seconds=300.0))

    def attempt(self, presented: str, origin: str) -> int:
        try:
            self.auth.check(presented, "127.0.0.1", browser_origin=origin)
        except ApiError as exc:
            return exc.status
        return 200

    def test_a_site_cannot_escape_the_count_by_making_up_names(self) -> None:
        # What a rebinding page sends: a fresh name of its site for each attempt, Host to match.
        statuses = [self.attempt("guess", f"http://a{i}.rebind.example:18789") for i in range(6)]
        self.assertEqual(statuses, [401, 401, 401, 429, 429, 429])
        self.assertEqual(self.attempt("pw-0123456789", "https://b.rebind.example"), 429)

    def test_other_pages_and_the_machines_tools_are_not_locked_out_with_it(self) -> None:
        for i in range(3):
            self.attempt("guess", f"http://a{i}.rebind.example:18789")
        for origin in ("http://localhost:3000", "http://127.0.0.1:18789", "http://[::1]:8080",
                       "https://app.example.com", "http://192.0.2.1:18789"):
            with self.subTest(origin):
                self.assertEqual(self.attempt("pw-0123456789", origin), 200)
        self.auth.check("pw-0123456789", "127.0.0.1")       # no Origin: the machine's own tools

    def test_loopback_pages_are_still_counted_per_origin(self) -> None:
        for _ in range(3):
            self.attempt("guess", "http://localhost:3000")
        self.assertEqual(self.attempt("pw-0123456789", "http://localhost:3000"), 429)
        self.assertEqual(self.attempt("pw-0123456789", "http://localhost:3001"), 200)


class LimiterKeySizeTest(unittest.TestCase):
    """What a client sends (an Origin, a forwarded name) is kept by the limiter in a bounded size."""

    def test_long_origins_and_forwarded_names_are_kept_in_bounded_size(self) -> None:
        auth = Authenticator(Secret("token", "tok-0123456789abcdef", "test"),
                             RateLimitConfig(max_attempts=100, window_seconds=60.0, lockout_seconds=300.0),
                             trusted_proxies=("10.0.0.0/8",))
        padding = "a" * 60_000
        attempts = [("127.0.0.1", f"http://localhost/{padding}{i}") for i in range(3)]     # a page of loopback
        attempts += [("127.0.0.1", f"http://x{i}.{padding}.example") for i in range(3)]   # a page of a site
        attempts += [(auth.client_address("10.0.0.1", f"{padding}{i}"), False) for i in range(3)]  # via a proxy
        for client, origin in attempts:
            with self.assertRaises(ApiError):
                auth.check("wrong", client, browser_origin=origin)
        self.assertEqual(sum(map(len, auth.limiter._failures.values())), len(attempts))   # all counted
        sizes = [len(part) for key in auth.limiter._failures for part in key]
        self.assertLessEqual(max(sizes), auth_mod.MAX_KEY_CHARS)

    def test_a_forwarded_name_is_cut_before_it_is_cached(self) -> None:
        # is_loopback remembers the last 1,024 clients it was asked about: each must be short.
        auth = Authenticator(Secret("token", "tok-0123456789abcdef", "test"), RateLimitConfig(),
                             trusted_proxies=("10.0.0.0/8",))
        client = auth.client_address("10.0.0.1", "b" * 60_000)
        self.assertTrue(client.startswith("bbb"))
        self.assertLessEqual(len(client), auth_mod.MAX_KEY_CHARS)


def family(samples: dict, name: str) -> dict:
    return {labels: value for (sample_name, labels), value in samples.items() if sample_name == name}


class MetricsFoldTest(unittest.IsolatedAsyncioTestCase):
    """Past the bound on label sets, further ones are counted under "other", and that series is shown."""

    def test_the_other_series_fits_in_a_family(self) -> None:
        self.assertLess(observe.MAX_CELLS, metrics.DEFAULT_MAX_SERIES)

    async def test_requests_past_the_bound_are_counted_under_other(self) -> None:
        async with running_gateway(base_config()) as gw:
            routes = observe.MAX_CELLS + 20
            for i in range(routes):       # as the server reports answered requests
                gw.observer.request("GET", f"/route-{i}", 200, 0, 0.001)
            status, _, body = await request(gw, "GET", "/metrics")
            self.assertEqual(status, 200)
        requests = family(parse(body.decode()), "equabot_http_requests_total")
        self.assertLessEqual(len(requests), metrics.DEFAULT_MAX_SERIES)
        self.assertEqual(requests[frozenset({("route", "other"), ("status", "other")})], 20)
        self.assertEqual(sum(requests.values()), routes)

    async def test_runs_of_models_past_the_bound_are_counted_under_other(self) -> None:
        data = base_config()
        data["models"] = {"providers": {"any": {"api": "echo"}}}       # no models list: any name goes
        async with running_gateway(data) as gw:
            models = observe.MAX_CELLS + 3
            for i in range(models):
                status, _, _ = await request(gw, "POST", "/v1/chat/completions", {
                    "model": "equabot", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"x-equabot-model": f"any/model-{i}"})
                self.assertEqual(status, 200)
            status, _, body = await request(gw, "GET", "/metrics")
            self.assertEqual(status, 200)
        samples = parse(body.decode())
        self.assertEqual(sum(family(samples, "equabot_runs_total").values()), models)
        counts = family(samples, "equabot_run_duration_seconds_count")
        self.assertEqual(sum(counts.values()), models)
        self.assertEqual(counts[frozenset({("agent", "other"), ("model", "other"), ("status", "other")})],
                         models - observe.MAX_CELLS)


if __name__ == "__main__":
    unittest.main()
