"""The imports inside ``cvmtl.data`` go one way (issue 17: dataset -> formats -> nyuv2 -> dataset
was a circle, closed by a function-level import in nyuv2.py).

The graph counts every import statement, including those inside functions: a lazy import hides
a circle from ``python -c "import ..."`` but not from the reader of the code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "cvmtl.data"
FOLDER = Path(__file__).resolve().parents[1] / "cvmtl" / "data"
MODULES = sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__")


def _imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """The cvmtl.data modules (short names) that ``tree`` imports anywhere in its body."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cvmtl.data import io` names a module; `from cvmtl.data.io import x` too.
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + ".") and name[len(PACKAGE) + 1 :] in modules:
                out.add(name[len(PACKAGE) + 1 :])
    return out


def import_graph() -> dict[str, set[str]]:
    modules = set(MODULES)
    return {
        m: _imported(ast.parse((FOLDER / f"{m}.py").read_text()), modules) - {m} for m in MODULES
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_the_old_circle():
    old = {"dataset": {"formats"}, "formats": {"nyuv2", "io"}, "nyuv2": {"io", "dataset"}}
    old["io"] = set()
    assert find_cycle(old) == ["dataset", "formats", "nyuv2", "dataset"]
    tree = ast.parse("def f():\n    from cvmtl.data.dataset import carve_ids\n")
    assert _imported(tree, {"dataset"}) == {"dataset"}  # a lazy import counts
    assert _imported(ast.parse("from cvmtl.data import io"), {"io"}) == {"io"}


def test_cvmtl_data_imports_are_acyclic():
    graph = import_graph()
    assert {"dataset", "formats", "nyuv2", "loader"} <= set(graph)
    assert "formats" in graph["dataset"] and "nyuv2" in graph["formats"]  # the graph is real
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in cvmtl.data: " + " -> ".join(cycle)


def test_each_data_module_imports_alone():
    """Each module in a fresh interpreter (all at once: the torch imports take seconds)."""
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import {PACKAGE}.{m}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for m in MODULES
    }
    failed = {}
    for m, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            failed[m] = out.strip().splitlines()[-1:]
    assert not failed, failed
