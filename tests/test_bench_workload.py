"""bench.workload: the plan, the payloads, matching and validation of status updates (pure)."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bench import workload
from bench.workload import (
    ACTIVE,
    DELETED,
    ERROR,
    LoadBalancerPlan,
    Operation,
    PlanTemplate,
    TemplatedPlan,
    latency_summary,
    match_status,
    operations_per_lb,
    validate,
)
from lbactors.amqp import oslo

SIM = Path(__file__).resolve().parents[2] / "shared" / "baseline" / "octavia_driver_sim.py"


def entry(oid: str, prov: str = ACTIVE, oper: str | None = "ONLINE") -> dict[str, str]:
    e = {"id": oid, "provisioning_status": prov}
    if oper is not None:
        e["operating_status"] = oper
    return e


def run_plan(plan: LoadBalancerPlan) -> list[Operation]:
    ops = []
    while not plan.finished:
        ops.append(plan.next_operation())
        plan.advance()
    return ops


def good_status(plan: LoadBalancerPlan, op: Operation) -> dict[str, Any]:
    """The status dict status-semantics.md promises for a successful ``op``."""
    status: dict[str, Any] = {op.otype: [entry(op.oid, op.expect)]}
    for ptype, pid in op.parents:
        status.setdefault(ptype, []).append(entry(pid))
    if op.cascade is not None:
        for ctype, ids in op.cascade.items():
            status[ctype] = [entry(i, DELETED) for i in sorted(ids)]
    return status


@pytest.mark.parametrize("members,updates,resident", [
    (4, True, False), (0, True, False), (2, False, False), (4, False, True), (3, True, True),
])
def test_plan_length_and_order(members: int, updates: bool, resident: bool) -> None:
    plan = LoadBalancerPlan(7, members, updates, resident=resident)
    methods = [op.method for op in run_plan(plan)]
    assert len(methods) == operations_per_lb(members, updates, resident=resident)
    expected = (["loadbalancer_create", "listener_create", "pool_create"]
                + ["member_create"] * members
                + ["healthmonitor_create", "l7policy_create", "l7rule_create"])
    if updates:
        expected += ["loadbalancer_update", "listener_update", "pool_update"]
        expected += ["member_update"] if members else []
        expected += ["healthmonitor_update", "l7policy_update", "l7rule_update"]
    if not resident:
        expected.append("loadbalancer_delete")
    assert methods == expected
    assert operations_per_lb(4) == 18


def test_cascade_delete_carries_the_whole_tree() -> None:
    plan = LoadBalancerPlan(1, 3)
    delete = run_plan(plan)[-1]
    args = msgspec.json.decode(delete.args_json)
    assert args["cascade"] is True
    lb = args["loadbalancer"]
    assert lb["id"] == plan.lb_id
    [listener] = lb["listeners"]
    [policy] = listener["l7policies"]
    assert [r["id"] for r in policy["rules"]] == [plan.rule_id]
    [pool] = lb["pools"]
    assert [m["id"] for m in pool["members"]] == plan.member_ids
    assert pool["healthmonitor"]["id"] == plan.hm_id
    assert delete.expect == DELETED
    assert delete.cascade == {
        "listeners": {plan.listener_id}, "pools": {plan.pool_id}, "members": set(plan.member_ids),
        "healthmonitors": {plan.hm_id}, "l7policies": {plan.policy_id}, "l7rules": {plan.rule_id},
    }


def _load_sim() -> Any:
    spec = importlib.util.spec_from_file_location("octavia_driver_sim_for_tests", SIM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
    return module


@pytest.mark.skipif(not SIM.exists(), reason="shared/baseline/ is not next to the checkout")
def test_payloads_and_expectations_equal_the_oslo_sim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same ids in, the same kwargs, objects, expected status and parents out, op by op."""
    sim = _load_sim()
    for module in (sim, workload):
        counter = itertools.count()
        monkeypatch.setattr(module, "_uuid", lambda c=counter: f"00000000-0000-4000-8000-{next(c):012d}")
    ours = run_plan(LoadBalancerPlan(300, 4, True))
    tree = sim.LBTree(300, 4, True)
    assert len(tree.plan) == len(ours)
    for op in ours:
        method, kwargs, otype, oid, expect, checks = tree.next_op()
        tree.step += 1
        assert (op.method, op.otype, op.oid, op.expect) == (method, otype, oid, expect)
        assert msgspec.json.decode(op.args_json) == copy.deepcopy(kwargs), method
        assert set(op.parents) == set(checks.get("parents", [])), method
        if op.cascade is not None:
            assert {k: len(v) for k, v in op.cascade.items()} == checks["cascade"]


# ---- matching ---------------------------------------------------------------------------

