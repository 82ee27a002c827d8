"""amqps:// end to end: the client speaks TLS to a terminating proxy in front of the broker.

The broker here listens in plain AMQP only; a small trio TLS proxy with a certificate made by
``openssl`` stands in for a TLS listener, so the client's TLS path (handshake, certificate and
host name check, framing over trio.SSLStream) runs for real.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trio

from lbactors.amqp.connection import open_connection
from lbactors.amqp.errors import ConnectionClosed

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def _pipe(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
    try:
        async for chunk in source:
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _tls_proxy(
    certificate: tuple[Path, Path], *, task_status: trio.TaskStatus[int]
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*map(str, certificate))

    async def handle(client: trio.SSLStream[trio.SocketStream]) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", 5672) as broker:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pipe, client, broker)
                nursery.start_soon(_pipe, broker, client)

    listeners = await trio.open_ssl_over_tcp_listeners(0, server_context, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        task_status.started(port)


async def test_amqps_round_trip(
    certificate: tuple[Path, Path], unique_prefix: str, nursery: trio.Nursery
) -> None:
    port = await nursery.start(_tls_proxy, certificate)
    context = ssl.create_default_context(cafile=str(certificate[0]))
    url = f"amqps://guest:guest@127.0.0.1:{port}/"
    async with open_connection(url, ssl_context=context) as connection:
        channel = await connection.open_channel()
        queue, _, _ = await channel.queue_declare(f"{unique_prefix}_tls", auto_delete=True)
        await channel.confirm_select()
        confirmation = await channel.publish("", queue, b"over TLS" * 10_000)
        assert confirmation is not None
        await confirmation.wait()
        consumer = await channel.basic_consume(queue, no_ack=True)
        with trio.fail_after(10):
            delivery = await consumer.__anext__()
        assert delivery.body == b"over TLS" * 10_000


async def test_amqps_refuses_an_untrusted_certificate(
    certificate: tuple[Path, Path], nursery: trio.Nursery
) -> None:
    port = await nursery.start(_tls_proxy, certificate)
    url = f"amqps://guest:guest@127.0.0.1:{port}/"
    # the default context trusts the system CAs only, not our self-signed certificate
    with pytest.raises(ConnectionClosed, match="CERTIFICATE_VERIFY_FAILED"):
        with trio.fail_after(10):
            async with open_connection(url, ssl_context=ssl.create_default_context()):
                pass


async def test_amqps_moves_on_from_a_host_whose_tls_handshake_fails(
    certificate: tuple[Path, Path], nursery: trio.Nursery
) -> None:
    """Host 1 is the broker's plain AMQP port (no TLS there), host 2 the TLS proxy: each host
    gets its own TLS handshake (and host name check), and a failed one moves on."""
    port = await nursery.start(_tls_proxy, certificate)
    context = ssl.create_default_context(cafile=str(certificate[0]))
    url = f"amqps://guest:guest@127.0.0.1:5672,guest:guest@127.0.0.1:{port}/"
    failed: list[tuple[str, str]] = []
    with trio.fail_after(10):
        async with open_connection(
            url,
            ssl_context=context,
            on_host_failed=lambda host, error: failed.append((host.address, str(error))),
        ) as connection:
            assert connection.broker_index == 1
            await connection.open_channel()
    ((address, error),) = failed
    assert address == "127.0.0.1:5672"
    assert "TLS handshake with 127.0.0.1:5672 failed" in error
