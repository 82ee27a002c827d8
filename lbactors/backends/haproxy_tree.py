"""The haproxy backend's subtree bookkeeping: how one operation changes a load balancer's tree.

A :class:`~lbactors.backends.haproxy_config.LoadBalancerTree` holds one load balancer and its
objects by id, each without its nested payloads and with the ids of its parents filled in.
The backend keeps an owner index, ``(kind, id) -> load balancer id``, to find the tree an
operation belongs to when its payload does not name the load balancer.

- :func:`find_lb_id`: the load balancer an object belongs to (payload, then the index);
- :func:`nested_lb`: the load balancer a payload carries, for one the backend never saw;
- :func:`new_tree`: the tree of a new load balancer;
- :func:`with_object`: the tree after a create or an update;
- :func:`without`: the tree after a delete, with what cannot live without the object
  (as Octavia deletes);
- :func:`owners`, :func:`owners_after_removal`: the owner index entries of a tree.

Pure: msgspec and the model only; no I/O, no trio, no logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from lbactors.backends.haproxy_config import LoadBalancerTree
from lbactors.model import (
    NESTED_FIELDS,
    PLURAL,
    Listener,
    LoadBalancer,
    OctaviaObject,
)
from lbactors.status import parents_of

__all__ = [
    "TREE_FIELD",
    "Owners",
    "find_lb_id",
    "nested_lb",
    "new_tree",
    "own_state",
    "owners",
    "owners_after_removal",
    "with_object",
    "without",
]

#: ``(kind, id) -> load balancer id``: which tree holds an object
Owners = Mapping[tuple[str, str], str]

#: kind -> the field of the load balancer tree that holds its objects
TREE_FIELD = {kind: field for kind, field in PLURAL.items() if kind != "loadbalancer"}


def own_state(kind: str, obj: Any, old: Any) -> Any:
    """``obj`` without nested payloads, with the ids of its parents filled in."""
    parents = parents_of(kind, obj, old)
    changes: dict[str, Any] = dict.fromkeys(NESTED_FIELDS[type(obj)])
    if kind in ("member", "healthmonitor"):
        changes["pool_id"] = obj.pool_id or parents.pool_id
    elif kind == "l7policy":
        changes["listener_id"] = obj.listener_id or next(iter(parents.listener_ids), None)
    elif kind == "l7rule":
        changes["l7policy_id"] = obj.l7policy_id or parents.l7policy_id
    elif kind == "pool":
        changes["listener_id"] = obj.listener_id or next(iter(parents.listener_ids), None)
    elif kind == "listener":
        changes["loadbalancer_id"] = obj.loadbalancer_id or parents.loadbalancer_id
    return msgspec.structs.replace(obj, **changes)


def nested_lb(obj: Any) -> LoadBalancer | None:
    """The load balancer a payload carries (for a load balancer this backend never saw)."""
    for path in (
        ("loadbalancer",),
        ("listener", "loadbalancer"),
        ("pool", "loadbalancer"),
        ("pool", "listener", "loadbalancer"),
        ("policy", "listener", "loadbalancer"),
    ):
        node = obj
        for attr in path:
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, LoadBalancer) and node.id:
            return node
    return None


def find_lb_id(
    kind: str, obj: OctaviaObject, old: OctaviaObject | None, owner: Owners
) -> str | None:
    """The id of the load balancer ``obj`` (a ``kind``) belongs to: the index for an object
    already known, else the payload's parents, else the index for one of its parents."""
    if kind == "loadbalancer":
        return obj.id
    known = owner.get((kind, obj.id or ""))
    if known is not None:
        return known
    parents = parents_of(kind, obj, old)
    if parents.loadbalancer_id:
        return parents.loadbalancer_id
    for parent_kind, parent_id in (
        ("pool", parents.pool_id),
        ("l7policy", parents.l7policy_id),
        *(("listener", lid) for lid in parents.listener_ids),
        ("pool", getattr(obj, "pool_id", None)),
        ("listener", getattr(obj, "listener_id", None)),
        ("l7policy", getattr(obj, "l7policy_id", None)),
    ):
        if parent_id and (parent_kind, parent_id) in owner:
            return owner[(parent_kind, parent_id)]
    return None


