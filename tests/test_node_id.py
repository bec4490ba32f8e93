"""``gateway.nodeId``: checked strictly, and carried by run ids and completion ids.

Behind a balancer (docs/scale-out.md) an id names the node that holds its
run, so a later request about it can be routed there: ``run_<node>_<hex>``
and ``chatcmpl-<node>-<hex>``; without a node id the ids keep their plain
shape.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import tempfile
import unittest
from pathlib import Path

from equabot_gw import config as config_mod
from equabot_gw.agents.runtime import Runtime, run
from equabot_gw.agents.types import AgentRequest
from equabot_gw.errors import ConfigError
from tests.support import TOKEN, base_config, running_gateway


def with_node(node: str | None) -> dict:
    data = base_config()
    if node is not None:
        data["gateway"]["nodeId"] = node
    return data


class NodeIdConfigTest(unittest.TestCase):
    def test_default_is_empty(self) -> None:
        self.assertEqual(config_mod.from_data({}, env={}).gateway.node_id, "")

    def test_accepted_values(self) -> None:
        for node in ("", "n0", "eu-west_1", "A" * 32, "-_-"):
            with self.subTest(node=node):
                self.assertEqual(config_mod.from_data(with_node(node), env={}).gateway.node_id, node)

    def test_rejected_values_name_the_key(self) -> None:
        for node in ("a b", "A" * 33, "n/0", "nœud", "n0\n", 7, ["n0"]):
            with self.subTest(node=node):
                with self.assertRaises(ConfigError) as caught:
                    config_mod.from_data(with_node(node), env={})
                self.assertIn("gateway.nodeId", str(caught.exception))

    def test_from_the_environment(self) -> None:
        data = with_node("${EQUABOT_NODE_ID}")
        config = config_mod.from_data(data, env={"EQUABOT_NODE_ID": "n2"})
        self.assertEqual(config.gateway.node_id, "n2")
        with self.assertRaises(ConfigError):
            config_mod.from_data(data, env={"EQUABOT_NODE_ID": "not a node"})


class RunIdTest(unittest.IsolatedAsyncioTestCase):
    async def run_ids(self, node: str | None) -> list[str]:
        with tempfile.TemporaryDirectory() as tmp:
            runtime = Runtime(config_mod.from_data(with_node(node), env={}), Path(tmp))
            await runtime.start()
            try:
                ids = []
                for _ in range(3):
                    handle = run(runtime, AgentRequest(message="hi"))
                    result = await handle.wait()
                    self.assertEqual(result.run_id, handle.id)
                    ids.append(handle.id)
                return ids
            finally:
                await runtime.stop(0)

    async def test_run_ids_carry_the_node(self) -> None:
        ids = await self.run_ids("eu-1_b")
        for run_id in ids:
            self.assertRegex(run_id, r"^run_eu-1_b_[0-9a-f]+$")
        self.assertEqual(len(set(ids)), 3)

    async def test_run_ids_without_a_node(self) -> None:
        for run_id in await self.run_ids(None):
            self.assertRegex(run_id, r"^run_[0-9a-f]+$")


class CompletionIdTest(unittest.IsolatedAsyncioTestCase):
    async def completion_ids(self, node: str | None) -> list[str]:
        async with running_gateway(with_node(node)) as gateway:
            port = int(gateway.url.rsplit(":", 1)[1])

            def post(stream: bool) -> str:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                body = {"model": "equabot", "messages": [{"role": "user", "content": "hi"}]}
                if stream:
                    body["stream"] = True
                conn.request("POST", "/v1/chat/completions", json.dumps(body),
                             {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
                response = conn.getresponse()
                raw = response.read().decode()
                conn.close()
                self.assertEqual(response.status, 200, raw)
                if not stream:
                    return json.loads(raw)["id"]
                ids = {json.loads(line[6:])["id"] for line in raw.splitlines()
                       if line.startswith("data: {")}
                self.assertEqual(len(ids), 1, ids)
                return ids.pop()

            return [await asyncio.to_thread(post, stream) for stream in (False, True)]

    async def test_completion_ids_carry_the_node(self) -> None:
        ids = await self.completion_ids("n7")
        for completion_id in ids:
            self.assertRegex(completion_id, r"^chatcmpl-n7-[0-9a-f]+$")
        self.assertNotEqual(ids[0], ids[1])

    async def test_completion_ids_without_a_node(self) -> None:
        for completion_id in await self.completion_ids(None):
            self.assertRegex(completion_id, r"^chatcmpl-[0-9a-f]+$")

    def test_the_node_can_be_read_back_from_an_id(self) -> None:
        # The balancer's rule (bench/scaleout/haproxy.cfg) takes everything
        # between the prefix and the last separator: node ids may hold - and _.
        pattern = re.compile(r"^(run|resp|chatcmpl)[_-](.+)[_-][0-9a-f]+$")
        for node in ("n0", "eu-1_b", "a_b-c"):
            for made in (f"run_{node}_0a1b2c3d4e5f1f", f"chatcmpl-{node}-0a1b2c3d4e5f2"):
                self.assertEqual(pattern.match(made)[2], node)


if __name__ == "__main__":
    unittest.main()
