"""Transcripts, journals and the session index on disk, and the thread that writes them.

Owns every byte under ``<state>/agents/<agent_id>/`` (layout below): file names,
the index file and the group-commit writer (the JSONL line format is
``lines``, whose names are re-exported here). A turn is
acknowledged only after its lines are fsynced; one committer thread
group-commits every waiting append. Keys are opaque here
but for the ``owns`` predicate ``load`` is given: the key grammar, lanes and
caches belong to ``sessions``, which this module never imports. Imports
nothing from equabot_gw.net or equabot_gw.gateway.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import hashlib
import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Final, NamedTuple

from equabot_gw import errors, safejson
from equabot_gw.agents.lines import (
    content_line, content_of, dumps, encode, encode_turn, fold, header_line, is_large, message_line,
    message_of, number, parse_lines, parse_lines_async, read_file_lines, reply_of, turn_lines,
)
from equabot_gw.agents.types import Message, SessionHistory

__all__ = [
    "AGENT_ID_RE", "SESSIONS_DIR", "JOURNAL_DIR", "INDEX_NAME", "MAX_OPEN_FILES",
    "transcript_stem", "unescape_stem", "transcript_name", "journal_name",
    "dumps", "encode", "encode_turn", "is_large", "parse_lines", "read_file_lines", "number", "header_line", "turn_lines", "fold",
    "message_line", "message_of", "content_line", "content_of",
    "SessionInfo", "IndexEntry", "session_info", "Stored", "load", "read_bytes", "read_lines", "read_reply", "read_outcome", "parse_lines_async", "write_index", "archive", "delete", "prune_journals",
    "storage_error", "Committer", "KEYS_DIR", "read_key_journals",
]

log = logging.getLogger("equabot_gw.sessions")    # one logger for the whole session store

# -- layout and file names ------------------------------------------------------------
#
#   sessions/<file>.jsonl          a keyed session's transcript; line 1 is the header
#                                  {"type":"session","key","agentId","createdAt"}
#   sessions/<file>.reset-<ms>.jsonl  a transcript archived by reset(); never listed
#   sessions/index.json            {key: {file, createdAt, updatedAt, turns, lastRunId}}:
#                                  a cache of the transcripts, rebuilt from their headers
#   journal/<YYYY-MM-DD>.jsonl     stateless turns of one UTC day, every line with "sessionKey"
#   idempotency/<YYYY-MM-DD>.jsonl the idempotency keys used that UTC day (``agents.idempotency``)
#
# <file> is the key escaped (bytes outside [A-Za-z0-9._-], a leading ".", and the
# dot of a trailing ".reset-<digits>" become %XX), or "h-" + sha256(key) when that
# is over 200 chars: never raw text joined into a path.

# Agent ids name a directory: the key alphabet minus ":", no leading "." (so never "." or "..").
AGENT_ID_RE: Final = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,127}")
SESSIONS_DIR: Final = "sessions"    # <state>/agents/<agent_id>/sessions: transcripts and the index
JOURNAL_DIR: Final = "journal"      # <state>/agents/<agent_id>/journal: stateless turns by UTC day
KEYS_DIR: Final = "idempotency"     # <state>/agents/<agent_id>/idempotency: idempotency keys by UTC day

_UNSAFE_RE: Final = re.compile(r"[^A-Za-z0-9._-]|^\.")
# An escaped name never ends in ".reset-<digits>": archives cannot collide with live files.
_RESET_TAIL_RE: Final = re.compile(r"\.(reset-[0-9]+)\Z")
_ARCHIVE_RE: Final = re.compile(r".*\.reset-[0-9]+\.jsonl\Z", re.S)
_JOURNAL_RE: Final = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})\.jsonl")
_SUFFIX: Final = ".jsonl"
INDEX_NAME: Final = "index.json"


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", "surrogatepass"))


def transcript_stem(key: str) -> str:
    """The file name (without ".jsonl") of ``key``'s transcript.

    ``key`` is any string; the stem is 1-200 chars of ``[A-Za-z0-9._%-]``, never
    starting with "." nor ending in ".reset-<digits>", distinct for distinct keys
    (hashed ones up to sha256 collisions).
    """
    stem = _RESET_TAIL_RE.sub(r"%2E\1", _UNSAFE_RE.sub(_escape, key))
    if len(stem) > 200:
        return "h-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return stem


def unescape_stem(stem: str) -> str | None:
    """The key ``transcript_stem`` turned into ``stem``; None for a hashed or foreign one."""
    raw = re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), stem)
    return raw if not stem.startswith("h-") and transcript_stem(raw) == stem else None


def transcript_name(key: str) -> str:
    """The file name of ``key``'s transcript inside ``SESSIONS_DIR``."""
    return transcript_stem(key) + _SUFFIX


