"""A tiny multi-task model obeying the model contract, and random batches, for engine tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.config import Config

NUM_CLASSES = 4


class GradInject(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor`` (to inject inf/NaN)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class TrunkAndHeads(nn.Module):
    """The model interface the engine uses, for a ``backbone`` trunk and ``heads`` per task
    (subclasses define ``forward_features`` and ``forward_heads``)."""

    def forward(self, x):
        return self.forward_heads(self.forward_features(x), x.shape[-2:])

    def shared_parameters(self):
        return self.backbone.parameters()

    def task_parameters(self, task):
        return self.heads[task].parameters()

    def regularization(self):
        return self.backbone[0].weight.new_zeros(())


class TinyMTL(TrunkAndHeads):
    """conv-GN backbone (stride 2) -> one small conv head per task; GroupNorm only, so DDP with a
    split batch is exactly one process on the whole batch."""

    def __init__(self, tasks=("seg", "depth", "normal"), ch: int = 8):
        super().__init__()
        self.tasks = list(tasks)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, ch, 3, stride=2, padding=1),
            nn.GroupNorm(2, ch),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(2, ch),
            nn.ReLU(),
        )
        out = {"seg": NUM_CLASSES, "depth": 1, "normal": 3}
        self.heads = nn.ModuleDict(
            {
                t: nn.Sequential(
                    nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, out[t], 1)
                )
                for t in self.tasks
            }
        )
        self.inject = {}  # task or "backbone" -> gradient factor

    def forward_features(self, x):
        z = self.backbone(x)
        if "backbone" in self.inject:
            z = GradInject.apply(z, self.inject["backbone"])
        return z

    def forward_heads(self, z, size):
        out = {}
        for t, head in self.heads.items():
            zt = GradInject.apply(z, self.inject[t]) if t in self.inject else z
            y = F.interpolate(head(zt), size=tuple(size), mode="bilinear", align_corners=False)
            out[t] = F.softplus(y) if t == "depth" else y
        return out


def make_batch(n: int = 4, size: int = 16, seed: int = 0) -> dict:
    """Random labels with ignore / invalid pixels, all samples labeled."""
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, NUM_CLASSES, (n, size, size), generator=g)
    seg[torch.rand(n, size, size, generator=g) < 0.2] = 255
    depth = torch.rand(n, 1, size, size, generator=g) * 5 + 0.5
    depth[torch.rand(n, 1, size, size, generator=g) < 0.2] = 0
    normal = F.normalize(torch.randn(n, 3, size, size, generator=g), dim=1)
    normal = normal * (torch.rand(n, 1, size, size, generator=g) > 0.2)
    return {
        "image": torch.randn(n, 3, size, size, generator=g),
        "seg": seg,
        "depth": depth,
        "normal": normal,
        "has": {t: torch.ones(n, dtype=torch.bool) for t in ("seg", "depth", "normal")},
    }


def split_batch(batch: dict, parts: int, index: int) -> dict:
    """The ``index``-th of ``parts`` equal slices of ``batch`` along the batch dimension."""
    n = batch["image"].shape[0] // parts
    sl = slice(index * n, (index + 1) * n)
    out = {k: v[sl] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    out["has"] = {t: h[sl] for t, h in batch["has"].items()}
    return out


def tiny_cfg(**loss) -> Config:
    cfg = Config()
    cfg.data.num_classes = NUM_CLASSES
    cfg.train.amp = "none"
    cfg.train.channels_last = False
    for key, value in loss.items():
        setattr(cfg.loss, key, value)
    return cfg
