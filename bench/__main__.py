"""``python -m bench <scenario> …``: throughput, latency, CPU and scale of lbactors on the wire.

Scenarios (``python -m bench <scenario> --help`` for the options):

``driver``       one run of the workload against a target that is already running (the
                 original listener, ``lbactors serve``, anything consuming ``--topic``);
                 ``--target-pid`` adds that process tree's CPU per operation
``concurrency``  throughput and latency at 1, 10, 50, 200 load balancers in flight, against a
                 ``lbactors serve`` started here (and the original listener)
``latency``      the same at backend latencies of 0, 5 and 50 ms
``cpu``          the daemon's CPU per operation (all its processes, /proc), ``--repeat`` runs
``compare``      the same workload in one run against ``lbactors serve`` and the original
                 listener (``../shared/baseline``), loaded (C=50) and unloaded (C=1): both and
                 the ratios
``check``        (also ``python -m bench --check``) the hot path against the committed
                 baseline ``results/check.json``: CPU scenario, raw AMQP round trip, actor
                 bench, as ratios measured in the same run (``bench/check.py``)
``scale``        10 000 and 100 000 resident load balancers: start-up time, resident memory of
                 all daemon processes, statistics round cost
``faults``       one fault per row under the driver's load (backend hangs, worker SIGSTOP and
                 kill -9, daemon kill -9 and SIGTERM + restart, broker restart, malformed
                 messages, poison operations, a soak): planned / completed / errors / missing,
                 time to recover, what the daemon logged (``bench/faults.py``)
``octavia``      the real Octavia 19 in the loop (API, driver agent, lbactors' driver and
                 agent): per create step, API call -> ACTIVE and lbactors' share of it, 1 and
                 50 load balancers at once, the commit race and the re-assertions
                 (``bench/octavia.py``)
``cluster``      several daemons on a private 3-node RabbitMQ cluster: ops/s, latency, daemon
                 and broker CPU per op for 1 daemon on the single broker and 1, 2, 3 daemons in
                 cluster mode (and the re-publish hop's broker CPU); failover time over
                 ``--kills`` kill -9 rounds from the backend traces (``bench/cluster.py``)

Every row is printed as a JSON line and appended to ``bench/results/raw/``; each scenario
rewrites its Markdown table and plots in ``bench/results/``. Exit status 0 when every planned
operation completed and validated in every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench import check, cluster, dashboard, faults, octavia, procs, report
from bench.driver import DEFAULT_AMQP_URL, DriverConfig, delete_queues, open_driver

Row = dict[str, Any]


# ---- one measured run ----------------------------------------------------------------------

def _per_op(seconds: float | None, ops: int) -> float | None:
    if seconds is None or not ops:
        return None
    return round(seconds * 1000.0 / ops, 4)


def measure(config: DriverConfig, *, target: procs.Target | None, target_pid: int | None = None,
            label: str | None = None, extra: Row | None = None, keep_latencies: bool = False,
            idle_seconds: float = 1.0) -> tuple[Row, list[float]]:
    """Run the workload once; a flat row with the target's, driver's and broker's CPU per op."""
    broker = procs.broker_pid()
    busy_before = procs.idle_check(idle_seconds) if idle_seconds > 0 else None
    root = target.pid if target is not None else target_pid

    async def go() -> tuple[Row, list[float], Row]:
        async with open_driver(config) as driver:
            target_cpu = procs.TreeCpu(root) if root else None
            broker_cpu = procs.TreeCpu(broker) if broker else None
            load = procs.MachineLoad()
            result = await driver.run_workload()
            side: Row = {
                "target_cpu_s": target_cpu.seconds() if target_cpu else None,
                "broker_cpu_s": broker_cpu.seconds() if broker_cpu else None,
                "machine_busy_pct": load.busy_pct(),
                "machine_busy_cpu_s": load.busy_cpu_s(),
                "target_memory": procs.memory_kib(procs.process_tree(root)) if root else None,
            }
            return result, (list(driver.latencies) if keep_latencies else []), side

    result, latencies, side = trio.run(go)
    ops = result["ops_completed"]
    known = sum(v for v in (side["target_cpu_s"], side["broker_cpu_s"],
                            result["driver_cpu_s"]) if v)
    lat = result["latency_ms"]
    mem = side["target_memory"] or {}
    row: Row = {
        "target": label or (target.name if target else "external"),
        "concurrency": config.concurrency,
        "lbs": result["lbs"],
        "members": config.members,
        "ops_planned": result["ops_planned"],
        "ops_completed": ops,
        "errors": result["errors"],
        "missing_status_updates": result["missing_status_updates"],
        "errors_and_missing": result["errors"] + result["missing_status_updates"],
        "ok": (ops == result["ops_planned"] and result["errors"] == 0
               and result["missing_status_updates"] == 0),
        "ops_per_s": result["ops_per_s"],
        "p50_ms": lat.get("p50"),
        "p95_ms": lat.get("p95"),
        "p99_ms": lat.get("p99"),
        "mean_ms": lat.get("mean"),
        "target_cpu_s": _round(side["target_cpu_s"]),
        "target_cpu_ms_per_op": _per_op(side["target_cpu_s"], ops),
        "driver_cpu_s": result["driver_cpu_s"],
        "driver_cpu_ms_per_op": result["driver_cpu_ms_per_op"],
        "broker_cpu_s": _round(side["broker_cpu_s"]),
        "broker_cpu_ms_per_op": _per_op(side["broker_cpu_s"], ops),
        "machine_busy_pct": side["machine_busy_pct"],
        "busy_before_pct": busy_before,
        "other_cpu_s": round(side["machine_busy_cpu_s"] - known, 3),
        "target_rss_mib": round(mem["rss_kib"] / 1024, 1) if mem else None,
        "target_processes": mem.get("processes"),
        **(extra or {}),
        "driver": result,
    }
    return row, latencies


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


