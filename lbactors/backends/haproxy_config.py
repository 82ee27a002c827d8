"""The haproxy backend's pure half: a load balancer's subtree → ``haproxy.cfg``, and back.

- :class:`LoadBalancerTree`: every object of one load balancer, by id, without nested payloads;
- :func:`render_config`: the tree → the configuration text plus the names HAProxy will report
  its proxies and servers under (:class:`Rendered`); deterministic, and a :class:`RenderError`
  for anything HAProxy cannot express (unsupported protocol, bad CIDR, a value with a newline);
- :func:`parse_show_stat`, :func:`listener_counters`, :func:`operating_statuses`: the runtime
  API's ``show stat`` CSV → Octavia's listener statistics and operating statuses;
- :func:`flavor_settings` / :func:`validate_flavor`: the flavor metadata the backend supports.

How objects map (Octavia amphora's templates were the model; differences are noted):

- a listener is a ``frontend`` bound on ``vip_address:protocol_port`` (HTTP and
  TERMINATED_HTTPS in ``mode http``, the latter with ``ssl crt``; TCP and HTTPS in
  ``mode tcp``); ``connection_limit`` → ``maxconn``; ``allowed_cidrs`` → ``tcp-request
  connection reject if !{ src ... }``;
- a pool is rendered once per listener that uses it (default pool or target of a
  REDIRECT_TO_POOL policy) as ``backend <listener>:<pool>``, in that listener's mode and with its
  timeouts, as the amphora does; in the copies after the first, servers ``track`` the first
  copy's server, so each member is health-checked once;
- L7 policies are evaluated first match wins in ``position`` order, which HAProxy's own rule
  order cannot express (``http-request`` rules always run before ``use_backend``): each policy
  sets ``txn.l7policy`` to its index if nothing matched before and all its rules match, and the
  actions test that variable.

Pure: msgspec and the standard library; no I/O, no trio, no logging.
"""

from __future__ import annotations

import csv
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from lbactors.backends.base import check_flavor_integers
from lbactors.messages import ListenerStatistics
from lbactors.model import (
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    Pool,
)

__all__ = [
    "FLAVOR_METADATA",
    "FlavorSettings",
    "LoadBalancerTree",
    "RenderError",
    "Rendered",
    "flavor_settings",
    "haproxy_name",
    "listener_counters",
    "operating_statuses",
    "parse_show_stat",
    "render_config",
    "validate_flavor",
]


class RenderError(ValueError):
    """The subtree cannot be rendered into a configuration HAProxy would run."""


class LoadBalancerTree(msgspec.Struct, kw_only=True):
    """One load balancer and its objects by id; nested payload fields are dropped."""

    lb: LoadBalancer
    listeners: dict[str, Listener] = msgspec.field(default_factory=dict)
    pools: dict[str, Pool] = msgspec.field(default_factory=dict)
    members: dict[str, Member] = msgspec.field(default_factory=dict)
    healthmonitors: dict[str, HealthMonitor] = msgspec.field(default_factory=dict)
    l7policies: dict[str, L7Policy] = msgspec.field(default_factory=dict)
    l7rules: dict[str, L7Rule] = msgspec.field(default_factory=dict)


# --------------------------------------------------------------------------- flavor

FLAVOR_METADATA: dict[str, str] = {
    "max_connections": (
        "Maximum concurrent connections of the load balancer's HAProxy (global maxconn) and "
        "the default of every listener without a connection_limit: positive integer, or -1 "
        "for HAProxy's default."
    ),
    "timeout_client_data": "Frontend client inactivity timeout in milliseconds (0..86400000).",
    "timeout_member_connect": "Backend member connect timeout in milliseconds (0..86400000).",
    "timeout_member_data": "Backend member inactivity timeout in milliseconds (0..86400000).",
    "timeout_tcp_inspect": (
        "Time in milliseconds to wait for content inspection on TCP listeners (0..86400000)."
    ),
}

