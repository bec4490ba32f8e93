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
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__, config as config_mod, statelock
from .errors import ApiError, ConfigError, GatewayError, RunError

SUBCOMMANDS = ("gateway", "agent", "config", "sessions", "conformance")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (JSON5); default: "
                        "$EQUABOT_CONFIG_PATH, else ~/.equabot/equabot.json, else built-in defaults")
    parser.add_argument("--state-dir", metavar="DIR", help="sessions and token live here; default: "
                        "$EQUABOT_STATE_DIR, else ~/.equabot")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"), help="default: info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m equabot_gw",
        description="Equabot Gateway: HTTP (OpenAI-compatible) and WebSocket on one port.",
        epilog="With no subcommand, 'gateway' runs.")
    parser.add_argument("--version", action="version", version=f"equabot_gw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")

    gw = sub.add_parser("gateway", help="run the gateway in the foreground (default)")
    _gateway_flags(gw)

    agent = sub.add_parser("agent", help="send one message to an agent and print the reply")
    _common(agent)
    agent.add_argument("--message", "-m", required=True, help="the user message")
    agent.add_argument("--agent", metavar="ID", help="agent id (default: the default agent)")
    agent.add_argument("--session-key", metavar="KEY", help="session to continue (default: stateless)")
    agent.add_argument("--json", action="store_true", help="print one JSON result object")
    agent.add_argument("--local", action="store_true",
                       help="run in this process instead of on a running gateway")
    agent.add_argument("--url", help="gateway URL (default: from config, http://127.0.0.1:<port>)")
    agent.add_argument("--token", help="gateway token or password (default: config or environment)")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="{check}", required=True)
    check = cfg_sub.add_parser("check", help="validate and print the effective config (secrets masked)")
    _common(check)

    ses = sub.add_parser("sessions", help="list, show or reset stored sessions")
    ses_sub = ses.add_subparsers(dest="sessions_command", metavar="{list,show,reset}", required=True)
    for name, help_text in (("list", "list keyed sessions"), ("show", "print a session's transcript"),
                            ("reset", "archive a session's transcript and start over")):
        p = ses_sub.add_parser(name, help=help_text)
        _common(p)
        p.add_argument("--agent", metavar="ID", help="agent id (default: the default agent)")
        if name != "list":
            p.add_argument("key", help="session key")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--url", help="ask the gateway at this URL (default: the one running on "
                       "the state dir, else read the files)")
        p.add_argument("--token", help="gateway token or password (default: config or environment)")

    from . import conformance
    conformance.add_arguments(sub.add_parser(
        "conformance", help="check a server against the Gateway's OpenAI HTTP and WebSocket spec"))
    return parser


def _gateway_flags(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--port", type=int, metavar="N", help="port (0 picks a free one; default 18789)")
    parser.add_argument("--bind", metavar="ADDR", help="loopback (default), lan (all IPv4) or a host")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "gateway")
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"))
    try:
        code = _dispatch(args)
    except statelock.StateDirInUse as exc:
        print(f"equabot: {exc}", file=sys.stderr)
        code = 2
    except ConfigError as exc:
        print(f"equabot: config error: {exc}", file=sys.stderr)
        code = 2
    except ApiError as exc:
        print(f"equabot: {exc.message}", file=sys.stderr)
        code = 1
    except (RunError, GatewayError, OSError) as exc:
        print(f"equabot: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "gateway":
        return asyncio.run(_run_gateway(args))
    if args.command == "agent":
        from .agent_cli import run_agent_command
        return asyncio.run(run_agent_command(args))
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
    config, path = config_mod.load(args.config)
    source = str(path) if path else "built-in defaults (no config file)"
    print(f"# config OK: {source}")
    print(json.dumps(config_mod.to_data(config, mask=True), indent=2))
    return 0


def load_config(args: argparse.Namespace, *, follow_state_dir: bool = False
                ) -> tuple[config_mod.Config, Path, Path | None]:
    """The config, the state dir (created with mode 0700) and the config file used (None: defaults).

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
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("", f"cannot create state dir {state_dir}: {exc.strerror}") from None
    return config, state_dir, path


async def _run_gateway(args: argparse.Namespace) -> int:
    from .gateway.app import Gateway
    from .net.server import AccessLog
    config, state_dir, config_path = load_config(args)
    port = args.port if args.port is not None else config.gateway.port
    gateway = Gateway(config, state_dir, port=port, config_path=config_path,
                      host=None if args.bind is None else _bind(args.bind),
                      access_log=AccessLog() if args.log_level in ("debug", "info") else None)
    await gateway.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, gateway)
    _announce(gateway)
    await gateway.wait_stop_requested()
    await gateway.stop()
    return 0


def _on_signal(gateway: Any) -> None:
    """First SIGINT/SIGTERM: shut down with the grace period, saying so; the next one: now."""
    if gateway.stopping:
        print("shutting down now: aborting what is in flight", file=sys.stderr, flush=True)
        gateway.hurry()
        return
    waiting = gateway.requests_in_flight
    grace = gateway.config.gateway.shutdown_grace
    if waiting:
        print(f"shutting down: waiting up to {grace:g} s for {waiting} "
              f"request{'s' if waiting != 1 else ''} (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)
    else:
        print("shutting down", file=sys.stderr, flush=True)
    gateway.request_stop()


def _bind(value: str) -> str:
    from .gateway.app import bind_host
    return bind_host(value)


def _announce(gateway: Any) -> None:
    print(f"equabot gateway listening on {gateway.url} (WebSocket on the same port)", flush=True)
    log = logging.getLogger("equabot_gw")
    secret = gateway.secret
    if secret.mode == "none":
        log.warning("gateway.auth.mode is \"none\": anyone who can reach %s can use it", gateway.url)
    else:
        log.info("auth: %s from %s", secret.mode, secret.source)
    if not gateway.config.gateway.http.endpoints.chat_completions.enabled:
        log.info("OpenAI endpoint off (gateway.http.endpoints.chatCompletions.enabled: false)")


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
    try:
        return (state_dir / "gateway-token").read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
