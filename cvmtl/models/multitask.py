"""Multi-task models: hard sharing (one backbone + FPN, a head per task) and soft sharing.

Both pad the image bottom/right to a multiple of the backbone's largest stride and crop every
prediction back to the input size, so any input size works.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.models.backbone import TimmBackbone
from cvmtl.models.base import ArchModel
from cvmtl.models.exchange import TaskExchange
from cvmtl.models.neck import FPN, Levels, flatten_maps, unflatten_maps


def padded_size(size: Sequence[Any], divisor: int) -> tuple[int, int]:
    """The padded (H, W) of an input of ``size`` (as :func:`pad_to_multiple` pads it)."""
    h, w = int(size[0]), int(size[1])
    return (-(-h // divisor) * divisor, -(-w // divisor) * divisor)


def as_features(neck_out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The neck's output as one tensor: a fused map as is, pyramid levels flattened."""
    return neck_out if isinstance(neck_out, torch.Tensor) else flatten_maps(neck_out)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``image`` [B, C, H, W] bottom/right so H and W are multiples of ``multiple``.

    Size arithmetic only (no Python test of the sizes, no ``int()``), so tracing
    (``torch.export`` / ONNX with dynamic H, W, ``torch.jit.trace``) keeps it generic. The padded
    size is written as ``ceil(h / m) * m``: in that form a symbolic tracer can prove that the
    pyramid levels line up. A zero pad is still a (cheap) copy.
    """
    h, w = image.shape[-2], image.shape[-1]
    hp = (h + multiple - 1) // multiple * multiple
    wp = (w + multiple - 1) // multiple * multiple
    # zero = the dataset mean after normalization
    return F.pad(image, (0, wp - w, 0, hp - h))


class MultiTaskModel(ArchModel):
    """``model.arch: fpn`` with hard parameter sharing: ``backbone -> neck -> {task: head}``.

    The neck is shared (``model.neck_sharing``). ``pyramid`` (the default): it returns the FPN's
    levels and each head fuses them its own way (a Panoptic-FPN merge per task); ``all``: it
    also fuses them once into the stride-4 map every head reads; ``none``: it passes the
    backbone levels through and each head holds a whole FPN. ``forward_features`` returns the
    shared representation of the padded image (the levels flattened and concatenated, or the
    fused map): the exact input of everything task-specific, which gradient balancers with
    ``loss.grad_source=features`` differentiate. A model with one task is the single-task
    baseline: the same network, initialized alike, under every ``neck_sharing``.
    """

    arch = "fpn"

    def __init__(
        self,
        backbone: TimmBackbone,
        neck: FPN | Levels,
        heads: dict[str, nn.Module],
        num_classes: int,
        exchange: TaskExchange | None = None,
    ):
        super().__init__(heads, num_classes, backbone.size_divisor, backbone=backbone, neck=neck)
        self.feature_stride: int = neck.out_stride
        # registered after the heads: with it, the model's other modules are seeded as without
        self.exchange = exchange

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """The shared representation of the padded image: [B, sum_l C Hp/s_l Wp/s_l] (pyramid
        levels, flattened) or, with a shared fusion, the map [B, C, Hp/4, Wp/4]."""
        return as_features(self.neck(self.backbone(pad_to_multiple(image, self.size_divisor))))

    def forward_heads(
        self, features: torch.Tensor, size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """``{task: prediction}`` at ``size`` (the original (H, W)) from ``forward_features``."""
        shared: torch.Tensor | list[torch.Tensor] = features
        if self.neck.fuse is None:
            h, w = padded_size(size, self.size_divisor)
            shared = unflatten_maps(features, self.neck.shapes(h, w))
        return self._heads(shared, size)

    def _heads(
        self, shared: torch.Tensor | list[torch.Tensor], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        # ``size`` may hold traced sizes (``image.shape[-2:]``): it is only sliced with, never
        # turned into Python ints, so exported graphs crop to their input's size.
        if self.exchange is None:
            return {task: head(shared, size) for task, head in self.heads.items()}
        maps = self.exchange({task: head.fuse(shared) for task, head in self.heads.items()})
        return {task: head.decode(maps[task], size) for task, head in self.heads.items()}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.neck(self.backbone(pad_to_multiple(image, self.size_divisor)))
        return self._heads(shared, image.shape[-2:])

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Backbone, neck (and task exchange) parameters: what is not one task's own."""
        yield from self.backbone.parameters()
        yield from self.neck.parameters()
        if self.exchange is not None:
            yield from self.exchange.parameters()


_NO_SHARED = (
    "model.sharing=soft has no shared representation (forward_features / forward_heads): "
    "gradient-level balancers need model.sharing=hard"
)


class SoftSharingModel(nn.Module):
    """Soft parameter sharing: one single-task :class:`MultiTaskModel` (backbone + FPN + head) per
    task, tied by ``regularization() = soft_weight * sum_t ||theta_t - mean_t theta||^2`` over
    corresponding backbone and neck parameters.

    ``regularization()`` is already multiplied by ``soft_weight`` (the loss code adds it as is).
    Nothing is shared, so ``forward_features`` / ``forward_heads`` raise ValueError (gradient
    balancers need a shared representation) and ``shared_parameters()`` is empty.
    """

    def __init__(self, branches: dict[str, MultiTaskModel], soft_weight: float):
        super().__init__()
        if not branches:
            raise ValueError("SoftSharingModel needs at least one task")
        for task, branch in branches.items():
            if branch.tasks != [task]:
                raise ValueError(f"soft sharing: branch {task!r} must predict only {task!r}")
        self.branches = nn.ModuleDict(branches)
        self.tasks: list[str] = list(branches)
        self.num_classes = next(iter(branches.values())).num_classes
        self.soft_weight = float(soft_weight)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for branch in self.branches.values():
            out.update(branch(image))
        return out

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        raise ValueError(_NO_SHARED)

    def forward_heads(
        self, features: torch.Tensor, size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        raise ValueError(_NO_SHARED)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Empty: soft sharing shares no parameter."""
        return iter(())

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Every parameter of ``task``'s branch (its backbone, neck and head)."""
        if task not in self.branches:
            raise ValueError(f"unknown task {task!r} (model tasks: {', '.join(self.tasks)})")
        return self.branches[task].parameters()

    def regularization(self) -> torch.Tensor:
        """``soft_weight * sum_t ||theta_t - mean_t theta||^2`` over backbone + neck parameters."""
        branches = list(self.branches.values())
        first = branches[0]
        total = first.heads[first.tasks[0]].pred.weight.new_zeros((), dtype=torch.float32)
        if len(branches) < 2 or self.soft_weight == 0:
            return total
        per_branch = [dict(_shared_named(b)) for b in branches]
        for name, p0 in per_branch[0].items():
            if not p0.is_floating_point():
                continue
            stack = torch.stack([params[name].float() for params in per_branch])
            total = total + (stack - stack.mean(0, keepdim=True)).pow(2).sum()
        return self.soft_weight * total


def _shared_named(branch: MultiTaskModel) -> Iterator[tuple[str, nn.Parameter]]:
    yield from (("backbone." + n, p) for n, p in branch.backbone.named_parameters())
    yield from (("neck." + n, p) for n, p in branch.neck.named_parameters())
