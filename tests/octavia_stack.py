"""The real Octavia 19 in a test: a private MariaDB, the API under gunicorn, the driver agent.

``octavia_stack(...)`` is a context manager that starts, in a temporary directory of its own:

1. **MariaDB** (``mariadbd`` from Debian's ``mariadb-server``): a data directory made by
   ``mariadb-install-db``, a unix socket in the temp dir, ``--skip-networking`` (no TCP at all),
   ``--user=root`` (the tests run as root); then ``CREATE DATABASE octavia``. SQLite is not an
   option: it gave "database is locked" under concurrent API calls and statistics writes.
2. **octavia.conf** (``OctaviaStack.conf_text`` has the exact file; ``render_octavia_conf``
   writes it): ``auth_strategy = noauth``, the provider drivers and agents given as parameters,
   noop network / compute / amphora drivers and the noop certificate manager, the database on
   the unix socket, the driver agent's three sockets in the temp dir, ``transport_url`` on a
   RabbitMQ vhost of this stack's own (created with ``rabbitmqctl``, deleted at the end) and a
   unique ``[oslo_messaging] topic``, so two stacks never see each other's messages.
3. ``octavia-db-manage --config-file octavia.conf upgrade head``: the real schema.
4. **The API** under gunicorn (sync workers, ``api_workers`` processes) on 127.0.0.1 and a free
   port, through ``tests/octavia_env/octavia_api_wsgi.py`` (Octavia's own ``octavia.wsgi.api``
   parses ``sys.argv``, which under gunicorn holds gunicorn's arguments).
5. **octavia-driver-agent**: the status / statistics / get listeners behind octavia-lib's
   ``DriverLibrary``, and the enabled provider agents as its child processes.

Every process runs from ``.octavia-venv/bin/`` (built by ``scripts/octavia-venv``; Octavia is
never installed in the project's ``.venv``), in a session of its own, logs to a file in the
temp dir, and is stopped by its pid in ``finally`` (SIGTERM, a bounded wait, then SIGKILL to its
process group so no gunicorn worker or agent child outlives it). Every wait is bounded. The temp
dir is removed on success and kept (its path printed with the tails of the logs) on failure.

lbactors plugs in by name, once its entry points are in ``pyproject.toml`` (the stamp of
``scripts/octavia-venv`` covers ``pyproject.toml``, so the editable install is redone)::

    async with open_octavia_stack(
        provider_drivers={"lbactors": "lbactors"},
        provider_agents=["lbactors"],
        extra_conf={...},  # whatever section the driver reads from octavia.conf
    ) as stack:
        ...  # lbactors serve with LBACTORS_AMQP_URL=stack.amqp_url

What Octavia 19 needs and does not need here (found by running it):

- noauth: no keystone, no ``[service_auth]``, no ``[keystone_authtoken]``. The request context
  is admin and takes the project from the ``X-Project-Id`` header (oslo.context's
  ``from_environ``); without a header the body's ``project_id`` is required ("Missing project
  ID in request"). ``OctaviaClient`` sends the header.
- No controller worker, health manager or housekeeping: those serve the ``amphora`` provider.
  Provider drivers run inside the API process; their agents inside the driver agent.
- Octavia's ``noop_driver`` provider accepts every call and **never reports a status**: its
  objects stay ``PENDING_*`` until someone writes a status through the driver agent's status
  socket, which is what a real provider agent (lbactors' one) does. ``OctaviaStack.push_status``
  plays that agent, speaking DriverLibrary's socket protocol in process;
  ``OctaviaStack.driver_lib`` calls the real octavia-lib ``DriverLibrary`` from
  ``.octavia-venv``'s python (a process per call: too slow for bursts). ``noop_agent`` (the
  built-in provider agent) only sleeps.
- VIP: any UUID as ``vip_subnet_id`` does. A provider's ``create_vip_port`` answers with the
  VIP (noop_driver makes one up: 198.0.2.5); a provider that raises ``NotImplementedError`` gets
  the port from the network driver, and ``network_noop_driver`` makes up any subnet and port.
- Statistics: Octavia has no interval for provider statistics; the provider pushes them (for
  lbactors, ``[statistics] interval``, 10 s by default). Keep it realistic: with statistics
  every second Octavia's own statistics writer hit MariaDB deadlocks (error 1213).
- The driver agent's status / statistics / get listeners are forking ``socketserver`` servers
  with the default listen backlog (5), and DriverLibrary connects with a timeout set: under a
  burst of concurrent calls (measured: 50 load balancers built at once, 2 API workers) a
  connect fails at once with ``UpdateStatusError: [Errno 11] Resource temporarily
  unavailable`` (5 of 50 pushes without a retry). A provider agent must retry that error;
  ``push_status`` and ``driver_lib`` do (bounded) and count the retries in ``busy_retries``.
- A status write by the driver agent forks a process and takes DB locks; DriverLibrary waits
  up to 30 s for the answer (its ``DRIVER_AGENT_TIMEOUT``), then the listener logs BrokenPipe.
- ``[driver_agent] provider_agent_shutdown_timeout`` defaults to 60 s; 5 here, so a stop is quick.
- gunicorn 27 opens a control socket at ``~/.gunicorn/gunicorn.ctl`` by default, shared by
  every gunicorn of the user: ``--no-control-socket``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
OCTAVIA_VENV = REPO / ".octavia-venv"
OCTAVIA_BIN = OCTAVIA_VENV / "bin"
OCTAVIA_VENV_STAMP = OCTAVIA_VENV / ".installed"
WSGI_DIR = Path(__file__).resolve().parent / "octavia_env"
BROKER = ("127.0.0.1", 5672)

NOOP_PROVIDER = {"noop_driver": "The No-Op driver."}

# Octavia's REST collections by object kind; members and L7 rules live under their parent.
COLLECTIONS = {
    "loadbalancer": "loadbalancers",
    "listener": "listeners",
    "pool": "pools",
    "healthmonitor": "healthmonitors",
    "l7policy": "l7policies",
    "member": "pools/{parent}/members",
    "l7rule": "l7policies/{parent}/rules",
}

# The JSON key of one object in requests and answers, where it is not the kind's name.
BODY_KEYS = {"l7rule": "rule"}

# octavia-lib's DriverLibrary, run with .octavia-venv's python: method name and sockets in argv,
# arguments on stdin. The driver agent's listeners are socketserver servers with the default
# listen backlog of 5, and DriverLibrary's socket has a timeout (so it is non-blocking inside):
# a connect while 5 others wait fails at once with EAGAIN ("[Errno 11] Resource temporarily
# unavailable"). A provider agent must retry that; this one does, for up to argv[5] seconds.
_DRIVER_LIB_SCRIPT = """
import json, sys, time
from octavia_lib.api.drivers import driver_lib
method, status, stats, get, busy_for = sys.argv[1:6]
lib = driver_lib.DriverLibrary(status_socket=status, stats_socket=stats, get_socket=get)
args = json.load(sys.stdin)
deadline = time.monotonic() + float(busy_for)
busy = 0
while True:
    try:
        result = getattr(lib, method)(*args)
        break
    except Exception as error:
        if "Errno 11" not in f"{error} {error.__cause__}" or time.monotonic() > deadline:
            raise
        busy += 1
        time.sleep(min(0.5, 0.02 * busy))
