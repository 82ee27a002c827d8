"""Shared fixtures: the real broker on 127.0.0.1 and unique names per test."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from tests.daemon_process import NotifySocket

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _broker_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def amqp_url() -> str:
    if not _broker_answers():
        pytest.fail("RabbitMQ does not answer on 127.0.0.1:5672 (start it: rabbitmq-server -detached)")
    return AMQP_URL


@pytest.fixture
def unique_prefix() -> str:
    """A name prefix no other test uses, so tests never see each other's messages."""
    return f"lbt_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def names(unique_prefix: str) -> dict[str, str]:
    """The daemon's and the driver's topics and exchange, unique to the test."""
    return {
        "topic": f"{unique_prefix}_lb_listener",
        "driver_topic": f"{unique_prefix}_driver_listener",
        "exchange": f"{unique_prefix}_common",
    }


@pytest.fixture
async def notify_socket(nursery: trio.Nursery) -> AsyncIterator[NotifySocket]:
    """A systemd notification socket for a daemon started by the test."""
    notify = NotifySocket()
    await notify.bind()
    nursery.start_soon(notify.serve)
    yield notify
    notify.close()


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "--quiet", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@pytest.fixture
def vhost_url(amqp_url: str, unique_prefix: str) -> Iterator[str]:
    """The URL of a vhost of this test's own (deleted afterwards, with all it holds): for
    tests that close every connection, or that use oslo's fixed production names."""
    name = f"{unique_prefix}_vh"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield f"{amqp_url.rstrip('/')}/{name}"
    rabbitmqctl("delete_vhost", name)


def close_vhost_connections(url: str) -> None:
    """Make the broker drop every connection to the vhost of ``url``."""
    vhost = url.rsplit("/", 1)[1]
    rabbitmqctl("close_all_connections", "-p", vhost, "lbactors test: forced close")
