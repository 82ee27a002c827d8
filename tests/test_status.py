"""Status updates: status-semantics.md's Results table, the seed's unit tests, properties."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbactors.cascade import cascade_plan, pool_delete_plan
from lbactors.messages import Request, StatusEntry, StatusUpdate, decode_request
from lbactors.model import PLURAL, Listener, Member, Pool
from lbactors.status import (
    Parents,
    cascade_status,
    object_error_status,
    operation_status,
    parents_of,
    pool_delete_status,
    status_to_builtins,
)
from tests.test_messages import (
    HM,
    LB,
    LISTENER,
    MEMBER,
    MEMBER2,
    OWN_ID,
    POLICY,
    POOL,
    RULE,
    Payloads,
)

P = Payloads()
MODES = ["active", "error"]
KINDS = list(PLURAL)


def entry(object_id: str, prov: str, oper: str | None = None) -> dict[str, str]:
    result = {"id": object_id, "provisioning_status": prov}
    if oper is not None:
        result["operating_status"] = oper
    return result


def status(method: str, args: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    request = decode_request(method, msgspec.json.encode(args))
    return status_to_builtins(operation_status(request, **kwargs))


def normalized(result: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Lists compared as sets (the order of entries inside a list carries no meaning)."""
    return {key: sorted(value, key=lambda e: e["id"]) for key, value in result.items()}


# --------------------------------------------------------------------------- seed unit tests


def dummy() -> dict[str, str]:
    """The seed tests' default object."""
    return {"project_id": str(uuid.uuid4()), "id": str(uuid.uuid4())}


def only(plural: str, object_id: str, prov: str, oper: str) -> dict[str, Any]:
    return {plural: [entry(object_id, prov, oper)]}


SEED_SIMPLE = [
    # (test number, method, kwargs builder, object kwarg, plural, provisioning, success)
    ("1", "loadbalancer_create", "loadbalancer", "ACTIVE", True),
    ("2", "loadbalancer_create", "loadbalancer", "ERROR", False),
    ("3", "loadbalancer_delete", "loadbalancer", "DELETED", True),
    ("5", "loadbalancer_update", "loadbalancer", "ACTIVE", True),
    ("6", "listener_create", "listener", "ACTIVE", True),
    ("7", "listener_update", "listener", "ACTIVE", True),
    ("8", "listener_delete", "listener", "DELETED", True),
    ("9", "pool_create", "pool", "ACTIVE", True),
    ("10S", "pool_delete", "pool", "DELETED", True),
    ("11", "pool_update", "pool", "ACTIVE", True),
    ("12S", "member_create", "member", "ACTIVE", True),
    ("13", "member_delete", "member", "DELETED", True),
    ("14", "member_update", "member", "ACTIVE", True),
    ("15", "healthmonitor_create", "healthmonitor", "ACTIVE", True),
    ("16", "healthmonitor_update", "healthmonitor", "ACTIVE", True),
    ("17", "healthmonitor_delete", "healthmonitor", "DELETED", True),
    ("18", "l7policy_create", "l7policy", "ACTIVE", True),
    ("19", "l7policy_update", "l7policy", "ACTIVE", True),
    ("20", "l7policy_delete", "l7policy", "DELETED", True),
    ("21", "l7rule_create", "l7rule", "ACTIVE", True),
    ("22", "l7rule_update", "l7rule", "ACTIVE", True),
    ("23", "l7rule_delete", "l7rule", "DELETED", True),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("number", "method", "kind", "prov", "success"), SEED_SIMPLE, ids=[c[0] for c in SEED_SIMPLE]
)
def test_seed_unit_test(
    number: str, method: str, kind: str, prov: str, success: bool, mode: str
) -> None:
    obj = dummy()
    if method.endswith("_update"):
        args: dict[str, Any] = {f"old_{kind}": obj, f"new_{kind}": dict(obj)}
    else:
        args = {kind: obj}
    if kind == "listener" and not method.endswith("_delete"):
        args["cert"] = None
    oper = "ONLINE" if success else "ERROR"
    result = status(method, args, success=success, parents_on_failure=mode)
    assert result == only(PLURAL[kind], obj["id"], prov, oper)


