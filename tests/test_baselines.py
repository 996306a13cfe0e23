"""Single-task baselines (same step budget) and delta_m checkpoint selection."""

from __future__ import annotations

import json

import pytest
from enginekit import one_thread  # noqa: F401  (autouse fixture)
from evalkit import config, make_data, overrides

from cvmtl.engine.best import BestTracker
from cvmtl.engine.checkpoint import load_checkpoint
from cvmtl.engine.selection import nest, select_best, val_history
from cvmtl.metrics import delta_m
from cvmtl.workflows.baselines import baseline_config, read_summary, train_baselines

TASKS = ["seg", "depth"]
BASE = {"seg": {"miou": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.50, "rel_err": 0.20}}
# step 1: best mIoU, poor depth; step 2: best delta_m; step 3: best abs_err, poor seg.
HISTORY = [
    {"step": 1, "results": {"seg": {"miou": 48.0, "pixel_acc": 62.0},
                            "depth": {"abs_err": 0.70, "rel_err": 0.30}}},
    {"step": 2, "results": {"seg": {"miou": 44.0, "pixel_acc": 63.0},
                            "depth": {"abs_err": 0.46, "rel_err": 0.19}}},
    {"step": 3, "results": {"seg": {"miou": 30.0, "pixel_acc": 50.0},
                            "depth": {"abs_err": 0.45, "rel_err": 0.21}}},
]  # fmt: skip


def test_select_best_on_a_constructed_history(tmp_path):
    scores = [delta_m(h["results"], BASE, TASKS)["overall"] for h in HISTORY]
    assert scores[1] == max(scores) and scores[1] > 0 > scores[0]
    assert select_best(HISTORY, "delta_m", TASKS, BASE)["step"] == 2
    assert select_best(HISTORY, "seg/miou", TASKS)["step"] == 1
    assert select_best(HISTORY, "depth/abs_err", TASKS)["step"] == 3  # lower is better
    flat = [{"step": h["step"], "split": "val", "loss/seg": 9.0,
             **{f"{t}/{k}": v for t, m in h["results"].items() for k, v in m.items()}}
            for h in HISTORY]  # fmt: skip
    assert nest(flat[0]) == HISTORY[0]["results"]
    best = select_best(flat, "delta_m", TASKS, BASE)
    assert best["step"] == 2 and best["value"] == pytest.approx(scores[1])
    with pytest.raises(ValueError, match="baselines"):
        select_best(HISTORY, "delta_m", TASKS, None)

    # The training loop's tracker makes the same choice from baselines.json in the run folder.
    (tmp_path / "baselines.json").write_text(json.dumps({"val": BASE}))
    tracker = BestTracker("delta_m", TASKS, tmp_path, "val")
    assert tracker.metric == "delta_m" and not tracker.note
    for h in HISTORY:
        tracker.update(tracker.value_of(h["results"], tracker.delta_m(h["results"])), h["step"])
    assert tracker.step == 2


def test_baseline_config_keeps_the_budget(tmp_path):
    cfg = config(tmp_path / "data", tmp_path / "runs", loss__balancer="uw", model__sharing="soft",
                 train__best_metric="delta_m", finetune__epochs=2)  # fmt: skip
    b = baseline_config(cfg, "depth", total_steps=7)
    assert b.tasks == ["depth"] and b.name == "mtl/baselines/depth"
    assert b.run_dir == tmp_path / "runs" / "mtl" / "baselines" / "depth"
    assert b.train.max_steps == 7 and b.train.batch_size == cfg.train.batch_size
    assert b.train.accumulate == cfg.train.accumulate and b.model.backbone == cfg.model.backbone
    assert b.train.best_metric == "depth/abs_err" and b.finetune.epochs == 0
    assert (b.loss.balancer, b.model.sharing) == ("fixed", "hard")
    assert cfg.tasks == ["seg", "depth", "normal"]  # the run's config is untouched
    with pytest.raises(ValueError, match="not one of"):
        baseline_config(config(tmp_path, tmp_path, tasks="[seg]"), "depth", 3)


