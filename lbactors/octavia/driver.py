"""``LbactorsProviderDriver``: Octavia's provider driver for ``lbactors serve``.

Runs inside octavia-api (entry point ``octavia.api.drivers: lbactors``). Every CRUD operation is
an oslo.messaging **cast** on ``Target(topic=[lbactors] topic, exchange=[lbactors] exchange,
namespace='control', version='1.0')`` with the method names and kwargs of vmware-nsx's
``NSXOctaviaDriver`` (``octavia-and-oslo-facts.md`` §2.2) and its payloads
(:mod:`lbactors.octavia.payloads`), so one daemon serves this driver or vmware-nsx's alike.
Flavor and availability-zone metadata and validation are RPC **calls** answered by the daemon's
backend, mapped onto octavia-lib's exceptions.

What the driver refuses itself: nothing about protocols or algorithms, because the backend is
chosen in ``lbactors serve``'s configuration, not here. An object the backend cannot build (the
haproxy backend and a UDP, SCTP or PROMETHEUS listener, for instance) goes to ERROR through the
daemon's status, with its parents back to ACTIVE (``status-semantics.md``). A flavor or
availability zone the backend does not know is refused at once, through the calls.

Octavia creates the driver per API request, so the oslo transport is one per process and so
is the parents source, opened when a payload first needs a parent: inside octavia-api (Octavia's
database configured) the driver agent's own get code runs in-process
(:mod:`lbactors.octavia.inprocess`),
elsewhere octavia-lib's DriverLibrary asks the driver agent (``[lbactors] parent_lookup``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import oslo_messaging as messaging
from octavia_lib.api.drivers import data_models, driver_lib, provider_base
from octavia_lib.api.drivers import exceptions as lib_exc
from oslo_config import cfg

from lbactors.octavia.busy import BusyRetrying
from lbactors.octavia.config import register_opts
from lbactors.octavia.payloads import Parents, PayloadBuilder, certificate

LOG = logging.getLogger(__name__)

_transport_lock = threading.Lock()
_transports: dict[int, Any] = {}


def rpc_transport(conf: cfg.ConfigOpts) -> Any:
    """The process's one oslo transport for ``conf`` (octavia.conf's ``transport_url``)."""
    with _transport_lock:
        transport = _transports.get(id(conf))
        if transport is None:
            transport = _transports[id(conf)] = messaging.get_rpc_transport(conf)
        return transport


def driver_library(conf: cfg.ConfigOpts) -> BusyRetrying:
    """octavia-lib's DriverLibrary on the driver agent's sockets (``[driver_agent]`` of
    octavia.conf when Octavia registered it, octavia-lib's defaults otherwise), its calls
    retried while the driver agent's listen backlog is full (:mod:`lbactors.octavia.busy`)."""
    kwargs = {}
    try:
        agent = conf.driver_agent
        kwargs = {
            "status_socket": agent.status_socket_path,
            "stats_socket": agent.stats_socket_path,
            "get_socket": agent.get_socket_path,
        }
    except (cfg.NoSuchOptError, AttributeError):
        pass
    return BusyRetrying(driver_lib.DriverLibrary(**kwargs))


def parent_lookup(conf: cfg.ConfigOpts, choice: str) -> Parents:
    """The parents source ``[lbactors] parent_lookup`` asks for (see its help)."""
    library = in_process_library(conf, choice)
    if library is not None:
        LOG.info("lbactors: parent lookups read Octavia's database in this process")
        return library
    LOG.info("lbactors: parent lookups ask the driver agent (get socket)")
    return driver_library(conf)


def in_process_library(conf: cfg.ConfigOpts, choice: str) -> Any:
    """:class:`~lbactors.octavia.inprocess.InProcessDriverLibrary` when ``choice`` asks for the
    database (``database``; ``auto``: when Octavia's database is configured in this process),
    else None. ``database`` without Octavia installed raises ImportError."""
    if choice == "driver_agent":
        return None
    try:
        from lbactors.octavia import inprocess
    except ImportError:
        if choice == "database":
            raise
        return None
    if choice == "auto" and not inprocess.octavia_database_configured(conf):
        return None
    return inprocess.InProcessDriverLibrary()


class _LazyParents:
    """The parents source opened on first use: a DriverLibrary's constructor waits (up to
    minutes) for the driver agent's sockets, and most operations never need it more than once
    per request."""

    def __init__(self, conf: cfg.ConfigOpts, choice: str) -> None:
        self._conf = conf
        self._choice = choice
        self._library: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._library is None:
            self._library = _shared_parents(self._conf, self._choice)
        return getattr(self._library, name)


_parents_lock = threading.Lock()
_parents: dict[tuple[int, str], Parents] = {}


def _shared_parents(conf: cfg.ConfigOpts, choice: str) -> Parents:
    """One parents source per process and configuration: Octavia creates the driver per API
    request."""
    with _parents_lock:
        found = _parents.get((id(conf), choice))
        if found is None:
            found = _parents[(id(conf), choice)] = parent_lookup(conf, choice)
        return found


def _unreachable(method: str, topic: str, exc: Exception) -> lib_exc.DriverError:
    return lib_exc.DriverError(
        user_fault_string="The lbactors load-balancer backend could not be reached; "
        "try again later.",
        operator_fault_string=f"lbactors: {method} to topic {topic!r} failed: "
        f"{type(exc).__name__}: {exc}",
    )


class LbactorsProviderDriver(provider_base.ProviderDriver):
    """The provider driver. ``conf``, ``transport`` and ``parents`` are for tests and tools;
    Octavia constructs it without arguments."""

    name = "lbactors"

    def __init__(
        self,
        *,
        conf: cfg.ConfigOpts | None = None,
        transport: Any = None,
        parents: Parents | None = None,
    ) -> None:
        super().__init__()
        self.conf = cfg.CONF if conf is None else conf
        self.options = register_opts(self.conf)
        self.transport = rpc_transport(self.conf) if transport is None else transport
        target = messaging.Target(
            topic=self.options.topic,
            exchange=self.options.exchange,
            namespace="control",
            fanout=False,
            version="1.0",
        )
        self.client = messaging.get_rpc_client(self.transport, target)
        self.payloads = PayloadBuilder(
            _LazyParents(self.conf, self.options.parent_lookup) if parents is None else parents
        )

    # ------------------------------------------------------------------ RPC

    def _cast(self, method: str, **kwargs: Any) -> None:
        try:
            self.client.cast({}, method, **kwargs)
        except Exception as exc:
            raise _unreachable(method, self.options.topic, exc) from exc

    def _call(self, method: str, **kwargs: Any) -> Any:
        client = self.client.prepare(timeout=self.options.rpc_timeout)
        try:
            return client.call({}, method, **kwargs)
        except messaging.MessagingTimeout as exc:
            raise lib_exc.DriverError(
                user_fault_string="The lbactors load-balancer backend did not answer in time; "
                "try again later.",
                operator_fault_string=f"lbactors: no reply to {method} from lbactors serve on "
                f"topic {self.options.topic!r} within {self.options.rpc_timeout} s",
            ) from exc
        except messaging.RemoteError as exc:
            raise lib_exc.DriverError(
                user_fault_string=f"The lbactors backend failed to answer {method}.",
                operator_fault_string=f"lbactors: {method} failed in lbactors serve: "
                f"{exc.exc_type}: {exc.value}",
            ) from exc
        except Exception as exc:
            raise _unreachable(method, self.options.topic, exc) from exc

    def _checked_metadata(self, method: str) -> dict[str, str]:
        reply = self._call(method)
        if reply is None:
            raise lib_exc.NotImplementedError(
                operator_fault_string=f"lbactors: the backend answered {method} with nothing"
            )
        if not isinstance(reply, dict):
            raise lib_exc.DriverError(
                user_fault_string=f"The lbactors backend gave an invalid answer to {method}.",
                operator_fault_string=f"lbactors: {method} returned {reply!r}",
            )
        return reply

    def _checked_validation(self, method: str, what: str, **kwargs: Any) -> None:
        reply = self._call(method, **kwargs)
        if reply is None:
            raise lib_exc.NotImplementedError(
                operator_fault_string=f"lbactors: the backend answered {method} with nothing"
            )
        if not isinstance(reply, dict) or not isinstance(reply.get("valid"), bool):
            raise lib_exc.DriverError(
                user_fault_string=f"The lbactors backend gave an invalid answer to {method}.",
                operator_fault_string=f"lbactors: {method} returned {reply!r}",
            )
        if not reply["valid"]:
            reason = str(reply.get("reason") or f"the backend refuses this {what}")
            raise lib_exc.UnsupportedOptionError(
                user_fault_string=reason,
                operator_fault_string=f"lbactors: {what} refused by the backend: {reason}",
            )

    # ------------------------------------------------------------------ load balancer

    def create_vip_port(
        self,
        loadbalancer_id: str,
        project_id: str,
        vip_dictionary: dict[str, Any],
        additional_vip_dicts: list[dict[str, Any]] | None = None,
    ) -> Any:
        """Octavia allocates the VIP port itself (octavia-lib: raise NotImplementedError)."""
        raise lib_exc.NotImplementedError(
            user_fault_string="lbactors does not create VIP ports; Octavia allocates them.",
            operator_fault_string="lbactors does not create VIP ports; Octavia allocates them.",
        )

    def loadbalancer_create(self, loadbalancer: Any) -> None:
        self._cast("loadbalancer_create", loadbalancer=self.payloads.obj_to_dict(loadbalancer))

    def loadbalancer_delete(self, loadbalancer: Any, cascade: bool = False) -> None:
        self._cast(
            "loadbalancer_delete",
            loadbalancer=self.payloads.obj_to_dict(loadbalancer),
            cascade=bool(cascade),
        )

    def loadbalancer_update(self, old_loadbalancer: Any, new_loadbalancer: Any) -> None:
        old, new = self.payloads.update_pair(old_loadbalancer, new_loadbalancer)
        self._cast("loadbalancer_update", old_loadbalancer=old, new_loadbalancer=new)

    # ------------------------------------------------------------------ listener

    def listener_create(self, listener: Any) -> None:
        listener_dict = self.payloads.obj_to_dict(listener)
        self._cast("listener_create", listener=listener_dict, cert=certificate(listener_dict))

    def listener_delete(self, listener: Any) -> None:
        self._cast("listener_delete", listener=self.payloads.obj_to_dict(listener))

    def listener_update(self, old_listener: Any, new_listener: Any) -> None:
        old, new = self.payloads.update_pair(old_listener, new_listener)
        self._cast("listener_update", old_listener=old, new_listener=new, cert=certificate(new))

    # ------------------------------------------------------------------ pool

    def pool_create(self, pool: Any) -> None:
        self._cast("pool_create", pool=self.payloads.obj_to_dict(pool))

    def pool_delete(self, pool: Any) -> None:
        self._cast("pool_delete", pool=self.payloads.obj_to_dict(pool))

    def pool_update(self, old_pool: Any, new_pool: Any) -> None:
        old, new = self.payloads.update_pair(old_pool, new_pool)
        self._cast("pool_update", old_pool=old, new_pool=new)

    # ------------------------------------------------------------------ member

    def member_create(self, member: Any) -> None:
        self._cast("member_create", member=self.payloads.obj_to_dict(member))

    def member_delete(self, member: Any) -> None:
        self._cast("member_delete", member=self.payloads.obj_to_dict(member))

    def member_update(self, old_member: Any, new_member: Any) -> None:
        old, new = self.payloads.update_pair(old_member, new_member)
        self._cast("member_update", old_member=old, new_member=new)

    def member_batch_update(self, pool_id: str, members: list[Any]) -> None:
        """The pool's members become ``members``: one ``member_delete`` for each committed
        member left out, one ``member_update`` for each one kept (Octavia set them all
        PENDING_UPDATE), one ``member_create`` for each new one, in that order, all on the
        pool's load balancer (one actor in the daemon runs them in order).

        vmware-nsx raises NotImplementedError here; the daemon has no batch method, so the
        batch is split into the casts both drivers send. Each cast's status also sets the
        pool, listener and load balancer ACTIVE, so Octavia unlocks the load balancer when the
        first of them is done, milliseconds before the last.
        """
        pool = self.payloads.parents.get_pool(pool_id)
        if pool is None:
            raise lib_exc.DriverError(
                user_fault_string=f"Pool {pool_id} was not found.",
                operator_fault_string=f"lbactors: member_batch_update: pool {pool_id} is not "
                "in Octavia's database (driver agent get socket)",
            )
        current: dict[str, Any] = {}
        for member in pool.members or []:
            member_dict = member if isinstance(member, dict) else member.to_dict()
            current[member_dict["member_id"]] = data_models.Member.from_dict(member_dict)
        wanted = {member.member_id: member for member in members}
        for member_id, old in current.items():
            if member_id not in wanted:
                self.member_delete(old)
        for member_id, new in wanted.items():
            if member_id in current:
                self.member_update(current[member_id], new)
        for member_id, new in wanted.items():
            if member_id not in current:
                self.member_create(new)

    # ------------------------------------------------------------------ health monitor

    def health_monitor_create(self, healthmonitor: Any) -> None:
        self._cast("healthmonitor_create", healthmonitor=self.payloads.obj_to_dict(healthmonitor))

    def health_monitor_delete(self, healthmonitor: Any) -> None:
        self._cast("healthmonitor_delete", healthmonitor=self.payloads.obj_to_dict(healthmonitor))

    def health_monitor_update(self, old_healthmonitor: Any, new_healthmonitor: Any) -> None:
        old, new = self.payloads.update_pair(old_healthmonitor, new_healthmonitor)
        self._cast("healthmonitor_update", old_healthmonitor=old, new_healthmonitor=new)

    # ------------------------------------------------------------------ L7 policy and rule

    def l7policy_create(self, l7policy: Any) -> None:
        self._cast("l7policy_create", l7policy=self.payloads.obj_to_dict(l7policy))

    def l7policy_delete(self, l7policy: Any) -> None:
        self._cast("l7policy_delete", l7policy=self.payloads.obj_to_dict(l7policy))

    def l7policy_update(self, old_l7policy: Any, new_l7policy: Any) -> None:
        old, new = self.payloads.update_pair(old_l7policy, new_l7policy)
        self._cast("l7policy_update", old_l7policy=old, new_l7policy=new)

    def l7rule_create(self, l7rule: Any) -> None:
        self._cast("l7rule_create", l7rule=self.payloads.obj_to_dict(l7rule))

    def l7rule_delete(self, l7rule: Any) -> None:
        self._cast("l7rule_delete", l7rule=self.payloads.obj_to_dict(l7rule))

    def l7rule_update(self, old_l7rule: Any, new_l7rule: Any) -> None:
        old, new = self.payloads.update_pair(old_l7rule, new_l7rule)
        self._cast("l7rule_update", old_l7rule=old, new_l7rule=new)

    # ------------------------------------------------------------------ flavors and AZs

    def get_supported_flavor_metadata(self) -> dict[str, str]:
        return self._checked_metadata("get_supported_flavor_metadata")

    def validate_flavor(self, flavor_metadata: dict[str, Any]) -> None:
        self._checked_validation("validate_flavor", "flavor", flavor_metadata=flavor_metadata)

    def get_supported_availability_zone_metadata(self) -> dict[str, str]:
        return self._checked_metadata("get_supported_availability_zone_metadata")

    def validate_availability_zone(self, availability_zone_metadata: dict[str, Any]) -> None:
        self._checked_validation(
            "validate_availability_zone",
            "availability zone",
            availability_zone_metadata=availability_zone_metadata,
        )
