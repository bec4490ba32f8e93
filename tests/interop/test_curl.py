"""The ``curl`` binary against a live gateway: the README's examples, SSE bytes, statuses, keep-alive.

The README's two examples run verbatim (only the URL is swapped for the test
gateway's port) against a gateway started the way the README starts it:
``--config config.example.json5`` with a state dir holding the generated
token. The event stream is checked byte for byte, with ``--raw`` for the
chunked framing too; error statuses come from ``-w '%{http_code}'``,
connection reuse from ``%{num_connects}``.

curl is a system binary, treated like the interop libraries: the Makefile
sets EQUABOT_INTEROP=1, and then a missing curl is a failure; elsewhere
these tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

from tests.support import ROOT, TOKEN, GatewayProcess, base_config, error_of

CURL = shutil.which("curl")
REQUIRED = os.environ.get("EQUABOT_INTEROP") == "1"
SKIP_REASON = "curl is not installed (make test requires it)"
README_PORT_URL = "http://127.0.0.1:18789"
MAX_BODY_BYTES = 8192
TIMEOUT = 10.0

# The whole of a finished event stream: JSON events, then [DONE], then nothing.
# Every event has its id (<completion id>:<seq>) first: streams are resumable.
SSE_STREAM = re.compile(rb"(id: chatcmpl-[0-9a-f-]+:[0-9]+\ndata: \{[^\n]*\}\n\n)+"
                        rb"id: chatcmpl-[0-9a-f-]+:[0-9]+\ndata: \[DONE\]\n\n")


def readme_example(title: str) -> str:
    """The shell code block right after the line ``<title>:`` in README.md."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^{re.escape(title)}:\n\n```sh\n(.*?)```", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise AssertionError(f"README.md has no sh block after {title!r}")
    return match.group(1)


def stream_events(raw: bytes) -> list[Any]:
    blocks = [block.partition(b"\n")[2] if block.startswith(b"id: ") else block
              for block in raw.split(b"\n\n")[:-1]]
    return [json.loads(block[len(b"data: "):]) if block != b"data: [DONE]" else "[DONE]" for block in blocks]


def dechunk(raw: bytes) -> tuple[list[bytes], bytes]:
    """(chunk data, bytes after the last chunk) of a chunked body, strictly per RFC 9112 §7.1."""
    chunks = []
    while True:
        size_line, crlf, raw = raw.partition(b"\r\n")
        if not crlf or re.fullmatch(rb"[0-9a-fA-F]+", size_line) is None:
            raise AssertionError(f"bad chunk-size line {size_line[:40]!r}")
        size = int(size_line, 16)
        if size == 0:
            if not raw.startswith(b"\r\n"):
                raise AssertionError(f"trailer section or junk after the last chunk: {raw[:40]!r}")
            return chunks, raw[2:]
        if raw[size:size + 2] != b"\r\n":
            raise AssertionError(f"chunk of {size} bytes not followed by CRLF")
        chunks.append(raw[:size])
        raw = raw[size + 2:]


def read_until(pipe: Any, marker: bytes) -> bytes:
    """Bytes from ``pipe`` up to and including the read that holds ``marker``."""
    seen = b""
    while marker not in seen:
        chunk = pipe.read1(65536)
        if not chunk:
            raise AssertionError(f"the stream ended before {marker!r}: {seen[-200:]!r}")
        seen += chunk
    return seen