def new_tree(lb: LoadBalancer) -> LoadBalancerTree:
    """The tree of a load balancer without objects yet."""
    return LoadBalancerTree(lb=msgspec.structs.replace(lb, listeners=None, pools=None))


def with_object(
    tree: LoadBalancerTree, kind: str, obj: OctaviaObject, old: OctaviaObject | None = None
) -> LoadBalancerTree:
    """``tree`` after ``obj`` (a ``kind`` with an id) was created, or updated from ``old``."""
    if isinstance(obj, LoadBalancer):
        return msgspec.structs.replace(
            tree, lb=msgspec.structs.replace(obj, listeners=None, pools=None)
        )
    if not obj.id:
        raise ValueError(f"a {kind} without id")
    own = own_state(kind, obj, old)
    field = TREE_FIELD[kind]
    objects = dict(getattr(tree, field))
    objects[obj.id] = own
    tree = msgspec.structs.replace(tree, **{field: objects})
    if isinstance(own, Listener):
        tree = _listener_changed(tree, own, old)
    return tree


def _listener_changed(
    tree: LoadBalancerTree, listener: Listener, old: OctaviaObject | None
) -> LoadBalancerTree:
    """An update that removes the default pool detaches the pools that named the listener."""
    if isinstance(old, Listener) and old.default_pool_id and not listener.default_pool_id:
        pools = {
            pid: msgspec.structs.replace(p, listener_id=None)
            if p.listener_id == listener.id
            else p
            for pid, p in tree.pools.items()
        }
        return msgspec.structs.replace(tree, pools=pools)
    return tree


def without(tree: LoadBalancerTree, kind: str, object_id: str) -> LoadBalancerTree:
    """``tree`` without the object and what cannot live without it (as Octavia deletes)."""
    changes: dict[str, Any] = {}
    field = TREE_FIELD[kind]
    changes[field] = {k: v for k, v in getattr(tree, field).items() if k != object_id}
    if kind == "listener":
        gone = {k for k, p in tree.l7policies.items() if p.listener_id == object_id}
        changes["l7policies"] = {k: v for k, v in tree.l7policies.items() if k not in gone}
        changes["l7rules"] = {k: v for k, v in tree.l7rules.items() if v.l7policy_id not in gone}
        changes["pools"] = {
            k: msgspec.structs.replace(p, listener_id=None) if p.listener_id == object_id else p
            for k, p in tree.pools.items()
        }
    elif kind == "l7policy":
        changes["l7rules"] = {k: v for k, v in tree.l7rules.items() if v.l7policy_id != object_id}
    elif kind == "pool":
        changes["members"] = {k: v for k, v in tree.members.items() if v.pool_id != object_id}
        changes["healthmonitors"] = {
            k: v for k, v in tree.healthmonitors.items() if v.pool_id != object_id
        }
        changes["listeners"] = {
            k: msgspec.structs.replace(li, default_pool_id=None)
            if li.default_pool_id == object_id
            else li
            for k, li in tree.listeners.items()
        }
    return msgspec.structs.replace(tree, **changes)


def owners(lb_id: str, tree: LoadBalancerTree) -> dict[tuple[str, str], str]:
    """The owner index entries of ``tree``: the load balancer and every object in it."""
    entries = {("loadbalancer", lb_id): lb_id}
    for kind, field in TREE_FIELD.items():
        for object_id in getattr(tree, field):
            entries[(kind, object_id)] = lb_id
    return entries


def owners_after_removal(
    owner: Owners, lb_id: str, tree: LoadBalancerTree | None
) -> dict[tuple[str, str], str]:
    """``owner`` once ``lb_id``'s tree became ``tree`` by a removal (``None``: the load
    balancer is gone): entries of ``lb_id`` for objects no longer in the tree are dropped."""
    if tree is None:
        return {k: v for k, v in owner.items() if v != lb_id}
    return {
        k: v
        for k, v in owner.items()
        if v != lb_id or k[0] == "loadbalancer" or k[1] in getattr(tree, TREE_FIELD[k[0]])
    }
