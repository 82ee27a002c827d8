"""``lbactors.octavia``: the provider driver and provider agent, against ``lbactors serve`` itself.

The driver casts on the real broker to a real ``lbactors serve`` (unique topics and exchange
per test); the daemon's status and statistics casts come back to the real agent (its oslo RPC
server and endpoint), whose DriverLibrary is :class:`tests.octavia_fake.FakeOctavia`: it
records every write and plays Octavia's commit race (rows the agent cannot see for the first N
tries). Payload shapes are checked against vmware-nsx's driver (the key sets and nesting of
``octavia-and-oslo-facts.md`` §2.5, produced by running its ``obj_to_dict``).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time as time_module
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.octavia_side import oslo_conf

octavia_lib = pytest.importorskip("octavia_lib")

import oslo_messaging  # noqa: E402
from octavia_lib.api.drivers import data_models as dm  # noqa: E402
from octavia_lib.api.drivers import exceptions as lib_exc  # noqa: E402
from oslo_serialization import jsonutils  # noqa: E402

from lbactors.messages import decode_request  # noqa: E402
from lbactors.octavia.agent import ProviderAgentEndpoint, StatusWriter, serve_agent  # noqa: E402
from lbactors.octavia.config import GROUP, register_opts  # noqa: E402
from lbactors.octavia.driver import LbactorsProviderDriver  # noqa: E402
from lbactors.routing import owner_of  # noqa: E402
from tests.daemon_process import DaemonProcess, NotifySocket  # noqa: E402
from tests.octavia_fake import FakeOctavia  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- one tree of objects


class Tree:
    """One load balancer with a listener, a pool, two members, a health monitor, an L7 policy
    and rule, as octavia-lib data models shaped as Octavia's API hands them to a driver."""

    def __init__(self) -> None:
        self.project_id = uuid.uuid4().hex
        self.lb_id, self.listener_id, self.pool_id = _id(), _id(), _id()
        self.member_ids = [_id(), _id()]
        self.hm_id, self.policy_id, self.rule_id = _id(), _id(), _id()
        self.subnet_id, self.network_id, self.port_id = _id(), _id(), _id()

    def lb(self) -> Any:
        return dm.LoadBalancer(
            loadbalancer_id=self.lb_id, name="lb-1", description="", admin_state_up=True,
            project_id=self.project_id, vip_address="10.0.0.10", vip_network_id=self.network_id,
            vip_port_id=self.port_id, vip_subnet_id=self.subnet_id, vip_qos_policy_id=None,
            flavor={}, availability_zone=None,
        )  # fmt: skip

    def listener(self) -> Any:
        return dm.Listener(
            listener_id=self.listener_id, loadbalancer_id=self.lb_id, name="http-80",
            description="", admin_state_up=True, protocol="HTTP", protocol_port=80,
            connection_limit=-1, default_pool_id=None, project_id=self.project_id,
            insert_headers={}, sni_container_refs=[], timeout_client_data=50000,
            timeout_member_connect=5000, timeout_member_data=50000, timeout_tcp_inspect=0,
            allowed_cidrs=None, client_authentication="NONE",
        )  # fmt: skip

    def pool(self) -> Any:
        return dm.Pool(
            pool_id=self.pool_id, loadbalancer_id=self.lb_id, listener_id=self.listener_id,
            name="pool-1", description="", admin_state_up=True, protocol="HTTP",
            lb_algorithm="ROUND_ROBIN", session_persistence=None, project_id=self.project_id,
            tls_enabled=False, members=[],
        )  # fmt: skip

    def member(self, index: int = 0) -> Any:
        return dm.Member(
            member_id=self.member_ids[index], pool_id=self.pool_id, name=f"web-{index}",
            address=f"10.0.0.{21 + index}", protocol_port=8080, weight=1, backup=False,
            subnet_id=None, admin_state_up=True, project_id=self.project_id,
            monitor_address=None, monitor_port=None, vnic_type="normal",
        )  # fmt: skip

    def hm(self) -> Any:
        return dm.HealthMonitor(
            healthmonitor_id=self.hm_id, pool_id=self.pool_id, name="hm-1", type="HTTP",
            delay=5, timeout=4, max_retries=3, max_retries_down=3, http_method="GET",
            url_path="/healthz", expected_codes="200", admin_state_up=True,
            project_id=self.project_id, http_version=None, domain_name=None,
        )  # fmt: skip

    def policy(self) -> Any:
        return dm.L7Policy(
            l7policy_id=self.policy_id, listener_id=self.listener_id, name="pol-1",
            description="", action="REDIRECT_TO_POOL", position=1, redirect_pool_id=self.pool_id,
            admin_state_up=True, project_id=self.project_id, rules=[],
        )  # fmt: skip

    def rule(self) -> Any:
        return dm.L7Rule(
            l7rule_id=self.rule_id, l7policy_id=self.policy_id, type="PATH",
            compare_type="STARTS_WITH", key=None, value="/api", invert=False,
            admin_state_up=True, project_id=self.project_id,
        )  # fmt: skip

    def all_models(self) -> list[Any]:
        return [
            self.lb(), self.listener(), self.pool(), self.member(0), self.member(1), self.hm(),
            self.policy(), self.rule(),
        ]  # fmt: skip


# --------------------------------------------------------------------------- the driver, recorded


class RecordingClient:
    """Stands in for the driver's RPCClient where only the payloads matter."""

    def __init__(self) -> None:
        self.casts: list[tuple[dict[str, Any], str, dict[str, Any]]] = []

    def cast(self, ctxt: dict[str, Any], method: str, **kwargs: Any) -> None:
        # what goes on the wire: oslo.messaging's JSON (jsonutils), so no model may survive
        self.casts.append((ctxt, method, jsonutils.loads(jsonutils.dumps(kwargs))))


@pytest.fixture
def fake_transport() -> Iterator[Any]:
    transport = oslo_messaging.get_rpc_transport(oslo_conf(), url="fake:///")
    yield transport
    transport.cleanup()


