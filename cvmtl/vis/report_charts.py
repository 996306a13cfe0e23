"""Charts of the evaluation report, each rendered to PNG bytes with matplotlib's Agg canvas.

``Figure`` + ``FigureCanvasAgg`` instead of pyplot: no global figure state and no GUI backend,
so reports render the same in a headless job, a test or a notebook.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cvmtl.tasks import TaskSpec, get_task
from cvmtl.tasks.spec import DEPTH
from cvmtl.vis.task_view import (
    CLASS_MAP,
    SCALAR_MAP,
    canonical,
    colour_pair,
    error_rgb,
    known_mask,
    ordered_tasks,
    task_info,
    view_kind,
)


def chart_figure(width: float = 8.0, height: float = 3.6) -> Any:
    """A matplotlib figure on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes on white."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def iou_chart(
    iou_per_class: Sequence[float | None], class_names: Sequence[str], title: str = "Segmentation"
) -> bytes:
    """Horizontal bars of IoU (%) per class; a class absent from the split is marked n/a."""
    n = len(iou_per_class)
    names = [str(class_names[i]) if i < len(class_names) else f"class {i}" for i in range(n)]
    values = [float("nan") if v is None else float(v) for v in iou_per_class]
    fig = chart_figure(10.0, 0.9 + 0.28 * n)
    ax = fig.add_subplot()
    y = np.arange(n)
    ax.barh(y, [0.0 if math.isnan(v) else v for v in values], color="#4c72b0")
    for i, v in enumerate(values):
        ax.text(1 if math.isnan(v) else v + 1, i, "n/a" if math.isnan(v) else f"{v:.1f}",
                va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    ax.set_title(f"{title}: IoU per class")
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def delta_chart(per_metric: dict[str, float]) -> bytes:
    """Bars of delta_m per metric (%, positive = better than the single-task baseline)."""
    names = list(per_metric)
    values = [float(per_metric[k]) for k in names]
    fig = chart_figure(10.0, 0.9 + 0.3 * len(names))
    ax = fig.add_subplot()
    colors = ["#55a868" if v >= 0 else "#c44e52" for v in values]
    ax.barh(np.arange(len(names)), values, color=colors)
    ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel("relative change vs single-task baseline (%, + = better)")
    ax.set_title("delta_m per metric")
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def depth_bins_chart(bins: dict[str, list]) -> bytes:
    """Mean absolute depth error per ground-truth depth bin, with the pixel share per bin."""
    edges = np.asarray(bins["edges"], dtype=float)
    count = np.asarray(bins["count"], dtype=float)
    err = np.asarray([np.nan if v is None else v for v in bins["abs_err"]], dtype=float)
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = chart_figure(10.0, 4.0)
    ax = fig.add_subplot()
    share = count / max(count.sum(), 1.0) * 100
    ax.bar(centers, share, width=width * 0.9, color="#dddddd", label="pixels (%)")
    ax.set_ylabel("share of valid pixels (%)")
    ax.set_xlabel("ground-truth depth (m)")
    ax2 = ax.twinx()
    ax2.plot(centers, err, "o-", color="#c44e52", label="mean abs err (m)")
    ax2.set_ylabel("mean absolute error (m)")
    ax2.set_ylim(bottom=0)
    used = np.nonzero(count > 0)[0]
    if len(used):  # the range the split covers, not the whole eval range
        ax.set_xlim(edges[0], edges[min(used[-1] + 2, len(edges) - 1)])
    ax.set_title("Depth error by distance")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8,
              framealpha=0.9)  # fmt: skip
    return png_bytes(fig)


