"""Writing to a trio stream without the scheduling round trio adds to every send.

``trio.SocketStream.send_all`` ends with a checkpoint even when the kernel took every byte at
once, as every trio call does: the sending task goes back to the run queue and the rest of
its step waits for the next scheduler pass (an ``epoll_wait`` and a pass over the ready
tasks). The daemon's writers (the AMQP connection's, the supervisor's and the workers' frame
senders) each wait on a channel or an event between two writes, which is their checkpoint;
the extra round after each write is one more pass per message when messages come one at a
time (measured: ``bench/PERFORMANCE.md``, "Scheduler passes per operation").

Pure trio and the standard library: no I/O of its own beyond the write it is asked for.
"""

from __future__ import annotations

import errno
import os

import trio

__all__ = ["acquire_soon", "send_all_soon"]


async def send_all_soon(stream: trio.abc.SendStream, data: bytes | bytearray | memoryview) -> None:
    """``await stream.send_all(data)``, without a checkpoint when the kernel takes all of it.

    On a :class:`trio.SocketStream` the bytes are written straight to its socket; when the
    socket's buffer is full, this waits until it is writable (a checkpoint, cancellable: the
    stream is then broken, as after a cancelled ``send_all``) and goes on. Errors are trio's:
    :class:`trio.BrokenResourceError` (the peer is gone), :class:`trio.ClosedResourceError`
    (the stream was closed). Any other stream (TLS, test streams) gets ``send_all`` itself.

    The caller serializes its writes (one writer task, or a lock), as ``send_all`` requires.
    """
    if type(stream) is not trio.SocketStream:
        await stream.send_all(data)
        return
    fd = stream.socket.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("the stream was closed")
    with memoryview(data) as view:
        total = len(view)
        sent = 0
        while sent < total:
            try:
                sent += os.write(fd, view[sent:])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
            except OSError as error:
                if error.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the stream was closed") from None
                raise trio.BrokenResourceError(f"send failed: {error!r}") from error


async def acquire_soon(lock: trio.Lock) -> None:
    """``await lock.acquire()``, without a checkpoint when the lock is free (trio's own
    ``acquire`` yields to the scheduler even then). The caller checkpoints elsewhere in its
    loop."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
