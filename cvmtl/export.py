"""Export a cvmtl checkpoint to ONNX, torch.export (.pt2) or TorchScript, verified against PyTorch.

The exported graph takes ``image`` float32 [B, 3, H, W], normalized with the checkpoint's
``data.mean`` / ``data.std`` (as ``model(image)`` does), and returns ``seg`` (logits [B, C, H, W]),
``depth`` (metres [B, 1, H, W]) and ``normal`` (unit [B, 3, H, W]) for the model's tasks, in that
order. Batch, height and width are dynamic where the backbone allows (CNNs do); any H, W works
because the graph pads to the backbone's stride multiple and crops back, as the model does.

:class:`ExportModule` re-states the model's forward without Python branches on sizes or
``int()`` of sizes: a tracer would freeze those to the example's size (the crop, the FPN's
upsampling decisions), so an export from a 64x64 example would only be right at 64x64.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMATS = ("onnx", "export", "torchscript")
SUFFIX = {"onnx": ".onnx", "export": ".pt2", "torchscript": ".ts"}
TASK_ORDER = ("seg", "depth", "normal")
ONNX_HINT = "onnxruntime is missing: pip install cvmtl[export]  (or: pip install onnx onnxruntime)"


def _branch_forward(branch: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """``MultiTaskModel.forward`` with the size logic written as tensor-size arithmetic."""
    h, w = image.shape[-2], image.shape[-1]
    div = branch.size_divisor
    # Padded sizes written as multiples of ``div`` so that a symbolic tracer can prove the
    # pyramid levels line up (ceil(h / div) * div, not h + (-h % div)); a 0 pad is a no-op.
    hp, wp = (h + div - 1) // div * div, (w + div - 1) // div * div
    x = F.pad(image, (0, wp - w, 0, hp - h))
    feats = branch.backbone(x)
    fused = _fpn_forward(branch.neck, feats)
    stride = branch.feature_stride
    padded = (fused.shape[-2] * stride, fused.shape[-1] * stride)
    return {task: _head_forward(head, fused, padded, (h, w)) for task, head in branch.heads.items()}


def _head_forward(
    head: nn.Module, x: torch.Tensor, padded: tuple[Any, Any], size: tuple[Any, Any]
) -> torch.Tensor:
    """``DenseHead.forward`` with the crop as a gather: a sliced view makes torch.export guard
    on whether the crop is empty (its contiguity), which would tie the graph to the example."""
    x = head.pred(head.block(x))
    x = F.interpolate(x, size=padded, mode="bilinear", align_corners=False)
    rows = torch.arange(size[0], device=x.device)
    cols = torch.arange(size[1], device=x.device)
    x = x.index_select(2, rows).index_select(3, cols)
    return head.activate(x.float())


def _fpn_forward(neck: nn.Module, feats: list[torch.Tensor]) -> torch.Tensor:
    """``FPN.forward`` with the number of 2x upsamplings per level fixed by its stride (which is
    what the size comparisons of the original decide for a padded input)."""
    lat = [conv(f) for conv, f in zip(neck.lateral, feats)]
    for i in range(len(lat) - 2, -1, -1):
        lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
    outs = [conv(x) for conv, x in zip(neck.smooth, lat)]
    f = neck.strides[0] // neck.out_stride
    target = (feats[0].shape[-2] * f, feats[0].shape[-1] * f)
    fused = None
    for x, stages, s in zip(outs, neck.fuse, neck.strides):
        ratio = s / neck.out_stride
        ups = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            if 2**i < ratio:  # still smaller than the stride-4 target: upsample 2x
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
                ups += 1
        if 2**ups != ratio:  # non power-of-two stride ratio: resize exactly
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        fused = x if fused is None else fused + x
    assert fused is not None
    return fused


class ExportModule(nn.Module):
    """``image -> (seg, depth, normal)`` (the model's tasks in that order), trace-friendly."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        branches = getattr(model, "branches", None)  # soft sharing: one model per task
        self.branches = list(branches.values()) if branches is not None else [model]
        self.tasks = [t for t in TASK_ORDER if t in model.tasks]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out: dict[str, torch.Tensor] = {}
        for branch in self.branches:
            out.update(_branch_forward(branch, image))
        return tuple(out[t] for t in self.tasks)
