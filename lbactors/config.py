"""The daemon's configuration: one TOML file, ``LBACTORS_*`` environment overrides, CLI flags.

Precedence, lowest first: the defaults below, the TOML file, the environment, then the
command line (``overrides``, dotted keys). Every section is a msgspec Struct that forbids
unknown fields, so a misspelt key is an error naming it (``amqp.prefech``) and where it came
from (the file, the environment variable or the command-line flag).

Environment overrides: ``LBACTORS_<SECTION>_<KEY>`` with the key upper-cased, e.g.
``LBACTORS_AMQP_URL``, ``LBACTORS_DAEMON_GRACE_PERIOD``, ``LBACTORS_STATS_INTERVAL``; backend
options are ``LBACTORS_BACKEND_<BACKEND>_<OPTION>`` (``LBACTORS_BACKEND_NOOP_LATENCY`` is
``backend.noop.latency``). The string is converted to the key's type (``true`` / ``false`` /
``1`` / ``0`` for booleans). An ``LBACTORS_`` variable that names no key is an error;
``LBACTORS_CONFIG`` names the file when no path is given.

The :class:`Config` travels to every worker process inside the IPC ``Spawn`` frame, as
msgpack (:func:`encode_config` / :func:`decode_config`): every value arrives as it was, an
infinite float too (valid TOML; JSON would turn it into ``null``).
This module is pure apart from reading the file: no logging, no trio.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from lbactors.amqp.broker_url import BrokerURLError, parse_url
from lbactors.status import ParentsOnFailure

__all__ = [
    "ENV_PREFIX",
    "AmqpSection",
    "BackendSection",
    "Config",
    "ClusterSection",
    "ConfigError",
    "DaemonSection",
    "LogSection",
    "MetricsSection",
    "StatsSection",
    "StatusSection",
    "config_keys",
    "decode_config",
    "encode_config",
    "env_var_name",
    "load_config",
]

ENV_PREFIX = "LBACTORS_"
#: the environment variable that names the configuration file when no path is given
CONFIG_ENV_VAR = "LBACTORS_CONFIG"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
_PosInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
_PosFloat = Annotated[float, msgspec.Meta(gt=0)]
_ReassertDelay = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class AmqpSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[amqp]``: the broker connection and the oslo.messaging topology."""

    #: one broker or several, as oslo's transport_url: ``amqp://u:p@h1:5672,u:p@h2/vhost``
    #: (lbactors/amqp/broker_url.py has the rules)
    url: _NonEmpty = "amqp://guest:guest@127.0.0.1:5672/"
    topic: _NonEmpty = "vmware_nsx__lb_listener"
    driver_topic: _NonEmpty = "vmware_nsx__driver_listener"
    exchange: _NonEmpty = "common"
    host: _NonEmpty = msgspec.field(default_factory=socket.gethostname)
    api_replay_mode: bool = False
    durable_queues: bool = False
    quorum_queues: bool = False
    ha_queues: bool = False
    transient_queues_ttl: _PosInt = 1800
    prefetch: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 256
    heartbeat: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 60
    max_body_bytes: _PosInt = 1048576
    dead_letter_exchange: str = ""
    reconnect_initial: _PosFloat = 0.5
    reconnect_max: _PosFloat = 30.0
    ca_file: str = ""


class DaemonSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[daemon]``: worker processes, shutdown and restarts."""

    workers: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    #: operations queued per load balancer; 0: no bound of its own (the broker's prefetch
    #: bounds every queue inside the daemon, docs/bounds.md)
    mailbox_size: _NonNegInt = 0
    actor_idle_timeout: _NonNegFloat = 60.0
    grace_period: _NonNegFloat = 30.0
    restart_limit: _NonNegInt = 5
    restart_window: _PosFloat = 60.0
    restart_backoff_initial: _NonNegFloat = 0.1
    restart_backoff_max: _NonNegFloat = 5.0
    #: seconds a cancelled backend call may take to return before its worker is replaced
    cancel_grace: _PosFloat = 5.0
    #: seconds between liveness pings to each worker, and without an answer before it is
    #: killed and replaced (its in-flight operations replayed)
    ping_interval: _PosFloat = 5.0
    ping_timeout: _PosFloat = 30.0
    #: an operation in flight on this many consecutive worker deaths, the last time alone,
    #: is not replayed again: its object goes ERROR and the message is dead-lettered (several
    #: at the count together are replayed one at a time first; supervisor/router.py)
    poison_after: _PosInt = 2
    #: seconds workers get to exit once drained, at shutdown, before they are killed
    stop_timeout: _PosFloat = 5.0
    #: where ``status.sock`` (``lbactors status``) is made; "": systemd's $RUNTIME_DIRECTORY,
    #: else /run/lbactors as root, else $XDG_RUNTIME_DIR/lbactors, else /tmp/lbactors-<uid>
    runtime_dir: str = ""


class BackendSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[backend]``: which backend runs the operations; one table of options per backend."""

    name: _NonEmpty = "noop"
    noop: dict[str, Any] = msgspec.field(default_factory=dict)
    haproxy: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        """The options table of the chosen backend (``[backend.<name>]``)."""
        table = getattr(self, self.name, None) if self.name in _BACKEND_TABLES else None
        return dict(table) if table else {}


class StatusSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[status]``: status semantics.

    ``parents_on_failure``: the status of the parents (listener, load balancer, ...) when an
    operation fails: ``active`` (they stay ACTIVE, operating status unchanged: Octavia's own
    semantics) or ``error`` (ERROR / ERROR, exactly like the original listener).
    ``reassert_after``: the re-assertion schedule of create statuses (strictly increasing).
    """

    parents_on_failure: ParentsOnFailure = "active"
    #: seconds after a create's status cast when its own entry is cast again (Octavia's
    #: commit race: the driver agent drops a status whose row is not committed yet); only
    #: while its load balancer runs and queues nothing; [] disables (README, "Octavia's
    #: commit race")
    reassert_after: Annotated[list[_ReassertDelay], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=lambda: [1.0, 3.0, 10.0]
    )


class StatsSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[stats]``: the periodic listener statistics and operating status reports."""

    interval: _NonNegFloat = 10.0
    batch: _PosInt = 1000
    sync_every: _NonNegInt = 10
    worker_timeout: _PosFloat = 5.0
    sync_timeout: _PosFloat = 10.0


class ClusterSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[cluster]``: several daemons on one RabbitMQ cluster (docs/cluster.md).

    Off by default: one daemon consumes the topic queue and runs every operation. On, every
    daemon re-publishes each load balancer operation into one of ``shards`` single-active-
    consumer quorum queues (by its owner key) and runs only what arrives on the shards it is
    the active consumer of.
    """

    enabled: bool = False
    #: S: the number of shard queues; the same on every daemon for the deployment's life
    shards: Annotated[int, msgspec.Meta(ge=1, le=999)] = 12
    #: seconds between balance ticks, presence hellos and probe rounds
    balance_interval: _PosFloat = 5.0
    #: unacked deliveries per shard consumer
    shard_prefetch: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 64
    #: seconds before the first operation of a shard taken over with redeliveries runs (the
    #: previous holder's backend calls may still be landing)
    takeover_delay: _NonNegFloat = 1.0
    #: oslo ``_unique_id``s of operations run here remembered, so that a second copy (an
    #: intake that died after re-publishing, before its ack) is dropped; 0 disables
    dedup_window: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 10000


class MetricsSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[metrics]``: the Prometheus endpoint (supervisor/metrics.py), off by default."""

    enabled: bool = False
    #: the address the HTTP endpoint listens on; never all interfaces unless asked
    address: _NonEmpty = "127.0.0.1"
    #: its TCP port (0: any free port, logged at start)
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9477


class LogSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[log]``: structlog output on stdout."""

    level: LogLevel = "info"
    format: LogFormat = "auto"


class Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The whole configuration; every section has defaults, so ``Config()`` runs."""

    amqp: AmqpSection = msgspec.field(default_factory=AmqpSection)
    daemon: DaemonSection = msgspec.field(default_factory=DaemonSection)
    backend: BackendSection = msgspec.field(default_factory=BackendSection)
    status: StatusSection = msgspec.field(default_factory=StatusSection)
    stats: StatsSection = msgspec.field(default_factory=StatsSection)
    cluster: ClusterSection = msgspec.field(default_factory=ClusterSection)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    log: LogSection = msgspec.field(default_factory=LogSection)