@pytest.mark.parametrize("mode", MODES)
def test_seed_4_cascade_delete_of_an_empty_lb(mode: str) -> None:
    obj = dummy()
    result = status(
        "loadbalancer_delete",
        {"loadbalancer": obj, "cascade": True},
        success=True,
        parents_on_failure=mode,
    )
    assert result == {
        "loadbalancers": [entry(obj["id"], "DELETED", "ONLINE")],
        "listeners": [],
        "pools": [],
        "members": [],
        "l7policies": [],
        "l7rules": [],
        "healthmonitors": [],
    }


@pytest.mark.parametrize("mode", MODES)
def test_seed_10m_pool_delete_keeps_its_own_deleted_entry(mode: str) -> None:
    lb_id, listener_id, pool_id = (str(uuid.uuid4()) for _ in range(3))
    pool_obj = {
        "id": pool_id,
        "pool_id": pool_id,
        "project_id": str(uuid.uuid4()),
        "listener_id": listener_id,
        "loadbalancer_id": lb_id,
        "listener": {
            "protocol": "HTTP",
            "id": listener_id,
            "default_pool_id": pool_id,
            "loadbalancer": {"id": lb_id},
        },
    }
    result = status("pool_delete", {"pool": pool_obj}, success=True, parents_on_failure=mode)
    assert result == {
        "loadbalancers": [
            {"operating_status": "ONLINE", "provisioning_status": "ACTIVE", "id": lb_id}
        ],
        "pools": [{"operating_status": "ONLINE", "provisioning_status": "DELETED", "id": pool_id}],
        "listeners": [
            {"operating_status": "ONLINE", "provisioning_status": "ACTIVE", "id": listener_id}
        ],
    }


@pytest.mark.parametrize("mode", MODES)
def test_seed_12m_member_create_reports_every_parent(mode: str) -> None:
    lb_id, pool_id, listener_id, member_id = (str(uuid.uuid4()) for _ in range(4))
    member_obj = {
        "id": member_id,
        "protocol_port": 80,
        "name": "dummy",
        "pool_id": pool_id,
        "project_id": str(uuid.uuid4()),
        "pool": {
            "listener_id": listener_id,
            "id": pool_id,
            "loadbalancer_id": lb_id,
            "listener": {
                "protocol": "HTTP",
                "id": listener_id,
                "default_pool_id": pool_id,
                "loadbalancer": {"id": lb_id},
            },
        },
    }
    result = status("member_create", {"member": member_obj}, success=True, parents_on_failure=mode)
    assert result == {
        "members": [
            {"operating_status": "ONLINE", "provisioning_status": "ACTIVE", "id": member_id}
        ],
        "loadbalancers": [
            {"operating_status": "ONLINE", "provisioning_status": "ACTIVE", "id": lb_id}
        ],
        "pools": [{"operating_status": "ONLINE", "provisioning_status": "ACTIVE", "id": pool_id}],
        "listeners": [
            {"operating_status": "ONLINE", "provisioning_status": "ACTIVE", "id": listener_id}
        ],
    }


def test_seed_mode_reproduces_the_seed_failure_dicts() -> None:
    """facts §3.3: member create failure under the seed's completor."""
    result = status(
        "member_create", P.args("member_create"), success=False, parents_on_failure="error"
    )
    assert normalized(result) == {
        "members": [entry(MEMBER, "ERROR", "ERROR")],
        "loadbalancers": [entry(LB, "ERROR", "ERROR")],
        "listeners": [entry(LISTENER, "ERROR", "ERROR")],
        "pools": [entry(POOL, "ERROR", "ERROR")],
    }


# --------------------------------------------------------------------------- Results table

#: the parents each realistic payload names, by plural key
PARENTS: dict[str, dict[str, list[str]]] = {
    "loadbalancer": {},
    "listener": {"loadbalancers": [LB]},
    "pool": {"loadbalancers": [LB], "listeners": [LISTENER]},
    "member": {"loadbalancers": [LB], "listeners": [LISTENER], "pools": [POOL]},
    "healthmonitor": {"loadbalancers": [LB], "listeners": [LISTENER], "pools": [POOL]},
    "l7policy": {"loadbalancers": [LB], "listeners": [LISTENER]},
    "l7rule": {"loadbalancers": [LB], "listeners": [LISTENER], "l7policies": [POLICY]},
}

