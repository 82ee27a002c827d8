"""Backends by name: :func:`load_backend` builds the one the configuration names.

A backend is a :class:`~lbactors.backends.base.Backend`; ``noop`` (in-memory) is the
embedded default. Other backends register a factory with :func:`register_backend` or are
listed in :data:`BACKENDS` as ``"module:Class"`` (imported on first use, so a backend's
dependencies are only needed when it is chosen). A backend class builds itself from its
options with a ``from_options(options)`` class method that rejects unknown keys by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from lbactors.backends.base import Backend, BackendError, OperatingStatus

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "OperatingStatus",
    "load_backend",
    "register_backend",
]

BackendFactory = Callable[[dict[str, Any]], Backend]

#: backend name -> ``"module:Class"`` (the class has ``from_options``) or a factory
BACKENDS: dict[str, str | BackendFactory] = {
    "noop": "lbactors.backends.noop:NoopBackend",
    "haproxy": "lbactors.backends.haproxy:HaproxyBackend",
}


def register_backend(name: str, factory: str | BackendFactory) -> None:
    """Make ``name`` loadable: a ``"module:Class"`` path or ``factory(options) -> Backend``."""
    BACKENDS[name] = factory


def _factory(name: str) -> BackendFactory:
    try:
        entry = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown backend {name!r} (known: {known})") from None
    if callable(entry):
        return entry
    module_name, _, class_name = entry.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    factory: BackendFactory = cls.from_options
    return factory


def load_backend(name: Any, options: Mapping[str, Any] | None = None) -> Backend:
    """The backend called ``name``, built from ``options``.

    ``name`` may also be a configuration section with ``name`` and ``options`` attributes
    (``load_backend(config.backend)``). Raises :class:`ValueError` for an unknown backend
    and whatever the backend raises for bad options (``msgspec.ValidationError`` naming the
    key for the built-in ones).
    """
    if not isinstance(name, str):
        section = name
        name = section.name
        options = getattr(section, "options", None)
    return _factory(name)(dict(options or {}))
