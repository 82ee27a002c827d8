"""The sans-IO half of the AMQP client: inbound framing and content assembly under any
chunking, a channel's inbound state machine, outbound publish splitting at frame_max, confirm
bookkeeping, backoff delays (the connection handshake: ``test_amqp_handshake.py``).

The server side of every stream is encoded with pamqp's own marshal (not with our encoder), so
the decoder is checked against an independent implementation.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands, frame, header, heartbeat

from lbactors.amqp.connection import reconnect_delays
from lbactors.amqp.errors import FrameError
from lbactors.amqp.protocol import (
    FRAME_OVERHEAD,
    HEARTBEAT_FRAME,
    PROPERTIES_KEPT,
    TRUNCATED_HEAD,
    ChannelProtocol,
    ConfirmsSettled,
    ConfirmTracker,
    ConsumerCancelled,
    Content,
    FlowRequested,
    FrameDecoder,
    PublishEncoder,
    Replied,
    Returned,
    ServerClosedChannel,
    ack_frame,
    body_frame_sizes,
    nack_frame,
    reject_frame,
)

FRAME_MAX = 4096
CHUNK = FRAME_MAX - FRAME_OVERHEAD
PROPS = commands.Basic.Properties(
    content_type="application/json", delivery_mode=2, headers={"x-actor": "lb-1", "n": 3}
)


def server_delivery(
    channel: int, tag: int, body: bytes, *, props=PROPS, chunk: int = CHUNK
) -> bytes:
    """A Basic.Deliver as the broker sends it, body split at ``chunk`` bytes, by pamqp."""
    out = [
        frame.marshal(
            commands.Basic.Deliver(f"ctag-{channel}", tag, tag % 2 == 0, "ex", f"rk.{tag}"), channel
        ),
        frame.marshal(header.ContentHeader(0, len(body), props), channel),
    ]
    for offset in range(0, len(body), chunk):
        out.append(frame.marshal(pamqp_body.ContentBody(body[offset : offset + chunk]), channel))
    return b"".join(out)


def around_frame_boundaries() -> st.SearchStrategy[int]:
    return st.one_of(
        st.builds(lambda k, d: max(0, k * CHUNK + d), st.integers(0, 4), st.integers(-2, 2)),
        st.integers(0, 5 * CHUNK),
    )


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list:
    events = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        events.extend(decoder.feed(data[start:end]))
    return events


def check_deliveries(events: list, expected: list[tuple[int, int, bytes]]) -> None:
    assert len(events) == len(expected)
    for (channel, event), (want_channel, tag, body) in zip(events, expected, strict=True):
        assert channel == want_channel
        assert isinstance(event, Content)
        assert event.method.name == "Basic.Deliver"
        assert event.method.delivery_tag == tag
        assert event.method.redelivered == (tag % 2 == 0)
        assert event.method.routing_key == f"rk.{tag}"
        assert event.method.consumer_tag == f"ctag-{channel}"
        assert event.body == body
        assert event.properties.headers == {"x-actor": "lb-1", "n": 3}
        assert event.properties.delivery_mode == 2


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(around_frame_boundaries(), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 10**6), max_size=40),
    heartbeats=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_deliveries_survive_any_chunking_with_heartbeats_between_frames(sizes, cuts, heartbeats):
    stream = bytearray()
    expected = []
    for tag, size in enumerate(sizes, start=1):
        body = bytes((tag + i) % 251 for i in range(size))
        channel = 1 + tag % 3
        if heartbeats[tag % 5]:
            stream += HEARTBEAT_FRAME
        stream += server_delivery(channel, tag, body)
        expected.append((channel, tag, body))
    stream += HEARTBEAT_FRAME
    decoder = FrameDecoder(FRAME_MAX)
    check_deliveries(feed_in_chunks(decoder, bytes(stream), cuts), expected)
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(around_frame_boundaries(), min_size=1, max_size=5),
    limit=st.integers(1, 3 * CHUNK),
    cuts=st.lists(st.integers(0, 10**6), max_size=40),
)
def test_a_body_over_max_body_keeps_only_its_head(sizes, limit, cuts):
    """Bodies over the limit arrive as their head with the announced size; the others,
    before and after them on the same stream, arrive whole."""
    stream = bytearray()
    bodies = []
    for tag, size in enumerate(sizes, start=1):
        body = bytes((tag + i) % 251 for i in range(size))
        stream += server_delivery(1 + tag % 2, tag, body)
        bodies.append(body)
    decoder = FrameDecoder(FRAME_MAX, max_body=limit)
    events = feed_in_chunks(decoder, bytes(stream), cuts)
    assert len(events) == len(bodies)
    for (_, content), body in zip(events, bodies, strict=True):
        assert content.body_size == len(body)
        if len(body) > limit:
            assert content.truncated
            assert content.body == body[: min(TRUNCATED_HEAD, limit)]
        else:
            assert not content.truncated and content.body == body
    assert decoder.buffered == 0


def test_heartbeats_between_body_frames_of_one_delivery_byte_by_byte():
    body = bytes(range(256)) * 40  # 10240 bytes: three body frames at frame_max 4096
    parts = [
        frame.marshal(commands.Basic.Deliver("ctag-1", 7, False, "ex", "rk.7"), 1),
        HEARTBEAT_FRAME,
        frame.marshal(header.ContentHeader(0, len(body), PROPS), 1),
    ]
    for offset in range(0, len(body), CHUNK):
        parts.append(HEARTBEAT_FRAME)
        parts.append(frame.marshal(pamqp_body.ContentBody(body[offset : offset + CHUNK]), 1))
    stream = b"".join(parts)
    decoder = FrameDecoder(FRAME_MAX)
    events = []
    for i in range(len(stream)):
        events.extend(decoder.feed(stream[i : i + 1]))
    assert len(events) == 1
    content = events[0][1]
    assert content.body == body
    assert content.method.delivery_tag == 7


@settings(max_examples=60, deadline=None)
@given(
    size_a=around_frame_boundaries(),
    size_b=around_frame_boundaries(),
    cuts=st.lists(st.integers(0, 10**6), max_size=30),
)
def test_deliveries_on_two_channels_may_interleave_frame_by_frame(size_a, size_b, cuts):
    """Content frames of different channels can interleave; each channel assembles its own."""
    body_a, body_b = b"a" * size_a, b"b" * size_b

    def frames(channel, tag, body):
        out = [
            frame.marshal(
                commands.Basic.Deliver(f"ctag-{channel}", tag, tag % 2 == 0, "ex", f"rk.{tag}"),
                channel,
            ),
            frame.marshal(header.ContentHeader(0, len(body), PROPS), channel),
        ]
        out += [
            frame.marshal(pamqp_body.ContentBody(body[o : o + CHUNK]), channel)
            for o in range(0, len(body), CHUNK)
        ]
        return out

    fa, fb = frames(1, 1, body_a), frames(2, 2, body_b)
    merged = [f for pair in itertools.zip_longest(fa, fb) for f in pair if f is not None]
    events = feed_in_chunks(FrameDecoder(FRAME_MAX), b"".join(merged), cuts)
    by_channel = {channel: event for channel, event in events}
    assert by_channel[1].body == body_a
    assert by_channel[2].body == body_b


def test_empty_body_completes_on_the_header():
    stream = server_delivery(1, 3, b"")
    events = FrameDecoder(FRAME_MAX).feed(stream)
    assert [(c, e.body) for c, e in events] == [(1, b"")]


def test_confirm_acks_and_methods_are_decoded():
    stream = (
        frame.marshal(commands.Basic.Ack(5, True), 1)
        + frame.marshal(commands.Basic.Nack(6, False, False), 1)
        + frame.marshal(
            commands.Channel.Close(406, "PRECONDITION_FAILED - inequivalent arg", 50, 10), 2
        )
        + frame.marshal(commands.Connection.Blocked("low on memory"), 0)
    )
    events = FrameDecoder(FRAME_MAX).feed(stream)
    ack, nack, close, blocked = (e for _, e in events)
    assert (ack.name, ack.delivery_tag, ack.multiple) == ("Basic.Ack", 5, True)
    assert (nack.name, nack.delivery_tag, nack.multiple) == ("Basic.Nack", 6, False)
    assert (close.reply_code, close.reply_text) == (406, "PRECONDITION_FAILED - inequivalent arg")
    assert blocked.reason == "low on memory"
    assert [c for c, _ in events] == [1, 1, 2, 0]


def test_heartbeat_prefix_without_its_frame_end_is_not_consumed():
    """pamqp's unmarshal claims 8 bytes for a 7-byte heartbeat prefix; we must not."""
    decoder = FrameDecoder(FRAME_MAX)
    assert decoder.feed(HEARTBEAT_FRAME[:7]) == []
    assert decoder.buffered == 7
    ack = frame.marshal(commands.Basic.Ack(1, False), 1)
    events = decoder.feed(HEARTBEAT_FRAME[7:] + ack)
    assert [(c, e.delivery_tag) for c, e in events] == [(1, 1)]


