"""Untrusted input from the wire: nothing a peer sends may crash, wedge or hang the daemon.

Pure paths first (hypothesis): the gateway's screening of a body (``gateway.screen``), the
routing of what passes, and the worker's whole run of the operation (decode, backend,
status) with every outcome encodable for IPC and for the wire. Then the frame decoder with
AMQP properties Python cannot hold. The daemon itself is fuzzed in
``test_daemon_faults.py``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import pytest
import structlog
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.malformed import KINDS, malformed_messages
from lbactors import ipc
from lbactors.amqp import oslo
from lbactors.amqp.protocol import FrameDecoder
from lbactors.backends.noop import NoopBackend
from lbactors.dispatch import run_operation
from lbactors.gateway import (
    Gateway,
    GatewaySettings,
    Refusal,
    encode_status_cast,
    route,
    screen,
)
from lbactors.messages import METHODS, InvalidOperation, Operation, Outcome, decode_request

LIMIT = 64 * 1024

json_scalars = st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | (
    st.integers(min_value=-(2**200), max_value=2**200)
) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def oslo_bodies(draw: st.DrawFn) -> bytes:
    """Bodies shaped like oslo's, with arbitrary args, then broken in one of several ways."""
    method = draw(st.sampled_from([*METHODS, "frobnicate", ""]))
    args: Any = draw(
        st.dictionaries(
            st.sampled_from([*{m.split("_")[0] for m in METHODS}, "old_member", "new_member",
                             "cascade", "cert", "flavor_metadata", "x"]),
            json_values | st.dictionaries(st.sampled_from(["id", "pool", "protocol_port",
                                                           "loadbalancer_id", "listeners"]),
                                          json_values, max_size=4),
            max_size=3,
        )
    )
    inner = {"method": method, "args": args, "namespace": draw(st.sampled_from(["control", None, "x"])),
             "version": draw(st.sampled_from(["1.0", "1.1", "2.0", None, "a.b"]))}
    if draw(st.booleans()):
        inner["_msg_id"] = draw(st.text(max_size=300))
        inner["_reply_q"] = draw(st.text(max_size=300))
    text = json.dumps(inner).encode()
    damage = draw(st.sampled_from(["none", "deep", "utf8", "truncate", "huge"]))
    if damage == "deep":
        text = text[:-1] + b', "deep": ' + _deep(draw(st.integers(900, 3000))) + b"}"
    elif damage == "utf8":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + text[at:]
    elif damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "huge":
        text = text.replace(b"1", b"1" + b"9" * draw(st.integers(20, 5000)), 1)
    if draw(st.booleans()):
        try:
            return json.dumps({"oslo.version": "2.0", "oslo.message": text.decode()}).encode()
        except UnicodeDecodeError:
            return b'{"oslo.version": "2.0", "oslo.message": "' + text.replace(b'"', b'\\"') + b'"}'
    return text


def _check_verdict(verdict: object) -> None:
    assert isinstance(verdict, oslo.OsloMessage | Refusal)
    if isinstance(verdict, Refusal):
        if verdict.reply_to is not None:  # answering must be possible
            assert oslo.shortstr_problem(verdict.reply_to.reply_q, "q") is None
            assert verdict.failure is not None
        return
    lb_id = route(verdict.method, bytes(verdict.args))  # never raises
    assert isinstance(lb_id, str)
    if verdict.reply_to is not None:
        assert len(verdict.reply_to.reply_q.encode()) <= 255


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=512))
def test_screen_takes_arbitrary_bytes(body: bytes) -> None:
    _check_verdict(screen(body, max_bytes=LIMIT))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=oslo_bodies())
def test_screen_and_route_take_arbitrary_oslo_shaped_json(body: bytes) -> None:
    _check_verdict(screen(body, max_bytes=LIMIT))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=oslo_bodies())
async def test_the_worker_runs_whatever_passes_into_one_encodable_outcome(body: bytes) -> None:
    with trio.fail_after(10):
        verdict = screen(body, max_bytes=LIMIT)
        if isinstance(verdict, Refusal):
            return
        args = bytes(verdict.args)
        op = Operation(op_id=1, method=verdict.method, args=args, lb_id=route(verdict.method, args),
                       is_call=verdict.is_call)
        outcome = await run_operation(NoopBackend(), op)  # never raises
        assert outcome.op_id == 1
        # it crosses the process boundary and the wire
        msgspec.msgpack.decode(msgspec.msgpack.encode(ipc.Done(outcome=outcome)), type=ipc.Frame)
        if outcome.status is not None:
            json.loads(encode_status_cast(outcome.status))
        json.loads(oslo.encode_reply("m", result_json=msgspec.json.encode(outcome.reply),
                                     failure=outcome.failure))


