"""Run ``lbactors serve`` as a subprocess the way systemd would, with a fake ``NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class NotifySocket:
    """A fake systemd notification socket (AF_UNIX datagram) collecting every message."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="lbactors-notify-")
        self.path = str(Path(self._dir.name) / "notify.sock")
        self.sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        self.messages: list[str] = []
        self._changed = trio.Event()

    async def bind(self) -> None:
        await self.sock.bind(self.path)

    async def serve(self) -> None:
        while True:
            try:
                data = await self.sock.recv(65536)
            except trio.ClosedResourceError:
                return  # closed at teardown
            self.messages.append(data.decode())
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, line: str) -> None:
        while not any(line in message.splitlines() for message in self.messages):
            await self._changed.wait()

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


class DaemonProcess:
    """``python -m supervisor serve`` with the given environment overrides."""

    def __init__(self, env: dict[str, str], notify: NotifySocket, log_path: Path) -> None:
        self.env = env
        self.notify = notify
        self.log_path = log_path
        self.process: trio.Process | None = None
        self._log = None

    async def start(self, *, ready_timeout: float = 30) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env["NOTIFY_SOCKET"] = self.notify.path
        env["LBACTORS_LOG_FORMAT"] = "json"
        self._log = open(self.log_path, "ab")  # noqa: ASYNC230 - kept open while it runs
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "supervisor", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        with trio.fail_after(ready_timeout):
            await self.notify.wait_for("READY=1")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        # trio starts subprocesses from a helper thread: gather the children of every thread
        pids: set[int] = set()
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                pids.update(int(pid) for pid in (task / "children").read_text().split())
            except FileNotFoundError:
                continue  # the thread ended meanwhile
        return sorted(pid for pid in pids if _alive(pid))

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        with trio.fail_after(timeout):
            return await self.process.wait()

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        workers = self.worker_pids() if self.process.returncode is None else []
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        # workers exit when the supervisor's end of their socket closes; never leave one behind
        with trio.move_on_after(5):
            while any(_alive(pid) for pid in workers):
                await trio.sleep(0.05)
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
        return self.process.returncode

    def log_lines(self) -> list[dict[str, Any]]:
        import json

        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines
