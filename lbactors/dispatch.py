"""One operation, start to finish: decode, call the backend, compute the status and the reply.

:func:`run_operation` is what an actor runs for each :class:`~lbactors.messages.Operation`
of its mailbox (and what the actor system runs directly for flavor / availability-zone
queries). It never raises (except cancellation): every problem becomes part of the returned
:class:`~lbactors.messages.Outcome`, following ``status-semantics.md``:

- CRUD: the backend method of the wire name; success ``ACTIVE`` (``DELETED``), a backend
  exception ``ERROR`` for the object with the parents per ``parents_on_failure``;
- ``pool_delete``: :func:`~lbactors.cascade.pool_delete_plan` (health monitor, members, pool)
  step by step, stopping at the first failure (:func:`~lbactors.status.pool_delete_status`);
- ``loadbalancer_delete(cascade=True)`` and ``loadbalancer_delete_cascade``:
  :func:`~lbactors.cascade.cascade_plan` step by step, stopping at the first failure
  (:func:`~lbactors.status.cascade_status`);
- the four flavor / availability-zone calls: the replies of the "Calls" table;
- a CRUD method sent as a ``call``: reply ``True`` / ``False`` after the status;
- a message that cannot be run (:class:`~lbactors.messages.InvalidOperation`): a failure
  (``NoSuchMethod`` for an unknown method, as oslo's dispatcher, else ``InvalidOperation``),
  and the named object ``ERROR`` when it can be named.

Every backend call runs under its deadline (:class:`~lbactors.backends.base.Deadlines`):
on expiry it is cancelled and counts as a failure (:class:`DeadlineExceeded`). While a call
runs, its :class:`CallWatch` says until when; the actor system uses that to find a call that
ignores its cancellation (:func:`failed_outcome` then answers for it). When the watch has a
``hold`` (the lock of the operation's key, :class:`lbactors.actor.KeyedLocks`), each backend
call runs holding it; the wait for it is not part of the call's deadline.

When the watch has a ``scope`` (an actor's long-lived cancel scope, entered around the
operations it runs), a call costs no cancel scope of its own: its coroutine is stepped once,
and a call that finishes without suspending (the noop backend) never needed a deadline;
one that suspends gets it on the actor's scope (set before its first suspension, measured
from then, reset after), and the ``Cancelled`` of that scope's expiry becomes
:class:`DeadlineExceeded` here. The scope stays cancelled afterwards: the actor replaces it
before its next await (:attr:`CallWatch.scope`).

Successes are not logged here (the actor logs them at debug with its bound logger: a debug
line through structlog's lazy proxy costs more than a whole noop backend call).

Layer: actors and backends (model, trio, structlog); never AMQP.
"""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import structlog
import trio

from lbactors.backends.base import Backend
from lbactors.cascade import Step, cascade_plan, pool_delete_plan
from lbactors.messages import (
    Failure,
    InvalidOperation,
    Operation,
    Outcome,
    Request,
    decode_request,
)
from lbactors.model import (
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    Pool,
)
from lbactors.status import (
    ParentsOnFailure,
    cascade_status,
    object_error_status,
    operation_status,
    pool_delete_status,
)

__all__ = ["CallWatch", "DeadlineExceeded", "failed_outcome", "resume", "run_operation"]

log = structlog.get_logger("lbactors.dispatch")

_Crud = Callable[[Backend, Request], Awaitable[None]]
_Delete = Callable[[Backend, Any], Awaitable[None]]


def _o(request: Request) -> Any:
    return request.obj


