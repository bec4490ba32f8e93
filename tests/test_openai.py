"""POST /v1/chat/completions and GET /v1/models against a real gateway, with stdlib http.client.

Every success and error body is validated against OpenAI's published schemas.
"""

from __future__ import annotations

import gzip
import http.client
import json
import pathlib
import socket
import sys
import threading
import time
import unittest
from typing import Any

from equabot_gw.agents import transcripts
from equabot_gw.agents.sessions import scoped_key
from equabot_gw.conformance.jsonschema import Validator
from tests.support import TOKEN, GatewayProcess, LiveGateway, base_config, error_of

SCHEMAS = Validator.openai()
PARTIAL_THEN_FAIL = ("import sys,time; sys.stdout.write('partial words'); sys.stdout.flush(); "
                     "time.sleep(0.2); sys.stderr.write('boom'); sys.exit(3)")


def gateway_config() -> dict[str, Any]:
    data = base_config(http={"cors": {"allowOrigins": ["https://app.example"]}})
    data["agents"] = {"list": [
        {"id": "main", "default": True},
        {"id": "beta", "systemPrompt": "You are beta."},
        {"id": "slow", "model": "slow/echo"},
        {"id": "tiny", "model": "slow/echo", "maxConcurrent": 1},
        {"id": "late", "model": "slow/echo", "timeoutSeconds": 0.15},
        {"id": "broken", "model": "failing/x"},
        {"id": "partial", "model": "partial/x"},
        {"id": "script", "model": "script/x"},
    ], "defaults": {"maxQueued": 0}}
    data["models"] = {"providers": {
        "slow": {"api": "echo", "delayMs": 60},
        "listed": {"api": "echo", "models": ["only-this"]},
        "failing": {"api": "command", "command": [sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(2)"]},
        "partial": {"api": "command", "command": [sys.executable, "-c", PARTIAL_THEN_FAIL]},
        "script": {"api": "command", "command": [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())"]},
    }}
    return data


class OpenAITestCase(LiveGateway, unittest.TestCase):
    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return gateway_config()

    def post(self, body: Any, headers: dict[str, str] | None = None, *, raw: bytes | None = None,
             auth: bool = True) -> tuple[int, http.client.HTTPResponse, bytes]:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=10)
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {TOKEN}"} if auth else {}),
             **(headers or {})}
        c.request("POST", "/v1/chat/completions", body=raw if raw is not None else json.dumps(body), headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, r, data

    def chat(self, content: Any = "hi", **fields: Any) -> dict[str, Any]:
        return {"model": fields.pop("model", "equabot"), "messages": [{"role": "user", "content": content}],
                **fields}

    def ok(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        status, r, data = self.post(body, headers)
        self.assertEqual(status, 200, data)
        obj = json.loads(data)
        self.assertEqual(SCHEMAS.errors(obj, "CreateChatCompletionResponse"), [])
        return obj

    def fails(self, body: Any, status: int, headers: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
        got, r, data = self.post(body, headers, **kw)
        self.assertEqual(got, status, data)
        self.assertEqual(r.getheader("content-type"), "application/json")
        self.assertEqual(SCHEMAS.errors(json.loads(data), "ErrorResponse"), [])
        return error_of(data)

    def stream(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=10)
        self.addCleanup(c.close)
        c.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}),
                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}", **(headers or {})})
        r = c.getresponse()
        return r, r.read()

    def events(self, raw: bytes) -> list[Any]:
        self.assertTrue(raw.endswith(b"data: [DONE]\n\n"), raw[-80:])
        blocks = raw.decode().split("\n\n")
        self.assertEqual(blocks[-1], "")
        out = []
        for block in blocks[:-1]:
            self.assertRegex(block, r"^id: chatcmpl-[0-9a-f-]+:[0-9]+\n")     # every event has an id
            block = block.partition("\n")[2]
            self.assertTrue(block.startswith("data: "), block)
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
        self.assertEqual(out.count("[DONE]"), 1)
        return out


class CompletionTest(OpenAITestCase):
    def test_shape_and_echo(self) -> None:
        obj = self.ok(self.chat("hello world"))
        self.assertTrue(obj["id"].startswith("chatcmpl-"))
        self.assertEqual((obj["object"], obj["model"]), ("chat.completion", "equabot"))
        self.assertIsInstance(obj["created"], int)
        self.assertTrue(obj["system_fingerprint"])
        [choice] = obj["choices"]
        self.assertEqual(choice["message"], {"role": "assistant", "content": "Echo (turn 1): hello world",
                                             "refusal": None, "annotations": []})
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertEqual(obj["usage"], {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})

    def test_model_string_is_returned_unchanged(self) -> None:
        for model in ("gpt-4o", "equabot", "equabot:main", "agent:beta", "equabot/beta"):
            with self.subTest(model=model):
                self.assertEqual(self.ok(self.chat(model=model))["model"], model)

    def test_agent_selection(self) -> None:
        # beta has a system prompt of 3 words: it shows in the prompt token count.
        for model, headers, prompt in (("equabot:beta", {}, 4), ("agent:beta", {}, 4), ("equabot/beta", {}, 4),
                                       ("equabot", {"x-equabot-agent-id": "beta"}, 4),
                                       ("equabot:beta", {"x-equabot-agent-id": "main"}, 1),
                                       ("gpt-4o", {}, 1)):
            with self.subTest(model=model, headers=headers):
                self.assertEqual(self.ok(self.chat(model=model), headers)["usage"]["prompt_tokens"], prompt)

    def test_the_original_clients_headers_and_model_prefixes(self) -> None:
        # The original Gateway's clients: x-clawdbot-* / clawdbot:<id> (older), x-openclaw-* / openclaw:<id>.
        for model, headers, prompt in (("clawdbot:beta", {}, 4), ("openclaw:beta", {}, 4),
                                       ("equabot", {"x-clawdbot-agent-id": "beta"}, 4),
                                       ("equabot", {"x-openclaw-agent-id": "beta"}, 4),
                                       # two families that disagree: ours wins, then openclaw's
                                       ("equabot", {"x-equabot-agent-id": "main", "x-openclaw-agent-id": "beta"}, 1),
                                       ("equabot", {"x-openclaw-agent-id": "main", "x-clawdbot-agent-id": "beta"}, 1)):
            with self.subTest(model=model, headers=headers):
                self.assertEqual(self.ok(self.chat(model=model), headers)["usage"]["prompt_tokens"], prompt)
        for family in ("x-clawdbot-", "x-openclaw-"):
            key = f"alias-{family}{time.monotonic_ns()}"
            turns = [self.ok(self.chat(), {family + "session-key": key})["choices"][0]["message"]["content"]
                     for _ in range(2)]
            self.assertEqual(turns, ["Echo (turn 1): hi", "Echo (turn 2): hi"], family)
        # One session, whichever family names it.
        key = f"alias-shared-{time.monotonic_ns()}"
        self.ok(self.chat(), {"x-clawdbot-session-key": key})
        self.assertIn("(turn 2)", self.ok(self.chat(), {"x-equabot-session-key": key})
                      ["choices"][0]["message"]["content"])

    def test_unknown_agent_is_404(self) -> None:
        error = self.fails(self.chat(model="equabot:nobody"), 404)
        self.assertEqual(error["code"], "model_not_found")
        self.assertIn("'nobody'", error["message"])
        self.fails(self.chat(), 404, {"x-equabot-agent-id": "ghost"})

    def test_system_and_developer_messages_and_text_parts(self) -> None:
        body = {"model": "x", "messages": [
            {"role": "system", "content": "one two"},
            {"role": "developer", "content": [{"type": "text", "text": "three"}]},
            {"role": "user", "content": [{"type": "text", "text": "multi "}, {"type": "text", "text": "part"}]}]}
        obj = self.ok(body)
        self.assertEqual(obj["choices"][0]["message"]["content"], "Echo (turn 1): multi part")
        self.assertEqual(obj["usage"]["prompt_tokens"], 5)

    def test_earlier_messages_are_context(self) -> None:
        body = {"model": "x", "messages": [{"role": "user", "content": "a b"},
                                           {"role": "assistant", "content": "c d e"},
                                           {"role": "user", "content": "f"}]}
        obj = self.ok(body)
        self.assertEqual(obj["choices"][0]["message"]["content"], "Echo (turn 1): f")
        self.assertEqual(obj["usage"]["prompt_tokens"], 6)

    def test_stateless_by_default_and_user_sessions(self) -> None:
        for _ in range(2):
            self.assertIn("(turn 1)", self.ok(self.chat())["choices"][0]["message"]["content"])
        user = f"user-{time.monotonic_ns()}"
        turns = [self.ok(self.chat(user=user))["choices"][0]["message"]["content"] for _ in range(3)]
        self.assertEqual(turns, [f"Echo (turn {n}): hi" for n in (1, 2, 3)])

    def test_session_key_header(self) -> None:
        key = f"my-key-{time.monotonic_ns()}"
        headers = {"x-equabot-session-key": key}
        self.assertIn("(turn 1)", self.ok(self.chat(), headers)["choices"][0]["message"]["content"])
        self.assertIn("(turn 2)", self.ok(self.chat(), headers)["choices"][0]["message"]["content"])
        transcript = self.gw.state_dir / "agents" / "main" / "sessions"
        self.assertTrue(any(transcript.glob("*.jsonl")))
        # A full key picks its agent; naming another agent is a 400 naming both.
        self.assertIn("(turn 1)", self.ok(self.chat(), {"x-equabot-session-key": f"agent:beta:{key}"})
                      ["choices"][0]["message"]["content"])
        error = self.fails(self.chat(model="equabot:main"), 400, {"x-equabot-session-key": f"agent:beta:{key}"})
        self.assertIn("'beta'", error["message"])
        self.assertIn("'main'", error["message"])
        self.assertEqual(self.fails(self.chat(), 400, {"x-equabot-session-key": "bad key!"})["code"],
                         "invalid_session_key")

    def test_generation_options(self) -> None:
        obj = self.ok(self.chat("one two three four", max_tokens=3))
        self.assertEqual(obj["choices"][0]["message"]["content"], "Echo (turn 1):")
        self.assertEqual(obj["choices"][0]["finish_reason"], "length")
        obj = self.ok(self.chat("one two three", max_completion_tokens=4))
        self.assertEqual(obj["choices"][0]["finish_reason"], "length")
        obj = self.ok(self.chat("one two STOP three", stop=["STOP"], temperature=0.2, top_p=0.9, seed=7))
        self.assertEqual(obj["choices"][0]["message"]["content"], "Echo (turn 1): one two ")
        self.assertEqual(obj["choices"][0]["finish_reason"], "stop")

    def test_neutral_values_are_accepted(self) -> None:
        self.ok(self.chat(n=1, tools=[], logprobs=False, response_format={"type": "text"}, tool_choice="none",
                          frequency_penalty=0, presence_penalty=0, logit_bias={}, metadata={"a": "b"},
                          store=False, parallel_tool_calls=True, stream=False, user="", modalities=["text"],
                          verbosity="medium"))

    def test_metadata_is_bounded_as_openai_bounds_it(self) -> None:
        # OpenAI's Metadata (the Responses door checks the same): at most 16 pairs, string
        # values of at most 512 characters, keys of at most 64; null is no metadata.
        self.ok(self.chat(metadata={f"k{i}": "v" * 512 for i in range(16)}))
        self.ok(self.chat(metadata=None))
        for metadata, param in (({"a": 1}, "metadata.a"), ({"a": None}, "metadata.a"),
                                ({"a": {"nested": "x"}}, "metadata.a"), ({"a": "v" * 513}, "metadata.a"),
                                ({"k" * 65: "v"}, "metadata." + "k" * 64),
                                ({f"k{i}": "v" for i in range(17)}, "metadata")):
            with self.subTest(param=param[:12], value=str(metadata)[:30]):
                error = self.fails(self.chat(metadata=metadata), 400)
                self.assertEqual((error["code"], error["param"]), ("invalid_value", param))
        error = self.fails(self.chat(metadata=["a"]), 400)
        self.assertEqual((error["code"], error["param"]), ("invalid_type", "metadata"))

    def test_logit_bias_maps_token_ids_in_ascii_digits_to_biases_within_100(self) -> None:
        self.ok(self.chat(logit_bias={"50256": -100, "0": 100, "42": 0.5}))
        for bias in ({"\u00b2": 1}, {"\u0663": 1}, {"\uff11": 1}, {"": 1}, {"-1": 1}, {"1.0": 1}, {"x": 1},
                     {"1": 101}, {"1": -100.5}, {"1": "5"}, {"1": True}, {"1": None}):
            with self.subTest(bias=bias):
                error = self.fails(self.chat(logit_bias=bias), 400)
                self.assertEqual((error["code"], error["param"]), ("invalid_value", "logit_bias"))

    def test_unsupported_values_are_refused_by_name(self) -> None:
        # Echo honours every option but structured output (an echo is not JSON); the
        # gateway has no audio output at all.
        for field, value in (("response_format", {"type": "json_object"}), ("audio", {"voice": "x"}),
                             ("modalities", ["text", "audio"]), ("verbosity", "low")):
            with self.subTest(field=field):
                error = self.fails(self.chat(**{field: value}), 400)
                self.assertEqual((error["code"], error["param"]), ("unsupported_parameter", field))
        # The command provider honours none: each is refused by the name the client sent.
        tool = {"type": "function", "function": {"name": "f"}}
        for fields, param in (({"n": 2}, "n"), ({"tools": [tool]}, "tools"),
                              ({"functions": [tool["function"]]}, "functions"),
                              ({"logprobs": True, "top_logprobs": 3}, "logprobs"),
                              ({"frequency_penalty": 0.5}, "frequency_penalty"),
                              ({"logit_bias": {"50256": -100}}, "logit_bias"),
                              ({"reasoning_effort": "high"}, "reasoning_effort"),
                              ({"top_k": 40}, "top_k"), ({"min_p": 0.1}, "min_p"),
                              ({"repetition_penalty": 1.1}, "repetition_penalty")):
            with self.subTest(param=param):
                error = self.fails(self.chat(model="equabot:script", **fields), 400)
                self.assertEqual((error["code"], error["param"]), ("unsupported_parameter", param))
        error = self.fails(self.chat(tool_choice="required"), 400)      # no tools to choose from
        self.assertEqual((error["code"], error["param"]), ("invalid_value", "tool_choice"))

    def test_provider_that_cannot_honour_an_option(self) -> None:
        error = self.fails(self.chat(model="equabot:script", temperature=0.5), 400)
        self.assertEqual((error["code"], error["param"]), ("unsupported_parameter", "temperature"))
        error = self.fails(self.chat(model="equabot:script", max_completion_tokens=5), 400)
        self.assertEqual(error["param"], "max_completion_tokens")

    def test_integers_too_large_for_a_float_are_refused_not_crashed_on(self) -> None:
        # A 400-digit integer is valid JSON; converting it to a float overflows.
        huge = 10 ** 400
        for field in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "top_k", "min_p",
                      "repetition_penalty"):
            for value in (huge, -huge):
                with self.subTest(field=field, negative=value < 0):
                    error = self.fails(self.chat(**{field: value}), 400)
                    self.assertEqual(error["param"], field)

    def test_unknown_field_is_refused_as_openai_does(self) -> None:
        error = self.fails(self.chat(frobnicate=1), 400)
        self.assertEqual(error["message"], "Unrecognized request argument supplied: frobnicate")

    def test_a_seed_is_any_64_bit_integer(self) -> None:
        for seed in (2**63 - 1, -2**63, 0):
            with self.subTest(seed=seed):
                self.assertEqual(self.ok(self.chat("x", seed=seed))["object"], "chat.completion")

    def test_bad_types_name_the_field(self) -> None:
        for body, param in ((self.chat(temperature="hot"), "temperature"), (self.chat(temperature=3), "temperature"),
                            (self.chat(stream="yes"), "stream"), ({"model": 5, "messages": []}, "model"),
                            ({"model": "x", "messages": "hi"}, "messages"), ({"model": "x", "messages": []}, "messages"),
                            ({"messages": [{"role": "user", "content": "x"}]}, "model"),
                            ({"model": "x"}, "messages"), (self.chat(max_tokens=0), "max_tokens"),
                            (self.chat(stop=["a", "b", "c", "d", "e"]), "stop"), (self.chat(seed=1.5), "seed"),
                            (self.chat(seed=2**63), "seed"), (self.chat(seed=-2**63 - 1), "seed"),
                            ({"model": "x", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
                            ({"model": "x", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
                            ({"model": "x", "messages": [{"role": "user", "content": [
                                {"type": "image_url", "image_url": {"url": "x"}}]}]},
                             "messages[0].content[0].image_url.url"),
                            ({"model": "x", "messages": [{"role": "user", "content": [
                                {"type": "video", "video": {}}]}]}, "messages[0].content[0].type"),
                            ({"model": "x", "messages": [{"role": "tool", "content": "r"}]},
                             "messages[0].tool_call_id"),
                            (self.chat(tools=[{"type": "function", "function": {"name": "bad name"}}]),
                             "tools[0].function.name"),
                            (self.chat(n=0), "n"), (self.chat(top_logprobs=21, logprobs=True), "top_logprobs"),
                            (self.chat(stream_options={"include_usage": True}), "stream_options"),
                            (self.chat(stream=True, stream_options={"include_usage": "yes"}),
                             "stream_options.include_usage"),
                            (self.chat(stream=True, stream_options={"include_obfuscation": 1}),
                             "stream_options.include_obfuscation"),
                            (self.chat(stream=True, stream_options={"bogus": True}), "stream_options.bogus")):
            with self.subTest(param=param, body=body):
                self.assertEqual(self.fails(body, 400)["param"], param)

    def test_an_unknown_role_is_told_every_role_there_is(self) -> None:
        # Legacy "function" results are accepted, so the list says so too.
        message = self.fails({"model": "x", "messages": [{"role": "robot", "content": "x"}]}, 400)["message"]
        self.assertTrue(message.endswith("'robot' is not one of 'system', 'developer', 'user', 'assistant', "
                                         "'tool', 'function'."), message)

    def test_missing_user_message(self) -> None:
        error = self.fails({"model": "x", "messages": [{"role": "system", "content": "s"}]}, 400)
        self.assertIn("Missing user message", error["message"])
        self.assertEqual(error["param"], "messages")

    def test_bad_json_and_content_type(self) -> None:
        self.assertEqual(self.fails(None, 400, raw=b"{not json")["code"], "invalid_json")
        self.assertEqual(self.fails(None, 400, raw=b"[1, 2]")["code"], "invalid_json")
        self.assertEqual(self.fails(None, 400, raw=b"\xff\xfe")["code"], "invalid_json")
        self.assertEqual(self.fails(self.chat(), 415, {"Content-Type": "text/plain"})["code"],
                         "unsupported_media_type")
        self.ok(self.chat(), {"Content-Type": "application/json; charset=utf-8"})

    def test_a_content_coding_is_refused_and_identity_taken(self) -> None:
        body = json.dumps(self.chat()).encode()
        for coding, raw in (("gzip", gzip.compress(body)), ("br", body), ("identity, gzip", gzip.compress(body))):
            with self.subTest(coding=coding):
                status, r, data = self.post(None, {"Content-Encoding": coding}, raw=raw)
                self.assertEqual(status, 415, data)
                self.assertEqual(r.getheader("accept-encoding"), "identity")
                error = error_of(data)
                self.assertEqual((error["code"], error["param"]), ("unsupported_content_encoding",
                                                                   "content-encoding"))
        self.ok(self.chat(), {"Content-Encoding": "identity"})

    def test_auth(self) -> None:
        for headers, code in (({}, "missing_api_key"), ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
                              ({"Authorization": "Basic abc"}, "invalid_api_key")):
            with self.subTest(headers=headers):
                status, r, data = self.post(self.chat(), headers, auth=False)
                self.assertEqual(status, 401)
                self.assertEqual(r.getheader("www-authenticate"), "Bearer")
                self.assertEqual(error_of(data)["type"], "authentication_error")
                self.assertEqual(error_of(data)["code"], code)
                self.assertNotIn(TOKEN.encode(), data)
        status, _, _ = self.post(self.chat(), {"Authorization": f"bearer {TOKEN}"}, auth=False)
        self.assertEqual(status, 200)       # RFC 9110 §11.1: the scheme is case-insensitive

    def test_model_override_header(self) -> None:
        self.ok(self.chat(), {"x-equabot-model": "slow/echo"})
        self.ok(self.chat(), {"x-equabot-model": "listed/only-this"})
        error = self.fails(self.chat(), 400, {"x-equabot-model": "nowhere/gpt"})
        self.assertIn("'nowhere'", error["message"])
        error = self.fails(self.chat(), 400, {"x-equabot-model": "listed/other"})
        self.assertIn("'other'", error["message"])

    def test_queue_full_is_429_with_retry_after(self) -> None:
        results: list[int] = []
        t = threading.Thread(target=lambda: results.append(self.post(self.chat(model="equabot:tiny"))[0]))
        t.start()
        time.sleep(0.1)
        status, r, data = self.post(self.chat(model="equabot:tiny"))
        t.join()
        self.assertEqual(status, 429, data)
        self.assertEqual(r.getheader("retry-after"), "1")
        self.assertEqual(error_of(data)["type"], "rate_limit_error")
        self.assertEqual(results, [200])

    def test_upstream_failure_before_output_is_502(self) -> None:
        error = self.fails(self.chat(model="equabot:broken"), 502)
        self.assertIn("exit status 2", error["message"])
        self.assertIn("bad", error["message"])

    def test_run_timeout_is_504(self) -> None:
        self.assertEqual(self.fails(self.chat("a b c d e f", model="equabot:late"), 504)["code"], "run_timeout")

    def test_request_id_header(self) -> None:
        _, r, _ = self.post(self.chat())
        self.assertTrue(r.getheader("x-request-id").startswith("req_"))
        _, r, _ = self.post(self.chat(), {"x-request-id": "trace-123"})
        self.assertEqual(r.getheader("x-request-id"), "trace-123")


class StreamingTest(OpenAITestCase):
    def test_sse_framing(self) -> None:
        r, raw = self.stream(self.chat("one two three"))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("content-type"), "text/event-stream; charset=utf-8")
        self.assertEqual(r.getheader("cache-control"), "no-cache")
        self.assertEqual(r.getheader("transfer-encoding"), "chunked")
        events = self.events(raw)
        chunks = events[:-1]
        for chunk in chunks:
            self.assertEqual(SCHEMAS.errors(chunk, "CreateChatCompletionStreamResponse"), [])
            self.assertEqual(chunk["object"], "chat.completion.chunk")
        self.assertEqual(len({c["id"] for c in chunks}), 1)
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        self.assertEqual(text, "Echo (turn 1): one two three")
        self.assertGreaterEqual(len(chunks), 7)                 # word by word
        self.assertEqual(chunks[-1]["choices"][0], {"index": 0, "delta": {}, "logprobs": None,
                                                    "finish_reason": "stop"})
        self.assertTrue(all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1]))
        self.assertNotIn("usage", chunks[0])

    def test_include_usage(self) -> None:
        r, raw = self.stream(self.chat("a b", stream_options={"include_usage": True}))
        events = self.events(raw)
        usage_chunk = events[-2]
        self.assertEqual(usage_chunk["choices"], [])
        self.assertEqual(usage_chunk["usage"], {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})
        self.assertTrue(all(e["usage"] is None for e in events[:-2]))
        self.assertEqual(events[-3]["choices"][0]["finish_reason"], "stop")

    def test_deltas_arrive_as_produced(self) -> None:
        body = json.dumps(self.chat("a b c d", model="equabot:slow", stream=True)).encode()
        with socket.create_connection((self.gw.host, self.gw.port), timeout=5) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                      + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            started = time.monotonic()
            first = b""                        # head, role chunk and first delta, long before the end
            while b'"content":"Echo"' not in first:
                first += s.recv(65536)
            self.assertLess(time.monotonic() - started, 0.2)
            self.assertNotIn(b"[DONE]", first)
            rest = b""
            while chunk := s.recv(65536):
                rest += chunk
        self.assertGreater(time.monotonic() - started, 0.2)    # 7 deltas x 60 ms
        self.assertIn(b"data: [DONE]", rest)

    def test_error_after_streaming_began_is_a_final_error_event(self) -> None:
        r, raw = self.stream(self.chat(model="equabot:partial"))
        self.assertEqual(r.status, 200)
        events = self.events(raw)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict) and "choices" in e)
        self.assertEqual(text, "partial words")
        error = events[-2]["error"]
        self.assertEqual(SCHEMAS.errors({"error": error}, "ErrorResponse"), [])
        self.assertIn("exit status 3", error["message"])

    def test_failure_before_output_gets_a_real_status(self) -> None:
        r, raw = self.stream(self.chat(model="equabot:broken"))
        self.assertEqual(r.status, 502)
        self.assertEqual(r.getheader("content-type"), "application/json")
        error_of(raw)

    def test_http10_stream_is_close_delimited(self) -> None:
        body = json.dumps(self.chat("x", stream=True)).encode()
        with socket.create_connection((self.gw.host, self.gw.port), timeout=5) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer " + TOKEN.encode()
                      + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        self.assertIn(b"connection: close", head)
        self.assertNotIn(b"transfer-encoding", head)
        self.assertRegex(payload[:80], rb"^id: chatcmpl-[0-9a-f]+:0\ndata: {")
        self.assertTrue(payload.endswith(b"data: [DONE]\n\n"))

    def test_disconnect_mid_stream_aborts_the_run_and_marks_the_transcript(self) -> None:
        for stream in (True, False):        # a completion's run goes on in its request's task
            with self.subTest(stream=stream):
                self.disconnect_mid_run(stream)

    def disconnect_mid_run(self, stream: bool) -> None:
        key = f"abort-{time.monotonic_ns()}"
        body = json.dumps(self.chat(" ".join(["w"] * 40), model="equabot:slow", stream=stream)).encode()
        s = socket.create_connection((self.gw.host, self.gw.port), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nx-equabot-session-key: " + key.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        if stream:
            self.assertIn(b"200 OK", s.recv(65536))
        time.sleep(0.2)
        s.close()
        closed_at = time.monotonic()
        path = self.transcript("slow", key)
        while time.monotonic() - closed_at < 2:
            if path.exists() and b'"type":"aborted"' in path.read_bytes():
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - closed_at
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        self.assertEqual([l["type"] for l in lines if l["type"] != "session"], ["user", "aborted"])
        self.assertEqual(lines[-1]["reason"], "client disconnected")
        self.assertTrue(lines[-1]["content"].startswith("Echo (turn 1):"))
        self.assertLess(len(lines[-1]["content"].split()), 40)      # stopped early
        self.assertLess(elapsed, 1.0)                                # sanity bound; bench measures the 100 ms

    def transcript(self, agent: str, key: str) -> pathlib.Path:
        stem = transcripts.transcript_stem(scoped_key(agent, key))
        return self.gw.state_dir / "agents" / agent / "sessions" / f"{stem}.jsonl"


class ModelsAndCorsTest(OpenAITestCase):
    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPResponse, bytes]:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=10)
        self.addCleanup(c.close)
        c.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
        r = c.getresponse()
        return r.status, r, r.read()

    def test_models_list(self) -> None:
        status, _, data = self.get("/v1/models")
        self.assertEqual(status, 200)
        obj = json.loads(data)
        self.assertEqual(SCHEMAS.errors(obj, "ListModelsResponse"), [])
        self.assertEqual([m["id"] for m in obj["data"]],
                         ["equabot"] + sorted(f"equabot:{a}" for a in ("main", "beta", "slow", "tiny", "late",
                                                                       "broken", "partial", "script")))

    def test_model_by_id(self) -> None:
        # Every name a completion takes finds its agent here too (ids are case- and space-blind).
        for name in ("equabot:beta", "agent:beta", "equabot/beta", "openclaw:beta", "clawdbot:beta",
                     "equabot:Beta", "agent:BETA", "equabot:%20beta"):
            status, _, data = self.get(f"/v1/models/{name}")
            self.assertEqual(status, 200)
            self.assertEqual(SCHEMAS.errors(json.loads(data), "Model"), [])
            self.assertEqual(json.loads(data)["id"], "equabot:beta")
        status, _, data = self.get("/v1/models/equabot:ghost")
        self.assertEqual((status, error_of(data)["code"]), (404, "model_not_found"))

    def test_the_plain_name_and_bare_prefixes_are_the_default_agent(self) -> None:
        for name in ("equabot", "equabot:", "equabot/", "agent:", "agent", "openclaw", "clawdbot:"):
            with self.subTest(name):
                status, _, data = self.get(f"/v1/models/{name}")
                self.assertEqual(status, 200, data)
                self.assertEqual(SCHEMAS.errors(json.loads(data), "Model"), [])
                self.assertEqual(json.loads(data)["id"], name)
        for name in ("equabot-x", "openai", "gpt-4o"):
            with self.subTest(name):
                status, _, data = self.get(f"/v1/models/{name}")
                self.assertEqual((status, error_of(data)["code"]), (404, "model_not_found"))

    def test_models_need_auth(self) -> None:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=10)
        self.addCleanup(c.close)
        c.request("GET", "/v1/models")
        self.assertEqual(c.getresponse().status, 401)

    def test_cors(self) -> None:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=10)
        self.addCleanup(c.close)
        c.request("OPTIONS", "/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        r = c.getresponse()
        r.read()
        self.assertEqual(r.status, 204)
        self.assertEqual(r.getheader("access-control-allow-origin"), "https://app.example")
        self.assertIn("POST", r.getheader("access-control-allow-methods"))
        self.assertEqual(r.getheader("access-control-allow-headers"), "authorization, content-type")
        c.request("OPTIONS", "/v1/chat/completions", headers={"Origin": "https://evil.example"})
        r = c.getresponse()
        r.read()
        self.assertEqual(r.status, 403)
        status, r, _ = self.get("/v1/models", {"Origin": "https://app.example"})
        self.assertEqual(r.getheader("access-control-allow-origin"), "https://app.example")
        status, r, _ = self.post(self.chat(), {"Origin": "https://app.example"}, auth=False)
        self.assertEqual(status, 401)
        self.assertEqual(r.getheader("access-control-allow-origin"), "https://app.example")
        # A page's retry logic reads these; a browser hides any header not listed.
        exposed = {h.strip() for h in r.getheader("access-control-expose-headers").split(",")}
        self.assertLessEqual({"retry-after", "x-request-id", "x-equabot-idempotent-replay"}, exposed)


class BodyGuardTest(OpenAITestCase):
    """A body still to come is waited for only when the head carries credentials."""

    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        data = gateway_config()
        data["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
        return data

    def exchange(self, head: bytes, first: bytes = b"", *, wait: float = 5.0) -> tuple[bytes, float, bool]:
        """Send ``head`` and ``first`` of a much longer body; what came back, how soon, and
        whether the server closed the connection."""
        with socket.create_connection((self.gw.host, self.gw.port), timeout=wait) as sock:
            started = time.monotonic()
            sock.sendall(head + first)
            data, closed = b"", False
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                try:
                    piece = sock.recv(65536)
                except TimeoutError:
                    break
                if not piece:
                    closed = True
                    break
                data += piece
            elapsed = time.monotonic() - started
            if not closed:
                sock.settimeout(wait)
                try:
                    closed = sock.recv(1) == b""
                except (TimeoutError, ConnectionResetError):
                    closed = False
            return data, elapsed, closed

    def head(self, path: str, *fields: str) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.gw.host}", "Content-Type: application/json",
                 "Content-Length: 10000000", *fields]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def test_a_client_without_credentials_is_refused_before_its_body(self) -> None:
        for path in ("/v1/chat/completions", "/v1/responses"):
            for fields, code in (((), "missing_api_key"), (("Authorization: Bearer wrong",), "invalid_api_key"),
                                 (("Expect: 100-continue",), "missing_api_key")):
                with self.subTest(path=path, fields=fields):
                    data, elapsed, closed = self.exchange(self.head(path, *fields), b'{"model": "x", ')
                    self.assertTrue(data.startswith(b"HTTP/1.1 401 "), data[:200])
                    self.assertNotIn(b"100 Continue", data)
                    self.assertLess(elapsed, 3.0)       # not after a body deadline
                    self.assertIn(b"connection: close", data)
                    self.assertEqual(error_of(data.partition(b"\r\n\r\n")[2])["code"], code)
                    self.assertTrue(closed)

    def test_the_refusal_carries_cors_headers_for_an_allowed_page(self) -> None:
        data, _, _ = self.exchange(self.head("/v1/chat/completions", "Origin: https://app.example"), b"{")
        self.assertTrue(data.startswith(b"HTTP/1.1 401 "), data[:200])
        self.assertIn(b"access-control-allow-origin: https://app.example", data)

    def test_a_client_with_credentials_may_send_its_body_slowly(self) -> None:
        body = json.dumps({"model": "equabot", "messages": [{"role": "user", "content": "slow"}]}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.gw.host}\r\nContent-Type: application/json"
                f"\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection((self.gw.host, self.gw.port), timeout=10) as sock:
            sock.sendall(head + body[:10])
            time.sleep(0.3)
            sock.sendall(body[10:])
            reply = http.client.HTTPResponse(sock)
            reply.begin()
            self.assertEqual(reply.status, 200)
            self.assertIn("Echo (turn 1): slow", json.loads(reply.read())["choices"][0]["message"]["content"])


