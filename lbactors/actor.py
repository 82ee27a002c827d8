"""One actor per load balancer: a bounded mailbox whose operations run one at a time.

:func:`open_actor_system` owns the actors and the ``outcomes`` channel. An actor is data,
not a task: a mailbox with work is *ready*, and a few runner tasks (in the system's nursery)
take ready mailboxes in turn and run each one's operations until it is empty. A runner stays
with an operation that suspends (a backend call that waits); when every runner waits so,
the next ready mailbox gets a new runner, and runners left with nothing to do end, except
``SPARE_RUNNERS`` parked ones. So a backend whose calls never suspend (the noop backend)
runs every load balancer on one task, with no task switch per operation and no task per
load balancer, and one whose calls wait runs as many at once as it has calls waiting.
:meth:`ActorSystem.submit` hands an :class:`~lbactors.messages.Operation` to the
actor of ``op.lb_id``, creating it on first use, and waits while that actor's mailbox is full
(backpressure travels back to whoever submits, and from there to the broker's prefetch).

Guarantees:

- operations of one load balancer run one at a time, in submission order, and their
  :class:`~lbactors.messages.Outcome` objects are sent to ``outcomes`` in that order, one per
  operation; operations of different load balancers run concurrently, except that those
  of a key (``op.key``, ``Backend.affinity_key``, when it is not the load balancer id): each
  backend call of such an operation holds its key's lock (:class:`KeyedLocks`, FIFO), so
  the backend calls of load balancers that share a key never overlap (docs/cluster.md §3).
  Each load balancer's key (that of its last operation) is remembered (:meth:`key_of`);
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
  operation that arrives later for that id simply starts a fresh actor;
- re-assertion (Octavia's commit race, README): after a ``*_create`` outcome, the created
  object's own entry (ACTIVE or ERROR; never a parent's) is sent again as a
  :class:`~lbactors.messages.Reassertion` ``reassert_after[i]`` seconds after the outcome.
  Each time only while its load balancer has no operation queued or running here and got or
  finished none for ``REASSERT_QUIET`` seconds (else later, keeping the spacing of the
  following ones), and into the same ``outcomes`` channel, so that it keeps its place
  before any later outcome of that load balancer. Every id named by a later outcome of the
  load balancer is dropped (that status supersedes it), a deleted load balancer drops all
  of its entries, and an operating status reported later by
  :meth:`ActorSystem.collect_statistics` replaces the entry's own. One task sweeps the due
  entries of the whole system (a heap keyed by due time); nothing per operation or object.
  Pending re-assertions live in memory only: a new process has none.

Closing (leaving the ``async with``): no new submissions; every actor finishes the
operations already in its mailbox, then ``outcomes`` is closed. Bound the drain with a cancel
scope around the block (trio style: the caller places timeouts).

Layer: actors and backends (model, trio); never AMQP or the supervisor.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import sys
import types
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import msgspec
import structlog
import trio

from lbactors.backends.base import Backend
from lbactors.dispatch import CallWatch, failed_outcome, resume, run_operation
from lbactors.messages import (
    Failure,
    ListenerStatistics,
    Operation,
    Outbound,
    Outcome,
    Reassertion,
    StatusEntry,
    StatusUpdate,
)
from lbactors.model import PLURAL
from lbactors.status import ParentsOnFailure

__all__ = ["ActorSystem", "KeyedLocks", "open_actor_system"]

log = structlog.get_logger("lbactors.actor")

#: seconds until a re-assertion due while its load balancer is busy is tried again
REASSERT_BUSY_RETRY = 0.5
#: a re-assertion waits until its load balancer got and finished nothing for this long: a
#: driver that gates on our statuses casts its next operation within milliseconds of one,
#: so a quiet load balancer is unlikely to have one on its way (the residual window)
REASSERT_QUIET = 0.5
#: runners kept parked when there is nothing to run; more end (one is spawned when all
#: the others wait inside operations, so a backend whose calls suspend needs several)
SPARE_RUNNERS = 4
#: operations a runner runs before it lets the other tasks (the submitters) run
RUN_BATCH = 64
_PLURAL_KEYS = tuple(PLURAL.values())
_T = TypeVar("_T")
#: ``<kind>_create`` -> the status key of the created object's own entry
_CREATED_KEY = {f"{kind}_create": key for kind, key in PLURAL.items()}


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        #: tasks holding or waiting for the lock
        self.users = 0


class KeyedLocks:
    """One :class:`trio.Lock` per key (FIFO: waiters get it in the order they asked),
    created on first use and dropped once nobody holds or waits for it, so memory follows
    the keys in use, not the history."""

    def __init__(self) -> None:
        self._locks: dict[str, _KeyLock] = {}

    def __len__(self) -> int:
        """How many keys are held or waited for now."""
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]


class _Mailbox:
    """One load balancer's actor, as data: its queued operations and the submitters waiting
    for room, served in the order they came (what a trio memory channel of ``size`` does,
    ``0`` a rendezvous, without its per-operation objects and exceptions). No task of its
    own: while it has work it is *scheduled*, in the system's ready queue or held by the one
    runner task that runs its operations (:meth:`ActorSystem._serve_runner`)."""

    __slots__ = (
        "busy", "closed", "last_used", "lb_id", "log", "queue", "room", "scheduled", "size",
        "waiting",
    )

    def __init__(self, lb_id: str, size: float) -> None:
        self.lb_id = lb_id
        self.size = size
        self.queue: deque[Operation] = deque()
        #: in the ready queue or held by a runner; ``False``: idle, as a parked actor
        self.scheduled = False
        #: submitters waiting for room (created when the first one has to wait)
        self.room: trio.lowlevel.ParkingLot | None = None
        #: submitters waiting for room, or woken and not yet run: later ones queue behind
        self.waiting = 0
        #: no more operations: the actor retired (or is asked to); submitters go elsewhere
        self.closed = False
        #: running an operation now
        self.busy = False
        #: when an operation was last handed over or finished (trio clock)
        self.last_used = 0.0
        #: logger bound to the load balancer
        self.log: Any = log.bind(lb_id=lb_id)

    def has_room(self) -> bool:
        queue = self.queue
        return len(queue) < self.size or (not self.scheduled and not queue)

    def pass_room_on(self) -> None:
        """Room appeared (or the actor went idle): the first waiting submitter may go
        (unless one was woken already and has not run yet: the lot is empty then)."""
        room = self.room
        if self.waiting and room is not None and len(room):
            room.unpark()

    def close(self) -> None:
        self.closed = True
        if self.room is not None:
            self.room.unpark_all()

    async def wait_for_room(self, put: Callable[[_Mailbox, Operation], None], op: Operation) -> bool:
        """``put(self, op)`` once there is room and the submitters before it went; ``False``
        if the mailbox closed first."""
        self.waiting += 1
        if self.room is None:
            self.room = trio.lowlevel.ParkingLot()
        try:
            while True:
                await self.room.park()
                if self.closed:
                    return False
                if self.has_room():
                    put(self, op)
                    return True
        finally:
            self.waiting -= 1
            if self.waiting and self.has_room():
                self.pass_room_on()


class _Pending:
    """One created object's own entry, waiting for its next re-assertion."""

    __slots__ = ("attempt", "created", "entry", "key", "lb_id", "token")

    def __init__(self, lb_id: str, key: str, entry: StatusEntry, created: float) -> None:
        self.lb_id = lb_id
        #: its key in a status dict (``pools``)
        self.key = key
        self.entry = entry
        #: when its create's outcome left the actor (trio clock)
        self.created = created
        #: index of its next delay in ``reassert_after``
        self.attempt = 0
        #: the sequence number of its live item in the due heap; -1 once dropped
        self.token = -1


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
        outcomes: trio.MemorySendChannel[Outbound],
        *,
        mailbox_size: float,
        parents_on_failure: ParentsOnFailure,
        idle_timeout: float = 60.0,
        cancel_grace: float = 5.0,
        reassert_after: Sequence[float] = (),
    ) -> None:
        if mailbox_size < 0:
            raise ValueError(f"mailbox_size must be >= 0, not {mailbox_size}")
        self._nursery = nursery
        self._backend = backend
        self._outcomes = outcomes
        self._mailbox_size = mailbox_size
        self._parents_on_failure: ParentsOnFailure = parents_on_failure
        self._actors: dict[str, _Mailbox] = {}
        #: load balancers with a live tree here (an idle one has no actor until its next op),
        #: each with the owner key of its last operation here (the id itself, the same
        #: string, when that is its key; ``None``: adopted, none ran since), until deleted.
        #: Its ids are interned: one string per load balancer in this process.
        self._owned: dict[str, str | None] = {}
        self._idle_timeout = idle_timeout
        self._cancel_grace = cancel_grace
        #: the watches of the runners (an operation's while it runs) and of running queries
        self._running: set[CallWatch] = set()
        #: the locks of the keys shared by several load balancers
        self.key_locks = KeyedLocks()
        #: operations given up on because their backend call ignored cancellation
        self.abandoned = 0
        self._closed = False
        #: set when closing and an actor ends, so that the overdue watch ends without delay
        self._closing_progress = trio.Event()
        #: operating statuses last reported by collect_statistics: load balancer id -> its
        #: statuses, flat (kind, id, status, kind, id, status, ...), with the backend's
        #: strings (one tuple per load balancer, nothing per object)
        self._last_operating: dict[str, tuple[str, ...]] = {}
        if any(b <= a for a, b in zip(reassert_after, reassert_after[1:], strict=False)):
            raise ValueError(f"reassert_after must be strictly increasing, not {reassert_after}")
        self._reassert_after = tuple(reassert_after)
        #: load balancer id -> object id -> its entry waiting for re-assertion
        self._pending: dict[str, dict[str, _Pending]] = {}
        #: (due time, sequence number, entry); items of dropped entries are skipped when due
        self._due: list[tuple[float, int, _Pending]] = []
        self._sequence = itertools.count()
        #: the wait of :meth:`reassert_due` for the first entry due: an entry that becomes the
        #: first one moves its deadline (no wake-up, no scheduling round per operation)
        self._due_wait: trio.CancelScope | None = None
        #: created objects' entries sent again (Octavia's commit race), since start
        self.reassertions_sent = 0
        #: trio's clock, read directly on the hot path (what trio.current_time() reads)
        self._clock = trio.lowlevel.current_clock()
        #: scheduled mailboxes that no runner holds, in the order they got work
        self._ready: deque[_Mailbox] = deque()
        #: runner tasks alive
        self._runners = 0
        #: runners that will come back to ``_ready`` without waiting for anything: neither
        #: parked nor inside a suspended operation. ``0`` with work ready: one more is needed
        self._free = 0
        #: parked runners, the last parked woken first
        self._parked: list[trio.lowlevel.Task] = []

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
            if mailbox.closed:  # retired, not yet forgotten: a fresh actor takes it
                mailbox = self._spawn(op.lb_id)
            # before the handover: the idle sweep never closes a mailbox just used
            mailbox.last_used = self._clock.current_time()
            if not mailbox.waiting and mailbox.has_room():
                # hot path: room in the mailbox, no trip through the scheduler
                self._put(mailbox, op)
                return
            if await mailbox.wait_for_room(self._put, op):
                return
            # the actor retired while we waited: a fresh one takes the operation
            if self._closed:
                raise trio.ClosedResourceError("the actor system is closed")

    def actor_count(self) -> int:
        """How many actors are alive (load balancers used within ``idle_timeout``)."""
        return len(self._actors)

    def reassertions_pending(self) -> int:
        """How many created objects' entries wait for a re-assertion."""
        return sum(len(entries) for entries in self._pending.values())

    def adopt(self, lb_ids: Iterable[str]) -> None:
        """Count ``lb_ids`` as held here (their backend state survived a restart)."""
        for lb_id in lb_ids:
            self._owned.setdefault(sys.intern(lb_id), None)

    def key_of(self, lb_id: str) -> str | None:
        """The owner key of ``lb_id``'s last operation here (``op.owner_key``: its key, or
        else its id); ``None`` when none ran since this process started (or it was deleted)."""
        return self._owned.get(lb_id)

    def owner_key(self, lb_id: str) -> str | None:
        """The owner key of ``lb_id``: that of its last operation here, else what the
        backend knows from the id alone (``Backend.lb_affinity_key``); ``None``: unknown."""
        key = self._owned.get(lb_id)
        if key is not None:
            return key
        return self._backend.lb_affinity_key(lb_id)

    def resident_count(self) -> int:
        """How many load balancers have a live tree here (:meth:`known_lb_ids`, counted)."""
        return len(self._owned)

    def known_lb_ids(self) -> list[str]:
        """The load balancers that have a live tree here (an actor now or when next used)."""
        return list(self._owned)

    async def sweep_idle(self) -> None:
        """Retire idle actors every ``idle_timeout / 2`` seconds, until cancelled.

        An actor whose mailbox is empty, that runs nothing and got nothing for
        ``idle_timeout`` seconds ends; its load balancer's next operation starts a fresh
        one. Resident load balancers then cost their backend state, not a task and a mailbox
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
                if not mailbox.scheduled
                and mailbox.last_used < deadline
                and not mailbox.queue
                and not mailbox.waiting
            ]
            for mailbox in idle:
                del self._actors[mailbox.lb_id]
                mailbox.close()

    async def reassert_due(self) -> None:
        """Send the re-assertions that are due (module docstring), until cancelled.

        Entries of one load balancer due together leave as one :class:`Reassertion`.
        """
        if not self._reassert_after:
            return
        due = self._due
        while True:
            with trio.move_on_at(due[0][0] if due else math.inf) as wait:
                self._due_wait = wait
                try:
                    await trio.sleep_forever()
                finally:
                    self._due_wait = None
            now = trio.current_time()
            ready: dict[str, list[tuple[int, _Pending]]] = {}
            while due and due[0][0] <= now:
                _, token, pending = heapq.heappop(due)
                if pending.token == token:
                    ready.setdefault(pending.lb_id, []).append((token, pending))
            for lb_id, items in ready.items():
                # still there after the previous send's wait?
                items = [(t, p) for t, p in items if p.token == t]
                if not items:
                    continue
                now = trio.current_time()
                retry = self._not_before(lb_id, now)
                if retry > now:
                    for _, pending in items:
                        self._schedule(pending, retry)
                    continue
                entries: dict[str, list[StatusEntry]] = {}
                for _, pending in items:
                    entry = pending.entry
                    entries.setdefault(pending.key, []).append(
                        StatusEntry(
                            id=entry.id,
                            provisioning_status=entry.provisioning_status,
                            operating_status=entry.operating_status,
                        )
                    )
                    self._advance(pending, now)
                self.reassertions_sent += len(items)
                reassertion = Reassertion(lb_id=lb_id, status=StatusUpdate(**entries))
                log.debug("re-asserting created objects", lb_id=lb_id, count=len(items))
                try:
                    self._outcomes.send_nowait(reassertion)
                except trio.WouldBlock:
                    # waiting senders are served in order: an outcome of this load
                    # balancer sent from now on still comes after this
                    await self._outcomes.send(reassertion)

    async def watch_overdue(self) -> None:
        """Give up on every backend call still running ``cancel_grace`` seconds after its
        deadline (it ignored its cancellation; see the module docstring), until the system
        is closed and nothing runs any more."""
        period = min(1.0, max(self._cancel_grace / 2, 0.05))
        while not (self._closed and not self._runners and not self._running):
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
        self.abandoned += 1
        overdue = now - watch.deadline
        watch.deadline = math.inf  # given up on: never overdue again
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

    async def collect_statistics(
        self, *, only: Callable[[str], bool] | None = None
    ) -> tuple[list[ListenerStatistics], list[StatusUpdate]]:
        """Listener counters of every known load balancer, and the operating statuses that
        changed since the previous call (``{id, operating_status}`` entries, at most one
        :class:`StatusUpdate`). A load balancer whose backend read fails is skipped this
        round (logged) and keeps its previous operating statuses.

        ``only`` (cluster mode: the load balancers of the shards held now): the others are
        not read, and their operating statuses are forgotten, so a change of theirs is never
        reported here (their owner reports its own); should one be reported here again
        later, all of its statuses count as changed then.
        """
        listeners: list[ListenerStatistics] = []
        last = self._last_operating
        current: dict[str, tuple[str, ...]] = {}
        changed: dict[str, list[StatusEntry]] = {}
        lb_ids = self.known_lb_ids()
        if only is not None:
            lb_ids = [lb_id for lb_id in lb_ids if only(lb_id)]
        for reading in await self._backend.read_many(lb_ids):
            lb_id = reading.lb_id
            before = last.get(lb_id)
            if reading.error is not None:
                exc = reading.error
                log.warning(
                    "statistics read failed", lb_id=lb_id, error=f"{type(exc).__name__}: {exc}"
                )
                if before is not None:
                    current[lb_id] = before
                continue
            listeners.extend(reading.listeners)
            now = current[lb_id] = tuple(itertools.chain.from_iterable(reading.statuses))
            if now == before:
                continue
            previous = {} if before is None else {
                (before[i], before[i + 1]): before[i + 2] for i in range(0, len(before), 3)
            }
            for i in range(0, len(now), 3):
                kind, object_id, operating = now[i : i + 3]
                if previous.get((kind, object_id)) != operating:
                    changed.setdefault(PLURAL[kind], []).append(
                        StatusEntry(id=object_id, operating_status=operating)
                    )
                    if self._pending:  # a re-assertion carries the newest operating status
                        self._reported(lb_id, object_id, operating)
        self._last_operating = current
        return listeners, [StatusUpdate(**changed)] if changed else []

    # ------------------------------------------------------------------ internals

    def _spawn(self, lb_id: str) -> _Mailbox:
        mailbox = _Mailbox(sys.intern(lb_id), self._mailbox_size)
        self._actors[lb_id] = mailbox
        mailbox.log.debug("actor started")
        return mailbox

    def _put(self, mailbox: _Mailbox, op: Operation) -> None:
        """``op`` into ``mailbox`` (there is room); an idle mailbox becomes ready, and gets a
        runner if every runner is parked or waiting inside an operation."""
        mailbox.queue.append(op)
        if not mailbox.scheduled:
            mailbox.scheduled = True
            self._ready.append(mailbox)
            if not self._free:
                self._add_runner()

    def _add_runner(self) -> None:
        """One more runner for the ready queue: a parked one, else a new task."""
        self._free += 1
        if self._parked:
            trio.lowlevel.reschedule(self._parked.pop())
            return
        self._runners += 1
        self._nursery.start_soon(self._serve_runner, name="actor runner")

    def _close(self) -> None:
        self._closed = True
        for mailbox in self._actors.values():
            mailbox.close()
        while self._parked:  # nothing new will come: they end
            self._free += 1
            trio.lowlevel.reschedule(self._parked.pop())
        self._closing_progress.set()

    async def _step(self, operation: Coroutine[Any, Any, _T]) -> _T:
        """Await ``operation`` (an outcome sent into a full ``outcomes``); should it suspend,
        this runner is taken until it is over and the ready queue gets another runner. (An
        operation's own waits are reported by dispatch instead: ``CallWatch.on_wait``.)"""
        try:
            trap = operation.send(None)
        except StopIteration as stop:
            return cast(_T, stop.value)
        return await self._taken(operation, trap)

    @types.coroutine
    def _taken(self, operation: Coroutine[Any, Any, _T], trap: Any) -> Generator[Any, Any, _T]:
        """The rest of ``operation``, suspended at ``trap`` (:meth:`_step`)."""
        self._free -= 1
        if self._ready and not self._free:
            self._add_runner()
        try:
            return cast(_T, (yield from resume(operation, trap)))
        finally:
            self._free += 1

    async def _next_mailbox(self) -> _Mailbox | None:
        """The next ready mailbox, parking while there is none; ``None``: this runner ends
        (the system is closed, or enough runners are parked already)."""
        ready = self._ready
        while not ready:
            if self._closed or len(self._parked) >= SPARE_RUNNERS:
                return None
            task = trio.lowlevel.current_task()
            self._free -= 1
            self._parked.append(task)
            await trio.lowlevel.wait_task_rescheduled(self._abort_park(task))
        return ready.popleft()

    def _abort_park(self, task: trio.lowlevel.Task) -> Callable[[Any], trio.lowlevel.Abort]:
        def abort(_: Any) -> trio.lowlevel.Abort:
            self._parked.remove(task)
            self._free += 1
            return trio.lowlevel.Abort.SUCCEEDED

        return abort

    def _start(self, op: Operation, watch: CallWatch) -> Coroutine[Any, Any, Outcome]:
        """``op`` under ``watch``, not yet started (:func:`run_operation`)."""
        watch.op = op
        watch.abandoned = False
        key = op.key
        shared = bool(key) and key != op.lb_id
        watch.hold = functools.partial(self.key_locks.hold, key) if shared else None
        return run_operation(
            self._backend, op, parents_on_failure=self._parents_on_failure, watch=watch
        )

    def _escaped(self, op: Operation, exc: Exception, actor_log: Any) -> Outcome:
        """The outcome of ``op`` when even :func:`run_operation` raised (it never should:
        this is the last net, so that nothing escapes an actor)."""
        (actor_log or log).error("operation escaped", op_id=op.op_id, method=op.method, exc_info=exc)
        return Outcome(
            op_id=op.op_id,
            lb_id=op.lb_id,
            failure=Failure(
                exc_class=type(exc).__name__, module=type(exc).__module__, message=str(exc)
            ),
            reason=f"internal error: {type(exc).__name__}: {exc}",
        )

    async def _run_one(self, op: Operation, watch: CallWatch, actor_log: Any) -> Outcome:
        try:
            return await self._start(op, watch)
        except Exception as exc:
            return self._escaped(op, exc, actor_log)

    async def _run_query(self, op: Operation) -> None:
        watch = CallWatch()
        self._running.add(watch)
        try:
            outcome = await self._run_one(op, watch, None)
        finally:
            self._running.discard(watch)
        if not watch.abandoned:
            await self._outcomes.send(outcome)
        self._ended()

    async def _serve_runner(self) -> None:
        """Run ready mailboxes, each until it is empty, one operation at a time; end when
        none is ready and enough runners are parked, or the system is closed.

        A mailbox is held by one runner from the moment it leaves the ready queue until its
        queue is empty (or its actor retired): the operations of a load balancer never
        overlap and run in order, and its outcomes leave in that order. A runner stays with
        an operation that suspends (and so behind a call that ignores its cancellation,
        abandoned: the load balancer's later operations wait for it to return).
        """
        watch = CallWatch()
        waited = False

        def on_wait(waiting: bool) -> None:
            # the operation waits (dispatch.CallWatch.on_wait): this runner is taken until
            # it is over, and the ready queue needs another
            nonlocal waited
            if waiting:
                waited = True
                self._free -= 1
                if self._ready and not self._free:
                    self._add_runner()
            else:
                self._free += 1

        watch.on_wait = on_wait
        self._running.add(watch)
        outcomes = self._outcomes
        mailbox: _Mailbox | None = None
        ran = 0
        try:
            while True:
                # One cancel scope for the operations this runner runs, not one per backend
                # call: a call that suspends gets its deadline on it (dispatch.CallWatch.scope).
                # A deadline that expired leaves it cancelled: the outcome of that operation
                # is settled outside it, and the next operations run in a fresh one.
                carried: tuple[Operation, Outcome] | None = None
                with trio.CancelScope() as scope:
                    watch.scope = scope
                    while True:
                        if mailbox is None:
                            mailbox = await self._next_mailbox()
                            if mailbox is None:
                                break
                        queue = mailbox.queue
                        if not queue:
                            mailbox.scheduled = False  # idle: a rendezvous may hand over now
                            mailbox.pass_room_on()
                            mailbox = None
                            if ran >= RUN_BATCH:  # let the submitters and the rest run
                                ran = 0
                                await trio.lowlevel.checkpoint()
                            continue
                        op = queue.popleft()
                        if mailbox.waiting:
                            mailbox.pass_room_on()
                        mailbox.busy = True
                        self._owned[mailbox.lb_id] = _owner_key(op, mailbox.lb_id)
                        ran += 1
                        waited = False
                        try:  # _run_one, inline: the hot path
                            outcome = await self._start(op, watch)
                        except Exception as exc:
                            outcome = self._escaped(op, exc, mailbox.log)
                        if waited and scope.cancel_called:  # else no deadline could fire
                            carried = (op, outcome)
                            break
                        retired = self._settle(mailbox, op, outcome, watch)
                        if retired is not None:
                            try:  # _send, inline
                                outcomes.send_nowait(outcome)
                            except trio.WouldBlock:
                                await self._step(outcomes.send(outcome))
                            if retired:
                                mailbox = None
                watch.scope = None
                if carried is None:
                    return
                assert mailbox is not None
                retired = self._settle(mailbox, *carried, watch)
                if retired is not None:
                    await self._send(carried[1])
                    if retired:
                        mailbox = None
        finally:
            if mailbox is not None:  # cancelled with it: later submitters go to a fresh one
                mailbox.close()
                if self._actors.get(mailbox.lb_id) is mailbox:
                    del self._actors[mailbox.lb_id]
            self._running.discard(watch)
            self._free -= 1
            self._runners -= 1
            self._ended()

    def _settle(
        self, mailbox: _Mailbox, op: Operation, outcome: Outcome, watch: CallWatch
    ) -> bool | None:
        """After ``op`` ran, before its outcome goes into ``outcomes`` (:meth:`_send`, at
        once, so in order): the re-assertions it changes, the actor's retirement. Whether
        the actor retired; ``None``: the outcome went out already (abandoned), drop it."""
        lb_id = mailbox.lb_id
        mailbox.busy = False
        mailbox.last_used = self._clock.current_time()
        if watch.abandoned:
            # its outcome went out already: the late result of a call that ignored
            # its cancellation is dropped. The call is over, so the operations
            # queued behind it may run now without overlapping it.
            mailbox.log.warning(
                "abandoned backend call returned; its result is dropped",
                op_id=op.op_id,
                method=op.method,
            )
            return None
        if outcome.reason is None:
            mailbox.log.debug("operation done", op_id=op.op_id, method=op.method)
        deleted = op.method.startswith("loadbalancer_delete") and _deleted_lb(outcome, lb_id)
        if self._reassert_after:
            # before the outcome is in the channel: a re-assertion sent from now on
            # never holds an entry it supersedes, and comes after it (senders that
            # wait are served in order)
            self._track(op, outcome, deleted)
        retire = deleted and not mailbox.queue and not mailbox.waiting
        if retire:
            # before the outcome leaves, so whoever sees it sees the actor gone
            if self._actors.get(lb_id) is mailbox:
                del self._actors[lb_id]
            self._owned.pop(lb_id, None)
            mailbox.close()
            mailbox.scheduled = False
            mailbox.log.debug("actor retired", op_id=op.op_id, method=op.method)
        return retire

    async def _send(self, outcome: Outcome) -> None:
        outcomes = self._outcomes
        try:
            outcomes.send_nowait(outcome)
        except trio.WouldBlock:
            await self._step(outcomes.send(outcome))

    def _not_before(self, lb_id: str, now: float) -> float:
        """When a re-assertion of ``lb_id`` may be sent: ``now`` if it has no operation
        running, queued or waiting to be queued here (its last outcome is in ``outcomes``)
        and got or finished none for ``REASSERT_QUIET`` seconds; else when to look again."""
        mailbox = self._actors.get(lb_id)
        if mailbox is None:
            return now
        if mailbox.busy or mailbox.queue or mailbox.waiting:
            return now + REASSERT_BUSY_RETRY
        return max(now, mailbox.last_used + REASSERT_QUIET)

    def _schedule(self, pending: _Pending, when: float) -> None:
        token = next(self._sequence)
        pending.token = token
        heapq.heappush(self._due, (when, token, pending))
        wait = self._due_wait
        if wait is not None and when < wait.deadline:
            wait.deadline = when

    def _advance(self, pending: _Pending, now: float) -> None:
        """``pending`` was just sent: schedule its next re-assertion, or forget it."""
        delays = self._reassert_after
        pending.attempt += 1
        attempt = pending.attempt
        if attempt < len(delays):
            gap = delays[attempt] - delays[attempt - 1]
            self._schedule(pending, max(pending.created + delays[attempt], now + gap))
            return
        pending.token = -1
        entries = self._pending[pending.lb_id]
        del entries[pending.entry.id]
        if not entries:
            del self._pending[pending.lb_id]

    def _reported(self, lb_id: str, object_id: str, operating: str) -> None:
        """The backend reported a new operating status for ``object_id`` of ``lb_id``."""
        entries = self._pending.get(lb_id)
        pending = entries.get(object_id) if entries else None
        if pending is not None:
            pending.entry.operating_status = operating

    def _track(self, op: Operation, outcome: Outcome, deleted: bool) -> None:
        """What ``outcome`` changes in the re-assertions of ``op.lb_id`` (before it leaves)."""
        lb_id = op.lb_id
        entries = self._pending.get(lb_id)
        if deleted:
            if entries is not None:
                for pending in entries.values():
                    pending.token = -1
                del self._pending[lb_id]
            return
        status = outcome.status
        if status is None:
            return
        if entries:  # a newer status supersedes every entry it names
            for plural in _PLURAL_KEYS:
                named = getattr(status, plural)
                if named is msgspec.UNSET:
                    continue
                for entry in named:
                    superseded = entries.pop(entry.id, None)
                    if superseded is not None:
                        superseded.token = -1
            if not entries:
                del self._pending[lb_id]
        key = _CREATED_KEY.get(op.method)
        if key is None:
            return
        own = getattr(status, key)
        if own is msgspec.UNSET or not own:
            return
        now = trio.current_time()
        first = self._reassert_after[0]
        entries = self._pending.setdefault(lb_id, {})
        for entry in own:  # ACTIVE, or ERROR: a dropped ERROR leaves it just as stuck
            copy = StatusEntry(
                id=entry.id,
                provisioning_status=entry.provisioning_status,
                operating_status=entry.operating_status,
            )
            pending = _Pending(lb_id, key, copy, now)
            entries[entry.id] = pending
            self._schedule(pending, now + first)

    def _ended(self) -> None:
        if self._closed:
            self._closing_progress.set()


def _owner_key(op: Operation, lb_id: str) -> str:
    """``op.owner_key``, as a string kept per load balancer: ``lb_id`` itself (interned)
    when the key is the id, else the interned key (shared by the load balancers of a key)."""
    key = op.key
    return sys.intern(key) if key and key != lb_id else lb_id


@asynccontextmanager
async def open_actor_system(
    backend: Backend,
    outcomes: trio.MemorySendChannel[Outbound],
    *,
    mailbox_size: float = 64,
    parents_on_failure: ParentsOnFailure = "active",
    idle_timeout: float = 60.0,
    cancel_grace: float = 5.0,
    reassert_after: Sequence[float] = (),
) -> AsyncIterator[ActorSystem]:
    """An :class:`ActorSystem` running ``backend``; one outcome per operation to ``outcomes``,
    and re-assertions of created objects among them when ``reassert_after`` lists delays.

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
                reassert_after=reassert_after,
            )
            sweeper = trio.CancelScope()

            async def sweep() -> None:
                with sweeper:
                    async with trio.open_nursery() as sweeps:
                        sweeps.start_soon(system.sweep_idle)
                        sweeps.start_soon(system.reassert_due)

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