#: (action, success) -> the object's own (provisioning, operating)
OWN = {
    ("create", True): ("ACTIVE", "ONLINE"),
    ("update", True): ("ACTIVE", "ONLINE"),
    ("delete", True): ("DELETED", "ONLINE"),
    ("create", False): ("ERROR", "ERROR"),
    ("update", False): ("ERROR", "ERROR"),
    ("delete", False): ("ERROR", "ERROR"),
}


def parent_entry(object_id: str, success: bool, mode: str) -> dict[str, str]:
    if success:
        return entry(object_id, "ACTIVE", "ONLINE")
    if mode == "error":
        return entry(object_id, "ERROR", "ERROR")
    return entry(object_id, "ACTIVE")  # no operating_status: Octavia leaves it unchanged


def results_row(kind: str, action: str, success: bool, mode: str) -> dict[str, Any]:
    expected: dict[str, Any] = {PLURAL[kind]: [entry(OWN_ID[kind], *OWN[(action, success)])]}
    for plural, ids in PARENTS[kind].items():
        expected[plural] = [parent_entry(i, success, mode) for i in ids]
    return expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("success", [True, False], ids=["success", "failure"])
@pytest.mark.parametrize("action", ["create", "update", "delete"])
@pytest.mark.parametrize("kind", KINDS)
def test_results_table(kind: str, action: str, success: bool, mode: str) -> None:
    method = f"{kind}_{action}"
    result = status(method, P.args(method), success=success, parents_on_failure=mode)
    assert result == results_row(kind, action, success, mode)


def test_failure_parents_have_no_operating_status_on_the_wire() -> None:
    request = decode_request("member_create", msgspec.json.encode(P.args("member_create")))
    wire = msgspec.json.decode(msgspec.json.encode(operation_status(request, success=False)))
    assert wire["loadbalancers"] == [{"id": LB, "provisioning_status": "ACTIVE"}]
    assert "healthmonitors" not in wire


def test_update_finds_parents_in_the_old_object() -> None:
    """A sparse new object lacks the nested parents: they come from the old one."""
    old = P.member()
    args = {"old_member": old, "new_member": {"id": MEMBER, "weight": 3}}
    assert status("member_update", args, success=True) == results_row(
        "member", "update", True, "active"
    )
    old_rule = P.l7rule()
    args = {"old_l7rule": old_rule, "new_l7rule": {"id": RULE, "value": "/v2", "policy": {}}}
    assert status("l7rule_update", args, success=False) == results_row(
        "l7rule", "update", False, "active"
    )


def test_object_without_load_balancer_still_gets_its_own_entry() -> None:
    for mode in MODES:
        result = status(
            "member_create",
            {"member": {"id": MEMBER, "pool_id": POOL}},
            success=False,
            parents_on_failure=mode,
        )
        assert result["members"] == [entry(MEMBER, "ERROR", "ERROR")]
        assert "loadbalancers" not in result
        assert len(result["pools"]) == 1
    assert status("listener_delete", {"listener": {"id": LISTENER}}, success=True) == {
        "listeners": [entry(LISTENER, "DELETED", "ONLINE")]
    }


def test_cascade_request_failure_without_step_reports_the_lb() -> None:
    args = {"loadbalancer": P.full_tree(), "cascade": True}
    assert status("loadbalancer_delete", args, success=False) == {
        "loadbalancers": [entry(LB, "ERROR", "ERROR")]
    }


def test_cascade_request_success_reports_the_whole_tree() -> None:
    args = {"loadbalancer": P.full_tree(), "cascade": True}
    result = status("loadbalancer_delete", args, success=True)
    deleted = {k: sorted(e["id"] for e in v) for k, v in result.items()}
    assert deleted == {
        "loadbalancers": [LB],
        "listeners": [LISTENER],
        "pools": [POOL],
        "members": [MEMBER],
        "healthmonitors": [HM],
        "l7policies": [POLICY],
        "l7rules": [RULE],
    }
    assert all(e["provisioning_status"] == "DELETED" for v in result.values() for e in v)


def test_query_has_no_status() -> None:
    request = decode_request("get_supported_flavor_metadata", b"{}")
    with pytest.raises(ValueError):
        operation_status(request, success=True)


