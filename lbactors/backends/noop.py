"""The ``noop`` backend: the embedded default, an in-memory tree per load balancer.

It does what a real backend must do, minus the device: every operation is idempotent
(create of an existing object converges it, update of a missing one creates it, delete of a
missing one succeeds), objects are kept per load balancer and forgotten with it, and
listeners report statistics that grow like real traffic.

Options (``[backend.options]`` in the configuration, or keyword arguments):

- ``latency``: seconds every create / update / delete sleeps (default 0: no sleep at all,
  which is what the in-process benchmark measures);
- ``fail_pattern``: a regular expression; a create / update / delete of an object whose
  ``name`` matches it (``re.search``) raises :class:`BackendError`, so every failure path
  (a failing member in a pool delete, step k of a cascade) can be reproduced on purpose;
- ``seed``: makes the statistics counters reproducible (default 0);
- ``hang_pattern``: a regular expression; a create / update / delete of an object whose
  ``name`` matches it never returns on its own (a device that stopped answering); with
  ``ignore_cancel`` it also ignores cancellation, like a blocking call in a thread that
  cannot be abandoned (what the deadline and the worker replacement exist for);
- ``crash_pattern``: a regular expression; a create / update / delete of an object whose
  ``name`` matches it ends the process at once (exit code 70), as a crashing client library
  would: the supervisor replays it, and gives up on it as a poison operation;
- the deadlines of :class:`~lbactors.backends.base.Deadlines` (30 / 10 / 5 s here).

Options for the cluster tests (docs/cluster.md §9):

- ``affinity_prefix``: n >= 0; when n > 0 the owner key of a load balancer is the first n
  characters of its id (:meth:`NoopBackend.affinity_key`, :meth:`NoopBackend.lb_affinity_key`),
  so that load balancers share keys; 0: the id itself (the default behaviour);
- ``trace_file``: a path; every create / update / delete call appends a line when it starts
  and one when it ends (also when it raises or is cancelled; a process that dies in it
  writes none): ``"<start|end> <pid> <method> <lb_id> <key> <time.monotonic_ns()>"`` (``-``
  for an empty id).
  Each line is one ``write`` to a file opened with ``O_APPEND`` (atomic across processes
  below ``PIPE_BUF`` bytes), and ``CLOCK_MONOTONIC`` is comparable across processes of one
  host, so the lines of several daemons tell whether calls of one key ever overlapped
  (``tests/backend_trace.py``). Reads (statistics) are not traced: they may overlap;
- ``state_dir``: a directory (shared mode): each load balancer created also gets an empty
  file ``<state_dir>/<lb_id>``, removed when it is deleted, and :meth:`resident_lb_ids`
  lists those files, so that daemons sharing the directory share the set of load balancers,
  as with a backend whose state lives in a shared external system (NSX, say).

The file work of the last two is synchronous (test options, small writes).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import msgspec
import trio

from lbactors.backends.base import (
    Backend,
    BackendError,
    Deadlines,
    OperatingStatus,
    Reading,
    Seconds,
    check_flavor_integers,
)
from lbactors.messages import ListenerStatistics, Request
from lbactors.model import (
    CLASS_OF_KIND,
    NESTED_FIELDS,
    Certificate,
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    OctaviaObject,
    Pool,
)
from lbactors.routing import owner_of
from lbactors.status import parents_of

#: load balancers read between two checkpoints in a statistics round
READ_CHUNK = 500

__all__ = ["NoopBackend", "NoopOptions"]

FLAVOR_METADATA: dict[str, str] = {
    "max_connections": "Maximum concurrent connections per listener (positive integer, -1 for unlimited).",
    "timeout_client_data": "Frontend client inactivity timeout in milliseconds (non-negative integer).",
}

AVAILABILITY_ZONE_METADATA: dict[str, str] = {
    "zone": "Name of the backend zone the load balancers of this availability zone are placed in.",
}

_Key = tuple[str, str]


#: the kinds in sorted order: a kind's code is its index, so codes sort as the names do
_KINDS: tuple[str, ...] = tuple(sorted(CLASS_OF_KIND))
_KIND_CODE: dict[str, int] = {kind: code for code, kind in enumerate(_KINDS)}
_LISTENER = _KIND_CODE["listener"]


class _Ref:
    """A decoded reference to one of the tree's ids: entry ``index`` when >= 0, else the
    tree's other id ``~index``."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _Packing:
    """How one kind's own fields are packed into, and unpacked from, a msgpack array.

    The values of the kind's fields in declaration order, with ``id`` (the entry's own id,
    kept beside the blob), the nested objects and trailing ``None`` left out, and an id field
    equal to the object's own id (its ``<kind>_id``) or to its load balancer's packed as
    ``true`` or ``false`` (an id field never holds a boolean). Any other id is a reference
    to one of the tree's ids (:class:`_Refs`): a parent in the tree, or one of the tree's
    other ids (its project, a subnet, ...) kept once per tree.
    """

    __slots__ = ("cls", "fields", "id_fields", "nested")

    def __init__(self, cls: type[OctaviaObject]) -> None:
        self.cls = cls
        self.fields: tuple[str, ...] = cls.__struct_fields__
        assert self.fields[0] == "id"
        self.nested = tuple(self.fields.index(name) for name in NESTED_FIELDS[cls])
        self.id_fields = tuple(
            i for i, name in enumerate(self.fields) if i and name.endswith("_id")
        )

    def values(self, obj: OctaviaObject) -> list[Any]:
        """``obj``'s own fields, ids as strings (what :meth:`pack` takes)."""
        values: list[Any] = list(msgspec.structs.astuple(obj))
        values[0] = None
        for i in self.nested:
            values[i] = None
        return values

    def pack(self, values: list[Any], object_id: str, lb_id: str, refs: _Refs) -> list[Any]:
        """``values`` (from :meth:`values` or :meth:`unpack`) packed, in place."""
        packed = values
        for i in self.id_fields:
            value = packed[i]
            if value is None:
                continue
            if value == object_id:
                packed[i] = True
            elif value == lb_id:
                packed[i] = False
            else:
                packed[i] = refs.ref(value)
        while packed and packed[-1] is None:
            packed.pop()
        return packed

    def unpack(
        self, packed: list[Any], object_id: str, lb_id: str, ids: Sequence[str], extra: list[str]
    ) -> list[Any]:
        """The values :meth:`values` gave, from what :meth:`pack` made of them."""
        packed.extend([None] * (len(self.fields) - len(packed)))
        for i in self.id_fields:
            value = packed[i]
            if value is True:
                packed[i] = object_id
            elif value is False:
                packed[i] = lb_id
            elif type(value) is _Ref:
                index = value.index
                packed[i] = ids[index] if index >= 0 else extra[~index]
        return packed

    def build(self, values: list[Any], object_id: str) -> OctaviaObject:
        values = list(values)
        values[0] = object_id
        return self.cls(**dict(zip(self.fields, values, strict=True)))


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_EXT_UUID = 1
_EXT_HEX32 = 2
_EXT_REF = 3  # the tree's entry n
_EXT_EXTRA = 4  # the tree's other id n


