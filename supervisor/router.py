"""The router and its worker processes: owner key -> worker, with an in-flight ledger.

Every operation goes to worker ``shard(op.owner_key, W)`` (its key, ``Backend.affinity_key``,
or else its load balancer id: operations that share a key share a worker, whose actors then
serialize them) and is recorded in that worker's ledger
until its outcome comes back. When a worker dies (any signal, any exit) it is restarted with
backoff and every operation still in its ledger is replayed to the new process in its original
order, so nothing is lost and each load balancer's operations still run in order. A restart
budget (``restart_limit`` restarts within ``restart_window`` seconds, over all workers) ends the
daemon with :class:`RestartBudgetExceeded` so that systemd restarts the whole service.

Never stuck:

- **liveness**: every ``ping_interval`` each worker is pinged; one that sent nothing for
  ``ping_timeout`` seconds (stopped, deadlocked, its event loop blocked) is killed, and
  handled as a crash. The worker answers pings however busy its actors are; a worker is not
  blamed while the router itself is not reading from it (outcomes backed up behind a broker
  that blocks publishers);
- **abandoned calls**: an outcome marked ``abandoned`` (its backend call ignored the
  cancellation at its deadline) is passed on, then its worker is killed and replaced, so the
  stuck call dies with it;
- **poison operations**: an operation that was in flight on ``poison_after`` consecutive
  deaths of a worker, the last time alone, is not replayed again: its object goes ERROR
  (:func:`~lbactors.dispatch.failed_outcome`) and its message is dead-lettered. A death
  with many operations in flight cannot tell the culprit from the operations beside it, so
  once operations reach ``poison_after`` deaths together, the next incarnation gets the
  suspects (every operation in flight on a death) one at a time, each after the previous
  one's outcome, and only then the rest in order: the poison then dies alone, and the
  innocent ones complete. A single crash (a kill, the OOM killer) replays everything at
  once as before; only a repeated one pays for the isolation;
- every frame to a worker (operations, pings, statistics requests) is written by that
  worker's sender task: nobody else ever blocks on a worker's socket.

Fencing (cluster mode, docs/cluster.md): when the broker connection is lost, another daemon
may already own this daemon's shards, and the broker returns every unacked delivery to it.
:meth:`Router.abandon` then kills every worker at once, forgets every operation in flight
(no replay here, and none of their outcomes is passed on any more) and starts fresh workers,
without charging the restart budget.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio

from lbactors import ipc, memory
from lbactors.config import Config, encode_config
from lbactors.dispatch import failed_outcome
from lbactors.messages import Operation, Outbound
from lbactors.routing import shard
from lbactors.statistics import RoundReport
from lbactors.streams import acquire_soon
from supervisor.sdnotify import child_environment

log = structlog.get_logger("lbactors.supervisor")

#: ``malloc_trim(0)`` before each statistics round (tests replace it)
trim_memory = memory.trim_memory

#: operations queued for one worker before ``submit`` waits
OUTBOX_LIMIT = 4096


class RestartBudgetExceeded(Exception):
    """Workers died more often than the restart budget allows."""


class WorkerProcess(Protocol):
    """What the router uses of a worker's process (a :class:`ChildProcess`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


#: starts one worker process: the process and the supervisor's end of its frame stream
SpawnWorker = Callable[[], Awaitable[tuple[WorkerProcess, trio.abc.Stream]]]


