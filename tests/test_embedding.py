"""The embedding API: ``equabot_gw.Gateway`` inside another program.

Restartable (the same object, or a new one on the same state dir, three times
in one loop), usable in a thread of a program whose own loop runs in another,
and leaving nothing behind after ``stop()``: no task, thread, file
descriptor, timer, logging handler or signal handler. Under ``python -I``
from an installed wheel: tests/test_install.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import unittest
from typing import Any

import equabot_gw
from equabot_gw import Gateway
from equabot_gw.agents.sessions import SessionStore
from equabot_gw.agents.types import TurnRecord
from equabot_gw.errors import ConfigError
from equabot_gw.gateway.client import ControlClient
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
            with self.assertRaises(ConfigError):                 # beyond loopback, no secret: refused
                Gateway.from_config({"gateway": {"auth": {"mode": "none"}}}, state_dir=tmp,
                                    host="lan", env={})
            # ${VAR} comes from env, not from the process's environment.
            gateway = Gateway.from_config({"gateway": {"auth": {"token": "${MY_TOKEN}"}}},
                                          state_dir=tmp, port=0, env={"MY_TOKEN": "from-env"})
            self.assertEqual(gateway.secret.value, "from-env")


class PublicSurfaceTest(unittest.TestCase):
    def test_only_the_public_names_are_exported(self) -> None:
        self.assertEqual(equabot_gw.__all__, ["Gateway", "__version__"])
        namespace: dict[str, Any] = {}
        exec("from equabot_gw import *", namespace)
        self.assertEqual({k for k in namespace if k != "__builtins__"}, {"Gateway", "__version__"})
        for name in ("from_config", "start", "stop", "url", "__aenter__", "__aexit__"):
            self.assertTrue(getattr(Gateway, name).__doc__ or name.startswith("__"), name)

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


if __name__ == "__main__":
    unittest.main()
