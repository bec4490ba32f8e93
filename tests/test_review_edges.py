"""Unusual input at the gateway's edges: model names, client addresses, upstream usage blocks."""

from __future__ import annotations

import asyncio
import json
import unittest
from typing import Any
from unittest import mock

from equabot_gw import auth as auth_mod
from equabot_gw.agents.types import Usage
from equabot_gw.auth import MAX_FORWARDED_HOPS, Authenticator, Secret
from equabot_gw.config import RateLimitConfig
from equabot_gw.errors import ApiError
from tests.support import TOKEN, post_closing, running_gateway
from tests.test_faults import SSE_HEAD, FakeUpstream, chunk
from tests.test_providers import (HTTPProviderCase, anthropic_event, call, collect, openai_chunk, replay,
                                  sse)
from tests.test_providers import FakeUpstream as ProviderUpstream


def agents_config() -> dict[str, Any]:
    data: dict[str, Any] = {"gateway": {"auth": {"token": TOKEN},
                                        "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
                            "agents": {"list": [{"id": "main", "default": True}, {"id": "beta"}]}}
    return data


# Usage blocks as OpenAI-compatible servers send them when they count nothing (or part).
NULL_USAGES = (
    {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
    {"prompt_tokens": 3, "completion_tokens": None, "total_tokens": None},
    {"prompt_tokens": None, "completion_tokens": 2, "total_tokens": 2},
    {"total_tokens": 5},
)


class NullUsageProviderTest(HTTPProviderCase):
    """A count the upstream leaves null is not reported: no ``Usage`` (the gateway then counts words)."""

    async def test_openai_null_counts_are_not_reported(self) -> None:
        for usage in NULL_USAGES:
            with self.subTest(usage):
                stream = sse(openai_chunk("a", "stop"), {"id": "c", "choices": [], "usage": usage}, b"[DONE]")
                async with ProviderUpstream(replay(stream)) as up:
                    reply = await collect(self.provider(up), call())
                self.assertEqual((reply.text, reply.usage, reply.finish), ("a", None, "stop"))

    async def test_openai_whole_counts_still_count(self) -> None:
        stream = sse(openai_chunk("a", "stop"), {"id": "c", "choices": [], "usage": {
            "prompt_tokens": 3, "completion_tokens": 2, "completion_tokens_details": None}}, b"[DONE]")
        async with ProviderUpstream(replay(stream)) as up:
            reply = await collect(self.provider(up), call())
        self.assertEqual(reply.usage, Usage(3, 2))


class NullUsageAnthropicTest(HTTPProviderCase):
    api = "anthropic-messages"
    base_path = ""

    async def test_a_count_never_reported_is_not_reported_as_zero(self) -> None:
        for start, delta in (({"input_tokens": 4, "output_tokens": None}, {"output_tokens": None}),
                             ({"input_tokens": None, "output_tokens": None}, {"output_tokens": 9}),
                             ({"input_tokens": None}, None)):
            with self.subTest(start=start, delta=delta):
                stream = b"".join((
                    anthropic_event("message_start", message={"usage": start}),
                    anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
                    anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "ab"}),
                    anthropic_event("content_block_stop", index=0),
                    anthropic_event("message_delta", delta={"stop_reason": "end_turn"}, usage=delta),
                    anthropic_event("message_stop")))
                async with ProviderUpstream(replay(stream)) as up:
                    reply = await collect(self.provider(up), call())
                self.assertEqual((reply.text, reply.usage, reply.finish), ("ab", None, "stop"))