#: CRUD wire method -> the backend call (the request was checked by decode_request)
_CRUD: dict[str, _Crud] = {
    "loadbalancer_create": lambda b, r: b.loadbalancer_create(_o(r)),
    "loadbalancer_update": lambda b, r: b.loadbalancer_update(cast(LoadBalancer, r.old), _o(r)),
    "loadbalancer_delete": lambda b, r: b.loadbalancer_delete(_o(r)),
    "listener_create": lambda b, r: b.listener_create(_o(r), r.cert),
    "listener_update": lambda b, r: b.listener_update(cast(Listener, r.old), _o(r), r.cert),
    "listener_delete": lambda b, r: b.listener_delete(_o(r)),
    "pool_create": lambda b, r: b.pool_create(_o(r)),
    "pool_update": lambda b, r: b.pool_update(cast(Pool, r.old), _o(r)),
    "pool_delete": lambda b, r: b.pool_delete(_o(r)),
    "member_create": lambda b, r: b.member_create(_o(r)),
    "member_update": lambda b, r: b.member_update(cast(Member, r.old), _o(r)),
    "member_delete": lambda b, r: b.member_delete(_o(r)),
    "healthmonitor_create": lambda b, r: b.healthmonitor_create(_o(r)),
    "healthmonitor_update": lambda b, r: b.healthmonitor_update(cast(HealthMonitor, r.old), _o(r)),
    "healthmonitor_delete": lambda b, r: b.healthmonitor_delete(_o(r)),
    "l7policy_create": lambda b, r: b.l7policy_create(_o(r)),
    "l7policy_update": lambda b, r: b.l7policy_update(cast(L7Policy, r.old), _o(r)),
    "l7policy_delete": lambda b, r: b.l7policy_delete(_o(r)),
    "l7rule_create": lambda b, r: b.l7rule_create(_o(r)),
    "l7rule_update": lambda b, r: b.l7rule_update(cast(L7Rule, r.old), _o(r)),
    "l7rule_delete": lambda b, r: b.l7rule_delete(_o(r)),
}

#: kind -> the backend delete of one plan step
_DELETE: dict[str, _Delete] = {
    "loadbalancer": lambda b, o: b.loadbalancer_delete(o),
    "listener": lambda b, o: b.listener_delete(o),
    "pool": lambda b, o: b.pool_delete(o),
    "member": lambda b, o: b.member_delete(o),
    "healthmonitor": lambda b, o: b.healthmonitor_delete(o),
    "l7policy": lambda b, o: b.l7policy_delete(o),
    "l7rule": lambda b, o: b.l7rule_delete(o),
}


class DeadlineExceeded(Exception):
    """A backend call did not finish within its deadline and was cancelled."""

    def __init__(self, seconds: float, started: float) -> None:
        super().__init__(f"no answer within the deadline of {seconds:g} s; cancelled")
        #: when its deadline started to run (trio clock)
        self.started = started


class CallWatch:
    """One running operation, as the actor system watches it: ``deadline`` is when its
    current backend call must be over (trio clock; ``inf`` between calls)."""

    __slots__ = ("abandoned", "deadline", "hold", "on_wait", "op", "scope")

    def __init__(self, op: Operation | None = None) -> None:
        self.op = op
        self.deadline = math.inf
        #: given up on: the call ignored its cancellation and its outcome was sent for it
        self.abandoned = False
        #: held around each backend call of the operation (its key's lock), if any
        self.hold: Callable[[], AbstractAsyncContextManager[None]] | None = None
        #: a cancel scope entered by the caller around everything it runs with this watch,
        #: deadline ``inf`` between calls: a call's deadline goes on it (module docstring).
        #: Once it is ``cancel_called`` the caller must leave it before awaiting anything
        #: else, and give the next operation a fresh one. ``None``: a scope per call.
        self.scope: trio.CancelScope | None = None
        #: told ``True`` before the operation may wait (a backend call that suspended, a
        #: key's lock) and ``False`` once that is over: backend calls are the only places
        #: where :func:`run_operation` can suspend (an actor's runner is taken meanwhile)
        self.on_wait: Callable[[bool], None] | None = None


