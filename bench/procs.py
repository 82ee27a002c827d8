"""The processes a benchmark drives: ``python -m supervisor serve`` and the seed listener.

Both are started as subprocesses and stopped by their own pid (SIGTERM, then SIGKILL after a
deadline); CPU time and resident memory are read from ``/proc`` over the whole process tree
(the daemon's workers are its children). Nothing here is trio: starting and stopping happen
between measurements, never during one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: ``shared/baseline`` next to the checkout (``../shared/baseline``)
BASELINE_DIR = REPO.parent / "shared" / "baseline"
BASELINE_VENV = Path(os.environ.get("BASELINE_VENV", "/tmp/nsx-octavia-baseline-venv"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class TargetFailed(RuntimeError):
    """The target process did not become ready (the message carries the end of its log)."""


# ---- /proc ------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's ``children`` file)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children(p)
    return tree


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()  # fields from 3 (state) on


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of ``pid`` in clock ticks; (0, 0) if it is gone."""
    f = _stat_fields(pid)
    if f is None:
        return 0, 0
    # after the ")": state=0, ppid=1, ... utime=11, stime=12, cutime=13, cstime=14
    return int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


class TreeCpu:
    """CPU seconds used by a process tree between two snapshots.

    Processes alive at both snapshots count their own difference, processes that appeared
    count everything, and processes that exited and were reaped meanwhile show in their
    parent's ``cutime + cstime``.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.before = self._snapshot()

    def _snapshot(self) -> dict[int, tuple[int, int]]:
        return {pid: cpu_ticks(pid) for pid in process_tree(self.root)}

    def seconds(self) -> float:
        after = self._snapshot()
        ticks = 0
        for pid, (own, reaped) in after.items():
            own0, reaped0 = self.before.get(pid, (0, 0))
            ticks += (own - own0) + (reaped - reaped0)
        return ticks / CLK_TCK


def memory_kib(pids: Iterable[int]) -> dict[str, int]:
    """Summed ``VmRSS`` and ``Pss`` (proportional: shared pages split) in KiB, and the count."""
    rss = pss = n = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        n += 1
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
                break
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                    break
        except OSError:
            pass
    return {"rss_kib": rss, "pss_kib": pss, "processes": n}


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, as run_baseline.sh reads them."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    values = [int(v) for v in fields]
    total = sum(values)
    return total - values[3] - values[4], total


class MachineLoad:
    """Busy share of all CPUs between construction and :meth:`busy_pct`."""

    def __init__(self) -> None:
        self.busy0, self.total0 = machine_ticks()

    def busy_pct(self) -> float:
        busy, total = machine_ticks()
        return round(100.0 * (busy - self.busy0) / max(total - self.total0, 1), 1)

    def busy_cpu_s(self) -> float:
        busy, _ = machine_ticks()
        return (busy - self.busy0) / CLK_TCK


def idle_check(seconds: float = 1.0) -> float:
    """Whole-machine busy % over ``seconds`` (someone else's load shows here)."""
    load = MachineLoad()
    time.sleep(seconds)
    return load.busy_pct()


def broker_pid() -> int | None:
    """The RabbitMQ server's OS pid (``beam.smp``), to read its CPU; None if not found."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"beam" in cmd.split(b"\0", 1)[0] and b"rabbit" in cmd:
            return int(entry)
    return None


# ---- targets ------------------------------------------------------------------------------------

class Target:
    """A started process that consumes ``topic`` and casts status updates to ``driver_topic``."""

    name = "target"

    def __init__(self, *, topic: str, driver_topic: str, run_dir: Path) -> None:
        self.topic = topic
        self.driver_topic = driver_topic
        self.run_dir = run_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self.log_path = run_dir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def cpu(self) -> TreeCpu:
        return TreeCpu(self.pid)

    def memory(self) -> dict[str, int]:
        return memory_kib(self.pids())

    def _log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the process, wait, SIGKILL after ``timeout``; no descendant left behind."""
        if self.process is None:
            return None
        tree = process_tree(self.pid) if self.process.poll() is None else [self.pid]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        deadline = time.monotonic() + 5
        rest = [p for p in tree[1:] if _alive(p)]
        while rest and time.monotonic() < deadline:
            time.sleep(0.05)
            rest = [p for p in rest if _alive(p)]
        for pid in rest:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.process.returncode

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"


class Daemon(Target):
    """``python -m supervisor serve`` with ``LBACTORS_*`` overrides; ready on ``READY=1``.

    Readiness comes from a private ``NOTIFY_SOCKET`` (an AF_UNIX datagram socket), as systemd
    would see it; ``startup_s`` is spawn -> ``READY=1``.
    """

    name = "lbactors"

    def __init__(self, *, topic: str, driver_topic: str, run_dir: Path, amqp_url: str,
                 workers: int | None = None, backend_latency_s: float = 0.0,
                 stats_interval: float = 0.0, log_level: str = "warning",
                 extra_env: dict[str, str] | None = None) -> None:
        super().__init__(topic=topic, driver_topic=driver_topic, run_dir=run_dir)
        self.env = {
            "LBACTORS_AMQP_URL": amqp_url,
            "LBACTORS_AMQP_TOPIC": topic,
            "LBACTORS_AMQP_DRIVER_TOPIC": driver_topic,
            "LBACTORS_BACKEND_NOOP_LATENCY": repr(backend_latency_s),
            "LBACTORS_STATS_INTERVAL": repr(stats_interval),
            "LBACTORS_LOG_LEVEL": log_level,
            "LBACTORS_LOG_FORMAT": "json",
        }
        if workers:
            self.env["LBACTORS_DAEMON_WORKERS"] = str(workers)
        self.env.update(extra_env or {})

    def start(self, ready_timeout: float = 60.0) -> Daemon:
        sock_dir = tempfile.mkdtemp(prefix="lbactors-bench-notify-")
        sock_path = os.path.join(sock_dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        env = dict(os.environ)
        env.update(self.env)
        env["NOTIFY_SOCKET"] = sock_path
        env.setdefault("PYTHONPATH", str(REPO))
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        t0 = time.monotonic()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "serve"], cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
            deadline = t0 + ready_timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop()
                    raise TargetFailed(f"lbactors not ready in {ready_timeout} s:\n"
                                       + self._log_tail())
                sock.settimeout(min(remaining, 0.2))
                try:
                    message = sock.recv(65536).decode(errors="replace")
                except TimeoutError:
                    if self.process.poll() is not None:
                        raise TargetFailed(f"lbactors exited with {self.process.returncode}:\n"
                                           + self._log_tail()) from None
                    continue
                if "READY=1" in message.splitlines():
                    self.startup_s = time.monotonic() - t0
                    return self
        finally:
            log.close()
            sock.close()
            os.unlink(sock_path)
            os.rmdir(sock_dir)


def baseline_available(baseline_dir: Path = BASELINE_DIR) -> bool:
    return (baseline_dir / "seed_listener.py").exists()


def ensure_baseline_venv(baseline_dir: Path = BASELINE_DIR, venv: Path = BASELINE_VENV) -> Path:
    """The python of the baseline's venv, created and installed like run_baseline.sh does."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-r", str(baseline_dir / "requirements.txt"),
             "-c", str(baseline_dir / "constraints.txt")],
            check=True,
        )
    return python


class SeedListener(Target):
    """``shared/baseline/seed_listener.py``: the seed NSX listener on oslo.messaging + eventlet.

    Its topics are vmware-nsx's constants (``vmware_nsx__lb_listener`` and
    ``vmware_nsx__driver_listener``); ready when its ``--ready-file`` appears.
    """

    name = "seed_listener"
    TOPIC = "vmware_nsx__lb_listener"
    DRIVER_TOPIC = "vmware_nsx__driver_listener"

    def __init__(self, *, run_dir: Path, amqp_url: str, backend_latency_ms: float = 0.0,
                 stats_interval: int = 0, baseline_dir: Path = BASELINE_DIR) -> None:
        super().__init__(topic=self.TOPIC, driver_topic=self.DRIVER_TOPIC, run_dir=run_dir)
        self.baseline_dir = baseline_dir
        self.amqp_url = amqp_url.replace("amqp://", "rabbit://", 1)
        self.backend_latency_ms = backend_latency_ms
        self.stats_interval = stats_interval
        self.ready_file = run_dir / "seed_listener.ready"
        self.stats_file = run_dir / "seed_listener_stats.json"

    def start(self, ready_timeout: float = 120.0) -> SeedListener:
        python = ensure_baseline_venv(self.baseline_dir)
        self.ready_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        t0 = time.monotonic()
        try:
            self.process = subprocess.Popen(
                [str(python), str(self.baseline_dir / "seed_listener.py"),
                 "--amqp-url", self.amqp_url,
                 "--backend-latency-ms", str(self.backend_latency_ms),
                 "--stats-interval", str(self.stats_interval),
                 "--ready-file", str(self.ready_file), "--stats-file", str(self.stats_file),
                 "--max-lifetime", "3600"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = t0 + ready_timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise TargetFailed(f"seed listener exited with {self.process.returncode}:\n"
                                   + self._log_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise TargetFailed("seed listener not ready:\n" + self._log_tail())
            time.sleep(0.05)
        self.startup_s = time.monotonic() - t0
        return self


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Scraper:
    """Scrapes ``url`` every ``interval`` seconds from a thread, as Prometheus would, while the
    ``with`` block runs (``url`` None: does nothing). ``scrapes`` counts the successful ones."""

    def __init__(self, url: str | None, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.scrapes = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        assert self.url is not None
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    self.bytes += len(response.read())
                self.scrapes += 1
            except OSError:
                continue

    def __enter__(self) -> Scraper:
        if self.url is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