if hasattr(result, "to_dict"):  # the get_* methods answer octavia-lib data models
    result = result.to_dict(recurse=True)
json.dump({"result": result, "busy_retries": busy}, sys.stdout, default=str)
"""


def driver_agent_call(path: Path, payload: Any, timeout: float = 30) -> Any:
    """One request to a driver agent socket, in octavia-lib's ``DriverLibrary._send`` protocol
    (``b"<length>\\n"`` + JSON each way), without its process: cheap enough for hundreds of
    concurrent calls from threads. EAGAIN on connect (backlog full, see above) is retried until
    ``timeout``; returns the decoded answer and how many connects were retried."""
    data = json.dumps(payload).encode()
    deadline = time.monotonic() + timeout
    busy = 0
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise OctaviaStackError(f"{path}: backlog full for {timeout} s") from None
            busy += 1
            time.sleep(min(0.5, 0.02 * busy))
            continue
        with sock:
            sock.sendall(b"%d\n" % len(data) + data)
            stream = sock.makefile("rb")
            size = int(stream.readline())
            return json.loads(stream.read(size)), busy


class OctaviaStackError(RuntimeError):
    """The stack could not start, or a bounded wait ran out."""


class OctaviaAPIError(RuntimeError):
    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


def octavia_venv_ready() -> bool:
    """``scripts/octavia-venv`` finished (it writes the stamp last)."""
    return OCTAVIA_VENV_STAMP.exists()


def mariadb_binaries() -> tuple[str, str, str]:
    """``mariadbd``, ``mariadb-install-db`` and the ``mariadb`` client (sbin may not be on PATH)."""
    found = []
    for name in ("mariadbd", "mariadb-install-db", "mariadb"):
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
        if path is None:
            raise OctaviaStackError(f"{name} not found (Debian: apt-get install mariadb-server)")
        found.append(path)
    return found[0], found[1], found[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no file)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_until(what: str, ready: Any, timeout: float, alive: Any = None) -> None:
    """Poll ``ready()`` every 0.1 s for at most ``timeout`` s; fail early once ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while not ready():
        if alive is not None and not alive():
            raise OctaviaStackError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise OctaviaStackError(f"{what}: not ready after {timeout} s")
        time.sleep(0.1)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "--quiet", *args], check=True, capture_output=True, text=True, timeout=60
    )


