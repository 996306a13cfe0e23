"""cvmtl visualize: panels + contact sheet for a tiny checkpoint, curves from metrics.jsonl; the
tiles of a panel and a contact sheet against a sample worked out by hand."""

from __future__ import annotations

import json
import math

import cv2
import matplotlib
import numpy as np
import pytest
import torch
from _ckpt import make_checkpoint, tiny_config

from cvmtl.data.io import read_seg_png
from cvmtl.data.nyuv2 import NYU13_PALETTE
from cvmtl.data.synthetic import generate_dataset
from cvmtl.vis import panels

H, W = 12, 16
MEAN, STD = [0.5] * 3, [0.25] * 3
PALETTE = [[10, 200, 10], [255, 0, 255], [0, 0, 255]]  # colours turbo / normals never produce
SIN, COS = math.sin(math.radians(30)), math.cos(math.radians(30))


def hand_sample() -> dict:
    """A sample whose every tile can be worked out by hand.

    seg: GT class 1 | class 2 (left | right half), first row ignored; prediction all class 1.
    depth: GT a ramp 1..4 m across the columns (step 0.2), first column invalid; the prediction
    is the ramp shifted two columns (pred[:, j] == gt[:, j + 2], so 0.4 m too deep).
    normal: GT facing the camera (0, 0, -1), first row invalid; prediction tilted 30 degrees.
    image: normalized 1 in red, 0 elsewhere -> RGB (191, 128, 128) with MEAN / STD.
    """
    seg = torch.ones(H, W, dtype=torch.int64)
    seg[:, W // 2 :] = 2
    seg[0] = 255
    ramp = torch.linspace(1.0, 4.0, W).expand(H, W).clone()
    depth, pred_depth = ramp.clone(), torch.empty(H, W)
    depth[:, 0] = 0.0
    pred_depth[:, :-2], pred_depth[:, -2:] = ramp[:, 2:], torch.tensor([4.2, 4.4])
    normal = torch.tensor([0.0, 0.0, -1.0])[:, None, None].expand(3, H, W).clone()
    normal[:, 0] = 0.0
    tilted = torch.tensor([SIN, 0.0, -COS])[:, None, None].expand(3, H, W).clone()
    image = torch.zeros(3, H, W)
    image[0] = 1.0
    return {
        "image": image,
        "target": {"seg": seg, "depth": depth[None], "normal": normal},
        "pred": {"seg": torch.ones(H, W, dtype=torch.int64), "depth": pred_depth[None],
                 "normal": tilted},
        "has": {"seg": True, "depth": True, "normal": True},
        "meta": {"id": "hand"},
    }  # fmt: skip


def seg_rgb(labels: torch.Tensor) -> np.ndarray:
    """Palette colours of ``labels`` by hand; ignore (255) black."""
    out = np.zeros((*labels.shape, 3), np.uint8)
    for c, colour in enumerate(PALETTE):
        out[labels.numpy() == c] = colour
    return out


def turbo_index(rgb: np.ndarray) -> np.ndarray:
    """Position (0..255) of each colour on the turbo scale (nearest entry of its table)."""
    lut = matplotlib.colormaps["turbo"](np.linspace(0.0, 1.0, 256))[:, :3] * 255
    return np.abs(rgb[..., None, :].astype(float) - lut).sum(-1).argmin(-1)


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
    sheet = cv2.imread(str(vis / "val_contact_sheet.png"))
    h, w = sheet.shape[:2]
    assert w > 7 * 150 and h > 2 * 100  # 7 columns, 2 rows
    # Each panel shows its own sample's labels: the palette colour of every class that covers
    # 5% of its ground truth fills that class's share of the panel's GT tile (and is in the
    # contact sheet).
    palette = np.array(NYU13_PALETTE)
    for panel in panels:
        sid = panel.stem.split("_", 2)[2]  # val_000_<id>
        labels = read_seg_png(data / "segmentation" / f"{sid}.png")
        counts = np.bincount(labels[labels != 255], minlength=13)
        major = np.flatnonzero(counts >= 0.05 * counts.sum())
        image = cv2.imread(str(panel))[..., ::-1]
        for c in major:
            # a label pixel is drawn as ~16 panel pixels (measured 16.4-16.5); the legend's
            # swatch of the class alone is ~40
            assert (image == palette[c]).all(-1).sum() > 8 * counts[c], (sid, c)
            assert (sheet[..., ::-1] == palette[c]).all(-1).any(), (sid, c)


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


def test_panel_tiles_show_the_maps(tmp_path) -> None:
    fig = panels.sample_panel(hand_sample(), ["a", "b", "c"], PALETTE, MEAN, STD)
    # sample_panel adds the tile axes first, row by row: image | GT | prediction | error
    tiles = np.array(fig.axes[:12]).reshape(3, 4)
    data = [[ax.images[0].get_array() if ax.images else None for ax in row] for row in tiles]
    assert (np.asarray(data[0][0]) == (191, 128, 128)).all()
    seg = hand_sample()["target"]["seg"]
    np.testing.assert_array_equal(data[0][1], seg_rgb(seg))
    np.testing.assert_array_equal(data[0][2], seg_rgb(torch.ones(H, W, dtype=torch.int64)))
    err = np.asarray(data[0][3])
    assert (err[0] == 0).all()  # ignored: black
    assert (err[1:, : W // 2] == (90, 90, 90)).all() and (err[1:, W // 2 :] == (230, 40, 40)).all()

    # depth: one colour scale for GT and prediction, rising with depth; invalid masked
    gt_im, pred_im = tiles[1][1].images[0], tiles[1][2].images[0]
    assert (gt_im.norm.vmin, gt_im.norm.vmax) == (pred_im.norm.vmin, pred_im.norm.vmax)
    gt_rgba, pred_rgba = gt_im.to_rgba(gt_im.get_array()), pred_im.to_rgba(pred_im.get_array())
    np.testing.assert_array_equal(pred_rgba[:, : W - 2], gt_rgba[:, 2:])  # same depth, same colour
    position = turbo_index(gt_rgba[1, 1:, :3] * 255)
    assert (np.diff(position) >= 0).all() and position[-1] - position[0] > 150
    assert gt_im.get_array().mask[:, 0].all() and not gt_im.get_array().mask[:, 1:].any()
    depth_err = data[1][3]
    assert depth_err.mask[:, 0].all()
    np.testing.assert_allclose(depth_err[:, 1:], 0.4, atol=1e-5)

    # normals: (n + 1) / 2 * 255; the error tile is the 30 degree tilt, invalid masked
    assert (np.asarray(data[2][1])[1:] == (128, 128, 0)).all() and (data[2][1][0] == 0).all()
    assert (np.asarray(data[2][2]) == (191, 128, 17)).all()
    assert data[2][3].mask[0].all()
    np.testing.assert_allclose(data[2][3][1:], 30.0, atol=1e-3)
    png = cv2.imread(str(panels.save_figure(fig, tmp_path / "panel.png")))[..., ::-1]
    for colour in PALETTE[1:] + [[230, 40, 40], [128, 128, 0]]:  # the tiles reach the file
        assert (png == colour).all(-1).sum() > 100, colour


def test_contact_sheet_tiles(tmp_path, monkeypatch) -> None:
    sheets = []
    save = panels.save_figure

    def keep(fig, path, dpi=100):  # the mosaic as drawn, before the figure is closed
        sheets.append(np.asarray(fig.axes[0].images[0].get_array()))
        return save(fig, path, dpi)

    monkeypatch.setattr(panels, "save_figure", keep)
    sample = hand_sample()
    path = panels.contact_sheet([sample], tmp_path / "sheet.png", PALETTE, MEAN, STD, 192)
    (mosaic,) = sheets
    scale = 192 // W  # tiles are resized nearest to 192 px wide: every source pixel a 12x12 block

    def tile(k: int) -> np.ndarray:  # columns: image | seg GT, pred | depth GT, pred | normal ..
        block = mosaic[: H * scale, k * (192 + 4) : k * (192 + 4) + 192]
        return block[scale // 2 :: scale, scale // 2 :: scale]  # one pixel per source pixel

    assert mosaic.shape[0] == H * scale and (mosaic[:, 192:196] == 255).all()  # white gaps
    assert (tile(0) == (191, 128, 128)).all()
    np.testing.assert_array_equal(tile(1), seg_rgb(sample["target"]["seg"]))
    assert (tile(2) == PALETTE[1]).all()
    gt_depth, pred_depth = tile(3), tile(4)
    assert (gt_depth[:, 0] == 0).all()  # invalid: black
    position = turbo_index(gt_depth[:, 1:])
    assert (np.diff(position, axis=1) >= 0).all() and (position[:, -1] - position[:, 0] > 150).all()
    np.testing.assert_array_equal(pred_depth[:, : W - 2], gt_depth[:, 2:])
    assert (tile(5)[1:] == (128, 128, 0)).all() and (tile(5)[0] == 0).all()
    assert (tile(6) == (191, 128, 17)).all()
    # In the file the three seg tiles keep their proportions: class 1 covers half of the GT
    # tile's labelled rows plus the whole prediction, class 2 the other half of the GT.
    png = cv2.imread(str(path))[..., ::-1]
    one, two = ((png == c).all(-1).sum() for c in PALETTE[1:])
    expected = (H - 1) * W / 2
    assert one / two == pytest.approx((expected + H * W) / expected, rel=0.05)
