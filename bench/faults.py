"""``python -m bench faults``: what lbactors does when things break, each fault under load.

Every row starts its own ``lbactors serve`` (unique topic, driver topic and exchange names;
JSON logs captured in ``<run-dir>/faults-<row>-…/lbactors.log``), drives the workload of
:mod:`bench.workload` at it with the bench driver (``--lbs`` load balancers of ``--members``
members per workload, ``--concurrency`` in flight; workloads are repeated while the fault is
still going on, so the load never stops during it), injects one fault, then plays a small
probe workload (``--probe-lbs``) once the fault is over to show the daemon still serves.

Daemon settings common to every row: ``daemon.ping_interval = 1``, ``daemon.ping_timeout = 5``
(so that a silent worker is killed within seconds, not 30 s), noop backend latency
``--backend-latency-ms`` (20 ms), no statistics rounds (the soak has them every 5 s).

Rows (``--only`` takes their numbers or names):

1. ``hang``: the noop backend never answers a call for an object whose name matches
   ``hang_pattern`` (here one load balancer create in 10), ``operation_deadline = 2``: those
   operations end ERROR at the deadline; they are the row's expected errors.
2. ``hang_ignore_cancel``: the same with ``ignore_cancel = true`` (one in 20),
   ``cancel_grace = 2``: abandoned after deadline + grace, ERROR, the worker replaced and its
   other operations replayed.
3. ``sigstop_30s``: one worker SIGSTOPped for 30 s, then SIGCONT. With a 5 s ping timeout it is
   killed and replaced long before the SIGCONT (which then finds no process).
4. ``sigstop_forever``: one worker SIGSTOPped, never continued: it must be killed and replaced.
5. ``worker_kill9``: one worker SIGKILLed.
6. ``daemon_kill9``: every process of the daemon SIGKILLed at once, then a new daemon on the
   same queues (unacked deliveries are redelivered to it).
7. ``broker_restart``: a private RabbitMQ node (its own port, data directory and node name;
   never the shared broker) with durable queues on both sides
   (``LBACTORS_AMQP_DURABLE_QUEUES=true``, driver ``durable``, publisher confirms on the
   driver's casts); ``rabbitmqctl stop_app``, 3 s, ``start_app`` mid-load. The driver
   reconnects and re-sends casts the broker did not confirm, as oslo.messaging does. The node
   is stopped (``rabbitmqctl stop``, then SIGKILL by pid) at the end of the row, always.
8. ``sigterm_restart``: SIGTERM to the daemon mid-load (``grace_period = 10``): it drains and
   exits; a new daemon is started on the same queues.
9. ``malformed``: 1,000 messages of every kind of :mod:`bench.malformed` published on the
   daemon's topic while the load runs, with a dead-letter exchange configured (a queue bound
   to it counts what was dead-lettered). The load must complete, the topic queue must be
   empty at the end (nothing requeued), the daemon still serving.
10. ``poison``: the noop backend kills its worker (``crash_pattern``) on one load balancer
    create in 20: each such operation must end ERROR after ``poison_after = 2`` worker deaths
    (restart budget raised to 1,000); everything else completes.
11. ``soak``: ``--soak-seconds`` of workloads back to back, statistics every 5 s, sampling RSS
    and open file descriptors of every daemon process (supervisor and workers, ``/proc``)
    every ``--sample-seconds``: start / end / max and growth, a table and a plot
    (``faults-soak.md``, ``faults-soak.png``).

Figures of a row:

* **planned / completed**: operations of every workload played in the row (probe included);
  completed means its status update arrived within the driver's ``--timeout``.
* **errors**: operations whose status update said ERROR (or failed validation);
  **expected** is what the fault must produce (rows 1, 2, 10: one per matching load balancer,
  computed from the pattern and the load balancers played); a row passes when errors equal
  expected errors and nothing is missing.
* **missing**: planned − completed: operations without a status update in time (timed out,
  or never cast because their load balancer was stuck), whatever the cause.
* **recover s**: for an instantaneous fault (rows 3–8), from the fault's injection to the
  status update of the *last* operation that was in flight (cast, not yet answered) at that
  instant: when all the work the fault caught is done again. For rows 1, 2 and 10 (no single
  instant), the longest time an erroring operation stayed pending (cast -> its ERROR status).
  None for rows 9 and 11 (nothing to recover from: the load must simply not notice).
  The broker row's instant is when ``rabbitmqctl stop_app`` returned (the broker is down).
  **stall s** is the fault -> the first status update after it (of any operation);
  **max gap s** the longest time without any status update from the fault to the end of the
  workload it struck in (the outage as Octavia sees it: a daemon restart shows here);
  **ready s** the fault -> the daemon's next ``worker ready`` (worker faults),
  ``lbactors ready`` (daemon restarts) or ``gateway connected`` (broker) in its log.
* **daemon logged**: counts of the daemon's error / warning events (most severe first) and of
  a few info events (``lbactors ready``, ``worker ready``, ``gateway connected``, ...) in the
  row's log. Left out of the table, kept in the raw row: the start-up warning about
  non-durable queues, and ``cannot notify systemd``, which the harness causes (it closes its
  ``NOTIFY_SOCKET`` once it got ``READY=1``).

Which code runs: ``--daemon-code worktree`` (default) runs ``python -m supervisor serve`` from
the checkout, as the other scenarios do; ``--daemon-code HEAD`` (or any commit) runs it from a
``git archive`` of that commit's ``lbactors/`` and ``supervisor/`` in a temporary directory, so
that uncommitted edits made meanwhile in the checkout do not change what is measured. The
table's notes and every raw row say which.

Every process started here is stopped by its pid in a ``finally``; every wait is bounded.
Exit status 0 when every row has 0 missing and exactly its expected errors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import trio

from bench import procs, report
from bench.driver import Driver, DriverConfig, delete_queues
from bench.malformed import KINDS, malformed_messages
from bench.workload import ERROR, PROV, Operation, operations_per_lb
from lbactors.amqp import oslo
from lbactors.amqp.connection import Channel, Connection, open_connection
from lbactors.amqp.errors import AMQPError, ChannelClosed

Row = dict[str, Any]

ROWS: list[tuple[str, str]] = [
    ("hang", "backend hang (cancellable), deadline 2 s"),
    ("hang_ignore_cancel", "backend hang ignoring cancellation, deadline 2 s + grace 2 s"),
    ("sigstop_30s", "worker SIGSTOP 30 s, then SIGCONT"),
    ("sigstop_forever", "worker SIGSTOP for ever"),
    ("worker_kill9", "worker kill -9"),
    ("daemon_kill9", "daemon kill -9 (all processes) + restart"),
    ("broker_restart", "broker stop_app / start_app (private node, durable queues)"),
    ("sigterm_restart", "SIGTERM drain + restart"),
    ("malformed", "1,000 malformed messages mixed into the load"),
    ("poison", "poison operation (crashes its worker), poison_after 2"),
    ("soak", "soak: workloads back to back"),
]
ROW_NAMES = [name for name, _ in ROWS]

#: daemon settings for every row
BASE_ENV = {
    "LBACTORS_DAEMON_PING_INTERVAL": "1",
    "LBACTORS_DAEMON_PING_TIMEOUT": "5",
}
HANG_PATTERN = r"^lb-\d*7$"  # one load balancer create in 10
HANG_IGNORE_PATTERN = r"^lb-(\d*[02468])?3$"  # one in 20
CRASH_PATTERN = r"^lb-(\d*[02468])?5$"  # one in 20
#: events counted in the table besides every warning / error / critical one
INFO_EVENTS = ("lbactors ready", "worker ready", "reconnecting to the broker", "stopping",
               "gateway connected",
               "lbactors stopped")
#: left out of the table (kept in the raw row): the warning every start gives with non-durable
#: queues, and the harness's own doing (it closes its NOTIFY_SOCKET once it got READY=1)
NOISE_PREFIXES = ("queues are not durable", "cannot notify systemd")
#: the daemon's events about bad input (gateway and dispatch)
MALFORMED_EVENTS = ("rejected malformed message", "rejected message for another endpoint",
                    "invalid operation", "delivery handler failed; rejecting the message",
                    "routing failed", "no load balancer found for object",
                    "dead-letter publish failed; rejecting", "failure reply not sent",
                    "reply not sent")

CAST_ATTEMPTS = 200
RECONNECT_PAUSE = 0.5
MAX_WORKLOADS = 500


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- which daemon code runs ----------------------------------------------------------------

def snapshot_code(ref: str) -> tuple[Path, str]:
    """``lbactors/`` and ``supervisor/`` of commit ``ref`` in a fresh directory (``git archive``:
    the checkout is only read); the directory and the full commit id."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=procs.REPO,
                            check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix="lbactors-faults-code-"))
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "lbactors", "supervisor"],
                             cwd=procs.REPO, check=True, capture_output=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True, timeout=60)
    return target, commit


