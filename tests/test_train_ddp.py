"""torchrun + gloo: two processes train exactly like one process on the same global batch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from enginekit import (
    PYTHON,
    make_tiny_dataset,
    one_thread,  # noqa: F401  (autouse fixture)
    read_jsonl,
    subprocess_env,
    tiny_config,
    tiny_overrides,
    torchrun_train,
)

import cvmtl.data.loader as data_loader
from cvmtl.engine.checkpoint import load_checkpoint
from cvmtl.engine.trainer import fit

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), hw=(64, 80))


def test_torchrun_two_processes_equal_one(tiny_data, tmp_path, monkeypatch):
    # No batch statistics anywhere (a LayerNorm backbone, GroupNorm in neck and heads), so
    # splitting a batch over ranks changes nothing. SGD: Adam's first steps turn the rounding
    # noise of near-zero gradients into +-lr. A 64x64 crop: at 32x32 the stride-32 map is 1x1
    # and GroupNorm over it is ill-conditioned (1e-4 differences from summation order alone).
    common = dict(
        model__norm="gn", model__backbone="convnext_atto", data__crop="[64, 64]",
        train__optimizer="sgd", train__lr=0.05, train__max_steps=2, train__warmup_steps=1,
    )  # fmt: skip
    args = tiny_overrides(tiny_data, tmp_path / "ddp", train__batch_size=2, **common)
    done = torchrun_train(args, tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["tiny"]  # one run folder
    run = tmp_path / "ddp" / "tiny"
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # rank 0 only
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]  # one writer
    assert [r["split"] for r in records if r["split"] != "train"] == ["val", "test"]

    # One process, global batch 4, the same (seed, epoch) sample order as the DDP sampler.
    real = data_loader.build_loaders

    def one_replica(cfg, distributed=False, **kw):
        return real(cfg, True, num_replicas=1, rank=0)

    monkeypatch.setattr(data_loader, "build_loaders", one_replica)
    fit(tiny_config(tiny_data, tmp_path / "one", train__batch_size=4, **common))
    two = load_checkpoint(run / "last.pt")["model"]
    one = load_checkpoint(tmp_path / "one" / "tiny" / "last.pt")["model"]
    assert set(two) == set(one)
    diff = max((two[k].double() - one[k].double()).abs().max().item() for k in one)
    assert diff <= 1e-5, diff
    moved = max(
        (two[k].double() - v.double()).abs().max().item()
        for k, v in load_checkpoint(run / "best.pt")["model"].items()
    )
    assert moved == 0.0  # best.pt (validated at the end) is the final state here


def test_syncbn_without_ddp_trains_as_bn(tiny_data, tmp_path):
    # (Under torchrun on CPU, model.norm=syncbn is a ValueError before any work: torch's
    # SyncBatchNorm has no CPU implementation.)
    cfg = tiny_config(tiny_data, tmp_path / "runs", model__norm="syncbn", train__max_steps=1)
    assert fit(cfg)["step"] == 1


@pytest.mark.slow
def test_torchrun_syncbn_on_cpu_is_refused(tiny_data, tmp_path):
    args = tiny_overrides(tiny_data, tmp_path / "runs", model__norm="syncbn", train__max_steps=1)
    done = torchrun_train(args, tmp_path)
    assert done.returncode != 0
    assert "model.norm=syncbn needs CUDA" in done.stderr.decode()


def test_torchrun_batchnorm_validation_is_the_saved_model(tmp_path):
    """The shipped nyuv2_13_npy.yaml (its own norm: bn and val_fraction) on 2 processes: the
    last validation the run logged is what one process measures on the saved last.pt."""
    from formatkit import make_split_dataset

    make_split_dataset(tmp_path / "data", "nyuv2_npy", train=16)
    small = {
        "name": "npy", "out_dir": str(tmp_path / "runs"), "data.root": str(tmp_path / "data"),
        "data.crop": "[32, 32]", "data.num_workers": 0, "data.eval_batch_size": 2,
        "model.backbone": "resnet18", "model.pretrained": "false", "model.neck_channels": 32,
        "model.head_channels": 16, "train.max_steps": 3, "train.batch_size": 2,
        "train.warmup_steps": 0, "train.eval_every": 1, "train.num_vis": 0,
    }  # fmt: skip
    args = ["--config", str(REPO / "configs" / "nyuv2_13_npy.yaml")]
    args += [f"{k}={v}" for k, v in small.items()]
    done = torchrun_train(args, tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    run = tmp_path / "runs" / "npy"
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"]["model"]["norm"] == "bn" and ckpt["config"]["data"]["val_fraction"] > 0
    logged = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "val"][-1]
    out = tmp_path / "eval"
    cmd = [PYTHON, str(REPO / "tools" / "eval.py"), "--checkpoint", str(run / "last.pt")]
    cmd += ["--split", "val", "--out", str(out)]
    ev = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, timeout=300)
    assert ev.returncode == 0, ev.stderr.decode()[-3000:]
    measured = json.loads((out / "metrics.json").read_text())["metrics"]
    compared = 0
    for task, metrics in measured.items():
        for name, value in metrics.items():
            key = f"{task}/{name}"
            if isinstance(value, float) and key in logged:
                assert value == pytest.approx(logged[key], rel=1e-4, abs=1e-6), key
                compared += 1
    assert compared >= 10
