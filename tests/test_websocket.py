"""RFC 6455 codec tables (net.websocket), the asyncio shell (net.wsstream) and its client (net.wsclient).

Every parser vector runs whole, one byte at a time and with trailing bytes;
every serialiser vector round-trips through the parser. Shell tests run over
socket pairs and loopback with time scaled down (UNIT seconds).
"""

from __future__ import annotations

import ast
import asyncio
import gc
import os
import pathlib
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import tracemalloc
import unittest
import weakref

from equabot_gw.errors import (
    ApiError, ConnectionClosed, HeadTooLarge, InvalidUTF8, MessageTooBig, TooManyFragments, WebSocketProtocolError,
    ws_close_code,
)
from equabot_gw.net import websocket as ws_codec
from equabot_gw.net import wsclient, wsstream
from equabot_gw.net import wshandshake
from equabot_gw.net.websocket import (
    EOF, NEED_DATA, CloseReceived, Connection, Message, Ping, Pong, State,
)
from equabot_gw.net.wshandshake import (
    accept_key, check_server_response, client_request_headers, encode_client_request, server_handshake,
)
from equabot_gw.net.wsclient import connect
from equabot_gw.net.wsstream import WebSocket

UNIT = 0.05            # the shell tests' time unit, seconds
LIMIT = 1000           # max_message_bytes for the frame tables
MASK = b"\x37\xfa\x21\x3d"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = MASK, length: str | None = None, announce: int | None = None) -> bytes:
    """A frame built independently of the codec; ``length`` forces "16" or "64"-bit
    length encoding; ``announce`` overrides the length field (payload still as given)."""
    n = len(payload) if announce is None else announce
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask is not None else 0
    if length == "64" or (length is None and n > 0xFFFF):
        head = bytes((b0, m | 127)) + n.to_bytes(8, "big")
    elif length == "16" or (length is None and n > 125):
        head = bytes((b0, m | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, m | n))
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


class Fail:
    """The expected failure: close code and the exact error text."""

    def __init__(self, code: int, text: str) -> None:
        self.code, self.text = code, text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fail) and (self.code, self.text) == (other.code, other.text)

    def __repr__(self) -> str:
        return f"Fail({self.code}, {self.text!r})"


T = frame        # short names for the tables
TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
KOSME = bytes.fromhex("cebae1bdb9cf83cebcceb5")    # "κόσμε" as Autobahn spells it
BIG = bytes(range(256)) * 256      # 65536 bytes

# (name, bytes from a client, expected events [+ Fail]); server role, max_message_bytes=LIMIT.
SERVER_FRAMES: tuple[tuple[str, bytes, tuple], ...] = (
    # RFC 6455 §5.7 examples
    ("rfc 5.7 masked text Hello", bytes.fromhex("818537fa213d7f9f4d5158"), (Message("Hello"),)),
    ("rfc 5.7 masked pong Hello", bytes.fromhex("8a8537fa213d7f9f4d5158"), (Pong(b"Hello"),)),
    # sizes and length encodings (Autobahn 1.x)
    ("empty text", T(TEXT), (Message(""),)),
    ("empty binary", T(BINARY), (Message(b""),)),
    ("text 125 bytes", T(TEXT, b"*" * 125), (Message("*" * 125),)),
    ("text 126 bytes, 16-bit length", T(TEXT, b"*" * 126), (Message("*" * 126),)),
    ("binary 1000 bytes, at the limit", T(BINARY, BIG[:1000]), (Message(BIG[:1000]),)),
    ("non-minimal 16-bit length", T(TEXT, b"Hello", length="16"), (Message("Hello"),)),
    ("non-minimal 64-bit length", T(TEXT, b"Hello", length="64"), (Message("Hello"),)),
    ("non-minimal 64-bit length, 200 bytes", T(BINARY, BIG[:200], length="64"), (Message(BIG[:200]),)),
    ("all-zero mask", T(TEXT, b"Hi", mask=b"\0\0\0\0"), (Message("Hi"),)),
    ("two messages back to back", T(TEXT, b"a") + T(BINARY, b"b"), (Message("a"), Message(b"b"))),
    # fragmentation (Autobahn 5.x)
    ("fragmented text, 2 frames", T(TEXT, b"Hel", fin=False) + T(CONT, b"lo"), (Message("Hello"),)),
    ("fragmented text, empty middle", T(TEXT, b"a", fin=False) + T(CONT, fin=False) + T(CONT, b"b"),
     (Message("ab"),)),
    ("fragmented binary", T(BINARY, b"\x00", fin=False) + T(CONT, b"\xff"), (Message(b"\x00\xff"),)),
    ("all fragments empty", T(TEXT, fin=False) + T(CONT, fin=False) + T(CONT), (Message(""),)),
    ("ping between fragments", T(TEXT, b"a", fin=False) + T(PING, b"p") + T(CONT, b"b"),
     (Ping(b"p"), Message("ab"))),
    ("pong between fragments", T(BINARY, b"a", fin=False) + T(PONG, b"q") + T(CONT, b"b"),
     (Pong(b"q"), Message(b"ab"))),
    ("fragmented message at the limit", T(BINARY, BIG[:500], fin=False) + T(CONT, BIG[:500]),
     (Message(BIG[:500] * 2),)),
    ("control frames do not count toward the limit",
     T(BINARY, BIG[:990], fin=False) + T(PING, b"x" * 125) + T(CONT, BIG[:10]),
     (Ping(b"x" * 125), Message(BIG[:990] + BIG[:10]))),
    # control frames (Autobahn 2.x)
    ("empty ping", T(PING), (Ping(b""),)),
    ("ping with 125 bytes", T(PING, b"\xfe" * 125), (Ping(b"\xfe" * 125),)),
    ("unsolicited pong", T(PONG, b"hb"), (Pong(b"hb"),)),
    ("ten pings", b"".join(T(PING, b"%d" % i) for i in range(10)), tuple(Ping(b"%d" % i) for i in range(10))),
    # UTF-8 (Autobahn 6.x)
    ("utf-8 split inside a character", T(TEXT, KOSME[:3], fin=False) + T(CONT, KOSME[3:]),
     (Message(KOSME.decode()),)),
    ("4-byte character in 4 fragments", T(TEXT, b"\xf0", fin=False) + T(CONT, b"\x9f", fin=False)
     + T(CONT, b"\x98", fin=False) + T(CONT, b"\x80"), (Message("\U0001F600"),)),
    ("U+FFFF and U+10FFFF", T(TEXT, "\uffff\U0010ffff".encode()), (Message("\uffff\U0010ffff"),)),
    ("U+FEFF byte order mark kept", T(TEXT, b"\xef\xbb\xbfa"), (Message("\ufeffa"),)),
    # closing (Autobahn 7.x)
    ("close without payload", T(CLOSE), (CloseReceived(1005, ""),)),
    ("close 1000", T(CLOSE, close_payload(1000)), (CloseReceived(1000, ""),)),
    ("close 1000 with reason", T(CLOSE, close_payload(1000, b"bye")), (CloseReceived(1000, "bye"),)),
    ("close with 123-byte reason", T(CLOSE, close_payload(1000, b"r" * 123)), (CloseReceived(1000, "r" * 123),)),
    ("close reason in UTF-8", T(CLOSE, close_payload(4000, KOSME)), (CloseReceived(4000, KOSME.decode()),)),
    *((f"close code {c}", T(CLOSE, close_payload(c)), (CloseReceived(c, ""),))
      for c in (1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4999)),
    ("data after close is ignored", T(CLOSE, close_payload(1000)) + T(TEXT, b"late") + b"\xff\xff",
     (CloseReceived(1000, ""),)),
    ("close inside a fragmented message (7.1.5)", T(TEXT, b"frag1", fin=False)
     + T(CLOSE, close_payload(1000)) + T(CONT, b"frag2"), (CloseReceived(1000, ""),)),
    ("ping after close is ignored", T(CLOSE) + T(PING, b"x"), (CloseReceived(1005, ""),)),
    # -- failures ------------------------------------------------------------
    ("unmasked frame", T(TEXT, b"Hello", mask=None), (Fail(1002, "unmasked frame from client"),)),
    ("unmasked close", T(CLOSE, mask=None), (Fail(1002, "unmasked frame from client"),)),
    *((f"RSV {rsv}", T(TEXT, b"x", rsv=rsv), (Fail(1002, "reserved bits set without an extension"),))
      for rsv in range(1, 8)),
    ("RSV on a ping", T(PING, rsv=4), (Fail(1002, "reserved bits set without an extension"),)),
    ("RSV on a continuation", T(TEXT, b"a", fin=False) + T(CONT, b"b", rsv=1),
     (Fail(1002, "reserved bits set without an extension"),)),
    *((f"reserved opcode {op}", T(op), (Fail(1002, f"reserved opcode {op}"),))
      for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)),
    ("reserved opcode after a message", T(TEXT, b"ok") + T(5, b"x") + T(PING),
     (Message("ok"), Fail(1002, "reserved opcode 5"))),
    ("fragmented ping", T(PING, b"a", fin=False), (Fail(1002, "fragmented control frame"),)),
    ("fragmented pong", T(PONG, b"a", fin=False), (Fail(1002, "fragmented control frame"),)),
    ("fragmented close", T(CLOSE, fin=False), (Fail(1002, "fragmented control frame"),)),
    ("ping with 126 bytes", T(PING, b"x" * 126), (Fail(1002, "control frame payload over 125 bytes"),)),
    ("close with 126 bytes", T(CLOSE, close_payload(1000, b"r" * 124)),
     (Fail(1002, "control frame payload over 125 bytes"),)),
    ("continuation without a message", T(CONT, b"x", fin=False),
     (Fail(1002, "continuation frame without a message to continue"),)),
    ("final continuation without a message", T(CONT, b"x"),
     (Fail(1002, "continuation frame without a message to continue"),)),
    ("continuation after a complete message", T(TEXT, b"a") + T(CONT, b"b"),
     (Message("a"), Fail(1002, "continuation frame without a message to continue"))),
    ("text inside a fragmented text", T(TEXT, b"a", fin=False) + T(TEXT, b"b"),
     (Fail(1002, "new data frame inside a fragmented message"),)),
    ("binary inside a fragmented text", T(TEXT, b"a", fin=False) + T(PING) + T(BINARY, b"b"),
     (Ping(b""), Fail(1002, "new data frame inside a fragmented message"))),
    ("64-bit length with the top bit set", T(BINARY, announce=1 << 63, length="64"),
     (Fail(1002, "payload length with the most significant bit set"),)),
    ("invalid UTF-8 byte", T(TEXT, b"\xff"), (Fail(1007, "invalid UTF-8 in text message"),)),
    ("invalid UTF-8 in the second fragment", T(TEXT, KOSME, fin=False) + T(CONT, b"\xf4\x90\x80\x80", fin=False),
     (Fail(1007, "invalid UTF-8 in text message"),)),
    ("truncated UTF-8 at the end of a message", T(TEXT, KOSME[:-1]), (Fail(1007, "invalid UTF-8 in text message"),)),
    ("UTF-16 surrogate", T(TEXT, b"\xed\xa0\x80"), (Fail(1007, "invalid UTF-8 in text message"),)),
    ("overlong encoding", T(TEXT, b"\xc0\x80"), (Fail(1007, "invalid UTF-8 in text message"),)),
    ("code point over U+10FFFF", T(TEXT, b"\xf4\x90\x80\x80"), (Fail(1007, "invalid UTF-8 in text message"),)),
    ("close with 1-byte payload", T(CLOSE, b"\x03"), (Fail(1002, "close frame payload of 1 byte"),)),
    *((f"close code {c}", T(CLOSE, close_payload(c)), (Fail(1002, f"invalid close code {c}"),))
      for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)),
    ("close reason not UTF-8", T(CLOSE, close_payload(1000, b"\xce\xba\xe1\xbd")),
     (Fail(1007, "invalid UTF-8 in close reason"),)),
    ("message over the limit: header only", T(BINARY, announce=LIMIT + 1),
     (Fail(1009, f"message of {LIMIT + 1} bytes or more over the limit of {LIMIT}"),)),
    ("64-bit length far over the limit: header only", T(BINARY, announce=1 << 62, length="64"),
     (Fail(1009, f"message of {1 << 62} bytes or more over the limit of {LIMIT}"),)),
    ("fragmented message over the limit", T(TEXT, b"a" * 600, fin=False) + T(CONT, b"b" * 600),
     (Fail(1009, f"message of 1200 bytes or more over the limit of {LIMIT}"),)),
)

