"""Scenario 4: the same upstream behind equabot_gw, behind the LiteLLM proxy, and alone.

Run by ``run.py``; see bench/README.md ("Proxy overhead") for the figures.
"""

from __future__ import annotations

import json
import subprocess

from harness import (BENCH_TOKEN, GW, LITELLM, LITELLM_TOKEN, LOAD_CORE, PY, Server, Settings,
                     _cold_start, _samples, fmt, guarded, loadgen, median_of, rotated, say,
                     table, workloads)

VIA_GW = "via equabot_gw"
VIA_LITELLM = "via LiteLLM"
DIRECT = "upstream direct"


def s4(settings: Settings) -> dict:
    """S4: the same upstream behind equabot_gw (agent "proxy"), behind LiteLLM, and alone.

    Phase 1 interleaves the gateway and the upstream alone over the rounds;
    phase 2 measures LiteLLM with the gateway stopped (the two proxies never
    share the server core). Then each proxy's start time and idle RSS.
    """
    upstream = Server("upstream", core=LOAD_CORE).start()
    runs: dict[str, dict[str, list[dict]]] = {t: {m: [] for m, _, _ in _s4_modes(settings, t)}
                                              for t in (VIA_GW, VIA_LITELLM, DIRECT)}
    out: dict = {"preflight": {}}
    try:
        gateway = Server(GW, upstream_port=upstream.port).start()
        out["phase_start"] = {GW: {"first_200_ms": gateway.start_ms, "idle_rss_mb": gateway.tree_rss_mb()}}
        try:
            reference = _s4_probe(upstream.port, loadgen_token(DIRECT))
            targets = {VIA_GW: (gateway, workloads.sse_events(workloads.UPSTREAM_WORDS)),
                       DIRECT: (upstream, workloads.sse_events(workloads.UPSTREAM_WORDS) + 1)}
            for target, (server, expect) in targets.items():
                out["preflight"][target] = _s4_probe(server.port, loadgen_token(target))
                _s4_load(settings, target, server.port, "paced 50/s", 50.0, settings.s4_conns,
                         expect, seconds=1.0)            # warm the upstream pool
            for r in range(settings.rounds):
                for target in rotated(list(targets), r):
                    server, expect = targets[target]
                    for mode, rate, conns in _s4_modes(settings, target):
                        result = guarded(lambda: _s4_load(settings, target, server.port, mode, rate,
                                                          conns, expect), [gateway, upstream])
                        runs[target][mode].append(result)
                        say(f"S4 round {r + 1} {target} {mode}: {_brief(result)}")
        finally:
            gateway.stop()
        out["litellm"] = _s4_litellm(settings, upstream, runs[VIA_LITELLM])
    finally:
        upstream.stop()
    for target, modes in runs.items():
        out[target] = {m: {"median": median_of(v) if v else {}, "rounds": v} for m, v in modes.items()}
    out["reference_text"] = reference["text"]
    for via, key in ((VIA_GW, "added"), (VIA_LITELLM, "added_litellm")):
        out[key] = {}
        for mode, rate, _ in _s4_modes(settings, via):
            if rate:
                out[key][mode] = _difference(out[via][mode]["median"], out[DIRECT][mode]["median"])
    starts = {GW: [], LITELLM: []}
    if out["litellm"].get("error") is None:
        for name in starts:
            _cold_start(name)               # fill bytecode caches: not measured
        for rep in range(settings.s4_start_reps):
            for name in rotated(list(starts), rep):
                starts[name].append(guarded(lambda: _cold_start(name), []))
                say(f"S4 start {name}: {starts[name][-1]}")
    out["start"] = {name: {"median": median_of(v) if v else {}, "rounds": v}
                    for name, v in starts.items()}
    if not settings.s4_start_reps:      # quick: the starts of the S4 servers themselves
        own = {GW: out["phase_start"][GW], LITELLM: out["litellm"].get("phase_start", {})}
        out["start"] = {name: {"median": figures, "rounds": []} for name, figures in own.items()}
    return out


def loadgen_token(target: str) -> str:
    return LITELLM_TOKEN if target == VIA_LITELLM else BENCH_TOKEN