def recorded_driver(octavia: FakeOctavia, transport: Any) -> tuple[Any, RecordingClient]:
    driver = LbactorsProviderDriver(conf=oslo_conf(), transport=transport, parents=octavia.parents())
    client = RecordingClient()
    driver.client = client
    return driver, client


def only_cast(client: RecordingClient) -> tuple[str, dict[str, Any]]:
    assert len(client.casts) == 1, client.casts
    ctxt, method, kwargs = client.casts[0]
    assert ctxt == {}
    return method, kwargs


# vmware-nsx's payload keys (octavia-and-oslo-facts.md §2.5, octavia-lib 3.12's models), plus
# the keys vmware-nsx strips and lbactors keeps (its haproxy backend uses them)
NSX_KEYS = {
    "loadbalancer": {
        "id", "loadbalancer_id", "name", "description", "admin_state_up", "flavor",
        "availability_zone", "project_id", "tenant_id", "listeners", "pools", "vip_address",
        "vip_network_id", "vip_port_id", "vip_subnet_id", "vip_qos_policy_id", "vip_sg_ids",
        "additional_vips",
    },
    "listener": {
        "id", "listener_id", "loadbalancer_id", "name", "description", "admin_state_up",
        "protocol", "protocol_port", "connection_limit", "default_pool_id", "default_pool",
        "l7policies", "l7_policies", "default_tls_container_ref", "default_tls_container_data",
        "sni_container_data", "client_authentication", "client_ca_tls_container_ref",
        "client_ca_tls_container_data", "client_crl_container_ref", "client_crl_container_data",
        "allowed_cidrs", "tls_versions", "tls_ciphers", "alpn_protocols", "hsts_max_age",
        "hsts_include_subdomains", "hsts_preload", "project_id", "tenant_id", "loadbalancer",
    },
    "pool": {
        "id", "pool_id", "loadbalancer_id", "listener_id", "name", "description",
        "admin_state_up", "protocol", "lb_algorithm", "session_persistence", "healthmonitor",
        "members", "tls_enabled", "tls_container_ref", "tls_container_data",
        "ca_tls_container_ref", "ca_tls_container_data", "crl_container_ref",
        "crl_container_data", "tls_versions", "tls_ciphers", "alpn_protocols", "project_id",
        "tenant_id", "listener", "listeners", "loadbalancer",
    },
    "member": {
        "id", "member_id", "pool_id", "name", "address", "protocol_port", "subnet_id", "weight",
        "backup", "admin_state_up", "vnic_type", "project_id", "tenant_id", "pool",
        "loadbalancer",
    },
    "healthmonitor": {
        "id", "healthmonitor_id", "pool_id", "name", "type", "delay", "timeout", "max_retries",
        "http_method", "url_path", "expected_codes", "http_version", "domain_name",
        "admin_state_up", "project_id", "tenant_id", "pool",
    },
    "l7policy": {
        "id", "l7policy_id", "listener_id", "name", "description", "action", "position",
        "redirect_pool_id", "redirect_url", "redirect_prefix", "redirect_http_code",
        "admin_state_up", "rules", "project_id", "tenant_id", "listener",
    },
    "l7rule": {
        "id", "l7rule_id", "l7policy_id", "name", "type", "compare_type", "key", "value",
        "invert", "admin_state_up", "project_id", "tenant_id", "policy",
    },
}  # fmt: skip
KEPT_KEYS = {
    "listener": {
        "sni_container_refs", "insert_headers", "timeout_client_data", "timeout_member_connect",
        "timeout_member_data", "timeout_tcp_inspect",
    },
    "healthmonitor": {"max_retries_down"},
    "member": {"monitor_address", "monitor_port"},
}  # fmt: skip
LB_MINI_KEYS = {"id", "name", "vip_address", "vip_port_id", "vip_network_id", "vip_subnet_id", "listeners"}


def _committed_except(tree: Tree, octavia: FakeOctavia, skip: str) -> None:
    for model in tree.all_models():
        if type(model).__name__ != skip:
            octavia.commit(model)


CREATES = [
    ("loadbalancer", "LoadBalancer", "loadbalancer_create", lambda t: t.lb()),
    ("listener", "Listener", "listener_create", lambda t: t.listener()),
    ("pool", "Pool", "pool_create", lambda t: t.pool()),
    ("member", "Member", "member_create", lambda t: t.member(0)),
    ("healthmonitor", "HealthMonitor", "health_monitor_create", lambda t: t.hm()),
    ("l7policy", "L7Policy", "l7policy_create", lambda t: t.policy()),
    ("l7rule", "L7Rule", "l7rule_create", lambda t: t.rule()),
]


