"""Report pieces: streaming error histograms, tables, NYUv2 published figures, the HTML page
(and, when Chromium is installed, that it renders)."""

from __future__ import annotations

import base64
import io
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvmtl.config import Config
from cvmtl.vis.report import is_nyu, write_report
from cvmtl.workflows.eval_stats import AngleHistogram, DepthBins, nan_to_none

CLASSES = ["bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa",
           "table", "tv", "wall", "window"]  # fmt: skip


def test_depth_bins_match_numpy():
    g = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 12.0  # some beyond max_depth
    g[0, 0, :2] = 0.0  # invalid
    p = g + torch.randn_like(g) * 0.3
    bins = DepthBins(1e-3, 10.0, num_bins=5)
    bins.update(p[:1], g[:1])  # streaming: two updates = one over everything
    bins.update(p[1:], g[1:])
    out = bins.compute()
    gn, pn = g.numpy().ravel(), np.clip(p.numpy().ravel(), 1e-3, 10.0)
    valid = (gn >= 1e-3) & (gn <= 10.0)
    idx = np.minimum((gn[valid] / 2.0).astype(int), 4)
    for b in range(5):
        sel = idx == b
        assert out["count"][b] == sel.sum()
        err = np.abs(pn[valid][sel] - gn[valid][sel])
        assert out["abs_err"][b] == pytest.approx(err.mean() if sel.any() else None)
    assert out["edges"] == pytest.approx([0, 2, 4, 6, 8, 10])


