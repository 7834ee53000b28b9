"""The house's floors: every import points down or across a floor, never up, and no import runs in a circle.

The floors are declared here, once (README's layout section describes them): a module belongs to the floor of
the longest prefix of its name below. The test walks every import of every module with `ast`, those inside
functions too; an import inside a function must say why, on its line or above its block of imports (a deferred
heavy dependency: torch, MLflow, Optuna, pandas, matplotlib, Ray), never to dodge a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cvae", "sweeps", "reports", "benchmarks")
FLOORS: tuple[tuple[str, ...], ...] = (
    ("cvae",),  # the trainer: config, data, model, trainer, tracking, its own commands
    ("sweeps.stats", "sweeps.boundary"),  # statistics: pure functions, no I/O
    ("sweeps",),  # the study: spec, outcomes, questions, decisions, plan, storage, workers, launchers
    ("reports", "benchmarks"),  # what reads a study: the report, the measurements
    ("reports.cli",),  # the `cvae` command, on top
)

# helpers


def modules() -> dict[str, Path]:
    """Every module of the packages: dotted name -> file."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def floor(module: str) -> int:
    """The floor of a module: that of the longest declared prefix of its name."""
    best, level = -1, -1
    for i, prefixes in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    assert level >= 0, f"{module} is on no floor: declare it in FLOORS"
    return level


def _block(lines: list[str], lineno: int) -> str:
    """The import statement's line and the contiguous run of import and comment lines above it: one comment
    can say why for a block of deferred imports."""
    i = lineno - 1
    while i > 0 and lines[i - 1].strip().startswith(("import ", "from ", "#")):
        i -= 1
    return "\n".join(lines[i:lineno])


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool, str]]:
    """(imported first-party module, line, inside a function, its block: the line and the imports above)."""
    lines = path.read_text().splitlines()
    tree = ast.parse(path.read_text())
    inner = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import sub` imports the submodule; `from pkg import name` the package
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.append((t, node.lineno, id(node) in inner, _block(lines, node.lineno)))
    return out


def graph() -> dict[str, list[tuple[str, int, bool, str]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


# the floors


def test_every_module_is_on_a_floor():
    for name in modules():
        floor(name)


def test_no_import_points_up_a_floor():
    up = [
        f"{m}:{line} imports {t} (floor {floor(t)} above {floor(m)})"
        for m, deps in graph().items()
        for t, line, _, _ in deps
        if floor(t) > floor(m)
    ]
    assert not up, "\n".join(up)


def test_no_import_runs_in_a_circle():
    edges = {m: sorted({t for t, *_ in deps}) for m, deps in graph().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in edges.get(m, []):
            if state.get(t) == 1:
                cycles.append(path[path.index(t) :] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_an_import_inside_a_function_says_why():
    silent = [
        f"{m}:{line} imports {t} inside a function without a comment"
        for m, deps in graph().items()
        for t, line, inner, text in deps
        if inner and "#" not in text
    ]
    assert not silent, "\n".join(silent)
