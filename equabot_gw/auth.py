"""Who may use the gateway: secret resolution, constant-time checks, the failure limiter.

Owns ``gateway.auth`` at run time. The secret comes from the environment
(``EQUABOT_GATEWAY_TOKEN`` / ``EQUABOT_GATEWAY_PASSWORD``), which wins over
the config file, or — token mode on loopback with neither — from a token
generated once into ``<state-dir>/gateway-token``. Every check compares bytes
with ``hmac.compare_digest``. HTTP and the WebSocket ``connect`` use the same
``Authenticator`` and share its failure limiter:

- only *wrong* credentials count (a request that sends none is refused, not
  counted), and a success resets that client's count;
- counts are kept per client address and credential kind (the gateway's
  token or password, whichever door it arrives by); an IPv6 client is
  counted by its /64, as one host holds a /64 at least;
- past ``maxAttempts`` within ``windowSeconds`` the client is locked out for
  ``lockoutSeconds``: 429 with ``Retry-After`` for every attempt;
- loopback clients are exempt (``exemptLoopback``, default true) so nobody on
  the machine can lock its own tools out — except attempts made by a browser
  page (a WebSocket ``connect`` whose upgrade carried ``Origin``), which are
  always counted apart from every other client: per page origin for pages of
  loopback names, per site (the host's last two labels) for any other.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import os
import stat
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from .config import LOOPBACK_HOSTS, PASSWORD_ENV, TOKEN_ENV, AuthConfig, RateLimitConfig, check_exposure
from .errors import ApiError, ConfigError

TOKEN_FILE: Final = "gateway-token"
# A token file larger than this is not a token (a generated one is 65 bytes): it is
# refused rather than read, so that a link to /dev/zero cannot fill the memory.
MAX_TOKEN_FILE_BYTES: Final = 4096
# Keys tracked by the limiter at once, for failure counts and lockouts alike;
# the oldest are forgotten first.
MAX_TRACKED_CLIENTS: Final = 10_000
# The limiter's key for attempts from browser pages: never exempt, apart from other clients.
BROWSER_KIND: Final = "browser-origin"
# What the limiter keeps of a client's name or a page's origin: more than a browser's
# longest origin (a 253-character host, scheme and port), so that 10,000 keys made of
# long Origin values or forwarded names cannot hold gigabytes.
MAX_KEY_CHARS: Final = 320
# X-Forwarded-For entries read, from the right: more trusted proxies in a row than any
# deployment has. Entries left of them are never parsed, so a header as long as the
# head costs no more than a short one.
MAX_FORWARDED_HOPS: Final = 16
# Longer than any IP address a hop can name (an IPv6 address with a zone, in brackets,
# with a port): a longer entry is no proxy's address and is not parsed as one.
MAX_ADDRESS_CHARS: Final = 64
# The prefix an IPv6 client is counted by: one host gets a /64 at least, and could
# otherwise take a new address for every guess.
IPV6_CLIENT_PREFIX: Final = 64


class Secret:
    """The resolved secret: ``source`` says where it came from (never the value).

    A plain read-only class, not a tuple: nothing iterates, indexes or
    serialises it into showing the value, and its repr leaves the value out.
    """

    __slots__ = ("mode", "value", "source")

    def __init__(self, mode: str, value: str | None, source: str) -> None:
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "source", source)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is read-only")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Secret:
            return NotImplemented
        return (self.mode, self.value, self.source) == (other.mode, other.value, other.source)

    def __hash__(self) -> int:
        return hash((self.mode, self.value, self.source))

    def __repr__(self) -> str:
        return f"Secret(mode={self.mode!r}, source={self.source!r})"      # never the value


def resolve_secret(auth: AuthConfig, env: Mapping[str, str], state_dir: Path,
                   bind_host: str) -> Secret:
    """The secret for ``auth.mode``; raises ``ConfigError`` when none can be had safely,
    ``TokenFileError`` when the state dir's token file cannot be read as one.

    Beyond loopback, mode "none" or an empty secret refuses to start.
    """
    check_exposure(auth, bind_host, env)
    if auth.mode == "none":
        return Secret("none", None, "none")
    env_name = TOKEN_ENV if auth.mode == "token" else PASSWORD_ENV
    if env.get(env_name):
        return Secret(auth.mode, env[env_name], f"environment ({env_name})")
    configured = auth.token if auth.mode == "token" else auth.password
    if configured:
        return Secret(auth.mode, configured, f"config (gateway.auth.{auth.mode})")
    token, generated = _stored_token(state_dir)
    return Secret("token", token, f"file {state_dir / TOKEN_FILE}" + (" (generated now)" if generated else ""))


def generate_token() -> str:
    """A new gateway token: 256 random bits as 64 hex digits.

    Hex, not base64url: a token that starts with "-" would read as an option
    when pasted after a command-line flag (``--token "$(cat gateway-token)"``).
    """
    import secrets      # only when a token is made: not needed to serve
    return secrets.token_hex(32)


class TokenFileError(ConfigError):
    """The state dir's token file exists but cannot serve as one (a state dir that cannot
    be used, hence a ``ConfigError``); the message names the file and the way out."""

    def __init__(self, file: Path, problem: str) -> None:
        self.file = file
        self.problem = problem
        super().__init__("", f"cannot use the gateway token file {file}: {problem}; delete it "
                             f"(a new token is generated at start) or set {TOKEN_ENV}")


def read_token_file(path: Path) -> str | None:
    """The token in ``path`` (surrounding whitespace stripped), None if there is no such
    file or it is empty.

    Only a regular file (or a link to one) of at most ``MAX_TOKEN_FILE_BYTES``
    holding UTF-8 text is read; anything else raises ``TokenFileError``, as does
    an error reading it. A FIFO is opened without waiting for a writer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenFileError(path, exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(path, f"it is not a regular file ({_file_kind(info.st_mode)})")
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenFileError(path, exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(path, f"it is over {MAX_TOKEN_FILE_BYTES} bytes long, not a token")
    try:
        return data.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        raise TokenFileError(path, "it is not UTF-8 text") from None


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a file"


def _stored_token(state_dir: Path) -> tuple[str, bool]:
    """The token of ``state_dir``'s token file, and whether it was generated now (no file, or an
    empty one); ``TokenFileError`` for a file that cannot be one (see ``read_token_file``)."""
    path = state_dir / TOKEN_FILE
    token = read_token_file(path)
    if token:
        return token, False
    token = generate_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, True


class FailureLimiter:
    """Sliding-window count of failed attempts per key (a client address and credential kind).

    ``max_attempts`` failures within ``window_seconds`` lock the key out
    for ``lockout_seconds``; ``reset`` (a success) forgets its failures.
    ``lockouts`` counts the lockouts so far (read-only, for metrics).
    At most ``MAX_TRACKED_CLIENTS`` keys' failures and as many lockouts are
    kept, the oldest forgotten first; each failure costs constant time.
    """

    def __init__(self, limits: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.lockouts = 0
        self._failures: OrderedDict[Hashable, deque[float]] = OrderedDict()
        # In order of locking, which is the order of ending: every lockout lasts as long.
        self._locked_until: OrderedDict[Hashable, float] = OrderedDict()

    def retry_after(self, key: Hashable) -> float | None:
        """Seconds until ``key`` may try again, or None if it may try now."""
        until = self._locked_until.get(key)
        if until is None:
            return None
        remaining = until - self.clock()
        if remaining <= 0:
            del self._locked_until[key]
            return None
        return remaining

    def reset(self, key: Hashable) -> None:
        """Forget ``key``'s failures (after a success)."""
        self._failures.pop(key, None)

    def record_failure(self, key: Hashable) -> None:
        now = self.clock()
        window = self._failures.pop(key, None) or deque()
        while window and now - window[0] > self.limits.window_seconds:
            window.popleft()
        window.append(now)
        self._failures[key] = window
        if len(window) >= self.limits.max_attempts:
            self._locked_until.pop(key, None)
            self._locked_until[key] = now + self.limits.lockout_seconds
            self.lockouts += 1
            del self._failures[key]
        while len(self._failures) > MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)
        # Ended lockouts go from the front; past the bound the oldest lockouts are
        # forgotten too, so a flood of addresses (an IPv6 prefix holds billions)
        # costs neither memory nor a scan of every lockout per failure.
        locked = self._locked_until
        while locked and (len(locked) > MAX_TRACKED_CLIENTS or next(iter(locked.values())) <= now):
            locked.popitem(last=False)


@functools.lru_cache(maxsize=1024)
def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms; False for anything not an IP.

    Asked once per authenticated request with the client's address: remembered
    for the last 1,024 addresses (``ipaddress`` parses in Python, ~10 µs).
    """
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@functools.lru_cache(maxsize=1024)
def limiter_address(address: str) -> str:
    """Where a client's failed attempts are counted: an IPv4 address as itself, an IPv6
    one by its /64 (``2001:db8:1:2::/64``: a host holds at least that many addresses,
    and would escape a count per address by moving to the next), an IPv4-mapped one
    (``::ffff:192.0.2.7``) as its IPv4 address; anything not an IP as it is.

    Only the limiter's keys change: logs still name the full address.
    """
    if ":" not in address:          # IPv4, a name, "unix": the usual case, nothing to parse
        return address
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))


def _page_site(origin: str) -> str:
    """Where the attempts of a page on this machine count: a page of a loopback origin
    (``http://localhost:3000``) by its origin; any other by its host's last two labels.

    A page of another name reaches a gateway on loopback by DNS rebinding, or as
    a listed origin; a rebinding site can make up names without end
    (``a1.rebind.example``, ``a2.rebind.example``, …), each a new origin, so
    counting per origin would let it guess without limit.
    """
    try:
        host = urlsplit(origin).hostname or ""
    except ValueError:
        return origin
    if not host or host in LOOPBACK_HOSTS:
        return origin
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:          # a name: its site
        return ".".join(host.rstrip(".").split(".")[-2:])
    return origin if (getattr(ip, "ipv4_mapped", None) or ip).is_loopback else host


def _without_port(hop: str) -> str:
    """An ``X-Forwarded-For`` hop without the port some proxies add: ``192.0.2.7:80`` and
    ``[2001:db8::7]:80`` (or ``[2001:db8::7]``) name ``192.0.2.7`` and ``2001:db8::7``;
    anything else (a bare address, ``unknown``) is returned as it is."""
    if hop.startswith("["):
        inside, bracket, rest = hop[1:].partition("]")
        return inside if bracket and (not rest or rest[0] == ":" and rest[1:].isdigit()) else hop
    host, colon, port = hop.partition(":")
    return host if colon and port.isdigit() and "." in host else hop


class Authenticator:
    """Checks callers against the gateway secret, with the failure limiter in front.

    ``failures`` counts refused attempts by reason (read-only, for metrics):
    ``missing`` (no credentials), ``invalid`` (wrong ones), ``locked_out``
    (refused with 429 before any comparison); ``limiter.lockouts`` the lockouts.
    """

    def __init__(self, secret: Secret, limits: RateLimitConfig,
                 trusted_proxies: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.secret = secret
        self.failures = {"missing": 0, "invalid": 0, "locked_out": 0}
        self._secret_bytes = secret.value.encode() if secret.value is not None else None
        self.limiter = FailureLimiter(limits, clock)
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    @property
    def required(self) -> bool:
        return self.secret.mode != "none"

    def client_address(self, peer: str, forwarded_for: str | Sequence[str] | None) -> str:
        """The client's address: the peer, or — behind a trusted proxy — from ``X-Forwarded-For``.

        ``forwarded_for`` is the header's value, or every field line of it in
        order (RFC 9110 §5.3: one list; a proxy may add a line of its own).
        The list is read right to left, skipping trusted proxies: the first
        untrusted hop is the client (entries left of it could be forged).
        A hop a proxy wrote with the client's port (``192.0.2.7:51000``,
        ``[2001:db8::7]:443``) is its address alone: the port changes with
        every connection, and must not make a new client for the limiter.
        A loopback peer that is not a trusted proxy but forwards for someone
        is most likely a reverse proxy left out of ``trustedProxies``: it is
        named ``"<peer> (forwarding)"``, which is not loopback, so the
        limiter's loopback exemption never covers the clients behind it.

        Only the last ``MAX_FORWARDED_HOPS`` entries are read (empty ones
        count): when every one of them is a trusted proxy, the client is the
        leftmost of them, and what lies further left is ignored (the client
        could have written it). So a long header costs what a short one does.
        """
        if not forwarded_for:       # no X-Forwarded-For (the usual request): no hop but the peer
            return peer
        lines = (forwarded_for,) if isinstance(forwarded_for, str) else forwarded_for
        if not self._trusted(peer):
            forwards = is_loopback(peer) and any(line.strip(" \t,") for line in lines)
            return f"{peer} (forwarding)" if forwards else peer
        budget = MAX_FORWARDED_HOPS
        last = None         # the leftmost hop read so far
        for line in reversed(lines):
            # Split from the right, at most the budget's entries: the rest stays one unread piece.
            entries = line.rsplit(",", budget)
            if len(entries) > budget:
                del entries[0]
            budget -= len(entries)
            for entry in reversed(entries):
                hop = entry.strip()
                if not hop:
                    continue
                hop = _without_port(hop)
                if not self._trusted(hop):
                    return hop[:MAX_KEY_CHARS]      # a name as long as the head: kept (and cached) in part
                last = hop
            if budget <= 0:
                break
        return last if last is not None else peer

    def _trusted(self, address: str) -> bool:
        if not self._proxies or len(address) > MAX_ADDRESS_CHARS:   # no address to parse
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        # A dual-stack listener (a proxy's, or a socket the gateway was given) sees an IPv4
        # peer as ::ffff:a.b.c.d: the same host as a.b.c.d, listed as that.
        ip = getattr(ip, "ipv4_mapped", None) or ip
        return any(ip in net for net in self._proxies)

    def check_host(self, host: str | None) -> None:
        """Without a secret, only loopback names may be in ``Host`` (403 otherwise).

        DNS rebinding: a web page can point its own name at 127.0.0.1 and
        make the browser send it requests that pass any Origin check; their
        ``Host`` still names the page's domain. With a secret this is
        harmless (the page does not know it); without one, the Host check is
        the defence.
        """
        if self.required:
            return
        name = (host or "").strip().lower()
        name = name[1:name.index("]")] if name.startswith("[") and "]" in name else name.rpartition(":")[0] or name
        if name not in LOOPBACK_HOSTS:
            raise ApiError(403, f"with gateway.auth.mode \"none\" only loopback Host names are served "
                                f"(got {host!r}); set a token to serve other names",
                           type="permission_error", code="host_not_allowed")

    def check(self, presented: str | None, client: str, *,
              browser_origin: bool | str = False) -> None:
        """Accept ``presented`` from ``client`` or raise ``ApiError`` 401 / 429.

        ``presented`` is None when the caller sent no credentials (401, not
        counted). ``browser_origin`` marks an attempt made by a browser page
        (a WebSocket whose upgrade carried ``Origin``): pass the Origin value,
        or True when it is not at hand. Such attempts are counted even from
        loopback, apart from other clients (from loopback per origin when
        given — per site for a name not of loopback — elsewhere per address),
        so a page cannot lock out the machine's own tools, nor escape the limiter.
        """
        if not self.required:
            return
        key = self._limiter_key(client, browser_origin)
        if key is not None:
            wait = self.limiter.retry_after(key)
            if wait is not None:
                self.failures["locked_out"] += 1
                raise ApiError(429, "too many failed authentication attempts; retry later",
                               code="auth_rate_limited",
                               headers=(("retry-after", str(max(1, int(wait + 0.999)))),))
        assert self._secret_bytes is not None
        if presented is not None and hmac.compare_digest(presented.encode(), self._secret_bytes):
            if key is not None:
                self.limiter.reset(key)
            return
        if presented is not None and key is not None:
            self.limiter.record_failure(key)
        what = "missing" if presented is None else "invalid"
        self.failures[what] += 1
        raise ApiError(401, f"{what} gateway {self.secret.mode}: send Authorization: Bearer <{self.secret.mode}>",
                       code=f"{what}_api_key", headers=(("www-authenticate", "Bearer"),))

    def _limiter_key(self, client: str, browser_origin: bool | str) -> Hashable | None:
        """Where an attempt is counted; None for an exempt loopback client."""
        if browser_origin:
            # A page on this machine is counted per origin (per site beyond loopback
            # names: _page_site), so a hostile one cannot lock out the others. Elsewhere
            # the Origin (and a Host to match it) is whatever the client sends: per
            # origin, changing it would escape the count.
            if not is_loopback(client):
                return (BROWSER_KIND, limiter_address(client))
            origin = browser_origin.strip().lower() if isinstance(browser_origin, str) else ""
            # Kept in part: an Origin field may be as long as the head.
            return (BROWSER_KIND, _page_site(origin)[:MAX_KEY_CHARS] if origin else client)
        if self.limiter.limits.exempt_loopback and is_loopback(client):
            return None
        return (self.secret.mode, limiter_address(client))

    def check_bearer(self, authorization: str | None, client: str) -> None:
        """Check an ``Authorization`` header value (scheme case-insensitive, RFC 9110 §11.1).

        ``authorization`` is the field's bytes as ISO-8859-1 text, as the HTTP
        codec gives every field value; the credentials in it are read as the
        UTF-8 they were sent in, so a secret outside ASCII is the same secret
        here as in a WebSocket ``connect`` (bytes that are not UTF-8 match none).
        """
        presented = None
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                presented = credentials.strip()
                if not presented.isascii():
                    presented = presented.encode("latin-1", "replace").decode("utf-8", "replace")
            else:
                presented = ""      # present but not a bearer credential: a failed attempt
        self.check(presented, client)
