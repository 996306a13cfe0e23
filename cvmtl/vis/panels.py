"""Per-sample panels (image | ground truth, prediction, error per task) and a contact sheet.

Samples are the dicts :func:`cvmtl.engine.evaluator.evaluate` collects (``collect=N``): CPU
tensors ``image`` [3,H,W] normalized, ``target`` / ``pred`` {task: map}, ``has`` {task: bool},
``meta`` {id, ...}. Each task's row is drawn by its view kind (:mod:`cvmtl.vis.task_view`:
class map, binary probability map, scalar map, vector map), so a registered task of any of
these label kinds gets its tiles. Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cvmtl.tasks import get_task
from cvmtl.tasks.colorize import _np
from cvmtl.vis.panel_tiles import task_tiles
from cvmtl.vis.task_view import (
    CLASS_MAP,
    colour_pair,
    ordered_tasks,
    stat_line,
    task_info,
    view_kind,
)


def task_title(task: str) -> str:
    """A task's display name (``spec.title``, else its name)."""
    return get_task(task).title or task


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; must not need a display
    import matplotlib.pyplot as plt

    return plt


def denormalize(image: Any, mean: list[float], std: list[float]) -> np.ndarray:
    """Normalized [3,H,W] -> RGB uint8 HxWx3."""
    img = _np(image).astype(np.float32).transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def sample_stats(sample: dict[str, Any]) -> dict[str, str]:
    """One short line per labeled task (its ``spec.summary``: pixel accuracy, mean abs depth
    error, mean angle, ...)."""
    stats = {}
    has, tgt, pred = sample.get("has", {}), sample["target"], sample["pred"]
    for task in ordered_tasks(pred):
        if has.get(task, True) and task in tgt:
            line = stat_line(task, pred[task], tgt[task])
            if line:
                stats[task] = line
    return stats


