"""What a study leaves in ``runs/<study>/``: ``sweep.json``, ``best_config.yaml``,
``report.html`` (written by every worker as it leaves, from the storage), and, once the study is
finished, its best trial evaluated once on the test split (``best_test/``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from cvmtl.config import to_dict
from cvmtl.workflows.sweep import storage as st
from cvmtl.workflows.sweep.space import apply_params
from cvmtl.workflows.sweep.trial import SweepContext, baselines_config


def _number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def trial_record(t: FrozenTrial) -> dict[str, Any]:
    """A trial as sweep.json lists it."""
    return {
        "number": t.number,
        "state": t.state.name,
        "value": _number(t.value),
        "params": t.params,
    }


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if completed else None


def summarize(study: optuna.Study, ctx: SweepContext, total: int) -> dict[str, Any]:
    """sweep.json's content: the contract's keys, then ``details`` (each trial's run folder,
    note and validation rounds), ``finished`` and the best trial's ``test`` evaluation."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    done = len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)])
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    return {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "metric": ctx.space.metric,
        "best": None
        if best is None
        else {"trial": best.number, "value": _number(best.value), "params": best.params},
        "trials": [trial_record(t) for t in trials],
        "details": {
            str(t.number): {
                "run_dir": t.user_attrs.get("run_dir"),
                "note": t.user_attrs.get("note", ""),
                "intermediate": {str(k): _number(v) for k, v in t.intermediate_values.items()},
            }
            for t in trials
        },
        "requested": total,
        "finished": done >= total and not running,
        "test": study.user_attrs.get("test"),
    }


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_best_config(study_dir: Path, ctx: SweepContext, best: FrozenTrial, name: str) -> None:
    """The base config with the best trial's parameters, named ``<study>_best``: ready for
    ``tools/train.py --config runs/<study>/best_config.yaml``."""
    cfg = apply_params(ctx.base, dict(best.params))
    cfg.name = f"{name}_best"
    head = (
        f"# study {name}: trial {best.number}, validation {ctx.space.metric} = {best.value:.6g}\n"
        f"# params: {json.dumps(best.params)}\n"
    )
    write_atomic(
        study_dir / "best_config.yaml", head + yaml.safe_dump(to_dict(cfg), sort_keys=False)
    )


def evaluate_best_on_test(study: optuna.Study, ctx: SweepContext, name: str) -> None:
    """Once per study and best trial: evaluate its best.pt on the test split (with test delta_m
    against the baselines' test metrics when the metric is delta_m); stored in the study."""
    from cvmtl.workflows.baselines import train_baselines
    from cvmtl.workflows.eval_run import run_eval

    best = best_trial(study)
    if best is None:
        return
    known = study.user_attrs.get("test")
    if known is not None and known.get("trial") == best.number:
        return
    run_dir = Path(best.user_attrs.get("run_dir") or ctx.study_dir / f"trial_{best.number:04d}")
    checkpoint = run_dir / "best.pt"
    if not checkpoint.is_file():
        print(f"sweep: {checkpoint} is not on this machine; test evaluation left to its worker")
        return
    path = None
    if ctx.baselines is not None:  # the finished baseline runs are reused, scored on test
        data = train_baselines(baselines_config(ctx.base, name), test=True)
        path = ctx.study_dir / "baselines.json"  # the study's validation numbers stay
        path.write_text(json.dumps({**data, **ctx.baselines}, indent=2) + "\n")
    print(f"sweep: evaluating the best trial ({best.number}) once on the test split", flush=True)
    out = run_eval(checkpoint, split="test", out=ctx.study_dir / "best_test", baselines=path)
    dm = out.get("delta_m")
    record = {
        "trial": best.number,
        "checkpoint": str(checkpoint),
        "split": out["split"],
        "metrics": {t: {k: v for k, v in m.items() if not isinstance(v, list | dict)}
                    for t, m in out["metrics"].items()},
        "delta_m": None if dm is None else dm.get("overall"),
    }  # fmt: skip
    study.set_user_attr("test", record)


def finish(study: optuna.Study, ctx: SweepContext, total: int, name: str) -> dict[str, Any]:
    """Evaluate the best trial on test if the study is finished, then write sweep.json,
    best_config.yaml and report.html; return sweep.json's content."""
    from cvmtl.workflows.sweep.report import write_report

    ctx.study_dir.mkdir(parents=True, exist_ok=True)
    if summarize(study, ctx, total)["finished"]:
        with st.local_lock(ctx.study_dir):
            evaluate_best_on_test(study, ctx, name)
    summary = summarize(study, ctx, total)
    write_atomic(ctx.study_dir / "sweep.json", json.dumps(summary, indent=2) + "\n")
    best = best_trial(study)
    if best is not None:
        write_best_config(ctx.study_dir, ctx, best, name)
    write_report(ctx.study_dir / "report.html", summary, study)
    return summary
