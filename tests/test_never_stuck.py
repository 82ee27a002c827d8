"""Never down, never stuck (issue 11), end to end: ``lbactors serve`` as a subprocess, the real
broker, the real oslo.messaging as Octavia.

Each test breaks one thing the way it breaks in production (a worker stopped for good or for
a moment, an operation that kills every worker it reaches, a backend call that hangs with or
without giving way to cancellation, a SIGTERM while such a call runs, a hung worker during
statistics rounds) and checks what Octavia sees: every load balancer gets its final status
(the oracle of ``tests/octavia_side.py``), the object at fault gets ERROR with its parents
ACTIVE (``status-semantics.md``), and the daemon keeps serving. Timings are small (pings
every 0.3 s, deadlines of about a second) and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio

from lbactors.amqp.connection import open_connection
from lbactors.routing import shard
from tests.daemon_process import DaemonProcess, NotifySocket, _alive
from tests.octavia_side import GatedRun, LoadBalancerTree, OsloDriver, normalized

pytestmark = pytest.mark.broker

WORKERS = 2
#: the name of the one member a backend pattern singles out (``LoadBalancerTree(fail_name=)``)
FAULTY = "faulty-member"
FAST_PINGS = {"LBACTORS_DAEMON_PING_INTERVAL": "0.3", "LBACTORS_DAEMON_PING_TIMEOUT": "2"}


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def daemon_env(amqp_url: str, names: dict[str, str]) -> dict[str, str]:
    return {
        "LBACTORS_AMQP_URL": amqp_url,
        "LBACTORS_AMQP_TOPIC": names["topic"],
        "LBACTORS_AMQP_DRIVER_TOPIC": names["driver_topic"],
        "LBACTORS_AMQP_EXCHANGE": names["exchange"],
        "LBACTORS_DAEMON_WORKERS": str(WORKERS),
        "LBACTORS_STATS_INTERVAL": "0",
        # these tests count the statuses they get: no re-assertion of created objects
        "LBACTORS_STATUS_REASSERT_AFTER": "[]",
        "LBACTORS_DAEMON_STOP_TIMEOUT": "1",
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


@asynccontextmanager
async def running_daemon(
    env: dict[str, str], notify: NotifySocket, tmp_path: Path
) -> AsyncIterator[DaemonProcess]:
    """The daemon, stopped at the end; any worker this test stopped is continued first (so that
    it can exit), the only time a test touches a worker process it did not mean to break."""
    daemon = DaemonProcess(env, notify, tmp_path / "daemon.log")
    try:
        await daemon.start()
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.returncode is None:
            for pid in daemon.worker_pids():
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        await daemon.stop()


# ---------------------------------------------------------------------- helpers


def canonical(status: dict[str, Any]) -> str:
    """A sort key that does not depend on the order of a dict's keys."""
    return json.dumps(status, sort_keys=True)


def events(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in daemon.log_lines() if line.get("event") == event]


def worker_pid(daemon: DaemonProcess, index: int) -> int:
    """The pid of the current incarnation of worker ``index`` (from its "worker ready" line)."""
    ready = [line["pid"] for line in events(daemon, "worker ready") if line.get("worker") == index]
    assert ready, f"worker {index} never logged that it is ready"
    pid = int(ready[-1])
    assert pid in daemon.worker_pids()
    return pid


def completed(run: GatedRun) -> int:
    return sum(len(results) for results in run.results.values())


def assert_clean(run: GatedRun) -> None:
    problems = run.mismatches()
    assert not problems, "\n".join(problems[:10])
    planned = sum(len(tree.lifecycle()) for tree in run.trees)
    assert completed(run) == planned
    assert not run.unmatched, run.unmatched[:3]


