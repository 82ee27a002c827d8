"""The ``update_loadbalancer_status`` payload of every operation (``status-semantics.md``).

Pure functions from an operation and its outcome to a :class:`~lbactors.messages.StatusUpdate`:

- :func:`parents_of`: the parent ids of an object, found in its payload ("Parents" table);
- :func:`operation_status`: a create / update / delete, success or failure;
- :func:`pool_delete_status`: ``pool_delete``, which first deletes the pool's health monitor
  and members (:func:`lbactors.cascade.pool_delete_plan`);
- :func:`cascade_status`: ``loadbalancer_delete(cascade=True)``
  (:func:`lbactors.cascade.cascade_plan`);
- :func:`object_error_status`: bad input where only the object itself can be named.

Rules kept everywhere: the object's own entry is written first and never overwritten by a
parent's; an id is listed at most once per kind; ``DELETED`` only for an object whose delete
succeeded. Parents are ``ACTIVE`` / ``ONLINE`` after a success; after a failure they are
``ACTIVE`` without ``operating_status`` (Octavia leaves it unchanged), or, with
``parents_on_failure="error"``, ``ERROR`` / ``ERROR`` exactly like the seed.

Pure: msgspec only; no I/O, no trio, no logging (the caller logs a missing load balancer,
which :func:`parents_of` reports as ``loadbalancer_id=None``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from lbactors.cascade import Step, cascade_plan, pool_delete_plan
from lbactors.messages import Request, StatusEntry, StatusUpdate
from lbactors.model import (
    CLASS_OF_KIND,
    PLURAL,
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    OctaviaObject,
    Pool,
)

__all__ = [
    "Parents",
    "ParentsOnFailure",
    "cascade_status",
    "object_error_status",
    "operation_status",
    "parents_of",
    "pool_delete_status",
    "status_to_builtins",
]

ParentsOnFailure = Literal["active", "error"]

ACTIVE = "ACTIVE"
DELETED = "DELETED"
ERROR = "ERROR"
ONLINE = "ONLINE"

_Unset = msgspec.UnsetType

# --------------------------------------------------------------------------- parents


class Parents(msgspec.Struct, frozen=True):
    """The parent ids of one object; ``None`` / ``()`` when the payload does not name them."""

    loadbalancer_id: str | None
    listener_ids: tuple[str, ...]
    pool_id: str | None
    l7policy_id: str | None


_NO_PARENTS = Parents(loadbalancer_id=None, listener_ids=(), pool_id=None, l7policy_id=None)


def _first(*candidates: str | None) -> str | None:
    for candidate in candidates:
        if candidate:
            return candidate
    return None


def _all(*candidates: str | None) -> tuple[str, ...]:
    found: list[str] = []
    for candidate in candidates:
        if candidate and candidate not in found:
            found.append(candidate)
    return tuple(found)


def _pool_listener_ids(pool: Pool | None) -> tuple[str, ...]:
    if pool is None:
        return ()
    return _all(
        pool.listener_id,
        pool.listener.id if pool.listener else None,
        *(li.id for li in pool.listeners or ()),
    )


def _listener_parents(obj: Listener) -> Parents:
    lb = obj.loadbalancer
    return Parents(
        loadbalancer_id=_first(obj.loadbalancer_id, lb.id if lb else None),
        listener_ids=(),
        pool_id=None,
        l7policy_id=None,
    )


def _pool_parents(obj: Pool) -> Parents:
    return Parents(
        loadbalancer_id=_first(
            obj.loadbalancer_id,
            obj.loadbalancer.id if obj.loadbalancer else None,
            obj.listener.loadbalancer_id if obj.listener else None,
        ),
        listener_ids=_pool_listener_ids(obj),
        pool_id=None,
        l7policy_id=None,
    )


def _pool_child_parents(obj: Member | HealthMonitor) -> Parents:
    pool = obj.pool
    return Parents(
        loadbalancer_id=_first(
            obj.loadbalancer_id,
            obj.loadbalancer.id if obj.loadbalancer else None,
            pool.loadbalancer_id if pool else None,
            pool.loadbalancer.id if pool and pool.loadbalancer else None,
        ),
        listener_ids=_pool_listener_ids(pool),
        pool_id=_first(obj.pool_id, pool.id if pool else None),
        l7policy_id=None,
    )


def _l7policy_parents(obj: L7Policy) -> Parents:
    listener = obj.listener
    listener_id = _first(obj.listener_id, listener.id if listener else None)
    return Parents(
        loadbalancer_id=_first(
            listener.loadbalancer_id if listener else None,
            listener.loadbalancer.id if listener and listener.loadbalancer else None,
        ),
        listener_ids=_all(listener_id),
        pool_id=None,
        l7policy_id=None,
    )


def _l7rule_parents(obj: L7Rule) -> Parents:
    policy = obj.policy
    listener = policy.listener if policy else None
    listener_id = _first(policy.listener_id if policy else None, listener.id if listener else None)
    return Parents(
        loadbalancer_id=listener.loadbalancer_id if listener else None,
        listener_ids=_all(listener_id),
        pool_id=None,
        l7policy_id=_first(obj.l7policy_id, policy.id if policy else None),
    )


#: the "Parents" table of status-semantics.md: class -> where its parents are, in order of
#: preference (looked up by exact type: no walk of ``isinstance`` tests per object)
_PARENTS_IN: dict[type, Callable[[Any], Parents]] = {
    LoadBalancer: lambda _: _NO_PARENTS,
    Listener: _listener_parents,
    Pool: _pool_parents,
    Member: _pool_child_parents,
    HealthMonitor: _pool_child_parents,
    L7Policy: _l7policy_parents,
    L7Rule: _l7rule_parents,
}


def _parents_in(obj: OctaviaObject) -> Parents:
    find = _PARENTS_IN.get(type(obj))
    if find is None:  # a subclass
        find = next((f for cls, f in _PARENTS_IN.items() if isinstance(obj, cls)), None)
        if find is None:
            raise TypeError(f"not an Octavia object: {type(obj).__name__}")
    return find(obj)


def _check_kind(kind: str, obj: object) -> None:
    cls = CLASS_OF_KIND.get(kind)
    if type(obj) is cls:  # the common case, without isinstance's walk
        return
    if cls is None:
        raise ValueError(f"unknown object kind {kind!r}")
    if not isinstance(obj, cls):
        raise TypeError(f"a {kind} must be a {cls.__name__}, not {type(obj).__name__}")


def parents_of(kind: str, obj: OctaviaObject, old: OctaviaObject | None = None) -> Parents:
    """The parents of ``obj`` (a ``kind``), found in its payload as status-semantics.md lists.

    For an update ``obj`` is the new object and ``old`` the old one: every parent id the new
    object lacks is taken from the old one.
    """
    _check_kind(kind, obj)
    found = _parents_in(obj)
    if old is None:
        return found
    _check_kind(kind, old)
    before = _parents_in(old)
    return Parents(
        loadbalancer_id=found.loadbalancer_id or before.loadbalancer_id,
        listener_ids=found.listener_ids or before.listener_ids,
        pool_id=found.pool_id or before.pool_id,
        l7policy_id=found.l7policy_id or before.l7policy_id,
    )


# --------------------------------------------------------------------------- building


class _Entries:
    """Status entries by plural key; the first entry written for a ``(kind, id)`` wins."""

    def __init__(self) -> None:
        self._lists: dict[str, list[StatusEntry]] = {}
        self._seen: set[tuple[str, str]] = set()

    def add(
        self,
        kind: str,
        object_id: str,
        provisioning: str,
        operating: str | _Unset = msgspec.UNSET,
    ) -> None:
        key = (kind, object_id)
        if key in self._seen:
            return
        self._seen.add(key)
        entry = StatusEntry(
            id=object_id, provisioning_status=provisioning, operating_status=operating
        )
        self._lists.setdefault(PLURAL[kind], []).append(entry)

    def add_parents(self, parents: Parents, provisioning: str, operating: str | _Unset) -> None:
        if parents.loadbalancer_id:
            self.add("loadbalancer", parents.loadbalancer_id, provisioning, operating)
        for listener_id in parents.listener_ids:
            self.add("listener", listener_id, provisioning, operating)
        if parents.pool_id:
            self.add("pool", parents.pool_id, provisioning, operating)
        if parents.l7policy_id:
            self.add("l7policy", parents.l7policy_id, provisioning, operating)

    def build(self, *, all_keys: bool = False) -> StatusUpdate:
        lists: dict[str, Any] = dict(self._lists)
        if all_keys:
            for plural in PLURAL.values():
                lists.setdefault(plural, [])
        return StatusUpdate(**lists)


def _parent_status(success: bool, parents_on_failure: ParentsOnFailure) -> tuple[str, str | _Unset]:
    if parents_on_failure not in ("active", "error"):
        raise ValueError(
            f"parents_on_failure must be 'active' or 'error', not {parents_on_failure!r}"
        )
    if success:
        return ACTIVE, ONLINE
    if parents_on_failure == "error":
        return ERROR, ERROR
    return ACTIVE, msgspec.UNSET


def _check_progress(plan: list[Step], completed: int, failed: bool) -> None:
    if not 0 <= completed <= len(plan):
        raise ValueError(f"completed={completed} is outside a plan of {len(plan)} steps")
    if failed and completed == len(plan):
        raise ValueError("failed=True needs the failed step: completed must be < len(plan)")
    if not failed and completed != len(plan):
        raise ValueError(f"success means every step completed: {completed} of {len(plan)}")


def _own_id(kind: str, obj: OctaviaObject) -> str:
    if not obj.id:
        raise ValueError(f"the {kind} has no id")
    return obj.id


# --------------------------------------------------------------------------- results


def operation_status(
    request: Request,
    *,
    success: bool,
    parents_on_failure: ParentsOnFailure = "active",
) -> StatusUpdate:
    """The status cast after a create / update / delete of ``request.kind``.

    Object: success ``ACTIVE`` / ``ONLINE`` (delete: ``DELETED`` / ``ONLINE``), failure
    ``ERROR`` / ``ERROR``. Parents (:func:`parents_of`): see the module docstring.

    Two deletes involve more than one object. On success they give the complete result:
    ``pool_delete`` lists the pool's health monitor and members ``DELETED`` too (as
    :func:`pool_delete_status`), and a cascade ``loadbalancer_delete`` lists the whole tree
    with all seven keys (as :func:`cascade_status`). On failure, without knowing which step
    failed, only the object (and, for a pool, its parents) is reported; use
    :func:`pool_delete_status` / :func:`cascade_status` to report the steps.

    Raises :class:`ValueError` for a query (``request.kind is None``) or an object without id.
    """
    kind = request.kind
    if kind is None:
        raise ValueError(f"{request.method} is a query: it has no status")
    obj = request.obj
    if obj is None or not obj.id:
        raise ValueError(f"{request.method}: the {kind} has no id")
    own_id = obj.id
    parent_prov, parent_oper = _parent_status(success, parents_on_failure)
    deleting = request.action == "delete"

    if deleting and success and isinstance(obj, LoadBalancer) and request.cascade:
        plan = cascade_plan(obj)
        return cascade_status(obj, plan, completed=len(plan), failed=False)
    if deleting and success and isinstance(obj, Pool):
        plan = pool_delete_plan(obj)
        return pool_delete_status(
            obj, plan, completed=len(plan), failed=False, parents_on_failure=parents_on_failure
        )

    if success:
        own = StatusEntry(
            id=own_id, provisioning_status=DELETED if deleting else ACTIVE, operating_status=ONLINE
        )
    else:
        own = StatusEntry(id=own_id, provisioning_status=ERROR, operating_status=ERROR)
    parents = parents_of(kind, obj, request.old)

    def parent(parent_id: str) -> StatusEntry:
        return StatusEntry(
            id=parent_id, provisioning_status=parent_prov, operating_status=parent_oper
        )

    # Built directly (this is every operation's status): no parent is of the object's own
    # kind (the "Parents" table) and the listener ids are distinct, so no id repeats.
    status = StatusUpdate()
    setattr(status, PLURAL[kind], [own])
    if parents.loadbalancer_id:
        status.loadbalancers = [parent(parents.loadbalancer_id)]
    if parents.listener_ids:
        status.listeners = [parent(listener_id) for listener_id in parents.listener_ids]
    if parents.pool_id:
        status.pools = [parent(parents.pool_id)]
    if parents.l7policy_id:
        status.l7policies = [parent(parents.l7policy_id)]
    return status


def pool_delete_status(
    pool: Pool,
    plan: list[Step],
    *,
    completed: int,
    failed: bool,
    parents_on_failure: ParentsOnFailure = "active",
) -> StatusUpdate:
    """The status cast of ``pool_delete`` run as ``plan`` (:func:`~lbactors.cascade.pool_delete_plan`).

    The first ``completed`` steps succeeded (``DELETED`` / ``ONLINE``); if ``failed``,
    ``plan[completed]`` failed (``ERROR`` / ``ERROR``), the pool is ``ERROR`` / ``ERROR``
    and the steps after it are not listed. On success every step is ``DELETED`` / ``ONLINE``.
    Parents as for any operation.
    """
    _check_progress(plan, completed, failed)
    pool_id = _own_id("pool", pool)
    parent_prov, parent_oper = _parent_status(not failed, parents_on_failure)
    entries = _Entries()
    if failed:
        entries.add("pool", pool_id, ERROR, ERROR)
    for step in plan[:completed]:
        entries.add(step.kind, step.id, DELETED, ONLINE)
    if failed:
        step = plan[completed]
        entries.add(step.kind, step.id, ERROR, ERROR)
    else:
        entries.add("pool", pool_id, DELETED, ONLINE)
    entries.add_parents(parents_of("pool", pool), parent_prov, parent_oper)
    return entries.build()


def cascade_status(
    lb: LoadBalancer, plan: list[Step], *, completed: int, failed: bool
) -> StatusUpdate:
    """The status cast of ``loadbalancer_delete(cascade=True)`` run as ``plan``.

    ``plan`` is :func:`~lbactors.cascade.cascade_plan` of ``lb``; the first ``completed``
    steps succeeded. Success: every object ``DELETED`` / ``ONLINE`` and all seven keys present
    (lists possibly empty). Failure of ``plan[completed]``: the load balancer ``ERROR`` /
    ``ERROR``, the steps before ``DELETED`` / ``ONLINE``, the failed object ``ERROR`` /
    ``ERROR``, the objects not reached not listed (nor their empty keys).
    """
    _check_progress(plan, completed, failed)
    lb_id = _own_id("loadbalancer", lb)
    entries = _Entries()
    if failed:
        entries.add("loadbalancer", lb_id, ERROR, ERROR)
    for step in plan[:completed]:
        entries.add(step.kind, step.id, DELETED, ONLINE)
    if failed:
        step = plan[completed]
        entries.add(step.kind, step.id, ERROR, ERROR)
        return entries.build()
    entries.add("loadbalancer", lb_id, DELETED, ONLINE)
    return entries.build(all_keys=True)


def object_error_status(kind: str, object_id: str) -> StatusUpdate:
    """Only the named object, ``ERROR`` / ``ERROR`` (bad input naming nothing else)."""
    if kind not in PLURAL:
        raise ValueError(f"unknown object kind {kind!r}")
    entries = _Entries()
    entries.add(kind, object_id, ERROR, ERROR)
    return entries.build()


def status_to_builtins(update: StatusUpdate) -> dict[str, Any]:
    """The status as plain dicts and lists, as sent on the wire (absent keys left out)."""
    result: dict[str, Any] = msgspec.to_builtins(update)
    return result
