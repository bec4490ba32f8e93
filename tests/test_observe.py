"""What the gateway tells its operators: /metrics, the per-run log line, JSON logs, /health's facts.

Each test drives a real in-process gateway (port 0, temporary state dir) with
a known workload and checks that the numbers match it exactly; the official
Prometheus parser reads the same text in tests/interop/test_metrics_workload.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import unittest
import uuid
from typing import Any

from equabot_gw import metrics
from equabot_gw.gateway import observe
from equabot_gw.gateway.client import ControlClient
from equabot_gw.net.accesslog import AccessLog
from tests.support import TOKEN, GatewayProcess, base_config, running_gateway, split_responses
from tests.test_faults import FakeUpstream, answer, closed_port

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:\\.|[^"\\])*)"')


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition text: (name, labels) -> value."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, labels, value = _SAMPLE.match(line).groups()     # type: ignore[union-attr]
        pairs = frozenset((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                          for k, v in _LABEL.findall(labels or ""))
        out[(name, pairs)] = float(value)
    return out


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def request(gw: Any, method: str, path: str, body: Any = None, *, token: str | None = TOKEN,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (``Connection: close``): status, headers, body."""
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        writer.write(head.encode() + b"\r\n" + data)
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    [(status, response_headers, payload)] = split_responses(raw)
    return status, response_headers, payload


async def chat(gw: Any, message: str, *, stream: bool = False, key: str | None = None,
               model: str = "equabot") -> tuple[int, bytes]:
    status, _, body = await request(
        gw, "POST", "/v1/chat/completions",
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": message}]},
        headers={"x-equabot-session-key": key} if key else None)
    return status, body


async def scrape(gw: Any) -> dict:
    status, headers, body = await request(gw, "GET", "/metrics")
    assert status == 200, body
    return parse(body.decode())


async def ws_agent_run(client: ControlClient, message: str, **params: Any) -> dict[str, Any]:
    """An ``agent`` request over WebSocket; its final response's payload."""
    req_id = client.send("agent", {"message": message, "idempotencyKey": str(uuid.uuid4()), **params})
    while True:
        frame = await asyncio.wait_for(client.next_frame(), 10)
        if frame.get("type") == "res" and frame.get("id") == req_id \
                and (frame.get("payload") or {}).get("status") != "accepted":
            return frame


