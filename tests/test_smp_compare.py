"""The smp comparison: segmentation_models_pytorch's FPN trained as the seg baseline would be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from enginekit import NUM_CLASSES, make_tiny_dataset, tiny_config

pytest.importorskip("segmentation_models_pytorch")

from cvmtl.loss_terms import seg_terms  # noqa: E402
from cvmtl.workflows.smp_compare import SmpSeg, compare_smp, seg_loss  # noqa: E402


def test_smp_fpn_has_the_config_widths_and_predicts_at_input_size(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path, tmp_path, tasks="[seg]", model__neck_channels=24, model__head_channels=32
    )  # smp group-normalizes its segmentation blocks in 32 groups
    model = SmpSeg(cfg).eval()
    assert model.net.segmentation_head[0].in_channels == cfg.model.head_channels
    assert model.net.decoder.p5.out_channels == 24
    with torch.no_grad():
        out = model(torch.randn(2, 3, 40, 48))  # padded to 64x64 inside, cropped back
    assert list(out) == ["seg"] and out["seg"].shape == (2, NUM_CLASSES, 40, 48)


def test_compare_smp_trains_scores_and_resumes(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    cfg = tiny_config(data, tmp_path, tasks="[seg]", train__max_steps=3, model__head_channels=32)
    done = compare_smp(cfg, [0], tmp_path / "smp")
    record = json.loads((tmp_path / "smp" / "smp.json").read_text())["0"]
    assert record == json.loads(json.dumps(done["0"]))
    assert 0.0 <= record["test"]["miou"] <= 100.0 and record["flops"] > 0
    assert record["val_miou"] >= 0.0
    # a rerun of a finished seed reads the record instead of training again
    (tmp_path / "smp" / "smp.json").write_text(json.dumps({"0": {"marker": 1}}))
    assert compare_smp(cfg, [0], tmp_path / "smp") == {"0": {"marker": 1}}


def test_the_plain_loop_trains_with_the_seg_tasks_loss(tmp_path: Path) -> None:
    """Class weights and label smoothing reach smp's loop: its loss is cvmtl's seg loss."""
    weights = [0.5 + i / NUM_CLASSES for i in range(NUM_CLASSES)]
    cfg = tiny_config(
        tmp_path, tmp_path, tasks="[seg]", loss__seg_class_weights=str(weights),
        loss__seg_label_smoothing=0.1,
    )  # fmt: skip
    logits = torch.randn(2, NUM_CLASSES, 5, 6)
    target = torch.randint(0, NUM_CLASSES, (2, 5, 6))
    target[0, 0] = 255  # ignored pixels
    terms, denom = seg_terms(logits, target, torch.ones(2, dtype=torch.bool),
                             torch.tensor(weights), 0.1)  # fmt: skip
    assert torch.allclose(seg_loss(cfg)(logits, target), terms.sum() / denom.sum())
    plain = tiny_config(tmp_path, tmp_path, tasks="[seg]")
    assert not torch.allclose(seg_loss(plain)(logits, target), seg_loss(cfg)(logits, target))
