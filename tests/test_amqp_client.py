"""The trio AMQP client against the real RabbitMQ on 127.0.0.1 (unique names per test), plus
heartbeat and flow-control behaviour against an in-memory fake server under the autojump clock.
"""

from __future__ import annotations

import subprocess
from collections import deque
from urllib.parse import quote

import pytest
import trio
import trio.testing
from pamqp import body as pamqp_body
from pamqp import commands, frame

from lbactors.amqp import protocol
from lbactors.amqp.connection import (
    SEND_HIGH_WATER,
    Connection,
    open_connection,
    reconnect_delays,
)
from lbactors.amqp.errors import (
    AuthenticationError,
    ChannelClosed,
    ConnectionClosed,
    PublishNacked,
    PublishReturned,
)
from lbactors.amqp.protocol import HEARTBEAT_FRAME

broker = pytest.mark.broker


async def fresh_queue(channel, name: str, **kw) -> str:
    queue, _, _ = await channel.queue_declare(name, auto_delete=False, **kw)
    return queue


@broker
async def test_declare_bind_publish_consume_ack_round_trip(amqp_url, unique_prefix):
    with trio.fail_after(10):
        async with open_connection(amqp_url, client_name=unique_prefix) as conn:
            assert conn.server_properties["product"] == "RabbitMQ"
            channel = await conn.open_channel()
            exchange, queue = f"{unique_prefix}.ex", f"{unique_prefix}.q"
            await channel.exchange_declare(exchange, "topic", auto_delete=True)
            assert await channel.queue_declare(queue, exclusive=True) == (queue, 0, 0)
            await channel.queue_bind(queue, exchange, "lb.*")
            await channel.basic_qos(10)
            props = commands.Basic.Properties(
                content_type="application/json",
                headers={"x-actor": "lb-1", "n": 3},
                delivery_mode=2,
            )
            assert (
                await channel.publish(exchange, "lb.create", b'{"a": 1}', properties=props) is None
            )
            consumer = await channel.basic_consume(queue)
            delivery = await consumer.__anext__()
            assert delivery.body == b'{"a": 1}'
            assert (delivery.exchange, delivery.routing_key) == (exchange, "lb.create")
            assert delivery.consumer_tag == consumer.consumer_tag
            assert delivery.redelivered is False
            assert delivery.properties.headers == {"x-actor": "lb-1", "n": 3}
            assert delivery.properties.content_type == "application/json"
            await channel.ack(delivery.delivery_tag)
            await channel.basic_cancel(consumer.consumer_tag)
            with pytest.raises(StopAsyncIteration):
                await consumer.__anext__()
            # acked: nothing left, and no consumer
            assert await channel.queue_declare(queue, passive=True) == (queue, 0, 0)
            assert await channel.queue_purge(queue) == 0
            await channel.queue_delete(queue)
            await channel.exchange_delete(exchange)
            await channel.close()
            with pytest.raises(ChannelClosed):
                await channel.publish("", queue, b"x")


@broker
async def test_bodies_over_several_frames_and_empty_bodies_arrive_intact(amqp_url, unique_prefix):
    with trio.fail_after(10):
        async with open_connection(amqp_url) as conn:
            channel = await conn.open_channel()
            await channel.confirm_select()
            queue = await fresh_queue(channel, f"{unique_prefix}.q", exclusive=True)
            big = bytes(i % 251 for i in range(3 * conn.frame_max + 1))
            bodies = [big, b"", b"x" * (conn.frame_max - 8), b"y" * (conn.frame_max - 7)]
            confirmations = [await channel.publish("", queue, body) for body in bodies]
            for confirmation in confirmations:
                await confirmation.wait()
            consumer = await channel.basic_consume(queue, no_ack=True)
            received = [(await consumer.__anext__()).body for _ in bodies]
            assert received == bodies


