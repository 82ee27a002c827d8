"""The Octavia object model, decoded straight from the payloads the provider driver sends.

Payloads are shaped by vmware-nsx's ``NSXOctaviaDriver.obj_to_dict`` (reference §2.3, §2.5):
every object carries both ``id`` and ``<kind>_id``, nested parents (``loadbalancer``,
``pool``, ``listener``, ``policy``, ``listeners``, ``default_pool``) are optional, and many
more fields than a backend needs. Unknown fields are ignored; only the fields that a backend
or the status semantics read are declared, each with the widest type the driver really sends
(``http_version`` is a float, ``flavor`` a dict or null, ...).

Ids are optional at this level because nested dicts sometimes carry only ``<kind>_id``
(a cascade's ``default_pool``). ``__post_init__`` fills ``id`` from ``<kind>_id``; whether an
id is *required* depends on the operation and is checked by
:func:`lbactors.messages.decode_request`.

Every payload is untrusted input, so numbers carry Octavia's own ranges (its API rejects
anything outside them: ``octavia/common/constants.py``, ``octavia/api/v2/types``): ports
1–65535, member weights 0–256, health-monitor retries 1–10, listener timeouts 0–24 days in
ms, L7 policy positions 1–2³¹-1, redirect codes 301/302/303/307/308; and ids are at most 255
characters (Octavia's are 36-character UUIDs). A value outside its range fails decoding, so
the operation is invalid (its object ERROR) instead of reaching a backend.

Pure: msgspec only; no I/O, no trio, no logging.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Kind = Literal[
    "loadbalancer", "listener", "pool", "member", "healthmonitor", "l7policy", "l7rule"
]

#: singular kind -> the plural key used in status dicts
PLURAL: dict[str, str] = {
    "loadbalancer": "loadbalancers",
    "listener": "listeners",
    "pool": "pools",
    "member": "members",
    "healthmonitor": "healthmonitors",
    "l7policy": "l7policies",
    "l7rule": "l7rules",
}


#: Octavia's int32 columns (positions, connection limits, health-monitor delays)
INT32_MAX = 2**31 - 1
#: ``octavia.common.constants.MAX_TIMEOUT``: 24 days, in milliseconds
MAX_TIMEOUT_MS = 24 * 24 * 60 * 60 * 1000

Id = Annotated[str, msgspec.Meta(max_length=255)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Weight = Annotated[int, msgspec.Meta(ge=0, le=256)]
Retries = Annotated[int, msgspec.Meta(ge=1, le=10)]
TimeoutMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMEOUT_MS)]
NonNegInt32 = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
ConnectionLimit = Annotated[int, msgspec.Meta(ge=-1, le=INT32_MAX)]
Position = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
RedirectCode = Literal[301, 302, 303, 307, 308]


class _Object(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every Octavia object: ``id`` falls back to ``<kind>_id``."""

    id: Id | None = None
    name: str | None = None
    admin_state_up: bool | None = None
    project_id: Id | None = None


class L7Rule(_Object, kw_only=True, omit_defaults=True):
    l7rule_id: Id | None = None
    l7policy_id: Id | None = None
    type: str | None = None
    compare_type: str | None = None
    key: str | None = None
    value: str | None = None
    invert: bool | None = None
    policy: L7Policy | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.l7rule_id


class L7Policy(_Object, kw_only=True, omit_defaults=True):
    l7policy_id: Id | None = None
    listener_id: Id | None = None
    action: str | None = None
    position: Position | None = None
    redirect_pool_id: Id | None = None
    redirect_url: str | None = None
    redirect_prefix: str | None = None
    redirect_http_code: RedirectCode | None = None
    rules: list[L7Rule] | None = None
    listener: Listener | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.l7policy_id


class HealthMonitor(_Object, kw_only=True, omit_defaults=True):
    healthmonitor_id: Id | None = None
    pool_id: Id | None = None
    type: str | None = None
    delay: NonNegInt32 | None = None
    timeout: NonNegInt32 | None = None
    max_retries: Retries | None = None
    max_retries_down: Retries | None = None
    http_method: str | None = None
    url_path: str | None = None
    expected_codes: str | None = None
    http_version: float | str | None = None
    domain_name: str | None = None
    pool: Pool | None = None
    loadbalancer_id: Id | None = None
    loadbalancer: LoadBalancer | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.healthmonitor_id


