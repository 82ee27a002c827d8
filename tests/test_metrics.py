"""Metrics (``[metrics]``) and ``lbactors status``: the pure parts, then ``lbactors serve`` on the
real broker with the real oslo.messaging as Octavia, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import stat
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from lbactors.gateway import rejection_kind
from supervisor import cli
from supervisor.metrics import DaemonMetrics
from supervisor.status import SOCKET_NAME, render_status
from tests.daemon_process import DaemonProcess, NotifySocket
from tests.octavia_side import GatedRun, LoadBalancerTree, OsloDriver
from tests.test_daemon import assert_clean, daemon_env, driver, gated_load  # noqa: F401

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(text: str) -> Samples:
    """Every sample of an exposition text, keyed by name and sorted labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def test_operations_are_counted_by_method_and_result_with_bounded_labels() -> None:
    metrics = DaemonMetrics()
    metrics.observe_settled("member_create", "ok", 0.003)
    metrics.observe_settled("member_create", "ok", 0.2)
    metrics.observe_settled("member_create", "error", 0.004)
    metrics.observe_settled("x" * 200, "dead_lettered", 0.001)  # anything off the wire
    from prometheus_client import generate_latest

    samples = samples_of(generate_latest(metrics.registry).decode())
    assert total(samples, "lbactors_operations_total", method="member_create", result="ok") == 2
    assert total(samples, "lbactors_operations_total", method="member_create", result="error") == 1
    assert total(samples, "lbactors_operations_total", method="other") == 1
    assert total(samples, "lbactors_operation_duration_seconds_count", method="member_create") == 3
    assert total(
        samples, "lbactors_operation_duration_seconds_bucket", method="member_create", le="0.005"
    ) == 2
    assert not any("x" * 200 in str(labels) for _, labels in samples)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("malformed: body of 9 bytes exceeds the limit of 1", "malformed"),
        ("PoisonOperation: poison operation: in flight on 2 consecutive worker deaths", "poison"),
        ("internal error: KeyError", "internal_error"),
        ("UnsupportedVersion: Endpoint does not support RPC version 9.0", "unsupported_version"),
        ("NoSuchMethod: no method frobnicate", "invalid_operation"),
        ("InvalidOperation: member without pool", "invalid_operation"),
        ("lb-1234 something unforeseen", "other"),
    ],
)
def test_rejection_reasons_map_to_a_bounded_set(reason: str, kind: str) -> None:
    assert rejection_kind(reason) == kind


def test_status_renders_workers_broker_round_and_slowest() -> None:
    text = render_status(
        {
            "pid": 42,
            "uptime_s": 3600.0,
            "workers": [
                {"index": 0, "pid": 43, "up": True, "uptime_s": 10.0, "restarts": 1,
                 "in_flight": 2, "actors": 5, "resident_loadbalancers": 7},
                {"index": 1, "pid": None, "up": False, "uptime_s": None, "restarts": 3,
                 "in_flight": 0, "actors": 0, "resident_loadbalancers": 0},
            ],
            "broker": {"connected": False, "reconnects": 2, "last_disconnect": 1.0e9,
                       "in_flight": 2, "confirms_pending": 1, "received": 10, "completed": 8,
                       "rejected": 0, "reasserted": 3},
            "statistics": {"rounds": 4, "last_duration_s": 0.25, "last_messages": 3,
                           "last_ended": 1.0e9},
            "replayed": 2,
            "poisoned": 0,
            "slowest_in_flight": [
                {"age_s": 12.5, "lb_id": "lb-slow", "method": "member_create", "worker": 0}
            ],
        }
    )
    assert "workers 1/2" in text
    assert "DISCONNECTED, 2 reconnects" in text
    assert "statistics round 4: 0.25 s, 3 messages" in text
    assert "down" in text.splitlines()[4]
    assert "lb-slow" in text and "12.5s" in text


# ---------------------------------------------------------------- the daemon, scraped


def endpoint_of(daemon: DaemonProcess) -> str:
    line = next(line for line in daemon.log_lines() if line.get("event") == "metrics endpoint listening")
    return f"http://{line['address']}:{line['port']}/metrics"


async def scrape(url: str) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    return samples_of(await trio.to_thread.run_sync(get))


def counter_samples(samples: Samples) -> Samples:
    """The samples that may never go down: counters and histogram series."""
    return {
        key: value
        for key, value in samples.items()
        if key[0].endswith(("_total", "_count", "_sum", "_bucket"))
        and not key[0].startswith("lbactors_supervisor_process")
    }


