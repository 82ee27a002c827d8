"""The Octavia side's workload, as pure functions: what to cast, what must come back.

This is ``shared/baseline/octavia_driver_sim.py`` without oslo.messaging: the same plan of
14 + K operations per load balancer (``loadbalancer_create``, ``listener_create`` with
``cert=None``, ``pool_create``, ``member_create`` × K, ``healthmonitor_create``,
``l7policy_create``, ``l7rule_create``, one update of each kind, then
``loadbalancer_delete(cascade=True)`` with the whole tree), payloads shaped like vmware-nsx's
``NSXOctaviaDriver.obj_to_dict()`` output, and the sim's matching and validation rules:

* a status update completes the pending operation whose object ``(type, id)`` appears in it
  with a ``provisioning_status``;
* ``ERROR`` is an ``error_status``; anything else but the expected status (``ACTIVE``, or
  ``DELETED`` for the cascade delete), a parent that is not back to ``ACTIVE``, or a cascade
  that does not report exactly the tree's objects as ``DELETED`` is a ``validation_error``.

Two rules are stricter than the sim's, both from ``status-semantics.md``: an object listed
twice under one key is a validation error ("duplicate ids are listed once"), and a cascade
delete must report the tree's own ids as ``DELETED``, not merely as many of them.

No I/O, no trio: :mod:`bench.driver` puts this on the wire.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from lbactors.amqp import oslo

ACTIVE = "ACTIVE"
DELETED = "DELETED"
ERROR = "ERROR"
PROV = "provisioning_status"

#: the plural keys of an ``update_loadbalancer_status`` dict
STATUS_KEYS = (
    "loadbalancers", "listeners", "pools", "members", "healthmonitors", "l7policies", "l7rules",
)

#: octavia_driver.py: keys the provider driver strips before casting
UNSUPPORTED_KEYS = {
    "LoadBalancer": ("vip_qos_policy_id",),
    "Listener": (
        "sni_container_refs", "insert_headers", "timeout_client_data", "timeout_member_connect",
        "timeout_member_data", "timeout_tcp_inspect",
    ),
    "HealthMonitor": ("max_retries_down",),
    "Member": ("monitor_address", "monitor_port"),
}

_json = msgspec.json.Encoder()


def _uuid() -> str:
    return str(uuid.uuid4())


def _strip(obj_type: str, d: dict[str, Any]) -> dict[str, Any]:
    for key in UNSUPPORTED_KEYS.get(obj_type, ()):
        d.pop(key, None)
    return d


def operations_per_lb(members: int, updates: bool = True, *, resident: bool = False) -> int:
    """14 + K with updates (13 + K when K = 0), 7 + K without; ``resident`` drops the delete."""
    n = 3 + members + 3 + 1
    if updates:
        n += 6 + (1 if members else 0)
    return n - 1 if resident else n


class Operation:
    """One cast and what its status update must say.

    ``parents``: ``(type, id)`` that must be ``ACTIVE`` in the same status dict;
    ``cascade``: for a cascade delete, type -> the ids that must be ``DELETED``.
    """

    __slots__ = ("lb", "method", "args_json", "otype", "oid", "expect", "parents", "cascade",
                 "t_sent", "body")

    def __init__(
        self,
        lb: LoadBalancerPlan | TemplatedPlan | None,
        method: str,
        args_json: bytes,
        otype: str,
        oid: str,
        expect: str,
        parents: Sequence[tuple[str, str]] = (),
        cascade: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self.lb = lb
        self.method = method
        self.args_json = args_json
        self.otype = otype
        self.oid = oid
        self.expect = expect
        self.parents = tuple(parents)
        self.cascade = cascade
        self.t_sent = 0.0
        #: the whole cast (oslo envelope), when it was rendered from a template
        self.body: bytes | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.otype, self.oid)

    def __repr__(self) -> str:
        return f"Operation({self.method} {self.otype} {self.oid})"


def new_identity(idx: int, members: int) -> dict[str, str]:
    """The ids and idx-derived values of one load balancer tree (uuid4s, as Octavia's)."""
    ids = {
        "label": str(idx),
        "vip_address": f"10.{(idx >> 16) & 255}.{(idx >> 8) & 255}.{(idx & 255) or 1}",
        "project_id": _uuid().replace("-", ""),
    }
    for name in ("lb_id", "vip_port_id", "vip_network_id", "vip_subnet_id",
                 "member_subnet_id", "listener_id", "pool_id"):
        ids[name] = _uuid()
    for i in range(members):
        ids[f"member_{i}"] = _uuid()
    for name in ("hm_id", "policy_id", "rule_id"):
        ids[name] = _uuid()
    return ids


class LoadBalancerPlan:
    """One load balancer tree as the Octavia DB would hold it, and its operations in order.

    The payload builders are those of the sim's ``LBTree`` (themselves shaped like
    ``NSXOctaviaDriver.obj_to_dict()`` and its helpers); an operation's payload is built only
    when it is due, from the tree as it is then, as Octavia would read it from its DB.
    """

    def __init__(self, idx: int, members: int, updates: bool = True, *,
                 resident: bool = False, ids: dict[str, str] | None = None) -> None:
        self.idx = idx
        self.n_members = members
        if ids is None:
            ids = new_identity(idx, members)
        self.label = ids["label"]
        self.project_id = ids["project_id"]
        self.lb_id = ids["lb_id"]
        self.vip_port_id = ids["vip_port_id"]
        self.vip_network_id = ids["vip_network_id"]
        self.vip_subnet_id = ids["vip_subnet_id"]
        self.member_subnet_id = ids["member_subnet_id"]
        self.vip_address = ids["vip_address"]
        self.listener_id = ids["listener_id"]
        self.pool_id = ids["pool_id"]
        self.member_ids = [ids[f"member_{i}"] for i in range(members)]
        self.hm_id = ids["hm_id"]
        self.policy_id = ids["policy_id"]
        self.rule_id = ids["rule_id"]
        self.has: set[str] = set()
        self.n_created_members = 0
        self.lb_name = f"lb-{self.label}"
        self.lb_description = ""
        self.listener_conn_limit = -1
        self.pool_algorithm = "ROUND_ROBIN"
        self.member_weight = [1] * members
        self.hm_delay = 5
        self.policy_position = 1
        self.rule_value = "/api"
        self.plan = self._plan(updates, resident)
        self.step = 0

    # ---- plan -----------------------------------------------------------------------
    def _plan(self, updates: bool, resident: bool) -> list[Callable[[], Operation]]:
        plan: list[Callable[[], Operation]] = [
            self.op_loadbalancer_create, self.op_listener_create, self.op_pool_create,
        ]
        plan += [self._member_create_op(i) for i in range(self.n_members)]
        plan += [self.op_healthmonitor_create, self.op_l7policy_create, self.op_l7rule_create]
        if updates:
            plan += [self.op_loadbalancer_update, self.op_listener_update, self.op_pool_update]
            if self.n_members:
                plan.append(self.op_member_update)
            plan += [self.op_healthmonitor_update, self.op_l7policy_update,
                     self.op_l7rule_update]
        if not resident:
            plan.append(self.op_loadbalancer_delete_cascade)
        return plan

    @property
    def finished(self) -> bool:
        return self.step >= len(self.plan)

    def next_operation(self) -> Operation:
        """The operation due now (call :meth:`advance` once its status update arrived)."""
        return self.plan[self.step]()

    def advance(self) -> bool:
        """Mark the current operation done; True when the plan is finished."""
        self.step += 1
        return self.step >= len(self.plan)

    # ---- DB views -------------------------------------------------------------------
    def lb_base(self) -> dict[str, Any]:
        return {
            "admin_state_up": True, "availability_zone": None, "description": self.lb_description,
            "flavor": {}, "listeners": None, "loadbalancer_id": self.lb_id, "name": self.lb_name,
            "pools": None, "project_id": self.project_id, "vip_address": self.vip_address,
            "vip_network_id": self.vip_network_id, "vip_port_id": self.vip_port_id,
            "vip_qos_policy_id": None, "vip_subnet_id": self.vip_subnet_id,
        }

    def listener_base(self) -> dict[str, Any]:
        return {
            "admin_state_up": True, "allowed_cidrs": None, "alpn_protocols": None,
            "client_authentication": "NONE", "client_ca_tls_container_data": None,
            "client_ca_tls_container_ref": None, "client_crl_container_data": None,
            "client_crl_container_ref": None, "connection_limit": self.listener_conn_limit,
            "default_pool": None,
            "default_pool_id": self.pool_id if "pool" in self.has else None,
            "default_tls_container_data": None, "default_tls_container_ref": None,
            "description": "", "insert_headers": {}, "l7policies": None,
            "listener_id": self.listener_id, "loadbalancer_id": self.lb_id,
            "name": f"listener-{self.label}", "project_id": self.project_id, "protocol": "HTTP",
            "protocol_port": 80, "sni_container_data": None, "sni_container_refs": None,
            "timeout_client_data": 50000, "timeout_member_connect": 5000,
            "timeout_member_data": 50000, "timeout_tcp_inspect": 0, "tls_ciphers": None,
            "tls_versions": None,
        }

    def pool_base(self) -> dict[str, Any]:
        return {
            "admin_state_up": True, "alpn_protocols": None, "ca_tls_container_data": None,
            "ca_tls_container_ref": None, "crl_container_data": None, "crl_container_ref": None,
            "description": "", "healthmonitor": None, "lb_algorithm": self.pool_algorithm,
            "listener_id": self.listener_id, "loadbalancer_id": self.lb_id, "members": None,
            "name": f"pool-{self.label}", "pool_id": self.pool_id, "project_id": self.project_id,
            "protocol": "HTTP", "session_persistence": None, "tls_ciphers": None,
            "tls_container_data": None, "tls_container_ref": None, "tls_enabled": False,
            "tls_versions": None,
        }

    def member_base(self, i: int) -> dict[str, Any]:
        return {
            "address": f"192.168.{(i >> 8) & 255}.{(i & 255) + 10}",
            "admin_state_up": True, "backup": False, "member_id": self.member_ids[i],
            "monitor_address": None, "monitor_port": None, "name": f"member-{i}",
            "pool_id": self.pool_id, "project_id": self.project_id, "protocol_port": 8080,
            "subnet_id": self.member_subnet_id, "weight": self.member_weight[i],
        }

    def hm_base(self) -> dict[str, Any]:
        return {
            "admin_state_up": True, "delay": self.hm_delay, "domain_name": None,
            "expected_codes": "200", "healthmonitor_id": self.hm_id, "http_method": "GET",
            "http_version": 1.0, "max_retries": 3, "max_retries_down": 3,
            "name": f"hm-{self.label}", "pool_id": self.pool_id, "project_id": self.project_id,
            "timeout": 3, "type": "HTTP", "url_path": "/healthz",
        }

    def policy_base(self) -> dict[str, Any]:
        return {
            "action": "REJECT", "admin_state_up": True, "description": "",
            "l7policy_id": self.policy_id, "listener_id": self.listener_id,
            "name": f"policy-{self.label}", "position": self.policy_position,
            "project_id": self.project_id, "redirect_http_code": None, "redirect_pool_id": None,
            "redirect_prefix": None, "redirect_url": None, "rules": None,
        }

    def rule_base(self) -> dict[str, Any]:
        return {
            "admin_state_up": True, "compare_type": "STARTS_WITH", "invert": False, "key": None,
            "l7policy_id": self.policy_id, "l7rule_id": self.rule_id,
            "project_id": self.project_id, "type": "PATH", "value": self.rule_value,
        }

    def rule_dict(self) -> dict[str, Any]:
        d = self.rule_base()
        d["id"] = self.rule_id
        return d

    def policy_recursive(self) -> dict[str, Any]:
        d = self.policy_base()
        d["rules"] = [self.rule_dict()] if "rule" in self.has else []
        return d

    def listener_recursive(self) -> dict[str, Any]:
        d = self.listener_base()
        d["default_pool"] = self.pool_base() if "pool" in self.has else None
        d["l7policies"] = [self.policy_recursive()] if "policy" in self.has else []
        d["sni_container_refs"] = []
        return d

    def lb_summary(self) -> dict[str, Any]:
        # NSXOctaviaDriver._get_load_balancer_dict()
        d: dict[str, Any] = {
            "name": self.lb_name, "id": self.lb_id, "vip_port_id": self.vip_port_id,
            "vip_address": self.vip_address, "vip_network_id": self.vip_network_id,
            "vip_subnet_id": self.vip_subnet_id,
        }
        listeners = []
        if "listener" in self.has:
            ld = self.listener_base()
            ld["allowed_cidrs"] = None
            listeners.append(ld)
        d["listeners"] = listeners
        return d

    def members_db(self) -> list[dict[str, Any]]:
        out = []
        for i in range(self.n_created_members):
            m = self.member_base(i)
            m["id"] = m["member_id"]
            out.append(m)
        return out

    def _listener_with_lb(self) -> dict[str, Any]:
        ld = self.listener_base()
        ld["id"] = ld["listener_id"]
        ld["l7_policies"] = ld["l7policies"]
        ld["loadbalancer"] = self.lb_summary()
        return ld

    def pool_db(self) -> dict[str, Any]:
        # NSXOctaviaDriver._get_pool_dict(pool_id)
        d = self.pool_base()
        d["members"] = self.members_db()
        d["healthmonitor"] = self.hm_base() if "hm" in self.has else None
        d["id"] = self.pool_id
        d["loadbalancer"] = self.lb_summary()
        ld = self._listener_with_lb()
        d["listener"] = ld
        d["listeners"] = [ld]
        return d

    def hm_db(self) -> dict[str, Any]:
        # NSXOctaviaDriver._get_hm_dict(hm_id)
        d = self.hm_base()
        d["id"] = self.hm_id
        d["pool"] = self.pool_db()
        return d

    # ---- primary objects (obj_to_dict) ----------------------------------------------
    def _ids(self, d: dict[str, Any], obj_id: str) -> dict[str, Any]:
        d["tenant_id"] = d["project_id"] = self.project_id
        d["id"] = obj_id
        return d

    def lb_primary(self, tree: bool = False) -> dict[str, Any]:
        d = self._ids(_strip("LoadBalancer", self.lb_base()), self.lb_id)
        d["listeners"] = []
        d["pools"] = []
        if tree:
            if "listener" in self.has:
                ld = self.listener_recursive()
                ld["id"] = self.listener_id
                for policy in ld["l7policies"]:
                    policy["id"] = policy["l7policy_id"]
                    for rule in policy["rules"]:
                        rule["id"] = rule["l7rule_id"]
                d["listeners"].append(ld)
            if "pool" in self.has:
                pd = self.pool_base()
                pd["id"] = self.pool_id
                pd["members"] = self.members_db()
                pd["healthmonitor"] = self.hm_db() if "hm" in self.has else None
                pd["tenant_id"] = self.project_id
                d["pools"].append(pd)
        return d

    def listener_primary(self) -> dict[str, Any]:
        d = self._ids(_strip("Listener", self.listener_recursive()), self.listener_id)
        d["l7_policies"] = d["l7policies"]
        d["loadbalancer"] = self.lb_summary()
        if d.get("default_pool_id"):
            d["default_pool"] = self.pool_db()
        return d

    def pool_primary(self) -> dict[str, Any]:
        d = self._ids(self.pool_base(), self.pool_id)
        d["members"] = self.members_db()
        d["healthmonitor"] = None
        if "hm" in self.has:
            d["healthmonitor"] = self.hm_base()
            d["healthmonitor"]["id"] = self.hm_id
        ld = self._listener_with_lb()
        d["listener"] = ld
        d["listeners"] = [ld]
        d["loadbalancer"] = self.lb_summary()
        return d

    def member_primary(self, i: int) -> dict[str, Any]:
        d = self._ids(_strip("Member", self.member_base(i)), self.member_ids[i])
        d["pool"] = self.pool_db()
        d["loadbalancer"] = d["pool"]["loadbalancer"]
        return d

    def hm_primary(self) -> dict[str, Any]:
        d = self._ids(_strip("HealthMonitor", self.hm_base()), self.hm_id)
        d["pool"] = self.pool_db()
        return d

    def policy_primary(self) -> dict[str, Any]:
        d = self._ids(self.policy_recursive(), self.policy_id)
        ld = self.listener_recursive()
        ld["id"] = self.listener_id
        d["listener"] = ld
        return d

    def rule_primary(self) -> dict[str, Any]:
        d = self._ids(self.rule_base(), self.rule_id)
        policy = self.policy_recursive()
        policy["id"] = self.policy_id
        ld = self.listener_recursive()
        ld["id"] = self.listener_id
        policy["listener"] = ld
        if self.rule_id not in [r["l7rule_id"] for r in policy["rules"]]:
            # octavia_driver.py deep-copies the rule into its policy; a JSON round trip of
            # the flat copy is the same bytes on the wire
            policy["rules"].append(dict(d))
        d["policy"] = policy
        return d

    # ---- operations -----------------------------------------------------------------
    def _op(self, method: str, kwargs: dict[str, Any], otype: str, oid: str, expect: str = ACTIVE,
            parents: Sequence[tuple[str, str]] = (),
            cascade: dict[str, frozenset[str]] | None = None) -> Operation:
        return Operation(self, method, _json.encode(kwargs), otype, oid, expect, parents, cascade)

    def _lb(self) -> tuple[tuple[str, str], ...]:
        return (("loadbalancers", self.lb_id),)

    def _lb_listener(self) -> tuple[tuple[str, str], ...]:
        return (("loadbalancers", self.lb_id), ("listeners", self.listener_id))

    def _lb_listener_pool(self) -> tuple[tuple[str, str], ...]:
        return (("loadbalancers", self.lb_id), ("listeners", self.listener_id),
                ("pools", self.pool_id))

    def op_loadbalancer_create(self) -> Operation:
        self.has.add("lb")
        return self._op("loadbalancer_create", {"loadbalancer": self.lb_primary()},
                        "loadbalancers", self.lb_id)

    def op_listener_create(self) -> Operation:
        self.has.add("listener")
        return self._op("listener_create", {"listener": self.listener_primary(), "cert": None},
                        "listeners", self.listener_id, parents=self._lb())

    def op_pool_create(self) -> Operation:
        self.has.add("pool")
        return self._op("pool_create", {"pool": self.pool_primary()}, "pools", self.pool_id,
                        parents=self._lb_listener())

    def _member_create_op(self, i: int) -> Callable[[], Operation]:
        def op() -> Operation:
            self.n_created_members = i + 1
            return self._op("member_create", {"member": self.member_primary(i)}, "members",
                            self.member_ids[i], parents=self._lb_listener_pool())
        op.__name__ = f"op_member_create_{i}"
        return op

    def op_healthmonitor_create(self) -> Operation:
        self.has.add("hm")
        return self._op("healthmonitor_create", {"healthmonitor": self.hm_primary()},
                        "healthmonitors", self.hm_id, parents=self._lb_listener_pool())

    def op_l7policy_create(self) -> Operation:
        self.has.add("policy")
        return self._op("l7policy_create", {"l7policy": self.policy_primary()}, "l7policies",
                        self.policy_id, parents=self._lb_listener())

    def op_l7rule_create(self) -> Operation:
        self.has.add("rule")
        return self._op("l7rule_create", {"l7rule": self.rule_primary()}, "l7rules",
                        self.rule_id, parents=self._lb_listener() + (("l7policies",
                                                                      self.policy_id),))

    # updates: octavia_driver.py sends new = deepcopy(old) overlaid with the change; the new
    # view rebuilt after the change has the same content (as the sim does)
    def op_loadbalancer_update(self) -> Operation:
        old = self.lb_primary()
        self.lb_name = f"lb-{self.label}-renamed"
        self.lb_description = "updated by octavia_driver_sim"
        new = self.lb_primary()
        return self._op("loadbalancer_update",
                        {"old_loadbalancer": old, "new_loadbalancer": new},
                        "loadbalancers", self.lb_id)

    def op_listener_update(self) -> Operation:
        old = self.listener_primary()
        self.listener_conn_limit = 1000
        new = self.listener_primary()
        return self._op("listener_update", {"old_listener": old, "new_listener": new,
                                            "cert": None},
                        "listeners", self.listener_id, parents=self._lb())

    def op_pool_update(self) -> Operation:
        old = self.pool_primary()
        self.pool_algorithm = "LEAST_CONNECTIONS"
        new = self.pool_primary()
        return self._op("pool_update", {"old_pool": old, "new_pool": new}, "pools",
                        self.pool_id, parents=self._lb_listener())

    def op_member_update(self) -> Operation:
        old = self.member_primary(0)
        self.member_weight[0] = 5
        new = self.member_primary(0)
        return self._op("member_update", {"old_member": old, "new_member": new}, "members",
                        self.member_ids[0], parents=self._lb_listener_pool())

    def op_healthmonitor_update(self) -> Operation:
        old = self.hm_primary()
        self.hm_delay = 10
        new = self.hm_primary()
        return self._op("healthmonitor_update",
                        {"old_healthmonitor": old, "new_healthmonitor": new},
                        "healthmonitors", self.hm_id, parents=self._lb_listener_pool())

    def op_l7policy_update(self) -> Operation:
        old = self.policy_primary()
        self.policy_position = 2
        new = self.policy_primary()
        return self._op("l7policy_update", {"old_l7policy": old, "new_l7policy": new},
                        "l7policies", self.policy_id, parents=self._lb_listener())

    def op_l7rule_update(self) -> Operation:
        old = self.rule_primary()
        self.rule_value = "/api/v2"
        new = self.rule_primary()
        return self._op("l7rule_update", {"old_l7rule": old, "new_l7rule": new}, "l7rules",
                        self.rule_id,
                        parents=self._lb_listener() + (("l7policies", self.policy_id),))

    def cascade_tree(self) -> dict[str, frozenset[str]]:
        """The ids a cascade delete of the tree as it is now must report as DELETED."""
        def one(kind: str, oid: str) -> frozenset[str]:
            return frozenset((oid,)) if kind in self.has else frozenset()
        return {
            "listeners": one("listener", self.listener_id),
            "pools": one("pool", self.pool_id),
            "members": frozenset(self.member_ids[: self.n_created_members]),
            "healthmonitors": one("hm", self.hm_id),
            "l7policies": one("policy", self.policy_id),
            "l7rules": one("rule", self.rule_id),
        }

    def op_loadbalancer_delete_cascade(self) -> Operation:
        return self._op("loadbalancer_delete",
                        {"loadbalancer": self.lb_primary(tree=True), "cascade": True},
                        "loadbalancers", self.lb_id, DELETED, cascade=self.cascade_tree())


# ---- pre-rendered plans ---------------------------------------------------------------------

_TOKEN = re.compile(rb"@@([a-z0-9_]+)@@")
_UNIQUE_ID = re.compile(rb'(_unique_id\\":\\")[0-9a-f]{32}')


class PlanTemplate:
    """Every cast of a plan rendered once, with placeholders for the ids and the ``_unique_id``.

    A load balancer's operations then cost a join of byte strings instead of building nested
    dicts and encoding them twice (JSON, then the oslo envelope's JSON string): the same bytes
    as :class:`LoadBalancerPlan` would give with the same ids (see the tests), at a fraction of
    the driver's CPU. Ids, names and addresses contain nothing that JSON escapes.
    """

    def __init__(self, members: int, updates: bool = True, *, resident: bool = False) -> None:
        self.members = members
        tokens = {name: f"@@{name}@@" for name in new_identity(0, members)}
        self._names = {v: k for k, v in tokens.items()}
        plan = LoadBalancerPlan(0, members, updates, resident=resident, ids=tokens)
        self.steps: list[tuple[list[bytes | str], Operation]] = []
        while not plan.finished:
            op = plan.next_operation()
            plan.advance()
            body = _UNIQUE_ID.sub(rb"\1@@unique_id@@", oslo.encode_cast(op.method, op.args_json))
            pieces = _TOKEN.split(body)
            parts: list[bytes | str] = [
                piece if i % 2 == 0 else piece.decode() for i, piece in enumerate(pieces)
            ]
            op.lb = None
            self.steps.append((parts, op))

    def __len__(self) -> int:
        return len(self.steps)

    def render(self, step: int, ids: dict[str, str], lb: TemplatedPlan | None = None
               ) -> Operation:
        parts, t = self.steps[step]
        values = {k: v.encode() for k, v in ids.items()}
        values["unique_id"] = uuid.uuid4().hex.encode()
        body = b"".join([p if isinstance(p, bytes) else values[p] for p in parts])
        sub = self._sub
        op = Operation(
            lb, t.method, b"", t.otype, sub(t.oid, ids), t.expect,
            [(ptype, sub(pid, ids)) for ptype, pid in t.parents],
            None if t.cascade is None else {
                k: frozenset(sub(i, ids) for i in v) for k, v in t.cascade.items()},
        )
        op.body = body
        return op

    def _sub(self, token: str, ids: dict[str, str]) -> str:
        return ids[self._names[token]]


class TemplatedPlan:
    """One load balancer played from a :class:`PlanTemplate` (same interface as the plan)."""

    __slots__ = ("idx", "ids", "step", "template")

    def __init__(self, idx: int, template: PlanTemplate) -> None:
        self.idx = idx
        self.template = template
        self.ids = new_identity(idx, template.members)
        self.step = 0

    @property
    def finished(self) -> bool:
        return self.step >= len(self.template)

    def next_operation(self) -> Operation:
        return self.template.render(self.step, self.ids, self)

    def advance(self) -> bool:
        self.step += 1
        return self.step >= len(self.template)


# ---- matching and validation ----------------------------------------------------------------

class Match:
    """What one status update did to the pending operations."""

    __slots__ = ("matched", "late", "has_prov")

    def __init__(self) -> None:
        self.matched: list[tuple[Operation, dict[str, Any]]] = []
        self.late = 0
        self.has_prov = False

    @property
    def kind(self) -> str | None:
        """None if it completed or late-completed something, else how to count it."""
        if self.matched or self.late:
            return None
        return "unmatched_status_updates" if self.has_prov else "operating_status_only_updates"


def match_status(
    status: Any,
    pending: dict[tuple[str, str], Operation],
    timed_out: dict[tuple[str, str], Operation],
) -> Match:
    """Pop every pending operation whose object appears in ``status`` with a provisioning status.

    An object of an operation that already timed out is removed from ``timed_out`` and
    counted as late. ``pending`` and ``timed_out`` are changed in place.
    """
    match = Match()
    if not isinstance(status, dict):
        return match
    for otype, entries in status.items():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict) or PROV not in entry:
                continue
            match.has_prov = True
            key = (otype, entry.get("id"))
            op = pending.pop(key, None)  # type: ignore[arg-type]
            if op is not None:
                match.matched.append((op, entry))
            elif key in timed_out:
                del timed_out[key]  # type: ignore[arg-type]
                match.late += 1
    return match


