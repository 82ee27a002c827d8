"""The gateway against the real broker, with the real oslo.messaging as the driver side.

The gateway hands operations to in-process actors (noop backend) here; the daemon tests put
worker processes in between.
"""

from __future__ import annotations

import json
import queue
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import oslo_messaging
import pytest
import trio

from lbactors.actor import open_actor_system
from lbactors.amqp import oslo
from lbactors.amqp.connection import open_connection
from lbactors.amqp.protocol import TRUNCATED_HEAD
from lbactors.backends.noop import NoopBackend
from lbactors.gateway import BUSY_KEPT_S, Gateway, GatewaySettings, serve_gateway
from lbactors.messages import Outcome
from tests.conftest import close_vhost_connections
from tests.octavia_side import LoadBalancerTree, OsloDriver, normalized

pytestmark = pytest.mark.broker


@pytest.fixture
def settings(amqp_url: str, unique_prefix: str) -> GatewaySettings:
    return GatewaySettings(
        url=amqp_url,
        topic=f"{unique_prefix}_lb_listener",
        driver_topic=f"{unique_prefix}_driver_listener",
        exchange=f"{unique_prefix}_common",
        host=f"host-{unique_prefix}",
        prefetch=32,
        reconnect_initial=0.1,
        reconnect_max=1.0,
    )


async def _delete_topology(settings: GatewaySettings, extra_queues: list[str]) -> None:
    """Non-durable, non-auto-delete queues outlive the test (as oslo's do): remove them."""
    queues = [
        settings.topic,
        f"{settings.topic}.{settings.host}",
        settings.driver_topic,
        f"{settings.driver_topic}.octavia-test",
        *extra_queues,
    ]
    async with open_connection(settings.url) as connection:
        channel = await connection.open_channel()
        for name in queues:
            await channel.queue_delete(name)
        for exchange in (settings.exchange, f"{settings.topic}_fanout"):
            await channel.exchange_delete(exchange)


@asynccontextmanager
async def running(
    settings: GatewaySettings, backend: NoopBackend | None = None, *, driver: bool = True
) -> AsyncIterator[tuple[Gateway, OsloDriver | None]]:
    """Actors + gateway in this trio run, and oslo's driver side in threads."""
    backend = backend or NoopBackend()
    send, receive = trio.open_memory_channel[Outcome](64)
    oslo_driver = None
    try:
        async with trio.open_nursery() as nursery, open_actor_system(backend, send) as system:
            gateway: Gateway = await nursery.start(serve_gateway, settings, system, receive)
            if driver:
                oslo_driver = OsloDriver(
                    settings.url,
                    topic=settings.topic,
                    driver_topic=settings.driver_topic,
                    exchange=settings.exchange,
                )
                await trio.to_thread.run_sync(oslo_driver.start)
            try:
                yield gateway, oslo_driver
            finally:
                if oslo_driver is not None:
                    await trio.to_thread.run_sync(oslo_driver.stop)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await _delete_topology(settings, [])


async def next_status(driver: OsloDriver, timeout: float = 20) -> dict[str, Any]:
    return await trio.to_thread.run_sync(driver.next_status, timeout)


async def test_oslo_cast_runs_and_status_reaches_the_oslo_endpoint(
    settings: GatewaySettings,
) -> None:
    tree = LoadBalancerTree(0)
    async with running(settings) as (gateway, driver):
        assert driver is not None
        for method, kwargs, expected in tree.lifecycle()[:4]:
            await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))  # noqa: B023
            status = await next_status(driver)
            assert normalized(status) == normalized(expected), method
        # acked only after the confirm: nothing is left in flight once the statuses arrived
        with trio.fail_after(5):
            while gateway.in_flight:
                await trio.sleep(0.01)
        assert gateway.counters.completed == 4
        # the repair leaves a load balancer alone while its operations come out
        assert gateway.lbs_busy_since(trio.current_time() - 60) == {tree.lb_id}
        assert gateway.lbs_busy_since(trio.current_time() + 1) == set()


