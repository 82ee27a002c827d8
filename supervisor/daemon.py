"""``lbactors serve``: the supervisor process.

It owns the structured-concurrency root: the worker processes (through the
:class:`~supervisor.router.Router`), the gateway (the only broker connection), the statistics
timer and the systemd notifications. Shutdown on SIGTERM / SIGINT: ``STOPPING=1``, stop
handing on new deliveries, let in-flight operations finish within the grace period (their
outcomes are published, confirmed and acked), stop the workers, close the connection, exit 0.
Whatever did not finish stays unacked and the broker redelivers it to the next daemon.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from lbactors.backends import load_backend
from lbactors.backends.base import Backend
from lbactors.config import Config
from lbactors.gateway import Affinity, Gateway, GatewaySettings, GatewaySetupError
from lbactors.logs import configure_logging
from lbactors.messages import Outbound
from lbactors.statistics import StatisticsSettings, serve_statistics
from supervisor.metrics import DaemonMetrics, MetricsEndpoint
from supervisor.router import RestartBudgetExceeded, Router
from supervisor.sdnotify import notify, watchdog_period
from supervisor.status import SOCKET_NAME, RoundLog, runtime_dir, serve_status, status_snapshot

log = structlog.get_logger("lbactors.supervisor")

MIGRATION_SUFFIX = "_migration"


class MetricsSetupError(Exception):
    """The metrics endpoint could not listen on its address."""


def gateway_settings(config: Config) -> GatewaySettings:
    """The gateway's view of the ``[amqp]`` section (``api_replay_mode`` picks the migration topics)."""
    amqp = config.amqp
    suffix = MIGRATION_SUFFIX if amqp.api_replay_mode else ""
    return GatewaySettings(
        url=amqp.url,
        topic=amqp.topic + suffix,
        driver_topic=amqp.driver_topic + suffix,
        exchange=amqp.exchange,
        host=amqp.host,
        durable_queues=amqp.durable_queues,
        quorum_queues=amqp.quorum_queues,
        ha_queues=amqp.ha_queues,
        transient_queues_ttl=amqp.transient_queues_ttl,
        prefetch=amqp.prefetch,
        heartbeat=amqp.heartbeat,
        max_body_bytes=amqp.max_body_bytes,
        dead_letter_exchange=amqp.dead_letter_exchange,
        reconnect_initial=amqp.reconnect_initial,
        reconnect_max=amqp.reconnect_max,
        ca_file=amqp.ca_file,
        cluster=config.cluster.enabled,
        shards=config.cluster.shards,
        balance_interval=config.cluster.balance_interval,
        shard_prefetch=config.cluster.shard_prefetch,
        takeover_delay=config.cluster.takeover_delay,
        dedup_window=config.cluster.dedup_window,
    )


class ClusterConfigError(Exception):
    """``[cluster]`` cannot run with this configuration (the message names the key)."""


def backend_affinity(config: Config) -> tuple[Affinity | None, Callable[[str], str | None] | None]:
    """The backend's owner key functions, when it has them: ``affinity_key(request)`` and
    ``lb_affinity_key(lb_id)`` (None, None: keyed by the load balancer id).

    Built here, in the supervisor, on an instance that is never started (constructors do no
    I/O: the affinity contract in ``lbactors/backends/base.py``). Raises
    :class:`ClusterConfigError` for a backend that cannot fail over in cluster mode.
    """
    backend = load_backend(config.backend)
    cls = type(backend)
    if config.cluster.enabled and not getattr(cls, "failover", True):
        raise ClusterConfigError(
            f"cluster.enabled = true cannot run with backend.name = {config.backend.name!r}: "
            "its data plane is local to this host, so another daemon could not take its load "
            "balancers over (README, 'Several controllers')"
        )
    if cls.affinity_key is Backend.affinity_key:
        return None, None
    return backend.affinity_key, getattr(backend, "lb_affinity_key", None)


def statistics_settings(config: Config) -> StatisticsSettings:
    stats = config.stats
    return StatisticsSettings(
        interval=stats.interval,
        batch=stats.batch,
        sync_every=stats.sync_every,
        worker_timeout=stats.worker_timeout,
        sync_timeout=stats.sync_timeout,
    )


def _status_line(router: Router, gateway: Gateway) -> str:
    alive = sum(worker.alive for worker in router.workers)
    counters = gateway.counters
    shards = (
        f", shards {len(gateway.held_shards())}/{gateway.cluster_shards}"
        if gateway.cluster_shards
        else ""
    )
    return (
        f"STATUS=workers {alive}/{len(router.workers)}, "
        f"broker {'connected' if gateway.connected else 'DISCONNECTED'}{shards}, "
        f"in flight {gateway.in_flight}, completed {counters.completed}, "
        f"rejected {counters.rejected}, reconnects {counters.reconnects}, "
        f"reasserted {counters.reasserted}"
    )


async def _fence(router: Router, config: Config) -> None:
    """Cluster mode, the broker connection lost: our shards went to the next daemons in line,
    so nothing of theirs may keep running here (docs/cluster.md §7). The workers are killed
    and started afresh; their deliveries come back from the broker to the new owners."""
    forgotten = await router.abandon(within=config.daemon.stop_timeout + config.daemon.cancel_grace)
    log.warning("fenced: workers replaced after the broker connection was lost",
                abandoned_operations=forgotten)


