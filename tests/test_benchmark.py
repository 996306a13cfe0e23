"""Benchmark: the JSON fields exist with sane types (timings themselves are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cvmtl.benchmark import run_benchmark, simple_losses
from cvmtl.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.crop=[64,96]",
    "train.batch_size=2",
    "model.neck_channels=16",
    "model.head_channels=8",
    "train.device=cpu",
]


def check_result(result: dict) -> None:
    for part in ("train", "eval"):
        assert result[part]["img_s"] > 0
        stats = result[part]["step_s"]
        assert set(stats) >= {"median", "min", "max"}
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert isinstance(result["train"]["phases"], dict)
    assert result["peak_mem_mb"] > 0 and isinstance(result["peak_mem_kind"], str)
    assert isinstance(result["params"], int) and result["params"] > 0
    assert isinstance(result["flops_per_img"], int) and result["flops_per_img"] > 0
    assert result["mfu"] is None or 0 < result["mfu"] < 1
    assert result["config"]["data"]["crop"] == [64, 96]
    assert isinstance(result["device"], str) and isinstance(result["torch"], str)


@pytest.mark.parametrize(
    "extra", [[], ["model.sharing=soft", "tasks=[seg,depth]", "train.amp=none"]]
)
def test_run_benchmark_fields(extra: list[str]) -> None:
    cfg = load_config(None, TINY + extra)
    result = run_benchmark(cfg, iters=2, warmup=1, device="cpu")
    check_result(result)
    json.dumps(result)  # serializable as is


def test_flops_scale_with_pixels() -> None:
    small = run_benchmark(load_config(None, TINY), iters=1, warmup=0)
    big = run_benchmark(load_config(None, [*TINY, "data.crop=[128,192]"]), iters=1, warmup=0)
    assert 3.5 < big["flops_per_img"] / small["flops_per_img"] < 4.5


def test_simple_losses_are_finite() -> None:
    import torch

    from cvmtl.benchmark import random_batch

    cfg = load_config(None, TINY)
    batch = random_batch(cfg, 2, torch.device("cpu"))
    preds = {
        "seg": torch.randn(2, 13, 64, 96),
        "depth": torch.rand(2, 1, 64, 96) + 0.1,
        "normal": torch.nn.functional.normalize(torch.randn(2, 3, 64, 96), dim=1),
    }
    losses = simple_losses(preds, batch)
    assert set(losses) == {"seg", "depth", "normal"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_cli_writes_json(tmp_path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO / "tools/benchmark.py"),
        "--config",
        str(REPO / "configs/synthetic_demo.yaml"),
        *TINY,
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
        str(out),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "img/s" in proc.stdout
    check_result(json.loads(out.read_text()))


def test_cli_rejects_bad_override() -> None:
    cmd = [sys.executable, str(REPO / "tools/benchmark.py"), "model.nope=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "model.nope" in proc.stderr
