"""The actor system: per-LB serialization, concurrency across LBs, backpressure, retirement."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import structlog
import trio
import trio.testing

import lbactors.actor
from lbactors.actor import ActorSystem, open_actor_system
from lbactors.backends.base import Backend, Reading
from lbactors.backends.noop import NoopBackend
from lbactors.messages import ListenerStatistics, Operation, Outcome
from tests.test_messages import LB, LISTENER, MEMBER, POOL, Payloads

P = Payloads()
LB2 = LB[:-4] + "0000"


def make_op(op_id: int, method: str, *, lb_id: str = LB, args: Any = None) -> Operation:
    payload = P.args(method) if args is None else args
    return Operation(op_id=op_id, method=method, args=msgspec.json.encode(payload), lb_id=lb_id)


def lb_args(lb_id: str) -> dict[str, Any]:
    return {"loadbalancer": P.loadbalancer() | {"id": lb_id, "loadbalancer_id": lb_id}}


def other_tree(args: dict[str, Any]) -> dict[str, Any]:
    """The same payload for a second load balancer: every id of the tree replaced."""
    raw = msgspec.json.encode(args)
    for object_id in (LB, LISTENER, POOL, MEMBER):
        raw = raw.replace(object_id.encode(), object_id[:-4].encode() + b"0000")
    result: dict[str, Any] = msgspec.json.decode(raw)
    return result


class InstrumentedBackend(NoopBackend):
    """Records (lb_id, op name, enter time, exit time) of every CRUD call; sleeps inside."""

    def __init__(self, duration: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.duration = duration
        self.spans: list[tuple[str, str, float, float]] = []

    async def _put(self, kind: str, action: str, obj: Any, old: Any = None) -> None:
        enter = trio.current_time()
        await trio.sleep(self.duration)
        await super()._put(kind, action, obj, old)
        self.spans.append((self.lb_of(kind, obj.id) or "", f"{kind}_{action}", enter, trio.current_time()))


class System:
    """An actor system with its outcomes collected in a list as they arrive."""

    def __init__(self, system: ActorSystem) -> None:
        self.system = system
        self.outcomes: list[Outcome] = []
        self.arrived = trio.Event()

    async def wait_for(self, count: int) -> list[Outcome]:
        while len(self.outcomes) < count:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return self.outcomes


@asynccontextmanager
async def running(backend: NoopBackend, **kwargs: Any) -> AsyncIterator[System]:
    send, receive = trio.open_memory_channel[Outcome](1000)

    async def collect(harness: System) -> None:
        async for outcome in receive:
            harness.outcomes.append(outcome)
            harness.arrived.set()

    async with trio.open_nursery() as nursery:
        async with open_actor_system(backend, send, **kwargs) as system:
            harness = System(system)
            nursery.start_soon(collect, harness)
            yield harness


# --------------------------------------------------------------------------- serialization


async def test_one_lb_runs_one_operation_at_a_time_different_lbs_overlap(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(600):
        backend = InstrumentedBackend(duration=1.0)
        methods = ["loadbalancer_create", "listener_create", "pool_create", "member_create"]
        async with running(backend) as h:
            op_id = 0
            for method in methods:
                for lb_id in (LB, LB2):
                    args = P.args(method) if lb_id == LB else other_tree(P.args(method))
                    await h.system.submit(make_op(op_id, method, lb_id=lb_id, args=args))
                    op_id += 1
            await h.wait_for(8)

        by_lb: dict[str, list[tuple[float, float]]] = {LB: [], LB2: []}
        for lb_id, _, enter, leave in backend.spans:
            by_lb[lb_id].append((enter, leave))
        for spans in by_lb.values():
            assert len(spans) == 4
            for (_, first_exit), (second_enter, _) in zip(spans, spans[1:], strict=False):
                assert second_enter >= first_exit  # never overlap on one LB
        overlaps = [
            (a, b)
            for a in by_lb[LB]
            for b in by_lb[LB2]
            if a[0] < b[1] and b[0] < a[1]
        ]
        assert overlaps  # the two LBs did run at the same time
        assert trio.current_time() == pytest.approx(4.0)  # 2 x 4 ops of 1 s each, in 4 s


async def test_runners_are_added_while_calls_wait_and_only_spares_stay(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Actors are data run by runner tasks: a runner whose call suspends is taken, and the
    next ready load balancer gets another runner, so ten load balancers whose calls each
    take 1 s finish in 1 s; afterwards only ``SPARE_RUNNERS`` of the ten stay (parked)."""
    with trio.fail_after(600):
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(10)]
        async with running(InstrumentedBackend(duration=1.0)) as h:
            for i, lb_id in enumerate(ids):
                await h.system.submit(make_op(i, "loadbalancer_create", lb_id=lb_id, args=lb_args(lb_id)))
            await trio.testing.wait_all_tasks_blocked()
            assert task_names().count("actor runner") == len(ids)
            await h.wait_for(len(ids))
            assert trio.current_time() == pytest.approx(1.0)
            await trio.testing.wait_all_tasks_blocked()
            assert task_names().count("actor runner") == lbactors.actor.SPARE_RUNNERS