@pytest.mark.slow
def test_train_baselines_then_delta_m_selection(tmp_path):
    data = make_data(tmp_path / "data")
    # 8 train images, batch 4: 2 steps per epoch; 4 steps = validation at steps 2 and 4.
    cfg = config(data, tmp_path / "runs", tasks="[seg, depth]", train__max_steps=4,
                 train__best_metric="delta_m")  # fmt: skip
    baselines = train_baselines(cfg)
    run = cfg.run_dir
    on_disk = json.loads((run / "baselines.json").read_text())
    assert on_disk == baselines and set(on_disk) == {"val", "test"}
    for split in ("val", "test"):
        assert set(on_disk[split]) == {"seg", "depth"}
        assert {"miou", "pixel_acc"} <= set(on_disk[split]["seg"])
        assert {"abs_err", "rel_err"} <= set(on_disk[split]["depth"])

    from cvmtl.engine.trainer import fit

    result = fit(cfg)
    mtl = load_checkpoint(run / "last.pt")
    summary = read_summary(run)
    assert summary["multitask_steps"] == mtl["step"] == 4
    for task in ("seg", "depth"):
        base_last = load_checkpoint(run / "baselines" / task / "last.pt")
        assert summary["runs"][task]["step"] == base_last["step"] == mtl["step"]
        assert base_last["config"]["train"]["batch_size"] == mtl["config"]["train"]["batch_size"]
        assert base_last["config"]["train"]["accumulate"] == mtl["config"]["train"]["accumulate"]
        assert base_last["config"]["tasks"] == [task]
        # val baselines come from the baseline's own best.pt
        best = load_checkpoint(run / "baselines" / task / "best.pt")
        assert best["best"]["metric"].startswith(f"{task}/")

    # best.pt of the multi-task run is the delta_m-best validation entry of its history.
    history = val_history(run)
    assert [h["step"] for h in history] == [2, 4] and all("delta_m" in h for h in history)
    expected = select_best(history, "delta_m", cfg.tasks, on_disk["val"])
    assert load_checkpoint(run / "best.pt")["best"]["step"] == expected["step"]
    assert result["best"]["metric"] == "delta_m"

    # A second call reuses the finished baselines instead of training them again.
    again = train_baselines(cfg)
    assert again == baselines and all(r["reused"] for r in read_summary(run)["runs"].values())


def test_rerun_resumes_an_interrupted_baseline_of_the_same_config(tmp_path, monkeypatch):
    """prior_run tells finished / interrupted / foreign runs apart; train_baselines (and the demo,
    through the same helpers) resumes the interrupted one instead of starting it over."""
    from cvmtl.engine import trainer
    from cvmtl.engine.checkpoint import save_checkpoint
    from cvmtl.engine.run import prior_run, resume_flag

    data = make_data(tmp_path / "data")
    cfg = config(data, tmp_path / "runs", tasks="[depth]", train__max_steps=2)
    train_baselines(cfg)
    bcfg = baseline_config(cfg, "depth", total_steps=2)
    last, best = bcfg.run_dir / "last.pt", bcfg.run_dir / "best.pt"
    prior = prior_run(bcfg, 2)
    assert prior["finished"] and prior["step"] == 2 and resume_flag(prior, 2) is None
    other = baseline_config(config(data, tmp_path / "runs", tasks="[depth]", train__lr=0.5),
                            "depth", total_steps=2)  # fmt: skip
    assert prior_run(other, 2) is None  # another config's checkpoint is never reused

    # An interruption after step 1: last.pt at step 1, nothing validated, no best.pt yet.
    ckpt = load_checkpoint(last)
    ckpt["step"], ckpt["best"] = 1, {}
    save_checkpoint(ckpt, last)
    best.unlink()
    prior = prior_run(bcfg, 2)
    assert not prior["finished"] and resume_flag(prior, 2) is True

    calls = []
    real_fit = trainer.fit

    def recording_fit(c, **kwargs):
        calls.append(kwargs)
        return real_fit(c, **kwargs)

    monkeypatch.setattr(trainer, "fit", recording_fit)
    train_baselines(cfg)
    assert calls == [{"resume": True, "test": True}]
    assert load_checkpoint(last)["step"] == 2 and best.is_file()


def _train_tool():
    from cvmtl.commands import train

    return train


def test_train_py_baselines_only(tmp_path):
    data = make_data(tmp_path / "data", train=4, val=2, test=2)
    args = overrides(data, tmp_path / "runs", tasks="[depth]", train__max_steps=1)
    assert _train_tool().main(["--baselines-only", *args]) == 0
    run = tmp_path / "runs" / "mtl"
    baselines = json.loads((run / "baselines.json").read_text())
    assert set(baselines) == {"val", "test"} and "abs_err" in baselines["val"]["depth"]
    assert (run / "baselines" / "depth" / "best.pt").is_file()
    assert not (run / "last.pt").exists()  # the multi-task run was not trained


@pytest.mark.slow
def test_train_py_baselines_then_joint_then_finetune(tmp_path):
    data = make_data(tmp_path / "data")
    args = overrides(data, tmp_path / "runs", tasks="[seg, depth]", train__best_metric="delta_m",
                     finetune__epochs=1, finetune__tasks="[depth]")  # fmt: skip
    assert _train_tool().main(["--train-baselines", *args]) == 0
    run = tmp_path / "runs" / "mtl"
    mtl = load_checkpoint(run / "best.pt")
    assert mtl["best"]["metric"] == "delta_m" and mtl["step"] == 2
    assert read_summary(run)["runs"]["seg"]["step"] == 2
    assert "delta_m" in val_history(run)[-1]
    report = json.loads((run / "finetune.json").read_text())
    assert set(report) == {"depth"} and (run / "finetune" / "depth.pt").is_file()
