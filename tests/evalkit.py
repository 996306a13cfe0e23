"""Tiny synthetic datasets and configs for the baseline / fine-tune / eval-tool / report tests."""

from __future__ import annotations

from pathlib import Path

from cvmtl.config import Config, load_config
from cvmtl.data.synthetic import generate_dataset

SIZE = (64, 64)


def make_data(root: Path, train: int = 8, val: int = 4, test: int = 4) -> Path:
    """A 64x64 rendered dataset (13 NYU classes) in the ``cvmtl`` format."""
    counts = {"train": train, "val": val, "test": test}
    generate_dataset(root, counts, size=SIZE, seed=0, workers=1, progress=False)
    return root


def overrides(data_root: Path, out_dir: Path, **extra) -> list[str]:
    """key=value overrides of a tiny resnet18 run (neck 32, batch 4, CPU, fp32, 2 steps);
    ``extra`` uses ``__`` for dots, e.g. ``train__max_steps=4``."""
    values = {
        "name": "mtl",
        "out_dir": str(out_dir),
        "data.root": str(data_root),
        "data.crop": "[64, 64]",
        "data.num_workers": 0,
        "model.neck_channels": 32,
        "model.head_channels": 16,
        "train.max_steps": 2,
        "train.batch_size": 4,
        "train.amp": "none",
        "train.channels_last": "false",
        "train.device": "cpu",
        "train.log_every": 1,
        "train.best_metric": "seg/miou",
        "train.num_vis": 0,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def config(data_root: Path, out_dir: Path, **extra) -> Config:
    return load_config(None, overrides(data_root, out_dir, **extra))
