"""The sans-IO connection class: the handshake, tune negotiation and connection-level methods,
tested with bytes only (no trio, no socket).

The server's frames are built with pamqp's own marshal and what the client answers is decoded
with pamqp's unmarshal, so the protocol object is checked against an independent codec.
"""

from __future__ import annotations

import pytest
from pamqp import commands, frame

from lbactors.amqp.errors import AuthenticationError, ConnectionClosed, FrameError
from lbactors.amqp.protocol import (
    CHANNEL_MAX,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    Blocked,
    CloseOkReceived,
    ConnectionProtocol,
    ServerClosed,
    Unblocked,
)

START = commands.Connection.Start(
    server_properties={"product": "RabbitMQ", "version": "3.10.8"}, mechanisms="AMQPLAIN PLAIN"
)
RABBIT_TUNE = commands.Connection.Tune(2047, 131072, 60)
CLOSE_OK = frame.marshal(commands.Connection.CloseOk(), 0)


def server(*methods) -> bytes:
    return b"".join(frame.marshal(method, 0) for method in methods)


def client_frames(data: bytes) -> list:
    """What the client sent, as pamqp frames (channel, frame)."""
    frames = []
    pos = 0
    while pos < len(data):
        size = 8 + int.from_bytes(data[pos + 3 : pos + 7])
        _, channel, value = frame.unmarshal(data[pos : pos + size])
        frames.append((channel, value))
        pos += size
    return frames


def new_protocol(**kw) -> ConnectionProtocol:
    kw.setdefault("username", "guest")
    kw.setdefault("password", "guest")
    kw.setdefault("peer", "127.0.0.1:5672")
    return ConnectionProtocol(**kw)


def logged_in(**kw) -> ConnectionProtocol:
    """A protocol that sent start-ok and waits for connection.tune."""
    protocol = new_protocol(**kw)
    protocol.initiate()
    protocol.receive_handshake_data(server(START))
    protocol.data_to_send()
    return protocol


def tuned(tune=RABBIT_TUNE, **kw) -> tuple[ConnectionProtocol, list]:
    """A protocol that answered ``tune``; returns it and the frames it sent."""
    protocol = logged_in(**kw)
    protocol.receive_handshake_data(server(tune))
    return protocol, client_frames(protocol.data_to_send())


def opened(**kw) -> ConnectionProtocol:
    protocol, _ = tuned(**kw)
    protocol.receive_handshake_data(server(commands.Connection.OpenOk()))
    assert protocol.is_open
    return protocol


# -- the handshake, step by step -------------------------------------------------------------


def test_handshake_against_rabbitmq_frames_byte_for_byte():
    protocol = new_protocol(
        username="lb user", password="p@ss", vhost="octavia", client_name="lbactors-test"
    )
    assert protocol.initiate() == PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"
    assert protocol.phase == "the protocol negotiation"
    assert protocol.data_to_send() == b""

    protocol.receive_handshake_data(server(START))
    ((channel, start_ok),) = client_frames(protocol.data_to_send())
    assert channel == 0
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert start_ok.mechanism == "PLAIN"
    assert start_ok.response == "\0lb user\0p@ss"
    assert start_ok.locale == "en_US"
    properties = start_ok.client_properties
    assert properties["connection_name"] == "lbactors-test"
    assert properties["capabilities"]["publisher_confirms"] is True
    assert properties["capabilities"]["connection.blocked"] is True
    assert properties["capabilities"]["authentication_failure_close"] is True
    assert protocol.server_properties["product"] == "RabbitMQ"
    assert protocol.phase == "login" and not protocol.is_open

    protocol.receive_handshake_data(server(RABBIT_TUNE))
    sent = protocol.data_to_send()
    (_, tune_ok), (_, open_) = client_frames(sent)  # one write: tune-ok, then open
    assert isinstance(tune_ok, commands.Connection.TuneOk)
    assert (tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat) == (2047, 131072, 60)
    assert isinstance(open_, commands.Connection.Open)
    assert open_.virtual_host == "octavia"
    assert protocol.phase == "connection.open" and not protocol.is_open

    protocol.receive_handshake_data(server(commands.Connection.OpenOk()))
    assert protocol.is_open
    assert protocol.data_to_send() == b""
    assert (protocol.channel_max, protocol.frame_max, protocol.heartbeat) == (2047, 131072, 60)