@broker
async def test_inequivalent_redeclare_closes_only_that_channel(amqp_url, unique_prefix):
    with trio.fail_after(10):
        async with open_connection(amqp_url) as conn:
            channel = await conn.open_channel()
            queue = f"{unique_prefix}.q"
            await channel.queue_declare(queue, exclusive=True)
            with pytest.raises(ChannelClosed) as info:
                await channel.queue_declare(queue, exclusive=True, arguments={"x-max-length": 5})
            assert info.value.reply_code == 406
            assert "PRECONDITION_FAILED" in info.value.reply_text
            assert info.value.channel_id == channel.channel_id
            with pytest.raises(ChannelClosed):  # the channel stays dead
                await channel.queue_declare(queue, passive=True)
            with pytest.raises(ChannelClosed) as missing:
                other = await conn.open_channel()
                await other.queue_declare(f"{unique_prefix}.missing", passive=True)
            assert missing.value.reply_code == 404
            again = await conn.open_channel()
            assert (await again.queue_declare(queue, passive=True))[0] == queue


@broker
async def test_errors_of_the_body_leave_the_async_with_as_plain_exceptions(amqp_url, unique_prefix):
    with trio.fail_after(10):
        with pytest.raises(ChannelClosed) as info:  # not an ExceptionGroup
            async with open_connection(amqp_url) as conn:
                channel = await conn.open_channel()
                await channel.queue_declare(f"{unique_prefix}.missing", passive=True)
        assert info.value.reply_code == 404
        with pytest.raises(KeyError):
            async with open_connection(amqp_url):
                raise KeyError("mine")


@broker
async def test_many_confirms_in_flight_are_all_settled_including_multiple_acks(
    amqp_url, unique_prefix, monkeypatch
):
    seen_multiple = []
    settle = protocol.ConfirmTracker.settle

    def spy(self, delivery_tag, multiple):
        seen_multiple.append(multiple)
        return settle(self, delivery_tag, multiple)

    monkeypatch.setattr(protocol.ConfirmTracker, "settle", spy)
    with trio.fail_after(15):
        async with open_connection(amqp_url) as conn:
            channel = await conn.open_channel()
            await channel.confirm_select()
            queue = await fresh_queue(channel, f"{unique_prefix}.q", exclusive=True)
            confirmations = [await channel.publish("", queue, b"m%d" % i) for i in range(5000)]
            assert [c.delivery_tag for c in confirmations] == list(range(1, 5001))
            for confirmation in confirmations:
                await confirmation.wait()
            assert all(c.done for c in confirmations)
            await confirmations[0].wait()  # waiting twice is fine
            assert (await channel.queue_declare(queue, passive=True))[1] == 5000
    assert any(seen_multiple), "the broker coalesced no acks: multiple=True was not exercised"
    assert len(seen_multiple) < 5000


@broker
async def test_mandatory_unroutable_publish_is_returned(amqp_url, unique_prefix):
    with trio.fail_after(10):
        async with open_connection(amqp_url) as conn:
            channel = await conn.open_channel()
            await channel.confirm_select()
            queue = await fresh_queue(channel, f"{unique_prefix}.q", exclusive=True)
            routed = await channel.publish("", queue, b"ok", mandatory=True)
            lost = await channel.publish("", f"{unique_prefix}.nowhere", b"lost", mandatory=True)
            unchecked = await channel.publish("", f"{unique_prefix}.nowhere", b"dropped")
            after = await channel.publish("", queue, b"ok too", mandatory=True)
            with pytest.raises(PublishReturned) as info:
                await lost.wait()
            assert info.value.reply_code == 312
            assert info.value.reply_text == "NO_ROUTE"
            assert info.value.routing_key == f"{unique_prefix}.nowhere"
            for confirmation in (routed, unchecked, after):
                await confirmation.wait()


