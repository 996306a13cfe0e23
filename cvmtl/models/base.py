"""The contract every multi-task model keeps (:class:`ArchModel`), ``fpn`` included.

An :class:`ArchModel` has ``heads`` (a ModuleDict holding every module only one task uses, which
is what fine-tuning trains and what ``task_parameters`` returns), ``tasks``, ``num_classes``,
``size_divisor``; ``forward(image) -> {task: prediction}`` (plus ``"aux"`` in training mode for
deep supervision), ``shared_parameters`` / ``task_parameters`` / ``regularization``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class ArchModel(nn.Module):
    """Base of the ``model.arch`` models (see the module docstring).

    Parameters outside ``heads`` are shared (every task's loss reaches them), those in
    ``heads[t]`` belong to task ``t`` alone. ``trunk`` modules (e.g. ``backbone=``, ``neck=``)
    are registered before the heads, in the order given; subclasses may also set them after.
    """

    arch = "?"

    def __init__(
        self, heads: dict[str, nn.Module], num_classes: int, size_divisor: int, **trunk: nn.Module
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError(f"model.arch={self.arch} needs at least one task")
        for name, module in trunk.items():
            self.add_module(name, module)
        self.heads = nn.ModuleDict(heads)
        self.tasks: list[str] = list(heads)
        self.num_classes = num_classes
        self.size_divisor = int(size_divisor)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the task heads (what all tasks' gradients flow through)."""
        own = {id(p) for p in self.heads.parameters()}
        return (p for p in self.parameters() if id(p) not in own)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters only ``task`` uses (``heads[task]``)."""
        if task not in self.heads:
            raise ValueError(f"unknown task {task!r} (model tasks: {', '.join(self.tasks)})")
        return self.heads[task].parameters()

    def regularization(self) -> torch.Tensor:
        """No soft-sharing penalty: 0."""
        return next(self.parameters()).new_zeros(())
