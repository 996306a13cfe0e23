"""Export a checkpoint to ONNX, torch.export (.pt2) or TorchScript and verify it against PyTorch.

    python tools/export.py --checkpoint runs/<name>/best.pt --format onnx --out model.onnx
    python tools/export.py --checkpoint CKPT --format export --out m.pt2 --height 240 --width 320

Input ``image`` float32 [B, 3, H, W] normalized with the run's data.mean / data.std; outputs
one per task of the run, in the config's order (e.g. seg logits, depth metres, normal unit
vectors). Batch, height and width are
dynamic unless --static. The export is checked on random inputs at --height x --width (default:
the training crop) and at a second size; the max abs difference per output is printed and the
exit code is 1 when one exceeds --atol.
"""

from __future__ import annotations

import argparse
import os
import sys

from cvmtl.commands._common import add_overrides, fail, make_parser, run_main

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="cvmtl checkpoint (or a run folder)")
    parser.add_argument("--format", default="onnx", choices=["onnx", "export", "torchscript"])
    parser.add_argument("--out", required=True, help="output file (.onnx, .pt2, .ts)")
    parser.add_argument("--height", type=int, help="example / check height (default: data.crop)")
    parser.add_argument("--width", type=int, help="example / check width (default: data.crop)")
    parser.add_argument("--static", action="store_true", help="fixed batch 1 and H x W")
    parser.add_argument("--atol", type=float, default=1e-3, help="max abs diff that passes")
    add_overrides(parser)
    args = parser.parse_args(argv)
    if (args.height is None) != (args.width is None):
        parser.error("give both --height and --width, or neither")
    return run_main(export, args)


def export(args: argparse.Namespace) -> int:
    from cvmtl.export import ONNX_HINT, export_checkpoint

    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return fail(ONNX_HINT)
    size = (args.height, args.width) if args.height else None
    result = export_checkpoint(
        args.checkpoint, args.format, args.out, size, not args.static, tuple(args.overrides)
    )
    print(f"export: {result['format']} -> {result['path']} ({result['seconds']:.1f} s)")
    worst = 0.0
    for hw, diffs in result["verify"].items():
        line = ", ".join(f"{task} {d:.2e}" for task, d in diffs.items())
        print(f"  max abs diff vs PyTorch at {hw}: {line}")
        worst = max([worst, *diffs.values()])
    if worst > args.atol:
        print(f"error: export differs from PyTorch by {worst:.2e} > --atol {args.atol}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
