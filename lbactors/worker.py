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
import math
import os
import signal
import socket
import sys

import structlog
import trio

from lbactors import ipc
from lbactors.actor import ActorSystem, open_actor_system
from lbactors.backends import load_backend
from lbactors.config import decode_config
from lbactors.logs import configure_logging
from lbactors.messages import Operation, Outbound, Outcome
from lbactors.routing import shard

log = structlog.get_logger("lbactors.worker")

#: how many finished outcomes are sent in one write at most
OUTCOME_BATCH = 256
#: outcomes finished but not yet written to the supervisor (actors wait beyond this)
OUTCOME_BUFFER = 1024


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
    """Hand received operations to their actors, in the order they came."""
    async for op in intake:
        await system.submit(op)


class _Statistics:
    """Answers ``CollectStats``: one collection at a time, each bounded in time."""

    def __init__(self, system: ActorSystem, frames: ipc.FrameStream, within: float) -> None:
        self.system = system
        self.frames = frames
        self.within = within
        self.running = False

    async def answer(self, request: ipc.CollectStats) -> None:
        if self.running:  # the previous round's read still runs: this round goes without us
            await self.frames.send(ipc.StatsReport(round=request.round, listeners=[],
                                                   status_changes=[], complete=False))
            return
        self.running = True
        try:
            owned = sorted(self.system.known_lb_ids()) if request.with_owned_ids else None
            with trio.move_on_after(self.within) as scope:
                listeners, changes = await self.system.collect_statistics()
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
                # this worker's share of it, as the router shards load balancers
                resident = [
                    lb_id
                    for lb_id in await backend.resident_lb_ids()
                    if shard(lb_id, spawn.worker_count) == spawn.worker_index
                ]
                system.adopt(resident)
                if resident:
                    log.info("resident load balancers adopted", count=len(resident))
                statistics = _Statistics(system, frames, config.stats.worker_timeout)
                nursery.start_soon(_forward_outcomes, outcomes_receive, frames)
                async with trio.open_nursery() as intake_nursery:
                    intake_nursery.start_soon(_feed, system, intake_receive)
                    await frames.send(ipc.Ready(worker_index=spawn.worker_index, pid=os.getpid()))
                    log.info("worker ready", backend=config.backend.name)
                    task_status.started()
                    with intake_send:
                        async for frame in frames:
                            if isinstance(frame, ipc.Submit):
                                intake_send.send_nowait(frame.op)
                            elif isinstance(frame, ipc.Ping):
                                await frames.send(
                                    ipc.Pong(
                                        actors=system.actor_count(),
                                        resident=system.resident_count(),
                                    )
                                )
                            elif isinstance(frame, ipc.CollectStats):
                                nursery.start_soon(statistics.answer, frame)
                            else:
                                log.warning("unexpected frame", frame=type(frame).__name__)
                # every operation received is in a mailbox: the actor system drains them
            # the actor system has finished every operation it was given; outcomes drain
    finally:
        await backend.aclose()
    log.info("worker stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lbactors.worker",
        description="lbactors worker process (started by `lbactors serve`, not by hand).",
    )
    parser.add_argument("--fd", type=int, required=True, help="socket file descriptor to the supervisor")
    args = parser.parse_args(argv)
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
