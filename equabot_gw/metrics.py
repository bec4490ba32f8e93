"""Counters, gauges and histograms, rendered in the Prometheus text exposition format (0.0.4).

Owns the metric values of one gateway and their text form; knows nothing of
where they come from. Each ``Registry`` is independent (no module-level
state), so several gateways in one process, or one restarted many times,
never share or leak values. Updates are plain attribute arithmetic on the
event loop's thread: no locks, no allocation for a label set seen before.

Label sets are bounded: a family keeps at most ``max_series`` label
combinations; observations for further ones are counted under the label
value ``"other"`` for every label, so a client that invents model names or
paths cannot grow memory without bound.

Any family may instead be *read* at render time from a callback (``read=``):
the owner of the numbers keeps them in whatever form is cheapest on its hot
path (plain ints, one cell per label set) and pays the formatting only when
someone scrapes. A callback's series past ``max_series`` are left out.

Format (https://prometheus.io/docs/instrumenting/exposition_formats/):
``# HELP name text`` and ``# TYPE name kind`` once per family, then one
``name{label="value",...} number`` line per series; label values escape
backslash, double quote and line feed; histograms emit cumulative
``_bucket{le=...}`` lines ending with ``le="+Inf"``, then ``_sum`` and
``_count``; the text ends with a line feed.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Final

__all__ = ["Registry", "Counter", "Gauge", "Histogram", "CONTENT_TYPE", "DEFAULT_MAX_SERIES",
           "LATENCY_BUCKETS", "OTHER", "Samples", "HistogramSamples"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Label combinations kept per family before further ones fold into "other".
DEFAULT_MAX_SERIES: Final = 500
# Seconds: from a fast local reply to a long model run (the run timeout is 600 s).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                          60.0, 120.0, 300.0, 600.0)
OTHER: Final = "other"

# What a ``read=`` callback returns: (label values, value) per series; for a
# histogram (label values, counts per bucket, sum), the counts not cumulative,
# one per bound plus a last one for the observations above every bound.
Samples = Iterable[tuple[tuple[str, ...], float]]
HistogramSamples = Iterable[tuple[tuple[str, ...], Sequence[int], float]]

_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    if isinstance(value, int) or value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Family:
    kind: str = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str], max_series: int) -> None:
        if _NAME.fullmatch(name) is None:
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if _LABEL.fullmatch(label) is None or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r}")
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)
        self.max_series = max_series
        self._other = (OTHER,) * len(self.labels)

    def _key(self, values: tuple[str, ...], series: dict) -> tuple[str, ...]:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {len(values)} values")
        if values in series or len(series) < self.max_series:
            return values
        return self._other

    def _label_text(self, values: tuple[str, ...], extra: str = "") -> str:
        pairs = [f'{n}="{_escape(v)}"' for n, v in zip(self.labels, values)]
        if extra:
            pairs.append(extra)
        return "{" + ",".join(pairs) + "}" if pairs else ""

    def render(self) -> Iterable[str]:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        yield f"# HELP {self.name} {help_text}\n"
        yield f"# TYPE {self.name} {self.kind}\n"
        yield from self._samples()

    def _samples(self) -> Iterable[str]:
        raise NotImplementedError


class _Valued(_Family):
    """A family with one number per series, kept here or read from ``read()`` at render time."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str], max_series: int,
                 read: Callable[[], Samples] | None) -> None:
        super().__init__(name, help_text, labels, max_series)
        self._values: dict[tuple[str, ...], float] = {}
        self._read = read

    def value(self, *values: str) -> float:
        """The current value of one series (0 if never set; a callback family is read now)."""
        if self._read is not None:
            return dict(self._read()).get(values, 0)
        return self._values.get(values, 0)

    def _samples(self) -> Iterable[str]:
        items = _first(self._read(), self.max_series) if self._read is not None else self._values.items()
        for values, value in items:
            yield f"{self.name}{self._label_text(tuple(values))} {_number(value)}\n"


class Counter(_Valued):
    """A monotonically increasing count per label set; ``inc(*label_values, amount=1)``,
    or read from ``read()`` at render time."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 max_series: int = DEFAULT_MAX_SERIES,
                 read: Callable[[], Samples] | None = None) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        super().__init__(name, help_text, labels, max_series, read)

    def inc(self, *values: str, amount: float = 1) -> None:
        """Add ``amount`` (≥ 0) to the series of these label values."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(values, self._values)
        self._values[key] = self._values.get(key, 0) + amount


