"""Deadlines on backend calls, and calls that ignore their cancellation (autojump clock).

A hung call (cancellable) ends at its deadline with the object ERROR, parents ACTIVE; a call
that ignores the cancellation is given up on ``cancel_grace`` later (``abandoned``), without
overlapping its load balancer's next operation; blocking work in threads gives way to a
cancellation and keeps its order.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
import trio

from lbactors.backends.base import BlockingCalls
from lbactors.backends.noop import NoopBackend, NoopOptions
from lbactors.cascade import cascade_plan
from lbactors.dispatch import CallWatch, failed_outcome, run_operation
from lbactors.messages import Operation
from lbactors.model import LoadBalancer
from lbactors.status import cascade_status
from lbactors.status import status_to_builtins as builtins
from tests.daemon_process import _alive
from tests.test_actor import LB2, make_op, other_tree, running
from tests.test_messages import LB, MEMBER, Payloads

P = Payloads()


def noop(**options: Any) -> NoopBackend:
    return NoopBackend.from_options(options)


def member_args(name: str) -> dict[str, Any]:
    args = P.args("member_create")
    args["member"]["name"] = name
    return args


async def test_a_hung_call_ends_at_its_deadline_with_the_object_error_and_parents_active(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(600):
        backend = noop(hang_pattern="^hang", operation_deadline=7)
        op = Operation(op_id=1, method="member_create", lb_id=LB,
                       args=msgspec.json.encode(member_args("hang-1")))
        with structlog.testing.capture_logs() as logs:
            outcome = await run_operation(backend, op)
        assert trio.current_time() == pytest.approx(7)
        status = builtins(outcome.status)
        assert status["members"] == [
            {"id": MEMBER, "provisioning_status": "ERROR", "operating_status": "ERROR"}
        ]
        assert {e["provisioning_status"] for k in ("pools", "loadbalancers") for e in status[k]} == {
            "ACTIVE"
        }
        assert outcome.reason is not None and "deadline of 7 s" in outcome.reason
        assert not outcome.abandoned
        line = next(entry for entry in logs if entry["event"] == "backend call exceeded its deadline")
        assert (line["lb_id"], line["method"], line["elapsed_s"]) == (LB, "member_create", 7.0)


def _rename(tree: Any, names: dict[str, str]) -> None:
    """Give every object of a payload whose id is in ``names`` that name (in place)."""
    if isinstance(tree, dict):
        if tree.get("id") in names:
            tree["name"] = names[tree["id"]]
        for value in tree.values():
            _rename(value, names)
    elif isinstance(tree, list):
        for value in tree:
            _rename(value, names)


async def test_each_cascade_step_has_its_own_deadline(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        tree = P.args("loadbalancer_delete_cascade")["loadbalancer"]
        plan = cascade_plan(msgspec.convert(tree, LoadBalancer))
        hung = 3  # the fourth step never answers
        _rename(tree, {step.id: f"hang-{i}" if i == hung else f"ok-{i}" for i, step in enumerate(plan)})
        lb = msgspec.convert(tree, LoadBalancer)
        assert len(plan) > hung + 1
        backend = noop(hang_pattern="^hang", latency=1.0, plan_step_deadline=4)
        op = Operation(op_id=2, method="loadbalancer_delete", lb_id=LB,
                       args=msgspec.json.encode({"cascade": True, "loadbalancer": tree}))
        outcome = await run_operation(backend, op)
        # three steps of 1 s each, then 4 s for the hung one (its 1 s latency included)
        assert trio.current_time() == pytest.approx(3 * 1.0 + 4)
        assert builtins(outcome.status) == builtins(
            cascade_status(lb, plan, completed=hung, failed=True)
        )


async def test_in_an_actor_deadlines_hold_and_the_next_operations_run_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An actor puts each suspending call's deadline on its own long-lived cancel scope
    (``CallWatch.scope``): a hung create ends at its deadline, a hung cascade step at its
    own, and the load balancer's later operations run normally in a fresh scope."""
    with trio.fail_after(600):
        backend = noop(hang_pattern="^hang", latency=1.0, operation_deadline=7,
                       plan_step_deadline=4)
        tree = P.args("loadbalancer_delete_cascade")["loadbalancer"]
        plan = cascade_plan(msgspec.convert(tree, LoadBalancer))
        _rename(tree, {plan[2].id: "hang-step"})
        async with running(backend) as h:
            await h.system.submit(make_op(1, "loadbalancer_create"))
            await h.system.submit(make_op(2, "member_create", args=member_args("hang-1")))
            await h.system.submit(make_op(3, "member_create", args=member_args("ok")))
            outcomes = await h.wait_for(3)
            assert trio.current_time() == pytest.approx(1 + 7 + 1)
            hung, after = outcomes[1], outcomes[2]
            assert hung.reason is not None and "deadline of 7 s" in hung.reason
            assert builtins(hung.status)["members"][0]["provisioning_status"] == "ERROR"
            assert after.reason is None and not after.abandoned
            assert builtins(after.status)["members"][0]["provisioning_status"] == "ACTIVE"
            start = trio.current_time()
            await h.system.submit(make_op(4, "loadbalancer_delete", args={
                "cascade": True, "loadbalancer": tree}))
            outcome = (await h.wait_for(4))[3]
            # two steps of 1 s, then 4 s for the hung one
            assert trio.current_time() - start == pytest.approx(2 * 1.0 + 4)
            assert builtins(outcome.status) == builtins(cascade_status(
                msgspec.convert(tree, LoadBalancer), plan, completed=2, failed=True))
            await h.system.submit(make_op(5, "member_create", args=member_args("ok")))
            assert (await h.wait_for(5))[4].reason is None
            assert h.system.abandoned == 0


