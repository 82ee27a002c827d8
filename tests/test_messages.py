"""decode_request: every driver method with payloads shaped like the real driver's.

The payload builders (:class:`Payloads`) follow NSX-master ``obj_to_dict`` as recorded in
``octavia-and-oslo-facts.md`` §2.5 and ``baseline/octavia_driver_sim.py``: both ``id`` and
``<kind>_id``, ``tenant_id`` next to ``project_id``, nested parent dicts, and fields the model
does not declare (``l7_policies``, ``vnic_type``, ``insert_headers``, ...). The other test
modules of this package import them.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbactors.messages import METHODS, InvalidOperation, Request, decode_request
from lbactors.model import (
    CLASS_OF_KIND,
    Certificate,
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    Pool,
)

LB = "5e3f1c2a-1b2c-4d3e-8f40-c2d3e4f5a6b7"
LISTENER = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f22336677"
POOL = "b2c3d4e5-f6a7-4b8c-9d0e-1f2a33447788"
MEMBER = "c3d4e5f6-a7b8-4c9d-8e1f-2a3b44558899"
MEMBER2 = "c3d4e5f6-a7b8-4c9d-8e1f-2a3b4455889a"
HM = "d4e5f6a7-b8c9-4d0e-9f2a-3b4c556699aa"
POLICY = "e5f6a7b8-c9d0-4e1f-8a3b-4c5d6677aabb"
RULE = "f6a7b8c9-d0e1-4f2a-9b4c-5d6e7788bbcc"
PROJECT = "9c6f0e1d2c3b4a5968778695a4b33a21"


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


class Payloads:
    """The kwargs the driver casts for one load balancer with one of everything."""

    def lb_mini(self) -> dict[str, Any]:
        return {
            "id": LB,
            "name": "lb-1",
            "vip_address": "10.0.0.10",
            "vip_port_id": "0a1b2c3d-0000-4000-8000-00000000ffff",
            "vip_network_id": "11111111-2222-4333-8444-555566667777",
            "vip_subnet_id": "22222222-3333-4444-8555-666677778888",
            "listeners": [self.listener_flat()],
        }

    def listener_flat(self) -> dict[str, Any]:
        """``listener.to_dict(recurse=False)``: nested objects null, unsupported keys kept."""
        return {
            "listener_id": LISTENER,
            "loadbalancer_id": LB,
            "name": "http-80",
            "protocol": "HTTP",
            "protocol_port": 80,
            "connection_limit": -1,
            "default_pool_id": POOL,
            "default_pool": None,
            "l7policies": None,
            "insert_headers": {},
            "timeout_client_data": 50000,
            "timeout_member_connect": 5000,
            "timeout_member_data": 50000,
            "timeout_tcp_inspect": 0,
            "sni_container_refs": None,
            "allowed_cidrs": None,
            "project_id": PROJECT,
        }

    def loadbalancer(self) -> dict[str, Any]:
        return {
            "id": LB,
            "loadbalancer_id": LB,
            "name": "lb-1",
            "description": "",
            "admin_state_up": True,
            "flavor": None,
            "availability_zone": None,
            "project_id": PROJECT,
            "tenant_id": PROJECT,
            "listeners": [],
            "pools": [],
            "vip_address": "10.0.0.10",
            "vip_network_id": "11111111-2222-4333-8444-555566667777",
            "vip_port_id": "0a1b2c3d-0000-4000-8000-00000000ffff",
            "vip_subnet_id": "22222222-3333-4444-8555-666677778888",
            "vip_qos_policy_id": None,
            "vip_sg_ids": None,
            "additional_vips": None,
        }

    def listener(self) -> dict[str, Any]:
        return {
            "id": LISTENER,
            "listener_id": LISTENER,
            "loadbalancer_id": LB,
            "name": "http-80",
            "description": "",
            "admin_state_up": True,
            "protocol": "HTTP",
            "protocol_port": 80,
            "connection_limit": -1,
            "default_pool_id": None,
            "default_pool": None,
            "l7policies": [],
            "l7_policies": [],
            "default_tls_container_ref": None,
            "default_tls_container_data": None,
            "sni_container_data": [],
            "client_authentication": "NONE",
            "allowed_cidrs": None,
            "tls_versions": None,
            "hsts_max_age": None,
            "project_id": PROJECT,
            "tenant_id": PROJECT,
            "loadbalancer": self.lb_mini(),
        }

    def pool(self) -> dict[str, Any]:
        listener = self.listener_flat() | {"id": LISTENER, "l7_policies": None}
        listener["loadbalancer"] = self.lb_mini()
        return {
            "id": POOL,
            "pool_id": POOL,
            "loadbalancer_id": LB,
            "listener_id": LISTENER,
            "name": "pool-1",
            "description": "",
            "admin_state_up": True,
            "protocol": "HTTP",
            "lb_algorithm": "ROUND_ROBIN",
            "session_persistence": None,
            "healthmonitor": None,
            "members": [],
            "tls_enabled": False,
            "tls_container_ref": None,
            "ca_tls_container_ref": None,
            "crl_container_ref": None,
            "alpn_protocols": None,
            "project_id": PROJECT,
            "tenant_id": PROJECT,
            "listener": listener,
            "listeners": [copy.deepcopy(listener)],
            "loadbalancer": self.lb_mini(),
        }

    def member_dict(self, member_id: str = MEMBER, port: int = 8080) -> dict[str, Any]:
        return {
            "id": member_id,
            "member_id": member_id,
            "pool_id": POOL,
            "name": "web-1",
            "address": "10.0.0.21",
            "protocol_port": port,
            "subnet_id": "33333333-4444-4555-8666-77778888aaaa",
            "weight": 1,
            "backup": False,
            "admin_state_up": True,
            "project_id": PROJECT,
        }

    def hm_dict(self) -> dict[str, Any]:
        return {
            "id": HM,
            "healthmonitor_id": HM,
            "pool_id": POOL,
            "name": "hm-1",
            "type": "HTTP",
            "delay": 5,
            "timeout": 4,
            "max_retries": 3,
            "max_retries_down": 3,
            "http_method": "GET",
            "url_path": "/healthz",
            "expected_codes": "200",
            "http_version": 1.0,
            "domain_name": None,
            "admin_state_up": True,
            "project_id": PROJECT,
        }

    def pool_db(self, *, members: int = 1, hm: bool = True) -> dict[str, Any]:
        """``_get_pool_dict``: the full DB pool nested in member / HM payloads."""
        pool = self.pool()
        ids = [MEMBER, MEMBER2][:members]
        pool["members"] = [self.member_dict(m) for m in ids]
        pool["healthmonitor"] = self.hm_dict() if hm else None
        return pool

    def member(self) -> dict[str, Any]:
        member = self.member_dict() | {"tenant_id": PROJECT, "vnic_type": "normal"}
        member["pool"] = self.pool_db()
        member["loadbalancer"] = member["pool"]["loadbalancer"]
        return member

    def healthmonitor(self) -> dict[str, Any]:
        hm = self.hm_dict() | {"tenant_id": PROJECT}
        del hm["max_retries_down"]
        hm["pool"] = self.pool_db()
        return hm

    def listener_recursive(self) -> dict[str, Any]:
        listener = self.listener() | {"default_pool_id": POOL}
        del listener["loadbalancer"]
        listener["l7policies"] = [self.policy_flat()]
        return listener

    def rule_dict(self) -> dict[str, Any]:
        return {
            "id": RULE,
            "l7rule_id": RULE,
            "l7policy_id": POLICY,
            "name": "",
            "type": "PATH",
            "compare_type": "STARTS_WITH",
            "key": None,
            "value": "/api",
            "invert": False,
            "admin_state_up": True,
            "project_id": PROJECT,
        }

    def policy_flat(self) -> dict[str, Any]:
        return {
            "id": POLICY,
            "l7policy_id": POLICY,
            "listener_id": LISTENER,
            "name": "pol-1",
            "description": "",
            "action": "REDIRECT_TO_POOL",
            "position": 1,
            "redirect_pool_id": POOL,
            "redirect_url": None,
            "redirect_prefix": None,
            "redirect_http_code": None,
            "admin_state_up": True,
            "rules": [self.rule_dict()],
            "project_id": PROJECT,
        }

    def l7policy(self) -> dict[str, Any]:
        policy = self.policy_flat() | {"tenant_id": PROJECT, "rules": []}
        policy["listener"] = self.listener_recursive()
        return policy

    def l7rule(self) -> dict[str, Any]:
        rule = self.rule_dict() | {"tenant_id": PROJECT}
        policy = self.policy_flat()
        policy["listener"] = self.listener_recursive()
        rule["policy"] = policy
        return rule

    def full_tree(self) -> dict[str, Any]:
        """The ``loadbalancer`` of ``loadbalancer_delete(cascade=True)`` (§2.5)."""
        lb = self.loadbalancer()
        listener = self.listener_recursive() | {"id": LISTENER}
        # the DB default_pool carries no 'id' keys, only <kind>_id
        listener["default_pool"] = {
            "pool_id": POOL,
            "members": [{"member_id": MEMBER}],
            "healthmonitor": {"healthmonitor_id": HM},
        }
        lb["listeners"] = [listener]
        pool = self.pool_db() | {"tenant_id": PROJECT}
        for key in ("listener", "listeners", "loadbalancer"):
            del pool[key]
        pool["healthmonitor"]["pool"] = self.pool_db()
        pool["members"] = [self.member_dict()]
        lb["pools"] = [pool]
        return lb

    def object(self, kind: str) -> dict[str, Any]:
        result: dict[str, Any] = getattr(self, kind)()
        return result

    def args(self, method: str) -> dict[str, Any]:
        """Realistic ``args`` of every method the driver sends."""
        kind, _, action = method.rpartition("_")
        if method == "loadbalancer_delete_cascade":
            return {"loadbalancer": self.full_tree()}
        if method == "get_supported_flavor_metadata":
            return {}
        if method == "get_supported_availability_zone_metadata":
            return {}
        if method == "validate_flavor":
            return {"flavor_metadata": {"service_type": "small"}}
        if method == "validate_availability_zone":
            return {"availability_zone_metadata": {"edge_cluster": "az-1"}}
        if action == "update":
            old = self.object(kind)
            new = copy.deepcopy(old) | {"name": "renamed"}
            args = {f"old_{kind}": old, f"new_{kind}": new}
        elif method == "loadbalancer_delete":
            args = {"loadbalancer": self.loadbalancer(), "cascade": False}
        else:
            args = {kind: self.object(kind)}
        if kind == "listener" and action != "delete":
            args["cert"] = None
        return args


P = Payloads()
CRUD_KINDS = ["loadbalancer", "listener", "pool", "member", "healthmonitor", "l7policy", "l7rule"]
CLASSES = {
    "loadbalancer": LoadBalancer,
    "listener": Listener,
    "pool": Pool,
    "member": Member,
    "healthmonitor": HealthMonitor,
    "l7policy": L7Policy,
    "l7rule": L7Rule,
}
OWN_ID = {
    "loadbalancer": LB,
    "listener": LISTENER,
    "pool": POOL,
    "member": MEMBER,
    "healthmonitor": HM,
    "l7policy": POLICY,
    "l7rule": RULE,
}


def decode(method: str, args: dict[str, Any]) -> Request:
    return decode_request(method, _json(args))


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("kind", CRUD_KINDS)
@pytest.mark.parametrize("action", ["create", "update", "delete"])
def test_crud_methods_decode_realistic_payloads(kind: str, action: str) -> None:
    method = f"{kind}_{action}"
    request = decode(method, P.args(method))
    assert request.method == method
    assert request.kind == kind
    assert request.action == action
    assert isinstance(request.obj, CLASSES[kind])
    assert request.obj.id == OWN_ID[kind]
    if action == "update":
        assert isinstance(request.old, CLASSES[kind])
        assert request.old.name != "renamed"
        assert request.obj.name == "renamed"
    else:
        assert request.old is None
    assert request.cascade is False


def test_the_method_table_is_complete() -> None:
    expected = {f"{k}_{a}" for k in CRUD_KINDS for a in ("create", "update", "delete")}
    expected |= {
        "loadbalancer_delete_cascade",
        "get_supported_flavor_metadata",
        "validate_flavor",
        "get_supported_availability_zone_metadata",
        "validate_availability_zone",
    }
    assert set(METHODS) == expected


def test_nested_parents_are_decoded() -> None:
    member = decode("member_create", P.args("member_create")).obj
    assert isinstance(member, Member)
    assert member.protocol_port == 8080
    assert member.pool is not None and member.pool.id == POOL
    assert member.pool.listener is not None and member.pool.listener.id == LISTENER
    assert member.pool.loadbalancer is not None and member.pool.loadbalancer.id == LB
    assert member.pool.healthmonitor is not None and member.pool.healthmonitor.id == HM

    rule = decode("l7rule_create", P.args("l7rule_create")).obj
    assert isinstance(rule, L7Rule)
    assert rule.policy is not None and rule.policy.listener is not None
    assert rule.policy.listener.loadbalancer_id == LB
    assert rule.policy.rules is not None and rule.policy.rules[0].id == RULE

    hm = decode("healthmonitor_create", P.args("healthmonitor_create")).obj
    assert isinstance(hm, HealthMonitor)
    assert hm.http_version == 1.0
    assert hm.pool is not None and hm.pool.loadbalancer_id == LB


def test_nested_ids_fall_back_to_kind_id() -> None:
    """A cascade's default_pool carries only pool_id / member_id / healthmonitor_id."""
    lb = decode("loadbalancer_delete_cascade", P.args("loadbalancer_delete_cascade")).obj
    assert isinstance(lb, LoadBalancer)
    assert lb.listeners is not None
    default_pool = lb.listeners[0].default_pool
    assert default_pool is not None
    assert default_pool.id == POOL
    assert default_pool.members is not None and default_pool.members[0].id == MEMBER
    assert default_pool.healthmonitor is not None and default_pool.healthmonitor.id == HM


