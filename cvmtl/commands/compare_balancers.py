"""Compare balancers and hard vs soft sharing over seeds; resumable; writes a markdown table.

    python tools/compare_balancers.py --config configs/synthetic_demo.yaml --out runs/compare \
        [--seeds 0,1,2] [--variants fixed,uw,dwa,famo,mgda,pcgrad,cagrad,nash_mtl,soft] \
        [--table-only] [key=value ...]

Each finished run is recorded in <out>/results.json (a rerun skips it; an interrupted one resumes
from its last.pt); the table (mean ± std over seeds, delta_m vs the same seed's single-task
baselines) is rewritten to <out>/table.md after every run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cvmtl.commands._common import add_overrides, make_parser, run_main
from cvmtl.workflows.experiments import VARIANTS, compare, load_results, results_table


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--config", default="synthetic_demo")
    p.add_argument("--out", default="runs/compare", help="output folder (results.json, table.md)")
    # comma lists: a space-separated nargs="+" would swallow the key=value overrides after it
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--table-only", action="store_true", help="print the table of results.json")
    add_overrides(p)
    return run_main(compare_and_tabulate, p.parse_args(argv))


def compare_and_tabulate(a: argparse.Namespace) -> int:
    out = Path(a.out)
    try:
        if a.table_only:
            results = load_results(out)
        else:
            seeds = [int(v) for v in a.seeds.split(",") if v.strip()]
            variants = [v.strip() for v in a.variants.split(",") if v.strip()]
            results = compare(a.config, a.overrides, variants=variants, seeds=seeds, out=out)
    except KeyboardInterrupt as stop:
        print(f"interrupted ({stop}); rerun the same command to continue", file=sys.stderr)
        return 130
    table = results_table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
