"""The scripts in examples/ run as a user runs them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_own_model_trains_with_a_gradient_balancer():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = ROOT / "examples" / "own_model.py"
    cmd = [sys.executable, str(script), "--steps", "2", "--balancer", "mgda"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = re.findall(
        r"step (\d): seg ([\d.]+) \(w ([\d.]+)\), depth ([\d.]+) \(w ([\d.]+)\)", proc.stdout
    )
    assert [int(m[0]) for m in lines] == [0, 1]
    for _, _, w_seg, _, w_depth in lines:  # MGDA's weights: a convex combination
        assert abs(float(w_seg) + float(w_depth) - 1) < 0.02


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize(("balancer", "mode"), [("mgda", []), ("upgrad", ["--params"])])
def test_ddp_example_two_processes_equal_one(balancer, mode):
    """Two gloo processes with half the batch each end with the single process's weights."""
    script = str(ROOT / "examples" / "ddp_own_model.py")
    args = [script, "--balancer", balancer, *mode]
    one = _run([sys.executable, *args])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    two = _run([*torchrun, "--master_port", str(29650 + len(mode)), *args])
    numbers = [re.findall(r"-?\d+\.\d+", out) for out in (one, two)]
    assert len(numbers[0]) == 7 and len(numbers[1]) == 7  # 3 steps x 2 weights + checksum
    for a, b in zip(*numbers):
        assert abs(float(a) - float(b)) < 1e-6
