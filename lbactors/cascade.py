"""Delete plans: the order in which a cascade or a pool delete removes the objects of a tree.

``status-semantics.md`` ("Cascade plan") fixes the order:

- for each listener in payload order: its L7 policies in payload order, each policy's rules
  first and then the policy; then the listener;
- then for each pool (``lb.pools`` in payload order, then every listener's ``default_pool``
  not listed already): its health monitor, its members in payload order, then the pool;
- then the load balancer itself.

Each object is deleted once: objects are identified by ``(kind, id)``. When the same object
appears more than once in the payload (typically a pool that is both in ``lb.pools`` and a
listener's ``default_pool``, the latter carrying only ``pool_id``), it takes the place of its
first appearance, and the children of every copy are gathered under it, so that nothing
nested in a later copy is forgotten and children still come before their parent.

Objects without any id (neither ``id`` nor ``<kind>_id``) cannot be addressed, neither on the
backend nor in a status update: they are left out of the plan. Their children are still
visited, since those may carry ids of their own. The root object (the load balancer of a
cascade, the pool of a pool delete) must have an id: :class:`ValueError` otherwise
(``messages.decode_request`` already guarantees it).

Plans are pure functions of the payload: the same payload always gives the same steps.

Pure: msgspec only; no I/O, no trio, no logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import msgspec

from lbactors.model import (
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    OctaviaObject,
    Pool,
)

__all__ = ["Step", "cascade_plan", "pool_delete_plan"]


class Step(msgspec.Struct, frozen=True):
    """One delete of a plan: which object, and the object itself for the backend call."""

    kind: str
    """``"l7rule"``, ``"l7policy"``, ``"listener"``, ``"healthmonitor"``, ``"member"``,
    ``"pool"`` or ``"loadbalancer"``."""
    id: str
    obj: OctaviaObject


_T = TypeVar("_T", Listener, L7Policy, L7Rule, Pool, Member, HealthMonitor)


def _grouped(objects: Iterable[_T]) -> list[list[_T]]:
    """Group objects by id, in order of first appearance; id-less objects stay alone."""
    groups: list[list[_T]] = []
    by_id: dict[str, list[_T]] = {}
    for obj in objects:
        if obj.id is None:
            groups.append([obj])
            continue
        group = by_id.get(obj.id)
        if group is None:
            group = by_id[obj.id] = []
            groups.append(group)
        group.append(obj)
    return groups


class _Planner:
    """Collects steps, each ``(kind, id)`` once."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, kind: str, obj: OctaviaObject) -> None:
        if obj.id is None:
            return
        key = (kind, obj.id)
        if key in self._seen:
            return
        self._seen.add(key)
        self.steps.append(Step(kind=kind, id=obj.id, obj=obj))

    def rules_then_policy(self, policies: Sequence[L7Policy]) -> None:
        for rules in _grouped(r for p in policies for r in p.rules or ()):
            self.add("l7rule", rules[0])
        self.add("l7policy", policies[0])

    def policies_then_listener(self, listeners: Sequence[Listener]) -> None:
        for policies in _grouped(p for li in listeners for p in li.l7policies or ()):
            self.rules_then_policy(policies)
        self.add("listener", listeners[0])

    def pool_and_children(self, pools: Sequence[Pool]) -> None:
        for monitors in _grouped(p.healthmonitor for p in pools if p.healthmonitor is not None):
            self.add("healthmonitor", monitors[0])
        for members in _grouped(m for p in pools for m in p.members or ()):
            self.add("member", members[0])
        self.add("pool", pools[0])


def cascade_plan(lb: LoadBalancer) -> list[Step]:
    """The steps of ``loadbalancer_delete(cascade=True)`` for the tree in ``lb``, LB last."""
    if lb.id is None:
        raise ValueError("cascade_plan: the load balancer has no id")
    planner = _Planner()
    listeners = lb.listeners or []
    for copies in _grouped(listeners):
        planner.policies_then_listener(copies)
    pools: list[Pool] = list(lb.pools or [])
    pools.extend(li.default_pool for li in listeners if li.default_pool is not None)
    for pool_copies in _grouped(pools):
        planner.pool_and_children(pool_copies)
    planner.add("loadbalancer", lb)
    return planner.steps


def pool_delete_plan(pool: Pool) -> list[Step]:
    """The steps of ``pool_delete``: health monitor, members in payload order, the pool last."""
    if pool.id is None:
        raise ValueError("pool_delete_plan: the pool has no id")
    planner = _Planner()
    planner.pool_and_children([pool])
    return planner.steps
