"""One actor per load balancer: a task with a bounded mailbox that runs one operation at a time.

:func:`open_actor_system` owns the actors (tasks in its nursery) and the ``outcomes``
channel. :meth:`ActorSystem.submit` hands an :class:`~lbactors.messages.Operation` to the
actor of ``op.lb_id``, creating it on first use, and waits while that actor's mailbox is full
(backpressure travels back to whoever submits, and from there to the broker's prefetch).

Guarantees:

- operations of one load balancer run one at a time, in submission order, and their
  :class:`~lbactors.messages.Outcome` objects are sent to ``outcomes`` in that order, one per
  operation; operations of different load balancers run concurrently;
- queries (``op.lb_id == ""``: flavor / availability-zone calls, and messages too broken to
  name a load balancer) need no actor: each runs as its own task;
- nothing escapes an actor: decode errors, backend exceptions and our own bugs all become
  outcomes (:func:`lbactors.dispatch.run_operation`);
- a backend call that ignores its cancellation cannot hold its actor: ``cancel_grace``
  seconds after its deadline the operation's outcome is sent for it (the object ERROR,
  :func:`~lbactors.dispatch.failed_outcome`) with ``abandoned=True``, and the call's late
  result, if any, is dropped. The actor stays blocked behind the call, so its load
  balancer's later operations never overlap it; they run once the call returns at last. The
  owner of the system should replace it rather than wait (a worker process is replaced by
  the supervisor, which replays those later operations);
- an actor retires once its load balancer is deleted (plain or cascade delete succeeded) and
  its mailbox is empty, so memory follows the live load balancers, not the history; an
  operation that arrives later for that id simply starts a fresh actor.

Closing (leaving the ``async with``): no new submissions; every actor finishes the
operations already in its mailbox, then ``outcomes`` is closed. Bound the drain with a cancel
scope around the block (trio style: the caller places timeouts).

Layer: actors and backends (model, trio); never AMQP or the supervisor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import structlog
import trio

from lbactors.backends.base import Backend
from lbactors.dispatch import CallWatch, failed_outcome, run_operation
from lbactors.messages import (
    Failure,
    ListenerStatistics,
    Operation,
    Outcome,
    StatusEntry,
    StatusUpdate,
)
from lbactors.model import PLURAL
from lbactors.status import ParentsOnFailure

__all__ = ["ActorSystem", "open_actor_system"]

log = structlog.get_logger("lbactors.actor")


class _Mailbox:
    __slots__ = ("busy", "last_used", "lb_id", "receive", "send", "watch")

    def __init__(self, lb_id: str, size: float) -> None:
        self.lb_id = lb_id
        self.send, self.receive = trio.open_memory_channel[Operation](size)
        #: running an operation now
        self.busy = False
        #: when an operation was last handed over or finished (trio clock)
        self.last_used = 0.0
        #: the operation running now and the deadline of its backend call
        self.watch = CallWatch()


def _deleted_lb(outcome: Outcome, lb_id: str) -> bool:
    """Whether ``outcome`` reports the load balancer ``lb_id`` DELETED."""
    status = outcome.status
    if status is None or status.loadbalancers is msgspec.UNSET:
        return False
    return any(
        e.id == lb_id and e.provisioning_status == "DELETED" for e in status.loadbalancers
    )


class ActorSystem:
    """The actors of one process; create with :func:`open_actor_system`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        backend: Backend,
        outcomes: trio.MemorySendChannel[Outcome],
        *,
        mailbox_size: float,
        parents_on_failure: ParentsOnFailure,
        idle_timeout: float = 60.0,
        cancel_grace: float = 5.0,
    ) -> None:
        if mailbox_size < 0:
            raise ValueError(f"mailbox_size must be >= 0, not {mailbox_size}")
        self._nursery = nursery
        self._backend = backend
        self._outcomes = outcomes
        self._mailbox_size = mailbox_size
        self._parents_on_failure: ParentsOnFailure = parents_on_failure
        self._actors: dict[str, _Mailbox] = {}
        #: load balancers with a live tree here (an idle one has no actor until its next op)
        self._owned: set[str] = set()
        self._idle_timeout = idle_timeout
        self._cancel_grace = cancel_grace
        #: every operation running now (actors' and queries')
        self._running: set[CallWatch] = set()
        #: operations given up on because their backend call ignored cancellation
        self.abandoned = 0
        self._closed = False
        #: set when closing and an actor ends, so that the overdue watch ends without delay
        self._closing_progress = trio.Event()
        #: operating statuses last reported by collect_statistics, and their load balancer
        self._last_operating: dict[tuple[str, str], str] = {}
        self._owner_of_status: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ public

    async def submit(self, op: Operation) -> None:
        """Hand ``op`` to the actor of ``op.lb_id``; waits while its mailbox is full.

        A cancellation point, but not a schedule point when the mailbox has room (it returns
        without yielding, like ``send_nowait``): a task that only submits, with no other
        I/O, must checkpoint itself now and then.
        Raises :class:`trio.ClosedResourceError` once the system is closing.
        """
        if self._closed:
            raise trio.ClosedResourceError("the actor system is closed")
        if not op.lb_id:
            self._nursery.start_soon(self._run_query, op)
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            mailbox = self._actors.get(op.lb_id)
            if mailbox is None:
                mailbox = self._spawn(op.lb_id)
            try:
                # before the handover: the idle sweep never closes a mailbox just used
                mailbox.last_used = trio.current_time()
                try:
                    # hot path: room in the mailbox, no trip through the scheduler
                    mailbox.send.send_nowait(op)
                except trio.WouldBlock:
                    await mailbox.send.send(op)
                return
            except trio.BrokenResourceError:
                # the actor retired while we waited: a fresh one takes the operation
                continue

    def actor_count(self) -> int:
        """How many actors are alive (load balancers used within ``idle_timeout``)."""
        return len(self._actors)

    def adopt(self, lb_ids: Iterable[str]) -> None:
        """Count ``lb_ids`` as held here (their backend state survived a restart)."""
        self._owned.update(lb_ids)

    def known_lb_ids(self) -> list[str]:
        """The load balancers that have a live tree here (an actor now or when next used)."""
        return list(self._owned)

    async def sweep_idle(self) -> None:
        """Retire idle actors every ``idle_timeout / 2`` seconds, until cancelled.

        An actor whose mailbox is empty, that runs nothing and got nothing for
        ``idle_timeout`` seconds ends; its load balancer's next operation starts a fresh
        one. Resident load balancers then cost their backend state, not a task and a channel
        each (about 5 KB).
        """
        if self._idle_timeout <= 0:
            return
        while True:
            await trio.sleep(self._idle_timeout / 2)
            deadline = trio.current_time() - self._idle_timeout
            idle = [
                mailbox
                for mailbox in self._actors.values()
                if not mailbox.busy
                and mailbox.last_used < deadline
                and mailbox.receive.statistics().current_buffer_used == 0
            ]
            for mailbox in idle:
                del self._actors[mailbox.lb_id]
                mailbox.send.close()  # the actor sees the end of its mailbox and returns

    async def watch_overdue(self) -> None:
        """Give up on every backend call still running ``cancel_grace`` seconds after its
        deadline (it ignored its cancellation; see the module docstring), until the system
        is closed and nothing runs any more."""
        period = min(1.0, max(self._cancel_grace / 2, 0.05))
        while not (self._closed and not self._actors and not self._running):
            with trio.move_on_after(period):
                await self._closing_progress.wait()
            self._closing_progress = trio.Event()
            now = trio.current_time()
            for watch in [w for w in self._running if w.deadline + self._cancel_grace < now]:
                await self._abandon(watch, now)

    async def _abandon(self, watch: CallWatch, now: float) -> None:
        op = watch.op
        assert op is not None
        watch.abandoned = True
        self._running.discard(watch)
        self.abandoned += 1
        overdue = now - watch.deadline
        reason = (
            f"the backend call ignored its cancellation: still running {overdue:.1f} s "
            f"after its deadline"
        )
        log.error(
            "backend call ignored its cancellation; giving up on it",
            lb_id=op.lb_id,
            op_id=op.op_id,
            method=op.method,
            overdue_s=round(overdue, 3),
        )
        outcome = failed_outcome(op, reason, parents_on_failure=self._parents_on_failure)
        outcome.abandoned = True
        await self._outcomes.send(outcome)

    async def collect_statistics(self) -> tuple[list[ListenerStatistics], list[StatusUpdate]]:
        """Listener counters of every known load balancer, and the operating statuses that
        changed since the previous call (``{id, operating_status}`` entries, at most one
        :class:`StatusUpdate`). A load balancer whose backend read fails is skipped this
        round (logged) and keeps its previous operating statuses.
        """
        listeners: list[ListenerStatistics] = []
        current: dict[tuple[str, str], str] = {}
        for reading in await self._backend.read_many(self.known_lb_ids()):
            lb_id = reading.lb_id
            if reading.error is not None:
                exc = reading.error
                log.warning(
                    "statistics read failed", lb_id=lb_id, error=f"{type(exc).__name__}: {exc}"
                )
                for key, value in self._last_operating.items():
                    if self._owner_of_status.get(key) == lb_id:
                        current[key] = value
                continue
            listeners.extend(reading.listeners)
            for kind, object_id, operating in reading.statuses:
                current[(kind, object_id)] = operating
                self._owner_of_status[(kind, object_id)] = lb_id
        changed: dict[str, list[StatusEntry]] = {}
        for (kind, object_id), operating in current.items():
            if self._last_operating.get((kind, object_id)) != operating:
                changed.setdefault(PLURAL[kind], []).append(
                    StatusEntry(id=object_id, operating_status=operating)
                )
        self._owner_of_status = {
            k: v for k, v in self._owner_of_status.items() if k in current
        }
        self._last_operating = current
        return listeners, [StatusUpdate(**changed)] if changed else []

    # ------------------------------------------------------------------ internals

    def _spawn(self, lb_id: str) -> _Mailbox:
        mailbox = _Mailbox(lb_id, self._mailbox_size)
        self._actors[lb_id] = mailbox
        self._nursery.start_soon(self._serve_actor, mailbox, name=f"actor {lb_id}")
        return mailbox

    def _close(self) -> None:
        self._closed = True
        for mailbox in self._actors.values():
            mailbox.send.close()
        self._closing_progress.set()

    async def _run_one(self, op: Operation, watch: CallWatch, actor_log: Any) -> Outcome:
        watch.op = op
        watch.abandoned = False
        self._running.add(watch)
        try:
            return await run_operation(
                self._backend, op, parents_on_failure=self._parents_on_failure, watch=watch
            )
        except Exception as exc:  # run_operation never raises; this is the last net
            (actor_log or log).error(
                "operation escaped", op_id=op.op_id, method=op.method, exc_info=exc
            )
            return Outcome(
                op_id=op.op_id,
                lb_id=op.lb_id,
                failure=Failure(
                    exc_class=type(exc).__name__, module=type(exc).__module__, message=str(exc)
                ),
                reason=f"internal error: {type(exc).__name__}: {exc}",
            )
        finally:
            self._running.discard(watch)

    async def _run_query(self, op: Operation) -> None:
        watch = CallWatch()
        outcome = await self._run_one(op, watch, None)
        if not watch.abandoned:
            await self._outcomes.send(outcome)
        self._ended()

    async def _serve_actor(self, mailbox: _Mailbox) -> None:
        lb_id = mailbox.lb_id
        actor_log = log.bind(lb_id=lb_id)
        actor_log.debug("actor started")
        receive = mailbox.receive
        outcomes = self._outcomes
        with receive:
            while True:
                try:
                    op = receive.receive_nowait()
                except trio.WouldBlock:
                    try:
                        op = await receive.receive()
                    except trio.EndOfChannel:
                        break
                except trio.EndOfChannel:
                    break
                mailbox.busy = True
                self._owned.add(lb_id)
                outcome = await self._run_one(op, mailbox.watch, actor_log)
                if mailbox.watch.abandoned:
                    # its outcome went out already: the late result of a call that ignored
                    # its cancellation is dropped. The call is over, so the operations
                    # queued behind it may run now without overlapping it.
                    actor_log.warning(
                        "abandoned backend call returned; its result is dropped",
                        op_id=op.op_id,
                        method=op.method,
                    )
                    mailbox.busy = False
                    mailbox.last_used = trio.current_time()
                    continue
                mailbox.busy = False
                mailbox.last_used = trio.current_time()
                retire = (
                    op.method.startswith("loadbalancer_delete")
                    and _deleted_lb(outcome, lb_id)
                    and receive.statistics().current_buffer_used == 0
                    and receive.statistics().tasks_waiting_send == 0
                )
                if retire:
                    # before the outcome leaves, so whoever sees it sees the actor gone
                    if self._actors.get(lb_id) is mailbox:
                        del self._actors[lb_id]
                    self._owned.discard(lb_id)
                    receive.close()
                    actor_log.debug("actor retired", op_id=op.op_id, method=op.method)
                try:
                    outcomes.send_nowait(outcome)
                except trio.WouldBlock:
                    await outcomes.send(outcome)
                if retire:
                    self._ended()
                    return
        if self._actors.get(lb_id) is mailbox:
            del self._actors[lb_id]
        self._ended()

    def _ended(self) -> None:
        if self._closed:
            self._closing_progress.set()


