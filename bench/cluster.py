"""``python -m bench cluster``: several ``lbactors serve`` daemons on a 3-node RabbitMQ cluster.

One run measures two things (docs/cluster.md is the design; tests/rabbit_cluster.py and
tests/cluster_daemons.py are the harness it borrows from the cluster tests):

**Throughput and CPU.** The bench driver's workload (``--lbs``, ``--members``,
``--concurrency``) against, one row each:

- ``single broker``: 1 daemon, cluster mode off, on the machine's broker (``--amqp-url``);
- ``3-node, no cluster mode``: 1 daemon, cluster mode off, on the private 3-node cluster;
- ``3-node, cluster mode, N daemons`` for N in ``--daemons`` (1, 2, 3): cluster mode on
  (12 shards, balance every second), measured once every daemon holds 12/N shards.

Every daemon has ``LBACTORS_DAEMON_WORKERS=1``, ``LBACTORS_AMQP_QUORUM_QUEUES=true`` (the
driver's queues are quorum queues too), the noop backend, no trace, and a URL listing every
node starting at its own (daemon i at node i). The driver connects to node 0. Per row: ops/s,
completed / errors / missing, p50 / p95 latency, the daemons' CPU per operation (every
daemon's process tree, summed), the broker's CPU per operation (the ``beam.smp`` of the
machine's broker; of the three cluster nodes, summed) and the machine's busy share. The two
1-daemon rows on the 3-node cluster differ only by cluster mode, so their broker CPU per
operation differs by the re-publish hop (topic queue -> shard queue, confirmed before the ack).

**Failover.** 3 daemons in cluster mode with the noop backend's call trace, under a continuous
load (the driver's workload played again and again, ``--failover-lbs`` load balancers at
``--failover-concurrency``, fresh load balancer ids every time). ``--kills`` rounds, rotating
the victim: ``kill -9`` one daemon (its supervisor; the kill time is ``time.monotonic_ns()``
just before the signal), wait until the other two hold 6 shards each, start it again, wait
for 4/4/4. From the traces, per kill, for every key (load balancer) whose last backend call
started before the kill ran on the victim's worker: **gap** = the first start of one of its
calls on another process - the end of its last call on the victim (a call that never ended
ends at the kill), and **kill -> elsewhere** = that first start - the kill. The takeover
delay (``cluster.takeover_delay``, 1 s by default) is part of both for a shard whose first
delivery to the new owner is redelivered (the killed daemon had it in hand); a shard taken over
with nothing in hand runs at once.

Results: ``bench/results/cluster.md`` and ``bench/results/raw/cluster-*.jsonl``; the daemons'
logs and traces stay in a ``mktemp -d`` directory printed at the start.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import trio

from bench import procs, report
from bench.driver import DEFAULT_AMQP_URL, open_driver

REPO = Path(__file__).resolve().parents[1]
SHARDS = 12
#: systemd's watchdog period is half of it: a STATUS= line (``shards k/12``) every second
WATCHDOG_ENV = {"WATCHDOG_USEC": "2000000"}

Row = dict[str, Any]


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- processes ------------------------------------------------------------------------------

def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _is_beam(pid: int) -> bool:
    return b"beam" in _cmdline(pid).split(b"\0", 1)[0]


def cluster_broker_pids(cluster: Any) -> list[int]:
    """The ``beam.smp`` of every node (a child of the ``rabbitmq-server`` shell started by
    tests/rabbit_cluster.py, in the node's process group)."""
    pids = []
    for node in cluster.nodes:
        assert node.process is not None, f"{node.name} is not running"
        pids += [pid for pid in procs.process_tree(node.process.pid) if _is_beam(pid)]
    return pids


def local_broker_pid() -> int | None:
    """The machine's RabbitMQ ``beam.smp`` (not a node of a private test cluster)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmd = _cmdline(int(entry.name))
        if (b"beam" in cmd.split(b"\0", 1)[0] and b"rabbit" in cmd
                and b"lbt-rabbit-cluster" not in cmd):
            return int(entry.name)
    return None


def single_broker(amqp_url: str) -> Any:
    """The machine's broker in the shape ``ClusterDaemons`` reads (``nodes[i].amqp_port``)."""
    return SimpleNamespace(nodes=[SimpleNamespace(amqp_port=urlsplit(amqp_url).port or 5672)])


def held_shards(daemons: Any, index: int) -> int | None:
    """Shards daemon ``index`` holds, from its last ``STATUS=`` line (None: none yet)."""
    for message in reversed(daemons.process(index).notify.messages):
        found = re.search(r"shards (\d+)/\d+", message)
        if found:
            return int(found.group(1))
    return None


async def wait_for_shares(daemons: Any, live: list[int], share: int) -> float:
    """Until every daemon in ``live`` holds ``share`` shards (the caller bounds the wait); the
    seconds it took."""
    started = time.monotonic()
    # polled: the STATUS= lines arrive on each process's own notification socket
    while [held_shards(daemons, i) for i in live] != [share] * len(live):  # noqa: ASYNC110
        await trio.sleep(0.05)
    return round(time.monotonic() - started, 2)


async def _shares(args: argparse.Namespace, daemons: Any, live: list[int], share: int) -> float:
    with trio.fail_after(args.shares_timeout):
        return await wait_for_shares(daemons, live, share)


# ---- throughput and CPU ---------------------------------------------------------------------

async def throughput_row(args: argparse.Namespace, cluster: Any, directory: Path, *,
                         count: int, cluster_mode: bool, label: str,
                         broker_pids: list[int]) -> Row:
    from tests.cluster_daemons import open_cluster_daemons

    env = WATCHDOG_ENV | {"LBACTORS_LOG_LEVEL": args.daemon_log_level}
    async with open_cluster_daemons(cluster, directory, count, cluster_mode=cluster_mode,
                                    trace=False, extra_env=env) as daemons:
        balanced = None
        if cluster_mode:
            balanced = await _shares(args, daemons, list(range(count)), SHARDS // count)
        config = daemons.driver_config(lbs=args.lbs, members=args.members,
                                       concurrency=args.concurrency, timeout=args.timeout,
                                       max_duration=args.max_duration, drain=args.drain)
        busy_before = await trio.to_thread.run_sync(procs.idle_check, 1.0)
        async with open_driver(config) as driver:
            daemon_cpu = [procs.TreeCpu(daemons.process(i).pid) for i in range(count)]
            broker_cpu = [procs.TreeCpu(pid) for pid in broker_pids]
            load = procs.MachineLoad()
            result = await driver.run_workload()
            daemon_s = sum(c.seconds() for c in daemon_cpu)
            broker_s = sum(c.seconds() for c in broker_cpu)
            busy = load.busy_pct()
        shares = [held_shards(daemons, i) for i in range(count)] if cluster_mode else None
    ops = result["ops_completed"]
    lat = result["latency_ms"]
    return {
        "kind": "throughput",
        "target": label,
        "daemons": count,
        "cluster_mode": cluster_mode,
        "broker_nodes": len(cluster.nodes),
        "lbs": result["lbs"],
        "members": args.members,
        "concurrency": args.concurrency,
        "ops_planned": result["ops_planned"],
        "ops_completed": ops,
        "errors": result["errors"],
        "missing_status_updates": result["missing_status_updates"],
        #: statuses matching no operation in flight: re-assertions (1 s after a create)
        "unmatched_status_updates": result["unmatched_status_updates"],
        "ok": (ops == result["ops_planned"] and result["errors"] == 0
               and result["missing_status_updates"] == 0),
        "ops_per_s": result["ops_per_s"],
        "p50_ms": lat.get("p50"),
        "p95_ms": lat.get("p95"),
        "p99_ms": lat.get("p99"),
        "max_ms": lat.get("max"),
        "daemon_cpu_s": round(daemon_s, 3),
        "daemon_cpu_ms_per_op": round(daemon_s * 1000 / ops, 3) if ops else None,
        "broker_cpu_s": round(broker_s, 3),
        "broker_cpu_ms_per_op": round(broker_s * 1000 / ops, 3) if ops else None,
        "driver_cpu_ms_per_op": result["driver_cpu_ms_per_op"],
        "machine_busy_pct": busy,
        "busy_before_pct": busy_before,
        "balanced_after_s": balanced,
        "shares": "/".join(str(s) for s in shares) if shares else None,
        "driver": {k: v for k, v in result.items() if k != "per_op_latency_ms"},
    }


# ---- failover -------------------------------------------------------------------------------

@dataclass
class Kill:
    round: int
    victim: int
    workers: list[int]
    at_ns: int
    shares_6_s: float = 0.0
    restart_s: float = 0.0
    shares_4_s: float = 0.0
    keys: dict[str, tuple[int, int]] = field(default_factory=dict)


def read_calls(paths: list[Path], scratch: Path) -> list[Any]:
    """Every traced call; a line cut short by a kill -9 is left out (read_trace refuses it)."""
    from tests.backend_trace import read_trace

    calls = []
    for number, path in enumerate(paths):
        if not path.exists():
            continue
        lines = [line for line in path.read_text(errors="replace").splitlines()
                 if len(line.split()) == 6 and line.split()[5].isdigit()]
        clean = scratch / f"clean-{number}.log"
        clean.write_text("\n".join(lines) + "\n" if lines else "")
        calls += read_trace(clean)
    return calls


def analyse_kill(kill: Kill, by_key: dict[str, list[Any]]) -> Row:
    """Per key last run on the victim before the kill: the gap and kill -> elsewhere (ms)."""
    killed = set(kill.workers)
    gaps, firsts = [], []
    for calls in by_key.values():
        before = [c for c in calls if c.start < kill.at_ns]
        if not before or before[-1].pid not in killed:
            continue
        last_end = max((c.end if c.end is not None else kill.at_ns)
                       for c in before if c.pid in killed)
        after = [c for c in calls if c.pid not in killed and c.start >= kill.at_ns]
        if not after:
            continue  # its last operation ran on the victim (or the run ended there)
        first = min(c.start for c in after)
        gaps.append((first - last_end) / 1e6)
        firsts.append((first - kill.at_ns) / 1e6)
    return {
        "kind": "failover",
        "target": f"kill {kill.round + 1} (daemon {kill.victim})",
        "round": kill.round + 1,
        "victim": kill.victim,
        "keys": len(gaps),
        "gap_max_ms": round(max(gaps), 1) if gaps else None,
        "gap_median_ms": round(statistics.median(gaps), 1) if gaps else None,
        "kill_to_first_elsewhere_ms": round(min(firsts), 1) if firsts else None,
        "kill_to_last_key_elsewhere_ms": round(max(firsts), 1) if firsts else None,
        "shares_6_6_after_s": kill.shares_6_s,
        "restart_ready_s": kill.restart_s,
        "shares_4_4_4_after_s": kill.shares_4_s,
        "kill_ns": kill.at_ns,
        "victim_worker_pids": kill.workers,
    }


async def failover(args: argparse.Namespace, cluster: Any, directory: Path
                   ) -> tuple[list[Kill], list[Any], list[Row]]:
    """The kill rounds under load; (kills, traced calls, the driver's results per run)."""
    from tests.cluster_daemons import open_cluster_daemons

    kills: list[Kill] = []
    results: list[Row] = []
    env = WATCHDOG_ENV | {"LBACTORS_LOG_LEVEL": args.failover_log_level}
    async with open_cluster_daemons(cluster, directory, 3, trace=True, extra_env=env) as daemons:
        await _shares(args, daemons, [0, 1, 2], 4)
        config = daemons.driver_config(lbs=args.failover_lbs, members=args.members,
                                       concurrency=args.failover_concurrency, timeout=90.0,
                                       max_duration=args.max_duration, drain=0.2)
        async with open_driver(config) as driver:
            done = False

            async def load() -> None:
                run = 0
                while not done:
                    result = await driver.run_workload(first_index=run * args.failover_lbs)
                    results.append({k: v for k, v in result.items()
                                    if k != "per_op_latency_ms"})
                    run += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(load)
                await trio.sleep(args.warmup)
                for round_ in range(args.kills):
                    victim = round_ % 3
                    others = [i for i in range(3) if i != victim]
                    workers = daemons.process(victim).worker_pids()
                    kill = Kill(round_, victim, workers, time.monotonic_ns())
                    await daemons.kill(victim)
                    kill.shares_6_s = await _shares(args, daemons, others, 6)
                    started = time.monotonic()
                    await daemons.start(victim)
                    kill.restart_s = round(time.monotonic() - started, 2)
                    kill.shares_4_s = await _shares(args, daemons, [0, 1, 2], 4)
                    kills.append(kill)
                    _log(f"kill {round_ + 1}: daemon {victim}, 6/6 after {kill.shares_6_s} s, "
                         f"restarted in {kill.restart_s} s, 4/4/4 after {kill.shares_4_s} s")
                    await trio.sleep(args.settle)
                done = True  # the run in progress finishes
        calls = read_calls(list(daemons.trace_files), directory)
    return kills, calls, results


def daemon_log_events(directory: Path) -> dict[str, int]:
    """Warnings and errors the daemons logged, by event (a fence shows here)."""
    import json

    counts: dict[str, int] = {}
    for path in sorted(directory.glob("daemon*.log")):
        for raw in path.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("level") in ("warning", "error", "critical"):
                key = f"{path.stem}: {str(line.get('event'))[:60]}"
                counts[key] = counts.get(key, 0) + 1
    return counts


def failover_rows(kills: list[Kill], calls: list[Any]) -> list[Row]:
    by_key: dict[str, list[Any]] = {}
    for call in sorted(calls, key=lambda c: c.start):
        by_key.setdefault(call.key, []).append(call)
    return [analyse_kill(kill, by_key) for kill in kills]


def failover_summary(rows: list[Row]) -> Row:
    out: Row = {"kind": "failover_summary", "target": f"over {len(rows)} kills"}
    for key in ("gap_max_ms", "gap_median_ms", "kill_to_first_elsewhere_ms",
                "kill_to_last_key_elsewhere_ms", "shares_6_6_after_s", "shares_4_4_4_after_s"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {"min": min(values), "median": round(statistics.median(values), 1),
                        "max": max(values)}
    out["keys"] = sum(r["keys"] for r in rows)
    return out


# ---- the scenario ---------------------------------------------------------------------------

THROUGHPUT_COLUMNS = [
    ("target", "setup"), ("ops_completed", "ops"), ("errors", "errors"),
    ("missing_status_updates", "missing"), ("unmatched_status_updates", "unmatched statuses"),
    ("ops_per_s", "ops/s"), ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"), ("daemon_cpu_ms_per_op", "daemons CPU ms/op"),
    ("broker_cpu_ms_per_op", "broker CPU ms/op"), ("driver_cpu_ms_per_op", "driver CPU ms/op"),
    ("machine_busy_pct", "machine busy %"), ("shares", "shards held"),
]
FAILOVER_COLUMNS = [
    ("target", "kill"), ("keys", "keys moved"), ("gap_max_ms", "gap max ms"),
    ("gap_median_ms", "gap median ms"), ("kill_to_first_elsewhere_ms", "kill → first elsewhere ms"),
    ("kill_to_last_key_elsewhere_ms", "kill → last key elsewhere ms"),
    ("shares_6_6_after_s", "6/6 after s"), ("restart_ready_s", "restart READY s"),
    ("shares_4_4_4_after_s", "4/4/4 after s"),
]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def _spread(summary: Row, key: str) -> str:
    v = summary.get(key)
    return f"{v['min']} / {v['median']} / {v['max']}" if v else "–"


def scenario_cluster(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from tests.rabbit_cluster import rabbit_cluster

    directory = Path(tempfile.mkdtemp(prefix="lbactors-bench-cluster-"))
    _log(f"daemon logs and traces: {directory}")
    writer = report.ResultsWriter("cluster", Path(args.results))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    counts = [int(n) for n in args.daemons.split(",") if n.strip()]
    rows: list[Row] = []

    def add(row: Row) -> None:
        writer.add(row)
        rows.append(row)
        if row["kind"] == "throughput":
            _log(f"{row['target']:>34}: {row['ops_completed']}/{row['ops_planned']} ops "
                 f"{row['ops_per_s']} ops/s p50 {row['p50_ms']} ms p95 {row['p95_ms']} ms "
                 f"daemons {row['daemon_cpu_ms_per_op']} ms/op broker "
                 f"{row['broker_cpu_ms_per_op']} ms/op busy {row['machine_busy_pct']}%")

    broker = local_broker_pid()
    if broker is None:
        _log("no local RabbitMQ found: its CPU is left out")
    add(trio.run(partial(
        throughput_row, args, single_broker(args.amqp_url), directory / "single", count=1,
        cluster_mode=False, label="single broker, 1 daemon",
        broker_pids=[broker] if broker else [])))
    kills: list[Kill] = []
    fail_rows: list[Row] = []
    loads: list[Row] = []
    with rabbit_cluster(3) as cluster:
        _log(f"3-node cluster up in {cluster.startup_seconds.get('total', 0):.1f} s")
        beams = cluster_broker_pids(cluster)
        add(trio.run(partial(
            throughput_row, args, cluster, directory / "nocluster", count=1, cluster_mode=False,
            label="3-node, no cluster mode, 1 daemon", broker_pids=beams)))
        for n in counts:
            add(trio.run(partial(
                throughput_row, args, cluster, directory / f"cluster{n}", count=n, cluster_mode=True,
                label=f"3-node, cluster mode, {n} daemon{'s' if n > 1 else ''}",
                broker_pids=beams)))
        if args.kills:
            kills, calls, loads = trio.run(failover, args, cluster, directory / "failover")
            fail_rows = failover_rows(kills, calls)
            for row in fail_rows:
                add(row)
    summary = failover_summary(fail_rows) if fail_rows else None
    load_errors = sum(r["errors"] for r in loads)
    load_missing = sum(r["missing_status_updates"] for r in loads)
    if summary:
        summary |= {"load_runs": len(loads), "load_ops": sum(r["ops_completed"] for r in loads),
                    "load_errors": load_errors, "load_missing": load_missing,
                    "load_max_latency_ms": max((r["latency_ms"].get("max") or 0) for r in loads)
                    if loads else None,
                    # what went wrong, as the driver saw it (validation errors name the check)
                    "load_error_samples": [sample for r in loads if r["errors"]
                                           for kind, samples in r.get("samples", {}).items()
                                           if kind != "unmatched" for sample in samples][:20]}
        summary["daemon_warnings"] = daemon_log_events(directory / "failover")
        writer.add(summary)
    write_markdown(args, writer, rows, summary, started, directory)
    ok = all(r["ok"] for r in rows if r["kind"] == "throughput")
    return 0 if ok and not load_errors and not load_missing else 2


def write_markdown(args: argparse.Namespace, writer: report.ResultsWriter, rows: list[Row],
                   summary: Row | None, started: str, directory: Path) -> None:
    through = [r for r in rows if r["kind"] == "throughput"]
    fails = [r for r in rows if r["kind"] == "failover"]
    by = {r["target"]: r for r in through}
    single = by.get("single broker, 1 daemon")
    plain = by.get("3-node, no cluster mode, 1 daemon")
    one = by.get("3-node, cluster mode, 1 daemon")
    three = by.get("3-node, cluster mode, 3 daemons")
    command = (f"python -m bench cluster --lbs {args.lbs} --members {args.members} "
               f"--concurrency {args.concurrency} --kills {args.kills} --failover-lbs "
               f"{args.failover_lbs} --failover-concurrency {args.failover_concurrency}")
    notes = [
        "",
        f"Command: `{command}`; {started}; 2 CPUs shared by the driver, the daemons, the "
        "machine's broker and the 3 nodes (RabbitMQ 3.10). Every daemon: 1 worker, quorum "
        "queues, noop backend, log level "
        f"{args.daemon_log_level}; cluster mode with 12 shards, balance every 1 s, rows "
        "measured once the shares were even. Daemons CPU: every daemon's process tree, "
        "summed; broker CPU: the machine's beam.smp (first row), the 3 nodes' beam.smp summed "
        "(the others). **unmatched statuses**: status casts matching no operation in flight, "
        "the daemons' re-assertions (1 s after a create whose load balancer queues nothing, "
        "`status.reassert_after`); when one names an object whose next operation is in flight "
        "the driver takes it for that operation's status and counts a validation error "
        "(parents not ACTIVE): the **errors** of a row whose round trips exceed 1 s.",
    ]
    if single and three:
        notes.append(
            f"- 3 daemons on the cluster vs 1 daemon on the single broker: ops/s × "
            f"{_ratio(three['ops_per_s'], single['ops_per_s'])}, p50 × "
            f"{_ratio(three['p50_ms'], single['p50_ms'])}, daemons CPU/op × "
            f"{_ratio(three['daemon_cpu_ms_per_op'], single['daemon_cpu_ms_per_op'])}, broker "
            f"CPU/op × {_ratio(three['broker_cpu_ms_per_op'], single['broker_cpu_ms_per_op'])}.")
    if one and plain:
        hop = (one["broker_cpu_ms_per_op"] or 0) - (plain["broker_cpu_ms_per_op"] or 0)
        notes.append(
            f"- The re-publish hop (1 daemon on the cluster, cluster mode on vs off): broker "
            f"CPU {one['broker_cpu_ms_per_op']} vs {plain['broker_cpu_ms_per_op']} ms/op, "
            f"+{hop:.3f} ms/op (× {_ratio(one['broker_cpu_ms_per_op'], plain['broker_cpu_ms_per_op'])}); "
            f"daemon CPU/op × {_ratio(one['daemon_cpu_ms_per_op'], plain['daemon_cpu_ms_per_op'])}; "
            f"ops/s × {_ratio(one['ops_per_s'], plain['ops_per_s'])}.")
    if plain and single:
        notes.append(
            f"- The 3-node cluster itself (1 daemon, no cluster mode): ops/s × "
            f"{_ratio(plain['ops_per_s'], single['ops_per_s'])} of the single broker's, broker "
            f"CPU/op × {_ratio(plain['broker_cpu_ms_per_op'], single['broker_cpu_ms_per_op'])}.")
    text = report.markdown_table(through, THROUGHPUT_COLUMNS) + "\n" + "\n".join(notes) + "\n"
    if fails and summary:
        text += "\n### Failover: kill -9 of one of 3 daemons\n\n"
        text += report.markdown_table(fails, FAILOVER_COLUMNS)
        text += "\n" + "\n".join([
            "",
            f"Over {len(fails)} kills (min / median / max): gap max "
            f"{_spread(summary, 'gap_max_ms')} ms; gap median {_spread(summary, 'gap_median_ms')} "
            f"ms; kill → first call elsewhere {_spread(summary, 'kill_to_first_elsewhere_ms')} ms; "
            f"kill → last key elsewhere {_spread(summary, 'kill_to_last_key_elsewhere_ms')} ms; "
            f"6/6 after {_spread(summary, 'shares_6_6_after_s')} s; 4/4/4 after restart "
            f"{_spread(summary, 'shares_4_4_4_after_s')} s.",
            "",
            f"Load during the kills: {summary['load_runs']} runs of {args.failover_lbs} load "
            f"balancers at C={args.failover_concurrency}, {summary['load_ops']} operations, "
            f"{summary['load_errors']} errors, {summary['load_missing']} missing status "
            f"updates, max latency {summary['load_max_latency_ms']} ms. Warnings and errors "
            "the daemons logged: "
            + (", ".join(f"{k} × {v}" for k, v in summary["daemon_warnings"].items())
               or "none") + ".",
            "",
            "**gap**: per key (load balancer) whose last backend call before the kill ran on "
            "the killed daemon's worker, its first call on another daemon's worker - the end of "
            "its last call on the killed one (a call cut by the kill ends at the kill); it "
            "includes the driver's round trip when the cut call had completed. **kill → first "
            "elsewhere**: the kill to the first such call of any of those keys. The takeover "
            "delay (`cluster.takeover_delay`, default 1 s, LBACTORS_CLUSTER_TAKEOVER_DELAY) is "
            "part of both when the new owner's first delivery of a shard is redelivered (the "
            "killed daemon had it in hand): it waits that long before running it. A shard the "
            "killed daemon held with nothing in hand runs at once (docs/cluster.md, takeover "
            "delay): the kills with a first call elsewhere well under 1 s. The daemons' "
            "`shard active here` lines say which (`redelivered`).",
            "",
            f"Daemon logs and traces of this run: `{directory}` (not kept in git).",
        ]) + "\n"
    path = writer.results / "cluster.md"
    path.write_text("### Several daemons on a RabbitMQ cluster\n\n" + text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amqp-url", default=DEFAULT_AMQP_URL, help="the single broker of row 1")
    p.add_argument("--lbs", type=int, default=200, help="load balancers per throughput row")
    p.add_argument("--members", type=int, default=4, help="members per pool")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--daemons", default="1,2,3", help="cluster-mode rows: daemons in each")
    p.add_argument("--timeout", type=float, default=60.0, help="s for one status update")
    p.add_argument("--max-duration", type=float, default=900.0)
    p.add_argument("--drain", type=float, default=0.5)
    p.add_argument("--daemon-log-level", default="warning")
    p.add_argument("--kills", type=int, default=10, help="failover rounds (0: none)")
    p.add_argument("--failover-lbs", type=int, default=100,
                   help="load balancers per run of the continuous load")
    p.add_argument("--failover-concurrency", type=int, default=20)
    p.add_argument("--failover-log-level", default="info")
    p.add_argument("--warmup", type=float, default=3.0, help="s of load before the first kill")
    p.add_argument("--settle", type=float, default=2.0, help="s of load after each 4/4/4")
    p.add_argument("--shares-timeout", type=float, default=90.0)
    p.add_argument("--results", default=str(report.RESULTS))