class MetricsEndpointTest(unittest.IsolatedAsyncioTestCase):
    async def test_metrics_need_the_token_unless_public(self) -> None:
        async with running_gateway() as gw:
            self.assertEqual((await request(gw, "GET", "/metrics", token=None))[0], 401)
            self.assertEqual((await request(gw, "GET", "/metrics", token="wrong"))[0], 401)
            status, headers, body = await request(gw, "GET", "/metrics")
            self.assertEqual(status, 200)
            self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
            self.assertIn(b"# TYPE equabot_http_requests_total counter\n", body)
            self.assertNotIn(TOKEN.encode(), body)
        async with running_gateway(base_config(metrics={"public": True})) as gw:
            status, _, body = await request(gw, "GET", "/metrics", token=None)
            self.assertEqual(status, 200)
            self.assertIn(b"equabot_build_info{version=", body)

    async def test_requests_count_by_route_template_never_the_raw_path(self) -> None:
        async with running_gateway() as gw:
            await request(gw, "GET", "/v1/models/secret-model-name")
            await request(gw, "GET", "/v1/models/another%2Fone")
            await request(gw, "GET", "/a-path-nobody-routes")
            await request(gw, "DELETE", "/health")              # 405: no route takes it either
            await request(gw, "HEAD", "/health")
            status, _, body = await request(gw, "GET", "/metrics")
            text = body.decode()
            for raw in ("secret-model-name", "another", "a-path-nobody-routes"):
                self.assertNotIn(raw, text)
            samples = parse(text)
            self.assertEqual(sample(samples, "equabot_http_requests_total",
                                    route="/v1/models/{model}", status="404"), 2)
            self.assertEqual(sample(samples, "equabot_http_requests_total", route="unmatched", status="404"), 1)
            self.assertEqual(sample(samples, "equabot_http_requests_total", route="unmatched", status="405"), 1)
            self.assertEqual(sample(samples, "equabot_http_requests_total", route="/health", status="200"), 1)
            # This scrape is counted once it is answered: the next one sees it.
            samples = await scrape(gw)
            self.assertEqual(sample(samples, "equabot_http_requests_total", route="/metrics", status="200"), 1)

    async def test_runs_tokens_durations_and_first_tokens_match_the_workload(self) -> None:
        async with running_gateway() as gw:
            usage = {"prompt_tokens": 0, "completion_tokens": 0}
            for message in ("one two", "three four five"):
                status, body = await chat(gw, message)
                self.assertEqual(status, 200)
                for name in usage:
                    usage[name] += json.loads(body)["usage"][name]
            status, body = await chat(gw, "streamed words here", stream=True, key="bob")
            self.assertEqual(status, 200)
            samples = await scrape(gw)
            model = {"agent": "main", "model": "echo/echo"}
            self.assertEqual(sample(samples, "equabot_runs_total", agent="main", status="ok"), 3)
            self.assertEqual(sample(samples, "equabot_run_duration_seconds_count", **model, status="ok"), 3)
            self.assertEqual(sample(samples, "equabot_run_time_to_first_token_seconds_count", **model), 3)
            self.assertGreater(sample(samples, "equabot_run_duration_seconds_sum", **model, status="ok"), 0)
            # The streamed run's usage is not in its body: counted by the echo provider as words.
            self.assertEqual(sample(samples, "equabot_run_input_tokens_total", **model),
                             usage["prompt_tokens"] + 3)
            self.assertEqual(sample(samples, "equabot_run_output_tokens_total", **model),
                             usage["completion_tokens"] + len("Echo (turn 1): streamed words here".split()))
            # Every turn was one durable append, in at most three group commits.
            self.assertEqual(sample(samples, "equabot_session_commit_appends_sum"), 3)
            self.assertIn(sample(samples, "equabot_session_commit_appends_count"), (1, 2, 3))
            self.assertEqual(sample(samples, "equabot_session_commit_duration_seconds_count"),
                             sample(samples, "equabot_session_commit_appends_count"))
            self.assertEqual(sample(samples, "equabot_sessions"), 1)

    async def test_upstream_errors_by_provider_and_kind(self) -> None:
        async with FakeUpstream(answer(429, "slow down", "Retry-After: 3")) as limited, \
                FakeUpstream(answer(500, "broken")) as broken:
            data = base_config()
            provider = {"api": "openai-completions", "apiKey": "k", "timeoutSeconds": 5}
            data["models"] = {"providers": {
                "limited": {**provider, "baseUrl": limited.base_url},
                "broken": {**provider, "baseUrl": broken.base_url},
                "down": {**provider, "baseUrl": f"http://127.0.0.1:{closed_port()}/v1"}}}
            async with running_gateway(data) as gw:
                with self.assertLogs("equabot_gw.runs", "INFO") as logs:
                    for name, expected in (("limited", 429), ("limited", 429), ("broken", 502), ("down", 502)):
                        status, _, _ = await request(gw, "POST", "/v1/chat/completions", {
                            "model": "equabot", "messages": [{"role": "user", "content": "hi"}]},
                            headers={"x-equabot-model": f"{name}/m"})
                        self.assertEqual(status, expected)
                samples = await scrape(gw)
        errors = {labels: value for (name, labels), value in samples.items()
                  if name == "equabot_upstream_errors_total"}
        self.assertEqual(errors, {frozenset({("provider", "limited"), ("kind", "http_429")}): 2,
                                  frozenset({("provider", "broken"), ("kind", "http_500")}): 1,
                                  frozenset({("provider", "down"), ("kind", "error")}): 1})
        self.assertEqual(sample(samples, "equabot_runs_total", agent="main", status="error"), 4)
        self.assertEqual(sample(samples, "equabot_run_time_to_first_token_seconds_count",
                                agent="main", model="limited/m"), 0)
        fields = [record.event_fields for record in logs.records]
        self.assertEqual([f.get("upstream_status") for f in fields], [429, 429, 500, None])
        self.assertEqual({f["reason"] for f in fields}, {"upstream"})
        self.assertEqual([f["provider"] for f in fields], ["limited", "limited", "broken", "down"])
        self.assertIn("upstream_status=429", logs.records[0].getMessage())

    async def test_auth_failures_and_lockouts(self) -> None:
        data = base_config(auth={"token": TOKEN, "rateLimit": {
            "maxAttempts": 2, "windowSeconds": 60, "lockoutSeconds": 60, "exemptLoopback": False}})
        async with running_gateway(data) as gw:
            self.assertEqual((await request(gw, "GET", "/v1/models", token=None))[0], 401)
            self.assertEqual((await request(gw, "GET", "/v1/models", token="bad"))[0], 401)
            self.assertEqual((await request(gw, "GET", "/v1/models", token="bad"))[0], 401)   # locks
            self.assertEqual((await request(gw, "GET", "/v1/models", token="bad"))[0], 429)
            self.assertEqual((await request(gw, "GET", "/metrics"))[0], 429)              # locked: any token
            data_public = gw.observer.render().decode()
        samples = parse(data_public)
        self.assertEqual(sample(samples, "equabot_auth_failures_total", reason="missing"), 1)
        self.assertEqual(sample(samples, "equabot_auth_failures_total", reason="invalid"), 2)
        self.assertEqual(sample(samples, "equabot_auth_failures_total", reason="locked_out"), 2)
        self.assertEqual(sample(samples, "equabot_auth_lockouts_total"), 1)
        self.assertEqual(sample(samples, "equabot_http_requests_total", route="/v1/models", status="401"), 3)
        self.assertEqual(sample(samples, "equabot_http_requests_total", route="/v1/models", status="429"), 1)

    async def test_connections_streams_and_queued_runs_while_they_last(self) -> None:
        data = base_config()
        data["agents"] = {"list": [{"id": "main", "default": True},
                                   {"id": "slow", "model": "slow/echo", "maxConcurrent": 1}]}
        data["models"] = {"providers": {"slow": {"api": "echo", "delayMs": 100}}}
        async with running_gateway(data) as gw:
            client = await ControlClient.open(gw.url, TOKEN)
            try:
                first = asyncio.ensure_future(chat(gw, "a b c d e f g h", stream=True, model="equabot:slow"))
                await _until(lambda: gw.server.open_streams == 1)        # it holds the one slot
                second = asyncio.ensure_future(chat(gw, "queued behind", model="equabot:slow"))
                await _until(lambda: gw.runtime.agents["slow"].waiting == 1 and gw.server.open_streams == 1)
                samples = parse(gw.observer.render().decode())
                self.assertEqual(sample(samples, "equabot_runs_active", agent="slow"), 1)
                self.assertEqual(sample(samples, "equabot_runs_queued", agent="slow"), 1)
                self.assertEqual(sample(samples, "equabot_runs_queued", agent="main"), 0)
                self.assertEqual(sample(samples, "equabot_open_connections", kind="websocket"), 1)
                self.assertEqual(sample(samples, "equabot_open_connections", kind="stream"), 1)
                self.assertEqual(sample(samples, "equabot_open_connections", kind="http"), 2)
                facts = gw.facts()
                self.assertEqual((facts["activeRuns"], facts["queuedRuns"]), (2, 1))
                self.assertEqual([status for status, _ in await asyncio.gather(first, second)], [200, 200])
            finally:
                await client.close()
            await _until(lambda: not gw.server.connection_count)
            samples = parse(gw.observer.render().decode())
            for kind in ("http", "websocket", "stream"):
                self.assertEqual(sample(samples, "equabot_open_connections", kind=kind), 0)
            self.assertEqual(sample(samples, "equabot_runs_active", agent="slow"), 0)
            self.assertEqual(sample(samples, "equabot_http_requests_total", route="/", status="101"), 1)

    async def test_label_sets_stay_bounded_however_many_models_clients_name(self) -> None:
        data = base_config()
        data["models"] = {"providers": {"any": {"api": "echo"}}}       # no models list: any name goes
        original = observe.MAX_CELLS
        observe.MAX_CELLS = 3
        try:
            async with running_gateway(data) as gw:
                for i in range(6):
                    status, _, _ = await request(gw, "POST", "/v1/chat/completions", {
                        "model": "equabot", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"x-equabot-model": f"any/model-{i}"})
                    self.assertEqual(status, 200)
                samples = parse(gw.observer.render().decode())
        finally:
            observe.MAX_CELLS = original
        runs = {labels: value for (name, labels), value in samples.items() if name == "equabot_runs_total"}
        self.assertEqual(sum(runs.values()), 6)
        self.assertEqual(sample(samples, "equabot_run_input_tokens_total", agent="other", model="other"), 3)
        self.assertEqual(len([1 for (name, _) in samples if name == "equabot_run_input_tokens_total"]), 4)


