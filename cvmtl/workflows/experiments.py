"""The logic of ``tools/compare_balancers.py``: balancers and sharing modes over seeds.

For each seed: the single-task baselines are trained once (``<out>/seed<s>/baselines/``, shared by
every variant of that seed), then each variant (a balancer, or soft sharing) trains a multi-task
model with the same backbone, steps, batch size and schedule, selecting ``best.pt`` on validation
delta_m. Its test metrics and test delta_m (against that seed's baselines) are recorded in
``<out>/results.json`` as soon as the run ends, so a rerun skips finished runs and resumes an
interrupted one from its ``last.pt``. :func:`results_table` turns the records into markdown
(mean +- std over seeds).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from cvmtl.config import Config, load_config
from cvmtl.models.arch import ARCHS
from cvmtl.tasks import TASKS

# name -> overrides on top of the base config; "fixed" doubles as the hard-sharing reference.
VARIANTS: dict[str, list[str]] = {
    "fixed": ["loss.balancer=fixed"],
    "uw": ["loss.balancer=uw"],
    "dwa": ["loss.balancer=dwa"],
    "famo": ["loss.balancer=famo"],
    "mgda": ["loss.balancer=mgda"],
    "pcgrad": ["loss.balancer=pcgrad"],
    "cagrad": ["loss.balancer=cagrad"],
    "nash_mtl": ["loss.balancer=nash_mtl"],
    "soft": ["loss.balancer=fixed", "model.sharing=soft"],
    # architectures (model.arch) with the demo's balancer; "fixed" is their fpn reference
    **{arch: ["loss.balancer=fixed", f"model.arch={arch}"] for arch in ARCHS if arch != "fpn"},
    # fpn with twice the neck / head width (1.7x the demo's forward FLOPs, near MTAN's 1.8-2.3x):
    # whether an architecture's gain is its design or only its extra compute
    "fpn_wide": ["loss.balancer=fixed", "model.neck_channels=128", "model.head_channels=64"],
    # fpn's neck sharing (model.neck_sharing; the default, "fixed", shares the pyramid levels):
    # all = one fused stride-4 map for every head (fpn before the per-task fusion), none = one
    # FPN per task on the shared backbone, convs = the FPN's convs shared, norms per task
    "fpn_shared": ["loss.balancer=fixed", "model.neck_sharing=all"],
    "fpn_task_necks": ["loss.balancer=fixed", "model.neck_sharing=none"],
    "fpn_task_norms": ["loss.balancer=fixed", "model.neck_sharing=convs"],
}


def table_columns(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The table's columns ``(task, metric, higher is better)``: every task's delta_m metrics
    (``spec.delta_metrics``), tasks in the compared config's order (results.json's
    ``config.tasks``; else those the records hold, in registry order)."""
    tasks = list((results.get("config") or {}).get("tasks") or [])
    if not tasks:
        held: set[str] = set()
        for record in list(results.get("baselines", {}).values()):
            held |= set(record)
        for run in results.get("runs", {}).values():
            held |= set(run.get("test", {}))
        tasks = [t for t in TASKS if t in held]
    return [(t, m, h) for t in tasks if t in TASKS for m, h in TASKS[t].delta_metrics.items()]


def load_results(out: Path) -> dict[str, Any]:
    """``<out>/results.json`` (``{"baselines": {seed: ...}, "runs": {key: record}}``)."""
    path = out / "results.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"baselines": {}, "runs": {}}


def save_results(out: Path, results: dict[str, Any]) -> None:
    """Write results.json atomically: a kill mid-write must not lose the finished runs."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out / "results.json")


def variant_config(base: Config, out: Path, seed: int, name: str) -> Config:
    """``base`` with the variant's overrides, ``train.seed`` and ``<out>/seed<s>/<name>``."""
    from cvmtl.config import from_dict, parse_override, to_dict

    values = copy.deepcopy(to_dict(base))
    balancer = next((t.split("=", 1)[1] for t in VARIANTS[name] if t.startswith("loss.bal")), None)
    if balancer is not None and balancer != base.loss.balancer:
        values["loss"]["balancer_args"] = {}  # the base's hparams belong to its own balancer
    for text in VARIANTS[name]:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    cfg = from_dict(values)
    cfg.out_dir, cfg.name, cfg.train.seed = str(out), f"seed{seed}/{name}", seed
    return cfg