# ---- targets -------------------------------------------------------------------------------

def _run_dir(args: argparse.Namespace, name: str) -> Path:
    path = Path(args.run_dir) / f"{name}-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_daemon(args: argparse.Namespace, *, backend_latency_ms: float = 0.0,
                 stats_interval: float = 0.0, metrics: bool = False) -> procs.Daemon:
    tag = uuid.uuid4().hex[:8]
    extra_env: dict[str, str] = {}
    if metrics:
        extra_env = {"LBACTORS_METRICS_ENABLED": "true",
                     "LBACTORS_METRICS_PORT": str(procs.free_port())}
    daemon = procs.Daemon(
        topic=f"bench_{tag}__lb_listener", driver_topic=f"bench_{tag}__driver_listener",
        run_dir=_run_dir(args, "lbactors"), amqp_url=args.amqp_url, workers=args.workers,
        backend_latency_s=backend_latency_ms / 1000.0, stats_interval=stats_interval,
        log_level=args.daemon_log_level, extra_env=extra_env,
    )
    if metrics:
        daemon.name = "lbactors+metrics"
    return daemon.start()


def start_seed(args: argparse.Namespace, *, backend_latency_ms: float = 0.0) -> procs.SeedListener:
    # a leftover run's queue would feed it stale casts (run_baseline.sh purges them too)
    stale = [procs.SeedListener.TOPIC, procs.SeedListener.DRIVER_TOPIC]
    trio.run(delete_queues, args.amqp_url, stale)
    seed = procs.SeedListener(run_dir=_run_dir(args, "seed"), amqp_url=args.amqp_url,
                              backend_latency_ms=backend_latency_ms,
                              baseline_dir=Path(args.baseline_dir))
    return seed.start()


def stop_target(args: argparse.Namespace, target: procs.Target) -> None:
    target.stop()
    if isinstance(target, procs.Daemon):  # its oslo-style queues are not auto-deleted
        trio.run(delete_queues, args.amqp_url, [target.topic, f"{target.topic}.{_host()}"])


def _host() -> str:
    import socket

    return socket.gethostname()


