"""One trial: sample the space, train an ordinary cvmtl run folder, report to Optuna.

The trial's run is ``fit`` with ``test=False`` (the test split is never read), ``best.pt``
chosen on the sweep's metric, and a validation hook that reports every validation round to
Optuna and raises ``TrialPruned`` when the pruner says so. Every ending is recorded in the
study: COMPLETE with the best validation value, PRUNED (at which round), FAIL with a ``note``
(the error's one line, or the signal that interrupted it).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cvmtl.config import Config
from cvmtl.workflows.sweep.space import SearchSpace, apply_params, suggest

log = logging.getLogger(__name__)


class SweepInterrupted(KeyboardInterrupt):
    """A trial was stopped by SIGINT / SIGTERM (recorded as failed; rerun to continue)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@dataclass
class SweepContext:
    """What every trial of one worker shares."""

    base: Config
    space: SearchSpace
    study_dir: Path
    baselines: dict[str, Any] | None  # baselines.json content (validation split) or None


def baselines_config(base: Config, name: str) -> Config:
    """The config whose baselines the study compares with: the base, in ``runs/<study>/``."""
    cfg = copy.deepcopy(base)
    cfg.name = name
    return cfg


def trial_config(ctx: SweepContext, params: dict[str, Any], number: int) -> Config:
    """The base config with ``params``, in ``<study_dir>/trial_<number>``, choosing best.pt on
    the sweep's metric."""
    cfg = apply_params(ctx.base, params)
    cfg.out_dir, cfg.name = str(ctx.study_dir), f"trial_{number:04d}"
    cfg.train.best_metric = ctx.space.metric
    return cfg


def reporter(trial: optuna.Trial, metric: str):
    """``fit``'s validation hook: report round k's value as Optuna step k; prune if told."""
    rounds = [0]

    def on_validate(step: int, values: dict[str, float]) -> None:
        rounds[0] += 1
        value = values.get(metric)
        if value is None or not math.isfinite(value):
            return  # nothing to compare (NaN never wins)
        trial.report(float(value), rounds[0])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at validation round {rounds[0]} (step {step})")

    return on_validate


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: SweepContext) -> TrialState:
    """Train one trial and tell the study how it ended; returns that state. A signal is
    recorded as a failure, then raised (:class:`SweepInterrupted` / KeyboardInterrupt)."""
    try:
        value = _train(trial, ctx)
    except optuna.TrialPruned as pruned:
        return _tell(study, trial, TrialState.PRUNED, str(pruned))
    except KeyboardInterrupt as stop:
        _tell(study, trial, TrialState.FAIL, f"interrupted ({stop or 'KeyboardInterrupt'})")
        raise
    except Exception as err:  # a bad combination, non-finite training, a full disk, ...
        _tell(study, trial, TrialState.FAIL, f"failed: {type(err).__name__}: {_one_line(err)}")
        return TrialState.FAIL
    if value is None:
        return _tell(study, trial, TrialState.FAIL, "failed: no finite validation value")
    return _tell(study, trial, TrialState.COMPLETE, "", value)


def _train(trial: optuna.Trial, ctx: SweepContext) -> float | None:
    """Sample, train (no test split), return the best validation value (None: none finite)."""
    from cvmtl.engine.trainer import fit

    params = suggest(trial, ctx.space, ctx.base)
    cfg = trial_config(ctx, params, trial.number)
    trial.set_user_attr("run_dir", str(cfg.run_dir))
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if ctx.baselines is not None:  # validation delta_m in this run folder
        text = json.dumps(copy.deepcopy(ctx.baselines), indent=2) + "\n"
        (cfg.run_dir / "baselines.json").write_text(text)
    log.info("sweep: trial %d -> %s: %s", trial.number, cfg.run_dir, params)
    result = fit(cfg, on_validate=reporter(trial, ctx.space.metric), test=False)
    if result["interrupted"]:
        raise SweepInterrupted(int(result["interrupted"]))
    chosen = result.get("best") or {}
    if chosen.get("metric") != ctx.space.metric:  # e.g. delta_m without usable baselines
        raise ValueError(f"best.pt was chosen by {chosen.get('metric')}, not {ctx.space.metric}")
    best = chosen.get("value")
    return float(best) if best is not None and math.isfinite(best) else None


def _one_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return " ".join(lines[-1].split())[:300] if lines else type(err).__name__


def _tell(
    study: optuna.Study, trial: optuna.Trial, state: TrialState, note: str, value: Any = None
) -> TrialState:
    """Record the ending (with its note) in the study and the log."""
    if note:
        trial.set_user_attr("note", note)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    shown = f" value={value:.6g}" if value is not None else ""
    print(f"sweep: trial {trial.number} {state.name}{shown} {note}".rstrip(), flush=True)
    return state
