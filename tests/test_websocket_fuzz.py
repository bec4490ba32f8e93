"""Fixed-seed fuzzing of the RFC 6455 codec (net.websocket).

Inputs are mutations of valid frame sequences (bit flips, byte edits,
splices, truncations, length-field edits, repeated ranges) plus random bytes,
for both roles. Each input is parsed whole and in random chunks; the only
exceptions allowed out are ``WebSocketProtocolError`` and its subclasses, and
both feedings must give the same events and the same error. The handshake
helpers get the same treatment with random header fields.
"""

from __future__ import annotations

import os
import random
import unittest

from equabot_gw.errors import ApiError, WebSocketProtocolError, ws_close_code
from equabot_gw.net.websocket import EOF, NEED_DATA, CloseReceived, Connection, Message, Ping, Pong
from equabot_gw.net.wshandshake import check_server_response, server_handshake

SEED = 6455
INPUTS = int(os.environ.get("EQUABOT_FUZZ_INPUTS", "100000"))
LIMIT = 4096                     # max_message_bytes, so that 1009 is reachable


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True,
          rsv: int = 0, wide: int = 0) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask else 0
    if wide == 2 or n > 0xFFFF:
        head = bytes((b0, m | 127)) + n.to_bytes(8, "big")
    elif wide == 1 or n > 125:
        head = bytes((b0, m | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, m | n))
    if not mask:
        return head + payload
    key = b"\x11\x22\x33\x44"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def seeds(mask: bool) -> list[bytes]:
    """Valid sequences: every frame type, fragmentation, UTF-8, every length encoding."""
    f = lambda *a, **k: frame(*a, mask=mask, **k)    # noqa: E731
    text = "κόσμε \U0001F600 ascii".encode()
    return [
        f(1, b"Hello"),
        f(2, bytes(range(256))),
        f(1, text),
        f(1, text[:7], fin=False) + f(0, text[7:13], fin=False) + f(0, text[13:]),
        f(2, b"a" * 130) + f(9, b"ping") + f(10, b"pong"),
        f(1, b"frag", fin=False) + f(9, b"x") + f(0, b"ment"),
        f(1, b"w", wide=1) + f(2, b"ww", wide=2),
        f(2, b"z" * 3000, wide=2),
        f(8, (1000).to_bytes(2, "big") + b"bye"),
        f(1, b"") + f(2, b"") + f(9) + f(10) + f(8),
        f(1, b"x" * 2000, fin=False) + f(0, b"y" * 2000),
        f(9, b"p" * 125) + f(1, "é".encode() * 40),
        f(8, (4999).to_bytes(2, "big") + text),
    ]


def mutate(rng: random.Random, pool: list[bytes]) -> bytes:
    data = bytearray(rng.choice(pool))
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(9)
        n = len(data)
        if kind == 0 and n:                                  # bit flip
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and n:                                # byte replace
            data[rng.randrange(n)] = rng.randrange(256)
        elif kind == 2:                                      # splice with another seed
            other = rng.choice(pool)
            data = data[:rng.randint(0, n)] + other[rng.randint(0, len(other)):]
        elif kind == 3 and n:                                # truncate
            del data[rng.randint(0, n - 1):]
        elif kind == 4 and n >= 2:                           # length field edit
            data[1] = (data[1] & 0x80) | rng.choice((0, 1, 125, 126, 127, rng.randrange(128)))
            if data[1] & 0x7F in (126, 127):
                width = 2 if data[1] & 0x7F == 126 else 8
                value = rng.choice((0, 1, 125, 126, 65535, 65536, LIMIT, LIMIT + 1,
                                    1 << 62, (1 << 63) + 1, rng.getrandbits(width * 8)))
                data[2:2] = (value & ((1 << (width * 8)) - 1)).to_bytes(width, "big")
        elif kind == 5 and n:                                # first byte: opcode, FIN, RSV
            data[0] = rng.randrange(256)
        elif kind == 6:                                      # insert random bytes
            i = rng.randint(0, n)
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        elif kind == 7 and n:                                # repeat a range
            i = rng.randrange(n)
            j = rng.randint(i, min(n, i + 64))
            data[j:j] = data[i:j] * rng.randint(1, 3)
        elif kind == 8 and n:                                # delete a range
            i = rng.randrange(n)
            del data[i:i + rng.randint(1, 16)]
    return bytes(data)


