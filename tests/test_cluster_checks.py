"""The checks of the cluster tests (tests/cluster_checks.py), on statuses shaped like the noop
backend's for the bench workload's operations, and on real ``rabbitmqctl`` output."""

from __future__ import annotations

from typing import Any

import pytest

from bench.workload import LoadBalancerPlan, Operation
from tests.cluster_checks import (
    SentOperation,
    shard_owners,
    status_order_problems,
    status_subject,
)


def plan_operations(idx: int, members: int = 2) -> list[Operation]:
    plan = LoadBalancerPlan(idx, members)
    operations = []
    while not plan.finished:
        operations.append(plan.next_operation())
        plan.advance()
    return operations


def sent_of(lb_id: str, operations: list[Operation]) -> list[SentOperation]:
    return [SentOperation(lb_id, op.method, (op.otype, op.oid, op.expect)) for op in operations]


def status_of(op: Operation) -> dict[str, Any]:
    """The status update the noop backend sends when ``op`` succeeds: its object, its
    parents ACTIVE, for a cascade delete every child DELETED."""
    status: dict[str, list[dict[str, Any]]] = {}

    def add(key: str, oid: str, provisioning: str) -> None:
        entry = {"id": oid, "provisioning_status": provisioning, "operating_status": "ONLINE"}
        status.setdefault(key, []).append(entry)

    add(op.otype, op.oid, op.expect)
    for key, oid in op.parents:
        add(key, oid, "ACTIVE")
    for key, ids in (op.cascade or {}).items():
        for oid in sorted(ids):
            if (key, oid) != (op.otype, op.oid):
                add(key, oid, "DELETED")
    return status


@pytest.fixture
def two() -> tuple[list[SentOperation], list[list[dict[str, Any]]]]:
    """Two load balancers' plans (create, children, updates, cascade delete), in cast order
    interleaved, and each one's statuses in operation order."""
    first, second = plan_operations(1), plan_operations(2)
    sent = []
    for a, b in zip(first, second, strict=True):
        sent += sent_of(a.lb.lb_id, [a]) + sent_of(b.lb.lb_id, [b])  # type: ignore[union-attr]
    return sent, [[status_of(op) for op in first], [status_of(op) for op in second]]


def interleave(*streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for group in zip(*streams, strict=True):
        merged.extend(group)
    return merged


def test_the_subject_of_each_workload_status_is_its_operations_object() -> None:
    for op in plan_operations(1):
        assert status_subject(status_of(op)) == (op.otype, op.oid, op.expect), op.method


def test_a_status_without_provisioning_status_has_no_subject() -> None:
    assert status_subject({"loadbalancers": [{"id": "x", "operating_status": "OFFLINE"}]}) is None


def test_statuses_in_operation_order_pass(two) -> None:
    sent, (first, second) = two
    assert status_order_problems(sent, interleave(first, second)) == []
    # operating-status-only updates (statistics rounds) in between are not statuses of operations
    offline = {"loadbalancers": [{"id": sent[0].lb_id, "operating_status": "OFFLINE"}]}
    assert status_order_problems(sent, [offline, *interleave(first, second), offline]) == []


def test_consecutive_duplicates_pass(two) -> None:
    sent, (first, second) = two
    doubled = [status for status in first for _ in range(2)]
    assert status_order_problems(sent, [*doubled, *second]) == []


def test_a_status_arriving_after_a_later_operations_fails(two) -> None:
    sent, (first, second) = two
    # the listener create run a second time (a handover), its status after the pool's
    late = [*first[:3], first[1], *first[3:]]
    problems = status_order_problems(sent, [*late, *second])
    assert len(problems) == 1
    assert first[0]["loadbalancers"][0]["id"] in problems[0]
    assert "out of operation order" in problems[0]


def test_a_swapped_pair_fails(two) -> None:
    sent, (first, second) = two
    swapped = [first[0], first[2], first[1], *first[3:]]
    problems = status_order_problems(sent, [*swapped, *second])
    assert len(problems) == 1 and "status update 1 about ('pools'" in problems[0]
    assert "out of operation order" in problems[0]


def test_missing_statuses_fail_unless_only_order_is_asked(two) -> None:
    sent, (first, second) = two
    received = [*first[:-1], *second]
    problems = status_order_problems(sent, received)
    assert len(problems) == 1 and "1 operation statuses missing" in problems[0]
    assert status_order_problems(sent, received, require_all=False) == []


def test_a_status_of_an_unknown_load_balancer_fails(two) -> None:
    sent, (first, second) = two
    stranger = status_of(plan_operations(3)[0])
    problems = status_order_problems(sent, [*first, stranger, *second])
    assert len(problems) == 1 and "of no load balancer sent" in problems[0]


def test_reassertions_of_live_created_objects_pass(two) -> None:
    sent, (first, second) = two
    member = {"members": [first[3]["members"][0]]}
    together = {"members": [first[4]["members"][0]], "healthmonitors": first[5]["healthmonitors"]}
    lb_alone = {"loadbalancers": [first[0]["loadbalancers"][0]]}
    received = [*first[:6], member, together, *first[6:8], lb_alone, together, *first[8:], *second]
    assert status_order_problems(sent, received) == []


def test_a_reassertion_after_the_delete_fails(two) -> None:
    sent, (first, second) = two
    member = {"members": [first[3]["members"][0]]}
    problems = status_order_problems(sent, [*first, member, *second])
    assert len(problems) == 1 and "out of operation order after 16 of 16" in problems[0]


def test_a_reassertion_before_its_create_status_fails(two) -> None:
    sent, (first, second) = two
    monitor = {"healthmonitors": first[5]["healthmonitors"]}  # its create is the 6th operation
    problems = status_order_problems(sent, [*first[:4], monitor, *first[4:], *second])
    assert len(problems) == 1 and "out of operation order after 4 of 16" in problems[0]


# what `rabbitmqctl list_consumers queue_name channel_pid active` printed here (3.10.8) for a
# single-active-consumer quorum queue with three consumers, and one without any active
LISTED = (
    "Listing consumers in vhost / ...\n"
    "queue_name\tchannel_pid\tactive\n"
    "t.shard.000\t<rabbit@localhost.1796310274.879.0>\ttrue\n"
    "t.shard.000\t<rabbit@localhost.1796310274.889.0>\tfalse\n"
    "t.shard.000\t<rabbit@localhost.1796310274.884.0>\tfalse\n"
    "t.shard.001\t<rabbit@localhost.1796310274.880.0>\tfalse\n"
    "t.shard.002\t<rabbit@localhost.1796310274.881.0>\ttrue\n"
    "t.shard.002\t<rabbit@localhost.1796310274.882.0>\ttrue\n"
)


def test_shard_owners_counts_active_consumers_per_queue() -> None:
    assert shard_owners(LISTED) == {"t.shard.000": 1, "t.shard.001": 0, "t.shard.002": 2}
    # --quiet drops the banner; nothing listed is nothing owned
    assert shard_owners(LISTED.split("\n", 1)[1]) == shard_owners(LISTED)
    assert shard_owners("queue_name\tchannel_pid\tactive\n") == {}


def test_shard_owners_refuses_other_columns() -> None:
    with pytest.raises(ValueError, match="not a 'queue_name channel_pid active' line"):
        shard_owners("t.shard.000\t<rabbit@localhost.1.2.3>\n")
