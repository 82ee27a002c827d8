"""The provider agent: ``lbactors serve``'s status and statistics casts, written into Octavia.

Runs inside octavia-driver-agent (entry point ``octavia.driver_agent.provider_agents:
lbactors``, ``[driver_agent] enabled_provider_agents = lbactors``) as
``lbactors_provider_agent(exit_event)``: an oslo.messaging RPC server on
``Target(topic=[lbactors] driver_topic, server=<hostname>, exchange=[lbactors] exchange)``
(threading executor, as vmware-nsx's agent) with one endpoint
(``Target(namespace='control', version='1.0')``):

- ``update_loadbalancer_status(ctxt, status)`` → :class:`StatusWriter`;
- ``update_listener_statistics(ctxt, statistics)`` → ``DriverLibrary.update_listener_statistics``;
- ``get_active_loadbalancers(ctxt)`` (a call from the daemon's statistics loop) → the ids of
  this provider's ACTIVE load balancers in Octavia's database.

Octavia's API calls the driver *before* it commits the new rows (``production-facts.md`` §1),
so a status can name an object Octavia cannot see yet. The driver agent then either fails the
update naming the object (listeners, L7 policies, L7 rules: ``UpdateStatusError`` with
``status_object`` / ``status_object_id``, the entries after it not applied) or silently updates
nothing (load balancers, pools, members, health monitors: an UPDATE of no row). The writer
therefore asks the driver agent's get socket whether such an object exists before it writes
its entry (once per id: a committed id stays known), writes every entry that can be written at
once, and retries only the others, each on its own bounded schedule
(``[lbactors] status_retry_*``; by default tries at 0, 0.5, 1.5, 3.5 and 7.5 s, then a logged
drop). A newer status for an object replaces its pending entry (the newer fields win), so a
retry never writes something older than what was written since.

Inside the driver agent (``[lbactors] agent_writes = auto``) the checks and writes run the driver
agent's own code in this process (:mod:`lbactors.octavia.inprocess`), after waiting for Octavia's
API to commit what it holds of the status's load balancers (:meth:`StatusWriter._try`). A
re-assertion (its oslo context says so) is skipped entry by entry when this writer has written
those fields already or still retries them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import oslo_messaging as messaging
from octavia_lib.api.drivers import exceptions as lib_exc
from oslo_config import cfg

from lbactors.octavia.config import register_opts

LOG = logging.getLogger(__name__)

#: the order in which Octavia's driver agent applies a status dict (driver_updater.py)
ORDER = (
    "members",
    "healthmonitors",
    "pools",
    "l7rules",
    "l7policies",
    "listeners",
    "loadbalancers",
)

#: kinds whose missing rows the driver agent updates silently: their existence is checked first
CHECKED_BY_GET = {
    "loadbalancers": "get_loadbalancer",
    "pools": "get_pool",
    "members": "get_member",
    "healthmonitors": "get_healthmonitor",
}

#: how many committed ids the writer remembers (ids are UUIDs, never reused)
KNOWN_IDS = 65536


class _Entry:
    __slots__ = ("kind", "record", "attempts", "due")

    def __init__(self, kind: str, record: dict[str, Any], attempts: int = 0) -> None:
        self.kind = kind
        self.record = record
        self.attempts = attempts
        self.due = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.record["id"]


class _Batch:
    """The ready entries of one try, written together with other tries' (``_flush_loop``)."""

    __slots__ = ("entries", "later", "done")

    def __init__(self, entries: list[_Entry]) -> None:
        self.entries = entries
        self.later: list[_Entry] = []
        self.done = threading.Event()


#: longest wait of a try for its batch (DriverLibrary gives the driver agent 30 s per call)
FLUSH_TIMEOUT = 120.0


