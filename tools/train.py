"""Train a multi-task model into runs/<name>/ (one process, or many under torchrun).

    python tools/train.py --config configs/synthetic_demo.yaml [key=value ...]
    python tools/train.py --config configs/synthetic_demo.yaml --resume      # the config's run
    python tools/train.py --resume runs/synthetic_demo [key=value ...]       # that run folder
    torchrun --nproc_per_node 2 tools/train.py --config ... [key=value ...]

Exit codes: 0 done; 130 / 143 stopped by SIGINT / SIGTERM after saving last.pt (resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.config import ConfigError, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", help="YAML config (default: the resumed run's config.yaml, else the defaults)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue from last.pt of RUN_DIR (without a value: the run the config names)",
    )
    parser.add_argument(
        "--train-baselines",
        action="store_true",
        help="train the single-task baselines and write baselines.json (not implemented yet)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.train_baselines:
        parser.error("--train-baselines is not implemented yet")

    run_dir = Path(args.resume) if isinstance(args.resume, str) else None
    config = args.config
    if config is None and run_dir is not None:
        config = run_dir / "config.yaml"
    try:
        cfg = load_config(config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if run_dir is not None:  # outputs go back into the resumed folder
        cfg.out_dir, cfg.name = str(run_dir.parent), run_dir.name

    from cvmtl.engine.distributed import cleanup_distributed
    from cvmtl.engine.trainer import fit

    try:
        result = fit(cfg, resume=run_dir if run_dir is not None else args.resume)
    finally:
        cleanup_distributed()
    if result["interrupted"]:
        return 128 + int(result["interrupted"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
