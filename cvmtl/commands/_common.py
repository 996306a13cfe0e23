"""What the commands share: their usual arguments and one way of reporting a bad input."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cvmtl.hostmem import keep_freed_memory

# ``a.b=value``: what load_config takes as an override (a dotted key of identifiers, then "=")
OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")


def looks_like_override(token: str) -> bool:
    """True for ``key=value`` (``train.lr=1e-3``) that names no existing file or folder."""
    return OVERRIDE.match(token) is not None and not Path(token).exists()


class CommandParser(argparse.ArgumentParser):
    """Every command's parser: ``key=value`` overrides may come anywhere among the flags
    (``--config C a=b --iters 5 c=d``), in the order given; an unknown flag stays an error.

    ``parse_args`` is argparse's ``parse_intermixed_args``: the flags are parsed first, then the
    positional words left between them, wherever they stood. One more rule: an option whose
    value is optional (``--resume [RUN_DIR]``) does not take a ``key=value`` word after it as
    its value (unless a file of that name exists): that word is an override.
    """

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        return self.parse_intermixed_args(self._unhook_overrides(argv), namespace)

    def _unhook_overrides(self, argv: list[str]) -> list[str]:
        """Move the ``key=value`` words that follow an optional-value flag in front of that
        flag: the positionals keep their order, and the flag is left without a value."""
        optional = {
            s for a in self._actions if a.nargs == argparse.OPTIONAL for s in a.option_strings
        }
        out: list[str] = []
        i = 0
        while i < len(argv):
            word = argv[i]
            if word == "--":
                return out + argv[i:]
            end = i + 1
            if word in optional:
                while end < len(argv) and looks_like_override(argv[end]):
                    end += 1
            out += [*argv[i + 1 : end], word]
            i = end
        return out


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the command's whole docstring, line breaks kept, and that
    takes ``key=value`` overrides anywhere among the flags (:class:`CommandParser`)."""
    return CommandParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The ``key=value`` config overrides every config-reading command accepts (anywhere among
    the flags: see :class:`CommandParser`)."""
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides (anywhere)"
    )


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--amp`` of the commands that run a checkpoint."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--amp",
        default=None,
        choices=["auto", "none", "bf16", "fp16"],
        help="default: the checkpoint's train.amp; auto = bf16 where the hardware has it, "
        "fp16 on older CUDA GPUs, else fp32 (none)",
    )


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (``--batches 0`` is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line. An error raised in a DataLoader worker comes back with
    the worker's traceback in its message; its last line is the original error."""
    text = str(err).strip() or type(err).__name__
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]  # drop "cvmtl.data.io.DataError: "
    return " ".join(text.split())


def fail(err: BaseException | str, status: int = 2) -> int:
    """Print ``error: <one line>`` on stderr and return ``status``."""
    message = err if isinstance(err, str) else one_line(err)
    print(f"error: {message}", file=sys.stderr)
    return status


def run_main(body: Callable[..., int | None], *args: Any) -> int:
    """``body(*args)`` as an exit status. A bad input or a failed write (``ValueError``, which
    includes ``ConfigError`` and ``DataError``, or ``OSError``) becomes one ``error: ...`` line on
    stderr and status 2; with ``CVMTL_TRACEBACK=1`` in the environment the exception goes through.
    First, on glibc, the process keeps freed memory for reuse (:mod:`cvmtl.hostmem`).
    """
    keep_freed_memory()
    try:
        status = body(*args)
    except (ValueError, OSError) as err:
        if os.environ.get("CVMTL_TRACEBACK"):
            raise
        return fail(err)
    return 0 if status is None else int(status)