@broker
async def test_publish_the_broker_rejects_is_nacked(amqp_url, unique_prefix):
    with trio.fail_after(10):
        async with open_connection(amqp_url) as conn:
            channel = await conn.open_channel()
            await channel.confirm_select()
            queue = await fresh_queue(
                channel,
                f"{unique_prefix}.q",
                exclusive=True,
                arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
            )
            first = await channel.publish("", queue, b"1")
            second = await channel.publish("", queue, b"2")
            await first.wait()
            with pytest.raises(PublishNacked):
                await second.wait()
            with pytest.raises(PublishNacked):
                await second.wait()


@broker
async def test_reject_and_nack_with_requeue_come_back_redelivered(amqp_url, unique_prefix):
    with trio.fail_after(10):
        async with open_connection(amqp_url) as conn:
            channel = await conn.open_channel()
            queue = await fresh_queue(channel, f"{unique_prefix}.q", exclusive=True)
            await channel.basic_qos(1)
            await channel.publish("", queue, b"again")
            consumer = await channel.basic_consume(queue)
            first = await consumer.__anext__()
            assert not first.redelivered
            await channel.reject(first.delivery_tag, requeue=True)
            second = await consumer.__anext__()
            assert second.redelivered and second.body == b"again"
            await channel.nack(second.delivery_tag, requeue=True)
            third = await consumer.__anext__()
            assert third.redelivered and third.body == b"again"
            await channel.nack(third.delivery_tag, requeue=False)  # dropped (no DLX)
            await channel.basic_cancel(consumer.consumer_tag)
            assert (await channel.queue_declare(queue, passive=True))[1] == 0


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "--quiet", *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


@pytest.fixture
def vhost(unique_prefix):
    """A vhost of our own, so that closing all its connections touches nobody else's."""
    name = f"{unique_prefix}/vh"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    rabbitmqctl("delete_vhost", name)


@broker
async def test_forced_close_raises_connection_closed_and_reconnect_gets_back_in(
    vhost, unique_prefix
):
    url = f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    attempts = 0
    errors = []
    with trio.fail_after(20):
        for delay in reconnect_delays(0.05, 1.0):
            attempts += 1
            try:
                async with open_connection(url) as conn:
                    channel = await conn.open_channel()
                    await channel.confirm_select()
                    queue = await fresh_queue(channel, f"{unique_prefix}.q")
                    await (await channel.publish("", queue, b"attempt %d" % attempts)).wait()
                    if attempts == 1:
                        pending = await channel.publish("", queue, b"x" * 10)
                        await trio.to_thread.run_sync(
                            rabbitmqctl, "close_all_connections", "-p", vhost, "test"
                        )
                        await trio.sleep_forever()  # cancelled when the connection dies
                    assert (await channel.queue_declare(queue, passive=True))[1] >= 2
                    break
            except ConnectionClosed as error:
                errors.append(error)
                await trio.sleep(delay)
    assert attempts == 2
    (error,) = errors
    assert error.reply_code == 320
    assert "test" in error.reply_text
    # acked before the close, or failed with ConnectionClosed: never left hanging
    assert pending.done


@broker
async def test_wrong_password_is_an_authentication_error(amqp_url):
    url = amqp_url.replace("guest:guest", "guest:not-the-password")
    with trio.fail_after(10):
        with pytest.raises(AuthenticationError) as info:
            async with open_connection(url):
                pytest.fail("logged in with a wrong password")
    assert info.value.reply_code == 403
    assert "ACCESS_REFUSED" in str(info.value)
    assert "'guest'" in str(info.value)


# -- a fake server on an in-memory stream (autojump clock) -----------------------------------


