"""The Prometheus endpoint (``[metrics]``): what the daemon does, for operators.

Where the numbers come from. Every operation passes through the supervisor twice (the
delivery, then its outcome), so everything about operations is observed here, in the one
process that is never restarted while the daemon runs: counters can never go backwards when
a worker dies, and nothing has to be merged. The per-worker figures the supervisor cannot see
(actors, resident load balancers) come over the IPC the workers already speak: each ``Pong``
(every ``daemon.ping_interval``) carries them. prometheus-client's multiprocess mode was the
alternative and is not used: it needs a directory of mmap files per process id, cleaned of dead
workers' files (gauges) but not of their counters, which grows with every restart and costs a
file write per increment in the workers, for figures the supervisor has anyway.

Two kinds of metric:

- observed on the hot path (:meth:`DaemonMetrics.observe_settled`, one call per settled
  delivery; statistics rounds): prometheus-client ``Counter`` / ``Histogram`` objects, their
  labelled children looked up once and cached;
- read at scrape time (:class:`_StateCollector`): counters and gauges the router and the
  gateway keep anyway (restarts, replays, poison operations, reconnects, rejections, in
  flight, confirms pending); no cost between scrapes.

The endpoint is prometheus-client's own HTTP server in a thread of its own (the trio loop
never waits for a scrape); the collector only reads ints and copies of small dicts.

Labels are bounded: ``method`` is one of the driver's methods (anything else is
``other``), ``worker`` is the worker's index, ``reason`` one of :func:`rejection_kind`'s
kinds; never a load balancer id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from lbactors.messages import METHODS

if TYPE_CHECKING:
    from lbactors.gateway import Gateway
    from supervisor.router import Router

log = structlog.get_logger("lbactors.supervisor")

#: operation duration buckets, seconds: 1 ms to 60 s
OPERATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: statistics round duration buckets, seconds
ROUND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: every result label of ``lbactors_operations_total``
RESULTS = ("ok", "error", "dead_lettered", "requeued")
KNOWN_METHODS = frozenset(METHODS)


class DaemonMetrics:
    """The daemon's metrics in a registry of their own (not the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.operations = Counter(
            "lbactors_operations",
            "Operations settled (acked, dead-lettered or requeued), by method and result: ok, "
            "error (its objects went ERROR), dead_lettered, requeued (a publish not confirmed).",
            ["method", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "lbactors_operation_duration_seconds",
            "Seconds from an operation's delivery to its settling (run, status published and "
            "confirmed, delivery acked), by method.",
            ["method"],
            buckets=OPERATION_BUCKETS,
            registry=self.registry,
        )
        self.round_duration = Histogram(
            "lbactors_statistics_round_duration_seconds",
            "Seconds one statistics round took (collect from the workers, publish).",
            buckets=ROUND_BUCKETS,
            registry=self.registry,
        )
        self.round_messages = Gauge(
            "lbactors_statistics_round_messages",
            "Messages the last statistics round published.",
            registry=self.registry,
        )
        self.round_messages_total = Counter(
            "lbactors_statistics_messages",
            "Messages published by statistics rounds.",
            registry=self.registry,
        )
        self.last_round = Gauge(
            "lbactors_statistics_last_round_timestamp_seconds",
            "Unix time the last statistics round ended.",
            registry=self.registry,
        )
        ProcessCollector(namespace="lbactors_supervisor", registry=self.registry)
        #: (method, result) -> (counter child, histogram child)
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def watch(self, router: Router, gateway: Gateway) -> None:
        """Export the router's and the gateway's own counts, read at each scrape."""
        self.registry.register(_StateCollector(router, gateway))

    def observe_settled(self, method: str, result: str, seconds: float) -> None:
        """One delivery settled (:attr:`lbactors.gateway.Gateway.on_settled`)."""
        children = self._children.get((method, result))
        if children is None:
            label = method if method in KNOWN_METHODS else "other"
            children = (
                self.operations.labels(label, result),
                self.duration.labels(label),
            )
            self._children[method, result] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_round(self, seconds: float, messages: int, ended: float) -> None:
        self.round_duration.observe(seconds)
        self.round_messages.set(messages)
        self.round_messages_total.inc(messages)
        self.last_round.set(ended)


