"""Big chat-completion requests answer without holding the event loop.

A real gateway process gets the hostile cases while a neighbour thread polls
``GET /health`` every 10 ms on its own connections; no poll may take over
250 ms, a sanity bound with room for a loaded machine (each poll's worst is
printed; the 100 ms target is ``make bench``'s to measure). Before these
cases were bounded, a poll waited 1.6 s (1.2M messages) to 27 s (streams):

* a ``messages`` array of 1.2 million entries (18 MiB): 400
  ``too_many_messages`` naming ``gateway.http.maxMessages``;
* 10,000 messages (the default limit) of 2 KB on a keyed session: answered,
  and the second turn sees the whole history;
* a 2 MiB message of one-letter words, streamed: a million deltas.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import unittest
from typing import Any

from tests.support import TOKEN, GatewayProcess, base_config, error_of
from tests.test_faults import sse_events, stream_outcome

POLL_BOUND = 0.25


class HealthPoller(threading.Thread):
    """GET /health every 10 ms on fresh connections; ``worst`` is the slowest answer (seconds)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.worst = 0.0
        self.polls = 0
        self.failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            started = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := sock.recv(4096):
                        data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    self.failures.append(data[:40].decode("latin-1"))
            except OSError as exc:
                self.failures.append(repr(exc))
            self.worst = max(self.worst, time.perf_counter() - started)
            self.polls += 1
            time.sleep(0.01)

    def __enter__(self) -> HealthPoller:
        self.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join(15)


def post(port: int, body: bytes, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
                              **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def messages_body(messages: list[dict[str, Any]], **fields: Any) -> bytes:
    return json.dumps({"model": "equabot", "messages": messages, **fields}).encode()


class BigRequestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        data = base_config()
        data["gateway"]["http"]["maxBodyBytes"] = 20 * 1024 * 1024
        cls.gw = GatewayProcess(data).start()

    @classmethod
    def tearDownClass(cls) -> None:
        code = cls.gw.stop()
        cls.gw.tmp.cleanup()
        assert code == 0, code

    def assertLoopFree(self, poller: HealthPoller) -> None:
        print(f"  {self._testMethodName}: {poller.polls} polls, the slowest {poller.worst * 1000:.0f} ms")
        self.assertEqual(poller.failures, [])
        self.assertGreater(poller.polls, 3)
        self.assertLess(poller.worst, POLL_BOUND, f"a /health poll took {poller.worst * 1000:.0f} ms")

    def test_a_million_messages_are_refused_by_count_without_stalling_others(self) -> None:
        body = b'{"model":"equabot","messages":[' + b",".join([b'{"role":"user"}'] * 1_200_000) + b"]}"
        self.assertGreater(len(body), 18 * 2**20)
        with HealthPoller(self.gw.port) as poller:
            status, answer = post(self.gw.port, body)
        self.assertEqual(status, 400, answer[:300])
        error = error_of(answer)
        self.assertEqual((error["code"], error["param"]), ("too_many_messages", "messages"))
        self.assertIn("1200000 messages, more than this gateway's limit of 10000 (gateway.http.maxMessages)",
                      error["message"])
        self.assertLoopFree(poller)

    def test_ten_thousand_messages_on_a_keyed_session(self) -> None:
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} " + "m" * 2000}
                    for i in range(9_999)] + [{"role": "user", "content": "last"}]
        key = {"x-equabot-session-key": "ten-thousand"}
        body = messages_body(messages)          # built first: encoding 20 MB holds this process's GIL
        with HealthPoller(self.gw.port) as poller:
            status, answer = post(self.gw.port, body, key)
            self.assertEqual(status, 200, answer[:300])
            self.assertEqual(json.loads(answer)["choices"][0]["message"]["content"], "Echo (turn 1): last")
            # The session now has its history (the first turn's context): it is used as is.
            status, answer = post(self.gw.port, messages_body([{"role": "user", "content": "next"}]), key)
            self.assertEqual(status, 200, answer[:300])
            self.assertEqual(json.loads(answer)["usage"]["prompt_tokens"], 2 * 9_999 + 1 + 4 + 1)
        self.assertLoopFree(poller)

    def test_a_million_one_letter_words_stream_without_stalling_others(self) -> None:
        message = "a " * 1_000_000
        body = messages_body([{"role": "user", "content": message}], stream=True)
        with HealthPoller(self.gw.port) as poller:
            status, answer = post(self.gw.port, body)
        self.assertEqual(status, 200)
        text, finish, error = stream_outcome(sse_events(answer))
        self.assertEqual((text, finish, error), ("Echo (turn 1): " + message, "stop", None))
        self.assertLoopFree(poller)


class MaxMessagesConfigTest(unittest.TestCase):
    def test_the_limit_is_configurable(self) -> None:
        data = base_config()
        data["gateway"]["http"]["maxMessages"] = 3
        with GatewayProcess(data) as gw:
            three = [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"},
                     {"role": "user", "content": "u"}]
            self.assertEqual(post(gw.port, messages_body(three))[0], 200)
            status, answer = post(gw.port, messages_body(three + [{"role": "user", "content": "v"}]))
            self.assertEqual(status, 400)
            self.assertIn("4 messages, more than this gateway's limit of 3", error_of(answer)["message"])


if __name__ == "__main__":
    unittest.main()
