"""Speed / memory / FLOPs benchmark of a config's model on random data (no dataset needed).

One run measures, side by side: the training step (the engine's ``train_step`` by default, or
any ``step(model, batch, optimizer)``), its phases (train_step timed through its ``mark`` hook, see
:mod:`cvmtl.bench.phases`; ``data`` from a real loader with ``data=True``), evaluation images/s
and the metrics' share, this machine's peak matmul rate (-> ``mfu``), and optionally the plain
fp32 / NCHW / eager loop of the same model (-> ``speedup_vs_eager_fp32``). Sweeps and the loader
benchmark live in :mod:`cvmtl.bench.sweep` and :mod:`cvmtl.bench.data`.
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.bench.report import format_report
from cvmtl.bench.timing import (
    CONV_BATCH,
    CONV_CHANNELS,
    CONV_MIN_SIDE,
    MemoryPeak,
    load_average,
    peak_conv_flops,
    peak_matmul_flops,
    peak_sizes,
    resolve_device,
    stats,
    sync,
    time_interleaved,
)
from cvmtl.config import Config, to_dict
from cvmtl.models import build_model
from cvmtl.precision import (
    autocast_context,
    describe_precision,
    make_scaler,
    precision_info,
    resolve_precision,
)

__all__ = ["random_batch", "resolve_device", "run_benchmark", "format_report", "count_flops"]

TrainStep = Callable[[nn.Module, dict[str, Any], torch.optim.Optimizer], Any]


def random_batch(cfg: Config, batch_size: int, device: torch.device) -> dict[str, Any]:
    """A batch in the DESIGN batch contract with random values at ``data.crop``."""
    h, w = cfg.data.crop
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(batch_size, 3, h, w, generator=g),
        "seg": torch.randint(0, cfg.data.num_classes, (batch_size, h, w), generator=g),
        "depth": torch.rand(batch_size, 1, h, w, generator=g) * cfg.model.max_depth,
        "normal": F.normalize(torch.randn(batch_size, 3, h, w, generator=g), dim=1),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["has"] = {t: torch.ones(batch_size, dtype=torch.bool, device=device) for t in cfg.tasks}
    return batch


def simple_losses(preds: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Plain per-task losses: cross-entropy, masked L1 depth, 1 - cosine normals."""
    losses = {}
    for task, pred in preds.items():
        if task == "seg":
            losses[task] = F.cross_entropy(pred.float(), batch["seg"], ignore_index=255)
        elif task == "depth":
            valid = batch["depth"] > 0
            losses[task] = (pred.float() - batch["depth"]).abs()[valid].mean()
        elif task == "normal":
            losses[task] = (1 - (pred.float() * batch["normal"]).sum(1)).mean()
    return losses


def simple_train_step(cfg: Config, device: torch.device) -> TrainStep:
    """Sum of :func:`simple_losses` (+ the soft-sharing penalty), backward, optimizer step."""
    cfg = resolve_precision(cfg, device)  # train.amp / channels_last: auto -> concrete

    def step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer) -> Any:
        optimizer.zero_grad(set_to_none=True)
        image = batch["image"]
        if cfg.train.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast_context(cfg.train.amp, device):
            preds = model(image)
        loss = sum(simple_losses(preds, batch).values()) + model.regularization()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


class EngineStep:
    """The engine's ``train_step`` with its balancer and scaler, as ``step(model, batch, opt)``."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        from cvmtl.balancers import build_balancer

        self.cfg = cfg = resolve_precision(cfg, device)  # as the trainer: auto -> concrete
        self.balancer = build_balancer(cfg.loss.balancer, cfg.tasks, **cfg.loss.balancer_args)
        if isinstance(self.balancer, nn.Module):
            self.balancer = self.balancer.to(device)
        self.scaler = make_scaler(cfg.train.amp, device)

    def __call__(self, model: nn.Module, batch: dict[str, Any], optimizer: Any) -> Any:
        from cvmtl.engine.step import train_step

        out = train_step(model, batch, self.balancer, optimizer, self.scaler, self.cfg)
        if out["skipped"]:
            raise RuntimeError(f"benchmark: the training step was skipped ({out['reason']})")
        return out

    def phased(self, model: nn.Module, batch: dict[str, Any], optimizer: Any) -> dict:
        from cvmtl.bench.phases import phased_train_step

        return phased_train_step(model, batch, self.balancer, optimizer, self.scaler, self.cfg)


def engine_train_step(cfg: Config, device: torch.device) -> EngineStep:
    """The engine's ``train_step(model, batch, balancer, optimizer, scaler, cfg)`` as a step."""
    return EngineStep(cfg, device)


