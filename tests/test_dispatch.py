"""run_operation: every driver method, with driver-shaped payloads, against the noop backend.

Expected statuses are written out from status-semantics.md (Results table) where the point is
the semantics of a failure path, and taken from ``operation_status`` where the point is that
dispatch used the right function with the right outcome.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
import trio

import lbactors.dispatch
from lbactors.backends.noop import NoopBackend
from lbactors.cascade import cascade_plan
from lbactors.messages import METHODS, Operation, Outcome, decode_request
from lbactors.model import LoadBalancer
from lbactors.status import cascade_status, object_error_status, operation_status
from lbactors.status import status_to_builtins as builtins
from tests.test_messages import (
    HM,
    LB,
    LISTENER,
    MEMBER,
    MEMBER2,
    POLICY,
    POOL,
    RULE,
    Payloads,
)

P = Payloads()
CRUD_METHODS = sorted(m for m, spec in METHODS.items() if spec[0] is not None)
QUERY_METHODS = sorted(m for m, spec in METHODS.items() if spec[0] is None)
KIND_OF_METHOD = {m: spec[0] for m, spec in METHODS.items()}
OWN_ID = {
    "loadbalancer": LB,
    "listener": LISTENER,
    "pool": POOL,
    "member": MEMBER,
    "healthmonitor": HM,
    "l7policy": POLICY,
    "l7rule": RULE,
}


def make_op(method: str, args: Any, *, is_call: bool = False, op_id: int = 7) -> Operation:
    raw = args if isinstance(args, bytes) else msgspec.json.encode(args)
    return Operation(op_id=op_id, method=method, args=raw, lb_id=LB, is_call=is_call)


class RecordingBackend(NoopBackend):
    """The noop backend, recording every CRUD call as ``(method, object id)``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, str]] = []

    async def _put(self, kind: str, action: str, obj: Any, old: Any = None) -> None:
        self.calls.append((f"{kind}_{action}", obj.id))
        await super()._put(kind, action, obj, old)

    async def _remove(self, kind: str, obj: Any) -> None:
        self.calls.append((f"{kind}_delete", obj.id))
        await super()._remove(kind, obj)


class ExplodingBackend(NoopBackend):
    """Every call raises something that is not a BackendError."""

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith(("loadbalancer_", "listener_", "pool_", "member_", "healthmonitor_",
                            "l7policy_", "l7rule_", "flavor", "validate", "availability")):
            async def explode(*args: Any) -> Any:
                raise KeyError(f"boom in {name}")

            return explode
        return attr


def entries(outcome: Outcome) -> dict[str, dict[str, dict[str, str]]]:
    """``{plural: {id: entry}}`` of the outcome's status, for readable assertions."""
    assert outcome.status is not None
    return {
        plural: {e["id"]: e for e in lst} for plural, lst in builtins(outcome.status).items()
    }


# --------------------------------------------------------------------------- every CRUD method


@pytest.mark.parametrize("method", CRUD_METHODS)
async def test_every_crud_method_reaches_the_backend_and_reports_success(method: str) -> None:
    with trio.fail_after(10):
        backend = RecordingBackend()
        args = P.args(method)
        outcome = await lbactors.dispatch.run_operation(backend, make_op(method, args))
        request = decode_request(method, msgspec.json.encode(args))
        kind = KIND_OF_METHOD[method]
        assert outcome.failure is None and outcome.reply is None
        assert (outcome.op_id, outcome.lb_id) == (7, LB)
        assert outcome.status == operation_status(request, success=True)
        own = entries(outcome)[f"{kind}s" if kind != "l7policy" else "l7policies"][OWN_ID[kind]]
        expected = "DELETED" if method.endswith(("_delete", "_delete_cascade")) else "ACTIVE"
        assert (own["provisioning_status"], own["operating_status"]) == (expected, "ONLINE")
        if method.startswith("loadbalancer_delete_cascade"):
            assert backend.calls[-1] == ("loadbalancer_delete", LB) and len(backend.calls) > 1
        else:
            assert backend.calls == [(method, OWN_ID[kind])]


@pytest.mark.parametrize("method", CRUD_METHODS)
async def test_every_crud_method_failing_sets_error_and_never_raises(method: str) -> None:
    with trio.fail_after(10):
        outcome = await lbactors.dispatch.run_operation(
            ExplodingBackend(), make_op(method, P.args(method))
        )
        kind = KIND_OF_METHOD[method]
        own = entries(outcome)[{"l7policy": "l7policies"}.get(kind or "", f"{kind}s")][OWN_ID[kind or ""]]
        assert (own["provisioning_status"], own["operating_status"]) == ("ERROR", "ERROR")
        assert outcome.failure is None  # a backend failure is a status, not an RPC failure
        if kind != "loadbalancer":
            parents = entries(outcome)["loadbalancers"][LB]
            assert parents == {"id": LB, "provisioning_status": "ACTIVE"}