@pytest.mark.parametrize(
    ("stream", "match"),
    [
        (frame.marshal(commands.Basic.Ack(1, False), 1)[:-1] + b"\x00", "frame end"),
        (
            b"\x03\x00\x01" + (FRAME_MAX).to_bytes(4, "big") + b"x" * FRAME_MAX + b"\xce",
            "exceeds frame_max",
        ),
        (frame.marshal(pamqp_body.ContentBody(b"stray"), 1), "without a content header"),
        (b"\x09\x00\x00\x00\x00\x00\x00\xce", "unknown frame type"),
        (b"AMQP\x00\x00\x09\x01", "protocol header"),
    ],
)
def test_malformed_input_raises_frame_error(stream, match):
    with pytest.raises(FrameError, match=match):
        FrameDecoder(FRAME_MAX).feed(stream)


def test_method_frame_inside_content_is_a_frame_error():
    stream = frame.marshal(commands.Basic.Deliver("c", 1, False, "", "k"), 1) + frame.marshal(
        commands.Basic.Ack(1, False), 1
    )
    with pytest.raises(FrameError, match="middle of content"):
        FrameDecoder(FRAME_MAX).feed(stream)


def parse_client_frames(data: bytes) -> list:
    """Decode what the client sends with pamqp, asserting each frame fits frame_max."""
    frames = []
    pos = 0
    while pos < len(data):
        consumed, channel, value = frame.unmarshal(data[pos:])
        assert consumed <= FRAME_MAX
        frames.append((channel, value))
        pos += consumed
    return frames


