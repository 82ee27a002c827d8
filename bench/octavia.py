"""``python -m bench octavia``: the real Octavia 19 in the loop, timed object by object.

The stack of the end-to-end suite (``tests/octavia_stack.py``: Octavia's API under gunicorn and
its driver agent on a private MariaDB, lbactors' provider driver and agent inside them) and
``lbactors serve`` (noop backend) on a RabbitMQ vhost of their own. Load balancers are built
through Octavia's REST API, child by child (load balancer, listener, pool, 2 members, health
monitor, L7 policy, L7 rule), and every create is timed at four points:

- **call**: just before the ``POST``;
- **cast**: the driver's operation cast seen on the broker (a tap queue bound to the daemon's
  topic on the same exchange gets a copy of every cast);
- **status**: the daemon's status cast naming the object ``ACTIVE`` seen on the broker (the same
  tap, bound to the driver topic; re-assertions, marked in their oslo context, are not counted);
- **active**: the object ``ACTIVE`` in Octavia's database (polled every ``--poll`` s, as its API
  reads it), with its load balancer ``ACTIVE`` again for the 1-at-a-time runs.

So *call → active* is what a user of the API waits, *cast → status* is lbactors' own share
(receipt to status cast, both on the one broker; two broker hops included), *call → cast* is
Octavia's API before it casts and *status → active* the provider agent, the driver agent and the
database (plus up to one poll). A create whose status was cast **before the API answered** may
have met Octavia's commit race (the API commits just before it answers: an upper bound of the
statuses a dropping peer would lose); the provider agent's ``retried`` counter gives the entries
it really found uncommitted, and the daemon's ``reasserted`` what it cast again.

``--lbs 1,50``: ``1`` builds ``--repeat`` load balancers one after the other (each step waits
for ACTIVE); ``50`` builds 50 at once, phase by phase (each phase one call per load balancer,
all at once, then all ACTIVE), as the end-to-end test does. Results: ``bench/results/octavia.md``
and ``bench/results/raw/octavia-*.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench import procs, report
from lbactors.amqp.connection import open_connection

REPO = Path(__file__).resolve().parent.parent
STEPS = ("loadbalancer", "listener", "pool", "member1", "member2", "healthmonitor", "l7policy",
         "l7rule")
KIND_OF_STEP = {"member1": "member", "member2": "member"}
TABLE_OF_KIND = {"loadbalancer": "load_balancer", "listener": "listener", "pool": "pool",
                 "member": "member", "healthmonitor": "health_monitor", "l7policy": "l7policy",
                 "l7rule": "l7rule"}
STATUS_KEY_OF_KIND = {"loadbalancer": "loadbalancers", "listener": "listeners", "pool": "pools",
                      "member": "members", "healthmonitor": "healthmonitors",
                      "l7policy": "l7policies", "l7rule": "l7rules"}


def _log(message: str) -> None:
    print(f"[octavia {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- what is timed -------------------------------------------------------------------------

@dataclass
class Create:
    """One create through the API and the four times it is seen at (monotonic seconds)."""

    step: str
    lb_index: int
    call: float
    answered: float = 0.0
    object_id: str = ""
    cast: float | None = None
    status: float | None = None
    active: float | None = None

    def spans(self) -> dict[str, float | None]:
        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a
        return {"call_active": span(self.call, self.active), "call_cast": span(self.call, self.cast),
                "lbactors": span(self.cast, self.status), "status_active": span(self.status, self.active)}

    @property
    def before_answer(self) -> bool:
        return self.status is not None and self.status < self.answered


@dataclass
class Tap:
    """First sight of each object on the broker: its create cast and its ACTIVE status cast."""

    casts: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, float] = field(default_factory=dict)
    reassertions: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def seen(self, body: bytes, at: float) -> None:
        try:
            inner = json.loads(json.loads(body)["oslo.message"])
        except (ValueError, KeyError, TypeError):
            return
        method = inner.get("method", "")
        args = inner.get("args") or {}
        with self.changed:
            if method.endswith("_create"):
                obj = args.get(method.removesuffix("_create"))
                if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                    self.casts.setdefault(obj["id"], at)
            elif method == "update_loadbalancer_status":
                if inner.get("_context_lbactors_reassertion"):
                    self.reassertions += 1
                    return
                for entries in (args.get("status") or {}).values():
                    for entry in entries or []:
                        if entry.get("provisioning_status") == "ACTIVE":
                            self.statuses.setdefault(entry["id"], at)
            self.changed.notify_all()


async def run_tap(url: str, exchange: str, keys: list[str], tap: Tap,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_connection(url, heartbeat=60, client_name="lbactors-bench-tap") as conn:
        channel = await conn.open_channel()
        await channel.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
        queue = f"bench_tap_{uuid.uuid4().hex[:8]}"
        await channel.queue_declare(queue, durable=False, auto_delete=True, exclusive=True)
        for key in keys:
            await channel.queue_bind(queue, exchange, key)
        consumer = await channel.basic_consume(queue, no_ack=True)
        task_status.started()
        async for delivery in consumer:
            tap.seen(delivery.body, time.monotonic())


class Database:
    """Polls the project's rows in Octavia's database: the first time each id is ACTIVE."""

    def __init__(self, stack: Any, project_id: str, poll: float) -> None:
        self.stack = stack
        self.project_id = project_id
        self.poll = poll
        self.now: dict[str, str] = {}
        self.first_active: dict[str, float] = {}
        self.polls = 0
        self.changed = threading.Condition()
        self.stop = threading.Event()

    def query(self) -> dict[str, str]:
        sql = " UNION ALL ".join(
            f"SELECT id, provisioning_status FROM {table} WHERE project_id = '{self.project_id}'"
            for table in TABLE_OF_KIND.values())
        return {row[0]: row[1] for row in self.stack.sql(sql) if len(row) >= 2}

    def run(self) -> None:
        while not self.stop.is_set():
            rows = self.query()
            at = time.monotonic()
            with self.changed:
                self.now = rows
                self.polls += 1
                for object_id, status in rows.items():
                    if status == "ACTIVE":
                        self.first_active.setdefault(object_id, at)
                self.changed.notify_all()
            self.stop.wait(self.poll)

    def wait(self, ready: Callable[[dict[str, str]], bool], timeout: float, what: str) -> float:
        """The time of the first poll (after this call) where ``ready(rows)``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            start = self.polls
            while self.polls == start or not ready(self.now):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: not ready after {timeout} s")
                self.changed.wait(left)
            return time.monotonic()