def _starters(args: argparse.Namespace, *, backend_latency_ms: float = 0.0
              ) -> list[Callable[[], procs.Target]]:
    """How to start each of ``--targets`` (``lbactors``, ``seed``), in that order."""
    out: list[Callable[[], procs.Target]] = []
    for name in args.targets.split(","):
        if name == "lbactors":
            out.append(lambda: start_daemon(args, backend_latency_ms=backend_latency_ms))
        elif name == "lbactors+metrics":  # [metrics] on, scraped every --scrape-interval s
            out.append(lambda: start_daemon(args, backend_latency_ms=backend_latency_ms,
                                            metrics=True))
        elif name == "seed":
            if not procs.baseline_available(Path(args.baseline_dir)):
                _log(f"no baseline at {args.baseline_dir}: skipping the original listener")
                continue
            out.append(lambda: start_seed(args, backend_latency_ms=backend_latency_ms))
        else:
            raise SystemExit(f"unknown target {name!r} (lbactors, seed)")
    return out


def config_for(args: argparse.Namespace, target: procs.Target | None, **over: Any) -> DriverConfig:
    fields: dict[str, Any] = dict(
        amqp_url=args.amqp_url, lbs=args.lbs, members=args.members,
        concurrency=args.concurrency, timeout=args.timeout, max_duration=args.max_duration,
        updates=not args.no_updates, drain=args.drain,
    )
    if target is not None:
        fields.update(topic=target.topic, driver_topic=target.driver_topic)
    fields.update(over)
    return DriverConfig(**fields)


def _summary_line(row: Row) -> str:
    return (f"{row['target']:>14} C={row['concurrency']:<4} {row['ops_completed']:>6}/"
            f"{row['ops_planned']} ops {row['ops_per_s']:>9,.1f} ops/s  p50 {row['p50_ms']} ms"
            f"  p99 {row['p99_ms']} ms  target CPU {row['target_cpu_ms_per_op']} ms/op  "
            f"driver CPU {row['driver_cpu_ms_per_op']} ms/op  errors "
            f"{row['errors_and_missing']}")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- scenarios ---------------------------------------------------------------------------------

def scenario_driver(args: argparse.Namespace) -> int:
    config = DriverConfig(
        amqp_url=args.amqp_url, topic=args.topic, driver_topic=args.driver_topic,
        lbs=args.lbs, members=args.members, concurrency=args.concurrency, timeout=args.timeout,
        max_duration=args.max_duration, updates=not args.no_updates, drain=args.drain,
        resident=args.resident_only, confirm=args.confirm, templates=not args.no_templates,
    )
    row, _ = measure(config, target=None, target_pid=args.target_pid, label=args.label,
                     idle_seconds=0)
    if args.full:
        print(json.dumps(row["driver"], sort_keys=True))
    else:
        writer = report.ResultsWriter("driver", Path(args.results))
        writer.add(row)
    _log(_summary_line(row))
    return 0 if row["ok"] else 2


