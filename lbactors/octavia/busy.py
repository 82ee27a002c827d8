"""octavia-lib's ``DriverLibrary`` with its calls retried while the driver agent is busy.

The driver agent's status, statistics and get sockets are forking ``socketserver`` servers
with the default listen backlog (5), and ``DriverLibrary._send`` connects a socket that has a
timeout set (non-blocking inside): while 5 connections wait to be accepted, a connect fails at
once with ``EAGAIN`` (``[Errno 11] Resource temporarily unavailable``), which DriverLibrary
wraps into ``UpdateStatusError`` / ``UpdateStatisticsError`` (the ``fault_string``) or
``DriverError`` (the ``__cause__``). Measured with the real Octavia 19: 50 load balancers built
at once made status writes and the driver's parent lookups fail that way.

Nothing was sent when the connect failed, so a call is simply made again, after a short
growing pause (10 ms, doubled up to 200 ms), for at most ``busy_for`` seconds; then the last
error is raised as DriverLibrary raised it. Every other error is raised at once.

The backlog is shared by every process that talks to the driver agent, so a process should not
fill it alone: at most ``max_calls`` calls of one wrapper run at once (4, one less than the
backlog); the others wait their turn (each call is bounded by DriverLibrary's own timeouts).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger(__name__)

#: the DriverLibrary methods that talk to the driver agent
METHODS = frozenset(
    {
        "update_loadbalancer_status",
        "update_listener_statistics",
        "get_loadbalancer",
        "get_listener",
        "get_pool",
        "get_member",
        "get_healthmonitor",
        "get_l7policy",
        "get_l7rule",
    }
)


def driver_agent_busy(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a connect refused for a full listen backlog."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.EAGAIN:
            return True
        fault = getattr(current, "fault_string", None)
        if isinstance(fault, str) and f"[Errno {errno.EAGAIN}]" in fault:
            return True
        current = current.__cause__ or current.__context__
    return False


class BusyRetrying:
    """Wraps a DriverLibrary (or anything with its methods); other attributes pass through."""

    def __init__(
        self,
        library: Any,
        *,
        busy_for: float = 10.0,
        max_calls: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._library = library
        self._busy_for = busy_for
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._calls = threading.BoundedSemaphore(max_calls)
        #: connects retried because the backlog was full, and calls that gave up on it
        self.busy_retries = 0
        self.busy_failures = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._library, name)
        if name not in METHODS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._calls:
                return busy_retried(*args, **kwargs)

        def busy_retried(*args: Any, **kwargs: Any) -> Any:
            deadline = self._clock() + self._busy_for
            pause = 0.01
            while True:
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    if not driver_agent_busy(exc):
                        raise
                    if self._clock() + pause > deadline:
                        with self._lock:
                            self.busy_failures += 1
                        LOG.warning(
                            "lbactors: the driver agent stayed busy for %.1f s; %s failed: %s",
                            self._busy_for,
                            name,
                            exc,
                        )
                        raise
                    with self._lock:
                        self.busy_retries += 1
                self._sleep(pause)
                pause = min(pause * 2, 0.2)

        return call