class StatusWriter:
    """Writes status dicts through ``library`` (a DriverLibrary), retrying uncommitted entries.

    Every call to the driver agent costs a fork and a database session there (about 0.2 s
    measured with Octavia 19 on 2 CPUs), and lbactors serve answers 50 concurrent creates in
    milliseconds, each status followed by its re-assertions: written one call per status, the
    agent fell 30 s behind. So a try checks its uncommitted-looking entries (concurrently with
    other tries, at most 4 driver agent calls at once, :mod:`lbactors.octavia.busy`) and hands
    the ready ones to one flusher thread, which writes everything queued meanwhile in one
    status dict. Order per object: a try holds a lock per id it names (taken in sorted order)
    until its entries are written or deferred, so the entries of one id reach Octavia one try
    at a time; an operation's status names its load balancer, so one load balancer's statuses
    are written one at a time. :meth:`start` runs the retry thread (due entries go to
    ``retry_threads`` threads), :meth:`close` stops it (pending entries are dropped with a log
    line).
    """

    def __init__(
        self,
        library: Any,
        *,
        attempts: int = 5,
        initial_delay: float = 0.5,
        max_delay: float = 4.0,
        retry_threads: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.library = library
        self.attempts = attempts
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.clock = clock
        # guards _pending, _known, _id_locks and the counters; never held during a call
        self._state = threading.Lock()
        self._id_locks: dict[tuple[str, str], list[Any]] = {}  # key -> [lock, users]
        self._pending: dict[tuple[str, str], _Entry] = {}
        self._changed = threading.Condition()
        # the last record written per id whose object Octavia had (LRU, KNOWN_IDS)
        self._known: collections.OrderedDict[tuple[str, str], dict[str, Any]] = (
            collections.OrderedDict()
        )
        self._closed = False
        self._thread: threading.Thread | None = None
        self._queue: list[_Batch] = []
        self._queue_changed = threading.Condition()
        self._flusher = threading.Thread(
            target=self._flush_loop, name="lbactors-status-writer", daemon=True
        )
        self._flusher.start()
        self._retry_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=retry_threads, thread_name_prefix="lbactors-status-retry"
        )
        #: counters, for logs and tests
        self.retried = 0
        self.dropped = 0
        self.batches = 0
        #: re-asserted entries skipped because they were written already
        self.skipped = 0

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._retry_loop, name="lbactors-status-retry", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        with self._queue_changed:
            self._queue_changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._flusher.join(timeout)
        self._retry_pool.shutdown(wait=False, cancel_futures=True)
        with self._state:
            for entry in self._pending.values():
                LOG.warning(
                    "lbactors: dropping the pending status of %s %s at shutdown",
                    entry.kind,
                    entry.record["id"],
                )
            self._pending.clear()

    def pending(self) -> list[tuple[str, str]]:
        with self._state:
            return list(self._pending)

    def write(self, status: dict[str, Any], *, reassertion: bool = False) -> None:
        """Write ``status`` now; entries of uncommitted objects are retried later.

        ``reassertion``: ``status`` repeats create statuses ``lbactors serve`` sent before (the
        cast's oslo context says so), for peers that drop the entries of uncommitted objects.
        This writer retries those itself, so a re-asserted entry is skipped when its fields
        are already written (the last record written for that object holds them: Octavia has
        them) or already waiting for a retry here; the check runs under the entry's id lock,
        so a first status still being written is settled by then. A re-assertion thus costs
        the driver agent nothing unless the first status was lost (or given up on)."""
        entries = self._entries(status)
        if not entries:
            return
        with self._locked([entry.key for entry in entries]):
            if reassertion:
                entries = self._not_written_yet(entries)
            with self._state:
                for entry in entries:
                    older = self._pending.pop(entry.key, None)
                    if older is not None:
                        # the newer fields win; the older entry's other fields still have to land
                        entry.record = {**older.record, **entry.record}
            if entries:
                self._try(entries)

    # ------------------------------------------------------------------ internals

    def _not_written_yet(self, entries: list[_Entry]) -> list[_Entry]:
        """``entries`` but those written already or waiting for a retry (id locks held)."""
        left = []
        with self._state:
            for entry in entries:
                if any(
                    record is not None
                    and all(record.get(field) == value for field, value in entry.record.items())
                    for record in (
                        self._known.get(entry.key),
                        getattr(self._pending.get(entry.key), "record", None),
                    )
                ):
                    self.skipped += 1
                else:
                    left.append(entry)
        return left

    @contextlib.contextmanager
    def _locked(self, keys: list[tuple[str, str]]) -> Iterator[None]:
        """Hold the lock of every key (sorted: two writes never wait for each other in a
        cycle); a key's lock lives while someone uses it."""
        keys = sorted(set(keys))
        with self._state:
            locks = []
            for key in keys:
                holder = self._id_locks.setdefault(key, [threading.Lock(), 0])
                holder[1] += 1
                locks.append(holder[0])
        taken = []
        try:
            for lock in locks:
                lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()
            with self._state:
                for key in keys:
                    holder = self._id_locks[key]
                    holder[1] -= 1
                    if holder[1] == 0:
                        del self._id_locks[key]

    @staticmethod
    def _entries(status: Any) -> list[_Entry]:
        if not isinstance(status, dict):
            LOG.error("lbactors: ignoring a status that is not a dict: %r", status)
            return []
        entries = []
        for kind in ORDER:
            for record in status.get(kind) or []:
                if isinstance(record, dict) and isinstance(record.get("id"), str) and record["id"]:
                    entries.append(_Entry(kind, dict(record)))
                else:
                    LOG.error(
                        "lbactors: ignoring a %s status entry without an id: %r", kind, record
                    )
        unknown = set(status) - set(ORDER)
        if unknown:
            LOG.warning("lbactors: ignoring unknown status keys %s", sorted(unknown))
        return entries

    def _committed(self, entry: _Entry) -> bool:
        """Whether Octavia's database has the entry's object (True when it cannot tell)."""
        if entry.record.get("provisioning_status") == "DELETED":
            return True  # the driver agent ignores a DELETED row it does not find
        getter = CHECKED_BY_GET.get(entry.kind)
        if getter is None:
            return True  # listeners and L7 objects: the update itself names a missing one
        with self._state:
            if entry.key in self._known:
                return True
        try:
            found = getattr(self.library, getter)(entry.record["id"])
        except Exception as exc:  # the get socket failed: write it anyway, unconfirmed
            LOG.warning(
                "lbactors: could not look up %s %s: %s", entry.kind, entry.record["id"], exc
            )
            return True
        return bool(found)

    def _remember(self, entries: list[_Entry]) -> None:
        with self._state:
            for entry in entries:
                if entry.record.get("provisioning_status") == "DELETED":
                    self._known.pop(entry.key, None)
                else:
                    known = self._known.get(entry.key)
                    # a sparse entry (an operating status alone) completes the last record
                    self._known[entry.key] = (
                        {**known, **entry.record} if known is not None else dict(entry.record)
                    )
                    self._known.move_to_end(entry.key)
            while len(self._known) > KNOWN_IDS:
                self._known.popitem(last=False)

    def _try(self, entries: list[_Entry]) -> None:
        """One try of ``entries`` (their id locks held): the existence checks here, the write
        with whatever other threads have ready (:meth:`_flush_loop`)."""
        self._wait_for_commits(entries)
        ready: list[_Entry] = []
        later: list[_Entry] = []
        for entry in entries:
            (ready if self._committed(entry) else later).append(entry)
        if ready:
            batch = _Batch(ready)
            with self._queue_changed:
                self._queue.append(batch)
                self._queue_changed.notify()
            if batch.done.wait(FLUSH_TIMEOUT):
                later.extend(batch.later)
            else:  # the flusher is stuck (it is bounded by DriverLibrary's timeouts)
                LOG.warning("lbactors: status write not done in %s s; retrying it", FLUSH_TIMEOUT)
                later.extend(ready)
        for entry in later:
            self._defer(entry)

    def _wait_for_commits(self, entries: list[_Entry]) -> None:
        """Let Octavia's API commit what it holds of these entries' load balancers first, when
        the library can wait for that (in-process: ``InProcessDriverLibrary.wait_for_commits``;
        over the sockets the driver agent's fork gives the API that time, mostly)."""
        wait = getattr(self.library, "wait_for_commits", None)
        lb_ids = sorted({e.record["id"] for e in entries if e.kind == "loadbalancers"})
        if wait is None or not lb_ids:
            return
        try:
            wait(lb_ids)
        except Exception as exc:  # a lock wait timeout, the database away: write anyway
            LOG.warning("lbactors: could not wait for Octavia's commits of %s: %s", lb_ids, exc)

    def _flush_loop(self) -> None:
        """Writes every queued batch together, one driver agent call at a time: each call
        costs the driver agent a fork and a database session (~0.2 s), whatever it holds."""
        while True:
            with self._queue_changed:
                while not self._queue and not self._closed:
                    self._queue_changed.wait()
                if not self._queue:
                    return
                batches, self._queue = self._queue, []
            try:
                failed = self._write_all([entry for batch in batches for entry in batch.entries])
            except Exception:  # never let the flusher die: all of them again later
                LOG.exception("lbactors: status write failed")
                failed = {id(entry) for batch in batches for entry in batch.entries}
            for batch in batches:
                batch.later = [entry for entry in batch.entries if id(entry) in failed]
                batch.done.set()

    def _write_all(self, ready: list[_Entry]) -> set[int]:
        """Write ``ready`` in one status dict (no two entries of one id: each writer holds its
        ids' locks until its batch is done); the ``id()`` of the entries not written."""
        ready = list(ready)
        failed: set[int] = set()
        while ready:
            status: dict[str, list[dict[str, Any]]] = {}
            for entry in ready:
                status.setdefault(entry.kind, []).append(dict(entry.record))
            with self._state:
                self.batches += 1
            try:
                self.library.update_loadbalancer_status(status)
            except lib_exc.UpdateStatusError as exc:
                named = next(
                    (
                        e
                        for e in ready
                        if e.kind == exc.status_object and e.record["id"] == exc.status_object_id
                    ),
                    None,
                )
                if named is None:
                    # nothing named (the driver agent unreachable, a broken reply): all again later
                    LOG.warning("lbactors: status update failed: %s", exc.fault_string)
                    failed.update(id(entry) for entry in ready)
                    return failed
                # the entries before it were applied, the others not: write them again without it
                # (writing a status twice is harmless)
                LOG.info(
                    "lbactors: %s %s not writable yet (%s); retrying it",
                    named.kind,
                    named.record["id"],
                    exc.fault_string,
                )
                ready.remove(named)
                failed.add(id(named))
                continue
            self._remember(ready)
            break
        return failed

    def _defer(self, entry: _Entry) -> None:
        entry.attempts += 1
        if entry.attempts >= self.attempts:
            with self._state:
                self.dropped += 1
            LOG.error(
                "lbactors: dropping the status of %s %s after %d tries: Octavia does not have "
                "the object (never committed, or deleted): %s",
                entry.kind,
                entry.record["id"],
                entry.attempts,
                entry.record,
            )
            return
        delay = min(self.initial_delay * 2 ** (entry.attempts - 1), self.max_delay)
        entry.due = self.clock() + delay
        with self._state:
            self._pending[entry.key] = entry
        with self._changed:
            self._changed.notify_all()

    def _retry_loop(self) -> None:
        """Hands each due entry to the retry threads once (``_scheduled`` until it ran)."""
        scheduled: set[tuple[str, str]] = set()
        done: list[tuple[str, str]] = []
        done_lock = threading.Lock()

        def retry(key: tuple[str, str]) -> None:
            try:
                self._retry(key)
            except Exception:  # never let a retry thread die
                LOG.exception("lbactors: status retry failed")
            finally:
                with done_lock:
                    done.append(key)
                with self._changed:
                    self._changed.notify_all()

        while True:
            with done_lock:
                scheduled.difference_update(done)
                done.clear()
            with self._changed:
                if self._closed:
                    return
                now = self.clock()
                with self._state:
                    dues = {key: entry.due for key, entry in self._pending.items()}
                due = [key for key, when in dues.items() if when <= now and key not in scheduled]
                if not due:
                    later = [when for key, when in dues.items() if key not in scheduled]
                    # woken by a new entry, a finished retry or the next due time
                    self._changed.wait(min(later) - now if later else None)
                    continue
            for key in due:
                scheduled.add(key)
                try:
                    self._retry_pool.submit(retry, key)
                except RuntimeError:  # shut down
                    return

    def _retry(self, key: tuple[str, str]) -> None:
        with self._locked([key]):
            with self._state:
                entry = self._pending.get(key)
                if entry is None or entry.due > self.clock():
                    return  # written or replaced by a newer status meanwhile
                del self._pending[key]
                self.retried += 1
            self._try([entry])