_MAX_TIMEOUT_MS = 86_400_000


class FlavorSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Defaults applied where a listener leaves a value out (milliseconds for timeouts)."""

    max_connections: int = -1
    timeout_client_data: int = 50_000
    timeout_member_connect: int = 5_000
    timeout_member_data: int = 50_000
    timeout_tcp_inspect: int = 0


def validate_flavor(metadata: Mapping[str, Any]) -> str | None:
    """``None`` when ``metadata`` is a valid flavor, else the reason, naming the bad key."""
    return check_flavor_integers(metadata, FLAVOR_METADATA, timeout_max=_MAX_TIMEOUT_MS)


def flavor_settings(metadata: Mapping[str, Any] | None, base: FlavorSettings) -> FlavorSettings:
    """``base`` overridden by the supported keys of a load balancer's flavor metadata.

    Keys the backend does not know are ignored here (``validate_flavor`` already turned them
    away when the flavor was created); a known key with a bad value is a :class:`RenderError`.
    """
    if not metadata:
        return base
    known = {k: v for k, v in metadata.items() if k in FLAVOR_METADATA}
    reason = validate_flavor(known)
    if reason is not None:
        raise RenderError(reason)
    return msgspec.structs.replace(base, **known)


# --------------------------------------------------------------------------- names and values

_NAME_OK = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NAME_BAD_CHAR = re.compile(r"[^A-Za-z0-9_.-]")


def haproxy_name(object_id: str) -> str:
    """A name HAProxy accepts for a proxy, server or ACL (letters, digits, ``_.-``).

    Octavia's ids (UUIDs) are kept as they are; anything else is cleaned and gets a hash of
    the original, so different ids never share a name. Never contains ``:`` (backends are
    named ``<listener>:<pool>``).
    """
    if _NAME_OK.fullmatch(object_id):
        return object_id
    digest = hashlib.blake2b(object_id.encode(), digest_size=6).hexdigest()
    return f"{_NAME_BAD_CHAR.sub('_', object_id)[:40]}-{digest}"


_PLAIN_ARG = re.compile(r"[A-Za-z0-9_./:@%+=,^~*?()\[\]{}|!&;<>-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _arg(value: str, what: str) -> str:
    """``value`` as one configuration word: as is when plain, else in single quotes."""
    if not value:
        raise RenderError(f"{what} must not be empty")
    if _CONTROL.search(value):
        raise RenderError(f"{what} must not contain control characters: {value!r}")
    if _PLAIN_ARG.fullmatch(value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


def _address(address: str | None, what: str) -> str:
    if not address:
        raise RenderError(f"{what} has no address")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise RenderError(f"{what} address {address!r} is not an IP address") from None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _port(port: int | None, what: str) -> int:
    if port is None or not 1 <= port <= 65535:
        raise RenderError(f"{what} port {port!r} is not in 1..65535")
    return port


def _enabled(obj: Any) -> bool:
    return obj.admin_state_up is not False


# --------------------------------------------------------------------------- render


class Rendered(msgspec.Struct, kw_only=True, frozen=True):
    """A configuration and the names its objects have in ``show stat``."""

    text: str
    #: listener id -> frontend name
    frontends: dict[str, str]
    #: pool id -> its backends' names, the first one checks, the others track it
    backends: dict[str, list[str]]
    #: member id -> (backend name, server name) of the copy that checks
    servers: dict[str, tuple[str, str]]
    #: ``(address, port)`` of every bind line, for a pre-reload bind test
    binds: list[tuple[str, int]]


_LISTENER_MODE = {"HTTP": "http", "TERMINATED_HTTPS": "http", "TCP": "tcp", "HTTPS": "tcp"}
_POOL_PROTOCOLS = {"HTTP", "HTTPS", "TCP", "PROXY", "PROXYV2"}
_ALGORITHMS = {"ROUND_ROBIN": "roundrobin", "LEAST_CONNECTIONS": "leastconn", "SOURCE_IP": "source"}
_MATCH = {
    "EQUAL_TO": "-m str",
    "STARTS_WITH": "-m beg",
    "ENDS_WITH": "-m end",
    "CONTAINS": "-m sub",
    "REGEX": "-m reg",
}
_REDIRECT_CODES = {301, 302, 303, 307, 308}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CODES = re.compile(r"\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*")


def _expected_codes(codes: str | None) -> str:
    """``http-check expect`` for Octavia's ``expected_codes`` (``200``, ``200-204``, ``200,202``)."""
    codes = (codes or "200").replace(" ", "")
    if not _CODES.fullmatch(codes):
        raise RenderError(f"health monitor expected_codes {codes!r} is not like 200, 200-204 or 200,202")
    if re.fullmatch(r"\d{3}", codes):
        return f"http-check expect status {codes}"
    expanded: list[str] = []
    for part in codes.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise RenderError(f"health monitor expected_codes range {part!r} is empty")
        expanded.extend(str(c) for c in range(int(low), int(high or low) + 1))
    return f"http-check expect rstatus ^({'|'.join(dict.fromkeys(expanded))})$"