async def _watchdog(router: Router, gateway: Gateway) -> None:
    """``WATCHDOG=1`` from the supervisor loop, with ``STATUS=`` counts.

    The ping proves that this event loop runs; a worker that is down is restarted by its own
    supervising task and shows in STATUS.
    """
    period = watchdog_period() or 10.0
    while True:
        await trio.sleep(period)
        await notify("WATCHDOG=1", _status_line(router, gateway))


async def serve_daemon(config: Config, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until SIGTERM or SIGINT, then drain and return."""
    outcomes_send, outcomes_receive = trio.open_memory_channel[Outbound](
        max(config.amqp.prefetch * 4, 64)
    )
    affinity, lb_affinity = backend_affinity(config)
    if config.cluster.enabled and not (config.amqp.quorum_queues or config.amqp.ha_queues):
        log.warning(
            "cluster mode without amqp.quorum_queues: the topic and driver queues live on one "
            "broker node and are lost with it (set it on every daemon and in Octavia's "
            "[oslo_messaging_rabbit] rabbit_quorum_queue)"
        )
    router = Router(config, outcomes_send)
    started = time.time()
    rounds = RoundLog()
    metrics = DaemonMetrics() if config.metrics.enabled else None

    def on_round(number: int, seconds: float, messages: int) -> None:
        rounds.number, rounds.duration, rounds.messages = number, seconds, messages
        rounds.ended = time.time()
        if metrics is not None:
            metrics.observe_round(seconds, messages, rounds.ended)

    with contextlib.ExitStack() as closing, trio.open_signal_receiver(
        signal.SIGTERM, signal.SIGINT
    ) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(router.serve)
            gateway = Gateway(
                gateway_settings(config),
                router,
                outcomes_receive,
                affinity=affinity,
                lb_affinity=lb_affinity,
                on_fence=partial(_fence, router, config),
            )
            await nursery.start(gateway.serve)
            if metrics is not None:
                gateway.on_settled = metrics.observe_settled
                metrics.watch(router, gateway)
                closing.callback(_open_endpoint(metrics, config).close)
            # `lbactors status` answers until the end, the drain included
            status_scope = trio.CancelScope()
            snapshot = partial(
                status_snapshot, router, gateway, rounds, started=started, pid=os.getpid()
            )
            await nursery.start(
                _serve_status_within, status_scope, runtime_dir(config) / SOCKET_NAME, snapshot
            )
            with trio.CancelScope() as helpers:
                async with trio.open_nursery() as helper_nursery:
                    if config.stats.interval > 0:
                        helper_nursery.start_soon(
                            partial(
                                serve_statistics,
                                statistics_settings(config),
                                router,
                                gateway,
                                ownership=gateway if config.cluster.enabled else None,
                                on_round=on_round,
                            )
                        )
                    helper_nursery.start_soon(_watchdog, router, gateway)
                    # what start-up built lives as long as the daemon: out of the collector's
                    # sight, so that its full collections walk only what operations create
                    gc.freeze()
                    await notify("READY=1", _status_line(router, gateway))
                    log.info(
                        "lbactors ready",
                        workers=len(router.workers),
                        topic=gateway.settings.topic,
                        pid=os.getpid(),
                    )
                    task_status.started(gateway)

                    async for signum in signals:
                        log.info("stopping", signal=signal.Signals(signum).name)
                        break
                    helpers.cancel()
            await notify("STOPPING=1")
            with trio.move_on_after(config.daemon.grace_period) as grace:
                await gateway.drain()
            if grace.cancelled_caught:
                log.warning(
                    "grace period over; unfinished operations stay unacked for redelivery",
                    in_flight=gateway.in_flight,
                )
            # workers finish what they hold (their outcomes of dropped deliveries are
            # ignored); whatever still runs after stop_timeout is killed
            await router.stop(within=config.daemon.stop_timeout)
            # orderly connection close: whatever is still unacked goes back to the queue
            gateway.stop()
            status_scope.cancel()
    counters = gateway.counters
    log.info(
        "lbactors stopped",
        completed=counters.completed,
        rejected=counters.rejected,
        reconnects=counters.reconnects,
        reasserted=counters.reasserted,
        reassertions_dropped=counters.reassertions_dropped,
    )


async def _serve_status_within(
    scope: trio.CancelScope,
    path: Path,
    snapshot: Callable[[], dict[str, Any]],
    *,
    task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await serve_status(path, snapshot, task_status=task_status)


def _open_endpoint(metrics: DaemonMetrics, config: Config) -> MetricsEndpoint:
    try:
        endpoint = MetricsEndpoint(metrics, config.metrics.address, config.metrics.port)
    except OSError as exc:
        raise MetricsSetupError(
            f"metrics endpoint on {config.metrics.address}:{config.metrics.port}: {exc}"
        ) from exc
    log.info("metrics endpoint listening", address=endpoint.address[0], port=endpoint.address[1])
    return endpoint


def run(config: Config) -> int:
    """Entry point of ``lbactors serve``: the exit code."""
    configure_logging(config.log.level, config.log.format)
    code = 0
    try:
        trio.run(serve_daemon, config)
    except* RestartBudgetExceeded as group:
        log.critical(
            "restart budget exceeded; exiting for systemd to restart the service",
            error=str(group.exceptions[0]),
        )
        code = 1
    except* GatewaySetupError as group:
        log.critical("cannot set up the broker topology", error=str(group.exceptions[0]))
        code = 1
    except* ClusterConfigError as group:
        log.critical("invalid configuration", error=str(group.exceptions[0]))
        code = 1
    except* MetricsSetupError as group:
        log.critical("cannot open the metrics endpoint", error=str(group.exceptions[0]))
        code = 1
    return code