def octavia_active_loadbalancers(provider: str) -> list[str]:
    """Ids of ``provider``'s ACTIVE load balancers, read from Octavia's database.

    octavia-lib's DriverLibrary has no listing, so this uses Octavia's own repositories, as
    vmware-nsx's agent does; it runs inside octavia-driver-agent, where Octavia is installed.
    """
    from octavia.db import api as db_api  # only inside Octavia
    from octavia.db import repositories

    session = db_api.get_session()
    try:
        with session.begin():
            lbs, _ = repositories.LoadBalancerRepository().get_all(
                session, provider=provider, provisioning_status="ACTIVE"
            )
            return [lb.id for lb in lbs]
    finally:
        session.close()


class ProviderAgentEndpoint:
    """What ``lbactors serve`` casts (and calls) on the driver topic."""

    target = messaging.Target(namespace="control", version="1.0")

    def __init__(
        self,
        library: Any,
        writer: StatusWriter,
        active_loadbalancers: Callable[[], list[str]],
    ) -> None:
        self._library = library
        self._writer = writer
        self._active_loadbalancers = active_loadbalancers

    def update_loadbalancer_status(self, ctxt: Any, status: dict[str, Any]) -> None:
        reassertion = isinstance(ctxt, dict) and ctxt.get("lbactors_reassertion") is True
        self._writer.write(status, reassertion=reassertion)

    def update_listener_statistics(self, ctxt: Any, statistics: dict[str, Any]) -> None:
        listeners = [s for s in (statistics or {}).get("listeners") or [] if isinstance(s, dict)]
        # a listener Octavia refuses (deleted meanwhile) must not cost the others their counters
        while listeners:
            try:
                self._library.update_listener_statistics(
                    {"listeners": [dict(s) for s in listeners]}
                )
                return
            except lib_exc.UpdateStatisticsError as exc:
                bad = next((s for s in listeners if s.get("id") == exc.stats_object_id), None)
                LOG.warning(
                    "lbactors: listener statistics refused for %s: %s",
                    exc.stats_object_id,
                    exc.fault_string,
                )
                if bad is None:
                    return
                listeners.remove(bad)

    def get_active_loadbalancers(self, ctxt: Any) -> list[str]:
        return self._active_loadbalancers()


