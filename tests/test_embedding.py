"""The embedding API: ``equabot_gw.Gateway`` inside another program.

Restartable (the same object, or a new one on the same state dir, three times
in one loop), usable in a thread of a program whose own loop runs in another,
and leaving nothing behind after ``stop()``: no task, thread, file
descriptor, timer, logging handler or signal handler. Under ``python -I``
from an installed wheel: tests/test_install.py.
"""

from __future__ import annotations

import ast
import asyncio
import collections.abc
import importlib.resources
import json
import logging
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import unittest
from typing import Any

import equabot_gw
from unittest import mock

from equabot_gw import (
    AgentResult, AgentRun, ConfigError, Ended, Failed, Finish, Gateway, GatewayError, ProviderCall,
    ReasoningDelta, RunError, Started, TextDelta, ToolCallDelta, Usage, register_provider, run_agent,
    unregister_provider,
)
from equabot_gw import statelock
from equabot_gw.agents.sessions import SessionStore
from equabot_gw.agents.types import TurnRecord
from equabot_gw.gateway.client import ControlClient
from equabot_gw.net import server as http_server
from equabot_gw.providers.python import registered_providers
from tests.support import ROOT, TOKEN, base_config
from tests.test_observe import chat, parse, request, sample, ws_agent_run


def reply_of(body: bytes) -> str:
    return json.loads(body)["choices"][0]["message"]["content"]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def our_timers(loop: asyncio.AbstractEventLoop) -> list[Any]:
    # CPython's loop keeps its timers in _scheduled: the only way to see them.
    return [h for h in getattr(loop, "_scheduled", ()) if not h.cancelled()
            and "equabot_gw" in (getattr(getattr(h, "_callback", None), "__module__", None) or "")]


class RestartTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.state = pathlib.Path(self.tmp.name) / "state"

    async def asyncTearDown(self) -> None:
        self.tmp.cleanup()

    async def test_the_same_object_starts_and_stops_three_times_in_one_loop(self) -> None:
        gateway = Gateway.from_config(base_config(), state_dir=self.state, port=0, env={})
        self.assertEqual(stat.S_IMODE(self.state.stat().st_mode), 0o700)
        with self.assertRaises(RuntimeError):
            gateway.url                                  # not started yet
        for turn in (1, 2, 3):
            async with gateway as running:
                self.assertIs(running, gateway)
                self.assertTrue(gateway.url.startswith("http://127.0.0.1:"))
                status, body = await chat(gateway, "again", key="bob")
                self.assertEqual((status, reply_of(body)), (200, f"Echo (turn {turn}): again"))
                with self.assertRaises(RuntimeError):
                    await gateway.start()                # running already
                # Counters are the new start's own: one run each time.
                samples = parse(gateway.observer.render().decode())
                self.assertEqual(sample(samples, "equabot_runs_total", agent="main", status="ok"), 1)
            with self.assertRaises(RuntimeError):
                gateway.url

    async def test_a_new_gateway_on_the_same_state_dir_three_times(self) -> None:
        for turn in (1, 2, 3):
            gateway = Gateway.from_config(base_config(), state_dir=self.state, port=0, env={})
            await gateway.start()
            try:
                status, body = await chat(gateway, "hi", key="carol")
                self.assertEqual(reply_of(body), f"Echo (turn {turn}): hi")
            finally:
                await gateway.stop()
            await gateway.stop()                         # twice is fine

    async def test_stop_before_start_then_start(self) -> None:
        gateway = Gateway.from_config(base_config(), state_dir=self.state, port=0, env={})
        await gateway.stop()
        async with gateway:
            self.assertEqual((await request(gateway, "GET", "/health", token=None))[0], 200)


