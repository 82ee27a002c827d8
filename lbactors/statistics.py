"""Listener statistics and operating statuses: the periodic collector (the seed's collector thread).

Every ``interval`` seconds one round: ask every worker for its listeners' counters and the
operating statuses that changed since its last report; publish the counters as
``update_listener_statistics(statistics={"listeners": [...]})`` casts of at most ``batch``
entries (never an empty one), and the changes as one ``update_loadbalancer_status`` cast of
``{id, operating_status}`` entries. Every ``sync_every`` rounds, ask the driver for its ACTIVE
load balancers (``get_active_loadbalancers``), then the workers, and report those nobody here
owns as OFFLINE (in that order: see :func:`run_round`).

In cluster mode (an :class:`Ownership` is given, docs/cluster.md §6) a daemon reports the
statistics and operating statuses of the load balancers of the shards it holds only, and
reports OFFLINE only a load balancer whose shard it held *settled* (same consumer epoch)
from before the driver was asked until the OFFLINE cast: never one of another daemon's.

Rounds never pile up: the next one starts ``interval`` after the previous one *started*, or at
once if it overran (missed ticks are skipped, not queued).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import msgspec
import structlog
import trio

from lbactors.messages import ListenerStatistics, StatusEntry, StatusUpdate

log = structlog.get_logger("lbactors.statistics")

_encoder = msgspec.json.Encoder()

PLURAL_KEYS = (
    "loadbalancers", "listeners", "pools", "members", "healthmonitors", "l7policies", "l7rules",
)


class StatisticsSettings(msgspec.Struct, kw_only=True):
    interval: float = 10.0
    batch: int = 1000
    sync_every: int = 10
    worker_timeout: float = 5.0
    sync_timeout: float = 10.0


class RoundReport(msgspec.Struct, kw_only=True):
    """What one collection round gathered from every worker that answered in time."""

    listeners: list[ListenerStatistics]
    status_changes: list[StatusUpdate]
    owned_lb_ids: set[str] | None = None
    skipped_workers: list[int] = msgspec.field(default_factory=list)


class StatisticsSource(Protocol):
    async def collect_round(
        self,
        answer_within: float,
        *,
        with_owned_ids: bool,
        held_shards: list[int] | None = None,
        shards: int = 0,
    ) -> RoundReport: ...


class Ownership(Protocol):
    """Cluster mode: which shards this daemon holds (the gateway)."""

    @property
    def cluster_shards(self) -> int: ...

    def held_shards(self) -> list[int]: ...

    def settled_shards(self) -> dict[int, int]: ...

    def shard_of_lb(self, lb_id: str) -> int | None: ...


class DriverLink(Protocol):
    """The driver side, through the gateway."""

    async def publish_cast(self, method: str, args_json: bytes) -> None: ...

    async def call_driver(self, method: str, args_json: bytes, ttl: float) -> Any: ...

    def lbs_busy_since(self, since: float) -> set[str]:
        """Load balancers with an operation in flight, or whose last operation's outcome came
        out at or after ``since`` (trio time): their status is moving, the repair leaves them."""
        ...


def batches(listeners: list[ListenerStatistics], size: int) -> Iterator[list[ListenerStatistics]]:
    """Consecutive chunks of at most ``size`` entries; nothing for an empty list."""
    for start in range(0, len(listeners), size):
        yield listeners[start : start + size]


def statistics_args(listeners: list[ListenerStatistics]) -> bytes:
    return b'{"statistics":{"listeners":' + _encoder.encode(listeners) + b"}}"


def merge_status_changes(updates: Iterable[StatusUpdate]) -> StatusUpdate | None:
    """One status update holding every entry of ``updates``; None when there is none."""
    merged: dict[str, list[StatusEntry]] = {}
    for update in updates:
        for key in PLURAL_KEYS:
            entries = getattr(update, key)
            if entries is not msgspec.UNSET and entries:
                merged.setdefault(key, []).extend(entries)
    if not merged:
        return None
    return StatusUpdate(**merged)


def offline_status(active_ids: Iterable[str], owned: set[str]) -> tuple[StatusUpdate | None, int]:
    """Octavia's ACTIVE load balancers that nobody here owns, as OFFLINE; and how many we own
    that Octavia does not list."""
    active = set(active_ids)
    missing = sorted(active - owned)
    extra = len(owned - active)
    if not missing:
        return None, extra
    return (
        StatusUpdate(
            loadbalancers=[StatusEntry(id=lb_id, operating_status="OFFLINE") for lb_id in missing]
        ),
        extra,
    )


def status_args(update: StatusUpdate) -> bytes:
    return b'{"status":' + _encoder.encode(update) + b"}"


def owned_throughout(before: dict[int, int], after: dict[int, int]) -> set[int]:
    """Shards settled here in both snapshots with the same consumer epoch: held throughout."""
    return {shard for shard, epoch in before.items() if after.get(shard) == epoch}


async def run_round(
    settings: StatisticsSettings,
    source: StatisticsSource,
    driver: DriverLink,
    round_number: int,
    ownership: Ownership | None = None,
) -> int:
    """One collection round; returns the number of messages published.

    A sync round asks the driver for its ACTIVE load balancers *before* it asks the workers
    what they own: Octavia lists a load balancer as ACTIVE only after our status cast said
    so, which is after its actor took it on, so every id in the answer is owned by then.
    Asked the other way round, a load balancer created between the workers' answer and the
    driver's was reported OFFLINE though it was fine. And a load balancer whose operations
    ran here since ``sync_timeout`` before the driver was asked is left out: one deleted
    meanwhile is owned by nobody, but the driver may not have read its DELETED yet.
    """
    sync = settings.sync_every > 0 and round_number % settings.sync_every == 0
    settled_before = ownership.settled_shards() if ownership is not None else {}
    asked_at = trio.current_time()
    active = await _active_in_driver(settings, driver) if sync else None
    if ownership is None:
        report = await source.collect_round(settings.worker_timeout, with_owned_ids=sync)
    else:
        report = await source.collect_round(
            settings.worker_timeout,
            with_owned_ids=sync,
            held_shards=ownership.held_shards(),
            shards=ownership.cluster_shards,
        )
    if report.skipped_workers:
        log.warning("workers skipped in statistics round", workers=report.skipped_workers, round=round_number)
    messages = 0
    for chunk in batches(report.listeners, settings.batch):
        await driver.publish_cast("update_listener_statistics", statistics_args(chunk))
        messages += 1
    changes = merge_status_changes(report.status_changes)
    if changes is not None:
        await driver.publish_cast("update_loadbalancer_status", status_args(changes))
        messages += 1
    if active is not None and report.owned_lb_ids is not None:
        if ownership is not None:
            # only load balancers of shards held settled from before the driver was asked
            # until now: never one another daemon serves
            held = owned_throughout(settled_before, ownership.settled_shards())
            active = [lb_id for lb_id in active if ownership.shard_of_lb(lb_id) in held]
        busy = driver.lbs_busy_since(asked_at - settings.sync_timeout)
        active = [lb_id for lb_id in active if lb_id not in busy]
        messages += await _report_offline(driver, active, report.owned_lb_ids, ownership is None)
    return messages


async def _active_in_driver(settings: StatisticsSettings, driver: DriverLink) -> list[str] | None:
    """The driver's ACTIVE load balancers; None (logged) when it did not say."""
    try:
        with trio.fail_after(settings.sync_timeout):
            active = await driver.call_driver("get_active_loadbalancers", b"{}", settings.sync_timeout)
    except trio.TooSlowError:
        log.warning("get_active_loadbalancers got no answer", timeout_s=settings.sync_timeout)
        return None
    except Exception as exc:  # a failure reply or a broken connection: not fatal
        log.warning("get_active_loadbalancers failed", error=repr(exc))
        return None
    if not isinstance(active, list) or not all(isinstance(i, str) for i in active):
        log.warning("get_active_loadbalancers returned something else than a list of ids")
        return None
    return active