def _scalars(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{task: scalar metrics}`` (per-class lists dropped), per task as baselines.json has it."""
    from cvmtl.workflows.baselines import scalars

    return {t: scalars(m) for t, m in results.items()}


def seed_baselines(base: Config, out: Path, seed: int) -> dict[str, Any]:
    """Train (or reuse) the seed's single-task baselines; baselines.json's content."""
    from cvmtl.workflows.baselines import train_baselines

    cfg = copy.deepcopy(base)
    cfg.out_dir, cfg.name, cfg.train.seed = str(out), f"seed{seed}", seed
    return train_baselines(cfg)


def run_variant(cfg: Config, baselines_file: Path) -> dict[str, Any]:
    """Train one variant (resuming its last.pt if any); its record for results.json."""
    from cvmtl.engine.trainer import fit
    from cvmtl.metrics import delta_m

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(baselines_file, cfg.run_dir / "baselines.json")  # validation delta_m
    start = time.perf_counter()
    resume = (cfg.run_dir / "last.pt").is_file() or None
    result = fit(cfg, resume=resume)
    if result["interrupted"]:
        raise KeyboardInterrupt(f"{cfg.run_dir}: stopped by signal {result['interrupted']}")
    test = _scalars(result["test"])
    base = json.loads(baselines_file.read_text())[cfg.data.test_split]
    try:
        dm = delta_m(test, base, cfg.tasks)
    except ValueError as err:  # a baseline metric of 0: a far too short run
        print(f"compare: {cfg.run_dir}: no delta_m ({err})")
        dm = None
    return {
        "test": test,
        "delta_m": dm,
        "step": int(result["step"]),
        "best": result["best"],
        "seconds": time.perf_counter() - start,
        "resumed": bool(resume),
    }


def compare(
    config: str | Path | None,
    overrides: list[str] | tuple = (),
    *,
    variants: list[str] | None = None,
    seeds: list[int] | tuple = (0, 1, 2),
    out: str | Path = "runs/compare",
) -> dict[str, Any]:
    """Run every (seed, variant) not yet in ``<out>/results.json``; return the results.

    Seeds are the outer loop, so a partial comparison has complete seeds to average.
    """
    variants = list(variants or VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    out = Path(out)
    base = load_config(config, list(overrides))
    results = load_results(out)
    results["config"] = {
        "path": str(config), "overrides": list(overrides), "tasks": list(base.tasks),
    }  # fmt: skip
    for seed in seeds:
        todo = [v for v in variants if f"{v}/seed{seed}" not in results["runs"]]
        if not todo:
            continue
        results["baselines"][str(seed)] = _scalars(
            seed_baselines(base, out, seed)[base.data.test_split]
        )
        save_results(out, results)
        for name in todo:
            cfg = variant_config(base, out, seed, name)
            print(f"compare: seed {seed}, {name} -> {cfg.run_dir}", flush=True)
            record = run_variant(cfg, out / f"seed{seed}" / "baselines.json")
            results["runs"][f"{name}/seed{seed}"] = {"variant": name, "seed": seed, **record}
            save_results(out, results)
            (out / "table.md").write_text(results_table(results) + "\n")
    return results


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    if len(values) < 2:  # no sample std of one value
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def results_table(results: dict[str, Any]) -> str:
    """Markdown: a row per variant (and the single-task baselines), mean ± std over seeds
    (sample std); delta_m in percent against the same seed's baselines.

    ``Δm − fixed``: mean ± std of each seed's delta_m minus the hard ``fixed`` run's delta_m on
    the same seed. Both share that seed's baselines, so their noise cancels: the paired
    difference ranks the methods when the seed-to-seed spread of delta_m itself is large.
    ``min/run``: the median minutes of the runs that were not resumed.
    """
    digits = {"abs_err": 3, "rel_err": 3}
    columns = table_columns(results)
    head = ["method", "seeds"] + [f"{t} {m} {'↑' if h else '↓'}" for t, m, h in columns]
    head += ["Δm % ↑", "Δm − fixed ↑", "min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = results.get("baselines", {})
    if base:
        cells = [
            _cell([b[t][m] for b in base.values() if m in b.get(t, {})], digits.get(m, 2))
            for t, m, _ in columns
        ]
        lines.append(f"| single-task | {len(base)} | " + " | ".join(cells) + " | 0 | - | - |")
    runs_all = results.get("runs", {}).values()
    fixed_dm = {
        r["seed"]: r["delta_m"]["overall"]
        for r in runs_all
        if r["variant"] == "fixed" and r["delta_m"] and "seed" in r
    }
    names = list(dict.fromkeys(r["variant"] for r in runs_all))
    for name in sorted(names, key=lambda n: list(VARIANTS).index(n) if n in VARIANTS else 99):
        runs = [r for r in runs_all if r["variant"] == name]
        cells = [
            _cell([r["test"][t][m] for r in runs if m in r["test"].get(t, {})], digits.get(m, 2))
            for t, m, _ in columns
        ]
        dm = _cell([r["delta_m"]["overall"] for r in runs if r["delta_m"]], 2)
        paired = [
            r["delta_m"]["overall"] - fixed_dm[r["seed"]]
            for r in runs
            if r["delta_m"] and r.get("seed") in fixed_dm
        ]
        vs_fixed = "0" if name == "fixed" else _cell(paired, 2)
        # a resumed run timed only its remainder; the median shrugs off one run on a busy machine
        whole = [r["seconds"] / 60 for r in runs if not r.get("resumed")]
        minutes = f"{statistics.median(whole):.1f}" if whole else "-"
        label = "fixed (hard)" if name == "fixed" else "fixed (soft)" if name == "soft" else name
        row = [label, str(len(runs)), *cells, dm, vs_fixed, minutes]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