class ConfigError(Exception):
    """The configuration is invalid; the message names the key, where it came from, and why."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.source = source


#: section name -> Struct
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "amqp": AmqpSection,
    "daemon": DaemonSection,
    "backend": BackendSection,
    "status": StatusSection,
    "stats": StatsSection,
    "cluster": ClusterSection,
    "metrics": MetricsSection,
    "log": LogSection,
}
assert list(SECTIONS) == [f.name for f in msgspec.structs.fields(Config)]
#: backend names that have an options table in ``[backend]``
_BACKEND_TABLES = frozenset(
    f.name for f in msgspec.structs.fields(BackendSection) if f.name != "name"
)
#: backend name -> ``"module:Struct"`` of its options (env strings converted to their types,
#: options validated without building the backend); a backend not listed gets its env values
#: parsed as TOML values and its options checked only when it is built
BACKEND_OPTIONS: dict[str, str] = {
    "noop": "lbactors.backends.noop:NoopOptions",
    "haproxy": "lbactors.backends.haproxy:HaproxyOptions",
}

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Config)


def encode_config(config: Config) -> bytes:
    """``config`` as msgpack bytes: what a worker receives in its Spawn frame."""
    return _encoder.encode(config)


def decode_config(data: bytes) -> Config:
    """The :class:`Config` that :func:`encode_config` wrote."""
    return _decoder.decode(data)


def config_keys() -> list[tuple[str, Any]]:
    """Every key as ``(dotted_key, default)``, in declaration order (backend tables as ``{}``)."""
    defaults = Config()
    keys: list[tuple[str, Any]] = []
    for section, struct in SECTIONS.items():
        value = getattr(defaults, section)
        for field in msgspec.structs.fields(struct):
            keys.append((f"{section}.{field.name}", getattr(value, field.name)))
    return keys


def env_var_name(dotted_key: str) -> str:
    """``amqp.url`` -> ``LBACTORS_AMQP_URL``."""
    return ENV_PREFIX + dotted_key.replace(".", "_").upper()


# ---------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """The effective configuration: defaults < the TOML file < environment < ``overrides``.

    ``path`` None means ``$LBACTORS_CONFIG`` if set, else no file (defaults). ``environ``
    defaults to ``os.environ``. ``overrides`` maps dotted keys (``"daemon.workers"``) to
    values; strings are converted to the key's type. Raises :class:`ConfigError`.
    """
    if environ is None:
        environ = os.environ
    raw: dict[str, Any] = {}
    #: dotted key -> where its value came from (for error messages)
    sources: dict[str, str] = {}
    file_label = "defaults"
    if path is None and environ.get(CONFIG_ENV_VAR):
        path = environ[CONFIG_ENV_VAR]
    if path is not None:
        file_label = os.fspath(path)
        raw = _read_toml(file_label)
        _record_sources(raw, (), file_label, sources)

    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV_VAR:
            continue
        label = f"environment variable {name}"
        keys = _env_key(name, raw, label)
        _assign(raw, keys, _convert_text(environ[name], keys, label, raw), label, sources)

    for dotted, value in (overrides or {}).items():
        label = f"command-line override {dotted}"
        keys = _dotted_key(dotted, label)
        if isinstance(value, str):
            value = _convert_text(value, keys, label, raw)
        _assign(raw, keys, value, label, sources)

    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise _from_validation_error(exc, sources, file_label) from None
    _check(config, sources, file_label)
    return _with_backend_options(config, sources, file_label)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", source=path) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a file", source=path) from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied", source=path) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}", source=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}", source=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", source=path) from None


def _record_sources(
    table: Mapping[str, Any], prefix: tuple[str, ...], label: str, out: dict[str, str]
) -> None:
    for key, value in table.items():
        dotted = (*prefix, key)
        out[".".join(dotted)] = label
        if isinstance(value, dict) and len(dotted) < 3:
            _record_sources(value, dotted, label, out)


def _fail(key: str, source: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {problem}", key=key, source=source)


def _env_key(name: str, raw: Mapping[str, Any], label: str) -> tuple[str, ...]:
    """The key path an ``LBACTORS_`` variable names (section names contain no ``_``)."""
    rest = name[len(ENV_PREFIX) :].lower()
    for section, struct in SECTIONS.items():
        if not rest.startswith(section + "_"):
            continue
        key = rest[len(section) + 1 :]
        fields = [f.name for f in msgspec.structs.fields(struct)]
        if key in fields:
            return (section, key)
        if section == "backend":
            for backend in sorted(_BACKEND_TABLES, key=len, reverse=True):
                if key.startswith(backend + "_") and len(key) > len(backend) + 1:
                    return ("backend", backend, key[len(backend) + 1 :])
        known = ", ".join(fields)
        raise _fail(f"{section}.{key}", label, f"unknown key (known in [{section}]: {known})")
    sections = ", ".join(ENV_PREFIX + s.upper() + "_*" for s in SECTIONS)
    raise ConfigError(
        f"{label}: names no configuration key (expected {sections}; "
        f"{CONFIG_ENV_VAR} names the file)",
        source=label,
    )


def _dotted_key(dotted: str, label: str) -> tuple[str, ...]:
    parts = tuple(dotted.split("."))
    section = parts[0]
    struct = SECTIONS.get(section)
    if struct is None:
        raise _fail(dotted, label, f"unknown section {section!r} (known: {', '.join(SECTIONS)})")
    fields = {f.name for f in msgspec.structs.fields(struct)}
    if len(parts) == 2 and parts[1] in fields:
        return parts
    if len(parts) == 3 and section == "backend" and parts[1] in _BACKEND_TABLES and parts[2]:
        return parts
    raise _fail(dotted, label, "unknown key")


def _field_type(keys: tuple[str, ...]) -> Any:
    struct = SECTIONS[keys[0]]
    for field in msgspec.structs.fields(struct):
        if field.name == keys[1]:
            return field.type
    raise AssertionError(keys)  # pragma: no cover - _env_key / _dotted_key checked it


def _options_type(backend: str) -> type[msgspec.Struct] | None:
    entry = BACKEND_OPTIONS.get(backend)
    if entry is None:
        return None
    module_name, _, attribute = entry.partition(":")
    options_type: type[msgspec.Struct] = getattr(importlib.import_module(module_name), attribute)
    return options_type


def _convert_text(text: str, keys: tuple[str, ...], label: str, raw: Mapping[str, Any]) -> Any:
    """A string from the environment or the command line, as the key's type."""
    dotted = ".".join(keys)
    if len(keys) == 3:  # a backend option
        options_type = _options_type(keys[1])
        if options_type is None:
            try:
                return tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                return text
        fields = {f.name: f.type for f in msgspec.structs.fields(options_type)}
        if keys[2] not in fields:
            known = ", ".join(sorted(fields))
            raise _fail(dotted, label, f"unknown option of backend {keys[1]!r} (known: {known})")
        target = fields[keys[2]]
    else:
        target = _field_type(keys)
    if _is_list(target):  # a TOML array: LBACTORS_STATUS_REASSERT_AFTER="[1.0, 5.0]"
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raise _fail(dotted, label, f"expected a TOML array such as [1.0, 3.0] (value {text!r})") from None
        try:
            return msgspec.convert(value, target)
        except msgspec.ValidationError as exc:
            raise _fail(dotted, label, f"{_problem(str(exc))} (value {text!r})") from None
    choices = _choices(target)
    if choices:
        text = text.strip().lower()
    try:
        return msgspec.convert(text, target, strict=False)
    except msgspec.ValidationError as exc:
        problem = _problem(str(exc))
        if choices:
            problem += f"; expected one of: {', '.join(choices)}"
        raise _fail(dotted, label, f"{problem} (value {text!r})") from None


