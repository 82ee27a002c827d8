"""Checks of the cluster tests (docs/cluster.md §11), pure: no I/O, no trio.

- :func:`status_order_problems`: per load balancer, the status updates received, after removing
  consecutive duplicates, are those of its operations in the order they were sent. The record
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


def _lb_of(status: Mapping[str, Any], lb_of_object: Mapping[str, str]) -> str | None:
    for item in status.get("loadbalancers") or ():
        if isinstance(item, dict) and PROVISIONING in item:
            return str(item.get("id"))
    subject = status_subject(status)
    return None if subject is None else lb_of_object.get(subject[1])


def status_order_problems(
    sent: Sequence[SentOperation],
    received: Sequence[Mapping[str, Any]],
    *,
    require_all: bool = True,
) -> list[str]:
    """Per load balancer, compare the subjects of the status updates received (consecutive
    duplicates removed) with those of its operations (the same): one problem per load
    balancer whose updates are not a prefix of its operations' (out of operation order: a
    status arrived after a later operation's, or one of no operation of it; the driver casts
    an operation only after the previous one's status, and stops a load balancer at its first
    missing status, so what is missing is at the end), or, with ``require_all``, miss some. Updates without a provisioning status are skipped;
    one that is ambiguous or belongs to no load balancer that was sent is a problem."""
    problems: list[str] = []
    lb_of_object = {op.subject[1]: op.lb_id for op in sent}
    expected: dict[str, list[Subject]] = {}
    for op in sent:
        expected.setdefault(op.lb_id, []).append(op.subject)
    got: dict[str, list[Subject]] = {lb_id: [] for lb_id in expected}
    for index, status in enumerate(received):
        has_provisioning = any(
            isinstance(item, dict) and PROVISIONING in item
            for key, items in status.items()
            if key in DEPTH and isinstance(items, list)
            for item in items
        )
        if not has_provisioning:
            continue
        subject = status_subject(status)
        lb_id = _lb_of(status, lb_of_object)
        if subject is None:
            problems.append(f"status update {index}: no single object it is about: {status}")
        elif lb_id not in got:
            problems.append(f"status update {index}: of no load balancer sent: {subject}")
        else:
            got[lb_id].append(subject)
    for lb_id, want in expected.items():
        want = without_consecutive_duplicates(want)
        have = without_consecutive_duplicates(got[lb_id])
        position = next(
            (i for i, (h, w) in enumerate(zip(have, want, strict=False)) if h != w),
            None if len(have) <= len(want) else len(want),
        )
        if position is not None:
            problems.append(
                f"load balancer {lb_id}: status {position} {have[position]} out of operation"
                f" order; received {have}, operations {want}"
            )
        elif require_all and have != want:
            problems.append(
                f"load balancer {lb_id}: {len(want) - len(have)} operation statuses missing;"
                f" received {have}, operations {want}"
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
