"""Every message that crosses a boundary inside lbactors, each one msgspec Struct defined once.

- :class:`Request`: one driver operation, decoded and checked (:func:`decode_request`);
- :class:`Operation`: what the gateway hands to the actor layer (and, later, to a worker
  process): the raw JSON ``args`` as received, the method and the owning load balancer;
- :class:`Outcome`: what comes back: at most one status update to cast, and the reply value
  or failure for an RPC ``call``;
- :class:`Reassertion`: created objects' own status entries cast again (Octavia's commit
  race), travelling with the outcomes (:data:`Outbound`) so that it keeps its place among them;
- :class:`StatusUpdate` / :class:`StatusEntry`: the ``status`` kwarg of
  ``update_loadbalancer_status`` (``status-semantics.md``);
- :class:`Statistics` / :class:`ListenerStatistics`: the ``statistics`` kwarg of
  ``update_listener_statistics``.

The Structs of the hot path that can never be part of a reference cycle (strings, bytes,
lists of other such Structs, a reply value) are ``gc=False``: the cycle collector never
tracks them, so the many in flight at once add nothing to its passes. The wire format is
the same.

Pure: msgspec only.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from lbactors.model import (
    CLASS_OF_KIND,
    SPARSE_CLASS_OF_KIND,
    Certificate,
    LoadBalancer,
    OctaviaObject,
)

Action = Literal["create", "update", "delete", "query"]

# --------------------------------------------------------------------------- status


class StatusEntry(msgspec.Struct, kw_only=True, gc=False):
    """One ``{"id", "provisioning_status", "operating_status"}`` entry; either status may be absent."""

    id: str
    provisioning_status: str | msgspec.UnsetType = msgspec.UNSET
    operating_status: str | msgspec.UnsetType = msgspec.UNSET


class StatusUpdate(msgspec.Struct, kw_only=True, gc=False):
    """The ``status`` dict. An absent key (UNSET) is left out on the wire; ``[]`` is sent as ``[]``."""

    loadbalancers: list[StatusEntry] | msgspec.UnsetType = msgspec.UNSET
    listeners: list[StatusEntry] | msgspec.UnsetType = msgspec.UNSET
    pools: list[StatusEntry] | msgspec.UnsetType = msgspec.UNSET
    members: list[StatusEntry] | msgspec.UnsetType = msgspec.UNSET
    healthmonitors: list[StatusEntry] | msgspec.UnsetType = msgspec.UNSET
    l7policies: list[StatusEntry] | msgspec.UnsetType = msgspec.UNSET
    l7rules: list[StatusEntry] | msgspec.UnsetType = msgspec.UNSET


class ListenerStatistics(msgspec.Struct, kw_only=True):
    """One listener's counters; all six keys are always sent (the driver agent indexes them)."""

    id: str
    active_connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    request_errors: int = 0
    total_connections: int = 0


class Statistics(msgspec.Struct, kw_only=True):
    listeners: list[ListenerStatistics]


# --------------------------------------------------------------------------- operations


