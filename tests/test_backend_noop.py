"""The noop backend: idempotent in-memory trees, reproducible failures, growing statistics."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbactors.backends import Backend, BackendError, load_backend, noop, register_backend
from lbactors.backends.noop import NoopBackend
from lbactors.messages import decode_request
from lbactors.model import CLASS_OF_KIND, Listener, LoadBalancer, Member, Pool
from tests.test_messages import LB, LISTENER, MEMBER, MEMBER2, POOL, PROJECT, Payloads

P = Payloads()


def obj(method: str, args: dict[str, Any] | None = None) -> Any:
    request = decode_request(method, msgspec.json.encode(args or P.args(method)))
    return request.obj


def lb() -> LoadBalancer:
    result: LoadBalancer = obj("loadbalancer_create")
    return result


def listener(**changes: Any) -> Listener:
    payload = P.listener() | changes
    result: Listener = obj("listener_create", {"listener": payload, "cert": None})
    return result


def member(**changes: Any) -> Member:
    result: Member = obj("member_create", {"member": P.member() | changes})
    return result


async def test_create_is_idempotent_and_converges() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        await backend.loadbalancer_create(lb())
        await backend.member_create(member(weight=1))
        await backend.member_create(member(weight=7))  # redelivered / replayed create
        tree = backend.tree(LB)
        assert sorted(tree) == [("loadbalancer", LB), ("member", MEMBER)]
        assert tree[("member", MEMBER)].weight == 7  # type: ignore[union-attr]


async def test_update_of_a_missing_object_creates_it() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        old, new = member(weight=1), member(weight=3)
        await backend.member_update(old, new)
        assert backend.tree(LB)[("member", MEMBER)].weight == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", sorted(CLASS_OF_KIND))
async def test_tree_gives_back_each_objects_own_state_field_for_field(kind: str) -> None:
    """Objects are kept packed, not as Structs: what comes back is the created object, its
    nested parents and children left out, every other field as it was (ids equal to the
    object's own or to its load balancer's included)."""
    with trio.fail_after(10):
        backend = NoopBackend()
        created = obj(f"{kind}_create")
        if kind == "listener":
            await backend.listener_create(created, None)
        else:
            await getattr(backend, f"{kind}_create")(created)
        nested = {
            name: None
            for name, value in msgspec.structs.asdict(created).items()
            if isinstance(value, (msgspec.Struct, list)) and name != "allowed_cidrs"
        }
        assert nested or kind == "healthmonitor"
        expected = msgspec.structs.replace(created, **nested)
        [(key, kept)] = [(key, kept) for key, kept in backend.tree(LB).items() if key[0] == kind]
        assert key == (kind, created.id)
        assert kept == expected
        assert type(kept) is type(created)


async def test_delete_of_a_missing_object_succeeds_and_delete_removes() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        await backend.member_delete(member())  # never created: done
        await backend.member_create(member())
        await backend.member_delete(member())
        await backend.member_delete(member())  # twice: still done
        assert ("member", MEMBER) not in backend.tree(LB)


async def test_loadbalancer_delete_forgets_the_whole_tree() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        await backend.loadbalancer_create(lb())
        await backend.listener_create(listener(), None)
        await backend.member_create(member())
        assert len(backend.tree(LB)) == 3
        await backend.loadbalancer_delete(lb())
        assert backend.tree(LB) == {}
        assert backend.lb_ids() == []
        assert await backend.listener_statistics(LB) == []


async def test_children_are_filed_under_their_load_balancer_found_in_the_payload() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        pool: Pool = obj("pool_create")
        await backend.pool_create(pool)
        await backend.member_create(member())
        assert sorted(backend.tree(LB)) == [("member", MEMBER), ("pool", POOL)]


@pytest.mark.parametrize("action", ["create", "update", "delete"])
async def test_fail_pattern_fails_matching_names_only(action: str) -> None:
    with trio.fail_after(10):
        backend = NoopBackend(fail_pattern=r"^web-1$")
        bad, good = member(name="web-1"), member(name="web-10", id="other", member_id="other")
        if action == "create":
            with pytest.raises(BackendError, match="web-1"):
                await backend.member_create(bad)
            await backend.member_create(good)
        elif action == "update":
            with pytest.raises(BackendError, match="fail_pattern"):
                await backend.member_update(good, bad)  # the new name decides
            await backend.member_update(bad, good)
        else:
            with pytest.raises(BackendError):
                await backend.member_delete(bad)
            await backend.member_delete(good)


async def test_failed_create_leaves_nothing_behind() -> None:
    with trio.fail_after(10):
        backend = NoopBackend(fail_pattern="web")
        with pytest.raises(BackendError):
            await backend.member_create(member())
        assert backend.tree(LB) == {}


async def test_latency_sleeps_on_every_crud_call(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        backend = NoopBackend(latency=0.25)
        start = trio.current_time()
        await backend.loadbalancer_create(lb())
        await backend.member_create(member())
        await backend.member_delete(member())
        assert trio.current_time() - start == pytest.approx(0.75)


async def test_no_latency_means_no_sleep(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        backend = NoopBackend()
        start = trio.current_time()
        await backend.loadbalancer_create(lb())
        assert trio.current_time() == start


async def test_statistics_grow_and_are_reproducible() -> None:
    with trio.fail_after(10):
        async def rounds(seed: int) -> list[list[Any]]:
            backend = NoopBackend(seed=seed)
            await backend.loadbalancer_create(lb())
            await backend.listener_create(listener(), None)
            return [
                [msgspec.structs.asdict(s) for s in await backend.listener_statistics(LB)]
                for _ in range(5)
            ]

        first = await rounds(seed=1)
        assert first == await rounds(seed=1)
        assert first != await rounds(seed=2)
        assert all(len(r) == 1 and r[0]["id"] == LISTENER for r in first)
        for before, after in zip(first, first[1:], strict=False):
            b, a = before[0], after[0]
            assert a["total_connections"] > b["total_connections"]
            assert a["bytes_in"] > b["bytes_in"]
            assert a["bytes_out"] > b["bytes_out"]
            assert a["request_errors"] >= b["request_errors"]
            assert 0 <= a["active_connections"] <= a["total_connections"]


async def test_statistics_only_for_live_listeners_of_that_load_balancer() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        other = "0ther000-0000-4000-8000-000000000000"
        await backend.listener_create(listener(), None)
        await backend.listener_create(
            listener(id="l2", listener_id="l2", loadbalancer_id=other, loadbalancer=None), None
        )
        assert [s.id for s in await backend.listener_statistics(LB)] == [LISTENER]
        assert [s.id for s in await backend.listener_statistics(other)] == ["l2"]
        await backend.listener_delete(listener())
        assert await backend.listener_statistics(LB) == []


async def test_operating_statuses_follow_admin_state() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        await backend.loadbalancer_create(lb())
        await backend.member_create(member(admin_state_up=False))
        assert await backend.operating_statuses(LB) == [
            ("loadbalancer", LB, "ONLINE"),
            ("member", MEMBER, "OFFLINE"),
        ]


async def test_flavor_metadata_and_validation() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        supported = await backend.flavor_metadata()
        assert set(supported) == {"max_connections", "timeout_client_data"}
        assert all(isinstance(v, str) and v for v in supported.values())
        assert await backend.validate_flavor({"max_connections": 1000}) is None
        assert await backend.validate_flavor({}) is None
        reason = await backend.validate_flavor({"max_connections": 10, "service_type": "small"})
        assert reason is not None and "service_type" in reason
        reason = await backend.validate_flavor({"max_connections": "lots"})
        assert reason is not None and "max_connections" in reason
        reason = await backend.validate_flavor({"timeout_client_data": -5})
        assert reason is not None and "timeout_client_data" in reason


async def test_availability_zone_metadata_and_validation() -> None:
    with trio.fail_after(10):
        backend = NoopBackend()
        assert set(await backend.availability_zone_metadata()) == {"zone"}
        assert await backend.validate_availability_zone({"zone": "az-1"}) is None
        reason = await backend.validate_availability_zone({"edge_cluster": "az-1"})
        assert reason is not None and "edge_cluster" in reason
        reason = await backend.validate_availability_zone({"zone": ""})
        assert reason is not None and "zone" in reason


def test_load_backend_by_name_and_options() -> None:
    backend = load_backend("noop", {"latency": 0.5, "fail_pattern": "x", "seed": 3})
    assert isinstance(backend, NoopBackend)
    assert (backend.latency, backend.seed) == (0.5, 3)
    assert backend.fail_pattern is not None and backend.fail_pattern.pattern == "x"
    assert isinstance(load_backend("noop"), NoopBackend)


def test_load_backend_takes_a_configuration_section() -> None:
    class Section(msgspec.Struct):
        name: str
        options: dict[str, Any]

    backend = load_backend(Section(name="noop", options={"latency": 2.0}))
    assert isinstance(backend, NoopBackend) and backend.latency == 2.0


def test_load_backend_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ValueError, match="'nsx'"):
        load_backend("nsx")
    with pytest.raises(msgspec.ValidationError, match="latencyy"):
        load_backend("noop", {"latencyy": 1})


def test_register_backend_with_a_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    import lbactors.backends

    monkeypatch.setattr(lbactors.backends, "BACKENDS", dict(lbactors.backends.BACKENDS))
    made: list[dict[str, Any]] = []

    def factory(options: dict[str, Any]) -> Backend:
        made.append(options)
        return NoopBackend(seed=options["seed"])

    register_backend("test-factory", factory)
    assert isinstance(load_backend("test-factory", {"seed": 9}), NoopBackend)
    assert made == [{"seed": 9}]


# --------------------------------------------------------------------------- affinity, failover


def test_lb_affinity_key_is_the_id_unless_the_class_overrides_affinity_key() -> None:
    """A backend that keys by load balancer (the default ``affinity_key``) knows a resident
    load balancer's key: its id. One with its own ``affinity_key`` cannot tell from an id
    alone unless it says so: unknown."""

    class ById(Backend):
        pass

    class ByRouter(ById):
        def affinity_key(self, request: Any) -> str | None:
            return "router-1"

    for cls in (ById, ByRouter):
        cls.__abstractmethods__ = frozenset()  # only the affinity side is exercised
    assert ById().lb_affinity_key(LB) == LB
    assert ByRouter().lb_affinity_key(LB) is None


def test_only_backends_whose_state_is_off_this_host_fail_over() -> None:
    from lbactors.backends.haproxy import HaproxyBackend

    assert Backend.failover is True
    assert NoopBackend.failover is True
    assert HaproxyBackend.failover is False


async def test_a_tree_packed_as_one_blob_keeps_every_object_through_updates_and_deletes() -> None:
    """A tree is one blob whose ids refer to each other (a member's ``pool_id`` to its pool's
    entry, the project once for all): each object comes back field for field, also after an
    object before it in the tree is deleted (the references move) and after updates; ids in
    other forms (not a UUID, 32 hex digits) included."""
    with trio.fail_after(10):
        backend = NoopBackend()
        pool: Pool = obj("pool_create")
        created = [
            lb(),
            listener(project_id="0123456789abcdef0123456789abcdef"),
            pool,
            member(),
            member(id="m-2", name="second", subnet_id="subnet-not-a-uuid", port=8081),
        ]
        for item in created:
            kind = type(item).__name__.lower()
            method = getattr(backend, f"{kind}_create")
            if isinstance(item, Listener):
                await method(item, None)
            else:
                await method(item)

        def own(item: Any) -> Any:
            nested = {
                name: None
                for name, value in msgspec.structs.asdict(item).items()
                if isinstance(value, (msgspec.Struct, list)) and name != "allowed_cidrs"
            }
            return msgspec.structs.replace(item, **nested)

        def expected(items: list[Any]) -> dict[tuple[str, str], Any]:
            kinds = {LoadBalancer: "loadbalancer", Listener: "listener", Pool: "pool",
                     Member: "member"}
            return {(kinds[type(item)], item.id): own(item) for item in items}

        assert backend.tree(LB) == expected(created)
        assert created[4].pool_id == POOL and created[4].subnet_id == "subnet-not-a-uuid"
        await backend.pool_delete(pool)  # the members' pool_id referred to its entry
        rest = [created[0], created[1], created[3], created[4]]
        assert backend.tree(LB) == expected(rest)
        updated = msgspec.structs.replace(created[3], weight=7, admin_state_up=False)
        await backend.member_update(created[3], updated)
        rest[2] = updated
        assert backend.tree(LB) == expected(rest)
        assert ("member", MEMBER, "OFFLINE") in await backend.operating_statuses(LB)
        assert backend.lb_of("member", "m-2") == LB and backend.lb_of("pool", POOL) is None


async def test_a_deleted_listeners_counters_are_forgotten_and_its_slot_taken_afresh() -> None:
    """Counters live in one table: a listener created again starts over from its seed, and
    one that takes a deleted listener's place in the table does not inherit its counts."""
    with trio.fail_after(10):
        async def first_round(backend: NoopBackend, listener_id: str) -> dict[str, Any]:
            [stats] = [
                s for s in await backend.listener_statistics(LB) if s.id == listener_id
            ]
            return msgspec.structs.asdict(stats)

        fresh = NoopBackend()
        await fresh.listener_create(listener(id="l2", listener_id="l2"), None)
        l2_first = await first_round(fresh, "l2")
        backend = NoopBackend()
        await backend.listener_create(listener(), None)
        once = await first_round(backend, LISTENER)
        for _ in range(3):
            await backend.listener_statistics(LB)
        await backend.listener_delete(listener())
        await backend.listener_create(listener(id="l2", listener_id="l2"), None)
        assert await first_round(backend, "l2") == l2_first
        await backend.listener_create(listener(), None)
        assert await first_round(backend, LISTENER) == once


