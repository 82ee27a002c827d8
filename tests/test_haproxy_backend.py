"""The haproxy backend against real HAProxy processes and real traffic, on loopback only.

Operations go through the actor system (``open_actor_system``) as the daemon runs them, with
payloads shaped like reference §2.5; members are small trio HTTP servers that answer with
their own name. Every HAProxy started here is stopped by its pid at the end of the test.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from lbactors.actor import ActorSystem, open_actor_system
from lbactors.backends import load_backend
from lbactors.backends.base import BackendError
from lbactors.backends.haproxy import HaproxyBackend
from lbactors.messages import Operation, Outcome
from lbactors.model import Certificate, L7Rule, Listener, LoadBalancer, Member, Pool
from tests.haproxy_helpers import (
    MemberServer,
    alive,
    free_endpoint,
    http_get,
    kill_haproxies,
    refused,
)

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install haproxy)"
)

LB = "5e3f1c2a-1111-4000-8000-c2d3e4f5a6b7"
LI = "a1b2c3d4-1111-4000-8000-000000006677"
P1 = "b2c3d4e5-1111-4000-8000-000000007788"
P2 = "b2c3d4e5-1111-4000-8000-000000007789"
MA = "c3d4e5f6-1111-4000-8000-00000000000a"
MB = "c3d4e5f6-1111-4000-8000-00000000000b"
MC = "c3d4e5f6-1111-4000-8000-00000000000c"
HM = "d4e5f6a7-1111-4000-8000-0000000099aa"
POL = "e5f6a7b8-1111-4000-8000-00000000aabb"
RULE = "f6a7b8c9-1111-4000-8000-00000000bbcc"
BAD_RULE = "f6a7b8c9-1111-4000-8000-00000000bbcd"
PROJECT = "9c6f0000-0000-4000-8000-000000003a21"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # short: unix socket paths must fit in 107 bytes
    path = Path(tempfile.mkdtemp(prefix="lbh"))
    yield path
    kill_haproxies(path)
    shutil.rmtree(path, ignore_errors=True)


def backend(state_dir: Path, **options: Any) -> HaproxyBackend:
    b = load_backend("haproxy", {"state_dir": str(state_dir), "check_fastinter_ms": 100, **options})
    assert isinstance(b, HaproxyBackend)
    return b


class Driver:
    """Casts operations into an actor system and returns their outcomes, one at a time."""

    def __init__(self, system: ActorSystem, outcomes: trio.MemoryReceiveChannel[Outcome]) -> None:
        self.system = system
        self.outcomes = outcomes
        self.ids = itertools.count()

    async def run(self, method: str, **kwargs: Any) -> Outcome:
        await self.system.submit(
            Operation(op_id=next(self.ids), method=method, args=msgspec.json.encode(kwargs), lb_id=LB)
        )
        with trio.fail_after(30):
            return await self.outcomes.receive()

    async def ok(self, method: str, **kwargs: Any) -> Outcome:
        outcome = await self.run(method, **kwargs)
        assert outcome.status is not None and outcome.failure is None
        plural = method.split("_")[0] + ("s" if not method.startswith("l7polic") else "")
        entries = getattr(outcome.status, "l7policies" if method.startswith("l7polic") else plural)
        assert entries[0].provisioning_status in ("ACTIVE", "DELETED"), outcome
        return outcome


async def open_driver(b: HaproxyBackend) -> Any:
    send, receive = trio.open_memory_channel[Outcome](100)
    return open_actor_system(b, send), receive


# --------------------------------------------------------------------------- payloads (§2.5)


def lb_payload(vip: str) -> dict[str, Any]:
    return {
        "id": LB, "loadbalancer_id": LB, "name": "lb-1", "description": "", "admin_state_up": True,
        "flavor": None, "availability_zone": None, "project_id": PROJECT, "tenant_id": PROJECT,
        "listeners": [], "pools": [], "vip_address": vip, "vip_network_id": "n", "vip_port_id": "p",
        "vip_subnet_id": "s", "vip_qos_policy_id": None, "vip_sg_ids": None, "additional_vips": None,
    }


def lb_mini(vip: str) -> dict[str, Any]:
    return {"id": LB, "name": "lb-1", "vip_address": vip, "vip_port_id": "p", "listeners": []}


def listener_payload(vip: str, port: int, protocol: str = "HTTP") -> dict[str, Any]:
    return {
        "id": LI, "listener_id": LI, "loadbalancer_id": LB, "name": "http", "description": "",
        "admin_state_up": True, "protocol": protocol, "protocol_port": port, "connection_limit": -1,
        "default_pool_id": None, "default_pool": None, "l7policies": [], "l7_policies": [],
        "default_tls_container_ref": None, "default_tls_container_data": None, "sni_container_data": [],
        "client_authentication": "NONE", "allowed_cidrs": None, "project_id": PROJECT,
        "tenant_id": PROJECT, "loadbalancer": lb_mini(vip),
    }


def pool_payload(vip: str, pool_id: str, listener_id: str | None) -> dict[str, Any]:
    return {
        "id": pool_id, "pool_id": pool_id, "loadbalancer_id": LB, "listener_id": listener_id,
        "name": "pool", "description": "", "admin_state_up": True, "protocol": "HTTP",
        "lb_algorithm": "ROUND_ROBIN", "session_persistence": None, "healthmonitor": None,
        "members": [], "tls_enabled": False, "project_id": PROJECT, "tenant_id": PROJECT,
        "listener": {"id": listener_id, "listener_id": listener_id, "loadbalancer_id": LB} if listener_id else None,
        "listeners": [{"id": listener_id}] if listener_id else [],
        "loadbalancer": lb_mini(vip),
    }


def member_payload(vip: str, member_id: str, pool_id: str, port: int) -> dict[str, Any]:
    return {
        "id": member_id, "member_id": member_id, "pool_id": pool_id, "name": member_id[-1],
        "address": "127.0.0.1", "protocol_port": port, "subnet_id": "s", "weight": 1, "backup": False,
        "admin_state_up": True, "vnic_type": "normal", "project_id": PROJECT, "tenant_id": PROJECT,
        "pool": {"id": pool_id, "listener_id": LI, "loadbalancer_id": LB, "members": [],
                 "loadbalancer": lb_mini(vip)},
        "loadbalancer": lb_mini(vip),
    }


def monitor_payload() -> dict[str, Any]:
    return {
        "id": HM, "healthmonitor_id": HM, "pool_id": P1, "name": "hm", "type": "HTTP", "delay": 1,
        "timeout": 1, "max_retries": 1, "max_retries_down": 1, "http_method": "GET",
        "url_path": "/healthz", "expected_codes": "200", "http_version": None, "domain_name": None,
        "admin_state_up": True, "project_id": PROJECT, "tenant_id": PROJECT,
        "pool": {"id": P1, "loadbalancer_id": LB, "listener_id": LI},
    }


def policy_payload() -> dict[str, Any]:
    return {
        "id": POL, "l7policy_id": POL, "listener_id": LI, "name": "api", "description": "",
        "action": "REDIRECT_TO_POOL", "position": 1, "redirect_pool_id": P2, "redirect_url": None,
        "redirect_prefix": None, "redirect_http_code": None, "admin_state_up": True, "rules": [],
        "project_id": PROJECT, "tenant_id": PROJECT,
        "listener": {"id": LI, "listener_id": LI, "loadbalancer_id": LB, "l7policies": []},
    }


def rule_payload(rule_id: str, compare: str, value: str) -> dict[str, Any]:
    rule = {
        "id": rule_id, "l7rule_id": rule_id, "l7policy_id": POL, "name": "", "type": "PATH",
        "compare_type": compare, "key": None, "value": value, "invert": False,
        "admin_state_up": True, "project_id": PROJECT, "tenant_id": PROJECT,
    }
    return {
        **rule,
        "policy": {"id": POL, "l7policy_id": POL, "listener_id": LI, "action": "REDIRECT_TO_POOL",
                   "rules": [dict(rule)], "listener": {"id": LI, "loadbalancer_id": LB}},
    }


async def statuses(b: HaproxyBackend) -> dict[tuple[str, str], str]:
    return {(kind, oid): s for kind, oid, s in await b.operating_statuses(LB)}


async def wait_for_status(b: HaproxyBackend, expected: dict[tuple[str, str], str], within: float = 10) -> None:
    with trio.move_on_after(within):
        while True:
            current = await statuses(b)
            if all(current.get(k) == v for k, v in expected.items()):
                return
            await trio.sleep(0.1)
    pytest.fail(f"operating statuses {current} never reached {expected}")


# --------------------------------------------------------------------------- tests


async def test_http_load_balancer_end_to_end(state_dir: Path) -> None:
    vip, port = free_endpoint()
    b = backend(state_dir)
    servers = {name: MemberServer(name) for name in ("a", "b", "c")}
    system_cm, receive = await open_driver(b)
    async with trio.open_nursery() as nursery, system_cm as system:
        for server in servers.values():
            await nursery.start(server.serve)
        d = Driver(system, receive)
        await d.ok("loadbalancer_create", loadbalancer=lb_payload(vip))
        pid = b.master_pid(LB)
        assert pid is not None and alive(pid)
        await d.ok("listener_create", listener=listener_payload(vip, port), cert=None)
        await d.ok("pool_create", pool=pool_payload(vip, P1, LI))
        await d.ok("member_create", member=member_payload(vip, MA, P1, servers["a"].port))
        await d.ok("member_create", member=member_payload(vip, MB, P1, servers["b"].port))
        # a redelivered create changes nothing (no reload: same pid, same config)
        await d.ok("member_create", member=member_payload(vip, MB, P1, servers["b"].port))

        # round robin over both members
        bodies = [(await http_get(vip, port))[1] for _ in range(6)]
        assert bodies.count("a") == 3 and bodies.count("b") == 3, bodies
        stats1 = {s.id: s for s in await b.listener_statistics(LB)}[LI]
        assert stats1.total_connections >= 6 and stats1.bytes_in > 0 and stats1.bytes_out > 0

        # health monitor: both ONLINE, then b stops and turns ERROR; traffic goes to a
        await d.ok("healthmonitor_create", healthmonitor=monitor_payload())
        await wait_for_status(b, {("member", MA): "ONLINE", ("member", MB): "ONLINE", ("pool", P1): "ONLINE"})
        servers["b"].stop()
        with trio.fail_after(10):  # delay 1 s, one failure marks it down
            await wait_for_status(
                b,
                {("member", MB): "ERROR", ("member", MA): "ONLINE", ("pool", P1): "DEGRADED",
                 ("listener", LI): "DEGRADED", ("loadbalancer", LB): "DEGRADED"},
            )
        assert {(await http_get(vip, port))[1] for _ in range(4)} == {"a"}

        # counters grew with the traffic and survived the reloads in between
        stats2 = {s.id: s for s in await b.listener_statistics(LB)}[LI]
        assert stats2.total_connections >= stats1.total_connections + 4
        assert stats2.bytes_in > stats1.bytes_in and stats2.bytes_out > stats1.bytes_out

        # L7: /api goes to a second pool
        await d.ok("pool_create", pool=pool_payload(vip, P2, None))
        await d.ok("member_create", member=member_payload(vip, MC, P2, servers["c"].port))
        await d.ok("l7policy_create", l7policy=policy_payload())
        await d.ok("l7rule_create", l7rule=rule_payload(RULE, "STARTS_WITH", "/api"))
        assert await http_get(vip, port, "/api/v1") == (200, "c")
        assert await http_get(vip, port, "/web") == (200, "a")

        # a rule HAProxy rejects: ERROR with HAProxy's message, the old configuration serves
        config_before = (b.directory(LB) / "haproxy.cfg").read_text()
        outcome = await d.run("l7rule_create", l7rule=rule_payload(BAD_RULE, "REGEX", "(["))
        assert outcome.status is not None
        rules = {e.id: e for e in outcome.status.l7rules}  # type: ignore[union-attr]
        assert rules[BAD_RULE].provisioning_status == "ERROR"
        with pytest.raises(BackendError, match=r"regex '\(\[' is invalid"):
            await b.l7rule_create(msgspec.convert(rule_payload(BAD_RULE, "REGEX", "(["), L7Rule))
        assert (b.directory(LB) / "haproxy.cfg").read_text() == config_before
        assert await http_get(vip, port, "/api/v1") == (200, "c")
        assert b.master_pid(LB) == pid  # every change was a reload of the same master

        # cascade delete with the whole tree: everything DELETED, port free, process gone
        tree = lb_payload(vip) | {
            "listeners": [listener_payload(vip, port) | {
                "l7policies": [policy_payload() | {"rules": [rule_payload(RULE, "STARTS_WITH", "/api")]}]}],
            "pools": [
                pool_payload(vip, P1, LI) | {"members": [{"id": MA}, {"id": MB}], "healthmonitor": {"id": HM}},
                pool_payload(vip, P2, None) | {"members": [{"id": MC}]},
            ],
        }
        outcome = await d.run("loadbalancer_delete", loadbalancer=tree, cascade=True)
        assert outcome.status is not None
        assert {e.provisioning_status for e in outcome.status.members} == {"DELETED"}  # type: ignore[union-attr]
        assert outcome.status.loadbalancers[0].provisioning_status == "DELETED"  # type: ignore[index]
        assert refused(vip, port)
        assert not alive(pid)
        assert not b.directory(LB).exists()
        nursery.cancel_scope.cancel()


def self_signed(tmp: Path) -> tuple[str, str]:
    key, crt = tmp / "k.pem", tmp / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=lb.test", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )
    return crt.read_text(), key.read_text()


async def test_tls_termination(state_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(60):
        vip, port = free_endpoint()
        certificate, private_key = self_signed(tmp_path)
        b = backend(state_dir)
        server = MemberServer("tls-member")
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            await b.loadbalancer_create(msgspec.convert(lb_payload(vip), LoadBalancer))
            listener = msgspec.convert(listener_payload(vip, port, "TERMINATED_HTTPS"), Listener)
            cert = msgspec.convert(
                {"ref": "barbican://x", "certificate": certificate, "private_key": private_key, "passphrase": None},
                Certificate,
            )
            await b.listener_create(listener, cert)
            await b.pool_create(msgspec.convert(pool_payload(vip, P1, LI), Pool))
            await b.member_create(msgspec.convert(member_payload(vip, MA, P1, server.port), Member))
            assert await http_get(vip, port, tls=True) == (200, "tls-member")
            pems = list((b.directory(LB) / "certs").iterdir())
            assert len(pems) == 1 and pems[0].stat().st_mode & 0o777 == 0o600
            assert (b.directory(LB) / "certs").stat().st_mode & 0o777 == 0o700
            # an update without cert keeps the certificate
            await b.listener_update(listener, msgspec.structs.replace(listener, connection_limit=10), None)
            assert await http_get(vip, port, tls=True) == (200, "tls-member")
            await b.loadbalancer_delete(msgspec.convert(lb_payload(vip), LoadBalancer))
            assert refused(vip, port)
            nursery.cancel_scope.cancel()


async def serve_one_member(b: HaproxyBackend, vip: str, port: int, member_port: int) -> None:
    """Load balancer LB with an HTTP listener on ``vip:port``, pool P1 and member MA."""
    await b.loadbalancer_create(msgspec.convert(lb_payload(vip), LoadBalancer))
    await b.listener_create(msgspec.convert(listener_payload(vip, port), Listener), None)
    await b.pool_create(msgspec.convert(pool_payload(vip, P1, LI), Pool))
    await b.member_create(msgspec.convert(member_payload(vip, MA, P1, member_port), Member))


async def test_adoption_after_restart_and_restart_of_a_dead_process(state_dir: Path) -> None:
    vip, port = free_endpoint()
    server = MemberServer("m")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        first = backend(state_dir)
        await serve_one_member(first, vip, port, server.port)
        assert await http_get(vip, port) == (200, "m")
        pid = first.master_pid(LB)
        before = (await first.listener_statistics(LB))[0]
        await first.aclose()  # the daemon stops: HAProxy keeps serving
        assert pid is not None and alive(pid)
        assert await http_get(vip, port) == (200, "m")

        second = backend(state_dir)  # the daemon restarted
        assert await second.resident_lb_ids() == [LB]
        assert (await statuses(second))[("loadbalancer", LB)] == "ONLINE"
        assert second.master_pid(LB) == pid
        assert (await second.listener_statistics(LB))[0].total_connections > before.total_connections
        await second.member_create(msgspec.convert(member_payload(vip, MB, P1, server.port), Member))
        assert second.master_pid(LB) == pid
        assert [p for p in map(int, (second.directory(LB) / "haproxy.pid").read_text().split())] == [pid]
        assert await http_get(vip, port) == (200, "m")

        # the process dies: reported ERROR, restarted by the next operation
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(5):
            while alive(pid):
                await trio.sleep(0.02)
        await wait_for_status(second, {("loadbalancer", LB): "ERROR", ("listener", LI): "ERROR"})
        third = backend(state_dir)
        await third.member_delete(msgspec.convert({"id": MB}, Member))
        new_pid = third.master_pid(LB)
        assert new_pid is not None and new_pid != pid and alive(new_pid)
        assert await http_get(vip, port) == (200, "m")
        await third.stop_all()
        assert not alive(new_pid)
        nursery.cancel_scope.cancel()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_a_worker_left_by_a_dead_master_is_killed_before_the_restart(state_dir: Path) -> None:
    """A master killed outright can leave its worker holding the VIP's sockets for a while (it
    leaves when it notices; a stopped one never does): the next operation kills what still runs
    the load balancer's configuration, then starts a new master that can bind the VIP."""
    vip, port = free_endpoint()
    server = MemberServer("m")
    workers: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            b = backend(state_dir)
            await serve_one_member(b, vip, port, server.port)
            assert await http_get(vip, port) == (200, "m")
            master = b.master_pid(LB)
            assert master is not None
            workers = children(master)
            assert workers
            for worker in workers:
                os.kill(worker, signal.SIGSTOP)  # it cannot notice that its master died
            os.kill(master, signal.SIGKILL)
            with trio.fail_after(5):
                while alive(master):
                    await trio.sleep(0.02)
            await b.member_create(msgspec.convert(member_payload(vip, MB, P1, server.port), Member))
            new_master = b.master_pid(LB)
            assert new_master is not None and new_master != master and alive(new_master)
            assert not any(alive(worker) for worker in workers)
            assert await http_get(vip, port) == (200, "m")
            await b.stop_all()
            nursery.cancel_scope.cancel()
    finally:
        for worker in workers:
            with contextlib.suppress(OSError):
                os.kill(worker, signal.SIGKILL)


