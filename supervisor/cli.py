"""The ``lbactors`` command (also ``python -m supervisor``): ``serve`` and ``check-config``."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from lbactors.amqp.broker_url import mask_url
from lbactors.config import (
    CONFIG_ENV_VAR,
    Config,
    ConfigError,
    config_keys,
    env_var_name,
    load_config,
)

__all__ = ["main"]

PROG = "lbactors"

EXIT_CODES = """\
exit codes:
  0  success (serve: stopped on SIGTERM / SIGINT after draining)
  1  serve: the daemon failed (restart budget exceeded, broker topology refused)
  2  usage or configuration error (one line on stderr naming the key and its source)
"""

OVERRIDES = f"""\
configuration (lowest precedence first):
  1. built-in defaults (below)
  2. the TOML file: --config FILE, else ${CONFIG_ENV_VAR}, else none
  3. environment variables LBACTORS_<SECTION>_<KEY>, e.g. LBACTORS_AMQP_URL,
     LBACTORS_DAEMON_GRACE_PERIOD; backend options LBACTORS_BACKEND_<NAME>_<OPTION>,
     e.g. LBACTORS_BACKEND_NOOP_LATENCY=0.02 (backend.noop.latency). Values are converted
     to the key's type (booleans: true/false/1/0). An LBACTORS_ variable that names no key
     is an error.
  4. command-line flags (--workers, --amqp-url, ..., --set KEY=VALUE)
  An unknown key or a wrong type in any of them is an error naming the key and its source.
