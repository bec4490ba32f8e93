"""The official ``openai`` SDK's Responses API against a live gateway, unchanged but for ``base_url``.

``client.responses.create`` with a string, with items and with
``instructions``; ``client.responses.stream`` consumed as typed events to
``get_final_response()``; a function-tool round trip answered with a
``function_call_output`` item; ``previous_response_id`` chaining three turns
(turn numbers 1, 2, 3 from the echo model); ``retrieve``, ``delete`` and
``cancel``; a cut stream resumed with ``retrieve(stream=True, starting_after=…)``
and replayed under its ``Idempotency-Key``; ``client.responses.retrieve``
after the gateway restarted; and,
against a recorded upstream (tests/data/providers), ``text.format``
json_schema (``client.responses.parse`` with a pydantic model) reaching the
upstream, and a continued conversation sent upstream in order.
"""

from __future__ import annotations

import os
import threading
import unittest
from typing import Any

from tests.interop.test_openai_tools import Recorded
from tests.support import TOKEN, GatewayProcess, base_config

try:
    import openai
    import pydantic
except ImportError:
    openai = pydantic = None

REQUIRED = os.environ.get("EQUABOT_INTEROP") == "1"
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a given location",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}


def gateway_data(upstream_port: int | None = None) -> dict[str, Any]:
    data = base_config()
    data["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
    data["agents"] = {"list": [{"id": "main", "default": True}, {"id": "slow", "model": "slow/echo"},
                               *([{"id": "gpt", "model": "rec/gpt-4o-mini"}] if upstream_port else [])]}
    providers: dict[str, Any] = {"slow": {"api": "echo", "delayMs": 50}}
    if upstream_port:
        providers["rec"] = {"api": "openai-completions", "baseUrl": f"http://127.0.0.1:{upstream_port}/v1",
                            "apiKey": "sk-up"}
    data["models"] = {"providers": providers}
    return data


@unittest.skipIf(openai is None and not REQUIRED, "the openai and pydantic packages are not installed")
class ResponsesSDKCase(unittest.TestCase):
    gw: GatewayProcess
    upstream: Recorded

    @classmethod
    def setUpClass(cls) -> None:
        if openai is None:
            raise AssertionError("EQUABOT_INTEROP=1 but openai or pydantic cannot be imported")
        cls.upstream = Recorded()
        threading.Thread(target=cls.upstream.serve_forever, daemon=True).start()
        cls.gw = GatewayProcess(gateway_data(cls.upstream.server_address[1])).start()

    @classmethod
    def tearDownClass(cls) -> None:
        code = cls.gw.stop()
        cls.gw.tmp.cleanup()
        cls.upstream.shutdown()
        cls.upstream.server_close()
        assert code == 0, f"the gateway exited with {code}"

    def setUp(self) -> None:
        self.upstream.script.clear()
        self.upstream.bodies.clear()

    def client(self) -> Any:
        client = openai.OpenAI(api_key=TOKEN, base_url=f"{self.gw.url}/v1", max_retries=0, timeout=10.0)
        self.addCleanup(client.close)
        return client


class CreateTest(ResponsesSDKCase):
    def test_string_input(self) -> None:
        response = self.client().responses.create(model="equabot", input="Tell me a story.")
        self.assertIsInstance(response, openai.types.responses.Response)
        self.assertTrue(response.id.startswith("resp_"))
        self.assertEqual((response.status, response.model), ("completed", "equabot"))
        self.assertEqual(response.output_text, "Echo (turn 1): Tell me a story.")
        self.assertEqual(response.usage.total_tokens, response.usage.input_tokens + response.usage.output_tokens)

    def test_items_and_instructions(self) -> None:
        response = self.client().responses.create(
            model="equabot", instructions="Talk like a pirate.",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "Are semicolons optional?"}]}])
        self.assertEqual(response.output_text, "Echo (turn 1): Are semicolons optional?")
        self.assertEqual(response.instructions, "Talk like a pirate.")
        items = self.client().responses.input_items.list(response.id)
        self.assertEqual([i.content[0].text for i in items.data], ["Are semicolons optional?"])

    def test_stream_to_final_response(self) -> None:
        kinds = []
        with self.client().responses.stream(model="equabot", input="streamed to the end") as stream:
            for event in stream:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    self.assertTrue(event.delta)
            final = stream.get_final_response()
        self.assertEqual(kinds[:4], ["response.created", "response.in_progress", "response.output_item.added",
                                     "response.content_part.added"])
        self.assertEqual(kinds[-4:], ["response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", "response.completed"])
        self.assertEqual(final.output_text, "Echo (turn 1): streamed to the end")
        self.assertEqual(self.client().responses.retrieve(final.id).output_text, final.output_text)

    def test_a_cut_stream_resumed_by_retrieve_with_starting_after(self) -> None:
        client = self.client()
        key = {"Idempotency-Key": "sdk-resume"}
        stream = client.responses.create(model="equabot:slow", input="one two three four five six", stream=True,
                                         extra_headers=key)
        before = []
        for event in stream:
            before.append(event)
            if len(before) == 6:
                break
        stream.close()          # the client goes away mid-answer; its keyed run goes on
        response_id, last = before[0].response.id, before[-1].sequence_number
        rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
        self.assertTrue(all(event.sequence_number > last for event in rest))
        self.assertEqual(rest[-1].type, "response.completed")
        text = "".join(e.delta for e in before + rest if e.type == "response.output_text.delta")
        self.assertEqual(text, "Echo (turn 1): one two three four five six")
        again = client.responses.with_raw_response.create(model="equabot:slow", input="one two three four five six",
                                                          stream=True, extra_headers=key)
        self.assertEqual(again.headers.get("x-equabot-idempotent-replay"), "true")
        replayed = list(again.parse())
        self.assertEqual(replayed[-1].response.output_text, text)
        self.assertEqual(replayed[-1].response.id, response_id)

    def test_function_tool_round_trip(self) -> None:
        client = self.client()
        first = client.responses.create(model="equabot", tools=[WEATHER],
                                        input='/call get_weather {"location": "Paris, France"}')
        [call] = [item for item in first.output if item.type == "function_call"]
        self.assertEqual((call.name, call.arguments), ("get_weather", '{"location": "Paris, France"}'))
        second = client.responses.create(model="equabot", tools=[WEATHER], previous_response_id=first.id, input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}])
        self.assertEqual(second.output_text, "Echo (turn 2): tool get_weather returned: 18 C, sunny")

    def test_streamed_function_call(self) -> None:
        with self.client().responses.stream(model="equabot", tools=[WEATHER],
                                            input='/call get_weather {"location": "Oslo"}') as stream:
            arguments = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
            final = stream.get_final_response()
        self.assertEqual(arguments, '{"location": "Oslo"}')
        self.assertEqual(final.output[0].arguments, arguments)

    def test_three_turns_with_previous_response_id(self) -> None:
        client = self.client()
        previous = None
        texts = []
        for word in ("one", "two", "three"):
            response = client.responses.create(model="equabot", input=word,
                                               **({"previous_response_id": previous} if previous else {}))
            previous = response.id
            texts.append(response.output_text)
        self.assertEqual(texts, ["Echo (turn 1): one", "Echo (turn 2): two", "Echo (turn 3): three"])

    def test_delete_and_errors(self) -> None:
        client = self.client()
        response = client.responses.create(model="equabot", input="short-lived")
        client.responses.delete(response.id)
        with self.assertRaises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        with self.assertRaises(openai.BadRequestError) as caught:
            client.responses.create(model="equabot", input="x", extra_body={"bogus": 1})
        self.assertEqual(caught.exception.body["param"], "bogus")
        with self.assertRaises(openai.BadRequestError):
            client.responses.create(model="equabot", input="x", previous_response_id="resp_unknown")
        with self.assertRaises(openai.AuthenticationError):
            openai.OpenAI(api_key="wrong", base_url=f"{self.gw.url}/v1", max_retries=0).responses.create(
                model="equabot", input="x")

    def test_cancel_in_flight(self) -> None:
        client = self.client()
        words = " ".join(f"w{i}" for i in range(200))
        with client.responses.stream(model="equabot:slow", input=words) as stream:
            for event in stream:
                if event.type == "response.created":
                    cancelled = client.responses.cancel(event.response.id)
                    break
        self.assertEqual(cancelled.status, "cancelled")
        self.assertEqual(client.responses.retrieve(cancelled.id).status, "cancelled")


