"""The ``cvmtl`` console command: ``cvmtl <command> [args ...]`` runs the same ``main(argv)`` as
``python tools/<command>.py [args ...]``.

A command's code is found, in this order, in the package module ``cvmtl.commands.<name>`` (where
the tools' logic is meant to live, so that a regular install has it) and in the ``tools/`` folder
of the checkout the package was imported from (an editable install or a source tree).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import cvmtl

# command -> module / file stem; the order is the order of ``cvmtl --help``
COMMANDS: dict[str, str] = {
    "train": "train",
    "eval": "eval",
    "visualize": "visualize",
    "infer": "infer",
    "export": "export",
    "benchmark": "benchmark",
    "affinity": "affinity",
    "make-synthetic": "make_synthetic",
    "prepare-nyuv2": "prepare_nyuv2",
}
COMMANDS_PACKAGE = "cvmtl.commands"
TOOLS_DIR = Path(cvmtl.__file__).resolve().parents[1] / "tools"


def locate(command: str) -> Path | None:
    """The source file of ``command`` (a ``cvmtl.commands`` module or ``tools/<stem>.py``)."""
    stem = COMMANDS[command]
    try:
        spec = importlib.util.find_spec(f"{COMMANDS_PACKAGE}.{stem}")
    except ModuleNotFoundError:  # no cvmtl.commands package (yet)
        spec = None
    if spec is not None and spec.origin:
        return Path(spec.origin)
    path = TOOLS_DIR / f"{stem}.py"
    return path if path.is_file() else None


def load(command: str) -> ModuleType:
    """Import ``command``'s module (without running its ``__main__`` block)."""
    path = locate(command)
    if path is None:
        raise LookupError(
            f"command {command!r} is not available in this installation "
            f"(no {COMMANDS_PACKAGE}.{COMMANDS[command]} and no {TOOLS_DIR / COMMANDS[command]}.py)"
        )
    if path.parent != TOOLS_DIR:  # found in the package
        return importlib.import_module(f"{COMMANDS_PACKAGE}.{COMMANDS[command]}")
    # a unique name: tools/eval.py must not shadow anything called ``eval`` in sys.modules
    spec = importlib.util.spec_from_file_location(f"cvmtl_tools_{COMMANDS[command]}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def summary(command: str) -> str:
    """The first line of the command's docstring, read without importing it (imports are slow)."""
    path = locate(command)
    if path is None:
        return "(not available in this installation)"
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, ValueError):
        return ""
    line = doc.strip().splitlines()[0].replace("``", "") if doc.strip() else ""
    return line if len(line) <= 78 else line[:77].rstrip() + "…"


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: cvmtl <command> [args ...]   (cvmtl <command> --help for a command's options)",
        "",
        "Multi-task dense prediction (segmentation, depth, normals) on timm backbones.",
        "",
        "commands:",
    ]
    lines += [f"  {c:<{width}}  {summary(c)}" for c in COMMANDS]
    lines += ["", "options:", "  -h, --help  show this help", "  --version   show the version"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"cvmtl {cvmtl.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"cvmtl: unknown command {command!r}{hint}; see 'cvmtl --help'", file=sys.stderr)
        return 2
    try:
        module = load(command)
    except LookupError as err:
        print(f"cvmtl: {err}", file=sys.stderr)
        return 2
    # argparse names the program after sys.argv[0]: make usage lines read "cvmtl train ..."
    saved = sys.argv
    sys.argv = [f"cvmtl {command}", *rest]
    try:
        status = module.main(rest)
    finally:
        sys.argv = saved
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
