"""Checks of the command line's flag values, as argparse ``type=`` callables.

Each returns the value (normalised where it says so) or raises
``argparse.ArgumentTypeError``, which the parser turns into one line and
exit code 2, so a bad value fails before anything starts.
"""

from __future__ import annotations

import argparse

from . import config_checks
from .errors import ApiError

__all__ = ["port", "bind_value", "gateway_url", "session_key", "session_name", "message", "run_timeout", "agent_id", "path"]


def port(text: str) -> int:
    """A port 0-65535 (0: the system picks a free one)."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0 picks a free one), got {text!r}")
    return number


def bind_value(text: str) -> str:
    """``loopback``, ``lan`` or a host address: one word."""
    if not text.strip() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected loopback, lan or a host address, got {text!r}")
    return text


def gateway_url(text: str) -> str:
    """A gateway URL (http, https, ws or wss; its scheme lower-cased, RFC 3986 §3.1 lets
    any case mean the same), checked whole here, so that a bad one is a usage error."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https", "ws", "wss") and bool(parts.hostname) \
            and (parts.port is None or parts.port > 0) and text.isprintable() and " " not in text
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"expected a gateway URL such as http://127.0.0.1:18789, "
                                         f"got {text!r}")
    if "@" in parts.netloc:         # never sent, and a secret is not to be shown in messages
        raise argparse.ArgumentTypeError("credentials do not belong in the URL: pass the secret "
                                         "with --token")
    if "#" in text:                 # RFC 6455 §3: no fragment on a WebSocket URI
        raise argparse.ArgumentTypeError(f"a gateway URL has no fragment ('#'), got {text!r}")
    return parts.scheme + text[len(parts.scheme):]


def session_key(text: str) -> str:
    """A session key as the store takes it."""
    from .agents.sessions import validate_key
    try:
        return validate_key(text)
    except ApiError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def session_name(text: str) -> str:
    """A session of ``sessions show|reset``: a key or an OpenAI ``user`` string, never empty."""
    if not text:
        raise argparse.ArgumentTypeError("expected a session key or the user string an OpenAI client sent, got ''")
    return text


def message(text: str) -> str:
    """The message of ``agent``: never blank (an unset shell variable, an empty file's text),
    which the original command line refuses too ("Message (--message) is required")."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a message that is not blank, got {text!r}")
    return text


def run_timeout(text: str) -> int:
    """``agent --timeout``: whole seconds, 0 (the agent's ``timeoutSeconds``) or more; the
    gateway cuts a time longer than its longest timer to it."""
    value = text.strip()
    if not value.isascii() or not value.isdigit() or int(value) > config_checks.MAX_SAFE_INTEGER:
        raise argparse.ArgumentTypeError(f"expected whole seconds, 0 or more (0: the agent's "
                                         f"timeoutSeconds), got {text[:40]!r}")
    return int(value)


def agent_id(text: str) -> str:
    """An agent id as the config takes it."""
    try:
        return config_checks.agent_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def path(text: str) -> str:
    """A file or directory flag: an empty one (an unset shell variable) is refused, not ignored."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    return text
