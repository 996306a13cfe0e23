"""A user's own task, defined in one module of their own package (the README's example, run as
written): train, eval, visualize, infer and export see it through the same commands."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from enginekit import make_tiny_dataset, tiny_overrides

from cvmtl.data.io import read_image, read_split
from cvmtl.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The python block of the README that defines ``luminance_task.py``."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if '"""luminance_task.py' in b]
    assert len(found) == 1, "README: the luminance_task.py example is missing"
    return found[0]


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "luminance_task.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(pkg))
    yield pkg
    TASKS.pop("luminance", None)
    sys.modules.pop("luminance_task", None)


def _write_luminance(root: Path) -> None:
    """The label: each pixel's luminance (0..1); the image's top rows have no label (-1)."""
    for split in ("train", "val", "test"):
        for sid in read_split(root / "splits" / f"{split}.txt"):
            image = read_image(root / "images" / f"{sid}.png")
            lum = image.astype(np.float32).mean(axis=2) / 255.0
            lum[:3] = -1.0
            (root / "luminance").mkdir(exist_ok=True)
            np.save(root / "luminance" / f"{sid}.npy", lum)


def _cmd(name: str):
    return importlib.import_module(f"cvmtl.commands.{name}")


def test_the_readme_custom_task_runs_through_every_command(user_package, tmp_path):
    data = make_tiny_dataset(tmp_path / "data")
    _write_luminance(data)
    out = tmp_path / "runs"
    overrides = tiny_overrides(data, out, train__max_steps=2, train__best_metric="luminance/mae")
    overrides += ["tasks=[seg, luminance]", "task_modules=[luminance_task]"]
    assert _cmd("train").main(overrides) == 0
    run = out / "tiny"
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("luminance/mae" in row for row in logged), logged[-1].keys()
    assert any("loss/luminance" in row for row in logged)

    ckpt = run / "best.pt"
    assert _cmd("eval").main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["luminance"]["mae"] <= 100.0

    vis = tmp_path / "vis"
    assert _cmd("visualize").main(["--checkpoint", str(ckpt), "--num", "2", "--out", str(vis)]) == 0
    assert list(vis.glob("*.png"))

    src = data / "images" / "test_000.png"
    pred_dir = tmp_path / "pred"
    args = ["--checkpoint", str(ckpt), "--input", str(src), "--out", str(pred_dir), "--quiet"]
    assert _cmd("infer").main(args) == 0
    lum = cv2.imread(str(pred_dir / "test_000_luminance.png"), cv2.IMREAD_UNCHANGED)
    assert lum.dtype == np.uint16 and lum.shape == read_image(src).shape[:2]
    assert (pred_dir / "test_000_seg.png").is_file()

    onnx = tmp_path / "model.onnx"
    assert _cmd("export").main(["--checkpoint", str(ckpt), "--out", str(onnx)]) == 0
    assert onnx.stat().st_size > 0


def test_an_unknown_task_module_is_a_one_line_config_error(tmp_path):
    from cvmtl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="task_modules: cannot import 'no_such_tasks'"):
        load_config(None, ["task_modules=[no_such_tasks]"])
    with pytest.raises(ConfigError, match="unknown task 'luminance'"):
        load_config(None, ["tasks=[seg, luminance]"])