async def _until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class RunLogTest(unittest.IsolatedAsyncioTestCase):
    async def test_one_info_line_per_run_with_its_facts(self) -> None:
        async with running_gateway() as gw:
            with self.assertLogs("equabot_gw.runs", "INFO") as logs:
                status, body = await chat(gw, "hello there")
                self.assertEqual(status, 200)
                status, _ = await chat(gw, "keyed", key="bob")
                client = await ControlClient.open(gw.url, TOKEN)
                try:
                    final = await ws_agent_run(client, "over the socket", sessionKey="carol")
                finally:
                    await client.close()
        self.assertTrue(final["ok"], final)
        self.assertEqual(len(logs.records), 3)
        stateless, keyed, ws = (record.event_fields for record in logs.records)
        self.assertRegex(stateless["session"], r"^blake2b:[0-9a-f]{16}$")
        self.assertEqual(keyed["session"], "agent:main:bob")
        self.assertEqual(ws["session"], "agent:main:carol")
        usage = json.loads(body)["usage"]
        self.assertEqual((stateless["input_tokens"], stateless["output_tokens"]),
                         (usage["prompt_tokens"], usage["completion_tokens"]))
        self.assertEqual(json.loads(body)["id"] and stateless["run_id"][:4], "run_")
        for fields in (stateless, keyed, ws):
            self.assertEqual((fields["agent"], fields["provider"], fields["model"], fields["status"]),
                             ("main", "echo", "echo", "ok"))
            self.assertLessEqual(fields["queue_ms"], fields["ttft_ms"])
            self.assertLessEqual(fields["ttft_ms"], fields["duration_ms"])
            self.assertNotIn("upstream_status", fields)
        self.assertEqual([f["origin"] for f in (stateless, keyed, ws)][:2], ["openai", "openai"])
        message = logs.records[0].getMessage()
        self.assertRegex(message, r"^run run_\S+ agent=main session=blake2b:[0-9a-f]{16} origin=openai "
                                  r"provider=echo model=echo status=ok input_tokens=\d+ output_tokens=\d+ "
                                  r"queue_ms=[0-9.]+ ttft_ms=[0-9.]+ duration_ms=[0-9.]+$")

    async def test_run_lines_stay_out_of_the_logs_tail_ring(self) -> None:
        package = logging.getLogger("equabot_gw")
        level = package.level
        package.setLevel(logging.INFO)
        try:
            async with running_gateway() as gw:
                with self.assertLogs("equabot_gw.runs", "INFO") as logs:
                    self.assertEqual((await chat(gw, "hi"))[0], 200)
                logging.getLogger("equabot_gw.control").info("an operator's line")
                lines = gw.log_buffer.tail(None, 100, 100_000).lines
        finally:
            package.setLevel(level)
        self.assertEqual(len(logs.records), 1)
        self.assertTrue(any("an operator's line" in line for line in lines), lines)
        self.assertFalse([line for line in lines if "equabot_gw.runs" in line])

    async def test_nothing_is_built_when_info_is_off(self) -> None:
        run_log = logging.getLogger("equabot_gw.runs")
        seen: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = seen.append      # type: ignore[method-assign]
        run_log.addHandler(handler)
        level = run_log.level
        run_log.setLevel(logging.WARNING)
        try:
            async with running_gateway() as gw:
                self.assertEqual((await chat(gw, "quiet"))[0], 200)
                samples = parse(gw.observer.render().decode())
        finally:
            run_log.setLevel(level)
            run_log.removeHandler(handler)
        self.assertEqual(seen, [])
        self.assertEqual(sample(samples, "equabot_runs_total", agent="main", status="ok"), 1)


