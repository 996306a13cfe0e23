"""Balancing under torchrun in a plain loop: N processes train exactly like one on the whole batch.

    torchrun --nproc_per_node 2 examples/ddp_own_model.py [--steps 3] [--balancer mgda]

Why a plain DDP script and not Lightning: it is the loop that the balancer has to fit into, with
nothing hidden. No DistributedDataParallel wrapper (it would all-reduce after each per-task
backward); instead each rank's losses are its share of the global mean, and the model's
gradients are summed over the ranks before the step. Any balancer works this way (UW, DWA, FAMO,
... included): the loss values it sees are made global inside ``cvmtl.mtl_backward``.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

import cvmtl

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--balancer", default="mgda")
parser.add_argument("--params", action="store_true", help="per-task gradients of the parameters")
args = parser.parse_args()

distributed = "WORLD_SIZE" in os.environ
if distributed:
    dist.init_process_group("gloo")
rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

torch.manual_seed(0)  # the same initial weights and data on every rank
trunk = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 16))
heads = nn.ModuleDict({"left": nn.Linear(16, 1), "right": nn.Linear(16, 3)})
params = [*trunk.parameters(), *heads.parameters()]
balancer = cvmtl.build_balancer(args.balancer, tasks=["left", "right"])
optimizer = torch.optim.SGD([*params, *balancer.parameters()], lr=0.1)  # UW has parameters


def shares(x, y):
    """This rank's share of the global mean losses (equal local batches: local mean / world)."""
    z = trunk(x)
    losses = {
        "left": heads["left"](z).pow(2).mean() / world,
        "right": (heads["right"](z) - y).abs().mean() / world,
    }
    return z, losses


for step in range(args.steps):
    x, y = torch.randn(8, 6), torch.randn(8, 3)  # the global batch; each rank takes its rows
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    z, losses = shares(x, y)
    features = None if args.params else z
    weights = cvmtl.mtl_backward(
        losses, balancer, shared_params=trunk.parameters(), features=features
    )
    if distributed:
        for p in params:  # the model's gradients (the balancer's are the same on every rank)
            dist.all_reduce(p.grad)
    optimizer.step()
    optimizer.zero_grad()
    if getattr(balancer, "needs_post_step_losses", False):  # FAMO: the batch after the step
        with torch.no_grad():
            _, losses = shares(x, y)
    cvmtl.mtl_after_step(losses, balancer)  # stateful methods; the others ignore it
    if rank == 0:
        print(f"step {step}: " + ", ".join(f"w_{t} {w:.6f}" for t, w in weights.items()))
if rank == 0:
    print(f"checksum {sum(p.double().sum().item() for p in params):.10f}")
if distributed:
    dist.barrier()  # no rank tears the group down while another still talks to it
    dist.destroy_process_group()
