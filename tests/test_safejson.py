"""The untrusted-JSON decoder: same values as the standard decoder, bounded depth, strict values.

Both paths are checked against ``json.loads`` on JSONTestSuite's cases (its
y_ texts must decode to the same value, its n_ texts must be refused) and
on mutated seeds; the sliced decoder is forced on small inputs by lowering
its threshold.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
import unittest
from pathlib import Path
from unittest import mock

from equabot_gw import safejson

CORPUS = Path(__file__).parent / "data" / "json5" / "jsontestsuite-json5.json"


def sliced(data, **kw):
    """Decode with the iterative, loop-yielding decoder whatever the size."""
    with mock.patch.object(safejson, "MAX_VALUES_AT_ONCE", -1):
        return asyncio.run(safejson.loads_async(data, **kw))


def both(data, **kw):
    return safejson.loads(data, **kw), sliced(data, **kw)


def same(a, b) -> bool:
    """Equal values, with floats compared by representation (so -0.0 != 0.0) and types kept."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


class CorpusTest(unittest.TestCase):
    """JSONTestSuite (nst, MIT): y_ texts decode as json.loads does; n_ texts are refused."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.cases = json.loads(CORPUS.read_text(encoding="utf-8"))["cases"]

    def test_valid_texts_decode_like_the_standard_decoder(self) -> None:
        checked = 0
        for case in self.cases:
            if case["json_verdict"] != "y":
                continue
            raw = base64.b64decode(case["text_b64"])
            with self.subTest(case["name"]):
                expected = json.loads(raw)
                fast, slow = both(raw)
                self.assertTrue(same(fast, expected), (fast, expected))
                self.assertTrue(same(slow, expected), (slow, expected))
                checked += 1
        self.assertGreater(checked, 90)

    def test_invalid_texts_are_refused_by_both_paths(self) -> None:
        refused = 0
        for case in self.cases:
            if case["json_verdict"] != "n":
                continue
            raw = base64.b64decode(case["text_b64"])
            with self.subTest(case["name"]):
                try:
                    json.loads(raw)
                except (ValueError, RecursionError):
                    pass
                else:
                    # Python's decoder is lenient on NaN/Infinity: we are not.
                    self.assertRegex(raw, rb"NaN|Infinity")
                with self.assertRaises(json.JSONDecodeError):
                    safejson.loads(raw)
                with self.assertRaises(json.JSONDecodeError):
                    sliced(raw)
                refused += 1
        self.assertGreater(refused, 100)

    def test_implementation_defined_texts_get_one_verdict_from_both_paths(self) -> None:
        for case in self.cases:
            if case["json_verdict"] != "i":
                continue
            raw = base64.b64decode(case["text_b64"])
            with self.subTest(case["name"]):
                verdicts = []
                for decode in (safejson.loads, sliced):
                    try:
                        verdicts.append(("ok", json.dumps(decode(raw))))
                    except json.JSONDecodeError:
                        verdicts.append(("refused", None))
                self.assertEqual(verdicts[0], verdicts[1])


class DepthTest(unittest.TestCase):
    def test_100000_levels_are_refused_without_recursion(self) -> None:
        for opener, closer in (("[", "]"), ('{"a":', "}")):
            text = opener * 100_000 + "1" + closer * 100_000
            for decode in (safejson.loads, sliced):
                with self.subTest(opener=opener, decode=decode.__name__):
                    with self.assertRaisesRegex(json.JSONDecodeError, "nested deeper than 128 levels"):
                        decode(text)

    def test_exactly_the_limit_is_accepted_one_more_is_not(self) -> None:
        for depth in (1, 5, safejson.MAX_DEPTH):
            text = '{"a":[' * (depth // 2) + "[" * (depth % 2) + "0" + "]" * (depth % 2) + "]}" * (depth // 2)
            fast, slow = both(text)
            self.assertEqual(fast, json.loads(text))
            self.assertEqual(slow, json.loads(text))
        over = "[" * (safejson.MAX_DEPTH + 1) + "]" * (safejson.MAX_DEPTH + 1)
        for decode in (safejson.loads, sliced):
            with self.assertRaises(json.JSONDecodeError):
                decode(over)

    def test_a_custom_limit(self) -> None:
        self.assertEqual(safejson.loads("[[1]]", max_depth=2), [[1]])
        for decode in (safejson.loads, sliced):
            with self.assertRaises(json.JSONDecodeError):
                decode("[[[1]]]", max_depth=2)

    def test_many_shallow_containers_are_not_deep(self) -> None:
        text = json.dumps([[{"a": [1]}] for _ in range(1000)])
        self.assertEqual(safejson.loads(text), json.loads(text))


class StrictValuesTest(unittest.TestCase):
    def test_nan_and_infinity_literals_are_refused(self) -> None:
        for text in ("NaN", "[Infinity]", '{"turns": -Infinity}', '{"a": [1, NaN]}'):
            for decode in (safejson.loads, sliced):
                with self.subTest(text=text, decode=decode.__name__):
                    with self.assertRaisesRegex(json.JSONDecodeError, "is not a JSON value"):
                        decode(text)

    def test_numbers_overflowing_to_infinity_are_refused(self) -> None:
        for text in ("1e999", "[-1e400]", '{"t": 1.5e309}'):
            for decode in (safejson.loads, sliced):
                with self.subTest(text=text, decode=decode.__name__):
                    with self.assertRaisesRegex(json.JSONDecodeError, "out of range"):
                        decode(text)
        self.assertEqual(safejson.loads("1e308"), 1e308)
        self.assertEqual(safejson.loads("1e-999"), 0.0)

    def test_integers_past_the_conversion_limit_are_refused_as_json_errors(self) -> None:
        for decode in (safejson.loads, sliced):
            with self.assertRaises(json.JSONDecodeError):
                decode("[" + "1" * 5000 + "]")

    def test_lone_surrogates_are_refused_pairs_and_escaped_backslashes_are_not(self) -> None:
        for text in ('"\\ud800"', '["\\udc00"]', '{"auth": {"token": "\\ud800x"}}', '{"\\ud800": 1}',
                     '"\\ud83d\\ud83d"'):
            for decode in (safejson.loads, sliced):
                with self.subTest(text=text, decode=decode.__name__):
                    with self.assertRaisesRegex(json.JSONDecodeError, "surrogate"):
                        decode(text)
        for decode in (safejson.loads, sliced):
            self.assertEqual(decode('"\\ud83d\\ude00"'), "\U0001F600")
            self.assertEqual(decode('"\\\\ud800"'), "\\ud800")

    def test_bytes_must_be_valid_unicode(self) -> None:
        for raw in (b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\xaf"'):
            with self.subTest(raw=raw):
                with self.assertRaises(json.JSONDecodeError):
                    safejson.loads(raw)
        self.assertEqual(safejson.loads('"é"'.encode("utf-16")), "é")
        self.assertEqual(safejson.loads(b'\xef\xbb\xbf{"a": 1}'), {"a": 1})

    def test_errors_carry_a_position(self) -> None:
        for decode in (safejson.loads, sliced):
            with self.assertRaises(json.JSONDecodeError) as caught:
                decode('{"a": 1,\n "b": ]}')
            self.assertEqual((caught.exception.lineno, caught.exception.colno), (2, 7))


class SlicedDecodeTest(unittest.TestCase):
    def test_a_large_body_gives_the_loop_back_while_it_decodes(self) -> None:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "a"}] * 200_000})

        async def main() -> tuple[object, float]:
            gaps = []

            async def ticker() -> None:
                last = time.perf_counter()
                while True:
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now
            task = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)
            value = await safejson.loads_async(body)
            task.cancel()
            return value, max(gaps)

        value, worst = asyncio.run(main())
        self.assertEqual(value, json.loads(body))
        # Slices are 5 ms; 100 ms is a sanity bound for a loaded CI machine.
        self.assertLess(worst, 0.1)

    def test_shapes_that_defeat_the_windows_still_decode_in_linear_time(self) -> None:
        # Containers just too big for a window, nested 100 deep: every attempt to
        # hand them to the C scanner fails, and the failures must not add up.
        chain = "[" + ",".join(["[" * 100 + "1," * 2100 + "1" + "]" * 100] * 100) + "]"
        nested_commas = "[" + ",".join(["[1," * 60 + "1" + "]" * 60] * 2000) + "]"
        for text in (chain, nested_commas):
            started = time.perf_counter()
            self.assertEqual(sliced(text), json.loads(text))
            self.assertLess(time.perf_counter() - started, 10.0)   # ~0.5 s here; a sanity bound

    def test_small_texts_take_the_one_call_path(self) -> None:
        with mock.patch.object(safejson, "_iterdecode") as iterdecode:
            self.assertEqual(asyncio.run(safejson.loads_async('{"a": [1, 2]}')), {"a": [1, 2]})
        iterdecode.assert_not_called()


SEEDS = (
    '{"model": "equabot", "messages": [{"role": "user", "content": "hi"}], "stream": true}',
    '[1, -2.5e3, true, false, null, "a\\"b\\u00e9\\n", {"x": {}}, []]',
    '{"a": {"b": {"c": [0, -0, 1.0E+2, "\\ud83d\\ude00"]}}}',
)


class FuzzTest(unittest.TestCase):
    """Mutated seeds (flips, splices, truncations, repeats): both paths agree with json.loads."""

    def test_mutations_agree_with_the_standard_decoder(self) -> None:
        rng = random.Random(1234)
        alphabet = '{}[]",:0123456789.eE+-tfnrul \\ua'
        for _ in range(3000):
            text = rng.choice(SEEDS)
            for _ in range(rng.randint(1, 3)):
                op = rng.randrange(4)
                i = rng.randrange(len(text) + 1)
                if op == 0:
                    text = text[:i] + rng.choice(alphabet) + text[i + 1:]
                elif op == 1:
                    text = text[:i]
                elif op == 2:
                    other = rng.choice(SEEDS)
                    j = rng.randrange(len(other) + 1)
                    text = text[:i] + other[j:]
                else:
                    text = text[:i] + text[i:i + 8] * 3 + text[i + 8:]
            try:
                expected = ("ok", json.loads(text))
            except (ValueError, RecursionError):
                expected = ("refused", None)
            for decode in (safejson.loads, sliced):
                try:
                    got = ("ok", decode(text))
                except json.JSONDecodeError:
                    got = ("refused", None)
                if expected[0] == "ok" and got[0] == "refused":
                    # Only our deliberate refusals may differ.
                    self.assertTrue(_has_forbidden_value(expected[1]), text)
                    continue
                self.assertEqual(got[0], expected[0], text)
                if got[0] == "ok":
                    self.assertTrue(same(got[1], expected[1]), text)


def _has_forbidden_value(value: object) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, str) and any(0xD800 <= ord(ch) <= 0xDFFF for ch in item):
            return True
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


if __name__ == "__main__":
    unittest.main()