class RuntimeObserverTest(unittest.IsolatedAsyncioTestCase):
    async def test_told_once_settled_and_a_failing_observer_costs_the_run_nothing(self) -> None:
        from equabot_gw.agents import runtime as runtime_mod
        from equabot_gw.agents.types import AgentRequest
        async with running_gateway() as gw:
            seen: list[tuple[str, bool, float | None, float | None]] = []

            def broken(run: Any) -> None:
                raise RuntimeError("observer bug")

            gw.runtime.observers[:0] = [
                lambda run: seen.append((run.status, run.id in gw.runtime.active, run.started_at,
                                         run.first_output_at)), broken]
            with self.assertLogs("equabot_gw.runtime", "ERROR") as logs:
                run = runtime_mod.run(gw.runtime, AgentRequest(message="hi there"))
                result = await run.wait()
                await _until(lambda: len(seen) == 1)
            self.assertEqual(result.text, "Echo (turn 1): hi there")
            [(status, active, started, first)] = seen       # told once, settled and no longer active
            self.assertEqual((status, active), ("ok", False))
            self.assertIsNotNone(started)
            self.assertIsNotNone(first)
            self.assertLessEqual(run.created_at, started)
            self.assertLessEqual(started, first)
            self.assertEqual(len(logs.records), 1)
            self.assertIn("observer bug", logs.output[0] + str(logs.records[0].exc_info))
            samples = parse(gw.observer.render().decode())
            self.assertEqual(sample(samples, "equabot_runs_total", agent="main", status="ok"), 1)