class DisabledEndpointTest(unittest.TestCase):
    def test_disabled_endpoint_is_404_like_any_unknown_path(self) -> None:
        data = base_config()
        data["gateway"]["http"]["endpoints"]["chatCompletions"]["enabled"] = False
        with GatewayProcess(data) as gw:
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
                c = http.client.HTTPConnection(gw.host, gw.port, timeout=5)
                self.addCleanup(c.close)
                c.request(method, path, body=b"{}", headers={"Authorization": f"Bearer {TOKEN}"})
                r = c.getresponse()
                self.assertEqual(r.status, 404)
                self.assertEqual(error_of(r.read())["code"], "not_found")


class RunErrorHeadersTest(unittest.TestCase):
    def test_only_a_shutdown_abort_invites_a_retry_after_a_second(self) -> None:
        from equabot_gw.errors import SHUTDOWN_ABORT, RunAborted, StorageError
        from equabot_gw.gateway import openai as door
        shutdown = door._run_error_response(RunAborted(SHUTDOWN_ABORT))
        self.assertEqual((shutdown.status, dict(shutdown.headers).get("retry-after")), (503, "1"))
        # A disk that cannot take the turn is 503 too, but a retry a second later would fail again.
        storage = door._run_error_response(StorageError("write of a session transcript failed: ENOSPC"))
        self.assertEqual((storage.status, dict(storage.headers).get("retry-after")), (503, None))
        left = door._run_error_response(RunAborted("client disconnected"))
        self.assertEqual((left.status, dict(left.headers).get("retry-after")), (499, None))