def _index_bytes(i: int) -> bytes:
    return i.to_bytes(1 + (i > 255) + (i > 65535), "big")


#: the references to entries and other ids 0..255, built once (an Ext is immutable): a
#: tree's fields refer to its first few entries and other ids over and over
_REF_EXTS = tuple(msgspec.msgpack.Ext(_EXT_REF, _index_bytes(i)) for i in range(256))
_EXTRA_EXTS = tuple(msgspec.msgpack.Ext(_EXT_EXTRA, _index_bytes(i)) for i in range(256))


def _ref_ext(table: tuple[msgspec.msgpack.Ext, ...], code: int, i: int) -> msgspec.msgpack.Ext:
    return table[i] if i < 256 else msgspec.msgpack.Ext(code, _index_bytes(i))


@lru_cache(maxsize=1024)
def _extra_item(value: str) -> str | msgspec.msgpack.Ext:
    """How another id is kept in a tree's array of other ids: a lowercase UUID or 32
    lowercase hex digits as an Ext of their 16 bytes, any other id as itself. Cached (not
    per tree): the same project and subnet ids come back in tree after tree."""
    if _UUID.fullmatch(value):
        return msgspec.msgpack.Ext(_EXT_UUID, bytes.fromhex(value.replace("-", "")))
    if _HEX32.fullmatch(value):
        return msgspec.msgpack.Ext(_EXT_HEX32, bytes.fromhex(value))
    return value


class _Refs:
    """The ids a tree's fields refer to: its entries' ids (by entry), and its other ids, each
    kept once (ids in the forms Octavia and Keystone write them, a lowercase UUID or 32
    lowercase hex digits, as 16 bytes; others as strings: :func:`_extra_item`). Entries and
    other ids are numbered apart, so that appending an entry or another id leaves every
    reference as it was.

    Looked up as asked, nothing built ahead: an entry's id in the list of entry ids (a few
    string comparisons in C), another id by its packed form in the tree's other ids as they
    are packed (``extra``: strings and Exts, decoded without the ext hook, so never turned
    into strings). An id that is both an entry's and another id refers to the entry."""

    __slots__ = ("added", "entry_ids", "extra")

    def __init__(self, entry_ids: list[str], extra: list[str | msgspec.msgpack.Ext]) -> None:
        self.entry_ids = entry_ids
        self.extra = extra
        self.added = False

    def ref(self, value: str) -> msgspec.msgpack.Ext:
        entry_ids = self.entry_ids
        if value in entry_ids:
            return _ref_ext(_REF_EXTS, _EXT_REF, entry_ids.index(value))
        item = _extra_item(value)
        extra = self.extra
        if item in extra:
            i = extra.index(item)
        else:
            i = len(extra)
            extra.append(item)
            self.added = True
        return _ref_ext(_EXTRA_EXTS, _EXT_EXTRA, i)

    def encoded_extra(self) -> bytes:
        """The tree's other ids as the blob keeps them: their length (``_LEN`` bytes), then
        their msgpack array."""
        encoded = _encode(self.extra)
        return len(encoded).to_bytes(_LEN, "big") + encoded


