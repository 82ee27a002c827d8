"""A trio AMQP 0-9-1 client on pamqp: connection, channels, consumers, publisher confirms.

Shape (see ``STYLE.md``): the protocol is sans-IO in ``protocol.py`` (the handshake and the
connection-level methods, framing, content assembly, a channel's inbound state machine, publish
encoding, confirm bookkeeping); this module is the plumbing around it. ``open_connection`` runs the handshake over the stream,
then owns the socket and three tasks in its own nursery:

- the **reader** feeds received bytes to the frame decoder and dispatches every frame
  synchronously (it never waits on a consumer or a caller, so confirms, heartbeats and closes
  keep flowing whatever the application does); it declares the peer dead after two heartbeat
  intervals without a byte;
- the **writer** is the only task that touches the socket for sending: callers append *whole
  frame groups* to one send buffer synchronously (so cancelling a caller can never leave half
  a frame on the wire), and the writer sends everything queued in one ``send_all`` (write
  coalescing: under load hundreds of frames leave in one system call);
- the **heartbeat** task sends a heartbeat frame when nothing was sent for half an interval.

The URL may name several brokers (``broker_url.py``): ``open_connection`` tries them in turn
until one opens; reconnecting, and where to start the next round, is the caller's (the gateway).

When the connection dies (server ``connection.close``, socket EOF or error, heartbeat timeout,
framing error) every waiter on it (RPC calls, confirmations, consumers, blocked publishers) gets
a ``ConnectionClosed``, the body of ``async with open_connection(...)`` is cancelled and the
``async with`` raises ``ConnectionClosed`` (a plain exception, not an exception group).

Memory bounds: the send buffer is bounded (``publish`` waits above ``SEND_HIGH_WATER``);
a consumer's queue is a deque that the broker bounds through ``basic.qos`` prefetch when the
consumer acks manually. A ``no_ack`` consumer has no such bound: its queue grows as fast as the
broker delivers and the application does not read.
"""

from __future__ import annotations

import copy
import math
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio
from pamqp import commands
from pamqp.base import Frame

from lbactors.amqp.broker_url import BrokerHost, BrokerURL, parse_url
from lbactors.amqp.errors import (
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    ConnectionClosed,
    FrameError,
    PublishNacked,
    PublishReturned,
)
from lbactors.amqp.protocol import (
    HEARTBEAT_FRAME,
    Blocked,
    ChannelProtocol,
    CloseOkReceived,
    ConfirmsSettled,
    ConnectionProtocol,
    ConsumerCancelled,
    Content,
    FlowRequested,
    Replied,
    Returned,
    ServerClosed,
    ServerClosedChannel,
    Unblocked,
    ack_frame,
    marshal_method,
    nack_frame,
    reject_frame,
)
from lbactors.streams import send_all_soon

__all__ = [
    "Channel",
    "Confirmation",
    "Connection",
    "Consumer",
    "Delivery",
    "open_connection",
    "reconnect_delays",
]

#: above this many queued bytes ``publish`` waits for the writer
SEND_HIGH_WATER = 4 * 1024 * 1024
#: above this many queued bytes ``publish`` yields once so the writer can run
SEND_YIELD_WATER = 256 * 1024
RECEIVE_SIZE = 256 * 1024
CLOSE_TIMEOUT = 2.0

StreamFactory = Callable[[], Awaitable[trio.abc.Stream]]
#: called with a host that could not be opened and why, before the next host is tried
HostFailed = Callable[[BrokerHost, AMQPError], None]


class Delivery(msgspec.Struct):
    """One message received by a consumer."""

    body: bytes
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    consumer_tag: str
    properties: commands.Basic.Properties
    #: why the properties could not be decoded (they are then empty); see ``Content``
    header_error: str | None = None
    #: the size the broker announced; above ``len(body)`` when the body was over the
    #: connection's ``max_body`` and only its head was kept (see ``Content``); -1: unknown
    body_size: int = -1

    @property
    def truncated(self) -> bool:
        return self.body_size > len(self.body)