@settings(max_examples=100, deadline=None)
@given(size=around_frame_boundaries(), mandatory=st.booleans(), with_props=st.booleans())
def test_publish_is_split_at_frame_max_minus_8(size, mandatory, with_props):
    body = bytes(i % 253 for i in range(size))
    out = bytearray()
    PublishEncoder(FRAME_MAX).append_publish(
        out,
        3,
        "common",
        "vmware_nsx__driver_listener",
        body,
        PROPS if with_props else None,
        mandatory,
    )
    frames = parse_client_frames(bytes(out))
    (ch0, method), (ch1, content_header), *bodies = frames
    assert {ch0, ch1} | {c for c, _ in bodies} == {3}
    assert isinstance(method, commands.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory) == (
        "common",
        "vmware_nsx__driver_listener",
        mandatory,
    )
    assert content_header.body_size == size
    if with_props:
        assert content_header.properties == PROPS
    assert [len(b.value) for _, b in bodies] == body_frame_sizes(size, FRAME_MAX)
    assert all(len(b.value) <= FRAME_MAX - 8 for _, b in bodies)
    assert b"".join(b.value for _, b in bodies) == body


def test_publish_rejects_overlong_names_before_queuing_anything():
    out = bytearray(b"already queued")
    with pytest.raises(ValueError, match="255"):
        PublishEncoder(FRAME_MAX).append_publish(out, 1, "x" * 256, "k", b"body", None, False)
    assert out == b"already queued"


def test_ack_nack_reject_frames_match_pamqp():
    assert ack_frame(2, 99, True) == frame.marshal(commands.Basic.Ack(99, True), 2)
    assert nack_frame(2, 5, False, True) == frame.marshal(commands.Basic.Nack(5, False, True), 2)
    assert nack_frame(2, 5, True, False) == frame.marshal(commands.Basic.Nack(5, True, False), 2)
    assert reject_frame(4, 8, True) == frame.marshal(commands.Basic.Reject(8, True), 4)
    assert HEARTBEAT_FRAME == frame.marshal(heartbeat.Heartbeat(), 0)


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 60),
    acks=st.lists(st.tuples(st.integers(1, 70), st.booleans()), max_size=40),
)
def test_confirm_tracker_settles_each_publish_once_with_multiple_semantics(count, acks):
    tracker: ConfirmTracker[int] = ConfirmTracker()
    tags = [tracker.published(i) for i in range(count)]
    assert tags == list(range(1, count + 1))
    outstanding = set(tags)
    settled_all = []
    for tag, multiple in acks:
        settled = tracker.settle(tag, multiple)
        expected = {t for t in outstanding if (t <= tag if multiple else t == tag)}
        assert {i + 1 for i in settled} == expected
        outstanding -= expected
        settled_all += settled
        assert len(tracker) == len(outstanding)
    assert sorted(settled_all + tracker.settle_all()) == list(range(count))


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 300), acks=st.lists(st.tuples(st.integers(1, 300), st.booleans())))
def test_settled_mandatory_publishes_are_forgotten(count, acks):
    """Every status cast is a mandatory publish: the return lookup must not keep the settled
    ones (it grew by a tuple per status cast, for ever: 14 MiB over a 10-minute soak)."""
    tracker: ConfirmTracker[int] = ConfirmTracker()
    for i in range(count):
        tracker.published(i, mandatory=True, exchange="e", routing_key="k")
    for tag, multiple in acks:
        tracker.settle(tag, multiple)
        # what is kept starts at the oldest unsettled publish
        assert all(t >= tracker._lowest for t, _, _ in list(tracker._mandatory)[:1])
    tracker.settle(count, True)
    assert len(tracker) == 0
    assert len(tracker._mandatory) == 0


