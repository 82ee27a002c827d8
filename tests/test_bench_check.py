"""``python -m bench --check``: its ratios and its reading of the CPU scenario's rows (pure)."""

from __future__ import annotations

from bench import check
from bench.__main__ import parse_args


def test_ratios_are_taken_within_one_run() -> None:
    figures = {
        "amqp_round_trips_per_s": 20_000,  # 0.05 ms per round trip
        "lbactors_cpu_ms_per_op": 0.5,
        "seed_cpu_ms_per_op": 3.0,
        "actors_ops_per_s_1": 30_000,
        "actors_ops_per_s_10000": 10_000,
    }
    assert check.ratios(figures) == {
        "cpu_per_op_in_round_trips": 10.0,
        "seed_cpu_over_lbactors_cpu": 6.0,
        "actors_ops_per_round_trip_1": 1.5,
        "actors_ops_per_round_trip_10000": 0.5,
    }
    # without the original listener, its ratio is absent, not zero
    assert check.ratios({**figures, "seed_cpu_ms_per_op": None})["seed_cpu_over_lbactors_cpu"] is None


def test_medians_by_target_and_slower_marks() -> None:
    rows = [
        {"target": "lbactors", "target_cpu_ms_per_op": cpu, "ops_per_s": 1000.0}
        for cpu in (0.4, 0.9, 0.5)
    ] + [{"target": "seed_listener", "target_cpu_ms_per_op": 3.0, "ops_per_s": 300.0}]
    summary = check.summarize_cpu(rows)
    assert summary["lbactors_cpu_ms_per_op"] == 0.5
    assert summary["seed_cpu_ms_per_op"] == 3.0
    assert summary["lbactors_runs"] == 3
    # lower is better: 30 % more CPU per op is marked, 10 % is not
    assert check._line("x", 1.3, 1.0, False, 0.2)[1]
    assert not check._line("x", 1.1, 1.0, False, 0.2)[1]
    assert check._line("x", 0.7, 1.0, True, 0.2)[1]


def test_check_is_a_flag_of_bench() -> None:
    args = parse_args(["check", "--repeat", "2"])
    assert args.scenario == "check" and args.repeat == 2 and not args.write_baseline
