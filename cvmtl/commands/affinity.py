"""Task affinity: per-stage gradient cosine and lookahead affinity between tasks.

    python tools/affinity.py --checkpoint runs/<name>/best.pt --batches 8 [key=value ...]
    python tools/affinity.py --config configs/X.yaml --batches 8 [key=value ...]

Writes affinity.json, affinity.md and affinity.png to --out (default runs/<name>/affinity/).
"""

from __future__ import annotations

import argparse
import os
import sys

from cvmtl.commands._common import add_overrides, make_parser, positive_int, run_main

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a cvmtl checkpoint (model + config)")
    src.add_argument("--config", help="YAML config (a freshly initialized model)")
    parser.add_argument("--batches", type=positive_int, default=8, help="batches to average over")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--out", default=None, help="output folder (default runs/<name>/affinity)")
    parser.add_argument("--lookahead-lr", type=float, default=None, help="default: train.lr")
    parser.add_argument(
        "--source",
        choices=("features", "params"),
        default="features",
        help="cosine of gradients w.r.t. stage outputs (cheap) or stage parameters",
    )
    parser.add_argument(
        "--mode",
        choices=("train", "eval"),
        default="train",
        help="BN batch statistics as in training (restored afterwards) or running statistics",
    )
    parser.add_argument(
        "--cos-threshold", type=float, default=0.0, help="a cosine below this suggests a branch"
    )
    add_overrides(parser)
    return run_main(affinity, parser.parse_args(argv))


def affinity(args: argparse.Namespace) -> int:
    from cvmtl.workflows.affinity import run_affinity, write_outputs

    result, out = run_affinity(
        checkpoint=args.checkpoint,
        config=args.config,
        overrides=args.overrides,
        batches=args.batches,
        split=args.split,
        lookahead_lr=args.lookahead_lr,
        source=args.source,
        mode=args.mode,
        out=args.out,
    )
    paths = write_outputs(result, out, args.cos_threshold)
    print((paths["md"]).read_text().split("## Lookahead")[0].strip())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
