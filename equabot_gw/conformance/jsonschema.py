"""A small JSON Schema validator: the subset OpenAI's published schemas use.

Owns validation of decoded JSON against a schema document: ``type``,
``enum``, ``const``, ``properties``/``required``/``additionalProperties``,
``items``/``minItems``/``maxItems``, ``minimum``/``maximum``,
``minLength``/``maxLength``, ``anyOf``/``oneOf``/``allOf`` and local
``$ref``s. Unknown keywords (descriptions, formats, examples) are ignored, as
JSON Schema allows. Returns every problem found, each with a JSON pointer.
"""

from __future__ import annotations

import json
import math
import pathlib
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


class Validator:
    """Validates instances against the definitions of one schema document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    @classmethod
    def openai(cls) -> Validator:
        """The OpenAI chat schemas shipped with this package (MIT, see LICENSE-openai-openapi)."""
        return cls(json.loads(SCHEMAS_PATH.read_text(encoding="utf-8")))

    def errors(self, instance: Any, schema_name: str) -> list[str]:
        """Every problem of ``instance`` against ``components.schemas[schema_name]``."""
        return self._check(instance, {"$ref": f"#/components/schemas/{schema_name}"}, "")

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported: {ref}")
        node: Any = self.document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _check(self, value: Any, schema: dict[str, Any] | bool, where: str) -> list[str]:
        if schema is True or schema == {}:
            return []
        if schema is False:
            return [f"{where or '/'}: no value is allowed here"]
        assert isinstance(schema, dict)
        if "$ref" in schema:
            return self._check(value, self._resolve(schema["$ref"]), where)
        problems: list[str] = []
        for keyword in ("type", "enum", "const", "allOf", "anyOf", "oneOf"):
            if keyword in schema:
                problems += getattr(self, "_" + keyword.lower())(value, schema[keyword], where)
        if problems:
            return problems
        if isinstance(value, dict):
            problems += self._object(value, schema, where)
        elif isinstance(value, list):
            problems += self._array(value, schema, where)
        elif isinstance(value, str):
            problems += self._bounds(len(value), schema, "minLength", "maxLength", where, "length")
        elif _TYPES["number"](value):
            problems += self._bounds(value, schema, "minimum", "maximum", where, "value")
        return problems

    def _type(self, value: Any, expected: str | list[str], where: str) -> list[str]:
        kinds = [expected] if isinstance(expected, str) else expected
        if any(_TYPES[k](value) for k in kinds):
            return []
        return [f"{where or '/'}: expected {' or '.join(kinds)}, got {type(value).__name__}"]

    def _enum(self, value: Any, options: list[Any], where: str) -> list[str]:
        return [] if value in options else [f"{where or '/'}: {value!r} is not one of {options!r}"]

    def _const(self, value: Any, const: Any, where: str) -> list[str]:
        return [] if value == const else [f"{where or '/'}: expected {const!r}, got {value!r}"]

    def _allof(self, value: Any, schemas: list[Any], where: str) -> list[str]:
        return [p for s in schemas for p in self._check(value, s, where)]

    def _anyof(self, value: Any, schemas: list[Any], where: str) -> list[str]:
        results = [self._check(value, s, where) for s in schemas]
        if any(not r for r in results):
            return []
        return [f"{where or '/'}: matches none of {len(schemas)} alternatives "
                f"(first: {min(results, key=len)[0]})"]

    def _oneof(self, value: Any, schemas: list[Any], where: str) -> list[str]:
        matches = sum(not self._check(value, s, where) for s in schemas)
        if matches == 1:
            return []
        return [f"{where or '/'}: matches {matches} of {len(schemas)} alternatives, not exactly one"]

    def _object(self, value: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
        problems = [f"{where}/{name}: required property is missing"
                    for name in schema.get("required", ()) if name not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                problems += self._check(item, properties[name], f"{where}/{name}")
            elif extra is False:
                problems.append(f"{where}/{name}: property is not allowed")
            elif isinstance(extra, dict):
                problems += self._check(item, extra, f"{where}/{name}")
        return problems

    def _array(self, value: list[Any], schema: dict[str, Any], where: str) -> list[str]:
        problems = self._bounds(len(value), schema, "minItems", "maxItems", where, "length")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                problems += self._check(item, items, f"{where}/{i}")
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