class Operation(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One driver operation on its way to the actor that owns ``lb_id``.

    ``args`` is the JSON of the oslo ``args`` object exactly as it arrived (decoded by the
    actor layer with :func:`decode_request`). ``op_id`` is unique within one daemon run.
    ``lb_id`` is the routing key (see ``routing.owner_of``); for operations that need no
    load balancer (flavor / availability-zone queries) it is ``""``.
    ``key`` is the owner key (``Backend.affinity_key``) when it is not ``lb_id``: operations
    that share a key never run at the same time; ``""`` means ``lb_id``.
    """

    op_id: int
    method: str
    args: bytes
    lb_id: str
    is_call: bool = False
    key: str = ""

    @property
    def owner_key(self) -> str:
        """The key that picks the worker and the cluster shard: ``key`` or else ``lb_id``."""
        return self.key or self.lb_id


class Failure(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """An exception to be raised on the caller's side of an RPC ``call``.

    Serialized by the oslo codec into oslo.messaging's failure JSON
    (``class``, ``module``, ``message``, ``tb``, ``args``, ``kwargs``).
    """

    exc_class: str
    module: str
    message: str


class Outcome(msgspec.Struct, kw_only=True, gc=False):
    """The result of one :class:`Operation`, in the order the actor ran it.

    ``reason`` says why it failed (for logs; not on the wire). ``abandoned``: the backend call
    behind it ignored its cancellation and may still be running, so whoever runs the actor
    system must replace it (the supervisor replaces the worker process). ``dead_letter``: the
    delivery leaves the queue as unusable (dead-lettered with this reason) instead of being
    acked, after the status and the reply went out.
    """

    op_id: int
    lb_id: str
    status: StatusUpdate | None = None
    reply: Any = None
    failure: Failure | None = None
    reason: str | None = None
    abandoned: bool = False
    dead_letter: str | None = None


class Reassertion(msgspec.Struct, kw_only=True, gc=False):
    """Created objects' own entries of load balancer ``lb_id``, to cast again as they were.

    Octavia calls the driver before it commits a new object, and a driver agent drops the
    entries of objects it cannot find yet: an object whose create status was dropped would
    stay PENDING_CREATE for ever. The actor system emits this only while ``lb_id`` has no
    operation queued or running, in the outcome stream, so it is published before the status
    of any later operation of ``lb_id``; it has no delivery to settle.
    """

    lb_id: str
    status: StatusUpdate


#: what an actor system sends to whoever publishes: outcomes, and re-assertions among them
Outbound = Outcome | Reassertion


# --------------------------------------------------------------------------- request decoding


class InvalidOperation(Exception):
    """A driver message that cannot be run: unknown method, missing or ill-typed field.

    ``field`` is a dotted path into ``args`` (``"member.protocol_port"``), or ``""`` when the
    problem is the method itself. ``object_kind`` / ``object_id`` name the object when it can
    still be found, so that it can be set to ERROR.
    """

    def __init__(
        self,
        method: str,
        field: str,
        reason: str,
        *,
        unknown_method: bool = False,
        object_kind: str | None = None,
        object_id: str | None = None,
    ) -> None:
        where = f" field {field!r}" if field else ""
        super().__init__(f"{method}:{where} {reason}")
        self.method = method
        self.field = field
        self.reason = reason
        self.unknown_method = unknown_method
        self.object_kind = object_kind
        self.object_id = object_id


class Request(msgspec.Struct, kw_only=True):
    """A decoded, checked driver operation.

    ``obj`` is the object the operation is about (for an update: the new object, with every
    field the sparse update lacks taken from ``old``); ``old`` is the old object of an update.
    """

    method: str
    kind: str | None
    action: Action
    obj: OctaviaObject | None = None
    old: OctaviaObject | None = None
    cert: Certificate | None = None
    cascade: bool = False
    metadata: dict[str, Any] | None = None


QUERY_METHODS: dict[str, str | None] = {
    "get_supported_flavor_metadata": None,
    "validate_flavor": "flavor_metadata",
    "get_supported_availability_zone_metadata": None,
    "validate_availability_zone": "availability_zone_metadata",
}


def _args_struct(name: str, fields: list[tuple[str, Any, Any]]) -> type[msgspec.Struct]:
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (fname, ftype) if default is _REQUIRED else (fname, ftype, default)
        for fname, ftype, default in fields
    ]
    return msgspec.defstruct(name, spec, kw_only=True)


_REQUIRED = object()

#: what decoding untrusted JSON raises besides msgspec's errors (deep nesting, bad UTF-8)
_UNTRUSTED_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeError)


def _build_args_types() -> dict[str, tuple[str | None, Action, type[msgspec.Struct]]]:
    table: dict[str, tuple[str | None, Action, type[msgspec.Struct]]] = {}
    for kind, cls in CLASS_OF_KIND.items():
        extra: list[tuple[str, Any, Any]] = []
        if kind == "listener":
            extra = [("cert", Certificate | None, None)]
        table[f"{kind}_create"] = (
            kind,
            "create",
            _args_struct(f"{kind}_create", [(kind, cls, _REQUIRED), *extra]),
        )
        table[f"{kind}_update"] = (
            kind,
            "update",
            _args_struct(
                f"{kind}_update",
                [
                    (f"old_{kind}", cls, _REQUIRED),
                    (f"new_{kind}", SPARSE_CLASS_OF_KIND[kind], _REQUIRED),
                    *extra,
                ],
            ),
        )
        delete_fields: list[tuple[str, Any, Any]] = [(kind, cls, _REQUIRED)]
        if kind == "loadbalancer":
            delete_fields.append(("cascade", bool, False))
        table[f"{kind}_delete"] = (
            kind,
            "delete",
            _args_struct(f"{kind}_delete", delete_fields),
        )
    table["loadbalancer_delete_cascade"] = (
        "loadbalancer",
        "delete",
        _args_struct("loadbalancer_delete_cascade", [("loadbalancer", LoadBalancer, _REQUIRED)]),
    )
    for method, meta_field in QUERY_METHODS.items():
        fields = [] if meta_field is None else [(meta_field, dict[str, Any], _REQUIRED)]
        table[method] = (None, "query", _args_struct(method, fields))
    return table


#: method -> (object kind or None, action, args Struct)
METHODS = _build_args_types()
_DECODERS = {method: msgspec.json.Decoder(spec[2]) for method, spec in METHODS.items()}


#: CRUD method -> (the args field of its object, that of the old object of an update or
#: ``None``, the path of the object's id in error messages): no string built per message
_OBJECT_FIELDS = {
    method: (
        (f"new_{kind}", f"old_{kind}", f"new_{kind}.id")
        if action == "update"
        else (kind, None, f"{kind}.id")
    )
    for method, (kind, action, _) in METHODS.items()
    if kind is not None
}


_S = TypeVar("_S", bound=msgspec.Struct)


def merge_update(old: _S, new: msgspec.Struct, kind: str) -> _S:
    """The new object of a sparse update: every field ``new`` leaves out comes from ``old``.

    ``new`` is the sparse variant of ``old``'s class (:func:`model.sparse_variant`): a field
    it sends, even as null, is a change (the driver's new object is ``deepcopy(old)`` overlaid
    with the changes, and clearing a field, a listener's ``default_pool_id``, is sent as null);
    one it leaves out is ``UNSET``. The id is never cleared, and falls back to
    ``<kind>_id`` as the model's does.
    """
    changes = {}
    for f in new.__struct_fields__:
        value = getattr(new, f)
        if value is not msgspec.UNSET:
            changes[f] = value
    if changes.get("id", msgspec.UNSET) is None:
        del changes["id"]
    if "id" not in changes:
        fallback = changes.get(f"{kind}_id")
        if fallback is not None:
            changes["id"] = fallback
    return msgspec.structs.replace(old, **changes)


def _field_path(error: msgspec.ValidationError) -> str:
    text = str(error)
    marker = "at `$."
    path = text.split(marker, 1)[1].rstrip("`") if marker in text else ""
    missing = "missing required field `"
    if missing in text:
        name = text.split(missing, 1)[1].split("`", 1)[0]
        path = f"{path}.{name}" if path else name
    return path


def _guess_object(method: str, raw: bytes) -> tuple[str | None, str | None]:
    """Best effort: the kind and id of the object a broken message is about."""
    spec = METHODS.get(method)
    if spec is None or spec[0] is None:
        return None, None
    kind = spec[0]
    try:
        loose = msgspec.json.decode(raw)
    except _UNTRUSTED_ERRORS:
        return kind, None
    if not isinstance(loose, dict):
        return kind, None
    for key in (kind, f"new_{kind}", f"old_{kind}"):
        obj = loose.get(key)
        if isinstance(obj, dict):
            for id_key in ("id", f"{kind}_id"):
                value = obj.get(id_key)
                if isinstance(value, str) and value:
                    return kind, value
    return kind, None


def decode_request(method: str, raw: bytes) -> Request:
    """Decode the JSON ``args`` of ``method`` into a :class:`Request`.

    Raises :class:`InvalidOperation` naming the method and the field for an unknown method,
    malformed JSON (nested too deeply, invalid UTF-8 included), a missing, ill-typed or
    out-of-range field, or a missing object id; never anything else.
    """
    spec = METHODS.get(method)
    if spec is None:
        raise InvalidOperation(method, "", "unknown method", unknown_method=True)
    kind, action, _ = spec
    try:
        args = _DECODERS[method].decode(raw)
    except msgspec.ValidationError as exc:
        guessed_kind, guessed_id = _guess_object(method, raw)
        raise InvalidOperation(
            method,
            _field_path(exc),
            str(exc),
            object_kind=guessed_kind,
            object_id=guessed_id,
        ) from None
    except msgspec.DecodeError as exc:
        raise InvalidOperation(method, "", f"malformed JSON arguments: {exc}") from None
    except RecursionError:
        raise InvalidOperation(method, "", "malformed JSON arguments: nested too deeply") from None
    except UnicodeError as exc:
        raise InvalidOperation(
            method, "", f"malformed JSON arguments: invalid text ({type(exc).__name__})"
        ) from None

    if kind is None:
        metadata_field = QUERY_METHODS[method]
        metadata = None if metadata_field is None else getattr(args, metadata_field)
        return Request(method=method, kind=None, action="query", metadata=metadata)

    obj_field, old_field, field = _OBJECT_FIELDS[method]
    if old_field is not None:
        old = getattr(args, old_field)
        obj = merge_update(old, getattr(args, obj_field), kind)
    else:
        old = None
        obj = getattr(args, obj_field)
    if not obj.id:
        raise InvalidOperation(method, field, "object id is missing", object_kind=kind)
    return Request(
        method=method,
        kind=kind,
        action=action,
        obj=obj,
        old=old,
        cert=getattr(args, "cert", None),
        cascade=method == "loadbalancer_delete_cascade" or bool(getattr(args, "cascade", False)),
    )
