"""Benchmark: the JSON fields exist with sane types (timings themselves are not checked)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvmtl.config import load_config
from cvmtl.workflows.bench.timing import time_interleaved
from cvmtl.workflows.benchmark import random_batch, run_benchmark, simple_losses

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TINY = [
    "data.crop=[64,96]",
    "train.batch_size=2",
    "model.neck_channels=16",
    "model.head_channels=8",
    "train.device=cpu",
    "model.backbone=resnet10t",  # half of resnet18's parameters: faster steps
]
PHASES = {"data", "forward", "losses", "balancer", "backward", "optimizer"}
FAST = dict(iters=1, warmup=0, peak_size=512)  # one matmul side: a quick (not tight) peak
PRECISION_KEYS = {"amp_requested", "amp_resolved", "channels_last_resolved", "precision"}


def check_result(result: dict, phases: bool = True) -> None:
    for part in ("train", "eval"):
        assert result[part]["img_s"] > 0
        stats = result[part]["step_s"]
        assert set(stats) >= {"median", "min", "max"}
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert isinstance(result["train"]["phases"], dict)
    if phases:
        assert set(result["train"]["phases"]) == PHASES
        assert result["train"]["phases_sum_s"] > 0
    assert 0 <= result["eval"]["metrics_frac"] <= 1
    assert result["train"]["minor_faults"] >= 0
    assert set(result["eval"]["minor_faults"]) == {"forward", "metrics"}
    assert result["host_malloc"] in {"kept", "system"} or result["host_malloc"].startswith("env:")
    assert result["peak_mem_mb"] > 0 and isinstance(result["peak_mem_kind"], str)
    assert isinstance(result["train_step_mem_mb"], float)
    assert isinstance(result["params"], int) and result["params"] > 0
    assert isinstance(result["flops_per_img"], int) and result["flops_per_img"] > 0
    check_mfu(result)
    assert result["config"]["data"]["crop"] == [64, 96]
    assert isinstance(result["device"], str) and isinstance(result["torch"], str)
    check_precision(result)


def check_mfu(result: dict) -> None:
    """Contracts only: how mfu is computed, never a hardware-dependent value (a small matmul's
    rate is no tight peak, and a model's kernels can beat torch.matmul)."""
    assert result["train_flop_s"] > 0
    if result["mfu"] is None:
        assert result["peak_flop_s"] is None
        return
    peaks, dtype, bound = result["peak_flop_s"], result["mfu_dtype"], result["mfu_peak_dtype"]
    assert set(peaks) >= {"bf16", "fp32", dtype} and all(v > 0 for v in peaks.values())
    assert dtype == {"none": "fp32"}.get(result["amp_resolved"], result["amp_resolved"])
    assert bound in (dtype, "fp32") and peaks[bound] == max(peaks[dtype], peaks["fp32"])
    assert result["mfu_peak_flop_s"] == peaks[bound]
    assert result["mfu"] == pytest.approx(result["train_flop_s"] / peaks[bound])
    assert result["mfu"] > 0 and isinstance(result["peak_method"], str)
    for name, kernels in result["peak_by_kernel"].items():
        assert set(kernels) == {"matmul", "conv3x3"}
        assert peaks[name] == max(v for by_size in kernels.values() for v in by_size.values())


def check_precision(result: dict) -> None:
    """What auto became is in the JSON, and the config records the concrete values used."""
    assert set(result) >= PRECISION_KEYS
    assert result["amp_resolved"] in ("none", "bf16", "fp16")
    assert isinstance(result["channels_last_resolved"], bool)
    assert result["config"]["train"]["amp"] == result["amp_resolved"]
    assert result["config"]["train"]["channels_last"] == result["channels_last_resolved"]
    if result["device_type"] == "cpu":
        assert isinstance(result["cpu_capability"], str) and result["cpu_capability"]
        assert isinstance(result["cpu_bf16"], bool)


@pytest.mark.parametrize(
    "extra",
    [["model.sharing=soft", "tasks=[seg,depth]", "train.amp=none"], ["loss.balancer=mgda"]],
)
def test_run_benchmark_fields(extra: list[str]) -> None:
    cfg = load_config(None, TINY + extra)
    result = run_benchmark(cfg, **FAST)
    check_result(result)
    assert result["train"]["phases"]["data"] is None  # no --data
    assert result["mfu"] is not None
    if "train.amp=none" in extra:
        assert result["amp_resolved"] == "none" and result["mfu_dtype"] == "fp32"
    json.dumps(result)  # serializable as is


def test_params_mode_phases_and_eager_comparison() -> None:
    cfg = load_config(None, [*TINY, "loss.balancer=mgda", "loss.grad_source=params"])
    result = run_benchmark(cfg, compare_eager_fp32=True, evaluate=False, **FAST)
    assert result["train"]["phases"]["backward"] < 1e-3  # its backward passes are per task
    assert result["speedup_vs_eager_fp32"] > 0 and result["eager_fp32"]["img_s"] > 0


def test_compare_variant_is_timed_interleaved() -> None:
    cfg = load_config(None, [*TINY, "train.amp=none", "train.channels_last=false"])
    kw = dict(iters=1, warmup=0, phases=False, evaluate=False, peak_size=None)
    result = run_benchmark(cfg, compare=["train.channels_last=true"], **kw)
    other = result["compare"]
    assert other["overrides"] == ["train.channels_last=true"] and other["img_s"] > 0
    assert other["channels_last_resolved"] is True and result["channels_last_resolved"] is False
    assert result["speedup_vs_compare"] > 0 and "channels_last=true" in other["precision"]
    with pytest.raises(ValueError, match="compare"):
        run_benchmark(cfg, train_step=lambda *a: None, compare=["train.lr=1"], **kw)


def test_no_peak_means_no_mfu() -> None:
    cfg = load_config(None, TINY)
    result = run_benchmark(cfg, iters=1, warmup=0, peak_size=None, phases=False, evaluate=False)
    assert result["mfu"] is None and result["train"]["phases"] == {}


def test_peaks_climb_sizes_and_stop_when_slow() -> None:
    from cvmtl.workflows.bench.timing import peak_conv_flops, peak_matmul_flops, peak_sizes

    assert peak_sizes(2048) == [512, 1024, 2048] and peak_sizes(768) == [512, 768]
    assert peak_sizes(256) == [256] and peak_sizes(64, 16) == [16, 32, 64]
    cpu = torch.device("cpu")
    peak = peak_matmul_flops(cpu, torch.float32, 1024, repeats=1)
    assert list(peak["by_size"]) == [512, 1024] and peak["flop_s"] == max(peak["by_size"].values())
    assert list(peak_matmul_flops(cpu, torch.float32, 1024, 1, budget_s=0)["by_size"]) == [512]
    conv = peak_conv_flops(cpu, torch.float32, 32, repeats=1)
    assert list(conv["by_size"]) == ["nchw:16", "nchw:32", "channels_last:16", "channels_last:32"]
    assert conv["flop_s"] == conv["by_size"][conv["size"]] == max(conv["by_size"].values())
    slow = peak_conv_flops(cpu, torch.float32, 32, 1, budget_s=0)
    assert list(slow["by_size"]) == ["nchw:16", "channels_last:16"]  # one size per layout


def test_interleaved_timing_counts_each_calls_page_faults() -> None:
    import mmap

    pages = 256
    size = pages * mmap.PAGESIZE

    def touch_fresh_pages() -> None:  # a new anonymous mapping, every page written once
        with mmap.mmap(-1, size) as m:
            m.write(b"x" * size)

    faults: dict[str, float] = {}
    time_interleaved({"touch": touch_fresh_pages, "idle": lambda: None}, 3, 1, CPU, faults)
    assert faults["touch"] >= pages
    assert faults["idle"] < pages / 8


def test_flops_scale_with_pixels() -> None:
    kw = dict(iters=1, warmup=0, phases=False, evaluate=False, peak_size=None)
    small = run_benchmark(load_config(None, TINY), **kw)
    big = run_benchmark(load_config(None, [*TINY, "data.crop=[128,192]"]), **kw)
    assert 3.5 < big["flops_per_img"] / small["flops_per_img"] < 4.5


@pytest.mark.parametrize("extra", [[], ["loss.balancer=mgda"], ["loss.grad_source=params"]])
def test_phased_step_makes_the_same_update_as_train_step(extra: list[str]) -> None:
    """Timing through the ``mark`` hook must not change train_step's update, and every phase
    that runs must be timed."""
    from cvmtl.workflows.bench.phases import phased_train_step
    from cvmtl.workflows.benchmark import EngineStep, prepare

    extra = [*extra, "loss.balancer=mgda"] if "loss.grad_source=params" in extra else extra
    cfg = load_config(None, [*TINY, "train.amp=none", *extra])
    dev = torch.device("cpu")
    torch.manual_seed(0)
    a, opt_a = prepare(cfg, dev)
    b, opt_b = prepare(cfg, dev, copy.deepcopy(a))
    batch = random_batch(cfg, 2, dev)
    step_a, step_b = EngineStep(cfg, dev), EngineStep(cfg, dev)
    step_a(a, batch, opt_a)
    # step_b.step: the engine's step on the config resolved for the device (amp concrete)
    times = phased_train_step(b, batch, step_b.step, opt_b, step_b.scaler)
    assert set(times) == PHASES - {"data"}
    assert all(v > 0 for v in times.values()), times  # a missing mark leaves its phase at 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_simple_losses_are_finite() -> None:
    cfg = load_config(None, TINY)
    batch = random_batch(cfg, 2, torch.device("cpu"))
    preds = {
        "seg": torch.randn(2, 13, 64, 96),
        "depth": torch.rand(2, 1, 64, 96) + 0.1,
        "normal": torch.nn.functional.normalize(torch.randn(2, 3, 64, 96), dim=1),
    }
    losses = simple_losses(preds, batch, cfg)
    assert set(losses) == {"seg", "depth", "normal"}
    assert all(torch.isfinite(v) for v in losses.values())
    # each task's own loss (spec.loss): plain cross-entropy and masked L1 with the defaults
    ce = torch.nn.functional.cross_entropy(preds["seg"], batch["seg"], ignore_index=255)
    torch.testing.assert_close(losses["seg"], ce)
    valid = batch["depth"] > 0
    l1 = (preds["depth"] - batch["depth"]).abs()[valid].mean()
    torch.testing.assert_close(losses["depth"], l1)


def test_sweep_rows_and_table() -> None:
    from cvmtl.workflows.bench.sweep import grid_points, markdown_table, parse_grid, run_sweep

    cfg = load_config(None, TINY)
    grid = parse_grid(["train.batch_size=[1,2]", "tasks=[[seg]]"])
    assert len(grid_points(cfg, grid, "axes")) == 3  # the base point (2, 3 tasks) only once
    assert len(grid_points(cfg, grid, "product")) == 2
    rows = run_sweep(cfg, grid, "axes", iters=1, warmup=0)
    assert len(rows) == 3
    assert {"train.batch_size", "tasks", "step_s_min", "img_s", "step_mem_mb"} <= set(rows[0])
    table = markdown_table(rows)
    assert len(table.strip().splitlines()) == 2 + len(rows)
    assert table.startswith("| train.batch_size | tasks |")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools/benchmark.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_cli_writes_json_with_speedup(tmp_path) -> None:
    out = tmp_path / "bench.json"
    config = str(REPO / "configs/synthetic_demo.yaml")
    proc = _cli(
        "--config",
        config,
        *TINY,
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
        str(out),
        "--device",
        "cpu",
        "--compare-eager-fp32",
        "--peak-size",
        "512",
    )
    assert proc.returncode == 0, proc.stderr
    assert "img/s" in proc.stdout and "speedup" in proc.stdout
    result = json.loads(out.read_text())
    check_result(result)
    assert result["speedup_vs_eager_fp32"] > 0


def test_cli_sweep_writes_table(tmp_path) -> None:
    table, out = tmp_path / "sweep.md", tmp_path / "sweep.json"
    proc = _cli(
        *TINY,
        "--sweep",
        "--grid",
        "train.batch_size=[2]",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--table",
        str(table),
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert len(table.read_text().strip().splitlines()) == 3
    assert [r["train.batch_size"] for r in json.loads(out.read_text())["sweep"]] == [2]


def test_cli_loader_mode(tmp_path) -> None:
    out = tmp_path / "loader.json"
    root = tmp_path / "no_data_here"  # -> a small synthetic dataset is generated
    proc = _cli(
        *TINY,
        f"data.root={root}",
        "data.num_workers=1",
        "--loader",
        "--loader-batches",
        "2",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    loader = json.loads(out.read_text())["loader"]
    assert loader["img_s"] > 0 and loader["num_workers"] == 1 and loader["batches"] == 2


def test_cli_rejects_bad_override() -> None:
    proc = _cli("model.nope=1", timeout=120)
    assert proc.returncode == 2 and "model.nope" in proc.stderr


@pytest.mark.slow
def test_compiled_model_matches_eager() -> None:
    """train.compile: the trainer's per-child torch.compile gives the eager outputs."""
    from cvmtl.engine.compiled import compile_children
    from cvmtl.models import build_model

    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    eager = build_model(cfg).eval()
    compiled = copy.deepcopy(eager)
    compile_children(compiled)
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want, got = eager(image), compiled(image)
    for task in want:
        torch.testing.assert_close(got[task], want[task], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_features_mode_balancer_under_compile_matches_eager() -> None:
    """train.compile with a gradient balancer in features mode (MGDA): the compiled children's
    per-task feature gradients and the step they give equal the eager model's."""
    from cvmtl.balancers import build_balancer
    from cvmtl.engine.compiled import compile_children
    from cvmtl.engine.step import train_step
    from cvmtl.models import build_model

    over = ["loss.balancer=mgda", "loss.grad_source=features", "train.amp=none"]
    cfg = load_config(None, [*TINY, *over, "train.channels_last=false"])
    torch.manual_seed(0)
    eager = build_model(cfg).train()
    initial = [p.detach().clone() for p in eager.parameters()]
    compiled = copy.deepcopy(eager)
    compile_children(compiled)
    batch = random_batch(cfg, 2, torch.device("cpu"))
    for model in (eager, compiled):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = train_step(model, batch, build_balancer("mgda", cfg.tasks), opt, None, cfg)
        assert not out.skipped, out.reason
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    moved = max(float((p.detach() - p0).abs().max()) for p, p0 in zip(eager.parameters(), initial))
    assert moved > 1e-4  # the step did update the weights that were compared


@pytest.mark.slow
def test_compiled_features_mode_steps_survive_buffer_donation() -> None:
    """The features-mode step runs one backward per task with retain_graph; a compiled backward
    that donates its buffers refuses that (here triggered by float32 matmul precision
    "highest" on torch 2.14's CPU inductor), so compile_children turns donation off."""
    from cvmtl.balancers import build_balancer
    from cvmtl.engine.compiled import compile_children
    from cvmtl.engine.step import train_step
    from cvmtl.models import build_model

    over = ["loss.balancer=mgda", "train.amp=none", "train.channels_last=false"]
    cfg = load_config(None, [*TINY, *over])
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        torch.manual_seed(0)
        model = build_model(cfg).train()
        compile_children(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        batch = random_batch(cfg, 2, torch.device("cpu"))
        for _ in range(2):
            out = train_step(model, batch, build_balancer("mgda", cfg.tasks), opt, None, cfg)
            assert not out.skipped, out.reason
    finally:
        torch.set_float32_matmul_precision(precision)


CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=CUDA)])  # fmt: skip
@pytest.mark.parametrize(
    ("mode", "balancer"),
    [("default", "fixed"), ("reduce-overhead", "fixed"), ("reduce-overhead", "mgda")],
)
def test_compiled_steps_match_eager(device: str, mode: str, balancer: str) -> None:
    """train.compile, CUDA graphs included on a GPU (reduce-overhead: the first step runs
    eagerly, the second records, the third replays; on the CPU it compiles like default), also
    with a gradient balancer in features mode (one backward per task through the compiled
    heads and loss terms): three steps give the eager weights, and evaluation through the
    compiled parts gives the eager metrics. fp32 without TF32, so the two differ only by kernel
    choice."""
    from cvmtl.balancers import build_balancer
    from cvmtl.engine.compiled import compile_children
    from cvmtl.engine.evaluator import evaluate
    from cvmtl.engine.step import train_step
    from cvmtl.models import build_model

    dev = torch.device(device)
    over = [f"train.device={device}", "train.amp=none", "train.channels_last=false"]
    over += [f"train.compile={mode}", f"loss.balancer={balancer}", "loss.balancer_args={}"]
    cfg = load_config(None, [*TINY, *over])
    torch.manual_seed(0)
    eager = build_model(cfg).to(dev).train()
    initial = [p.detach().clone() for p in eager.parameters()]
    compiled = copy.deepcopy(eager)
    compile_children(compiled, mode)
    batches = [random_batch(cfg, 2, dev) for _ in range(3)]
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 matmuls (nor convolutions, below)
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for model in (eager, compiled):
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                for batch in batches:
                    method = build_balancer(balancer, cfg.tasks)
                    out = train_step(model, batch, method, opt, None, cfg)
                    assert not out.skipped, out.reason
    finally:
        torch.set_float32_matmul_precision(precision)
    moved = max(float((p.detach() - p0).abs().max()) for p, p0 in zip(eager.parameters(), initial))
    assert moved > 10 * 2e-4  # the steps moved the weights well beyond the tolerance
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=2e-4)
    tasks = list(cfg.tasks)
    results = [evaluate(m, batches, tasks, cfg, progress=False) for m in (eager, compiled)]
    for task, metrics in results[0].items():
        for name, value in metrics.items():
            if isinstance(value, float):
                assert results[1][task][name] == pytest.approx(value, rel=1e-3, abs=1e-3)
