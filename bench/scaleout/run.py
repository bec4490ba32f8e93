"""``make interop-haproxy``: three equabot_gw nodes behind HAProxy, checked and measured.

Starts three gateways on loopback (``gateway.json5``, ids n0 n1 n2, each its
own state dir) and HAProxy in front with ``haproxy.cfg`` exactly as committed
and shown in docs/scale-out.md (HAProxy reads the addresses from its
environment). Then:

1. Routing: completion and response ids naming a node (a resumed stream, a
   retrieved response, ``previous_response_id``), idempotency keys and
   ``?node=`` reach that node; the header aliases, both spellings of a
   session key and the body's ``user`` route as the doc says.
2. Sessions: ``--sessions`` users × ``--turns`` turns through HAProxy, many
   at once. One node gets SIGTERM mid-load and is restarted. Every session
   must see "Echo (turn 1)", "(turn 2)", "(turn 3)" in order, always from the
   node its key hashes to; a request that fails must fail cleanly (an HTTP
   error with the OpenAI-style error body), and only requests of the stopped
   node's sessions may fail (the client retries them until the node is back);
   each session's transcript exists on exactly one node; the stopped node
   exits 0; a request with an idempotency key that it ran, retried after
   its restart, replays that run.
3. Throughput of stateless completions through HAProxy with 3, 2 and 1
   nodes up (wrk, 64 connections). On a 2-core machine expect no gain past 2:
   HAProxy, wrk and the nodes share the cores.

Exits 1 with the failed checks listed, else 0. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
from equabot_gw.agents import sessions, transcripts  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
NODES = ("n0", "n1", "n2")
VICTIM = "n1"
ERROR_KEYS = {"message", "type", "param", "code"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text: str) -> None:
    print(text, flush=True)


def owner_of(key: str) -> str:
    """The node haproxy.cfg sends a session key to: crc32(key) mod 3, a key
    ``agent:<id>:<rest>`` hashed as ``<rest>`` (the same session to the gateway)."""
    return NODES[zlib.crc32(re.sub(r"^agent:[^:]+:(?=.)", "", key).encode()) % len(NODES)]


def raw_owner(key: str) -> str:
    """crc32(key) mod 3 of the key as it stands."""
    return NODES[zlib.crc32(key.encode()) % len(NODES)]


class Node:
    """One gateway process: ``python -m equabot_gw`` with its own port and state dir."""

    def __init__(self, node_id: str, base: pathlib.Path) -> None:
        self.id = node_id
        self.port = free_port()
        self.state_dir = base / node_id
        self.log = base / f"{node_id}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EQUABOT_")}
        env.update(EQUABOT_NODE_ID=self.id, PYTHONUNBUFFERED="1")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "equabot_gw", "--config", str(HERE / "gateway.json5"),
                 "--port", str(self.port), "--state-dir", str(self.state_dir),
                 "--log-level", "warning"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"node {self.id} did not start: {line!r}, see {self.log}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def transcript(self, user: str) -> pathlib.Path:
        key = sessions.user_key("main", user)
        return self.state_dir / "agents" / "main" / transcripts.SESSIONS_DIR / transcripts.transcript_name(key)


class Balancer:
    """HAProxy in the foreground with the committed haproxy.cfg."""

    def __init__(self, nodes: list[Node], base: pathlib.Path) -> None:
        self.port = free_port()
        self.env = dict(os.environ, EQUABOT_LB_BIND=f"127.0.0.1:{self.port}",
                        **{f"EQUABOT_{n.id.upper()}": f"127.0.0.1:{n.port}" for n in nodes})
        self.log = base / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cfg = str(HERE / "haproxy.cfg")
        subprocess.run(["haproxy", "-c", "-q", "-f", cfg], env=self.env, check=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], env=self.env,
                                         stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- a small keep-alive HTTP/1.1 client -------------------------------------------------

class Conn:
    """One keep-alive connection to the balancer; reconnects when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); raises OSError / asyncio.IncompleteReadError on a broken exchange."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                f"Authorization: Bearer {TOKEN}", f"Content-Length: {len(body)}"]
        if body:
            head.append("Content-Type: application/json")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    fields[name.strip().lower()] = value.strip()
            if "content-length" in fields:
                data = await asyncio.wait_for(self.reader.readexactly(int(fields["content-length"])), 30)
            else:
                data = await asyncio.wait_for(self._chunked(), 30)
        except BaseException:
            self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, fields, data

    async def _chunked(self) -> bytes:
        out = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return b"".join(out)
            out.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


