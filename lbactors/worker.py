"""A worker process: hosts one actor per load balancer for its shard of the load balancers.

Started by the supervisor as ``python -m lbactors.worker --fd N`` with one end of a socket
pair on file descriptor N. The supervisor speaks first (:class:`~lbactors.ipc.Spawn`, with the
configuration); the worker answers :class:`~lbactors.ipc.Ready` once its backend and actor
system are up, then runs every :class:`~lbactors.ipc.Submit` it receives and sends back one
:class:`~lbactors.ipc.Done` per operation, in the order its actors ran them, with the
:class:`~lbactors.ipc.Reassert` frames of created objects' statuses among them (Octavia's
commit race; a worker restart forgets the re-assertions it had pending). End of stream
from the supervisor means: finish and exit.

Never touches AMQP (DESIGN.md, layers).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import signal
import socket
import sys
from collections.abc import Callable

import structlog
import trio

from lbactors import ipc, memory
from lbactors.actor import ActorSystem, open_actor_system
from lbactors.backends import load_backend
from lbactors.backends.base import Backend
from lbactors.config import decode_config
from lbactors.logs import configure_logging
from lbactors.messages import Operation, Outbound, Outcome
from lbactors.routing import shard, shard_of

log = structlog.get_logger("lbactors.worker")

#: how many finished outcomes are sent in one write at most
OUTCOME_BATCH = 256
#: outcomes finished but not yet written to the supervisor (actors wait beyond this)
OUTCOME_BUFFER = 1024


#: the heap's free pages go back to the system after each statistics round and once a burst
#: of operations is over (a Ping finds no actor left after some ran); see lbactors.memory
trim_memory = memory.trim_memory


def _frame(item: Outbound) -> ipc.Frame:
    if isinstance(item, Outcome):
        return ipc.Done(outcome=item)
    return ipc.Reassert(reassertion=item)


async def _forward_outcomes(
    outcomes: trio.MemoryReceiveChannel[Outbound], frames: ipc.FrameStream
) -> None:
    """Send outcomes (and re-assertions) back in order, coalescing whatever is ready into
    one write."""
    async for item in outcomes:
        batch: list[ipc.Frame] = [_frame(item)]
        while len(batch) < OUTCOME_BATCH:
            try:
                batch.append(_frame(outcomes.receive_nowait()))
            except trio.WouldBlock:
                break
        await frames.send_many(batch)


async def _feed(system: ActorSystem, intake: trio.MemoryReceiveChannel[Operation]) -> None:
    """Hand received operations to their actors, in the order they came; those already
    received without a scheduling round each (trio's ``receive`` yields even then)."""
    while True:
        try:
            op = intake.receive_nowait()
        except trio.WouldBlock:
            try:
                op = await intake.receive()
            except trio.EndOfChannel:
                return
        except trio.EndOfChannel:
            return
        await system.submit(op)


class _Statistics:
    """Answers ``CollectStats``: one collection at a time, each bounded in time."""

    def __init__(
        self,
        system: ActorSystem,
        frames: ipc.FrameStream,
        within: float,
        backend: Backend | None = None,
    ) -> None:
        self.system = system
        self.frames = frames
        self.within = within
        self.running = False
        self.backend = backend

    async def _owned(self, request: ipc.CollectStats) -> list[str] | None:
        """The load balancers held here, for the out-of-sync repair. In cluster mode the
        backend is asked again: a shared one (NSX-like) holds those another daemon created
        since this worker started, which this daemon may own now (docs/cluster.md §6)."""
        if not request.with_owned_ids:
            return None
        owned = set(self.system.known_lb_ids())
        if request.held_shards is not None and self.backend is not None:
            owned.update(await self.backend.resident_lb_ids())
        return sorted(owned)

    def _reported(self, request: ipc.CollectStats) -> Callable[[str], bool] | None:
        """Which load balancers the round reports (cluster mode: those whose owner key is in
        a held shard; one whose key is unknown is not); ``None``: all."""
        if request.held_shards is None:
            return None
        held = set(request.held_shards)
        shards = request.shards
        owner_key = self.system.owner_key

        def reported(lb_id: str) -> bool:
            key = owner_key(lb_id)
            return key is not None and shards > 0 and shard_of(key, shards) in held

        return reported

    async def answer(self, request: ipc.CollectStats) -> None:
        """Answer ``request``, then trim the heap (the round's readings are gone by then)."""
        await self._answer(request)
        trim_memory()

    async def _answer(self, request: ipc.CollectStats) -> None:
        if self.running:  # the previous round's read still runs: this round goes without us
            await self.frames.send(ipc.StatsReport(round=request.round, listeners=[],
                                                   status_changes=[], complete=False))
            return
        self.running = True
        try:
            owned: list[str] | None = None
            with trio.move_on_after(self.within) as scope:
                owned = await self._owned(request)
                listeners, changes = await self.system.collect_statistics(
                    only=self._reported(request)
                )
            if scope.cancelled_caught:
                log.warning("statistics read exceeded its deadline", deadline_s=self.within)
                report = ipc.StatsReport(round=request.round, listeners=[], status_changes=[],
                                         complete=False)
            else:
                report = ipc.StatsReport(round=request.round, listeners=listeners,
                                         status_changes=changes, owned_lb_ids=owned)
        finally:
            self.running = False
        await self.frames.send(report)


async def serve_worker(
    stream: trio.abc.Stream, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the supervisor on ``stream`` until it closes its end.

    The frame reader never waits for an actor: operations go through an intake channel to
    their mailboxes, and a ``Ping`` is answered as soon as it is read, however busy or stuck
    the actors are (the supervisor's liveness check measures this process, not a backend).
    """
    frames = ipc.FrameStream(stream)
    spawn = await frames.receive()
    if not isinstance(spawn, ipc.Spawn):
        raise ipc.ProtocolError(f"expected Spawn first, got {type(spawn).__name__}")
    config = decode_config(spawn.config)
    configure_logging(config.log.level, config.log.format)
    structlog.contextvars.bind_contextvars(
        worker=spawn.worker_index, incarnation=spawn.incarnation, pid=os.getpid()
    )
    backend = load_backend(config.backend)
    daemon = config.daemon
    outcomes_send, outcomes_receive = trio.open_memory_channel[Outbound](OUTCOME_BUFFER)
    # bounded by what the supervisor sends: the broker's prefetch (docs/bounds.md)
    intake_send, intake_receive = trio.open_memory_channel[Operation](math.inf)
    try:
        async with trio.open_nursery() as nursery:
            async with open_actor_system(
                backend,
                outcomes_send,
                mailbox_size=daemon.mailbox_size or math.inf,
                parents_on_failure=config.status.parents_on_failure,
                idle_timeout=daemon.actor_idle_timeout,
                cancel_grace=daemon.cancel_grace,
                reassert_after=config.status.reassert_after,
            ) as system:
                # what the backend still holds from before (adopted HAProxy processes, say):
                # this worker's share of it, as the router shards load balancers (by owner
                # key; by id when the backend cannot tell the key from the id)
                resident = [
                    lb_id
                    for lb_id in await backend.resident_lb_ids()
                    if shard(backend.lb_affinity_key(lb_id) or lb_id, spawn.worker_count)
                    == spawn.worker_index
                ]
                system.adopt(resident)
                if resident:
                    log.info("resident load balancers adopted", count=len(resident))
                statistics = _Statistics(system, frames, config.stats.worker_timeout, backend)
                nursery.start_soon(_forward_outcomes, outcomes_receive, frames)
                async with trio.open_nursery() as intake_nursery:
                    intake_nursery.start_soon(_feed, system, intake_receive)
                    # start-up's objects and the adopted load balancers stay: out of the
                    # collector's sight (its full collections walk only what came since)
                    gc.freeze()
                    await frames.send(ipc.Ready(worker_index=spawn.worker_index, pid=os.getpid()))
                    log.info("worker ready", backend=config.backend.name)
                    task_status.started()
                    #: operations received since the last trim
                    received = 0
                    with intake_send:
                        async for frame in frames:
                            if isinstance(frame, ipc.Submit):
                                intake_send.send_nowait(frame.op)
                                received += 1
                            elif isinstance(frame, ipc.Ping):
                                actors = system.actor_count()
                                await frames.send(
                                    ipc.Pong(actors=actors, resident=system.resident_count())
                                )
                                if received and not actors:  # a burst is over
                                    received = 0
                                    trim_memory()
                            elif isinstance(frame, ipc.CollectStats):
                                nursery.start_soon(statistics.answer, frame)
                            else:
                                log.warning("unexpected frame", frame=type(frame).__name__)
                # every operation received is in a mailbox: the actor system drains them
            # the actor system has finished every operation it was given; outcomes drain
    finally:
        await backend.aclose()
    log.info("worker stopped")


#: prctl(2) option: the signal this process gets when its parent (thread) dies
PR_SET_PDEATHSIG = 1


def die_with_supervisor(supervisor_pid: int | None) -> None:
    """Ask for SIGKILL when the supervisor dies (Linux: ``prctl(PR_SET_PDEATHSIG)``; nothing
    elsewhere), so that a worker never outlives a supervisor killed with SIGKILL (in cluster
    mode it would go on running operations that another daemon now owns). The signal is tied
    to the *thread* that forked us (the supervisor forks from its trio thread, see
    ``supervisor.router.ChildProcess``). Then, as the supervisor may have died before the
    request: exit at once if our parent is no longer ``supervisor_pid``.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if supervisor_pid is not None and os.getppid() != supervisor_pid:
        print(
            f"lbactors worker: supervisor {supervisor_pid} is gone (parent is {os.getppid()})",
            file=sys.stderr,
        )
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lbactors.worker",
        description="lbactors worker process (started by `lbactors serve`, not by hand).",
    )
    parser.add_argument("--fd", type=int, required=True, help="socket file descriptor to the supervisor")
    parser.add_argument(
        "--supervisor-pid", type=int, help="exit at once unless this is still our parent"
    )
    args = parser.parse_args(argv)
    die_with_supervisor(args.supervisor_pid)
    # The supervisor decides when a worker stops (it closes the stream after draining); a
    # Ctrl-C on the terminal or systemd's SIGTERM to the whole group must not cut it short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)

    async def run() -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        await serve_worker(stream)

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
