"""tools/eval.py: metrics.json in its documented format, report.md, a self-contained report.html."""

from __future__ import annotations

import importlib
import json
import re

import pytest
import torch
from enginekit import one_thread  # noqa: F401  (autouse fixture)
from evalkit import config, make_data

from cvmtl.engine.trainer import fit

METRICS_KEYS = {"split", "checkpoint", "metrics"}


def _tool():
    return importlib.import_module("cvmtl.commands.eval")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaltool")
    data = make_data(root / "data")
    cfg = config(data, root / "runs")
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        result = fit(cfg)
    return cfg, result


def _check_html(path):
    text = path.read_text()
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href|src)\s*=\s*[\"']?(https?:|//|file:)", text)
    assert "<script" not in text and "<link" not in text
    return text


def test_eval_checkpoint_alone_writes_report_without_baselines(run, capsys):
    cfg, result = run
    ckpt = cfg.run_dir / "best.pt"
    assert _tool().main(["--checkpoint", str(ckpt), "--num-samples", "2"]) == 0
    out = cfg.run_dir / "report"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS  # no delta_m without baselines
    assert metrics["split"] == "test" and metrics["checkpoint"] == str(ckpt)
    assert set(metrics["metrics"]) == {"seg", "depth", "normal"}
    assert len(metrics["metrics"]["seg"]["iou_per_class"]) == 13
    for task, values in result["test"].items():  # same numbers as the trainer's test pass
        for name in ("miou", "abs_err", "mean"):
            if name in values:
                assert metrics["metrics"][task][name] == pytest.approx(values[name], rel=1e-5)
    assert "delta_m: n/a" in (out / "report.md").read_text()
    html = _check_html(out / "report.html")
    assert "Depth error by distance" in html and "angle error" in html
    assert "Published numbers" not in html  # not NYUv2
    assert "wrote" in capsys.readouterr().out


def test_eval_with_baselines_split_out_and_overrides(run, tmp_path):
    cfg, _ = run
    base = {
        "seg": {"miou": 5.0, "pixel_acc": 30.0},
        "depth": {"abs_err": 2.0, "rel_err": 0.8},
        "normal": {"mean": 60.0, "median": 55.0, "a11": 5.0, "a22": 10.0, "a30": 20.0},
    }
    (cfg.run_dir / "baselines.json").write_text(json.dumps({"val": base, "test": base}))
    out = tmp_path / "rep"
    args = ["--checkpoint", str(cfg.run_dir / "last.pt"), "--split", "val", "--out", str(out),
            "--tta", "eval.max_depth=8.0", "data.eval_batch_size=2"]  # fmt: skip
    try:
        assert _tool().main(args) == 0
    finally:
        (cfg.run_dir / "baselines.json").unlink()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS | {"delta_m"} and metrics["split"] == "val"
    dm = metrics["delta_m"]
    assert set(dm) == {"overall", "per_task", "per_metric"}
    assert set(dm["per_task"]) == {"seg", "depth", "normal"} and len(dm["per_metric"]) == 9
    md = (out / "report.md").read_text()
    assert f"delta_m: {dm['overall']:+.2f}%" in md and "| miou | higher |" in md
    html = _check_html(out / "report.html")
    assert "delta_m per metric" in html

    explicit = tmp_path / "b.json"
    explicit.write_text(json.dumps({"test": base}))
    out2 = tmp_path / "rep2"
    args = ["--checkpoint", str(cfg.run_dir / "best.pt"), "--baselines", str(explicit),
            "--out", str(out2), "--num-samples", "1"]  # fmt: skip
    assert _tool().main(args) == 0
    assert "delta_m" in json.loads((out2 / "metrics.json").read_text())


def test_eval_errors_are_one_line(run, tmp_path, capsys):
    cfg, _ = run
    tool = _tool()
    assert tool.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert tool.main(["--checkpoint", str(cfg.run_dir / "best.pt"), "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "train.nope" in err
