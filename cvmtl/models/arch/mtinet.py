"""``model.arch=mtinet``: MTI-Net (Vandenhende et al., ECCV 2020), compact, on any timm backbone.

Backbone -> FPN levels (laterals, top-down sum, smoothing; not fused) -> at every level, per
task: initial features (two conv-norm-relu) with an initial prediction (deep supervision at
every scale: ``"aux"`` -> {task: [prediction per scale]} in training mode) and multi-modal
distillation among the tasks at that scale (PAD-Net's block, :class:`Distillation`) -> per task:
aggregation of the distilled features of all scales (upsampled to stride 4, concatenated) ->
final head.

Simplified from the paper: no feature propagation module (the paper feeds each scale's initial
task features into the next finer scale; here the FPN's top-down pathway carries coarse context)
and the aggregation is the final head's conv over the concatenation (the paper's HRNet head).
The shared representation (``forward_features``) is every scale's initial features of every task,
flattened; ``neck`` = FPN levels + initial blocks; ``heads[t]`` = t's initial predictions,
incoming messages and final head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.models.arch.common import (
    AUX,
    ArchModel,
    make_backbone,
    padded_size,
    task_head,
)
from cvmtl.models.arch.padnet import Distillation, initial_block
from cvmtl.models.multitask import pad_to_multiple
from cvmtl.models.neck import (
    OUT_STRIDE,
    conv_norm_act,
    flatten_maps,
    top_down,
    unflatten_maps,
)


class PyramidLevels(nn.Module):
    """FPN without the fusion: lateral 1x1 convs, top-down sum, 3x3 smoothing per level."""

    def __init__(self, in_channels: Sequence[int], channels: int, norm: str):
        super().__init__()
        self.lateral = nn.ModuleList(
            conv_norm_act(c, channels, 1, norm, False) for c in in_channels
        )
        self.smooth = nn.ModuleList(
            conv_norm_act(channels, channels, 3, norm, False) for _ in in_channels
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        lat = top_down([conv(f) for conv, f in zip(self.lateral, feats)])
        return [conv(x) for conv, x in zip(self.smooth, lat)]


class MtiTask(nn.Module):
    """One task's own parts: an initial prediction and a distillation per scale, final head."""

    def __init__(self, cfg: Any, task: str, channels: int, strides: Sequence[int]):
        super().__init__()
        self.aux = nn.ModuleList(task_head(cfg, task, channels, s) for s in strides)
        self.distill = nn.ModuleList(
            Distillation(task, cfg.tasks, channels, cfg.model.norm) for _ in strides
        )
        self.final = task_head(cfg, task, channels * len(strides), OUT_STRIDE)
        self.ups = [s / OUT_STRIDE for s in strides]

    def aggregate(self, per_scale: list[dict[str, torch.Tensor]], size: Sequence[Any]):
        maps = []
        for distill, up, feats in zip(self.distill, self.ups, per_scale):
            x = distill(feats)
            if up != 1:
                x = F.interpolate(x, scale_factor=up, mode="bilinear", align_corners=False)
            maps.append(x)
        return self.final(torch.cat(maps, dim=1), size)


class MtiNetModel(ArchModel):
    """Backbone -> FPN levels -> per-scale initial features, predictions and distillation ->
    per-task multi-scale aggregation."""

    arch = "mtinet"

    def __init__(self, cfg: Any, backbone_kwargs: dict[str, Any] | None = None):
        m = cfg.model
        backbone = make_backbone(cfg, backbone_kwargs)
        c, strides = m.neck_channels, list(backbone.strides)
        heads = {t: MtiTask(cfg, t, c, strides) for t in cfg.tasks}
        super().__init__(heads, cfg.data.num_classes, backbone.size_divisor)
        self.backbone = backbone
        initial = nn.ModuleList(
            nn.ModuleDict({t: initial_block(c, m.norm) for t in cfg.tasks}) for _ in strides
        )
        self.neck = nn.ModuleDict(
            {"fpn": PyramidLevels(backbone.channels, c, m.norm), "initial": initial}
        )
        self.channels, self.strides = c, strides

    def _initial(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Initial features, scale-major then task order."""
        levels = self.neck.fpn(self.backbone(pad_to_multiple(image, self.size_divisor)))
        return [
            block(x) for x, blocks in zip(levels, self.neck.initial) for block in blocks.values()
        ]

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """Every scale's initial features of every task, flattened: [B, D]."""
        return flatten_maps(self._initial(image))

    def forward_heads(self, features: torch.Tensor, size: Sequence[Any]) -> dict:
        hp, wp = padded_size(size, self.size_divisor)
        shapes = [(self.channels, hp // s, wp // s) for s in self.strides for _ in self.tasks]
        return self._decode(unflatten_maps(features, shapes), size)

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        return self._decode(self._initial(image), image.shape[-2:])

    def _decode(self, maps: list[torch.Tensor], size: Sequence[Any]) -> dict[str, Any]:
        n = len(self.tasks)
        per_scale = [
            dict(zip(self.tasks, maps[i * n : (i + 1) * n])) for i in range(len(maps) // n)
        ]
        out: dict[str, Any] = {t: head.aggregate(per_scale, size) for t, head in self.heads.items()}
        if self.training:
            out[AUX] = {
                t: [aux(feats[t], size) for aux, feats in zip(head.aux, per_scale)]
                for t, head in self.heads.items()
            }
        return out
