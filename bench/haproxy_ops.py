"""Operations per second and CPU per operation with the haproxy backend, reloads included.

``python -m bench.haproxy_ops [--lbs 100] [--updates 5] [--json]``

N load balancers (VIPs 127.1.x.y, loopback only) go through the actor system exactly as the
daemon runs them (``open_actor_system`` with the ``haproxy`` backend, operations as JSON
payloads), every load balancer's operations in its own actor, all load balancers at once:

1. ``build``: ``loadbalancer_create`` (starts HAProxy), ``listener_create``, ``pool_create``,
   two ``member_create`` and a TCP ``healthmonitor_create`` per load balancer (each but the
   first is render + ``haproxy -c`` + hitless reload + confirmation);
2. ``update``: ``member_update`` changing the weight, ``--updates`` per load balancer (one
   reload each);
3. ``redeliver``: the last update again (idempotent: render only, no reload);
4. ``delete``: ``loadbalancer_delete(cascade=True)`` of the whole tree (one reload per child,
   then the process stops).

Result on the 2-CPU development VM (HAProxy 2.6.12, ``--lbs 100 --updates 5``): build 600 ops
at 15.8 ops/s, 120 ms CPU/op (6 daemon, 58 ``haproxy -c``, 56 HAProxy reload); update 500
ops at 17.0 ops/s, 114 ms CPU/op; redelivered update 1566 ops/s, 1 ms CPU/op (no reload);
cascade delete 16.4 LB/s; 200 HAProxy processes, 695 MiB PSS. The two CPUs are the limit:
every changing operation starts HAProxy twice (the check, then the reloaded master and its new
worker), about 30 ms of CPU each even for a tiny configuration.

CPU is counted everywhere it is spent: this process and the children it waited for
(``haproxy -c``, the launcher) from ``getrusage``, plus every HAProxy master and worker from
``/proc`` (a master's ``cutime`` holds the workers it reaped after reloads). The HAProxy
processes that exit during the ``delete`` phase take their last ticks with them, so that
phase's HAProxy share is a lower bound.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from bench.procs import CLK_TCK, cpu_ticks, memory_kib, process_tree
from lbactors.actor import open_actor_system
from lbactors.backends import load_backend
from lbactors.messages import Operation, Outcome

PROJECT = "9c6f0000-0000-4000-8000-000000003a21"


def _ids(i: int) -> dict[str, str]:
    return {k: f"{k[:2]}{i:06d}-0000-4000-8000-00000000{n:04d}" for n, k in enumerate(
        ("loadbalancer", "listener", "pool", "member1", "member2", "healthmonitor"))}


def _vip(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def build_ops(i: int) -> list[tuple[str, dict[str, Any]]]:
    ids, vip = _ids(i), _vip(i)
    lb_id = ids["loadbalancer"]
    mini = {"id": lb_id, "vip_address": vip}
    lb = {"id": lb_id, "loadbalancer_id": lb_id, "name": f"lb-{i}", "admin_state_up": True,
          "vip_address": vip, "project_id": PROJECT, "listeners": [], "pools": []}
    listener = {"id": ids["listener"], "loadbalancer_id": lb_id, "protocol": "HTTP",
                "protocol_port": 8080, "connection_limit": -1, "admin_state_up": True,
                "loadbalancer": mini}
    pool = {"id": ids["pool"], "loadbalancer_id": lb_id, "listener_id": ids["listener"],
            "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN", "admin_state_up": True,
            "loadbalancer": mini}
    ops: list[tuple[str, dict[str, Any]]] = [
        ("loadbalancer_create", {"loadbalancer": lb}),
        ("listener_create", {"listener": listener, "cert": None}),
        ("pool_create", {"pool": pool}),
    ]
    for n in (1, 2):
        ops.append(("member_create", {"member": member(i, n, weight=1)}))
    ops.append(("healthmonitor_create", {"healthmonitor": {
        "id": ids["healthmonitor"], "pool_id": ids["pool"], "type": "TCP", "delay": 5,
        "timeout": 3, "max_retries": 3, "admin_state_up": True,
        "pool": {"id": ids["pool"], "loadbalancer_id": lb_id}}}))
    return ops


def member(i: int, n: int, *, weight: int) -> dict[str, Any]:
    ids = _ids(i)
    return {"id": ids[f"member{n}"], "pool_id": ids["pool"], "address": "127.0.0.1",
            "protocol_port": 9000 + n, "weight": weight, "admin_state_up": True,
            "loadbalancer_id": ids["loadbalancer"],
            "pool": {"id": ids["pool"], "loadbalancer_id": ids["loadbalancer"]}}


def update_ops(i: int, rounds: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("member_update", {"old_member": member(i, 1, weight=r + 1), "new_member": member(i, 1, weight=r + 2)})
        for r in range(rounds)
    ]


def delete_ops(i: int) -> list[tuple[str, dict[str, Any]]]:
    ids = _ids(i)
    built = dict(build_ops(i)[:3])
    lb = built["loadbalancer_create"]["loadbalancer"] | {
        "listeners": [built["listener_create"]["listener"]],
        "pools": [built["pool_create"]["pool"] | {"members": [member(i, 1, weight=1), member(i, 2, weight=1)],
                                   "healthmonitor": {"id": ids["healthmonitor"]}}],
    }
    return [("loadbalancer_delete", {"loadbalancer": lb, "cascade": True})]


def haproxy_pids(state_dir: Path) -> list[int]:
    pids = []
    for pid_file in state_dir.glob("*/haproxy.pid"):
        try:
            pids += process_tree(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return pids


class CpuMeter:
    """CPU seconds of this process, its reaped children and every HAProxy of ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.before = self._snapshot()

    def _snapshot(self) -> tuple[float, float, dict[int, tuple[int, int]]]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            own.ru_utime + own.ru_stime,
            children.ru_utime + children.ru_stime,
            {pid: cpu_ticks(pid) for pid in haproxy_pids(self.state_dir)},
        )

    def seconds(self) -> dict[str, float]:
        own0, children0, procs0 = self.before
        own1, children1, procs1 = self._snapshot()
        ticks = 0
        for pid, (own, reaped) in procs1.items():
            a, b = procs0.get(pid, (0, 0))
            ticks += (own - a) + (reaped - b)
        return {"daemon": own1 - own0, "haproxy_check": children1 - children0, "haproxy": ticks / CLK_TCK}


