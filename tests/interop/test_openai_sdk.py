"""The official ``openai`` Python SDK against a live gateway.

A real gateway process on port 0 (``GatewayProcess``) is driven with the SDK
exactly as an application would drive api.openai.com, ``base_url`` aside:
``create`` with and without ``stream=True``, the ``chat.completions.stream``
helper, ``stream_options.include_usage``, ``models.list`` / ``retrieve``,
every error status raised as the SDK's matching exception class, sessions
through ``user`` and the ``x-equabot-*`` headers, and a client that walks
away mid-stream. The 500 case needs a fault no configuration can cause, so
it runs against an in-process gateway with ``agents.runtime.run`` patched.

The Makefile installs the SDK into .venv-test and sets EQUABOT_INTEROP=1:
then a missing package is a failure. Elsewhere the tests skip.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
import unittest
import uuid
from typing import Any
from unittest import mock

from equabot_gw.agents import runtime as agent_runtime
from equabot_gw.agents import transcripts
from equabot_gw.agents.sessions import scoped_key
from equabot_gw.net import sse
from tests.support import TOKEN, GatewayProcess, base_config, running_gateway

try:
    import openai
except ImportError:
    openai = None

REQUIRED = os.environ.get("EQUABOT_INTEROP") == "1"
SKIP_REASON = "the openai package is not installed (make test installs it)"
MAX_BODY_BYTES = 64 * 1024
SLOW_DELAY_MS = 40
PARTIAL_THEN_FAIL = ("import sys,time; sys.stdout.write('partial words'); sys.stdout.flush(); "
                     "time.sleep(0.2); sys.stderr.write('boom'); sys.exit(3)")
AGENT_IDS = ("beta", "broken", "late", "main", "partial", "slow", "tiny")


def gateway_config() -> dict[str, Any]:
    # Many failed logins on purpose: keep the limiter from locking 127.0.0.1 out.
    data = base_config(auth={"rateLimit": {"maxAttempts": 1000}},
                       http={"maxBodyBytes": MAX_BODY_BYTES})
    data["agents"] = {"defaults": {"maxQueued": 0}, "list": [
        {"id": "main", "default": True},
        {"id": "beta", "systemPrompt": "You are beta."},             # 3 words of prompt
        {"id": "slow", "model": "slow/echo"},
        {"id": "tiny", "model": "slow/echo", "maxConcurrent": 1},    # with maxQueued 0: 429
        {"id": "late", "model": "slow/echo", "timeoutSeconds": 0.15},
        {"id": "broken", "model": "failing/x"},
        {"id": "partial", "model": "partial/x"},
    ]}
    data["models"] = {"providers": {
        "slow": {"api": "echo", "delayMs": SLOW_DELAY_MS},
        "failing": {"api": "command",
                    "command": [sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(2)"]},
        "partial": {"api": "command", "command": [sys.executable, "-c", PARTIAL_THEN_FAIL]},
    }}
    return data


def user_turn(content: str = "hi") -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@unittest.skipIf(openai is None and not REQUIRED, SKIP_REASON)
class SDKTestCase(unittest.TestCase):
    gw: GatewayProcess

    @classmethod
    def setUpClass(cls) -> None:
        if openai is None:
            raise AssertionError("EQUABOT_INTEROP=1 but the openai package cannot be imported")
        cls.gw = GatewayProcess(gateway_config()).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.gw.stop()
        cls.gw.tmp.cleanup()

    def client(self, api_key: str = TOKEN, **options: Any) -> Any:
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 10.0)
        client = openai.OpenAI(api_key=api_key, base_url=f"{self.gw.url}/v1", **options)
        self.addCleanup(client.close)
        return client

    def reply(self, completion: Any) -> str:
        return completion.choices[0].message.content

    def transcript(self, agent: str, key: str) -> pathlib.Path:
        stem = transcripts.transcript_stem(scoped_key(agent, key))
        return self.gw.state_dir / "agents" / agent / "sessions" / f"{stem}.jsonl"

    def transcript_lines(self, agent: str, key: str) -> list[dict[str, Any]]:
        path = self.transcript(agent, key)
        return [json.loads(line) for line in path.read_text().splitlines()]

    def assertRaisesStatus(self, cls: type, status: int, call: Any) -> Any:
        """``call()`` raises exactly ``cls`` with ``status``; returns the exception."""
        with self.assertRaises(openai.APIStatusError) as caught:
            call()
        exc = caught.exception
        self.assertIs(type(exc), cls, exc)
        self.assertEqual(exc.status_code, status)
        self.assertEqual(set(exc.body), {"message", "type", "param", "code"})
        self.assertTrue(exc.request_id.startswith("req_"), exc.request_id)
        self.assertNotIn(TOKEN, json.dumps(exc.body))
        return exc


class CompletionTest(SDKTestCase):
    def test_it_is_the_package_from_pypi(self) -> None:
        path = pathlib.Path(openai.__file__).resolve()
        # Installed (into site-packages, e.g. of .venv-test), not a module of this tree.
        self.assertIn("site-packages", path.parts)
        pins = (pathlib.Path(__file__).parent / "requirements.txt").read_text().split()
        self.assertIn(f"openai=={openai.__version__}", pins)

    def test_non_streaming(self) -> None:
        completion = self.client().chat.completions.create(model="equabot", messages=user_turn("hello world"))
        self.assertTrue(completion.id.startswith("chatcmpl-"))
        self.assertEqual((completion.object, completion.model), ("chat.completion", "equabot"))
        self.assertTrue(completion.system_fingerprint)
        [choice] = completion.choices
        self.assertEqual((choice.index, choice.finish_reason), (0, "stop"))
        self.assertEqual((choice.message.role, choice.message.content), ("assistant", "Echo (turn 1): hello world"))
        self.assertIsNone(choice.message.tool_calls)
        self.assertEqual((completion.usage.prompt_tokens, completion.usage.completion_tokens,
                          completion.usage.total_tokens), (2, 5, 7))
        # The SDK found every field it expects (nothing went to the "extra" bucket).
        self.assertEqual(completion.model_extra, {})

    def test_model_string_comes_back_unchanged(self) -> None:
        client = self.client()
        for model in ("gpt-4o", "equabot", "equabot:beta", "agent:beta", "equabot/beta"):
            with self.subTest(model=model):
                self.assertEqual(client.chat.completions.create(model=model, messages=user_turn()).model, model)

    def test_raw_response_headers(self) -> None:
        raw = self.client().chat.completions.with_raw_response.create(
            model="equabot", messages=user_turn(), extra_headers={"x-request-id": "trace-sdk-1"})
        self.assertEqual(raw.status_code, 200)
        self.assertEqual(raw.headers["x-request-id"], "trace-sdk-1")
        self.assertEqual(raw.headers["content-type"], "application/json")
        self.assertEqual(self.reply(raw.parse()), "Echo (turn 1): hi")

    def test_neutral_values_of_every_kind_are_accepted(self) -> None:
        completion = self.client().chat.completions.create(
            model="equabot", messages=user_turn("a b c"), n=1, tools=[], logprobs=False,
            response_format={"type": "text"}, frequency_penalty=0, presence_penalty=0, logit_bias={},
            metadata={"k": "v"}, store=False, temperature=0.5, top_p=1, seed=3, stop=["never"],
            max_completion_tokens=50)
        self.assertEqual(self.reply(completion), "Echo (turn 1): a b c")

    def test_sampling_options_are_honoured(self) -> None:
        client = self.client()
        cut = client.chat.completions.create(model="equabot", messages=user_turn("one two three"), max_tokens=3)
        self.assertEqual((self.reply(cut), cut.choices[0].finish_reason), ("Echo (turn 1):", "length"))
        stopped = client.chat.completions.create(model="equabot", messages=user_turn("one STOP two"), stop="STOP")
        self.assertEqual((self.reply(stopped), stopped.choices[0].finish_reason), ("Echo (turn 1): one ", "stop"))

    def test_system_and_earlier_messages(self) -> None:
        completion = self.client().chat.completions.create(model="equabot", messages=[
            {"role": "system", "content": "one two"},
            {"role": "user", "content": [{"type": "text", "text": "three"}]},
            {"role": "assistant", "content": "four five"},
            {"role": "user", "content": [{"type": "text", "text": "six "}, {"type": "text", "text": "seven"}]},
        ])
        self.assertEqual(self.reply(completion), "Echo (turn 1): six seven")
        self.assertEqual(completion.usage.prompt_tokens, 7)     # system 2 + context 3 + turn 2


class StreamingTest(SDKTestCase):
    def test_stream_helper(self) -> None:
        with self.client().chat.completions.stream(model="equabot", messages=user_turn("one two three")) as stream:
            events = list(stream)
            final = stream.get_final_completion()
        text = "Echo (turn 1): one two three"
        kinds = [e.type for e in events]
        self.assertEqual(kinds[-2:], ["chunk", "content.done"])
        self.assertEqual(set(kinds), {"chunk", "content.delta", "content.done"})
        deltas = [e for e in events if e.type == "content.delta"]
        self.assertEqual("".join(e.delta for e in deltas), text)
        self.assertGreaterEqual(len(deltas), 6)                 # word by word
        self.assertEqual(deltas[-1].snapshot, text)
        self.assertEqual([e.content for e in events if e.type == "content.done"], [text])
        self.assertEqual(len({e.chunk.id for e in events if e.type == "chunk"}), 1)
        self.assertEqual(final.choices[0].message.content, text)
        self.assertEqual(final.choices[0].finish_reason, "stop")
        self.assertEqual(final.model, "equabot")
        self.assertIsNone(final.usage)                          # not asked for

    def test_stream_helper_with_usage(self) -> None:
        with self.client().chat.completions.stream(model="equabot", messages=user_turn("a b"),
                                                   stream_options={"include_usage": True}) as stream:
            final = stream.get_final_completion()
        self.assertEqual(final.choices[0].message.content, "Echo (turn 1): a b")
        self.assertEqual((final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens),
                         (2, 5, 7))

    def test_create_stream_true(self) -> None:
        chunks = list(self.client().chat.completions.create(
            model="equabot:beta", messages=user_turn("x y"), stream=True))
        self.assertEqual(len({c.id for c in chunks}), 1)
        self.assertTrue(all(c.object == "chat.completion.chunk" and c.model == "equabot:beta" for c in chunks))
        self.assertEqual((chunks[0].choices[0].delta.role, chunks[0].choices[0].delta.content), ("assistant", ""))
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks), "Echo (turn 1): x y")
        self.assertEqual([c.choices[0].finish_reason for c in chunks], [None] * (len(chunks) - 1) + ["stop"])
        self.assertTrue(all(c.usage is None for c in chunks))

    def test_include_usage_puts_usage_in_a_last_chunk_without_choices(self) -> None:
        chunks = list(self.client().chat.completions.create(
            model="equabot:beta", messages=user_turn("x y"), stream=True,
            stream_options={"include_usage": True}))
        *content, last = chunks
        self.assertEqual(last.choices, [])
        # beta's system prompt is 3 words: 3 + 2 prompt words, 5 reply words.
        self.assertEqual((last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens),
                         (5, 5, 10))
        self.assertTrue(all(c.usage is None for c in content))
        self.assertEqual(content[-1].choices[0].finish_reason, "stop")

    def test_deltas_arrive_before_the_run_ends(self) -> None:
        started = time.monotonic()
        stream = self.client().chat.completions.create(model="equabot:slow", messages=user_turn("a b c d"),
                                                       stream=True)
        arrivals = [time.monotonic() - started for _ in stream]
        # 7 deltas x 40 ms: the first content long before the last.
        self.assertGreater(arrivals[-1] - arrivals[1], 4 * SLOW_DELAY_MS / 1000)

    def test_error_after_streaming_began_raises_api_error(self) -> None:
        stream = self.client().chat.completions.create(model="equabot:partial", messages=user_turn(), stream=True)
        seen: list[str] = []
        with self.assertRaises(openai.APIError) as caught:
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
        self.assertNotIsInstance(caught.exception, openai.APIStatusError)   # the status was 200
        self.assertEqual("".join(seen), "partial words")
        self.assertIn("exit status 3", caught.exception.message)
        self.assertEqual(caught.exception.body["type"], "server_error")

    def test_timeout_after_streaming_began_raises_api_error(self) -> None:
        stream = self.client().chat.completions.create(model="equabot:late", messages=user_turn("a b c d e f"),
                                                       stream=True)
        with self.assertRaises(openai.APIError) as caught:
            for _ in stream:
                pass
        self.assertIn("no reply within 0.15 s", caught.exception.message)


class ModelsTest(SDKTestCase):
    def test_models_list(self) -> None:
        models = list(self.client().models.list())
        self.assertEqual([m.id for m in models], ["equabot"] + [f"equabot:{a}" for a in AGENT_IDS])
        self.assertTrue(all(m.object == "model" and m.owned_by == "equabot" for m in models))
        self.assertTrue(all(isinstance(m.created, int) for m in models))

    def test_models_retrieve(self) -> None:
        client = self.client()
        for name in ("equabot:beta", "agent:beta", "equabot/beta"):
            with self.subTest(name=name):
                self.assertEqual(client.models.retrieve(name).id, "equabot:beta")
        self.assertEqual(client.models.retrieve("equabot").id, "equabot")     # the default agent
        exc = self.assertRaisesStatus(openai.NotFoundError, 404, lambda: client.models.retrieve("equabot:ghost"))
        self.assertEqual(exc.code, "model_not_found")

    def test_models_need_the_key(self) -> None:
        self.assertRaisesStatus(openai.AuthenticationError, 401, lambda: self.client("wrong").models.list())


class ErrorStatusTest(SDKTestCase):
    def create(self, client: Any = None, **fields: Any) -> Any:
        fields.setdefault("model", "equabot")
        fields.setdefault("messages", user_turn())
        return (client or self.client()).chat.completions.create(**fields)

    def test_400_bad_field_value(self) -> None:
        exc = self.assertRaisesStatus(openai.BadRequestError, 400, lambda: self.create(temperature=3))
        self.assertEqual((exc.param, exc.code, exc.type), ("temperature", "invalid_value", "invalid_request_error"))
        exc = self.assertRaisesStatus(openai.BadRequestError, 400,
                                      lambda: self.create(extra_body={"seed": "seven"}))
        self.assertEqual(exc.param, "seed")

    def test_400_unsupported_parameter(self) -> None:
        # Echo honours all but structured output; a command provider honours none of them.
        exc = self.assertRaisesStatus(openai.BadRequestError, 400,
                                      lambda: self.create(response_format={"type": "json_object"}))
        self.assertEqual((exc.code, exc.param), ("unsupported_parameter", "response_format"))
        for fields, param in (({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
                              ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools")):
            with self.subTest(param=param):
                exc = self.assertRaisesStatus(openai.BadRequestError, 400,
                                              lambda: self.create(model="equabot:broken", **fields))
                self.assertEqual((exc.code, exc.param), ("unsupported_parameter", param))

    def test_400_unknown_field_as_openai_words_it(self) -> None:
        exc = self.assertRaisesStatus(openai.BadRequestError, 400,
                                      lambda: self.create(extra_body={"frobnicate": 1}))
        self.assertEqual(exc.message, "Error code: 400 - Unrecognized request argument supplied: frobnicate")

    def test_400_missing_user_message(self) -> None:
        exc = self.assertRaisesStatus(openai.BadRequestError, 400,
                                      lambda: self.create(messages=[{"role": "system", "content": "s"}]))
        self.assertIn("Missing user message", exc.message)
        self.assertEqual(exc.param, "messages")

    def test_400_unknown_model_override(self) -> None:
        exc = self.assertRaisesStatus(openai.BadRequestError, 400,
                                      lambda: self.create(extra_headers={"x-equabot-model": "nowhere/gpt"}))
        self.assertIn("'nowhere'", exc.message)

    def test_401(self) -> None:
        exc = self.assertRaisesStatus(openai.AuthenticationError, 401, lambda: self.create(self.client("wrong")))
        self.assertEqual((exc.type, exc.code), ("authentication_error", "invalid_api_key"))
        self.assertEqual(exc.response.headers["www-authenticate"], "Bearer")

    def test_404_unknown_agent(self) -> None:
        exc = self.assertRaisesStatus(openai.NotFoundError, 404, lambda: self.create(model="equabot:nobody"))
        self.assertEqual(exc.code, "model_not_found")
        self.assertIn("'nobody'", exc.message)
        self.assertRaisesStatus(openai.NotFoundError, 404,
                                lambda: self.create(extra_headers={"x-equabot-agent-id": "ghost"}))

    def test_413_oversized_message(self) -> None:
        exc = self.assertRaisesStatus(openai.APIStatusError, 413,
                                      lambda: self.create(messages=user_turn("x" * MAX_BODY_BYTES)))
        self.assertEqual(exc.code, "request_too_large")
        self.assertIn(f"over the limit of {MAX_BODY_BYTES} bytes", exc.message)

    def test_415_forced_through_extra_headers(self) -> None:
        exc = self.assertRaisesStatus(openai.APIStatusError, 415,
                                      lambda: self.create(extra_headers={"Content-Type": "text/plain"}))
        self.assertEqual(exc.code, "unsupported_media_type")

    def test_429_queue_full(self) -> None:
        client = self.client()
        with client.chat.completions.create(model="equabot:tiny", messages=user_turn(), stream=True) as busy:
            next(iter(busy))                    # tiny's one slot is taken; its queue holds 0
            exc = self.assertRaisesStatus(openai.RateLimitError, 429, lambda: self.create(client, model="equabot:tiny"))
            self.assertEqual(exc.response.headers["retry-after"], "1")
            self.assertEqual((exc.type, exc.code), ("rate_limit_error", "rate_limit_exceeded"))
            self.assertEqual("".join(c.choices[0].delta.content or "" for c in busy), "Echo (turn 1): hi")

    def test_429_retry_after_is_honoured_by_the_sdk(self) -> None:
        client = self.client(max_retries=1)
        with client.chat.completions.create(model="equabot:tiny", messages=user_turn(), stream=True) as busy:
            next(iter(busy))
            started = time.monotonic()
            raw = client.chat.completions.with_raw_response.create(model="equabot:tiny", messages=user_turn("again"))
            waited = time.monotonic() - started
        self.assertEqual(self.reply(raw.parse()), "Echo (turn 1): again")
        self.assertEqual(raw.retries_taken, 1)
        self.assertGreaterEqual(waited, 0.95)              # Retry-After: 1, not the SDK's 0.5 s backoff
        self.assertLess(waited, 5.0)

    def test_502_upstream_failure(self) -> None:
        exc = self.assertRaisesStatus(openai.InternalServerError, 502, lambda: self.create(model="equabot:broken"))
        self.assertIn("exit status 2: bad", exc.message)
        self.assertEqual(exc.type, "server_error")

    def test_504_run_timeout(self) -> None:
        exc = self.assertRaisesStatus(openai.InternalServerError, 504,
                                      lambda: self.create(model="equabot:late", messages=user_turn("a b c d e f")))
        self.assertIn("no reply within 0.15 s", exc.message)

    def test_streaming_failure_before_output_gets_the_status(self) -> None:
        self.assertRaisesStatus(openai.InternalServerError, 502,
                                lambda: self.create(model="equabot:broken", stream=True))
        self.assertRaisesStatus(openai.NotFoundError, 404, lambda: self.create(model="equabot:ghost", stream=True))


class SessionTest(SDKTestCase):
    def test_turns_count_up_with_user_and_not_without(self) -> None:
        client = self.client()
        user = unique("alice")
        with_user = [self.reply(client.chat.completions.create(model="equabot", messages=user_turn(), user=user))
                     for _ in range(3)]
        self.assertEqual(with_user, [f"Echo (turn {n}): hi" for n in (1, 2, 3)])
        without = [self.reply(client.chat.completions.create(model="equabot", messages=user_turn()))
                   for _ in range(2)]
        self.assertEqual(without, ["Echo (turn 1): hi"] * 2)
        lines = self.transcript_lines("main", f"openai-user:{user}")
        self.assertEqual([line["type"] for line in lines], ["session"] + ["user", "assistant"] * 3)

    def test_any_user_string_gets_a_stable_session(self) -> None:
        client = self.client()
        user = f"Alice Smith ✓ {uuid.uuid4().hex[:6]}"               # not key characters: hashed
        turns = [self.reply(client.chat.completions.create(model="equabot", messages=user_turn(), user=user))
                 for _ in range(2)]
        self.assertEqual(turns, ["Echo (turn 1): hi", "Echo (turn 2): hi"])

    def test_streamed_turns_count_too(self) -> None:
        client = self.client()
        user = unique("bob")
        replies = []
        for _ in range(2):
            with client.chat.completions.stream(model="equabot:slow", messages=user_turn(), user=user) as s:
                replies.append(s.get_final_completion().choices[0].message.content)
        self.assertEqual(replies, ["Echo (turn 1): hi", "Echo (turn 2): hi"])

    def test_resent_history_is_ignored_once_the_session_has_turns(self) -> None:
        """Chat clients resend the conversation; the transcript wins."""
        client = self.client()
        user = unique("carol")
        messages: list[dict[str, str]] = [{"role": "user", "content": "first question"}]
        first = client.chat.completions.create(model="equabot", messages=messages, user=user)
        messages += [{"role": "assistant", "content": self.reply(first)},
                     {"role": "user", "content": "second"}]
        second = client.chat.completions.create(model="equabot", messages=messages, user=user)
        self.assertEqual(self.reply(second), "Echo (turn 2): second")
        # The transcript (2 + 5 words) plus the turn (1), not the resent copy on top.
        self.assertEqual(second.usage.prompt_tokens, 8)

    def test_equabot_headers(self) -> None:
        client = self.client()
        key = unique("sdk-key")
        headers = {"x-equabot-session-key": key}
        turns = [self.reply(client.chat.completions.create(model="equabot", messages=user_turn(),
                                                           extra_headers=headers)) for _ in range(2)]
        self.assertEqual(turns, ["Echo (turn 1): hi", "Echo (turn 2): hi"])
        self.assertTrue(self.transcript("main", key).exists())
        # x-equabot-agent-id wins over the model: beta's 3-word system prompt shows in the count.
        beta = client.chat.completions.create(model="equabot:main", messages=user_turn(),
                                              extra_headers={"x-equabot-agent-id": "beta"})
        self.assertEqual((beta.model, beta.usage.prompt_tokens), ("equabot:main", 4))
        # x-equabot-model: another backend for this run only.
        started = time.monotonic()
        slow = client.chat.completions.create(model="equabot", messages=user_turn(),
                                              extra_headers={"x-equabot-model": "slow/echo"})
        self.assertEqual(self.reply(slow), "Echo (turn 1): hi")
        self.assertGreater(time.monotonic() - started, 3 * SLOW_DELAY_MS / 1000)

    def test_session_key_of_another_agent_names_both(self) -> None:
        client = self.client()
        with self.assertRaises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="equabot:main", messages=user_turn(),
                                           extra_headers={"x-equabot-session-key": "agent:beta:shared"})
        self.assertIn("'beta'", caught.exception.message)
        self.assertIn("'main'", caught.exception.message)


class DisconnectTest(SDKTestCase):
    def wait_for_aborted(self, agent: str, key: str) -> tuple[list[dict[str, Any]], float]:
        path = self.transcript(agent, key)
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            if path.exists() and b'"type":"aborted"' in path.read_bytes():
                break
            time.sleep(0.01)
        return self.transcript_lines(agent, key), time.monotonic() - started

    def assertAbortedEarly(self, lines: list[dict[str, Any]], words: int) -> None:
        self.assertEqual([line["type"] for line in lines], ["session", "user", "aborted"])
        self.assertEqual(lines[-1]["reason"], "client disconnected")
        self.assertTrue(lines[-1]["content"].startswith("Echo"), lines[-1])
        self.assertLess(len(lines[-1]["content"].split()), words)

    def test_closing_the_sdk_stream_aborts_the_run(self) -> None:
        key = unique("walk-away")
        stream = self.client().chat.completions.create(
            model="equabot:slow", messages=user_turn(" ".join(["w"] * 40)), stream=True,
            extra_headers={"x-equabot-session-key": key})
        chunks = iter(stream)
        self.assertEqual(next(chunks).choices[0].delta.role, "assistant")
        self.assertEqual(next(chunks).choices[0].delta.content, "Echo")
        stream.close()
        lines, elapsed = self.wait_for_aborted("slow", key)
        self.assertAbortedEarly(lines, 40)
        self.assertLess(elapsed, 1.0)           # sanity bound; make bench measures the 100 ms
        # The run is gone: the next turn on the session starts at once and counts from 1.
        again = self.client().chat.completions.create(model="equabot:slow", messages=user_turn("back"),
                                                      extra_headers={"x-equabot-session-key": key})
        self.assertEqual(self.reply(again), "Echo (turn 1): back")

    def test_a_client_timeout_on_a_non_streaming_call_aborts_the_run(self) -> None:
        key = unique("gave-up")
        with self.assertRaises(openai.APITimeoutError):
            self.client(timeout=0.15).chat.completions.create(
                model="equabot:slow", messages=user_turn(" ".join(["w"] * 40)),
                extra_headers={"x-equabot-session-key": key})
        lines, elapsed = self.wait_for_aborted("slow", key)
        self.assertAbortedEarly(lines, 40)
        self.assertLess(elapsed, 1.0)

    def test_leaving_the_stream_helper_early_aborts_the_run(self) -> None:
        key = unique("helper-walk-away")
        with self.client().chat.completions.stream(
                model="equabot:slow", messages=user_turn(" ".join(["w"] * 40)),
                extra_headers={"x-equabot-session-key": key}) as stream:
            for event in stream:
                if event.type == "content.delta":
                    break
        lines, _ = self.wait_for_aborted("slow", key)
        self.assertAbortedEarly(lines, 40)

    def test_an_abandoned_stream_still_gets_its_access_log_line(self) -> None:
        key = unique("logged")
        stream = self.client().chat.completions.create(
            model="equabot:slow", messages=user_turn(" ".join(["w"] * 40)), stream=True,
            extra_headers={"x-equabot-session-key": key, "x-request-id": key})
        next(iter(stream))
        stream.close()
        self.wait_for_aborted("slow", key)
        time.sleep(0.2)
        self.assertIn(f"rid={key}", self.gw.stderr())      # one access-log line per request


@unittest.skipIf(openai is None and not REQUIRED, SKIP_REASON)
class AsyncClientTest(unittest.IsolatedAsyncioTestCase):
    """``AsyncOpenAI`` against an in-process gateway, where a fault can be planted."""

    @classmethod
    def setUpClass(cls) -> None:
        if openai is None:
            raise AssertionError("EQUABOT_INTEROP=1 but the openai package cannot be imported")

    async def asyncSetUp(self) -> None:
        self._gateway_cm = running_gateway(gateway_config())
        self.gw = await self._gateway_cm.__aenter__()
        self.client = openai.AsyncOpenAI(api_key=TOKEN, base_url=f"{self.gw.url}/v1", max_retries=0, timeout=10)

    async def asyncTearDown(self) -> None:
        await self.client.close()
        await self._gateway_cm.__aexit__(None, None, None)

    async def test_async_streaming(self) -> None:
        async with self.client.chat.completions.stream(model="equabot:slow", messages=user_turn("async"),
                                                       stream_options={"include_usage": True}) as stream:
            deltas = [e.delta async for e in stream if e.type == "content.delta"]
            final = await stream.get_final_completion()
        self.assertEqual("".join(deltas), "Echo (turn 1): async")
        self.assertEqual(final.usage.total_tokens, 5)

    async def test_streams_that_pause_past_keep_alive_intervals(self) -> None:
        # Keep-alive comments between events (here every 10 ms; 40 ms between words): the
        # SDK dispatched the blank line after each comment as an event without data, once an
        # event had an id, and failed on it with a JSONDecodeError.
        with mock.patch.object(sse, "KEEPALIVE_INTERVAL", 0.01):
            async with self.client.chat.completions.stream(model="equabot:slow",
                                                           messages=user_turn("wait for it")) as stream:
                deltas = [e.delta async for e in stream if e.type == "content.delta"]
            self.assertEqual("".join(deltas), "Echo (turn 1): wait for it")
            data = gateway_config()
            data["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
            async with running_gateway(data) as gw:
                async with openai.AsyncOpenAI(api_key=TOKEN, base_url=f"{gw.url}/v1", max_retries=0,
                                              timeout=10) as client:
                    events = [e async for e in await client.responses.create(
                        model="equabot:slow", input="wait for it", stream=True)]
        self.assertEqual(events[-1].type, "response.completed")
        self.assertEqual(events[-1].response.output_text, "Echo (turn 1): wait for it")

    async def test_500_reveals_nothing(self) -> None:
        async def broken_run(runtime: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internal detail /etc/equabot")

        with mock.patch.object(agent_runtime, "run_here", broken_run), \
                self.assertLogs("equabot_gw.http", "ERROR") as logged:
            with self.assertRaises(openai.InternalServerError) as caught:
                await self.client.chat.completions.create(model="equabot", messages=user_turn())
        self.assertIn("handler failed", logged.output[0])     # the detail goes to the log only
        exc = caught.exception
        self.assertEqual((exc.status_code, exc.type), (500, "server_error"))
        self.assertEqual(set(exc.body), {"message", "type", "param", "code"})
        self.assertNotIn("secret", exc.message)
        self.assertNotIn("RuntimeError", exc.message)
        self.assertNotIn("Traceback", exc.response.text)
        # The gateway is fine afterwards.
        completion = await self.client.chat.completions.create(model="equabot", messages=user_turn())
        self.assertEqual(completion.choices[0].message.content, "Echo (turn 1): hi")


if __name__ == "__main__":
    unittest.main()