def test_match_pops_the_pending_operation_and_counts_the_rest() -> None:
    plan = LoadBalancerPlan(1, 1)
    op = plan.next_operation()
    pending = {op.key: op}
    timed_out: dict[tuple[str, str], Operation] = {}
    m = match_status(good_status(plan, op), pending, timed_out)
    assert [(o, e["id"]) for o, e in m.matched] == [(op, plan.lb_id)]
    assert m.kind is None and pending == {}
    again = match_status(good_status(plan, op), pending, timed_out)
    assert again.matched == [] and again.kind == "unmatched_status_updates"
    oper_only = match_status({"members": [{"id": "x", "operating_status": "OFFLINE"}]},
                             pending, timed_out)
    assert oper_only.kind == "operating_status_only_updates"


def test_a_status_for_a_timed_out_operation_is_late_not_unmatched() -> None:
    plan = LoadBalancerPlan(1, 1)
    op = plan.next_operation()
    timed_out = {op.key: op}
    m = match_status(good_status(plan, op), {}, timed_out)
    assert m.late == 1 and m.kind is None and timed_out == {}


def test_match_ignores_junk() -> None:
    assert match_status(None, {}, {}).kind == "operating_status_only_updates"
    m = match_status({"loadbalancers": "x", "pools": [1, {"id": "p"}]}, {}, {})
    assert m.matched == [] and not m.has_prov


# ---- validation -------------------------------------------------------------------------

def every_operation_with_its_status() -> list[tuple[LoadBalancerPlan, Operation]]:
    plan = LoadBalancerPlan(5, 2)
    out = []
    while not plan.finished:
        out.append((plan, plan.next_operation()))
        plan.advance()
    return out


def test_a_correct_status_validates_for_every_operation() -> None:
    for plan, op in every_operation_with_its_status():
        assert validate(op, entry(op.oid, op.expect), good_status(plan, op)) == (None, []), op


def test_a_wrong_parent_is_caught() -> None:
    for plan, op in every_operation_with_its_status():
        for ptype, pid in op.parents:
            status = good_status(plan, op)
            status[ptype] = [entry("not-" + pid) if e["id"] == pid else e for e in status[ptype]]
            kind, problems = validate(op, status[op.otype][0], status)
            assert kind == "validation_error"
            assert problems == [f"{op.method}: parent {ptype} {pid} not ACTIVE"]


def test_a_parent_left_in_error_or_pending_is_caught() -> None:
    plan, op = every_operation_with_its_status()[3]  # member_create
    for bad in (ERROR, "PENDING_UPDATE"):
        status = good_status(plan, op)
        status["pools"] = [entry(plan.pool_id, bad)]
        assert validate(op, status["members"][0], status)[0] == "validation_error"


def test_a_missing_cascade_child_is_caught() -> None:
    plan, op = every_operation_with_its_status()[-1]
    assert op.cascade is not None
    for ctype in op.cascade:
        status = good_status(plan, op)
        status[ctype] = status[ctype][1:]
        kind, problems = validate(op, status["loadbalancers"][0], status)
        assert kind == "validation_error"
        assert "expected" in problems[0] and ctype in problems[0]


def test_a_cascade_reporting_another_id_is_caught() -> None:
    plan, op = every_operation_with_its_status()[-1]
    status = good_status(plan, op)
    status["members"][0] = entry("someone-else", DELETED)
    kind, problems = validate(op, status["loadbalancers"][0], status)
    assert kind == "validation_error" and "members DELETED" in problems[0]


def test_a_cascade_child_not_deleted_is_caught() -> None:
    plan, op = every_operation_with_its_status()[-1]
    status = good_status(plan, op)
    status["pools"] = [entry(plan.pool_id, ACTIVE)]
    assert validate(op, status["loadbalancers"][0], status)[0] == "validation_error"


def test_a_duplicate_is_caught() -> None:
    for plan, op in every_operation_with_its_status():
        status = good_status(plan, op)
        status[op.otype].append(dict(status[op.otype][0]))
        kind, problems = validate(op, status[op.otype][0], status)
        assert kind == "validation_error"
        assert f"{op.otype} {op.oid} listed twice" in problems[-1]


def test_an_error_status_is_caught() -> None:
    for plan, op in every_operation_with_its_status():
        status = good_status(plan, op)
        status[op.otype][0] = entry(op.oid, ERROR, "ERROR")
        assert validate(op, status[op.otype][0], status) == (
            "error_status", [f"{op.method} {op.oid} -> ERROR"])


