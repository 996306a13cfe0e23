"""Evaluate a checkpoint: metrics.json (delta_m when baselines are known), report.md, report.html.

    python tools/eval.py --checkpoint runs/<name>/best.pt [--split test] [--out DIR]
                         [--baselines F.json] [--tta] [--num-samples 4] [key=value ...]

Defaults: --out runs/<name>/report/ (the checkpoint's folder); --baselines the baselines.json
beside the checkpoint, when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cvmtl.commands._common import add_overrides, make_parser, run_main

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a cvmtl checkpoint (best.pt, ...)")
    parser.add_argument("--split", default="test", help="train | val | test or a split name")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/report)")
    parser.add_argument("--baselines", default=None, help="baselines.json for delta_m")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    parser.add_argument("--num-samples", type=int, default=4, help="sample rows in the report")
    add_overrides(parser)
    return run_main(evaluate, parser.parse_args(argv))


def evaluate(args: argparse.Namespace) -> int:
    from cvmtl.workflows.eval_run import default_out, run_eval

    metrics = run_eval(
        args.checkpoint,
        split=args.split,
        out=args.out,
        baselines=args.baselines,
        tta=args.tta,
        overrides=args.overrides,
        num_samples=args.num_samples,
    )
    out = Path(args.out) if args.out else default_out(Path(args.checkpoint))
    for task, values in metrics["metrics"].items():
        shown = {k: v for k, v in values.items() if not isinstance(v, list)}
        print(f"{task}: " + json.dumps(shown))
    if "delta_m" in metrics:
        print(f"delta_m: {metrics['delta_m']['overall']:+.2f}%")
    print(f"wrote {out / 'metrics.json'}, {out / 'report.md'}, {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
