"""Reading an :class:`~cvmtl.workflows.affinity.AffinityResult`: a recommendation (task groups,
branch points) and the files ``affinity.json``, ``affinity.md`` and ``affinity.png``."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cvmtl.workflows.affinity.compute import AffinityResult


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def partitions(items: list[str]) -> Iterator[list[list[str]]]:
    """Every partition of ``items`` into non-empty groups (Bell(T) of them; 203 for T = 6)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first, *part[k]]] + part[k + 1 :]
        yield [[first], *part]


def grouping_score(groups: list[list[str]], tasks: list[str], z: list[list[float]]) -> float:
    """Fifty et al.'s total affinity: for each task j, the mean over the other members i of its
    group of Z[i][j] (a task alone scores 0). Missing values count as 0."""
    index = {t: k for k, t in enumerate(tasks)}
    total = 0.0
    for group in groups:
        for j in group:
            vals = [z[index[i]][index[j]] for i in group if i != j]
            vals = [v if _finite(v) else 0.0 for v in vals]
            total += sum(vals) / len(vals) if vals else 0.0
    return total


def recommend(result: AffinityResult, cos_threshold: float = 0.0) -> dict[str, Any]:
    """Task groups from the lookahead affinity and, per task pair, where a branch would pay.

    ``groups``: the partition with the highest :func:`grouping_score` (ties: fewer groups);
    ``mutual``: pairs whose affinity is positive both ways; ``branch``: per pair, the first
    stage (input to output) whose mean gradient cosine is below ``cos_threshold`` (None: none).
    """
    tasks, z = result.tasks, result.lookahead
    scored = [(grouping_score(p, tasks, z), -len(p), p) for p in partitions(list(tasks))]
    score, _, best = max(scored, key=lambda s: (round(s[0], 12), s[1]))
    all_shared = grouping_score([list(tasks)], tasks, z)
    mutual, branch, lines = [], {}, []
    for a, b in itertools.combinations(range(len(tasks)), 2):
        ab, ba = z[a][b], z[b][a]
        if _finite(ab) and _finite(ba) and ab > 0 and ba > 0:
            mutual.append([tasks[a], tasks[b]])
        low = next(
            (
                s
                for s in result.stages
                if _finite(v := result.cosine[s][a][b]) and v < cos_threshold
            ),
            None,
        )
        pair = f"{tasks[a]}-{tasks[b]}"
        branch[pair] = low
        lines.append(f"{pair}: {_branch_text(result, a, b, low, cos_threshold)}")
    text = " + ".join("{" + ", ".join(g) + "}" for g in best)
    head = [
        f"group: {text} (total affinity {score:+.4g}; all tasks in one network: {all_shared:+.4g})",
        "mutually positive pairs: "
        + (", ".join("-".join(p) for p in mutual) if mutual else "none"),
    ]
    return {
        "groups": best,
        "score": score,
        "all_shared_score": all_shared,
        "mutual": mutual,
        "branch": branch,
        "cos_threshold": cos_threshold,
        "lines": head + lines,
    }


def _branch_text(result: AffinityResult, a: int, b: int, low: str | None, thr: float) -> str:
    stages = result.stages
    if low is None:
        return f"gradient cosine >= {thr:g} at every stage: share everything"
    k = stages.index(low)
    value = result.cosine[low][a][b]
    if k == 0:
        return f"cosine {value:+.3f} already at {low}: separate networks (or a gradient balancer)"
    return f"aligned through {stages[k - 1]}, cosine {value:+.3f} at {low}: branch before {low}"