async def test_deleting_the_last_entry_never_leaves_a_reference_to_its_place() -> None:
    """The last entry is dropped without repacking the tree, unless an earlier entry refers
    to it by its place (a listener's ``default_pool_id`` set to a pool created after it):
    then the tree is packed anew, and the next entry appended in that place is not taken
    for the deleted one."""
    with trio.fail_after(10):
        backend = NoopBackend()
        first = listener()
        pool: Pool = obj("pool_create")
        await backend.loadbalancer_create(lb())
        await backend.listener_create(first, None)
        await backend.pool_create(pool)
        pointing = msgspec.structs.replace(first, default_pool_id=POOL)
        await backend.listener_update(first, pointing, None)
        await backend.pool_delete(pool)  # the last entry, referred to by the listener
        other = msgspec.structs.replace(pool, id="p2", pool_id="p2", name="second")
        await backend.pool_create(other)  # appended where the deleted pool was
        tree = backend.tree(LB)
        assert tree[("listener", LISTENER)].default_pool_id == POOL
        assert tree[("pool", "p2")].name == "second"
        # a last entry nobody refers to: dropped, the rest unchanged
        before = backend.tree(LB)
        extra = member(id="m-9", name="nine")
        await backend.member_create(extra)
        assert ("member", "m-9") in backend.tree(LB)
        await backend.member_delete(extra)
        assert backend.tree(LB) == before


