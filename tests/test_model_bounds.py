"""The model's bounds, at their edges, as Octavia's API defines them (``octavia/api/v2/types``
and ``octavia.common.constants``): the last value accepted and the first refused, for every
bounded field. Written from Octavia's limits, not from ``lbactors/model.py``'s, so a wrong
bound there (an off-by-one, 2**32 for 2**31) fails here."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from lbactors.model import HealthMonitor, L7Policy, Listener, LoadBalancer, Member

#: Octavia's int32 columns
INT32 = 2_147_483_647
#: octavia.common.constants.MAX_TIMEOUT: 24 days in milliseconds
MAX_TIMEOUT = 2_073_600_000

#: (class, field, accepted edge values, refused edge values)
BOUNDS: list[tuple[type[Any], str, list[Any], list[Any]]] = [
    (Listener, "protocol_port", [1, 65535], [0, 65536]),
    (Member, "protocol_port", [1, 65535], [0, 65536]),
    (Member, "monitor_port", [1, 65535], [0, 65536]),
    (Member, "weight", [0, 256], [-1, 257]),
    (HealthMonitor, "max_retries", [1, 10], [0, 11]),
    (HealthMonitor, "max_retries_down", [1, 10], [0, 11]),
    (HealthMonitor, "delay", [0, INT32], [-1, INT32 + 1]),
    (HealthMonitor, "timeout", [0, INT32], [-1, INT32 + 1]),
    (Listener, "connection_limit", [-1, INT32], [-2, INT32 + 1]),
    (Listener, "timeout_client_data", [0, MAX_TIMEOUT], [-1, MAX_TIMEOUT + 1]),
    (Listener, "timeout_member_connect", [0, MAX_TIMEOUT], [-1, MAX_TIMEOUT + 1]),
    (Listener, "timeout_member_data", [0, MAX_TIMEOUT], [-1, MAX_TIMEOUT + 1]),
    (Listener, "timeout_tcp_inspect", [0, MAX_TIMEOUT], [-1, MAX_TIMEOUT + 1]),
    (L7Policy, "position", [1, INT32], [0, INT32 + 1]),
    (L7Policy, "redirect_http_code", [301, 302, 303, 307, 308], [300, 304, 306, 309]),
    # ids: UUIDs in Octavia (36 characters); anything up to 255 is taken, as the columns allow
    (LoadBalancer, "id", ["x" * 255], ["x" * 256]),
    (Member, "pool_id", ["x" * 255], ["x" * 256]),
]


def _cases(accepted: bool) -> list[Any]:
    return [
        pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={str(value)[:12]}")
        for cls, name, good, bad in BOUNDS
        for value in (good if accepted else bad)
    ]


@pytest.mark.parametrize(("cls", "name", "value"), _cases(accepted=True))
def test_the_last_value_octavia_accepts_is_accepted(cls: type[Any], name: str, value: Any) -> None:
    obj = msgspec.convert({"id": "o-1", name: value}, cls)
    assert getattr(obj, name) == value


@pytest.mark.parametrize(("cls", "name", "value"), _cases(accepted=False))
def test_the_first_value_octavia_refuses_is_refused(cls: type[Any], name: str, value: Any) -> None:
    with pytest.raises(msgspec.ValidationError, match=name):
        msgspec.convert({"id": "o-1", name: value}, cls)