class FakeServer:
    """Plays RabbitMQ's side of the handshake, then does what the test tells it to."""

    def __init__(self, stream: trio.abc.Stream, heartbeat: int) -> None:
        self.stream = stream
        self.heartbeat = heartbeat
        self.buffer = bytearray()
        self.received: deque = deque()
        self.heartbeats_received: list[float] = []

    async def send(self, channel: int, method) -> None:
        await self.stream.send_all(frame.marshal(method, channel))

    async def receive(self):
        while not self.received:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError
            self.buffer += data
            while len(self.buffer) >= 7 and len(self.buffer) >= 8 + int.from_bytes(
                self.buffer[3:7]
            ):
                size = 8 + int.from_bytes(self.buffer[3:7])
                raw, self.buffer = bytes(self.buffer[:size]), self.buffer[size:]
                if raw == HEARTBEAT_FRAME:
                    self.heartbeats_received.append(trio.current_time())
                else:
                    self.received.append(frame.unmarshal(raw)[2])
        return self.received.popleft()

    async def handshake(self) -> None:
        assert await self.stream.receive_some(8) == protocol.PROTOCOL_HEADER
        await self.send(
            0, commands.Connection.Start(server_properties={"product": "Fake"}, mechanisms="PLAIN")
        )
        assert (await self.receive()).response == "\0guest\0guest"
        await self.send(0, commands.Connection.Tune(2047, 131072, self.heartbeat))
        tune_ok = await self.receive()
        assert tune_ok.heartbeat == self.heartbeat
        assert (await self.receive()).virtual_host == "/"
        await self.send(0, commands.Connection.OpenOk())

    async def drain(self) -> None:
        """Keep reading (and counting heartbeats) without ever answering."""
        try:
            while True:
                await self.receive()
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def fake_connection(heartbeat: int):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream, heartbeat)

    async def factory():
        return client_stream

    return server, factory


async def test_silent_server_is_declared_dead_within_two_heartbeat_intervals(autojump_clock):
    server, factory = fake_connection(heartbeat=10)
    with trio.fail_after(60):
        dead_after, info, opened = await _run_until_heartbeat_timeout(server, factory)
    assert 10 < dead_after <= 20 + 0.01
    assert info.value.reply_code == 0
    assert "heartbeat timeout" in info.value.reply_text
    # meanwhile the client sent its own heartbeats, one per half interval while idle
    times = [opened, *server.heartbeats_received]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(server.heartbeats_received) >= 3
    assert all(gap <= 5 + 0.01 for gap in gaps)


async def _run_until_heartbeat_timeout(server, factory):
    async with trio.open_nursery() as nursery:

        async def serve():
            await server.handshake()
            await server.drain()

        nursery.start_soon(serve)
        with pytest.raises(ConnectionClosed) as info:
            async with open_connection(
                "amqp://guest:guest@fake/", heartbeat=10, stream_factory=factory
            ):
                opened = trio.current_time()
                await trio.sleep_forever()
        dead_after = trio.current_time() - opened
        nursery.cancel_scope.cancel()
    return dead_after, info, opened


async def test_server_connection_close_and_blocked_publishers(autojump_clock):
    server, factory = fake_connection(heartbeat=0)
    with trio.fail_after(60):
        info = await _run_blocked_then_closed(server, factory)
    assert info.value.reply_code == 320
    assert info.value.reply_text == "CONNECTION_FORCED - test"


async def _run_blocked_then_closed(server, factory):
    async with trio.open_nursery() as nursery:
        publish_done = trio.Event()
        conn_holder: list[Connection] = []

        async def serve():
            await server.handshake()
            opened = await server.receive()
            assert isinstance(opened, commands.Channel.Open)
            await server.send(1, commands.Channel.OpenOk())
            await server.send(0, commands.Connection.Blocked("low on memory"))
            await trio.sleep(5)
            assert conn_holder[0].blocked and not publish_done.is_set()
            await server.send(0, commands.Connection.Unblocked())
            publish = await server.receive()
            assert isinstance(publish, commands.Basic.Publish)
            await trio.sleep(1)
            await server.send(0, commands.Connection.Close(320, "CONNECTION_FORCED - test", 0, 0))
            frames = [await server.receive() for _ in range(3)]  # header, body, close-ok
            assert frames[1].value == b"waits while blocked"
            assert isinstance(frames[2], commands.Connection.CloseOk)

        nursery.start_soon(serve)
        with pytest.raises(ConnectionClosed) as info:
            async with open_connection(
                "amqp://guest:guest@fake/", heartbeat=0, stream_factory=factory
            ) as conn:
                conn_holder.append(conn)
                channel = await conn.open_channel()
                await trio.sleep(1)
                started = trio.current_time()
                await channel.publish("", "q", b"waits while blocked")
                assert trio.current_time() - started >= 4
                assert not conn.blocked
                publish_done.set()
                await trio.sleep_forever()
    return info