def _is_list(target: Any) -> bool:
    """Whether ``target`` is a list type (possibly ``Annotated``)."""
    if typing.get_origin(target) is Annotated:
        target = typing.get_args(target)[0]
    return typing.get_origin(target) is list


def _choices(target: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` type (``()`` for any other type)."""
    if typing.get_origin(target) is Literal:
        return tuple(str(arg) for arg in typing.get_args(target))
    return ()


def _assign(
    raw: dict[str, Any], keys: tuple[str, ...], value: Any, label: str, sources: dict[str, str]
) -> None:
    table = raw
    for depth, key in enumerate(keys[:-1]):
        existing = table.setdefault(key, {})
        if not isinstance(existing, dict):
            where = ".".join(keys[: depth + 1])
            raise _fail(where, sources.get(where, label), "expected a table")
        table = existing
    table[keys[-1]] = value
    sources[".".join(keys)] = label


_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")


def _problem(message: str) -> str:
    match = _AT.match(message)
    problem = match.group("problem") if match else message
    return problem[:1].lower() + problem[1:]


def _describe(exc: msgspec.ValidationError) -> tuple[list[str], str]:
    """The key path and the problem of a msgspec validation error."""
    match = _AT.match(str(exc))
    assert match is not None
    problem, path = match.group("problem"), match.group("path") or ""
    keys = [part for part in re.split(r"\.|\[|\]", path) if part]
    unknown = _UNKNOWN.match(problem)
    if unknown:
        keys.append(unknown.group("name"))
        return keys, "unknown key"
    if problem.startswith("Expected `object`"):
        return keys, "expected a table" + problem[len("Expected `object`") :]
    return keys, problem[:1].lower() + problem[1:]


def _from_validation_error(
    exc: msgspec.ValidationError, sources: Mapping[str, str], file_label: str
) -> ConfigError:
    keys, problem = _describe(exc)
    if problem == "unknown key":
        if len(keys) == 1:
            problem = f"unknown section (known: {', '.join(SECTIONS)})"
        elif keys[0] in SECTIONS and len(keys) == 2:
            known = ", ".join(f.name for f in msgspec.structs.fields(SECTIONS[keys[0]]))
            problem = f"unknown key (known in [{keys[0]}]: {known})"
    elif len(keys) == 2 and keys[0] in SECTIONS and problem.startswith("invalid enum value"):
        problem += f"; expected one of: {', '.join(_choices(_field_type((keys[0], keys[1]))))}"
    dotted = ".".join(keys) or "(top level)"
    return _fail(dotted, sources.get(dotted, file_label), problem)


def _check(config: Config, sources: Mapping[str, str], file_label: str) -> None:
    """Rules that types and ranges cannot say."""

    def fail(key: str, problem: str, other: str = "") -> ConfigError:
        """``other``: the key this one was compared with (its source, if this one has none)."""
        return _fail(key, sources.get(key) or sources.get(other) or file_label, problem)

    amqp = config.amqp
    try:
        parse_url(amqp.url)
    except BrokerURLError as exc:  # the message names the part, never a password
        raise fail("amqp.url", str(exc)) from None
    if amqp.reconnect_max < amqp.reconnect_initial:
        raise fail(
            "amqp.reconnect_max", "must be >= amqp.reconnect_initial", "amqp.reconnect_initial"
        )
    if amqp.ca_file and not os.path.isfile(amqp.ca_file):
        raise fail("amqp.ca_file", f"no such file: {amqp.ca_file}")
    daemon = config.daemon
    if daemon.ping_timeout <= daemon.ping_interval:
        raise fail(
            "daemon.ping_timeout", "must be > daemon.ping_interval", "daemon.ping_interval"
        )
    if daemon.restart_backoff_max < daemon.restart_backoff_initial:
        raise fail(
            "daemon.restart_backoff_max",
            "must be >= daemon.restart_backoff_initial",
            "daemon.restart_backoff_initial",
        )

    delays = config.status.reassert_after
    if any(later <= earlier for earlier, later in zip(delays, delays[1:], strict=False)):
        raise fail("status.reassert_after", f"must be strictly increasing, not {delays}")

    from lbactors.backends import BACKENDS  # cheap: no backend is imported

    if config.backend.name not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise fail("backend.name", f"unknown backend {config.backend.name!r} (known: {known})")


def _with_backend_options(config: Config, sources: Mapping[str, str], file_label: str) -> Config:
    """Check every backend options table whose type is known; keep its values typed."""
    tables: dict[str, dict[str, Any]] = {}
    for backend in sorted(_BACKEND_TABLES):
        options: dict[str, Any] = getattr(config.backend, backend)
        options_type = _options_type(backend) if options else None
        if options_type is None:
            continue
        try:
            typed = msgspec.convert(options, options_type)
        except msgspec.ValidationError as exc:
            keys, problem = _describe(exc)
            if problem == "unknown key":
                known = ", ".join(f.name for f in msgspec.structs.fields(options_type))
                problem = f"unknown option of backend {backend!r} (known: {known})"
            key = ".".join(["backend", backend, *keys])
            raise _fail(key, sources.get(key, file_label), problem) from None
        builtins = msgspec.to_builtins(typed)
        tables[backend] = {key: builtins[key] for key in options}
    if not tables:
        return config
    backend_section = msgspec.structs.replace(config.backend, **tables)
    return msgspec.structs.replace(config, backend=backend_section)