async def test_failure_with_parents_on_failure_error_gives_the_seeds_dicts() -> None:
    with trio.fail_after(10):
        outcome = await lbactors.dispatch.run_operation(
            NoopBackend(fail_pattern="web-1"),
            make_op("member_create", P.args("member_create")),
            parents_on_failure="error",
        )
        got = entries(outcome)
        assert got["members"][MEMBER]["provisioning_status"] == "ERROR"
        for plural, object_id in [("loadbalancers", LB), ("listeners", LISTENER), ("pools", POOL)]:
            assert got[plural][object_id] == {
                "id": object_id,
                "provisioning_status": "ERROR",
                "operating_status": "ERROR",
            }


async def test_update_goes_to_the_backend_with_old_and_merged_new() -> None:
    with trio.fail_after(10):
        seen: list[Any] = []

        class Spy(NoopBackend):
            async def member_update(self, old: Any, new: Any) -> None:
                seen.append((old.weight, new.weight, new.address))

        old = P.member()
        args = {"old_member": old, "new_member": {"weight": 5}}
        outcome = await lbactors.dispatch.run_operation(Spy(), make_op("member_update", args))
        assert seen == [(1, 5, "10.0.0.21")]
        assert entries(outcome)["members"][MEMBER]["provisioning_status"] == "ACTIVE"


async def test_listener_create_passes_the_certificate() -> None:
    with trio.fail_after(10):
        seen: list[Any] = []

        class Spy(NoopBackend):
            async def listener_create(self, listener: Any, cert: Any) -> None:
                seen.append(cert)

        cert = {"ref": "barbican://c1", "certificate": "PEM", "private_key": "KEY", "passphrase": None}
        await lbactors.dispatch.run_operation(
            Spy(), make_op("listener_create", {"listener": P.listener(), "cert": cert})
        )
        assert seen[0].ref == "barbican://c1" and seen[0].private_key == "KEY"


# --------------------------------------------------------------------------- CRUD as a call


@pytest.mark.parametrize("method", ["loadbalancer_create", "member_create", "loadbalancer_delete_cascade"])
async def test_crud_call_replies_true_after_success_and_false_after_failure(method: str) -> None:
    with trio.fail_after(10):
        ok = await lbactors.dispatch.run_operation(
            NoopBackend(), make_op(method, P.args(method), is_call=True)
        )
        assert ok.reply is True and ok.status is not None and ok.failure is None
        failed = await lbactors.dispatch.run_operation(
            NoopBackend(fail_pattern="."), make_op(method, P.args(method), is_call=True)
        )
        assert failed.reply is False and failed.failure is None
        assert failed.status is not None and failed.status != ok.status


# --------------------------------------------------------------------------- cascade


def named_tree() -> dict[str, Any]:
    """The full cascade tree with a distinct name on every object (two members)."""
    tree = P.full_tree()
    tree["listeners"][0]["l7policies"][0]["rules"][0]["name"] = "rule-1"
    pool = tree["pools"][0]
    pool["members"] = [P.member_dict(), P.member_dict(MEMBER2) | {"name": "web-2"}]
    return tree


def test_the_named_tree_has_one_name_per_step() -> None:
    plan = cascade_plan(msgspec.convert(named_tree(), LoadBalancer))
    names = [step.obj.name for step in plan]
    assert names == ["rule-1", "pol-1", "http-80", "hm-1", "web-1", "web-2", "pool-1", "lb-1"]


@pytest.mark.parametrize("method", ["loadbalancer_delete", "loadbalancer_delete_cascade"])
async def test_cascade_runs_the_plan_in_order_and_deletes_everything(method: str) -> None:
    with trio.fail_after(10):
        backend = RecordingBackend()
        args: dict[str, Any] = {"loadbalancer": named_tree()}
        if method == "loadbalancer_delete":
            args["cascade"] = True
        outcome = await lbactors.dispatch.run_operation(backend, make_op(method, args))
        assert backend.calls == [
            ("l7rule_delete", RULE),
            ("l7policy_delete", POLICY),
            ("listener_delete", LISTENER),
            ("healthmonitor_delete", HM),
            ("member_delete", MEMBER),
            ("member_delete", MEMBER2),
            ("pool_delete", POOL),
            ("loadbalancer_delete", LB),
        ]
        got = entries(outcome)
        assert set(got) == {
            "loadbalancers", "listeners", "pools", "members", "healthmonitors", "l7policies", "l7rules"
        }
        assert all(
            e["provisioning_status"] == "DELETED" and e["operating_status"] == "ONLINE"
            for by_id in got.values()
            for e in by_id.values()
        )
        assert set(got["members"]) == {MEMBER, MEMBER2}


