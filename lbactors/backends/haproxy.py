"""The ``haproxy`` backend: one HAProxy (master-worker) per load balancer, configured from its actor.

Every operation changes the load balancer's subtree (:class:`LoadBalancerTree`), renders it
(:func:`~lbactors.backends.haproxy_config.render_config`, pure), and applies the result:

1. the text goes to ``haproxy.cfg.new`` and ``haproxy -c`` checks it; a configuration HAProxy
   rejects raises :class:`BackendError` with HAProxy's alerts (the object goes ERROR) and
   nothing else changes: the subtree, the files and the running process stay as they were;
2. the addresses of new ``bind`` lines are test-bound, so a port someone else holds is an
   error before the reload, not a failed reload;
3. ``haproxy.cfg`` is replaced atomically and the master is told to ``reload`` on its master
   socket (hitless: the new worker takes the listening sockets over, the old one finishes its
   connections); the reload counts as done once the master reports it without a failure and
   the stats socket answers from the new worker. A failed reload puts the old file back.

An unchanged configuration with a live process is not reloaded (every apply is idempotent,
and a redelivered operation costs one render). The process starts with the load balancer
(``loadbalancer_create``), with no frontend until a listener exists, and stops with it
(``loadbalancer_delete``, also the last step of a cascade), which also removes its directory.

Files, under ``state_dir/<lb id>/``: ``haproxy.cfg``, ``haproxy.pid`` (the master),
``master.sock`` (master CLI), ``stats.sock`` (runtime API, ``level admin``), ``state.json``
(the subtree, the certificate file names and the counter offsets: what a restarted daemon
needs), ``certs/`` (mode 0700; PEM files, certificate + intermediates + key, mode 0600, named
after their content so that a rejected configuration never overwrites a running one's files).

**Restarts.** The data plane outlives the daemon: :meth:`HaproxyBackend.aclose` leaves the
HAProxy processes running. A new backend on the same ``state_dir`` reads every
``state.json`` on first use and adopts each process whose pid file names a live HAProxy whose
master socket answers; a load balancer whose process is gone is started again by its next
operation. (Under systemd use ``KillMode=mixed`` or ``process`` so that a restart of the
daemon does not take the HAProxy processes with it.)

**Statistics** come from ``show stat`` on the stats socket. A reload starts a worker with
fresh counters, so the counters of the old worker are added to per-listener offsets (kept in
``state.json``) just before each reload: totals stay monotonic.

Options (``[backend.options]``): see :class:`HaproxyOptions`.

Layer: actors and backends (model, trio); all subprocess and socket I/O through trio; file
writes in worker threads; small ``/proc`` reads (pid liveness) inline.

**Deadlines** (``operation_deadline`` etc., :class:`~lbactors.backends.base.Deadlines`): a
cancelled call returns at once. Commands are killed (SIGKILL) when cancelled, socket I/O is
trio's, and file work runs through :class:`~lbactors.backends.base.BlockingCalls`: a
cancellation abandons the thread, and the next call of the same load balancer waits for it
first, so files are never written out of order. A configuration left half-applied by a
cancellation is reconciled by the next operation (it compares with what HAProxy runs).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from lbactors.backends.base import (
    Backend,
    BackendError,
    BlockingCalls,
    Deadlines,
    OperatingStatus,
    Seconds,
)
from lbactors.backends.haproxy_config import (
    FLAVOR_METADATA,
    ConfigError,
    FlavorSettings,
    LoadBalancerTree,
    Rendered,
    haproxy_name,
    listener_counters,
    operating_statuses,
    parse_show_stat,
    render_config,
    validate_flavor,
)
from lbactors.messages import ListenerStatistics
from lbactors.model import (
    PLURAL,
    Certificate,
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    OctaviaObject,
    Pool,
)
from lbactors.status import parents_of

__all__ = ["HaproxyBackend", "HaproxyOptions"]

log = structlog.get_logger("lbactors.backends.haproxy")

#: what a runtime-API exchange raises when HAProxy is not (yet) there or hangs up
_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.TooSlowError)

#: longest path a unix socket address holds (sun_path is 108 bytes with the NUL)
_SUN_PATH_MAX = 107


class HaproxyOptions(Deadlines, kw_only=True, forbid_unknown_fields=True):
    """Options of the haproxy backend; an unknown key is an error that names it."""

    # a change may validate (validate_timeout), start or reload (reload_timeout) and stop
    # (stop_timeout) a HAProxy: the deadlines leave room for all of them
    operation_deadline: Seconds = 60.0
    plan_step_deadline: Seconds = 30.0
    query_deadline: Seconds = 10.0

    #: where each load balancer's directory lives; default ``$STATE_DIRECTORY`` (systemd's
    #: ``StateDirectory=``) or ``/var/lib/lbactors/haproxy``
    state_dir: str | None = None
    haproxy_bin: str = "haproxy"
    #: seconds a start or reload may take until the new worker answers
    reload_timeout: float = 10.0
    #: seconds ``haproxy -c`` may take
    validate_timeout: float = 30.0
    #: seconds a stopped HAProxy gets before SIGKILL
    stop_timeout: float = 5.0
    #: seconds one runtime-API exchange may take
    socket_timeout: float = 5.0
    #: ``fastinter`` / ``downinter`` of health checks in ms (how fast a state change is
    #: confirmed); ``None``: HAProxy's default (the monitor's delay)
    check_fastinter_ms: int | None = None
    #: ``hard-stop-after`` in seconds: how long an old worker may drain after a reload
    hard_stop_after: float | None = None
    # defaults where neither the listener nor the flavor says (see FLAVOR_METADATA)
    max_connections: int = -1
    timeout_client_data: int = 50_000
    timeout_member_connect: int = 5_000
    timeout_member_data: int = 50_000
    timeout_tcp_inspect: int = 0


class _Saved(msgspec.Struct, kw_only=True):
    """``state.json``: what a restarted daemon needs to carry on with a load balancer."""

    tree: LoadBalancerTree
    #: listener id -> PEM file name in ``certs/``
    certs: dict[str, str] = msgspec.field(default_factory=dict)
    #: listener id -> counters of the workers that were replaced by reloads
    offsets: dict[str, ListenerStatistics] = msgspec.field(default_factory=dict)


_encode_saved = msgspec.json.Encoder().encode
_decode_saved = msgspec.json.Decoder(_Saved).decode


class _Instance:
    """The HAProxy instance of one load balancer, as the backend sees it: its directory, its
    saved subtree and its process (touched only by the load balancer's actor, and by reads).

    Not a :class:`~lbactors.model.LoadBalancer`: in this backend ``lb`` always names the model
    object, ``inst`` an instance."""

    def __init__(self, lb_id: str, directory: Path, saved: _Saved) -> None:
        self.lb_id = lb_id
        self.dir = directory
        self.saved = saved
        self.rendered: Rendered | None = None
        #: the configuration the process runs (``None``: unknown, or no process)
        self.running_text: str | None = None
        self.pid: int | None = None
        #: last totals reported, so that a read racing a reload never goes backwards
        self.reported: dict[str, ListenerStatistics] = {}

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


# --------------------------------------------------------------------------- helpers

_NESTED: dict[type, tuple[str, ...]] = {
    LoadBalancer: ("listeners", "pools"),
    Listener: ("default_pool", "l7policies", "loadbalancer"),
    Pool: ("healthmonitor", "members", "listener", "listeners", "loadbalancer"),
    Member: ("pool", "loadbalancer"),
    HealthMonitor: ("pool", "loadbalancer"),
    L7Policy: ("rules", "listener"),
    L7Rule: ("policy",),
}

#: kind -> the field of the load balancer tree that holds its objects
_TREE_FIELD = {kind: field for kind, field in PLURAL.items() if kind != "loadbalancer"}


def _own_state(kind: str, obj: Any, old: Any) -> Any:
    """``obj`` without nested payloads, with the ids of its parents filled in."""
    parents = parents_of(kind, obj, old)
    changes: dict[str, Any] = dict.fromkeys(_NESTED[type(obj)])
    if kind in ("member", "healthmonitor"):
        changes["pool_id"] = obj.pool_id or parents.pool_id
    elif kind == "l7policy":
        changes["listener_id"] = obj.listener_id or next(iter(parents.listener_ids), None)
    elif kind == "l7rule":
        changes["l7policy_id"] = obj.l7policy_id or parents.l7policy_id
    elif kind == "pool":
        changes["listener_id"] = obj.listener_id or next(iter(parents.listener_ids), None)
    elif kind == "listener":
        changes["loadbalancer_id"] = obj.loadbalancer_id or parents.loadbalancer_id
    return msgspec.structs.replace(obj, **changes)


def _nested_lb(obj: Any) -> LoadBalancer | None:
    """The load balancer a payload carries (for a load balancer this backend never saw)."""
    for path in (
        ("loadbalancer",),
        ("listener", "loadbalancer"),
        ("pool", "loadbalancer"),
        ("pool", "listener", "loadbalancer"),
        ("policy", "listener", "loadbalancer"),
    ):
        node = obj
        for attr in path:
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, LoadBalancer) and node.id:
            return node
    return None


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) HAProxy. Reads ``/proc`` (memory, no disk)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: ASYNC230 - procfs, never blocks
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:  # noqa: ASYNC230
            cmdline = f.read()
    except OSError:
        return False
    state = stat.rsplit(b")", 1)[-1].split()[:1]
    return state not in ([b"Z"], [b"X"]) and b"haproxy" in cmdline


class _Procs(msgspec.Struct):
    reloads: int
    failed: int
    #: (pid, reloads survived) of every worker
    workers: list[tuple[int, int]]


def _parse_show_proc(text: str) -> _Procs:
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
    return _Procs(reloads, max(failed, 0), workers)


def _alerts(stderr: bytes, tmp: Path, cfg: Path) -> str:
    """HAProxy's ALERT lines, without the pid prefixes, naming the real file."""
    lines = []
    for raw in stderr.decode(errors="replace").splitlines():
        if "[ALERT]" in raw:
            text = raw.split(":", 1)[1].strip() if ":" in raw else raw
            lines.append(text.replace(str(tmp), cfg.name))
    return "; ".join(lines) or stderr.decode(errors="replace").strip()[-500:]


async def _kill_at_once(process: trio.Process) -> None:
    """What a cancelled command gets: SIGKILL at once (trio's default waits 5 s after a
    SIGTERM, and a cancelled backend call must return within ``daemon.cancel_grace``)."""
    process.kill()


def _write_file(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``path`` atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _test_bind(address: str, port: int) -> str | None:
    """``None`` if ``address:port`` can be bound now, else why not."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


# --------------------------------------------------------------------------- the backend


class HaproxyBackend(Backend):
    """One HAProxy process per load balancer; see the module docstring."""

    name = "haproxy"

    def __init__(self, options: HaproxyOptions | None = None, **kwargs: Any) -> None:
        opts = options or HaproxyOptions(**kwargs)
        self.options = opts
        state_dir = opts.state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        self.state_dir = Path(state_dir or "/var/lib/lbactors/haproxy")
        self.settings = FlavorSettings(
            max_connections=opts.max_connections,
            timeout_client_data=opts.timeout_client_data,
            timeout_member_connect=opts.timeout_member_connect,
            timeout_member_data=opts.timeout_member_data,
            timeout_tcp_inspect=opts.timeout_tcp_inspect,
        )
        self.deadlines = opts
        #: file work in threads: abandoned by a cancellation, kept in order per load balancer
        self._files = BlockingCalls()
        self._instances: dict[str, _Instance] = {}
        #: (kind, id) -> load balancer id
        self._owner: dict[tuple[str, str], str] = {}
        self._loaded = False
        self._load_lock = trio.Lock()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> HaproxyBackend:
        return cls(msgspec.convert(options or {}, HaproxyOptions))

    # ------------------------------------------------------------------ inspection

    def master_pid(self, lb_id: str) -> int | None:
        """The pid of the HAProxy master of ``lb_id`` (``None``: no process)."""
        inst = self._instances.get(lb_id)
        return inst.pid if inst is not None else None

    def lb_ids(self) -> list[str]:
        return list(self._instances)

    async def resident_lb_ids(self) -> list[str]:
        """Every load balancer with a saved state in ``state_dir`` (adopted or to restart)."""
        await self._ensure_loaded()
        return list(self._instances)

    def directory(self, lb_id: str) -> Path:
        return self.state_dir / haproxy_name(lb_id)

    # ------------------------------------------------------------------ runtime API

    async def _ask(self, path: str, command: str) -> str:
        """One command on a HAProxy CLI socket; the whole answer."""
        with trio.fail_after(self.options.socket_timeout):
            stream = await trio.open_unix_socket(path)
            async with stream:
                await stream.send_all(command.encode() + b"\n")
                await stream.send_eof()
                chunks = []
                while data := await stream.receive_some(65536):
                    chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    async def _show_proc(self, inst: _Instance) -> _Procs:
        return _parse_show_proc(await self._ask(inst.master_socket, "show proc"))

    async def _retry(self, fn: Any, inst: _Instance) -> Any:
        """``fn(inst)``, retried on connection errors for up to ``reload_timeout``."""
        with trio.move_on_after(self.options.reload_timeout):
            while True:
                try:
                    return await fn(inst)
                except _IO_ERRORS:
                    await trio.sleep(0.01)
        raise BackendError(f"haproxy of load balancer {inst.lb_id} does not answer")

    async def _worker_pid(self, inst: _Instance) -> int | None:
        """The pid of the worker that answers on the stats socket (``None``: nobody)."""
        try:
            info = await self._ask(inst.stats_socket, "show info")
        except _IO_ERRORS:
            return None
        for line in info.splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    # ------------------------------------------------------------------ loading, adoption

    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            found = await self._files.run("", self._read_state_dir)
            for directory, saved, text, pid in found:
                lb_id = saved.tree.lb.id or directory.name
                inst = _Instance(lb_id, directory, saved)
                try:
                    inst.rendered = self._render(inst, saved.tree, saved.certs)
                except ConfigError as exc:
                    log.warning("saved configuration no longer renders", lb_id=lb_id, error=str(exc))
                if pid is not None and _process_alive(pid):
                    try:
                        await self._show_proc(inst)
                    except (*_IO_ERRORS, BackendError):
                        pass
                    else:
                        inst.pid = pid
                        inst.running_text = text
                        log.info("haproxy adopted", lb_id=lb_id, pid=pid)
                if inst.pid is None:
                    log.info("haproxy not running, starts on the next operation", lb_id=lb_id)
                self._index(inst)
                self._instances[lb_id] = inst
            self._loaded = True

    def _read_state_dir(self) -> list[tuple[Path, _Saved, str | None, int | None]]:
        found: list[tuple[Path, _Saved, str | None, int | None]] = []
        if not self.state_dir.is_dir():
            return found
        for directory in sorted(self.state_dir.iterdir()):
            state = directory / "state.json"
            if not state.is_file():
                continue
            try:
                saved = _decode_saved(state.read_bytes())
            except (OSError, msgspec.DecodeError) as exc:
                log.error("unreadable state.json", path=str(state), error=str(exc))
                continue
            try:
                text: str | None = (directory / "haproxy.cfg").read_text()
            except OSError:
                text = None
            try:
                pid: int | None = int((directory / "haproxy.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            found.append((directory, saved, text, pid))
        return found

    def _index(self, inst: _Instance) -> None:
        tree = inst.saved.tree
        self._owner[("loadbalancer", inst.lb_id)] = inst.lb_id
        for kind, field in _TREE_FIELD.items():
            for object_id in getattr(tree, field):
                self._owner[(kind, object_id)] = inst.lb_id

    # ------------------------------------------------------------------ rendering, applying

    def _render(self, inst: _Instance, tree: LoadBalancerTree, certs: dict[str, str]) -> Rendered:
        return render_config(
            tree,
            stats_socket=inst.stats_socket,
            cert_files={lid: str(inst.dir / "certs" / name) for lid, name in certs.items()},
            settings=self.settings,
            check_fastinter_ms=self.options.check_fastinter_ms,
            hard_stop_after_s=self.options.hard_stop_after,
        )

    def _new_instance(self, lb_id: str, lb: LoadBalancer) -> _Instance:
        directory = self.directory(lb_id)
        longest = len(str(directory / "master.sock"))
        if longest > _SUN_PATH_MAX:
            raise BackendError(
                f"haproxy: state_dir {str(self.state_dir)!r} is too long for unix sockets "
                f"({longest} > {_SUN_PATH_MAX} characters)"
            )
        own = msgspec.structs.replace(lb, listeners=None, pools=None)
        return _Instance(lb_id, directory, _Saved(tree=LoadBalancerTree(lb=own)))

    async def _apply(
        self,
        inst: _Instance,
        tree: LoadBalancerTree,
        certs: dict[str, str],
        new_cert_files: list[str] | None = None,
    ) -> None:
        """Make ``inst`` run ``tree``, or raise and leave everything as it was.

        ``new_cert_files`` are certificate files written for this change: removed again
        unless the change succeeds.
        """
        new_cert_files = list(new_cert_files or ())
        try:
            try:
                rendered = self._render(inst, tree, certs)
            except ConfigError as exc:
                raise BackendError(f"haproxy: {exc}") from None
            alive = inst.pid is not None and _process_alive(inst.pid)
            if not alive:
                inst.pid = None
            if alive and rendered.text == inst.running_text:
                await self._save(inst, msgspec.structs.replace(inst.saved, tree=tree, certs=certs))
                inst.rendered = rendered
                return
            old_binds = set(inst.rendered.binds) if (alive and inst.rendered) else set()
            for address, port in rendered.binds:
                if (address, port) in old_binds:
                    continue
                why = _test_bind(address, port)
                if why is not None:
                    raise BackendError(f"haproxy: cannot bind {address}:{port}: {why}")
            await self._files.run(inst.lb_id, self._prepare_dir, inst)
            tmp = inst.dir / "haproxy.cfg.new"
            await self._files.run(inst.lb_id, _write_file, tmp, rendered.text)
            await self._validate(inst, tmp)
            old_text = inst.running_text
            await self._files.run(inst.lb_id, os.replace, tmp, inst.cfg)
            offsets = inst.saved.offsets
            try:
                if alive:
                    offsets = await self._offsets_before_reload(inst)
                    await self._reload(inst)
                else:
                    await self._start(inst)
            except BaseException:
                if old_text is not None:
                    await self._files.run(inst.lb_id, _write_file, inst.cfg, old_text)
                raise
            inst.running_text = rendered.text
            inst.rendered = rendered
            await self._save(inst, _Saved(tree=tree, certs=certs, offsets=offsets))
            new_cert_files = []  # now in use
            await self._files.run(inst.lb_id, self._collect_certs, inst)
        finally:
            for name in new_cert_files:
                if name not in inst.saved.certs.values():
                    await self._files.run(inst.lb_id, self._unlink, inst.dir / "certs" / name)

    @staticmethod
    def _prepare_dir(inst: _Instance) -> None:
        inst.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (inst.dir / "certs").mkdir(exist_ok=True, mode=0o700)

    @staticmethod
    def _unlink(path: Path) -> None:
        path.unlink(missing_ok=True)

    @staticmethod
    def _collect_certs(inst: _Instance) -> None:
        keep = set(inst.saved.certs.values())
        certs = inst.dir / "certs"
        for path in certs.iterdir() if certs.is_dir() else ():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    async def _save(self, inst: _Instance, saved: _Saved) -> None:
        inst.saved = saved
        if inst.dir.is_dir():
            await self._files.run(
                inst.lb_id, _write_file, inst.dir / "state.json", _encode_saved(saved)
            )

    async def _validate(self, inst: _Instance, tmp: Path) -> None:
        with trio.fail_after(self.options.validate_timeout):
            result = await trio.run_process(
                [self.options.haproxy_bin, "-c", "-f", str(tmp)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                deliver_cancel=_kill_at_once,
            )
        if result.returncode != 0:
            await self._files.run(inst.lb_id, self._unlink, tmp)
            raise BackendError(
                "haproxy rejected the configuration: " + _alerts(result.stderr, tmp, inst.cfg)
            )

    async def _start(self, inst: _Instance) -> None:
        """Start the master (daemonized: it outlives this process) and wait for its worker."""
        await self._files.run(inst.lb_id, self._unlink, inst.pid_file)
        with trio.fail_after(self.options.reload_timeout):
            result = await trio.run_process(
                [
                    self.options.haproxy_bin,
                    "-W",
                    "-D",
                    "-S",
                    f"{inst.master_socket},mode,600",
                    "-p",
                    str(inst.pid_file),
                    "-f",
                    str(inst.cfg),
                ],
                stdin=b"",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                deliver_cancel=_kill_at_once,
            )
        if result.returncode != 0:
            raise BackendError(
                "haproxy did not start: " + _alerts(result.stderr, inst.cfg, inst.cfg)
            )
        pid_text = await self._files.run(inst.lb_id, inst.pid_file.read_text)
        inst.pid = int(pid_text.split()[0])
        with trio.move_on_after(self.options.reload_timeout):
            while True:
                try:
                    procs = await self._show_proc(inst)
                    workers = {pid for pid, _ in procs.workers}
                    if workers and await self._worker_pid(inst) in workers:
                        log.info("haproxy started", lb_id=inst.lb_id, pid=inst.pid)
                        return
                except (*_IO_ERRORS, BackendError):
                    pass
                await trio.sleep(0.005)
        raise BackendError(f"haproxy (pid {inst.pid}) started but no worker answered in time")

    async def _reload(self, inst: _Instance) -> None:
        """A hitless reload of ``haproxy.cfg``; returns once the new worker answers."""
        before = await self._retry(self._show_proc, inst)
        old_workers = {pid for pid, _ in before.workers}
        try:
            await self._ask(inst.master_socket, "reload")
        except _IO_ERRORS:
            pass  # the master re-executes itself and drops the connection
        delay = 0.002
        with trio.move_on_after(self.options.reload_timeout):
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)
                try:
                    procs = await self._show_proc(inst)
                except (*_IO_ERRORS, BackendError):
                    continue
                if procs.reloads <= before.reloads:
                    continue
                if procs.failed > before.failed:
                    raise BackendError(
                        "haproxy refused to reload (the previous configuration still serves)"
                    )
                new = {pid for pid, reloads in procs.workers if reloads == 0} - old_workers
                if new and await self._worker_pid(inst) in new:
                    log.debug("haproxy reloaded", lb_id=inst.lb_id, pid=inst.pid)
                    return
        raise BackendError(f"haproxy (pid {inst.pid}) did not confirm the reload in time")

    async def _offsets_before_reload(self, inst: _Instance) -> dict[str, ListenerStatistics]:
        """The offsets plus what the current worker counted: the totals after the reload."""
        offsets = dict(inst.saved.offsets)
        if inst.rendered is None:
            return offsets
        try:
            rows = parse_show_stat(await self._ask(inst.stats_socket, "show stat"))
        except (*_IO_ERRORS, ValueError):
            return offsets
        for lid, c in listener_counters(rows, inst.rendered).items():
            base = offsets.get(lid) or ListenerStatistics(id=lid)
            offsets[lid] = ListenerStatistics(
                id=lid,
                bytes_in=base.bytes_in + c.bytes_in,
                bytes_out=base.bytes_out + c.bytes_out,
                request_errors=base.request_errors + c.request_errors,
                total_connections=base.total_connections + c.total_connections,
            )
        return offsets

    async def _stop(self, inst: _Instance) -> None:
        """Stop the master and its workers (SIGTERM, SIGKILL after ``stop_timeout``)."""
        pids: set[int] = set()
        if inst.pid is None:
            try:
                pid_text = await self._files.run(inst.lb_id, inst.pid_file.read_text)
                pid = int(pid_text.split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            if pid is not None and _process_alive(pid):
                inst.pid = pid
        if inst.pid is not None:
            try:
                pids = {pid for pid, _ in (await self._show_proc(inst)).workers}
            except (*_IO_ERRORS, BackendError):
                pids = set()
            pids.add(inst.pid)
            self._signal(inst.pid, signal.SIGTERM)
            with trio.move_on_after(self.options.stop_timeout):
                while any(_process_alive(p) for p in pids):  # noqa: ASYNC110 - polling /proc
                    await trio.sleep(0.01)
            for p in pids:
                if _process_alive(p):
                    self._signal(p, signal.SIGKILL)
            log.info("haproxy stopped", lb_id=inst.lb_id, pid=inst.pid)
        inst.pid = None
        inst.running_text = None

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    async def stop_all(self) -> None:
        """Stop every HAProxy of ``state_dir`` (tests, benchmarks, decommissioning)."""
        await self._ensure_loaded()
        for inst in list(self._instances.values()):
            await self._stop(inst)

    async def aclose(self) -> None:
        """Nothing to release: the HAProxy processes keep serving (see the module docstring)."""
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ changes

    def _find_lb_id(self, kind: str, obj: OctaviaObject, old: OctaviaObject | None) -> str | None:
        if kind == "loadbalancer":
            return obj.id
        known = self._owner.get((kind, obj.id or ""))
        if known is not None:
            return known
        parents = parents_of(kind, obj, old)
        if parents.loadbalancer_id:
            return parents.loadbalancer_id
        for parent_kind, parent_id in (
            ("pool", parents.pool_id),
            ("l7policy", parents.l7policy_id),
            *(("listener", lid) for lid in parents.listener_ids),
            ("pool", getattr(obj, "pool_id", None)),
            ("listener", getattr(obj, "listener_id", None)),
            ("l7policy", getattr(obj, "l7policy_id", None)),
        ):
            if parent_id and (parent_kind, parent_id) in self._owner:
                return self._owner[(parent_kind, parent_id)]
        return None

    async def _put(
        self,
        kind: str,
        obj: OctaviaObject,
        old: OctaviaObject | None = None,
        cert: Certificate | None = None,
    ) -> None:
        await self._ensure_loaded()
        if not obj.id:
            raise BackendError(f"haproxy: a {kind} without id")
        lb_id = self._find_lb_id(kind, obj, old)
        if not lb_id:
            raise BackendError(f"haproxy: no load balancer found for {kind} {obj.id}")
        inst = self._instances.get(lb_id)
        if inst is None:
            lb = obj if isinstance(obj, LoadBalancer) else _nested_lb(obj) or _nested_lb(old)
            if lb is None:
                raise BackendError(f"haproxy: {kind} {obj.id} belongs to unknown load balancer {lb_id}")
            inst = self._new_instance(lb_id, lb)
        tree = inst.saved.tree
        certs = dict(inst.saved.certs)
        new_files: list[str] = []
        if isinstance(obj, LoadBalancer):
            tree = msgspec.structs.replace(
                tree, lb=msgspec.structs.replace(obj, listeners=None, pools=None)
            )
        else:
            own = _own_state(kind, obj, old)
            field = _TREE_FIELD[kind]
            objects = dict(getattr(tree, field))
            objects[obj.id] = own
            tree = msgspec.structs.replace(tree, **{field: objects})
            if isinstance(own, Listener):
                tree = self._listener_changed(tree, own, old)
                if own.protocol != "TERMINATED_HTTPS":
                    certs.pop(obj.id, None)
                elif cert is not None:
                    name = await self._write_cert(inst, obj.id, cert)
                    if name not in inst.saved.certs.values():
                        new_files.append(name)
                    certs[obj.id] = name
        await self._apply(inst, tree, certs, new_files)
        if lb_id not in self._instances:
            self._instances[lb_id] = inst
        self._index(inst)

    @staticmethod
    def _listener_changed(
        tree: LoadBalancerTree, listener: Listener, old: OctaviaObject | None
    ) -> LoadBalancerTree:
        """An update that removes the default pool detaches the pools that named the listener."""
        if isinstance(old, Listener) and old.default_pool_id and not listener.default_pool_id:
            pools = {
                pid: msgspec.structs.replace(p, listener_id=None)
                if p.listener_id == listener.id
                else p
                for pid, p in tree.pools.items()
            }
            return msgspec.structs.replace(tree, pools=pools)
        return tree

    async def _write_cert(self, inst: _Instance, listener_id: str, cert: Certificate) -> str:
        if not cert.certificate or not cert.private_key:
            raise BackendError(f"haproxy: the certificate of listener {listener_id} lacks certificate or key")
        key = cert.private_key
        if cert.passphrase and "ENCRYPTED" in key:
            key = await self._decrypt_key(key, cert.passphrase, listener_id)
        intermediates = cert.intermediates or []
        if isinstance(intermediates, str):
            intermediates = [intermediates]
        parts = [cert.certificate, *intermediates, key]
        pem = "".join(p if p.endswith("\n") else p + "\n" for p in parts)
        digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
        name = f"{haproxy_name(listener_id)}-{digest}.pem"
        await self._files.run(inst.lb_id, self._prepare_dir, inst)
        await self._files.run(inst.lb_id, _write_file, inst.dir / "certs" / name, pem, 0o600)
        return name

    async def _decrypt_key(self, key: str, passphrase: str, listener_id: str) -> str:
        result = await trio.run_process(
            ["openssl", "pkey", "-passin", "env:LBACTORS_KEY_PASSPHRASE"],
            stdin=key.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "LBACTORS_KEY_PASSPHRASE": passphrase},
            deliver_cancel=_kill_at_once,
        )
        if result.returncode != 0:
            raise BackendError(f"haproxy: cannot decrypt the key of listener {listener_id}")
        return result.stdout.decode()

    async def _remove(self, kind: str, obj: OctaviaObject) -> None:
        await self._ensure_loaded()
        if not obj.id:
            raise BackendError(f"haproxy: delete of a {kind} without id")
        lb_id = self._find_lb_id(kind, obj, None)
        inst = self._instances.get(lb_id) if lb_id else None
        if inst is None:
            if kind == "loadbalancer" and obj.id:
                await self._remove_orphan_dir(obj.id)
            return  # never seen or already deleted: done
        if kind == "loadbalancer":
            await self._stop(inst)
            await self._files.run(inst.lb_id, shutil.rmtree, inst.dir, True)
            del self._instances[inst.lb_id]
            self._owner = {k: v for k, v in self._owner.items() if v != inst.lb_id}
            return
        tree = inst.saved.tree
        field = _TREE_FIELD[kind]
        if obj.id not in getattr(tree, field):
            return
        tree = self._without(tree, kind, obj.id)
        certs = {lid: f for lid, f in inst.saved.certs.items() if lid in tree.listeners}
        await self._apply(inst, tree, certs)
        self._owner = {
            k: v
            for k, v in self._owner.items()
            if v != inst.lb_id or k[0] == "loadbalancer" or k[1] in getattr(tree, _TREE_FIELD[k[0]])
        }

    async def _remove_orphan_dir(self, lb_id: str) -> None:
        directory = self.directory(lb_id)
        if await self._files.run(lb_id, directory.is_dir):
            orphan = _Instance(lb_id, directory, _Saved(tree=LoadBalancerTree(lb=LoadBalancer(id=lb_id))))
            await self._stop(orphan)
            await self._files.run(lb_id, shutil.rmtree, directory, True)

    @staticmethod
    def _without(tree: LoadBalancerTree, kind: str, object_id: str) -> LoadBalancerTree:
        """``tree`` without the object and what cannot live without it (as Octavia deletes)."""
        changes: dict[str, Any] = {}
        field = _TREE_FIELD[kind]
        changes[field] = {k: v for k, v in getattr(tree, field).items() if k != object_id}
        if kind == "listener":
            gone = {k for k, p in tree.l7policies.items() if p.listener_id == object_id}
            changes["l7policies"] = {k: v for k, v in tree.l7policies.items() if k not in gone}
            changes["l7rules"] = {k: v for k, v in tree.l7rules.items() if v.l7policy_id not in gone}
            changes["pools"] = {
                k: msgspec.structs.replace(p, listener_id=None) if p.listener_id == object_id else p
                for k, p in tree.pools.items()
            }
        elif kind == "l7policy":
            changes["l7rules"] = {k: v for k, v in tree.l7rules.items() if v.l7policy_id != object_id}
        elif kind == "pool":
            changes["members"] = {k: v for k, v in tree.members.items() if v.pool_id != object_id}
            changes["healthmonitors"] = {
                k: v for k, v in tree.healthmonitors.items() if v.pool_id != object_id
            }
            changes["listeners"] = {
                k: msgspec.structs.replace(li, default_pool_id=None)
                if li.default_pool_id == object_id
                else li
                for k, li in tree.listeners.items()
            }
        return msgspec.structs.replace(tree, **changes)

    # ------------------------------------------------------------------ CRUD

    async def loadbalancer_create(self, lb: LoadBalancer) -> None:
        await self._put("loadbalancer", lb)

    async def loadbalancer_update(self, old: LoadBalancer, new: LoadBalancer) -> None:
        await self._put("loadbalancer", new, old)

    async def loadbalancer_delete(self, lb: LoadBalancer) -> None:
        await self._remove("loadbalancer", lb)

    async def listener_create(self, listener: Listener, cert: Certificate | None) -> None:
        await self._put("listener", listener, None, cert)

    async def listener_update(self, old: Listener, new: Listener, cert: Certificate | None) -> None:
        await self._put("listener", new, old, cert)

    async def listener_delete(self, listener: Listener) -> None:
        await self._remove("listener", listener)

    async def pool_create(self, pool: Pool) -> None:
        await self._put("pool", pool)

    async def pool_update(self, old: Pool, new: Pool) -> None:
        await self._put("pool", new, old)

    async def pool_delete(self, pool: Pool) -> None:
        await self._remove("pool", pool)

    async def member_create(self, member: Member) -> None:
        await self._put("member", member)

    async def member_update(self, old: Member, new: Member) -> None:
        await self._put("member", new, old)

    async def member_delete(self, member: Member) -> None:
        await self._remove("member", member)

    async def healthmonitor_create(self, healthmonitor: HealthMonitor) -> None:
        await self._put("healthmonitor", healthmonitor)

    async def healthmonitor_update(self, old: HealthMonitor, new: HealthMonitor) -> None:
        await self._put("healthmonitor", new, old)

    async def healthmonitor_delete(self, healthmonitor: HealthMonitor) -> None:
        await self._remove("healthmonitor", healthmonitor)

    async def l7policy_create(self, l7policy: L7Policy) -> None:
        await self._put("l7policy", l7policy)

    async def l7policy_update(self, old: L7Policy, new: L7Policy) -> None:
        await self._put("l7policy", new, old)

    async def l7policy_delete(self, l7policy: L7Policy) -> None:
        await self._remove("l7policy", l7policy)

    async def l7rule_create(self, l7rule: L7Rule) -> None:
        await self._put("l7rule", l7rule)

    async def l7rule_update(self, old: L7Rule, new: L7Rule) -> None:
        await self._put("l7rule", new, old)

    async def l7rule_delete(self, l7rule: L7Rule) -> None:
        await self._remove("l7rule", l7rule)

    # ------------------------------------------------------------------ read side

    async def _stat_rows(self, inst: _Instance) -> list[dict[str, str]] | None:
        if inst.pid is None or not _process_alive(inst.pid):
            return None
        try:
            return parse_show_stat(await self._ask(inst.stats_socket, "show stat"))
        except (*_IO_ERRORS, ValueError):
            return None

    async def listener_statistics(self, lb_id: str) -> list[ListenerStatistics]:
        await self._ensure_loaded()
        inst = self._instances.get(lb_id)
        if inst is None or inst.rendered is None:
            await trio.lowlevel.checkpoint()
            return []
        rendered = inst.rendered
        rows = await self._stat_rows(inst)
        current = listener_counters(rows, rendered) if rows is not None else {}
        result = []
        for lid in sorted(inst.saved.tree.listeners):
            base = inst.saved.offsets.get(lid) or ListenerStatistics(id=lid)
            now = current.get(lid) or ListenerStatistics(id=lid)
            last = inst.reported.get(lid) or ListenerStatistics(id=lid)
            stats = ListenerStatistics(
                id=lid,
                active_connections=now.active_connections,
                bytes_in=max(last.bytes_in, base.bytes_in + now.bytes_in),
                bytes_out=max(last.bytes_out, base.bytes_out + now.bytes_out),
                request_errors=max(last.request_errors, base.request_errors + now.request_errors),
                total_connections=max(
                    last.total_connections, base.total_connections + now.total_connections
                ),
            )
            inst.reported[lid] = stats
            result.append(stats)
        return result

    async def operating_statuses(self, lb_id: str) -> list[OperatingStatus]:
        await self._ensure_loaded()
        inst = self._instances.get(lb_id)
        if inst is None or inst.rendered is None:
            await trio.lowlevel.checkpoint()
            return []
        tree, rendered = inst.saved.tree, inst.rendered
        rows = await self._stat_rows(inst)
        if rows is None:
            # no process (died, or never started): nothing of this load balancer serves
            down: list[OperatingStatus] = [("loadbalancer", lb_id, "ERROR")]
            down += [("listener", lid, "ERROR") for lid in sorted(tree.listeners)]
            return down
        return operating_statuses(tree, rendered, rows)

    # ------------------------------------------------------------------ flavors and AZs

    async def flavor_metadata(self) -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        return dict(FLAVOR_METADATA)

    async def validate_flavor(self, metadata: dict[str, Any]) -> str | None:
        await trio.lowlevel.checkpoint()
        return validate_flavor(metadata)

    async def availability_zone_metadata(self) -> dict[str, str]:
        """None: every load balancer runs on this host."""
        await trio.lowlevel.checkpoint()
        return {}

    async def validate_availability_zone(self, metadata: dict[str, Any]) -> str | None:
        await trio.lowlevel.checkpoint()
        for key in metadata:
            return f"unsupported availability zone metadata key {key!r}; the haproxy backend supports none"
        return None