async def test_oslo_call_validate_flavor_gets_our_reply(settings: GatewaySettings) -> None:
    with trio.fail_after(30):
        async with running(settings) as (_, driver):
            assert driver is not None
            good = await trio.to_thread.run_sync(
                lambda: driver.call("validate_flavor", flavor_metadata={"max_connections": 100})
            )
            assert good == {"valid": True}
            metadata = await trio.to_thread.run_sync(
                lambda: driver.call("get_supported_flavor_metadata")
            )
            assert "max_connections" in metadata
            bad = await trio.to_thread.run_sync(
                lambda: driver.call("validate_flavor", flavor_metadata={"no_such_key": 1})
            )
            assert bad["valid"] is False
            assert "no_such_key" in bad["reason"]


async def test_oslo_call_of_unknown_method_raises_no_such_method(settings: GatewaySettings) -> None:
    async with running(settings) as (gateway, driver):
        assert driver is not None
        with pytest.raises(oslo_messaging.RemoteError) as failure:
            await trio.to_thread.run_sync(lambda: driver.call("frobnicate", thing=1))
        assert failure.value.exc_type == "NoSuchMethod"
        assert "frobnicate" in str(failure.value)
        with trio.fail_after(5):
            while gateway.counters.rejected < 1:
                await trio.sleep(0.01)


async def test_wrong_namespace_is_unsupported_version(settings: GatewaySettings) -> None:
    with trio.fail_after(30):
        async with running(settings) as (_, driver):
            assert driver is not None
            client = oslo_messaging.get_rpc_client(
                driver.transport,
                oslo_messaging.Target(
                    topic=settings.topic, exchange=settings.exchange, namespace="other", version="1.0"
                ),
            )
            with pytest.raises(oslo_messaging.RemoteError) as failure:
                await trio.to_thread.run_sync(
                    lambda: client.prepare(timeout=20).call({}, "get_supported_flavor_metadata")
                )
            assert failure.value.exc_type == "UnsupportedVersion"


async def test_bad_input_is_dead_lettered_and_never_blocks_others(
    settings: GatewaySettings,
) -> None:
    dlx = f"{settings.topic}_dlx"
    settings = msgspec.structs.replace(settings, dead_letter_exchange=dlx, max_body_bytes=4096)
    dead_queue = f"{settings.topic}_dead"
    tree = LoadBalancerTree(1)
    bad_bodies = [
        b"not json at all",
        b'{"oslo.version": "2.0", "oslo.message": "{\\"args\\": {}}"}',  # no method
        oslo.encode_cast("loadbalancer_create", b'{"loadbalancer": {"x": "' + b"y" * 5000 + b'"}}'),
        oslo.encode_cast("loadbalancer_create", b'{"loadbalancer": {"name": 5}}'),  # no id
    ]
    async with open_connection(settings.url) as connection:
        channel = await connection.open_channel()
        await channel.exchange_declare(dlx, "fanout", auto_delete=True)
        await channel.queue_declare(dead_queue, arguments={"x-expires": 60_000})
        await channel.queue_bind(dead_queue, dlx, "")
        async with running(settings) as (gateway, driver):
            assert driver is not None
            publisher = await connection.open_channel()
            await publisher.confirm_select()
            for body in bad_bodies:
                confirmation = await publisher.publish(settings.exchange, settings.topic, body)
                assert confirmation is not None
                await confirmation.wait()
            method, kwargs, expected = tree.lifecycle()[0]
            await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))
            assert normalized(await next_status(driver)) == normalized(expected)
            # the unusable messages went to the dead-letter exchange, in order
            dead = []
            consumer = await channel.basic_consume(dead_queue, no_ack=True)
            with trio.fail_after(10):
                async for delivery in consumer:
                    headers = delivery.properties.headers or {}
                    dead.append((delivery.body, headers.get("x-lbactors-truncated-from")))
                    if len(dead) == len(bad_bodies):
                        break
            # the body over the limit was never read whole: its head is dead-lettered
            oversized = bad_bodies[2]
            assert len(oversized) > 4096
            expected = [(body, None) for body in bad_bodies if body is not oversized]
            expected.append((oversized[:TRUNCATED_HEAD], len(oversized)))
            assert sorted(dead, key=repr) == sorted(expected, key=repr)
            assert gateway.counters.rejected == len(bad_bodies)
        await channel.queue_delete(dead_queue)


