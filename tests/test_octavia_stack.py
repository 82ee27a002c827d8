"""The harness of the end-to-end suite: the real Octavia 19 (tests/octavia_stack.py) with its
own ``noop_driver`` provider. noop_driver reports no status, so the test plays the provider
agent through the driver agent's sockets (octavia-lib's DriverLibrary and the harness's own
client of its protocol), exactly the path lbactors' provider agent takes."""

from __future__ import annotations

import os
import uuid

import pytest
import trio

from tests.conftest import rabbitmqctl
from tests.daemon_process import _alive
from tests.octavia_stack import (
    OCTAVIA_VENV,
    OctaviaStack,
    octavia_stack,
    octavia_venv_ready,
    open_octavia_stack,
)

pytestmark = pytest.mark.octavia

TIMEOUT = 30


@pytest.fixture
def require_octavia_venv() -> None:
    if octavia_venv_ready():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{OCTAVIA_VENV} is not built on CI: .ci/run must run scripts/octavia-venv")
    pytest.skip(f"{OCTAVIA_VENV} is not built (run scripts/octavia-venv)")


def _active(stack: OctaviaStack, lb_id: str, **children: list[str]) -> None:
    """What a provider agent sends once an operation is done: the objects ACTIVE, their load
    balancer ACTIVE again."""
    status: dict[str, list[dict[str, str]]] = {
        "loadbalancers": [
            {"id": lb_id, "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}
        ]
    }
    for collection, ids in children.items():
        status[collection] = [
            {"id": object_id, "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}
            for object_id in ids
        ]
    stack.push_status(status)


def test_load_balancer_lifecycle_through_the_real_octavia(require_octavia_venv: None) -> None:
    # providers and agents are parameters (lbactors' plug in the same way): two enabled, the
    # default one not the first, Octavia's agent named explicitly
    with octavia_stack(
        provider_drivers={"noop_driver": "The No-Op driver.", "noop_driver-alt": "Another one."},
        default_provider="noop_driver-alt",
        provider_agents=["noop_agent"],
    ) as stack:
        client = stack.client
        pids = dict(stack.pids)
        providers = client.request("GET", "v2/lbaas/providers")["providers"]
        assert {item["name"] for item in providers} == {"noop_driver", "noop_driver-alt"}
        assert (
            'Started enabled provider agent: "noop_agent"'
            in stack.logs["octavia-driver-agent"].read_text()
        )
        tmp = stack.tmp
        vhost = stack.transport_url.rsplit("/", 1)[1]
        assert stack.amqp_url == f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        assert vhost in rabbitmqctl("list_vhosts", "name").split()
        assert set(pids) == {"mariadbd", "octavia-api", "octavia-driver-agent"}

        # with the noop network driver any subnet id will do
        lb = client.create("loadbalancer", {"name": "e2e", "vip_subnet_id": str(uuid.uuid4())})
        assert lb["provisioning_status"] == "PENDING_CREATE"
        assert lb["provider"] == "noop_driver-alt"
        assert lb["project_id"] == stack.project_id
        # noop_driver reports nothing: without a provider agent the load balancer stays pending
        got = client.get("loadbalancer", lb["id"])
        assert got is not None and got["provisioning_status"] == "PENDING_CREATE"

        # the first status through the real octavia-lib DriverLibrary, the others through the
        # harness's in-process client of the same socket protocol
        stack.driver_lib(
            "update_loadbalancer_status",
            {
                "loadbalancers": [
                    {"id": lb["id"], "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}
                ]
            },
        )
        active = client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)
        assert active is not None and active["operating_status"] == "ONLINE"

        listener = client.create(
            "listener",
            {"loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 80, "name": "l1"},
        )
        assert listener["provisioning_status"] == "PENDING_CREATE"
        got = client.get("loadbalancer", lb["id"])
        assert got is not None and got["provisioning_status"] == "PENDING_UPDATE"
        _active(stack, lb["id"], listeners=[listener["id"]])
        client.wait_for_status("listener", listener["id"], "ACTIVE", TIMEOUT)
        client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)

        pool = client.create(
            "pool",
            {"listener_id": listener["id"], "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN"},
        )
        assert pool["provisioning_status"] == "PENDING_CREATE"
        _active(stack, lb["id"], listeners=[listener["id"]], pools=[pool["id"]])
        client.wait_for_status("pool", pool["id"], "ACTIVE", TIMEOUT)
        client.wait_for_status("loadbalancer", lb["id"], "ACTIVE", TIMEOUT)

        # the driver agent's other two sockets: statistics written, objects read back
        stack.push_statistics(
            {
                "listeners": [
                    {
                        "id": listener["id"],
                        "active_connections": 3,
                        "bytes_in": 1000,
                        "bytes_out": 2000,
                        "request_errors": 0,
                        "total_connections": 7,
                    }
                ]
            }
        )
        stats = client.request("GET", f"v2/lbaas/listeners/{listener['id']}/stats")["stats"]
        assert (stats["bytes_in"], stats["bytes_out"], stats["total_connections"]) == (
            1000,
            2000,
            7,
        )
        seen = stack.driver_lib("get_loadbalancer", lb["id"])
        assert seen["loadbalancer_id"] == lb["id"]
        assert [item["listener_id"] for item in seen["listeners"]] == [listener["id"]]

        client.delete("loadbalancer", lb["id"], cascade=True)
        got = client.get("loadbalancer", lb["id"])
        assert got is not None and got["provisioning_status"] == "PENDING_DELETE"
        deleted = {"provisioning_status": "DELETED"}
        stack.push_status(
            {
                "loadbalancers": [{"id": lb["id"], **deleted}],
                "listeners": [{"id": listener["id"], **deleted}],
                "pools": [{"id": pool["id"], **deleted}],
            }
        )
        client.wait_gone("loadbalancer", lb["id"], TIMEOUT)
        client.wait_gone("listener", listener["id"], TIMEOUT)
        client.wait_gone("pool", pool["id"], TIMEOUT)

    # every process it started is gone, and so are its directory and its vhost
    assert [name for name, pid in pids.items() if _alive(pid)] == []
    assert not tmp.exists()
    assert vhost not in rabbitmqctl("list_vhosts", "name").split()


CONCURRENT_LBS = 20


async def test_concurrent_load_balancers_leave_nothing_pending(require_octavia_venv: None) -> None:
    """The harness under the concurrency the end-to-end suite needs (SQLite gave up here), from
    trio as that suite will run it: load balancers built and cascade-deleted at once, each
    status written as soon as Octavia accepted the call; nothing is left, nothing PENDING, no
    API or driver agent error."""
    async with open_octavia_stack() as stack:
        client = stack.client
        trees: list[tuple[str, str, str]] = []

        def build(index: int) -> None:
            lb = client.create(
                "loadbalancer", {"name": f"c{index}", "vip_subnet_id": str(uuid.uuid4())}
            )
            _active(stack, lb["id"])
            listener = client.create(
                "listener",
                {"loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 80 + index},
            )
            _active(stack, lb["id"], listeners=[listener["id"]])
            pool = client.create(
                "pool",
                {"listener_id": listener["id"], "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN"},
            )
            _active(stack, lb["id"], listeners=[listener["id"]], pools=[pool["id"]])
            trees.append((lb["id"], listener["id"], pool["id"]))

        def cascade_delete(lb_id: str, listener_id: str, pool_id: str) -> None:
            client.delete("loadbalancer", lb_id, cascade=True)
            deleted = {"provisioning_status": "DELETED"}
            stack.push_status(
                {
                    "loadbalancers": [{"id": lb_id, **deleted}],
                    "listeners": [{"id": listener_id, **deleted}],
                    "pools": [{"id": pool_id, **deleted}],
                }
            )

        kinds = ("loadbalancer", "listener", "pool")
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                for index in range(CONCURRENT_LBS):
                    nursery.start_soon(trio.to_thread.run_sync, build, index)
            assert len(trees) == CONCURRENT_LBS
            for position, kind in enumerate(kinds):
                ids = [tree[position] for tree in trees]
                await trio.to_thread.run_sync(client.wait_for_statuses, kind, ids, "ACTIVE", 30)
            async with trio.open_nursery() as nursery:
                for tree in trees:
                    nursery.start_soon(trio.to_thread.run_sync, cascade_delete, *tree)
            for position, kind in enumerate(kinds):
                ids = [tree[position] for tree in trees]
                await trio.to_thread.run_sync(client.wait_for_statuses, kind, ids, "DELETED", 30)
        for kind in kinds:
            left = await trio.to_thread.run_sync(client.provisioning_statuses, kind)
            assert {key: status for key, status in left.items() if status != "DELETED"} == {}
        for name in ("octavia-api", "octavia-driver-agent"):
            assert "Traceback" not in stack.logs[name].read_text(), name
