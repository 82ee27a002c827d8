"""N ``lbactors serve`` daemons on the private 3-node RabbitMQ cluster (tests/rabbit_cluster.py),
and the bench driver with a record of what it sent and received, for the cluster tests
(docs/cluster.md §11).

    with rabbit_cluster(3) as cluster:                       # once per module
        ...
        async with open_cluster_daemons(cluster, tmp_path, 3) as daemons:
            async with open_recording_driver(daemons, lbs=30) as (driver, record):
                result = await driver.run_workload()
            await daemons.kill(1)                            # kill -9, pid and workers gone
            await daemons.start(1)                           # a fresh process, same settings

Daemon ``i`` (:meth:`ClusterDaemons.env`):

- ``LBACTORS_AMQP_URL`` lists the 3 nodes starting at node ``i % nodes`` (broker_url.py's
  comma syntax), so daemon i connects to node i and fails over to the next;
- ``LBACTORS_AMQP_HOST`` ``<prefix>-d<i>`` (distinct), topics and exchange unique per test,
  ``LBACTORS_AMQP_QUORUM_QUEUES=true``, ``LBACTORS_DAEMON_WORKERS=1``, the noop backend;
- with ``cluster_mode``: ``LBACTORS_CLUSTER_ENABLED=true``, ``..._SHARDS=12``,
  ``..._BALANCE_INTERVAL=1``;
- with ``trace`` (default: when the noop backend has a ``trace_file`` option, which is being
  added): ``LBACTORS_BACKEND_NOOP_TRACE_FILE=<dir>/trace-d<i>-<start>.log``, one file per
  process started (:attr:`ClusterDaemons.trace_files`);
- ``extra_env`` last (overrides anything above).

Each start is a new ``DaemonProcess`` with its own notification socket (a restarted daemon's
``READY=1`` is its own), its output appended to ``<dir>/daemon<i>.log``.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from bench.driver import Driver, DriverConfig, open_driver
from bench.workload import Operation
from lbactors.amqp.connection import open_connection
from lbactors.amqp.errors import ChannelClosed
from lbactors.backends.noop import NoopOptions
from tests.cluster_checks import SentOperation
from tests.daemon_process import DaemonProcess, NotifySocket, _alive
from tests.rabbit_cluster import RabbitCluster

CLUSTER_SHARDS = 12
#: a daemon's READY=1 after its start
READY_TIMEOUT = 60.0
#: a killed daemon's workers to exit after it (they see their socket to it close)
WORKERS_EXIT_TIMEOUT = 10.0


def noop_has_trace_file() -> bool:
    """Whether the noop backend takes ``trace_file`` (an unknown option fails the daemon)."""
    return any(f.name == "trace_file" for f in msgspec.structs.fields(NoopOptions))


def cluster_url(cluster: RabbitCluster, first: int) -> str:
    """Every node of ``cluster`` in one broker URL, starting at node ``first`` and wrapping."""
    count = len(cluster.nodes)
    hosts = [cluster.nodes[(first + k) % count] for k in range(count)]
    return "amqp://" + ",".join(f"guest:guest@127.0.0.1:{n.amqp_port}" for n in hosts) + "/"


def list_consumers(cluster: RabbitCluster, index: int = 0) -> str:
    """``rabbitmqctl list_consumers -p / queue_name channel_pid active`` on node ``index``
    (parse it with ``tests.cluster_checks.shard_owners``)."""
    return cluster.rabbitmqctl(
        index, "list_consumers", "-p", "/", "queue_name", "channel_pid", "active"
    )


@dataclass
class ClusterDaemons:
    """The daemons of one test; see the module docstring. Index ``i`` is a daemon's slot:
    ``processes[i]`` is its current (or last) process, None before its first start."""

    cluster: RabbitCluster
    directory: Path
    count: int
    prefix: str
    cluster_mode: bool
    trace: bool
    extra_env: Mapping[str, str]
    nursery: trio.Nursery
    processes: list[DaemonProcess | None] = field(default_factory=list)
    notify_sockets: list[NotifySocket] = field(default_factory=list)
    #: every trace file given to a process, in start order
    trace_files: list[Path] = field(default_factory=list)
    _starts: int = 0

    @property
    def topic(self) -> str:
        return f"{self.prefix}_lb_listener"

    @property
    def driver_topic(self) -> str:
        return f"{self.prefix}_driver_listener"

    @property
    def exchange(self) -> str:
        return f"{self.prefix}_common"

    def host(self, index: int) -> str:
        return f"{self.prefix}-d{index}"

    def url(self, index: int) -> str:
        return cluster_url(self.cluster, index % len(self.cluster.nodes))

    def env(self, index: int) -> dict[str, str]:
        """The environment overrides of daemon ``index`` (without the trace file)."""
        env = {
            "LBACTORS_AMQP_URL": self.url(index),
            "LBACTORS_AMQP_HOST": self.host(index),
            "LBACTORS_AMQP_TOPIC": self.topic,
            "LBACTORS_AMQP_DRIVER_TOPIC": self.driver_topic,
            "LBACTORS_AMQP_EXCHANGE": self.exchange,
            "LBACTORS_AMQP_QUORUM_QUEUES": "true",
            "LBACTORS_DAEMON_WORKERS": "1",
            "LBACTORS_BACKEND_NAME": "noop",
        }
        if self.cluster_mode:
            env |= {
                "LBACTORS_CLUSTER_ENABLED": "true",
                "LBACTORS_CLUSTER_SHARDS": str(CLUSTER_SHARDS),
                "LBACTORS_CLUSTER_BALANCE_INTERVAL": "1",
            }
        return env | dict(self.extra_env)

    def process(self, index: int) -> DaemonProcess:
        process = self.processes[index]
        assert process is not None, f"daemon {index} was never started"
        return process

    def running(self, index: int) -> bool:
        process = self.processes[index]
        return (
            process is not None
            and process.process is not None
            and process.process.returncode is None
        )

    async def start(self, index: int, *, ready_timeout: float = READY_TIMEOUT) -> DaemonProcess:
        """Start daemon ``index`` (a new process) and wait for its ``READY=1``."""
        assert not self.running(index), f"daemon {index} is running"
        notify = NotifySocket()
        await notify.bind()
        self.nursery.start_soon(notify.serve)
        self.notify_sockets.append(notify)
        env = self.env(index)
        if self.trace:
            trace_file = self.directory / f"trace-d{index}-{self._starts}.log"
            self.trace_files.append(trace_file)
            env["LBACTORS_BACKEND_NOOP_TRACE_FILE"] = str(trace_file)
        self._starts += 1
        process = DaemonProcess(env, notify, self.directory / f"daemon{index}.log")
        self.processes[index] = process
        await process.start(ready_timeout=ready_timeout)
        return process

    async def kill(self, index: int, signum: int = signal.SIGKILL) -> int:
        """Signal daemon ``index``'s supervisor (``kill -9`` by default), wait until it is
        reaped and its workers have exited (SIGKILLed after ``WORKERS_EXIT_TIMEOUT``, which
        fails the call: they should follow it); its exit status."""
        process = self.process(index)
        workers = process.worker_pids()
        process.signal(signum)
        status = await process.wait(timeout=30)
        with trio.move_on_after(WORKERS_EXIT_TIMEOUT):
            while any(_alive(pid) for pid in workers):
                await trio.sleep(0.05)
        left = [pid for pid in workers if _alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"workers {left} of daemon {index} outlived it"
        return status

    async def stop(self, index: int) -> int | None:
        """SIGTERM (the orderly drain) and wait; see ``DaemonProcess.stop``."""
        process = self.processes[index]
        return None if process is None else await process.stop()

    async def delete_topology(self) -> None:
        """Delete the queues of this test's names (the intake queues and the driver topic)."""
        queues = [self.topic, self.driver_topic] + [self.host_queue(i) for i in range(self.count)]
        async with open_connection(self.url(0)) as connection:
            channel = await connection.open_channel()
            for name in queues:
                try:
                    await channel.queue_delete(name)
                except ChannelClosed:
                    channel = await connection.open_channel()
            try:
                await channel.exchange_delete(self.exchange)
            except ChannelClosed:
                pass

    def host_queue(self, index: int) -> str:
        return f"{self.topic}.{self.host(index)}"

    def driver_config(self, **options: Any) -> DriverConfig:
        """The bench driver set for these daemons (quorum driver queues, their names)."""
        defaults: dict[str, Any] = {
            "amqp_url": self.url(0),
            "topic": self.topic,
            "driver_topic": self.driver_topic,
            "exchange": self.exchange,
            "host": f"{self.prefix}-driver",
            "quorum": True,
        }
        return DriverConfig(**(defaults | options))