def _clean(x: Any) -> Any:
    """NaN / inf -> None, so that affinity.json is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _fmt(x: float | None, spec: str = "+.3f") -> str:
    return format(x, spec) if _finite(x) else "n/a"


def _table(tasks: list[str], m: list[list[float]], corner: str, spec: str = "+.3f") -> list[str]:
    rows = [f"| {corner} | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    rows += [
        f"| **{t}** | " + " | ".join(_fmt(v, spec) for v in row) + " |" for t, row in zip(tasks, m)
    ]
    return rows


def to_markdown(result: AffinityResult, rec: dict[str, Any]) -> str:
    """affinity.md: recommendation, the lookahead matrix, cosines and gradient norms per stage."""
    r, out = result, ["# Task affinity", ""]
    out.append(
        f"{r.batches} batches, {r.mode} mode, gradients w.r.t. stage {r.source}, "
        f"lookahead SGD lr {r.lookahead_lr:g}."
    )
    out += ["", "## Recommendation", ""] + [f"- {line}" for line in rec["lines"]]
    out += ["", "## Lookahead affinity Z(i -> j) (Fifty et al. 2021)", ""]
    out.append("Row i: the task whose gradient took the step; column j: the task whose loss is")
    out.append("measured. Z = 1 - L_j(after) / L_j(before); positive = i's step helps j.")
    out += [""] + _table(r.tasks, r.lookahead, "i \\ j", "+.4g")
    out += ["", "## Gradient cosine per stage (input -> output)", ""]
    for s in r.stages:
        out += [f"### {s}", ""] + _table(r.tasks, r.cosine[s], "cos") + [""]
    out += ["## Mean gradient norm per stage", ""]
    out.append("| stage | " + " | ".join(r.tasks) + " |")
    out.append("|---" * (len(r.tasks) + 1) + "|")
    for s in r.stages:
        out.append(f"| {s} | " + " | ".join(_fmt(v, ".3g") for v in r.grad_norm[s]) + " |")
    return "\n".join(out) + "\n"


def _off_diagonal_max(mats: list, floor: float) -> float:
    """A round colour limit from the largest |off-diagonal| value (the diagonal would swamp it)."""
    import numpy as np

    vals = [abs(m[i, j]) for m in mats for i in range(len(m)) for j in range(len(m)) if i != j]
    vmax = max([v for v in vals if np.isfinite(v)] + [floor])
    step = 10 ** math.floor(math.log10(vmax))  # 1-2-5 rounding up, as axis ticks do
    return next(f * step for f in (1, 2, 2.5, 5, 10) if f * step >= vmax * (1 - 1e-9))


def plot_heatmaps(result: AffinityResult, path: str | Path) -> Path:
    """One panel per stage (gradient cosine) and one for the lookahead affinity.

    Diagonals are greyed out (cosine 1 by definition; a task's self-affinity is on another
    scale) so that the colour scales fit the off-diagonal values: one shared scale for all
    cosine panels, so stages compare, and its own for the lookahead (a relative loss change).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    r, t = result, len(result.tasks)
    cosines = [np.array(r.cosine[s], dtype=float) for s in r.stages]
    look = np.array(r.lookahead, dtype=float)
    cmax = min(_off_diagonal_max(cosines, 0.05), 1.0)
    zmax = _off_diagonal_max([look], 1e-4)
    zdec = max(2, 1 - math.floor(math.log10(zmax)))  # two significant digits at the top value
    panels = [(s if s == "neck" else f"backbone {s}", m) for s, m in zip(r.stages, cosines)]
    n = len(panels) + 1
    cell = 0.45 + 0.5 * t
    fig, axes = plt.subplots(
        1, n, figsize=(cell * n + 2.2, cell + 1.9), squeeze=False, layout="constrained"
    )
    axes = axes[0]
    grey = np.where(np.eye(t, dtype=bool), 1.0, np.nan)
    for k, ax in enumerate(axes):
        last = k == n - 1
        title, m = ("lookahead Z(i→j)", look) if last else panels[k]
        vmax = zmax if last else cmax
        off = np.where(np.eye(t, dtype=bool), np.nan, m)
        im = ax.imshow(np.ma.masked_invalid(off), cmap="RdBu", vmin=-vmax, vmax=vmax)
        ax.imshow(np.ma.masked_invalid(grey), cmap="Greys", vmin=0, vmax=4)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(t), r.tasks, fontsize=8, rotation=45 if t > 3 else 0)
        ax.set_yticks(range(t), r.tasks if k in (0, n - 1) else [""] * t, fontsize=8)
        for i, j in itertools.product(range(t), range(t)):
            v = m[i, j]
            label = "n/a" if not np.isfinite(v) else f"{v:+.{zdec if last else 2}f}"
            dark = i != j and np.isfinite(v) and abs(v) > 0.6 * vmax
            color = "white" if dark else ("dimgray" if i == j else "black")
            ax.text(j, i, label, ha="center", va="center", fontsize=7, color=color)
        if last:
            ax.set_xlabel("rows i: task that stepped\ncolumns j: loss measured", fontsize=8)
            fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02, label="Z (relative loss drop)")
        elif k == n - 2:
            fig.colorbar(im, ax=axes[: n - 1].tolist(), shrink=0.8, pad=0.02, label="cosine")
    fig.suptitle(
        f"Task-gradient cosine per stage (input → output) and lookahead affinity "
        f"(blue: aligned / helps, red: conflict / hurts; diagonal greyed)\n"
        f"{r.batches} batches, gradients w.r.t. stage {r.source}, {r.mode} mode, "
        f"lookahead lr {r.lookahead_lr:g}",
        fontsize=9,
    )
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_outputs(
    result: AffinityResult, out: str | Path, cos_threshold: float = 0.0
) -> dict[str, Path]:
    """Write affinity.json / .md / .png into ``out``; returns their paths by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rec = recommend(result, cos_threshold)
    paths = {"json": out / "affinity.json", "md": out / "affinity.md", "png": out / "affinity.png"}
    payload = _clean({**result.to_dict(), "recommendation": rec})
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["md"].write_text(to_markdown(result, rec))
    plot_heatmaps(result, paths["png"])
    return paths