def _s4_litellm(settings: Settings, upstream: Server, runs: dict[str, list[dict]]) -> dict:
    """Phase 2 of S4: LiteLLM alone on the server core; returns what happened to it."""
    try:
        proxy = Server(LITELLM, upstream_port=upstream.port).start()
    except (RuntimeError, OSError) as exc:
        say(f"!! S4: LiteLLM did not start: {exc}")
        return {"error": f"did not start: {exc}"}
    info: dict = {"version": _package_version("litellm"),
                  "phase_start": {"first_200_ms": proxy.start_ms, "idle_rss_mb": proxy.tree_rss_mb()}}
    try:
        probe = _s4_probe(proxy.port, LITELLM_TOKEN)
        info["preflight"] = probe
        expect = probe["events"]
        _s4_load(settings, VIA_LITELLM, proxy.port, "paced 20/s", 20.0, settings.s4_conns, expect,
                 seconds=2.0)                   # warm its client pool
        for r in range(settings.rounds):
            for mode, rate, conns in _s4_modes(settings, VIA_LITELLM):
                result = guarded(lambda: _s4_load(settings, VIA_LITELLM, proxy.port, mode, rate,
                                                  conns, expect), [proxy, upstream])
                runs[mode].append(result)
                say(f"S4 round {r + 1} {VIA_LITELLM} {mode}: {_brief(result)}")
    finally:
        proxy.stop()
    return info


