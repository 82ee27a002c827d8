"""oslo.messaging's rabbit envelope, both ways (facts §5.1, §5.3).

A message body is the envelope ``{"oslo.version": "2.0", "oslo.message": "<JSON string>"}``;
the inner object carries ``method``, ``args``, ``namespace``, ``version``, ``_unique_id`` and,
for a call, ``_msg_id``, ``_reply_q`` and ``_timeout``; context entries are ``_context_<key>``
(ignored here). A reply's inner object is ``{"result", "failure", "ending", "_msg_id",
"_unique_id"}`` where ``failure`` is itself a JSON string (``class``, ``module``, ``message``,
``tb``, ``args``, ``kwargs``). Like oslo, a body without the envelope keys is taken as the
message itself (oslo's pre-envelope format).

``args`` is never decoded here: it travels on as the raw JSON the driver sent.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import msgspec
from pamqp.commands import Basic

__all__ = [
    "CAST_PROPERTIES",
    "ENVELOPE_VERSION",
    "REPLY_PROPERTIES",
    "MalformedMessage",
    "OsloMessage",
    "Reply",
    "call_properties",
    "decode_message",
    "decode_reply",
    "encode_call",
    "encode_cast",
    "encode_failure",
    "encode_reply",
    "with_headers",
]

ENVELOPE_VERSION = "2.0"
NAMESPACE = "control"
VERSION = "1.0"

#: what kombu sets on every oslo publish: JSON, persistent, priority 0, no headers
CAST_PROPERTIES = Basic.Properties(
    content_type="application/json", content_encoding="utf-8", delivery_mode=2, priority=0
)
REPLY_PROPERTIES = CAST_PROPERTIES


def call_properties(ttl: float) -> Basic.Properties:
    """A call's properties: a cast's, plus ``expiration`` = the timeout in milliseconds."""
    return Basic.Properties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        priority=0,
        expiration=str(max(1, int(ttl * 1000))),
    )


def with_headers(properties: Basic.Properties, headers: dict[str, Any]) -> Basic.Properties:
    """A copy of ``properties`` with ``headers`` (for republishing a received message).

    ``user_id`` is left out: the broker checks it against the publishing connection's user.
    """
    return Basic.Properties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=headers,
        delivery_mode=properties.delivery_mode,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        expiration=properties.expiration,
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        message_type=properties.message_type,
        app_id=properties.app_id,
    )


class MalformedMessage(ValueError):
    """A body that is not an oslo message; the text says what is wrong with it."""


class _Envelope(msgspec.Struct):
    version: str = msgspec.field(name="oslo.version")
    message: str = msgspec.field(name="oslo.message")


class OsloMessage(msgspec.Struct, frozen=True):
    """The inner message of a cast or call. ``args`` is the raw JSON object."""

    method: str
    args: msgspec.Raw = msgspec.Raw(b"{}")
    namespace: str | None = None
    version: str | None = None
    unique_id: str | None = msgspec.field(default=None, name="_unique_id")
    msg_id: str | None = msgspec.field(default=None, name="_msg_id")
    reply_q: str | None = msgspec.field(default=None, name="_reply_q")
    timeout: float | None = msgspec.field(default=None, name="_timeout")

    @property
    def is_call(self) -> bool:
        return bool(self.msg_id and self.reply_q)


class Reply(msgspec.Struct, frozen=True):
    """A reply's inner message; ``result`` stays raw JSON, ``failure`` oslo's JSON string."""

    result: msgspec.Raw = msgspec.Raw(b"null")
    failure: str | None = None
    ending: bool = False
    msg_id: str | None = msgspec.field(default=None, name="_msg_id")


_envelope_probe = msgspec.json.Decoder(dict[str, msgspec.Raw])
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_message_decoder = msgspec.json.Decoder(OsloMessage)
_reply_decoder = msgspec.json.Decoder(Reply)
_encoder = msgspec.json.Encoder()


def _version_compatible(version: str) -> bool:
    """oslo's ``version_is_compatible("2.0", version)``: same major, minor not above ours."""
    try:
        major, minor = (int(part) for part in version.split(".", 1))
    except ValueError:
        return False
    return major == 2 and minor <= 0


