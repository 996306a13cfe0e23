"""The ground truth | prediction | error tiles of one task in a sample panel.

:mod:`cvmtl.vis.panels` lays the rows out; here each task draws its own tiles and colorbars.
``depth_range`` is the colour scale that depth ground truth and prediction share (the contact
sheet uses it too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cvmtl.vis.colorize import _np, angle_error_deg, colorize_normal, colorize_seg

NORMAL_ERR_MAX = 45.0  # degrees at the top of the angle-error colour scale


def _hw(x: Any) -> np.ndarray:
    """A depth map [1,H,W] or [H,W] (tensor or array) as float32 [H,W]."""
    a = _np(x).astype(np.float32)
    return a[0] if a.ndim == 3 else a


def depth_range(sample: dict[str, Any]) -> tuple[float, float]:
    """Colour range shared by ground truth and prediction: the 1st..99th percentile of both."""
    vals = [_hw(sample["pred"]["depth"]).ravel()]
    if sample.get("has", {}).get("depth", True):
        gt = _hw(sample["target"]["depth"])
        vals.append(gt[gt > 0])
    v = np.concatenate(vals)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99])
    return float(lo), float(max(hi, lo + 1e-3))


def seg_tiles(
    axes: np.ndarray, gt: Any, pred: Any, palette: list[list[int]], labeled: bool
) -> set[int]:
    """Label colours; the error tile is grey where right, red where wrong, black where ignored."""
    gt_ax, pred_ax, err_ax = axes
    g, p = _np(gt).astype(np.int64), _np(pred).astype(np.int64)
    present = set(np.unique(p).tolist()) | set(np.unique(g[g != 255]).tolist())
    pred_ax.imshow(colorize_seg(p, palette))
    if labeled:
        gt_ax.imshow(colorize_seg(g, palette))
        err = np.zeros((*g.shape, 3), np.uint8)  # ignore: black
        err[(g != 255) & (g == p)] = (90, 90, 90)
        err[(g != 255) & (g != p)] = (230, 40, 40)
        err_ax.imshow(err)
        err_ax.set_xlabel("red: wrong, grey: right", fontsize=8)
    return present


def depth_tiles(
    fig: Any, axes: np.ndarray, caxes: np.ndarray, sample: dict[str, Any], labeled: bool
) -> None:
    """GT and prediction on one colour scale (see depth_range); |error| where GT is valid."""
    gt_ax, pred_ax, err_ax = axes
    lo, hi = depth_range(sample)
    p = _hw(sample["pred"]["depth"])
    im = pred_ax.imshow(np.ma.masked_less_equal(p, 0), cmap=_cmap("turbo"), vmin=lo, vmax=hi)
    if labeled:
        g = _hw(sample["target"]["depth"])
        gt_ax.imshow(np.ma.masked_less_equal(g, 0), cmap=_cmap("turbo"), vmin=lo, vmax=hi)
        e = np.ma.masked_where(g <= 0, np.abs(p - g))
        eim = err_ax.imshow(e, cmap=_cmap("magma"), vmin=0.0)
        _colorbar(fig, eim, caxes[1], "|error| [m]")
    _colorbar(fig, im, caxes[0], "depth [m]")


def normal_tiles(
    fig: Any, axes: np.ndarray, caxes: np.ndarray, gt: Any, pred: Any, labeled: bool
) -> None:
    """Normals as RGB; the error tile is the angle between them, capped at NORMAL_ERR_MAX."""
    gt_ax, pred_ax, err_ax = axes
    pred_ax.imshow(colorize_normal(pred))
    if labeled:
        gt_ax.imshow(colorize_normal(gt))
        ang, valid = angle_error_deg(pred, gt)
        a = np.ma.masked_where(~valid, ang)
        eim = err_ax.imshow(a, cmap=_cmap("magma"), vmin=0.0, vmax=NORMAL_ERR_MAX)
        _colorbar(fig, eim, caxes[1], "angle error [°]", extend="max")


def _colorbar(fig: Any, mappable: Any, cax: Any, label: str, extend: str = "neither") -> None:
    """Draw a labelled colorbar in a reserved (until now hidden) colorbar slot."""
    cax.set_axis_on()
    bar = fig.colorbar(mappable, cax=cax, extend=extend)
    bar.set_label(label, fontsize=9)
    bar.ax.tick_params(labelsize=8)


def _cmap(name: str):
    import matplotlib

    # invalid pixels (masked) black, as in colorize.py
    return matplotlib.colormaps[name].with_extremes(bad="black")
