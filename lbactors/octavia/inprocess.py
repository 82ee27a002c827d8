"""octavia-lib's ``DriverLibrary``, answered in this process by the code Octavia's driver agent
runs behind its sockets.

The driver agent serves every ``DriverLibrary`` call on a unix socket with a forking server: each
call forks a process that opens a database session (about 0.2 s on 2 CPUs), and the sockets
accept 5 waiting connections. lbactors' driver (inside octavia-api) and provider agent (a
process the driver agent forks) both run where Octavia's database is configured, so they can run
that same code themselves: ``driver_get.process_get`` for the lookups and
``driver_updater.DriverUpdater`` for the status and statistics writes, each answer taken through
the same JSON round trip and the same error mapping as ``DriverLibrary``. Only the transport
differs: no fork, no socket, no backlog.

Imports Octavia: only inside Octavia's processes (``[lbactors] parent_lookup`` and
``agent_writes``, ``auto`` by default, choose it when Octavia's database is configured).
"""

from __future__ import annotations

from typing import Any

from octavia.api.drivers.driver_agent import driver_get, driver_updater  # only inside Octavia
from octavia.db import api as db_api
from octavia.db import models
from octavia_lib.api.drivers import data_models
from octavia_lib.api.drivers import exceptions as lib_exc
from octavia_lib.common import constants as lib_consts
from oslo_config import cfg
from oslo_serialization import jsonutils

#: the get socket's object names and the data models DriverLibrary builds from its answers
_MODELS = {
    "loadbalancers": data_models.LoadBalancer,
    "listeners": data_models.Listener,
    "pools": data_models.Pool,
    "members": data_models.Member,
    "healthmonitors": data_models.HealthMonitor,
    "l7policies": data_models.L7Policy,
    "l7rules": data_models.L7Rule,
}


def _round_trip(value: Any) -> Any:
    """What crossing the socket does to a value (``jsonutils.dump_as_bytes`` then ``loads``)."""
    return jsonutils.loads(jsonutils.dump_as_bytes(value))


def octavia_database_configured(conf: cfg.ConfigOpts) -> bool:
    """Whether Octavia's database is configured in this process (octavia-api and the driver
    agent register ``[database]`` and set its connection; other processes have none)."""
    try:
        return bool(conf.database.connection)
    except (cfg.NoSuchOptError, AttributeError):
        return False


class InProcessDriverLibrary:
    """``DriverLibrary``'s methods that lbactors uses, without the driver agent's sockets."""

    # ------------------------------------------------------------------ lookups

    def _get(self, kind: str, object_id: str) -> Any:
        found = driver_get.process_get({"object": kind, "id": object_id})
        if not found:
            return None
        return _MODELS[kind].from_dict(_round_trip(found))

    def get_loadbalancer(self, loadbalancer_id: str) -> Any:
        return self._get("loadbalancers", loadbalancer_id)

    def get_listener(self, listener_id: str) -> Any:
        return self._get("listeners", listener_id)

    def get_pool(self, pool_id: str) -> Any:
        return self._get("pools", pool_id)

    def get_member(self, member_id: str) -> Any:
        return self._get("members", member_id)

    def get_healthmonitor(self, healthmonitor_id: str) -> Any:
        return self._get("healthmonitors", healthmonitor_id)

    def get_l7policy(self, l7policy_id: str) -> Any:
        return self._get("l7policies", l7policy_id)

    def get_l7rule(self, l7rule_id: str) -> Any:
        return self._get("l7rules", l7rule_id)

    # ------------------------------------------------------------------ writes

    def wait_for_commits(self, loadbalancer_ids: list[str]) -> None:
        """Return once no open transaction holds these load balancers' rows.

        Octavia's API locks the load balancer row (or inserts it), sets the objects of the
        operation PENDING_*, calls the driver and only then commits. A status written in
        between reads those rows from its snapshot: the repositories that load an object and
        set its fields (an L7 policy's, for one) see ``ACTIVE`` there, find nothing changed,
        and write nothing, so the API's PENDING_UPDATE stays once it commits. A share-mode
        read of the load balancer rows waits for the API's commit (at most
        ``innodb_lock_wait_timeout``), so the write that follows sees the committed rows."""
        if not loadbalancer_ids:
            return
        session = db_api.get_session()
        try:
            with session.begin():
                session.query(models.LoadBalancer.id).filter(
                    models.LoadBalancer.id.in_(sorted(set(loadbalancer_ids)))
                ).with_for_update(read=True).all()
        finally:
            session.close()

    def update_loadbalancer_status(self, status: dict[str, Any]) -> None:
        """As ``DriverLibrary.update_loadbalancer_status``: UpdateStatusError naming the
        object whose update failed (the entries before it are applied, as over the socket)."""
        try:
            response = driver_updater.DriverUpdater().update_loadbalancer_status(
                _round_trip(status)
            )
        except Exception as exc:
            raise lib_exc.UpdateStatusError(fault_string=str(exc)) from exc
        response = _round_trip(response)
        if response[lib_consts.STATUS_CODE] != lib_consts.DRVR_STATUS_CODE_OK:
            raise lib_exc.UpdateStatusError(
                fault_string=response.pop(lib_consts.FAULT_STRING, None),
                status_object=response.pop(lib_consts.STATUS_OBJECT, None),
                status_object_id=response.pop(lib_consts.STATUS_OBJECT_ID, None),
                status_record=response.pop(lib_consts.STATUS_RECORD, None),
            )

    def update_listener_statistics(self, statistics: dict[str, Any]) -> None:
        """As ``DriverLibrary.update_listener_statistics``."""
        try:
            response = driver_updater.DriverUpdater().update_listener_statistics(
                _round_trip(statistics)
            )
        except Exception as exc:
            raise lib_exc.UpdateStatisticsError(
                fault_string=str(exc), stats_object=lib_consts.LISTENERS
            ) from exc
        response = _round_trip(response)
        if response[lib_consts.STATUS_CODE] != lib_consts.DRVR_STATUS_CODE_OK:
            raise lib_exc.UpdateStatisticsError(
                fault_string=response.pop(lib_consts.FAULT_STRING, None),
                stats_object=response.pop(lib_consts.STATS_OBJECT, None),
                stats_object_id=response.pop(lib_consts.STATS_OBJECT_ID, None),
                stats_record=response.pop(lib_consts.STATS_RECORD, None),
            )
