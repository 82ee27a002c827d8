"""The RabbitMQ behaviour the cluster design (docs/cluster.md, §1 B1-B4 and §11) stands on,
checked with plain AMQP through lbactors' own client on the local broker (127.0.0.1:5672, one
node: quorum queues work on one node), so that a RabbitMQ upgrade that changes it fails here
first. Each test declares its own queues and exchanges (a uuid prefix) and deletes them.

Observed with RabbitMQ 3.10.8 (the machine's broker):

- (a) a single-active-consumer quorum queue delivers only to the consumer registered first;
- (b) when that consumer's **channel** closes with 5 deliveries unacked, the next consumer gets
  those 5 first, in order, flagged redelivered, then the rest in order (B3);
- (c) when it is **cancelled** (``basic.cancel``) instead, the next consumer is activated at
  once and starts on the later messages while the 5 stay checked out to the cancelled consumer
  (they come to the next one only when the cancelled consumer's channel closes): why lbactors
  never cancels a shard consumer (§1);
- (d) a passive ``queue.declare`` counts only the active consumer of a single-active-consumer
  quorum queue (1 with 3 registered): why lbactors counts daemons with a presence fanout, not
  ``consumer_count`` (open question 2, answered);
- (e) a ``mandatory`` publish in confirm mode that routes to no queue is returned before it is
  confirmed: the client raises ``PublishReturned`` (B4);
- (f) as (b) when the active consumer's TCP connection goes away without an AMQP close (a
  ``kill -9``): the unacked deliveries come to the next consumer first, redelivered, in order.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from lbactors.amqp.connection import Channel, Connection, Consumer, Delivery, open_connection
from lbactors.amqp.errors import ConnectionClosed, PublishReturned

pytestmark = pytest.mark.broker

QUORUM_SAC = {"x-queue-type": "quorum", "x-single-active-consumer": True}
#: long enough for a delivery the broker had ready to arrive (they come in milliseconds here)
QUIET = 1.0


def _bodies(count: int, start: int = 0) -> list[bytes]:
    return [f"m{i}".encode() for i in range(start, start + count)]


@pytest.fixture
def queue() -> str:
    return f"lbt_{uuid.uuid4().hex[:12]}_shard"


@asynccontextmanager
async def sac_queue(url: str, name: str) -> AsyncIterator[Channel]:
    """Declare the shard-like queue; yield a confirm-mode channel to publish on; delete it."""
    async with open_connection(url) as connection:
        channel = await connection.open_channel()
        await channel.queue_declare(name, durable=True, arguments=QUORUM_SAC)
        await channel.confirm_select()
        try:
            yield channel
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await channel.queue_delete(name)


async def publish_confirmed(channel: Channel, queue: str, bodies: list[bytes]) -> None:
    confirmations = [await channel.publish("", queue, body) for body in bodies]
    for confirmation in confirmations:
        assert confirmation is not None
        await confirmation.wait()


async def take(consumer: Consumer, count: int) -> list[Delivery]:
    deliveries: list[Delivery] = []
    async for delivery in consumer:
        deliveries.append(delivery)
        if len(deliveries) == count:
            break
    return deliveries


class Collector:
    """A consumer that acks and keeps everything it receives, in a task of its own."""

    def __init__(self) -> None:
        self.received: list[Delivery] = []
        self._changed = trio.Event()

    async def run(
        self, connection: Connection, queue: str, *, task_status: trio.TaskStatus[None]
    ) -> None:
        channel = await connection.open_channel()
        await channel.basic_qos(100)
        consumer = await channel.basic_consume(queue)
        task_status.started()
        async for delivery in consumer:
            await channel.ack(delivery.delivery_tag)
            self.received.append(delivery)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, count: int) -> list[Delivery]:
        while len(self.received) < count:
            await self._changed.wait()
        return self.received


async def test_a_only_the_first_registered_consumer_gets_deliveries(
    amqp_url: str, queue: str
) -> None:
    """(a) B2: with a plain queue the two would share the 20 (round-robin)."""
    sent = _bodies(20)
    with trio.fail_after(30):
        async with (
            sac_queue(amqp_url, queue) as publisher,
            open_connection(amqp_url) as first,
            open_connection(amqp_url) as second,
            trio.open_nursery() as nursery,
        ):
            active, waiting = Collector(), Collector()
            await nursery.start(active.run, first, queue)
            await nursery.start(waiting.run, second, queue)
            await publish_confirmed(publisher, queue, sent)
            await active.wait_for(20)
            await trio.sleep(QUIET)
            nursery.cancel_scope.cancel()
    assert [d.body for d in active.received] == sent
    assert waiting.received == []


SENT = _bodies(20)


async def a_holds_five(
    first: Connection,
    second: Connection,
    queue: str,
    publisher: Channel,
    waiting: Collector,
    nursery: trio.Nursery,
) -> tuple[Channel, Consumer, list[Delivery]]:
    """Consumer A on ``first`` (prefetch 5) registers, then B (``waiting``) on ``second``;
    m0..m19 are published; A takes m0..m4 and holds them unacked, m5..m19 wait in the queue,
    and B has received nothing. Returns A's channel, consumer and deliveries."""
    channel = await first.open_channel()
    await channel.basic_qos(5)
    consumer = await channel.basic_consume(queue)
    await nursery.start(waiting.run, second, queue)
    await publish_confirmed(publisher, queue, SENT)
    held = await take(consumer, 5)
    await trio.sleep(QUIET)
    assert [d.body for d in held] == SENT[:5]
    assert waiting.received == [], "B got deliveries while A was active"
    return channel, consumer, held


