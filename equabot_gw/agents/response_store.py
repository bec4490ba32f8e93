"""Stored responses: a durable map from a response id to its session, and its object kept on disk.

Owns ``<state>/responses/``: one append-only JSONL log per UTC day
(``YYYY-MM-DD.jsonl``), each line one stored response::

    {"id","agentId","sessionKey","runId","at","response":{...},"input":[...]}

written in that key order (the loader reads the first four by pattern, without
decoding the rest), fsynced before ``put`` returns by a group-committing
writer thread of its own (``transcripts.Committer``, on these files only;
an OSError of its jobs reaches the caller as ``StorageError``).
Deleting overwrites the line in place with ``{"id","deleted":true}`` padded
to the same length, so the content is gone from disk and the log stays
line-aligned. Logs whose whole day ended more than ``retention_days`` ago
(30 by default, as OpenAI keeps responses) are deleted at start-up and when
the date rolls over, with their entries: the map's memory is bounded by the
responses of that many days. The sessions that this leaves without any stored
response are handed to ``on_expired`` (the caller deletes the ones it made
for its conversations, whose transcripts no request can reach any more).
In memory: one small entry per stored response (its session, run and where
its line is), never the objects, which ``read`` fetches back.
The turn itself lives in the session's transcript, as every run's does; this
store only remembers where a response belongs. Opaque to the wire: the
objects are the caller's JSON. Imports nothing from equabot_gw.net or
equabot_gw.gateway.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from .. import safejson
from ..compact_json import LARGE_CHARS, dumps, dumps_async
from ..errors import StorageError
from .transcripts import Committer, journal_day_end, journal_name, unlink_expired
from .filewindows import line_end

__all__ = ["StoredResponse", "ResponseStore", "RESPONSES_DIR"]

log = logging.getLogger("equabot_gw.sessions")

RESPONSES_DIR: Final = "responses"
DEFAULT_RETENTION_DAYS: Final = 30.0        # gateway.http.endpoints.responses.retentionDays
# The head of a stored line, as ``put`` writes it (ids, agent ids and session
# keys are of restricted alphabets: no escapes), or of a deleted one.
_LINE_HEAD: Final = re.compile(
    rb'^\{"id":"(resp_[A-Za-z0-9_-]{1,200})",(?:"agentId":"([A-Za-z0-9._@-]{1,128})",'
    rb'"sessionKey":"([A-Za-z0-9:._@-]{1,200})","runId":"([A-Za-z0-9_-]{1,200})"|"deleted":true\})', re.M)
# The longest head ``_LINE_HEAD`` matches; a window is never shorter.
_HEAD_BYTES: Final = 1024
# A log is loaded this many bytes at a time (a line longer than that is passed over
# a window at a time): the memory a load takes, and each read a short hold of the GIL.
_LOAD_WINDOW_BYTES: Final = 1 << 20
_DAY_NAME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\.jsonl")
# A line holds its response one level down; a Response repeats request values (tool
# schemas, text.format) as deep as the request had them, and a request may reach the
# decoder's limit: so a line may be one level deeper than any request.
_LINE_DEPTH: Final = safejson.MAX_DEPTH + 1


class StoredResponse(NamedTuple):
    """Where a stored response belongs (agent, session key, run) and where its line is."""

    id: str
    agent_id: str
    session_key: str
    run_id: str
    path: str
    offset: int
    length: int


class ResponseStore:
    """The stored responses of one state dir. ``open()`` in the loop that uses it, ``close()`` at the end."""

    def __init__(self, state_dir: os.PathLike[str] | str, *, clock: Any = time.time,
                 retention_days: float = DEFAULT_RETENTION_DAYS,
                 on_expired: Callable[[list[tuple[str, str]]], None] | None = None) -> None:
        """``on_expired`` is called in the loop with the (agent id, session key) pairs that hold
        no stored response any more once expired logs were deleted (at ``open`` and when the
        date rolls over); a session emptied by ``delete`` is not reported."""
        self._dir = os.path.join(os.fspath(state_dir), RESPONSES_DIR)
        self._clock = clock
        self._retention = retention_days * 86400.0
        self._day = -1                              # the UTC day of the newest write
        self._committer: Committer | None = None
        self._closed = False
        self._entries: dict[str, StoredResponse] = {}
        self._per_session: dict[str, int] = {}      # session key -> stored responses in it
        self._on_expired = on_expired

    def __repr__(self) -> str:
        return f"<ResponseStore {self._dir} responses={len(self._entries)}>"

    def __len__(self) -> int:
        return len(self._entries)

    async def open(self) -> None:
        """Start the writer thread, delete expired logs, load every other log's entries.

        A torn last line is skipped.

        Raises ``StorageError`` naming the step and the path if the directory cannot be read.
        """
        if self._committer is not None or self._closed:
            raise RuntimeError("a ResponseStore is opened once")
        self._committer = Committer(asyncio.get_running_loop())
        self._committer.start()
        try:
            self._day = int(self._clock() // 86400)
            loaded, expired = await self._committer.job(
                "loading the stored responses", functools.partial(_load, self._dir, self._clock() - self._retention))
        except BaseException as exc:
            self._closed = True
            await self._committer.stop()
            if isinstance(exc, StorageError):     # start-up: the operator may see the path
                raise exc.for_operator("the stored responses could not be loaded") from exc.__cause__
            raise
        for entry in loaded.values():
            self._add(entry)
        self._report(expired)

    async def close(self) -> None:
        """Wait for queued writes and stop the writer thread. Idempotent: a call while
        another is closing returns when that one has."""
        self._closed = True
        if self._committer is not None:
            await self._committer.stop()

    def find(self, response_id: str) -> StoredResponse | None:
        """The entry of a stored response, or None."""
        return self._entries.get(response_id)

    def responses_in(self, session_key: str) -> int:
        """How many stored responses belong to ``session_key``."""
        return self._per_session.get(session_key, 0)

    async def put(self, response_id: str, agent_id: str, session_key: str, run_id: str,
                  response: dict[str, Any], input_items: list[Any]) -> StoredResponse:
        """Store a response durably: returns once its line is fsynced (the entry is known from then).

        The entry is added when the write commits, even if the caller was
        cancelled meanwhile. Raises ``StorageError`` (closed store, or any
        OSError: nothing of the line stays), ValueError for an id, agent id,
        session key or run id outside their alphabets.
        """
        committer = self._require_open()
        at = self._clock()
        head = {"id": response_id, "agentId": agent_id, "sessionKey": session_key, "runId": run_id, "at": at}
        record = {**head, "response": response, "input": input_items}
        if _weight(response, input_items) >= LARGE_CHARS:
            text = await dumps_async(record)
            committer = self._require_open()      # it may have closed meanwhile: its thread takes nothing more
        else:
            text = dumps(record)
        data = (text + "\n").encode("utf-8", "surrogatepass")
        if not _LINE_HEAD.match(data):
            raise ValueError(f"response {response_id[:80]!r}: an id, agent id, session key or run id "
                             f"outside its alphabet")
        day = int(at // 86400)
        path = os.path.join(self._dir, journal_name(day))
        if day > self._day:          # the date rolled over: expired logs go, in queue order
            self._day = day
            committer.post("pruning expired stored responses",
                           functools.partial(_prune, self._dir, at - self._retention), on_ok=self._pruned)
        done: list[StoredResponse] = []

        def committed(offset: int) -> None:
            done.append(StoredResponse(response_id, agent_id, session_key, run_id, path, offset, len(data)))
            self._add(done[0])
        offset = await committer.append("a stored response", path, data, on_ok=committed)
        return done[0] if done else StoredResponse(response_id, agent_id, session_key, run_id, path, offset,
                                                   len(data))

    async def read(self, response_id: str) -> tuple[dict[str, Any], list[Any]] | None:
        """The stored (response object, input items) of ``response_id``; None if not stored
        (also once its log is gone from disk: its entry is then forgotten).

        Raises ``StorageError`` (reading) if the line cannot be read back or is damaged.
        """
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        data = await self._require_open().job("reading a stored response", functools.partial(_read, entry))
        if not data:            # its log is gone (pruned, removed) or cut short: nothing of it is stored
            self._remove(entry)
            return None
        try:
            record = await safejson.loads_async(data, max_depth=_LINE_DEPTH) \
                if len(data) > safejson.MAX_VALUES_AT_ONCE else safejson.loads(data, max_depth=_LINE_DEPTH)
        except ValueError as exc:
            raise StorageError(f"stored response {response_id} is damaged ({exc})", reading=True) from None
        if type(record) is dict and record.get("id") == response_id and type(record.get("response")) is dict:
            items = record.get("input")
            return record["response"], items if type(items) is list else []
        if self._entries.get(response_id) is not entry:
            return None         # deleted while it was being read
        raise StorageError(f"stored response {response_id} is damaged", reading=True)

    async def delete(self, response_id: str) -> StoredResponse | None:
        """Forget a stored response and erase its line on disk; its entry, or None if unknown.

        Raises ``StorageError`` if the line cannot be overwritten (the response stays).
        """
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        self._remove(entry)      # at once: a read or a continuation from now on finds nothing
        try:
            await self._require_open().job("deleting a stored response", functools.partial(_erase, entry))
        except BaseException:
            if response_id not in self._entries:
                self._add(entry)
            raise
        return entry

    def _pruned(self, pruned: tuple[list[str], set[tuple[str, str]]]) -> None:
        paths, expired = pruned
        if paths:
            gone = set(paths)
            for entry in [e for e in self._entries.values() if e.path in gone]:
                self._remove(entry)
        self._report(expired)

    def _report(self, expired: set[tuple[str, str]]) -> None:
        """Hand the sessions of expired responses that hold no stored response now to ``on_expired``."""
        freed = sorted(pair for pair in expired if pair[1] not in self._per_session)
        if freed and self._on_expired is not None:
            self._on_expired(freed)

    def _add(self, entry: StoredResponse) -> None:
        old = self._entries.get(entry.id)
        if old is not None:
            self._remove(old)
        self._entries[entry.id] = entry
        self._per_session[entry.session_key] = self._per_session.get(entry.session_key, 0) + 1

    def _remove(self, entry: StoredResponse) -> None:
        if self._entries.get(entry.id) is not entry:
            return
        del self._entries[entry.id]
        left = self._per_session[entry.session_key] - 1
        if left:
            self._per_session[entry.session_key] = left
        else:
            del self._per_session[entry.session_key]

    def _require_open(self) -> Committer:
        if self._committer is None or self._closed:
            raise StorageError("the response store is not open")
        return self._committer


def _weight(response: dict[str, Any], items: list[Any]) -> int:
    """Characters of text an object holds, about (its output and input texts): when to encode in slices."""
    chars = len(response.get("output_text") or "") + len(response.get("instructions") or "")
    for item in items:
        content = item.get("content") if type(item) is dict else None
        if type(content) is list:
            chars += sum(len(p.get("text") or p.get("image_url") or "") for p in content if type(p) is dict)
        output = item.get("output") if type(item) is dict else None
        chars += len(output) if type(output) is str else 0
    for item in response.get("output") or ():
        chars += len(item.get("arguments") or "") + sum(len(p.get("text") or "") for p in item.get("content") or ())
    return chars


# -- the writer thread's jobs (run by the Committer, in order with the appends) ----------------

def _prune(directory: str, cutoff: float, committer: Committer) -> tuple[list[str], set[tuple[str, str]]]:
    """Job: delete the logs whose whole UTC day ended by ``cutoff`` (epoch s); their paths, and
    the (agent id, session key) of the responses they held (read by pattern before the unlink)."""
    try:
        names = [name for name in os.listdir(directory) if _DAY_NAME.fullmatch(name)]
    except FileNotFoundError:
        return [], set()
    gone = []
    expired: dict[str, StoredResponse] = {}
    for name in names:
        if journal_day_end(name) <= cutoff:
            path = os.path.join(directory, name)
            held: dict[str, StoredResponse] = {}
            try:
                _load_file(path, held)
            except OSError as exc:
                log.warning("stored responses: could not read expired %s: %s", name,
                            exc.strerror or type(exc).__name__)
            committer.drop_fd(path)
            if unlink_expired(path):        # one left in place expires nothing yet
                gone.append(path)
                expired.update(held)
    return gone, {(entry.agent_id, entry.session_key) for entry in expired.values()}


def _load(directory: str, cutoff: float, committer: Committer
          ) -> tuple[dict[str, StoredResponse], set[tuple[str, str]]]:
    """Job: delete expired logs (as ``_prune``: the sessions of their responses), then the
    entries of every other log, oldest first (a later line wins)."""
    entries: dict[str, StoredResponse] = {}
    _, expired = _prune(directory, cutoff, committer)
    try:
        # Expired logs that could not be deleted are not read either: they are past keeping.
        names = sorted(name for name in os.listdir(directory)
                       if _DAY_NAME.fullmatch(name) and journal_day_end(name) > cutoff)
    except FileNotFoundError:
        return entries, expired
    for name in names:
        path = os.path.join(directory, name)
        try:
            _load_file(path, entries)
        except OSError as exc:
            log.warning("stored responses: skipped %s: %s", name, exc.strerror or type(exc).__name__)
    return entries, expired


def _load_file(path: str, entries: dict[str, StoredResponse]) -> None:
    """Add the entries of the log at ``path`` to ``entries`` (a later line wins, a deletion
    marker removes); a torn last line is passed over.

    The log is read a window at a time and each line start matched against
    ``_LINE_HEAD``: the memory a load takes is a window, however long the log
    and its lines. It is read, not mapped: a log cut short from outside
    meanwhile ends its load, where a mapping would take the process down with
    SIGBUS. Raises OSError (EINVAL for a FIFO, a device or any other special file).
    """
    # Without blocking: a FIFO under a log's name must not hang start-up.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        _scan_heads(fd, info.st_size, path, entries)
    finally:
        os.close(fd)


def _scan_heads(fd: int, size: int, path: str, entries: dict[str, StoredResponse]) -> None:
    span = max(_LOAD_WINDOW_BYTES, _HEAD_BYTES)
    pos = 0                         # always a line's start
    while pos < size:
        window = os.pread(fd, min(span, size - pos), pos)
        if len(window) < min(span, size - pos):
            size = pos + len(window)        # cut short meanwhile: its end is here now
        whole = window.rfind(b"\n") + 1   # the lines the window holds to their end
        if whole:
            for match in _LINE_HEAD.finditer(window, 0, whole):
                _take(match, pos, window.index(b"\n", match.end()) + 1 - match.start(), path, entries)
            pos += whole
            continue
        # One line longer than the window: its head is in it, its end further on.
        end = line_end(fd, pos + len(window), size, _LOAD_WINDOW_BYTES)
        if end is None:
            return                  # a torn last line: never acknowledged
        match = _LINE_HEAD.match(window)
        if match is not None:
            _take(match, pos, end + 1 - pos, path, entries)
        pos = end + 1


def _take(match: re.Match[bytes], base: int, length: int, path: str, entries: dict[str, StoredResponse]) -> None:
    """Enter the line whose head is ``match`` (in a window read at offset ``base``)."""
    response_id = match.group(1).decode()
    if match.group(2) is None:
        entries.pop(response_id, None)
        return
    entries[response_id] = StoredResponse(response_id, match.group(2).decode(), match.group(3).decode(),
                                          match.group(4).decode(), path, base + match.start(), length)


def _read(entry: StoredResponse, _: Committer) -> bytes:
    try:
        fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, entry.length, entry.offset)
    finally:
        os.close(fd)


def _erase(entry: StoredResponse, _: Committer) -> None:
    """Job: overwrite the entry's line with a deletion marker of the same length, durably."""
    marker = b'{"id":"%s","deleted":true}' % entry.id.encode()
    if len(marker) + 1 > entry.length:
        raise OSError(0, "the stored line is shorter than its deletion marker")
    try:
        fd = os.open(entry.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return          # its log is gone (pruned meanwhile, or removed): so is the line
    try:
        # Not the writer's O_APPEND descriptor: pwrite on one of those appends (Linux).
        line = marker + b" " * (entry.length - len(marker) - 1) + b"\n"
        view = memoryview(line)
        offset = entry.offset
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        _fdatasync(fd)
    finally:
        os.close(fd)


_fdatasync: Final = getattr(os, "fdatasync", os.fsync)     # macOS has no fdatasync
