"""Cluster mode in the gateway (docs/cluster.md), several gateways on the real local broker.

Each gateway here is a daemon without workers: a recording sink runs each operation (a short
sleep) and answers its outcome. What is checked is what the broker and the gateway promise:
one runner per load balancer at a time, its operations in the order they were cast, nothing
lost, shares balanced, a dead holder's shards served by another.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import trio

from lbactors.amqp import oslo
from lbactors.amqp.connection import Delivery, open_connection
from lbactors.gateway import PROBE_HEADER, Gateway, GatewaySettings, GatewaySetupError
from lbactors.messages import Operation, Outbound, Outcome, StatusEntry, StatusUpdate
from lbactors.routing import shard_queue
from tests.octavia_side import LoadBalancerTree

pytestmark = pytest.mark.broker

SHARDS = 6


@dataclass
class Run:
    daemon: str
    lb_id: str
    method: str
    start: float
    end: float | None = None
    #: which of the load balancer's operations (two member_create differ): :func:`op_name`
    name: str = ""


@dataclass
class Recorder:
    """Every operation run by every gateway, in start order."""

    runs: list[Run] = field(default_factory=list)

    def by_lb(self) -> dict[str, list[Run]]:
        out: dict[str, list[Run]] = defaultdict(list)
        for run in self.runs:
            out[run.lb_id].append(run)
        return out


class RecordingSink:
    """Runs each operation for a few milliseconds, one at a time per load balancer."""

    def __init__(self, name: str, recorder: Recorder, outcomes: trio.MemorySendChannel[Outbound],
                 nursery: trio.Nursery) -> None:
        self.name = name
        self.recorder = recorder
        self.outcomes = outcomes
        self.nursery = nursery
        self.mailboxes: dict[str, trio.MemorySendChannel[Operation]] = {}
        self.rng = random.Random(name)

    async def submit(self, op: Operation) -> None:
        mailbox = self.mailboxes.get(op.lb_id)
        if mailbox is None:
            mailbox, receive = trio.open_memory_channel[Operation](1000)
            self.mailboxes[op.lb_id] = mailbox
            self.nursery.start_soon(self._actor, receive)
        mailbox.send_nowait(op)

    async def _actor(self, receive: trio.MemoryReceiveChannel[Operation]) -> None:
        async for op in receive:
            run = Run(self.name, op.lb_id, op.method, trio.current_time(),
                      name=op_name(op.method, op.args))
            self.recorder.runs.append(run)
            await trio.sleep(self.rng.uniform(0.001, 0.01))
            run.end = trio.current_time()
            # the status names the operation, so the driver side can check their order
            status = StatusUpdate(
                loadbalancers=[StatusEntry(id=op.lb_id, provisioning_status="ACTIVE",
                                           operating_status=op_name(op.method, op.args))]
            )
            await self.outcomes.send(Outcome(op_id=op.op_id, lb_id=op.lb_id, status=status))


def cluster_settings(amqp_url: str, prefix: str, name: str) -> GatewaySettings:
    return GatewaySettings(
        url=amqp_url,
        topic=f"{prefix}_lb_listener",
        driver_topic=f"{prefix}_driver_listener",
        exchange=f"{prefix}_common",
        host=name,
        prefetch=64,
        reconnect_initial=0.1,
        reconnect_max=0.5,
        cluster=True,
        shards=SHARDS,
        balance_interval=0.2,
        shard_prefetch=16,
        takeover_delay=0.05,
    )


class Daemon:
    """One gateway and its sink in their own cancel scope (cancelled: the process died)."""

    def __init__(self, settings: GatewaySettings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self.scope = trio.CancelScope()
        self.gateway: Gateway | None = None
        self.stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Gateway]) -> None:
        with self.scope:
            send, receive = trio.open_memory_channel[Outbound](1000)
            async with trio.open_nursery() as nursery:
                sink = RecordingSink(self.settings.host, self.recorder, send, nursery)
                gateway = Gateway(self.settings, sink, receive)
                self.gateway = gateway
                await nursery.start(gateway.serve)
                task_status.started(gateway)
        self.stopped.set()

    def kill(self) -> None:
        self.scope.cancel()


async def publish_casts(url: str, settings: GatewaySettings,
                        casts: list[tuple[str, dict[str, Any]]]) -> None:
    async with open_connection(url) as connection:
        channel = await connection.open_channel()
        await channel.confirm_select()
        confirmations = []
        for method, kwargs in casts:
            body = oslo.encode_cast(method, json.dumps(kwargs).encode())
            confirmations.append(
                await channel.publish(settings.exchange, settings.topic, body,
                                      properties=oslo.CAST_PROPERTIES)
            )
        for confirmation in confirmations:
            assert confirmation is not None
            await confirmation.wait()


def op_name(method: str, args: bytes) -> str:
    """One operation of a tree, told apart from its others (two member_create differ)."""
    return f"{method}:{hashlib.blake2b(args, digest_size=6).hexdigest()}"


def without_repeats(items: list[str]) -> list[str]:
    return [item for i, item in enumerate(items) if i == 0 or items[i - 1] != item]


async def drive(url: str, settings: GatewaySettings, trees: list[LoadBalancerTree],
                statuses: dict[str, list[str]]) -> None:
    """Octavia's side: casts each tree's operations with Octavia's gating (a load balancer's
    next operation only once the status of its previous one arrived: Octavia keeps it
    PENDING_* until then) and records, per load balancer, the operation each status names
    (``statuses[lb_id]``) and those it cast (``statuses["sent " + lb_id]``).

    Without the gating two daemons' intakes could re-publish one load balancer's casts in
    either order, exactly as two oslo servers on one topic would run them (docs/cluster.md
    §5)."""
    async with open_connection(url) as connection:
        channel = await connection.open_channel()
        await channel.confirm_select()
        listen = await connection.open_channel()
        arrived = trio.Event()

        async def listen_statuses() -> None:
            nonlocal arrived
            consumer = await listen.basic_consume(settings.driver_topic, no_ack=True)
            async for delivery in consumer:
                message = oslo.decode_message(delivery.body)
                status = json.loads(bytes(message.args))["status"]
                for entry in status["loadbalancers"]:
                    statuses[entry["id"]].append(entry["operating_status"])
                arrived.set()
                arrived = trio.Event()

        async def one(tree: LoadBalancerTree) -> None:
            for done, (method, kwargs, _) in enumerate(tree.lifecycle()):
                args = json.dumps(kwargs).encode()
                statuses["sent " + tree.lb_id].append(op_name(method, args))
                body = oslo.encode_cast(method, args)
                confirmation = await channel.publish(settings.exchange, settings.topic, body,
                                                     properties=oslo.CAST_PROPERTIES)
                assert confirmation is not None
                await confirmation.wait()
                while len(without_repeats(statuses[tree.lb_id])) <= done:
                    await arrived.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen_statuses)
            async with trio.open_nursery() as casts:
                for tree in trees:
                    casts.start_soon(one, tree)
            nursery.cancel_scope.cancel()


def check_statuses(statuses: dict[str, list[str]], trees: list[LoadBalancerTree]) -> None:
    """The issue's check: every operation's status arrived, and per load balancer, after
    removing consecutive duplicates (a re-run after a kill), in operation order."""
    for tree in trees:
        sent = statuses["sent " + tree.lb_id]
        assert len(sent) == len(tree.lifecycle())
        assert without_repeats(statuses[tree.lb_id]) == sent


def interleaved(trees: list[LoadBalancerTree]) -> list[tuple[str, dict[str, Any]]]:
    """Every tree's operations in its order, the trees interleaved."""
    lifecycles = [[(m, k) for m, k, _ in tree.lifecycle()] for tree in trees]
    out = []
    for step in range(max(len(ops) for ops in lifecycles)):
        for ops in lifecycles:
            if step < len(ops):
                out.append(ops[step])
    return out


