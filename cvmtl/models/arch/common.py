"""Pieces every ``model.arch`` shares: the model contract (:class:`ArchModel`), a task head at
any stride (:class:`StrideHead`), flattening of multi-map representations and a small conv.

An :class:`ArchModel` keeps the attributes the rest of cvmtl relies on: ``backbone``, ``neck``
(possibly empty) and ``heads`` (a ModuleDict holding every module only one task uses, which is
what fine-tuning trains and what ``task_parameters`` returns), ``tasks``, ``num_classes``,
``size_divisor``; ``forward(image) -> {task: prediction}`` (plus ``"aux"`` in training mode for
deep supervision), ``shared_parameters`` / ``task_parameters`` / ``regularization``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.models.backbone import TimmBackbone
from cvmtl.models.heads import TaskHead, crop
from cvmtl.models.multitask import padded_size  # noqa: F401  (re-exported for the archs)
from cvmtl.models.neck import conv_norm_act
from cvmtl.tasks import get_task

AUX = "aux"  # key of the deep-supervision predictions {task: tensor or list of tensors}


def features_refusal(arch: str, why: str) -> ValueError:
    """The one-line error of an architecture without a shared representation."""
    return ValueError(
        f"model.arch={arch} has no shared representation ({why}), so gradient balancers cannot "
        f"use loss.grad_source=features: use loss.grad_source=params"
    )


class ArchModel(nn.Module):
    """Base of the ``model.arch`` models (see the module docstring).

    Subclasses set ``backbone``, ``neck`` and ``heads``; parameters outside ``heads`` are shared
    (every task's loss reaches them), those in ``heads[t]`` belong to task ``t`` alone.
    """

    arch = "?"

    def __init__(self, heads: dict[str, nn.Module], num_classes: int, size_divisor: int):
        super().__init__()
        if not heads:
            raise ValueError(f"model.arch={self.arch} needs at least one task")
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


class StrideHead(TaskHead):
    """A task head on a stride-``stride`` map: (``pre``) -> conv-norm-relu -> 1x1, upsampled
    ``stride`` x to the padded input, cropped, then the spec's activation (float32 rules of
    :class:`cvmtl.models.heads.DenseHead`)."""

    def __init__(
        self, task: str, in_channels: int, num_classes: int, hidden: int, norm: str,
        model_cfg: Any, stride: int, pre: nn.Module | None = None, pre_channels: int = 0,
    ) -> None:  # fmt: skip
        spec = get_task(task)
        cin = pre_channels if pre is not None else in_channels
        super().__init__(spec, cin, spec.out_channels(num_classes), hidden, norm, model_cfg)
        self.stride = int(stride)
        self.pre = pre if pre is not None else nn.Identity()

    def forward(self, x: torch.Tensor, size: Sequence[Any]) -> torch.Tensor:
        return super().forward(self.pre(x), size)

    def _predict(self, x: torch.Tensor, size: Sequence[Any]) -> torch.Tensor:
        x = self.pred(x)
        if self.stride > 1:
            x = F.interpolate(
                x, scale_factor=float(self.stride), mode="bilinear", align_corners=False
            )
        return self.activate(crop(x, size).float())


def make_backbone(cfg: Any, backbone_kwargs: dict[str, Any] | None = None) -> TimmBackbone:
    """The ``cfg.model`` backbone (as :func:`cvmtl.models.build.build_branch` makes it)."""
    m = cfg.model
    return TimmBackbone(
        m.backbone,
        pretrained=m.pretrained,
        pretrained_file=m.pretrained_file,
        img_size=tuple(cfg.data.crop),
        drop_path=m.drop_path,
        **(backbone_kwargs or {}),
    )


def task_head(cfg: Any, task: str, in_channels: int, stride: int, **kw: Any) -> StrideHead:
    """``task``'s :class:`StrideHead` with the config's widths and norm."""
    m = cfg.model
    return StrideHead(
        task, in_channels, cfg.data.num_classes, m.head_channels, m.norm, m, stride, **kw
    )


def conv_block(cin: int, cout: int, norm: str, kernel: int = 3) -> nn.Sequential:
    """conv-norm-relu."""
    return conv_norm_act(cin, cout, kernel, norm)


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` bilinearly resized to ``ref``'s spatial size."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)
