"""The command line: ``python -m equabot_gw [gateway|agent|config|sessions|conformance]``.

Owns argument parsing, logging set-up, signal handling and exit codes; the
only module that calls ``sys.exit``. Problems the user can fix print one line
to stderr and exit 2 (bad config, bad arguments) or 1 (the run failed).
``gateway`` is the default subcommand, so ``python -m equabot_gw --port 0``
starts a gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Coroutine, Final, Sequence

from . import __version__, cli_flags as flags, config as config_mod, statelock
from .errors import ApiError, ConfigError, GatewayError, RunError

SUBCOMMANDS = ("gateway", "agent", "config", "sessions", "conformance")


class UsageError(GatewayError):
    """A flag or place the user named that cannot be used (exit 2, like a bad flag)."""


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` without importing ``shutil`` (and the
    compression modules it pulls in) on every start: $COLUMNS, the terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, its width found as argparse finds it (columns − 2)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", _terminal_columns() - 2)
        super().__init__(prog, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line, like every other CLI error (exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        # The main parser's subcommands by their words ("gateway", "sessions show").
        self.commands: dict[str, argparse.ArgumentParser] = {}
        self._argv: list[str] | None = None        # what parse_known_args was last given

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._argv = None if args is None else list(args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> Any:       # argparse's hook; never returns
        message = message.replace("argument {" + ",".join(SUBCOMMANDS) + "}: ", "")
        if message.startswith("the following arguments are required"):
            # "agent --mesage hi": the typo is the news, not the flag it left out.
            stray = self._unrecognized()
            if stray:
                message = f"unrecognized arguments: {' '.join(stray)}; {message}"
        self.exit(2, f"equabot: {message} (see '{self.prog} --help')\n")

    def _unrecognized(self) -> list[str]:
        """The words of the last parse that no flag takes, read again with no flag required."""
        argv, self._argv = self._argv, None
        if not argv:
            return []
        required = [action for action in self._actions if action.required]
        try:
            for action in required:
                action.required = False
            return list(super().parse_known_args(argv)[1])
        except SystemExit:          # another error on the way: the first one is said
            return []
        finally:
            for action in required:
                action.required = True


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", type=flags.path, help="config file (JSON5); default: "
                        "$EQUABOT_CONFIG_PATH, else ~/.equabot/equabot.json, else built-in defaults")
    parser.add_argument("--state-dir", metavar="DIR", type=flags.path, help="sessions and token live here; default: "
                        "$EQUABOT_STATE_DIR, else ~/.equabot")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"), help="default: info")


def _program_name() -> str:
    """How the user ran us: ``equabot-gw`` (the installed command) or ``python -m equabot_gw``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and not name.endswith(".py") and name != "-c" else "python -m equabot_gw"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. Given the ``argv`` it will parse, only the subcommands it
    names get their flags (every one is listed, for the help): argparse builds a parser
    slowly, and a start needs only the gateway's. So the conformance kit (a client of its
    own, not needed to serve) is imported only when ``argv`` names it."""
    def named(command: str) -> bool:
        return argv is None or command in argv

    parser = _Parser(
        prog=_program_name(),
        description="Equabot Gateway: HTTP (OpenAI-compatible) and WebSocket on one port.",
        epilog="With no subcommand, 'gateway' runs.")
    parser.add_argument("--version", action="version", version=f"equabot_gw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")

    gw = sub.add_parser("gateway", help="run the gateway in the foreground (default)")
    if named("gateway"):
        _gateway_flags(gw)

    agent = sub.add_parser("agent", help="send one message to an agent and print the reply")
    if named("agent"):
        _agent_flags(agent)

    cfg = sub.add_parser("config", help="configuration tools")
    if named("config"):
        cfg_sub = cfg.add_subparsers(dest="config_command", metavar="{check}", required=True)
        check = cfg_sub.add_parser("check", help="validate and print the effective config (secrets masked)")
        _common(check)
        parser.commands["config check"] = check

    ses = sub.add_parser("sessions", help="list, show or reset stored sessions")
    if named("sessions"):
        parser.commands.update((f"sessions {name}", leaf) for name, leaf in _sessions_flags(ses).items())

    checker = sub.add_parser(
        "conformance", help="check a server against the Gateway's OpenAI HTTP and WebSocket spec")
    if named("conformance"):
        from . import conformance
        conformance.add_arguments(checker)
    parser.commands.update(gateway=gw, agent=agent, config=cfg, sessions=ses, conformance=checker)
    return parser


def _agent_flags(agent: argparse.ArgumentParser) -> None:
    _common(agent)
    agent.add_argument("--message", "-m", required=True, type=flags.message, help="the user message")
    agent.add_argument("--agent", metavar="ID", type=flags.agent_id,
                       help="agent id (default: the default agent)")
    agent.add_argument("--session-key", metavar="KEY", type=flags.session_key,
                       help="session to continue (default: the agent's main session, agent:<id>:main)")
    agent.add_argument("--timeout", metavar="SECONDS", type=flags.run_timeout,
                       help="the run's time limit (default and 0: the agent's timeoutSeconds)")
    agent.add_argument("--json", action="store_true", help="print one JSON result object")
    agent.add_argument("--local", action="store_true",
                       help="run in this process instead of on a running gateway")
    agent.add_argument("--url", type=flags.gateway_url, help="gateway URL (default: the gateway running on "
                       "the state dir, as its lock file records)")
    agent.add_argument("--token", help="the gateway's secret, sent as gateway.auth.mode names it (token or password; default: config or environment)")


def _sessions_flags(ses: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The flags of ``sessions list|show|reset``; those three parsers by name."""
    ses_sub = ses.add_subparsers(dest="sessions_command", metavar="{list,show,reset}", required=True)
    leaves = {}
    for name, help_text in (("list", "list keyed sessions"), ("show", "print a session's transcript"),
                            ("reset", "archive a session's transcript and start over")):
        p = leaves[name] = ses_sub.add_parser(name, help=help_text)
        _common(p)
        p.add_argument("--agent", metavar="ID", type=flags.agent_id,
                       help="agent id (default: every agent for list, the default agent otherwise)")
        if name != "list":
            p.add_argument("key", type=flags.session_name,
                           help="session key, or the user string an OpenAI client sent")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--url", type=flags.gateway_url, help="ask the gateway at this URL (default: the one running on "
                       "the state dir, else read the files)")
        p.add_argument("--token", help="the gateway's secret, sent as gateway.auth.mode names it (token or password; default: config or environment)")
    return leaves