async def _bounded(call: Awaitable[Any], seconds: float, watch: CallWatch | None) -> Any:
    """Await one backend call, cancelled after ``seconds`` (then :class:`DeadlineExceeded`),
    holding ``watch.hold`` when there is one (waiting for it is not part of the deadline)."""
    if watch is None:
        return await _within(call, seconds, None)
    scope = watch.scope
    if watch.hold is None and scope is not None and type(call) is types.CoroutineType:
        # an actor's call (the hot path): stepped here, with no coroutine in between
        try:
            trap = call.send(None)
        except StopIteration as stop:  # done without suspending: no deadline applied
            return stop.value
        rest = _suspended(call, trap, seconds, watch, scope)
    else:
        rest = _held(call, seconds, watch)  # may or may not wait: counted as waiting
    on_wait = watch.on_wait
    if on_wait is None:
        return await rest
    on_wait(True)
    try:
        return await rest
    finally:
        on_wait(False)


async def _held(call: Awaitable[Any], seconds: float, watch: CallWatch) -> Any:
    """:func:`_within`, holding ``watch.hold`` when there is one."""
    hold = watch.hold
    if hold is None:
        return await _within(call, seconds, watch)
    try:
        async with hold():
            return await _within(call, seconds, watch)
    finally:
        if inspect.iscoroutine(call):
            call.close()  # never awaited when cancelled while waiting: no warning; else a no-op


@types.coroutine
def resume(call: Coroutine[Any, Any, Any], trap: Any) -> Generator[Any, Any, Any]:
    """Go on with ``call``, suspended at ``trap`` (what its first step yielded to trio): pass
    trio's answers in and its next traps out, as ``await`` would have."""
    while True:
        try:
            sent = yield trap
        except BaseException as exc:  # thrown in by trio (or close()): the call decides
            try:
                trap = call.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                trap = call.send(sent)
            except StopIteration as stop:
                return stop.value


async def _within_scope(
    call: Coroutine[Any, Any, Any], seconds: float, watch: CallWatch, scope: trio.CancelScope
) -> Any:
    """:func:`_within` on the caller's long-lived ``scope`` (:attr:`CallWatch.scope`)."""
    try:
        trap = call.send(None)
    except StopIteration as stop:  # done without suspending: no deadline could apply
        return stop.value
    return await _suspended(call, trap, seconds, watch, scope)


async def _suspended(
    call: Coroutine[Any, Any, Any],
    trap: Any,
    seconds: float,
    watch: CallWatch,
    scope: trio.CancelScope,
) -> Any:
    """The rest of ``call``, whose first step suspended at ``trap``, under its deadline on
    ``scope`` (set before trio sees the trap, so measured from its first suspension)."""
    deadline = trio.current_time() + seconds
    scope.deadline = deadline
    watch.deadline = deadline
    try:
        return await resume(call, trap)
    except trio.Cancelled:
        if not scope.cancel_called:
            raise  # cancelled from outside: not ours to turn into a failure
        raise DeadlineExceeded(seconds, deadline - seconds) from None
    finally:
        watch.deadline = math.inf
        scope.deadline = math.inf


async def _within(call: Awaitable[Any], seconds: float, watch: CallWatch | None) -> Any:
    if watch is not None:
        scope = watch.scope
        if scope is not None and type(call) is types.CoroutineType:
            return await _within_scope(call, seconds, watch, scope)
    with trio.move_on_after(seconds) as scope:
        if watch is not None:
            watch.deadline = scope.deadline
        try:
            return await call
        finally:
            if watch is not None:
                watch.deadline = math.inf
    raise DeadlineExceeded(seconds, scope.deadline - seconds)


def _failure(exc: BaseException) -> Failure:
    cls = type(exc)
    return Failure(exc_class=cls.__name__, module=cls.__module__, message=str(exc))


def _crud_reply(op: Operation, success: bool) -> bool | None:
    """A CRUD method sent as a call is answered True / False (the migration tool)."""
    return success if op.is_call else None