# --------------------------------------------------------------------------- packed trees

#: ids in every form a tree keeps (UUID, 32 hex digits, other strings), some shared between
#: kinds' fields, so that references go to entries, to other ids, and change between them
_LISTENER_IDS = [LISTENER, "listener-two"]
_POOL_IDS = [POOL, "0123456789abcdef0123456789abcd01", "pool-three"]
_MEMBER_IDS = [MEMBER, MEMBER2, "m-3"]
_SUBNETS = [
    "33333333-4444-4555-8666-77778888aaaa",
    "abcdefabcdefabcdefabcdefabcdef12",
    "subnet-x",
    "A3333333-4444-4555-8666-77778888AAAA",  # not lowercase: kept as a string
    POOL,  # an entry's id when that pool exists
    LB,
    MEMBER,  # a member's subnet_id equal to a member's id, even its own
]
_PROJECTS = [PROJECT, "other-project", "11111111-2222-4333-8444-555566667777"]


def _own(item: Any) -> Any:
    """``item`` as the backend keeps it: without its nested objects."""
    nested = {
        name: None
        for name, value in msgspec.structs.asdict(item).items()
        if isinstance(value, (msgspec.Struct, list)) and name != "allowed_cidrs"
    }
    return msgspec.structs.replace(item, **nested)