# -- the handshake over a stream (the sans-IO half is in test_amqp_handshake.py) --------------


async def _handshake_refused(server: FakeServer, factory, close_after: str, close):
    """The fake server closes the connection after ``close_after``; returns what the client
    raised and what the server received after its close."""
    async with trio.open_nursery() as nursery:
        after_close: list = []

        async def serve():
            assert await server.stream.receive_some(8) == protocol.PROTOCOL_HEADER
            await server.send(0, commands.Connection.Start(mechanisms="PLAIN"))
            await server.receive()  # start-ok
            if close_after == "open":
                await server.send(0, commands.Connection.Tune(0, 0, 0))
                await server.receive()  # tune-ok
                await server.receive()  # open
            await server.send(0, close)
            try:
                after_close.append(await server.receive())
            except EOFError:
                pass

        nursery.start_soon(serve)
        with pytest.raises(ConnectionClosed) as info:
            async with open_connection("amqp://guest:guest@fake/", stream_factory=factory):
                pytest.fail("the connection opened")
    return info, after_close


async def test_refused_login_over_a_stream_answers_the_close_and_raises_plainly(autojump_clock):
    server, factory = fake_connection(heartbeat=0)
    refusal = commands.Connection.Close(403, "ACCESS_REFUSED - Login was refused", 0, 0)
    with trio.fail_after(10):
        info, after_close = await _handshake_refused(server, factory, "login", refusal)
    assert type(info.value) is AuthenticationError
    assert info.value.reply_code == 403
    assert "user 'guest' refused by fake:5672" in str(info.value)
    assert [type(method) for method in after_close] == [commands.Connection.CloseOk]


async def test_server_close_after_open_over_a_stream_answers_the_close(autojump_clock):
    server, factory = fake_connection(heartbeat=0)
    forced = commands.Connection.Close(320, "CONNECTION_FORCED - shutdown", 0, 0)
    with trio.fail_after(10):
        info, after_close = await _handshake_refused(server, factory, "open", forced)
    assert type(info.value) is ConnectionClosed
    assert (info.value.reply_code, info.value.reply_text) == (320, "CONNECTION_FORCED - shutdown")
    assert [type(method) for method in after_close] == [commands.Connection.CloseOk]


async def test_negotiated_tuning_is_what_the_connection_uses(autojump_clock):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream, heartbeat=0)

    async def factory():
        return client_stream

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def serve():
                assert await server.stream.receive_some(8) == protocol.PROTOCOL_HEADER
                await server.send(0, commands.Connection.Start(mechanisms="PLAIN"))
                await server.receive()
                await server.send(0, commands.Connection.Tune(3, 8192, 0))
                tune_ok = await server.receive()
                assert (tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat) == (3, 8192, 4)
                await server.receive()
                await server.send(0, commands.Connection.OpenOk())
                await server.drain()

            nursery.start_soon(serve)
            async with open_connection(
                "amqp://guest:guest@fake/", heartbeat=4, stream_factory=factory
            ) as conn:
                assert (conn.channel_max, conn.frame_max, conn.heartbeat) == (3, 8192, 4)
                await trio.sleep(5)
                # a heartbeat every heartbeat/2 s, as negotiated
                assert len(server.heartbeats_received) >= 2
            nursery.cancel_scope.cancel()