def test_parents_on_failure_is_checked() -> None:
    request = decode_request("member_create", msgspec.json.encode(P.args("member_create")))
    with pytest.raises(ValueError):
        operation_status(request, success=False, parents_on_failure="ERROR")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pool_delete


def pool_with_children() -> Pool:
    args = {
        "pool": P.pool()
        | {"healthmonitor": P.hm_dict(), "members": [P.member_dict(MEMBER), P.member_dict(MEMBER2)]}
    }
    request = decode_request("pool_delete", msgspec.json.encode(args))
    assert isinstance(request.obj, Pool)
    return request.obj


@pytest.mark.parametrize("mode", MODES)
def test_pool_delete_success(mode: str) -> None:
    pool = pool_with_children()
    plan = pool_delete_plan(pool)
    result = status_to_builtins(
        pool_delete_status(pool, plan, completed=len(plan), failed=False, parents_on_failure=mode)
    )
    assert result == {
        "loadbalancers": [entry(LB, "ACTIVE", "ONLINE")],
        "listeners": [entry(LISTENER, "ACTIVE", "ONLINE")],
        "pools": [entry(POOL, "DELETED", "ONLINE")],
        "members": [entry(MEMBER, "DELETED", "ONLINE"), entry(MEMBER2, "DELETED", "ONLINE")],
        "healthmonitors": [entry(HM, "DELETED", "ONLINE")],
    }
    request = Request(method="pool_delete", kind="pool", action="delete", obj=pool)
    assert (
        status_to_builtins(operation_status(request, success=True, parents_on_failure=mode))
        == result
    )