def _levels(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def scenario_concurrency(args: argparse.Namespace) -> int:
    writer = report.ResultsWriter("concurrency", Path(args.results))
    latencies: dict[str, list[float]] = {}
    ok = True
    for start in _starters(args):
        target = start()
        try:
            for level in _levels(args.levels):
                c = int(level)
                lbs = max(args.lbs, 2 * c)
                row, lat = measure(config_for(args, target, concurrency=c, lbs=lbs),
                                   target=target, keep_latencies=True,
                                   extra={"startup_s": round(target.startup_s or 0, 3)})
                writer.add(row)
                latencies[f"{row['target']} C={c}"] = lat
                ok &= row["ok"]
                _log(_summary_line(row))
        finally:
            stop_target(args, target)
    writer.write_table(title="Throughput and latency against concurrency",
                       notes=[_conditions(args)])
    report.plot_throughput(writer.rows, writer.results / "concurrency-throughput.png")
    report.plot_latency(latencies, writer.results / "concurrency-latency.png")
    return 0 if ok else 2


def scenario_latency(args: argparse.Namespace) -> int:
    writer = report.ResultsWriter("latency", Path(args.results))
    latencies: dict[str, list[float]] = {}
    ok = True
    for ms in _levels(args.backend_latencies):
        for start in _starters(args, backend_latency_ms=ms):
            target = start()
            try:
                row, lat = measure(config_for(args, target), target=target, keep_latencies=True,
                                   extra={"backend_latency_ms": ms})
            finally:
                stop_target(args, target)
            writer.add(row)
            latencies[f"{row['target']} backend {ms:g} ms"] = lat
            ok &= row["ok"]
            _log(_summary_line(row) + f"  backend {ms:g} ms")
    writer.write_table(title="Backend latency", notes=[_conditions(args)])
    report.plot_latency(latencies, writer.results / "latency-distribution.png",
                        title="Latency distribution by backend latency")
    return 0 if ok else 2


def scenario_cpu(args: argparse.Namespace) -> int:
    """Every target is started first and kept running; each repeat runs the workload once
    against each of them in turn, so slow drifts of the machine hit all targets alike (with
    ``--targets lbactors,lbactors+metrics``: the metrics' cost, in one run). A daemon with
    metrics on is scraped every ``--scrape-interval`` seconds while it runs."""
    writer = report.ResultsWriter("cpu", Path(args.results))
    ok = _alternate(args, writer, scrape=True)
    for name in sorted({r["target"] for r in writer.rows}):
        per_op = [r["target_cpu_ms_per_op"] for r in writer.rows if r["target"] == name]
        _log(f"{name} CPU ms/op over {len(per_op)} runs: min {min(per_op)} median "
             f"{statistics.median(per_op)} max {max(per_op)}")
    writer.write_table(title="Daemon CPU per operation (all processes, /proc)",
                       notes=[_conditions(args)])
    return 0 if ok else 2


def check_cpu(args: argparse.Namespace) -> tuple[Row, bool]:
    """The CPU scenario for ``--check``: lbactors and (when there) the original listener,
    alternating ``--repeat`` times; medians by target."""
    writer = report.ResultsWriter("check", Path(args.results))
    args.targets = "lbactors,seed"
    ok = _alternate(args, writer, scrape=False)
    return check.summarize_cpu(writer.rows), ok


def _alternate(args: argparse.Namespace, writer: report.ResultsWriter, *, scrape: bool) -> bool:
    """Start every target of ``--targets`` first and keep them running; each of ``--repeat``
    rounds runs the workload once against each in turn (``scrape``: a daemon with metrics on
    is scraped meanwhile). Every row goes to ``writer``; whether all were ok."""
    ok = True
    targets: list[procs.Target] = []
    try:
        for start in _starters(args):
            targets.append(start())
        for i in range(args.repeat):
            for target in targets:
                url = _metrics_url(target) if scrape else None
                with procs.Scraper(url, args.scrape_interval if scrape else 0.0) as scraper:
                    row, _ = measure(config_for(args, target), target=target,
                                     extra={"repeat": i + 1})
                if scrape:
                    row["scrapes"] = scraper.scrapes
                writer.add(row)
                ok &= row["ok"]
                _log(_summary_line(row))
    finally:
        for target in targets:
            stop_target(args, target)
    return ok


def _metrics_url(target: procs.Target) -> str | None:
    if not isinstance(target, procs.Daemon):
        return None
    port = target.env.get("LBACTORS_METRICS_PORT")
    if target.env.get("LBACTORS_METRICS_ENABLED") != "true" or not port:
        return None
    return f"http://127.0.0.1:{port}/metrics"


def scenario_compare(args: argparse.Namespace) -> int:
    writer = report.ResultsWriter("compare", Path(args.results))
    if not procs.baseline_available(Path(args.baseline_dir)):
        _log(f"no baseline at {args.baseline_dir}: nothing to compare with")
        return 1
    latencies: dict[str, list[float]] = {}
    workloads = [("loaded", args.concurrency, args.lbs),
                 ("unloaded", 1, args.unloaded_lbs)]
    ok = True
    by_target: dict[str, dict[str, Row]] = {}
    for name, start in (("lbactors", lambda: start_daemon(args)),
                        ("seed_listener", lambda: start_seed(args))):
        target = start()
        try:
            for _ in range(args.repeat):
                for wname, c, lbs in workloads:
                    row, lat = measure(config_for(args, target, concurrency=c, lbs=lbs),
                                       target=target, keep_latencies=True,
                                       extra={"workload": wname,
                                              "startup_s": round(target.startup_s or 0, 3)})
                    writer.add(row)
                    ok &= row["ok"]
                    _log(_summary_line(row) + f"  [{wname}]")
                    latencies[f"{name} {wname} (C={c})"] = lat
                    best = by_target.setdefault(name, {}).get(wname)
                    if best is None or row["ops_per_s"] > best["ops_per_s"]:
                        by_target[name][wname] = row
        finally:
            stop_target(args, target)
    ratios = compare_ratios(by_target)
    writer.add({"target": "ratio lbactors/seed", **ratios})
    _log(json.dumps(ratios, sort_keys=True))
    writer.write_table(
        [r for r in writer.rows if "workload" in r],
        [("workload", "workload"), *report.TABLE_COLUMNS],
        title="lbactors serve against the original listener, same driver, same run",
        notes=[_conditions(args), "", _ratio_text(ratios)],
    )
    report.plot_latency(latencies, writer.results / "compare-latency.png",
                        title="Latency distribution: lbactors and the original listener")
    return 0 if ok else 2


def compare_ratios(by_target: dict[str, dict[str, Row]]) -> Row:
    ours, theirs = by_target.get("lbactors", {}), by_target.get("seed_listener", {})
    out: Row = {}
    for w in ("loaded", "unloaded"):
        a, b = ours.get(w), theirs.get(w)
        if not a or not b:
            continue
        out[f"{w}_ops_per_s_ratio"] = _ratio(a["ops_per_s"], b["ops_per_s"])
        out[f"{w}_p50_ms"] = {"lbactors": a["p50_ms"], "seed_listener": b["p50_ms"]}
        out[f"{w}_target_cpu_ms_per_op"] = {"lbactors": a["target_cpu_ms_per_op"],
                                            "seed_listener": b["target_cpu_ms_per_op"]}
        out[f"{w}_cpu_per_op_ratio"] = _ratio(b["target_cpu_ms_per_op"],
                                              a["target_cpu_ms_per_op"])
        out[f"{w}_p50_ratio"] = _ratio(b["p50_ms"], a["p50_ms"])
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _ratio_text(r: Row) -> str:
    parts = []
    if "loaded_ops_per_s_ratio" in r:
        parts.append(f"Loaded: lbactors does **{r['loaded_ops_per_s_ratio']}×** the original "
                     f"listener's operations per second, at **1/{r['loaded_cpu_per_op_ratio']}** "
                     f"of its CPU per operation.")
    if "unloaded_p50_ratio" in r:
        parts.append(f"Unloaded (C=1): median latency {r['unloaded_p50_ms']['lbactors']} ms "
                     f"against {r['unloaded_p50_ms']['seed_listener']} ms.")
    return " ".join(parts)


def scenario_scale(args: argparse.Namespace) -> int:
    writer = report.ResultsWriter("scale", Path(args.results))
    ok = True
    for n in (int(x) for x in _levels(args.sizes)):
        t0 = time.monotonic()
        daemon = start_daemon(args, stats_interval=args.stats_interval)
        try:
            idle_mem = procs.memory_kib(daemon.pids())
            idle_supervisor = procs.memory_kib([daemon.pid])
            row, stats = trio.run(_scale_run, args, daemon, n)
        finally:
            stop_target(args, daemon)
        row.update({
            "target": "lbactors", "resident_lbs": n, "startup_s": round(daemon.startup_s or 0, 3),
            "idle_rss_mib": round(idle_mem["rss_kib"] / 1024, 1),
            "idle_supervisor_rss_mib": round(idle_supervisor["rss_kib"] / 1024, 1),
            "wall_s": round(time.monotonic() - t0, 1), **stats,
        })
        writer.add(row)
        ok &= row["ok"]
        _log(f"scale {n}: RSS {row['rss_mib']} MiB (PSS {row['pss_mib']}), start-up "
             f"{row['startup_s']} s, create {row['create_ops_per_s']} ops/s, statistics round "
             f"{row.get('stats_round_cpu_s')} CPU s / {row.get('stats_round_span_s')} s span")
    writer.write_table(
        columns=[("resident_lbs", "resident LBs"), ("objects", "objects"),
                 ("startup_s", "start-up s"), ("idle_rss_mib", "idle RSS MiB"),
                 ("rss_mib", "RSS MiB (all processes)"), ("pss_mib", "PSS MiB"),
                 ("window_rss_mib", "RSS MiB after stats window"),
                 ("settled_rss_mib", "settled RSS MiB"), ("settled_pss_mib", "settled PSS MiB"),
                 ("processes", "processes"), ("create_ops_per_s", "create ops/s"),
                 ("errors_and_missing", "errors"),
                 ("stats_round_cpu_s", "stats round CPU s"),
                 ("stats_round_span_s", "stats round span s"),
                 ("stats_listeners_per_round", "listeners / round")],
        title="Resident load balancers", notes=[_conditions(args)])
    return 0 if ok else 2


async def _scale_run(args: argparse.Namespace, daemon: procs.Daemon, n: int) -> tuple[Row, Row]:
    config = config_for(args, daemon, lbs=n, concurrency=args.scale_concurrency,
                        members=args.scale_members, updates=False, resident=True,
                        max_duration=args.max_duration)
    async with open_driver(config) as driver:
        cpu = daemon.cpu()
        result = await driver.run_workload()
        workload_end = trio.current_time()
        create_cpu = cpu.seconds()
        mem = procs.memory_kib(daemon.pids())
        stats: Row = {}
        if args.stats_interval > 0 and args.stats_rounds > 0:
            # watch whole rounds with nothing else going on
            driver.statistics.clear()
            await trio.sleep(args.stats_interval * 0.5)
            cpu = daemon.cpu()
            t0 = time.monotonic()
            await trio.sleep(args.stats_interval * args.stats_rounds)
            window_cpu = cpu.seconds()
            window_s = time.monotonic() - t0
            rounds = _rounds(driver.statistics, gap=args.stats_interval / 2)
            stats = {
                "stats_interval_s": args.stats_interval,
                "stats_window_s": round(window_s, 2),
                "stats_rounds_seen": len(rounds),
                "stats_round_cpu_s": round(window_cpu / max(window_s / args.stats_interval, 1e-9),
                                           3),
                "stats_round_span_s": (round(statistics.median(r[-1].t - r[0].t for r in rounds),
                                             3) if rounds else None),
                "stats_listeners_per_round": (statistics.median(sum(a.listeners for a in r)
                                                                for r in rounds)
                                              if rounds else None),
                "stats_messages_per_round": (statistics.median(len(r) for r in rounds)
                                             if rounds else None),
            }
        # after the statistics window (what earlier runs called settled: actors created in
        # the workload's last minute may still be alive)
        window = procs.memory_kib(daemon.pids())
        stats["window_rss_mib"] = round(window["rss_kib"] / 1024, 1)
        # then until actors idle longer than daemon.actor_idle_timeout (60 s by default) have
        # retired and the workers' next ping found none (they trim their heap then): what
        # stays is the resident state
        await trio.sleep_until(workload_end + args.settle)
        pids = daemon.pids()
        settled = procs.memory_kib(pids)
        stats["settled_rss_mib"] = round(settled["rss_kib"] / 1024, 1)
        stats["settled_pss_mib"] = round(settled["pss_kib"] / 1024, 1)
        # the supervisor (no backend state) apart from the workers (actors and backend)
        supervisor = procs.memory_kib([daemon.pid])
        stats["settled_supervisor_rss_mib"] = round(supervisor["rss_kib"] / 1024, 1)
        stats["settled_workers_rss_mib"] = round(
            (settled["rss_kib"] - supervisor["rss_kib"]) / 1024, 1)
    per_lb_objects = 6 + args.scale_members
    row: Row = {
        "ok": driver.ok(result),
        "members": args.scale_members,
        "objects": n * per_lb_objects,
        "ops_completed": result["ops_completed"],
        "errors_and_missing": result["errors"] + result["missing_status_updates"],
        "create_ops_per_s": result["ops_per_s"],
        "create_cpu_ms_per_op": _per_op(create_cpu, result["ops_completed"]),
        "rss_mib": round(mem["rss_kib"] / 1024, 1),
        "pss_mib": round(mem["pss_kib"] / 1024, 1),
        "processes": mem["processes"],
        "driver": result,
    }
    return row, stats


def _rounds(arrivals: list[Any], gap: float) -> list[list[Any]]:
    """Statistics messages grouped into rounds (a new round after ``gap`` seconds of silence)."""
    rounds: list[list[Any]] = []
    for a in arrivals:
        if rounds and a.t - rounds[-1][-1].t < gap:
            rounds[-1].append(a)
        else:
            rounds.append([a])
    return rounds


def _conditions(args: argparse.Namespace) -> str:
    import os

    return (f"Conditions: {os.cpu_count()} CPUs shared by broker, driver and target; members "
            f"K={args.members}, updates {'off' if args.no_updates else 'on'}; daemon workers "
            f"{args.workers or 'default (one per CPU but one)'}; command `python -m bench "
            f"{' '.join(sys.argv[1:])}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")


# ---- command line ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="scenario", required=True)

    def common(sp: argparse.ArgumentParser, *, lbs: int = 200, concurrency: int = 50) -> None:
        sp.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
        sp.add_argument("--lbs", type=int, default=lbs, help="load balancers (M) per run")
        sp.add_argument("--members", type=int, default=4, help="members per pool (K)")
        sp.add_argument("--concurrency", type=int, default=concurrency,
                        help="load balancers in flight (C)")
        sp.add_argument("--timeout", type=float, default=30.0)
        sp.add_argument("--max-duration", type=float, default=600.0)
        sp.add_argument("--no-updates", action="store_true")
        sp.add_argument("--drain", type=float, default=0.5)
        sp.add_argument("--workers", type=int, default=None,
                        help="LBACTORS_DAEMON_WORKERS (default: the daemon's own)")
        sp.add_argument("--daemon-log-level", default="warning")
        sp.add_argument("--results", default=str(report.RESULTS))
        sp.add_argument("--run-dir", default="/tmp/lbactors-bench",
                        help="logs of the started processes")
        sp.add_argument("--baseline-dir", default=str(procs.BASELINE_DIR))

    d = sub.add_parser("driver", help="one run against a running target")
    common(d, lbs=100)
    d.add_argument("--topic", default="vmware_nsx__lb_listener")
    d.add_argument("--driver-topic", default="vmware_nsx__driver_listener")
    d.add_argument("--target-pid", type=int, help="measure this process tree's CPU")
    d.add_argument("--label", default=None)
    d.add_argument("--resident-only", action="store_true",
                   help="create (and update) the trees but never delete them")
    d.add_argument("--confirm", action="store_true",
                   help="publisher confirms on casts, each awaited (as oslo.messaging 18)")
    d.add_argument("--no-templates", action="store_true",
                   help="build every payload as the sim does instead of from a template")
    d.add_argument("--full", action="store_true",
                   help="print the driver's result in the sim's format only")

    c = sub.add_parser("concurrency", help="throughput and latency at C = 1, 10, 50, 200")
    common(c)
    c.add_argument("--levels", default="1,10,50,200")
    c.add_argument("--targets", default="lbactors,seed",
                   help="comma-separated: lbactors, seed (the original listener)")

    la = sub.add_parser("latency", help="backend latency 0, 5, 50 ms")
    common(la)
    la.add_argument("--backend-latencies", default="0,5,50")
    la.add_argument("--targets", default="lbactors",
                    help="comma-separated: lbactors, seed (the original listener)")

    cp = sub.add_parser("cpu", help="the daemon's CPU per operation")
    common(cp)
    cp.add_argument("--repeat", type=int, default=3)
    cp.add_argument("--targets", default="lbactors",
                    help="comma-separated: lbactors, lbactors+metrics ([metrics] on, scraped), "
                         "seed (the original listener)")
    cp.add_argument("--scrape-interval", type=float, default=1.0,
                    help="seconds between scrapes of lbactors+metrics (Prometheus' usual is 15)")

    cm = sub.add_parser("compare", help="lbactors serve against the original listener")
    common(cm)
    cm.add_argument("--unloaded-lbs", type=int, default=20)
    cm.add_argument("--repeat", type=int, default=1)

    s = sub.add_parser("scale", help="10 000 and 100 000 resident load balancers")
    common(s)
    s.add_argument("--sizes", default="10000,100000")
    s.add_argument("--scale-members", type=int, default=1,
                   help="members per resident load balancer")
    s.add_argument("--scale-concurrency", type=int, default=200)
    s.add_argument("--stats-interval", type=float, default=10.0,
                   help="LBACTORS_STATS_INTERVAL of the daemon (0: no statistics)")
    s.add_argument("--stats-rounds", type=int, default=3,
                   help="statistics rounds to watch once the load balancers exist")
    s.add_argument("--settle", type=float, default=75.0,
                   help="seconds after the last operation before the settled RSS is read "
                        "(the default actor_idle_timeout, 60 s, plus a ping interval and a margin)")
    s.set_defaults(max_duration=3600.0)

    ck = sub.add_parser("check", help="--check: the hot path's figures next to the committed "
                        "baseline (bench/results/check.json), as ratios of one run")
    common(ck)
    check.add_arguments(ck)
    f = sub.add_parser("faults", help="faults under load: hangs, kills, restarts, bad input, soak")
    common(f, lbs=100, concurrency=20)
    faults.add_arguments(f)
    f.set_defaults(members=2, timeout=60.0, max_duration=300.0, daemon_log_level="info")
    o = sub.add_parser("octavia", help="the real Octavia in the loop: API call -> ACTIVE")
    octavia.add_arguments(o)
    cl = sub.add_parser("cluster", help="several daemons on a 3-node RabbitMQ cluster")
    cluster.add_arguments(cl)
    db = sub.add_parser("dashboard", help="a compressed day's work, recorded by Prometheus, "
                                         "drawn with contrib/grafana/lbactors.json's panels")
    common(db, lbs=600)
    db.add_argument("--prometheus", default="prometheus", help="the Prometheus binary")
    db.add_argument("--scrape-interval", type=float, default=2.0)
    db.add_argument("--stats-interval", type=float, default=5.0)
    db.add_argument("--backend-latency", type=float, default=2.0, help="ms per backend call")
    db.add_argument("--malformed", type=int, default=40)
    db.add_argument("--pause", type=float, default=20.0, help="seconds of quiet between phases")
    db.add_argument("--out", default=str(Path(__file__).resolve().parents[1]
                                         / "contrib" / "grafana" / "lbactors.png"))
    return p.parse_args(argv)


SCENARIOS: dict[str, Callable[[argparse.Namespace], int]] = {
    "driver": scenario_driver,
    "concurrency": scenario_concurrency,
    "latency": scenario_latency,
    "cpu": scenario_cpu,
    "check": lambda args: check.scenario_check(args, check_cpu),
    "compare": scenario_compare,
    "scale": scenario_scale,
    "faults": faults.scenario_faults,
    "octavia": octavia.scenario_octavia,
    "cluster": cluster.scenario_cluster,
    "dashboard": lambda args: dashboard.scenario_dashboard(
        args,
        start_daemon,
        lambda target, lbs, concurrency, resident: measure(
            config_for(args, target, lbs=lbs, concurrency=concurrency, resident=resident),
            target=target, idle_seconds=0)[0],
        lambda target: stop_target(args, target),
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--check":  # `python -m bench --check [options]`
        argv = ["check", *argv[1:]]
    args = parse_args(argv)
    return SCENARIOS[args.scenario](args)


if __name__ == "__main__":
    sys.exit(main())