def gateway_config() -> dict[str, Any]:
    data = base_config(auth={"rateLimit": {"maxAttempts": 1000}}, http={"maxBodyBytes": MAX_BODY_BYTES})
    data["agents"] = {"defaults": {"maxQueued": 0}, "list": [
        {"id": "main", "default": True},
        {"id": "slow", "model": "slow/echo"},
        {"id": "tiny", "model": "slow/echo", "maxConcurrent": 1},
        {"id": "late", "model": "slow/echo", "timeoutSeconds": 0.15},
        {"id": "broken", "model": "failing/x"},
    ]}
    data["models"] = {"providers": {
        "slow": {"api": "echo", "delayMs": 40},
        "failing": {"api": "command",
                    "command": [sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(2)"]},
    }}
    return data


@unittest.skipIf(CURL is None and not REQUIRED, SKIP_REASON)
class CurlTestCase(unittest.TestCase):
    gw: GatewayProcess
    token: str

    @classmethod
    def setUpClass(cls) -> None:
        if CURL is None:
            raise AssertionError("EQUABOT_INTEROP=1 but there is no curl on PATH")
        cls.gw = cls.make_gateway().start()
        cls.token = TOKEN

    @classmethod
    def make_gateway(cls) -> GatewayProcess:
        return GatewayProcess(gateway_config())

    @classmethod
    def tearDownClass(cls) -> None:
        cls.gw.stop()
        cls.gw.tmp.cleanup()

    def curl(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([CURL, "-sS", *args], input=input, capture_output=True, timeout=TIMEOUT)

    def chat_args(self, body: Any, *extra: str, path: str = "/v1/chat/completions") -> list[str]:
        data = body if isinstance(body, str) else json.dumps(body)
        return [f"{self.gw.url}{path}", "-H", f"Authorization: Bearer {self.token}",
                "-H", "Content-Type: application/json", "-d", data, *extra]

    def chat(self, content: str = "hi", **fields: Any) -> dict[str, Any]:
        return {"model": fields.pop("model", "equabot"), "messages": [{"role": "user", "content": content}],
                **fields}

    def assertStream(self, raw: bytes) -> list[Any]:
        """A finished event stream, byte for byte: compact JSON events, ``[DONE]`` last, nothing after."""
        self.assertIsNotNone(SSE_STREAM.fullmatch(raw), raw[-200:])
        events = stream_events(raw)
        ids = re.findall(rb"^id: ([^\n]*)\n", raw, re.MULTILINE)
        rebuilt = b"".join(b"id: " + i + b"\ndata: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n"
                           for i, e in zip(ids, events[:-1])) + b"id: " + ids[-1] + b"\ndata: [DONE]\n\n"
        self.assertEqual(raw, rebuilt)
        return events


class ReadmeExamplesTest(CurlTestCase):
    """README.md's curl examples, verbatim, against ``--config config.example.json5``."""

    @classmethod
    def make_gateway(cls) -> GatewayProcess:
        gw = GatewayProcess()
        gw.config_path = ROOT / "config.example.json5"
        return gw

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.token = (cls.gw.state_dir / "gateway-token").read_text().strip()

    def run_example(self, title: str) -> subprocess.CompletedProcess[bytes]:
        script = readme_example(title)
        self.assertIn(README_PORT_URL, script)
        script = script.replace(README_PORT_URL, self.gw.url)
        env = {**os.environ, "TOKEN": self.token}
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, timeout=TIMEOUT)

    def test_readme_starts_the_gateway_as_this_test_does(self) -> None:
        readme = (ROOT / "README.md").read_text()
        self.assertIn("python -m equabot_gw --config config.example.json5 --state-dir /tmp/equabot &", readme)
        self.assertIn("export TOKEN=$(cat /tmp/equabot/gateway-token)", readme)
        self.assertGreater(len(self.token), 20)
        self.assertEqual((self.gw.state_dir / "gateway-token").stat().st_mode & 0o777, 0o600)

    def test_non_streaming_example(self) -> None:
        done = self.run_example("Non-streaming")
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        completion = json.loads(done.stdout)
        self.assertEqual(completion["object"], "chat.completion")
        self.assertEqual(completion["model"], "equabot")
        self.assertEqual(completion["choices"][0]["message"]["content"], "Echo (turn 1): hi")
        self.assertEqual(completion["choices"][0]["finish_reason"], "stop")
        self.assertEqual(completion["usage"], {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5})

    def test_streaming_example(self) -> None:
        done = self.run_example("Streaming")
        self.assertEqual(done.returncode, 0, done.stderr)
        events = self.assertStream(done.stdout)
        chunks = events[:-1]
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual("".join(c["choices"][0]["delta"].get("content", "") for c in chunks), "Echo (turn 1): hi")
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")

    def test_the_example_agent_beta_streams_slowly(self) -> None:
        done = self.curl("-N", *self.chat_args(self.chat("x", model="equabot:beta", stream=True)))
        chunks = self.assertStream(done.stdout)[:-1]
        self.assertEqual("".join(c["choices"][0]["delta"].get("content", "") for c in chunks), "Echo (turn 1): x")


class SSEBytesTest(CurlTestCase):
    def test_event_stream_byte_for_byte(self) -> None:
        done = self.curl("-N", "-D", "-", *self.chat_args(self.chat(stream=True)))
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        head += b"\r\n"
        self.assertIn(b"\r\ncontent-type: text/event-stream; charset=utf-8\r\n", head)
        self.assertIn(b"\r\ntransfer-encoding: chunked\r\n", head)
        events = self.assertStream(body)
        first = events[0]
        common = {"id": first["id"], "object": "chat.completion.chunk", "created": first["created"],
                  "model": "equabot", "system_fingerprint": first["system_fingerprint"]}

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {**common, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        self.assertEqual(events, [chunk({"role": "assistant", "content": ""}), chunk({"content": "Echo"}),
                                  chunk({"content": " (turn"}), chunk({"content": " 1):"}),
                                  chunk({"content": " hi"}), chunk({}, "stop"), "[DONE]"])

    def test_include_usage_bytes(self) -> None:
        done = self.curl("-N", *self.chat_args(self.chat("a b", stream=True, stream_options={"include_usage": True})))
        events = self.assertStream(done.stdout)
        self.assertTrue(all(e["usage"] is None for e in events[:-2]))
        self.assertEqual(events[-2]["choices"], [])
        self.assertEqual(events[-2]["usage"], {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})

    def test_utf8_text_survives_the_stream(self) -> None:
        done = self.curl("-N", *self.chat_args(self.chat("κόσμε ✓ 😀", stream=True)))
        events = self.assertStream(done.stdout)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
        self.assertEqual(text, "Echo (turn 1): κόσμε ✓ 😀")

    def test_raw_chunked_framing(self) -> None:
        done = self.curl("-N", "--raw", *self.chat_args(self.chat("one two three", model="equabot:slow",
                                                                  stream=True)))
        chunks, after = dechunk(done.stdout)
        self.assertEqual(after, b"")                           # nothing after the last chunk
        for data in chunks:                                     # an event is never split across chunks
            self.assertTrue(data.startswith(b"id: ") and data.endswith(b"\n\n"), data[:60])
        # With 40 ms between deltas each is flushed in a chunk of its own; the
        # head waits for the first delta, so the role chunk travels with it.
        self.assertEqual([data.count(b"\n\n") for data in chunks], [2] + [1] * 7)
        self.assertRegex(chunks[-1], rb"^id: chatcmpl-[0-9a-f]+:[0-9]+\ndata: \[DONE\]\n\n$")
        plain = self.curl("-N", *self.chat_args(self.chat("one two three", model="equabot:slow", stream=True)))
        self.assertEqual(len(b"".join(chunks)), len(plain.stdout))
        self.assertStream(b"".join(chunks))

    def test_deltas_reach_curl_as_they_are_produced(self) -> None:
        proc = subprocess.Popen([CURL, "-sS", "-N", *self.chat_args(self.chat("a b c d e f", model="equabot:slow",
                                                                              stream=True))],
                                stdout=subprocess.PIPE)
        started = time.monotonic()
        first = read_until(proc.stdout, b'"content":"Echo"')
        first_at = time.monotonic() - started
        rest = proc.stdout.read()
        total = time.monotonic() - started
        proc.wait(TIMEOUT)
        proc.stdout.close()
        self.assertNotIn(b"[DONE]", first)
        self.assertTrue(rest.endswith(b"data: [DONE]\n\n"))
        self.assertGreater(total - first_at, 0.2)          # 8 more deltas x 40 ms came later

    def test_http10_stream_is_close_delimited(self) -> None:
        done = self.curl("-N", "--http1.0", "-D", "-", *self.chat_args(self.chat(stream=True)))
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"))
        self.assertIn(b"\r\nconnection: close", head)
        self.assertNotIn(b"transfer-encoding", head)
        self.assertStream(body)


class StatusTest(CurlTestCase):
    def status(self, *args: str) -> tuple[int, bytes]:
        with tempfile.NamedTemporaryFile() as body:
            done = self.curl("-o", body.name, "-w", "%{http_code}", *args)
            return int(done.stdout), Path(body.name).read_bytes()

    def assertStatus(self, expected: int, *args: str) -> dict[str, Any]:
        status, body = self.status(*args)
        self.assertEqual(status, expected, body)
        return error_of(body)

    def test_error_statuses(self) -> None:
        url = f"{self.gw.url}/v1/chat/completions"
        json_type = ("-H", "Content-Type: application/json")
        cases = (
            ("no token", 401, (url, *json_type, "-d", json.dumps(self.chat()))),
            ("wrong token", 401, (url, *json_type, "-H", "Authorization: Bearer nope", "-d", json.dumps(self.chat()))),
            ("bad json", 400, tuple(self.chat_args("{not json"))),
            ("missing user message", 400, tuple(self.chat_args({"model": "x", "messages": [
                {"role": "system", "content": "s"}]}))),
            ("unsupported parameter", 400,
             tuple(self.chat_args(self.chat(response_format={"type": "json_object"})))),
            ("unknown agent", 404, tuple(self.chat_args(self.chat(model="equabot:ghost")))),
            ("unknown path", 404, tuple(self.chat_args(self.chat(), path="/v1/nowhere"))),
            ("wrong method", 405, (url, "-H", f"Authorization: Bearer {TOKEN}")),
            ("body too large", 413, tuple(self.chat_args(self.chat("x" * MAX_BODY_BYTES)))),
            ("not json", 415, (url, "-H", f"Authorization: Bearer {TOKEN}", "-d", json.dumps(self.chat()))),
            ("upstream failure", 502, tuple(self.chat_args(self.chat(model="equabot:broken")))),
            ("run timeout", 504, tuple(self.chat_args(self.chat("a b c d e f", model="equabot:late")))),
            ("streamed upstream failure", 502, tuple(self.chat_args(self.chat(model="equabot:broken", stream=True)))),
        )
        for name, status, args in cases:
            with self.subTest(name):
                self.assertStatus(status, *args)

    def test_429_with_retry_after(self) -> None:
        busy = subprocess.Popen([CURL, "-sS", "-N", *self.chat_args(self.chat(model="equabot:tiny", stream=True))],
                                stdout=subprocess.PIPE)
        try:
            read_until(busy.stdout, b'"content":"Echo"')      # tiny's one slot is taken
            done = self.curl("-D", "-", "-w", "\n%{http_code}", *self.chat_args(self.chat(model="equabot:tiny")))
        finally:
            rest = busy.stdout.read()
            busy.wait(TIMEOUT)
            busy.stdout.close()
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        body, _, status = body.rpartition(b"\n")
        self.assertEqual(status, b"429")
        self.assertIn(b"\r\nretry-after: 1\r\n", head)
        self.assertEqual(error_of(body)["type"], "rate_limit_error")
        self.assertTrue(rest.endswith(b"data: [DONE]\n\n"))

    def test_a_413_at_head_time_is_logged_with_the_request_id_it_carries(self) -> None:
        done = self.curl("-D", "-", "-o", "/dev/null", *self.chat_args(self.chat("x" * MAX_BODY_BYTES)))
        rid = re.search(rb"\r\nx-request-id: (\S+)\r\n", done.stdout)
        self.assertIsNotNone(rid, done.stdout)
        time.sleep(0.1)
        lines = [line for line in self.gw.stderr().splitlines() if " 413 " in line]
        self.assertTrue(any(line.endswith(f"rid={rid.group(1).decode()}") for line in lines), lines)

    def test_401_carries_www_authenticate(self) -> None:
        done = self.curl("-D", "-", "-o", "/dev/null", f"{self.gw.url}/v1/models")
        self.assertTrue(done.stdout.startswith(b"HTTP/1.1 401 "))
        self.assertIn(b"\r\nwww-authenticate: Bearer\r\n", done.stdout)


class ConnectionTest(CurlTestCase):
    def transfers(self, *args: str) -> list[str]:
        done = self.curl(*args)
        self.assertEqual(done.stderr, b"")
        return done.stdout.decode().split()

    def write_out(self) -> tuple[str, ...]:
        return ("-o", "/dev/null", "-w", "%{http_code}:%{num_connects}\\n")

    def test_keep_alive_reuses_one_connection(self) -> None:
        url = f"{self.gw.url}/v1/chat/completions"
        auth = ("-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json")
        out = self.transfers(
            *self.write_out(), *auth, "-d", json.dumps(self.chat()), url,
            "--next", *self.write_out(), *auth, "-d", json.dumps(self.chat(response_format={"type": "json_object"})), url,
            "--next", *self.write_out(), "-N", *auth, "-d", json.dumps(self.chat(stream=True)), url,
            "--next", *self.write_out(), "-H", f"Authorization: Bearer {TOKEN}", f"{self.gw.url}/v1/models")
        self.assertEqual(out, ["200:1", "400:0", "200:0", "200:0"])    # a 400 and a stream keep it open

    def test_413_closes_and_the_next_request_connects_again(self) -> None:
        url = f"{self.gw.url}/v1/chat/completions"
        auth = ("-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json")
        out = self.transfers(
            *self.write_out(), *auth, "-d", json.dumps(self.chat("x" * MAX_BODY_BYTES)), url,
            "--next", *self.write_out(), *auth, "-d", json.dumps(self.chat()), url)
        self.assertEqual(out, ["413:1", "200:1"])

    def test_expect_100_continue_upload(self) -> None:
        body = json.dumps(self.chat("y " * 1000)).encode()         # about 2 KiB
        done = self.curl("-v", "-H", "Expect: 100-continue", "--data-binary", "@-",
                         *self.chat_args("unused")[:5], input=body)
        # chat_args' own -d is dropped above: the body comes from stdin.
        trace = done.stderr.decode()
        self.assertIn("< HTTP/1.1 100 Continue", trace)
        self.assertIn("< HTTP/1.1 200 OK", trace)
        self.assertEqual(json.loads(done.stdout)["choices"][0]["message"]["content"],
                         "Echo (turn 1): " + "y " * 1000)

    def test_expect_100_continue_refused_before_the_body(self) -> None:
        body = b"{" + b" " * (4 * MAX_BODY_BYTES) + b"}"
        done = self.curl("-v", "-H", "Expect: 100-continue", "--data-binary", "@-", "-w", "%{http_code}",
                         "-o", "/dev/null", *self.chat_args("unused")[:5], input=body)
        trace = done.stderr.decode()
        self.assertEqual(done.stdout, b"413")
        self.assertNotIn("100 Continue", trace)
        self.assertIn("< connection: close", trace)


if __name__ == "__main__":
    unittest.main()
