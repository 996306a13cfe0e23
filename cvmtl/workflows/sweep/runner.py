"""``cvmtl sweep``: one worker of a study. Any number of workers (processes, machines) may run
the same study at once on one storage; together they finish ``--trials`` trials.

A worker: opens or joins the study (refusing one made for another config or space), gets the
single-task baselines (trained once per study, stored in it; only for ``delta_m``), then claims
and trains trials until the study holds ``trials`` trials that completed, were pruned or are
running. The worker that sees the study finished evaluates its best trial once on the test
split. Every worker writes ``sweep.json``, ``best_config.yaml`` and ``report.html`` from the
storage as it leaves.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cvmtl.config import Config, load_config, to_dict
from cvmtl.tasks import get_task
from cvmtl.workflows.sweep import storage as st
from cvmtl.workflows.sweep.results import finish
from cvmtl.workflows.sweep.space import SearchSpace, load_space
from cvmtl.workflows.sweep.trial import SweepContext, baselines_config, run_trial

log = logging.getLogger(__name__)

# keys that may differ between the workers of one study (paths and devices of each machine)
LOCAL_KEYS = {"out_dir": None, "data": ("root", "num_workers"), "train": ("device",)}
MAX_FAILURES_IN_A_ROW = 5


def fingerprint(base: Config, space: SearchSpace) -> dict[str, Any]:
    """What every worker of a study must agree on: the base config (less its machine-local
    keys) and the space."""
    values = copy.deepcopy(to_dict(base))
    for key, subkeys in LOCAL_KEYS.items():
        for sub in subkeys or ():
            values[key].pop(sub, None)
        if subkeys is None:
            values.pop(key, None)
    return {"config": values, "space": space.describe()}


def run_sweep(
    config: str | Path | None,
    space_path: str | Path,
    overrides: list[str] | tuple = (),
    *,
    trials: int = 20,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str = "median",
    metric: str | None = None,
) -> dict[str, Any]:
    """Run trials of the study until it holds ``trials`` of them; return sweep.json's content."""
    base = load_config(config, list(overrides))
    space = load_space(space_path, base, metric)
    st.make_pruner(pruner)  # a bad name fails before anything is opened
    name = study_name or f"{base.name}_sweep"
    study_dir = Path(base.out_dir) / name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = st.open_study(
        name, st.open_storage(storage, study_dir), space.direction, pruner, fingerprint(base, space)
    )
    study_dir.mkdir(parents=True, exist_ok=True)
    with st.local_lock(study_dir):
        for number in st.fail_stale(study):
            print(f"sweep: trial {number} FAIL (its worker process is gone)", flush=True)
    baselines = study_baselines(study, base, name, study_dir) if space.metric == "delta_m" else None
    ctx = SweepContext(base, space, study_dir, baselines)
    try:
        _work(study, ctx, trials)
    finally:
        summary = finish(study, ctx, trials, name)
    return summary


def _work(study: optuna.Study, ctx: SweepContext, trials: int) -> None:
    """Claim and train trials until no slot is left (or too many fail in a row)."""
    failures = 0
    while (trial := st.claim_trial(study, trials, ctx.study_dir)) is not None:
        state = run_trial(study, trial, ctx)
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            last = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
            note = last[0].user_attrs.get("note", "") if last else ""
            raise ValueError(
                f"sweep: {failures} trials in a row failed, stopping this worker "
                f"(last: trial {trial.number}: {note})"
            )


def study_baselines(study: optuna.Study, base: Config, name: str, study_dir: Path) -> dict:
    """The validation baselines of the study (``{val_split: {task: metrics}}``): stored in the
    study by the first worker that trained them (never reading the test split), so that every
    worker, on any machine, compares with the same numbers; also written to
    ``<study_dir>/baselines.json``."""
    from cvmtl.workflows.baselines import train_baselines

    split = base.data.val_split
    with st.local_lock(study_dir):  # one local worker trains them, the others wait
        stored = study.user_attrs.get("baselines")
        if stored is None:
            print(f"sweep: training the single-task baselines in {study_dir}", flush=True)
            data = train_baselines(baselines_config(base, name), test=False)
            if split not in data:
                raise ValueError(f"sweep: the baselines have no '{split}' split to compare with")
            stored = study.user_attrs.get("baselines")  # another machine may have been first
            if stored is None:
                stored = {split: data[split]}
                study.set_user_attr("baselines", stored)
        path = study_dir / "baselines.json"
        known = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**known, **stored}, indent=2) + "\n")
    zero = [
        f"{task}/{metric}"
        for task, values in stored[split].items()
        for metric in get_task(task).delta_metrics
        if values.get(metric) == 0
    ]
    if zero:
        raise ValueError(
            f"sweep: the validation baselines in {path} are 0 for {zero}: delta_m (a relative "
            "change) is undefined; train them longer or sweep another --metric"
        )
    return stored