def test_angle_histogram_counts_valid_pixels_by_angle():
    g = torch.zeros(1, 3, 2, 3)
    g[:, 2] = 1.0
    g[0, :, 1, 2] = 0.0  # invalid
    angles = torch.tensor([[0.5, 11.0, 21.0], [46.0, 101.0, 7.0]]).deg2rad()  # off bin edges
    p = torch.stack([angles.sin(), torch.zeros_like(angles), angles.cos()])[None] * 3.0
    hist = AngleHistogram(bin_deg=5.0)
    hist.update(p, g)
    out = hist.compute()
    assert sum(out["count"]) == 5 and len(out["count"]) == 36
    for deg in (0.5, 11.0, 21.0, 46.0, 101.0):
        assert out["count"][int(deg // 5)] >= 1
    assert nan_to_none({"a": [float("nan"), 1.0], "b": math.inf}) == {"a": [None, 1.0], "b": None}


def _fake(tmp_path, fmt="cvmtl", name="synthetic", with_delta=True, num_classes=13):
    cfg = Config()
    cfg.name, cfg.data.format, cfg.data.root = "demo", fmt, str(tmp_path)
    cfg.data.num_classes = num_classes
    torch.manual_seed(0)
    metrics = {
        "seg": {"miou": 41.5, "pixel_acc": 70.2, "iou_per_class": [None] + [30.0 + i for i in
                                                                              range(12)]},
        "depth": {"abs_err": 0.41, "rel_err": 0.16, "rmse": 0.6, "delta1": 75.0},
        "normal": {"mean": 24.0, "median": 18.0, "rmse": 30.0, "a11": 30.0, "a22": 58.0,
                   "a30": 70.0},
    }  # fmt: skip
    doc = {"split": "test", "checkpoint": "runs/demo/best.pt", "metrics": metrics}
    base = {
        "seg": {"miou": 40.0, "pixel_acc": 71.0},
        "depth": {"abs_err": 0.45, "rel_err": 0.15},
        "normal": {"mean": 23.0, "median": 17.0, "a11": 31.0, "a22": 60.0, "a30": 72.0},
    }
    if with_delta:
        from cvmtl.metrics import delta_m

        doc["delta_m"] = delta_m(metrics, base, ["seg", "depth", "normal"])
    depth = DepthBins(1e-3, 10.0)
    normal = AngleHistogram()
    g = torch.rand(1, 1, 32, 32) * 9 + 0.5
    depth.update(g + torch.randn_like(g) * 0.2 * g, g)
    n = F.normalize(torch.randn(1, 3, 32, 32), dim=1)
    normal.update(n + 0.4 * torch.randn_like(n), n)
    samples = []
    for _ in range(2):
        seg = torch.randint(0, 13, (32, 32))
        seg[:3] = 255
        d = torch.rand(1, 32, 32) * 8 + 1
        nm = F.normalize(torch.randn(3, 32, 32), dim=0)
        pred = {"seg": seg.clamp(max=12), "depth": d * 1.1, "normal": -nm}
        target = {"seg": seg, "depth": d, "normal": nm}
        samples.append({"image": torch.randn(3, 32, 32), "target": target, "pred": pred})
    stats = {"depth_bins": depth.compute(), "angle_hist": normal.compute()}
    info = {"name": name, "classes": CLASSES, "palette": None}
    paths = write_report(tmp_path / "report", doc, cfg=cfg, stats=stats, samples=samples,
                         baselines=base if with_delta else None, info=info)  # fmt: skip
    return doc, paths


def test_report_tables_and_self_contained_html(tmp_path):
    doc, paths = _fake(tmp_path)
    md = paths["md"].read_text()
    assert f"**delta_m: {doc['delta_m']['overall']:+.2f}%**" in md
    assert "| miou | higher | 41.50 | 40.00 | +3.75 |" in md
    assert "| abs_err | lower | 0.4100 | 0.4500 | +8.89 |" in md
    assert "Published" not in md  # synthetic data: no NYUv2 reference numbers
    # what produced the predictions: the default config's model, balancer and budget
    model = "- model: resnet18 + FPN 128, hard sharing; balancer fixed; 10 epochs of batch 8"
    assert model in md, md[:600]
    assert "model: resnet18 + FPN 128, hard sharing" in paths["html"].read_text()
    html = paths["html"].read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href|src)=[\"']?(https?:|//|file:)", html) and "url(" not in html
    from PIL import Image

    for src in srcs:  # every embedded chart decodes to a real, non-blank picture
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L")
        assert min(png.size) > 150 and np.asarray(png).std() > 10


@pytest.mark.parametrize(
    "fmt,name,classes,ours,expected",
    [("nyuv2_npy", "x", 13, "| 41.50 | 70.20 | 0.4100 | 0.1600 | 24.00 |",
      "| LibMTL EW (published) | 54.10 | 75.78 | 0.3771 | 0.1596 | 23.53 |"),
     ("cvmtl", "NYUv2-13", 13, "| 41.50 |", "| LibMTL GLS (published) | 54.46 |"),
     ("nyud_mt", "nyud", 40, "| 41.50 | 0.6000 | 24.00 |", "| MLoRE (ViT-L) (published) |")],
    ids=["nyuv2_npy", "cvmtl-named-nyu", "nyud_mt-40"],
)  # fmt: skip
def test_nyu_reports_show_published_figures_marked(tmp_path, fmt, name, classes, ours, expected):
    assert is_nyu(fmt, name)
    _, paths = _fake(tmp_path, fmt=fmt, name=name, with_delta=False, num_classes=classes)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    for text in (md, html):
        assert "Published numbers of other projects" in text and "not produced by cvmtl" in text
        assert "cvmtl (this run)" in text
    assert f"| cvmtl (this run) {ours}" in md and expected in md


def _chromium_screenshot(html_path, png_path, user_dir) -> None:
    cmd = [
        shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={user_dir}", f"--screenshot={png_path}",
        "--window-size=1200,3000", html_path.resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_html_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    _, paths = _fake(tmp_path)
    png = tmp_path / "shot.png"
    _chromium_screenshot(paths["html"], png, tmp_path / "chromium")
    img = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (3000, 1200)
    assert img.std() > 20  # not a blank page
    # the charts are drawn: many distinct colours, and coloured (non-grey) pixels
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 500
    chroma = img.max(axis=2) - img.min(axis=2)
    assert (chroma > 60).mean() > 0.01


def test_report_histograms_score_nonfinite_predictions_as_the_metrics_do():
    """A NaN normal is 180 degrees (last bin), never 'perfect' (bin 0); a NaN depth lands in its
    target's bin with the worst-case error, as DepthMetric scores it."""
    g = torch.zeros(1, 3, 1, 2)
    g[:, 2] = 1.0
    p = g.clone()
    p[0, :, 0, 1] = float("nan")
    hist = AngleHistogram(bin_deg=5.0)
    hist.update(p, g)
    count = hist.compute()["count"]
    assert count[0] == 1 and count[-1] == 1
    bins = DepthBins(min_depth=0.1, max_depth=10.0, num_bins=10)
    bins.update(torch.tensor([[[[2.0, float("nan")]]]]), torch.tensor([[[[2.0, 3.0]]]]))
    out = bins.compute()
    assert out["count"][2] == 1 and out["count"][3] == 1
    assert out["abs_err"][2] == 0.0 and out["abs_err"][3] == pytest.approx(7.0)  # 10 - 3
