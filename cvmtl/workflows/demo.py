"""The logic of ``tools/demo.py`` (``make demo``): one command from nothing to a report.

Stages, each with a progress bar: render the synthetic dataset (skipped when ``root`` already
holds the same counts / size / seed / renderer, recorded in ``demo_stamp.json``), train the
single-task baselines then the multi-task model with the same step budget
(:func:`cvmtl.workflows.baselines.train_baselines` then :func:`cvmtl.engine.trainer.fit`), evaluate
``best.pt`` on the test split with delta_m (``report/``), draw panels and curves (``vis/``), and
print a single-task vs multi-task table. A rerun reuses every finished stage and resumes an
interrupted training of the same config from its ``last.pt``
(:func:`cvmtl.engine.run.prior_run`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cvmtl.config import Config, load_config

STAMP = "demo_stamp.json"  # in the dataset root: what was rendered there
RUN_STAMP = "demo_data.json"  # in the run folder: which dataset the runs were trained on


@dataclass
class DemoOptions:
    """What the demo renders and draws (the training itself is all in the config)."""

    counts: dict[str, int] = field(default_factory=lambda: {"train": 600, "val": 100, "test": 100})
    seed: int = 0
    workers: int = 2
    num_vis: int = 8
    threads: int = 0  # torch intra-op threads; 0 = one per core
    fresh: bool = False


def renderer_version() -> str:
    """A short hash of the renderer's source: a changed renderer means a stale dataset."""
    folder = Path(__file__).parents[1] / "data"  # cvmtl/data
    digest = hashlib.sha256()
    for path in sorted(folder.glob("synthetic*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def dataset_stamp(counts: dict[str, int], size: list[int], seed: int) -> dict[str, Any]:
    return {
        "counts": dict(counts),
        "size": [int(size[0]), int(size[1])],
        "seed": int(seed),
        "renderer": renderer_version(),
    }


def dataset_is_current(root: Path, stamp: dict[str, Any]) -> bool:
    """True when ``root`` was rendered with ``stamp`` and every split list is complete."""
    path = root / STAMP
    if not path.is_file():
        return False
    try:
        if json.loads(path.read_text()) != stamp:
            return False
    except json.JSONDecodeError:
        return False
    for split, n in stamp["counts"].items():
        ids = root / "splits" / f"{split}.txt"
        if not ids.is_file() or len(ids.read_text().split()) != n:
            return False
    return True


def ensure_dataset(cfg: Config, opts: DemoOptions) -> tuple[dict[str, Any], bool]:
    """Render the dataset at ``data.crop`` unless it is current; returns (stamp, rendered)."""
    from cvmtl.data.synthetic import generate_dataset

    root = Path(cfg.data.root)
    stamp = dataset_stamp(opts.counts, cfg.data.crop, opts.seed)
    if dataset_is_current(root, stamp):
        return stamp, False
    (root / STAMP).unlink(missing_ok=True)  # an interrupted render must not look finished
    generate_dataset(root, opts.counts, tuple(stamp["size"]), opts.seed, opts.workers, True)
    (root / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")  # last: marks it complete
    return stamp, True


def _prepare_run_dir(cfg: Config, stamp: dict[str, Any], fresh: bool) -> None:
    """Start the run folder over when asked, or when its runs saw another dataset."""
    run_dir = cfg.run_dir
    marker = run_dir / RUN_STAMP
    seen = json.loads(marker.read_text()) if marker.is_file() else None
    if run_dir.exists() and (fresh or seen != stamp):
        why = "--fresh" if fresh else "trained on another dataset"
        print(f"demo: clearing {run_dir} ({why})")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(stamp, indent=2) + "\n")


def train(cfg: Config) -> dict[str, Any]:
    """Baselines first (baselines.json), then the multi-task run; finished runs of the same
    config are reused, interrupted ones resumed from their ``last.pt``.

    Returns baselines.json's content. Baselines and the multi-task run share backbone, optimizer,
    schedule, batch size and step count (see :mod:`cvmtl.workflows.baselines`).
    """
    from cvmtl.engine.run import prior_run, resume_flag
    from cvmtl.engine.trainer import fit
    from cvmtl.workflows.baselines import multitask_steps, train_baselines

    baselines = train_baselines(cfg)
    total = multitask_steps(cfg)
    prior = prior_run(cfg, total)
    if prior is not None and prior["finished"]:
        print(f"demo: {cfg.run_dir} is finished; not retrained")
    else:
        result = fit(cfg, resume=resume_flag(prior, total))
        if result["interrupted"]:
            raise KeyboardInterrupt(f"stopped by signal {result['interrupted']} (rerun resumes)")
    return baselines


class StageClock:
    """``lap(stage)`` records and prints the seconds since the previous lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.clock = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self.clock
        self.clock = now
        print(f"demo: {stage} done in {self.seconds[stage]:.0f} s", flush=True)


def evaluate_best(cfg: Config, report: Path) -> dict[str, Any]:
    """``tools/eval.py`` on best.pt and the test split into ``report``; without delta_m (and
    a warning) when a baseline metric is 0, which only a far too short run gives."""
    from cvmtl.workflows.eval_run import run_eval

    try:
        return run_eval(cfg.run_dir / "best.pt", split="test", out=report)
    except ValueError as err:
        if "baseline" not in str(err):
            raise
        print(f"demo: warning: {err}; evaluating without delta_m")
        empty = cfg.run_dir / "no_baselines.json"
        empty.write_text("{}\n")
        return run_eval(cfg.run_dir / "best.pt", split="test", out=report, baselines=empty)


def output_paths(cfg: Config, report: Path, vis: Path) -> dict[str, str]:
    """What the demo wrote, for its summary."""
    return {
        "run": str(cfg.run_dir),
        "checkpoint": str(cfg.run_dir / "best.pt"),
        "baselines": str(cfg.run_dir / "baselines.json"),
        "report": str(report / "report.html"),
        "metrics": str(report / "metrics.json"),
        "vis": str(vis),
        "tensorboard": f"tensorboard --logdir {cfg.out_dir}",
    }


def run_demo(
    config: str | Path, overrides: list[str] | tuple = (), opts: DemoOptions | None = None
) -> dict[str, Any]:
    """Run every stage; print the summary; return ``{"metrics", "baselines", "floors", "paths",
    "seconds"}`` (``seconds`` per stage)."""
    from cvmtl.vis.report import model_summary
    from cvmtl.workflows.demo_report import compute_floors, format_summary, write_visuals

    opts = opts or DemoOptions()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    cfg = load_config(config, list(overrides))
    lap = StageClock()
    seconds = lap.seconds

    size = "x".join(str(v) for v in cfg.data.crop)
    print(f"demo [1/5] dataset {cfg.data.root} ({opts.counts}, {size})")
    stamp, rendered = ensure_dataset(cfg, opts)
    print("demo: dataset " + ("rendered" if rendered else "already present (stamp matches)"))
    lap("dataset")

    print(f"demo [2/5] training {len(cfg.tasks)} single-task baselines + the multi-task model")
    _prepare_run_dir(cfg, stamp, opts.fresh or rendered)
    baselines = train(cfg)
    lap("training")

    print(f"demo [3/5] evaluating {cfg.run_dir / 'best.pt'} on the test split")
    report = cfg.run_dir / "report"
    metrics = evaluate_best(cfg, report)
    lap("evaluation")

    print(f"demo [4/5] visualizations -> {cfg.run_dir / 'vis'}")
    vis = write_visuals(cfg, opts.num_vis)
    lap("visualization")

    print("demo [5/5] summary")
    floors = compute_floors(cfg)
    paths = output_paths(cfg, report, vis)
    test_base = baselines.get(cfg.data.test_split, {})
    print(f"model: {model_summary(cfg)}")
    print(format_summary(metrics, test_base, floors, cfg.tasks))
    lap("summary")
    seconds["total"] = sum(seconds.values())
    for key, value in paths.items():
        print(f"  {key:12s} {value}")
    print(f"demo: finished in {seconds['total']:.0f} s")
    summary = dict(metrics=metrics, baselines=test_base, floors=floors, paths=paths)
    summary["seconds"] = seconds
    (cfg.run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