class CountingBackend(NoopBackend):
    """Counts CRUD calls; its calls never suspend, as the noop backend's."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def _put(self, kind: str, action: str, obj: Any, old: Any = None) -> None:
        self.calls += 1
        await super()._put(kind, action, obj, old)


async def test_a_runner_lets_other_tasks_run_between_batches() -> None:
    """Calls that never suspend never yield to trio: a runner yields itself every
    ``RUN_BATCH`` operations, so a long ready queue does not starve the other tasks."""
    with trio.fail_after(10):
        batch = lbactors.actor.RUN_BATCH
        # fewer outcomes than the harness's channel holds: a runner never waits on it
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(12 * batch)]
        backend = CountingBackend()
        seen: list[int] = []
        async with running(backend, mailbox_size=math.inf) as h, trio.open_nursery() as nursery:

            async def watch() -> None:
                while True:
                    seen.append(backend.calls)
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(watch)
            await trio.lowlevel.checkpoint()
            for i, lb_id in enumerate(ids):  # no checkpoint: submit does not yield with room
                await h.system.submit(make_op(i, "loadbalancer_create", lb_id=lb_id, args=lb_args(lb_id)))
            await h.wait_for(len(ids))
            nursery.cancel_scope.cancel()
        # seen between batches (trio orders the tasks of a batch at random: not each one)
        progress = sorted(set(seen) - {0})
        assert progress[0] < len(ids)
        assert len(progress) >= 3


def tree_of(args: dict[str, Any], suffix: str) -> dict[str, Any]:
    """``args`` for another load balancer: every id of the tree ends in ``suffix``."""
    raw = msgspec.json.encode(args)
    for object_id in (LB, LISTENER, POOL, MEMBER):
        raw = raw.replace(object_id.encode(), object_id[:-4].encode() + suffix.encode())
    result: dict[str, Any] = msgspec.json.decode(raw)
    return result


async def test_load_balancers_sharing_a_key_never_overlap_others_do(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two load balancers of key k1 run their backend calls one at a time (each in its own
    order); a third one, of key k2, runs beside them. The locks go once nobody uses them."""
    methods = ["loadbalancer_create", "listener_create", "pool_create"]
    keys = {"1111": "k1", "2222": "k1", "3333": "k2"}
    lb_ids = {suffix: LB[:-4] + suffix for suffix in keys}
    with trio.fail_after(600):
        backend = InstrumentedBackend(duration=1.0)
        async with running(backend) as h:
            op_id = 0
            for method in methods:
                for suffix, key in keys.items():
                    args = tree_of(P.args(method), suffix)
                    op = make_op(op_id, method, lb_id=lb_ids[suffix], args=args)
                    await h.system.submit(msgspec.structs.replace(op, key=key))
                    op_id += 1
            await h.wait_for(9)
            assert [o.failure for o in h.outcomes] == [None] * 9
            assert len(h.system.key_locks) == 0
            assert h.system.key_of(lb_ids["1111"]) == "k1"
            assert h.system.key_of(lb_ids["3333"]) == "k2"
            assert h.system.key_of(LB) is None

        spans = {lb_id: [(a, b) for lb, m, a, b in backend.spans if lb == lb_id] for lb_id in lb_ids.values()}
        names = {lb_id: [m for lb, m, _, _ in backend.spans if lb == lb_id] for lb_id in lb_ids.values()}
        for lb_id in lb_ids.values():
            assert names[lb_id] == methods  # each load balancer in its own order

        def overlapping(one: str, other: str) -> list[Any]:
            return [
                (a, b) for a in spans[one] for b in spans[other] if a[0] < b[1] and b[0] < a[1]
            ]

        assert overlapping(lb_ids["1111"], lb_ids["2222"]) == []
        assert overlapping(lb_ids["1111"], lb_ids["3333"])
        assert overlapping(lb_ids["2222"], lb_ids["3333"])
        # k1's six calls of 1 s one after the other; k2's three beside them
        assert trio.current_time() == pytest.approx(6.0)