class NothingLeftBehindTest(unittest.IsolatedAsyncioTestCase):
    async def test_no_task_thread_fd_timer_handler_or_signal_survives_stop(self) -> None:
        loop = asyncio.get_running_loop()
        package, root = logging.getLogger("equabot_gw"), logging.getLogger()
        before = (set(threading.enumerate()), open_fds(), list(package.handlers), list(root.handlers),
                  root.level, package.level, [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)])
        with tempfile.TemporaryDirectory() as tmp:
            gateway = Gateway.from_config(base_config(), state_dir=tmp, port=0, env={})
            for _ in range(2):
                async with gateway:
                    self.assertEqual((await chat(gateway, "plain"))[0], 200)
                    self.assertEqual((await chat(gateway, "streamed", stream=True, key="k"))[0], 200)
                    client = await ControlClient.open(gateway.url, TOKEN)
                    try:
                        self.assertTrue((await ws_agent_run(client, "over ws"))["ok"])
                    finally:
                        await client.close()
                    self.assertEqual(package.handlers, [*before[2], gateway.log_buffer])
                await asyncio.sleep(0.05)        # the client's closed transports let go of their fds
                current = asyncio.current_task()
                self.assertEqual([t for t in asyncio.all_tasks() if t is not current], [])
                self.assertEqual(our_timers(loop), [])
        after = (set(threading.enumerate()), open_fds(), list(package.handlers), list(root.handlers),
                 root.level, package.level, [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)])
        self.assertEqual(after, before)


class ThreadTest(unittest.TestCase):
    def test_a_gateway_in_a_thread_beside_the_programs_own_loop(self) -> None:
        threads_before = set(threading.enumerate())
        started: list[Gateway] = []
        ready = threading.Event()
        stop: list[Any] = []            # (the gateway thread's loop, its stop event)
        failures: list[BaseException] = []

        async def serve(state: str) -> None:
            stopping = asyncio.Event()
            stop.append((asyncio.get_running_loop(), stopping))
            async with Gateway.from_config(base_config(), state_dir=state, port=0, env={}) as gateway:
                started.append(gateway)
                ready.set()
                await stopping.wait()

        def gateway_thread(state: str) -> None:
            try:
                asyncio.run(serve(state))
            except BaseException as exc:        # handed to the main thread's assertions
                failures.append(exc)
                ready.set()

        async def program(state: str) -> list[int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)
            tick = asyncio.ensure_future(ticker())
            thread = threading.Thread(target=gateway_thread, args=(state,), name="embedded-gateway")
            thread.start()
            try:
                await asyncio.get_running_loop().run_in_executor(None, ready.wait, 10)
                self.assertEqual(failures, [])
                gateway = started[0]
                statuses = [(await chat(gateway, f"from the program {i}", key="prog"))[0] for i in range(3)]
                statuses.append((await request(gateway, "GET", "/health", token=None))[0])
            finally:
                if stop:
                    stop_loop, stopping = stop[0]
                    stop_loop.call_soon_threadsafe(stopping.set)
                await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
                tick.cancel()
            self.assertGreater(ticks, 0)        # the program's own loop kept running
            self.assertFalse(thread.is_alive())
            return statuses

        with tempfile.TemporaryDirectory() as tmp:
            self.assertEqual(asyncio.run(program(tmp)), [200, 200, 200, 200])
        self.assertEqual(failures, [])
        self.assertEqual(set(threading.enumerate()), threads_before)


class FromConfigTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_json5_file_a_dict_and_the_errors(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "gw.json5"
            path.write_text("// comments and trailing commas, as the CLI reads it\n"
                            "{gateway: {auth: {token: '%s'}, port: 0,}}\n" % TOKEN)
            gateway = Gateway.from_config(path, state_dir=pathlib.Path(tmp) / "a" / "b", env={})
            async with gateway:
                status, _, body = await request(gateway, "GET", "/health", token=None)
                self.assertEqual((status, json.loads(body)["version"]), (200, equabot_gw.__version__))
                self.assertEqual(gateway.config_path, path)
            with self.assertRaises(ConfigError) as caught:
                Gateway.from_config({"gateway": {"port": "x"}}, state_dir=tmp, env={})
            self.assertIn("gateway.port", str(caught.exception))
            with self.assertRaises(ConfigError):
                Gateway.from_config(pathlib.Path(tmp) / "missing.json5", state_dir=tmp, env={})
            # A path to something without end is refused at the bound, not read until memory runs out.
            with self.assertRaisesRegex(ConfigError, "larger than"):
                Gateway.from_config("/dev/zero", state_dir=tmp, env={})
            with self.assertRaises(ConfigError):                 # beyond loopback, no secret: refused
                Gateway.from_config({"gateway": {"auth": {"mode": "none"}}}, state_dir=tmp,
                                    host="lan", env={})
            # ${VAR} comes from env, not from the process's environment.
            gateway = Gateway.from_config({"gateway": {"auth": {"token": "${MY_TOKEN}"}}},
                                          state_dir=tmp, port=0, env={"MY_TOKEN": "from-env"})
            self.assertEqual(gateway.secret.value, "from-env")

    async def test_a_start_that_fails_raises_gateway_error_and_holds_nothing(self) -> None:
        # As docs/embedding.md says: a busy port or a state dir in use is a GatewayError,
        # and the same object starts once the cause is gone.
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            gateway = Gateway.from_config(base_config(), state_dir=tmp, port=port, env={})
            with self.assertRaisesRegex(GatewayError, f"port {port} on 127.0.0.1 is already in use"):
                await gateway.start()
            async with Gateway.from_config(base_config(), state_dir=tmp, port=0, env={}) as holder:
                second = Gateway.from_config(base_config(), state_dir=tmp, port=0, env={})
                with self.assertRaisesRegex(GatewayError, "is in use by a running gateway"):
                    await second.start()
                self.assertTrue(holder.url)
            busy.close()
            async with gateway:                                  # the state dir was not kept
                self.assertEqual(gateway.url, f"http://127.0.0.1:{port}")

    async def test_port_and_host_are_checked_as_the_keys_they_override(self) -> None:
        # Not a bind() OverflowError at start(), and never True taken as port 1.
        with tempfile.TemporaryDirectory() as tmp:
            for kwargs, message in (({"port": 99999}, "port: expected integer 0-65535, got 99999"),
                                    ({"port": -1}, "port: expected integer 0-65535, got -1"),
                                    ({"port": True}, "port: expected integer 0-65535, got true"),
                                    ({"port": "80"}, 'port: expected integer 0-65535, got "80"'),
                                    ({"host": ""}, 'host: expected a non-empty string, got ""'),
                                    ({"host": 5}, "host: expected a non-empty string, got 5")):
                with self.subTest(kwargs=kwargs):
                    with self.assertRaises(ConfigError) as caught:
                        Gateway.from_config({"gateway": {"auth": {"token": TOKEN}}}, state_dir=tmp,
                                            env={}, **kwargs)
                    self.assertEqual(str(caught.exception), message)
            gateway = Gateway.from_config({"gateway": {"auth": {"token": TOKEN}}}, state_dir=tmp,
                                          port=0.0, host="loopback", env={})
            async with gateway:
                self.assertRegex(gateway.url, r"^http://127\.0\.0\.1:\d+$")


# The public API, pinned: a name added or removed here is a decision, made in docs/embedding.md too.
PUBLIC_NAMES = [
    "__version__", "Gateway", "run_agent", "AgentRun",
    "PROVIDER_API_VERSION", "register_provider", "unregister_provider",
    "ProviderCall", "Message", "ToolCall", "GenerationOptions", "ToolSpec", "TextPart", "ImagePart",
    "AudioPart", "TextDelta", "ReasoningDelta", "ToolCallDelta", "Usage", "Finish", "AgentResult",
    "Started", "Ended", "Failed", "GatewayError", "ConfigError", "RunError",
]


class PublicSurfaceTest(unittest.TestCase):
    def test_only_the_public_names_are_exported(self) -> None:
        self.assertEqual(equabot_gw.__all__, PUBLIC_NAMES)
        namespace: dict[str, Any] = {}
        exec("from equabot_gw import *", namespace)
        self.assertEqual({k for k in namespace if k != "__builtins__"}, set(PUBLIC_NAMES))
        for name in ("from_config", "start", "stop", "url", "__aenter__", "__aexit__"):
            self.assertTrue(getattr(Gateway, name).__doc__ or name.startswith("__"), name)
        with self.assertRaises(AttributeError):
            equabot_gw.Runtime                                  # internal names stay internal

    def test_every_public_name_documents_its_contract(self) -> None:
        for name in PUBLIC_NAMES:
            value = getattr(equabot_gw, name)
            if isinstance(value, (str, int)):
                continue
            with self.subTest(name):
                self.assertGreater(len((value.__doc__ or "").strip()), 20)
                # The same object as inside the package: isinstance works across both names.
                self.assertEqual(value.__module__.split(".")[0], "equabot_gw")
        self.assertEqual(equabot_gw.PROVIDER_API_VERSION, 1)
        documented = (ROOT / "docs" / "embedding.md").read_text(encoding="utf-8")
        for name in PUBLIC_NAMES:
            self.assertTrue(f"`{name}" in documented, f"{name} is not in docs/embedding.md")

    def test_type_checkers_see_the_public_names_exported(self) -> None:
        # A type checker reads __all__ without running the module: it must be a
        # literal list (mypy --strict otherwise reports every public name as "not
        # explicitly exported"), and each name must be imported for it to see.
        tree = ast.parse((ROOT / "equabot_gw" / "__init__.py").read_text(encoding="utf-8"))
        declared = [node.value for node in tree.body if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
        self.assertEqual(len(declared), 1)
        self.assertEqual(ast.literal_eval(declared[0]), PUBLIC_NAMES)
        checked = next(node for node in tree.body if isinstance(node, ast.If)
                       and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        imported = {alias.asname or alias.name for node in checked.body
                    if isinstance(node, ast.ImportFrom) for alias in node.names}
        self.assertEqual(imported, set(PUBLIC_NAMES) - {"__version__"})

    def test_the_package_says_it_is_typed(self) -> None:
        # PEP 561: without the marker a type checker skips the installed package
        # ("missing library stubs or py.typed marker") and every public name is Any.
        marker = importlib.resources.files("equabot_gw").joinpath("py.typed")
        self.assertTrue(marker.is_file(), "equabot_gw/py.typed is missing")

    def test_importing_the_package_loads_no_gateway_module(self) -> None:
        code = ("import sys, equabot_gw; print(sorted(m for m in sys.modules if m.startswith('equabot_gw')));"
                "equabot_gw.Gateway; print('equabot_gw.gateway.app' in sys.modules)")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.stdout.split("\n")[:2], ["['equabot_gw']", "True"], result.stderr)


class SessionStoreReopenTest(unittest.TestCase):
    def test_a_closed_store_opens_again_in_another_loop(self) -> None:
        threads_before = set(threading.enumerate())
        with tempfile.TemporaryDirectory() as tmp:
            store = SessionStore(pathlib.Path(tmp))

            async def one_turn(n: int) -> int:
                await store.open()
                try:
                    with self.assertRaises(RuntimeError):
                        await store.open()
                    history = await store.history("main", "agent:main:k")
                    await store.record_turn("main", "agent:main:k", TurnRecord(
                        run_id=f"r{n}", user="u", reply="a", status="ok", at=1.0, model="echo/echo"))
                    return history.assistant_turns
                finally:
                    await store.close()

            self.assertEqual([asyncio.run(one_turn(n)) for n in range(3)], [0, 1, 2])
        self.assertEqual(set(threading.enumerate()), threads_before)


# -- Python providers and run_agent --------------------------------------------------

async def shouting(call: ProviderCall):
    """A provider function: the last message, upper-cased, word by word, with reasoning and usage."""
    yield ReasoningDelta(f"turn {call.turn}, model {call.model}")
    words = call.messages[-1].text().upper().split()
    for i, word in enumerate(words):
        yield TextDelta(word if i == 0 else " " + word)
    yield Usage(prompt_tokens=len(call.messages), completion_tokens=len(words))
    yield Finish("stop")


async def calls_a_tool(call: ProviderCall):
    if call.messages[-1].role == "tool":
        yield TextDelta(f"the tool said {call.messages[-1].text()}")
        return
    yield ToolCallDelta(0, "call_1", "lookup", '{"q":')
    yield ToolCallDelta(0, None, None, ' "x"}')
    yield Finish("tool_calls")


def first_then_forever(stopped: list[str]):
    """A provider that yields "first" and then waits for ever; when it is stopped
    (its run cancelled or aborted) it appends the run's message to ``stopped``."""
    async def slow(call: ProviderCall):
        try:
            yield TextDelta("first")
            await asyncio.Event().wait()
        finally:
            stopped.append(call.messages[-1].text())
    return slow


def provider_config(model: str = "mine", **agents: Any) -> dict[str, Any]:
    data = base_config()
    data["agents"] = {"defaults": {"model": model, **agents}}
    return data


async def ws_run(gateway: Gateway, message: str, **params: Any) -> dict[str, Any]:
    client = await ControlClient.open(gateway.url, TOKEN)
    try:
        return await ws_agent_run(client, message, **params)
    finally:
        await client.close()


class PythonProviderTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.state = pathlib.Path(self.tmp.name)

    async def asyncTearDown(self) -> None:
        self.tmp.cleanup()

    async def test_a_python_provider_serves_http_and_websocket(self) -> None:
        gateway = Gateway.from_config(provider_config(), state_dir=self.state, port=0, env={},
                                      providers={"mine": shouting})
        async with gateway:
            status, body = await chat(gateway, "hello from http", key="k")
            self.assertEqual(status, 200, body)
            reply = json.loads(body)
            message = reply["choices"][0]["message"]
            self.assertEqual(message["content"], "HELLO FROM HTTP")
            self.assertEqual(message["reasoning_content"], "turn 1, model mine")
            self.assertEqual(reply["usage"]["completion_tokens"], 3)
            self.assertEqual(reply["choices"][0]["finish_reason"], "stop")
            status, body = await chat(gateway, "streamed too", key="k", stream=True)
            self.assertEqual(status, 200)
            self.assertIn(b'"content":" TOO"', body)
            self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
            frame = await ws_run(gateway, "over the socket", sessionKey="k")
            self.assertTrue(frame["ok"], frame)
            self.assertEqual(frame["payload"]["result"]["payloads"][0]["text"], "OVER THE SOCKET")
            self.assertEqual(frame["payload"]["result"]["meta"]["agentMeta"]["provider"], "mine")
            # model "mine/<name>" reaches it with that model name, from a request too.
            status, _, body = await request(gateway, "POST", "/v1/chat/completions",
                                            {"model": "equabot", "messages": [{"role": "user", "content": "x"}]},
                                            headers={"x-equabot-model": "mine/big"})
            self.assertEqual(json.loads(body)["choices"][0]["message"]["reasoning_content"],
                             "turn 1, model big")

    async def test_tool_call_deltas_become_openai_tool_calls(self) -> None:
        async with Gateway.from_config(provider_config("tools"), state_dir=self.state, port=0, env={},
                                       providers={"tools": calls_a_tool}) as gateway:
            tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
            status, _, body = await request(gateway, "POST", "/v1/chat/completions", {
                "model": "equabot", "tools": [tool], "messages": [{"role": "user", "content": "look"}]})
            choice = json.loads(body)["choices"][0]
            self.assertEqual((status, choice["finish_reason"]), (200, "tool_calls"))
            self.assertEqual(choice["message"]["tool_calls"], [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}])

    async def test_a_factory_is_called_at_each_start_with_the_name(self) -> None:
        made: list[str] = []

        class Model:
            """A provider object: one per start, its state its own."""

            def __init__(self, name: str) -> None:
                made.append(name)
                self.calls = 0

            async def stream(self, call: ProviderCall):
                self.calls += 1
                yield TextDelta(f"call {self.calls} of start {len(made)}")

        gateway = Gateway.from_config(provider_config("obj"), state_dir=self.state, port=0, env={},
                                      providers={"obj": lambda name: Model(name).stream})
        replies = []
        for _ in range(2):
            async with gateway:
                for _ in range(2):
                    replies.append(json.loads((await chat(gateway, "x"))[1])["choices"][0]["message"]["content"])
        self.assertEqual(made, ["obj", "obj"])
        self.assertEqual(replies, ["call 1 of start 1", "call 2 of start 1", "call 1 of start 2",
                                   "call 2 of start 2"])

    async def test_a_failing_provider_settles_the_run_as_an_upstream_failure(self) -> None:
        closed: list[str] = []

        async def raises(call: ProviderCall):
            try:
                yield TextDelta("half")
                raise ConnectionError("the model's socket fell over\nsecond line")
            finally:
                closed.append("raises")

        async def yields_junk(call: ProviderCall):
            what = call.model
            yield "a bare string" if what == "str" else TextDelta(42) if what == "text" \
                else ToolCallDelta(-1, "c", "f", "{}") if what == "index" else Usage(1, None)

        async def hangs(call: ProviderCall):
            try:
                yield TextDelta("waiting")
                await asyncio.Event().wait()
            finally:
                closed.append("hangs")

        def not_a_function(name: str) -> Any:
            return 42

        providers = {"raises": raises, "junk": yields_junk, "hangs": hangs, "factory": not_a_function}
        with self.assertLogs("equabot_gw.providers", "ERROR") as logged:
            config = provider_config("raises")
            config["agents"]["list"] = [{"id": "main", "default": True},
                                        {"id": "slow", "model": "hangs/m", "timeoutSeconds": 0.3}]
            async with Gateway.from_config(config, state_dir=self.state, port=0, env={},
                                           providers={k: v for k, v in providers.items()
                                                      if k != "factory"}) as gateway:
                status, body = await chat(gateway, "x")
                self.assertEqual(status, 502)
                self.assertEqual(json.loads(body)["error"]["message"],
                                 "provider 'raises': ConnectionError: the model's socket fell over")
                status, body = await chat(gateway, "x", stream=True)
                self.assertIn(b"ConnectionError: the model's socket fell over", body)
                self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
                for model, said in (("str", "yielded a str; a provider yields TextDelta, ReasoningDelta, "
                                            "ToolCallDelta, Usage, Finish"),
                                    ("text", "yielded a TextDelta whose text is int 42"),
                                    ("index", "yielded a ToolCallDelta whose index is int -1"),
                                    ("usage", "yielded a Usage whose completion_tokens is NoneType")):
                    status, _, body = await request(
                        gateway, "POST", "/v1/chat/completions",
                        {"model": "equabot", "messages": [{"role": "user", "content": "x"}]},
                        headers={"x-equabot-model": f"junk/{model}"})
                    self.assertEqual(status, 502)
                    self.assertEqual(json.loads(body)["error"]["message"], f"provider 'junk': {said}")
                frame = await ws_run(gateway, "x", agentId="slow")      # the agent's timeout ends it
                self.assertEqual(frame["error"]["code"], "AGENT_TIMEOUT", frame)
                self.assertEqual(gateway.runtime.active, {})
        self.assertEqual(sorted(closed), ["hangs", "raises", "raises"])
        self.assertIn("Traceback", "\n".join(logged.output))
        # A factory that returns no function: the start fails, naming it, and leaves the state dir free.
        gateway = Gateway.from_config(provider_config("factory"), state_dir=self.state, port=0, env={},
                                      providers={"factory": not_a_function})
        with self.assertRaisesRegex(TypeError, "provider 'factory': the factory .* returned int"):
            await gateway.start()
        async with Gateway.from_config(base_config(), state_dir=self.state, port=0, env={}):
            pass

    async def test_names_and_values_are_checked_when_given(self) -> None:
        async def coroutine(call: ProviderCall) -> None:
            return None

        for providers, error, text in (({"echo": shouting}, ValueError, "built-in"),
                                       ({"a/b": shouting}, ValueError, "1-64 characters"),
                                       ({"": shouting}, ValueError, "1-64 characters"),
                                       ({"co": coroutine}, TypeError, "coroutine function"),
                                       ({"n": None}, TypeError, "got NoneType")):
            with self.subTest(text), self.assertRaisesRegex(error, text):
                Gateway.from_config(base_config(), state_dir=self.state, env={}, providers=providers)
        with self.assertRaisesRegex(ConfigError, "models.providers.mine: is also given as a Python provider"):
            Gateway.from_config({**provider_config(), "models": {"providers": {"mine": {"api": "echo"}}}},
                                state_dir=self.state, env={}, providers={"mine": shouting})
        with self.assertRaisesRegex(ConfigError, "unknown provider 'mine'"):      # not given: as before
            Gateway.from_config(provider_config(), state_dir=self.state, env={})
        # A JSON5 file names Python providers as a dict does.
        path = self.state / "gw.json5"
        path.write_text("{gateway: {auth: {token: '%s'}}, agents: {defaults: {model: 'mine/x'}}}" % TOKEN)
        gateway = Gateway.from_config(path, state_dir=self.state, port=0, env={}, providers={"mine": shouting})
        self.assertEqual((gateway.config_path, gateway.config.models.providers), (path, ()))

    async def test_nothing_of_a_gateways_providers_survives_it(self) -> None:
        registry = registered_providers()
        async with Gateway.from_config(provider_config(), state_dir=self.state, port=0, env={},
                                       providers={"mine": shouting}) as gateway:
            self.assertEqual(json.loads((await chat(gateway, "a b"))[1])["choices"][0]["message"]["content"], "A B")
        self.assertEqual(registered_providers(), registry)
        # The next gateway in this process does not know "mine", through its config or a request.
        with self.assertRaisesRegex(ConfigError, "unknown provider 'mine'"):
            Gateway.from_config(provider_config(), state_dir=self.state, env={})
        async with Gateway.from_config(base_config(), state_dir=self.state, port=0, env={}) as gateway:
            status, _, body = await request(gateway, "POST", "/v1/chat/completions",
                                            {"model": "equabot", "messages": [{"role": "user", "content": "x"}]},
                                            headers={"x-equabot-model": "mine"})
            self.assertEqual(status, 400)
            self.assertIn("unknown provider 'mine'", json.loads(body)["error"]["message"])
        # Nor does a run_agent after it.
        with self.assertRaisesRegex(GatewayError, "unknown provider 'mine'"):
            await run_agent("x", model="mine")

    async def test_register_provider_reaches_later_gateways_until_removed(self) -> None:
        async def quiet(call: ProviderCall):
            yield TextDelta("registered")

        register_provider("reg", shouting)
        self.addCleanup(unregister_provider, "reg")
        register_provider("reg", quiet)                      # again: replaces
        async with Gateway.from_config(provider_config("reg"), state_dir=self.state, port=0, env={}) as gateway:
            self.assertIn(b'"registered"', (await chat(gateway, "x"))[1])
        # A gateway's own provider of the same name wins over the registry's.
        async with Gateway.from_config(provider_config("reg"), state_dir=self.state, port=0, env={},
                                       providers={"reg": shouting}) as gateway:
            self.assertIn(b'"HI"', (await chat(gateway, "hi"))[1])
        self.assertEqual((await run_agent("x", model="reg")).text, "registered")
        self.assertTrue(unregister_provider("reg"))
        self.assertFalse(unregister_provider("reg"))
        with self.assertRaisesRegex(ConfigError, "unknown provider 'reg'"):
            Gateway.from_config(provider_config("reg"), state_dir=self.state, env={})
        with self.assertRaises(ValueError):
            register_provider("command", quiet)


class RunAgentTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.state = pathlib.Path(self.tmp.name)
        # No server: a run_agent that listened anywhere fails here.
        patcher = mock.patch.object(http_server.HTTPServer, "start", side_effect=AssertionError("listened"))
        patcher.start()
        self.addCleanup(patcher.stop)

    async def asyncTearDown(self) -> None:
        self.tmp.cleanup()

    async def test_events_stream_without_a_server_then_the_result(self) -> None:
        run = run_agent("stream these words", providers={"mine": shouting}, model="mine/m")
        self.assertIsInstance(run, AgentRun)
        self.assertIsNone(run.run_id)
        events = [event async for event in run]
        self.assertEqual([type(e) for e in events],
                         [Started, ReasoningDelta, TextDelta, TextDelta, TextDelta, Ended])
        self.assertEqual("".join(e.text for e in events if type(e) is TextDelta), "STREAM THESE WORDS")
        started, ended = events[0], events[-1]
        self.assertEqual((started.model, started.turn, started.run_id), ("mine/m", 1, run.run_id))
        result = await run                                   # the same run, not a second one
        self.assertIs(result, ended.result)
        self.assertIsInstance(result, AgentResult)
        self.assertEqual((result.text, result.reasoning, result.usage, result.finish_reason),
                         ("STREAM THESE WORDS", "turn 1, model m", Usage(1, 3), "stop"))
        self.assertEqual([type(e) for e in [e async for e in run]], [type(e) for e in events])   # replayed
        current = asyncio.current_task()
        self.assertEqual([t for t in asyncio.all_tasks() if t is not current], [])

    async def test_await_sessions_on_a_state_dir_and_the_default_echo(self) -> None:
        first = await run_agent("hi", state_dir=self.state, session="s")
        second = await run_agent("again", state_dir=self.state, session="s")
        self.assertEqual((first.text, second.text), ("Echo (turn 1): hi", "Echo (turn 2): again"))
        self.assertEqual(second.session_key, "agent:main:s")
        self.assertEqual((await run_agent("once")).turn, 1)       # stateless: no session
        # The state dir is free once the run is over; one a gateway holds is refused.
        lock = statelock.acquire(self.state)
        try:
            with self.assertRaisesRegex(GatewayError, "is in use"):
                await run_agent("x", state_dir=self.state, session="s")
        finally:
            lock.release()
        self.assertEqual((await run_agent("x", state_dir=self.state, session="s")).turn, 3)

    async def test_failures_refusals_and_bad_arguments(self) -> None:
        async def raises(call: ProviderCall):
            yield TextDelta("partial")
            raise RuntimeError("no model today")

        with self.assertLogs("equabot_gw.providers", "ERROR"):
            with self.assertRaises(RunError) as caught:
                await run_agent("x", providers={"bad": raises}, model="bad")
            self.assertEqual((caught.exception.reason, str(caught.exception)),
                             ("upstream", "provider 'bad': RuntimeError: no model today"))
            events = [e async for e in run_agent("x", providers={"bad": raises}, model="bad")]
        self.assertEqual([type(e) for e in events], [Started, TextDelta, Failed])
        self.assertEqual((events[-1].partial, events[-1].error.reason), ("partial", "upstream"))
        with self.assertRaisesRegex(GatewayError, "agent 'nope' does not exist"):
            await run_agent("x", agent="nope")
        with self.assertRaisesRegex(GatewayError, "agent 'nope' does not exist"):
            [e async for e in run_agent("x", agent="nope")]
        with self.assertRaisesRegex(ConfigError, "gateway.port"):
            run_agent("x", config={"gateway": {"port": "x"}})          # at once, not at the await
        with self.assertRaisesRegex(ValueError, "built-in"):
            run_agent("x", providers={"echo": raises})
        with self.assertRaises(ValueError):
            run_agent("x", gateway=Gateway.from_config(base_config(), state_dir=self.state, env={}),
                      state_dir=self.state)

    async def test_cancelling_or_aborting_stops_the_provider(self) -> None:
        stopped: list[str] = []
        slow = first_then_forever(stopped)

        with self.assertRaises(TimeoutError):
            await asyncio.wait_for(run_agent("cancelled", providers={"slow": slow}, model="slow"), 0.2)
        run = run_agent("aborted", providers={"slow": slow}, model="slow", state_dir=self.state)
        events = []
        async for event in run:
            events.append(event)
            if type(event) is TextDelta:
                self.assertTrue(run.abort())
        self.assertEqual([type(e) for e in events], [Started, TextDelta, Failed])
        self.assertEqual((events[-1].error.reason, events[-1].partial), ("aborted", "first"))
        with self.assertRaises(RunError):
            await run
        self.assertFalse(run.abort())                        # over
        self.assertEqual(stopped, ["cancelled", "aborted"])
        current = asyncio.current_task()
        self.assertEqual([t for t in asyncio.all_tasks() if t is not current], [])

    async def test_on_a_running_gateway_beside_its_http_runs(self) -> None:
        mock.patch.stopall()                                 # this one listens
        async with Gateway.from_config(provider_config(), state_dir=self.state, port=0, env={},
                                       providers={"mine": shouting}) as gateway:
            result = await run_agent("from python", gateway=gateway, session="shared")
            self.assertEqual((result.text, result.turn), ("FROM PYTHON", 1))
            status, body = await chat(gateway, "then http", key="shared")
            self.assertIn(b"turn 2, model mine", body)
        with self.assertRaisesRegex(RuntimeError, "not running"):
            await run_agent("x", gateway=gateway)


class RunAgentAsACoroutineTest(unittest.TestCase):
    """``asyncio.run``, ``create_task`` and ``TaskGroup`` take a run as they take a coroutine."""

    def test_asyncio_run_from_sync_code(self) -> None:
        run = run_agent("from sync code")
        self.assertIsInstance(run, collections.abc.Coroutine)
        result = asyncio.run(run)
        self.assertIsInstance(result, AgentResult)
        self.assertEqual(result.text, "Echo (turn 1): from sync code")

    def test_tasks_and_task_groups_and_cancelling_one(self) -> None:
        stopped: list[str] = []
        slow = first_then_forever(stopped)

        async def main() -> None:
            run = run_agent("a task")
            task = asyncio.create_task(run)
            result = await task
            self.assertEqual(result.text, "Echo (turn 1): a task")
            self.assertIs(await run, result)                 # the same run, not a second one
            async with asyncio.TaskGroup() as group:
                grouped = [group.create_task(run_agent(text)) for text in ("one", "two")]
            self.assertEqual([t.result().text for t in grouped],
                             ["Echo (turn 1): one", "Echo (turn 1): two"])
            cancelled = asyncio.create_task(run_agent("cancelled", providers={"slow": slow}, model="slow"))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await cancelled
            never = asyncio.create_task(run_agent("never started"))
            never.cancel()                                   # before its first step: it never runs
            with self.assertRaises(asyncio.CancelledError):
                await never
            current = asyncio.current_task()
            self.assertEqual([t for t in asyncio.all_tasks() if t is not current], [])

        asyncio.run(main())
        self.assertEqual(stopped, ["cancelled"])


if __name__ == "__main__":
    unittest.main()
