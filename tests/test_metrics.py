"""The metrics registry: counters, gauges, histograms and their text exposition form.

The form is checked line by line against the format's rules here; the
official ``prometheus_client`` parser reads it in tests/interop.
"""

from __future__ import annotations

import math
import re
import unittest

from equabot_gw import metrics

# One sample line: name, optional labels with escaped values, a number.
SAMPLE = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\[\\"n]|[^\\"\n])*",?)*\})? '
                    r'([-+]?[0-9.e+-]+|\+Inf|-Inf|NaN)')


def lines(registry: metrics.Registry) -> list[str]:
    text = registry.render().decode("utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


class ExpositionTest(unittest.TestCase):
    def test_every_line_follows_the_format(self) -> None:
        registry = metrics.Registry()
        counter = registry.counter("t_requests_total", "Requests by route.\nSecond line \\ here",
                                   ("route", "status"))
        counter.inc("/v1/chat/completions", "200")
        counter.inc('we"ird\\path\nx', "500", amount=3)
        registry.gauge("t_open", "Open things.", ("kind",), read=lambda: [(("http",), 2), (("ws",), 0)])
        registry.histogram("t_seconds", "Durations.", ("agent",)).observe("main", value=0.2)
        for line in lines(registry):
            with self.subTest(line=line):
                if line.startswith("#"):
                    self.assertRegex(line, r"^# (HELP [a-z_]+ .*|TYPE [a-z_]+ (counter|gauge|histogram))$")
                else:
                    self.assertRegex(line, "^" + SAMPLE.pattern + "$")

    def test_help_and_label_values_are_escaped(self) -> None:
        registry = metrics.Registry()
        registry.counter("t_total", "a\\b\nc", ("v",)).inc('q"\\\n')
        text = registry.render().decode()
        self.assertIn("# HELP t_total a\\\\b\\nc\n", text)
        self.assertIn('t_total{v="q\\"\\\\\\n"} 1\n', text)

    def test_histogram_buckets_are_cumulative_and_end_with_inf(self) -> None:
        registry = metrics.Registry()
        histogram = registry.histogram("t_seconds", "Durations.", ("agent",), buckets=(0.1, 1.0, 10.0))
        for value in (0.05, 0.1, 0.5, 3.0, 99.0):
            histogram.observe("main", value=value)
        samples = [l for l in lines(registry) if not l.startswith("#")]
        self.assertEqual(samples, [
            't_seconds_bucket{agent="main",le="0.1"} 2',
            't_seconds_bucket{agent="main",le="1"} 3',
            't_seconds_bucket{agent="main",le="10"} 4',
            't_seconds_bucket{agent="main",le="+Inf"} 5',
            't_seconds_sum{agent="main"} 102.65',
            't_seconds_count{agent="main"} 5',
        ])
        self.assertEqual(histogram.count("main"), 5)

    def test_numbers(self) -> None:
        registry = metrics.Registry()
        gauge = registry.gauge("t_value", "Values.", ("k",))
        for key, value in (("int", 3), ("float", 0.25), ("big", 1e20), ("inf", math.inf), ("neg", -2)):
            gauge.set(key, value=value)
        text = registry.render().decode()
        for expected in ('t_value{k="int"} 3', 't_value{k="float"} 0.25', 't_value{k="big"} 1e+20',
                         't_value{k="inf"} +Inf', 't_value{k="neg"} -2'):
            self.assertIn(expected + "\n", text)


class ReadAtRenderTest(unittest.TestCase):
    """Families read from their owner's numbers when rendered, not pushed on the hot path."""

    def test_a_counter_and_a_histogram_read_from_callbacks(self) -> None:
        registry = metrics.Registry()
        owner = {"failures": 0, "sizes": [0, 0, 0], "sum": 0.0}
        registry.counter("t_failures_total", "Failures.", ("reason",),
                         read=lambda: [(("invalid",), owner["failures"])])
        registry.histogram("t_batch", "Batch sizes.", buckets=(1, 4),
                           read=lambda: [((), owner["sizes"], owner["sum"])])
        self.assertIn('t_failures_total{reason="invalid"} 0\n', registry.render().decode())
        owner.update(failures=3, sizes=[2, 1, 1], sum=2 + 3 + 9)     # values 1, 1, 3, 9
        text = registry.render().decode()
        self.assertIn('t_failures_total{reason="invalid"} 3\n', text)
        for expected in ('t_batch_bucket{le="1"} 2', 't_batch_bucket{le="4"} 3',
                         't_batch_bucket{le="+Inf"} 4', "t_batch_sum 14", "t_batch_count 4"):
            self.assertIn(expected + "\n", text)

    def test_a_callback_gives_at_most_max_series(self) -> None:
        counter = metrics.Counter("t_total", "x", ("k",), max_series=2,
                                  read=lambda: [((str(i),), i) for i in range(10)])
        self.assertEqual(sum(1 for line in counter.render() if not line.startswith("#")), 2)

    def test_a_histogram_callback_with_the_wrong_bucket_count_is_refused(self) -> None:
        histogram = metrics.Histogram("t_h", "x", buckets=(1, 2), read=lambda: [((), [1, 2], 3.0)])
        with self.assertRaises(ValueError):
            list(histogram.render())

    def test_a_value_on_a_bound_counts_in_that_bucket(self) -> None:
        histogram = metrics.Histogram("t_h", "x", buckets=(0.5, 1.0))
        for value in (0.5, 1.0, 1.0000001):
            histogram.observe(value=value)
        samples = [line for line in histogram.render() if "_bucket" in line]
        self.assertEqual(samples, ['t_h_bucket{le="0.5"} 1\n', 't_h_bucket{le="1"} 2\n',
                                   't_h_bucket{le="+Inf"} 3\n'])


class BoundsTest(unittest.TestCase):
    def test_label_sets_past_the_limit_fold_into_other(self) -> None:
        counter = metrics.Counter("t_total", "Things.", ("model",), max_series=3)
        for i in range(1000):
            counter.inc(f"model-{i}")
        self.assertEqual(counter.value("model-0"), 1)
        self.assertEqual(counter.value("model-2"), 1)
        self.assertEqual(counter.value("other"), 997)
        self.assertEqual(len(counter._values), 4)
        counter.inc("model-1")          # a series seen before keeps counting on its own
        self.assertEqual(counter.value("model-1"), 2)

    def test_registries_share_nothing(self) -> None:
        a, b = metrics.Registry(), metrics.Registry()
        a.counter("t_total", "x").inc()
        b.counter("t_total", "x")
        self.assertIn(b"t_total 1\n", a.render())
        self.assertNotIn(b"t_total 1\n", b.render())


class ContractTest(unittest.TestCase):
    def test_misuse_is_refused(self) -> None:
        registry = metrics.Registry()
        registry.counter("t_total", "x")
        cases = (
            lambda: registry.counter("t_total", "again"),
            lambda: metrics.Counter("t_count", "no _total suffix"),
            lambda: metrics.Counter("bad name_total", "x"),
            lambda: metrics.Counter("t_total", "x", ("le",)),
            lambda: metrics.Counter("t_total", "x", ("a",)).inc(),
            lambda: metrics.Counter("t_total", "x").inc(amount=-1),
            lambda: metrics.Histogram("t_h", "x", buckets=()),
        )
        for case in cases:
            with self.assertRaises(ValueError):
                case()


if __name__ == "__main__":
    unittest.main()