class LogFormatTest(unittest.IsolatedAsyncioTestCase):
    def test_json_formatter_one_object_per_line(self) -> None:
        formatter = observe.JSONFormatter()
        record = logging.LogRecord("equabot_gw.runs", logging.INFO, __file__, 1, "run %s\nsecond", ("x",), None)
        record.event_fields = {"event": "run", "run_id": "x", "session": "é\u2028"}
        line = formatter.format(record)
        self.assertNotIn("\n", line)
        self.assertTrue(line.isascii())
        data = json.loads(line)
        self.assertEqual((data["level"], data["logger"], data["message"], data["event"], data["session"]),
                         ("info", "equabot_gw.runs", "run x\nsecond", "run", "é\u2028"))
        self.assertRegex(data["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        try:
            raise ValueError("boom")
        except ValueError:
            import sys
            failing = logging.LogRecord("equabot_gw", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
        data = json.loads(formatter.format(failing))
        self.assertEqual(data["level"], "error")
        self.assertIn("ValueError: boom", data["exception"])

    async def test_access_log_json_lines(self) -> None:
        stream = io.StringIO()
        access = AccessLog(stream, json_lines=True)
        access.record(7, "GET", '/odd\x00"path\n', 404, 12, 0.0015, "req_1")
        access.flush()
        [line] = stream.getvalue().splitlines()
        data = json.loads(line)
        self.assertEqual({k: data[k] for k in ("logger", "conn", "method", "path", "status", "bytes",
                                                "duration_ms", "request_id")},
                         {"logger": "equabot_gw.access", "conn": 7, "method": "GET", "path": '/odd\x00"path\n',
                          "status": 404, "bytes": 12, "duration_ms": 1.5, "request_id": "req_1"})
        # The keys every log line has, the text line as its message.
        text_stream = io.StringIO()
        text = AccessLog(text_stream)
        text.record(7, "GET", '/odd\x00"path\n', 404, 12, 0.0015, "req_1")
        text.flush()
        self.assertEqual(data["message"] + "\n", text_stream.getvalue())
        self.assertLessEqual({"time", "level", "logger", "message"}, set(data))

    def test_the_cli_writes_every_stderr_line_as_json(self) -> None:
        with GatewayProcess(base_config(), extra_args=("--log-format", "json")) as gw:
            import urllib.request
            req = urllib.request.Request(gw.url + "/v1/chat/completions", method="POST",
                                         data=b'{"model":"m","messages":[{"role":"user","content":"hi"}]}',
                                         headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as response:
                self.assertEqual(response.status, 200)
            self.assertEqual(gw.stop(), 0)
            lines = gw.stderr_path.read_text().splitlines()
        records = [json.loads(line) for line in lines]      # every line is one JSON object
        events = {(r["logger"], r.get("event")) for r in records}
        self.assertIn(("equabot_gw.runs", "run"), events)
        self.assertIn(("equabot_gw.access", "request"), events)
        for record in records:
            self.assertLessEqual({"time", "level", "logger", "message"}, set(record), record)
        self.assertIn("shutting down", [r["message"] for r in records])


class HealthFactsTest(unittest.IsolatedAsyncioTestCase):
    async def test_health_readyz_and_status_report_the_same_facts(self) -> None:
        async with running_gateway() as gw:
            for key in ("alice", "bob"):
                await chat(gw, "hi", key=key)
            client = await ControlClient.open(gw.url, TOKEN)
            try:
                status = await client.request("status", {})
                _, _, health = await request(gw, "GET", "/health", token=None)
                code, _, ready = await request(gw, "GET", "/readyz", token=None)
            finally:
                await client.close()
            health, ready = json.loads(health), json.loads(ready)
            self.assertEqual(code, 200)
            self.assertEqual((health["status"], ready["status"]), ("ok", "ready"))
            for facts in (health, ready):
                self.assertEqual(facts["version"], client.hello["server"]["version"])
                self.assertEqual(facts["sessions"], status["sessions"]["count"])
                self.assertEqual(facts["sessions"], 2)
                self.assertEqual((facts["activeRuns"], facts["queuedRuns"]), (0, 0))
                self.assertEqual(facts["connections"]["control"], status["connections"]["control"])
                self.assertEqual(set(facts["connections"]), set(status["connections"]))
                self.assertGreaterEqual(facts["uptimeSeconds"], 0)
                self.assertLess(facts["uptimeSeconds"], client.hello["snapshot"]["uptimeMs"] / 1000 + 60)
                text = json.dumps(facts)
                self.assertNotIn(TOKEN, text)
                self.assertNotIn(str(gw.state_dir), text)


class CommitStatsTest(unittest.TestCase):
    def test_bounds_are_what_the_histograms_render(self) -> None:
        from equabot_gw.agents.transcripts import CommitStats
        stats = CommitStats()
        for size, seconds in ((1, 0.0004), (3, 0.003), (5000, 9.0)):
            stats.add(size, seconds)
        histogram = metrics.Histogram("t_appends", "x", buckets=CommitStats.SIZE_BOUNDS,
                                      read=lambda: [((), stats.sizes, stats.size_sum)])
        lines = list(histogram.render())
        self.assertIn('t_appends_bucket{le="1"} 1\n', lines)
        self.assertIn('t_appends_bucket{le="4"} 2\n', lines)
        self.assertIn('t_appends_bucket{le="+Inf"} 3\n', lines)
        self.assertIn("t_appends_sum 5004\n", lines)
        self.assertEqual(stats.seconds[0], 1)
        self.assertEqual(stats.seconds[-1], 1)


if __name__ == "__main__":
    unittest.main()
