"""``lbactors status``: a running daemon's one-screen summary, over a unix socket.

The supervisor listens on ``status.sock`` in its runtime directory (``daemon.runtime_dir``),
mode 0600, so only its own user (and root) may ask. A client connects and reads one JSON
document, then the daemon closes the connection; nothing is read from the client, so a client
cannot make the daemon wait. The document is built in the trio loop from what the router and
the gateway hold (:func:`status_snapshot`), so it is consistent.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

if TYPE_CHECKING:
    from lbactors.config import Config
    from lbactors.gateway import Gateway
    from supervisor.router import Router

log = structlog.get_logger("lbactors.supervisor")

SOCKET_NAME = "status.sock"
#: how many operations in flight ``lbactors status`` lists, oldest first
SLOWEST = 10


SYSTEM_RUNTIME_DIR = Path("/run/lbactors")


def runtime_dir_candidates(config: Config, environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where ``status.sock`` may live, most likely first (``daemon.runtime_dir`` in
    contrib/lbactors.toml): the configured directory alone if there is one; else systemd's
    $RUNTIME_DIRECTORY, /run/lbactors, $XDG_RUNTIME_DIR/lbactors, /tmp/lbactors-<uid>."""
    env = os.environ if environ is None else environ
    if config.daemon.runtime_dir:
        return [Path(config.daemon.runtime_dir)]
    out = []
    if env.get("RUNTIME_DIRECTORY"):
        # systemd's RuntimeDirectory=: several are separated by colons
        out.append(Path(env["RUNTIME_DIRECTORY"].split(":")[0]))
    out.append(SYSTEM_RUNTIME_DIR)
    if env.get("XDG_RUNTIME_DIR"):
        out.append(Path(env["XDG_RUNTIME_DIR"]) / "lbactors")
    out.append(Path(f"/tmp/lbactors-{os.getuid()}"))
    return out


def runtime_dir(config: Config, environ: Mapping[str, str] | None = None) -> Path:
    """The directory the daemon puts ``status.sock`` in: the first candidate, skipping
    /run/lbactors unless we are root or it exists and we may write there."""
    for candidate in runtime_dir_candidates(config, environ):
        if candidate == SYSTEM_RUNTIME_DIR and not config.daemon.runtime_dir:
            if os.geteuid() != 0 and not os.access(candidate, os.W_OK | os.X_OK):
                continue
        return candidate
    raise AssertionError("the last candidate is always usable")


@dataclass
class RoundLog:
    """The last statistics round, as ``serve_statistics``'s ``on_round`` reported it."""

    number: int = 0
    duration: float = 0.0
    messages: int = 0
    ended: float = 0.0


def status_snapshot(
    router: Router, gateway: Gateway, rounds: RoundLog, *, started: float, pid: int
) -> dict[str, Any]:
    """The document ``lbactors status`` shows (called in the trio loop)."""
    now_wall = time.time()
    now = trio.current_time()
    counters = gateway.counters
    workers = []
    in_flight: list[dict[str, Any]] = []
    for worker in router.workers:
        workers.append(
            {
                "index": worker.index,
                "pid": worker.pid if worker.alive else None,
                "up": worker.alive,
                "uptime_s": round(now_wall - worker.started_at, 1) if worker.alive else None,
                "restarts": worker.restarts,
                "in_flight": len(worker.ledger),
                "actors": worker.actors,
                "resident_loadbalancers": worker.resident,
            }
        )
        for op in worker.ledger.values():
            received = gateway.received_at(op.op_id)
            in_flight.append(
                {
                    "age_s": round(now - received, 3) if received is not None else None,
                    "lb_id": op.lb_id,
                    "method": op.method,
                    "worker": worker.index,
                }
            )
    in_flight.sort(key=lambda entry: -(entry["age_s"] or 0.0))
    return {
        "pid": pid,
        "uptime_s": round(now_wall - started, 1),
        "workers": workers,
        "broker": {
            "connected": gateway.connected,
            "reconnects": counters.reconnects,
            "last_disconnect": counters.last_disconnect or None,
            "in_flight": gateway.in_flight,
            "confirms_pending": gateway.confirms_pending,
            "received": counters.received,
            "completed": counters.completed,
            "rejected": counters.rejected,
            "reasserted": counters.reasserted,
        },
        "statistics": {
            "rounds": rounds.number,
            "last_duration_s": round(rounds.duration, 3) if rounds.number else None,
            "last_messages": rounds.messages if rounds.number else None,
            "last_ended": rounds.ended or None,
        },
        "replayed": router.replayed,
        "poisoned": router.poisoned,
        "cluster": (
            {
                "shards": gateway.cluster_shards,
                "held": gateway.held_shards(),
                "settled": sorted(gateway.settled_shards()),
                "republished": counters.shard_published,
                "duplicates": counters.duplicates,
                "released": counters.shards_released,
            }
            if gateway.cluster_shards
            else None
        ),
        "slowest_in_flight": in_flight[:SLOWEST],
    }


