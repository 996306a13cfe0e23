"""Prediction panels and a contact sheet for samples of a split, or a run's training curves.

    python tools/visualize.py --checkpoint runs/<name>/best.pt [--split val] [--num 8] [--out DIR]
    python tools/visualize.py --run runs/<name>          # training curves from metrics.jsonl

Panels (one PNG per sample: image | ground truth, prediction, error per task, class legend,
depth colorbar) and {split}_contact_sheet.png go to runs/<name>/vis/ by default (the folder of
the checkpoint); curves to runs/<name>/vis/curves.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cvmtl.commands._common import (
    add_device_args,
    add_overrides,
    make_parser,
    positive_int,
    run_main,
)

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def curves(run: Path, out: Path | None) -> int:
    from cvmtl.vis.curves import plot_curves, read_metrics

    records = read_metrics(run)
    path = plot_curves(records, out or run / "vis" / "curves.png", title=run.resolve().name)
    print(f"curves: {len(records)} records -> {path}")
    return 0


def panels(args: argparse.Namespace) -> int:
    from cvmtl.workflows.visualize import write_panels

    out, n = write_panels(
        args.checkpoint, args.split, args.num, args.out,
        device=args.device, amp=args.amp, overrides=args.overrides,
    )  # fmt: skip
    print(f"visualize: {n} panels + {args.split}_contact_sheet.png -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="cvmtl checkpoint (or a run folder: its last.pt)")
    src.add_argument("--run", help="run folder: plot its training curves (metrics.jsonl)")
    parser.add_argument("--split", default="val", help="split to draw samples from (default val)")
    parser.add_argument("--num", type=positive_int, default=8, help="number of samples (default 8)")
    parser.add_argument("--out", help="output folder (--run: output PNG file)")
    add_device_args(parser)
    add_overrides(parser)
    args = parser.parse_args(argv)
    if args.run:
        return run_main(curves, Path(args.run), Path(args.out) if args.out else None)
    return run_main(panels, args)


if __name__ == "__main__":
    sys.exit(main())
