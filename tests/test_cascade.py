"""Cascade and pool-delete plans, and the status of a cascade failing at each step in turn."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbactors.cascade import Step, cascade_plan, pool_delete_plan
from lbactors.messages import decode_request
from lbactors.model import PLURAL, LoadBalancer, Pool
from lbactors.status import cascade_status, pool_delete_status, status_to_builtins
from tests.test_messages import HM, LB, LISTENER, MEMBER, POLICY, POOL, RULE, Payloads

P = Payloads()

LISTENER_PHASE = ("l7rule", "l7policy", "listener")
POOL_PHASE = ("healthmonitor", "member", "pool")


def decode_lb(tree: dict[str, Any]) -> LoadBalancer:
    request = decode_request(
        "loadbalancer_delete", msgspec.json.encode({"loadbalancer": tree, "cascade": True})
    )
    assert isinstance(request.obj, LoadBalancer)
    return request.obj


def keys(plan: list[Step]) -> list[tuple[str, str]]:
    return [(step.kind, step.id) for step in plan]


def entry(object_id: str, prov: str, oper: str) -> dict[str, str]:
    return {"id": object_id, "provisioning_status": prov, "operating_status": oper}


# --------------------------------------------------------------------------- plans by example


def test_plan_of_the_driver_payload() -> None:
    """facts §2.5: the pool is both in lb.pools and the listener's default_pool (pool_id only)."""
    lb = decode_lb(P.full_tree())
    plan = cascade_plan(lb)
    assert keys(plan) == [
        ("l7rule", RULE),
        ("l7policy", POLICY),
        ("listener", LISTENER),
        ("healthmonitor", HM),
        ("member", MEMBER),
        ("pool", POOL),
        ("loadbalancer", LB),
    ]
    # each step carries the payload's own object, so the backend can be called with it
    assert lb.listeners is not None and lb.pools is not None
    assert plan[2].obj is lb.listeners[0]
    assert plan[5].obj is lb.pools[0]
    assert plan[6].obj is lb


def tree_with_everything() -> dict[str, Any]:
    """Two listeners, shared and unshared default pools, children only in the shared copy."""
    return {
        "id": "LB",
        "listeners": [
            {
                "id": "L1",
                "default_pool_id": "P1",
                "default_pool": {
                    "pool_id": "P1",
                    "members": [{"member_id": "M1"}, {"member_id": "M4"}],
                    "healthmonitor": {"healthmonitor_id": "H1"},
                },
                "l7policies": [
                    {"id": "E1", "rules": [{"id": "R1"}, {"l7rule_id": "R2"}]},
                    {"l7policy_id": "E2", "rules": []},
                ],
            },
            {
                "listener_id": "L2",
                "default_pool": {"id": "P3", "members": [{"id": "M5"}]},
                "l7policies": None,
            },
        ],
        "pools": [
            {
                "id": "P1",
                "healthmonitor": {"id": "H1"},
                "members": [{"id": "M1"}, {"id": "M2"}],
            },
            {"pool_id": "P2", "members": [{"member_id": "M3"}], "healthmonitor": None},
        ],
    }


def test_plan_order_and_dedupe() -> None:
    plan = cascade_plan(decode_lb(tree_with_everything()))
    assert keys(plan) == [
        ("l7rule", "R1"),
        ("l7rule", "R2"),
        ("l7policy", "E1"),
        ("l7policy", "E2"),
        ("listener", "L1"),
        ("listener", "L2"),
        ("healthmonitor", "H1"),
        ("member", "M1"),
        ("member", "M2"),
        ("member", "M4"),  # only in the default_pool copy of P1: still deleted, before P1
        ("pool", "P1"),
        ("member", "M3"),
        ("pool", "P2"),
        ("member", "M5"),
        ("pool", "P3"),  # a default pool not in lb.pools, after them
        ("loadbalancer", "LB"),
    ]