@asynccontextmanager
async def open_cluster_daemons(
    cluster: RabbitCluster,
    directory: Path,
    count: int = 3,
    *,
    cluster_mode: bool = True,
    trace: bool | None = None,
    extra_env: Mapping[str, str] | None = None,
    start: bool = True,
) -> AsyncIterator[ClusterDaemons]:
    """``count`` daemons on ``cluster``, all started (unless ``start`` is False); on exit every
    one still running is stopped (SIGTERM, then SIGKILL) and the test's queues are deleted."""
    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        daemons = ClusterDaemons(
            cluster=cluster,
            directory=directory,
            count=count,
            prefix=f"lbt_{uuid.uuid4().hex[:12]}",
            cluster_mode=cluster_mode,
            trace=noop_has_trace_file() if trace is None else trace,
            extra_env=extra_env or {},
            nursery=nursery,
            processes=[None] * count,
        )
        try:
            if start:
                for index in range(count):
                    await daemons.start(index)
            yield daemons
        finally:
            with trio.CancelScope(shield=True):
                for index in range(count):
                    await daemons.stop(index)
                with trio.move_on_after(30):
                    await daemons.delete_topology()
                for notify in daemons.notify_sockets:
                    notify.close()
            nursery.cancel_scope.cancel()


@dataclass
class DriverRecord:
    """What the driver cast (in cast order) and every status update it received (in arrival
    order): the input of ``tests.cluster_checks.status_order_problems``."""

    sent: list[SentOperation] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)


