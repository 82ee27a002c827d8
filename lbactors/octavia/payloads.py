"""The RPC payloads of every driver operation, shaped exactly as vmware-nsx's driver shapes them.

vmware-nsx's ``NSXOctaviaDriver.obj_to_dict`` (``vmware_nsx/services/lbaas/octavia/
octavia_driver.py``; ``octavia-and-oslo-facts.md`` §2.3, §2.5 has the payloads it produces)
turns an octavia-lib data model into a dict with ``to_dict(recurse=True, render_unsets=True)``
(``render_unsets=False`` for the sparse new object of an update), writes ``project_id`` and
``tenant_id``, adds ``id`` and nests the parents it reads from Octavia's database. The same here,
step by step. The parents come from a :class:`Parents`: octavia-lib's ``DriverLibrary.get_*``
(the driver agent's get socket) or, inside octavia-api, the same get code run in-process
(:mod:`lbactors.octavia.inprocess`). Both answer with
``provider_model.to_dict(recurse=True, render_unsets=True)`` of the same database rows vmware-nsx
converts, so the nested dicts are the same.

One deliberate difference: vmware-nsx deletes the keys its NSX backend cannot use (listener
``sni_container_refs``, ``insert_headers``, ``timeout_client_data``, ``timeout_member_connect``,
``timeout_member_data``, ``timeout_tcp_inspect``; health monitor ``max_retries_down``; member
``monitor_address``, ``monitor_port``). lbactors' haproxy backend uses them, so they stay; the
daemon reads them when present and does without them when vmware-nsx's driver leaves them out.

Pure apart from the parent lookups (the ``Parents`` protocol); no RPC here.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

#: keys holding a nested object: ``to_dict(recurse=False)`` renders a nested model as None,
#: and the get socket hands nested models over as dicts
_NESTED_OBJECT_KEYS = (
    "default_pool",
    "healthmonitor",
    "loadbalancer",
    "listener",
    "pool",
    "policy",
)


class Parents(Protocol):
    """Where parents come from: octavia-lib's ``DriverLibrary`` has exactly these methods,
    each returning an octavia-lib data model or None when the row is not (yet) committed."""

    def get_loadbalancer(self, loadbalancer_id: str) -> Any: ...

    def get_listener(self, listener_id: str) -> Any: ...

    def get_pool(self, pool_id: str) -> Any: ...

    def get_healthmonitor(self, healthmonitor_id: str) -> Any: ...

    def get_l7policy(self, l7policy_id: str) -> Any: ...


def _full(model: Any) -> dict[str, Any]:
    return model.to_dict(recurse=True, render_unsets=True)


def _shallow(model: Any) -> dict[str, Any]:
    """``model.to_dict(recurse=False, render_unsets=True)``: lists and nested objects are None."""
    flat: dict[str, Any] = model.to_dict(recurse=False, render_unsets=True)
    for key in _NESTED_OBJECT_KEYS:
        if isinstance(flat.get(key), dict):
            flat[key] = None
    return flat


def _value(value: Any) -> Any:
    """An attribute of a data model, octavia-lib's ``Unset`` as None."""
    return None if type(value).__name__ == "UnsetType" else value


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def certificate(listener: dict[str, Any]) -> dict[str, Any] | None:
    """The ``cert`` kwarg of ``listener_create`` / ``listener_update``: ``{ref, certificate,
    private_key, passphrase}`` from ``default_tls_container_ref`` / ``_data`` (vmware-nsx
    since ``1305e13d7``), plus ``intermediates`` when the container has a chain (the haproxy
    backend serves it; the daemon's ``Certificate`` reads it); None without a certificate."""
    data = listener.get("default_tls_container_data")
    if not data:
        return None
    if not isinstance(data, dict):  # a bare PEM bundle
        return {
            "ref": listener.get("default_tls_container_ref"),
            "certificate": _text(data),
            "private_key": None,
            "passphrase": None,
        }
    cert = {
        "ref": listener.get("default_tls_container_ref"),
        "certificate": _text(data.get("certificate")),
        "private_key": _text(data.get("private_key")),
        "passphrase": _text(data.get("passphrase")),
    }
    intermediates = data.get("intermediates")
    if intermediates:
        cert["intermediates"] = [_text(i) for i in intermediates]
    return cert