class HotPathShapesTest(unittest.TestCase):
    """The shortcuts of the non-streamed path give exactly what the general code gives."""

    def test_a_text_completion_body_is_the_completion_object_as_json(self) -> None:
        import random

        from equabot_gw import compact_json
        from equabot_gw.agents.types import AgentResult, Usage
        from equabot_gw.gateway import openai as door
        rng = random.Random(7)
        alphabet = "ab \"\\/\n\t\x00\x1f\x7f é☃😀\u2028</script>"
        for _ in range(300):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
            model = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))
            usage = Usage(rng.randrange(0, 10**6), rng.randrange(0, 10**6),
                          rng.choice([None, 0, 17]), rng.choice([None, 0, 5]))
            finish = rng.choice(["stop", "length", "content_filter", "tool_calls", "other"])
            result = AgentResult("run_1", "main", "k", text, usage, finish, "echo/echo", 1)
            created = rng.uniform(0, 2e9)
            expected = compact_json.dumps(door._completion_object("chatcmpl-1", model, result, False, created))
            self.assertEqual(door._text_completion_body("chatcmpl-1", model, result, created),
                             expected.encode(), (text, model, usage, finish))
            self.assertEqual(json.loads(expected)["choices"][0]["message"]["content"], text)

    def test_gateway_headers_in_one_pass_agree_with_the_lookup_by_name(self) -> None:
        import itertools

        from equabot_gw.gateway import openai as door
        from equabot_gw.net.heads import Headers
        names = ["agent-id", "session-key", "model", "history"]
        prefixes = list(door.HEADER_PREFIXES) + ["x-other-"]
        fields = [(prefix + name, f"{prefix}{name}") for prefix in prefixes for name in names]
        fields += [("host", "x"), ("x-equabot-agent-id", "second value")]   # a repeat: the first wins
        for size in (0, 1, 2, 3, 5):
            for chosen in itertools.islice(itertools.combinations(fields, size), 400):
                headers = Headers(list(chosen))
                found = door.gateway_headers(headers)
                for name in names:
                    self.assertEqual(found.get(name), door.gateway_header(headers, name), (chosen, name))


if __name__ == "__main__":
    unittest.main()
