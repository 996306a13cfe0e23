"""The train augmentation of :mod:`cvmtl.data.transforms` on whole batches, on any device.

Same rules as :func:`cvmtl.data.transforms.scale_crop_flip`: resize by ``scale``, take the crop
window at ``offset`` (padding where it leaves the resized image), mirror; the image bilinear,
every label nearest and padded with its ``LabelKind.fill``, then multiplied by
``scale ** scale_power``, by ``flip_sign`` on a flip, renormalized (``unit_vector``) and thinned
(``thin``, on the CPU). The warp is separable (no rotation), so it is two gathers per array: rows,
then columns. The nearest source rows / columns are cv2's own (``warpAffine`` of a 1-pixel index
ramp with the same matrix, flags and border): labels equal the CPU transform's exactly, whatever
rounding the installed OpenCV uses. Bilinear coordinates are OpenCV's float32 ones (the image
agrees to within one grey level). Draws follow ``TrainTransform`` draw for draw
(:func:`draw_geometry`), so a sample's geometry is the worker loader's for the same
(seed, epoch, index); the colour jitter is :mod:`cvmtl.data.batch_jitter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from cvmtl.scoring.thinning import thin
from cvmtl.tasks import LabelKind

_NEAREST = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP


def draw_geometry(
    rng: np.random.Generator,
    size: Sequence[int],
    crop: Sequence[int],
    scale_range: Sequence[float],
    hflip: bool,
) -> tuple[float, tuple[int, int], bool]:
    """``(scale, (y0, x0), flip)`` drawn exactly as ``TrainTransform`` draws them."""
    h, w = int(size[0]), int(size[1])
    scale = float(rng.uniform(*scale_range))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    ch, cw = int(crop[0]), int(crop[1])
    y0 = int(rng.integers(min(0, sh - ch), max(0, sh - ch) + 1))
    x0 = int(rng.integers(min(0, sw - cw), max(0, sw - cw) + 1))
    flip = bool(hflip and rng.random() < 0.5)
    return scale, (y0, x0), flip


@dataclass
class Geometry:
    """The sampling plan of a batch: per sample, for the crop's rows (``[B, ch]``) and columns
    (``[B, cw]``): nearest source index, inside-the-resized-image mask, and the bilinear pair of
    source indices with the weight of the second."""

    rows: torch.Tensor
    cols: torch.Tensor
    row_in: torch.Tensor
    col_in: torch.Tensor
    y0: torch.Tensor
    y1: torch.Tensor
    wy: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    wx: torch.Tensor
    scales: list[float]
    flips: list[bool]
    zoomed: list[bool]

    def to(self, device: torch.device | str) -> Geometry:
        moved = {
            k: v.to(device, non_blocking=True)
            for k, v in vars(self).items()
            if isinstance(v, torch.Tensor)
        }
        return Geometry(**moved, scales=self.scales, flips=self.flips, zoomed=self.zoomed)


def _axis(size: int, out: int, a: float, c: float, along_x: bool) -> tuple[np.ndarray, ...]:
    """(nearest, bilinear lower, upper, weight) source indices of one axis of the warp
    ``src = a * dst + c`` (a crop of ``out`` pixels from ``size``)."""
    matrix = np.array([[a, 0.0, c], [0.0, a, c]], np.float64)
    ramp = np.arange(size, dtype=np.uint16)
    if along_x:  # cv2 computes x as float32 fma(M0, x, M2) and y as float32(y * M4 + M5)
        nearest = cv2.warpAffine(ramp[None], matrix, (out, 1), flags=_NEAREST,
                                 borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        dst = np.arange(out, dtype=np.float64)
        src = (np.float64(np.float32(a)) * dst + np.float64(np.float32(c))).astype(np.float32)
    else:
        nearest = cv2.warpAffine(ramp[:, None], matrix, (1, out), flags=_NEAREST,
                                 borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        src = (a * np.arange(out, dtype=np.float64) + c).astype(np.float32)
    low = np.floor(src)
    weight = (src - low).astype(np.float32)
    lo = np.clip(low, 0, size - 1).astype(np.int64)  # clamping = cv2's BORDER_REPLICATE
    hi = np.clip(low + 1, 0, size - 1).astype(np.int64)
    return nearest.reshape(-1).astype(np.int64), lo, hi, weight


def plan(
    sizes: Sequence[Sequence[int]],
    draws: Sequence[tuple[float, tuple[int, int], bool]],
    crop: Sequence[int],
) -> Geometry:
    """The :class:`Geometry` of a batch of images of ``sizes`` (h, w) under ``draws``
    ((scale, (y0, x0), flip) each), on the CPU: the matrix of ``scale_crop_flip``."""
    ch, cw = int(crop[0]), int(crop[1])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("y", "x", "ry", "rx")}
    scales, flips, zoomed = [], [], []
    for (h, w), (scale, (y0, x0), flip) in zip(sizes, draws, strict=True):
        h, w = int(h), int(w)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        sy, sx = sh / h, sw / w
        if flip:
            ax, cx = -1.0 / sx, (cw - 1 + x0 + 0.5) / sx - 0.5
        else:
            ax, cx = 1.0 / sx, (x0 + 0.5) / sx - 0.5
        parts["y"].append(_axis(h, ch, 1.0 / sy, (y0 + 0.5) / sy - 0.5, along_x=False))
        parts["x"].append(_axis(w, cw, ax, cx, along_x=True))
        rows = np.arange(ch) + y0
        cols = np.arange(cw)[::-1] + x0 if flip else np.arange(cw) + x0
        parts["ry"].append((rows >= 0) & (rows < sh))
        parts["rx"].append((cols >= 0) & (cols < sw))
        scales.append(float(scale))
        flips.append(bool(flip))
        zoomed.append(max(sy, sx) > 1.0)

    def stack(key: str, item: int | None = None) -> torch.Tensor:
        arrays = [p if item is None else p[item] for p in parts[key]]
        return torch.from_numpy(np.stack(arrays))

    return Geometry(
        stack("y", 0), stack("x", 0), stack("ry"), stack("rx"), stack("y", 1), stack("y", 2),
        stack("y", 3), stack("x", 1), stack("x", 2), stack("x", 3), scales, flips, zoomed,
    )  # fmt: skip


def _rows(x: torch.Tensor, index: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
    """``x`` [B, C, H, W] at rows ``index`` [B, R] -> [B, C, R, W]; with ``samples`` [B], ``x``
    is the whole cache [N, C, H, W] and sample i is ``x[samples[i]]`` (no full-size copy)."""
    if samples is not None:
        return x[samples[:, None], :, index].permute(0, 2, 1, 3)
    b, c, _, w = x.shape
    return torch.gather(x, 2, index[:, None, :, None].expand(b, c, index.shape[1], w))


def _cols(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` [B, C, R, W] at columns ``index`` [B, K] -> [B, C, R, K]."""
    b, c, r, _ = x.shape
    return torch.gather(x, 3, index[:, None, None, :].expand(b, c, r, index.shape[1]))