@asynccontextmanager
async def gated_load(
    run: GatedRun, *, interrupt_after: int, finish_within: float = 60
) -> AsyncIterator[None]:
    """Drive ``run`` (Octavia's gating) in the background; the body runs once
    ``interrupt_after`` operations got their status, then the whole run must finish within
    ``finish_within`` seconds."""
    done = trio.Event()

    async def drive() -> None:
        # abandon_on_cancel: a failing test is not held by oslo's threads (each status wait
        # of the run is bounded by its own timeout)
        await trio.to_thread.run_sync(run.run, abandon_on_cancel=True)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drive)
        with trio.fail_after(30):
            while completed(run) < interrupt_after and not done.is_set():
                await trio.sleep(0.02)
        assert not done.is_set(), "the load ended before the fault was injected"
        yield
        with trio.fail_after(finish_within):
            await done.wait()


async def run_gated(run: GatedRun, within: float = 60) -> GatedRun:
    with trio.fail_after(within):
        await trio.to_thread.run_sync(run.run, abandon_on_cancel=True)
    return run


def member_error(tree: LoadBalancerTree, i: int) -> dict[str, list[dict[str, str]]]:
    """status-semantics.md, create failure: the member ERROR / ERROR, its parents ACTIVE with
    no operating status."""
    return {
        "members": [
            {"id": tree.member_ids[i], "provisioning_status": "ERROR", "operating_status": "ERROR"}
        ],
        "pools": [{"id": tree.pool_id, "provisioning_status": "ACTIVE"}],
        "listeners": [{"id": tree.listener_id, "provisioning_status": "ACTIVE"}],
        "loadbalancers": [{"id": tree.lb_id, "provisioning_status": "ACTIVE"}],
    }