async def null_usage_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              body: dict[str, Any]) -> None:
    events = [{"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"content": "three little words"}, "finish_reason": "stop"}]},
              {"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
               "usage": {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}}]
    writer.write(SSE_HEAD + b"".join(chunk(b"data: " + json.dumps(e).encode() + b"\n\n") for e in events)
                 + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


class NullUsageEndToEndTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_completion_of_an_upstream_with_null_counts_counts_words(self) -> None:
        async with FakeUpstream(null_usage_upstream) as up:
            data = agents_config()
            data["agents"] = {"defaults": {"model": "up/m"}}
            data["models"] = {"providers": {"up": {"api": "openai-completions", "baseUrl": up.base_url,
                                                   "apiKey": "sk-x"}}}
            async with running_gateway(data) as gw:
                payload = json.dumps({"model": "equabot", "messages": [{"role": "user", "content": "say it"}]})
                status, _, body, _ = await post_closing(gw.server.port, "/v1/chat/completions", payload.encode())
        self.assertEqual(status, 200, body)
        completion = json.loads(body)
        self.assertEqual(completion["choices"][0]["message"]["content"], "three little words")
        # The words of the reply, as for any provider that reports no counts.
        self.assertEqual(completion["usage"]["completion_tokens"], 3)
        self.assertGreater(completion["usage"]["prompt_tokens"], 0)


# -- client addresses ------------------------------------------------------------------

WRONG = "wrong-token"


class FixedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authenticator(max_attempts: int = 3, proxies: tuple[str, ...] = ()) -> Authenticator:
    return Authenticator(Secret("token", TOKEN, "test"),
                         RateLimitConfig(max_attempts=max_attempts, window_seconds=60.0,
                                         lockout_seconds=300.0, exempt_loopback=True),
                         proxies, FixedClock())


class ClientPrefixTest(unittest.TestCase):
    """An IPv6 client is counted by its /64; an IPv4-mapped one as its IPv4 address."""

    def status(self, auth: Authenticator, presented: str, client: str, **kwargs: Any) -> int:
        try:
            auth.check(presented, client, **kwargs)
        except ApiError as exc:
            return exc.status
        return 200

    def test_one_ipv6_host_cannot_rotate_its_addresses_out_of_the_count(self) -> None:
        for browser in (False, True):
            with self.subTest(browser_origin=browser):
                auth = authenticator()
                for n in range(1, 4):       # three addresses of one /64, one guess each
                    self.assertEqual(self.status(auth, WRONG, f"2001:db8:0:1::{n:x}", browser_origin=browser), 401)
                for client in ("2001:db8:0:1::ffff", "2001:db8:0:1:abcd:ef01:2345:6789", "2001:DB8:0:1::9%eth0"):
                    self.assertEqual(self.status(auth, TOKEN, client, browser_origin=browser), 429, client)
                # The next /64 is another host; IPv4 stays per address.
                self.assertEqual(self.status(auth, TOKEN, "2001:db8:0:2::1", browser_origin=browser), 200)

    def test_an_ipv4_mapped_address_is_its_ipv4_address(self) -> None:
        auth = authenticator()
        for client in ("192.0.2.7", "::ffff:192.0.2.7", "::ffff:c000:207"):
            self.assertEqual(self.status(auth, WRONG, client), 401)
        self.assertEqual(self.status(auth, TOKEN, "192.0.2.7"), 429)
        self.assertEqual(self.status(auth, TOKEN, "192.0.2.8"), 200)

    def test_names_and_forwarding_marks_are_kept_as_they_are(self) -> None:
        auth = authenticator(max_attempts=1)
        for client in ("unknown", "::1 (forwarding)", "not:an:address"):
            self.assertEqual(self.status(auth, WRONG, client), 401)
            self.assertEqual(self.status(auth, TOKEN, client), 429)
        self.assertEqual(self.status(auth, TOKEN, "unknown2"), 200)


class ForwardedRotationTest(unittest.IsolatedAsyncioTestCase):
    async def test_rotating_ipv6_addresses_behind_a_proxy_are_locked_out_together(self) -> None:
        data = agents_config()
        data["gateway"]["trustedProxies"] = ["127.0.0.1"]
        data["gateway"]["auth"]["rateLimit"] = {"maxAttempts": 3, "windowSeconds": 60, "lockoutSeconds": 300}
        async with running_gateway(data) as gw:
            statuses = []
            for n in range(1, 6):
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
                try:
                    writer.write(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                 f"X-Forwarded-For: 2001:db8:7:7::{n:x}\r\n"
                                 f"Authorization: Bearer {WRONG}\r\n\r\n".encode())
                    raw = await asyncio.wait_for(reader.read(), 10)
                finally:
                    writer.close()
                statuses.append(int(raw.split()[1]))
        self.assertEqual(statuses, [401, 401, 401, 429, 429])


class ForwardedForBoundTest(unittest.TestCase):
    """Behind a trusted proxy only the last ``MAX_FORWARDED_HOPS`` entries are read."""

    PROXIES = ("127.0.0.1", "10.0.0.0/8")

    def parses(self, auth: Authenticator, header: str | list[str]) -> tuple[str, int]:
        with mock.patch.object(auth_mod.ipaddress, "ip_address", wraps=auth_mod.ipaddress.ip_address) as spy:
            client = auth.client_address("127.0.0.1", header)
        return client, spy.call_count

    def test_a_long_header_costs_a_bounded_number_of_parses(self) -> None:
        auth = authenticator(proxies=self.PROXIES)
        trusted = ", ".join(f"10.0.{n // 250}.{n % 250 + 1}" for n in range(5000))
        for name, header in (("trusted hops", trusted),
                             ("trusted hops over many lines", [f"10.0.0.{n % 250 + 1}" for n in range(3000)]),
                             ("one long entry", "1" * 60_000 + ", 10.0.0.1"),
                             ("long address-like entries", ", ".join(["1:" * 30 + "1"] * 1000) + ", 10.0.0.1")):
            with self.subTest(name):
                _, parses = self.parses(auth, header)
                self.assertLessEqual(parses, 1 + MAX_FORWARDED_HOPS)      # the peer, and the hops read

    def test_the_client_is_the_first_untrusted_hop_or_the_leftmost_read(self) -> None:
        auth = authenticator(proxies=self.PROXIES)
        hops = [f"10.0.0.{n}" for n in range(1, 41)]
        header = ", ".join(["203.0.113.9", *hops])
        # Every hop read is a trusted proxy: the leftmost read is the client; further left is ignored.
        self.assertEqual(self.parses(auth, header)[0], hops[-MAX_FORWARDED_HOPS])
        self.assertEqual(self.parses(auth, [", ".join(hops[:30]), ", ".join(hops[30:])])[0],
                         hops[-MAX_FORWARDED_HOPS])
        # Within the bound, the first untrusted hop from the right, as ever.
        self.assertEqual(self.parses(auth, ", ".join(["6.6.6.6", "203.0.113.9", *hops[:5]]))[0], "203.0.113.9")
        self.assertEqual(self.parses(auth, ["203.0.113.9", ", ".join(hops[:5])])[0], "203.0.113.9")
        self.assertEqual(self.parses(auth, "," * 60_000)[0], "127.0.0.1")
        self.assertEqual(self.parses(auth, "x" * 60_000)[0], "x" * auth_mod.MAX_KEY_CHARS)

    def test_a_proxy_seen_as_an_ipv4_mapped_address_is_trusted(self) -> None:
        # A dual-stack listener writes (or sees) an IPv4 proxy as ::ffff:a.b.c.d.
        auth = authenticator(proxies=self.PROXIES)
        self.assertEqual(auth.client_address("::ffff:127.0.0.1", "203.0.113.7"), "203.0.113.7")
        self.assertEqual(auth.client_address("127.0.0.1", "203.0.113.7, ::ffff:10.0.0.5"), "203.0.113.7")
        self.assertEqual(auth.client_address("127.0.0.1", "203.0.113.7, [::ffff:10.0.0.5]:8080"), "203.0.113.7")
        self.assertEqual(auth.client_address("::ffff:198.51.100.1", "203.0.113.7"), "::ffff:198.51.100.1")


if __name__ == "__main__":
    unittest.main()