SQUATTED = "listener-on-a-squatted-port"


async def test_port_taken_is_an_error_and_the_old_config_serves(state_dir: Path) -> None:
    with trio.fail_after(60):
        vip, port = free_endpoint()
        _, other_port = free_endpoint()
        b = backend(state_dir)
        await b.loadbalancer_create(msgspec.convert(lb_payload(vip), LoadBalancer))
        await b.listener_create(msgspec.convert(listener_payload(vip, port), Listener), None)
        with socket.socket() as squatter:
            squatter.bind((vip, other_port))
            squatter.listen()
            second = msgspec.convert(
                listener_payload(vip, other_port) | {"id": SQUATTED, "listener_id": SQUATTED}, Listener
            )
            with pytest.raises(BackendError, match="Address already in use"):
                await b.listener_create(second, None)
        assert not refused(vip, port)
        # the refused listener is not in the running configuration (an id that no path contains)
        assert SQUATTED not in (b.directory(LB) / "haproxy.cfg").read_text()
        await b.loadbalancer_delete(msgspec.convert({"id": LB}, LoadBalancer))
        assert refused(vip, port)


async def test_flavor_and_availability_zone_metadata(state_dir: Path) -> None:
    with trio.fail_after(60):
        b = backend(state_dir)
        assert "max_connections" in await b.flavor_metadata()
        assert await b.validate_flavor({"max_connections": 100, "timeout_client_data": 1000}) is None
        assert "bogus" in (await b.validate_flavor({"bogus": 1}) or "")
        assert await b.availability_zone_metadata() == {}
        assert "zone" in (await b.validate_availability_zone({"zone": "a"}) or "")
        with pytest.raises(msgspec.ValidationError, match="unknown"):
            load_backend("haproxy", {"state_dir": str(state_dir), "unknown": 1})


async def test_state_dir_too_long_for_sockets() -> None:
    with trio.fail_after(60):
        b = HaproxyBackend(state_dir="/tmp/" + "x" * 100)
        with pytest.raises(BackendError, match="too long"):
            await b.loadbalancer_create(LoadBalancer(id=LB, vip_address="127.0.0.1"))
