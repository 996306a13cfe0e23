"""The FPN neck and Panoptic-FPN's merge of its levels into one stride-4 map.

Lateral 1x1 convs + top-down sum + 3x3 smoothing over every backbone level give the pyramid;
:class:`LevelFusion` brings each level to stride 4 by conv-norm-relu(-2x upsample) stages and
sums them. The default network gives every task its own fusion of the shared pyramid
(``model.neck_sharing: pyramid``); ``all`` fuses once for all heads, ``none`` gives every task
its own FPN (:class:`Levels` passes the backbone levels through), ``convs`` shares the FPN's
convolutions but gives every task its own norms after them (:class:`SharedConvs`,
:class:`TaskNormFPN`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

OUT_STRIDE = 4


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``bn`` | ``gn`` (32 groups, or the largest divisor of ``channels`` below) | ``syncbn``."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "syncbn":
        # Falls back to plain batch norm when no process group is initialized.
        return nn.SyncBatchNorm(channels)
    if kind == "gn":
        groups = next(g for g in range(min(32, channels), 0, -1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"model.norm: expected bn | gn | syncbn, got {kind!r}")


def conv_norm_act(cin: int, cout: int, kernel: int, norm: str, act: bool = True) -> nn.Sequential:
    """Conv (no bias: the norm has one) + norm (+ ReLU)."""
    layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), norm_layer(norm, cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LevelFusion(nn.ModuleList):
    """Panoptic-FPN's semantic merge: each pyramid level is brought to stride 4 by
    conv-norm-relu(-2x upsample) stages (at least one per level) and the levels are summed.

    One per task (``model.neck_sharing: pyramid``) lets every task read the shared pyramid its
    own way; one shared by all tasks (``all``) gives every head the same fused map.
    """

    def __init__(
        self, strides: list[int], channels: int, norm: str = "bn", attention: bool = False
    ) -> None:
        super().__init__()
        self.strides = list(strides)
        # 2x upsamplings per level: log2(stride / 4) for a padded input (what the export relies
        # on: no size comparison in forward); other ratios end with an exact resize
        self.ups: list[int] = []
        for s in strides:
            ups = max(int(round(math.log2(s / OUT_STRIDE))), 0)
            stages = [conv_norm_act(channels, channels, 3, norm) for _ in range(max(ups, 1))]
            self.append(nn.ModuleList(stages))
            self.ups.append(ups if OUT_STRIDE * 2**ups == s else -1)
        # created after the stages: a fusion without attention keeps its parameter order
        self.gates = (
            nn.ModuleList(LevelGate(channels, norm) for _ in strides) if attention else None
        )

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Pyramid levels (finest first) -> their sum at stride 4 (the finest level's size times
        its stride / 4).

        Written for tracing with dynamic sizes: sizes are only multiplied and passed on, and the
        upsampling steps come from the strides, not from comparing sizes. For an input padded
        to the largest stride (as :class:`MultiTaskModel` pads it) every level then lands on the
        target size; an unpadded one is resized to it (eager only: a traced graph assumes padded
        inputs).
        """
        f = self.strides[0] // OUT_STRIDE
        target = (levels[0].shape[-2] * f, levels[0].shape[-1] * f)
        fused = None
        if self.gates is not None:
            levels = [gate(x) for gate, x in zip(self.gates, levels)]
        for x, stages, ups in zip(levels, self, self.ups):
            for i, stage in enumerate(stages):
                x = stage(x)
                if i < ups:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if ups < 0 or (_eager() and x.shape[-2:] != target):
                x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            fused = x if fused is None else fused + x
        assert fused is not None
        return fused


