"""End to end: ``lbactors serve`` as a subprocess, the real broker, the real oslo.messaging as Octavia.

Every status dict is compared with what ``status-semantics.md`` promises (computed
independently in ``tests/octavia_side.py``); operations are gated as Octavia gates them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.daemon_process import DaemonProcess, NotifySocket
from tests.octavia_side import GatedRun, LoadBalancerTree, OsloDriver

pytestmark = pytest.mark.broker

BASELINE = Path(__file__).resolve().parents[2] / "shared" / "baseline"


@pytest.fixture
def daemon_env(amqp_url: str, names: dict[str, str]) -> dict[str, str]:
    return {
        "LBACTORS_AMQP_URL": amqp_url,
        "LBACTORS_AMQP_TOPIC": names["topic"],
        "LBACTORS_AMQP_DRIVER_TOPIC": names["driver_topic"],
        "LBACTORS_AMQP_EXCHANGE": names["exchange"],
        "LBACTORS_DAEMON_WORKERS": "2",
        "LBACTORS_STATS_INTERVAL": "0",
    }


@pytest.fixture
def driver(amqp_url: str, names: dict[str, str]) -> Iterator[OsloDriver]:
    oslo_driver = OsloDriver(
        amqp_url,
        topic=names["topic"],
        driver_topic=names["driver_topic"],
        exchange=names["exchange"],
    ).start()
    yield oslo_driver
    oslo_driver.stop()


async def start_daemon(
    env: dict[str, str], notify: NotifySocket, tmp_path: Path, name: str = "daemon"
) -> DaemonProcess:
    daemon = DaemonProcess(env, notify, tmp_path / f"{name}.log")
    await daemon.start()
    return daemon


async def run_gated(run: GatedRun) -> GatedRun:
    return await trio.to_thread.run_sync(run.run)


@asynccontextmanager
async def gated_load(
    run: GatedRun, *, interrupt_after: int = 100, finish_within: float = 240
) -> AsyncIterator[None]:
    """Drive ``run`` in the background; the body runs once ``interrupt_after`` operations got
    their status (to break something), then the load must finish within ``finish_within``."""
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def drive() -> None:
            await run_gated(run)
            done.set()

        nursery.start_soon(drive)
        with trio.fail_after(finish_within):
            while sum(len(r) for r in run.results.values()) < interrupt_after:
                if done.is_set():
                    pytest.fail(f"the load ended before {interrupt_after} operations completed")
                await trio.sleep(0.05)
        yield
        with trio.fail_after(finish_within):
            await done.wait()


def assert_clean(run: GatedRun) -> None:
    problems = run.mismatches()
    assert not problems, "\n".join(problems[:10])
    planned = sum(len(tree.lifecycle()) for tree in run.trees)
    assert sum(len(results) for results in run.results.values()) == planned


async def test_lifecycle_of_20_load_balancers(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    daemon = await start_daemon(daemon_env, notify_socket, tmp_path)
    try:
        trees = [LoadBalancerTree(i, members=2) for i in range(20)]
        with trio.fail_after(120):
            run = await run_gated(GatedRun(driver, trees))
        assert_clean(run)
        assert run.duplicates == 0
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(timeout=30) == 0
    finally:
        await daemon.stop()
    assert any(m.startswith("READY=1") for m in notify_socket.messages)
    assert any("STOPPING=1" in m.splitlines() for m in notify_socket.messages)
    ready = next(m for m in notify_socket.messages if m.startswith("READY=1"))
    assert "STATUS=workers 2/2, broker connected" in ready


async def test_worker_killed_mid_load_loses_nothing(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        env = daemon_env | {"LBACTORS_BACKEND_NOOP_LATENCY": "0.02"}
        daemon = await start_daemon(env, notify_socket, tmp_path)
        try:
            trees = [LoadBalancerTree(i, members=2) for i in range(20)]
            run = GatedRun(driver, trees, timeout=60)
            # kill one worker once a fair share of the work is done
            async with gated_load(run):
                victim = daemon.worker_pids()[0]
                os.kill(victim, signal.SIGKILL)
            assert_clean(run)
            assert victim not in daemon.worker_pids()
            assert len(daemon.worker_pids()) == 2
        finally:
            await daemon.stop()
        events = [line.get("event") for line in daemon.log_lines()]
        assert "worker died" in events


async def test_daemon_killed_mid_load_then_restarted_loses_nothing(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        env = daemon_env | {"LBACTORS_BACKEND_NOOP_LATENCY": "0.02"}
        first = await start_daemon(env, notify_socket, tmp_path, "first")
        second: DaemonProcess | None = None
        try:
            trees = [LoadBalancerTree(i, members=2) for i in range(20)]
            run = GatedRun(driver, trees, timeout=90)
            async with gated_load(run):
                for pid in first.worker_pids():
                    os.kill(pid, signal.SIGKILL)
                first.signal(signal.SIGKILL)
                await first.wait(timeout=10)
                notify_socket.messages.clear()
                second = await start_daemon(env, notify_socket, tmp_path, "second")
            assert_clean(run)
        finally:
            await first.stop()
            if second is not None:
                await second.stop()


async def test_sigterm_under_load_exits_zero_and_loses_nothing(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        env = daemon_env | {
            "LBACTORS_BACKEND_NOOP_LATENCY": "0.02",
            "LBACTORS_DAEMON_GRACE_PERIOD": "10",
        }
        first = await start_daemon(env, notify_socket, tmp_path, "first")
        second: DaemonProcess | None = None
        try:
            trees = [LoadBalancerTree(i, members=2) for i in range(20)]
            run = GatedRun(driver, trees, timeout=90)
            async with gated_load(run):
                first.signal(signal.SIGTERM)
                assert await first.wait(timeout=20) == 0
                second = await start_daemon(env, notify_socket, tmp_path, "second")
            assert_clean(run)
        finally:
            await first.stop()
            if second is not None:
                await second.stop()


async def test_calls_are_answered_through_workers(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        daemon = await start_daemon(daemon_env, notify_socket, tmp_path)
        try:
            metadata = await trio.to_thread.run_sync(driver.call, "get_supported_flavor_metadata")
            assert isinstance(metadata, dict) and metadata
            key = next(iter(metadata))
            valid = await trio.to_thread.run_sync(
                lambda: driver.call("validate_flavor", flavor_metadata={key: 1})
            )
            assert valid == {"valid": True}
            invalid = await trio.to_thread.run_sync(
                lambda: driver.call("validate_flavor", flavor_metadata={"no_such_key": 1})
            )
            assert invalid["valid"] is False and "no_such_key" in invalid["reason"]
            az = await trio.to_thread.run_sync(driver.call, "get_supported_availability_zone_metadata")
            assert isinstance(az, dict)
            tree = LoadBalancerTree(1)
            created = await trio.to_thread.run_sync(
                lambda: driver.call("loadbalancer_create", loadbalancer=tree.lb())
            )
            assert created is True
            status = await trio.to_thread.run_sync(driver.next_status)
            assert status == {
                "loadbalancers": [
                    {"id": tree.lb_id, "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}
                ]
            }
        finally:
            await daemon.stop()


@pytest.mark.slow
@pytest.mark.skipif(not BASELINE.is_dir(), reason="../shared/baseline is not next to the checkout")
async def test_baseline_driver_sim_reports_no_errors(
    amqp_url: str, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    # The driver simulator uses the fixed production topics: isolate it in its own vhost.
    with trio.fail_after(300):
        vhost = f"lbactors-{uuid.uuid4().hex[:8]}"
        await trio.run_process(["rabbitmqctl", "-q", "add_vhost", vhost])
        await trio.run_process(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]
        )
        url = f"{amqp_url.rstrip('/')}/{vhost}"
        daemon = await start_daemon(
            {"LBACTORS_AMQP_URL": url, "LBACTORS_STATS_INTERVAL": "0"}, notify_socket, tmp_path
        )
        try:
            result = await trio.run_process(
                [
                    sys.executable,
                    str(BASELINE / "octavia_driver_sim.py"),
                    "--amqp-url",
                    url.replace("amqp://", "rabbit://", 1),
                    "--lbs",
                    "200",
                    "--members",
                    "4",
                    "--concurrency",
                    "50",
                    "--timeout",
                    "60",
                    "--max-duration",
                    "280",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            lines = result.stdout.decode().strip().splitlines()
            assert lines, f"no result from the driver sim: {result.stderr.decode()[-3000:]}"
            report = json.loads(lines[-1])
            assert report["errors"] == 0, report.get("samples")
            assert report["missing_status_updates"] == 0, report.get("samples")
            assert report["ops_completed"] == report["ops_planned"] == 200 * 18
        finally:
            await daemon.stop()
            await trio.run_process(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)


async def test_statistics_operating_status_and_out_of_sync_repair(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    env = daemon_env | {"LBACTORS_STATS_INTERVAL": "0.3", "LBACTORS_STATS_SYNC_EVERY": "1"}
    trees = [LoadBalancerTree(i) for i in range(3)]
    driver.endpoint.active_lb_ids = [tree.lb_id for tree in trees] + ["lb-unknown-to-lbactors"]
    daemon = await start_daemon(env, notify_socket, tmp_path)
    try:
        for tree in trees:
            for method, kwargs, _ in tree.lifecycle()[:2]:  # the load balancer and a listener
                await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))  # noqa: B023
        listener_ids = {tree.listener_id for tree in trees}
        stats_seen: dict[str, dict[str, int]] = {}
        offline: set[str] = set()
        online: set[str] = set()
        with trio.fail_after(30):
            while not (
                set(stats_seen) == listener_ids
                and "lb-unknown-to-lbactors" in offline
                and online >= {tree.lb_id for tree in trees}
            ):
                try:
                    stats = driver.endpoint.statistics.get_nowait()
                except queue.Empty:
                    stats = None
                if stats is not None:
                    assert stats["listeners"], "never an empty statistics cast"
                    for entry in stats["listeners"]:
                        assert set(entry) == {
                            "id",
                            "bytes_in",
                            "bytes_out",
                            "active_connections",
                            "total_connections",
                            "request_errors",
                        }
                        assert all(isinstance(v, int) for k, v in entry.items() if k != "id")
                        assert entry["id"] in listener_ids
                        stats_seen[entry["id"]] = entry
                try:
                    status = driver.endpoint.statuses.get_nowait()
                except queue.Empty:
                    await trio.sleep(0.05)
                    continue
                for entry in status.get("loadbalancers", []):
                    if "provisioning_status" in entry:
                        continue
                    # operating-status reports carry id and operating_status only
                    assert set(entry) == {"id", "operating_status"}
                    if entry["operating_status"] == "OFFLINE":
                        offline.add(entry["id"])
                    elif entry["operating_status"] == "ONLINE":
                        online.add(entry["id"])
        # the load balancers lbactors owns are never reported OFFLINE
        assert offline == {"lb-unknown-to-lbactors"}
    finally:
        await daemon.stop()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy (.ci/run installs it)")
async def test_haproxy_backend_through_the_daemon(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    """``backend = "haproxy"``: an Octavia load balancer and listener cast through oslo end up
    as a HAProxy answering on the VIP; cascade delete frees the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # unix socket paths are short: not under pytest's long tmp_path
    state_dir = tempfile.mkdtemp(prefix="lbh-", dir="/tmp")
    env = daemon_env | {
        "LBACTORS_BACKEND_NAME": "haproxy",
        "LBACTORS_BACKEND_HAPROXY_STATE_DIR": state_dir,
    }
    tree = LoadBalancerTree(7)
    lb = tree.lb() | {"vip_address": "127.0.0.1"}
    listener = tree.listener() | {"protocol_port": port}
    daemon = await start_daemon(env, notify_socket, tmp_path)
    try:
        for method, kwargs in [
            ("loadbalancer_create", {"loadbalancer": lb}),
            ("listener_create", {"listener": listener, "cert": None}),
        ]:
            await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))  # noqa: B023
            status = await trio.to_thread.run_sync(driver.next_status)
            assert all(
                entry["provisioning_status"] == "ACTIVE"
                for entries in status.values()
                for entry in entries
            ), status
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)  # HAProxy listens
        await stream.aclose()
        full = tree.full_tree() | {"vip_address": "127.0.0.1"}
        full["listeners"][0]["protocol_port"] = port
        await trio.to_thread.run_sync(
            lambda: driver.cast("loadbalancer_delete", loadbalancer=full, cascade=True)
        )
        status = await trio.to_thread.run_sync(driver.next_status)
        assert status["loadbalancers"][0]["provisioning_status"] == "DELETED", status
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
    finally:
        await daemon.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