async def test_a_query_past_its_deadline_is_a_failure_reply(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        class Stuck(NoopBackend):
            async def flavor_metadata(self) -> dict[str, str]:
                await trio.sleep_forever()
                raise AssertionError

        backend = Stuck(deadlines=NoopOptions(query_deadline=2))
        op = Operation(op_id=3, method="get_supported_flavor_metadata", lb_id="", args=b"{}",
                       is_call=True)
        outcome = await run_operation(backend, op)
        assert trio.current_time() == pytest.approx(2)
        assert outcome.failure is not None and outcome.failure.exc_class == "DeadlineExceeded"


async def test_the_watch_holds_the_deadline_of_the_running_call_only(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(600):
        backend = noop(latency=1.0, operation_deadline=9)
        watch = CallWatch()
        seen: list[float] = []

        async def look() -> None:
            await trio.sleep(0.5)
            seen.append(watch.deadline)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(look)
            await run_operation(backend, make_op(1, "loadbalancer_create"), watch=watch)
        assert seen == [pytest.approx(9)]
        assert watch.deadline == float("inf")


class Stubborn(NoopBackend):
    """Member creates named ``stuck-*`` ignore cancellation until ``release`` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = trio.Event()
        self.ran: list[str] = []

    async def member_create(self, member: Any) -> None:
        if (member.name or "").startswith("stuck"):
            with trio.CancelScope(shield=True):
                await self.release.wait()
        await super().member_create(member)

    async def member_delete(self, member: Any) -> None:
        self.ran.append("member_delete")
        await super().member_delete(member)


async def test_a_call_that_ignores_cancellation_is_abandoned_after_the_grace(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Its outcome goes out (ERROR, ``abandoned``), the other load balancer is unaffected, its
    load balancer's next operation never overlaps the stuck call, and the call's late result
    is dropped; the operation queued behind it runs once the call returns at last."""
    backend = Stubborn(deadlines=NoopOptions(operation_deadline=10))
    with structlog.testing.capture_logs() as logs, trio.fail_after(300):
        async with running(backend, cancel_grace=3) as h:
            await h.system.submit(make_op(1, "loadbalancer_create"))
            await h.system.submit(make_op(2, "member_create", args=member_args("stuck-1")))
            await h.system.submit(make_op(3, "member_delete", args=member_args("ok")))
            await h.system.submit(make_op(4, "loadbalancer_create", lb_id=LB2,
                                          args=other_tree(P.args("loadbalancer_create"))))
            outcomes = await h.wait_for(3)
            assert trio.current_time() <= 10 + 3 + 1.0  # deadline + grace + one watch period
            by_id = {o.op_id: o for o in outcomes}
            assert set(by_id) == {1, 2, 4}
            stuck = by_id[2]
            assert stuck.abandoned and not by_id[1].abandoned and not by_id[4].abandoned
            assert builtins(stuck.status)["members"][0]["provisioning_status"] == "ERROR"
            assert h.system.abandoned == 1
            await trio.sleep(60)
            assert backend.ran == []  # op 3 waits behind the stuck call: never overlaps it
            backend.release.set()  # the stuck call returns at last: its result is dropped
            outcomes = await h.wait_for(4)
            assert [o.op_id for o in outcomes[3:]] == [3]  # and op 3 runs after it
            assert backend.ran == ["member_delete"]
            assert not outcomes[3].abandoned and outcomes[3].reason is None
            await trio.sleep(1)
            assert len(h.outcomes) == 4
    assert any(e["event"] == "backend call ignored its cancellation; giving up on it"
               and e["lb_id"] == LB and e["method"] == "member_create" for e in logs)


async def test_abandon_path_gives_the_same_status_as_a_failed_call() -> None:
    with trio.fail_after(10):
        op = Operation(op_id=5, method="member_create", lb_id=LB,
                       args=msgspec.json.encode(member_args("x")))
        given_up = failed_outcome(op, "gone")
        failing = await run_operation(noop(fail_pattern="x"), op)
        assert builtins(given_up.status) == builtins(failing.status)
        assert given_up.reason == "gone"
        call = Operation(op_id=6, method="member_create", lb_id=LB, is_call=True, args=op.args)
        assert failed_outcome(call, "gone").reply is False
        query = Operation(op_id=7, method="validate_flavor", lb_id="", is_call=True,
                          args=b'{"flavor_metadata": {}}')
        assert failed_outcome(query, "gone").failure is not None


# --------------------------------------------------------------------------- threads


async def test_blocking_calls_give_way_to_cancellation_and_keep_their_order() -> None:
    calls = BlockingCalls()
    release = threading.Event()
    order: list[str] = []

    def slow() -> None:
        release.wait(10)
        order.append("slow")

    def quick(tag: str) -> str:
        order.append(tag)
        return tag

    with trio.fail_after(10):
        with trio.move_on_after(0.2) as scope:
            await calls.run("lb", slow)
        assert scope.cancelled_caught  # returned at once, the thread goes on
        assert calls.busy("lb")
        async with trio.open_nursery() as nursery:
            results: list[str] = []

            async def after() -> None:
                results.append(await calls.run("lb", quick, "after"))

            nursery.start_soon(after)
            # another key is not held up
            assert await calls.run("other", quick, "other") == "other"
            await trio.sleep(0.2)
            assert results == []  # still waiting for the abandoned thread
            release.set()
        assert order == ["other", "slow", "after"]
        assert not calls.busy("lb")


async def test_a_blocking_call_cancelled_before_it_began_never_runs() -> None:
    calls = BlockingCalls()
    ran: list[int] = []
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            scope.cancel()
            await calls.run("lb", ran.append, 1)
        await calls.run("lb", ran.append, 2)  # not held up by the one that never began
        await trio.sleep(0.1)
    assert ran == [2]


async def test_a_haproxy_command_is_killed_when_its_call_is_cancelled(tmp_path: Path) -> None:
    """``haproxy`` that never answers: the create ends at its deadline, promptly (the command
    is killed, not given trio's default 5 s after SIGTERM), and the process is gone."""
    from lbactors.backends.haproxy import HaproxyBackend, HaproxyOptions

    pid_file = tmp_path / "pid"
    fake = tmp_path / "haproxy"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\ntrap '' TERM\nexec sleep 300\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    state_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"lbh-{os.getpid()}-{time.monotonic_ns()}"
    backend = HaproxyBackend(HaproxyOptions(state_dir=str(state_dir), haproxy_bin=str(fake),
                                            operation_deadline=1.0))
    lb = P.loadbalancer() | {"vip_address": "127.0.0.1"}
    op = Operation(op_id=1, method="loadbalancer_create", lb_id=LB,
                   args=msgspec.json.encode({"loadbalancer": lb}))
    try:
        with trio.fail_after(4):  # deadline 1 s + a kill, well under trio's 5 s SIGTERM wait
            outcome = await run_operation(backend, op)
        assert builtins(outcome.status)["loadbalancers"][0]["provisioning_status"] == "ERROR"
        assert outcome.reason is not None and "deadline" in outcome.reason
        pid = int(pid_file.read_text())
        with trio.fail_after(5):
            while _alive(pid):  # gone, or a zombie
                await trio.sleep(0.05)
    finally:
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)