def _ext(code: int, data: memoryview) -> Any:
    if code == _EXT_REF:
        return _Ref(int.from_bytes(data, "big"))
    if code == _EXT_EXTRA:
        return _Ref(~int.from_bytes(data, "big"))
    h = data.hex()
    if code == _EXT_UUID:  # as str(uuid.UUID(...)) writes it, without its cost
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return h


_encode = msgspec.msgpack.Encoder().encode
#: unpacks a tree: references as :class:`_Ref`, other ids as strings
_decode = msgspec.msgpack.Decoder(list, ext_hook=_ext).decode
#: a tree's other ids as they are packed (strings and Exts), to look ids up and append
_decode_packed = msgspec.msgpack.Decoder(list[str | msgspec.msgpack.Ext]).decode
_decode_raw = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode
#: a tree's entries with their references as Exts (to move them, nothing else unpacked)
_decode_plain = msgspec.msgpack.Decoder(list).decode
_PACKING: tuple[_Packing, ...] = tuple(_Packing(CLASS_OF_KIND[kind]) for kind in _KINDS)

#: a tree is a list: ``[lb_id, blob, id of entry 0, id of entry 1, ...]``; the blob: each
#: entry's ``kind code << 1 | offline`` (one byte each), the length of the next part (4 bytes),
#: the msgpack array of the tree's other ids, then each entry's packed fields, one msgpack
#: array after the other
_IDS = 2
_LEN = 4


def _array_header(n: int) -> bytes:
    """msgpack's header of an array of ``n`` items."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _codes(record: list[Any]) -> bytes:
    """Each entry's ``kind code << 1 | offline``: the blob's first bytes, one per entry."""
    codes: bytes = record[1][: len(record) - _IDS]
    return codes


def _extra_span(record: list[Any]) -> tuple[int, int]:
    """Where a tree's array of other ids is in its blob; the second also where its entries'
    fields start."""
    blob: bytes = record[1]
    n = len(record) - _IDS
    size = int.from_bytes(blob[n : n + _LEN], "big")
    return n + _LEN, n + _LEN + size


def _entries(record: list[Any]) -> list[tuple[str, int, list[Any]]]:
    """A tree's entries unpacked: (object id, code, own field values with ids as strings)."""
    lb_id: str = record[0]
    blob: bytes = record[1]
    if not blob:  # a new tree
        return []
    n = len(record) - _IDS
    begin, start = _extra_span(record)
    extra: list[str] = _decode(memoryview(blob)[begin:start])
    packed = _decode(_array_header(n) + blob[start:])
    ids = record[_IDS:]
    return [
        (object_id, code, _PACKING[code >> 1].unpack(fields, object_id, lb_id, ids, extra))
        for object_id, code, fields in zip(ids, blob[:n], packed, strict=True)
    ]


def _store(record: list[Any], entries: list[tuple[str, int, list[Any]]]) -> None:
    """Pack ``entries`` into ``record`` in place (one blob; the list sized to fit)."""
    lb_id: str = record[0]
    entry_ids = [object_id for object_id, _, _ in entries]
    refs = _Refs(entry_ids, [])
    body = b"".join(
        _encode(_PACKING[code >> 1].pack(values, object_id, lb_id, refs))
        for object_id, code, values in entries
    )
    codes = bytes(code for _, code, _ in entries)
    blob = codes + refs.encoded_extra() + body
    # cleared then refilled: the list's storage fits (an append would over-allocate)
    record.clear()
    record.extend((lb_id, blob, *entry_ids))


def _packed_refs(record: list[Any], entry_ids: list[str]) -> tuple[_Refs, int, int]:
    """The references of a tree whose entries will have ``entry_ids``; where its other ids
    are in its blob, and where its entries' fields start."""
    begin, start = _extra_span(record)
    extra = _decode_packed(memoryview(record[1])[begin:start])
    return _Refs(entry_ids, extra), begin, start


def _append(record: list[Any], object_id: str, code: int, values: list[Any]) -> None:
    """Add an entry to ``record`` without unpacking the others (a create: the usual change)."""
    blob: bytes = record[1]
    if not blob:
        _store(record, [(object_id, code, values)])
        return
    lb_id: str = record[0]
    n = len(record) - _IDS
    entry_ids = record[_IDS:]
    entry_ids.append(object_id)
    refs, begin, start = _packed_refs(record, entry_ids)
    fields = _encode(_PACKING[code >> 1].pack(values, object_id, lb_id, refs))
    head = refs.encoded_extra() if refs.added else blob[n:start]
    blob = b"".join((blob[:n], bytes((code,)), head, blob[start:], fields))
    record.clear()
    record.extend((lb_id, blob, *entry_ids))


