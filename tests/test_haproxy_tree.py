"""The haproxy backend's subtree bookkeeping, without HAProxy: what one operation does to a
load balancer's tree and to the index of which load balancer owns an object."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from lbactors.backends.haproxy_config import LoadBalancerTree
from lbactors.backends.haproxy_tree import (
    TREE_FIELD,
    find_lb_id,
    nested_lb,
    new_tree,
    own_state,
    owners,
    owners_after_removal,
    with_object,
    without,
)
from lbactors.model import (
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    Pool,
)

LB = "5e3f1c2a-0000-4000-8000-c2d3e4f5a6b7"
OTHER_LB = "5e3f1c2a-0000-4000-8000-c2d3e4f5a6b8"
L1 = "a1b2c3d4-0000-4000-8000-000000006677"
L2 = "a1b2c3d4-0000-4000-8000-000000006678"
P1 = "b2c3d4e5-0000-4000-8000-000000007788"
P2 = "b2c3d4e5-0000-4000-8000-000000007789"
M1 = "c3d4e5f6-0000-4000-8000-000000008899"
M2 = "c3d4e5f6-0000-4000-8000-00000000889a"
HM1 = "d4e5f6a7-0000-4000-8000-0000000099aa"
HM2 = "d4e5f6a7-0000-4000-8000-0000000099ab"
POL1 = "e5f6a7b8-0000-4000-8000-00000000aabb"
POL2 = "e5f6a7b8-0000-4000-8000-00000000aabc"
R1 = "f6a7b8c9-0000-4000-8000-00000000bbcc"
R2 = "f6a7b8c9-0000-4000-8000-00000000bbcd"


def make(cls: type[Any], **fields: Any) -> Any:
    return msgspec.convert(fields, cls)


def lb_payload(lb_id: str = LB) -> dict[str, Any]:
    return {"id": lb_id, "name": "lb", "vip_address": "10.0.0.10"}


def full_tree() -> LoadBalancerTree:
    """Two listeners, each with a default pool (a member and a monitor each) and a policy
    (a rule each)."""
    return LoadBalancerTree(
        lb=make(LoadBalancer, **lb_payload()),
        listeners={
            L1: make(Listener, id=L1, loadbalancer_id=LB, protocol="HTTP", default_pool_id=P1),
            L2: make(Listener, id=L2, loadbalancer_id=LB, protocol="HTTP", default_pool_id=P2),
        },
        pools={
            P1: make(Pool, id=P1, listener_id=L1, protocol="HTTP"),
            P2: make(Pool, id=P2, listener_id=L2, protocol="HTTP"),
        },
        members={
            M1: make(Member, id=M1, pool_id=P1, address="10.0.1.1", protocol_port=80),
            M2: make(Member, id=M2, pool_id=P2, address="10.0.1.2", protocol_port=80),
        },
        healthmonitors={
            HM1: make(HealthMonitor, id=HM1, pool_id=P1, type="HTTP"),
            HM2: make(HealthMonitor, id=HM2, pool_id=P2, type="HTTP"),
        },
        l7policies={
            POL1: make(L7Policy, id=POL1, listener_id=L1, action="REJECT"),
            POL2: make(L7Policy, id=POL2, listener_id=L2, action="REJECT"),
        },
        l7rules={
            R1: make(L7Rule, id=R1, l7policy_id=POL1, type="PATH", value="/a"),
            R2: make(L7Rule, id=R2, l7policy_id=POL2, type="PATH", value="/b"),
        },
    )


def ids(tree: LoadBalancerTree) -> dict[str, set[str]]:
    return {field: set(getattr(tree, field)) for field in TREE_FIELD.values()}


# --------------------------------------------------------------------------- own_state


def test_own_state_drops_nested_payloads_and_takes_parent_ids_from_them() -> None:
    member = make(Member, id=M1, address="10.0.1.1", pool={"id": P1, "loadbalancer": lb_payload()})
    own = own_state("member", member, None)
    assert own.pool_id == P1
    assert own.pool is None and own.loadbalancer is None
    assert own.address == "10.0.1.1"

    listener = make(
        Listener,
        id=L1,
        protocol="HTTP",
        loadbalancer=lb_payload(),
        default_pool={"id": P1},
        l7policies=[{"id": POL1}],
    )
    own = own_state("listener", listener, None)
    assert own.loadbalancer_id == LB
    assert (own.loadbalancer, own.default_pool, own.l7policies) == (None, None, None)

    pool = make(Pool, id=P1, listener={"id": L1}, members=[{"id": M1}], healthmonitor={"id": HM1})
    own = own_state("pool", pool, None)
    assert own.listener_id == L1
    assert (own.listener, own.members, own.healthmonitor) == (None, None, None)

    policy = make(L7Policy, id=POL1, listener={"id": L1}, rules=[{"id": R1}])
    own = own_state("l7policy", policy, None)
    assert own.listener_id == L1 and own.listener is None and own.rules is None

    rule = make(L7Rule, id=R1, policy={"id": POL1})
    own = own_state("l7rule", rule, None)
    assert own.l7policy_id == POL1 and own.policy is None

    monitor = make(HealthMonitor, id=HM1, pool={"id": P1})
    own = own_state("healthmonitor", monitor, None)
    assert own.pool_id == P1 and own.pool is None


def test_own_state_of_an_update_takes_the_parents_the_new_object_lacks_from_the_old() -> None:
    old = make(Member, id=M1, pool_id=P1, weight=1)
    new = make(Member, id=M1, weight=5)
    own = own_state("member", new, old)
    assert own.pool_id == P1 and own.weight == 5


def test_own_state_keeps_the_parent_id_the_object_names() -> None:
    member = make(Member, id=M1, pool_id=P2, pool={"id": P1})
    assert own_state("member", member, None).pool_id == P2


# --------------------------------------------------------------------------- nested_lb


@pytest.mark.parametrize(
    ("cls", "payload"),
    [
        (Member, {"id": M1, "loadbalancer": lb_payload()}),
        (Listener, {"id": L1, "loadbalancer": lb_payload()}),
        (Pool, {"id": P1, "loadbalancer": lb_payload()}),
        (Pool, {"id": P1, "listener": {"id": L1, "loadbalancer": lb_payload()}}),
        (Member, {"id": M1, "pool": {"id": P1, "loadbalancer": lb_payload()}}),
        (HealthMonitor, {"id": HM1, "pool": {"id": P1, "listener": {"loadbalancer": lb_payload()}}}),
        (L7Rule, {"id": R1, "policy": {"id": POL1, "listener": {"loadbalancer": lb_payload()}}}),
    ],
)
def test_nested_lb_finds_the_load_balancer_a_payload_carries(
    cls: type[Any], payload: dict[str, Any]
) -> None:
    found = nested_lb(make(cls, **payload))
    assert isinstance(found, LoadBalancer)
    assert found.id == LB and found.vip_address == "10.0.0.10"


def test_nested_lb_is_none_without_a_load_balancer_with_an_id() -> None:
    assert nested_lb(make(Member, id=M1, pool={"id": P1})) is None
    assert nested_lb(make(Listener, id=L1, loadbalancer={"name": "no id"})) is None
    assert nested_lb(None) is None


# --------------------------------------------------------------------------- find_lb_id


def test_find_lb_id_of_a_load_balancer_is_its_own_id() -> None:
    assert find_lb_id("loadbalancer", make(LoadBalancer, id=LB), None, {}) == LB


def test_find_lb_id_prefers_the_index_for_a_known_object() -> None:
    member = make(Member, id=M1, loadbalancer_id=OTHER_LB)
    assert find_lb_id("member", member, None, {("member", M1): LB}) == LB


def test_find_lb_id_takes_the_payload_for_a_new_object() -> None:
    member = make(Member, id=M1, pool={"id": P1, "loadbalancer_id": LB})
    assert find_lb_id("member", member, None, {}) == LB


@pytest.mark.parametrize(
    ("kind", "cls", "payload", "index"),
    [
        ("member", Member, {"id": M1, "pool_id": P1}, {("pool", P1): LB}),
        ("healthmonitor", HealthMonitor, {"id": HM1, "pool": {"id": P1}}, {("pool", P1): LB}),
        ("l7rule", L7Rule, {"id": R1, "l7policy_id": POL1}, {("l7policy", POL1): LB}),
        ("l7policy", L7Policy, {"id": POL1, "listener_id": L1}, {("listener", L1): LB}),
        ("pool", Pool, {"id": P1, "listeners": [{"id": L2}]}, {("listener", L2): LB}),
    ],
)
def test_find_lb_id_finds_a_parent_in_the_index(
    kind: str, cls: type[Any], payload: dict[str, Any], index: dict[tuple[str, str], str]
) -> None:
    assert find_lb_id(kind, make(cls, **payload), None, index) == LB


def test_find_lb_id_takes_the_parents_of_an_update_from_the_old_object() -> None:
    old = make(Member, id=M1, pool_id=P1)
    new = make(Member, id=M1, weight=3)
    assert find_lb_id("member", new, None, {("pool", P1): LB}) is None
    assert find_lb_id("member", new, old, {("pool", P1): LB}) == LB


def test_find_lb_id_is_none_for_an_object_of_no_known_load_balancer() -> None:
    member = make(Member, id=M1, pool_id=P1)
    assert find_lb_id("member", member, None, {("pool", P2): LB}) is None


# --------------------------------------------------------------------------- with_object


def test_a_new_tree_holds_the_load_balancer_without_its_nested_objects() -> None:
    lb = make(LoadBalancer, **lb_payload(), listeners=[{"id": L1}], pools=[{"id": P1}])
    tree = new_tree(lb)
    assert tree.lb.id == LB and tree.lb.listeners is None and tree.lb.pools is None
    assert all(not objects for objects in ids(tree).values())


def test_a_load_balancer_update_replaces_it_and_keeps_its_objects() -> None:
    tree = full_tree()
    new = make(LoadBalancer, **lb_payload() | {"name": "renamed"}, listeners=[{"id": L1}])
    changed = with_object(tree, "loadbalancer", new)
    assert changed.lb.name == "renamed" and changed.lb.listeners is None
    assert ids(changed) == ids(tree)
    assert tree.lb.name == "lb"  # the old tree is left as it was


def test_a_created_object_is_added_in_its_own_state() -> None:
    tree = full_tree()
    member = make(Member, id="new-member", address="10.0.1.9", pool={"id": P2})
    changed = with_object(tree, "member", member)
    assert changed.members["new-member"].pool_id == P2
    assert changed.members["new-member"].pool is None
    assert ids(changed)["members"] == {M1, M2, "new-member"}
    assert "new-member" not in tree.members


def test_an_updated_object_replaces_the_old_one() -> None:
    tree = full_tree()
    old = tree.members[M1]
    new = make(Member, id=M1, address="10.0.1.1", protocol_port=80, weight=7)
    changed = with_object(tree, "member", new, old)
    assert changed.members[M1].weight == 7 and changed.members[M1].pool_id == P1
    assert ids(changed) == ids(tree)


def test_a_listener_update_that_removes_its_default_pool_detaches_the_pools_of_the_listener() -> None:
    tree = full_tree()
    old = tree.listeners[L1]
    new = make(Listener, id=L1, loadbalancer_id=LB, protocol="HTTP")
    changed = with_object(tree, "listener", new, old)
    assert changed.listeners[L1].default_pool_id is None
    assert changed.pools[P1].listener_id is None
    assert changed.pools[P2].listener_id == L2  # another listener's pool is untouched


def test_a_listener_update_that_keeps_its_default_pool_leaves_the_pools() -> None:
    tree = full_tree()
    old = tree.listeners[L1]
    new = make(Listener, id=L1, loadbalancer_id=LB, protocol="HTTP", default_pool_id=P1, name="x")
    changed = with_object(tree, "listener", new, old)
    assert changed.pools == tree.pools


def test_an_object_without_id_is_refused() -> None:
    with pytest.raises(ValueError, match="without id"):
        with_object(full_tree(), "member", make(Member, address="10.0.1.1"))


# --------------------------------------------------------------------------- without


def test_deleting_a_listener_takes_its_policies_and_their_rules_and_detaches_its_pools() -> None:
    changed = without(full_tree(), "listener", L1)
    assert ids(changed) == {
        "listeners": {L2},
        "pools": {P1, P2},
        "members": {M1, M2},
        "healthmonitors": {HM1, HM2},
        "l7policies": {POL2},
        "l7rules": {R2},
    }
    assert changed.pools[P1].listener_id is None
    assert changed.pools[P2].listener_id == L2


def test_deleting_a_policy_takes_its_rules_only() -> None:
    changed = without(full_tree(), "l7policy", POL1)
    expected = ids(full_tree()) | {"l7policies": {POL2}, "l7rules": {R2}}
    assert ids(changed) == expected


def test_deleting_a_pool_takes_its_members_and_monitor_and_unsets_it_as_default_pool() -> None:
    changed = without(full_tree(), "pool", P1)
    assert ids(changed) == ids(full_tree()) | {
        "pools": {P2},
        "members": {M2},
        "healthmonitors": {HM2},
    }
    assert changed.listeners[L1].default_pool_id is None
    assert changed.listeners[L2].default_pool_id == P2


@pytest.mark.parametrize(
    ("kind", "object_id"), [("member", M1), ("healthmonitor", HM1), ("l7rule", R1)]
)
def test_deleting_a_leaf_takes_only_itself(kind: str, object_id: str) -> None:
    tree = full_tree()
    changed = without(tree, kind, object_id)
    field = TREE_FIELD[kind]
    assert ids(changed) == ids(tree) | {field: ids(tree)[field] - {object_id}}
    assert changed.listeners == tree.listeners and changed.pools == tree.pools


def test_deleting_leaves_the_old_tree_as_it_was() -> None:
    tree = full_tree()
    without(tree, "listener", L1)
    assert ids(tree) == ids(full_tree()) and tree.pools[P1].listener_id == L1


# --------------------------------------------------------------------------- owner index


def test_owners_index_the_load_balancer_and_every_object_of_its_tree() -> None:
    index = owners(LB, full_tree())
    assert index == {
        ("loadbalancer", LB): LB,
        ("listener", L1): LB,
        ("listener", L2): LB,
        ("pool", P1): LB,
        ("pool", P2): LB,
        ("member", M1): LB,
        ("member", M2): LB,
        ("healthmonitor", HM1): LB,
        ("healthmonitor", HM2): LB,
        ("l7policy", POL1): LB,
        ("l7policy", POL2): LB,
        ("l7rule", R1): LB,
        ("l7rule", R2): LB,
    }


def test_after_a_removal_the_index_forgets_the_objects_gone_from_the_tree() -> None:
    other = {("loadbalancer", OTHER_LB): OTHER_LB, ("member", "other-member"): OTHER_LB}
    tree = full_tree()
    smaller = without(tree, "pool", P1)
    index = owners_after_removal(owners(LB, tree) | other, LB, smaller)
    assert index == owners(LB, smaller) | other


def test_after_a_load_balancer_removal_the_index_forgets_all_of_it() -> None:
    other = {("loadbalancer", OTHER_LB): OTHER_LB, ("member", "other-member"): OTHER_LB}
    assert owners_after_removal(owners(LB, full_tree()) | other, LB, None) == other
