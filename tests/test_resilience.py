"""Never lose or repeat a reply: ``Idempotency-Key`` and resumable streams on ``/v1/chat/completions``.

A raw-socket client cuts its stream after N events and resumes it with
``Last-Event-ID`` (the same POST, or ``GET /v1/chat/completions/{id}/events``):
the text it got before and after the cut is the whole reply, the provider
was asked once (a counting provider), and the transcript holds one turn —
also when the gateway restarts between the cut and the resume. Fifty
clients sending one key at once share one run; another body under a used
key is refused with 422; a run cut by a restart resumes as aborted with its
partial text; keys are bounded in number and forgotten after their retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import tempfile
import time
import unittest
from typing import Any
from unittest import mock

from equabot_gw import config as config_mod
from equabot_gw.agents import idempotency
from equabot_gw.gateway import resume
from equabot_gw.gateway.app import Gateway
from equabot_gw.gateway.openai import HEADER_PREFIXES
from equabot_gw.providers.echo import EchoProvider
from tests.resume_client import SSEStream, content_of, output_of
from tests.support import base_config, error_of

MESSAGE = " ".join(f"word{i}" for i in range(40))
SESSION = "resume-me"


def config(**gateway: Any) -> dict[str, Any]:
    data = base_config(**gateway)
    # 40 words, 10 ms apart: a stream long enough to be cut in the middle.
    data["models"] = {"providers": {"paced": {"api": "echo", "delayMs": 10}}}
    data["agents"] = {"defaults": {"model": "paced/echo"}}
    return data


class CountingEcho:
    """Counts the calls of every echo provider (of every gateway) while it is installed."""

    def __init__(self) -> None:
        self.calls = 0
        original = EchoProvider.stream
        counter = self

        def stream(provider: EchoProvider, call: Any) -> Any:
            counter.calls += 1
            return original(provider, call)
        self.patch = mock.patch.object(EchoProvider, "stream", stream)

    def __enter__(self) -> CountingEcho:
        self.patch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.patch.stop()


def request(stream: bool = True, message: str = MESSAGE) -> dict[str, Any]:
    return {"model": "equabot", "messages": [{"role": "user", "content": message}], "stream": stream}


def seq_of(event_id: str) -> int:
    """The seq of an event id, in characters or (``u<seq>``, a mixed reply's) output units."""
    return int(event_id.rpartition(":")[2].lstrip("u"))


class ResilienceCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.state = pathlib.Path(self.tmp.name)
        self.counting = CountingEcho().__enter__()
        self.gateways: list[Gateway] = []

    async def asyncTearDown(self) -> None:
        for gateway in self.gateways:
            with contextlib.suppress(Exception):
                await gateway.stop()
        self.counting.__exit__()
        self.tmp.cleanup()

    async def start(self, data: dict[str, Any] | None = None) -> Gateway:
        gateway = Gateway(config_mod.from_data(data or config(), env={}), self.state, port=0, env={})
        await gateway.start()
        self.gateways.append(gateway)
        return gateway

    async def stop(self, gateway: Gateway) -> None:
        await gateway.stop()
        self.gateways.remove(gateway)

    async def post(self, gateway: Gateway, body: dict[str, Any], **headers: str) -> SSEStream:
        return await SSEStream.open(gateway.server.port, body, {k.replace("_", "-"): v for k, v in headers.items()})

    async def turns(self, gateway: Gateway) -> list[str]:
        lines = await gateway.runtime.store.read_transcript("main", SESSION)
        return [line["type"] for line in lines if line["type"] != "session"]

    async def uninterrupted(self, gateway: Gateway) -> str:
        """The reply the same request gets on a fresh session, read whole."""
        stream = await self.post(gateway, request(), x_equabot_session_key="reference")
        return content_of(await stream.read_all())

    async def cut(self, gateway: Gateway, key: str, after: int) -> list[tuple[str | None, Any]]:
        stream = await self.post(gateway, request(), Idempotency_Key=key, x_equabot_session_key=SESSION)
        self.assertEqual(stream.status, 200)
        events = await stream.read_all(cut_after=after)
        self.assertEqual(len(events), after)
        return events


class ResumeTest(ResilienceCase):
    async def test_a_cut_stream_resumed_with_last_event_id_is_the_whole_reply_of_one_run(self) -> None:
        gateway = await self.start()
        before = await self.cut(gateway, "k-cut", 6)
        last_id = before[-1][0]
        self.assertTrue(last_id.startswith("chatcmpl-"))
        again = await self.post(gateway, request(), Idempotency_Key="k-cut", x_equabot_session_key=SESSION,
                                Last_Event_ID=last_id)
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, "true"))
        after = await asyncio.wait_for(again.read_all(), 10)
        self.assertEqual(after[-1][1], "[DONE]")
        ids = [seq_of(i) for i, _ in before + after]
        self.assertEqual(ids, sorted(ids))                       # no event twice, none out of order
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual(self.counting.calls, 1)
        whole = content_of(before) + content_of(after)
        self.assertEqual(whole, await self.uninterrupted(gateway))
        self.assertEqual(whole, "Echo (turn 1): " + MESSAGE)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])

    async def test_the_events_endpoint_resumes_too_and_a_replay_from_the_start_is_identical(self) -> None:
        gateway = await self.start()
        before = await self.cut(gateway, "k-get", 4)
        completion_id = before[0][1]["id"]
        path = f"/v1/chat/completions/{completion_id}/events"
        rest = await SSEStream.open(gateway.server.port, None, {"Last-Event-ID": before[-1][0]},
                                    method="GET", path=path)
        self.assertEqual(rest.status, 200)
        after = await asyncio.wait_for(rest.read_all(), 10)
        self.assertEqual(content_of(before) + content_of(after), "Echo (turn 1): " + MESSAGE)
        # The whole stream again (the same POST, no Last-Event-ID): the same text and ids.
        replay = await self.post(gateway, request(), Idempotency_Key="k-get", x_equabot_session_key=SESSION)
        events = await replay.read_all()
        self.assertEqual(content_of(events), "Echo (turn 1): " + MESSAGE)
        self.assertEqual({data["id"] for _, data in events if isinstance(data, dict)}, {completion_id})
        self.assertEqual(events[-1][0], after[-1][0])            # [DONE] has the same id both times
        by_query = await SSEStream.open(gateway.server.port, None, method="GET", path=path + "?after=5")
        self.assertEqual(content_of(await by_query.read_all()), ("Echo (turn 1): " + MESSAGE)[5:])
        # A query of more fields than any route reads is a 400 too (it was a 500).
        for bad in ("", "x", "u", "-1", "5&" + "&".join(f"f{i}=1" for i in range(40))):
            with self.subTest(after=bad):
                refused = await SSEStream.open(gateway.server.port, None, method="GET", path=f"{path}?after={bad}")
                self.assertEqual((refused.status, error_of(refused.body)["code"]), (400, "invalid_value"))
        self.assertEqual(self.counting.calls, 1)
        missing = await SSEStream.open(gateway.server.port, None, method="GET",
                                       path="/v1/chat/completions/chatcmpl-00ff/events")
        self.assertEqual((missing.status, error_of(missing.body)["code"]), (404, "not_found"))

    async def test_a_resume_after_a_restart_replays_from_the_transcript(self) -> None:
        gateway = await self.start()
        before = await self.cut(gateway, "k-restart", 5)
        # The client is gone; the keyed run goes on and is recorded before the gateway stops.
        await self.stop(gateway)
        gateway = await self.start()
        again = await self.post(gateway, request(), Idempotency_Key="k-restart", x_equabot_session_key=SESSION,
                                Last_Event_ID=before[-1][0])
        self.assertEqual(again.status, 200)
        after = await asyncio.wait_for(again.read_all(), 10)
        self.assertEqual(content_of(before) + content_of(after), "Echo (turn 1): " + MESSAGE)
        self.assertEqual(after[-2][1]["usage"] if "usage" in after[-2][1] else None, None)
        self.assertEqual(self.counting.calls, 1)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])
        ids = [seq_of(i) for i, _ in before + after]
        self.assertEqual(ids, sorted(ids))

    async def test_a_run_cut_by_a_restart_resumes_as_aborted_with_its_partial_text(self) -> None:
        data = config(shutdownGraceSeconds=0)
        gateway = await self.start(data)
        before = await self.cut(gateway, "k-abort", 5)
        await self.stop(gateway)          # no grace: the run is aborted and recorded with what it had
        gateway = await self.start(data)
        again = await self.post(gateway, request(), Idempotency_Key="k-abort", x_equabot_session_key=SESSION,
                                Last_Event_ID=before[-1][0])
        after = await asyncio.wait_for(again.read_all(), 10)
        self.assertEqual(after[-1][1], "[DONE]")
        self.assertEqual(after[-2][1]["error"]["code"], "aborted")
        partial = content_of(before) + content_of(after)
        self.assertTrue(("Echo (turn 1): " + MESSAGE).startswith(partial), partial)
        self.assertLess(len(partial), len("Echo (turn 1): " + MESSAGE))
        lines = await gateway.runtime.store.read_transcript("main", SESSION)
        self.assertEqual([line["content"] for line in lines if line["type"] == "aborted"], [partial])
        self.assertEqual(self.counting.calls, 1)


