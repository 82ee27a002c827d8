"""configure_logging: JSON lines with context, console on a terminal, stdlib routed, journald."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import structlog

from lbactors import logs
from lbactors.logs import configure_logging

log = structlog.get_logger("lbactors.test")  # module level, before any configuration


class Terminal(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


class Stdout(io.TextIOWrapper):
    """A stdout to log into; installed as ``sys.stdout`` by :meth:`install`.

    In the test body, not in the fixture: pytest's capture sets ``sys.stdout`` again
    between the setup and the call phases.
    """

    _monkeypatch: pytest.MonkeyPatch

    def install(self) -> Stdout:
        self._monkeypatch.setattr("sys.stdout", self)
        return self


@pytest.fixture
def stdout(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stdout]:
    """A fresh stdout for the test; logging back to structlog's defaults afterwards."""
    stream = Stdout(io.BytesIO(), encoding="utf-8", write_through=True)
    stream._monkeypatch = monkeypatch
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root_level = logging.getLogger().level
    yield stream
    if logs._handler is not None:
        logging.getLogger().removeHandler(logs._handler)
        logs._handler = None
    logging.getLogger().setLevel(root_level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(stream: io.TextIOWrapper) -> list[str]:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode().splitlines()


def records(stream: io.TextIOWrapper) -> list[dict]:
    return [json.loads(line) for line in lines(stream)]


def test_json_lines_carry_the_bound_context(stdout: Stdout) -> None:
    stdout.install()
    configure_logging("info", "json")
    structlog.contextvars.bind_contextvars(lb_id="lb-7")
    with structlog.contextvars.bound_contextvars(method="member_create", op_id="op-1"):
        log.info("operation done", took_ms=1.5, payload=object())
    log.debug("filtered out")
    log.warning("after the scope")
    first, second = records(stdout)
    assert first["event"] == "operation done"
    assert first["level"] == "info"
    assert first["logger"] == "lbactors.test"
    assert (first["lb_id"], first["method"], first["op_id"]) == ("lb-7", "member_create", "op-1")
    assert first["took_ms"] == 1.5
    assert first["payload"].startswith("<object object")  # unknown objects via repr
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)
    assert second["level"] == "warning" and second["lb_id"] == "lb-7"
    assert "op_id" not in second


def test_exceptions_are_structured_in_json(stdout: Stdout) -> None:
    stdout.install()
    configure_logging("info", "json")
    try:
        raise KeyError("missing-pool")
    except KeyError:
        log.exception("backend failed", lb_id="lb-1")
    (record,) = records(stdout)
    assert record["level"] == "error"
    (exception,) = record["exception"]
    assert exception["exc_type"] == "KeyError"
    assert "missing-pool" in exception["exc_value"]
    assert exception["frames"] and "locals" not in exception["frames"][0]


def test_stdlib_logging_goes_to_the_same_output(stdout: Stdout) -> None:
    stdout.install()
    configure_logging("info", "json")
    structlog.contextvars.bind_contextvars(worker=3)
    logging.getLogger("pamqp.frame").warning("odd frame %s", 42)
    logging.getLogger("pamqp.frame").debug("below the level")
    (record,) = records(stdout)
    assert record["event"] == "odd frame 42"
    assert record["logger"] == "pamqp.frame"
    assert record["level"] == "warning"
    assert record["worker"] == 3
    assert "timestamp" in record


def test_a_second_call_reconfigures_everything(stdout: Stdout) -> None:
    stdout.install()
    configure_logging("warning", "json")
    log.info("hidden")
    configure_logging("debug", "console")
    configure_logging("debug", "console")  # idempotent: still one stdlib handler
    log.debug("shown", lb_id="lb-2")
    logging.getLogger("other").info("from stdlib")
    out = lines(stdout)
    assert len(out) == 2
    assert "shown" in out[0] and "lb_id=lb-2" in out[0] and "debug" in out[0]
    assert "from stdlib" in out[1]
    assert not out[0].startswith("{")


def test_auto_is_console_on_a_terminal_and_json_otherwise(
    stdout: Stdout, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdout.install()
    configure_logging("info", "auto")
    log.info("piped")
    assert json.loads(lines(stdout)[0])["event"] == "piped"
    terminal = Terminal(io.BytesIO(), encoding="utf-8", write_through=True)
    monkeypatch.setattr("sys.stdout", terminal)
    configure_logging("info", "auto")
    log.info("on a terminal")
    (line,) = lines(terminal)
    assert "on a terminal" in line and not line.startswith("{")


def test_a_text_stream_without_buffer(monkeypatch: pytest.MonkeyPatch, stdout: Stdout) -> None:
    text = io.StringIO()
    monkeypatch.setattr("sys.stdout", text)
    configure_logging("info", "json")
    log.info("into a StringIO")
    assert json.loads(text.getvalue())["event"] == "into a StringIO"


def test_journald_priority_prefix_only_when_stdout_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdout: Stdout
) -> None:
    with open(tmp_path / "journal", "w+", encoding="utf-8") as journal:
        stat = os.fstat(journal.fileno())
        monkeypatch.setattr("sys.stdout", journal)
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        configure_logging("info", "json")
        log.error("bad")
        logging.getLogger("lib").warning("meh")
        log.info("fine")
        journal.flush()
        written = (tmp_path / "journal").read_text().splitlines()
    assert [line[:3] for line in written] == ["<3>", "<4>", "<6>"]
    assert json.loads(written[0][3:])["event"] == "bad"
    # inherited JOURNAL_STREAM but stdout redirected elsewhere: pure JSON
    stdout.install()
    configure_logging("info", "json")
    log.info("plain")
    assert lines(stdout)[0].startswith("{")


def test_invalid_level_or_format(stdout: Stdout) -> None:
    with pytest.raises(ValueError, match="loud"):
        configure_logging("loud")
    with pytest.raises(ValueError, match="xml"):
        configure_logging("info", "xml")