def _entries(status: dict[str, Any], otype: str) -> list[Any]:
    entries = status.get(otype)
    return entries if isinstance(entries, list) else []


def validate(op: Operation, entry: dict[str, Any], status: dict[str, Any]
             ) -> tuple[str | None, list[str]]:
    """``(None, [])`` if the status update is right for ``op``, else the kind and the problems.

    The kind is ``"error_status"`` (the object went to ERROR) or ``"validation_error"``.
    """
    got = entry.get(PROV)
    if got == ERROR:
        return "error_status", [f"{op.method} {op.oid} -> ERROR"]
    problems = []
    if got != op.expect:
        problems.append(f"{op.method} {op.oid}: {got} != {op.expect}")
    for ptype, pid in op.parents:
        if not any(isinstance(e, dict) and e.get("id") == pid and e.get(PROV) == ACTIVE
                   for e in _entries(status, ptype)):
            problems.append(f"{op.method}: parent {ptype} {pid} not ACTIVE")
    if op.cascade is not None:
        for ctype, ids in op.cascade.items():
            deleted = [e.get("id") for e in _entries(status, ctype)
                       if isinstance(e, dict) and e.get(PROV) == DELETED]
            if len(deleted) != len(ids):
                problems.append(f"{op.method} cascade: {len(deleted)} {ctype} DELETED, "
                                f"expected {len(ids)}")
            elif set(deleted) != ids:
                problems.append(f"{op.method} cascade: {ctype} DELETED {sorted(map(str, deleted))}"
                                f", expected {sorted(ids)}")
    for otype, entries in status.items():
        if not isinstance(entries, list):
            continue
        seen: set[Any] = set()
        for e in entries:
            oid = e.get("id") if isinstance(e, dict) else None
            if oid in seen:
                problems.append(f"{op.method}: {otype} {oid} listed twice")
            seen.add(oid)
    return ("validation_error" if problems else None), problems


# ---- latency figures ------------------------------------------------------------------------

def percentile(sorted_vals: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), as the sim computes it."""
    if not sorted_vals:
        return None
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = (len(sorted_vals) - 1) * q
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def latency_summary(vals_s: Iterable[float]) -> dict[str, float | int]:
    """``count``, ``p50``, ``p95``, ``p99``, ``mean``, ``min``, ``max`` in ms (the sim's fields)."""
    v = sorted(vals_s)
    if not v:
        return {"count": 0}
    ms = 1000.0

    def pct(q: float) -> float:
        value = percentile(v, q)
        assert value is not None
        return round(value * ms, 3)

    return {"count": len(v), "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
            "mean": round(sum(v) / len(v) * ms, 3), "min": round(v[0] * ms, 3),
            "max": round(v[-1] * ms, 3)}
