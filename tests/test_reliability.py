"""Reliability as a user sees it through the CLIs (tools/train.py, eval.py, infer.py).

What the engine already guarantees in-process is tested elsewhere: exact mid-epoch resume and
SIGTERM (test_resume.py), atomic checkpoint writes and foreign files for ``load_checkpoint``
(test_checkpoint.py), NaN batches in ``fit`` (test_engine.py), reader errors (test_formats.py),
``skip_bad`` in ``DenseDataset`` (test_loader.py). Here: ``kill -9`` then ``--resume``, corrupt
data files, a full disk, bad configs, NaN batches and non-checkpoint files, each checked for its
exit code and for ONE line on stderr that names the key or file (no Python traceback).

Tools are run as subprocesses where that is what is under test (a SIGKILL, the process' whole
stderr) and cheap (config errors exit before torch is imported); elsewhere their ``main(argv)``
runs in-process, which avoids ~10 s of imports per run on a loaded 2-core CI machine.
"""

from __future__ import annotations

import errno
import importlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from enginekit import (
    PYTHON,
    REPO,
    make_tiny_dataset,
    one_thread,  # noqa: F401  (autouse fixture)
    read_jsonl,
    subprocess_env,
    tiny_config,
    tiny_overrides,
)
from PIL import Image

from cvmtl.config import save_config
from cvmtl.engine.checkpoint import load_checkpoint
from cvmtl.engine.trainer import fit