async def _report_offline(
    driver: DriverLink, active: list[str], owned: set[str], log_extra: bool
) -> int:
    update, extra = offline_status(active, owned)
    if extra and log_extra:
        log.info("load balancers owned here that Octavia does not list as ACTIVE", count=extra)
    if update is None:
        return 0
    log.warning(
        "reporting load balancers unknown to the backend as OFFLINE",
        count=len(update.loadbalancers) if update.loadbalancers is not msgspec.UNSET else 0,
    )
    await driver.publish_cast("update_loadbalancer_status", status_args(update))
    return 1


async def serve_statistics(
    settings: StatisticsSettings,
    source: StatisticsSource,
    driver: DriverLink,
    *,
    ownership: Ownership | None = None,
    on_round: Callable[[int, float, int], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run rounds every ``settings.interval`` seconds until cancelled (``ownership``: cluster
    mode, see the module docstring); ``on_round`` is told each round's number, duration
    (seconds) and messages published."""
    task_status.started()
    if settings.interval <= 0:
        return
    round_number = 0
    next_start = trio.current_time() + settings.interval
    while True:
        await trio.sleep_until(next_start)
        round_number += 1
        started = trio.current_time()
        messages = await run_round(settings, source, driver, round_number, ownership)
        if on_round is not None:
            on_round(round_number, trio.current_time() - started, messages)
        log.debug("statistics round", round=round_number, messages=messages,
                  duration_s=round(trio.current_time() - started, 3))
        next_start += settings.interval
        if next_start <= trio.current_time():  # overran: skip the missed ticks
            missed = int((trio.current_time() - next_start) // settings.interval) + 1
            next_start += missed * settings.interval
            log.warning("statistics round overran its interval", round=round_number, skipped_rounds=missed)
