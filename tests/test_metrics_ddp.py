"""Metrics and evaluate() under 2-process gloo DDP equal single-process results."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cvmtl.config import Config
from cvmtl.engine.evaluator import evaluate
from cvmtl.metrics import build_metrics

pytestmark = pytest.mark.distributed
TASKS = ["seg", "depth", "normal"]
C = 5


class TinySet(Dataset):
    """Deterministic random samples following the sample contract."""

    def __init__(self, n=5, h=6, w=8):
        self.n, self.h, self.w = n, h, w

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        h, w = self.h, self.w
        seg = torch.randint(0, C, (h, w), generator=g)
        seg[0] = 255
        depth = 0.5 + 5 * torch.rand(1, h, w, generator=g)
        normal = torch.nn.functional.normalize(torch.randn(3, h, w, generator=g), dim=0)
        return {
            "image": torch.randn(3, h, w, generator=g),
            "seg": seg,
            "depth": depth,
            "normal": normal,
            "has": {t: True for t in TASKS},
            "meta": {"id": str(i)},
        }


class PixelModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, C + 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return {"seg": y[:, :C], "depth": y[:, C : C + 1].exp(), "normal": y[:, C + 1 :]}


def cfg():
    c = Config()
    c.data.num_classes = C
    c.train.amp = "none"
    c.train.channels_last = False
    return c


BAD_SAMPLES = (0, 3, 6)  # one NaN / inf prediction each, on a valid pixel of every task


@torch.no_grad()
def shard_metrics(rank, world):
    """Metric updates on this rank's shard of the batches (uneven sizes; rank 0 holds two of
    the samples with a non-finite prediction, rank 1 one)."""
    ds = TinySet(n=7)
    ms = build_metrics(TASKS, C, cfg())
    model = PixelModel()
    for i in range(rank, len(ds), world):
        s = ds[i]
        pred = {t: p.clone() for t, p in model(s["image"][None]).items()}
        if i in BAD_SAMPLES:
            for t in TASKS:
                pred[t][0, 0, 1, 1] = float("nan") if i < 6 else float("inf")
        for t in TASKS:
            ms[t].update(pred[t], s[t][None])
    return {t: m.compute() for t, m in ms.items()}


def worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        direct = shard_metrics(rank, world)
        ds = TinySet(n=5)  # 5 samples on 2 ranks: the sampler pads one duplicate
        sampler = DistributedSampler(ds, shuffle=True, seed=1)
        loader = DataLoader(ds, batch_size=2, sampler=sampler)
        ev = evaluate(PixelModel(), loader, TASKS, cfg(), progress=False)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"direct": direct, "evaluate": ev}, f)
    finally:
        dist.destroy_process_group()


def assert_same(a, b):
    for t in b:
        for k, v in b[t].items():
            assert a[t][k] == pytest.approx(v, rel=1e-5, abs=1e-5), (t, k)


@pytest.mark.timeout(120)
def test_ddp_metrics_equal_single_process(tmp_path):
    world = 2
    mp.spawn(worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    single_direct = shard_metrics(0, 1)
    assert all(single_direct[t]["nonfinite"] == len(BAD_SAMPLES) for t in TASKS)
    ds = TinySet(n=5)
    single_eval = evaluate(PixelModel(), DataLoader(ds, batch_size=2), TASKS, cfg(), progress=False)
    for rank in range(world):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert_same(got["direct"], single_direct)
        assert_same(got["evaluate"], single_eval)
