"""The pure shard bookkeeping of cluster mode (lbactors/cluster.py): no broker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbactors.cluster import Presence, ShardState, ShardTable, fair_share
from lbactors.statistics import owned_throughout


def test_a_consumer_is_active_only_once_something_arrives() -> None:
    table = ShardTable(4)
    epoch = table.consuming(2)
    assert table.shards[2].state is ShardState.WAITING
    assert table.held() == []
    assert table.delivered(2, epoch) == (True, True)
    assert table.held() == [2]
    assert table.delivered(2, epoch) == (True, False)  # only the first is first


def test_a_delivery_of_an_old_epoch_is_not_handed_on() -> None:
    table = ShardTable(2)
    old = table.consuming(0)
    table.lost(0)
    new = table.consuming(0)
    assert new != old
    assert table.delivered(0, old) == (False, False)
    assert not table.accepts(0, old)
    assert table.delivered(0, new) == (True, True)
    assert table.accepts(0, new)


def test_a_probe_settles_only_after_what_came_before_it() -> None:
    table = ShardTable(1)
    epoch = table.consuming(0)
    table.delivered(0, epoch)
    table.started(0, epoch, 10)
    table.started(0, epoch, 11)
    table.probe_published(0, "me/1")
    table.delivered(0, epoch)
    table.probe_arrived(0, epoch, "me/1")
    assert table.shards[0].state is ShardState.ACTIVE  # 10 and 11 still run
    table.started(0, epoch, 12)  # after the probe: not waited for
    table.finished(0, epoch, 11)
    assert table.settled() == {}
    table.finished(0, epoch, 10)
    assert table.settled() == {0: epoch}


def test_a_probe_published_before_active_does_not_settle() -> None:
    """While WAITING, the backlog before our probe may be another daemon's to run."""
    table = ShardTable(1)
    epoch = table.consuming(0)
    table.probe_published(0, "me/1")  # WAITING: not remembered
    table.delivered(0, epoch)
    table.probe_arrived(0, epoch, "me/1")
    assert table.shards[0].state is ShardState.ACTIVE
    assert table.wants_probe(0)
    table.probe_published(0, "me/2")
    table.delivered(0, epoch)
    table.probe_arrived(0, epoch, "other/9")  # someone else's: says nothing of our backlog
    assert table.shards[0].state is ShardState.ACTIVE
    table.probe_arrived(0, epoch, "me/2")
    assert table.shards[0].state is ShardState.SETTLED
    assert not table.wants_probe(0)


def test_losing_the_channel_forgets_the_shard() -> None:
    table = ShardTable(3)
    for index in range(3):
        epoch = table.consuming(index)
        table.delivered(index, epoch)
    assert table.held() == [0, 1, 2]
    table.lose_all()
    assert table.held() == []
    assert all(shard.state is None for shard in table.shards)


def test_release_picks_the_idlest_shards_above_the_fair_share() -> None:
    table = ShardTable(12)
    epochs = {}
    for index in range(6):
        epochs[index] = table.consuming(index)
        table.delivered(index, epochs[index])
    table.started(0, epochs[0], 1)
    table.started(1, epochs[1], 2)
    table.started(1, epochs[1], 3)
    assert table.to_release(2) == []  # fair = 6
    chosen = table.to_release(3)  # fair = 4: two go, the idle ones, highest index first
    assert chosen == [5, 4]
    for index in chosen:
        table.releasing(index)
    assert table.to_release(3) == []  # already given away
    assert not table.accepts(5, epochs[5])
    assert table.held() == [0, 1, 2, 3, 4, 5]  # still running what it started


@given(shards=st.integers(1, 999), daemons=st.integers(1, 50))
def test_fair_shares_cover_every_shard(shards: int, daemons: int) -> None:
    fair = fair_share(shards, daemons)
    assert fair * daemons >= shards
    assert (fair - 1) * daemons < shards


def test_presence_counts_recent_daemons_and_itself() -> None:
    presence = Presence("me", horizon=3.0)
    assert presence.count(0.0) == 1
    presence.heard("a", 1.0)
    presence.heard("b", 2.0)
    presence.heard("me", 2.0)
    assert presence.count(3.0) == 3
    assert presence.count(4.5) == 2  # a is gone: b and me


def test_owned_throughout_needs_the_same_epoch() -> None:
    assert owned_throughout({1: 5, 2: 6, 3: 7}, {1: 5, 2: 9}) == {1}


def test_a_table_needs_a_shard() -> None:
    with pytest.raises(ValueError):
        ShardTable(0)


def test_a_release_needs_a_daemon_below_its_share() -> None:
    """After a kill the dead daemon counts for the horizon; its last hello said it held its
    share, so the survivors (above the share) do not pass shards back and forth."""
    presence = Presence("me", horizon=3.0)
    presence.heard("survivor", 1.0, held=6)
    presence.heard("dead", 1.0, held=4)
    assert presence.count(1.5) == 3
    assert not presence.someone_below(fair_share(12, 3), 1.5)
    presence.heard("newcomer", 2.0, held=0)
    assert presence.someone_below(fair_share(12, 4), 2.0)
    assert not presence.someone_below(fair_share(12, 4), 5.5)  # forgotten
