"""Single-task baselines for delta_m: one model per task, same backbone, same step budget.

``train_baselines(cfg)`` trains ``runs/<name>/baselines/<task>/`` for every task of ``cfg`` and
writes ``runs/<name>/baselines.json`` = ``{split: {task: {metric: value}}}`` for the validation
and test splits (keyed by ``data.val_split`` / ``data.test_split``, as the trainer reads them),
plus ``runs/<name>/baselines/summary.json`` recording each baseline's steps and batch size.

A baseline differs from the multi-task run only where it must: ``tasks = [task]``, hard sharing,
the ``fixed`` balancer (a plain single loss), ``best_metric`` on its own task, no fine-tuning, and
``train.max_steps`` pinned to the multi-task run's optimizer-step count (so both see the same
number of steps of the same batch size, whatever the epoch arithmetic would say).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch

from cvmtl import distributed as du
from cvmtl.config import Config
from cvmtl.tasks import get_task

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """A baseline run stopped on SIGINT / SIGTERM (its last.pt is saved; rerun to continue)."""

    def __init__(self, signum: int, task: str) -> None:
        super().__init__(f"baseline {task!r} stopped by signal {signum}")
        self.signum = signum


def multitask_steps(cfg: Config) -> int:
    """Optimizer steps ``fit(cfg)`` will take: ``train.max_steps`` or epochs x steps/epoch."""
    if cfg.train.max_steps:
        return int(cfg.train.max_steps)
    from cvmtl.data.loader import batches_per_epoch, build_loaders

    loader = build_loaders(cfg, du.is_dist(), splits=["train"])["train"]  # per-rank batches
    return cfg.train.epochs * (batches_per_epoch(loader) // cfg.train.accumulate)


def baseline_config(cfg: Config, task: str, total_steps: int) -> Config:
    """The config of ``task``'s single-task baseline (see the module docstring)."""
    if task not in cfg.tasks:
        raise ValueError(f"baseline task {task!r} is not one of the run's tasks {cfg.tasks}")
    b = copy.deepcopy(cfg)
    b.name = f"{cfg.name}/baselines/{task}"
    b.tasks = [task]
    b.model.sharing = "hard"
    b.loss.balancer, b.loss.balancer_args = "fixed", {}
    b.train.max_steps = int(total_steps)
    b.finetune.epochs = 0
    if not cfg.train.best_metric.startswith(f"{task}/"):
        b.train.best_metric = f"{task}/{next(iter(get_task(task).delta_metrics))}"
    return b


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of one task's metrics (drops ``iou_per_class``)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def train_baselines(
    cfg: Config, tasks: list[str] | None = None, *, test: bool = True
) -> dict[str, Any]:
    """Train the baselines of ``tasks`` (default all of ``cfg.tasks``); write and return
    baselines.json's content ``{split: {task: {metric: value}}}``.

    ``test=False`` never reads the test split (a sweep chooses on validation only): the
    baselines are trained and scored on validation; a later call with ``test=True`` reuses the
    finished runs and adds their test metrics.

    A baseline whose folder already holds a finished run of the same config is not retrained; an
    interrupted one of the same config is resumed from its ``last.pt``.
    Under torchrun every rank calls this; rank 0 evaluates and writes the files.
    Raises :class:`TrainingInterrupted` when a baseline run is stopped by a signal.
    """
    from cvmtl.engine.run import prior_run, resume_flag
    from cvmtl.engine.trainer import fit

    tasks = list(tasks or cfg.tasks)
    du.init_distributed(cfg.train.device)  # under torchrun: steps per epoch are per rank
    total = multitask_steps(cfg)
    read_test = test  # the flag; ``test`` then collects the test metrics
    val, test, runs = {}, {}, {}
    for task in tasks:
        bcfg = baseline_config(cfg, task, total)
        prior = prior_run(bcfg, total)
        done = prior if prior is not None and prior["finished"] else None
        if done is None:
            result = fit(bcfg, resume=resume_flag(prior, total), test=read_test)
            if result["interrupted"]:
                raise TrainingInterrupted(int(result["interrupted"]), task)
            step, best = int(result["step"]), result["best"]
        else:
            step, best, result = done["step"], done["best"], {"test": None}
        if not du.is_main_process():
            continue
        roles = ["val"] if result["test"] is not None or not read_test else ["val", "test"]
        found = _evaluate_best(bcfg, roles)
        if "val" in found:
            val[task] = scalars(found["val"][task])
        if result["test"] is not None:
            test[task] = scalars(result["test"][task])
        elif "test" in found:
            test[task] = scalars(found["test"][task])
        runs[task] = {
            "run_dir": str(bcfg.run_dir),
            "step": step,
            "batch_size": bcfg.train.batch_size,
            "accumulate": bcfg.train.accumulate,
            "best": best,
            "reused": done is not None,
        }
    data = _write_baselines(cfg, val, test, runs, total)
    du.barrier()  # every rank's next fit() reads baselines.json
    return du.broadcast_object(data)


def _write_baselines(cfg: Config, val: dict, test: dict, runs: dict, total: int) -> dict:
    """Merge the new values into baselines.json (tasks not retrained now keep their earlier
    entries) and baselines/summary.json, from rank 0; return baselines.json's content."""
    zero = [f"{t}/{k}" for t, m in val.items() for k in get_task(t).delta_metrics if m.get(k) == 0]
    if zero:  # delta_m divides by the baseline: selection on it would fail
        log.warning("baselines: %s is 0 on validation; delta_m is undefined (train longer)", zero)
    path = cfg.run_dir / "baselines.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for split, values in ((cfg.data.val_split, val), (cfg.data.test_split, test)):
        if values:
            data[split] = {**data.get(split, {}), **values}
    if du.is_main_process():
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        folder = cfg.run_dir / "baselines"
        folder.mkdir(parents=True, exist_ok=True)
        earlier = read_summary(cfg.run_dir)["runs"] if (folder / "summary.json").is_file() else {}
        summary = {"multitask_steps": total, "batch_size": cfg.train.batch_size}
        summary["runs"] = {**earlier, **runs}
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return data


def _evaluate_best(bcfg: Config, roles: list[str]) -> dict[str, dict]:
    """Metrics of ``best.pt`` of a baseline on the split roles that exist (main process)."""
    from cvmtl.data.loader import build_loaders
    from cvmtl.engine.checkpoint import load_checkpoint
    from cvmtl.engine.evaluator import evaluate
    from cvmtl.engine.restore import build_from_weights
    from cvmtl.precision import resolve_device

    path = bcfg.run_dir / "best.pt"
    if not path.is_file():
        return {}
    device = resolve_device(bcfg.train.device, "train.device")
    model = build_from_weights(bcfg, load_checkpoint(path)["model"], device, str(path))
    loaders = build_loaders(bcfg, False, splits=None if "test" in roles else roles)
    out = {}
    for role in roles:
        if loaders.get(role) is not None:
            with torch.random.fork_rng(devices=[]):
                out[role] = evaluate(model, loaders[role], bcfg.tasks, bcfg, device=device)
    return out


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``runs/<name>/baselines/summary.json`` as a dict."""
    return json.loads((Path(run_dir) / "baselines" / "summary.json").read_text())
