"""``report.html`` of a study: one self-contained page (plots embedded as PNG data URIs, no
script, style sheet or network) with the trials table, the optimization history, each trial's
validation rounds (where pruning stopped it), parameter importances and parallel coordinates."""

from __future__ import annotations

import base64
import html
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cvmtl.vis.report_charts import chart_figure, png_bytes

STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728"}


def history_chart(summary: dict[str, Any]) -> bytes:
    """Each finished trial's value by trial number, and the best so far."""
    fig = chart_figure()
    ax = fig.add_subplot()
    maximize, best, xs, ys = summary["direction"] == "maximize", None, [], []
    for t in summary["trials"]:
        if t["value"] is None or t["state"] not in ("COMPLETE", "PRUNED"):
            continue
        ax.scatter(t["number"], t["value"], color=STATE_COLOURS[t["state"]], zorder=3)
        if t["state"] == "COMPLETE":
            better = best is None or (t["value"] > best if maximize else t["value"] < best)
            best = t["value"] if better else best
            xs.append(t["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#2ca02c", label="best so far")
        ax.legend(loc="best")
    ax.set(xlabel="trial", ylabel=f"validation {summary['metric']}")
    ax.set_title("optimization history (blue: complete, orange: pruned, last value)")
    return png_bytes(fig)


def rounds_chart(summary: dict[str, Any]) -> bytes:
    """Every trial's validation value per round: where the pruned ones stopped."""
    fig = chart_figure()
    ax = fig.add_subplot()
    states = {t["number"]: t["state"] for t in summary["trials"]}
    for number, detail in summary["details"].items():
        points = [(int(k), v) for k, v in detail["intermediate"].items() if v is not None]
        if points:
            points.sort()
            colour = STATE_COLOURS.get(states[int(number)], "#999999")
            ax.plot(*zip(*points), marker="o", color=colour, alpha=0.8)
    ax.set(xlabel="validation round", ylabel=f"validation {summary['metric']}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("validation rounds per trial (orange: pruned)")
    return png_bytes(fig)


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importances (PED-ANOVA, no extra dependency); {} when the finished trials
    are too few or too alike to tell."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(get_param_importances(study, evaluator=PedAnovaImportanceEvaluator()))
    except Exception:  # e.g. values too alike to rank: the report shows no importances then
        return {}


def importance_chart(values: dict[str, float]) -> bytes:
    fig = chart_figure(8.0, 0.5 + 0.45 * max(len(values), 1))
    ax = fig.add_subplot()
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="#1f77b4")
    ax.set(xlabel="importance (PED-ANOVA)")
    ax.set_title("parameter importances")
    return png_bytes(fig)


def _heights(column: list[Any]) -> tuple[list[float], dict[float, str]]:
    """A parallel-coordinates axis: each value's height in [0, 1] (numbers scaled linearly,
    anything else ranked by its text), and the labels to write on the axis by height."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in column):
        lo, hi = min(column), max(column)
        heights = [0.5 if hi == lo else (v - lo) / (hi - lo) for v in column]
        return heights, ({0.5: f"{lo:.4g}"} if hi == lo else {0.0: f"{lo:.4g}", 1.0: f"{hi:.4g}"})
    labels = sorted({str(v) for v in column})
    where = {t: 0.5 if len(labels) == 1 else i / (len(labels) - 1) for i, t in enumerate(labels)}
    return [where[str(v)] for v in column], {h: t for t, h in where.items()}


def parallel_chart(summary: dict[str, Any]) -> bytes:
    """Parallel coordinates: one line per completed trial through its parameters and value,
    coloured by value (bright = better); a parameter a trial did not sample is skipped."""
    from matplotlib import colormaps

    done = [t for t in summary["trials"] if t["state"] == "COMPLETE" and t["value"] is not None]
    axes = [*sorted({k for t in done for k in t["params"]}), "value"]
    rows = [{**t["params"], "value": t["value"]} for t in done]
    heights: list[dict[str, float]] = [{} for _ in rows]
    fig = chart_figure(max(6.0, 2.2 * len(axes)), 4.0)
    ax = fig.add_subplot()
    for x, key in enumerate(axes):
        held = [i for i, row in enumerate(rows) if key in row]
        column, labels = _heights([rows[i][key] for i in held])
        for i, h in zip(held, column):
            heights[i][key] = h
        ax.axvline(x, color="#888888", linewidth=0.8)
        for h, text in labels.items():
            ax.annotate(text, (x, h), xytext=(3, 0), textcoords="offset points", fontsize=8)
    for row in heights:
        shade = row["value"] if summary["direction"] == "maximize" else 1.0 - row["value"]
        xs = [i for i, k in enumerate(axes) if k in row]
        ax.plot(xs, [row[axes[i]] for i in xs], color=colormaps["viridis"](shade), alpha=0.85)
    ax.set_xticks(range(len(axes)), axes, rotation=15)
    ax.set_yticks([])
    ax.set_title("parallel coordinates (completed trials; bright = better)")
    return png_bytes(fig)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return "" if value is None else str(value)


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid #ccc;padding:3px 9px;font-size:14px;text-align:left}
th{background:#f0f0f0} img{max-width:100%;display:block;margin:8px 0}
.note{font-size:13px;color:#555}
"""


def charts(summary: dict[str, Any], study: optuna.Study) -> dict[str, bytes]:
    """The report's plots, by title (those without data left out)."""
    out = {}
    if any(t["value"] is not None for t in summary["trials"]):
        out["Optimization history"] = history_chart(summary)
    if any(d["intermediate"] for d in summary["details"].values()):
        out["Validation rounds"] = rounds_chart(summary)
    values = importances(study)
    if values:
        out["Parameter importances"] = importance_chart(values)
    if any(t["state"] == "COMPLETE" for t in summary["trials"]):
        out["Parallel coordinates"] = parallel_chart(summary)
    return out


def _status(summary: dict[str, Any]) -> list[str]:
    """The lines above the table: the study's state, its best trial, the test evaluation."""
    esc = html.escape
    counts: dict[str, int] = {}
    for t in summary["trials"]:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    state = "finished" if summary["finished"] else "in progress"
    lines = [
        f"Study <b>{esc(summary['study'])}</b> ({state}): {summary['direction']} validation "
        f"<b>{esc(summary['metric'])}</b>; {summary['requested']} trials requested; "
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())),
        "The test split was never read while searching: trials are trained and compared on "
        "the validation split only.",
    ]
    best, test = summary["best"], summary.get("test")
    if best is not None:
        lines.append(f"Best trial: <b>{best['trial']}</b>, validation {esc(summary['metric'])} "
                     f"= {_cell(best['value'])}, params {esc(str(best['params']))}.")  # fmt: skip
    if test is not None:
        dm = "" if test.get("delta_m") is None else f": test delta_m = {test['delta_m']:+.3f} %"
        lines.append(f"Trial {test['trial']} (the best) was then evaluated once on the test "
                     f"split ({esc(str(test['split']))}){dm}; metrics in best_test/.")  # fmt: skip
    else:
        lines.append("The best trial has not been evaluated on the test split yet (that "
                     "happens once, when the study is finished).")  # fmt: skip
    return lines


