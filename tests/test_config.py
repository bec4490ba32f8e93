"""Config: defaults, strict keys with dotted paths, ${VAR} substitution, masking, file lookup."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import unittest

from equabot_gw import config
from equabot_gw.errors import ConfigError, JSON5Error


class DefaultsTest(unittest.TestCase):
    def test_embedded_defaults(self) -> None:
        c = config.from_data({}, env={})
        self.assertEqual(c.gateway.port, 18789)
        self.assertEqual(c.gateway.bind, "loopback")
        self.assertFalse(c.gateway.http.endpoints.chat_completions.enabled)
        self.assertEqual(c.gateway.auth.mode, "token")
        self.assertEqual(c.gateway.http.max_body_bytes, 20 * 1024 * 1024)
        self.assertEqual(c.gateway.http.max_header_bytes, 64 * 1024)
        self.assertEqual(c.gateway.http.header_timeout, 10.0)
        self.assertEqual(c.gateway.http.keep_alive_timeout, 30.0)
        self.assertEqual(c.gateway.ws.max_payload_bytes, 25 * 1024 * 1024)
        self.assertEqual(c.gateway.shutdown_grace, 10.0)
        self.assertEqual(c.gateway.auth.rate_limit.max_attempts, 10)
        self.assertEqual(c.gateway.auth.rate_limit.window_seconds, 60.0)
        self.assertEqual(c.gateway.auth.rate_limit.lockout_seconds, 300.0)
        self.assertEqual(c.agents.defaults.model, "echo/echo")
        self.assertEqual(c.agents.defaults.max_concurrent, 16)
        self.assertEqual(c.agents.defaults.max_queued, 1024)
        self.assertEqual(c.sessions.stateless_retention_days, 7.0)

    def test_example_file_is_valid_and_complete(self) -> None:
        """config.example.json5 parses, checks, and mentions every key of the schema."""
        path = pathlib.Path(__file__).parent.parent / "config.example.json5"
        c, used = config.load(str(path), env={})
        self.assertEqual(used, path)
        self.assertTrue(c.gateway.http.endpoints.chat_completions.enabled)
        text = path.read_text()
        for key in _all_keys(config.Config):
            with self.subTest(key=key):
                self.assertIn(key, text)


def _all_keys(cls: type[config.Section]) -> set[str]:
    keys = set()
    for k in cls.KEYS:
        keys.add(k.name)
        if isinstance(k.factory, type) and issubclass(k.factory, config.Section):
            keys |= _all_keys(k.factory)
    for (owner, name), item in {**config._LIST_OF, **config._MAP_OF}.items():
        if owner is cls:
            keys |= _all_keys(item)
    return keys


class SectionTest(unittest.TestCase):
    """Sections are values: read-only, made by keyword with defaults, compared by value."""

    def test_read_only(self) -> None:
        c = config.from_data({}, env={})
        for section, name in ((c, "gateway"), (c.gateway, "port"), (c.gateway.auth.rate_limit, "new")):
            with self.subTest(name=name):
                with self.assertRaises(AttributeError):
                    setattr(section, name, 1)
                with self.assertRaises(AttributeError):
                    delattr(section, name)
        self.assertEqual(c.gateway.port, 18789)

    def test_keywords_defaults_and_required_keys(self) -> None:
        limits = config.RateLimitConfig(max_attempts=3)
        self.assertEqual((limits.max_attempts, limits.window_seconds), (3, 60.0))
        self.assertIsNot(config.GatewayConfig().auth, config.GatewayConfig().auth)   # a new nested section each
        with self.assertRaisesRegex(TypeError, "needs id"):
            config.AgentConfig()
        with self.assertRaisesRegex(TypeError, "has no max_attempt"):
            config.RateLimitConfig(max_attempt=3)
        with self.assertRaises(TypeError):
            config.RateLimitConfig(3)                       # keywords only

    def test_equal_by_value_and_hashable(self) -> None:
        a = config.from_data({"gateway": {"port": 1234}}, env={})
        b = config.from_data({"gateway": {"port": 1234}}, env={})
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertNotEqual(a, config.from_data({"gateway": {"port": 1235}}, env={}))
        self.assertNotEqual(config.EndpointConfig(), config.MetricsConfig())   # same values, other section
        self.assertEqual(repr(config.RateLimitConfig()), "RateLimitConfig(max_attempts=10, window_seconds=60.0, "
                                                         "lockout_seconds=300.0, exempt_loopback=True)")


class StrictKeysTest(unittest.TestCase):
    CASES = (
        ({"gateway": {"port": "abc"}}, 'gateway.port: expected integer 0-65535, got "abc"'),
        ({"gateway": {"port": 70000}}, "gateway.port: expected integer 0-65535, got 70000"),
        ({"gateway": {"port": True}}, "gateway.port: expected integer 0-65535, got true"),
        ({"gateway": {"prot": 1}}, "gateway.prot: unknown key"),
        ({"gatway": {}}, "gatway: unknown key"),
        ({"gateway": {"auth": {"mode": "basic"}}},
         'gateway.auth.mode: expected one of "token", "password", "none", got "basic"'),
        ({"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": "yes"}}}}},
         'gateway.http.endpoints.chatCompletions.enabled: expected true or false, got "yes"'),
        ({"gateway": {"http": {"maxBodyBytes": 1.5}}}, "gateway.http.maxBodyBytes: expected integer"),
        ({"gateway": {"http": {"headerTimeoutSeconds": float("nan")}}},
         "gateway.http.headerTimeoutSeconds: expected number"),
        ({"gateway": {"trustedProxies": "10.0.0.1"}}, "gateway.trustedProxies: expected a list of strings"),
        ({"gateway": []}, "gateway: expected an object, got an array"),
        ({"agents": {"list": [{"id": "Bad Id"}]}}, "agents.list[0].id: expected an agent id"),
        ({"agents": {"list": [{"name": "x"}]}}, "agents.list[0].id: required key is missing"),
        ({"agents": {"list": [{"id": "a"}, {"id": "A"}]}}, "agents.list[1].id: duplicate agent id 'a'"),
        ({"agents": {"list": [{"id": "a", "default": True}, {"id": "b", "default": True}]}},
         "agents.list: more than one agent is marked default"),
        ({"agents": {"list": [{"id": "a", "model": "nope/x"}]}},
         "agents.list[0].model: unknown provider 'nope'"),
        ({"models": {"providers": {"up": {"api": "openai-completions"}}}},
         "models.providers.up.baseUrl: required"),
        ({"models": {"providers": {"up": {"api": "grpc"}}}}, 'models.providers.up.api: expected one of'),
        ({"models": {"providers": {"c": {"api": "command"}}}}, "models.providers.c.command: required"),
        ({"models": {"providers": {"up": {"api": "echo", "headers": {"a": 1}}}}},
         "models.providers.up.headers: expected an object of strings"),
        # An echo path no request can reach, or one that would hide a path of the gateway's own.
        ({"gateway": {"ws": {"echoPath": "echo"}}}, 'gateway.ws.echoPath: expected a path such as "/echo", got "echo"'),
        ({"gateway": {"ws": {"echoPath": "/a b"}}}, 'gateway.ws.echoPath: expected a path such as "/echo"'),
        ({"gateway": {"ws": {"echoPath": "/health"}}}, 'gateway.ws.echoPath: "/health" is a path the gateway serves'),
        ({"gateway": {"ws": {"echoPath": "/"}}}, 'gateway.ws.echoPath: "/" is a path the gateway serves'),
        ({"gateway": {"ws": {"echoPath": "/v1/chat/completions"}}}, "gateway.ws.echoPath: "),
    )

    def test_errors_name_the_key_and_the_reason(self) -> None:
        for data, message in self.CASES:
            with self.subTest(message=message):
                with self.assertRaises(ConfigError) as caught:
                    config.from_data(data, env={})
                self.assertTrue(str(caught.exception).startswith(message), str(caught.exception))

    def test_agent_ids_are_normalised(self) -> None:
        c = config.from_data({"agents": {"list": [{"id": " Beta "}]}}, env={})
        self.assertEqual(c.agents.list[0].id, "beta")


class SubstitutionTest(unittest.TestCase):
    def test_variables_are_replaced(self) -> None:
        c = config.from_data({"gateway": {"auth": {"token": "${TOK}-x"}}}, env={"TOK": "abc"})
        self.assertEqual(c.gateway.auth.token, "abc-x")

    def test_missing_variable_is_an_error_naming_it(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.from_data({"gateway": {"auth": {"token": "${NOPE}"}}}, env={})
        self.assertEqual(str(caught.exception), "gateway.auth.token: environment variable NOPE is not set")

    def test_escaped_dollar(self) -> None:
        c = config.from_data({"gateway": {"auth": {"token": "$${LITERAL}"}}}, env={})
        self.assertEqual(c.gateway.auth.token, "${LITERAL}")

    def test_a_dollar_brace_that_is_no_reference_is_an_error(self) -> None:
        # Kept as it stood, "${MY-TOKEN}" would silently become the token itself.
        for text in ("${MY-TOKEN}", "${}", "${1X}", "a${B", "pre ${lower}x${"):
            with self.subTest(text=text):
                with self.assertRaises(ConfigError) as caught:
                    config.from_data({"gateway": {"auth": {"token": text}}}, env={"lower": "v"})
                message = str(caught.exception)
                self.assertTrue(message.startswith("gateway.auth.token: "), message)
                self.assertIn('write "$${" for a literal "${"', message)
                self.assertNotIn(text, message)
        c = config.from_data({"gateway": {"auth": {"token": "$${MY-TOKEN} $5 {x} $"}}}, env={})
        self.assertEqual(c.gateway.auth.token, "${MY-TOKEN} $5 {x} $")

    def test_substitution_in_lists(self) -> None:
        c = config.from_data({"gateway": {"trustedProxies": ["${P}"]}}, env={"P": "10.0.0.1"})
        self.assertEqual(c.gateway.trusted_proxies, ("10.0.0.1",))


class MaskingTest(unittest.TestCase):
    def test_secrets_are_masked(self) -> None:
        c = config.from_data({"gateway": {"auth": {"token": "s3cret"}},
                              "models": {"providers": {"up": {"api": "openai-completions",
                                                              "baseUrl": "http://x/v1", "apiKey": "k3y",
                                                              "headers": {"X-Org": "org-secret"}},
                                                       "keyed": {"api": "openai-completions",
                                                                 "baseUrl": "http://x/v1?key=q-secret&v=2"}}}},
                               env={})
        data = config.to_data(c, mask=True)
        text = json.dumps(data)
        for secret in ("s3cret", "k3y", "org-secret", "q-secret"):
            self.assertNotIn(secret, text)
        self.assertEqual(data["models"]["providers"]["keyed"]["baseUrl"], "http://x/v1?key=***&v=***")
        self.assertIn(config.MASK, text)
        unmasked = config.to_data(c, mask=False)
        self.assertEqual(unmasked["gateway"]["auth"]["token"], "s3cret")


class LookupTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.dir = pathlib.Path(self.tmp.name)

    def test_explicit_file_must_exist(self) -> None:
        with self.assertRaisesRegex(ConfigError, "does not exist"):
            config.load(str(self.dir / "missing.json5"), env={})

    def test_env_path_is_used(self) -> None:
        path = self.dir / "c.json5"
        path.write_text("{gateway: {port: 1234,},} // comment\n")
        c, used = config.load(None, env={"EQUABOT_CONFIG_PATH": str(path)})
        self.assertEqual((c.gateway.port, used), (1234, path))

    def test_json5_errors_carry_the_file_and_position(self) -> None:
        path = self.dir / "bad.json5"
        path.write_text('{\n  gateway: {port: 1,,}\n}')
        with self.assertRaises(ConfigError) as caught:
            config.load(str(path), env={})
        self.assertIn(f"{path}:2:21: expected a member name or '}}' after ','", str(caught.exception))

    def test_state_dir_lookup(self) -> None:
        self.assertEqual(config.state_dir("/x", env={"EQUABOT_STATE_DIR": "/y"}), pathlib.Path("/x"))
        self.assertEqual(config.state_dir(None, env={"EQUABOT_STATE_DIR": "/y"}), pathlib.Path("/y"))
        self.assertEqual(config.state_dir(None, env={}), pathlib.Path(os.path.expanduser("~/.equabot")))

    def test_json5_error_type(self) -> None:
        path = self.dir / "bad.json5"
        path.write_text("{a: }")
        with self.assertRaises(ConfigError) as caught:
            config.load(str(path), env={})
        self.assertNotIsInstance(caught.exception, JSON5Error)  # re-raised with the path



class DepthTest(unittest.TestCase):
    """A config nested past ``config.MAX_CONFIG_DEPTH`` is one config error line, never a RecursionError."""

    DEPTHS = (65, 500, 999, 1000, 100_000)

    def deep_file(self, directory: str, depth: int, kind: str) -> pathlib.Path:
        inner = "{a:" * depth + "1" + "}" * depth if kind == "object" else "[" * depth + "]" * depth
        path = pathlib.Path(directory) / f"deep-{kind}-{depth}.json5"
        path.write_text("{gateway: {auth: {token: " + inner + "}}}")
        return path

    def test_the_loader_refuses_each_depth_with_a_config_error(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for depth in self.DEPTHS:
                for kind in ("object", "array"):
                    with self.subTest(depth=depth, kind=kind):
                        with self.assertRaises(ConfigError) as caught:
                            config.load(str(self.deep_file(tmp, depth, kind)), env={})
                        self.assertIn(f"nested deeper than the limit of {config.MAX_CONFIG_DEPTH}", str(caught.exception))
                        self.assertNotIn("\n", str(caught.exception))

    def test_data_built_in_process_is_checked_without_recursion(self) -> None:
        value: object = "x"
        for _ in range(100_000):
            value = [value]
        with self.assertRaises(ConfigError) as caught:
            config.from_data({"gateway": {"auth": {"token": value}}}, env={})
        self.assertTrue(caught.exception.path.startswith("gateway.auth.token[0][0]"), caught.exception.path)
        self.assertEqual(caught.exception.reason, f"nested deeper than {config.MAX_CONFIG_DEPTH} levels")
        shallow = {"gateway": {"auth": {"token": "t"}}, "models": {"providers": {"p": {
            "api": "openai-completions", "baseUrl": "http://x", "headers": {"X-A": "b"}}}}}
        self.assertEqual(config.from_data(shallow, env={}).provider("p").headers, (("X-A", "b"),))

    def test_config_check_and_start_up_print_one_line_and_exit_2(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for depth in (500, 999, 100_000):
                path = self.deep_file(tmp, depth, "object")
                for command in (["config", "check"], ["gateway", "--port", "0", "--state-dir", tmp]):
                    with self.subTest(depth=depth, command=command[0]):
                        done = subprocess.run([sys.executable, "-m", "equabot_gw", *command, "--config", str(path)],
                                              capture_output=True, text=True, timeout=30,
                                              cwd=pathlib.Path(__file__).parent.parent)
                        self.assertEqual(done.returncode, 2, done.stderr)
                        self.assertEqual(done.stderr.count("\n"), 1, done.stderr[-2000:])
                        self.assertRegex(done.stderr, r"^equabot: config error: .*nested deeper than the limit of 64")


if __name__ == "__main__":
    unittest.main()
