"""HAProxy test helpers: loopback VIPs, member servers that answer with their name, GETs through
a load balancer, and killing every HAProxy a test left under its state directory."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import trio


def kill_haproxies(state_dir: Path) -> None:
    for pid_file in state_dir.glob("*/haproxy.pid"):
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


_vips = itertools.count(random.randrange(20, 120))


def free_endpoint() -> tuple[str, int]:
    """A loopback VIP of this test's own and a port free on it."""
    vip = f"127.0.{next(_vips) % 250 + 2}.{random.randrange(2, 250)}"
    with socket.socket() as s:
        s.bind((vip, 0))
        return vip, s.getsockname()[1]


class MemberServer:
    """A tiny HTTP server on 127.0.0.1 answering every request with its name; ``port`` 0
    takes a free one (a server started again on the port it had comes back as the same
    member)."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port
        self.scope = trio.CancelScope()
        self.requests = 0

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
        self.requests += 1
        body = self.name.encode()
        try:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await stream.aclose()
        except trio.BrokenResourceError:
            pass

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self)
            await trio.serve_listeners(self._handle, listeners)

    def stop(self) -> None:
        self.scope.cancel()


async def http_get(host: str, port: int, path: str = "/", *, tls: bool = False) -> tuple[int, str]:
    """``(status, body)`` of a GET through the load balancer."""
    with trio.fail_after(5):
        stream: Any = await trio.open_tcp_stream(host, port)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            stream = trio.SSLStream(stream, context, server_hostname="lb.test")
        async with stream:
            await stream.send_all(
                f"GET {path} HTTP/1.0\r\nHost: lb.test\r\nUser-Agent: t\r\n\r\n".encode()
            )
            data = b""
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0
