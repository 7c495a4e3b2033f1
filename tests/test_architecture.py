"""The house's floors, read from the code's own imports (top level and inside functions alike).

core (`fraud/`, `schema/`) -> services and components -> the pipeline -> entry points (`fraudctl/`):
each floor imports only below it. A function-local import of a higher package is still an arrow up.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("fraud", "schema", "components", "serving", "kafka_bridge", "preprocessing", "monitoring", "warehouse",
           "pipeline", "fraudctl")
#: What each package may not import, at any depth of any module.
FORBIDDEN: dict[str, frozenset[str]] = {
    "fraud": frozenset(PROJECT) - {"fraud"},
    "schema": frozenset(PROJECT) - {"schema"},
    "components": frozenset({"pipeline", "fraudctl"}),
    "serving": frozenset({"pipeline", "components", "kafka_bridge", "preprocessing", "monitoring", "warehouse",
                          "fraudctl"}),
    "kafka_bridge": frozenset({"pipeline", "components", "serving", "preprocessing", "monitoring", "warehouse",
                               "fraudctl"}),
    "preprocessing": frozenset({"pipeline", "components", "serving", "kafka_bridge", "monitoring", "warehouse",
                                "fraudctl"}),
    "warehouse": frozenset({"pipeline", "components", "serving", "kafka_bridge", "preprocessing", "monitoring",
                            "fraudctl"}),
    "monitoring": frozenset({"pipeline", "components", "serving", "kafka_bridge", "preprocessing", "fraudctl"}),
    "pipeline": frozenset({"fraudctl"}),
    "bench": frozenset({"fraudctl"}),
    "chaos": frozenset({"fraudctl"}),  # runs `fraudctl` commands as processes, never imports them
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every absolute import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [(n, node.lineno, id(node) in top) for n in names]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package: str) -> None:
    arrows_up = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in _modules(package) for name, line, _ in imports_of(path)
                 if name.split(".")[0] in FORBIDDEN[package]]
    assert not arrows_up, "\n".join(arrows_up)


def test_no_import_cycle_between_modules() -> None:
    """Top-level imports between the project's modules form no cycle (function-local ones are checked by
    the floor rules above)."""
    modules = {_module_name(p): p for pkg in PROJECT for p in _modules(pkg)}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target, _, top in imports_of(path):
            if not top:
                continue
            # `from a.b import c` names either module a.b.c or an attribute of a.b
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module)


def test_no_sys_path_edits() -> None:
    edits = ("sys.path." + "insert", "sys.path." + "append")  # spelled apart so this file is not a match
    offenders = [str(p.relative_to(ROOT)) for pkg in (*PROJECT, "bench", "chaos", "tests", "scripts") for p in _modules(pkg)
                 if any(edit in p.read_text() for edit in edits)]
    assert not offenders, offenders
