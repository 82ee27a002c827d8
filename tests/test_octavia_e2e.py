"""End to end with the real Octavia 19: lbactors' provider driver inside Octavia's API, lbactors'
provider agent inside Octavia's driver agent, and ``lbactors serve`` (noop backend) between them,
all on the stack's own RabbitMQ vhost. Everything goes through Octavia's REST API; the test
only reads Octavia's database (the stack's private MariaDB) to see members and L7 rules of every
load balancer at once and to count what is left PENDING.

One stack for the module (it takes ~15 s to start); every test uses a project of its own and
starts its own ``lbactors serve`` (so the daemon's counters in its ``lbactors stopped`` log line
are that test's), on the topics and exchange written in the stack's ``[lbactors]`` section.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from lbactors.amqp import oslo
from lbactors.amqp.connection import open_connection
from tests.daemon_process import DaemonProcess, NotifySocket
from tests.haproxy_helpers import (
    MemberServer,
    alive,
    free_endpoint,
    http_get,
    kill_haproxies,
    refused,
)
from tests.octavia_stack import (
    OCTAVIA_VENV,
    OctaviaAPIError,
    OctaviaClient,
    OctaviaStack,
    octavia_stack,
    octavia_venv_ready,
)

pytestmark = pytest.mark.octavia

TIMEOUT = 30
#: the issue's figure is 50 (``OCTAVIA_E2E_LBS=50``: about 2 minutes here, most of it in
#: Octavia's API); the suite builds 10 at once to keep CI well under 20 minutes. Not an
#: ``LBACTORS_`` name: the daemon refuses an ``LBACTORS_`` variable that names no key
CONCURRENT_LBS = int(os.environ.get("OCTAVIA_E2E_LBS", "10"))
PHASE_TIMEOUT = 60
#: Octavia's tables with a provisioning status, all with a project_id column
TABLES = ("load_balancer", "listener", "pool", "member", "health_monitor", "l7policy", "l7rule")


# ---------------------------------------------------------------------- the stack and the daemon


class E2E:
    """The module's stack and the names lbactors' three parts share on it."""

    def __init__(self, stack: OctaviaStack, names: dict[str, str]) -> None:
        self.stack = stack
        self.names = names

    def client(self) -> OctaviaClient:
        """A client with a project of its own: a test sees (and counts) only its objects."""
        return OctaviaClient(self.stack.api_url, project_id=uuid.uuid4().hex, timeout=60)

    def sql(self, query: str) -> list[list[str]]:
        return self.stack.sql(query)

    def statuses(self, project_id: str) -> dict[str, dict[str, int]]:
        """Rows of the project by table and provisioning status (deleted load balancers
        included: Octavia keeps them as DELETED)."""
        query = " UNION ALL ".join(
            f"SELECT '{table}', provisioning_status, COUNT(*) FROM {table} "
            f"WHERE project_id = '{project_id}' GROUP BY provisioning_status"
            for table in TABLES
        )
        counts: dict[str, dict[str, int]] = {}
        for table, status, count in self.sql(query):
            counts.setdefault(table, {})[status] = int(count)
        return counts

    def agent_counters(self) -> dict[str, int]:
        """The provider agent's last logged counters (cumulative over the module)."""
        return self.stack.agent_counters()


@pytest.fixture(scope="module")
def e2e() -> Iterator[E2E]:
    if not octavia_venv_ready():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{OCTAVIA_VENV} is not built on CI: .ci/run must run scripts/octavia-venv")
        pytest.skip(f"{OCTAVIA_VENV} is not built (run scripts/octavia-venv)")
    prefix = f"lbt_{uuid.uuid4().hex[:12]}"
    names = {
        "topic": f"{prefix}_lb_listener",
        "driver_topic": f"{prefix}_driver_listener",
        "exchange": f"{prefix}_common",
    }
    with octavia_stack(
        provider_drivers={"lbactors": "lbactors serve with its noop backend"},
        provider_agents=["lbactors"],
        extra_conf={"lbactors": dict(names)},
        api_workers=4,
        keep_dir=os.environ.get("OCTAVIA_E2E_KEEP_DIR") == "1",
    ) as stack:
        yield E2E(stack, names)
        for name in ("octavia-api", "octavia-driver-agent"):
            assert unexpected_tracebacks(stack.logs[name].read_text(errors="replace")) == [], (
                f"{name}:\n{stack.log_tails(80)}"
            )


