"""The end-to-end demo (``make demo``): synthetic data, baselines + multi-task training, test
evaluation with delta_m, visualizations and a summary table.

    python tools/demo.py --config configs/synthetic_demo.yaml [--train 600 --val 100 --test 100]
                         [--seed 0] [--threads N] [--fresh] [key=value ...]

Everything lands in runs/<name>/ (report/, vis/, baselines/); a rerun reuses finished
stages and resumes an interrupted training.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cvmtl.commands._common import add_overrides, make_parser, run_main
from cvmtl.workflows.demo import DemoOptions, run_demo


def main(argv: list[str] | None = None) -> int:
    d = DemoOptions()
    p = make_parser(__doc__)
    p.add_argument("--config", default="synthetic_demo")
    for split, n in d.counts.items():
        p.add_argument(f"--{split}", type=int, default=n, help=f"{split} scenes (default {n})")
    p.add_argument("--seed", type=int, default=d.seed, help="dataset seed")
    p.add_argument("--workers", type=int, default=d.workers, help="rendering processes")
    p.add_argument("--num-vis", type=int, default=d.num_vis, help="test panels to draw")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = all)")
    p.add_argument("--fresh", action="store_true", help="retrain everything")
    add_overrides(p)
    return run_main(demo, p.parse_args(argv))


def demo(a: argparse.Namespace) -> int:
    opts = DemoOptions(
        counts={"train": a.train, "val": a.val, "test": a.test},
        seed=a.seed,
        workers=a.workers,
        num_vis=a.num_vis,
        threads=a.threads,
        fresh=a.fresh,
    )
    try:
        run_demo(a.config, a.overrides, opts)
    except KeyboardInterrupt as stop:
        print(f"demo interrupted: {stop}; rerun to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
