"""Every output path asks the TaskSpec: tasks registered here (a binary ``fg`` map, a scalar
``gray`` map whose fill is -1 so that 0 is a value, and a ``tri`` class map with its own three
classes) get written files, panels, contact-sheet tiles, report rows, benchmark batches and
comparison columns, all checked against values worked out by hand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvmtl.tasks import TASKS, LabelKind, TaskSpec, register
from cvmtl.tasks.colorize import colorize_seg, default_palette
from cvmtl.tasks.seg import encode_classes
from cvmtl.tasks.spec import BINARY, CLASSES
from cvmtl.vis import panels

H, W = 8, 12
MEAN, STD = [0.5] * 3, [0.25] * 3
GRAY = LabelKind("gray_value", 1, -1.0)  # -1 = no label; 0 is a value
PALETTE = [[10, 200, 10], [255, 0, 255], [0, 0, 255]]


def _bce(pred, target, labeled, cfg):
    known = (target != 255) & labeled[:, None, None]
    t = torch.where(known, target, torch.zeros_like(target)).float()
    terms = F.binary_cross_entropy_with_logits(pred[:, 0], t, reduction="none") * known
    return terms, known.float()


def _l1(pred, target, labeled, cfg):
    known = (target != -1.0) & labeled[:, None, None, None]
    return (pred - target).abs() * known, known.float()


def _ce(pred, target, labeled, cfg):
    known = (target != 255) & labeled[:, None, None]
    t = torch.where(known, target, torch.zeros_like(target))
    return F.cross_entropy(pred, t, reduction="none") * known, known.float()


def _grey(x, info):
    v = (np.clip(np.asarray(x, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.repeat(v[..., None], 3, axis=2)


SPECS = [
    TaskSpec(
        name="fg", title="foreground", label=BINARY, channels=1, loss=_bce,
        loss_weights=lambda t, labeled, cfg: (t != 255).float(), metric=lambda n, ev: None,
        metrics={"maxf": True, "mae": False}, delta_metrics={"maxf": True},
        probabilities=torch.sigmoid, predict=lambda x: torch.sigmoid(x[:, 0]), colorize=_grey,
        encode=lambda p, info: {"": (p * 255 + 0.5).astype(np.uint8)},
        summary=lambda p, t: f"mae {float(np.abs(p - t)[t != 255].mean()):.2f}",
    ),
    TaskSpec(
        name="gray", title="grey level", label=GRAY, channels=1, loss=_l1,
        loss_weights=lambda t, labeled, cfg: (t != -1).float(), metric=lambda n, ev: None,
        metrics={"abs": False}, delta_metrics={"abs": False}, predict=lambda x: x[:, 0],
        colorize=_grey,
        encode=lambda p, info: {"": (p * 1000).astype(np.uint16), "_color": _grey(p, info)},
        extras={"unit": "lx"},
    ),
    TaskSpec(
        name="tri", title="three parts", label=CLASSES, channels=3, loss=_ce,
        loss_weights=lambda t, labeled, cfg: (t != 255).float(), metric=lambda n, ev: None,
        metrics={"miou": True}, delta_metrics={"miou": True},
        predict=lambda x: x.argmax(1), colorize=lambda x, info: colorize_seg(x, info["palette"]),
        encode=encode_classes, classes=("a", "b", "c"),
    ),
]  # fmt: skip


@pytest.fixture(autouse=True)
def custom_tasks():
    for spec in SPECS:
        register(spec)
    yield
    for spec in SPECS:
        TASKS.pop(spec.name, None)


def hand_sample() -> dict:
    """fg: GT left half 1, right half 0, first row unknown; prediction 0.75 everywhere.
    gray: GT 0 .. 1.1 across the columns, first column unlabelled (-1); prediction GT + 0.5.
    tri: GT class 2 everywhere, prediction class 0 in the top half."""
    fg = torch.zeros(H, W, dtype=torch.int64)
    fg[:, : W // 2] = 1
    fg[0] = 255
    gray = torch.linspace(0.0, 1.1, W).expand(H, W).clone()
    gray[:, 0] = -1.0
    tri = torch.full((H, W), 2, dtype=torch.int64)
    tri_pred = tri.clone()
    tri_pred[: H // 2] = 0
    return {
        "image": torch.zeros(3, H, W),
        "target": {"fg": fg, "gray": gray[None], "tri": tri},
        "pred": {"fg": torch.full((H, W), 0.75), "gray": torch.linspace(0.0, 1.1, W)
                 .expand(H, W)[None] + 0.5, "tri": tri_pred},
        "has": {"fg": True, "gray": True, "tri": True},
        "meta": {"id": "hand"},
    }  # fmt: skip


def test_write_prediction_uses_each_spec_encoder(tmp_path) -> None:
    from cvmtl.inference import write_prediction

    prob = np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)
    value = np.array([[0.0, 1.5], [0.25, 2.0]], np.float32)
    tri = np.array([[0, 1], [2, 2]], np.int64)
    seg = np.array([[1, 1], [2, 0]], np.int64)
    pred = {"seg": seg, "fg": prob, "gray": value, "tri": tri}
    written = write_prediction(pred, tmp_path / "x", PALETTE, classes=["p", "q", "r"])
    names = sorted(p.name for p in written)
    assert names == sorted(["x_seg.png", "x_seg_color.png", "x_fg.png", "x_gray.png",
                            "x_gray_color.png", "x_tri.png", "x_tri_color.png"])  # fmt: skip
    fg = cv2.imread(str(tmp_path / "x_fg.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(fg, [[0, 128], [255, 51]])  # round(p * 255)
    gray = cv2.imread(str(tmp_path / "x_gray.png"), cv2.IMREAD_UNCHANGED)
    assert gray.dtype == np.uint16
    np.testing.assert_array_equal(gray, [[0, 1500], [250, 2000]])
    grey_rgb = cv2.imread(str(tmp_path / "x_gray_color.png"))[..., ::-1]
    np.testing.assert_array_equal(grey_rgb[..., 0], [[0, 255], [64, 255]])
    # the dataset's palette for seg, the task's own (default_palette(3)) for tri
    seg_rgb = cv2.imread(str(tmp_path / "x_seg_color.png"))[..., ::-1]
    np.testing.assert_array_equal(seg_rgb, np.array(PALETTE)[seg])
    tri_rgb = cv2.imread(str(tmp_path / "x_tri_color.png"))[..., ::-1]
    np.testing.assert_array_equal(tri_rgb, np.array(default_palette(3))[tri])
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "x_tri.png"), -1), tri)


def test_panel_rows_for_custom_tasks(tmp_path) -> None:
    sample = hand_sample()
    fig = panels.sample_panel(sample, ["p", "q", "r"], PALETTE, MEAN, STD, title="custom")
    tiles = np.array(fig.axes[:12]).reshape(3, 4)  # rows in registry order: fg, gray, tri
    assert [row[1].get_ylabel() for row in tiles] == ["foreground", "grey level", "three parts"]
    assert all(ax.images for row in tiles for ax in row[1:])  # every tile drawn
    # fg: grey probability, error |p - label| with the unknown row masked
    np.testing.assert_allclose(tiles[0][2].images[0].get_array(), 0.75)
    err = tiles[0][3].images[0].get_array()
    assert err.mask[0].all() and not err.mask[1:].any()
    np.testing.assert_allclose(err[1:, : W // 2], 0.25)
    np.testing.assert_allclose(err[1:, W // 2 :], 0.75)
    # gray: one colour scale, the fill (-1) masked, 0 kept as a value; |error| = 0.5
    gt_im, pred_im = tiles[1][1].images[0], tiles[1][2].images[0]
    assert (gt_im.norm.vmin, gt_im.norm.vmax) == (pred_im.norm.vmin, pred_im.norm.vmax)
    gt = gt_im.get_array()
    assert gt.mask[:, 0].all() and not gt.mask[:, 1:].any()
    gerr = tiles[1][3].images[0].get_array()
    assert gerr.mask[:, 0].all()
    np.testing.assert_allclose(gerr[:, 1:], 0.5, atol=1e-6)
    # tri: its own palette; the legend names its own classes
    np.testing.assert_array_equal(
        tiles[2][1].images[0].get_array(), np.array(default_palette(3))[sample["target"]["tri"]]
    )
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["a", "c"]
    assert "foreground:\n  mae 0.50" in tiles[1][0].texts[0].get_text()
    panels.save_figure(fig, tmp_path / "panel.png")
    assert (tmp_path / "panel.png").stat().st_size > 1000


def test_contact_sheet_tiles_for_custom_tasks(tmp_path, monkeypatch) -> None:
    sheets = []
    save = panels.save_figure

    def keep(fig, path, dpi=100):
        sheets.append(np.asarray(fig.axes[0].images[0].get_array()))
        return save(fig, path, dpi)

    monkeypatch.setattr(panels, "save_figure", keep)
    panels.contact_sheet([hand_sample()], tmp_path / "s.png", PALETTE, MEAN, STD, W * 4)
    (mosaic,) = sheets
    step = W * 4 + 4

    def tile(k: int) -> np.ndarray:  # image | fg GT, pred | gray GT, pred | tri GT, pred
        return mosaic[: H * 4, k * step : k * step + W * 4][2::4, 2::4]

    fg_gt = tile(1)
    assert (fg_gt[1:, : W // 2] == 255).all() and (fg_gt[1:, W // 2 :] == 0).all()
    assert (fg_gt[0] == (38, 77, 204)).all()  # unknown
    assert (tile(2) == 191).all()  # round(0.75 * 255)
    assert (tile(3)[:, 0] == 0).all() and (tile(3)[:, 1:] != 0).any(-1).all()
    tri = hand_sample()["pred"]["tri"]
    np.testing.assert_array_equal(tile(6), np.array(default_palette(3))[tri])


def test_report_rows_and_page_for_custom_tasks(tmp_path) -> None:
    from cvmtl.config import Config
    from cvmtl.vis.report import task_rows, write_report

    metrics = {"fg": {"maxf": 80.0, "mae": 0.1}, "gray": {"abs": 0.25},
               "tri": {"miou": 50.0, "iou_per_class": [40.0, 50.0, 60.0]}}  # fmt: skip
    rows = task_rows(metrics, {"fg": {"maxf": 75.0}}, None)
    assert rows["fg"] == [["maxf", "higher", "80.00", "75.00", None],
                          ["mae", "lower", "0.1000", "", None]]  # fmt: skip
    assert rows["gray"] == [["abs", "lower", "0.2500", "", None]]
    cfg = Config()
    cfg.name, cfg.data.root, cfg.tasks = "custom", str(tmp_path), ["fg", "gray", "tri"]
    doc = {"split": "test", "checkpoint": "x.pt", "metrics": metrics}
    paths = write_report(tmp_path / "r", doc, cfg=cfg, samples=[hand_sample()],
                         info={"name": "toy", "classes": ["p"], "palette": None})  # fmt: skip
    html = paths["html"].read_text()
    assert "three parts: IoU per class" in html and "Samples: ground truth" in html
    assert "grey level: turbo colormap per sample" in html
    assert "| maxf | higher | 80.00 |" in paths["md"].read_text()


def test_benchmark_batches_and_losses_follow_the_specs() -> None:
    from cvmtl.config import load_config
    from cvmtl.workflows.bench.steps import random_batch, simple_losses

    cfg = load_config(None, ["tasks=[fg, gray, tri]", "data.crop=[8,12]"])
    batch = random_batch(cfg, 2, torch.device("cpu"))
    assert set(batch) == {"image", "has", "fg", "gray", "tri"}
    assert batch["fg"].shape == (2, 8, 12) and set(batch["fg"].unique().tolist()) <= {0, 1}
    assert batch["tri"].max() < 3 and batch["gray"].shape == (2, 1, 8, 12)
    preds = {"fg": torch.zeros(2, 1, 8, 12), "gray": batch["gray"] + 0.5,
             "tri": torch.zeros(2, 3, 8, 12)}  # fmt: skip
    losses = simple_losses(preds, batch, cfg)
    torch.testing.assert_close(losses["fg"], torch.tensor(np.log(2.0), dtype=torch.float32))
    torch.testing.assert_close(losses["tri"], torch.tensor(np.log(3.0), dtype=torch.float32))
    torch.testing.assert_close(losses["gray"], torch.tensor(0.5))


def test_compare_table_columns_from_the_specs() -> None:
    from cvmtl.workflows.experiments import results_table, table_columns

    results = {"config": {"tasks": ["gray", "fg"]}, "baselines": {"0": {"gray": {"abs": 0.5},
               "fg": {"maxf": 70.0}}}, "runs": {}}  # fmt: skip
    assert table_columns(results) == [("gray", "abs", False), ("fg", "maxf", True)]
    head, _, base = results_table(results).splitlines()
    assert head.startswith("| method | seeds | gray abs ↓ | fg maxf ↑ |")
    assert base.startswith("| single-task | 1 | 0.50 | 70.00 |")