class PayloadBuilder:
    """``obj_to_dict`` and the parent dicts, with parents read from ``parents``."""

    def __init__(self, parents: Parents) -> None:
        self.parents = parents

    # ------------------------------------------------------------------ parents

    def project_id_of(self, obj_dict: dict[str, Any]) -> str | None:
        """The object's own project, else the project of the parent it names."""
        if obj_dict.get("project_id"):
            return obj_dict["project_id"]
        if obj_dict.get("tenant_id"):
            return obj_dict["tenant_id"]
        lookups = (
            ("loadbalancer_id", self.parents.get_loadbalancer),
            ("pool_id", self.parents.get_pool),
            ("listener_id", self.parents.get_listener),
            ("l7policy_id", self.parents.get_l7policy),
        )
        for key, get in lookups:
            if obj_dict.get(key):
                parent = get(obj_dict[key])
                project_id = getattr(parent, "project_id", None) if parent else None
                if project_id:
                    return project_id
        return None

    def loadbalancer_dict(self, loadbalancer_id: str | None) -> dict[str, Any] | None:
        """The small load balancer dict nested in listeners, pools and members."""
        if not loadbalancer_id:
            return None
        lb = self.parents.get_loadbalancer(loadbalancer_id)
        if not lb:
            return None
        lb_dict: dict[str, Any] = {"name": _value(lb.name), "id": loadbalancer_id}
        for key in ("vip_port_id", "vip_address", "vip_network_id", "vip_subnet_id"):
            lb_dict[key] = _value(getattr(lb, key, None))
        listeners = []
        for listener in lb.listeners or []:
            listener_dict = dict(listener) if isinstance(listener, dict) else _full(listener)
            flat = {
                key: (None if isinstance(value, list) or key in _NESTED_OBJECT_KEYS else value)
                for key, value in listener_dict.items()
            }
            flat["allowed_cidrs"] = listener_dict.get("allowed_cidrs")
            listeners.append(flat)
        lb_dict["listeners"] = listeners
        return lb_dict

    def _listener_in_pool(self, pool_dict: dict[str, Any], is_update: bool) -> None:
        if "listener" in pool_dict:
            return
        listener = (
            self.parents.get_listener(pool_dict["listener_id"])
            if pool_dict.get("listener_id")
            else None
        )
        if listener:
            listener_dict = _shallow(listener)
            listener_dict["id"] = listener_dict["listener_id"]
            listener_dict["l7_policies"] = listener_dict["l7policies"]
            if pool_dict.get("loadbalancer_id"):
                listener_dict["loadbalancer"] = self.loadbalancer_dict(pool_dict["loadbalancer_id"])
            pool_dict["listener"] = listener_dict
            pool_dict.setdefault("listeners", [listener_dict])
        elif not is_update:
            # an update keeps the old object's listener (the new dict overlays the old one)
            pool_dict["listener"] = None
            pool_dict.setdefault("listeners", [])

    def pool_dict(
        self, pool_id: str | None, is_update: bool, parent_project_id: str | None = None
    ) -> dict[str, Any]:
        if not pool_id:
            return {}
        pool = self.parents.get_pool(pool_id)
        if not pool:
            return {}
        pool_dict = _full(pool)
        pool_dict["id"] = pool_id
        if pool_dict.get("loadbalancer_id"):
            pool_dict["loadbalancer"] = self.loadbalancer_dict(pool_dict["loadbalancer_id"])
        self._listener_in_pool(pool_dict, is_update)
        if not pool_dict.get("project_id"):
            project_id = self.project_id_of(pool_dict) or parent_project_id
            pool_dict["tenant_id"] = pool_dict["project_id"] = project_id
        for member in pool_dict.get("members") or []:
            member["id"] = member["member_id"]
        return pool_dict

    def healthmonitor_dict(self, healthmonitor_id: str | None, is_update: bool) -> dict[str, Any]:
        if not healthmonitor_id:
            return {}
        hm = self.parents.get_healthmonitor(healthmonitor_id)
        if not hm:
            return {}
        hm_dict = _full(hm)
        hm_dict["id"] = healthmonitor_id
        if hm_dict.get("pool_id"):
            hm_dict["pool"] = self.pool_dict(hm_dict["pool_id"], is_update)
        return hm_dict

    def _policy_parents(self, policy_dict: dict[str, Any], rules: Any, is_update: bool) -> None:
        if policy_dict.get("listener_id"):
            listener = self.parents.get_listener(policy_dict["listener_id"])
            if listener:
                listener_dict = _full(listener)
                listener_dict["id"] = policy_dict["listener_id"]
                policy_dict["listener"] = listener_dict
        if rules:
            policy_dict["rules"] = []
            for rule in rules:
                rule_dict = dict(rule) if isinstance(rule, dict) else _shallow(rule)
                rule_dict["id"] = rule_dict["l7rule_id"]
                policy_dict["rules"].append(rule_dict)
        elif not is_update:
            policy_dict["rules"] = []

    # ------------------------------------------------------------------ obj_to_dict

    def obj_to_dict(
        self, obj: Any, is_update: bool = False, project_id: str | None = None
    ) -> dict[str, Any]:
        """vmware-nsx's ``obj_to_dict``: the object, its ids, its project and its parents."""
        obj_type = type(obj).__name__
        obj_dict: dict[str, Any] = obj.to_dict(recurse=True, render_unsets=not is_update)
        if not project_id:
            project_id = self.project_id_of(obj_dict)
        obj_dict["tenant_id"] = obj_dict["project_id"] = project_id
        if "id" not in obj_dict:
            obj_dict["id"] = obj_dict.get(f"{obj_type.lower()}_id")
        if not obj_dict.get("name") and not is_update:
            obj_dict["name"] = ""

        if obj_type == "LoadBalancer":
            self._loadbalancer_children(obj_dict, is_update, project_id)
        elif obj_type == "Listener":
            if "l7policies" in obj_dict:
                obj_dict["l7_policies"] = obj_dict["l7policies"]
            if obj_dict.get("loadbalancer_id"):
                obj_dict["loadbalancer"] = self.loadbalancer_dict(obj_dict["loadbalancer_id"])
            if obj_dict.get("default_pool_id"):
                obj_dict["default_pool"] = self.pool_dict(
                    obj_dict["default_pool_id"], is_update, project_id
                )
        elif obj_type == "Pool":
            self._listener_in_pool(obj_dict, is_update)
            if obj_dict.get("loadbalancer_id"):
                obj_dict["loadbalancer"] = self.loadbalancer_dict(obj_dict["loadbalancer_id"])
            if obj_dict.get("healthmonitor"):
                obj_dict["healthmonitor"]["id"] = obj_dict["healthmonitor"]["healthmonitor_id"]
            for member in obj_dict.get("members") or []:
                member["id"] = member["member_id"]
        elif obj_type == "Member":
            if obj_dict.get("pool_id"):
                obj_dict["pool"] = self.pool_dict(obj_dict["pool_id"], is_update)
                obj_dict["loadbalancer"] = obj_dict["pool"].get("loadbalancer")
                if obj_dict["loadbalancer"] and not obj_dict.get("subnet_id"):
                    obj_dict["subnet_id"] = obj_dict["loadbalancer"].get("vip_subnet_id")
            elif not is_update:
                # an update keeps the old member's pool and load balancer
                obj_dict["pool"] = None
                obj_dict["loadbalancer"] = None
        elif obj_type == "HealthMonitor":
            if obj_dict.get("pool_id"):
                obj_dict["pool"] = self.pool_dict(obj_dict["pool_id"], is_update)
        elif obj_type == "L7Policy":
            self._policy_parents(obj_dict, getattr(obj, "rules", None), is_update)
        elif obj_type == "L7Rule":
            self._rule_policy(obj_dict, is_update)
        return obj_dict

    def _loadbalancer_children(
        self, obj_dict: dict[str, Any], is_update: bool, project_id: str | None
    ) -> None:
        if "listeners" in obj_dict:
            if is_update and not obj_dict["listeners"]:
                del obj_dict["listeners"]
            else:
                obj_dict["listeners"] = obj_dict["listeners"] or []
                for listener in obj_dict["listeners"]:
                    listener["id"] = listener["listener_id"]
                    # Octavia 19 hands a cascade delete rows whose l7policies may be None
                    for policy in listener.get("l7policies") or []:
                        policy["id"] = policy["l7policy_id"]
                        for rule in policy.get("rules") or []:
                            rule["id"] = rule["l7rule_id"]
        if "pools" in obj_dict:
            if is_update and not obj_dict["pools"]:
                del obj_dict["pools"]
            else:
                obj_dict["pools"] = obj_dict["pools"] or []
                for pool in obj_dict["pools"]:
                    pool["id"] = pool["pool_id"]
                    for member in pool.get("members") or []:
                        member["id"] = member["member_id"]
                    if pool.get("healthmonitor"):
                        pool["healthmonitor"] = self.healthmonitor_dict(
                            pool["healthmonitor"]["healthmonitor_id"], is_update
                        )
                    pool["tenant_id"] = project_id

    def _rule_policy(self, obj_dict: dict[str, Any], is_update: bool) -> None:
        policy_id = obj_dict.get("l7policy_id")
        policy = self.parents.get_l7policy(policy_id) if policy_id else None
        if not policy:
            return
        policy_dict = _full(policy)
        policy_dict["id"] = policy_id
        self._policy_parents(policy_dict, policy.rules, is_update)
        # Octavia calls the driver before it commits: a new rule is not among its policy's
        # rules yet (vmware-nsx 5728c6945)
        rules = policy_dict.get("rules") or []
        if not any(rule.get("id") == obj_dict["id"] for rule in rules):
            policy_dict["rules"] = [*rules, copy.deepcopy(obj_dict)]
        obj_dict["policy"] = policy_dict

    def update_pair(self, old: Any, new: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(old_X, new_X)`` of an update: the new one is the old one overlaid with the change."""
        old_dict = self.obj_to_dict(old)
        new_dict = copy.deepcopy(old_dict)
        new_dict.update(
            self.obj_to_dict(new, is_update=True, project_id=old_dict.get("project_id"))
        )
        return old_dict, new_dict
