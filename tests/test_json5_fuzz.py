"""Fixed-seed fuzzing of equabot_gw.json5.loads: nothing but JSON5Error escapes.

Inputs are valid seeds (the corpora's valid documents and a config-like
document) mutated every way a file gets damaged: characters and bytes
flipped, two seeds spliced, truncated, slices repeated or deleted, comments,
whitespace and stray tokens inserted, deep nesting; plus token soup and
random bytes decoded leniently. Every error must be well-formed; every
accepted input must still be rejected with a trailer. Separately, documents
written by the stdlib json.dumps must read exactly as json.loads reads them.
"""

from __future__ import annotations

import json
import math
import random
import unittest
from typing import Callable, Iterator

from equabot_gw.errors import JSON5Error
from equabot_gw.json5 import MAX_DEPTH, loads
from tests.test_json5 import TRAILER, case_text, first_difference, load_corpus

SEED = 1729

# Inputs per family; the sum is the run's size (at least 100,000). Tuned to
# take about 2 s here (deep nesting costs most), well under 15 s anywhere.
INPUTS = {
    "char_flips": 16_000,
    "byte_flips": 16_000,
    "splices": 12_000,
    "truncations": 10_000,
    "repeats_and_deletions": 12_000,
    "insertions": 16_000,
    "deep_nesting": 300,
    "token_soup": 12_000,
    "random_bytes": 10_000,
}
JSON_DOCUMENTS = 5_000
JSON5_DOCUMENTS = 3_000

CONFIG_SEED = """\ufeff// equabot gateway configuration
{
  gateway: {
    port: 18789, host: '127.0.0.1',   // loopback only
    auth: { mode: "token", token: 'se\\u0063ret', },
    limits: { max_body_bytes: 0x100000, read_timeout: 30., ratio: .5e1, drift: -0, },
  },
  /* providers, in order of preference */
  "providers": [
    { kind: 'echo', },
    { kind: "openai", base_url: 'https://api.example/v1', models: ['a', "b",], },
    { kind: 'command', argv: ["/bin/sh", '-c', 'echo \\"hi\\"\\
 there'], env: {$HOME: '/tmp', _x\\u0041: +Infinity, ünï: NaN} },
  ],
  escapes: '\\x41\\u00e9\\ud83d\\ude00\\0\\b\\f\\n\\r\\t\\v\\'\\"\\\\\\a',
  empty: {}, nothing: [], flags: [true, false, null],
}
"""

# What gets inserted: comments (also broken ones), every kind of whitespace,
# punctuation, escapes and the starts of literals.
SNIPPETS = (
    "//x\n", "/**/", "/* a\n*/", "/*", "*/", "//", "/", " ", "\t", "\n", "\r", "\r\n",
    "\u2028", "\u2029", "\ufeff", "\u00a0", "\u3000", "\u200b", "\v\f",
    ",", ":", "[", "]", "{", "}", ",,", "[]", "{}", "'", '"', "\\", "\\u", "\\x",
    "\\u00", "\\ud83d", "\\udc00", "\\0", "\\1", "0x", "-", "+", ".", "e", "E",
    "Infinity", "NaN", "null", "true", "fals", "a:", "'k':", "$", "_", "\u200c",
    "\U0001f600", "\ud800", "\x00", "\x1f", "\x7f", "9" * 30, "0.", ".0e+",
)

TOKENS = (
    "{", "}", "[", "]", ":", ",", " ", "\n", "//c\n", "/*c*/", "null", "true", "false",
    "Infinity", "-Infinity", "NaN", "0", "-0", "+1", ".5", "5.", "1e3", "0x1F", "'s'",
    '"s"', "'\\n'", '"\\u0041"', "a", "$_", "\\u0061", "ünï", "'", '"', "\\", "x", "@",
)


def corpus_seeds() -> list[str]:
    """The corpora's valid documents (the small ones) and CONFIG_SEED."""
    seeds = [CONFIG_SEED]
    for filename in ("json5-tests.json", "json5-lib-tests.json", "jsontestsuite-json5.json"):
        for case in load_corpus(filename):
            text = case_text(case)
            if case["expect"] == "valid" and text is not None and len(text) < 2000:
                seeds.append(text)
    return seeds


