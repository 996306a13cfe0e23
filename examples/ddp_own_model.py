"""Balancing under torchrun in a plain loop: N processes train exactly like one on the whole batch.

    torchrun --nproc_per_node 2 examples/ddp_own_model.py [--steps 3] [--balancer mgda]

Why a plain DDP script and not Lightning: it is the loop that the balancer has to fit into, with
nothing hidden. No DistributedDataParallel wrapper (it would all-reduce after each per-task
backward); instead each rank's losses are its share of the global mean, and every gradient is
summed over the ranks before the step.
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
optimizer = torch.optim.SGD(params, lr=0.1)
balancer = cvmtl.build_balancer(args.balancer, tasks=["left", "right"])

for step in range(args.steps):
    x, y = torch.randn(8, 6), torch.randn(8, 3)  # the global batch; each rank takes its rows
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    z = trunk(x)
    losses = {  # this rank's share of the global means
        "left": heads["left"](z).pow(2).mean() / world,
        "right": (heads["right"](z) - y).abs().mean() / world,
    }
    features = None if args.params else z
    weights = cvmtl.mtl_backward(
        losses, balancer, shared_params=trunk.parameters(), features=features
    )
    if distributed:
        for p in params:
            dist.all_reduce(p.grad)
    optimizer.step()
    optimizer.zero_grad()
    if rank == 0:
        print(f"step {step}: " + ", ".join(f"w_{t} {w:.6f}" for t, w in weights.items()))
if rank == 0:
    print(f"checksum {sum(p.double().sum().item() for p in params):.10f}")
if distributed:
    dist.destroy_process_group()