def render_octavia_conf(
    *,
    tmp: Path,
    transport_url: str,
    topic: str,
    provider_drivers: Mapping[str, str],
    default_provider: str,
    provider_agents: Sequence[str],
    extra_conf: Mapping[str, Mapping[str, str]] = {},
) -> str:
    """The whole octavia.conf of a stack; ``extra_conf`` adds sections or overrides options."""
    for name, description in provider_drivers.items():
        if any(char in f"{name}{description}" for char in ",:"):
            # oslo.config's Dict option splits on them: the API would not even start
            raise ValueError(f"provider {name!r}: no ',' or ':' in a name or description")
    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {"transport_url": transport_url, "debug": "false"},
        "api_settings": {
            "auth_strategy": "noauth",
            "bind_host": "127.0.0.1",
            "enabled_provider_drivers": ", ".join(
                f"{name}:{description}" for name, description in provider_drivers.items()
            ),
            "default_provider_driver": default_provider,
        },
        "database": {
            "connection": f"mysql+pymysql://root@localhost/octavia?unix_socket={tmp}/mysql.sock",
        },
        "controller_worker": {
            "network_driver": "network_noop_driver",
            "compute_driver": "compute_noop_driver",
            "amphora_driver": "amphora_noop_driver",
        },
        "certificates": {"cert_manager": "noop_cert_manager"},
        "driver_agent": {
            "status_socket_path": f"{tmp}/status.sock",
            "stats_socket_path": f"{tmp}/stats.sock",
            "get_socket_path": f"{tmp}/get.sock",
            "enabled_provider_agents": ", ".join(provider_agents),
            "provider_agent_shutdown_timeout": "5",
        },
        "oslo_messaging": {"topic": topic},
    }
    for section, options in extra_conf.items():
        sections.setdefault(section, {}).update(options)
    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in options.items()) + "\n"
        for section, options in sections.items()
    )


