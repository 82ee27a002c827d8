"""A private RabbitMQ cluster on 127.0.0.1 for tests: ``with rabbit_cluster(3) as cluster:``.

Every node is a RabbitMQ of the machine's own install (3.10 here) run straight from
``/usr/lib/rabbitmq/bin`` as the user running the tests, with a name, ports, data, logs,
config, plugins file and Erlang cookie of its own under one temporary directory:

- name ``lbt<id>-<i>@localhost`` (``i`` from 0, the index into ``amqp_urls``);
- AMQP on a free port of 127.0.0.1, Erlang distribution on another (``RABBITMQ_DIST_PORT``),
  distribution and epmd bound to 127.0.0.1 like the machine's node
  (``/etc/rabbitmq/rabbitmq-env.conf``, which these nodes do not read:
  ``RABBITMQ_CONF_ENV_FILE`` points at an empty file); no management plugin;
- ``RABBITMQ_MNESIA_BASE`` / ``RABBITMQ_LOG_BASE`` / ``RABBITMQ_CONFIG_FILE`` /
  ``RABBITMQ_ENABLED_PLUGINS_FILE`` (``[rabbitmq_consistent_hash_exchange].``) in the
  temporary directory; the machine's ``/etc/rabbitmq`` files are never read or written;
- one cookie for all nodes in ``$HOME/.erlang.cookie`` with ``HOME`` = the temporary
  directory, for the nodes and for the ``rabbitmqctl`` that talks to them: the machine's
  node (rabbit@localhost, cookie in /var/lib/rabbitmq) is not reachable with it.

The Debian wrappers in /usr/sbin are not used: as root they ``su rabbitmq``, which resets
``HOME`` (hence the cookie) and would need the directories owned by ``rabbitmq``.

Start: every node boots at once (each in its own process group, in the foreground, its
stdout and stderr to ``<dir>/console.log``), then nodes 1..N-1 join node 0 (``stop_app``,
``join_cluster``, ``start_app``, one node after the other: two at once once left a node's Mnesia
stopped in CI; a failed ``start_app`` is retried from ``reset``), then ``cluster_status`` on
node 0 must list every node as running. Stop: every process group started here is killed
(SIGKILL: the data is thrown away), an epmd too if this module had to start one (the
machine's epmd on 127.0.0.1:4369 is reused when it answers), and the directory is removed.
Every wait is bounded and fails with ``ClusterError`` naming the node and the tail of its
logs. If the test process dies without running its ``finally`` (SIGKILL, a CI timeout), its
end of a pipe closes, and the ``Reaper`` process it started, which reads the pipe, kills the
same process groups and removes the directory: no node outlives the tests.

Start time of 3 nodes (``RabbitCluster.startup_seconds``), measured here on 2 shared cores
(Debian 12, RabbitMQ 3.10.8, Erlang 25.2.3) from ``rabbit_cluster(3)`` to the yield: 10.9 to
11.8 s with a load average near 2 (boot 8.2-8.3 s, join 2.3-3.0 s, cluster_status 0.4 s);
11.0 to 15.5 s with a load average of 6 to 7 while another CI run shared the cores (boot
6.5-10.7 s, join 3.5-4.8 s, status 0.5-1.1 s). One node alone boots in 3.3 s: the three boots
at once are CPU-bound. The stop at exit takes 0.1-0.4 s. A module that shares one cluster
between its tests (a module-scoped fixture) adds this once to CI's run, well inside its budget.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
PLUGINS = ("rabbitmq_consistent_hash_exchange",)
#: the machine's epmd (and ours if none answers there); ERL_EPMD_PORT as Erlang reads it
EPMD_PORT = int(os.environ.get("ERL_EPMD_PORT", "4369"))
#: a node's boot, from its process start to AMQP answering
BOOT_TIMEOUT = 90.0
#: one rabbitmqctl command
CTL_TIMEOUT = 90.0
#: tries of one node joining the cluster (RabbitCluster.join)
JOIN_ATTEMPTS = 3
#: a stopped node's process to be gone
EXIT_TIMEOUT = 30.0
LOG_TAIL_LINES = 30

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster, or one node of it, did not do what was asked in time."""


_ports_given: set[int] = set()


