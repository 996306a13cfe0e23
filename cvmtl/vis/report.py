"""Evaluation reports: metric tables, ``report.md`` and one self-contained ``report.html``.

The HTML page embeds every chart as a base64 PNG (no external file, script or style sheet), so
it can be mailed or archived alone. Where the dataset has published numbers of other projects
(:func:`cvmtl.tasks.published.published_tables`), both files show them beside ours, under a
heading that says whose figures they are.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from cvmtl.balancers import BALANCERS, balancer_class
from cvmtl.tasks import TASKS, get_task
from cvmtl.tasks.published import fmt, is_nyu, published_tables  # noqa: F401 (is_nyu: API)
from cvmtl.vis.task_view import (
    BINARY_MAP,
    SCALAR_MAP,
    VECTOR_MAP,
    ordered_tasks,
    task_info,
    unit,
    view_kind,
)


def task_title(task: str) -> str:
    """A task's display name (``spec.title``, else its name; unknown tasks by name)."""
    return (TASKS[task].title or task) if task in TASKS else task


def task_rows(metrics: dict, baselines: dict | None, delta: dict | None) -> dict[str, list[list]]:
    """``{task: [[metric, direction, ours, baseline, delta_m %], ...]}`` (scalar metrics only)."""
    out: dict[str, list[list]] = {}
    for task, values in metrics.items():
        rows = []
        for name, value in values.items():
            if isinstance(value, list | dict):
                continue
            higher = TASKS[task].metrics.get(name) if task in TASKS else None
            arrow = "" if higher is None else ("higher" if higher else "lower")
            base = (baselines or {}).get(task, {}).get(name)
            d = ((delta or {}).get("per_metric") or {}).get(f"{task}/{name}")
            rows.append([name, arrow, fmt(value), fmt(base) if base is not None else "", d])
        out[task] = rows
    return out


def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _delta_cell(d: float | None) -> str:
    return "" if d is None else f"{d:+.2f}"


def model_summary(cfg: Any) -> str:
    """One line on what produced the predictions: backbone, sharing, balancer, budget."""
    m, loss, train = cfg.model, cfg.loss, cfg.train
    balancer = loss.balancer
    if loss.balancer_args:
        args = ", ".join(f"{k}={v}" for k, v in loss.balancer_args.items())
        balancer += f" ({args})"
    if loss.balancer in BALANCERS and balancer_class(loss.balancer).kind == "gradient":
        balancer += f", gradients w.r.t. {loss.grad_source}"
    budget = f"{train.max_steps} steps" if train.max_steps else f"{train.epochs} epochs"
    return (
        f"{m.backbone} + FPN {m.neck_channels}, {m.sharing} sharing; balancer {balancer}; "
        f"{budget} of batch {train.batch_size}"
    )


def render_markdown(doc: dict[str, Any]) -> str:
    """report.md from a report document (see :func:`write_report`)."""
    m = doc["metrics"]
    lines = [f"# Evaluation report: {doc['title']}", ""]
    lines += [f"- checkpoint: `{m['checkpoint']}`", f"- split: `{m['split']}`"]
    lines += [f"- dataset: {doc['dataset']}", f"- tasks: {', '.join(m['metrics'])}"]
    lines += [f"- model: {doc['model']}", ""]
    dm = m.get("delta_m")
    if dm:
        lines += [f"**delta_m: {dm['overall']:+.2f}%** (vs single-task baselines; + = better)", ""]
        lines += [_md_table(["task", "delta_m (%)"], [[t, f"{v:+.2f}"] for t, v in
                                                       dm["per_task"].items()]), ""]  # fmt: skip
    else:
        lines += ["delta_m: n/a (no single-task baselines for this split)", ""]
    header = ["metric", "better", "ours", "baseline", "delta (%)"]
    for task, rows in task_rows(m["metrics"], doc.get("baselines"), dm).items():
        rows = [[*r[:4], _delta_cell(r[4])] for r in rows]
        lines += [f"## {task}", "", _md_table(header, rows), ""]
    for note, head, rows in doc.get("published", []):
        lines += ["## Published numbers of other projects (for comparison)", "", f"_{note}_", ""]
        lines += [_md_table(head, rows), ""]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid #ccc;padding:3px 9px;text-align:right;font-size:14px}
