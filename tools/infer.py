"""Predict segmentation, depth and normals for images, a folder or a glob.

    python tools/infer.py --checkpoint runs/<name>/best.pt --input photos/ --out preds/
    python tools/infer.py --checkpoint CKPT --input "shots/**/*.jpg" --recursive --out preds/

Writes per image {stem}_seg.png (8-bit classes), {stem}_depth.png (16-bit mm), {stem}_normal.png
(16-bit (n+1)/2*65535), their *_color.png previews and with --npz {stem}.npz, at the input's
exact size; with --recursive the output mirrors the input tree. Unreadable files are reported
and skipped; the exit code is 1 if any image failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.config import ConfigError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="cvmtl checkpoint (or a run folder)")
    parser.add_argument("--input", required=True, help="an image, a folder or a glob pattern")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--batch-size", type=int, default=4, help="images of equal size per batch")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument(
        "--max-size", type=int, default=None, help="resize longer sides above this for inference"
    )
    parser.add_argument("--npz", action="store_true", help="also write {stem}.npz float arrays")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    from cvmtl.inference import collect_inputs, run_inference
    from cvmtl.predictor import Predictor

    try:
        items = collect_inputs(args.input, args.recursive)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not items:
        print(f"error: no images found in {args.input}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint, args.device, args.amp, args.max_size, args.overrides
        )
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_inference(
        predictor, items, args.out, args.batch_size, args.npz, progress=not args.quiet
    )
    print(f"infer: {result.summary} -> {args.out}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