@pytest.mark.parametrize(("kind", "cls", "driver_method", "build"), CREATES, ids=[c[0] for c in CREATES])
def test_create_payloads_are_vmware_nsx_shaped(
    fake_transport: Any, kind: str, cls: str, driver_method: str, build: Callable[[Tree], Any]
) -> None:
    """Each create casts vmware-nsx's method name and kwargs, with its keys, ids, project and
    nested parents; and the daemon decodes it and routes it to the right load balancer."""
    tree = Tree()
    octavia = FakeOctavia()
    _committed_except(tree, octavia, skip=cls)  # the new object is not committed yet
    driver, client = recorded_driver(octavia, fake_transport)
    getattr(driver, driver_method)(build(tree))
    method, kwargs = only_cast(client)
    assert method == f"{kind}_create"
    assert set(kwargs) == ({"listener", "cert"} if kind == "listener" else {kind})
    payload = kwargs[kind]
    assert set(payload) == NSX_KEYS[kind] | KEPT_KEYS.get(kind, set())
    assert payload["id"] == payload[f"{kind}_id"]
    assert payload["project_id"] == payload["tenant_id"] == tree.project_id

    if kind == "loadbalancer":
        assert payload["listeners"] == [] or payload["listeners"][0]["id"] == tree.listener_id
    if kind == "listener":
        assert kwargs["cert"] is None
        assert payload["l7_policies"] == payload["l7policies"]
        assert set(payload["loadbalancer"]) == LB_MINI_KEYS
        assert payload["loadbalancer"]["id"] == tree.lb_id
        assert payload["loadbalancer"]["vip_subnet_id"] == tree.subnet_id
    if kind == "pool":
        assert payload["listener"]["id"] == tree.listener_id
        assert payload["listener"]["l7_policies"] is None  # non-recursive, as vmware-nsx
        assert payload["listener"]["loadbalancer"]["id"] == tree.lb_id
        assert payload["listeners"] == [payload["listener"]]
        assert set(payload["loadbalancer"]) == LB_MINI_KEYS
    if kind in ("member", "healthmonitor"):
        pool = payload["pool"]
        assert pool["id"] == tree.pool_id and pool["listener"]["id"] == tree.listener_id
        assert pool["loadbalancer"]["id"] == tree.lb_id
        assert all(m["id"] == m["member_id"] for m in pool["members"])
    if kind == "member":
        assert payload["loadbalancer"] == payload["pool"]["loadbalancer"]
        assert payload["subnet_id"] == tree.subnet_id  # defaults to the VIP subnet
    if kind == "l7policy":
        assert payload["rules"] == []
        assert payload["listener"]["id"] == tree.listener_id
        assert payload["listener"]["loadbalancer_id"] == tree.lb_id
    if kind == "l7rule":
        policy = payload["policy"]
        assert policy["id"] == tree.policy_id and policy["listener"]["id"] == tree.listener_id
        # not committed yet, so appended to its policy's rules as vmware-nsx does
        assert [r["id"] for r in policy["rules"]] == [tree.rule_id]

    request = decode_request(method, json.dumps(kwargs).encode())
    assert owner_of(request) == (tree.lb_id, True)


UPDATES = [
    ("loadbalancer", "loadbalancer_update", lambda t: t.lb(), dm.LoadBalancer, {"name": "lb-2"}),
    ("listener", "listener_update", lambda t: t.listener(), dm.Listener, {"connection_limit": 100}),
    ("pool", "pool_update", lambda t: t.pool(), dm.Pool, {"lb_algorithm": "LEAST_CONNECTIONS"}),
    ("member", "member_update", lambda t: t.member(0), dm.Member, {"weight": 5}),
    ("healthmonitor", "health_monitor_update", lambda t: t.hm(), dm.HealthMonitor, {"delay": 9}),
    ("l7policy", "l7policy_update", lambda t: t.policy(), dm.L7Policy, {"position": 2}),
    ("l7rule", "l7rule_update", lambda t: t.rule(), dm.L7Rule, {"value": "/v2"}),
]


@pytest.mark.parametrize(
    ("kind", "driver_method", "build", "model", "change"), UPDATES, ids=[u[0] for u in UPDATES]
)
def test_update_payloads_overlay_the_change_on_the_old_object(
    fake_transport: Any, kind: str, driver_method: str, build: Callable[[Tree], Any], model: Any,
    change: dict[str, Any],
) -> None:  # fmt: skip
    """``old_X`` is the full old object, ``new_X`` a copy of it with the sparse change laid on
    top (vmware-nsx's ``update``): the daemon sees the change and keeps every other field."""
    tree = Tree()
    octavia = FakeOctavia()
    for committed in tree.all_models():
        octavia.commit(committed)
    driver, client = recorded_driver(octavia, fake_transport)
    old = build(tree)
    new = model(**{f"{kind}_id": getattr(old, f"{kind}_id"), **change})
    getattr(driver, driver_method)(old, new)
    method, kwargs = only_cast(client)
    assert method == f"{kind}_update"
    assert set(kwargs) - {"cert"} == {f"old_{kind}", f"new_{kind}"}
    old_payload, new_payload = kwargs[f"old_{kind}"], kwargs[f"new_{kind}"]
    assert set(new_payload) == set(old_payload)
    for key, value in change.items():
        assert new_payload[key] == value and old_payload[key] != value
    unchanged = {k for k in old_payload if k not in change}
    assert {k: new_payload[k] for k in unchanged} == {k: old_payload[k] for k in unchanged}
    request = decode_request(method, json.dumps(kwargs).encode())
    assert owner_of(request) == (tree.lb_id, True)


def test_deletes_and_cascade_delete(fake_transport: Any) -> None:
    """Deletes cast ``X_delete(X=...)``; ``loadbalancer_delete(cascade=True)`` carries the whole
    tree with an id on every nested object (vmware-nsx's cascade payload)."""
    tree = Tree()
    octavia = FakeOctavia()
    for committed in tree.all_models():
        octavia.commit(committed)
    driver, client = recorded_driver(octavia, fake_transport)
    driver.member_delete(tree.member(1))
    driver.l7rule_delete(tree.rule())
    driver.loadbalancer_delete(octavia.get_loadbalancer(tree.lb_id), cascade=True)
    assert [m for _, m, _ in client.casts] == ["member_delete", "l7rule_delete", "loadbalancer_delete"]
    assert client.casts[0][2]["member"]["id"] == tree.member_ids[1]
    cascade = client.casts[2][2]
    assert cascade["cascade"] is True
    lb = cascade["loadbalancer"]
    assert set(lb) == NSX_KEYS["loadbalancer"]
    listener = lb["listeners"][0]
    assert listener["id"] == tree.listener_id
    assert listener["l7policies"][0]["id"] == tree.policy_id
    assert listener["l7policies"][0]["rules"][0]["id"] == tree.rule_id
    pool = lb["pools"][0]
    assert pool["id"] == tree.pool_id and pool["tenant_id"] == tree.project_id
    assert sorted(m["id"] for m in pool["members"]) == sorted(tree.member_ids)
    # the health monitor is rebuilt from the database with its own pool, as vmware-nsx does
    assert pool["healthmonitor"]["id"] == tree.hm_id
    assert pool["healthmonitor"]["pool"]["id"] == tree.pool_id
    request = decode_request("loadbalancer_delete", json.dumps(cascade).encode())
    assert request.cascade and owner_of(request) == (tree.lb_id, True)


