"""Memory of resident load balancers in one process: the noop backend's state and the actor
layer's own bookkeeping, per load balancer, without a broker or worker processes.

    python -m bench.memory [--lbs 10000] [--members 1]

Every load balancer gets the tree ``python -m bench scale`` builds (a load balancer, a
listener, a pool, K members, a health monitor, an L7 policy and rule: 6 + K objects), with
driver-shaped payloads (``bench.actors.lifecycle``) run through an actor system as a worker
runs them, ``--concurrency`` trees at a time (the daemon's re-assertion schedule included);
then two statistics rounds, and the actors retire (idle). Measured with ``tracemalloc``
(live Python allocations, after a full collection). Prints one JSON line:

- ``backend_bytes_per_lb``: the noop backend's state, measured alone (the same operations
  run by :func:`~lbactors.dispatch.run_operation` on a backend of its own, two statistics
  reads), per load balancer;
- ``daemon_bytes_per_lb``: what the actor system holds beyond that (its bookkeeping of
  resident load balancers and of their operating statuses), per load balancer;
- ``rss_bytes_per_lb``: the process's RSS growth over the actor-system run, per load
  balancer (allocator overhead and fragmentation included; with ``--no-trace`` only, as
  tracemalloc's own bookkeeping inflates it).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import resource
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from bench.actors import lifecycle
from lbactors.actor import open_actor_system
from lbactors.backends import load_backend
from lbactors.dispatch import run_operation
from lbactors.messages import Operation, Outbound

#: the daemon's default re-assertion schedule (``[daemon] reassert_after``)
REASSERT_AFTER = (1.0, 3.0, 10.0)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``: free pages of the C heap go back to the system (what
    ``rss_trimmed_bytes_per_lb`` measures); elsewhere a no-op."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


def tree_steps(i: int, members: int) -> list[tuple[str, bytes]]:
    """The create steps of one resident tree with ``members`` members (1 or 2)."""
    steps = lifecycle(i)[:8]  # lb, listener, pool, member 1, member 2, hm, policy, rule
    if members == 1:
        del steps[4]
    return steps


async def _backend_alone(n_lbs: int, members: int, lb_ids: list[str]) -> int:
    """Traced bytes of the noop backend holding the trees, run as an actor runs them but
    without the actor system."""
    backend = load_backend("noop")
    base = _traced()
    op_id = 0
    for i in range(n_lbs):
        for method, args in tree_steps(i, members):
            outcome = await run_operation(
                backend, Operation(op_id=op_id, method=method, args=args, lb_id=lb_ids[i])
            )
            assert outcome.failure is None and outcome.status is not None, outcome
            op_id += 1
    for _ in range(2):
        await backend.read_many(lb_ids)
    held = _traced() - base
    await backend.aclose()
    return held


async def measure(
    n_lbs: int, members: int, trace: bool, top: int = 0, concurrency: int = 200
) -> dict[str, float]:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    lb_ids = [f"5e3f1c2a-0000-4000-8000-{i:012x}" for i in range(n_lbs)]
    objects = len(tree_steps(0, members))
    if trace:
        tracemalloc.start()
        backend_alone = await _backend_alone(n_lbs, members, lb_ids)
    backend = load_backend("noop")
    send, receive = trio.open_memory_channel[Outbound](math_inf())
    gc.collect()
    rss0 = _rss_bytes()
    base = _traced()
    async with trio.open_nursery() as nursery:
        outcomes = 0
        settled = trio.Event()
        expected = 0

        async def consume() -> None:
            nonlocal outcomes, settled
            async for item in receive:
                if type(item).__name__ == "Outcome":
                    outcomes += 1
                    if outcomes == expected:
                        settled.set()

        nursery.start_soon(consume)
        async with open_actor_system(
            backend, send, mailbox_size=64, idle_timeout=0.2, reassert_after=REASSERT_AFTER
        ) as system:
            op_id = 0
            # ``concurrency`` trees at a time, as the bench driver builds them
            for first in range(0, n_lbs, concurrency):
                chunk = range(first, min(first + concurrency, n_lbs))
                payloads = {i: tree_steps(i, members) for i in chunk}
                expected += len(chunk) * objects
                settled = trio.Event()
                for step in range(objects):
                    for i in chunk:
                        method, args = payloads[i][step]
                        await system.submit(
                            Operation(op_id=op_id, method=method, args=args, lb_id=lb_ids[i])
                        )
                        op_id += 1
                await settled.wait()
            del payloads
            trim = _malloc_trim()
            # re-assertions are done after the last delay; actors retire after idle_timeout
            await trio.sleep(REASSERT_AFTER[-1] + 1.0)
            for _ in range(2):
                await system.collect_statistics()
            await trio.sleep(0.5)
            assert system.actor_count() == 0, system.actor_count()
            assert system.resident_count() == n_lbs, system.resident_count()
            assert system.reassertions_pending() == 0
            resident = _traced()
            rss1 = _rss_bytes()
            trim()
            rss_trimmed = _rss_bytes()
            if trace and top:
                snapshot = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)])
                for stat in snapshot.statistics("lineno")[:top]:
                    print(f"{stat.size / n_lbs:8.0f} B/LB {stat.count / n_lbs:6.1f}/LB "
                          f"{stat.traceback}", file=sys.stderr)
            nursery.cancel_scope.cancel()
    if trace:
        tracemalloc.stop()
    result: dict[str, float] = {"lbs": n_lbs, "objects_per_lb": objects}
    if trace:
        result |= {
            "backend_bytes_per_lb": round(backend_alone / n_lbs),
            "daemon_bytes_per_lb": round((resident - base - backend_alone) / n_lbs),
            "traced_bytes_per_lb": round((resident - base) / n_lbs),
        }
    return result | {
        "rss_bytes_per_lb": round((rss1 - rss0) / n_lbs),
        "rss_trimmed_bytes_per_lb": round((rss_trimmed - rss0) / n_lbs),
        "rss_mib": round(rss1 / 2**20, 1),
    }


def math_inf() -> float:
    return float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--lbs", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=1, choices=(1, 2))
    parser.add_argument("--no-trace", action="store_true",
                        help="RSS only (tracemalloc's own bookkeeping inflates RSS)")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="trees built at a time (the bench driver's C)")
    parser.add_argument("--top", type=int, default=0,
                        help="print the N allocation sites holding most (to stderr)")
    args = parser.parse_args(argv)
    result = trio.run(measure, args.lbs, args.members, not args.no_trace, args.top,
                      args.concurrency)
    print(json.dumps({"bench": "memory", **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