POOL_FAILURES = {
    # failing step -> expected children entries (the pool itself is ERROR/ERROR in every case)
    0: {"healthmonitors": [entry(HM, "ERROR", "ERROR")]},
    1: {
        "healthmonitors": [entry(HM, "DELETED", "ONLINE")],
        "members": [entry(MEMBER, "ERROR", "ERROR")],
    },
    2: {
        "healthmonitors": [entry(HM, "DELETED", "ONLINE")],
        "members": [entry(MEMBER, "DELETED", "ONLINE"), entry(MEMBER2, "ERROR", "ERROR")],
    },
    3: {
        "healthmonitors": [entry(HM, "DELETED", "ONLINE")],
        "members": [entry(MEMBER, "DELETED", "ONLINE"), entry(MEMBER2, "DELETED", "ONLINE")],
    },
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("failing", sorted(POOL_FAILURES))
def test_pool_delete_with_a_failing_step(failing: int, mode: str) -> None:
    pool = pool_with_children()
    plan = pool_delete_plan(pool)
    assert [s.id for s in plan] == [HM, MEMBER, MEMBER2, POOL]
    result = status_to_builtins(
        pool_delete_status(pool, plan, completed=failing, failed=True, parents_on_failure=mode)
    )
    assert result == {
        "pools": [entry(POOL, "ERROR", "ERROR")],
        "loadbalancers": [parent_entry(LB, False, mode)],
        "listeners": [parent_entry(LISTENER, False, mode)],
        **POOL_FAILURES[failing],
    }


def test_pool_delete_progress_is_checked() -> None:
    pool = pool_with_children()
    plan = pool_delete_plan(pool)
    for completed, failed in [(len(plan), True), (1, False), (-1, True), (len(plan) + 1, False)]:
        with pytest.raises(ValueError):
            pool_delete_status(pool, plan, completed=completed, failed=failed)


# --------------------------------------------------------------------------- cascade


def test_cascade_success_lists_every_key() -> None:
    lb = decode_request(
        "loadbalancer_delete",
        msgspec.json.encode({"loadbalancer": P.loadbalancer(), "cascade": True}),
    ).obj
    assert lb is not None
    plan = cascade_plan(lb)  # type: ignore[arg-type]
    result = status_to_builtins(cascade_status(lb, plan, completed=len(plan), failed=False))  # type: ignore[arg-type]
    assert result == {
        "loadbalancers": [entry(LB, "DELETED", "ONLINE")],
        **{plural: [] for plural in PLURAL.values() if plural != "loadbalancers"},
    }


def test_cascade_failure_at_the_load_balancer_itself() -> None:
    request = decode_request(
        "loadbalancer_delete_cascade", msgspec.json.encode(P.args("loadbalancer_delete_cascade"))
    )
    lb = request.obj
    plan = cascade_plan(lb)  # type: ignore[arg-type]
    result = status_to_builtins(
        cascade_status(lb, plan, completed=len(plan) - 1, failed=True)  # type: ignore[arg-type]
    )
    assert result["loadbalancers"] == [entry(LB, "ERROR", "ERROR")]
    assert result["members"] == [entry(MEMBER, "DELETED", "ONLINE")]
    assert sum(len(v) for v in result.values()) == len(plan)


# --------------------------------------------------------------------------- small pieces


def test_object_error_status() -> None:
    for kind in KINDS:
        update = object_error_status(kind, "x-1")
        assert status_to_builtins(update) == {PLURAL[kind]: [entry("x-1", "ERROR", "ERROR")]}
    with pytest.raises(ValueError):
        object_error_status("amphora", "x-1")


def test_status_to_builtins_leaves_unset_out() -> None:
    update = StatusUpdate(members=[StatusEntry(id="m", provisioning_status="ACTIVE")], pools=[])
    assert status_to_builtins(update) == {
        "members": [{"id": "m", "provisioning_status": "ACTIVE"}],
        "pools": [],
    }


def test_parents_of_realistic_payloads() -> None:
    def parents(kind: str) -> Parents:
        request = decode_request(f"{kind}_create", msgspec.json.encode(P.args(f"{kind}_create")))
        assert request.obj is not None
        return parents_of(kind, request.obj)

    assert parents("loadbalancer") == Parents(
        loadbalancer_id=None, listener_ids=(), pool_id=None, l7policy_id=None
    )
    assert parents("listener") == Parents(
        loadbalancer_id=LB, listener_ids=(), pool_id=None, l7policy_id=None
    )
    assert parents("pool") == Parents(
        loadbalancer_id=LB, listener_ids=(LISTENER,), pool_id=None, l7policy_id=None
    )
    for kind in ("member", "healthmonitor"):
        assert parents(kind) == Parents(
            loadbalancer_id=LB, listener_ids=(LISTENER,), pool_id=POOL, l7policy_id=None
        )
    assert parents("l7policy") == Parents(
        loadbalancer_id=LB, listener_ids=(LISTENER,), pool_id=None, l7policy_id=None
    )
    assert parents("l7rule") == Parents(
        loadbalancer_id=LB, listener_ids=(LISTENER,), pool_id=None, l7policy_id=POLICY
    )


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        # each later source is used only when the earlier ones are missing
        ("listener", {"loadbalancer": {"id": "LB2"}}, "LB2"),
        ("listener", {"loadbalancer_id": "LB1", "loadbalancer": {"id": "LB2"}}, "LB1"),
        ("pool", {"listener": {"loadbalancer_id": "LB3"}}, "LB3"),
        ("pool", {"loadbalancer": {"id": "LB2"}, "listener": {"loadbalancer_id": "LB3"}}, "LB2"),
        ("member", {"pool": {"loadbalancer": {"id": "LB4"}}}, "LB4"),
        ("member", {"pool": {"loadbalancer_id": "LB3", "loadbalancer": {"id": "LB4"}}}, "LB3"),
        ("member", {"loadbalancer": {"id": "LB2"}, "pool": {"loadbalancer_id": "LB3"}}, "LB2"),
        ("healthmonitor", {"loadbalancer_id": "LB1", "pool": {"loadbalancer_id": "LB3"}}, "LB1"),
        ("l7policy", {"listener": {"loadbalancer": {"id": "LB2"}}}, "LB2"),
        (
            "l7policy",
            {"listener": {"loadbalancer_id": "LB1", "loadbalancer": {"id": "LB2"}}},
            "LB1",
        ),
        ("l7rule", {"policy": {"listener": {"loadbalancer_id": "LB1"}}}, "LB1"),
        ("l7rule", {"policy": {"listener": {"loadbalancer": {"id": "LB2"}}}}, None),
        ("l7policy", {"loadbalancer_id": "LBX"}, None),
    ],
)
def test_load_balancer_sources_in_order_of_preference(
    kind: str, payload: dict[str, Any], expected: str | None
) -> None:
    request = decode_request(f"{kind}_create", msgspec.json.encode({kind: {"id": "own"} | payload}))
    assert request.obj is not None
    assert parents_of(kind, request.obj).loadbalancer_id == expected


