"""The haproxy backend's process control: one HAProxy master-worker per load balancer.

:class:`HaproxyProcess` is what a load balancer's HAProxy is on disk and in the process
table: its directory, ``haproxy.cfg``, ``haproxy.pid`` (the master), ``master.sock`` (master
CLI), ``stats.sock`` (runtime API) and the master's pid. :class:`HaproxyControl` runs the
commands on it:

- :meth:`~HaproxyControl.validate`: ``haproxy -c``; a rejected file raises
  :class:`~lbactors.backends.base.BackendError` with HAProxy's alerts;
- :meth:`~HaproxyControl.start`: ``haproxy -W -D`` (daemonized: the master outlives this
  process), done once a worker answers on the stats socket;
- :meth:`~HaproxyControl.reload`: ``reload`` on the master socket (hitless), done once the
  master reports it without a failure and the stats socket answers from the new worker;
- :meth:`~HaproxyControl.stop`: SIGTERM to the master, SIGKILL to whatever is left after
  ``stop_timeout``;
- :meth:`~HaproxyControl.adopt`: take over a master a previous daemon started;
- :meth:`~HaproxyControl.ask`: one command on a CLI socket.

Liveness is read from ``/proc`` (:func:`process_alive`: a live, not zombie, ``haproxy``), and
the master's ``show proc`` answer is parsed by :func:`parse_show_proc` (pure).

Commands are killed (SIGKILL) when their call is cancelled (:func:`kill_at_once`); socket
I/O is trio's; file work runs through the backend's
:class:`~lbactors.backends.base.BlockingCalls`, in order per load balancer.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

import msgspec
import structlog
import trio

from lbactors.backends.base import BackendError, BlockingCalls

__all__ = [
    "IO_ERRORS",
    "HaproxyControl",
    "HaproxyProcess",
    "Procs",
    "kill_at_once",
    "parse_show_proc",
    "process_alive",
]

# the events are the haproxy backend's, under its logger name
log = structlog.get_logger("lbactors.backends.haproxy")

#: what a runtime-API exchange raises when HAProxy is not (yet) there or hangs up
IO_ERRORS = (OSError, trio.BrokenResourceError, trio.TooSlowError)

_T = TypeVar("_T")


class HaproxyProcess:
    """The HAProxy master-worker of one load balancer: its files and its master's pid."""

    def __init__(self, lb_id: str, directory: Path) -> None:
        self.lb_id = lb_id
        self.dir = directory
        #: the configuration the process runs (``None``: unknown, or no process)
        self.running_text: str | None = None
        self.pid: int | None = None

    @property
    def cfg(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def master_socket(self) -> str:
        return str(self.dir / "master.sock")

    @property
    def stats_socket(self) -> str:
        return str(self.dir / "stats.sock")

    @property
    def pid_file(self) -> Path:
        return self.dir / "haproxy.pid"


def exited(pid: int) -> bool:
    """Whether ``pid`` has finished exiting: gone, or a zombie, so its sockets are closed.
    Not ``not process_alive(pid)``: a dying process loses its memory (an empty cmdline) before
    the kernel closes its files, and its listening sockets still hold their addresses then."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: ASYNC230 - procfs, never blocks
            stat = f.read()
    except OSError:
        return True
    return stat.rsplit(b")", 1)[-1].split()[:1] in ([b"Z"], [b"X"])


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) HAProxy. Reads ``/proc`` (memory, no disk)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:  # noqa: ASYNC230 - procfs, never blocks
            cmdline = f.read()
    except OSError:
        return False
    return b"haproxy" in cmdline and not exited(pid)


def processes_running(cfg: str) -> list[int]:
    """Pids of the live HAProxy processes (masters and workers) started with ``-f cfg``: after
    a master died, its workers may still hold the listening sockets for a while (they leave
    when they notice, or never when they are stopped). Scans ``/proc``; run it in a thread."""
    wanted = b"\0-f\0" + os.fsencode(cfg) + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if wanted in b"\0" + cmdline and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


class Procs(msgspec.Struct):
    """The master's ``show proc``: reloads so far, failed reloads, and the workers."""

    reloads: int
    failed: int
    #: (pid, reloads survived) of every worker
    workers: list[tuple[int, int]]


def parse_show_proc(text: str) -> Procs:
    reloads = failed = -1
    workers: list[tuple[int, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or line.startswith("#") or not parts[0].isdigit():
            continue
        if parts[1] == "master":
            reloads = int(parts[2])
            if len(parts) > 4 and parts[3] == "[failed:":
                failed = int(parts[4].rstrip("]"))
        elif parts[1] == "worker":
            workers.append((int(parts[0]), int(parts[2])))
    if reloads < 0:
        raise BackendError(f"haproxy: unexpected show proc answer: {text[:200]!r}")
    return Procs(reloads, max(failed, 0), workers)


def _alerts(stderr: bytes, tmp: Path, cfg: Path) -> str:
    """HAProxy's ALERT lines, without the pid prefixes, naming the real file."""
    lines = []
    for raw in stderr.decode(errors="replace").splitlines():
        if "[ALERT]" in raw:
            text = raw.split(":", 1)[1].strip() if ":" in raw else raw
            lines.append(text.replace(str(tmp), cfg.name))
    return "; ".join(lines) or stderr.decode(errors="replace").strip()[-500:]


async def kill_at_once(process: trio.Process) -> None:
    """What a cancelled command gets: SIGKILL at once (trio's default waits 5 s after a
    SIGTERM, and a cancelled backend call must return within ``daemon.cancel_grace``)."""
    process.kill()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


class HaproxyControl:
    """Validates, starts, reloads, stops and asks the HAProxy processes; see the module
    docstring. ``files`` runs the file work (the backend's, shared with its state files)."""

    def __init__(
        self,
        *,
        files: BlockingCalls,
        haproxy_bin: str,
        reload_timeout: float,
        validate_timeout: float,
        stop_timeout: float,
        socket_timeout: float,
    ) -> None:
        self._files = files
        self.haproxy_bin = haproxy_bin
        self.reload_timeout = reload_timeout
        self.validate_timeout = validate_timeout
        self.stop_timeout = stop_timeout
        self.socket_timeout = socket_timeout

    # ------------------------------------------------------------------ runtime API

    async def ask(self, path: str, command: str) -> str:
        """One command on a HAProxy CLI socket; the whole answer."""
        with trio.fail_after(self.socket_timeout):
            stream = await trio.open_unix_socket(path)
            async with stream:
                await stream.send_all(command.encode() + b"\n")
                await stream.send_eof()
                chunks = []
                while data := await stream.receive_some(65536):
                    chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    async def show_proc(self, proc: HaproxyProcess) -> Procs:
        return parse_show_proc(await self.ask(proc.master_socket, "show proc"))

    async def _retry(
        self, fn: Callable[[HaproxyProcess], Awaitable[_T]], proc: HaproxyProcess
    ) -> _T:
        """``fn(proc)``, retried on connection errors for up to ``reload_timeout``."""
        with trio.move_on_after(self.reload_timeout):
            while True:
                try:
                    return await fn(proc)
                except IO_ERRORS:
                    await trio.sleep(0.01)
        raise BackendError(f"haproxy of load balancer {proc.lb_id} does not answer")

    async def _worker_pid(self, proc: HaproxyProcess) -> int | None:
        """The pid of the worker that answers on the stats socket (``None``: nobody)."""
        try:
            info = await self.ask(proc.stats_socket, "show info")
        except IO_ERRORS:
            return None
        for line in info.splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    # ------------------------------------------------------------------ life cycle

    async def adopt(self, proc: HaproxyProcess, pid: int | None, running_text: str | None) -> bool:
        """Take over the master ``pid`` (read from ``proc``'s pid file) if it is a live
        HAProxy whose master socket answers; ``running_text``: the ``haproxy.cfg`` it runs."""
        if pid is None or not process_alive(pid):
            return False
        try:
            await self.show_proc(proc)
        except (*IO_ERRORS, BackendError):
            return False
        proc.pid = pid
        proc.running_text = running_text
        return True

    async def validate(self, proc: HaproxyProcess, tmp: Path) -> None:
        """``haproxy -c`` on ``tmp`` (removed if rejected); HAProxy's alerts name ``haproxy.cfg``."""
        with trio.fail_after(self.validate_timeout):
            result = await trio.run_process(
                [self.haproxy_bin, "-c", "-f", str(tmp)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                deliver_cancel=kill_at_once,
            )
        if result.returncode != 0:
            await self._files.run(proc.lb_id, _unlink, tmp)
            raise BackendError(
                "haproxy rejected the configuration: " + _alerts(result.stderr, tmp, proc.cfg)
            )

    async def reap_leftovers(self, proc: HaproxyProcess) -> list[int]:
        """Kill (SIGKILL) what still runs ``proc``'s configuration when its master is dead, and
        wait up to ``stop_timeout`` for them to go: a worker that outlived its master keeps the
        load balancer's addresses bound, and the new master could not bind them. The pids."""
        pids = await self._files.run(proc.lb_id, processes_running, str(proc.cfg))
        if not pids:
            return []
        log.warning("killing what a dead haproxy master left running", lb_id=proc.lb_id, pids=pids)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        await self._wait_exited(pids)
        return pids

    async def _wait_exited(self, pids: Iterable[int]) -> bool:
        """Poll ``/proc`` until every pid has exited (:func:`exited`); False after
        ``stop_timeout``."""
        with trio.move_on_after(self.stop_timeout):
            while not all(exited(pid) for pid in pids):  # noqa: ASYNC110 - polling /proc
                await trio.sleep(0.01)
            return True
        return False

    async def start(self, proc: HaproxyProcess) -> None:
        """Start the master (daemonized: it outlives this process) and wait for its worker."""
        await self._files.run(proc.lb_id, _unlink, proc.pid_file)
        with trio.fail_after(self.reload_timeout):
            result = await trio.run_process(
                [
                    self.haproxy_bin,
                    "-W",
                    "-D",
                    "-S",
                    f"{proc.master_socket},mode,600",
                    "-p",
                    str(proc.pid_file),
                    "-f",
                    str(proc.cfg),
                ],
                stdin=b"",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                deliver_cancel=kill_at_once,
            )
        if result.returncode != 0:
            raise BackendError(
                "haproxy did not start: " + _alerts(result.stderr, proc.cfg, proc.cfg)
            )
        pid_text = await self._files.run(proc.lb_id, proc.pid_file.read_text)
        proc.pid = int(pid_text.split()[0])
        with trio.move_on_after(self.reload_timeout):
            while True:
                try:
                    procs = await self.show_proc(proc)
                    workers = {pid for pid, _ in procs.workers}
                    if workers and await self._worker_pid(proc) in workers:
                        log.info("haproxy started", lb_id=proc.lb_id, pid=proc.pid)
                        return
                except (*IO_ERRORS, BackendError):
                    pass
                await trio.sleep(0.005)
        raise BackendError(f"haproxy (pid {proc.pid}) started but no worker answered in time")

    async def reload(self, proc: HaproxyProcess) -> None:
        """A hitless reload of ``haproxy.cfg``; returns once the new worker answers."""
        before = await self._retry(self.show_proc, proc)
        old_workers = {pid for pid, _ in before.workers}
        try:
            await self.ask(proc.master_socket, "reload")
        except IO_ERRORS:
            pass  # the master re-executes itself and drops the connection
        delay = 0.002
        with trio.move_on_after(self.reload_timeout):
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)
                try:
                    procs = await self.show_proc(proc)
                except (*IO_ERRORS, BackendError):
                    continue
                if procs.reloads <= before.reloads:
                    continue
                if procs.failed > before.failed:
                    raise BackendError(
                        "haproxy refused to reload (the previous configuration still serves)"
                    )
                new = {pid for pid, reloads in procs.workers if reloads == 0} - old_workers
                if new and await self._worker_pid(proc) in new:
                    log.debug("haproxy reloaded", lb_id=proc.lb_id, pid=proc.pid)
                    return
        raise BackendError(f"haproxy (pid {proc.pid}) did not confirm the reload in time")

    async def stop(self, proc: HaproxyProcess) -> None:
        """Stop the master and its workers (SIGTERM, SIGKILL after ``stop_timeout``)."""
        pids: set[int] = set()
        if proc.pid is None:
            try:
                pid_text = await self._files.run(proc.lb_id, proc.pid_file.read_text)
                pid = int(pid_text.split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            if pid is not None and process_alive(pid):
                proc.pid = pid
        if proc.pid is not None:
            try:
                pids = {pid for pid, _ in (await self.show_proc(proc)).workers}
            except (*IO_ERRORS, BackendError):
                pids = set()
            pids.add(proc.pid)
            _signal(proc.pid, signal.SIGTERM)
            if not await self._wait_exited(pids):
                for p in pids:
                    if process_alive(p):
                        _signal(p, signal.SIGKILL)
                # their addresses are free once they have exited (a start may follow at once)
                await self._wait_exited(pids)
            log.info("haproxy stopped", lb_id=proc.lb_id, pid=proc.pid)
        proc.pid = None
        proc.running_text = None