async def test_reconnect_loses_nothing(settings: GatewaySettings, vhost_url: str) -> None:
    """The broker drops every connection (ours and oslo's) in the middle of a stream of
    operations: every operation is completed (at least once; redelivered ones run again),
    none is lost."""
    settings = msgspec.structs.replace(settings, prefetch=8, url=vhost_url)
    trees = [LoadBalancerTree(i) for i in range(120)]
    async with running(settings, NoopBackend(latency=0.02)) as (gateway, driver):
        assert driver is not None
        for tree in trees:
            method, kwargs, _ = tree.lifecycle()[0]
            await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))  # noqa: B023
        seen: set[str] = set()
        closed = False
        with trio.fail_after(60):
            while len(seen) < len(trees):
                try:
                    status = await trio.to_thread.run_sync(driver.endpoint.statuses.get, True, 1.0)
                except queue.Empty:
                    continue
                for entry in status["loadbalancers"]:
                    assert entry["provisioning_status"] == "ACTIVE"
                    seen.add(entry["id"])
                if len(seen) >= 20 and not closed:
                    await trio.to_thread.run_sync(close_vhost_connections, vhost_url)
                    closed = True
        assert seen == {tree.lb_id for tree in trees}
        assert gateway.counters.reconnects >= 1


async def test_status_casts_are_queued_while_the_driver_is_away(settings: GatewaySettings) -> None:
    """The gateway declares the driver's queue, so a status is never dropped as unroutable."""
    tree = LoadBalancerTree(2)
    async with running(settings, driver=False) as (gateway, _):
        method, kwargs, expected = tree.lifecycle()[0]
        body = oslo.encode_cast(method, json.dumps(kwargs).encode())
        async with open_connection(settings.url) as connection:
            channel = await connection.open_channel()
            await channel.confirm_select()
            confirmation = await channel.publish(settings.exchange, settings.topic, body)
            assert confirmation is not None
            await confirmation.wait()
            with trio.fail_after(10):
                while gateway.counters.completed < 1:
                    await trio.sleep(0.01)
            # the driver starts later and still gets the status
            driver = OsloDriver(
                settings.url,
                topic=settings.topic,
                driver_topic=settings.driver_topic,
                exchange=settings.exchange,
            )
            await trio.to_thread.run_sync(driver.start)
            try:
                assert normalized(await next_status(driver)) == normalized(expected)
            finally:
                await trio.to_thread.run_sync(driver.stop)


async def test_get_active_loadbalancers_call_to_the_driver(settings: GatewaySettings) -> None:
    async with running(settings) as (gateway, driver):
        assert driver is not None
        driver.endpoint.active_lb_ids = ["lb-a", "lb-b"]
        with trio.fail_after(20):
            result = await gateway.call_driver("get_active_loadbalancers", b"{}", ttl=20)
        assert result == ["lb-a", "lb-b"]
        await gateway.publish_cast(
            "update_listener_statistics",
            b'{"statistics":{"listeners":[{"id":"l1","bytes_in":1,"bytes_out":2,'
            b'"active_connections":0,"total_connections":3,"request_errors":0}]}}',
        )
        stats = await trio.to_thread.run_sync(driver.endpoint.statistics.get, True, 20)
        assert stats == {
            "listeners": [
                {
                    "id": "l1",
                    "bytes_in": 1,
                    "bytes_out": 2,
                    "active_connections": 0,
                    "total_connections": 3,
                    "request_errors": 0,
                }
            ]
        }


def test_unique_ids_are_fresh() -> None:
    # two casts of the same operation are two messages (oslo dedups on _unique_id)
    first = json.loads(json.loads(oslo.encode_cast("m", b"{}"))["oslo.message"])
    second = json.loads(json.loads(oslo.encode_cast("m", b"{}"))["oslo.message"])
    assert first["_unique_id"] != second["_unique_id"]
    assert uuid.UUID(first["_unique_id"])


