"""Extract the Responses schemas the conformance kit ships from OpenAI's published OpenAPI document.

    python -m tests.openai_schemas SPEC.json equabot_gw/conformance/openai-responses-schemas.json \
        tests/data/openai-responses/create-response-examples.json

``SPEC.json`` is ``openapi.json`` of openai/openai-openapi (MIT). The output
holds the closure of ``ROOTS`` under ``components.schemas`` (every schema a
root reaches through ``$ref``), with the keywords that only document
(``description``, ``example``, ``examples``, ``x-oaiMeta``) left out, and
one rewrite: the single ``$recursiveRef: "#"`` (inside ``CompoundFilter``,
whose ``$recursiveAnchor`` makes it the target) becomes a plain ``$ref`` to
``CompoundFilter``, so that the validator needs no dynamic scopes. The third
file gets the documented examples of ``POST /responses`` (``x-oaiMeta``:
title, request, response as published), test data for the validator. Run it
again when the spec moves on; the whole spec is never committed.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

ROOTS: Final = ("CreateResponse", "Response", "ResponseStreamEvent", "ResponseItemList", "ErrorResponse")
DOC_ONLY: Final = frozenset({"description", "example", "examples", "x-oaiMeta"})
PREFIX: Final = "#/components/schemas/"


def _strip(node: Any, owner: str) -> Any:
    if isinstance(node, list):
        return [_strip(item, owner) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DOC_ONLY or key == "$recursiveAnchor":
            continue
        if key == "$recursiveRef":
            if value != "#":
                raise ValueError(f"{owner}: unexpected $recursiveRef {value!r}")
            out["$ref"] = PREFIX + owner
            continue
        # "properties" maps names to schemas: a property may be called "description".
        out[key] = {k: _strip(v, owner) for k, v in value.items()} if key == "properties" \
            else _strip(value, owner)
    return out


def _refs(node: Any, found: set[str]) -> None:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if key == "$ref" and isinstance(value, str) and value.startswith(PREFIX):
                    found.add(value[len(PREFIX):])
                else:
                    stack.append(value)


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    """The schema document of ``ROOTS`` and everything they reference."""
    schemas = spec["components"]["schemas"]
    todo, seen = list(ROOTS), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found: set[str] = set()
        _refs(schemas[name], found)
        todo.extend(found - seen)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (f"Subset of openai/openai-openapi openapi.json (OpenAPI {spec['openapi']}, info.version "
                     f"{spec['info']['version']}), commit f85dbe223d40e1a31cba812ab2d755c7e98a92a3; MIT license "
                     "(see LICENSE-openai-openapi). The closure of the roots below; documentation keywords "
                     "(description, example, examples, x-oaiMeta) left out; CompoundFilter's $recursiveRef '#' "
                     "written as a $ref to CompoundFilter. Made by tests/openai_schemas.py. Validate with "
                     "{'$ref': '#/components/schemas/NAME'} against this document."),
        "roots": list(ROOTS),
        "components": {"schemas": {name: _strip(schemas[name], name) for name in sorted(seen)}},
    }


def examples(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The published examples of ``POST /responses``: ``{title, request, response}`` each."""
    return [{key: example.get(key) for key in ("title", "request", "response")}
            for example in spec["paths"]["/responses"]["post"]["x-oaiMeta"]["examples"]]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    for path, data in ((argv[1], extract(spec)), (argv[2], examples(spec))):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