def _gateway_flags(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--port", type=flags.port, metavar="N", help="port (0 picks a free one; default 18789)")
    parser.add_argument("--bind", metavar="ADDR", type=flags.bind_value,
                        help="loopback (default), lan (all IPv4) or a host address")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="stderr log lines, the access log included: text (default) or "
                             "json (one object per line, for log shippers)")


# CPython collects its youngest generation every 700 allocations of container
# objects; a completion allocates hundreds, so that is a collection every
# request or two. Ten times the default leaves most of a request's objects to
# die by refcount before any collection sees them (S1: -3.4% instructions per
# request, measured back to back). The process is ours only when run from
# the command line: an embedding program keeps its own setting.
GC_YOUNG_THRESHOLD: Final = 7000
# A secret shorter than this, on an address others can reach, is warned about at
# start: a guessable one is what the failure limiter (10 tries a minute) cannot save.
MIN_SECRET_CHARS: Final = 16


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its status."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    argv = list(sys.argv[1:] if argv is None else argv)
    # No subcommand means "gateway": flags alone go to it. A first word that
    # is not a subcommand stays, so argparse names the typo and the choices.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "gateway")
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:         # refused by the subcommand, whose help lists its flags
        words = f"{args.command} {getattr(args, f'{args.command}_command', None)}"
        leaf = parser.commands.get(words) or parser.commands.get(args.command, parser)
        leaf.error(f"unrecognized arguments: {' '.join(unknown)}")
    _setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        code = _dispatch(args)
    except (UsageError, statelock.StateDirInUse, statelock.LockFileError) as exc:
        say_error(str(exc))
        code = 2
    except ConfigError as exc:
        from .auth import TokenFileError      # a file of the state dir: not the config's fault
        say_error(f"{'' if isinstance(exc, TokenFileError) else 'config error: '}{exc}")
        code = 2
    except ApiError as exc:
        say_error(exc.message)
        code = 1
    except GatewayError as exc:
        from .gateway.app import BindError
        say_error(str(exc))
        code = 2 if isinstance(exc, BindError) else 1
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            code = _stdout_gone()
        else:
            say_error(str(exc))
            code = 1
    except KeyboardInterrupt:
        code = 130
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _stdout_gone()
    sys.exit(code)