def test_a_wrong_provisioning_status_is_caught() -> None:
    plan, op = every_operation_with_its_status()[0]
    status = {"loadbalancers": [entry(plan.lb_id, DELETED)]}
    kind, problems = validate(op, status["loadbalancers"][0], status)
    assert kind == "validation_error" and problems == [
        f"loadbalancer_create {plan.lb_id}: DELETED != ACTIVE"]


def test_latency_summary_matches_the_sim() -> None:
    assert latency_summary([]) == {"count": 0}
    s = latency_summary([0.004, 0.001, 0.002, 0.003])
    assert s == {"count": 4, "p50": 2.5, "p95": 3.85, "p99": 3.97, "mean": 2.5, "min": 1.0,
                 "max": 4.0}


# ---- pre-rendered plans -----------------------------------------------------------------

@pytest.mark.parametrize("members,updates,resident", [(4, True, False), (0, True, False),
                                                      (1, False, True)])
def test_a_templated_plan_casts_the_same_bytes_and_expects_the_same(
        members: int, updates: bool, resident: bool) -> None:
    template = PlanTemplate(members, updates, resident=resident)
    templated = TemplatedPlan(70000, template)
    direct = LoadBalancerPlan(70000, members, updates, resident=resident, ids=templated.ids)
    assert "@@" not in str(templated.ids)
    n = 0
    while not direct.finished:
        ours, theirs = templated.next_operation(), direct.next_operation()
        assert ours.lb is templated
        assert ours.body is not None
        message = oslo.decode_message(ours.body)
        assert message.method == theirs.method
        assert msgspec.json.decode(message.args) == msgspec.json.decode(theirs.args_json)
        unique = message.unique_id
        assert unique is not None and len(unique) == 32
        # byte for byte, once the per-message _unique_id is set aside
        expected = oslo.encode_cast(theirs.method, theirs.args_json)
        expected_unique = oslo.decode_message(expected).unique_id
        assert expected_unique is not None
        assert ours.body.replace(unique.encode(), b"-") == expected.replace(
            expected_unique.encode(), b"-")
        assert (ours.method, ours.otype, ours.oid, ours.expect, ours.parents, ours.cascade) == (
            theirs.method, theirs.otype, theirs.oid, theirs.expect, theirs.parents, theirs.cascade)
        assert templated.advance() == direct.advance()
        n += 1
    assert templated.finished and n == len(template)


def test_every_templated_cast_has_its_own_unique_id() -> None:
    template = PlanTemplate(1)
    a, b = TemplatedPlan(1, template), TemplatedPlan(2, template)
    ids = {oslo.decode_message(p.next_operation().body or b"").unique_id for p in (a, a, b)}
    assert len(ids) == 3
    assert a.ids["lb_id"] != b.ids["lb_id"]


# ---- end to end -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.broker
def test_the_driver_plays_three_load_balancers_against_the_daemon_without_an_error(
        amqp_url: str, unique_prefix: str, tmp_path: Path) -> None:
    """bench.driver against ``python -m supervisor serve``: 3 × 18 operations, all validated."""
    import trio

    from bench import procs
    from bench.driver import DriverConfig, delete_queues, open_driver

    daemon = procs.Daemon(topic=f"{unique_prefix}__lb_listener",
                          driver_topic=f"{unique_prefix}__driver_listener", run_dir=tmp_path,
                          amqp_url=amqp_url, workers=2)
    config = DriverConfig(amqp_url=amqp_url, topic=daemon.topic, driver_topic=daemon.driver_topic,
                          lbs=3, members=4, concurrency=2, timeout=20, max_duration=60,
                          drain=0.3, wait_for_consumer=10)

    async def play() -> dict[str, Any]:
        async with open_driver(config) as driver:
            return await driver.run_workload()

    daemon.start(ready_timeout=60)
    try:
        result = trio.run(play)
    finally:
        daemon.stop()
        trio.run(delete_queues, amqp_url, [daemon.topic, f"{daemon.topic}.{config.host}"])
    assert result["samples"] == {}
    assert (result["ops_planned"], result["ops_completed"], result["ops_ok"]) == (54, 54, 54)
    assert result["errors"] == result["missing_status_updates"] == 0
    assert result["unmatched_status_updates"] == 0


def test_the_driver_tells_a_reassertion_by_its_context() -> None:
    """The bench driver leaves re-assertions out of matching (lbactors' agent skips them once
    written); it finds them by the context entry the gateway puts in the envelope."""
    from bench.driver import REASSERTION_MARK
    from lbactors.gateway import encode_status_cast
    from lbactors.messages import StatusEntry, StatusUpdate

    status = StatusUpdate(members=[StatusEntry(id="m", provisioning_status="ACTIVE")])
    assert REASSERTION_MARK in encode_status_cast(status, reassertion=True)
    assert REASSERTION_MARK not in encode_status_cast(status)
