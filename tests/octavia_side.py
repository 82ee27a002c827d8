"""Octavia's side of the wire for end-to-end tests: the real oslo.messaging, as the driver uses it.

- :class:`OsloDriver` casts / calls operations with ``RPCClient`` on
  ``Target(topic, exchange='common', namespace='control', version='1.0')`` and receives our
  status and statistics casts with an oslo RPC server (threading executor, like the provider
  agent) whose endpoint has ``update_loadbalancer_status(ctxt, status)``.
- :class:`LoadBalancerTree` builds payloads shaped like ``NSXOctaviaDriver.obj_to_dict()`` and,
  independently of ``lbactors.status``, the status dict ``status-semantics.md`` promises for
  each operation (the oracle of the end-to-end tests).
"""

from __future__ import annotations

import copy
import queue
import threading
import uuid
import warnings
from typing import Any

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import oslo_messaging  # noqa: E402
from oslo_config import cfg  # noqa: E402

ACTIVE, DELETED, ONLINE = "ACTIVE", "DELETED", "ONLINE"
_conf_parsed = False


def _entry(obj_id: str, prov: str, oper: str | None = ONLINE) -> dict[str, str]:
    entry = {"id": obj_id, "provisioning_status": prov}
    if oper is not None:
        entry["operating_status"] = oper
    return entry


def oslo_conf() -> cfg.ConfigOpts:
    """``cfg.CONF``, parsed once per test process.

    oslo.messaging registers some options (tracing, metrics) on cfg.CONF only and reads them
    from the ConfigOpts it is given: use cfg.CONF, as the baseline driver does.
    """
    global _conf_parsed
    if not _conf_parsed:
        cfg.CONF([], project="lbactors-tests")
        _conf_parsed = True
    return cfg.CONF


class StatusEndpoint:
    target = oslo_messaging.Target(namespace="control", version="1.0")

    def __init__(self) -> None:
        self.statuses: queue.Queue[dict[str, Any]] = queue.Queue()
        self.statistics: queue.Queue[dict[str, Any]] = queue.Queue()
        self.active_lb_ids: list[str] = []

    def update_loadbalancer_status(self, ctxt: dict[str, Any], status: dict[str, Any]) -> None:
        self.statuses.put(status)

    def update_listener_statistics(self, ctxt: dict[str, Any], statistics: dict[str, Any]) -> None:
        self.statistics.put(statistics)

    def get_active_loadbalancers(self, ctxt: dict[str, Any]) -> list[str]:
        return list(self.active_lb_ids)


class OsloDriver:
    """The provider driver and provider agent, on the real oslo.messaging."""

    def __init__(
        self,
        url: str,
        *,
        topic: str,
        driver_topic: str,
        exchange: str = "common",
        endpoint: Any = None,
        durable_queues: bool = False,
    ) -> None:
        transport_url = url.replace("amqp://", "rabbit://", 1)
        self.conf = oslo_conf()
        self.transport = oslo_messaging.get_rpc_transport(self.conf, url=transport_url)
        # ``[oslo_messaging_rabbit] amqp_durable_queues``, read when a connection opens (the
        # driver registered the option above); cfg.CONF is global: cleared again by stop()
        self.durable_queues = durable_queues
        if durable_queues:
            self.conf.set_override("amqp_durable_queues", True, group="oslo_messaging_rabbit")
        target = oslo_messaging.Target(
            topic=topic, exchange=exchange, namespace="control", fanout=False, version="1.0"
        )
        self.client = oslo_messaging.get_rpc_client(self.transport, target)
        #: what receives our casts (``update_loadbalancer_status``, ...): a StatusEndpoint
        #: unless the test brings its own
        self.endpoint = StatusEndpoint() if endpoint is None else endpoint
        server_target = oslo_messaging.Target(
            topic=driver_topic, server="octavia-test", exchange=exchange, fanout=False
        )
        self.server = oslo_messaging.get_rpc_server(
            self.transport,
            server_target,
            [self.endpoint],
            executor="threading",
            access_policy=oslo_messaging.DefaultRPCAccessPolicy,
        )
        self._lock = threading.Lock()

    def start(self) -> OsloDriver:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.server.wait()
        self.transport.cleanup()
        if self.durable_queues:
            self.conf.clear_override("amqp_durable_queues", group="oslo_messaging_rabbit")

    def cast(self, method: str, **kwargs: Any) -> None:
        with self._lock:
            self.client.cast({}, method, **kwargs)

    def call(self, method: str, timeout: float = 30, **kwargs: Any) -> Any:
        return self.client.prepare(timeout=timeout).call({}, method, **kwargs)

    def next_status(self, timeout: float = 30) -> dict[str, Any]:
        return self.endpoint.statuses.get(timeout=timeout)


