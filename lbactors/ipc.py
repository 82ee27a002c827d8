"""Frames between the supervisor and its worker processes, over a socket pair.

Each frame is one msgspec Struct of the tagged union :data:`Frame`, encoded as msgpack and
prefixed with its length (4 bytes, big endian). Both sides import these definitions, so the
two ends can never disagree on a field.

The conversation (supervisor → worker, worker → supervisor):

- ``Spawn`` (the configuration) → ``Ready`` once the backend and the actors are up;
- ``Submit`` (one operation) → ``Done`` (its outcome), in the order the actors ran them;
- ``Reassert`` (worker → supervisor, unasked): created objects' statuses cast again, in the
  stream of ``Done`` frames where the actor system emitted them;
- ``CollectStats`` → ``StatsReport`` (listener counters, operating-status changes);
- ``Ping`` → ``Pong``: the supervisor pings every worker each ``daemon.ping_interval``
  (``supervisor/router.py``) and kills one it has heard nothing from (no frame of any kind)
  for ``daemon.ping_timeout`` (four times that before ``Ready``; not while the supervisor
  itself is not reading); the worker answers as soon as it reads the ping, however busy its
  actors are;
- end of stream from the supervisor: the worker finishes what it holds and exits.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import msgspec
import trio

from lbactors.messages import ListenerStatistics, Operation, Outcome, Reassertion, StatusUpdate
from lbactors.streams import acquire_soon, send_all_soon

__all__ = [
    "MAX_FRAME_BYTES",
    "CollectStats",
    "Done",
    "Frame",
    "FrameStream",
    "Ping",
    "Pong",
    "ProtocolError",
    "Ready",
    "Reassert",
    "Spawn",
    "StatsReport",
    "Submit",
]

#: a frame larger than this is a protocol error (a statistics report of 100 000 listeners
#: is about 10 MB)
MAX_FRAME_BYTES = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")
_READ_SIZE = 256 * 1024


class Spawn(msgspec.Struct, tag=True, kw_only=True):
    worker_index: int
    #: how many workers share the load balancers (``routing.shard`` over this count)
    worker_count: int = 1
    incarnation: int
    #: the daemon's :class:`lbactors.config.Config`, as :func:`lbactors.config.encode_config`
    #: writes it
    config: bytes


class Ready(msgspec.Struct, tag=True, kw_only=True):
    worker_index: int
    pid: int


class Submit(msgspec.Struct, tag=True, kw_only=True):
    op: Operation


class Done(msgspec.Struct, tag=True, kw_only=True):
    outcome: Outcome


class Reassert(msgspec.Struct, tag=True, kw_only=True):
    reassertion: Reassertion


class CollectStats(msgspec.Struct, tag=True, kw_only=True):
    round: int
    #: also report the ids of every load balancer the worker holds (out-of-sync repair);
    #: never filtered by ``held_shards``
    with_owned_ids: bool = False
    #: cluster mode: report statistics and operating-status changes only of the load
    #: balancers whose owner key is in one of these shards (``routing.shard_of(key,
    #: shards)``); ``None``: of every load balancer (docs/cluster.md §6)
    held_shards: list[int] | None = None
    #: the number of cluster shards ``held_shards`` counts in
    shards: int = 0


class StatsReport(msgspec.Struct, tag=True, kw_only=True):
    round: int
    listeners: list[ListenerStatistics]
    status_changes: list[StatusUpdate]
    owned_lb_ids: list[str] | None = None
    #: False: the worker could not read its backend in time (the round skips it)
    complete: bool = True


class Ping(msgspec.Struct, tag=True):
    pass


class Pong(msgspec.Struct, tag=True, kw_only=True):
    #: the worker's actors and the load balancers it holds, when it answered (metrics,
    #: ``lbactors status``)
    actors: int = 0
    resident: int = 0


Frame = Spawn | Ready | Submit | Done | Reassert | CollectStats | StatsReport | Ping | Pong


class ProtocolError(Exception):
    """The peer sent bytes that are not a frame (or the stream ended inside one)."""


class FrameStream:
    """Frames over a byte stream; sends are serialized, so any task may send.

    Iterating yields frames until the peer closes its end cleanly. A send cancelled half-way
    leaves the stream unusable (trio's rule for streams): the peer sees the stream break.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._send_lock = trio.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Frame)
        self._buffer = bytearray()
        self._ready: list[Frame] = []

    def _encode(self, frame: Frame, out: bytearray) -> None:
        start = len(out)
        out.extend(b"\0\0\0\0")
        self._encoder.encode_into(frame, out, -1)
        _HEADER.pack_into(out, start, len(out) - start - 4)

    async def send(self, frame: Frame) -> None:
        await self.send_many((frame,))

    async def send_many(self, frames: Iterable[Frame]) -> None:
        """Send several frames in one write, in order."""
        out = bytearray()
        for frame in frames:
            self._encode(frame, out)
        if not out:
            return
        # neither the lock nor the write yields when they need not: the callers wait on a
        # channel or an event between two sends (lbactors/streams.py)
        await acquire_soon(self._send_lock)
        try:
            await send_all_soon(self._stream, out)
        finally:
            self._send_lock.release()

    def _parse(self) -> None:
        buffer = self._buffer
        offset = 0
        with memoryview(buffer) as view:
            while len(buffer) - offset >= 4:
                (size,) = _HEADER.unpack_from(buffer, offset)
                if size > MAX_FRAME_BYTES:
                    raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
                end = offset + 4 + size
                if len(buffer) < end:
                    break
                try:
                    self._ready.append(self._decoder.decode(view[offset + 4 : end]))
                except msgspec.DecodeError as exc:
                    raise ProtocolError(f"undecodable frame: {exc}") from None
                offset = end
        if offset:
            del buffer[:offset]

    async def receive(self) -> Frame:
        """The next frame; :class:`trio.EndOfChannel` when the peer closed cleanly."""
        while not self._ready:
            data = await self._stream.receive_some(_READ_SIZE)
            if not data:
                if self._buffer:
                    raise ProtocolError(f"stream ended inside a frame ({len(self._buffer)} bytes)")
                raise trio.EndOfChannel
            self._buffer += data
            self._parse()
            self._ready.reverse()
        return self._ready.pop()

    def __aiter__(self) -> FrameStream:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def send_eof(self) -> None:
        """Tell the peer that no more frames come (it still may send); falls back to closing
        for a stream that cannot half-close."""
        async with self._send_lock:
            if isinstance(self._stream, trio.abc.HalfCloseableStream):
                await self._stream.send_eof()
            else:
                await self._stream.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()
