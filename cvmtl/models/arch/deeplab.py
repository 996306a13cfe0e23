"""``model.arch=deeplab``: a dilated backbone (timm ``output_stride=8``) shared by all tasks and a
DeepLabV3 ASPP head per task (the network of LibMTL's and MTAN's NYUv2 experiments).

The shared representation (``forward_features``) is the dilated backbone's last map, stride 8.
There is no neck: ``neck`` is empty (fine-tuning with ``freeze: backbone`` or ``neck`` then both
train the task's ASPP head alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cvmtl.models.arch.common import ArchModel, conv_block, make_backbone, task_head
from cvmtl.models.backbone import TimmBackbone
from cvmtl.models.multitask import pad_to_multiple
from cvmtl.models.neck import norm_layer

OUTPUT_STRIDE = 8
ASPP_RATES = (12, 24, 36)  # DeepLabV3 at output stride 8 (LibMTL's DeepLabHead)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and image
    pooling, concatenated and projected to ``channels``.

    The pooling branch has no norm (batch norm of a 1x1 map fails at batch size 1).
    """

    def __init__(self, cin: int, channels: int, norm: str, rates: Sequence[int] = ASPP_RATES):
        super().__init__()
        self.branches = nn.ModuleList([conv_block(cin, channels, norm, kernel=1)])
        for r in rates:
            self.branches.append(
                nn.Sequential(
                    nn.Conv2d(cin, channels, 3, padding=r, dilation=r, bias=False),
                    norm_layer(norm, channels),
                    nn.ReLU(inplace=True),
                )
            )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, channels, 1), nn.ReLU(inplace=True)
        )
        self.project = conv_block(channels * (len(rates) + 2), channels, norm, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, dim=1))


def dilated_backbone(cfg: Any, backbone_kwargs: dict[str, Any] | None) -> TimmBackbone:
    """The backbone at output stride 8, or a one-line ValueError when timm cannot dilate it."""
    name = cfg.model.backbone
    kwargs = {**(backbone_kwargs or {}), "output_stride": OUTPUT_STRIDE}
    try:
        backbone = make_backbone(cfg, kwargs)
    except TypeError as e:
        raise ValueError(
            f"model.arch=deeplab needs a backbone timm can dilate (output_stride=8: resnet, "
            f"resnest, regnet, convnext, efficientnet, mobilenet ...); {name!r} cannot ({e})"
        ) from None
    if max(backbone.strides) != OUTPUT_STRIDE:
        raise ValueError(
            f"model.arch=deeplab: backbone {name!r} ignored output_stride=8 (strides "
            f"{backbone.strides}); use a dilatable backbone such as resnet50"
        )
    return backbone


class DeepLabModel(ArchModel):
    """Dilated backbone -> {task: ASPP -> conv -> 1x1 -> 8x upsample}."""

    arch = "deeplab"

    def __init__(self, cfg: Any, backbone_kwargs: dict[str, Any] | None = None):
        backbone = dilated_backbone(cfg, backbone_kwargs)
        cin, width = backbone.channels[-1], cfg.model.neck_channels
        heads = {
            t: task_head(
                cfg,
                t,
                cin,
                OUTPUT_STRIDE,
                pre=ASPP(cin, width, cfg.model.norm),
                pre_channels=width,
            )  # fmt: skip
            for t in cfg.tasks
        }
        super().__init__(heads, cfg.data.num_classes, backbone.size_divisor)
        self.backbone = backbone
        self.neck = nn.ModuleList()  # none: the ASPP is part of each task's head

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """The dilated backbone's last map [B, C, Hp/8, Wp/8] of the padded image."""
        return self.backbone(pad_to_multiple(image, self.size_divisor))[-1]

    def forward_heads(self, features: torch.Tensor, size: Sequence[Any]) -> dict:
        return {task: head(features, size) for task, head in self.heads.items()}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_heads(self.forward_features(image), image.shape[-2:])
