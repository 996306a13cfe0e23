"""cvmtl visualize: panels + contact sheet for a tiny checkpoint, curves from metrics.jsonl."""

from __future__ import annotations

import json

import cv2
from _ckpt import make_checkpoint, tiny_config

from cvmtl.data.synthetic import generate_dataset


def _visualize():
    from cvmtl.commands import visualize

    return visualize


def test_panels_and_contact_sheet(tmp_path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, {"val": 3}, size=(48, 64), workers=1, progress=False)
    ckpt = make_checkpoint(tmp_path / "runs" / "tiny" / "best.pt", tiny_config(data))
    rc = _visualize().main(["--checkpoint", str(ckpt), "--num", "2", "data.num_workers=0"])
    assert rc == 0
    vis = tmp_path / "runs" / "tiny" / "vis"  # the default: next to the checkpoint
    panels = sorted(vis.glob("val_0*.png"))
    assert len(panels) == 2
    h, w = cv2.imread(str(panels[0])).shape[:2]
    assert 400 < w < 2500 and 300 < h < 2000 and w > h  # 3 task rows x 4 columns
    h, w = cv2.imread(str(vis / "val_contact_sheet.png")).shape[:2]
    assert w > 7 * 150 and h > 2 * 100  # 7 columns, 2 rows


def test_training_curves(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for step in range(1, 41):
        rec = {"step": step, "epoch": step // 10, "split": "train", "lr": 1e-3 / step, "img_s": 9}
        rec.update({f"loss/{t}": 2.0 / step for t in ("seg", "depth", "normal")})
        rec.update({f"weight/{t}": 1.0 for t in ("seg", "depth", "normal")})
        lines.append(rec)
        if step % 10 == 0:
            val = {"step": step, "epoch": step // 10, "split": "val", "seg/miou": step}
            val.update({"depth/abs_err": 1 / step, "normal/mean": 40 - step, "delta_m": "nan"})
            lines.append(val)
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 41, "spl'  # cut-off last line
    (run / "metrics.jsonl").write_text(text)
    assert _visualize().main(["--run", str(run)]) == 0
    h, w = cv2.imread(str(run / "vis" / "curves.png")).shape[:2]
    assert w > 800 and h > 500