class MixedResumeTest(ResilienceCase):
    """Replies with reasoning, log probabilities, tool calls and several choices: every
    event has an id of its own, and a resume goes on exactly after it."""

    async def test_a_live_mixed_stream_resumes_exactly_after_any_event(self) -> None:
        gateway = await self.start()
        body = {**request(), "n": 2, "logprobs": True, "reasoning_effort": "low"}
        whole = await (await self.post(gateway, body, x_equabot_session_key="reference")).read_all()
        seqs = [seq_of(i) for i, _ in whole if i is not None]
        self.assertEqual(seqs, sorted(set(seqs)))               # unique, in order
        self.assertEqual(len(seqs), len(whole))
        expected = output_of(whole)
        self.assertEqual(sorted(expected), [0, 1])
        self.assertEqual(expected[0]["logprobs"], expected[1]["logprobs"])
        self.assertGreater(expected[1]["logprobs"], 40)                   # one per word
        for cut in (2, 3, 30, 61):                 # while the run goes on (~10 ms a word)
            with self.subTest(cut=cut):
                key, session = f"k-mixed-{cut}", f"mixed-{cut}"
                stream = await self.post(gateway, body, Idempotency_Key=key, x_equabot_session_key=session)
                before = await stream.read_all(cut_after=cut)
                again = await self.post(gateway, body, Idempotency_Key=key, x_equabot_session_key=session,
                                        Last_Event_ID=before[-1][0])
                self.assertEqual(again.status, 200)
                after = await asyncio.wait_for(again.read_all(), 10)
                self.assertEqual(output_of(before + after), expected)
                self.assertEqual((before + after)[-1][1], "[DONE]")       # once: none after a [DONE] had
                self.assertEqual([seq_of(i) for i, _ in before + after], seqs)     # the same ids, too
        # Once the run has finished, its record cannot place a position in output units.
        stream = await self.post(gateway, body, Idempotency_Key="k-mixed-end", x_equabot_session_key="mixed-end")
        before = await stream.read_all(cut_after=len(whole) - 2)
        while gateway.runtime.active:
            await asyncio.sleep(0.01)
        again = await self.post(gateway, body, Idempotency_Key="k-mixed-end", x_equabot_session_key="mixed-end",
                                Last_Event_ID=before[-1][0])
        self.assertEqual((again.status, error_of(again.body)["code"]), (409, "resume_unavailable"))
        whole_again = await (await self.post(gateway, body, Idempotency_Key="k-mixed-end",
                                             x_equabot_session_key="mixed-end")).read_all()
        self.assertEqual(output_of(whole_again), expected)

    async def test_a_finished_reply_with_tool_calls_replays_whole_or_from_its_end_and_refuses_inside(self) -> None:
        gateway = await self.start()
        arguments = json.dumps({"a": "0123456789" * 20})
        body = {**request(message=f"/call f {arguments}"), "tools": [{"type": "function", "function": {"name": "f"}}]}
        events = await (await self.post(gateway, body, Idempotency_Key="k-calls")).read_all()
        seqs = [seq_of(i) for i, _ in events if i is not None]
        self.assertEqual((seqs, len(seqs)), (sorted(set(seqs)), len(events)))    # every event its own id
        self.assertEqual([i.rpartition(":")[2][:1] for i, _ in events], ["0"] + ["u"] * (len(events) - 1))
        self.assertEqual(output_of(events)[0]["calls"][0]["arguments"], arguments)
        while gateway.runtime.active:
            await asyncio.sleep(0.01)
        # After any event in output units: the finished run's record cannot tell the order
        # its output came in (nor keeps all of it: log probabilities, further choices).
        for event_id, _ in events[1:]:
            inside = await self.post(gateway, body, Idempotency_Key="k-calls", Last_Event_ID=event_id)
            self.assertEqual((inside.status, error_of(inside.body)["code"]), (409, "resume_unavailable"))
        # After the role chunk: the whole reply again, once.
        rest = await (await self.post(gateway, body, Idempotency_Key="k-calls", Last_Event_ID=events[0][0])).read_all()
        self.assertEqual(output_of(events[:1] + rest), output_of(events))
        self.assertEqual(rest[-1], events[-1])                              # the same last id
        self.assertEqual(self.counting.calls, 1)

    async def test_a_finished_mixed_reply_resumes_only_from_its_start(self) -> None:
        # Its record keeps neither the order its output came in nor, past a size or a
        # restart, all of it: after any position but the first, 409.
        gateway = await self.start(config(http={"resumeGraceSeconds": 0.05, "abortUnclaimedRuns": True}))
        cases = (("k-n2", {**request(), "n": 2}, None),                          # its first ids are plain
                 ("k-aborted", {**request(), "reasoning_effort": "low"}, 12))    # aborted once cut
        for key, body, cut in cases:
            with self.subTest(key=key):
                stream = await self.post(gateway, body, Idempotency_Key=key)
                events = await stream.read_all(cut_after=cut)
                while gateway.runtime.active:
                    await asyncio.sleep(0.01)
                for event_id in {events[1][0], events[-1][0]}:
                    again = await self.post(gateway, body, Idempotency_Key=key, Last_Event_ID=event_id)
                    self.assertEqual((again.status, error_of(again.body)["code"]), (409, "resume_unavailable"))
                whole = await (await self.post(gateway, body, Idempotency_Key=key,
                                               Last_Event_ID=events[0][0])).read_all()
                self.assertEqual(whole[-1][1], "[DONE]")
        self.assertEqual(self.counting.calls, 2)

    async def test_a_finished_reply_of_several_choices_replays_them_all(self) -> None:
        gateway = await self.start()
        body = {**request(stream=True), "n": 2}
        events = await (await self.post(gateway, body, Idempotency_Key="k-n2")).read_all()
        while gateway.runtime.active:
            await asyncio.sleep(0.01)
        rest = await (await self.post(gateway, body, Idempotency_Key="k-n2", Last_Event_ID=events[0][0])).read_all()
        self.assertEqual(output_of(events[:1] + rest), output_of(events))
        self.assertEqual(output_of(rest)[1]["content"], "Echo (turn 1): " + MESSAGE)