def angle_chart(hist: dict[str, list], max_deg: float = 90.0) -> bytes:
    """Histogram of the normal angle error (pixel %) with its cumulative curve and the 11.25 /
    22.5 / 30 degree thresholds; errors above ``max_deg`` are summed in the last bar (the full
    0-180 range is shown instead when over 5% of the pixels lie beyond it, e.g. early on)."""
    edges = np.asarray(hist["edges"], dtype=float)
    count = np.asarray(hist["count"], dtype=float)
    total = max(count.sum(), 1.0)
    if count[edges[:-1] >= max_deg].sum() > 0.05 * total:
        max_deg = float(edges[-1])
    keep = edges[:-1] < max_deg
    shown = count[keep].copy()
    if len(shown):
        shown[-1] += count[~keep].sum()
    left, width = edges[:-1][keep], np.diff(edges)[keep]
    fig = chart_figure(10.0, 4.0)
    ax = fig.add_subplot()
    ax.bar(left + width / 2, shown / total * 100, width=width, color="#4c72b0")  # left edges
    beyond = edges[-1] > max_deg
    ax.set_xlabel("angle error (degrees)" + (f"; last bar: >= {left[-1]:g}" if beyond else ""))
    ax.set_ylabel("pixels (%)")
    ax2 = ax.twinx()
    ax2.plot(edges[1:][keep], np.cumsum(count)[keep] / total * 100, color="#dd8452")
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("cumulative (%)", color="#dd8452")
    for t in (11.25, 22.5, 30.0):
        ax.axvline(t, color="gray", ls="--", lw=0.8)
    ax.set_title("Surface normals: angle error histogram")
    return png_bytes(fig)


def denormalize(image: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalized [3,H,W] tensor -> uint8 HxWx3 RGB."""
    img = image.float().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def sample_grid(
    samples: list[dict[str, Any]],
    mean: Sequence[float],
    std: Sequence[float],
    palette: list[list[int]] | None,
    max_depth: float,
) -> bytes:
    """One row per sample: RGB, then ground truth | prediction (| error, for all but class maps)
    for every task. Depth shares one scale (0..``max_depth``), other scalars one per sample."""
    cols: list[tuple[str, Any]] = [("image", None)]
    tasks = ordered_tasks(samples[0]["pred"]) if samples else []
    for task in tasks:
        cols += [(f"{task} GT", task), (f"{task} pred", task)]
        if view_kind(get_task(task)) != CLASS_MAP:
            cols.append((f"{task} error", task))
    rows = len(samples)
    h, w = samples[0]["image"].shape[-2:] if samples else (1, 1)
    cell = 1.9  # inches per panel; rows follow the image aspect so no space is wasted
    fig = chart_figure(cell * len(cols), (cell * h / w + 0.05) * max(rows, 1) + 0.35)
    axes = fig.subplots(max(rows, 1), len(cols), squeeze=False)
    for r, s in enumerate(samples):
        panels = [denormalize(s["image"], mean, std)]
        for task in tasks:
            panels += _task_panels(get_task(task), s, palette, max_depth)
        for c, (title, _) in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(panels[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    return png_bytes(fig)


def scalar_span(spec: TaskSpec, max_depth: float) -> tuple[float, float] | None:
    """The fixed colour scale of a scalar kind in reports (depth: 0..max_depth), else None."""
    return (0.0, float(max_depth)) if spec.label == DEPTH else None


def _task_panels(spec: TaskSpec, s: dict[str, Any], palette: Any, max_depth: float) -> list:
    """Ground truth, prediction (shown where the ground truth is labelled) and error tiles."""
    g, p = s["target"][spec.name], s["pred"][spec.name]
    kind = view_kind(spec)
    span = scalar_span(spec, max_depth) if kind == SCALAR_MAP else None
    gt_rgb, pred_rgb = colour_pair(spec, g, p, task_info(spec, [], palette), span)
    if kind == SCALAR_MAP:
        pred_rgb[~known_mask(spec, canonical(spec, g))] = 0
    err = error_rgb(spec, g, p, None if span is None else (span[1] - span[0]) / 4)
    return [gt_rgb, pred_rgb] + ([] if err is None else [err])