async def test_a_key_lock_goes_once_its_holder_and_waiters_are_gone(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Waiters get the lock in the order they asked; one cancelled while waiting leaves no
    trace; the lock is dropped once the last user is gone."""
    locks = lbactors.actor.KeyedLocks()
    order: list[str] = []

    async def use(name: str, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with locks.hold("k"):
                order.append(name)
                await trio.sleep(1)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name in ("a", "b", "c", "d"):
                scope = await nursery.start(use, name)
                await trio.testing.wait_all_tasks_blocked()
                if name == "c":
                    cancelled = scope
            assert len(locks) == 1
            cancelled.cancel()
        assert order == ["a", "b", "d"]
        assert len(locks) == 0


async def test_outcomes_of_one_lb_come_in_submission_order() -> None:
    with trio.fail_after(10):
        methods = ["loadbalancer_create", "listener_create", "pool_create", "member_create",
                   "member_update", "member_delete", "pool_update"]
        async with running(NoopBackend()) as h:
            for i, method in enumerate(methods):
                await h.system.submit(make_op(i, method))
            outcomes = await h.wait_for(len(methods))
        assert [o.op_id for o in outcomes] == list(range(len(methods)))


# --------------------------------------------------------------------------- backpressure


async def test_a_full_mailbox_makes_submit_wait(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        backend = InstrumentedBackend(duration=10.0)
        returned: dict[int, float] = {}

        async def submit(system: ActorSystem, op: Operation) -> None:
            await system.submit(op)
            returned[op.op_id] = trio.current_time()

        async with running(backend, mailbox_size=1) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await trio.testing.wait_all_tasks_blocked()  # the actor runs op 0 (until t=10)
            await h.system.submit(make_op(1, "listener_create"))  # fills the mailbox
            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit, h.system, make_op(2, "pool_create"))
                nursery.start_soon(submit, h.system, make_op(3, "loadbalancer_create", lb_id=LB2, args=lb_args(LB2)))
            await h.wait_for(4)
        assert returned[3] == 0.0  # another LB's mailbox is not affected
        assert returned[2] == pytest.approx(10.0)  # waited until op 0 finished and op 1 left


@pytest.mark.parametrize("mailbox_size", [0, 1])
async def test_waiting_submitters_go_in_their_order_and_a_cancelled_one_passes_its_turn(
    autojump_clock: trio.abc.Clock, mailbox_size: int
) -> None:
    """Submitters waiting for room in a full mailbox hand their operations over in the order
    they came; one cancelled while it waits drops out without holding up those behind it,
    and a submitter that comes once room appeared queues behind those already waiting."""
    with trio.fail_after(600):
        methods = ["loadbalancer_create", "listener_create", "pool_create", "member_create",
                   "healthmonitor_create", "l7policy_create"]
        async with running(InstrumentedBackend(duration=5.0), mailbox_size=mailbox_size) as h:
            await h.system.submit(make_op(0, methods[0]))
            await trio.testing.wait_all_tasks_blocked()  # the actor runs op 0 (until t=5)
            if mailbox_size:
                await h.system.submit(make_op(1, methods[1]))  # fills the mailbox
            async with trio.open_nursery() as nursery:
                scopes: dict[int, trio.CancelScope] = {}

                async def submit(op_id: int) -> None:
                    with trio.CancelScope() as scopes[op_id]:
                        await h.system.submit(make_op(op_id, methods[op_id]))

                for op_id in (2, 3, 4):
                    nursery.start_soon(submit, op_id)
                    await trio.testing.wait_all_tasks_blocked()
                scopes[3].cancel()
                await trio.sleep(5.5)  # op 0 done: room for op 2, op 4 still waits
                nursery.start_soon(submit, 5)
            outcomes = await h.wait_for(5 if mailbox_size else 4)
        expected = [0, 1, 2, 4, 5] if mailbox_size else [0, 2, 4, 5]
        assert [o.op_id for o in outcomes] == expected
        assert all(o.reason is None for o in outcomes)


async def test_mailbox_size_zero_is_a_rendezvous(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        async with running(InstrumentedBackend(duration=3.0), mailbox_size=0) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await h.system.submit(make_op(1, "listener_create"))
            assert trio.current_time() == pytest.approx(3.0)
            await h.wait_for(2)


# --------------------------------------------------------------------------- retirement


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("loadbalancer_delete", {"loadbalancer": P.full_tree(), "cascade": True}),
        ("loadbalancer_delete_cascade", {"loadbalancer": P.full_tree()}),
        ("loadbalancer_delete", {"loadbalancer": P.loadbalancer(), "cascade": False}),
    ],
)
async def test_actor_retires_after_its_lb_is_deleted(method: str, args: dict[str, Any]) -> None:
    with trio.fail_after(10):
        async with running(NoopBackend()) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await h.system.submit(make_op(1, "listener_create"))
            await h.wait_for(2)
            assert h.system.actor_count() == 1
            assert h.system.known_lb_ids() == [LB]
            await h.system.submit(make_op(2, method, args=args))
            await h.wait_for(3)
            assert h.system.actor_count() == 0  # already gone when its outcome arrives
            assert h.system.known_lb_ids() == []
            # a later operation for the same id starts a fresh actor
            await h.system.submit(make_op(3, "loadbalancer_create"))
            outcomes = await h.wait_for(4)
            assert h.system.actor_count() == 1
            assert outcomes[3].failure is None


async def test_actor_stays_after_a_failed_cascade() -> None:
    with trio.fail_after(10):
        async with running(NoopBackend(fail_pattern="^web-1$")) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await h.system.submit(
                make_op(1, "loadbalancer_delete", args={"loadbalancer": P.full_tree(), "cascade": True})
            )
            outcomes = await h.wait_for(2)
            assert outcomes[1].status is not None
            assert h.system.actor_count() == 1


async def test_actor_does_not_retire_with_work_left_in_its_mailbox(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Operations queued behind a successful delete run on the same actor, in order. An actor
    that retired with them in its mailbox would drop them: no outcome would ever come, and
    the deadline (virtual time: at once) fails the test instead of hanging the suite."""
    with trio.fail_after(60):
        async with running(InstrumentedBackend(duration=1.0)) as h:
            await h.system.submit(make_op(0, "loadbalancer_delete", args={"loadbalancer": P.loadbalancer()}))
            await h.system.submit(make_op(1, "loadbalancer_create"))  # queued behind the delete
            await h.system.submit(make_op(2, "listener_create"))
            outcomes = await h.wait_for(3)
            assert [o.op_id for o in outcomes] == [0, 1, 2]
            assert all(o.failure is None and o.reason is None for o in outcomes)
            assert h.system.actor_count() == 1
            assert h.system.known_lb_ids() == [LB]


async def test_memory_follows_live_lbs_not_history() -> None:
    with trio.fail_after(10):
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(200)]
        async with running(NoopBackend()) as h:
            for i, lb_id in enumerate(ids):
                await h.system.submit(make_op(i, "loadbalancer_create", lb_id=lb_id, args=lb_args(lb_id)))
            await h.wait_for(len(ids))
            assert h.system.actor_count() == len(ids)
            for i, lb_id in enumerate(ids):
                args = lb_args(lb_id) | {"cascade": True}
                await h.system.submit(make_op(1000 + i, "loadbalancer_delete", lb_id=lb_id, args=args))
            await h.wait_for(2 * len(ids))
            assert h.system.actor_count() == 0
            await trio.testing.wait_all_tasks_blocked()
            # no task per load balancer: one runner ran them all (no call ever suspended)
            assert [name for name in task_names() if name.startswith("actor")] == ["actor runner"]