# (name, bytes from a server, expected); client role.
CLIENT_FRAMES: tuple[tuple[str, bytes, tuple], ...] = (
    ("rfc 5.7 unmasked text Hello", bytes.fromhex("810548656c6c6f"), (Message("Hello"),)),
    ("rfc 5.7 fragmented unmasked text", bytes.fromhex("010348656c") + bytes.fromhex("80026c6f"),
     (Message("Hello"),)),
    ("rfc 5.7 unmasked ping", bytes.fromhex("890548656c6c6f"), (Ping(b"Hello"),)),
    ("rfc 5.7 256 bytes binary", bytes.fromhex("827e0100") + BIG[:256], (Message(BIG[:256]),)),
    ("rfc 5.7 64KiB binary", bytes.fromhex("827f0000000000010000") + BIG, (Message(BIG),)),
    ("server close 1001", T(CLOSE, close_payload(1001, b"bye"), mask=None), (CloseReceived(1001, "bye"),)),
    ("masked frame from a server", bytes.fromhex("818537fa213d7f9f4d5158"),
     (Fail(1002, "masked frame from server"),)),
)

TRAILING = b"\x82"           # the start of a next frame's header


def parse(chunks, *, client: bool = False, max_message_bytes: int | None = LIMIT) -> tuple:
    """Feed ``chunks``; return the events and the failure, if any, as a tuple."""
    conn = Connection(client=client, max_message_bytes=max_message_bytes)
    events: list = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            try:
                event = conn.next_event()
            except WebSocketProtocolError as exc:
                with_failure = (*events, Fail(ws_close_code(exc), str(exc)))
                # sticky: the same error again
                with unittest.TestCase().assertRaises(type(exc)):
                    conn.next_event()
                return with_failure
            if event is NEED_DATA:
                break
            events.append(event)
    return tuple(events)