class OctaviaClient:
    """A tiny client of Octavia's v2 REST API (noauth: the project goes in ``X-Project-Id``)."""

    def __init__(self, base_url: str, project_id: str, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.project_id = project_id
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer (None when empty); OctaviaAPIError on a status >= 400."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("X-Project-Id", self.project_id)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise OctaviaAPIError(
                method, url, error.code, error.read().decode(errors="replace")
            ) from None
        return json.loads(raw) if raw.strip() else None

    @staticmethod
    def collection(kind: str, parent: str | None = None) -> str:
        path = COLLECTIONS[kind]
        if "{parent}" in path:
            if parent is None:
                raise ValueError(f"a {kind} needs its parent's id")
            path = path.format(parent=parent)
        return f"v2/lbaas/{path}"

    def create(
        self, kind: str, fields: Mapping[str, Any], *, parent: str | None = None
    ) -> dict[str, Any]:
        key = BODY_KEYS.get(kind, kind)
        answer = self.request("POST", self.collection(kind, parent), {key: dict(fields)})
        return dict(answer[key])

    def get(self, kind: str, object_id: str, *, parent: str | None = None) -> dict[str, Any] | None:
        """The object, or None when Octavia answers 404."""
        try:
            answer = self.request("GET", f"{self.collection(kind, parent)}/{object_id}")
        except OctaviaAPIError as error:
            if error.status == 404:
                return None
            raise
        return dict(answer[BODY_KEYS.get(kind, kind)])

    def update(
        self, kind: str, object_id: str, fields: Mapping[str, Any], *, parent: str | None = None
    ) -> dict[str, Any]:
        key = BODY_KEYS.get(kind, kind)
        answer = self.request(
            "PUT", f"{self.collection(kind, parent)}/{object_id}", {key: dict(fields)}
        )
        return dict(answer[key])

    def delete(
        self, kind: str, object_id: str, *, parent: str | None = None, cascade: bool = False
    ) -> None:
        query = "?cascade=true" if cascade else ""
        self.request("DELETE", f"{self.collection(kind, parent)}/{object_id}{query}")

    def wait_for_status(
        self,
        kind: str,
        object_id: str,
        provisioning_status: str,
        timeout: float,
        *,
        parent: str | None = None,
    ) -> dict[str, Any] | None:
        """Poll until the object's provisioning_status is the one given (``DELETED`` also
        accepts a 404: Octavia purges deleted rows of some kinds); TimeoutError with the last
        status seen after ``timeout`` s. ERROR ends the wait early unless it was the one asked."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            last = self.get(kind, object_id, parent=parent)
            if last is None:
                if provisioning_status == "DELETED":
                    return None
                raise OctaviaAPIError("GET", f"{kind} {object_id}", 404, "gone while waiting")
            status = last["provisioning_status"]
            if status == provisioning_status:
                return last
            if status == "ERROR":
                raise OctaviaStackError(f"{kind} {object_id} went to ERROR: {last}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{kind} {object_id}: still {status} after {timeout} s, not {provisioning_status}"
                )
            time.sleep(0.2)

    def provisioning_statuses(self, kind: str) -> dict[str, str]:
        """Every object of a top-level kind (not members or L7 rules) by id, in one request."""
        answer = self.request(
            "GET", f"{self.collection(kind)}?fields=id&fields=provisioning_status"
        )
        return {item["id"]: item["provisioning_status"] for item in answer[COLLECTIONS[kind]]}

    def wait_for_statuses(
        self, kind: str, ids: Sequence[str], provisioning_status: str, timeout: float
    ) -> None:
        """Poll the collection (one request a round, not one per object) until every object of
        ``ids`` has that provisioning_status (``DELETED``: or is gone); TimeoutError naming the
        others."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.provisioning_statuses(kind)
            if provisioning_status == "DELETED":
                behind = {key: seen[key] for key in ids if seen.get(key, "DELETED") != "DELETED"}
            else:
                behind = {
                    key: seen.get(key, "gone")
                    for key in ids
                    if seen.get(key) != provisioning_status
                }
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(behind)} {kind}s not {provisioning_status} after {timeout} s: {behind}"
                )
            time.sleep(0.5)

    def wait_gone(
        self, kind: str, object_id: str, timeout: float, *, parent: str | None = None
    ) -> None:
        """Wait until Octavia answers 404 or shows the object DELETED."""
        self.wait_for_status(kind, object_id, "DELETED", timeout, parent=parent)


