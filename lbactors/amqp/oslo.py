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

import itertools
import os
from typing import Any, Protocol

import msgspec
from pamqp.commands import Basic

__all__ = [
    "CAST_PROPERTIES",
    "CAST_PROPERTIES_WIRE",
    "ENVELOPE_VERSION",
    "REPLY_PROPERTIES",
    "MalformedMessage",
    "OsloMessage",
    "Reply",
    "ReplyAddress",
    "call_properties",
    "decode_message",
    "decode_reply",
    "encode_call",
    "encode_cast",
    "encode_failure",
    "encode_reply",
    "shortstr_problem",
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
#: :data:`CAST_PROPERTIES` marshalled once, for the publishes of every status cast and reply
CAST_PROPERTIES_WIRE = CAST_PROPERTIES.marshal()


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


#: AMQP short strings (queue names, routing keys) hold at most this many bytes
SHORTSTR_MAX = 255
#: a ``method`` name longer than this is not a method of any endpoint
METHOD_MAX = 255

#: what decoding untrusted JSON can raise besides msgspec's own errors: nesting deeper than
#: the interpreter's recursion limit, invalid UTF-8 in a string, a lone surrogate
_UNTRUSTED_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeError)


class ReplyAddress(msgspec.Struct, frozen=True):
    """Where a call's answer goes: ``_msg_id`` and the queue ``_reply_q``."""

    msg_id: str
    reply_q: str


class MalformedMessage(ValueError):
    """A body that is not an oslo message; the text says what is wrong with it.

    ``reply_to`` is the caller's reply address when the body was a call whose address could
    still be read (and is valid), so that the caller gets a failure instead of a timeout.
    """

    def __init__(self, text: str, *, reply_to: ReplyAddress | None = None) -> None:
        super().__init__(text)
        self.reply_to = reply_to


class _Envelope(msgspec.Struct):
    version: str = msgspec.field(name="oslo.version")
    message: str = msgspec.field(name="oslo.message")


class _EnvelopeIfAny(msgspec.Struct):
    """An enveloped body in one decode (the common case); ``None``: not there, or null."""

    version: str | None = msgspec.field(default=None, name="oslo.version")
    message: str | None = msgspec.field(default=None, name="oslo.message")


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

    @property
    def reply_to(self) -> ReplyAddress | None:
        if self.msg_id and self.reply_q:
            return ReplyAddress(self.msg_id, self.reply_q)
        return None


class Reply(msgspec.Struct, frozen=True):
    """A reply's inner message; ``result`` stays raw JSON, ``failure`` oslo's JSON string."""

    result: msgspec.Raw = msgspec.Raw(b"null")
    failure: str | None = None
    ending: bool = False
    msg_id: str | None = msgspec.field(default=None, name="_msg_id")


class _ReplyProbe(msgspec.Struct):
    """Only the reply address of a message that failed to decode."""

    msg_id: str | None = msgspec.field(default=None, name="_msg_id")
    reply_q: str | None = msgspec.field(default=None, name="_reply_q")


_envelope_probe = msgspec.json.Decoder(dict[str, msgspec.Raw])
_reply_probe = msgspec.json.Decoder(_ReplyProbe)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_envelope_if_any = msgspec.json.Decoder(_EnvelopeIfAny)
_message_decoder = msgspec.json.Decoder(OsloMessage)
_reply_decoder = msgspec.json.Decoder(Reply)
_encoder = msgspec.json.Encoder()


def _version_compatible(version: str) -> bool:
    """oslo's ``version_is_compatible("2.0", version)``: same major, minor not above ours."""
    if version == ENVELOPE_VERSION:  # every message of today's oslo: no parsing
        return True
    try:
        major, minor = (int(part) for part in version.split(".", 1))
    except ValueError:
        return False
    return major == 2 and minor <= 0


def _unwrap(body: bytes, max_bytes: int | None) -> bytes:
    """The inner message's JSON, from an enveloped (or pre-envelope) body."""
    if max_bytes is not None and len(body) > max_bytes:
        raise MalformedMessage(f"body of {len(body)} bytes exceeds the limit of {max_bytes}")
    # the common case in one pass over the body; anything else (no envelope, a broken one,
    # not JSON) takes the path below, which tells them apart
    try:
        fast = _envelope_if_any.decode(body)
    except (*_UNTRUSTED_ERRORS, msgspec.ValidationError):
        fast = None
    if (
        fast is not None
        and fast.version is not None
        and fast.message is not None
        and _version_compatible(fast.version)
    ):
        try:
            return fast.message.encode()
        except UnicodeError:
            pass  # a lone surrogate: the path below says so
    try:
        keys = _envelope_probe.decode(body)
    except _UNTRUSTED_ERRORS as exc:
        raise MalformedMessage(f"body is not a JSON object: {_why(exc)}") from None
    if "oslo.version" not in keys or "oslo.message" not in keys:
        return body  # oslo's pre-envelope format: the body is the message
    try:
        envelope = _envelope_decoder.decode(body)
        inner = envelope.message.encode()
    except _UNTRUSTED_ERRORS as exc:
        raise MalformedMessage(f"bad envelope: {_why(exc)}") from None
    if not _version_compatible(envelope.version):
        raise MalformedMessage(
            f"unsupported envelope version {envelope.version[:40]!r}",
            reply_to=_probe_reply_address(inner),
        )
    return inner


