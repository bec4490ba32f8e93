"""Scenario 6: stateless throughput before and after N keyed sessions ("flat as the store grows").

Run by ``run.py``; see bench/README.md ("Flat as the store grows").
"""

from __future__ import annotations

import statistics
import time

from harness import (GW, Server, Settings, _samples, fmt, guarded, loadgen, say, table, wrk)

def s6(settings: Settings) -> dict:
    """S6: stateless throughput before and after N keyed sessions, each round on a fresh gateway.

    Before: S1's load (wrk, stateless completions) twice. Then N requests,
    each with a fresh ``x-equabot-session-key`` (one turn each: N sessions).
    After: S1's load twice again. The ratio is after ÷ before per round;
    the table gives every measurement and the median ratio.
    """
    rounds = []
    for r in range(settings.s6_rounds):
        server = Server(GW).start()
        try:
            wrk(server, settings.s6_warmup, settings.s1_conns)
            rss_before = server.memory_mb()["VmRSS"]
            before = [guarded(lambda: wrk(server, settings.s6_seconds, settings.s1_conns), [server])
                      for _ in range(2)]
            fill = loadgen("sessions", server.port, "complete", count=settings.s6_sessions,
                           conns=settings.s6_fill_conns)
            time.sleep(1.5)             # the last index flush (every 0.5 s at most) is done
            rss_filled = server.memory_mb()["VmRSS"]
            after = [guarded(lambda: wrk(server, settings.s6_seconds, settings.s1_conns), [server])
                     for _ in range(2)]
            rss_after = server.memory_mb()["VmRSS"]
        finally:
            server.stop()
        rate_before = _median_of_key(before, "requests_per_s")
        rate_after = _median_of_key(after, "requests_per_s")
        entry = {"before": before, "after": after, "fill": fill,
                 "before_req_s": rate_before, "after_req_s": rate_after,
                 "ratio": round(rate_after / rate_before, 3) if rate_before and rate_after else None,
                 "rss_before_mb": rss_before, "rss_filled_mb": rss_filled, "rss_after_mb": rss_after}
        rounds.append(entry)
        say(f"S6 round {r + 1}: before {[b.get('requests_per_s') for b in before]} req/s, "
            f"{fill.get('sessions')} sessions at {fill.get('sessions_per_s')}/s "
            f"(first tenth {fill.get('first_tenth_per_s')}/s, last {fill.get('last_tenth_per_s')}/s), "
            f"after {[a.get('requests_per_s') for a in after]} req/s: ratio {entry['ratio']}")
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    return {"rounds": rounds, "ratio": round(statistics.median(ratios), 3) if ratios else None}


def _median_of_key(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
    return round(statistics.median(values), 1) if values else None


def _s6_section(data: dict, settings: Settings) -> str:
    rows = []
    for i, r in enumerate(data["rounds"], 1):
        fill = r["fill"]
        rows.append([str(i), ", ".join(fmt(b.get("requests_per_s"), 0) for b in r["before"]),
                     _samples(fill, fmt(fill.get("sessions"), 0)), fmt(fill.get("sessions_per_s"), 0),
                     f"{fmt(fill.get('first_tenth_per_s'), 0)} → {fmt(fill.get('last_tenth_per_s'), 0)}",
                     fmt(fill.get("errors"), 0),
                     ", ".join(fmt(a.get("requests_per_s"), 0) for a in r["after"]),
                     f"{r['ratio']:.3f}×" if r["ratio"] is not None else "no samples",
                     f"{fmt(r['rss_before_mb'])} → {fmt(r['rss_filled_mb'])}",
                     fmt(max((x.get("foreign_cpu") or 0) for x in r["before"] + r["after"]), 2)])
    note = (f"Each round on a fresh gateway: S1's stateless load (wrk -t1 -c{settings.s1_conns}, "
            f"{settings.s6_seconds:g} s) twice, then {settings.s6_sessions:,} requests with a fresh "
            f"`x-equabot-session-key` each ({settings.s6_fill_conns} connections: one turn per "
            f"session), then S1's load twice again. *ratio* = median after ÷ median before. "
            f"*fill rate*: new sessions/s in the first and the last tenth of the fill.")
    ratio = data.get("ratio")
    return (f"### S6 — flat as the store grows ({settings.s6_sessions:,} keyed sessions)\n\n{note}\n\n"
            + table(["round", "before req/s", "sessions", "fill /s", "fill rate first → last tenth",
                     "fill errors", "after req/s", "ratio", "RSS before → filled MB", "other CPU (max)"],
                    rows)
            + f"\n\nMedian ratio: **{f'{ratio:.3f}×' if ratio is not None else 'no samples'}**\n")