def test_return_is_attributed_to_the_oldest_matching_mandatory_publish():
    tracker: ConfirmTracker[str] = ConfirmTracker()
    tracker.published("a", mandatory=True, exchange="", routing_key="k1")
    tracker.published("b", mandatory=False, exchange="", routing_key="k2")
    tracker.published("c", mandatory=True, exchange="", routing_key="k2")
    tracker.published("d", mandatory=True, exchange="", routing_key="k2")
    assert tracker.returned("", "k2") == "c"
    assert tracker.settle(3, False) == ["c"]
    assert tracker.returned("", "k2") == "d"
    assert tracker.returned("", "k2") is None  # d already returned once
    assert tracker.returned("", "nope") is None


def test_reconnect_delays_double_up_to_the_cap_with_bounded_jitter():
    delays = list(itertools.islice(reconnect_delays(0.5, 30.0, jitter=0.25), 12))
    nominal = [min(30.0, 0.5 * 2**i) for i in range(12)]
    for delay, base in zip(delays, nominal, strict=True):
        assert base * 0.75 <= delay <= base * 1.25
    assert list(itertools.islice(reconnect_delays(1.0, 4.0, jitter=0.0), 5)) == [
        1.0,
        2.0,
        4.0,
        4.0,
        4.0,
    ]
    with pytest.raises(ValueError):
        next(reconnect_delays(0.0))


# -- a channel's inbound state machine: server bytes -> decoder -> ChannelProtocol -------------


def channel_events(channel: ChannelProtocol, data: bytes) -> list:
    """Feed server bytes one byte at a time; what the channel makes of each event."""
    decoder = FrameDecoder(FRAME_MAX)
    decoded = []
    for i in range(len(data)):
        decoded.extend(decoder.feed(data[i : i + 1]))
    assert decoder.buffered == 0
    events = []
    for channel_id, event in decoded:
        assert channel_id == channel.channel_id
        events.append(channel.receive(event))
    return events


def server_return(channel: int, exchange: str, routing_key: str, body: bytes) -> bytes:
    return b"".join(
        [
            frame.marshal(commands.Basic.Return(312, "NO_ROUTE", exchange, routing_key), channel),
            frame.marshal(header.ContentHeader(0, len(body), PROPS), channel),
            frame.marshal(pamqp_body.ContentBody(body), channel),
        ]
    )


def test_channel_hands_deliveries_assembled_from_method_header_and_bodies():
    channel: ChannelProtocol[str] = ChannelProtocol(3)
    body = bytes(range(256)) * 40  # three body frames
    (delivered,) = channel_events(channel, server_delivery(3, 8, body))
    assert isinstance(delivered, Content)
    assert delivered.method.delivery_tag == 8 and delivered.method.consumer_tag == "ctag-3"
    assert delivered.body == body
    assert delivered.properties.headers == {"x-actor": "lb-1", "n": 3}


def test_channel_settles_confirms_with_multiple_and_attributes_returns():
    channel: ChannelProtocol[str] = ChannelProtocol(1)
    acks_without_confirm_mode = frame.marshal(commands.Basic.Ack(1, False), 1)
    assert channel_events(channel, acks_without_confirm_mode) == [None]
    channel.select_confirms()
    assert channel.confirms is not None
    for item, key in [("a", "k"), ("b", "lost"), ("c", "k"), ("d", "k"), ("e", "k")]:
        channel.confirms.published(item, mandatory=True, exchange="ex", routing_key=key)
    stream = (
        server_return(1, "ex", "lost", b"unroutable")
        + server_return(1, "ex", "nobody-published-this", b"?")
        + frame.marshal(commands.Basic.Ack(2, True), 1)
        + frame.marshal(commands.Basic.Nack(3, False, False), 1)
        + frame.marshal(commands.Basic.Ack(5, True), 1)
    )
    returned, unmatched, first, nacked, rest = channel_events(channel, stream)
    assert isinstance(returned, Returned)
    assert returned.item == "b"
    assert (returned.error.reply_code, returned.error.routing_key) == (312, "lost")
    assert unmatched is None
    assert first == ConfirmsSettled(["a", "b"], True)
    assert nacked == ConfirmsSettled(["c"], False)
    assert rest == ConfirmsSettled(["d", "e"], True)
    assert len(channel.confirms) == 0


