"""Configuration: a JSON5 file plus the environment, checked strictly, frozen.

Owns the schema (every key, its type, its default, its check from
``config_checks.py``), the file lookup order, the ``${VAR}`` substitution and
the masking of secrets for display. Everything else receives the read-only
``Config`` and its sections and never reads the file or the environment for
settings itself. Problems raise ``ConfigError`` with the dotted path of the
key and the reason, e.g.
``gateway.port: expected integer 1-65535, got "abc"``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Collection, Final, Mapping

from .config_checks import (
    Check, _describe, agent_id, boolean, choice, echo_path, header_map, http_url, integer, ip_networks,
    node_id, number, optional, string, string_list,
)
from .errors import ConfigError, JSON5Error

DEFAULT_PORT: Final = 18789
DEFAULT_CONFIG_PATH: Final = "~/.equabot/equabot.json"
DEFAULT_STATE_DIR: Final = "~/.equabot"
SECRET_KEYS: Final = frozenset({"token", "password", "apiKey"})
# Nesting a config file may have. The schema needs under ten levels; the bound
# keeps every recursive walk of the parsed value (substitution, checks,
# display) far from Python's recursion limit.
MAX_CONFIG_DEPTH: Final = 64
# Bytes a config file may have. Real ones are a few KiB (a long system prompt
# or two, tens); the bound keeps a path such as /dev/zero, or a runaway
# generated file, from filling memory before the parser sees a byte.
MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024
MASK: Final = "***"
TOKEN_ENV: Final = "EQUABOT_GATEWAY_TOKEN"
PASSWORD_ENV: Final = "EQUABOT_GATEWAY_PASSWORD"
BIND_ALIASES: Final = {"loopback": "127.0.0.1", "lan": "0.0.0.0"}
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})

# -- sections ------------------------------------------------------------------------
#
# A section of the config is a class of ``key()`` attributes over ``Section``.
# Sections are built once per config, so they are plain classes sharing the
# base's few methods rather than frozen dataclasses: a dataclass compiles six
# generated methods per class at import, about 4 million instructions for
# each of the 18 sections, an eighth of the gateway's whole start-up.

REQUIRED: Final = object()      # the default of a key that has none


class Key:
    """A section attribute read from config key ``name`` and checked by ``check``.

    A nested section leaves ``check`` out and gives its class as ``factory``
    (the type is the schema); ``attr`` is the attribute's name in its class.
    """

    __slots__ = ("name", "check", "default", "factory", "attr")

    def __init__(self, name: str, check: Check | None, default: Any,
                 factory: Callable[[], Any] | None) -> None:
        self.name, self.check, self.default, self.factory = name, check, default, factory
        self.attr = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    @property
    def required(self) -> bool:
        return self.default is REQUIRED and self.factory is None

    @property
    def shown(self) -> bool:
        """Whether ``repr`` may show the value: never a secret (nor headers, which may hold one)."""
        return self.name not in SECRET_KEYS and self.name != "headers"


def key(name: str, check: Check | None = None, *, default: Any = REQUIRED,
        factory: Callable[[], Any] | None = None) -> Any:
    """A ``Key`` (typed ``Any``, so that a class body can annotate it with its value's type)."""
    return Key(name, check, default, factory)


class Section:
    """A read-only group of config keys, each a ``key()`` attribute of the subclass.

    Made with keyword arguments: a key left out takes its default (a new
    nested section for one with a ``factory``); one without a default is
    required (``TypeError``). Compared and hashed by value; ``repr`` shows
    every key but the secrets.
    """

    KEYS: ClassVar[tuple[Key, ...]] = ()        # in the order of the class body

    def __init_subclass__(cls) -> None:
        cls.KEYS = tuple(v for v in vars(cls).values() if isinstance(v, Key))

    def __init__(self, **values: Any) -> None:
        own = self.__dict__                     # its values hide the class's Key attributes
        for k in self.KEYS:
            if k.attr in values:
                own[k.attr] = values.pop(k.attr)
            elif k.factory is not None:
                own[k.attr] = k.factory()
            elif k.default is not REQUIRED:
                own[k.attr] = k.default
            else:
                raise TypeError(f"{type(self).__name__}() needs {k.attr}")
        if values:
            raise TypeError(f"{type(self).__name__}() has no {', '.join(sorted(values))}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k.attr}={self.__dict__[k.attr]!r}" for k in self.KEYS if k.shown)
        return f"{type(self).__name__}({shown})"


# -- the schema ---------------------------------------------------------------------

class RateLimitConfig(Section):
    max_attempts: int = key("maxAttempts", integer(1), default=10)
    window_seconds: float = key("windowSeconds", number(1), default=60.0)
    lockout_seconds: float = key("lockoutSeconds", number(0), default=300.0)
    exempt_loopback: bool = key("exemptLoopback", boolean, default=True)


class AuthConfig(Section):
    mode: str = key("mode", choice("token", "password", "none"), default="token")
    token: str | None = key("token", optional(string()), default=None)
    password: str | None = key("password", optional(string()), default=None)
    rate_limit: RateLimitConfig = key("rateLimit", factory=RateLimitConfig)


class EndpointConfig(Section):
    enabled: bool = key("enabled", boolean, default=False)
    # "session": a stored session's transcript is its history; "client": the
    # messages each request sends are (the transcript only records).
    history: str = key("history", choice("session", "client"), default="session")


class ResponsesEndpointConfig(Section):
    # POST /v1/responses and its stored responses (GET, DELETE, cancel, input_items).
    enabled: bool = key("enabled", boolean, default=False)
    # Stored responses are kept this many days (OpenAI keeps them 30), then deleted.
    retention_days: float = key("retentionDays", number(0), default=30.0)


class EndpointsConfig(Section):
    chat_completions: EndpointConfig = key("chatCompletions", factory=EndpointConfig)
    responses: ResponsesEndpointConfig = key("responses", factory=ResponsesEndpointConfig)


class CorsConfig(Section):
    allow_origins: tuple[str, ...] = key("allowOrigins", string_list, default=())


class HTTPConfig(Section):
    endpoints: EndpointsConfig = key("endpoints", factory=EndpointsConfig)
    max_body_bytes: int = key("maxBodyBytes", integer(1024), default=20 * 1024 * 1024)
    max_header_bytes: int = key("maxHeaderBytes", integer(1024), default=64 * 1024)
    header_timeout: float = key("headerTimeoutSeconds", number(0.01), default=10.0)
    keep_alive_timeout: float = key("keepAliveTimeoutSeconds", number(0.01), default=30.0)
    max_messages: int = key("maxMessages", integer(1), default=10_000)
    cors: CorsConfig = key("cors", factory=CorsConfig)
    # A request with an idempotency key keeps running this long after its
    # client left, so that it can be resumed; past it, an unclaimed run is
    # aborted only if abortUnclaimedRuns (else it completes and is recorded).
    resume_grace: float = key("resumeGraceSeconds", number(0), default=30.0)
    abort_unclaimed_runs: bool = key("abortUnclaimedRuns", boolean, default=False)


class WSConfig(Section):
    max_payload_bytes: int = key("maxPayloadBytes", integer(1024), default=25 * 1024 * 1024)
    allowed_origins: tuple[str, ...] = key("allowedOrigins", string_list, default=())
    echo_path: str | None = key("echoPath", optional(echo_path), default=None)
    tick_interval_ms: int = key("tickIntervalMs", integer(100), default=30_000)


class MetricsConfig(Section):
    # GET /metrics needs the gateway's token or password unless this is true.
    public: bool = key("public", boolean, default=False)


class IdempotencyConfig(Section):
    # How long a used idempotency key (and its run's outcome) is remembered.
    retention_seconds: float = key("retentionSeconds", number(1), default=86_400.0)


class GatewayConfig(Section):
    port: int = key("port", integer(0, 65535), default=DEFAULT_PORT)
    bind: str = key("bind", string(empty=False), default="loopback")
    auth: AuthConfig = key("auth", factory=AuthConfig)
    http: HTTPConfig = key("http", factory=HTTPConfig)
    ws: WSConfig = key("ws", factory=WSConfig)
    metrics: MetricsConfig = key("metrics", factory=MetricsConfig)
    idempotency: IdempotencyConfig = key("idempotency", factory=IdempotencyConfig)
    trusted_proxies: tuple[str, ...] = key("trustedProxies", ip_networks, default=())
    shutdown_grace: float = key("shutdownGraceSeconds", number(0), default=10.0)
    # Behind a balancer: run ids carry it (run_<node>_...), completion ids too
    # (chatcmpl-<node>-...), so a retry or resume can be routed to this node.
    node_id: str = key("nodeId", node_id, default="")


class AgentDefaults(Section):
    model: str = key("model", string(empty=False), default="echo/echo")
    system_prompt: str | None = key("systemPrompt", optional(string()), default=None)
    timeout: float = key("timeoutSeconds", number(0.001), default=600.0)
    max_concurrent: int = key("maxConcurrent", integer(1), default=16)
    max_queued: int = key("maxQueued", integer(0), default=1024)


class AgentConfig(Section):
    id: str = key("id", agent_id)
    name: str | None = key("name", optional(string()), default=None)
    default: bool = key("default", boolean, default=False)
    model: str | None = key("model", optional(string(empty=False)), default=None)
    system_prompt: str | None = key("systemPrompt", optional(string()), default=None)
    timeout: float | None = key("timeoutSeconds", optional(number(0.001)), default=None)
    max_concurrent: int | None = key("maxConcurrent", optional(integer(1)), default=None)


class AgentsConfig(Section):
    defaults: AgentDefaults = key("defaults", factory=AgentDefaults)
    list: tuple[AgentConfig, ...] = key("list", default=())


PROVIDER_APIS: Final = ("echo", "openai-completions", "anthropic-messages", "command")
# Longest reply a provider may stream (UTF-8 bytes of text): far above any
# real completion, low enough that an upstream streaming forever cannot
# exhaust memory or write a huge transcript line.
DEFAULT_MAX_REPLY_BYTES: Final = 4 * 1024 * 1024


class ProviderConfig(Section):
    api: str = key("api", choice(*PROVIDER_APIS))
    base_url: str | None = key("baseUrl", optional(http_url), default=None)
    api_key: str | None = key("apiKey", optional(string()), default=None)
    headers: tuple[tuple[str, str], ...] = key("headers", header_map, default=())
    timeout: float = key("timeoutSeconds", number(0.001), default=120.0)
    models: tuple[str, ...] | None = key("models", optional(string_list), default=None)
    delay_ms: float = key("delayMs", number(0, 60_000), default=0.0)
    command: tuple[str, ...] = key("command", string_list, default=())
    max_tokens: int = key("maxTokens", integer(1), default=4096)
    max_reply_bytes: int = key("maxReplyBytes", integer(1), default=DEFAULT_MAX_REPLY_BYTES)


class ModelsConfig(Section):
    providers: tuple[tuple[str, ProviderConfig], ...] = key("providers", default=())


class SessionsConfig(Section):
    stateless_retention_days: float = key("statelessRetentionDays", number(0), default=7.0)


class Config(Section):
    """The whole effective configuration."""

    gateway: GatewayConfig = key("gateway", factory=GatewayConfig)
    agents: AgentsConfig = key("agents", factory=AgentsConfig)
    models: ModelsConfig = key("models", factory=ModelsConfig)
    sessions: SessionsConfig = key("sessions", factory=SessionsConfig)

    def provider(self, name: str) -> ProviderConfig | None:
        """The configured provider ``name``, or None."""
        return dict(self.models.providers).get(name)


# Collections of sections: the element type of each such key.
_LIST_OF: Final[dict[tuple[type, str], type]] = {
    (AgentsConfig, "list"): AgentConfig,
}
_MAP_OF: Final[dict[tuple[type, str], type]] = {
    (ModelsConfig, "providers"): ProviderConfig,
}


def _build(cls: type[Section], data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected an object, got {_describe(data)}")
    known = {k.name: k for k in cls.KEYS}
    for name in data:
        if name not in known:
            raise _unknown_key(path, name, known)
    values: dict[str, Any] = {}
    for k in cls.KEYS:
        where = f"{path}.{k.name}" if path else k.name
        if k.name not in data:
            if k.required:
                raise ConfigError(where, "required key is missing")
            continue
        values[k.attr] = _value(cls, k, data[k.name], where)
    return cls(**values)


def _unknown_key(path: str, name: Any, known: Mapping[str, Key]) -> ConfigError:
    """The error for member ``name`` of the object at ``path``, which its schema lacks.

    A name with a dot (``"gateway.port"``, as flattened configs spell keys) is
    quoted in the path, which would otherwise name a real key; when its first
    part is a key here, the error says to nest it.
    """
    if not isinstance(name, str) or "." not in name:      # a dict from code may have any keys
        return ConfigError(f"{path}.{name}" if path else name,
                           f"unknown key (known keys: {', '.join(sorted(known))})")
    head, _, rest = name.partition(".")
    where = f"{path}[{json.dumps(name)}]" if path else json.dumps(name)
    if head in known:
        return ConfigError(where, f"unknown key; keys do not take dotted names: write {head}: "
                                  f"{{{rest.replace('.', ': {')}: …{'}' * (rest.count('.') + 1)}")
    return ConfigError(where, f"unknown key (known keys: {', '.join(sorted(known))})")


def _value(cls: type[Section], k: Key, raw: Any, where: str) -> Any:
    if k.check is not None:
        try:
            return k.check(raw)
        except ValueError as exc:
            reason = str(exc)
            if k.name in SECRET_KEYS:
                reason = f"{reason.rpartition(', got ')[0]}, got {type(raw).__name__}"
            raise ConfigError(where, reason) from None
    if (cls, k.attr) in _LIST_OF:
        if not isinstance(raw, list):
            raise ConfigError(where, f"expected a list, got {_describe(raw)}")
        item = _LIST_OF[(cls, k.attr)]
        return tuple(_build(item, v, f"{where}[{i}]") for i, v in enumerate(raw))
    if (cls, k.attr) in _MAP_OF:
        if not isinstance(raw, dict):
            raise ConfigError(where, f"expected an object, got {_describe(raw)}")
        item = _MAP_OF[(cls, k.attr)]
        return tuple((name, _build(item, v, f"{where}.{name}")) for name, v in raw.items())
    nested = k.factory
    assert isinstance(nested, type) and issubclass(nested, Section), f"schema key {where} lacks a check"
    return _build(nested, raw, where)


def _check_agents(config: Config, python_providers: Collection[str] = ()) -> None:
    seen: set[str] = set()
    defaults = 0
    for i, agent in enumerate(config.agents.list):
        if agent.id in seen:
            raise ConfigError(f"agents.list[{i}].id", f"duplicate agent id {agent.id!r}")
        seen.add(agent.id)
        defaults += agent.default
    if defaults > 1:
        raise ConfigError("agents.list", "more than one agent is marked default: true")
    for i, agent in enumerate(config.agents.list):
        _check_model_ref(config, agent.model, f"agents.list[{i}].model", python_providers)
    _check_model_ref(config, config.agents.defaults.model, "agents.defaults.model", python_providers)
    for name, provider in config.models.providers:
        where = f"models.providers.{name}"
        if name in python_providers:
            raise ConfigError(where, "is also given as a Python provider; rename one of them")
        if provider.api == "openai-completions" and not provider.base_url:
            raise ConfigError(f"{where}.baseUrl", "required for api \"openai-completions\"")
        if provider.api == "command" and not provider.command:
            raise ConfigError(f"{where}.command", "required for api \"command\" (an argv list)")


def _check_model_ref(config: Config, ref: str | None, where: str, python_providers: Collection[str]) -> None:
    if ref is None:
        return
    provider = ref.partition("/")[0]
    if provider != "echo" and provider not in python_providers and config.provider(provider) is None:
        raise ConfigError(where, f"unknown provider {provider!r} in {ref!r} "
                                 f"(configure models.providers.{provider})")


def bind_host(bind: str) -> str:
    """The address to listen on for ``--bind`` / ``gateway.bind``: loopback, lan, or as given."""
    return BIND_ALIASES.get(bind, bind)


def check_exposure(auth: AuthConfig, host: str, env: Mapping[str, str]) -> None:
    """Who may reach a gateway listening on ``host``: refuse what is unsafe (``ConfigError``).

    Beyond loopback, mode "none" is refused and a token or password must be
    set (config or environment); in password mode one must be set anywhere.
    Checked when a config is read (``config check`` included) and again at
    start-up for the address actually bound (``--bind`` may override).
    """
    loopback = host in LOOPBACK_HOSTS
    if auth.mode == "none":
        if not loopback:
            raise ConfigError("gateway.auth.mode", f'"none" is refused when binding beyond loopback '
                              f"({host}); set gateway.auth.mode to \"token\" and a token in "
                              f"gateway.auth.token or {TOKEN_ENV}")
        return
    env_name = TOKEN_ENV if auth.mode == "token" else PASSWORD_ENV
    configured = auth.token if auth.mode == "token" else auth.password
    if env.get(env_name) or configured:
        return
    where = f"gateway.auth.{auth.mode}"
    if auth.mode == "password":         # never generated, wherever the gateway listens
        raise ConfigError(where, f"no password is set; password mode needs one: set "
                                 f"{where} in the config or {env_name} in the environment")
    if not loopback:
        raise ConfigError(where, f"no token is set; binding to {host} needs one: set "
                                 f"{where} in the config or {env_name} in the environment")


# -- environment substitution -------------------------------------------------------

# "$${" (a literal "${"), a "${NAME}" reference, or a "${" that starts neither:
# that one is an error, never kept as it stands (a token of "${MY-TOKEN}").
_VAR: Final = r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{"


def _substitute(data: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(data, str):
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"        # "$${" is a literal "${"
            name = m.group(1)
            if name is None:        # the text is not repeated: it may be a secret
                raise ConfigError(path, "\"${\" starts no ${NAME} reference (NAME: letters, digits "
                                        "and _, not a digit first, then \"}\"); write \"$${\" for a "
                                        "literal \"${\"")
            if name not in env:
                raise ConfigError(path, f"environment variable {name} is not set")
            return env[name]
        return re.sub(_VAR, repl, data) if "$" in data else data
    if isinstance(data, dict):
        return {k: _substitute(v, env, f"{path}.{k}" if path else k) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute(v, env, f"{path}[{i}]") for i, v in enumerate(data)]
    return data


# -- loading ---------------------------------------------------------------------------

def _check_depth(data: Any) -> None:
    """Raise ``ConfigError`` naming the first container nested deeper than ``MAX_CONFIG_DEPTH``.

    Iterative: the document may come from anywhere (``from_data`` is public).
    """
    pending: list[tuple[Any, str, int]] = [(data, "", 0)]
    while pending:
        value, path, depth = pending.pop()
        if type(value) is dict:
            items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif type(value) is list:
            items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
        else:
            continue
        if depth >= MAX_CONFIG_DEPTH:
            raise ConfigError(path, f"nested deeper than {MAX_CONFIG_DEPTH} levels")
        pending.extend((v, p, depth + 1) for p, v in items)


def from_data(data: Any, env: Mapping[str, str] | None = None, *,
              python_providers: Collection[str] = ()) -> Config:
    """Check a parsed document and build the ``Config``; raises ``ConfigError``
    (nesting deeper than ``MAX_CONFIG_DEPTH`` included).

    ``python_providers``: names of providers an embedding program supplies in
    code; model references may name them, and ``models.providers`` may not.
    """
    _check_depth(data)
    env = os.environ if env is None else env
    data = _substitute(data, env, "")
    config = _build(Config, data, "")
    _check_agents(config, python_providers)
    check_exposure(config.gateway.auth, bind_host(config.gateway.bind), env)
    return config


def config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> tuple[Path | None, bool]:
    """Where the config file is: ``--config``, else ``EQUABOT_CONFIG_PATH``, else the default.

    Returns (path, required): an explicitly named file must exist; the default
    may be absent, and then the embedded defaults apply (path None).
    """
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser(), True
    if env.get("EQUABOT_CONFIG_PATH"):
        return Path(env["EQUABOT_CONFIG_PATH"]).expanduser(), True
    default = Path(DEFAULT_CONFIG_PATH).expanduser()
    return (default, False) if default.exists() else (None, False)


def load(explicit: str | None = None, env: Mapping[str, str] | None = None) -> tuple[Config, Path | None]:
    """Find, read and check the configuration; returns it and the file used (or None)."""
    path, required = config_path(explicit, env)
    if path is None:
        return from_data({}, env), None
    try:
        text = read_text(path)
    except FileNotFoundError:
        if required:
            raise ConfigError("", f"config file {path} does not exist") from None
        return from_data({}, env), None
    return from_data(parse_text(text, path), env), path


def read_text(path: Path) -> str:
    """The text of config file ``path``, read as UTF-8 up to ``MAX_CONFIG_BYTES``.

    Raises ``FileNotFoundError`` if there is no such file, and
    ``ConfigError`` if it cannot be read, is not UTF-8 or is larger.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"config file {path} is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc}") from None


def parse_text(text: str, path: Path) -> Any:
    """The JSON5 document of config file ``path`` (its ``text``), or ``ConfigError``."""
    from . import json5         # only a start with a config file needs the reader
    try:
        return json5.loads(text, max_depth=MAX_CONFIG_DEPTH, unique_names=True)
    except JSON5Error as exc:
        # Compiler style, "file:line:column: what was expected", which editors can jump to.
        said = getattr(exc, "expected", None) or exc.reason
        raise ConfigError("", f"{path}:{exc.line}:{exc.column}: {said}") from None


def state_dir(explicit: str | None, env: Mapping[str, str] | None = None) -> Path:
    """``--state-dir``, else ``EQUABOT_STATE_DIR``, else ``~/.equabot``."""
    env = os.environ if env is None else env
    return Path(explicit or env.get("EQUABOT_STATE_DIR") or DEFAULT_STATE_DIR).expanduser()


# -- display ---------------------------------------------------------------------------

def _masked_query(url: str) -> str:
    """``url`` with every query parameter's value masked: an API key often travels there."""
    base, _, query = url.partition("?")
    query, hash_, fragment = query.partition("#")
    masked = "&".join(f"{name}={MASK}" if equals else name
                      for name, equals, _ in (field.partition("=") for field in query.split("&")))
    return f"{base}?{masked}{hash_}{fragment}"


def to_data(config: Any, *, mask: bool = True) -> Any:
    """The config as plain JSON data under its config keys; secrets masked when ``mask``."""
    if isinstance(config, Section):
        out: dict[str, Any] = {}
        for k in config.KEYS:
            name = k.name
            value = getattr(config, k.attr)
            if mask and name in SECRET_KEYS and value:
                out[name] = MASK
            elif mask and name == "headers" and value:
                out[name] = {header: MASK for header, _ in value}
            elif mask and name == "baseUrl" and value and "?" in value:
                out[name] = _masked_query(value)
            elif (type(config), k.attr) in _MAP_OF:
                out[name] = {entry: to_data(v, mask=mask) for entry, v in value}
            elif name == "headers":
                out[name] = dict(value)
            else:
                out[name] = to_data(value, mask=mask)
        return out
    if isinstance(config, tuple):
        return [to_data(v, mask=mask) for v in config]
    return config
