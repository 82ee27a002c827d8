"""The Octavia side on the wire: a trio load driver on lbactors' AMQP client and oslo codec.

It does what ``shared/baseline/octavia_driver_sim.py`` does with oslo.messaging, at a fraction
of its CPU per operation, so that it does not hide the speed of what it drives:

* **casts** like oslo's ``RPCClient`` on ``Target(topic=T, exchange='common',
  namespace='control', version='1.0')``: topic exchange ``common`` (declared as oslo does),
  routing key ``T``, the oslo envelope and kombu's properties (``lbactors.amqp.oslo``);
* **receives** like oslo's RPC server on ``Target(topic=D, server=<host>, exchange='common')``:
  queues ``D`` and ``D.<host>`` bound on ``common``, and ``D_fanout_<uuid>`` (``x-expires``
  30 min) on the fanout exchange ``D_fanout``, all three consumed; status updates
  (``update_loadbalancer_status``), statistics (``update_listener_statistics``) and the
  collector's ``get_active_loadbalancers`` call, answered with the load balancers whose
  create completed and that were not deleted;
* plays the workload of :mod:`bench.workload` with Octavia's gating (the next operation of a
  load balancer only after the status update of the previous one), ``concurrency`` load
  balancers in flight, per-operation latency (just before the cast -> arrival of the matching
  status update, monotonic clock, in this process) and the sim's validation;
* returns the sim's JSON result fields (``ops_per_s``, ``latency_ms``, ``errors``, ...).

Deliveries are consumed with ``no_ack``: oslo's RPC server acks on receipt, before dispatch,
so the contract is the same (at most once) with one frame fewer per message. The next
operation of a load balancer is cast from the task that received the status update: no task
switch between a status update and the cast it gates.

    async with open_driver(config) as driver:
        result = await driver.run_workload()
"""

from __future__ import annotations

import resource
import socket
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from bench.workload import (
    PROV,
    LoadBalancerPlan,
    Operation,
    PlanTemplate,
    TemplatedPlan,
    latency_summary,
    match_status,
    operations_per_lb,
    validate,
)
from lbactors.amqp import oslo
from lbactors.amqp.connection import Channel, Connection, Consumer, Delivery, open_connection
from lbactors.amqp.errors import AMQPError, ChannelClosed

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: oslo's rabbit_transient_queues_ttl (s) as x-expires (ms) on the fanout queue
FANOUT_QUEUE_EXPIRES_MS = 1_800_000
WATCHDOG_PERIOD = 0.1

_json = msgspec.json.Encoder()
#: the oslo context entry of lbactors' re-assertions, as it reads inside the envelope's
#: ``oslo.message`` string (lbactors.gateway.REASSERTION_CONTEXT)
REASSERTION_MARK = b'_context_lbactors_reassertion\\":true'

_decode_args = msgspec.json.Decoder(dict[str, Any])


class DriverConfig(msgspec.Struct, kw_only=True):
    """What to drive and how (the sim's options, same defaults)."""

    amqp_url: str = DEFAULT_AMQP_URL
    #: the topic the target consumes (Octavia -> backend)
    topic: str = "vmware_nsx__lb_listener"
    #: the topic the target casts status updates to (backend -> Octavia)
    driver_topic: str = "vmware_nsx__driver_listener"
    exchange: str = "common"
    host: str = msgspec.field(default_factory=socket.gethostname)
    lbs: int = 100
    members: int = 4
    concurrency: int = 50
    timeout: float = 30.0
    max_duration: float = 600.0
    updates: bool = True
    #: create the tree (and update it) but never delete it: the load balancers stay resident
    resident: bool = False
    drain: float = 1.0
    #: wait this long for the target to consume ``topic`` before the first cast (0: do not)
    wait_for_consumer: float = 30.0
    #: put the cast channel in confirm mode and wait for every confirm (oslo 18 does)
    confirm: bool = False
    #: index of the first load balancer (scale runs in several slices)
    first_index: int = 0
    #: render casts from a pre-built template (same bytes, far less CPU) instead of building
    #: every payload's dicts as the sim does
    templates: bool = True
    #: declare the exchange and the driver topic's queues durable, as oslo.messaging does with
    #: ``amqp_durable_queues = true`` (the target must be set the same way:
    #: ``LBACTORS_AMQP_DURABLE_QUEUES=true``, else the broker refuses the second declaration)
    durable: bool = False
    #: declare the driver topic's queues as quorum queues (durable), as oslo.messaging does with
    #: ``rabbit_quorum_queue = true`` (the target with ``LBACTORS_AMQP_QUORUM_QUEUES=true``
    #: declares the driver topic so, and the broker refuses a declaration without it)
    quorum: bool = False


