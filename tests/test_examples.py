"""The scripts in examples/ run as a user runs them."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvmtl.balancers import BALANCERS, build_balancer

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


TWO_TASKS = ["left", "right"]
GRADIENT = [n for n in BALANCERS if build_balancer(n, TWO_TASKS).kind == "gradient"]
CASES = [(n, "features") for n in BALANCERS] + [(n, "params") for n in GRADIENT]


@pytest.fixture(scope="module")
def ddp_balancers(tmp_path_factory) -> dict:
    """tests/ddp_balancers.py on one process and on two gloo processes, at the same time (one
    launch each for every balancer: starting the processes is the cost)."""
    out = tmp_path_factory.mktemp("ddp_balancers")
    script = str(ROOT / "tests" / "ddp_balancers.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmds = [[sys.executable, script, str(out / "one")],
            [*torchrun, "--nproc_per_node", "2", script, str(out / "two")]]  # fmt: skip
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for c in cmds
    ]
    try:
        logs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:  # a hung rendezvous or collective: stop it
            if proc.poll() is None:
                proc.kill()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    return {
        "one": json.loads((out / "one" / "rank0.json").read_text()),
        "two": [json.loads((out / "two" / f"rank{r}.json").read_text()) for r in (0, 1)],
    }


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_every_balancer_two_processes_equal_one(ddp_balancers, name, mode):
    """Each registered balancer through the public API on a model of the user's own: two gloo
    processes with half the batch each leave the weights and parameters (the balancer's own
    included) of one process on the whole batch, and both ranks agree. A balancer that needs the
    raw per-task feature gradients refuses the features mode under DDP with one clear line."""
    key = f"{name}/{mode}"
    one, (two, other) = ddp_balancers["one"][key], [r[key] for r in ddp_balancers["two"]]
    if "error" in one:  # a mode the balancer refuses on any number of processes
        assert one["error"].startswith("ValueError: ") and "\n" not in one["error"], one
        assert two == one == other, (one, two)
        pytest.skip(f"{name} refuses {mode} mode: {one['error']}")
    if "error" in two:
        error = two["error"]
        assert error.startswith("ValueError: ") and "\n" not in error, two
        assert mode == "features" and not build_balancer(name, TWO_TASKS).uses_gram, error
        assert "params mode" in error and other == two, error
        pytest.skip(f"{name} refuses features mode under DDP (needs raw gradients): {error}")
    assert other == two, "the two ranks differ"
    # float32 throughout: 1e-6, relative for the weights above 1 (GLS, DB-MTL: 5 to 10)
    torch.testing.assert_close(
        torch.tensor(two["weights"]), torch.tensor(one["weights"]), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(
        torch.tensor(two["params"]), torch.tensor(one["params"]), atol=1e-6, rtol=0
    )
