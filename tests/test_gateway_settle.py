"""The gateway's settle rule without a broker: a delivery is acked only once every publish of
its outcome is confirmed; a nacked or returned status publish is not treated as done."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from lbactors.amqp import oslo
from lbactors.amqp.connection import Delivery
from lbactors.amqp.errors import PublishNacked, PublishReturned
from lbactors.gateway import Gateway, GatewaySettings, _Pending, _Published, route
from lbactors.messages import Operation, Outcome


class FakeConfirmation:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def wait(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error


class FakeChannel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool | None]] = []

    async def ack(self, tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", tag, None))

    async def nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.calls.append(("nack", tag, requeue))

    async def reject(self, tag: int, requeue: bool = False) -> None:
        self.calls.append(("reject", tag, requeue))


class NullSink:
    async def submit(self, op: Operation) -> None:
        raise AssertionError("not used")


def make_gateway() -> Gateway:
    _, receive = trio.open_memory_channel[Outcome](1)
    return Gateway(GatewaySettings(), NullSink(), receive)


def published(
    channel: FakeChannel, tag: int, status: Any, reply: Any = None, reject: str | None = None
) -> _Published:
    delivery = Delivery(
        body=b"{}",
        delivery_tag=tag,
        redelivered=False,
        exchange="common",
        routing_key="t",
        consumer_tag="c",
        properties=oslo.CAST_PROPERTIES,
    )
    pending = _Pending(
        generation=1,
        channel=channel,  # type: ignore[arg-type]
        delivery=delivery,
        method="member_create",
        lb_id="lb",
        msg_id=None,
        reply_q=None,
    )
    return _Published(pending, status, reply, reject)


@pytest.mark.parametrize(
    ("status", "reply", "reject", "expected"),
    [
        (FakeConfirmation(), None, None, ("ack", 1, None)),
        (FakeConfirmation(PublishNacked(1)), None, None, ("nack", 1, True)),
        (
            FakeConfirmation(PublishReturned(312, "NO_ROUTE", "common", "t")),
            None,
            None,
            ("nack", 1, True),
        ),
        # a reply nobody waits for any more (caller gone) does not undo the work
        (
            FakeConfirmation(),
            FakeConfirmation(PublishReturned(312, "NO_ROUTE", "", "q")),
            None,
            ("ack", 1, None),
        ),
        # no dead-letter exchange configured: rejected without requeue
        (None, FakeConfirmation(), "NoSuchMethod: m", ("reject", 1, False)),
    ],
)
async def test_settle(
    status: Any, reply: Any, reject: str | None, expected: tuple[str, int, bool | None]
) -> None:
    with trio.fail_after(10):
        gateway = make_gateway()
        channel = FakeChannel()
        send, receive = trio.open_memory_channel[_Published](4)
        gateway._unsettled = 1
        async with send:
            await send.send(published(channel, 1, status, reply, reject))
        await gateway._settle(receive)
        assert channel.calls == [expected]
        assert gateway.in_flight == 0


async def test_settle_keeps_delivery_order() -> None:
    with trio.fail_after(10):
        gateway = make_gateway()
        channel = FakeChannel()
        send, receive = trio.open_memory_channel[_Published](8)
        gateway._unsettled = 3
        async with send:
            for tag in (1, 2, 3):
                await send.send(published(channel, tag, FakeConfirmation()))
        await gateway._settle(receive)
        assert [tag for _, tag, _ in channel.calls] == [1, 2, 3]


def test_route_of_broken_operations() -> None:
    assert (
        route("member_create", b'{"member": {"id": "m", "pool": {"loadbalancer_id": "lb-9"}}}')
        == "lb-9"
    )
    # an unknown method or missing object goes to the query path, which answers with an error
    assert route("frobnicate", b"{}") == ""
    assert route("member_create", b"{}") == ""


def test_route_from_the_ids_alone_agrees_with_the_whole_decode() -> None:
    """The supervisor routes from a Struct of the ids only; on every operation the driver
    sends (each kind, create/update/delete, nested parents, sparse updates), the load
    balancer is the one the whole decode finds (``routing.owner_of``)."""
    from bench.actors import lifecycle
    from bench.workload import LoadBalancerPlan
    from lbactors.gateway import _owner_from_ids, route_key

    cases: list[tuple[str, bytes]] = []
    for i in range(3):
        plan = LoadBalancerPlan(i, 3)
        cases += [(op.method, op.args_json) for op in (step() for step in plan._plan(True, False))]
        cases += lifecycle(i)
    # a sparse update whose new object names no parent: the old one's is taken
    cases.append((
        "member_update",
        b'{"old_member": {"id": "m1", "pool": {"id": "p", "loadbalancer_id": "lb-old"}},'
        b' "new_member": {"id": "m1", "weight": 3}}',
    ))
    methods = {method for method, _ in cases}
    assert len(methods) >= 15
    for method, args in cases:
        fast = _owner_from_ids(method, args)
        assert fast is not None, method
        assert fast == route_key(method, args)[0], method
    assert route("member_update", cases[-1][1]) == "lb-old"


def test_route_of_sparse_updates_from_the_ids_agrees_with_the_whole_decode() -> None:
    """Every mix of a new member's id fields left out, sent as null or sent (its id, its
    ``member_id``, its ``loadbalancer_id``, its pool): when the ids decide, they name the load
    balancer the whole decode finds."""
    import itertools
    import json

    from lbactors.gateway import _owner_from_ids, route_key

    states: dict[str, tuple[object, ...]] = {
        "id": (None, "m1", "m2"),
        "member_id": (None, "m1", "m3"),
        "loadbalancer_id": (None, "lb-new"),
        "pool": (None, {"id": "p", "loadbalancer_id": "lb-pool"}, {"id": "p"}),
    }
    olds = [
        {"id": "m1", "pool": {"id": "p", "loadbalancer_id": "lb-old"}},
        {"id": "m1", "loadbalancer_id": "lb-old-direct"},
    ]
    absent = object()
    decided = 0
    for old in olds:
        for values in itertools.product(*((absent, *choice) for choice in states.values())):
            new = {k: v for k, v in zip(states, values, strict=True) if v is not absent}
            args = json.dumps({"old_member": old, "new_member": new}).encode()
            fast = _owner_from_ids("member_update", args)
            if fast is not None:
                decided += 1
                assert fast == route_key("member_update", args)[0], new
    assert decided >= 150


def test_owner_key_from_the_ids_when_the_backend_tells_it_from_the_load_balancer() -> None:
    """With a backend's affinity, the key comes from ``lb_affinity_key`` of the load balancer
    the ids name (the affinity contract: one key per load balancer for its life); when that
    cannot tell (None), the payload is decoded whole for ``affinity_key``."""
    from lbactors.backends.noop import NoopBackend

    _, receive = trio.open_memory_channel[Any](1)
    args = b'{"member": {"id": "m", "pool": {"loadbalancer_id": "lb-9000"}}}'
    backend = NoopBackend(affinity_prefix=4)
    asked: list[str] = []

    def affinity(request: Any) -> str | None:
        asked.append(request.method)
        return backend.affinity_key(request)

    by_prefix = Gateway(GatewaySettings(), NullSink(), receive, affinity=affinity,
                        lb_affinity=backend.lb_affinity_key)
    assert by_prefix._key_from_payload("member_create", args) == ("lb-9000", "lb-9")
    assert asked == []
    unknown = Gateway(GatewaySettings(), NullSink(), receive, affinity=affinity,
                      lb_affinity=lambda lb_id: None)
    assert unknown._key_from_payload("member_create", args) == ("lb-9000", "lb-9")
    assert asked == ["member_create"]