def test_handshake_fed_one_byte_at_a_time_with_heartbeats_between_frames():
    protocol = new_protocol()
    protocol.initiate()
    sent = bytearray()
    for chunk in (
        server(START),
        HEARTBEAT_FRAME + server(RABBIT_TUNE),
        server(commands.Connection.OpenOk()),
    ):
        for i in range(len(chunk)):
            assert not protocol.is_open
            protocol.receive_handshake_data(chunk[i : i + 1])
            sent += protocol.data_to_send()
    assert protocol.is_open
    names = [method.name for _, method in client_frames(bytes(sent))]
    assert names == ["Connection.StartOk", "Connection.TuneOk", "Connection.Open"]


# -- tune negotiation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_tune", "client", "expected"),
    [
        pytest.param((2047, 131072, 60), {}, (2047, 131072, 60), id="rabbitmq-defaults"),
        pytest.param((0, 0, 0), {}, (CHANNEL_MAX, 131072, 60), id="server-0-is-no-limit"),
        pytest.param(
            (65535, 1 << 20, 600), {}, (CHANNEL_MAX, 131072, 60), id="client-caps-the-server"
        ),
        pytest.param((100, 8192, 10), {}, (100, 8192, 10), id="server-caps-the-client"),
        pytest.param((2047, 131072, 60), {"heartbeat": 0}, (2047, 131072, 0), id="client-hb-0"),
        pytest.param((2047, 131072, 0), {"heartbeat": 30}, (2047, 131072, 30), id="server-hb-0"),
        pytest.param((0, 0, 0), {"heartbeat": 0}, (CHANNEL_MAX, 131072, 0), id="both-hb-0"),
        pytest.param(
            (2047, 131072, 60), {"frame_max": 4096}, (2047, 4096, 60), id="client-frame-min"
        ),
        pytest.param((0, 4096, 60), {}, (CHANNEL_MAX, 4096, 60), id="server-frame-min"),
    ],
)
def test_tune_negotiation(server_tune, client, expected):
    protocol, frames = tuned(commands.Connection.Tune(*server_tune), **client)
    tune_ok = frames[0][1]
    assert (tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat) == expected
    assert (protocol.channel_max, protocol.frame_max, protocol.heartbeat) == expected
    frame_max = expected[1]
    # the decoder refuses frames over the negotiated size, the encoder splits bodies under it
    assert protocol.decoder.frame_max == frame_max
    assert protocol.encoder.frame_max == frame_max
    protocol.receive_handshake_data(server(commands.Connection.OpenOk()))
    too_big = frame.marshal(commands.Basic.Ack(1, False), 1)[:3] + (frame_max - 7).to_bytes(4)
    with pytest.raises(FrameError, match=f"exceeds frame_max {frame_max}"):
        protocol.decoder.feed(too_big)


@pytest.mark.parametrize("server_frame_max", [1, 512, 4095])
def test_server_frame_max_below_the_minimum_is_a_clear_error(server_frame_max):
    protocol = logged_in()
    tune = commands.Connection.Tune(2047, server_frame_max, 60)
    with pytest.raises(ConnectionClosed) as info:
        protocol.receive_handshake_data(server(tune))
    assert f"frame_max {server_frame_max}, below AMQP's minimum of 4096" in str(info.value)
    assert protocol.data_to_send() == b""  # no tune-ok, no open
    assert not protocol.is_open


def test_client_frame_max_below_the_minimum_is_refused_before_anything_is_sent():
    with pytest.raises(ValueError, match="at least 4096, got 4095"):
        new_protocol(frame_max=4095)


# -- refusals and closes during the handshake ---------------------------------------------------


def test_refused_login_is_an_authentication_error_and_the_close_is_answered():
    protocol = logged_in(username="octavia")
    refusal = commands.Connection.Close(
        403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN", 0, 0
    )
    with pytest.raises(AuthenticationError) as info:
        protocol.receive_handshake_data(server(refusal))
    assert info.value.reply_code == 403
    assert str(info.value) == (
        "AMQP login refused (403): user 'octavia' refused by 127.0.0.1:5672: "
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN"
    )
    assert protocol.data_to_send() == CLOSE_OK
    assert protocol.phase == "closed" and not protocol.is_open
    with pytest.raises(RuntimeError, match="handshake is over"):
        protocol.receive_handshake_data(server(RABBIT_TUNE))


@pytest.mark.parametrize("code", [403, 530])
def test_refused_vhost_is_an_authentication_error(code):
    protocol, _ = tuned(vhost="lb")
    refusal = commands.Connection.Close(code, "NOT_ALLOWED - access to vhost 'lb' refused", 10, 40)
    with pytest.raises(AuthenticationError) as info:
        protocol.receive_handshake_data(server(refusal))
    assert info.value.reply_code == code
    assert "user 'guest' may not open vhost 'lb'" in str(info.value)
    assert protocol.data_to_send() == CLOSE_OK