async def run_operation(
    backend: Backend,
    op: Operation,
    *,
    parents_on_failure: ParentsOnFailure = "active",
    watch: CallWatch | None = None,
) -> Outcome:
    """Run ``op`` against ``backend``; the :class:`Outcome` to publish. Never raises."""
    try:
        request = decode_request(op.method, op.args)
    except InvalidOperation as exc:
        return _invalid(op, exc)
    try:
        if request.kind is None:
            return await _query(backend, op, request, watch)
        if request.action == "delete":
            if request.cascade:
                return await _cascade(backend, op, request, watch)
            if request.kind == "pool":
                return await _pool_delete(backend, op, request, parents_on_failure, watch)
        return await _crud(backend, op, request, parents_on_failure, watch)
    except Exception as exc:  # a bug on our side (status, plan): still one outcome, no escape
        log.error(
            "operation crashed",
            lb_id=op.lb_id,
            op_id=op.op_id,
            method=op.method,
            exc_info=exc,
        )
        obj = request.obj
        status = (
            object_error_status(request.kind, obj.id)
            if request.kind is not None and obj is not None and obj.id
            else None
        )
        return Outcome(
            op_id=op.op_id,
            lb_id=op.lb_id,
            status=status,
            reply=_crud_reply(op, False) if request.kind is not None else None,
            failure=_failure(exc),
            reason=f"internal error: {type(exc).__name__}: {exc}",
        )


def failed_outcome(
    op: Operation, reason: str, *, parents_on_failure: ParentsOnFailure = "active"
) -> Outcome:
    """The outcome of ``op`` as if its backend call had failed, without running anything.

    For an operation given up on: a backend call that ignored its cancellation, or an
    operation that was in flight on every worker that died (a poison operation). The object
    of the operation goes ERROR, its parents ACTIVE (a plan's progress is unknown, so a
    cascade reports its load balancer ERROR and nothing else); a call is answered ``False``
    (CRUD) or with the failure (query).
    """
    try:
        request = decode_request(op.method, op.args)
    except InvalidOperation as exc:
        return _invalid(op, exc)
    if request.kind is None:
        failure = Failure(exc_class="DriverError", module="lbactors.dispatch", message=reason)
        return Outcome(op_id=op.op_id, lb_id=op.lb_id, failure=failure, reason=reason)
    status = operation_status(request, success=False, parents_on_failure=parents_on_failure)
    return Outcome(
        op_id=op.op_id, lb_id=op.lb_id, status=status, reply=_crud_reply(op, False), reason=reason
    )


def _invalid(op: Operation, exc: InvalidOperation) -> Outcome:
    if exc.unknown_method:
        failure = Failure(
            exc_class="NoSuchMethod",
            module="oslo_messaging.rpc.dispatcher",
            message=f"Endpoint does not support RPC method {op.method}",
        )
    else:
        failure = Failure(exc_class="InvalidOperation", module="lbactors.messages", message=str(exc))
    status = (
        object_error_status(exc.object_kind, exc.object_id)
        if exc.object_kind and exc.object_id
        else None
    )
    log.warning(
        "invalid operation",
        lb_id=op.lb_id,
        op_id=op.op_id,
        method=op.method,
        field=exc.field,
        reason=exc.reason,
        object_kind=exc.object_kind,
        object_id=exc.object_id,
    )
    return Outcome(
        op_id=op.op_id, lb_id=op.lb_id, status=status, failure=failure, reason=str(exc)
    )


def _backend_failure(
    op: Operation, exc: Exception, kind: str, object_id: str | None
) -> str:
    """Log a failed backend call; the reason for the outcome."""
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, DeadlineExceeded):
        log.error(
            "backend call exceeded its deadline",
            lb_id=op.lb_id,
            op_id=op.op_id,
            method=op.method,
            kind=kind,
            object_id=object_id,
            elapsed_s=round(trio.current_time() - exc.started, 3),
        )
    else:
        log.warning(
            "backend failed",
            lb_id=op.lb_id,
            op_id=op.op_id,
            method=op.method,
            kind=kind,
            object_id=object_id,
            error=reason,
        )
    return reason