def unexpected_tracebacks(log: str) -> list[str]:
    """The tracebacks of a log but the ones Octavia's API writes for the refused flavor
    profiles (a 501 answer: wsme logs it as a server-side error, with the driver's
    UnsupportedOptionError and Octavia's ProviderUnsupportedOptionError chained)."""
    return [
        block[:2000]
        for block in log.split("Traceback (most recent call last)")[1:]
        if "UnsupportedOptionError" not in block[:5000]
    ]


@asynccontextmanager
async def lbactors_serve(
    e2e: E2E, tmp_path: Path, **extra_env: str
) -> AsyncIterator[DaemonProcess]:
    """``lbactors serve`` (noop backend) on the stack's vhost and names, stopped at the end."""
    notify = NotifySocket()
    await notify.bind()
    env = {
        "LBACTORS_AMQP_URL": e2e.stack.amqp_url,
        "LBACTORS_AMQP_TOPIC": e2e.names["topic"],
        "LBACTORS_AMQP_DRIVER_TOPIC": e2e.names["driver_topic"],
        "LBACTORS_AMQP_EXCHANGE": e2e.names["exchange"],
        "LBACTORS_DAEMON_WORKERS": "2",
        "LBACTORS_DAEMON_STOP_TIMEOUT": "2",
        **extra_env,
    }
    daemon = DaemonProcess(env, notify, tmp_path / "lbactors.log")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(notify.serve)
        try:
            await daemon.start()
            yield daemon
        finally:
            with trio.CancelScope(shield=True):
                await daemon.stop()
            notify.close()
            nursery.cancel_scope.cancel()


def stopped_counters(daemon: DaemonProcess) -> dict[str, Any]:
    line = next(line for line in daemon.log_lines() if line.get("event") == "lbactors stopped")
    return line


