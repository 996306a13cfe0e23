"""BatchNorm statistics that a batch must not leave behind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class BufferGuard:
    """A copy of the model's buffers (BatchNorm running statistics) taken before each batch, so
    that a skipped (non-finite) batch can be undone: its statistics would poison evaluation."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.buffers]

    def snapshot(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Run a forward pass whose BatchNorm statistics updates are undone afterwards."""
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        if buffers:
            torch._foreach_copy_(buffers, saved)