def task_names() -> list[str]:
    names: list[str] = []
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        names.append(task.name)
        todo.extend(t for nursery in task.child_nurseries for t in nursery.child_tasks)
    return names


async def test_task_names_sees_runner_tasks() -> None:
    with trio.fail_after(10):
        async with running(NoopBackend()) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await h.wait_for(1)
            assert "actor runner" in task_names()


# --------------------------------------------------------------------------- nothing escapes


async def test_backend_exceptions_become_outcomes_and_the_actor_keeps_going() -> None:
    with trio.fail_after(10):
        class Flaky(NoopBackend):
            async def listener_create(self, listener: Any, cert: Any) -> None:
                raise ZeroDivisionError("backend bug")

        async with running(Flaky()) as h:
            await h.system.submit(make_op(0, "listener_create"))
            await h.system.submit(make_op(1, "pool_create"))
            await h.system.submit(make_op(2, "no_such_method", args={}))
            await h.system.submit(make_op(3, "member_create", args={"member": {"id": 5}}))
            outcomes = await h.wait_for(4)
        assert [o.op_id for o in outcomes] == [0, 1, 2, 3]
        listeners = msgspec.to_builtins(outcomes[0].status)["listeners"]
        assert listeners[0]["provisioning_status"] == "ERROR"
        assert msgspec.to_builtins(outcomes[1].status)["pools"][0]["provisioning_status"] == "ACTIVE"
        assert outcomes[2].failure is not None and outcomes[2].failure.exc_class == "NoSuchMethod"
        assert outcomes[3].failure is not None and outcomes[3].failure.exc_class == "InvalidOperation"


