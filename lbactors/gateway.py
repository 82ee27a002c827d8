"""The AMQP gateway actor: the daemon's only broker connection.

Consumes driver operations exactly where oslo.messaging's RPC server would (queues ``T`` and
``T.<host>`` on topic exchange ``common``, a ``T_fanout_<uuid>`` queue on fanout exchange
``T_fanout``), hands them on as :class:`~lbactors.messages.Operation` to a :class:`Sink` (the
in-process actor system, or the supervisor's router to worker processes), and publishes each
:class:`~lbactors.messages.Outcome` as oslo does: an ``update_loadbalancer_status`` cast to
``common`` / the driver topic, and a reply to ``_reply_q`` for a call.

The promise that the original listener breaks: a delivery is acked only after its outcome was
published *and confirmed* by the broker. A connection that drops loses nothing: every
unacked delivery comes back (redelivered) and is run again; backends are idempotent.

Outcomes are published in the order the sink produced them, so status casts of one load
balancer leave in the order its operations ran.

Re-assertions (:class:`~lbactors.messages.Reassertion`, Octavia's commit race) come in the
same stream and keep their place in it. Each is published with a confirm, but only while no
delivery of its load balancer is in flight here (received, its outcome not yet published):
an operation between the gateway and the actor (the router's outbox, a worker's intake)
is invisible to the actor that decided the re-assertion, so this check closes that gap. What
neither can see is an operation still in the broker: the residual window (README).
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Protocol, TypeVar

import msgspec
import structlog
import trio

from lbactors.amqp import oslo
from lbactors.amqp.broker_url import BrokerHost, parse_url
from lbactors.amqp.connection import (
    Channel,
    Confirmation,
    Connection,
    Delivery,
    open_connection,
    reconnect_delays,
)
from lbactors.amqp.errors import (
    AMQPError,
    ChannelClosed,
    ConnectionClosed,
    PublishNacked,
    PublishReturned,
)
from lbactors.cluster import Presence, ShardTable, fair_share
from lbactors.messages import (
    METHODS,
    Failure,
    InvalidOperation,
    Operation,
    Outbound,
    Outcome,
    Reassertion,
    Request,
    StatusUpdate,
    decode_request,
    merge_update,
)
from lbactors.model import sparse_variant
from lbactors.routing import owner_of, shard_of, shard_queue

log = structlog.get_logger("lbactors.gateway")

RPC_NAMESPACE = "control"
RPC_VERSION = (1, 0)
STATUS_METHOD = "update_loadbalancer_status"
STATISTICS_METHOD = "update_listener_statistics"

#: failures that mean "this message can never be run": the delivery is rejected, not acked
INVALID_FAILURES = frozenset({"NoSuchMethod", "InvalidOperation", "UnsupportedVersion"})


class GatewaySettings(msgspec.Struct, kw_only=True):
    """What the gateway needs to know; filled from the ``[amqp]`` configuration section."""

    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    topic: str = "vmware_nsx__lb_listener"
    driver_topic: str = "vmware_nsx__driver_listener"
    exchange: str = "common"
    host: str = "localhost"
    durable_queues: bool = False
    quorum_queues: bool = False
    ha_queues: bool = False
    transient_queues_ttl: int = 1800
    prefetch: int = 256
    heartbeat: int = 60
    max_body_bytes: int = 1 << 20
    dead_letter_exchange: str = ""
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    ca_file: str = ""
    #: ``[cluster]`` (docs/cluster.md): off, the topic queues' operations run here
    cluster: bool = False
    shards: int = 12
    balance_interval: float = 5.0
    shard_prefetch: int = 64
    takeover_delay: float = 1.0
    dedup_window: int = 10000


class Sink(Protocol):
    """Where operations go: ``submit`` may wait (backpressure)."""

    async def submit(self, op: Operation) -> None: ...


class RemoteFailure(Exception):
    """The driver answered our call with a failure (oslo's serialized exception)."""


class GatewaySetupError(Exception):
    """The broker refused our topology (e.g. PRECONDITION_FAILED: inequivalent arguments)."""


@dataclass(slots=True)
class _Pending:
    """A delivery whose outcome has not been confirmed yet."""

    generation: int
    channel: Channel
    delivery: Delivery
    method: str
    lb_id: str
    msg_id: str | None
    reply_q: str | None
    op_id: int = 0
    #: the cluster shard it came from and that consumer's epoch; -1: a topic queue
    shard: int = -1
    epoch: int = 0
    #: cluster mode: its oslo ``_unique_id``, remembered against duplicates
    unique_id: str | None = None
    #: trio time of the delivery (operation duration, age in ``lbactors status``)
    received: float = 0.0


@dataclass(slots=True)
class _Published:
    #: None: a re-assertion (no delivery to settle)
    pending: _Pending | None
    status: Confirmation | None
    reply: Confirmation | None
    #: why the message can never be run (it is dead-lettered, not acked), or None
    reject: str | None
    #: a re-assertion: its load balancer and how many entries it holds
    reassertion: tuple[str, int] | None = None
    #: the operation's result once settled: "ok", "error" (its objects went ERROR) or
    #: "dead_lettered"; "requeued" is decided at settling
    result: str = "ok"


@dataclass(slots=True)
class _Intake:
    """Cluster mode: a topic-queue delivery re-published into its shard, awaiting the confirm."""

    channel: Channel
    delivery: Delivery
    confirmation: Confirmation | None
    lb_id: str


#: headers of a re-published operation (docs/cluster.md §3), and of a probe (§4)
LB_HEADER = "x-lbactors-lb"
KEY_HEADER = "x-lbactors-key"
INTAKE_HEADER = "x-lbactors-intake"
PROBE_HEADER = "x-lbactors-probe"
#: most owner keys remembered for re-assertions (only those that differ from the lb id)
_LB_KEYS_KEPT = 65536


_K = TypeVar("_K")
_V = TypeVar("_V")


#: seconds the gateway remembers when each load balancer's last outcome came out
#: (``Gateway.lbs_busy_since``; the repair looks back ``stats.sync_timeout``)
BUSY_KEPT_S = 300.0


def _remember(recent: OrderedDict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """``recent[key] = value`` as the newest entry; the oldest go beyond ``limit``."""
    recent[key] = value
    recent.move_to_end(key)
    while len(recent) > limit:
        recent.popitem(last=False)


@dataclass
class GatewayCounters:
    received: int = 0
    completed: int = 0
    rejected: int = 0
    republished: int = 0
    reconnects: int = 0
    #: created objects' entries re-asserted (published and confirmed)
    reasserted: int = 0
    #: re-asserted entries not sent (a delivery of their load balancer was in flight, or
    #: in cluster mode its shard is not held here) or not confirmed
    reassertions_dropped: int = 0
    #: cluster mode: topic-queue operations re-published into a shard queue and confirmed
    shard_published: int = 0
    #: cluster mode: re-publishes nacked or returned (the original was requeued)
    shard_publish_failed: int = 0
    #: cluster mode: shards given away by balance
    shards_released: int = 0
    #: cluster mode: copies of an operation already run here, acked without running (an
    #: intake that died between its re-publish confirm and its ack: docs/cluster.md W2)
    duplicates: int = 0
    #: (reason kind, "dead_lettered" or "rejected") -> deliveries (:func:`rejection_kind`)
    rejections: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    #: wall-clock time the broker connection was last lost (0: never)
    last_disconnect: float = 0.0


def rejection_kind(reason: str) -> str:
    """A bounded label for why a delivery left the queue unrun (metrics; never the text)."""
    head = reason.partition(":")[0]
    if head == "malformed":
        return "malformed"
    if head == "PoisonOperation":
        return "poison"
    if head == "internal error":
        return "internal_error"
    if head == "UnsupportedVersion":
        return "unsupported_version"
    if head in INVALID_FAILURES:
        return "invalid_operation"
    return "other"


def _ignore_settled(method: str, result: str, seconds: float) -> None:
    pass


_status_encoder = msgspec.json.Encoder()


def _queue_arguments(settings: GatewaySettings) -> dict[str, Any]:
    """Arguments of the topic queues, as oslo.messaging declares them (facts §5.2)."""
    arguments: dict[str, Any] = {}
    if settings.quorum_queues:
        arguments["x-queue-type"] = "quorum"
    elif settings.ha_queues:
        arguments["x-ha-policy"] = "all"
    return arguments


def _version_supported(version: str | None) -> bool:
    """oslo's rule: same major, endpoint minor >= requested; a missing version means 1.0."""
    if version is None or version == "1.0":  # the driver's, every time: no parsing
        return True
    try:
        major, minor = (int(part) for part in version.split(".", 1))
    except ValueError:
        return False
    return major == RPC_VERSION[0] and minor <= RPC_VERSION[1]


#: a backend's owner key of a request (``Backend.affinity_key``); None: its load balancer id
Affinity = Callable[[Request], "str | None"]


# ---- routing from the ids alone ----------------------------------------------------------
# The supervisor needs only the load balancer id of an operation; the worker decodes the whole
# payload anyway. These Structs read just the fields that :func:`routing.owner_of` (through
# ``status.parents_of``) takes the id from, with the model's names, nesting, id fallback
# (``<kind>_id``) and id bound; msgspec skips the rest of the payload without building it.

_IdRef = Annotated[str, msgspec.Meta(max_length=255)]


class _LbIds(msgspec.Struct, kw_only=True):
    id: _IdRef | None = None
    loadbalancer_id: _IdRef | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.loadbalancer_id


class _ListenerIds(msgspec.Struct, kw_only=True):
    id: _IdRef | None = None
    listener_id: _IdRef | None = None
    loadbalancer_id: _IdRef | None = None
    loadbalancer: _LbIds | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.listener_id


class _PoolIds(msgspec.Struct, kw_only=True):
    id: _IdRef | None = None
    pool_id: _IdRef | None = None
    loadbalancer_id: _IdRef | None = None
    loadbalancer: _LbIds | None = None
    listener: _ListenerIds | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.pool_id


class _MemberIds(msgspec.Struct, kw_only=True):
    id: _IdRef | None = None
    member_id: _IdRef | None = None
    loadbalancer_id: _IdRef | None = None
    loadbalancer: _LbIds | None = None
    pool: _PoolIds | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.member_id


class _HealthMonitorIds(msgspec.Struct, kw_only=True):
    id: _IdRef | None = None
    healthmonitor_id: _IdRef | None = None
    loadbalancer_id: _IdRef | None = None
    loadbalancer: _LbIds | None = None
    pool: _PoolIds | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.healthmonitor_id


class _L7PolicyIds(msgspec.Struct, kw_only=True):
    id: _IdRef | None = None
    l7policy_id: _IdRef | None = None
    listener: _ListenerIds | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.l7policy_id


class _L7RuleIds(msgspec.Struct, kw_only=True):
    id: _IdRef | None = None
    l7rule_id: _IdRef | None = None
    policy: _L7PolicyIds | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = self.l7rule_id


_IdsOf = (
    _LbIds | _ListenerIds | _PoolIds | _MemberIds | _HealthMonitorIds | _L7PolicyIds | _L7RuleIds
)
_IDS_OF_KIND: dict[str, type[_IdsOf]] = {
    "loadbalancer": _LbIds,
    "listener": _ListenerIds,
    "pool": _PoolIds,
    "member": _MemberIds,
    "healthmonitor": _HealthMonitorIds,
    "l7policy": _L7PolicyIds,
    "l7rule": _L7RuleIds,
}


def _first_id(*candidates: str | None) -> str | None:
    for candidate in candidates:
        if candidate:
            return candidate
    return None


def _lb_of(obj: _IdsOf) -> str | None:
    """The load balancer id in one object, as ``status._parents_in`` finds it."""
    if isinstance(obj, _LbIds):
        return None
    if isinstance(obj, _ListenerIds):
        return _first_id(obj.loadbalancer_id, obj.loadbalancer.id if obj.loadbalancer else None)
    if isinstance(obj, _PoolIds):
        return _first_id(
            obj.loadbalancer_id,
            obj.loadbalancer.id if obj.loadbalancer else None,
            obj.listener.loadbalancer_id if obj.listener else None,
        )
    if isinstance(obj, _MemberIds | _HealthMonitorIds):
        pool = obj.pool
        return _first_id(
            obj.loadbalancer_id,
            obj.loadbalancer.id if obj.loadbalancer else None,
            pool.loadbalancer_id if pool else None,
            pool.loadbalancer.id if pool and pool.loadbalancer else None,
        )
    if isinstance(obj, _L7PolicyIds):
        listener = obj.listener
        return _first_id(
            listener.loadbalancer_id if listener else None,
            listener.loadbalancer.id if listener and listener.loadbalancer else None,
        )
    listener = obj.policy.listener if obj.policy else None
    return listener.loadbalancer_id if listener else None


#: the sparse variants of the ids Structs: an update's new object in one decode, with the keys
#: it left out ``UNSET`` (``model.sparse_variant``)
_SPARSE_IDS_OF_KIND = {kind: sparse_variant(cls) for kind, cls in _IDS_OF_KIND.items()}


def _ids_decoders() -> dict[str, tuple[str, Any, bool]]:
    """method -> (kind, decoder of its args' objects, whether it is an update), for every load
    balancer method of ``messages.METHODS``."""
    out: dict[str, tuple[str, Any, bool]] = {}
    for method, (kind, action, _) in METHODS.items():
        if kind is None:
            continue
        ids = _IDS_OF_KIND[kind]
        if action == "update":
            args = msgspec.defstruct(
                f"{method}_ids",
                [(f"old_{kind}", ids), (f"new_{kind}", _SPARSE_IDS_OF_KIND[kind])],
                kw_only=True,
            )
            out[method] = (kind, msgspec.json.Decoder(args), True)
        else:
            args = msgspec.defstruct(f"{method}_ids", [(kind, ids)], kw_only=True)
            out[method] = (kind, msgspec.json.Decoder(args), False)
    return out


_IDS_DECODERS = _ids_decoders()


def _owner_from_ids(method: str, raw_args: bytes) -> str | None:
    """The load balancer id of a load balancer operation from its ids alone; None when this
    cannot tell (not such a method, an id missing, a field ill-typed or the JSON broken):
    then :func:`route_key` decodes it whole and says why. An update's new object is merged
    over the old one as ``messages.decode_request`` does (a field sent, even as null, wins;
    the id is never cleared), and a parent the new object lacks comes from the old one, as in
    ``status.parents_of``."""
    spec = _IDS_DECODERS.get(method)
    if spec is None:
        return None
    kind, decoder, update = spec
    try:
        args = decoder.decode(raw_args)
        if not update:
            obj: _IdsOf = getattr(args, kind)
            old = None
        else:
            old = getattr(args, f"old_{kind}")
            obj = merge_update(old, getattr(args, f"new_{kind}"), kind)
    except _ROUTING_ERRORS:
        return None
    if not obj.id:
        return None
    if kind == "loadbalancer":
        return obj.id
    return _lb_of(obj) or (_lb_of(old) if old is not None else None)


_ROUTING_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeError, TypeError, ValueError)


def route(method: str, raw_args: bytes) -> str:
    """The actor key of an operation: its load balancer id (see :func:`routing.owner_of`).

    Read from the payload's ids alone when they name it, whatever else the payload holds:
    an operation that turns out invalid in the worker still runs in its load balancer's
    order (its ERROR cannot overtake that load balancer's earlier operations). Otherwise the
    payload is decoded whole: broken operations go to the actor of the object they name, or
    to the query path (``""``), where the actor layer turns them into an error outcome.
    Never raises.
    """
    return _owner_from_ids(method, raw_args) or route_key(method, raw_args)[0]


def route_key(method: str, raw_args: bytes, affinity: Affinity | None = None) -> tuple[str, str]:
    """``(load balancer id, owner key)`` of an operation, decoding its payload once.

    The owner key is ``affinity(request)`` when the backend gives one, else the load balancer
    id; it picks the worker, the cluster shard, and the lock that serializes the load
    balancers that share it. Never raises.
    """
    try:
        request = decode_request(method, raw_args)
        lb_id, found = owner_of(request)
    except InvalidOperation as exc:
        return exc.object_id or "", exc.object_id or ""
    except Exception as exc:  # a bug of ours: the actor layer reports it for this message only
        log.error("routing failed", method=method[:100], error=f"{type(exc).__name__}: {exc}"[:300])
        return "", ""
    if not found:
        log.warning("no load balancer found for object", method=method, object_id=lb_id)
    if affinity is None or not lb_id:
        return lb_id, lb_id
    try:
        key = affinity(request)
    except Exception as exc:  # the backend's bug: fall back to the load balancer alone
        log.error(
            "affinity_key failed; keyed by the load balancer",
            method=method[:100],
            lb_id=lb_id,
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
        key = None
    return lb_id, (key if isinstance(key, str) and key else lb_id)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A delivery that can never run: it leaves the queue (dead-lettered or dropped).

    ``event`` is the log line, ``reason`` says why (also the dead-letter header);
    ``reply_to`` / ``failure``: the failure a waiting caller is answered with.
    """

    event: str
    reason: str
    reply_to: oslo.ReplyAddress | None = None
    failure: Failure | None = None


def _malformed_failure(reason: str) -> Failure:
    return Failure(exc_class="MalformedMessage", module="lbactors.amqp.oslo", message=reason)


def screen(
    body: bytes, *, max_bytes: int, header_error: str | None = None, body_size: int = -1
) -> oslo.OsloMessage | Refusal:
    """What to do with one delivery's body: the message to run, or why it cannot run.

    Pure, and it never raises, whatever the bytes: this is where untrusted input from the
    wire is first read (``tests/test_bad_input.py`` fuzzes it). ``body_size`` is the size the
    broker announced, when ``body`` is only the head of a body over the limit (the AMQP
    client never holds more); such a message is refused without being parsed, and a call
    among them is not answered (its reply address was in the part never read).
    """
    if body_size > max_bytes:
        reason = f"malformed: body of {body_size} bytes exceeds the limit of {max_bytes}"
        return Refusal("rejected malformed message", reason, None, _malformed_failure(reason))
    try:
        message = oslo.decode_message(body, max_bytes=max_bytes)
    except oslo.MalformedMessage as exc:
        reason = f"malformed: {exc}"
        return Refusal(
            "rejected malformed message", reason, exc.reply_to, _malformed_failure(reason)
        )
    if header_error is not None:
        reason = f"malformed: undecodable AMQP properties: {header_error}"
        return Refusal(
            "rejected malformed message", reason, message.reply_to, _malformed_failure(reason)
        )
    if message.namespace != RPC_NAMESPACE or not _version_supported(message.version):
        version = (message.version or "1.0")[:40]
        failure = Failure(
            exc_class="UnsupportedVersion",
            module="oslo_messaging.rpc.dispatcher",
            message=(
                f"Endpoint does not support RPC version {version}. "
                f"Attempted method: {message.method}"
            ),
        )
        return Refusal(
            "rejected message for another endpoint",
            f"UnsupportedVersion: {failure.message}",
            message.reply_to,
            failure,
        )
    return message


def body_summary(body: bytes, limit: int = 160) -> str:
    """The start of a body for a log line: never more than ``limit`` bytes of it."""
    head = body[:limit]
    return repr(head) + (f"... ({len(body)} bytes)" if len(body) > limit else "")


#: the oslo context entry that marks a re-assertion (``ctxt["lbactors_reassertion"]`` at the
#: peer): lbactors' own provider agent skips the entries it has written already; any other
#: peer (vmware-nsx's agent) ignores its context
REASSERTION_CONTEXT = b',"_context_lbactors_reassertion":true'


def encode_status_cast(status: StatusUpdate | None, *, reassertion: bool = False) -> bytes:
    args = b'{"status":' + _status_encoder.encode(status) + b"}"
    return oslo.encode_cast(STATUS_METHOD, args, REASSERTION_CONTEXT if reassertion else b"")


def _entry_count(status: StatusUpdate) -> int:
    return sum(
        len(entries)
        for entries in msgspec.structs.astuple(status)
        if entries is not msgspec.UNSET
    )


_T = TypeVar("_T")


class _Drained(Generic[_T]):
    """``async for item in _Drained(channel)``: the items of ``channel``, without a scheduling
    round per item that is already there (trio's ``receive`` yields even then). A burst is
    handled in one scheduler pass, so its publishes and acks reach the connection's writer
    together and leave in one ``send`` (one system call, one wake-up of the broker) instead
    of one each. Waits, and so yields, only when the channel is empty."""

    __slots__ = ("_channel",)

    def __init__(self, channel: trio.MemoryReceiveChannel[_T]) -> None:
        self._channel = channel

    def __aiter__(self) -> _Drained[_T]:
        return self

    async def __anext__(self) -> _T:
        try:
            return self._channel.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        try:
            return await self._channel.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


async def _send_soon(channel: trio.MemorySendChannel[_T], item: _T) -> None:
    """``channel.send(item)`` without the scheduling round when there is room (see
    :class:`_Drained`)."""
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        await channel.send(item)


class Gateway:
    """Owns the broker connection; see the module docstring. Start with :meth:`serve`."""

    def __init__(
        self,
        settings: GatewaySettings,
        sink: Sink,
        outcomes: trio.MemoryReceiveChannel[Outbound],
        *,
        route: Callable[[str, bytes], str] = route,
        affinity: Affinity | None = None,
        lb_affinity: Callable[[str], str | None] | None = None,
        on_fence: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self._broker_url = parse_url(settings.url)
        #: where the next connect round starts in the URL's hosts: round-robin, like oslo's
        #: rabbit driver (kombu_failover_strategy's default): after a connection on host i
        #: is lost, the next round starts at host i + 1, so a dead node is not tried first
        #: again and again; a round in which no host could be opened leaves it where it was
        self._next_host = 0
        #: the position of the host the current connection is open on (None: not open)
        self._open_host: int | None = None
        self.outcomes = outcomes
        self._route = route
        self._op_ids = itertools.count(1)
        self._ledger: dict[int, _Pending] = {}
        #: load balancer id -> its deliveries in the ledger
        self._ledger_lbs: dict[str, int] = {}
        #: lb_id -> trio time its last outcome came out, oldest first, kept BUSY_KEPT_S
        self._lb_outcome_at: OrderedDict[str, float] = OrderedDict()
        self._generation = 0
        self._publish_channel: Channel | None = None
        self._connected = trio.Event()
        self._fanout_queue = f"{settings.topic}_fanout_{uuid.uuid4().hex}"
        self._reply_queue = f"reply_{uuid.uuid4().hex}"
        self._reply_waiters: dict[str, trio.MemorySendChannel[tuple[Any, Any]]] = {}
        self.counters = GatewayCounters()
        #: called once per settled delivery with (method, result, seconds since delivery);
        #: the daemon sets it to its metrics' observer when ``[metrics]`` is on
        self.on_settled: Callable[[str, str, float], None] = _ignore_settled
        self._unsettled = 0
        self._all_settled = trio.Event()
        self._draining = False
        self._stop_requested = trio.Event()
        self._affinity = affinity
        #: with ``affinity``: the owner key of a load balancer known by id only (None: unknown)
        self._lb_affinity = lb_affinity
        #: cluster mode: called after the connection is lost, before reconnecting: whatever
        #: runs here now belongs to another daemon (docs/cluster.md §7, self-fencing)
        self._on_fence = on_fence
        #: this daemon in presence hellos and probe ids
        self.daemon_id = f"{settings.host}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._shards = ShardTable(settings.shards)
        self._shard_channels: dict[int, Channel] = {}
        #: shards whose channel we close on purpose (balance), so their consumer loop
        #: registers again instead of failing the connection
        self._releases: set[int] = set()
        #: set (and replaced) whenever a shard delivery settles: a release waits on it
        self._shard_progress = trio.Event()
        self._presence = Presence(self.daemon_id, 3 * settings.balance_interval)
        self._probe_ids = itertools.count(1)
        #: owner keys of load balancers whose key is not their id (bounded, oldest dropped):
        #: where a re-assertion's load balancer lives
        self._lb_keys: OrderedDict[str, str] = OrderedDict()
        #: oslo ``_unique_id`` of the last ``dedup_window`` shard deliveries handed on here
        #: (forgotten again when one is requeued or its connection lost: it comes back)
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: load balancer -> (shard, consumer epoch) of its last operation handed on here: a
        #: re-assertion goes out only while that consumer still holds the shard (bounded)
        self._lb_epochs: OrderedDict[str, tuple[int, int]] = OrderedDict()

    # ------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def in_flight(self) -> int:
        """Deliveries handed on whose outcome is not yet settled (acked, nacked or rejected)."""
        return self._unsettled

    @property
    def cluster_shards(self) -> int:
        """S in cluster mode, else 0."""
        return self.settings.shards if self.settings.cluster else 0

    def held_shards(self) -> list[int]:
        """Cluster shards whose operations run here now (docs/cluster.md §6)."""
        return self._shards.held()

    def settled_shards(self) -> dict[int, int]:
        """Shards held and settled here, with their consumer epochs (the repair's evidence)."""
        return self._shards.settled()

    def shard_of_lb(self, lb_id: str) -> int | None:
        """The shard of a load balancer, by its owner key (one seen in an operation, else
        the backend's ``lb_affinity_key``, else its id); None: its key is unknown here."""
        key: str | None = self._lb_keys.get(lb_id)
        if key is None:
            if self._affinity is None:
                key = lb_id
            elif self._lb_affinity is not None:
                key = self._lb_affinity(lb_id)
        return None if not key else shard_of(key, self.settings.shards)

    def _held_since_last_operation(self, lb_id: str) -> bool:
        """Whether the shard consumer that handed on ``lb_id``'s last operation here still
        holds its shard (the same epoch: not lost and taken back in between)."""
        last = self._lb_epochs.get(lb_id)
        if last is None:
            return False
        shard, epoch = last
        return self._shards.shards[shard].epoch == epoch and shard in self._shards.held()

    @property
    def confirms_pending(self) -> int:
        """Publishes (statuses, replies, re-assertions) the broker has not confirmed yet."""
        channel = self._publish_channel
        return channel.unconfirmed if channel is not None else 0

    def received_at(self, op_id: int) -> float | None:
        """Trio time operation ``op_id``'s delivery arrived; None once it is settled."""
        pending = self._ledger.get(op_id)
        return pending.received if pending is not None else None

    async def drain(self) -> None:
        """Stop handing on new deliveries and wait until every in-flight one is settled.

        New deliveries stay unacked: the broker redelivers them once the connection closes.
        The caller bounds the wait with its own cancel scope (the grace period).
        """
        self._draining = True
        while self._unsettled:
            self._all_settled = trio.Event()
            await self._all_settled.wait()

    def stop(self) -> None:
        """Close the broker connection in order (unacked deliveries go back to the queue) and
        make :meth:`serve` return."""
        self._stop_requested.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, consume and publish until :meth:`stop` (or cancelled); reconnect with
        backoff on failures."""
        self._warn_if_not_durable()
        self._warn_if_mixed_credentials()
        started = False
        delays = reconnect_delays(
            initial=self.settings.reconnect_initial, maximum=self.settings.reconnect_max
        )
        while True:
            lost = False
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._serve_connection)
                    if not started:
                        task_status.started(self)
                        started = True
                    delays = reconnect_delays(
                        initial=self.settings.reconnect_initial,
                        maximum=self.settings.reconnect_max,
                    )
            except* GatewaySetupError:
                raise
            except* (AMQPError, OSError) as group:
                self._on_disconnect(group)
                lost = True
            finally:
                if self._open_host is not None:
                    self._next_host = (self._open_host + 1) % len(self._broker_url.hosts)
                    self._open_host = None
            if self._stop_requested.is_set():
                self._connected = trio.Event()
                log.info("broker connection closed")
                return
            if lost and self.settings.cluster and self._on_fence is not None:
                # the broker has handed our shards to the next daemon in line: stop running
                # their operations before registering again (docs/cluster.md §7)
                log.warning("fencing: abandoning every operation in flight")
                await self._on_fence()
            delay = next(delays)
            log.info(
                "reconnecting to the broker",
                delay_s=round(delay, 2),
                broker=self._broker_url.hosts[self._next_host].address,
            )
            await trio.sleep(delay)

    async def publish_cast(self, method: str, args_json: bytes) -> None:
        """Publish one cast to the driver topic and wait for the broker's confirm.

        Used for statistics; waits while the broker is unreachable.
        """
        body = oslo.encode_cast(method, args_json)
        while True:
            await self._connected.wait()
            channel = self._publish_channel
            assert channel is not None
            try:
                confirmation = await channel.publish(
                    self.settings.exchange,
                    self.settings.driver_topic,
                    body,
                    properties=oslo.CAST_PROPERTIES_WIRE,
                    mandatory=True,
                )
                assert confirmation is not None  # the publish channel is in confirm mode
                await confirmation.wait()
                return
            except (ConnectionClosed, ChannelClosed, PublishNacked, PublishReturned) as exc:
                log.warning("cast not confirmed; retrying", method=method, error=repr(exc))
                await trio.sleep(0.5)  # meanwhile the connection loop notices and reconnects

    async def call_driver(self, method: str, args_json: bytes, ttl: float) -> Any:
        """An RPC call to the driver topic (``get_active_loadbalancers``), as oslo's RPCClient does.

        Returns the decoded result; raises :class:`RemoteFailure` for a failure reply. The caller
        bounds the wait with its own cancel scope; ``ttl`` (seconds) is the message's expiration.
        """
        await self._connected.wait()
        channel = self._publish_channel
        assert channel is not None
        msg_id = uuid.uuid4().hex
        body = oslo.encode_call(method, args_json, msg_id=msg_id, reply_q=self._reply_queue)
        send, receive = trio.open_memory_channel[tuple[Any, Any]](1)
        self._reply_waiters[msg_id] = send
        try:
            confirmation = await channel.publish(
                self.settings.exchange,
                self.settings.driver_topic,
                body,
                properties=oslo.call_properties(ttl),
                mandatory=True,
            )
            assert confirmation is not None  # the publish channel is in confirm mode
            await confirmation.wait()
            result, failure = await receive.receive()
        finally:
            self._reply_waiters.pop(msg_id, None)
        if failure is not None:
            raise RemoteFailure(failure)
        return result

    def _warn_if_mixed_credentials(self) -> None:
        """oslo's warning: a host without credentials logs in as guest, not as the others."""
        url = self._broker_url
        if not url.mixed_credentials:
            return
        log.warning(
            "some broker hosts have no user name and password: they log in as guest/guest "
            "(oslo's rule too); give every host its user:password@",
            without_credentials=[host.address for host in url.hosts if not host.credentials],
        )

    def _warn_if_not_durable(self) -> None:
        """Transient queues (oslo's default too) vanish with a broker restart, and with them
        every operation queued for us and every status queued for the driver."""
        s = self.settings
        if s.durable_queues or s.quorum_queues:
            return
        log.warning(
            "queues are not durable: a broker restart loses every operation queued for "
            "lbactors and every status queued for the driver (those objects stay PENDING_*); "
            "set amqp.durable_queues = true together with Octavia's "
            "[oslo_messaging_rabbit] amqp_durable_queues = true (both sides must declare "
            "the queues alike)",
            topic=s.topic,
            driver_topic=s.driver_topic,
        )

    # ------------------------------------------------------------------ connection

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self._broker_url.tls:
            return None
        context = ssl.create_default_context(cafile=self.settings.ca_file or None)
        return context

    async def _serve_connection(self, *, task_status: trio.TaskStatus[None]) -> None:
        settings = self.settings
        async with open_connection(
            self._broker_url,
            heartbeat=settings.heartbeat,
            ssl_context=self._ssl_context(),
            client_name=f"lbactors gateway {settings.host}",
            max_body=settings.max_body_bytes,
            first_host=self._next_host,
            on_host_failed=self._on_host_failed,
        ) as connection:
            self._open_host = connection.broker_index
            broker = connection.broker
            assert broker is not None
            publish_channel = await connection.open_channel()
            await publish_channel.confirm_select()
            consume_channel = await connection.open_channel()
            try:
                queues = await self._declare_topology(consume_channel)
            except ChannelClosed as exc:
                raise GatewaySetupError(
                    f"the broker refused the topology: {exc.reply_code} {exc.reply_text}"
                ) from exc
            await consume_channel.basic_qos(settings.prefetch)

            self._generation += 1
            generation = self._generation
            self._publish_channel = publish_channel
            published_send, published_receive = trio.open_memory_channel[_Published](
                settings.prefetch * 4
            )
            await consume_channel.queue_declare(
                self._reply_queue, arguments={"x-expires": settings.transient_queues_ttl * 1000}
            )
            if settings.cluster:
                await self._declare_shards(connection)
            async with trio.open_nursery() as nursery:
                intake: trio.MemorySendChannel[_Intake] | None = None
                if settings.cluster:
                    intake, intake_receive = trio.open_memory_channel[_Intake](
                        settings.prefetch * 4
                    )
                    nursery.start_soon(self._settle_intake, intake_receive)
                for queue in queues:
                    consumer = await consume_channel.basic_consume(queue)
                    nursery.start_soon(
                        self._consume,
                        consumer,
                        consume_channel,
                        generation,
                        intake,
                        queue == self._fanout_queue,
                    )
                if settings.cluster:
                    for index in range(settings.shards):
                        nursery.start_soon(self._serve_shard, connection, index, generation)
                    await nursery.start(self._serve_balance, connection)
                replies = await consume_channel.basic_consume(self._reply_queue)
                nursery.start_soon(self._consume_replies, replies, consume_channel)
                nursery.start_soon(
                    self._publish_outcomes, publish_channel, generation, published_send
                )
                nursery.start_soon(self._settle, published_receive)
                self._connected.set()
                log.info(
                    "gateway connected",
                    broker=broker.address,
                    queues=queues,
                    exchange=settings.exchange,
                    driver_topic=settings.driver_topic,
                    generation=generation,
                    cluster_shards=self.cluster_shards,
                )
                task_status.started()
                await self._stop_requested.wait()
                nursery.cancel_scope.cancel()
        # leaving ``open_connection`` normally: connection.close / close-ok

    async def _declare_topology(self, channel: Channel) -> list[str]:
        """Declare what oslo.messaging's RPC server declares (facts §5.2), plus the driver's queue."""
        s = self.settings
        durable = s.durable_queues or s.quorum_queues
        arguments = _queue_arguments(s)
        await channel.exchange_declare(s.exchange, "topic", durable=durable)
        server_queue = f"{s.topic}.{s.host}"
        for queue in (s.topic, server_queue):
            await channel.queue_declare(queue, durable=durable, arguments=arguments or None)
            await channel.queue_bind(queue, s.exchange, queue)
        fanout_exchange = f"{s.topic}_fanout"
        await channel.exchange_declare(fanout_exchange, "fanout", auto_delete=True)
        await channel.queue_declare(
            self._fanout_queue, arguments={"x-expires": s.transient_queues_ttl * 1000}
        )
        await channel.queue_bind(self._fanout_queue, fanout_exchange, s.topic)
        # The driver's own queue, declared exactly as its oslo RPC server does, so that a
        # status cast is queued even while the driver agent is down (never silently dropped).
        await channel.queue_declare(s.driver_topic, durable=durable, arguments=arguments or None)
        await channel.queue_bind(s.driver_topic, s.exchange, s.driver_topic)
        return [s.topic, server_queue, self._fanout_queue]

    def _on_host_failed(self, host: BrokerHost, error: AMQPError) -> None:
        """A host of the URL could not be opened; ``open_connection`` tries the next one."""
        log.warning("broker host failed", broker=host.address, error=str(error))

    def _on_disconnect(self, group: BaseExceptionGroup[BaseException]) -> None:
        self._connected = trio.Event()
        self._publish_channel = None
        lost = len(self._ledger)
        # Deliveries of the dead connection will be redelivered by the broker; outcomes of the
        # operations already handed on are dropped when they arrive (stale generation).
        for pending in self._ledger.values():
            if pending.unique_id is not None:
                self._seen.pop(pending.unique_id, None)
        self._ledger.clear()
        self._ledger_lbs.clear()
        self._shards.lose_all()
        self._shard_channels.clear()
        self._releases.clear()
        self._unsettled = 0
        self._all_settled.set()
        self.counters.reconnects += 1
        self.counters.last_disconnect = time.time()
        log.warning(
            "broker connection lost",
            error=[repr(exc) for exc in group.exceptions],
            unacked_deliveries=lost,
        )

    # ------------------------------------------------------------------ cluster

    def _owner(
        self, method: str, args: bytes, delivery: Delivery, shard: int
    ) -> tuple[str, str]:
        """``(load balancer id, owner key)`` of a delivery: from the intake's headers on a
        shard delivery (it routed the original), else from the payload."""
        if shard >= 0:
            headers = delivery.properties.headers or {}
            lb_id, key = headers.get(LB_HEADER), headers.get(KEY_HEADER)
            if not (isinstance(lb_id, str) and isinstance(key, str) and lb_id and key):
                lb_id, key = self._key_from_payload(method, args)
        else:
            lb_id, key = self._key_from_payload(method, args)
        if key != lb_id:
            _remember(self._lb_keys, lb_id, key, _LB_KEYS_KEPT)
        return lb_id, key

    def _key_from_payload(self, method: str, args: bytes) -> tuple[str, str]:
        if self._affinity is None:
            lb_id = self._route(method, args)
            return lb_id, lb_id
        # the owner key is the load balancer's for its whole life (the affinity contract,
        # backends/base.py): when the backend tells it from the id, the ids are enough
        lb_affinity = self._lb_affinity
        if lb_affinity is not None:
            named = _owner_from_ids(method, args)
            if named:
                try:
                    key = lb_affinity(named)
                except Exception:  # the backend's bug: the whole decode below logs it
                    key = None
                if isinstance(key, str) and key:
                    return named, key
        return route_key(method, args, self._affinity)

    async def _declare_shards(self, connection: Connection) -> None:
        """The shard exchange and queues (docs/cluster.md §2), after checking that no daemon
        with more shards ran on this broker."""
        s = self.settings
        channel = await connection.open_channel()
        try:
            await self._check_shard_count(connection)
            exchange = f"{s.topic}.shards"
            await channel.exchange_declare(exchange, "direct", durable=True)
            for index in range(s.shards):
                queue = shard_queue(s.topic, index)
                await channel.queue_declare(
                    queue,
                    durable=True,
                    arguments={"x-queue-type": "quorum", "x-single-active-consumer": True},
                )
                await channel.queue_bind(queue, exchange, f"{index:03d}")
            presence = f"{s.topic}.cluster"
            await channel.exchange_declare(presence, "fanout", durable=True)
        except ChannelClosed as exc:
            raise GatewaySetupError(
                f"the broker refused the cluster topology: {exc.reply_code} {exc.reply_text}"
            ) from exc
        finally:
            await channel.close()

    async def _check_shard_count(self, connection: Connection) -> None:
        """Refuse to run when ``<topic>.shard.<S>`` exists: a daemon configured with more
        shards has run here, and our ``shard_of`` would split its keys over two queues."""
        s = self.settings
        beyond = shard_queue(s.topic, s.shards)
        channel = await connection.open_channel()
        try:
            await channel.queue_declare(beyond, passive=True)
        except ChannelClosed as exc:
            if exc.reply_code == 404:
                return
            raise
        await channel.close()
        raise GatewaySetupError(
            f"shard queue {beyond} exists: another daemon runs with more than "
            f"cluster.shards = {s.shards} shards; every daemon of a deployment needs the same "
            "number (changing it: stop every daemon, empty and delete the shard queues)"
        )

    async def _republish(
        self,
        channel: Channel,
        delivery: Delivery,
        lb_id: str,
        key: str,
        intake: trio.MemorySendChannel[_Intake],
    ) -> None:
        """Put a topic-queue operation into its shard queue; acked once confirmed."""
        publish_channel = self._publish_channel
        assert publish_channel is not None
        headers = dict(delivery.properties.headers or {})
        headers[LB_HEADER] = lb_id
        headers[KEY_HEADER] = key
        headers[INTAKE_HEADER] = self.settings.host
        properties = oslo.with_headers(delivery.properties, headers)
        properties.delivery_mode = 2
        confirmation = await publish_channel.publish(
            f"{self.settings.topic}.shards",
            f"{shard_of(key, self.settings.shards):03d}",
            delivery.body,
            properties=properties,
            mandatory=True,
        )
        self._unsettled += 1
        await intake.send(_Intake(channel, delivery, confirmation, lb_id))

    async def _settle_intake(self, receive: trio.MemoryReceiveChannel[_Intake]) -> None:
        """Ack each re-published original once its copy is confirmed in the shard queue
        (docs/cluster.md B4); requeue it when the copy was nacked or returned."""
        async for item in receive:
            try:
                if item.confirmation is not None:
                    await item.confirmation.wait()
            except (PublishNacked, PublishReturned) as exc:
                self.counters.shard_publish_failed += 1
                log.error("re-publish into the shard not confirmed; requeued",
                          lb_id=item.lb_id, error=repr(exc)[:300])
                await item.channel.nack(item.delivery.delivery_tag, requeue=True)
            else:
                self.counters.shard_published += 1
                await item.channel.ack(item.delivery.delivery_tag)
            self._unsettled -= 1
            if not self._unsettled:
                self._all_settled.set()

    async def _serve_shard(self, connection: Connection, index: int, generation: int) -> None:
        """Register on shard queue ``index`` and run what arrives while this consumer is the
        active one; after a release, register again (at the back of the line)."""
        s = self.settings
        queue = shard_queue(s.topic, index)
        while True:
            channel = await connection.open_channel()
            await channel.basic_qos(s.shard_prefetch)
            consumer = await channel.basic_consume(queue)
            epoch = self._shards.consuming(index)
            self._shard_channels[index] = channel
            try:
                async for delivery in consumer:
                    await self._on_shard_delivery(delivery, channel, generation, index, epoch)
            except ChannelClosed:
                if index not in self._releases:
                    raise
            if index not in self._releases:
                raise ChannelClosed(0, f"consumer of {queue} ended by the broker", 0)
            self._releases.discard(index)
            self._shards.lost(index)
            log.info("shard released", shard=index)

    async def _on_shard_delivery(
        self, delivery: Delivery, channel: Channel, generation: int, index: int, epoch: int
    ) -> None:
        if index in self._releases:
            # its channel is closing (or closed): not a frame more on it, not even an ack
            # (RabbitMQ closes the whole connection for a frame on a channel it has closed);
            # what is left comes back to the next holder
            return
        current, first = self._shards.delivered(index, epoch)
        if not current:
            return
        probe = (delivery.properties.headers or {}).get(PROBE_HEADER)
        if first:
            log.info("shard active here", shard=index, redelivered=delivery.redelivered)
            if delivery.redelivered and self.settings.takeover_delay > 0:
                # the previous holder died or lost its connection with this in hand: its
                # backend calls may still be landing (docs/cluster.md §7, W1)
                await trio.sleep(self.settings.takeover_delay)
        if probe is not None:
            if not self._shards.accepts(index, epoch):
                return  # releasing: returned with the rest
            await channel.ack(delivery.delivery_tag)
            if isinstance(probe, str):
                self._shards.probe_arrived(index, epoch, probe)
            return
        if not self._shards.accepts(index, epoch):
            return  # releasing: left unacked, returned to the next holder on close
        await self._on_delivery(delivery, channel, generation, shard=index, epoch=epoch)

    async def _serve_balance(
        self, connection: Connection, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Presence hellos, probes and releases, every ``balance_interval`` (±20 %)."""
        s = self.settings
        channel = await connection.open_channel()
        presence = f"{s.topic}.cluster"
        queue, _, _ = await channel.queue_declare("", exclusive=True, auto_delete=True)
        await channel.queue_bind(queue, presence)
        hellos = await channel.basic_consume(queue, no_ack=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hear, hellos)
            task_status.started()
            while True:
                await self._balance_tick(connection, channel, nursery)
                await trio.sleep(s.balance_interval * random.uniform(0.8, 1.2))

    async def _hear(self, hellos: Any) -> None:
        """Hellos: ``<daemon id> <shards held>``; anything else is ignored."""
        async for delivery in hellos:
            try:
                daemon, held = delivery.body.decode().split(" ")
                count = int(held)
            except ValueError:  # UnicodeDecodeError is one
                continue
            if daemon and len(daemon) < 256:
                self._presence.heard(daemon, trio.current_time(), count)

    async def _balance_tick(
        self, connection: Connection, channel: Channel, nursery: trio.Nursery
    ) -> None:
        s = self.settings
        await self._check_shard_count(connection)
        hello = f"{self.daemon_id} {len(self._shards.held())}"
        await channel.publish(f"{s.topic}.cluster", "", hello.encode())
        for index in range(s.shards):
            if not self._shards.wants_probe(index):
                continue
            probe_id = f"{self.daemon_id}/{next(self._probe_ids)}"
            self._shards.probe_published(index, probe_id)
            await channel.publish(
                f"{s.topic}.shards",
                f"{index:03d}",
                b"",
                properties=oslo.with_headers(oslo.CAST_PROPERTIES, {PROBE_HEADER: probe_id}),
            )
        now = trio.current_time()
        daemons = self._presence.count(now)
        if not self._presence.someone_below(fair_share(s.shards, daemons), now):
            return
        for index in self._shards.to_release(daemons):
            self._shards.releasing(index)
            nursery.start_soon(self._release, index, daemons)

    async def _release(self, index: int, daemons: int) -> None:
        """Give shard ``index`` away: settle what was handed on, then close its channel, so
        the broker returns the rest in order to the next consumer in line (docs/cluster.md
        §5). Never ``basic.cancel``: a cancelled consumer keeps its unacked messages while the
        next one starts."""
        while not self._shards.idle(index):
            await self._shard_progress.wait()
        channel = self._shard_channels.get(index)
        if channel is None:
            return
        self.counters.shards_released += 1
        log.info("releasing shard", shard=index, daemons=daemons)
        self._releases.add(index)
        await channel.close()

    # ------------------------------------------------------------------ inbound

    async def _consume(
        self,
        consumer: Any,
        channel: Channel,
        generation: int,
        intake: trio.MemorySendChannel[_Intake] | None = None,
        fanout: bool = False,
    ) -> None:
        async for delivery in consumer:
            await self._on_delivery(delivery, channel, generation, intake=intake, fanout=fanout)

    async def _consume_replies(self, consumer: Any, channel: Channel) -> None:
        """Replies to our calls. Acked one by one, so the broker's prefetch bounds what a
        flood into the reply queue can queue here (docs/bounds.md)."""
        async for delivery in consumer:
            self.on_reply(delivery.body)
            await channel.ack(delivery.delivery_tag)

    def on_reply(self, body: bytes) -> None:
        """Hand a reply to the call waiting for it. Anyone who can publish can put anything in
        our reply queue: a malformed reply, one that nobody waits for, a second reply to the
        same call, a result too deep to decode; each is logged and dropped, never raised."""
        try:
            msg_id, result, failure, ending = oslo.decode_reply(body)
        except oslo.MalformedMessage as exc:
            log.warning("malformed reply dropped", reason=str(exc), bytes=len(body))
            return
        if not ending:
            return
        # popped: a second reply to the same call finds nobody waiting
        waiter = self._reply_waiters.pop(msg_id or "", None)
        if waiter is None:
            log.warning("reply that no call waits for dropped", msg_id=(msg_id or "")[:64])
            return
        try:
            value = msgspec.json.decode(result) if result is not None else None
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            log.warning("undecodable reply result", msg_id=msg_id, error=type(exc).__name__)
            value = None
        waiter.send_nowait((value, failure))

    async def _on_delivery(
        self,
        delivery: Delivery,
        channel: Channel,
        generation: int,
        *,
        intake: trio.MemorySendChannel[_Intake] | None = None,
        fanout: bool = False,
        shard: int = -1,
        epoch: int = 0,
    ) -> None:
        """Screen, route and hand on one delivery.

        ``intake`` (cluster mode, a topic queue): a load balancer's operation is re-published
        into its shard queue instead of run here. ``shard`` / ``epoch``: it came from that
        shard queue's consumer.
        """
        if self._draining:
            return  # left unacked: redelivered to the next consumer once we close
        self.counters.received += 1
        try:
            verdict = screen(
                delivery.body,
                max_bytes=self.settings.max_body_bytes,
                header_error=delivery.header_error,
                body_size=delivery.body_size,
            )
            if isinstance(verdict, Refusal):
                await self._refuse(channel, delivery, verdict)
                return
            message = verdict
            args = bytes(message.args)
            lb_id, key = self._owner(message.method, args, delivery, shard)
            if intake is not None and lb_id:
                if fanout:  # every daemon has a copy: N re-publishes could interleave
                    await self._refuse(
                        channel,
                        delivery,
                        Refusal(
                            "rejected load balancer operation from the fanout queue",
                            "fanout operation in cluster mode",
                            message.reply_to,
                            Failure(
                                exc_class="NotSupported",
                                module="lbactors.gateway",
                                message="cluster mode: cast operations to the topic",
                            ),
                        ),
                    )
                    return
                await self._republish(channel, delivery, lb_id, key, intake)
                return
        except (AMQPError, OSError):
            raise  # the connection is gone: the delivery comes back on the next one
        except Exception as exc:
            # a bug of ours, met by this one message: it must not take the daemon down, nor
            # come back to do it again
            log.error(
                "delivery handler failed; rejecting the message",
                error=f"{type(exc).__name__}: {exc}"[:300],
                summary=body_summary(delivery.body),
                routing_key=delivery.routing_key,
                exc_info=exc,
            )
            await self._reject(channel, delivery, f"internal error: {type(exc).__name__}")
            return
        unique_id = None
        if shard >= 0 and message.unique_id and self.settings.dedup_window:
            unique_id = message.unique_id
            if unique_id in self._seen:
                self.counters.duplicates += 1
                log.info("duplicate of an operation run here dropped", lb_id=lb_id,
                         method=message.method, unique_id=unique_id[:64])
                await channel.ack(delivery.delivery_tag)
                return
            _remember(self._seen, unique_id, None, self.settings.dedup_window)
        op_id = next(self._op_ids)
        reply_to = message.reply_to
        self._ledger[op_id] = _Pending(
            generation=generation,
            channel=channel,
            delivery=delivery,
            method=message.method,
            lb_id=lb_id,
            msg_id=reply_to.msg_id if reply_to else None,
            reply_q=reply_to.reply_q if reply_to else None,
            op_id=op_id,
            shard=shard,
            epoch=epoch,
            unique_id=unique_id,
            received=trio.current_time(),
        )
        if shard >= 0:
            self._shards.started(shard, epoch, op_id)
            _remember(self._lb_epochs, lb_id, (shard, epoch), _LB_KEYS_KEPT)
        self._ledger_lbs[lb_id] = self._ledger_lbs.get(lb_id, 0) + 1
        self._unsettled += 1
        await self.sink.submit(
            Operation(
                op_id=op_id,
                method=message.method,
                args=args,
                lb_id=lb_id,
                is_call=reply_to is not None,
                key=key if key != lb_id else "",
            )
        )

    async def _refuse(self, channel: Channel, delivery: Delivery, refusal: Refusal) -> None:
        """Log a delivery that can never run, answer its caller, take it off the queue."""
        log.error(
            refusal.event,
            reason=refusal.reason[:300],
            routing_key=delivery.routing_key,
            size=max(delivery.body_size, len(delivery.body)),
            summary=body_summary(delivery.body),
            redelivered=delivery.redelivered,
            answered=refusal.reply_to is not None,
        )
        if refusal.reply_to is not None and refusal.failure is not None:
            await self._reply_now(refusal.reply_to, refusal.failure)
        await self._reject(channel, delivery, refusal.reason)

    async def _reject(self, channel: Channel, delivery: Delivery, reason: str) -> None:
        """Take a message that can never be run off the queue, never requeued.

        With ``dead_letter_exchange`` set, the message is first republished there (same body
        and routing key, ``x-lbactors-reason`` header) and confirmed; otherwise it is rejected,
        which a broker policy may still dead-letter. The topic queues keep exactly oslo's
        arguments either way, so oslo servers and lbactors declare them alike.
        """
        self.counters.rejected += 1
        kind = rejection_kind(reason)
        exchange = self.settings.dead_letter_exchange
        publish_channel = self._publish_channel
        if exchange and publish_channel is not None:
            headers = dict(delivery.properties.headers or {})
            headers["x-lbactors-reason"] = reason[:1000]
            headers["x-original-exchange"] = delivery.exchange
            headers["x-original-routing-key"] = delivery.routing_key
            if delivery.truncated:  # only its head was read: say so, and how big it was
                headers["x-lbactors-truncated-from"] = delivery.body_size
            try:
                confirmation = await publish_channel.publish(
                    exchange,
                    delivery.routing_key,
                    delivery.body,
                    properties=oslo.with_headers(delivery.properties, headers),
                )
                if confirmation is not None:
                    await confirmation.wait()
            except (PublishNacked, PublishReturned, ChannelClosed, ValueError, TypeError) as exc:
                # ValueError / TypeError: properties from the wire that cannot be re-encoded
                log.error(
                    "dead-letter publish failed; rejecting",
                    error=repr(exc)[:300],
                    exchange=exchange,
                )
            else:
                self.counters.rejections[kind, "dead_lettered"] += 1
                await channel.ack(delivery.delivery_tag)
                return
        self.counters.rejections[kind, "rejected"] += 1
        await channel.reject(delivery.delivery_tag, requeue=False)

    async def _reply_now(self, reply_to: oslo.ReplyAddress, failure: Failure) -> None:
        """Answer a call that never reaches an actor (malformed, wrong namespace or version).

        Not confirmed, not retried: the caller has its own timeout."""
        if self._publish_channel is None:
            return
        body = oslo.encode_reply(reply_to.msg_id, failure=failure)
        try:
            await self._publish_channel.publish(
                "", reply_to.reply_q, body, properties=oslo.CAST_PROPERTIES_WIRE, mandatory=True
            )
        except ValueError as exc:  # not a usable routing key after all: nobody to answer
            log.warning("failure reply not sent", error=str(exc)[:200])

    # ------------------------------------------------------------------ outbound

    async def _publish_outcomes(
        self,
        channel: Channel,
        generation: int,
        published: trio.MemorySendChannel[_Published],
    ) -> None:
        """Publish each outcome's status cast and reply, in outcome order."""
        settings = self.settings
        ledger_lbs = self._ledger_lbs
        try:
            async for outcome in _Drained(self.outcomes):
                if isinstance(outcome, Reassertion):
                    await self._publish_reassertion(channel, outcome, published)
                    continue
                pending = self._ledger.pop(outcome.op_id, None)
                if pending is None:
                    log.debug("dropped outcome of a lost delivery", op_id=outcome.op_id)
                    continue
                left = ledger_lbs.get(pending.lb_id, 1) - 1
                if left:
                    ledger_lbs[pending.lb_id] = left
                else:
                    ledger_lbs.pop(pending.lb_id, None)
                self._outcome_out(pending.lb_id)
                if pending.generation != generation:
                    log.debug("dropped outcome of a lost delivery", op_id=outcome.op_id)
                    continue
                status_confirmation: Confirmation | None = None
                if outcome.status is not None:
                    status_confirmation = await channel.publish(
                        settings.exchange,
                        settings.driver_topic,
                        encode_status_cast(outcome.status),
                        properties=oslo.CAST_PROPERTIES_WIRE,
                        mandatory=True,
                    )
                reply_confirmation: Confirmation | None = None
                if pending.reply_q and pending.msg_id:
                    reply_confirmation = await self._publish_reply(channel, pending, outcome)
                reject = outcome.dead_letter
                if outcome.failure is not None and outcome.failure.exc_class in INVALID_FAILURES:
                    reject = f"{outcome.failure.exc_class}: {outcome.failure.message}"
                result = (
                    "dead_lettered"
                    if reject is not None
                    else "error" if outcome.reason is not None else "ok"
                )
                await _send_soon(
                    published,
                    _Published(
                        pending, status_confirmation, reply_confirmation, reject, result=result
                    ),
                )
        finally:
            published.close()

    def _outcome_out(self, lb_id: str) -> None:
        recent = self._lb_outcome_at
        now = trio.current_time()
        recent[lb_id] = now
        recent.move_to_end(lb_id)
        while True:
            oldest = next(iter(recent.values()))
            if oldest >= now - BUSY_KEPT_S:
                break
            recent.popitem(last=False)

    def lbs_busy_since(self, since: float) -> set[str]:
        """Load balancers with an operation in flight here, or whose last outcome came out
        at or after ``since`` (trio time; at most ``BUSY_KEPT_S`` ago): the out-of-sync
        repair leaves them alone (``statistics.run_round``)."""
        busy = set(self._ledger_lbs)
        for lb_id, at in reversed(self._lb_outcome_at.items()):
            if at < since:
                break
            busy.add(lb_id)
        return busy

    async def _publish_reassertion(
        self,
        channel: Channel,
        reassertion: Reassertion,
        published: trio.MemorySendChannel[_Published],
    ) -> None:
        """Publish ``reassertion`` unless a delivery of its load balancer is in flight here:
        that operation's own status follows, and this one could be stale by then."""
        entries = _entry_count(reassertion.status)
        lb_id = reassertion.lb_id
        if self._ledger_lbs.get(lb_id):
            self.counters.reassertions_dropped += entries
            log.debug("re-assertion dropped: an operation is in flight", lb_id=lb_id)
            return
        if self.settings.cluster and not self._held_since_last_operation(lb_id):
            # its shard moved on (perhaps and back): another daemon may have run a newer
            # operation of it
            self.counters.reassertions_dropped += entries
            log.debug("re-assertion dropped: its shard is not held here", lb_id=lb_id)
            return
        confirmation = await channel.publish(
            self.settings.exchange,
            self.settings.driver_topic,
            encode_status_cast(reassertion.status, reassertion=True),
            properties=oslo.CAST_PROPERTIES_WIRE,
            mandatory=True,
        )
        await _send_soon(published, _Published(None, confirmation, None, None, (lb_id, entries)))

    async def _publish_reply(
        self, channel: Channel, pending: _Pending, outcome: Outcome
    ) -> Confirmation | None:
        """The reply to a call; a reply that cannot be encoded becomes a failure reply."""
        assert pending.msg_id is not None and pending.reply_q is not None
        try:
            body = oslo.encode_reply(
                pending.msg_id,
                result_json=_status_encoder.encode(outcome.reply),
                failure=outcome.failure,
            )
        except (TypeError, ValueError) as exc:  # a backend answered something not JSON
            log.error("reply not encodable", method=pending.method, error=str(exc)[:200])
            body = oslo.encode_reply(
                pending.msg_id,
                failure=Failure(
                    exc_class="DriverError", module="lbactors.gateway", message="unencodable reply"
                ),
            )
        try:
            return await channel.publish(
                "", pending.reply_q, body, properties=oslo.CAST_PROPERTIES_WIRE, mandatory=True
            )
        except ValueError as exc:  # checked at decoding; kept so that no reply can crash us
            log.error("reply not sent", method=pending.method, error=str(exc)[:200])
            return None

    async def _settle(self, published: trio.MemoryReceiveChannel[_Published]) -> None:
        """Ack (or reject) each delivery once its publishes are confirmed, in order."""
        async for item in _Drained(published):
            pending = item.pending
            if pending is None:
                await self._reassertion_confirmed(item)
                continue
            done = await self._confirmed(item.status, pending, what="status")
            await self._confirmed(item.reply, pending, what="reply")
            self.on_settled(
                pending.method,
                item.result if done else "requeued",
                trio.current_time() - pending.received,
            )
            if not done:
                # Not treated as done: the broker redelivers it and the operation runs again.
                self.counters.republished += 1
                if pending.unique_id is not None:
                    self._seen.pop(pending.unique_id, None)
                await pending.channel.nack(pending.delivery.delivery_tag, requeue=True)
            elif item.reject is not None:
                await self._reject(pending.channel, pending.delivery, item.reject)
            else:
                self.counters.completed += 1
                await pending.channel.ack(pending.delivery.delivery_tag)
            if pending.shard >= 0:
                self._shards.finished(pending.shard, pending.epoch, pending.op_id)
                self._shard_progress.set()
                self._shard_progress = trio.Event()
            self._unsettled -= 1
            if not self._unsettled:
                self._all_settled.set()

    async def _reassertion_confirmed(self, item: _Published) -> None:
        assert item.status is not None and item.reassertion is not None
        lb_id, entries = item.reassertion
        try:
            await item.status.wait()
        except (PublishNacked, PublishReturned) as exc:
            # not retried: its next scheduled re-assertion may still come
            log.warning("re-assertion not confirmed", lb_id=lb_id, error=repr(exc))
            self.counters.reassertions_dropped += entries
            return
        self.counters.reasserted += entries

    @staticmethod
    async def _confirmed(
        confirmation: Confirmation | None, pending: _Pending, *, what: str
    ) -> bool:
        if confirmation is None:
            return True
        try:
            await confirmation.wait()
        except (PublishNacked, PublishReturned) as exc:
            log.error(
                f"{what} publish not confirmed",
                error=repr(exc),
                method=pending.method,
                lb_id=pending.lb_id,
            )
            return False
        return True


async def serve_gateway(
    settings: GatewaySettings,
    sink: Sink,
    outcomes: trio.MemoryReceiveChannel[Outbound],
    *,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a :class:`Gateway`; ``task_status.started(gateway)`` once it consumes."""
    gateway = Gateway(settings, sink, outcomes)
    await gateway.serve(task_status=task_status)