class StatisticsArrival(msgspec.Struct, array_like=True):
    t: float
    listeners: int


class Driver:
    """One connection, the driver-topic consumers, and the state of one workload."""

    def __init__(self, config: DriverConfig, connection: Connection, casts: Channel,
                 nursery: trio.Nursery) -> None:
        self.config = config
        self.connection = connection
        self.casts = casts
        self.nursery = nursery
        self.queues: list[str] = []
        self.active_lb_ids: set[str] = set()
        self.statistics: list[StatisticsArrival] = []
        self.counts: Counter[str] = Counter()
        self.samples: defaultdict[str, list[str]] = defaultdict(list)
        self.template = (PlanTemplate(config.members, config.updates, resident=config.resident)
                         if config.templates else None)
        self._reset()

    def _reset(self) -> None:
        self.pending: dict[tuple[str, str], Operation] = {}
        self.timed_out: dict[tuple[str, str], Operation] = {}
        self.backlog: deque[int] = deque()
        self.active = 0
        self.stopping = False
        self.done = trio.Event()
        self.latencies: list[float] = []
        self.per_op: defaultdict[str, list[float]] = defaultdict(list)
        self.c: Counter[str] = Counter()
        self.samples = defaultdict(list)
        self.t_first_cast: float | None = None
        self.t_last_done: float | None = None

    # ---- topology -----------------------------------------------------------------------
    async def _listen(self, channel: Channel) -> list[Consumer]:
        """Declare and consume the driver topic's queues exactly as oslo's RPC server does."""
        cfg = self.config
        d = cfg.driver_topic
        durable = cfg.durable or cfg.quorum
        await channel.exchange_declare(cfg.exchange, "topic", durable=durable,
                                       auto_delete=False)
        arguments = {"x-queue-type": "quorum"} if cfg.quorum else None
        consumers = []
        for name in (d, f"{d}.{cfg.host}"):
            await channel.queue_declare(name, durable=durable, auto_delete=False,
                                        arguments=arguments)
            await channel.queue_bind(name, cfg.exchange, name)
            self.queues.append(name)
            consumers.append(await channel.basic_consume(name, no_ack=True))
        fanout = f"{d}_fanout"
        await channel.exchange_declare(fanout, "fanout", durable=False, auto_delete=True)
        fanout_queue = f"{fanout}_{uuid.uuid4().hex}"
        await channel.queue_declare(fanout_queue, durable=False, auto_delete=False,
                                    arguments={"x-expires": FANOUT_QUEUE_EXPIRES_MS})
        await channel.queue_bind(fanout_queue, fanout, d)
        self.queues.append(fanout_queue)
        consumers.append(await channel.basic_consume(fanout_queue, no_ack=True))
        return consumers

    async def _consume(self, consumer: Consumer) -> None:
        async for delivery in consumer:
            await self._on_delivery(delivery)

    async def wait_for_target(self) -> int:
        """Wait until something consumes ``topic`` (the caller bounds the wait); the count."""
        probe = await self.connection.open_channel()
        try:
            while True:
                try:
                    _, _, consumers = await probe.queue_declare(self.config.topic, passive=True)
                except ChannelClosed:  # 404: nobody declared it yet
                    consumers = 0
                    probe = await self.connection.open_channel()
                if consumers:
                    return consumers
                await trio.sleep(0.05)
        finally:
            with trio.CancelScope(shield=True):
                await probe.close()

    # ---- receiving ----------------------------------------------------------------------
    async def _on_delivery(self, delivery: Delivery) -> None:
        t = time.monotonic()
        try:
            message = oslo.decode_message(delivery.body)
            args = _decode_args.decode(message.args)
        except (oslo.MalformedMessage, msgspec.DecodeError) as exc:
            self.counts["undecodable_messages"] += 1
            self._sample("undecodable", repr(exc))
            return
        method = message.method
        if method == "update_loadbalancer_status" and REASSERTION_MARK in delivery.body:
            # lbactors' commit-race re-assertion (its context says so): it repeats a created
            # object's own entry, and lbactors' provider agent skips it once written. Never the
            # status of an operation in flight, even when it names the same object.
            self.c["reassertion_updates"] += 1
        elif method == "update_loadbalancer_status":
            await self._on_status(t, args.get("status"))
        elif method == "update_listener_statistics":
            self.counts["statistics_updates"] += 1
            self.c["statistics_updates"] += 1
            listeners = (args.get("statistics") or {}).get("listeners") or []
            self.statistics.append(StatisticsArrival(t, len(listeners)))
        elif method == "get_active_loadbalancers" and message.is_call:
            assert message.msg_id is not None and message.reply_q is not None
            self.counts["get_active_loadbalancers_calls"] += 1
            body = oslo.encode_reply(message.msg_id,
                                     result_json=_json.encode(sorted(self.active_lb_ids)))
            await self.casts.publish("", message.reply_q, body,
                                     properties=oslo.REPLY_PROPERTIES)
        else:
            self.counts["unexpected_methods"] += 1
            self._sample("unexpected_method", method)

    async def _on_status(self, t: float, status: Any) -> None:
        c = self.c
        c["status_updates"] += 1
        match = match_status(status, self.pending, self.timed_out)
        c["late_status_updates"] += match.late
        kind = match.kind
        if kind is not None:
            c[kind] += 1
            if kind == "unmatched_status_updates":
                self._sample("unmatched", msgspec.json.encode(status).decode()[:300])
            return
        for op, entry in match.matched:
            await self._complete(t, op, entry, status)

    async def _complete(self, t: float, op: Operation, entry: dict[str, Any],
                        status: dict[str, Any]) -> None:
        kind, problems = validate(op, entry, status)
        latency = t - op.t_sent
        self.latencies.append(latency)
        self.per_op[op.method].append(latency)
        c = self.c
        c["ops_completed"] += 1
        if kind:
            c[kind] += 1
            for problem in problems:
                self._sample(kind, problem)
        else:
            c["ops_ok"] += 1
        self.t_last_done = t
        if op.method == "loadbalancer_create" and entry.get(PROV) == "ACTIVE":
            self.active_lb_ids.add(op.oid)
        elif op.method == "loadbalancer_delete":
            self.active_lb_ids.discard(op.oid)
        lb = op.lb
        assert lb is not None
        if lb.advance():
            await self._lb_done(failed=False)
        elif not self.stopping:
            await self._cast(lb.next_operation())
        else:
            await self._lb_done(failed=True)

    def _sample(self, kind: str, text: str) -> None:
        samples = self.samples[kind]
        if len(samples) < 5:
            samples.append(text)

    # ---- sending ------------------------------------------------------------------------
    async def _cast(self, op: Operation) -> None:
        cfg = self.config
        self.pending[op.key] = op
        self.c["ops_sent"] += 1
        op.t_sent = time.monotonic()
        if self.t_first_cast is None:
            self.t_first_cast = op.t_sent
        body = op.body if op.body is not None else oslo.encode_cast(op.method, op.args_json)
        try:
            confirmation = await self.casts.publish(
                cfg.exchange, cfg.topic, body,
                properties=oslo.CAST_PROPERTIES,
            )
            if confirmation is not None:
                await confirmation.wait()
        except AMQPError as exc:
            self.pending.pop(op.key, None)
            self.c["cast_errors"] += 1
            self._sample("cast_error", f"{op.method}: {exc!r}")
            await self._lb_done(failed=True)

    async def _start_next(self) -> None:
        cfg = self.config
        while not self.stopping and self.backlog and self.active < cfg.concurrency:
            idx = self.backlog.popleft()
            self.active += 1
            lb: LoadBalancerPlan | TemplatedPlan
            if self.template is not None:
                lb = TemplatedPlan(idx, self.template)
            else:
                lb = LoadBalancerPlan(idx, cfg.members, cfg.updates, resident=cfg.resident)
            await self._cast(lb.next_operation())

    async def _lb_done(self, *, failed: bool) -> None:
        self.active -= 1
        self.c["lbs_failed" if failed else "lbs_completed"] += 1
        await self._start_next()
        if self.active == 0 and (self.stopping or not self.backlog):
            self.done.set()

    async def _watchdog(self, deadline: float) -> None:
        timeout = self.config.timeout
        while not self.done.is_set():
            await trio.sleep(WATCHDOG_PERIOD)
            now = time.monotonic()
            expired = []
            for key, op in list(self.pending.items()):
                if now - op.t_sent > timeout:
                    del self.pending[key]
                    self.timed_out[key] = op
                    self.c["timeouts"] += 1
                    assert op.lb is not None
                    self._sample("timeout", f"{op.method} {op.oid} (lb {op.lb.idx} step "
                                            f"{op.lb.step})")
                    expired.append(op)
            if now > deadline and not self.stopping:
                self.stopping = True
                self.c["aborted_by_max_duration"] += 1
                left = list(self.pending.values())
                self.pending.clear()
                self.c["pending_at_abort"] += len(left)
                for op in left:
                    self.timed_out[op.key] = op
                expired += left
                self.c["lbs_not_started"] += len(self.backlog)
                self.backlog.clear()
            for _ in expired:
                await self._lb_done(failed=True)

    # ---- one workload -----------------------------------------------------------------------
    async def run_workload(self, *, lbs: int | None = None, first_index: int | None = None
                           ) -> dict[str, Any]:
        """Play ``lbs`` load balancers' plans; the sim's result dict."""
        cfg = self.config
        lbs = cfg.lbs if lbs is None else lbs
        first = cfg.first_index if first_index is None else first_index
        self._reset()
        self.backlog.extend(range(first, first + lbs))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t_start = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watchdog, t_start + cfg.max_duration)
            if not self.backlog:
                self.done.set()
            await self._start_next()
            await self.done.wait()
            t_end = time.monotonic()
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            await trio.sleep(cfg.drain)  # stray and late status updates
            nursery.cancel_scope.cancel()
        return self._report(lbs, t_start, t_end, cpu0, cpu1)

    def _report(self, lbs: int, t_start: float, t_end: float, cpu0: Any, cpu1: Any
                ) -> dict[str, Any]:
        cfg = self.config
        c = self.c
        per_lb = operations_per_lb(cfg.members, cfg.updates, resident=cfg.resident)
        t0 = self.t_first_cast or t_start
        t1 = self.t_last_done or t_end
        active_s = max(t1 - t0, 1e-9)
        errors = c["error_status"] + c["validation_error"] + c["cast_errors"]
        cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        return {
            "tool": "lbactors_bench_driver",
            "lbs": lbs,
            "members": cfg.members,
            "concurrency": cfg.concurrency,
            "updates": cfg.updates,
            "resident": cfg.resident,
            "ops_per_lb": per_lb,
            "ops_planned": per_lb * lbs,
            "ops_sent": c["ops_sent"],
            "ops_completed": c["ops_completed"],
            "ops_ok": c["ops_ok"],
            "errors": errors,
            "error_status": c["error_status"],
            "validation_errors": c["validation_error"],
            "cast_errors": c["cast_errors"],
            "timeouts": c["timeouts"],
            "pending_at_abort": c["pending_at_abort"],
            "missing_status_updates": c["timeouts"] + c["pending_at_abort"],
            "late_status_updates": c["late_status_updates"],
            "unmatched_status_updates": c["unmatched_status_updates"],
            "reassertion_updates": c["reassertion_updates"],
            "operating_status_only_updates": c["operating_status_only_updates"],
            "statistics_updates": c["statistics_updates"],
            "lbs_completed": c["lbs_completed"],
            "lbs_failed": c["lbs_failed"],
            "lbs_not_started": c["lbs_not_started"],
            "aborted_by_max_duration": bool(c["aborted_by_max_duration"]),
            "duration_s": round(active_s, 3),
            "wall_s": round(t_end - t_start, 3),
            "ops_per_s": round(c["ops_completed"] / active_s, 1),
            "latency_ms": latency_summary(self.latencies),
            "per_op_latency_ms": {k: latency_summary(v) for k, v in sorted(self.per_op.items())},
            "driver_cpu_s": round(cpu_s, 3),
            "driver_cpu_ms_per_op": (round(cpu_s * 1000 / c["ops_completed"], 4)
                                     if c["ops_completed"] else None),
            "driver_cpu_user_s": round(cpu1.ru_utime - cpu0.ru_utime, 3),
            "driver_cpu_system_s": round(cpu1.ru_stime - cpu0.ru_stime, 3),
            "driver_process_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime, 3),
            "timeout_s": cfg.timeout,
            "samples": dict(self.samples),
        }

    def ok(self, result: dict[str, Any]) -> bool:
        """The sim's exit criterion: everything planned completed and validated."""
        return (result["ops_completed"] == result["ops_planned"] and result["errors"] == 0
                and result["missing_status_updates"] == 0)

    async def delete_queues(self) -> None:
        """Delete this driver's queues (oslo's are not auto-deleted)."""
        channel = await self.connection.open_channel()
        for name in self.queues:
            try:
                await channel.queue_delete(name)
            except ChannelClosed:
                channel = await self.connection.open_channel()
        await channel.close()