class FrameTables(unittest.TestCase):
    def check_table(self, table, client: bool, limit: int | None) -> None:
        for name, raw, expected in table:
            with self.subTest(name):
                self.assertEqual(parse([raw], client=client, max_message_bytes=limit), expected)
                self.assertEqual(parse([raw[i:i + 1] for i in range(len(raw))], client=client,
                                       max_message_bytes=limit), expected)
                self.assertEqual(parse([raw + TRAILING], client=client, max_message_bytes=limit), expected)

    def test_table_size(self) -> None:
        self.assertGreaterEqual(len(SERVER_FRAMES) + len(CLIENT_FRAMES), 100)

    def test_server_frames(self) -> None:
        self.check_table(SERVER_FRAMES, client=False, limit=LIMIT)

    def test_client_frames(self) -> None:
        self.check_table(CLIENT_FRAMES, client=True, limit=None)

    def test_large_frames_whole_and_in_pieces(self) -> None:
        for size in (65535, 65536, 300_000):
            data = BIG * 5
            raw = T(BINARY, data[:size])
            with self.subTest(size=size):
                self.assertEqual(parse([raw], max_message_bytes=None), (Message(data[:size]),))
                pieces = [raw[i:i + 1301] for i in range(0, len(raw), 1301)]
                self.assertEqual(parse(pieces, max_message_bytes=None), (Message(data[:size]),))

    def test_limit_is_checked_before_the_payload_arrives(self) -> None:
        conn = Connection(client=False, max_message_bytes=10)
        conn.receive_data(T(TEXT, b"x" * 11)[:6])          # header and mask only
        with self.assertRaises(MessageTooBig) as caught:
            conn.next_event()
        self.assertEqual((caught.exception.limit, caught.exception.size), (10, 11))

    def test_utf8_fails_fast_inside_a_frame(self) -> None:
        # Autobahn 6.4.3: the bad bytes arrive before the rest of the frame.
        for bad in (b"\xf4\x90", b"\xed\xa0", b"\xc0"):
            with self.subTest(bad=bad):
                raw = T(TEXT, KOSME + bad + b"edited", fin=False)
                conn = Connection(client=False)
                conn.receive_data(raw[:6 + len(KOSME) + len(bad)])
                with self.assertRaises(InvalidUTF8):
                    conn.next_event()

    def test_no_limit(self) -> None:
        self.assertEqual(parse([T(BINARY, BIG)], max_message_bytes=None), (Message(BIG),))

    def test_mask_helper_matches_the_definition(self) -> None:
        for n in (0, 1, 3, 4, 5, 125, 4095, 4096, 4097, 70000):
            data = os.urandom(n)
            mask = os.urandom(4)
            expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            self.assertEqual(ws_codec._apply_mask(data, mask), expected, n)


# (name, call on a server-role Connection, exact bytes).
SERVER_SENDS: tuple[tuple[str, object, bytes], ...] = (
    ("rfc 5.7 text Hello", lambda c: c.send_text("Hello"), bytes.fromhex("810548656c6c6f")),
    ("rfc 5.7 ping Hello", lambda c: c.send_ping(b"Hello"), bytes.fromhex("890548656c6c6f")),
    ("rfc 5.7 pong Hello", lambda c: c.send_pong(b"Hello"), bytes.fromhex("8a0548656c6c6f")),
    ("rfc 5.7 256 bytes binary", lambda c: c.send_binary(BIG[:256]), bytes.fromhex("827e0100") + BIG[:256]),
    ("rfc 5.7 64KiB binary", lambda c: c.send_binary(BIG), bytes.fromhex("827f0000000000010000") + BIG),
    ("empty text", lambda c: c.send_text(""), b"\x81\x00"),
    ("empty binary", lambda c: c.send_binary(b""), b"\x82\x00"),
    ("text 125", lambda c: c.send_text("a" * 125), b"\x81\x7d" + b"a" * 125),
    ("text 126", lambda c: c.send_text("a" * 126), b"\x81\x7e\x00\x7e" + b"a" * 126),
    ("binary 65535", lambda c: c.send_binary(BIG[:65535]), b"\x82\x7e\xff\xff" + BIG[:65535]),
    ("utf-8 text", lambda c: c.send_text(KOSME.decode()), b"\x81\x0b" + KOSME),
    ("empty ping", lambda c: c.send_ping(), b"\x89\x00"),
    ("close 1000", lambda c: c.send_close(), b"\x88\x02\x03\xe8"),
    ("close 1001 bye", lambda c: c.send_close(1001, "bye"), b"\x88\x05\x03\xe9bye"),
    ("close without status", lambda c: c.send_close(1005), b"\x88\x00"),
    ("close 4999 with 123-byte reason", lambda c: c.send_close(4999, "r" * 123),
     b"\x88\x7d\x13\x87" + b"r" * 123),
)


def expected_event(raw: bytes) -> object:
    """What parsing one of our own frames must give back."""
    events = parse([raw], client=True, max_message_bytes=None)
    assert len(events) == 1, events
    return events[0]


class Serialiser(unittest.TestCase):
    def test_server_frames_are_exact_and_round_trip(self) -> None:
        for name, send, raw in SERVER_SENDS:
            with self.subTest(name):
                out = send(Connection(client=False))
                self.assertEqual(out, raw)
                event = expected_event(out)
                self.assertNotIsInstance(event, Fail)

    def test_client_frames_are_masked_and_round_trip(self) -> None:
        for name, send, raw in SERVER_SENDS:
            with self.subTest(name):
                out = send(Connection(client=True))
                self.assertTrue(out[1] & 0x80, "mask bit")
                self.assertEqual(out[0], raw[0])
                self.assertEqual(len(out), len(raw) + 4)
                self.assertEqual(parse([out], client=False, max_message_bytes=None),
                                 parse([raw], client=True, max_message_bytes=None))

    def test_client_masks_differ(self) -> None:
        conn = Connection(client=True)
        self.assertNotEqual(conn.send_text("same")[2:6], conn.send_text("same")[2:6])

    def test_round_trip_of_every_close_code(self) -> None:
        for code in (*range(1000, 1004), *range(1007, 1015), 3000, 4000, 4999):
            raw = Connection(client=False).send_close(code, "x")
            self.assertEqual(expected_event(raw), CloseReceived(code, "x"))

    def test_bad_arguments(self) -> None:
        conn = Connection(client=False)
        for code in (999, 1004, 1006, 1015, 2000, 5000):
            with self.subTest(code=code), self.assertRaises(ValueError):
                conn.send_close(code)
        with self.assertRaises(ValueError):
            conn.send_close(1000, "r" * 124)
        with self.assertRaises(ValueError):
            conn.send_close(1005, "reason without code")
        with self.assertRaises(ValueError):
            conn.send_ping(b"x" * 126)
        self.assertIs(conn.state, State.OPEN)


