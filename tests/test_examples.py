"""The scripts in examples/ run as a user runs them."""

import os
import re
import subprocess
import sys
from pathlib import Path

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
