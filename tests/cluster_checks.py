"""Checks of the cluster tests (docs/cluster.md §11), pure: no I/O, no trio.

- :func:`status_order_problems`: per load balancer, the status updates received, after removing
  consecutive duplicates, are those of its operations in the order they were sent, apart from
  lbactors' re-assertions of created objects (allowed anywhere after the create's status,
  never after the object's delete: seen from 3 daemons without cluster mode). The record
  is what ``tests/cluster_daemons.py``'s ``record_driver`` takes from the bench driver: every
  operation cast (:class:`SentOperation`, in cast order) and every ``update_loadbalancer_status``
  payload received (in arrival order). The driver's own result counts missing and wrong
  statuses, but matches an update to whatever operation of its object is pending, so it cannot
  see an operation run a second time after a handover whose status arrives late.
- :func:`shard_owners`: how many active consumers each queue has, from
  ``rabbitmqctl list_consumers queue_name channel_pid active``.

A status update names its operation's object only as one of its entries: the others are the
object's parents (``ACTIVE``) or, for a cascade delete, its children (``DELETED``).
:func:`status_subject` picks it: a load balancer ``DELETED`` (a cascade delete), else the
deepest entry of the tree that has a provisioning status. An update of an object and its
create give the same subject (both ``ACTIVE``): a duplicate of the one landing next to the
other cannot be told apart, and need not be (Octavia sees the same status).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PROVISIONING = "provisioning_status"
#: depth in the load balancer tree of each key of an ``update_loadbalancer_status`` payload
DEPTH = {
    "loadbalancers": 0,
    "listeners": 1,
    "pools": 2,
    "l7policies": 2,
    "members": 3,
    "healthmonitors": 3,
    "l7rules": 3,
}

#: (status key, object id, provisioning status), e.g. ("listeners", "<uuid>", "ACTIVE")
Subject = tuple[str, str, str]


@dataclass(frozen=True)
class SentOperation:
    """One operation cast by the driver: its load balancer, method and what its status says."""

    lb_id: str
    method: str
    subject: Subject


def status_subject(status: Mapping[str, Any]) -> Subject | None:
    """The object a status update is about, or None when it has no provisioning status (an
    operating-status-only update) or two deepest entries (ambiguous)."""
    entries: list[Subject] = []
    for key, items in status.items():
        if key not in DEPTH or not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict) and PROVISIONING in item:
                entries.append((key, str(item.get("id")), str(item[PROVISIONING])))
    for entry in entries:
        if entry[0] == "loadbalancers" and entry[2] == "DELETED":
            return entry
    if not entries:
        return None
    deepest = max(DEPTH[key] for key, _, _ in entries)
    at_depth = [entry for entry in entries if DEPTH[entry[0]] == deepest]
    return at_depth[0] if len(at_depth) == 1 else None


def without_consecutive_duplicates(items: Iterable[Subject]) -> list[Subject]:
    kept: list[Subject] = []
    for item in items:
        if not kept or kept[-1] != item:
            kept.append(item)
    return kept


def _entries(status: Mapping[str, Any]) -> list[Subject]:
    """Every (key, id, provisioning status) of a status update that has a provisioning status."""
    return [
        (key, str(item.get("id")), str(item[PROVISIONING]))
        for key, items in status.items()
        if key in DEPTH and isinstance(items, list)
        for item in items
        if isinstance(item, dict) and PROVISIONING in item
    ]


def _lb_of(entries: list[Subject], lb_of_object: Mapping[str, str]) -> str | None:
    for key, oid, _ in entries:
        if key == "loadbalancers":
            return oid
    for _, oid, _ in entries:
        if oid in lb_of_object:
            return lb_of_object[oid]
    return None


class _LoadBalancerWalk:
    """One load balancer's status updates, walked in arrival order against its operations."""

    def __init__(self, lb_id: str, operations: list[SentOperation]) -> None:
        self.lb_id = lb_id
        self.want = without_consecutive_duplicates(op.subject for op in operations)
        self.created = {op.subject for op in operations if op.method.endswith("_create")}
        #: how many of ``want`` have arrived (the last one may arrive again: a duplicate)
        self.matched = 0
        self.deleted: set[str] = set()
        self.reassertions = 0
        self.problem: str | None = None

    def receive(self, index: int, entries: list[Subject], subject: Subject | None) -> None:
        if self.problem is not None:
            return
        if subject is not None and self.matched and subject == self.want[self.matched - 1]:
            pass  # a consecutive duplicate
        elif (
            subject is not None
            and self.matched < len(self.want)
            and (subject == self.want[self.matched])
        ):
            self.matched += 1
        elif self._is_reassertion(entries):
            self.reassertions += 1
        else:
            self.problem = (
                f"load balancer {self.lb_id}: status update {index} about {subject} (entries"
                f" {entries}) out of operation order after {self.matched} of {len(self.want)}"
                f" operations' statuses {self.want[: self.matched]}"
            )
            return
        self.deleted.update(oid for _, oid, status in entries if status == "DELETED")

    def _is_reassertion(self, entries: list[Subject]) -> bool:
        """lbactors re-sends a created object's own entry later (README, Octavia's commit race;
        lbactors/actor.py): ACTIVE, of an object whose create status has arrived, never of one
        since deleted. Re-assertions due together arrive as one update; the load balancer's
        own entry only ever alone (every later operation's status names it, which drops its
        re-assertion), while every operation status of a child names it too: so an update with
        the load balancer's entry and another is an operation's, never a re-assertion."""
        if len(entries) > 1 and any(key == "loadbalancers" for key, _, _ in entries):
            return False
        arrived = set(self.want[: self.matched])
        return all(
            entry[2] == "ACTIVE"
            and entry in self.created
            and entry in arrived
            and entry[1] not in self.deleted
            for entry in entries
        )