def _package_version(name: str) -> str:
    return subprocess.run([PY, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                          capture_output=True, text=True).stdout.strip() or "?"


def _s4_modes(settings: Settings, target: str = VIA_GW) -> list[tuple[str, float, int]]:
    """(name, requests/s in all or 0 for a closed loop, connections) of one S4 target."""
    modes = [(f"paced {rate:g}/s", rate, settings.s4_conns) for rate in settings.s4_rates
             if target != VIA_LITELLM or rate <= settings.s4_peer_max_rate]
    return modes + [(f"{settings.s4_stream_conns} streams", 0.0, settings.s4_stream_conns),
                    (f"{settings.s4_throughput_conns} connections", 0.0, settings.s4_throughput_conns)]


def _s4_load(settings: Settings, target: str, port: int, mode: str, rate: float, conns: int,
             expect: int | None, seconds: float | None = None) -> dict:
    duration = seconds or settings.s4_seconds
    return loadgen("paced", port, "proxy", conns=conns, duration=duration, warmup=0.5, rate=rate,
                   expect_events=expect, token=loadgen_token(target))


def _s4_probe(port: int, token: str) -> dict:
    """One streamed proxy completion: its ``data:`` events and the text its deltas carry."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", workloads.PROXY,
                 {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    raw = response.read().decode()
    conn.close()
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    text = ""
    for event in events:
        if event.startswith("{"):
            for choice in json.loads(event).get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or ""
    return {"status": response.status, "events": len(events), "text": text}


def _difference(via: dict, direct: dict) -> dict:
    """via − direct per latency figure; None where either side has no samples."""
    return {k: round(via[k] - direct[k], 3) if isinstance(via.get(k), (int, float))
            and isinstance(direct.get(k), (int, float)) else None
            for k in ("latency_p50_ms", "latency_p99_ms", "ttfb_p50_ms", "ttfb_p99_ms")}


def _brief(result: dict) -> dict:
    return {k: result.get(k) for k in ("requests", "requests_per_s", "latency_p50_ms", "latency_p99_ms",
                                       "ttfb_p50_ms", "errors", "error_kinds", "foreign_cpu")}


def _s4_section(data: dict, settings: Settings) -> str:
    rows = []
    for target in (VIA_GW, VIA_LITELLM, DIRECT):
        for mode, _, _ in _s4_modes(settings, target):
            m = data.get(target, {}).get(mode, {}).get("median", {})
            if not m:
                continue
            rows.append([target, mode, _samples(m, fmt(m.get("requests_per_s"), 0)),
                         fmt(m.get("latency_p50_ms"), 2), fmt(m.get("latency_p99_ms"), 2),
                         fmt(m.get("ttfb_p50_ms"), 2), fmt(m.get("errors"), 0),
                         fmt(m.get("foreign_cpu"), 2)])
    for key, who in (("added", "equabot_gw"), ("added_litellm", "LiteLLM")):
        for mode, a in data.get(key, {}).items():
            rows.append([f"**added by {who}**", mode, "", fmt(a["latency_p50_ms"], 2),
                         fmt(a["latency_p99_ms"], 2), fmt(a["ttfb_p50_ms"], 2), "", ""])
    note = (f"Each request streams a 12-word completion to [DONE] (latency = request sent → end of "
            f"the response). *paced N/s*: N requests/s in all over {settings.s4_conns} connections "
            f"(the proxy is not saturated: the load the latency targets are judged at); *16 "
            f"streams* and *64 connections*: closed loops, each connection sends its next request "
            f"at once (latency is then mostly queueing). The upstream is the raw asyncio server "
            f"(`--upstream`) on the load core. equabot_gw runs agent `proxy` "
            f"(openai-completions, pooled upstream connections); LiteLLM runs "
            f"`litellm --config bench/litellm.yaml --num_workers 1` (logging off, local cost map), "
            f"measured after the gateway stopped, so the two never share the server core.")
    parts = ["### S4 — proxy overhead (equabot_gw and LiteLLM in front of one local upstream)\n",
             note + "\n", table(["target", "load", "req/s", "p50 ms", "p99 ms", "TTFB p50 ms",
                                  "errors", "other CPU"], rows) + "\n"]
    litellm = data.get("litellm", {})
    if litellm.get("error"):
        parts.append(f"LiteLLM: **not measured** — {litellm['error']}\n")
    else:
        parts.append(_s4_versus(data, settings, litellm))
    return "\n".join(parts)


def _s4_versus(data: dict, settings: Settings, litellm: dict) -> str:
    """equabot_gw next to LiteLLM, figure by figure, with the ratio."""
    def median(target: str, mode: str) -> dict:
        return data.get(target, {}).get(mode, {}).get("median", {})

    rows = []

    def row(title: str, gw, peer, digits: int = 2) -> None:
        rows.append([title, fmt(gw, digits), fmt(peer, digits),
                     f"{gw / peer:.2f}×" if isinstance(gw, (int, float)) and isinstance(peer, (int, float)) and peer else "–"])

    wide = f"{settings.s4_throughput_conns} connections"
    row(f"throughput, {wide} (req/s)", median(VIA_GW, wide).get("requests_per_s"),
        median(VIA_LITELLM, wide).get("requests_per_s"), 0)
    for mode, a in data.get("added_litellm", {}).items():
        g = data.get("added", {}).get(mode, {})
        row(f"added p50, {mode} (ms)", g.get("latency_p50_ms"), a.get("latency_p50_ms"))
        row(f"added p99, {mode} (ms)", g.get("latency_p99_ms"), a.get("latency_p99_ms"))
    narrow = f"{settings.s4_stream_conns} streams"
    for key, title in (("ttfb_p50_ms", "TTFB p50"), ("latency_p50_ms", "total p50"),
                       ("latency_p99_ms", "total p99")):
        row(f"{narrow}: {title} (ms)", median(VIA_GW, narrow).get(key), median(VIA_LITELLM, narrow).get(key))
    starts = data.get("start", {})
    gw_start, peer_start = starts.get(GW, {}).get("median", {}), starts.get(LITELLM, {}).get("median", {})
    row("start: spawn → first 200 (s)", _seconds(gw_start.get("first_200_ms")),
        _seconds(peer_start.get("first_200_ms")))
    row("idle RSS after start (MB)", gw_start.get("idle_rss_mb"), peer_start.get("idle_rss_mb"), 1)
    probe = litellm.get("preflight", {})
    same = probe.get("text") == data.get("reference_text")
    how = (f"median of {settings.s4_start_reps} starts after one that fills the bytecode caches"
           if settings.s4_start_reps else "the start of each proxy's S4 server, polled every 20 ms, "
           "RSS right after it")
    return (f"equabot_gw next to LiteLLM {litellm.get('version', '?')} (`÷` = equabot_gw's figure "
            f"divided by LiteLLM's; start and RSS: {how}). Both relay the upstream's text unchanged: "
            f"{'yes' if same else '**NO**'} (LiteLLM sends {probe.get('events', '?')} `data:` events "
            f"per stream, equabot_gw {data.get('preflight', {}).get(VIA_GW, {}).get('events', '?')}).\n\n"
            + table(["figure", "equabot_gw", "LiteLLM", "÷"], rows) + "\n")


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)
