"""The statistics collector: rounds, batching, deltas, out-of-sync repair (autojump clock)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio

from lbactors.messages import ListenerStatistics, StatusEntry, StatusUpdate
from lbactors.statistics import (
    RoundReport,
    StatisticsSettings,
    batches,
    merge_status_changes,
    offline_status,
    run_round,
    serve_statistics,
)


def listeners(n: int, start: int = 0) -> list[ListenerStatistics]:
    return [ListenerStatistics(id=f"l{i}", bytes_in=i, total_connections=i) for i in range(start, start + n)]


class FakeSource:
    def __init__(self, report: RoundReport, *, delay: float = 0.0) -> None:
        self.report = report
        self.delay = delay
        self.rounds: list[float] = []
        self.with_owned: list[bool] = []

    async def collect_round(self, answer_within: float, *, with_owned_ids: bool) -> RoundReport:
        self.rounds.append(trio.current_time())
        self.with_owned.append(with_owned_ids)
        await trio.sleep(self.delay)
        return self.report


class FakeDriver:
    def __init__(self, active: Any = None, *, answer: bool = True) -> None:
        self.casts: list[tuple[str, Any]] = []
        self.calls: list[str] = []
        self.active = active or []
        self.answer = answer
        self.busy: set[str] = set()
        self.busy_asked: list[float] = []

    async def publish_cast(self, method: str, args_json: bytes) -> None:
        self.casts.append((method, msgspec.json.decode(args_json)))

    async def call_driver(self, method: str, args_json: bytes, ttl: float) -> Any:
        self.calls.append(method)
        if not self.answer:
            await trio.sleep_forever()
        return self.active

    def lbs_busy_since(self, since: float) -> set[str]:
        self.busy_asked.append(since)
        return self.busy


def test_batches_split_at_the_limit_and_never_empty() -> None:
    assert list(batches([], 1000)) == []
    chunks = list(batches(listeners(2500), 1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert [s.id for c in chunks for s in c] == [f"l{i}" for i in range(2500)]


async def test_round_publishes_all_six_fields_in_batches() -> None:
    with trio.fail_after(10):
        source = FakeSource(RoundReport(listeners=listeners(5), status_changes=[]))
        driver = FakeDriver()
        settings = StatisticsSettings(interval=10, batch=2, sync_every=0)
        assert await run_round(settings, source, driver, 1) == 3
        assert [m for m, _ in driver.casts] == ["update_listener_statistics"] * 3
        entries = [e for _, args in driver.casts for e in args["statistics"]["listeners"]]
        assert len(entries) == 5
        for entry in entries:
            assert set(entry) == {
                "id", "active_connections", "bytes_in", "bytes_out", "request_errors", "total_connections",
            }
            assert all(isinstance(entry[k], int) for k in entry if k != "id")


async def test_round_without_listeners_sends_nothing() -> None:
    with trio.fail_after(10):
        driver = FakeDriver()
        settings = StatisticsSettings(sync_every=0)
        assert await run_round(settings, FakeSource(RoundReport(listeners=[], status_changes=[])), driver, 1) == 0
        assert driver.casts == []


async def test_rounds_at_the_interval(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        source = FakeSource(RoundReport(listeners=listeners(1), status_changes=[]))
        driver = FakeDriver()
        with trio.move_on_after(35.5):
            await serve_statistics(StatisticsSettings(interval=10, sync_every=0), source, driver)
        assert source.rounds == pytest.approx([10, 20, 30])
        assert len(driver.casts) == 3


async def test_slow_rounds_never_pile_up(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        source = FakeSource(RoundReport(listeners=listeners(1), status_changes=[]), delay=25)
        with trio.move_on_after(100):
            await serve_statistics(StatisticsSettings(interval=10, sync_every=0), source, FakeDriver())
        # each round takes 25 s: starts at 10, 40 (20 and 30 skipped), 70, 100...
        assert source.rounds[:3] == pytest.approx([10, 40, 70])


async def test_interval_zero_disables(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        source = FakeSource(RoundReport(listeners=listeners(1), status_changes=[]))
        await serve_statistics(StatisticsSettings(interval=0), source, FakeDriver())
        assert source.rounds == []


async def test_status_changes_merged_into_one_cast() -> None:
    with trio.fail_after(10):
        changes = [
            StatusUpdate(members=[StatusEntry(id="m1", operating_status="ERROR")]),
            StatusUpdate(members=[StatusEntry(id="m2", operating_status="ONLINE")], pools=[
                StatusEntry(id="p", operating_status="DEGRADED")]),
        ]
        driver = FakeDriver()
        source = FakeSource(RoundReport(listeners=[], status_changes=changes))
        assert await run_round(StatisticsSettings(sync_every=0), source, driver, 1) == 1
        (method, args), = driver.casts
        assert method == "update_loadbalancer_status"
        assert args == {"status": {
            "members": [{"id": "m1", "operating_status": "ERROR"}, {"id": "m2", "operating_status": "ONLINE"}],
            "pools": [{"id": "p", "operating_status": "DEGRADED"}],
        }}
        assert merge_status_changes([]) is None


def test_offline_status() -> None:
    update, extra = offline_status(["a", "b", "c"], {"b", "z"})
    assert update is not None
    assert msgspec.to_builtins(update) == {"loadbalancers": [
        {"id": "a", "operating_status": "OFFLINE"}, {"id": "c", "operating_status": "OFFLINE"}]}
    assert extra == 1
    assert offline_status(["b"], {"b"}) == (None, 0)


async def test_sync_every_nth_round_reports_unknown_lbs_offline() -> None:
    with trio.fail_after(10):
        report = RoundReport(listeners=[], status_changes=[], owned_lb_ids={"mine"})
        driver = FakeDriver(active=["mine", "lost"])
        source = FakeSource(report)
        settings = StatisticsSettings(sync_every=3)
        for n in (1, 2):
            await run_round(settings, source, driver, n)
        assert driver.calls == []
        assert await run_round(settings, source, driver, 3) == 1
        assert source.with_owned == [False, False, True]
        assert driver.calls == ["get_active_loadbalancers"]
        assert driver.casts == [("update_loadbalancer_status", {"status": {"loadbalancers": [
            {"id": "lost", "operating_status": "OFFLINE"}]}})]


async def test_sync_without_answer_is_logged_not_fatal(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        report = RoundReport(listeners=[], status_changes=[], owned_lb_ids=set())
        driver = FakeDriver(answer=False)
        settings = StatisticsSettings(sync_every=1, sync_timeout=5)
        assert await run_round(settings, FakeSource(report), driver, 1) == 0
        assert driver.casts == []


async def test_sync_skipped_when_a_worker_did_not_answer() -> None:
    with trio.fail_after(10):
        report = RoundReport(listeners=[], status_changes=[], owned_lb_ids=None, skipped_workers=[1])
        driver = FakeDriver(active=["x"])
        assert await run_round(StatisticsSettings(sync_every=1), FakeSource(report), driver, 1) == 0
        assert driver.casts == []  # asked, but nothing reported without every worker's ids


class CreatedDuringTheRound:
    """A load balancer whose create completes while the round runs: the driver lists it as
    ACTIVE once its status cast arrived, and the workers own it from then on."""

    def __init__(self, *, created_during: str) -> None:
        self.created = False
        self.created_during = created_during
        self.casts: list[tuple[str, Any]] = []

    def owned(self) -> set[str]:
        return {"old", "new"} if self.created else {"old"}

    async def collect_round(self, answer_within: float, *, with_owned_ids: bool) -> RoundReport:
        report = RoundReport(listeners=[], status_changes=[], owned_lb_ids=self.owned())
        if self.created_during == "collect":
            self.created = True
        return report

    async def publish_cast(self, method: str, args_json: bytes) -> None:
        self.casts.append((method, msgspec.json.decode(args_json)))

    async def call_driver(self, method: str, args_json: bytes, ttl: float) -> Any:
        if self.created_during == "call":
            self.created = True
        return sorted(self.owned())

    def lbs_busy_since(self, since: float) -> set[str]:
        return set()


@pytest.mark.parametrize("created_during", ["call", "collect"])
async def test_a_load_balancer_created_during_a_sync_round_is_not_reported_offline(
    created_during: str,
) -> None:
    """Whether the create lands while the driver is asked or while the workers are, the
    driver's ACTIVE list never holds a load balancer the workers did not own (CI once saw
    one reported OFFLINE: the workers were asked first)."""
    with trio.fail_after(10):
        world = CreatedDuringTheRound(created_during=created_during)
        assert await run_round(StatisticsSettings(sync_every=1), world, world, 1) == 0
        assert world.casts == []


async def test_a_load_balancer_busy_since_before_the_sync_is_not_reported_offline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One deleted while the driver was asked is owned by nobody when the workers answer,
    though the driver listed it: the gateway says it was busy, so it is left alone; the
    look-back is ``sync_timeout`` before the driver was asked."""
    await trio.sleep(100)
    with trio.fail_after(60):
        report = RoundReport(listeners=[], status_changes=[], owned_lb_ids={"mine"})
        driver = FakeDriver(active=["mine", "deleted", "lost"])
        driver.busy = {"deleted"}
        settings = StatisticsSettings(sync_every=1, sync_timeout=7)
        assert await run_round(settings, FakeSource(report), driver, 1) == 1
        assert driver.busy_asked == [pytest.approx(93)]
        assert driver.casts == [("update_loadbalancer_status", {"status": {"loadbalancers": [
            {"id": "lost", "operating_status": "OFFLINE"}]}})]
