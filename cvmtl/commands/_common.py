"""What the commands share: their usual arguments and one way of reporting a bad input."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from cvmtl.hostmem import keep_freed_memory


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the command's whole docstring, line breaks kept."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The trailing ``key=value`` config overrides every config-reading command accepts."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


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
