"""systemd's notification protocol (``sd_notify``), without libsystemd.

``$NOTIFY_SOCKET`` names an AF_UNIX datagram socket (a path, or ``@name`` for the abstract
namespace); one datagram carries newline-separated ``KEY=VALUE`` lines: ``READY=1``,
``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``, ``EXTEND_TIMEOUT_USEC=...``. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a no-op.

Only the supervisor notifies (``NotifyAccess=main``): worker processes get
:func:`child_environment`, without the notification and watchdog variables.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog
import trio

__all__ = ["WATCHDOG_VARIABLES", "child_environment", "notify", "watchdog_period"]

log = structlog.get_logger("lbactors.sdnotify")

#: what a child process must not inherit: it would notify (or be watched) as the service
WATCHDOG_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_failure_logged = False


def _address(value: str) -> str:
    """``@name`` is the abstract namespace: a leading NUL byte."""
    return "\0" + value[1:] if value.startswith("@") else value


async def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (joined with newlines) to ``$NOTIFY_SOCKET`` in one datagram.

    Returns True when sent, False when ``$NOTIFY_SOCKET`` is unset or the send failed. Never
    raises for a send failure: it is logged (once per process) and the daemon goes on, since
    a service that cannot notify is still a working service.
    """
    global _failure_logged
    environ = os.environ if environ is None else environ
    target = environ.get("NOTIFY_SOCKET")
    if not target or not lines:
        return False
    message = "\n".join(lines).encode()
    try:
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            await sock.sendto(message, _address(target))
    except OSError as exc:
        if not _failure_logged:
            _failure_logged = True
            log.warning(
                "cannot notify systemd (further failures are not logged)",
                notify_socket=target,
                error=str(exc),
            )
        return False
    return True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None when not watched.

    None too when ``$WATCHDOG_PID`` names another process (the watchdog is not ours).
    """
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        microseconds = int(usec)
    except ValueError:
        return None
    if microseconds <= 0:
        return None
    return microseconds / 1e6 / 2


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for a worker process: without ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``."""
    return {key: value for key, value in environ.items() if key not in WATCHDOG_VARIABLES}
