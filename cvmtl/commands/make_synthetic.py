r"""Render the procedural indoor dataset in the ``cvmtl`` format.

Per scene: images/, segmentation/, depth/, normals/, and the binary maps edge/ (1 px object
boundaries) and saliency/ (the salient object), 0 / 255 PNGs.

python tools/make_synthetic.py --out data/synthetic --train 400 --val 100 --test 100 \
    --size 240x320 --seed 0 [--workers 2] [--contact-sheet docs/synthetic_contact_sheet.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cvmtl.commands._common import make_parser, run_main

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread per worker process (before numpy)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be HxW (240x320), got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"--size too small: {text!r}")
    return h, w


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--out", default="data/synthetic", help="dataset root to write")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--size", type=parse_size, default=(240, 320), help="HxW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes (1 = in-process)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--contact-sheet", default=None, help="also write a PNG of 6 test scenes")
    a = p.parse_args(argv)
    return run_main(render, a)


def render(a: argparse.Namespace) -> int:
    from cvmtl.data.synthetic import contact_sheet, generate_dataset

    counts = {k: v for k, v in (("train", a.train), ("val", a.val), ("test", a.test)) if v > 0}
    start = time.perf_counter()
    freq = generate_dataset(a.out, counts, a.size, a.seed, a.workers, not a.no_progress)
    secs = time.perf_counter() - start
    n = sum(counts.values())
    print(f"wrote {n} scenes to {a.out} in {secs:.1f} s ({n / secs:.1f} scenes/s)")
    print("class pixel frequencies:", json.dumps({k: round(v, 4) for k, v in freq.items()}))
    if a.contact_sheet:
        contact_sheet(a.contact_sheet, a.seed, 6, a.size)
        print(f"contact sheet: {a.contact_sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