async def test_b_channel_close_returns_the_unacked_first_in_order_redelivered(
    amqp_url: str, queue: str
) -> None:
    """(b) B3: the held five come back ahead of everything never delivered."""
    waiting = Collector()
    with trio.fail_after(30):
        async with (
            sac_queue(amqp_url, queue) as publisher,
            open_connection(amqp_url) as first,
            open_connection(amqp_url) as second,
            trio.open_nursery() as nursery,
        ):
            channel, _, _ = await a_holds_five(first, second, queue, publisher, waiting, nursery)
            await channel.close()
            await waiting.wait_for(20)
            await trio.sleep(QUIET)
            nursery.cancel_scope.cancel()
    assert [d.body for d in waiting.received] == SENT
    assert [d.redelivered for d in waiting.received] == [True] * 5 + [False] * 15


async def test_c_cancel_activates_the_next_consumer_while_the_cancelled_one_holds_five(
    amqp_url: str, queue: str
) -> None:
    """(c) basic.cancel does not hand over cleanly (docs/cluster.md §1, "Not used").

    Observed on 3.10.8: B is activated at once and runs m5..m19 while m0..m4 are still
    checked out to A's cancelled consumer (rabbit_fifo keeps them there, status
    ``cancelled``; only ``up`` consumers count as active): two consumers of one shard at once.
    The five reach B only when A's channel closes, redelivered and after the later ones.
    """
    waiting = Collector()
    with trio.fail_after(30):
        async with (
            sac_queue(amqp_url, queue) as publisher,
            open_connection(amqp_url) as first,
            open_connection(amqp_url) as second,
            trio.open_nursery() as nursery,
        ):
            channel, consumer, _ = await a_holds_five(
                first, second, queue, publisher, waiting, nursery
            )
            await channel.basic_cancel(consumer.consumer_tag)
            await waiting.wait_for(15)
            await trio.sleep(QUIET)
            after_cancel = [d.body for d in waiting.received]
            assert channel.is_open  # A still holds m0..m4, unacked

            await channel.close()
            await waiting.wait_for(20)
            await trio.sleep(QUIET)
            nursery.cancel_scope.cancel()
    assert after_cancel == SENT[5:]
    assert [d.body for d in waiting.received] == SENT[5:] + SENT[:5]
    assert [d.redelivered for d in waiting.received] == [False] * 15 + [True] * 5