def inside(geo: Geometry) -> torch.Tensor:
    """[B, 1, ch, cw] True where the crop pixel lies in the resized image (else padding)."""
    return (geo.row_in[:, :, None] & geo.col_in[:, None, :])[:, None]


def warp_image(
    image: torch.Tensor, geo: Geometry, samples: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 [B, 3, ch, cw] grey levels (rounded, as cv2's uint8
    output), bilinear, padding 0."""
    top = _rows(image, geo.y0, samples).float()
    bottom = _rows(image, geo.y1, samples).float()
    rows = torch.lerp(top, bottom, geo.wy[:, None, :, None])
    left, right = _cols(rows, geo.x0), _cols(rows, geo.x1)
    out = torch.lerp(left, right, geo.wx[:, None, None, :]).round_()
    return out * inside(geo)


def warp_label(
    stored: torch.Tensor, geo: Geometry, samples: torch.Tensor | None = None
) -> torch.Tensor:
    """Nearest crop of stored labels [B, C, H, W] (any dtype; with ``samples``, rows of the
    whole cache) -> [B, C, ch, cw]."""
    return _cols(_rows(stored, geo.rows, samples), geo.cols)


def relabel(label: LabelKind, values: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Warped decoded values [B, C, ch, cw] (int64 ids or float32) -> the label after the warp:
    padding ``fill``, then scale power, flip sign, unit length, thinning (``_relabel``'s rules)."""
    fill = torch.tensor(label.fill, dtype=values.dtype, device=values.device)
    values = torch.where(inside(geo), values, fill)
    if label.integer:
        values = values[:, 0]
        if label.thin:
            values = _thin(values, geo.zoomed)
        return values
    power = label.scale_power
    if power:
        # the CPU rule: multiply by float32(s ** p), or divide by float32(s ** -p) when p < 0
        factors = np.float32([s ** abs(power) for s in geo.scales])
        factor = torch.from_numpy(factors).to(values.device)[:, None, None, None]
        values = values * factor if power > 0 else values / factor
    if label.flip_sign is not None and any(geo.flips):
        sign = torch.tensor(label.flip_sign, dtype=torch.float32, device=values.device)
        flips = torch.tensor(geo.flips, device=values.device)[:, None, None, None]
        values = torch.where(flips, values * sign[None, :, None, None], values)
    if label.unit_vector:
        values = renormalize(values)
    return values


def renormalize(vectors: torch.Tensor) -> torch.Tensor:
    """Non-zero vectors [B, C, H, W] to unit length, zero ones stay zero (the numpy rule)."""
    sq = (vectors * vectors).sum(1, keepdim=True)
    tiny = torch.tensor(1e-12, dtype=torch.float32, device=vectors.device)
    # sqrt in float64 rounds to the correctly rounded float32 sqrt (numpy's); torch's float32
    # CPU sqrt is off by an ulp at times
    root = torch.sqrt(torch.maximum(sq, tiny).double()).float()
    scale = 1.0 / root
    return vectors * torch.where(sq < tiny, torch.zeros_like(scale), scale)


def _thin(values: torch.Tensor, zoomed: list[bool]) -> torch.Tensor:
    """Binary maps [B, H, W] of zoomed-in samples thinned back to one pixel (unknown stays)."""
    if not any(zoomed):
        return values
    out = values.cpu().numpy().copy()
    for i in np.flatnonzero(zoomed):
        positive = out[i] == 1
        out[i][positive & ~thin(positive)] = 0
    return torch.from_numpy(out).to(values.device)


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Grey levels [B, 3, H, W] -> (x / 255 - mean) / std, as ``to_tensors``."""
    m = torch.tensor(mean, dtype=torch.float32, device=image.device)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32, device=image.device)[None, :, None, None]
    return (image * np.float32(1.0 / 255.0) - m) / s
