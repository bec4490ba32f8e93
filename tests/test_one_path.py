"""The HTTP endpoints (chat completions and responses), the WebSocket ``agent`` method and the CLI
all call ``agents.runtime.run``, or ``run_here`` (the same run, in the caller's task)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import pathlib
import tempfile
import unittest
from unittest import mock

from equabot_gw import agent_cli, run_agent
from equabot_gw.agents import runtime as agent_runtime
from equabot_gw.gateway.client import ControlClient
from tests.support import TOKEN, base_config, running_gateway, write_config


class OnePathTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.calls: list[tuple[str, str, bool | str]] = []
        original, original_here = agent_runtime.run, agent_runtime.run_here

        def recording_run(runtime, request, digest=None, meta=None, *, watched=True):
            self.calls.append((request.origin, request.message, watched))
            return original(runtime, request, digest, meta, watched=watched)

        async def recording_run_here(runtime, request, left="cancelled"):
            self.calls.append((request.origin, request.message, "here"))
            return await original_here(runtime, request, left)

        for name, replacement in (("run", recording_run), ("run_here", recording_run_here)):
            patcher = mock.patch.object(agent_runtime, name, replacement)
            patcher.start()
            self.addCleanup(patcher.stop)

    async def test_every_door_calls_run(self) -> None:
        data = base_config()
        data["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
        async with running_gateway(data) as gw:
            # HTTP
            body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "via http"}]})
            reader, writer = await asyncio.open_connection(gw.host, gw.server.port)
            writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                          f"Content-Type: application/json\r\nConnection: close\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
            self.assertIn(b"Echo (turn 1): via http", await reader.read())
            writer.close()
            # HTTP /v1/responses
            body = json.dumps({"model": "x", "input": "via responses"})
            reader, writer = await asyncio.open_connection(gw.host, gw.server.port)
            writer.write((f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                          f"Content-Type: application/json\r\nConnection: close\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
            self.assertIn(b"Echo (turn 1): via responses", await reader.read())
            writer.close()
            # WebSocket `agent` (and the CLI's default, remote, path)
            client = await ControlClient.open(gw.url, TOKEN)
            await client.request("agent", {"message": "via ws"})
            await client.close()
            with tempfile.TemporaryDirectory() as tmp:
                args = argparse.Namespace(config=None, state_dir=tmp, local=False, message="via cli remote",
                                          agent=None, session_key=None, timeout=None, json=True, url=gw.url,
                                          token=TOKEN)
                with contextlib.redirect_stdout(io.StringIO()) as out:
                    self.assertEqual(await agent_cli.run_agent_command(args), 0)
            # Both continue the main session (agent:main:main), one turn after the other.
            self.assertEqual(json.loads(out.getvalue())["result"]["payloads"][0]["text"],
                             "Echo (turn 2): via cli remote")
        # CLI --local
        with tempfile.TemporaryDirectory() as tmp:
            path = write_config(pathlib.Path(tmp), base_config())
            args = argparse.Namespace(config=str(path), state_dir=tmp, local=True, message="via cli local",
                                      agent=None, session_key=None, timeout=None, json=False, url=None,
                                      token=None)
            with contextlib.redirect_stdout(io.StringIO()) as out:
                self.assertEqual(await agent_cli.run_agent_command(args), 0)
            self.assertEqual(out.getvalue(), "Echo (turn 1): via cli local\n")
        # Only a door that waits for the whole answer says nobody follows the reply as it is
        # made; the chat door's unkeyed run goes on in the request's task ("here").
        self.assertEqual(self.calls, [("openai", "via http", "here"), ("responses", "via responses", False),
                                      ("ws", "via ws", True), ("ws", "via cli remote", True),
                                      ("cli", "via cli local", True)])

    async def test_run_agent_calls_run_on_its_own_runtime_and_on_a_gateways(self) -> None:
        self.assertEqual((await run_agent("via run_agent")).text, "Echo (turn 1): via run_agent")
        events = [event async for event in run_agent("via run_agent, iterated")]
        self.assertEqual(events[-1].result.text, "Echo (turn 1): via run_agent, iterated")
        async with running_gateway() as gw:
            self.assertEqual((await run_agent("via a gateway", gateway=gw)).text, "Echo (turn 1): via a gateway")
        self.assertEqual(self.calls, [("embed", "via run_agent", True), ("embed", "via run_agent, iterated", True),
                                      ("embed", "via a gateway", True)])


if __name__ == "__main__":
    unittest.main()
