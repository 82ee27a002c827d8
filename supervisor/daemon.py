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
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from lbactors.config import Config
from lbactors.gateway import Gateway, GatewaySettings, GatewaySetupError, serve_gateway
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
    )


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
    return (
        f"STATUS=workers {alive}/{len(router.workers)}, "
        f"broker {'connected' if gateway.connected else 'DISCONNECTED'}, "
        f"in flight {gateway.in_flight}, completed {counters.completed}, "
        f"rejected {counters.rejected}, reconnects {counters.reconnects}, "
        f"reasserted {counters.reasserted}"
    )


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
            gateway: Gateway = await nursery.start(
                serve_gateway, gateway_settings(config), router, outcomes_receive
            )
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
                                on_round=on_round,
                            )
                        )
                    helper_nursery.start_soon(_watchdog, router, gateway)
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
    except* MetricsSetupError as group:
        log.critical("cannot open the metrics endpoint", error=str(group.exceptions[0]))
        code = 1
    return code