@asynccontextmanager
async def open_driver(config: DriverConfig, *, delete_queues_on_exit: bool = True
                      ) -> AsyncIterator[Driver]:
    """Connect, declare and consume the driver topic, and wait for the target to consume."""
    async with open_connection(config.amqp_url, heartbeat=60, client_name="lbactors-bench") as conn:
        casts = await conn.open_channel()
        await casts.exchange_declare(config.exchange, "topic",
                                     durable=config.durable or config.quorum, auto_delete=False)
        if config.confirm:
            await casts.confirm_select()
        receive = await conn.open_channel()
        async with trio.open_nursery() as nursery:
            driver = Driver(config, conn, casts, nursery)
            for consumer in await driver._listen(receive):
                nursery.start_soon(driver._consume, consumer)
            if config.wait_for_consumer > 0:
                with trio.move_on_after(config.wait_for_consumer) as waited:
                    await driver.wait_for_target()
                if waited.cancelled_caught:
                    raise TimeoutError(f"nothing consumes {config.topic!r} after "
                                       f"{config.wait_for_consumer} s")
            try:
                yield driver
            finally:
                if delete_queues_on_exit:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await driver.delete_queues()
                nursery.cancel_scope.cancel()


async def delete_queues(amqp_url: str, names: list[str]) -> dict[str, int]:
    """Delete queues that no one consumes (a target's leftovers); name -> messages dropped."""
    dropped = {}
    async with open_connection(amqp_url, client_name="lbactors-bench") as conn:
        channel = await conn.open_channel()
        for name in names:
            try:
                _, _, consumers = await channel.queue_declare(name, passive=True)
                if consumers:
                    continue
                dropped[name] = await channel.queue_delete(name)
            except ChannelClosed:
                channel = await conn.open_channel()
        await channel.close()
    return dropped