class Confirmation:
    """The broker's verdict on one publish on a channel in confirm mode."""

    __slots__ = ("_error", "_event", "delivery_tag", "done", "returned")

    def __init__(self) -> None:
        self.delivery_tag = 0
        self.done = False
        self.returned: PublishReturned | None = None
        self._error: AMQPError | None = None
        self._event: trio.Event | None = None

    def _resolve(self, error: AMQPError | None) -> None:
        if self.done:
            return
        self.done = True
        self._error = error
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Return once the broker acked the publish.

        If the verdict is already in, this only checks for cancellation (no scheduling round):
        a publisher that waits on its oldest confirmation can then publish a burst up to its
        window without yielding per message, which is where the throughput comes from.

        Raises ``PublishNacked`` (basic.nack), ``PublishReturned`` (mandatory and unroutable),
        ``ChannelClosed`` / ``ConnectionClosed`` if the channel or connection died first.
        """
        if not self.done:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._error is not None:
            raise copy.copy(self._error)

    def __repr__(self) -> str:
        state = (
            "pending" if not self.done else (type(self._error).__name__ if self._error else "acked")
        )
        return f"<Confirmation tag={self.delivery_tag} {state}>"


class Consumer:
    """``async for delivery in consumer``: the deliveries of one ``basic.consume``.

    Iteration ends after ``basic.cancel`` (ours or the broker's, e.g. when the queue is
    deleted); it raises ``ChannelClosed`` / ``ConnectionClosed`` when the channel or connection
    dies (deliveries still queued then are dropped: they were not acked and the broker
    redelivers them).
    """

    def __init__(self, channel: Channel, consumer_tag: str, no_ack: bool) -> None:
        self.consumer_tag = consumer_tag
        self.no_ack = no_ack
        self.channel = channel
        self._items: deque[Delivery] = deque()
        self._waiter: trio.Event | None = None
        self._ended = False
        self._error: AMQPError | None = None

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            if self._error is not None:
                raise copy.copy(self._error)
            if self._items:
                await trio.lowlevel.checkpoint_if_cancelled()
                return self._items.popleft()
            if self._ended:
                raise StopAsyncIteration
            waiter = self._waiter = trio.Event()
            await waiter.wait()

    def __len__(self) -> int:
        """Deliveries received and not yet taken."""
        return len(self._items)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def _push(self, delivery: Delivery) -> None:
        self._items.append(delivery)
        if self._waiter is not None:
            self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _fail(self, error: AMQPError) -> None:
        self._error = error
        self._items.clear()
        self._wake()


class _Call:
    """One synchronous method waiting for its reply (which replies: ``ChannelProtocol``)."""

    __slots__ = ("error", "event", "on_reply", "result")

    def __init__(self, on_reply: Callable[[Any], None] | None) -> None:
        self.on_reply = on_reply
        self.event = trio.Event()
        self.result: Any = None
        self.error: AMQPError | None = None


class Channel:
    """An AMQP channel. Synchronous methods (declare, bind, qos, ...) are serialized per
    channel and wait for their -ok; ``publish``, ``ack``, ``nack`` and ``reject`` only queue
    frames and return."""

    def __init__(self, connection: Connection, channel_id: int) -> None:
        self.channel_id = channel_id
        self._connection = connection
        self._lock = trio.Lock()
        self._call: _Call | None = None
        self._error: AMQPError | None = None
        self._protocol: ChannelProtocol[Confirmation] = ChannelProtocol(channel_id)
        self._consumers: dict[str, Consumer] = {}

    def __repr__(self) -> str:
        return f"<Channel {self.channel_id}{' closed' if self._error else ''}>"

    @property
    def is_open(self) -> bool:
        return self._error is None

    @property
    def unconfirmed(self) -> int:
        """Publishes the broker has not confirmed yet (0 when not in confirm mode)."""
        confirms = self._protocol.confirms
        return len(confirms) if confirms is not None else 0

    # -- synchronous methods ------------------------------------------------------------------

    async def _rpc(self, method: Frame, on_reply: Callable[[Any], None] | None = None) -> Any:
        async with self._lock:
            # a call cancelled while waiting leaves its reply to come: wait for it first
            while self._call is not None:
                await self._call.event.wait()
            self._raise_if_closed()
            call = _Call(on_reply)
            self._call = call
            self._protocol.expected = method.valid_responses
            try:
                self._connection._send(marshal_method(self.channel_id, method))
            except BaseException:
                self._call = None
                self._protocol.expected = ()
                raise
            await call.event.wait()
            if call.error is not None:
                raise copy.copy(call.error)
            return call.result

    async def confirm_select(self) -> None:
        """Put the channel in confirm mode: ``publish`` then returns a ``Confirmation``."""
        if self._protocol.confirms is not None:
            await trio.lowlevel.checkpoint()
            return

        def selected(_: Any) -> None:
            pass

        async with self._lock:
            while self._call is not None:
                await self._call.event.wait()
            self._raise_if_closed()
            call = _Call(selected)
            self._call = call
            self._protocol.expected = commands.Confirm.Select.valid_responses
            self._connection._send(marshal_method(self.channel_id, commands.Confirm.Select()))
            # publishes queued after this frame are in confirm mode for the broker: count them
            self._protocol.select_confirms()
            await call.event.wait()
            if call.error is not None:
                raise copy.copy(call.error)

    async def basic_qos(self, prefetch_count: int, *, global_: bool = False) -> None:
        await self._rpc(commands.Basic.Qos(0, prefetch_count, global_))

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            commands.Exchange.Declare(
                exchange=exchange,
                exchange_type=exchange_type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments or {},
            )
        )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._rpc(commands.Exchange.Delete(exchange=exchange, if_unused=if_unused))

    async def queue_declare(
        self,
        queue: str = "",
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> tuple[str, int, int]:
        """Declare a queue; returns (name, message_count, consumer_count)."""
        reply = await self._rpc(
            commands.Queue.Declare(
                queue=queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments or {},
            )
        )
        return reply.queue, reply.message_count, reply.consumer_count

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            commands.Queue.Bind(
                queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments or {}
            )
        )

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            commands.Queue.Unbind(
                queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments or {}
            )
        )

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns how many messages it held."""
        reply = await self._rpc(
            commands.Queue.Delete(queue=queue, if_unused=if_unused, if_empty=if_empty)
        )
        return int(reply.message_count or 0)

    async def queue_purge(self, queue: str) -> int:
        """Drop every ready message of a queue; returns how many."""
        reply = await self._rpc(commands.Queue.Purge(queue=queue))
        return int(reply.message_count or 0)

    async def basic_consume(
        self,
        queue: str,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> Consumer:
        """Start consuming; iterate the returned ``Consumer`` for the deliveries."""
        consumer: Consumer | None = None

        def registered(reply: Any) -> None:
            # runs in the reader, before any delivery that follows the consume-ok
            nonlocal consumer
            consumer = Consumer(self, reply.consumer_tag, no_ack)
            self._consumers[reply.consumer_tag] = consumer

        await self._rpc(
            commands.Basic.Consume(
                queue=queue,
                consumer_tag=consumer_tag,
                no_ack=no_ack,
                exclusive=exclusive,
                arguments=arguments or {},
            ),
            registered,
        )
        assert consumer is not None
        return consumer

    async def basic_cancel(self, consumer_tag: str) -> None:
        """Stop a consumer: its iteration ends after the deliveries already received."""

        def cancelled(_: Any) -> None:
            consumer = self._consumers.pop(consumer_tag, None)
            if consumer is not None:
                consumer._end()

        await self._rpc(commands.Basic.Cancel(consumer_tag=consumer_tag), cancelled)

    async def close(self) -> None:
        """Close the channel (orderly). Closing a closed channel does nothing."""
        if self._error is not None:
            await trio.lowlevel.checkpoint()
            return

        def closed(_: Any) -> None:
            self._fail(ChannelClosed(200, "closed by the client", self.channel_id), orderly=True)
            self._connection._release_channel(self.channel_id)

        try:
            await self._rpc(commands.Channel.Close(200, "Normal shutdown", 0, 0), closed)
        except ChannelClosed:
            pass

    # -- content ------------------------------------------------------------------------------

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes | bytearray | memoryview,
        *,
        properties: commands.Basic.Properties | bytes | None = None,
        mandatory: bool = False,
    ) -> Confirmation | None:
        """Queue one message for the socket and return without waiting for the broker.

        Returns a ``Confirmation`` when the channel is in confirm mode, else None. Waits only
        while the broker has blocked the connection or the send buffer is full; a cancelled
        publish has queued nothing. Otherwise it only checks for cancellation and yields once
        the send buffer holds more than ``SEND_YIELD_WATER`` bytes, so a loop of publishes
        fills the buffer and the writer sends it in one go.
        """
        connection = self._connection
        if self._error is not None:
            raise copy.copy(self._error)
        if connection.blocked or len(connection._send_buffer) >= SEND_YIELD_WATER:
            await connection._wait_writable()
            if self._error is not None:
                raise copy.copy(self._error)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        connection._raise_if_dead()
        connection._protocol.encoder.append_publish(
            connection._send_buffer,
            self.channel_id,
            exchange,
            routing_key,
            body,
            properties,
            mandatory,
        )
        connection._wake_writer()
        confirms = self._protocol.confirms
        if confirms is None:
            return None
        confirmation = Confirmation()
        confirmation.delivery_tag = confirms.published(
            confirmation, mandatory=mandatory, exchange=exchange, routing_key=routing_key
        )
        return confirmation

    async def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._raise_if_closed()
        self._connection._send(ack_frame(self.channel_id, delivery_tag, multiple))

    async def nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self._raise_if_closed()
        self._connection._send(nack_frame(self.channel_id, delivery_tag, multiple, requeue))

    async def reject(self, delivery_tag: int, requeue: bool = False) -> None:
        self._raise_if_closed()
        self._connection._send(reject_frame(self.channel_id, delivery_tag, requeue))

    # -- inbound (called by the reader, synchronously) ------------------------------------------

    def _raise_if_closed(self) -> None:
        if self._error is not None:
            raise copy.copy(self._error)

    def _on_frame(self, event: Any) -> None:
        handled = self._protocol.receive(event)
        if handled is None:
            return
        if isinstance(handled, Content):
            self._deliver(handled)
        elif isinstance(handled, ConfirmsSettled):
            if handled.acked:
                for confirmation in handled.items:
                    confirmation._resolve(confirmation.returned)
            else:
                for confirmation in handled.items:
                    confirmation._resolve(PublishNacked(confirmation.delivery_tag))
        elif isinstance(handled, Returned):
            handled.item.returned = handled.error
        elif isinstance(handled, ServerClosedChannel):
            self._connection._send_nowait(handled.reply)
            self._fail(handled.error)
            self._connection._release_channel(self.channel_id)
        elif isinstance(handled, ConsumerCancelled):
            consumer = self._consumers.pop(handled.consumer_tag, None)
            if consumer is not None:
                consumer._end()
            if handled.reply is not None:
                self._connection._send_nowait(handled.reply)
        elif isinstance(handled, FlowRequested):
            self._connection._send_nowait(handled.reply)
        elif isinstance(handled, Replied):
            call = self._call
            if call is not None:
                self._call = None
                call.result = handled.method
                if call.on_reply is not None:
                    call.on_reply(handled.method)
                call.event.set()

    def _deliver(self, content: Content) -> None:
        method: Any = content.method
        consumer = self._consumers.get(method.consumer_tag)
        if consumer is not None:
            consumer._push(
                Delivery(
                    content.body,
                    method.delivery_tag,
                    method.redelivered,
                    method.exchange,
                    method.routing_key,
                    method.consumer_tag,
                    content.properties,
                    content.header_error,
                    content.body_size,
                )
            )

    def _fail(self, error: AMQPError, *, orderly: bool = False) -> None:
        """The channel is gone: tell everyone who waits on it."""
        if self._error is not None:
            return
        self._error = error
        call = self._call
        if call is not None:
            self._call = None
            call.error = error
            call.event.set()
        for confirmation in self._protocol.fail():
            confirmation._resolve(error)
        consumers = list(self._consumers.values())
        self._consumers.clear()
        for consumer in consumers:
            if orderly:
                consumer._end()
            else:
                consumer._fail(error)