def test_children_of_every_copy_of_a_listener_or_policy_are_deleted() -> None:
    """A listener or an L7 policy listed twice is deleted once, at its first place, after
    the children of both copies."""
    tree = {
        "id": "LB",
        "listeners": [
            {
                "id": "L1",
                "l7policies": [
                    {"id": "E1", "rules": [{"id": "R1"}]},
                    {"l7policy_id": "E1", "rules": [{"l7rule_id": "R1"}, {"id": "R2"}]},
                ],
            },
            {"id": "L2"},
            {
                "listener_id": "L1",
                "l7policies": [
                    {"id": "E2", "rules": [{"id": "R3"}]},
                    {"id": "E1", "rules": [{"id": "R4"}]},
                ],
            },
        ],
    }
    assert keys(cascade_plan(decode_lb(tree))) == [
        ("l7rule", "R1"),
        ("l7rule", "R2"),
        ("l7rule", "R4"),
        ("l7policy", "E1"),
        ("l7rule", "R3"),
        ("l7policy", "E2"),
        ("listener", "L1"),
        ("listener", "L2"),
        ("loadbalancer", "LB"),
    ]


def test_objects_without_id_are_left_out_but_their_children_are_not() -> None:
    tree = {
        "id": "LB",
        "listeners": [{"name": "no id", "l7policies": [{"id": "E1", "rules": [{"name": "x"}]}]}],
        "pools": [{"name": "no id", "members": [{"id": "M1"}, {"address": "10.0.0.1"}]}],
    }
    assert keys(cascade_plan(decode_lb(tree))) == [
        ("l7policy", "E1"),
        ("member", "M1"),
        ("loadbalancer", "LB"),
    ]


def test_empty_load_balancer() -> None:
    assert keys(cascade_plan(decode_lb({"loadbalancer_id": "LB"}))) == [("loadbalancer", "LB")]
    assert keys(cascade_plan(decode_lb(P.loadbalancer()))) == [("loadbalancer", LB)]


def test_root_without_id_is_an_error() -> None:
    with pytest.raises(ValueError):
        cascade_plan(LoadBalancer(name="x"))
    with pytest.raises(ValueError):
        pool_delete_plan(Pool(name="x"))


def test_pool_delete_plan() -> None:
    pool = msgspec.convert(
        {
            "id": "P",
            "members": [{"id": "M2"}, {"member_id": "M1"}, {"name": "no id"}, {"id": "M2"}],
            "healthmonitor": {"healthmonitor_id": "H"},
        },
        Pool,
    )
    assert keys(pool_delete_plan(pool)) == [
        ("healthmonitor", "H"),
        ("member", "M2"),
        ("member", "M1"),
        ("pool", "P"),
    ]
    assert keys(pool_delete_plan(Pool(id="P"))) == [("pool", "P")]
    realistic = decode_request("pool_delete", msgspec.json.encode({"pool": P.pool_db()})).obj
    assert isinstance(realistic, Pool)
    assert keys(pool_delete_plan(realistic)) == [
        ("healthmonitor", HM),
        ("member", MEMBER),
        ("pool", POOL),
    ]


# --------------------------------------------------------------------------- cascade status


def expected_cascade(plan: list[Step], completed: int, failed: bool) -> dict[str, Any]:
    """The Results table, row "cascade, step k fails" / "cascade, success"."""
    lb_id = plan[-1].id
    result: dict[str, list[dict[str, str]]] = {}
    if not failed:
        result = {plural: [] for plural in PLURAL.values()}
    else:
        result["loadbalancers"] = [entry(lb_id, "ERROR", "ERROR")]
    for index, step in enumerate(plan[: completed + 1 if failed else completed]):
        failed_here = failed and index == completed
        if step.kind == "loadbalancer" and failed:
            continue  # already ERROR / ERROR
        status = (
            entry(step.id, "ERROR", "ERROR") if failed_here else entry(step.id, "DELETED", "ONLINE")
        )
        result.setdefault(PLURAL[step.kind], []).append(status)
    return result


def test_cascade_success_on_the_driver_payload() -> None:
    lb = decode_lb(P.full_tree())
    plan = cascade_plan(lb)
    result = status_to_builtins(cascade_status(lb, plan, completed=len(plan), failed=False))
    assert result == {
        "loadbalancers": [entry(LB, "DELETED", "ONLINE")],
        "listeners": [entry(LISTENER, "DELETED", "ONLINE")],
        "pools": [entry(POOL, "DELETED", "ONLINE")],
        "members": [entry(MEMBER, "DELETED", "ONLINE")],
        "healthmonitors": [entry(HM, "DELETED", "ONLINE")],
        "l7policies": [entry(POLICY, "DELETED", "ONLINE")],
        "l7rules": [entry(RULE, "DELETED", "ONLINE")],
    }


