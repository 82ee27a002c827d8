"""open_connection with several hosts, over real sockets on 127.0.0.1: a host that refuses,
one that accepts and says nothing, one that refuses the login; the real broker last."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from lbactors.amqp.broker_url import BrokerHost
from lbactors.amqp.connection import HostFailed, open_connection
from lbactors.amqp.errors import AMQPError, AuthenticationError, ConnectionClosed

pytestmark = pytest.mark.broker

BROKER = "guest:guest@127.0.0.1:5672"


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (so a connect is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def silent_port(nursery: trio.Nursery) -> AsyncIterator[int]:
    """A port that accepts TCP connections and never says a word (a hung broker)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, hold, listeners)
    yield listeners[0].socket.getsockname()[1]


@pytest.fixture
def slow_autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 0.1 s of real idleness: the real broker answers
    long before that, a silent host's 10 s timeout passes in 0.1 s."""
    return trio.testing.MockClock(autojump_threshold=0.1)


def recorder() -> tuple[list[tuple[str, AMQPError]], HostFailed]:
    failed: list[tuple[str, AMQPError]] = []

    def on_host_failed(host: BrokerHost, error: AMQPError) -> None:
        failed.append((host.address, error))

    return failed, on_host_failed


async def test_opens_on_the_second_host_when_the_first_refuses(amqp_url: str) -> None:
    dead = unused_port()
    failed, on_host_failed = recorder()
    with trio.fail_after(15):
        async with open_connection(
            f"amqp://guest:guest@127.0.0.1:{dead},{BROKER}/", on_host_failed=on_host_failed
        ) as connection:
            assert connection.broker is not None
            assert connection.broker.address == "127.0.0.1:5672"
            assert connection.broker_index == 1
            channel = await connection.open_channel()
            await channel.queue_declare("", exclusive=True)
    ((address, error),) = failed
    assert address == f"127.0.0.1:{dead}"
    assert isinstance(error, ConnectionClosed)
    assert f"could not connect to 127.0.0.1:{dead}" in str(error)


async def test_the_round_starts_at_first_host_and_wraps_around(amqp_url: str) -> None:
    dead = unused_port()
    failed, on_host_failed = recorder()
    with trio.fail_after(15):
        async with open_connection(
            f"amqp://{BROKER},127.0.0.1:{dead}/", first_host=1, on_host_failed=on_host_failed
        ) as connection:
            assert connection.broker_index == 0
    assert [address for address, _ in failed] == [f"127.0.0.1:{dead}"]


async def test_each_host_is_bounded_by_the_connect_timeout(
    amqp_url: str, silent_port: int, slow_autojump_clock: trio.testing.MockClock
) -> None:
    failed, on_host_failed = recorder()
    with trio.fail_after(60):
        start = trio.current_time()
        async with open_connection(
            f"amqp://127.0.0.1:{silent_port},{BROKER}/",
            connect_timeout=10,
            on_host_failed=on_host_failed,
        ) as connection:
            assert connection.broker_index == 1
        waited = trio.current_time() - start
    ((address, error),) = failed
    assert address == f"127.0.0.1:{silent_port}"
    assert f"no AMQP handshake with 127.0.0.1:{silent_port} within 10 s" in str(error)
    assert 10 <= waited < 20


async def test_a_refused_login_moves_on_to_the_next_host(amqp_url: str) -> None:
    failed, on_host_failed = recorder()
    with trio.fail_after(15):
        async with open_connection(
            f"amqp://guest:wrong@127.0.0.1:5672,{BROKER}/", on_host_failed=on_host_failed
        ) as connection:
            assert connection.broker_index == 1
    ((address, error),) = failed
    assert address == "127.0.0.1:5672"
    assert isinstance(error, AuthenticationError)


async def test_when_no_host_opens_the_error_names_each_and_why(amqp_url: str) -> None:
    first, second = unused_port(), unused_port()
    with trio.fail_after(15):
        with pytest.raises(ConnectionClosed) as info:
            async with open_connection(
                f"amqp://guest:guest@127.0.0.1:{first},guest:wrong@127.0.0.1:5672/"
            ):
                pytest.fail("opened")
    text = str(info.value)
    assert not isinstance(info.value, AuthenticationError)  # one host only refused the login
    assert "none of the 2 brokers could be opened" in text
    assert f"127.0.0.1:{first}: could not connect" in text
    assert "127.0.0.1:5672: " in text and "ACCESS_REFUSED" in text
    assert "wrong" not in text  # the password is never in an error
    with trio.fail_after(15):
        with pytest.raises(AuthenticationError):
            async with open_connection(
                "amqp://guest:wrong@127.0.0.1:5672,guest:wrong2@127.0.0.1:5672/"
            ):
                pytest.fail("logged in with wrong passwords")
        # a single host: its own error, as before several hosts were possible
        with pytest.raises(ConnectionClosed) as single:
            async with open_connection(f"amqp://127.0.0.1:{second}/"):
                pytest.fail("opened")
    assert str(single.value).startswith(
        f"AMQP connection closed (0): could not connect to 127.0.0.1:{second}"
    )