async def test_d_consumer_count_counts_only_the_active_consumer(amqp_url: str, queue: str) -> None:
    """(d) consumer_count of a passive declare on a SAC quorum queue with 3 consumers: 1.

    So a daemon cannot learn how many daemons there are from the shard queues' consumer
    counts; lbactors counts them with a presence fanout (docs/cluster.md §5, open question 2).
    """
    with trio.fail_after(30):
        async with (
            sac_queue(amqp_url, queue) as publisher,
            open_connection(amqp_url) as first,
            open_connection(amqp_url) as second,
            open_connection(amqp_url) as third,
        ):
            for connection in (first, second, third):
                channel = await connection.open_channel()
                await channel.basic_consume(queue)
            inspect = await first.open_channel()
            _, _, consumers = await inspect.queue_declare(queue, passive=True)
            # the same queue without single active consumer counts all three
            plain = f"{queue}_plain"
            await publisher.queue_declare(plain, durable=True, arguments={"x-queue-type": "quorum"})
            try:
                for connection in (first, second, third):
                    channel = await connection.open_channel()
                    await channel.basic_consume(plain)
                _, _, plain_consumers = await inspect.queue_declare(plain, passive=True)
            finally:
                await publisher.queue_delete(plain)
    assert consumers == 1
    assert plain_consumers == 3


async def test_e_mandatory_publish_to_an_unbound_routing_key_is_returned(
    amqp_url: str, queue: str
) -> None:
    """(e) B4: confirmed and not returned means "in a queue"; no route raises PublishReturned."""
    exchange = f"{queue}_shards"
    with trio.fail_after(30):
        async with sac_queue(amqp_url, queue) as channel:
            await channel.exchange_declare(exchange, "direct", durable=True)
            try:
                await channel.queue_bind(queue, exchange, "000")
                routed = await channel.publish(exchange, "000", b"routed", mandatory=True)
                lost = await channel.publish(exchange, "001", b"lost", mandatory=True)
                assert routed is not None and lost is not None
                await routed.wait()
                with pytest.raises(PublishReturned) as returned:
                    await lost.wait()
                _, messages, _ = await channel.queue_declare(queue, passive=True)
            finally:
                await channel.exchange_delete(exchange)
    assert (returned.value.reply_code, returned.value.reply_text) == (312, "NO_ROUTE")
    assert (returned.value.exchange, returned.value.routing_key) == (exchange, "001")
    assert messages == 1


async def test_f_lost_tcp_connection_returns_the_unacked_first_in_order_redelivered(
    amqp_url: str, queue: str
) -> None:
    """(f) A's TCP connection ends without an AMQP close (what a kill -9 leaves): as (b)."""
    streams: list[trio.SocketStream] = []

    async def tcp_kept() -> trio.abc.Stream:
        stream = await trio.open_tcp_stream("127.0.0.1", 5672)
        streams.append(stream)
        return stream

    waiting = Collector()
    died: ConnectionClosed | None = None
    with trio.fail_after(30):
        async with (
            sac_queue(amqp_url, queue) as publisher,
            open_connection(amqp_url) as second,
            trio.open_nursery() as nursery,
        ):
            try:
                async with open_connection(amqp_url, stream_factory=tcp_kept) as first:
                    await a_holds_five(first, second, queue, publisher, waiting, nursery)
                    # the kernel's FIN, nothing AMQP: the broker sees the socket end
                    streams[0].socket.shutdown(socket.SHUT_RDWR)
                    await trio.sleep_forever()
            except ConnectionClosed as error:
                died = error
            await waiting.wait_for(20)
            await trio.sleep(QUIET)
            nursery.cancel_scope.cancel()
    assert died is not None
    assert [d.body for d in waiting.received] == SENT
    assert [d.redelivered for d in waiting.received] == [True] * 5 + [False] * 15
