"""Who may use the gateway: secret resolution, constant-time checks, the failure limiter.

Owns ``gateway.auth`` at run time. The secret comes from the environment
(``EQUABOT_GATEWAY_TOKEN`` / ``EQUABOT_GATEWAY_PASSWORD``), which wins over
the config file, or — token mode on loopback with neither — from a token
generated once into ``<state-dir>/gateway-token``. Every check compares bytes
with ``hmac.compare_digest``. Failed attempts are counted per client address
in a sliding window; past the limit the address is locked out (429 with
``Retry-After``). HTTP and the WebSocket ``connect`` use the same ``Authenticator``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .config import AuthConfig, RateLimitConfig
from .errors import ApiError, ConfigError

TOKEN_FILE: Final = "gateway-token"
TOKEN_ENV: Final = "EQUABOT_GATEWAY_TOKEN"
PASSWORD_ENV: Final = "EQUABOT_GATEWAY_PASSWORD"
# Addresses tracked by the limiter at once; the oldest are forgotten first.
MAX_TRACKED_CLIENTS: Final = 10_000
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class Secret:
    """The resolved secret: ``source`` says where it came from (never the value)."""

    mode: str
    value: str | None = field(repr=False)
    source: str


def resolve_secret(auth: AuthConfig, env: Mapping[str, str], state_dir: Path,
                   bind_host: str) -> Secret:
    """The secret for ``auth.mode``; raises ``ConfigError`` when none can be had safely.

    Beyond loopback, mode "none" or an empty secret refuses to start.
    """
    loopback = bind_host in LOOPBACK_HOSTS
    if auth.mode == "none":
        if not loopback:
            raise ConfigError("gateway.auth.mode", f'"none" is refused when binding beyond loopback '
                              f"({bind_host}); set gateway.auth.mode to \"token\" and a token in "
                              f"gateway.auth.token or {TOKEN_ENV}")
        return Secret("none", None, "none")
    env_name = TOKEN_ENV if auth.mode == "token" else PASSWORD_ENV
    if env.get(env_name):
        return Secret(auth.mode, env[env_name], f"environment ({env_name})")
    configured = auth.token if auth.mode == "token" else auth.password
    if configured:
        return Secret(auth.mode, configured, f"config (gateway.auth.{auth.mode})")
    if auth.mode == "password" or not loopback:
        key = f"gateway.auth.{auth.mode}"
        raise ConfigError(key, f"no {auth.mode} is set; binding to {bind_host} needs one: set "
                               f"{key} in the config or {env_name} in the environment")
    return Secret("token", _stored_token(state_dir), f"file {state_dir / TOKEN_FILE}")


def _stored_token(state_dir: Path) -> str:
    path = state_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


class FailureLimiter:
    """Sliding-window count of failed attempts per client address.

    ``max_attempts`` failures within ``window_seconds`` lock the address out
    for ``lockout_seconds``. Successes are not counted and never delayed.
    """

    def __init__(self, limits: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None if it may try now."""
        until = self._locked_until.get(client)
        if until is None:
            return None
        remaining = until - self.clock()
        if remaining <= 0:
            del self._locked_until[client]
            return None
        return remaining

    def record_failure(self, client: str) -> None:
        now = self.clock()
        window = self._failures.pop(client, None) or deque()
        while window and now - window[0] > self.limits.window_seconds:
            window.popleft()
        window.append(now)
        self._failures[client] = window
        if len(window) >= self.limits.max_attempts:
            self._locked_until[client] = now + self.limits.lockout_seconds
            del self._failures[client]
        while len(self._failures) > MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)
        if len(self._locked_until) > MAX_TRACKED_CLIENTS:
            for stale in [c for c, t in self._locked_until.items() if t <= now]:
                del self._locked_until[stale]


class Authenticator:
    """Checks callers against the gateway secret, with the failure limiter in front."""

    def __init__(self, secret: Secret, limits: RateLimitConfig,
                 trusted_proxies: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.secret = secret
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
        """
        lines = [forwarded_for] if isinstance(forwarded_for, str) else list(forwarded_for or ())
        if not lines or not self._trusted(peer):
            return peer
        hops = [h.strip() for line in lines for h in line.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
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

    def check(self, presented: str | None, client: str) -> None:
        """Accept ``presented`` from ``client`` or raise ``ApiError`` 401 / 429."""
        if not self.required:
            return
        wait = self.limiter.retry_after(client)
        if wait is not None:
            raise ApiError(429, "too many failed authentication attempts; retry later",
                           code="auth_rate_limited",
                           headers=(("retry-after", str(max(1, int(wait + 0.999)))),))
        assert self._secret_bytes is not None
        if presented is not None and hmac.compare_digest(presented.encode(), self._secret_bytes):
            return
        self.limiter.record_failure(client)
        what = "missing" if presented is None else "invalid"
        raise ApiError(401, f"{what} gateway {self.secret.mode}: send Authorization: Bearer <{self.secret.mode}>",
                       code=f"{what}_api_key", headers=(("www-authenticate", "Bearer"),))

    def check_bearer(self, authorization: str | None, client: str) -> None:
        """Check an ``Authorization`` header value (scheme case-insensitive, RFC 9110 §11.1)."""
        presented = None
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                presented = credentials.strip()
            else:
                presented = ""      # present but not a bearer credential: a failed attempt
        self.check(presented, client)
