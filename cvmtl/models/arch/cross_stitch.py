"""``model.arch=cross_stitch``: cross-stitch networks (Misra et al., CVPR 2016) on timm backbones.

One backbone ("column") per task, run stage by stage in lock step; after every stage that timm
reports (strides >= 4) except the last, a cross-stitch unit mixes the columns per channel:
``x_t <- sum_s alpha[t, s, c] x_s``, initialised ``alpha[t, t] = 0.9`` and
``alpha[t, s] = 0.1 / (T - 1)`` (the paper's (0.9, 0.1) for two tasks). Each task then has its own
FPN and head. Without pretrained weights the columns start equal (as pretrained copies are).

Needs a timm model whose ``features_only`` form runs its stages as a ModuleDict
(``FeatureDictNet``: resnet, convnext, regnet, swin, ...). Every column feeds every task through
the stitches, so nothing is one shared representation: ``forward_features`` refuses (use
``loss.grad_source=params``); ``shared_parameters`` = all columns and stitch units; ``backbone``
holds both, ``neck`` is empty (each task's FPN is in its head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models._features import FeatureDictNet
from torch import nn

from cvmtl.models.arch.common import ArchModel, features_refusal, make_backbone, task_head
from cvmtl.models.multitask import pad_to_multiple
from cvmtl.models.neck import FPN, OUT_STRIDE


class CrossStitch(nn.Module):
    """Per-channel mixing of ``T`` same-shaped maps (channels last when ``nhwc``)."""

    def __init__(self, tasks: int, channels: int, nhwc: bool = False):
        super().__init__()
        other = 0.1 / max(tasks - 1, 1)
        alpha = torch.full((tasks, tasks, channels), other)
        alpha[range(tasks), range(tasks)] = 0.9
        self.alpha = nn.Parameter(alpha)
        self.nhwc = nhwc

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        stack = torch.stack(list(xs))
        eq = "tsc,sbhwc->tbhwc" if self.nhwc else "tsc,sbchw->tbchw"
        return list(torch.einsum(eq, self.alpha.to(stack.dtype), stack).unbind(0))


class StitchedColumns(nn.Module):
    """One backbone per task with cross-stitch units between the reported stages."""

    def __init__(self, cfg: Any, backbone_kwargs: dict[str, Any] | None = None):
        super().__init__()
        tasks = list(cfg.tasks)
        self.columns = nn.ModuleDict({t: make_backbone(cfg, backbone_kwargs) for t in tasks})
        first = self.columns[tasks[0]]
        if not isinstance(first.body, FeatureDictNet) or first.pyramid is not None:
            raise ValueError(
                f"model.arch=cross_stitch needs a backbone timm runs stage by stage "
                f"(FeatureDictNet: resnet, convnext, regnet, swin ...); {cfg.model.backbone!r} "
                f"is a {type(first.body).__name__}"
            )
        if not cfg.model.pretrained:  # start the copies equal, as pretrained copies are
            for column in self.columns.values():
                column.load_state_dict(first.state_dict())
        self.order = list(first.body.keys())
        reported = [n for n in self.order if n in first.body.return_layers]
        self.taps = [reported[i] for i in first.keep]
        stitched = self.taps[:-1] if len(tasks) > 1 else []
        self.stitches = nn.ModuleDict(
            {n: CrossStitch(len(tasks), first.channels[i], first.nhwc)
             for i, n in enumerate(stitched)}
        )  # fmt: skip
        self.size_divisor = first.size_divisor
        self.channels, self.strides, self.nhwc = first.channels, first.strides, first.nhwc

    def forward(self, image: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per task (``cfg.tasks`` order), its column's NCHW levels."""
        columns = list(self.columns.values())
        xs = [image] * len(columns)
        levels: list[list[torch.Tensor]] = [[] for _ in columns]
        for name in self.order:
            xs = [col.body[name](x) for col, x in zip(columns, xs)]
            if name in self.stitches:
                xs = self.stitches[name](xs)
            if name in self.taps:
                for out, x in zip(levels, xs):
                    out.append(x.permute(0, 3, 1, 2) if self.nhwc else x)
        return levels


class CrossTask(nn.Module):
    """A task's FPN and head on its column's levels."""

    def __init__(self, cfg: Any, task: str, channels: list[int], strides: list[int]):
        super().__init__()
        self.decoder = FPN(channels, strides, cfg.model.neck_channels, cfg.model.norm)
        self.head = task_head(cfg, task, cfg.model.neck_channels, OUT_STRIDE)

    def forward(self, levels: list[torch.Tensor], size: Sequence[Any]) -> torch.Tensor:
        return self.head(self.decoder(levels), size)


class CrossStitchModel(ArchModel):
    """Task columns tied by cross-stitch units -> per-task FPN and head."""

    arch = "cross_stitch"
    has_shared_features = False  # gradient balancers: loss.grad_source=params only

    def __init__(self, cfg: Any, backbone_kwargs: dict[str, Any] | None = None):
        backbone = StitchedColumns(cfg, backbone_kwargs)
        chans, strides = list(backbone.channels), list(backbone.strides)
        heads = {t: CrossTask(cfg, t, chans, strides) for t in cfg.tasks}
        super().__init__(heads, cfg.data.num_classes, backbone.size_divisor)
        self.backbone = backbone
        self.neck = nn.ModuleList()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        levels = self.backbone(pad_to_multiple(image, self.size_divisor))
        size = image.shape[-2:]
        return {t: head(lv, size) for (t, head), lv in zip(self.heads.items(), levels)}

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        raise features_refusal(self.arch, "one backbone per task, mixed by cross-stitch units")

    def forward_heads(self, features: torch.Tensor, size: Sequence[Any]) -> dict:
        raise features_refusal(self.arch, "one backbone per task, mixed by cross-stitch units")
