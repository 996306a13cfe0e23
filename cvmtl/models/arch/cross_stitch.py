"""``model.arch=cross_stitch``: cross-stitch networks (Misra et al., CVPR 2016) on timm backbones.

One backbone ("column") per task, run stage by stage in lock step; after every stage that timm
reports (strides >= 4) except the last, a cross-stitch unit mixes the columns per channel:
``x_t <- sum_s alpha[t, s, c] x_s``, initialised ``alpha[t, t] = 0.9`` and
``alpha[t, s] = 0.1 / (T - 1)`` (the paper's (0.9, 0.1) for two tasks). Each task then has its own
FPN and head. Without pretrained weights the columns start equal (as pretrained copies are).

The columns run the stages of timm's own ``features_only`` model one by one (:func:`stages`), so
the levels are those :class:`~cvmtl.models.backbone.TimmBackbone` reports (same strides and
channels): the modules of a ``FeatureDictNet`` (resnet, convnext, regnet, swin, ...), or the stem
(``conv_stem``, ``bn1``) and then each group of ``blocks`` of ``EfficientNetFeatures`` /
``MobileNetV3Features`` (efficientnet, mobilenetv3, ...). A plain ViT is refused: it reports one
stride and cvmtl builds its pyramid from the last block alone, so there is no stage boundary
between the levels to stitch at. Every column feeds every task through the stitches, so nothing
is one shared representation: ``forward_features`` refuses (use ``loss.grad_source=params``);
``shared_parameters`` = all columns and stitch units; ``backbone`` holds both, ``neck`` is empty
(each task's FPN is in its head).
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


STEM = "stem"


def _blocks_body(body: nn.Module) -> bool:
    """timm's EfficientNetFeatures / MobileNetV3Features: stem, then ``blocks`` group by group,
    a level after each group in ``_stage_out_idx`` (the levels of ``forward``, no hooks)."""
    return (
        isinstance(getattr(body, "blocks", None), nn.Sequential)
        and isinstance(getattr(body, "_stage_out_idx", None), dict)
        and hasattr(body, "conv_stem")
        and getattr(body, "feature_hooks", None) is None
    )


def stages(backbone: Any, name: str) -> tuple[list[str], list[str]]:
    """The stages a column runs one by one (in order) and those timm reports a level after (in
    the order of ``backbone.body``'s outputs); a ValueError says why a backbone has none."""
    body = backbone.body
    if backbone.pyramid is not None:
        raise ValueError(
            f"model.arch=cross_stitch mixes the columns between the stages timm reports at "
            f"different strides; {name!r} is a plain ViT: every block is at one stride and cvmtl "
            f"builds its pyramid from the last block alone, so there is no stage boundary to "
            f"stitch at. Use a hierarchical backbone (resnet, convnext, regnet, swin, "
            f"efficientnet, mobilenetv3, ...)"
        )
    if isinstance(body, FeatureDictNet):
        order = list(body.keys())
        return order, [n for n in order if n in body.return_layers]
    if _blocks_body(body):
        order = [STEM] + [f"blocks_{i}" for i in range(len(body.blocks))]
        return order, [order[s] for s in sorted(body._stage_out_idx)]
    raise ValueError(
        f"model.arch=cross_stitch runs a backbone stage by stage; timm gives {name!r} as a "
        f"{type(body).__name__}, whose levels come out of one call (no stages cvmtl can run "
        f"one by one). Backbones it runs: resnet, convnext, regnet, swin, efficientnet, "
        f"mobilenetv3, ..."
    )


def run_stage(body: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Stage ``name`` of timm's features model ``body`` (as its own ``forward`` runs it)."""
    if isinstance(body, FeatureDictNet):
        return body[name](x)
    if name == STEM:  # EfficientNet: bn1 is norm + act; MobileNetV3: bn1 then act1
        x = body.bn1(body.conv_stem(x))
        return body.act1(x) if hasattr(body, "act1") else x
    return body.blocks[int(name.removeprefix("blocks_"))](x)


class StitchedColumns(nn.Module):
    """One backbone per task with cross-stitch units between the reported stages."""

    def __init__(self, cfg: Any, backbone_kwargs: dict[str, Any] | None = None):
        super().__init__()
        tasks = list(cfg.tasks)
        self.columns = nn.ModuleDict({t: make_backbone(cfg, backbone_kwargs) for t in tasks})
        first = self.columns[tasks[0]]
        self.order, reported = stages(first, cfg.model.backbone)
        if not cfg.model.pretrained:  # start the copies equal, as pretrained copies are
            for column in self.columns.values():
                column.load_state_dict(first.state_dict())
        self.taps = [reported[i] for i in first.keep]
        self.order = self.order[: self.order.index(self.taps[-1]) + 1]  # nothing after the last
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
            xs = [run_stage(col.body, name, x) for col, x in zip(columns, xs)]
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