def _stdout_gone() -> int:
    """The reader of stdout left (``config check | head``): no error, no traceback at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())       # Python's flush at exit would fail again
    os.close(devnull)
    return 0


def _setup_logging(level: str, fmt: str = "text") -> None:
    """The process's logging: stderr, at ``level``; text lines or JSON objects (``fmt``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from .gateway.observe import JSONFormatter
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(_TextFormatter())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def printable(line: str) -> str:
    """``line`` with its control and other unprintable characters escaped (``\\n``, ``\\x1b``,
    ``\\u202e``): what a message quotes (a key of a config file, an upstream's error, a
    gateway's answer) can neither break the line nor drive the operator's terminal."""
    if line.isprintable():          # nearly always: one C-speed scan
        return line
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in line)


def say_error(message: str) -> None:
    """``equabot: <message>`` on stderr, one line whatever ``message`` quotes."""
    print(f"equabot: {printable(message)}", file=sys.stderr)


class _TextFormatter(logging.Formatter):
    """``2025-01-31 12:00:00,123 INFO equabot_gw.runs: …``, the date formatted once a second
    (there is a line per run: strftime per line was a sizeable share of its cost).

    A record is one line: control and other unprintable characters of the
    message (which may quote what a client sent: a method name, a property)
    are escaped (``\\n``, ``\\x1b``), so no client can forge a line or drive
    the operator's terminal. A traceback below a record stays as it is.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:      # handlers format under their lock: no race here
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("gateway", "agent"):
        _early_signals.install()
    if args.command == "gateway":
        return asyncio.run(_run_gateway(args))
    if args.command == "agent":
        from .agent_cli import run_agent_command
        return asyncio.run(until_signalled(run_agent_command(args)))
    if args.command == "config":
        return _config_check(args)
    if args.command == "sessions":
        from .agent_cli import run_sessions_command
        return asyncio.run(run_sessions_command(args))
    if args.command == "conformance":
        from .conformance import run_conformance
        return run_conformance(args)
    raise AssertionError(args.command)


def _config_check(args: argparse.Namespace) -> int:
    """Validate with the same checks as start-up; print the effective config, secrets masked."""
    config, path = config_mod.load(args.config)
    _check_bindable(config_mod.bind_host(config.gateway.bind), config.gateway.port)
    source = str(path) if path else "built-in defaults (no config file)"
    print(f"# config OK: {source}")
    auth = config.gateway.auth
    data = config_mod.to_data(config, mask=True)
    env_name = {"token": config_mod.TOKEN_ENV, "password": config_mod.PASSWORD_ENV}.get(auth.mode)
    if env_name and os.environ.get(env_name):
        # The environment wins over the file: show that the effective secret is set, and where.
        data["gateway"]["auth"][auth.mode] = config_mod.MASK
        print(f'# gateway.auth.{auth.mode}: "{config_mod.MASK}" (from {env_name})')
    print(json.dumps(data, indent=2))
    return 0


def _check_bindable(host: str, port: int) -> None:
    """``BindError``, as start-up would raise it, unless this machine can listen on ``host``."""
    from .net.server import check_bindable
    try:
        check_bindable(host)
    except (OSError, UnicodeError) as exc:
        from .gateway.app import BindError
        raise BindError(host, port, exc) from None


def load_config(args: argparse.Namespace, *, follow_state_dir: bool = False, create: bool = True
                ) -> tuple[config_mod.Config, Path, Path | None]:
    """The config, the state dir (created with mode 0700 unless ``create`` is False: a
    command that only reads leaves a missing one missing) and the config file used
    (None: defaults).

    With ``follow_state_dir`` (the commands that talk to a state dir's
    gateway or files) and neither ``--config`` nor ``EQUABOT_CONFIG_PATH``,
    the config file the state dir's gateway last ran with is read, so
    ``--config`` need not be repeated; otherwise the usual lookup applies.
    """
    state_dir = config_mod.state_dir(args.state_dir)
    explicit = args.config
    if follow_state_dir and not explicit and not os.environ.get("EQUABOT_CONFIG_PATH"):
        last = statelock.last_record(state_dir)
        if last is not None and last.config_path and Path(last.config_path).is_file():
            explicit = last.config_path
    config, path = config_mod.load(explicit)
    if state_dir.exists() and not state_dir.is_dir():
        # Checked first: mkdir would call it "File exists", which reads as no problem at all.
        raise UsageError(f"state dir {state_dir} is not a directory")
    if create:
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create state dir {state_dir}: {exc.strerror}") from None
    return config, state_dir, path


async def _run_gateway(args: argparse.Namespace) -> int:
    from .gateway.app import Gateway
    from .net.server import AccessLog, AcceptErrorLog
    as_json = args.log_format == "json"
    stop = _StopSignals(as_json)
    loop = asyncio.get_running_loop()
    # Handled from the first moment: a signal while the config is read or the
    # store is opened (a big session index takes seconds) ends the start cleanly.
    for sig in _early_signals.handled:
        loop.add_signal_handler(sig, stop.signalled)
    stop.take_early()
    loop.set_exception_handler(AcceptErrorLog(loop.get_exception_handler()))
    _raise_open_files_limit()
    config, state_dir, config_path = load_config(args)
    port = args.port if args.port is not None else config.gateway.port
    gateway = Gateway(config, state_dir, port=port, config_path=config_path,
                      host=None if args.bind is None else _bind(args.bind),
                      access_log=AccessLog(json_lines=as_json)
                      if args.log_level in ("debug", "info") else None)
    if not await stop.start(gateway):
        return 0
    _announce(gateway)
    await gateway.wait_stop_requested()
    await gateway.stop()
    return 0


# The signals that stop the gateway gracefully, and abort an ``agent`` run:
# Ctrl-C, a service manager's stop, and a closed terminal or dropped ssh session.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _EarlySignals:
    """The stop signals this process handles, and those that arrived before the event
    loop ran (while modules loaded and arguments were parsed), kept for the loop's
    handlers, which replace these. A signal ignored when we started stays ignored:
    ``nohup`` ignores SIGHUP so that a closed terminal does not stop the program."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._handled: tuple[int, ...] | None = None

    @property
    def handled(self) -> tuple[int, ...]:
        if self._handled is None:
            self._handled = tuple(sig for sig in STOP_SIGNALS
                                  if sig != signal.SIGHUP or signal.getsignal(sig) != signal.SIG_IGN)
        return self._handled

    def install(self) -> None:
        for sig in self.handled:
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.received.append(signum)


