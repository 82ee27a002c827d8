"""The router (supervisor/router.py) against in-memory fake workers.

Each fake worker is a task that speaks the IPC frames (:mod:`lbactors.ipc`) over a
``memory_stream_pair``, started through the router's ``spawn`` seam instead of a process. It
answers ``Spawn`` with ``Ready`` and ``Ping`` with ``Pong`` and records every operation it
receives; the test decides which outcomes come back, when a worker dies and what it reports
in a statistics round. Time is trio's autojump clock, and every test runs under
``fail_after``, so a router that stops making progress fails the test instead of hanging it.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import pytest
import trio
import trio.testing

from lbactors import ipc
from lbactors.config import BackendSection, Config, DaemonSection, decode_config
from lbactors.messages import (
    ListenerStatistics,
    Operation,
    Outbound,
    Outcome,
    Reassertion,
    StatusEntry,
    StatusUpdate,
)
from lbactors.routing import shard
from supervisor import router as router_module
from supervisor.router import RestartBudgetExceeded, Router

StatsMode = Literal["answer", "incomplete", "silent"]


class FakeWorker:
    """One incarnation of a worker: its process (for the router) and its end of the stream."""

    def __init__(self, fakes: Fakes, stream: trio.StapledStream[Any, Any], pid: int) -> None:
        self._fakes = fakes
        self._stream = stream
        self.frames = ipc.FrameStream(stream)
        self.pid = pid
        self.returncode: int | None = None
        self._exited = trio.Event()
        self._scope = trio.CancelScope()
        self.index: int | None = None
        self.incarnation: int | None = None
        #: the configuration of its Spawn frame, decoded as a worker decodes it
        self.config: Config | None = None
        self.received: list[Operation] = []
        self.stats_mode: StatsMode = "answer"
        self.stats_requests: list[ipc.CollectStats] = []
        #: Ready waits for this event (a worker still starting up)
        self.hold_ready = fakes.hold_ready
        #: on end of stream from the router: exit (True), or go on running (a stuck worker)
        self.exits_on_eof = fakes.exits_on_eof
        #: False: its event loop is stuck (it reads, but answers nothing)
        self.answers_pings = True
        self.saw_eof = False

    # -- what the router sees of a process

    def kill(self) -> None:
        self.die(-signal.SIGKILL)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    # -- what the test does

    def die(self, code: int = -signal.SIGKILL) -> None:
        """The process ends: its end of the socket closes (the router reads end of stream,
        and its writes break)."""
        if self.returncode is not None:
            return
        self.returncode = code
        send_stream = self._stream.send_stream
        receive_stream = self._stream.receive_stream
        assert isinstance(send_stream, trio.testing.MemorySendStream)
        assert isinstance(receive_stream, trio.testing.MemoryReceiveStream)
        send_stream.close()
        receive_stream.close()
        self._scope.cancel()
        self._exited.set()
        self._fakes.changed()

    async def complete(self, ops: list[Operation], **fields: Any) -> None:
        """Send back the outcomes of ``ops``, in this order."""
        await self.frames.send_many(
            [ipc.Done(outcome=Outcome(op_id=op.op_id, lb_id=op.lb_id, **fields)) for op in ops]
        )

    async def serve(self) -> None:
        with self._scope:
            try:
                async for frame in self.frames:
                    await self._handle(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            else:
                self.saw_eof = True
                self._fakes.changed()
                if not self.exits_on_eof:
                    await trio.sleep_forever()
        self.die(0)  # end of stream from the router: a worker exits

    async def _handle(self, frame: ipc.Frame) -> None:
        if isinstance(frame, ipc.Spawn):
            self.index, self.incarnation = frame.worker_index, frame.incarnation
            self.config = decode_config(frame.config)
            self._fakes.changed()
            if self.hold_ready is not None:
                await self.hold_ready.wait()
            await self.frames.send(ipc.Ready(worker_index=frame.worker_index, pid=self.pid))
        elif isinstance(frame, ipc.Submit):
            self.received.append(frame.op)
        elif isinstance(frame, ipc.Ping):
            if self.answers_pings:
                await self.frames.send(ipc.Pong())
        elif isinstance(frame, ipc.CollectStats):
            self.stats_requests.append(frame)
            await self._answer_stats(frame)
        else:  # pragma: no cover - the router sends nothing else
            raise AssertionError(f"unexpected frame {frame!r}")
        self._fakes.changed()

    async def _answer_stats(self, request: ipc.CollectStats) -> None:
        if self.stats_mode == "silent":
            return
        if self.stats_mode == "incomplete":
            report = ipc.StatsReport(
                round=request.round, listeners=[], status_changes=[], complete=False
            )
        else:
            report = ipc.StatsReport(
                round=request.round,
                listeners=[ListenerStatistics(id=f"listener-of-{self.index}")],
                status_changes=[],
                owned_lb_ids=[f"lb-of-{self.index}"] if request.with_owned_ids else None,
            )
        await self.frames.send(report)


class Fakes:
    """The router's ``spawn``: every incarnation it started, each a :class:`FakeWorker`."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._pids = itertools.count(1000)
        self._changed = trio.Event()
        self.started: list[FakeWorker] = []
        #: while set (and not yet set()), every write of the router to a worker waits for it
        self.gate: trio.Event | None = None
        #: for the incarnations started from now on (:class:`FakeWorker`)
        self.hold_ready: trio.Event | None = None
        self.exits_on_eof = True

    async def spawn(self) -> tuple[FakeWorker, trio.abc.Stream]:
        ours, theirs = trio.testing.memory_stream_pair()
        pump = ours.send_stream.send_all_hook

        async def gated_pump() -> None:
            if self.gate is not None:
                await self.gate.wait()
            if pump is not None:
                await pump()

        ours.send_stream.send_all_hook = gated_pump
        fake = FakeWorker(self, theirs, next(self._pids))
        self.started.append(fake)
        self._nursery.start_soon(fake.serve)
        return fake, ours

    def changed(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds; woken by every frame a fake receives and every death
        (bounded by the test's ``fail_after``)."""
        while not predicate():
            await self._changed.wait()

    async def received(self, fake: FakeWorker, count: int) -> None:
        """Until ``fake`` received ``count`` operations."""
        await self.wait_for(lambda: len(fake.received) >= count)

    def live(self, index: int) -> FakeWorker | None:
        """Worker ``index``'s incarnation that answered its Spawn and has not died."""
        for fake in reversed(self.started):
            if fake.index == index and fake.returncode is None:
                return fake
        return None

    async def incarnation(self, index: int, number: int) -> FakeWorker:
        """Worker ``index``'s incarnation ``number``, once it received its Spawn."""
        await self.wait_for(
            lambda: any(f.index == index and f.incarnation == number for f in self.started)
        )
        return next(f for f in self.started if f.index == index and f.incarnation == number)


@asynccontextmanager
async def open_router(
    workers: int, config: Config | None = None, outcome_buffer: float = math.inf, **daemon: Any
) -> AsyncIterator[tuple[Router, Fakes, trio.MemoryReceiveChannel[Outbound]]]:
    """A started router over ``workers`` fake workers; the outcomes it passes on (a channel
    of ``outcome_buffer`` places)."""
    if config is None:
        config = Config(daemon=DaemonSection(workers=workers, **daemon))
    send, receive = trio.open_memory_channel[Outbound](outcome_buffer)
    async with trio.open_nursery() as nursery:
        fakes = Fakes(nursery)
        router = Router(config, send, spawn=fakes.spawn)
        await nursery.start(router.serve)
        yield router, fakes, receive
        nursery.cancel_scope.cancel()


_op_ids = itertools.count(1)


def make_op(lb_id: str) -> Operation:
    return Operation(op_id=next(_op_ids), method="member_create", args=b"{}", lb_id=lb_id)


def lbs_of(worker: int, workers: int, count: int) -> list[str]:
    """``count`` load balancer ids that shard to ``worker``."""
    candidates = (f"lb-{n}" for n in itertools.count())
    return list(itertools.islice((lb for lb in candidates if shard(lb, workers) == worker), count))


def received_outcomes(receive: trio.MemoryReceiveChannel[Outbound]) -> list[int]:
    """The op ids of every outcome passed on so far."""
    op_ids: list[int] = []
    while True:
        try:
            item = receive.receive_nowait()
        except trio.WouldBlock:
            return op_ids
        assert isinstance(item, Outcome)
        op_ids.append(item.op_id)


def ids(ops: list[Operation]) -> list[int]:
    return [op.op_id for op in ops]


# --------------------------------------------------------------------------- spawn


async def test_every_worker_gets_the_whole_configuration(autojump_clock: trio.abc.Clock) -> None:
    """Whatever the configuration holds reaches the workers as it is: infinite floats too
    (valid TOML, and accepted by the configuration; JSON would turn them into null, and
    every worker would fail to start)."""
    config = Config(
        daemon=DaemonSection(workers=2, restart_window=math.inf, actor_idle_timeout=math.inf),
        backend=BackendSection(noop={"latency": math.inf}),
    )
    with trio.fail_after(60):
        async with open_router(workers=2, config=config) as (_, fakes, _):
            spawned = [await fakes.incarnation(index, 1) for index in range(2)]
            assert [f.config for f in spawned] == [config, config]


# --------------------------------------------------------------------------- the ledger


async def test_outcomes_empty_the_ledger_and_are_never_replayed(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=1) as (router, fakes, outcomes):
            first = await fakes.incarnation(0, 1)
            ops = [make_op(lb) for lb in ("lb-a", "lb-b") for _ in range(5)]
            for op in ops:
                await router.submit(op)
            await fakes.received(first, len(ops))
            assert router.in_flight == len(ops)

            done, pending = ops[:7], ops[7:]
            await first.complete(done)
            await trio.testing.wait_all_tasks_blocked()
            assert received_outcomes(outcomes) == ids(done)
            assert router.in_flight == len(pending)

            # a restart replays what is still in flight, and nothing that completed
            first.die()
            second = await fakes.incarnation(0, 2)
            await fakes.received(second, len(pending))
            await trio.testing.wait_all_tasks_blocked()
            assert ids(second.received) == ids(pending)

            await second.complete(pending)
            await trio.testing.wait_all_tasks_blocked()
            assert received_outcomes(outcomes) == ids(pending)
            assert router.in_flight == 0
            second.die()
            third = await fakes.incarnation(0, 3)
            await trio.testing.wait_all_tasks_blocked()
            assert third.received == []


async def test_reassertions_are_passed_on_in_the_workers_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A worker's re-assertion leaves in its place among the outcomes: before any later
    outcome of its load balancer (the gateway publishes in this order)."""
    reassertion = Reassertion(
        lb_id="lb-a",
        status=StatusUpdate(members=[StatusEntry(id="m-1", provisioning_status="ACTIVE")]),
    )
    with trio.fail_after(60):
        async with open_router(workers=1) as (router, fakes, outcomes):
            worker = await fakes.incarnation(0, 1)
            ops = [make_op("lb-a") for _ in range(2)]
            for op in ops:
                await router.submit(op)
            await fakes.received(worker, len(ops))
            await worker.frames.send_many(
                [
                    ipc.Done(outcome=Outcome(op_id=ops[0].op_id, lb_id="lb-a")),
                    ipc.Reassert(reassertion=reassertion),
                    ipc.Done(outcome=Outcome(op_id=ops[1].op_id, lb_id="lb-a")),
                ]
            )
            passed_on = [await outcomes.receive() for _ in range(3)]
    assert [getattr(item, "op_id", None) for item in passed_on] == [ops[0].op_id, None, ops[1].op_id]
    assert passed_on[1] == reassertion


# --------------------------------------------------------------------------- order


async def test_batches_and_replays_keep_submission_order_across_load_balancers(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Many operations of several load balancers in flight at once, on two workers: what a
    worker receives, first in batches and then replayed after a death, is exactly its share
    of the submissions, in submission order."""
    workers = 2
    lbs = lbs_of(0, workers, 3) + lbs_of(1, workers, 3)
    with trio.fail_after(60):
        async with open_router(workers=workers) as (router, fakes, outcomes):
            first = [await fakes.incarnation(index, 1) for index in range(workers)]
            submitted: list[Operation] = []

            async def submit_round(rounds: int) -> None:
                for _ in range(rounds):
                    for lb in lbs:
                        op = make_op(lb)
                        submitted.append(op)
                        await router.submit(op)  # no checkpoint: one batch per worker

            def share(index: int, ops: list[Operation]) -> list[int]:
                return [op.op_id for op in ops if shard(op.lb_id, workers) == index]

            await submit_round(20)
            await trio.testing.wait_all_tasks_blocked()
            await submit_round(10)  # a second batch behind the first
            await trio.testing.wait_all_tasks_blocked()
            for index in range(workers):
                assert ids(first[index].received) == share(index, submitted)

            # worker 0 finishes the first 8 operations of each of its load balancers
            # (its load balancers interleaved, each in order), then dies
            mine = first[0].received
            done_ids = {
                op.op_id
                for lb in lbs_of(0, workers, 3)
                for op in [o for o in mine if o.lb_id == lb][:8]
            }
            done = [op for op in mine if op.op_id in done_ids]
            await first[0].complete(done)
            await trio.testing.wait_all_tasks_blocked()
            assert received_outcomes(outcomes) == ids(done)
            first[0].die()
            await trio.testing.wait_all_tasks_blocked()  # in its restart backoff
            assert not router.workers[0].alive
            await submit_round(3)  # queued in the ledger while worker 0 is down

            second = await fakes.incarnation(0, 2)
            await trio.testing.wait_all_tasks_blocked()
            await submit_round(2)  # after the replay
            await trio.testing.wait_all_tasks_blocked()
            expected = [i for i in share(0, submitted) if i not in set(ids(done))]
            assert ids(second.received) == expected
            # worker 1 never died: it got its share once, in order
            assert ids(first[1].received) == share(1, submitted)


async def test_the_worker_is_picked_by_the_owner_key_not_the_load_balancer(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Operations of load balancers that share a key go to the key's worker (whose actors
    serialize them), wherever their ids alone would shard; without a key, the id picks."""
    workers = 4
    key = "router-1"
    home = shard(key, workers)
    # load balancers whose ids shard to every other worker
    strangers = [lbs_of(index, workers, 1)[0] for index in range(workers) if index != home]
    with trio.fail_after(60):
        async with open_router(workers=workers) as (router, fakes, _):
            spawned = [await fakes.incarnation(index, 1) for index in range(workers)]
            keyed = [
                Operation(op_id=next(_op_ids), method="member_create", args=b"{}", lb_id=lb, key=key)
                for lb in strangers
            ]
            plain = [make_op(lb) for lb in strangers]
            for op in keyed + plain:
                await router.submit(op)
            await trio.testing.wait_all_tasks_blocked()
            assert ids(spawned[home].received) == ids(keyed)
            for lb, op in zip(strangers, plain, strict=True):
                assert spawned[shard(lb, workers)].received == [op]


# --------------------------------------------------------------------------- restarts


@pytest.mark.parametrize("limit", [0, 1, 3])
async def test_restart_budget_allows_exactly_its_limit(
    autojump_clock: trio.abc.Clock, limit: int
) -> None:
    with trio.fail_after(60):
        with pytest.RaisesGroup(RestartBudgetExceeded, flatten_subgroups=True):
            async with open_router(workers=1, restart_limit=limit, restart_window=60) as (
                router,
                fakes,
                _,
            ):
                for incarnation in range(1, limit + 2):
                    fake = await fakes.incarnation(0, incarnation)
                    # every restart within the budget gives a working worker
                    op = make_op("lb-a")
                    await router.submit(op)
                    await fakes.received(fake, 1)
                    assert ids(fake.received) == [op.op_id]
                    await fake.complete([op])
                    await trio.testing.wait_all_tasks_blocked()
                    assert router.in_flight == 0
                    fake.die()
                # one restart over the budget ends the router
                await trio.sleep_forever()
    assert len(fakes.started) == limit + 1


async def test_restarts_older_than_the_window_are_forgotten(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(120):
        async with open_router(workers=1, restart_limit=2, restart_window=10) as (
            router,
            fakes,
            _,
        ):
            for incarnation in (1, 2):
                (await fakes.incarnation(0, incarnation)).die()
            await fakes.incarnation(0, 3)
            await trio.sleep(11)  # both restarts leave the window
            for incarnation in (3, 4):
                (await fakes.incarnation(0, incarnation)).die()
            fifth = await fakes.incarnation(0, 5)
            await trio.testing.wait_all_tasks_blocked()
            assert router.workers[0].alive and fifth.returncode is None


# --------------------------------------------------------------------------- statistics


async def test_statistics_round_over_workers_that_all_answer(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=3) as (router, fakes, _):
            for index in range(3):
                await fakes.incarnation(index, 1)
            started = trio.current_time()
            report = await router.collect_round(5, with_owned_ids=True)
            assert trio.current_time() == started  # nobody was waited for
            assert report.skipped_workers == []
            assert report.owned_lb_ids == {"lb-of-0", "lb-of-1", "lb-of-2"}
            assert sorted(s.id for s in report.listeners) == [
                "listener-of-0",
                "listener-of-1",
                "listener-of-2",
            ]
            report = await router.collect_round(5, with_owned_ids=False)
            assert report.owned_lb_ids is None and len(report.listeners) == 3


async def test_each_statistics_round_trims_the_supervisors_heap(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(router_module, "trim_memory", lambda: trims.append(1))
    with trio.fail_after(60):
        async with open_router(workers=2) as (router, fakes, _):
            for index in range(2):
                await fakes.incarnation(index, 1)
            assert trims == []
            await router.collect_round(5, with_owned_ids=False)
            assert len(trims) == 1
            await router.collect_round(5, with_owned_ids=True)
            assert len(trims) == 2


async def test_a_statistics_round_asks_workers_for_the_held_shards_only(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=2) as (router, fakes, _):
            spawned = [await fakes.incarnation(index, 1) for index in range(2)]
            await router.collect_round(5, with_owned_ids=True, held_shards=[1, 7], shards=12)
            await router.collect_round(5, with_owned_ids=False)
            for fake in spawned:
                filtered, unfiltered = fake.stats_requests
                assert (filtered.held_shards, filtered.shards, filtered.with_owned_ids) == (
                    [1, 7],
                    12,
                    True,
                )
                assert (unfiltered.held_shards, unfiltered.shards) == (None, 0)


@pytest.mark.parametrize("mode", ["incomplete", "silent", "down"])
async def test_statistics_round_skips_a_worker_and_then_reports_no_owned_ids(
    autojump_clock: trio.abc.Clock, mode: str
) -> None:
    """A skipped worker (it could not read its backend, it did not answer in time, or it is
    down) leaves an incomplete picture: its counters are missing and no owned ids are
    reported at all (the out-of-sync sync would report its load balancers OFFLINE)."""
    with trio.fail_after(60):
        async with open_router(workers=3) as (router, fakes, _):
            for index in range(3):
                await fakes.incarnation(index, 1)
            skipped = fakes.live(1)
            assert skipped is not None
            if mode == "down":
                skipped.die()
                await trio.testing.wait_all_tasks_blocked()  # in its restart backoff
                assert not router.workers[1].alive
            else:
                skipped.stats_mode = "incomplete" if mode == "incomplete" else "silent"
            started = trio.current_time()
            report = await router.collect_round(5, with_owned_ids=True)
            assert trio.current_time() - started <= 5
            assert report.skipped_workers == [1]
            assert report.owned_lb_ids is None
            assert sorted(s.id for s in report.listeners) == ["listener-of-0", "listener-of-2"]
            assert (mode == "down") == (skipped.stats_requests == [])


# --------------------------------------------------------------------------- backpressure


async def test_submit_waits_once_the_outbox_holds_its_limit(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 8
    monkeypatch.setattr(router_module, "OUTBOX_LIMIT", limit)
    with trio.fail_after(60):
        async with open_router(workers=1, ping_interval=1000, ping_timeout=1000) as (
            router,
            fakes,
            _,
        ):
            fake = await fakes.incarnation(0, 1)
            await trio.testing.wait_all_tasks_blocked()
            fakes.gate = trio.Event()  # the worker's socket is full: writes wait
            first = make_op("lb-a")
            await router.submit(first)
            await trio.testing.wait_all_tasks_blocked()  # the sender is stuck writing it
            queued = [make_op("lb-a") for _ in range(limit)]
            for op in queued:
                await router.submit(op)  # up to the limit: returns at once
            over = make_op("lb-a")
            submitted = trio.Event()

            async def submit_over() -> None:
                await router.submit(over)
                submitted.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit_over)
                await trio.testing.wait_all_tasks_blocked()
                assert not submitted.is_set()
                fakes.gate.set()  # the worker reads again
                await submitted.wait()
            await fakes.received(fake, limit + 2)
            assert ids(fake.received) == ids([first, *queued, over])


# --------------------------------------------------------------------------- stop


async def test_stop_returns_once_every_worker_finished_and_exited(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=2) as (router, fakes, _):
            first = [await fakes.incarnation(index, 1) for index in range(2)]
            started = trio.current_time()
            await router.stop(within=10)
            assert trio.current_time() == started
            assert all(f.saw_eof and f.returncode == 0 for f in first)
            assert len(fakes.started) == 2  # nothing restarted


async def test_stop_kills_workers_still_running_after_its_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=2) as (router, fakes, _):
            fakes.exits_on_eof = False
            for index in range(2):
                (await fakes.incarnation(index, 1)).die()  # replaced by stuck ones
            stuck = [await fakes.incarnation(index, 2) for index in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            await router.stop(within=3)
            assert trio.current_time() - started == pytest.approx(3)
            assert all(f.saw_eof and f.returncode == -signal.SIGKILL for f in stuck)


async def test_a_worker_ready_after_stop_began_is_told_to_exit_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A worker restarting when the shutdown begins gets end of stream as soon as it is
    ready: it is neither fed its ledger nor left to the stop deadline and a kill."""
    with trio.fail_after(60):
        async with open_router(workers=1) as (router, fakes, _):
            first = await fakes.incarnation(0, 1)
            op = make_op("lb-a")
            await router.submit(op)
            await fakes.received(first, 1)
            fakes.hold_ready = trio.Event()
            first.die()
            second = await fakes.incarnation(0, 2)  # starting up, not ready yet
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(router.stop, 10)
                await trio.testing.wait_all_tasks_blocked()
                fakes.hold_ready.set()
            assert trio.current_time() - started < 10
            assert second.saw_eof and second.returncode == 0
            assert second.received == []  # left unacked, for redelivery
            assert router.in_flight == 1


# --------------------------------------------------------------------------- never stuck


async def test_a_silent_worker_is_killed_and_replaced_and_its_ledger_replayed(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(120):
        async with open_router(workers=1, ping_interval=1, ping_timeout=5) as (router, fakes, _):
            first = await fakes.incarnation(0, 1)
            op = make_op("lb-a")
            await router.submit(op)
            await fakes.received(first, 1)
            await trio.sleep(20)  # answering pings: never blamed
            assert first.returncode is None and router.unresponsive_kills == 0
            first.answers_pings = False
            silent_since = trio.current_time()
            second = await fakes.incarnation(0, 2)
            assert first.returncode == -signal.SIGKILL
            # silent for more than ping_timeout since its last Pong, seen at the next ping
            assert 5 - 1 < trio.current_time() - silent_since <= 5 + 1
            assert router.unresponsive_kills == 1
            await fakes.received(second, 1)
            assert ids(second.received) == [op.op_id]


async def test_a_worker_is_not_blamed_while_the_router_does_not_read_from_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Outcomes backed up behind a full outcome channel (a broker blocking publishers): the
    worker's frames wait unread, and its silence is not held against it."""
    with trio.fail_after(120):
        async with open_router(
            workers=1, outcome_buffer=0, ping_interval=1, ping_timeout=5
        ) as (router, fakes, outcomes):
            fake = await fakes.incarnation(0, 1)
            ops = [make_op("lb-a") for _ in range(2)]
            for op in ops:
                await router.submit(op)
            await fakes.received(fake, 2)
            await fake.complete(ops)
            await trio.sleep(60)  # nobody takes the outcomes
            assert fake.returncode is None and router.unresponsive_kills == 0
            passed_on = [await outcomes.receive() for _ in ops]
            assert [o.op_id for o in passed_on if isinstance(o, Outcome)] == ids(ops)
            await trio.sleep(20)
            assert fake.returncode is None and router.unresponsive_kills == 0


async def test_an_abandoned_call_is_passed_on_then_its_worker_replaced(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=1) as (router, fakes, outcomes):
            first = await fakes.incarnation(0, 1)
            stuck, behind = make_op("lb-a"), make_op("lb-a")
            await router.submit(stuck)
            await router.submit(behind)
            await fakes.received(first, 2)
            await first.complete([stuck], abandoned=True)
            second = await fakes.incarnation(0, 2)
            assert first.returncode == -signal.SIGKILL
            assert received_outcomes(outcomes) == [stuck.op_id]
            await fakes.received(second, 1)
            assert ids(second.received) == [behind.op_id]  # not the abandoned one


async def test_an_operation_alone_on_repeated_deaths_is_given_up_as_poison(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=1, poison_after=2) as (router, fakes, outcomes):
            poison = make_op("lb-a")
            await router.submit(poison)
            for incarnation in (1, 2):
                fake = await fakes.incarnation(0, incarnation)
                await fakes.received(fake, 1)
                assert received_outcomes(outcomes) == []  # one death: replayed
                fake.die()
            third = await fakes.incarnation(0, 3)
            await trio.testing.wait_all_tasks_blocked()
            assert third.received == []
            given_up = outcomes.receive_nowait()
            assert isinstance(given_up, Outcome)
            assert given_up.op_id == poison.op_id
            assert given_up.dead_letter is not None and "PoisonOperation" in given_up.dead_letter
            assert router.poisoned == 1 and router.in_flight == 0


async def test_suspects_of_repeated_deaths_are_replayed_one_at_a_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two operations in flight on two deaths: the next incarnation gets them one at a
    time (each after the previous one's outcome), then what was held back, in order."""
    with trio.fail_after(60):
        async with open_router(workers=1, poison_after=2) as (router, fakes, outcomes):
            suspects = [make_op("lb-a"), make_op("lb-b")]
            for op in suspects:
                await router.submit(op)
            for incarnation in (1, 2):
                fake = await fakes.incarnation(0, incarnation)
                await fakes.received(fake, 2)
                fake.die()
            third = await fakes.incarnation(0, 3)
            later = make_op("lb-c")
            await router.submit(later)
            await trio.testing.wait_all_tasks_blocked()
            assert ids(third.received) == [suspects[0].op_id]
            await third.complete([suspects[0]])
            await trio.testing.wait_all_tasks_blocked()
            assert ids(third.received) == ids(suspects)
            await third.complete([suspects[1]])
            await trio.testing.wait_all_tasks_blocked()
            assert ids(third.received) == ids([*suspects, later])
            assert received_outcomes(outcomes) == ids(suspects)
            assert router.poisoned == 0


# --------------------------------------------------------------------------- abandon (fencing)


async def test_abandon_kills_every_worker_forgets_its_ledger_and_drops_late_outcomes(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The broker connection is lost: every worker is killed and replaced at once, nothing
    is replayed, no outcome of an abandoned operation is passed on (not the one waiting to
    be, not those read or unread behind it), and neither the restart budget nor the poison
    count is charged; the fresh workers serve what comes next."""
    workers = 2
    with trio.fail_after(60):
        async with open_router(
            workers=workers, outcome_buffer=0, restart_limit=0, poison_after=1
        ) as (router, fakes, outcomes):
            first = [await fakes.incarnation(index, 1) for index in range(workers)]
            ops = [[make_op(lb) for lb in lbs_of(0, workers, 3)], [make_op(lbs_of(1, workers, 1)[0])]]
            for share in ops:
                for op in share:
                    await router.submit(op)
            for index in range(workers):
                await fakes.received(first[index], len(ops[index]))
            # nobody takes outcomes: the first waits to be passed on, the others behind it
            await first[0].complete(ops[0])
            await trio.testing.wait_all_tasks_blocked()
            assert router.workers[0].reader_blocked

            # the one waiting to be passed on has left the ledger already
            assert await router.abandon(within=30) == 3
            assert [f.returncode for f in first] == [-signal.SIGKILL] * workers
            second = [fakes.live(index) for index in range(workers)]
            assert [f.incarnation if f else None for f in second] == [2] * workers
            assert all(w.alive for w in router.workers)  # ready when abandon returned
            await trio.testing.wait_all_tasks_blocked()
            assert received_outcomes(outcomes) == []
            assert [f.received if f else None for f in second] == [[], []]
            assert router.in_flight == 0 and router.poisoned == 0
            assert router.abandoned_operations == 3

            fresh = make_op(lbs_of(0, workers, 1)[0])
            await router.submit(fresh)
            assert second[0] is not None
            await fakes.received(second[0], 1)
            assert ids(second[0].received) == [fresh.op_id]
            await second[0].complete([fresh])
            passed_on = await outcomes.receive()
            assert isinstance(passed_on, Outcome) and passed_on.op_id == fresh.op_id


async def test_abandon_returns_within_its_bound_when_a_worker_is_slow_to_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=1) as (router, fakes, _):
            first = await fakes.incarnation(0, 1)
            await router.submit(make_op("lb-a"))
            await fakes.received(first, 1)
            fakes.hold_ready = trio.Event()
            started = trio.current_time()
            assert await router.abandon(within=7) == 1
            assert trio.current_time() - started == pytest.approx(7)
            assert not router.workers[0].alive
            fakes.hold_ready.set()
            second = await fakes.incarnation(0, 2)
            await fakes.wait_for(lambda: router.workers[0].alive)
            assert second.received == []


async def test_outcomes_that_arrive_as_abandon_begins_are_dropped(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Outcomes already on their way when abandon() is called (read by the router in the
    same step, before the kill): none of them is passed on."""
    with trio.fail_after(60):
        async with open_router(workers=1) as (router, fakes, outcomes):
            first = await fakes.incarnation(0, 1)
            ops = [make_op("lb-a") for _ in range(3)]
            for op in ops:
                await router.submit(op)
            await fakes.received(first, len(ops))
            await trio.testing.wait_all_tasks_blocked()
            await first.complete(ops)  # the router's reader is woken with them ...
            await router.abandon(within=30)  # ... and runs only after this began
            await trio.testing.wait_all_tasks_blocked()
            assert received_outcomes(outcomes) == []
            assert router.in_flight == 0


async def test_a_poison_outcome_not_yet_passed_on_is_dropped_by_abandon(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_router(workers=1, poison_after=1, outcome_buffer=0) as (
            router,
            fakes,
            outcomes,
        ):
            first = await fakes.incarnation(0, 1)
            await router.submit(make_op("lb-a"))
            await fakes.received(first, 1)
            first.die()
            await trio.testing.wait_all_tasks_blocked()  # its ERROR outcome waits for room
            assert router.poisoned == 1
            await router.abandon(within=30)
            await trio.testing.wait_all_tasks_blocked()
            assert received_outcomes(outcomes) == []
            assert router.workers[0].alive


def test_default_worker_count_leaves_a_cpu_to_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """``daemon.workers = 0``: one per CPU the process may run on (its affinity, not the
    machine's count), but one, and never none."""
    from supervisor.router import default_worker_count

    for cpus, expected in [(1, 1), (2, 1), (3, 2), (16, 15)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        monkeypatch.setattr(os, "cpu_count", lambda: 64)
        assert default_worker_count() == expected