class _StateCollector(Collector):
    """The router's and the gateway's counts, read when Prometheus scrapes (its thread)."""

    def __init__(self, router: Router, gateway: Gateway) -> None:
        self.router = router
        self.gateway = gateway

    def describe(self) -> Iterator[Any]:
        return iter(())  # unchecked collector: no duplicate-name check at registration

    def collect(self) -> Iterator[Any]:
        router = self.router
        gateway = self.gateway
        counters = gateway.counters
        workers = list(router.workers)

        def per_worker(family: Any, values: list[float]) -> Any:
            for worker, value in zip(workers, values, strict=True):
                family.add_metric([str(worker.index)], value)
            return family

        yield per_worker(
            CounterMetricFamily(
                "lbactors_worker_restarts", "Worker processes restarted (any death).",
                labels=["worker"],
            ),
            [w.restarts for w in workers],
        )
        yield per_worker(
            GaugeMetricFamily(
                "lbactors_worker_up", "1 while the worker process is up and ready.",
                labels=["worker"],
            ),
            [1 if w.alive else 0 for w in workers],
        )
        yield per_worker(
            GaugeMetricFamily(
                "lbactors_worker_start_time_seconds",
                "Unix time the worker's current process started.",
                labels=["worker"],
            ),
            [w.started_at for w in workers],
        )
        yield per_worker(
            GaugeMetricFamily(
                "lbactors_worker_in_flight_operations",
                "Operations sent to the worker (or queued for it) without an outcome yet.",
                labels=["worker"],
            ),
            [len(w.ledger) for w in workers],
        )
        yield per_worker(
            GaugeMetricFamily(
                "lbactors_worker_actors",
                "Live actors in the worker (as of its last liveness answer).",
                labels=["worker"],
            ),
            [w.actors for w in workers],
        )
        yield per_worker(
            GaugeMetricFamily(
                "lbactors_worker_resident_loadbalancers",
                "Load balancers the worker holds (as of its last liveness answer).",
                labels=["worker"],
            ),
            [w.resident for w in workers],
        )
        yield CounterMetricFamily(
            "lbactors_replayed_operations",
            "Operations sent again to a restarted worker (in flight on the one that died).",
            value=router.replayed,
        )
        yield CounterMetricFamily(
            "lbactors_poison_operations",
            "Operations given up on after repeated worker deaths (ERROR, dead-lettered).",
            value=router.poisoned,
        )
        yield CounterMetricFamily(
            "lbactors_worker_unresponsive_kills",
            "Workers killed because they stopped answering pings.",
            value=router.unresponsive_kills,
        )
        yield GaugeMetricFamily(
            "lbactors_in_flight_operations",
            "Deliveries handed on and not yet settled.",
            value=gateway.in_flight,
        )
        yield GaugeMetricFamily(
            "lbactors_broker_connected", "1 while the broker connection is open.",
            value=1 if gateway.connected else 0,
        )
        yield CounterMetricFamily(
            "lbactors_broker_reconnects", "Broker connections lost (each followed by a reconnect).",
            value=counters.reconnects,
        )
        yield GaugeMetricFamily(
            "lbactors_broker_last_disconnect_timestamp_seconds",
            "Unix time the broker connection was last lost (0: never).",
            value=counters.last_disconnect,
        )
        yield GaugeMetricFamily(
            "lbactors_publish_confirms_pending",
            "Publishes (statuses, replies, re-assertions) not yet confirmed by the broker.",
            value=gateway.confirms_pending,
        )
        yield CounterMetricFamily(
            "lbactors_deliveries_received", "Deliveries received from the topic queues.",
            value=counters.received,
        )
        rejected = CounterMetricFamily(
            "lbactors_deliveries_rejected",
            "Deliveries taken off the queue unrun, by reason and by action: dead_lettered "
            "(republished to amqp.dead_letter_exchange) or rejected.",
            labels=["reason", "action"],
        )
        for (reason, action), count in list(counters.rejections.items()):
            rejected.add_metric([reason, action], count)
        yield rejected
        yield CounterMetricFamily(
            "lbactors_reasserted_statuses",
            "Created objects' status entries cast again (Octavia's commit race) and confirmed.",
            value=counters.reasserted,
        )
        yield CounterMetricFamily(
            "lbactors_reassertions_dropped",
            "Re-assertion entries not sent (an operation of the load balancer was in flight) "
            "or not confirmed.",
            value=counters.reassertions_dropped,
        )
        if gateway.cluster_shards:  # [cluster] enabled (docs/cluster.md)
            yield GaugeMetricFamily(
                "lbactors_cluster_shards_held",
                "Cluster shard queues this daemon is the active consumer of.",
                value=len(gateway.held_shards()),
            )
            yield GaugeMetricFamily(
                "lbactors_cluster_shards", "Cluster shard queues of the deployment (S).",
                value=gateway.cluster_shards,
            )
            yield CounterMetricFamily(
                "lbactors_cluster_republished_operations",
                "Topic-queue operations re-published into their shard queue and confirmed.",
                value=counters.shard_published,
            )
            yield CounterMetricFamily(
                "lbactors_cluster_republish_failures",
                "Re-publishes nacked or returned by the broker (the original was requeued).",
                value=counters.shard_publish_failed,
            )
            yield CounterMetricFamily(
                "lbactors_cluster_shards_released",
                "Shards given away by balance.",
                value=counters.shards_released,
            )
            yield CounterMetricFamily(
                "lbactors_cluster_duplicates_dropped",
                "Second copies of an operation already run here, acked without running.",
                value=counters.duplicates,
            )


class MetricsEndpoint:
    """prometheus-client's HTTP server on a thread of its own."""

    def __init__(self, metrics: DaemonMetrics, address: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, address, registry=metrics.registry)
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