async def _body_raises(raise_in_body) -> pytest.ExceptionInfo:
    server, factory = fake_connection(heartbeat=0)
    async with trio.open_nursery() as nursery:

        async def serve():
            await server.handshake()
            await server.drain()

        nursery.start_soon(serve)
        with pytest.raises(BaseException) as info:
            async with open_connection(
                "amqp://guest:guest@fake/", heartbeat=0, stream_factory=factory
            ):
                await raise_in_body()
        nursery.cancel_scope.cancel()
    return info


async def test_one_error_of_the_body_leaves_plain_even_from_a_nested_group(autojump_clock):
    """The unwrap counts leaves at any depth: an ``except*`` clause sees one type, never how
    many errors the group holds, so ``open_connection`` decides on the whole group."""

    async def fail_in_a_child_task():
        async with trio.open_nursery() as inner:

            async def fail():
                raise ValueError("in a child of the body")

            inner.start_soon(fail)

    with trio.fail_after(30):
        info = await _body_raises(fail_in_a_child_task)
    assert type(info.value) is ValueError
    assert str(info.value) == "in a child of the body"


async def test_several_errors_of_the_body_leave_as_the_group(autojump_clock):
    async def fail_twice():
        raise ExceptionGroup("two", [KeyError("a"), ValueError("b")])

    with trio.fail_after(30):
        info = await _body_raises(fail_twice)
    assert isinstance(info.value, BaseExceptionGroup)
    assert info.group_contains(KeyError, depth=2)
    assert info.group_contains(ValueError, depth=2)


async def test_a_cancelled_publish_queues_nothing(autojump_clock):
    """A publish cancelled while it waits (the broker blocks publishers, or the send buffer
    is over its high-water mark because the socket is full) has queued nothing: the server
    gets every other message whole and in order, and no byte of the cancelled ones."""
    server, factory = fake_connection(heartbeat=0)
    client_stream = await factory()
    pump = client_stream.send_stream.send_all_hook
    socket_full: list[trio.Event] = []

    async def gated_pump():
        if socket_full:
            await socket_full[0].wait()
        await pump()

    client_stream.send_stream.send_all_hook = gated_pump
    big = [bytes([n]) * (SEND_HIGH_WATER + 1000) for n in (1, 2)]
    bodies: list[bytes] = []
    all_received = trio.Event()

    async def serve():
        await server.handshake()
        assert isinstance(await server.receive(), commands.Channel.Open)
        await server.send(1, commands.Channel.OpenOk())
        while len(bodies) < 3 or len(bodies[-1]) < 5:
            received = await server.receive()
            if isinstance(received, commands.Basic.Publish):
                bodies.append(b"")
            elif isinstance(received, pamqp_body.ContentBody):
                bodies[-1] += received.value
        all_received.set()
        await server.drain()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            async with open_connection(
                "amqp://guest:guest@fake/", heartbeat=0, stream_factory=factory
            ) as conn:
                channel = await conn.open_channel()
                await server.send(0, commands.Connection.Blocked("low on memory"))
                await trio.testing.wait_all_tasks_blocked()
                assert conn.blocked
                with trio.move_on_after(1) as scope:
                    await channel.publish("", "q", b"cancelled while blocked")
                assert scope.cancelled_caught
                await server.send(0, commands.Connection.Unblocked())
                await trio.testing.wait_all_tasks_blocked()
                assert not conn.blocked

                socket_full.append(trio.Event())
                await channel.publish("", "q", big[0])
                await trio.testing.wait_all_tasks_blocked()  # the writer is stuck sending it
                await channel.publish("", "q", big[1])  # queued: over the high-water mark
                with trio.move_on_after(1) as scope:
                    await channel.publish("", "q", b"cancelled while the buffer is full")
                assert scope.cancelled_caught
                socket_full[0].set()
                await channel.publish("", "q", b"small")
                await all_received.wait()
                nursery.cancel_scope.cancel()
    assert bodies == [big[0], big[1], b"small"]
