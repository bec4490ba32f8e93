"""The Responses API of the conformance tests' fake server: correct, but for the faults it is told.

``FakeResponses`` answers ``/v1/responses`` (create, stream, previous_response_id,
GET, DELETE) as an echo model would, in OpenAI's shapes, written here
independently of the gateway's own code; the faults named ``resp-*`` break
one thing each (``BROKEN`` lists them with the check that must fail).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

CREATED = 1_700_000_000
PATH = "/v1/responses"

# (fault, the check that must fail, its exact reason)
BROKEN: tuple[tuple[str, str, str], ...] = (
    ("resp-500", "responses.enabled", "POST /v1/responses answered 500, not 200"),
    ("resp-missing-created-at", "responses.shape",
     "the object does not match OpenAI's Response schema: /created_at: required property is missing"),
    ("resp-seq-back", "responses.stream", "event 3 has sequence_number 2, not above the previous one (2)"),
    ("resp-previous-ignored", "responses.previous",
     "the two responses answered turns 1 and 1, not 1 and 2: previous_response_id did not carry the "
     "conversation on"),
    ("resp-not-deleted", "responses.retrieve", "GET after DELETE answered 200, not 404"),
    ("resp-call-args-wrong", "responses.tools",
     "the output does not hold one function_call of the tool with the exact arguments"),
    ("resp-unknown-accepted", "responses.errors", "an unknown field answered 200, not 400"),
    ("resp-resume-from-start", "resume.responses", "an event at or before starting_after=5 was sent again"),
)
KNOWN = frozenset({"model", "input", "instructions", "tools", "stream", "store", "previous_response_id"})


class FakeResponses:
    """``/v1/responses`` for one fake server; ``broken(name)`` says which faults are on."""

    def __init__(self, broken: Callable[[str], bool]) -> None:
        self.broken = broken
        self.stored: dict[str, tuple[dict[str, Any], int]] = {}     # id -> (object, turn)
        self.requests: dict[str, dict[str, Any]] = {}               # id -> its request, to stream it again
        self.ids = itertools.count(1)

    def route(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) of a request under /v1/responses (auth already checked)."""
        if path == PATH and method == "POST":
            if self.broken("resp-500"):
                return _error(500, "internal error")
            return self._create(json.loads(body))
        response_id, _, query = path[len(PATH) + 1:].partition("?")
        if method == "GET" and response_id in self.stored and query.startswith("stream=true"):
            after = int(query.rpartition("starting_after=")[2]) if "starting_after=" in query else -1
            if self.broken("resp-resume-from-start"):
                after = -1
            obj = self.stored[response_id][0]
            return 200, "text/event-stream", self._events(self.requests[response_id], obj, after)
        if method == "GET" and response_id in self.stored:
            return 200, "application/json", json.dumps(self.stored[response_id][0]).encode()
        if method == "DELETE" and response_id in self.stored:
            if not self.broken("resp-not-deleted"):
                del self.stored[response_id]
            return 200, "application/json", json.dumps({"id": response_id, "object": "response",
                                                        "deleted": True}).encode()
        return _error(404, f"Response with id {response_id!r} not found.")

    def _create(self, request: dict[str, Any]) -> tuple[int, str, bytes]:
        unknown = sorted(set(request) - KNOWN)
        if unknown and not self.broken("resp-unknown-accepted"):
            return _error(400, f"Unknown parameter: {unknown[0]!r}.", param=unknown[0])
        turn = 1
        previous = request.get("previous_response_id")
        if previous is not None:
            if previous not in self.stored:
                return _error(400, "Previous response not found.", param="previous_response_id")
            turn = self.stored[previous][1] + (0 if self.broken("resp-previous-ignored") else 1)
        response_id = f"resp_fake{next(self.ids)}"
        items = request["input"] if isinstance(request["input"], list) else \
            [{"role": "user", "content": request["input"]}]
        last = items[-1]
        offered = {t["name"] for t in request.get("tools") or ()}
        asked = re.fullmatch(r"/call (\S+) (\{.*\})", last.get("content") or "") if "content" in last else None
        if asked and asked.group(1) in offered:
            arguments = asked.group(2) + (" " if self.broken("resp-call-args-wrong") else "")
            output = [{"id": f"fc_{response_id}", "type": "function_call", "status": "completed",
                       "call_id": f"call_{response_id}", "name": asked.group(1), "arguments": arguments}]
        else:
            if last.get("type") == "function_call_output":
                name = next(i["name"] for i in items if i.get("type") == "function_call")
                said = f"tool {name} returned: {last['output']}"
            else:
                said = last["content"]
            output = [_message(f"msg_{response_id}", f"Echo (turn {turn}): {said}", "completed")]
        obj = _response(response_id, request, "completed", output)
        if self.broken("resp-missing-created-at"):
            del obj["created_at"]
        if request.get("store", True):
            self.stored[response_id] = (obj, turn)
            self.requests[response_id] = request
        if not request.get("stream"):
            return 200, "application/json", json.dumps(obj).encode()
        return 200, "text/event-stream", self._events(request, obj)

    def _events(self, request: dict[str, Any], obj: dict[str, Any], after: int = -1) -> bytes:
        item = obj["output"][0]
        text = item["content"][0]["text"]
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": _response(obj["id"], request, "in_progress", [])},
            {"type": "response.in_progress", "response": _response(obj["id"], request, "in_progress", [])},
            {"type": "response.output_item.added", "output_index": 0,
             "item": _message(item["id"], "", "in_progress", content=False)},
            {"type": "response.content_part.added", **where, "part": part},
            *({"type": "response.output_text.delta", **where, "delta": word, "logprobs": []}
              for word in re.findall(r"\s*\S+", text)),
            {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": obj},
        ]
        out = []
        for n, event in enumerate(events):
            event["sequence_number"] = n - (1 if self.broken("resp-seq-back") and n >= 3 else 0)
            if n > after:
                out.append(f"id: {obj['id']}:{event['sequence_number']}\nevent: {event['type']}\n"
                           f"data: {json.dumps(event)}\n\n")
        return "".join(out).encode()


def _message(item_id: str, text: str, status: str, *, content: bool = True) -> dict[str, Any]:
    parts = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if content else []
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def _response(response_id: str, request: dict[str, Any], status: str, output: list[Any]) -> dict[str, Any]:
    obj = {"id": response_id, "object": "response", "created_at": CREATED, "status": status, "error": None,
           "incomplete_details": None, "instructions": request.get("instructions"), "model": request["model"],
           "output": output, "parallel_tool_calls": True, "metadata": {}, "tool_choice": "auto",
           "tools": [{**t, "strict": t.get("strict")} for t in request.get("tools") or ()],
           "temperature": None, "top_p": None,
           "previous_response_id": request.get("previous_response_id")}
    if status == "completed":
        obj["usage"] = {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                        "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5}
    return obj


def _error(status: int, message: str, param: str | None = None) -> tuple[int, str, bytes]:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return status, "application/json", json.dumps(body).encode()