def test_cascade_failing_at_the_member() -> None:
    lb = decode_lb(P.full_tree())
    plan = cascade_plan(lb)
    result = status_to_builtins(cascade_status(lb, plan, completed=4, failed=True))
    assert result == {
        "loadbalancers": [entry(LB, "ERROR", "ERROR")],
        "l7rules": [entry(RULE, "DELETED", "ONLINE")],
        "l7policies": [entry(POLICY, "DELETED", "ONLINE")],
        "listeners": [entry(LISTENER, "DELETED", "ONLINE")],
        "healthmonitors": [entry(HM, "DELETED", "ONLINE")],
        "members": [entry(MEMBER, "ERROR", "ERROR")],
    }


@pytest.mark.parametrize("tree", [P.full_tree(), tree_with_everything()], ids=["driver", "mixed"])
def test_cascade_with_a_failure_injected_at_each_step(tree: dict[str, Any]) -> None:
    lb = decode_lb(tree)
    plan = cascade_plan(lb)
    for failing in range(len(plan)):
        result = status_to_builtins(cascade_status(lb, plan, completed=failing, failed=True))
        assert result == expected_cascade(plan, failing, True), failing
        assert result["loadbalancers"] == [entry(plan[-1].id, "ERROR", "ERROR")]
        listed = sum(len(v) for v in result.values())
        # the steps before, the failed one and the LB (once, if it is the failed one)
        assert listed == failing + (1 if plan[failing].kind == "loadbalancer" else 2)
        deleted = [e for v in result.values() for e in v if e["provisioning_status"] == "DELETED"]
        assert len(deleted) == failing


def test_cascade_progress_is_checked() -> None:
    lb = decode_lb(P.full_tree())
    plan = cascade_plan(lb)
    with pytest.raises(ValueError):
        cascade_status(lb, plan, completed=len(plan), failed=True)
    with pytest.raises(ValueError):
        cascade_status(lb, plan, completed=2, failed=False)


# --------------------------------------------------------------------------- properties


def ids(draw: st.DrawFn, kind: str, counter: itertools.count[int]) -> dict[str, str]:
    """How the payload names an object: id and <kind>_id, one of them, or (rarely) neither."""
    value = f"{kind}-{next(counter)}"
    form = draw(st.sampled_from(["both", "both", "id", "kind_id", "none"]))
    return {
        "both": {"id": value, f"{kind}_id": value},
        "id": {"id": value},
        "kind_id": {f"{kind}_id": value},
        "none": {},
    }[form]


def members(draw: st.DrawFn, counter: itertools.count[int]) -> list[dict[str, Any]]:
    return [
        ids(draw, "member", counter) | {"address": "10.0.0.1"}
        for _ in range(draw(st.integers(0, 3)))
    ]


def pool(draw: st.DrawFn, counter: itertools.count[int]) -> dict[str, Any]:
    result = ids(draw, "pool", counter) | {"members": members(draw, counter)}
    if draw(st.booleans()):
        result["healthmonitor"] = ids(draw, "healthmonitor", counter)
    return result


def id_of(obj: dict[str, Any], kind: str) -> str | None:
    return obj.get("id") or obj.get(f"{kind}_id")


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
    """A cascade payload; ids unique within the tree except a shared default pool's and the
    copies of listeners and L7 policies (:func:`copies`)."""
    counter = itertools.count()
    pools = [pool(draw, counter) for _ in range(draw(st.integers(0, 3)))]
    listeners = []
    for _ in range(draw(st.integers(0, 3))):
        listener = ids(draw, "listener", counter)
        listener["l7policies"] = [
            ids(draw, "l7policy", counter)
            | {"rules": [ids(draw, "l7rule", counter) for _ in range(draw(st.integers(0, 3)))]}
            for _ in range(draw(st.integers(0, 3)))
        ]
        choice = draw(st.sampled_from(["none", "shared", "own"]))
        shared = [p for p in pools if id_of(p, "pool")]
        if choice == "shared" and shared:
            # the DB copy of a pool of lb.pools: <kind>_id only, maybe with extra members
            original = draw(st.sampled_from(shared))
            copy = {"pool_id": id_of(original, "pool")}
            copy["members"] = [
                {"member_id": id_of(m, "member")} for m in original["members"] if id_of(m, "member")
            ] + members(draw, counter)
            if "healthmonitor" in original and id_of(original["healthmonitor"], "healthmonitor"):
                copy["healthmonitor"] = {
                    "healthmonitor_id": id_of(original["healthmonitor"], "healthmonitor")
                }
            listener["default_pool"] = copy
            listener["default_pool_id"] = copy["pool_id"]
        elif choice == "own":
            listener["default_pool"] = pool(draw, counter)
        listeners.append(listener)
    listeners.extend(copies(draw, listeners, counter))
    return {"id": "LB-" + draw(st.uuids()).hex, "listeners": listeners, "pools": pools}


