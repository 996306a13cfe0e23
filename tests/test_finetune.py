"""Task-specific fine-tuning after joint training: frozen parts exact, head trained, reported."""

from __future__ import annotations

import json

import pytest
import torch
from enginekit import one_thread  # noqa: F401  (autouse fixture)
from evalkit import config, make_data

from cvmtl.engine.checkpoint import load_checkpoint
from cvmtl.engine.trainer import fit
from cvmtl.workflows.finetune import finetune, finetune_after_fit, trainable_modules


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    """A 2-step joint run on 64x64 synthetic data (fit once for the module)."""
    root = tmp_path_factory.mktemp("ft")
    data = make_data(root / "data")
    cfg = config(data, root / "runs", tasks="[seg, depth, normal]")
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        fit(cfg)
    return cfg


def _split(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("freeze", ["backbone", "neck"])
def test_finetune_keeps_frozen_parts_and_trains_the_head(joint_run, freeze):
    cfg = joint_run
    cfg.finetune.epochs, cfg.finetune.freeze, cfg.finetune.lr = 1, freeze, 1e-2
    joint_path = cfg.run_dir / "best.pt"
    report = finetune(cfg, joint_path, tasks=["depth"])

    joint = load_checkpoint(joint_path)["model"]
    tuned_ckpt = load_checkpoint(cfg.run_dir / "finetune" / "depth.pt")
    tuned = tuned_ckpt["model"]
    assert tuned.keys() == joint.keys()  # the full model: eval / infer work on it
    assert _same(_split(joint, "backbone."), _split(tuned, "backbone."))  # params + BN stats
    neck_same = _same(_split(joint, "neck."), _split(tuned, "neck."))
    assert neck_same == (freeze == "neck")
    for other in ("seg", "normal"):
        assert _same(_split(joint, f"heads.{other}."), _split(tuned, f"heads.{other}."))
    head_j, head_t = _split(joint, "heads.depth."), _split(tuned, "heads.depth.")
    assert any(not torch.equal(head_j[k], head_t[k]) for k in head_j if k.endswith("weight"))
    assert tuned_ckpt["finetune"]["task"] == "depth" and tuned_ckpt["config"]["tasks"] == cfg.tasks

    on_disk = json.loads((cfg.run_dir / "finetune.json").read_text())
    assert on_disk == report and set(report) == {"depth"}
    entry = report["depth"]
    assert entry["split"] == "test" and entry["steps"] == 2  # 8 images, batch 4, one epoch
    for key in ("joint", "finetuned"):
        assert {"abs_err", "rel_err", "rmse", "delta1"} <= set(entry[key])
    assert entry["joint"] != entry["finetuned"]


def test_finetune_after_fit_and_arguments(joint_run, tmp_path):
    cfg = joint_run
    cfg.finetune.epochs = 0
    assert finetune_after_fit(cfg, {"interrupted": None}) is None  # off by default
    cfg.finetune.epochs = 1
    assert finetune_after_fit(cfg, {"interrupted": 2}) is None  # not after a stop
    with pytest.raises(ValueError, match="not among"):
        finetune(cfg, cfg.run_dir / "best.pt", tasks=["edge"])
    from cvmtl.models.build import build_model

    model = build_model(cfg)
    with pytest.raises(ValueError, match="freeze"):
        trainable_modules(model, "seg", "heads")
    trained = trainable_modules(model, "seg", "none")
    assert len(trained) == 3 and all(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.heads["depth"].parameters())
