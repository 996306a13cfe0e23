"""Train a multi-task model into runs/<name>/ (one process, or many under torchrun).

    python tools/train.py --config configs/synthetic_demo.yaml [key=value ...]
    python tools/train.py --config configs/synthetic_demo.yaml --resume      # the config's run
    python tools/train.py --resume runs/synthetic_demo [key=value ...]       # that run folder
    torchrun --nproc_per_node 2 tools/train.py --config ... [key=value ...]
    python tools/train.py --config C.yaml --train-baselines [--baselines-only]

--train-baselines first trains one single-task model per task (runs/<name>/baselines/<task>/,
same backbone, optimizer steps and batch size), writes runs/<name>/baselines.json, then trains
the multi-task run (so train.best_metric=delta_m selects on validation delta_m); with
--baselines-only it stops after the baselines. Finished baselines are reused, not retrained.
With finetune.epochs > 0, task-specific fine-tuning follows the multi-task run.

--resume continues last.pt of the run; a run that has not saved a checkpoint yet (a preempted job
restarted before its first save) starts fresh and logs that it did. A RUN_DIR (or .pt file) that
does not exist is an error.

key=value overrides may stand anywhere among the flags; a key=value word right after --resume is
an override, not a RUN_DIR.

Exit codes: 0 done; 1 aborted after train.max_bad_steps non-finite steps in a row; 2 bad input
(config, data, checkpoint: one line on stderr naming the key or file; CVMTL_TRACEBACK=1 shows the
traceback) or a failed write (e.g. disk full); 130 / 143 stopped by SIGINT / SIGTERM after saving
last.pt (resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cvmtl.commands._common import add_overrides, fail, make_parser, run_main
from cvmtl.config import load_config

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument(
        "--config", help="YAML config (default: the resumed run's config.yaml, else the defaults)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue from last.pt of RUN_DIR (without a value: the run the config names); "
        "no checkpoint there yet: start fresh",
    )
    parser.add_argument(
        "--train-baselines",
        action="store_true",
        help="first train the single-task baselines and write baselines.json",
    )
    parser.add_argument(
        "--baselines-only", action="store_true", help="train the baselines, not the multi-task run"
    )
    add_overrides(parser)
    return run_main(train, parser.parse_args(argv))


def train(args: argparse.Namespace) -> int:
    run_dir = Path(args.resume) if isinstance(args.resume, str) else None
    # a typo must not start a fresh run; on rank 0 only: other nodes need not hold the run folder
    if run_dir is not None and os.environ.get("RANK", "0") == "0" and not run_dir.exists():
        raise FileNotFoundError(f"--resume: no such run folder or checkpoint: {run_dir}")
    if run_dir is not None and run_dir.suffix == ".pt":  # --resume runs/x/last.pt: its folder
        run_dir = run_dir.parent
    config = args.config
    if config is None and run_dir is not None:
        config = run_dir / "config.yaml"
    cfg = load_config(config, args.overrides)  # before torch is imported: bad keys fail fast
    if run_dir is not None:  # outputs go back into the resumed folder
        cfg.out_dir, cfg.name = str(run_dir.parent), run_dir.name

    from cvmtl.distributed import cleanup_distributed, is_main_process
    from cvmtl.engine.trainer import TrainingAborted, fit
    from cvmtl.workflows.baselines import TrainingInterrupted, train_baselines
    from cvmtl.workflows.finetune import finetune_after_fit

    try:
        if args.train_baselines or args.baselines_only:
            train_baselines(cfg)
            if args.baselines_only:
                return 0
        result = fit(cfg, resume=run_dir if run_dir is not None else args.resume)
        main_rank = is_main_process()
    except TrainingInterrupted as stop:
        return 128 + stop.signum
    except TrainingAborted as err:  # neither success nor bad input
        if os.environ.get("CVMTL_TRACEBACK"):
            raise
        return fail(err, 1)
    finally:
        cleanup_distributed()
    if result["interrupted"]:
        return 128 + int(result["interrupted"])
    if main_rank:  # after the group is gone: fine-tuning runs on rank 0 alone
        finetune_after_fit(cfg, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
