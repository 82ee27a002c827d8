#!/usr/bin/env python3
"""Mutation testing of the pure core and the router: does a test fail when the code is wrong?

A small mutant generator of our own (no dependency: mutmut 3 wants its own set-up and is slow
here). Each target module is parsed with :mod:`ast`; every mutant is one small, realistic
change to one node:

- a comparison operator: ``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``,
  ``is`` <-> ``is not``, ``in`` <-> ``not in``;
- ``and`` <-> ``or``; ``+`` <-> ``-``;
- an integer constant off by one (``n`` -> ``n + 1``); ``True`` <-> ``False``;
- a ``not`` removed;
- ``.pop(key, ...)`` -> ``.get(key, ...)`` (a call with arguments: a mapping's pop);
- ``sorted(...)`` in the other order (``reverse=`` added or flipped), ``reversed(x)`` -> ``iter(x)``;
- one statement of a function body deleted (replaced by ``pass``): a call or ``await`` for its
  effect (an ``append``, a ``send``...), a ``del``, an augmented assignment, an assignment to an
  attribute or an item. Never a ``return``, a ``raise`` or control flow.

Not mutated: annotations, docstrings, f-strings, ``__all__``, logging calls (``log.*`` and
``logger.*``: what they say is not behaviour), ``kw_only=`` (every Struct is built with
keywords: an equivalent mutant), module- and class-level statements (deleting one is an
import error, killed by any test), and any line marked ``# pragma: no mutate``.

Each mutant is applied to a copy of the tree (``lbactors/``, ``supervisor/``, ``bench/``,
``tests/``, ``pyproject.toml``, in a temporary directory: the worktree is never modified), and
the target's test files run there: ``python -m pytest -x -q -p no:cacheprovider -m "not octavia"
--hypothesis-seed=0``, fastest file first. A failing run kills the mutant; a run past the
per-mutant timeout is killed too, but reported as a *hang*; a passing run is a *survivor*.
Before the mutants, the unmutated copy runs once (its tests must pass, and its time sets the
default timeout).

    scripts/mutate.py                                   # every target, every mutant
    scripts/mutate.py --target lbactors/routing.py --list
    scripts/mutate.py --max-mutants 20 --seed 1 --jobs 2

The report (command, date, commit, score per module, survivors with their source line) is
printed and written to ``docs/mutation.md`` (``--output``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import datetime
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: target module -> its test files (the tests that import it, or drive it: the router is only
#: exercised through the daemon, in a subprocess). Files with the real Octavia are left out.
TARGETS: dict[str, tuple[str, ...]] = {
    "lbactors/status.py": (
        "tests/test_status.py",
        "tests/test_cascade.py",
        "tests/test_dispatch.py",
        "tests/test_deadlines.py",
    ),
    "lbactors/cascade.py": (
        "tests/test_cascade.py",
        "tests/test_status.py",
        "tests/test_dispatch.py",
        "tests/test_deadlines.py",
    ),
    "lbactors/routing.py": ("tests/test_routing.py",),
    "lbactors/messages.py": (
        "tests/test_messages.py",
        "tests/test_routing.py",
        "tests/test_status.py",
        "tests/test_ipc.py",
        "tests/test_oslo_codec.py",
    ),
    "lbactors/model.py": (
        "tests/test_model_bounds.py",
        "tests/test_messages.py",
        "tests/test_status.py",
        "tests/test_cascade.py",
        "tests/test_haproxy_render.py",
    ),
    "lbactors/amqp/oslo.py": (
        "tests/test_oslo_codec.py",
        "tests/test_gateway_settle.py",
        "tests/test_bad_input.py",
    ),
    "supervisor/router.py": (
        "tests/test_router.py",
        "tests/test_daemon.py",
    ),
}

#: copied into the scratch tree (the tests import ``tests.*`` and ``bench.*``)
COPIED = ("lbactors", "supervisor", "bench", "tests", "pyproject.toml", "conftest.py")

PYTEST_ARGS = (
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
    "-m",
    "not octavia",
    "--hypothesis-seed=0",
)

PRAGMA = "pragma: no mutate"
LOGGERS = frozenset({"log", "logger", "_log", "structlog", "logging"})

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BOOL_SWAPS: dict[type[ast.boolop], type[ast.boolop]] = {ast.And: ast.Or, ast.Or: ast.And}
_BIN_SWAPS: dict[type[ast.operator], type[ast.operator]] = {ast.Add: ast.Sub, ast.Sub: ast.Add}
_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.And: "and",
    ast.Or: "or",
    ast.Add: "+",
    ast.Sub: "-",
}


# ---------------------------------------------------------------------------- the generator


@dataclass(frozen=True)
class Mutant:
    """One change to one node: ``node`` indexes ``ast.walk(tree)`` of the unmutated module."""

    path: str
    node: int
    kind: str  # compare, boolop, binop, int, bool, not, pop, sorted, reversed, delete
    index: int  # which operator of a comparison chain (0 otherwise)
    description: str
    lineno: int
    col: int  # 1-based, in characters: of the changed node (a comparison: its right-hand side)
    source_line: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}:{self.col}"


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes never mutated (annotations, docstrings, f-strings, logging, __all__)."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.FunctionDef | ast.AsyncFunctionDef):
            skip(node.annotation if isinstance(node, ast.arg) else node.returns)
        elif isinstance(node, ast.AnnAssign):
            skip(node.annotation)
            if isinstance(node.target, ast.Name) and node.target.id == "__all__":
                skip(node)
        elif isinstance(node, ast.JoinedStr):
            skip(node)
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                skip(node)
        elif isinstance(node, ast.Call) and _is_logging(node):
            skip(node)
        elif isinstance(node, ast.keyword) and node.arg == "kw_only":
            skip(node)  # equivalent: every Struct is built with keywords
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip(body[0])
    return skipped


def _is_logging(call: ast.Call) -> bool:
    func = call.func
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in LOGGERS


def _deletable_statements(tree: ast.Module) -> set[int]:
    """ids of the statements of function bodies that may be deleted."""
    deletable: set[int] = set()
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for function in functions:
        for node in ast.walk(function):
            for name in ("body", "orelse", "finalbody"):
                block = getattr(node, name, None)
                if not isinstance(block, list):  # a lambda's or an if expression's body
                    continue
                for stmt in block:
                    if isinstance(stmt, ast.stmt) and _deletable(stmt):
                        deletable.add(id(stmt))
    return deletable


def _deletable(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Expr):
        value = stmt.value
        return isinstance(value, ast.Await) or (
            isinstance(value, ast.Call) and not _is_logging(value)
        )
    if isinstance(stmt, ast.Delete | ast.AugAssign):
        return True
    if isinstance(stmt, ast.Assign):
        return all(isinstance(t, ast.Attribute | ast.Subscript) for t in stmt.targets)
    if isinstance(stmt, ast.AnnAssign):
        return stmt.value is not None and isinstance(stmt.target, ast.Attribute | ast.Subscript)
    return False


def _concatenates(node: ast.BinOp) -> bool:
    """Whether a chain of ``+`` and ``-`` has a string, bytes or sequence literal in it."""
    sides: list[ast.expr] = [node]
    while sides:
        side = sides.pop()
        if isinstance(side, ast.BinOp) and isinstance(side.op, ast.Add | ast.Sub):
            sides += (side.left, side.right)
        elif isinstance(side, ast.JoinedStr | ast.List | ast.Tuple | ast.ListComp):
            return True
        elif isinstance(side, ast.Constant) and isinstance(side.value, str | bytes):
            return True
    return False


def _call_name(call: ast.Call) -> str | None:
    return call.func.id if isinstance(call.func, ast.Name) else None


def _candidates(node: ast.AST, deletable: set[int]) -> Iterator[tuple[str, int, str]]:
    """``(kind, index, description)`` for every mutant of ``node`` itself."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is not None:
                yield "compare", i, f"`{_SYMBOLS[type(op)]}` -> `{_SYMBOLS[swap]}`"
    elif isinstance(node, ast.BoolOp):
        bool_swap = _BOOL_SWAPS[type(node.op)]
        yield "boolop", 0, f"`{_SYMBOLS[type(node.op)]}` -> `{_SYMBOLS[bool_swap]}`"
    elif isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub):
        # not on strings, bytes or sequences: ``+`` concatenates them
        if not _concatenates(node):
            bin_swap = _BIN_SWAPS[type(node.op)]
            yield "binop", 0, f"`{_SYMBOLS[type(node.op)]}` -> `{_SYMBOLS[bin_swap]}`"
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            yield "bool", 0, f"`{node.value}` -> `{not node.value}`"
        elif isinstance(node.value, int):
            yield "int", 0, f"`{node.value}` -> `{node.value + 1}`"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not", 0, "`not` removed"
    elif isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute) and node.func.attr == "pop" and node.args:
            yield "pop", 0, "`.pop(` -> `.get(`"
        elif _call_name(node) == "sorted":
            yield "sorted", 0, "`sorted(` in reverse order"
        elif _call_name(node) == "reversed" and len(node.args) == 1:
            yield "reversed", 0, "`reversed(x)` -> `iter(x)`"
    if id(node) in deletable:
        yield "delete", 0, "statement deleted"