async def _crud(
    backend: Backend,
    op: Operation,
    request: Request,
    parents_on_failure: ParentsOnFailure,
    watch: CallWatch | None,
) -> Outcome:
    try:
        await _bounded(
            _CRUD[request.method](backend, request), backend.deadlines.operation_deadline, watch
        )
    except Exception as exc:
        obj = request.obj
        reason = _backend_failure(op, exc, request.kind or "", obj.id if obj else None)
        status = operation_status(request, success=False, parents_on_failure=parents_on_failure)
        return Outcome(
            op_id=op.op_id,
            lb_id=op.lb_id,
            status=status,
            reply=_crud_reply(op, False),
            reason=reason,
        )
    status = operation_status(request, success=True, parents_on_failure=parents_on_failure)
    return Outcome(op_id=op.op_id, lb_id=op.lb_id, status=status, reply=_crud_reply(op, True))


async def _run_plan(
    backend: Backend, op: Operation, plan: list[Step], watch: CallWatch | None
) -> tuple[int, str | None]:
    """Run the deletes of ``plan`` in order; ``(steps completed, why it failed or None)``."""
    seconds = backend.deadlines.plan_step_deadline
    for completed, step in enumerate(plan):
        try:
            await _bounded(_DELETE[step.kind](backend, step.obj), seconds, watch)
        except Exception as exc:
            return completed, _backend_failure(op, exc, step.kind, step.id)
    return len(plan), None


async def _pool_delete(
    backend: Backend,
    op: Operation,
    request: Request,
    parents_on_failure: ParentsOnFailure,
    watch: CallWatch | None,
) -> Outcome:
    pool = cast(Pool, request.obj)
    plan = pool_delete_plan(pool)
    completed, reason = await _run_plan(backend, op, plan, watch)
    failed = reason is not None
    status = pool_delete_status(
        pool, plan, completed=completed, failed=failed, parents_on_failure=parents_on_failure
    )
    return Outcome(
        op_id=op.op_id,
        lb_id=op.lb_id,
        status=status,
        reply=_crud_reply(op, not failed),
        reason=reason,
    )


async def _cascade(
    backend: Backend, op: Operation, request: Request, watch: CallWatch | None
) -> Outcome:
    lb = cast(LoadBalancer, request.obj)
    plan = cascade_plan(lb)
    completed, reason = await _run_plan(backend, op, plan, watch)
    failed = reason is not None
    status = cascade_status(lb, plan, completed=completed, failed=failed)
    return Outcome(
        op_id=op.op_id,
        lb_id=op.lb_id,
        status=status,
        reply=_crud_reply(op, not failed),
        reason=reason,
    )


def _validity(reason: str | None) -> dict[str, Any]:
    if reason is None:
        return {"valid": True}
    return {"valid": False, "reason": reason}


async def _query(
    backend: Backend, op: Operation, request: Request, watch: CallWatch | None
) -> Outcome:
    method = request.method
    metadata = request.metadata or {}
    seconds = backend.deadlines.query_deadline
    reply: Any
    try:
        if method == "get_supported_flavor_metadata":
            reply = await _bounded(backend.flavor_metadata(), seconds, watch)
        elif method == "validate_flavor":
            reply = _validity(await _bounded(backend.validate_flavor(metadata), seconds, watch))
        elif method == "get_supported_availability_zone_metadata":
            reply = await _bounded(backend.availability_zone_metadata(), seconds, watch)
        elif method == "validate_availability_zone":
            reply = _validity(
                await _bounded(backend.validate_availability_zone(metadata), seconds, watch)
            )
        else:  # pragma: no cover - decode_request knows no other query
            raise InvalidOperation(method, "", "unknown query", unknown_method=True)
    except Exception as exc:
        log.warning(
            "query failed",
            op_id=op.op_id,
            method=method,
            error=f"{type(exc).__name__}: {exc}",
        )
        return Outcome(
            op_id=op.op_id,
            lb_id=op.lb_id,
            failure=_failure(exc),
            reason=f"{type(exc).__name__}: {exc}",
        )
    return Outcome(op_id=op.op_id, lb_id=op.lb_id, reply=reply)
