"""Malformed driver messages of every kind, as a buggy or hostile peer would send them.

Used by ``python -m bench faults`` (mixed into the driver's load) and by the tests
(``tests/test_bad_input.py``). Each :class:`BadMessage` is one AMQP message for the daemon's
topic queue: its body, optional raw AMQP properties (bytes as they go on the wire, for
properties no well-behaved client can even build) and what it is. None of them may crash,
wedge or slow the daemon for anyone else; each must leave the queue (never requeued).
"""

from __future__ import annotations

import json
import random
import struct
import uuid
from dataclasses import dataclass

from lbactors.amqp import oslo

__all__ = ["KINDS", "BadMessage", "RawProperties", "malformed_messages"]


class RawProperties:
    """AMQP basic properties given as their wire bytes (``marshal`` is all a publish needs)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def marshal(self) -> bytes:
        return self.raw


@dataclass(frozen=True)
class BadMessage:
    kind: str
    body: bytes
    properties: RawProperties | None = None
    #: the id of the object the message names, when it names one (it then gets ERROR)
    names: str | None = None


def _cast(method: str, args: bytes, **extra: object) -> bytes:
    inner = {"method": method, "namespace": "control", "version": "1.0",
             "_unique_id": uuid.uuid4().hex, **extra}
    text = json.dumps(inner)[:-1] + ', "args": ' + args.decode("utf-8", "surrogateescape") + "}"
    return json.dumps({"oslo.version": "2.0", "oslo.message": text}).encode()


def _member(member_id: str, **fields: object) -> bytes:
    member = {"id": member_id, "pool_id": str(uuid.uuid4()),
              "pool": {"id": str(uuid.uuid4()), "loadbalancer_id": str(uuid.uuid4())}, **fields}
    return json.dumps({"member": member}).encode()


def _not_json(rng: random.Random) -> BadMessage:
    return BadMessage("not JSON", bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))))


def _wrong_envelope_version(rng: random.Random) -> BadMessage:
    inner = json.dumps({"method": "loadbalancer_create", "args": {}})
    version = rng.choice(["3.0", "2.1", "1", "x"])
    return BadMessage("wrong envelope version",
                      json.dumps({"oslo.version": version, "oslo.message": inner}).encode())


def _unknown_method(rng: random.Random) -> BadMessage:
    return BadMessage("unknown method", oslo.encode_cast(f"frobnicate_{rng.randint(0, 99)}", b"{}"))


def _missing_ids(rng: random.Random) -> BadMessage:
    kind = rng.choice(["loadbalancer", "listener", "pool", "member"])
    return BadMessage("missing ids",
                      oslo.encode_cast(f"{kind}_create", json.dumps({kind: {"name": "x"}}).encode()))


def _wrong_types(rng: random.Random) -> BadMessage:
    member_id = str(uuid.uuid4())
    return BadMessage("wrong types",
                      oslo.encode_cast("member_create", _member(member_id, protocol_port="eighty")),
                      names=member_id)


def _oversized(rng: random.Random, limit: int) -> BadMessage:
    pad = "x" * (limit + 16)
    return BadMessage("body over the limit",
                      oslo.encode_cast("loadbalancer_create",
                                       json.dumps({"loadbalancer": {"id": "big", "name": pad}})
                                       .encode()))


def _deeply_nested(rng: random.Random) -> BadMessage:
    depth = rng.randint(1_100, 20_000)
    where = rng.choice(["args", "envelope", "body"])
    nest = b"[" * depth + b"]" * depth
    if where == "body":
        return BadMessage("deeply nested JSON", nest)
    if where == "envelope":
        return BadMessage("deeply nested JSON",
                          b'{"oslo.version": "2.0", "oslo.message": "{}", "x": ' + nest + b"}")
    member_id = str(uuid.uuid4())
    args = _member(member_id)[:-2] + b', "extra": ' + nest + b"}}"
    return BadMessage("deeply nested JSON", _cast("member_create", args))


def _invalid_utf8(rng: random.Random) -> BadMessage:
    where = rng.choice(["method", "key", "inner"])
    if where == "method":
        body = b'{"method": "member_cr\xffeate", "args": {}}'
    elif where == "key":
        body = b'{"method": "member_create", "args": {"\xc3(": 1}}'
    else:
        body = b'{"oslo.version": "2.0", "oslo.message": "{\\"method\\": \\"a\xfe\\"}"}'
    return BadMessage("invalid UTF-8", body)


def _huge_integers(rng: random.Random) -> BadMessage:
    member_id = str(uuid.uuid4())
    digits = rng.randint(30, 4_000)
    args = _member(member_id)[:-2] + b', "protocol_port": ' + b"9" * digits + b"}}"
    return BadMessage("huge integers", _cast("member_create", args), names=member_id)


def _bogus_reply_address(rng: random.Random) -> BadMessage:
    reply_q = rng.choice(["q" * 300, "é" * 200])  # over AMQP's 255 bytes
    return BadMessage("call with a bogus reply address",
                      oslo.encode_call("get_supported_flavor_metadata", b"{}",
                                       msg_id=uuid.uuid4().hex, reply_q=reply_q))


def _undecodable_properties(rng: random.Random) -> BadMessage:
    # a timestamp beyond the year 9999: the broker passes it, Python's datetime cannot hold it
    raw = b"\x00\x40" + struct.pack(">Q", 2**63 - rng.randint(1, 1000))
    return BadMessage("undecodable AMQP properties", oslo.encode_cast("frobnicate", b"{}"),
                      RawProperties(raw))


KINDS = (
    "not JSON", "wrong envelope version", "unknown method", "missing ids", "wrong types",
    "body over the limit", "deeply nested JSON", "invalid UTF-8", "huge integers",
    "call with a bogus reply address", "undecodable AMQP properties",
)


def malformed_messages(count: int, *, seed: int = 0, max_body_bytes: int = 1 << 20
                       ) -> list[BadMessage]:
    """``count`` malformed messages, every kind in turn (reproducible for a ``seed``)."""
    rng = random.Random(seed)
    makers = [_not_json, _wrong_envelope_version, _unknown_method, _missing_ids, _wrong_types,
              lambda r: _oversized(r, max_body_bytes), _deeply_nested, _invalid_utf8,
              _huge_integers, _bogus_reply_address, _undecodable_properties]
    assert len(makers) == len(KINDS)
    messages = [makers[i % len(makers)](rng) for i in range(count)]
    assert all(m.kind == KINDS[i % len(KINDS)] for i, m in enumerate(messages))
    return messages