# ---- the builds ----------------------------------------------------------------------------

def _fields(step: str, tree: dict[str, str], index: int) -> tuple[str, dict[str, Any], str | None]:
    """``(kind, body fields, parent id)`` of one create."""
    if step == "loadbalancer":
        return "loadbalancer", {"name": f"bench-{index}", "vip_subnet_id": str(uuid.uuid4())}, None
    if step == "listener":
        return "listener", {"loadbalancer_id": tree["loadbalancer"], "protocol": "HTTP",
                            "protocol_port": 80}, None
    if step == "pool":
        return "pool", {"listener_id": tree["listener"], "protocol": "HTTP",
                        "lb_algorithm": "ROUND_ROBIN"}, None
    if step in ("member1", "member2"):
        return "member", {"address": f"192.0.2.{step[-1]}", "protocol_port": 8080}, tree["pool"]
    if step == "healthmonitor":
        return "healthmonitor", {"pool_id": tree["pool"], "type": "HTTP", "delay": 5,
                                 "timeout": 3, "max_retries": 3}, None
    if step == "l7policy":
        return "l7policy", {"listener_id": tree["listener"], "action": "REJECT",
                            "position": 1}, None
    return "l7rule", {"type": "PATH", "compare_type": "STARTS_WITH", "value": "/x"}, tree["l7policy"]


def _create(client: Any, step: str, tree: dict[str, str], index: int) -> Create:
    kind, fields, parent = _fields(step, tree, index)
    record = Create(step=step, lb_index=index, call=time.monotonic())
    made = client.create(kind, fields, parent=parent)
    record.answered = time.monotonic()
    record.object_id = tree[step] = made["id"]
    return record


def build_one_at_a_time(client: Any, db: Database, repeat: int, timeout: float) -> list[Create]:
    creates = []
    for index in range(repeat):
        tree: dict[str, str] = {}
        for step in STEPS:
            record = _create(client, step, tree, index)
            lb_id = tree["loadbalancer"]
            db.wait(lambda rows, r=record, lb=lb_id: rows.get(r.object_id) == "ACTIVE"
                    and rows.get(lb) == "ACTIVE", timeout, f"{step} of load balancer {index}")
            creates.append(record)
    return creates


def build_at_once(client: Any, db: Database, lbs: int, timeout: float
                  ) -> tuple[list[Create], dict[str, float]]:
    trees: list[dict[str, str]] = [{} for _ in range(lbs)]
    creates: list[Create] = []
    phases: dict[str, float] = {}
    lock = threading.Lock()
    for step in STEPS:
        start = time.monotonic()
        made: list[Create] = []

        def one(index: int, step: str = step, made: list[Create] = made) -> None:
            record = _create(client, step, trees[index], index)
            with lock:
                made.append(record)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(lbs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout)
        if len(made) != lbs:
            raise RuntimeError(f"phase {step}: {lbs - len(made)} creates failed")
        ids = [r.object_id for r in made] + [tree["loadbalancer"] for tree in trees]
        db.wait(lambda rows, ids=ids: all(rows.get(i) == "ACTIVE" for i in ids), timeout,
                f"phase {step}")
        phases[step] = time.monotonic() - start
        _log(f"phase {step}: {lbs} creates, all ACTIVE in {phases[step]:.2f} s")
        creates += made
    return creates, phases


