"""The web-facing surface under hostile or unusual use: the failure limiter, /metrics, the page."""

from __future__ import annotations

import unittest

from equabot_gw import auth as auth_mod
from equabot_gw.auth import FailureLimiter
from equabot_gw.config import RateLimitConfig


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


if __name__ == "__main__":
    unittest.main()