def _default_pool_id(tree: LoadBalancerTree, listener: Listener) -> str | None:
    if listener.default_pool_id:
        return listener.default_pool_id if listener.default_pool_id in tree.pools else None
    for pool_id in sorted(tree.pools):
        if tree.pools[pool_id].listener_id == listener.id:
            return pool_id
    return None


def _rule_acl(rule: L7Rule, name: str) -> str:
    match = _MATCH.get(rule.compare_type or "")
    if match is None:
        raise RenderError(f"L7 rule {rule.id}: unsupported compare_type {rule.compare_type!r}")
    value = rule.value or ""
    kind = rule.type
    if kind == "PATH":
        fetch = "path"
    elif kind == "HOST_NAME":
        fetch = "req.hdr(host),field(1,:) -i"
    elif kind == "FILE_TYPE":
        fetch = "path -i"
        if rule.compare_type == "EQUAL_TO":
            match, value = "-m end", "." + value.lstrip(".")
    elif kind in ("HEADER", "COOKIE"):
        if not rule.key or not _TOKEN.fullmatch(rule.key):
            raise RenderError(f"L7 rule {rule.id}: {kind} rules need a token as key, not {rule.key!r}")
        fetch = f"req.hdr({rule.key})" if kind == "HEADER" else f"req.cook({rule.key})"
    else:
        raise RenderError(f"L7 rule {rule.id}: unsupported type {kind!r}")
    return f"    acl {name} {fetch} {match} {_arg(value, f'L7 rule {rule.id} value')}"