# ---- one run ------------------------------------------------------------------------------

def _stopped(daemon: procs.Daemon) -> dict[str, Any]:
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        if '"lbactors stopped"' in line:
            try:
                return dict(json.loads(line))
            except ValueError:
                return {}
    return {}


def run(args: argparse.Namespace, stack: Any, names: dict[str, str], lbs: int,
        run_dir: Path) -> dict[str, Any]:
    from tests.octavia_stack import OctaviaClient

    project = uuid.uuid4().hex
    client = OctaviaClient(stack.api_url, project_id=project, timeout=120)
    db = Database(stack, project, args.poll)
    tap = Tap()
    agent_before = stack.agent_counters()
    daemon = procs.Daemon(
        topic=names["topic"], driver_topic=names["driver_topic"], run_dir=run_dir,
        amqp_url=stack.amqp_url, workers=2, log_level="info",
        extra_env={"LBACTORS_AMQP_EXCHANGE": names["exchange"],
                   "LBACTORS_DAEMON_STOP_TIMEOUT": "5"})
    daemon.start()
    _log(f"lbactors serve ready in {daemon.startup_s:.2f} s; {lbs} load balancer(s)")
    poller = threading.Thread(target=db.run, daemon=True)
    poller.start()
    phases: dict[str, float] = {}
    creates: list[Create] = []

    async def main() -> None:
        nonlocal creates, phases
        async with trio.open_nursery() as nursery:
            await nursery.start(run_tap, stack.amqp_url, names["exchange"],
                                [names["topic"], names["driver_topic"]], tap)
            t0 = time.monotonic()
            if lbs == 1:
                creates = await trio.to_thread.run_sync(
                    build_one_at_a_time, client, db, args.repeat, args.timeout)
            else:
                creates, phases = await trio.to_thread.run_sync(
                    build_at_once, client, db, lbs, args.timeout)
            _log(f"built in {time.monotonic() - t0:.1f} s; settling {args.settle} s")
            await trio.sleep(args.settle)  # re-assertions and agent retries land
            lb_ids = [c.object_id for c in creates if c.step == "loadbalancer"]

            def cleanup() -> None:
                for lb_id in lb_ids:
                    client.delete("loadbalancer", lb_id, cascade=True)
                client.wait_for_statuses("loadbalancer", lb_ids, "DELETED", args.timeout)

            await trio.to_thread.run_sync(cleanup)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        db.stop.set()
        poller.join(10)
        daemon.stop()
    with tap.changed:
        for c in creates:
            c.cast = tap.casts.get(c.object_id)
            c.status = tap.statuses.get(c.object_id)
    for c in creates:
        c.active = db.first_active.get(c.object_id)
    stopped = _stopped(daemon)
    agent_after = stack.agent_counters()
    agent = {key: value - agent_before.get(key, 0) for key, value in agent_after.items()}
    return {"lbs": lbs, "repeat": args.repeat if lbs == 1 else 1, "creates": creates,
            "phases": phases, "reasserted": stopped.get("reasserted"),
            "reassertions_dropped": stopped.get("reassertions_dropped"),
            "reassertion_casts_seen": tap.reassertions, "agent": agent,
            "completed": stopped.get("completed")}


# ---- reporting ----------------------------------------------------------------------------

def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    if q == 0.5:
        return round(statistics.median(values) * 1000, 1)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


def step_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    creates: list[Create] = result["creates"]
    for step in STEPS:
        mine = [c for c in creates if c.step == step]
        spans = [c.spans() for c in mine]
        row: dict[str, Any] = {"lbs": result["lbs"], "step": step, "creates": len(mine)}
        for key in ("call_active", "call_cast", "lbactors", "status_active"):
            values = [s[key] for s in spans if s[key] is not None]
            row[f"{key}_p50_ms"] = _ms(values, 0.5)
            row[f"{key}_p95_ms"] = _ms(values, 0.95)
            row[f"{key}_missing"] = len(mine) - len(values)
        call_active = row["call_active_p50_ms"]
        lbactors = row["lbactors_p50_ms"]
        row["lbactors_share"] = (f"{lbactors / call_active:.1%}"
                                 if call_active and lbactors is not None else None)
        row["status_before_answer"] = sum(c.before_answer for c in mine)
        row["phase_s"] = round(result["phases"][step], 2) if step in result["phases"] else None
        rows.append(row)
    return rows


