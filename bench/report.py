"""Results on disk: JSON lines, Markdown tables, PNG plots (``bench/results/``).

Every measured row goes to ``results/raw/<scenario>-<UTC time>.jsonl`` (kept out of git) and
to stdout as one JSON line; the latest table of a scenario is ``results/<scenario>.md`` and its
plots ``results/<scenario>-*.png`` (committed, referenced from ``bench/PERFORMANCE.md``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: (key in a row, column title)
TABLE_COLUMNS: list[tuple[str, str]] = [
    ("target", "target"),
    ("concurrency", "C"),
    ("backend_latency_ms", "backend ms"),
    ("ops_completed", "ops"),
    ("errors_and_missing", "errors"),
    ("ops_per_s", "ops/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("target_cpu_ms_per_op", "target CPU ms/op"),
    ("driver_cpu_ms_per_op", "driver CPU ms/op"),
    ("broker_cpu_ms_per_op", "broker CPU ms/op"),
    ("machine_busy_pct", "machine busy %"),
    ("busy_before_pct", "busy before %"),
]


class ResultsWriter:
    """Appends rows of one scenario run to its JSON lines file and echoes them on stdout."""

    def __init__(self, scenario: str, results: Path = RESULTS) -> None:
        self.scenario = scenario
        self.results = results
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.raw = results / "raw" / f"{scenario}-{stamp}.jsonl"
        self.raw.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        row = {"scenario": self.scenario, **row}
        self.rows.append(row)
        line = json.dumps(row, sort_keys=True)
        with self.raw.open("a") as f:
            f.write(line + "\n")
        print(line, flush=True)

    def write_table(self, rows: Sequence[Mapping[str, Any]] | None = None,
                    columns: Sequence[tuple[str, str]] = TABLE_COLUMNS, *,
                    title: str = "", notes: Iterable[str] = ()) -> Path:
        path = self.results / f"{self.scenario}.md"
        text = markdown_table(self.rows if rows is None else rows, columns)
        head = f"### {title}\n\n" if title else ""
        tail = "".join(f"\n{n}" for n in notes)
        path.write_text(head + text + ("\n" + tail if tail else "") + "\n")
        return path


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value < 1 else f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    """A GitHub Markdown table; columns with no value in any row are left out."""
    used = [(k, t) for k, t in columns if any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(t for _, t in used) + " |",
             "|" + "|".join(" --- " for _ in used) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k, _ in used) + " |")
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(rows: Sequence[Mapping[str, Any]], path: Path, *,
                    title: str = "Throughput against concurrency") -> Path:
    """ops/s (log scale) against concurrency, one line per target; p50 latency on the right."""
    plt = _pyplot()
    fig, (ax, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for target in sorted({r["target"] for r in rows}):
        mine = sorted((r for r in rows if r["target"] == target), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in mine]
        ax.plot(xs, [r["ops_per_s"] for r in mine], marker="o", label=target)
        ax_lat.plot(xs, [r["p50_ms"] for r in mine], marker="o", label=f"{target} p50")
        ax_lat.plot(xs, [r["p99_ms"] for r in mine], marker="x", linestyle="--",
                    label=f"{target} p99")
    for a in (ax, ax_lat):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("load balancers in flight (C)")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    ax.set_ylabel("operations / s")
    ax.set_title(title, fontsize=10)
    ax_lat.set_ylabel("latency, ms")
    ax_lat.set_title("Latency (cast -> status update)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(series: Mapping[str, Sequence[float]], path: Path, *,
                 title: str = "Latency distribution (cast -> status update)") -> Path:
    """Empirical CDF of per-operation latency (ms, log x) for each labelled run (seconds in)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, values in series.items():
        v = sorted(x * 1000.0 for x in values)
        if not v:
            continue
        n = len(v)
        ax.plot(v, [(i + 1) / n for i in range(n)], label=f"{label} (n={n})")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms")
    ax.set_ylabel("share of operations at or below")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
