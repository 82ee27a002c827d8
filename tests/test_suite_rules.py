"""Rules the test suite keeps, checked on its own source.

Every trio test that waits for anything runs under ``trio.fail_after``: a test whose code
under test deadlocks then fails (at once under the autojump clock, whose time jumps to the
deadline) instead of hanging the suite for minutes.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _awaits(node: ast.AST) -> bool:
    return any(
        isinstance(child, ast.Await | ast.AsyncWith | ast.AsyncFor) for child in ast.walk(node)
    )


def _has_deadline(node: ast.AST) -> bool:
    return any(
        isinstance(child, ast.Attribute) and child.attr == "fail_after" for child in ast.walk(node)
    )


def test_every_trio_test_that_waits_has_a_deadline() -> None:
    missing = [
        f"{path.name}:{node.lineno} {node.name}"
        for path in sorted(TESTS.glob("test_*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and _awaits(node)
        and not _has_deadline(node)
    ]
    assert not missing, "trio tests without trio.fail_after:\n" + "\n".join(missing)
