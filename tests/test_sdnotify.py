"""sd_notify: datagrams to $NOTIFY_SOCKET (path and abstract), watchdog period, child env."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from supervisor import sdnotify
from supervisor.sdnotify import child_environment, notify, watchdog_period


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


async def test_notify_sends_one_datagram_to_a_path_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as receiver:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        with trio.fail_after(5):
            assert await notify("READY=1", "STATUS=workers 2/2") is True
            assert await notify("WATCHDOG=1") is True
        assert receiver.recv(4096) == b"READY=1\nSTATUS=workers 2/2"
        assert receiver.recv(4096) == b"WATCHDOG=1"


async def test_notify_abstract_namespace() -> None:
    name = f"lbactors-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as receiver:
        with trio.fail_after(5):
            sent = await notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sent is True
        assert receiver.recv(4096) == b"STOPPING=1"


async def test_notify_without_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(10):
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        assert await notify("READY=1") is False
        assert await notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


async def test_send_failure_returns_false_and_logs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        monkeypatch.setattr(sdnotify, "_failure_logged", False)
        environ = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")}
        with capture_logs() as logs:
            assert await notify("READY=1", environ=environ) is False
            assert await notify("WATCHDOG=1", environ=environ) is False
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert len(warnings) == 1
        assert warnings[0]["notify_socket"] == environ["NOTIFY_SOCKET"]


def test_watchdog_period() -> None:
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "3000000"}) == 1.5
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert (
        watchdog_period({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    )
    assert watchdog_period({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_period_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_period() == 1.0


def test_child_environment_drops_the_notification_variables() -> None:
    environ = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "PATH": "/usr/bin",
        "LBACTORS_LOG_FORMAT": "json",
        "JOURNAL_STREAM": "8:1234",
    }
    assert child_environment(environ) == {
        "PATH": "/usr/bin",
        "LBACTORS_LOG_FORMAT": "json",
        "JOURNAL_STREAM": "8:1234",
    }
    assert "NOTIFY_SOCKET" in environ  # the input is not changed
