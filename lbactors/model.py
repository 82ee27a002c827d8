"""The Octavia object model, decoded straight from the payloads the provider driver sends.

Payloads are shaped by vmware-nsx's ``NSXOctaviaDriver.obj_to_dict`` (reference §2.3, §2.5):
every object carries both ``id`` and ``<kind>_id``, nested parents (``loadbalancer``,
``pool``, ``listener``, ``policy``, ``listeners``, ``default_pool``) are optional, and many
more fields than a backend needs. Unknown fields are ignored; only the fields that a backend
or the status semantics read are declared, each with the widest type the driver really sends
(``http_version`` is a float, ``flavor`` a dict or null, ...).

Ids are optional at this level because nested dicts sometimes carry only ``<kind>_id``
(a cascade's ``default_pool``). ``__post_init__`` fills ``id`` from ``<kind>_id``; whether an
id is *required* depends on the operation and is checked by :func:`decode_args`.

Pure: msgspec only; no I/O, no trio, no logging.
"""

from __future__ import annotations

from typing import Any, Literal

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


class _Object(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every Octavia object: ``id`` falls back to ``<kind>_id``."""

    id: str | None = None
    name: str | None = None
    admin_state_up: bool | None = None
    project_id: str | None = None


class L7Rule(_Object, kw_only=True, omit_defaults=True):
    l7rule_id: str | None = None
    l7policy_id: str | None = None
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
    l7policy_id: str | None = None
    listener_id: str | None = None
    action: str | None = None
    position: int | None = None
    redirect_pool_id: str | None = None
    redirect_url: str | None = None
    redirect_prefix: str | None = None
    redirect_http_code: int | None = None
    rules: list[L7Rule] | None = None
    listener: Listener | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.l7policy_id


class HealthMonitor(_Object, kw_only=True, omit_defaults=True):
    healthmonitor_id: str | None = None
    pool_id: str | None = None
    type: str | None = None
    delay: int | None = None
    timeout: int | None = None
    max_retries: int | None = None
    max_retries_down: int | None = None
    http_method: str | None = None
    url_path: str | None = None
    expected_codes: str | None = None
    http_version: float | str | None = None
    domain_name: str | None = None
    pool: Pool | None = None
    loadbalancer_id: str | None = None
    loadbalancer: LoadBalancer | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.healthmonitor_id


class Member(_Object, kw_only=True, omit_defaults=True):
    member_id: str | None = None
    pool_id: str | None = None
    address: str | None = None
    protocol_port: int | None = None
    weight: int | None = None
    backup: bool | None = None
    subnet_id: str | None = None
    monitor_address: str | None = None
    monitor_port: int | None = None
    pool: Pool | None = None
    loadbalancer_id: str | None = None
    loadbalancer: LoadBalancer | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.member_id


class Pool(_Object, kw_only=True, omit_defaults=True):
    pool_id: str | None = None
    loadbalancer_id: str | None = None
    listener_id: str | None = None
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
    listener_id: str | None = None
    loadbalancer_id: str | None = None
    protocol: str | None = None
    protocol_port: int | None = None
    connection_limit: int | None = None
    default_pool_id: str | None = None
    default_pool: Pool | None = None
    l7policies: list[L7Policy] | None = None
    allowed_cidrs: list[str] | None = None
    timeout_client_data: int | None = None
    timeout_member_connect: int | None = None
    timeout_member_data: int | None = None
    timeout_tcp_inspect: int | None = None
    default_tls_container_ref: str | None = None
    loadbalancer: LoadBalancer | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.listener_id


class LoadBalancer(_Object, kw_only=True, omit_defaults=True):
    loadbalancer_id: str | None = None
    vip_address: str | None = None
    vip_port_id: str | None = None
    vip_subnet_id: str | None = None
    vip_network_id: str | None = None
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

KIND_OF: dict[type, str] = {
    LoadBalancer: "loadbalancer",
    Listener: "listener",
    Pool: "pool",
    Member: "member",
    HealthMonitor: "healthmonitor",
    L7Policy: "l7policy",
    L7Rule: "l7rule",
}
