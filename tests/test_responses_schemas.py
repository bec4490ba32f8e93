"""OpenAI's published Responses schemas and examples, as the tests of /v1/responses use them.

The validator must accept OpenAI's own documented objects (once the few
places where the documentation's examples lag behind its schemas are brought
up to date, each named below), refuse broken ones, and stay bounded on deep
input; the gateway's stream must follow the order of OpenAI's documented
streaming example.
"""

from __future__ import annotations

import copy
import json
import pathlib
import unittest
from typing import Any

from equabot_gw.conformance.jsonschema import MAX_DEPTH, Validator
from tests.support import GatewayProcess
from tests.test_responses import Client, parse_events, responses_config

SCHEMAS = Validator.openai_responses()
EXAMPLES = json.loads((pathlib.Path(__file__).parent / "data" / "openai-responses" /
                       "create-response-examples.json").read_text(encoding="utf-8"))


def published(title: str) -> str:
    return next(e["response"] for e in EXAMPLES if e["title"] == title)


def brought_up_to_date(obj: dict[str, Any]) -> dict[str, Any]:
    """A documented Response with the fields its schema gained since the example was written."""
    obj = copy.deepcopy(obj)
    if obj.get("user") is None:
        obj.pop("user", None)                           # the schema types user as a string, not null
    for item in obj["output"]:
        for part in item.get("content") or ():
            if part.get("type") == "output_text":
                part.setdefault("logprobs", [])         # required on output_text parts now
        if item["type"] == "web_search_call":
            item.setdefault("action", {"type": "search", "query": "news"})     # required now
    usage = obj.get("usage")
    if usage is None:
        obj.pop("usage", None)                          # typed as an object, not null
    else:
        details = usage.setdefault("input_tokens_details", {"cached_tokens": 0})
        details.setdefault("cache_write_tokens", 0)     # required in the details now
    return obj


def collapsed(kinds: list[str]) -> list[str]:
    """Event types with runs of the same delta type written once."""
    return [k for i, k in enumerate(kinds) if not (k.endswith(".delta") and i and kinds[i - 1] == k)]


class PublishedExamplesTest(unittest.TestCase):
    def test_documented_objects_validate(self) -> None:
        objects = [(e["title"], json.loads(e["response"])) for e in EXAMPLES if e["title"] != "Streaming"]
        self.assertGreaterEqual(len(objects), 6)
        kinds = {item["type"] for _, obj in objects for item in obj["output"]}
        self.assertLessEqual({"message", "function_call", "web_search_call", "file_search_call"}, kinds)
        for title, obj in objects:
            with self.subTest(title=title):
                self.assertEqual(SCHEMAS.errors(brought_up_to_date(obj), "Response"), [])

    def test_broken_objects_are_refused(self) -> None:
        good = brought_up_to_date(json.loads(published("Functions")))
        breakages = {
            "status": lambda o: o.update(status="done"),
            "id": lambda o: o.pop("id"),
            "output": lambda o: o["output"][0].update(type="function_cal"),
            "arguments": lambda o: o["output"][0].update(arguments={"location": "x"}),
            "usage": lambda o: o["usage"].update(output_tokens="11"),
        }
        for name, breaking in breakages.items():
            with self.subTest(name=name):
                obj = copy.deepcopy(good)
                breaking(obj)
                self.assertNotEqual(SCHEMAS.errors(obj, "Response"), [])

    def test_documented_stream_events_validate(self) -> None:
        events = parse_events(b"\n\n".join(block.encode() for block in published("Streaming").split("\n\n")
                                           if block.startswith("event:")), published=True)
        self.assertGreater(len(events), 8)
        for n, (name, event) in enumerate(events):
            event = {**event, "sequence_number": n}        # the example predates sequence_number
            if "response" in event:
                event["response"] = brought_up_to_date(event["response"])
            for key in ("part", "item"):
                if key in event:
                    event[key] = brought_up_to_date({"output": [event[key]]})["output"][0] if key == "item" \
                        else {**event[key], "logprobs": []}
            if name.endswith("output_text.delta") or name.endswith("output_text.done"):
                event.setdefault("logprobs", [])
            with self.subTest(n=n, name=name):
                self.assertEqual(name, event["type"])
                self.assertEqual(SCHEMAS.errors(event, "ResponseStreamEvent"), [])

    def test_deep_instance_is_a_problem_not_a_crash(self) -> None:
        deep: Any = "x"
        for _ in range(MAX_DEPTH * 4):
            deep = [deep]
        obj = brought_up_to_date(json.loads(published("Functions")))
        obj["metadata"] = {"k": deep}
        problems = SCHEMAS.errors(obj, "Response")
        self.assertTrue(problems)


class PublishedOrderTest(unittest.TestCase):
    def test_stream_follows_the_documented_order(self) -> None:
        documented = [name for name, _ in parse_events(b"\n\n".join(
            block.encode() for block in published("Streaming").split("\n\n") if block.startswith("event:")),
            published=True)]
        with GatewayProcess(responses_config()) as gw:
            status, _, data = Client(gw).request("POST", "/v1/responses",
                                                 {"model": "echo", "input": "hi", "stream": True})
        self.assertEqual(status, 200)
        ours = [name for name, _ in parse_events(data)]
        self.assertEqual(collapsed(ours), collapsed(documented))


if __name__ == "__main__":
    unittest.main()
