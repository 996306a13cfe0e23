"""How a task's maps are shown, read from its :class:`~cvmtl.tasks.TaskSpec` alone.

Panels, contact sheets, report grids and the prediction writer never name a task: they ask
:func:`view_kind` (class map, binary probability map, scalar map or vector map, from the label
kind and the head's channel count), :func:`task_info` (the palette and class names the task
uses), :func:`unit` and :func:`stat_line`, so that a task a user registers gets the same tiles
as the built-in task of its label kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cvmtl.tasks import TASKS, TaskSpec, get_task
from cvmtl.tasks.colorize import (
    _np,
    angle_error_deg,
    apply_cmap,
    colorize_seg,
    default_palette,
)
from cvmtl.tasks.spec import DEPTH, DISPARITY, Info

CLASS_MAP, BINARY_MAP, SCALAR_MAP, VECTOR_MAP = "classes", "binary", "scalar", "vector"
# units of the built-in scalar label kinds; a task can name its own with extras["unit"]
LABEL_UNITS = {DEPTH: "m", DISPARITY: "px"}
UNKNOWN_RGB = (38, 77, 204)  # binary ground truth without a label (0 and 1 are grey levels)


def view_kind(spec: TaskSpec) -> str:
    """``classes`` (integer labels, one logit per class), ``binary`` (integer 0/1 labels and a
    single logit: a probability map), ``scalar`` (one float per pixel) or ``vector``."""
    if spec.label.integer:
        return BINARY_MAP if spec.channels == 1 else CLASS_MAP
    return SCALAR_MAP if spec.label.channels == 1 else VECTOR_MAP


def task_info(task: str | TaskSpec, classes: list[str], palette: list[list[int]]) -> Info:
    """``{"classes", "palette"}`` for ``task``: the dataset's, or the task's own where it has
    its own classes (``spec.classes``; palette ``extras["palette"]`` or a default one)."""
    spec = get_task(task) if isinstance(task, str) else task
    if spec.classes is None:
        return {"classes": list(classes), "palette": palette}
    own = spec.extras.get("palette") or default_palette(len(spec.classes))
    return {"classes": list(spec.classes), "palette": [list(c) for c in own]}


def unit(spec: TaskSpec) -> str:
    """The unit of a scalar task's values ('' when it has none)."""
    return str(spec.extras.get("unit", LABEL_UNITS.get(spec.label, "")))


def with_unit(text: str, spec: TaskSpec) -> str:
    u = unit(spec)
    return f"{text} [{u}]" if u else text


def as_map(x: Any) -> np.ndarray:
    """A per-pixel map [H,W], [1,H,W] or [H,W,1] (tensor or array) as [H,W] (dtype kept)."""
    a = _np(x)
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0]
    if a.ndim == 3 and a.shape[2] == 1:
        return a[..., 0]
    return a


def as_vectors(x: Any, channels: int) -> np.ndarray:
    """A vector map [C,H,W] (a target, a raw output) or [H,W,C] (a prediction) as [H,W,C]."""
    a = _np(x).astype(np.float32)
    if a.ndim == 3 and a.shape[0] == channels and a.shape[2] != channels:
        a = a.transpose(1, 2, 0)
    return a


def canonical(spec: TaskSpec, x: Any) -> np.ndarray:
    """``x`` in the layout the spec's summary / colorize take: [H,W] maps, [H,W,C] vectors."""
    if view_kind(spec) == VECTOR_MAP:
        return as_vectors(x, spec.label.channels)
    return as_map(x)


def stat_line(task: str, pred: Any, target: Any) -> str | None:
    """The task's one-line sample statistic (``spec.summary``), None without one."""
    spec = get_task(task)
    if spec.summary is None:
        return None
    return spec.summary(canonical(spec, pred), canonical(spec, target))