async def test_even_a_crashing_run_operation_does_not_kill_the_actor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(10):
        real = lbactors.actor.run_operation

        async def crashing(backend: Any, op: Operation, **kwargs: Any) -> Outcome:
            if op.op_id == 0:
                raise RuntimeError("dispatch bug")
            return await real(backend, op, **kwargs)

        monkeypatch.setattr(lbactors.actor, "run_operation", crashing)
        async with running(NoopBackend()) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await h.system.submit(make_op(1, "listener_create"))
            outcomes = await h.wait_for(2)
        assert outcomes[0].failure is not None and outcomes[0].failure.exc_class == "RuntimeError"
        assert outcomes[1].failure is None and outcomes[1].status is not None


# --------------------------------------------------------------------------- queries


async def test_queries_need_no_actor_and_run_concurrently(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        class Slow(NoopBackend):
            async def validate_flavor(self, metadata: dict[str, Any]) -> str | None:
                await trio.sleep(3)  # within the noop backend's query deadline (5 s)
                return await super().validate_flavor(metadata)

        async with running(Slow()) as h:
            for i in range(3):
                await h.system.submit(
                    Operation(op_id=i, method="validate_flavor", lb_id="", is_call=True,
                              args=msgspec.json.encode({"flavor_metadata": {"max_connections": 5}}))
                )
            assert h.system.actor_count() == 0
            outcomes = await h.wait_for(3)
        assert trio.current_time() == pytest.approx(3.0)
        assert [o.reply for o in outcomes] == [{"valid": True}] * 3


# --------------------------------------------------------------------------- lifetime


async def test_closing_drains_every_mailbox_then_closes_outcomes(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(600):
        send, receive = trio.open_memory_channel[Outcome](100)
        async with open_actor_system(InstrumentedBackend(duration=1.0), send) as system:
            for i in range(3):
                await system.submit(make_op(i, "loadbalancer_create"))
                await system.submit(make_op(10 + i, "loadbalancer_create", lb_id=LB2, args=lb_args(LB2)))
        assert trio.current_time() == pytest.approx(3.0)
        assert sorted([o.op_id async for o in receive]) == [0, 1, 2, 10, 11, 12]  # ends: closed
        with pytest.raises(trio.ClosedResourceError):
            await system.submit(make_op(99, "loadbalancer_create"))


async def test_cancelling_the_block_cancels_the_actors(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        send, _receive = trio.open_memory_channel[Outcome](100)
        with trio.move_on_after(2.5):
            async with open_actor_system(InstrumentedBackend(duration=10.0), send) as system:
                await system.submit(make_op(0, "loadbalancer_create"))
                await trio.sleep_forever()
        assert trio.current_time() == pytest.approx(2.5)


async def test_idle_actors_retire_but_their_load_balancers_stay_known(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(600):
        async with running(NoopBackend(), idle_timeout=10) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await h.system.submit(make_op(1, "listener_create"))
            await h.wait_for(2)
            assert h.system.actor_count() == 1
            await trio.sleep(16)  # idle for more than 10 s, seen by a sweep every 5 s
            assert h.system.actor_count() == 0
            assert h.system.known_lb_ids() == [LB]
            listeners, _ = await h.system.collect_statistics()
            assert [s.id for s in listeners] == [LISTENER]
            # the next operation starts a fresh actor and runs normally
            await h.system.submit(make_op(2, "pool_create"))
            outcomes = await h.wait_for(3)
            assert outcomes[2].failure is None
            assert h.system.actor_count() == 1


async def test_a_busy_or_queued_actor_is_never_retired(autojump_clock: trio.abc.Clock) -> None:
    """Operations far longer than the idle timeout, queued behind each other: the sweep never
    closes a mailbox with work in it, so they still run one at a time and in order."""
    with trio.fail_after(600):
        backend = InstrumentedBackend(duration=25)
        async with running(backend, idle_timeout=4) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await trio.sleep(20)  # op 0 runs alone (nothing queued) far past the idle timeout
            for op_id, method in enumerate(["listener_create", "pool_create"], start=1):
                await h.system.submit(make_op(op_id, method))
            outcomes = await h.wait_for(3)
        assert [o.op_id for o in outcomes] == [0, 1, 2]
        spans = sorted(backend.spans, key=lambda span: span[2])
        assert all(a[3] <= b[2] for a, b in zip(spans, spans[1:], strict=False))


# --------------------------------------------------------------------------- statistics


async def test_collect_statistics_gives_growing_counters_and_operating_status_changes() -> None:
    with trio.fail_after(10):
        async with running(NoopBackend()) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await h.system.submit(make_op(1, "listener_create"))
            await h.system.submit(make_op(2, "member_create"))
            await h.wait_for(3)
            first, changes = await h.system.collect_statistics()
            assert [s.id for s in first] == [LISTENER]
            assert len(changes) == 1  # everything is new
            assert msgspec.to_builtins(changes[0])["members"] == [{"id": MEMBER, "operating_status": "ONLINE"}]

            second, changes = await h.system.collect_statistics()
            assert second[0].total_connections > first[0].total_connections
            assert changes == []  # nothing changed

            member = P.member()
            args = {"old_member": member, "new_member": {"admin_state_up": False}}
            await h.system.submit(make_op(3, "member_update", args=args))
            await h.wait_for(4)
            _, changes = await h.system.collect_statistics()
            assert msgspec.to_builtins(changes[0]) == {
                "members": [{"id": MEMBER, "operating_status": "OFFLINE"}]
            }


class FlakyReadBackend(NoopBackend):
    """Reads of the load balancers in ``broken`` fail, through the base class's per-LB path."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: set[str] = set()

    async def listener_statistics(self, lb_id: str) -> list[ListenerStatistics]:
        if lb_id in self.broken:
            raise ConnectionError("stats socket gone")
        return await super().listener_statistics(lb_id)

    async def read_many(self, lb_ids: Sequence[str]) -> list[Reading]:
        return await Backend.read_many(self, lb_ids)


async def test_a_failed_read_skips_that_lb_and_keeps_its_operating_statuses() -> None:
    with trio.fail_after(10):
        backend = FlakyReadBackend()
        other = lb_args("lb-other")
        async with running(backend) as h:
            await h.system.submit(make_op(0, "loadbalancer_create"))
            await h.system.submit(make_op(1, "listener_create"))
            await h.system.submit(make_op(2, "loadbalancer_create", lb_id="lb-other", args=other))
            await h.wait_for(3)
            await h.system.collect_statistics()
            backend.broken.add(LB)
            with structlog.testing.capture_logs() as logs:
                listeners, changes = await h.system.collect_statistics()
            assert listeners == []  # LB's listener is skipped this round, lb-other has none
            assert changes == []  # and LB's objects are not reported as changed (or gone)
            assert [e["lb_id"] for e in logs if e["event"] == "statistics read failed"] == [LB]
            backend.broken.clear()
            listeners, changes = await h.system.collect_statistics()
            assert [s.id for s in listeners] == [LISTENER]
            assert changes == []


async def test_noop_bulk_read_equals_the_per_lb_reads() -> None:
    with trio.fail_after(10):
        one, two = NoopBackend(seed=3), NoopBackend(seed=3)
        for backend in (one, two):
            async with running(backend) as h:
                await h.system.submit(make_op(0, "loadbalancer_create"))
                await h.system.submit(make_op(1, "listener_create"))
                await h.system.submit(make_op(2, "member_create"))
                await h.wait_for(3)
        bulk = await one.read_many([LB, "lb-unknown"])
        single = [
            Reading(lb_id, await two.listener_statistics(lb_id), await two.operating_statuses(lb_id))
            for lb_id in (LB, "lb-unknown")
        ]
        assert bulk == single
        assert bulk[0].listeners and bulk[0].statuses


# --------------------------------------------------------------------------- logging


async def test_logs_carry_lb_op_and_method_and_successes_stay_below_info() -> None:
    with trio.fail_after(10):
        with structlog.testing.capture_logs() as logs:
            async with running(NoopBackend(fail_pattern="^web-1$")) as h:
                await h.system.submit(make_op(0, "loadbalancer_create"))
                await h.system.submit(make_op(1, "member_create"))
                await h.wait_for(2)
        assert not [e for e in logs if e["log_level"] == "info"]
        failures = [e for e in logs if e["log_level"] in ("warning", "error")]
        assert len(failures) == 1
        assert failures[0]["lb_id"] == LB
        assert (failures[0]["op_id"], failures[0]["method"]) == (1, "member_create")
        actor_lines = [e for e in logs if e["event"] == "actor started"]
        assert actor_lines and actor_lines[0]["lb_id"] == LB


async def test_an_error_in_the_body_is_never_hidden_by_a_cancelled_scope() -> None:
    """Closing the outcome channel must not checkpoint: in a cancelled scope, the Cancelled
    would replace the body's exception and the surrounding scope would swallow it."""
    with trio.fail_after(10):
        send, receive = trio.open_memory_channel[Outcome](4)
        with pytest.raises(BaseExceptionGroup) as caught:
            async with trio.open_nursery() as nursery, open_actor_system(NoopBackend(), send):
                nursery.start_soon(trio.sleep_forever)
                try:
                    raise RuntimeError("must propagate")
                finally:
                    nursery.cancel_scope.cancel()
        assert caught.group_contains(RuntimeError, match="must propagate")
        assert receive.statistics().open_send_channels == 0


async def test_adopted_load_balancers_are_known_before_their_next_operation() -> None:
    with trio.fail_after(10):
        async with running(NoopBackend()) as h:
            h.system.adopt(["lb-adopted"])
            assert h.system.known_lb_ids() == ["lb-adopted"]
            assert h.system.actor_count() == 0
        assert await NoopBackend().resident_lb_ids() == []