def worktree_state() -> str:
    """The checkout's commit, and the production files changed in the working tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=procs.REPO,
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lbactors", "supervisor"],
                               cwd=procs.REPO, capture_output=True, text=True,
                               timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


class CodeDaemon(procs.Daemon):
    """:class:`procs.Daemon` run from ``code_dir`` (a snapshot) instead of the checkout."""

    code_dir: Path | None = None

    def start(self, ready_timeout: float = 60.0) -> CodeDaemon:
        if self.code_dir is None:
            super().start(ready_timeout)
            return self
        # procs.Daemon.start with another working directory (``python -m`` imports from it)
        sock_dir = tempfile.mkdtemp(prefix="lbactors-bench-notify-")
        sock_path = os.path.join(sock_dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        env = dict(os.environ)
        env.update(self.env)
        env["NOTIFY_SOCKET"] = sock_path
        env["PYTHONPATH"] = str(self.code_dir)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        t0 = time.monotonic()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "serve"], cwd=self.code_dir, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
            deadline = t0 + ready_timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop()
                    raise procs.TargetFailed(f"lbactors not ready in {ready_timeout} s:\n"
                                             + self._log_tail())
                sock.settimeout(min(remaining, 0.2))
                try:
                    message = sock.recv(65536).decode(errors="replace")
                except TimeoutError:
                    if self.process.poll() is not None:
                        raise procs.TargetFailed(f"lbactors exited with "
                                                 f"{self.process.returncode}:\n"
                                                 + self._log_tail()) from None
                    continue
                if "READY=1" in message.splitlines():
                    self.startup_s = time.monotonic() - t0
                    return self
        finally:
            log.close()
            sock.close()
            os.unlink(sock_path)
            os.rmdir(sock_dir)


# ---- the driver, with fault marks and reconnection ---------------------------------------

@dataclass
class FaultMark:
    """One fault's instant and what was in flight then."""

    name: str
    t: float
    wall: float
    #: (type, id) of every operation pending at ``t`` -> when its status update arrived
    watch: dict[tuple[str, str], float | None]
    first_status: float | None = None
    #: when the workload the fault struck in ended
    workload_end: float | None = None

    def recover_s(self) -> float | None:
        if not self.watch:
            return None if self.first_status is None else round(self.first_status - self.t, 3)
        if any(v is None for v in self.watch.values()):
            return None  # some never got their status
        return round(max(cast(float, v) for v in self.watch.values()) - self.t, 3)

    def stall_s(self) -> float | None:
        return None if self.first_status is None else round(self.first_status - self.t, 3)

    def max_gap_s(self, arrivals: list[float]) -> float | None:
        """The longest time without any status update, from the fault to the end of the
        workload it struck in (what Octavia sees of the outage)."""
        if self.workload_end is None:
            return None
        times = [self.t] + [a for a in arrivals if self.t <= a <= self.workload_end]
        return round(max(b - a for a, b in zip(times, times[1:], strict=False)), 3) \
            if len(times) > 1 else None