@pytest.fixture
def metrics_env(daemon_env: dict[str, str], tmp_path: Path) -> dict[str, str]:  # noqa: F811
    return daemon_env | {
        "LBACTORS_METRICS_ENABLED": "true",
        "LBACTORS_METRICS_PORT": "0",
        "LBACTORS_DAEMON_RUNTIME_DIR": str(tmp_path / "run"),
    }


async def settled_total(url: str, expected: int) -> Samples:
    """Scrape until ``expected`` operations are settled (the last status reaches the driver
    just before its delivery is acked), then once more a moment later."""
    with trio.fail_after(30):
        while total(await scrape(url), "lbactors_operations_total") < expected:
            await trio.sleep(0.05)
    await trio.sleep(0.5)
    return await scrape(url)


@pytest.mark.broker
async def test_scrape_counts_exactly_the_operations_sent(
    metrics_env: dict[str, str],
    notify_socket: NotifySocket,
    driver: OsloDriver,  # noqa: F811
    tmp_path: Path,
) -> None:
    with trio.fail_after(180):
        daemon = DaemonProcess(metrics_env, notify_socket, tmp_path / "daemon.log")
        await daemon.start()
        try:
            url = endpoint_of(daemon)
            before = await scrape(url)
            assert total(before, "lbactors_operations_total") == 0
            assert total(before, "lbactors_broker_connected") == 1
            assert total(before, "lbactors_worker_up") == 2
            trees = [LoadBalancerTree(i, members=2) for i in range(10)]
            with trio.fail_after(120):
                run = await trio.to_thread.run_sync(GatedRun(driver, trees).run)
            assert_clean(run)
            sent = collections.Counter(method for tree in trees for method, _, _ in tree.lifecycle())
            after = await settled_total(url, sum(sent.values()))
            assert total(after, "lbactors_operations_total") == sum(sent.values())
            assert total(after, "lbactors_operations_total", result="ok") == sum(sent.values())
            for method, count in sent.items():
                assert total(after, "lbactors_operations_total", method=method) == count, method
                assert total(after, "lbactors_operation_duration_seconds_count", method=method) == count
            assert total(after, "lbactors_deliveries_received_total") == sum(sent.values())
            assert total(after, "lbactors_in_flight_operations") == 0
            assert total(after, "lbactors_worker_restarts_total") == 0
        finally:
            await daemon.stop()


@pytest.mark.broker
async def test_worker_killed_mid_load_no_counter_goes_backwards(
    metrics_env: dict[str, str],
    notify_socket: NotifySocket,
    driver: OsloDriver,  # noqa: F811
    tmp_path: Path,
) -> None:
    with trio.fail_after(300):
        env = metrics_env | {"LBACTORS_BACKEND_NOOP_LATENCY": "0.02"}
        daemon = DaemonProcess(env, notify_socket, tmp_path / "daemon.log")
        await daemon.start()
        try:
            url = endpoint_of(daemon)
            scrapes: list[Samples] = []
            trees = [LoadBalancerTree(i, members=2) for i in range(20)]
            run = GatedRun(driver, trees, timeout=60)
            async with trio.open_nursery() as nursery:

                async def keep_scraping() -> None:
                    while True:
                        scrapes.append(counter_samples(await scrape(url)))
                        await trio.sleep(0.02)

                nursery.start_soon(keep_scraping)
                async with gated_load(run):
                    victim = daemon.worker_pids()[0]
                    os.kill(victim, signal.SIGKILL)
                planned = sum(len(tree.lifecycle()) for tree in trees)
                final = await settled_total(url, planned)
                nursery.cancel_scope.cancel()
            assert_clean(run)
            scrapes.append(counter_samples(final))
            assert len(scrapes) > 20
            for earlier, later in zip(scrapes, scrapes[1:], strict=False):
                for key, value in earlier.items():
                    assert later.get(key, 0.0) >= value, f"{key} went from {value} to {later.get(key)}"
            assert total(final, "lbactors_worker_restarts_total") == 1
            replays = [line["count"] for line in daemon.log_lines()
                       if line.get("event") == "replaying in-flight operations"]
            assert total(final, "lbactors_replayed_operations_total") == sum(replays)
            assert total(final, "lbactors_operations_total") == planned
            assert total(final, "lbactors_worker_up") == 2
        finally:
            await daemon.stop()


# ---------------------------------------------------------------- lbactors status


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_status_without_a_daemon_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_cli(["status", "--socket", str(tmp_path / SOCKET_NAME)], capsys)
    assert code == 1 and not out
    assert "no lbactors daemon is running" in err and "does not exist" in err
    # a socket left behind by a daemon that died
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()
    code, out, err = run_cli(["status", "--socket", str(tmp_path / SOCKET_NAME)], capsys)
    assert code == 1 and "nothing listens" in err
    # the runtime directory from the configuration
    monkeypatch.setenv("LBACTORS_DAEMON_RUNTIME_DIR", str(tmp_path / "nowhere"))
    code, out, err = run_cli(["status"], capsys)
    assert code == 1 and str(tmp_path / "nowhere" / SOCKET_NAME) in err


