"""POST /v1/responses and its stored responses against a real gateway, with stdlib http.client.

Every Response object, every streamed event and every item list is
validated against OpenAI's published Responses schemas (the conformance
kit's copy); the stream's order is checked event by event.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import pathlib
import socket
import sys
import tempfile
import time
import unittest
from typing import Any

from equabot_gw import config
from equabot_gw.agents import transcripts
from equabot_gw.conformance.jsonschema import Validator
from equabot_gw.errors import ConfigError
from tests.support import ROOT, TOKEN, GatewayProcess, LiveGateway, base_config, error_of, running_gateway

SCHEMAS = Validator.openai_responses()
PARTIAL_THEN_FAIL = ("import sys,time; sys.stdout.write('partial words'); sys.stdout.flush(); "
                     "time.sleep(0.2); sys.stderr.write('boom'); sys.exit(3)")
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                          "required": ["location"]}}
ARGUMENTS = '{"location": "Paris, France", "unit": "celsius"}'
SLOW_DELAY_MS = 50


def responses_config(**gateway: Any) -> dict[str, Any]:
    """``base_config`` with the Responses endpoint on."""
    data = base_config(**gateway)
    data["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
    return data


def gateway_config() -> dict[str, Any]:
    data = responses_config()
    data["agents"] = {"list": [
        {"id": "main", "default": True},
        {"id": "beta", "systemPrompt": "You are beta."},
        {"id": "slow", "model": "slow/echo"},
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


def parse_events(data: bytes, *, published: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(event line, decoded data) of each block of an event stream; comments skipped. Each of
    ours has an id (``published``: OpenAI's documented examples have none)."""
    out = []
    for block in data.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
        payload = "\n".join(line[len("data: "):] for line in lines if line.startswith("data: "))
        ids = [line[len("id: "):] for line in lines if line.startswith("id: ")]
        assert len(names) == 1, block
        data = json.loads(payload)
        # Every event's id is <response id>:<its sequence_number>.
        assert published or len(ids) == 1 and ids[0].startswith("resp_") \
            and ids[0].endswith(f":{data['sequence_number']}"), block
        out.append((names[0], data))
    return out


def positions(events: list[tuple[str, dict[str, Any]]], start: int = -1) -> list[int]:
    """The sequence_numbers a stream must carry: each event moves the position by one, a
    delta by its characters (its number is its last character's)."""
    out = []
    for _, event in events:
        start += len(event["delta"]) if event["type"].endswith(".delta") else 1
        out.append(start)
    return out


