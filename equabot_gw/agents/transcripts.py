"""Transcripts, journals and the session index on disk, and the thread that writes them.

Owns every byte under ``<state>/agents/<agent_id>/`` (layout below): file names,
the index file and the jobs the group-commit writer runs on them (the
writer is ``committer``, the JSONL line format ``lines``; both re-exported
here). A turn is acknowledged only after its lines are fsynced; one
committer thread group-commits every waiting append. Keys are opaque here
but for the ``owns`` predicate ``load`` is given: the key grammar, lanes and
caches belong to ``sessions``, which this module never imports. Imports
nothing from equabot_gw.net or equabot_gw.gateway.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable, Final, NamedTuple

from equabot_gw import safejson
from equabot_gw.agents.committer import (
    CLOEXEC, MAX_OPEN_FILES, Committer, CommitStats, fsync_dir, make_dirs, read_regular, storage_error, write_all,
)
from equabot_gw.agents.lines import (
    content_line, content_of, dumps, encode, encode_plain_turn, encode_turn, fold, header_line, is_large,
    message_line, message_of, number, parse_lines, parse_lines_async, read_file_lines, reply_of, turn_lines,
    warn_skipped,
)
from equabot_gw.agents.filewindows import OUTCOME_TYPES, find_outcome, line_end
from equabot_gw.agents.types import Message, SessionHistory

__all__ = [
    "AGENT_ID_RE", "SESSIONS_DIR", "JOURNAL_DIR", "INDEX_NAME", "MAX_OPEN_FILES", "JOURNAL_DAYS",
    "transcript_stem", "unescape_stem", "transcript_name", "journal_name",
    "dumps", "encode", "encode_plain_turn", "encode_turn", "is_large", "parse_lines", "read_file_lines", "number",
    "header_line", "turn_lines", "fold",
    "message_line", "message_of", "content_line", "content_of",
    "SessionInfo", "IndexEntry", "session_info", "Stored", "load", "read_bytes", "read_lines", "read_outcome", "parse_lines_async", "write_index", "restart", "delete", "prune_journals",
    "storage_error", "Committer", "KEYS_DIR", "key_journals",
    "prune_key_journals", "find_outcome",
    "find_archived_outcome", "journal_day_end", "unlink_expired",
]

log = logging.getLogger("equabot_gw.sessions")    # one logger for the whole session store

# -- layout and file names ------------------------------------------------------------
#
#   sessions/<file>.jsonl          a keyed session's transcript; line 1 is the header
#                                  {"type":"session","key","agentId","createdAt"}
#   sessions/<file>.reset-<ms>.jsonl  a transcript archived by reset() (which leaves a
#                                  new <file>.jsonl holding only the header); never listed
#   sessions/index.json            {key: {file, createdAt, updatedAt, turns, lastRunId}}:
#                                  a cache of the transcripts, rebuilt from their headers
#   sessions/<file>.jsonl.aside-<ms>  a transcript whose header named another session,
#                                  moved aside at load (kept for the operator); never read
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
# The index is read whole at start: about 150 bytes a session, so 64 MiB is some
# 400,000 sessions. A bigger one is not ours: it is rebuilt from the transcripts.
MAX_INDEX_BYTES: Final = 64 * 1024 * 1024
# A key journal holds a day's keys, about 300 bytes each; the table keeps at most
# 100,000 keys, so past this only its newest lines (its tail) are read.
MAX_KEY_JOURNAL_BYTES: Final = 64 * 1024 * 1024
# A transcript whose header names another session is renamed to
# ``<file>.aside-<ms>`` (no ".jsonl": never listed nor appended to again).
_ASIDE: Final = ".aside-"
# A transcript's name when it is a key's hashed name (keys over 200 characters escaped).
_HASHED_RE: Final = re.compile(r"h-[0-9a-f]{64}")


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


# The days a journal name can hold (``YYYY-MM-DD``: 0001-01-01 to 9999-12-31), in days since the epoch.
JOURNAL_DAYS: Final = range(-719162, 2932897)


def journal_name(day: int) -> str:
    """The file name of the journal of UTC ``day`` (days since the epoch): ``YYYY-MM-DD.jsonl``;
    ``day`` in ``JOURNAL_DAYS`` (past them the platform's time functions may raise)."""
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
    The transcript is read a window at a time (``_Summary``): a long session's
    is never held whole, nor are its messages.
    """
    try:
        summary = _summarize(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("agent %s: skipped transcript %r: %s", agent_id, os.path.basename(path),
                    exc.strerror or type(exc).__name__)
        return None
    if summary.first is None:
        # Not one complete line (a first write torn by a crash, or one that
        # failed): no turn was ever confirmed, so the session does not exist
        # yet and its next turn starts the file afresh, header first.
        return None
    header = summary.first if summary.first.get("type") == "session" else {}
    key = header.get("key")
    if not isinstance(key, str):     # header lost to a torn first write: the name tells
        key = unescape_stem(os.path.basename(path)[:-len(_SUFFIX)])
    if key is None or not owns(agent_id, key):
        return None
    created = number(header.get("createdAt"))
    created = created if created is not None else (summary.oldest if summary.oldest is not None else 0.0)
    return SessionInfo(key, agent_id, created, summary.newest if summary.newest is not None else created,
                       summary.turns, summary.last_run)


# A transcript is scanned at start-up this many bytes at a time (a line longer than
# that is read whole: a line is bounded by what one turn writes).
_TRANSCRIPT_WINDOW_BYTES: Final = 1 << 20


class _Summary:
    """What ``_scan`` takes from a transcript, fed its lines a batch at a time: the first
    line, and of the turns that reached their outcome line (only they were recorded: the
    input lines of a turn cut short by a crash do not count) the oldest and newest
    ``at``, the last run id, and the completed ("ok") turns as ``fold`` counts them."""

    def __init__(self) -> None:
        self.first: dict[str, Any] | None = None
        self.oldest: float | None = None
        self.newest: float | None = None
        self.last_run: str | None = None
        self.turns = 0
        # The input lines of the turn going on at the end of the lines fed so far: the
        # next batch's outcome line may end it (``fold`` keeps no more than these).
        self._open: list[dict[str, Any]] = []

    def feed(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        if self.first is None:
            self.first = lines[0]
        for line in lines:
            if line.get("type") in OUTCOME_TYPES:
                at = number(line.get("at"))
                if at is not None:
                    self.oldest = at if self.oldest is None else min(self.oldest, at)
                    self.newest = at if self.newest is None else max(self.newest, at)
                if isinstance(line.get("runId"), str):
                    self.last_run = line["runId"]
        batch = self._open + lines
        self.turns += fold(SessionHistory(), batch).assistant_turns
        cut = len(batch)
        while cut and batch[cut - 1].get("type") in ("user", "tool") \
                and batch[cut - 1].get("runId") == batch[-1].get("runId"):
            cut -= 1
        self._open = batch[cut:]


def _summarize(path: str) -> _Summary:
    """The ``_Summary`` of the regular file at ``path``, read a window at a time; a file cut
    short meanwhile ends where it was cut. Raises OSError (EINVAL for a special file)."""
    summary = _Summary()
    skipped, first, seen = 0, 0, 0
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        size, pos = info.st_size, 0
        while pos < size:
            want = min(_TRANSCRIPT_WINDOW_BYTES, size - pos)
            data = os.pread(fd, want, pos)
            if len(data) < want:
                size = pos + len(data)      # cut short meanwhile: its end is here now
            whole = data.rfind(b"\n") + 1
            if not whole:
                end = line_end(fd, pos + len(data), size)
                if end is None:
                    break                   # a torn last line: never acknowledged
                data = os.pread(fd, end + 1 - pos, pos)
                whole = data.rfind(b"\n") + 1
                if not whole:
                    break
            lines, bad, first_bad = parse_lines(data[:whole] if whole < len(data) else data)
            del data
            if bad and not skipped:
                first = seen + first_bad
            skipped, seen = skipped + bad, seen + len(lines) + bad
            summary.feed(lines)
            pos += whole
    finally:
        os.close(fd)
    if skipped:
        warn_skipped(path, skipped, first)     # once per file and process, as ``read_file_lines`` does
    return summary


# The index snapshot is taken on the loop and written later by the committer (the
# file's mtime is when that job began), so a transcript touched shortly before the
# index file may be newer than its entry: rescan those at load rather than trust them.
_INDEX_TRUST_MARGIN_NS: Final = 2_000_000_000


def _load_agent(agent_id: str, sessions_dir: str, owns: Owns) -> tuple[dict[str, IndexEntry], bool]:
    """The agent's index checked against its transcripts, and whether it had to change.

    A damaged index (not JSON, too deep, wrong types) is rebuilt from the
    transcripts, entry by entry, with a warning; nothing in it stops start-up.
    """
    stored: Any = {}
    index_mtime = -1
    index_path = os.path.join(sessions_dir, INDEX_NAME)
    try:
        # Its mtime first: a rewrite after it only makes the index look older (rescans).
        index_mtime = os.stat(index_path).st_mtime_ns
        stored = safejson.loads(read_regular(index_path, MAX_INDEX_BYTES))
    except FileNotFoundError:
        index_mtime = -1
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
        if _is_empty(entry):
            # A first append that failed, cut back to nothing: it holds no turn, and
            # the session's next turn would make it afresh, header first.
            _remove_empty(entry.path)
            continue
        info = _scan(agent_id, entry.path, owns)
        if info is not None and transcript_stem(info.key) + _SUFFIX == name:
            index[info.key], changed = info.entry, True
        elif info is not None and _addressable(agent_id, name, owns):
            # Its header names another session (a copy restored under another name):
            # the next turn of the session its name stands for would append to it, a
            # second header in the middle, and be lost to the next load. Kept aside.
            _move_aside(agent_id, entry.path, info.key)
        else:
            log.warning("agent %s: skipped transcript %r: %s", agent_id, name,
                        "it holds no complete line" if info is None else
                        f"its header names session {info.key!r}, which is not its file name's")
    return index, changed


def _is_empty(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.stat().st_size == 0
    except OSError:
        return False        # the scan says what is wrong with it


def _remove_empty(path: str) -> None:
    try:
        if os.stat(path).st_size == 0:
            os.unlink(path)
    except OSError as exc:
        log.warning("empty transcript %r could not be removed: %s", os.path.basename(path),
                    exc.strerror or type(exc).__name__)


def _addressable(agent_id: str, name: str, owns: Owns) -> bool:
    """Whether transcript file ``name`` is where some key of the agent would be written."""
    stem = name[:-len(_SUFFIX)]
    key = unescape_stem(stem)
    return (key is not None and owns(agent_id, key)) or _HASHED_RE.fullmatch(stem) is not None


def _move_aside(agent_id: str, path: str, holds: str) -> None:
    """Rename transcript ``path``, whose header names session ``holds``, out of the way."""
    name = os.path.basename(path)
    named = unescape_stem(name[:-len(_SUFFIX)]) or name
    stamp = int(time.time() * 1000)
    while os.path.exists(f"{path}{_ASIDE}{stamp}"):
        stamp += 1
    aside = f"{path}{_ASIDE}{stamp}"
    try:
        os.rename(path, aside)
        fsync_dir(os.path.dirname(path))
    except OSError as exc:
        log.warning("agent %s: transcript %r holds session %r, not %r, and could not be moved aside (%s); "
                    "it is skipped", agent_id, name, holds, named, exc.strerror or type(exc).__name__)
        return
    log.warning("agent %s: transcript %r holds session %r, not %r: moved aside to %r (nothing deleted); "
                "session %r starts afresh", agent_id, name, holds, named, os.path.basename(aside), named)


def _mtime_ns(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat().st_mtime_ns
    except OSError:
        return 1 << 62      # gone or unreadable: rescan it (the scan says which)


# -- disk work, in the committer thread only -------------------------------------
# A "job" is passed to ``Committer.job``/``post`` (bound with functools.partial): it
# runs in the thread, gets the Committer last, and an OSError it raises reaches the
# waiter as ``StorageError``.

def read_bytes(path: str, _: Committer) -> bytes:
    """Job: the whole regular file at ``path``; b"" if there is none (``read_regular``)."""
    try:
        return read_regular(path)
    except FileNotFoundError:
        return b""


def read_lines(path: str, _: Committer) -> list[dict[str, Any]]:
    """Job: ``read_file_lines`` of the file at ``path``; [] if there is none."""
    try:
        return read_file_lines(path)
    except FileNotFoundError:
        return []


def find_archived_outcome(path: str, since_ms: int, run_id: str, committer: Committer) -> dict[str, Any] | None:
    """Job: ``find_outcome`` of run ``run_id`` in the transcripts archived from ``path`` (by
    ``reset``) at or after ``since_ms`` (Unix milliseconds): the first that holds one."""
    for archived in _archived_since(path, since_ms):
        found = find_outcome([archived], run_id, committer)
        if found is not None:
            return found
    return None


def _archived_since(path: str, since_ms: int) -> list[str]:
    directory, name = os.path.split(path)
    prefix = name[:-len(_SUFFIX)] + ".reset-"
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    stamps = sorted(int(stamp) for entry in names if entry.startswith(prefix) and entry.endswith(_SUFFIX)
                    and (stamp := entry[len(prefix):-len(_SUFFIX)]).isdigit() and int(stamp) >= since_ms)
    return [os.path.join(directory, f"{prefix}{stamp}{_SUFFIX}") for stamp in stamps]


class Stored(NamedTuple):
    """Where one turn's lines were written: ``length`` bytes at ``offset`` of ``path``.

    A named tuple: one is made per turn, on the hot path.
    """

    path: str
    offset: int
    length: int


def read_outcome(where: Stored, run_id: str, _: Committer) -> Message | None:
    """Job: the reply of run ``run_id`` (its "assistant" or "aborted" line, with tool calls
    and reasoning, or its "error" line's partial reply, "" when it had none) among the
    lines stored at ``where``; None if the file no longer holds them (reset, deleted,
    pruned)."""
    try:
        fd = os.open(where.path, os.O_RDONLY | CLOEXEC)
        try:
            data = os.pread(fd, where.length, where.offset)
        finally:
            os.close(fd)
    except OSError:
        return None
    for line in parse_lines(data)[0]:
        if line.get("runId") == run_id and line.get("type") in OUTCOME_TYPES:
            content = line.get("content", "" if line.get("type") == "error" else None)
            if not isinstance(content, str):
                return None
            return reply_of(line) or Message("assistant", content)
    return None


def write_index(sessions_dir: str, snapshot: dict[str, IndexEntry], _: Committer) -> float:
    """Job: write ``snapshot`` as ``<sessions_dir>/index.json``, atomically; the seconds it took.

    A temp file in the same directory, fsync, rename over, fsync the directory.
    Its mtime is when the job began, not when encoding ``snapshot`` ended (seconds
    later for a big one): ``load`` trusts only the entries of transcripts older
    than that, and a turn written just before the job may be missing from it.
    """
    began_ns = time.time_ns()
    started = time.perf_counter()
    data = dumps({key: {"file": transcript_stem(key) + _SUFFIX, "createdAt": created,
                         "updatedAt": updated, "turns": turns, "lastRunId": last_run}
                   for key, (created, updated, turns, last_run) in snapshot.items()}).encode("utf-8")
    make_dirs(sessions_dir)
    tmp = os.path.join(sessions_dir, INDEX_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        if os.utime in os.supports_fd:
            os.utime(fd, ns=(began_ns, began_ns))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(sessions_dir, INDEX_NAME))
    fsync_dir(sessions_dir)
    return time.perf_counter() - started


def restart(path: str, stamp_ms: int, header: bytes, committer: Committer) -> None:
    """Job: rename transcript ``path`` to ``<file>.reset-<stamp_ms>.jsonl`` and create a new
    ``path`` holding ``header`` (a header line), fsynced, with its directory.

    ``stamp_ms`` (Unix milliseconds) goes up until no archive has it; a missing
    ``path`` is only created. If the new file cannot be written, the archive
    is renamed back before the error is raised: the session stays as it was.
    """
    committer.drop_fd(path)
    make_dirs(os.path.dirname(path))
    while os.path.exists(f"{path[:-len(_SUFFIX)]}.reset-{stamp_ms}{_SUFFIX}"):
        stamp_ms += 1             # never overwrite an earlier archive
    archived = f"{path[:-len(_SUFFIX)]}.reset-{stamp_ms}{_SUFFIX}"
    if os.path.exists(path):
        os.rename(path, archived)
    else:
        archived = ""
    created = False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | CLOEXEC, 0o600)
        created = True
        try:
            write_all(fd, header)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        _undo_restart(path, archived, created)
        raise
    _sync_forgotten(path)


def _undo_restart(path: str, archived: str, created: bool) -> None:
    try:
        if created:
            os.unlink(path)
        if archived:
            os.rename(archived, path)
    except OSError as exc:     # the index keeps the old entry; a restart rebuilds it from the files
        log.warning("session store: undoing a failed reset of %s failed: %s", os.path.basename(path), exc)


def delete(path: str, committer: Committer) -> None:
    """Job: unlink transcript ``path``; a missing one is no error."""
    committer.drop_fd(path)
    if os.path.exists(path):
        os.unlink(path)
        _sync_forgotten(path)


def _sync_forgotten(path: str) -> None:
    # Done is done: if the directory fsync fails, a crash may bring the old
    # transcript back, which is better than reporting a reset that happened as failed.
    try:
        fsync_dir(os.path.dirname(path))
    except OSError as exc:
        log.warning("session store: fsync of the directory of %s failed: %s", os.path.basename(path), exc)


def prune_journals(agents_dir: str, cutoff: float, committer: Committer) -> None:
    """Job: delete every agent's journals whose whole UTC day ended by ``cutoff`` (epoch s)."""
    for agent in os.scandir(agents_dir):
        _live_days(os.path.join(agent.path, JOURNAL_DIR), cutoff, committer)


def key_journals(directory: str, since: float, committer: Committer) -> list[tuple[str, int]]:
    """Job: the key journals in ``directory`` whose UTC day ended after ``since`` (epoch s),
    oldest day first, each with the offset its reading starts at; older ones are deleted.

    Of a journal over ``MAX_KEY_JOURNAL_BYTES``, only its newest lines (its tail,
    from the first line that starts within them) are read: the offset is that
    line's. A name that is not a regular file (a FIFO, a device) is skipped with
    a warning.
    """
    found = []
    for path in _live_days(directory, since, committer):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                log.warning("skipped key journal %s: not a regular file", path)
                continue
            start = 0
            if info.st_size > MAX_KEY_JOURNAL_BYTES:
                # One byte more, before the cut: a newline there says the first line is whole.
                cut = line_end(fd, info.st_size - MAX_KEY_JOURNAL_BYTES - 1, info.st_size)
                start = info.st_size if cut is None else cut + 1
            found.append((path, start))
        finally:
            os.close(fd)
    return found


def prune_key_journals(directory: str, cutoff: float, committer: Committer) -> None:
    """Job: delete the key journals in ``directory`` whose UTC day ended by ``cutoff`` (epoch s)."""
    _live_days(directory, cutoff, committer)


def _live_days(directory: str, cutoff: float, committer: Committer) -> list[str]:
    """The day files (``YYYY-MM-DD.jsonl``) in ``directory`` whose UTC day ended after
    ``cutoff``, oldest first; those that ended by it are deleted, other files left alone."""
    live = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        end = journal_day_end(name)
        if end != float("inf"):
            path = os.path.join(directory, name)
            if end <= cutoff:
                committer.drop_fd(path)
                unlink_expired(path)
            else:
                live.append(path)
    return live


def unlink_expired(path: str) -> bool:
    """Delete the expired day file ``path``; whether it is gone. One that cannot be deleted
    (a directory under its name, a file not ours to remove) is left with a warning: start-up
    and the writes go on without it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("expired %s could not be deleted (%s); it is left alone", path,
                    exc.strerror or type(exc).__name__)
        return False
    return True


def journal_day_end(name: str) -> float:
    """When the UTC day of a day file ``name`` (``YYYY-MM-DD.jsonl``) ends, in epoch
    seconds; +inf for any other name."""
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
