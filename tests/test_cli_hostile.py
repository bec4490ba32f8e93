"""Hostile and mistaken input to the command line and the config loader.

Values a config file can spell that no key can take (integers of thousands
of digits), files that never end, flags naming what cannot be used: each is
one line on stderr with the exit status of its kind (2: config or
arguments), never a traceback and never a hang.
"""

from __future__ import annotations

import unittest
from typing import Any

from equabot_gw import config
from equabot_gw.errors import ConfigError
from tests.test_cli import CLITestCase, free_port

# A JSON5 hexadecimal literal of 4,000 digits: an int of 4,817 decimal digits,
# past what Python converts to text (4,300) and past what a float holds.
HUGE_HEX = "0x" + "f" * 4000
# A decimal literal of 400 digits: text converts, a float cannot hold it.
HUGE_DECIMAL = "1" + "0" * 399


class HugeNumbersInConfigTest(CLITestCase):
    """Numbers past what a JSON number holds exactly (RFC 8259 §6: ±(2^53 - 1)) are refused by name."""

    CASES = (
        # (where, literal, what the message names)
        ("gateway: {port: %s}", HUGE_HEX, "gateway.port: expected integer 0-65535, got an integer of 4817 digits"),
        ("gateway: {http: {maxBodyBytes: %s}}", HUGE_HEX,
         "gateway.http.maxBodyBytes: expected integer >= 1024 and at most 9007199254740991 (2^53 - 1), "
         "got an integer of 4817 digits"),
        ("agents: {defaults: {maxQueued: %s}}", str(2**53),
         "agents.defaults.maxQueued: expected integer >= 0 and at most 9007199254740991 (2^53 - 1), "
         "got an integer of 16 digits"),
        ("gateway: {shutdownGraceSeconds: %s}", HUGE_DECIMAL,
         "gateway.shutdownGraceSeconds: expected number >= 0, got an integer of 400 digits"),
        ("gateway: {shutdownGraceSeconds: %s}", HUGE_HEX,
         "gateway.shutdownGraceSeconds: expected number >= 0, got an integer of 4817 digits"),
    )

    def test_config_check_names_the_key_in_one_line(self) -> None:
        for where, literal, message in self.CASES:
            with self.subTest(message=message):
                path = self.dir / "huge.json5"
                path.write_text("{" + where % literal + "}", encoding="utf-8")
                done = self.cli("config", "check", "--config", str(path))
                line = self.assertOneLineError(done, 2, f"config error: {message}")
                self.assertLess(len(line), 300)

    def test_the_largest_exact_integer_is_taken(self) -> None:
        loaded = config.from_data({"gateway": {"http": {"maxBodyBytes": 2**53 - 1}}}, env={})
        self.assertEqual(loaded.gateway.http.max_body_bytes, 2**53 - 1)

    def test_from_data_raises_config_error_only(self) -> None:
        for digits, value in ((4817, 16**4000), (401, 10**400), (401, -(10**400))):
            for n, data in enumerate(({"gateway": {"shutdownGraceSeconds": value}}, {"gateway": {"port": value}},
                                      {"agents": {"defaults": {"model": value}}},
                                      {"gateway": {"auth": {"mode": value}}})):
                with self.subTest(digits=digits, case=n), self.assertRaises(ConfigError) as caught:
                    config.from_data(data, env={})
                self.assertIn(f"got an integer of {digits} digits", str(caught.exception))


class EndlessConfigFileTest(CLITestCase):
    """A config path that never ends (a device, a runaway file) is refused at a bound, not read into memory."""

    def test_dev_zero_is_refused_at_once(self) -> None:
        for args in (("config", "check"), ("--port", "0", "--state-dir", str(self.state))):
            with self.subTest(args=args):
                done = self.cli(*args, "--config", "/dev/zero")
                self.assertOneLineError(done, 2, "config error: config file /dev/zero is larger than 16 MiB")

    def test_a_file_one_byte_over_the_bound_is_refused(self) -> None:
        path = self.dir / "big.json5"
        with open(path, "wb") as file:
            file.write(b"{}")
            file.write(b" " * (config.MAX_CONFIG_BYTES - 1))
        with self.assertRaises(ConfigError) as caught:
            config.load(str(path), env={})
        self.assertEqual(str(caught.exception), f"config file {path} is larger than 16 MiB")
        path.write_bytes(b"{}" + b" " * (config.MAX_CONFIG_BYTES - 2))    # at the bound: read
        self.assertEqual(config.load(str(path), env={})[1], path)