STEP_NAMES = ["rule-1", "pol-1", "http-80", "hm-1", "web-1", "web-2", "pool-1", "lb-1"]


@pytest.mark.parametrize("k", range(len(STEP_NAMES)))
async def test_cascade_stops_at_the_failing_step(k: int) -> None:
    with trio.fail_after(10):
        backend = RecordingBackend(fail_pattern=f"^{re.escape(STEP_NAMES[k])}$")
        tree = named_tree()
        op = make_op("loadbalancer_delete", {"loadbalancer": tree, "cascade": True}, is_call=True)
        outcome = await lbactors.dispatch.run_operation(backend, op)

        lb = msgspec.convert(tree, LoadBalancer)
        plan = cascade_plan(lb)
        assert len(backend.calls) == k + 1  # steps after the failure are not attempted
        assert outcome.status == cascade_status(lb, plan, completed=k, failed=True)
        assert outcome.reply is False
        # status-semantics.md, "cascade, step k fails", written out:
        listed = {
            (plural, object_id): (e["provisioning_status"], e.get("operating_status"))
            for plural, by_id in entries(outcome).items()
            for object_id, e in by_id.items()
        }
        plural = {"l7rule": "l7rules", "l7policy": "l7policies", "listener": "listeners",
                  "healthmonitor": "healthmonitors", "member": "members", "pool": "pools",
                  "loadbalancer": "loadbalancers"}
        expected = {(plural[s.kind], s.id): ("DELETED", "ONLINE") for s in plan[:k]}
        expected[(plural[plan[k].kind], plan[k].id)] = ("ERROR", "ERROR")
        expected[("loadbalancers", LB)] = ("ERROR", "ERROR")
        assert listed == expected


# --------------------------------------------------------------------------- pool delete


def pool_with_children() -> dict[str, Any]:
    pool = P.pool_db(members=2)
    pool["members"][1]["name"] = "web-2"
    return pool


async def test_pool_delete_deletes_health_monitor_members_then_pool() -> None:
    with trio.fail_after(10):
        backend = RecordingBackend()
        outcome = await lbactors.dispatch.run_operation(
            backend, make_op("pool_delete", {"pool": pool_with_children()})
        )
        assert backend.calls == [
            ("healthmonitor_delete", HM),
            ("member_delete", MEMBER),
            ("member_delete", MEMBER2),
            ("pool_delete", POOL),
        ]
        got = entries(outcome)
        assert got["pools"][POOL]["provisioning_status"] == "DELETED"
        assert got["healthmonitors"][HM]["provisioning_status"] == "DELETED"
        assert {m["provisioning_status"] for m in got["members"].values()} == {"DELETED"}
        assert got["loadbalancers"][LB] == {
            "id": LB, "provisioning_status": "ACTIVE", "operating_status": "ONLINE"
        }


async def test_pool_delete_with_a_failing_member() -> None:
    with trio.fail_after(10):
        backend = RecordingBackend(fail_pattern="^web-2$")
        outcome = await lbactors.dispatch.run_operation(
            backend, make_op("pool_delete", {"pool": pool_with_children()}, is_call=True)
        )
        assert backend.calls[-1] == ("member_delete", MEMBER2)  # the pool itself is not deleted
        got = entries(outcome)
        state = {
            (plural, object_id): (e["provisioning_status"], e.get("operating_status"))
            for plural, by_id in got.items()
            for object_id, e in by_id.items()
        }
        assert state == {
            ("pools", POOL): ("ERROR", "ERROR"),
            ("healthmonitors", HM): ("DELETED", "ONLINE"),
            ("members", MEMBER): ("DELETED", "ONLINE"),
            ("members", MEMBER2): ("ERROR", "ERROR"),
            ("loadbalancers", LB): ("ACTIVE", None),
            ("listeners", LISTENER): ("ACTIVE", None),
        }
        assert outcome.reply is False


async def test_pool_delete_with_a_failing_health_monitor() -> None:
    with trio.fail_after(10):
        backend = RecordingBackend(fail_pattern="^hm-1$")
        outcome = await lbactors.dispatch.run_operation(
            backend, make_op("pool_delete", {"pool": pool_with_children()})
        )
        assert backend.calls == [("healthmonitor_delete", HM)]
        got = entries(outcome)
        assert got["pools"][POOL]["provisioning_status"] == "ERROR"
        assert got["healthmonitors"][HM]["provisioning_status"] == "ERROR"
        assert "members" not in got


# --------------------------------------------------------------------------- bad messages