def generate(path: str, source: str) -> list[Mutant]:
    """Every mutant of the module ``path`` whose text is ``source``, in source order."""
    tree = ast.parse(source)
    lines = source.splitlines()
    skipped = _skipped_nodes(tree)
    deletable = _deletable_statements(tree)
    mutants = []
    for number, node in enumerate(ast.walk(tree)):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        line = lines[node.lineno - 1]
        if PRAGMA in line:
            continue
        for kind, index, description in _candidates(node, deletable):
            assert isinstance(node, ast.expr | ast.stmt)
            at = node.comparators[index] if isinstance(node, ast.Compare) else node
            text = lines[at.lineno - 1]
            # the column in characters (``col_offset`` counts UTF-8 bytes)
            col = len(text.encode()[: at.col_offset].decode(errors="replace")) + 1
            mutants.append(
                Mutant(path, number, kind, index, description, at.lineno, col, text.strip())
            )
    mutants.sort(key=lambda m: (m.lineno, m.col, m.node, m.index, m.kind))
    return mutants


def _mutate(node: ast.AST, mutant: Mutant) -> ast.AST:
    """The node that replaces ``node`` (``node`` itself, changed, or a new one)."""
    kind = mutant.kind
    if kind == "compare":
        assert isinstance(node, ast.Compare)
        node.ops[mutant.index] = _COMPARE_SWAPS[type(node.ops[mutant.index])]()
    elif kind == "boolop":
        assert isinstance(node, ast.BoolOp)
        node.op = _BOOL_SWAPS[type(node.op)]()
    elif kind == "binop":
        assert isinstance(node, ast.BinOp)
        node.op = _BIN_SWAPS[type(node.op)]()
    elif kind == "bool":
        assert isinstance(node, ast.Constant)
        node.value = not node.value
    elif kind == "int":
        assert isinstance(node, ast.Constant) and isinstance(node.value, int)
        node.value = node.value + 1
    elif kind == "not":
        assert isinstance(node, ast.UnaryOp)
        return node.operand
    elif kind == "pop":
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        node.func.attr = "get"
    elif kind == "sorted":
        assert isinstance(node, ast.Call)
        for keyword in node.keywords:
            if keyword.arg == "reverse":
                keyword.value = ast.UnaryOp(op=ast.Not(), operand=keyword.value)
                break
        else:
            node.keywords.append(ast.keyword(arg="reverse", value=ast.Constant(value=True)))
    elif kind == "reversed":
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        node.func.id = "iter"
    elif kind == "delete":
        assert isinstance(node, ast.stmt)
        return ast.Pass()
    else:
        raise ValueError(f"unknown mutation {kind!r}")
    return node