def check_order_and_exclusion(recorder: Recorder, trees: list[LoadBalancerTree], *,
                              killed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Per load balancer: runs never overlap, and in start order, with a re-run of an
    operation whose first run was cut short by a kill folded in, they are its operations in
    cast order, each once."""
    by_lb = recorder.by_lb()
    for tree in trees:
        runs = sorted(by_lb[tree.lb_id], key=lambda r: r.start)
        for earlier, later in zip(runs, runs[1:], strict=False):
            end = earlier.end if earlier.end is not None else later.start
            assert end <= later.start, (tree.lb_id, earlier, later)
        methods: list[str] = []
        previous: Run | None = None
        for run in runs:
            rerun = (
                previous is not None
                and previous.name == run.name
                and previous.daemon in killed
                and previous.daemon != run.daemon
            )
            if not rerun:
                methods.append(run.method)
            previous = run
        assert methods == [m for m, _, _ in tree.lifecycle()], tree.lb_id


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


async def delete_cluster_topology(url: str, settings: GatewaySettings) -> None:
    async with open_connection(url) as connection:
        channel = await connection.open_channel()
        queues = [settings.topic, settings.driver_topic,
                  *(shard_queue(settings.topic, i) for i in range(SHARDS + 1))]
        for daemon in ("a", "b", "c"):
            queues.append(f"{settings.topic}.{daemon}")
        for name in queues:
            await channel.queue_delete(name)
        for exchange in (settings.exchange, f"{settings.topic}_fanout",
                         f"{settings.topic}.shards", f"{settings.topic}.cluster"):
            await channel.exchange_delete(exchange)


@pytest.fixture
async def cluster(amqp_url: str, unique_prefix: str, nursery: trio.Nursery):  # type: ignore[no-untyped-def]
    recorder = Recorder()
    daemons: dict[str, Daemon] = {}

    async def start(name: str) -> Daemon:
        daemon = Daemon(cluster_settings(amqp_url, unique_prefix, name), recorder)
        await nursery.start(daemon.run)
        daemons[name] = daemon
        return daemon

    try:
        yield start, recorder, daemons
    finally:
        for daemon in daemons.values():
            daemon.kill()
        with trio.CancelScope(shield=True):
            await delete_cluster_topology(
                amqp_url, cluster_settings(amqp_url, unique_prefix, "a")
            )


def held(daemon: Daemon) -> list[int]:
    assert daemon.gateway is not None
    return daemon.gateway.held_shards()


async def test_one_daemon_runs_everything_in_order(cluster: Any, amqp_url: str) -> None:
    start, recorder, _ = cluster
    with trio.fail_after(60):
        a = await start("a")
        trees = [LoadBalancerTree(i) for i in range(8)]
        await publish_casts(amqp_url, a.settings, interleaved(trees))
        total = sum(len(t.lifecycle()) for t in trees)
        await wait_until(lambda: len(recorder.runs) >= total and a.gateway.in_flight == 0,
                         30, "every operation ran")
        await wait_until(lambda: len(a.gateway.settled_shards()) == SHARDS, 10,
                         "every shard settled on the only daemon")
    check_order_and_exclusion(recorder, trees)
    assert {run.daemon for run in recorder.runs} == {"a"}
    assert len(recorder.runs) == total  # each once
    assert a.gateway.counters.shard_published == total
    assert a.gateway.counters.completed == total


async def test_a_second_daemon_gets_its_share_without_loss_or_overlap(
    cluster: Any, amqp_url: str
) -> None:
    start, recorder, _ = cluster
    with trio.fail_after(90):
        a = await start("a")
        await wait_until(lambda: len(held(a)) == SHARDS, 10, "a holds every shard")
        trees = [LoadBalancerTree(i) for i in range(30)]
        total = sum(len(t.lifecycle()) for t in trees)
        statuses: dict[str, list[str]] = defaultdict(list)
        async with trio.open_nursery() as load:
            load.start_soon(drive, amqp_url, a.settings, trees, statuses)
            await wait_until(lambda: len(recorder.runs) >= total // 4, 30, "a quarter ran")
            b = await start("b")
        await wait_until(lambda: len(held(a)) == len(held(b)) == SHARDS // 2, 20,
                         "3 shards each")
        await wait_until(lambda: a.gateway.in_flight == b.gateway.in_flight == 0, 10, "settled")
    assert set(held(a)).isdisjoint(held(b))
    check_statuses(statuses, trees)
    check_order_and_exclusion(recorder, trees)
    assert len(recorder.runs) == total  # a release hands over cleanly: nothing ran twice
    assert a.gateway.counters.shards_released >= SHARDS // 2


async def test_a_killed_daemons_shards_are_served_by_another(cluster: Any, amqp_url: str) -> None:
    start, recorder, _ = cluster
    with trio.fail_after(90):
        a = await start("a")
        b = await start("b")
        await wait_until(lambda: len(held(a)) == len(held(b)) == SHARDS // 2, 20,
                         "3 shards each")
        trees = [LoadBalancerTree(i) for i in range(30)]
        total = sum(len(t.lifecycle()) for t in trees)
        statuses: dict[str, list[str]] = defaultdict(list)
        async with trio.open_nursery() as load:
            load.start_soon(drive, amqp_url, a.settings, trees, statuses)
            await wait_until(lambda: len(recorder.runs) >= total // 3, 30, "a third ran")
            b.kill()
            killed_at = trio.current_time()
            await b.stopped.wait()
            await wait_until(lambda: len(held(a)) == SHARDS, 10, "a holds every shard")
            taken_over = trio.current_time() - killed_at
    check_statuses(statuses, trees)
    check_order_and_exclusion(recorder, trees, killed={"b"})
    assert taken_over < 5


async def test_a_daemon_with_fewer_shards_than_the_deployment_refuses_to_start(
    cluster: Any, amqp_url: str, unique_prefix: str
) -> None:
    start, _, _ = cluster
    with trio.fail_after(30):
        await start("a")
        fewer = msgspec.structs.replace(
            cluster_settings(amqp_url, unique_prefix, "b"), shards=SHARDS - 1
        )
        _, outcomes = trio.open_memory_channel[Outbound](1)
        refused: list[GatewaySetupError] = []
        try:
            await Gateway(fewer, RecordingSink("b", Recorder(), None, None), outcomes).serve()  # type: ignore[arg-type]
        except* GatewaySetupError as group:
            refused.extend(group.exceptions)  # type: ignore[arg-type]
        assert len(refused) == 1
        assert f"shard.{SHARDS - 1:03d} exists" in str(refused[0])


class AckRecorder:
    """A channel that records acks (nothing else may be called)."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    async def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acked.append(delivery_tag)


def probe_delivery(tag: int) -> Delivery:
    return Delivery(
        body=b"", delivery_tag=tag, redelivered=False, exchange="x.shards", routing_key="000",
        consumer_tag="c", properties=oslo.with_headers(oslo.CAST_PROPERTIES,
                                                       {PROBE_HEADER: "elsewhere/1"}),
    )


async def test_a_releasing_shard_sends_nothing_on_its_channel(amqp_url: str) -> None:
    """No ack, not even of a probe, on a shard being released: once its channel.close is
    sent, RabbitMQ closes the whole connection for any other frame that arrives after its
    close-ok (504 CHANNEL_ERROR: a reconnect and a fence for nothing, seen in bench cluster)."""
    gateway = Gateway(cluster_settings(amqp_url, "unused", "a"), None,  # type: ignore[arg-type]
                      trio.open_memory_channel[Outbound](1)[1])
    with trio.fail_after(5):
        channel = AckRecorder()
        epoch = gateway._shards.consuming(0)
        await gateway._on_shard_delivery(probe_delivery(1), channel, 1, 0, epoch)  # type: ignore[arg-type]
        assert channel.acked == [1]  # active: a probe is acked
        gateway._shards.releasing(0)
        await gateway._on_shard_delivery(probe_delivery(2), channel, 1, 0, epoch)  # type: ignore[arg-type]
        gateway._releases.add(0)
        await gateway._on_shard_delivery(probe_delivery(3), channel, 1, 0, epoch)  # type: ignore[arg-type]
        assert channel.acked == [1]