class Connection:
    """One AMQP connection; obtain it from ``open_connection``."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: ConnectionProtocol,
        broker: BrokerHost | None = None,
        broker_index: int = 0,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        #: the host of the URL this connection is open on, and its position in the URL
        self.broker = broker
        self.broker_index = broker_index
        self._send_buffer = bytearray()
        self._writer_wakeup: trio.Event | None = None
        self._drained: trio.Event | None = None
        self._writing = False
        self._last_send = 0.0
        self._channels: dict[int, Channel] = {}
        self._last_channel_id = 0
        self._error: ConnectionClosed | None = None
        self._closed_by_us = False
        self._close_ok = trio.Event()
        self._unblocked = trio.Event()
        self._cancel_scope: trio.CancelScope | None = None
        self.blocked = False
        self.blocked_reason = ""

    @property
    def is_open(self) -> bool:
        return self._error is None

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._protocol.server_properties

    @property
    def channel_max(self) -> int:
        return self._protocol.channel_max

    @property
    def frame_max(self) -> int:
        return self._protocol.frame_max

    @property
    def heartbeat(self) -> int:
        """Seconds, as negotiated; 0: no heartbeats."""
        return self._protocol.heartbeat

    async def open_channel(self) -> Channel:
        self._raise_if_dead()
        channel_id = self._allocate_channel_id()
        channel = Channel(self, channel_id)
        self._channels[channel_id] = channel
        await channel._rpc(commands.Channel.Open())
        return channel

    # -- sending --------------------------------------------------------------------------------

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise copy.copy(self._error)

    def _send(self, data: bytes) -> None:
        """Queue whole frames for the writer (synchronous, hence atomic)."""
        if self._error is not None:
            raise copy.copy(self._error)
        self._send_buffer += data
        if self._writer_wakeup is not None:
            self._wake_writer()

    def _send_nowait(self, data: bytes) -> None:
        """Queue frames if the connection is alive; used from the reader."""
        if self._error is None:
            self._send_buffer += data
            self._wake_writer()

    def _wake_writer(self) -> None:
        wakeup = self._writer_wakeup
        if wakeup is not None:
            self._writer_wakeup = None
            wakeup.set()

    async def _wait_writable(self) -> None:
        """Wait while the broker blocks publishers or the send buffer is over the mark."""
        if len(self._send_buffer) >= SEND_YIELD_WATER and not self.blocked:
            await trio.lowlevel.checkpoint()
        while self._error is None and (self.blocked or len(self._send_buffer) >= SEND_HIGH_WATER):
            if self.blocked:
                await self._unblocked.wait()
            else:
                if self._drained is None:
                    self._drained = trio.Event()
                await self._drained.wait()
        self._raise_if_dead()

    async def _wait_flushed(self) -> None:
        while self._send_buffer or self._writing:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()

    async def _writer(self) -> None:
        stream = self._stream
        try:
            while True:
                if not self._send_buffer:
                    wakeup = self._writer_wakeup = trio.Event()
                    await wakeup.wait()
                    continue
                data = self._send_buffer
                self._send_buffer = bytearray()
                self._writing = True
                # no scheduling round after a write the kernel took whole: this loop waits on
                # its wake-up event between writes (lbactors/streams.py)
                await send_all_soon(stream, data)
                self._writing = False
                self._last_send = trio.current_time()
                drained = self._drained
                if drained is not None and len(self._send_buffer) < SEND_HIGH_WATER:
                    self._drained = None
                    drained.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            self._die(ConnectionClosed(0, f"could not send to the server: {error!r}"))

    async def _heartbeat(self) -> None:
        interval = self.heartbeat / 2
        while True:
            await trio.sleep_until(self._last_send + interval)
            now = trio.current_time()
            if now - self._last_send >= interval:
                self._last_send = now
                self._send_nowait(HEARTBEAT_FRAME)

    # -- receiving ------------------------------------------------------------------------------

    async def _reader(self) -> None:
        stream = self._stream
        protocol = self._protocol
        decoder = protocol.decoder
        channels = self._channels
        timeout = self.heartbeat * 2 if self.heartbeat else math.inf
        while True:
            try:
                with trio.move_on_after(timeout) as scope:
                    data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                self._die(ConnectionClosed(0, f"could not receive from the server: {error!r}"))
                return
            if scope.cancelled_caught:
                self._die(
                    ConnectionClosed(
                        0,
                        f"heartbeat timeout: nothing received from the server for {timeout:g} s "
                        f"(2 heartbeat intervals)",
                    )
                )
                return
            if not data:
                if self._closed_by_us:
                    self._close_ok.set()  # the server hung up on our close: nothing to wait for
                    return
                self._die(
                    ConnectionClosed(0, "the server closed the socket without connection.close")
                )
                return
            try:
                events = decoder.feed(data)
            except FrameError as error:
                closed = protocol.close_for_frame_error(error)
                self._send_nowait(protocol.data_to_send())
                await self._die_after_flush(closed)
                return
            for channel_id, event in events:
                if channel_id:
                    channel = channels.get(channel_id)
                    if channel is not None:
                        channel._on_frame(event)
                elif isinstance(event, Frame):
                    handled = protocol.handle_connection_method(event)
                    if isinstance(handled, ServerClosed):
                        self._send_nowait(protocol.data_to_send())
                        await self._die_after_flush(handled.error)
                        return
                    if isinstance(handled, CloseOkReceived):
                        self._close_ok.set()
                    elif isinstance(handled, Blocked):
                        self.blocked = True
                        self.blocked_reason = handled.reason
                    elif isinstance(handled, Unblocked):
                        self.blocked = False
                        self.blocked_reason = ""
                        self._unblocked.set()
                        self._unblocked = trio.Event()

    async def _die_after_flush(self, error: ConnectionClosed) -> None:
        self._fail_everyone(error)
        with trio.move_on_after(1.0):
            await self._wait_flushed()
        self._die(error)

    def _fail_everyone(self, error: ConnectionClosed) -> None:
        if self._error is not None:
            return
        self._error = error
        for channel in list(self._channels.values()):
            channel._fail(error)
        self._close_ok.set()
        self._unblocked.set()
        if self._drained is not None:
            self._drained.set()

    def _die(self, error: ConnectionClosed) -> None:
        self._fail_everyone(error)
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    # -- channels -------------------------------------------------------------------------------

    def _allocate_channel_id(self) -> int:
        for offset in range(1, self.channel_max + 1):
            candidate = (self._last_channel_id + offset - 1) % self.channel_max + 1
            if candidate not in self._channels:
                self._last_channel_id = candidate
                return candidate
        raise AMQPError(f"all {self.channel_max} channels are in use")

    def _release_channel(self, channel_id: int) -> None:
        self._channels.pop(channel_id, None)

    # -- handshake and close --------------------------------------------------------------------

    async def _handshake(self) -> None:
        """Run the sans-IO handshake over the stream until the connection is open."""
        stream = self._stream
        protocol = self._protocol
        await stream.send_all(protocol.initiate())
        while not protocol.is_open:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                raise ConnectionClosed(
                    0, f"connection lost during {protocol.phase}: {error!r}"
                ) from error
            try:
                protocol.receive_handshake_data(data)
            except ConnectionClosed:
                await self._send_owed(protocol.data_to_send())
                raise
            reply = protocol.data_to_send()
            if reply:
                await stream.send_all(reply)
        self._last_send = trio.current_time()

    async def _send_owed(self, data: bytes) -> None:
        """Send the close-ok owed to a server that closed during the handshake, if it listens."""
        if not data:
            return
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _close(self) -> None:
        """Orderly connection.close / close-ok (bounded by CLOSE_TIMEOUT)."""
        if self._error is not None:
            return
        self._closed_by_us = True
        self._protocol.close()
        self._send(self._protocol.data_to_send())
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._close_ok.wait()
        self._die(ConnectionClosed(200, "closed by the client"))


async def _connect(
    host: BrokerHost,
    tls: bool,
    ssl_context: ssl.SSLContext | None,
    stream_factory: StreamFactory | None,
) -> trio.abc.Stream:
    if stream_factory is not None:
        return await stream_factory()
    where = host.address
    try:
        tcp = await trio.open_tcp_stream(host.host, host.port)
    except OSError as error:
        raise ConnectionClosed(0, f"could not connect to {where}: {error}") from error
    if not tls:
        return tcp
    tls_stream = trio.SSLStream(
        tcp, ssl_context or ssl.create_default_context(), server_hostname=host.host
    )
    try:
        await tls_stream.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as error:
        await trio.aclose_forcefully(tcp)
        # trio wraps the ssl module's error (e.g. CERTIFICATE_VERIFY_FAILED) in its own
        reason = error.__cause__ if isinstance(error, trio.BrokenResourceError) else error
        raise ConnectionClosed(
            0, f"TLS handshake with {where} failed: {reason or type(error).__name__}"
        ) from error
    return tls_stream


async def _open_on(
    url: BrokerURL,
    index: int,
    *,
    ssl_context: ssl.SSLContext | None,
    stream_factory: StreamFactory | None,
    connect_timeout: float,
    protocol_options: dict[str, Any],
) -> Connection:
    """Connect to host ``index`` of ``url`` and run the handshake, each step bounded by
    ``connect_timeout``; the stream is closed again if anything fails."""
    host = url.hosts[index]
    protocol = ConnectionProtocol(
        username=host.username,
        password=host.password,
        vhost=url.vhost,
        peer=host.address,
        **protocol_options,
    )
    with trio.move_on_after(connect_timeout) as connect_scope:
        stream = await _connect(host, url.tls, ssl_context, stream_factory)
    if connect_scope.cancelled_caught:
        raise ConnectionClosed(
            0, f"could not connect to {host.address} within {connect_timeout:g} s"
        )
    connection = Connection(stream, protocol, host, index)
    try:
        with trio.move_on_after(connect_timeout) as handshake_scope:
            await connection._handshake()
        if handshake_scope.cancelled_caught:
            raise ConnectionClosed(
                0, f"no AMQP handshake with {host.address} within {connect_timeout:g} s"
            )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return connection


def _none_opened(url: BrokerURL, failures: list[tuple[BrokerHost, AMQPError]]) -> AMQPError:
    """The error of a round in which no host could be opened: a single host's own error;
    for several, one that names every host and why (an ``AuthenticationError`` if every
    host refused the login)."""
    if len(failures) == 1:
        return failures[0][1]
    reasons = "; ".join(
        f"{host.address}: {getattr(error, 'reply_text', None) or error}"
        for host, error in failures
    )
    text = f"none of the {len(url.hosts)} brokers could be opened: {reasons}"
    if all(isinstance(error, AuthenticationError) for _, error in failures):
        return AuthenticationError(403, text)
    return ConnectionClosed(0, text)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """Every exception of ``group`` that is not itself a group, at any depth.

    ``open_connection`` decides on the whole group (its errors all AMQP or cancellations
    after the connection died; exactly one error left, at any depth): that is a question about
    the group's shape, and an ``except*`` clause only ever sees the part of one type, never
    whether other errors came along or how many.
    """
    leaves: list[BaseException] = []
    for exception in group.exceptions:
        if isinstance(exception, BaseExceptionGroup):
            leaves.extend(_leaves(exception))
        else:
            leaves.append(exception)
    return leaves


@asynccontextmanager
async def open_connection(
    url: str | BrokerURL,
    *,
    heartbeat: int = 60,
    ssl_context: ssl.SSLContext | None = None,
    client_name: str = "lbactors",
    frame_max: int = 131072,
    connect_timeout: float = 10.0,
    stream_factory: StreamFactory | None = None,
    max_body: int = 0,
    first_host: int = 0,
    on_host_failed: HostFailed | None = None,
) -> AsyncIterator[Connection]:
    """Connect, log in and open the vhost of ``url``; close in order on exit.

    ``amqp://user:password@host:port/vhost`` (the vhost URL-quoted, ``/`` by default) or
    ``amqps://...`` (TLS with ``ssl_context``, default ``ssl.create_default_context()``);
    several hosts separated by commas as in oslo's ``transport_url`` (``broker_url.py``).
    The hosts are tried one after the other, starting at position ``first_host`` of the URL
    and wrapping around, each connect and each handshake bounded by ``connect_timeout``; a
    host that cannot be opened is reported to ``on_host_failed`` and the next one is tried.
    ``Connection.broker`` / ``broker_index`` say which host the connection is open on. When
    none can be opened, the error says why for each (a single host's error is raised as is:
    ``ConnectionClosed``, or ``AuthenticationError`` for a refused login).
    ``heartbeat`` is in seconds, 0 disables heartbeats. If the connection dies the body is
    cancelled and ``ConnectionClosed`` is raised out of the ``async with``.
    ``stream_factory`` replaces the TCP/TLS connect (tests).
    A received body over ``max_body`` bytes (0: no limit) keeps only its head
    (``Delivery.truncated``): what a peer sends never costs more memory than that.
    """
    broker_url = parse_url(url) if isinstance(url, str) else url
    count = len(broker_url.hosts)
    failures: list[tuple[BrokerHost, AMQPError]] = []
    for attempt in range(count):
        index = (first_host + attempt) % count
        try:
            connection = await _open_on(
                broker_url,
                index,
                ssl_context=ssl_context,
                stream_factory=stream_factory,
                connect_timeout=connect_timeout,
                protocol_options={
                    "client_name": client_name,
                    "heartbeat": heartbeat,
                    "frame_max": frame_max,
                    "max_body": max_body,
                },
            )
            break
        except AMQPError as error:
            failures.append((broker_url.hosts[index], error))
            if on_host_failed is not None:
                on_host_failed(broker_url.hosts[index], error)
    else:
        raise _none_opened(broker_url, failures)
    stream = connection._stream
    try:
        unwrapped: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                connection._cancel_scope = nursery.cancel_scope
                nursery.start_soon(connection._reader)
                nursery.start_soon(connection._writer)
                if connection.heartbeat:
                    nursery.start_soon(connection._heartbeat)
                try:
                    yield connection
                finally:
                    with trio.CancelScope(shield=True):
                        await connection._close()
        except BaseExceptionGroup as group:
            leaves = _leaves(group)
            died = connection._error is not None and not connection._closed_by_us
            if died and all(isinstance(leaf, AMQPError | trio.Cancelled) for leaf in leaves):
                unwrapped = copy.copy(connection._error)
            elif len(leaves) == 1:
                unwrapped = leaves[0]
            else:
                raise
        if unwrapped is not None:
            raise unwrapped
        if connection._error is not None and not connection._closed_by_us:
            raise copy.copy(connection._error)
    finally:
        await trio.aclose_forcefully(stream)


def reconnect_delays(
    initial: float = 0.5, maximum: float = 30.0, *, jitter: float = 0.25
) -> Iterator[float]:
    """Endless reconnect delays: ``initial``, doubling up to ``maximum``, each ± ``jitter``
    (a fraction) at random so that many clients do not reconnect in lockstep."""
    if initial <= 0 or maximum < initial:
        raise ValueError(f"need 0 < initial <= maximum, got {initial} and {maximum}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter is a fraction in [0, 1), got {jitter}")
    delay = initial
    while True:
        yield delay * (1 + random.uniform(-jitter, jitter))
        delay = min(maximum, delay * 2)