def mutated_tree(source: str, mutant: Mutant) -> tuple[ast.Module, ast.AST, ast.AST]:
    """``(tree, original node, replacement)``: the module with ``mutant`` applied."""
    tree = ast.parse(source)
    parents: dict[int, tuple[ast.AST, str, int | None]] = {}
    target: ast.AST | None = None
    for number, node in enumerate(ast.walk(tree)):
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        parents[id(child)] = (node, name, i)
            elif isinstance(value, ast.AST):
                parents[id(value)] = (node, name, None)
        if number == mutant.node:
            target = node
    assert target is not None, f"{mutant.where}: no node {mutant.node}"
    original = copy.deepcopy(target)
    replacement = _mutate(target, mutant)
    if replacement is not target:
        parent, field_name, position = parents[id(target)]
        if position is None:
            setattr(parent, field_name, replacement)
        else:
            getattr(parent, field_name)[position] = replacement
    return tree, original, replacement


def apply(source: str, mutant: Mutant) -> str:
    """``source`` with ``mutant`` applied: only the span of the changed node is rewritten (the
    rest of the file, comments and line numbers included, stays as it was)."""
    tree, original, replacement = mutated_tree(source, mutant)
    if isinstance(replacement, ast.stmt):
        text = ast.unparse(replacement)
    else:
        text = f"({ast.unparse(replacement)})"
    assert isinstance(original, ast.expr | ast.stmt)
    assert original.end_lineno is not None and original.end_col_offset is not None
    raw = source.encode()
    lines = raw.splitlines(keepends=True)

    def offset(lineno: int, col: int) -> int:  # columns are counted in UTF-8 bytes
        return sum(len(line) for line in lines[: lineno - 1]) + col

    start = offset(original.lineno, original.col_offset)
    end = offset(original.end_lineno, original.end_col_offset)
    result = (raw[:start] + text.encode() + raw[end:]).decode()
    if ast.dump(ast.parse(result)) != ast.dump(tree):
        raise AssertionError(f"{mutant.where}: the spliced source is not the mutated tree")
    return result