class FaultDriver(Driver):
    """The bench driver on a connection that comes back (the broker row), with fault marks.

    Casts go through one sender task that outlives any connection: a cast the broker did not
    confirm (connection lost) is sent again once reconnected; the operation keeps the time it
    was first sent.
    """

    def __init__(self, config: DriverConfig, nursery: trio.Nursery) -> None:
        super().__init__(config, cast(Connection, None), cast(Channel, None), nursery)
        self.connected = trio.Event()
        self.reconnects = 0
        #: (monotonic time, "up" / "down") of the driver's own connection
        self.connection_log: list[tuple[float, str]] = []
        self.marks: list[FaultMark] = []
        self.error_latencies: list[float] = []
        self.cast_retries = 0
        #: arrival of every status update once a fault was marked
        self.arrivals: list[float] = []
        self._to_send, self._sending = trio.open_memory_channel[Operation](100_000)

    # ---- connection ----------------------------------------------------------------------
    async def keep_connected(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        cfg = self.config
        started = False
        for attempt in range(10_000):
            failure: BaseException | None = None
            try:
                async with open_connection(cfg.amqp_url, heartbeat=10,
                                           client_name="lbactors-bench-faults") as conn:
                    casts = await conn.open_channel()
                    await casts.exchange_declare(cfg.exchange, "topic", durable=cfg.durable)
                    if cfg.confirm:
                        await casts.confirm_select()
                    receive = await conn.open_channel()
                    self.queues = [q for q in self.queues if "_fanout_" not in q]
                    consumers = await self._listen(receive)
                    self.queues = list(dict.fromkeys(self.queues))
                    self.connection, self.casts = conn, casts
                    async with trio.open_nursery() as inner:
                        for consumer in consumers:
                            inner.start_soon(self._consume, consumer)
                        self.connected.set()
                        self.connection_log.append((time.monotonic(), "up"))
                        if not started:
                            started = True
                            task_status.started()
                        await trio.sleep_forever()
            except (AMQPError, OSError) as exc:
                failure = exc
            except BaseExceptionGroup as group:
                _, rest = group.split((AMQPError, OSError))
                if rest is not None:
                    raise
                failure = group
            if self.connected.is_set():  # waiters keep waiting on the one unset event
                self.connected = trio.Event()
            self.connection_log.append((time.monotonic(), f"down: {failure!r}"[:200]))
            if not started and attempt >= 20:
                raise RuntimeError(f"cannot connect to {cfg.amqp_url}: {failure!r}")
            self.reconnects += 1
            await trio.sleep(RECONNECT_PAUSE)

    async def sender(self) -> None:
        async for op in self._sending:
            await self._send(op)

    async def _send(self, op: Operation) -> None:
        cfg = self.config
        body = op.body if op.body is not None else oslo.encode_cast(op.method, op.args_json)
        error: BaseException | None = None
        for attempt in range(CAST_ATTEMPTS):
            if attempt:
                self.cast_retries += 1
                await trio.sleep(0.2)
            try:
                with trio.fail_after(30):
                    await self.connected.wait()
                    confirmation = await self.casts.publish(cfg.exchange, cfg.topic, body,
                                                            properties=oslo.CAST_PROPERTIES)
                    if confirmation is not None:
                        await confirmation.wait()
                return
            except (AMQPError, trio.TooSlowError) as exc:
                error = exc
        if self.pending.pop(op.key, None) is not None:
            self.c["cast_errors"] += 1
            self._sample("cast_error", f"{op.method}: {error!r}")
            await self._lb_done(failed=True)

    async def _cast(self, op: Operation) -> None:
        self.pending[op.key] = op
        self.c["ops_sent"] += 1
        op.t_sent = time.monotonic()
        if self.t_first_cast is None:
            self.t_first_cast = op.t_sent
        self._to_send.send_nowait(op)

    # ---- marks ---------------------------------------------------------------------------
    def mark(self, name: str) -> FaultMark:
        m = FaultMark(name, time.monotonic(), time.time(), dict.fromkeys(self.pending))
        self.marks.append(m)
        return m

    async def _on_status(self, t: float, status: Any) -> None:
        if self.marks:
            self.arrivals.append(t)
        for m in self.marks:
            if m.first_status is None and t >= m.t:
                m.first_status = t
        await super()._on_status(t, status)

    async def _complete(self, t: float, op: Operation, entry: dict[str, Any],
                        status: dict[str, Any]) -> None:
        for m in self.marks:
            if op.key in m.watch and m.watch[op.key] is None and op.t_sent <= m.t <= t:
                m.watch[op.key] = t
        if entry.get(PROV) == ERROR:
            self.error_latencies.append(t - op.t_sent)
        await super()._complete(t, op, entry, status)


@asynccontextmanager
async def open_fault_driver(config: DriverConfig) -> AsyncIterator[FaultDriver]:
    async with trio.open_nursery() as nursery:
        driver = FaultDriver(config, nursery)
        await nursery.start(driver.keep_connected)
        nursery.start_soon(driver.sender)
        with trio.move_on_after(config.wait_for_consumer) as waited:
            await driver.wait_for_target()
        if waited.cancelled_caught:
            nursery.cancel_scope.cancel()
            raise TimeoutError(f"nothing consumes {config.topic!r}")
        try:
            yield driver
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                if driver.connected.is_set():
                    await driver.delete_queues()
            nursery.cancel_scope.cancel()


# ---- one row's processes ---------------------------------------------------------------------

@dataclass
class RowContext:
    args: argparse.Namespace
    name: str
    run_dir: Path
    amqp_url: str
    env: dict[str, str]
    topic: str
    driver_topic: str
    exchange: str
    stats_interval: float = 0.0
    daemons: list[CodeDaemon] = field(default_factory=list)

    def new_daemon(self) -> CodeDaemon:
        d = CodeDaemon(
            topic=self.topic, driver_topic=self.driver_topic, run_dir=self.run_dir,
            amqp_url=self.amqp_url, workers=self.args.workers,
            backend_latency_s=self.args.backend_latency_ms / 1000.0,
            stats_interval=self.stats_interval, log_level=self.args.daemon_log_level,
            extra_env={"LBACTORS_AMQP_EXCHANGE": self.exchange, **BASE_ENV, **self.env},
        )
        d.code_dir = self.args.code_dir
        self.daemons.append(d)
        return d

    @property
    def daemon(self) -> CodeDaemon:
        return self.daemons[-1]

    @property
    def log_path(self) -> Path:
        return self.run_dir / "lbactors.log"

    def driver_config(self, **over: Any) -> DriverConfig:
        a = self.args
        fields: dict[str, Any] = dict(
            amqp_url=self.amqp_url, topic=self.topic, driver_topic=self.driver_topic,
            exchange=self.exchange, lbs=a.lbs, members=a.members, concurrency=a.concurrency,
            timeout=a.timeout, max_duration=a.max_duration, updates=not a.no_updates,
            drain=a.drain,
        )
        fields.update(over)
        return DriverConfig(**fields)

    def stop_all(self) -> None:
        for d in self.daemons:
            try:
                d.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                _log(f"[{self.name}] stopping daemon {d.process and d.process.pid}: {exc!r}")


def new_context(args: argparse.Namespace, name: str, *, amqp_url: str | None = None,
                env: dict[str, str] | None = None, stats_interval: float = 0.0) -> RowContext:
    tag = uuid.uuid4().hex[:8]
    run_dir = Path(args.run_dir) / f"faults-{name}-{time.strftime('%H%M%S')}-{tag[:6]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return RowContext(args=args, name=name, run_dir=run_dir, amqp_url=amqp_url or args.amqp_url,
                      env=env or {}, topic=f"faults_{tag}__lb_listener",
                      driver_topic=f"faults_{tag}__driver_listener",
                      exchange=f"faults_{tag}_common", stats_interval=stats_interval)