class _Renderer:
    def __init__(
        self,
        tree: LoadBalancerTree,
        settings: FlavorSettings,
        stats_socket: str,
        cert_files: Mapping[str, str],
        check_fastinter_ms: int | None,
        hard_stop_after_s: float | None,
    ) -> None:
        self.tree = tree
        self.flavor = flavor_settings(tree.lb.flavor, settings)
        self.stats_socket = stats_socket
        self.cert_files = cert_files
        self.check_fastinter_ms = check_fastinter_ms
        self.hard_stop_after_s = hard_stop_after_s
        self.lines: list[str] = []
        self.frontends: dict[str, str] = {}
        self.backends: dict[str, list[str]] = {}
        self.servers: dict[str, tuple[str, str]] = {}
        self.binds: list[tuple[str, int]] = []
        tree_ = tree
        self.members_of: dict[str, list[Member]] = {}
        for member_id in sorted(tree_.members):
            member = tree_.members[member_id]
            self.members_of.setdefault(member.pool_id or "", []).append(member)
        self.monitor_of: dict[str, HealthMonitor] = {}
        for hm_id in sorted(tree_.healthmonitors):
            hm = tree_.healthmonitors[hm_id]
            self.monitor_of.setdefault(hm.pool_id or "", hm)
        self.rules_of: dict[str, list[L7Rule]] = {}
        for rule_id in sorted(tree_.l7rules):
            rule = tree_.l7rules[rule_id]
            self.rules_of.setdefault(rule.l7policy_id or "", []).append(rule)

    def render(self) -> Rendered:
        self._global()
        wanted: list[tuple[Listener, str]] = []  # (listener, pool id) backends to render
        for listener_id in sorted(self.tree.listeners):
            wanted.extend(self._frontend(self.tree.listeners[listener_id]))
        for listener, pool_id in wanted:
            self._backend(listener, self.tree.pools[pool_id])
        return Rendered(
            text="\n".join(self.lines) + "\n",
            frontends=self.frontends,
            backends=self.backends,
            servers=self.servers,
            binds=self.binds,
        )

    def _global(self) -> None:
        lines = self.lines
        lines += [
            f"# load balancer {self.tree.lb.id}: written by lbactors, do not edit",
            "global",
            f"    stats socket {self.stats_socket} mode 600 level admin",
            "    stats timeout 30s",
        ]
        if self.flavor.max_connections > 0:
            lines.append(f"    maxconn {self.flavor.max_connections}")
        if self.hard_stop_after_s is not None:
            lines.append(f"    hard-stop-after {int(self.hard_stop_after_s * 1000)}ms")
        lines += [
            "",
            "defaults",
            "    timeout connect 5s",
            "    timeout client 50s",
            "    timeout server 50s",
            "    retries 3",
            "    option redispatch",
        ]

    def _frontend(self, listener: Listener) -> list[tuple[Listener, str]]:
        lid = listener.id or ""
        what = f"listener {lid}"
        mode = _LISTENER_MODE.get(listener.protocol or "")
        if mode is None:
            raise RenderError(f"{what}: protocol {listener.protocol!r} is not supported by haproxy")
        vip = _address(self.tree.lb.vip_address, f"load balancer {self.tree.lb.id} VIP")
        port = _port(listener.protocol_port, what)
        name = haproxy_name(lid)
        self.frontends[lid] = name
        if _enabled(listener) and _enabled(self.tree.lb):  # a disabled frontend binds nothing
            self.binds.append((vip.strip("[]"), port))
        bind = f"    bind {vip}:{port}"
        if listener.protocol == "TERMINATED_HTTPS":
            cert = self.cert_files.get(lid)
            if cert is None:
                raise RenderError(f"{what}: TERMINATED_HTTPS needs a certificate (cert)")
            bind += f" ssl crt {_arg(cert, 'certificate path')}"
        lines = self.lines
        lines += ["", f"frontend {name}", f"    mode {mode}", bind]
        if not (_enabled(listener) and _enabled(self.tree.lb)):
            lines.append("    disabled")
        maxconn = listener.connection_limit
        if maxconn is None or maxconn < 0:
            maxconn = self.flavor.max_connections
        if maxconn > 0:
            lines.append(f"    maxconn {maxconn}")
        timeout_client = listener.timeout_client_data
        if timeout_client is None:
            timeout_client = self.flavor.timeout_client_data
        lines.append(f"    timeout client {timeout_client}ms")
        if listener.allowed_cidrs:
            cidrs = []
            for cidr in listener.allowed_cidrs:
                try:
                    cidrs.append(str(ipaddress.ip_network(cidr, strict=False)))
                except ValueError:
                    raise RenderError(f"{what}: allowed_cidrs entry {cidr!r} is not a CIDR") from None
            lines.append(f"    tcp-request connection reject if !{{ src {' '.join(cidrs)} }}")
        inspect = listener.timeout_tcp_inspect
        if inspect is None:
            inspect = self.flavor.timeout_tcp_inspect
        if mode == "tcp" and inspect > 0:
            lines.append(f"    tcp-request inspect-delay {inspect}ms")

        used: dict[str, None] = {}
        default_pool = _default_pool_id(self.tree, listener)
        policies = sorted(
            (p for p in self.tree.l7policies.values() if p.listener_id == lid),
            key=lambda p: (p.position if p.position is not None else 0, p.id or ""),
        )
        if policies and mode != "http":
            raise RenderError(f"{what}: L7 policies need an HTTP or TERMINATED_HTTPS listener")
        actions: list[str] = []
        selectors: list[str] = []
        for index, policy in enumerate(policies, 1):
            rules = [r for r in self.rules_of.get(policy.id or "", []) if _enabled(r)]
            if not _enabled(policy) or not rules:
                continue  # as the amphora: a policy matches only through enabled rules
            condition = self._policy_action(policy, index, lid, used)
            if condition is None:
                continue
            acl_refs = []
            for rule in rules:
                acl = f"rule_{haproxy_name(rule.id or '')}"
                selectors.append(_rule_acl(rule, acl))
                acl_refs.append(("!" if rule.invert else "") + acl)
            selectors.append(
                f"    http-request set-var(txn.l7policy) int({index}) "
                f"if !{{ var(txn.l7policy) -m found }} {' '.join(acl_refs)}"
            )
            actions.append(condition)
        lines += selectors
        # redirects and denies are http-request rules, use_backend comes after them
        lines += [a for a in actions if not a.startswith("    use_backend")]
        lines += [a for a in actions if a.startswith("    use_backend")]
        if default_pool is not None:
            used.setdefault(default_pool, None)
            lines.append(f"    default_backend {self._backend_name(lid, default_pool)}")
        return [(listener, pool_id) for pool_id in used]

    def _policy_action(
        self, policy: L7Policy, index: int, lid: str, used: dict[str, None]
    ) -> str | None:
        when = f"if {{ var(txn.l7policy) -m int {index} }}"
        what = f"L7 policy {policy.id}"
        code = policy.redirect_http_code or 302
        if policy.action == "REJECT":
            return f"    http-request deny {when}"
        if policy.action == "REDIRECT_TO_POOL":
            pool_id = policy.redirect_pool_id
            if not pool_id or pool_id not in self.tree.pools:
                return None  # its pool is gone (or not known yet): the policy cannot match
            used.setdefault(pool_id, None)
            return f"    use_backend {self._backend_name(lid, pool_id)} {when}"
        if policy.action in ("REDIRECT_TO_URL", "REDIRECT_PREFIX"):
            if code not in _REDIRECT_CODES:
                raise RenderError(f"{what}: redirect_http_code {code} is not one of {sorted(_REDIRECT_CODES)}")
            if policy.action == "REDIRECT_TO_URL":
                target = f"location {_arg(policy.redirect_url or '', f'{what} redirect_url')}"
            else:
                target = f"prefix {_arg(policy.redirect_prefix or '', f'{what} redirect_prefix')}"
            return f"    http-request redirect code {code} {target} {when}"
        raise RenderError(f"{what}: unsupported action {policy.action!r}")

    @staticmethod
    def _backend_name(listener_id: str, pool_id: str) -> str:
        return f"{haproxy_name(listener_id)}:{haproxy_name(pool_id)}"

    def _backend(self, listener: Listener, pool: Pool) -> None:
        pid = pool.id or ""
        what = f"pool {pid}"
        mode = _LISTENER_MODE[listener.protocol or ""]
        if pool.protocol not in _POOL_PROTOCOLS:
            raise RenderError(f"{what}: protocol {pool.protocol!r} is not supported by haproxy")
        algorithm = _ALGORITHMS.get(pool.lb_algorithm or "ROUND_ROBIN")
        if algorithm is None:
            raise RenderError(f"{what}: lb_algorithm {pool.lb_algorithm!r} is not supported")
        name = self._backend_name(listener.id or "", pid)
        copies = self.backends.setdefault(pid, [])
        primary = copies[0] if copies else None
        copies.append(name)
        lines = self.lines
        lines += ["", f"backend {name}", f"    mode {mode}", f"    balance {algorithm}"]
        if not _enabled(pool):
            lines.append("    disabled")
        connect = listener.timeout_member_connect
        if connect is None:
            connect = self.flavor.timeout_member_connect
        data = listener.timeout_member_data
        if data is None:
            data = self.flavor.timeout_member_data
        lines += [f"    timeout connect {connect}ms", f"    timeout server {data}ms"]

        cookie = False
        persistence = pool.session_persistence or {}
        kind = persistence.get("type")
        if kind == "SOURCE_IP":
            expire = persistence.get("persistence_timeout") or 360
            if not isinstance(expire, int) or expire <= 0:
                raise RenderError(f"{what}: persistence_timeout {expire!r} must be a positive integer")
            lines += [f"    stick-table type ipv6 size 10k expire {expire}s", "    stick on src"]
        elif kind == "HTTP_COOKIE":
            if mode != "http":
                raise RenderError(f"{what}: HTTP_COOKIE persistence needs an HTTP listener")
            lines.append("    cookie SRV insert indirect nocache")
            cookie = True
        elif kind == "APP_COOKIE":
            if mode != "http":
                raise RenderError(f"{what}: APP_COOKIE persistence needs an HTTP listener")
            cookie_name = persistence.get("cookie_name")
            if not isinstance(cookie_name, str) or not _TOKEN.fullmatch(cookie_name):
                raise RenderError(f"{what}: APP_COOKIE persistence needs a cookie_name token, not {cookie_name!r}")
            lines += [
                "    stick-table type string len 64 size 10k",
                f"    stick store-response res.cook({cookie_name})",
                f"    stick match req.cook({cookie_name})",
            ]
        elif kind is not None:
            raise RenderError(f"{what}: session persistence {kind!r} is not supported")

        hm = self.monitor_of.get(pid)
        check = ""
        if hm is not None and _enabled(hm) and primary is None:
            check = self._health_monitor(hm, lines)
        elif hm is not None and _enabled(hm):
            check = "track"

        server_options = ""
        if pool.protocol == "PROXY":
            server_options += " send-proxy"
        elif pool.protocol == "PROXYV2":
            server_options += " send-proxy-v2"
        if pool.tls_enabled:
            server_options += " ssl verify none"
        for member in self.members_of.get(pid, []):
            mid = member.id or ""
            server = haproxy_name(mid)
            mwhat = f"member {mid}"
            weight = 1 if member.weight is None else member.weight
            if not 0 <= weight <= 256:
                raise RenderError(f"{mwhat}: weight {weight} is not in 0..256")
            line = (
                f"    server {server} {_address(member.address, mwhat)}:"
                f"{_port(member.protocol_port, mwhat)} weight {weight}"
            )
            if member.backup:
                line += " backup"
            if not _enabled(member):
                line += " disabled"
            if check == "track":
                line += f" track {primary}/{server}"
            elif check:
                line += check
                if member.monitor_address:
                    line += f" addr {_address(member.monitor_address, mwhat + ' monitor')}"
                if member.monitor_port:
                    line += f" port {_port(member.monitor_port, mwhat + ' monitor')}"
            if cookie:
                line += f" cookie {server}"
            lines.append(line + server_options)
            if primary is None:
                self.servers[mid] = (name, server)

    def _health_monitor(self, hm: HealthMonitor, lines: list[str]) -> str:
        """The monitor's backend lines; returns the options of each server line."""
        what = f"health monitor {hm.id}"
        kind = hm.type
        check = " check"
        if kind in ("HTTP", "HTTPS"):
            method = hm.http_method or "GET"
            if not re.fullmatch(r"[A-Z]+", method):
                raise RenderError(f"{what}: http_method {method!r} is not a method")
            url = hm.url_path or "/"
            if not url.startswith("/"):
                raise RenderError(f"{what}: url_path {url!r} must start with /")
            send = f"    http-check send meth {method} uri {_arg(url, f'{what} url_path')}"
            version = str(hm.http_version) if hm.http_version is not None else "1.0"
            if version not in ("1.0", "1.1"):
                raise RenderError(f"{what}: http_version {hm.http_version!r} is not 1.0 or 1.1")
            send += f" ver HTTP/{version}"
            if hm.domain_name:
                send += f" hdr Host {_arg(hm.domain_name, f'{what} domain_name')}"
            lines += ["    option httpchk", send, "    " + _expected_codes(hm.expected_codes)]
            if kind == "HTTPS":
                check += " check-ssl verify none"
        elif kind == "TLS-HELLO":
            lines.append("    option ssl-hello-chk")
        elif kind != "TCP":
            raise RenderError(f"{what}: type {kind!r} is not supported by haproxy")
        delay = hm.delay if hm.delay is not None else 5
        timeout = hm.timeout if hm.timeout is not None else delay
        rise = hm.max_retries if hm.max_retries is not None else 3
        fall = hm.max_retries_down if hm.max_retries_down is not None else 3
        for field, value, low in (("delay", delay, 1), ("timeout", timeout, 1), ("max_retries", rise, 1), ("max_retries_down", fall, 1)):
            if value < low:
                raise RenderError(f"{what}: {field} {value} must be >= {low}")
        lines.append(f"    timeout check {timeout}s")
        check += f" inter {delay}s rise {rise} fall {fall}"
        if self.check_fastinter_ms is not None:
            check += f" fastinter {self.check_fastinter_ms}ms downinter {self.check_fastinter_ms}ms"
        return check


