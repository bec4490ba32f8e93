"""Session keys: their grammar, their agent, and the keys the gateway makes.

Owns the key rule (1-200 characters of ``[A-Za-z0-9:._@-]``), the agent part
of a key (``agent:<id>:<rest>``, agent ids compared without case), scoping a
client's key to an agent, the keys of OpenAI ``user`` values and the fresh
keys of stateless runs, and the check of an agent id where one names files.
Pure functions of their arguments (a stateless key's randomness aside): no
store, no files, no event loop. Imports nothing from equabot_gw.net or
equabot_gw.gateway.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Final

from equabot_gw import errors
from equabot_gw.agents.transcripts import AGENT_ID_RE

__all__ = [
    "validate_key", "agent_of", "with_agent", "scoped_key", "user_key", "stateless_key",
    "is_key_of", "check_agent_id", "MAX_KEY_CHARS",
]

MAX_KEY_CHARS: Final = 200
_KEY_RULE: Final = "session keys are 1-200 characters of A-Z a-z 0-9 : . _ @ -"
_KEY_RE: Final = re.compile(r"[A-Za-z0-9:._@-]{1,200}")


def validate_key(key: str, *, param: str = "session_key") -> str:
    """Return ``key`` if it is 1-200 chars of ``[A-Za-z0-9:._@-]``.

    Raises ``ApiError`` 400 (code ``invalid_session_key``, the given ``param``)
    whose message states the rule and the first offence.
    """
    if type(key) is str and _KEY_RE.fullmatch(key):
        return key
    raise errors.ApiError(400, _key_problem(key), code="invalid_session_key", param=param)


def _key_problem(key: object) -> str:
    if not isinstance(key, str):
        return f"{_KEY_RULE}; got {type(key).__name__}"
    if not key or len(key) > MAX_KEY_CHARS:
        return f"{_KEY_RULE}; got {f'{len(key)} characters' if key else 'an empty key'}"
    pos = next(i for i, ch in enumerate(key) if not _KEY_RE.fullmatch(ch))
    return f"{_KEY_RULE}; got {key[pos]!r} at position {pos}"


def agent_of(key: str) -> str | None:
    """The ``<id>`` of a key ``agent:<id>:<rest>`` (both non-empty), else None."""
    if not key.startswith("agent:"):
        return None
    agent_id, sep, rest = key[6:].partition(":")
    return agent_id if agent_id and sep and rest else None


def with_agent(key: str, agent_id: str) -> str:
    """``key`` naming ``agent_id``: a key ``agent:<id>:<rest>`` whose ``<id>`` is ``agent_id``
    in another case is rewritten with ``agent_id`` (agent ids are compared without case);
    any other key is returned as it is."""
    owner = agent_of(key)
    if owner is None or owner == agent_id or owner.lower() != agent_id.lower():
        return key
    return f"agent:{agent_id}:{key[7 + len(owner):]}"


def scoped_key(agent_id: str, key: str) -> str:
    """``key`` if it already names an agent, else ``agent:<agent_id>:<key>``.

    Raises ``ApiError`` 400 if ``key`` or the scoped result is not a valid key
    (for example over 200 characters once scoped).
    """
    validate_key(key)
    return key if agent_of(key) is not None else validate_key(f"agent:{agent_id}:{key}")


def user_key(agent_id: str, user: str) -> str:
    """The session key of an OpenAI ``user``: ``agent:<id>:openai-user:<user>``.

    A ``user`` that would not make a valid key becomes ``u-`` + the first 40 hex
    digits of its UTF-8 sha256, so every non-empty string maps stably into the
    key alphabet. Raises ``ApiError`` 400 (param ``user``) for an empty one.
    """
    if not isinstance(user, str) or not user:
        raise errors.ApiError(400, "user must be a non-empty string",
                              code="invalid_session_key", param="user")
    key = f"agent:{agent_id}:openai-user:{user}"
    if _KEY_RE.fullmatch(key):
        return key
    digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return validate_key(f"agent:{agent_id}:openai-user:u-{digest}", param="user")


def stateless_key(agent_id: str, origin: str) -> str:
    """A fresh key ``agent:<agent_id>:<origin>:<uuid4>`` for a stateless run.

    Raises ``ApiError`` 400 as ``validate_key`` does when such keys are not
    valid (a long agent id, an origin outside the alphabet).
    """
    prefix = _stateless_prefixes.get((agent_id, origin)) or _stateless_prefix(agent_id, origin)
    return prefix + _uuid4()


# Prefixes ``agent:<agent_id>:<origin>:`` found valid: a uuid4 (36 characters of
# the key alphabet) after one makes a valid key, so the key is not matched
# again per run. Doors and agents are few; the table is bounded all the same.
_MAX_STATELESS_PREFIXES: Final = 256
_stateless_prefixes: dict[tuple[str, str], str] = {}
_SAMPLE_UUID: Final = "00000000-0000-4000-8000-000000000000"


def _stateless_prefix(agent_id: str, origin: str) -> str:
    prefix = f"agent:{agent_id}:{origin}:"
    # A key with a sample uuid4 in it fails as every such key would, with the same message.
    validate_key(prefix + _SAMPLE_UUID)
    if len(_stateless_prefixes) < _MAX_STATELESS_PREFIXES:
        _stateless_prefixes[(agent_id, origin)] = prefix
    return prefix


# uuid.uuid4() makes a getrandom() call per key, and each drops the GIL on the
# hot path (handing it to the committer); uuids made in batches from one
# os.urandom call are just as random. ``list.pop`` and ``list.extend`` are
# atomic, so two threads never take the same one without a lock. A forked
# child must not replay the parent's batch.
_UUIDS_PER_BATCH: Final = 256
_ready: list[str] = []


def _forget_pool() -> None:
    _ready.clear()


os.register_at_fork(after_in_child=_forget_pool)


def _uuid4() -> str:
    while True:
        try:
            return _ready.pop()
        except IndexError:
            _ready.extend(_uuid4_batch())


def _uuid4_batch() -> list[str]:
    h = os.urandom(16 * _UUIDS_PER_BATCH).hex()     # RFC 9562 §5.4: version 4, variant 0b10
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-{_VARIANT[h[i + 16]]}{h[i + 17:i + 20]}-"
            f"{h[i + 20:i + 32]}" for i in range(0, len(h), 32)]


# A random hex digit as the variant digit: its two low bits after 0b10.
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def check_agent_id(agent_id: str) -> None:
    """Raise ``ApiError`` 400 (code ``invalid_agent_id``) unless ``agent_id`` is 1-128
    characters of ``[A-Za-z0-9._@-]`` not starting with '.' (it names a directory)."""
    if type(agent_id) is not str or not AGENT_ID_RE.fullmatch(agent_id):
        raise errors.ApiError(400, f"agent ids are 1-128 characters of A-Z a-z 0-9 . _ @ - "
                                   f"not starting with '.'; got {agent_id!r:.80}",
                              code="invalid_agent_id", param="agent_id")


def is_key_of(agent_id: str, key: str) -> bool:
    """Whether ``key`` is a valid key of agent ``agent_id`` (the predicate ``transcripts.load`` asks)."""
    return _KEY_RE.fullmatch(key) is not None and agent_of(key) == agent_id
