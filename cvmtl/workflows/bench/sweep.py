"""Sweeps: run the benchmark over a small grid of config values, write a markdown table + JSON.

A grid is ``{key: [values]}`` with dotted config keys (``data.crop``, ``train.batch_size``,
``tasks``, ``loss.balancer``, ``loss.grad_source``, ...). ``axes`` mode varies one key at a time
around the base config (sum of the axis lengths); ``product`` mode runs the Cartesian product.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import yaml

from cvmtl.config import Config, ConfigError, parse_override
from cvmtl.workflows.bench.steps import with_values

# Small by default: about 10 points, a few minutes on two CPU cores at iters=3. The task lists
# come from the config (default_grid): its first task, its first two, ..., all of them.
DEFAULT_GRID: dict[str, list[Any]] = {
    "data.crop": [[144, 192], [216, 288], [288, 384]],
    "train.batch_size": [2, 4, 8],
    "loss.balancer": ["fixed", "mgda"],
    "loss.grad_source": ["features", "params"],
}


def default_grid(cfg: Config) -> dict[str, list[Any]]:
    """DEFAULT_GRID plus ``tasks``: the growing prefixes of the config's task list."""
    tasks = [list(cfg.tasks[: i + 1]) for i in range(len(cfg.tasks))]
    crop, batch, *rest = DEFAULT_GRID.items()  # the tasks axis third, as the table reads best
    return dict([crop, batch, ("tasks", tasks), *rest])


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``['train.batch_size=[2,4,8]', ...]`` -> grid (each value must be a YAML list)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        keys, values = parse_override(item)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {item!r}: expected key=[v1,v2,...]")
        grid[".".join(keys)] = values
    return grid


def grid_points(cfg: Config, grid: dict[str, list[Any]], mode: str) -> list[dict[str, Any]]:
    """The points of ``grid``: dicts ``{key: value}`` (every key present, base values filled)."""
    base = {key: _get(cfg, key) for key in grid}
    if mode == "product":
        return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    if mode != "axes":
        raise ValueError(f"sweep mode: expected axes|product, got {mode!r}")
    points, seen = [], set()
    for key, values in grid.items():
        for value in values:
            point = {**base, key: value}
            tag = yaml.safe_dump(point)
            if tag not in seen:
                seen.add(tag)
                points.append(point)
    return points


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def run_sweep(
    cfg: Config,
    grid: dict[str, list[Any]] | None = None,
    mode: str = "axes",
    iters: int = 3,
    warmup: int = 1,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """One row per grid point: the swept values, step time (median / min), img/s, the step's
    memory, forward FLOPs per image, and megapixels/s (for linearity in pixels and batch)."""
    from cvmtl.workflows.benchmark import run_benchmark

    grid = grid or default_grid(cfg)
    rows = []
    for point in grid_points(cfg, grid, mode):
        pcfg = with_values(cfg, point)
        r = run_benchmark(pcfg, iters, warmup, device, phases=False, evaluate=False, peak_size=None)
        h, w = pcfg.data.crop
        step = r["train"]["step_s"]
        rows.append(
            {
                **point,
                "step_s_median": step["median"],
                "step_s_min": step["min"],
                "img_s": r["train"]["img_s"],
                "mpix_s": pcfg.train.batch_size * h * w / step["min"] / 1e6,
                "step_mem_mb": r["train_step_mem_mb"],
                "gflops_per_img": r["flops_per_img"] / 1e9,
                "load_avg": r["load_avg"]["after"],
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a GitHub markdown table (floats to 3 significant digits)."""
    if not rows:
        return ""
    cols = [c for c in rows[0] if c != "load_avg"]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, list):
            return "[" + ",".join(str(x) for x in v) + "]"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