COLUMNS = [
    ("lbs", "LBs at once"), ("step", "step"), ("creates", "creates"),
    ("call_active_p50_ms", "call → ACTIVE p50 ms"), ("call_active_p95_ms", "p95 ms"),
    ("call_cast_p50_ms", "call → cast p50 ms"), ("lbactors_p50_ms", "cast → status (lbactors) p50 ms"),
    ("lbactors_p95_ms", "p95 ms"), ("status_active_p50_ms", "status → ACTIVE p50 ms"),
    ("lbactors_share", "lbactors' share of p50"), ("status_before_answer", "status before the API answered"),
    ("phase_s", "phase, all ACTIVE s"),
]


def scenario_octavia(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from tests.octavia_stack import octavia_stack, octavia_venv_ready

    if not octavia_venv_ready():
        _log("the Octavia venv is not built: run scripts/octavia-venv")
        return 2
    sizes = [int(s) for s in args.lbs.split(",")]
    prefix = f"lbb_{uuid.uuid4().hex[:10]}"
    names = {"topic": f"{prefix}_lb_listener", "driver_topic": f"{prefix}_driver_listener",
             "exchange": f"{prefix}_common"}
    writer = report.ResultsWriter("octavia", Path(args.results))
    all_rows: list[dict[str, Any]] = []
    summaries: list[str] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    busy = procs.idle_check(1.0)
    with octavia_stack(provider_drivers={"lbactors": "lbactors serve with its noop backend"},
                       provider_agents=["lbactors"], extra_conf={"lbactors": dict(names)},
                       api_workers=args.api_workers) as stack:
        _log(f"Octavia up: {stack.api_url}")
        for lbs in sizes:
            with tempfile.TemporaryDirectory(prefix="lbactors-bench-octavia-") as run_dir:
                result = run(args, stack, names, lbs, Path(run_dir))
            rows = step_rows(result)
            for row in rows:
                writer.add(row)
            all_rows += rows
            creates: list[Create] = result["creates"]
            affected = sum(c.before_answer for c in creates)
            summary = (
                f"{lbs} at once ({len(creates)} creates): status cast before the API answered "
                f"for {affected}; the provider agent found {result['agent'].get('retried', 0)} "
                f"entries uncommitted (retried) and dropped {result['agent'].get('dropped', 0)}; "
                f"lbactors serve re-asserted {result['reasserted']} entries "
                f"({result['reassertion_casts_seen']} casts seen; "
                f"{result['reassertions_dropped']} dropped by the gateway), of which the agent "
                f"skipped {result['agent'].get('reassertions_skipped', 0)} as written already"
            )
            if result["phases"]:
                summary += f"; built in {sum(result['phases'].values()):.1f} s"
            writer.add({"lbs": lbs, "summary": summary, "agent": result["agent"],
                        "reasserted": result["reasserted"], "completed": result["completed"]})
            summaries.append(summary)
            _log(summary)
    notes = [
        "",
        f"Command: `python -m bench octavia --lbs {args.lbs} --repeat {args.repeat}`; {started}; "
        f"machine busy {busy}% in the second before. Octavia 19 (API under gunicorn with "
        f"{args.api_workers} workers, its driver agent, a private MariaDB), lbactors' provider "
        "driver and agent, `lbactors serve` (noop backend, 2 workers, default re-assertion "
        "schedule), all on 2 CPUs. The database is polled every "
        f"{args.poll} s, so call → ACTIVE and status → ACTIVE include up to one poll.",
        "",
        "**call → ACTIVE**: the POST to the object ACTIVE in Octavia's database (1 at once: with "
        "its load balancer ACTIVE again). **call → cast**: Octavia's API until the driver's cast "
        "is on the broker. **cast → status**: lbactors serve, from the operation on the broker to "
        "its status cast on the broker. **status → ACTIVE**: the provider agent, Octavia's driver "
        "agent and the database. **status before the API answered**: the status cast was on the "
        "broker before the API's answer (which follows its commit): at most this many statuses "
        "met the commit race. Definitions: `bench/octavia.py`.",
        "",
        *[f"- {s}" for s in summaries],
    ]
    writer.write_table(all_rows, COLUMNS, title="The real Octavia in the loop", notes=notes)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lbs", default="1,50", help="comma-separated: load balancers built at once")
    p.add_argument("--repeat", type=int, default=5,
                   help="load balancers built one after the other in the 1-at-once run")
    p.add_argument("--poll", type=float, default=0.05, help="database poll interval, s")
    p.add_argument("--settle", type=float, default=15.0,
                   help="s to wait after the build (re-assertions, agent retries)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--api-workers", type=int, default=4)
    p.add_argument("--results", default=str(REPO / "bench" / "results"))

