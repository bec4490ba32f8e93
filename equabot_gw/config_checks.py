"""The value checks of config keys: a parsed value in, the value to store out.

Each check takes one value of the parsed document and returns what the
config stores (a tuple for a list, a float for a number), or raises
``ValueError(reason)``, the reason naming what was expected and what was
given. ``config.py`` names one per key of its schema and turns the
``ValueError`` into a ``ConfigError`` with the key's dotted path (for a secret
without the value). A check sees one value only: no other key, no file, no
environment; this module knows nothing of sections or ``ConfigError``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import urllib.parse
from typing import Any, Callable, Final

from .net import grammar

__all__ = [
    "Check", "integer", "number", "string", "optional", "boolean", "choice", "string_list",
    "ip_networks", "string_map", "header_map", "http_url", "echo_path", "node_id", "agent_id",
]

Check = Callable[[Any], Any]

# RFC 8259 §6: "numbers that are integers and are in the range [-(2**53)+1,
# (2**53)-1] are interoperable in the sense that implementations will agree
# exactly on their numeric values." A config integer beyond that is a typo;
# refused, it can reach no JSON encoder (Python's refuses ints of over 4,300
# digits) nor a float conversion.
MAX_SAFE_INTEGER: Final = 2**53 - 1


def _describe(value: Any) -> str:
    """A config value as an error names it: a scalar as JSON, else its JSON kind.

    An integer too long to read (a JSON5 hex literal may spell thousands of
    digits) is named by its length, never written out.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        return f"an integer of {math.floor(math.log10(abs(value))) + 1} digits"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return json.dumps(value)
    return "an object" if isinstance(value, dict) else "an array" if isinstance(value, list) \
        else type(value).__name__


def integer(lo: int, hi: int | None = None) -> Check:
    """An integer ``lo``-``hi`` (a float with no fraction counts); no ``hi``: up to ``MAX_SAFE_INTEGER``."""
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo \
                or value > (MAX_SAFE_INTEGER if hi is None else hi):
            span = f"{lo}-{hi}" if hi is not None else f">= {lo}"
            if hi is None and isinstance(value, int) and not isinstance(value, bool) and value > lo:
                span += f" and at most {MAX_SAFE_INTEGER} (2^53 - 1)"
            raise ValueError(f"expected integer {span}, got {_describe(value)}")
        return value
    return check


def number(lo: float, hi: float | None = None) -> Check:
    """A finite number ``lo``-``hi``, stored as a float; an integer a float cannot hold is refused."""
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not _finite(value) or value < lo or (hi is not None and value > hi):
            span = f"{lo:g}-{hi:g}" if hi is not None else f">= {lo:g}"
            raise ValueError(f"expected number {span}, got {_describe(value)}")
        return float(value)
    return check


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a finite float or an int that converts to one (not past 1.8e308)."""
    try:
        return math.isfinite(value)
    except OverflowError:       # math.isfinite converts an int to float first
        return False


def string(*, empty: bool = True) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or (not empty and not value):
            raise ValueError(f"expected {'a' if empty else 'a non-empty'} string, got {_describe(value)}")
        return value
    return check


def optional(inner: Check) -> Check:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(map(json.dumps, options))}, got {_describe(value)}")
        return value
    return check


def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {_describe(value)}")
    return tuple(value)


def ip_networks(value: Any) -> tuple[str, ...]:
    items = string_list(value)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"expected IP addresses or networks (CIDR), got {_describe(item)}") from None
    return items


def string_map(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"expected an object of strings, got {_describe(value)}")
    return tuple(value.items())


# The patterns of this module are plain strings, compiled by ``re`` on first
# use (it caches them): a start compiles only those its config file needs.
_FIELD_VALUE_CONTROL: Final = r"[\x00-\x08\x0a-\x1f\x7f]"


def header_map(value: Any) -> tuple[tuple[str, str], ...]:
    """HTTP header fields to send: names are tokens (RFC 9110 §5.1), values hold no CR, LF or NUL (§5.5)."""
    items = string_map(value)
    for name, field_value in items:
        if not name.isascii() or grammar.TOKEN.fullmatch(name.encode("ascii")) is None:
            raise ValueError(f"{json.dumps(name)} is not a valid header field name")
        if not _latin1(field_value) or re.search(_FIELD_VALUE_CONTROL, field_value):
            # The value is never repeated: it may be a credential.
            raise ValueError(f"the value of header {json.dumps(name)} is not a valid field value")
    return items


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def http_url(value: Any) -> str:
    """An ``http://`` or ``https://`` URL with a host, a valid port and no userinfo."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected an http:// or https:// URL, got {_describe(value)}")
    try:
        parts = urllib.parse.urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {_describe(value)}")
    if "@" in parts.netloc:
        raise ValueError("credentials do not belong in the URL (use apiKey or headers)")
    if not port_ok:
        raise ValueError(f"the port of {_describe(value)} is not 1-65535")
    return value


# Paths the gateway serves itself: an echo path there would hide them.
_OWN_PATHS: Final = ("/", "/chat", "/health", "/healthz", "/readyz", "/metrics", "/favicon.ico")
_OWN_PREFIXES: Final = ("/static/", "/v1/")


def echo_path(value: Any) -> str:
    """The echo path: an absolute path (``/echo``) the gateway does not already serve."""
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*", value):
        raise ValueError(f"expected a path such as \"/echo\", got {_describe(value)}")
    if value in _OWN_PATHS or value.startswith(_OWN_PREFIXES):
        raise ValueError(f"{_describe(value)} is a path the gateway serves itself; pick another, "
                         f"such as \"/echo\"")
    return value


_NODE_ID: Final = r"[A-Za-z0-9_-]{1,32}"


def node_id(value: Any) -> str:
    """A node id is empty (one gateway) or 1-32 of ``[A-Za-z0-9_-]``: it goes into run and response ids."""
    if isinstance(value, str) and (value == "" or re.fullmatch(_NODE_ID, value)):
        return value
    raise ValueError(f"expected \"\" or 1-32 characters of [A-Za-z0-9_-], got {_describe(value)}")


_AGENT_ID: Final = r"[a-z0-9][a-z0-9_-]{0,63}"


def agent_id(value: Any) -> str:
    """Agent ids are normalised to lower case and must match ``[a-z0-9][a-z0-9_-]{0,63}``."""
    if isinstance(value, str) and re.fullmatch(_AGENT_ID, value.strip().lower()):
        return value.strip().lower()
    raise ValueError(f"expected an agent id matching [a-z0-9][a-z0-9_-]{{0,63}}, got {_describe(value)}")