def serve_agent(
    exit_event: Any,
    *,
    conf: cfg.ConfigOpts,
    transport: Any,
    library: Any,
    active_loadbalancers: Callable[[], list[str]] | None = None,
    server: str | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Run the agent's RPC server until ``exit_event`` is set, then stop it cleanly."""
    options = register_opts(conf)
    writer = StatusWriter(
        library,
        attempts=options.status_retry_attempts,
        initial_delay=options.status_retry_initial_delay,
        max_delay=options.status_retry_max_delay,
    )
    if active_loadbalancers is None:
        provider = options.provider_name

        def active_loadbalancers() -> list[str]:
            return octavia_active_loadbalancers(provider)

    endpoint = ProviderAgentEndpoint(library, writer, active_loadbalancers)
    target = messaging.Target(
        topic=options.driver_topic,
        server=server or socket.gethostname(),
        exchange=options.exchange,
        fanout=False,
    )
    rpc_server = messaging.get_rpc_server(
        transport,
        target,
        [endpoint],
        executor="threading",
        access_policy=messaging.DefaultRPCAccessPolicy,
    )
    writer.start()
    rpc_server.start()
    LOG.info("lbactors provider agent started on topic %s", options.driver_topic)
    if ready is not None:
        ready.set()
    logged = counters(writer, library)
    try:
        while not exit_event.wait(1):
            now = counters(writer, library)
            if now != logged:  # at most one line a second, only when something was retried
                LOG.info("lbactors provider agent counters: %s", _spelled(now))
                logged = now
    finally:
        LOG.info("lbactors provider agent is stopping")
        rpc_server.stop()
        rpc_server.wait()
        writer.close()
        LOG.info("lbactors provider agent stopped: %s", _spelled(counters(writer, library)))


def counters(writer: StatusWriter, library: Any) -> dict[str, int]:
    """What the agent retried: status entries of uncommitted objects (``retried`` tries,
    ``dropped`` entries), the status writes made (``batches``: concurrent statuses are written
    together), the re-asserted entries not written again (``reassertions_skipped``), and
    driver agent calls made again because its listen backlog was full (``busy_retries``;
    ``busy_failures``: calls that gave up, see lbactors.octavia.busy)."""
    return {
        "retried": writer.retried,
        "dropped": writer.dropped,
        "batches": writer.batches,
        "reassertions_skipped": writer.skipped,
        "busy_retries": getattr(library, "busy_retries", 0),
        "busy_failures": getattr(library, "busy_failures", 0),
    }


def _spelled(values: dict[str, int]) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items())


def lbactors_provider_agent(exit_event: Any) -> None:
    """Entry point of ``octavia.driver_agent.provider_agents``: runs until ``exit_event``."""
    from lbactors.octavia.driver import driver_library, in_process_library, rpc_transport

    conf = cfg.CONF
    options = register_opts(conf)
    library = in_process_library(conf, options.agent_writes)
    if library is None:
        LOG.info("lbactors: the provider agent writes through the driver agent's sockets")
        library = driver_library(conf)
    else:
        LOG.info("lbactors: the provider agent writes Octavia's database in this process")
    serve_agent(exit_event, conf=conf, transport=rpc_transport(conf), library=library)
