"""``cvmtl sweep`` (issue 29): the search space and its errors, trials as run folders scored on
validation only, pruning and failures recorded without stopping the study, two workers on one
embedded storage, Ctrl-C and a rerun, the outputs (sweep.json, best_config.yaml, report.html).
Tiny data and 4-step trials: seconds per trial on 2 cores."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from enginekit import (  # noqa: F401  (one_thread: autouse fixture)
    PYTHON,
    REPO,
    make_tiny_dataset,
    one_thread,
    read_jsonl,
    subprocess_env,
    tiny_overrides,
)
from optuna.trial import TrialState

from cvmtl.commands import sweep as sweep_command
from cvmtl.config import ConfigError, load_config
from cvmtl.data import dataset as dataset_module
from cvmtl.workflows.sweep import results as results_module
from cvmtl.workflows.sweep import run_sweep, storage
from cvmtl.workflows.sweep.space import apply_params, load_space, suggest

SPACE = """
params:
  loss.balancer: {choices: [fixed, uw]}
  loss.balancer_args.weights.seg: {low: 0.5, high: 2.0, when: {loss.balancer: fixed}}
  train.lr: {low: 5.0e-4, high: 5.0e-3, log: true}
"""
TWO_TASKS = {"tasks": "[seg,depth]", "loss.balancer_args": "{}"}  # delta_m defined at 4 steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("sweep_data"))


def overrides(data: Path, out: Path, **extra) -> list[str]:
    extra = {"train__max_steps": 4, **extra}
    return [o.replace(" ", "") for o in tiny_overrides(data, out, **extra)]


def write_space(folder: Path, text: str = SPACE) -> Path:
    path = folder / "space.yaml"
    path.write_text(text)
    return path


def trials_of(study_dir: Path, name: str = "tiny_sweep") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage.open_storage(None, study_dir))
    return study.get_trials(deepcopy=False)


# ---- the search space ----------------------------------------------------------------------


def test_space_parses_and_samples_conditionally(tmp_path):
    base = load_config(None, ["loss.balancer_args={weights: {seg: 3.0}}"])
    space = load_space(write_space(tmp_path), base)
    assert space.metric == "delta_m" and space.direction == "maximize"
    kinds = {p.key: (p.kind, p.log) for p in space.params}
    assert kinds["train.lr"] == ("float", True) and kinds["loss.balancer"] == ("categorical", False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        params = suggest(study.ask(), space, base)
        seen.add(params["loss.balancer"])
        # the seg weight is sampled exactly when the balancer is fixed
        assert ("loss.balancer_args.weights.seg" in params) == (params["loss.balancer"] == "fixed")
        cfg = apply_params(base, params)
        assert 5e-4 <= cfg.train.lr <= 5e-3
        if params["loss.balancer"] == "uw":  # the base's fixed weights are not passed to uw
            assert cfg.loss.balancer_args == {}
        else:
            w = params["loss.balancer_args.weights.seg"]
            assert cfg.loss.balancer_args == {"weights": {"seg": w}}
    assert seen == {"fixed", "uw"}
    assert load_space(write_space(tmp_path, SPACE + "metric: depth/abs_err\n"), base).direction == (
        "minimize"
    )


def test_the_shipped_demo_space_loads_against_the_demo_config():
    base = load_config("synthetic_demo")
    space = load_space("configs/sweeps/demo_space.yaml", base)
    assert {p.key for p in space.params} == {
        "loss.balancer", "loss.balancer_args.weights.normal", "train.lr",
    }  # fmt: skip
    assert load_space("demo_space", base).params == space.params  # found by name when installed


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("params: {train.lrr: {low: 1, high: 2}}", "'train.lrr' is not a config key"),
        ("params: {trian.lr: {low: 1, high: 2}}", "'trian.lr' is not a config key"),
        ("params: {train: {low: 1, high: 2}}", "is a config section, not a key"),
        ("params: {train.lr: {low: 0.01, high: 0.001}}", "train.lr: empty range: low=0.01"),
        ("params: {model.head_channels: {low: 32, high: 32}}", "empty range"),
        ("params: {train.lr: {low: 0, high: 1, log: true}}", "log scale needs low > 0"),
        ("params: {model.arch: {choices: []}}", "choices: expected a non-empty list"),
        ("params: {model.arch: {choices: [fpn, nope]}}", "model.arch: expected one of"),
        ("params: {train.batch_size: {low: 1.5, high: 4}}", "train.batch_size"),
        ("metric: seg/nope\nparams: {train.lr: {low: 1, high: 2}}", "metric: expected delta_m"),
    ],
)
def test_a_bad_space_is_one_error_line(tmp_path, capsys, space, message):
    path = write_space(tmp_path, space)
    status = sweep_command.main(["--space", str(path), f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and str(path) in err
    assert not (tmp_path / "synthetic_demo_sweep").exists()  # refused before anything ran
    with pytest.raises(ConfigError, match=message.split(":")[0]):
        load_space(path, load_config(None))


@pytest.mark.parametrize(
    "url", ["sqlite:////no/such/folder/s.db", "nosuchdb://x/y", "/no/such/folder/s.journal"]
)
def test_a_storage_that_cannot_be_opened_is_one_error_line(tmp_path, capsys, url):
    space = write_space(tmp_path)
    status = sweep_command.main(["--space", str(space), "--storage", url, f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --storage {url}: cannot open it (")


def test_a_trial_left_running_by_a_dead_local_worker_gives_its_slot_back(tmp_path):
    study = optuna.create_study(study_name="s", storage=storage.open_storage(None, tmp_path))
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    owners = [
        {"host": storage.worker_id()["host"], "pid": dead.pid},  # killed: its trial is stale
        storage.worker_id(),  # alive (this process)
        {"host": "another-machine", "pid": dead.pid},  # not ours to judge
    ]
    for owner in owners:
        study.ask().set_user_attr("worker", owner)
    assert storage.fail_stale(study) == [0]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    assert "died" in trials[0].user_attrs["note"]
    assert storage.claim_trial(study, 3, tmp_path) is not None  # the freed slot
    assert storage.claim_trial(study, 3, tmp_path) is None  # 3 running: the study is full


def test_a_trial_that_loses_the_race_for_the_last_slot_is_recorded_as_surplus(
    tmp_path, monkeypatch
):
    """Across machines the local lock does not help: another worker may ask between our count
    and our ask. The trial past the N-th slot holder is failed with a note and not run."""
    study = optuna.create_study(study_name="s", storage=storage.open_storage(None, tmp_path))

    class Racing:  # another machine asks for a trial at the same moment as we do
        def __getattr__(self, name):
            return getattr(study, name)

        def ask(self):
            study.ask().set_user_attr("worker", {"host": "another-machine", "pid": 1})
            return study.ask()

    assert storage.claim_trial(Racing(), 1, tmp_path) is None
    first, mine = study.get_trials()
    assert first.state == TrialState.RUNNING  # the other machine's trial runs
    assert mine.state == TrialState.FAIL and mine.user_attrs["note"].startswith("surplus")
    assert storage.claim_trial(study, 1, tmp_path) is None  # the study is full


def test_pruner_names():
    assert isinstance(storage.make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(storage.make_pruner("hyperband"), optuna.pruners.HyperbandPruner)
    assert isinstance(storage.make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="--pruner: expected one of median|hyperband|none"):
        storage.make_pruner("asha")


# ---- a whole study, in process ----------------------------------------------------------------


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[bytes] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        src = dict(attrs).get("src") or ""
        if tag == "img" and src.startswith("data:image/png;base64,"):
            self.images.append(base64.b64decode(src.split(",", 1)[1]))
        self._in_h2 = tag == "h2"

    def handle_data(self, text):
        if self._in_h2:
            self.headings.append(text)


def test_a_study_trains_run_folders_on_validation_then_tests_the_best_once(
    data, tmp_path, monkeypatch
):
    # every dataset built, in order, and when the best trial's test evaluation starts
    built: list[str] = []
    original_init = dataset_module.DenseDataset.__init__

    def recording_init(self, root, split, *args, **kwargs):
        built.append(split)
        original_init(self, root, split, *args, **kwargs)

    original_eval = results_module.evaluate_best_on_test

    def marked_eval(*args, **kwargs):
        built.append("<test evaluation>")
        return original_eval(*args, **kwargs)

    monkeypatch.setattr(dataset_module.DenseDataset, "__init__", recording_init)
    monkeypatch.setattr(results_module, "evaluate_best_on_test", marked_eval)
    ov = overrides(data, tmp_path / "runs", **TWO_TASKS)
    summary = run_sweep(None, write_space(tmp_path), ov, trials=3, pruner="none")

    study_dir = tmp_path / "runs" / "tiny_sweep"
    # the test split is read only after the search, by the one evaluation of the best trial
    marker = built.index("<test evaluation>")
    assert "test" not in built[:marker] and "test" in built[marker:]
    assert built.count("<test evaluation>") == 1
    on_disk = json.loads((study_dir / "sweep.json").read_text())
    assert on_disk == summary
    assert set(summary) >= {"study", "direction", "metric", "best", "trials"}
    assert (summary["study"], summary["direction"], summary["metric"]) == (
        "tiny_sweep", "maximize", "delta_m",
    )  # fmt: skip
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 3
    assert all(set(t) == {"number", "state", "value", "params"} for t in summary["trials"])
    values = {t["number"]: t["value"] for t in summary["trials"]}
    best = summary["best"]
    assert best["value"] == max(values.values()) == values[best["trial"]]
    assert summary["finished"] and summary["test"]["trial"] == best["trial"]
    assert (study_dir / "study.journal").is_file()  # the default, embedded storage

    base_values = json.loads((study_dir / "baselines.json").read_text())
    for number in range(3):
        run = study_dir / f"trial_{number:04d}"
        assert {"config.yaml", "best.pt", "last.pt", "metrics.jsonl"} <= {
            p.name for p in run.iterdir()
        }
        records = read_jsonl(run / "metrics.jsonl")
        assert {r["split"] for r in records} == {"train", "val"}  # never tested
        val = [r for r in records if r["split"] == "val"]
        # the trial's value is its best validation delta_m against the study's baselines
        assert values[number] == pytest.approx(max(r["delta_m"] for r in val))
        assert json.loads((run / "baselines.json").read_text())["val"] == base_values["val"]
        intermediate = summary["details"][str(number)]["intermediate"]
        assert [intermediate[str(k + 1)] for k in range(len(val))] == [r["delta_m"] for r in val]
    for task in ("seg", "depth"):  # trained once for the study, never tested while searching
        records = read_jsonl(study_dir / "baselines" / task / "metrics.jsonl")
        assert "test" not in {r["split"] for r in records}
    assert set(base_values) == {"val", "test"}  # test values added by the final evaluation

    # best_config.yaml: the base config with the best parameters, loadable by tools/train.py
    cfg = load_config(study_dir / "best_config.yaml")
    assert cfg.name == "tiny_sweep_best" and cfg.train.lr == pytest.approx(
        best["params"]["train.lr"]
    )
    assert cfg.loss.balancer == best["params"]["loss.balancer"]
    test_metrics = json.loads((study_dir / "best_test" / "metrics.json").read_text())
    assert test_metrics["split"] == "test"
    assert summary["test"]["delta_m"] == pytest.approx(test_metrics["delta_m"]["overall"])

    page = (study_dir / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert "<script" not in page and "http" not in page  # self-contained
    assert "evaluated once on the test split" in page
    assert {"Trials", "Optimization history", "Validation rounds", "Parameter importances",
            "Parallel coordinates"} <= set(parser.headings)  # fmt: skip
    assert len(parser.images) >= 4 and all(i.startswith(b"\x89PNG") for i in parser.images)

    # a worker with another base config is refused: its trials would not be comparable
    with pytest.raises(ValueError, match=r"created with config.train.max_steps=4 \(now 6\)"):
        run_sweep(None, tmp_path / "space.yaml", [*ov, "train.max_steps=6"], trials=3)
    # a rerun of a finished study trains nothing more and tests nothing again
    built.clear()
    stamp = (study_dir / "best_test" / "metrics.json").stat().st_mtime_ns
    again = run_sweep(None, tmp_path / "space.yaml", ov, trials=3, pruner="none")
    assert [b for b in built if not b.startswith("<")] == []  # no dataset read at all
    assert again["trials"] == summary["trials"] and again["test"] == summary["test"]
    assert (study_dir / "best_test" / "metrics.json").stat().st_mtime_ns == stamp


def test_pruned_and_failed_trials_are_recorded_and_the_study_goes_on(data, tmp_path, monkeypatch):
    # a pruner that stops every trial at its first validation round (values are < 1e9)
    monkeypatch.setattr(
        storage, "make_pruner", lambda name: optuna.pruners.ThresholdPruner(lower=1e9)
    )
    url = f"sqlite:///{tmp_path / 'study.db'}"  # a database URL: Optuna's RDB storage
    ov = overrides(data, tmp_path / "runs", train__best_metric="seg/miou")
    study = optuna.create_study(study_name="tiny_sweep", storage=url, direction="maximize")
    study.enqueue_trial({"loss.balancer": "no_such_balancer", "train.lr": 1e-3})
    space = write_space(tmp_path, SPACE.replace("[fixed, uw]", "[fixed, uw, no_such_balancer]"))
    summary = run_sweep(None, space, ov, trials=2, storage=url, metric="seg/miou")

    states = [t["state"] for t in summary["trials"]]
    assert states == ["FAIL", "PRUNED", "PRUNED"] or (
        states[0] == "FAIL" and states.count("PRUNED") == 2
    )
    notes = {int(k): d["note"] for k, d in summary["details"].items()}
    assert "unknown balancer 'no_such_balancer'" in notes[0]
    pruned = [t for t in summary["trials"] if t["state"] == "PRUNED"]
    for t in pruned:
        assert notes[t["number"]].startswith("pruned at validation round 1 (step 2)")
        run = tmp_path / "runs" / "tiny_sweep" / f"trial_{t['number']:04d}"
        val = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "val"]
        assert [r["step"] for r in val] == [2]  # stopped after its first round of 2
        assert t["value"] == pytest.approx(val[0]["seg/miou"])
    assert summary["best"] is None and summary["finished"]  # pruned trials are not "best"
    assert not (tmp_path / "runs" / "tiny_sweep" / "best_config.yaml").exists()


def _made_up_study() -> tuple[optuna.Study, dict]:
    """A study of 12 made-up trials (complete, pruned, failed) and its sweep.json summary."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from cvmtl.workflows.sweep.space import Param, SearchSpace
    from cvmtl.workflows.sweep.trial import SweepContext

    study = optuna.create_study(study_name="made_up", direction="maximize")
    dists = {"train.lr": FloatDistribution(1e-4, 1e-2, log=True),
             "loss.balancer": CategoricalDistribution(["fixed", "uw"])}  # fmt: skip
    for i in range(12):
        params = {"train.lr": 1e-4 * 1.5**i, "loss.balancer": ["fixed", "uw"][i % 2]}
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL][i % 3]
        rounds = {1: i * 0.5, 2: i * 0.7} if state != TrialState.FAIL else {}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, state=state, intermediate_values=rounds,
            value=i * 0.8 if state == TrialState.COMPLETE else None,
            user_attrs={"note": "failed: ValueError: x" if state == TrialState.FAIL else ""},
        ))  # fmt: skip
    space = SearchSpace([Param("train.lr", "float", low=1e-4, high=1e-2, log=True)], "seg/miou")
    ctx = SweepContext(load_config(None), space, Path("."), None)
    return study, results_module.summarize(study, ctx, 12)


