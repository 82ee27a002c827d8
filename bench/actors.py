"""In-process throughput of the actor layer: noop backend, no broker, no worker processes.

    python -m bench.actors [--ops 100000] [--sizes 1,100,10000] [--reassert-after 1,3,10]

For each number of load balancers, every load balancer runs the life of a small tree (create
the LB, a listener, a pool, two members, a health monitor, an L7 policy and rule, update a
member, cascade-delete the LB) over and over, the load balancers interleaved as concurrent
drivers would send them, until ``--ops`` operations have run. Payloads are shaped like the
driver's (nested parents, both ``id`` and ``<kind>_id``) and encoded before the clock starts:
what is measured is submit -> decode -> backend -> status -> outcome, in one process.
The producer yields every ``READ_BATCH`` submissions, as the worker's frame reader does.

Prints one JSON line per size, then a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from typing import Any

import msgspec
import structlog
import trio

from lbactors.actor import open_actor_system
from lbactors.backends import load_backend
from lbactors.messages import Operation, Outbound, Outcome

PROJECT = "9c6f0e1d2c3b4a5968778695a4b33a21"

#: operations submitted between two checkpoints of the producer: a worker reads its frames
#: in batches and yields on the socket in between; a producer that never yields would pile
#: every operation of the run into the mailboxes before the first one runs
READ_BATCH = 256


def _ids(i: int) -> dict[str, str]:
    suffix = f"{i:012x}"
    return {
        kind: f"{prefix}-0000-4000-8000-{suffix}"
        for kind, prefix in [
            ("lb", "5e3f1c2a"), ("listener", "a1b2c3d4"), ("pool", "b2c3d4e5"),
            ("member1", "c3d4e5f6"), ("member2", "c3d4e5f7"), ("hm", "d4e5f6a7"),
            ("policy", "e5f6a7b8"), ("rule", "f6a7b8c9"),
        ]
    }


def lifecycle(i: int) -> list[tuple[str, bytes]]:
    """``(method, args JSON)`` of one load balancer's life, driver-shaped."""
    ids = _ids(i)
    lb_id = ids["lb"]
    common = {"project_id": PROJECT, "tenant_id": PROJECT, "admin_state_up": True, "description": ""}
    lb_mini = {"id": lb_id, "name": f"lb-{i}", "vip_address": "10.0.0.10",
               "vip_port_id": "0a1b2c3d-0000-4000-8000-00000000ffff",
               "vip_subnet_id": "22222222-3333-4444-8555-666677778888", "listeners": []}
    lb = common | {"id": lb_id, "loadbalancer_id": lb_id, "name": f"lb-{i}", "flavor": None,
                   "availability_zone": None, "listeners": [], "pools": [],
                   "vip_address": "10.0.0.10", "vip_port_id": lb_mini["vip_port_id"],
                   "vip_subnet_id": lb_mini["vip_subnet_id"], "vip_qos_policy_id": None}
    listener = common | {"id": ids["listener"], "listener_id": ids["listener"],
                         "loadbalancer_id": lb_id, "name": "http-80", "protocol": "HTTP",
                         "protocol_port": 80, "connection_limit": -1, "default_pool_id": None,
                         "default_pool": None, "l7policies": [], "l7_policies": [],
                         "insert_headers": {}, "allowed_cidrs": None, "loadbalancer": lb_mini}
    listener_flat = {k: v for k, v in listener.items() if k != "loadbalancer"}
    pool = common | {"id": ids["pool"], "pool_id": ids["pool"], "loadbalancer_id": lb_id,
                     "listener_id": ids["listener"], "name": "pool-1", "protocol": "HTTP",
                     "lb_algorithm": "ROUND_ROBIN", "session_persistence": None,
                     "healthmonitor": None, "members": [], "tls_enabled": False,
                     "listener": listener_flat, "listeners": [listener_flat],
                     "loadbalancer": lb_mini}

    def member(key: str, n: int) -> dict[str, Any]:
        return common | {"id": ids[key], "member_id": ids[key], "pool_id": ids["pool"],
                         "name": f"web-{n}", "address": f"10.0.0.{20 + n}", "protocol_port": 8080,
                         "subnet_id": "33333333-4444-4555-8666-77778888aaaa", "weight": 1,
                         "backup": False}

    pool_db = pool | {"members": [member("member1", 1)]}
    member1 = member("member1", 1) | {"pool": pool_db, "loadbalancer": lb_mini}
    member2 = member("member2", 2) | {"pool": pool_db, "loadbalancer": lb_mini}
    hm_flat = common | {"id": ids["hm"], "healthmonitor_id": ids["hm"], "pool_id": ids["pool"],
                        "name": "hm-1", "type": "HTTP", "delay": 5, "timeout": 4,
                        "max_retries": 3, "http_method": "GET", "url_path": "/healthz",
                        "expected_codes": "200", "http_version": 1.0}
    hm = hm_flat | {"pool": pool_db}
    rule = common | {"id": ids["rule"], "l7rule_id": ids["rule"], "l7policy_id": ids["policy"],
                     "name": "", "type": "PATH", "compare_type": "STARTS_WITH", "key": None,
                     "value": "/api", "invert": False}
    policy_flat = common | {"id": ids["policy"], "l7policy_id": ids["policy"],
                            "listener_id": ids["listener"], "name": "pol-1", "action": "REJECT",
                            "position": 1, "rules": []}
    policy = policy_flat | {"listener": listener_flat}
    rule_full = rule | {"policy": policy_flat | {"rules": [rule], "listener": listener_flat}}
    tree = lb | {
        "listeners": [listener_flat | {"l7policies": [policy_flat | {"rules": [rule]}]}],
        "pools": [pool | {"members": [member("member1", 1), member("member2", 2)],
                          "healthmonitor": hm_flat}],
    }
    steps: list[tuple[str, dict[str, Any]]] = [
        ("loadbalancer_create", {"loadbalancer": lb}),
        ("listener_create", {"listener": listener, "cert": None}),
        ("pool_create", {"pool": pool}),
        ("member_create", {"member": member1}),
        ("member_create", {"member": member2}),
        ("healthmonitor_create", {"healthmonitor": hm}),
        ("l7policy_create", {"l7policy": policy}),
        ("l7rule_create", {"l7rule": rule_full}),
        ("member_update", {"old_member": member1, "new_member": {"weight": 5}}),
        ("loadbalancer_delete", {"loadbalancer": tree, "cascade": True}),
    ]
    return [(method, msgspec.json.encode(args)) for method, args in steps]