def status_order_problems(
    sent: Sequence[SentOperation],
    received: Sequence[Mapping[str, Any]],
    *,
    require_all: bool = True,
) -> list[str]:
    """Per load balancer, walk the status updates received against its operations: one
    problem per load balancer whose updates, consecutive duplicates removed, are not its
    operations' in cast order (a status arrived after a later operation's, or is of no
    operation of it), or, with ``require_all``, miss some (the driver casts an operation only
    after the previous one's status and stops a load balancer at its first missing status, so
    what is missing is at the end).

    A re-assertion (an update of only created objects' own ``ACTIVE`` entries, each of a
    create whose status arrived before and not deleted since) is allowed anywhere after that
    (:attr:`_LoadBalancerWalk.reassertions` counts them). Updates without a provisioning
    status (operating status only) are skipped; one that belongs to no load balancer sent is
    a problem.
    """
    problems: list[str] = []
    lb_of_object = {op.subject[1]: op.lb_id for op in sent}
    operations: dict[str, list[SentOperation]] = {}
    for op in sent:
        operations.setdefault(op.lb_id, []).append(op)
    walks = {lb_id: _LoadBalancerWalk(lb_id, ops) for lb_id, ops in operations.items()}
    for index, status in enumerate(received):
        entries = _entries(status)
        if not entries:
            continue
        lb_id = _lb_of(entries, lb_of_object)
        if lb_id not in walks:
            problems.append(f"status update {index}: of no load balancer sent: {entries}")
            continue
        walks[lb_id].receive(index, entries, status_subject(status))
    for walk in walks.values():
        if walk.problem is not None:
            problems.append(walk.problem)
        elif require_all and walk.matched < len(walk.want):
            problems.append(
                f"load balancer {walk.lb_id}: {len(walk.want) - walk.matched} operation"
                f" statuses missing; received {walk.want[: walk.matched]}, operations"
                f" {walk.want}"
            )
    return problems


def shard_owners(consumers_output: str) -> dict[str, int]:
    """Queue name -> number of its consumers that are active, from the output of
    ``rabbitmqctl [--quiet] list_consumers [-p vhost] queue_name channel_pid active`` (tab
    separated; the "Listing consumers ..." banner and the column header are skipped). A queue
    whose consumers are all waiting maps to 0. A line of another shape is a ``ValueError``."""
    owners: dict[str, int] = {}
    for line in consumers_output.splitlines():
        if not line.strip() or line.startswith("Listing consumers"):
            continue
        fields = line.split("\t")
        if fields == ["queue_name", "channel_pid", "active"]:
            continue
        if len(fields) != 3 or fields[2] not in ("true", "false"):
            raise ValueError(f"not a 'queue_name channel_pid active' line: {line!r}")
        queue, _, active = fields
        owners[queue] = owners.get(queue, 0) + (active == "true")
    return owners
