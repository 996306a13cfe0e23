"""The ground truth | prediction | error tiles of one task in a sample panel.

:mod:`cvmtl.vis.panels` lays the rows out; here each view kind (:func:`cvmtl.vis.task_view.
view_kind`) draws its tiles and colorbars: class maps (palette colours, right / wrong map),
binary probability maps (grey, |error|), scalar maps (one colour range for ground truth and
prediction, |error|) and vector maps (the task's colours, angle or length of the error).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cvmtl.tasks import TaskSpec
from cvmtl.tasks.colorize import angle_error_deg, colorize_seg
from cvmtl.tasks.spec import Info
from cvmtl.vis.task_view import (
    BINARY_MAP,
    CLASS_MAP,
    SCALAR_MAP,
    UNKNOWN_RGB,
    as_map,
    as_vectors,
    known_mask,
    scalar_range,
    view_kind,
    with_unit,
)

NORMAL_ERR_MAX = 45.0  # degrees at the top of the angle-error colour scale
UNKNOWN = tuple(c / 255 for c in UNKNOWN_RGB)  # binary ground truth without a label


def task_tiles(
    fig: Any, axes: np.ndarray, caxes: np.ndarray, spec: TaskSpec, gt: Any, pred: Any,
    info: Info, labeled: bool,
) -> set[int]:  # fmt: skip
    """Draw one task's tiles by its view kind; returns the class ids a class map shows."""
    kind = view_kind(spec)
    if kind == CLASS_MAP:
        return seg_tiles(axes, gt, pred, info["palette"], labeled)
    if kind == BINARY_MAP:
        binary_tiles(fig, axes, caxes, gt, pred, labeled)
    elif kind == SCALAR_MAP:
        scalar_tiles(fig, axes, caxes, spec, gt if labeled else None, pred)
    else:
        vector_tiles(fig, axes, caxes, spec, gt, pred, info, labeled)
    return set()


def seg_tiles(
    axes: np.ndarray, gt: Any, pred: Any, palette: list[list[int]], labeled: bool
) -> set[int]:
    """Label colours; the error tile is grey where right, red where wrong, black where ignored."""
    gt_ax, pred_ax, err_ax = axes
    g, p = as_map(gt).astype(np.int64), as_map(pred).astype(np.int64)
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


def binary_tiles(
    fig: Any, axes: np.ndarray, caxes: np.ndarray, gt: Any, pred: Any, labeled: bool
) -> None:
    """Probabilities in grey (black 0, white 1); the error is |probability - label|."""
    gt_ax, pred_ax, err_ax = axes
    p = as_map(pred).astype(np.float32)
    im = pred_ax.imshow(p, cmap=_cmap("gray", UNKNOWN), vmin=0.0, vmax=1.0)
    if labeled:
        g = as_map(gt).astype(np.int64)
        unknown = (g != 0) & (g != 1)
        gt_ax.imshow(np.ma.masked_where(unknown, g), cmap=_cmap("gray", UNKNOWN), vmin=0,
                     vmax=1)  # fmt: skip
        gt_ax.set_xlabel("blue: unknown", fontsize=8)
        e = np.ma.masked_where(unknown, np.abs(p - g))
        eim = err_ax.imshow(e, cmap=_cmap("magma"), vmin=0.0, vmax=1.0)
        _colorbar(fig, eim, caxes[1], "|error|")
    _colorbar(fig, im, caxes[0], "probability")


def scalar_tiles(
    fig: Any, axes: np.ndarray, caxes: np.ndarray, spec: TaskSpec, gt: Any | None, pred: Any
) -> None:
    """GT and prediction on one colour scale (see scalar_range); |error| where GT is labelled.
    ``gt`` None: no label."""
    gt_ax, pred_ax, err_ax = axes
    lo, hi = scalar_range(spec, pred, gt)
    p = as_map(pred).astype(np.float32)
    shown = ~np.isfinite(p) | ((p <= 0) if spec.label.scale_power != 0 else False)
    im = pred_ax.imshow(np.ma.masked_where(shown, p), cmap=_cmap("turbo"), vmin=lo, vmax=hi)
    if gt is not None:
        g = as_map(gt).astype(np.float32)
        known = known_mask(spec, g)
        gt_ax.imshow(np.ma.masked_where(~known, g), cmap=_cmap("turbo"), vmin=lo, vmax=hi)
        e = np.ma.masked_where(~known, np.abs(p - g))
        eim = err_ax.imshow(e, cmap=_cmap("magma"), vmin=0.0)
        _colorbar(fig, eim, caxes[1], with_unit("|error|", spec))
    _colorbar(fig, im, caxes[0], with_unit(spec.title or spec.name, spec))


def vector_tiles(
    fig: Any, axes: np.ndarray, caxes: np.ndarray, spec: TaskSpec, gt: Any, pred: Any,
    info: Info, labeled: bool,
) -> None:  # fmt: skip
    """The task's colours; the error tile is the angle between unit vectors (capped at
    NORMAL_ERR_MAX), or the length of the difference of other vectors."""
    gt_ax, pred_ax, err_ax = axes
    c = spec.label.channels
    p = as_vectors(pred, c)
    pred_ax.imshow(spec.colorize(p, info))
    if not labeled:
        return
    g = as_vectors(gt, c)
    gt_ax.imshow(spec.colorize(g, info))
    if spec.label.unit_vector and c == 3:
        ang, valid = angle_error_deg(p, g)
        eim = err_ax.imshow(np.ma.masked_where(~valid, ang), cmap=_cmap("magma"), vmin=0.0,
                            vmax=NORMAL_ERR_MAX)  # fmt: skip
        _colorbar(fig, eim, caxes[1], "angle error [°]", extend="max")
    else:
        err = np.linalg.norm(p - g, axis=2)
        eim = err_ax.imshow(np.ma.masked_where(~known_mask(spec, g), err), cmap=_cmap("magma"),
                            vmin=0.0)  # fmt: skip
        _colorbar(fig, eim, caxes[1], with_unit("|error|", spec))


def _colorbar(fig: Any, mappable: Any, cax: Any, label: str, extend: str = "neither") -> None:
    """Draw a labelled colorbar in a reserved (until now hidden) colorbar slot."""
    cax.set_axis_on()
    bar = fig.colorbar(mappable, cax=cax, extend=extend)
    bar.set_label(label, fontsize=9)
    bar.ax.tick_params(labelsize=8)


def _cmap(name: str, bad: Any = "black"):
    import matplotlib

    # invalid pixels (masked) black, as in colorize.py
    return matplotlib.colormaps[name].with_extremes(bad=bad)