class IdempotencyTest(ResilienceCase):
    async def test_fifty_clients_with_one_key_share_one_run(self) -> None:
        gateway = await self.start()
        posts = [self.post(gateway, request(stream=False), Idempotency_Key="k-50") for _ in range(50)]
        responses = await asyncio.wait_for(asyncio.gather(*posts), 20)
        self.assertEqual({r.status for r in responses}, {200})
        bodies = {r.body for r in responses}
        self.assertEqual(len(bodies), 1, "50 identical results")
        self.assertEqual(json.loads(bodies.pop())["choices"][0]["message"]["content"], "Echo (turn 1): " + MESSAGE)
        self.assertEqual(self.counting.calls, 1)
        self.assertEqual(sum(r.headers.get(resume.REPLAY_HEADER) == "true" for r in responses), 49)

    async def test_fifty_streams_with_one_key_share_one_run(self) -> None:
        gateway = await self.start()
        posts = [self.post(gateway, request(), x_equabot_idempotency_key="k-50s") for _ in range(50)]
        streams = await asyncio.wait_for(asyncio.gather(*posts), 20)
        results = await asyncio.wait_for(asyncio.gather(*(s.read_all() for s in streams)), 20)
        self.assertEqual({content_of(r) for r in results}, {"Echo (turn 1): " + MESSAGE})
        self.assertEqual(len({tuple(i for i, _ in r) for r in results}), 1)      # the same ids, too
        self.assertEqual(self.counting.calls, 1)

    async def test_every_spelling_of_the_key_header_names_one_key(self) -> None:
        gateway = await self.start()
        self.assertEqual(resume.KEY_HEADERS[1:], tuple(f"{prefix}idempotency-key" for prefix in HEADER_PREFIXES))
        replies = [await self.post(gateway, request(stream=False), **{name: "k-alias"})
                   for name in resume.KEY_HEADERS]
        self.assertEqual([r.status for r in replies], [200] * len(replies))
        self.assertEqual(len({r.body for r in replies}), 1)
        self.assertEqual([r.headers.get(resume.REPLAY_HEADER) for r in replies],
                         [None] + ["true"] * (len(replies) - 1))
        self.assertEqual(self.counting.calls, 1)

    async def test_another_body_under_a_used_key_is_422(self) -> None:
        gateway = await self.start()
        first = await self.post(gateway, request(stream=False), Idempotency_Key="k-body")
        self.assertEqual(first.status, 200)
        other = await self.post(gateway, request(stream=False, message="something else"), Idempotency_Key="k-body")
        self.assertEqual(other.status, 422)
        error = error_of(other.body)
        self.assertEqual((error["code"], error["type"]), ("idempotency_key_reused", "invalid_request_error"))
        # Key order and spacing do not make another body; a session header does.
        same = {"stream": False, "messages": request()["messages"], "model": "equabot"}
        self.assertEqual((await self.post(gateway, same, Idempotency_Key="k-body")).status, 200)
        moved = await self.post(gateway, request(stream=False), Idempotency_Key="k-body", x_equabot_session_key="s2")
        self.assertEqual(moved.status, 422)
        self.assertEqual(self.counting.calls, 1)
        bad = await self.post(gateway, request(stream=False), Idempotency_Key="sp ace")
        self.assertEqual((bad.status, error_of(bad.body)["code"]), (400, "invalid_idempotency_key"))

    async def test_a_bad_last_event_id_is_400_and_leaves_no_run_behind(self) -> None:
        gateway = await self.start()
        keyless = await self.post(gateway, request(), Last_Event_ID="chatcmpl-0:5")
        self.assertEqual((keyless.status, error_of(keyless.body)["code"]), (400, "invalid_last_event_id"))
        self.assertEqual(self.counting.calls, 0)                  # refused before anything ran
        for bad in ("chatcmpl-other:5", "nonsense", "chatcmpl-x:-1"):
            with self.subTest(bad):
                keyed = await self.post(gateway, request(), Idempotency_Key="k-bad-id", Last_Event_ID=bad)
                self.assertEqual((keyed.status, error_of(keyed.body)["code"]), (400, "invalid_last_event_id"))
        # A key that never ran has nothing to resume: refused, and nothing starts under it.
        self.assertEqual(self.counting.calls, 0)
        self.assertEqual(len(gateway.runtime.keys), 0)
        first = await self.post(gateway, request(), Idempotency_Key="k-bad-id")
        await first.read_all()
        for bad in ("chatcmpl-other:5", "nonsense"):
            with self.subTest(bad, after_a_run=True):
                keyed = await self.post(gateway, request(), Idempotency_Key="k-bad-id", Last_Event_ID=bad)
                self.assertEqual((keyed.status, error_of(keyed.body)["code"]), (400, "invalid_last_event_id"))
        await asyncio.wait_for(self._settled(gateway), 5)
        self.assertEqual(self.counting.calls, 1)                  # the keyed run, once, and it completed
        self.assertEqual(gateway.runtime.keys._claims, {})

    async def test_a_finished_completion_is_replayed_after_a_restart(self) -> None:
        gateway = await self.start()
        first = await self.post(gateway, request(stream=False), Idempotency_Key="k-durable",
                                x_equabot_session_key=SESSION)
        await self.stop(gateway)
        gateway = await self.start()
        again = await self.post(gateway, request(stream=False), Idempotency_Key="k-durable",
                                x_equabot_session_key=SESSION)
        self.assertEqual(again.headers.get(resume.REPLAY_HEADER), "true")
        a, b = first.json(), again.json()
        self.assertEqual((b["id"], b["created"], b["choices"], b["usage"]), (a["id"], a["created"], a["choices"], a["usage"]))
        self.assertEqual(self.counting.calls, 1)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])

    async def test_a_run_aborted_while_queued_runs_again_after_a_restart(self) -> None:
        data = config(shutdownGraceSeconds=0)
        gateway = await self.start(data)
        running = await self.post(gateway, request(), Idempotency_Key="k-running", x_equabot_session_key=SESSION)
        await running.read_all(cut_after=2)          # it goes on (keyed), holding the session's lane
        queued = asyncio.ensure_future(self.post(gateway, request(stream=False), Idempotency_Key="k-queued",
                                                 x_equabot_session_key=SESSION))
        while len(gateway.runtime.active) < 2:
            await asyncio.sleep(0.005)
        await self.stop(gateway)                     # no grace: both are aborted, one before it started
        stopped = await asyncio.wait_for(queued, 10)
        # Aborted by the gateway's stop, not by its client: 503, which clients retry.
        self.assertEqual((stopped.status, error_of(stopped.body)["type"]), (503, "server_error"))
        self.assertEqual(stopped.headers.get("retry-after"), "1")
        self.assertEqual(self.counting.calls, 1)
        gateway = await self.start(data)
        again = await self.post(gateway, request(stream=False), Idempotency_Key="k-queued",
                                x_equabot_session_key=SESSION)
        # It produced nothing: its key runs now, as it would have before the restart.
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, None), again.body)
        self.assertTrue(again.json()["choices"][0]["message"]["content"].endswith(MESSAGE))
        self.assertEqual(self.counting.calls, 2)

    async def test_a_finished_completion_is_replayed_after_its_session_was_reset_and_a_restart(self) -> None:
        gateway = await self.start()
        first = await self.post(gateway, request(stream=False), Idempotency_Key="k-reset",
                                x_equabot_session_key=SESSION)
        self.assertTrue(await gateway.runtime.store.reset("main", SESSION))
        await self.stop(gateway)
        gateway = await self.start()
        again = await self.post(gateway, request(stream=False), Idempotency_Key="k-reset",
                                x_equabot_session_key=SESSION)
        # Its turn is in the transcript the reset archived: read back from there.
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, "true"), again.body)
        self.assertEqual(again.json()["choices"], first.json()["choices"])
        self.assertEqual(self.counting.calls, 1)

    async def test_a_key_past_its_retention_runs_again(self) -> None:
        gateway = await self.start()
        await self.post(gateway, request(stream=False), Idempotency_Key="k-old")
        gateway.runtime.keys.clock = lambda: time.time() + 86_401
        again = await self.post(gateway, request(stream=False), Idempotency_Key="k-old")
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, None))
        self.assertEqual(self.counting.calls, 2)

    async def test_without_a_key_a_client_leaving_aborts_its_run(self) -> None:
        gateway = await self.start()
        stream = await self.post(gateway, request(), x_equabot_session_key=SESSION)
        await stream.read_all(cut_after=3)
        await asyncio.wait_for(self._settled(gateway), 5)
        self.assertEqual(await self.turns(gateway), ["user", "aborted"])

    async def test_with_a_key_an_unclaimed_run_completes_or_is_aborted_as_configured(self) -> None:
        gateway = await self.start()
        await self.cut(gateway, "k-keep", 3)
        await asyncio.wait_for(self._settled(gateway), 5)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])
        await self.stop(gateway)
        gateway = await self.start(config(http={"resumeGraceSeconds": 0.05, "abortUnclaimedRuns": True}))
        await self.cut(gateway, "k-drop", 3)
        await asyncio.wait_for(self._settled(gateway), 5)
        self.assertEqual(await self.turns(gateway), ["user", "assistant", "user", "aborted"])

    async def _settled(self, gateway: Gateway) -> None:
        while gateway.runtime.active or gateway.runtime.store.pending_commits:
            await asyncio.sleep(0.01)


