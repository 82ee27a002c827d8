"""The noop backend's options for the cluster tests (affinity_prefix, trace_file, state_dir)
and the trace reader of tests/backend_trace.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from lbactors.backends import load_backend
from lbactors.backends.noop import NoopBackend
from lbactors.messages import decode_request
from lbactors.model import Member
from tests.backend_trace import Call, overlaps_by_key, read_trace
from tests.test_messages import LB, Payloads

P = Payloads()


def request(method: str) -> Any:
    return decode_request(method, msgspec.json.encode(P.args(method)))


# --------------------------------------------------------------------------- the reader


def test_read_trace_pairs_starts_and_ends_per_process_and_load_balancer(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    trace.write_text(
        "start 10 member_create lb-1 k 100\n"
        "start 11 member_create lb-1 k 150\n"  # another process, the same load balancer
        "end 10 member_create lb-1 k 200\n"
        "start 10 pool_create lb-2 k 300\n"
        "start 10 member_update lb-1 k 310\n"
        "end 10 pool_create lb-2 k 400\n"
    )
    assert read_trace(trace) == [
        Call(10, "member_create", "lb-1", "k", 100, 200),
        Call(11, "member_create", "lb-1", "k", 150, None),
        Call(10, "pool_create", "lb-2", "k", 300, 400),
        Call(10, "member_update", "lb-1", "k", 310, None),
    ]
    trace.write_text("end 10 member_create lb-1 k 200\n")
    with pytest.raises(ValueError, match="without its start"):
        read_trace(trace)
    trace.write_text("start 10 member_create lb-1 200\n")
    with pytest.raises(ValueError, match="not a trace line"):
        read_trace(trace)


def test_overlaps_by_key_compares_calls_of_one_key_only() -> None:
    a = Call(1, "m", "lb-1", "k1", 100, 200)
    b = Call(2, "m", "lb-2", "k1", 200, 300)  # starts as a ends: no overlap
    c = Call(2, "m", "lb-3", "k2", 150, 250)  # overlaps a, but another key
    d = Call(3, "m", "lb-4", "k1", 250, 260)  # inside b
    assert overlaps_by_key([a, b, c, d], {}) == [(b, d)]


def test_calls_without_a_key_are_never_compared() -> None:
    """``-``: the backend could not tell the call's load balancer (a cascade child run by a
    daemon that took its load balancer over); it is no call of any key, not of a key "-"."""
    a = Call(1, "member_delete", "-", "-", 100, 200)
    b = Call(1, "pool_delete", "-", "-", 150, 250)
    assert overlaps_by_key([a, b], {}) == []


def test_a_call_never_ended_lasts_until_its_process_was_killed_or_for_ever() -> None:
    killed = Call(7, "m", "lb-1", "k", 100, None)
    later = Call(8, "m", "lb-2", "k", 500, 600)
    assert overlaps_by_key([killed, later], {7: 400}) == []
    assert overlaps_by_key([killed, later], {7: 550}) == [(killed, later)]
    assert overlaps_by_key([killed, later], {}) == [(killed, later)]
    assert overlaps_by_key([killed, later], {9: 50}) == [(killed, later)]


# --------------------------------------------------------------------------- noop options


def test_affinity_prefix_keys_load_balancers_by_the_start_of_their_id() -> None:
    backend = load_backend("noop", {"affinity_prefix": 8})
    assert backend.affinity_key(request("member_create")) == LB[:8]
    assert backend.affinity_key(request("loadbalancer_create")) == LB[:8]
    assert backend.affinity_key(request("get_supported_flavor_metadata")) is None
    assert backend.lb_affinity_key(LB) == LB[:8]
    plain = load_backend("noop", {})
    assert plain.affinity_key(request("member_create")) is None
    assert plain.lb_affinity_key(LB) == LB
    with pytest.raises(msgspec.ValidationError, match="affinity_prefix"):
        load_backend("noop", {"affinity_prefix": -1})


async def test_the_trace_has_a_start_and_an_end_for_every_call_however_it_ends(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    trace = tmp_path / "trace"
    backend = NoopBackend.from_options(
        {"trace_file": str(trace), "affinity_prefix": 4, "fail_pattern": "^bad", "latency": 1}
    )
    with trio.fail_after(60):
        await backend.loadbalancer_create(request("loadbalancer_create").obj)
        bad = msgspec.structs.replace(request("member_create").obj, name="bad-member")
        with pytest.raises(Exception, match="fail_pattern"):
            await backend.member_create(bad)
        with trio.move_on_after(0.5):  # cancelled in its latency
            await backend.member_delete(request("member_delete").obj)
    await backend.aclose()
    calls = read_trace(trace)
    assert [(c.method, c.lb_id, c.key) for c in calls] == [
        ("loadbalancer_create", LB, LB[:4]),
        ("member_create", LB, LB[:4]),
        ("member_delete", LB, LB[:4]),
    ]
    assert all(c.end is not None and c.end >= c.start for c in calls)
    assert overlaps_by_key(calls, {}) == []


async def test_state_dir_shares_the_load_balancers_between_backends(tmp_path: Path) -> None:
    one = NoopBackend.from_options({"state_dir": str(tmp_path)})
    other = NoopBackend.from_options({"state_dir": str(tmp_path)})
    assert await other.resident_lb_ids() == []
    with trio.fail_after(10):
        await one.loadbalancer_create(request("loadbalancer_create").obj)
        await one.member_create(request("member_create").obj)
        assert await other.resident_lb_ids() == [LB]
    assert os.listdir(tmp_path) == [LB]
    assert os.stat(tmp_path / LB).st_size == 0
    with trio.fail_after(10):
        await other.loadbalancer_delete(request("loadbalancer_delete").obj)
        assert await one.resident_lb_ids() == []
    assert await NoopBackend.from_options({}).resident_lb_ids() == []


async def test_a_child_whose_load_balancer_is_unknown_is_traced_without_one(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A new owner's noop has not seen the tree: a cascade's member (its payload names no
    load balancer) is traced as ``-``, not under the member's own id as a key."""
    trace = tmp_path / "trace"
    backend = NoopBackend.from_options({"trace_file": str(trace), "affinity_prefix": 1})
    # as a cascade plan holds it: the member's own fields, its pool named by id only
    member = Member(id="c3d4e5f6-a7b8-4c9d-8e1f-2a3b44558899", pool_id="b2c3d4e5")
    with trio.fail_after(10):
        await backend.member_delete(member)
    await backend.aclose()
    assert [(c.method, c.lb_id, c.key) for c in read_trace(trace)] == [
        ("member_delete", "-", "-")
    ]
