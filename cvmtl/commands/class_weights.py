"""Segmentation class weights from the training split's pixel frequencies (for
``loss.seg_class_weights``).

    python tools/class_weights.py --config configs/X.yaml [--power 0.5] [key=value ...]

Prints each class's share of the labelled training pixels and its weight, then the line to put
under ``loss:`` in the config (or pass as an override). w_c = f_c ** -power, scaled so that the
average weight of a labelled pixel is 1 (power 1: inverse frequency; 0.5: its square root).
"""

from __future__ import annotations

import argparse
import os
import sys

from cvmtl.commands._common import add_overrides, make_parser, run_main

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--config", default="synthetic_demo")
    p.add_argument("--power", type=float, default=0.5, help="w = freq ** -power (default 0.5)")
    p.add_argument("--digits", type=int, default=3, help="decimals printed (default 3)")
    add_overrides(p)
    return run_main(_weights, p.parse_args(argv))


def _weights(a: argparse.Namespace) -> int:
    from cvmtl.config import load_config
    from cvmtl.data.class_weights import frequency_weights, training_pixel_counts
    from cvmtl.data.formats import load_dataset_info

    # the config's own weights may be for other classes: they are what is being recomputed
    cfg = load_config(a.config, [*a.overrides, "loss.seg_class_weights=null"])
    counts = training_pixel_counts(cfg)
    weights = frequency_weights(counts, a.power)
    names = load_dataset_info(cfg.data.root, cfg.data.format, cfg.data.num_classes)["classes"]
    total = max(int(counts.sum()), 1)
    print(f"{'class':<16} {'pixels %':>9} {'weight':>8}")
    for name, count, weight in zip(names, counts, weights):
        print(f"{name:<16} {100.0 * count / total:>9.2f} {weight:>8.{a.digits}f}")
    listed = ", ".join(f"{w:.{a.digits}f}" for w in weights)
    print(f"\nloss.seg_class_weights: [{listed}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