def _raw_entries(record: list[Any], n: int, start: int) -> list[msgspec.Raw]:
    """Each entry's packed fields, as the bytes they are in the blob (nothing unpacked)."""
    raws: list[msgspec.Raw] = _decode_raw(_array_header(n) + record[1][start:])
    return raws


def _replace(record: list[Any], i: int, code: int, values: list[Any]) -> None:
    """Entry ``i`` of ``record`` takes ``code`` and ``values`` (an update), without unpacking
    the others: entries keep their indexes, and a new other id is appended, so every
    reference stays as it was; the bytes of the others are copied as they are."""
    blob: bytes = record[1]
    lb_id: str = record[0]
    n = len(record) - _IDS
    refs, begin, start = _packed_refs(record, record[_IDS:])
    fields = _encode(_PACKING[code >> 1].pack(values, record[_IDS + i], lb_id, refs))
    head = refs.encoded_extra() if refs.added else blob[n:start]
    # entry i's bytes: after those of the entries before it
    raws = _raw_entries(record, n, start)
    first = start + sum(map(len, raws[:i]))
    after = first + len(raws[i])
    record[1] = b"".join(
        (blob[:i], bytes((code,)), blob[i + 1 : n], head, blob[start:first], fields, blob[after:])
    )


def _drop_last(record: list[Any]) -> bool:
    """Remove the last entry of ``record`` without unpacking the others, unless another
    entry may refer to it (a listener's ``default_pool_id`` to a pool created after it, say:
    its reference's bytes appear in the others' fields; a false alarm only costs the slow
    way). Whether it was removed. Its other ids stay until another entry is deleted
    (:func:`_delete`)."""
    blob: bytes = record[1]
    n = len(record) - _IDS
    _, start = _extra_span(record)
    last = len(_raw_entries(record, n, start)[-1])
    end = len(blob) - last  # where the last entry's fields start
    reference = _encode(_ref_ext(_REF_EXTS, _EXT_REF, n - 1))
    if blob.find(reference, start, end) >= 0:
        return False
    record[1] = blob[: n - 1] + blob[n:end]
    del record[-1]
    return True


def _delete(record: list[Any], i: int) -> None:
    """Remove entry ``i`` of ``record`` without unpacking the others (their fields are
    decoded, references left as Exts, and only the references moved): a reference to a later
    entry takes its new place, one to entry ``i`` becomes one to another id (its id), and the
    other ids nobody refers to any more are dropped, the rest renumbered."""
    lb_id: str = record[0]
    blob: bytes = record[1]
    n = len(record) - _IDS
    begin, start = _extra_span(record)
    extra = _decode_packed(memoryview(blob)[begin:start])
    entries: list[list[Any]] = _decode_plain(_array_header(n) + blob[start:])
    entry_ids = record[_IDS:]
    deleted_id = entry_ids.pop(i)
    del entries[i]
    codes = blob[:i] + blob[i + 1 : n]
    kept: list[str | msgspec.msgpack.Ext] = []
    #: old other id (the deleted entry: -1) -> its reference in the packed tree
    moved: dict[int, msgspec.msgpack.Ext] = {}
    for fields, code in zip(entries, codes, strict=True):
        size = len(fields)
        for k in _PACKING[code >> 1].id_fields:
            if k >= size:
                break
            value = fields[k]
            if type(value) is not msgspec.msgpack.Ext:
                continue
            x = int.from_bytes(value.data, "big")
            if value.code == _EXT_REF:
                if x < i:
                    continue
                if x > i:
                    fields[k] = _ref_ext(_REF_EXTS, _EXT_REF, x - 1)
                    continue
                x = -1
            ext = moved.get(x)
            if ext is None:
                # the deleted id may be another id already (referred to before its entry was)
                item = _extra_item(deleted_id) if x < 0 else extra[x]
                if item in kept:
                    j = kept.index(item)
                else:
                    j = len(kept)
                    kept.append(item)
                ext = moved[x] = _ref_ext(_EXTRA_EXTS, _EXT_EXTRA, j)
            fields[k] = ext
    # the entries' arrays one after the other: their array's encoding without its header
    body = memoryview(_encode(entries))[len(_array_header(n - 1)) :]
    encoded = _encode(kept)
    blob = b"".join((codes, len(encoded).to_bytes(_LEN, "big"), encoded, body))
    record.clear()
    record.extend((lb_id, blob, *entry_ids))


def _find(record: list[Any], kind_code: int, object_id: str) -> int:
    """The index of ``(kind, object_id)``'s entry in a tree; -1: not there."""
    codes = record[1]
    for i in range(len(record) - _IDS):
        if record[_IDS + i] == object_id and codes[i] >> 1 == kind_code:
            return i
    return -1


