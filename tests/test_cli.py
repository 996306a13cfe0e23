"""The ``cvmtl`` console command: help, forwarding to the tools, errors, and a real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvmtl import cli

REPO = Path(__file__).resolve().parents[1]
CVMTL = Path(sys.executable).parent / "cvmtl"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}

needs_script = pytest.mark.skipif(
    not CVMTL.is_file(), reason="no cvmtl console script: pip install --no-deps -e ."
)


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CVMTL), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


@needs_script
def test_help_lists_every_command(tmp_path):
    out = run("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for command in cli.COMMANDS:
        assert f"  {command} " in out.stdout


@needs_script
def test_command_help_is_forwarded(tmp_path):
    out = run("make-synthetic", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: cvmtl make-synthetic")
    assert "--train" in out.stdout


@needs_script
def test_unknown_command_is_one_line_and_exit_2(tmp_path):
    out = run("trian", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().count("\n") == 0
    assert "unknown command 'trian'" in out.stderr and "train" in out.stderr


@needs_script
def test_affinity_on_a_tiny_config(tmp_path):
    from cvmtl.data.synthetic import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, {"train": 4}, (64, 64), seed=0, workers=1, progress=False)
    overrides = [
        f"data.root={root}",
        "data.crop=[64,64]",
        "data.num_workers=0",
        "model.backbone=resnet18",
        "model.pretrained=false",
        "model.neck_channels=32",
        "train.batch_size=2",
        "train.device=cpu",
        "train.amp=none",
    ]
    config = str(REPO / "configs" / "synthetic_demo.yaml")
    out = run(
        "affinity", "--config", config, "--batches", "2", *overrides, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "runs" / "synthetic_demo" / "affinity"  # the default --out
    for name in ("affinity.json", "affinity.md", "affinity.png"):
        assert (folder / name).is_file()
    data = json.loads((folder / "affinity.json").read_text())
    assert data["batches"] == 2 and len(data["lookahead"]) == 3
    assert "group:" in out.stdout


def test_main_in_process(capsys, monkeypatch):
    assert cli.main(["--help"]) == 0
    assert "make-synthetic" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "usage: cvmtl" in capsys.readouterr().err
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("cvmtl ")


def test_missing_tool_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "COMMANDS_PACKAGE", "cvmtl._no_commands")
    monkeypatch.setattr(cli, "TOOLS_DIR", tmp_path)  # a tree without tools/
    assert cli.main(["affinity", "--help"]) == 2
    assert "not available in this installation" in capsys.readouterr().err


def test_exit_status_and_argv_are_forwarded(capsys, monkeypatch, tmp_path):
    tool = tmp_path / "affinity.py"
    tool.write_text(
        '"""A fake tool."""\nimport sys\n\n'
        "def main(argv=None):\n    print(sys.argv[0], argv)\n    return 3\n"
    )
    monkeypatch.setattr(cli, "COMMANDS_PACKAGE", "cvmtl._no_commands")
    monkeypatch.setattr(cli, "TOOLS_DIR", tmp_path)
    assert cli.summary("affinity") == "A fake tool."
    saved = list(sys.argv)
    assert cli.main(["affinity", "--x", "1"]) == 3
    assert capsys.readouterr().out.strip() == "cvmtl affinity ['--x', '1']"  # usage lines
    assert sys.argv == saved  # restored