class Result(msgspec.Struct):
    load_balancers: int
    operations: int
    seconds: float
    ops_per_second: float
    us_per_op: float
    #: CPU time of this process (``time.process_time``) per operation: on a shared machine
    #: it moves far less than the wall clock
    cpu_us_per_op: float
    errors: int
    max_actors: int


async def run_size(
    n_lbs: int, total_ops: int, mailbox_size: int, reassert_after: tuple[float, ...] = ()
) -> Result:
    lives = [lifecycle(i) for i in range(n_lbs)]
    lb_ids = [_ids(i)["lb"] for i in range(n_lbs)]
    steps = len(lives[0])
    backend = load_backend("noop")
    send, receive = trio.open_memory_channel[Outbound](4096)
    errors = 0
    max_actors = 0
    done = trio.Event()
    received = 0

    async def consume() -> None:
        nonlocal errors, received
        async for first in receive:
            batch = [first]
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            outcomes = [item for item in batch if isinstance(item, Outcome)]
            received += len(outcomes)
            errors += sum(1 for outcome in outcomes if outcome.failure is not None)
            if received == total_ops:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        gc.collect()
        # the payloads prepared above stay to the end: out of the collector's sight, as the
        # worker freezes what it holds once started (lbactors.worker.serve_worker)
        gc.freeze()
        start = time.perf_counter()
        cpu_start = time.process_time()
        async with open_actor_system(
            backend, send, mailbox_size=mailbox_size, reassert_after=reassert_after
        ) as system:
            op_id = 0
            step = 0
            while op_id < total_ops:
                for lb_index in range(n_lbs):
                    method, args = lives[lb_index][step]
                    await system.submit(
                        Operation(op_id=op_id, method=method, args=args, lb_id=lb_ids[lb_index])
                    )
                    op_id += 1
                    if op_id == total_ops:
                        break
                    if op_id % READ_BATCH == 0:
                        # the worker's reader yields on I/O between batches of frames
                        await trio.lowlevel.checkpoint()
                step = (step + 1) % steps
                if step == 1:
                    max_actors = max(max_actors, system.actor_count())
            await done.wait()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    gc.unfreeze()  # the next size starts from a clean slate
    await backend.aclose()
    return Result(
        load_balancers=n_lbs,
        operations=total_ops,
        seconds=round(elapsed, 4),
        ops_per_second=round(total_ops / elapsed),
        us_per_op=round(elapsed / total_ops * 1e6, 2),
        cpu_us_per_op=round(cpu / total_ops * 1e6, 2),
        errors=errors,
        max_actors=max_actors,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.actors", description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=100_000, help="operations per size")
    parser.add_argument("--sizes", default="1,100,10000", help="numbers of load balancers")
    parser.add_argument("--mailbox-size", type=int, default=64)
    parser.add_argument(
        "--reassert-after",
        default="",
        help="re-assertion schedule of creates, seconds (e.g. 1,3,10; the daemon's default); "
        "empty: off, as open_actor_system's default",
    )
    args = parser.parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        schedule = tuple(float(s) for s in args.reassert_after.split(",") if s)
        result = trio.run(run_size, size, args.ops, args.mailbox_size, schedule)
        results.append(result)
        print(json.dumps({"bench": "actors", **msgspec.to_builtins(result)}), flush=True)
    print(f"\n{'load balancers':>15} {'ops':>9} {'seconds':>9} {'ops/s':>9} {'µs/op':>8} {'CPU µs/op':>10} {'errors':>7}")
    for r in results:
        print(
            f"{r.load_balancers:>15} {r.operations:>9} {r.seconds:>9.3f} "
            f"{r.ops_per_second:>9} {r.us_per_op:>8.2f} {r.cpu_us_per_op:>10.2f} {r.errors:>7}"
        )
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
