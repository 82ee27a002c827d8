"""Sans-IO AMQP 0-9-1 pieces: framing of the inbound byte stream, content assembly, outbound
frame encoding (publish split at frame_max) and publisher-confirm bookkeeping.

Nothing here does I/O or knows about trio; ``connection.py`` is the plumbing around it.

Framing is ours (``amqp-client-notes.md`` §2.3): pamqp's ``frame.unmarshal`` cannot tell a
partial frame from a corrupt one and mis-reads a 7-byte heartbeat prefix, so we wait for the
7-byte header, then for ``8 + size`` bytes, check the frame-end byte, and only then decode the
exact slice. The hot frames (``Basic.Deliver``, ``Basic.Ack``, body frames) are decoded by hand.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from pamqp import commands, frame, header
from pamqp.base import Frame

from lbactors.amqp.errors import FrameError

__all__ = [
    "FRAME_END",
    "FRAME_OVERHEAD",
    "HEARTBEAT_FRAME",
    "PROTOCOL_HEADER",
    "ConfirmTracker",
    "Content",
    "FrameDecoder",
    "PublishEncoder",
    "ack_frame",
    "body_frame_sizes",
    "marshal_method",
    "nack_frame",
    "reject_frame",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
FRAME_END = 0xCE
#: bytes a frame adds around its payload: type (1), channel (2), size (4), frame-end (1)
FRAME_OVERHEAD = 8

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
                    try:
                        content_header = _unmarshal(bytes(buf[pos:end]))
                    except FrameError as error:
                        # sound framing, undecodable properties: keep the message, say why
                        state.properties = commands.Basic.Properties()
                        state.header_error = str(error)
                        state.body_size = _CONTENT_HEADER_START.unpack_from(buf, pos + 7)[2]
                    else:
                        assert isinstance(content_header, header.ContentHeader)
                        state.properties = content_header.properties
                        state.body_size = content_header.body_size
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


class PublishEncoder:
    """Encodes ``basic.publish`` + content header + body frames for one connection.

    The method frame for a (channel, exchange, routing key, mandatory) is built once and
    reused; the body is split in frames of at most ``frame_max - 8`` payload bytes (pamqp does
    not split bodies; a larger frame makes RabbitMQ close the connection with 501).
    """

    _CACHE_LIMIT = 4096

    def __init__(self, frame_max: int) -> None:
        if frame_max < 4096:
            raise ValueError(f"frame_max must be at least 4096, got {frame_max}")
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
        properties: commands.Basic.Properties | None,
        mandatory: bool,
    ) -> None:
        """Append the whole frame group of one publish to ``out``.

        Everything that can fail (names too long, bad properties) fails before ``out`` is
        touched, so ``out`` never holds half a publish.
        """
        method = self.method_frame(channel_id, exchange, routing_key, mandatory)
        props = _EMPTY_PROPERTIES if properties is None else properties.marshal()
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
