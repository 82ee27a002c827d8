"""A fake Octavia for the provider driver and agent tests: its database and driver agent.

:class:`FakeOctavia` holds committed rows as octavia-lib data models and answers like the
driver agent does (``octavia/api/drivers/driver_agent/driver_get.py`` and
``driver_updater.py``):

- ``get_<kind>(id)``: ``Model.from_dict(provider_model.to_dict(recurse=True,
  render_unsets=True))`` of the row with its children, or None when the row is not visible;
- ``update_loadbalancer_status(status)``: entries applied in the driver agent's order (members,
  health monitors, pools, L7 rules, L7 policies, listeners, load balancers); a DELETED entry
  deletes the row (the load balancer's is kept, DELETED); an entry for a row it cannot see is a
  silent no-op for load balancers, pools, members and health monitors, and an
  ``UpdateStatusError`` naming the object for listeners, L7 policies and L7 rules, which aborts
  the entries after it;
- ``update_listener_statistics(statistics)``: recorded; an unknown listener raises
  ``UpdateStatisticsError`` naming it.

Octavia's commit race: :meth:`hide` makes a committed row invisible to the agent's next N
attempts (a ``get_*`` for the four kinds the agent looks up first, an update for the others),
``math.inf`` for a row that is never committed. :meth:`parents` is the driver's view (the API
process reads its own session: no attempts counted).
"""

from __future__ import annotations

import copy
import math
import threading
from typing import Any

from octavia_lib.api.drivers import data_models as dm
from octavia_lib.api.drivers import exceptions as lib_exc

ORDER = ("members", "healthmonitors", "pools", "l7rules", "l7policies", "listeners", "loadbalancers")
#: kinds whose missing rows Octavia's driver agent updates silently (repository UPDATE of no row)
SILENT = ("members", "healthmonitors", "pools", "loadbalancers")

_KIND_OF = {
    dm.LoadBalancer: "loadbalancers",
    dm.Listener: "listeners",
    dm.Pool: "pools",
    dm.Member: "members",
    dm.HealthMonitor: "healthmonitors",
    dm.L7Policy: "l7policies",
    dm.L7Rule: "l7rules",
}
_ID_ATTR = {
    "loadbalancers": "loadbalancer_id",
    "listeners": "listener_id",
    "pools": "pool_id",
    "members": "member_id",
    "healthmonitors": "healthmonitor_id",
    "l7policies": "l7policy_id",
    "l7rules": "l7rule_id",
}


def _socket_copy(model: Any) -> Any:
    """What the driver agent's get socket hands back: from_dict of the rendered tree."""
    return type(model).from_dict(model.to_dict(recurse=True, render_unsets=True))