class Client:
    """A few requests to one gateway process."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                *, auth: bool = True) -> tuple[int, http.client.HTTPResponse, bytes]:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=15)
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {TOKEN}"} if auth else {}),
             **(headers or {})}
        c.request(method, path, body=None if body is None else json.dumps(body), headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, r, data

    def create(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        status, r, data = self.request("POST", "/v1/responses", body, headers)
        assert status == 200, (status, data)
        assert r.getheader("content-type") == "application/json", r.getheader("content-type")
        obj = json.loads(data)
        problems = SCHEMAS.errors(obj, "Response")
        assert not problems, problems[:5]
        return obj

    def get(self, response_id: str) -> tuple[int, bytes]:
        status, _, data = self.request("GET", f"/v1/responses/{response_id}")
        return status, data


class ResponsesCase(LiveGateway, unittest.TestCase):
    @classmethod
    def gateway_data(cls) -> dict[str, Any]:
        return gateway_config()

    def setUp(self) -> None:
        self.client = Client(self.gw)

    def create(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        return self.client.create({"model": "equabot", **body}, headers)

    def stream(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        status, r, data = self.client.request("POST", "/v1/responses", {"model": "equabot", **body, "stream": True})
        self.assertEqual(status, 200, data)
        self.assertEqual(r.getheader("content-type"), "text/event-stream; charset=utf-8")
        events = parse_events(data)
        self.assertEqual([e["sequence_number"] for _, e in events], positions(events))
        for name, event in events:
            self.assertEqual(name, event["type"])
            self.assertEqual(SCHEMAS.errors(event, "ResponseStreamEvent"), [], event)
        return events

    def fails(self, body: Any, status: int, *, method: str = "POST", path: str = "/v1/responses",
              auth: bool = True) -> dict[str, Any]:
        got, r, data = self.client.request(method, path, body, auth=auth)
        self.assertEqual(got, status, data)
        self.assertEqual(r.getheader("content-type"), "application/json")
        return error_of(data)


class CreateTest(ResponsesCase):
    def test_string_input(self) -> None:
        obj = self.create({"input": "hello there"})
        self.assertTrue(obj["id"].startswith("resp_"))
        self.assertEqual((obj["object"], obj["status"], obj["model"]), ("response", "completed", "equabot"))
        self.assertEqual(obj["output_text"], "Echo (turn 1): hello there")
        [item] = obj["output"]
        self.assertEqual((item["type"], item["role"], item["status"]), ("message", "assistant", "completed"))
        self.assertEqual(item["content"][0]["type"], "output_text")
        self.assertEqual(item["content"][0]["text"], obj["output_text"])
        usage = obj["usage"]
        self.assertEqual(usage["output_tokens"], 5)
        self.assertEqual(usage["total_tokens"], usage["input_tokens"] + usage["output_tokens"])
        self.assertIsNone(obj["error"])
        self.assertIsNone(obj["incomplete_details"])

    def test_items_and_instructions(self) -> None:
        obj = self.create({"model": "equabot:beta", "instructions": "Be brief.", "metadata": {"k": "v"},
                           "input": [{"role": "developer", "content": "Answer in French."},
                                     {"role": "user", "content": [{"type": "input_text", "text": "first"},
                                                                  {"type": "input_text", "text": " part"}]}]})
        self.assertEqual(obj["output_text"], "Echo (turn 1): first part")
        self.assertEqual((obj["instructions"], obj["model"], obj["metadata"]),
                         ("Be brief.", "equabot:beta", {"k": "v"}))
        status, _, data = self.client.request("GET", f"/v1/responses/{obj['id']}/input_items?order=asc")
        self.assertEqual(status, 200)
        items = json.loads(data)
        self.assertEqual(SCHEMAS.errors(items, "ResponseItemList"), [])
        self.assertEqual([(i["role"], [p["text"] for p in i["content"]]) for i in items["data"]],
                         [("developer", ["Answer in French."]), ("user", ["first", " part"])])

    def test_earlier_conversation_in_input(self) -> None:
        # Earlier turns sent as items are the history of a new session (echo counts the
        # transcript's turns only, so this is its turn 1); the new turn follows the last assistant item.
        obj = self.create({"input": [{"role": "user", "content": "one"},
                                     {"role": "assistant", "content": "Echo (turn 1): one"},
                                     {"role": "user", "content": "two"}]})
        self.assertEqual(obj["output_text"], "Echo (turn 1): two")
        continued = self.create({"input": "three", "previous_response_id": obj["id"]})
        self.assertEqual(continued["output_text"], "Echo (turn 2): three")

    def test_reasoning_item(self) -> None:
        obj = self.create({"input": "why", "reasoning": {"effort": "low"}})
        self.assertEqual([i["type"] for i in obj["output"]], ["reasoning", "message"])
        self.assertEqual(obj["output"][0]["content"][0]["text"], "Thinking (low) about: why")
        self.assertEqual(obj["reasoning"]["effort"], "low")

    def test_function_tool_round_trip(self) -> None:
        first = self.create({"input": f"/call get_weather {ARGUMENTS}", "tools": [WEATHER]})
        [call] = first["output"]
        self.assertEqual((call["type"], call["name"], call["arguments"], call["status"]),
                         ("function_call", "get_weather", ARGUMENTS, "completed"))
        self.assertTrue(call["call_id"])
        self.assertEqual(first["output_text"], "")
        self.assertEqual(first["tools"][0]["name"], "get_weather")
        second = self.create({"previous_response_id": first["id"], "tools": [WEATHER], "input": [
            {"type": "function_call_output", "call_id": call["call_id"], "output": "18 C, sunny"}]})
        self.assertEqual(second["output_text"], "Echo (turn 2): tool get_weather returned: 18 C, sunny")
        self.assertEqual(second["previous_response_id"], first["id"])

    def test_tool_loop_sent_whole(self) -> None:
        # A stateless client resends the call and its result as items.
        obj = self.create({"store": False, "tools": [WEATHER], "input": [
            {"role": "user", "content": f"/call get_weather {ARGUMENTS}"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": ARGUMENTS},
            {"type": "function_call_output", "call_id": "call_1", "output": "rain"}]})
        self.assertEqual(obj["output_text"], "Echo (turn 1): tool get_weather returned: rain")
        self.assertEqual(self.client.get(obj["id"])[0], 404)     # store: false keeps nothing

    def test_three_turns_with_previous_response_id(self) -> None:
        ids, texts = [], []
        previous = None
        for word in ("one", "two", "three"):
            obj = self.create({"input": word, **({"previous_response_id": previous} if previous else {})})
            previous = obj["id"]
            ids.append(previous)
            texts.append(obj["output_text"])
        self.assertEqual(texts, ["Echo (turn 1): one", "Echo (turn 2): two", "Echo (turn 3): three"])
        # A fork: continuing from the first response again starts a new session whose history is
        # the conversation up to it (sent as context: echo counts its own transcript, so turn 1);
        # the original conversation goes on undisturbed, and so does the fork.
        fork = self.create({"input": "again", "previous_response_id": ids[0]})
        self.assertEqual(fork["output_text"], "Echo (turn 1): again")
        after = self.create({"input": "four", "previous_response_id": ids[2]})
        self.assertEqual(after["output_text"], "Echo (turn 4): four")
        fork_two = self.create({"input": "more", "previous_response_id": fork["id"]})
        self.assertEqual(fork_two["output_text"], "Echo (turn 2): more")

    def test_user_is_a_session(self) -> None:
        user = f"user-{self.id()[-12:]}"
        self.create({"input": "a", "user": user, "store": False})
        obj = self.create({"input": "b", "user": user, "store": False})
        self.assertEqual(obj["output_text"], "Echo (turn 2): b")
        self.assertEqual(obj["user"], user)

    def test_routing_headers_and_their_aliases(self) -> None:
        key = f"k-{self.id()[-12:]}"
        self.create({"input": "a", "store": False}, {"x-openclaw-session-key": key})
        obj = self.create({"input": "b", "store": False}, {"x-equabot-session-key": key})
        self.assertEqual(obj["output_text"], "Echo (turn 2): b")
        self.assertEqual(self.fails({"model": "equabot:nobody", "input": "x"}, 404)["code"], "model_not_found")
        got, _, data = self.client.request("POST", "/v1/responses", {"model": "equabot", "input": "x"},
                                           {"x-clawdbot-agent-id": "nobody"})
        self.assertEqual(got, 404, data)

    def test_stateless_without_store(self) -> None:
        self.create({"input": "a", "store": False})
        self.assertEqual(self.create({"input": "b", "store": False})["output_text"], "Echo (turn 1): b")


class StoredTest(ResponsesCase):
    def test_get_delete(self) -> None:
        obj = self.create({"input": "keep me"})
        status, data = self.client.get(obj["id"])
        self.assertEqual(status, 200)
        stored = json.loads(data)
        self.assertEqual(SCHEMAS.errors(stored, "Response"), [])
        self.assertEqual(stored, obj)
        status, _, data = self.client.request("DELETE", f"/v1/responses/{obj['id']}")
        self.assertEqual((status, json.loads(data)), (200, {"id": obj["id"], "object": "response", "deleted": True}))
        self.assertEqual(self.client.get(obj["id"])[0], 404)
        self.fails(None, 404, method="DELETE", path=f"/v1/responses/{obj['id']}")
        error = self.fails({"input": "x", "model": "equabot", "previous_response_id": obj["id"]}, 400)
        self.assertEqual((error["code"], error["param"]), ("previous_response_not_found", "previous_response_id"))

    def test_input_items_pages_and_refuses_bad_queries_with_400(self) -> None:
        obj = self.create({"input": [{"role": "user", "content": f"part {i}"} for i in range(3)]})
        path = f"/v1/responses/{obj['id']}/input_items"

        def page(query: str) -> dict[str, Any]:
            status, _, data = self.client.request("GET", f"{path}?{query}")
            self.assertEqual(status, 200, data)
            listed = json.loads(data)
            self.assertEqual(SCHEMAS.errors(listed, "ResponseItemList"), [])
            return listed

        first = page("limit=2&order=asc")
        self.assertEqual([i["content"][0]["text"] for i in first["data"]], ["part 0", "part 1"])
        self.assertTrue(first["has_more"])
        rest = page(f"limit=2&order=asc&after={first['last_id']}")
        self.assertEqual(([i["content"][0]["text"] for i in rest["data"]], rest["has_more"]), (["part 2"], False))
        self.assertEqual(page("")["data"][0]["content"][0]["text"], "part 2")     # newest first by default
        # Digits that are not ASCII ("²" made int() fail with a 500; "٣" was read as 3), and a
        # query of more fields than any route reads: a 400 naming what is wrong, never a 500.
        for query, param in (("limit=%C2%B2", "limit"), ("limit=%D9%A3", "limit"), ("limit=0", "limit"),
                             ("limit=101", "limit"), ("order=sideways", "order"),
                             ("&".join(f"f{i}=1" for i in range(40)), None)):
            with self.subTest(query=query[:20]):
                error = self.fails(None, 400, method="GET", path=f"{path}?{query}")
                self.assertEqual((error["code"], error["param"]), ("invalid_value", param))

    def test_unknown_and_wrong_paths(self) -> None:
        self.assertEqual(self.fails(None, 404, method="GET", path="/v1/responses/resp_nope")["param"], "response_id")
        self.fails(None, 404, method="POST", path="/v1/responses/resp_nope/cancel")
        self.fails(None, 404, method="GET", path="/v1/responses/resp_x/other")
        got, r, _ = self.client.request("POST", "/v1/responses/resp_x", {})
        self.assertEqual((got, r.getheader("allow")), (405, "DELETE, GET, HEAD"))
        self.fails(None, 405, method="PUT", path="/v1/responses")

    def test_in_progress_then_cancel(self) -> None:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=15)
        words = " ".join(f"w{i}" for i in range(200))       # 200 × 50 ms: far longer than the test
        c.request("POST", "/v1/responses", body=json.dumps({"model": "equabot:slow", "input": words, "stream": True}),
                  headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        head = b""
        while b"response.in_progress" not in head:
            head += r.read1(65536)
        created = parse_events(head.split(b"\n\n")[0])[0][1]["response"]
        status, data = self.client.get(created["id"])
        self.assertEqual(status, 200)
        in_progress = json.loads(data)
        self.assertEqual(in_progress["status"], "in_progress")
        self.assertEqual(SCHEMAS.errors(in_progress, "Response"), [])
        status, _, data = self.client.request("POST", f"/v1/responses/{created['id']}/cancel")
        self.assertEqual(status, 200, data)
        cancelled = json.loads(data)
        self.assertEqual(cancelled["status"], "cancelled")
        self.assertEqual(SCHEMAS.errors(cancelled, "Response"), [])
        rest = head + r.read()
        c.close()
        events = parse_events(rest)
        self.assertEqual([e["sequence_number"] for _, e in events], positions(events))
        self.assertEqual(events[-1][0], "response.failed")
        self.assertEqual(events[-1][1]["response"]["status"], "cancelled")
        self.assertEqual(json.loads(self.client.get(created["id"])[1])["status"], "cancelled")
        # Cancelling again answers the stored object.
        status, _, data = self.client.request("POST", f"/v1/responses/{created['id']}/cancel")
        self.assertEqual((status, json.loads(data)["status"]), (200, "cancelled"))


class DisconnectTest(ResponsesCase):
    def test_a_client_that_leaves_aborts_its_run(self) -> None:
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=15)
        words = " ".join(f"w{i}" for i in range(200))
        c.request("POST", "/v1/responses", body=json.dumps({"model": "equabot:slow", "input": words, "stream": True}),
                  headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        r = c.getresponse()
        head = b""
        while b"response.output_text.delta" not in head:
            head += r.read1(65536)
        response_id = parse_events(head.split(b"\n\n")[0])[0][1]["response"]["id"]
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        deadline = time.monotonic() + 5
        while True:     # the run is aborted at once; its partial response is stored as cancelled
            status, data = self.client.get(response_id)
            stored = json.loads(data)
            if stored["status"] != "in_progress" or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual(status, 200)
        self.assertEqual(stored["status"], "cancelled")
        self.assertEqual(SCHEMAS.errors(stored, "Response"), [])
        text = stored["output"][0]["content"][0]["text"]
        self.assertTrue(text and f"Echo (turn 1): {words}".startswith(text), text)
        self.assertLess(len(text), len(words))


class StreamTest(ResponsesCase):
    def test_text_events_in_order(self) -> None:
        events = self.stream({"input": "three little words"})
        kinds = [name for name, _ in events]
        self.assertEqual(kinds, ["response.created", "response.in_progress", "response.output_item.added",
                                 "response.content_part.added", *["response.output_text.delta"] * 6,
                                 "response.output_text.done", "response.content_part.done",
                                 "response.output_item.done", "response.completed"])
        created, final = events[0][1]["response"], events[-1][1]["response"]
        self.assertEqual((created["status"], created["output"]), ("in_progress", []))
        self.assertEqual(final["status"], "completed")
        self.assertEqual(created["id"], final["id"])
        deltas = "".join(e["delta"] for name, e in events if name == "response.output_text.delta")
        self.assertEqual(deltas, "Echo (turn 1): three little words")
        self.assertEqual(events[-4][1]["text"], deltas)
        self.assertEqual(final["output_text"], deltas)
        item_ids = {e.get("item_id") or e["item"]["id"] for name, e in events[2:-1]}
        self.assertEqual(item_ids, {final["output"][0]["id"]})
        status, data = self.client.get(final["id"])
        self.assertEqual((status, json.loads(data)), (200, final))

    def test_function_call_events(self) -> None:
        events = self.stream({"input": f"/call get_weather {ARGUMENTS}", "tools": [WEATHER]})
        kinds = [name for name, _ in events]
        n = kinds.count("response.function_call_arguments.delta")
        self.assertGreater(n, 1)
        self.assertEqual(kinds, ["response.created", "response.in_progress", "response.output_item.added",
                                 *["response.function_call_arguments.delta"] * n,
                                 "response.function_call_arguments.done", "response.output_item.done",
                                 "response.completed"])
        added = events[2][1]["item"]
        self.assertEqual((added["type"], added["name"], added["status"]),
                         ("function_call", "get_weather", "in_progress"))
        joined = "".join(e["delta"] for name, e in events if name == "response.function_call_arguments.delta")
        self.assertEqual(joined, ARGUMENTS)
        self.assertEqual(events[-3][1]["arguments"], ARGUMENTS)
        done = events[-2][1]["item"]
        self.assertEqual((done["call_id"], done["arguments"], done["status"]),
                         (added["call_id"], ARGUMENTS, "completed"))
        self.assertEqual(events[-1][1]["response"]["output"], [done])

    def test_reasoning_then_text(self) -> None:
        events = self.stream({"input": "why", "reasoning": {"effort": "high"}})
        kinds = [name for name, _ in events]
        first_text = kinds.index("response.output_text.delta")
        self.assertLess(kinds.index("response.reasoning_text.delta"), first_text)
        # The reasoning item is done before the message item is added.
        self.assertLess(kinds.index("response.reasoning_text.done"), kinds.index("response.output_item.added", 3))
        final = events[-1][1]["response"]
        self.assertEqual([i["type"] for i in final["output"]], ["reasoning", "message"])
        self.assertEqual(final["output"][0]["content"][0]["text"], "Thinking (high) about: why")

    def test_failure_before_output_is_a_status(self) -> None:
        got, r, data = self.client.request("POST", "/v1/responses",
                                           {"model": "equabot:broken", "input": "x", "stream": True})
        self.assertEqual(got, 502, data)
        self.assertEqual(r.getheader("content-type"), "application/json")
        error_of(data)

    def test_failure_after_start_is_response_failed(self) -> None:
        events = self.stream({"model": "equabot:partial", "input": "x"})
        kinds = [name for name, _ in events]
        self.assertEqual(kinds[0], "response.created")
        self.assertIn("response.output_text.delta", kinds)
        self.assertEqual(kinds[-1], "response.failed")
        final = events[-1][1]["response"]
        self.assertEqual(final["status"], "failed")
        self.assertEqual(final["error"]["code"], "server_error")
        self.assertIn("boom", final["error"]["message"])      # the command's stderr tail
        self.assertEqual(final["output"][0]["content"][0]["text"], "partial words")
        self.assertEqual(final["output"][0]["status"], "incomplete")
        # The failed response is stored as failed.
        self.assertEqual(json.loads(self.client.get(final["id"])[1])["status"], "failed")

    def test_max_output_tokens_incomplete(self) -> None:
        events = self.stream({"input": "many words " * 20, "max_output_tokens": 16})
        self.assertEqual(events[-1][0], "response.incomplete")
        final = events[-1][1]["response"]
        self.assertEqual((final["status"], final["incomplete_details"]),
                         ("incomplete", {"reason": "max_output_tokens"}))


class RefusalTest(ResponsesCase):
    def test_bad_requests(self) -> None:
        cases = [
            ({"model": "equabot", "input": "x", "bogus": 1}, "bogus", "unknown_parameter"),
            ({"model": "equabot"}, "input", "missing_required_parameter"),
            ({"input": "x"}, "model", "missing_required_parameter"),
            ({"model": "equabot", "input": 5}, "input", "invalid_type"),
            ({"model": "equabot", "input": []}, "input", "invalid_value"),
            ({"model": "equabot", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type",
             "unsupported_parameter"),
            ({"model": "equabot", "input": "x", "text": {"format": {"type": "json_schema", "name": "s",
                                                                    "schema": {"type": "object"}}}},
             "text.format", "unsupported_parameter"),       # the echo model cannot honour a schema
            ({"model": "equabot", "input": [{"type": "web_search_call", "id": "x"}]}, "input[0].type",
             "unsupported_parameter"),
            ({"model": "equabot", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
            ({"model": "equabot", "input": "x", "previous_response_id": "resp_unknown"}, "previous_response_id",
             "previous_response_not_found"),
            ({"model": "equabot", "input": "x", "temperature": 3}, "temperature", "invalid_value"),
            ({"model": "equabot", "input": [{"role": "user", "content": "x"},
                                            {"role": "assistant", "content": "prefill"}]}, "input",
             "unsupported_parameter"),
            # A JSON array or object where a type name belongs is a bad value, not a crash.
            ({"model": "equabot", "input": [{"type": [], "role": "user", "content": "a"}]}, "input[0].type",
             "invalid_value"),
            ({"model": "equabot", "input": "a", "tools": [{"type": {}}]}, "tools[0].type", "invalid_value"),
            ({"model": "equabot", "input": "a", "include": [[]]}, "include[0]", "invalid_value"),
        ]
        for body, param, code in cases:
            with self.subTest(param=param, code=code):
                error = self.fails(body, 400)
                self.assertEqual((error["param"], error["code"]), (param, code), error)

    def test_auth_and_json(self) -> None:
        self.fails({"model": "equabot", "input": "x"}, 401, auth=False)
        got, _, data = self.client.request("GET", "/v1/responses/resp_x", auth=False)
        self.assertEqual(got, 401)
        c = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=10)
        c.request("POST", "/v1/responses", body=b"{nope", headers={"Authorization": f"Bearer {TOKEN}"})
        r = c.getresponse()
        self.assertEqual(r.status, 400)
        error_of(r.read())
        c.close()


class DisabledTest(unittest.TestCase):
    def test_config_keys(self) -> None:
        default = config.from_data({}, env={}).gateway.http.endpoints.responses
        self.assertEqual((default.enabled, default.retention_days), (False, 30.0))
        example, _ = config.load(str(ROOT / "config.example.json5"), env={})
        self.assertTrue(example.gateway.http.endpoints.responses.enabled)
        with self.assertRaises(ConfigError):
            config.from_data({"gateway": {"http": {"endpoints": {"responses": {"enabled": "yes"}}}}}, env={})

    def test_off_by_default(self) -> None:
        with GatewayProcess(base_config()) as gw:
            status, _, data = Client(gw).request("POST", "/v1/responses", {"model": "x", "input": "x"})
            self.assertEqual(status, 404)
            self.assertIn("gateway.http.endpoints.responses.enabled", error_of(data)["message"])
            self.assertEqual(Client(gw).get("resp_x")[0], 404)


async def call(gw: Any, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """One request to an in-process gateway: (status, decoded body)."""
    data = b"" if body is None else json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(gw.host, gw.server.port)
    writer.write((f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Type: application/json\r\nConnection: close\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


class EmbeddedRestartTest(unittest.IsolatedAsyncioTestCase):
    async def test_the_store_reopens_with_the_gateway(self) -> None:
        async with running_gateway(responses_config()) as gw:
            status, first = await call(gw, "POST", "/v1/responses", {"model": "equabot", "input": "one"})
            self.assertEqual(status, 200)
            await gw.stop()
            await gw.start()            # an embedded gateway restarted: its parts are built afresh
            self.assertEqual(await call(gw, "GET", f"/v1/responses/{first['id']}"), (200, first))
            status, second = await call(gw, "POST", "/v1/responses", {"model": "equabot", "input": "two",
                                                                      "previous_response_id": first["id"]})
            self.assertEqual((status, second["output_text"]), (200, "Echo (turn 2): two"))


class ExpiryTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_conversation_whose_responses_all_expired_loses_its_own_session(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            async with running_gateway(responses_config(), state) as gw:
                created = []
                for body in ({"input": "one"}, {"input": "two", "previous": 0}, {"input": "mine", "user": "alice"}):
                    previous = {"previous_response_id": created[body.pop("previous")]} if "previous" in body else {}
                    status, obj = await call(gw, "POST", "/v1/responses", {"model": "equabot", **body, **previous})
                    self.assertEqual(status, 200, obj)
                    created.append(obj["id"])
                own, continued, named = (gw.responses.store.find(rid).session_key for rid in created)
                self.assertEqual(continued, own)
                await gw.stop()
                for log in (state / "responses").iterdir():     # written 40 days ago, as far as names go
                    log.rename(log.with_name(transcripts.journal_name(int(time.time() // 86400) - 40)))
                await gw.start()
                self.assertEqual(len(gw.responses.store), 0)
                for _ in range(200):
                    if gw.runtime.store.session_info("main", own) is None:
                        break
                    await asyncio.sleep(0.01)
                self.assertIsNone(gw.runtime.store.session_info("main", own))
                self.assertIsNotNone(gw.runtime.store.session_info("main", named))     # its user's


class RestartTest(unittest.TestCase):
    def test_retrieve_and_continue_after_restart(self) -> None:
        gw = GatewayProcess(responses_config()).start()
        self.addCleanup(gw.tmp.cleanup)
        try:
            client = Client(gw)
            first = client.create({"model": "equabot", "input": "before"})
            gone = client.create({"model": "equabot", "input": "deleted"})
            self.assertEqual(client.request("DELETE", f"/v1/responses/{gone['id']}")[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)
        gw.start()
        try:
            status, data = client.get(first["id"])
            self.assertEqual((status, json.loads(data)), (200, first))
            self.assertEqual(client.get(gone["id"])[0], 404)
            second = client.create({"model": "equabot", "input": "after", "previous_response_id": first["id"]})
            self.assertEqual(second["output_text"], "Echo (turn 2): after")
            self.assertNotEqual(second["id"], first["id"])
        finally:
            self.assertEqual(gw.stop(), 0)


if __name__ == "__main__":
    unittest.main()
