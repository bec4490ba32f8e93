"""Never lose or repeat a reply on ``POST /v1/responses``: ``Idempotency-Key`` and resumable streams.

The chat-completions door's guarantees (``tests/test_resilience.py``) on the
Responses door, through the same mechanism: a raw-socket client cuts its
stream after N events and resumes it (the same POST with ``Last-Event-ID``,
or ``GET /v1/responses/{id}?stream=true&starting_after=<n>``); the text before
and after the cut is the whole reply, the provider was asked once (a
counting provider), the transcript holds one turn and the store one
response — also across a gateway restart. A stream rebuilt from the stored
Response carries the same ids and sequence_numbers as the live one. Twenty
clients sending one key share one run; another body under a used key is
422; a run that failed before any output runs again. Every event is checked
against OpenAI's Responses schemas.
"""

from __future__ import annotations

import asyncio
import json
import unittest
from typing import Any

from equabot_gw.conformance.jsonschema import Validator
from equabot_gw.gateway import resume
from equabot_gw.gateway.app import Gateway
from tests.resume_client import SSEStream
from tests.support import error_of
from tests.test_resilience import MESSAGE, SESSION, ResilienceCase, config as chat_config, seq_of

SCHEMAS = Validator.openai_responses()
REPLY = "Echo (turn 1): " + MESSAGE


