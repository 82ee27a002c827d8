"""``python -m bench --check``: the hot path's figures next to the committed baseline.

Reruns, in one go on this machine:

- the raw AMQP round trip (our client: publish with confirm, consume, ack;
  ``bench.amqp_roundtrip.ours``), the floor that normalizes the machine's speed;
- the CPU scenario (``python -m bench cpu``: 200 load balancers, K = 4, C = 50) against
  ``lbactors serve`` and, when ``--baseline-dir`` holds it, the original listener, the two
  targets alternating ``--repeat`` times so that a drift of the machine hits both;
- the in-process actor bench (``bench.actors``) at 1 and 10 000 load balancers.

Absolute figures on a shared VM move by 1.7x within a day, so what is compared with the
baseline are ratios measured in this same run: the daemon's CPU per operation in raw round
trips (how many publish->consume->ack round trips of our client its CPU would pay for), the
original listener's CPU per operation over the daemon's, and the actor layer's operations per
raw round trip. Each is printed next to the baseline's (``bench/results/check.json``) with the
change; a ratio worse than the baseline's by more than ``--tolerance`` is marked ``SLOWER``.
Not a timed test: the exit status says only whether every run completed without errors
(``--strict``: also that nothing is marked). ``--write-baseline`` stores this run as the new
baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from bench.amqp_roundtrip import ours as amqp_round_trips

BASELINE_FILE = Path(__file__).resolve().parent / "results" / "check.json"

#: (key, what it is, True when higher is better)
FIGURES: list[tuple[str, str, bool]] = [
    ("amqp_round_trips_per_s", "raw AMQP round trips/s (our client)", True),
    ("lbactors_cpu_ms_per_op", "lbactors daemon CPU ms/op (C=50)", False),
    ("seed_cpu_ms_per_op", "original listener CPU ms/op (C=50)", False),
    ("lbactors_ops_per_s", "lbactors ops/s (C=50)", True),
    ("actors_ops_per_s_1", "actor layer ops/s, 1 LB", True),
    ("actors_ops_per_s_10000", "actor layer ops/s, 10 000 LBs", True),
]
RATIOS: list[tuple[str, str, bool]] = [
    ("cpu_per_op_in_round_trips", "daemon CPU per op, in raw round trips", False),
    ("seed_cpu_over_lbactors_cpu", "original listener CPU/op over lbactors'", True),
    ("actors_ops_per_round_trip_1", "actor ops (1 LB) per raw round trip", True),
    ("actors_ops_per_round_trip_10000", "actor ops (10 000 LBs) per raw round trip", True),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the CPU scenario per target (medians are compared)")
    parser.add_argument("--round-trips", type=int, default=20_000,
                        help="messages per raw AMQP round-trip trial (3 trials)")
    parser.add_argument("--actor-ops", type=int, default=50_000,
                        help="operations per size of the actor bench")
    parser.add_argument("--tolerance", type=float, default=0.2,
                        help="a ratio this much worse than the baseline's is marked SLOWER")
    parser.add_argument("--baseline-file", default=str(BASELINE_FILE))
    parser.add_argument("--write-baseline", action="store_true",
                        help="store this run's figures as the new baseline")
    parser.add_argument("--strict", action="store_true",
                        help="exit 3 when a ratio is marked SLOWER")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _round_trips(url: str, messages: int, trials: int = 3) -> float:
    rates = [trio.run(amqp_round_trips, url, messages, 512, 1000, 64) for _ in range(trials)]
    return round(statistics.median(rates))


def _actors(ops: int) -> dict[str, float]:
    from bench.actors import run_size

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    out: dict[str, float] = {}
    for size in (1, 10_000):
        result = trio.run(run_size, size, ops, 64, ())
        out[f"actors_ops_per_s_{size}"] = result.ops_per_second
        out[f"actors_errors_{size}"] = result.errors
    return out


def ratios(figures: dict[str, Any]) -> dict[str, float | None]:
    """The machine-independent ratios of one run's figures."""
    rtt = figures.get("amqp_round_trips_per_s")
    ours = figures.get("lbactors_cpu_ms_per_op")
    seed = figures.get("seed_cpu_ms_per_op")

    def div(a: float | None, b: float | None, digits: int = 3) -> float | None:
        return round(a / b, digits) if a and b else None

    return {
        # CPU of one operation / wall time of one raw round trip (1000 / rate ms)
        "cpu_per_op_in_round_trips": div(ours, 1000.0 / rtt if rtt else None),
        "seed_cpu_over_lbactors_cpu": div(seed, ours, 2),
        "actors_ops_per_round_trip_1": div(figures.get("actors_ops_per_s_1"), rtt),
        "actors_ops_per_round_trip_10000": div(figures.get("actors_ops_per_s_10000"), rtt),
    }