async def test_malformed_messages_of_every_kind_leave_the_queue_without_a_reconnect(
    settings: GatewaySettings,
) -> None:
    """Every kind in ``bench.malformed`` (undecodable AMQP properties included, which used to
    close the connection on every redelivery) is dead-lettered; objects it names get ERROR;
    the connection never drops and a good operation still completes."""
    from bench.malformed import KINDS, malformed_messages

    dlx = f"{settings.topic}_dlx"
    settings = msgspec.structs.replace(settings, dead_letter_exchange=dlx, max_body_bytes=65536)
    dead_queue = f"{settings.topic}_dead"
    messages = malformed_messages(len(KINDS) * 2, seed=7, max_body_bytes=65536)
    tree = LoadBalancerTree(3)
    async with open_connection(settings.url) as connection:
        channel = await connection.open_channel()
        await channel.exchange_declare(dlx, "fanout", auto_delete=True)
        await channel.queue_declare(dead_queue, arguments={"x-expires": 60_000})
        await channel.queue_bind(dead_queue, dlx, "")
        async with running(settings) as (gateway, driver):
            assert driver is not None
            publisher = await connection.open_channel()
            await publisher.confirm_select()
            for message in messages:
                confirmation = await publisher.publish(
                    settings.exchange, settings.topic, message.body,
                    properties=message.properties,  # type: ignore[arg-type]
                )
                assert confirmation is not None
                await confirmation.wait()
            method, kwargs, expected = tree.lifecycle()[0]
            await trio.to_thread.run_sync(lambda: driver.cast(method, **kwargs))
            named = {m.names for m in messages if m.names}
            errors: set[str] = set()
            with trio.fail_after(30):
                while True:
                    status = await next_status(driver)
                    if status.get("loadbalancers") and status["loadbalancers"][0]["id"] == tree.lb_id:
                        assert normalized(status) == normalized(expected)
                        break
                    for entry in status.get("members", []):
                        if entry["provisioning_status"] == "ERROR":
                            errors.add(entry["id"])
            with trio.fail_after(10):
                while len(errors) < len(named):
                    status = await next_status(driver)
                    errors.update(e["id"] for e in status.get("members", []))
            assert errors == named
            dead = []
            consumer = await channel.basic_consume(dead_queue, no_ack=True)
            with trio.fail_after(10):
                async for delivery in consumer:
                    dead.append(delivery)
                    if len(dead) == len(messages):
                        break
            reasons = {d.properties.headers["x-lbactors-reason"].split(":")[0] for d in dead}
            assert reasons <= {"malformed", "UnsupportedVersion", "NoSuchMethod", "InvalidOperation"}
            assert gateway.counters.rejected == len(messages)
            assert gateway.counters.reconnects == 0
        await channel.queue_delete(dead_queue)


async def test_busy_load_balancers_are_those_in_flight_or_with_a_recent_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``lbs_busy_since``: in flight, or an outcome at or after the time asked; outcomes are
    forgotten after ``BUSY_KEPT_S``."""
    _, receive = trio.open_memory_channel[Outcome](1)
    gateway = Gateway(GatewaySettings(), None, receive)  # type: ignore[arg-type]
    with trio.fail_after(BUSY_KEPT_S * 3):
        gateway._ledger_lbs["running"] = 1
        gateway._outcome_out("a")
        await trio.sleep(10)
        gateway._outcome_out("b")
        await trio.sleep(10)
        gateway._outcome_out("a")  # a's last outcome is now the newest
        now = trio.current_time()
        assert gateway.lbs_busy_since(now - 5) == {"running", "a"}
        assert gateway.lbs_busy_since(now - 15) == {"running", "a", "b"}
        assert gateway.lbs_busy_since(now + 1) == {"running"}
        await trio.sleep(BUSY_KEPT_S + 1)
        gateway._outcome_out("c")
        assert list(gateway._lb_outcome_at) == ["c"]