def no_daemon_errors(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [line for line in daemon.log_lines() if line.get("level") in ("error", "critical")]


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(function, *args)


# ---------------------------------------------------------------------- 1. child by child


async def test_a_load_balancer_built_child_by_child(e2e: E2E, tmp_path: Path) -> None:
    client = e2e.client()
    timings: dict[str, float] = {}
    holder: list[str] = []  # the load balancer's id

    def step(name: str, kind: str, call: Callable[[], Any], parent: str | None = None) -> Any:
        """The API call (a create or an update), then the object and its load balancer ACTIVE;
        the time from the call to both. The answer is read after Octavia's commit, and lbactors'
        status can land in between (its agent's write waits for the rows Octavia locked): so
        the answer may be ACTIVE already."""
        start = time.monotonic()
        result = call()
        assert result["provisioning_status"] in ("PENDING_CREATE", "PENDING_UPDATE", "ACTIVE"), result
        client.wait_for_status(kind, result["id"], "ACTIVE", TIMEOUT, parent=parent)
        client.wait_for_status("loadbalancer", holder[0], "ACTIVE", TIMEOUT)
        timings[name] = time.monotonic() - start
        return result

    async with lbactors_serve(e2e, tmp_path) as daemon:

        def scenario() -> None:
            lb = client.create(
                "loadbalancer", {"name": "e2e-one", "vip_subnet_id": str(uuid.uuid4())}
            )
            assert lb["provider"] == "lbactors" and lb["provisioning_status"] in ("PENDING_CREATE", "ACTIVE")
            lb_id = lb["id"]
            holder.append(lb_id)
            start = time.monotonic()
            client.wait_for_status("loadbalancer", lb_id, "ACTIVE", TIMEOUT)
            timings["loadbalancer"] = time.monotonic() - start

            listener = step(
                "listener",
                "listener",
                lambda: client.create(
                    "listener",
                    {"loadbalancer_id": lb_id, "protocol": "HTTP", "protocol_port": 80},
                ),
            )
            pool = step(
                "pool",
                "pool",
                lambda: client.create(
                    "pool",
                    {"listener_id": listener["id"], "protocol": "HTTP",
                     "lb_algorithm": "ROUND_ROBIN"},
                ),
            )  # fmt: skip
            members = []
            for index in (1, 2):
                member = step(
                    f"member{index}",
                    "member",
                    lambda index=index: client.create(
                        "member",
                        {"address": f"192.0.2.{10 + index}", "protocol_port": 8080},
                        parent=pool["id"],
                    ),
                    parent=pool["id"],
                )
                members.append(member)
            monitor = step(
                "healthmonitor",
                "healthmonitor",
                lambda: client.create(
                    "healthmonitor",
                    {"pool_id": pool["id"], "type": "HTTP", "delay": 5, "timeout": 3,
                     "max_retries": 3, "url_path": "/health"},
                ),
            )  # fmt: skip
            policy = step(
                "l7policy",
                "l7policy",
                lambda: client.create(
                    "l7policy",
                    {"listener_id": listener["id"], "action": "REDIRECT_TO_POOL",
                     "redirect_pool_id": pool["id"], "position": 1},
                ),
            )  # fmt: skip
            step(
                "l7rule",
                "l7rule",
                lambda: client.create(
                    "l7rule",
                    {"type": "PATH", "compare_type": "STARTS_WITH", "value": "/api"},
                    parent=policy["id"],
                ),
                parent=policy["id"],
            )

            # the whole tree as Octavia shows it
            got = client.get("loadbalancer", lb_id)
            assert got is not None and got["operating_status"] == "ONLINE"
            got_pool = client.get("pool", pool["id"])
            assert got_pool is not None
            assert sorted(m["id"] for m in got_pool["members"]) == sorted(m["id"] for m in members)
            assert got_pool["healthmonitor_id"] == monitor["id"]

            # member update, then delete
            first, second = members
            step(
                "member update",
                "member",
                lambda: client.update("member", first["id"], {"weight": 7}, parent=pool["id"]),
                parent=pool["id"],
            )
            got_member = client.get("member", first["id"], parent=pool["id"])
            assert got_member is not None and got_member["weight"] == 7
            start = time.monotonic()
            client.delete("member", second["id"], parent=pool["id"])
            client.wait_gone("member", second["id"], TIMEOUT, parent=pool["id"])
            client.wait_for_status("loadbalancer", lb_id, "ACTIVE", TIMEOUT)
            timings["member delete"] = time.monotonic() - start

            # cascade delete until Octavia shows it gone, children included
            start = time.monotonic()
            client.delete("loadbalancer", lb_id, cascade=True)
            client.wait_gone("loadbalancer", lb_id, TIMEOUT)
            timings["cascade delete"] = time.monotonic() - start
            for kind, object_id, parent in (
                ("listener", listener["id"], None),
                ("pool", pool["id"], None),
                ("healthmonitor", monitor["id"], None),
                ("l7policy", policy["id"], None),
            ):
                assert client.get(kind, object_id, parent=parent) is None, kind

        with trio.fail_after(240):
            await in_thread(scenario)
    assert e2e.statuses(client.project_id) == {"load_balancer": {"DELETED": 1}}
    assert no_daemon_errors(daemon) == []
    print(
        "\nchild by child, API call -> ACTIVE (s): "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in timings.items()),
        file=sys.stderr,
    )


# ---------------------------------------------------------------------- 2. fifty at once