class Mutator:
    """The ways to damage a document, each from one seeded Random."""

    def __init__(self, rng: random.Random, seeds: list[str]) -> None:
        self.rng = rng
        self.seeds = seeds

    def seed(self) -> str:
        return self.rng.choice(self.seeds)

    def char_flips(self) -> str:
        chars = list(self.seed())
        for _ in range(self.rng.randint(1, 4)):
            if chars:
                chars[self.rng.randrange(len(chars))] = self.any_char()
        return "".join(chars)

    def byte_flips(self) -> str:
        data = bytearray(self.seed().encode("utf-8", "surrogatepass"))
        for _ in range(self.rng.randint(1, 4)):
            if data:
                data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return self.lenient(bytes(data))

    def splices(self) -> str:
        a, b = self.seed(), self.seed()
        return a[:self.rng.randint(0, len(a))] + b[self.rng.randint(0, len(b)):]

    def truncations(self) -> str:
        text = self.seed()
        return text[:self.rng.randint(0, len(text))]

    def repeats_and_deletions(self) -> str:
        text = self.seed()
        i = self.rng.randint(0, len(text))
        j = self.rng.randint(i, min(len(text), i + 40))
        if self.rng.random() < 0.5:
            return text[:i] + text[j:]
        return text[:j] + text[i:j] * self.rng.randint(1, 50) + text[j:]

    def insertions(self) -> str:
        text = self.seed()
        for _ in range(self.rng.randint(1, 3)):
            i = self.rng.randint(0, len(text))
            text = text[:i] + self.rng.choice(SNIPPETS) + text[i:]
        return text

    def deep_nesting(self) -> str:
        depth = self.rng.choice((10, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 3 * MAX_DEPTH))
        opener, closer = self.rng.choice((("[", "]"), ("{a:", "}"), ("['x',{'k':", "}]")))
        closing = self.rng.choice((depth, depth - 1, depth + 1, self.rng.randint(0, depth)))
        return opener * depth + self.seed() + closer * closing

    def token_soup(self) -> str:
        return "".join(self.rng.choice(TOKENS) for _ in range(self.rng.randint(1, 30)))

    def random_bytes(self) -> str:
        return self.lenient(self.rng.randbytes(self.rng.randint(0, 64)))

    def any_char(self) -> str:
        pick = self.rng.random()
        if pick < 0.5:
            return self.rng.choice(TOKENS)[0]
        if pick < 0.8:
            return chr(self.rng.randrange(0x80))
        return chr(self.rng.randrange(0x110000))

    def lenient(self, data: bytes) -> str:
        how = self.rng.choice(("surrogateescape", "replace", "ignore", "latin-1"))
        if how == "latin-1":
            return data.decode("latin-1")
        return data.decode("utf-8", how)