def _line(label: str, now: float | None, base: float | None, higher_better: bool,
          tolerance: float | None) -> tuple[str, bool]:
    change = ""
    slower = False
    if now is not None and base:
        factor = now / base
        change = f"x{factor:.2f}"
        if tolerance is not None:
            worse = factor < 1 - tolerance if higher_better else factor > 1 + tolerance
            if worse:
                change += "  SLOWER"
                slower = True
    shown_now = "-" if now is None else f"{now:,}"
    shown_base = "-" if base is None else f"{base:,}"
    return f"  {label:<46} {shown_now:>12} {shown_base:>12}  {change}", slower


def scenario_check(args: argparse.Namespace, measure_cpu: Any) -> int:
    """Run everything, print the comparison; ``measure_cpu(args) -> (figures, ok)`` runs the
    CPU scenario (``bench.__main__`` passes it in: it owns the daemon and driver plumbing)."""
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    figures: dict[str, Any] = {}
    print("raw AMQP round trips ...", flush=True)
    figures["amqp_round_trips_per_s"] = _round_trips(args.amqp_url, args.round_trips)
    print("CPU scenario ...", flush=True)
    cpu, ok = measure_cpu(args)
    figures.update(cpu)
    print("actor bench ...", flush=True)
    figures.update(_actors(args.actor_ops))
    ok &= not figures.get("actors_errors_1") and not figures.get("actors_errors_10000")
    now = {"when": started, "figures": figures, "ratios": ratios(figures)}

    path = Path(args.baseline_file)
    baseline: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    base_fig = baseline.get("figures", {})
    base_rat = baseline.get("ratios", {})
    print(f"\nthis run ({started}) against the baseline ({baseline.get('when', 'none')}, "
          f"{path.name})")
    print(f"  {'figure (absolute: machine-dependent)':<46} {'now':>12} {'baseline':>12}  change")
    for key, label, higher in FIGURES:
        print(_line(label, figures.get(key), base_fig.get(key), higher, None)[0])
    print(f"  {'ratio (same run: compare these)':<46} {'now':>12} {'baseline':>12}  change")
    marked = False
    for key, label, higher in RATIOS:
        text, slower = _line(label, now["ratios"].get(key), base_rat.get(key), higher,
                             args.tolerance)
        marked |= slower
        print(text)
    print(json.dumps({"bench": "check", **now}, sort_keys=True), flush=True)
    if args.write_baseline:
        path.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
        print(f"baseline written: {path}")
    if not ok:
        return 2
    return 3 if args.strict and marked else 0


def summarize_cpu(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the CPU scenario's rows, by target."""
    out: dict[str, Any] = {}
    for name, prefix in (("lbactors", "lbactors"), ("seed_listener", "seed")):
        mine = [r for r in rows if r.get("target") == name]
        cpu = [r["target_cpu_ms_per_op"] for r in mine if r.get("target_cpu_ms_per_op")]
        rate = [r["ops_per_s"] for r in mine if r.get("ops_per_s")]
        out[f"{prefix}_cpu_ms_per_op"] = _median(cpu)
        out[f"{prefix}_ops_per_s"] = _median(rate)
        out[f"{prefix}_runs"] = len(mine)
    return out


__all__ = ["BASELINE_FILE", "add_arguments", "ratios", "scenario_check", "summarize_cpu"]