def _lb_id(op: Operation) -> str:
    lb = op.lb
    ids = getattr(lb, "ids", None)  # a TemplatedPlan's; a LoadBalancerPlan has lb_id
    return str(ids["lb_id"] if ids is not None else getattr(lb, "lb_id", ""))


def record_driver(driver: Driver) -> DriverRecord:
    """Record ``driver``'s casts and status updates from now on (it wraps two of its methods
    on the instance: bench/driver.py keeps no per-load-balancer history of its own)."""
    record = DriverRecord()
    cast, on_status = driver._cast, driver._on_status

    async def recording_cast(op: Operation) -> None:
        record.sent.append(SentOperation(_lb_id(op), op.method, (op.otype, op.oid, op.expect)))
        await cast(op)

    async def recording_on_status(t: float, status: Any) -> None:
        if isinstance(status, dict):
            record.statuses.append(status)
        await on_status(t, status)

    driver._cast = recording_cast  # type: ignore[method-assign]
    driver._on_status = recording_on_status  # type: ignore[method-assign]
    return record


@asynccontextmanager
async def open_recording_driver(
    daemons: ClusterDaemons, **options: Any
) -> AsyncIterator[tuple[Driver, DriverRecord]]:
    """The bench driver on ``daemons``' names (``options`` override ``DriverConfig`` fields),
    recording from the start; it deletes its own queues on exit."""
    async with open_driver(daemons.driver_config(**options)) as driver:
        yield driver, record_driver(driver)