"""


def _version() -> str:
    try:
        return metadata.version("lbactors")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "unknown"


def _keys_help() -> str:
    lines = ["configuration keys (file key = environment variable, default):"]
    for dotted, default in config_keys():
        if isinstance(default, dict):
            lines.append(f"  [{dotted}] table: options of backend {dotted.rsplit('.', 1)[1]!r}")
            continue
        shown = _toml_value(default)
        if dotted == "amqp.host":
            shown = "<this host's name>"
        elif dotted == "daemon.workers":
            shown = "0 (= CPUs - 1, at least 1)"
        lines.append(f"  {dotted:<30} {env_var_name(dotted):<40} {shown}")
    return "\n".join(lines)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


def _set_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (e.g. daemon.grace_period=10), not {text!r}"
        )
    return key.strip(), value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_wrap(
            "lbactors: the backend half of an Octavia provider. Consumes the driver's "
            "oslo.messaging casts from RabbitMQ, runs them on a backend through one actor per "
            "load balancer in worker processes, and casts the status updates back."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the daemon (until SIGTERM / SIGINT)",
        description=_wrap(
            "Run the daemon: connect to the broker, start the worker processes, consume "
            "operations. Under systemd (Type=notify) it sends READY=1 once the broker is "
            "connected and every worker is up, WATCHDOG=1 and STATUS= while running, "
            "STOPPING=1 on shutdown. SIGTERM / SIGINT: stop consuming, finish in-flight "
            "operations within daemon.grace_period, exit 0. Logs go to stdout."
        ),
        epilog=f"{OVERRIDES}\n{_keys_help()}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (default: ${CONFIG_ENV_VAR} if set, else built-in defaults)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (daemon.workers; 0 = one per CPU but one, at least one; default 0)",
    )
    serve.add_argument(
        "--amqp-url",
        metavar="URL",
        help="broker URL, amqp:// or amqps://, several hosts separated by commas as in oslo's "
        "transport_url: amqp://u:p@h1:5672,u:p@h2:5672/vhost (amqp.url; default "
        "amqp://guest:guest@127.0.0.1:5672/)",
    )
    serve.add_argument(
        "--backend",
        metavar="NAME",
        help="backend that runs the operations (backend.name; default noop)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="lowest level logged (log.level; default info)",
    )
    serve.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        help="json lines, console lines, or auto: console on a terminal, json otherwise "
        "(log.format; default auto)",
    )
    serve.add_argument(
        "--set",
        dest="settings",
        type=_set_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any configuration key (dotted, e.g. --set daemon.grace_period=10 "
        "--set backend.noop.latency=0.01); repeatable; wins over the file and the environment",
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file without starting anything",
        description=_wrap(
            "Validate FILE as `lbactors serve --config FILE` would (environment overrides "
            "included) and print the effective configuration (the broker password masked). "
            "Nothing is started and the broker is not contacted."
        ),
        epilog=f"{OVERRIDES}\n{_keys_help()}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE", help="the TOML configuration file")
    check.add_argument(
        "--json",
        action="store_true",
        help="print the effective configuration as JSON instead of TOML",
    )
    check.set_defaults(handler=_check_config)

    status = commands.add_parser(
        "status",
        help="show what a running daemon is doing",
        description=_wrap(
            "Ask the running daemon, over status.sock in its runtime directory "
            "(daemon.runtime_dir), for a one-screen summary: its workers (pid, uptime, "
            "restarts, operations in flight, actors, resident load balancers), the broker "
            "connection, the last statistics round, and the operations in flight longest. "
            "Run it as the daemon's user (the socket is mode 0600) with the daemon's "
            "configuration (for daemon.runtime_dir)."
        ),
        epilog="exit codes:\n  0  the daemon answered\n  1  no daemon answers\n"
        "  2  usage or configuration error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument(
        "--config",
        metavar="FILE",
        help=f"the daemon's TOML configuration (default: ${CONFIG_ENV_VAR} if set)",
    )
    status.add_argument(
        "--socket", metavar="PATH", help="the status socket (default: from the configuration)"
    )
    status.add_argument("--json", action="store_true", help="print the answer as JSON")
    status.set_defaults(handler=_status)
    return parser


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for key, flag in (
        ("daemon.workers", args.workers),
        ("amqp.url", args.amqp_url),
        ("backend.name", args.backend),
        ("log.level", args.log_level),
        ("log.format", args.log_format),
    ):
        if flag is not None:
            overrides[key] = flag
    overrides.update(args.settings)
    config = load_config(args.config, overrides=overrides)
    from supervisor.daemon import run  # lazily: --help and check-config never need it

    return run(config)


def _status(args: argparse.Namespace) -> int:
    from supervisor.status import (
        SOCKET_NAME,
        NoDaemon,
        read_status,
        render_status,
        runtime_dir_candidates,
    )

    if args.socket:
        path = Path(args.socket)
    else:
        candidates = [d / SOCKET_NAME for d in runtime_dir_candidates(load_config(args.config))]
        found = [candidate for candidate in candidates if candidate.exists()]
        if not found:
            tried = ", ".join(str(candidate) for candidate in candidates)
            print(f"{PROG}: no lbactors daemon is running: no status socket ({tried})",
                  file=sys.stderr)
            return 1
        path = found[0]
    try:
        answer = read_status(path)
    except NoDaemon as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"{PROG}: no answer from the daemon on {path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else render_status(answer))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    shown = _masked(config)
    if args.json:
        text = json.dumps(msgspec.to_builtins(shown), indent=2)
    else:
        text = render_toml(shown)
    print(f"{args.file}: ok")
    print(text)
    return 0


def _masked(config: Config) -> Config:
    """``config`` with every host's password in ``amqp.url`` replaced by ``***``."""
    amqp = msgspec.structs.replace(config.amqp, url=mask_url(config.amqp.url))
    return msgspec.structs.replace(config, amqp=amqp)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # a TOML basic string: JSON's escapes are TOML's, minus astral \ud83d-style pairs
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def render_toml(config: Config) -> str:
    """The configuration as TOML (every key, sub-tables for the backend options)."""
    lines: list[str] = []
    for section, table in msgspec.to_builtins(config).items():
        tables: list[tuple[str, dict[str, Any]]] = []
        lines.append(f"[{section}]")
        for key, value in table.items():
            if isinstance(value, dict):
                tables.append((f"{section}.{key}", value))
            elif value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        for name, options in tables:
            if not options:
                continue
            lines.append("")
            lines.append(f"[{name}]")
            lines.extend(
                f"{key} = {_toml_value(value)}"
                for key, value in options.items()
                if value is not None
            )
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    return code
