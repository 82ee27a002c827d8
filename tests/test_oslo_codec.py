"""The oslo envelope codec against oslo.messaging's own serialization functions."""

from __future__ import annotations

import json
import os
import warnings

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbactors.amqp import oslo
from lbactors.messages import Failure

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import oslo_messaging
    from oslo_messaging._drivers import common as oslo_common

LB_ARGS = {"loadbalancer": {"id": "lb-1", "name": "web", "vip_address": "10.0.0.5"}}


def oslo_body(msg: dict) -> bytes:
    """What oslo.messaging's rabbit driver puts on the wire for ``msg`` (kombu JSON)."""
    return json.dumps(oslo_common.serialize_msg(msg)).encode()


def test_decodes_an_oslo_cast() -> None:
    body = oslo_body(
        {
            "method": "loadbalancer_create",
            "args": LB_ARGS,
            "namespace": "control",
            "version": "1.0",
            "_unique_id": "0bf2",
            "_context_user": "admin",
        }
    )
    message = oslo.decode_message(body)
    assert message.method == "loadbalancer_create"
    assert json.loads(bytes(message.args)) == LB_ARGS
    assert (message.namespace, message.version, message.unique_id) == ("control", "1.0", "0bf2")
    assert not message.is_call


def test_decodes_an_oslo_call() -> None:
    body = oslo_body(
        {
            "method": "validate_flavor",
            "args": {"flavor_metadata": {"max_connections": 10}},
            "namespace": "control",
            "version": "1.0",
            "_unique_id": "u",
            "_msg_id": "m1",
            "_reply_q": "reply_abc",
            "_timeout": None,
        }
    )
    message = oslo.decode_message(body)
    assert message.is_call
    assert (message.msg_id, message.reply_q, message.timeout) == ("m1", "reply_abc", None)


