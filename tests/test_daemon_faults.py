"""The whole daemon under arbitrary input: ``lbactors serve`` fed what hypothesis makes.

``test_bad_input.py`` fuzzes the pure decode path; here the same bodies (and arbitrary bytes)
go through the broker into a running daemon, batch after batch, and after each batch a good
operation must still complete: no message may crash the supervisor or a worker, wedge a
queue, or come back (requeued) to crash the next daemon.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon_process import DaemonProcess, NotifySocket, _alive
from tests.octavia_side import LoadBalancerTree, OsloDriver, normalized
from tests.test_bad_input import oslo_bodies

pytestmark = pytest.mark.broker


@pytest.fixture
def driver(amqp_url: str, names: dict[str, str]) -> Iterator[OsloDriver]:
    oslo_driver = OsloDriver(amqp_url, **names).start()
    yield oslo_driver
    oslo_driver.stop()


def wait_for_lb(driver: OsloDriver, tree: LoadBalancerTree, expected: dict[str, object]) -> None:
    """Skip other statuses (ERROR for objects the fuzz named) until ``tree``'s arrives."""
    for _ in range(10_000):
        status = driver.next_status(timeout=30)
        lbs = status.get("loadbalancers") or []
        if lbs and lbs[0].get("id") == tree.lb_id:
            assert normalized(status) == normalized(expected)
            return
    raise AssertionError("the probe's status never came")


async def test_arbitrary_messages_never_crash_or_wedge_the_daemon(
    amqp_url: str, names: dict[str, str], driver: OsloDriver, tmp_path: Path
) -> None:
    notify = NotifySocket()
    await notify.bind()
    env = {
        "LBACTORS_AMQP_URL": amqp_url,
        "LBACTORS_AMQP_TOPIC": names["topic"],
        "LBACTORS_AMQP_DRIVER_TOPIC": names["driver_topic"],
        "LBACTORS_AMQP_EXCHANGE": names["exchange"],
        "LBACTORS_AMQP_MAX_BODY_BYTES": "65536",
        "LBACTORS_DAEMON_WORKERS": "2",
        "LBACTORS_STATS_INTERVAL": "0",
    }
    daemon = DaemonProcess(env, notify, tmp_path / "daemon.log")
    probes = iter(range(1000))
    published: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(notify.serve)
        try:
            await daemon.start()
            workers = daemon.worker_pids()
            assert len(workers) == 2

            @settings(max_examples=15, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(batch=st.lists(st.binary(max_size=600) | oslo_bodies(), min_size=10, max_size=40))
            def feed(batch: list[bytes]) -> None:
                with kombu.Connection(amqp_url.replace("amqp://", "pyamqp://", 1)) as connection:
                    producer = connection.Producer()
                    for body in batch:
                        producer.publish(body, exchange=names["exchange"],
                                         routing_key=names["topic"], retry=False)
                published.append(len(batch))
                tree = LoadBalancerTree(next(probes))
                method, kwargs, expected = tree.lifecycle()[0]
                driver.cast(method, **kwargs)
                wait_for_lb(driver, tree, expected)
                assert daemon.process is not None and daemon.process.returncode is None
                assert daemon.worker_pids() == workers  # no worker died either

            with trio.fail_after(240):
                await trio.to_thread.run_sync(feed, abandon_on_cancel=True)
            with kombu.Connection(amqp_url.replace("amqp://", "pyamqp://", 1)) as connection:
                _, ready, _ = connection.default_channel.queue_declare(names["topic"], passive=True)
            assert ready == 0  # nothing requeued
        finally:
            code = await daemon.stop()
            notify.close()
            nursery.cancel_scope.cancel()
    assert code == 0
    events = [line.get("event") for line in daemon.log_lines()]
    assert "worker died" not in events
    # the fuzz reached the daemon: most of it is refused (a few bodies are valid operations)
    refused = sum(1 for event in events if str(event).startswith("rejected "))
    assert sum(published) // 2 <= refused <= sum(published)
    assert not [pid for pid in workers if _alive(pid)]