def known_mask(spec: TaskSpec, target: np.ndarray) -> np.ndarray:
    """Pixels of a canonical target that carry a label (not the label kind's fill)."""
    if target.ndim == 3:  # vectors: all-fill means no label
        return np.any(target != spec.label.fill, axis=2)
    return np.isfinite(target) & (target != spec.label.fill)


def scalar_range(spec: TaskSpec, pred: Any, target: Any | None) -> tuple[float, float]:
    """Colour range a scalar task's ground truth and prediction share: the 1st..99th percentile
    of both (labelled target pixels only). Depth-like kinds (a zoom changes the values) show
    positive values only, as 0 means no measurement there."""
    vals = [as_map(pred).astype(np.float32).ravel()]
    if target is not None:
        g = as_map(target).astype(np.float32)
        vals.append(g[known_mask(spec, g)])
    v = np.concatenate(vals)
    keep = np.isfinite(v) & ((v > 0) if spec.label.scale_power != 0 else True)
    v = v[keep]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99])
    return float(lo), float(max(hi, lo + 1e-3))


def ordered_tasks(names: Any) -> list[str]:
    """The registered tasks among ``names``, in registry order (seg, depth, normal, ...)."""
    return [t for t in TASKS if t in names]


def grey_rgb(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as grey RGB uint8; pixels not ``known`` in UNKNOWN_RGB."""
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0)
    out = np.repeat((v * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    out[~known] = UNKNOWN_RGB
    return out


def scalar_valid(spec: TaskSpec, x: np.ndarray) -> np.ndarray:
    """Pixels of a scalar map worth a colour: finite, and positive for depth-like kinds."""
    return np.isfinite(x) & ((x > 0) if spec.label.scale_power != 0 else True)


def colour_pair(
    spec: TaskSpec, gt: Any, pred: Any, info: Info, span: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) as RGB uint8 tiles; scalars share ``span`` (default
    :func:`scalar_range`), binary maps are grey."""
    kind = view_kind(spec)
    g, p = canonical(spec, gt), canonical(spec, pred)
    if kind == CLASS_MAP:  # the legend's colours
        return colorize_seg(g, info["palette"]), colorize_seg(p, info["palette"])
    if kind == BINARY_MAP:
        return grey_rgb(g, (g == 0) | (g == 1)), grey_rgb(p, np.isfinite(p))
    if kind == SCALAR_MAP:
        lo, hi = span or scalar_range(spec, p, g)
        gv = known_mask(spec, g) & scalar_valid(spec, g)
        return (apply_cmap(g, gv, lo, hi, "turbo"),
                apply_cmap(p, scalar_valid(spec, p), lo, hi, "turbo"))  # fmt: skip
    return spec.colorize(g, info), spec.colorize(p, info)


def error_rgb(spec: TaskSpec, gt: Any, pred: Any, vmax: float | None = None) -> np.ndarray | None:
    """The error tile as RGB (magma; unlabelled black): |error| of binary / scalar maps (over
    0..``vmax``, default the largest), the angle of unit vectors (0..45 degrees), the length of
    the difference of other vectors; None for class maps."""
    kind = view_kind(spec)
    if kind == CLASS_MAP:
        return None
    g, p = canonical(spec, gt), canonical(spec, pred).astype(np.float32)
    if kind == VECTOR_MAP and spec.label.unit_vector and spec.label.channels == 3:
        ang, valid = angle_error_deg(p, g)
        return apply_cmap(ang, valid, 0.0, 45.0 if vmax is None else vmax, "magma")
    if kind == VECTOR_MAP:
        err, known = np.linalg.norm(p - g, axis=2), known_mask(spec, g)
    else:
        known = ((g == 0) | (g == 1)) if kind == BINARY_MAP else known_mask(spec, g)
        err = np.abs(p - g.astype(np.float32))
    if vmax is None:
        vmax = float(err[known].max()) if known.any() else 1.0
    return apply_cmap(err, known, 0.0, vmax, "magma")