# a tiny, fast run: 8 train images, batch 2 (4 steps per epoch), neck 16, no validation
FAST = dict(
    model__neck_channels=16, train__batch_size=2, train__eval_every=0, train__scheduler="none"
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


def _tool(name: str):
    """The ``main`` of ``cvmtl <name>`` / ``tools/<name>.py``."""
    return importlib.import_module(f"cvmtl.commands.{name}").main


def _last_line(text: str) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _assert_one_line_error(err: str, *needles: str) -> str:
    """stderr ends with one ``error: ...`` line holding every needle, and shows no traceback."""
    assert "Traceback" not in err, err[-3000:]
    last = _last_line(err)
    assert last.startswith("error: "), err[-3000:]
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"
    return last


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# -- 1. kill -9 mid-training, then --resume ------------------------------------------------------
def test_kill9_mid_training_then_resume_matches_uninterrupted(tiny_data, tmp_path):
    """SIGKILL gives the trainer no chance to save: what survives is the last atomic last.pt
    (train.save_every=2; the kill may land during a write). Breaks if a kill corrupts last.pt,
    if --resume does not reproduce the uninterrupted run exactly, if metrics.jsonl keeps the
    records logged after the last save twice, or if the killed writer's temp file is never
    cleaned up."""
    extra = dict(FAST, train__max_steps=8, train__epochs=100)
    # the uninterrupted run, in-process; save_every changes when files are written, not the math
    fit(tiny_config(tiny_data, tmp_path / "ref", **extra))
    reference = load_checkpoint(tmp_path / "ref/tiny/last.pt")

    args = tiny_overrides(tiny_data, tmp_path, train__save_every=2, **extra)
    cmd = [PYTHON, str(REPO / "tools/train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stderr=subprocess.PIPE)
    run_dir = tmp_path / "tiny"
    jsonl = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # step 3 logged: step 2 was saved
        if jsonl.is_file() and any(r.get("step", 0) >= 3 for r in read_jsonl(jsonl)):
            break
        time.sleep(0.02)
    proc.kill()  # SIGKILL
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err[-2000:]}"
    killed_at = load_checkpoint(run_dir / "last.pt")["step"]
    assert 2 <= killed_at < 8
    # what a kill during a checkpoint write leaves behind: the dead writer's temp file
    (run_dir / f".last.pt.tmp{proc.pid}").write_bytes(b"PK\x03\x04 half a checkpoint")

    assert _tool("train")(["--resume", str(run_dir)]) == 0
    resumed = load_checkpoint(run_dir / "last.pt")
    assert resumed["step"] == reference["step"] == 8
    assert _max_diff(reference["model"], resumed["model"]) <= 1e-6
    train_steps = [r["step"] for r in read_jsonl(jsonl) if r["split"] == "train"]
    assert train_steps == list(range(1, 9)), f"killed at step {killed_at}"
    assert _temp_files(run_dir) == []


# -- 2. corrupt dataset files ---------------------------------------------------------------------
def _corrupt(src: Path, dst: Path, kind: str) -> Path:
    """A copy of the tiny dataset with one broken file for sample 'train_003'."""
    shutil.copytree(src, dst)
    if kind == "truncated_png":
        path = dst / "images/train_003.png"
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "not_an_image":
        path = dst / "images/train_003.png"
        path.write_text("this is not a PNG\n")
    else:  # a depth map of another size than its image (40x48)
        path = dst / "depth/train_003.png"
        Image.fromarray(np.full((20, 24), 1000, np.uint16)).save(path)
    return path


def test_truncated_png_in_a_worker_is_one_line_naming_file_and_id(tiny_data, tmp_path):
    """A real subprocess with 2 DataLoader workers: a worker's DataError comes back wrapped in the
    worker's traceback. Breaks if tools/train.py shows that traceback instead of one line."""
    bad = _corrupt(tiny_data, tmp_path / "data", "truncated_png")
    args = tiny_overrides(tmp_path / "data", tmp_path / "runs", data__num_workers=2, **FAST)
    done = subprocess.run(
        [PYTHON, str(REPO / "tools/train.py"), *args],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    _assert_one_line_error(done.stderr, "truncated PNG", str(bad), "'train_003'")


@pytest.mark.parametrize(
    "kind, message",
    [("not_an_image", "not a PNG/JPEG image"), ("depth_wrong_size", "depth is 20x24")],
)
def test_corrupt_file_is_one_line_naming_file_and_id(tiny_data, tmp_path, capsys, kind, message):
    """Breaks if a bad sample ends training with a traceback, or a message without its file."""
    bad = _corrupt(tiny_data, tmp_path / "data", kind)
    args = tiny_overrides(tmp_path / "data", tmp_path / "runs", **FAST)
    assert _tool("train")(args) == 2
    _assert_one_line_error(capsys.readouterr().err, message, str(bad), "'train_003'")


def test_skip_bad_completes_and_reports_the_skipped_sample(tiny_data, tmp_path, caplog):
    """With data.skip_bad=true a broken sample is skipped, named and counted, and the run ends
    normally. Breaks if skipping raises, is silent, or the run does not finish."""
    _corrupt(tiny_data, tmp_path / "data", "truncated_png")
    args = tiny_overrides(
        tmp_path / "data", tmp_path / "runs", data__skip_bad="true", train__max_steps=4, **FAST
    )
    with caplog.at_level("WARNING", logger="cvmtl"):
        assert _tool("train")(args) == 0
    skipped = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert skipped and "(1 so far)" in skipped[0] and "'train_003'" in skipped[0]
    assert load_checkpoint(tmp_path / "runs/tiny/last.pt")["step"] == 4


# -- 3. a full disk while writing a checkpoint -----------------------------------------------------
def test_disk_full_during_checkpoint_write_keeps_previous_and_resumes(
    tiny_data, tmp_path, monkeypatch, capsys
):
    """The third checkpoint write fails half-way with ENOSPC. Breaks if last.pt is damaged, a
    temp file stays behind, the error is a traceback or does not name the file, or the run
    cannot be resumed once there is space again."""
    real_save, calls = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04" + bytes(1000))  # part of the file reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    args = tiny_overrides(
        tiny_data, tmp_path, train__max_steps=4, train__epochs=100, train__save_every=1, **FAST
    )
    monkeypatch.setattr(torch, "save", save_until_disk_full)
    assert _tool("train")(args) == 2
    run_dir = tmp_path / "tiny"
    _assert_one_line_error(
        capsys.readouterr().err, "No space left on device", str(run_dir / "last.pt"), "unchanged"
    )
    assert load_checkpoint(run_dir / "last.pt")["step"] == 2
    assert _temp_files(run_dir) == []

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert _tool("train")(["--resume", str(run_dir)]) == 0
    assert load_checkpoint(run_dir / "last.pt")["step"] == 4


# -- 4. bad configs --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, needles",
    [
        ("train.foo=1", ["unknown config key 'train.foo'", "max_steps"]),
        ("train.lr=fast", ["train.lr", "expected a number", "fast"]),
        ("train.max_steps=1.5", ["train.max_steps", "1.5"]),
        ("tasks=[seg,edges]", ["unknown task 'edges'", "depth"]),
        ("data.format=png", ["data.format", "cvmtl", "png"]),
        ("train.amp=fp8", ["train.amp", "bf16", "fp8"]),
    ],
)
def test_bad_config_value_is_exit_2_and_one_stderr_line(tmp_path, override, needles):
    """Config errors are caught before torch is imported, so the real process is cheap. Breaks
    if a bad key or value prints anything but one line naming it, or exits other than 2."""
    done = subprocess.run(
        [PYTHON, str(REPO / "tools/train.py"), f"out_dir={tmp_path}", override],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == "", done.stderr[-3000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    _assert_one_line_error(done.stderr, *needles)


@pytest.mark.parametrize(
    "override, needles",
    [
        ("model.backbone=resnet81", ["model.backbone", "resnet81", "resnet18"]),
        ("loss.balancer=nope", ["unknown balancer 'nope'", "fixed", "mgda", "famo"]),
        ("loss.balancer_args={weigths: {seg: 2}}", ["weigths", "accepted: weights"]),
    ],
)
def test_bad_model_or_balancer_is_exit_2_and_one_line(
    tiny_data, tmp_path, capsys, override, needles
):
    """Names checked when the run is built (timm's registry, the balancer's hyper-parameters).
    Breaks if tools/train.py lets their ValueError out as a traceback."""
    args = tiny_overrides(tiny_data, tmp_path, **FAST) + [override]
    assert _tool("train")(args) == 2
    _assert_one_line_error(capsys.readouterr().err, *needles)


# -- 5. NaN batches --------------------------------------------------------------------------------
def _nan_images(monkeypatch, ids: set[str] | None) -> None:
    """Give the train samples in ``ids`` (None: all) an all-NaN image."""
    from cvmtl.data.dataset import DenseDataset

    real = DenseDataset.__getitem__

    def getitem(self, item):
        sample = real(self, item)
        index = item[1] if isinstance(item, tuple) else item
        if self.split == "train" and (ids is None or self.ids[index] in ids):
            sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample

    monkeypatch.setattr(DenseDataset, "__getitem__", getitem)


def test_nan_batch_through_the_cli_is_skipped_and_logged(tiny_data, tmp_path, monkeypatch):
    """One NaN batch: the run still ends with exit 0 and metrics.jsonl names the skipped task
    (fit itself is covered by test_engine.py). Breaks if the tool treats a skip as a failure."""
    _nan_images(monkeypatch, {"train_000"})
    args = tiny_overrides(tiny_data, tmp_path, train__max_steps=4, **FAST)
    assert _tool("train")(args) == 0
    skipped = [r for r in read_jsonl(tmp_path / "tiny/metrics.jsonl") if "skipped" in r]
    assert len(skipped) == 1 and "non-finite loss" in skipped[0]["skipped"]
    assert "seg" in skipped[0]["skipped"]


def test_only_nan_batches_abort_with_exit_1_and_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    """train.max_bad_steps NaN steps in a row abort the run. Breaks if that ends in a traceback
    or in exit code 0 / 2 (it is neither success nor bad input)."""
    _nan_images(monkeypatch, None)
    args = tiny_overrides(tiny_data, tmp_path, train__max_bad_steps=2, **FAST)
    assert _tool("train")(args) == 1
    _assert_one_line_error(capsys.readouterr().err, "training aborted at step 2", "max_bad_steps")


# -- 6. files that are not cvmtl checkpoints -------------------------------------------------------
@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory, tiny_data):
    """name -> path of: a plain torch.save dict, a text file, a truncated real checkpoint."""
    folder = tmp_path_factory.mktemp("foreign")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, folder / "plain.pt")
    (folder / "notes.pt").write_text("not a checkpoint at all\n")
    real = folder / "real.pt"
    from _ckpt import make_checkpoint

    make_checkpoint(real)
    data = real.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    return {
        "plain": (folder / "plain.pt", "no 'cvmtl_checkpoint' key"),
        "text": (folder / "notes.pt", "not a torch zip archive"),
        "truncated": (folder / "truncated.pt", "truncated, or another kind of file"),
    }


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["plain", "text", "truncated"])
def test_non_checkpoint_refused_by_eval_infer_and_resume(
    foreign_files, tiny_data, tmp_path, capsys, kind
):
    """Breaks if any tool crashes with a traceback, or refuses without naming the file."""
    path, why = foreign_files[kind]
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)

    assert _tool("eval")(["--checkpoint", str(path), "--out", str(tmp_path / "ev")]) == 2
    _assert_one_line_error(capsys.readouterr().err, str(path), "is not a cvmtl checkpoint", why)

    args = ["--checkpoint", str(path), "--input", str(image), "--out", str(tmp_path / "inf")]
    assert _tool("infer")([*args, "--quiet"]) == 2
    _assert_one_line_error(capsys.readouterr().err, str(path), "is not a cvmtl checkpoint", why)

    run_dir = tmp_path / "runs" / "tiny"  # a run whose last.pt was damaged or replaced
    run_dir.mkdir(parents=True)
    save_config(tiny_config(tiny_data, tmp_path / "runs", **FAST), run_dir / "config.yaml")
    shutil.copy(path, run_dir / "last.pt")
    assert _tool("train")(["--resume", str(run_dir)]) == 2
    last = _assert_one_line_error(capsys.readouterr().err, "is not a cvmtl checkpoint", why)
    assert str(run_dir / "last.pt") in last
    assert (run_dir / "last.pt").read_bytes() == path.read_bytes()  # refused, not overwritten


def test_resume_without_a_checkpoint_starts_fresh(tiny_data, tmp_path, capsys):
    """--resume of a run folder that has a config but no last.pt yet (stopped before its first
    save, as a preempted job): a fresh start, logged; a folder that does not exist: one line."""
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    cfg = tiny_config(tiny_data, tmp_path / "runs", train__max_steps=1, **FAST)
    save_config(cfg, run_dir / "config.yaml")
    assert _tool("train")(["--resume", str(run_dir)]) == 0
    assert f"resume: no checkpoint in {run_dir} yet; starting fresh" in capsys.readouterr().out
    assert load_checkpoint(run_dir / "last.pt")["step"] == 1
    missing = tmp_path / "runs" / "typo"
    assert _tool("train")(["--resume", str(missing)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "no such run folder", str(missing))