def render_config(
    tree: LoadBalancerTree,
    *,
    stats_socket: str,
    cert_files: Mapping[str, str] | None = None,
    settings: FlavorSettings | None = None,
    check_fastinter_ms: int | None = None,
    hard_stop_after_s: float | None = None,
) -> Rendered:
    """The configuration of ``tree`` (deterministic: same tree, same text).

    ``cert_files`` maps a TERMINATED_HTTPS listener's id to its PEM file; ``settings`` are the
    defaults the load balancer's flavor metadata overrides; ``check_fastinter_ms`` sets
    HAProxy's ``fastinter`` / ``downinter`` (the check interval while a server changes state).
    Raises :class:`RenderError` naming the object at fault.
    """
    return _Renderer(
        tree,
        settings or FlavorSettings(),
        stats_socket,
        cert_files or {},
        check_fastinter_ms,
        hard_stop_after_s,
    ).render()


# --------------------------------------------------------------------------- show stat

StatRow = dict[str, str]


def parse_show_stat(text: str) -> list[StatRow]:
    """The rows of ``show stat`` (CSV whose header line starts with ``# ``)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise ValueError(f"not a show stat answer: {text[:80]!r}")
    header = lines[0][2:].split(",")
    return [dict(zip(header, row, strict=False)) for row in csv.reader(lines[1:])]


def _int(row: StatRow, key: str) -> int:
    value = row.get(key, "")
    return int(value) if value.isdigit() else 0


def listener_counters(rows: Iterable[StatRow], rendered: Rendered) -> dict[str, ListenerStatistics]:
    """Listener id -> counters of its frontend (as the running worker counts them)."""
    by_name = {name: lid for lid, name in rendered.frontends.items()}
    result: dict[str, ListenerStatistics] = {}
    for row in rows:
        if row.get("svname") != "FRONTEND":
            continue
        lid = by_name.get(row.get("pxname", ""))
        if lid is None:
            continue
        result[lid] = ListenerStatistics(
            id=lid,
            active_connections=_int(row, "scur"),
            bytes_in=_int(row, "bin"),
            bytes_out=_int(row, "bout"),
            request_errors=_int(row, "ereq"),
            total_connections=_int(row, "stot"),
        )
    return result


def _member_status(row: StatRow | None) -> str:
    if row is None:
        return "OFFLINE"
    status = row.get("status", "")
    if status.startswith("UP") or status == "NOLB":
        return "ONLINE"
    if status.startswith("DOWN"):
        return "ERROR"
    if status.startswith("MAINT"):
        return "OFFLINE"
    if status.startswith("DRAIN"):
        return "DRAINING"
    if status == "no check":
        return "NO_MONITOR"
    return "OFFLINE"


def _roll_up(children: list[str]) -> str:
    """ERROR when every counted child is in error, DEGRADED when some are, else ONLINE."""
    counted = [c for c in children if c != "OFFLINE"]
    bad = sum(1 for c in counted if c in ("ERROR", "DEGRADED"))
    if counted and all(c == "ERROR" for c in counted):
        return "ERROR"
    return "DEGRADED" if bad else "ONLINE"


def operating_statuses(
    tree: LoadBalancerTree, rendered: Rendered, rows: Iterable[StatRow]
) -> list[tuple[str, str, str]]:
    """``(kind, id, operating_status)`` of every object of ``tree`` from ``show stat`` rows.

    Members: UP → ONLINE, DOWN → ERROR, MAINT (admin down) → OFFLINE, DRAIN (weight 0) →
    DRAINING, no check → NO_MONITOR. A pool is ERROR when all its (enabled) members are,
    DEGRADED when some are; a listener and the load balancer roll their pools and listeners up
    the same way. Disabled objects, and pools no listener uses, are OFFLINE.
    """
    by_server = {(r.get("pxname", ""), r.get("svname", "")): r for r in rows}
    result: list[tuple[str, str, str]] = []
    pool_status: dict[str, str] = {}
    for pool_id in sorted(tree.pools):
        pool = tree.pools[pool_id]
        members = sorted((m for m in tree.members.values() if m.pool_id == pool_id), key=lambda m: m.id or "")
        attached = pool_id in rendered.backends
        statuses = []
        for member in members:
            mid = member.id or ""
            where = rendered.servers.get(mid)
            status = _member_status(by_server.get(where) if where else None)
            if not attached or not _enabled(member):
                status = "OFFLINE"
            statuses.append(status)
            result.append(("member", mid, status))
        if not _enabled(pool) or not attached:
            pool_status[pool_id] = "OFFLINE"
        else:
            pool_status[pool_id] = _roll_up(statuses)
        result.append(("pool", pool_id, pool_status[pool_id]))
    for hm_id in sorted(tree.healthmonitors):
        hm = tree.healthmonitors[hm_id]
        result.append(("healthmonitor", hm_id, "ONLINE" if _enabled(hm) else "OFFLINE"))
    listener_status: list[str] = []
    for lid in sorted(tree.listeners):
        listener = tree.listeners[lid]
        if not (_enabled(listener) and _enabled(tree.lb)):
            status = "OFFLINE"
        else:
            front = rendered.frontends.get(lid)
            pools = [
                pool_id
                for pool_id, names in rendered.backends.items()
                if any(n.startswith(f"{front}:") for n in names)
            ]
            status = _roll_up([pool_status.get(p, "ONLINE") for p in pools])
            listener_status.append(status)
        result.append(("listener", lid, status))
    for policy_id in sorted(tree.l7policies):
        result.append(("l7policy", policy_id, "ONLINE" if _enabled(tree.l7policies[policy_id]) else "OFFLINE"))
    for rule_id in sorted(tree.l7rules):
        result.append(("l7rule", rule_id, "ONLINE" if _enabled(tree.l7rules[rule_id]) else "OFFLINE"))
    lb_status = _roll_up(listener_status) if _enabled(tree.lb) else "OFFLINE"
    result.append(("loadbalancer", tree.lb.id or "", lb_status))
    return result
