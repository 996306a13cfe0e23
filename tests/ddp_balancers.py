"""Every registered balancer through the public API in a plain loop, written to JSON per rank.

    python tests/ddp_balancers.py OUT_DIR                                   # one process
    torchrun --standalone --nproc_per_node 2 tests/ddp_balancers.py OUT_DIR  # two (gloo)

Run by tests/test_examples.py, which compares the two: N processes, each with its rows of the
batch, must train exactly like one process on the whole batch. All balancers run in one launch
(starting the processes is the cost). The loop is exactly the recipe that the README ("Balancers
in your own training loop") and examples/ddp_own_model.py give users, with public names only:

- each rank's losses are its share of the global mean (local sum / global count);
- the balancer's parameters (UW's) go into the optimizer;
- after ``cvmtl.mtl_backward`` the model's gradients are summed over ranks (not the balancer's);
- after the step ``cvmtl.mtl_after_step(losses, balancer)`` (FAMO, which compares the losses
  before and after the step: those of the same batch recomputed), and ``balancer.epoch_end()``.

A balancer that refuses a mode (a ValueError) is recorded as ``{"error": message}``.
"""

import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import cvmtl
from cvmtl.balancers import BALANCERS

TASKS = ["left", "right"]
STEPS, BATCH = 3, 8


def shares(trunk, heads, x, y) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The features and this rank's shares of the global mean losses (local sums over the
    global element counts)."""
    z = trunk(x)
    return z, {
        "left": heads["left"](z).pow(2).sum() / BATCH,
        "right": (heads["right"](z) - y).abs().sum() / (BATCH * 3),
    }


def run(name: str, features: bool, rank: int, world: int) -> dict:
    torch.manual_seed(0)  # the same initial weights and data on every rank
    trunk = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 16))
    heads = nn.ModuleDict({"left": nn.Linear(16, 1), "right": nn.Linear(16, 3)})
    params = [*trunk.parameters(), *heads.parameters()]
    balancer = cvmtl.build_balancer(name, tasks=TASKS)
    optimizer = torch.optim.SGD([*params, *balancer.parameters()], lr=0.1)
    weights = []
    for _ in range(STEPS):
        x, y = torch.randn(BATCH, 6), torch.randn(BATCH, 3)  # the global batch
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        z, losses = shares(trunk, heads, x, y)
        w = cvmtl.mtl_backward(
            losses, balancer, shared_params=trunk.parameters(), features=z if features else None
        )
        weights.append([w[t] for t in TASKS])
        if world > 1:
            for p in params:  # the model's gradients; the balancer's are global already
                dist.all_reduce(p.grad)
        optimizer.step()
        optimizer.zero_grad()
        if getattr(balancer, "needs_post_step_losses", False):  # FAMO
            with torch.no_grad():
                _, losses = shares(trunk, heads, x, y)
        cvmtl.mtl_after_step(losses, balancer)
        balancer.epoch_end()  # one step an epoch: DWA weighs by loss ratios from the third on
    flat = torch.cat([p.detach().reshape(-1) for p in [*params, *balancer.parameters()]])
    return {"weights": weights, "params": flat.double().tolist()}


def main(out: Path) -> None:
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    results = {}
    for name in BALANCERS:
        for mode in ("features", "params"):
            try:
                results[f"{name}/{mode}"] = run(name, mode == "features", rank, world)
            except Exception as err:  # the test decides which refusals are documented
                results[f"{name}/{mode}"] = {"error": f"{type(err).__name__}: {err}"}
                if not isinstance(err, ValueError):
                    results[f"{name}/{mode}"]["traceback"] = traceback.format_exc()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
