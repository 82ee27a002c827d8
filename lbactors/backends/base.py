"""The backend protocol: what an actor calls to apply an Octavia operation somewhere.

One async method per object kind and action, named after the wire method
(``member_create(member)``, ``pool_update(old, new)``, ...), plus the read side used by the
statistics collector and the flavor / availability-zone queries.

Contract for every implementation:

- **Failure is an exception.** Any exception raised by a CRUD method marks the object ERROR
  (``status-semantics.md``); :class:`BackendError` is the one to raise on purpose.
- **Idempotence.** Operations are delivered at least once (a redelivery after a crash, a
  replay after a worker restart), so a create of an existing object converges it to the given
  state, an update of a missing object creates it, and a delete of a missing object succeeds.
- **One load balancer at a time.** Calls for one load balancer never overlap (its actor runs
  one operation at a time); calls for different load balancers do. Statistics and
  operating-status reads may run while an operation of the same load balancer is in flight.
- **Deadlines.** Every call runs under a deadline (:class:`Deadlines`, one set per backend,
  from its options): a create / update / delete gets ``operation_deadline``, each step of a
  pool delete or cascade delete ``plan_step_deadline`` (a big tree gets more in all), a
  flavor / availability-zone query ``query_deadline``. On expiry the call is cancelled and the
  object goes ERROR (its parents ACTIVE), exactly as if the call had raised.
- **Cancellation.** A cancelled call (a deadline, a shutdown) must return within
  ``daemon.cancel_grace`` seconds and leave nothing half-locked. Do all waiting through trio:
  subprocesses with ``trio.run_process`` (killed when cancelled), sockets with trio's streams,
  blocking calls with ``trio.to_thread.run_sync(..., abandon_on_cancel=True)``, and only for
  work whose late completion is harmless or is waited for by the next call of the same load
  balancer (the haproxy backend does this for its file writes). A call that still runs
  ``cancel_grace`` after its cancellation has ignored it: the actor reports the object ERROR
  and the worker process is replaced (the call dies with it, the worker's other operations
  are replayed), so that it can neither keep its load balancer waiting nor overlap that load
  balancer's next operation.

Layer: model and trio only (``DESIGN.md``); never AMQP, never the supervisor.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec
import trio

from lbactors.messages import ListenerStatistics, Request
from lbactors.model import (
    Certificate,
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    Pool,
)

__all__ = ["Backend", "BackendError", "BlockingCalls", "Deadlines", "OperatingStatus"]

_T = TypeVar("_T")

#: ``(kind, object id, operating status)``, e.g. ``("member", "c3d4...", "ERROR")``
OperatingStatus = tuple[str, str, str]


def check_flavor_integers(
    metadata: Mapping[str, Any], supported: Mapping[str, str], *, timeout_max: int | None = None
) -> str | None:
    """The flavor rule the built-in backends share: only ``supported`` keys, integer values,
    ``max_connections`` positive or -1, every other key (a timeout in ms) from 0 to
    ``timeout_max`` (no upper bound when ``None``). ``None`` when valid, else the reason,
    naming the bad key."""
    for key, value in metadata.items():
        if key not in supported:
            return f"unsupported flavor metadata key {key!r}; supported: {', '.join(sorted(supported))}"
        if not isinstance(value, int) or isinstance(value, bool):
            return f"flavor metadata key {key!r} must be an integer, not {value!r}"
        if key == "max_connections":
            if not (value > 0 or value == -1):
                return f"flavor metadata key 'max_connections' must be positive or -1, not {value}"
        elif timeout_max is None:
            if value < 0:
                return f"flavor metadata key {key!r} must be >= 0, not {value}"
        elif not 0 <= value <= timeout_max:
            return f"flavor metadata key {key!r} must be in 0..{timeout_max}, not {value}"
    return None


@dataclass(slots=True)
class Reading:
    """One load balancer's part of a statistics round (see :meth:`Backend.read_many`)."""

    lb_id: str
    listeners: list[ListenerStatistics] = field(default_factory=list)
    statuses: list[OperatingStatus] = field(default_factory=list)
    error: Exception | None = None


Seconds = Annotated[float, msgspec.Meta(gt=0)]


