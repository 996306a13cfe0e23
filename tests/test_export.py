"""Export parity: ONNX (dynamic H, W: checked at two sizes), torch.export and TorchScript."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _ckpt import make_checkpoint

from cvmtl.export import export_checkpoint, load_exported

ATOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("export") / "best.pt")


def _check(result: dict) -> None:
    assert len(result["verify"]) == 2  # the example size and a second, odd one
    for diffs in result["verify"].values():
        assert set(diffs) == {"seg", "depth", "normal"}
        assert max(diffs.values()) < ATOL, result["verify"]


def test_torchscript_parity(ckpt, tmp_path) -> None:
    _check(export_checkpoint(ckpt, "torchscript", tmp_path / "m.ts", size=(64, 80)))


@pytest.mark.slow
def test_torch_export_parity(ckpt, tmp_path) -> None:
    _check(export_checkpoint(ckpt, "export", tmp_path / "m.pt2", size=(64, 80)))
    with pytest.raises(ValueError, match="pt2"):
        export_checkpoint(ckpt, "export", tmp_path / "m.bin")


@pytest.mark.slow
def test_onnx_cli_dynamic_parity(ckpt, tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    from cvmtl.commands import export as tool

    out = tmp_path / "m.onnx"
    argv = ["--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]
    assert tool.main([*argv, "--height", "64", "--width", "96", "--atol", str(ATOL)]) == 0
    text = capsys.readouterr().out
    assert "at 64x96" in text and "at 45x123" in text  # two sizes from one file: dynamic

    import onnx

    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["seg", "depth", "normal"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


def test_missing_onnxruntime_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install cvmtl\[export\]"):
        load_exported(tmp_path / "m.onnx", "onnx")
