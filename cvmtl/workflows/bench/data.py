"""Real data for benchmarks: the config's dataset, or a small synthetic one generated once.

``loader_benchmark`` times the train loader alone (images/s with ``data.num_workers``);
``train_loader`` gives the loader whose waits are the ``data`` phase of the training step.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from cvmtl.data.loader import build_loaders, measure_loader_throughput, set_epoch


def synthetic_root(size: tuple[int, int], count: int) -> Path:
    """A cached synthetic ``cvmtl`` dataset (``count`` train images at ``size``) in the temp dir,
    generated on first use (a few seconds per image on two cores)."""
    from cvmtl.data.synthetic import generate_dataset

    h, w = size
    root = Path(tempfile.gettempdir()) / f"cvmtl_bench_synthetic_{h}x{w}_{count}"
    done = root / ".complete"
    if not done.is_file():
        generate_dataset(root, {"train": count}, size=(h, w), seed=0, progress=False)
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
        "batches": batches,
        "batch_size": cfg.train.batch_size,
        "root": cfg.data.root,
    }
