"""The official ``openai`` SDK through the gateway to a recorded upstream: tools, structured output, images, reasoning, logprobs.

A small HTTP server in the test replays recorded streams (tests/data/providers,
written from OpenAI's and Anthropic's documented examples) as the upstream of
a real gateway process, one fixture per request, and keeps every request body
it received. The SDK drives the gateway as an application drives
api.openai.com: a two-round tool loop (streamed and not, against an
``openai-completions`` and an ``anthropic-messages`` upstream),
``client.beta.chat.completions.parse`` with a pydantic model, an image part
that must reach the upstream byte for byte, reasoning deltas and logprobs.
A ``user`` session's tool loop survives a gateway restart between rounds, and
its later turns send the earlier calls and results upstream in order.
"""

from __future__ import annotations

import json
import os
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support import TOKEN, GatewayProcess, base_config

try:
    import openai
    import pydantic
except ImportError:
    openai = pydantic = None

REQUIRED = os.environ.get("EQUABOT_INTEROP") == "1"
DATA = Path(__file__).resolve().parent.parent / "data" / "providers"
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
       "hQGAhKmMIQAAAABJRU5ErkJggg==")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location"]}}}


class Recorded(ThreadingHTTPServer):
    """The upstream: each POST gets the next recorded stream of ``script``; bodies are kept."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorded

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with self.server.lock:
            self.server.bodies.append(json.loads(body))
            self.server.paths.append(self.path)
            fixture = self.server.script.pop(0) if self.server.script else None
        if fixture is None:
            data = b'{"error": {"message": "no recorded answer left", "type": "server_error"}}'
            self.send_response(500)
            self.send_header("content-type", "application/json")
        else:
            data = (DATA / fixture).read_bytes()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@unittest.skipIf(openai is None and not REQUIRED, "the openai and pydantic packages are not installed")
class RecordedUpstreamCase(unittest.TestCase):
    gw: GatewayProcess
    upstream: Recorded

    @classmethod
    def setUpClass(cls) -> None:
        if openai is None:
            raise AssertionError("EQUABOT_INTEROP=1 but openai or pydantic cannot be imported")
        cls.upstream = Recorded()
        threading.Thread(target=cls.upstream.serve_forever, daemon=True).start()
        port = cls.upstream.server_address[1]
        data = base_config()
        data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "gpt", "model": "rec/gpt-4o-mini"},
                                   {"id": "claude", "model": "anth/claude-opus-4-1-20250805"}]}
        data["models"] = {"providers": {
            "rec": {"api": "openai-completions", "baseUrl": f"http://127.0.0.1:{port}/v1", "apiKey": "sk-up"},
            "anth": {"api": "anthropic-messages", "baseUrl": f"http://127.0.0.1:{port}", "apiKey": "sk-ant"}}}
        cls.gw = GatewayProcess(data).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.gw.stop()
        cls.gw.tmp.cleanup()
        cls.upstream.shutdown()
        cls.upstream.server_close()

    def setUp(self) -> None:
        self.upstream.script.clear()
        self.upstream.bodies.clear()
        self.upstream.paths.clear()

    def client(self) -> Any:
        client = openai.OpenAI(api_key=TOKEN, base_url=f"{self.gw.url}/v1", max_retries=0, timeout=10.0)
        self.addCleanup(client.close)
        return client

    def play(self, *fixtures: str) -> None:
        self.upstream.script.extend(fixtures)


class OpenAIToolLoopTest(RecordedUpstreamCase):
    QUESTION = {"role": "user", "content": "What's the weather like in Paris today?"}

    def check_round_two(self, body: dict[str, Any], call_id: str) -> None:
        self.assertEqual(body["messages"], [
            self.QUESTION,
            {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
                "name": "get_weather", "arguments": '{"location":"Paris, France"}'}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "18 C, sunny"}])
        self.assertEqual(body["tools"], [WEATHER])

    def test_two_rounds_not_streamed(self) -> None:
        self.play("openai-chat-stream-tool-calls.sse", "openai-chat-stream-answer.sse")
        client = self.client()
        messages: list[Any] = [self.QUESTION]
        first = client.chat.completions.create(model="equabot:gpt", messages=messages, tools=[WEATHER])
        choice = first.choices[0]
        self.assertEqual((choice.finish_reason, choice.message.content), ("tool_calls", None))
        [call] = choice.message.tool_calls
        self.assertEqual((call.id, call.function.name, json.loads(call.function.arguments)),
                         ("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", {"location": "Paris, France"}))
        messages.append(choice.message)             # as the function-calling guide does
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"})
        second = client.chat.completions.create(model="equabot:gpt", messages=messages, tools=[WEATHER])
        self.assertEqual(second.choices[0].message.content, "It is 18°C and sunny in Paris.")
        self.assertEqual(second.usage.prompt_tokens, 90)
        self.check_round_two(self.upstream.bodies[1], call.id)

    def test_two_rounds_streamed(self) -> None:
        self.play("openai-chat-stream-tool-calls.sse", "openai-chat-stream-answer.sse")
        client = self.client()
        messages: list[Any] = [self.QUESTION]
        with client.chat.completions.stream(model="equabot:gpt", messages=messages, tools=[WEATHER]) as stream:
            kinds = {type(event).__name__ for event in stream}
            first = stream.get_final_completion()
        self.assertIn("FunctionToolCallArgumentsDoneEvent", kinds)
        message = first.choices[0].message
        self.assertEqual(first.choices[0].finish_reason, "tool_calls")
        [call] = message.tool_calls
        self.assertEqual((call.function.name, call.function.arguments), ("get_weather", '{"location":"Paris, France"}'))
        messages.append(message)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"})
        chunks = list(client.chat.completions.create(model="equabot:gpt", messages=messages, tools=[WEATHER],
                                                     stream=True))
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                         "It is 18°C and sunny in Paris.")
        self.check_round_two(self.upstream.bodies[1], call.id)

    def test_parse_with_a_pydantic_model(self) -> None:
        class CalendarEvent(pydantic.BaseModel):
            name: str
            date: str
            participants: list[str]

        self.play("openai-chat-stream-structured.sse")
        completion = self.client().beta.chat.completions.parse(
            model="equabot:gpt", response_format=CalendarEvent, messages=[
                {"role": "system", "content": "Extract the event information."},
                {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."}])
        event = completion.choices[0].message.parsed
        self.assertEqual(event, CalendarEvent(name="Science Fair", date="Friday", participants=["Alice", "Bob"]))
        sent = self.upstream.bodies[0]["response_format"]
        self.assertEqual((sent["type"], sent["json_schema"]["name"], sent["json_schema"]["strict"]),
                         ("json_schema", "CalendarEvent", True))
        self.assertEqual(sent["json_schema"]["schema"]["required"], ["name", "date", "participants"])

    def test_an_image_reaches_the_upstream_byte_for_byte(self) -> None:
        self.play("openai-chat-stream-answer.sse")
        content = [{"type": "text", "text": "What is in these images?"},
                   {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
                   {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/wikipedia/commons/"
                                                              "thumb/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg"}}]
        self.client().chat.completions.create(model="equabot:gpt", messages=[{"role": "user", "content": content}])
        self.assertEqual(self.upstream.bodies[0]["messages"], [{"role": "user", "content": content}])

    def test_reasoning_deltas(self) -> None:
        self.play("openai-chat-stream-reasoning.sse", "openai-chat-stream-reasoning.sse")
        client = self.client()
        chunks = list(client.chat.completions.create(
            model="equabot:gpt", messages=[{"role": "user", "content": "9.11 or 9.8?"}], stream=True,
            reasoning_effort="high", stream_options={"include_usage": True}))
        reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                            for c in chunks if c.choices)
        self.assertEqual(reasoning, "9.11 and 9.8: compare the tenths, 1 < 8.")
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), "9.8 is greater.")
        self.assertEqual(chunks[-1].usage.completion_tokens_details.reasoning_tokens, 34)
        self.assertEqual(self.upstream.bodies[0]["reasoning_effort"], "high")
        whole = client.chat.completions.create(model="equabot:gpt", messages=[{"role": "user", "content": "again"}],
                                               reasoning_effort="high")
        self.assertEqual(whole.choices[0].message.model_extra["reasoning_content"],
                         "9.11 and 9.8: compare the tenths, 1 < 8.")

    def test_logprobs_come_back(self) -> None:
        self.play("openai-chat-stream-logprobs.sse")
        completion = self.client().chat.completions.create(
            model="equabot:gpt", messages=[{"role": "user", "content": "Say hello"}], logprobs=True, top_logprobs=2)
        logprobs = completion.choices[0].logprobs.content
        self.assertEqual([(t.token, t.logprob) for t in logprobs], [("Hello", -0.31725305), ("!", -0.02380986)])
        self.assertEqual([a.token for a in logprobs[0].top_logprobs], ["Hello", "Hi"])
        self.assertEqual((self.upstream.bodies[0]["logprobs"], self.upstream.bodies[0]["top_logprobs"]), (True, 2))


class AnthropicToolLoopTest(RecordedUpstreamCase):
    QUESTION = {"role": "user", "content": "What's the weather like in San Francisco?"}
    ARGUMENTS = '{"location": "San Francisco, CA", "unit": "fahrenheit"}'

    def run_loop(self, stream: bool) -> None:
        self.play("anthropic-messages-stream-tool-use.sse", "anthropic-messages-stream.sse")
        client = self.client()
        messages: list[Any] = [self.QUESTION]
        if stream:
            with client.chat.completions.stream(model="equabot:claude", messages=messages, tools=[WEATHER]) as s:
                for _ in s:
                    pass
                first = s.get_final_completion()
        else:
            first = client.chat.completions.create(model="equabot:claude", messages=messages, tools=[WEATHER])
        message = first.choices[0].message
        self.assertEqual((first.choices[0].finish_reason, message.content),
                         ("tool_calls", "Okay, let's check the weather for San Francisco, CA:"))
        [call] = message.tool_calls
        self.assertEqual((call.id, call.function.name, call.function.arguments),
                         ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", self.ARGUMENTS))
        if not stream:      # a stream carries usage only when stream_options ask for it
            self.assertEqual(first.usage.prompt_tokens, 472)
        messages.append(message)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "15 degrees"})
        second = client.chat.completions.create(model="equabot:claude", messages=messages, tools=[WEATHER])
        self.assertEqual(second.choices[0].message.content, "Hello!")
        self.assertEqual(self.upstream.paths, ["/v1/messages", "/v1/messages"])
        body = self.upstream.bodies[1]
        self.assertEqual(body["messages"], [
            self.QUESTION,
            {"role": "assistant", "content": [
                {"type": "text", "text": "Okay, let's check the weather for San Francisco, CA:"},
                {"type": "tool_use", "id": call.id, "name": "get_weather", "input": json.loads(self.ARGUMENTS)}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "15 degrees"}]}])
        self.assertEqual(body["tools"][0]["input_schema"], WEATHER["function"]["parameters"])

    def test_two_rounds_not_streamed(self) -> None:
        self.run_loop(stream=False)

    def test_two_rounds_streamed(self) -> None:
        self.run_loop(stream=True)


class DurableLoopTest(RecordedUpstreamCase):
    def test_a_user_session_loop_survives_a_restart_and_replays_in_order(self) -> None:
        question = {"role": "user", "content": "What's the weather like in Paris today?"}
        self.play("openai-chat-stream-tool-calls.sse")
        first = self.client().chat.completions.create(model="equabot:gpt", user="durable", messages=[question],
                                                      tools=[WEATHER])
        message = first.choices[0].message
        call_id = message.tool_calls[0].id
        # The gateway restarts between the rounds: the transcript holds the call.
        self.gw.stop()
        self.gw.start()
        self.play("openai-chat-stream-answer.sse", "openai-chat-stream-answer.sse")
        result = {"role": "tool", "tool_call_id": call_id, "content": "18 C, sunny"}
        # A client resending edited history: a stored session replays its own transcript.
        edited = {"role": "user", "content": "(edited away)"}
        second = self.client().chat.completions.create(model="equabot:gpt", user="durable", tools=[WEATHER],
                                                       messages=[edited, message, result])
        self.assertEqual(second.choices[0].message.content, "It is 18°C and sunny in Paris.")
        assistant = {"role": "assistant", "content": None, "tool_calls": [{
            "id": call_id, "type": "function", "function": {"name": "get_weather",
                                                            "arguments": '{"location":"Paris, France"}'}}]}
        self.assertEqual(self.upstream.bodies[1]["messages"], [question, assistant, result])
        # A later turn sends all of it, in order, then the new question.
        thanks = {"role": "user", "content": "Thanks!"}
        self.client().chat.completions.create(model="equabot:gpt", user="durable", messages=[thanks])
        self.assertEqual(self.upstream.bodies[2]["messages"], [
            question, assistant, result, {"role": "assistant", "content": "It is 18°C and sunny in Paris."}, thanks])


if __name__ == "__main__":
    unittest.main()