def config(**gateway: Any) -> dict[str, Any]:
    data = chat_config(**gateway)
    data["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
    data["agents"]["list"] = [{"id": "main", "default": True}, {"id": "broken", "model": "failing/x"}]
    data["models"]["providers"]["failing"] = {"api": "command", "command": ["/bin/sh", "-c", "exit 2"]}
    return data


def request(stream: bool = True, message: str = MESSAGE, **fields: Any) -> dict[str, Any]:
    return {"model": "equabot", "input": message, "stream": stream, **fields}


def text_of(events: list[tuple[str | None, Any]]) -> str:
    return "".join(data["delta"] for _, data in events if data["type"] == "response.output_text.delta")


def layout(events: list[tuple[str | None, Any]]) -> tuple[list[Any], dict[int, str]]:
    """What a stream guarantees whoever renders it: its events but deltas (ids and data), and
    the character at each position of its deltas (deltas may be cut differently)."""
    others = [(i, d) for i, d in events if not d["type"].endswith(".delta")]
    chars = {}
    for _, data in events:
        if data["type"].endswith(".delta"):
            end = data["sequence_number"]
            for n, char in enumerate(data["delta"]):
                chars[end - len(data["delta"]) + 1 + n] = char
    return others, chars


def positions(events: list[tuple[str | None, Any]], start: int = -1) -> list[int]:
    """The numbers the events must carry after position ``start``: one per event, a delta's
    the number of its last character."""
    out = []
    for _, data in events:
        start += len(data["delta"]) if data["type"].endswith(".delta") else 1
        out.append(start)
    return out


class ResponsesResilienceCase(ResilienceCase):
    async def start(self, data: dict[str, Any] | None = None) -> Gateway:
        return await super().start(data or config())

    async def post(self, gateway: Gateway, body: dict[str, Any], **headers: str) -> SSEStream:
        return await SSEStream.open(gateway.server.port, body, {k.replace("_", "-"): v for k, v in headers.items()},
                                    path="/v1/responses")

    async def get(self, gateway: Gateway, path: str, **headers: str) -> SSEStream:
        return await SSEStream.open(gateway.server.port, None, {k.replace("_", "-"): v for k, v in headers.items()},
                                    method="GET", path=path)

    def valid(self, events: list[tuple[str | None, Any]], start: int = -1) -> list[tuple[str | None, Any]]:
        """``events`` after they were checked: schemas, ids, and positions from ``start`` on."""
        for event_id, data in events:
            self.assertEqual(SCHEMAS.errors(data, "ResponseStreamEvent"), [], data)
            self.assertEqual(seq_of(event_id), data["sequence_number"])
            self.assertTrue(event_id.startswith("resp_"), event_id)
        self.assertEqual([data["sequence_number"] for _, data in events], positions(events, start))
        return events

    async def cut(self, gateway: Gateway, key: str, after: int) -> list[tuple[str | None, Any]]:
        stream = await self.post(gateway, request(), Idempotency_Key=key, x_equabot_session_key=SESSION)
        self.assertEqual(stream.status, 200)
        events = await stream.read_all(cut_after=after)
        self.assertEqual(len(events), after)
        return self.valid(events)

    async def stored_in_session(self, gateway: Gateway, response_id: str) -> int:
        entry = gateway.responses.store.find(response_id)
        self.assertIsNotNone(entry)
        return gateway.responses.store.responses_in(entry.session_key)

    async def _settled(self, gateway: Gateway) -> None:
        while gateway.runtime.active or gateway.runtime.store.pending_commits or gateway.responses._inflight:
            await asyncio.sleep(0.01)

    async def whole(self, stream: SSEStream, start: int = -1) -> list[tuple[str | None, Any]]:
        events = await asyncio.wait_for(stream.read_all(), 10)
        self.assertEqual(events[-1][1]["type"], "response.completed")
        return self.valid(events, start)


class ResumeTest(ResponsesResilienceCase):
    async def test_a_cut_stream_resumed_with_last_event_id_is_the_whole_reply_of_one_run(self) -> None:
        gateway = await self.start()
        before = await self.cut(gateway, "r-cut", 7)
        response_id = before[0][1]["response"]["id"]
        again = await self.post(gateway, request(), Idempotency_Key="r-cut", x_equabot_session_key=SESSION,
                                Last_Event_ID=before[-1][0])
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, "true"))
        after = await self.whole(again, before[-1][1]["sequence_number"])
        self.assertEqual(text_of(before) + text_of(after), REPLY)
        self.assertEqual(after[-1][1]["response"]["id"], response_id)
        self.assertEqual(after[-1][1]["response"]["output_text"], REPLY)
        self.assertEqual(self.counting.calls, 1)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])
        self.assertEqual(await self.stored_in_session(gateway, response_id), 1)

    async def test_get_with_starting_after_resumes_live_then_from_the_stored_response_alike(self) -> None:
        gateway = await self.start()
        before = await self.cut(gateway, "r-get", 6)
        response_id = before[0][1]["response"]["id"]
        seq = before[-1][1]["sequence_number"]
        path = f"/v1/responses/{response_id}?stream=true&starting_after={seq}"
        live = await self.get(gateway, path)
        self.assertEqual((live.status, live.headers.get(resume.REPLAY_HEADER)), (200, None))
        live_events = await self.whole(live, seq)
        self.assertEqual(text_of(before) + text_of(live_events), REPLY)
        # Once stored, the same GET is rebuilt from the stored Response: the same events.
        self.assertIsNone(gateway.responses._inflight.get(response_id))
        rebuilt = await self.whole(await self.get(gateway, path), seq)
        self.assertEqual(layout(rebuilt), layout(live_events))
        self.assertEqual(rebuilt[-1][1]["response"], live_events[-1][1]["response"])
        # From a position inside a delta: the rest of that delta, then on.
        full = await self.whole(await self.get(gateway, f"/v1/responses/{response_id}?stream=true"))
        self.assertEqual(full[0][1]["type"], "response.created")
        self.assertEqual(text_of(full), REPLY)
        delta = next(d for _, d in full if d["type"] == "response.output_text.delta" and len(d["delta"]) >= 3)
        inside = delta["sequence_number"] - 2
        middle = await self.whole(await self.get(gateway, f"/v1/responses/{response_id}?stream=true"
                                                 f"&starting_after={inside}"), inside)
        self.assertEqual(middle[0][1]["delta"], delta["delta"][-2:])
        head = [e for e in full if e[1]["sequence_number"] < delta["sequence_number"]]
        self.assertEqual(text_of(head) + delta["delta"][:-2] + text_of(middle), REPLY)
        self.assertEqual(self.counting.calls, 1)

    async def test_a_resume_after_a_restart_lines_up_with_the_live_stream(self) -> None:
        gateway = await self.start()
        live = await self.whole(await self.post(gateway, request(), Idempotency_Key="r-whole",
                                                x_equabot_session_key="whole"))
        before = await self.cut(gateway, "r-restart", 5)
        response_id = before[0][1]["response"]["id"]
        await self.stop(gateway)            # the keyed run goes on and is recorded before the gateway stops
        gateway = await self.start()
        again = await self.post(gateway, request(), Idempotency_Key="r-restart", x_equabot_session_key=SESSION,
                                Last_Event_ID=before[-1][0])
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (200, "true"))
        after = await self.whole(again, before[-1][1]["sequence_number"])
        self.assertEqual(text_of(before) + text_of(after), REPLY)
        by_get = await self.whole(await self.get(
            gateway, f"/v1/responses/{response_id}?stream=true&starting_after={before[-1][1]['sequence_number']}"),
            before[-1][1]["sequence_number"])
        self.assertEqual(by_get, after)
        # A whole stream replayed after the restart is the live one, position for position.
        replay = await self.whole(await self.post(gateway, request(), Idempotency_Key="r-whole",
                                                  x_equabot_session_key="whole"))
        self.assertEqual(layout(replay), layout(live))
        self.assertGreater(len(live), len(replay))          # its text in one delta, the live one's in many
        self.assertEqual(self.counting.calls, 2)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])
        self.assertEqual(await self.stored_in_session(gateway, response_id), 1)

    async def test_bad_resumes_are_refused(self) -> None:
        gateway = await self.start()
        keyless = await self.post(gateway, request(), Last_Event_ID="resp_0:5")
        self.assertEqual((keyless.status, error_of(keyless.body)["code"]), (400, "invalid_last_event_id"))
        self.assertEqual(self.counting.calls, 0)
        # A key that never ran has nothing to resume: refused, and nothing starts under it.
        fresh = await self.post(gateway, request(), Idempotency_Key="r-bad", Last_Event_ID="resp_0:5")
        self.assertEqual((fresh.status, error_of(fresh.body)["code"]), (400, "invalid_last_event_id"))
        self.assertEqual((self.counting.calls, len(gateway.runtime.keys)), (0, 0))
        first = await self.whole(await self.post(gateway, request(), Idempotency_Key="r-bad"))
        for bad in ("resp_other:5", "nonsense", f"{first[0][0].rpartition(':')[0]}:-1"):
            with self.subTest(bad):
                keyed = await self.post(gateway, request(), Idempotency_Key="r-bad", Last_Event_ID=bad)
                self.assertEqual((keyed.status, error_of(keyed.body)["code"]), (400, "invalid_last_event_id"))
        missing = await self.get(gateway, "/v1/responses/resp_00ff?stream=true")
        self.assertEqual((missing.status, error_of(missing.body)["code"]), (404, "not_found"))
        response_id = first[0][1]["response"]["id"]
        for query, param in (("stream=true&starting_after=x", "starting_after"), ("stream=yes", "stream")):
            bad = await self.get(gateway, f"/v1/responses/{response_id}?{query}")
            self.assertEqual((bad.status, error_of(bad.body)["param"]), (400, param))
        self.assertEqual(self.counting.calls, 1)
        self.assertEqual(gateway.runtime.keys._claims, {})


