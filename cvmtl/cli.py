"""The ``cvmtl`` console command: ``cvmtl <command> [args ...]`` runs the same ``main(argv)`` as
``python tools/<command>.py [args ...]``.

A command's code is the package module ``cvmtl.commands.<name>``, so a regular (non-editable)
install has every command; ``tools/<name>.py`` in a checkout is a shim that imports it.
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
    "class-weights": "class_weights",
    "demo": "demo",
    "compare-balancers": "compare_balancers",
    "compare-smp": "compare_smp",
    "sweep": "sweep",
}
COMMANDS_PACKAGE = "cvmtl.commands"


def locate(command: str) -> Path | None:
    """The source file of ``command``'s module, found without importing it."""
    try:
        spec = importlib.util.find_spec(f"{COMMANDS_PACKAGE}.{COMMANDS[command]}")
    except ModuleNotFoundError:  # no commands package at all
        spec = None
    return Path(spec.origin) if spec is not None and spec.origin else None


def load(command: str) -> ModuleType:
    """Import ``command``'s module (without running its ``__main__`` block)."""
    name = f"{COMMANDS_PACKAGE}.{COMMANDS[command]}"
    if locate(command) is None:
        raise LookupError(f"command {command!r} is not available in this installation (no {name})")
    return importlib.import_module(name)


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