th{background:#f0f0f0} td:first-child,th:first-child{text-align:left}
.pub td{color:#555} .pub tr:first-child td{color:#000;font-weight:bold}
.pos{color:#1a7f37} .neg{color:#c62828} img{max-width:100%;display:block;margin:8px 0}
.note{font-size:13px;color:#555;font-style:italic}
"""


def render_html(doc: dict[str, Any], charts: dict[str, bytes]) -> str:
    """One self-contained HTML page: tables plus the PNG ``charts`` embedded as data URIs."""
    m = doc["metrics"]
    esc = html.escape
    parts = [f"<h1>Evaluation report: {esc(doc['title'])}</h1>"]
    parts.append(
        f"<p>checkpoint <code>{esc(m['checkpoint'])}</code> &middot; split "
        f"<code>{esc(m['split'])}</code> &middot; dataset {esc(doc['dataset'])}</p>"
        f"<p>model: {esc(doc['model'])}</p>"
    )
    dm = m.get("delta_m")
    if dm:
        cls = "pos" if dm["overall"] >= 0 else "neg"
        parts.append(f'<h2>delta_m: <span class="{cls}">{dm["overall"]:+.2f}%</span></h2>')
        parts.append('<p class="note">mean relative change vs single-task baselines; + = better')
        parts.append("</p>" + _html_table(
            ["task", "delta_m (%)"], [[t, f"{v:+.2f}"] for t, v in dm["per_task"].items()]
        ))  # fmt: skip
    else:
        parts.append("<p>delta_m: n/a (no single-task baselines for this split)</p>")
    header = ["metric", "better", "ours", "baseline", "delta (%)"]
    for task, rows in task_rows(m["metrics"], doc.get("baselines"), dm).items():
        rows = [[*r[:4], _delta_cell(r[4])] for r in rows]
        parts += [f"<h2>{esc(task)}</h2>", _html_table(header, rows)]
    for note, head, rows in doc.get("published", []):
        parts.append("<h2>Published numbers of other projects (for comparison)</h2>")
        parts += [f'<p class="note">{esc(note)}</p>', _html_table(head, rows, "pub")]
    for key, title in chart_titles(charts).items():
        parts += [f"<h2>{esc(title)}</h2>", _img(charts[key], title)]
        if key in doc.get("captions", {}):
            parts.append(f'<p class="note">{esc(doc["captions"][key])}</p>')
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(doc['title'])}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def chart_titles(charts: dict[str, bytes]) -> dict[str, str]:
    """The heading of every chart in ``charts``, in page order."""
    titles = {"delta": "delta_m per metric"}
    for key in charts:
        if key.startswith("iou/"):
            titles[key] = f"{task_title(key[4:])}: IoU per class"
    titles.update({
        "depth_bins": "Depth error by distance", "angle_hist": "Normal angle error",
        "samples": "Samples: ground truth and prediction",
    })  # fmt: skip
    return {k: v for k, v in titles.items() if k in charts}


def build_charts(doc: dict[str, Any], stats: dict, samples: list, cfg: Any) -> dict[str, bytes]:
    """The PNG charts the data allows (delta_m, IoU per class of every class-map task, depth
    bins, angle histogram, samples)."""
    from cvmtl.vis import report_charts as rc

    charts: dict[str, bytes] = {}
    m = doc["metrics"]
    if m.get("delta_m"):
        charts["delta"] = rc.delta_chart(m["delta_m"]["per_metric"])
    for task in ordered_tasks(m["metrics"]):
        iou = m["metrics"][task].get("iou_per_class")
        if iou:
            names = task_info(task, doc.get("classes") or [], doc.get("palette"))["classes"]
            charts[f"iou/{task}"] = rc.iou_chart(iou, names, task_title(task))
    if stats.get("depth_bins"):
        charts["depth_bins"] = rc.depth_bins_chart(stats["depth_bins"])
    if stats.get("angle_hist"):
        charts["angle_hist"] = rc.angle_chart(stats["angle_hist"])
    if samples:
        charts["samples"] = rc.sample_grid(
            samples, cfg.data.mean, cfg.data.std, doc.get("palette"), cfg.eval.max_depth
        )
    return charts


def samples_caption(tasks: list[str], max_depth: float) -> str:
    """What the colours of the sample grid mean, per view kind of the tasks shown."""
    from cvmtl.vis.report_charts import scalar_span

    notes = []
    for task in ordered_tasks(tasks):
        spec, name = get_task(task), task_title(task)
        kind = view_kind(spec)
        if kind == SCALAR_MAP:
            span = scalar_span(spec, max_depth)
            u = f" {unit(spec)}" if unit(spec) else ""
            scale = "per sample" if span is None else f"over {span[0]:g}-{span[1]:g}{u}"
            err = "" if span is None else f" over 0-{(span[1] - span[0]) / 4:g}{u}"
            notes.append(f"{name}: turbo colormap {scale}; {name} error: magma{err}")
        elif kind == BINARY_MAP:
            notes.append(f"{name}: grey probability (white = 1); {name} error: magma over 0-1")
        elif kind == VECTOR_MAP and spec.label.unit_vector:
            notes.append(f"{name} error: magma over 0-45 degrees")
    return "; ".join(notes + ["black = ignore / invalid"])


def write_report(
    out_dir: str | Path,
    metrics: dict[str, Any],
    *,
    cfg: Any,
    stats: dict | None = None,
    samples: list | None = None,
    baselines: dict | None = None,
    info: dict | None = None,
) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``; return their paths.

    ``metrics``: the metrics.json content; ``baselines``: ``{task: {metric: v}}`` of the split;
    ``info``: dataset info (name, classes, palette) from ``load_dataset_info``.
    """
    info = info or {}
    name = str(info.get("name", Path(cfg.data.root).name))
    doc = {
        "title": cfg.name,
        "dataset": f"{name} ({cfg.data.format}, {cfg.data.num_classes} classes)",
        "model": model_summary(cfg),
        "metrics": metrics,
        "baselines": baselines,
        "classes": info.get("classes"),
        "palette": info.get("palette"),
        "captions": {"samples": samples_caption(list(metrics["metrics"]), cfg.eval.max_depth)},
    }
    doc["published"] = published_tables(
        metrics["metrics"], cfg.data.num_classes, cfg.data.format, name
    )
    for task in metrics["metrics"]:
        get_task(task)  # an unknown task is an error here, not a silently empty table
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    charts = build_charts(doc, stats or {}, samples or [], cfg)
    paths = {"md": out / "report.md", "html": out / "report.html"}
    paths["md"].write_text(render_markdown(doc))
    paths["html"].write_text(render_html(doc, charts))
    return paths