def journal_name(day: int) -> str:
    """The file name of the journal of UTC ``day`` (days since the epoch): ``YYYY-MM-DD.jsonl``."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400)) + _SUFFIX


# -- the index ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One keyed session as the index knows it; times are its turns' ``at`` (epoch seconds).

    ``turns`` counts completed ("ok") turns; ``last_run_id`` is the newest turn's run.
    """

    key: str
    agent_id: str
    created_at: float
    updated_at: float
    turns: int
    last_run_id: str | None

    @property
    def entry(self) -> IndexEntry:
        """This session as the in-memory index holds it."""
        return (self.created_at, self.updated_at, self.turns, self.last_run_id)


# What the in-memory index holds per session: (created_at, updated_at, turns,
# last_run_id). A plain tuple of atomic values, which the garbage collector
# stops tracking after its first pass, so 10,000 sessions add nothing to what
# every full collection walks (a dataclass each would add 10,000 objects).
# ``SessionInfo`` is built from it only when someone asks (listing, lookups).
IndexEntry = tuple[float, float, int, "str | None"]


def session_info(agent_id: str, key: str, entry: IndexEntry) -> SessionInfo:
    """The ``SessionInfo`` of one index entry."""
    return SessionInfo(key, agent_id, *entry)


Owns = Callable[[str, str], bool]     # owns(agent_id, key): a valid key of that agent?


def _entry_from_index(agent_id: str, key: object, fields: object, owns: Owns) -> IndexEntry | None:
    if not isinstance(key, str) or not owns(agent_id, key) or not isinstance(fields, dict):
        return None
    created, updated = number(fields.get("createdAt")), number(fields.get("updatedAt"))
    turns, last_run = fields.get("turns"), fields.get("lastRunId")
    if created is None or updated is None or type(turns) is not int or turns < 0 \
            or not (last_run is None or isinstance(last_run, str)):
        return None
    return (created, updated, turns, last_run)