class FakeOctavia:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, dict[str, Any]] = {kind: {} for kind in ORDER}
        self.hidden: dict[str, float] = {}
        #: every status dict the agent wrote, as received
        self.status_writes: list[dict[str, Any]] = []
        #: id -> the status fields applied to it so far
        self.state: dict[str, dict[str, str]] = {}
        self.statistics: list[dict[str, Any]] = []
        self.gets: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ the test's side

    def commit(self, model: Any) -> None:
        kind = _KIND_OF[type(model)]
        with self.lock:
            self.rows[kind][getattr(model, _ID_ATTR[kind])] = copy.copy(model)

    def hide(self, object_id: str, attempts: float = math.inf) -> None:
        with self.lock:
            self.hidden[object_id] = attempts

    def status_of(self, object_id: str) -> dict[str, str] | None:
        with self.lock:
            return dict(self.state[object_id]) if object_id in self.state else None

    # ------------------------------------------------------------------ trees

    def _children(self, kind: str, attr: str, parent_id: str) -> list[Any]:
        return [row for row in self.rows[kind].values() if getattr(row, attr, None) == parent_id]

    def _policy(self, row: Any) -> Any:
        policy = copy.copy(row)
        policy.rules = [copy.copy(r) for r in self._children("l7rules", "l7policy_id", row.l7policy_id)]
        return policy

    def _pool(self, row: Any) -> Any:
        pool = copy.copy(row)
        pool.members = [copy.copy(m) for m in self._children("members", "pool_id", row.pool_id)]
        monitors = self._children("healthmonitors", "pool_id", row.pool_id)
        pool.healthmonitor = copy.copy(monitors[0]) if monitors else None
        return pool

    def _listener(self, row: Any) -> Any:
        listener = copy.copy(row)
        listener.l7policies = [
            self._policy(p) for p in self._children("l7policies", "listener_id", row.listener_id)
        ]
        pool = self.rows["pools"].get(row.default_pool_id) if row.default_pool_id else None
        listener.default_pool = self._pool(pool) if pool is not None else None
        return listener

    def _loadbalancer(self, row: Any) -> Any:
        lb = copy.copy(row)
        lb.listeners = [
            self._listener(li) for li in self._children("listeners", "loadbalancer_id", row.loadbalancer_id)
        ]
        lb.pools = [self._pool(p) for p in self._children("pools", "loadbalancer_id", row.loadbalancer_id)]
        return lb

    _TREE = {
        "loadbalancers": "_loadbalancer",
        "listeners": "_listener",
        "pools": "_pool",
        "l7policies": "_policy",
    }

    def _get(self, kind: str, object_id: str, *, attempt: bool) -> Any:
        with self.lock:
            if attempt:
                self.gets.append((kind, object_id))
                if not self._visible(object_id):
                    return None
            elif self.hidden.get(object_id, 0) > 0:
                return None  # the driver reads in a session of its own: uncommitted rows are not there
            row = self.rows[kind].get(object_id)
            if row is None:
                return None
            tree = getattr(self, self._TREE[kind])(row) if kind in self._TREE else row
            return _socket_copy(tree)

    def _visible(self, object_id: str) -> bool:
        """One attempt to see ``object_id`` (the lock held)."""
        left = self.hidden.get(object_id, 0)
        if left > 0:
            self.hidden[object_id] = left - 1
            return False
        return True

    # ------------------------------------------------------------------ DriverLibrary

    def get_loadbalancer(self, object_id: str) -> Any:
        return self._get("loadbalancers", object_id, attempt=True)

    def get_listener(self, object_id: str) -> Any:
        return self._get("listeners", object_id, attempt=True)

    def get_pool(self, object_id: str) -> Any:
        return self._get("pools", object_id, attempt=True)

    def get_member(self, object_id: str) -> Any:
        return self._get("members", object_id, attempt=True)

    def get_healthmonitor(self, object_id: str) -> Any:
        return self._get("healthmonitors", object_id, attempt=True)

    def get_l7policy(self, object_id: str) -> Any:
        return self._get("l7policies", object_id, attempt=True)

    def get_l7rule(self, object_id: str) -> Any:
        return self._get("l7rules", object_id, attempt=True)

    def update_loadbalancer_status(self, status: dict[str, Any]) -> None:
        with self.lock:
            self.status_writes.append(copy.deepcopy(status))
            for kind in ORDER:
                for record in status.get(kind, []):
                    self._apply(kind, record)

    def _apply(self, kind: str, record: dict[str, Any]) -> None:
        object_id = record["id"]
        if kind in SILENT:
            present = self.hidden.get(object_id, 0) == 0 and object_id in self.rows[kind]
        else:
            present = self._visible(object_id) and object_id in self.rows[kind]
        if not present:
            if record.get("provisioning_status") == "DELETED" or kind in SILENT:
                return  # ignored / an UPDATE of no row
            raise lib_exc.UpdateStatusError(
                fault_string=f"{kind[:-1]} {object_id} not found",
                status_object=kind,
                status_object_id=object_id,
            )
        fields = {k: v for k, v in record.items() if k in ("provisioning_status", "operating_status")}
        self.state.setdefault(object_id, {}).update(fields)
        if fields.get("provisioning_status") == "DELETED" and kind != "loadbalancers":
            del self.rows[kind][object_id]

    def update_listener_statistics(self, statistics: dict[str, Any]) -> None:
        with self.lock:
            for entry in statistics["listeners"]:
                if entry["id"] not in self.rows["listeners"]:
                    raise lib_exc.UpdateStatisticsError(
                        fault_string="listener not found",
                        stats_object="listeners",
                        stats_object_id=entry["id"],
                    )
            self.statistics.append(copy.deepcopy(statistics))

    # ------------------------------------------------------------------ the driver's view

    def parents(self) -> Any:
        return _ParentsView(self)


class _ParentsView:
    def __init__(self, octavia: FakeOctavia) -> None:
        self._octavia = octavia

    def get_loadbalancer(self, object_id: str) -> Any:
        return self._octavia._get("loadbalancers", object_id, attempt=False)

    def get_listener(self, object_id: str) -> Any:
        return self._octavia._get("listeners", object_id, attempt=False)

    def get_pool(self, object_id: str) -> Any:
        return self._octavia._get("pools", object_id, attempt=False)

    def get_healthmonitor(self, object_id: str) -> Any:
        return self._octavia._get("healthmonitors", object_id, attempt=False)

    def get_l7policy(self, object_id: str) -> Any:
        return self._octavia._get("l7policies", object_id, attempt=False)
