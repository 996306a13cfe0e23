"""albumentations' ``ColorJitter`` (the default ``data.photometric``) on whole batches in torch.

``TrainTransform`` applies, with probability 0.8, ``ColorJitter(brightness=j, contrast=j,
saturation=j, hue=min(j / 4, 0.5))``: factors uniform in [max(0, 1 - j), 1 + j], a hue shift
uniform in [-hue, hue] (a fraction of the colour circle), the four operations in a random order,
each clipped to [0, 255]: brightness ``x * b``; contrast ``x * c + mean_grey * (1 - c)``;
saturation ``x * s + grey * (1 - s)`` (grey = 0.299 R + 0.587 G + 0.114 B, cv2's); hue rotates H
in HSV. Here the same operations run in float32 on [B, 3, H, W] grey levels, with the parameters
drawn per sample from the sample's own generator (:func:`draw_jitter`); albumentations rounds to
uint8 after every operation, this does not (a difference below one grey level per step).
"""

from __future__ import annotations

import numpy as np
import torch

GREY = (0.299, 0.587, 0.114)


def draw_jitter(rng: np.random.Generator, strength: float) -> np.ndarray:
    """One sample's jitter: ``[applied, brightness, contrast, saturation, hue, order x 4]``."""
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    hue = min(strength / 4, 0.5)
    applied = float(rng.random() < 0.8)
    factors = [rng.uniform(lo, hi) for _ in range(3)] + [rng.uniform(-hue, hue)]
    return np.array([applied, *factors, *rng.permutation(4)], np.float64)


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GREY, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x * w).sum(1, keepdim=True)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x * f


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    return x * f + mean * (1 - f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x * f + _grey(x) * (1 - f)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(x / 255.0)
    return _hsv_to_rgb(torch.remainder(h + f, 1.0), s, v) * 255.0


OPS = (_brightness, _contrast, _saturation, _hue)


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, 3, H, W] in [0, 1] -> hue in [0, 1), saturation, value (each [B, 1, H, W])."""
    r, g, b = rgb.unbind(1)
    maxc, _ = rgb.max(1)
    minc, _ = rgb.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), maxc * 0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return h[:, None], s[:, None], maxc[:, None]


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv` (each [B, 1, H, W]) -> [B, 3, H, W]."""
    k = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype)[None, :, None, None]
    k = torch.remainder(k + h * 6.0, 6.0)
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """Jitter grey levels [B, 3, H, W] (float32, 0..255) by ``params`` [B, 9] (one
    :func:`draw_jitter` row per sample); operations batch over the samples that take them at
    each of the four positions."""
    applied = params[:, 0] > 0
    if not applied.any():
        return image
    out = image.clone()
    factors = torch.as_tensor(params[:, 1:5], dtype=torch.float32).to(image.device)
    order = params[:, 5:9].astype(np.int64)
    for position in range(4):
        for op in range(4):
            chosen = np.flatnonzero(applied & (order[:, position] == op))
            if chosen.size == 0:
                continue
            index = torch.from_numpy(chosen).to(image.device)
            f = factors[index, op][:, None, None, None]
            out[index] = OPS[op](out[index], f).clamp_(0.0, 255.0)
    return out