@asynccontextmanager
async def open_actor_system(
    backend: Backend,
    outcomes: trio.MemorySendChannel[Outcome],
    *,
    mailbox_size: float = 64,
    parents_on_failure: ParentsOnFailure = "active",
    idle_timeout: float = 60.0,
    cancel_grace: float = 5.0,
) -> AsyncIterator[ActorSystem]:
    """An :class:`ActorSystem` running ``backend``; one outcome per operation to ``outcomes``.

    The system owns ``outcomes`` and closes it once every actor has finished (pass a
    ``clone()`` to keep using it). The backend is not closed here: whoever built it calls
    :meth:`~lbactors.backends.base.Backend.aclose`.
    """
    # ``outcomes.close()``, not ``async with outcomes``: the latter's ``aclose`` checkpoints,
    # and in a cancelled scope its Cancelled would replace (and so hide) the body's exception.
    try:
        async with trio.open_nursery() as nursery:
            system = ActorSystem(
                nursery,
                backend,
                outcomes,
                mailbox_size=mailbox_size,
                parents_on_failure=parents_on_failure,
                idle_timeout=idle_timeout,
                cancel_grace=cancel_grace,
            )
            sweeper = trio.CancelScope()

            async def sweep() -> None:
                with sweeper:
                    await system.sweep_idle()

            nursery.start_soon(sweep)
            # watches the drain too: it ends once the system is closed and nothing runs
            nursery.start_soon(system.watch_overdue)
            try:
                yield system
            finally:
                sweeper.cancel()
                system._close()
    finally:
        outcomes.close()