def run(data: bytes, chunks: list[int], client: bool) -> tuple:
    """Parse ``data`` cut at ``chunks``, then EOF; return (events, error)."""
    conn = Connection(client=client, max_message_bytes=LIMIT)
    events: list = []
    error = None
    cuts = [0, *chunks, len(data)]
    try:
        for start, end in zip(cuts, cuts[1:]):
            if start == end:
                continue                  # b"" would mean EOF
            conn.receive_data(data[start:end])
            while (event := conn.next_event()) is not NEED_DATA:
                assert event is not EOF, "EOF before the end of the input"
                events.append(event)
        conn.receive_data(b"")
        while (event := conn.next_event()) is not EOF:
            events.append(event)
    except WebSocketProtocolError as exc:
        error = (type(exc), str(exc), ws_close_code(exc))
        try:
            conn.next_event()
            raise AssertionError("the error was not sticky")
        except WebSocketProtocolError:
            pass
        conn.fail(exc)
    conn.data_to_send()
    for event in events:
        if isinstance(event, Message):
            assert isinstance(event.data, (str, bytes)) and len(event.data) <= LIMIT * 4, event
        else:
            assert isinstance(event, (Ping, Pong, CloseReceived)), event
    return events, error


class FrameFuzz(unittest.TestCase):
    def test_frames(self) -> None:
        rng = random.Random(SEED)
        pools = {False: seeds(mask=True), True: seeds(mask=False)}     # by client role
        errors = 0
        for i in range(INPUTS):
            client = bool(i & 1)
            if i % 10 == 0:
                data = rng.randbytes(rng.randint(0, 64))
            else:
                data = mutate(rng, pools[client])
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6)))) \
                if len(data) > 1 else []
            try:
                whole = run(data, [], client)
                pieces = run(data, cuts, client)
            except Exception as exc:      # anything but WebSocketProtocolError is a bug
                self.fail(f"input {i} ({'client' if client else 'server'}) {data.hex()}: {exc!r}")
            if whole != pieces:
                self.fail(f"input {i}: whole and chunked parses differ for {data.hex()}:\n{whole}\n{pieces}")
            errors += whole[1] is not None
        self.assertGreater(errors, INPUTS // 4)           # the mutations do reach the error paths
        self.assertLess(errors, INPUTS)


TOKENS = ("websocket", "WebSocket", "upgrade", "Upgrade", "keep-alive", "h2c", "13", "8", "", " ",
          "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAA", "====", "\x00", "é")
NAMES = ("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
         "sec-websocket-accept", "sec-websocket-extensions", "sec-websocket-protocol")


class Fields:
    def __init__(self, items) -> None:
        self.items = items

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.items if n == name), None)

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.items if n == name]


class HandshakeFuzz(unittest.TestCase):
    def test_handshake_helpers(self) -> None:
        rng = random.Random(SEED)
        for _ in range(5000):
            items = [(rng.choice(NAMES), ", ".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 3))))
                     for _ in range(rng.randint(0, 8))]
            fields = Fields(items)
            try:
                server_handshake(rng.choice(("GET", "POST", "get")), rng.choice(("1.1", "1.0", "HTTP/1.1", "2", "")),
                                 fields)
            except ApiError as exc:
                self.assertIn(exc.status, (400, 426))
            try:
                check_server_response(rng.choice((101, 200, 426)), fields, "dGhlIHNhbXBsZSBub25jZQ==")
            except WebSocketProtocolError:
                pass


if __name__ == "__main__":
    unittest.main()