_BASE: dict[str, Any] = {}


def _tree_object(kind: str, slot: int, ref: int, subnet: int, project: int, n: int) -> Any:
    """One object of the property test's tree, its references chosen by the indexes."""
    if not _BASE:
        _BASE.update(
            loadbalancer=_own(lb()),
            listener=_own(listener()),
            pool=_own(obj("pool_create")),
            member=_own(member()),
        )
    base = _BASE[kind]
    project_id = _PROJECTS[project % len(_PROJECTS)]
    if kind == "loadbalancer":
        return msgspec.structs.replace(
            base, project_id=project_id, vip_subnet_id=_SUBNETS[subnet % len(_SUBNETS)],
            name=f"lb-{n}",
        )
    if kind == "listener":
        object_id = _LISTENER_IDS[slot % len(_LISTENER_IDS)]
        default_pool = None if ref % 4 == 3 else _POOL_IDS[ref % len(_POOL_IDS)]
        return msgspec.structs.replace(
            base, id=object_id, listener_id=object_id, project_id=project_id,
            default_pool_id=default_pool, protocol_port=80 + n, loadbalancer_id=LB,
        )
    if kind == "pool":
        object_id = _POOL_IDS[slot % len(_POOL_IDS)]
        listener_id = None if ref % 3 == 2 else _LISTENER_IDS[ref % len(_LISTENER_IDS)]
        return msgspec.structs.replace(
            base, id=object_id, pool_id=object_id, project_id=project_id,
            listener_id=listener_id, name=f"pool-{n}", loadbalancer_id=LB,
        )
    object_id = _MEMBER_IDS[slot % len(_MEMBER_IDS)]
    return msgspec.structs.replace(
        base, id=object_id, member_id=object_id, project_id=project_id,
        pool_id=_POOL_IDS[ref % len(_POOL_IDS)], subnet_id=_SUBNETS[subnet % len(_SUBNETS)],
        weight=n % 256, admin_state_up=n % 5 != 0, loadbalancer_id=LB,
    )