async def ws_upgrade(port: int, target: str) -> tuple[int, dict[str, str], str | None]:
    """Open a WebSocket through the balancer: (status, response headers, the event of the
    first frame the node sends after 101, which crosses the tunnel); then close it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    event = None
    try:
        writer.write((f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if raw.startswith(b"HTTP/1.1 101"):
            # The first frame (unmasked, from the server): the connect challenge.
            first, size = await asyncio.wait_for(reader.readexactly(2), 10)
            size &= 0x7F
            if size == 126:
                size = int.from_bytes(await reader.readexactly(2), "big")
            elif size == 127:
                size = int.from_bytes(await reader.readexactly(8), "big")
            if first & 0x0F == 1:
                event = json.loads(await asyncio.wait_for(reader.readexactly(size), 10)).get("event")
    finally:
        writer.close()
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, event


def completion_body(user: str | None, text: str) -> bytes:
    data: dict = {"model": "equabot", "messages": [{"role": "user", "content": text}]}
    if user is not None:
        data["user"] = user
    return json.dumps(data).encode()


def node_of_completion(body: bytes) -> str | None:
    found = re.match(r"chatcmpl-(.+)-[0-9a-f]+$", json.loads(body).get("id", ""))
    return found[1] if found else None


def clean_error(status: int, body: bytes) -> bool:
    """An HTTP error status with the OpenAI-style error body."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return status >= 400 and isinstance(error, dict) and set(error) == ERROR_KEYS


# -- the checks ---------------------------------------------------------------------------

