"""A small JSON Schema validator: the subset OpenAI's published schemas use.

Owns validation of decoded JSON against a schema document: ``type`` (a name
or a list), ``enum``, ``const``, ``properties``/``required``/
``additionalProperties``, ``minProperties``/``maxProperties``/
``propertyNames``, ``items``/``minItems``/``maxItems``, ``minimum``/
``maximum``, ``minLength``/``maxLength``/``pattern``, ``anyOf``/``oneOf``/
``allOf`` and local ``$ref``s, which apply together with the keywords beside
them (JSON Schema 2020-12, as OpenAPI 3.1 writes it). OpenAPI's
``discriminator`` only narrows which alternatives are tried: an alternative
whose discriminating property (or ``type``) cannot hold the instance's value
is skipped, which changes no verdict and keeps a 28-way ``oneOf`` from
validating every alternative. Unknown keywords (descriptions, formats,
examples, ``x-*``) are ignored, as JSON Schema allows. Returns every problem
found, each with a JSON pointer. Nesting is bounded (``MAX_DEPTH``), so a
deep instance yields a problem, never a ``RecursionError``.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any, Final

_TYPES: Final = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    and math.isfinite(v),
}

SCHEMAS_PATH: Final = pathlib.Path(__file__).with_name("openai-chat-schemas.json")
RESPONSES_SCHEMAS_PATH: Final = pathlib.Path(__file__).with_name("openai-responses-schemas.json")
# Schemas entered within one another (each $ref, alternative, property or item
# is one level): far above what OpenAI's schemas need for our objects, far
# below Python's recursion limit.
MAX_DEPTH: Final = 192
# The property an alternative is picked by when the schema names no discriminator.
_DEFAULT_DISCRIMINATOR: Final = "type"


class Validator:
    """Validates instances against the definitions of one schema document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._patterns: dict[str, re.Pattern[str]] = {}

    @classmethod
    def openai(cls) -> Validator:
        """The OpenAI chat schemas shipped with this package (MIT, see LICENSE-openai-openapi)."""
        return cls(json.loads(SCHEMAS_PATH.read_text(encoding="utf-8")))

    @classmethod
    def openai_responses(cls) -> Validator:
        """The OpenAI Responses schemas shipped with this package (MIT, see LICENSE-openai-openapi)."""
        return cls(json.loads(RESPONSES_SCHEMAS_PATH.read_text(encoding="utf-8")))

    def errors(self, instance: Any, schema_name: str) -> list[str]:
        """Every problem of ``instance`` against ``components.schemas[schema_name]``."""
        return self._check(instance, {"$ref": f"#/components/schemas/{schema_name}"}, "", 0)

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported: {ref}")
        node: Any = self.document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _check(self, value: Any, schema: dict[str, Any] | bool, where: str, depth: int) -> list[str]:
        if schema is True or schema == {}:
            return []
        if schema is False:
            return [f"{where or '/'}: no value is allowed here"]
        if depth > MAX_DEPTH:
            return [f"{where or '/'}: nested more than {MAX_DEPTH} schemas deep"]
        problems: list[str] = []
        if "$ref" in schema:
            problems += self._check(value, self._resolve(schema["$ref"]), where, depth + 1)
            if problems:
                return problems
        for keyword in ("type", "enum", "const"):
            if keyword in schema:
                problems += getattr(self, "_" + keyword)(value, schema[keyword], where)
        if problems:
            return problems
        for keyword in ("allOf", "anyOf", "oneOf"):
            if keyword in schema:
                problems += getattr(self, "_" + keyword.lower())(value, schema, keyword, where, depth + 1)
        if problems:
            return problems
        if isinstance(value, dict):
            problems += self._object(value, schema, where, depth + 1)
        elif isinstance(value, list):
            problems += self._array(value, schema, where, depth + 1)
        elif isinstance(value, str):
            problems += self._bounds(len(value), schema, "minLength", "maxLength", where, "length")
            if "pattern" in schema and not self._pattern(schema["pattern"]).search(value):
                problems.append(f"{where or '/'}: {value[:80]!r} does not match {schema['pattern']!r}")
        elif _TYPES["number"](value):
            problems += self._bounds(value, schema, "minimum", "maximum", where, "value")
        return problems

    def _pattern(self, pattern: str) -> re.Pattern[str]:
        compiled = self._patterns.get(pattern)
        if compiled is None:
            compiled = self._patterns[pattern] = re.compile(pattern)
        return compiled

    def _type(self, value: Any, expected: str | list[str], where: str) -> list[str]:
        kinds = [expected] if isinstance(expected, str) else expected
        if any(_TYPES[k](value) for k in kinds):
            return []
        return [f"{where or '/'}: expected {' or '.join(kinds)}, got {type(value).__name__}"]

    def _enum(self, value: Any, options: list[Any], where: str) -> list[str]:
        return [] if value in options else [f"{where or '/'}: {value!r} is not one of {options!r}"]

    def _const(self, value: Any, const: Any, where: str) -> list[str]:
        return [] if value == const else [f"{where or '/'}: expected {const!r}, got {value!r}"]

    def _allof(self, value: Any, schema: dict[str, Any], keyword: str, where: str, depth: int) -> list[str]:
        return [p for s in schema[keyword] for p in self._check(value, s, where, depth)]

    def _anyof(self, value: Any, schema: dict[str, Any], keyword: str, where: str, depth: int) -> list[str]:
        alternatives = self._candidates(value, schema, keyword)
        first: list[str] = []
        for alternative in alternatives:
            problems = self._check(value, alternative, where, depth)
            if not problems:
                return []
            if not first or len(problems) < len(first):
                first = problems
        return [f"{where or '/'}: matches none of {len(schema[keyword])} alternatives"
                + (f" (first: {first[0]})" if first else self._no_candidate(value, schema))]

    def _oneof(self, value: Any, schema: dict[str, Any], keyword: str, where: str, depth: int) -> list[str]:
        alternatives = self._candidates(value, schema, keyword)
        results = [self._check(value, s, where, depth) for s in alternatives]
        matches = sum(not r for r in results)
        if matches == 1:
            return []
        if matches == 0 and len(results) == 1:
            return results[0]       # the discriminator picked it: its problems are the story
        detail = f" (first: {min(results, key=len)[0]})" if matches == 0 and results else \
            self._no_candidate(value, schema) if not results else ""
        return [f"{where or '/'}: matches {matches} of {len(schema[keyword])} alternatives, "
                f"not exactly one{detail}"]

    def _candidates(self, value: Any, schema: dict[str, Any], keyword: str) -> list[Any]:
        """The alternatives that may match ``value``: those its discriminator allows."""
        alternatives = schema[keyword]
        if not isinstance(value, dict):
            return alternatives
        name = schema.get("discriminator", {}).get("propertyName", _DEFAULT_DISCRIMINATOR)
        if name not in value:
            return alternatives
        return [a for a in alternatives if self._admits(a, name, value[name], 0)]

    def _admits(self, schema: Any, name: str, value: Any, depth: int) -> bool:
        """False only when ``schema`` surely rejects an object whose ``name`` is ``value``."""
        if not isinstance(schema, dict) or depth > 8:
            return True
        if "$ref" in schema and not self._admits(self._resolve(schema["$ref"]), name, value, depth + 1):
            return False
        if any(not self._admits(s, name, value, depth + 1) for s in schema.get("allOf", ())):
            return False
        prop = schema.get("properties", {}).get(name)
        while isinstance(prop, dict) and "$ref" in prop and len(prop) == 1:
            prop = self._resolve(prop["$ref"])
        if not isinstance(prop, dict):
            return True
        if "const" in prop and prop["const"] != value:
            return False
        return not ("enum" in prop and value not in prop["enum"])

    def _no_candidate(self, value: Any, schema: dict[str, Any]) -> str:
        name = schema.get("discriminator", {}).get("propertyName", _DEFAULT_DISCRIMINATOR)
        return f" ({name} {value.get(name)!r} is none of theirs)" if isinstance(value, dict) else ""

    def _object(self, value: dict[str, Any], schema: dict[str, Any], where: str, depth: int) -> list[str]:
        problems = [f"{where}/{name}: required property is missing"
                    for name in schema.get("required", ()) if name not in value]
        problems += self._bounds(len(value), schema, "minProperties", "maxProperties", where, "properties")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        names = schema.get("propertyNames")
        for name, item in value.items():
            if names is not None:
                problems += self._check(name, names, f"{where}/{name}", depth)
            if name in properties:
                problems += self._check(item, properties[name], f"{where}/{name}", depth)
            elif extra is False:
                problems.append(f"{where}/{name}: property is not allowed")
            elif isinstance(extra, dict):
                problems += self._check(item, extra, f"{where}/{name}", depth)
        return problems

    def _array(self, value: list[Any], schema: dict[str, Any], where: str, depth: int) -> list[str]:
        problems = self._bounds(len(value), schema, "minItems", "maxItems", where, "length")
        items = schema.get("items")
        if isinstance(items, (dict, bool)):
            for i, item in enumerate(value):
                problems += self._check(item, items, f"{where}/{i}", depth)
        return problems

    @staticmethod
    def _bounds(size: float, schema: dict[str, Any], lo: str, hi: str, where: str,
                what: str) -> list[str]:
        problems = []
        if lo in schema and size < schema[lo]:
            problems.append(f"{where or '/'}: {what} {size} is below {lo} {schema[lo]}")
        if hi in schema and size > schema[hi]:
            problems.append(f"{where or '/'}: {what} {size} is above {hi} {schema[hi]}")
        return problems
