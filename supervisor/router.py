"""The router and its worker processes: load balancer id -> worker, with an in-flight ledger.

Every operation goes to worker ``shard(lb_id, W)`` and is recorded in that worker's ledger
until its outcome comes back. When a worker dies (any signal, any exit) it is restarted with
backoff and every operation still in its ledger is replayed to the new process in its original
order, so nothing is lost and each load balancer's operations still run in order. A restart
budget (``restart_limit`` restarts within ``restart_window`` seconds, over all workers) ends the
daemon with :class:`RestartBudgetExceeded` so that systemd restarts the whole service.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field

import msgspec
import structlog
import trio

from lbactors import ipc
from lbactors.config import Config
from lbactors.messages import Operation, Outcome
from lbactors.routing import shard
from lbactors.statistics import RoundReport
from supervisor.sdnotify import child_environment

log = structlog.get_logger("lbactors.supervisor")

#: operations queued for one worker before ``submit`` waits
OUTBOX_LIMIT = 4096


class RestartBudgetExceeded(Exception):
    """Workers died more often than the restart budget allows."""


@dataclass(eq=False)
class WorkerHandle:
    index: int
    ledger: dict[int, Operation] = field(default_factory=dict)
    incarnation: int = 0
    pid: int | None = None
    frames: ipc.FrameStream | None = None
    #: held while sending, so a replay and new submissions never interleave
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    #: operations submitted but not yet written to the worker, sent in one write per batch
    outbox: list[Operation] = field(default_factory=list)
    outbox_ready: trio.Event = field(default_factory=trio.Event)
    outbox_taken: trio.Event = field(default_factory=trio.Event)
    ready: trio.Event = field(default_factory=trio.Event)
    restarts: int = 0
    stats_replies: dict[int, trio.MemorySendChannel[ipc.StatsReport]] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.frames is not None


class Router:
    """Owns the worker processes; the gateway's :class:`~lbactors.gateway.Sink`."""

    def __init__(self, config: Config, outcomes: trio.MemorySendChannel[Outcome]) -> None:
        self.config = config
        self.outcomes = outcomes
        count = config.daemon.workers or os.cpu_count() or 1
        self.workers = [WorkerHandle(index) for index in range(count)]
        self._config_json = msgspec.json.encode(config)
        self._restart_times: collections.deque[float] = collections.deque()
        self._stats_round = 0
        self._stopping = False
        self._stopped = trio.Event()

    # ------------------------------------------------------------------ sink

    async def submit(self, op: Operation) -> None:
        """Record ``op`` in its worker's ledger and queue it for that worker.

        Queued operations are written by the worker's sender task, many per write (one
        system call per operation was the supervisor's largest cost). Waits while
        ``OUTBOX_LIMIT`` operations are queued for the worker (backpressure).
        """
        worker = self.workers[shard(op.lb_id, len(self.workers))]
        while len(worker.outbox) >= OUTBOX_LIMIT and worker.frames is not None:
            await worker.outbox_taken.wait()
        worker.ledger[op.op_id] = op
        if worker.frames is None:
            return  # replayed when the worker is back
        worker.outbox.append(op)
        worker.outbox_ready.set()

    async def _send_outbox(self, worker: WorkerHandle, frames: ipc.FrameStream) -> None:
        """Write whatever is queued for this incarnation of ``worker``, in order."""
        while True:
            await worker.outbox_ready.wait()
            worker.outbox_ready = trio.Event()
            batch, worker.outbox = worker.outbox, []
            taken, worker.outbox_taken = worker.outbox_taken, trio.Event()
            taken.set()
            if batch:
                async with worker.send_lock:
                    await frames.send_many([ipc.Submit(op=op) for op in batch])

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
            started_at = trio.current_time()
            code = await self._run_once(worker)
            if self._stopping:
                return
            lived = trio.current_time() - started_at
            self._charge_restart(worker, code)
            # back off when a worker dies young; a long-lived one restarts at once
            daemon = self.config.daemon
            if lived > 10:
                delay = 0.0
            else:
                delay = min(max(delay * 2, daemon.restart_backoff_initial), daemon.restart_backoff_max)

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
        parent_sock, child_sock = socket.socketpair()
        worker.incarnation += 1
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "lbactors.worker", "--fd", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                env=child_environment(os.environ),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child_sock.close()
        worker.pid = process.pid
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent_sock))
        frames = ipc.FrameStream(stream)
        try:
            async with trio.open_nursery() as nursery:
                await self._serve_incarnation(worker, frames, nursery)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ipc.ProtocolError) as group:
            log.warning(
                "worker connection broken",
                worker=worker.index,
                error=[repr(exc) for exc in group.exceptions],
            )
        finally:
            worker.frames = None
            with trio.CancelScope(shield=True):
                await stream.aclose()
                with trio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        return process.returncode

    async def _serve_incarnation(
        self, worker: WorkerHandle, frames: ipc.FrameStream, nursery: trio.Nursery
    ) -> None:
        """Speak to one worker process until it closes its end."""
        await frames.send(
            ipc.Spawn(
                worker_index=worker.index,
                worker_count=len(self.workers),
                incarnation=worker.incarnation,
                config=self._config_json,
            )
        )
        async for frame in frames:
            if isinstance(frame, ipc.Done):
                worker.ledger.pop(frame.outcome.op_id, None)
                await self.outcomes.send(frame.outcome)
            elif isinstance(frame, ipc.Ready):
                async with worker.send_lock:
                    # the ledger holds everything queued too, in submission order
                    worker.outbox.clear()
                    taken, worker.outbox_taken = worker.outbox_taken, trio.Event()
                    taken.set()
                    replay = list(worker.ledger.values())
                    if replay:
                        log.warning(
                            "replaying in-flight operations",
                            worker=worker.index,
                            count=len(replay),
                        )
                        await frames.send_many([ipc.Submit(op=op) for op in replay])
                    worker.frames = frames
                nursery.start_soon(self._send_outbox, worker, frames)
                worker.ready.set()
            elif isinstance(frame, ipc.StatsReport):
                reply = worker.stats_replies.pop(frame.round, None)
                if reply is not None:
                    reply.send_nowait(frame)
            else:
                log.warning("unexpected frame from worker", frame=type(frame).__name__)

    async def stop(self, within: float = 10.0) -> None:
        """Tell every worker that nothing more comes (end of stream): each finishes what it
        holds, sends the outcomes back and exits. Returns once all have exited, or after
        ``within`` seconds (their operations then stay unacked, for redelivery)."""
        self._stopping = True
        for worker in self.workers:
            frames = worker.frames
            worker.frames = None
            if frames is not None:
                try:
                    await frames.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        with trio.move_on_after(within):
            await self._stopped.wait()

    # ------------------------------------------------------------------ statistics

    async def collect_round(self, answer_within: float, *, with_owned_ids: bool) -> RoundReport:
        """One statistics round over every live worker; workers that do not answer within ``answer_within`` seconds are skipped."""
        self._stats_round += 1
        round_id = self._stats_round
        send, receive = trio.open_memory_channel[ipc.StatsReport](len(self.workers))
        asked: list[WorkerHandle] = []
        for worker in self.workers:
            frames = worker.frames
            if frames is None:
                continue
            worker.stats_replies[round_id] = send
            try:
                await frames.send(ipc.CollectStats(round=round_id, with_owned_ids=with_owned_ids))
                asked.append(worker)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                worker.stats_replies.pop(round_id, None)
        report = RoundReport(
            listeners=[], status_changes=[], owned_lb_ids=set() if with_owned_ids else None
        )
        with trio.move_on_after(answer_within):
            for _ in asked:
                answer = await receive.receive()
                report.listeners.extend(answer.listeners)
                report.status_changes.extend(answer.status_changes)
                if report.owned_lb_ids is not None and answer.owned_lb_ids is not None:
                    report.owned_lb_ids.update(answer.owned_lb_ids)
        for worker in asked:
            if worker.stats_replies.pop(round_id, None) is not None:
                report.skipped_workers.append(worker.index)
        if report.skipped_workers:
            # an incomplete picture: do not let the sync report their load balancers OFFLINE
            report.owned_lb_ids = None
        return report
