"""The ``cvmtl`` console command: help, forwarding to the tools, errors, and a real command."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from evalkit import make_data
from evalkit import overrides as evalkit_overrides

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
    root = make_data(tmp_path / "data", train=4, val=1, test=1)
    overrides = evalkit_overrides(root, tmp_path / "runs", train__batch_size=2)
    config = str(REPO / "configs" / "synthetic_demo.yaml")
    out = run(
        "affinity", "--config", config, "--batches", "2", *overrides, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "runs" / "mtl" / "affinity"  # the default --out: out_dir/name/affinity
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


def _fake_commands(tmp_path: Path, monkeypatch, **files: str) -> None:
    """Point the dispatcher at a package in tmp_path (a new name each test) holding ``files``."""
    name = "fakecmds_" + re.sub(r"\W", "_", tmp_path.name)
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for stem, text in files.items():
        (package / f"{stem}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS_PACKAGE", name)


def test_missing_command_is_a_clear_error(capsys, monkeypatch, tmp_path):
    _fake_commands(tmp_path, monkeypatch)  # a package without affinity.py
    assert cli.summary("affinity") == "(not available in this installation)"
    assert cli.main(["affinity", "--help"]) == 2
    assert "not available in this installation" in capsys.readouterr().err
    monkeypatch.setattr(cli, "COMMANDS_PACKAGE", "cvmtl._no_commands")  # no package at all
    assert cli.main(["affinity", "--help"]) == 2


def test_exit_status_and_argv_are_forwarded(capsys, monkeypatch, tmp_path):
    affinity = (
        '"""A fake command."""\nimport sys\n\n'
        "def main(argv=None):\n    print(sys.argv[0], argv)\n    return 3\n"
    )
    _fake_commands(tmp_path, monkeypatch, affinity=affinity)
    assert cli.summary("affinity") == "A fake command."
    saved = list(sys.argv)
    assert cli.main(["affinity", "--x", "1"]) == 3
    assert capsys.readouterr().out.strip() == "cvmtl affinity ['--x', '1']"  # usage lines
    assert sys.argv == saved  # restored


def test_tool_shims_show_the_command_help(capsys):
    """tools/<stem>.py imports ``main`` from cvmtl.commands.<stem>: one parser, one help text."""
    for command, stem in cli.COMMANDS.items():
        module = cli.load(command)
        assert module.__name__ == f"cvmtl.commands.{stem}"
        shim = (REPO / "tools" / f"{stem}.py").read_text()
        assert f"from cvmtl.commands.{stem} import main" in shim
        with pytest.raises(SystemExit) as stop:
            module.main(["--help"])
        assert stop.value.code == 0
        text = capsys.readouterr().out
        assert module.__doc__.strip().splitlines()[-1].strip() in text  # the whole docstring


def test_regular_install_has_every_command(tmp_path):
    """A non-editable install (no checkout on sys.path, no tools/) runs every command."""
    # --no-build-isolation builds with this environment's setuptools (found, not imported here:
    # importing it after distutils was loaded trips setuptools' distutils check)
    missing = [m for m in ("pip", "setuptools") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"no {' / '.join(missing)} in this environment")
    src = tmp_path / "src"
    shutil.copytree(REPO / "cvmtl", src / "cvmtl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    pip += ["--no-index", "--disable-pip-version-check", "--target", str(site), str(src)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.rmtree(src)  # nothing left to import but the installed copy
    env = {**ENV, "PYTHONPATH": str(site)}
    (tmp_path / "cwd").mkdir()

    def cvmtl(*args: str) -> subprocess.CompletedProcess:
        code = "import sys, cvmtl.cli; print(cvmtl.__file__); sys.exit(cvmtl.cli.main())"
        cmd = [sys.executable, "-c", code, *args]
        return subprocess.run(cmd, cwd=tmp_path / "cwd", env=env, capture_output=True, text=True)

    out = cvmtl("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(site / "cvmtl" / "__init__.py"))
    for command in cli.COMMANDS:
        assert f"  {command} " in out.stdout
    assert "not available" not in out.stdout
    out = cvmtl("make-synthetic", "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: cvmtl make-synthetic" in out.stdout and "--contact-sheet" in out.stdout
    assert (site / "bin" / "cvmtl").is_file()  # the console script
    # the shipped configs come with the install, found by name (and by the README's paths)
    for name in ("synthetic_demo", "nyuv2_13_npy.yaml", "configs/nyud_mt_40.yaml"):
        code = f"from cvmtl.config import load_config; print(load_config({name!r}).data.format)"
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "cwd", env=env,
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() in ("cvmtl", "nyuv2_npy", "nyud_mt")
