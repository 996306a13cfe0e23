r"""Convert the official NYUv2 ``nyu_depth_v2_labeled.mat`` into the cvmtl format.

    python tools/prepare_nyuv2.py --mat nyu_depth_v2_labeled.mat --splits splits.mat \
      --mapping classMapping40.mat --classes 13 --out data/nyuv2 [--normals DIR] [--val-fraction F]

Writes images/, segmentation/, depth/ (in-painted ``depths``), normals/ (from --normals, else
computed from depth), splits/{train,test}.txt (and val.txt + trainval.txt with --val-fraction) and
dataset.yaml. ``--normals DIR``: one file per frame named by its 1-based frame number (``1.png``,
``0001.npy``, ...): ``.npy`` float HxWx3 in [-1, 1] or a 16-bit (cvmtl encoding) / 8-bit RGB PNG
(n = 2 v / max - 1); all-zero = invalid; camera frame x right, y down, z forward, toward the camera.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cvmtl.commands._common import make_parser, run_main


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat (v7.3 / HDF5)")
    parser.add_argument("--splits", required=True, help="splits.mat (trainNdxs, testNdxs)")
    parser.add_argument("--mapping", required=True, help="classMapping40.mat (mapClass)")
    parser.add_argument("--classes", type=int, choices=(13, 40), default=13)
    parser.add_argument("--out", required=True, help="output folder (cvmtl format)")
    parser.add_argument("--normals", default=None, help="folder of per-frame normals (see above)")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="carve val.txt from train")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val carve")
    parser.add_argument("--limit", type=int, default=None, help="convert frames 1..N only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1)")
    return run_main(convert, args)


def convert(args: argparse.Namespace) -> int:
    from cvmtl.data.nyuv2 import convert_official

    counts = convert_official(
        args.mat, args.splits, args.mapping, args.out, args.classes, args.normals,
        args.val_fraction, args.seed, args.limit,
    )  # fmt: skip
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