_early_signals = _EarlySignals()


class _StopSignals:
    """What a stop signal does to the gateway: before it has started, end the start
    (at its next step: whatever the start opened is closed again); once it runs,
    shut it down with the grace period, and a second one hurries that."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.requested = False
        self._gateway: Any = None
        self._starting: asyncio.Future[None] | None = None

    def take_early(self) -> None:
        """Act on a stop signal that came before the loop's handlers were installed."""
        if _early_signals.received:
            self.signalled()

    def signalled(self) -> None:
        if self._gateway is not None and self._starting is None:
            _on_signal(self._gateway, self.as_json)
            return
        if self.requested:
            # Once only: a start being ended waits for the store's thread to finish
            # its step, and a second cancellation would leave that thread behind.
            return
        self.requested = True
        _say("shutting down", self.as_json)
        if self._starting is not None:
            self._starting.cancel()

    async def start(self, gateway: Any) -> bool:
        """Start ``gateway``; False when a stop signal ended the start (then it is stopped:
        the state dir's lock released, the session store closed)."""
        self._gateway = gateway
        if self.requested:
            return False
        starting = self._starting = asyncio.ensure_future(gateway.start())
        try:
            await starting
        except asyncio.CancelledError:
            if not self.requested:
                raise
        finally:
            self._starting = None
        if self.requested:          # ended while starting (or just as it finished)
            await gateway.stop()
            return False
        return True


def _on_signal(gateway: Any, as_json: bool = False) -> None:
    """First stop signal: shut down with the grace period, saying so; the next one: now."""
    if gateway.stopping:
        gateway.hurry()
        _say("shutting down now: aborting what is in flight", as_json)
        return
    waiting = gateway.requests_in_flight
    gateway.request_stop()
    grace = gateway.config.gateway.shutdown_grace
    _say(f"shutting down: waiting up to {grace:g} s for {waiting} request{'s' if waiting != 1 else ''} "
         f"(Ctrl-C again to stop now)" if waiting else "shutting down", as_json)


