"""A raw-socket SSE client for the resilience tests: reads a chat-completions stream
event by event over HTTP/1.1 chunked encoding, and can cut the connection after N events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.support import TOKEN


class SSEStream:
    """One request on a fresh connection; ``events()`` yields (id, data) of each SSE event."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 status: int, headers: dict[str, str]) -> None:
        self.reader, self.writer, self.status, self.headers = reader, writer, status, headers
        self._buffer = b""
        self.body = b""

    @classmethod
    async def open(cls, port: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None,
                   *, method: str = "POST", path: str = "/v1/chat/completions") -> SSEStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {TOKEN}"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        stream = cls(reader, writer, status, fields)
        if "content-length" in fields:
            stream.body = await reader.readexactly(int(fields["content-length"]))
            writer.close()
        return stream

    def json(self) -> Any:
        return json.loads(self.body)

    async def _chunk(self) -> bytes:
        size = int((await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 10)).strip(), 16)
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def events(self):
        """(id, data) per event until the body ends; data is parsed JSON, or "[DONE]"."""
        while True:
            while b"\n\n" not in self._buffer:
                chunk = await self._chunk()
                if not chunk:
                    return
                self._buffer += chunk
            block, _, self._buffer = self._buffer.partition(b"\n\n")
            event_id, data = None, None
            for line in block.decode().split("\n"):
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data = line[6:]
            if data is None:
                continue                # a keep-alive comment
            yield event_id, data if data == "[DONE]" else json.loads(data)

    async def read_all(self, cut_after: int | None = None) -> list[tuple[str | None, Any]]:
        """The events, all of them, or the first ``cut_after`` and then the connection is cut."""
        out = []
        async for event in self.events():
            out.append(event)
            if cut_after is not None and len(out) >= cut_after:
                self.cut()
                break
        else:
            self.cut()
        return out

    def cut(self) -> None:
        self.writer.transport.abort()       # a reset, as a phone changing networks leaves it


def content_of(events: list[tuple[str | None, Any]]) -> str:
    """The answer text of chat.completion.chunk events."""
    text = []
    for _, data in events:
        if isinstance(data, dict) and data.get("choices"):
            text.append(data["choices"][0]["delta"].get("content") or "")
    return "".join(text)


def output_of(events: list[tuple[str | None, Any]]) -> dict[int, dict[str, Any]]:
    """Per choice index, all a client rebuilds from chat.completion.chunk events: content,
    reasoning, each tool call's id, name and arguments, the count of logprob entries, the finish."""
    out: dict[int, dict[str, Any]] = {}
    for _, data in events:
        if not isinstance(data, dict):
            continue
        for choice in data.get("choices") or []:
            got = out.setdefault(choice["index"], {"content": "", "reasoning": "", "calls": {}, "logprobs": 0,
                                                   "finish": None})
            delta = choice["delta"]
            got["content"] += delta.get("content") or ""
            got["reasoning"] += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                seen = got["calls"].setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                seen["id"] = call.get("id", seen["id"])
                function = call.get("function") or {}
                seen["name"] = function.get("name", seen["name"])
                seen["arguments"] += function.get("arguments") or ""
            if choice.get("logprobs"):
                got["logprobs"] += len(choice["logprobs"]["content"])
            got["finish"] = choice.get("finish_reason") or got["finish"]
    return out
