"""Tiny on-disk datasets and configs for the training-engine tests (seconds per run on 2 cores)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cvmtl.config import Config, load_config
from cvmtl.data.io import write_cvmtl_sample, write_dataset_yaml, write_split

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4


def make_tiny_dataset(root: Path, counts=(("train", 8), ("val", 4), ("test", 4)), hw=(40, 48)):
    """Random images with blocky labels (learnable a little), in the ``cvmtl`` format."""
    rng = np.random.default_rng(0)
    h, w = hw
    for split, n in counts:
        ids = []
        for i in range(n):
            sid = f"{split}_{i:03d}"
            seg = np.kron(rng.integers(0, NUM_CLASSES, (h // 8, w // 8)), np.ones((8, 8), int))
            seg = seg.astype(np.uint8)
            seg[:2] = 255  # an ignore band
            image = (seg[..., None] * 50 + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
            depth = (1.0 + seg.astype(np.float32) * 0.5).astype(np.float32)
            depth[seg == 255] = 0.0
            normal = np.zeros((h, w, 3), np.float32)
            normal[..., 2] = -1.0
            normal[seg == 255] = 0.0
            write_cvmtl_sample(root, sid, image, seg, depth, normal)
            ids.append(sid)
        write_split(root, split, ids)
    names = [f"c{i}" for i in range(NUM_CLASSES)]
    palette = [[60 * i, 255 - 60 * i, 100] for i in range(NUM_CLASSES)]
    write_dataset_yaml(root, "tiny", names, palette, None)
    return root


def tiny_overrides(data_root: Path, out_dir: Path, **extra) -> list[str]:
    """key=value overrides of a tiny resnet18 run (crop 32x32, neck 32, batch 4, CPU, fp32)."""
    values = {
        "name": "tiny",
        "out_dir": str(out_dir),
        "data.root": str(data_root),
        "data.num_classes": NUM_CLASSES,
        "loss.seg_class_weights": "null",  # a shipped config's weights are for its own classes
        "data.crop": "[32, 32]",
        "data.num_workers": 0,
        "model.neck_channels": 32,
        "model.head_channels": 16,
        "train.epochs": 1,
        "train.batch_size": 4,
        "train.amp": "none",
        "train.channels_last": "false",
        "train.device": "cpu",
        "train.log_every": 1,
        "train.best_metric": "seg/miou",
        "train.num_vis": 2,
        "train.warmup_steps": 0,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config(data_root: Path, out_dir: Path, **extra) -> Config:
    """``extra``: overrides with ``__`` for dots, e.g. ``train__max_steps=3``."""
    return load_config(None, tiny_overrides(data_root, out_dir, **extra))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


def torchrun_train(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``tools/train.py`` under ``torchrun --nproc_per_node nproc`` on the loopback (gloo)."""
    cmd = [
        PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(REPO / "tools" / "train.py"), *args,
    ]  # fmt: skip
    env = dict(subprocess_env(), GLOO_SOCKET_IFNAME="lo")
    return subprocess.run(cmd, cwd=cwd, env=env, timeout=300, capture_output=True)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 spinning OpenMP threads per process
    make a tiny step 10-20x slower than one thread does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
