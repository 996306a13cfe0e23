"""Numpy colorizers for dense maps (uint8 HxWx3 out); torch tensors are accepted and converted.

Invalid pixels (seg ``ignore_index``, depth 0, all-zero normals) are black in every map.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

Array = Any  # numpy array or torch tensor


def _np(x: Array) -> np.ndarray:
    """numpy view of a numpy array or a torch tensor (detached, on the CPU, float32 if float)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _squeeze_hw(x: np.ndarray, name: str) -> np.ndarray:
    """[H,W] from [H,W], [1,H,W] or [H,W,1]."""
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    elif x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected an HxW map, got shape {x.shape}")
    return x


def _hwc3(x: Array, name: str) -> np.ndarray:
    """[H,W,3] float32 from a normal map: torch [3,H,W]; numpy [H,W,3] (or [3,H,W])."""
    is_torch = hasattr(x, "detach")
    a = _np(x).astype(np.float32)
    if a.ndim == 3 and a.shape[0] == 3 and (is_torch or a.shape[2] != 3):
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{name}: expected a 3xHxW or HxWx3 normal map, got shape {a.shape}")
    return a


def default_palette(num_classes: int) -> list[list[int]]:
    """Distinct colours for ``num_classes`` classes: the PASCAL VOC bit-interleaving palette
    shifted by one, so that no class is black (black means ignore / invalid)."""
    palette = []
    for i in range(1, num_classes + 1):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def colorize_seg(
    labels: Array, palette: list[list[int]] | None = None, ignore_index: int = 255
) -> np.ndarray:
    """Class map [H,W] -> RGB; ``ignore_index`` is black. A label without a palette entry is a
    ValueError (never wrapped onto another class's colour)."""
    lab = _squeeze_hw(_np(labels), "colorize_seg").astype(np.int64)
    ignore = lab == ignore_index
    top = int(lab[~ignore].max()) + 1 if (~ignore).any() else 0
    if palette is None:
        palette = default_palette(max(top, 1))
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    bad = (~ignore) & ((lab < 0) | (lab >= len(pal)))
    if bad.any():
        raise ValueError(
            f"colorize_seg: label {int(lab[bad][0])} has no colour (palette has {len(pal)})"
        )
    out = pal[np.where(ignore, 0, lab)]
    out[ignore] = 0
    return out


@lru_cache(maxsize=8)
def _lut(cmap: str) -> np.ndarray:
    """256x3 uint8 lookup table of a matplotlib colormap."""
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r} (try turbo, magma, viridis)") from None
    return (cm(np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def apply_cmap(values: Array, valid: np.ndarray, vmin: float, vmax: float, cmap: str) -> np.ndarray:
    """Map values in [vmin, vmax] (clipped) through ``cmap``; invalid pixels black."""
    v = _np(values).astype(np.float32)
    span = max(vmax - vmin, 1e-12)
    idx = np.clip((v - vmin) / span * 255.0 + 0.5, 0, 255)
    idx = np.nan_to_num(idx, nan=0.0).astype(np.uint8)
    out = _lut(cmap)[idx]
    out[~valid] = 0
    return out


def colorize_depth(
    depth: Array, vmin: float | None = None, vmax: float | None = None, cmap: str = "turbo"
) -> np.ndarray:
    """Depth [H,W] (or [1,H,W]) metres -> RGB; 0 (invalid) black. Pass the same ``vmin`` /
    ``vmax`` to every map of a panel so that colours compare; by default the valid range."""
    d = _squeeze_hw(_np(depth), "colorize_depth").astype(np.float32)
    valid = np.isfinite(d) & (d > 0)
    if vmin is None:
        vmin = float(d[valid].min()) if valid.any() else 0.0
    if vmax is None:
        vmax = float(d[valid].max()) if valid.any() else 1.0
    return apply_cmap(d, valid, vmin, vmax, cmap)


def colorize_normal(normal: Array) -> np.ndarray:
    """Normals (torch [3,H,W] or numpy [H,W,3]) -> RGB as ``(n + 1) / 2 * 255``; all-zero black."""
    n = _hwc3(normal, "colorize_normal")
    invalid = ~np.any(n != 0, axis=2)
    out = np.clip(np.rint((n + 1.0) * 0.5 * 255.0), 0, 255).astype(np.uint8)
    out[invalid] = 0
    return out


def colorize_depth_error(
    pred: Array, target: Array, vmax: float | None = None, cmap: str = "magma"
) -> np.ndarray:
    """|pred - target| in metres on valid targets (> 0) -> RGB over [0, vmax] (default: the
    largest error); invalid black."""
    p = _squeeze_hw(_np(pred), "colorize_depth_error").astype(np.float32)
    g = _squeeze_hw(_np(target), "colorize_depth_error").astype(np.float32)
    valid = np.isfinite(g) & (g > 0)
    err = np.abs(p - g)
    if vmax is None:
        vmax = float(err[valid].max()) if valid.any() else 1.0
    return apply_cmap(err, valid, 0.0, vmax, cmap)


def angle_error_deg(pred: Array, target: Array) -> tuple[np.ndarray, np.ndarray]:
    """(angle in degrees [H,W], valid mask) between normal maps; prediction normalized."""
    p = _hwc3(pred, "angle_error").astype(np.float64)
    g = _hwc3(target, "angle_error").astype(np.float64)
    valid = np.any(g != 0, axis=2)
    p = p / np.maximum(np.linalg.norm(p, axis=2, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=2, keepdims=True), 1e-12)
    cross = np.linalg.norm(np.cross(p, g), axis=2)
    ang = np.degrees(np.arctan2(cross, np.sum(p * g, axis=2)))
    return ang.astype(np.float32), valid


def colorize_angle_error(
    pred: Array, target: Array, vmax_deg: float = 45.0, cmap: str = "magma"
) -> np.ndarray:
    """Angle between predicted and target normals over [0, vmax_deg] -> RGB; invalid black."""
    ang, valid = angle_error_deg(pred, target)
    return apply_cmap(ang, valid, 0.0, vmax_deg, cmap)
