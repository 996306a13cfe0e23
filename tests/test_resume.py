"""Resuming continues a run exactly: mid-epoch, with data workers, after SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time

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

from cvmtl.engine.checkpoint import load_checkpoint
from cvmtl.engine.trainer import fit


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


def _train_main():
    from cvmtl.commands.train import main

    return main


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_resume_mid_epoch_is_exact(tiny_data, tmp_path):
    # batch 2 over 8 images: 4 steps per epoch. Stopping at step 3 falls mid-epoch; 2 data
    # workers; warmup crosses the resume point; EMA and validation at each epoch end.
    common = dict(
        data__num_workers=2, train__batch_size=2, train__scheduler="none", train__warmup_steps=4,
        train__ema=0.5, train__epochs=5, train__log_every=2,
    )  # fmt: skip
    straight = tiny_config(tiny_data, tmp_path / "a", train__max_steps=6, **common)
    fit(straight)
    first = tiny_config(tiny_data, tmp_path / "b", train__max_steps=3, **common)
    fit(first)
    assert load_checkpoint(tmp_path / "b/tiny/last.pt")["position"] == {"epoch": 0, "batch": 3}
    # Continue with the CLI, as a user would: --resume RUN_DIR plus an override.
    assert _train_main()(["--resume", str(tmp_path / "b/tiny"), "train.max_steps=6"]) == 0

    a = load_checkpoint(tmp_path / "a/tiny/last.pt")
    b = load_checkpoint(tmp_path / "b/tiny/last.pt")
    assert a["step"] == b["step"] == 6 and b["position"] == {"epoch": 1, "batch": 2}
    assert _max_diff(a["model_raw"], b["model_raw"]) <= 1e-6
    assert _max_diff(a["model"], b["model"]) <= 1e-6  # the EMA too
    # metrics.jsonl of the resumed run has each train record once (step 3 ended the first part)
    records = read_jsonl(tmp_path / "b/tiny/metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 3, 4, 6]


def test_sigterm_saves_and_resume_completes(tiny_data, tmp_path):
    args = tiny_overrides(
        tiny_data, tmp_path / "runs", train__max_steps=24, train__epochs=100, train__batch_size=2,
        train__eval_every=0,
    )  # fmt: skip
    cmd = [PYTHON, str(REPO / "tools" / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stderr=subprocess.PIPE)
    jsonl = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if jsonl.is_file() and any(r["split"] == "train" for r in read_jsonl(jsonl)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    ckpt = load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")
    assert 1 <= ckpt["step"] < 24
    # resume (the run the config names) to the end
    done = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=subprocess_env(), timeout=300)
    assert done.returncode == 0
    assert load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")["step"] == 24
    train = [r for r in read_jsonl(jsonl) if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 25))  # each step once, across the stop
    assert torch.isfinite(torch.tensor(train[-1]["loss/seg"]))