def _scan(agent_id: str, path: str, owns: Owns) -> SessionInfo | None:
    """The index entry a transcript implies: its header (or its file name), turns, times.

    None when there is none to take: no complete line, no usable key, or a
    file that cannot be read (logged: start-up never fails on session data).
    """
    try:
        lines = read_file_lines(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("agent %s: skipped transcript %r: %s", agent_id, os.path.basename(path),
                    exc.strerror or type(exc).__name__)
        return None
    if not lines:
        # Not one complete line (a first write torn by a crash, or one that
        # failed): no turn was ever confirmed, so the session does not exist
        # yet and its next turn starts the file afresh, header first.
        return None
    header = lines[0] if lines[0].get("type") == "session" else {}
    key = header.get("key")
    if not isinstance(key, str):     # header lost to a torn first write: the name tells
        key = unescape_stem(os.path.basename(path)[:-len(_SUFFIX)])
    if key is None or not owns(agent_id, key):
        return None
    times = [t for t in (number(line.get("at")) for line in lines) if t is not None]
    created = number(header.get("createdAt"))
    created = created if created is not None else min(times, default=0.0)
    runs = [line["runId"] for line in lines if isinstance(line.get("runId"), str)]
    return SessionInfo(key, agent_id, created, max(times, default=created),
                       fold(SessionHistory(), lines).assistant_turns, runs[-1] if runs else None)


# The index snapshot is taken on the loop and written later by the committer, so
# a transcript touched shortly before the index file may be newer than its
# entry: rescan those at load rather than trust them.
_INDEX_TRUST_MARGIN_NS: Final = 2_000_000_000


def _load_agent(agent_id: str, sessions_dir: str, owns: Owns) -> tuple[dict[str, IndexEntry], bool]:
    """The agent's index checked against its transcripts, and whether it had to change.

    A damaged index (not JSON, too deep, wrong types) is rebuilt from the
    transcripts, entry by entry, with a warning; nothing in it stops start-up.
    """
    stored: Any = {}
    index_mtime = -1
    try:
        with open(os.path.join(sessions_dir, INDEX_NAME), "rb") as f:
            index_mtime, stored = os.fstat(f.fileno()).st_mtime_ns, safejson.loads(f.read())
    except FileNotFoundError:
        pass
    except ValueError as exc:
        stored = None
        log.warning("agent %s: %s is not usable JSON (%s); rebuilding it from the transcripts",
                    agent_id, INDEX_NAME, exc)
    except OSError as exc:
        stored = None
        log.warning("agent %s: %s cannot be read (%s); rebuilding it from the transcripts",
                    agent_id, INDEX_NAME, exc.strerror or type(exc).__name__)
    files = {e.name: e for e in os.scandir(sessions_dir)
             if e.name.endswith(_SUFFIX) and not _ARCHIVE_RE.match(e.name) and e.is_file()}
    index: dict[str, IndexEntry] = {}
    changed = not isinstance(stored, dict)
    if stored is not None and not isinstance(stored, dict):
        log.warning("agent %s: %s is not a JSON object; rebuilding it from the transcripts",
                    agent_id, INDEX_NAME)
    malformed = 0
    for key, fields in (stored.items() if isinstance(stored, dict) else ()):
        known = _entry_from_index(agent_id, key, fields, owns)
        entry = files.pop(transcript_stem(key) + _SUFFIX, None) if known else None
        if known is None or entry is None:
            changed = True            # malformed (its transcript is scanned below), or gone
            malformed += known is None
            continue
        if _mtime_ns(entry) > index_mtime - _INDEX_TRUST_MARGIN_NS:
            scanned = _scan(agent_id, entry.path, owns)
            fresh = scanned.entry if scanned is not None else known
            changed, known = changed or fresh != known, fresh
        index[key] = known
    if malformed:
        log.warning("agent %s: %s has %d unusable %s; rebuilt from the transcripts", agent_id,
                    INDEX_NAME, malformed, "entry" if malformed == 1 else "entries")
    for name, entry in files.items():       # transcripts the index does not know
        info = _scan(agent_id, entry.path, owns)
        if info is None or transcript_stem(info.key) + _SUFFIX != name:
            log.warning("agent %s: skipped transcript %r: no usable header", agent_id, name)
            continue
        index[info.key], changed = info.entry, True
    return index, changed


def _mtime_ns(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat().st_mtime_ns
    except OSError:
        return 1 << 62      # gone or unreadable: rescan it (the scan says which)


# -- disk work, in the committer thread only -------------------------------------
# A "job" is passed to ``Committer.job``/``post`` (bound with functools.partial): it
# runs in the thread, gets the Committer last, and an OSError it raises reaches the
# waiter as ``StorageError``.

_write = os.write      # module-level so that a test can inject a disk fault here alone
# fdatasync flushes the data and the metadata needed to read it back (the file
# size), skipping only timestamps: all an append needs. macOS has no fdatasync.
_fdatasync = getattr(os, "fdatasync", os.fsync)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_APPEND_FLAGS: Final = os.O_RDWR | os.O_APPEND | os.O_CREAT | _CLOEXEC


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[_write(fd, view):]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: str) -> None:
    """mkdir -p with mode 0o700, each new entry made durable in its parent."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        _make_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    _fsync_dir(parent)


def _repair(fd: int, path: str) -> int:
    """Cut a torn last line (a crash mid-write) so that appends start clean; the new size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep, end = 0, size
    while end > 0:
        start = max(0, end - 65536)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        end = start
    os.ftruncate(fd, keep)
    log.warning("repaired %s: dropped a torn last line of %d bytes", os.path.basename(path), size - keep)
    return keep


def storage_error(phase: str, exc: OSError) -> errors.StorageError:
    """A ``StorageError`` "<phase> failed: <ERRNO> (<strerror>)" caused by ``exc``.

    Names the step and the errno, never a path or file contents: it may reach a client.
    """
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    err = errors.StorageError(f"{phase} failed: {name} ({exc.strerror or 'no detail'})")
    err.__cause__ = exc
    return err


def read_bytes(path: str, _: Committer) -> bytes:
    """Job: the whole file at ``path``; b"" if there is none."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def read_lines(path: str, _: Committer) -> list[dict[str, Any]]:
    """Job: ``read_file_lines`` of the file at ``path``; [] if there is none."""
    try:
        return read_file_lines(path)
    except FileNotFoundError:
        return []


class Stored(NamedTuple):
    """Where one turn's lines were written: ``length`` bytes at ``offset`` of ``path``.

    A named tuple: one is made per turn, on the hot path.
    """

    path: str
    offset: int
    length: int


def read_outcome(where: Stored, run_id: str, _: Committer) -> Message | None:
    """Job: the reply of run ``run_id`` (its "assistant" or "aborted" line, with tool calls
    and reasoning) among the lines stored at ``where``; None if the file no longer holds
    them (reset, deleted, pruned)."""
    try:
        fd = os.open(where.path, os.O_RDONLY | _CLOEXEC)
        try:
            data = os.pread(fd, where.length, where.offset)
        finally:
            os.close(fd)
    except OSError:
        return None
    for line in parse_lines(data)[0]:
        if line.get("runId") == run_id and line.get("type") in ("assistant", "aborted"):
            content = line.get("content")
            if not isinstance(content, str):
                return None
            return reply_of(line) or Message("assistant", content)
    return None


def read_reply(where: Stored, run_id: str, committer: Committer) -> str | None:
    """Job: the text of ``read_outcome``."""
    outcome = read_outcome(where, run_id, committer)
    return outcome.text() if outcome is not None else None


def write_index(sessions_dir: str, snapshot: dict[str, IndexEntry], _: Committer) -> float:
    """Job: write ``snapshot`` as ``<sessions_dir>/index.json``, atomically; the seconds it took.

    A temp file in the same directory, fsync, rename over, fsync the directory.
    """
    started = time.perf_counter()
    data = dumps({key: {"file": transcript_stem(key) + _SUFFIX, "createdAt": created,
                         "updatedAt": updated, "turns": turns, "lastRunId": last_run}
                   for key, (created, updated, turns, last_run) in snapshot.items()}).encode("utf-8")
    _make_dirs(sessions_dir)
    tmp = os.path.join(sessions_dir, INDEX_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(sessions_dir, INDEX_NAME))
    _fsync_dir(sessions_dir)
    return time.perf_counter() - started


def archive(path: str, stamp_ms: int, committer: Committer) -> None:
    """Job: rename transcript ``path`` to ``<file>.reset-<stamp_ms>.jsonl``.

    ``stamp_ms`` (Unix milliseconds) goes up until no archive has it; a missing
    ``path`` is no error.
    """
    committer.drop_fd(path)
    while os.path.exists(f"{path[:-len(_SUFFIX)]}.reset-{stamp_ms}{_SUFFIX}"):
        stamp_ms += 1             # never overwrite an earlier archive
    if os.path.exists(path):
        os.rename(path, f"{path[:-len(_SUFFIX)]}.reset-{stamp_ms}{_SUFFIX}")
        _sync_forgotten(path)


def delete(path: str, committer: Committer) -> None:
    """Job: unlink transcript ``path``; a missing one is no error."""
    committer.drop_fd(path)
    if os.path.exists(path):
        os.unlink(path)
        _sync_forgotten(path)


def _sync_forgotten(path: str) -> None:
    # Done is done: if the directory fsync fails, a crash may bring the
    # session back, which is better than reporting a reset that happened as failed.
    try:
        _fsync_dir(os.path.dirname(path))
    except OSError as exc:
        log.warning("session store: fsync of the directory of %s failed: %s", os.path.basename(path), exc)


def prune_journals(agents_dir: str, cutoff: float, committer: Committer) -> None:
    """Job: delete every agent's journals whose whole UTC day ended by ``cutoff`` (epoch s)."""
    for agent in os.scandir(agents_dir):
        journal_dir = os.path.join(agent.path, JOURNAL_DIR)
        for entry in os.scandir(journal_dir) if os.path.isdir(journal_dir) else ():
            if _journal_end(entry.name) <= cutoff:
                committer.drop_fd(entry.path)
                os.unlink(entry.path)


def read_key_journals(directory: str, since: float, _: Committer) -> list[dict[str, Any]]:
    """Job: the lines of the key journals in ``directory`` whose UTC day ended after
    ``since`` (epoch s), oldest day first; older ones are deleted. [] if there is none."""
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    lines: list[dict[str, Any]] = []
    for name in names:
        end = _journal_end(name)
        if end == float("inf"):
            continue
        path = os.path.join(directory, name)
        if end <= since:
            _.drop_fd(path)
            os.unlink(path)
            continue
        lines.extend(read_lines(path, _))
    return lines


def _journal_end(name: str) -> float:
    """When the UTC day of journal ``name`` ends; +inf for any other file."""
    m = _JOURNAL_RE.fullmatch(name)
    year, month, day = map(int, m.groups()) if m else (0, 0, 0)
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return float("inf")
    return (_days_from_civil(year, month, day) + 1) * 86400.0


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (as ``calendar.timegm``
    counts them, a day past the month's end included), without importing
    ``calendar`` and ``datetime`` at start-up (H. Hinnant's days_from_civil)."""
    year -= month <= 2
    era, year_of_era = divmod(year, 400)
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def load(agents_dir: str, owns: Owns, _: Committer) -> dict[str, tuple[dict[str, IndexEntry], bool]]:
    """Job: each agent's index, checked against its transcripts.

    Returns ``{agent_id: (index, changed)}`` for every directory under
    ``agents_dir`` named by ``AGENT_ID_RE`` that has a ``SESSIONS_DIR``;
    ``changed`` says the index file is stale and should be rewritten. Entries
    and transcripts whose key ``owns`` rejects are left out.
    """
    dirs = ((agent.name, os.path.join(agent.path, SESSIONS_DIR)) for agent in os.scandir(agents_dir))
    return {agent_id: _load_agent(agent_id, sessions_dir, owns) for agent_id, sessions_dir in dirs
            if AGENT_ID_RE.fullmatch(agent_id) and os.path.isdir(sessions_dir)}


# -- the committer -----------------------------------------------------------

MAX_OPEN_FILES: Final = 256     # append fds kept open: a hot journal is never reopened per turn


@dataclass(slots=True)
class _Op:
    """One unit of committer work: an append (``path`` + ``data``) or a job (``fn``)."""

    what: str
    future: asyncio.Future[Any] | None
    path: str = ""
    data: bytes = b""
    fn: Callable[[Committer], Any] | None = None
    on_ok: Callable[[Any], None] | None = None       # run on the loop, in commit order
    on_error: Callable[[BaseException], None] | None = None


_STOP: Final = _Op("stop", None)


class CommitStats:
    """Group commits so far: counts per bound of batch size (appends) and of seconds
    (writes and fdatasyncs), the last one above every bound, and the sums. The
    committer thread writes; anyone may read (a commit's count may show before its sum)."""

    SIZE_BOUNDS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    SECONDS_BOUNDS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
    __slots__ = ("sizes", "size_sum", "seconds", "seconds_sum")

    def __init__(self) -> None:
        self.sizes, self.size_sum = [0] * (len(self.SIZE_BOUNDS) + 1), 0
        self.seconds, self.seconds_sum = [0] * (len(self.SECONDS_BOUNDS) + 1), 0.0

    def add(self, size: int, seconds: float) -> None:
        self.sizes[bisect.bisect_left(self.SIZE_BOUNDS, size)] += 1
        self.size_sum += size
        self.seconds[bisect.bisect_left(self.SECONDS_BOUNDS, seconds)] += 1
        self.seconds_sum += seconds


class Committer:
    """The one thread that touches session files: group-commits appends, runs jobs in order.

    It takes everything queued, writes each file's appends with one write and
    one fdatasync, runs jobs (reads, renames, index writes) in queue order
    between them, then resolves the whole batch with one call_soon_threadsafe.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """A committer resolving its futures and callbacks on ``loop``; ``start()`` runs it."""
        self._loop = loop
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="equabot-sessions-committer", daemon=True)
        self.pending = 0      # appends not yet resolved (loop side)
        self.batches = 0      # group commits done (committer side; read-only elsewhere)
        self.stats = CommitStats()    # their sizes and times (committer side; read-only elsewhere)
        self._stopped: asyncio.Future[None] | None = None
        self._fds: OrderedDict[str, list[int]] = OrderedDict()   # path -> [fd, size]; LRU

    # -- event loop side --

    def append(self, what: str, path: str, data: bytes, **callbacks: Any) -> asyncio.Future[Any]:
        """Queue ``data`` to be appended to ``path`` and fdatasynced (loop side).

        Returns a future set to the offset in the file where ``data`` starts
        once it is durable, or to a ``StorageError``
        naming the step and ``what`` (the file is then cut back to its size
        before). ``callbacks``: ``on_ok(None)`` / ``on_error(exc)``, run on the
        loop in commit order before the future resolves, even if it was cancelled.
        """
        future = self._loop.create_future()
        self.pending += 1
        self._queue.put(_Op(what, future, path, data, **callbacks))
        return future

    def job(self, what: str, fn: Callable[[Committer], Any], **callbacks: Any) -> asyncio.Future[Any]:
        """Queue ``fn(committer)`` to run in the thread after every earlier append (loop side).

        Returns a future for its result; an OSError becomes a ``StorageError``
        naming ``what``, any other exception is logged and passed on as is.
        ``callbacks`` as for ``append``, with the result or the exception.
        """
        future = self._loop.create_future()
        self._queue.put(_Op(what, future, fn=fn, **callbacks))
        return future

    def post(self, what: str, fn: Callable[[Committer], Any], **callbacks: Any) -> None:
        """A job nobody waits for: a failure is logged and passed to ``on_error``."""
        self._queue.put(_Op(what, None, fn=fn, **callbacks))

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    async def stop(self) -> None:
        """Finish everything queued before, close every fd, and wait for the thread to end."""
        if not self._thread.is_alive():
            return
        self._stopped = self._loop.create_future()
        self._queue.put(_STOP)
        # The thread says when it is done: joining it in an executor would leave an
        # idle executor thread behind in a host program's loop.
        await self._stopped
        self._thread.join()         # it has returned or is returning: no wait to speak of

    def _resolve(self, results: list[tuple[_Op, Any, bool]]) -> None:
        for op, outcome, failed in results:
            if op.fn is None:
                self.pending -= 1
            callback = op.on_error if failed else op.on_ok
            try:
                if callback is not None:
                    callback(outcome)
            except Exception:            # a bookkeeping bug must not strand the other waiters
                log.exception("session store: callback of %s failed", op.what)
            if op.future is not None and not op.future.done():
                if failed:
                    op.future.set_exception(outcome)
                else:
                    op.future.set_result(outcome)

    # -- committer thread side --

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while True:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            stop = _STOP in batch
            self._process([op for op in batch if op is not _STOP] if stop else batch)
            if stop:
                for path in list(self._fds):
                    self.drop_fd(path)
                try:
                    self._loop.call_soon_threadsafe(_set_done, self._stopped)
                except RuntimeError:      # the loop is closed: nobody is waiting any more
                    pass
                return

    def _process(self, batch: list[_Op]) -> None:
        results: list[tuple[_Op, Any, bool]] = []
        appends: list[_Op] = []
        for op in batch:
            if op.fn is None:
                appends.append(op)
                continue
            if appends:           # a job is a barrier: what was queued before it is written first
                self._commit(appends, results)
                appends = []
            try:
                results.append((op, op.fn(self), False))
            except OSError as exc:
                log.warning("session store: %s failed: %s", op.what, exc)
                results.append((op, storage_error(op.what, exc), True))
            except Exception as exc:     # a bug: hand it to the waiter, keep the thread alive
                log.exception("session store: %s failed", op.what)
                results.append((op, exc, True))
        if appends:
            self._commit(appends, results)
        try:
            self._loop.call_soon_threadsafe(self._resolve, results)
        except RuntimeError:      # the loop is closed: nobody is waiting any more
            pass

    def _commit(self, appends: list[_Op], results: list[tuple[_Op, Any, bool]]) -> None:
        started = time.perf_counter()
        self.batches += 1
        groups: dict[str, list[_Op]] = {}
        for op in appends:
            groups.setdefault(op.path, []).append(op)
        failed: dict[str, tuple[str, OSError]] = {}
        new_files: dict[str, list[str]] = {}
        starts: dict[str, int] = {}
        for path, group in groups.items():
            data = group[0].data if len(group) == 1 else b"".join(op.data for op in group)
            try:
                start = starts[path] = self._append(path, data)
            except _AppendFailed as exc:
                failed[path] = exc.args
                continue
            if start == 0:        # an empty file may be new: its directory is fsynced too
                new_files.setdefault(os.path.dirname(path), []).append(path)
        for directory, paths in new_files.items():   # a new file is durable once its name is
            try:
                _fsync_dir(directory)
            except OSError as exc:
                for path in paths:
                    failed[path] = ("fsync of the directory", exc)
                    self._roll_back(path, 0)
        for path, group in groups.items():
            if path not in failed:
                offset = starts[path]
                for op in group:
                    results.append((op, offset, False))
                    offset += len(op.data)
                continue
            phase, exc = failed[path]
            log.warning("session store: %s of %s failed: %s", phase, os.path.basename(path), exc)
            results.extend((op, storage_error(f"{phase} of {op.what}", exc), True) for op in group)
        self.stats.add(len(appends), time.perf_counter() - started)

    def _append(self, path: str, data: bytes) -> int:
        """Write and fdatasync ``data`` at the end of ``path``; the offset it starts at.

        On failure the file is cut back to its size before (no turn half
        recorded) and its fd dropped, so that the next append reopens and repairs.
        """
        try:
            entry = self._fds.get(path)
            if entry is None:
                entry = self._open(path)
            else:
                self._fds.move_to_end(path)
        except OSError as exc:
            raise _AppendFailed("open", exc) from exc
        fd, size = entry
        phase = "write"
        try:
            _write_all(fd, data)
            phase = "fsync"
            _fdatasync(fd)
        except OSError as exc:
            self._roll_back(path, size)
            raise _AppendFailed(phase, exc) from exc
        entry[1] = size + len(data)
        return size

    def _open(self, path: str) -> list[int]:
        try:
            fd = os.open(path, _APPEND_FLAGS, 0o600)
        except FileNotFoundError:
            _make_dirs(os.path.dirname(path))
            fd = os.open(path, _APPEND_FLAGS, 0o600)
        try:
            entry = self._fds[path] = [fd, _repair(fd, path)]
        except OSError:
            os.close(fd)
            raise
        if len(self._fds) > MAX_OPEN_FILES:
            self.drop_fd(next(iter(self._fds)))
        return entry

    def _roll_back(self, path: str, size: int) -> None:
        # A failed turn must leave nothing behind: a retry would record it twice.
        entry = self._fds.get(path)
        try:
            if entry is not None:
                os.ftruncate(entry[0], size)
        except OSError:
            pass              # then the repair at the next open cuts a torn tail
        self.drop_fd(path)

    def drop_fd(self, path: str) -> None:
        """Close ``path``'s append fd if it is open (committer thread only)."""
        entry = self._fds.pop(path, None)
        if entry is not None:
            try:
                os.close(entry[0])
            except OSError:
                pass


def _set_done(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class _AppendFailed(Exception):
    """args: the step of the append that failed, and its OSError."""