class LevelGate(nn.Module):
    """MTAN's attention on one pyramid level: ``x * sigmoid(conv-norm(relu(conv-norm(x))))``, a
    mask per pixel and channel that a task learns over the shared level (Liu et al., CVPR 2019)."""

    def __init__(self, channels: int, norm: str = "bn") -> None:
        super().__init__()
        self.mask = nn.Sequential(
            conv_norm_act(channels, channels, 1, norm),
            conv_norm_act(channels, channels, 1, norm, act=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


class FPN(nn.Module):
    """Feature pyramid over levels with ``in_channels`` at ``strides``.

    Returns one stride-4 map (``fuse=True``: the pyramid then its :class:`LevelFusion`) or the
    pyramid levels themselves, finest first (``fuse=False``: each task head fuses them).
    Levels finer than stride 4 must be dropped by the backbone beforehand.
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        channels: int = 128,
        norm: str = "bn",
        fuse: bool = True,
        attention: bool = False,
    ):
        super().__init__()
        if len(in_channels) != len(strides) or not strides:
            raise ValueError(f"FPN: {len(in_channels)} channel counts for {len(strides)} strides")
        if min(strides) < OUT_STRIDE or list(strides) != sorted(strides):
            raise ValueError(f"FPN: strides must be increasing and >= {OUT_STRIDE}, got {strides}")
        self.strides = list(strides)
        self.channels = channels
        self.out_stride = OUT_STRIDE
        # detectron2's FPN with norm: laterals and smoothing convs are linear (conv + norm)
        self.lateral = nn.ModuleList(
            conv_norm_act(c, channels, 1, norm, False) for c in in_channels
        )
        self.smooth = nn.ModuleList(
            conv_norm_act(channels, channels, 3, norm, False) for _ in strides
        )
        self.fuse = LevelFusion(strides, channels, norm, attention) if fuse else None

    def levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone levels -> pyramid levels (lateral 1x1, top-down sum, 3x3 smoothing)."""
        lat = top_down([conv(f) for conv, f in zip(self.lateral, feats)])
        return [conv(x) for conv, x in zip(self.smooth, lat)]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Levels -> the fused stride-4 map, or the pyramid levels when not fusing."""
        levels = self.levels(feats)
        return levels if self.fuse is None else self.fuse(levels)

    def shapes(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each returned level for a padded (``h``, ``w``) input (not fusing)."""
        return [(self.channels, h // s, w // s) for s in self.strides]


class Levels(nn.Module):
    """A neck that shares nothing of its own: the backbone levels pass through to the heads,
    each of which holds a whole FPN (``model.neck_sharing: none``)."""

    fuse = None
    out_stride = OUT_STRIDE

    def __init__(self, channels: list[int], strides: list[int]):
        super().__init__()
        self.level_channels, self.strides = list(channels), list(strides)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(feats)

    def shapes(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each backbone level for a padded (``h``, ``w``) input."""
        return [(c, h // s, w // s) for c, s in zip(self.level_channels, self.strides)]


class SharedConvs(Levels):
    """The FPN's convolutions without their norms, shared by every task
    (``model.neck_sharing: convs``): the backbone levels pass through, and each task's
    :class:`TaskNormFPN` runs these convs with norms of its own.

    Created in the FPN's order (laterals, then smoothing convs), so they are seeded as its are.
    """

    def __init__(self, in_channels: list[int], strides: list[int], channels: int) -> None:
        super().__init__(in_channels, strides)
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1, bias=False) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in strides
        )


class TaskNormFPN(nn.Module):
    """One task's view of a :class:`SharedConvs` pyramid: the shared convs, its own norms after
    each of them, then its own :class:`LevelFusion` (task-specific normalization, as in Bilen
    & Vedaldi's universal representations, applied to the neck).

    Every parameter here is the task's own; the convs are the neck's, held by reference and not
    registered, so ``heads[task]`` keeps only what one task uses (the neck owns, moves, saves
    and shares the convs; a deep copy of the whole model keeps the reference within the copy).
    """

    def __init__(self, convs: SharedConvs, channels: int, norm: str, attention: bool) -> None:
        super().__init__()
        self._convs = (convs,)  # a tuple: not a submodule (see the class docstring)
        self.lateral_norms = nn.ModuleList(norm_layer(norm, channels) for _ in convs.strides)
        self.smooth_norms = nn.ModuleList(norm_layer(norm, channels) for _ in convs.strides)
        self.fuse = LevelFusion(convs.strides, channels, norm, attention)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Backbone levels -> this task's pyramid (as :meth:`FPN.levels`) -> its fused map."""
        convs = self._convs[0]
        lat = top_down([n(c(f)) for c, n, f in zip(convs.lateral, self.lateral_norms, feats)])
        return self.fuse([n(c(x)) for c, n, x in zip(convs.smooth, self.smooth_norms, lat)])


def top_down(lat: list[torch.Tensor]) -> list[torch.Tensor]:
    """The FPN's top-down pathway: each level (finest first) plus its coarser neighbour's sum,
    nearest-upsampled: coarse semantics added into finer levels."""
    for i in range(len(lat) - 2, -1, -1):
        lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
    return lat


def flatten_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, C_i, H_i, W_i] maps -> one [B, sum C_i H_i W_i] tensor (a features-mode z)."""
    return torch.cat([m.flatten(1) for m in maps], dim=1)


def unflatten_maps(
    flat: torch.Tensor, shapes: Sequence[tuple[int, int, int]]
) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_maps` for per-map (C, H, W) ``shapes``."""
    sizes = [c * h * w for c, h, w in shapes]
    parts = torch.split(flat, sizes, dim=1)
    return [p.reshape(flat.shape[0], *s) for p, s in zip(parts, shapes)]


def _eager() -> bool:
    """False while tracing / exporting (the size test would become a guard on the example)."""
    return not (
        torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
    )
