"""What the gateway tells its operators: ``/metrics`` and one log line per run.

Owns the gateway's metric families (a ``metrics.Registry`` per gateway, nothing
global) and how the numbers reach them without one layer knowing another:

- the HTTP server's observer: one call per answered request (route template,
  status) — the raw path never becomes a label;
- the runtime's observer: one call per settled run (which carries when it
  started and produced its first text);
- read-only counters, read only when someone scrapes: open connections and
  streams (``net.server``), queued and active runs (the agents), the session
  store's group commits, auth failures and lockouts (``auth``).

The hot paths only add to plain dicts and ints; each finished run folds into
one cell per (agent, model, status), and the families are computed from the
cells when ``/metrics`` is read. Every label set is bounded (``MAX_CELLS``,
then ``"other"``). Also writes the per-run info line on ``equabot_gw.runs``
(text, or JSON objects with ``JSONFormatter``), and knows no protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .. import __version__, metrics
from ..agents.events import Ended, Failed
from ..agents.committer import CommitStats
from ..errors import ReplyTooLarge, UpstreamError, UpstreamRejected, UpstreamTimeout
from ..net import routes as http

if TYPE_CHECKING:
    from ..agents.runtime import Run
    from .app import Gateway

__all__ = ["Observer", "JSONFormatter", "run_log", "TTFT_BUCKETS", "MAX_CELLS", "UNMATCHED"]

run_log = logging.getLogger("equabot_gw.runs")

# Label combinations kept per kind of observation before the rest fold into "other":
# one fewer than a family shows, so that the "other" series is among those shown.
MAX_CELLS: Final = metrics.DEFAULT_MAX_SERIES - 1
# The route label of a request no route took (404, 405, unparseable).
UNMATCHED: Final = "unmatched"
# Seconds to the first text: a local reply in microseconds, a model in seconds.
TTFT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                       10.0, 30.0, 60.0)
_DURATION_BOUNDS: Final = metrics.LATENCY_BUCKETS
_INFO: Final = logging.INFO
_now = time.time


class _RunCell:
    """Every settled run of one (agent, model, status): counts, tokens, two histograms."""

    __slots__ = ("runs", "input_tokens", "output_tokens", "durations", "duration_sum",
                 "ttfts", "ttft_sum")

    def __init__(self) -> None:
        self.runs = self.input_tokens = self.output_tokens = 0
        self.durations = [0] * (len(_DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0
        self.ttfts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0


class Observer:
    """The metrics and run log of one gateway; ``render()`` is the ``/metrics`` body.

    ``request`` is the HTTP server's observer, ``run`` the runtime's; both only
    count. Everything else is read from ``gateway`` when rendered.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.registry = registry = metrics.Registry()
        self._requests: dict[tuple[str | None, int], int] = {}
        self._cells: dict[tuple[str, str, str], _RunCell] = {}
        self._upstream_errors: dict[tuple[str, str], int] = {}
        registry.gauge("equabot_build_info", "The gateway's version (the value is always 1).",
                       ("version",), read=lambda: [((__version__,), 1)])
        registry.gauge("equabot_start_time_seconds", "When the gateway started (Unix time).",
                       read=lambda: [((), self.gateway.started_at)])
        registry.counter("equabot_http_requests_total",
                         "HTTP requests answered, by route template and status (499: the client "
                         "left first; route \"unmatched\": no route took it).",
                         ("route", "status"), read=self._request_samples)
        registry.gauge("equabot_open_connections",
                       "Open client connections: HTTP (not upgraded), WebSocket, and streamed "
                       "responses being written.", ("kind",), read=self._connection_samples)
        registry.counter("equabot_runs_total", "Agent runs settled, by agent and status.",
                         ("agent", "status"), read=self._cell_sum(("agent", "status"), "runs"))
        registry.histogram("equabot_run_duration_seconds",
                           "Agent runs from admission to settling (queue time included).",
                           ("agent", "model", "status"), _DURATION_BOUNDS, read=self._durations)
        registry.histogram("equabot_run_time_to_first_token_seconds",
                           "Agent runs from admission to their first text (runs that produced any).",
                           ("agent", "model"), TTFT_BUCKETS, read=self._ttfts)
        registry.counter("equabot_run_input_tokens_total", "Prompt tokens of runs that ended ok.",
                         ("agent", "model"), read=self._cell_sum(("agent", "model"), "input_tokens"))
        registry.counter("equabot_run_output_tokens_total", "Reply tokens of runs that ended ok.",
                         ("agent", "model"), read=self._cell_sum(("agent", "model"), "output_tokens"))
        registry.gauge("equabot_runs_queued", "Runs admitted and waiting for a slot of their agent.",
                       ("agent",), read=lambda: self._agent_samples("waiting"))
        registry.gauge("equabot_runs_active", "Runs holding a slot of their agent (generating).",
                       ("agent",), read=lambda: self._agent_samples("active"))
        registry.counter("equabot_upstream_errors_total",
                         "Runs failed by their provider, by provider and kind (http_<status>: the "
                         "upstream refused; timeout; reply_too_large; error: anything else).",
                         ("provider", "kind"), read=lambda: list(self._upstream_errors.items()))
        registry.gauge("equabot_sessions", "Keyed sessions in the session store.",
                       read=lambda: [((), self.gateway.runtime.store.session_count())])
        registry.histogram("equabot_session_commit_appends",
                           "Appends written together by one group commit (one fdatasync per file).",
                           buckets=CommitStats.SIZE_BOUNDS,
                           read=lambda: self._commits("sizes", "size_sum"))
        registry.histogram("equabot_session_commit_duration_seconds",
                           "Time of one group commit: its writes and fdatasyncs.",
                           buckets=CommitStats.SECONDS_BOUNDS,
                           read=lambda: self._commits("seconds", "seconds_sum"))
        registry.counter("equabot_auth_failures_total",
                         "Refused authentication attempts by reason (missing, invalid, locked_out).",
                         ("reason",), read=lambda: [((reason,), count) for reason, count
                                                    in self.gateway.auth.failures.items()])
        registry.counter("equabot_auth_lockouts_total",
                         "Clients locked out after too many failed attempts.",
                         read=lambda: [((), self.gateway.auth.limiter.lockouts)])

    # ---- /metrics ----
    async def handle(self, request: http.HTTPRequest) -> http.Response:
        """``GET /metrics``: the text exposition format; behind auth unless ``gateway.metrics.public``."""
        if not self.gateway.config.gateway.metrics.public:
            self.gateway.authorize(request)
        return http.Response(200, [("content-type", metrics.CONTENT_TYPE), ("cache-control", "no-store")],
                             self.registry.render())

    def render(self) -> bytes:
        """Every family, as ``/metrics`` answers."""
        return self.registry.render()

    # ---- the hot paths: count only ----
    def request(self, method: str, route: str | None, status: int, size: int, duration: float) -> None:
        """The HTTP server's observer (``net.server.Observer``)."""
        key = (route, status)
        try:
            self._requests[key] += 1
        except KeyError:
            _count_new(self._requests, key, ("other", 0))

    def run(self, run: Run) -> None:
        """The runtime's observer: fold a settled run into its cell (and write its log line)."""
        now = _now()
        started, first = run.started_at, run.first_output_at
        events = run.events.events
        last = events[-1] if events else None
        key = (run.agent.id, run.model, run.status)
        cell = self._cells.get(key) or self._new_cell(key)
        cell.runs += 1
        result = error = None
        if type(last) is Ended:
            result = last.result
            usage = result.usage
            cell.input_tokens += usage.prompt_tokens
            cell.output_tokens += usage.completion_tokens
        elif type(last) is Failed:
            error = last.error
        created = run.created_at
        duration = now - created if now > created else 0.0
        cell.durations[bisect_left(_DURATION_BOUNDS, duration)] += 1
        cell.duration_sum += duration
        ttft = None
        if first is not None:
            ttft = first - created if first > created else 0.0
            cell.ttfts[bisect_left(TTFT_BUCKETS, ttft)] += 1
            cell.ttft_sum += ttft
        if error is not None and isinstance(error, UpstreamError):
            ekey = (error.provider, _upstream_kind(error))
            try:
                self._upstream_errors[ekey] += 1
            except KeyError:
                _count_new(self._upstream_errors, ekey, ("other", "other"))
        if run_log.isEnabledFor(_INFO):
            _log_run(run, result, error, started, ttft, duration)

    def _new_cell(self, key: tuple[str, str, str]) -> _RunCell:
        if len(self._cells) >= MAX_CELLS:
            key = ("other", "other", "other")
        return self._cells.get(key) or self._cells.setdefault(key, _RunCell())

    # ---- read when rendered ----
    def _request_samples(self) -> list[tuple[tuple[str, ...], float]]:
        return [((UNMATCHED if route is None else route, str(status) if status else "other"), count)
                for (route, status), count in list(self._requests.items())]

    def _connection_samples(self) -> list[tuple[tuple[str, ...], float]]:
        server = self.gateway.server
        return [(("http",), server.connection_count - server.upgraded),
                (("websocket",), server.upgraded), (("stream",), server.open_streams)]

    def _agent_samples(self, attribute: str) -> list[tuple[tuple[str, ...], float]]:
        return [((agent.id,), getattr(agent, attribute)) for agent in self.gateway.runtime.agents.values()]

    def _cell_sum(self, labels: tuple[str, ...], field: str) -> Callable[[], list[tuple[tuple[str, ...], float]]]:
        positions = [("agent", "model", "status").index(label) for label in labels]

        def read() -> list[tuple[tuple[str, ...], float]]:
            sums: dict[tuple[str, ...], float] = {}
            for key, cell in list(self._cells.items()):
                projected = tuple(key[i] for i in positions)
                sums[projected] = sums.get(projected, 0) + getattr(cell, field)
            return list(sums.items())
        return read

    def _durations(self) -> list[tuple[tuple[str, ...], list[int], float]]:
        return [(key, cell.durations, cell.duration_sum) for key, cell in list(self._cells.items())]

    def _ttfts(self) -> list[tuple[tuple[str, ...], list[int], float]]:
        merged: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        for (agent, model, _), cell in list(self._cells.items()):
            if not any(cell.ttfts):
                continue
            counts, total = merged.setdefault((agent, model), ([0] * len(cell.ttfts), [0.0]))
            for i, count in enumerate(cell.ttfts):
                counts[i] += count
            total[0] += cell.ttft_sum
        return [(key, counts, total[0]) for key, (counts, total) in merged.items()]

    def _commits(self, counts: str, total: str) -> list[tuple[tuple[str, ...], list[int], float]]:
        stats = self.gateway.runtime.store.commit_stats
        return [((), list(getattr(stats, counts)), getattr(stats, total))]


