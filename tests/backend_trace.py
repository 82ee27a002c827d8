"""The noop backend's call trace (option ``trace_file``), read back: which backend calls of
one owner key overlapped in time, over every process that wrote to the file.

Each line is ``"<start|end> <pid> <method> <lb_id> <key> <monotonic ns>"``. A start is paired
with the next end of the same process and load balancer (one load balancer's calls in one
process run one at a time). A call whose end never came belongs to a process that was killed
in it: :func:`overlaps_by_key` ends it at that process's kill time when it is given, else never.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Call", "overlaps_by_key", "read_trace"]


@dataclass(frozen=True)
class Call:
    pid: int
    method: str
    lb_id: str
    key: str
    #: ``time.monotonic_ns()`` at its start and its end (``None``: no end line)
    start: int
    end: int | None


def read_trace(path: str | Path) -> list[Call]:
    """Every call of the trace file at ``path``, in the order they started."""
    calls: list[Call] = []
    # (pid, lb id) -> indexes in ``calls`` of its started calls not yet ended, oldest first
    open_calls: dict[tuple[int, str], collections.deque[int]] = collections.defaultdict(
        collections.deque
    )
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if len(fields) != 6 or fields[0] not in ("start", "end"):
            raise ValueError(f"{path}:{number}: not a trace line: {line!r}")
        event, pid_text, method, lb_id, key, ns_text = fields
        pid, ns = int(pid_text), int(ns_text)
        if event == "start":
            open_calls[(pid, lb_id)].append(len(calls))
            calls.append(Call(pid, method, lb_id, key, ns, None))
            continue
        started = open_calls.get((pid, lb_id))
        if not started:
            raise ValueError(f"{path}:{number}: an end without its start: {line!r}")
        index = started.popleft()
        if calls[index].method != method:
            raise ValueError(f"{path}:{number}: ends {method}, started {calls[index].method}")
        calls[index] = Call(pid, method, lb_id, key, calls[index].start, ns)
    return calls


def overlaps_by_key(
    calls: list[Call], killed_pids_end_times: dict[int, float]
) -> list[tuple[Call, Call]]:
    """Every pair of calls of one key that ran at the same time (whichever processes ran
    them), the earlier-started first. A call never ended ends at its process's kill time in
    ``killed_pids_end_times`` (monotonic ns), or at +inf when the process is not there."""

    def end(call: Call) -> float:
        if call.end is not None:
            return call.end
        return killed_pids_end_times.get(call.pid, math.inf)

    by_key: dict[str, list[Call]] = collections.defaultdict(list)
    for call in calls:
        if call.key != "-":  # no key known to the backend: nothing to compare it with
            by_key[call.key].append(call)
    overlaps: list[tuple[Call, Call]] = []
    for same_key in by_key.values():
        same_key.sort(key=lambda c: c.start)
        for i, first in enumerate(same_key):
            first_end = end(first)
            for second in same_key[i + 1 :]:
                if second.start >= first_end:
                    break
                overlaps.append((first, second))
    return overlaps