class NoopOptions(Deadlines, kw_only=True, forbid_unknown_fields=True):
    """The options of the noop backend; an unknown key is an error that names it."""

    latency: float = 0.0
    fail_pattern: str | None = None
    seed: int = 0
    hang_pattern: str | None = None
    ignore_cancel: bool = False
    crash_pattern: str | None = None
    affinity_prefix: Annotated[int, msgspec.Meta(ge=0)] = 0
    trace_file: str = ""
    state_dir: str = ""
    operation_deadline: Seconds = 30.0
    plan_step_deadline: Seconds = 10.0
    query_deadline: Seconds = 5.0


_MASK = (1 << 64) - 1


class _CounterTable:
    """Every listener's traffic counters in one array of 64-bit words, ``WIDTH`` per listener:
    no object per listener, and a statistics round writes its new values in place (no new
    integers kept per round)."""

    #: the LCG state (seeded from (seed, listener id): counters are reproducible), rounds,
    #: total, active, bytes in, bytes out, errors
    WIDTH = 7
    __slots__ = ("free", "slots", "words")

    def __init__(self) -> None:
        #: listener id -> the index of its first word
        self.slots: dict[str, int] = {}
        self.words = array("Q")
        #: slots of deleted listeners, taken again first
        self.free: list[int] = []

    def __contains__(self, listener_id: str) -> bool:
        return listener_id in self.slots

    def add(self, listener_id: str, state: int) -> int:
        if self.free:
            slot = self.free.pop()
            self.words[slot : slot + self.WIDTH] = array("Q", [state, 0, 0, 0, 0, 0, 0])
        else:
            slot = len(self.words)
            self.words.extend((state, 0, 0, 0, 0, 0, 0))
        self.slots[listener_id] = slot
        return slot

    def remove(self, listener_id: str) -> None:
        slot = self.slots.pop(listener_id, None)
        if slot is not None:
            self.free.append(slot)

    def advance(self, slot: int, listener_id: str) -> ListenerStatistics:
        """One round of plausible traffic, a pure function of (seed, listener, round)."""
        words = self.words
        state, rounds, total, _, bytes_in, bytes_out, errors = words[slot : slot + self.WIDTH]
        state = x = (state * 6364136223846793005 + 1442695040888963407) & _MASK
        x >>= 16  # the low bits of an LCG are weak
        new = 1 + x % 100  # at least one connection per round: totals always grow
        total += new
        active = (x >> 8) % (new + 1)
        bytes_in += new * (200 + (x >> 16) % 800)
        bytes_out += new * (1000 + (x >> 26) % 9000)
        errors += 1 if (x >> 40) % 10 == 0 else 0
        words[slot : slot + self.WIDTH] = array(
            "Q", (state, rounds + 1, total, active, bytes_in, bytes_out, errors)
        )
        return ListenerStatistics(
            id=listener_id,
            active_connections=active,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            request_errors=errors,
            total_connections=total,
        )