def worker_pids(daemon: procs.Daemon) -> list[int]:
    out = []
    for pid in procs.children(daemon.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"lbactors.worker" in cmd:
            out.append(pid)
    return sorted(out)


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


async def cleanup_broker_objects(ctx: RowContext) -> None:
    """The daemon's topic queues and the row's exchange (nothing consumes them any more)."""
    host = socket.gethostname()
    # the daemons' fanout queues (random names, as oslo's) expire after 30 min; the log
    # names them
    fanout = {q for e in read_log(ctx.log_path) if e.get("event") == "gateway connected"
              for q in e.get("queues") or () if isinstance(q, str) and "_fanout_" in q}
    with trio.move_on_after(15):
        try:
            await delete_queues(ctx.amqp_url, [ctx.topic, f"{ctx.topic}.{host}", ctx.driver_topic,
                                               f"{ctx.driver_topic}.{host}", *sorted(fanout)])
            async with open_connection(ctx.amqp_url, client_name="lbactors-bench-faults") as conn:
                ch = await conn.open_channel()
                for ex in (ctx.exchange, f"{ctx.topic}_fanout", f"{ctx.driver_topic}_fanout"):
                    try:
                        await ch.exchange_delete(ex)
                    except ChannelClosed:
                        ch = await conn.open_channel()
                await ch.close()
        except (AMQPError, OSError) as exc:
            _log(f"[{ctx.name}] cleanup: {exc!r}")


# ---- the daemon's log -----------------------------------------------------------------------

def read_log(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _wall(entry: dict[str, Any]) -> float | None:
    ts = entry.get("timestamp")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_RANK = {"critical": 0, "error": 1, "warning": 2}


def log_events(entries: list[dict[str, Any]]) -> Counter[str]:
    """Event -> count, most severe first (then the most frequent)."""
    counts: Counter[str] = Counter()
    rank: dict[str, int] = {}
    for e in entries:
        event = str(e.get("event", ""))
        level = str(e.get("level"))
        if level in _RANK or event in INFO_EVENTS:
            counts[event] += 1
            rank[event] = min(rank.get(event, 9), _RANK.get(level, 3))
    return Counter(dict(sorted(counts.items(), key=lambda kv: (rank[kv[0]], -kv[1]))))


def events_text(counts: Counter[str]) -> str:
    parts = [f"{event} ×{n}" for event, n in counts.items()
             if not event.startswith(NOISE_PREFIXES)]
    return "; ".join(parts)


def ready_after(entries: list[dict[str, Any]], wall: float, event: str) -> float | None:
    for e in entries:
        if e.get("event") == event:
            t = _wall(e)
            if t is not None and t >= wall:
                return round(t - wall, 3)
    return None


# ---- playing a row ---------------------------------------------------------------------------

@dataclass
class Played:
    results: list[dict[str, Any]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    def total(self, key: str) -> int:
        return sum(int(r.get(key) or 0) for r in self.results)


async def wait_ops(driver: FaultDriver, n: int, within: float = 60.0) -> None:
    """Until ``n`` operations of the current workload got their status (bounded)."""
    with trio.move_on_after(within):
        while driver.c["ops_completed"] < n:  # noqa: ASYNC110 - a counter, no event
            await trio.sleep(0.01)


FaultFn = Callable[[FaultDriver], Awaitable[None]]


async def play(ctx: RowContext, driver: FaultDriver, fault: FaultFn | None, *,
               lbs: int | None = None, probe: bool = True, until: float | None = None
               ) -> Played:
    """Workloads while the fault runs (at least one), then the probe workload."""
    args = ctx.args
    lbs = lbs or args.lbs
    played = Played()
    fault_done = trio.Event()
    next_index = 0

    async def run_fault() -> None:
        try:
            if fault is not None:
                await fault(driver)
        finally:
            fault_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_fault)
        t_end = time.monotonic() + (args.max_duration if until is None else until)
        for _ in range(MAX_WORKLOADS):
            result = await driver.run_workload(lbs=lbs, first_index=next_index)
            for m in driver.marks:
                if m.workload_end is None:
                    m.workload_end = time.monotonic()
            result.pop("per_op_latency_ms", None)
            played.results.append(result)
            played.indices += range(next_index, next_index + lbs)
            next_index += lbs
            if until is not None:
                if time.monotonic() >= t_end:
                    break
            elif fault_done.is_set() or time.monotonic() >= t_end:
                break
        with trio.move_on_after(args.max_duration):
            await fault_done.wait()
        nursery.cancel_scope.cancel()
    if probe and args.probe_lbs > 0:
        result = await driver.run_workload(lbs=args.probe_lbs, first_index=next_index)
        result.pop("per_op_latency_ms", None)
        result["probe"] = True
        played.results.append(result)
        played.indices += range(next_index, next_index + args.probe_lbs)
    return played


def expected_errors(pattern: str | None, indices: list[int]) -> int:
    """One ERROR per load balancer whose create matches ``pattern`` (its name ``lb-<i>``;
    updates rename it ``lb-<i>-renamed``, so nothing else of it matches)."""
    if not pattern:
        return 0
    rx = re.compile(pattern)
    return sum(1 for i in indices if rx.search(f"lb-{i}"))


def summarize(ctx: RowContext, number: int, title: str, played: Played, driver: FaultDriver, *,
              expected: int = 0, mark: FaultMark | None = None, ready_event: str | None = None,
              extra: Row | None = None, alive: bool | None = None) -> Row:
    entries = read_log(ctx.log_path)
    counts = log_events(entries)
    planned = played.total("ops_planned")
    completed = played.total("ops_completed")
    errors = played.total("errors")
    missing = planned - completed
    gap = None
    if mark is not None:
        recover = mark.recover_s()
        stall = mark.stall_s()
        gap = mark.max_gap_s(driver.arrivals)
        ready = ready_after(entries, mark.wall, ready_event) if ready_event else None
    else:
        recover = round(max(driver.error_latencies), 3) if driver.error_latencies else None
        stall = ready = None
    row: Row = {
        "row": number,
        "fault": ctx.name,
        "title": title,
        "lbs": len(played.indices),
        "workloads": len(played.results),
        "ops_planned": planned,
        "ops_completed": completed,
        "errors": errors,
        "expected_errors": expected,
        "missing": missing,
        "timeouts": played.total("timeouts"),
        "late_status_updates": played.total("late_status_updates"),
        "unmatched_status_updates": played.total("unmatched_status_updates"),
        "recover_s": recover,
        "stall_s": stall,
        "max_gap_s": gap,
        "ready_s": ready,
        "daemon_alive": alive,
        "driver_reconnects": driver.reconnects,
        "cast_retries": driver.cast_retries,
        "log_events": dict(counts),
        "logged": events_text(counts),
        "log": str(ctx.log_path),
        "ok": missing == 0 and errors == expected and alive is not False,
        **(extra or {}),
        "samples": [r.get("samples") for r in played.results if r.get("samples")][:3],
    }
    if mark is not None and driver.reconnects:
        row["driver_connection_log"] = [(round(t - mark.t, 3), what)
                                        for t, what in driver.connection_log[:50]]
    if mark is not None and mark.watch:
        row["in_flight_at_fault"] = len(mark.watch)
        late = sorted((v - mark.t, k) for k, v in mark.watch.items() if v is not None)[-3:]
        row["in_flight_last_answered"] = [(round(dt, 3), k[0], k[1]) for dt, k in late]
        row["in_flight_never_answered"] = sum(1 for v in mark.watch.values() if v is None)
    return row


def summary_line(row: Row) -> str:
    rec = "–" if row.get("recover_s") is None else f"{row['recover_s']:.2f}"
    return (f"{row['row']:>2} {row['fault']:<19} planned {row['ops_planned']:>6} completed "
            f"{row['ops_completed']:>6} errors {row['errors']:>3} (expected "
            f"{row['expected_errors']}) missing {row['missing']:>4} recover {rec} s  "
            f"{'OK' if row['ok'] else 'FAIL'}  logged: {row['logged'] or '-'}")


def _alive(ctx: RowContext) -> bool:
    p = ctx.daemon.process
    return p is not None and p.poll() is None and len(worker_pids(ctx.daemon)) >= 1


# ---- the rows -------------------------------------------------------------------------------------

FaultMaker = Callable[[RowContext, Row], FaultFn]


def run_standard(ctx: RowContext, number: int, title: str, *, fault: FaultMaker | None,
                 pattern: str | None = None, ready_event: str | None = None) -> Row:
    """Start the daemon, play the load with ``fault`` injected, stop everything; the row."""
    extra: Row = {}
    played: Played | None = None
    driver: FaultDriver | None = None
    alive: bool | None = None
    try:
        ctx.new_daemon().start()

        async def go() -> tuple[Played, FaultDriver]:
            async with open_fault_driver(ctx.driver_config()) as d:
                return await play(ctx, d, fault(ctx, extra) if fault else None), d

        played, driver = trio.run(go)
        alive = _alive(ctx)
    finally:
        ctx.stop_all()
        trio.run(cleanup_broker_objects, ctx)
    assert played is not None and driver is not None
    return summarize(ctx, number, title, played, driver,
                     expected=expected_errors(pattern, played.indices),
                     mark=driver.marks[0] if driver.marks else None,
                     ready_event=ready_event, alive=alive, extra=extra)


def _trigger(args: argparse.Namespace) -> int:
    """Operations of the first workload to complete before a fault is injected."""
    return max(1, int(args.lbs * operations_per_lb(args.members, not args.no_updates)
                      * args.fault_at))


def worker_fault(kind: str) -> FaultMaker:
    def make(ctx: RowContext, extra: Row) -> FaultFn:
        async def fault(driver: FaultDriver) -> None:
            await wait_ops(driver, _trigger(ctx.args))
            pids = worker_pids(ctx.daemon)
            if not pids:
                raise RuntimeError("no worker process found")
            victim = pids[0]
            extra["victim_pid"] = victim
            if kind == "kill9":
                driver.mark(kind)
                _signal(victim, signal.SIGKILL)
                return
            driver.mark(kind)
            _signal(victim, signal.SIGSTOP)
            try:
                if kind == "sigstop_30s":
                    await trio.sleep(ctx.args.sigstop_seconds)
                    _signal(victim, signal.SIGCONT)  # long killed by then, normally
                else:
                    # never continued: wait (bounded) until the daemon replaced it
                    with trio.move_on_after(ctx.args.timeout):
                        while procs._alive(victim):  # noqa: ASYNC110 - /proc polling
                            await trio.sleep(0.1)
            finally:
                extra["victim_killed_by_daemon"] = not procs._alive(victim)
                if procs._alive(victim) and kind != "sigstop_30s":
                    _log(f"[{ctx.name}] worker {victim} still there: the daemon never killed it")
                    _signal(victim, signal.SIGKILL)  # ours to clean up: we stopped it
        return fault
    return make


def daemon_kill_fault(ctx: RowContext, extra: Row) -> FaultFn:
    async def fault(driver: FaultDriver) -> None:
        await wait_ops(driver, _trigger(ctx.args))
        old = ctx.daemon
        pids = old.pids()
        driver.mark("daemon_kill9")
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        assert old.process is not None
        await trio.to_thread.run_sync(old.process.wait)
        new = ctx.new_daemon()
        await trio.to_thread.run_sync(new.start)
        extra["restart_ready_s"] = round(new.startup_s or 0, 3)
    return fault


def sigterm_fault(ctx: RowContext, extra: Row) -> FaultFn:
    async def fault(driver: FaultDriver) -> None:
        await wait_ops(driver, _trigger(ctx.args))
        old = ctx.daemon
        assert old.process is not None
        proc = old.process
        driver.mark("sigterm")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await trio.to_thread.run_sync(proc.wait, 60)
        except subprocess.TimeoutExpired:
            code = None
        extra["sigterm_exit_code"] = code
        extra["sigterm_exit_s"] = round(time.monotonic() - t0, 3)
        if code is None:
            _log(f"[{ctx.name}] daemon did not exit within 60 s of SIGTERM")
            old.stop()
        new = ctx.new_daemon()
        await trio.to_thread.run_sync(new.start)
        extra["restart_ready_s"] = round(new.startup_s or 0, 3)
    return fault


# ---- row 7: a private broker --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """A standalone RabbitMQ node on its own port (production-facts.md §3), stopped by pid."""

    def __init__(self, run_dir: Path) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.node = f"lbfaults{self.tag}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lbactors-faults-rabbit-"))
        self.log = run_dir / "rabbitmq-ctl.log"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        d = str(self.dir)
        return {**os.environ, "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_MNESIA_BASE": d,
                "RABBITMQ_LOG_BASE": f"{d}/log", "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
                "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins"}

    def ctl(self, *argv: str, timeout: float = 90.0) -> int:
        with self.log.open("ab") as log:
            log.write(f"$ rabbitmqctl -n {self.node} {' '.join(argv)}\n".encode())
            log.flush()
            try:
                return subprocess.run(["rabbitmqctl", "-n", self.node, *argv], stdout=log,
                                      stderr=subprocess.STDOUT, timeout=timeout,
                                      stdin=subprocess.DEVNULL).returncode
            except subprocess.TimeoutExpired:
                log.write(b"(timed out)\n")
                return -1

    def start(self) -> PrivateBroker:
        (self.dir / "log").mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n")
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        for p in self.dir.rglob("*"):
            shutil.chown(p, "rabbitmq", "rabbitmq")
        subprocess.run(["rabbitmq-server", "-detached"], env=self._env(), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        # await_startup fails at once while the node is not yet registered with epmd
        ok = False
        deadline = time.monotonic() + 90
        while not ok and time.monotonic() < deadline:
            ok = self.ctl("await_startup", "--timeout", "60", timeout=90) == 0
            if not ok:
                time.sleep(1)
        self.pid = self._find_pid()
        if not ok:
            raise RuntimeError(f"private RabbitMQ node {self.node} did not start "
                               f"(see {self.log} and {self.dir}/log)")
        return self

    def _find_pid(self) -> int | None:
        """The node's OS pid, as the node itself says (its command line does not name it)."""
        try:
            out = subprocess.run(["rabbitmqctl", "-n", self.node, "eval", "os:getpid()."],
                                 capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        digits = re.sub(r"\D", "", out)
        if not digits:
            return None
        try:
            cmd = Path(f"/proc/{digits}/cmdline").read_bytes()
        except OSError:
            return None
        return int(digits) if b"beam" in cmd.split(b"\0", 1)[0] else None

    def stop(self) -> None:
        pid = self.pid or self._find_pid()
        tree = procs.process_tree(pid) if pid else []
        self.ctl("stop", timeout=60)
        deadline = time.monotonic() + 15
        while pid and procs._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in tree:
            if procs._alive(p):
                _signal(p, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def row_broker_restart(args: argparse.Namespace, number: int, title: str) -> Row:
    ctx = new_context(args, "broker_restart", env={"LBACTORS_AMQP_DURABLE_QUEUES": "true"})
    broker = PrivateBroker(ctx.run_dir)
    extra: Row = {}
    played: Played | None = None
    driver: FaultDriver | None = None
    alive: bool | None = None
    try:
        t_start = time.monotonic()
        broker.start()
        extra["broker_start_s"] = round(time.monotonic() - t_start, 1)
        ctx.amqp_url = broker.url
        extra["broker_node"] = broker.node
        extra["broker_port"] = broker.port
        ctx.new_daemon().start()

        def fault_for(c: RowContext) -> FaultFn:
            async def fault(d: FaultDriver) -> None:
                await wait_ops(d, _trigger(args))
                t0 = time.monotonic()
                code = await trio.to_thread.run_sync(broker.ctl, "stop_app")
                d.mark("broker stopped")  # stop_app returned: the broker is down now
                extra["stop_app_s"] = round(time.monotonic() - t0, 3)
                extra["stop_app_rc"] = code
                await trio.sleep(args.broker_down_seconds)
                t1 = time.monotonic()
                code = await trio.to_thread.run_sync(broker.ctl, "start_app")
                extra["start_app_rc"] = code
                extra["stop_to_started_s"] = round(time.monotonic() - t0, 3)
                extra["start_app_s"] = round(time.monotonic() - t1, 3)
            return fault

        async def go() -> tuple[Played, FaultDriver]:
            config = ctx.driver_config(durable=True, confirm=True)
            async with open_fault_driver(config) as d:
                return await play(ctx, d, fault_for(ctx)), d

        played, driver = trio.run(go)
        alive = _alive(ctx)
    finally:
        try:
            ctx.stop_all()
            if played is not None:
                trio.run(cleanup_broker_objects, ctx)
        finally:
            t_stop = time.monotonic()
            broker.stop()
            extra["broker_stop_s"] = round(time.monotonic() - t_stop, 1)
    assert played is not None and driver is not None
    return summarize(ctx, number, title, played, driver, mark=driver.marks[0] if driver.marks
                     else None, ready_event="gateway connected", alive=alive, extra=extra)


# ---- row 9: malformed messages --------------------------------------------------------------------

def row_malformed(args: argparse.Namespace, number: int, title: str) -> Row:
    dlx = f"faults_dlx_{uuid.uuid4().hex[:8]}"
    dlq = f"{dlx}_q"
    ctx = new_context(args, "malformed", env={"LBACTORS_AMQP_DEAD_LETTER_EXCHANGE": dlx})
    extra: Row = {}
    messages = malformed_messages(args.malformed, seed=1)
    extra["malformed_sent_by_kind"] = dict(Counter(m.kind for m in messages))

    async def declare_dlx() -> None:
        async with open_connection(ctx.amqp_url, client_name="lbactors-bench-faults") as conn:
            ch = await conn.open_channel()
            await ch.exchange_declare(dlx, "fanout")
            await ch.queue_declare(dlq)
            await ch.queue_bind(dlq, dlx, "")
            await ch.close()

    async def publish(driver: FaultDriver) -> None:
        await wait_ops(driver, _trigger(args) // 2)
        driver.mark("malformed")
        t0 = time.monotonic()
        async with open_connection(ctx.amqp_url, client_name="lbactors-bench-malformed",
                                   frame_max=131072) as conn:
            ch = await conn.open_channel()
            await ch.confirm_select()
            batch = 25
            for i in range(0, len(messages), batch):
                confirmations = []
                for m in messages[i:i + batch]:
                    props = (cast(Any, m.properties) if m.properties is not None
                             else oslo.CAST_PROPERTIES)
                    c = await ch.publish(ctx.exchange, ctx.topic, m.body, properties=props)
                    if c is not None:
                        confirmations.append(c)
                for c in confirmations:
                    await c.wait()
                await trio.sleep(0.05)
            await ch.close()
        extra["malformed_publish_s"] = round(time.monotonic() - t0, 3)

    async def after(c: RowContext, driver: FaultDriver) -> Row:
        out: Row = {}
        await trio.sleep(2)  # the last rejections
        async with open_connection(ctx.amqp_url, client_name="lbactors-bench-faults") as conn:
            ch = await conn.open_channel()
            _, n, _ = await ch.queue_declare(ctx.topic, passive=True)
            out["topic_queue_left"] = n
            _, n, _ = await ch.queue_declare(dlq, passive=True)
            out["dead_lettered"] = n
            await ch.queue_delete(dlq)
            await ch.exchange_delete(dlx)
            await ch.close()
        return out

    alive: bool | None = None
    played: Played | None = None
    driver: FaultDriver | None = None
    more: Row = {}
    try:
        trio.run(declare_dlx)
        ctx.new_daemon().start()

        async def go() -> tuple[Played, FaultDriver, Row]:
            async with open_fault_driver(ctx.driver_config()) as d:
                p = await play(ctx, d, publish)
                return p, d, await after(ctx, d)

        played, driver, more = trio.run(go)
        alive = _alive(ctx)
    finally:
        ctx.stop_all()
        trio.run(cleanup_broker_objects, ctx)
    assert played is not None and driver is not None
    counts = Counter(str(e.get("event")) for e in read_log(ctx.log_path))
    extra["malformed_log_events"] = {k: counts[k] for k in MALFORMED_EVENTS if counts[k]}
    extra["malformed_logged_total"] = sum(extra["malformed_log_events"].values())
    row = summarize(ctx, number, title, played, driver, mark=None, alive=alive,
                    extra={**extra, **more})
    row["recover_s"] = None
    row["ok"] = bool(row["ok"] and more.get("topic_queue_left") == 0)
    return row


# ---- row 11: soak -----------------------------------------------------------------------------------

@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    processes: int
    per_process: dict[int, tuple[int, int]]


def sample_tree(root: int) -> Sample:
    per: dict[int, tuple[int, int]] = {}
    for pid in procs.process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmRSS:")), 0)
        per[pid] = (rss, fds)
    return Sample(time.monotonic(), sum(r for r, _ in per.values()),
                  sum(f for _, f in per.values()), len(per), per)


def row_soak(args: argparse.Namespace, number: int, title: str, results: Path) -> Row:
    ctx = new_context(args, "soak", stats_interval=5.0)
    samples: list[Sample] = []
    played: Played | None = None
    driver: FaultDriver | None = None
    alive: bool | None = None
    try:
        daemon = ctx.new_daemon().start()
        samples.append(sample_tree(daemon.pid))

        async def sampler() -> None:
            for _ in range(int(args.soak_seconds / args.sample_seconds) + 10_000):
                await trio.sleep(args.sample_seconds)
                samples.append(sample_tree(daemon.pid))

        async def go() -> tuple[Played, FaultDriver]:
            async with open_fault_driver(ctx.driver_config()) as d, trio.open_nursery() as n:
                n.start_soon(sampler)
                p = await play(ctx, d, None, until=args.soak_seconds)
                samples.append(sample_tree(daemon.pid))
                n.cancel_scope.cancel()
                return p, d

        played, driver = trio.run(go)
        alive = _alive(ctx)
    finally:
        ctx.stop_all()
        trio.run(cleanup_broker_objects, ctx)
    assert played is not None and driver is not None
    t0 = samples[0].t
    # after the first workload: imports done, actors and buffers at their working size
    warm = next((s for s in samples if s.t - t0 >= args.soak_warmup), samples[0])
    end = samples[-1]
    mib = 1024.0
    extra: Row = {
        "soak_s": round(end.t - t0, 1),
        "samples": len(samples),
        "rss_start_mib": round(samples[0].rss_kib / mib, 1),
        "rss_warm_mib": round(warm.rss_kib / mib, 1),
        "rss_end_mib": round(end.rss_kib / mib, 1),
        "rss_max_mib": round(max(s.rss_kib for s in samples) / mib, 1),
        "rss_growth_after_warmup_mib": round((end.rss_kib - warm.rss_kib) / mib, 1),
        "fds_start": samples[0].fds,
        "fds_warm": warm.fds,
        "fds_end": end.fds,
        "fds_max": max(s.fds for s in samples),
        "fds_growth_after_warmup": end.fds - warm.fds,
        "processes_start": samples[0].processes,
        "processes_end": end.processes,
        "ops_per_s": round(sum(r["ops_completed"] for r in played.results)
                           / max(end.t - t0, 1e-9), 1),
        "per_process_end": {str(pid): {"rss_mib": round(r / mib, 1), "fds": f}
                            for pid, (r, f) in end.per_process.items()},
        "per_process_warm": {str(pid): {"rss_mib": round(r / mib, 1), "fds": f}
                             for pid, (r, f) in warm.per_process.items()},
    }
    write_soak(results, samples, extra, args)
    row = summarize(ctx, number, title, played, driver, alive=alive, extra=extra)
    row["recover_s"] = None
    row["samples"] = len(samples)
    row["logged"] = (row["logged"] + ("; " if row["logged"] else "") +
                     f"RSS {extra['rss_warm_mib']} → {extra['rss_end_mib']} MiB (max "
                     f"{extra['rss_max_mib']}), fds {extra['fds_warm']} → {extra['fds_end']}")
    return row


def write_soak(results: Path, samples: list[Sample], s: Row, args: argparse.Namespace) -> None:
    t0 = samples[0].t
    lines = [
        f"### Soak: {s['soak_s']:.0f} s of workloads back to back "
        f"({args.lbs} LBs × {args.members} members, C={args.concurrency}, statistics every 5 s)",
        "",
        "RSS and open file descriptors summed over every daemon process (supervisor and "
        "workers, `/proc/<pid>/status` VmRSS and `/proc/<pid>/fd`), sampled every "
        f"{args.sample_seconds:g} s; warm = the first sample {args.soak_warmup:g} s or more "
        "after start.",
        "",
        "| | start | warm | end | max | growth after warm-up |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| RSS MiB | {s['rss_start_mib']} | {s['rss_warm_mib']} | {s['rss_end_mib']} | "
        f"{s['rss_max_mib']} | {s['rss_growth_after_warmup_mib']:+} |",
        f"| open fds | {s['fds_start']} | {s['fds_warm']} | {s['fds_end']} | {s['fds_max']} | "
        f"{s['fds_growth_after_warmup']:+} |",
        f"| processes | {s['processes_start']} | | {s['processes_end']} | | |",
        "",
        "Every minute:",
        "",
        "| t s | RSS MiB | fds | processes | per process (RSS MiB / fds) |",
        "| --- | --- | --- | --- | --- |",
    ]
    next_t = 0.0
    for smp in samples:
        if smp.t - t0 + 1e-6 < next_t and smp is not samples[-1]:
            continue
        next_t = smp.t - t0 + 60
        per = ", ".join(f"{r / 1024:.1f}/{f}" for _, (r, f) in sorted(smp.per_process.items()))
        lines.append(f"| {smp.t - t0:.0f} | {smp.rss_kib / 1024:.1f} | {smp.fds} | "
                     f"{smp.processes} | {per} |")
    lines += ["", "Plot: [`faults-soak.png`](faults-soak.png). Raw rows: `raw/faults-*.jsonl`."]
    (results / "faults-soak.md").write_text("\n".join(lines) + "\n")
    try:
        plt = report._pyplot()
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [smp.t - t0 for smp in samples]
    ax.plot(xs, [smp.rss_kib / 1024 for smp in samples], label="RSS MiB (all processes)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS MiB")
    ax2 = ax.twinx()
    ax2.plot(xs, [smp.fds for smp in samples], color="tab:orange", label="open fds")
    ax2.set_ylabel("open file descriptors")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    lines_, labels = ax.get_legend_handles_labels()
    lines2, labels2 = ax2.get_legend_handles_labels()
    ax.legend(lines_ + lines2, labels + labels2, loc="lower right")
    ax.set_title("lbactors soak: resident memory and open files")
    fig.tight_layout()
    fig.savefig(results / "faults-soak.png", dpi=100)
    plt.close(fig)


# ---- the scenario ------------------------------------------------------------------------------------

def _select(only: str | None) -> list[int]:
    if not only:
        return list(range(1, len(ROWS) + 1))
    out = []
    for part in only.split(","):
        part = part.strip()
        if not part:
            continue
        if part.isdigit() and 1 <= int(part) <= len(ROWS):
            out.append(int(part))
        elif part in ROW_NAMES:
            out.append(ROW_NAMES.index(part) + 1)
        else:
            raise SystemExit(f"unknown row {part!r}: 1-{len(ROWS)} or one of "
                             f"{', '.join(ROW_NAMES)}")
    return sorted(set(out))


def run_row(args: argparse.Namespace, number: int, results: Path) -> Row:
    name, title = ROWS[number - 1]
    if name == "hang":
        ctx = new_context(args, name, env={
            "LBACTORS_BACKEND_NOOP_HANG_PATTERN": HANG_PATTERN,
            "LBACTORS_BACKEND_NOOP_OPERATION_DEADLINE": "2",
            "LBACTORS_BACKEND_NOOP_PLAN_STEP_DEADLINE": "2",
        })
        return run_standard(ctx, number, title, fault=None, pattern=HANG_PATTERN)
    if name == "hang_ignore_cancel":
        ctx = new_context(args, name, env={
            "LBACTORS_BACKEND_NOOP_HANG_PATTERN": HANG_IGNORE_PATTERN,
            "LBACTORS_BACKEND_NOOP_IGNORE_CANCEL": "true",
            "LBACTORS_BACKEND_NOOP_OPERATION_DEADLINE": "2",
            "LBACTORS_BACKEND_NOOP_PLAN_STEP_DEADLINE": "2",
            "LBACTORS_DAEMON_CANCEL_GRACE": "2",
            "LBACTORS_DAEMON_RESTART_LIMIT": "1000",
        })
        return run_standard(ctx, number, title, fault=None, pattern=HANG_IGNORE_PATTERN)
    if name in ("sigstop_30s", "sigstop_forever", "worker_kill9"):
        kind = {"worker_kill9": "kill9"}.get(name, name)
        return run_standard(new_context(args, name), number, title, fault=worker_fault(kind),
                            ready_event="worker ready")
    if name == "daemon_kill9":
        return run_standard(new_context(args, name), number, title, fault=daemon_kill_fault,
                            ready_event="lbactors ready")
    if name == "broker_restart":
        return row_broker_restart(args, number, title)
    if name == "sigterm_restart":
        ctx = new_context(args, name, env={"LBACTORS_DAEMON_GRACE_PERIOD": "10"})
        return run_standard(ctx, number, title, fault=sigterm_fault, ready_event="lbactors ready")
    if name == "malformed":
        return row_malformed(args, number, title)
    if name == "poison":
        ctx = new_context(args, name, env={
            "LBACTORS_BACKEND_NOOP_CRASH_PATTERN": CRASH_PATTERN,
            "LBACTORS_DAEMON_POISON_AFTER": "2",
            "LBACTORS_DAEMON_RESTART_LIMIT": "1000",
        })
        return run_standard(ctx, number, title, fault=None, pattern=CRASH_PATTERN)
    if name == "soak":
        return row_soak(args, number, title, results)
    raise AssertionError(name)


TABLE = [
    ("row", "#"), ("title", "fault"), ("ops_planned", "planned"),
    ("ops_completed", "completed"), ("errors", "errors"), ("expected_errors", "expected errors"),
    ("missing", "missing"), ("recover_s", "recover s"), ("stall_s", "stall s"),
    ("max_gap_s", "max gap s"), ("ready_s", "ready s"), ("logged", "daemon logged"), ("verdict", "ok"),
]


def scenario_faults(args: argparse.Namespace) -> int:
    results = Path(args.results)
    rows = _select(args.only)
    args.code_dir = None
    if args.daemon_code == "worktree":
        args.code_label = f"the working tree ({worktree_state()})"
    else:
        args.code_dir, commit = snapshot_code(args.daemon_code)
        args.code_label = f"commit {commit[:12]} (`git archive`, not the working tree)"
    _log(f"daemon code: {args.code_label}")
    try:
        return _run_rows(args, rows, results)
    finally:
        if args.code_dir is not None:
            shutil.rmtree(args.code_dir, ignore_errors=True)


def _run_rows(args: argparse.Namespace, rows: list[int], results: Path) -> int:
    writer = report.ResultsWriter("faults", results)
    ok = True
    for number in rows:
        name = ROWS[number - 1][0]
        _log(f"--- row {number}: {name}")
        t0 = time.monotonic()
        try:
            row = run_row(args, number, results)
        except Exception as exc:  # noqa: BLE001 - a row that breaks is a failed row, not the end
            row = {"row": number, "fault": name, "title": ROWS[number - 1][1], "ok": False,
                   "error": f"{type(exc).__name__}: {exc}"[:2000],
                   "logged": f"harness error: {type(exc).__name__}: {str(exc)[:200]}"}
            _log(f"row {number} {name} failed: {exc!r}")
        row["wall_s"] = round(time.monotonic() - t0, 1)
        row["daemon_code"] = args.code_label
        row["verdict"] = "yes" if row.get("ok") else "**no**"
        writer.add(row)
        ok &= bool(row.get("ok"))
        if "ops_planned" in row:
            _log(summary_line(row))
        writer.write_table(columns=TABLE, title="Faults under load", notes=_notes(args))
    return 0 if ok else 2


def _notes(args: argparse.Namespace) -> list[str]:
    return [
        f"Conditions: {os.cpu_count()} CPUs shared by the broker, the driver, the daemon and "
        f"other work; per workload {args.lbs} load balancers × "
        f"{operations_per_lb(args.members, not args.no_updates)} operations ({args.members} "
        f"members), C={args.concurrency}, noop backend latency {args.backend_latency_ms:g} ms; "
        f"daemon ping_interval 1 s, ping_timeout 5 s; probe workload of {args.probe_lbs} "
        f"load balancers after each fault; daemon code: {args.code_label}; "
        f"command `python -m bench {' '.join(sys.argv[1:])}`; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "**recover s**: instantaneous faults: from the fault to the status update of the last "
        "operation that was in flight when it struck; hang and poison rows: the longest an "
        "erroring operation stayed pending. **stall s**: the fault to the first status update "
        "after it. **max gap s**: the longest time without any status update from the fault "
        "to the end of the workload it struck in. **ready s**: the fault to the daemon's next `worker ready` (worker faults), "
        "`lbactors ready` (restarts) or `gateway connected` (broker). **missing**: planned − "
        "completed. Definitions and rows: `bench/faults.py`. Soak detail: "
        "[`faults-soak.md`](faults-soak.md).",
    ]


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--only", default=None,
                    help=f"rows to run: numbers or names, comma-separated ({', '.join(ROW_NAMES)})")
    sp.add_argument("--soak-seconds", type=float, default=600.0)
    sp.add_argument("--sample-seconds", type=float, default=5.0,
                    help="soak: RSS / fd sampling period")
    sp.add_argument("--soak-warmup", type=float, default=60.0,
                    help="soak: growth is measured from the first sample after this")
    sp.add_argument("--probe-lbs", type=int, default=10,
                    help="load balancers of the workload played after each fault")
    sp.add_argument("--fault-at", type=float, default=0.25,
                    help="inject when this share of the first workload's operations completed")
    sp.add_argument("--backend-latency-ms", type=float, default=20.0)
    sp.add_argument("--sigstop-seconds", type=float, default=30.0)
    sp.add_argument("--broker-down-seconds", type=float, default=3.0)
    sp.add_argument("--daemon-code", default="worktree",
                    help="run the daemon from the working tree (default) or from a snapshot "
                         "of this commit (e.g. HEAD): others' uncommitted edits then do not "
                         "change what is measured")
    sp.add_argument("--malformed", type=int, default=1000,
                    help=f"malformed messages, every kind in turn ({len(KINDS)} kinds)")