async def run_phase(system: Any, outcomes: Any, name: str, ops: list[list[tuple[str, dict[str, Any]]]],
                    state_dir: Path, op_ids: Any) -> dict[str, Any]:
    """Submit every load balancer's operations (in order per LB, all LBs interleaved);
    ``ops[i]`` are the operations of load balancer ``i``."""
    total = sum(len(o) for o in ops)
    meter = CpuMeter(state_dir)
    started = time.perf_counter()
    failures = 0

    async def collect() -> None:
        nonlocal failures
        for _ in range(total):
            outcome: Outcome = await outcomes.receive()
            status = outcome.status
            if outcome.failure is not None or status is None or any(
                e.provisioning_status == "ERROR"
                for entries in msgspec.structs.astuple(status) if isinstance(entries, list)
                for e in entries
            ):
                failures += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        for batch in itertools.zip_longest(*ops):
            for i, item in enumerate(batch):
                if item is None:
                    continue
                method, kwargs = item
                lb_id = _ids(i)["loadbalancer"]
                await system.submit(Operation(op_id=next(op_ids), method=method,
                                              args=msgspec.json.encode(kwargs), lb_id=lb_id))
            await trio.lowlevel.checkpoint()
    elapsed = time.perf_counter() - started
    cpu = meter.seconds()
    cpu_total = sum(cpu.values())
    return {
        "phase": name, "operations": total, "failures": failures, "seconds": round(elapsed, 3),
        "ops_per_s": round(total / elapsed, 1),
        "cpu_ms_per_op": round(1000 * cpu_total / total, 2),
        "cpu_ms_per_op_split": {k: round(1000 * v / total, 2) for k, v in cpu.items()},
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="lbhb"))
    backend = load_backend("haproxy", {"state_dir": str(state_dir)})
    send, receive = trio.open_memory_channel[Outcome](args.lbs * 16)
    op_ids = itertools.count()
    results = []
    try:
        async with open_actor_system(backend, send) as system:
            lbs = range(args.lbs)
            results.append(await run_phase(system, receive, "build", [build_ops(i) for i in lbs], state_dir, op_ids))
            pids = haproxy_pids(state_dir)
            memory = memory_kib(pids)
            results[-1]["haproxy_processes"] = len(pids)
            results[-1]["haproxy_pss_mib"] = round(memory["pss_kib"] / 1024, 1)
            results.append(await run_phase(system, receive, "update", [update_ops(i, args.updates) for i in lbs], state_dir, op_ids))
            results.append(await run_phase(system, receive, "redeliver", [update_ops(i, args.updates)[-1:] for i in lbs], state_dir, op_ids))
            results.append(await run_phase(system, receive, "delete", [delete_ops(i) for i in lbs], state_dir, op_ids))
    finally:
        await backend.stop_all()  # type: ignore[attr-defined]
        await backend.aclose()
        if not args.state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lbs", type=int, default=100)
    parser.add_argument("--updates", type=int, default=5, help="member updates per load balancer")
    parser.add_argument("--state-dir", help="default: a temporary directory, removed afterwards")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = parser.parse_args(argv)
    if shutil.which("haproxy") is None:
        print("haproxy is not installed", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = trio.run(main_async, args)
    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    print(f"haproxy backend, {args.lbs} load balancers (each phase: all load balancers at once)")
    print(f"{'phase':<10} {'ops':>5} {'fail':>4} {'s':>7} {'ops/s':>7} {'CPU ms/op':>9}  split (daemon / haproxy -c / haproxy)")
    for r in results:
        split = r["cpu_ms_per_op_split"]
        print(f"{r['phase']:<10} {r['operations']:>5} {r['failures']:>4} {r['seconds']:>7} {r['ops_per_s']:>7} "
              f"{r['cpu_ms_per_op']:>9}  {split['daemon']} / {split['haproxy_check']} / {split['haproxy']}")
    build = results[0]
    print(f"after build: {build.get('haproxy_processes')} HAProxy processes, PSS {build.get('haproxy_pss_mib')} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