_STEP = st.tuples(
    st.sampled_from(["create", "update", "delete"]),
    st.sampled_from(["loadbalancer", "listener", "pool", "pool", "member", "member", "member"]),
    st.integers(0, 2),  # which object of its kind
    st.integers(0, 5),  # which entry it refers to (pool, listener)
    st.integers(0, 6),  # which subnet
    st.integers(0, 2),  # which project
)


async def _apply(backend: NoopBackend, action: str, item: Any, old: Any) -> None:
    kind = type(item).__name__.lower()
    if action == "delete":
        await getattr(backend, f"{kind}_delete")(item)
    elif action == "update":
        args = (old, item, None) if kind == "listener" else (old, item)
        await getattr(backend, f"{kind}_update")(*args)
    else:
        args = (item, None) if kind == "listener" else (item,)
        await getattr(backend, f"{kind}_create")(*args)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_STEP, max_size=40))
def test_a_packed_tree_is_what_a_dict_of_its_objects_would_be(steps: list[Any]) -> None:
    """Any sequence of creates, updates and deletes (of the last entry, of one in the middle,
    of entries others refer to, of the load balancer) leaves the tree a dict of the objects
    would be, every reference to an entry or another id resolved as it was written."""

    async def run() -> None:
        backend = NoopBackend()
        model: dict[tuple[str, str], Any] = {}
        for n, (action, kind, slot, ref, subnet, project) in enumerate(steps):
            item = _tree_object(kind, slot, ref, subnet, project, n)
            key = (kind, item.id)
            await _apply(backend, action, item, model.get(key, item))
            if action == "delete" and kind == "loadbalancer":
                model.clear()
            elif action == "delete":
                model.pop(key, None)
            else:
                model[key] = item
            assert backend.tree(LB) == model
            if model:
                items = _other_ids(backend)
                assert all(items.count(item) == 1 for item in items)  # each kept once
            for kind_, object_id in model:
                assert backend.lb_of(kind_, object_id) == LB

    trio.run(run)