class RecordedUpstreamTest(ResponsesSDKCase):
    def test_json_schema_reaches_the_upstream(self) -> None:
        class CalendarEvent(pydantic.BaseModel):
            name: str
            date: str
            participants: list[str]

        self.upstream.script.append("openai-chat-stream-structured.sse")
        response = self.client().responses.parse(
            model="equabot:gpt", text_format=CalendarEvent, input=[
                {"role": "system", "content": "Extract the event information."},
                {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."}])
        self.assertEqual(response.output_parsed,
                         CalendarEvent(name="Science Fair", date="Friday", participants=["Alice", "Bob"]))
        body = self.upstream.bodies[0]
        sent = body["response_format"]
        self.assertEqual((sent["type"], sent["json_schema"]["name"], sent["json_schema"]["strict"]),
                         ("json_schema", "CalendarEvent", True))
        self.assertEqual(sent["json_schema"]["schema"]["required"], ["name", "date", "participants"])
        self.assertEqual(body["messages"], [
            {"role": "system", "content": "Extract the event information."},
            {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."}])

    def test_a_continued_conversation_reaches_the_upstream_in_order(self) -> None:
        self.upstream.script.extend(["openai-chat-stream-answer.sse"] * 3)
        client = self.client()
        first = client.responses.create(model="equabot:gpt", input="What's the weather like in Paris today?")
        answer = first.output_text
        client.responses.create(model="equabot:gpt", input="And tomorrow?", previous_response_id=first.id)
        # A fork from the first response: the history up to it, not the second turn.
        client.responses.create(model="equabot:gpt", input="And in Oslo?", previous_response_id=first.id)
        question = {"role": "user", "content": "What's the weather like in Paris today?"}
        self.assertEqual(self.upstream.bodies[1]["messages"], [
            question, {"role": "assistant", "content": answer}, {"role": "user", "content": "And tomorrow?"}])
        self.assertEqual(self.upstream.bodies[2]["messages"], [
            question, {"role": "assistant", "content": answer}, {"role": "user", "content": "And in Oslo?"}])


@unittest.skipIf(openai is None and not REQUIRED, "the openai package is not installed")
class RestartTest(unittest.TestCase):
    def test_retrieve_and_continue_after_a_restart(self) -> None:
        gw = GatewayProcess(gateway_data()).start()
        self.addCleanup(gw.tmp.cleanup)
        try:
            client = openai.OpenAI(api_key=TOKEN, base_url=f"{gw.url}/v1", max_retries=0, timeout=10.0)
            first = client.responses.create(model="equabot", input="remember me")
            client.close()
        finally:
            self.assertEqual(gw.stop(), 0)
        gw.start()          # the same state dir, a new port
        try:
            client = openai.OpenAI(api_key=TOKEN, base_url=f"{gw.url}/v1", max_retries=0, timeout=10.0)
            again = client.responses.retrieve(first.id)
            self.assertEqual(again.model_dump(), first.model_dump())
            second = client.responses.create(model="equabot", input="still here?", previous_response_id=first.id)
            self.assertEqual(second.output_text, "Echo (turn 2): still here?")
            client.close()
        finally:
            self.assertEqual(gw.stop(), 0)


if __name__ == "__main__":
    unittest.main()