def _why(exc: BaseException) -> str:
    """A decode error as one short line (msgspec's own text, else the exception's kind)."""
    if isinstance(exc, msgspec.DecodeError):
        return str(exc)[:200]
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return f"invalid text: {type(exc).__name__}: {str(exc)[:160]}"


def shortstr_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot be an AMQP short string (a queue name, a routing key), or None."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeError:
        return f"{what} is not valid text"
    if size > SHORTSTR_MAX:
        return f"{what} of {size} bytes exceeds AMQP's {SHORTSTR_MAX}"
    return None


def _checked_reply_address(msg_id: str | None, reply_q: str | None) -> ReplyAddress | None:
    """The reply address, if both parts are there and valid for a reply publish."""
    if not (msg_id and reply_q):
        return None
    if shortstr_problem(reply_q, "`_reply_q`") or len(msg_id) > SHORTSTR_MAX:
        return None
    return ReplyAddress(msg_id, reply_q)


def _probe_reply_address(inner: bytes) -> ReplyAddress | None:
    """Best effort, for a message that failed to decode: its caller's valid reply address."""
    try:
        probe = _reply_probe.decode(inner)
    except _UNTRUSTED_ERRORS:
        return None
    return _checked_reply_address(probe.msg_id, probe.reply_q)


def decode_message(body: bytes, *, max_bytes: int | None = None) -> OsloMessage:
    """Decode a cast or call; raise :class:`MalformedMessage` naming what is wrong.

    Never raises anything else, whatever the bytes (untrusted input from the wire): deep
    nesting, invalid UTF-8 and out-of-range numbers are malformed messages too. A call's reply
    address must be usable: ``_reply_q`` at most 255 bytes (an AMQP routing key).
    """
    inner = _unwrap(body, max_bytes)
    try:
        message = _message_decoder.decode(inner)
    except _UNTRUSTED_ERRORS as exc:
        raise MalformedMessage(
            f"bad message: {_why(exc)}", reply_to=_probe_reply_address(inner)
        ) from None
    if message.reply_q is not None and message.msg_id:
        problem = shortstr_problem(message.reply_q, "`_reply_q`")
        if problem is None and len(message.msg_id) > SHORTSTR_MAX:
            problem = f"`_msg_id` of {len(message.msg_id)} characters exceeds {SHORTSTR_MAX}"
        if problem is not None:
            raise MalformedMessage(f"bad reply address: {problem}")  # nobody to answer
    reply_to = message.reply_to
    if not message.method:
        raise MalformedMessage("bad message: empty `method`", reply_to=reply_to)
    if len(message.method) > METHOD_MAX:
        raise MalformedMessage(
            f"bad message: `method` of {len(message.method)} characters", reply_to=reply_to
        )
    if not bytes(message.args).lstrip().startswith(b"{"):
        raise MalformedMessage(
            f"bad message: `args` of {message.method!r} is not an object", reply_to=reply_to
        )
    return message


def decode_reply(body: bytes) -> tuple[str | None, bytes | None, str | None, bool]:
    """A reply as ``(msg_id, raw result JSON or None, failure JSON string or None, ending)``."""
    inner = _unwrap(body, None)
    try:
        reply = _reply_decoder.decode(inner)
    except _UNTRUSTED_ERRORS as exc:
        raise MalformedMessage(f"bad reply: {_why(exc)}") from None
    result = bytes(reply.result)
    if result == b"null":
        return reply.msg_id, None, reply.failure, reply.ending
    return reply.msg_id, result, reply.failure, reply.ending


def _envelope(inner: bytes) -> bytes:
    return b'{"oslo.version":"2.0","oslo.message":' + _encoder.encode(inner.decode()) + b"}"


class _UniqueIds:
    """``_unique_id`` values: 32 hex digits, as oslo's ``uuid4().hex``, from a random 64-bit
    prefix of this process and a counter (a fifth of the cost of ``uuid4``, which reads the
    kernel's random source each time). A child forked later starts a prefix of its own."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def __call__(self) -> bytes:
        return f"{self.prefix}{next(self.counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}".encode()


unique_id = _UniqueIds()


def _inner(method: str, args_json: bytes) -> bytes:
    return (
        b'{"method":'
        + _encoder.encode(method)
        + b',"args":'
        + args_json
        + b',"namespace":"control","version":"1.0","_unique_id":"'
        + unique_id()
        + b'"'
    )


def encode_cast(method: str, args_json: bytes, context_json: bytes = b"") -> bytes:
    """A cast of ``method(**args)`` to namespace ``control``, version ``1.0``.

    ``context_json``: the oslo context entries, already encoded as ``,"_context_<key>":<value>``
    pairs (oslo's ``pack_context``: a peer's endpoint gets ``{key: value}`` as its ``ctxt``); the
    empty default is oslo's ``{}``."""
    return _envelope(_inner(method, args_json) + context_json + b"}")


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
        + unique_id()
        + b'"}'
    )
    return _envelope(inner)