# Where the hard limit on open files is "unlimited" (macOS), the soft limit may not be
# set to that: its kernel's per-process maximum (OPEN_MAX) is what Go's runtime uses then.
OPEN_MAX_FALLBACK: Final = 10240


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit, as Go's runtime does at
    start: every connection is a descriptor, and the usual soft default (1,024) is a
    few hundred clients. Says nothing unless it fails."""
    try:
        import resource
    except ImportError:         # not a Unix: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_MAX_FALLBACK)
    if soft == resource.RLIM_INFINITY or target <= soft:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        logging.getLogger("equabot_gw").warning(
            "could not raise the open files limit from %d to %d (%s): at most about %d "
            "connections at once", soft, target, exc, soft)


async def until_signalled(work: Coroutine[Any, Any, int]) -> int:
    """Run ``work`` (a command's coroutine) to its exit status; a stop signal cancels it.

    ``work`` handles its cancellation as it does Ctrl-C's (an ``agent`` run on
    a gateway is aborted there), and the status is then 128 + the signal's
    number, the shell's convention (130 for Ctrl-C, 143 for SIGTERM, 129 for
    SIGHUP). A second signal cancels that clean-up too.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    received: list[int] = list(_early_signals.received)

    def signalled(sig: int) -> None:
        received.append(sig)
        task.cancel()

    for sig in _early_signals.handled:
        loop.add_signal_handler(sig, signalled, sig)
    if received:
        task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        if not received:
            raise
        return 128 + received[0]
    finally:
        for sig in _early_signals.handled:
            loop.remove_signal_handler(sig)


def _say(line: str, as_json: bool = False) -> None:
    """A status line on stderr (a JSON object with ``--log-format json``); a closed
    stderr must not keep the gateway from stopping."""
    if as_json:
        from .gateway.observe import JSONFormatter
        record = logging.LogRecord("equabot_gw", logging.INFO, __file__, 0, line, None, None)
        line = JSONFormatter().format(record)
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _bind(value: str) -> str:
    from .gateway.app import bind_host
    return bind_host(value)


def _announce(gateway: Any) -> None:
    if gateway.all_interfaces:
        # The wildcard address is where it listens, not an address to reach it at: say both.
        family = "IPv4" if gateway.host == "0.0.0.0" else "IPv6"
        others = _network_address(gateway.host)
        reach = (f"http://{others}:{gateway.server.port} from other machines"
                 if others else "this machine's network address from other machines")
        print(f"equabot gateway listening on {gateway.listen_url} (all {family} interfaces: "
              f"{gateway.url} from this machine, {reach}; WebSocket on the same port)", flush=True)
    else:
        print(f"equabot gateway listening on {gateway.url} (WebSocket on the same port)", flush=True)
    log = logging.getLogger("equabot_gw")
    secret = gateway.secret
    if secret.mode == "none":
        log.warning("gateway.auth.mode is \"none\": anyone who can reach %s can use it", gateway.url)
    else:
        log.info("auth: %s from %s", secret.mode, secret.source)
        if gateway.host not in config_mod.LOOPBACK_HOSTS and len(secret.value or "") < MIN_SECRET_CHARS:
            log.warning("auth: the %s is %d characters long and the gateway listens beyond loopback: "
                        "use a long random one (a generated token has 64 hex digits)",
                        secret.mode, len(secret.value or ""))
    if not gateway.config.gateway.http.endpoints.chat_completions.enabled:
        log.info("OpenAI endpoint off (gateway.http.endpoints.chatCompletions.enabled: false)")


def _network_address(wildcard: str) -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    import socket
    family, probe = ((socket.AF_INET6, "2001:db8::1") if ":" in wildcard
                     else (socket.AF_INET, "192.0.2.1"))     # documentation addresses (RFC 3849, 5737)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))          # UDP connect only picks a route and a source address
            address = sock.getsockname()[0]
    except OSError:
        return None
    if address in ("0.0.0.0", "::") or address.startswith("127."):
        return None
    return f"[{address}]" if ":" in address else address


def env_secret(config: config_mod.Config, state_dir: Path, mode: str | None = None) -> str | None:
    """The one secret a local client presents for auth ``mode`` (default: the config's).

    ``EQUABOT_GATEWAY_TOKEN`` / ``EQUABOT_GATEWAY_PASSWORD``, else the
    config's token / password, else (token mode) ``<state-dir>/gateway-token``;
    None in mode "none".
    """
    auth = config.gateway.auth
    mode = mode or auth.mode
    if mode == "none":
        return None
    name = "EQUABOT_GATEWAY_TOKEN" if mode == "token" else "EQUABOT_GATEWAY_PASSWORD"
    if os.environ.get(name):
        return os.environ[name]
    configured = auth.token if mode == "token" else auth.password
    if configured:
        return configured
    if mode != "token":
        return None
    from .auth import TOKEN_FILE, TokenFileError, read_token_file
    try:
        return read_token_file(state_dir / TOKEN_FILE)
    except TokenFileError:          # the gateway refuses such a file at start: nothing to present
        return None
