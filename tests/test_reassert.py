"""Re-assertion of create statuses (Octavia's commit race), in the actor system and the gateway.

The actor system alone, on trio's autojump clock: when re-assertions leave, what they hold,
and every rule that keeps them from being stale. The gateway's part (drop while a delivery of
the load balancer is in flight, publish with a confirm) without a broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from lbactors.actor import REASSERT_QUIET, ActorSystem, open_actor_system
from lbactors.backends.base import Reading
from lbactors.backends.noop import NoopBackend
from lbactors.gateway import Gateway, GatewaySettings, _Published
from lbactors.ipc import FrameStream, Reassert
from lbactors.messages import (
    Operation,
    Outbound,
    Outcome,
    Reassertion,
    StatusEntry,
    StatusUpdate,
)
from tests.test_gateway_settle import FakeConfirmation, NullSink
from tests.test_messages import HM, LB, LISTENER, MEMBER, POLICY, POOL, RULE, Payloads

P = Payloads()
SCHEDULE = (1.0, 3.0, 10.0)
OWN = {
    "loadbalancer": ("loadbalancers", LB),
    "listener": ("listeners", LISTENER),
    "pool": ("pools", POOL),
    "member": ("members", MEMBER),
    "healthmonitor": ("healthmonitors", HM),
    "l7policy": ("l7policies", POLICY),
    "l7rule": ("l7rules", RULE),
}
KINDS = list(OWN)


class SlowBackend(NoopBackend):
    """The noop backend, where operations on the ids in ``slow`` take that many seconds."""

    def __init__(self, slow: dict[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slow = slow or {}

    async def _put(self, kind: str, action: str, obj: Any, old: Any = None) -> None:
        await trio.sleep(self.slow.get(obj.id, 0))
        await super()._put(kind, action, obj, old)


class Harness:
    """An actor system whose outbound items are recorded with the time they arrived."""

    def __init__(self, system: ActorSystem) -> None:
        self.system = system
        self.items: list[tuple[float, Outbound]] = []
        self.arrived = trio.Event()
        #: the reader takes items from the channel only while this is set
        self.reading = trio.Event()
        self.reading.set()
        self._op_ids = iter(range(1, 10_000))

    async def submit(self, method: str, args: Any = None) -> int:
        op_id = next(self._op_ids)
        payload = P.args(method) if args is None else args
        await self.system.submit(
            Operation(op_id=op_id, method=method, args=msgspec.json.encode(payload), lb_id=LB)
        )
        return op_id

    async def outcome_of(self, op_id: int) -> tuple[float, Outcome]:
        while True:
            for when, item in self.items:
                if isinstance(item, Outcome) and item.op_id == op_id:
                    return when, item
            self.arrived = trio.Event()
            await self.arrived.wait()

    async def run(self, method: str, args: Any = None) -> tuple[float, Outcome]:
        """Submit and wait for the outcome (bounded)."""
        with trio.fail_after(60):
            return await self.outcome_of(await self.submit(method, args))

    def reassertions(self) -> list[tuple[float, Reassertion]]:
        return [(when, item) for when, item in self.items if isinstance(item, Reassertion)]

    def reasserted_ids(self, since: float = -1.0) -> list[str]:
        return [
            entry.id
            for when, item in self.reassertions()
            if when >= since
            for entries in msgspec.structs.astuple(item.status)
            if entries is not msgspec.UNSET
            for entry in entries
        ]


@asynccontextmanager
async def running(
    backend: NoopBackend | None = None,
    reassert_after: Sequence[float] = SCHEDULE,
    buffer: int = 1000,
) -> AsyncIterator[Harness]:
    send, receive = trio.open_memory_channel[Outbound](buffer)

    async def collect(harness: Harness) -> None:
        while True:
            await harness.reading.wait()
            try:
                item = await receive.receive()
            except trio.EndOfChannel:
                return
            harness.items.append((trio.current_time(), item))
            harness.arrived.set()

    async with trio.open_nursery() as nursery:
        async with open_actor_system(
            backend or SlowBackend(), send, reassert_after=reassert_after
        ) as system:
            harness = Harness(system)
            nursery.start_soon(collect, harness)
            yield harness


def keys(status: StatusUpdate) -> set[str]:
    return {
        field
        for field in StatusUpdate.__struct_fields__
        if getattr(status, field) is not msgspec.UNSET
    }


async def build_tree(h: Harness, kinds: Sequence[str] = KINDS) -> dict[str, float]:
    """Create the tree's objects one after the other; when each create's outcome left."""
    return {kind: (await h.run(f"{kind}_create"))[0] for kind in kinds}


# --------------------------------------------------------------------------- the schedule


async def test_the_created_objects_own_entry_is_reasserted_on_schedule(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(600):
        async with running() as h:
            created, outcome = await h.run("loadbalancer_create")
            await trio.sleep(60)
        assert outcome.status is not None
        times = [round(when - created, 6) for when, _ in h.reassertions()]
        assert times == list(SCHEDULE)
        for _, reassertion in h.reassertions():
            assert reassertion.lb_id == LB
            assert reassertion.status == StatusUpdate(
                loadbalancers=[StatusEntry(id=LB, provisioning_status="ACTIVE", operating_status="ONLINE")]
            )
        assert h.system.reassertions_sent == 3
        assert h.system.reassertions_pending() == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_never_a_parents_entry(kind: str, autojump_clock: trio.abc.Clock) -> None:
    """Only the created object's own entry: a parent's ACTIVE could unlock the load balancer
    while a newer operation is on its way."""
    with trio.fail_after(600):
        async with running() as h:
            _, outcome = await h.run(f"{kind}_create")
            assert outcome.status is not None
            await trio.sleep(60)
        key, object_id = OWN[kind]
        assert len(h.reassertions()) == 3
        for _, reassertion in h.reassertions():
            assert keys(reassertion.status) == {key}
            assert getattr(reassertion.status, key) == getattr(outcome.status, key)
            assert [e.id for e in getattr(reassertion.status, key)] == [object_id]


async def test_entries_due_together_leave_together(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        async with running(SlowBackend(), reassert_after=(5.0,)) as h:
            await h.submit("member_create")
            await h.submit("healthmonitor_create")
            await trio.sleep(60)
        [(_, reassertion)] = h.reassertions()
        assert keys(reassertion.status) == {"members", "healthmonitors"}


async def test_an_empty_schedule_disables_it(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        async with running(reassert_after=()) as h:
            await build_tree(h)
            await trio.sleep(60)
            assert h.system.reassertions_pending() == 0
        assert h.reassertions() == []
        assert h.system.reassertions_sent == 0


async def test_a_failed_create_reasserts_its_error_entry(autojump_clock: trio.abc.Clock) -> None:
    """A dropped ERROR leaves the object as stuck as a dropped ACTIVE."""
    with trio.fail_after(600):
        member = P.args("member_create")
        member["member"]["name"] = "fail-me"
        async with running(SlowBackend(fail_pattern="^fail-")) as h:
            _, outcome = await h.run("member_create", member)
            await trio.sleep(60)
        assert outcome.reason is not None and "fail_pattern" in outcome.reason
        assert len(h.reassertions()) == 3
        for _, reassertion in h.reassertions():
            assert reassertion.status == StatusUpdate(
                members=[StatusEntry(id=MEMBER, provisioning_status="ERROR", operating_status="ERROR")]
            )


# --------------------------------------------------------------------------- never stale


async def test_nothing_while_an_operation_of_the_lb_runs_then_after_a_quiet_spell(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The pool's re-assertion falls due while an operation that does not name it runs: it
    waits until that operation's outcome left and the load balancer was quiet a while."""
    backend = SlowBackend({LISTENER: 5.0})
    async with running(backend) as h:
        created, _ = await h.run("pool_create")
        await trio.sleep(0.8)
        op_id = await h.submit("listener_update")  # names the listener and the LB, not the pool
        with trio.fail_after(60):
            finished, _ = await h.outcome_of(op_id)
        await trio.sleep(60)
    assert finished - created > SCHEDULE[0]
    times = [when for when, _ in h.reassertions()]
    # none while it ran; the first once the LB was quiet after it; the later ones keep
    # their spacing from it
    first = finished + REASSERT_QUIET
    assert times == pytest.approx([first, first + 2.0, first + 2.0 + 7.0])
    assert h.reasserted_ids() == [POOL] * 3
    # and in the channel, after the outcome of the operation that held it back
    assert isinstance(h.items[1][1], Outcome) and h.items[1][1].op_id == op_id
    assert isinstance(h.items[2][1], Reassertion)