class Member(_Object, kw_only=True, omit_defaults=True):
    member_id: Id | None = None
    pool_id: Id | None = None
    address: str | None = None
    protocol_port: Port | None = None
    weight: Weight | None = None
    backup: bool | None = None
    subnet_id: Id | None = None
    monitor_address: str | None = None
    monitor_port: Port | None = None
    pool: Pool | None = None
    loadbalancer_id: Id | None = None
    loadbalancer: LoadBalancer | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.member_id


class Pool(_Object, kw_only=True, omit_defaults=True):
    pool_id: Id | None = None
    loadbalancer_id: Id | None = None
    listener_id: Id | None = None
    protocol: str | None = None
    lb_algorithm: str | None = None
    session_persistence: dict[str, Any] | None = None
    tls_enabled: bool | None = None
    healthmonitor: HealthMonitor | None = None
    members: list[Member] | None = None
    listener: Listener | None = None
    listeners: list[Listener] | None = None
    loadbalancer: LoadBalancer | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.pool_id


class Listener(_Object, kw_only=True, omit_defaults=True):
    listener_id: Id | None = None
    loadbalancer_id: Id | None = None
    protocol: str | None = None
    protocol_port: Port | None = None
    connection_limit: ConnectionLimit | None = None
    default_pool_id: Id | None = None
    default_pool: Pool | None = None
    l7policies: list[L7Policy] | None = None
    allowed_cidrs: list[str] | None = None
    timeout_client_data: TimeoutMs | None = None
    timeout_member_connect: TimeoutMs | None = None
    timeout_member_data: TimeoutMs | None = None
    timeout_tcp_inspect: TimeoutMs | None = None
    default_tls_container_ref: str | None = None
    loadbalancer: LoadBalancer | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.listener_id


class LoadBalancer(_Object, kw_only=True, omit_defaults=True):
    loadbalancer_id: Id | None = None
    vip_address: str | None = None
    vip_port_id: Id | None = None
    vip_subnet_id: Id | None = None
    vip_network_id: Id | None = None
    flavor: dict[str, Any] | None = None
    availability_zone: str | dict[str, Any] | None = None
    listeners: list[Listener] | None = None
    pools: list[Pool] | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.loadbalancer_id


class Certificate(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The ``cert`` kwarg of ``listener_create`` / ``listener_update`` (TERMINATED_HTTPS)."""

    ref: str | None = None
    certificate: str | None = None
    private_key: str | None = None
    passphrase: str | None = None
    intermediates: list[str] | str | None = None


OctaviaObject = LoadBalancer | Listener | Pool | Member | HealthMonitor | L7Policy | L7Rule

#: kind -> its model class: the one table of them (the driver's methods are ``<kind>_<action>``)
CLASS_OF_KIND: dict[str, type[OctaviaObject]] = {
    "loadbalancer": LoadBalancer,
    "listener": Listener,
    "pool": Pool,
    "member": Member,
    "healthmonitor": HealthMonitor,
    "l7policy": L7Policy,
    "l7rule": L7Rule,
}

#: class -> its fields that nest parents or children (not part of an object's own state: what
#: a backend that stores objects one by one leaves out)
NESTED_FIELDS: dict[type[OctaviaObject], tuple[str, ...]] = {
    LoadBalancer: ("listeners", "pools"),
    Listener: ("default_pool", "l7policies", "loadbalancer"),
    Pool: ("healthmonitor", "members", "listener", "listeners", "loadbalancer"),
    Member: ("pool", "loadbalancer"),
    HealthMonitor: ("pool", "loadbalancer"),
    L7Policy: ("rules", "listener"),
    L7Rule: ("policy",),
}


def sparse_variant(cls: type[msgspec.Struct], name: str | None = None) -> type[msgspec.Struct]:
    """A Struct with ``cls``'s fields, types and bounds, where a field the JSON leaves out is
    ``msgspec.UNSET`` (not ``None``): an update's new object decoded once tells both its values
    and which keys it sent (a field sent as null is a change, one left out is not). No
    ``__post_init__``: whoever merges it applies the ``<kind>_id`` fallback."""
    fields = [
        (field.name, field.type | msgspec.UnsetType, msgspec.UNSET)
        for field in msgspec.structs.fields(cls)
    ]
    return msgspec.defstruct(name or f"Sparse{cls.__name__}", fields, kw_only=True)


#: the class of each kind's sparse variant (:func:`sparse_variant`), for updates' new objects
SPARSE_CLASS_OF_KIND: dict[str, type[msgspec.Struct]] = {
    kind: sparse_variant(cls) for kind, cls in CLASS_OF_KIND.items()
}
