"""Pieces every ``model.arch`` shares: the model contract (:class:`ArchModel`, from
:mod:`cvmtl.models.base`), a task head at any stride (:class:`StrideHead`), the backbone and a
small conv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.models.backbone import TimmBackbone
from cvmtl.models.base import ArchModel  # noqa: F401  (re-exported for the archs)
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
    """The ``cfg.model`` backbone."""
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
