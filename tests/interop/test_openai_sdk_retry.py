"""The official ``openai`` SDK retrying through a connection reset, with an ``Idempotency-Key``.

A small proxy in the test forwards the SDK's requests to an in-process
gateway and cuts the first response in the middle of its body (a reset, as
a phone changing networks leaves it). The SDK's own retry (``max_retries``)
sends the same request again with the same ``Idempotency-Key`` (passed via
``extra_headers``): the gateway replays the run it already made, so the
answer is complete, the provider was called once and the transcript holds
one turn.
"""

from __future__ import annotations

import asyncio
import unittest

from equabot_gw.gateway import resume
from tests.interop.test_openai_sdk import REQUIRED, SKIP_REASON, openai
from tests.support import TOKEN
from tests.test_resilience import MESSAGE, SESSION, ResilienceCase


class CuttingProxy:
    """Forwards connections to ``port``; the first response is cut after ``keep`` bytes."""

    def __init__(self, port: int, keep: int) -> None:
        self.port, self.keep = port, keep
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        cut = self.connections == 1
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            try:
                while data := await reader.read(65536):
                    if limit is not None and sent + len(data) > limit:
                        writer.write(data[:limit - sent])
                        await writer.drain()
                        client_w.transport.abort()          # reset mid-body
                        upstream_w.transport.abort()
                        return
                    writer.write(data)
                    await writer.drain()
                    sent += len(data)
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_r, upstream_w, None),
                             pipe(upstream_r, client_w, self.keep if cut else None),
                             return_exceptions=True)


@unittest.skipUnless(openai is not None or REQUIRED, SKIP_REASON)
class SDKRetryTest(ResilienceCase):
    async def test_a_retry_through_a_reset_with_the_same_key_is_one_run_and_the_whole_answer(self) -> None:
        gateway = await self.start()
        proxy = CuttingProxy(gateway.server.port, keep=300)      # the head and a part of the JSON body
        port = await proxy.start()
        self.addAsyncCleanup(proxy.close)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=2)

        raw = await asyncio.wait_for(asyncio.to_thread(
            lambda: client.with_raw_response.chat.completions.create(
                model="equabot", messages=[{"role": "user", "content": MESSAGE}],
                extra_headers={"Idempotency-Key": "sdk-retry-1", "x-equabot-session-key": SESSION})), 30)
        completion = raw.parse()
        self.assertEqual(proxy.connections, 2, "the first attempt was cut and retried once")
        self.assertEqual(raw.headers.get(resume.REPLAY_HEADER), "true")
        self.assertEqual(completion.choices[0].message.content, "Echo (turn 1): " + MESSAGE)
        self.assertEqual(self.counting.calls, 1)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])


if __name__ == "__main__":
    unittest.main()