def _count_new(counts: dict, key: tuple, other: tuple) -> None:
    """Count a label set seen for the first time, or under "other" once there are enough."""
    if len(counts) < MAX_CELLS:
        counts[key] = 1
    else:
        counts[other] = counts.get(other, 0) + 1


def _upstream_kind(error: UpstreamError) -> str:
    if isinstance(error, UpstreamRejected):
        return f"http_{error.upstream_status}"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, ReplyTooLarge):
        return "reply_too_large"
    return "error"


def _log_run(run: Run, result: Any, error: Any, started: float | None, ttft: float | None,
             duration: float) -> None:
    """The run's info line: text for people, its fields as keys for ``JSONFormatter``."""
    key = run.session_key
    if run.stateless:
        # A stateless key is a fresh one per request: shown as its digest, it still
        # ties this line to others about the run without repeating the key. (BLAKE2b:
        # the standard library's own, cheaper to set up per line than OpenSSL's SHA-256.)
        key = "blake2b:" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    provider, _, model = run.model.partition("/")
    created = run.created_at
    fields: dict[str, Any] = {
        "event": "run", "run_id": run.id, "agent": run.agent.id, "session": key,
        "origin": run.request.origin, "provider": provider, "model": model, "status": run.status}
    # Ids, agent ids, keys and origins are of safe alphabets; a provider's or a
    # client-named model's name may hold anything, so those two are quoted if need be.
    text = (f"run {run.id} agent={run.agent.id} session={key} origin={run.request.origin} "
            f"provider={_text(provider)} model={_text(model)} status={run.status}")
    if result is not None:
        fields["input_tokens"] = result.usage.prompt_tokens
        fields["output_tokens"] = result.usage.completion_tokens
        text += f" input_tokens={result.usage.prompt_tokens} output_tokens={result.usage.completion_tokens}"
    if started is not None:
        fields["queue_ms"] = _ms(started - created)
        text += f" queue_ms={fields['queue_ms']}"
    if ttft is not None:
        fields["ttft_ms"] = _ms(ttft)
        text += f" ttft_ms={fields['ttft_ms']}"
    fields["duration_ms"] = _ms(duration)
    text += f" duration_ms={fields['duration_ms']}"
    if error is not None:
        fields["reason"] = error.reason
        text += f" reason={error.reason}"
        if isinstance(error, UpstreamRejected):
            fields["upstream_status"] = error.upstream_status
            text += f" upstream_status={error.upstream_status}"
    # makeRecord + handle: Logger.info's own path, less the stack walk that finds
    # the caller (a fixed place here, and a sizeable share of a record's cost).
    run_log.handle(run_log.makeRecord(run_log.name, _INFO, __file__, 0, text, None, None,
                                      extra={"event_fields": fields}))


def _ms(seconds: float) -> float:
    # Milliseconds to the microsecond; round() costs twice as much per call.
    return int(seconds * 1_000_000 + 0.5) / 1000 if seconds > 0 else 0.0


def _text(value: str) -> str:
    return value if value and value.isprintable() and " " not in value and '"' not in value \
        else json.dumps(value)


class JSONFormatter(logging.Formatter):
    """Each record as one JSON object on one line, for log shippers.

    ``time`` (UTC, RFC 3339 with milliseconds), ``level``, ``logger``,
    ``message``; a record logged with ``extra={"event_fields": {...}}`` (the
    run line) adds those keys; a traceback goes under ``exception``. Control
    characters and non-ASCII text are escaped, so one record is one line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:      # once a second: there is a line per run
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        data: dict[str, Any] = {
            "time": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "event_fields", None)
        if isinstance(fields, dict):
            data.update((k, v) for k, v in fields.items() if k not in data)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=str)