class StateMachine(unittest.TestCase):
    def test_close_received_is_echoed_once(self) -> None:
        conn = Connection(client=False)
        conn.receive_data(T(CLOSE, close_payload(1001, b"going")))
        self.assertEqual(conn.next_event(), CloseReceived(1001, "going"))
        self.assertEqual(conn.data_to_send(), b"\x88\x02\x03\xe9")      # code echoed, no reason
        self.assertEqual(conn.data_to_send(), b"")
        self.assertIs(conn.state, State.CLOSING)
        with self.assertRaises(ConnectionClosed) as caught:
            conn.send_text("late")
        self.assertEqual((caught.exception.code, caught.exception.reason), (1001, "going"))
        self.assertIn("cannot send in state CLOSING (server)", caught.exception.__notes__)

    def test_empty_close_is_echoed_empty(self) -> None:
        conn = Connection(client=True)
        conn.receive_data(T(CLOSE, mask=None))
        self.assertEqual(conn.next_event(), CloseReceived(1005, ""))
        self.assertEqual(conn.data_to_send()[:2], b"\x88\x80")            # masked, empty

    def test_our_close_then_theirs(self) -> None:
        conn = Connection(client=False)
        conn.send_close(1000, "done")
        conn.receive_data(T(TEXT, b"still") + T(PING, b"p") + T(CLOSE, close_payload(1000)))
        self.assertEqual(conn.next_event(), Message("still"))          # data until their Close
        self.assertEqual(conn.next_event(), Ping(b"p"))
        self.assertEqual(conn.next_event(), CloseReceived(1000, ""))
        self.assertEqual(conn.data_to_send(), b"")                      # no Pong, no second Close
        with self.assertRaises(ConnectionClosed):
            conn.send_close()

    def test_ping_is_answered_while_open(self) -> None:
        conn = Connection(client=False)
        conn.receive_data(T(PING, b"abc") + T(PING))
        self.assertEqual([conn.next_event(), conn.next_event()], [Ping(b"abc"), Ping(b"")])
        self.assertEqual(conn.data_to_send(), b"\x8a\x03abc\x8a\x00")

    def test_eof(self) -> None:
        conn = Connection(client=False)
        conn.receive_data(T(TEXT, b"whole") + T(TEXT, b"partial")[:5])
        conn.receive_data(b"")
        self.assertIs(conn.state, State.CLOSED)
        self.assertEqual(conn.next_event(), Message("whole"))
        self.assertIs(conn.next_event(), EOF)
        self.assertIs(conn.next_event(), EOF)
        with self.assertRaises(RuntimeError):
            conn.receive_data(b"more")
        with self.assertRaises(ConnectionClosed) as caught:
            conn.send_text("x")
        self.assertEqual(caught.exception.code, 1006)

    def test_fail_sends_the_mapped_code_once(self) -> None:
        conn = Connection(client=False)
        conn.receive_data(T(TEXT, b"\xff"))
        with self.assertRaises(InvalidUTF8) as caught:
            conn.next_event()
        out = conn.fail(caught.exception)
        self.assertEqual(out, b"\x88\x1f\x03\xef" + b"invalid UTF-8 in text message")
        self.assertEqual(conn.close_sent, (1007, "invalid UTF-8 in text message"))
        self.assertEqual(conn.fail(caught.exception), b"")
        self.assertIs(conn.state, State.CLOSING)

    def test_fail_for_an_internal_error_reveals_nothing(self) -> None:
        conn = Connection(client=False)
        self.assertEqual(conn.fail(KeyError("secret")), b"\x88\x02\x03\xf3")     # 1011, no reason

    def test_fail_reason_is_cut_to_123_bytes(self) -> None:
        out = Connection(client=False).fail(WebSocketProtocolError("é" * 100))
        self.assertEqual(out[1], 2 + 122)               # 61 whole characters; never half of one
        self.assertEqual(out[4:].decode(), "é" * 61)

    def test_input_after_fail_is_ignored(self) -> None:
        conn = Connection(client=False)
        conn.fail(TimeoutError())
        conn.receive_data(T(TEXT, b"ignored"))
        self.assertIs(conn.next_event(), NEED_DATA)
        conn.receive_data(b"")
        self.assertIs(conn.next_event(), EOF)

    def test_connecting(self) -> None:
        conn = Connection(client=True, state=State.CONNECTING)
        with self.assertRaises(ConnectionClosed) as caught:
            conn.send_text("early")
        self.assertIn("cannot send in state CONNECTING (client)", caught.exception.__notes__)
        conn.opened()
        self.assertIs(conn.state, State.OPEN)
        with self.assertRaises(ConnectionClosed):
            conn.opened()

    def test_events_are_validated(self) -> None:
        with self.assertRaises(ValueError):
            Ping(b"x" * 126)
        with self.assertRaises(ValueError):
            CloseReceived(1006, "")
        self.assertEqual(repr(Connection(client=True)), "<Connection client OPEN>")


# -- the opening handshake -------------------------------------------------------

class Fields:
    """Header fields with lower-case names, as the HTTP layer hands them over."""

    def __init__(self, items) -> None:
        self.items = [(n.lower(), v) for n, v in items]

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.items if n == name), None)

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.items if n == name]


RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
GOOD = (("Host", "server.example.com"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", RFC_KEY), ("Origin", "http://example.com"), ("Sec-WebSocket-Version", "13"))


def without(name: str, *extra: tuple[str, str]) -> tuple:
    return tuple((n, v) for n, v in GOOD if n != name) + extra


UPGRADE_426 = (("Sec-WebSocket-Version", "13"),)

# (name, method, HTTP version, fields, expected: accept value or (status, message, headers)).
SERVER_HANDSHAKES: tuple[tuple[str, str, str, tuple, object], ...] = (
    ("rfc 6455 §1.3 example", "GET", "1.1", GOOD, RFC_ACCEPT),
    ("version written HTTP/1.1", "GET", "HTTP/1.1", GOOD, RFC_ACCEPT),
    ("Upgrade is case-insensitive", "GET", "1.1", without("Upgrade", ("Upgrade", "WebSocket")), RFC_ACCEPT),
    ("Upgrade list", "GET", "1.1", without("Upgrade", ("Upgrade", "h2c, websocket")), RFC_ACCEPT),
    ("Connection: keep-alive, Upgrade", "GET", "1.1",
     without("Connection", ("Connection", "keep-alive, Upgrade")), RFC_ACCEPT),
    ("Connection over two lines", "GET", "1.1",
     without("Connection", ("Connection", "keep-alive"), ("Connection", "UPGRADE")), RFC_ACCEPT),
    ("other key", "GET", "1.1", without("Sec-WebSocket-Key", ("Sec-WebSocket-Key", "AQIDBAUGBwgJCgsMDQ4PEA==")),
     "C/0nmHhBztSRGR1CwL6Tf4ZjwpY="),
    ("a subprotocol not a token", "GET", "1.1", GOOD + (("Sec-WebSocket-Protocol", "chat v2"),),
     (400, "invalid Sec-WebSocket-Protocol: each subprotocol must be a token", ())),
    ("a subprotocol outside ASCII", "GET", "1.1", GOOD + (("Sec-WebSocket-Protocol", "ch\u00e4t"),),
     (400, "invalid Sec-WebSocket-Protocol: each subprotocol must be a token", ())),
    ("a subprotocol offered twice", "GET", "1.1",
     GOOD + (("Sec-WebSocket-Protocol", "chat, v2"), ("Sec-WebSocket-Protocol", "chat")),
     (400, "invalid Sec-WebSocket-Protocol: a subprotocol offered twice", ())),
    ("POST", "POST", "1.1", GOOD, (400, "a WebSocket upgrade must use GET", ())),
    ("HTTP/1.0", "GET", "1.0", GOOD, (400, "a WebSocket upgrade needs HTTP/1.1", ())),
    ("garbage version", "GET", "x", GOOD, (400, "a WebSocket upgrade needs HTTP/1.1", ())),
    ("no Host", "GET", "1.1", without("Host"), (400, "missing Host header", ())),
    ("no Upgrade", "GET", "1.1", without("Upgrade"), (400, "missing Upgrade: websocket", ())),
    ("Upgrade: h2c", "GET", "1.1", without("Upgrade", ("Upgrade", "h2c")), (400, "missing Upgrade: websocket", ())),
    ("no Connection", "GET", "1.1", without("Connection"), (400, "missing Connection: Upgrade", ())),
    ("Connection: keep-alive", "GET", "1.1", without("Connection", ("Connection", "keep-alive")),
     (400, "missing Connection: Upgrade", ())),
    ("Connection: upgraded", "GET", "1.1", without("Connection", ("Connection", "upgraded")),
     (400, "missing Connection: Upgrade", ())),
    ("no key", "GET", "1.1", without("Sec-WebSocket-Key"), (400, "missing or invalid Sec-WebSocket-Key", ())),
    ("key not base64", "GET", "1.1", without("Sec-WebSocket-Key", ("Sec-WebSocket-Key", "not base64 at all!!")),
     (400, "missing or invalid Sec-WebSocket-Key", ())),
    ("key of 15 bytes", "GET", "1.1", without("Sec-WebSocket-Key", ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA")),
     (400, "missing or invalid Sec-WebSocket-Key", ())),
    ("key of 17 bytes", "GET", "1.1", without("Sec-WebSocket-Key", ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA=")),
     (400, "missing or invalid Sec-WebSocket-Key", ())),
    ("two keys", "GET", "1.1", GOOD + (("Sec-WebSocket-Key", RFC_KEY),),
     (400, "missing or invalid Sec-WebSocket-Key", ())),
    ("no version", "GET", "1.1", without("Sec-WebSocket-Version"), (400, "missing Sec-WebSocket-Version", ())),
    ("version 8", "GET", "1.1", without("Sec-WebSocket-Version", ("Sec-WebSocket-Version", "8")),
     (426, "unsupported WebSocket version", UPGRADE_426)),
    ("versions 13, 8", "GET", "1.1", without("Sec-WebSocket-Version", ("Sec-WebSocket-Version", "13, 8")),
     (426, "unsupported WebSocket version", UPGRADE_426)),
)

ACCEPTED = (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", RFC_ACCEPT))

# (name, status, response fields, expected error text or None); our key is RFC_KEY.
SERVER_RESPONSES: tuple[tuple[str, int, tuple, str | None], ...] = (
    ("rfc 6455 §1.3 example", 101, ACCEPTED, None),
    ("tokens in other case", 101, (("Upgrade", "WEBSOCKET"), ("Connection", "upgrade"),
                                   ("Sec-WebSocket-Accept", RFC_ACCEPT)), None),
    ("empty extensions field", 101, ACCEPTED + (("Sec-WebSocket-Extensions", ""),), None),
    ("200 instead of 101", 200, ACCEPTED, "server answered 200 instead of 101"),
    ("403", 403, (), "server answered 403 instead of 101"),
    ("no Upgrade", 101, ACCEPTED[1:], "response without Upgrade: websocket"),
    ("no Connection", 101, (ACCEPTED[0], ACCEPTED[2]), "response without Connection: Upgrade"),
    ("no Accept", 101, ACCEPTED[:2], "wrong Sec-WebSocket-Accept"),
    ("wrong Accept", 101, ACCEPTED[:2] + (("Sec-WebSocket-Accept", "x3JJHMbDL1EzLkh9GBhXDw=="),),
     "wrong Sec-WebSocket-Accept"),
    ("two Accepts", 101, ACCEPTED + (("Sec-WebSocket-Accept", RFC_ACCEPT),), "wrong Sec-WebSocket-Accept"),
    ("an extension", 101, ACCEPTED + (("Sec-WebSocket-Extensions", "permessage-deflate"),),
     "server chose an extension we did not offer"),
    ("a subprotocol", 101, ACCEPTED + (("Sec-WebSocket-Protocol", "chat"),),
     "server chose a subprotocol we did not offer"),
)


class Handshake(unittest.TestCase):
    def test_accept_key_rfc_example(self) -> None:
        self.assertEqual(accept_key(RFC_KEY), RFC_ACCEPT)

    def test_server_handshakes(self) -> None:
        for name, method, version, fields, expected in SERVER_HANDSHAKES:
            with self.subTest(name):
                if isinstance(expected, str):
                    self.assertEqual(server_handshake(method, version, Fields(fields)),
                                     [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                      ("Sec-WebSocket-Accept", expected)])
                    continue
                with self.assertRaises(ApiError) as caught:
                    server_handshake(method, version, Fields(fields))
                exc = caught.exception
                self.assertEqual((exc.status, exc.message, exc.headers), expected)

    def test_the_first_subprotocol_offered_is_chosen(self) -> None:
        # A browser fails a handshake whose answer names none of the subprotocols it offered.
        for offered, chosen in (((("Sec-WebSocket-Protocol", "equabot.v1, chat"),), "equabot.v1"),
                                ((("Sec-WebSocket-Protocol", " ,chat"), ("Sec-WebSocket-Protocol", "x")), "chat"),
                                ((("Sec-WebSocket-Protocol", ""),), None)):
            with self.subTest(offered):
                fields = server_handshake("GET", "1.1", Fields(GOOD + offered))
                self.assertEqual(fields[:3], [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                              ("Sec-WebSocket-Accept", RFC_ACCEPT)])
                self.assertEqual(fields[3:], [] if chosen is None else [("Sec-WebSocket-Protocol", chosen)])

    def test_server_responses(self) -> None:
        for name, status, fields, error in SERVER_RESPONSES:
            with self.subTest(name):
                if error is None:
                    check_server_response(status, Fields(fields), RFC_KEY)
                    continue
                with self.assertRaises(WebSocketProtocolError) as caught:
                    check_server_response(status, Fields(fields), RFC_KEY)
                self.assertEqual(str(caught.exception), error)

    def test_client_request(self) -> None:
        key = wshandshake.new_client_key()
        self.assertEqual(len(__import__("base64").b64decode(key)), 16)
        fields = client_request_headers("server.example.com", RFC_KEY)
        self.assertEqual(encode_client_request("/chat", fields),
                         b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
        # and our server accepts what our client asks
        self.assertEqual(server_handshake("GET", "1.1", Fields(fields))[2][1], RFC_ACCEPT)
        for path, extra in (("/a b", ()), ("/x\r\nEvil: 1", ()), ("/", (("X-A", "v\r\nEvil: 1"),)),
                            ("/", (("Bad Name", "v"),)), ("no-slash", ())):
            with self.subTest(path=path, extra=extra), self.assertRaises(ValueError):
                encode_client_request(path, [*fields, *extra])


class ImportDirection(unittest.TestCase):
    def test_net_modules_import_no_config_gateway_or_agents(self) -> None:
        root = pathlib.Path(ws_codec.__file__).parent
        for name in ("websocket.py", "wsstream.py", "wsclient.py"):
            tree = ast.parse((root / name).read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    target = "." * node.level + (node.module or "")
                elif isinstance(node, ast.Import):
                    target = ",".join(a.name for a in node.names)
                else:
                    continue
                for banned in ("config", "gateway", "agents"):
                    with self.subTest(module=name, target=target):
                        self.assertNotIn(banned, target.replace("equabot_gw.", "").split(".")[:2])


def fragmented(payload: bytes, size: int, opcode: int = TEXT) -> bytes:
    """``payload`` as one message in fragments of ``size`` bytes (all sharing MASK)."""
    pieces = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    last = len(pieces) - 1
    return b"".join(T(opcode if i == 0 else CONT, piece, fin=i == last) for i, piece in enumerate(pieces))


def feed_all(conn: Connection, wire: bytes, step: int = 65536) -> list:
    """Feed ``wire`` in reads of ``step`` bytes; the events (raises what the codec raises)."""
    events = []
    for i in range(0, len(wire), step):
        conn.receive_data(wire[i:i + step])
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
    return events


class Fragments(unittest.TestCase):
    """Regressions: a message in tiny fragments costs its size in memory and linear time."""

    def test_tiny_fragments_cost_the_message_size_in_memory(self) -> None:
        # Was: a 24 MiB text message in 2-byte fragments took 1060 MiB (an object per fragment).
        text = ("ab" * (128 * 1024)).encode()                # 256 KiB in 131,072 fragments
        wire = fragmented(text, 2)
        conn = Connection(client=False, max_message_bytes=None, max_fragments=None)
        tracemalloc.start()
        try:
            events = feed_all(conn, wire)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(events, [Message(text.decode())])
        # The joined bytes (+1/8 growth), the final str, one 64 KiB read and its copy: ~3.5x.
        self.assertLess(peak, 4 * len(text) + 256 * 1024)

    def test_tiny_fragments_cost_linear_time(self) -> None:
        def cpu(n: int) -> float:
            wire = fragmented(b"ab" * n, 2)
            conn = Connection(client=False, max_message_bytes=None, max_fragments=None)
            started = time.process_time()
            feed_all(conn, wire)
            return time.process_time() - started

        small = min(cpu(20000) for _ in range(2))
        large = min(cpu(80000) for _ in range(2))
        self.assertLess(large, 6 * small + 0.02, (small, large))    # 4x the bytes; quadratic is 16x

    def test_more_fragments_than_the_limit_fail_with_1009(self) -> None:
        conn = Connection(client=False, max_fragments=10)
        wire = fragmented(b"x" * 11, 1)
        with self.assertRaises(TooManyFragments) as caught:
            feed_all(conn, wire)
        self.assertEqual(ws_close_code(caught.exception), 1009)
        self.assertEqual(str(caught.exception), "message in more than 10 fragments")
        self.assertEqual(feed_all(Connection(client=False, max_fragments=10), fragmented(b"x" * 10, 1)),
                         [Message("x" * 10)])

    def test_the_default_fragment_limit(self) -> None:
        # Empty continuation frames cost a header each and no memory: the count bounds them.
        n = ws_codec.DEFAULT_MAX_FRAGMENTS
        head = T(TEXT, b"", fin=False)
        cont = T(CONT, b"", fin=False)
        conn = Connection(client=False)
        with self.assertRaises(TooManyFragments) as caught:
            feed_all(conn, head + cont * n)
        self.assertIn(f"more than {n} fragments", str(caught.exception))
        conn = Connection(client=False)
        self.assertEqual(feed_all(conn, head + cont * (n - 2) + T(CONT, b"ok")), [Message("ok")])

    def test_utf8_verdict_does_not_depend_on_how_fragments_arrive(self) -> None:
        # Text is checked per read, not per fragment: the verdicts must be those of
        # checking each fragment as it arrives (bad text before a bad header wins).
        bad_then_reserved = T(TEXT, b"ok\xc0", fin=False) + T(CONT, b"x", rsv=1)
        bad_then_ping = T(TEXT, b"ok\xc0", fin=False) + T(PING, b"p")
        for wire in (bad_then_reserved, bad_then_ping):
            for step in (1, 3, len(wire)):
                with self.subTest(wire=wire, step=step):
                    events = []
                    conn = Connection(client=False)
                    with self.assertRaises(InvalidUTF8):
                        for i in range(0, len(wire), step):
                            conn.receive_data(wire[i:i + step])
                            while (event := conn.next_event()) is not NEED_DATA:
                                events.append(event)
                    self.assertEqual(events, [])
                    self.assertEqual(conn.data_to_send(), b"")      # the Ping was not answered


# -- the asyncio shell ------------------------------------------------------------

class RawPeer:
    """The other end of a socket pair, speaking bytes: writes frames, reads what comes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self, timeout: float = 20 * UNIT) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next unmasked frame, or None at EOF."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        except asyncio.IncompleteReadError:
            return None
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return head[0] & 0x0F, await self.reader.readexactly(n)

    async def at_eof(self, timeout: float = 20 * UNIT) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout) == b""


async def server_with_raw_peer(**options) -> tuple[WebSocket, RawPeer]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    ws = WebSocket(client=False, **options)
    await loop.connect_accepted_socket(lambda: ws, a)
    reader, writer = await asyncio.open_connection(sock=b)
    peer = RawPeer(reader, writer)
    return ws, peer


async def ws_pair(server_options: dict | None = None, client_options: dict | None = None):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    server = WebSocket(client=False, **(server_options or {}))
    client = WebSocket(client=True, **(client_options or {}))
    await loop.connect_accepted_socket(lambda: server, a)
    await loop.create_connection(lambda: client, sock=b)
    return server, client


class Shell(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.loop_errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: self.loop_errors.append(ctx))

    async def asyncTearDown(self) -> None:
        self.assertEqual(self.loop_errors, [])

    async def raw_peer(self, **options) -> tuple[WebSocket, RawPeer]:
        ws, peer = await server_with_raw_peer(**options)
        self.addCleanup(peer.writer.close)
        return ws, peer

    async def test_messages_both_ways(self) -> None:
        server, client = await ws_pair()
        client.send("κόσμε")
        client.send(b"\x00\xff")
        client.send(bytearray(b"ba"))
        self.assertEqual([await server.recv() for _ in range(3)], ["κόσμε", b"\x00\xff", b"ba"])
        server.send("back")
        self.assertEqual(await client.recv(), "back")
        self.assertTrue(server.open and client.open)
        with self.assertRaises(TypeError):
            client.send(42)
        await client.close()
        self.assertIn("CLOSED", repr(client))

    async def test_close_started_by_the_client(self) -> None:
        server, client = await ws_pair()
        await client.close(1000, "bye")
        with self.assertRaises(ConnectionClosed) as caught:
            await server.recv()
        self.assertEqual((caught.exception.code, caught.exception.reason), (1000, "bye"))
        await server.wait_closed()
        self.assertEqual((server.close_code, server.close_reason), (1000, "bye"))
        self.assertEqual((client.close_code, client.close_reason), (1000, ""))   # the echo
        self.assertFalse(client.open)
        with self.assertRaises(ConnectionClosed):
            client.send("late")

    async def test_close_started_by_the_server(self) -> None:
        server, client = await ws_pair()
        server.send("last words")
        closing = asyncio.create_task(server.close(1001, "going away"))
        self.assertEqual([m async for m in client], ["last words"])     # 1001 ends iteration
        await closing
        await client.wait_closed()
        self.assertEqual((client.close_code, client.close_reason), (1001, "going away"))
        self.assertEqual(server.close_code, 1001)

    async def test_server_closes_tcp_first(self) -> None:
        # RFC 6455 §7.1.1: the client's Close is answered, then the server ends TCP
        # while the client has not closed anything.
        server, peer = await self.raw_peer()
        peer.send(T(CLOSE, close_payload(1000, b"bye")))
        self.assertEqual(await peer.read_frame(), (CLOSE, close_payload(1000)))
        self.assertTrue(await peer.at_eof())
        peer.writer.close()
        await server.wait_closed()
        self.assertEqual(server.close_code, 1000)

    async def test_iteration_raises_on_an_abnormal_close(self) -> None:
        server, client = await ws_pair()
        await server.close(4000, "app says no")
        with self.assertRaises(ConnectionClosed) as caught:
            async for _ in client:
                pass
        self.assertEqual(caught.exception.code, 4000)

    async def test_close_timeout(self) -> None:
        server, peer = await self.raw_peer(close_timeout=2 * UNIT)
        began = time.monotonic()
        await server.close()                         # the peer never answers
        elapsed = time.monotonic() - began
        self.assertGreaterEqual(elapsed, 1.5 * UNIT)
        self.assertLess(elapsed, 10 * UNIT)
        self.assertEqual(server.close_code, 1006)
        self.assertEqual(await peer.read_frame(), (CLOSE, close_payload(1000)))

    async def test_ping_and_pong(self) -> None:
        server, client = await ws_pair()
        rtt = await asyncio.wait_for(client.ping(b"are you there"), 20 * UNIT)
        self.assertGreaterEqual(rtt, 0.0)
        first, second = server.ping(b"1"), server.ping(b"2")
        await asyncio.wait_for(asyncio.gather(first, second), 20 * UNIT)
        with self.assertRaises(ValueError):
            pending = client.ping(b"same")
            client.ping(b"same")
        await pending
        await client.close()
        with self.assertRaises(ConnectionClosed):
            client.ping()

    async def test_keepalive_pings_an_idle_peer(self) -> None:
        server, peer = await self.raw_peer(ping_interval=UNIT, ping_timeout=4 * UNIT)
        for _ in range(3):
            opcode, payload = await peer.read_frame()
            self.assertEqual(opcode, PING)
            peer.send(T(PONG, payload))
        self.assertTrue(server.open)
        closing = asyncio.create_task(server.close())
        while (frame_ := await peer.read_frame())[0] != CLOSE:
            pass
        peer.send(T(CLOSE, frame_[1]))
        self.assertTrue(await peer.at_eof())        # the server ends TCP first...
        peer.writer.close()                         # ...and waits for ours
        await closing
        self.assertEqual(server.close_code, 1000)

    async def test_keepalive_without_timeout_keeps_one_timer(self) -> None:
        server, peer = await self.raw_peer(ping_interval=UNIT, ping_timeout=None)
        pings, began = 0, time.monotonic()
        while time.monotonic() - began < 8 * UNIT:
            opcode, payload = await peer.read_frame()
            pings += 1
            if pings % 2:                       # answer every other Ping only
                peer.send(T(PONG, payload))
        self.assertLessEqual(pings, 10)         # one Ping per interval, never more
        self.assertTrue(server.open)
        self.assertLessEqual(len(server._pings), 1)

    async def test_ping_timeout_fails_with_1011(self) -> None:
        server, peer = await self.raw_peer(ping_interval=UNIT, ping_timeout=UNIT, close_timeout=2 * UNIT)
        self.assertEqual((await peer.read_frame())[0], PING)       # and no Pong goes back
        self.assertEqual(await peer.read_frame(), (CLOSE, close_payload(1011, b"keepalive ping timeout")))
        self.assertTrue(await peer.at_eof())
        await asyncio.wait_for(server.wait_closed(), 20 * UNIT)
        self.assertEqual((server.close_code, server.close_reason), (1011, "keepalive ping timeout"))

    async def test_protocol_error_fails_with_1002(self) -> None:
        server, peer = await self.raw_peer()
        peer.send(T(TEXT, b"fine") + T(TEXT, b"unmasked", mask=None) + T(PING))
        self.assertEqual(await server.recv(), "fine")
        server.send("echo of fine")      # still allowed: the failure waits one loop turn
        self.assertEqual(await peer.read_frame(), (TEXT, b"echo of fine"))
        self.assertEqual(await peer.read_frame(), (CLOSE, close_payload(1002, b"unmasked frame from client")))
        self.assertTrue(await peer.at_eof())                         # no Pong: the Ping was never read
        with self.assertRaises(ConnectionClosed) as caught:
            await server.recv()
        self.assertEqual(caught.exception.code, 1002)
        peer.writer.close()
        await server.wait_closed()

    async def test_message_too_big_fails_with_1009(self) -> None:
        server, peer = await self.raw_peer(max_message_bytes=100)
        peer.send(T(BINARY, announce=101))
        opcode, payload = await peer.read_frame()
        self.assertEqual((opcode, payload[:2]), (CLOSE, (1009).to_bytes(2, "big")))
        peer.writer.close()
        await server.wait_closed()
        self.assertEqual(server.close_code, 1009)

    async def test_eof_without_close_is_1006(self) -> None:
        server, peer = await self.raw_peer()
        peer.send(T(TEXT, b"bye"))
        peer.writer.close()
        self.assertEqual(await server.recv(), "bye")
        with self.assertRaises(ConnectionClosed) as caught:
            await server.recv()
        self.assertEqual(caught.exception.code, 1006)

    async def test_a_peer_gone_mid_message_leaves_nothing_behind(self) -> None:
        # A reset in the middle of a message (no EOF is read): the codec's parser, left
        # waiting, referred back to the codec, a cycle, and the unfinished message stayed
        # in memory until a full run of the cyclic garbage collector (a gateway's rarely
        # comes). Whole messages that came before it are still delivered.
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            peer = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
        ws = WebSocket(client=False, max_queued_messages=2)
        await loop.connect_accepted_socket(lambda: ws, accepted)
        with peer:
            peer.sendall(b"".join(T(TEXT, b"%d" % i) for i in range(5)) + T(BINARY, b"x" * 100_000, fin=False)
                         + T(CONT, b"y" * 1000, announce=1 << 20))
            await asyncio.sleep(UNIT)
            self.assertFalse(ws._transport.is_reading())            # two unread: reading paused
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close = reset
        self.assertEqual([await ws.recv() for _ in range(5)], ["0", "1", "2", "3", "4"])
        await asyncio.wait_for(ws.wait_closed(), 20 * UNIT)          # reading again, it sees the reset
        with self.assertRaises(ConnectionClosed) as caught:
            await ws.recv()
        self.assertEqual(caught.exception.code, 1006)
        codec = weakref.ref(ws._conn)
        gc.disable()
        try:
            del ws
            self.assertIsNone(codec())                               # freed with its shell
        finally:
            gc.enable()

    async def test_flow_control_pauses_reading(self) -> None:
        server, peer = await self.raw_peer(max_queued_messages=4, close_timeout=2 * UNIT)
        peer.send(b"".join(T(TEXT, b"%d" % i) for i in range(40)))
        await asyncio.sleep(UNIT)
        self.assertFalse(server._transport.is_reading())
        self.assertEqual(len(server._messages), 4)
        self.assertEqual([await server.recv() for _ in range(40)], [str(i) for i in range(40)])
        self.assertTrue(server._transport.is_reading())
        await server.close()

    async def test_close_while_reading_is_paused(self) -> None:
        server, peer = await self.raw_peer(max_queued_messages=2, close_timeout=40 * UNIT)
        peer.send(b"".join(T(TEXT, b"%d" % i) for i in range(10)))
        await asyncio.sleep(UNIT)
        self.assertFalse(server._transport.is_reading())
        began = time.monotonic()
        closing = asyncio.create_task(server.close())
        while (frame_ := await peer.read_frame())[0] != CLOSE:
            pass
        peer.send(T(TEXT, b"in flight") + T(CLOSE, frame_[1]))
        self.assertTrue(await peer.at_eof())
        peer.writer.close()
        await closing
        self.assertLess(time.monotonic() - began, 20 * UNIT)       # not the close timeout
        self.assertEqual(server.close_code, 1000)
        self.assertEqual([await server.recv(), await server.recv()], ["0", "1"])
        with self.assertRaises(ConnectionClosed):
            await server.recv()

    async def test_back_pressure_cuts_off_a_peer_that_does_not_read(self) -> None:
        slow, _peer = await self.raw_peer(max_write_buffer_bytes=256 * 1024)
        server, client = await ws_pair()
        chunk = b"x" * 65536
        began = time.monotonic()
        with self.assertRaises(ConnectionClosed) as caught, \
                self.assertLogs("equabot_gw.net.wsstream", "WARNING") as logs:
            for _ in range(1000):                 # never blocks; fails once the buffer passes the limit
                slow.send(chunk)
        self.assertRegex(logs.output[0], r"ws#\d+ peer not reading: over 262144 unsent bytes")
        self.assertLess(time.monotonic() - began, 1.0)
        self.assertEqual(caught.exception.code, 1006)
        await asyncio.wait_for(slow.wait_closed(), 20 * UNIT)
        self.assertEqual((slow.close_code, slow.close_reason), (1006, "write buffer over the limit"))
        client.send("the others go on")
        self.assertEqual(await server.recv(), "the others go on")
        await client.close()

    async def test_unread_messages_are_bounded_in_bytes(self) -> None:
        # 16 queued 25 MiB messages was the old bound: the queue now stops at max_queued_bytes.
        limit = 64 * 1024
        server, peer = await self.raw_peer(max_queued_bytes=limit, close_timeout=2 * UNIT)
        message = b"y" * 20_000
        peer.send(b"".join(T(BINARY, message) for _ in range(30)))
        await asyncio.sleep(UNIT)
        self.assertFalse(server._transport.is_reading())
        self.assertLess(len(server._messages), 16)
        self.assertGreaterEqual(server.queued_bytes, limit)
        self.assertLess(server.queued_bytes, limit + len(message) + 100)
        self.assertEqual([await server.recv() for _ in range(30)], [message] * 30)
        self.assertEqual(server.queued_bytes, 0)
        self.assertTrue(server._transport.is_reading())
        await server.close()

    async def test_limits_can_be_tightened_on_an_open_connection(self) -> None:
        # E.g. before a peer has authenticated: small messages, one at a time.
        server, peer = await self.raw_peer(close_timeout=2 * UNIT)
        server.max_message_bytes, server.max_queued_messages, server.max_fragments = 100, 1, 4
        peer.send(T(TEXT, b"1") + T(TEXT, b"2"))
        await asyncio.sleep(UNIT)
        self.assertEqual(len(server._messages), 1)          # reading paused after one
        self.assertFalse(server._transport.is_reading())
        self.assertEqual([await server.recv(), await server.recv()], ["1", "2"])
        peer.send(T(TEXT, b"x" * 101))
        opcode, payload = await peer.read_frame()
        self.assertEqual((opcode, int.from_bytes(payload[:2], "big")), (CLOSE, 1009))

    async def test_a_read_of_tiny_frames_is_parsed_over_several_loop_turns(self) -> None:
        # 256 KiB of 8-byte frames is ~32,000 frames: parsed 64 KiB per turn, so others run between.
        server, peer = await self.raw_peer(max_fragments=None, max_message_bytes=None,
                                           close_timeout=2 * UNIT)
        wire = fragmented(b"ab" * 40000, 2)
        turns = 0
        done = asyncio.get_running_loop().create_future()

        def tick() -> None:
            nonlocal turns
            turns += 1
            if not done.done():
                asyncio.get_running_loop().call_soon(tick)

        server.data_received(wire)
        self.assertGreater(len(server._backlog), 0)
        asyncio.get_running_loop().call_soon(tick)
        self.assertEqual(await asyncio.wait_for(server.recv(), 50 * UNIT), "ab" * 40000)
        done.set_result(None)
        self.assertGreaterEqual(turns, len(wire) // wsstream.MAX_BYTES_PER_TURN - 1)
        self.assertTrue(server._transport.is_reading())

    async def test_recv_twice_at_once_is_an_error(self) -> None:
        server, client = await ws_pair()
        first = asyncio.create_task(server.recv())
        await asyncio.sleep(0)
        with self.assertRaises(RuntimeError):
            await server.recv()
        client.send("one")
        self.assertEqual(await first, "one")
        await client.close()


class Client(unittest.IsolatedAsyncioTestCase):
    async def test_connect_to_the_echo_server(self) -> None:
        from tests.test_websocket_autobahn import ECHO_PATH, start_echo_server
        host, port, close = await start_echo_server()
        try:
            ws = await connect(f"ws://{host}:{port}{ECHO_PATH}", headers=[("Origin", "http://test")])
            ws.send("hello")
            ws.send(b"\x01\x02")
            self.assertEqual([await ws.recv(), await ws.recv()], ["hello", b"\x01\x02"])
            await ws.close(1000, "done")
            self.assertEqual(ws.close_code, 1000)
        finally:
            await close()

    async def start_raw_server(self, handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.addAsyncCleanup(server.wait_closed)
        self.addCleanup(server.close)
        return server.sockets[0].getsockname()[1]

    async def test_refused_handshake(self) -> None:
        async def forbid(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
        port = await self.start_raw_server(forbid)
        with self.assertRaises(WebSocketProtocolError) as caught:
            await connect(f"ws://127.0.0.1:{port}/")
        self.assertEqual(str(caught.exception), "server answered 403 instead of 101")

    async def test_server_sends_frames_right_behind_the_101(self) -> None:
        async def eager(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
                       if l.lower().startswith(b"sec-websocket-key:"))
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
                         + T(TEXT, b"early", mask=None) + T(CLOSE, close_payload(1000), mask=None))
            await reader.readexactly(8)  # the client's masked Close reply; then the server ends TCP
            writer.close()
        port = await self.start_raw_server(eager)
        ws = await connect(f"ws://127.0.0.1:{port}/path?q=1")
        self.assertEqual([m async for m in ws], ["early"])
        await ws.wait_closed()

    async def test_open_timeout_and_early_close(self) -> None:
        async def silent(reader, writer):
            await reader.read()
            writer.close()
        port = await self.start_raw_server(silent)
        with self.assertRaises(TimeoutError):
            await connect(f"ws://127.0.0.1:{port}/", open_timeout=2 * UNIT)

        async def hang_up(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.close()
        port = await self.start_raw_server(hang_up)
        with self.assertRaises(ConnectionClosed) as caught:
            await connect(f"ws://127.0.0.1:{port}/")
        self.assertEqual(caught.exception.code, 1006)

    async def test_response_head_over_64_kib(self) -> None:
        async def chatty(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Pad: " + b"a" * 70000)
            await reader.read()
            writer.close()
        port = await self.start_raw_server(chatty)
        with self.assertRaises(HeadTooLarge) as caught:
            await connect(f"ws://127.0.0.1:{port}/")
        self.assertEqual(caught.exception.limit, 65536)

    async def test_bad_urls(self) -> None:
        for url in ("http://example.com/", "ws:///nohost", "ws://example.com/#frag"):
            with self.subTest(url=url), self.assertRaises(ValueError):
                await connect(url)

    def test_url_split(self) -> None:
        self.assertEqual(wsclient._split_url("ws://h/"), (False, "h", 80, "h", "/"))
        self.assertEqual(wsclient._split_url("wss://h:8443/a?b=c"), (True, "h", 8443, "h:8443", "/a?b=c"))
        self.assertEqual(wsclient._split_url("ws://[::1]:81"), (False, "::1", 81, "[::1]:81", "/"))

    @unittest.skipUnless(shutil.which("openssl"), "needs the openssl command to make a test certificate")
    async def test_wss(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-days", "1", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost",
                            "-keyout", key, "-out", cert], check=True, capture_output=True)
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(cert, key)
            client_ctx = ssl.create_default_context(cafile=cert)

        async def echo_once(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
                       if l.lower().startswith(b"sec-websocket-key:"))
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n")
            conn = Connection(client=False)
            while (data := await reader.read(65536)):
                conn.receive_data(data)
                while (event := conn.next_event()) is not NEED_DATA:
                    if isinstance(event, Message):
                        writer.write(conn.send_text(event.data))
                writer.write(conn.data_to_send())
                if conn.close_rcvd:
                    break
            writer.close()

        server = await asyncio.start_server(echo_once, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            ws = await connect(f"wss://localhost:{port}/", ssl_context=client_ctx)
            ws.send("over tls")
            self.assertEqual(await ws.recv(), "over tls")
            await ws.close()
            self.assertEqual(ws.close_code, 1000)
        finally:
            server.close()
            await server.wait_closed()


if __name__ == "__main__":
    unittest.main()
