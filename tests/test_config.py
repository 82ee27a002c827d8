"""Configuration: defaults, the TOML file, environment and command-line overrides, errors."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbactors.backends import load_backend
from lbactors.backends.noop import NoopBackend
from lbactors.config import (
    SECTIONS,
    AmqpSection,
    BackendSection,
    Config,
    ConfigError,
    DaemonSection,
    LogSection,
    StatsSection,
    StatusSection,
    config_keys,
    decode_config,
    encode_config,
    env_var_name,
    load_config,
)

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "lbactors.toml"

FULL = """\
[amqp]
url = "amqps://lb:secret@rabbit.example:5671/octavia"
topic = "t"
driver_topic = "dt"
exchange = "ex"
host = "node-1"
api_replay_mode = true
durable_queues = true
quorum_queues = true
ha_queues = true
transient_queues_ttl = 60
prefetch = 32
heartbeat = 0
max_body_bytes = 4096
dead_letter_exchange = "dlx"
reconnect_initial = 1
reconnect_max = 10.5
ca_file = "{ca_file}"

[daemon]
workers = 3
mailbox_size = 8
grace_period = 12.5
restart_limit = 2
restart_window = 30
restart_backoff_initial = 0.5
restart_backoff_max = 2

[backend]
name = "noop"

[backend.noop]
latency = 0.25
fail_pattern = "^bad"
seed = 7

[backend.haproxy]
state_dir = "/srv/lbactors"

[status]
parents_on_failure = "error"

[stats]
interval = 0
batch = 10
sync_every = 0
worker_timeout = 1.5
sync_timeout = 2.5

