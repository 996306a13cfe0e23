"""The values of the ``cvmtl`` 16-bit PNG encoding of depth and normal maps (the arrays only;
files are :mod:`cvmtl.data.io`'s). A leaf: the dataset writers and readers in ``cvmtl.data`` and
the prediction files of the depth / normal task specs (:mod:`cvmtl.tasks`) share it.

Depth: ``depth_scale`` units per metre (default 1000 = millimetres), 0 = invalid. Normals: value
= (n + 1) / 2 * max per axis (max = 65535 for 16-bit, 255 for 8-bit files), all-zero = invalid.
"""

from __future__ import annotations

import numpy as np

DEPTH_SCALE = 1000.0  # PNG units per metre


def encode_depth(depth: np.ndarray, depth_scale: float = DEPTH_SCALE) -> np.ndarray:
    """Metres -> uint16 PNG units; non-finite and non-positive -> 0 (invalid), clipped at max."""
    depth = np.asarray(depth, dtype=np.float64)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    return np.clip(np.round(depth * depth_scale), 0, 65535).astype(np.uint16)


def encode_normals(normal: np.ndarray) -> np.ndarray:
    """Unit normals HxWx3 -> uint16 RGB (n + 1) / 2 * 65535; zero or non-finite -> all-zero."""
    normal = np.asarray(normal, dtype=np.float64)
    valid = np.isfinite(normal).all(axis=2) & (np.abs(normal).sum(axis=2) > 0)
    value = np.clip(np.round((np.nan_to_num(normal) + 1.0) * 0.5 * 65535.0), 0, 65535)
    # A valid normal never encodes to (0, 0, 0): that would need n = (-1, -1, -1).
    return np.where(valid[..., None], value, 0).astype(np.uint16)


def decode_normals(raw: np.ndarray, max_value: float, renormalize: bool = True) -> np.ndarray:
    """Map stored RGB values v in [0, max_value] to n = 2 v / max_value - 1; all-zero = invalid.

    With ``renormalize`` valid normals are scaled to unit length (worth it for 8-bit values; the
    16-bit quantization error, ~2e-5, is below anything a metric sees).
    """
    normal = raw.astype(np.float32)
    normal *= np.float32(2.0 / max_value)
    normal -= np.float32(1.0)
    if renormalize:
        sq = np.einsum("...c,...c->...", normal, normal)
        scale = np.float32(1.0) / np.sqrt(np.maximum(sq, np.float32(1e-12)))
        scale[sq < 1e-6] = 0
        normal *= scale[..., None]
    normal[~raw.any(axis=2)] = 0
    return normal