# ---------------------------------------------------------------------------- the runner


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed, hang, survived
    seconds: float


@dataclass
class TargetReport:
    path: str
    tests: tuple[str, ...]
    generated: int
    baseline_seconds: float = 0.0
    timeout: float = 0.0
    results: list[Result] = field(default_factory=list)
    error: str | None = None

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)

    @property
    def score(self) -> float | None:
        if not self.results:
            return None
        return (self.count("killed") + self.count("hang")) / len(self.results)


class Workspace:
    """A scratch copy of the tree where one mutant at a time is applied."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lbactors-mutate-"))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "results")
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, self.dir / name, ignore=ignore)
            elif src.exists():
                shutil.copy2(src, self.dir / name)

    def write(self, path: str, text: str) -> None:
        file = self.dir / path
        file.write_text(text)
        # a cached .pyc of the same size and mtime (the same second) would hide the change
        for pyc in (file.parent / "__pycache__").glob(f"{file.stem}.*.pyc"):
            pyc.unlink()

    def run(self, tests: Sequence[str], timeout: float) -> tuple[str, float]:
        """``(outcome, seconds)``: ``passed``, ``failed`` or ``hang``."""
        shutil.rmtree(self.dir / ".hypothesis", ignore_errors=True)
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        start = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a hang is killed with its children
        )
        try:
            rc = process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "hang", time.monotonic() - start
        finally:
            # the daemons and workers a test started, if it left any
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        return ("passed" if rc == 0 else "failed"), time.monotonic() - start

    def resolves_here(self, path: str) -> bool:
        """Whether ``python -m pytest`` in the copy imports the copy's ``path``."""
        module = path.removesuffix(".py").replace("/", ".")
        out = subprocess.run(
            [sys.executable, "-c", f"import {module} as m; print(m.__file__)"],
            cwd=self.dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return Path(out).resolve() == (self.dir / path).resolve()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def sample(mutants: list[Mutant], limit: int | None, seed: int, path: str) -> list[Mutant]:
    """A deterministic sample of at most ``limit`` mutants (all of them without a limit)."""
    if limit is None or len(mutants) <= limit:
        return mutants
    chosen = random.Random(f"{seed}:{path}").sample(mutants, limit)
    return sorted(chosen, key=mutants.index)


def ordered_tests(tests: Sequence[str], durations: dict[str, float]) -> list[str]:
    return sorted(tests, key=lambda t: durations.get(t, 0.0))


def run_target(
    path: str,
    mutants: list[Mutant],
    tests: Sequence[str],
    workspaces: list[Workspace],
    timeout: float | None,
    generated: int,
    progress: Callable[[str], None],
) -> TargetReport:
    report = TargetReport(path, tuple(tests), generated)
    source = (ROOT / path).read_text()
    main = workspaces[0]
    if not main.resolves_here(path):
        report.error = "the copy's tests do not import the copy's module (check sys.path)"
        return report
    # the baseline: each test file alone (for its time, to run the fastest first), unmutated
    durations: dict[str, float] = {}
    for test in tests:
        outcome, seconds = main.run([test], timeout=600)
        if outcome != "passed":
            report.error = f"the unmutated tests fail ({test}: {outcome})"
            return report
        durations[test] = seconds
    tests = ordered_tests(tests, durations)
    report.tests = tuple(tests)
    report.baseline_seconds = sum(durations.values())
    report.timeout = timeout or round(2 * report.baseline_seconds + 10, 1)
    progress(
        f"{path}: {len(mutants)} of {generated} mutants; tests {', '.join(tests)}; "
        f"baseline {report.baseline_seconds:.1f} s, timeout {report.timeout:.0f} s"
    )

    free = list(workspaces)
    lock = threading.Lock()
    done = 0

    def one(mutant: Mutant) -> Result:
        nonlocal done
        with lock:
            workspace = free.pop()
        try:
            workspace.write(path, apply(source, mutant))
            outcome, seconds = workspace.run(tests, report.timeout)
        finally:
            workspace.write(path, source)
            with lock:
                free.append(workspace)
        result = Result(
            mutant, {"failed": "killed", "passed": "survived"}.get(outcome, outcome), seconds
        )
        with lock:
            done += 1
            progress(
                f"  [{done}/{len(mutants)}] {mutant.where} {mutant.description}: "
                f"{result.outcome} ({seconds:.1f} s)"
            )
        return result

    with ThreadPoolExecutor(max_workers=len(workspaces)) as pool:
        report.results = list(pool.map(one, mutants))
    return report


# ---------------------------------------------------------------------------- the report


def render(reports: list[TargetReport], command: str, seconds: float, options: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "lbactors", "supervisor", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    out = [
        "# Mutation testing",
        "",
        "Written by `scripts/mutate.py` (`make mutate`); see its docstring for the mutations and",
        "what is left alone. A mutant is *killed* when its tests fail, a *hang* when they run past",
        "the timeout (counted as killed), a *survivor* when they pass: a change to the code no",
        "test notices.",
        "",
        f"- command: `{command}`",
        f"- date: {now}; commit `{commit}`{' (with uncommitted changes)' if dirty else ''}",
        f"- {options}",
        f"- runtime: {seconds / 60:.1f} min",
        "",
        "| module | mutants (of) | killed | hang | survived | score | tests (fastest first) | baseline | timeout |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in reports:
        tests = ", ".join(Path(t).name for t in r.tests)
        if r.error:
            out.append(f"| `{r.path}` | - ({r.generated}) | | | | error: {r.error} | {tests} | | |")
            continue
        score = "-" if r.score is None else f"{100 * r.score:.0f} %"
        out.append(
            f"| `{r.path}` | {len(r.results)} ({r.generated}) | {r.count('killed')} | "
            f"{r.count('hang')} | {r.count('survived')} | {score} | {tests} | "
            f"{r.baseline_seconds:.0f} s | {r.timeout:.0f} s |"
        )
    total = [res for r in reports for res in r.results]
    if total:
        killed = sum(res.outcome != "survived" for res in total)
        out.append(
            f"| **all** | {len(total)} | | | {len(total) - killed} | "
            f"**{100 * killed / len(total):.0f} %** | | | |"
        )
    out += ["", "## Survivors", ""]
    for r in reports:
        survivors = [res.mutant for res in r.results if res.outcome == "survived"]
        if not survivors:
            continue
        out += [f"### `{r.path}`", ""]
        for m in survivors:
            out.append(f"- `{m.where}` {m.description}: `{m.source_line}`")
        out.append("")
    hangs = [res.mutant for r in reports for res in r.results if res.outcome == "hang"]
    if hangs:
        out += ["## Hangs (killed by the timeout)", ""]
        out += [f"- `{m.where}` {m.description}: `{m.source_line}`" for m in hangs]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--target",
        action="append",
        metavar="FILE",
        help=f"a module to mutate (repeatable; default: all of {', '.join(TARGETS)})",
    )
    parser.add_argument(
        "--max-mutants",
        action="append",
        default=[],
        metavar="[FILE=]N",
        help="at most N mutants per module, a deterministic sample (see --seed); FILE=N for one "
        "module (repeatable: '--max-mutants 20 --max-mutants supervisor/router.py=6')",
    )
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="mutants run at once, each in its own copy (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds per mutant before it counts as a hang (default: 2 x the baseline + 10)",
    )
    parser.add_argument("--list", action="store_true", help="only print the mutants")
    parser.add_argument(
        "--output",
        default="docs/mutation.md",
        help="the Markdown report, relative to the repository ('-': none; default docs/mutation.md)",
    )
    args = parser.parse_args(argv)

    targets = args.target or list(TARGETS)
    for target in targets:
        if target not in TARGETS:
            parser.error(f"unknown target {target!r}: one of {', '.join(TARGETS)}")
    limit: int | None = None
    limits: dict[str, int] = {}
    for value in args.max_mutants:
        target, _, number = value.rpartition("=")
        if not number.isdigit() or (target and target not in TARGETS):
            parser.error(f"--max-mutants {value!r}: N or FILE=N with FILE one of the targets")
        if target:
            limits[target] = int(number)
        else:
            limit = int(number)
    chosen: dict[str, tuple[list[Mutant], int]] = {}
    for target in targets:
        mutants = generate(target, (ROOT / target).read_text())
        chosen[target] = (
            sample(mutants, limits.get(target, limit), args.seed, target),
            len(mutants),
        )

    if args.list:
        for target, (mutants, generated) in chosen.items():
            print(f"# {target}: {len(mutants)} of {generated} mutants")
            for m in mutants:
                print(f"{m.where}: {m.description}: {m.source_line}")
        return 0

    command = "scripts/mutate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sizes = ", ".join(f"{Path(t).name} {n}" for t, n in limits.items() if t in targets)
    options = (
        f"sample: {limit or 'all'} mutants per module{f' ({sizes})' if sizes else ''}, "
        f"seed {args.seed}; "
        f"jobs {args.jobs}; timeout {args.timeout or '2 x baseline + 10 s'}"
    )
    start = time.monotonic()
    workspaces = [Workspace() for _ in range(max(1, args.jobs))]
    reports = []
    try:
        for target, (mutants, generated) in chosen.items():
            reports.append(
                run_target(
                    target,
                    mutants,
                    TARGETS[target],
                    workspaces,
                    args.timeout,
                    generated,
                    lambda line: print(line, flush=True),
                )
            )
            if reports[-1].error:
                print(f"{target}: {reports[-1].error}", flush=True)
    finally:
        for workspace in workspaces:
            workspace.remove()
    text = render(reports, command.strip(), time.monotonic() - start, options)
    print()
    print(text)
    if args.output != "-":
        (ROOT / args.output).write_text(text)
    return 1 if any(r.error for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