def policy_copy(
    draw: st.DrawFn, policy: dict[str, Any], counter: itertools.count[int]
) -> dict[str, Any]:
    """Another copy of ``policy`` (same id): some of its rules again, and rules of its own."""
    copy = same_id(draw, policy, "l7policy")
    again = [r for r in policy["rules"] if id_of(r, "l7rule") and draw(st.booleans())]
    new = [ids(draw, "l7rule", counter) for _ in range(draw(st.integers(0, 2)))]
    copy["rules"] = [same_id(draw, r, "l7rule") for r in again] + new
    return copy


def same_id(draw: st.DrawFn, obj: dict[str, Any], kind: str) -> dict[str, str]:
    value = id_of(obj, kind)
    assert value
    return draw(st.sampled_from([{"id": value}, {f"{kind}_id": value}]))


def copies(
    draw: st.DrawFn, listeners: list[dict[str, Any]], counter: itertools.count[int]
) -> list[dict[str, Any]]:
    """Listeners and L7 policies that appear more than once: a policy again later in its own
    listener, and listeners again at the end, each copy with children the first copy lacks."""
    for listener in listeners:
        named = [p for p in listener["l7policies"] if id_of(p, "l7policy")]
        if named and draw(st.booleans()):
            listener["l7policies"].append(policy_copy(draw, draw(st.sampled_from(named)), counter))
    result = []
    for listener in listeners:
        if not id_of(listener, "listener") or not draw(st.booleans()):
            continue
        copy = same_id(draw, listener, "listener")
        named = [p for p in listener["l7policies"] if id_of(p, "l7policy")]
        again = [policy_copy(draw, p, counter) for p in named if draw(st.booleans())]
        new = [
            ids(draw, "l7policy", counter)
            | {"rules": [ids(draw, "l7rule", counter) for _ in range(draw(st.integers(0, 2)))]}
            for _ in range(draw(st.integers(0, 2)))
        ]
        copy["l7policies"] = again + new
        result.append(copy)
    return result


def walk(
    tree: dict[str, Any],
) -> tuple[set[tuple[str, str]], list[tuple[tuple[str, str], tuple[str, str]]]]:
    """Every addressable object of the tree and every (child, parent) pair, independently of the plan."""
    objects: set[tuple[str, str]] = {("loadbalancer", tree["id"])}
    relations: list[tuple[tuple[str, str], tuple[str, str]]] = []

    def add(
        kind: str, obj: dict[str, Any], parent: tuple[str, str | None]
    ) -> tuple[str, str | None]:
        object_id = id_of(obj, kind)
        key = (kind, object_id)
        if object_id:
            objects.add((kind, object_id))
            if parent[1]:
                relations.append(((kind, object_id), (parent[0], parent[1])))
        return key

    lb_key = ("loadbalancer", tree["id"])
    all_pools = list(tree["pools"])
    for listener in tree["listeners"]:
        listener_key = add("listener", listener, lb_key)
        for policy in listener["l7policies"]:
            policy_key = add("l7policy", policy, listener_key)
            for rule in policy["rules"]:
                add("l7rule", rule, policy_key)
        if listener.get("default_pool"):
            all_pools.append(listener["default_pool"])
    for pool_dict in all_pools:
        pool_key = add("pool", pool_dict, lb_key)
        for member in pool_dict["members"]:
            add("member", member, pool_key)
        if pool_dict.get("healthmonitor"):
            add("healthmonitor", pool_dict["healthmonitor"], pool_key)
    return objects, relations