@dataclass
class OctaviaStack:
    """What a running stack offers a test (from ``octavia_stack(...)``)."""

    tmp: Path
    conf_path: Path
    conf_text: str
    api_url: str
    transport_url: str
    topic: str
    project_id: str
    client: OctaviaClient
    pids: dict[str, int] = field(default_factory=dict)
    # DriverLibrary calls that found the driver agent's listen backlog full and were retried
    busy_retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def amqp_url(self) -> str:
        """``transport_url`` as ``lbactors serve`` spells it (``LBACTORS_AMQP_URL``): the same
        broker and vhost, so the daemon meets this Octavia's provider driver and agent."""
        return "amqp://" + self.transport_url.split("://", 1)[1]

    @property
    def status_socket(self) -> Path:
        return self.tmp / "status.sock"

    @property
    def stats_socket(self) -> Path:
        return self.tmp / "stats.sock"

    @property
    def get_socket(self) -> Path:
        return self.tmp / "get.sock"

    @property
    def logs(self) -> dict[str, Path]:
        return {path.stem: path for path in sorted(self.tmp.glob("*.log"))}

    def mariadb_command(self, *options: str) -> list[str]:
        """The mariadb client on this stack's database (root, batch output, no column names)."""
        return [
            mariadb_binaries()[2], "--no-defaults", f"--socket={self.tmp / 'mysql.sock'}",
            "--user=root", "--batch", "--skip-column-names", *options, "octavia",
        ]  # fmt: skip

    def sql(self, query: str) -> list[list[str]]:
        """The rows of ``query`` on this stack's database, each a list of its columns."""
        result = subprocess.run(
            self.mariadb_command("-e", query), check=True, capture_output=True, text=True, timeout=30
        )
        return [line.split("\t") for line in result.stdout.splitlines()]

    def agent_counters(self) -> dict[str, int]:
        """lbactors' provider agent's last logged counters, cumulative since the driver agent
        started (empty before its first line)."""
        text = self.logs["octavia-driver-agent"].read_text(errors="replace")
        lines = re.findall(r"lbactors provider agent counters: (.*)", text)
        if not lines:
            return {}
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", lines[-1])}

    def driver_lib(self, method: str, *args: Any, timeout: float = 30) -> Any:
        """Call octavia-lib's ``DriverLibrary.<method>(*args)`` against this stack's driver
        agent, from ``.octavia-venv``'s python, as a provider agent would."""
        result = subprocess.run(
            [
                str(OCTAVIA_BIN / "python"),
                "-c",
                _DRIVER_LIB_SCRIPT,
                method,
                str(self.status_socket),
                str(self.stats_socket),
                str(self.get_socket),
                str(timeout / 2),
            ],
            input=json.dumps(list(args)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise OctaviaStackError(f"DriverLibrary.{method} failed:\n{result.stderr[-3000:]}")
        answer = json.loads(result.stdout)
        with self._lock:
            self.busy_retries += answer["busy_retries"]
        return answer["result"]

    def _agent_call(self, path: Path, payload: Mapping[str, Any], timeout: float) -> None:
        answer, busy = driver_agent_call(path, dict(payload), timeout)
        with self._lock:
            self.busy_retries += busy
        if answer.get("status_code") != 200:
            raise OctaviaStackError(f"driver agent refused {dict(payload)}: {answer}")

    def push_status(self, status: Mapping[str, Any], timeout: float = 30) -> None:
        """What ``DriverLibrary.update_loadbalancer_status(status)`` does, in process (see
        ``driver_agent_call``); ``driver_lib(...)`` runs the real octavia-lib instead."""
        self._agent_call(self.status_socket, status, timeout)

    def push_statistics(self, statistics: Mapping[str, Any], timeout: float = 30) -> None:
        """What ``DriverLibrary.update_listener_statistics(statistics)`` does, in process."""
        self._agent_call(self.stats_socket, statistics, timeout)

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {path} (last {lines} lines) ---\n{_tail(path, lines)}"
            for path in self.logs.values()
        )


class _Processes:
    """Processes started by the stack, each in a session of its own, stopped by pid."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], *, log: Path, cwd: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
        self.started.append((name, process))
        return process

    def stop_all(self, timeout: float = 20) -> list[str]:
        """SIGTERM to all but the first started (the database) at once, then the database once
        its clients are gone; the names of those that needed SIGKILL. Whatever is left of each
        one's session (gunicorn workers, the driver agent's children) is SIGKILLed after it."""
        killed: list[str] = []
        if self.started:
            self._stop(self.started[1:], timeout, killed)
            self._stop(self.started[:1], timeout, killed)
        self.started.clear()
        return killed

    @staticmethod
    def _stop(
        group: list[tuple[str, subprocess.Popen[bytes]]], timeout: float, killed: list[str]
    ) -> None:
        for _, process in group:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, process in group:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


@contextlib.contextmanager
def octavia_stack(
    *,
    provider_drivers: Mapping[str, str] = NOOP_PROVIDER,
    default_provider: str | None = None,
    provider_agents: Sequence[str] = ("noop_agent",),
    transport_url: str | None = None,
    topic: str | None = None,
    extra_conf: Mapping[str, Mapping[str, str]] = {},
    env: Mapping[str, str] = {},
    api_workers: int = 2,
    start_timeout: float = 90,
    keep_dir: bool = False,
) -> Iterator[OctaviaStack]:
    """Run the real Octavia (API + driver agent) on a private MariaDB until the block ends.

    ``provider_drivers`` (name -> description, entry points of ``octavia.api.drivers``) and
    ``provider_agents`` (``octavia.driver_agent.provider_agents``) name what Octavia loads:
    Octavia's ``noop_driver`` / ``noop_agent`` by default, lbactors' ones later.
    ``transport_url=None`` makes a RabbitMQ vhost of this stack's own; ``topic=None`` a unique
    ``[oslo_messaging] topic``. ``extra_conf`` adds sections or options to octavia.conf (a
    provider driver's own section); ``env`` is added to the API's and driver agent's environment.
    """
    if not octavia_venv_ready():
        raise OctaviaStackError(f"{OCTAVIA_VENV} is not built: run scripts/octavia-venv")
    mariadbd, install_db, mariadb = mariadb_binaries()
    try:
        with socket.create_connection(BROKER, timeout=2):
            pass
    except OSError as error:
        raise OctaviaStackError(f"RabbitMQ does not answer on {BROKER}: {error}") from None

    tmp = Path(tempfile.mkdtemp(prefix="octavia-stack-"))
    processes = _Processes()
    token = secrets.token_hex(6)
    vhost = None
    if transport_url is None:
        vhost = f"lbt_{token}_octavia"
        transport_url = f"rabbit://guest:guest@127.0.0.1:5672/{vhost}"
    topic = topic or f"octavia_prov_{token}"
    base_env = {
        key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL_ENV")
    }
    base_env["PATH"] = f"{OCTAVIA_BIN}:{base_env.get('PATH', '/usr/bin:/bin')}"
    base_env.update(env)
    failed = True
    try:
        if vhost is not None:
            _rabbitmqctl("add_vhost", vhost)
            _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

        # 1. MariaDB on a unix socket in tmp, no TCP
        db_sock = tmp / "mysql.sock"
        subprocess.run(
            [install_db, "--no-defaults", f"--datadir={tmp}/mysql", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, timeout=120, cwd=tmp,
        )  # fmt: skip
        db = processes.start(
            "mariadbd",
            [mariadbd, "--no-defaults", f"--datadir={tmp}/mysql", f"--socket={db_sock}",
             "--skip-networking", "--user=root", f"--pid-file={tmp}/mysql.pid",
             f"--log-error={tmp}/mariadb.log", "--skip-log-bin",
             "--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=2",
             "--max-connections=500"],
            log=tmp / "mariadbd.out", cwd=tmp, env=base_env,
        )  # fmt: skip
        mysql = [mariadb, "--no-defaults", f"--socket={db_sock}", "--user=root"]

        def db_answers() -> bool:
            return (
                db_sock.exists()
                and subprocess.run(
                    [*mysql, "-e", "SELECT 1"], capture_output=True, timeout=10
                ).returncode
                == 0
            )

        _wait_until("mariadbd", db_answers, 30, alive=lambda: db.poll() is None)
        subprocess.run(
            [*mysql, "-e", "CREATE DATABASE octavia"], check=True, capture_output=True, timeout=30
        )

        # 2. octavia.conf
        conf_path = tmp / "octavia.conf"
        conf_text = render_octavia_conf(
            tmp=tmp,
            transport_url=transport_url,
            topic=topic,
            provider_drivers=provider_drivers,
            default_provider=default_provider or next(iter(provider_drivers)),
            provider_agents=provider_agents,
            extra_conf=extra_conf,
        )
        conf_path.write_text(conf_text)

        # 3. the schema
        with open(tmp / "db-manage.log", "wb") as out:
            subprocess.run(
                [OCTAVIA_BIN / "octavia-db-manage", "--config-file", conf_path, "upgrade", "head"],
                check=True, stdout=out, stderr=subprocess.STDOUT, timeout=180, cwd=tmp, env=base_env,
            )  # fmt: skip

        # 4. the API under gunicorn, 5. the driver agent
        port = _free_port()
        api_env = {
            **base_env,
            "LBACTORS_OCTAVIA_CONF": str(conf_path),
            "LBACTORS_OCTAVIA_API_LOG": str(tmp / "octavia-api.log"),
        }
        api = processes.start(
            "octavia-api",
            [OCTAVIA_BIN / "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(api_workers),
             "--worker-class", "sync", "--timeout", "120", "--graceful-timeout", "5",
             "--no-control-socket", "--pythonpath", str(WSGI_DIR),
             "--error-logfile", str(tmp / "gunicorn.log"), "octavia_api_wsgi:application"],
            log=tmp / "gunicorn.out", cwd=tmp, env=api_env,
        )  # fmt: skip
        agent = processes.start(
            "octavia-driver-agent",
            [OCTAVIA_BIN / "octavia-driver-agent", "--config-file", conf_path,
             "--log-file", tmp / "octavia-driver-agent.log"],
            log=tmp / "octavia-driver-agent.out", cwd=tmp, env=base_env,
        )  # fmt: skip
        api_url = f"http://127.0.0.1:{port}"
        client = OctaviaClient(api_url, project_id=uuid.uuid4().hex)

        def api_answers() -> bool:
            try:
                return "versions" in (client.request("GET", "/") or {})
            except (OSError, ValueError, OctaviaAPIError):
                return False

        _wait_until("octavia API", api_answers, start_timeout, alive=lambda: api.poll() is None)
        sockets = [tmp / "status.sock", tmp / "stats.sock", tmp / "get.sock"]
        _wait_until(
            "octavia-driver-agent sockets",
            lambda: all(path.exists() for path in sockets),
            start_timeout,
            alive=lambda: agent.poll() is None,
        )
        # a provider driver or agent that does not load is dropped with a log line only:
        # fail here, by name, instead of in the first API call
        providers = {
            item["name"] for item in client.request("GET", "v2/lbaas/providers")["providers"]
        }
        if missing := set(provider_drivers) - providers:
            raise OctaviaStackError(
                f"provider drivers not loaded by the API: {sorted(missing)} (entry points of "
                f"octavia.api.drivers in {OCTAVIA_VENV}? see octavia-api.log)"
            )
        agent_log = tmp / "octavia-driver-agent.log"
        for name in provider_agents:
            _wait_until(
                f"provider agent {name!r} (an entry point of octavia.driver_agent.provider_agents"
                f" in {OCTAVIA_VENV}?)",
                lambda name=name: (
                    f'Started enabled provider agent: "{name}"' in agent_log.read_text()
                ),
                start_timeout,
                alive=lambda: agent.poll() is None,
            )
        stack = OctaviaStack(
            tmp=tmp,
            conf_path=conf_path,
            conf_text=conf_text,
            api_url=api_url,
            transport_url=transport_url,
            topic=topic,
            project_id=client.project_id,
            client=client,
            pids={name: process.pid for name, process in processes.started},
        )
        yield stack
        failed = False
    finally:
        killed = processes.stop_all()
        if vhost is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _rabbitmqctl("delete_vhost", vhost)
        if failed or keep_dir or killed:
            print(f"octavia_stack: kept {tmp}; SIGKILLed: {killed or 'none'}", file=sys.stderr)
            for path in sorted(tmp.glob("*.log")) + sorted(tmp.glob("*.out")):
                print(f"--- {path} ---\n{_tail(path)}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def open_octavia_stack(**options: Any) -> AsyncIterator[OctaviaStack]:
    """``octavia_stack(**options)`` for trio tests: start and stop run in a worker thread (the
    stop shielded from cancellation, so it always completes), the event loop runs meanwhile.
    The client blocks: call it through ``trio.to_thread.run_sync`` (trio's default limiter
    runs 40 at once)."""
    manager = octavia_stack(**options)
    stack = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield stack
    except BaseException as error:
        with trio.CancelScope(shield=True):
            suppressed = await trio.to_thread.run_sync(
                manager.__exit__, type(error), error, error.__traceback__
            )
        if not suppressed:
            raise
    else:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)