def sample_panel(
    sample: dict[str, Any],
    classes: list[str],
    palette: list[list[int]],
    mean: list[float],
    std: list[float],
    title: str = "",
    cell_inches: float = 2.6,
) -> Any:
    """A matplotlib Figure: one row per task (ground truth | prediction | error), the image in
    the first column, a class legend, colour-scale and error colorbars (tiles by the task's
    view kind, :mod:`cvmtl.vis.panel_tiles`)."""
    plt = _plt()
    tasks = ordered_tasks(sample["pred"])
    image = denormalize(sample["image"], mean, std)
    h, w = image.shape[:2]
    aspect = h / w
    fig = plt.figure(
        figsize=(4 * cell_inches + 2.0, len(tasks) * cell_inches * aspect + 1.3),
        layout="constrained",
    )
    axes, caxes = _panel_axes(fig, len(tasks))
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("image", fontsize=10)
    stats = sample_stats(sample)
    if len(tasks) > 1:
        text = "\n".join(f"{task_title(t)}:\n  {s}" for t, s in stats.items()) or "no labels"
        axes[1, 0].text(0.02, 0.95, text, va="top", ha="left", fontsize=9, family="monospace")
    shown: dict[str, set[int]] = {}
    for r, task in enumerate(tasks):
        info = task_info(task, classes, palette)
        present = _task_row(fig, axes[r, 1:], caxes[r], sample, task, info, first=r == 0)
        if view_kind(get_task(task)) == CLASS_MAP and present:
            shown[task] = present
    if shown:
        _class_legend(fig, shown, classes, palette)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _panel_axes(fig: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile axes [rows, 4] (image | GT | prediction | error) without ticks or frame, then
    colorbar slots [rows, 2] (switched off until a colorbar is drawn in one)."""
    # image | GT | prediction | depth colorbar | error | error colorbar: a colorbar slot in
    # every row keeps the columns aligned whether or not that row has a colorbar
    grid = fig.add_gridspec(n_rows, 6, width_ratios=[1, 1, 1, 0.05, 1, 0.05])
    rows = range(n_rows)
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in (0, 1, 2, 4)] for r in rows])
    caxes = np.array([[fig.add_subplot(grid[r, c]) for c in (3, 5)] for r in rows])
    for ax in caxes.ravel():
        ax.set_axis_off()
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return axes, caxes


def _task_row(
    fig: Any,
    axes: np.ndarray,
    caxes: np.ndarray,
    sample: dict[str, Any],
    task: str,
    info: dict[str, Any],
    first: bool,
) -> set[int]:
    """One task's GT | prediction | error tiles; returns the class ids a class-map row shows."""
    gt_ax, pred_ax, err_ax = axes
    gt_ax.set_ylabel(task_title(task), fontsize=10)  # row label (visible: ticks are off)
    if first:
        gt_ax.set_title("ground truth", fontsize=10)
        pred_ax.set_title("prediction", fontsize=10)
        err_ax.set_title("error", fontsize=10)
    labeled = sample.get("has", {}).get(task, True) and task in sample["target"]
    gt, pred = sample["target"].get(task), sample["pred"][task]
    present = task_tiles(fig, axes, caxes, get_task(task), gt, pred, info, labeled)
    if not labeled:
        for ax in (gt_ax, err_ax):
            ax.text(0.5, 0.5, "no label", ha="center", va="center", transform=ax.transAxes)
    return present


def _class_legend(
    fig: Any, shown: dict[str, set[int]], classes: list[str], palette: list[list[int]]
) -> None:
    """A legend under the figure naming the colour of every class shown (prefixed by the
    task's title where several class-map tasks share the figure)."""
    from matplotlib.patches import Patch

    handles = []
    for task, present in shown.items():
        info = task_info(task, classes, palette)
        names, colours = info["classes"], info["palette"]
        prefix = f"{task_title(task)}: " if len(shown) > 1 else ""
        handles += [
            Patch(facecolor=np.asarray(colours[c]) / 255.0, edgecolor="0.3",
                  label=prefix + str(names[c]))
            for c in sorted(present)
            if 0 <= c < min(len(names), len(colours))
        ]  # fmt: skip
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 7),
        fontsize=8, frameon=False, handlelength=1.2, columnspacing=1.0,
    )  # fmt: skip


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def contact_sheet(
    samples: list[dict[str, Any]],
    path: str | Path,
    palette: list[list[int]],
    mean: list[float],
    std: list[float],
    tile_width: int = 192,
) -> Path:
    """One PNG: a row per sample, columns image | GT and prediction per task, labelled."""
    import cv2

    plt = _plt()
    if not samples:
        raise ValueError("contact_sheet: no samples")
    columns, rows = ["image"], []
    tasks = ordered_tasks(samples[0]["pred"])
    for t in tasks:
        columns += [f"{t} GT", f"{t} pred"]
    for s in samples:
        tiles = [denormalize(s["image"], mean, std)]
        for t in tasks:
            pred = s["pred"][t]
            labeled = s.get("has", {}).get(t, True) and t in s["target"]
            gt = s["target"][t] if labeled else pred
            info = task_info(t, [], palette)
            pair = colour_pair(get_task(t), gt, pred, info)
            tiles += [pair[0] if labeled else np.zeros_like(pair[1]), pair[1]]
        h, w = tiles[0].shape[:2]
        th = max(1, round(h * tile_width / w))
        tiles = [cv2.resize(t, (tile_width, th), interpolation=cv2.INTER_NEAREST) for t in tiles]
        rows.append(np.concatenate(_gap(tiles, axis=1), axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    mosaic = np.concatenate(_gap(rows, axis=0), axis=0)
    dpi = 100
    size = (mosaic.shape[1] / dpi + 1.0, mosaic.shape[0] / dpi + 0.5)
    fig, ax = plt.subplots(figsize=size, dpi=dpi, layout="constrained")
    ax.imshow(mosaic, interpolation="nearest")
    step = tile_width + 4
    ax.set_xticks([i * step + tile_width / 2 for i in range(len(columns))], columns, fontsize=9)
    ax.xaxis.tick_top()
    tops = np.cumsum([0] + [r.shape[0] + 4 for r in rows[:-1]])
    centers = [top + r.shape[0] / 2 for top, r in zip(tops, rows)]
    ids = [str((s.get("meta") or {}).get("id", i)) for i, s in enumerate(samples)]
    ax.set_yticks(centers, ids, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return save_figure(fig, path, dpi=dpi)


def _gap(arrays: list[np.ndarray], axis: int, size: int = 4) -> list[np.ndarray]:
    """``arrays`` with white strips of ``size`` pixels between them along ``axis``."""
    out = []
    for i, a in enumerate(arrays):
        if i:
            shape = list(a.shape)
            shape[axis] = size
            out.append(np.full(shape, 255, np.uint8))
        out.append(a)
    return out
