"""Which cluster shards this daemon holds, and which it should let go (docs/cluster.md §4–6).

Pure bookkeeping for the gateway: no I/O, no trio, no logging. Correctness (one owner per
shard at a time, order, nothing lost) comes from the broker (single-active-consumer quorum
queues); everything decided here only affects *balance* and what this daemon may *report*.

A shard's state here, per consumer epoch (a new ``basic.consume`` starts a new epoch):

- ``WAITING``: registered on the shard queue, nothing received: active or not, unknown;
- ``ACTIVE``: something arrived on this consumer, so the broker made it the active one, and it
  stays so until its channel closes (only the active consumer of a single-active-consumer
  queue gets deliveries);
- ``SETTLED``: active, and everything queued before it became active has been run: a probe
  this daemon published while active came back and every delivery before it was settled;
- ``RELEASING``: balance gives it away: no new delivery is handed on, the started ones
  settle, then the channel closes (the broker returns the rest, in order, to the next one).

RabbitMQ 3.10 counts only the active consumer of such a queue in ``consumer_count``
(``tests/test_cluster_broker.py``), so the number of daemons comes from presence hellos.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

__all__ = ["Presence", "Shard", "ShardState", "ShardTable", "fair_share"]


class ShardState(enum.Enum):
    WAITING = "waiting"
    ACTIVE = "active"
    SETTLED = "settled"
    RELEASING = "releasing"


#: states in which this daemon runs the shard's operations (and reports its load balancers)
HELD = frozenset({ShardState.ACTIVE, ShardState.SETTLED, ShardState.RELEASING})


@dataclass(slots=True)
class Shard:
    index: int
    #: None: no consumer registered (not connected, or between release and re-consume)
    state: ShardState | None = None
    epoch: int = 0
    #: deliveries of this epoch handed on and not settled yet (their op ids)
    in_flight: set[int] = field(default_factory=set)
    #: our probes published while ACTIVE in this epoch: their arrival can settle the shard
    probes: set[str] = field(default_factory=set)
    #: op ids that must settle before the shard is SETTLED (those before our probe)
    settling: set[int] | None = None
    #: no delivery received yet in this epoch (the first one decides the takeover delay)
    fresh: bool = True


def fair_share(shards: int, daemons: int) -> int:
    """The most shards one daemon should hold: ``ceil(S / N)``."""
    return math.ceil(shards / max(daemons, 1))


class ShardTable:
    """The state of every shard of this daemon; see the module docstring."""

    def __init__(self, shards: int) -> None:
        if shards < 1:
            raise ValueError(f"shards must be >= 1, not {shards}")
        self.shards = [Shard(i) for i in range(shards)]
        self._epochs = 0

    def __len__(self) -> int:
        return len(self.shards)

    # ----------------------------------------------------------------- consumer lifecycle

    def consuming(self, index: int) -> int:
        """A consumer was registered on shard ``index``: a new epoch, WAITING. Returns it."""
        self._epochs += 1
        shard = self.shards[index]
        shard.state = ShardState.WAITING
        shard.epoch = self._epochs
        shard.in_flight = set()
        shard.probes = set()
        shard.settling = None
        shard.fresh = True
        return shard.epoch

    def lost(self, index: int) -> None:
        """Its channel (or the connection) closed: nothing is held any more."""
        shard = self.shards[index]
        shard.state = None
        shard.in_flight = set()
        shard.probes = set()
        shard.settling = None

    def lose_all(self) -> None:
        for shard in self.shards:
            self.lost(shard.index)

    # ----------------------------------------------------------------- deliveries

    def delivered(self, index: int, epoch: int) -> tuple[bool, bool]:
        """Something arrived on shard ``index``'s consumer of ``epoch``.

        Returns ``(current, first)``: whether that consumer is still the current one (a late
        delivery of a closed epoch is not handed on) and whether it is the first of the epoch.
        """
        shard = self.shards[index]
        if shard.epoch != epoch or shard.state is None:
            return False, False
        if shard.state is ShardState.WAITING:
            shard.state = ShardState.ACTIVE
        first = shard.fresh
        shard.fresh = False
        return True, first

    def accepts(self, index: int, epoch: int) -> bool:
        """Whether a delivery of ``epoch`` may be handed on (not while RELEASING)."""
        shard = self.shards[index]
        return shard.epoch == epoch and shard.state in (ShardState.ACTIVE, ShardState.SETTLED)

    def started(self, index: int, epoch: int, op_id: int) -> None:
        shard = self.shards[index]
        if shard.epoch == epoch:
            shard.in_flight.add(op_id)

    def finished(self, index: int, epoch: int, op_id: int) -> None:
        """A delivery handed on was settled (acked, nacked or rejected)."""
        shard = self.shards[index]
        if shard.epoch != epoch:
            return
        shard.in_flight.discard(op_id)
        if shard.settling is not None:
            shard.settling.discard(op_id)
            self._maybe_settle(shard)

    # ----------------------------------------------------------------- probes

    def wants_probe(self, index: int) -> bool:
        """Whether to probe this shard: anything not SETTLED (and consumed) here."""
        state = self.shards[index].state
        return state in (ShardState.WAITING, ShardState.ACTIVE)

    def probe_published(self, index: int, probe_id: str) -> None:
        """Remember a probe published while ACTIVE: its arrival settles the shard."""
        shard = self.shards[index]
        if shard.state is ShardState.ACTIVE:
            shard.probes.add(probe_id)

    def probe_arrived(self, index: int, epoch: int, probe_id: str) -> None:
        """A probe arrived on shard ``index`` (after :meth:`delivered`)."""
        shard = self.shards[index]
        if shard.epoch != epoch or probe_id not in shard.probes:
            return
        shard.probes.clear()
        if shard.state is ShardState.ACTIVE and shard.settling is None:
            shard.settling = set(shard.in_flight)
            self._maybe_settle(shard)

    @staticmethod
    def _maybe_settle(shard: Shard) -> None:
        if shard.settling is not None and not shard.settling and shard.state is ShardState.ACTIVE:
            shard.state = ShardState.SETTLED
            shard.settling = None

    # ----------------------------------------------------------------- views

    def held(self) -> list[int]:
        """Shards whose operations run here (ACTIVE, SETTLED or RELEASING)."""
        return [s.index for s in self.shards if s.state in HELD]

    def settled(self) -> dict[int, int]:
        """SETTLED shards and their epochs (the repair compares two such snapshots)."""
        return {s.index: s.epoch for s in self.shards if s.state is ShardState.SETTLED}

    # ----------------------------------------------------------------- balance

    def to_release(self, daemons: int) -> list[int]:
        """Shards to give away so that this daemon holds at most its fair share.

        Those with the fewest deliveries in flight go first (ties: the highest index), so the
        release waits as little as possible. Shards already RELEASING count as given away.
        """
        fair = fair_share(len(self.shards), daemons)
        mine = [s for s in self.shards if s.state in (ShardState.ACTIVE, ShardState.SETTLED)]
        excess = len(mine) - fair
        if excess <= 0:
            return []
        mine.sort(key=lambda s: (len(s.in_flight), -s.index))
        return [s.index for s in mine[:excess]]

    def releasing(self, index: int) -> None:
        self.shards[index].state = ShardState.RELEASING

    def idle(self, index: int) -> bool:
        return not self.shards[index].in_flight


class Presence:
    """The daemons heard from recently (their hellos on the presence fanout, each with the
    number of shards it holds), this one too."""

    def __init__(self, me: str, horizon: float) -> None:
        self.me = me
        self.horizon = horizon
        self._last: dict[str, tuple[float, int]] = {}

    def heard(self, daemon: str, now: float, held: int = 0) -> None:
        self._last[daemon] = (now, held)

    def _expire(self, now: float) -> None:
        cutoff = now - self.horizon
        for daemon in [d for d, (t, _) in self._last.items() if t < cutoff]:
            del self._last[daemon]

    def count(self, now: float) -> int:
        """How many daemons are up: this one and those heard within ``horizon``."""
        self._expire(now)
        return len(set(self._last) | {self.me})

    def someone_below(self, fair: int, now: float) -> bool:
        """Whether another daemon said it holds fewer than ``fair`` shards: only then is a
        release worth it. (A daemon just killed still counts for ``horizon``; without this
        its peers would pass shards back and forth until it is forgotten.)"""
        self._expire(now)
        return any(held < fair for d, (_, held) in self._last.items() if d != self.me)