class Deadlines(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How long a backend call may take, in seconds, before it is cancelled (the object then
    goes ERROR). Every built-in backend's options extend this, with defaults of its own, so
    the keys are set per backend: ``[backend.haproxy] operation_deadline = 120``."""

    #: a create, update or delete (one backend call)
    operation_deadline: Seconds = 60.0
    #: each step of a pool delete or cascade delete (N objects: up to N times this in all)
    plan_step_deadline: Seconds = 30.0
    #: a flavor or availability-zone query
    query_deadline: Seconds = 10.0


class BlockingCalls:
    """Blocking work (file writes, a blocking client library) in threads that a cancellation
    abandons, run one at a time per key (a load balancer id) in call order.

    A cancelled call returns at once; its thread finishes on its own, and the next call with
    the same key waits for it first, so an abandoned write can never land after a later one
    (the next call is cancellable while it waits, so it is bounded by its own deadline). A
    call cancelled before its thread began never runs its function.
    """

    def __init__(self) -> None:
        #: key -> set once the latest thread of that key has finished (or never started)
        self._last: dict[str, trio.Event] = {}

    def busy(self, key: str) -> bool:
        """Whether a thread of ``key`` still runs (an abandoned one, say)."""
        last = self._last.get(key)
        return last is not None and not last.is_set()

    async def run(self, key: str, fn: Callable[..., _T], *args: Any) -> _T:
        previous = self._last.get(key)
        if previous is not None:
            await previous.wait()
        done = trio.Event()
        self._last[key] = done
        token = trio.lowlevel.current_trio_token()
        lock = threading.Lock()
        state = ["pending"]

        def finished() -> None:
            done.set()
            if self._last.get(key) is done:
                del self._last[key]

        def call() -> _T:
            with lock:
                if state[0] == "abandoned":
                    raise RuntimeError("abandoned before it began")  # nobody waits for it
                state[0] = "running"
            try:
                return fn(*args)
            finally:
                try:
                    token.run_sync_soon(finished)
                except trio.RunFinishedError:
                    pass

        try:
            return await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        finally:
            with lock:
                never_ran = state[0] == "pending"
                state[0] = "abandoned" if never_ran else state[0]
            if never_ran:
                finished()


class BackendError(Exception):
    """A backend refused or failed an operation; the object goes to ERROR."""


class Backend(abc.ABC):
    """Base class of every backend; see the module docstring for the contract."""

    #: the name :func:`lbactors.backends.load_backend` knows it by
    name: str = ""
    #: how long each call may take (a backend sets its own from its options)
    deadlines: Deadlines = Deadlines()
    #: whether the backend's state lives outside this host, so another daemon can take over
    #: its load balancers (cluster mode refuses a backend that says False; docs/cluster.md §8)
    failover: ClassVar[bool] = True

    # ------------------------------------------------------------------ load balancer

    @abc.abstractmethod
    async def loadbalancer_create(self, lb: LoadBalancer) -> None: ...

    @abc.abstractmethod
    async def loadbalancer_update(self, old: LoadBalancer, new: LoadBalancer) -> None: ...

    @abc.abstractmethod
    async def loadbalancer_delete(self, lb: LoadBalancer) -> None:
        """Delete the load balancer itself (a cascade deletes its children first, one call each)."""

    # ------------------------------------------------------------------ listener

    @abc.abstractmethod
    async def listener_create(self, listener: Listener, cert: Certificate | None) -> None: ...

    @abc.abstractmethod
    async def listener_update(
        self, old: Listener, new: Listener, cert: Certificate | None
    ) -> None: ...

    @abc.abstractmethod
    async def listener_delete(self, listener: Listener) -> None: ...

    # ------------------------------------------------------------------ pool

    @abc.abstractmethod
    async def pool_create(self, pool: Pool) -> None: ...

    @abc.abstractmethod
    async def pool_update(self, old: Pool, new: Pool) -> None: ...

    @abc.abstractmethod
    async def pool_delete(self, pool: Pool) -> None:
        """Delete the pool itself; its health monitor and members were deleted just before."""

    # ------------------------------------------------------------------ member

    @abc.abstractmethod
    async def member_create(self, member: Member) -> None: ...

    @abc.abstractmethod
    async def member_update(self, old: Member, new: Member) -> None: ...

    @abc.abstractmethod
    async def member_delete(self, member: Member) -> None: ...

    # ------------------------------------------------------------------ health monitor

    @abc.abstractmethod
    async def healthmonitor_create(self, healthmonitor: HealthMonitor) -> None: ...

    @abc.abstractmethod
    async def healthmonitor_update(self, old: HealthMonitor, new: HealthMonitor) -> None: ...

    @abc.abstractmethod
    async def healthmonitor_delete(self, healthmonitor: HealthMonitor) -> None: ...

    # ------------------------------------------------------------------ L7 policy

    @abc.abstractmethod
    async def l7policy_create(self, l7policy: L7Policy) -> None: ...

    @abc.abstractmethod
    async def l7policy_update(self, old: L7Policy, new: L7Policy) -> None: ...

    @abc.abstractmethod
    async def l7policy_delete(self, l7policy: L7Policy) -> None: ...

    # ------------------------------------------------------------------ L7 rule

    @abc.abstractmethod
    async def l7rule_create(self, l7rule: L7Rule) -> None: ...

    @abc.abstractmethod
    async def l7rule_update(self, old: L7Rule, new: L7Rule) -> None: ...

    @abc.abstractmethod
    async def l7rule_delete(self, l7rule: L7Rule) -> None: ...

    # ------------------------------------------------------------------ read side

    @abc.abstractmethod
    async def listener_statistics(self, lb_id: str) -> list[ListenerStatistics]:
        """Current counters of every listener of ``lb_id`` (totals are monotonic)."""

    @abc.abstractmethod
    async def operating_statuses(self, lb_id: str) -> list[OperatingStatus]:
        """``(kind, id, operating_status)`` of every object of ``lb_id`` the backend knows."""

    async def read_many(self, lb_ids: Sequence[str]) -> list[Reading]:
        """Statistics and operating statuses of many load balancers (one statistics round).

        A load balancer whose read fails gets a :class:`Reading` with ``error`` set; the
        others are unaffected. The default calls the two per-load-balancer methods; a backend
        that can read in bulk overrides it (it must still checkpoint now and then, so that
        operations keep running during a round).
        """
        readings = []
        for lb_id in lb_ids:
            try:
                listeners = await self.listener_statistics(lb_id)
                statuses = await self.operating_statuses(lb_id)
            except Exception as exc:
                readings.append(Reading(lb_id, [], [], exc))
            else:
                readings.append(Reading(lb_id, listeners, statuses))
        return readings

    # ------------------------------------------------------------------ flavors and AZs

    @abc.abstractmethod
    async def flavor_metadata(self) -> dict[str, str]:
        """Supported flavor metadata: key -> description."""

    @abc.abstractmethod
    async def validate_flavor(self, metadata: dict[str, Any]) -> str | None:
        """``None`` when ``metadata`` is a valid flavor, else the reason, naming the bad key."""

    @abc.abstractmethod
    async def availability_zone_metadata(self) -> dict[str, str]:
        """Supported availability-zone metadata: key -> description."""

    @abc.abstractmethod
    async def validate_availability_zone(self, metadata: dict[str, Any]) -> str | None:
        """As :meth:`validate_flavor`, for availability-zone metadata."""

    # ------------------------------------------------------------------ affinity, lifetime

    def affinity_key(self, request: Request) -> str | None:
        """The key operations that share a backend object are serialized by.

        ``None`` (the default) means the load balancer id: only one load balancer's
        operations are serialized. A backend that shares objects between load balancers
        (DESIGN.md, "Affinity beyond one load balancer") returns e.g. the router id.

        The contract (docs/cluster.md §8): pure, cheap and synchronous (no I/O); computed in
        the supervisor process on an instance built with ``from_options`` and never started
        (so a constructor does no I/O either); and the same value for every operation of one
        load balancer for its whole life, since the key picks the worker and the cluster
        shard that own it. A key that could change (a router found by a lookup, say) breaks
        ownership: such a backend returns ``None``. A backend that overrides this should also
        override :meth:`lb_affinity_key`.
        """
        return None

    def lb_affinity_key(self, lb_id: str) -> str | None:
        """The owner key of a load balancer known only by its id (a resident one that no
        operation named yet): the value :meth:`affinity_key` gives (or its id when that is
        ``None``) for its operations. ``None``: unknown (it is then never reported as owned).

        The default: ``lb_id`` when the class does not override :meth:`affinity_key`, else
        ``None``. The contract of :meth:`affinity_key` applies.
        """
        if type(self).affinity_key is Backend.affinity_key:
            return lb_id
        return None

    async def resident_lb_ids(self) -> list[str]:
        """Load balancers the backend already holds when it starts (e.g. HAProxy processes
        it adopted after a daemon restart). They count as owned by the actors from the start:
        statistics and out-of-sync repair include them before their next operation. The
        default (state kept in memory only) holds none."""
        return []

    async def aclose(self) -> None:  # noqa: B027 - a no-op default, not abstract
        """Release connections and files; the default holds none."""