class KeysTest(unittest.IsolatedAsyncioTestCase):
    class Store:
        def __init__(self) -> None:
            self.lines: list[dict[str, Any]] = []

        async def append_key_line(self, agent_id: str, line: dict[str, Any], at: float) -> None:
            self.lines.append(line)

    async def test_the_table_is_bounded_and_the_newest_line_of_a_key_wins(self) -> None:
        store = self.Store()
        keys = idempotency.Keys(store, max_keys=3)          # type: ignore[arg-type]
        for n in range(5):
            await keys.journal(keys.add("main", f"k{n}", "d", f"run_{n}", "s", True, None))
        self.assertEqual(len(keys), 3)
        self.assertIsNone(keys.get("main", "k0"))
        self.assertEqual(keys.get("main", "k4").run_id, "run_4")
        await keys.journal(keys.add("main", "k4", "d", "run_9", "s", True, {"model": "m"}))
        self.assertEqual((keys.get("main", "k4").run_id, keys.of_run("run_9").meta), ("run_9", {"model": "m"}))
        self.assertIsNone(keys.of_run("run_4"))
        self.assertEqual(len(store.lines), 6)
        self.assertIsNone(keys.get("other", "k4"))           # keys are per agent

    async def test_the_key_of_a_run_in_progress_outlives_the_bound(self) -> None:
        # A flood of new keys must not make a running run's key forgettable: its
        # retry would start it again instead of joining it.
        running: set[str] = {"run_0"}
        keys = idempotency.Keys(self.Store(), max_keys=3, in_progress=running)     # type: ignore[arg-type]
        for n in range(10):
            keys.add("main", f"k{n}", "d", f"run_{n}", "s", True, None)
        self.assertEqual(keys.get("main", "k0").run_id, "run_0")
        self.assertEqual(len(keys), 4)                      # the bound, and the one running
        self.assertEqual([n for n in range(10) if keys.get("main", f"k{n}")], [0, 7, 8, 9])
        running.clear()                                     # it settled: an ordinary key again
        for n in range(10, 14):
            keys.add("main", f"k{n}", "d", f"run_{n}", "s", True, None)
        self.assertEqual(len(keys), 3)
        self.assertIsNone(keys.get("main", "k0"))

    def test_long_keys_are_kept_by_digest(self) -> None:
        self.assertEqual(idempotency.stored_key("k" * 256), "k" * 256)
        self.assertRegex(idempotency.stored_key("k" * 257), r"^sha256:[0-9a-f]{64}$")


if __name__ == "__main__":
    unittest.main()
