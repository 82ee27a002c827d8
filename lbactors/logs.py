"""Logging for the daemon and its workers: structlog, one line per event, on **stdout**.

:func:`configure_logging` sets it up (again, if called again: the last call wins):

- ``json`` (or ``auto`` when stdout is not a terminal, e.g. under systemd): one JSON object per
  line with ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``event``, every key bound
  with :func:`structlog.contextvars.bind_contextvars` (``lb_id``, ``method``, ``op_id``,
  ``worker``...) and the call's own keys; exceptions as a structured ``exception`` list
  (no local variables, at most 20 frames). msgspec is the serializer; unknown objects are
  rendered with ``repr``.
- ``console`` (or ``auto`` on a terminal): structlog's console renderer, colours on a terminal.

stdout, not stderr, for everything: journald reads both, and one stream keeps the order of
the supervisor's and the workers' lines (workers inherit the supervisor's stdout). When stdout
*is* the journal (``$JOURNAL_STREAM`` names it), each line starts with a ``<N>`` syslog
priority that journald strips and stores as ``PRIORITY``, so ``journalctl -p err`` works;
``journalctl -u lbactors -o cat`` gives back the pure JSON lines.

Records of the standard library's :mod:`logging` (libraries) go through the same processors
to the same stream. Levels below ``level`` cost one method call returning ``None``
(:func:`structlog.make_filtering_bound_logger`). Loggers are not cached on first use, so a
later call reconfigures every logger, including module-level ``structlog.get_logger(...)``
proxies (and :func:`structlog.testing.capture_logs` keeps working in tests); bind a logger
once (``log.bind(lb_id=...)``) where a hot path logs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import IO, Any

import msgspec
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["LEVELS", "configure_logging"]

#: accepted levels, lowest first
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "json", "console")

#: syslog priorities of structlog's method names, for journald's ``<N>`` line prefix
_PRIORITY: dict[str, int] = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}

_json_encoder = msgspec.json.Encoder(enc_hook=repr)

#: the handler this module put on the root logger (replaced by the next call)
_handler: logging.Handler | None = None


def _json_bytes(event_dict: Any, **_: Any) -> bytes:
    """structlog's ``JSONRenderer`` serializer (it passes ``default=``, msgspec has none)."""
    return _json_encoder.encode(event_dict)


def _json_text(event_dict: Any, **_: Any) -> str:
    return _json_encoder.encode(event_dict).decode()


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``logger``: the name given to ``structlog.get_logger(name)`` or the stdlib record's."""
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def _stdout_is_journal(stream: IO[Any], environ: MutableMapping[str, str]) -> bool:
    """``$JOURNAL_STREAM`` is ``device:inode`` of stdout when systemd connected it to journald."""
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{stat.st_dev}:{stat.st_ino}"


_FIRST_KEYS = ("timestamp", "level", "logger", "event")


def _order_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``timestamp``, ``level``, ``logger``, ``event`` first: lines read well with ``jq -c``."""
    ordered = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _priority_prefix(logger: WrappedLogger, method_name: str, line: Any) -> Any:
    prefix = f"<{_PRIORITY.get(method_name, 6)}>"
    if isinstance(line, bytes):
        return prefix.encode() + line
    return prefix + line


def _encode_line(logger: WrappedLogger, method_name: str, line: Any) -> Any:
    return line.encode() if isinstance(line, str) else line


class _TextAsBinary:
    """A binary ``write`` onto a text stream that has no ``buffer`` (e.g. ``io.StringIO``)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        return self._stream.write(data.decode())

    def flush(self) -> None:
        self._stream.flush()


class _PriorityFormatter(logging.Formatter):
    """Adds journald's ``<N>`` prefix to a stdlib record's rendered line."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        method = record.levelname.lower()
        return _priority_prefix(None, method, self._inner.format(record))  # type: ignore[no-any-return]


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Send structlog and stdlib logging to stdout as JSON lines or console lines.

    ``level``: ``debug``, ``info``, ``warning`` or ``error``. ``fmt``: ``json``, ``console``
    or ``auto`` (console on a terminal, JSON otherwise). Raises :class:`ValueError` for
    anything else. Idempotent; a later call replaces the configuration.
    """
    global _handler
    level_number = LEVELS.get(level.lower())
    if level_number is None:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    stream = sys.stdout
    is_tty = _isatty(stream)
    as_json = fmt == "json" or (fmt == "auto" and not is_tty)
    journal = as_json and _stdout_is_journal(stream, os.environ)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        timestamper,
    ]
    renderer: Processor
    stdlib_renderer: Processor
    if as_json:
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(
                show_locals=False, max_frames=20, use_rich=False
            )
        )
        shared.extend((tracebacks, _order_keys))
        renderer = structlog.processors.JSONRenderer(serializer=_json_bytes)
        stdlib_renderer = structlog.processors.JSONRenderer(serializer=_json_text)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=is_tty)
        stdlib_renderer = renderer

    processors: list[Processor] = [*shared, renderer]
    if not as_json:
        processors.append(_encode_line)
    if journal:
        processors.append(_priority_prefix)

    binary: Any = getattr(stream, "buffer", None) or _TextAsBinary(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        context_class=dict,
        logger_factory=structlog.BytesLoggerFactory(binary),
        cache_logger_on_first_use=False,
    )

    formatter: logging.Formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, stdlib_renderer],
    )
    if journal:
        formatter = _PriorityFormatter(formatter)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level_number)
    _handler = handler


def _isatty(stream: IO[Any]) -> bool:
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False