def test_top_level_id_may_be_only_kind_id() -> None:
    member = P.member_dict()
    del member["id"]
    request = decode("member_delete", {"member": member})
    assert request.obj is not None and request.obj.id == MEMBER


def test_listener_cert_is_decoded() -> None:
    cert = {
        "ref": "https://barbican/containers/1",
        "certificate": "PEM",
        "private_key": "KEY",
        "passphrase": None,
    }
    args = P.args("listener_create") | {"cert": cert}
    request = decode("listener_create", args)
    assert request.cert == Certificate(
        ref="https://barbican/containers/1", certificate="PEM", private_key="KEY"
    )
    assert decode("listener_create", P.args("listener_create")).cert is None
    update = decode("listener_update", P.args("listener_update") | {"cert": cert})
    assert update.cert is not None and update.cert.private_key == "KEY"


def test_cascade_flag() -> None:
    plain = decode("loadbalancer_delete", P.args("loadbalancer_delete"))
    assert plain.cascade is False
    no_flag = decode("loadbalancer_delete", {"loadbalancer": P.loadbalancer()})
    assert no_flag.cascade is False
    cascade = decode("loadbalancer_delete", {"loadbalancer": P.full_tree(), "cascade": True})
    assert cascade.cascade is True and cascade.action == "delete"
    assert isinstance(cascade.obj, LoadBalancer) and cascade.obj.pools
    replay = decode("loadbalancer_delete_cascade", P.args("loadbalancer_delete_cascade"))
    assert replay.cascade is True and replay.kind == "loadbalancer"