def _uuid() -> str:
    return str(uuid.uuid4())


class LoadBalancerTree:
    """One load balancer with a listener, a default pool, K members, a health monitor, an L7
    policy and rule; :meth:`lifecycle` yields every operation with the status dict it must get.

    ``fail_name``: the name of the last member instead of ``member-<i>``, so that a backend's
    ``fail_pattern`` / ``hang_pattern`` / ``crash_pattern`` can single out one object of one
    tree (the other objects' names repeat in every tree)."""

    def __init__(self, index: int, members: int = 2, *, fail_name: str | None = None) -> None:
        self.index = index
        self.fail_name = fail_name
        self.project_id = uuid.uuid4().hex
        self.lb_id, self.listener_id, self.pool_id = _uuid(), _uuid(), _uuid()
        self.member_ids = [_uuid() for _ in range(members)]
        self.hm_id, self.policy_id, self.rule_id = _uuid(), _uuid(), _uuid()

    # ------------------------------------------------------------------ payloads

    def lb(self) -> dict[str, Any]:
        return {
            "id": self.lb_id, "loadbalancer_id": self.lb_id, "name": f"lb-{self.index}",
            "description": "", "admin_state_up": True, "flavor": {}, "availability_zone": None,
            "project_id": self.project_id, "tenant_id": self.project_id,
            "listeners": [], "pools": [], "vip_address": f"10.0.{self.index // 250}.{self.index % 250 + 1}",
            "vip_port_id": _uuid(), "vip_network_id": _uuid(), "vip_subnet_id": _uuid(),
        }

    def lb_mini(self) -> dict[str, Any]:
        return {"id": self.lb_id, "name": f"lb-{self.index}", "vip_address": "10.0.0.1"}

    def listener(self) -> dict[str, Any]:
        return {
            "id": self.listener_id, "listener_id": self.listener_id, "loadbalancer_id": self.lb_id,
            "name": f"listener-{self.index}", "admin_state_up": True, "protocol": "HTTP",
            "protocol_port": 80, "connection_limit": -1, "default_pool_id": None,
            "default_pool": None, "l7policies": [], "project_id": self.project_id,
            "tenant_id": self.project_id, "loadbalancer": self.lb_mini(),
        }

    def pool(self) -> dict[str, Any]:
        listener = self.listener()
        return {
            "id": self.pool_id, "pool_id": self.pool_id, "loadbalancer_id": self.lb_id,
            "listener_id": self.listener_id, "name": f"pool-{self.index}", "admin_state_up": True,
            "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN", "session_persistence": None,
            "healthmonitor": None, "members": [], "project_id": self.project_id,
            "tenant_id": self.project_id, "listener": listener, "listeners": [listener],
            "loadbalancer": self.lb_mini(),
        }

    def member_name(self, i: int) -> str:
        if self.fail_name is not None and i == len(self.member_ids) - 1:
            return self.fail_name
        return f"member-{i}"

    def member(self, i: int) -> dict[str, Any]:
        return {
            "id": self.member_ids[i], "member_id": self.member_ids[i], "pool_id": self.pool_id,
            "name": self.member_name(i), "address": f"192.168.0.{i + 10}", "protocol_port": 8080,
            "weight": 1, "backup": False, "admin_state_up": True, "subnet_id": _uuid(),
            "project_id": self.project_id, "tenant_id": self.project_id,
            "pool": self.pool(), "loadbalancer": self.lb_mini(),
        }

    def healthmonitor(self) -> dict[str, Any]:
        return {
            "id": self.hm_id, "healthmonitor_id": self.hm_id, "pool_id": self.pool_id,
            "name": f"hm-{self.index}", "type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 3,
            "http_method": "GET", "url_path": "/healthz", "expected_codes": "200",
            "http_version": 1.0, "admin_state_up": True, "project_id": self.project_id,
            "pool": self.pool(),
        }

    def l7policy(self) -> dict[str, Any]:
        listener = self.listener()
        return {
            "id": self.policy_id, "l7policy_id": self.policy_id, "listener_id": self.listener_id,
            "name": f"policy-{self.index}", "action": "REJECT", "position": 1, "rules": [],
            "admin_state_up": True, "project_id": self.project_id, "listener": listener,
        }

    def l7rule(self) -> dict[str, Any]:
        policy = self.l7policy()
        rule = {
            "id": self.rule_id, "l7rule_id": self.rule_id, "l7policy_id": self.policy_id,
            "type": "PATH", "compare_type": "STARTS_WITH", "key": None, "value": "/api",
            "invert": False, "admin_state_up": True, "project_id": self.project_id,
        }
        policy["rules"] = [dict(rule)]
        rule["policy"] = policy
        return rule

    def full_tree(self) -> dict[str, Any]:
        lb = self.lb()
        listener = self.listener()
        listener.pop("loadbalancer")
        listener["default_pool_id"] = self.pool_id
        listener["default_pool"] = {"pool_id": self.pool_id}
        policy = self.l7policy()
        policy.pop("listener")
        rule = self.l7rule()
        rule.pop("policy")
        policy["rules"] = [rule]
        listener["l7policies"] = [policy]
        pool = self.pool()
        for key in ("listener", "listeners", "loadbalancer"):
            pool.pop(key)
        members = []
        for i in range(len(self.member_ids)):
            member = self.member(i)
            member.pop("pool")
            member.pop("loadbalancer")
            members.append(member)
        pool["members"] = members
        hm = self.healthmonitor()
        hm.pop("pool")
        pool["healthmonitor"] = hm
        lb["listeners"] = [listener]
        lb["pools"] = [pool]
        return lb

    # ------------------------------------------------------------------ expectations

    def _parents(self, *, lb: bool = True, listener: bool = False, pool: bool = False,
                 policy: bool = False) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {}
        if lb:
            out["loadbalancers"] = [_entry(self.lb_id, ACTIVE)]
        if listener:
            out["listeners"] = [_entry(self.listener_id, ACTIVE)]
        if pool:
            out["pools"] = [_entry(self.pool_id, ACTIVE)]
        if policy:
            out["l7policies"] = [_entry(self.policy_id, ACTIVE)]
        return out

    def lifecycle(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Every operation of the tree's life: (method, kwargs, expected status dict)."""
        ops: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

        def add(method: str, kwargs: dict[str, Any], key: str, obj_id: str, prov: str,
                **parents: bool) -> None:
            expected = self._parents(**parents)
            expected[key] = [_entry(obj_id, prov)]
            ops.append((method, kwargs, expected))

        add("loadbalancer_create", {"loadbalancer": self.lb()}, "loadbalancers", self.lb_id, ACTIVE, lb=False)
        add("listener_create", {"listener": self.listener(), "cert": None}, "listeners", self.listener_id, ACTIVE)
        add("pool_create", {"pool": self.pool()}, "pools", self.pool_id, ACTIVE, listener=True)
        for i in range(len(self.member_ids)):
            add("member_create", {"member": self.member(i)}, "members", self.member_ids[i], ACTIVE,
                listener=True, pool=True)
        add("healthmonitor_create", {"healthmonitor": self.healthmonitor()}, "healthmonitors",
            self.hm_id, ACTIVE, listener=True, pool=True)
        add("l7policy_create", {"l7policy": self.l7policy()}, "l7policies", self.policy_id, ACTIVE,
            listener=True)
        add("l7rule_create", {"l7rule": self.l7rule()}, "l7rules", self.rule_id, ACTIVE,
            listener=True, policy=True)

        def update(kind: str, old: dict[str, Any], change: dict[str, Any], key: str, obj_id: str,
                   **parents: bool) -> None:
            new = copy.deepcopy(old)
            new.update(change)
            add(f"{kind}_update", {f"old_{kind}": old, f"new_{kind}": new} | (
                {"cert": None} if kind == "listener" else {}), key, obj_id, ACTIVE, **parents)

        update("loadbalancer", self.lb(), {"description": "updated"}, "loadbalancers", self.lb_id, lb=False)
        update("listener", self.listener(), {"connection_limit": 1000}, "listeners", self.listener_id)
        update("pool", self.pool(), {"lb_algorithm": "LEAST_CONNECTIONS"}, "pools", self.pool_id, listener=True)
        update("member", self.member(0), {"weight": 5}, "members", self.member_ids[0], listener=True, pool=True)
        update("healthmonitor", self.healthmonitor(), {"delay": 10}, "healthmonitors", self.hm_id,
               listener=True, pool=True)
        update("l7policy", self.l7policy(), {"position": 2}, "l7policies", self.policy_id, listener=True)
        update("l7rule", self.l7rule(), {"value": "/v2"}, "l7rules", self.rule_id, listener=True, policy=True)

        cascade = {
            "loadbalancers": [_entry(self.lb_id, DELETED)],
            "listeners": [_entry(self.listener_id, DELETED)],
            "pools": [_entry(self.pool_id, DELETED)],
            "members": [_entry(m, DELETED) for m in self.member_ids],
            "healthmonitors": [_entry(self.hm_id, DELETED)],
            "l7policies": [_entry(self.policy_id, DELETED)],
            "l7rules": [_entry(self.rule_id, DELETED)],
        }
        ops.append(("loadbalancer_delete", {"loadbalancer": self.full_tree(), "cascade": True}, cascade))
        return ops


def normalized(status: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A status dict with every list sorted by id, for order-insensitive comparison."""
    return {key: sorted(entries, key=lambda e: e["id"]) for key, entries in status.items()}


class GatedRun:
    """Octavia's gating: each load balancer's next operation is cast only after the status of
    the previous one arrived. Load balancers run concurrently (one thread each)."""

    def __init__(self, driver: OsloDriver, trees: list[LoadBalancerTree], *, timeout: float = 30) -> None:
        self.driver = driver
        self.trees = trees
        self.timeout = timeout
        self.inboxes: dict[str, queue.Queue[dict[str, Any]]] = {t.lb_id: queue.Queue() for t in trees}
        self.results: dict[str, list[tuple[str, dict[str, Any], dict[str, Any] | None]]] = {
            t.lb_id: [] for t in trees
        }
        self.unmatched: list[dict[str, Any]] = []
        self.duplicates = 0
        self._stop = threading.Event()

    def _demux(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.driver.endpoint.statuses.get(timeout=0.1)
            except queue.Empty:
                continue
            lbs = status.get("loadbalancers") or []
            inbox = self.inboxes.get(lbs[0]["id"]) if lbs else None
            if inbox is None:
                self.unmatched.append(status)
            else:
                inbox.put(status)

    def _run_tree(self, tree: LoadBalancerTree) -> None:
        previous: dict[str, Any] | None = None
        for method, kwargs, expected in tree.lifecycle():
            self.driver.cast(method, **kwargs)
            got = None
            while True:
                try:
                    got = self.inboxes[tree.lb_id].get(timeout=self.timeout)
                except queue.Empty:
                    got = None
                    break
                # At least once: a redelivered operation may report its status twice.
                if previous is None or normalized(got) != normalized(previous):
                    break
                self.duplicates += 1
            self.results[tree.lb_id].append((method, expected, got))
            if got is None:
                return
            previous = expected

    def run(self) -> GatedRun:
        demux = threading.Thread(target=self._demux, daemon=True)
        demux.start()
        threads = [threading.Thread(target=self._run_tree, args=(t,)) for t in self.trees]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._stop.set()
        demux.join()
        return self

    def mismatches(self) -> list[str]:
        problems = []
        for lb_id, results in self.results.items():
            for method, expected, got in results:
                if got is None:
                    problems.append(f"{lb_id} {method}: no status")
                elif normalized(got) != normalized(expected):
                    problems.append(f"{lb_id} {method}: expected {expected}, got {got}")
        return problems