def _other_ids(backend: NoopBackend) -> list[Any]:
    """The tree's other ids as its blob packs them."""
    record = backend._trees[LB]
    begin, end = noop._extra_span(record)
    items: list[Any] = noop._decode_packed(record[1][begin:end])
    return items


async def test_other_ids_are_kept_once_and_dropped_when_nobody_refers_to_them() -> None:
    """A tree keeps each other id once however many objects refer to it, also one that was
    another id before it was an entry's; a delete in the middle of the tree drops the other
    ids nobody refers to any more (left by updates and by deletes of the last entry): the
    blob is then as small as that of the same objects created afresh."""
    with trio.fail_after(10):
        backend = NoopBackend()
        m1 = _tree_object("member", 0, 0, 0, 0, 1)
        m2 = _tree_object("member", 1, 0, 0, 0, 2)  # same pool, subnet and project
        m3 = _tree_object("member", 2, 1, 1, 1, 3)
        await backend.member_create(m1)  # its pool_id: another id (no such entry yet)
        await backend.pool_create(_tree_object("pool", 0, 2, 0, 0, 4))  # that pool: an entry
        await backend.member_create(m2)
        await backend.member_create(m3)
        assert len(_other_ids(backend)) == 6  # m1's and m3's pool, subnet and project
        await backend.member_update(m3, _tree_object("member", 2, 1, 2, 2, 5))  # 2 new ones
        assert len(_other_ids(backend)) == 8
        await backend.pool_delete(_tree_object("pool", 0, 2, 0, 0, 4))  # in the middle
        items = _other_ids(backend)
        assert all(items.count(item) == 1 for item in items)
        assert len(items) == 6  # the pool's id once; m3's old subnet and project dropped
        fresh = NoopBackend()
        for item in (m1, m2, _tree_object("member", 2, 1, 2, 2, 5)):
            await fresh.member_create(item)
        assert len(backend._trees[LB][1]) == len(fresh._trees[LB][1])
        assert backend.tree(LB) == fresh.tree(LB)


async def test_creates_updates_and_deletes_never_unpack_the_other_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create appends, an update replaces its entry's bytes, a delete cuts off the last
    entry or moves the references of the others: none of them decodes a tree's fields into
    strings (the ext hook that unpacks references and ids), only ``tree()`` does."""
    with trio.fail_after(10):

        def unpacking(*args: Any) -> Any:
            raise AssertionError("the tree was unpacked")

        backend = NoopBackend()
        steps = [("create", _tree_object(kind, slot, ref, 3 + slot, 0, slot))
                 for kind, slot, ref in [("loadbalancer", 0, 0), ("listener", 0, 1),
                                         ("pool", 0, 0), ("member", 0, 0), ("member", 1, 0),
                                         ("pool", 1, 0), ("listener", 1, 2)]]
        steps += [("update", _tree_object("member", 0, 1, 1, 2, 9)),
                  ("delete", _tree_object("listener", 1, 2, 0, 0, 0)),  # the last
                  ("delete", _tree_object("pool", 0, 0, 0, 0, 0)),  # referred to
                  ("delete", _tree_object("member", 1, 0, 0, 0, 0))]
        model: dict[tuple[str, str], Any] = {}
        for action, item in steps:
            monkeypatch.setattr(noop, "_decode", unpacking)
            key = (type(item).__name__.lower(), item.id)
            await _apply(backend, action, item, model.get(key, item))
            monkeypatch.undo()
            if action == "delete":
                del model[key]
            else:
                model[key] = item
            assert backend.tree(LB) == model
