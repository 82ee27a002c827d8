"""Several lbactors daemons on one private 3-node RabbitMQ cluster (docs/cluster.md §11).

Marked ``cluster``: one ``rabbit_cluster(3)`` for the module (about 11 s to start here). The
daemons run through tests/cluster_daemons.py, the load is the bench driver's, the checks are
tests/cluster_checks.py's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from lbactors.amqp.broker_url import parse_url
from lbactors.config import load_config
from tests.cluster_checks import status_order_problems
from tests.cluster_daemons import (
    ClusterDaemons,
    open_cluster_daemons,
    open_recording_driver,
)
from tests.daemon_process import _alive
from tests.rabbit_cluster import RabbitCluster, rabbit_cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    with rabbit_cluster(3) as started:
        yield started


def test_daemon_environment_is_a_valid_configuration_in_cluster_mode(tmp_path: Path) -> None:
    """No broker needed: each daemon's overrides load (an unknown LBACTORS_ key would fail the
    daemon at start), its URL starts at its own node and lists all three."""
    nodes = [SimpleNamespace(amqp_port=port) for port in (7001, 7002, 7003)]
    daemons = ClusterDaemons(
        cluster=SimpleNamespace(nodes=nodes),  # type: ignore[arg-type]
        directory=tmp_path,
        count=3,
        prefix="lbt_env",
        cluster_mode=True,
        trace=False,
        extra_env={},
        nursery=None,  # type: ignore[arg-type]
        processes=[None] * 3,
    )
    for index in range(3):
        config = load_config(environ=daemons.env(index))
        assert config.cluster.enabled and config.cluster.shards == 12
        assert config.cluster.balance_interval == 1.0
        assert config.amqp.quorum_queues and config.daemon.workers == 1
        assert config.amqp.host == f"lbt_env-d{index}"
        ports = [host.port for host in parse_url(config.amqp.url).hosts]
        assert ports == [7001 + (index + k) % 3 for k in range(3)]


def connection_nodes(cluster: RabbitCluster, daemons: ClusterDaemons) -> dict[int, set[str]]:
    """Daemon index -> the nodes its gateway connections are on (from the client name the
    gateway gives its connection, ``lbactors gateway <host>``)."""
    listed = cluster.rabbitmqctl(0, "list_connections", "pid", "client_properties")
    nodes: dict[int, set[str]] = {index: set() for index in range(daemons.count)}
    for line in listed.splitlines():
        pid, _, properties = line.partition("\t")
        for index in range(daemons.count):
            if f"lbactors gateway {daemons.host(index)}" in properties:
                # a connection's pid names its node: <lbt...-1@localhost.1234.5678.0>
                nodes[index].add(pid.strip("<>").rsplit(".", 3)[0])
    return nodes


async def drive(daemons: ClusterDaemons, lbs: int) -> None:
    """A small load through the daemons; every status arrives, right and in order."""
    async with open_recording_driver(
        daemons, lbs=lbs, members=2, concurrency=10, timeout=30, drain=0.5
    ) as (driver, record):
        result = await driver.run_workload()
    assert driver.ok(result), {k: v for k, v in result.items() if k != "per_op_latency_ms"}
    assert result["errors"] == 0 and result["missing_status_updates"] == 0
    problems = status_order_problems(record.sent, record.statuses)
    assert problems == [], "\n".join(problems[:3])
    assert len({op.lb_id for op in record.sent}) == lbs


async def test_harness_smoke(cluster: RabbitCluster, tmp_path: Path) -> None:
    """The plumbing, in today's single-daemon mode (cluster mode is not there yet): 3 daemons,
    each connected to the node its URL starts at, serve a load; one is killed with SIGKILL
    (its pid and its worker's are gone) and the other two serve the next load."""
    started = time.monotonic()
    with trio.fail_after(240):
        # Without cluster mode one load balancer's operations go to all three daemons, and the
        # one that created an object re-asserts it (lbactors/actor.py) without knowing that
        # another ran later operations: seen here, a member's ACTIVE after the cascade
        # delete's DELETED. Cluster mode is what fixes that; here re-assertions are off.
        no_reassertions = {"LBACTORS_STATUS_REASSERT_AFTER": "[]"}
        async with open_cluster_daemons(
            cluster, tmp_path, 3, cluster_mode=False, extra_env=no_reassertions
        ) as daemons:
            nodes = await trio.to_thread.run_sync(connection_nodes, cluster, daemons)
            assert nodes == {i: {cluster.node_names[i]} for i in range(3)}, nodes

            await drive(daemons, lbs=20)

            victim = daemons.process(1)
            pid, workers = victim.pid, victim.worker_pids()
            assert len(workers) == 1
            status = await daemons.kill(1)
            assert status == -signal.SIGKILL
            assert not _alive(pid) and not any(_alive(w) for w in workers)
            assert not await trio.Path(f"/proc/{pid}").exists()

            await drive(daemons, lbs=20)
    print(f"test_harness_smoke: {time.monotonic() - started:.1f} s without the cluster's start")
