"""Sans-IO AMQP 0-9-1 pieces: the connection handshake and connection-level methods
(:class:`ConnectionProtocol`), framing of the inbound byte stream, content assembly, outbound
frame encoding (publish split at frame_max), a channel's inbound state machine
(:class:`ChannelProtocol`: its automatic replies, deliveries, returns) and publisher-confirm
bookkeeping.

Nothing here does I/O or knows about trio; ``connection.py`` is the plumbing around it.

Framing is ours (``amqp-client-notes.md`` §2.3): pamqp's ``frame.unmarshal`` cannot tell a
partial frame from a corrupt one and mis-reads a 7-byte heartbeat prefix, so we wait for the
7-byte header, then for ``8 + size`` bytes, check the frame-end byte, and only then decode the
exact slice. The hot frames (``Basic.Deliver``, ``Basic.Ack``, body frames) are decoded by hand.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from pamqp import commands, frame, header
from pamqp.base import Frame

from lbactors.amqp.errors import (
    AuthenticationError,
    ChannelClosed,
    ConnectionClosed,
    FrameError,
    PublishReturned,
)

__all__ = [
    "CHANNEL_MAX",
    "FRAME_END",
    "FRAME_MIN_SIZE",
    "FRAME_OVERHEAD",
    "HEARTBEAT_FRAME",
    "PROTOCOL_HEADER",
    "Blocked",
    "ChannelProtocol",
    "CloseOkReceived",
    "ConfirmTracker",
    "ConfirmsSettled",
    "ConnectionProtocol",
    "ConsumerCancelled",
    "Content",
    "FlowRequested",
    "FrameDecoder",
    "PublishEncoder",
    "Replied",
    "Returned",
    "ServerClosed",
    "ServerClosedChannel",
    "Tuning",
    "Unblocked",
    "ack_frame",
    "body_frame_sizes",
    "marshal_method",
    "nack_frame",
    "negotiate_tune",
    "reject_frame",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
FRAME_END = 0xCE
#: bytes a frame adds around its payload: type (1), channel (2), size (4), frame-end (1)
FRAME_OVERHEAD = 8
#: AMQP 0-9-1's frame-min-size: no peer may negotiate smaller frames
FRAME_MIN_SIZE = 4096
#: the most channels the client asks for (RabbitMQ's default too)
CHANNEL_MAX = 2047

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8

_HEAD = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">I")
_ACK = struct.Struct(">QB")
_U64_BIT = struct.Struct(">QB")
_CONTENT_HEADER_START = struct.Struct(">HHQ")

_BASIC_DELIVER = commands.Basic.Deliver.index
_BASIC_ACK = commands.Basic.Ack.index
_BASIC_RETURN = commands.Basic.Return.index
_BASIC_GET_OK = commands.Basic.GetOk.index
_CONTENT_METHODS = frozenset({_BASIC_DELIVER, _BASIC_RETURN, _BASIC_GET_OK})

_EMPTY_PROPERTIES = b"\x00\x00"  # property flags: none set
_BASIC = commands.Basic.Deliver.index >> 16  # class id 60

#: distinct property sets a decoder remembers decoded (all forgotten when one more comes:
#: per-message headers, as in cluster mode's shard queues, never pile up)
PROPERTIES_KEPT = 64


class Content:
    """A content-carrying method (Basic.Deliver, Basic.Return, Basic.GetOk) with its
    properties and its whole body, assembled from the header and body frames.

    ``header_error`` says why the content header's properties could not be decoded (a
    timestamp beyond the year 9999, say: the broker passes such properties through); the
    properties are then empty. The frames themselves were sound, so the stream goes on: one
    message with odd properties must never take the connection down (it would be redelivered
    to the next connection, and take that one down too).

    ``body_size`` is the size the content header announced. It is larger than ``len(body)``
    only when the body was over the decoder's ``max_body``: ``body`` then holds its first
    ``TRUNCATED_HEAD`` bytes, and the rest was never kept in memory.
    """

    __slots__ = ("body", "body_size", "header_error", "method", "properties")

    def __init__(
        self,
        method: Frame,
        properties: commands.Basic.Properties,
        body: bytes,
        header_error: str | None = None,
        body_size: int = -1,
    ) -> None:
        self.method = method
        self.properties = properties
        self.body = body
        self.header_error = header_error
        self.body_size = len(body) if body_size < 0 else body_size

    @property
    def truncated(self) -> bool:
        return self.body_size > len(self.body)

    def __repr__(self) -> str:
        return f"Content({self.method!r}, {self.properties!r}, <{len(self.body)} bytes>)"


#: bytes kept of a body over ``FrameDecoder.max_body`` (enough to log and dead-letter its head)
TRUNCATED_HEAD = 1024


class _Partial:
    __slots__ = ("body_size", "header_error", "keep", "method", "parts", "properties", "received")

    def __init__(self, method: Frame) -> None:
        self.method = method
        self.properties: commands.Basic.Properties | None = None
        self.header_error: str | None = None
        self.body_size = -1
        self.parts: list[bytes] = []
        self.received = 0
        #: body bytes to keep: -1 for all of them, else the head of a body over the limit
        self.keep = -1


def _shortstr(buf: bytearray, pos: int) -> tuple[str, int]:
    length = buf[pos]
    end = pos + 1 + length
    return buf[pos + 1 : end].decode("utf-8"), end


def _decode_deliver(buf: bytearray, pos: int) -> commands.Basic.Deliver:
    consumer_tag, pos = _shortstr(buf, pos)
    delivery_tag, bits = _U64_BIT.unpack_from(buf, pos)
    exchange, pos = _shortstr(buf, pos + 9)
    routing_key, _ = _shortstr(buf, pos)
    return commands.Basic.Deliver(consumer_tag, delivery_tag, bool(bits & 1), exchange, routing_key)


class FrameDecoder:
    """Turns the inbound byte stream into ``(channel_id, event)`` pairs.

    An event is a pamqp method frame, or a :class:`Content` once a content-carrying method, its
    header and all its body frames have arrived. Heartbeats are consumed silently (the caller
    treats any received byte as a sign of life). Feed it whatever ``receive_some`` returned,
    in any chunking; malformed input raises :class:`FrameError`.

    Contents whose properties are the same bytes share one ``Basic.Properties`` object: read
    it, never change it (``oslo.with_headers`` makes a copy to republish with).

    A body announced larger than ``max_body`` (0: no limit) is not assembled: only its first
    ``TRUNCATED_HEAD`` bytes are kept (see :class:`Content`), so a peer cannot make us hold
    more than ``max_body`` bytes of one message, whatever the broker lets through.
    """

    def __init__(self, frame_max: int = 0, max_body: int = 0) -> None:
        #: largest frame accepted (payload + 8); 0: no limit (before tuning)
        self.frame_max = frame_max
        self.max_body = max_body
        self._buffer = bytearray()
        self._partial: dict[int, _Partial] = {}
        #: decoded properties by their bytes: a broker sends the same few over and over (a
        #: peer's every cast has the same), and pamqp takes ~10 µs to decode them
        self._properties: dict[bytes, commands.Basic.Properties] = {}

    @property
    def buffered(self) -> int:
        """Bytes received but not yet forming a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, Any]]:
        buf = self._buffer
        buf += data
        available = len(buf)
        pos = 0
        events: list[tuple[int, Any]] = []
        partial = self._partial
        frame_max = self.frame_max
        try:
            while available - pos >= 7:
                frame_type, channel_id, size = _HEAD.unpack_from(buf, pos)
                end = pos + 8 + size
                if frame_type == 65 and buf[pos : pos + 4] == b"AMQP":
                    raise FrameError(
                        "the server answered with a protocol header: it does not speak "
                        f"AMQP 0-9-1 (got {bytes(buf[pos : pos + 8])!r})"
                    )
                if frame_max and size + FRAME_OVERHEAD > frame_max:
                    raise FrameError(
                        f"frame of {size + FRAME_OVERHEAD} bytes exceeds frame_max {frame_max}"
                    )
                if end > available:
                    break
                if buf[end - 1] != FRAME_END:
                    raise FrameError(
                        f"frame end byte is {buf[end - 1]:#x}, not 0xce (type {frame_type}, "
                        f"channel {channel_id}, size {size})"
                    )
                if frame_type == FRAME_BODY:
                    state = partial.get(channel_id)
                    if state is None or state.body_size < 0:
                        raise FrameError(
                            f"body frame without a content header on channel {channel_id}"
                        )
                    if state.keep < 0:
                        state.parts.append(bytes(buf[pos + 7 : end - 1]))
                    elif state.received < state.keep:
                        head = min(size, state.keep - state.received)
                        state.parts.append(bytes(buf[pos + 7 : pos + 7 + head]))
                    state.received += size
                    if state.received >= state.body_size:
                        if state.received > state.body_size:
                            raise FrameError(
                                f"body of {state.received} bytes exceeds the announced "
                                f"{state.body_size} on channel {channel_id}"
                            )
                        del partial[channel_id]
                        events.append((channel_id, _complete(state)))
                elif frame_type == FRAME_METHOD:
                    if channel_id in partial:
                        raise FrameError(
                            f"method frame in the middle of content on channel {channel_id}"
                        )
                    method_id = _METHOD_ID.unpack_from(buf, pos + 7)[0]
                    method: Frame
                    if method_id == _BASIC_ACK:
                        tag, bits = _ACK.unpack_from(buf, pos + 11)
                        method = commands.Basic.Ack(tag, bool(bits & 1))
                    elif method_id == _BASIC_DELIVER:
                        method = _decode_deliver(buf, pos + 11)
                    else:
                        method = _unmarshal(bytes(buf[pos:end]))
                    if method_id in _CONTENT_METHODS:
                        partial[channel_id] = _Partial(method)
                    else:
                        events.append((channel_id, method))
                elif frame_type == FRAME_HEADER:
                    state = partial.get(channel_id)
                    if state is None or state.body_size >= 0:
                        raise FrameError(f"unexpected content header on channel {channel_id}")
                    if size < _CONTENT_HEADER_START.size:
                        raise FrameError(f"content header of {size} bytes on channel {channel_id}")
                    class_id, _, body_size = _CONTENT_HEADER_START.unpack_from(buf, pos + 7)
                    raw_properties = bytes(buf[pos + 19 : end - 1])
                    known = self._properties.get(raw_properties) if class_id == _BASIC else None
                    if known is not None:
                        state.properties = known
                        state.body_size = body_size
                    else:
                        try:
                            content_header = _unmarshal(bytes(buf[pos:end]))
                        except FrameError as error:
                            # sound framing, undecodable properties: keep the message, say why
                            state.properties = commands.Basic.Properties()
                            state.header_error = str(error)
                            state.body_size = body_size
                        else:
                            assert isinstance(content_header, header.ContentHeader)
                            state.properties = content_header.properties
                            state.body_size = content_header.body_size
                            if class_id == _BASIC:
                                if len(self._properties) >= PROPERTIES_KEPT:
                                    self._properties.clear()
                                self._properties[raw_properties] = state.properties
                    if self.max_body and state.body_size > self.max_body:
                        state.keep = min(TRUNCATED_HEAD, self.max_body)
                    if state.body_size == 0:
                        del partial[channel_id]
                        events.append((channel_id, _complete(state)))
                elif frame_type == FRAME_HEARTBEAT:
                    pass
                else:
                    raise FrameError(f"unknown frame type {frame_type} on channel {channel_id}")
                pos = end
        except (struct.error, UnicodeDecodeError, IndexError) as error:
            raise FrameError(f"malformed frame: {error}") from error
        finally:
            if pos:
                del buf[:pos]
        return events