class FaultyTree(LoadBalancerTree):
    """A tree whose last member (named ``FAULTY``) the backend cannot create: its
    ``member_create`` must end in ERROR, and every later operation of the load balancer must
    still complete. No cascade delete at the end (it would meet the faulty member again)."""

    def __init__(self, index: int) -> None:
        super().__init__(index, members=2, fail_name=FAULTY)

    def lifecycle(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        ops = []
        faulty = len(self.member_ids) - 1
        for method, kwargs, expected in super().lifecycle():
            if method == "loadbalancer_delete":
                continue
            if method == "member_create" and kwargs["member"]["name"] == FAULTY:
                expected = member_error(self, faulty)
            ops.append((method, kwargs, expected))
        return ops


def shards_of(trees: list[LoadBalancerTree]) -> dict[int, list[LoadBalancerTree]]:
    by_worker: dict[int, list[LoadBalancerTree]] = {i: [] for i in range(WORKERS)}
    for tree in trees:
        by_worker[shard(tree.lb_id, WORKERS)].append(tree)
    return by_worker


def trees_on_both_workers(count: int, start: int = 0) -> list[LoadBalancerTree]:
    """``count`` trees, at least one on each worker (load balancer ids are random)."""
    while True:
        trees = [LoadBalancerTree(start + i) for i in range(count)]
        if all(shards_of(trees).values()):
            return trees


# ---------------------------------------------------------------------- liveness


async def test_worker_stopped_for_good_is_killed_and_replaced(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        env = daemon_env | FAST_PINGS | {"LBACTORS_BACKEND_NOOP_LATENCY": "0.02"}
        trees = trees_on_both_workers(8)
        async with running_daemon(env, notify_socket, tmp_path) as daemon:
            run = GatedRun(driver, trees, timeout=30)
            async with gated_load(run, interrupt_after=30):
                # the worker holding the most unfinished load balancers: operations in flight
                unfinished = {
                    index: sum(len(run.results[t.lb_id]) < len(t.lifecycle()) for t in group)
                    for index, group in shards_of(trees).items()
                }
                victim_index = max(unfinished, key=lambda index: unfinished[index])
                victim = worker_pid(daemon, victim_index)
                os.kill(victim, signal.SIGSTOP)  # never continued: only the supervisor can end it
            assert_clean(run)
            assert not _alive(victim)
            assert len(daemon.worker_pids()) == WORKERS
            assert daemon.process is not None and daemon.process.returncode is None
        kills = events(daemon, "killing worker")
        assert len(kills) == 1, kills
        assert kills[0]["pid"] == victim and kills[0]["worker"] == victim_index
        assert kills[0]["reason"].startswith("silent for "), kills[0]
        assert kills[0]["in_flight"] >= 1
        died = events(daemon, "worker died")
        assert [(d["pid"], d["signal"]) for d in died] == [(victim, "SIGKILL")]
        assert died[0]["in_flight"] >= 1  # replayed: the run above is complete


async def test_worker_stopped_briefly_is_not_killed(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    """Stopped for 1 s (three ping intervals) under a ping timeout of 2.5 s, then idle for
    longer than the ping timeout: no false alarm."""
    with trio.fail_after(300):
        env = daemon_env | FAST_PINGS | {
            "LBACTORS_DAEMON_PING_TIMEOUT": "2.5",
            "LBACTORS_BACKEND_NOOP_LATENCY": "0.02",
        }
        trees = trees_on_both_workers(6)
        async with running_daemon(env, notify_socket, tmp_path) as daemon:
            before = daemon.worker_pids()
            run = GatedRun(driver, trees, timeout=30)
            async with gated_load(run, interrupt_after=20):
                victim = worker_pid(daemon, 0)
                os.kill(victim, signal.SIGSTOP)
                await trio.sleep(1.0)
                assert _alive(victim), "killed while stopped for 1 s"
                os.kill(victim, signal.SIGCONT)
            assert_clean(run)
            # idle for longer than the ping timeout: the pings alone keep both workers alive
            await trio.sleep(3)
            assert daemon.worker_pids() == before
        assert events(daemon, "killing worker") == []
        assert events(daemon, "worker died") == []


# ---------------------------------------------------------------------- poison operations


async def dead_letter_queue(channel: Any, dlx: str, name: str) -> None:
    """``name``, bound to the dead-letter exchange ``dlx`` (which the daemon publishes to)."""
    await channel.exchange_declare(dlx, "fanout", auto_delete=True)
    await channel.queue_declare(name, arguments={"x-expires": 60_000})
    await channel.queue_bind(name, dlx, "")


async def read_dead_letters(channel: Any, name: str, count: int, within: float) -> list[Any]:
    """The first ``count`` messages of queue ``name``, and whatever else came meanwhile."""
    dead: list[Any] = []
    consumer = await channel.basic_consume(name, no_ack=True)
    with trio.move_on_after(within):
        async for delivery in consumer:
            dead.append(delivery)
            if len(dead) >= count:
                break
    with trio.move_on_after(0.5):  # one more would be one too many
        async for delivery in consumer:
            dead.append(delivery)
    return dead


def same_worker_trees(first: LoadBalancerTree, count: int, *, same: bool) -> list[LoadBalancerTree]:
    """``count`` trees on the worker of ``first`` (``same``) or on another one."""
    trees: list[LoadBalancerTree] = []
    index = 0
    while len(trees) < count:
        tree = LoadBalancerTree(index)
        index += 1
        if (shard(tree.lb_id, WORKERS) == shard(first.lb_id, WORKERS)) == same:
            trees.append(tree)
    return trees


async def test_poison_operation_gets_error_and_is_dead_lettered(
    amqp_url: str,
    unique_prefix: str,
    daemon_env: dict[str, str],
    notify_socket: NotifySocket,
    driver: OsloDriver,
    tmp_path: Path,
) -> None:
    """A member whose create kills every worker it reaches: after ``poison_after`` (2) deaths
    it is given up on (ERROR, dead-lettered); everything else completes, the daemon serves on."""
    with trio.fail_after(300):
        dlx, dead_queue = f"{unique_prefix}_dlx", f"{unique_prefix}_dead"
        env = daemon_env | {
            "LBACTORS_BACKEND_NOOP_CRASH_PATTERN": f"^{FAULTY}$",
            "LBACTORS_AMQP_DEAD_LETTER_EXCHANGE": dlx,
            "LBACTORS_BACKEND_NOOP_LATENCY": "0.02",
        }
        poison_tree = FaultyTree(900)
        # the other load balancers on the other worker: see the next test for those beside it
        trees = [*same_worker_trees(poison_tree, 4, same=False), poison_tree]
        async with open_connection(amqp_url) as connection:
            channel = await connection.open_channel()
            await dead_letter_queue(channel, dlx, dead_queue)
            async with running_daemon(env, notify_socket, tmp_path) as daemon:
                # the poison tree's later operations (health monitor, L7, updates) prove that its
                # load balancer is served after the poison, by the third incarnation of its worker
                run = await run_gated(GatedRun(driver, trees, timeout=30))
                assert_clean(run)
                assert daemon.process is not None and daemon.process.returncode is None
                assert len(daemon.worker_pids()) == WORKERS
                dead = await read_dead_letters(channel, dead_queue, 1, within=10)
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(timeout=20) == 0
            await channel.queue_delete(dead_queue)
        poisoned = events(daemon, "poison operation: not replayed again")
        assert len(poisoned) == 1, poisoned
        assert poisoned[0]["lb_id"] == poison_tree.lb_id
        assert poisoned[0]["method"] == "member_create"
        assert poison_tree.member_ids[-1] in poisoned[0]["args"]
        poison_worker = shard(poison_tree.lb_id, WORKERS)
        died = events(daemon, "worker died")
        assert [(d["worker"], d["exit_code"]) for d in died] == [(poison_worker, 70)] * 2
        assert len(dead) == 1
        headers = dead[0].properties.headers
        assert headers["x-lbactors-reason"].startswith("PoisonOperation: "), headers
        assert poison_tree.member_ids[-1].encode() in dead[0].body


async def test_poison_operation_spares_the_operations_in_flight_beside_it(
    amqp_url: str,
    unique_prefix: str,
    daemon_env: dict[str, str],
    notify_socket: NotifySocket,
    driver: OsloDriver,
    tmp_path: Path,
) -> None:
    """Issue 11: "Other operations of that worker are replayed as today". A slow operation of
    another load balancer of the same worker (its backend call hangs until its 2.5 s deadline,
    which ends it in ERROR) is in flight when the poison kills the worker, twice: it must be
    replayed, never taken for the poison. (Before the isolation of suspects, both were
    declared poison.)"""
    dlx, dead_queue = f"{unique_prefix}_dlx", f"{unique_prefix}_dead"
    env = daemon_env | {
        "LBACTORS_BACKEND_NOOP_CRASH_PATTERN": f"^{FAULTY}$",
        "LBACTORS_BACKEND_NOOP_HANG_PATTERN": "^slow-member$",
        "LBACTORS_BACKEND_NOOP_OPERATION_DEADLINE": "2.5",
        "LBACTORS_AMQP_DEAD_LETTER_EXCHANGE": dlx,
    }
    poison_tree = FaultyTree(900)
    bystander = LoadBalancerTree(901, members=1, fail_name="slow-member")
    while shard(bystander.lb_id, WORKERS) != shard(poison_tree.lb_id, WORKERS):
        bystander = LoadBalancerTree(901, members=1, fail_name="slow-member")
    async with open_connection(amqp_url) as connection:
        channel = await connection.open_channel()
        await dead_letter_queue(channel, dlx, dead_queue)
        async with running_daemon(env, notify_socket, tmp_path) as daemon:
            await trio.to_thread.run_sync(lambda: driver.cast("member_create", member=bystander.member(0)))
            await trio.sleep(0.3)  # running (hanging) when the poison arrives
            await trio.to_thread.run_sync(
                lambda: driver.cast("member_create", member=poison_tree.member(1))
            )
            got: list[dict[str, Any]] = []
            with trio.fail_after(20):
                while len(got) < 2:
                    got.append(await trio.to_thread.run_sync(driver.next_status, 20))
            dead = await read_dead_letters(channel, dead_queue, 1, within=10)
        await channel.queue_delete(dead_queue)
    assert sorted(map(normalized, got), key=canonical) == sorted(
        map(normalized, [member_error(bystander, 0), member_error(poison_tree, 1)]), key=canonical
    )
    poisoned = events(daemon, "poison operation: not replayed again")
    assert [p["lb_id"] for p in poisoned] == [poison_tree.lb_id]
    assert len(dead) == 1
    expired = events(daemon, "backend call exceeded its deadline")
    assert [e["lb_id"] for e in expired] == [bystander.lb_id]


# ---------------------------------------------------------------------- deadlines


async def test_call_ignoring_cancellation_errors_and_replaces_its_worker(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        env = daemon_env | {
            "LBACTORS_BACKEND_NOOP_HANG_PATTERN": f"^{FAULTY}$",
            "LBACTORS_BACKEND_NOOP_IGNORE_CANCEL": "true",
            "LBACTORS_BACKEND_NOOP_OPERATION_DEADLINE": "1",
            "LBACTORS_DAEMON_CANCEL_GRACE": "0.5",
        }
        hung = FaultyTree(900)
        trees = [hung, *(LoadBalancerTree(i) for i in range(3))]
        async with running_daemon(env, notify_socket, tmp_path) as daemon:
            index = shard(hung.lb_id, WORKERS)
            before = worker_pid(daemon, index)
            other = [pid for pid in daemon.worker_pids() if pid != before]
            run = await run_gated(GatedRun(driver, trees, timeout=30))
            # the hung member ERROR, and its load balancer's later operations all completed
            assert_clean(run)
            after = worker_pid(daemon, index)
            assert after != before and not _alive(before)
            assert [pid for pid in daemon.worker_pids() if pid != after] == other
        abandoned = events(daemon, "backend call ignored its cancellation; giving up on it")
        assert [(a["lb_id"], a["method"]) for a in abandoned] == [(hung.lb_id, "member_create")]
        kills = events(daemon, "killing worker")
        assert [(k["pid"], k["reason"]) for k in kills] == [
            (before, "a backend call ignored its cancellation")
        ]


async def test_cancellable_hung_call_errors_at_its_deadline_and_keeps_its_worker(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        env = daemon_env | {
            "LBACTORS_BACKEND_NOOP_HANG_PATTERN": f"^{FAULTY}$",
            "LBACTORS_BACKEND_NOOP_OPERATION_DEADLINE": "1",
        }
        hung = FaultyTree(900)
        trees = [hung, *(LoadBalancerTree(i) for i in range(3))]
        async with running_daemon(env, notify_socket, tmp_path) as daemon:
            before = daemon.worker_pids()
            run = await run_gated(GatedRun(driver, trees, timeout=30))
            assert_clean(run)
            assert daemon.worker_pids() == before
        expired = events(daemon, "backend call exceeded its deadline")
        assert [(e["lb_id"], e["method"], e["object_id"]) for e in expired] == [
            (hung.lb_id, "member_create", hung.member_ids[-1])
        ]
        assert expired[0]["elapsed_s"] >= 0.9  # not before its deadline
        assert events(daemon, "killing worker") == []
        assert events(daemon, "worker died") == []


async def test_sigterm_while_a_call_ignores_cancellation_exits_in_time(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        grace, stop_timeout = 1.5, 1.0
        env = daemon_env | {
            "LBACTORS_BACKEND_NOOP_HANG_PATTERN": f"^{FAULTY}$",
            "LBACTORS_BACKEND_NOOP_IGNORE_CANCEL": "true",
            "LBACTORS_BACKEND_NOOP_OPERATION_DEADLINE": "60",  # still hanging at the SIGTERM
            "LBACTORS_DAEMON_GRACE_PERIOD": str(grace),
            "LBACTORS_DAEMON_STOP_TIMEOUT": str(stop_timeout),
        }
        hung, other = FaultyTree(900), LoadBalancerTree(1)
        async with running_daemon(env, notify_socket, tmp_path) as daemon:
            await trio.to_thread.run_sync(
                lambda: driver.cast("member_create", member=hung.member(len(hung.member_ids) - 1))
            )
            # the daemon took the hanging operation: one cast after it is answered
            method, kwargs, expected = other.lifecycle()[0]
            await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))
            status = await trio.to_thread.run_sync(driver.next_status, 10)
            assert normalized(status) == normalized(expected)
            await trio.sleep(0.3)
            workers = daemon.worker_pids()
            assert len(workers) == WORKERS
            daemon.signal(signal.SIGTERM)
            code = await daemon.wait(timeout=30)
            # nothing of the daemon is left, before any cleanup could reap it
            left = [pid for pid in workers if _alive(pid)]
        assert code == 0
        # in time: the grace period ended the drain, and stop_timeout the workers (the
        # bounds themselves are tested in virtual time, tests/test_router.py)
        assert not left, f"workers left behind: {left}"
        assert events(daemon, "grace period over; unfinished operations stay unacked for redelivery")
        assert events(daemon, "worker did not finish in time; killing it")


async def test_sigterm_while_a_worker_restarts_exits_without_waiting_for_it(
    daemon_env: dict[str, str], notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """A worker killed just before the SIGTERM comes back during the shutdown: it is told to
    exit at once (end of stream), not left to ``stop_timeout`` and a SIGKILL."""
    stop_timeout = 10.0
    env = daemon_env | {"LBACTORS_DAEMON_STOP_TIMEOUT": str(stop_timeout)}
    async with running_daemon(env, notify_socket, tmp_path) as daemon:
        victim = daemon.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(10):
            while _alive(victim):
                await trio.sleep(0.01)
        daemon.signal(signal.SIGTERM)  # the replacement is starting up (imports take longer)
        code = await daemon.wait(timeout=30)
    assert code == 0
    # not left to stop_timeout: no kill (tests/test_router.py measures it in virtual time)
    assert not events(daemon, "worker did not finish in time; killing it")


# ---------------------------------------------------------------------- statistics


async def test_statistics_rounds_are_bounded_when_a_worker_is_stopped(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    env = daemon_env | {
        "LBACTORS_STATS_INTERVAL": "0.3",
        "LBACTORS_STATS_SYNC_EVERY": "1",
        "LBACTORS_STATS_WORKER_TIMEOUT": "0.5",
        "LBACTORS_DAEMON_PING_TIMEOUT": "120",  # the stopped worker stays, stopped
    }
    trees = trees_on_both_workers(6)
    by_worker = shards_of(trees)
    stopped_index, live_index = 0, 1
    stopped_lbs = {tree.lb_id for tree in by_worker[stopped_index]}
    live_listeners = {tree.listener_id for tree in by_worker[live_index]}
    driver.endpoint.active_lb_ids = [tree.lb_id for tree in trees]
    async with running_daemon(env, notify_socket, tmp_path) as daemon:
        for tree in trees:
            for method, kwargs, _ in tree.lifecycle()[:2]:  # the load balancer and a listener
                await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))  # noqa: B023
        offline: set[str] = set()

        def drain() -> list[dict[str, Any]]:
            """Statistics casts received so far; OFFLINE reports noted on the way."""
            with suppress(queue.Empty):
                while True:
                    status = driver.endpoint.statuses.get_nowait()
                    offline.update(
                        entry["id"]
                        for entry in status.get("loadbalancers", [])
                        if entry.get("operating_status") == "OFFLINE"
                    )
            received = []
            with suppress(queue.Empty):
                while True:
                    received.append(driver.endpoint.statistics.get_nowait())
            return received

        # both workers report their listeners
        seen: set[str] = set()
        with trio.fail_after(15):
            while seen != {tree.listener_id for tree in trees}:
                seen.update(e["id"] for stats in drain() for e in stats["listeners"])
                await trio.sleep(0.05)
        os.kill(worker_pid(daemon, stopped_index), signal.SIGSTOP)
        await trio.sleep(0.8)  # a round asked before the stop may still be answered
        drain()
        rounds_with_live = 0
        with trio.move_on_after(4):
            while rounds_with_live < 4:
                for stats in drain():
                    ids = {e["id"] for e in stats["listeners"]}
                    assert ids <= live_listeners, "a stopped worker cannot report"
                    rounds_with_live += ids == live_listeners
                await trio.sleep(0.05)
        drain()
    # rounds every 0.3 s, each waiting 0.5 s at most for the stopped worker: 5 in 4 s at least
    assert rounds_with_live >= 3, rounds_with_live
    assert not offline & stopped_lbs, "a stopped worker's load balancers reported OFFLINE"
    assert offline == set()
    skipped = events(daemon, "workers skipped in statistics round")
    assert skipped and all(line["workers"] == [stopped_index] for line in skipped)


# ---------------------------------------------------------------------- start-up


NOT_DURABLE = "queues are not durable"


async def test_warns_at_start_when_queues_are_not_durable(
    daemon_env: dict[str, str], notify_socket: NotifySocket, driver: OsloDriver, tmp_path: Path
) -> None:
    with trio.fail_after(300):
        tree = LoadBalancerTree(1)
        async with running_daemon(daemon_env, notify_socket, tmp_path) as daemon:
            method, kwargs, expected = tree.lifecycle()[0]
            await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))
            status = await trio.to_thread.run_sync(driver.next_status, 10)
            assert normalized(status) == normalized(expected)
        warnings = [line for line in daemon.log_lines() if str(line.get("event")).startswith(NOT_DURABLE)]
        assert len(warnings) == 1, warnings
        assert warnings[0]["level"] == "warning"
        assert "amqp.durable_queues = true" in warnings[0]["event"]
        assert warnings[0]["topic"] == daemon_env["LBACTORS_AMQP_TOPIC"]


async def test_no_warning_with_durable_queues(
    amqp_url: str,
    unique_prefix: str,
    daemon_env: dict[str, str],
    names: dict[str, str],
    notify_socket: NotifySocket,
    tmp_path: Path,
) -> None:
    """Durable on both sides (oslo's ``amqp_durable_queues`` too, or the declarations clash);
    the durable queues and exchange are deleted afterwards."""
    with trio.fail_after(300):
        host = f"host-{unique_prefix}"
        env = daemon_env | {"LBACTORS_AMQP_DURABLE_QUEUES": "true", "LBACTORS_AMQP_HOST": host}
        tree = LoadBalancerTree(1)
        durable_driver = OsloDriver(
            amqp_url,
            topic=names["topic"],
            driver_topic=names["driver_topic"],
            exchange=names["exchange"],
            durable_queues=True,
        ).start()
        try:
            async with running_daemon(env, notify_socket, tmp_path) as daemon:
                method, kwargs, expected = tree.lifecycle()[0]
                await trio.to_thread.run_sync(lambda: durable_driver.cast(method, **kwargs))
                status = await trio.to_thread.run_sync(durable_driver.next_status, 10)
                assert normalized(status) == normalized(expected)
        finally:
            durable_driver.stop()
            async with open_connection(amqp_url) as connection:
                channel = await connection.open_channel()
                for queue_name in (
                    names["topic"],
                    f"{names['topic']}.{host}",
                    names["driver_topic"],
                    f"{names['driver_topic']}.octavia-test",
                ):
                    await channel.queue_delete(queue_name)
                await channel.exchange_delete(names["exchange"])
        assert not [line for line in daemon.log_lines() if str(line.get("event")).startswith(NOT_DURABLE)]
        assert events(daemon, "lbactors ready")