class TestFuzz(unittest.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        cls.seeds = corpus_seeds()

    def test_at_least_100000_inputs(self) -> None:
        self.assertGreaterEqual(sum(INPUTS.values()), 100_000)

    def test_seeds_are_valid(self) -> None:
        for text in self.seeds:
            loads(text)

    def run_family(self, family: str) -> None:
        mutator = Mutator(random.Random(f"{SEED}:{family}"), self.seeds)
        generate: Callable[[], str] = getattr(mutator, family)
        for index in range(INPUTS[family]):
            text = generate()
            try:
                loads(text)
            except JSON5Error as error:
                self.assertWellFormed(error, text, family, index)
            except Exception as exc:    # the bug this test exists to find
                self.fail(f"{family} #{index}: {type(exc).__name__}: {exc} "
                          f"from loads({text[:300]!r})")
            else:
                with self.assertRaises(JSON5Error, msg=f"{family} #{index}: {text[:300]!r}"):
                    loads(text + TRAILER)

    def assertWellFormed(self, error: JSON5Error, text: str, family: str, index: int) -> None:
        where = f"{family} #{index}: {text[:300]!r}: {error}"
        self.assertTrue(0 <= error.pos <= len(text), where)
        self.assertTrue(1 <= error.line <= text.count("\n") + 1, where)
        self.assertGreaterEqual(error.column, 0, where)
        self.assertEqual(str(error), f"JSON5: {error.reason} at {error.line}:{error.column}", where)
        at_end = error.pos == len(text)
        if error.reason == "invalid end of input":
            self.assertTrue(at_end, where)
        else:
            self.assertFalse(at_end, where)
            self.assertTrue(error.reason.startswith(("invalid character '", "invalid identifier",
                                                     "arrays and objects nested deeper",
                                                     "integer literal of")), where)

    def test_char_flips(self) -> None:
        self.run_family("char_flips")

    def test_byte_flips(self) -> None:
        self.run_family("byte_flips")

    def test_splices(self) -> None:
        self.run_family("splices")

    def test_truncations(self) -> None:
        self.run_family("truncations")

    def test_repeats_and_deletions(self) -> None:
        self.run_family("repeats_and_deletions")

    def test_insertions(self) -> None:
        self.run_family("insertions")

    def test_deep_nesting(self) -> None:
        self.run_family("deep_nesting")

    def test_token_soup(self) -> None:
        self.run_family("token_soup")

    def test_random_bytes(self) -> None:
        self.run_family("random_bytes")


# -- JSON documents read as the stdlib reads them ------------------------------

def random_json_value(rng: random.Random, depth: int = 0) -> object:
    """A value json.dumps can write: every kind, nested up to 4 deep."""
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind < 3:
        return random_scalar(rng)
    if kind < 7:
        return random_string(rng)
    if kind < 9:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {random_string(rng): random_json_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def random_scalar(rng: random.Random) -> object:
    """null, a boolean, an int or a float, the awkward ones often."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        return rng.choice((0, 1, -1, 2**53 + 1, -(10**30), rng.randint(-10**6, 10**6)))
    return rng.choice((0.0, -0.0, 0.1, 1e300, -1e-300, 5e-324, math.inf, -math.inf, math.nan,
                       rng.uniform(-1e6, 1e6), rng.random() * 10**rng.randint(-30, 30)))


def random_string(rng: random.Random) -> str:
    chars = []
    for _ in range(rng.randint(0, 12)):
        pick = rng.random()
        if pick < 0.6:
            chars.append(chr(rng.randrange(0x20, 0x7f)))
        elif pick < 0.7:
            chars.append(chr(rng.randrange(0x20)))
        elif pick < 0.8:
            chars.append(rng.choice("\"'\\/\u2028\u2029\ufeff\u00a0"))
        elif pick < 0.9:
            chars.append(chr(rng.randrange(0x80, 0x10000)))     # surrogates included
        else:
            chars.append(chr(rng.randrange(0x10000, 0x110000)))
    return "".join(chars)


def json_documents(rng: random.Random, count: int) -> Iterator[str]:
    for _ in range(count):
        yield json.dumps(
            random_json_value(rng),
            ensure_ascii=rng.random() < 0.5,
            indent=rng.choice((None, None, 0, 2, "\t")),
            separators=rng.choice((None, (",", ":"), (" , ", " : "))),
            sort_keys=rng.random() < 0.3,
        )


# -- JSON5 documents written every way the grammar allows ----------------------

# Between any two tokens (JSON5 §7, §8).
GAPS = ("", "", " ", "\n", "\t", "\r\n", "\u2028", "\ufeff", "\u00a0", "\u3000",
        "//c\n", "// c\r", "/* c */", "/**/", " /*\n*/ ")

IDENTIFIER_STARTS = "abcxyzABCXYZ$_\u00fc\u0109\u216b\u4e2d"      # letters, Nl, $ and _
IDENTIFIER_PARTS = IDENTIFIER_STARTS + "0189\u0301\u0663\u203f\u200c\u200d"  # + Mn, Nd, Pc, ZWNJ/ZWJ


def random_json5_value(rng: random.Random, depth: int = 0) -> object:
    """Like random_json_value, but an array or object at the top, names that
    can be identifiers, and strings without surrogates (an escaped lone
    \\uD83D written before an escaped \\uDE00 would read as one character)."""
    kind = rng.randrange(7, 10) if depth == 0 else rng.randrange(10 if depth < 4 else 7)
    if kind < 3:
        return random_scalar(rng)
    if kind < 7:
        return "".join(rng.choice((
            chr(rng.randrange(0x20, 0x7f)), chr(rng.randrange(0x20)), rng.choice("\"'\\\u2028\u2029"),
            chr(rng.randrange(0x80, 0xD800)), chr(rng.randrange(0xE000, 0x110000)),
        )) for _ in range(rng.randint(0, 10)))
    if kind < 9:
        return [random_json5_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {random_name(rng): random_json5_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def random_name(rng: random.Random) -> str:
    return rng.choice(IDENTIFIER_STARTS) + "".join(
        rng.choice(IDENTIFIER_PARTS) for _ in range(rng.randint(0, 6)))


def write_json5(rng: random.Random, value: object) -> str:
    """``value`` as JSON5, each token in a randomly chosen spelling."""
    gap = lambda: rng.choice(GAPS)  # noqa: E731
    if value is None or type(value) is bool:
        return json.dumps(value)
    if type(value) is int:
        return write_int(rng, value)
    if type(value) is float:
        return write_float(rng, value)
    if type(value) is str:
        return write_string(rng, value)
    if type(value) is list:
        items = [gap() + write_json5(rng, item) + gap() for item in value]
        comma = "," if value and rng.random() < 0.5 else ""
        return "[" + ",".join(items) + comma + gap() + "]"
    assert type(value) is dict
    members = [gap() + write_name(rng, name) + gap() + ":" + gap() + write_json5(rng, item) + gap()
               for name, item in value.items()]
    comma = "," if value and rng.random() < 0.5 else ""
    return "{" + ",".join(members) + comma + gap() + "}"


def write_int(rng: random.Random, n: int) -> str:
    sign = "-" if n < 0 else rng.choice(("", "", "+"))
    if n != 0 and rng.random() < 0.3:       # -0x0 would be -0.0
        digits = f"{abs(n):x}"
        return sign + rng.choice(("0x", "0X")) + (digits.upper() if rng.random() < 0.5 else digits)
    return sign + str(abs(n))


def write_float(rng: random.Random, x: float) -> str:
    if math.isnan(x):
        return rng.choice(("NaN", "+NaN", "-NaN"))
    if math.isinf(x):
        return ("-" if x < 0 else rng.choice(("", "+"))) + "Infinity"
    sign = "-" if math.copysign(1, x) < 0 else rng.choice(("", "", "+"))
    text = repr(abs(x))
    if text.endswith(".0") and rng.random() < 0.5:
        text = text[:-1]                    # 5. (JSON5 §1.1: "a trailing decimal point")
    elif text.startswith("0.") and rng.random() < 0.5:
        text = text[1:]                     # .5 ("a leading decimal point")
    if "e" in text and rng.random() < 0.5:
        text = text.upper()
    return sign + text


def write_string(rng: random.Random, s: str) -> str:
    quote = rng.choice("'\"")
    out = [quote]
    for i, c in enumerate(s):
        if rng.random() < 0.05:
            out.append(rng.choice(("\\\n", "\\\r\n", "\\\r", "\\\u2028", "\\\u2029")))
        out.append(write_char(rng, c, quote, s[i + 1:i + 2]))
    return "".join(out) + quote


def write_char(rng: random.Random, c: str, quote: str, following: str) -> str:
    single = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    pick = rng.random()
    if c in (quote, "\\", "\n", "\r") or pick < 0.15:
        if c in single and pick < 0.1:
            return single[c]
        if c == "\0" and not following.isdigit():
            return "\\0"
        if c in (quote, "\\") or (c.isascii() and not c.isalnum() and c not in "\n\r" and pick < 0.05):
            return "\\" + c                 # "any other character ... will be included"
        if ord(c) < 0x100 and pick < 0.08:
            return f"\\x{ord(c):02x}"
        if ord(c) >= 0x10000:
            high, low = divmod(ord(c) - 0x10000, 0x400)
            return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04X}"
        return f"\\u{ord(c):04x}"
    return c


def write_name(rng: random.Random, name: str) -> str:
    if rng.random() < 0.2:
        return write_string(rng, name)
    # Escape a character now and then: "\\ UnicodeEscapeSequence" (ES5.1 §7.6).
    return "".join(f"\\u{ord(c):04x}" if rng.random() < 0.1 else c for c in name)


def json5_documents(rng: random.Random, count: int) -> Iterator[tuple[object, str]]:
    """(value, a JSON5 spelling of it) pairs."""
    for _ in range(count):
        value = random_json5_value(rng)
        yield value, rng.choice(GAPS) + write_json5(rng, value) + rng.choice(GAPS)


class TestJSON5Documents(unittest.TestCase):

    def test_loads_reads_what_was_written(self) -> None:
        rng = random.Random(f"{SEED}:json5")
        for index, (value, text) in enumerate(json5_documents(rng, JSON5_DOCUMENTS)):
            difference = first_difference(loads(text), value)
            self.assertIsNone(difference, f"#{index}: {text[:300]!r}")


class TestJSONDocuments(unittest.TestCase):

    def test_loads_reads_json_as_json_loads(self) -> None:
        # JSON5 §1: "a superset of JSON". Same values, same types, same order.
        rng = random.Random(f"{SEED}:json")
        for index, text in enumerate(json_documents(rng, JSON_DOCUMENTS)):
            difference = first_difference(loads(text), json.loads(text))
            self.assertIsNone(difference, f"#{index}: {text[:300]!r}")


if __name__ == "__main__":
    unittest.main()