def _unmarshal(data: bytes) -> Any:
    try:
        return frame.unmarshal(data)[2]
    except Exception as error:  # pamqp raises UnmarshalingException, ValueError, struct.error
        raise FrameError(f"undecodable frame: {error}") from error


def _complete(state: _Partial) -> Content:
    parts = state.parts
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    assert state.properties is not None
    return Content(state.method, state.properties, body, state.header_error, state.body_size)


def marshal_method(channel_id: int, method: Frame) -> bytes:
    return frame.marshal(method, channel_id)


def ack_frame(channel_id: int, delivery_tag: int, multiple: bool = False) -> bytes:
    return struct.pack(">BHIIQBB", 1, channel_id, 13, _BASIC_ACK, delivery_tag, multiple, FRAME_END)


def nack_frame(channel_id: int, delivery_tag: int, multiple: bool, requeue: bool) -> bytes:
    bits = (1 if multiple else 0) | (2 if requeue else 0)
    return struct.pack(
        ">BHIIQBB", 1, channel_id, 13, commands.Basic.Nack.index, delivery_tag, bits, FRAME_END
    )


def reject_frame(channel_id: int, delivery_tag: int, requeue: bool) -> bytes:
    return struct.pack(
        ">BHIIQBB", 1, channel_id, 13, commands.Basic.Reject.index, delivery_tag, requeue, FRAME_END
    )


