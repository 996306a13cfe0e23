"""Training curves from a run's ``metrics.jsonl``: task losses, balancer weights, learning rate,
throughput and validation metrics (test records, if any, as separate markers)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cvmtl.tasks import TASKS


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (a run folder is accepted); bad lines are skipped (a run
    killed mid-write leaves a partial last line)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl at {path}")
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
    return records


def _series(records: list[dict], split: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get("split", "train") != split or key not in r:
            continue
        try:
            y = float(r[key])  # non-finite values are stored as strings ("nan", "inf")
        except (TypeError, ValueError):
            continue
        if math.isfinite(y):
            xs.append(float(r["step"]))
            ys.append(y)
    return xs, ys


# A subplot: its title, its curves as (split, record key, legend label), log y for positive data.
Panel = tuple[str, list[tuple[str, str, str]], bool]


def _panels(records: list[dict[str, Any]]) -> list[Panel]:
    """The subplots worth drawing: every known group of curves that has at least one point."""
    keys = {k for r in records for k in r}
    tasks = [t for t in TASKS if f"loss/{t}" in keys or any(k.startswith(f"{t}/") for k in keys)]
    panels: list[Panel] = []
    panels.append(("train loss", [("train", f"loss/{t}", t) for t in tasks], True))
    panels.append(("balancer weights", [("train", f"weight/{t}", t) for t in tasks], False))
    panels.append(("learning rate", [("train", "lr", "lr")], False))
    panels.append(("throughput [img/s]", [("train", "img_s", "img/s")], False))
    for t in tasks:
        # errors and accuracies apart: one rising and one falling family per plot reads badly
        for higher, kind in ((True, "higher is better"), (False, "lower is better")):
            metrics = [m for m, hi in TASKS[t].delta_metrics.items() if hi == higher]
            lines = [(sp, f"{t}/{m}", m) for m in metrics for sp in ("val", "test")]
            panels.append((f"{t} metrics ({kind})", lines, False))
    panels.append(
        ("Δm [%] (higher is better)", [(sp, "delta_m", "Δm") for sp in ("val", "test")], False)
    )
    return [p for p in panels if any(_series(records, sp, k)[0] for sp, k, _ in p[1])]


def _draw_panel(ax: Any, records: list[dict[str, Any]], panel: Panel) -> None:
    """Train curves as lines, val as dots joined by lines, test as stars in the val colour."""
    name, lines, log_y = panel
    colors: dict[str, Any] = {}
    has_test = False
    for split, key, label in lines:
        xs, ys = _series(records, split, key)
        if not xs:
            continue
        if split == "train":
            ax.plot(xs, ys, label=label, linewidth=1.2)
        elif split == "val":  # few points: show them
            (line,) = ax.plot(xs, ys, "-o", label=label, markersize=4)
            colors[key] = line.get_color()
        else:  # test: a star in the colour of the same metric's val curve
            ax.plot(xs, ys, "*", color=colors.get(key), markersize=10, label=None)
            has_test = True
    if log_y and all(v > 0 for _, k, _ in lines for v in _series(records, "train", k)[1]):
        ax.set_yscale("log")
    if name == "learning rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_title(name + (" (★ test)" if has_test else ""), fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    if len({label for _, _, label in lines}) > 1:
        ax.legend(fontsize=8, loc="best")


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One PNG with a subplot per group of curves that has data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(records)
    if not panels:
        raise ValueError("no curves to plot: the records hold no known keys")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, squeeze=False, figsize=(5.2 * ncols, 3.4 * nrows), layout="constrained"
    )
    for ax, panel in zip(axes.ravel(), panels):
        _draw_panel(ax, records, panel)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