@pytest.mark.parametrize("when", ["login", "connection.open"])
def test_server_close_mid_handshake_is_connection_closed_and_answered(when):
    protocol = logged_in() if when == "login" else tuned()[0]
    assert protocol.phase == when
    forced = commands.Connection.Close(320, "CONNECTION_FORCED - broker forced shutdown", 0, 0)
    with pytest.raises(ConnectionClosed) as info:
        protocol.receive_handshake_data(server(forced))
    assert type(info.value) is ConnectionClosed  # not a refused login
    assert info.value.reply_code == 320
    assert info.value.reply_text == "CONNECTION_FORCED - broker forced shutdown"
    assert protocol.data_to_send() == CLOSE_OK


def test_eof_after_the_login_hints_at_the_credentials_elsewhere_it_does_not():
    with pytest.raises(AuthenticationError, match="wrong user name or password"):
        logged_in().receive_handshake_data(b"")
    for protocol in (new_protocol(), tuned()[0]):
        with pytest.raises(ConnectionClosed) as info:
            protocol.receive_handshake_data(b"")
        assert type(info.value) is ConnectionClosed
        assert f"closed the socket during {protocol.phase}" in info.value.reply_text


def test_server_without_plain_authentication_is_refused():
    protocol = new_protocol()
    with pytest.raises(ConnectionClosed, match="does not offer PLAIN"):
        protocol.receive_handshake_data(
            server(commands.Connection.Start(mechanisms="AMQPLAIN EXTERNAL"))
        )
    assert protocol.data_to_send() == b""


@pytest.mark.parametrize(
    ("prefix", "unexpected", "match"),
    [
        ((), commands.Connection.OpenOk(), "expected connection.start"),
        ((START,), commands.Connection.OpenOk(), "expected connection.tune"),
        ((START, RABBIT_TUNE), RABBIT_TUNE, "expected connection.open-ok"),
    ],
)
def test_out_of_order_methods_fail_the_handshake(prefix, unexpected, match):
    protocol = new_protocol()
    for method in prefix:
        protocol.receive_handshake_data(server(method))
    protocol.data_to_send()
    with pytest.raises(ConnectionClosed, match=match):
        protocol.receive_handshake_data(server(unexpected))


def test_garbage_during_the_handshake_is_a_frame_error():
    with pytest.raises(ConnectionClosed) as info:
        new_protocol().receive_handshake_data(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert info.value.reply_code == 501
    assert "FRAME_ERROR during the protocol negotiation" in info.value.reply_text


def test_frames_after_open_ok_in_the_same_read_fail_the_handshake():
    protocol, _ = tuned()
    with pytest.raises(ConnectionClosed, match="unexpected frames after connection.open-ok"):
        protocol.receive_handshake_data(
            server(commands.Connection.OpenOk(), commands.Connection.Blocked("x"))
        )


# -- the open connection --------------------------------------------------------------------------


def test_connection_methods_once_open():
    protocol = opened()
    assert protocol.handle_connection_method(commands.Connection.Blocked("low on memory")) == (
        Blocked("low on memory")
    )
    assert protocol.handle_connection_method(commands.Connection.Unblocked()) == Unblocked()
    assert protocol.handle_connection_method(commands.Connection.CloseOk()) == CloseOkReceived()
    assert protocol.handle_connection_method(commands.Connection.UpdateSecretOk()) is None
    assert protocol.data_to_send() == b""

    event = protocol.handle_connection_method(
        commands.Connection.Close(320, "CONNECTION_FORCED - test", 0, 0)
    )
    assert isinstance(event, ServerClosed)
    assert type(event.error) is ConnectionClosed
    assert (event.error.reply_code, event.error.reply_text) == (320, "CONNECTION_FORCED - test")
    assert protocol.data_to_send() == CLOSE_OK


def test_our_close_and_a_close_for_a_frame_error():
    protocol = opened()
    protocol.close()
    ((channel, close),) = client_frames(protocol.data_to_send())
    assert channel == 0 and isinstance(close, commands.Connection.Close)
    assert (close.reply_code, close.reply_text) == (200, "Normal shutdown")

    error = protocol.close_for_frame_error(FrameError("x" * 300))
    assert (error.reply_code, error.reply_text) == (501, "FRAME_ERROR - " + "x" * 300)
    ((_, close),) = client_frames(protocol.data_to_send())
    assert close.reply_code == 501
    assert close.reply_text == ("FRAME_ERROR - " + "x" * 300)[:255]