async def test_nothing_while_operations_of_the_lb_are_queued(autojump_clock: trio.abc.Clock) -> None:
    """Operations queued behind a slow one hold re-assertions back as long as any is left."""
    backend = SlowBackend({LISTENER: 2.0})
    update = P.args("listener_update")
    async with running(backend) as h:
        created, _ = await h.run("member_create")
        await trio.sleep(0.9)
        for _ in range(3):  # 6 s of listener updates, queued behind one another
            await h.submit("listener_update", update)
        with trio.fail_after(60):
            while len([i for _, i in h.items if isinstance(i, Outcome)]) < 4:
                h.arrived = trio.Event()
                await h.arrived.wait()
        last = h.items[-1][0]
        await trio.sleep(60)
    times = [when for when, _ in h.reassertions()]
    assert times and all(not (created + 0.9 <= t < last) for t in times)
    assert times[0] == pytest.approx(last + REASSERT_QUIET)


async def test_an_id_named_by_a_newer_outcome_is_dropped(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        async with running() as h:
            await h.run("pool_create")
            await h.run("member_create")  # names the pool as a parent
            await h.run("member_update")  # names the member itself
            assert h.system.reassertions_pending() == 0
            await trio.sleep(60)
        assert POOL not in h.reasserted_ids()
        assert MEMBER not in h.reasserted_ids()


async def test_an_update_after_the_first_reassertion_stops_the_rest(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(600):
        async with running() as h:
            created, _ = await h.run("healthmonitor_create")
            await trio.sleep(2)  # the first re-assertion left
            await h.run("healthmonitor_update")
            await trio.sleep(60)
        assert [round(when - created, 6) for when, _ in h.reassertions()] == [1.0]


async def test_an_outcome_waiting_for_room_in_the_channel_supersedes_already(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The update's outcome waits for whoever publishes while the health monitor's
    re-assertion falls due: it must not be sent (it would be published after the update)."""
    async with running(buffer=0) as h:
        await h.run("healthmonitor_create")
        h.reading = trio.Event()  # the publisher stops reading (a broker that blocks us)...
        await trio.sleep(0.1)
        await h.submit("listener_update")  # ...once it took this one
        await trio.sleep(0.1)
        op_id = await h.submit("healthmonitor_update")
        await trio.sleep(5)
        h.reading.set()
        with trio.fail_after(60):
            await h.outcome_of(op_id)
        await trio.sleep(60)
    assert h.reassertions() == []


@pytest.mark.parametrize("cascade", [False, True])
async def test_a_deleted_load_balancer_drops_every_entry(
    cascade: bool, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(600):
        delete = {"loadbalancer": P.full_tree() if cascade else P.loadbalancer(), "cascade": cascade}
        async with running() as h:
            await build_tree(h, ["loadbalancer", "listener", "pool", "member"])
            deleted, outcome = await h.run("loadbalancer_delete", delete)
            assert outcome.failure is None
            assert h.system.reassertions_pending() == 0
            await trio.sleep(60)
        assert h.reasserted_ids(since=deleted) == []


async def test_the_operating_status_reported_later_is_the_one_reasserted(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(600):
        class DownMember(SlowBackend):
            async def read_many(self, lb_ids: Sequence[str]) -> list[Reading]:
                readings = await super().read_many(lb_ids)
                return [
                    Reading(r.lb_id, r.listeners, [
                        (kind, oid, "ERROR" if oid == MEMBER else status)
                        for kind, oid, status in r.statuses
                    ])
                    for r in readings
                ]

        async with running(DownMember()) as h:
            await h.run("member_create")
            _, changes = await h.system.collect_statistics()
            await trio.sleep(60)
        assert changes and changes[0].members == [StatusEntry(id=MEMBER, operating_status="ERROR")]
        for _, reassertion in h.reassertions():
            assert reassertion.status.members == [
                StatusEntry(id=MEMBER, provisioning_status="ACTIVE", operating_status="ERROR")
            ]


def test_the_schedule_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        ActorSystem(
            None,  # type: ignore[arg-type]
            SlowBackend(),
            trio.open_memory_channel[Outbound](1)[0],
            mailbox_size=1,
            parents_on_failure="active",
            reassert_after=(3.0, 1.0),
        )


# --------------------------------------------------------------------------- the wire side


async def test_reassert_frame_round_trip() -> None:
    left, right = trio.testing.memory_stream_pair()
    reassertion = Reassertion(
        lb_id=LB,
        status=StatusUpdate(pools=[StatusEntry(id=POOL, provisioning_status="ACTIVE")]),
    )
    with trio.fail_after(5):
        await FrameStream(left).send(Reassert(reassertion=reassertion))
        assert await FrameStream(right).receive() == Reassert(reassertion=reassertion)


class FakePublishChannel:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def publish(self, exchange: str, routing_key: str, body: bytes, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        self.bodies.append(body)
        return FakeConfirmation()


async def test_gateway_publishes_a_reassertion_only_while_no_delivery_of_its_lb_is_in_flight() -> None:
    _, receive = trio.open_memory_channel[Outbound](1)
    gateway = Gateway(GatewaySettings(), NullSink(), receive)
    channel = FakePublishChannel()
    send, published = trio.open_memory_channel[_Published](8)
    reassertion = Reassertion(
        lb_id=LB,
        status=StatusUpdate(
            pools=[StatusEntry(id=POOL, provisioning_status="ACTIVE", operating_status="ONLINE")]
        ),
    )
    with trio.fail_after(5):
        gateway._ledger_lbs[LB] = 1  # an operation of the LB between the gateway and its actor
        await gateway._publish_reassertion(channel, reassertion, send)  # type: ignore[arg-type]
        assert channel.bodies == []
        assert gateway.counters.reassertions_dropped == 1

        del gateway._ledger_lbs[LB]
        await gateway._publish_reassertion(channel, reassertion, send)  # type: ignore[arg-type]
        send.close()
        await gateway._settle(published)
    [body] = channel.bodies
    message = msgspec.json.decode(msgspec.json.decode(body)["oslo.message"])
    assert message["method"] == "update_loadbalancer_status"
    assert message["args"] == {
        "status": {"pools": [{"id": POOL, "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}]}
    }
    assert gateway.counters.reasserted == 1
    assert gateway.in_flight == 0  # no delivery to settle