class GatewayURLTest(CLITestCase):
    """``--url`` is checked whole when the flags are read: a URL that can never be used is a usage
    error (exit 2), and a URL differing only in the case of its scheme works as any other."""

    REFUSED = (
        ("http://127.0.0.1:1/#top", "argument --url: a gateway URL has no fragment ('#')"),
        ("http://me:hunter2@127.0.0.1:1", "argument --url: credentials do not belong in the URL: "
                                          "pass the secret with --token"),
        ("http://a b:1/", "argument --url: expected a gateway URL"),
        ("http://127.0.0.1:1/\x1b[2J", "argument --url: expected a gateway URL"),
    )

    def test_a_url_that_cannot_be_used_is_a_usage_error(self) -> None:
        for url, message in self.REFUSED:
            with self.subTest(url=url):
                done = self.cli("agent", "-m", "x", "--state-dir", str(self.state), "--url", url)
                line = self.assertOneLineError(done, 2, message)
                self.assertNotIn("hunter2", line)
                self.assertTrue(line.isprintable(), line)

    def test_the_scheme_may_be_upper_case(self) -> None:
        port = free_port()          # nothing listens: the URL is used, and the connection refused
        for url in (f"HTTP://127.0.0.1:{port}", f"Ws://127.0.0.1:{port}"):
            with self.subTest(url=url):
                done = self.cli("agent", "-m", "x", "--state-dir", str(self.state), "--url", url)
                self.assertOneLineError(done, 1, f"cannot reach the gateway at {url.lower()}")


class StateDirIsAFileTest(CLITestCase):
    def test_every_command_says_it_is_not_a_directory(self) -> None:
        state = self.dir / "state-file"
        state.write_text("not a directory\n")
        for args in (("--port", "0"), ("agent", "-m", "x", "--local"), ("sessions", "list")):
            with self.subTest(args=args):
                done = self.cli(*args, "--state-dir", str(state))
                self.assertOneLineError(done, 2, f"equabot: state dir {state} is not a directory")
        self.assertEqual(state.read_text(), "not a directory\n")


class ErrorLinesAreInertTest(CLITestCase):
    """What an error quotes (a config file's member name) is escaped:
    it can neither add a line nor send the operator's terminal an escape sequence."""

    def assertInertLine(self, done: Any, code: int, *parts: str) -> None:
        line = self.assertOneLineError(done, code, *parts)
        self.assertTrue(line.isprintable(), repr(line))

    def test_a_config_key_with_escape_sequences(self) -> None:
        for text, part in (('{"\\u001b[2J\\nX": 1}', "config error: \\x1b[2J\\nX: unknown key"),
                           ('{gateway: {"\\u001b]0;t\\u0007": 1 2}}', "\\x1b]0;t\\x07")):
            with self.subTest(text=text):
                path = self.dir / "esc.json5"
                path.write_text(text, encoding="utf-8")
                self.assertInertLine(self.cli("config", "check", "--config", str(path)), 2, part)


class BlankMessageTest(CLITestCase):
    """``agent -m ""`` (an unset variable) is refused before any run, as the original command line
    refuses it, instead of sending a blank turn into the session."""

    def test_blank_messages_are_usage_errors(self) -> None:
        for message in ("", "  \t\n"):
            with self.subTest(message=message):
                done = self.cli("agent", "-m", message, "--local", "--state-dir", str(self.state))
                self.assertOneLineError(done, 2, "argument --message/-m: expected a message that is not blank")
                self.assertEqual(done.stdout, "")
        self.assertFalse(self.state.exists())       # nothing ran, nothing was created


class DottedKeyTest(unittest.TestCase):
    """A flattened key (``"gateway.port": 1``) is not reported under the name of the real key
    it spells, which would read as if ``gateway.port`` itself were unknown."""

    CASES = (
        ({"gateway.port": 1}, '"gateway.port": unknown key; keys do not take dotted names: '
                              "write gateway: {port: …}"),
        ({"gateway": {"auth.rateLimit.maxAttempts": 3}},
         'gateway["auth.rateLimit.maxAttempts"]: unknown key; keys do not take dotted names: '
         "write auth: {rateLimit: {maxAttempts: …}}"),
        ({"gateway": {"x.y": 1}}, 'gateway["x.y"]: unknown key (known keys: auth, bind,'),
        ({"gateway": {1: 1}}, "gateway.1: unknown key (known keys: auth, bind,"),   # a dict from code
    )

    def test_the_error_quotes_the_dotted_name(self) -> None:
        for data, message in self.CASES:
            with self.subTest(message=message), self.assertRaises(ConfigError) as caught:
                config.from_data(data, env={})
            self.assertTrue(str(caught.exception).startswith(message), str(caught.exception))


if __name__ == "__main__":
    unittest.main()
