"""scripts/mutate.py's mutant generator: the mutants it makes, and that each changes one node."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutate"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mutate = _load()

SNIPPET = '''\
"""Not mutated."""
__all__ = ["f"]
LIMIT = 3


def f(items: list[int], seen: dict[str, int], flag: bool = True) -> int:
    """Not mutated."""
    log.info("f", count=1)
    if not flag and len(items) < LIMIT:
        seen.pop("a", None)
        items.append(0)
    total = sum(sorted(items)) + 2
    label = "a" + str(total)  # pragma: no mutate
    return total if label != "é" else -1
'''

EXPECTED = [
    (3, "`3` -> `4`"),
    (6, "`True` -> `False`"),
    (9, "`and` -> `or`"),
    (9, "`not` removed"),
    (9, "`<` -> `<=`"),
    (10, "`.pop(` -> `.get(`"),
    (10, "statement deleted"),
    (11, "`0` -> `1`"),
    (11, "statement deleted"),
    (12, "`+` -> `-`"),
    (12, "`sorted(` in reverse order"),
    (12, "`2` -> `3`"),
    (14, "`!=` -> `==`"),
    (14, "`1` -> `2`"),
]


def _changed_nodes(a: ast.AST, b: ast.AST) -> int:
    """How many nodes differ between two trees (a differing node's children are not counted)."""
    if type(a) is not type(b):
        return 1
    changed = 0
    own = False
    for (_, x), (_, y) in zip(ast.iter_fields(a), ast.iter_fields(b), strict=True):
        if isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                own = True
                continue
            for xi, yi in zip(x, y, strict=True):
                if isinstance(xi, ast.AST) and isinstance(yi, ast.AST):
                    changed += _changed_nodes(xi, yi)
                elif xi != yi:
                    own = True
        elif isinstance(x, ast.AST) and isinstance(y, ast.AST):
            changed += _changed_nodes(x, y)
        elif x != y:
            own = True
    return changed + own


def test_the_snippet_gives_the_expected_mutants() -> None:
    mutants = mutate.generate("snippet.py", SNIPPET)
    assert sorted((m.lineno, m.description) for m in mutants) == sorted(EXPECTED)
    assert [m.lineno for m in mutants] == sorted(m.lineno for m in mutants)
    assert all(m.path == "snippet.py" for m in mutants)
    assert mutants[0].source_line == "LIMIT = 3"
    assert mutants[0].where == "snippet.py:3:9"


def test_the_column_is_counted_in_characters() -> None:
    (mutant,) = [
        m for m in mutate.generate("snippet.py", SNIPPET) if m.lineno == 14 and m.kind == "int"
    ]
    assert mutant.source_line[mutant.col - 5 :] == "1"  # the line is indented by four spaces


def test_annotations_docstrings_logging_and_all_are_left_alone() -> None:
    lines = {m.lineno for m in mutate.generate("snippet.py", SNIPPET)}
    assert not lines & {1, 2, 7, 8, 13}


def test_a_structs_kw_only_is_left_alone() -> None:
    source = (
        "class S(msgspec.Struct, kw_only=True, frozen=True):\n"
        "    x: int = 0\n"
        "T = msgspec.defstruct('T', [], kw_only=True)\n"
    )
    mutants = mutate.generate("m.py", source)
    assert [(m.description, m.source_line) for m in mutants] == [
        ("`True` -> `False`", "class S(msgspec.Struct, kw_only=True, frozen=True):"),
        ("`0` -> `1`", "x: int = 0"),
    ]
    assert "frozen=(False)" in mutate.apply(source, mutants[0])


def test_module_and_class_statements_are_not_deleted() -> None:
    source = "x = []\nx.append(1)\n\n\nclass C:\n    y = f()\n    z = [0]\n"
    kinds = {m.kind for m in mutate.generate("m.py", source)}
    assert "delete" not in kinds


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_applying_a_mutant_changes_exactly_one_node_and_one_line(index: int) -> None:
    mutant = mutate.generate("snippet.py", SNIPPET)[index]
    mutated = mutate.apply(SNIPPET, mutant)
    assert _changed_nodes(ast.parse(SNIPPET), ast.parse(mutated)) == 1
    before, after = SNIPPET.splitlines(), mutated.splitlines()
    assert len(before) == len(after)
    changed = [i + 1 for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
    assert changed == [mutant.lineno]


@pytest.mark.parametrize(
    ("line", "description", "expected"),
    [
        (9, "`and` -> `or`", "    if (not flag or len(items) < LIMIT):"),
        (9, "`not` removed", "    if (flag) and len(items) < LIMIT:"),
        (9, "`<` -> `<=`", "    if not flag and (len(items) <= LIMIT):"),
        (10, "`.pop(` -> `.get(`", "        (seen.get('a', None))"),
        (10, "statement deleted", "        pass"),
        (12, "`sorted(` in reverse order", "    total = sum((sorted(items, reverse=True))) + 2"),
        (14, "`1` -> `2`", '    return total if label != "é" else -(2)'),
    ],
)
def test_the_mutated_line(line: int, description: str, expected: str) -> None:
    (mutant,) = [
        m
        for m in mutate.generate("snippet.py", SNIPPET)
        if (m.lineno, m.description) == (line, description)
    ]
    assert mutate.apply(SNIPPET, mutant).splitlines()[line - 1] == expected


def test_reversed_becomes_iter_and_an_existing_reverse_flips() -> None:
    source = "def f(x):\n    return list(reversed(x)), sorted(x, reverse=True)\n"
    mutants = {m.description: m for m in mutate.generate("m.py", source)}
    assert sorted(mutants) == [
        "`True` -> `False`",
        "`reversed(x)` -> `iter(x)`",
        "`sorted(` in reverse order",
    ]
    assert "list((iter(x)))" in mutate.apply(source, mutants["`reversed(x)` -> `iter(x)`"])
    assert "reverse=not True" in mutate.apply(source, mutants["`sorted(` in reverse order"])


def test_string_concatenation_is_not_subtracted() -> None:
    source = 'def f(a, b):\n    return b"x" + a + b, a + 1\n'
    assert [m.description for m in mutate.generate("m.py", source)] == ["`+` -> `-`", "`1` -> `2`"]


@pytest.mark.parametrize("target", sorted(mutate.TARGETS))
def test_every_mutant_of_every_target_applies_to_its_own_node(target: str) -> None:
    source = (ROOT / target).read_text()
    mutants = mutate.generate(target, source)
    assert mutants
    for mutant in mutants:
        mutate.apply(source, mutant)  # re-parses the result: the mutated tree, nothing else


def test_every_target_has_test_files_that_exist() -> None:
    for target, tests in mutate.TARGETS.items():
        assert (ROOT / target).is_file()
        assert tests and all((ROOT / test).is_file() for test in tests)


def test_the_sample_is_deterministic_and_in_source_order() -> None:
    mutants = mutate.generate("snippet.py", SNIPPET)
    first = mutate.sample(mutants, 5, 0, "snippet.py")
    assert first == mutate.sample(mutants, 5, 0, "snippet.py")
    assert len(first) == 5 and first == [m for m in mutants if m in first]
    assert any(mutate.sample(mutants, 5, seed, "snippet.py") != first for seed in range(1, 5))
    assert mutate.sample(mutants, None, 0, "snippet.py") == mutants
    assert mutate.sample(mutants, 100, 0, "snippet.py") == mutants


def test_the_workspace_is_a_copy_and_a_hang_is_told_from_a_failure() -> None:
    before = (ROOT / "lbactors" / "routing.py").read_text()
    workspace = mutate.Workspace()
    try:
        assert workspace.dir != ROOT and workspace.resolves_here("lbactors/routing.py")
        workspace.write("lbactors/routing.py", before + "\nMUTATED = True\n")
        assert (ROOT / "lbactors" / "routing.py").read_text() == before
        workspace.write(
            "tests/test_zz_probe.py",
            "import time\n\n"
            "from lbactors import routing\n\n\n"
            "def test_mutated():\n    assert routing.MUTATED\n\n\n"
            "def test_fails():\n    assert False\n\n\n"
            "def test_sleeps():\n    time.sleep(60)\n",
        )
        probe = "tests/test_zz_probe.py::"
        assert workspace.run([probe + "test_mutated"], timeout=60)[0] == "passed"
        assert workspace.run([probe + "test_fails"], timeout=60)[0] == "failed"
        outcome, seconds = workspace.run([probe + "test_sleeps"], timeout=5)
        assert outcome == "hang" and seconds < 30
    finally:
        workspace.remove()
    assert not workspace.dir.exists()
    assert not (ROOT / "tests" / "test_zz_probe.py").exists()
