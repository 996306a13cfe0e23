"""Train segmentation_models_pytorch's FPN as the config's single-task segmentation model would
be trained, over seeds; resumable (a test-only extra: pip install segmentation-models-pytorch).

    python tools/compare_smp.py --config configs/synthetic_demo.yaml --out runs/smp \
        [--seeds 0,1,2] [key=value ...]

Writes <out>/smp.json: per seed the val-best test metrics, the training seconds and the forward
FLOPs; compare with the seg baselines of tools/compare_balancers.py on the same seeds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cvmtl.commands._common import add_overrides, fail, make_parser, run_main
from cvmtl.config import load_config
from cvmtl.workflows.smp_compare import compare_smp


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--config", default="synthetic_demo")
    p.add_argument("--out", default="runs/smp", help="output folder (smp.json)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    add_overrides(p)
    return run_main(_compare, p.parse_args(argv))


def _compare(a: argparse.Namespace) -> int:
    cfg = load_config(a.config, a.overrides)
    seeds = [int(v) for v in a.seeds.split(",") if v.strip()]
    try:
        compare_smp(cfg, seeds, Path(a.out))
    except ImportError as err:  # the test-only extra is not installed
        return fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
