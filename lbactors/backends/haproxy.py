"""The ``haproxy`` backend: one HAProxy (master-worker) per load balancer, configured from its actor.

Every operation changes the load balancer's subtree
(:class:`~lbactors.backends.haproxy_config.LoadBalancerTree`), renders it
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

**Modules.** This one is the façade: :class:`HaproxyBackend`, its options and its state files
(``state.json``, certificates, the directory). The rest lives in
:mod:`~lbactors.backends.haproxy_tree` (how an operation changes the subtree, and the index
of which load balancer owns an object: pure), :mod:`~lbactors.backends.haproxy_config`
(subtree → ``haproxy.cfg``, ``show stat`` → statistics and statuses: pure) and
:mod:`~lbactors.backends.haproxy_process` (validate, start, reload, stop, adopt and ask the
HAProxy processes).

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

import hashlib
import os
import shutil
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
    FlavorSettings,
    LoadBalancerTree,
    Rendered,
    RenderError,
    haproxy_name,
    listener_counters,
    operating_statuses,
    parse_show_stat,
    render_config,
    validate_flavor,
)
from lbactors.backends.haproxy_process import (
    IO_ERRORS,
    HaproxyControl,
    HaproxyProcess,
    kill_at_once,
    process_alive,
)
from lbactors.backends.haproxy_tree import (
    TREE_FIELD,
    find_lb_id,
    nested_lb,
    new_tree,
    owners,
    owners_after_removal,
    with_object,
    without,
)
from lbactors.messages import ListenerStatistics
from lbactors.model import (
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

__all__ = ["HaproxyBackend", "HaproxyOptions"]

log = structlog.get_logger("lbactors.backends.haproxy")

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


class _Instance(HaproxyProcess):
    """The HAProxy instance of one load balancer, as the backend sees it: its process (see
    :class:`~lbactors.backends.haproxy_process.HaproxyProcess`), its saved subtree and what
    it last rendered and reported (touched only by the load balancer's actor, and by reads).

    Not a :class:`~lbactors.model.LoadBalancer`: in this backend ``lb`` always names the model
    object, ``inst`` an instance."""

    def __init__(self, lb_id: str, directory: Path, saved: _Saved) -> None:
        super().__init__(lb_id, directory)
        self.saved = saved
        self.rendered: Rendered | None = None
        #: last totals reported, so that a read racing a reload never goes backwards
        self.reported: dict[str, ListenerStatistics] = {}



# --------------------------------------------------------------------------- helpers

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


async def _bind_test(address: str, port: int, patience: float) -> str | None:
    """:func:`_test_bind`, tried again for up to ``patience`` seconds while the address is in
    use: the listening sockets of a process just killed can outlast its exit by a moment."""
    with trio.move_on_after(patience):
        while (why := _test_bind(address, port)) is not None:  # noqa: ASYNC110 - a bind test
            await trio.sleep(0.01)
        return None
    return why


# --------------------------------------------------------------------------- the backend


class HaproxyBackend(Backend):
    """One HAProxy process per load balancer; see the module docstring."""

    name = "haproxy"
    #: the data plane is this host (its HAProxy processes, files and VIPs): another daemon
    #: cannot take its load balancers over (docs/cluster.md §8)
    failover = False

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
        self._control = HaproxyControl(
            files=self._files,
            haproxy_bin=opts.haproxy_bin,
            reload_timeout=opts.reload_timeout,
            validate_timeout=opts.validate_timeout,
            stop_timeout=opts.stop_timeout,
            socket_timeout=opts.socket_timeout,
        )
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
                except RenderError as exc:
                    log.warning("saved configuration no longer renders", lb_id=lb_id, error=str(exc))
                if await self._control.adopt(inst, pid, text):
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
        self._owner.update(owners(inst.lb_id, inst.saved.tree))

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
        return _Instance(lb_id, directory, _Saved(tree=new_tree(lb)))

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
            except RenderError as exc:
                raise BackendError(f"haproxy: {exc}") from None
            alive = inst.pid is not None and process_alive(inst.pid)
            reaped: list[int] = []
            if not alive:
                inst.pid = None
                reaped = await self._control.reap_leftovers(inst)
            if alive and rendered.text == inst.running_text:
                await self._save(inst, msgspec.structs.replace(inst.saved, tree=tree, certs=certs))
                inst.rendered = rendered
                return
            old_binds = set(inst.rendered.binds) if (alive and inst.rendered) else set()
            for address, port in rendered.binds:
                if (address, port) in old_binds:
                    continue
                why = await _bind_test(address, port, self.options.stop_timeout if reaped else 0)
                if why is not None:
                    raise BackendError(f"haproxy: cannot bind {address}:{port}: {why}")
            await self._files.run(inst.lb_id, self._prepare_dir, inst)
            tmp = inst.dir / "haproxy.cfg.new"
            await self._files.run(inst.lb_id, _write_file, tmp, rendered.text)
            await self._control.validate(inst, tmp)
            old_text = inst.running_text
            await self._files.run(inst.lb_id, os.replace, tmp, inst.cfg)
            offsets = inst.saved.offsets
            try:
                if alive:
                    offsets = await self._offsets_before_reload(inst)
                    await self._control.reload(inst)
                else:
                    await self._control.start(inst)
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

    async def _offsets_before_reload(self, inst: _Instance) -> dict[str, ListenerStatistics]:
        """The offsets plus what the current worker counted: the totals after the reload."""
        offsets = dict(inst.saved.offsets)
        if inst.rendered is None:
            return offsets
        try:
            rows = parse_show_stat(await self._control.ask(inst.stats_socket, "show stat"))
        except (*IO_ERRORS, ValueError):
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

    async def stop_all(self) -> None:
        """Stop every HAProxy of ``state_dir`` (tests, benchmarks, decommissioning)."""
        await self._ensure_loaded()
        for inst in list(self._instances.values()):
            await self._control.stop(inst)

    async def aclose(self) -> None:
        """Nothing to release: the HAProxy processes keep serving (see the module docstring)."""
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ changes

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
        lb_id = find_lb_id(kind, obj, old, self._owner)
        if not lb_id:
            raise BackendError(f"haproxy: no load balancer found for {kind} {obj.id}")
        inst = self._instances.get(lb_id)
        if inst is None:
            lb = obj if isinstance(obj, LoadBalancer) else nested_lb(obj) or nested_lb(old)
            if lb is None:
                raise BackendError(f"haproxy: {kind} {obj.id} belongs to unknown load balancer {lb_id}")
            inst = self._new_instance(lb_id, lb)
        certs = dict(inst.saved.certs)
        new_files: list[str] = []
        tree = with_object(inst.saved.tree, kind, obj, old)
        if isinstance(obj, Listener):
            if obj.protocol != "TERMINATED_HTTPS":
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
            deliver_cancel=kill_at_once,
        )
        if result.returncode != 0:
            raise BackendError(f"haproxy: cannot decrypt the key of listener {listener_id}")
        return result.stdout.decode()

    async def _remove(self, kind: str, obj: OctaviaObject) -> None:
        await self._ensure_loaded()
        if not obj.id:
            raise BackendError(f"haproxy: delete of a {kind} without id")
        lb_id = find_lb_id(kind, obj, None, self._owner)
        inst = self._instances.get(lb_id) if lb_id else None
        if inst is None:
            if kind == "loadbalancer" and obj.id:
                await self._remove_orphan_dir(obj.id)
            return  # never seen or already deleted: done
        if kind == "loadbalancer":
            await self._control.stop(inst)
            await self._files.run(inst.lb_id, shutil.rmtree, inst.dir, True)
            del self._instances[inst.lb_id]
            self._owner = owners_after_removal(self._owner, inst.lb_id, None)
            return
        tree = inst.saved.tree
        if obj.id not in getattr(tree, TREE_FIELD[kind]):
            return
        tree = without(tree, kind, obj.id)
        certs = {lid: f for lid, f in inst.saved.certs.items() if lid in tree.listeners}
        await self._apply(inst, tree, certs)
        self._owner = owners_after_removal(self._owner, inst.lb_id, tree)

    async def _remove_orphan_dir(self, lb_id: str) -> None:
        directory = self.directory(lb_id)
        if await self._files.run(lb_id, directory.is_dir):
            orphan = _Instance(lb_id, directory, _Saved(tree=new_tree(LoadBalancer(id=lb_id))))
            await self._control.stop(orphan)
            await self._files.run(lb_id, shutil.rmtree, directory, True)

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
        if inst.pid is None or not process_alive(inst.pid):
            return None
        try:
            return parse_show_stat(await self._control.ask(inst.stats_socket, "show stat"))
        except (*IO_ERRORS, ValueError):
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