def count_flops(model: nn.Module, cfg: Config, device: torch.device) -> int:
    """Forward FLOPs of one image at ``data.crop`` (FlopCounterMode: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.randn(1, 3, *cfg.data.crop, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    model.train(was_training)
    return int(counter.get_total_flops())


def eager_fp32_config(cfg: Config) -> Config:
    """The plain loop: fp32, NCHW, no torch.compile (everything else as ``cfg``)."""
    base = copy.deepcopy(cfg)
    base.train.amp, base.train.channels_last, base.train.compile = "none", False, False
    return base


def prepare(cfg: Config, dev: torch.device, model: nn.Module | None = None) -> tuple:
    """(model, optimizer) as the trainer sets them up: channels_last, compile, param groups."""
    from cvmtl.engine.build import compile_children
    from cvmtl.engine.optim import build_optimizer

    model = (model or build_model(cfg)).to(dev)
    if resolve_precision(cfg, dev).train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        compile_children(model)
    return model, build_optimizer(model, cfg.train)


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
    """Benchmark ``cfg``'s model; DESIGN's benchmark JSON (plus more keys) as a dict.

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
    precision = precision_info(cfg, dev)
    precision["precision"] = describe_precision(cfg, dev)
    requested, cfg = cfg, resolve_precision(cfg, dev)
    load_before = load_average()
    torch.manual_seed(cfg.train.seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its kernels
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, cfg, torch.device("cpu"))
    eager = None
    if compare_eager_fp32:  # same initial weights, built before anything touches them
        base_cfg = eager_fp32_config(cfg)
        base_model = copy.deepcopy(model).to(dev)
        base_opt = torch.optim.AdamW(base_model.parameters(), lr=cfg.train.lr)  # plain for-loop
        base_step = train_step or engine_train_step(base_cfg, dev)
    if compare:
        other = _variant(requested, compare, dev, model, train_step)
    model, optimizer = prepare(cfg, dev, model)
    step = train_step or engine_train_step(cfg, dev)
    bs = cfg.train.batch_size
    batch = random_batch(cfg, bs, dev)

    model.train()
    fns = {"train": lambda: step(model, batch, optimizer)}
    if compare_eager_fp32:
        fns["eager_fp32"] = lambda: base_step(base_model, batch, base_opt)
    if compare:
        fns["compare"] = other["run"]
    for _ in range(warmup):  # compile / oneDNN kernels are picked on the first calls
        step(model, batch, optimizer)
        if compare:
            other["run"]()
    with MemoryPeak(dev) as mem:
        step(model, batch, optimizer)
        sync(dev)
    times = time_interleaved(fns, iters, 1 if compare_eager_fp32 else 0, dev)
    train_med = statistics.median(times["train"])
    train = {"img_s": bs / train_med, "step_s": stats(times["train"]), "batch_size": bs}
    train["phases"] = {}
    if phases and isinstance(step, EngineStep):
        train.update(_phases(step, model, optimizer, cfg, dev, iters, data, train_med))
    result: dict[str, Any] = {"train": train}
    if compare_eager_fp32:
        eager = stats(times["eager_fp32"])
        result["eager_fp32"] = {"img_s": bs / eager["median"], "step_s": eager}
        result["speedup_vs_eager_fp32"] = eager["median"] / train_med
        result["speedup_vs_eager_fp32_min"] = eager["min"] / min(times["train"])
    if compare:
        st = stats(times["compare"])
        result["compare"] = {"img_s": other["batch_size"] / st["median"], "step_s": st}
        result["compare"].update({k: v for k, v in other.items() if k != "run"})
        result["speedup_vs_compare"] = st["median"] / train_med
        result["speedup_vs_compare_min"] = st["min"] / min(times["train"])
    if evaluate:
        from cvmtl.bench.evalbench import eval_benchmark

        eval_bs = cfg.data.eval_batch_size or bs
        eval_batch = random_batch(cfg, eval_bs, dev)
        result["eval"] = eval_benchmark(model, cfg, eval_batch, iters, warmup, dev)
    result.update(_flops_and_mfu(cfg, dev, flops, bs / train_med, peak_size))
    result.update(_memory(dev, mem))
    result.update(precision)
    result.update(
        params=params,
        flops_per_img=flops,
        iters=iters,
        warmup=warmup,
        config=to_dict(cfg),
        device=_device_desc(dev),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        load_avg={"before": load_before, "after": load_average()},
    )
    return result


def _variant(requested: Config, overrides, dev, model, train_step) -> dict[str, Any]:
    """The ``compare`` variant: ``requested`` with ``overrides``, resolved for ``dev``, from a
    copy of ``model`` (same initial weights), set up as the trainer does; ``run`` times one step."""
    from cvmtl.bench.sweep import with_values
    from cvmtl.config import parse_override

    if train_step is not None:
        raise ValueError("benchmark: compare works with the engine's step (not --step simple)")
    values = {}
    for text in overrides:
        keys, value = parse_override(text)
        values[".".join(keys)] = value
    vcfg = with_values(requested, values)
    info = precision_info(vcfg, dev)
    vcfg = resolve_precision(vcfg, dev)
    vmodel, vopt = prepare(vcfg, dev, copy.deepcopy(model))
    vmodel.train()
    vstep = engine_train_step(vcfg, dev)
    vbatch = random_batch(vcfg, vcfg.train.batch_size, dev)
    return {
        "run": lambda: vstep(vmodel, vbatch, vopt),
        "overrides": list(overrides),
        "batch_size": vcfg.train.batch_size,
        "amp_resolved": info["amp_resolved"],
        "channels_last_resolved": info["channels_last_resolved"],
        "precision": describe_precision(vcfg, dev),
    }