class ChildProcess:
    """A worker process forked by the trio thread itself (:func:`spawn_worker_process`).

    Not :func:`trio.lowlevel.open_process`: it forks from one of trio's worker threads, and
    a worker's parent-death signal (``PR_SET_PDEATHSIG``, lbactors/worker.py) fires when the
    *thread* that forked it ends, which an idle trio thread does after 10 s: every worker
    would be killed 10 s after its start. Waiting uses a pidfd where there is one (Linux),
    else polls.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            pass  # not Linux, or an old kernel
        self._wait_lock = trio.Lock()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()

    async def wait(self) -> int:
        async with self._wait_lock:
            while self._popen.poll() is None:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:
                    await trio.sleep(0.05)
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            return self._popen.wait()


def default_worker_count() -> int:
    """The workers of ``daemon.workers = 0``: one per CPU this process may run on but one, and
    at least one. The supervisor reads every AMQP frame and every oslo envelope, routes and
    answers every operation: about as much CPU per operation as all the workers together
    (bench/PERFORMANCE.md). With a worker per CPU the daemon alone has a busy process more
    than there are CPUs, and each one loses its caches to the others at every switch: on 2
    CPUs, 1 worker took about a fifth less CPU per operation than 2, at the same throughput."""
    try:
        cpus = len(os.sched_getaffinity(0))  # a cpuset or taskset, not the whole machine
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


async def spawn_worker_process() -> tuple[ChildProcess, trio.abc.Stream]:
    """``python -m lbactors.worker`` on one end of a socket pair; the other end for us.

    Forked by the calling (trio) thread, as :class:`ChildProcess` explains; the worker is
    told our pid, so that it exits at once if we died before it could ask for its
    parent-death signal.
    """
    parent_sock, child_sock = socket.socketpair()
    await trio.lowlevel.checkpoint()
    try:
        # in this thread on purpose (ChildProcess): a fork and exec, a few milliseconds
        popen = subprocess.Popen(  # noqa: ASYNC220
            [
                sys.executable, "-m", "lbactors.worker",
                "--fd", str(child_sock.fileno()),
                "--supervisor-pid", str(os.getpid()),
            ],
            pass_fds=(child_sock.fileno(),),
            env=child_environment(os.environ),
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        parent_sock.close()
        raise
    finally:
        child_sock.close()
    return ChildProcess(popen), trio.SocketStream(trio.socket.from_stdlib_socket(parent_sock))


@dataclass(eq=False)
class WorkerHandle:
    index: int
    ledger: dict[int, Operation] = field(default_factory=dict)
    #: op id -> the incarnation it was last written to (in flight there)
    sent_to: dict[int, int] = field(default_factory=dict)
    #: op id -> how many consecutive incarnations died with it in flight
    deaths: dict[int, int] = field(default_factory=dict)
    incarnation: int = 0
    pid: int | None = None
    process: WorkerProcess | None = None
    frames: ipc.FrameStream | None = None
    #: held while sending, so a replay and new submissions never interleave
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    #: operations submitted but not yet written to the worker, sent in one write per batch
    outbox: list[Operation] = field(default_factory=list)
    #: control frames (pings, statistics requests), written before the next batch
    control: list[ipc.Frame] = field(default_factory=list)
    outbox_ready: trio.Event = field(default_factory=trio.Event)
    outbox_taken: trio.Event = field(default_factory=trio.Event)
    ready: trio.Event = field(default_factory=trio.Event)
    restarts: int = 0
    stats_replies: dict[int, trio.MemorySendChannel[tuple[int, ipc.StatsReport]]] = field(
        default_factory=dict
    )
    #: trio time of the last frame received from the current incarnation
    last_heard: float = 0.0
    #: the router is waiting to pass an outcome on (not reading from this worker)
    reader_blocked: bool = False
    #: why the current incarnation is being killed, if it is
    killing: str | None = None
    #: the suspects (operations in flight on a death) go to the worker one at a time
    isolating: bool = False
    #: the current incarnation was abandoned (Router.abandon): its outcomes are dropped and
    #: its death is not charged
    abandoned: bool = False
    #: cancels the current incarnation's tasks (its reader, sender and liveness watch)
    scope: trio.CancelScope | None = None
    #: set once the current incarnation is ready; a fresh one for each incarnation
    serving: trio.Event = field(default_factory=trio.Event)
    #: wall-clock start of the current incarnation; actors and resident load balancers as
    #: its last Pong said (metrics, ``lbactors status``)
    started_at: float = 0.0
    actors: int = 0
    resident: int = 0

    @property
    def alive(self) -> bool:
        return self.frames is not None

    def forget(self, op_id: int) -> None:
        """``op_id`` is done (its outcome came back, or it was given up on)."""
        self.ledger.pop(op_id, None)
        self.sent_to.pop(op_id, None)
        self.deaths.pop(op_id, None)


class Router:
    """Owns the worker processes; the gateway's :class:`~lbactors.gateway.Sink`."""

    def __init__(
        self,
        config: Config,
        outcomes: trio.MemorySendChannel[Outbound],
        *,
        spawn: SpawnWorker = spawn_worker_process,
    ) -> None:
        self.config = config
        self.outcomes = outcomes
        #: how worker processes are started (tests pass in-memory fakes)
        self._spawn = spawn
        count = config.daemon.workers or default_worker_count()
        self.workers = [WorkerHandle(index) for index in range(count)]
        self._config_bytes = encode_config(config)
        self._restart_times: collections.deque[float] = collections.deque()
        self._stats_round = 0
        self._stopping = False
        self._stopped = trio.Event()
        #: operations given up on as poison, since start
        self.poisoned = 0
        #: at shutdown: kill workers at once instead of waiting for them to exit
        self._kill_now = False
        #: workers killed because they stopped answering, since start
        self.unresponsive_kills = 0
        #: set (and replaced) whenever an incarnation becomes ready
        self._serving_changed = trio.Event()
        #: outcomes being passed on outside of an incarnation (poison), cancelled by abandon
        self._abandonable: set[trio.CancelScope] = set()
        #: operations forgotten by abandon(), since start
        self.abandoned_operations = 0
        #: operations sent again to a new incarnation after a worker death, since start
        self.replayed = 0

    # ------------------------------------------------------------------ sink

    async def submit(self, op: Operation) -> None:
        """Record ``op`` in its worker's ledger and queue it for that worker.

        Queued operations are written by the worker's sender task, many per write (one
        system call per operation was the supervisor's largest cost). Waits while
        ``OUTBOX_LIMIT`` operations are queued for the worker (backpressure).
        """
        worker = self.workers[shard(op.owner_key, len(self.workers))]
        while len(worker.outbox) >= OUTBOX_LIMIT and worker.frames is not None:
            await worker.outbox_taken.wait()
        worker.ledger[op.op_id] = op
        if worker.frames is None:
            return  # replayed when the worker is back
        worker.outbox.append(op)
        worker.outbox_ready.set()

    async def _send_outbox(
        self, worker: WorkerHandle, frames: ipc.FrameStream, suspects: list[Operation]
    ) -> None:
        """Write whatever is queued for this incarnation of ``worker``, in order.

        ``suspects`` (when isolating) go first, one at a time: each is written once the
        previous one's outcome came back, so that a death is charged to one operation only.
        Pings and statistics requests go on meanwhile. Then whatever the ledger holds that
        this incarnation has not seen, in submission order (each load balancer's order).
        """
        incarnation = worker.incarnation
        if suspects:
            for op in suspects:
                if op.op_id not in worker.ledger:
                    continue
                worker.sent_to[op.op_id] = incarnation
                self.replayed += 1
                async with worker.send_lock:
                    await frames.send(ipc.Submit(op=op))
                while op.op_id in worker.ledger:
                    await worker.outbox_ready.wait()  # set by its outcome, or by a control frame
                    worker.outbox_ready = trio.Event()
                    control, worker.control = worker.control, []
                    if control:
                        async with worker.send_lock:
                            await frames.send_many(control)
            worker.isolating = False
            log.info("suspects cleared; replaying the rest", worker=worker.index)
            worker.outbox = [
                op for op in worker.ledger.values() if worker.sent_to.get(op.op_id) != incarnation
            ]
            worker.outbox_ready.set()
        while True:
            await worker.outbox_ready.wait()
            worker.outbox_ready = trio.Event()
            batch, worker.outbox = worker.outbox, []
            control, worker.control = worker.control, []
            taken, worker.outbox_taken = worker.outbox_taken, trio.Event()
            taken.set()
            if batch or control:
                for op in batch:
                    worker.sent_to[op.op_id] = incarnation
                # the wait above is this loop's checkpoint: taking a free lock need not yield
                await acquire_soon(worker.send_lock)
                try:
                    await frames.send_many([*control, *(ipc.Submit(op=op) for op in batch)])
                finally:
                    worker.send_lock.release()

    def _send_control(self, worker: WorkerHandle, frame: ipc.Frame) -> bool:
        """Queue ``frame`` for the worker's sender; False when the worker is down."""
        if worker.frames is None:
            return False
        worker.control.append(frame)
        worker.outbox_ready.set()
        return True

    async def _watch_liveness(self, worker: WorkerHandle, process: WorkerProcess) -> None:
        """Ping ``worker`` and kill this incarnation once it stops answering."""
        daemon = self.config.daemon
        while True:
            await trio.sleep(daemon.ping_interval)
            now = trio.current_time()
            if worker.reader_blocked:
                continue  # we are not listening: its silence proves nothing
            silent = now - worker.last_heard
            # before Ready (imports, the backend's start-up, adoption) it cannot answer yet
            allowed = daemon.ping_timeout if worker.frames is not None else 4 * daemon.ping_timeout
            if silent > allowed:
                self.unresponsive_kills += 1
                self._kill(
                    worker,
                    process,
                    f"silent for {silent:.1f} s (allowed {allowed:g} s)",
                )
                return
            self._send_control(worker, ipc.Ping())

    def _kill(self, worker: WorkerHandle, process: WorkerProcess, why: str) -> None:
        if worker.killing is None:
            worker.killing = why
            log.error(
                "killing worker",
                worker=worker.index,
                pid=process.pid,
                reason=why,
                in_flight=len(worker.ledger),
            )
        if process.returncode is None:
            process.kill()

    @property
    def in_flight(self) -> int:
        return sum(len(worker.ledger) for worker in self.workers)

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: trio.TaskStatus[Router] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every worker (restarting them as needed); ``started`` once all are ready."""
        try:
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    nursery.start_soon(self._supervise, worker)
                for worker in self.workers:
                    await worker.ready.wait()
                task_status.started(self)
        finally:
            self._stopped.set()

    async def _supervise(self, worker: WorkerHandle) -> None:
        delay = 0.0
        while True:
            if delay:
                await trio.sleep(delay)
            if self._stopping:
                return  # no new incarnation once shutting down (its ledger stays unacked)
            started_at = trio.current_time()
            code = await self._run_once(worker)
            if self._stopping:
                return
            if worker.abandoned:
                delay = 0.0  # fenced on purpose (abandon): no budget, no poison, no backoff
                continue
            lived = trio.current_time() - started_at
            await self._give_up_on_poison(worker)
            self._charge_restart(worker, code)
            # back off when a worker dies young; a long-lived one restarts at once
            daemon = self.config.daemon
            if lived > 10:
                delay = 0.0
            else:
                delay = min(max(delay * 2, daemon.restart_backoff_initial), daemon.restart_backoff_max)

    async def _give_up_on_poison(self, worker: WorkerHandle) -> None:
        """After a death: count it against every operation that was in flight on it. One in
        flight on ``poison_after`` consecutive deaths, alone on the last one, gets its final
        ERROR outcome; when several reach the limit together, the next incarnation isolates
        the suspects (module docstring)."""
        dead = worker.incarnation
        limit = self.config.daemon.poison_after
        in_flight = [op for op_id, op in worker.ledger.items() if worker.sent_to.get(op_id) == dead]
        for op in in_flight:
            worker.deaths[op.op_id] = worker.deaths.get(op.op_id, 0) + 1
        at_limit = [op for op in in_flight if worker.deaths[op.op_id] >= limit]
        poison = at_limit if len(in_flight) == 1 else []
        if at_limit and not poison and not worker.isolating:
            worker.isolating = True
            log.warning(
                "operations in flight on repeated worker deaths; replaying them one at a time",
                worker=worker.index,
                suspects=sum(1 for op_id in worker.ledger if worker.deaths.get(op_id)),
                deaths=limit,
            )
        for op in poison:
            self.poisoned += 1
            reason = f"poison operation: in flight on {limit} consecutive worker deaths"
            log.error(
                "poison operation: not replayed again",
                worker=worker.index,
                op_id=op.op_id,
                lb_id=op.lb_id,
                method=op.method,
                args=op.args[:300].decode("utf-8", "replace"),
                args_bytes=len(op.args),
                deaths=limit,
            )
            outcome = failed_outcome(
                op, reason, parents_on_failure=self.config.status.parents_on_failure
            )
            outcome.dead_letter = f"PoisonOperation: {reason}"
            worker.forget(op.op_id)
            with trio.CancelScope() as scope:  # abandon() cancels it: the op is forgotten
                self._abandonable.add(scope)
                try:
                    await self.outcomes.send(outcome)
                finally:
                    self._abandonable.discard(scope)

    def _charge_restart(self, worker: WorkerHandle, code: int | None) -> None:
        now = trio.current_time()
        window = self.config.daemon.restart_window
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > window:
            self._restart_times.popleft()
        worker.restarts += 1
        log.error(
            "worker died",
            worker=worker.index,
            pid=worker.pid,
            exit_code=code,
            signal=signal.Signals(-code).name if code is not None and code < 0 else None,
            killed_because=worker.killing,
            in_flight=len(worker.ledger),
            restarts_in_window=len(self._restart_times),
        )
        if len(self._restart_times) > self.config.daemon.restart_limit:
            raise RestartBudgetExceeded(
                f"{len(self._restart_times)} worker restarts within {window:g} s "
                f"(limit {self.config.daemon.restart_limit})"
            )

    async def _run_once(self, worker: WorkerHandle) -> int | None:
        """Start one incarnation of ``worker``, replay its ledger, serve it until it dies."""
        worker.incarnation += 1
        worker.abandoned = False
        process, stream = await self._spawn()
        worker.pid = process.pid
        worker.process = process
        worker.started_at = time.time()
        worker.actors = worker.resident = 0
        worker.killing = None
        worker.last_heard = trio.current_time()
        worker.reader_blocked = False
        frames = ipc.FrameStream(stream)
        try:
            async with trio.open_nursery() as nursery:
                worker.scope = nursery.cancel_scope
                if worker.abandoned:  # abandoned while it was being spawned
                    self._kill(worker, process, "abandoned while starting")
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._watch_liveness, worker, process)
                await self._serve_incarnation(worker, frames, process, nursery)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ipc.ProtocolError) as group:
            log.warning(
                "worker connection broken",
                worker=worker.index,
                error=[repr(exc) for exc in group.exceptions],
            )
        finally:
            worker.frames = None
            worker.scope = None
            worker.serving = trio.Event()
            worker.control.clear()
            for waiter in worker.stats_replies.values():
                waiter.close()  # the round stops waiting for this worker
            worker.stats_replies.clear()
            with trio.CancelScope(shield=True):
                await stream.aclose()
                with trio.move_on_after(0 if self._kill_now else 5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            worker.process = None
        return process.returncode

    async def _serve_incarnation(
        self,
        worker: WorkerHandle,
        frames: ipc.FrameStream,
        process: WorkerProcess,
        nursery: trio.Nursery,
    ) -> None:
        """Speak to one worker process until it closes its end."""
        await frames.send(
            ipc.Spawn(
                worker_index=worker.index,
                worker_count=len(self.workers),
                incarnation=worker.incarnation,
                config=self._config_bytes,
            )
        )
        async for frame in frames:
            worker.last_heard = trio.current_time()
            if worker.abandoned and isinstance(frame, (ipc.Done, ipc.Reassert, ipc.Ready)):
                continue  # read before its kill took effect: nobody waits for it any more
            if isinstance(frame, ipc.Done):
                outcome = frame.outcome
                worker.forget(outcome.op_id)
                if worker.isolating:
                    worker.outbox_ready.set()  # the sender waits for this outcome
                await self._pass_on(worker, outcome)
                if outcome.abandoned:
                    self._kill(worker, process, "a backend call ignored its cancellation")
            elif isinstance(frame, ipc.Reassert):
                # in the worker's order: before any later outcome of its load balancer
                await self._pass_on(worker, frame.reassertion)
            elif isinstance(frame, ipc.Pong):
                worker.actors, worker.resident = frame.actors, frame.resident
            elif isinstance(frame, ipc.Ready):
                if self._stopping:
                    # ready after shutdown began: nothing more for it (its ledger stays
                    # unacked, for redelivery); end of stream lets it exit at once
                    await frames.send_eof()
                    continue
                async with worker.send_lock:
                    # the ledger holds everything queued too, in submission order
                    worker.outbox.clear()
                    taken, worker.outbox_taken = worker.outbox_taken, trio.Event()
                    taken.set()
                    replay = list(worker.ledger.values())
                    suspects: list[Operation] = []
                    if worker.isolating:
                        # the sender writes them one by one, then the rest
                        suspects = [op for op in replay if worker.deaths.get(op.op_id)]
                        worker.isolating = bool(suspects)
                    if suspects:
                        replay = []
                        log.warning(
                            "replaying suspects one at a time",
                            worker=worker.index,
                            suspects=len(suspects),
                            held=len(worker.ledger) - len(suspects),
                        )
                    if replay:
                        log.warning(
                            "replaying in-flight operations",
                            worker=worker.index,
                            count=len(replay),
                        )
                        self.replayed += len(replay)
                        for op in replay:
                            worker.sent_to[op.op_id] = worker.incarnation
                        await frames.send_many([ipc.Submit(op=op) for op in replay])
                    worker.frames = frames
                nursery.start_soon(self._send_outbox, worker, frames, suspects)
                worker.ready.set()
                worker.serving.set()
                changed, self._serving_changed = self._serving_changed, trio.Event()
                changed.set()
            elif isinstance(frame, ipc.StatsReport):
                reply = worker.stats_replies.pop(frame.round, None)
                if reply is not None:
                    reply.send_nowait((worker.index, frame))
                    reply.close()
            else:
                log.warning("unexpected frame from worker", frame=type(frame).__name__)

    async def _pass_on(self, worker: WorkerHandle, item: Outbound) -> None:
        try:
            self.outcomes.send_nowait(item)
        except trio.WouldBlock:
            worker.reader_blocked = True
            try:
                await self.outcomes.send(item)
            finally:
                worker.reader_blocked = False
                worker.last_heard = trio.current_time()

    async def abandon(self, within: float = 30.0) -> int:
        """Fence this daemon's workers (the broker connection was lost, so another daemon may
        own their operations now): SIGKILL every worker process, forget every operation in
        flight or queued (nothing is replayed: the broker returns those deliveries to the
        next owner), and never pass on an outcome of one of them, even one already read; then
        start fresh workers at once, without charging the restart budget, nor counting the
        deaths against the forgotten operations (poison). Returns once every worker is ready
        again, or after ``within`` seconds; the number of operations forgotten.

        Operations submitted from the call on are kept, and go to the fresh workers.
        """
        forgotten = 0
        killed: dict[int, int] = {}
        for worker in self.workers:
            forgotten += len(worker.ledger)
            worker.ledger.clear()
            worker.sent_to.clear()
            worker.deaths.clear()
            worker.isolating = False
            worker.outbox.clear()
            taken, worker.outbox_taken = worker.outbox_taken, trio.Event()
            taken.set()
            if worker.incarnation == 0:
                continue  # not spawned yet
            # the current incarnation: running, starting, or dead (its successor will be new)
            worker.abandoned = True
            killed[worker.index] = worker.incarnation
            if worker.process is not None:
                self._kill(worker, worker.process, "abandoned: the broker connection was lost")
            if worker.scope is not None:
                worker.scope.cancel()  # an outcome being passed on is dropped with it
        for scope in self._abandonable:
            scope.cancel()
        self.abandoned_operations += forgotten
        log.warning(
            "abandoned every worker and the operations in flight",
            forgotten=forgotten,
            workers=len(killed),
        )
        if self._stopping:
            return forgotten

        def serving_again() -> bool:
            return all(
                w.serving.is_set() and w.incarnation > killed.get(w.index, 0)
                for w in self.workers
            )

        with trio.move_on_after(within):
            while not serving_again():
                await self._serving_changed.wait()
        return forgotten

    async def stop(self, within: float = 10.0) -> None:
        """Tell every worker that nothing more comes (end of stream): each finishes what it
        holds, sends the outcomes back and exits. Returns once all have exited; workers still
        running after ``within`` seconds are killed (their operations stay unacked, for
        redelivery), so this returns within about ``within`` seconds whatever they do."""
        self._stopping = True
        with trio.move_on_after(within):
            for worker in self.workers:
                frames = worker.frames
                worker.frames = None
                if frames is not None:
                    try:
                        await frames.send_eof()  # waits for the send lock: bounded
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
            await self._stopped.wait()
        if not self._stopped.is_set():
            self._kill_now = True
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    log.warning(
                        "worker did not finish in time; killing it",
                        worker=worker.index,
                        pid=worker.process.pid,
                        in_flight=len(worker.ledger),
                    )
                    worker.process.kill()
            with trio.move_on_after(5):
                await self._stopped.wait()

    # ------------------------------------------------------------------ statistics

    async def collect_round(
        self,
        answer_within: float,
        *,
        with_owned_ids: bool,
        held_shards: list[int] | None = None,
        shards: int = 0,
    ) -> RoundReport:
        """One statistics round over every live worker; workers that do not answer within
        ``answer_within`` seconds, or answer that they could not read their backend in time,
        are skipped. Never blocks on a worker's socket (the request goes through its
        sender), so a hung worker costs a round at most ``answer_within`` seconds.

        Cluster mode: with ``held_shards`` (of ``shards``), workers report statistics and
        operating-status changes only of the load balancers of those shards; a change of
        another one is dropped, not kept for later (its owner reports its own; should its
        shard be held here again, its statuses are all reported afresh). The owned ids
        (``with_owned_ids``) are not filtered.

        First the supervisor's heap is trimmed (:mod:`lbactors.memory`): the previous round
        and the operations since then are gone, but their pages stay until trimmed (the
        supervisor's RSS grew about 1 KB per load balancer created, with no Python object
        kept for any of them)."""
        trim_memory()
        self._stats_round += 1
        round_id = self._stats_round
        send, receive = trio.open_memory_channel[tuple[int, ipc.StatsReport]](len(self.workers))
        asked: list[WorkerHandle] = []
        for worker in self.workers:
            request = ipc.CollectStats(
                round=round_id,
                with_owned_ids=with_owned_ids,
                held_shards=held_shards,
                shards=shards,
            )
            if self._send_control(worker, request):
                worker.stats_replies[round_id] = send.clone()
                asked.append(worker)
        send.close()
        report = RoundReport(
            listeners=[], status_changes=[], owned_lb_ids=set() if with_owned_ids else None
        )
        complete: set[int] = set()
        with trio.move_on_after(answer_within):
            # ends once every asked worker answered or went away
            async for index, answer in receive:
                if not answer.complete:
                    continue
                complete.add(index)
                report.listeners.extend(answer.listeners)
                report.status_changes.extend(answer.status_changes)
                if report.owned_lb_ids is not None and answer.owned_lb_ids is not None:
                    report.owned_lb_ids.update(answer.owned_lb_ids)
        for worker in asked:
            waiter = worker.stats_replies.pop(round_id, None)
            if waiter is not None:
                waiter.close()
        receive.close()
        report.skipped_workers = [w.index for w in asked if w.index not in complete]
        report.skipped_workers += [w.index for w in self.workers if w not in asked]
        report.skipped_workers.sort()
        if report.skipped_workers:
            # an incomplete picture: do not let the sync report their load balancers OFFLINE
            report.owned_lb_ids = None
        return report
