"""Real data for benchmarks: the config's dataset, or a small synthetic one generated once.

``loader_benchmark`` times the train loader alone (images/s with ``data.num_workers``, in the
``data.cache`` mode); ``cache_comparison`` interleaves the worker loader (PNG decode + CPU
transforms) with the cached batch pipeline; ``train_loader`` gives the loader whose waits are
the ``data`` phase of the training step.

Run: ``python -m cvmtl.workflows.bench.data --size 96 128 --rounds 3 [key=value ...]``.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from cvmtl.data.loader import build_loaders, measure_loader_throughput, set_epoch


def synthetic_root(size: tuple[int, int], count: int) -> Path:
    """A cached synthetic ``cvmtl`` dataset (``count`` train images at ``size``) in the temp dir,
    generated on first use, with a worker per core (byte-identical whatever the workers)."""
    from cvmtl.data.synthetic import generate_dataset

    h, w = size
    root = Path(tempfile.gettempdir()) / f"cvmtl_bench_synthetic_{h}x{w}_{count}"
    done = root / ".complete"
    if not done.is_file():
        workers = max(1, min(16, os.cpu_count() or 1))
        generate_dataset(
            root, {"train": count}, size=(h, w), seed=0, progress=False, workers=workers
        )
        done.touch()
    return root


def data_config(cfg: Any, min_images: int) -> Any:
    """``cfg`` with ``data.root`` pointing at real data: the configured root when it holds a
    dataset, else a generated synthetic one with at least ``min_images`` train images."""
    cfg = copy.deepcopy(cfg)
    root = Path(cfg.data.root)
    if not (root.is_dir() and any(root.iterdir())):
        cfg.data.root = str(synthetic_root(tuple(cfg.data.crop), max(16, min_images)))
        cfg.data.format = "cvmtl"
    return cfg


def train_loader(cfg: Any) -> DataLoader:
    """The train DataLoader of ``cfg`` (epoch 0)."""
    loader = build_loaders(cfg, splits=["train"])["train"]
    set_epoch({"train": loader}, 0)
    return loader


def endless(loader: DataLoader):
    """Batches of ``loader`` forever (the epoch restarts when it ends)."""
    epoch = 0
    while True:
        yield from loader
        epoch += 1
        set_epoch({"train": loader}, epoch)


def loader_benchmark(cfg: Any, batches: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Train-loader images/s with ``data.num_workers`` workers, nothing else running."""
    cfg = data_config(cfg, (batches + warmup) * cfg.train.batch_size)
    workers = cfg.data.num_workers
    result = measure_loader_throughput(copy.deepcopy(cfg), workers, batches, warmup)
    return {
        "img_s": result["samples_s"],
        "img_s_per_worker": result["samples_s_per_worker"],
        "seconds": result["seconds"],
        "num_workers": workers,
        "cache": cfg.data.cache,
        "batches": batches,
        "batch_size": cfg.train.batch_size,
        "root": cfg.data.root,
    }


def cache_comparison(
    cfg: Any, modes: tuple[str, ...] = ("none", "host"), rounds: int = 3, batches: int = 10
) -> dict[str, Any]:
    """Samples/s of each ``data.cache`` mode, interleaved ``rounds`` times (a shared machine
    drifts: every round measures every mode), with the median ratio to the first mode."""
    cfg = data_config(cfg, (batches + 2) * cfg.train.batch_size)
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            run = copy.deepcopy(cfg)
            run.data.cache = mode
            rates[mode].append(loader_benchmark(run, batches)["img_s"])
    base = statistics.median(rates[modes[0]])
    return {
        "img_s": rates,
        "ratio_to_" + modes[0]: {m: statistics.median(r) / base for m, r in rates.items()},
        "root": cfg.data.root,
        "num_workers": cfg.data.num_workers,
        "batch_size": cfg.train.batch_size,
        "crop": list(cfg.data.crop),
    }


if __name__ == "__main__":
    import argparse
    import json

    from cvmtl.config import load_config

    parser = argparse.ArgumentParser(description="Worker loader vs the cached pipeline.")
    parser.add_argument("--size", type=int, nargs=2, default=None, help="synthetic image h w")
    parser.add_argument("--count", type=int, default=64, help="synthetic train images")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=["none", "host"])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    config = load_config(None, args.overrides)
    if args.size:
        config.data.root = str(synthetic_root(tuple(args.size), args.count))
        config.data.format = "cvmtl"
    print(json.dumps(cache_comparison(config, tuple(args.modes), args.rounds, args.batches)))
