"""Benchmark a config's model: training step (and its phases), evaluation, MFU, memory.

python tools/benchmark.py [--config C.yaml] [key=value ...] [--iters N] [--warmup N] [--json F]
       [--device cpu|cuda] [--step engine|simple] [--data] [--compare-eager-fp32]
       [--compare-with key=value ...] [--peak-size 2048] [--no-eval] [--no-phases]
python tools/benchmark.py --loader [key=value ...]            # the data loader alone
python tools/benchmark.py --sweep [--grid key=[v1,v2] ...] [--grid-mode axes|product]
       [--table F.md] [--json F.json]                           # a grid -> markdown table

key=value overrides may stand anywhere among the flags, except right after --grid, which takes
every word up to the next flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cvmtl.commands._common import add_overrides, make_parser, positive_int, run_main
from cvmtl.config import load_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", action="store_true", help="run a grid (see --grid)")
    p.add_argument(
        "--grid",
        nargs="+",
        default=None,
        metavar="KEY=[V,...]",
        help="sweep values (default: cvmtl.workflows.bench.sweep.default_grid)",
    )
    p.add_argument(
        "--grid-mode",
        choices=("axes", "product"),
        default="axes",
        help="axes: one key at a time around the config; product: all combinations",
    )
    p.add_argument("--table", default=None, help="sweep: write the markdown table here")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = make_parser(__doc__)
    p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    add_overrides(p)
    p.add_argument("--iters", type=positive_int, default=10, help="timed iterations (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up iterations")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: train.device")
    p.add_argument(
        "--step",
        choices=("engine", "simple"),
        default="engine",
        help="engine: cvmtl.engine.step.train_step; simple: sum of plain losses",
    )
    p.add_argument(
        "--data",
        action="store_true",
        help="time the data phase with the real train loader (synthetic if no data)",
    )
    p.add_argument(
        "--compare-eager-fp32",
        action="store_true",
        help="also time the plain fp32 / NCHW / eager loop, interleaved",
    )
    p.add_argument(
        "--compare-with",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also time the config with this override (repeatable), interleaved, from the same "
        "weights: e.g. --compare-with train.channels_last=true",
    )
    p.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="largest matmul side for the peak FLOP/s (sides 512, 1024, ... up to it)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation benchmark")
    p.add_argument("--no-phases", action="store_true", help="skip the per-phase breakdown")
    p.add_argument("--loader", action="store_true", help="benchmark the data loader alone")
    p.add_argument("--loader-batches", type=int, default=10, help="timed loader batches")
    add_sweep_arguments(p)
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main(benchmark, parse_args(argv))


def benchmark(args: argparse.Namespace) -> int:
    from cvmtl.workflows.bench.timing import load_average, resolve_device
    from cvmtl.workflows.benchmark import format_report, run_benchmark, simple_train_step

    cfg = load_config(args.config, args.overrides)
    if args.sweep:
        from cvmtl.workflows.bench.sweep import markdown_table, parse_grid, run_sweep

        grid = parse_grid(args.grid) if args.grid else None
        rows = run_sweep(cfg, grid, args.grid_mode, args.iters, args.warmup, args.device)
        table = markdown_table(rows)
        print(table)
        if args.table:
            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table).write_text(table)
        result = {"sweep": rows, "mode": args.grid_mode, "load_avg": load_average()}
    elif args.loader:
        from cvmtl.workflows.bench.data import loader_benchmark

        result = {"loader": loader_benchmark(cfg, args.loader_batches)}
        result["load_avg"] = load_average()
        print(
            f"loader: {result['loader']['img_s']:.1f} img/s with "
            f"{result['loader']['num_workers']} workers, load {result['load_avg']}"
        )
    else:
        step = None
        if args.step == "simple":
            step = simple_train_step(cfg, resolve_device(args.device or cfg.train.device))
        result = run_benchmark(
            cfg,
            args.iters,
            args.warmup,
            args.device,
            train_step=step,
            phases=not args.no_phases,
            data=args.data,
            evaluate=not args.no_eval,
            compare_eager_fp32=args.compare_eager_fp32,
            compare=args.compare_with,
            peak_size=args.peak_size or None,
        )
        print(format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