class IdempotencyTest(ResponsesResilienceCase):
    async def test_a_finished_response_is_replayed_and_stored_once_also_after_a_restart(self) -> None:
        gateway = await self.start()
        first = await self.post(gateway, request(stream=False), Idempotency_Key="r-once",
                                x_equabot_session_key=SESSION)
        self.assertEqual((first.status, first.headers.get(resume.REPLAY_HEADER)), (200, None))
        a = first.json()
        self.assertEqual(SCHEMAS.errors(a, "Response"), [])
        again = await self.post(gateway, request(stream=False), Idempotency_Key="r-once",
                                x_equabot_session_key=SESSION)
        self.assertEqual(again.headers.get(resume.REPLAY_HEADER), "true")
        self.assertEqual(again.json(), a)
        await self.stop(gateway)
        gateway = await self.start()
        later = await self.post(gateway, request(stream=False), Idempotency_Key="r-once",
                                x_equabot_session_key=SESSION)
        self.assertEqual(later.headers.get(resume.REPLAY_HEADER), "true")
        b = later.json()
        self.assertEqual((b["id"], b["created_at"], b["output"], b["usage"]),
                         (a["id"], a["created_at"], a["output"], a["usage"]))
        self.assertEqual(self.counting.calls, 1)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])
        self.assertEqual(await self.stored_in_session(gateway, a["id"]), 1)
        # The replayed id continues the conversation as the first answer's did: turn 2, and a
        # keyed continuation repeated is that turn again, not a fork of the conversation.
        follow = request(stream=False, message="next", previous_response_id=a["id"])
        turn_2 = await self.post(gateway, follow, Idempotency_Key="r-next", x_equabot_session_key=SESSION)
        self.assertEqual((turn_2.status, turn_2.json()["output_text"]), (200, "Echo (turn 2): next"))
        repeat = await self.post(gateway, follow, Idempotency_Key="r-next", x_equabot_session_key=SESSION)
        self.assertEqual((repeat.headers.get(resume.REPLAY_HEADER), repeat.json()), ("true", turn_2.json()))
        self.assertEqual(self.counting.calls, 2)
        self.assertEqual(await self.turns(gateway), ["user", "assistant", "user", "assistant"])
        self.assertEqual(await self.stored_in_session(gateway, a["id"]), 2)

    async def test_a_replay_of_a_response_not_stored_is_made_from_the_run(self) -> None:
        gateway = await self.start()
        body = request(stream=False, store=False)
        first = (await self.post(gateway, body, Idempotency_Key="r-nostore")).json()
        live = await self.whole(await self.post(gateway, request(store=False), Idempotency_Key="r-nostore-s"))
        await self.stop(gateway)
        gateway = await self.start()
        again = await self.post(gateway, body, Idempotency_Key="r-nostore")
        b = again.json()
        self.assertEqual((again.headers.get(resume.REPLAY_HEADER), b["id"], b["created_at"], b["output"], b["usage"]),
                         ("true", first["id"], first["created_at"], first["output"], first["usage"]))
        replay = await self.whole(await self.post(gateway, request(store=False), Idempotency_Key="r-nostore-s"))
        others, chars = layout(replay)
        self.assertEqual(chars, layout(live)[1])
        self.assertEqual([(i, d["type"]) for i, d in others], [(i, d["type"]) for i, d in layout(live)[0]])
        a, b = live[-1][1]["response"], replay[-1][1]["response"]
        self.assertEqual((b["id"], b["created_at"], b["output"], b["usage"]),
                         (a["id"], a["created_at"], a["output"], a["usage"]))
        self.assertIsNone(gateway.responses.store.find(a["id"]))
        self.assertEqual(self.counting.calls, 2)

    async def test_another_body_under_a_used_key_is_422(self) -> None:
        gateway = await self.start()
        first = await self.post(gateway, request(stream=False), Idempotency_Key="r-body")
        self.assertEqual(first.status, 200)
        other = await self.post(gateway, request(stream=False, message="something else"), Idempotency_Key="r-body")
        error = error_of(other.body)
        self.assertEqual((other.status, error["code"], error["type"]),
                         (422, "idempotency_key_reused", "invalid_request_error"))
        same = {"stream": False, "input": MESSAGE, "model": "equabot"}      # another order is the same body
        self.assertEqual((await self.post(gateway, same, x_equabot_idempotency_key="r-body")).status, 200)
        moved = await self.post(gateway, request(stream=False), Idempotency_Key="r-body", x_equabot_session_key="s2")
        self.assertEqual(moved.status, 422)
        bad = await self.post(gateway, request(stream=False), Idempotency_Key="sp ace")
        self.assertEqual((bad.status, error_of(bad.body)["code"]), (400, "invalid_idempotency_key"))
        self.assertEqual(self.counting.calls, 1)

    async def test_twenty_clients_with_one_key_share_one_run(self) -> None:
        gateway = await self.start()
        posts = [self.post(gateway, request(stream=False), Idempotency_Key="r-20") for _ in range(20)]
        responses = await asyncio.wait_for(asyncio.gather(*posts), 20)
        self.assertEqual({r.status for r in responses}, {200})
        bodies = {r.body for r in responses}
        self.assertEqual(len(bodies), 1, "20 identical results")
        self.assertEqual(json.loads(bodies.pop())["output_text"], REPLY)
        self.assertEqual(sum(r.headers.get(resume.REPLAY_HEADER) == "true" for r in responses), 19)
        streams = await asyncio.wait_for(asyncio.gather(
            *(self.post(gateway, request(), Idempotency_Key="r-20s") for _ in range(20))), 20)
        results = await asyncio.wait_for(asyncio.gather(*(self.whole(s) for s in streams)), 20)
        self.assertEqual({text_of(r) for r in results}, {REPLY})
        self.assertEqual(len({json.dumps(r) for r in results}), 1)           # the same events, ids, objects
        self.assertEqual(self.counting.calls, 2)

    async def test_a_run_that_failed_before_any_output_runs_again(self) -> None:
        gateway = await self.start()
        body = request(stream=False, model="equabot:broken")
        first = await self.post(gateway, body, Idempotency_Key="r-fail")
        self.assertGreaterEqual(first.status, 500)
        run_1 = gateway.runtime.keys.get("broken", "r-fail").run_id
        again = await self.post(gateway, body, Idempotency_Key="r-fail")
        self.assertEqual((again.status, again.headers.get(resume.REPLAY_HEADER)), (first.status, None))
        self.assertNotEqual(gateway.runtime.keys.get("broken", "r-fail").run_id, run_1)     # it ran again

    async def test_a_keyed_client_that_leaves_does_not_stop_its_run(self) -> None:
        gateway = await self.start()
        before = await self.cut(gateway, "r-leave", 4)
        await asyncio.wait_for(self._settled(gateway), 5)
        stored = await gateway.responses.store.read(before[0][1]["response"]["id"])
        self.assertEqual((stored[0]["status"], stored[0]["output_text"]), ("completed", REPLY))
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])
        self.assertEqual(gateway.runtime.keys._claims, {})

    async def test_an_unclaimed_keyed_run_is_aborted_when_so_configured(self) -> None:
        gateway = await self.start(config(http={"resumeGraceSeconds": 0.05, "abortUnclaimedRuns": True}))
        before = await self.cut(gateway, "r-drop", 5)
        await asyncio.wait_for(self._settled(gateway), 5)
        self.assertEqual(await self.turns(gateway), ["user", "aborted"])
        stored = await gateway.responses.store.read(before[0][1]["response"]["id"])
        self.assertEqual(stored[0]["status"], "cancelled")
        self.assertTrue(REPLY.startswith(stored[0]["output_text"]))

    async def test_a_reader_of_another_clients_stream_leaving_does_not_stop_it(self) -> None:
        gateway = await self.start()
        owner = await self.post(gateway, request(), x_equabot_session_key=SESSION)        # no key
        events = []
        async for event in owner.events():
            events.append(event)
            if len(events) == 2:
                break
        response_id = events[0][1]["response"]["id"]
        reader = await self.get(gateway, f"/v1/responses/{response_id}?stream=true&starting_after=1")
        self.assertEqual(reader.status, 200)
        await reader.read_all(cut_after=3)
        rest = await asyncio.wait_for(owner.read_all(), 10)
        self.assertEqual(self.valid(events + rest)[-1][1]["type"], "response.completed")
        self.assertEqual(text_of(rest), REPLY)
        self.assertEqual(await self.turns(gateway), ["user", "assistant"])


if __name__ == "__main__":
    unittest.main()