def _phases(step, model, optimizer, cfg, dev, iters, data, train_med) -> dict[str, Any]:
    """Median seconds per phase over ``iters`` timed steps (after one warm-up)."""
    batches = None
    if data:
        from cvmtl.bench.data import data_config, endless, train_loader

        batches = endless(train_loader(data_config(cfg, (iters + 1) * cfg.train.batch_size)))
    fixed = random_batch(cfg, cfg.train.batch_size, dev)
    rows = []
    for i in range(iters + 1):
        wait = None
        if batches is not None:
            t0 = time.perf_counter()
            batch = next(batches)
            wait = time.perf_counter() - t0
        else:
            batch = fixed
        times = step.phased(model, batch, optimizer)
        if i > 0:  # the first step warms the loader and the new input's kernels
            rows.append({"data": wait, **times})
    phases = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "data"}
    data_s = statistics.median(r["data"] for r in rows) if batches is not None else None
    total = sum(phases.values()) + (data_s or 0.0)
    return {
        "phases": {"data": data_s, **phases},
        "phases_sum_s": total,
        "phases_vs_step": sum(phases.values()) / train_med,
    }


MFU_DTYPES = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _flops_and_mfu(cfg, dev, flops, img_s, peak_size) -> dict[str, Any]:
    """``mfu`` = ``train_flop_s`` / ``mfu_peak_flop_s``, against an upper bound measured here:
    per dtype the best of ``torch.matmul`` (square sides 512..``peak_size``) and of a 3x3
    convolution (the model's kernel kind; sides 16..``peak_size`` / 32, both layouts), see
    :mod:`cvmtl.bench.timing`; then the autocast dtype's peak, or fp32's where that is higher (a
    dtype emulated in software, e.g. bf16 on a CPU without bf16 hardware, is slower than the fp32
    arithmetic its kernels may fall back to). ``cfg`` is resolved (``train.amp`` concrete)."""
    # forward + backward ~ 3x the forward FLOPs (the usual MFU convention)
    achieved = 3.0 * flops * img_s
    out: dict[str, Any] = {"train_flop_s": achieved, "peak_flop_s": None, "mfu": None}
    if not peak_size:
        return out
    dtype = MFU_DTYPES[cfg.train.amp]
    conv_side = max(CONV_MIN_SIDE, peak_size // 32)
    kernels: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(("bf16", "fp32", dtype)):
        kernels[name] = {
            "matmul": peak_matmul_flops(dev, TORCH_DTYPES[name], peak_size),
            "conv3x3": peak_conv_flops(dev, TORCH_DTYPES[name], conv_side),
        }
    peaks = {name: max(k["flop_s"] for k in ks.values()) for name, ks in kernels.items()}
    bound = max((dtype, "fp32"), key=peaks.__getitem__)
    out.update(
        peak_flop_s=peaks,
        peak_by_kernel={
            name: {kind: k["by_size"] for kind, k in ks.items()} for name, ks in kernels.items()
        },
        peak_matmul_size=peak_size,
        peak_method=(
            f"per dtype the best of torch.matmul (square sides {peak_sizes(peak_size)}) and a "
            f"forward 3x3 conv ({CONV_CHANNELS}->{CONV_CHANNELS} channels, batch {CONV_BATCH}, "
            f"sides {peak_sizes(conv_side, CONV_MIN_SIDE)}, NCHW and channels_last); each "
            "1 warm-up then best of 3 (a size whose warm-up took > 0.5 s timed once, ending the "
            "climb); nominal FLOPs; mfu against the autocast dtype's peak or fp32's, whichever "
            "is higher"
        ),
        mfu_dtype=dtype,
        mfu_peak_dtype=bound,
        mfu_peak_flop_s=peaks[bound],
        mfu=achieved / peaks[bound],
    )
    return out


def _memory(dev: torch.device, mem: MemoryPeak) -> dict[str, Any]:
    if dev.type == "cuda":
        peak_mb, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_memory_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        kind = "process_max_rss"
    return {
        "peak_mem_mb": peak_mb,
        "peak_mem_kind": kind,
        "train_step_mem_mb": mem.peak_mb,
        "train_step_mem_kind": mem.kind,
    }


def _device_desc(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} threads)"
