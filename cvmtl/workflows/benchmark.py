"""Speed / memory / FLOPs benchmark of a config's model on random data (no dataset needed).

One run measures, side by side: the training step (the engine's ``train_step`` by default, or
any ``step(model, batch, optimizer)``), its phases (train_step timed through its ``mark`` hook,
see :mod:`cvmtl.workflows.bench.phases`; ``data`` from a real loader with ``data=True``),
evaluation images/s and the metrics' share, this machine's peak rate (-> ``mfu``,
:mod:`cvmtl.workflows.bench.mfu`), and optionally the plain fp32 / NCHW / eager loop of the
same model (-> ``speedup_vs_eager_fp32``) or a ``key=value`` variant (-> ``speedup_vs_compare``).
The steps live in :mod:`cvmtl.workflows.bench.steps`; sweeps and the loader benchmark in
:mod:`cvmtl.workflows.bench.sweep` and :mod:`cvmtl.workflows.bench.data`.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch

from cvmtl.config import Config, to_dict
from cvmtl.hostmem import keep_freed_memory
from cvmtl.models import build_model
from cvmtl.precision import describe_precision, precision_info, resolve_precision
from cvmtl.workflows.bench.mfu import device_desc, flops_and_mfu, memory
from cvmtl.workflows.bench.phases import median_phases
from cvmtl.workflows.bench.report import format_report
from cvmtl.workflows.bench.steps import (
    EngineStep,
    TrainStep,
    count_flops,
    eager_fp32_config,
    engine_train_step,
    prepare,
    random_batch,
    simple_losses,
    simple_train_step,
    variant_step,
)
from cvmtl.workflows.bench.timing import (
    MemoryPeak,
    load_average,
    resolve_device,
    stats,
    sync,
    time_interleaved,
)

__all__ = [
    "EngineStep",
    "count_flops",
    "format_report",
    "prepare",
    "random_batch",
    "resolve_device",
    "run_benchmark",
    "simple_losses",
    "simple_train_step",
]


def run_benchmark(
    cfg: Config,
    iters: int = 10,
    warmup: int = 2,
    device: str | None = None,
    train_step: TrainStep | None = None,
    *,
    phases: bool = True,
    data: bool = False,
    evaluate: bool = True,
    compare_eager_fp32: bool = False,
    compare: list[str] | tuple[str, ...] = (),
    peak_size: int | None = 2048,
) -> dict[str, Any]:
    """Benchmark ``cfg``'s model; the benchmark JSON (see docs/benchmarks.md) as a dict.

    ``train_step``: default the engine's (then ``phases`` times it through its ``mark`` hook).
    ``data``: the ``data`` phase from a real loader (a generated synthetic dataset when
    ``data.root`` holds none). ``peak_size``: largest side of the matmuls that measure the peak
    FLOP/s for ``mfu`` (None: no mfu). ``train.amp`` / ``train.channels_last`` ``auto`` resolve
    for the device as in training (:mod:`cvmtl.precision`); the result says what they became.
    ``compare``: ``key=value`` overrides of a second variant of ``cfg`` (e.g.
    ``train.channels_last=true``), built from the same initial weights and timed interleaved
    with the engine's step (-> ``compare``, ``speedup_vs_compare``).
    """
    dev = resolve_device(device or cfg.train.device)
    precision = {**precision_info(cfg, dev), "precision": describe_precision(cfg, dev)}
    requested, cfg = cfg, resolve_precision(cfg, dev)
    load_before = load_average()
    host_malloc = keep_freed_memory()  # measured as the commands run (cvmtl.hostmem)
    torch.manual_seed(cfg.train.seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its kernels
    model = build_model(cfg)
    flops = count_flops(model, cfg, torch.device("cpu"))
    # the variants start from the same initial weights, copied before anything touches them
    runs = _variants(requested, cfg, dev, model, train_step, compare_eager_fp32, compare)
    model, optimizer = prepare(cfg, dev, model)
    step = train_step or engine_train_step(cfg, dev)
    bs = cfg.train.batch_size
    batch = random_batch(cfg, bs, dev)
    model.train()
    fns = {"train": lambda: step(model, batch, optimizer)}
    fns.update({name: run["run"] for name, run in runs.items()})
    times, faults, mem = _timed(fns, warmup, iters, 1 if compare_eager_fp32 else 0, dev)
    result = _train_and_variants(times, faults, runs, bs)
    train_med = statistics.median(times["train"])
    if phases and isinstance(step, EngineStep):
        result["train"].update(
            median_phases(step, model, optimizer, cfg, dev, iters, data, train_med)
        )
    if evaluate:
        result["eval"] = _eval(model, cfg, iters, warmup, dev)
    result.update(flops_and_mfu(cfg, dev, flops, bs / train_med, peak_size))
    result.update(memory(dev, mem), **precision)
    result.update(params=sum(p.numel() for p in model.parameters()), flops_per_img=flops)
    result.update(iters=iters, warmup=warmup, config=to_dict(cfg), device=device_desc(dev))
    result.update(torch=torch.__version__, threads=torch.get_num_threads(), host_malloc=host_malloc)
    result["load_avg"] = {"before": load_before, "after": load_average()}
    return result


def _timed(fns: dict, warmup: int, iters: int, lead: int, dev: torch.device) -> tuple:
    """(seconds per call of each of ``fns``, interleaved; minor page faults per call of each;
    the memory peak of one ``train`` call) after ``warmup`` calls of each (compile / oneDNN
    kernels are picked on the first)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    with MemoryPeak(dev) as mem:
        fns["train"]()
        sync(dev)
    faults: dict[str, float] = {}
    return time_interleaved(fns, iters, lead, dev, faults), faults, mem