@pytest.mark.broker
async def test_status_of_a_live_daemon(
    metrics_env: dict[str, str],
    notify_socket: NotifySocket,
    driver: OsloDriver,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(120):
        env = metrics_env | {"LBACTORS_BACKEND_NOOP_LATENCY": "3"}
        daemon = DaemonProcess(env, notify_socket, tmp_path / "daemon.log")
        await daemon.start()
        try:
            path = tmp_path / "run" / SOCKET_NAME
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            tree, younger = LoadBalancerTree(0, members=1), LoadBalancerTree(1, members=1)
            method, kwargs, _ = tree.lifecycle()[0]
            driver.cast(method, **kwargs)
            await trio.sleep(0.3)
            driver.cast(method, **younger.lifecycle()[0][1])
            with trio.fail_after(10):
                while True:
                    code, out, err = await trio.to_thread.run_sync(
                        run_cli, ["status", "--socket", str(path), "--json"], capsys
                    )
                    assert code == 0, err
                    answer = json.loads(out)
                    if len(answer["slowest_in_flight"]) == 2 and answer["slowest_in_flight"][0]["age_s"] > 0.5:
                        break
                    await trio.sleep(0.1)
            assert answer["pid"] == daemon.pid
            assert sorted(w["pid"] for w in answer["workers"]) == daemon.worker_pids()
            assert all(w["up"] and w["restarts"] == 0 for w in answer["workers"])
            assert answer["broker"]["connected"] is True
            slow, young = answer["slowest_in_flight"]  # oldest first
            assert slow["lb_id"] == tree.lb_id and slow["method"] == method
            assert young["lb_id"] == younger.lb_id and young["age_s"] < slow["age_s"] - 0.2
            assert sum(w["in_flight"] for w in answer["workers"]) == 2
            # the text form, through the configuration's runtime directory
            monkeypatch.setenv("LBACTORS_DAEMON_RUNTIME_DIR", str(tmp_path / "run"))
            code, out, err = await trio.to_thread.run_sync(run_cli, ["status"], capsys)
            assert code == 0, err
            assert f"pid {daemon.pid}" in out and tree.lb_id in out and "broker     connected" in out
            daemon.signal(signal.SIGTERM)
            await trio.sleep(0.3)
            # still answering while it drains: the two slow operations are still there
            code, out, err = await trio.to_thread.run_sync(
                run_cli, ["status", "--socket", str(path), "--json"], capsys
            )
            assert code == 0, err
            assert len(json.loads(out)["slowest_in_flight"]) == 2
            assert await daemon.wait(timeout=30) == 0
            assert not path.exists()  # removed on the way out
        finally:
            await daemon.stop()


def test_runtime_directory_follows_the_configuration_then_systemd() -> None:
    from lbactors.config import load_config
    from supervisor.status import runtime_dir, runtime_dir_candidates

    configured = load_config(None, environ={}, overrides={"daemon.runtime_dir": "/srv/lb"})
    assert runtime_dir_candidates(configured, {"RUNTIME_DIRECTORY": "/run/x"}) == [Path("/srv/lb")]
    assert runtime_dir(configured, {}) == Path("/srv/lb")
    default = load_config(None, environ={})
    systemd = {"RUNTIME_DIRECTORY": "/run/lbactors-a:/run/other", "XDG_RUNTIME_DIR": "/run/user/7"}
    assert runtime_dir(default, systemd) == Path("/run/lbactors-a")
    assert runtime_dir_candidates(default, systemd) == [
        Path("/run/lbactors-a"),
        Path("/run/lbactors"),
        Path("/run/user/7/lbactors"),
        Path(f"/tmp/lbactors-{os.getuid()}"),
    ]


@pytest.mark.broker
async def test_failures_and_rejections_are_counted_by_result_and_reason(
    metrics_env: dict[str, str],
    notify_socket: NotifySocket,
    driver: OsloDriver,  # noqa: F811
    names: dict[str, str],
    amqp_url: str,
    tmp_path: Path,
) -> None:
    from lbactors.amqp import oslo
    from lbactors.amqp.connection import open_connection

    with trio.fail_after(120):
        env = metrics_env | {"LBACTORS_BACKEND_NOOP_FAIL_PATTERN": "^lb-7$"}
        daemon = DaemonProcess(env, notify_socket, tmp_path / "daemon.log")
        await daemon.start()
        try:
            url = endpoint_of(daemon)
            failing, fine = LoadBalancerTree(7, members=1), LoadBalancerTree(8, members=1)
            for tree in (failing, fine):
                method, kwargs, _ = tree.lifecycle()[0]
                driver.cast(method, **kwargs)
            driver.cast("frobnicate", widget={"id": "x"})  # no such method: dead-lettered
            async with open_connection(amqp_url) as connection:
                channel = await connection.open_channel()
                await channel.publish(
                    names["exchange"], names["topic"], b"not json", properties=oslo.CAST_PROPERTIES
                )
                await channel.close()
            with trio.fail_after(20):
                while True:
                    samples = await scrape(url)
                    settled = total(samples, "lbactors_operations_total")
                    rejected = total(samples, "lbactors_deliveries_rejected_total")
                    if settled >= 3 and rejected >= 2:
                        break
                    await trio.sleep(0.05)
            await trio.sleep(0.5)
            samples = await scrape(url)
            create = "loadbalancer_create"
            assert total(samples, "lbactors_operations_total", method=create, result="ok") == 1
            assert total(samples, "lbactors_operations_total", method=create, result="error") == 1
            assert total(
                samples, "lbactors_operations_total", method="other", result="dead_lettered"
            ) == 1
            assert total(samples, "lbactors_operations_total") == 3  # the malformed one never ran
            assert total(
                samples, "lbactors_deliveries_rejected_total", reason="invalid_operation",
                action="rejected",
            ) == 1
            assert total(
                samples, "lbactors_deliveries_rejected_total", reason="malformed", action="rejected"
            ) == 1
            assert total(samples, "lbactors_deliveries_received_total") == 4
        finally:
            await daemon.stop()


@pytest.mark.broker
async def test_a_metrics_port_in_use_stops_the_daemon_with_a_clear_error(
    metrics_env: dict[str, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = os.environ | metrics_env | {
            "LBACTORS_METRICS_PORT": str(taken.getsockname()[1]),
            "LBACTORS_LOG_FORMAT": "json",
        }
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-m", "supervisor", "serve"],
                env=env,
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                check=False,
            )
    assert done.returncode == 1
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith(b"{")]
    assert any(e.get("event") == "cannot open the metrics endpoint" for e in events)


@pytest.mark.broker
async def test_statistics_rounds_show_in_metrics_and_status(
    metrics_env: dict[str, str],
    notify_socket: NotifySocket,
    driver: OsloDriver,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(120):
        env = metrics_env | {"LBACTORS_STATS_INTERVAL": "0.3"}
        daemon = DaemonProcess(env, notify_socket, tmp_path / "daemon.log")
        await daemon.start()
        try:
            url = endpoint_of(daemon)
            # a load balancer with a listener, so that rounds have something to report (no
            # gated run: its status matching would take the rounds' casts for answers)
            for method, kwargs, _ in LoadBalancerTree(0, members=1).lifecycle()[:2]:
                driver.cast(method, **kwargs)
            with trio.fail_after(20):
                while total(await scrape(url), "lbactors_statistics_round_duration_seconds_count") < 3:
                    await trio.sleep(0.1)
            samples = await scrape(url)
            rounds = total(samples, "lbactors_statistics_round_duration_seconds_count")
            assert total(samples, "lbactors_statistics_last_round_timestamp_seconds") > 0
            assert total(samples, "lbactors_statistics_messages_total") > 0  # the listener's
            code, out, err = await trio.to_thread.run_sync(
                run_cli, ["status", "--socket", str(tmp_path / "run" / SOCKET_NAME), "--json"],
                capsys,
            )
            assert code == 0, err
            statistics = json.loads(out)["statistics"]
            assert statistics["rounds"] >= rounds
            assert statistics["last_duration_s"] is not None and statistics["last_ended"]
        finally:
            await daemon.stop()


def test_status_shows_the_cluster_shards_when_clustered() -> None:
    base = {
        "pid": 42, "uptime_s": 1.0, "workers": [],
        "broker": {"connected": True, "reconnects": 0, "last_disconnect": None, "in_flight": 0,
                   "confirms_pending": 0, "received": 0, "completed": 0, "rejected": 0,
                   "reasserted": 0},
        "statistics": {"rounds": 0, "last_duration_s": None, "last_messages": None,
                       "last_ended": None},
        "replayed": 0, "poisoned": 0, "slowest_in_flight": [], "cluster": None,
    }
    assert "cluster" not in render_status(base)
    clustered = base | {"cluster": {"shards": 12, "held": [0, 5, 7, 9], "settled": [0, 5],
                                    "republished": 80, "duplicates": 1, "released": 2}}
    assert "shards held 4/12 [0, 5, 7, 9] (settled 2)" in render_status(clustered)
