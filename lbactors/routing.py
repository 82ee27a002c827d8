"""Which actor owns an operation, and which worker owns an actor.

- :func:`owner_of`: the load balancer id that owns an operation's object, found in the payload
  exactly as :func:`lbactors.status.parents_of` finds it (``status-semantics.md``: "the load
  balancer id found here is also the actor (routing) key");
- :func:`shard`: a key -> worker index, stable across processes, runs and hosts;
- :func:`shard_of`: an owner key -> cluster shard queue index (docs/cluster.md §2), salted so
  that it does not line up with :func:`shard`; :func:`shard_queue` names that queue.

Pure: no I/O, no trio, no logging (the caller logs an owner that was not found).
"""

from __future__ import annotations

import hashlib

from lbactors.messages import Request
from lbactors.model import LoadBalancer
from lbactors.status import parents_of

__all__ = ["owner_of", "shard", "shard_of", "shard_queue"]


def owner_of(request: Request) -> tuple[str, bool]:
    """``(load balancer id, found)`` for the object of ``request``.

    A load balancer operation is owned by the load balancer itself. When the payload names no
    load balancer, the object's own id is the key and ``found`` is False (its operations still
    stay in order, on one actor). Queries (``request.kind is None``) need no actor:
    ``("", True)``.
    """
    kind = request.kind
    if kind is None:
        return "", True
    obj = request.obj
    if obj is None:
        return "", False
    if isinstance(obj, LoadBalancer):
        return obj.id or "", bool(obj.id)
    lb_id = parents_of(kind, obj, request.old).loadbalancer_id
    if lb_id:
        return lb_id, True
    return obj.id or "", False


def shard(key: str, workers: int) -> int:
    """The worker index in ``range(workers)`` for ``key``.

    A keyed hash, unlike ``hash()`` (salted per process): every process and every run agree.
    """
    if workers <= 1:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        return 0  # one worker: no hash to compute
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % workers


def shard_of(key: str, shards: int) -> int:
    """The cluster shard in ``range(shards)`` of owner key ``key``: every daemon, host and run
    agrees, and the broker routes by it (routing key ``f"{shard:03d}"``).

    Salted (blake2b ``person``), so that a daemon holding shards {0, 3, 6, 9} of 12 with 3
    workers does not put every key on one worker, as the unsalted :func:`shard` would.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, not {shards}")
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"lbactors-shard").digest()
    return int.from_bytes(digest, "big") % shards


def shard_queue(topic: str, index: int) -> str:
    """The name of shard queue ``index`` of ``topic``: ``T.shard.000`` ... ``T.shard.998``."""
    return f"{topic}.shard.{index:03d}"