class NoopBackend(Backend):
    """In-memory backend; see the module docstring."""

    name = "noop"

    def __init__(
        self,
        *,
        latency: float = 0.0,
        fail_pattern: str | None = None,
        seed: int = 0,
        hang_pattern: str | None = None,
        ignore_cancel: bool = False,
        crash_pattern: str | None = None,
        affinity_prefix: int = 0,
        trace_file: str = "",
        state_dir: str = "",
        deadlines: Deadlines | None = None,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0, not {latency}")
        if affinity_prefix < 0:
            raise ValueError(f"affinity_prefix must be >= 0, not {affinity_prefix}")
        self.affinity_prefix = affinity_prefix
        self.trace_file = trace_file
        #: the trace file, opened on the first traced call (a constructor does no I/O)
        self._trace_fd: int | None = None
        self.state_dir = Path(state_dir) if state_dir else None
        self.latency = latency
        self.fail_pattern = re.compile(fail_pattern) if fail_pattern else None
        self.hang_pattern = re.compile(hang_pattern) if hang_pattern else None
        self.ignore_cancel = ignore_cancel
        self.crash_pattern = re.compile(crash_pattern) if crash_pattern else None
        self.seed = seed
        self.deadlines = deadlines or NoopOptions()
        #: load balancer id -> its tree: ``[lb_id, blob, id of entry 0, id of entry 1, ...]``,
        #: the blob holding each entry's ``kind code << 1 | offline`` and packed fields and the
        #: tree's other ids (:data:`_IDS`, :class:`_Packing`, :func:`_store`); the LB itself is
        #: an entry of its tree once created. Per load balancer one list and one bytes object,
        #: and the ids as strings (the actor layer's operating statuses share them): 100 000
        #: resident trees fit in memory. A create appends to the blob (:func:`_append`), an
        #: update replaces its entry's bytes (:func:`_replace`), a delete of the last entry
        #: nobody refers to cuts it off (:func:`_drop_last`); another delete moves the
        #: references of the others (:func:`_delete`). None of them unpacks the other entries.
        self._trees: dict[str, list[Any]] = {}
        #: object id (not a load balancer's) -> the tree it belongs to. Keyed by the id alone:
        #: Octavia's ids are UUIDs, unique across kinds (the tree's entry has the kind)
        self._owner: dict[str, list[Any]] = {}
        #: every listener's traffic counters
        self._counters = _CounterTable()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> NoopBackend:
        opts = msgspec.convert(options or {}, NoopOptions)
        return cls(
            latency=opts.latency,
            fail_pattern=opts.fail_pattern,
            seed=opts.seed,
            hang_pattern=opts.hang_pattern,
            ignore_cancel=opts.ignore_cancel,
            crash_pattern=opts.crash_pattern,
            affinity_prefix=opts.affinity_prefix,
            trace_file=opts.trace_file,
            state_dir=opts.state_dir,
            deadlines=opts,
        )

    # ------------------------------------------------------------------ affinity, shared mode

    def affinity_key(self, request: Request) -> str | None:
        """With ``affinity_prefix`` n > 0: the first n characters of the request's load
        balancer id (found as :func:`~lbactors.routing.owner_of` finds it); else ``None``
        (the load balancer id), as for a request that names no load balancer."""
        if not self.affinity_prefix:
            return None
        lb_id, found = owner_of(request)
        if not lb_id or not found:
            return None
        return lb_id[: self.affinity_prefix]

    def lb_affinity_key(self, lb_id: str) -> str | None:
        return lb_id[: self.affinity_prefix] if self.affinity_prefix else lb_id

    async def resident_lb_ids(self) -> list[str]:
        """In shared mode (``state_dir``), every load balancer of the directory, whichever
        daemon created it; else none."""
        if self.state_dir is None:
            return []
        try:
            names = os.listdir(self.state_dir)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if not name.startswith("."))

    def _lb_file(self, lb_id: str) -> Path | None:
        if self.state_dir is None:
            return None
        if not lb_id or "/" in lb_id or lb_id.startswith("."):
            raise BackendError(f"noop: load balancer id {lb_id!r} cannot name a file")
        return self.state_dir / lb_id

    async def aclose(self) -> None:
        if self._trace_fd is not None:
            os.close(self._trace_fd)
            self._trace_fd = None

    # ------------------------------------------------------------------ trace

    def _trace_line(self, event: str, method: str, lb_id: str, key: str) -> None:
        if self._trace_fd is None:
            self._trace_fd = os.open(
                self.trace_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        line = f"{event} {os.getpid()} {method} {lb_id or '-'} {key or '-'} {time.monotonic_ns()}\n"
        os.write(self._trace_fd, line.encode())

    @contextmanager
    def _traced(
        self, method: str, kind: str, obj: OctaviaObject, old: OctaviaObject | None
    ) -> Iterator[None]:
        """A start line, and an end line however the call ends (``trace_file``). A call of an
        object whose load balancer this backend cannot tell (a cascade's child, run by a
        daemon that took its load balancer over and never saw its tree) is traced without
        one: ``-``, no key, so never taken for a call of another key. Only entered with a
        ``trace_file`` (the calls go around it without one)."""
        lb_id = self._placed_lb(kind, obj, old)
        key = (self.lb_affinity_key(lb_id) or lb_id) if lb_id else ""
        self._trace_line("start", method, lb_id, key)
        try:
            yield
        finally:
            self._trace_line("end", method, lb_id, key)

    # ------------------------------------------------------------------ inspection

    def tree(self, lb_id: str) -> dict[_Key, OctaviaObject]:
        """Every object the backend holds for ``lb_id``, by ``(kind, id)`` (as last created
        or updated, without nested objects)."""
        record = self._trees.get(lb_id)
        if record is None:
            return {}
        return {
            (_KINDS[code >> 1], object_id): _PACKING[code >> 1].build(values, object_id)
            for object_id, code, values in _entries(record)
        }

    def lb_ids(self) -> list[str]:
        return list(self._trees)

    def lb_of(self, kind: str, object_id: str) -> str | None:
        """The load balancer whose tree holds ``(kind, object_id)``; ``None``: none."""
        if kind == "loadbalancer":
            record = self._trees.get(object_id)
        else:
            record = self._owner.get(object_id)
        if record is None or _find(record, _KIND_CODE[kind], object_id) < 0:
            return None
        lb_id: str = record[0]
        return lb_id

    # ------------------------------------------------------------------ core

    async def _pause(self) -> None:
        if self.latency:
            await trio.sleep(self.latency)

    async def _hang_if_asked(self, obj: OctaviaObject) -> None:
        if self.crash_pattern is not None and self.crash_pattern.search(obj.name or ""):
            os._exit(70)  # as a crash in a client library: no cleanup, no outcome
        if self.hang_pattern is None or not self.hang_pattern.search(obj.name or ""):
            return
        if not self.ignore_cancel:
            await trio.sleep_forever()
        # as a blocking call that cannot be abandoned: cancellation is never seen
        with trio.CancelScope(shield=True):
            await trio.sleep_forever()

    def _check(self, kind: str, action: str, obj: OctaviaObject) -> None:
        if self.fail_pattern is not None and self.fail_pattern.search(obj.name or ""):
            raise BackendError(
                f"noop: {action} of {kind} {obj.id} fails: its name {obj.name!r} "
                f"matches fail_pattern {self.fail_pattern.pattern!r}"
            )

    def _placed_lb(self, kind: str, obj: OctaviaObject, old: OctaviaObject | None) -> str:
        """The load balancer of ``obj`` as far as this backend can tell (its model, else the
        payload); ``""`` when neither names one."""
        known = self.lb_of(kind, obj.id or "")
        if known is not None:
            return known
        if isinstance(obj, LoadBalancer):
            return obj.id or ""
        return parents_of(kind, obj, old).loadbalancer_id or ""

    def _owner_of(self, kind: str, obj: OctaviaObject, old: OctaviaObject | None) -> str:
        return self._placed_lb(kind, obj, old) or obj.id or ""

    async def _put(
        self, kind: str, action: str, obj: OctaviaObject, old: OctaviaObject | None = None
    ) -> None:
        if not self.trace_file:  # the usual case: no context manager per call
            await self._put_traced(kind, action, obj, old)
            return
        with self._traced(f"{kind}_{action}", kind, obj, old):
            await self._put_traced(kind, action, obj, old)

    async def _put_traced(
        self, kind: str, action: str, obj: OctaviaObject, old: OctaviaObject | None
    ) -> None:
        await self._pause()
        await self._hang_if_asked(obj)
        self._check(kind, action, obj)
        if not obj.id:
            raise BackendError(f"noop: {action} of a {kind} without id")
        object_id = obj.id
        lb_id = self._owner_of(kind, obj, old)
        record = self._trees.get(lb_id)
        if record is None:
            # one string for the id wherever it is kept (here and in the actor layer)
            lb_id = sys.intern(lb_id)
            record = self._trees[lb_id] = [lb_id, b""]
        else:
            lb_id = record[0]
        kind_code = _KIND_CODE[kind]
        # only the object's own state, packed with its tree's: keeping the payload's Structs
        # (nested parents and all) would cost memory and garbage-collector time per object
        code = kind_code << 1 | (obj.admin_state_up is False)
        values = _PACKING[kind_code].values(obj)
        i = _find(record, kind_code, object_id)
        if i >= 0:
            object_id = record[_IDS + i]
            _replace(record, i, code, values)
        else:
            if object_id == lb_id:
                object_id = lb_id
            _append(record, object_id, code, values)
            if kind != "loadbalancer":
                self._owner[object_id] = record
        if kind_code == _LISTENER and object_id not in self._counters:
            self._new_counters(object_id)
        if kind == "loadbalancer":
            path = self._lb_file(object_id)
            if path is not None:
                path.touch()

    async def _remove(self, kind: str, obj: OctaviaObject) -> None:
        if not self.trace_file:
            await self._remove_traced(kind, obj)
            return
        with self._traced(f"{kind}_delete", kind, obj, None):
            await self._remove_traced(kind, obj)

    async def _remove_traced(self, kind: str, obj: OctaviaObject) -> None:
        await self._pause()
        await self._hang_if_asked(obj)
        self._check(kind, "delete", obj)
        if not obj.id:
            raise BackendError(f"noop: delete of a {kind} without id")
        if kind == "loadbalancer":
            record = self._trees.pop(obj.id, None)
            if record is not None:
                for object_id, code in zip(record[_IDS:], _codes(record), strict=True):
                    self._forget(record, object_id, code >> 1)
            path = self._lb_file(obj.id)
            if path is not None:
                path.unlink(missing_ok=True)
            return
        record = self._owner.get(obj.id)
        kind_code = _KIND_CODE[kind]
        i = _find(record, kind_code, obj.id) if record is not None else -1
        if record is None or i < 0:
            return  # never seen or already deleted: done
        if not (i == len(record) - _IDS - 1 and _drop_last(record)):
            # entries may refer to it, or to those after it by their place
            _delete(record, i)
        self._forget(record, obj.id, kind_code)
        if len(record) == _IDS:
            del self._trees[record[0]]

    def _forget(self, record: list[Any], object_id: str, kind_code: int) -> None:
        if self._owner.get(object_id) is record:
            del self._owner[object_id]
        if kind_code == _LISTENER:
            self._counters.remove(object_id)

    # ------------------------------------------------------------------ CRUD

    async def loadbalancer_create(self, lb: LoadBalancer) -> None:
        await self._put("loadbalancer", "create", lb)

    async def loadbalancer_update(self, old: LoadBalancer, new: LoadBalancer) -> None:
        await self._put("loadbalancer", "update", new, old)

    async def loadbalancer_delete(self, lb: LoadBalancer) -> None:
        await self._remove("loadbalancer", lb)

    async def listener_create(self, listener: Listener, cert: Certificate | None) -> None:
        await self._put("listener", "create", listener)

    async def listener_update(
        self, old: Listener, new: Listener, cert: Certificate | None
    ) -> None:
        await self._put("listener", "update", new, old)

    async def listener_delete(self, listener: Listener) -> None:
        await self._remove("listener", listener)

    async def pool_create(self, pool: Pool) -> None:
        await self._put("pool", "create", pool)

    async def pool_update(self, old: Pool, new: Pool) -> None:
        await self._put("pool", "update", new, old)

    async def pool_delete(self, pool: Pool) -> None:
        await self._remove("pool", pool)

    async def member_create(self, member: Member) -> None:
        await self._put("member", "create", member)

    async def member_update(self, old: Member, new: Member) -> None:
        await self._put("member", "update", new, old)

    async def member_delete(self, member: Member) -> None:
        await self._remove("member", member)

    async def healthmonitor_create(self, healthmonitor: HealthMonitor) -> None:
        await self._put("healthmonitor", "create", healthmonitor)

    async def healthmonitor_update(self, old: HealthMonitor, new: HealthMonitor) -> None:
        await self._put("healthmonitor", "update", new, old)

    async def healthmonitor_delete(self, healthmonitor: HealthMonitor) -> None:
        await self._remove("healthmonitor", healthmonitor)

    async def l7policy_create(self, l7policy: L7Policy) -> None:
        await self._put("l7policy", "create", l7policy)

    async def l7policy_update(self, old: L7Policy, new: L7Policy) -> None:
        await self._put("l7policy", "update", new, old)

    async def l7policy_delete(self, l7policy: L7Policy) -> None:
        await self._remove("l7policy", l7policy)

    async def l7rule_create(self, l7rule: L7Rule) -> None:
        await self._put("l7rule", "create", l7rule)

    async def l7rule_update(self, old: L7Rule, new: L7Rule) -> None:
        await self._put("l7rule", "update", new, old)

    async def l7rule_delete(self, l7rule: L7Rule) -> None:
        await self._remove("l7rule", l7rule)

    # ------------------------------------------------------------------ read side

    def _new_counters(self, listener_id: str) -> int:
        digest = hashlib.blake2b(f"{self.seed}:{listener_id}".encode(), digest_size=8).digest()
        return self._counters.add(listener_id, int.from_bytes(digest, "big"))

    def _listener_statistics_now(self, lb_id: str) -> list[ListenerStatistics]:
        record = self._trees.get(lb_id)
        if record is None:
            return []
        listener_ids = sorted(
            object_id
            for object_id, code in zip(record[_IDS:], _codes(record), strict=True)
            if code >> 1 == _LISTENER
        )
        counters = self._counters
        slots = counters.slots
        result = []
        for object_id in listener_ids:
            slot = slots.get(object_id)
            if slot is None:
                slot = self._new_counters(object_id)
            result.append(counters.advance(slot, object_id))
        return result

    def _operating_statuses_now(self, lb_id: str) -> list[OperatingStatus]:
        record = self._trees.get(lb_id)
        if record is None:
            return []
        result: list[OperatingStatus] = [
            (_KINDS[code >> 1], object_id, "OFFLINE" if code & 1 else "ONLINE")
            for object_id, code in zip(record[_IDS:], _codes(record), strict=True)
        ]
        result.sort()
        return result

    async def listener_statistics(self, lb_id: str) -> list[ListenerStatistics]:
        await trio.lowlevel.checkpoint()
        return self._listener_statistics_now(lb_id)

    async def operating_statuses(self, lb_id: str) -> list[OperatingStatus]:
        await trio.lowlevel.checkpoint()
        return self._operating_statuses_now(lb_id)

    async def read_many(self, lb_ids: Sequence[str]) -> list[Reading]:
        """In memory: no per-load-balancer checkpoint, one every ``READ_CHUNK`` of them."""
        readings = []
        for start in range(0, len(lb_ids), READ_CHUNK):
            for lb_id in lb_ids[start : start + READ_CHUNK]:
                readings.append(
                    Reading(
                        lb_id,
                        self._listener_statistics_now(lb_id),
                        self._operating_statuses_now(lb_id),
                    )
                )
            await trio.lowlevel.checkpoint()
        return readings

    # ------------------------------------------------------------------ flavors and AZs

    async def flavor_metadata(self) -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        return dict(FLAVOR_METADATA)

    async def validate_flavor(self, metadata: dict[str, Any]) -> str | None:
        await trio.lowlevel.checkpoint()
        return check_flavor_integers(metadata, FLAVOR_METADATA)

    async def availability_zone_metadata(self) -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        return dict(AVAILABILITY_ZONE_METADATA)

    async def validate_availability_zone(self, metadata: dict[str, Any]) -> str | None:
        await trio.lowlevel.checkpoint()
        for key, value in metadata.items():
            if key not in AVAILABILITY_ZONE_METADATA:
                return (
                    f"unsupported availability zone metadata key {key!r}; "
                    f"supported: {', '.join(sorted(AVAILABILITY_ZONE_METADATA))}"
                )
            if not isinstance(value, str) or not value:
                return f"availability zone metadata key {key!r} must be a non-empty string"
        return None
