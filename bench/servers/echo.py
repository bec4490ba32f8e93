"""The echo chat completion as the peer servers answer it, written for the benchmark.

Owns the bytes the peers (Starlette, aiohttp, raw asyncio) put on the wire so
that they match what equabot_gw's echo agent sends: the same JSON object for a
non-streaming completion and the same ``chat.completion.chunk`` SSE events,
word by word, for a streaming one (ids and ``created`` differ, as they do
between two equabot_gw responses). Peers do NOT write transcripts: equabot_gw
appends every turn to a fsynced journal, the peers only compute the reply.
Imports nothing from equabot_gw: it is an independent implementation, checked
against the gateway by ``run.py``'s preflight.
"""

from __future__ import annotations

import hmac
import itertools
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Iterator

TOKEN = "bench-token-0123456789abcdef"             # same as bench/gateway.json5
SYSTEM_FINGERPRINT = "equabot-gw-0.1.0"            # what equabot_gw 0.1.0 reports
SLOW_MODEL = "equabot:slow"                        # the gateway's agent "slow": 50 ms per word
SLOW_DELAY = 0.050
SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
)
# One word with the whitespace before it; the last also keeps trailing space.
_WORD = re.compile(r"\s*\S+(?:\s+\Z)?")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+)\s*\Z")


def dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def error_json(status: int, message: str, kind: str) -> bytes:
    return dumps({"error": {"message": message, "type": kind, "param": None,
                            "code": None}}).encode()


def authorized(header: str | None) -> bool:
    """A constant-time check of ``Authorization: Bearer <TOKEN>``, as the gateway does."""
    match = _BEARER.match(header or "")
    return bool(match) and hmac.compare_digest(match.group(1).encode(), TOKEN.encode())


@dataclass(slots=True)
class Echo:
    """One parsed request and its reply."""

    model: str
    stream: bool
    include_usage: bool
    reply: str
    prompt_tokens: int

    @property
    def delay(self) -> float:
        return SLOW_DELAY if self.model == SLOW_MODEL else 0.0

    def deltas(self) -> list[str]:
        return _WORD.findall(self.reply) or [self.reply]


def parse(body: bytes) -> Echo:
    """The echo of a chat-completions body; ValueError for what the gateway answers 400."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise ValueError("expected an object with a string 'model'")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("expected a non-empty 'messages' array")
    texts = [m.get("content") or "" for m in messages if isinstance(m, dict)]
    users = [m.get("content") or "" for m in messages
             if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not all(isinstance(t, str) for t in texts):
        raise ValueError("expected a user message with string content")
    options = data.get("stream_options") or {}
    return Echo(data["model"], bool(data.get("stream")), bool(options.get("include_usage")),
                f"Echo (turn 1): {users[-1]}", sum(len(t.split()) for t in texts))


class Ids:
    """``chatcmpl-`` ids shaped like the gateway's: 12 random hex digits and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"chatcmpl-{self._prefix}{next(self._count):x}"


def completion(echo: Echo, completion_id: str) -> bytes:
    """The non-streaming ``chat.completion`` object, key order as the gateway writes it."""
    words = len(echo.reply.split())
    return dumps({
        "id": completion_id, "object": "chat.completion", "created": int(time.time()),
        "model": echo.model, "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": echo.reply,
                                              "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": echo.prompt_tokens, "completion_tokens": words,
                  "total_tokens": echo.prompt_tokens + words},
    }).encode()


class Chunks:
    """The SSE events of one streamed completion, one ``bytes`` per event.

    Each event carries ``id: <completion id>:<seq>`` as the gateway's do, seq
    being the characters of reply text sent so far (the finish event the
    text's length + 1, usage + 2, ``[DONE]`` + 3).
    """

    def __init__(self, echo: Echo, completion_id: str) -> None:
        self.echo = echo
        self._id = completion_id
        self._sent = 0
        self._head = dumps({"id": completion_id, "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": echo.model,
                            "system_fingerprint": SYSTEM_FINGERPRINT})[:-1]
        self._tail = ',"usage":null}' if echo.include_usage else "}"

    def _choice(self, seq: int, delta: str, finish: str) -> bytes:
        return (f'id: {self._id}:{seq}\ndata: {self._head},"choices":[{{"index":0,"delta":{delta},'
                f'"logprobs":null,"finish_reason":{finish}}}]{self._tail}\n\n').encode()

    def role(self) -> bytes:
        return self._choice(0, '{"role":"assistant","content":""}', "null")

    def delta(self, text: str) -> bytes:
        self._sent += len(text)
        return self._choice(self._sent, '{"content":' + json.dumps(text) + "}", "null")

    def end(self) -> Iterator[bytes]:
        yield self._choice(self._sent + 1, "{}", '"stop"')
        if self.echo.include_usage:
            words = len(self.echo.reply.split())
            usage = dumps({"prompt_tokens": self.echo.prompt_tokens, "completion_tokens": words,
                           "total_tokens": self.echo.prompt_tokens + words})
            yield f'id: {self._id}:{self._sent + 2}\ndata: {self._head},"choices":[],"usage":{usage}}}\n\n'.encode()
        yield f"id: {self._id}:{self._sent + 3}\ndata: [DONE]\n\n".encode()
