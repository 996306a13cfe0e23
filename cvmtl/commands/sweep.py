"""Search hyper-parameters of a config with Optuna: validation delta_m (or any metric), pruning.

    python tools/sweep.py --config configs/synthetic_demo.yaml \
        --space configs/sweeps/demo_space.yaml [--trials N] [--storage URL] \
        [--study-name NAME] [--pruner median|hyperband|none] [--metric M] [key=value ...]

Each trial is an ordinary run folder runs/<study>/trial_<n>/ trained on the train split and
scored on validation; the single-task baselines (for delta_m) are trained once per study. The
study stops at N trials completed or pruned, over every worker; then its best trial is
evaluated once on the test split. Outputs in runs/<study>/: sweep.json, best_config.yaml
(ready for tools/train.py), report.html. The default storage is a journal file in
runs/<study>/; start the same command again (or at once, elsewhere, with a shared --storage
database URL) to add workers or to continue after Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cvmtl.commands._common import add_overrides, fail, make_parser, positive_int, run_main


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--config", default="synthetic_demo")
    p.add_argument("--space", required=True, help="search space YAML (see configs/sweeps/)")
    p.add_argument("--trials", type=positive_int, default=20, help="trials of the study (20)")
    p.add_argument("--storage", default=None, help="Optuna storage URL or journal file path")
    p.add_argument("--study-name", default=None, help="default: <config name>_sweep")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument("--metric", default=None, help="delta_m or task/metric (default: the space's)")
    add_overrides(p)
    return run_main(_sweep, p.parse_args(argv))


def _sweep(a: argparse.Namespace) -> int:
    from cvmtl.workflows.baselines import TrainingInterrupted
    from cvmtl.workflows.sweep import run_sweep

    try:
        summary = run_sweep(
            a.config, a.space, a.overrides, trials=a.trials, storage=a.storage,
            study_name=a.study_name, pruner=a.pruner, metric=a.metric,
        )  # fmt: skip
    except (KeyboardInterrupt, TrainingInterrupted) as stop:
        status = 128 + int(getattr(stop, "signum", 2))  # 130 (SIGINT) / 143 (SIGTERM)
        return fail(
            f"sweep interrupted ({stop or 'Ctrl-C'}); run the same command to continue", status
        )
    best = summary["best"]
    where = f"{summary['study']}: " + ("no completed trial" if best is None else
        f"best trial {best['trial']}, {summary['metric']} = {best['value']:.6g}")  # fmt: skip
    print(f"sweep: {where}; {'finished' if summary['finished'] else 'not finished'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
