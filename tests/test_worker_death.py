"""A worker never outlives its supervisor: it asks for SIGKILL on its parent's death
(``prctl(PR_SET_PDEATHSIG)``), and exits at once if its parent is already not the
supervisor that started it. Real processes, real time (Linux only: /proc, prctl)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: prctl, /proc")

ROOT = Path(__file__).resolve().parents[1]

#: a supervisor-like parent: starts a worker through the router's spawn function, lets
#: trio's idle threads end after 2 s (once the worker asked for its signal: a worker forked
#: by one of them would be killed with it; trio's own delay is 10 s),
#: gives its end of the socket to a second process (so that the worker never reads end of
#: stream: only the signal can end it), prints both pids, and waits to be killed
PARENT = """
import subprocess, trio
import trio._core._thread_cache as thread_cache
from supervisor.router import spawn_worker_process

thread_cache.IDLE_TIMEOUT = 2

async def main():
    process, stream = await spawn_worker_process()
    holder = subprocess.Popen(["sleep", "300"], pass_fds=[stream.socket.fileno()])
    print(process.pid, holder.pid, flush=True)
    await trio.sleep_forever()

trio.run(main)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_worker_dies_with_its_supervisor_killed_by_sigkill() -> None:
    with trio.fail_after(60):
        parent = await trio.lowlevel.open_process(
            [sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE
        )
        holder_pid = None
        try:
            assert parent.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await parent.stdout.receive_some(100)
                assert chunk, "the parent ended before printing the pids"
                line += chunk
            worker_pid, holder_pid = map(int, line.split())
            await trio.sleep(4)  # any trio thread that forked it is gone by now
            assert running(worker_pid)

            parent.kill()
            await parent.wait()
            with trio.fail_after(5):
                while running(worker_pid):
                    await trio.sleep(0.05)
        finally:
            parent.kill()
            if holder_pid is not None:
                os.kill(holder_pid, signal.SIGKILL)


async def test_a_worker_whose_supervisor_is_already_gone_exits_at_once() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, trio.fail_after(30):
        not_our_parent = os.getpid() + 1_000_000
        result = await trio.run_process(
            [
                sys.executable, "-m", "lbactors.worker",
                "--fd", str(theirs.fileno()),
                "--supervisor-pid", str(not_our_parent),
            ],
            pass_fds=(theirs.fileno(),),
            cwd=ROOT,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert f"supervisor {not_our_parent} is gone" in result.stderr.decode()