@pytest.mark.parametrize("message", malformed_messages(len(KINDS) * 3, max_body_bytes=LIMIT),
                         ids=lambda m: m.kind)
def test_every_kind_of_malformed_message_is_refused_or_invalid(message: Any) -> None:
    header_error = "undecodable" if message.properties is not None else None
    verdict = screen(message.body, max_bytes=LIMIT, header_error=header_error)
    if isinstance(verdict, Refusal):
        assert verdict.reason
        return
    # it reached a method: then the method's decoding refuses it, naming the object if it can
    with pytest.raises(InvalidOperation) as info:
        decode_request(verdict.method, bytes(verdict.args))
    if message.names is not None:
        assert info.value.object_id == message.names
        # it runs on the actor of the load balancer its ids name (in that load balancer's
        # order), else on that of the object it names
        member = json.loads(bytes(verdict.args)).get("member") or {}
        named_lb = (member.get("pool") or {}).get("loadbalancer_id")
        assert named_lb, "the malformed members name their load balancer"
        assert route(verdict.method, bytes(verdict.args)) == named_lb
        without_lb = {"member": {"id": message.names, "protocol_port": "eighty"}}
        assert route(verdict.method, json.dumps(without_lb).encode()) == message.names


def test_deep_nesting_and_bad_utf8_are_malformed_not_crashes() -> None:
    cases = [
        _deep(5000),
        b'{"method": "member_create", "args": {"a": ' + _deep(5000) + b"}}",
        b'{"method": "mem\xffber_create", "args": {}}',
        b'{"oslo.version": "2.0", "oslo.message": "{\\"method\\": \\"\xff\\"}"}',
    ]
    for body in cases:
        with pytest.raises(oslo.MalformedMessage):
            oslo.decode_message(body)
    with pytest.raises(InvalidOperation, match="nested too deeply"):
        decode_request("member_create", b'{"member": {"id": "m", "pool": {"session_persistence": '
                       + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}}}")
    with pytest.raises(InvalidOperation, match="invalid text"):
        decode_request("member_create", b'{"member": {"id": "m\xff"}}')


def test_a_call_with_an_overlong_reply_queue_is_malformed_and_never_answered() -> None:
    body = oslo.encode_call("validate_flavor", b'{"flavor_metadata": {}}', msg_id="m1",
                            reply_q="r" * 256)
    with pytest.raises(oslo.MalformedMessage, match="255") as info:
        oslo.decode_message(body)
    assert info.value.reply_to is None
    fine = oslo.encode_call("validate_flavor", b'{"flavor_metadata": {}}', msg_id="m1",
                            reply_q="r" * 255)
    assert oslo.decode_message(fine).reply_to == oslo.ReplyAddress("m1", "r" * 255)


def test_a_malformed_call_is_answered_when_its_address_can_be_read() -> None:
    body = oslo.encode_call("validate_flavor", b"[1, 2]", msg_id="m1", reply_q="reply_x")
    verdict = screen(body, max_bytes=LIMIT)
    assert isinstance(verdict, Refusal)
    assert verdict.reply_to == oslo.ReplyAddress("m1", "reply_x")
    assert verdict.failure is not None and verdict.failure.exc_class == "MalformedMessage"
    wrong_version = json.dumps({"oslo.version": "3.0", "oslo.message": json.dumps(
        {"method": "m", "args": {}, "_msg_id": "m2", "_reply_q": "reply_y"})}).encode()
    verdict = screen(wrong_version, max_bytes=LIMIT)
    assert isinstance(verdict, Refusal) and verdict.reply_to == oslo.ReplyAddress("m2", "reply_y")


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("protocol_port", 0, False), ("protocol_port", 1, True), ("protocol_port", 65535, True),
        ("protocol_port", 65536, False), ("protocol_port", int("9" * 4000), False),
        ("weight", 256, True), ("weight", 257, False), ("weight", -1, False),
        ("monitor_port", 70000, False), ("id", "m" * 255, True), ("id", "m" * 256, False),
    ],
)
def test_member_numbers_and_ids_keep_octavias_ranges(field: str, value: Any, ok: bool) -> None:
    member = {"id": "m1", "pool": {"id": "p1", "loadbalancer_id": "lb1"}, field: value}
    raw = json.dumps({"member": member}).encode()
    if ok:
        decode_request("member_create", raw)
        return
    with pytest.raises(InvalidOperation) as info:
        decode_request("member_create", raw)
    assert info.value.field == f"member.{field}"


