"""Benchmark a config's model on random data: step times, images/s, peak memory, params, FLOPs.

python tools/benchmark.py --config configs/X.yaml [key=value ...] [--iters N] [--warmup N]
                          [--json F] [--device cpu|cuda] [--step simple|engine]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvmtl.benchmark import (  # noqa: E402
    engine_train_step,
    format_report,
    resolve_device,
    run_benchmark,
)
from cvmtl.config import ConfigError, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up iterations")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: the config's train.device"
    )
    parser.add_argument(
        "--step",
        choices=("simple", "engine"),
        default="simple",
        help="simple: sum of plain losses; engine: cvmtl.engine.step.train_step",
    )
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))
    step = None
    if args.step == "engine":
        step = engine_train_step(cfg, resolve_device(args.device or cfg.train.device))
    result = run_benchmark(cfg, args.iters, args.warmup, args.device, train_step=step)
    print(format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
