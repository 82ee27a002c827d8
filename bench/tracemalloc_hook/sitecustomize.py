"""tracemalloc snapshots of every Python process of a run, for finding what a process keeps.

Put this directory first on ``PYTHONPATH`` and name a directory in ``MEMHOOK_DIR``: each Python
process started with that environment (the bench driver, the supervisor, its workers: they
inherit it) traces its allocations (``MEMHOOK_FRAMES`` frames, 1 by default) and every
``MEMHOOK_EVERY`` seconds (20) writes ``<pid>-<n>.snap`` there after a full collection::

    MEMHOOK_DIR=$(mktemp -d) PYTHONPATH=$PWD/bench/tracemalloc_hook:$PWD \\
        python -m bench scale --sizes 10000

then compare two snapshots of one process with ``tracemalloc.Snapshot.load(...)`` and
``compare_to(..., "lineno")``. Tracing slows every process several times: figures of time
or RSS from such a run mean nothing. Without ``MEMHOOK_DIR`` it does nothing.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import tracemalloc

_DIR = os.environ.get("MEMHOOK_DIR")


def _dump_forever(directory: str, every: float) -> None:
    n = 0
    while True:
        time.sleep(every)
        n += 1
        gc.collect()
        tracemalloc.take_snapshot().dump(f"{directory}/{os.getpid()}-{n:03d}.snap")


if _DIR:
    tracemalloc.start(int(os.environ.get("MEMHOOK_FRAMES", "1")))
    threading.Thread(
        target=_dump_forever, args=(_DIR, float(os.environ.get("MEMHOOK_EVERY", "20"))),
        daemon=True,
    ).start()
