"""The conformance kit: ``python -m equabot_gw conformance --base-url URL`` checks any server.

Probes a server that claims the Gateway's OpenAI Chat Completions spec (and,
when served, the Responses API; with ``--ws``, its WebSocket control
protocol) from the outside, with normal client permissions, and reports each
named check as pass / fail / skip with its reason and evidence.
``checks_http.py``, ``checks_tools.py``, ``checks_responses.py`` and
``checks_ws.py`` hold the battery, ``checks.py`` the probe and runner, ``report.py`` the output,
``jsonschema.py`` the validator for OpenAI's published schemas. Nothing here
imports the gateway: the kit sees servers only through the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from . import checks_http, checks_responses, checks_resume, checks_tools, checks_ws, report
from .checks import DEFAULT_HEADER_PREFIX, DEFAULT_TIMEOUT, Check, Probe, Result, Summary, Target, run_battery

__all__ = ["BATTERY", "add_arguments", "run_conformance", "run"]

BATTERY: tuple[Check, ...] = (*checks_http.CHECKS, *checks_tools.CHECKS, *checks_responses.CHECKS,
                              *checks_resume.CHECKS, *checks_ws.CHECKS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``conformance`` subcommand's flags."""
    parser.add_argument("--base-url", required=True, metavar="URL",
                        help="the server to probe, e.g. http://127.0.0.1:18789")
    parser.add_argument("--token", metavar="T", help="bearer token (or password) of the server; "
                        "without it the auth checks are skipped")
    parser.add_argument("--agent", metavar="ID", help="agent to address (model equabot:<ID>); "
                        "default: the server's default agent, and 'main' for the routing checks")
    parser.add_argument("--ws", action="store_true", help="also check the WebSocket control protocol")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--header-prefix", metavar="P", default=DEFAULT_HEADER_PREFIX,
                        help=f"prefix of the gateway's headers (default {DEFAULT_HEADER_PREFIX}); "
                        "the model prefix follows it (x-foo- → foo:<agent>)")
    parser.add_argument("--timeout", metavar="S", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds each check may take (default {DEFAULT_TIMEOUT:g})")


async def run(target: Target, only: Iterable[str] | None = None) -> tuple[list[Result], Summary]:
    """Run the battery (or the checks in ``only`` and what they need) against ``target``."""
    started = time.monotonic()
    results = await run_battery(Probe(target), BATTERY, only)
    return results, Summary.of(results, time.monotonic() - started)


def run_conformance(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Probe ``args.base_url``, print the report; 0 if no check failed, 1 if one did, 2 for bad flags."""
    out = out or sys.stdout
    try:
        target = Target.from_flags(args.base_url, token=args.token, agent=args.agent,
                                   header_prefix=args.header_prefix, timeout=args.timeout, ws=args.ws)
    except ValueError as exc:
        print(f"equabot: conformance: {exc}", file=sys.stderr)
        return 2
    results, summary = asyncio.run(run(target))
    out.write((report.as_json if args.json else report.text)(target, results, summary))
    out.flush()
    return 1 if summary.failed else 0
