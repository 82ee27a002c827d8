"""Octavia's commit race, end to end: ``lbactors serve`` against a peer that drops what it
cannot see yet, exactly as vmware-nsx's provider agent does.

Octavia's API inserts a new row, calls the provider driver (which casts to lbactors), and
commits afterwards; vmware-nsx's agent (``NSXOctaviaDriverEndpoint.update_loadbalancer_status``)
drops every status entry whose id is not in Octavia's database yet and never retries. The
peer here is the real oslo.messaging (an RPC server with our own endpoint) holding a small
Octavia database:

- an object's row is committed a seeded random delay after the driver cast its create (half
  of them at once, the others 0–1.5 s later); the API call returns at that commit;
- every status entry whose id is not committed yet is dropped (counted), the others are
  written, as the agent does; casting an operation locks what its status will name
  (``PENDING_*``), as Octavia's API does;
- Octavia's gating: a load balancer's next operation is cast only once its API call
  returned and the load balancer is ACTIVE again.

Twenty load balancers are built concurrently (load balancer, listener, pool, two members,
health monitor, L7 policy and rule), then every object of a tree must be ACTIVE; then each is
updated object by object and cascade-deleted. Without re-assertion some objects stay PENDING
for ever (the test checks that the peer really reproduces the race); with it, every object
ends ACTIVE, and no status names an object while the peer has a newer operation on it in
flight (beyond the residual window the README states: an operation still on its way through
the broker is invisible to lbactors), and nothing names an object after it was deleted.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import oslo_messaging
import pytest
import trio

from tests.daemon_process import NotifySocket
from tests.octavia_side import LoadBalancerTree, OsloDriver, normalized
from tests.test_daemon import start_daemon

pytestmark = pytest.mark.broker

ACTIVE, DELETED = "ACTIVE", "DELETED"
TREES = 20
SEED = 20261203
#: how long a status may name an object after the peer cast a newer operation on it and
#: still count as the residual window (the operation was on its way through the broker when
#: lbactors published): the broker's round trip here, with a wide margin
RESIDUAL_WINDOW = 0.1
#: noop backend latency: operations that take time, so that one running while a status about
#: its objects leaves would show well beyond the residual window
BACKEND_LATENCY = "0.2"


@dataclass
class Flight:
    """The operation the peer cast last for a load balancer, until its status arrived."""

    method: str
    expected: dict[str, Any]
    ids: set[str]
    cast_at: float


@dataclass
class Peer:
    """Octavia's database and vmware-nsx's agent: an oslo.messaging endpoint."""

    target: ClassVar[oslo_messaging.Target] = oslo_messaging.Target(
        namespace="control", version="1.0"
    )
    commit_delay: dict[str, float]
    lb_of: dict[str, str]
    cond: threading.Condition = field(default_factory=threading.Condition)
    #: id -> when its row is committed (monotonic)
    commit_at: dict[str, float] = field(default_factory=dict)
    #: id -> provisioning status in the database
    db: dict[str, str] = field(default_factory=dict)
    flights: dict[str, Flight] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    #: entries skipped because their row was not committed yet ("Skipping update ... not in DB")
    dropped: int = 0
    #: status messages that were not the in-flight operation's own status (re-assertions)
    other_messages: int = 0
    #: the oslo contexts seen: (whether the message was an operation's own status, ctxt)
    contexts: set[tuple[bool, str]] = field(default_factory=set)
    #: (object id, seconds since the newer operation was cast, the message)
    stale: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    #: (object id, the message): statuses for objects already deleted
    after_delete: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    # the oslo endpoint
    def update_loadbalancer_status(self, ctxt: dict[str, Any], status: dict[str, Any]) -> None:
        entries = [entry for values in status.values() for entry in values]
        now = time.monotonic()
        with self.cond:
            lb_id = self.lb_of.get(entries[0]["id"], "") if entries else ""
            flight = self.flights.get(lb_id)
            own = flight is not None and normalized(status) == flight.expected
            # oslo's receiving side adds client_timeout (the call timeout; None for a cast)
            sent = {key: value for key, value in ctxt.items() if key != "client_timeout"}
            self.contexts.add((own, json.dumps(sent, sort_keys=True)))
            if own:
                del self.flights[lb_id]
            else:
                self.other_messages += 1
                for entry in entries:
                    if flight is not None and entry["id"] in flight.ids:
                        self.stale.append((entry["id"], now - flight.cast_at, status))
            for entry in entries:
                object_id = entry["id"]
                if object_id in self.deleted:
                    self.after_delete.append((object_id, status))
                    continue
                if now < self.commit_at.get(object_id, float("inf")):
                    self.dropped += 1  # vmware-nsx's _removed_not_in_db
                    continue
                if "provisioning_status" in entry:
                    self.db[object_id] = entry["provisioning_status"]
                    if entry["provisioning_status"] == DELETED:
                        self.deleted.add(object_id)
            self.cond.notify_all()

    def update_listener_statistics(self, ctxt: dict[str, Any], statistics: dict[str, Any]) -> None:
        pass

    # Octavia's API
    def cast(self, driver: OsloDriver, tree: LoadBalancerTree, method: str,
             kwargs: dict[str, Any], expected: dict[str, Any]) -> str | None:
        """Lock, insert, cast; the created object's id (its commit comes later)."""
        ids = {entry["id"] for values in expected.values() for entry in values}
        created = None
        if method.endswith("_create"):
            key = method.removesuffix("_create")
            created = kwargs[key]["id"]
        pending = "PENDING_DELETE" if method.endswith("_delete") else "PENDING_UPDATE"
        with self.cond:
            now = time.monotonic()
            if created is not None:
                self.commit_at[created] = now + self.commit_delay[created]
            for object_id in ids:
                self.db[object_id] = "PENDING_CREATE" if object_id == created else pending
            self.flights[tree.lb_id] = Flight(method, normalized(expected), ids, now)
        driver.cast(method, **kwargs)
        return created

    def wait(self, predicate: Any, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


def object_ids(tree: LoadBalancerTree) -> list[str]:
    return [tree.lb_id, tree.listener_id, tree.pool_id, *tree.member_ids, tree.hm_id,
            tree.policy_id, tree.rule_id]


@dataclass
class TreeResult:
    #: objects of the tree left PENDING_* once its creates were done and the wait was over
    pending: list[str] = field(default_factory=list)
    #: seconds from the first create's cast until every object was ACTIVE
    built_in: float | None = None
    finished: bool = False


def drive(peer: Peer, driver: OsloDriver, tree: LoadBalancerTree, result: TreeResult,
          *, settle: float, whole_life: bool) -> None:
    """One load balancer as Octavia and its user drive it (a thread)."""
    lifecycle = tree.lifecycle()
    creates = [op for op in lifecycle if op[0].endswith("_create")]
    rest = [op for op in lifecycle if not op[0].endswith("_create")]
    started = time.monotonic()
    for method, kwargs, expected in creates:
        created = peer.cast(driver, tree, method, kwargs, expected)
        assert created is not None
        time.sleep(max(0.0, peer.commit_at[created] - time.monotonic()))  # the API returns
        if not peer.wait(lambda: peer.db.get(tree.lb_id) == ACTIVE, settle):
            break  # the load balancer stays locked: Octavia refuses the next call
    ids = [i for i in object_ids(tree) if i in peer.commit_at]
    peer.wait(lambda: all(peer.db.get(i) == ACTIVE for i in ids), settle)
    with peer.cond:
        result.pending = [i for i in object_ids(tree)
                          if i in peer.commit_at and peer.db.get(i) != ACTIVE]
    if result.pending or len(ids) < len(object_ids(tree)):
        return
    result.built_in = time.monotonic() - started
    if not whole_life:
        result.finished = True
        return
    for method, kwargs, expected in rest:
        peer.cast(driver, tree, method, kwargs, expected)
        goal = DELETED if method == "loadbalancer_delete" else ACTIVE
        if not peer.wait(lambda: peer.db.get(tree.lb_id) == goal, settle):  # noqa: B023
            return
    result.finished = True


@dataclass
class RaceRun:
    peer: Peer
    results: list[TreeResult]
    reasserted: int | None

    @property
    def pending(self) -> int:
        return sum(len(r.pending) for r in self.results)


def build_peer(trees: list[LoadBalancerTree]) -> Peer:
    rng = random.Random(SEED)
    delays: dict[str, float] = {}
    lb_of: dict[str, str] = {}
    for tree in trees:
        for object_id in object_ids(tree):
            delays[object_id] = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 1.5)
            lb_of[object_id] = tree.lb_id
    return Peer(commit_delay=delays, lb_of=lb_of)


