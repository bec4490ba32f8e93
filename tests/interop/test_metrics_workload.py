"""The official ``prometheus_client`` parser reads a real gateway's ``/metrics`` after a mixed
workload, and every counter matches the workload exactly.

The workload: non-streaming completions, streamed ones, completions whose
upstream fails, ``agent`` runs over WebSocket, refused credentials, a path no
route takes. Token counts are compared with the usage each door reported.
Installed by the Makefile into .venv-test; with EQUABOT_INTEROP=1 (``make
test``) a missing library is a failure, elsewhere these tests skip.
"""

from __future__ import annotations

import json
import os
import unittest
from typing import Any

from equabot_gw.gateway.client import ControlClient
from tests.support import TOKEN, base_config, running_gateway
from tests.test_faults import FakeUpstream, answer
from tests.test_observe import request, ws_agent_run

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:     # pragma: no cover - depends on the environment
    text_string_to_metric_families = None

REQUIRED = os.environ.get("EQUABOT_INTEROP") == "1"
CHAT = "/v1/chat/completions"


def completion(message: str, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "equabot", "messages": [{"role": "user", "content": message}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def stream_usage(payload: bytes) -> dict[str, int]:
    events = [json.loads(line[6:]) for line in payload.decode().splitlines()
              if line.startswith("data: {")]
    return next(e["usage"] for e in events if e.get("usage"))


@unittest.skipIf(text_string_to_metric_families is None and not REQUIRED,
                 "prometheus_client is not installed (make test installs it)")
class MetricsAfterAWorkloadTest(unittest.IsolatedAsyncioTestCase):
    async def test_every_counter_matches_the_workload(self) -> None:
        async with FakeUpstream(answer(500, "upstream broke")) as broken:
            data = base_config()
            data["models"] = {"providers": {"broken": {"api": "openai-completions", "apiKey": "k",
                                                       "baseUrl": broken.base_url}}}
            async with running_gateway(data) as gw:
                prompt = completion_tokens = 0
                for message in ("one", "two words", "three more words"):           # 3 ok
                    status, _, body = await request(gw, "POST", CHAT, completion(message))
                    self.assertEqual(status, 200)
                    usage = json.loads(body)["usage"]
                    prompt, completion_tokens = prompt + usage["prompt_tokens"], \
                        completion_tokens + usage["completion_tokens"]
                for message in ("streamed", "streamed again"):                     # 2 streamed
                    status, _, body = await request(gw, "POST", CHAT, completion(message, stream=True),
                                                    headers={"x-equabot-session-key": "s"})
                    self.assertEqual(status, 200)
                    usage = stream_usage(body)
                    prompt, completion_tokens = prompt + usage["prompt_tokens"], \
                        completion_tokens + usage["completion_tokens"]
                for _ in range(2):                                                  # 2 upstream failures
                    status, _, _ = await request(gw, "POST", CHAT, completion("fail"),
                                                 headers={"x-equabot-model": "broken/m"})
                    self.assertEqual(status, 502)
                client = await ControlClient.open(gw.url, TOKEN)                  # 2 runs over WebSocket
                try:
                    for message in ("over", "the socket"):
                        final = await ws_agent_run(client, message, sessionKey="ws")
                        self.assertTrue(final["ok"], final)
                        usage = final["payload"]["result"]["meta"]["agentMeta"]["usage"]
                        prompt, completion_tokens = prompt + usage["input"], completion_tokens + usage["output"]
                finally:
                    await client.close()
                for token in ("wrong", "also wrong", None):                        # 3 refused
                    self.assertEqual((await request(gw, "GET", "/v1/models", token=token))[0], 401)
                self.assertEqual((await request(gw, "GET", "/no/such/path"))[0], 404)
                status, headers, body = await request(gw, "GET", "/metrics")
                self.assertEqual(status, 200)
                self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))

        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for family in families.values() for s in family.samples}

        def value(name: str, **labels: str) -> float:
            return samples.get((name, frozenset(labels.items())), 0.0)

        def total(name: str) -> float:
            return sum(v for (n, _), v in samples.items() if n == name)

        self.assertEqual(families["equabot_http_requests"].type, "counter")
        self.assertEqual(families["equabot_run_duration_seconds"].type, "histogram")
        requests = {labels: v for (n, labels), v in samples.items() if n == "equabot_http_requests_total"}
        self.assertEqual(requests, {
            frozenset({("route", CHAT), ("status", "200")}): 5,
            frozenset({("route", CHAT), ("status", "502")}): 2,
            frozenset({("route", "/"), ("status", "101")}): 1,
            frozenset({("route", "/v1/models"), ("status", "401")}): 3,
            frozenset({("route", "unmatched"), ("status", "404")}): 1})
        self.assertEqual(value("equabot_runs_total", agent="main", status="ok"), 7)
        self.assertEqual(value("equabot_runs_total", agent="main", status="error"), 2)
        self.assertEqual(total("equabot_runs_total"), 9)
        self.assertEqual(total("equabot_run_duration_seconds_count"), 9)
        self.assertEqual(value("equabot_run_duration_seconds_count", agent="main", model="broken/m",
                               status="error"), 2)
        self.assertEqual(value("equabot_run_duration_seconds_bucket", agent="main", model="echo/echo",
                               status="ok", le="+Inf"), 7)
        self.assertEqual(total("equabot_run_time_to_first_token_seconds_count"), 7)
        self.assertEqual(value("equabot_run_input_tokens_total", agent="main", model="echo/echo"), prompt)
        self.assertEqual(value("equabot_run_output_tokens_total", agent="main", model="echo/echo"),
                         completion_tokens)
        self.assertEqual(value("equabot_upstream_errors_total", provider="broken", kind="http_500"), 2)
        self.assertEqual(total("equabot_upstream_errors_total"), 2)
        self.assertEqual(value("equabot_auth_failures_total", reason="invalid"), 2)
        self.assertEqual(value("equabot_auth_failures_total", reason="missing"), 1)
        self.assertEqual(value("equabot_auth_failures_total", reason="locked_out"), 0)
        self.assertEqual(value("equabot_auth_lockouts_total"), 0)
        # Every run was recorded: one durable append each, failures included; the two
        # WebSocket runs carry an idempotencyKey: one key-journal line each.
        self.assertEqual(value("equabot_session_commit_appends_sum"), 11)
        self.assertEqual(value("equabot_session_commit_appends_count"),
                         value("equabot_session_commit_duration_seconds_count"))
        self.assertEqual(value("equabot_sessions"), 2)                 # "s" and "ws"
        self.assertEqual(value("equabot_runs_queued", agent="main"), 0)
        self.assertEqual(value("equabot_open_connections", kind="websocket"), 0)
        self.assertEqual(value("equabot_open_connections", kind="http"), 1)     # the scrape's own


if __name__ == "__main__":
    unittest.main()