def test_pre_envelope_body_is_the_message() -> None:
    body = json.dumps({"method": "m", "args": {}}).encode()
    assert oslo.decode_message(body).method == "m"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"oslo.version": "2.0", "oslo.message": 5}', "bad envelope"),
        (b'{"oslo.version": "3.0", "oslo.message": "{}"}', "unsupported envelope version"),
        (oslo_body({"args": {}}), "method"),
        (oslo_body({"method": "", "args": {}}), "empty `method`"),
        (oslo_body({"method": "m", "args": [1]}), "not an object"),
        (oslo_body({"method": 7, "args": {}}), "method"),
        (b'{"oslo.version": "2.0", "oslo.message": "{broken"}', "bad message"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(oslo.MalformedMessage, match=reason):
        oslo.decode_message(body)


def test_oversized_body_is_refused_before_parsing() -> None:
    body = oslo_body({"method": "m", "args": {"x": "y" * 1000}})
    with pytest.raises(oslo.MalformedMessage, match="exceeds the limit of 100"):
        oslo.decode_message(body, max_bytes=100)


def enveloped(version: str) -> bytes:
    inner = json.dumps({"method": "m", "args": {}, "_msg_id": "m1", "_reply_q": "reply_q1"})
    return json.dumps({"oslo.version": version, "oslo.message": inner}).encode()


@pytest.mark.parametrize("version", ["2.0", "2.00"])
def test_envelope_version_2_0_is_accepted(version: str) -> None:
    body = enveloped(version)
    assert oslo_common.deserialize_msg(json.loads(body))["method"] == "m"
    assert oslo.decode_message(body).method == "m"


@pytest.mark.parametrize("version", ["2.1", "2.10", "1.0", "1.9", "3.0"])
def test_envelope_versions_oslo_refuses_are_refused_with_the_reply_address(version: str) -> None:
    """An envelope other than 2.0 (a newer minor included) is refused, as oslo refuses it;
    the caller is answered with the failure instead of timing out."""
    body = enveloped(version)
    with pytest.raises(oslo_common.UnsupportedRpcEnvelopeVersion):
        oslo_common.deserialize_msg(json.loads(body))
    with pytest.raises(oslo.MalformedMessage, match="unsupported envelope version") as info:
        oslo.decode_message(body)
    assert info.value.reply_to == oslo.ReplyAddress("m1", "reply_q1")


@pytest.mark.parametrize("version", ["2", "", "two.0", "2.x", "2.0.1"])
def test_envelope_versions_that_are_not_versions_are_refused(version: str) -> None:
    with pytest.raises(oslo.MalformedMessage, match="unsupported envelope version"):
        oslo.decode_message(enveloped(version))


def test_body_limit_is_inclusive() -> None:
    body = oslo_body({"method": "m", "args": {"x": "y" * 100}})
    assert oslo.decode_message(body, max_bytes=len(body)).method == "m"
    with pytest.raises(oslo.MalformedMessage, match=f"exceeds the limit of {len(body) - 1}"):
        oslo.decode_message(body, max_bytes=len(body) - 1)


@pytest.mark.parametrize(
    ("ttl", "expiration"),
    [(60, "60000"), (0.5, "500"), (1.25, "1250"), (0.0001, "1"), (0, "1")],
)
def test_call_expiration_is_the_ttl_in_whole_milliseconds(ttl: float, expiration: str) -> None:
    """RabbitMQ's per-message TTL is whole milliseconds; at least 1 ("0" would expire the
    call unless a consumer took it at once)."""
    assert oslo.call_properties(ttl).expiration == expiration


def test_cast_is_what_oslo_decodes() -> None:
    body = oslo.encode_cast("update_loadbalancer_status", b'{"status":{"loadbalancers":[]}}')
    outer = json.loads(body)
    assert outer["oslo.version"] == "2.0"
    msg = oslo_common.deserialize_msg(outer)
    assert msg["method"] == "update_loadbalancer_status"
    assert msg["args"] == {"status": {"loadbalancers": []}}
    assert (msg["namespace"], msg["version"]) == ("control", "1.0")
    assert len(msg["_unique_id"]) == 32
    assert "_msg_id" not in msg


def test_call_carries_reply_fields() -> None:
    body = oslo.encode_call("get_active_loadbalancers", b"{}", msg_id="abc", reply_q="reply_q1")
    msg = oslo_common.deserialize_msg(json.loads(body))
    assert (msg["_msg_id"], msg["_reply_q"], msg["_timeout"]) == ("abc", "reply_q1", None)
    assert oslo.call_properties(60).expiration == "60000"


def test_reply_with_result() -> None:
    body = oslo.encode_reply("m1", result_json=b'{"valid":true}')
    msg = oslo_common.deserialize_msg(json.loads(body))
    assert msg["result"] == {"valid": True}
    assert msg["failure"] is None
    assert msg["ending"] is True
    assert msg["_msg_id"] == "m1"
    assert oslo.decode_reply(body) == ("m1", b'{"valid":true}', None, True)


def test_failure_reply_raises_on_the_oslo_side_with_the_class_name() -> None:
    failure = Failure(
        exc_class="NoSuchMethod",
        module="oslo_messaging.rpc.dispatcher",
        message="Endpoint does not support RPC method frobnicate",
    )
    body = oslo.encode_reply("m2", result_json=b"1", failure=failure)
    msg = oslo_common.deserialize_msg(json.loads(body))
    assert msg["result"] is None
    exc = oslo_common.deserialize_remote_exception(msg["failure"], allowed_remote_exmods=[])
    assert isinstance(exc, oslo_messaging.RemoteError)
    assert exc.exc_type == "NoSuchMethod"
    assert "frobnicate" in str(exc)


def test_builtin_failure_round_trips_as_the_builtin() -> None:
    failure = Failure(exc_class="ValueError", module="builtins", message="bad flavor")
    body = oslo.encode_reply("m3", failure=failure)
    msg = oslo_common.deserialize_msg(json.loads(body))
    exc = oslo_common.deserialize_remote_exception(msg["failure"], allowed_remote_exmods=[])
    assert isinstance(exc, ValueError)
    assert "bad flavor" in str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(method=st.text(min_size=1), args=st.dictionaries(st.text(), json_values, max_size=5))
def test_cast_round_trip(method: str, args: dict) -> None:
    body = oslo.encode_cast(method, msgspec.json.encode(args))
    # oslo decodes what we encode, and we decode what oslo encodes, to the same message
    msg = oslo_common.deserialize_msg(json.loads(body))
    assert (msg["method"], msg["args"]) == (method, args)
    ours = oslo.decode_message(oslo_body(msg))
    assert ours.method == method
    assert msgspec.json.decode(bytes(ours.args)) == args


# --------------------------------------------------------------------------- limits at their edges


def test_a_msg_id_of_255_characters_is_answerable_and_256_is_not() -> None:
    ok = oslo.decode_message(oslo.encode_call("m", b"{}", msg_id="x" * 255, reply_q="q"))
    assert ok.reply_to == oslo.ReplyAddress("x" * 255, "q")
    with pytest.raises(oslo.MalformedMessage, match="bad reply address") as refused:
        oslo.decode_message(oslo.encode_call("m", b"{}", msg_id="x" * 256, reply_q="q"))
    assert refused.value.reply_to is None  # nowhere to answer


def test_a_method_of_255_characters_is_taken_and_256_is_refused() -> None:
    assert oslo.decode_message(oslo.encode_cast("m" * 255, b"{}")).method == "m" * 255
    with pytest.raises(oslo.MalformedMessage, match="`method` of 256 characters"):
        oslo.decode_message(oslo.encode_cast("m" * 256, b"{}"))


def test_a_broken_message_is_answered_only_with_both_halves_of_its_reply_address() -> None:
    def broken(**address: str) -> bytes:
        inner = {"method": 5, "args": {}, **address}  # a method that is no string
        return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()

    for address in ({"_msg_id": "id-1"}, {"_reply_q": "q-1"}, {}):
        with pytest.raises(oslo.MalformedMessage) as info:
            oslo.decode_message(broken(**address))
        assert info.value.reply_to is None, address
    with pytest.raises(oslo.MalformedMessage) as info:
        oslo.decode_message(broken(_msg_id="id-1", _reply_q="q-1"))
    assert info.value.reply_to == oslo.ReplyAddress("id-1", "q-1")


def test_a_call_expires_after_at_least_a_millisecond() -> None:
    assert oslo.call_properties(0).expiration == "1"
    assert oslo.call_properties(0.0004).expiration == "1"
    assert oslo.call_properties(0.002).expiration == "2"


def test_unique_ids_are_32_hex_digits_never_repeated_and_new_in_a_forked_child() -> None:
    ids = [oslo.unique_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then out at once
        os.write(write, oslo.unique_id())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child[:16] != ids[-1][:16]  # a prefix of its own, not the parent's next id
    assert oslo.unique_id()[:16] == ids[0][:16]