@pytest.mark.parametrize(
    ("kind", "field", "bad"),
    [
        ("listener", "connection_limit", -2), ("listener", "timeout_client_data", 24 * 86400 * 1000 + 1),
        ("healthmonitor", "max_retries", 11), ("healthmonitor", "delay", -1),
        ("healthmonitor", "timeout", 2**31), ("l7policy", "position", 0),
        ("l7policy", "redirect_http_code", 304),
    ],
)
def test_other_octavia_ranges(kind: str, field: str, bad: int) -> None:
    with pytest.raises(InvalidOperation) as info:
        decode_request(f"{kind}_create", json.dumps({kind: {"id": "x", field: bad}}).encode())
    assert info.value.field == f"{kind}.{field}"
    assert info.value.object_id == "x"


async def test_a_huge_port_gets_the_member_error_not_active() -> None:
    with trio.fail_after(10):
        raw = b'{"member": {"id": "m1", "pool": {"id": "p1", "loadbalancer_id": "lb1"}, "protocol_port": ' \
            + b"9" * 4000 + b"}}"
        outcome = await run_operation(NoopBackend(), Operation(op_id=1, method="member_create", args=raw,
                                                               lb_id="m1"))
        assert outcome.status is not None and outcome.failure is not None
        assert msgspec.to_builtins(outcome.status) == {
            "members": [{"id": "m1", "provisioning_status": "ERROR", "operating_status": "ERROR"}]
        }


def _frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


def _deliver(tag: int) -> bytes:
    payload = (struct.pack(">I", 0x3C003C) + b"\x03ctg" + struct.pack(">QB", tag, 0)
               + b"\x01x" + b"\x01k")
    return _frame(1, 1, payload)


def test_undecodable_properties_keep_the_stream_going() -> None:
    """A timestamp beyond the year 9999 (the broker passes it on) used to be a frame error:
    the connection closed, the message came back on the next one, for ever."""
    bad_props = b"\x00\x40" + struct.pack(">Q", 2**63 - 1)
    body = b"hello"
    stream = (
        _deliver(1) + _frame(2, 1, struct.pack(">HHQ", 60, 0, len(body)) + bad_props)
        + _frame(3, 1, body)
        + _deliver(2) + _frame(2, 1, struct.pack(">HHQ", 60, 0, len(body)) + b"\x00\x00")
        + _frame(3, 1, body)
    )
    events = FrameDecoder().feed(stream)
    assert [event.method.delivery_tag for _, event in events] == [1, 2]
    first, second = (event for _, event in events)
    assert first.body == body and first.header_error and "out of range" in first.header_error
    assert second.body == body and second.header_error is None


# --------------------------------------------------------------------------- our reply queue


class _NoSink:
    async def submit(self, op: Operation) -> None:
        raise AssertionError("not used")


async def test_anything_in_our_reply_queue_is_dropped_and_never_raised() -> None:
    """A second reply to one call, a reply nobody waits for, a malformed reply and a result
    nested too deep to decode: the call gets the first reply only and the gateway goes on."""
    _, receive = trio.open_memory_channel[Outcome](1)
    gateway = Gateway(GatewaySettings(), _NoSink(), receive)
    send, waiting = trio.open_memory_channel[tuple[Any, Any]](1)
    gateway._reply_waiters["m1"] = send
    deep = b"[" * 5000 + b"]" * 5000
    with structlog.testing.capture_logs() as logs:
        gateway.on_reply(oslo.encode_reply("m1", result_json=b'["lb-1"]'))
        gateway.on_reply(oslo.encode_reply("m1", result_json=b'["lb-2"]'))  # a duplicate
        gateway.on_reply(oslo.encode_reply("nobody", result_json=b"[]"))
        gateway.on_reply(oslo.encode_reply("m1", result_json=b"[]")[:-3])  # cut short
        gateway.on_reply(b"\xff" * 10)
        gateway.on_reply(oslo.encode_reply("m3", result_json=deep))
    assert waiting.receive_nowait() == (["lb-1"], None)
    with pytest.raises(trio.WouldBlock):
        waiting.receive_nowait()
    assert gateway._reply_waiters == {}
    events = [entry["event"] for entry in logs]
    assert events == ["reply that no call waits for dropped"] * 2 + ["malformed reply dropped"] * 3
