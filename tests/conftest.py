"""Shared fixtures: the real broker on 127.0.0.1 and unique names per test."""

from __future__ import annotations

import socket
import uuid

import pytest

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _broker_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def amqp_url() -> str:
    if not _broker_answers():
        pytest.fail("RabbitMQ does not answer on 127.0.0.1:5672 (start it: rabbitmq-server -detached)")
    return AMQP_URL


@pytest.fixture
def unique_prefix() -> str:
    """A name prefix no other test uses, so tests never see each other's messages."""
    return f"lbt_{uuid.uuid4().hex[:12]}"
