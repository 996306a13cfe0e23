"""``model.arch=padnet``: PAD-Net (Xu et al., CVPR 2018) on the FPN's fused stride-4 map.

Backbone -> FPN -> per task: initial features (two conv-norm-relu) with an initial prediction
(deep supervision, ``"aux"`` in training mode) -> multi-modal distillation (task ``t``'s feature
plus an attention-gated message from every other task's initial feature) -> final head.

The distillation block is the one of the reference implementation (Vandenhende et al.'s
Multi-Task-Learning-PyTorch, ``SABlock``): the message of source ``s`` is
``sigmoid(conv(F_s)) * conv(F_s)``. The shared representation (``forward_features``) is the
concatenation of all tasks' initial features: every task's loss depends on all of them (through
the messages), and what comes after it belongs to one task. ``neck`` = the FPN and the initial
feature blocks (``neck.fpn``, ``neck.initial``); ``heads[t]`` = t's initial prediction,
incoming messages and final head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cvmtl.models.arch.common import AUX, ArchModel, conv_block, make_backbone, task_head
from cvmtl.models.multitask import pad_to_multiple
from cvmtl.models.neck import FPN, OUT_STRIDE, conv_norm_act


def initial_block(channels: int, norm: str) -> nn.Sequential:
    """A task's initial features from a shared map (two conv-norm-relu)."""
    return nn.Sequential(conv_block(channels, channels, norm), conv_block(channels, channels, norm))


class Distillation(nn.Module):
    """Messages into ``task``: ``F_t + sum_{s != t} sigmoid(g_s(F_s)) * m_s(F_s)``."""

    def __init__(self, task: str, tasks: Sequence[str], channels: int, norm: str):
        super().__init__()
        self.task = task
        sources = [s for s in tasks if s != task]
        self.gate = nn.ModuleDict(
            {s: nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Sigmoid())
             for s in sources}
        )  # fmt: skip
        self.message = nn.ModuleDict(
            {s: conv_norm_act(channels, channels, 3, norm, act=False) for s in sources}
        )

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        out = feats[self.task]
        for s, gate in self.gate.items():
            out = out + gate(feats[s]) * self.message[s](feats[s])
        return out


class PadTask(nn.Module):
    """One task's own parts: initial prediction, distillation, final head."""

    def __init__(self, cfg: Any, task: str, channels: int):
        super().__init__()
        self.aux = task_head(cfg, task, channels, OUT_STRIDE)
        self.distill = Distillation(task, cfg.tasks, channels, cfg.model.norm)
        self.final = task_head(cfg, task, channels, OUT_STRIDE)


class PadNetModel(ArchModel):
    """Backbone -> FPN -> initial task features -> distillation -> final heads."""

    arch = "padnet"

    def __init__(self, cfg: Any, backbone_kwargs: dict[str, Any] | None = None):
        m = cfg.model
        backbone = make_backbone(cfg, backbone_kwargs)
        c = m.neck_channels
        heads = {t: PadTask(cfg, t, c) for t in cfg.tasks}
        super().__init__(heads, cfg.data.num_classes, backbone.size_divisor)
        self.backbone = backbone
        self.neck = nn.ModuleDict(
            {
                "fpn": FPN(backbone.channels, backbone.strides, c, m.norm),
                "initial": nn.ModuleDict({t: initial_block(c, m.norm) for t in cfg.tasks}),
            }
        )
        self.channels = c

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """All tasks' initial features [B, T * C, Hp/4, Wp/4] (``self.tasks`` order)."""
        z = self.neck.fpn(self.backbone(pad_to_multiple(image, self.size_divisor)))
        return torch.cat([block(z) for block in self.neck.initial.values()], dim=1)

    def forward_heads(self, features: torch.Tensor, size: Sequence[Any]) -> dict:
        """Final predictions (and, in training mode, ``"aux"``: the initial ones)."""
        feats = dict(zip(self.tasks, torch.split(features, self.channels, dim=1)))
        out: dict[str, Any] = {
            t: head.final(head.distill(feats), size) for t, head in self.heads.items()
        }
        if self.training:
            out[AUX] = {t: head.aux(feats[t], size) for t, head in self.heads.items()}
        return out

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        return self.forward_heads(self.forward_features(image), image.shape[-2:])
