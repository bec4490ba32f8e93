"""The official ``prometheus_client`` text parser reads what ``equabot_gw.metrics`` renders.

Installed by the Makefile into .venv-test; with EQUABOT_INTEROP=1 (``make
test``) a missing library is a failure, elsewhere these tests skip.
"""

from __future__ import annotations

import os
import unittest

from equabot_gw import metrics

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:     # pragma: no cover - depends on the environment
    text_string_to_metric_families = None

REQUIRED = os.environ.get("EQUABOT_INTEROP") == "1"


@unittest.skipIf(text_string_to_metric_families is None and not REQUIRED,
                 "prometheus_client is not installed (make test installs it)")
class PrometheusParserTest(unittest.TestCase):
    def test_the_parser_reads_every_family_and_value(self) -> None:
        registry = metrics.Registry()
        requests = registry.counter("eq_http_requests_total", "HTTP requests.", ("route", "status"))
        requests.inc("/v1/chat/completions", "200", amount=7)
        requests.inc('odd "route"\\\n', "404")
        registry.gauge("eq_connections", "Open connections.", ("kind",),
                       read=lambda: [(("http",), 3), (("ws",), 1)])
        durations = registry.histogram("eq_run_duration_seconds", "Run durations.", ("agent",),
                                       buckets=(0.1, 1.0))
        for value in (0.05, 0.5, 2.0):
            durations.observe("main", value=value)
        families = {f.name: f for f in text_string_to_metric_families(registry.render().decode())}
        self.assertEqual(set(families), {"eq_http_requests", "eq_connections", "eq_run_duration_seconds"})
        self.assertEqual(families["eq_http_requests"].type, "counter")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in families.values() for s in f.samples}
        self.assertEqual(samples[("eq_http_requests_total",
                                  (("route", "/v1/chat/completions"), ("status", "200")))], 7)
        self.assertEqual(samples[("eq_http_requests_total",
                                  (("route", 'odd "route"\\\n'), ("status", "404")))], 1)
        self.assertEqual(samples[("eq_connections", (("kind", "http"),))], 3)
        self.assertEqual(families["eq_run_duration_seconds"].type, "histogram")
        self.assertEqual(samples[("eq_run_duration_seconds_bucket", (("agent", "main"), ("le", "1")))], 2)
        self.assertEqual(samples[("eq_run_duration_seconds_bucket", (("agent", "main"), ("le", "+Inf")))], 3)
        self.assertEqual(samples[("eq_run_duration_seconds_count", (("agent", "main"),))], 3)
        self.assertAlmostEqual(samples[("eq_run_duration_seconds_sum", (("agent", "main"),))], 2.55)


if __name__ == "__main__":
    unittest.main()