@pytest.mark.parametrize(
    ("method", "metadata"),
    [
        ("get_supported_flavor_metadata", None),
        ("get_supported_availability_zone_metadata", None),
        ("validate_flavor", {"service_type": "small"}),
        ("validate_availability_zone", {"edge_cluster": "az-1"}),
    ],
)
def test_query_methods(method: str, metadata: dict[str, str] | None) -> None:
    request = decode(method, P.args(method))
    assert request.kind is None
    assert request.action == "query"
    assert request.obj is None
    assert request.metadata == metadata


# --------------------------------------------------------------------------- sparse update


def test_sparse_update_takes_missing_fields_from_old() -> None:
    old = P.member()
    request = decode("member_update", {"old_member": old, "new_member": {"weight": 5}})
    member = request.obj
    assert isinstance(member, Member)
    assert member.weight == 5
    assert member.id == MEMBER
    assert member.address == "10.0.0.21"
    assert member.protocol_port == 8080
    assert member.pool is not None and member.pool.loadbalancer_id == LB
    assert isinstance(request.old, Member) and request.old.weight == 1


def test_sparse_update_new_nested_object_replaces_old() -> None:
    old = P.pool()
    new_hm = {"id": HM, "healthmonitor_id": HM, "delay": 7}
    request = decode("pool_update", {"old_pool": old, "new_pool": {"healthmonitor": new_hm}})
    pool = request.obj
    assert isinstance(pool, Pool)
    assert pool.healthmonitor is not None and pool.healthmonitor.delay == 7
    assert pool.lb_algorithm == "ROUND_ROBIN"