def _free_port() -> int:
    """A port of 127.0.0.1 free now and not given to another node of this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _executable(name: str) -> str:
    candidate = RABBITMQ_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ClusterError(f"{name} not found (in {RABBITMQ_BIN} or on PATH)")
    return found


_REAPER = """
import os, shutil, signal, sys
groups = set()
for line in sys.stdin:
    sign, _, pgid = line.partition(" ")
    (groups.add if sign == "+" else groups.discard)(int(pgid))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class Reaper:
    """A small process that kills the process groups it was told of, and removes the directory,
    once its stdin closes: at exit (nothing left to do then), or when the test process dies
    without running its ``finally`` (SIGKILL, a CI timeout) so that no node outlives it."""

    def __init__(self, base: Path) -> None:
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(base)],
            stdin=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C to the tests' process group leaves it be
        )

    def _say(self, line: str) -> None:
        assert self._process.stdin is not None
        with self._lock:
            self._process.stdin.write(line.encode())
            self._process.stdin.flush()

    def watch(self, pgid: int) -> None:
        self._say(f"+ {pgid}\n")

    def forget(self, pgid: int) -> None:
        self._say(f"- {pgid}\n")

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class RabbitNode:
    """One node of the cluster: its name, ports, directory and (while it runs) process."""

    def __init__(
        self, base: Path, cluster_id: str, index: int, env: dict[str, str], reaper: Reaper
    ) -> None:
        self.index = index
        self._reaper = reaper
        self.name = f"lbt{cluster_id}-{index}@localhost"
        self.amqp_port = _free_port()
        self.dist_port = _free_port()
        self.dir = base / f"node{index}"
        self.log_file = self.dir / "log" / f"{self.name}.log"
        self.console_log = self.dir / "console.log"
        self.pid_file = self.dir / "beam.pid"
        self.process: subprocess.Popen[bytes] | None = None
        (self.dir / "log").mkdir(parents=True)
        config = self.dir / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            # the default, said out loud: guest may log in from 127.0.0.1 only
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        self.env = {
            **env,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def __repr__(self) -> str:
        return f"<RabbitNode {self.name} amqp={self.amqp_port} dist={self.dist_port}>"

    def logs(self) -> str:
        """The tail of the node's log file and of its console output."""
        return (
            f"--- {self.log_file} (tail) ---\n{_tail(self.log_file)}\n"
            f"--- {self.console_log} (tail) ---\n{_tail(self.console_log)}"
        )

    def fail(self, what: str) -> ClusterError:
        return ClusterError(f"{self.name}: {what}\n{self.logs()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        """Start the node's Erlang VM (in the foreground, in a process group of its own)."""
        if self.running:
            raise ClusterError(f"{self.name} is already running")
        self.pid_file.unlink(missing_ok=True)
        with self.console_log.open("ab") as console:
            self.process = subprocess.Popen(
                [_executable("rabbitmq-server")],
                env=self.env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._reaper.watch(self.process.pid)

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until the node takes AMQP connections (the listener opens last in the boot)."""
        deadline = time.monotonic() + timeout
        while not _answers(self.amqp_port):
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise self.fail(f"rabbitmq-server exited while booting (status {code})")
            if time.monotonic() > deadline:
                raise self.fail(f"AMQP port {self.amqp_port} not answering after {timeout:g} s")
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = EXIT_TIMEOUT) -> None:
        """Signal the node's process group (the shell, beam.smp and its helpers) and wait for
        the process this module started to end; SIGKILL after ``timeout``."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            # the group id is the pid of the process started here (start_new_session), so
            # this reaches only what this module started
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                if sig == signal.SIGKILL:
                    raise self.fail(f"still running {timeout:g} s after SIGKILL") from None
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        # beam.smp is a child of the shell, in the same group: gone with it, but make sure
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reaper.forget(process.pid)
        self.process = None


class RabbitCluster:
    """The nodes of a running cluster. Node ``i`` answers AMQP at ``amqp_urls[i]``.

    ``stop_app(i)`` / ``start_app(i)``: RabbitMQ stops and starts inside a running Erlang VM
    (``rabbitmqctl stop_app`` / ``start_app``; the node stays a distribution peer).
    ``stop_node(i)`` / ``start_node(i)``: the node's VM stops (SIGTERM: RabbitMQ's own orderly
    shutdown; ``kill_node(i)``: SIGKILL, a crash) and boots again from its data, rejoining the
    cluster. All are blocking: from trio, ``await trio.to_thread.run_sync(cluster.stop_node, 2)``.
    """

    def __init__(self, base: Path, nodes: list[RabbitNode], env: dict[str, str]) -> None:
        self.base = base
        self.nodes = nodes
        self._env = env
        #: how long the start took, by phase: boot (all nodes at once), join, status, total
        self.startup_seconds: dict[str, float] = {}

    @property
    def amqp_urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def rabbitmqctl(self, index: int, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """Run ``rabbitmqctl -n <node i> args...``; its stdout, or ``ClusterError``."""
        node = self.nodes[index]
        command = [_executable("rabbitmqctl"), "-n", node.name, "--quiet", *args]
        try:
            done = subprocess.run(
                command,
                env=self._env,
                cwd=self.base,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise node.fail(
                f"rabbitmqctl {' '.join(args)}: no answer within {timeout:g} s"
            ) from None
        if done.returncode != 0:
            raise node.fail(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}):"
                f" {done.stdout.strip()} {done.stderr.strip()}"
            )
        return done.stdout

    def running_nodes(self, index: int = 0) -> list[str]:
        """The running nodes of the cluster as node ``index`` sees them."""
        status = json.loads(self.rabbitmqctl(index, "cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def queue_leader(self, queue: str, *, index: int = 0) -> str | None:
        """The node that leads quorum queue ``queue`` (in vhost ``/``), as node ``index`` says."""
        rows = json.loads(
            self.rabbitmqctl(index, "list_queues", "name", "leader", "--formatter", "json")
        )
        return next((row.get("leader") for row in rows if row["name"] == queue), None)

    def wait_running(
        self, expected: list[str] | None = None, *, index: int = 0, timeout: float = BOOT_TIMEOUT
    ) -> None:
        """Wait until node ``index`` sees exactly ``expected`` (default: every node) running."""
        want = sorted(self.node_names if expected is None else expected)
        deadline = time.monotonic() + timeout
        while True:
            seen = self.running_nodes(index)
            if seen == want:
                return
            if time.monotonic() > deadline:
                raise self.nodes[index].fail(
                    f"cluster_status after {timeout:g} s: running {seen}, expected {want}"
                )
            time.sleep(0.5)

    def join(self, index: int, to: int = 0, *, attempts: int = JOIN_ATTEMPTS) -> None:
        """Node ``index`` joins node ``to``'s cluster. A ``start_app`` that fails after the
        join (its Mnesia stopped while it synced with the cluster: CI saw it once with two
        nodes joining at once) is retried from a reset node."""
        for attempt in range(1, attempts + 1):
            self.rabbitmqctl(index, "stop_app")
            if attempt > 1:
                self.rabbitmqctl(index, "reset")
            self.rabbitmqctl(index, "join_cluster", self.nodes[to].name)
            try:
                self.rabbitmqctl(index, "start_app")
                return
            except ClusterError:
                if attempt == attempts:
                    raise

    def stop_app(self, index: int) -> None:
        self.rabbitmqctl(index, "stop_app")

    def start_app(self, index: int) -> None:
        self.rabbitmqctl(index, "start_app")
        self.nodes[index].wait_booted()

    def stop_node(self, index: int) -> None:
        """Stop node ``index``'s VM the orderly way (SIGTERM) and wait until it is gone."""
        self.nodes[index].kill(signal.SIGTERM)

    def kill_node(self, index: int) -> None:
        """Kill node ``index``'s VM (SIGKILL): a crash, nothing said to the peers."""
        self.nodes[index].kill(signal.SIGKILL)

    def start_node(self, index: int) -> None:
        """Boot node ``index`` again from its data; return once the others see it running."""
        node = self.nodes[index]
        node.spawn()
        node.wait_booted()
        self.wait_running(index=0 if index != 0 else 1)

    def close(self) -> None:
        for node in self.nodes:
            node.kill(signal.SIGKILL)


def _in_parallel(function: Callable[[T], object], items: list[T]) -> None:
    """Run ``function`` on every item at once; raise the first error (after all finished)."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(function, item) for item in items]
    for future in futures:
        future.result()


@contextmanager
def _epmd_on_loopback(base: Path, reaper: Reaper) -> Iterator[None]:
    """Reuse the epmd answering on 127.0.0.1:4369; start one (and stop it after) if none does."""
    if _answers(EPMD_PORT):
        yield
        return
    epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    with (base / "epmd.log").open("ab") as log:
        process = subprocess.Popen(
            [epmd, "-address", "127.0.0.1", "-port", str(EPMD_PORT)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    reaper.watch(process.pid)
    try:
        deadline = time.monotonic() + 10
        while not _answers(EPMD_PORT):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(
                    f"epmd (pid {process.pid}) not answering on 127.0.0.1:{EPMD_PORT}"
                )
            time.sleep(0.05)
        yield
    finally:
        # by its pid: only the epmd started here (nodes that registered with it are gone)
        process.kill()
        process.wait()
        reaper.forget(process.pid)


@contextmanager
def rabbit_cluster(nodes: int = 3) -> Iterator[RabbitCluster]:
    """Start ``nodes`` private RabbitMQ nodes on 127.0.0.1 clustered with node 0; yield the
    ``RabbitCluster``; stop them all and remove their directory on exit."""
    base = Path(tempfile.mkdtemp(prefix="lbt-rabbit-cluster-"))
    try:
        cookie = base / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text(f"[{','.join(PLUGINS)}].\n")
        env = {
            **os.environ,
            "HOME": str(base),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        }
        for name in list(env):
            # the caller's own settings for its node are not for these
            if name.startswith("RABBITMQ_") and name not in (
                "RABBITMQ_CONF_ENV_FILE",
                "RABBITMQ_ENABLED_PLUGINS_FILE",
            ):
                del env[name]
        cluster_id = secrets.token_hex(4)
        reaper = Reaper(base)
        try:
            members = [RabbitNode(base, cluster_id, index, env, reaper) for index in range(nodes)]
            cluster = RabbitCluster(base, members, env)
            with _epmd_on_loopback(base, reaper):
                try:
                    started = time.monotonic()
                    for node in members:
                        node.spawn()
                    _in_parallel(RabbitNode.wait_booted, members)
                    booted = time.monotonic()
                    for index in range(1, nodes):  # one at a time: see RabbitCluster.join
                        cluster.join(index)
                    joined = time.monotonic()
                    cluster.wait_running()
                    cluster.startup_seconds = {
                        "boot": booted - started,
                        "join": joined - booted,
                        "status": time.monotonic() - joined,
                        "total": time.monotonic() - started,
                    }
                    yield cluster
                finally:
                    cluster.close()
        finally:
            reaper.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