def test_return_without_confirm_mode_is_dropped():
    channel: ChannelProtocol[str] = ChannelProtocol(1)
    assert channel_events(channel, server_return(1, "ex", "k", b"x")) == [None]


def test_channel_close_cancel_and_flow_from_the_server_come_with_their_replies():
    channel: ChannelProtocol[str] = ChannelProtocol(5)
    channel.select_confirms()
    assert channel.confirms is not None
    channel.confirms.published("unsettled")
    stream = b"".join(
        frame.marshal(method, 5)
        for method in [
            commands.Basic.Cancel("ctag-5"),
            commands.Basic.Cancel("ctag-6", nowait=True),
            commands.Channel.Flow(False),
            commands.Channel.Close(404, "NOT_FOUND - no exchange 'x'", 60, 40),
        ]
    )
    cancelled, cancelled_nowait, flow, closed = channel_events(channel, stream)
    assert cancelled == ConsumerCancelled(
        "ctag-5", frame.marshal(commands.Basic.CancelOk("ctag-5"), 5)
    )
    assert cancelled_nowait == ConsumerCancelled("ctag-6", None)
    assert flow == FlowRequested(frame.marshal(commands.Channel.FlowOk(False), 5))
    assert isinstance(closed, ServerClosedChannel)
    assert closed.reply == frame.marshal(commands.Channel.CloseOk(), 5)
    assert (closed.error.reply_code, closed.error.channel_id) == (404, 5)
    assert closed.error.reply_text == "NOT_FOUND - no exchange 'x'"
    assert channel.fail() == ["unsettled"]
    assert channel.fail() == []


def test_channel_matches_only_the_reply_it_waits_for_once():
    channel: ChannelProtocol[str] = ChannelProtocol(2)
    declare_ok = frame.marshal(commands.Queue.DeclareOk("q", 3, 1), 2)
    assert channel_events(channel, declare_ok) == [None]  # unsolicited: ignored
    channel.expected = commands.Queue.Declare.valid_responses
    (replied,) = channel_events(channel, frame.marshal(commands.Basic.QosOk(), 2) + declare_ok)[1:]
    assert isinstance(replied, Replied)
    assert (replied.method.queue, replied.method.message_count) == ("q", 3)
    assert channel.expected == ()
    assert channel_events(channel, declare_ok) == [None]  # a second one is not a reply
    channel.expected = ["Basic.ConsumeOk"]
    assert channel.fail() == []
    assert channel.expected == ()


def test_repeated_properties_are_decoded_once_and_each_body_keeps_its_own_size():
    """The decoder remembers decoded properties by their bytes: the same properties come back
    as the same object, with every content's own body size; different ones are decoded; a
    decoder full of distinct ones forgets them all and goes on."""
    other = commands.Basic.Properties(content_type="text/plain", delivery_mode=1)
    decoder = FrameDecoder()
    stream = b"".join([
        server_delivery(1, 1, b"a" * 10),
        server_delivery(1, 2, b"b" * 7000),
        server_delivery(1, 3, b"", props=other),
        server_delivery(1, 4, b"c" * 3),
    ])
    events = [event for _, event in decoder.feed(stream)]
    assert [len(e.body) for e in events] == [10, 7000, 0, 3]
    assert [e.body_size for e in events] == [10, 7000, 0, 3]
    assert events[0].properties is events[1].properties is events[3].properties
    assert events[2].properties.content_type == "text/plain"
    assert events[2].properties.headers is None
    assert events[3].properties.headers == {"x-actor": "lb-1", "n": 3}
    many = [commands.Basic.Properties(message_id=str(i)) for i in range(PROPERTIES_KEPT + 5)]
    for i, props in enumerate(many):
        (_, event), = decoder.feed(server_delivery(2, i + 1, b"x", props=props))
        assert event.properties.message_id == str(i)
    assert len(decoder._properties) <= PROPERTIES_KEPT