def test_cascade_delete_with_policies_none(fake_transport: Any) -> None:
    """Octavia 19 hands a cascade delete listeners whose ``l7policies`` is None."""
    tree = Tree()
    octavia = FakeOctavia()
    driver, client = recorded_driver(octavia, fake_transport)
    lb = tree.lb()
    listener = tree.listener()
    listener.l7policies = None
    lb.listeners = [listener]
    lb.pools = None
    driver.loadbalancer_delete(lb, cascade=True)
    _, kwargs = only_cast(client)
    assert kwargs["loadbalancer"]["listeners"][0]["id"] == tree.listener_id
    assert kwargs["loadbalancer"]["pools"] == []


def test_listener_certificate(fake_transport: Any) -> None:
    tree = Tree()
    octavia = FakeOctavia()
    octavia.commit(tree.lb())
    driver, client = recorded_driver(octavia, fake_transport)
    listener = tree.listener()
    listener.protocol = "TERMINATED_HTTPS"
    listener.default_tls_container_ref = "https://barbican/containers/1"
    listener.default_tls_container_data = {
        "certificate": b"-----BEGIN CERTIFICATE-----",
        "private_key": b"-----BEGIN PRIVATE KEY-----",
        "passphrase": None,
        "intermediates": [b"-----BEGIN CERTIFICATE-----x"],
        "primary_cn": "example.org",
    }
    driver.listener_create(listener)
    _, kwargs = only_cast(client)
    assert kwargs["cert"] == {
        "ref": "https://barbican/containers/1",
        "certificate": "-----BEGIN CERTIFICATE-----",
        "private_key": "-----BEGIN PRIVATE KEY-----",
        "passphrase": None,
        "intermediates": ["-----BEGIN CERTIFICATE-----x"],
    }
    assert decode_request("listener_create", json.dumps(kwargs).encode()).cert is not None


def test_member_batch_update_splits_into_member_casts(fake_transport: Any) -> None:
    tree = Tree()
    octavia = FakeOctavia()
    for committed in tree.all_models():
        octavia.commit(committed)
    driver, client = recorded_driver(octavia, fake_transport)
    kept = tree.member(0)
    kept.weight = 7
    new_member = dm.Member(
        member_id=_id(), pool_id=tree.pool_id, address="10.0.0.99", protocol_port=80,
        project_id=tree.project_id, admin_state_up=True, weight=1,
    )  # fmt: skip
    driver.member_batch_update(tree.pool_id, [kept, new_member])
    casts = [(m, kw) for _, m, kw in client.casts]
    assert [m for m, _ in casts] == ["member_delete", "member_update", "member_create"]
    assert casts[0][1]["member"]["id"] == tree.member_ids[1]
    assert casts[1][1]["new_member"]["weight"] == 7 and casts[1][1]["old_member"]["weight"] == 1
    assert casts[2][1]["member"]["id"] == new_member.member_id
    for method, kwargs in casts:
        assert owner_of(decode_request(method, json.dumps(kwargs).encode())) == (tree.lb_id, True)


def test_create_vip_port_is_left_to_octavia(fake_transport: Any) -> None:
    driver, _ = recorded_driver(FakeOctavia(), fake_transport)
    with pytest.raises(lib_exc.NotImplementedError):
        driver.create_vip_port(_id(), _id(), {"vip_address": "10.0.0.10"}, [])


