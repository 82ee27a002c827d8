"""``lbactors.streams``: writes and lock takes that do not yield when they need not."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from lbactors.streams import acquire_soon, send_all_soon


def _socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(
        trio.socket.from_stdlib_socket(b)
    )


async def _read(stream: trio.SocketStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await stream.receive_some()
        assert chunk, "the peer closed early"
        got += chunk
    return bytes(got)


async def test_a_write_the_kernel_takes_at_once_does_not_checkpoint() -> None:
    """The reason for the module: trio's own ``send_all`` yields after every write."""
    left, right = _socket_streams()
    with trio.fail_after(5):
        async with left, right:
            with trio.testing.assert_no_checkpoints():
                await send_all_soon(left, b"frame")
            assert await _read(right, 5) == b"frame"
            with pytest.raises(AssertionError), trio.testing.assert_no_checkpoints():
                await left.send_all(b"x")  # what it replaces does yield


async def test_a_write_larger_than_the_buffer_waits_and_sends_everything_in_order() -> None:
    left, right = _socket_streams()
    data = bytes(range(256)) * 40_000  # 10 MB: far more than a socket buffer
    with trio.fail_after(20):
        async with left, right, trio.open_nursery() as nursery:
            received: list[bytes] = []

            async def read_all() -> None:
                received.append(await _read(right, len(data)))

            nursery.start_soon(read_all)
            await send_all_soon(left, bytearray(data))
        assert received == [data]


async def test_errors_are_trios_broken_and_closed() -> None:
    left, right = _socket_streams()
    with trio.fail_after(5):
        await right.aclose()
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):  # the first writes may still land in the buffer
                await send_all_soon(left, b"x" * 65536)
        await left.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await send_all_soon(left, b"x")


async def test_a_cancelled_wait_for_room_is_a_cancellation(autojump_clock: object) -> None:
    left, right = _socket_streams()
    with trio.fail_after(60):
        async with left, right:
            with trio.move_on_after(10) as scope:
                await send_all_soon(left, b"x" * 50_000_000)  # nobody reads: it must wait
            assert scope.cancelled_caught


async def test_other_streams_get_their_own_send_all() -> None:
    send, receive = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await send_all_soon(send, b"over memory")
        assert await receive.receive_some() == b"over memory"


async def test_a_free_lock_is_taken_without_a_checkpoint_and_a_held_one_waits() -> None:
    lock = trio.Lock()
    with trio.testing.assert_no_checkpoints():
        await acquire_soon(lock)
    assert lock.locked()
    order: list[str] = []

    async def second() -> None:
        await acquire_soon(lock)
        order.append("second")
        lock.release()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            order.append("first")
            lock.release()
    assert order == ["first", "second"]


async def test_frames_to_a_worker_go_out_without_a_checkpoint() -> None:
    """The IPC frame writer uses both: a burst of frames costs no scheduling round."""
    from lbactors import ipc

    left, right = _socket_streams()
    with trio.fail_after(5):
        async with left, right:
            frames = ipc.FrameStream(left)
            with trio.testing.assert_no_checkpoints():
                await frames.send_many([ipc.Ping(), ipc.Ping()])
            peer = ipc.FrameStream(right)
            assert isinstance(await peer.receive(), ipc.Ping)
            assert isinstance(await peer.receive(), ipc.Ping)
