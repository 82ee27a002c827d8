"""Supervisor <-> worker frames: round trips, split reads, errors."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from lbactors import ipc
from lbactors.messages import (
    Failure,
    ListenerStatistics,
    Operation,
    Outcome,
    StatusEntry,
    StatusUpdate,
)


def sample_frames() -> list[ipc.Frame]:
    op = Operation(op_id=7, method="member_create", args=b'{"member":{"id":"m1"}}', lb_id="lb-1")
    status = StatusUpdate(
        loadbalancers=[StatusEntry(id="lb-1", provisioning_status="ACTIVE")],
        members=[StatusEntry(id="m1", provisioning_status="ACTIVE", operating_status="ONLINE")],
    )
    return [
        ipc.Spawn(worker_index=1, incarnation=2, config=b'{"daemon":{}}'),
        ipc.Ready(worker_index=1, pid=1234),
        ipc.Submit(op=op),
        ipc.Done(outcome=Outcome(op_id=7, lb_id="lb-1", status=status, reply=True)),
        ipc.Done(
            outcome=Outcome(
                op_id=8, lb_id="", failure=Failure(exc_class="E", module="m", message="x")
            )
        ),
        ipc.CollectStats(round=3, with_owned_ids=True),
        ipc.StatsReport(
            round=3,
            listeners=[
                ListenerStatistics(
                    id="l1",
                    bytes_in=1,
                    bytes_out=2,
                    active_connections=3,
                    total_connections=4,
                    request_errors=0,
                )
            ],
            status_changes=[status],
            owned_lb_ids=["lb-1"],
        ),
        ipc.Ping(),
        ipc.Pong(),
    ]


async def test_frames_round_trip_in_order() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        sender, receiver = ipc.FrameStream(left), ipc.FrameStream(right)
        frames = sample_frames()
        await sender.send(frames[0])
        await sender.send_many(frames[1:])
        await sender.aclose()
        received = [frame async for frame in receiver]
        assert received == frames


def encoded(frames: list[ipc.Frame]) -> bytes:
    encoder = msgspec.msgpack.Encoder()
    out = b""
    for frame in frames:
        body = encoder.encode(frame)
        out += len(body).to_bytes(4, "big") + body
    return out


class ChunkedStream(trio.abc.ReceiveStream):
    """Hands out ``data`` in the given chunk sizes, then end of stream."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = data
        self._sizes = sizes

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = self._sizes.pop(0) if self._sizes else len(self._data)
        chunk, self._data = self._data[: max(size, 1)], self._data[max(size, 1) :]
        return chunk

    async def aclose(self) -> None:
        pass


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 64), max_size=200))
def test_split_reads_give_the_same_frames(sizes: list[int]) -> None:
    frames = sample_frames()

    async def main() -> list[ipc.Frame]:
        stream = ipc.FrameStream(ChunkedStream(encoded(frames), sizes))  # type: ignore[arg-type]
        return [frame async for frame in stream]

    assert trio.run(main) == frames


async def test_stream_ending_inside_a_frame_is_a_protocol_error() -> None:
    with trio.fail_after(10):
        data = encoded(sample_frames()[:2])
        stream = ipc.FrameStream(ChunkedStream(data[:-3], []))  # type: ignore[arg-type]
        assert isinstance(await stream.receive(), ipc.Spawn)
        with pytest.raises(ipc.ProtocolError, match="ended inside a frame"):
            await stream.receive()


async def test_garbage_is_a_protocol_error() -> None:
    with trio.fail_after(10):
        stream = ipc.FrameStream(ChunkedStream(b"\0\0\0\x03abc", []))  # type: ignore[arg-type]
        with pytest.raises(ipc.ProtocolError, match="undecodable"):
            await stream.receive()


async def test_oversized_length_is_refused() -> None:
    with trio.fail_after(10):
        stream = ipc.FrameStream(ChunkedStream(b"\xff\xff\xff\xff", []))  # type: ignore[arg-type]
        with pytest.raises(ipc.ProtocolError, match="exceeds"):
            await stream.receive()


async def test_concurrent_senders_never_interleave() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        sender, receiver = ipc.FrameStream(left), ipc.FrameStream(right)
        big = Operation(op_id=0, method="m", args=b"x" * 100_000, lb_id="lb")

        async def send_from(task: int) -> None:
            for i in range(20):
                await sender.send_many([ipc.Submit(op=big), ipc.CollectStats(round=task * 100 + i)])

        async with trio.open_nursery() as nursery:
            for task in range(4):
                nursery.start_soon(send_from, task)
            received = []
            for _ in range(4 * 20 * 2):
                received.append(await receiver.receive())
        # each send_many arrives whole: a Submit is always followed by its own CollectStats
        assert [type(f) for f in received] == [ipc.Submit, ipc.CollectStats] * 80
        rounds = sorted(f.round for f in received if isinstance(f, ipc.CollectStats))
        assert rounds == sorted(t * 100 + i for t in range(4) for i in range(20))


def test_a_collect_stats_frame_without_the_cluster_fields_decodes_as_unfiltered() -> None:
    """A frame from before the cluster fields (or from a supervisor not in cluster mode):
    no shard filter."""
    old = msgspec.msgpack.encode({"type": "CollectStats", "round": 7, "with_owned_ids": True})
    frame = msgspec.msgpack.decode(old, type=ipc.Frame)
    assert frame == ipc.CollectStats(round=7, with_owned_ids=True)
    assert isinstance(frame, ipc.CollectStats)
    assert frame.held_shards is None and frame.shards == 0