async def test_unknown_method_is_no_such_method_without_status() -> None:
    with trio.fail_after(10):
        outcome = await lbactors.dispatch.run_operation(
            NoopBackend(), make_op("member_batch_update", {"members": []}, is_call=True)
        )
        assert outcome.status is None and outcome.reply is None
        assert outcome.failure is not None
        assert outcome.failure.exc_class == "NoSuchMethod"
        assert outcome.failure.module == "oslo_messaging.rpc.dispatcher"
        assert "member_batch_update" in outcome.failure.message


async def test_ill_typed_field_names_method_and_field_and_sets_the_object_error() -> None:
    with trio.fail_after(10):
        member = P.member() | {"protocol_port": "eighty"}
        backend = RecordingBackend()
        outcome = await lbactors.dispatch.run_operation(
            backend, make_op("member_create", {"member": member})
        )
        assert backend.calls == []
        assert outcome.failure is not None
        assert (outcome.failure.exc_class, outcome.failure.module) == (
            "InvalidOperation", "lbactors.messages"
        )
        assert "member_create" in outcome.failure.message
        assert "member.protocol_port" in outcome.failure.message
        assert outcome.status == object_error_status("member", MEMBER)


async def test_missing_id_cannot_name_the_object_so_no_status() -> None:
    with trio.fail_after(10):
        member = P.member()
        del member["id"], member["member_id"]
        outcome = await lbactors.dispatch.run_operation(
            NoopBackend(), make_op("member_create", {"member": member})
        )
        assert outcome.status is None
        assert outcome.failure is not None and outcome.failure.exc_class == "InvalidOperation"
        assert "member.id" in outcome.failure.message


async def test_missing_kwarg_and_malformed_json() -> None:
    with trio.fail_after(10):
        missing = await lbactors.dispatch.run_operation(NoopBackend(), make_op("pool_create", {}))
        assert missing.failure is not None and "pool" in missing.failure.message
        assert missing.status is None
        broken = await lbactors.dispatch.run_operation(NoopBackend(), make_op("pool_create", b"{not json"))
        assert broken.failure is not None and broken.failure.exc_class == "InvalidOperation"
        assert broken.status is None


async def test_a_bug_in_status_computation_still_gives_an_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(10):
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("status bug")

        monkeypatch.setattr(lbactors.dispatch, "operation_status", broken)
        outcome = await lbactors.dispatch.run_operation(
            NoopBackend(), make_op("member_create", P.args("member_create"), is_call=True)
        )
        assert outcome.failure is not None and outcome.failure.exc_class == "RuntimeError"
        assert outcome.status == object_error_status("member", MEMBER)
        assert outcome.reply is False


# --------------------------------------------------------------------------- queries


def query(method: str, args: dict[str, Any]) -> Operation:
    return Operation(op_id=1, method=method, args=msgspec.json.encode(args), lb_id="", is_call=True)


async def test_supported_metadata_queries_reply_with_the_backends_dicts() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        flavor = await lbactors.dispatch.run_operation(
            backend, query("get_supported_flavor_metadata", {})
        )
        assert flavor.reply == await backend.flavor_metadata()
        assert flavor.status is None and flavor.failure is None
        az = await lbactors.dispatch.run_operation(
            backend, query("get_supported_availability_zone_metadata", {})
        )
        assert az.reply == await backend.availability_zone_metadata()


@pytest.mark.parametrize(
    ("method", "field", "good", "bad_key"),
    [
        ("validate_flavor", "flavor_metadata", {"max_connections": 100}, "service_type"),
        ("validate_availability_zone", "availability_zone_metadata", {"zone": "z1"}, "edge_cluster"),
    ],
)
async def test_validation_queries(method: str, field: str, good: dict[str, Any], bad_key: str) -> None:
    with trio.fail_after(10):
        valid = await lbactors.dispatch.run_operation(NoopBackend(), query(method, {field: good}))
        assert valid.reply == {"valid": True}
        invalid = await lbactors.dispatch.run_operation(
            NoopBackend(), query(method, {field: good | {bad_key: "x"}})
        )
        assert invalid.reply["valid"] is False
        assert bad_key in invalid.reply["reason"]
        assert invalid.status is None and invalid.failure is None


@pytest.mark.parametrize("method", QUERY_METHODS)
async def test_a_failing_query_is_a_failure_not_an_escape(method: str) -> None:
    with trio.fail_after(10):
        outcome = await lbactors.dispatch.run_operation(ExplodingBackend(), make_op(method, P.args(method)))
        assert outcome.failure is not None
        assert (outcome.failure.exc_class, outcome.failure.module) == ("KeyError", "builtins")
        assert outcome.reply is None and outcome.status is None
