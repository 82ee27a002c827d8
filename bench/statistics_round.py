"""The cost of one statistics round over many resident load balancers (one listener each).

    python -m bench.statistics_round [--sizes 10000,100000] [--workers 2]

The load balancers (with a listener each) are created through the actors of W in-process actor
systems with the noop backend, as W worker processes would hold them. Then one round runs the
way the daemon runs it, every step timed with the process CPU clock:

1. each worker's ``collect_statistics()`` (backend reads, operating-status deltas);
2. its ``StatsReport`` frame encoded and decoded (the supervisor <-> worker hop);
3. the supervisor's batching into ``update_listener_statistics`` casts of ``stats.batch``
   listeners, each rendered into its oslo envelope (what goes on the wire).

A first round reports every operating status (all new); the second, measured again, only the
changes (none). Prints one JSON line per size and round, then a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import msgspec
import structlog
import trio

from lbactors import ipc
from lbactors.actor import ActorSystem, open_actor_system
from lbactors.amqp import oslo
from lbactors.backends import load_backend
from lbactors.messages import Operation, Outcome
from lbactors.routing import shard
from lbactors.statistics import batches, merge_status_changes, statistics_args, status_args


def _operations(i: int) -> list[tuple[str, bytes]]:
    lb_id = f"5e3f1c2a-0000-4000-8000-{i:012x}"
    listener_id = f"a1b2c3d4-0000-4000-8000-{i:012x}"
    lb = {"id": lb_id, "name": f"lb-{i}", "vip_address": "10.0.0.10", "admin_state_up": True}
    listener = {
        "id": listener_id,
        "loadbalancer_id": lb_id,
        "name": f"listener-{i}",
        "protocol": "HTTP",
        "protocol_port": 80,
        "admin_state_up": True,
        "loadbalancer": lb,
    }
    return [
        ("loadbalancer_create", msgspec.json.encode({"loadbalancer": lb})),
        ("listener_create", msgspec.json.encode({"listener": listener, "cert": None})),
    ]


async def _populate(systems: list[ActorSystem], n_lbs: int) -> None:
    op_id = 0
    for i in range(n_lbs):
        for method, args in _operations(i):
            op_id += 1
            lb_id = f"5e3f1c2a-0000-4000-8000-{i:012x}"
            system = systems[shard(lb_id, len(systems))]
            await system.submit(Operation(op_id=op_id, method=method, args=args, lb_id=lb_id))


async def _round(systems: list[ActorSystem], batch: int) -> dict[str, float | int]:
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(ipc.Frame)
    t0 = time.process_time()
    reports = []
    for number, system in enumerate(systems):
        listeners, changes = await system.collect_statistics()
        reports.append(ipc.StatsReport(round=number, listeners=listeners, status_changes=changes))
    t1 = time.process_time()
    frames = [encoder.encode(report) for report in reports]
    received = [decoder.decode(frame) for frame in frames]
    t2 = time.process_time()
    listeners = [entry for report in received for entry in report.listeners]  # type: ignore[union-attr]
    messages = 0
    wire_bytes = 0
    for chunk in batches(listeners, batch):
        wire_bytes += len(oslo.encode_cast("update_listener_statistics", statistics_args(chunk)))
        messages += 1
    changes = merge_status_changes(
        change for report in received for change in report.status_changes  # type: ignore[union-attr]
    )
    if changes is not None:
        wire_bytes += len(oslo.encode_cast("update_loadbalancer_status", status_args(changes)))
        messages += 1
    t3 = time.process_time()
    return {
        "listeners": len(listeners),
        "messages": messages,
        "wire_bytes": wire_bytes,
        "ipc_bytes": sum(len(frame) for frame in frames),
        "collect_cpu_s": round(t1 - t0, 3),
        "ipc_cpu_s": round(t2 - t1, 3),
        "encode_cpu_s": round(t3 - t2, 3),
        "round_cpu_s": round(t3 - t0, 3),
    }


async def run_size(n_lbs: int, workers: int, batch: int) -> list[dict[str, float | int]]:
    results = []
    async with trio.open_nursery() as nursery:
        systems: list[ActorSystem] = []
        done = [0]
        all_done = trio.Event()

        async def drain(receive: trio.MemoryReceiveChannel[Outcome]) -> None:
            async for outcome in receive:
                assert outcome.failure is None, outcome.failure
                done[0] += 1
                if done[0] == 2 * n_lbs:
                    all_done.set()

        for _ in range(workers):
            send, receive = trio.open_memory_channel[Outcome](1024)
            nursery.start_soon(drain, receive)
            system = await nursery.start(_serve_system, send)
            systems.append(system)
        started = time.perf_counter()
        await _populate(systems, n_lbs)
        await all_done.wait()
        populated_s = time.perf_counter() - started
        for label in ("first", "second"):
            gc.collect()
            result = await _round(systems, batch)
            results.append({"bench": "statistics_round", "load_balancers": n_lbs,
                            "workers": workers, "round": label,
                            "populate_s": round(populated_s, 2)} | result)
        nursery.cancel_scope.cancel()
    return results


async def _serve_system(
    send: trio.MemorySendChannel[Outcome], *, task_status: trio.TaskStatus[ActorSystem]
) -> None:
    async with open_actor_system(load_backend("noop"), send, mailbox_size=64) as system:
        task_status.started(system)
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.statistics_round", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="numbers of resident load balancers")
    parser.add_argument("--workers", type=int, default=2, help="actor systems (worker processes)")
    parser.add_argument("--batch", type=int, default=1000, help="listeners per statistics cast")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for row in trio.run(run_size, size, args.workers, args.batch):
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print(f"{'LBs':>8} {'round':>6} {'msgs':>5} {'collect s':>9} {'ipc s':>6} {'encode s':>8} {'CPU s':>6}")
    for r in rows:
        print(f"{r['load_balancers']:>8} {r['round']:>6} {r['messages']:>5} {r['collect_cpu_s']:>9} "
              f"{r['ipc_cpu_s']:>6} {r['encode_cpu_s']:>8} {r['round_cpu_s']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
