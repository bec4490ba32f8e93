"""The conformance report: the same results as text for people or as one JSON document.

Owns presentation only: it never probes. Text: one line per check
(``PASS``/``FAIL``/``SKIP``, name, reason), then what it tests and its
evidence, indented; a summary line last. JSON: ``{"target", "summary",
"checks": [{name, ref, status, reason, evidence, seconds}]}``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from .checks import Result, Status, Summary, Target

FORMAT_VERSION: Final = 1
_LABELS: Final = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.SKIP: "SKIP"}


def _target(target: Target) -> dict[str, Any]:
    return {"baseUrl": target.base_url, "token": target.token is not None, "agent": target.agent,
            "headerPrefix": target.header_prefix, "model": target.model,
            "timeoutSeconds": target.timeout, "ws": target.ws}


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def text(target: Target, results: list[Result], summary: Summary) -> str:
    """The report for a terminal: every check, what it tests, its evidence, then the counts."""
    width = max((len(r.name) for r in results), default=0)
    lines = [f"conformance of {target.base_url} (model {target.model!r}, headers "
             f"{target.header_prefix}*, token {'given' if target.token else 'not given'}, "
             f"{target.timeout:g} s per check)", ""]
    for r in results:
        lines.append(f"{_LABELS[r.status]}  {r.name:<{width}}  {r.reason}")
        if r.status is not Status.SKIP:
            lines.append(f"      tests: {r.ref}")
            lines += [f"      {key}: {_value(value)}" for key, value in r.evidence.items()]
    lines += ["", f"{len(results)} checks: {summary.passed} passed, {summary.failed} failed, "
                  f"{summary.skipped} skipped in {summary.seconds:.2f} s"]
    if summary.names_failed:
        lines.append("failed: " + ", ".join(summary.names_failed))
    return "\n".join(lines) + "\n"


def as_json(target: Target, results: list[Result], summary: Summary) -> str:
    """The report as one JSON document (``--json``)."""
    return json.dumps({
        "format": FORMAT_VERSION,
        "target": _target(target),
        "summary": {"passed": summary.passed, "failed": summary.failed,
                    "skipped": summary.skipped, "seconds": summary.seconds,
                    "ok": summary.failed == 0},
        "checks": [{"name": r.name, "ref": r.ref, "status": r.status.value, "reason": r.reason,
                    "evidence": r.evidence, "seconds": r.seconds} for r in results],
    }, indent=2, ensure_ascii=False, default=str) + "\n"
