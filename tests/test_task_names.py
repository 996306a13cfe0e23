"""A task is defined once: no module outside ``cvmtl/tasks/`` names a built-in task, except the
readers and writers of on-disk formats (a format says which of its files holds which task)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cvmtl"
BUILT_IN = {"seg", "depth", "normal", "edge", "saliency", "parts", "disparity"}
# Modules that map a dataset's files to tasks (or render them): they name tasks by design.
FORMAT_MODULES = ("data/formats", "data/format_readers", "data/pascal_mt", "data/cityscapes",
                  "data/io", "data/synthetic")  # fmt: skip


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_no_task_name_outside_the_task_modules():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("tasks/") or rel.startswith(FORMAT_MODULES):
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in BUILT_IN
                and id(node) not in docs
            ):
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, "task names outside cvmtl/tasks/:\n" + "\n".join(found)