def test_daemon_never_imports_the_octavia_side() -> None:
    code = (
        "import sys, supervisor.cli, lbactors.worker, lbactors.gateway, supervisor.daemon\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('octavia_lib', 'oslo_messaging', 'oslo_config') or m.startswith('lbactors.octavia'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the writer alone


def test_writer_a_newer_status_replaces_a_pending_entry() -> None:
    """A retry never writes something older than what was written since."""
    octavia = FakeOctavia()
    tree = Tree()
    octavia.commit(tree.lb())
    octavia.commit(tree.pool())
    octavia.hide(tree.pool_id, 1)
    writer = StatusWriter(octavia, attempts=5, initial_delay=60, max_delay=60)  # never due here
    writer.write({"pools": [{"id": tree.pool_id, "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}]})
    assert writer.pending() == [("pools", tree.pool_id)]
    writer.write({"pools": [{"id": tree.pool_id, "operating_status": "ERROR"}]})
    assert writer.pending() == []
    assert octavia.status_of(tree.pool_id) == {"provisioning_status": "ACTIVE", "operating_status": "ERROR"}


def test_writer_skips_reasserted_entries_it_has_written_already() -> None:
    """A re-assertion costs the driver agent a database transaction per call: lbactors' agent
    retries uncommitted entries itself, so it writes a re-asserted entry only when the first
    one did not land (or is still pending), and never skips an ordinary status."""
    octavia = FakeOctavia()
    tree = Tree()
    octavia.commit(tree.lb())
    octavia.commit(tree.pool())
    writer = StatusWriter(octavia, attempts=5, initial_delay=60, max_delay=60)  # never due here
    active = {"provisioning_status": "ACTIVE", "operating_status": "ONLINE"}
    pool = {"pools": [{"id": tree.pool_id, **active}]}
    writer.write(pool)
    assert len(octavia.status_writes) == 1
    writer.write(pool, reassertion=True)  # written already: skipped
    assert len(octavia.status_writes) == 1 and writer.skipped == 1
    writer.write(pool)  # not a re-assertion: written again
    assert len(octavia.status_writes) == 2
    # a field that differs from what was written: written
    writer.write({"pools": [{"id": tree.pool_id, "operating_status": "ERROR"}]}, reassertion=True)
    assert len(octavia.status_writes) == 3 and writer.skipped == 1
    assert octavia.status_of(tree.pool_id) == {"provisioning_status": "ACTIVE", "operating_status": "ERROR"}
    # the first status of a member was lost (the agent never saw it): the re-assertion lands
    member = tree.member(0)
    octavia.commit(member)
    writer.write({"members": [{"id": member.member_id, **active}]}, reassertion=True)
    assert octavia.status_of(member.member_id) == active and writer.skipped == 1
    # an entry waiting for its retry here (its object not committed when first tried) keeps
    # waiting: the retry writes it
    octavia.commit(tree.hm())
    octavia.hide(tree.hm_id, 1)
    writer.write({"healthmonitors": [{"id": tree.hm_id, **active}]})
    assert writer.pending() == [("healthmonitors", tree.hm_id)]
    writes = len(octavia.status_writes)
    writer.write({"healthmonitors": [{"id": tree.hm_id, **active}]}, reassertion=True)
    assert writer.pending() == [("healthmonitors", tree.hm_id)] and writer.skipped == 2
    assert len(octavia.status_writes) == writes
    writer.close()


def test_writer_skips_a_reassertion_that_arrives_while_the_first_status_is_written() -> None:
    """The check runs under the id's lock: a re-assertion that arrives while the first status
    of its object is being written waits for it, then finds it written."""
    written = threading.Event()
    release = threading.Event()
    calls: list[dict[str, Any]] = []

    class SlowLibrary:
        def update_loadbalancer_status(self, status: dict[str, Any]) -> None:
            calls.append(copy.deepcopy(status))
            written.set()
            release.wait(10)

        def get_pool(self, pool_id: str) -> object:
            return object()

    writer = StatusWriter(SlowLibrary())
    status = {"pools": [{"id": "p-1", "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}]}
    first = threading.Thread(target=writer.write, args=(status,))
    first.start()
    assert written.wait(10)
    again = threading.Thread(target=writer.write, args=(status,), kwargs={"reassertion": True})
    again.start()
    again.join(0.2)
    assert again.is_alive()  # waiting for the id's lock
    release.set()
    first.join(10)
    again.join(10)
    assert not again.is_alive()
    assert len(calls) == 1 and writer.skipped == 1
    writer.close()


def test_agent_endpoint_passes_the_reassertion_mark_of_the_oslo_context() -> None:
    octavia = FakeOctavia()
    tree = Tree()
    octavia.commit(tree.lb())
    writer = StatusWriter(octavia)
    endpoint = ProviderAgentEndpoint(octavia, writer, lambda: [])
    status = {"loadbalancers": [{"id": tree.lb_id, "provisioning_status": "ACTIVE"}]}
    endpoint.update_loadbalancer_status({}, status)
    endpoint.update_loadbalancer_status({"lbactors_reassertion": "yes"}, status)  # not True
    assert writer.skipped == 0 and len(octavia.status_writes) == 2
    endpoint.update_loadbalancer_status({"lbactors_reassertion": True}, status)
    assert writer.skipped == 1 and len(octavia.status_writes) == 2
    writer.close()


def test_writer_writes_concurrent_statuses_together_and_one_id_at_a_time() -> None:
    """Each driver agent call costs a fork and a database session (~0.2 s with Octavia 19):
    written one call per status, 50 load balancers' statuses and their re-assertions left the
    agent 30 s behind. Concurrent statuses are written in few calls, one call at a time; two
    statuses of one id never in the same call (each try holds its ids' locks until written)."""
    calls: list[dict[str, Any]] = []
    in_call = threading.Lock()

    class SlowLibrary:
        def update_loadbalancer_status(self, status: dict[str, Any]) -> None:
            assert in_call.acquire(blocking=False), "two writes at once"
            try:
                calls.append(copy.deepcopy(status))
                time_module.sleep(0.05)
            finally:
                in_call.release()

        def get_loadbalancer(self, lb_id: str) -> object:
            time_module.sleep(0.01)
            return object()

    writer = StatusWriter(SlowLibrary(), attempts=2, initial_delay=60)
    lb_ids = [_id() for _ in range(40)]

    def status(lb_id: str, operating: str) -> dict[str, Any]:
        return {"loadbalancers": [{"id": lb_id, "provisioning_status": "ACTIVE", "operating_status": operating}]}

    threads = [
        threading.Thread(target=writer.write, args=(status(lb_id, operating),))
        for lb_id in lb_ids
        for operating in ("OFFLINE", "ONLINE")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    writer.close()
    assert len(calls) < len(threads) / 4, len(calls)
    seen: dict[str, list[str]] = {}
    for call in calls:
        ids = [entry["id"] for entry in call["loadbalancers"]]
        assert len(ids) == len(set(ids))  # one id once per call
        for entry in call["loadbalancers"]:
            seen.setdefault(entry["id"], []).append(entry["operating_status"])
    assert sorted(seen) == sorted(lb_ids)
    assert all(len(values) == 2 for values in seen.values())
    assert writer.batches == len(calls)


# --------------------------------------------------------------------------- a busy driver agent


def test_a_full_driver_agent_backlog_is_retried_through_the_real_driver_library(
    tmp_path: Path,
) -> None:
    """The driver agent's sockets listen with a backlog of 5 and DriverLibrary connects with a
    timeout: under a burst the connect fails at once with EAGAIN (seen with the real Octavia,
    50 load balancers at once). Here a real DriverLibrary meets a socket whose backlog is full
    until the server starts accepting; the wrapped call waits for it instead of failing."""
    import socket as socket_module

    from octavia_lib.api.drivers import driver_lib

    from lbactors.octavia.busy import BusyRetrying

    paths = {name: str(tmp_path / f"{name}.sock") for name in ("status", "stats", "get")}
    server = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    server.bind(paths["status"])
    server.listen(0)
    for name in ("stats", "get"):
        Path(paths[name]).touch()  # DriverLibrary only checks that they exist
    fillers = []
    while True:  # fill the backlog
        filler = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(paths["status"])
        except BlockingIOError:
            filler.close()
            break
        fillers.append(filler)
    assert len(fillers) < 10
    raw = driver_lib.DriverLibrary(
        status_socket=paths["status"], stats_socket=paths["stats"], get_socket=paths["get"]
    )
    with pytest.raises(lib_exc.UpdateStatusError, match="Errno 11"):
        raw.update_loadbalancer_status({"loadbalancers": []})  # what octavia-lib does alone

    received: list[Any] = []

    def serve() -> None:
        time_module.sleep(0.3)
        server.settimeout(10)
        for _ in range(len(fillers) + 1):
            connection, _ = server.accept()
            with connection:
                stream = connection.makefile("rb")
                size = stream.readline()
                if not size:
                    continue  # a filler, closed below
                received.append(json.loads(stream.read(int(size))))
                answer = json.dumps({"status_code": 200}).encode()
                connection.sendall(b"%d\n" % len(answer) + answer)
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for filler in fillers:
        filler.close()  # closed but still queued: accepted (and read as empty) first
    library = BusyRetrying(raw, busy_for=10)
    status = {"loadbalancers": [{"id": "lb", "provisioning_status": "ACTIVE"}]}
    library.update_loadbalancer_status(status)
    thread.join(10)
    server.close()
    assert received == [status]
    assert library.busy_retries > 0 and library.busy_failures == 0


def test_busy_retries_are_bounded_and_other_errors_are_not_retried() -> None:
    from lbactors.octavia.busy import BusyRetrying, driver_agent_busy

    busy_status = lib_exc.UpdateStatusError(fault_string="[Errno 11] Resource temporarily unavailable")
    busy_get = lib_exc.DriverError()
    busy_get.__cause__ = BlockingIOError(11, "Resource temporarily unavailable")
    assert driver_agent_busy(busy_status) and driver_agent_busy(busy_get)
    refused = lib_exc.UpdateStatusError(fault_string="not found", status_object="listeners")
    assert not driver_agent_busy(refused)

    class Library:
        def __init__(self, failures: list[Exception]) -> None:
            self.failures = failures
            self.calls = 0
            self.other = "passed through"

        def get_pool(self, pool_id: str) -> str:
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return pool_id

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    # busy twice, then answered
    library = BusyRetrying(Library([busy_get, busy_get]), busy_for=1, clock=lambda: now[0], sleep=sleep)
    assert library.get_pool("p") == "p"
    assert (library.busy_retries, library.busy_failures) == (2, 0)
    assert library.other == "passed through"
    # busy for ever: given up after busy_for seconds, DriverLibrary's own error raised
    forever = Library([busy_get] * 1000)
    library = BusyRetrying(forever, busy_for=1, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(lib_exc.DriverError):
        library.get_pool("p")
    assert library.busy_failures == 1 and 5 < forever.calls < 20
    # anything else at once
    other = Library([refused])
    library = BusyRetrying(other, busy_for=1, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(lib_exc.UpdateStatusError):
        library.get_pool("p")
    assert other.calls == 1 and library.busy_retries == 0


# --------------------------------------------------------------------------- against lbactors serve


@pytest.fixture
def octavia_conf(names: dict[str, str]) -> Iterator[Any]:
    """octavia.conf's ``[lbactors]`` for this test: its own topics, short retries."""
    conf = oslo_conf()
    register_opts(conf)
    overrides = {
        **names,
        "rpc_timeout": 15.0,
        "status_retry_initial_delay": 0.05,
        "status_retry_max_delay": 0.2,
    }
    for key, value in overrides.items():
        conf.set_override(key, value, group=GROUP)
    yield conf
    for key in overrides:
        conf.clear_override(key, group=GROUP)


@pytest.fixture
def transport(amqp_url: str) -> Iterator[Any]:
    transport = oslo_messaging.get_rpc_transport(oslo_conf(), url=amqp_url.replace("amqp://", "rabbit://", 1))
    yield transport
    transport.cleanup()


@asynccontextmanager
async def running_daemon(
    amqp_url: str, names: dict[str, str], notify: NotifySocket, tmp_path: Path, **extra: str
) -> AsyncIterator[DaemonProcess]:
    env = {
        "LBACTORS_AMQP_URL": amqp_url,
        "LBACTORS_AMQP_TOPIC": names["topic"],
        "LBACTORS_AMQP_DRIVER_TOPIC": names["driver_topic"],
        "LBACTORS_AMQP_EXCHANGE": names["exchange"],
        "LBACTORS_DAEMON_WORKERS": "2",
        "LBACTORS_STATS_INTERVAL": "0",
        **extra,
    }
    daemon = DaemonProcess(env, notify, tmp_path / "daemon.log")
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.stop()


@contextmanager
def running_agent(
    conf: Any, transport: Any, library: Any, active: Callable[[], list[str]] | None = None
) -> Iterator[None]:
    exit_event, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=serve_agent,
        args=(exit_event,),
        kwargs={
            "conf": conf,
            "transport": transport,
            "library": library,
            "active_loadbalancers": active or (lambda: []),
            "server": "octavia-test",
            "ready": ready,
        },
        daemon=True,
    )
    thread.start()
    assert ready.wait(30), "the agent did not start"
    try:
        yield
    finally:
        exit_event.set()
        thread.join(30)
        assert not thread.is_alive(), "the agent did not stop"


async def wait_status(octavia: FakeOctavia, object_id: str, expected: dict[str, str], timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while (octavia.status_of(object_id) or {}) != expected:
            await trio.sleep(0.02)


ACTIVE = {"provisioning_status": "ACTIVE", "operating_status": "ONLINE"}
DELETED = {"provisioning_status": "DELETED", "operating_status": "ONLINE"}


@pytest.mark.broker
async def test_lifecycle_through_lbactors_serve(
    amqp_url: str, names: dict[str, str], notify_socket: NotifySocket, tmp_path: Path,
    octavia_conf: Any, transport: Any,
) -> None:  # fmt: skip
    """Every CRUD method, child by child as Octavia gates them: the driver's casts run in
    ``lbactors serve`` and every object's status lands in Octavia through the agent; then a
    cascade delete marks the whole tree DELETED. Octavia commits after the driver returns."""
    tree = Tree()
    octavia = FakeOctavia()
    driver = LbactorsProviderDriver(conf=octavia_conf, transport=transport, parents=octavia.parents())

    async def step(call: Callable[[], None], commit: Any, *expect: tuple[str, dict[str, str]]) -> None:
        await trio.to_thread.run_sync(call)
        if commit is not None:
            octavia.commit(commit)  # after the driver returned, as Octavia's API does
        for object_id, status in expect:
            await wait_status(octavia, object_id, status)

    async with running_daemon(amqp_url, names, notify_socket, tmp_path):
        with running_agent(octavia_conf, transport, octavia):
            lb, listener, pool, hm = tree.lb(), tree.listener(), tree.pool(), tree.hm()
            m0, m1, policy, rule = tree.member(0), tree.member(1), tree.policy(), tree.rule()
            await step(lambda: driver.loadbalancer_create(lb), lb, (tree.lb_id, ACTIVE))
            await step(lambda: driver.listener_create(listener), listener, (tree.listener_id, ACTIVE))
            await step(lambda: driver.pool_create(pool), pool, (tree.pool_id, ACTIVE))
            await step(lambda: driver.member_create(m0), m0, (m0.member_id, ACTIVE))
            await step(lambda: driver.member_create(m1), m1, (m1.member_id, ACTIVE))
            await step(lambda: driver.health_monitor_create(hm), hm, (tree.hm_id, ACTIVE))
            await step(lambda: driver.l7policy_create(policy), policy, (tree.policy_id, ACTIVE))
            await step(lambda: driver.l7rule_create(rule), rule, (tree.rule_id, ACTIVE))
            # every parent went back to ACTIVE each time
            assert octavia.status_of(tree.lb_id) == ACTIVE
            assert octavia.status_of(tree.listener_id) == ACTIVE

            writes = len(octavia.status_writes)
            for update in (
                lambda: driver.loadbalancer_update(tree.lb(), dm.LoadBalancer(loadbalancer_id=tree.lb_id, name="lb-2")),
                lambda: driver.listener_update(tree.listener(), dm.Listener(listener_id=tree.listener_id, connection_limit=9)),
                lambda: driver.pool_update(tree.pool(), dm.Pool(pool_id=tree.pool_id, lb_algorithm="SOURCE_IP")),
                lambda: driver.member_update(tree.member(0), dm.Member(member_id=m0.member_id, weight=3)),
                lambda: driver.health_monitor_update(tree.hm(), dm.HealthMonitor(healthmonitor_id=tree.hm_id, delay=7)),
                lambda: driver.l7policy_update(tree.policy(), dm.L7Policy(l7policy_id=tree.policy_id, position=1)),
                lambda: driver.l7rule_update(tree.rule(), dm.L7Rule(l7rule_id=tree.rule_id, value="/v2")),
            ):  # fmt: skip
                writes += 1
                await trio.to_thread.run_sync(update)
                with trio.fail_after(15):
                    while len(octavia.status_writes) < writes:
                        await trio.sleep(0.02)
            assert all(
                entry.get("provisioning_status") == "ACTIVE"
                for status in octavia.status_writes
                for entries in status.values()
                for entry in entries
            ), octavia.status_writes

            await step(lambda: driver.member_delete(tree.member(1)), None, (m1.member_id, DELETED))
            assert m1.member_id not in octavia.rows["members"]
            tree_now = octavia.get_loadbalancer(tree.lb_id)
            await step(
                lambda: driver.loadbalancer_delete(tree_now, cascade=True),
                None,
                (tree.lb_id, DELETED), (tree.listener_id, DELETED), (tree.pool_id, DELETED),
                (m0.member_id, DELETED), (tree.hm_id, DELETED), (tree.policy_id, DELETED),
                (tree.rule_id, DELETED),
            )  # fmt: skip
            assert all(not rows for kind, rows in octavia.rows.items() if kind != "loadbalancers")
            cascade_status = octavia.status_writes[-1]
            assert set(cascade_status) == {
                "loadbalancers", "listeners", "pools", "members", "healthmonitors", "l7policies", "l7rules",
            }  # fmt: skip


@pytest.mark.broker
async def test_uncommitted_entries_are_retried_alone(
    amqp_url: str, names: dict[str, str], notify_socket: NotifySocket, tmp_path: Path,
    octavia_conf: Any, transport: Any,
) -> None:  # fmt: skip
    """Octavia's commit race, both ways the driver agent shows it: a pool the get socket does
    not see (its update would be a silent no-op) and a listener whose update fails naming it.
    Each is written on its 3rd try; the other entries of the same status dict at once. A
    member never committed is tried 5 times and dropped; its parents were written at once."""
    tree = Tree()
    octavia = FakeOctavia()
    for model in (tree.lb(), tree.listener(), tree.pool()):
        octavia.commit(model)
    octavia.hide(tree.pool_id, 2)
    driver = LbactorsProviderDriver(conf=octavia_conf, transport=transport, parents=octavia.parents())

    # the agent's own tries are counted: no re-assertion from the daemon (it would start them anew)
    async with running_daemon(
        amqp_url, names, notify_socket, tmp_path, LBACTORS_STATUS_REASSERT_AFTER="[]"
    ):
        with running_agent(octavia_conf, transport, octavia):
            # the pool: entries for the listener and LB land on the first write, the pool's later
            await trio.to_thread.run_sync(driver.pool_create, tree.pool())
            await wait_status(octavia, tree.pool_id, ACTIVE)
            first = octavia.status_writes[0]
            assert set(first) == {"listeners", "loadbalancers"}
            assert octavia.status_writes[1:] == [
                {"pools": [{"id": tree.pool_id, **ACTIVE}]},
            ]
            assert octavia.gets.count(("pools", tree.pool_id)) == 3

            # the listener: the driver agent refuses the whole dict naming it; the LB goes at once
            octavia.status_writes.clear()
            listener_2 = tree.listener()
            listener_2.listener_id = _id()
            listener_2.protocol_port = 8080
            octavia.commit(listener_2)
            octavia.hide(listener_2.listener_id, 2)
            await trio.to_thread.run_sync(driver.listener_create, listener_2)
            await wait_status(octavia, listener_2.listener_id, ACTIVE)
            writes = octavia.status_writes
            assert [sorted(w) for w in writes] == [
                ["listeners", "loadbalancers"],  # refused: the listener is not there yet
                ["loadbalancers"],  # at once, without it
                ["listeners"],  # 2nd try: still not there
                ["listeners"],  # 3rd try: written
            ]

            # a member never committed: 5 tries, then dropped; the parents at once
            octavia.status_writes.clear()
            ghost = tree.member(0)
            octavia.hide(ghost.member_id)  # never visible
            with trio.fail_after(15):
                await trio.to_thread.run_sync(driver.member_create, ghost)
                while octavia.gets.count(("members", ghost.member_id)) < 5:
                    await trio.sleep(0.02)
            await trio.sleep(1)  # the retry schedule is over (0.05+0.1+0.2+0.2 s): no 6th try
            assert octavia.gets.count(("members", ghost.member_id)) == 5
            assert octavia.status_of(ghost.member_id) is None
            assert set(octavia.status_writes[0]) == {"pools", "listeners", "loadbalancers"}
            assert len(octavia.status_writes) == 1


@pytest.mark.broker
async def test_flavor_and_availability_zone_calls(
    amqp_url: str, names: dict[str, str], notify_socket: NotifySocket, tmp_path: Path,
    octavia_conf: Any, transport: Any,
) -> None:  # fmt: skip
    """Metadata and validation are answered by the daemon's backend (noop); a refusal is an
    UnsupportedOptionError naming the key; no daemon is a DriverError, not a hang."""
    driver = LbactorsProviderDriver(conf=octavia_conf, transport=transport, parents=FakeOctavia().parents())
    async with running_daemon(amqp_url, names, notify_socket, tmp_path):
        flavor_keys = await trio.to_thread.run_sync(driver.get_supported_flavor_metadata)
        assert "max_connections" in flavor_keys
        await trio.to_thread.run_sync(driver.validate_flavor, {"max_connections": 100})
        with pytest.raises(lib_exc.UnsupportedOptionError) as refused:
            await trio.to_thread.run_sync(driver.validate_flavor, {"bogus_key": 1})
        assert "bogus_key" in refused.value.user_fault_string
        assert "bogus_key" in refused.value.operator_fault_string
        with pytest.raises(lib_exc.UnsupportedOptionError, match="max_connections"):
            await trio.to_thread.run_sync(driver.validate_flavor, {"max_connections": "many"})
        az_keys = await trio.to_thread.run_sync(driver.get_supported_availability_zone_metadata)
        assert "zone" in az_keys
        await trio.to_thread.run_sync(driver.validate_availability_zone, {"zone": "a"})
        with pytest.raises(lib_exc.UnsupportedOptionError, match="nope"):
            await trio.to_thread.run_sync(driver.validate_availability_zone, {"nope": "a"})

    octavia_conf.set_override("rpc_timeout", 1.0, group=GROUP)
    with trio.fail_after(20):
        with pytest.raises(lib_exc.DriverError) as unanswered:
            await trio.to_thread.run_sync(driver.validate_flavor, {"max_connections": 1})
    assert "did not answer" in unanswered.value.user_fault_string


@pytest.mark.broker
async def test_statistics_and_active_load_balancers(
    amqp_url: str, names: dict[str, str], notify_socket: NotifySocket, tmp_path: Path,
    octavia_conf: Any, transport: Any,
) -> None:  # fmt: skip
    """The daemon's statistics reach Octavia through the agent; the agent answers the
    daemon's ``get_active_loadbalancers``, and a load balancer Octavia lists as ACTIVE that
    the backend does not hold is reported OFFLINE."""
    tree = Tree()
    octavia = FakeOctavia()
    ghost = dm.LoadBalancer(loadbalancer_id=_id(), name="ghost", project_id=tree.project_id)
    octavia.commit(ghost)
    driver = LbactorsProviderDriver(conf=octavia_conf, transport=transport, parents=octavia.parents())
    asked = threading.Event()

    def active() -> list[str]:
        asked.set()
        return [tree.lb_id, ghost.loadbalancer_id]

    async with running_daemon(
        amqp_url, names, notify_socket, tmp_path,
        LBACTORS_STATS_INTERVAL="0.3", LBACTORS_STATS_SYNC_EVERY="1",
    ):  # fmt: skip
        with running_agent(octavia_conf, transport, octavia, active):
            for model, create in (
                (tree.lb(), driver.loadbalancer_create),
                (tree.listener(), driver.listener_create),
            ):
                await trio.to_thread.run_sync(create, model)
                octavia.commit(model)
            await wait_status(octavia, tree.listener_id, ACTIVE)
            with trio.fail_after(15):
                while not any(
                    s["id"] == tree.listener_id for stats in octavia.statistics for s in stats["listeners"]
                ):
                    await trio.sleep(0.05)
            entry = next(s for st in octavia.statistics for s in st["listeners"] if s["id"] == tree.listener_id)
            assert set(entry) == {
                "id", "active_connections", "bytes_in", "bytes_out", "request_errors", "total_connections",
            }  # fmt: skip
            await wait_status(octavia, ghost.loadbalancer_id, {"operating_status": "OFFLINE"})
            assert asked.is_set()
            assert (octavia.status_of(tree.lb_id) or {}).get("operating_status") == "ONLINE"


def test_statistics_of_a_refused_listener_do_not_cost_the_others() -> None:

    octavia = FakeOctavia()
    tree = Tree()
    octavia.commit(tree.listener())
    endpoint = ProviderAgentEndpoint(octavia, StatusWriter(octavia), lambda: [])
    gone = _id()
    counters = {"active_connections": 1, "bytes_in": 2, "bytes_out": 3, "request_errors": 0, "total_connections": 4}
    endpoint.update_listener_statistics(
        {}, {"listeners": [{"id": gone, **counters}, {"id": tree.listener_id, **counters}]}
    )
    assert octavia.statistics == [{"listeners": [{"id": tree.listener_id, **counters}]}]