def body_frame_sizes(body_size: int, frame_max: int) -> list[int]:
    """Payload sizes of the body frames a body of ``body_size`` bytes is split into."""
    chunk = frame_max - FRAME_OVERHEAD
    return [min(chunk, body_size - offset) for offset in range(0, body_size, chunk)]


def _shortstr_bytes(value: str, what: str) -> bytes:
    encoded = value.encode("utf-8")
    if len(encoded) > 255:
        raise ValueError(f"{what} is longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(encoded),)) + encoded


def marshal_properties(properties: commands.Basic.Properties) -> bytes:
    """``properties`` as a content header carries them (property flags, then the values),
    for a publisher that sends the same ones with every message (``Channel.publish``)."""
    return properties.marshal()


class PublishEncoder:
    """Encodes ``basic.publish`` + content header + body frames for one connection.

    The method frame for a (channel, exchange, routing key, mandatory) is built once and
    reused; the body is split in frames of at most ``frame_max - 8`` payload bytes (pamqp does
    not split bodies; a larger frame makes RabbitMQ close the connection with 501).
    """

    _CACHE_LIMIT = 4096

    def __init__(self, frame_max: int) -> None:
        if frame_max < FRAME_MIN_SIZE:
            raise ValueError(f"frame_max must be at least {FRAME_MIN_SIZE}, got {frame_max}")
        self.frame_max = frame_max
        self._methods: dict[tuple[int, str, str, bool], bytes] = {}

    def method_frame(
        self, channel_id: int, exchange: str, routing_key: str, mandatory: bool
    ) -> bytes:
        key = (channel_id, exchange, routing_key, mandatory)
        cached = self._methods.get(key)
        if cached is None:
            payload = (
                _METHOD_ID.pack(commands.Basic.Publish.index)
                + b"\x00\x00"  # ticket
                + _shortstr_bytes(exchange, "exchange name")
                + _shortstr_bytes(routing_key, "routing key")
                + (b"\x01" if mandatory else b"\x00")
            )
            cached = _HEAD.pack(FRAME_METHOD, channel_id, len(payload)) + payload + b"\xce"
            if len(self._methods) >= self._CACHE_LIMIT:
                self._methods.clear()
            self._methods[key] = cached
        return cached

    def append_publish(
        self,
        out: bytearray,
        channel_id: int,
        exchange: str,
        routing_key: str,
        body: bytes | bytearray | memoryview,
        properties: commands.Basic.Properties | bytes | None,
        mandatory: bool,
    ) -> None:
        """Append the whole frame group of one publish to ``out``.

        ``properties`` may be given already marshalled (``Basic.Properties.marshal()``, see
        :func:`marshal_properties`): a publisher that sends the same properties with every
        message encodes them once. Everything that can fail (names too long, bad
        properties) fails before ``out`` is touched, so ``out`` never holds half a publish.
        """
        method = self.method_frame(channel_id, exchange, routing_key, mandatory)
        if properties is None:
            props = _EMPTY_PROPERTIES
        elif isinstance(properties, bytes):
            props = properties
        else:
            props = properties.marshal()
        body_size = len(body)
        out += method
        out += _HEAD.pack(FRAME_HEADER, channel_id, 12 + len(props))
        out += _CONTENT_HEADER_START.pack(60, 0, body_size)
        out += props
        out.append(FRAME_END)
        chunk = self.frame_max - FRAME_OVERHEAD
        if body_size <= chunk:
            if body_size:
                out += _HEAD.pack(FRAME_BODY, channel_id, body_size)
                out += body
                out.append(FRAME_END)
            return
        view = memoryview(body)
        for offset in range(0, body_size, chunk):
            piece = view[offset : offset + chunk]
            out += _HEAD.pack(FRAME_BODY, channel_id, len(piece))
            out += piece
            out.append(FRAME_END)


T = TypeVar("T")


class ConfirmTracker(Generic[T]):
    """Publisher-confirm bookkeeping for one channel in confirm mode.

    Tags count from 1 in publish order. ``ack``/``nack`` return the items they settle
    (``multiple=True``: every outstanding tag ≤ the given one). A ``basic.return`` is attributed
    to the oldest outstanding mandatory publish with the same exchange and routing key that was
    not yet returned: RabbitMQ routes a channel's publishes in order and sends the return before
    the ack of the returned message. (Edge case: an earlier mandatory publish to the same key
    that was routed but is still unconfirmed, e.g. waiting for a disk write, would take the
    blame instead.)
    """

    def __init__(self) -> None:
        self.next_tag = 1
        self._lowest = 1
        self._outstanding: dict[int, T] = {}
        self._mandatory: deque[tuple[int, str, str]] = deque()
        self._returned: set[int] = set()

    def __len__(self) -> int:
        return len(self._outstanding)

    def published(
        self, item: T, *, mandatory: bool = False, exchange: str = "", routing_key: str = ""
    ) -> int:
        tag = self.next_tag
        self.next_tag = tag + 1
        self._outstanding[tag] = item
        if mandatory:
            self._mandatory.append((tag, exchange, routing_key))
        return tag

    def returned(self, exchange: str, routing_key: str) -> T | None:
        """The item a basic.return refers to, or None if no outstanding publish matches."""
        outstanding = self._outstanding
        mandatory = self._mandatory
        while mandatory and mandatory[0][0] not in outstanding:
            mandatory.popleft()
        for tag, candidate_exchange, candidate_key in mandatory:
            if (
                tag in outstanding
                and tag not in self._returned
                and candidate_exchange == exchange
                and candidate_key == routing_key
            ):
                self._returned.add(tag)
                return outstanding[tag]
        return None

    def settle(self, delivery_tag: int, multiple: bool) -> list[T]:
        """Remove and return the items a basic.ack / basic.nack settles."""
        outstanding = self._outstanding
        settled: list[T] = []
        if multiple:
            for tag in range(self._lowest, min(delivery_tag, self.next_tag - 1) + 1):
                item = outstanding.pop(tag, None)
                if item is not None:
                    settled.append(item)
            self._lowest = max(self._lowest, delivery_tag + 1)
        else:
            item = outstanding.pop(delivery_tag, None)
            if item is not None:
                settled.append(item)
        while self._lowest < self.next_tag and self._lowest not in outstanding:
            self._lowest += 1
        # settled mandatory publishes leave the return lookup too (else it grows for ever:
        # every status cast is mandatory); confirms come mostly in order, so the head goes
        mandatory = self._mandatory
        while mandatory and mandatory[0][0] not in outstanding:
            mandatory.popleft()
        if self._returned:
            self._returned.intersection_update(outstanding)
        return settled

    def settle_all(self) -> list[T]:
        """Remove and return every outstanding item (the channel is gone)."""
        items = list(self._outstanding.values())
        self._outstanding.clear()
        self._mandatory.clear()
        self._returned.clear()
        self._lowest = self.next_tag
        return items

    def outstanding(self) -> Iterable[T]:
        return self._outstanding.values()


# -- connection class: handshake, tuning, close ----------------------------------------------


class Tuning(NamedTuple):
    """What the client answers in ``connection.tune-ok``."""

    channel_max: int
    frame_max: int
    heartbeat: int


def negotiate_tune(
    tune: commands.Connection.Tune, *, channel_max: int, frame_max: int, heartbeat: int
) -> Tuning:
    """The client's answer to the server's ``connection.tune``.

    For ``channel_max`` and ``frame_max`` the server's 0 means "no limit": the client's value
    stands; otherwise the lower of both. ``heartbeat`` 0 from the client disables heartbeats
    whatever the server proposes; the server's 0 leaves the client's value; otherwise the
    lower. A ``frame_max`` under AMQP's minimum of 4096 is a server that cannot be talked to
    (a frame could not even hold a content header with its properties): ``ConnectionClosed``.
    """
    negotiated_frame_max = min(frame_max, tune.frame_max) if tune.frame_max else frame_max
    if negotiated_frame_max < FRAME_MIN_SIZE:
        raise ConnectionClosed(
            0,
            f"the server proposes frame_max {tune.frame_max}, below AMQP's minimum of "
            f"{FRAME_MIN_SIZE}",
        )
    if heartbeat == 0:
        negotiated_heartbeat = 0
    elif tune.heartbeat == 0:
        negotiated_heartbeat = heartbeat
    else:
        negotiated_heartbeat = min(heartbeat, tune.heartbeat)
    return Tuning(
        min(tune.channel_max or channel_max, channel_max),
        negotiated_frame_max,
        negotiated_heartbeat,
    )


class ServerClosed(NamedTuple):
    """The server sent ``connection.close``; the ``close-ok`` is queued in ``data_to_send``."""

    error: ConnectionClosed


class CloseOkReceived(NamedTuple):
    """The server answered our ``connection.close``."""


class Blocked(NamedTuple):
    """The broker stopped reading from publishers (``connection.blocked``, e.g. low memory)."""

    reason: str


class Unblocked(NamedTuple):
    """The broker reads from publishers again."""


ConnectionEvent = ServerClosed | CloseOkReceived | Blocked | Unblocked

#: the phases of a connection; the handshake's are named after what the client waits for and
#: read in error messages ("connection lost during login")
PHASE_START = "the protocol negotiation"
PHASE_LOGIN = "login"
PHASE_OPEN = "connection.open"
PHASE_OPENED = "open"
PHASE_CLOSED = "closed"

_CLIENT_CAPABILITIES = {
    "publisher_confirms": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
}


class ConnectionProtocol:
    """The client side of AMQP's connection class, without I/O.

    The handshake: :meth:`initiate` gives the protocol header; every chunk the server sends
    goes to :meth:`receive_handshake_data` (``b""`` for EOF) until :attr:`is_open`; after
    each call :meth:`data_to_send` holds what to write (``start-ok``; ``tune-ok`` with
    ``open`` in one write; the ``close-ok`` owed to a server that closed). A failed handshake
    raises ``ConnectionClosed``, or ``AuthenticationError`` when the login or the vhost is
    refused; a ``close-ok`` owed to the server is still queued then.

    Once open, the caller feeds the :attr:`decoder` itself (the hot path: channel frames go
    straight to their channels) and hands the methods of channel 0 to
    :meth:`handle_connection_method`.
    """

    def __init__(
        self,
        *,
        username: str,
        password: str,
        vhost: str = "/",
        peer: str = "",
        client_name: str = "lbactors",
        heartbeat: int = 60,
        frame_max: int = 131072,
        channel_max: int = CHANNEL_MAX,
        max_body: int = 0,
    ) -> None:
        self.username = username
        self.password = password
        self.vhost = vhost
        #: "host:port", for error messages
        self.peer = peer
        self.client_name = client_name
        self.phase = PHASE_START
        #: before tuning, accept frames up to the larger of ours and RabbitMQ's default
        self.decoder = FrameDecoder(max(frame_max, 131072), max_body)
        self.encoder = PublishEncoder(frame_max)  # ValueError below FRAME_MIN_SIZE
        self.server_properties: dict[str, Any] = {}
        #: the client's proposals until tuned, then the negotiated values
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat
        self._pending: deque[tuple[int, Any]] = deque()
        self._out = bytearray()

    @property
    def is_open(self) -> bool:
        return self.phase == PHASE_OPENED

    def initiate(self) -> bytes:
        return PROTOCOL_HEADER

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    # -- handshake ------------------------------------------------------------------------------

    def receive_handshake_data(self, data: bytes | bytearray | memoryview) -> None:
        phase = self.phase
        if phase in (PHASE_OPENED, PHASE_CLOSED):
            raise RuntimeError(f"the handshake is over (connection {phase})")
        if not data:
            if phase == PHASE_LOGIN:
                raise AuthenticationError(
                    0,
                    "the server closed the connection after the login: "
                    "wrong user name or password?",
                )
            raise ConnectionClosed(0, f"the server closed the socket during {phase}")
        try:
            self._pending.extend(self.decoder.feed(data))
        except FrameError as error:
            raise ConnectionClosed(501, f"FRAME_ERROR during {phase}: {error}") from error
        pending = self._pending
        while pending and not self.is_open:
            method = pending.popleft()[1]
            if self.phase == PHASE_START:
                self._on_start(method)
            elif self.phase == PHASE_LOGIN:
                self._on_tune(method)
            else:
                self._on_open_ok(method)
        if self.is_open and pending:
            raise ConnectionClosed(
                0, f"unexpected frames after connection.open-ok: {list(pending)!r}"
            )

    def _on_start(self, start: Any) -> None:
        if not isinstance(start, commands.Connection.Start):
            raise ConnectionClosed(0, f"expected connection.start from the server, got {start!r}")
        self.server_properties = dict(start.server_properties or {})
        mechanisms = str(start.mechanisms).split()
        if "PLAIN" not in mechanisms:
            raise ConnectionClosed(
                0, f"the server does not offer PLAIN authentication: {mechanisms}"
            )
        client_properties: dict[str, Any] = {
            "product": "lbactors.amqp",
            "platform": "Python/trio",
            "connection_name": self.client_name,
            "capabilities": dict(_CLIENT_CAPABILITIES),
        }
        self._out += marshal_method(
            0,
            commands.Connection.StartOk(
                client_properties=client_properties,
                mechanism="PLAIN",
                response=f"\0{self.username}\0{self.password}",
                locale="en_US",
            ),
        )
        self.phase = PHASE_LOGIN

    def _on_tune(self, tune: Any) -> None:
        if isinstance(tune, commands.Connection.Close):
            self._closed_by_server()
            if tune.reply_code == 403:
                raise AuthenticationError(
                    tune.reply_code,
                    f"user {self.username!r} refused by {self.peer}: {tune.reply_text}",
                )
            raise ConnectionClosed(tune.reply_code or 0, tune.reply_text)
        if not isinstance(tune, commands.Connection.Tune):
            raise ConnectionClosed(0, f"expected connection.tune from the server, got {tune!r}")
        tuning = negotiate_tune(
            tune, channel_max=self.channel_max, frame_max=self.frame_max, heartbeat=self.heartbeat
        )
        self.channel_max, self.frame_max, self.heartbeat = tuning
        self.decoder.frame_max = self.frame_max
        self.encoder = PublishEncoder(self.frame_max)
        self._out += marshal_method(0, commands.Connection.TuneOk(*tuning))
        self._out += marshal_method(0, commands.Connection.Open(virtual_host=self.vhost))
        self.phase = PHASE_OPEN

    def _on_open_ok(self, open_ok: Any) -> None:
        if isinstance(open_ok, commands.Connection.Close):
            self._closed_by_server()
            if open_ok.reply_code in (403, 530):
                raise AuthenticationError(
                    open_ok.reply_code,
                    f"user {self.username!r} may not open vhost {self.vhost!r}: "
                    f"{open_ok.reply_text}",
                )
            raise ConnectionClosed(open_ok.reply_code or 0, open_ok.reply_text)
        if not isinstance(open_ok, commands.Connection.OpenOk):
            raise ConnectionClosed(
                0, f"expected connection.open-ok from the server, got {open_ok!r}"
            )
        self.phase = PHASE_OPENED

    def _closed_by_server(self) -> None:
        self._out += marshal_method(0, commands.Connection.CloseOk())
        self.phase = PHASE_CLOSED

    # -- open connection ------------------------------------------------------------------------

    def handle_connection_method(self, method: Any) -> ConnectionEvent | None:
        """A method received on channel 0 once open; None for what needs no action."""
        name = method.name
        if name == "Connection.Close":
            self._closed_by_server()
            return ServerClosed(ConnectionClosed(method.reply_code or 0, method.reply_text))
        if name == "Connection.CloseOk":
            return CloseOkReceived()
        if name == "Connection.Blocked":
            return Blocked(method.reason)
        if name == "Connection.Unblocked":
            return Unblocked()
        return None

    def close(self) -> None:
        """Queue our orderly ``connection.close``."""
        self._out += marshal_method(0, commands.Connection.Close(200, "Normal shutdown", 0, 0))

    def close_for_frame_error(self, error: FrameError) -> ConnectionClosed:
        """The server's bytes do not frame: queue ``connection.close 501``; the error to report."""
        text = f"FRAME_ERROR - {error}"
        self._out += marshal_method(0, commands.Connection.Close(501, text[:255], 0, 0))
        self.phase = PHASE_CLOSED
        return ConnectionClosed(501, text)


# -- channel: inbound state machine ---------------------------------------------------------


class ConfirmsSettled(NamedTuple, Generic[T]):
    """The broker acked (``acked``) or nacked the publishes of ``items``."""

    items: list[T]
    acked: bool


class Returned(NamedTuple, Generic[T]):
    """The broker returned the mandatory publish of ``item`` (its ack follows)."""

    item: T
    error: PublishReturned


class ServerClosedChannel(NamedTuple):
    """The server closed the channel; ``reply`` is the close-ok to send."""

    error: ChannelClosed
    reply: bytes


class ConsumerCancelled(NamedTuple):
    """The broker cancelled a consumer (its queue was deleted, ...); ``reply`` is the
    cancel-ok to send, or None when the broker asked for none."""

    consumer_tag: str
    reply: bytes | None


class Replied(NamedTuple):
    """The reply to the synchronous method the channel waits for."""

    method: Any


class FlowRequested(NamedTuple):
    """The broker asked the channel to stop or resume (``channel.flow``); ``reply`` is the
    flow-ok to send."""

    reply: bytes


ChannelEvent = (
    Content
    | ConfirmsSettled[T]
    | Returned[T]
    | ServerClosedChannel
    | ConsumerCancelled
    | Replied
    | FlowRequested
)


class ChannelProtocol(Generic[T]):
    """One channel's inbound state machine, without I/O: what a decoded event means.

    The caller gets the events of its channel from :class:`FrameDecoder` (which assembles
    method, header and body frames into a :class:`Content`), passes them to :meth:`receive`
    and acts on the answer: a ``basic.deliver``'s :class:`Content` (for the consumer with its
    tag), :class:`ConfirmsSettled`, :class:`Returned`, :class:`ServerClosedChannel`,
    :class:`ConsumerCancelled`, :class:`FlowRequested`, :class:`Replied`; None when there is
    nothing to do (acks without confirm mode, a return without confirm mode or matching
    publish, unsolicited methods). The confirm items ``T`` are the caller's (its waiters).
    """

    __slots__ = ("channel_id", "confirms", "expected")

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        #: publisher-confirm bookkeeping, once in confirm mode
        self.confirms: ConfirmTracker[T] | None = None
        #: names of the replies the synchronous method in flight waits for (empty: none)
        self.expected: Sequence[str] = ()

    def select_confirms(self) -> None:
        """``confirm.select`` is queued: the publishes queued after it are numbered."""
        self.confirms = ConfirmTracker()

    def receive(self, event: Any) -> ChannelEvent[T] | None:
        if isinstance(event, Content):
            return self._receive_content(event)
        name = event.name
        if name == "Basic.Ack" or name == "Basic.Nack":
            if self.confirms is None:
                return None
            items = self.confirms.settle(event.delivery_tag, event.multiple)
            return ConfirmsSettled(items, name == "Basic.Ack")
        if name == "Channel.Close":
            return ServerClosedChannel(
                ChannelClosed(event.reply_code, event.reply_text, self.channel_id),
                marshal_method(self.channel_id, commands.Channel.CloseOk()),
            )
        if name == "Basic.Cancel":
            if event.nowait:
                return ConsumerCancelled(event.consumer_tag, None)
            reply = marshal_method(self.channel_id, commands.Basic.CancelOk(event.consumer_tag))
            return ConsumerCancelled(event.consumer_tag, reply)
        if name == "Channel.Flow":
            return FlowRequested(
                marshal_method(self.channel_id, commands.Channel.FlowOk(event.active))
            )
        if name in self.expected:
            self.expected = ()
            return Replied(event)
        return None

    def _receive_content(self, content: Content) -> ChannelEvent[T] | None:
        method: Any = content.method
        name = method.name
        if name == "Basic.Deliver":
            return content
        if name == "Basic.Return" and self.confirms is not None:
            item = self.confirms.returned(method.exchange, method.routing_key)
            if item is not None:
                error = PublishReturned(
                    method.reply_code, method.reply_text, method.exchange, method.routing_key
                )
                return Returned(item, error)
        # a return without confirm mode has nobody to tell; basic.get-ok is not used
        return None

    def fail(self) -> list[T]:
        """The channel is gone: nothing is awaited any more; the unsettled confirm items."""
        self.expected = ()
        return [] if self.confirms is None else self.confirms.settle_all()
