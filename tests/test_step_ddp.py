"""Two gloo processes on halves of a batch train exactly like one process on the whole batch."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tinymtl import TinyMTL, make_batch, split_batch, tiny_cfg

from cvmtl.balancers import build_balancer
from cvmtl.engine.step import train_step

TASKS = ["seg", "depth", "normal"]
WORLD = 2
RUNS = [
    ("mgda", "features"),
    ("mgda", "params"),
    ("pcgrad", "features"),
    ("pcgrad", "params"),
    ("fixed", "features"),
    ("uw", "features"),
    ("gls", "features"),
]


def _batches() -> list[dict]:
    batches = [make_batch(n=4, seed=s) for s in (0, 1)]
    # partial labels: rank 1 has no depth label in step 0 (global mean over rank 0's pixels)
    batches[0]["has"]["depth"] = torch.tensor([True, False, False, False])
    batches[1]["has"]["seg"] = torch.tensor([False, True, True, False])
    return batches


def _train(name: str, source: str, batches: list[dict]) -> torch.Tensor:
    torch.manual_seed(0)
    model = TinyMTL(TASKS)
    balancer = build_balancer(name, TASKS)
    params = list(model.parameters()) + list(balancer.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    cfg = tiny_cfg(grad_source=source)
    cfg.train.grad_clip = 1.0
    for batch in batches:
        out = train_step(model, batch, balancer, opt, None, cfg)
        assert not out["skipped"], out["reason"]
    return torch.cat([p.detach().reshape(-1) for p in params])


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    batches = _batches()
    expected = {f"{n}/{s}": _train(n, s, batches) for n, s in RUNS}  # one process, whole batch
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        halves = [split_batch(b, WORLD, rank) for b in batches]
        diffs = {}
        for name, source in RUNS:
            got = _train(name, source, halves)
            diffs[f"{name}/{source}"] = float((got - expected[f"{name}/{source}"]).abs().max())
        graddrop = build_balancer("graddrop", TASKS)
        try:
            train_step(TinyMTL(TASKS), halves[0], graddrop, None, None, tiny_cfg())
            refused = ""
        except ValueError as err:
            refused = str(err)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"diffs": diffs, "refused": refused}, f)


@pytest.mark.distributed
def test_two_process_gloo_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for run, diff in result["diffs"].items():
            assert diff < 1e-5, f"rank {rank} {run}: max |param diff| {diff:.3g}"
        assert "raw per-task gradients" in result["refused"]