def _claim(path: Path) -> bool:
    """Make ``path`` free for a new socket; False when another daemon answers there.
    (Local file system calls: not worth a thread.)"""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        return True
    if _socket_answers(path):
        return False
    path.unlink()
    return True


def _release(path: Path, inode: int) -> None:
    """Remove ``path`` if it is still our socket (a later daemon may have replaced it)."""
    try:
        if path.stat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


def _socket_answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def serve_status(
    path: Path,
    snapshot: Any,
    *,
    task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer every connection on ``path`` with ``snapshot()`` as JSON, until cancelled.

    ``started(None)`` without serving when another daemon already answers there (the status
    socket is a convenience; it never stops a daemon from running). The socket file is
    removed on the way out.
    """
    if not await trio.to_thread.run_sync(_claim, path):
        log.warning("another daemon answers on the status socket; not serving it", path=str(path))
        task_status.started(None)
        return
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, 0o600)  # before listen(): nobody can connect while it is wider
        sock.listen(16)
        listener = trio.SocketListener(sock)
    except BaseException:
        sock.close()
        raise
    inode = os.stat(path).st_ino

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.move_on_after(5):
                    await stream.send_all(json.dumps(snapshot()).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    try:
        async with listener:
            task_status.started(path)
            await trio.serve_listeners(answer, [listener])
    finally:
        _release(path, inode)


class NoDaemon(Exception):
    """Nothing answers on the status socket."""


def read_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the daemon listening on ``path`` for its status (blocking; for the CLI)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect(str(path))
        except FileNotFoundError:
            raise NoDaemon(f"no lbactors daemon is running: {path} does not exist") from None
        except ConnectionRefusedError:
            raise NoDaemon(
                f"no lbactors daemon is running: nothing listens on {path} (a stale socket)"
            ) from None
        except PermissionError:
            raise NoDaemon(
                f"permission denied on {path}: run as the daemon's user (or root)"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ENOTSOCK, errno.ENOENT):
                raise NoDaemon(f"no lbactors daemon is running: {path} is not its socket") from None
            raise
        chunks = []
        while True:
            data = client.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        client.close()
    return json.loads(b"".join(chunks))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _when(stamp: float | None) -> str:
    if not stamp:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) + f" ({_age(time.time() - stamp)} ago)"


def render_status(status: dict[str, Any]) -> str:
    """The one-screen text of ``lbactors status``."""
    broker = status["broker"]
    stats = status["statistics"]
    workers = status["workers"]
    up = sum(1 for worker in workers if worker["up"])
    lines = [
        f"lbactors  pid {status['pid']}  up {_age(status['uptime_s'])}  "
        f"workers {up}/{len(workers)}  replayed {status['replayed']}  poisoned {status['poisoned']}",
        "",
        f"{'worker':>6} {'pid':>8} {'uptime':>8} {'restarts':>8} {'in flight':>9} {'actors':>7} {'resident':>8}",
    ]
    for worker in workers:
        lines.append(
            f"{worker['index']:>6} {worker['pid'] if worker['up'] else 'down':>8} "
            f"{_age(worker['uptime_s']):>8} {worker['restarts']:>8} {worker['in_flight']:>9} "
            f"{worker['actors']:>7} {worker['resident_loadbalancers']:>8}"
        )
    lines += [
        "",
        f"broker     {'connected' if broker['connected'] else 'DISCONNECTED'}, "
        f"{broker['reconnects']} reconnects, last lost {_when(broker['last_disconnect'])}",
        f"           in flight {broker['in_flight']}, confirms pending {broker['confirms_pending']}, "
        f"received {broker['received']}, completed {broker['completed']}, "
        f"rejected {broker['rejected']}, re-asserted {broker['reasserted']}",
    ]
    cluster = status.get("cluster")
    if cluster:
        lines.append(
            f"cluster    shards held {len(cluster['held'])}/{cluster['shards']} "
            f"{cluster['held']} (settled {len(cluster['settled'])}), "
            f"re-published {cluster['republished']}, released {cluster['released']}, "
            f"duplicates dropped {cluster['duplicates']}"
        )
    if stats["rounds"]:
        lines.append(
            f"statistics round {stats['rounds']}: {stats['last_duration_s']} s, "
            f"{stats['last_messages']} messages, ended {_when(stats['last_ended'])}"
        )
    else:
        lines.append("statistics no round yet")
    slowest = status["slowest_in_flight"]
    lines.append("")
    if slowest:
        lines.append("slowest in flight:")
        lines.append(f"  {'age':>8}  {'worker':>6}  {'method':<28} load balancer")
        for entry in slowest:
            lines.append(
                f"  {_age(entry['age_s']):>8}  {entry['worker']:>6}  {entry['method']:<28} {entry['lb_id']}"
            )
    else:
        lines.append("nothing in flight")
    return "\n".join(lines)