class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        say(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failed.append(what)


async def wait_all_up(port: int, nodes: set[str], deadline: float = 20.0) -> None:
    """Until stateless requests round robin over exactly ``nodes``."""
    conn = Conn(port)
    end = time.monotonic() + deadline
    try:
        while time.monotonic() < end:
            seen = set()
            try:
                for _ in range(4 * len(NODES)):
                    status, headers, _ = await conn.request("GET", "/readyz")
                    if status == 200:
                        seen.add(headers.get("x-equabot-node"))
            except (OSError, asyncio.IncompleteReadError):
                pass                # HAProxy not listening yet
            if seen == nodes:
                return
            await asyncio.sleep(0.25)
    finally:
        conn.close()
    raise RuntimeError(f"HAProxy does not see exactly {sorted(nodes)} up")


async def routing(port: int, checks: Checks) -> None:
    """Ids, pins, header aliases and the body's user reach the node the doc says."""
    conn = Conn(port)
    try:
        # A completion's id names its node: the events of a keyed stream are read
        # there (the GET carries no key), whichever node round robin would pick next.
        ids, keys, firsts = {}, {}, {}
        for i in range(60):
            key = f"events-{i}-{os.urandom(4).hex()}"
            if owner_of(key) in ids:
                continue
            streamed = json.dumps({**json.loads(completion_body(None, "hi")), "stream": True}).encode()
            status, _, body = await conn.request("POST", "/v1/chat/completions", streamed, {"Idempotency-Key": key})
            found = re.search(rb'"id":"(chatcmpl-(.+?)-[0-9a-f]+)"', body)
            if status == 200 and found:
                ids[found[2].decode()] = found[1].decode()
                keys[found[2].decode()], firsts[found[2].decode()] = key, body
        for node, completion in sorted(ids.items()):
            for _ in range(3):
                status, headers, body = await conn.request("GET", f"/v1/chat/completions/{completion}/events")
                checks.check(status == 200 and headers.get("x-equabot-node") == node and b"[DONE]" in body,
                             f"the events of {completion[:16]}... are read on {node} ({status})")
        checks.check(set(ids) == set(NODES), f"completion ids name every node ({sorted(ids)})")
        # The same streamed request resent with its key and Last-Event-ID resumes on its node.
        for node, completion in sorted(ids.items()):
            seqs = re.findall(rb"^id: " + re.escape(completion.encode()) + rb":(\d+)$", firsts[node], re.M)
            streamed = json.dumps({**json.loads(completion_body(None, "hi")), "stream": True}).encode()
            status, headers, body = await conn.request(
                "POST", "/v1/chat/completions", streamed,
                {"Idempotency-Key": keys[node], "Last-Event-ID": f"{completion}:{seqs[1].decode()}"})
            checks.check(status == 200 and headers.get("x-equabot-node") == node
                         and headers.get("x-equabot-idempotent-replay") == "true"
                         and b"[DONE]" in body and body.count(b"\ndata: {") < firsts[node].count(b"\ndata: {"),
                         f"a stream resent with Last-Event-ID resumes on {node} ({status})")
        # A response's id names its node: retrieving it and continuing from it
        # (previous_response_id, no session) go there, whichever node round robin picks next.
        created = {}
        for _ in range(12):
            status, headers, body = await conn.request(
                "POST", "/v1/responses", json.dumps({"model": "equabot", "input": "first"}).encode())
            if status == 200:
                created.setdefault(headers.get("x-equabot-node"), json.loads(body)["id"])
        for node, response_id in sorted(created.items()):
            got = [await conn.request("GET", f"/v1/responses/{response_id}") for _ in range(3)]
            more = [await conn.request("POST", "/v1/responses", json.dumps(
                {"model": "equabot", "input": "next", "previous_response_id": response_id}).encode())
                for _ in range(3)]
            checks.check([a[0] for a in got + more] == [200] * 6
                         and {a[1].get("x-equabot-node") for a in got + more} == {node}
                         and all(json.loads(a[2])["id"].startswith(f"resp_{node}_") for a in more),
                         f"{response_id[:14]}... is retrieved and continued on {node} "
                         f"({[(a[0], a[1].get('x-equabot-node')) for a in got + more]})")
        checks.check(set(created) == set(NODES), f"response ids name every node ({sorted(created)})")
        # A retry with an idempotency key reaches the node that ran the first attempt.
        for header in ("Idempotency-Key", "x-equabot-idempotency-key", "x-openclaw-idempotency-key",
                       "x-clawdbot-idempotency-key"):
            key = f"retry-{header}-{os.urandom(4).hex()},"     # a comma is a key's character too
            answers = [await conn.request("POST", "/v1/chat/completions", completion_body(None, "hi"), {header: key})
                       for _ in range(3)]
            checks.check([a[0] for a in answers] == [200] * 3
                         and {a[1].get("x-equabot-node") for a in answers} == {owner_of(key)}
                         and [a[1].get("x-equabot-idempotent-replay") for a in answers] == [None, "true", "true"]
                         and len({a[2] for a in answers}) == 1,
                         f"retries under one {header} reach {owner_of(key)} and replay its run")
        for node in NODES:
            _, headers, _ = await conn.request("GET", f"/readyz?node={node}")
            checks.check(headers.get("x-equabot-node") == node, f"?node={node} routes to {node}")
            _, headers, _ = await conn.request("GET", "/readyz", headers={"Cookie": f"equabot_node={node}"})
            checks.check(headers.get("x-equabot-node") == node, f"cookie equabot_node={node} routes to {node}")
        for header in ("x-equabot-session-key", "x-openclaw-session-key", "x-clawdbot-session-key"):
            key = f"route-{header}"
            status, headers, body = await conn.request(
                "POST", "/v1/chat/completions", completion_body(None, "hi"), {header: key})
            checks.check(status == 200 and headers.get("x-equabot-node") == owner_of(key)
                         == node_of_completion(body), f"{header} routes by crc32(key) mod 3")
        # The x-equabot- header wins over an alias that disagrees (as in the gateway).
        a, b = "winner-key", next(k for k in (f"loser-{i}" for i in range(99)) if owner_of(k) != owner_of("winner-key"))
        status, headers, _ = await conn.request("POST", "/v1/chat/completions", completion_body(None, "hi"),
                                                {"x-equabot-session-key": a, "x-openclaw-session-key": b})
        checks.check(headers.get("x-equabot-node") == owner_of(a), "x-equabot-session-key wins over an alias")
        # Both spellings of one session, agent:main:<key> and <key>, reach one node:
        # the second request is the session's second turn.
        key = next(k for k in (f"spelled-{i}-{os.urandom(2).hex()}" for i in range(99))
                   if raw_owner(k) != raw_owner(f"agent:main:{k}"))
        answers = [await conn.request("POST", "/v1/chat/completions", completion_body(None, "hi"),
                                      {"x-equabot-session-key": spelled})
                   for spelled in (key, f"agent:main:{key}")]
        checks.check([a[0] for a in answers] == [200, 200]
                     and {a[1].get("x-equabot-node") for a in answers} == {owner_of(key)}
                     and b"Echo (turn 2)" in answers[1][2],
                     f"a session key and its agent:main: spelling reach one node, one session "
                     f"({[a[1].get('x-equabot-node') for a in answers]})")
        # A header key wins over the body's user.
        user = next(u for u in (f"user-{i}" for i in range(99)) if owner_of(u) != owner_of("header-key"))
        _, headers, _ = await conn.request("POST", "/v1/chat/completions", completion_body(user, "hi"),
                                           {"x-equabot-session-key": "header-key"})
        checks.check(headers.get("x-equabot-node") == owner_of("header-key"), "a header key wins over the body's user")
        # Stateless requests go round robin.
        seen = set()
        for _ in range(6):
            _, headers, _ = await conn.request("POST", "/v1/chat/completions", completion_body(None, "hi"))
            seen.add(headers.get("x-equabot-node"))
        checks.check(seen == set(NODES), f"stateless requests round robin ({sorted(seen)})")
        # WebSocket control clients: a new one gets a node and a cookie naming it; ?node= pins.
        for query, want in (("", None), ("?node=n2", "n2")):
            status, headers, event = await ws_upgrade(port, "/" + query)
            node = headers.get("x-equabot-node")
            cookie = re.search(r"equabot_node=(n\d)", headers.get("set-cookie", ""))
            checks.check(status == 101 and node in NODES and (want is None or node == want)
                         and (want is not None or (cookie is not None and cookie[1] == node))
                         and event == "connect.challenge",
                         f"WebSocket upgrade /{query} through HAProxy: 101 from {node}"
                         + (f", cookie equabot_node={cookie[1]}" if cookie else "") + f", then {event}")
        # An error the balancer answers itself has the gateway's error shape.
        status, _, body = await conn.request("POST", "/v1/chat/completions", b"x" * 300_000)
        checks.check(status == 413 and clean_error(status, body),
                     f"a body too large to read its user: 413 with an error body ({status})")
    finally:
        conn.close()


async def sessions_under_failure(port: int, nodes: dict[str, Node], base: pathlib.Path,
                                 n_sessions: int, turns: int, conns: int, checks: Checks) -> None:
    tag = os.urandom(3).hex()
    users = [f"user-{tag}-{i:05d}" for i in range(n_sessions)]
    replies: dict[str, list[tuple[str, str | None]]] = {u: [] for u in users}
    errors: list[tuple[str, int, str, bool, float]] = []   # user, status, code, clean, time
    total = n_sessions * turns
    done = 0
    victim = nodes[VICTIM]
    outage: dict[str, float] = {}
    outage_over = asyncio.Event()

    async def killer() -> None:
        while done < total // 3:
            await asyncio.sleep(0.01)
        outage["sigterm"] = time.monotonic()
        say(f"  SIGTERM {VICTIM} after {done} of {total} requests")
        outage["exit_code"] = await asyncio.to_thread(victim.stop)
        outage["exited"] = time.monotonic()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(victim.start)
        outage["restarted"] = time.monotonic()
        say(f"  {VICTIM} exited {outage['exit_code']} after "
            f"{outage['exited'] - outage['sigterm']:.2f} s, restarted "
            f"{outage['restarted'] - outage['sigterm']:.2f} s after SIGTERM")
        outage_over.set()

    async def worker(mine: list[str]) -> None:
        nonlocal done
        conn = Conn(port)
        try:
            for turn in range(1, turns + 1):
                for user in mine:
                    text = f"hello {user} turn {turn}"
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            status, _, body = await conn.request(
                                "POST", "/v1/chat/completions", completion_body(user, text))
                        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                            status, body = 0, repr(exc).encode()
                        if status == 200:
                            reply = json.loads(body)["choices"][0]["message"]["content"]
                            replies[user].append((reply, node_of_completion(body)))
                            done += 1
                            break
                        clean = clean_error(status, body)
                        code = json.loads(body)["error"]["code"] if clean else body[:120].decode("latin-1")
                        errors.append((user, status, str(code), clean, time.monotonic()))
                        if time.monotonic() > deadline:
                            replies[user].append((f"gave up: {status} {code}", None))
                            done += 1
                            break
                        await asyncio.sleep(0.1)
        finally:
            conn.close()

    # A request with an idempotency key that the stopped node ran: retried after the
    # restart, it reaches that node again and gets the first attempt's run from its journal.
    idem = Conn(port)
    idem_key = next(k for k in (f"restart-{tag}-{i}" for i in range(99)) if owner_of(k) == VICTIM)
    first = await idem.request("POST", "/v1/chat/completions", completion_body(None, "once"),
                               {"Idempotency-Key": idem_key})
    began = time.monotonic()
    kill = asyncio.ensure_future(killer())
    await asyncio.gather(*(worker(users[i::conns]) for i in range(conns)))
    await kill
    elapsed = time.monotonic() - began
    await wait_all_up(port, set(NODES))
    again = await idem.request("POST", "/v1/chat/completions", completion_body(None, "once"),
                               {"Idempotency-Key": idem_key})
    idem.close()
    checks.check(first[0] == again[0] == 200 and first[2] == again[2]
                 and again[1].get("x-equabot-idempotent-replay") == "true"
                 and again[1].get("x-equabot-node") == VICTIM,
                 f"a retry under an Idempotency-Key that {VICTIM} ran replays its run after {VICTIM}'s "
                 f"restart ({again[0]} from {again[1].get('x-equabot-node')})")
    say(f"  {n_sessions} sessions × {turns} turns through HAProxy with {conns} connections: "
        f"{elapsed:.1f} s, {len(errors)} failed attempts (retried)")

    wrong_turns = [u for u in users if [r for r, _ in replies[u]] !=
                   [f"Echo (turn {t}): hello {u} turn {t}" for t in range(1, turns + 1)]]
    checks.check(not wrong_turns, f"every session saw turns 1..{turns} in order "
                                  f"({len(wrong_turns)} did not{': ' + wrong_turns[0] + ' ' + str(replies[wrong_turns[0]]) if wrong_turns else ''})")
    moved = [u for u in users if {n for _, n in replies[u]} != {owner_of(u)}]
    checks.check(not moved, f"every turn answered by the node crc32(user) mod 3 names "
                            f"({len(moved)} were not)")
    unclean = [e for e in errors if not e[3]]
    checks.check(not unclean, f"every failed request failed cleanly with an error body "
                              f"({len(unclean)} did not{': ' + str(unclean[0]) if unclean else ''})")
    others = [e for e in errors if owner_of(e[0]) != VICTIM]
    checks.check(not others, f"only requests of {VICTIM}'s sessions failed ({len(others)} others did)")
    kinds: dict[str, int] = {}
    for _, status, code, _, _ in errors:
        kinds[f"{status} {code}"] = kinds.get(f"{status} {code}", 0) + 1
    say(f"  failed attempts by kind: {kinds or 'none'}")
    checks.check(outage.get("exit_code") == 0, f"{VICTIM} exited 0 on SIGTERM ({outage.get('exit_code')})")
    victims = [u for u in users if owner_of(u) == VICTIM]
    checks.check(bool(victims) and all(len(replies[u]) == turns for u in victims),
                 f"{VICTIM}'s {len(victims)} sessions all came back after its restart")
    misplaced = []
    for user in users:
        holders = [n.id for n in nodes.values() if n.transcript(user).is_file()]
        if holders != [owner_of(user)]:
            misplaced.append((user, holders))
    checks.check(not misplaced, f"each session's transcript exists on exactly one node, its owner "
                                f"({len(misplaced)} not{': ' + str(misplaced[0]) if misplaced else ''})")
    sample = users[0]
    lines = [json.loads(x) for x in nodes[owner_of(sample)].transcript(sample).read_text().splitlines()]
    kinds_in = [x.get("type") for x in lines]
    checks.check(kinds_in.count("user") == turns and kinds_in.count("assistant") == turns,
                 f"a transcript holds {turns} user and {turns} assistant turns ({kinds_in})")


def throughput(port: int, seconds: float, body_file: pathlib.Path) -> dict:
    """Stateless completions through HAProxy: wrk -t1 -c64 with bench/post.lua."""
    out = subprocess.run(["wrk", "-t1", "-c64", f"-d{seconds:g}s", "--latency", "-s",
                          str(HERE.parent / "post.lua"), f"http://127.0.0.1:{port}/v1/chat/completions"],
                         env=dict(os.environ, BENCH_BODY_FILE=str(body_file)),
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out.split("WRKJSON ", 1)[1].splitlines()[0])
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"req_s": data["requests"] / (data["duration_us"] / 1e6), "p50_ms": data["p50_us"] / 1000,
            "p99_ms": data["p99_us"] / 1000, "errors": errors}


