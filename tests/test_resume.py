"""Resuming continues a run exactly: mid-epoch, with data workers, after SIGTERM."""

from __future__ import annotations

import json
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


def test_resume_before_the_first_checkpoint_starts_fresh(tiny_data, tmp_path, capsys):
    # A preempted job always passes --resume, also when it was stopped before its first save.
    args = tiny_overrides(tiny_data, tmp_path / "runs", train__max_steps=2, train__eval_every=0)
    assert _train_main()([*args[:3], "--resume", *args[3:]]) == 0
    out = capsys.readouterr().out
    assert f"resume: no checkpoint in {tmp_path / 'runs' / 'tiny'} yet; starting fresh" in out
    assert load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")["step"] == 2
    # a RUN_DIR (or checkpoint) named explicitly that does not exist is still an error
    for missing in (tmp_path / "runs" / "nope", tmp_path / "runs" / "tiny" / "other.pt"):
        assert _train_main()(["--resume", str(missing), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: --resume: no such run folder or checkpoint: {missing}"
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        fit(tiny_config(tiny_data, tmp_path / "runs"), resume=tmp_path / "runs" / "nope")


# When the SIGKILL test kills each launch: once it has logged this many optimizer steps, after
# a delay in seconds, or as soon as its temp file of a checkpoint write appears (killed inside
# that save: the record of a step is logged before its save, validation's best.pt before
# last.pt). The first kill comes before torch is even imported: no checkpoint yet.
KILLS = [(0, 0.5), (2, ".last.pt"), (4, ".best.pt"), (9, 0.017)]


def test_sigkill_anywhere_then_resume_is_exact(tiny_data, tmp_path):
    """kill -9 at moments spread over a run (before the first checkpoint, inside a last.pt and a
    best.pt write, mid-run), each time rerun with --resume, until the run ends: the weights equal
    an uninterrupted run's, and last.pt / best.pt always open (atomic writes)."""
    extra = dict(
        model__backbone="test_resnet", train__max_steps=12, train__epochs=100,
        train__batch_size=2, train__save_every=1, train__eval_every=1, train__warmup_steps=3,
    )  # fmt: skip
    fit(tiny_config(tiny_data, tmp_path / "straight", **extra))

    args = tiny_overrides(tiny_data, tmp_path / "runs", **extra)
    cmd = [PYTHON, str(REPO / "tools" / "train.py"), *args[:4], "--resume", *args[4:]]
    run = tmp_path / "runs" / "tiny"
    jsonl, steps, fresh, in_save = run / "metrics.jsonl", [], [], 0

    def logged_steps() -> int:
        steps = [0]
        for line in jsonl.read_text().splitlines() if jsonl.is_file() else []:
            try:
                record = json.loads(line)
            except ValueError:  # a line being written
                continue
            steps.append(record["step"] if record["split"] == "train" else 0)
        return max(steps)

    for launch in range(len(KILLS) + 1):
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, text=True
        )
        if launch < len(KILLS):
            at, then = KILLS[launch]
            temp = run / f"{then}.tmp{proc.pid}"
            deadline = time.time() + 120
            while proc.poll() is None and (
                logged_steps() < at or (isinstance(then, str) and not temp.exists())
            ):
                assert time.time() < deadline, "no progress"
                time.sleep(0.001)
            if isinstance(then, float):
                time.sleep(then)
            proc.kill()
        out, _ = proc.communicate(timeout=300)
        fresh.append("starting fresh" in out)
        if launch == len(KILLS):
            assert proc.returncode == 0, out[-2000:]
        elif isinstance(then, str):
            in_save += temp.exists()  # the write it was killed in was left unfinished
        # never half-written, and best.pt is the checkpoint last.pt's best names
        last = load_checkpoint(run / "last.pt") if (run / "last.pt").exists() else None
        best = load_checkpoint(run / "best.pt") if (run / "best.pt").exists() else None
        if last is not None and last["best"]["step"] is not None:
            assert best is not None and best["step"] == last["best"]["step"], launch
        steps.append(last["step"] if last is not None else 0)
    assert steps[0] == 0 and fresh[1], (steps, fresh)  # killed before the first checkpoint
    assert steps == sorted(steps) and len(set(steps)) == 5, steps  # kills spread over the run
    assert in_save >= 1  # a kill landed inside a checkpoint write
    for name in ("last.pt", "best.pt"):
        a = load_checkpoint(tmp_path / "straight" / "tiny" / name)
        b = load_checkpoint(run / name)
        assert a["step"] == b["step"] and a["best"] == b["best"]
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
    train = [r["step"] for r in read_jsonl(jsonl) if r["split"] == "train"]
    assert train == list(range(1, 13))  # each step once, across every kill
    assert not list(run.glob(".*.tmp*"))  # the killed writers' temp files are gone
