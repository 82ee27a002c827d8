"""Routing: the load balancer that owns each operation, and the worker that owns the key."""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbactors.messages import METHODS, QUERY_METHODS, Request, decode_request
from lbactors.routing import owner_of, shard, shard_of, shard_queue
from tests.test_messages import LB, LISTENER, MEMBER, POLICY, POOL, RULE, Payloads

P = Payloads()


def request(method: str, args: dict[str, Any]) -> Request:
    return decode_request(method, msgspec.json.encode(args))


# --------------------------------------------------------------------------- owner_of

CRUD_METHODS = sorted(m for m, spec in METHODS.items() if spec[0] is not None)


@pytest.mark.parametrize("method", CRUD_METHODS)
def test_every_crud_method_is_owned_by_its_load_balancer(method: str) -> None:
    assert owner_of(request(method, P.args(method))) == (LB, True)


@pytest.mark.parametrize("method", sorted(QUERY_METHODS))
def test_queries_need_no_actor(method: str) -> None:
    assert owner_of(request(method, P.args(method))) == ("", True)


def strip(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def test_member_via_its_pool() -> None:
    member = strip(P.member(), "loadbalancer", "loadbalancer_id")
    assert owner_of(request("member_create", {"member": member})) == (LB, True)
    member["pool"] = strip(member["pool"], "loadbalancer_id")
    assert owner_of(request("member_delete", {"member": member})) == (
        LB,
        True,
    )  # pool.loadbalancer.id


def test_healthmonitor_via_its_pool() -> None:
    hm = P.healthmonitor()
    assert "loadbalancer_id" not in hm and "loadbalancer" not in hm  # as the driver sends it
    assert owner_of(request("healthmonitor_create", {"healthmonitor": hm})) == (LB, True)


def test_l7rule_via_policy_listener() -> None:
    rule = P.l7rule()
    assert rule["policy"]["listener"]["loadbalancer_id"] == LB
    assert owner_of(request("l7rule_delete", {"l7rule": rule})) == (LB, True)


def test_l7policy_via_its_listener() -> None:
    policy = P.l7policy()
    policy["listener"] = strip(policy["listener"], "loadbalancer_id") | {
        "loadbalancer": {"id": "other-lb"}
    }
    assert owner_of(request("l7policy_create", {"l7policy": policy})) == ("other-lb", True)


def test_pool_via_its_listener() -> None:
    pool = strip(P.pool(), "loadbalancer_id", "loadbalancer")
    assert owner_of(request("pool_create", {"pool": pool})) == (LB, True)


def test_listener_via_its_loadbalancer_dict() -> None:
    listener = strip(P.listener(), "loadbalancer_id")
    assert owner_of(request("listener_create", {"listener": listener, "cert": None})) == (LB, True)


def test_load_balancer_owns_itself() -> None:
    assert owner_of(
        request("loadbalancer_create", {"loadbalancer": {"loadbalancer_id": "lb-9"}})
    ) == (
        "lb-9",
        True,
    )
    cascade = request("loadbalancer_delete", {"loadbalancer": P.full_tree(), "cascade": True})
    assert owner_of(cascade) == (LB, True)


def test_update_falls_back_to_the_old_object() -> None:
    old = P.member()
    args = {"old_member": old, "new_member": {"id": MEMBER, "weight": 9, "pool": {"id": POOL}}}
    assert owner_of(request("member_update", args)) == (LB, True)
    old_rule = P.l7rule()
    args = {"old_l7rule": old_rule, "new_l7rule": {"id": RULE, "policy": {"id": POLICY}}}
    assert owner_of(request("l7rule_update", args)) == (LB, True)


@pytest.mark.parametrize(
    ("method", "obj", "own_id"),
    [
        ("member_create", {"id": MEMBER, "pool_id": POOL}, MEMBER),
        ("listener_delete", {"listener_id": LISTENER}, LISTENER),
        ("l7rule_create", {"id": RULE, "policy": {"id": POLICY, "listener_id": LISTENER}}, RULE),
        ("l7policy_delete", {"id": POLICY, "loadbalancer_id": LB}, POLICY),  # not a policy source
        ("pool_update", {"id": POOL, "listener_id": LISTENER}, POOL),
    ],
)
def test_no_load_balancer_found_falls_back_to_the_object(
    method: str, obj: dict[str, Any], own_id: str
) -> None:
    kind, _, action = method.rpartition("_")
    args = {f"old_{kind}": obj, f"new_{kind}": {}} if action == "update" else {kind: obj}
    assert owner_of(request(method, args)) == (own_id, False)


# --------------------------------------------------------------------------- shard

PINNED = {
    # computed once with blake2b(digest_size=8), big-endian, modulo n; must never change
    (LB, 2): 1,
    (LB, 3): 2,
    (LB, 7): 3,
    (LB, 8): 3,
    (LB, 64): 51,
    ("", 8): 4,
    ("", 64): 52,
    ("lb-1", 3): 1,
    ("lb-1", 4): 2,
    ("lb-1", 8): 6,
    ("lb-1", 64): 38,
    (LISTENER, 7): 0,
    (LISTENER, 16): 11,
}


@pytest.mark.parametrize(("key", "workers"), sorted(PINNED))
def test_shard_is_pinned(key: str, workers: int) -> None:
    assert shard(key, workers) == PINNED[(key, workers)]


def test_shard_is_the_same_in_other_processes() -> None:
    """Not Python's salted hash(): fresh interpreters with other hash seeds agree."""
    keys = [LB, "lb-1", LISTENER]
    code = (
        "import sys; from lbactors.routing import shard; "
        "print([shard(k, 8) for k in sys.argv[1:]]); print(hash(sys.argv[1]))"
    )
    shards, hashes = set(), set()
    for seed in ("1", "2"):
        env = os.environ | {"PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, *keys], env=env, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        shards.add(out[0])
        hashes.add(out[1])
    assert shards == {str([shard(k, 8) for k in keys])}
    assert len(hashes) == 2  # the seeds differ, so hash() would not have agreed


@given(key=st.text(), workers=st.integers(min_value=1, max_value=1024))
def test_shard_is_in_range_and_repeatable(key: str, workers: int) -> None:
    index = shard(key, workers)
    assert 0 <= index < workers
    assert shard(key, workers) == index
    assert shard(key, 1) == 0


def test_shard_spreads_load_balancers_evenly() -> None:
    workers = 8
    n = 16_000
    rng = random.Random(7)
    keys = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    counts = collections.Counter(shard(key, workers) for key in keys)
    assert set(counts) == set(range(workers))
    expected = n / workers
    for count in counts.values():
        assert abs(count - expected) < 0.1 * expected, counts


def test_shard_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        shard(LB, 0)


def test_shard_of_is_fixed_across_releases() -> None:
    """Every daemon of a deployment, old and new, must agree: these values may never change
    (a changed hash splits a key's queued operations over two shard queues)."""
    assert [shard_of(k, 12) for k in ("a", "lb-1", "00000000-0000-0000-0000-000000000000")] == [
        4,
        2,
        5,
    ]
    assert shard_of("a", 999) == 730
    assert shard_queue("vmware_nsx__lb_listener", 7) == "vmware_nsx__lb_listener.shard.007"


def test_shard_of_does_not_line_up_with_the_worker_shard() -> None:
    """A daemon holding shards {0, 3, 6, 9} of 12 with 3 workers still uses every worker."""
    rng = random.Random(3)
    keys = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(3000)]
    held = [k for k in keys if shard_of(k, 12) in {0, 3, 6, 9}]
    counts = collections.Counter(shard(k, 3) for k in held)
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) > 0.25 * len(held), counts


@given(key=st.text(), shards=st.integers(min_value=1, max_value=999))
def test_shard_of_is_in_range(key: str, shards: int) -> None:
    assert 0 <= shard_of(key, shards) < shards
    with pytest.raises(ValueError):
        shard_of(key, 0)