def _variants(requested, cfg, dev, model, train_step, eager_fp32, compare) -> dict[str, dict]:
    """The steps timed beside the engine's: ``eager_fp32`` (the plain loop) and ``compare``."""
    runs: dict[str, dict] = {}
    if eager_fp32:
        base_model = copy.deepcopy(model).to(dev)
        base_opt = torch.optim.AdamW(base_model.parameters(), lr=cfg.train.lr)  # plain for-loop
        base_step = train_step or engine_train_step(eager_fp32_config(cfg), dev)
        base_batch = random_batch(cfg, cfg.train.batch_size, dev)
        runs["eager_fp32"] = {"run": lambda: base_step(base_model, base_batch, base_opt)}
        runs["eager_fp32"]["batch_size"] = cfg.train.batch_size
    if compare:
        runs["compare"] = variant_step(requested, compare, dev, model, train_step)
    return runs


def _train_and_variants(times: dict, faults: dict, runs: dict, bs: int) -> dict[str, Any]:
    """``train`` and each variant's images/s, step times, minor page faults per step and
    speed-up of the engine's step."""
    train = stats(times["train"])
    result: dict[str, Any] = {"train": {"img_s": bs / train["median"], "step_s": train}}
    result["train"].update(batch_size=bs, minor_faults=faults["train"], phases={})
    for name, run in runs.items():
        st = stats(times[name])
        result[name] = {"img_s": run["batch_size"] / st["median"], "step_s": st}
        result[name]["minor_faults"] = faults[name]
        result[name].update({k: v for k, v in run.items() if k not in ("run", "batch_size")})
        suffix = "eager_fp32" if name == "eager_fp32" else "compare"
        result[f"speedup_vs_{suffix}"] = st["median"] / train["median"]
        result[f"speedup_vs_{suffix}_min"] = st["min"] / train["min"]
    return result


def _eval(model, cfg: Config, iters: int, warmup: int, dev: torch.device) -> dict[str, Any]:
    from cvmtl.workflows.bench.evalbench import eval_benchmark

    eval_batch = random_batch(cfg, cfg.data.eval_batch_size or cfg.train.batch_size, dev)
    return eval_benchmark(model, cfg, eval_batch, iters, warmup, dev)