async def test_fifty_full_trees_at_once_leave_nothing_pending(e2e: E2E, tmp_path: Path) -> None:
    """Octavia's commit race: its API casts to the driver before it commits, lbactors answers in
    milliseconds. 50 load balancers get their trees built phase by phase (each phase: one call
    per load balancer, all at once), then are cascade-deleted at once; nothing may stay PENDING.
    """
    client = e2e.client()
    agent_before = e2e.agent_counters()
    lock = threading.Lock()
    trees: list[dict[str, str]] = [{} for _ in range(CONCURRENT_LBS)]
    phase_times: dict[str, float] = {}
    last_call = [0.0]

    def called() -> None:
        with lock:
            last_call[0] = time.monotonic()

    async def phase(name: str, create: Callable[[int, dict[str, str]], None], kind: str) -> None:
        start = time.monotonic()

        def one(index: int) -> None:
            create(index, trees[index])
            called()

        async with trio.open_nursery() as nursery:
            for index in range(CONCURRENT_LBS):
                nursery.start_soon(in_thread, one, index)
        lb_ids = [tree["lb"] for tree in trees]
        if kind in ("loadbalancer", "listener", "pool", "healthmonitor", "l7policy"):
            ids = [tree[name] for tree in trees]
            await in_thread(client.wait_for_statuses, kind, ids, "ACTIVE", PHASE_TIMEOUT)
        await in_thread(client.wait_for_statuses, "loadbalancer", lb_ids, "ACTIVE", PHASE_TIMEOUT)
        phase_times[name] = time.monotonic() - start
        print(f"phase {name}: {phase_times[name]:.1f} s", file=sys.stderr, flush=True)

    def create_lb(index: int, tree: dict[str, str]) -> None:
        lb = client.create(
            "loadbalancer", {"name": f"e2e-{index}", "vip_subnet_id": str(uuid.uuid4())}
        )
        tree["lb"] = lb["id"]

    def create_listener(index: int, tree: dict[str, str]) -> None:
        tree["listener"] = client.create(
            "listener", {"loadbalancer_id": tree["lb"], "protocol": "HTTP", "protocol_port": 80}
        )["id"]

    def create_pool(index: int, tree: dict[str, str]) -> None:
        tree["pool"] = client.create(
            "pool",
            {"listener_id": tree["listener"], "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN"},
        )["id"]

    def create_member(number: int) -> Callable[[int, dict[str, str]], None]:
        def create(index: int, tree: dict[str, str]) -> None:
            tree[f"member{number}"] = client.create(
                "member",
                {"address": f"192.0.2.{number}", "protocol_port": 8080},
                parent=tree["pool"],
            )["id"]

        return create

    def create_monitor(index: int, tree: dict[str, str]) -> None:
        tree["healthmonitor"] = client.create(
            "healthmonitor",
            {"pool_id": tree["pool"], "type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 3},
        )["id"]

    def create_policy(index: int, tree: dict[str, str]) -> None:
        tree["l7policy"] = client.create(
            "l7policy", {"listener_id": tree["listener"], "action": "REJECT", "position": 1}
        )["id"]

    def create_rule(index: int, tree: dict[str, str]) -> None:
        tree["l7rule"] = client.create(
            "l7rule", {"type": "PATH", "compare_type": "STARTS_WITH", "value": "/x"},
            parent=tree["l7policy"],
        )["id"]  # fmt: skip

    # the default re-assertion schedule: lbactors' agent skips what it has written already
    async with lbactors_serve(e2e, tmp_path) as daemon:
        with trio.fail_after(600):
            started = time.monotonic()
            await phase("lb", create_lb, "loadbalancer")
            await phase("listener", create_listener, "listener")
            await phase("pool", create_pool, "pool")
            await phase("member1", create_member(1), "member")
            await phase("member2", create_member(2), "member")
            await phase("healthmonitor", create_monitor, "healthmonitor")
            await phase("l7policy", create_policy, "l7policy")
            await phase("l7rule", create_rule, "l7rule")
            built = time.monotonic() - started

            # every object ACTIVE, members and rules included (re-assertions are due within
            # 10 s of a create whose status Octavia dropped)
            expected = {table: {"ACTIVE": CONCURRENT_LBS} for table in TABLES}
            expected["member"] = {"ACTIVE": 2 * CONCURRENT_LBS}
            deadline = time.monotonic() + 20
            while (seen := await in_thread(e2e.statuses, client.project_id)) != expected:
                assert time.monotonic() < deadline, f"not all ACTIVE: {seen}"
                await trio.sleep(0.5)

            started = time.monotonic()

            def cascade(index: int) -> None:
                client.delete("loadbalancer", trees[index]["lb"], cascade=True)
                called()

            async with trio.open_nursery() as nursery:
                for index in range(CONCURRENT_LBS):
                    nursery.start_soon(in_thread, cascade, index)
            lb_ids = [tree["lb"] for tree in trees]
            await in_thread(client.wait_for_statuses, "loadbalancer", lb_ids, "DELETED", TIMEOUT)
            deleted = time.monotonic() - started

            # 30 s after the last call: nothing PENDING, nothing but the DELETED load balancers
            await trio.sleep(max(0.0, last_call[0] + 30 - time.monotonic()))
            left = await in_thread(e2e.statuses, client.project_id)
    daemon_counters = stopped_counters(daemon)
    agent = {key: value - agent_before.get(key, 0) for key, value in e2e.agent_counters().items()}
    print(
        f"\n{CONCURRENT_LBS} load balancers: built in {built:.1f} s (phases, call -> all ACTIVE: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in phase_times.items())
        + f"), cascade-deleted in {deleted:.1f} s; left 30 s after the last call: {left}; "
        f"lbactors serve: {json.dumps({k: daemon_counters.get(k) for k in ('completed', 'reasserted', 'reassertions_dropped')})}; "
        f"provider agent: {agent}",
        file=sys.stderr,
    )
    pending = {
        table: {status: count for status, count in counts.items() if status.startswith("PENDING")}
        for table, counts in left.items()
    }
    assert {table: counts for table, counts in pending.items() if counts} == {}
    assert left == {"load_balancer": {"DELETED": CONCURRENT_LBS}}
    assert no_daemon_errors(daemon) == []
    assert agent.get("busy_failures", 0) == 0 and agent.get("dropped", 0) == 0
    # the daemon re-asserted creates, and the agent did not write again what it had written
    assert daemon_counters.get("reasserted", 0) > 0
    assert agent.get("reassertions_skipped", 0) > 0


# ---------------------------------------------------------------------- 3. flavors


async def test_flavor_validation_through_octavias_flavor_api(e2e: E2E, tmp_path: Path) -> None:
    client = e2e.client()

    def profile(data: dict[str, Any]) -> dict[str, Any]:
        body = {
            "flavorprofile": {
                "name": f"p-{uuid.uuid4().hex[:8]}",
                "provider_name": "lbactors",
                "flavor_data": json.dumps(data),
            }
        }
        return dict(client.request("POST", "v2/lbaas/flavorprofiles", body)["flavorprofile"])

    async with lbactors_serve(e2e, tmp_path):
        with trio.fail_after(120):
            good = await in_thread(profile, {"max_connections": 1000})
            assert good["provider_name"] == "lbactors"
            with pytest.raises(OctaviaAPIError) as refused:
                await in_thread(profile, {"max_connections": 1000, "bogus_key": 1})
            assert refused.value.status == 501
            assert "unsupported flavor metadata key 'bogus_key'" in refused.value.body
            assert "lbactors" in refused.value.body
            with pytest.raises(OctaviaAPIError) as refused:
                await in_thread(profile, {"max_connections": 0})
            assert refused.value.status == 501
            assert "max_connections" in refused.value.body
            # what the backend supports, through the provider capability API
            capabilities = await in_thread(
                client.request, "GET", "v2/lbaas/providers/lbactors/flavor_capabilities"
            )
            assert {item["name"] for item in capabilities["flavor_capabilities"]} == {
                "max_connections",
                "timeout_client_data",
            }


# ---------------------------------------------------------------------- 4. haproxy in the loop


async def test_haproxy_backend_in_the_loop(e2e: E2E, tmp_path: Path) -> None:
    """``lbactors serve`` with the haproxy backend: a VIP on 127.0.0.x (Octavia's noop network
    driver keeps the address asked for), two real HTTP members answering round robin through
    it, listener statistics growing in Octavia's API, a stopped member ERROR with its pool
    DEGRADED and both ONLINE again once it is back, and a cascade delete that stops HAProxy."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    client = e2e.client()
    vip, port = free_endpoint()
    state_dir = Path(tempfile.mkdtemp(prefix="lbe"))  # short: unix socket paths
    env = {
        "LBACTORS_BACKEND_NAME": "haproxy",
        "LBACTORS_BACKEND_HAPROXY_STATE_DIR": str(state_dir),
        "LBACTORS_BACKEND_HAPROXY_CHECK_FASTINTER_MS": "100",
        "LBACTORS_STATS_INTERVAL": "0.5",
    }

    def wait_operating(kind: str, object_id: str, status: str, parent: str | None = None) -> None:
        deadline = time.monotonic() + TIMEOUT
        while (got := client.get(kind, object_id, parent=parent)) is None or (
            got["operating_status"] != status
        ):
            assert time.monotonic() < deadline, f"{kind} {object_id} not {status}: {got}"
            time.sleep(0.2)

    def stats(listener_id: str) -> dict[str, int]:
        return dict(client.request("GET", f"v2/lbaas/listeners/{listener_id}/stats")["stats"])

    def wait_stats(listener_id: str, at_least: int) -> dict[str, int]:
        deadline = time.monotonic() + TIMEOUT
        while (seen := stats(listener_id))["total_connections"] < at_least:
            assert time.monotonic() < deadline, f"listener stats stuck at {seen}"
            time.sleep(0.2)
        return seen

    async def answers(count: int) -> list[str]:
        return [(await http_get(vip, port, "/"))[1] for _ in range(count)]

    try:
        async with trio.open_nursery() as members, lbactors_serve(e2e, tmp_path, **env) as daemon:
            server_a = await members.start(MemberServer("a").serve)
            server_b = await members.start(MemberServer("b").serve)
            with trio.fail_after(180):
                lb = await in_thread(
                    client.create,
                    "loadbalancer",
                    {"name": "e2e-haproxy", "vip_subnet_id": str(uuid.uuid4()), "vip_address": vip},
                )
                assert lb["vip_address"] == vip
                await in_thread(client.wait_for_status, "loadbalancer", lb["id"], "ACTIVE", TIMEOUT)

                async def create(kind: str, fields: dict[str, Any], parent: str | None = None) -> str:
                    made = await in_thread(lambda: client.create(kind, fields, parent=parent))
                    await in_thread(
                        lambda: client.wait_for_status(
                            kind, made["id"], "ACTIVE", TIMEOUT, parent=parent
                        )
                    )
                    await in_thread(client.wait_for_status, "loadbalancer", lb["id"], "ACTIVE", TIMEOUT)
                    return str(made["id"])

                listener = await create(
                    "listener",
                    {"loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": port},
                )
                pool = await create(
                    "pool",
                    {"listener_id": listener, "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN"},
                )
                member_a = await create(
                    "member", {"address": "127.0.0.1", "protocol_port": server_a.port}, pool
                )
                member_b = await create(
                    "member", {"address": "127.0.0.1", "protocol_port": server_b.port}, pool
                )
                await create(
                    "healthmonitor",
                    {"pool_id": pool, "type": "HTTP", "delay": 1, "timeout": 1, "max_retries": 1,
                     "max_retries_down": 1, "url_path": "/health"},
                )  # fmt: skip
                for member in (member_a, member_b):
                    await in_thread(wait_operating, "member", member, "ONLINE", pool)
                await in_thread(wait_operating, "pool", pool, "ONLINE")
                await in_thread(wait_operating, "loadbalancer", lb["id"], "ONLINE")

                # round robin through the VIP, and the statistics in Octavia's API
                bodies = await answers(10)
                assert sorted(bodies) == ["a"] * 5 + ["b"] * 5, bodies
                assert all(bodies[i] != bodies[i + 1] for i in range(9)), bodies
                first = await in_thread(wait_stats, listener, 10)
                assert first["bytes_in"] > 0 and first["bytes_out"] > 0, first
                await answers(6)
                second = await in_thread(wait_stats, listener, first["total_connections"] + 6)
                assert second["bytes_in"] > first["bytes_in"], (first, second)
                assert second["bytes_out"] > first["bytes_out"], (first, second)

                # a member stops: ERROR, its pool DEGRADED, and the other one takes everything
                server_b.stop()
                await in_thread(wait_operating, "member", member_b, "ERROR", pool)
                await in_thread(wait_operating, "pool", pool, "DEGRADED")
                await in_thread(wait_operating, "loadbalancer", lb["id"], "DEGRADED")
                got = await in_thread(lambda: client.get("member", member_a, parent=pool))
                assert got is not None and got["operating_status"] == "ONLINE"
                assert set(await answers(4)) == {"a"}

                # back on its port: ONLINE again, and round robin again
                await members.start(MemberServer("b", server_b.port).serve)
                await in_thread(wait_operating, "member", member_b, "ONLINE", pool)
                await in_thread(wait_operating, "pool", pool, "ONLINE")
                await in_thread(wait_operating, "loadbalancer", lb["id"], "ONLINE")
                assert set(await answers(4)) == {"a", "b"}

                # cascade delete: gone from Octavia, HAProxy stopped, its directory removed
                pid_file = state_dir / lb["id"] / "haproxy.pid"
                master = int(pid_file.read_text().split()[0])
                await in_thread(lambda: client.delete("loadbalancer", lb["id"], cascade=True))
                await in_thread(client.wait_gone, "loadbalancer", lb["id"], TIMEOUT)
                assert not (state_dir / lb["id"]).exists()
                assert not alive(master)
                assert await in_thread(refused, vip, port)
            members.cancel_scope.cancel()
    finally:
        kill_haproxies(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
    assert e2e.statuses(client.project_id) == {"load_balancer": {"DELETED": 1}}
    assert no_daemon_errors(daemon) == []


# ---------------------------------------------------------------------- 5. parent lookups


_PARENTS_SCRIPT = """
import json, sys
from octavia.common import config
conf_path, status, stats, get = sys.argv[1:5]
config.init(["--config-file", conf_path])
from octavia_lib.api.drivers import driver_lib
from lbactors.octavia.inprocess import InProcessDriverLibrary
database = InProcessDriverLibrary()
library = driver_lib.DriverLibrary(status_socket=status, stats_socket=stats, get_socket=get)
def plain(model):
    return None if model is None else model.to_dict(recurse=True, render_unsets=True)
out = []
for method, object_id in json.load(sys.stdin):
    out.append([method, object_id, plain(getattr(database, method)(object_id)),
                plain(getattr(library, method)(object_id))])
json.dump(out, sys.stdout, default=str)
"""


async def test_parents_read_in_octavia_api_match_the_driver_agents(
    e2e: E2E, tmp_path: Path
) -> None:
    """Inside octavia-api the driver reads the parents it nests into payloads, and inside the
    driver agent lbactors' provider agent checks and writes, with the driver agent's own code
    in-process (no fork, no socket); what it reads is what octavia-lib's DriverLibrary gets from
    the driver agent, field for field, for every kind either looks up."""
    client = e2e.client()
    stack = e2e.stack
    async with lbactors_serve(e2e, tmp_path):

        def build() -> dict[str, str]:
            tree: dict[str, str] = {}
            lb = client.create("loadbalancer", {"vip_subnet_id": str(uuid.uuid4())})
            tree["loadbalancer"] = lb["id"]
            for kind, fields in (
                ("listener", {"loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 80}),
                ("pool", {"loadbalancer_id": lb["id"], "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN"}),
                ("healthmonitor", {"type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 3}),
                ("l7policy", {"action": "REDIRECT_TO_POOL", "position": 1}),
            ):  # fmt: skip
                client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)
                if kind == "healthmonitor":
                    fields = {**fields, "pool_id": tree["pool"]}
                if kind == "l7policy":
                    fields = {**fields, "listener_id": tree["listener"], "redirect_pool_id": tree["pool"]}
                tree[kind] = client.create(kind, fields)["id"]
                client.wait_for_status(kind, tree[kind], "ACTIVE", TIMEOUT)
            client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)
            tree["member"] = client.create(
                "member", {"address": "192.0.2.7", "protocol_port": 80}, parent=tree["pool"]
            )["id"]
            client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)
            return tree

        with trio.fail_after(180):
            tree = await in_thread(build)
            lookups = [[f"get_{kind}", object_id] for kind, object_id in tree.items()]
            lookups.append(["get_pool", str(uuid.uuid4())])  # not there: None both ways
            result = await trio.run_process(
                [str(OCTAVIA_VENV / "bin" / "python"), "-c", _PARENTS_SCRIPT,
                 str(stack.conf_path), str(stack.status_socket), str(stack.stats_socket),
                 str(stack.get_socket)],
                stdin=json.dumps(lookups).encode(), capture_stdout=True, capture_stderr=True,
                check=False,
            )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    answers = json.loads(result.stdout)
    assert [answer[:2] for answer in answers] == lookups
    for method, object_id, database, library in answers:
        assert database == library, (method, object_id)
    assert all(answer[2] is not None for answer in answers[:-1])
    assert answers[-1][2] is None
    # the pool's payload nests its members and health monitor; the policy its pool
    pool = answers[2][2]
    assert pool["healthmonitor"]["healthmonitor_id"] == tree["healthmonitor"]
    assert len(pool["members"]) == 1
    api_log = stack.logs["octavia-api"].read_text(errors="replace")
    assert "parent lookups read Octavia's database in this process" in api_log
    assert "parent lookups ask the driver agent" not in api_log
    agent_log = stack.logs["octavia-driver-agent"].read_text(errors="replace")
    assert "the provider agent writes Octavia's database in this process" in agent_log


# ---------------------------------------------------------------------- 6. before the commit


async def test_a_status_written_before_octavias_commit_is_not_lost(
    e2e: E2E, tmp_path: Path
) -> None:
    """Octavia's API sets the objects of an operation PENDING_* in a transaction that holds the
    load balancer's row, calls the driver, and commits after. A status the agent writes in
    between must land after the commit: Octavia's L7 policy repository loads the row from the
    writer's snapshot (still ACTIVE), finds nothing to change and writes nothing, so the API's
    PENDING_UPDATE would stay. Here the test is the API: it holds that transaction open
    while lbactors' status for the policy and its load balancer arrives."""
    client = e2e.client()
    async with lbactors_serve(e2e, tmp_path):

        def build() -> tuple[str, str]:
            lb = client.create("loadbalancer", {"vip_subnet_id": str(uuid.uuid4())})
            client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)
            listener = client.create(
                "listener", {"loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 80}
            )
            client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)
            policy = client.create(
                "l7policy", {"listener_id": listener["id"], "action": "REJECT", "position": 1}
            )
            client.wait_for_status("l7policy", policy["id"], "ACTIVE", TIMEOUT)
            client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)
            return lb["id"], policy["id"]

        with trio.fail_after(120):
            lb_id, policy_id = await in_thread(build)
    api = subprocess.Popen(  # noqa: ASYNC220 - its pipes are read in a thread
        e2e.stack.mariadb_command("--unbuffered"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert api.stdin is not None and api.stdout is not None
    try:
        api.stdin.write(
            "BEGIN;\n"
            f"SELECT id FROM load_balancer WHERE id = '{lb_id}' FOR UPDATE;\n"
            f"UPDATE load_balancer SET provisioning_status = 'PENDING_UPDATE' WHERE id = '{lb_id}';\n"
            f"UPDATE l7policy SET provisioning_status = 'PENDING_UPDATE' WHERE id = '{policy_id}';\n"
            "SELECT 'held';\n"
        )
        api.stdin.flush()
        with trio.fail_after(30):
            while (line := await in_thread(api.stdout.readline)).strip() != "held":
                assert line, "the mariadb client ended"
        # lbactors' status for that operation, as lbactors serve casts it
        status = {
            "l7policies": [{"id": policy_id, "provisioning_status": "ACTIVE"}],
            "loadbalancers": [{"id": lb_id, "provisioning_status": "ACTIVE"}],
        }
        with trio.fail_after(30):
            async with open_connection(e2e.stack.amqp_url) as connection:
                channel = await connection.open_channel()
                await channel.publish(
                    e2e.names["exchange"], e2e.names["driver_topic"],
                    oslo.encode_cast("update_loadbalancer_status", json.dumps({"status": status}).encode()),
                    properties=oslo.CAST_PROPERTIES,
                )  # fmt: skip
            # the agent waits for the rows held here (its commit wait): then commit. An agent
            # that does not wait writes at once, and the check below says what it left
            with trio.move_on_after(10):
                while not int(
                    (await in_thread(e2e.sql, "SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS"))[0][0]
                ):  # fmt: skip
                    await trio.sleep(0.05)
        api.stdin.write("COMMIT;\n")
        api.stdin.close()
        api.wait(30)
    finally:
        api.kill()
    deadline = time.monotonic() + TIMEOUT
    while (
        got := e2e.sql(
            f"SELECT provisioning_status FROM l7policy WHERE id = '{policy_id}' UNION ALL "
            f"SELECT provisioning_status FROM load_balancer WHERE id = '{lb_id}'"
        )
    ) != [["ACTIVE"], ["ACTIVE"]]:
        assert time.monotonic() < deadline, f"policy, load balancer: {got}"
        await trio.sleep(0.2)
