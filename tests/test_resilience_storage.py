"""Idempotency keys of runs whose turn could not be recorded: they run again, before and after a restart.

A storage fault is injected in the committer's one write primitive
(``committer._write``): writes that are not a key's journal line fail with
EFBIG, as a transcript append past ``RLIMIT_FSIZE`` does. The key's line is
written, the turn is not; the client is answered 503 ``storage``. Nothing of
that run is in the session, so a retry under its key runs it again (the
resilience table's "a storage error" row), in the same process and after a
restart. Only a run the gateway stopped in the middle of (its key line
written, its turn and its key's release not) replays as interrupted: a 503
``server_error``, never a client error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import unittest
from collections.abc import Iterator
from typing import Any
from unittest import mock

from equabot_gw.agents import committer
from equabot_gw.errors import INTERRUPTED, RunAborted, error_type_for_status, http_status
from equabot_gw.gateway import resume
from equabot_gw.gateway.app import Gateway
from tests.resume_client import SSEStream, content_of
from tests.support import base_config, error_of
from tests.test_resilience import ResilienceCase

SESSION = "storage-fault"
BIG = "x" * 40_000          # its turn is a write of 80 KB; a key line is a few hundred bytes


@contextlib.contextmanager
def failing_writes(*, spare: tuple[bytes, ...] = (b'{"type":"key"', b'{"type":"free"')) -> Iterator[None]:
    """Every committer write fails with EFBIG but those whose data starts with one of
    ``spare`` (by default the key journal's lines)."""
    real = committer._write

    def write(fd: int, data: Any) -> int:
        if not bytes(data[:16]).startswith(spare):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        return real(fd, data)
    with mock.patch.object(committer, "_write", write):
        yield


def request(stream: bool = False) -> dict[str, Any]:
    return {"model": "equabot", "messages": [{"role": "user", "content": BIG}], "stream": stream}


class UnrecordedKeyedRunTest(ResilienceCase):
    async def start(self, data: dict[str, Any] | None = None) -> Gateway:
        return await super().start(data or base_config())

    async def restart(self, gateway: Gateway) -> Gateway:
        await gateway.stop()
        self.gateways.remove(gateway)
        return await self.start()

    async def post(self, gateway: Gateway, key: str, stream: bool = False) -> SSEStream:
        response = await SSEStream.open(gateway.server.port, request(stream),
                                        {"Idempotency-Key": key, "x-equabot-session-key": SESSION})
        if stream:
            response.events = await response.read_all()        # type: ignore[attr-defined]
        return response

    async def turns(self, gateway: Gateway) -> list[str]:
        lines = await gateway.runtime.store.read_transcript("main", SESSION)
        return [line["type"] for line in lines if line["type"] != "session"]

    def assertStorageFailure(self, response: SSEStream) -> None:
        self.assertEqual(response.status, 503, response.body[:300])
        self.assertEqual(error_of(response.body)["code"], "storage")
        self.assertIsNone(response.headers.get(resume.REPLAY_HEADER))

    def assertRanAgain(self, response: SSEStream, turn: int) -> None:
        self.assertEqual((response.status, response.headers.get(resume.REPLAY_HEADER)), (200, None),
                         response.body[:300])
        self.assertEqual(response.json()["choices"][0]["message"]["content"], f"Echo (turn {turn}): {BIG}")

    async def test_a_retry_runs_again_in_the_same_process(self) -> None:
        gateway = await self.start()
        with failing_writes():
            self.assertStorageFailure(await self.post(gateway, "k-same"))
        self.assertEqual(await self.turns(gateway), [])
        self.assertRanAgain(await self.post(gateway, "k-same"), 1)
        self.assertEqual(self.counting.calls, 2)
        # That run was recorded: from now on its key replays it.
        again = await self.post(gateway, "k-same")
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, "true"))
        self.assertEqual(self.counting.calls, 2)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])

    async def test_a_retry_of_a_stream_that_showed_words_runs_again(self) -> None:
        gateway = await self.start()
        with failing_writes():
            cut = await self.post(gateway, "k-stream", stream=True)
        # The words went out, then the storage error: the turn is not in the session.
        self.assertEqual((cut.status, content_of(cut.events)), (200, f"Echo (turn 1): {BIG}"))
        again = await self.post(gateway, "k-stream", stream=True)
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, None))
        self.assertEqual(content_of(again.events), f"Echo (turn 1): {BIG}")
        self.assertEqual(self.counting.calls, 2)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])

    async def test_a_retry_runs_again_after_a_restart(self) -> None:
        gateway = await self.start()
        with failing_writes():
            self.assertStorageFailure(await self.post(gateway, "k-restart"))
        gateway = await self.restart(gateway)
        self.assertRanAgain(await self.post(gateway, "k-restart"), 1)
        self.assertEqual(self.counting.calls, 2)
        gateway = await self.restart(gateway)
        again = await self.post(gateway, "k-restart")
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, "true"))
        self.assertEqual(self.counting.calls, 2)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])

    async def test_a_run_the_gateway_lost_track_of_replays_as_interrupted_with_a_server_error(self) -> None:
        gateway = await self.start()
        # Neither the turn nor the key's release can be written: after a restart the key line
        # alone is left, as after a crash in the middle of the run.
        with failing_writes(spare=(b'{"type":"key"',)), self.assertLogs("equabot_gw.runtime", "WARNING") as logs:
            self.assertStorageFailure(await self.post(gateway, "k-lost"))
            gateway = await self.restart(gateway)
        self.assertIn("could not be freed", "\n".join(logs.output))
        again = await self.post(gateway, "k-lost")
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (503, "true"), again.body)
        error = error_of(again.body)
        self.assertEqual((error["type"], error["message"]), ("server_error", f"run aborted: {INTERRUPTED}"))
        self.assertEqual(self.counting.calls, 1)       # its provider may have answered: not run again


class InterruptedStatusTest(unittest.TestCase):
    def test_an_interrupted_run_is_the_gateways_failure_not_the_clients(self) -> None:
        status = http_status(RunAborted(INTERRUPTED))
        self.assertEqual((status, error_type_for_status(status)), (503, "server_error"))
        self.assertEqual(http_status(RunAborted("client gone")), 499)


if __name__ == "__main__":
    unittest.main()
