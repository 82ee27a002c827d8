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
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from collections.abc import Callable
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


class StatusWriter:
    """Writes status dicts through ``library`` (a DriverLibrary), retrying uncommitted entries.

    All writes, first tries and retries, run one at a time (a lock), so the entries of one id
    reach Octavia in the order the daemon sent them. :meth:`start` runs the retry thread,
    :meth:`close` stops it (pending entries are dropped with a log line).
    """

    def __init__(
        self,
        library: Any,
        *,
        attempts: int = 5,
        initial_delay: float = 0.5,
        max_delay: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.library = library
        self.attempts = attempts
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.clock = clock
        self._write_lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Entry] = {}
        self._changed = threading.Condition()
        self._known: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._closed = False
        self._thread: threading.Thread | None = None
        #: counters, for logs and tests
        self.retried = 0
        self.dropped = 0

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
        if self._thread is not None:
            self._thread.join(timeout)
        with self._write_lock:
            for entry in self._pending.values():
                LOG.warning(
                    "lbactors: dropping the pending status of %s %s at shutdown",
                    entry.kind,
                    entry.record["id"],
                )
            self._pending.clear()

    def pending(self) -> list[tuple[str, str]]:
        with self._write_lock:
            return list(self._pending)

    def write(self, status: dict[str, Any]) -> None:
        """Write ``status`` now; entries of uncommitted objects are retried later."""
        entries = self._entries(status)
        if not entries:
            return
        with self._write_lock:
            for entry in entries:
                older = self._pending.pop(entry.key, None)
                if older is not None:
                    # the newer fields win; the older entry's other fields still have to land
                    entry.record = {**older.record, **entry.record}
            self._try(entries)

    # ------------------------------------------------------------------ internals

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
        if getter is None or entry.key in self._known:
            return True  # listeners and L7 objects: the update itself names a missing one
        try:
            found = getattr(self.library, getter)(entry.record["id"])
        except Exception as exc:  # the get socket failed: write it anyway, unconfirmed
            LOG.warning(
                "lbactors: could not look up %s %s: %s", entry.kind, entry.record["id"], exc
            )
            return True
        return bool(found)

    def _remember(self, entries: list[_Entry]) -> None:
        for entry in entries:
            if entry.record.get("provisioning_status") == "DELETED":
                self._known.pop(entry.key, None)
            else:
                self._known[entry.key] = None
                self._known.move_to_end(entry.key)
        while len(self._known) > KNOWN_IDS:
            self._known.popitem(last=False)

    def _try(self, entries: list[_Entry]) -> None:
        """One try of ``entries`` (the write lock held)."""
        ready: list[_Entry] = []
        later: list[_Entry] = []
        for entry in entries:
            (ready if self._committed(entry) else later).append(entry)
        while ready:
            status: dict[str, list[dict[str, Any]]] = {}
            for entry in ready:
                status.setdefault(entry.kind, []).append(dict(entry.record))
            try:
                self.library.update_loadbalancer_status(status)
            except lib_exc.UpdateStatusError as exc:
                failed = next(
                    (
                        e
                        for e in ready
                        if e.kind == exc.status_object and e.record["id"] == exc.status_object_id
                    ),
                    None,
                )
                if failed is None:
                    # nothing named (the driver agent unreachable, a broken reply): all again later
                    LOG.warning("lbactors: status update failed: %s", exc.fault_string)
                    later.extend(ready)
                    break
                # the entries before it were applied, the others not: write them again without it
                # (writing a status twice is harmless)
                LOG.info(
                    "lbactors: %s %s not writable yet (%s); retrying it",
                    failed.kind,
                    failed.record["id"],
                    exc.fault_string,
                )
                ready.remove(failed)
                later.append(failed)
                continue
            self._remember(ready)
            break
        for entry in later:
            self._defer(entry)

    def _defer(self, entry: _Entry) -> None:
        entry.attempts += 1
        if entry.attempts >= self.attempts:
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
        self._pending[entry.key] = entry
        with self._changed:
            self._changed.notify_all()

    def _retry_loop(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                now = self.clock()
                dues = [entry.due for entry in list(self._pending.values())]
                if not dues:
                    self._changed.wait()
                    continue
                if min(dues) > now:
                    self._changed.wait(min(dues) - now)
                    continue
            with self._write_lock:
                now = self.clock()
                due = [entry for entry in self._pending.values() if entry.due <= now]
                for entry in due:
                    del self._pending[entry.key]
                if due:
                    self.retried += len(due)
                    try:
                        self._try(due)
                    except Exception:  # never let the retry thread die
                        LOG.exception("lbactors: status retry failed")


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
        self._writer.write(status)

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
    ``dropped`` entries), and driver agent calls made again because its listen backlog was
    full (``busy_retries``; ``busy_failures``: calls that gave up, see lbactors.octavia.busy)."""
    return {
        "retried": writer.retried,
        "dropped": writer.dropped,
        "busy_retries": getattr(library, "busy_retries", 0),
        "busy_failures": getattr(library, "busy_failures", 0),
    }


def _spelled(values: dict[str, int]) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items())


def lbactors_provider_agent(exit_event: Any) -> None:
    """Entry point of ``octavia.driver_agent.provider_agents``: runs until ``exit_event``."""
    from lbactors.octavia.driver import driver_library, rpc_transport

    conf = cfg.CONF
    serve_agent(exit_event, conf=conf, transport=rpc_transport(conf), library=driver_library(conf))