def _unwrap(body: bytes, max_bytes: int | None) -> bytes:
    """The inner message's JSON, from an enveloped (or pre-envelope) body."""
    if max_bytes is not None and len(body) > max_bytes:
        raise MalformedMessage(f"body of {len(body)} bytes exceeds the limit of {max_bytes}")
    try:
        keys = _envelope_probe.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"body is not a JSON object: {exc}") from None
    if "oslo.version" not in keys or "oslo.message" not in keys:
        return body  # oslo's pre-envelope format: the body is the message
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"bad envelope: {exc}") from None
    if not _version_compatible(envelope.version):
        raise MalformedMessage(f"unsupported envelope version {envelope.version!r}")
    return envelope.message.encode()


def decode_message(body: bytes, *, max_bytes: int | None = None) -> OsloMessage:
    """Decode a cast or call; raise :class:`MalformedMessage` naming what is wrong."""
    inner = _unwrap(body, max_bytes)
    try:
        message = _message_decoder.decode(inner)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"bad message: {exc}") from None
    if not message.method:
        raise MalformedMessage("bad message: empty `method`")
    if not bytes(message.args).lstrip().startswith(b"{"):
        raise MalformedMessage(f"bad message: `args` of {message.method!r} is not an object")
    return message


def decode_reply(body: bytes) -> tuple[str | None, bytes | None, str | None, bool]:
    """A reply as ``(msg_id, raw result JSON or None, failure JSON string or None, ending)``."""
    inner = _unwrap(body, None)
    try:
        reply = _reply_decoder.decode(inner)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"bad reply: {exc}") from None
    result = bytes(reply.result)
    if result == b"null":
        return reply.msg_id, None, reply.failure, reply.ending
    return reply.msg_id, result, reply.failure, reply.ending


def _envelope(inner: bytes) -> bytes:
    return b'{"oslo.version":"2.0","oslo.message":' + _encoder.encode(inner.decode()) + b"}"


def _inner(method: str, args_json: bytes) -> bytes:
    return (
        b'{"method":'
        + _encoder.encode(method)
        + b',"args":'
        + args_json
        + b',"namespace":"control","version":"1.0","_unique_id":"'
        + uuid.uuid4().hex.encode()
        + b'"'
    )


def encode_cast(method: str, args_json: bytes) -> bytes:
    """A cast of ``method(**args)`` to namespace ``control``, version ``1.0``."""
    return _envelope(_inner(method, args_json) + b"}")


def encode_call(
    method: str, args_json: bytes, *, msg_id: str, reply_q: str, timeout: float | None = None
) -> bytes:
    """A call: a cast plus ``_msg_id``, ``_reply_q`` and ``_timeout`` (oslo: normally null)."""
    return _envelope(
        _inner(method, args_json)
        + b',"_msg_id":'
        + _encoder.encode(msg_id)
        + b',"_reply_q":'
        + _encoder.encode(reply_q)
        + b',"_timeout":'
        + _encoder.encode(timeout)
        + b"}"
    )


class _FailureData(msgspec.Struct):
    cls: str = msgspec.field(name="class")
    module: str = ""
    message: str = ""
    tb: list[str] = msgspec.field(default_factory=list)
    args: list[str] = msgspec.field(default_factory=list)
    kwargs: dict[str, str] = msgspec.field(default_factory=dict)


def encode_failure(exc_class: str, module: str, message: str) -> str:
    """oslo's ``serialize_remote_exception`` output for an exception we never raised."""
    data = _FailureData(
        cls=exc_class,
        module=module,
        message=message,
        tb=[f"{module}.{exc_class}: {message}\n"],
        args=[message],
    )
    return _encoder.encode(data).decode()


class FailureLike(Protocol):
    @property
    def exc_class(self) -> str: ...
    @property
    def module(self) -> str: ...
    @property
    def message(self) -> str: ...


def encode_reply(
    msg_id: str, *, result_json: bytes = b"null", failure: FailureLike | None = None
) -> bytes:
    """The single ``ending: true`` reply to a call.

    ``failure`` is e.g. a :class:`lbactors.messages.Failure`; a failure reply carries
    ``result: null``.
    """
    failure_json = b"null"
    if failure is not None:
        failure_json = _encoder.encode(
            encode_failure(failure.exc_class, failure.module, failure.message)
        )
        result_json = b"null"
    inner = (
        b'{"result":'
        + result_json
        + b',"failure":'
        + failure_json
        + b',"ending":true,"_msg_id":'
        + _encoder.encode(msg_id)
        + b',"_unique_id":"'
        + uuid.uuid4().hex.encode()
        + b'"}'
    )
    return _envelope(inner)