#: where each parent id of each kind is found, in order of preference (status-semantics.md,
#: "Parents"): a path of keys into the payload, the last one holding the id
PARENT_SOURCES: list[tuple[str, str, list[tuple[str, ...]]]] = [
    ("loadbalancer_id", "listener", [("loadbalancer_id",), ("loadbalancer", "id")]),
    (
        "loadbalancer_id",
        "pool",
        [("loadbalancer_id",), ("loadbalancer", "id"), ("listener", "loadbalancer_id")],
    ),
    *(
        (
            "loadbalancer_id",
            kind,
            [
                ("loadbalancer_id",),
                ("loadbalancer", "id"),
                ("pool", "loadbalancer_id"),
                ("pool", "loadbalancer", "id"),
            ],
        )
        for kind in ("member", "healthmonitor")
    ),
    (
        "loadbalancer_id",
        "l7policy",
        [("listener", "loadbalancer_id"), ("listener", "loadbalancer", "id")],
    ),
    ("loadbalancer_id", "l7rule", [("policy", "listener", "loadbalancer_id")]),
    ("pool_id", "member", [("pool_id",), ("pool", "id")]),
    ("pool_id", "healthmonitor", [("pool_id",), ("pool", "id")]),
    ("listener_ids", "l7policy", [("listener_id",), ("listener", "id")]),
    ("listener_ids", "l7rule", [("policy", "listener_id"), ("policy", "listener", "id")]),
    ("l7policy_id", "l7rule", [("l7policy_id",), ("policy", "id")]),
]


def _payload_with(sources: list[tuple[str, ...]], values: list[str]) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for path, value in zip(sources, values, strict=True):
        node = payload
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return payload


def _found(kind: str, payload: dict[str, Any], field: str) -> str | None:
    request = decode_request(f"{kind}_create", msgspec.json.encode({kind: {"id": "own"} | payload}))
    assert request.obj is not None
    found = getattr(parents_of(kind, request.obj), field)
    if field == "listener_ids":
        assert len(found) <= 1
        return found[0] if found else None
    return found


@pytest.mark.parametrize(
    ("field", "kind", "sources"),
    PARENT_SOURCES,
    ids=[f"{kind}-{field}" for field, kind, _ in PARENT_SOURCES],
)
def test_every_parent_source_in_order_of_preference(
    field: str, kind: str, sources: list[tuple[str, ...]]
) -> None:
    """Each source alone is found, and with every later source present too, it still wins."""
    for first in range(len(sources)):
        alone = _payload_with([sources[first]], ["only"])
        assert _found(kind, alone, field) == "only", sources[first]
        later = sources[first:]
        values = [f"from-{'.'.join(path)}" for path in later]
        assert _found(kind, _payload_with(later, values), field) == values[0], later
    assert _found(kind, {}, field) is None


def test_pool_listeners_are_collected_from_every_source_once() -> None:
    pool = msgspec.convert(
        {
            "id": "P",
            "listener_id": "L1",
            "listener": {"id": "L2"},
            "listeners": [{"id": "L1"}, {"listener_id": "L3"}, {"id": "L2"}],
        },
        Pool,
    )
    assert parents_of("pool", pool).listener_ids == ("L1", "L2", "L3")
    member = msgspec.convert({"id": "M", "pool": msgspec.to_builtins(pool)}, Member)
    assert parents_of("member", member).listener_ids == ("L1", "L2", "L3")


def test_parents_of_checks_the_kind() -> None:
    with pytest.raises(TypeError):
        parents_of("member", Listener(id="L"))
    with pytest.raises(ValueError):
        parents_of("amphora", Listener(id="L"))


# --------------------------------------------------------------------------- properties

IDS = st.sampled_from(["u1", "u2", "u3", "u4"])


