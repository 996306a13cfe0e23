"""Five tasks (seg, depth, normal, edge, saliency): every balancer trains them under bf16
autocast, and two gloo processes train them like one process (gradient methods included)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tinymtl import TrunkAndHeads, split_batch, tiny_cfg
from torch import nn

from cvmtl.balancers import BALANCERS, build_balancer
from cvmtl.engine.step import train_step
from cvmtl.tasks import get_task

TASKS = ["seg", "depth", "normal", "edge", "saliency"]
NUM_CLASSES = 4


class SpecHeads(TrunkAndHeads):
    """A GroupNorm trunk and one conv head per task whose output is the task's spec: channels
    and activation (so a new task needs nothing here)."""

    def __init__(self, tasks: list[str], ch: int = 8):
        super().__init__()
        self.tasks = list(tasks)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, ch, 3, stride=2, padding=1), nn.GroupNorm(2, ch), nn.ReLU()
        )
        out = {t: get_task(t).out_channels(NUM_CLASSES) for t in tasks}
        self.heads = nn.ModuleDict({t: nn.Conv2d(ch, out[t], 3, padding=1) for t in tasks})

    def forward_features(self, x):
        return self.backbone(x)

    def forward_heads(self, z, size):
        out = {}
        for t, head in self.heads.items():
            y = F.interpolate(head(z), size=tuple(size), mode="bilinear", align_corners=False)
            out[t] = get_task(t).activate(y.float(), None)
        return out


def random_label(task: str, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Random labels of ``task``'s label kind, about 20% of them unknown."""
    spec = get_task(task)
    kind, hw = spec.label, (size, size)
    unknown = torch.rand(n, *hw, generator=g) < 0.2
    if kind.integer:
        label = torch.randint(0, spec.out_channels(NUM_CLASSES) or 2, (n, *hw), generator=g)
        if spec.channels == 1:  # a binary map: 0 / 1
            label = torch.randint(0, 2, (n, *hw), generator=g)
        return label.masked_fill(unknown, int(kind.fill))
    if kind.unit_vector:
        label = F.normalize(torch.randn(n, kind.channels, *hw, generator=g), dim=1)
    else:
        label = torch.rand(n, kind.channels, *hw, generator=g) * 5 + 0.5
    return label.masked_fill(unknown[:, None], kind.fill)


def make_batch(n: int, seed: int, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(n, 3, size, size, generator=g)}
    batch.update({t: random_label(t, n, size, g) for t in TASKS})
    batch["has"] = {t: torch.ones(n, dtype=torch.bool) for t in TASKS}
    batch["has"]["saliency"][0] = False  # partial labels
    return batch


def _cfg(source: str = "features", amp: str = "none"):
    cfg = tiny_cfg(grad_source=source)
    cfg.data.num_classes = NUM_CLASSES
    cfg.tasks = list(TASKS)
    cfg.train.amp = amp
    return cfg


def _train(name: str, source: str, batches: list[dict], amp: str = "none") -> torch.Tensor:
    torch.manual_seed(0)
    model = SpecHeads(TASKS)
    balancer = build_balancer(name, TASKS)
    params = list(model.parameters()) + list(balancer.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    for batch in batches:
        out = train_step(model, batch, balancer, opt, None, _cfg(source, amp))
        assert not out.skipped, f"{name}: {out['reason']}"
    return torch.cat([p.detach().reshape(-1) for p in params])


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_trains_five_tasks_under_bf16(name):
    source = "params" if name in ("db_mtl",) else "features"
    torch.manual_seed(0)
    before = torch.cat([p.detach().reshape(-1) for p in SpecHeads(TASKS).parameters()])
    after = _train(name, source, [make_batch(4, s) for s in (0, 1)], amp="bf16")
    assert torch.isfinite(after).all()
    assert not torch.equal(after[: before.numel()], before)


RUNS = [("fixed", "features"), ("uw", "features"), ("dwa", "features"), ("mgda", "features"),
        ("pcgrad", "params"), ("cagrad", "features"), ("nash_mtl", "params")]  # fmt: skip


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    batches = [make_batch(4, s) for s in (0, 1)]
    expected = {f"{n}/{s}": _train(n, s, batches) for n, s in RUNS}
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        halves = [split_batch(b, 2, rank) for b in batches]
        diffs = {
            f"{n}/{s}": float((_train(n, s, halves) - expected[f"{n}/{s}"]).abs().max())
            for n, s in RUNS
        }
        bf16 = _train("mgda", "features", halves, amp="bf16")
        gathered = [torch.empty_like(bf16) for _ in range(2)]
        dist.all_gather(gathered, bf16)
        diffs["bf16 ranks agree"] = float((gathered[0] - gathered[1]).abs().max())
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(diffs, f)


@pytest.mark.distributed
def test_two_processes_train_five_tasks_like_one(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        for run, diff in json.loads((tmp_path / f"rank{rank}.json").read_text()).items():
            assert diff < 1e-5, f"rank {rank} {run}: max |param diff| {diff:.3g}"