async def race(
    amqp_url: str, names: dict[str, str], notify: NotifySocket, tmp_path: Path,
    *, reassert_after: str, settle: float, whole_life: bool,
) -> RaceRun:
    trees = [LoadBalancerTree(i, members=2) for i in range(TREES)]
    peer = build_peer(trees)
    driver = OsloDriver(amqp_url, topic=names["topic"], driver_topic=names["driver_topic"],
                        exchange=names["exchange"], endpoint=peer).start()
    env = {
        "LBACTORS_AMQP_URL": amqp_url,
        "LBACTORS_AMQP_TOPIC": names["topic"],
        "LBACTORS_AMQP_DRIVER_TOPIC": names["driver_topic"],
        "LBACTORS_AMQP_EXCHANGE": names["exchange"],
        "LBACTORS_DAEMON_WORKERS": "2",
        "LBACTORS_STATS_INTERVAL": "0",
        "LBACTORS_BACKEND_NOOP_LATENCY": BACKEND_LATENCY,
        "LBACTORS_STATUS_REASSERT_AFTER": reassert_after,
    }
    name = "on" if reassert_after != "[]" else "off"
    daemon = await start_daemon(env, notify, tmp_path, name)
    try:
        results = [TreeResult() for _ in trees]

        def run_all() -> None:
            threads = [
                threading.Thread(target=drive, args=(peer, driver, tree, result),
                                 kwargs={"settle": settle, "whole_life": whole_life})
                for tree, result in zip(trees, results, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        with trio.fail_after(60):
            await trio.to_thread.run_sync(run_all)
        await trio.sleep(1.0)  # whatever lbactors still sends about them arrives now
    finally:
        await daemon.stop()
        driver.stop()
    stopped = [line for line in daemon.log_lines() if line.get("event") == "lbactors stopped"]
    return RaceRun(peer, results, stopped[0].get("reasserted") if stopped else None)


async def test_commit_race_leaves_nothing_pending_and_nothing_stale(
    amqp_url: str, names: dict[str, str], notify_socket: NotifySocket, tmp_path: Path
) -> None:
    # Without re-assertion: the peer really reproduces the race.
    with trio.fail_after(300):
        off = await race(amqp_url, {k: v + "_off" for k, v in names.items()}, notify_socket,
                         tmp_path, reassert_after="[]", settle=2.0, whole_life=False)
    assert off.peer.dropped > 0
    assert off.pending > 0, "the peer did not reproduce the race: the test proves nothing"
    assert off.reasserted == 0

    # With it (the default schedule): every object ACTIVE, nothing stale.
    notify_socket.messages.clear()
    with trio.fail_after(300):
        on = await race(amqp_url, names, notify_socket, tmp_path,
                        reassert_after="[1.0, 3.0, 10.0]", settle=6.0, whole_life=True)
    peer = on.peer
    beyond = [s for s in peer.stale if s[1] > RESIDUAL_WINDOW]
    print(
        f"\ncommit race: without re-assertion {off.pending} objects left PENDING "
        f"({off.peer.dropped} entries dropped); with it {on.pending} PENDING, "
        f"{peer.dropped} entries dropped, {on.reasserted} entries re-asserted in "
        f"{peer.other_messages} casts; stale entries: {len(peer.stale) - len(beyond)} within "
        f"the residual window, {len(beyond)} beyond; "
        f"slowest tree built in {max(r.built_in or 0 for r in on.results):.1f} s"
    )
    assert peer.dropped > 0  # the race happened here too
    # an operation's own status has oslo's empty context, a re-assertion says what it is
    assert on.peer.contexts == {(True, "{}"), (False, '{"lbactors_reassertion": true}')}
    assert off.peer.contexts == {(True, "{}")}
    assert on.pending == 0, [r.pending for r in on.results if r.pending]
    assert all(r.finished for r in on.results)
    assert on.reasserted is not None and on.reasserted > 0
    assert not beyond, beyond[:5]
    assert not peer.after_delete, peer.after_delete[:5]
    assert set(peer.deleted) >= set(peer.commit_at)