def refs(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


LB_REF = refs(id=IDS, loadbalancer_id=IDS)
LISTENER_REF = refs(
    id=IDS, listener_id=IDS, loadbalancer_id=IDS, loadbalancer=LB_REF, default_pool_id=IDS
)
POOL_REF = refs(
    id=IDS,
    pool_id=IDS,
    loadbalancer_id=IDS,
    listener_id=IDS,
    listener=LISTENER_REF,
    listeners=st.lists(LISTENER_REF, max_size=3),
    loadbalancer=LB_REF,
)
POLICY_REF = refs(id=IDS, l7policy_id=IDS, listener_id=IDS, listener=LISTENER_REF)

PARENT_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "loadbalancer": {},
    "listener": {"loadbalancer_id": IDS, "loadbalancer": LB_REF, "default_pool_id": IDS},
    "pool": {
        "loadbalancer_id": IDS,
        "loadbalancer": LB_REF,
        "listener_id": IDS,
        "listener": LISTENER_REF,
        "listeners": st.lists(LISTENER_REF, max_size=3),
    },
    "member": {"pool_id": IDS, "pool": POOL_REF, "loadbalancer_id": IDS, "loadbalancer": LB_REF},
    "healthmonitor": {
        "pool_id": IDS,
        "pool": POOL_REF,
        "loadbalancer_id": IDS,
        "loadbalancer": LB_REF,
    },
    "l7policy": {"listener_id": IDS, "listener": LISTENER_REF},
    "l7rule": {"l7policy_id": IDS, "policy": POLICY_REF},
}


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """A create / update / delete of any kind, its parents named or not, ids colliding often."""
    kind = draw(st.sampled_from(KINDS))
    action = draw(st.sampled_from(["create", "update", "delete"]))
    own = draw(IDS)

    def obj() -> dict[str, Any]:
        # the driver always sends <kind>_id == id; a parent id may equal the own id
        return {"id": own, f"{kind}_id": own} | draw(refs(**PARENT_FIELDS[kind]))

    if action == "update":
        args = {f"old_{kind}": obj(), f"new_{kind}": obj()}
    else:
        args = {kind: obj()}
    return decode_request(f"{kind}_{action}", msgspec.json.encode(args))


@given(request=requests(), success=st.booleans(), mode=st.sampled_from(MODES))
def test_property_operation_status(request: Request, success: bool, mode: str) -> None:
    assert request.kind is not None and request.obj is not None
    result = status_to_builtins(
        operation_status(request, success=success, parents_on_failure=mode)  # type: ignore[arg-type]
    )
    own_plural = PLURAL[request.kind]
    own_entries = [e for e in result[own_plural] if e["id"] == request.obj.id]
    # the object's own entry is there once and never overwritten by a parent entry
    assert own_entries == [entry(request.obj.id, *OWN[(request.action, success)])]
    # no id listed twice
    for entries in result.values():
        ids = [e["id"] for e in entries]
        assert len(ids) == len(set(ids))
    # DELETED only for the object of a successful delete
    deleted = [
        (plural, e["id"])
        for plural, entries in result.items()
        for e in entries
        if e["provisioning_status"] == "DELETED"
    ]
    if success and request.action == "delete":
        assert (own_plural, request.obj.id) in deleted
    else:
        assert deleted == []
    # every other entry is a parent, found by parents_of, with the parents' status
    parents = parents_of(request.kind, request.obj, request.old)
    expected_parents = (
        {("loadbalancers", parents.loadbalancer_id)} if parents.loadbalancer_id else set()
    )
    expected_parents |= {("listeners", i) for i in parents.listener_ids}
    if parents.pool_id:
        expected_parents.add(("pools", parents.pool_id))
    if parents.l7policy_id:
        expected_parents.add(("l7policies", parents.l7policy_id))
    others = {
        (plural, e["id"]): e
        for plural, entries in result.items()
        for e in entries
        if (plural, e["id"]) != (own_plural, request.obj.id)
    }
    assert set(others) == expected_parents
    for (_, parent_id), e in others.items():
        assert e == parent_entry(parent_id, success, mode)


def test_an_object_without_id_has_no_status() -> None:
    for obj in (None, Member(), Member(id="")):
        request = Request(method="member_create", kind="member", action="create", obj=obj)
        with pytest.raises(ValueError):
            operation_status(request, success=True)
