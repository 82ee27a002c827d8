"""``python -m bench dashboard``: a compressed day's work, recorded by a real Prometheus and drawn
with the panels and queries of ``contrib/grafana/lbactors.json``.

Grafana is not installable from Debian or PyPI here, so the picture is rendered with
matplotlib; the numbers are not: a real Prometheus (Debian's ``prometheus`` package) scrapes the
daemon's ``[metrics]`` endpoint every ``--scrape-interval`` seconds, and every panel's PromQL
expressions from the dashboard file are evaluated by that Prometheus (``/api/v1/query_range``),
with ``$__rate_interval`` = four scrape intervals and ``$job`` / ``$instance`` = everything.

The run, in a RabbitMQ vhost of its own (so that the broker connection drop below touches
nobody else's connections): idle; load balancers created and left resident (statistics rounds
then have listeners to report); a loaded phase (C = 50); malformed messages; a loaded phase
during which a worker is killed (-9); the broker closes the daemon's connection; a light
phase; idle.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import trio

from bench import procs
from bench.malformed import malformed_messages
from lbactors.amqp import oslo
from lbactors.amqp.connection import open_connection

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "contrib" / "grafana" / "lbactors.json"


def _log(text: str) -> None:
    print(f"[dashboard {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "--quiet", *args], check=True, capture_output=True, timeout=60)


class Prometheus:
    """A private Prometheus scraping one target, on 127.0.0.1."""

    def __init__(self, binary: str, target: str, interval: float, run_dir: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-", dir=run_dir))
        self.port = procs.free_port()
        (self.dir / "prometheus.yml").write_text(
            "global:\n"
            f"  scrape_interval: {interval:g}s\n"
            "scrape_configs:\n"
            "  - job_name: lbactors\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = open(self.dir / "prometheus.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise procs.TargetFailed("prometheus not ready in 30 s")

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
        url = f"http://127.0.0.1:{self.port}/api/v1/query_range?{query}"
        with urllib.request.urlopen(url, timeout=30) as response:
            answer = json.load(response)
        return cast(list[dict[str, Any]], answer["data"]["result"])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _declare_status_sink(url: str, exchange: str, driver_topic: str) -> None:
    """A queue on the driver topic for the whole run: the bench driver's own queues go with
    each phase, and a statistics round whose cast has no route retries it until one exists."""
    async with open_connection(url, client_name="lbactors-bench-dashboard") as conn:
        channel = await conn.open_channel()
        await channel.exchange_declare(exchange, "topic")
        sink = f"{driver_topic}_dashboard_sink"
        await channel.queue_declare(sink, arguments={"x-max-length": 1000})
        await channel.queue_bind(sink, exchange, driver_topic)
        await channel.close()


async def _publish_malformed(url: str, exchange: str, topic: str, count: int) -> None:
    async with open_connection(url, client_name="lbactors-bench-dashboard",
                               frame_max=131072) as conn:
        channel = await conn.open_channel()
        await channel.confirm_select()
        for message in malformed_messages(count, seed=3):
            props = (cast(Any, message.properties) if message.properties is not None
                     else oslo.CAST_PROPERTIES)
            confirmation = await channel.publish(exchange, topic, message.body, properties=props)
            if confirmation is not None:
                await confirmation.wait()
            await trio.sleep(0.05)
        await channel.close()


def _expr(expr: str, rate_interval: str) -> str:
    return (expr.replace("$__rate_interval", rate_interval)
            .replace('"$job"', '".*"').replace('"$instance"', '".*"'))


def _legend(template: str, labels: dict[str, str]) -> str:
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def render(prometheus: Prometheus, start: float, end: float, step: float, rate_interval: str,
           out: Path, marks: list[tuple[float, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    plt.style.use("dark_background")
    fig = plt.figure(figsize=(24, rows * 0.62))
    grid = fig.add_gridspec(rows, 24, hspace=1.4, wspace=1.2, top=0.95, bottom=0.02)
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"]:pos["y"] + pos["h"] - 1, pos["x"]:pos["x"] + pos["w"]])
        ax.set_title(panel["title"], fontsize=11, loc="left")
        unit = panel["fieldConfig"]["defaults"]["unit"]
        series: list[tuple[str, list[float], list[float]]] = []
        for target in panel["targets"]:
            for result in prometheus.query_range(_expr(target["expr"], rate_interval),
                                                 start, end, step):
                xs = [float(t) for t, _ in result["values"]]
                ys = [float(v) for _, v in result["values"]]
                label = _legend(target["legendFormat"], result["metric"]) or panel["title"]
                series.append((label, xs, ys))
        if panel["type"] == "stat":
            ax.axis("off")
            last = [ys[-1] for _, _, ys in series if ys and not math.isnan(ys[-1])]
            if unit == "dateTimeAsIso":
                text = (time.strftime("%H:%M:%S", time.localtime(last[-1] / 1000))
                        if last and last[-1] > 0 else "never")
            else:
                text = f"{last[-1]:g}" if last else "-"
            ax.text(0.5, 0.4, text, ha="center", va="center", fontsize=26, color="#73bf69",
                    transform=ax.transAxes)
            continue
        for label, xs, ys in series:
            scale = 100.0 if unit == "percentunit" else 1.0
            ax.plot([_dt(x) for x in xs], [y * scale for y in ys], label=label, linewidth=1.2)
        for at, _what in marks:
            ax.axvline(_dt(at), color="#888888", linewidth=0.6, linestyle=":")
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.15)
        ax.set_ylabel({"ops": "ops/s", "s": "seconds", "percentunit": "% of a CPU"}.get(unit, ""),
                      fontsize=8)
        if series:
            ax.legend(fontsize=6 if len(series) > 8 else 7, loc="upper left",
                      ncol=3 if len(series) > 8 else 2 if len(series) > 4 else 1)
        elif not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    notes = "; ".join(f"{time.strftime('%H:%M:%S', time.localtime(at))} {what}" for at, what in marks)
    fig.suptitle(
        "lbactors — contrib/grafana/lbactors.json's panels and queries, evaluated by a real "
        f"Prometheus scraping a real run (matplotlib; Grafana not installable here)\n{notes}",
        fontsize=11, x=0.01, ha="left",
    )
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)


def _dt(stamp: float) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(stamp)


def scenario_dashboard(args: argparse.Namespace,
                       start_daemon: Callable[..., procs.Daemon],
                       measure_run: Callable[[procs.Daemon, int, int, bool], dict[str, Any]],
                       stop_target: Callable[[procs.Daemon], None]) -> int:
    binary = shutil.which(args.prometheus) or args.prometheus
    if not os.path.exists(binary):
        _log(f"no Prometheus at {args.prometheus} (apt-get install prometheus)")
        return 1
    vhost = f"lbactors_dashboard_{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    args.amqp_url = f"{args.amqp_url.rstrip('/')}/{vhost}"
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    daemon: procs.Daemon | None = None
    prometheus: Prometheus | None = None
    marks: list[tuple[float, str]] = []
    ok = True
    try:
        daemon = start_daemon(args, metrics=True, stats_interval=args.stats_interval,
                              backend_latency_ms=args.backend_latency)
        port = daemon.env["LBACTORS_METRICS_PORT"]
        trio.run(_declare_status_sink, args.amqp_url, "common", daemon.driver_topic)
        prometheus = Prometheus(binary, f"127.0.0.1:{port}", args.scrape_interval, run_dir)
        start = time.time()
        pause = args.pause

        def phase(what: str, lbs: int, concurrency: int, resident: bool = False) -> None:
            nonlocal ok
            assert daemon is not None
            marks.append((time.time(), what))
            _log(f"{what}: {lbs} load balancers, C = {concurrency}")
            row = measure_run(daemon, lbs, concurrency, resident)
            ok &= bool(row["ok"])
            _log(f"  {row['ops_completed']}/{row['ops_planned']} ops, {row['ops_per_s']} ops/s")

        _log("idle")
        time.sleep(pause)
        phase("resident load balancers created", args.lbs // 4, 10, True)
        time.sleep(pause)
        phase("loaded", args.lbs, 50)
        time.sleep(pause / 2)
        marks.append((time.time(), "malformed messages"))
        trio.run(_publish_malformed, args.amqp_url, "common", daemon.topic, args.malformed)
        time.sleep(pause / 2)

        def kill_a_worker() -> None:
            assert daemon is not None
            victims = procs.children(daemon.pid)
            if victims:
                marks.append((time.time(), f"worker pid {victims[0]} killed (-9)"))
                os.kill(victims[0], signal.SIGKILL)
                time.sleep(0.3)
                status = subprocess.run([sys.executable, "-m", "supervisor", "status"],
                                        capture_output=True, text=True, timeout=30, cwd=REPO)
                _log(f"lbactors status 0.3 s after the kill (daemon pid {daemon.pid}):\n"
                     f"{status.stdout}{status.stderr}")

        killer = threading.Timer(3.0, kill_a_worker)
        killer.start()
        phase("loaded", args.lbs, 50)
        killer.join()
        time.sleep(pause / 2)
        marks.append((time.time(), "broker closed the connection"))
        _rabbitmqctl("close_all_connections", "-p", vhost, "lbactors bench dashboard")
        time.sleep(pause)
        phase("light", args.lbs // 2, 5)
        time.sleep(pause)
        end = time.time()
        time.sleep(2 * args.scrape_interval)
        out = Path(args.out)
        rate_interval = f"{4 * args.scrape_interval:g}s"
        render(prometheus, start, end, args.scrape_interval, rate_interval, out, marks)
        _log(f"wrote {out} ({end - start:.0f} s of run)")
    finally:
        if prometheus is not None:
            prometheus.stop()
        if daemon is not None:
            stop_target(daemon)
        _rabbitmqctl("delete_vhost", vhost)
    return 0 if ok else 2
