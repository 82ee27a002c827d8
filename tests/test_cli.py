"""The ``lbactors`` command line and the systemd unit."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from lbactors.config import Config, load_config
from supervisor import cli

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "lbactors.service"
EXAMPLE = ROOT / "contrib" / "lbactors.toml"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LBACTORS_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=60,
    )


# ------------------------------------------------------------------ subprocess: the real entry


def test_help_explains_commands_and_exit_codes() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: lbactors")
    for text in ("serve", "check-config", "--version", "exit codes"):
        assert text in result.stdout


def test_serve_help_explains_every_option_and_the_environment() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    out = result.stdout
    for flag in (
        "--config",
        "--workers",
        "--amqp-url",
        "--backend",
        "--log-level",
        "--log-format",
        "--set",
    ):
        assert flag in out
    assert "LBACTORS_<SECTION>_<KEY>" in out and "LBACTORS_CONFIG" in out
    assert "amqp://guest:guest@127.0.0.1:5672/" in out
    for dotted, _ in cli.config_keys():
        assert dotted in out, dotted
    assert "exit codes" in out


def test_check_config_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[amqp]\nurl = "amqp://lb:s3cret@broker:5672/"\n[daemon]\nworkers = 4\n')
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    first, rest = result.stdout.split("\n", 1)
    assert first == f"{path}: ok"
    shown = tomllib.loads(rest)
    assert shown["daemon"]["workers"] == 4
    assert shown["amqp"]["url"] == "amqp://lb:***@broker:5672/"  # the password is not printed
    assert "s3cret" not in result.stdout


def test_check_config_masks_the_password_of_every_broker_host(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    url = "amqp://lb:s3cret@b1:5672,lb2:other%40pw@[::1]:5673,b3/vh"
    path.write_text(f'[amqp]\nurl = "{url}"\n')
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout.split("\n", 1)[1])
    assert shown["amqp"]["url"] == "amqp://lb:***@b1:5672,lb2:***@[::1]:5673,b3/vh"
    assert "s3cret" not in result.stdout and "other" not in result.stdout


def test_check_config_json_and_environment(tmp_path: Path) -> None:
    result = run("check-config", "--json", str(EXAMPLE), env={"LBACTORS_STATS_INTERVAL": "0"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.split("\n", 1)[1])
    assert shown["stats"]["interval"] == 0
    assert shown["backend"]["name"] == "noop"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[amqp]\nprefech = 1\n", ["amqp.prefech", "unknown key"]),
        ('[daemon]\nworkers = "x"\n', ["daemon.workers", "expected `int`"]),
        ("[amqp]\nurl = \n", ["invalid TOML", "line 2"]),
    ],
)
def test_check_config_bad_file(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()  # one clear line, no traceback
    assert str(path) in line
    for fragment in fragments:
        assert fragment in line


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = run("check-config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "absent.toml" in line and "no such file" in line


def test_serve_with_a_bad_environment_exits_2_before_starting() -> None:
    result = run("serve", env={"LBACTORS_AMQP_PREFETCH": "0"})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "LBACTORS_AMQP_PREFETCH" in line and "amqp.prefetch" in line


def test_usage_errors_exit_2() -> None:
    assert run().returncode == 2
    assert run("frobnicate").returncode == 2
    assert run("serve", "--workers", "many").returncode == 2
    assert run("check-config").returncode == 2


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("lbactors ")


# ------------------------------------------------------------------ in process


def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """``supervisor.daemon.run`` replaced: records the Config it is given, returns 0."""
    seen: list[Config] = []
    module = types.ModuleType("supervisor.daemon")

    def run(config: Config) -> int:
        seen.append(config)
        return 0

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "supervisor.daemon", module)
    return seen


def test_serve_passes_flags_as_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Flags win over the file and the environment; the daemon gets the loaded Config."""
    seen = fake_daemon(monkeypatch)
    path = tmp_path / "c.toml"
    path.write_text("[daemon]\nworkers = 1\n[log]\nlevel = 'error'\n")
    monkeypatch.setenv("LBACTORS_DAEMON_WORKERS", "2")
    monkeypatch.setenv("LBACTORS_AMQP_URL", "amqp://env-host/")
    code = cli.main(
        [
            "serve",
            "--config", str(path),
            "--workers", "3",
            "--backend", "noop",
            "--log-format", "json",
            "--set", "backend.noop.latency=0.5",
            "--set", "daemon.grace_period=7",
        ]
    )  # fmt: skip
    assert code == 0
    (config,) = seen
    assert config.daemon.workers == 3
    assert config.amqp.url == "amqp://env-host/"
    assert config.log.level == "error" and config.log.format == "json"
    assert config.backend.noop == {"latency": 0.5}
    assert config.daemon.grace_period == 7.0


def test_serve_reads_lbactors_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = fake_daemon(monkeypatch)
    path = tmp_path / "c.toml"
    path.write_text("[stats]\ninterval = 0\n")
    monkeypatch.setenv("LBACTORS_CONFIG", str(path))
    assert cli.main(["serve", "--amqp-url", "amqps://b:5671/"]) == 0
    assert seen[0].stats.interval == 0.0
    assert seen[0].amqp.url == "amqps://b:5671/"


def test_set_needs_key_equals_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--set", "daemon.workers"])
    assert exit_info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_rendered_toml_loads_back_to_the_same_config(tmp_path: Path) -> None:
    config = load_config(
        environ={},
        overrides={
            "backend.noop.latency": 0.5,
            "backend.noop.fail_pattern": 'a"b\\c\x7f\t\U0001f600é',
            "amqp.topic": "topic/ü",
        },
    )
    path = tmp_path / "rendered.toml"
    path.write_text(cli.render_toml(config))
    assert load_config(path, environ={}) == config


# ------------------------------------------------------------------ the systemd unit


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_file_has_the_required_settings() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/usr/bin/lbactors serve --config /etc/lbactors/lbactors.toml"
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"
    assert int(service["WatchdogSec"]) > 0
    assert float(service["TimeoutStopSec"]) > Config().daemon.grace_period
    assert service["RestartSec"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["User"] == "lbactors"
    assert service["RuntimeDirectory"] == "lbactors"
    assert service["StateDirectory"] == "lbactors"
    assert "AF_UNIX" in service["RestrictAddressFamilies"]
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's script
    script = Path(sys.executable).with_name("lbactors")
    if not script.exists():
        pytest.skip("the lbactors script is not installed in this environment")
    unit = tmp_path / "lbactors.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/lbactors", f"ExecStart={script}"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "lbactors.service" not in result.stderr, result.stderr
