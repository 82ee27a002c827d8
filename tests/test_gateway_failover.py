"""The gateway with several broker hosts, over real sockets: it opens on the first host that
answers, logs which one (host:port, no password) and which failed and why, and after losing
the host it was on it moves on to the next one (round-robin) instead of retrying the dead one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import msgspec
import pytest
import structlog
import trio
import trio.testing

from lbactors.gateway import Gateway, GatewaySettings, serve_gateway
from lbactors.messages import Operation, Outbound
from tests.test_amqp_failover import unused_port
from tests.test_gateway import _delete_topology

pytestmark = pytest.mark.broker


class DropSink:
    async def submit(self, op: Operation) -> None:
        pass


class Relay:
    """A TCP relay from a port of its own on 127.0.0.1 to the broker; ``shut()`` drops the
    connections it relays and closes its port (a connect to it is refused from then on)."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self._scope = trio.CancelScope()

    async def serve(self, *, task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._relay, listeners)
                task_status.started(self)

    def shut(self) -> None:
        self._scope.cancel()

    async def _relay(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        async with client, await trio.open_tcp_stream("127.0.0.1", 5672) as server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


class LogWatch:
    """Log lines as ``structlog.testing.capture_logs`` keeps them, each stamped with the trio
    clock, and a way to wait for one without polling."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._changed = trio.Event()

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        try:
            event_dict["t"] = trio.current_time()
        except RuntimeError:  # not in a trio run
            pass
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return event_dict

    def named(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if entry["event"] == name]

    async def wait_for(self, name: str, count: int = 1) -> None:
        while len(self.named(name)) < count:
            await self._changed.wait()


@contextmanager
def watching_logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    with structlog.testing.capture_logs(processors=[watch]) as entries:
        watch.entries = entries
        yield watch


@pytest.fixture
def slow_autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 0.1 s of real idleness (a refused connect on
    127.0.0.1 is answered long before that): the backoff passes without waiting."""
    return trio.testing.MockClock(autojump_threshold=0.1)


@pytest.fixture
def settings(unique_prefix: str) -> GatewaySettings:
    return GatewaySettings(
        topic=f"{unique_prefix}_lb_listener",
        driver_topic=f"{unique_prefix}_driver_listener",
        exchange=f"{unique_prefix}_common",
        host=f"host-{unique_prefix}",
        prefetch=8,
        reconnect_initial=0.05,
        reconnect_max=0.2,
    )


@asynccontextmanager
async def gateway_on(url: str, settings: GatewaySettings) -> AsyncIterator[Gateway]:
    settings = msgspec.structs.replace(settings, url=url)
    _, receive = trio.open_memory_channel[Outbound](1)
    try:
        async with trio.open_nursery() as nursery:
            gateway: Gateway = await nursery.start(serve_gateway, settings, DropSink(), receive)
            try:
                yield gateway
            finally:
                gateway.stop()  # an orderly close: serve returns
    finally:
        with trio.CancelScope(shield=True):
            await _delete_topology(settings, [])


async def test_the_gateway_opens_on_the_host_that_answers_and_logs_both(
    amqp_url: str, settings: GatewaySettings
) -> None:
    dead = unused_port()
    url = f"amqp://guest:guest@127.0.0.1:{dead},guest:guest@127.0.0.1:5672/"
    with watching_logs() as logs, trio.fail_after(30):
        async with gateway_on(url, settings) as gateway:
            assert gateway.connected
    (failed,) = logs.named("broker host failed")
    assert failed["broker"] == f"127.0.0.1:{dead}"
    assert f"could not connect to 127.0.0.1:{dead}" in failed["error"]
    (connected,) = logs.named("gateway connected")
    assert connected["broker"] == "127.0.0.1:5672"
    assert "guest:guest" not in repr(logs.entries)


async def test_after_losing_its_host_the_gateway_moves_on_to_the_next(
    amqp_url: str, settings: GatewaySettings, nursery: trio.Nursery
) -> None:
    """Connected through the relay (host 1); the relay drops the connection and refuses from
    then on: the next round starts at host 2, so the dead host 1 is not tried first."""
    relay: Relay = await nursery.start(Relay().serve)
    url = f"amqp://guest:guest@127.0.0.1:{relay.port},guest:guest@127.0.0.1:5672/"
    with watching_logs() as logs, trio.fail_after(30):
        async with gateway_on(url, settings) as gateway:
            (first,) = logs.named("gateway connected")
            assert first["broker"] == f"127.0.0.1:{relay.port}"
            relay.shut()
            await logs.wait_for("gateway connected", 2)
            assert gateway.connected
            assert gateway.counters.reconnects == 1
    assert logs.named("gateway connected")[1]["broker"] == "127.0.0.1:5672"
    (reconnecting,) = logs.named("reconnecting to the broker")
    assert reconnecting["broker"] == "127.0.0.1:5672"
    assert logs.named("broker host failed") == []  # the dead relay was not tried again
    assert relay.accepted == 1


async def test_no_host_in_a_round_backs_off_once_per_round_from_the_same_host(
    settings: GatewaySettings, slow_autojump_clock: trio.testing.MockClock
) -> None:
    """Both hosts refuse: host 1, host 2, then one backoff (doubling as before several hosts
    were possible), and the next round starts at host 1 again."""
    first, second = unused_port(), unused_port()
    settings = msgspec.structs.replace(
        settings,
        url=f"amqp://127.0.0.1:{first},127.0.0.1:{second}/",
        reconnect_initial=1.0,
        reconnect_max=4.0,
    )
    _, receive = trio.open_memory_channel[Outbound](1)
    gateway = Gateway(settings, DropSink(), receive)
    with watching_logs() as logs, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway.serve)
            await logs.wait_for("reconnecting to the broker", 4)
            nursery.cancel_scope.cancel()
    failed = logs.named("broker host failed")
    backoffs = logs.named("reconnecting to the broker")
    addresses = [f"127.0.0.1:{first}", f"127.0.0.1:{second}"]
    assert [entry["broker"] for entry in failed[:8]] == addresses * 4
    assert [entry["broker"] for entry in backoffs] == [addresses[0]] * 4
    for round_, backoff in enumerate(backoffs):
        host1, host2 = failed[2 * round_], failed[2 * round_ + 1]
        assert host1["t"] == host2["t"] == backoff["t"]  # no wait between hosts of a round
        nominal = min(4.0, 2.0**round_)
        assert nominal * 0.75 <= backoff["delay_s"] <= nominal * 1.25
        if round_:
            waited = host1["t"] - backoffs[round_ - 1]["t"]
            assert waited == pytest.approx(backoffs[round_ - 1]["delay_s"], abs=0.01)


def test_hosts_without_credentials_among_others_are_warned_about(
    settings: GatewaySettings,
) -> None:
    """oslo's warning: such a host logs in as guest, not with the other hosts' credentials."""
    _, receive = trio.open_memory_channel[Outbound](1)
    mixed = msgspec.structs.replace(settings, url="amqp://u:SeCrEt@h1,h2:5673,u:SeCrEt@[::1]/")
    with watching_logs() as logs:
        Gateway(mixed, DropSink(), receive)._warn_if_mixed_credentials()
        Gateway(settings, DropSink(), receive)._warn_if_mixed_credentials()
    (warning,) = logs.entries
    assert warning["log_level"] == "warning" and "guest/guest" in warning["event"]
    assert warning["without_credentials"] == ["h2:5673"]
    assert "SeCrEt" not in repr(logs.entries)
