"""Predict the run's tasks (segmentation, depth, normals, ...) for images, a folder or a glob.

    python tools/infer.py --checkpoint runs/<name>/best.pt --input photos/ --out preds/
    python tools/infer.py --checkpoint CKPT --input "shots/**/*.jpg" --recursive --out preds/

Writes per image and task the files of the task's encoder, {stem}_{task}{suffix}.png: e.g.
{stem}_seg.png (8-bit classes), {stem}_depth.png (16-bit mm), {stem}_normal.png (16-bit
(n+1)/2*65535), their *_color.png previews; with --npz {stem}.npz, all at the input's
exact size; with --recursive the output mirrors the input tree. Unreadable files are reported
and skipped; the exit code is 1 if any image failed.
"""

from __future__ import annotations

import argparse
import os
import sys

from cvmtl.commands._common import (
    add_device_args,
    add_overrides,
    fail,
    make_parser,
    positive_int,
    run_main,
)

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="cvmtl checkpoint (or a run folder)")
    parser.add_argument("--input", required=True, help="an image, a folder or a glob pattern")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument(
        "--batch-size", type=positive_int, default=4, help="images of equal size per batch"
    )
    add_device_args(parser)
    parser.add_argument(
        "--max-size", type=int, default=None, help="resize longer sides above this for inference"
    )
    parser.add_argument("--npz", action="store_true", help="also write {stem}.npz float arrays")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overrides(parser)
    return run_main(infer, parser.parse_args(argv))


def infer(args: argparse.Namespace) -> int:
    from cvmtl.inference import collect_inputs, run_inference
    from cvmtl.predictor import Predictor

    items = collect_inputs(args.input, args.recursive)
    if not items:
        return fail(f"no images found in {args.input}")
    predictor = Predictor.from_checkpoint(
        args.checkpoint, args.device, args.amp, args.max_size, args.overrides
    )
    result = run_inference(
        predictor, items, args.out, args.batch_size, args.npz, progress=not args.quiet
    )
    print(f"infer: {result.summary} -> {args.out}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