def test_the_report_is_one_self_contained_page_with_its_plots(tmp_path):
    from cvmtl.workflows.sweep.report import write_report

    study, summary = _made_up_study()
    write_report(tmp_path / "report.html", summary, study)
    page = (tmp_path / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert "<script" not in page and "http" not in page and "<link" not in page
    assert {"Optimization history", "Validation rounds", "Parameter importances",
            "Parallel coordinates"} <= set(parser.headings)  # fmt: skip
    assert len(parser.images) == 4 and all(i.startswith(b"\x89PNG") for i in parser.images)
    assert page.count("<tr>") == 1 + 12 and "failed: ValueError: x" in page
    assert "has not been evaluated on the test split yet" in page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_report_renders_in_headless_chromium(tmp_path):
    import numpy as np
    from PIL import Image
    from test_report import _chromium_screenshot

    from cvmtl.workflows.sweep.report import write_report

    study, summary = _made_up_study()
    write_report(tmp_path / "report.html", summary, study)
    png = tmp_path / "shot.png"
    _chromium_screenshot(tmp_path / "report.html", png, tmp_path / "chromium")
    img = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # plots drawn


# ---- processes: two workers at once, Ctrl-C and a rerun --------------------------------------


def sweep_cmd(space: Path, ov: list[str], trials: int, *extra: str) -> list[str]:
    cmd = [PYTHON, str(REPO / "tools" / "sweep.py"), "--space", str(space), *ov]
    return [*cmd, "--trials", str(trials), "--metric", "seg/miou", *extra]


def test_two_workers_at_once_finish_the_trials_together(data, tmp_path):
    ov = overrides(data, tmp_path / "runs", train__best_metric="seg/miou")
    cmd = sweep_cmd(write_space(tmp_path), ov, 4, "--pruner", "none")
    workers = [
        subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study_dir = tmp_path / "runs" / "tiny_sweep"
    trials = trials_of(study_dir)
    # exactly 4 trials, each trained once, in its own folder, by one of the two workers
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(t.number for t in trials) == list(range(4))
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {w.pid for w in workers}
    for t in trials:
        records = read_jsonl(study_dir / f"trial_{t.number:04d}" / "metrics.jsonl")
        assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert sorted(p.name for p in study_dir.glob("trial_*")) == [f"trial_{n:04d}" for n in range(4)]
    done = [line for out in outputs for line in out.splitlines() if " COMPLETE value=" in line]
    assert len(done) == 4
    summary = json.loads((study_dir / "sweep.json").read_text())
    assert summary["finished"] and len(summary["trials"]) == 4


def test_ctrl_c_marks_the_trial_failed_and_a_rerun_finishes_the_study(data, tmp_path):
    ov = overrides(
        data, tmp_path / "runs", train__best_metric="seg/miou", train__max_steps=24,
        train__eval_every=4,
    )  # fmt: skip
    cmd = sweep_cmd(write_space(tmp_path), ov, 1, "--pruner", "none")
    study_dir = tmp_path / "runs" / "tiny_sweep"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log = study_dir / "trial_0000" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 2):  # trial 0 is training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "run the same command to continue" in out
    (first,) = trials_of(study_dir)
    assert first.state == TrialState.FAIL and first.user_attrs["note"].startswith("interrupted")
    steps = [r["step"] for r in read_jsonl(log) if r["split"] == "train"]
    assert steps and steps[-1] < 24  # it was stopped mid-run
    assert not json.loads((study_dir / "sweep.json").read_text())["finished"]

    # the same command again finishes the study: one completed trial after the failed one
    rerun = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert [t.state for t in trials_of(study_dir)] == [TrialState.FAIL, TrialState.COMPLETE]
    summary = json.loads((study_dir / "sweep.json").read_text())
    assert summary["finished"] and summary["best"]["trial"] == 1
    assert summary["test"]["trial"] == 1