class Gauge(_Valued):
    """A value that goes up and down, set directly or read from a callback at render time."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 max_series: int = DEFAULT_MAX_SERIES,
                 read: Callable[[], Samples] | None = None) -> None:
        super().__init__(name, help_text, labels, max_series, read)

    def set(self, *values: str, value: float) -> None:
        """Set the series of these label values to ``value``."""
        self._values[self._key(values, self._values)] = value

    def add(self, *values: str, amount: float = 1) -> None:
        """Add ``amount`` (may be negative) to a series."""
        key = self._key(values, self._values)
        self._values[key] = self._values.get(key, 0) + amount


class _Series:
    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets     # per bound, then one for above every bound
        self.sum = 0.0


class Histogram(_Family):
    """Observations counted into fixed upper bounds (``le``), with their sum and count;
    ``observe(*label_values, value=...)``, or read from ``read()`` at render time."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS,
                 max_series: int = DEFAULT_MAX_SERIES,
                 read: Callable[[], HistogramSamples] | None = None) -> None:
        super().__init__(name, help_text, labels, max_series)
        bounds = sorted(float(b) for b in buckets if b != math.inf)
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("a histogram needs distinct finite bucket bounds")
        self.bounds = tuple(bounds)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._read = read

    def observe(self, *values: str, value: float) -> None:
        """Record one observation (e.g. seconds) in the series of these label values."""
        key = self._key(values, self._series)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(len(self.bounds) + 1)
        # The first bound >= value: "le" is an inclusive upper bound.
        series.counts[bisect_left(self.bounds, value)] += 1
        series.sum += value

    def count(self, *values: str) -> int:
        """Observations recorded in one series."""
        for series_values, counts, _ in self._items():
            if tuple(series_values) == values:
                return sum(counts)
        return 0

    def _items(self) -> HistogramSamples:
        if self._read is not None:
            return _first(self._read(), self.max_series)
        return [(values, s.counts, s.sum) for values, s in self._series.items()]

    def _samples(self) -> Iterable[str]:
        for values, counts, total in self._items():
            values = tuple(values)
            if len(counts) != len(self.bounds) + 1:
                raise ValueError(f"{self.name}: {len(counts)} bucket counts for {len(self.bounds)} bounds")
            cumulative = 0
            for bound, count in zip(self.bounds, counts):
                cumulative += count
                labels = self._label_text(values, 'le="' + _number(bound) + '"')
                yield f"{self.name}_bucket{labels} {cumulative}\n"
            cumulative += counts[-1]
            labels = self._label_text(values, 'le="+Inf"')
            yield f"{self.name}_bucket{labels} {cumulative}\n"
            yield f"{self.name}_sum{self._label_text(values)} {_number(total)}\n"
            yield f"{self.name}_count{self._label_text(values)} {cumulative}\n"


def _first(items: Iterable, limit: int) -> list:
    """At most ``limit`` items of a callback's series."""
    out = []
    for item in items:
        if len(out) >= limit:
            break
        out.append(item)
    return out


class Registry:
    """The metric families of one gateway, rendered in registration order."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, family: _Family) -> _Family:
        """Register ``family`` (names are unique) and return it."""
        if family.name in self._families:
            raise ValueError(f"metric {family.name!r} is registered already")
        self._families[family.name] = family
        return family

    def counter(self, name: str, help_text: str, labels: Sequence[str] = (),
                read: Callable[[], Samples] | None = None) -> Counter:
        return self.add(Counter(name, help_text, labels, read=read))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = (),
              read: Callable[[], Samples] | None = None) -> Gauge:
        return self.add(Gauge(name, help_text, labels, read=read))  # type: ignore[return-value]

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS,
                  read: Callable[[], HistogramSamples] | None = None) -> Histogram:
        return self.add(Histogram(name, help_text, labels, buckets,  # type: ignore[return-value]
                                  read=read))

    def render(self) -> bytes:
        """Every family in the text exposition format, UTF-8, ending with a line feed."""
        return "".join(line for family in self._families.values()
                       for line in family.render()).encode("utf-8")