@settings(max_examples=150)
@given(tree=trees())
def test_property_cascade_plan(tree: dict[str, Any]) -> None:
    payload = msgspec.json.encode(tree)
    lb = decode_lb(msgspec.json.decode(payload))
    plan = cascade_plan(lb)
    planned = keys(plan)
    objects, relations = walk(tree)

    # every addressable object of the tree exactly once (a shared default pool once)
    assert len(planned) == len(set(planned))
    assert set(planned) == objects
    # children before their parents: rules -> policy -> listener; HM, members -> pool; LB last
    index = {key: i for i, key in enumerate(planned)}
    for child, parent in relations:
        assert index[child] < index[parent], (child, parent)
    assert planned[-1] == ("loadbalancer", tree["id"])
    # the listener phase, then the pool phase
    kinds = [kind for kind, _ in planned]
    last_listener_phase = max((i for i, k in enumerate(kinds) if k in LISTENER_PHASE), default=-1)
    first_pool_phase = min((i for i, k in enumerate(kinds) if k in POOL_PHASE), default=len(kinds))
    assert last_listener_phase < first_pool_phase
    # payload order: listeners as listed; pools as in lb.pools, then new default pools
    listener_ids = [id_of(li, "listener") for li in tree["listeners"]]
    # (a listener listed twice is deleted at its first place)
    expected_listeners = list(dict.fromkeys(i for i in listener_ids if i))
    assert [i for k, i in planned if k == "listener"] == expected_listeners
    pool_order: list[str] = []
    for source in tree["pools"] + [
        li["default_pool"] for li in tree["listeners"] if li.get("default_pool")
    ]:
        pool_id = id_of(source, "pool")
        if pool_id and pool_id not in pool_order:
            pool_order.append(pool_id)
    assert [i for k, i in planned if k == "pool"] == pool_order
    # the same payload always gives the same plan
    assert keys(cascade_plan(decode_lb(msgspec.json.decode(payload)))) == planned
    assert cascade_plan(lb) == plan


@settings(max_examples=75)
@given(tree=trees())
def test_property_cascade_status_at_every_step(tree: dict[str, Any]) -> None:
    lb = decode_lb(tree)
    plan = cascade_plan(lb)
    success = status_to_builtins(cascade_status(lb, plan, completed=len(plan), failed=False))
    assert success == expected_cascade(plan, len(plan), False)
    assert set(success) == set(PLURAL.values())
    for failing in range(len(plan)):
        result = status_to_builtins(cascade_status(lb, plan, completed=failing, failed=True))
        assert result == expected_cascade(plan, failing, True)
        # DELETED only for the steps that completed, each id once per kind
        for entries in result.values():
            assert len({e["id"] for e in entries}) == len(entries)
        deleted = {
            (kind, e["id"])
            for kind, entries in result.items()
            for e in entries
            if e["provisioning_status"] == "DELETED"
        }
        assert deleted == {(PLURAL[s.kind], s.id) for s in plan[:failing]}


@given(tree=trees(), data=st.data())
def test_property_pool_delete_plan_and_status(tree: dict[str, Any], data: st.DataObject) -> None:
    candidates = [p for p in tree["pools"] if id_of(p, "pool")]
    if not candidates:
        return
    pool_dict = data.draw(st.sampled_from(candidates)) | {"loadbalancer_id": "LB-X"}
    request = decode_request("pool_delete", msgspec.json.encode({"pool": pool_dict}))
    assert isinstance(request.obj, Pool)
    plan = pool_delete_plan(request.obj)
    planned = keys(plan)
    assert planned[-1] == ("pool", id_of(pool_dict, "pool"))
    expected_members = [id_of(m, "member") for m in pool_dict["members"] if id_of(m, "member")]
    assert [i for k, i in planned if k == "member"] == expected_members
    hm = pool_dict.get("healthmonitor")
    if hm and id_of(hm, "healthmonitor"):
        assert planned[0] == ("healthmonitor", id_of(hm, "healthmonitor"))
    failing = data.draw(st.integers(0, len(plan) - 1))
    result = status_to_builtins(
        pool_delete_status(request.obj, plan, completed=failing, failed=True)
    )
    assert result["pools"] == [entry(plan[-1].id, "ERROR", "ERROR")]
    assert result["loadbalancers"] == [{"id": "LB-X", "provisioning_status": "ACTIVE"}]
    for index, step in enumerate(plan[:-1]):
        listed = [e for e in result.get(PLURAL[step.kind], []) if e["id"] == step.id]
        if index < failing:
            assert listed == [entry(step.id, "DELETED", "ONLINE")]
        elif index == failing:
            assert listed == [entry(step.id, "ERROR", "ERROR")]
        else:
            assert listed == []