def test_full_update_is_taken_as_is() -> None:
    args = P.args("listener_update")
    args["new_listener"]["connection_limit"] = 1000
    listener = decode("listener_update", args).obj
    assert isinstance(listener, Listener)
    assert listener.connection_limit == 1000 and listener.name == "renamed"


def test_update_clearing_a_field_clears_it() -> None:
    """The driver's new object is deepcopy(old) + changes: an explicit null is a change."""
    old = P.listener() | {"default_pool_id": POOL}
    new = copy.deepcopy(old) | {"default_pool_id": None}
    listener = decode("listener_update", {"old_listener": old, "new_listener": new}).obj
    assert isinstance(listener, Listener)
    assert listener.default_pool_id is None
    sparse = decode(
        "listener_update", {"old_listener": old, "new_listener": {"default_pool_id": None}}
    )
    assert isinstance(sparse.obj, Listener) and sparse.obj.default_pool_id is None
    assert sparse.obj.id == LISTENER
    null_id = decode("listener_update", {"old_listener": old, "new_listener": {"id": None}})
    assert null_id.obj is not None and null_id.obj.id == LISTENER


def _merged_the_two_pass_way(kind: str, old: dict[str, Any], new: dict[str, Any]) -> Any:
    """The reference: the new object decoded whole (``<kind>_id`` fallback included), then
    every field it holds that is not null, or that its JSON sends at all (but the id), over
    the old object."""
    cls = CLASS_OF_KIND[kind]
    old_obj = msgspec.convert(old, cls)
    new_obj = msgspec.convert(new, cls)
    changes = {
        f: getattr(new_obj, f)
        for f in new_obj.__struct_fields__
        if getattr(new_obj, f) is not None or (f in new and f != "id")
    }
    return msgspec.structs.replace(old_obj, **changes)


