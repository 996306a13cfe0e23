"""``model.arch=mtan``: Multi-Task Attention Network (Liu et al., CVPR 2019) on any timm backbone.

The backbone is the shared trunk. Each task has an attention module per stage that timm reports
(``features_only``, strides >= 4): ``a_i = sigmoid(g_i([u_i, f_i(a_{i-1})])) * u_i`` with ``u_i``
the shared stage map, ``f_i`` a conv-norm-relu to the stage's width followed by a max pool to its
resolution (the paper's shared ``f`` and the pooling between blocks), ``g_i`` two 1x1
conv-norm layers (a width-/4 bottleneck). The attended pyramid then goes through the task's own
FPN decoder and head.

Simplifications, because timm stages are black boxes: the attention input is the stage output
(the paper uses a feature from inside the block and masks the block's output), and ``f_i`` is
per task (the paper shares it) so that everything after the trunk belongs to one task.
The shared representation (``forward_features``) is every trunk stage, flattened and concatenated:
the exact input of all task-specific parts. There is no shared neck (``neck`` is empty; each
task's FPN is in its head, so ``freeze: backbone`` and ``neck`` train the same modules).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.models.arch.common import (
    ArchModel,
    conv_block,
    make_backbone,
    padded_size,
    task_head,
)
from cvmtl.models.multitask import pad_to_multiple
from cvmtl.models.neck import FPN, OUT_STRIDE, flatten_maps, norm_layer, unflatten_maps


def _gate(cin: int, cout: int, norm: str) -> nn.Sequential:
    mid = max(cout // 4, 8)
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), norm_layer(norm, mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 1, bias=False), norm_layer(norm, cout), nn.Sigmoid(),
    )  # fmt: skip


class TaskAttention(nn.Module):
    """One task's attention modules over the shared stages (see the module docstring)."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], norm: str):
        super().__init__()
        self.gates = nn.ModuleList(
            _gate(c if i == 0 else 2 * c, c, norm) for i, c in enumerate(channels)
        )
        self.carry = nn.ModuleList(
            conv_block(channels[i - 1], channels[i], norm) for i in range(1, len(channels))
        )
        self.pools = [max(strides[i] // strides[i - 1], 1) for i in range(1, len(strides))]

    def forward(self, stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for i, u in enumerate(stages):
            x = u
            if i:
                prev = self.carry[i - 1](out[-1])
                if self.pools[i - 1] > 1:
                    prev = F.max_pool2d(prev, self.pools[i - 1])
                x = torch.cat([u, prev], dim=1)
            out.append(self.gates[i](x) * u)
        return out


class MtanTask(nn.Module):
    """Attention over the trunk -> the task's FPN -> its head."""

    def __init__(self, cfg: Any, task: str, channels: list[int], strides: list[int]):
        super().__init__()
        m = cfg.model
        self.attention = TaskAttention(channels, strides, m.norm)
        self.decoder = FPN(channels, strides, m.neck_channels, m.norm)
        self.head = task_head(cfg, task, m.neck_channels, OUT_STRIDE)

    def forward(self, stages: Sequence[torch.Tensor], size: Sequence[Any]) -> torch.Tensor:
        return self.head(self.decoder(self.attention(stages)), size)


class MtanModel(ArchModel):
    """Shared trunk + per-task attention, decoder and head."""

    arch = "mtan"

    def __init__(self, cfg: Any, backbone_kwargs: dict[str, Any] | None = None):
        backbone = make_backbone(cfg, backbone_kwargs)
        chans, strides = list(backbone.channels), list(backbone.strides)
        heads = {t: MtanTask(cfg, t, chans, strides) for t in cfg.tasks}
        super().__init__(heads, cfg.data.num_classes, backbone.size_divisor)
        self.backbone = backbone
        self.neck = nn.ModuleList()

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """Every trunk stage of the padded image, flattened: [B, sum_i C_i H_i W_i]."""
        return flatten_maps(self.backbone(pad_to_multiple(image, self.size_divisor)))

    def forward_heads(self, features: torch.Tensor, size: Sequence[Any]) -> dict:
        hp, wp = padded_size(size, self.size_divisor)
        shapes = [
            (c, hp // s, wp // s) for c, s in zip(self.backbone.channels, self.backbone.strides)
        ]
        stages = unflatten_maps(features, shapes)
        return {task: head(stages, size) for task, head in self.heads.items()}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        stages = self.backbone(pad_to_multiple(image, self.size_divisor))
        return {task: head(stages, image.shape[-2:]) for task, head in self.heads.items()}
