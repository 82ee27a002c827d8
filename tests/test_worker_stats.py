"""A worker's statistics round filtered by cluster shard (docs/cluster.md §6): the real
``serve_worker`` in this process, spoken to over an in-memory stream."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from lbactors import ipc, worker
from lbactors.backends import BACKENDS
from lbactors.backends.base import Reading
from lbactors.backends.noop import NoopBackend
from lbactors.config import BackendSection, Config, DaemonSection, encode_config
from lbactors.messages import ListenerStatistics, Operation
from lbactors.routing import shard, shard_of
from lbactors.worker import serve_worker
from tests.test_actor import tree_of
from tests.test_messages import LB, Payloads

P = Payloads()
SHARDS = 64
#: the load balancer that gets an operation, with a key whose shard is not its id's
LB_OP = LB[:-4] + "1111"
KEY = next(
    key for key in (f"key-{n}" for n in itertools.count()) if shard_of(key, SHARDS) != shard_of(LB_OP, SHARDS)
)
HELD = sorted({shard_of(KEY, SHARDS), shard_of("res-known", SHARDS)})
#: a resident load balancer whose key is known but whose shard is not held
RES_OTHER = next(
    lb for lb in (f"res-other-{n}" for n in itertools.count()) if shard_of(lb, SHARDS) not in HELD
)
#: a resident load balancer whose key is unknown, though its id falls in a held shard
RES_UNKNOWN = next(
    lb for lb in (f"res-unknown-{n}" for n in itertools.count()) if shard_of(lb, SHARDS) in HELD
)
RESIDENT = ["res-known", RES_UNKNOWN, RES_OTHER]


class EveryLbReads(NoopBackend):
    """Reads one listener (``l-<lb id>``) and one operating status for any load balancer;
    knows the key of every resident load balancer but ``RES_UNKNOWN``."""

    def lb_affinity_key(self, lb_id: str) -> str | None:
        return None if lb_id == RES_UNKNOWN else lb_id

    async def resident_lb_ids(self) -> list[str]:
        return list(RESIDENT)

    async def read_many(self, lb_ids: Sequence[str]) -> list[Reading]:
        await trio.lowlevel.checkpoint()
        return [
            Reading(lb_id, [ListenerStatistics(id=f"l-{lb_id}")], [("loadbalancer", lb_id, "ONLINE")])
            for lb_id in lb_ids
        ]


def changed_ids(report: ipc.StatsReport) -> list[str]:
    return sorted(
        entry["id"]
        for update in msgspec.to_builtins(report.status_changes)
        for entry in update.get("loadbalancers", [])
    )


@asynccontextmanager
async def serving_worker(config: Config, workers: int = 1) -> AsyncIterator[ipc.FrameStream]:
    """A worker served in this process over a memory stream, spawned with ``config`` and
    ready: its frame stream; the end of input when the block is left."""
    ours, theirs = trio.testing.memory_stream_pair()
    frames = ipc.FrameStream(ours)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_worker, theirs)
        await frames.send(
            ipc.Spawn(worker_index=0, worker_count=workers, incarnation=1, config=encode_config(config))
        )
        assert isinstance(await frames.receive(), ipc.Ready)
        yield frames
        await frames.send_eof()


async def test_a_round_with_held_shards_reports_only_their_load_balancers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert shard_of(LB_OP, SHARDS) not in HELD and shard_of(RES_OTHER, SHARDS) not in HELD
    monkeypatch.setitem(BACKENDS, "every-lb-reads", lambda options: EveryLbReads())
    config = Config(backend=BackendSection(name="every-lb-reads"))
    with trio.fail_after(30):
        async with serving_worker(config) as frames:
            args = msgspec.json.encode(tree_of(P.args("loadbalancer_create"), "1111"))
            op = Operation(op_id=1, method="loadbalancer_create", args=args, lb_id=LB_OP, key=KEY)
            await frames.send(ipc.Submit(op=op))
            done = await frames.receive()
            assert isinstance(done, ipc.Done) and done.outcome.failure is None

            await frames.send(
                ipc.CollectStats(round=1, with_owned_ids=True, held_shards=HELD, shards=SHARDS)
            )
            held = await frames.receive()
            assert isinstance(held, ipc.StatsReport) and held.complete
            # by the key of its operation, not its id; a resident one by the backend's key;
            # never one whose key is unknown
            assert sorted(s.id for s in held.listeners) == sorted(["l-res-known", f"l-{LB_OP}"])
            assert changed_ids(held) == sorted(["res-known", LB_OP])
            assert sorted(held.owned_lb_ids or []) == sorted([*RESIDENT, LB_OP])  # unfiltered

            await frames.send(ipc.CollectStats(round=2))
            every = await frames.receive()
            assert isinstance(every, ipc.StatsReport)
            assert sorted(s.id for s in every.listeners) == sorted(
                f"l-{lb}" for lb in [*RESIDENT, LB_OP]
            )
            # the others' statuses were never reported: they are news now
            assert changed_ids(every) == sorted([RES_UNKNOWN, RES_OTHER])


async def test_a_worker_adopts_the_resident_load_balancers_of_its_keys(tmp_path: Path) -> None:
    """Resident load balancers are shared out among workers as the router routes their
    operations: by owner key (here the first 3 characters of the id), not by id."""
    workers = 2
    lb_ids = [f"ab{n}-{m}" for n in range(4) for m in range(3)]
    await trio.to_thread.run_sync(lambda: [(tmp_path / lb).touch() for lb in lb_ids])
    by_id = {lb for lb in lb_ids if shard(lb, workers) == 0}
    by_key = {lb for lb in lb_ids if shard(lb[:3], workers) == 0}
    assert by_id != by_key
    config = Config(
        backend=BackendSection(noop={"state_dir": str(tmp_path), "affinity_prefix": 3})
    )
    with trio.fail_after(30):
        async with serving_worker(config, workers) as frames:
            await frames.send(ipc.CollectStats(round=1, with_owned_ids=True))
            report = await frames.receive()
            assert isinstance(report, ipc.StatsReport)
            assert set(report.owned_lb_ids or []) == by_key


async def test_a_worker_trims_its_heap_after_a_statistics_round_and_after_a_burst(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """``malloc_trim`` once a statistics round is answered, and on the first ping that finds
    no actor left after operations ran; not on a ping with nothing new since."""
    trims: list[int] = []
    monkeypatch.setattr(worker, "trim_memory", lambda: trims.append(1))
    config = Config(daemon=DaemonSection(actor_idle_timeout=0.05))

    async def trimmed(count: int) -> None:
        while len(trims) < count:
            await trio.sleep(0.01)

    with trio.fail_after(30):
        async with serving_worker(config) as frames:
            await frames.send(ipc.Ping())
            assert isinstance(await frames.receive(), ipc.Pong)
            await frames.send(ipc.CollectStats(round=1))
            assert isinstance(await frames.receive(), ipc.StatsReport)
            await trimmed(1)

            args = msgspec.json.encode(tree_of(P.args("loadbalancer_create"), "1111"))
            op = Operation(op_id=1, method="loadbalancer_create", args=args, lb_id=LB_OP)
            await frames.send(ipc.Submit(op=op))
            done = await frames.receive()
            assert isinstance(done, ipc.Done) and done.outcome.failure is None
            while True:  # until the actor retired
                await frames.send(ipc.Ping())
                pong = await frames.receive()
                if isinstance(pong, ipc.Pong) and pong.actors == 0:
                    break
                await trio.sleep(0.02)
            await trimmed(2)
            await frames.send(ipc.Ping())
            assert isinstance(await frames.receive(), ipc.Pong)
            await frames.send(ipc.Ping())
            assert isinstance(await frames.receive(), ipc.Pong)
            await trio.testing.wait_all_tasks_blocked()
            assert len(trims) == 2