_SPARSE_VALUES = {
    "id": st.sampled_from([None, LISTENER, MEMBER]),
    "name": st.sampled_from([None, "", "renamed"]),
    "admin_state_up": st.sampled_from([None, True, False]),
    "default_pool_id": st.sampled_from([None, POOL]),
    "connection_limit": st.sampled_from([None, -1, 5]),
    "loadbalancer_id": st.sampled_from([None, LB]),
}


@given(
    st.fixed_dictionaries(
        {},
        optional={
            **_SPARSE_VALUES,
            "listener_id": st.sampled_from([None, LISTENER, POOL]),
            "loadbalancer": st.sampled_from([None, {"id": LB, "vip_address": "10.9.9.9"}]),
        },
    )
)
def test_sparse_update_in_one_decode_merges_as_the_two_pass_reference(
    new: dict[str, Any],
) -> None:
    """A key left out keeps the old value, a key sent as null clears it (not the id), the id
    falls back to ``listener_id``: the same object as decoding the new object whole and then
    reading which keys it sent."""
    old = P.listener() | {"default_pool_id": POOL, "connection_limit": 7}
    request = decode("listener_update", {"old_listener": old, "new_listener": new})
    assert request.obj == _merged_the_two_pass_way("listener", old, new)


# --------------------------------------------------------------------------- errors


def test_unknown_method() -> None:
    with pytest.raises(InvalidOperation) as info:
        decode_request("member_explode", b"{}")
    assert info.value.unknown_method is True
    assert info.value.field == ""
    assert info.value.method == "member_explode"
    assert "unknown method" in str(info.value)


@pytest.mark.parametrize(
    ("method", "args", "field"),
    [
        (
            "member_create",
            {"member": P.member_dict() | {"protocol_port": "80"}},
            "member.protocol_port",
        ),
        (
            "member_update",
            {"old_member": P.member_dict(), "new_member": {"weight": "heavy"}},
            "new_member.weight",
        ),
        (
            "loadbalancer_create",
            {"loadbalancer": P.loadbalancer() | {"listeners": [{"protocol_port": "eighty"}]}},
            "loadbalancer.listeners[0].protocol_port",
        ),
        ("pool_create", {"pool": P.pool() | {"members": {"not": "a list"}}}, "pool.members"),
        ("loadbalancer_delete", {"loadbalancer": P.loadbalancer(), "cascade": "yes"}, "cascade"),
        ("validate_flavor", {"flavor_metadata": ["a"]}, "flavor_metadata"),
    ],
)
def test_wrong_type_names_the_field_path(method: str, args: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOperation) as info:
        decode(method, args)
    assert info.value.field == field
    assert info.value.method == method
    assert field in str(info.value)
    assert info.value.unknown_method is False