[log]
level = "debug"
format = "json"
"""


def write(tmp_path: Path, text: str, name: str = "lbactors.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(*args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------ defaults


def test_defaults_without_file_or_environment() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.amqp.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert config.amqp.topic == "vmware_nsx__lb_listener"
    assert config.amqp.driver_topic == "vmware_nsx__driver_listener"
    assert config.amqp.exchange == "common"
    assert config.amqp.host == socket.gethostname()
    assert config.amqp.prefetch == 256
    assert config.daemon.workers == 0
    assert config.daemon.grace_period == 30.0
    assert config.backend.name == "noop"
    assert config.backend.options == {}
    assert config.status.parents_on_failure == "active"
    assert config.stats.interval == 10.0
    assert config.log == LogSection(level="info", format="auto")


def test_defaults_build_the_noop_backend() -> None:
    assert isinstance(load_backend(Config().backend), NoopBackend)


# ------------------------------------------------------------------ the file


def test_every_section_from_a_file(tmp_path: Path) -> None:
    ca_file = write(tmp_path, "pem", "ca.pem")
    path = write(tmp_path, FULL.format(ca_file=ca_file))
    config = load_config(path, environ={})
    assert config.amqp == AmqpSection(
        url="amqps://lb:secret@rabbit.example:5671/octavia",
        topic="t",
        driver_topic="dt",
        exchange="ex",
        host="node-1",
        api_replay_mode=True,
        durable_queues=True,
        quorum_queues=True,
        ha_queues=True,
        transient_queues_ttl=60,
        prefetch=32,
        heartbeat=0,
        max_body_bytes=4096,
        dead_letter_exchange="dlx",
        reconnect_initial=1.0,
        reconnect_max=10.5,
        ca_file=str(ca_file),
    )
    assert config.daemon == DaemonSection(
        workers=3,
        mailbox_size=8,
        grace_period=12.5,
        restart_limit=2,
        restart_window=30.0,
        restart_backoff_initial=0.5,
        restart_backoff_max=2.0,
    )
    assert config.backend == BackendSection(
        name="noop",
        noop={"latency": 0.25, "fail_pattern": "^bad", "seed": 7},
        haproxy={"state_dir": "/srv/lbactors"},
    )
    assert config.backend.options == {"latency": 0.25, "fail_pattern": "^bad", "seed": 7}
    assert config.status == StatusSection(parents_on_failure="error")
    assert config.stats == StatsSection(
        interval=0.0, batch=10, sync_every=0, worker_timeout=1.5, sync_timeout=2.5
    )
    assert config.log == LogSection(level="debug", format="json")
    backend = load_backend(config.backend)
    assert isinstance(backend, NoopBackend)


def test_config_env_var_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nworkers = 5\n")
    assert load_config(environ={"LBACTORS_CONFIG": str(path)}).daemon.workers == 5
    # an explicit path wins over LBACTORS_CONFIG
    other = write(tmp_path, "[daemon]\nworkers = 6\n", "other.toml")
    assert load_config(other, environ={"LBACTORS_CONFIG": str(path)}).daemon.workers == 6


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[amqp]\nprefech = 10\n")
    error = error_of(path, environ={})
    assert "amqp.prefech" in str(error)
    assert str(path) in str(error)
    assert "unknown key" in str(error)
    assert "prefetch" in str(error)  # the known keys are listed
    assert error.key == "amqp.prefech"
    assert error.source == str(path)


def test_unknown_section_and_unknown_backend_option(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "[amqpp]\nurl = 'x'\n"), environ={})
    assert error.key == "amqpp" and "unknown section" in str(error)
    error = error_of(write(tmp_path, "[backend.noop]\nlatncy = 1\n"), environ={})
    assert error.key == "backend.noop.latncy"
    assert "latency" in str(error)  # the known options are listed


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nworkers = "four"\n')
    error = error_of(path, environ={})
    assert error.key == "daemon.workers"
    assert re.search(r"expected `int`, got `str`", str(error))
    assert str(path) in str(error)
    error = error_of(write(tmp_path, "amqp = 3\n"), environ={})
    assert error.key == "amqp" and "expected a table" in str(error)
    error = error_of(write(tmp_path, '[backend.noop]\nlatency = "slow"\n'), environ={})
    assert error.key == "backend.noop.latency" and "expected `float`" in str(error)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[amqp]\nprefetch = 0\n", "amqp.prefetch", ">= 1"),
        ("[amqp]\nprefetch = 70000\n", "amqp.prefetch", "<= 65535"),
        ("[amqp]\nurl = 'http://h/'\n", "amqp.url", "amqp:// or amqps://"),
        ("[amqp]\nurl = 'amqp:///'\n", "amqp.url", "no host"),
        ("[amqp]\nurl = 'amqp://h:99999/'\n", "amqp.url", "port"),
        ("[amqp]\ntopic = ''\n", "amqp.topic", "length >= 1"),
        ("[amqp]\nreconnect_initial = 5\nreconnect_max = 1\n", "amqp.reconnect_max", ">="),
        ("[amqp]\nca_file = '/nonexistent/ca.pem'\n", "amqp.ca_file", "no such file"),
        ("[daemon]\nworkers = -1\n", "daemon.workers", ">= 0"),
        ("[daemon]\ngrace_period = -1\n", "daemon.grace_period", ">= 0"),
        ("[daemon]\nrestart_backoff_max = 0.01\n", "daemon.restart_backoff_max", ">="),
        ("[stats]\ninterval = -1\n", "stats.interval", ">= 0"),
        ("[stats]\nbatch = 0\n", "stats.batch", ">= 1"),
        ("[backend]\nname = 'nope'\n", "backend.name", "unknown backend 'nope' (known: haproxy, noop"),
        (
            "[status]\nparents_on_failure = 'offline'\n",
            "status.parents_on_failure",
            "active, error",
        ),
        ("[log]\nlevel = 'loud'\n", "log.level", "debug, info, warning, error"),
        ("[log]\nformat = 'xml'\n", "log.format", "auto, json, console"),
    ],
)
def test_semantic_ranges(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    error = error_of(path, environ={})
    assert error.key == key
    assert fragment in str(error)
    assert str(error).startswith(f"{path}: {key}: ")


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[amqp]\nurl = 'x'\nprefetch = = 3\n")
    error = error_of(path, environ={})
    assert str(path) in str(error)
    assert "invalid TOML" in str(error)
    assert "line 3" in str(error)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    error = error_of(tmp_path / "nope.toml", environ={})
    assert "no such file" in str(error) and "nope.toml" in str(error)
    error = error_of(tmp_path, environ={})
    assert "directory" in str(error)
    error = error_of(environ={"LBACTORS_CONFIG": str(tmp_path / "gone.toml")})
    assert "gone.toml" in str(error)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[amqp]")
    assert str(binary) in str(error_of(binary, environ={}))


# ------------------------------------------------------------------ environment


def test_environment_overrides_with_type_conversion() -> None:
    config = load_config(
        environ={
            "LBACTORS_AMQP_URL": "amqp://u:p@broker:5672/v",
            "LBACTORS_AMQP_DRIVER_TOPIC": "driver",
            "LBACTORS_AMQP_DURABLE_QUEUES": "true",
            "LBACTORS_AMQP_HA_QUEUES": "1",
            "LBACTORS_AMQP_PREFETCH": "17",
            "LBACTORS_DAEMON_WORKERS": "2",
            "LBACTORS_DAEMON_GRACE_PERIOD": "2.5",
            "LBACTORS_BACKEND_NOOP_LATENCY": "0.02",
            "LBACTORS_BACKEND_NOOP_FAIL_PATTERN": "123",
            "LBACTORS_BACKEND_HAPROXY_HAPROXY_BIN": "/usr/sbin/haproxy",
            "LBACTORS_BACKEND_HAPROXY_MAX_CONNECTIONS": "4000",
            "LBACTORS_BACKEND_HAPROXY_STATE_DIR": "1234",
            "LBACTORS_STATUS_PARENTS_ON_FAILURE": "error",
            "LBACTORS_STATS_INTERVAL": "0",
            "LBACTORS_LOG_LEVEL": "DEBUG",
            "LBACTORS_LOG_FORMAT": "json",
            "OTHER_VARIABLE": "ignored",
        }
    )
    assert config.amqp.url == "amqp://u:p@broker:5672/v"
    assert config.amqp.driver_topic == "driver"
    assert config.amqp.durable_queues is True
    assert config.amqp.ha_queues is True
    assert config.amqp.prefetch == 17
    assert config.daemon.workers == 2
    assert config.daemon.grace_period == 2.5
    # typed by the backend's options: a float, and a string that looks like a number
    assert config.backend.noop == {"latency": 0.02, "fail_pattern": "123"}
    assert config.backend.haproxy == {
        "haproxy_bin": "/usr/sbin/haproxy",
        "max_connections": 4000,
        "state_dir": "1234",
    }
    assert config.status.parents_on_failure == "error"
    assert config.stats.interval == 0.0
    assert config.log == LogSection(level="debug", format="json")
    # the worker builds its backend from what the environment gave
    backend = load_backend(config.backend)
    assert isinstance(backend, NoopBackend)


@pytest.mark.parametrize(
    ("name", "value", "key", "fragment"),
    [
        ("LBACTORS_AMQP_PREFETCH", "many", "amqp.prefetch", "expected `int`"),
        ("LBACTORS_AMQP_PREFETCH", "0", "amqp.prefetch", ">= 1"),
        ("LBACTORS_AMQP_DURABLE_QUEUES", "maybe", "amqp.durable_queues", "expected `bool`"),
        ("LBACTORS_AMQP_PREFECH", "1", "amqp.prefech", "unknown key"),
        ("LBACTORS_BACKEND_NOOP_LATNCY", "1", "backend.noop.latncy", "unknown option"),
        ("LBACTORS_BACKEND_NOOP_LATENCY", "slow", "backend.noop.latency", "expected `float`"),
        ("LBACTORS_LOG_LEVEL", "loud", "log.level", "expected one of: debug"),
        ("LBACTORS_AMQP_URL", "http://x/", "amqp.url", "amqp://"),
    ],
)
def test_environment_errors_name_the_variable(
    name: str, value: str, key: str, fragment: str
) -> None:
    error = error_of(environ={name: value})
    assert error.key == key
    assert name in str(error)
    assert fragment in str(error)


@pytest.mark.parametrize(
    "name", ["LBACTORS_FOO", "LBACTORS_AMQP", "LBACTORS_STAT_INTERVAL", "LBACTORS_"]
)
def test_an_lbactors_variable_that_names_no_key_is_an_error(name: str) -> None:
    error = error_of(environ={name: "1"})
    assert name in str(error)


def test_stats_and_status_are_told_apart() -> None:
    config = load_config(
        environ={"LBACTORS_STATS_INTERVAL": "3", "LBACTORS_STATUS_PARENTS_ON_FAILURE": "error"}
    )
    assert config.stats.interval == 3.0
    assert config.status.parents_on_failure == "error"


def test_env_var_names_of_every_key() -> None:
    """Every key is reachable through the environment under the documented name."""
    for dotted, default in config_keys():
        if isinstance(default, dict):
            continue
        value = {
            "amqp.url": "amqp://h/",
            "backend.name": "noop",
            "log.level": "warning",
            "log.format": "console",
            "status.parents_on_failure": "error",
            "amqp.ca_file": __file__,
            "amqp.reconnect_initial": "1",
            "daemon.restart_backoff_initial": "1",
            "status.reassert_after": "[0.5, 2]",
        }.get(dotted)
        if value is None:
            value = {bool: "true", int: "7", float: "7.5", str: "x"}[type(default)]
        config = load_config(environ={env_var_name(dotted): value})
        section, key = dotted.split(".")
        assert getattr(getattr(config, section), key) != getattr(
            getattr(Config(), section), key
        ) or (dotted == "backend.name"), dotted


def test_reassert_after_is_a_strictly_increasing_list_of_delays(tmp_path: Path) -> None:
    assert Config().status.reassert_after == [1.0, 3.0, 10.0]
    assert load_config(write(tmp_path, "[status]\nreassert_after = []\n")).status.reassert_after == []
    env = "LBACTORS_STATUS_REASSERT_AFTER"
    assert load_config(environ={env: "[0.5, 2]"}).status.reassert_after == [0.5, 2.0]
    for bad, problem in (
        ("[3.0, 1.0]", "strictly increasing"),
        ("[1.0, 1.0]", "strictly increasing"),
        ("[0]", "> 0.0"),
        ("[7200]", "<= 3600"),
        ("1.0", "array"),
        ('["a"]', "expected `float`"),
    ):
        with pytest.raises(ConfigError, match=re.escape(problem)) as info:
            load_config(environ={env: bad})
        assert info.value.key == "status.reassert_after", bad
        assert info.value.source == f"environment variable {env}"
    with pytest.raises(ConfigError, match="status.reassert_after: must be strictly increasing"):
        load_config(write(tmp_path, "[status]\nreassert_after = [2.0, 1.0]\n"))


# ------------------------------------------------------------------ precedence


def test_precedence_file_environment_command_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[daemon]\nworkers = 1\ngrace_period = 1\nmailbox_size = 1\n"
        "[backend.noop]\nlatency = 0.1\nseed = 1\n",
    )
    environ = {
        "LBACTORS_DAEMON_WORKERS": "2",
        "LBACTORS_DAEMON_GRACE_PERIOD": "2",
        "LBACTORS_BACKEND_NOOP_LATENCY": "0.2",
    }
    overrides = {"daemon.workers": 3, "backend.noop.latency": "0.3"}
    config = load_config(path, environ=environ, overrides=overrides)
    assert config.daemon.workers == 3  # command line
    assert config.daemon.grace_period == 2.0  # environment
    assert config.daemon.mailbox_size == 1  # file
    assert config.daemon.restart_limit == 5  # default
    assert config.backend.noop == {"latency": 0.3, "seed": 1}


def test_a_conflict_names_the_source_that_made_it() -> None:
    error = error_of(environ={"LBACTORS_DAEMON_RESTART_BACKOFF_INITIAL": "9"})
    assert error.key == "daemon.restart_backoff_max"
    assert "LBACTORS_DAEMON_RESTART_BACKOFF_INITIAL" in str(error)


def test_override_errors_name_the_override() -> None:
    error = error_of(environ={}, overrides={"daemon.wrokers": 1})
    assert error.key == "daemon.wrokers" and "command-line" in str(error)
    error = error_of(environ={}, overrides={"nosuch.key": 1})
    assert "unknown section" in str(error)
    error = error_of(environ={}, overrides={"daemon.workers": "lots"})
    assert error.key == "daemon.workers" and "expected `int`" in str(error)
    error = error_of(environ={}, overrides={"daemon.workers": -2})
    assert error.key == "daemon.workers" and "command-line override daemon.workers" in str(error)


def test_an_environment_value_for_a_key_that_is_not_a_table_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[backend]\nnoop = 3\n")
    error = error_of(path, environ={"LBACTORS_BACKEND_NOOP_LATENCY": "1"})
    assert error.key == "backend.noop" and str(path) in str(error)


# ------------------------------------------------------------------ transport to workers


def test_msgpack_and_json_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, FULL.format(ca_file=write(tmp_path, "pem", "ca.pem")))
    for config in (Config(), load_config(path, environ={})):
        assert decode_config(encode_config(config)) == config
        assert msgspec.json.decode(msgspec.json.encode(config), type=Config) == config


def test_infinite_values_reach_the_workers(tmp_path: Path) -> None:
    """``inf`` is valid TOML and a valid value here; the workers get it as it is."""
    path = write(tmp_path, "[daemon]\nrestart_window = inf\n\n[backend.noop]\nlatency = inf\n")
    config = load_config(path, environ={})
    assert config.daemon.restart_window == float("inf")
    assert decode_config(encode_config(config)) == config


@given(
    workers=st.integers(0, 1024),
    latency=st.floats(0, allow_nan=False),
    level=st.sampled_from(["debug", "info", "warning", "error"]),
    url=st.from_regex(r"amqps?://[a-z]{1,8}(:[1-9][0-9]{0,3})?/", fullmatch=True),
)
def test_round_trip_property(workers: int, latency: float, level: str, url: str) -> None:
    config = load_config(
        environ={},
        overrides={
            "daemon.workers": workers,
            "backend.noop.latency": latency,
            "log.level": level,
            "amqp.url": url,
        },
    )
    assert decode_config(encode_config(config)) == config


# ------------------------------------------------------------------ the example file


def test_contrib_example_loads_and_equals_the_defaults() -> None:
    assert load_config(CONTRIB, environ={}) == Config()


def test_contrib_example_lists_every_option_with_its_default() -> None:
    text = CONTRIB.read_text()
    # every commented "#key = value" line, per [section] header
    documented: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        header = re.fullmatch(r"\[([a-z_.]+)\]", line.strip())
        if header:
            section = header.group(1)
            assert section.split(".")[0] in SECTIONS
            continue
        match = re.fullmatch(r"#([a-z_]+) = (.+)", line.strip())
        if match and section is not None:
            documented[f"{section}.{match.group(1)}"] = match.group(2)
    for dotted, default in config_keys():
        if isinstance(default, dict):
            assert f"[{dotted}]" in text, dotted
            continue
        assert dotted in documented, f"{dotted} is missing from contrib/lbactors.toml"
        if dotted == "amqp.host":
            continue  # the host name is computed
        shown = tomllib.loads(f"v = {documented[dotted]}")["v"]
        assert shown == default and type(shown) is type(default), dotted
    # and the example's backend options are the noop backend's (uncommented, they load)
    noop = {
        key.split(".")[2]: value
        for key, value in documented.items()
        if key.startswith("backend.noop.")
    }
    options = "\n".join(f"{key} = {value}" for key, value in noop.items())
    from lbactors.backends.noop import NoopOptions

    assert set(noop) == {f.name for f in msgspec.structs.fields(NoopOptions)}
    assert tomllib.loads(options)["latency"] == 0.0