def doc_shows_config(checks: Checks) -> None:
    path = ROOT / "docs" / "scale-out.md"
    doc = path.read_text() if path.is_file() else ""
    cfg = (HERE / "haproxy.cfg").read_text()
    checks.check(cfg.strip() in doc, "docs/scale-out.md shows haproxy.cfg verbatim")


async def main_async(args: argparse.Namespace) -> int:
    checks = Checks()
    doc_shows_config(checks)
    base = pathlib.Path(tempfile.mkdtemp(prefix="equabot-scaleout-"))
    nodes = {n: Node(n, base) for n in NODES}
    balancer = Balancer(list(nodes.values()), base)
    try:
        for node in nodes.values():
            node.start()
        balancer.start()
        await wait_all_up(balancer.port, set(NODES))
        say(f"three nodes and HAProxy on 127.0.0.1:{balancer.port} (logs in {base})")
        say("routing:")
        await routing(balancer.port, checks)
        say("sessions, one node stopped mid-load:")
        await wait_all_up(balancer.port, set(NODES))
        await sessions_under_failure(balancer.port, nodes, base, args.sessions, args.turns,
                                     args.conns, checks)
        if shutil.which("wrk"):
            say(f"throughput, stateless completions through HAProxy (wrk -t1 -c64, {args.seconds:g} s; "
                f"HAProxy, wrk and the nodes share this machine's {os.cpu_count()} cores):")
            body = base / "body.json"
            body.write_bytes(completion_body(None, "alpha bravo charlie delta echo foxtrot golf hotel india"))
            up = list(NODES)
            await wait_all_up(balancer.port, set(up))
            for count in (3, 2, 1):
                while len(up) > count:
                    code = nodes[up.pop()].stop()
                    checks.check(code == 0, f"a node exits 0 on SIGTERM ({code})")
                await wait_all_up(balancer.port, set(up))
                throughput(balancer.port, 1.0, body)      # warm-up
                runs = [throughput(balancer.port, args.seconds, body) for _ in range(args.rounds)]
                r = {k: statistics.median(x[k] for x in runs) for k in ("req_s", "p50_ms", "p99_ms")}
                errors = sum(x["errors"] for x in runs)
                each = ", ".join(f"{x['req_s']:,.0f}" for x in runs)
                say(f"  {count} node{'s' if count > 1 else ' '}: {r['req_s']:8,.0f} req/s  "
                    f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  errors {errors}  "
                    f"(median of {each}; load average {os.getloadavg()[0]:.1f})")
                checks.check(errors == 0, f"no errors through HAProxy with {count} node(s)")
        else:
            say("throughput: skipped, wrk is not installed (make interop-haproxy installs it)")
    finally:
        balancer.stop()
        for node in nodes.values():
            node.stop()
        if not checks.failed and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if checks.failed:
        say(f"{len(checks.failed)} check(s) failed (logs and state in {base}):")
        for what in checks.failed:
            say(f"  - {what}")
        return 1
    say("all checks passed")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--conns", type=int, default=48, help="client connections for the sessions")
    parser.add_argument("--seconds", type=int, default=3, help="per throughput measurement (whole seconds: wrk takes no fractions)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput measurements per node count")
    parser.add_argument("--keep", action="store_true", help="keep the state dirs and logs")
    args = parser.parse_args()
    if not shutil.which("haproxy"):
        sys.exit("haproxy is not installed (make interop-haproxy installs it)")
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