def test_wrong_type_still_names_the_object_when_it_can() -> None:
    args = {"member": P.member_dict() | {"protocol_port": "80"}}
    with pytest.raises(InvalidOperation) as info:
        decode("member_create", args)
    assert (info.value.object_kind, info.value.object_id) == ("member", MEMBER)
    only_kind_id = P.member_dict() | {"weight": "x"}
    del only_kind_id["id"]
    with pytest.raises(InvalidOperation) as info:
        decode("member_create", {"member": only_kind_id})
    assert (info.value.object_kind, info.value.object_id) == ("member", MEMBER)


@pytest.mark.parametrize(
    ("method", "args", "field"),
    [
        ("member_create", {"member": {"address": "10.0.0.1"}}, "member.id"),
        ("l7rule_delete", {"l7rule": {"id": "", "l7rule_id": None}}, "l7rule.id"),
        ("pool_update", {"old_pool": {"name": "a"}, "new_pool": {"name": "b"}}, "new_pool.id"),
    ],
)
def test_missing_object_id(method: str, args: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOperation) as info:
        decode(method, args)
    assert info.value.field == field
    assert info.value.object_id is None
    assert info.value.object_kind == method.split("_")[0]


@pytest.mark.parametrize(
    ("method", "args", "field"),
    [
        ("member_create", {}, "member"),
        ("member_update", {"old_member": {"id": MEMBER}}, "new_member"),
        ("validate_availability_zone", {}, "availability_zone_metadata"),
    ],
)
def test_missing_kwarg_is_named(method: str, args: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOperation) as info:
        decode(method, args)
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"member": ', b"not json", b'{"member": {}}}'])
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(InvalidOperation) as info:
        decode_request("member_create", raw)
    assert info.value.field == ""
    assert "malformed JSON" in str(info.value)


@pytest.mark.parametrize("raw", [b"[]", b"null", b"42", b'"member"'])
def test_arguments_must_be_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidOperation) as info:
        decode_request("member_create", raw)
    assert "object" in str(info.value)


def test_unknown_fields_are_ignored() -> None:
    member = P.member() | {
        "vnic_type": "direct",
        "future_field": {"deep": [1, 2, {"x": None}]},
        "monitor_port": 9000,
    }
    member["pool"]["brand_new"] = [1, "two"]
    args = {"member": member, "_unknown_kwarg": True}
    request = decode("member_create", args)
    assert isinstance(request.obj, Member)
    assert request.obj.id == MEMBER
    assert request.obj.monitor_port == 9000


# --------------------------------------------------------------------------- properties


@given(
    member_id=st.uuids().map(str),
    port=st.integers(min_value=1, max_value=65535),
    weight=st.integers(min_value=0, max_value=256),
    extra=st.dictionaries(
        st.text(min_size=1).filter(
            lambda k: k not in Member.__struct_fields__ and k != "tenant_id"
        ),
        st.none() | st.integers() | st.text(),
        max_size=3,
    ),
)
def test_member_fields_survive_decoding(
    member_id: str, port: int, weight: int, extra: dict[str, Any]
) -> None:
    payload = P.member_dict(member_id, port) | {"weight": weight} | extra
    request = decode("member_create", {"member": payload})
    assert isinstance(request.obj, Member)
    assert (request.obj.id, request.obj.protocol_port, request.obj.weight) == (
        member_id,
        port,
        weight,
    )


@given(
    field=st.sampled_from(["protocol_port", "weight", "backup", "address", "pool"]),
    value=st.one_of(st.text(), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2)),
)
def test_ill_typed_member_field_is_reported_by_path(field: str, value: Any) -> None:
    expected_type = {
        "protocol_port": int,
        "weight": int,
        "backup": bool,
        "address": str,
        "pool": dict,
    }[field]
    in_range = {"protocol_port": range(1, 65536), "weight": range(0, 257)}
    ok = isinstance(value, expected_type) and not (expected_type is int and isinstance(value, bool))
    if ok and field in in_range:
        ok = value in in_range[field]  # Octavia's ranges (model.py)
    payload = P.member_dict() | {field: value}
    if ok:
        decode("member_create", {"member": payload})
        return
    with pytest.raises(InvalidOperation) as info:
        decode("member_create", {"member": payload})
    assert info.value.field == f"member.{field}"
