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
    ("fixed+depth_normal", "features"),  # the consistency term's sign is a global sum
    ("fairgrad+class_weights", "features"),  # the demo's loss: weighted seg pixels, global sums
]
TERMS = {  # a run's loss options after its "+"
    "": {},
    "depth_normal": {"consistency": {"depth_normal": 1.0}},
    "class_weights": {"seg_class_weights": [0.5, 1.0, 2.0, 4.0]},
}


def _batches() -> list[dict]:
    batches = [make_batch(n=4, seed=s) for s in (0, 1)]
    # partial labels: rank 1 has no depth label in step 0 (global mean over rank 0's pixels)
    batches[0]["has"]["depth"] = torch.tensor([True, False, False, False])
    batches[1]["has"]["seg"] = torch.tensor([False, True, True, False])
    for i, b in enumerate(batches):  # tilted planes per sample: the depth-normal term's pixels
        g = torch.Generator().manual_seed(i)
        tilt = torch.nn.functional.normalize(torch.randn(4, 3, 1, 1, generator=g), dim=1)
        b["normal"] = tilt.expand_as(b["normal"]).clone()
        b["normal"][:, :, :, :3] = 0  # unlabeled pixels
        # Inverse depth along +-(n_x, n_y): rank 0's half disagrees weakly with its normals, rank
        # 1's agrees strongly, so only the global sum gives the single-process axis sign.
        v, u = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        slope = torch.tensor([-0.2, -0.2, 1.0, 1.0]).view(4, 1, 1, 1) * 0.01
        b["depth"] = 1 / (0.3 + slope * (tilt[:, :1] * u + tilt[:, 1:2] * v) + 0.2)
    return batches


def _train(name: str, source: str, batches: list[dict]) -> torch.Tensor:
    torch.manual_seed(0)
    model = TinyMTL(TASKS)
    name, _, term = name.partition("+")
    balancer = build_balancer(name, TASKS)
    params = list(model.parameters()) + list(balancer.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    cfg = tiny_cfg(grad_source=source, **TERMS[term])
    cfg.train.grad_clip = 1.0
    for batch in batches:
        out = train_step(model, batch, balancer, opt, None, cfg)
        assert not out.skipped, out.reason
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


def _bn_model() -> TinyMTL:
    """TinyMTL with BatchNorm in the backbone (the default ``model.norm: bn``)."""
    torch.manual_seed(0)
    model = TinyMTL(TASKS)
    model.backbone[1] = torch.nn.BatchNorm2d(8)
    model.backbone[4] = torch.nn.BatchNorm2d(8)
    return model


def _bn_train(model, batches_per_step, name: str) -> list[torch.Tensor]:
    balancer = build_balancer(name, TASKS)
    params = list(model.parameters()) + list(balancer.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for batches in batches_per_step:
        out = train_step(model, batches, balancer, opt, None, tiny_cfg())
        assert not out.skipped, out.reason
    return params


def _flat_buffers(model) -> torch.Tensor:
    return torch.cat([b.reshape(-1) for b in model.buffers() if b.is_floating_point()])


def _ddp(model):
    from torch.nn.parallel import DistributedDataParallel

    from cvmtl.distributed import sum_allreduce_hook

    ddp = DistributedDataParallel(model, broadcast_buffers=False)
    ddp.register_comm_hook(None, sum_allreduce_hook)
    return ddp


def _bn_worker(rank: int, init_file: str, out_dir: str) -> None:
    """DDP with BatchNorm: each rank normalizes its own half, as one process does with the
    halves as micro-batches of one step (2 steps); after one step, each rank's running statistics
    are its half's, and averaged they are the mean of the halves'."""
    from cvmtl.distributed import average_buffers

    torch.set_num_threads(1)
    batches = _batches()
    halves = [[split_batch(b, WORLD, r) for r in range(WORLD)] for b in batches]
    refs = {}
    for name in ("fixed", "uw"):
        params = _bn_train(_bn_model(), halves, name)
        per_half = []
        for r in range(WORLD):
            m = _bn_model()
            _bn_train(m, [halves[0][r]], name)  # one step: the statistics of half r
            per_half.append(_flat_buffers(m))
        refs[name] = (torch.cat([p.detach().reshape(-1) for p in params]), per_half)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        report = {}
        for name, (want, per_half) in refs.items():
            params = _bn_train(_ddp(_bn_model()), [[h[rank]] for h in halves], name)
            got = torch.cat([p.detach().reshape(-1) for p in params])
            model = _bn_model()
            _bn_train(_ddp(model), [[halves[0][rank]]], name)
            local = _flat_buffers(model)
            average_buffers(model)
            avg = _flat_buffers(model)
            gathered = [torch.zeros_like(avg) for _ in range(WORLD)]
            dist.all_gather(gathered, avg)
            report[name] = {
                "params": float((got - want).abs().max()),
                "local_is_own_half": float((local - per_half[rank]).abs().max()),
                "ranks_agree": float((gathered[0] - gathered[1]).abs().max()),
                "is_mean": float((avg - torch.stack(per_half).mean(0)).abs().max()),
            }
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"bn{rank}.json"), "w") as f:
        json.dump(report, f)


@pytest.mark.distributed
def test_ddp_batchnorm_ranks_hold_one_model(tmp_path):
    mp.spawn(_bn_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        for name, r in json.loads((tmp_path / f"bn{rank}.json").read_text()).items():
            assert r["params"] < 1e-5, (rank, name, r)  # = one process, halves as micro-batches
            assert r["local_is_own_half"] < 1e-6, (rank, name, r)  # per-rank statistics
            assert r["ranks_agree"] == 0.0, (rank, name, r)  # after averaging: one model
            assert r["is_mean"] < 1e-6, (rank, name, r)


def _node_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Two 'nodes' without a shared disk: each rank has its own run folder, only rank 0's holds
    best.pt and last.pt; both ranks must end up with rank 0's weights and checkpoint."""
    from pathlib import Path

    from cvmtl.engine.build import read_checkpoint
    from cvmtl.engine.checkpoint import save_checkpoint
    from cvmtl.engine.trainer import load_best_everywhere

    torch.set_num_threads(1)
    own = Path(out_dir) / f"node{rank}"
    own.mkdir()
    torch.manual_seed(123)
    best = TinyMTL(TASKS)
    if rank == 0:
        for name in ("best.pt", "last.pt"):
            save_checkpoint({"model": best.state_dict(), "step": 7}, own / name)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(rank)  # different weights on each rank before
        model = TinyMTL(TASKS)
        found = load_best_everywhere(model, own / "best.pt")
        cfg = tiny_cfg()
        cfg.out_dir, cfg.name = str(Path(out_dir)), f"node{rank}"
        ckpt = read_checkpoint(cfg, True)
        diff = max(
            float((p - q).abs().max()) for p, q in zip(model.parameters(), best.parameters())
        )
        report = {"found": found, "diff": diff, "step": int(ckpt["step"])}
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"node{rank}.json"), "w") as f:
        json.dump(report, f)


@pytest.mark.distributed
def test_nodes_without_a_shared_disk_get_rank0s_best_and_resume_checkpoint(tmp_path):
    mp.spawn(_node_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        r = json.loads((tmp_path / f"node{rank}.json").read_text())
        assert r == {"found": True, "diff": 0.0, "step": 7}, (rank, r)


def _cat(batches: list[dict]) -> dict:
    """One batch of ``batches`` side by side (inverse of split_batch)."""
    out = {k: torch.cat([b[k] for b in batches]) for k in batches[0] if k != "has"}
    out["has"] = {t: torch.cat([b["has"][t] for b in batches]) for t in batches[0]["has"]}
    return out


def _accumulate_worker(rank: int, init_file: str, out_dir: str) -> None:
    """2 ranks x 2 micro-batches (DDP's no_sync between them) = one process, for a loss-level
    balancer through the DDP wrapper with BatchNorm (4 normalizations either way) and for a
    gradient balancer (its micro-batch j is both ranks' j-th parts: the Gram is global)."""
    torch.set_num_threads(1)
    parts = [split_batch(b, 4, i) for b in _batches() for i in range(4)][:8]
    mine = [[parts[4 * s + 2 * rank], parts[4 * s + 2 * rank + 1]] for s in range(2)]
    # one process: the loss step sees 4 micro-batches; the gradient step 2 (ranks side by side)
    loss_ref = _bn_train(_bn_model(), [parts[4 * s : 4 * s + 4] for s in range(2)], "fixed")
    pair = [[_cat([parts[4 * s + j], parts[4 * s + 2 + j]]) for j in (0, 1)] for s in (0, 1)]
    grad_ref = _train_micro(TinyMTL(TASKS), pair)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        loss_got = _bn_train(_ddp(_bn_model()), mine, "fixed")
        grad_got = _train_micro(TinyMTL(TASKS), mine)
        report = {
            "loss": max(float((p - q).abs().max()) for p, q in zip(loss_got, loss_ref)),
            "grad": float((grad_got - grad_ref).abs().max()),
        }
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"acc{rank}.json"), "w") as f:
        json.dump(report, f)


def _train_micro(model, steps) -> torch.Tensor:
    torch.manual_seed(0)
    model.load_state_dict(TinyMTL(TASKS).state_dict())
    balancer = build_balancer("mgda", TASKS)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for micro in steps:
        out = train_step(model, micro, balancer, opt, None, tiny_cfg(grad_source="features"))
        assert not out.skipped, out.reason
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.distributed
def test_ddp_accumulation_equals_one_process(tmp_path):
    mp.spawn(_accumulate_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        r = json.loads((tmp_path / f"acc{rank}.json").read_text())
        assert r["loss"] < 1e-5 and r["grad"] < 1e-5, (rank, r)