def render(summary: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The page: status, trials table, plots."""
    esc = html.escape
    keys = sorted({k for t in summary["trials"] for k in t["params"]})
    head = ["trial", "state", "value", *keys, "note", "run folder"]
    rows = []
    for t in summary["trials"]:
        detail = summary["details"].get(str(t["number"]), {})
        cells = [t["number"], t["state"], t["value"], *[t["params"].get(k) for k in keys]]
        cells += [detail.get("note", ""), detail.get("run_dir") or ""]
        rows.append("<tr>" + "".join(f"<td>{esc(_cell(c))}</td>" for c in cells) + "</tr>")
    parts = [f"<h1>Sweep report: {esc(summary['study'])}</h1>"]
    parts += [f"<p>{line}</p>" for line in _status(summary)]
    parts.append("<h2>Trials</h2><table><thead><tr>"
                 + "".join(f"<th>{esc(h)}</th>" for h in head)
                 + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")  # fmt: skip
    for title, png in plots.items():
        parts.append(f"<h2>{esc(title)}</h2>{_img(png, title)}")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Sweep {esc(summary['study'])}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_report(path: Path, summary: dict[str, Any], study: optuna.Study) -> None:
    """Write ``report.html`` (atomically: another worker may be reading it)."""
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render(summary, charts(summary, study)), encoding="utf-8")
    os.replace(tmp, path)
